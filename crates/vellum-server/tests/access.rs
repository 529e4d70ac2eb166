//! Access control end to end (SPEC §6, issue 5): every role against every route, API key
//! administration over HTTP, and two organizations that never see each other's events through
//! any route. A real server on 127.0.0.1 with a real SQLite store; keys are created through
//! `POST /v1/api-keys` like an operator would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;
use vellum_server::ServerConfig;
use zeroize::Zeroizing;

struct Server {
    _dir: tempfile::TempDir,
    server: Option<vellum_server::RunningServer>,
    base: String,
    admin: String,
    client: reqwest::Client,
}

impl Server {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ServerConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            data_dir: dir.path().to_path_buf(),
            crypto_secret: Some(Zeroizing::new("access-test-secret-0123456789abcdef".into())),
            index_wait_ms: 60_000,
            ..ServerConfig::default()
        };
        let server = vellum_server::start(config).await.expect("server starts");
        let admin = std::fs::read_to_string(server.admin_key_file.clone().expect("admin key"))
            .expect("read admin key")
            .trim()
            .to_owned();
        Self {
            base: format!("http://{}", server.addr),
            _dir: dir,
            server: Some(server),
            admin,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("client"),
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

    /// Creates a key through the API as the bootstrap admin; returns `(id, secret)`.
    async fn create_key(&self, role: &str, org: Option<&str>) -> (String, String) {
        let mut body = json!({"role": role, "name": format!("{role} {org:?}")});
        if let Some(org) = org {
            body["organizationId"] = json!(org);
        }
        let (status, created) = self
            .call(&self.admin, Method::POST, "/v1/api-keys", Some(&body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        (
            created["id"].as_str().expect("id").to_owned(),
            created["key"].as_str().expect("key").to_owned(),
        )
    }

    async fn ingest(&self, key: &str, event: Value) -> Value {
        let (status, receipt) = self
            .call(key, Method::POST, "/v1/events", Some(&event))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{receipt}");
        receipt
    }

    /// Events of the log with this action (admin search, all organizations).
    async fn events_with_action(&self, action: &str) -> Vec<Value> {
        let (status, page) = self
            .call(
                &self.admin,
                Method::GET,
                &format!("/v1/events?action={action}&limit=1000"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page["events"].as_array().expect("events").clone()
    }

    async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
    }
}

fn clinical(org: &str, patient: &str) -> Value {
    json!({
        "action": "fhir.patient.read", "status": "success", "organizationId": org,
        "principalId": format!("dr-{org}"), "dataClassification": "PHI",
        "targetResourceType": "Patient", "targetResourceId": patient,
        "healthcareContext": {"patientId": patient, "purposeOfUse": "TREAT"},
    })
}

/// Every role against every route: allowed routes answer without 401/403, the others 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_against_every_route() {
    let server = Server::start().await;
    let mut keys = Vec::new();
    for role in ["ingest", "reader", "auditor", "admin"] {
        keys.push((role, server.create_key(role, None).await.1));
    }
    let receipt = server.ingest(&server.admin, clinical("org-a", "p-1")).await;
    let id = receipt["id"].as_str().expect("id").to_owned();
    let event = clinical("org-a", "p-2");
    let report =
        json!({"type": "HIPAA", "from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"});
    let new_key = json!({"role": "reader"});
    let policies = serde_json::to_value(vellum_core::retention::RetentionPolicies::default())
        .expect("policies");
    let hold = json!({"reason": "matrix", "patientId": "p-matrix"});
    let empty = json!({});
    // (method, path, body, roles allowed)
    let all = ["ingest", "reader", "auditor", "admin"];
    let read = ["reader", "auditor", "admin"];
    let audit = ["auditor", "admin"];
    let routes: Vec<(Method, String, Option<&Value>, &[&str])> = vec![
        (
            Method::POST,
            "/v1/events".into(),
            Some(&event),
            &["ingest", "admin"],
        ),
        (Method::GET, "/v1/events".into(), None, &read),
        (Method::GET, format!("/v1/events/{id}"), None, &read),
        (Method::GET, format!("/v1/events/{id}/proof"), None, &read),
        (Method::GET, "/v1/keys".into(), None, &all),
        (
            Method::GET,
            "/v1/logs/default/checkpoint".into(),
            None,
            &read,
        ),
        (
            Method::POST,
            "/v1/logs/default/checkpoint".into(),
            None,
            &audit,
        ),
        (
            Method::GET,
            "/v1/logs/default/consistency?from=1&to=2".into(),
            None,
            &read,
        ),
        (Method::POST, "/v1/verify".into(), Some(&empty), &audit),
        (Method::GET, "/v1/stats".into(), None, &read),
        (Method::GET, "/v1/export?format=ndjson".into(), None, &audit),
        (Method::POST, "/v1/reports".into(), Some(&report), &audit),
        (
            Method::GET,
            "/v1/reports/disclosures?patientId=p-1".into(),
            None,
            &audit,
        ),
        (Method::GET, "/v1/api-keys".into(), None, &["admin"]),
        (
            Method::POST,
            "/v1/api-keys".into(),
            Some(&new_key),
            &["admin"],
        ),
        (
            Method::DELETE,
            "/v1/api-keys/key_doesnotexist".into(),
            None,
            &["admin"],
        ),
        (Method::GET, "/v1/retention/policies".into(), None, &audit),
        (
            Method::PUT,
            "/v1/retention/policies".into(),
            Some(&policies),
            &["admin"],
        ),
        (
            Method::POST,
            "/v1/retention/apply?dryRun=true".into(),
            None,
            &["admin"],
        ),
        (Method::GET, "/v1/legal-holds".into(), None, &audit),
        (
            Method::POST,
            "/v1/legal-holds".into(),
            Some(&hold),
            &["admin"],
        ),
        (
            Method::DELETE,
            "/v1/legal-holds/hold-doesnotexist".into(),
            None,
            &["admin"],
        ),
        (
            Method::POST,
            "/v1/subjects/ds-never-seen/erase".into(),
            None,
            &["admin"],
        ),
    ];
    for (method, path, body, allowed) in &routes {
        for (role, key) in &keys {
            let (status, reply) = server.call(key, method.clone(), path, *body).await;
            let reply: String = reply.to_string().chars().take(300).collect();
            if allowed.contains(role) {
                assert!(
                    status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED,
                    "{role} must be allowed {method} {path}: {status} {reply}"
                );
                assert!(
                    status.is_success() || status == StatusCode::NOT_FOUND,
                    "{role} {method} {path}: {status} {reply}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{role} must be refused {method} {path}: {reply}"
                );
                assert!(reply.contains("\"forbidden\""), "{reply}");
            }
        }
    }
    server.stop().await;
}

/// Key administration over HTTP: the key is shown once and works at once, the list never
/// shows secrets, revocation takes effect at once on this node, every change is in the log
/// naming the admin, and bad requests name their field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_created_listed_revoked_and_audited() {
    let server = Server::start().await;
    let (admin_status, keys) = server
        .call(&server.admin, Method::GET, "/v1/api-keys", None)
        .await;
    assert_eq!(admin_status, StatusCode::OK, "{keys}");
    let bootstrap_id = keys["keys"][0]["id"].as_str().expect("id").to_owned();

    let (id, secret) = server.create_key("reader", Some("org-a")).await;
    assert!(secret.starts_with("vlm_"));
    let (status, _) = server.call(&secret, Method::GET, "/v1/events", None).await;
    assert_eq!(status, StatusCode::OK, "a new key works at once");

    let (_, listed) = server
        .call(&server.admin, Method::GET, "/v1/api-keys", None)
        .await;
    let text = listed.to_string();
    assert!(!text.contains(&secret), "the list never shows a secret");
    assert!(!text.contains("keyHash") && !text.contains("key_hash"));
    let entry = listed["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["id"] == id.as_str())
        .expect("listed")
        .clone();
    assert_eq!(entry["role"], "reader");
    assert_eq!(entry["organizationId"], "org-a");
    assert_eq!(entry["revokedAt"], Value::Null);

    // Bad requests name the field.
    for (body, field) in [
        (json!({"role": "root"}), "role"),
        (
            json!({"role": "reader", "organizationId": ""}),
            "organizationId",
        ),
        (json!({"role": "reader", "name": "a\u{7}b"}), "name"),
    ] {
        let (status, reply) = server
            .call(&server.admin, Method::POST, "/v1/api-keys", Some(&body))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
        assert_eq!(reply["error"]["details"][0]["path"], field, "{reply}");
    }
    let (status, reply) = server
        .call(
            &server.admin,
            Method::POST,
            "/v1/api-keys",
            Some(&json!({"role": "reader", "scope": "all"})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "unknown fields are refused: {reply}"
    );

    // Revocation: at once on this node; a second revocation is a conflict; unknown is 404.
    let (status, revoked) = server
        .call(
            &server.admin,
            Method::DELETE,
            &format!("/v1/api-keys/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert!(revoked["revokedAt"].is_string());
    let (status, _) = server.call(&secret, Method::GET, "/v1/events", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server
        .call(
            &server.admin,
            Method::DELETE,
            &format!("/v1/api-keys/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = server
        .call(&server.admin, Method::DELETE, "/v1/api-keys/key_nope", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Every change is an event naming the admin key and the changed key, never its secret.
    let created = server.events_with_action("apikey.create").await;
    let revokes = server.events_with_action("apikey.revoke").await;
    let for_key = |events: &[Value]| {
        events
            .iter()
            .filter(|e| e["targetResourceId"] == id.as_str())
            .cloned()
            .collect::<Vec<_>>()
    };
    let created_here = for_key(&created);
    assert_eq!(created_here.len(), 1, "{created:?}");
    assert_eq!(created_here[0]["principalId"], bootstrap_id.as_str());
    assert_eq!(created_here[0]["details"]["role"], "reader");
    assert_eq!(created_here[0]["organizationId"], "org-a");
    assert_eq!(for_key(&revokes).len(), 1, "{revokes:?}");
    assert!(
        !serde_json::to_string(&created)
            .expect("json")
            .contains(&secret)
    );
    server.stop().await;
}

/// An admin bound to an organization administers that organization only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_organization_admin_cannot_escape_its_organization() {
    let server = Server::start().await;
    let (_, org_admin) = server.create_key("admin", Some("org-a")).await;
    let (other_id, _) = server.create_key("reader", Some("org-b")).await;
    // Creating: bound to its organization whatever it asks; another organization is refused.
    let (status, created) = server
        .call(
            &org_admin,
            Method::POST,
            "/v1/api-keys",
            Some(&json!({"role": "auditor"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["organizationId"], "org-a");
    let (status, _) = server
        .call(
            &org_admin,
            Method::POST,
            "/v1/api-keys",
            Some(&json!({"role": "admin", "organizationId": "org-b"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Listing: only its organization's keys. Revoking another organization's key: no such key.
    let (_, listed) = server
        .call(&org_admin, Method::GET, "/v1/api-keys", None)
        .await;
    for key in listed["keys"].as_array().expect("keys") {
        assert_eq!(key["organizationId"], "org-a", "{key}");
    }
    let (status, _) = server
        .call(
            &org_admin,
            Method::DELETE,
            &format!("/v1/api-keys/{other_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}

/// Two organizations: an auditor bound to one never sees the other's events through search,
/// by id, proofs, stats, exports, reports or disclosures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organizations_never_leak_into_each_other() {
    let server = Server::start().await;
    let (_, auditor_a) = server.create_key("auditor", Some("org-a")).await;
    let mut ids_a = Vec::new();
    let mut ids_b = Vec::new();
    for i in 0..3 {
        let a = server
            .ingest(&server.admin, clinical("org-a", &format!("p-{i}")))
            .await;
        ids_a.push(a["id"].as_str().expect("id").to_owned());
        // Org b's events concern the same patients: disclosures must still be separated.
        let b = server
            .ingest(&server.admin, clinical("org-b", &format!("p-{i}")))
            .await;
        ids_b.push(b["id"].as_str().expect("id").to_owned());
    }
    let get = |path: String| {
        let server = &server;
        let key = auditor_a.clone();
        async move { server.call(&key, Method::GET, &path, None).await }
    };

    // Search: only org a, even asking for everything.
    let (status, page) = get("/v1/events?limit=1000".into()).await;
    assert_eq!(status, StatusCode::OK);
    for e in page["events"].as_array().expect("events") {
        assert_eq!(e["organizationId"], "org-a", "{e}");
    }
    let (status, _) = get("/v1/events?organizationId=org-b".into()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // By id and proof: another organization's event does not exist for this key.
    for id in &ids_b {
        assert_eq!(
            get(format!("/v1/events/{id}")).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get(format!("/v1/events/{id}/proof")).await.0,
            StatusCode::NOT_FOUND
        );
    }
    for id in &ids_a {
        assert_eq!(get(format!("/v1/events/{id}")).await.0, StatusCode::OK);
        assert_eq!(
            get(format!("/v1/events/{id}/proof")).await.0,
            StatusCode::OK
        );
    }
    // Stats: counts of org a only.
    let (status, stats) = get("/v1/stats?action=fhir.*".into()).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert_eq!(stats["total"], 3, "{stats}");
    assert_eq!(stats["phiAccesses"], 3, "{stats}");
    // Exports: every format carries org a only.
    for format in ["ndjson", "json", "csv", "fhir", "bundle"] {
        let (status, body) = get(format!("/v1/export?format={format}&action=fhir.*")).await;
        assert_eq!(status, StatusCode::OK, "{format}");
        let text = body.to_string();
        for id in &ids_b {
            assert!(!text.contains(id.as_str()), "{format} leaks {id}");
        }
        for id in &ids_a {
            assert!(text.contains(id.as_str()), "{format} misses {id}");
        }
    }
    // Reports and disclosures.
    let (status, report) = server
        .call(
            &auditor_a,
            Method::POST,
            "/v1/reports",
            Some(&json!({"type": "HIPAA", "from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let text = report.to_string();
    assert!(
        !text.contains("org-b") && !text.contains("dr-org-b"),
        "{report}"
    );
    assert!(text.contains("org-a"), "{report}");
    let (status, disclosures) = get("/v1/reports/disclosures?patientId=p-1".into()).await;
    assert_eq!(status, StatusCode::OK, "{disclosures}");
    let text = disclosures.to_string();
    assert!(
        text.contains("dr-org-a") && !text.contains("dr-org-b"),
        "{disclosures}"
    );
    let (status, _) = server
        .call(
            &auditor_a,
            Method::POST,
            "/v1/reports",
            Some(&json!({"type": "HIPAA", "from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z", "organizationId": "org-b"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    server.stop().await;
}

/// Retention over HTTP: policies read and replaced (validated, audited), legal holds placed,
/// listed and released (validated, audited, conflicts), and a dry run that reports and is
/// recorded. (Purging itself runs with a fake clock in `tests/retention.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_policies_holds_and_dry_run_over_http() {
    let server = Server::start().await;
    let admin = server.admin.clone();
    let (status, policies) = server
        .call(&admin, Method::GET, "/v1/retention/policies", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{policies}");
    assert_eq!(policies["defaults"]["PHI"], "hipaa-6-years");
    let mut changed = policies.clone();
    changed["policies"]
        .as_array_mut()
        .expect("policies")
        .push(json!({"name": "research", "retentionDays": 30}));
    changed["defaults"]["INTERNAL"] = json!("research");
    let (status, stored) = server
        .call(
            &admin,
            Method::PUT,
            "/v1/retention/policies",
            Some(&changed),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    let (_, read_back) = server
        .call(&admin, Method::GET, "/v1/retention/policies", None)
        .await;
    assert_eq!(read_back, changed);
    // Invalid sets: every problem named by pointer, nothing stored.
    let bad = json!({"policies": [{"name": "x", "retentionDays": 0}], "defaults": {"PHI": "nope"}});
    let (status, reply) = server
        .call(&admin, Method::PUT, "/v1/retention/policies", Some(&bad))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
    let paths: Vec<&str> = reply["error"]["details"]
        .as_array()
        .expect("details")
        .iter()
        .map(|d| d["path"].as_str().expect("path"))
        .collect();
    assert_eq!(paths, ["/policies/0/retentionDays", "/defaults/PHI"]);
    let (_, unchanged) = server
        .call(&admin, Method::GET, "/v1/retention/policies", None)
        .await;
    assert_eq!(unchanged, changed);

    // Legal holds.
    let (status, hold) = server
        .call(
            &admin,
            Method::POST,
            "/v1/legal-holds",
            Some(&json!({"id": "case-12", "reason": "subpoena", "patientId": "p-9"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hold}");
    assert_eq!(
        hold["createdBy"].as_str().map(|s| s.starts_with("key_")),
        Some(true)
    );
    let (status, _) = server
        .call(
            &admin,
            Method::POST,
            "/v1/legal-holds",
            Some(&json!({"id": "case-12", "reason": "again", "patientId": "p-9"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, reply) = server
        .call(
            &admin,
            Method::POST,
            "/v1/legal-holds",
            Some(&json!({"reason": "everything"})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a hold must name what it holds: {reply}"
    );
    let (_, listed) = server
        .call(&admin, Method::GET, "/v1/legal-holds", None)
        .await;
    assert_eq!(
        listed["holds"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    let (status, released) = server
        .call(&admin, Method::DELETE, "/v1/legal-holds/case-12", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{released}");
    assert!(released["releasedAt"].is_string());
    let (status, _) = server
        .call(&admin, Method::DELETE, "/v1/legal-holds/case-12", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // A dry run today: nothing has expired; the run is recorded.
    server.ingest(&admin, clinical("org-a", "p-1")).await;
    let (status, report) = server
        .call(
            &admin,
            Method::POST,
            "/v1/retention/apply?dryRun=true",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["dryRun"], true);
    assert_eq!(report["expired"], 0);
    let (status, _) = server
        .call(
            &admin,
            Method::POST,
            "/v1/retention/apply?dryRun=maybe",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Every change is in the log.
    for action in [
        "retention.policies.update",
        "legalhold.create",
        "legalhold.release",
        "retention.dryrun",
    ] {
        let found = server.events_with_action(action).await;
        assert_eq!(found.len(), 1, "{action}: {found:?}");
    }
    server.stop().await;
}
