//! A server seeded for the console tests: keys of every role (one bound to an organization)
//! and events of two organizations, one of them carrying a script in its text.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;
use vellum_server::ServerConfig;
use zeroize::Zeroizing;

/// The seeded server.
pub(crate) struct Fixture {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) server: Option<vellum_server::RunningServer>,
    /// `http://127.0.0.1:port`.
    pub(crate) base: String,
    /// The bootstrap admin key.
    pub(crate) admin: String,
    /// Keys by label: `reader`, `reader-a` (bound to org-a), `auditor`, `ingest`; (id, secret).
    pub(crate) keys: HashMap<&'static str, (String, String)>,
    /// Event ids by label: `a` (org-a), `b` (org-b), `xss` (org-a, script in its text).
    pub(crate) events: HashMap<&'static str, String>,
    pub(crate) client: reqwest::Client,
}

/// The text of the `xss` event's outcome.
pub(crate) const SCRIPT: &str = "<script>alert(1)</script>";

impl Fixture {
    pub(crate) async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ServerConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            data_dir: dir.path().to_path_buf(),
            crypto_secret: Some(Zeroizing::new(
                "console-test-secret-0123456789abcdef".into(),
            )),
            index_wait_ms: 60_000,
            ..ServerConfig::default()
        };
        let server = vellum_server::start(config).await.expect("server starts");
        let admin = std::fs::read_to_string(server.admin_key_file.clone().expect("admin key"))
            .expect("read admin key")
            .trim()
            .to_owned();
        let mut fixture = Self {
            base: format!("http://{}", server.addr),
            _dir: dir,
            server: Some(server),
            admin,
            keys: HashMap::new(),
            events: HashMap::new(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("client"),
        };
        for (label, role, org) in [
            ("reader", "reader", None),
            ("reader-a", "reader", Some("org-a")),
            ("auditor", "auditor", None),
            ("ingest", "ingest", None),
        ] {
            let key = fixture.create_key(role, org).await;
            fixture.keys.insert(label, key);
        }
        let events = [
            (
                "a",
                json!({
                    "action": "patient.record.read", "status": "success", "organizationId": "org-a",
                    "principalId": "dr-alice", "dataClassification": "PHI",
                    "targetResourceType": "Patient", "targetResourceId": "p-1",
                    "healthcareContext": {"patientId": "p-1", "purposeOfUse": "TREAT"},
                    "details": {"ssn": "123-45-6789"},
                }),
            ),
            (
                "b",
                json!({
                    "action": "billing.invoice.read", "status": "success", "organizationId": "org-b",
                    "principalId": "clerk-bob", "dataClassification": "CONFIDENTIAL",
                    "targetResourceType": "Invoice", "targetResourceId": "inv-9",
                }),
            ),
            (
                "xss",
                json!({
                    "action": "note.update", "status": "failure", "organizationId": "org-a",
                    "principalId": "mallory", "dataClassification": "INTERNAL",
                    "targetResourceType": "Note", "targetResourceId": "n-1",
                    "outcomeDescription": SCRIPT,
                }),
            ),
        ];
        for (label, event) in events {
            let (status, receipt) = super::call(
                &fixture.client,
                &fixture.base,
                &fixture.admin,
                Method::POST,
                "/v1/events",
                Some(&event),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED, "{receipt}");
            fixture
                .events
                .insert(label, receipt["id"].as_str().expect("id").to_owned());
        }
        fixture
    }

    /// Creates a key through the API as the bootstrap admin; `(id, secret)`.
    pub(crate) async fn create_key(&self, role: &str, org: Option<&str>) -> (String, String) {
        let mut body = json!({"role": role, "name": format!("console {role}")});
        if let Some(org) = org {
            body["organizationId"] = json!(org);
        }
        let (status, created) = super::call(
            &self.client,
            &self.base,
            &self.admin,
            Method::POST,
            "/v1/api-keys",
            Some(&body),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        (
            created["id"].as_str().expect("id").to_owned(),
            created["key"].as_str().expect("key").to_owned(),
        )
    }

    /// Posts one event as the bootstrap admin; its id.
    pub(crate) async fn post_event(&self, event: &Value) -> String {
        let (status, receipt) = super::call(
            &self.client,
            &self.base,
            &self.admin,
            Method::POST,
            "/v1/events",
            Some(event),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{receipt}");
        receipt["id"].as_str().expect("id").to_owned()
    }

    /// The `rule` alert raised by the event `event_id`, as `GET /v1/alerts` lists it to the admin;
    /// polled for up to 30 s (detection runs beside the writer, so an alert lands shortly after
    /// the event that raised it).
    pub(crate) async fn wait_for_alert(&self, rule: &str, event_id: &str) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (status, page) = super::call(
                &self.client,
                &self.base,
                &self.admin,
                Method::GET,
                &format!("/v1/alerts?rule={rule}&limit=1000"),
                None,
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{page}");
            let found = page["alerts"].as_array().and_then(|alerts| {
                alerts
                    .iter()
                    .find(|a| {
                        a["triggeringEventIds"]
                            .as_array()
                            .is_some_and(|ids| ids.iter().any(|id| id == event_id))
                    })
                    .cloned()
            });
            if let Some(alert) = found {
                return alert;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {rule} alert for event {event_id} within 30 s: {page}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The `audit.read` events a key caused, newest first.
    pub(crate) async fn reads_by(&self, key_id: &str) -> Vec<Value> {
        let (status, page) = super::call(
            &self.client,
            &self.base,
            &self.admin,
            Method::GET,
            &format!("/v1/events?action=audit.read&principalId={key_id}&limit=1000"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page["events"].as_array().expect("events").clone()
    }

    pub(crate) async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
    }
}
