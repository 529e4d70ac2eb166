//! The example end to end: the EHR service on 127.0.0.1 with its real audit layer and client,
//! a real Vellum server on 127.0.0.1, and the stored audit events read back and checked field
//! by field (healthcare preset, comprehensive level).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

struct Env {
    _dir: tempfile::TempDir,
    server: vellum_server::RunningServer,
    vellum: String,
    key: String,
    client: vellum_client::Client,
    ehr: String,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let config = vellum_server::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("vellum"),
        crypto_secret: Some(zeroize::Zeroizing::new(
            "ehr-example-secret-0123456789abcdef".into(),
        )),
        index_wait_ms: 60_000,
        ..vellum_server::ServerConfig::default()
    };
    let server = vellum_server::start(config).await.unwrap();
    let key = std::fs::read_to_string(dir.path().join("vellum/admin.key"))
        .unwrap()
        .trim()
        .to_owned();
    let vellum = format!("http://{}", server.addr);
    let client = vellum_client::Client::builder()
        .url(&vellum)
        .api_key(&key)
        .spool_dir(dir.path().join("spool"))
        .build()
        .unwrap();
    let app = axum_ehr::app(Arc::new(axum_ehr::Records::default()), client.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ehr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    Env {
        _dir: dir,
        server,
        vellum,
        key,
        client,
        ehr,
    }
}

async fn events(env: &Env, query: &str) -> Vec<Value> {
    let page: Value = reqwest::Client::new()
        .get(format!("{}/v1/events?{query}", env.vellum))
        .bearer_auth(&env.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["events"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_of_the_ehr_becomes_an_audit_event_with_the_right_fields() {
    let env = env().await;
    let http = reqwest::Client::new();
    let dr = "Bearer dr-ana-token";

    let created: Value = http
        .post(format!("{}/patients", env.ehr))
        .header("authorization", dr)
        .header("x-request-id", "req-create-1")
        .json(&json!({"name": "Maria Silva", "birthDate": "1980-02-03", "ssn": "123-45-6789"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    // The application keeps its data; only the audit copy is redacted.
    assert_eq!(created["ssn"], "123-45-6789");

    let read = http
        .get(format!("{}/patients/{id}?fields=name", env.ehr))
        .header("authorization", dr)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let glass = http
        .get(format!("{}/patients/{id}/observations", env.ehr))
        .header("authorization", "Bearer nurse-bo-token")
        .header("x-break-glass", "patient unconscious in ER")
        .send()
        .await
        .unwrap();
    assert_eq!(glass.status(), 200);
    let refused = http
        .get(format!("{}/patients/{id}", env.ehr))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let health = http
        .get(format!("{}/healthz", env.ehr))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    assert!(env.client.drain(Duration::from_secs(60)).await);

    let create = events(&env, "action=ehr.patient.create").await;
    assert_eq!(create.len(), 1, "{create:?}");
    let e = &create[0];
    assert_eq!(e["status"], "success");
    assert_eq!(e["principalId"], "dr-ana");
    assert_eq!(e["principalType"], "professional");
    assert_eq!(e["organizationId"], "clinic-1");
    assert_eq!(e["targetResourceType"], "Patient");
    assert_eq!(e["targetResourceId"], id.as_str());
    assert_eq!(e["dataClassification"], "PHI");
    assert_eq!(e["healthcareContext"]["patientId"], id.as_str());
    assert_eq!(e["sessionContext"]["ipAddress"], "127.0.0.1");
    assert_eq!(e["technicalContext"]["httpMethod"], "POST");
    assert_eq!(e["technicalContext"]["endpoint"], "/patients");
    assert_eq!(e["technicalContext"]["statusCode"], 201);
    assert_eq!(e["technicalContext"]["requestId"], "req-create-1");
    assert_eq!(e["correlationId"], "req-create-1");
    // The body is in the event, with the SSN and the birth date masked before it left the app.
    let body = &e["details"]["requestBody"];
    assert_eq!(body["name"], "Maria Silva");
    assert_eq!(body["ssn"], "[REDACTED]");
    assert_eq!(body["birthDate"], "[REDACTED]");
    assert!(!e.to_string().contains("123-45-6789"));

    let reads = events(&env, "action=ehr.patient.read").await;
    assert_eq!(reads.len(), 2, "{reads:?}");
    let ok = reads.iter().find(|e| e["status"] == "success").unwrap();
    assert_eq!(ok["targetResourceId"], id.as_str());
    assert_eq!(ok["details"]["query"]["fields"], "name");
    let denied = reads.iter().find(|e| e["status"] == "failure").unwrap();
    assert_eq!(denied["principalId"], "anonymous");
    assert_eq!(denied["technicalContext"]["statusCode"], 401);

    let glass = events(&env, "action=ehr.observation.read").await;
    assert_eq!(glass.len(), 1);
    assert_eq!(glass[0]["principalId"], "nurse-bo");
    assert_eq!(glass[0]["healthcareContext"]["patientId"], id.as_str());
    assert_eq!(glass[0]["healthcareContext"]["emergencyAccess"], true);
    assert_eq!(
        glass[0]["healthcareContext"]["clinicalJustification"],
        "patient unconscious in ER"
    );
    // Health checks are not audited.
    assert!(events(&env, "q=healthz").await.is_empty());
    env.client.shutdown().await;
    env.server.shutdown().await.unwrap();
}
