//! Detection and forwarding in a real server (SPEC §8, issue 8): events posted over HTTP raise
//! alerts through the commit tap; alerts are listed, filtered, scoped and acknowledged over
//! `/v1/alerts`; the rules' windows survive a restart; a server started on an existing store
//! replays it; a tampered store found by `POST /v1/verify` raises an integrity alert; and the
//! configured sinks forward committed events (here a syslog TCP sink into a receiver on
//! 127.0.0.1 that parses the octet-counted frames).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use vellum_server::{RunningServer, ServerConfig};
use zeroize::Zeroizing;

struct Server {
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
        crypto_secret: Some(Zeroizing::new("detection-test-secret-0123456789".into())),
        index_wait_ms: 60_000,
        ..ServerConfig::default()
    }
}

impl Server {
    async fn start(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(dir.path());
        tweak(&mut cfg);
        let server = vellum_server::start(cfg).await.expect("server starts");
        let key = std::fs::read_to_string(server.admin_key_file.clone().expect("key file"))
            .expect("admin key")
            .trim()
            .to_owned();
        Self::attach(dir, server, key)
    }

    fn attach(dir: TempDir, server: RunningServer, key: String) -> Self {
        Self {
            base: format!("http://{}", server.addr),
            dir,
            server: Some(server),
            key,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
        }
    }

    async fn restart(mut self, tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        self.server
            .take()
            .expect("running")
            .shutdown()
            .await
            .expect("clean shutdown");
        let mut cfg = config(self.dir.path());
        tweak(&mut cfg);
        let server = vellum_server::start(cfg).await.expect("server restarts");
        Self::attach(self.dir, server, self.key)
    }

    async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
    }

    async fn call(
        &self,
        key: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        common::call(&self.client, &self.base, key, method, path, body).await
    }

    /// Posts events one request each (so each is its own commit) and returns their ids.
    async fn post_each(&self, events: &[Value]) -> Vec<String> {
        let mut ids = Vec::new();
        for event in events {
            let (status, body) = self
                .call(&self.key, Method::POST, "/v1/events", Some(event))
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            ids.push(body["id"].as_str().expect("id").to_owned());
        }
        ids
    }

    async fn alerts(&self, key: &str, query: &str) -> Vec<Value> {
        let (status, body) = self
            .call(key, Method::GET, &format!("/v1/alerts{query}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["alerts"].as_array().expect("alerts").clone()
    }

    /// Polls until `query` lists at least `n` alerts (detection runs beside the writer, so an
    /// alert lands shortly after the event that raised it).
    async fn wait_for_alerts(&self, query: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let alerts = self.alerts(&self.key, query).await;
            if alerts.len() >= n || Instant::now() > deadline {
                return alerts;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn create_key(&self, role: &str, org: Option<&str>) -> String {
        let mut body = json!({"role": role});
        if let Some(org) = org {
            body["organizationId"] = json!(org);
        }
        let (status, created) = self
            .call(&self.key, Method::POST, "/v1/api-keys", Some(&body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        created["key"].as_str().expect("key").to_owned()
    }
}

fn failed_login(principal: &str, org: &str) -> Value {
    json!({
        "action": "auth.login.failure",
        "status": "failure",
        "principalId": principal,
        "organizationId": org,
        "targetResourceType": "Session",
        "sessionContext": {"ipAddress": "10.1.2.3"},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_logins_alert_above_the_threshold_only() {
    let server = Server::start(|_| {}).await;
    let ana: Vec<Value> = (0..6).map(|_| failed_login("dr-ana", "st-mary")).collect();
    let bob: Vec<Value> = (0..5).map(|_| failed_login("dr-bob", "st-mary")).collect();
    server.post_each(&bob).await;
    let ana_ids = server.post_each(&ana).await;

    let alerts = server.wait_for_alerts("?rule=failed_logins", 1).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let alert = &alerts[0];
    assert_eq!(alert["rule"], "failed_logins");
    assert_eq!(alert["principalId"], "dr-ana");
    assert_eq!(alert["organizationId"], "st-mary");
    assert_eq!(alert["severity"], "high");
    assert_eq!(alert["status"], "open");
    let triggering: Vec<String> = alert["triggeringEventIds"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_str().expect("id").to_owned())
        .collect();
    assert_eq!(triggering, ana_ids, "the six failures, oldest first");

    // The alert is an audit event like any other: searchable, hashed, verified.
    let id = alert["id"].as_str().expect("id");
    let (status, event) = server
        .call(&server.key, Method::GET, &format!("/v1/events/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["action"], "security.alert.failed_logins");
    assert_eq!(
        event["details"]["triggeringEventIds"]
            .as_array()
            .map(Vec::len),
        Some(6)
    );
    assert!(
        event["redactions"].as_array().is_none_or(Vec::is_empty),
        "{event}"
    );
    let (status, report) = server
        .call(&server.key, Method::POST, "/v1/verify", Some(&json!({})))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["ok"], true, "{report}");

    // Bob's five failures raised nothing, ever: give detection time, then look again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        server
            .alerts(&server.key, "?principalId=dr-bob")
            .await
            .is_empty()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn break_glass_and_injection_raise_alerts_and_ordinary_access_does_not() {
    let server = Server::start(|_| {}).await;
    server
        .post_each(&[
            json!({"action": "patient.record.read", "status": "success", "principalId": "dr-cho",
                   "organizationId": "st-mary", "targetResourceType": "Patient", "targetResourceId": "p-1",
                   "dataClassification": "PHI",
                   "timestamp": "2026-12-07T14:00:00Z",
                   "healthcareContext": {"patientId": "p-1"}}),
            json!({"action": "patient.record.read", "status": "success", "principalId": "dr-cho",
                   "organizationId": "st-mary", "targetResourceType": "Patient", "targetResourceId": "p-2",
                   "dataClassification": "PHI",
                   "timestamp": "2026-12-07T14:01:00Z",
                   "healthcareContext": {"patientId": "p-2", "emergencyAccess": true,
                                         "clinicalJustification": "unconscious patient in ER"}}),
            json!({"action": "search.run", "status": "success", "principalId": "svc-portal",
                   "organizationId": "st-mary", "targetResourceType": "Search",
                   "outcomeDescription": "query ' OR 1=1 -- <script>alert(1)</script>"}),
        ])
        .await;
    let glass = server.wait_for_alerts("?rule=break_glass", 1).await;
    assert_eq!(glass.len(), 1, "{glass:?}");
    assert_eq!(glass[0]["principalId"], "dr-cho");
    assert_eq!(
        glass[0]["triggeringEventIds"].as_array().map(Vec::len),
        Some(1)
    );
    let injection = server.wait_for_alerts("?rule=injection", 1).await;
    assert_eq!(injection.len(), 1, "{injection:?}");
    assert_eq!(injection[0]["principalId"], "svc-portal");
    // The first (ordinary, in-hours) read raised nothing of its own: every alert names one
    // of the two other events.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = server.alerts(&server.key, "").await;
    assert_eq!(all.len(), 2, "{all:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alerts_are_filtered_scoped_and_acknowledged_once() {
    let server = Server::start(|_| {}).await;
    let glass = |who: &str, org: &str| {
        json!({"action": "patient.record.read", "status": "success", "principalId": who,
               "organizationId": org, "targetResourceType": "Patient", "dataClassification": "PHI",
               "timestamp": "2026-12-07T15:00:00Z",
               "healthcareContext": {"patientId": "p-9", "emergencyAccess": true}})
    };
    server
        .post_each(&[glass("dr-a", "st-mary"), glass("dr-b", "general")])
        .await;
    let alerts = server.wait_for_alerts("?rule=break_glass", 2).await;
    assert_eq!(alerts.len(), 2, "{alerts:?}");

    // Bad parameters are 400s naming the parameter.
    for (query, field) in [
        ("?rule=nope", "rule"),
        ("?status=closed", "status"),
        ("?limit=0", "limit"),
        ("?from=yesterday", "from"),
        ("?colour=red", "colour"),
    ] {
        let (status, body) = server
            .call(
                &server.key,
                Method::GET,
                &format!("/v1/alerts{query}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(
            body["error"]["details"][0]["path"], field,
            "{query}: {body}"
        );
    }

    // An org-bound reader sees its organization's alert only, and may not acknowledge.
    let general_reader = server.create_key("reader", Some("general")).await;
    let seen = server.alerts(&general_reader, "").await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["organizationId"], "general");
    let mary_alert = alerts
        .iter()
        .find(|a| a["organizationId"] == "st-mary")
        .expect("st-mary alert");
    let mary_id = mary_alert["id"].as_str().expect("id").to_owned();
    let ack_path = format!("/v1/alerts/{mary_id}/acknowledge");
    let (status, _) = server
        .call(&general_reader, Method::POST, &ack_path, Some(&json!({})))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // An auditor of another organization: no such alert for it.
    let general_auditor = server.create_key("auditor", Some("general")).await;
    let (status, _) = server
        .call(&general_auditor, Method::POST, &ack_path, Some(&json!({})))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Not an alert at all, and not a UUID.
    let event_id = server
        .post_each(&[json!({"action": "x.y", "status": "success"})])
        .await
        .remove(0);
    let (status, _) = server
        .call(
            &server.key,
            Method::POST,
            &format!("/v1/alerts/{event_id}/acknowledge"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = server
        .call(
            &server.key,
            Method::POST,
            "/v1/alerts/not-a-uuid/acknowledge",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = server
        .call(
            &server.key,
            Method::POST,
            &ack_path,
            Some(&json!({"note": 5})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // The first acknowledgement records an event (201); the second returns it (200).
    let note = json!({"note": "called dr-a: ER admission, justified"});
    let (status, first) = server
        .call(&server.key, Method::POST, &ack_path, Some(&note))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["note"], "called dr-a: ER admission, justified");
    let (status, second) = server
        .call(&server.key, Method::POST, &ack_path, Some(&note))
        .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["eventId"], first["eventId"]);

    let open = server.alerts(&server.key, "?status=open").await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["organizationId"], "general");
    let acknowledged = server.alerts(&server.key, "?status=acknowledged").await;
    assert_eq!(acknowledged.len(), 1, "{acknowledged:?}");
    assert_eq!(acknowledged[0]["id"], mary_id.as_str());
    assert_eq!(
        acknowledged[0]["acknowledgement"]["eventId"],
        first["eventId"]
    );

    // The acknowledgement is an audit event targeting the alert; listing alerts was audited.
    let (_, acks) = server
        .call(
            &server.key,
            Method::GET,
            &format!("/v1/events?action=security.acknowledge&targetResourceId={mary_id}"),
            None,
        )
        .await;
    assert_eq!(acks["events"].as_array().map(Vec::len), Some(1), "{acks}");
    let (_, reads) = server
        .call(
            &server.key,
            Method::GET,
            "/v1/events?action=audit.read&limit=1000",
            None,
        )
        .await;
    let endpoints: Vec<&str> = reads["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["technicalContext"]["endpoint"].as_str())
        .collect();
    assert!(endpoints.contains(&"/v1/alerts"), "{endpoints:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn windows_survive_a_restart_and_an_existing_store_is_replayed() {
    // Four failures, a restart, two more: six within the minute, one alert.
    let server = Server::start(|_| {}).await;
    let four: Vec<Value> = (0..4).map(|_| failed_login("dr-eve", "st-mary")).collect();
    server.post_each(&four).await;
    let server = server.restart(|_| {}).await;
    let state = server.dir.path().join(vellum_server::detection::STATE_FILE);
    assert!(state.exists(), "the state is saved at shutdown");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&state)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(
        server
            .alerts(&server.key, "?rule=failed_logins")
            .await
            .is_empty()
    );
    let two: Vec<Value> = (0..2).map(|_| failed_login("dr-eve", "st-mary")).collect();
    server.post_each(&two).await;
    let alerts = server.wait_for_alerts("?rule=failed_logins", 1).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(
        alerts[0]["triggeringEventIds"].as_array().map(Vec::len),
        Some(6)
    );
    server.stop().await;

    // Events stored while detection was off are replayed when it is turned on.
    let server = Server::start(|c| c.detection.enabled = false).await;
    let six: Vec<Value> = (0..6).map(|_| failed_login("dr-fay", "st-mary")).collect();
    server.post_each(&six).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(server.alerts(&server.key, "").await.is_empty());
    let server = server.restart(|c| c.detection.enabled = true).await;
    let alerts = server.wait_for_alerts("?rule=failed_logins", 1).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["principalId"], "dr-fay");
    // A second restart does not raise it again (positions were saved).
    let server = server.restart(|_| {}).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        server
            .alerts(&server.key, "?rule=failed_logins")
            .await
            .len(),
        1
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_verification_raises_an_integrity_alert() {
    let server = Server::start(|_| {}).await;
    server
        .post_each(&[
            json!({"action": "record.read", "status": "success", "principalId": "u1"}),
            json!({"action": "record.read", "status": "success", "principalId": "u2"}),
        ])
        .await;
    let (status, report) = server
        .call(&server.key, Method::POST, "/v1/verify", Some(&json!({})))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["ok"], true, "{report}");
    assert!(
        server
            .alerts(&server.key, "?rule=integrity")
            .await
            .is_empty()
    );

    let db = rusqlite::Connection::open(server.dir.path().join("vellum.db")).expect("open log");
    db.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    let changed = db
        .execute(
            r#"UPDATE events SET body = replace(body, '"principalId":"u2"', '"principalId":"u3"')
               WHERE body LIKE '%"principalId":"u2"%'"#,
            [],
        )
        .expect("tamper");
    assert_eq!(changed, 1);
    drop(db);

    let (status, report) = server
        .call(&server.key, Method::POST, "/v1/verify", Some(&json!({})))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["ok"], false, "{report}");
    let alerts = server.wait_for_alerts("?rule=integrity", 1).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["severity"], "critical");
    let trigger = alerts[0]["triggeringEventIds"][0].as_str().expect("id");
    let (_, failure) = server
        .call(
            &server.key,
            Method::GET,
            &format!("/v1/events/{trigger}"),
            None,
        )
        .await;
    assert_eq!(failure["action"], "integrity.verify.failure", "{failure}");
    assert!(
        failure["details"]["logs"][0]["failures"].as_u64() >= Some(1),
        "{failure}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn configured_sinks_forward_committed_events_and_alerts() {
    let (all_address, mut all) = common::syslog_receiver().await;
    let (alerts_address, mut alerts_only) = common::syslog_receiver().await;
    let sinks: Vec<vellum_forward::SinkConfig> = serde_json::from_value(json!([
        {"name": "everything", "type": "syslog", "transport": "tcp", "address": all_address,
         "retryInitialMs": 50, "retryMaxMs": 200},
        {"name": "soc", "type": "syslog", "transport": "tcp", "address": alerts_address,
         "filter": {"alertsOnly": true}, "retryInitialMs": 50, "retryMaxMs": 200},
    ]))
    .expect("sink config");
    let server = Server::start(|c| c.forward.sinks = sinks).await;
    let ids = server
        .post_each(
            &[json!({"action": "patient.record.read", "status": "success",
                            "principalId": "dr-gus", "dataClassification": "PHI",
                            "timestamp": "2026-12-07T10:00:00Z",
                            "healthcareContext": {"patientId": "p-1", "emergencyAccess": true}})],
        )
        .await;
    let alert = server.wait_for_alerts("?rule=break_glass", 1).await;
    assert_eq!(alert.len(), 1);
    let alert_id = alert[0]["id"].as_str().expect("id").to_owned();

    // The everything sink gets the events in log order; the event is first (the server's own
    // audit.read records may follow).
    let first = common::receive(&mut all).await;
    assert!(first.starts_with("<"), "{first}");
    assert!(first.contains(&ids[0]), "{first}");
    let mut seen_alert = false;
    for _ in 0..20 {
        let message = common::receive(&mut all).await;
        if message.contains(&alert_id) {
            seen_alert = true;
            break;
        }
    }
    assert!(seen_alert, "the alert is forwarded too");
    // The alerts-only sink gets the alert and nothing before it.
    let soc = common::receive(&mut alerts_only).await;
    assert!(soc.contains(&alert_id), "{soc}");
    assert!(soc.contains("security.alert.break_glass"), "{soc}");

    // /readyz reports the sinks.
    let (status, ready) = server.call(&server.key, Method::GET, "/readyz", None).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = ready["forwarding"]
        .as_array()
        .expect("forwarding status")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["everything", "soc"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_detection_or_sink_settings_refuse_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.detection.failed_logins.window_secs = 0;
    let err = vellum_server::start(cfg).await.err().expect("refused");
    assert!(err.to_string().contains("detection"), "{err}");
    let mut cfg = config(dir.path());
    cfg.forward.sinks = serde_json::from_value(json!([
        {"name": "Bad Name", "type": "syslog", "transport": "tcp", "address": "127.0.0.1:1"}
    ]))
    .expect("parses");
    let err = vellum_server::start(cfg).await.err().expect("refused");
    assert!(err.to_string().contains("name"), "{err}");
    // Neither touched the data directory.
    assert!(!dir.path().join("vellum.db").exists());
}
