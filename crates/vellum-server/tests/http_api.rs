//! End-to-end tests of the HTTP API (SPEC §5, §6) against a real server: a real SQLite store in
//! a temporary directory, a real listener on 127.0.0.1 port 0, and a real HTTP client.
//!
//! Every test starts its own server, so tests run in parallel. Nothing asserts on timing; the
//! search index wait is raised so that a loaded machine still sees acknowledged writes.

#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;
use vellum_core::canonical::to_canonical_string;
use vellum_core::integrity::HmacKeyring;
use vellum_server::{RunningServer, ServerConfig};
use zeroize::Zeroizing;

const SECRET: &str = "http-api-integration-test-secret-0123456789";
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// A response, with its body parsed as JSON (or kept as a JSON string when it is not JSON).
#[derive(Debug)]
struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Resp {
    async fn read(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("response body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Self {
            status,
            headers,
            body,
        }
    }

    fn expect(self, status: StatusCode) -> Value {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.body
        );
        self.body
    }

    /// The `path`s of `error.details`.
    fn error_paths(&self) -> Vec<String> {
        self.body["error"]["details"]
            .as_array()
            .unwrap_or_else(|| panic!("no error details in {}", self.body))
            .iter()
            .map(|d| d["path"].as_str().expect("path").to_owned())
            .collect()
    }
}

struct TestServer {
    dir: TempDir,
    server: Option<RunningServer>,
    base: String,
    key: String,
    client: reqwest::Client,
}

fn config(dir: &Path) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        data_dir: dir.to_path_buf(),
        crypto_secret: Some(Zeroizing::new(SECRET.to_owned())),
        // Searches wait for the index; be generous on a loaded machine.
        index_wait_ms: 60_000,
        // These tests count the events of their fixtures, which the detection rules would
        // join with alerts; detection is tested in tests/detection.rs.
        detection: vellum_core::detect::DetectionConfig {
            enabled: false,
            ..vellum_core::detect::DetectionConfig::default()
        },
        ..ServerConfig::default()
    }
}

impl TestServer {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(dir.path());
        tweak(&mut cfg);
        let server = vellum_server::start(cfg).await.expect("server starts");
        let key_file = server
            .admin_key_file
            .clone()
            .expect("first start writes the admin key file");
        assert_eq!(key_file, dir.path().join("admin.key"));
        let key = std::fs::read_to_string(&key_file)
            .expect("admin key readable")
            .trim()
            .to_owned();
        Self::attach(dir, server, key)
    }

    fn attach(dir: TempDir, server: RunningServer, key: String) -> Self {
        let base = format!("http://{}", server.addr);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("client");
        Self {
            dir,
            server: Some(server),
            base,
            key,
            client,
        }
    }

    /// Shuts down cleanly (asserting it) and returns the data directory.
    async fn stop(mut self) -> (TempDir, String) {
        let server = self.server.take().expect("running");
        server.shutdown().await.expect("clean shutdown");
        (self.dir, self.key)
    }

    /// Starts a server again on a data directory that already has its admin key.
    async fn restart(dir: TempDir, key: String) -> Self {
        let server = vellum_server::start(config(dir.path()))
            .await
            .expect("server restarts");
        assert!(
            server.admin_key_file.is_none(),
            "a restart must not create another admin key"
        );
        Self::attach(dir, server, key)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(&self.key)
    }

    fn post(&self) -> reqwest::RequestBuilder {
        self.client
            .post(self.url("/v1/events"))
            .bearer_auth(&self.key)
    }

    async fn send(builder: reqwest::RequestBuilder) -> Resp {
        Resp::read(builder.send().await.expect("request sent")).await
    }

    async fn post_json(&self, body: &Value) -> Resp {
        Self::send(self.post().json(body)).await
    }

    async fn post_raw(&self, body: impl Into<reqwest::Body>, content_type: &str) -> Resp {
        Self::send(
            self.post()
                .header(CONTENT_TYPE, content_type)
                .body(body.into()),
        )
        .await
    }

    /// Ingests one event, asserting 201; returns the receipt.
    async fn ingest(&self, event: Value) -> Value {
        let receipt = self.post_json(&event).await.expect(StatusCode::CREATED);
        assert_receipt_shape(&receipt);
        receipt
    }

    /// Ingests a batch that must be fully accepted; returns the receipts in request order.
    async fn ingest_all(&self, events: &[Value]) -> Vec<Value> {
        let body = self
            .post_json(&json!({ "events": events }))
            .await
            .expect(StatusCode::CREATED);
        assert_eq!(body["rejected"], json!([]), "nothing rejected: {body}");
        let accepted = body["accepted"].as_array().expect("accepted").clone();
        assert_eq!(accepted.len(), events.len());
        for (i, a) in accepted.iter().enumerate() {
            assert_eq!(a["index"], i);
            assert_receipt_shape(a);
        }
        accepted
    }

    async fn search_raw(&self, params: &[(&str, &str)]) -> Resp {
        Self::send(self.get("/v1/events").query(params)).await
    }

    async fn search(&self, params: &[(&str, &str)]) -> Value {
        self.search_raw(params).await.expect(StatusCode::OK)
    }

    /// Ids of one page of results, in the order returned.
    async fn search_ids(&self, params: &[(&str, &str)]) -> Vec<String> {
        let page = self.search(params).await;
        ids_of(&page)
    }

    async fn get_event(&self, id: &str) -> Value {
        Self::send(self.get(&format!("/v1/events/{id}")))
            .await
            .expect(StatusCode::OK)
    }
}

/// Query parameters of one search.
type Params = Vec<(&'static str, &'static str)>;

fn ids_of(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events array in {page}"))
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect()
}

fn assert_receipt_shape(receipt: &Value) {
    let id = receipt["id"].as_str().expect("receipt id");
    let uuid = uuid::Uuid::parse_str(id).expect("receipt id is a UUID");
    assert_eq!(uuid.get_version_num(), 7, "ids are UUIDv7");
    assert_eq!(receipt["logId"], "default");
    assert!(receipt["seq"].is_u64(), "seq: {receipt}");
    let hash = receipt["hash"].as_str().expect("hash");
    assert_eq!(hash.len(), 64);
    assert!(
        hash.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    let received = receipt["receivedAt"].as_str().expect("receivedAt");
    vellum_core::time_fmt::parse_rfc3339(received).expect("receivedAt is RFC 3339");
}

/// Checks SPEC §3 on an event as returned by `GET /v1/events/{id}`: the hash is SHA-256 of the
/// RFC 8785 form of the object without `hash` and `signature`, and the signature is the HMAC
/// of the same bytes under the configured secret. Returns the hash.
fn assert_integrity(stored: &Value) -> String {
    let mut object = stored.clone();
    let map = object.as_object_mut().expect("event is an object");
    let hash = map
        .remove("hash")
        .and_then(|h| h.as_str().map(str::to_owned))
        .expect("hash present");
    let signature = map
        .remove("signature")
        .and_then(|s| s.as_str().map(str::to_owned))
        .expect("signature present (signatures are on by default)");
    // `decrypted` (a sealed event's plaintext, for auditors) is outside the hashed form.
    map.remove("decrypted");
    let canonical = to_canonical_string(&object);
    assert_eq!(
        hex::encode(Sha256::digest(canonical.as_bytes())),
        hash,
        "hash must be SHA-256 of the canonical form"
    );
    let key_id = object["keyId"].as_str().expect("keyId");
    let ring = HmacKeyring::single(Zeroizing::new(SECRET.as_bytes().to_vec())).expect("ring");
    ring.verify(
        key_id,
        canonical.as_bytes(),
        &hex::decode(&signature).expect("hex signature"),
    )
    .expect("signature verifies under the configured secret");
    hash
}

fn event(action: &str, status: &str) -> Value {
    json!({ "action": action, "status": status })
}

/// Number of stored events carrying this correlation id.
async fn count_correlated(ts: &TestServer, correlation_id: &str) -> usize {
    ts.search(&[("correlationId", correlation_id), ("limit", "1000")])
        .await["events"]
        .as_array()
        .expect("events")
        .len()
}

// ---------------------------------------------------------------------------------------------
// Ingest
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_event_receipt_hash_and_chain() {
    let ts = TestServer::start().await;
    let mut receipts = Vec::new();
    for i in 0..5 {
        let response = ts
            .post_json(&json!({
                "action": "fhir.patient.read",
                "status": "success",
                "principalId": format!("dr-{i}"),
                "dataClassification": "PHI",
                "targetResourceType": "Patient",
                "targetResourceId": format!("pat-{i}"),
                "timestamp": "2026-03-04T05:06:07.5+01:00",
                "details": {"n": i, "ratio": 0.1, "nested": {"list": [1, "two", null, true]}},
                "customTopLevel": "kept",
            }))
            .await;
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.body);
        assert!(
            response
                .headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/json"))
        );
        let receipt = response.body;
        assert_receipt_shape(&receipt);
        let keys: HashSet<&str> = receipt
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            HashSet::from(["id", "logId", "seq", "hash", "receivedAt"])
        );
        assert_eq!(receipt["seq"], i, "a fresh log starts at 0 and counts up");
        receipts.push(receipt);
    }

    let mut previous_hash = GENESIS.to_owned();
    for (i, receipt) in receipts.iter().enumerate() {
        let id = receipt["id"].as_str().expect("id");
        let stored = ts.get_event(id).await;
        let hash = assert_integrity(&stored);
        assert_eq!(hash, receipt["hash"], "receipt hash = stored hash");
        assert_eq!(stored["id"], receipt["id"]);
        assert_eq!(stored["logId"], "default");
        assert_eq!(stored["seq"], i);
        assert_eq!(stored["receivedAt"], receipt["receivedAt"]);
        assert_eq!(stored["prevHash"], previous_hash, "chain link at seq {i}");
        assert_eq!(stored["keyId"], "default");
        assert_eq!(stored["eventVersion"], "1.0");
        // What the client sent is kept as sent, plus defaults.
        assert_eq!(stored["principalId"], format!("dr-{i}"));
        assert_eq!(stored["timestamp"], "2026-03-04T05:06:07.5+01:00");
        assert_eq!(stored["customTopLevel"], "kept");
        assert_eq!(
            stored["details"]["nested"]["list"],
            json!([1, "two", null, true])
        );
        assert_eq!(stored["details"]["ratio"], 0.1);
        assert_eq!(stored["retentionPolicy"], "hipaa-6-years");
        assert!(stored["severity"].is_string());
        previous_hash = hash;
    }

    // Defaults for a minimal event; its timestamp is filled by the server.
    let receipt = ts.ingest(event("system.heartbeat", "success")).await;
    let stored = ts.get_event(receipt["id"].as_str().expect("id")).await;
    assert_integrity(&stored);
    assert_eq!(stored["dataClassification"], "INTERNAL");
    vellum_core::time_fmt::parse_rfc3339(stored["timestamp"].as_str().expect("timestamp"))
        .expect("server timestamp is RFC 3339");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_with_some_invalid_events() {
    let ts = TestServer::start().await;
    let body = ts
        .post_json(&json!({"events": [
            {"action": "fhir.patient.read", "status": "success", "correlationId": "batch-1"},
            {"action": "fhir.patient.read", "status": "done", "correlationId": "batch-1"},
            {"action": "auth.login.success", "status": "success", "correlationId": "batch-1"},
            {"status": "success", "seq": 4, "correlationId": "batch-1"},
            {"action": "auth.logout", "status": "attempt", "correlationId": "batch-1"},
        ]}))
        .await
        .expect(StatusCode::CREATED);

    let accepted = body["accepted"].as_array().expect("accepted");
    let indices: Vec<u64> = accepted
        .iter()
        .map(|a| a["index"].as_u64().expect("index"))
        .collect();
    assert_eq!(indices, vec![0, 2, 4]);
    let seqs: Vec<u64> = accepted
        .iter()
        .map(|a| a["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(
        seqs,
        vec![0, 1, 2],
        "accepted events are sequenced in order"
    );
    for a in accepted {
        assert_receipt_shape(a);
    }

    let rejected = body["rejected"].as_array().expect("rejected");
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0]["index"], 1);
    assert_eq!(
        rejected[0]["errors"],
        json!([{"path": "/status", "message": rejected[0]["errors"][0]["message"]}])
    );
    assert!(
        rejected[0]["errors"][0]["message"]
            .as_str()
            .expect("message")
            .contains("success")
    );
    assert_eq!(rejected[1]["index"], 3);
    let paths: HashSet<&str> = rejected[1]["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["path"].as_str().expect("path"))
        .collect();
    assert_eq!(paths, HashSet::from(["/action", "/seq"]));

    // Only the accepted ones were stored.
    assert_eq!(count_correlated(&ts, "batch-1").await, 3);
    for a in accepted {
        let stored = ts.get_event(a["id"].as_str().expect("id")).await;
        assert_eq!(assert_integrity(&stored), a["hash"]);
    }

    // An empty batch is a malformed request.
    let empty = ts.post_json(&json!({"events": []})).await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST, "{}", empty.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_invalid_batch_is_422_with_pointers_into_the_batch() {
    let ts = TestServer::start().await;
    let response = ts
        .post_json(&json!({"events": [
            {"action": "a.b", "status": "success", "hash": "00"},
            {"action": "a.b", "status": "nope"},
            {"action": "a.b", "status": "success", "sessionContext": {"ipAddress": "300.1.1.1"}},
        ]}))
        .await;
    assert_eq!(
        response.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        response.body
    );
    assert_eq!(response.body["error"]["code"], "invalid_event");
    let paths = response.error_paths();
    assert_eq!(
        paths,
        vec![
            "/events/0/hash".to_owned(),
            "/events/1/status".to_owned(),
            "/events/2/sessionContext/ipAddress".to_owned(),
        ]
    );
    // Nothing was stored: the first accepted event of the next request is seq 0.
    let receipt = ts.ingest(event("a.b", "success")).await;
    assert_eq!(receipt["seq"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_ingest() {
    let ts = TestServer::start().await;
    let body = [
        r#"{"action":"fhir.patient.read","status":"success","correlationId":"nd-1"}"#,
        "",
        r#"{"action":"fhir.patient.read","status":"bogus","correlationId":"nd-1"}"#,
        r#"{"action":"auth.login.failure","status":"failure","correlationId":"nd-1"}"#,
        r#"{"action": broken"#,
        "",
    ]
    .join("\n");
    let receipt = ts
        .post_raw(body, "application/x-ndjson")
        .await
        .expect(StatusCode::CREATED);
    let accepted: Vec<u64> = receipt["accepted"]
        .as_array()
        .expect("accepted")
        .iter()
        .map(|a| a["index"].as_u64().expect("index"))
        .collect();
    // Blank lines are skipped; indices count events.
    assert_eq!(accepted, vec![0, 2]);
    let rejected = receipt["rejected"].as_array().expect("rejected");
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0]["index"], 1);
    assert_eq!(rejected[0]["errors"][0]["path"], "/status");
    assert_eq!(rejected[1]["index"], 3);
    assert_eq!(rejected[1]["errors"][0]["path"], "");
    assert_eq!(count_correlated(&ts, "nd-1").await, 2);

    // A charset parameter is fine too.
    let receipt = ts
        .post_raw(
            r#"{"action":"a.b","status":"success","correlationId":"nd-2"}"#,
            "application/x-ndjson; charset=utf-8",
        )
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(receipt["accepted"].as_array().expect("accepted").len(), 1);
    assert_eq!(count_correlated(&ts, "nd-2").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400() {
    let ts = TestServer::start().await;
    for body in [
        "{\"action\": \"a.b\", ",
        "not json at all",
        "",
        "{\"events\": [1, 2",
    ] {
        let response = ts.post_raw(body, "application/json").await;
        assert_eq!(
            response.status,
            StatusCode::BAD_REQUEST,
            "{body:?}: {}",
            response.body
        );
        assert_eq!(response.body["error"]["code"], "bad_request");
        assert!(response.body["error"]["message"].is_string());
    }
    // Not UTF-8, as JSON and as NDJSON.
    for content_type in ["application/json", "application/x-ndjson"] {
        let response = ts
            .post_raw(vec![0xff_u8, 0xfe, b'{', b'}'], content_type)
            .await;
        assert_eq!(
            response.status,
            StatusCode::BAD_REQUEST,
            "{}",
            response.body
        );
    }
    // Nothing was stored.
    assert_eq!(ts.ingest(event("a.b", "success")).await["seq"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_key_is_401() {
    let ts = TestServer::start().await;
    let ev = event("a.b", "success");
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("no header", ts.client.post(ts.url("/v1/events")).json(&ev)),
        (
            "wrong key",
            ts.client
                .post(ts.url("/v1/events"))
                .bearer_auth("vlm_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
                .json(&ev),
        ),
        (
            "not bearer",
            ts.client
                .post(ts.url("/v1/events"))
                .basic_auth("admin", Some(&ts.key))
                .json(&ev),
        ),
        ("search, no header", ts.client.get(ts.url("/v1/events"))),
        (
            "search, wrong key",
            ts.client
                .get(ts.url("/v1/events"))
                .bearer_auth(format!("{}x", ts.key)),
        ),
        (
            "get, wrong key",
            ts.client
                .get(ts.url(&format!("/v1/events/{}", uuid::Uuid::now_v7())))
                .bearer_auth("nope"),
        ),
    ];
    for (what, request) in cases {
        let response = TestServer::send(request).await;
        assert_eq!(
            response.status,
            StatusCode::UNAUTHORIZED,
            "{what}: {}",
            response.body
        );
        assert_eq!(response.body["error"]["code"], "unauthorized", "{what}");
    }
    // None of them was stored (and the right key works).
    assert_eq!(ts.ingest(ev).await["seq"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_is_413() {
    let ts = TestServer::start_with(|c| {
        c.validation.max_event_bytes = 1024;
        c.max_request_bytes = 8 * 1024;
    })
    .await;
    let big = |n: usize| json!({"action": "a.b", "status": "success", "details": {"blob": "x".repeat(n)}});

    // One event over the event limit (the request limit is not reached).
    let response = ts.post_json(&big(2_000)).await;
    assert_eq!(
        response.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        response.body
    );
    assert_eq!(response.body["error"]["code"], "too_large");

    // Just under the event limit is fine.
    let receipt = ts.ingest(big(900)).await;
    assert_eq!(receipt["seq"], 0);

    // In a batch, an oversized event is rejected by itself.
    let body = ts
        .post_json(&json!({"events": [big(10), big(2_000)]}))
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(body["accepted"].as_array().expect("accepted").len(), 1);
    assert_eq!(body["rejected"][0]["index"], 1);
    assert_eq!(body["rejected"][0]["errors"][0]["path"], "");

    // A body over the request limit, as one event, as a batch and as NDJSON.
    let huge = big(20_000);
    let response = ts.post_json(&huge).await;
    assert_eq!(
        response.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        response.body
    );
    let batch: Vec<Value> = (0..40).map(|_| big(500)).collect();
    let response = ts.post_json(&json!({ "events": batch })).await;
    assert_eq!(
        response.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        response.body
    );
    assert_eq!(response.body["error"]["code"], "too_large");
    let ndjson: String = batch.iter().map(|e| format!("{e}\n")).collect();
    let response = ts.post_raw(ndjson, "application/x-ndjson").await;
    assert_eq!(
        response.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        response.body
    );

    // Only the two good events were stored: the next one is seq 2.
    assert_eq!(ts.ingest(big(1)).await["seq"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_event_lists_every_error() {
    let ts = TestServer::start().await;
    let response = ts
        .post_json(&json!({
            "action": "fhir.patient.read",
            "status": "done",
            "timestamp": "yesterday at noon",
            "seq": 7,
            "id": "0190f5e2-0000-7000-8000-000000000000",
            "prevHash": GENESIS,
            "redactions": [],
            "principalType": "robot",
            "dataClassification": "TOP-SECRET",
            "sessionContext": {"ipAddress": "10.0.0.256", "sessionId": 5},
            "technicalContext": {"statusCode": 42},
            "healthcareContext": {"emergencyAccess": "yes"},
        }))
        .await;
    assert_eq!(
        response.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        response.body
    );
    assert_eq!(response.body["error"]["code"], "invalid_event");
    let paths: HashSet<String> = response.error_paths().into_iter().collect();
    let expected: HashSet<String> = [
        "/status",
        "/timestamp",
        "/seq",
        "/id",
        "/prevHash",
        "/redactions",
        "/principalType",
        "/dataClassification",
        "/sessionContext/ipAddress",
        "/sessionContext/sessionId",
        "/technicalContext/statusCode",
        "/healthcareContext/emergencyAccess",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    assert_eq!(paths, expected, "{}", response.body);
    for detail in response.body["error"]["details"]
        .as_array()
        .expect("details")
    {
        assert!(
            !detail["message"].as_str().expect("message").is_empty(),
            "every error explains itself"
        );
    }

    // Required fields, including a per-classification rule (PHI requires principalId).
    let response = ts
        .post_json(&json!({"dataClassification": "PHI", "details": {}}))
        .await;
    assert_eq!(response.status, StatusCode::UNPROCESSABLE_ENTITY);
    let paths: HashSet<String> = response.error_paths().into_iter().collect();
    assert_eq!(
        paths,
        ["/action", "/status", "/principalId"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    );

    // Not an object.
    let response = ts.post_json(&json!(["a", "b"])).await;
    assert_eq!(
        response.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        response.body
    );

    assert_eq!(ts.ingest(event("a.b", "success")).await["seq"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_header_replays_receipts() {
    let ts = TestServer::start().await;
    let single = json!({"action": "a.b", "status": "success", "correlationId": "idem-single"});
    let first = TestServer::send(
        ts.post()
            .header("Idempotency-Key", "req-0001")
            .json(&single),
    )
    .await
    .expect(StatusCode::CREATED);
    for _ in 0..3 {
        let again = TestServer::send(
            ts.post()
                .header("Idempotency-Key", "req-0001")
                .json(&single),
        )
        .await
        .expect(StatusCode::CREATED);
        assert_eq!(again, first, "a retry returns the first receipt");
    }
    assert_eq!(count_correlated(&ts, "idem-single").await, 1);

    // Another key is another event.
    let other = TestServer::send(
        ts.post()
            .header("Idempotency-Key", "req-0002")
            .json(&single),
    )
    .await
    .expect(StatusCode::CREATED);
    assert_ne!(other["id"], first["id"]);
    assert_eq!(count_correlated(&ts, "idem-single").await, 2);

    // A batch with a rejected event: the retry returns the same accepted receipts.
    let batch = json!({"events": [
        {"action": "a.b", "status": "success", "correlationId": "idem-batch"},
        {"action": "a.b", "status": "wrong", "correlationId": "idem-batch"},
        {"action": "c.d", "status": "failure", "correlationId": "idem-batch"},
    ]});
    let first = TestServer::send(ts.post().header("Idempotency-Key", "batch-7").json(&batch))
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(first["accepted"].as_array().expect("accepted").len(), 2);
    let again = TestServer::send(ts.post().header("Idempotency-Key", "batch-7").json(&batch))
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(again["accepted"], first["accepted"]);
    assert_eq!(again["rejected"], first["rejected"]);
    assert_eq!(count_correlated(&ts, "idem-batch").await, 2);

    // Concurrent retries of one request also make a single event.
    let concurrent = json!({"action": "a.b", "status": "success", "correlationId": "idem-race"});
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let request = ts
            .post()
            .header("Idempotency-Key", "race-1")
            .json(&concurrent);
        tasks.push(tokio::spawn(async move {
            TestServer::send(request).await.expect(StatusCode::CREATED)
        }));
    }
    let mut receipts = Vec::new();
    for task in tasks {
        receipts.push(task.await.expect("task"));
    }
    assert!(receipts.iter().all(|r| *r == receipts[0]), "{receipts:?}");
    assert_eq!(count_correlated(&ts, "idem-race").await, 1);

    // A malformed key is refused, naming the header.
    let response = TestServer::send(
        ts.post()
            .header("Idempotency-Key", "has space")
            .json(&single),
    )
    .await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert_eq!(response.error_paths(), vec!["Idempotency-Key".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_event_idempotency_key() {
    let ts = TestServer::start().await;
    let ev = |corr: &str, key: &str| json!({"action": "a.b", "status": "success", "correlationId": corr, "idempotencyKey": key});
    let first = ts.ingest(ev("pe-1", "evt-1")).await;
    let again = ts.ingest(ev("pe-1", "evt-1")).await;
    assert_eq!(again, first);

    // The same key inside a batch (at another position) gets the same receipt too, as does a
    // duplicate within one batch.
    let body = ts
        .post_json(&json!({"events": [
            ev("pe-1", "evt-2"),
            ev("pe-1", "evt-1"),
            ev("pe-1", "evt-2"),
        ]}))
        .await
        .expect(StatusCode::CREATED);
    let accepted = body["accepted"].as_array().expect("accepted");
    assert_eq!(accepted.len(), 3);
    let strip = |a: &Value| {
        let mut a = a.clone();
        a.as_object_mut().expect("object").remove("index");
        a
    };
    assert_eq!(strip(&accepted[1]), first);
    assert_eq!(strip(&accepted[0]), strip(&accepted[2]));
    assert_ne!(accepted[0]["id"], first["id"]);
    assert_eq!(count_correlated(&ts, "pe-1").await, 2);

    // The key is part of the stored event.
    let stored = ts.get_event(first["id"].as_str().expect("id")).await;
    assert_eq!(stored["idempotencyKey"], "evt-1");
    assert_integrity(&stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redaction_is_visible_in_the_stored_event() {
    let ts = TestServer::start().await;
    let receipt = ts
        .ingest(json!({
            "action": "auth.password.change",
            "status": "success",
            "principalId": "u-1",
            "outcomeDescription": "verified identity with SSN 123-45-6789 before the change",
            "details": {"password": "hunter2", "note": "kept as is", "user": {"apiKey": "abc"}},
            "changes": {"changedFields": ["password"], "newValues": {"password": "s3cret!"}},
        }))
        .await;
    let stored = ts.get_event(receipt["id"].as_str().expect("id")).await;
    assert_eq!(stored["details"]["password"], "[REDACTED]");
    assert_eq!(stored["details"]["user"]["apiKey"], "[REDACTED]");
    assert_eq!(stored["details"]["note"], "kept as is");
    assert_eq!(stored["changes"]["newValues"]["password"], "[REDACTED]");
    assert_eq!(stored["changes"]["changedFields"], json!(["password"]));
    let description = stored["outcomeDescription"].as_str().expect("description");
    assert!(!description.contains("123-45-6789"), "{description}");
    assert!(
        description.starts_with("verified identity with SSN tok:"),
        "{description}"
    );
    assert!(description.ends_with(" before the change"), "{description}");
    let token = description
        .split_whitespace()
        .find(|w| w.starts_with("tok:"))
        .expect("token")
        .to_owned();
    assert_eq!(token.len(), 4 + 16);
    assert!(token[4..].bytes().all(|b| b.is_ascii_hexdigit()));
    let redactions: Vec<&str> = stored["redactions"]
        .as_array()
        .expect("redactions")
        .iter()
        .map(|v| v.as_str().expect("pointer"))
        .collect();
    for pointer in [
        "/details/password",
        "/details/user/apiKey",
        "/changes/newValues/password",
        "/outcomeDescription",
    ] {
        assert!(redactions.contains(&pointer), "{pointer} in {redactions:?}");
    }
    // The hash covers the redacted form.
    assert_eq!(assert_integrity(&stored), receipt["hash"]);
    let raw = serde_json::to_string(&stored).expect("json");
    assert!(!raw.contains("hunter2") && !raw.contains("s3cret!") && !raw.contains("123-45-6789"));

    // Equal inputs give equal tokens, so the token is searchable.
    let second = ts
        .ingest(json!({
            "action": "auth.password.change",
            "status": "success",
            "outcomeDescription": "SSN 123-45-6789 again",
        }))
        .await;
    let stored2 = ts.get_event(second["id"].as_str().expect("id")).await;
    assert_eq!(stored2["outcomeDescription"], format!("SSN {token} again"));
    let mut found = ts.search_ids(&[("q", token.as_str())]).await;
    found.sort();
    let mut expected = vec![
        receipt["id"].as_str().expect("id").to_owned(),
        second["id"].as_str().expect("id").to_owned(),
    ];
    expected.sort();
    assert_eq!(found, expected);
}

// ---------------------------------------------------------------------------------------------
// Search
// ---------------------------------------------------------------------------------------------

/// Six events whose timestamps are in 2020 (the server's own `audit.read` events are "now").
fn search_fixture() -> Vec<Value> {
    vec![
        json!({"action": "fhir.patient.read", "status": "success",
               "timestamp": "2020-01-01T00:00:00Z", "principalId": "alice",
               "organizationId": "org-a", "dataClassification": "PHI",
               "targetResourceType": "Patient", "targetResourceId": "pat-1",
               "correlationId": "corr-1",
               "sessionContext": {"sessionId": "s-1", "ipAddress": "10.0.0.1"},
               "healthcareContext": {"patientId": "pat-1"},
               "outcomeDescription": "opened chart for cardiology review"}),
        json!({"action": "fhir.patient.update", "status": "failure",
               "timestamp": "2020-01-01T01:00:00Z", "principalId": "bob",
               "organizationId": "org-a", "dataClassification": "PHI",
               "targetResourceType": "Patient", "targetResourceId": "pat-2",
               "correlationId": "corr-1",
               "sessionContext": {"sessionId": "s-2", "ipAddress": "10.0.0.2"},
               "healthcareContext": {"patientId": "pat-2"},
               "outcomeDescription": "update refused by policy"}),
        json!({"action": "auth.login.failure", "status": "failure",
               "timestamp": "2020-01-02T00:00:00Z", "principalId": "carol",
               "organizationId": "org-b", "dataClassification": "CONFIDENTIAL",
               "correlationId": "corr-2",
               "sessionContext": {"sessionId": "s-3", "ipAddress": "2001:db8::1"},
               "gdprContext": {"dataSubjectId": "subj-1"},
               "outcomeDescription": "wrong credentials entered"}),
        json!({"action": "fhir.observation.read", "status": "warning",
               "timestamp": "2020-01-03T00:00:00Z", "principalId": "alice",
               "organizationId": "org-b", "dataClassification": "PUBLIC",
               "targetResourceType": "Observation", "targetResourceId": "obs-1",
               "sessionContext": {"sessionId": "s-1", "ipAddress": "10.0.0.1"},
               "healthcareContext": {"patientId": "pat-1"},
               "gdprContext": {"dataSubjectId": "subj-1"},
               "outcomeDescription": "observation viewed during cardiology rounds"}),
        json!({"action": "admin.config.change", "status": "attempt",
               "timestamp": "2020-01-04T00:00:00Z", "principalId": "dave",
               "organizationId": "org-a", "dataClassification": "INTERNAL",
               "targetResourceType": "Config", "targetResourceId": "cfg-1",
               "correlationId": "corr-3",
               "outcomeDescription": "rotated the zebra credential"}),
        json!({"action": "fhir.patient.read", "status": "success",
               "timestamp": "2020-01-05T00:00:00Z", "principalId": "bob",
               "organizationId": "org-c", "dataClassification": "PHI",
               "targetResourceType": "Patient", "targetResourceId": "pat-1",
               "correlationId": "corr-3",
               "sessionContext": {"sessionId": "s-4", "ipAddress": "10.0.0.3"},
               "healthcareContext": {"patientId": "pat-1"}}),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_search_filter_returns_exactly_the_matching_events() {
    // Only the subject id itself is sealed here (no extra personal fields), so every other
    // field of the data-subject events stays searchable by value; sealing is tested in
    // `tests/erasure.rs`. The subject filter still goes through the subject's key.
    let ts = TestServer::start_with(|c| c.personal_fields.clear()).await;
    let fixture = search_fixture();
    // Ingest out of timestamp order, so "newest first" cannot be confused with append order.
    let order = [3usize, 0, 5, 1, 4, 2];
    let events: Vec<Value> = order.iter().map(|&i| fixture[i].clone()).collect();
    let receipts = ts.ingest_all(&events).await;
    let mut ids = vec![String::new(); fixture.len()];
    for (receipt, &i) in receipts.iter().zip(&order) {
        ids[i] = receipt["id"].as_str().expect("id").to_owned();
    }

    let cases: Vec<(Params, Vec<usize>)> = vec![
        (vec![("principalId", "alice")], vec![3, 0]),
        (vec![("principalId", "bob")], vec![5, 1]),
        (vec![("principalId", "nobody")], vec![]),
        (vec![("organizationId", "org-a")], vec![4, 1, 0]),
        (vec![("organizationId", "org-c")], vec![5]),
        (vec![("action", "fhir.patient.read")], vec![5, 0]),
        (vec![("action", "fhir")], vec![]),
        (vec![("action", "fhir.*")], vec![5, 3, 1, 0]),
        (vec![("action", "fhir.patient.*")], vec![5, 1, 0]),
        (vec![("action", "auth.*")], vec![2]),
        (vec![("action", "fhir.patient.rea*")], vec![5, 0]),
        (vec![("status", "failure")], vec![2, 1]),
        (vec![("status", "warning")], vec![3]),
        (vec![("status", "attempt")], vec![4]),
        (vec![("dataClassification", "PHI")], vec![5, 1, 0]),
        (vec![("dataClassification", "PUBLIC")], vec![3]),
        (vec![("dataClassification", "INTERNAL")], vec![4]),
        (vec![("targetResourceType", "Patient")], vec![5, 1, 0]),
        (vec![("targetResourceType", "Observation")], vec![3]),
        (vec![("targetResourceId", "pat-1")], vec![5, 0]),
        (vec![("sessionId", "s-1")], vec![3, 0]),
        (vec![("ipAddress", "10.0.0.1")], vec![3, 0]),
        (vec![("ipAddress", "2001:db8::1")], vec![2]),
        (vec![("patientId", "pat-1")], vec![5, 3, 0]),
        (vec![("patientId", "pat-2")], vec![1]),
        (vec![("dataSubjectId", "subj-1")], vec![3, 2]),
        (vec![("correlationId", "corr-1")], vec![1, 0]),
        (vec![("correlationId", "corr-3")], vec![5, 4]),
        // `from` is inclusive, `to` exclusive.
        (
            vec![
                ("from", "2020-01-02T00:00:00Z"),
                ("to", "2020-01-04T00:00:00Z"),
            ],
            vec![3, 2],
        ),
        (vec![("to", "2020-01-01T01:00:00Z")], vec![0]),
        (vec![("to", "2020-01-01T01:00:00.000001Z")], vec![1, 0]),
        (
            // The same instant as event 1, written with an offset.
            vec![
                ("from", "2020-01-01T02:00:00+01:00"),
                ("to", "2020-01-01T01:00:00.000001Z"),
            ],
            vec![1],
        ),
        (
            vec![("from", "2020-01-05T00:00:00Z"), ("principalId", "bob")],
            vec![5],
        ),
        // Filters that the server's own audit.read events would also match, bounded in time.
        (
            vec![("status", "success"), ("to", "2021-01-01T00:00:00Z")],
            vec![5, 0],
        ),
        (
            vec![
                ("dataClassification", "CONFIDENTIAL"),
                ("to", "2021-01-01T00:00:00Z"),
            ],
            vec![2],
        ),
        (vec![("to", "2021-01-01T00:00:00Z")], vec![5, 4, 3, 2, 1, 0]),
        // Full text: each term is searched once (the audit.read event of a search records
        // its query, and would match the same term later).
        (vec![("q", "zebra")], vec![4]),
        (vec![("q", "cardiology")], vec![3, 0]),
        (vec![("q", "cardiology chart")], vec![0]),
        (vec![("q", "refused")], vec![1]),
        (vec![("q", "nonexistentterm")], vec![]),
        // Control characters are dropped as sanitization drops them from stored text (a NUL
        // used to reach FTS5 and fail the search with a 500).
        (vec![("q", "polic\u{0}y")], vec![1]),
        (vec![("q", "rounds\u{1}")], vec![3]),
        // Combinations.
        (
            vec![("principalId", "alice"), ("organizationId", "org-b")],
            vec![3],
        ),
        (vec![("action", "fhir.*"), ("status", "failure")], vec![1]),
        (
            vec![("patientId", "pat-1"), ("dataClassification", "PHI")],
            vec![5, 0],
        ),
        (
            vec![("targetResourceType", "Patient"), ("ipAddress", "10.0.0.3")],
            vec![5],
        ),
        (
            vec![
                ("organizationId", "org-a"),
                ("from", "2020-01-01T00:30:00Z"),
                ("action", "fhir.*"),
            ],
            vec![1],
        ),
        (
            vec![("q", "credential"), ("organizationId", "org-a")],
            vec![4],
        ),
    ];
    for (params, expected) in cases {
        let page = ts.search(&params).await;
        let got = ids_of(&page);
        let want: Vec<String> = expected.iter().map(|&i| ids[i].clone()).collect();
        assert_eq!(
            got, want,
            "search {params:?}: expected fixture events {expected:?}"
        );
        assert_eq!(page["nextCursor"], Value::Null, "search {params:?}");
        // Results are whole stored events.
        for e in page["events"].as_array().expect("events") {
            assert_integrity(e);
        }
    }

    // `from` alone also finds the server's own (newer) audit.read events, newest first.
    let page = ts.search(&[("from", "2020-01-05T00:00:00Z")]).await;
    let events = page["events"].as_array().expect("events");
    let last = events.last().expect("non-empty");
    assert_eq!(last["id"], ids[5]);
    assert!(
        events[..events.len() - 1]
            .iter()
            .all(|e| e["action"] == "audit.read")
    );
    let timestamps: Vec<i64> = events
        .iter()
        .map(|e| {
            vellum_core::time_fmt::unix_micros(
                vellum_core::time_fmt::parse_rfc3339(e["timestamp"].as_str().expect("ts"))
                    .expect("rfc3339"),
            )
        })
        .collect();
    assert!(timestamps.windows(2).all(|w| w[0] >= w[1]), "newest first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyset_pagination_walks_every_page() {
    let ts = TestServer::start().await;
    // 24 events, three per timestamp, ingested in two batches and not in timestamp order.
    let n = 24;
    let make = |i: usize| {
        json!({"action": "page.test", "status": "success", "organizationId": "org-page",
               "timestamp": format!("2020-02-01T00:00:{:02}Z", (i * 7) % 8),
               "details": {"i": i}})
    };
    let all: Vec<Value> = (0..n).map(make).collect();
    let mut receipts = ts.ingest_all(&all[..10]).await;
    receipts.extend(ts.ingest_all(&all[10..]).await);
    // Newest first: timestamp descending, then later append first.
    let mut expected: Vec<(u64, usize)> = (0..n).map(|i| ((i * 7 % 8) as u64, i)).collect();
    expected.sort_by(|a, b| b.cmp(a));
    let expected: Vec<String> = expected
        .iter()
        .map(|&(_, i)| receipts[i]["id"].as_str().expect("id").to_owned())
        .collect();

    assert_eq!(
        ts.search_ids(&[("organizationId", "org-page"), ("limit", "1000")])
            .await,
        expected
    );

    for limit in [1usize, 5, 7, 8, 23, 24, 1000] {
        let limit_text = limit.to_string();
        let mut cursor: Option<String> = None;
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let mut params = vec![
                ("organizationId", "org-page"),
                ("action", "page.*"),
                ("limit", limit_text.as_str()),
            ];
            if let Some(c) = &cursor {
                params.push(("cursor", c.as_str()));
            }
            let page = ts.search(&params).await;
            pages += 1;
            assert!(pages <= n + 1, "pagination does not terminate");
            let ids = ids_of(&page);
            cursor = page["nextCursor"].as_str().map(str::to_owned);
            if cursor.is_some() {
                assert_eq!(ids.len(), limit, "a page before the last is full");
            } else {
                assert!(!ids.is_empty(), "no empty last page (limit {limit})");
            }
            seen.extend(ids);
            if cursor.is_none() {
                break;
            }
        }
        assert_eq!(pages, n.div_ceil(limit), "page count for limit {limit}");
        let unique: HashSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "no duplicates (limit {limit})");
        assert_eq!(seen, expected, "no gaps, same order (limit {limit})");
    }

    // Events written between pages (newer ones) do not disturb a walk in progress.
    let first = ts
        .search(&[("organizationId", "org-page"), ("limit", "10")])
        .await;
    let cursor = first["nextCursor"].as_str().expect("cursor").to_owned();
    ts.ingest(make(99)).await;
    let mut rest = ts
        .search_ids(&[
            ("organizationId", "org-page"),
            ("limit", "1000"),
            ("cursor", &cursor),
        ])
        .await;
    let mut walked = ids_of(&first);
    walked.append(&mut rest);
    assert_eq!(walked, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_rejects_bad_parameters() {
    let ts = TestServer::start().await;
    ts.ingest(event("a.b", "success")).await;
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("bogus", "1")], "bogus"),
        (vec![("principal_id", "alice")], "principal_id"),
        (vec![("limit", "0")], "limit"),
        (vec![("limit", "1001")], "limit"),
        (vec![("limit", "-1")], "limit"),
        (vec![("limit", "ten")], "limit"),
        (vec![("from", "yesterday")], "from"),
        (vec![("from", "2020-01-01")], "from"),
        (vec![("to", "2020-13-01T00:00:00Z")], "to"),
        (vec![("cursor", "!!!not-a-cursor")], "cursor"),
        (vec![("cursor", "eHl6")], "cursor"),
        (vec![("status", "done")], "status"),
        (vec![("dataClassification", "SECRET")], "dataClassification"),
        // A repeated filter is refused rather than silently keeping one value.
        (vec![("action", "a.b"), ("action", "x.y")], "action"),
    ];
    for (params, name) in cases {
        let response = ts.search_raw(&params).await;
        assert_eq!(
            response.status,
            StatusCode::BAD_REQUEST,
            "{params:?}: {}",
            response.body
        );
        assert_eq!(response.body["error"]["code"], "bad_request", "{params:?}");
        assert_eq!(response.error_paths(), vec![name.to_owned()], "{params:?}");
        assert!(
            response.body["error"]["message"]
                .as_str()
                .expect("message")
                .contains(name),
            "the message names the parameter: {}",
            response.body
        );
    }
    // The bounds themselves are fine.
    for limit in ["1", "1000"] {
        let page = ts.search(&[("limit", limit), ("action", "a.b")]).await;
        assert_eq!(ids_of(&page).len(), 1);
    }
}

/// Unknown routes, wrong methods and unknown ingest parameters answer in the SPEC §5 JSON error
/// format like everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_methods_and_params_are_json_errors() {
    let ts = TestServer::start().await;
    let response = TestServer::send(ts.get("/v1/nothing-here")).await;
    assert_eq!(response.status, StatusCode::NOT_FOUND);
    assert_eq!(
        response.body["error"]["code"], "not_found",
        "{}",
        response.body
    );
    let response = TestServer::send(
        ts.client
            .delete(format!("{}/v1/events", ts.base))
            .bearer_auth(&ts.key),
    )
    .await;
    assert_eq!(response.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        response.body["error"]["code"], "method_not_allowed",
        "{}",
        response.body
    );
    let response = TestServer::send(
        ts.client
            .post(format!("{}/v1/events?wiat=committed", ts.base))
            .bearer_auth(&ts.key)
            .json(&event("a.b", "success")),
    )
    .await;
    assert_eq!(
        response.status,
        StatusCode::BAD_REQUEST,
        "{}",
        response.body
    );
    assert_eq!(response.error_paths(), vec!["wiat".to_owned()]);
    let response = TestServer::send(
        ts.client
            .post(format!("{}/v1/events?wait=later", ts.base))
            .bearer_auth(&ts.key)
            .json(&event("a.b", "success")),
    )
    .await;
    assert_eq!(response.error_paths(), vec!["wait".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_event_404_and_400() {
    let ts = TestServer::start().await;
    ts.ingest(event("a.b", "success")).await;
    let response = TestServer::send(ts.get(&format!("/v1/events/{}", uuid::Uuid::now_v7()))).await;
    assert_eq!(response.status, StatusCode::NOT_FOUND, "{}", response.body);
    assert_eq!(response.body["error"]["code"], "not_found");
    let response = TestServer::send(ts.get("/v1/events/not-a-uuid")).await;
    assert_eq!(
        response.status,
        StatusCode::BAD_REQUEST,
        "{}",
        response.body
    );
    assert_eq!(response.error_paths(), vec!["id".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_recorded_as_audit_read_events() {
    let ts = TestServer::start().await;
    let receipt = ts
        .ingest(json!({"action": "fhir.patient.read", "status": "success", "principalId": "dr-x"}))
        .await;
    let id = receipt["id"].as_str().expect("id").to_owned();
    ts.get_event(&id).await;

    // The GET was recorded before this search ran.
    let page = ts.search(&[("action", "audit.read")]).await;
    let reads = page["events"].as_array().expect("events").clone();
    assert_eq!(reads.len(), 1, "{page}");
    let get_read = &reads[0];
    assert_eq!(get_read["status"], "success");
    assert_eq!(get_read["targetResourceType"], "AuditEvent");
    assert_eq!(get_read["targetResourceId"], id);
    assert_eq!(get_read["technicalContext"]["endpoint"], "/v1/events/{id}");
    assert_eq!(get_read["sessionContext"]["ipAddress"], "127.0.0.1");
    let key_id = get_read["principalId"]
        .as_str()
        .expect("principalId")
        .to_owned();
    assert_integrity(get_read);

    // And that search is now recorded too, with its query.
    let page = ts.search(&[("action", "audit.read")]).await;
    let reads = page["events"].as_array().expect("events").clone();
    assert_eq!(reads.len(), 2, "{page}");
    assert_eq!(reads[1]["id"], get_read["id"]);
    let search_read = &reads[0];
    assert_eq!(search_read["principalId"], key_id);
    assert_eq!(search_read["technicalContext"]["endpoint"], "/v1/events");
    assert_eq!(search_read["details"]["query"]["action"], "audit.read");
    assert_eq!(search_read["details"]["resultCount"], 1);

    // Filtering by the key id finds the reads (and only them).
    let by_principal = ts.search(&[("principalId", &key_id)]).await;
    let actions: HashSet<&str> = by_principal["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["action"].as_str().expect("action"))
        .collect();
    assert_eq!(actions, HashSet::from(["audit.read"]));
    assert_eq!(ids_of(&by_principal).len(), 3);

    // The principal is the id of the admin key.
    let dir = ts.data_dir();
    let (tmp, _) = ts.stop().await;
    let store = vellum_store::sqlite::SqliteStore::open(
        &dir,
        vellum_store::sqlite::SqliteOptions {
            run_indexer: false,
            ..Default::default()
        },
    )
    .expect("store reopens");
    let keys = vellum_store::AuditStore::list_api_keys(store.as_ref()).expect("keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].id, key_id);
    assert_eq!(keys[0].role, "admin");
    // Reads: GET, search, search, search-by-principal = 4 audit.read events in the log.
    let log = vellum_store::AuditStore::scan_log(store.as_ref(), "default", 0, 100).expect("scan");
    let reads = log
        .iter()
        .filter(|e| e.canonical.contains("\"action\":\"audit.read\""))
        .count();
    assert_eq!(reads, 4);
    drop(store);
    drop(tmp);
}

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_metrics_and_openapi() {
    let ts = TestServer::start().await;
    ts.ingest(event("a.b", "success")).await;

    let health = TestServer::send(ts.client.get(ts.url("/healthz"))).await;
    assert_eq!(health.expect(StatusCode::OK)["status"], "ok");

    let ready = TestServer::send(ts.client.get(ts.url("/readyz")))
        .await
        .expect(StatusCode::OK);
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["writer"], true);
    assert_eq!(ready["store"], true);

    let metrics = ts
        .client
        .get(ts.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.expect("text");
    assert!(text.contains("vellum_events_ingested_total"), "{text}");
    assert!(
        text.contains("vellum_http_request_duration_seconds"),
        "{text}"
    );
    assert!(text.contains("route=\"/v1/events\""), "{text}");

    let openapi = TestServer::send(ts.client.get(ts.url("/openapi.json")))
        .await
        .expect(StatusCode::OK);
    let version = openapi["openapi"].as_str().expect("openapi version");
    assert!(version.starts_with("3.1."), "{version}");
    let events = &openapi["paths"]["/v1/events"];
    assert!(
        events["get"].is_object() && events["post"].is_object(),
        "{events}"
    );
    assert!(openapi["paths"]["/v1/events/{id}"]["get"].is_object());
    assert!(openapi["components"]["securitySchemes"]["bearer"].is_object());
}

/// The ingest queue bound (`ingest_queue_events`): while the writer cannot commit (another
/// connection holds SQLite's write lock), one request waits in the queue and the next is
/// answered 503 with `Retry-After` at once; when the lock goes, the waiting one commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_ingest_queue_answers_503() {
    let ts = TestServer::start_with(|c| c.ingest_queue_events = 1).await;
    // Warm up: the key is cached and the writer runs.
    ts.ingest(event("warm.up", "success")).await;

    let blocker = rusqlite::Connection::open(ts.data_dir().join("vellum.db")).expect("open log");
    blocker
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");

    let request = |n: u32| {
        ts.post()
            .json(&json!({"action": "queue.test", "status": "success",
                          "correlationId": "queue", "details": {"n": n}}))
    };
    let (req_a, req_b) = (request(1), request(2));
    let mut a = tokio::spawn(async move { TestServer::send(req_a).await });
    let mut b = tokio::spawn(async move { TestServer::send(req_b).await });
    // One of them is queued behind the lock; the other cannot be, and returns first.
    let (refused, waiting) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::select! {
            r = &mut a => (r.expect("task"), b),
            r = &mut b => (r.expect("task"), a),
        }
    })
    .await
    .expect("one request is refused at once");
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );
    assert_eq!(refused.body["error"]["code"], "overloaded");
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("queue is full"),
        "{}",
        refused.body
    );
    assert_eq!(
        refused
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );

    blocker.execute_batch("COMMIT").expect("release the lock");
    drop(blocker);
    let accepted = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("the queued request completes")
        .expect("task");
    let receipt = accepted.expect(StatusCode::CREATED);
    assert_eq!(receipt["seq"], 1);

    // The queue is free again.
    assert_eq!(
        ts.ingest(json!({"action": "queue.test", "status": "success", "correlationId": "queue"}))
            .await["seq"],
        2
    );
    assert_eq!(count_correlated(&ts, "queue").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_and_restart_continue_the_chain() {
    let ts = TestServer::start().await;
    let mut receipts = Vec::new();
    for i in 0..3 {
        receipts.push(
            ts.ingest(json!({"action": "before.restart", "status": "success",
                             "correlationId": "restart", "details": {"i": i}}))
                .await,
        );
    }
    // Search once so the index has been written before the stop.
    assert_eq!(count_correlated(&ts, "restart").await, 3);
    let idempotent = json!({"action": "idem.restart", "status": "success"});
    let idem_first = TestServer::send(
        ts.post()
            .header("Idempotency-Key", "across-restart")
            .json(&idempotent),
    )
    .await
    .expect(StatusCode::CREATED);
    assert_eq!(idem_first["seq"], 4);
    let old_client = ts.client.clone();
    let old_base = ts.base.clone();
    let (dir, key) = ts.stop().await;
    // The old listener is closed.
    assert!(
        old_client
            .get(format!("{old_base}/healthz"))
            .send()
            .await
            .is_err(),
        "the stopped server does not answer"
    );

    let ts = TestServer::restart(dir, key).await;
    // The idempotency key is still honoured after the restart.
    let idem_again = TestServer::send(
        ts.post()
            .header("Idempotency-Key", "across-restart")
            .json(&idempotent),
    )
    .await
    .expect(StatusCode::CREATED);
    assert_eq!(idem_again, idem_first);
    // seq 3 was the audit.read of the search above, seq 4 the idempotent event.
    let after = ts
        .ingest(json!({"action": "after.restart", "status": "success", "correlationId": "restart"}))
        .await;
    assert_eq!(after["seq"], 5);
    let stored = ts.get_event(after["id"].as_str().expect("id")).await;
    assert_eq!(assert_integrity(&stored), after["hash"]);
    assert_eq!(
        stored["prevHash"], idem_first["hash"],
        "the chain links across the restart"
    );
    let search_read = ts.search(&[("action", "audit.read")]).await;
    let search_read = search_read["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["seq"] == 3)
        .expect("the pre-restart audit.read")
        .clone();
    assert_eq!(search_read["prevHash"], receipts[2]["hash"]);
    let idem_stored = ts.get_event(idem_first["id"].as_str().expect("id")).await;
    assert_eq!(idem_stored["prevHash"], search_read["hash"]);
    assert_eq!(count_correlated(&ts, "restart").await, 4);

    // Old events are still there, by id and by search.
    for r in &receipts {
        let old = ts.get_event(r["id"].as_str().expect("id")).await;
        assert_eq!(assert_integrity(&old), r["hash"]);
    }
    let found = ts
        .search_ids(&[("correlationId", "restart"), ("limit", "100")])
        .await;
    let mut want: Vec<String> = receipts
        .iter()
        .chain(std::iter::once(&after))
        .map(|r| r["id"].as_str().expect("id").to_owned())
        .collect();
    want.reverse();
    assert_eq!(found, want);

    let (dir, _) = ts.stop().await;
    drop(dir);
}

// ---------------------------------------------------------------------------------------------
// Access control (SPEC §6)
// ---------------------------------------------------------------------------------------------

/// Keys seeded into a data directory before the server first starts.
struct SeededKeys {
    admin: String,
    ingest_a: String,
    reader_a: String,
    reader_b: String,
    auditor: String,
    revoked: String,
}

fn seed_keys(dir: &Path) -> SeededKeys {
    use vellum_store::AuditStore;
    let store = vellum_store::sqlite::SqliteStore::open(
        dir,
        vellum_store::sqlite::SqliteOptions {
            run_indexer: false,
            ..Default::default()
        },
    )
    .expect("store");
    let make = |role: &str, org: Option<&str>, revoked: bool| {
        let key = vellum_server::auth::generate_key().expect("rng");
        store
            .insert_api_key(
                &vellum_store::ApiKeyRecord {
                    id: vellum_server::auth::new_key_id(),
                    key_hash: key.hash,
                    role: role.into(),
                    organization_id: org.map(str::to_owned),
                    name: Some(format!("{role} {org:?}")),
                    created_at: "2026-01-01T00:00:00.000000Z".into(),
                    revoked_at: revoked.then(|| "2026-01-02T00:00:00.000000Z".to_owned()),
                },
                &[],
            )
            .expect("insert key");
        key.secret.to_string()
    };
    SeededKeys {
        admin: make("admin", None, false),
        ingest_a: make("ingest", Some("org-a"), false),
        reader_a: make("reader", Some("org-a"), false),
        reader_b: make("reader", Some("org-b"), false),
        auditor: make("auditor", None, false),
        revoked: make("admin", None, true),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_organizations_scope_every_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = seed_keys(dir.path());
    let server = vellum_server::start(config(dir.path()))
        .await
        .expect("server starts");
    assert!(
        server.admin_key_file.is_none(),
        "keys exist: no bootstrap key"
    );
    assert!(!dir.path().join("admin.key").exists());
    let ts = TestServer::attach(dir, server, keys.admin.clone());
    let as_key = |key: &str, builder: reqwest::RequestBuilder| builder.bearer_auth(key);
    let post = |key: &str, body: &Value| {
        TestServer::send(as_key(key, ts.client.post(ts.url("/v1/events"))).json(body))
    };
    let search = |key: &str, params: &[(&str, &str)]| {
        TestServer::send(as_key(key, ts.client.get(ts.url("/v1/events"))).query(params))
    };
    let get = |key: &str, id: &str| {
        TestServer::send(as_key(
            key,
            ts.client.get(ts.url(&format!("/v1/events/{id}"))),
        ))
    };

    // An org-bound ingest key: its organization is filled in, another one is refused.
    let a1 = post(
        &keys.ingest_a,
        &json!({"action": "fhir.patient.read", "status": "success"}),
    )
    .await
    .expect(StatusCode::CREATED);
    let refused = post(
        &keys.ingest_a,
        &json!({"action": "fhir.patient.read", "status": "success", "organizationId": "org-b"}),
    )
    .await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.body
    );
    assert_eq!(refused.error_paths(), vec!["/organizationId".to_owned()]);
    let a2 = post(
        &keys.ingest_a,
        &json!({"action": "fhir.patient.update", "status": "success", "organizationId": "org-a"}),
    )
    .await
    .expect(StatusCode::CREATED);
    let b1 = post(
        &keys.admin,
        &json!({"action": "fhir.patient.read", "status": "success", "organizationId": "org-b"}),
    )
    .await
    .expect(StatusCode::CREATED);
    let none = post(
        &keys.admin,
        &json!({"action": "fhir.system.read", "status": "success"}),
    )
    .await
    .expect(StatusCode::CREATED);
    let id = |r: &Value| r["id"].as_str().expect("id").to_owned();

    // Ingest keys cannot read; readers cannot write.
    let r = search(&keys.ingest_a, &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "forbidden");
    assert_eq!(
        get(&keys.ingest_a, &id(&a1)).await.status,
        StatusCode::FORBIDDEN
    );
    let r = post(
        &keys.reader_a,
        &json!({"action": "a.b", "status": "success"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = post(
        &keys.auditor,
        &json!({"action": "a.b", "status": "success"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);

    // A revoked key is refused.
    let r = search(&keys.revoked, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    let r = post(
        &keys.revoked,
        &json!({"action": "a.b", "status": "success"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);

    // Org-bound readers see only their organization, whatever they ask.
    let fhir = [("action", "fhir.*")];
    let mut seen_a = ids_of(&search(&keys.reader_a, &fhir).await.expect(StatusCode::OK));
    seen_a.sort();
    let mut want_a = vec![id(&a1), id(&a2)];
    want_a.sort();
    assert_eq!(seen_a, want_a);
    let r = search(&keys.reader_a, &[("organizationId", "org-b")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let own = search(
        &keys.reader_a,
        &[("organizationId", "org-a"), ("action", "fhir.*")],
    )
    .await
    .expect(StatusCode::OK);
    assert_eq!(ids_of(&own).len(), 2);
    assert_eq!(
        ids_of(&search(&keys.reader_b, &fhir).await.expect(StatusCode::OK)),
        vec![id(&b1)]
    );
    // Everything a bound reader gets back, audit.read events included, is its organization's.
    let everything = search(&keys.reader_b, &[("limit", "1000")])
        .await
        .expect(StatusCode::OK);
    for e in everything["events"].as_array().expect("events") {
        assert_eq!(e["organizationId"], "org-b", "{e}");
    }
    // By id: another organization's event does not exist for this key.
    let r = get(&keys.reader_a, &id(&b1)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = get(&keys.reader_a, &id(&none)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    get(&keys.reader_a, &id(&a1)).await.expect(StatusCode::OK);

    // Unbound auditors and admins see every organization.
    let mut all = ids_of(&search(&keys.auditor, &fhir).await.expect(StatusCode::OK));
    all.sort();
    let mut want = vec![id(&a1), id(&a2), id(&b1), id(&none)];
    want.sort();
    assert_eq!(all, want);
    get(&keys.auditor, &id(&b1)).await.expect(StatusCode::OK);

    // A bound reader's own reads are recorded in its organization, under its key id.
    let reads = search(
        &keys.reader_a,
        &[("action", "audit.read"), ("status", "success")],
    )
    .await
    .expect(StatusCode::OK);
    let reads = reads["events"].as_array().expect("events");
    assert!(!reads.is_empty());
    let principal = reads[0]["principalId"].clone();
    for e in reads {
        assert_eq!(e["organizationId"], "org-a");
        assert_eq!(e["principalId"], principal);
    }
    // Refused reads (the org-a ingest key searching above) are recorded too, as failures.
    let refused = search(
        &keys.reader_a,
        &[("action", "audit.read"), ("status", "failure")],
    )
    .await
    .expect(StatusCode::OK);
    let refused = refused["events"].as_array().expect("events");
    assert!(!refused.is_empty(), "a refused read left no trace");
    for e in refused {
        assert_eq!(e["severity"], "high");
        assert_ne!(e["principalId"], principal);
        assert_eq!(e["technicalContext"]["statusCode"], 403);
    }
    ts.stop().await;
}
