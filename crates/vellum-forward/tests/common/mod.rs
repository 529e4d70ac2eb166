//! Helpers shared by the forwarder's integration tests: a real Vellum server on 127.0.0.1 fed
//! over HTTP, a second handle on its SQLite store for the forwarder (the server will hand the
//! forwarder its own store; SQLite in WAL mode serves both), and a real HTTP receiver (axum)
//! that records what it gets and answers as each test decides.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vellum_forward::{Forwarder, SinkConfig, SinkStatus};
use vellum_server::{RunningServer, ServerConfig};
use vellum_store::AuditStore;
use vellum_store::sqlite::{SqliteOptions, SqliteStore};
use zeroize::Zeroizing;

const SECRET: &str = "forward-test-secret-0123456789abcd";

/// A running Vellum server and a store handle on its data directory.
pub struct Server {
    pub server: RunningServer,
    pub base: String,
    pub key: String,
    pub http: reqwest::Client,
    pub store: Arc<SqliteStore>,
    pub dir: tempfile::TempDir,
}

impl Server {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = vellum_server::start(ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            crypto_secret: Some(Zeroizing::new(SECRET.to_owned())),
            index_wait_ms: 60_000,
            // The tests compare what arrives with a snapshot of the stored events; alerts
            // committed after it (the fixtures are PHI reads in bulk) would not be in it.
            detection: vellum_core::detect::DetectionConfig {
                enabled: false,
                ..vellum_core::detect::DetectionConfig::default()
            },
            ..ServerConfig::default()
        })
        .await
        .unwrap();
        let key = std::fs::read_to_string(dir.path().join("admin.key"))
            .unwrap()
            .trim()
            .to_owned();
        let path = dir.path().to_path_buf();
        let store = tokio::task::spawn_blocking(move || {
            SqliteStore::open(
                &path,
                SqliteOptions {
                    run_indexer: false,
                    ..SqliteOptions::default()
                },
            )
        })
        .await
        .unwrap()
        .unwrap();
        Self {
            base: format!("http://{}", server.addr),
            server,
            key,
            http: reqwest::Client::new(),
            store,
            dir,
        }
    }

    pub fn store(&self) -> Arc<dyn AuditStore> {
        self.store.clone()
    }

    /// Posts events in one request; returns the receipts.
    pub async fn post(&self, events: Vec<Value>) -> Vec<Value> {
        let response = self
            .http
            .post(format!("{}/v1/events", self.base))
            .bearer_auth(&self.key)
            .json(&json!({ "events": events }))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["accepted"].as_array().unwrap().clone()
    }

    /// Posts `n` events `<tag>-<i>`, alternating a few actions, in requests of 50.
    pub async fn post_n(&self, tag: &str, n: usize) -> Vec<Value> {
        let mut receipts = Vec::new();
        let events: Vec<Value> = (0..n).map(|i| event(tag, i)).collect();
        for chunk in events.chunks(50) {
            receipts.extend(self.post(chunk.to_vec()).await);
        }
        receipts
    }

    /// Every event of the `default` log in API form, in `seq` order (tombstones left out).
    pub async fn stored(&self) -> Vec<Value> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            store
                .scan_log("default", 0, 1_000_000)
                .unwrap()
                .into_iter()
                .filter(|e| vellum_core::retention::Tombstone::from_body(&e.canonical).is_none())
                .map(|e| serde_json::from_str(&e.to_api_json()).unwrap())
                .collect()
        })
        .await
        .unwrap()
    }

    pub async fn stop(self) {
        self.server.shutdown().await.unwrap();
        self.store.shutdown();
    }
}

/// One client event.
pub fn event(tag: &str, i: usize) -> Value {
    let actions = [
        "fhir.patient.read",
        "auth.login.failure",
        "fhir.observation.update",
        "admin.config.change",
    ];
    json!({
        "action": actions[i % actions.len()],
        "status": if i % 4 == 1 { "failure" } else { "success" },
        "principalId": format!("user-{}", i % 7),
        "principalType": "professional",
        "organizationId": "org-1",
        "targetResourceType": "Patient",
        "targetResourceId": format!("p-{i}"),
        "outcomeDescription": format!("{tag} event {i} \"quoted\" and ünïcode"),
        "dataClassification": if i.is_multiple_of(3) { "PHI" } else { "INTERNAL" },
        "sessionContext": {"sessionId": format!("s-{i}"), "ipAddress": "203.0.113.9", "userAgent": "test/1"},
        "technicalContext": {"endpoint": "/fhir/Patient", "httpMethod": "GET", "statusCode": 200},
        "healthcareContext": {"patientId": format!("p-{i}")},
        "details": {"tag": tag, "i": i},
    })
}

/// Waits (bounded) until `done` holds; panics with `what` otherwise.
pub async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A sink's status by name.
pub fn status(forwarder: &Forwarder, name: &str) -> SinkStatus {
    forwarder
        .status()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap()
}

/// Starts a forwarder whose secrets come from `secrets` (name → value).
pub fn start_forwarder(
    store: Arc<dyn AuditStore>,
    sinks: Vec<SinkConfig>,
    secrets: &[(&str, &str)],
) -> Forwarder {
    let secrets: Vec<(String, String)> = secrets
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Forwarder::start_with_secrets(store, sinks, "test-host".into(), &move |name| {
        secrets
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| Zeroizing::new(v.clone()))
    })
    .unwrap()
}

/// Fast retries for tests.
pub fn quick(mut sink: SinkConfig) -> SinkConfig {
    sink.retry_initial_ms = 20;
    sink.retry_max_ms = 200;
    sink.timeout_ms = 5_000;
    sink
}

/// One request as the receiver got it, with the status it answered.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub status: u16,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Decides the answer to a request: status, extra headers, body.
pub type Answer = Arc<dyn Fn(&Received) -> (u16, Vec<(String, String)>, String) + Send + Sync>;

#[derive(Clone)]
struct ReceiverState {
    answer: Answer,
    log: Arc<Mutex<Vec<Received>>>,
}

/// A real HTTP server on 127.0.0.1 recording every request.
pub struct Receiver {
    pub url: String,
    log: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub async fn start(answer: Answer) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let state = ReceiverState {
            answer,
            log: log.clone(),
        };
        let app = axum::Router::new().fallback(receive).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, log }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Received> {
        self.log.lock().clone()
    }

    /// Requests answered 2xx.
    pub fn accepted(&self) -> Vec<Received> {
        self.log
            .lock()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .cloned()
            .collect()
    }
}

async fn receive(
    State(state): State<ReceiverState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut request = Received {
        method,
        path: uri.path().to_owned(),
        headers,
        body,
        status: 0,
    };
    let (status, extra, text) = (state.answer)(&request);
    request.status = status;
    state.log.lock().push(request);
    let mut response = (StatusCode::from_u16(status).unwrap(), text).into_response();
    for (name, value) in extra {
        response.headers_mut().insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    response
}

/// Events of webhook bodies (`{"events":[…]}`), concatenated.
pub fn webhook_events(requests: &[Received]) -> Vec<Value> {
    requests
        .iter()
        .flat_map(|r| r.json()["events"].as_array().unwrap().clone())
        .collect()
}

/// Asserts that `got` is exactly `want` (same events, same order), naming the first
/// difference by seq.
pub fn assert_same_events(got: &[Value], want: &[Value]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w, "event #{i} (seq {}) differs", w["seq"]);
    }
    assert_eq!(
        got.len(),
        want.len(),
        "got seqs {:?}",
        got.iter().map(|e| e["seq"].clone()).collect::<Vec<_>>()
    );
}
