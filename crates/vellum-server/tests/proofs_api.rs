//! End-to-end tests of the verifiable-log endpoints (SPEC §4–5, issue 3) against a real server:
//! a real SQLite store in a temporary directory, a real listener on 127.0.0.1 port 0, a real
//! HTTP client. Every proof and signature the server hands out is checked here with
//! `vellum_core`'s verifiers and the published public key only, as a third party would.
//!
//! Nothing asserts on timing: where a checkpoint is expected "soon", the test polls with a
//! generous deadline.

#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use vellum_core::checkpoint::{
    CheckpointKey, CheckpointSigner, SignedCheckpoint, key_id, parse_note, verify_note,
};
use vellum_core::merkle::{Hash, leaf_hash, mth, verify_consistency, verify_inclusion};
use vellum_server::{RunningServer, ServerConfig};
use zeroize::Zeroizing;

const SECRET: &str = "proofs-api-integration-test-secret-0123456789";

// ---------------------------------------------------------------------------------------------
// Harness (after http_api.rs)
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Resp {
    status: StatusCode,
    content_type: String,
    text: String,
    body: Value,
}

impl Resp {
    async fn read(response: reqwest::Response) -> Self {
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = response.text().await.expect("response body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        Self {
            status,
            content_type,
            text,
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
        index_wait_ms: 60_000,
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
        let key_file = server.admin_key_file.clone().expect("admin key file");
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

    async fn stop(mut self) -> (TempDir, String) {
        let server = self.server.take().expect("running");
        server.shutdown().await.expect("clean shutdown");
        (self.dir, self.key)
    }

    async fn restart_with(
        dir: TempDir,
        key: String,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let mut cfg = config(dir.path());
        tweak(&mut cfg);
        let server = vellum_server::start(cfg).await.expect("server restarts");
        assert!(server.admin_key_file.is_none());
        Self::attach(dir, server, key)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(builder: reqwest::RequestBuilder) -> Resp {
        Resp::read(builder.send().await.expect("request sent")).await
    }

    async fn get(&self, path: &str) -> Resp {
        Self::send(self.client.get(self.url(path)).bearer_auth(&self.key)).await
    }

    async fn post(&self, path: &str, body: &Value) -> Resp {
        Self::send(
            self.client
                .post(self.url(path))
                .bearer_auth(&self.key)
                .json(body),
        )
        .await
    }

    /// Ingests `n` events in one batch; returns `(id, seq, hash)` of each, in order.
    async fn ingest(&self, n: usize, tag: &str) -> Vec<Ack> {
        let events: Vec<Value> = (0..n)
            .map(|i| json!({"action": "proof.test", "status": "success", "details": {"tag": tag, "i": i}}))
            .collect();
        let body = self
            .post("/v1/events", &json!({ "events": events }))
            .await
            .expect(StatusCode::CREATED);
        body["accepted"]
            .as_array()
            .expect("accepted")
            .iter()
            .map(Ack::from)
            .collect()
    }

    /// `POST /v1/logs/default/checkpoint` (201).
    async fn checkpoint_now(&self) -> SignedCheckpoint {
        let body = self
            .post("/v1/logs/default/checkpoint", &json!({}))
            .await
            .expect(StatusCode::CREATED);
        serde_json::from_value(body).expect("checkpoint JSON")
    }

    async fn latest_checkpoint(&self) -> Option<SignedCheckpoint> {
        let r = self.get("/v1/logs/default/checkpoint").await;
        if r.status == StatusCode::NOT_FOUND {
            return None;
        }
        Some(serde_json::from_value(r.expect(StatusCode::OK)).expect("checkpoint JSON"))
    }

    /// The published checkpoint keys, as verifier keys.
    async fn keys(&self) -> Vec<CheckpointKey> {
        let body = self.get("/v1/keys").await.expect(StatusCode::OK);
        body["checkpointKeys"]
            .as_array()
            .expect("checkpointKeys")
            .iter()
            .map(|k| CheckpointKey::parse(k["verifierKey"].as_str().expect("verifierKey")).unwrap())
            .collect()
    }
}

/// Creates an API key with `role` directly in the store of `dir` (before the server starts, as
/// http_api.rs does); returns the secret.
fn seed_key(dir: &Path, role: &str) -> String {
    use vellum_store::AuditStore;
    let store = vellum_store::sqlite::SqliteStore::open(
        dir,
        vellum_store::sqlite::SqliteOptions {
            run_indexer: false,
            ..Default::default()
        },
    )
    .expect("store");
    let key = vellum_server::auth::generate_key().expect("rng");
    store
        .insert_api_key(
            &vellum_store::ApiKeyRecord {
                id: vellum_server::auth::new_key_id(),
                key_hash: key.hash,
                role: role.into(),
                organization_id: None,
                name: Some(role.to_owned()),
                created_at: "2026-01-01T00:00:00.000000Z".into(),
                revoked_at: None,
            },
            &[],
        )
        .expect("insert key");
    store.shutdown();
    key.secret.to_string()
}

#[derive(Debug, Clone)]
struct Ack {
    id: String,
    seq: u64,
    hash: [u8; 32],
}

impl From<&Value> for Ack {
    fn from(v: &Value) -> Self {
        Ack {
            id: v["id"].as_str().expect("id").to_owned(),
            seq: v["seq"].as_u64().expect("seq"),
            hash: hex::decode(v["hash"].as_str().expect("hash"))
                .expect("hex")
                .try_into()
                .expect("32 bytes"),
        }
    }
}

/// The reference root of the first `n` events, from their receipts alone.
fn root_of(acks: &[Ack], n: u64) -> Hash {
    let leaves: Vec<Hash> = acks[..n as usize]
        .iter()
        .map(|a| leaf_hash(&a.hash))
        .collect();
    mth(&leaves)
}

fn hex32(v: &Value) -> Hash {
    hex::decode(v.as_str().unwrap_or_else(|| panic!("not a string: {v}")))
        .expect("hex")
        .try_into()
        .expect("32 bytes")
}

fn hashes(v: &Value) -> Vec<Hash> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(hex32)
        .collect()
}

/// Verifies a checkpoint's signature under `keys` and returns its `(tree_size, root)`.
fn verified(cp: &SignedCheckpoint, keys: &[CheckpointKey]) -> (u64, Hash) {
    let body = cp
        .verify(keys)
        .unwrap_or_else(|e| panic!("checkpoint {cp:?} does not verify: {e}"));
    assert_eq!(body.log_id, "default");
    assert_eq!(hex::encode(body.root_hash), cp.root_hash);
    (body.tree_size, body.root_hash)
}

/// Checks an inclusion proof object (`{logId, leafIndex, treeSize, leafHash, hashes[]}`)
/// for `ack` against `root`.
fn check_proof(proof: &Value, ack: &Ack, tree_size: u64, root: &Hash) {
    assert_eq!(proof["logId"], "default", "{proof}");
    assert_eq!(proof["leafIndex"], ack.seq, "{proof}");
    assert_eq!(proof["treeSize"], tree_size, "{proof}");
    let leaf = leaf_hash(&ack.hash);
    assert_eq!(hex32(&proof["leafHash"]), leaf, "{proof}");
    let path = hashes(&proof["hashes"]);
    verify_inclusion(ack.seq, tree_size, &leaf, &path, root)
        .unwrap_or_else(|e| panic!("inclusion proof of seq {} fails: {e}; {proof}", ack.seq));
    // And it is not a proof of anything else.
    let mut other = leaf;
    other[0] ^= 1;
    assert!(verify_inclusion(ack.seq, tree_size, &other, &path, root).is_err());
}

/// Polls `probe` until it returns `Some`, for at most `limit` (a generous bound for a loaded
/// machine, not a timing requirement).
async fn poll<T, F: std::future::Future<Output = Option<T>>>(
    limit: Duration,
    mut probe: impl FnMut() -> F,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and checkpoints
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_checkpoint_shapes_and_signatures() {
    let ts = TestServer::start().await;

    // GET /v1/keys: one Ed25519 key, id = SHA-256(name || 0x0A || 0x01 || key)[..4].
    let body = ts.get("/v1/keys").await.expect(StatusCode::OK);
    let keys = body["checkpointKeys"].as_array().expect("checkpointKeys");
    assert_eq!(keys.len(), 1, "{body}");
    let k = &keys[0];
    assert_eq!(k["algorithm"], "ed25519", "{body}");
    assert_eq!(k["current"], true, "{body}");
    let public: [u8; 32] = B64
        .decode(k["publicKey"].as_str().expect("publicKey"))
        .expect("base64")
        .try_into()
        .expect("32-byte public key");
    let name = k["name"].as_str().expect("name");
    assert_eq!(
        k["keyId"].as_str().expect("keyId"),
        hex::encode(key_id(name, &public)),
        "{body}"
    );
    let key = CheckpointKey::parse(k["verifierKey"].as_str().unwrap()).unwrap();
    assert_eq!(key.public_key, public);
    // The key on disk is the one published.
    let seed =
        vellum_server::bootstrap::read_checkpoint_seed(&ts.dir.path().join("checkpoint.key"))
            .expect("checkpoint.key");
    assert_eq!(
        CheckpointSigner::from_seed(name, &seed).unwrap().public(),
        key
    );

    // No events yet: no checkpoint.
    assert!(ts.latest_checkpoint().await.is_none());
    let r = ts.get("/v1/logs/default/checkpoint").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);

    let acks = ts.ingest(7, "shape").await;
    let cp = ts.checkpoint_now().await;
    assert_eq!(cp.tree_size, 7);
    let (size, root) = verified(&cp, std::slice::from_ref(&key));
    assert_eq!(size, 7);
    assert_eq!(
        root,
        root_of(&acks, 7),
        "signed root = RFC 9162 root of the events"
    );

    // JSON form: exactly SPEC §5's fields.
    let json_cp = ts
        .get("/v1/logs/default/checkpoint")
        .await
        .expect(StatusCode::OK);
    let mut fields: Vec<&str> = json_cp
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "keyId",
            "logId",
            "note",
            "rootHash",
            "signature",
            "timestamp",
            "treeSize"
        ]
    );
    assert_eq!(json_cp["keyId"], key.key_id_hex());
    vellum_core::time_fmt::parse_rfc3339(json_cp["timestamp"].as_str().unwrap())
        .expect("timestamp is RFC 3339");
    let sig = B64.decode(json_cp["signature"].as_str().unwrap()).unwrap();
    assert_eq!(sig.len(), 64);

    // Note form: C2SP signed note, byte for byte the JSON's note.
    let r = ts.get("/v1/logs/default/checkpoint?format=note").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.content_type.starts_with("text/plain"),
        "{}",
        r.content_type
    );
    assert_eq!(r.text, cp.note);
    let expected_body = format!("vellum/default\n7\n{}\n", B64.encode(root));
    assert!(
        r.text
            .starts_with(&format!("{expected_body}\n\u{2014} {name} ")),
        "{}",
        r.text
    );
    assert!(r.text.ends_with('\n'));
    let (parsed, by) = verify_note(&r.text, std::slice::from_ref(&key)).expect("note verifies");
    assert_eq!(by, &key);
    assert_eq!(parsed.body_text, expected_body);
    // The signature line carries keyId || the same signature as the JSON.
    let blob = B64
        .decode(r.text.trim_end().rsplit(' ').next().unwrap())
        .unwrap();
    assert_eq!(hex::encode(&blob[..4]), key.key_id_hex());
    assert_eq!(blob[4..], sig[..]);
    assert_eq!(parse_note(&r.text).unwrap().body.tree_size, 7);

    // A forged note does not verify under the published key.
    let forged = r.text.replacen("\n7\n", "\n8\n", 1);
    assert!(verify_note(&forged, std::slice::from_ref(&key)).is_err());
    let other = CheckpointSigner::from_seed(name, &[3u8; 32])
        .unwrap()
        .public();
    assert!(cp.verify(&[other]).is_err());

    let r = ts.get("/v1/logs/default/checkpoint?format=xml").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_paths(), vec!["format".to_owned()]);
}

// ---------------------------------------------------------------------------------------------
// Proofs
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inclusion_proofs_verify_against_the_signed_root() {
    let ts = TestServer::start().await;
    let keys = ts.keys().await;
    // More than one tile (256 leaves) so proofs cross tiles.
    let mut acks = ts.ingest(300, "a").await;
    acks.extend(ts.ingest(23, "b").await);
    let n = acks.len() as u64;
    let cp = ts.checkpoint_now().await;
    assert_eq!(cp.tree_size, n);
    let (_, root) = verified(&cp, &keys);
    assert_eq!(root, root_of(&acks, n));

    for &seq in &[0u64, 1, 17, 255, 256, 299, 300, n - 1] {
        let ack = &acks[seq as usize];
        let proof = ts
            .get(&format!("/v1/events/{}/proof", ack.id))
            .await
            .expect(StatusCode::OK);
        check_proof(&proof, ack, n, &root);
        // The default tree is the oldest checkpoint covering the event, and it comes along.
        let attached: SignedCheckpoint =
            serde_json::from_value(proof["checkpoint"].clone()).expect("checkpoint attached");
        assert_eq!(attached, cp);
    }

    // Explicit tree sizes, verified against the reference roots of those prefixes (no
    // checkpoint exists at those sizes, so none is attached).
    let ack = &acks[17];
    for size in [18u64, 64, 257, n] {
        let proof = ts
            .get(&format!("/v1/events/{}/proof?treeSize={size}", ack.id))
            .await
            .expect(StatusCode::OK);
        check_proof(&proof, ack, size, &root_of(&acks, size));
        if size == n {
            assert_eq!(proof["checkpoint"]["treeSize"], n, "{proof}");
        } else {
            assert!(proof.get("checkpoint").is_none(), "{proof}");
        }
    }

    // Sizes that cannot hold the event, or that the tree has not reached, are 400 naming
    // treeSize. (Every proof read is itself audited, so the log grows as this test reads; an
    // on-demand checkpoint says how large it is right now.)
    let now = ts.checkpoint_now().await.tree_size;
    assert!(now > n);
    for bad in [
        "17".to_owned(),
        "0".to_owned(),
        (now + 1).to_string(),
        (n * 1000).to_string(),
        u64::MAX.to_string(),
        "-1".to_owned(),
        "x".to_owned(),
    ] {
        let r = ts
            .get(&format!("/v1/events/{}/proof?treeSize={bad}", ack.id))
            .await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "treeSize={bad}: {}",
            r.body
        );
        assert_eq!(
            r.error_paths(),
            vec!["treeSize".to_owned()],
            "treeSize={bad}"
        );
    }
    let r = ts.get(&format!("/v1/events/{}/proof?size=3", ack.id)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let r = ts
        .get(&format!("/v1/events/{}/proof", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proof_without_a_checkpoint_asks_for_one() {
    // A long interval: no checkpoint appears by itself during the test.
    let ts = TestServer::start_with(|c| c.checkpoint_interval_ms = 3_600_000).await;
    let acks = ts.ingest(5, "lazy").await;
    assert!(ts.latest_checkpoint().await.is_none());
    let proof = ts
        .get(&format!("/v1/events/{}/proof", acks[2].id))
        .await
        .expect(StatusCode::OK);
    let cp: SignedCheckpoint = serde_json::from_value(proof["checkpoint"].clone()).unwrap();
    let (size, root) = verified(&cp, &ts.keys().await);
    assert_eq!(size, 5);
    check_proof(&proof, &acks[2], 5, &root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistency_between_checkpoints_verifies() {
    let ts = TestServer::start_with(|c| c.checkpoint_interval_ms = 3_600_000).await;
    let keys = ts.keys().await;
    let mut acks = ts.ingest(5, "one").await;
    let first = ts.checkpoint_now().await;
    acks.extend(ts.ingest(270, "two").await);
    let second = ts.checkpoint_now().await;
    let (m, r1) = verified(&first, &keys);
    let (n, r2) = verified(&second, &keys);
    assert_eq!((m, n), (5, 275));
    assert_eq!(r2, root_of(&acks, n));

    let body = ts
        .get(&format!("/v1/logs/default/consistency?from={m}&to={n}"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(body["from"], m);
    assert_eq!(body["to"], n);
    let proof = hashes(&body["hashes"]);
    verify_consistency(m, n, &r1, &r2, &proof).expect("consistency proof verifies");
    let mut bad = proof.clone();
    bad[0][31] ^= 1;
    assert!(verify_consistency(m, n, &r1, &r2, &bad).is_err());

    // `to` defaults to the latest checkpoint.
    let body = ts
        .get(&format!("/v1/logs/default/consistency?from={m}"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(body["to"], n);
    assert_eq!(hashes(&body["hashes"]), proof);

    // Between arbitrary sizes, against the reference roots.
    for (a, b) in [(1u64, 2u64), (3, 256), (256, 257), (100, 275), (275, 275)] {
        let body = ts
            .get(&format!("/v1/logs/default/consistency?from={a}&to={b}"))
            .await
            .expect(StatusCode::OK);
        verify_consistency(
            a,
            b,
            &root_of(&acks, a),
            &root_of(&acks, b),
            &hashes(&body["hashes"]),
        )
        .unwrap_or_else(|e| panic!("{a} -> {b}: {e}"));
    }

    for (query, path) in [
        ("from=6&to=5", "from"),
        ("from=0&to=5", "from"),
        ("to=5", "from"),
        ("from=5&to=276", "to"),
        ("from=5&to=x", "to"),
        ("from=5&to=9999999", "to"),
    ] {
        let r = ts
            .get(&format!("/v1/logs/default/consistency?{query}"))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {}", r.body);
        assert_eq!(r.error_paths(), vec![path.to_owned()], "{query}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_checkpoint_receipts_carry_a_verifiable_proof() {
    let ts = TestServer::start_with(|c| c.checkpoint_interval_ms = 3_600_000).await;
    let keys = ts.keys().await;
    let mut acks = ts.ingest(3, "before").await;

    // A single event.
    let body = ts
        .post(
            "/v1/events?wait=checkpoint",
            &json!({"action": "proof.single", "status": "success"}),
        )
        .await
        .expect(StatusCode::CREATED);
    let ack = Ack::from(&body);
    assert_eq!(ack.seq, 3);
    acks.push(ack.clone());
    let proof = &body["proof"];
    let cp: SignedCheckpoint = serde_json::from_value(proof["checkpoint"].clone()).unwrap();
    let (size, root) = verified(&cp, &keys);
    assert_eq!(size, 4, "the checkpoint covers the event: {body}");
    assert_eq!(root, root_of(&acks, 4));
    check_proof(proof, &ack, size, &root);

    // A batch: every accepted entry has its proof under the same checkpoint.
    let events: Vec<Value> = (0..6)
        .map(|i| json!({"action": "proof.batch", "status": "success", "details": {"i": i}}))
        .collect();
    let body = ts
        .post("/v1/events?wait=checkpoint", &json!({ "events": events }))
        .await
        .expect(StatusCode::CREATED);
    let accepted = body["accepted"].as_array().expect("accepted");
    assert_eq!(accepted.len(), 6);
    let batch: Vec<Ack> = accepted.iter().map(Ack::from).collect();
    acks.extend(batch.iter().cloned());
    for (entry, ack) in accepted.iter().zip(&batch) {
        let proof = &entry["proof"];
        let cp: SignedCheckpoint = serde_json::from_value(proof["checkpoint"].clone()).unwrap();
        let (size, root) = verified(&cp, &keys);
        assert_eq!(size, 10, "{entry}");
        assert_eq!(root, root_of(&acks, 10));
        check_proof(proof, ack, size, &root);
    }

    // Without the parameter there is no proof in the receipt.
    let body = ts
        .post(
            "/v1/events",
            &json!({"action": "proof.plain", "status": "success"}),
        )
        .await
        .expect(StatusCode::CREATED);
    assert!(body.get("proof").is_none(), "{body}");
    let r = ts
        .post(
            "/v1/events?wait=soon",
            &json!({"action": "a.b", "status": "success"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_paths(), vec!["wait".to_owned()]);
}

// ---------------------------------------------------------------------------------------------
// Verification, background checkpoints, restart, rotation
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_endpoint_reports_ok_and_requires_auditor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = seed_key(dir.path(), "admin");
    let roles: Vec<(&str, String)> = ["auditor", "ingest", "reader"]
        .into_iter()
        .map(|r| (r, seed_key(dir.path(), r)))
        .collect();
    let server = vellum_server::start(config(dir.path()))
        .await
        .expect("server starts");
    let ts = TestServer::attach(dir, server, admin);
    ts.ingest(12, "v").await;
    ts.checkpoint_now().await;
    ts.ingest(3, "w").await;
    ts.checkpoint_now().await;

    let report = ts
        .post("/v1/verify", &json!({}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["signaturesChecked"], true, "{report}");
    assert!(
        report["checkpointsVerified"].as_u64().unwrap() >= 2,
        "{report}"
    );
    let log = &report["logs"][0];
    assert_eq!(log["logId"], "default");
    assert_eq!(log["failures"], json!([]));
    assert!(log["checkpointsMatched"].as_u64().unwrap() >= 2, "{report}");

    // An auditor may; ingest and reader keys may not.
    let auditor = &roles[0].1;
    let r = TestServer::send(
        ts.client
            .post(ts.url("/v1/verify"))
            .bearer_auth(auditor)
            .json(&json!({"logId": "default"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["ok"], true);
    for (role, key) in &roles[1..] {
        let r = TestServer::send(
            ts.client
                .post(ts.url("/v1/verify"))
                .bearer_auth(key)
                .json(&json!({})),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{role}: {}", r.body);
    }
    let r = TestServer::send(ts.client.post(ts.url("/v1/verify")).json(&json!({}))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = ts.post("/v1/verify", &json!({"bogus": 1})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_checkpoint_covers_events_after_ingest_stops() {
    let ts = TestServer::start_with(|c| c.checkpoint_interval_ms = 150).await;
    let keys = ts.keys().await;
    let mut acks = Vec::new();
    for i in 0..4 {
        acks.extend(ts.ingest(5, &format!("bg{i}")).await);
    }
    let n = acks.len() as u64;
    // Nobody asks for a checkpoint: the writer makes one by itself once ingest stops.
    let cp = poll(Duration::from_secs(60), || async {
        ts.latest_checkpoint().await.filter(|c| c.tree_size == n)
    })
    .await
    .expect("a checkpoint covering every event appears after ingest stops");
    let (_, root) = verified(&cp, &keys);
    assert_eq!(root, root_of(&acks, n));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_tree_and_checkpoints_consistent() {
    let ts = TestServer::start_with(|c| c.checkpoint_interval_ms = 3_600_000).await;
    let keys = ts.keys().await;
    let mut acks = ts.ingest(261, "pre").await;
    let before = ts.checkpoint_now().await;
    let (m, r1) = verified(&before, &keys);
    let (dir, key) = ts.stop().await;

    let ts = TestServer::restart_with(dir, key, |c| c.checkpoint_interval_ms = 3_600_000).await;
    assert_eq!(ts.keys().await, keys, "same key after a restart");
    assert_eq!(ts.latest_checkpoint().await.as_ref(), Some(&before));
    acks.extend(ts.ingest(300, "post").await);
    assert_eq!(acks.last().unwrap().seq, 560, "the chain resumes");
    let after = ts.checkpoint_now().await;
    let (n, r2) = verified(&after, &keys);
    assert_eq!(n, 561);
    assert_eq!(
        r2,
        root_of(&acks, n),
        "the resumed tree is the tree of every event"
    );

    let body = ts
        .get(&format!("/v1/logs/default/consistency?from={m}&to={n}"))
        .await
        .expect(StatusCode::OK);
    verify_consistency(m, n, &r1, &r2, &hashes(&body["hashes"]))
        .expect("pre-restart checkpoint is a prefix of the post-restart one");
    // Events from before the restart are provable in the new tree.
    let proof = ts
        .get(&format!("/v1/events/{}/proof?treeSize={n}", acks[260].id))
        .await
        .expect(StatusCode::OK);
    check_proof(&proof, &acks[260], n, &r2);
    let report = ts
        .post("/v1/verify", &json!({}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(report["ok"], true, "{report}");
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_keeps_old_checkpoints_verifiable() {
    let ts = TestServer::start_with(|c| c.checkpoint_interval_ms = 3_600_000).await;
    let old_keys = ts.keys().await;
    assert_eq!(old_keys.len(), 1);
    let old_key = old_keys[0].clone();
    let mut acks = ts.ingest(9, "old").await;
    let old_cp = ts.checkpoint_now().await;
    let (m, r1) = verified(&old_cp, &old_keys);
    let (dir, key) = ts.stop().await;

    // Rotate: point checkpoint_key_file at a new key.
    let new_file = dir.path().join("checkpoint-2.key");
    std::fs::write(&new_file, format!("{}\n", B64.encode([42u8; 32]))).unwrap();
    let new_key = CheckpointSigner::from_seed("vellum", &[42u8; 32])
        .unwrap()
        .public();
    assert_ne!(new_key, old_key);
    let ts = TestServer::restart_with(dir, key, |c| {
        c.checkpoint_interval_ms = 3_600_000;
        c.checkpoint_key_file = Some(new_file.clone());
    })
    .await;

    // Both keys are published, the new one first and current.
    let body = ts.get("/v1/keys").await.expect(StatusCode::OK);
    let published = body["checkpointKeys"].as_array().unwrap();
    assert_eq!(published.len(), 2, "{body}");
    assert_eq!(published[0]["keyId"], new_key.key_id_hex(), "{body}");
    assert_eq!(published[0]["current"], true, "{body}");
    assert_eq!(published[1]["keyId"], old_key.key_id_hex(), "{body}");
    assert_eq!(published[1]["current"], false, "{body}");
    let keys = ts.keys().await;

    acks.extend(ts.ingest(4, "new").await);
    let new_cp = ts.checkpoint_now().await;
    assert_eq!(new_cp.key_id, new_key.key_id_hex());
    let (n, r2) = verified(&new_cp, std::slice::from_ref(&new_key));
    assert!(new_cp.verify(std::slice::from_ref(&old_key)).is_err());
    assert_eq!(r2, root_of(&acks, n));
    let body = ts
        .get(&format!("/v1/logs/default/consistency?from={m}&to={n}"))
        .await
        .expect(StatusCode::OK);
    verify_consistency(m, n, &r1, &r2, &hashes(&body["hashes"]))
        .expect("consistent across rotation");

    // The old checkpoint, served with a proof, still verifies with the published keys. (Read
    // last: every proof read is audited, which appends an event.)
    let stored_old = ts
        .get(&format!("/v1/events/{}/proof?treeSize={m}", acks[0].id))
        .await
        .expect(StatusCode::OK);
    let again: SignedCheckpoint = serde_json::from_value(stored_old["checkpoint"].clone()).unwrap();
    assert_eq!(again, old_cp);
    verified(&again, &keys);

    // The whole store verifies: old checkpoints under the old key, new under the new.
    let report = ts
        .post("/v1/verify", &json!({}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["checkpointsVerified"], 2, "{report}");
    assert_eq!(report["logs"][0]["checkpointsMatched"], 2, "{report}");
    ts.stop().await;
}
