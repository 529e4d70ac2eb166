//! The audit layer end to end, per preset: an axum service on 127.0.0.1 with the layer and a
//! real [`Client`] (spooled delivery), a real Vellum server on 127.0.0.1, and the events as the
//! server stored them, checked field by field: what must be there, what must be redacted, and
//! what must be absent.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use vellum_client::Client;
use vellum_client::middleware::{AuditConfig, AuditLayer, AuditLevel};
use zeroize::Zeroizing;

struct Vellum {
    server: vellum_server::RunningServer,
    url: String,
    key: String,
}

async fn vellum(dir: &Path) -> Vellum {
    let config = vellum_server::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        crypto_secret: Some(Zeroizing::new("middleware-e2e-secret-0123456789ab".into())),
        index_wait_ms: 60_000,
        ..vellum_server::ServerConfig::default()
    };
    let server = vellum_server::start(config).await.unwrap();
    let key = std::fs::read_to_string(dir.join("admin.key"))
        .unwrap()
        .trim()
        .to_owned();
    let url = format!("http://{}", server.addr);
    Vellum { server, url, key }
}

/// Serves `router` under the layer with `config`, recording through a spooled client.
async fn serve(router: Router, client: &Client, config: AuditConfig) -> String {
    let app = router.layer(AuditLayer::new(client.clone(), config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    format!("http://{addr}")
}

async fn stored(v: &Vellum, action: &str) -> Vec<Value> {
    let page: Value = reqwest::Client::new()
        .get(format!("{}/v1/events", v.url))
        .bearer_auth(&v.key)
        .query(&[("action", action)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["events"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_preset_records_what_it_should_and_redacts_what_it_must() {
    let dir = tempfile::tempdir().unwrap();
    let v = vellum(&dir.path().join("vellum")).await;
    let client = Client::builder()
        .url(&v.url)
        .api_key(&v.key)
        .spool_dir(dir.path().join("spool"))
        .build()
        .unwrap();
    let http = reqwest::Client::new();

    // Financial, comprehensive: the body is kept, payment fields are masked.
    let payments = Router::new().route("/payments", post(|| async { StatusCode::CREATED }));
    let fin = serve(
        payments,
        &client,
        AuditConfig::financial()
            .level(AuditLevel::Comprehensive)
            .organization("bank-1"),
    )
    .await;
    let r = http
        .post(format!("{fin}/payments"))
        .json(
            &json!({"amount": 125.5, "currency": "EUR", "cardNumber": "4111111111111111",
                      "cvv": "123", "iban": "DE89370400440532013000", "memo": "rent"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Auth, detailed: never a body; credentials in the query masked; headers from the
    // allowlist only.
    let login = Router::new()
        .route("/login", post(|| async { StatusCode::UNAUTHORIZED }))
        .route("/session", get(|| async { "ok" }));
    let auth = serve(
        login,
        &client,
        AuditConfig::auth().level(AuditLevel::Detailed),
    )
    .await;
    let r = http
        .post(format!("{auth}/login"))
        .header("authorization", "Basic YW5hOmh1bnRlcjI=")
        .header("cookie", "sid=secret-session")
        .json(&json!({"username": "ana", "password": "hunter2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{auth}/session?token=abc123&lang=pt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Healthcare, minimal: who, what, which patient; nothing about the device or request.
    let ehr = Router::new().route("/patients/{id}", get(|| async { "{}" }));
    let hc = serve(
        ehr,
        &client,
        AuditConfig::healthcare().level(AuditLevel::Minimal),
    )
    .await;
    let r = http
        .get(format!("{hc}/patients/maria-silva?include=all"))
        .header("user-agent", "ward-tablet/1.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    assert!(
        client.drain(Duration::from_secs(60)).await,
        "{:?}",
        client.stats()
    );

    let payment = stored(&v, "api.payment.create").await;
    assert_eq!(payment.len(), 1, "{payment:?}");
    let p = &payment[0];
    assert_eq!(p["status"], "success");
    assert_eq!(p["organizationId"], "bank-1");
    assert_eq!(p["dataClassification"], "CONFIDENTIAL");
    assert_eq!(p["targetResourceType"], "Payment");
    assert_eq!(p["principalId"], "anonymous");
    let body = &p["details"]["requestBody"];
    assert_eq!(body["amount"], 125.5);
    assert_eq!(body["currency"], "EUR");
    assert_eq!(body["memo"], "rent");
    for field in ["cardNumber", "cvv", "iban"] {
        assert_eq!(body[field], "[REDACTED]", "{field} in {body}");
    }
    assert!(!p.to_string().contains("4111111111111111"));
    assert_eq!(p["technicalContext"]["statusCode"], 201);

    let login = stored(&v, "auth.login.failure").await;
    assert_eq!(login.len(), 1, "{login:?}");
    let l = &login[0];
    assert_eq!(l["status"], "failure");
    assert_eq!(l["dataClassification"], "INTERNAL");
    assert!(l.get("targetResourceType").is_none());
    assert!(
        l["details"].get("requestBody").is_none(),
        "the auth preset never records bodies: {l}"
    );
    let headers = &l["details"]["requestHeaders"];
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers.get("authorization").is_none() && headers.get("cookie").is_none());
    assert!(!l.to_string().contains("hunter2") && !l.to_string().contains("secret-session"));

    let session = stored(&v, "auth.session.success").await;
    assert_eq!(session.len(), 1, "{session:?}");
    assert_eq!(session[0]["details"]["query"]["token"], "[REDACTED]");
    assert_eq!(session[0]["details"]["query"]["lang"], "pt");

    let read = stored(&v, "api.patient.read").await;
    assert_eq!(read.len(), 1, "{read:?}");
    let h = &read[0];
    assert_eq!(h["dataClassification"], "PHI");
    // The route template says `maria-silva` is the id, though it has no digit.
    assert_eq!(h["targetResourceType"], "Patient");
    assert_eq!(h["targetResourceId"], "maria-silva");
    assert_eq!(h["healthcareContext"]["patientId"], "maria-silva");
    for absent in [
        "sessionContext",
        "technicalContext",
        "correlationId",
        "details",
    ] {
        assert!(
            h.get(absent).is_none(),
            "minimal level has no {absent}: {h}"
        );
    }
    client.shutdown().await;
    v.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_closed_route_refuses_phi_when_the_spool_is_full_and_open_routes_still_answer() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use vellum_client::{ClientError, Delivery, Event, SpoolConfig, SpoolError, Status};

    let dir = tempfile::tempdir().unwrap();
    // Vellum is down (a closed port): nothing leaves the spool, so it fills up.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut spool = SpoolConfig::new(dir.path().join("spool"));
    spool.max_bytes = 64 * 1024;
    spool.segment_bytes = 16 * 1024;
    let client = Client::builder()
        .url(format!("http://127.0.0.1:{port}"))
        .api_key("unused")
        .spool(spool)
        .build()
        .unwrap();
    let mut n = 0u64;
    loop {
        let event = Event::new("test.fill", Status::Success).detail("n", n);
        match client
            .log_with_guaranteed_delivery(event, Delivery::default())
            .await
        {
            Ok(_) => n += 1,
            Err(ClientError::Spool(SpoolError::Full { .. })) => break,
            Err(other) => panic!("unexpected: {other}"),
        }
        assert!(n < 10_000, "the spool never filled");
    }

    let handled = Arc::new(AtomicUsize::new(0));
    let (h1, h2) = (Arc::clone(&handled), Arc::clone(&handled));
    let router = Router::new()
        .route(
            "/patients/{id}",
            get(move || {
                h1.fetch_add(1, Ordering::SeqCst);
                async { "{\"name\":\"Maria\"}" }
            }),
        )
        .route(
            "/schedule",
            get(move || {
                h2.fetch_add(1, Ordering::SeqCst);
                async { "[]" }
            }),
        );
    let base = serve(
        router,
        &client,
        AuditConfig::healthcare().fail_closed("/patients"),
    )
    .await;
    let http = reqwest::Client::new();
    let refused = http
        .get(format!("{base}/patients/p-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "audit_unavailable");
    assert_eq!(
        handled.load(Ordering::SeqCst),
        0,
        "the PHI handler must not run"
    );
    // A fail-open route answers as if nothing were wrong.
    let open = http.get(format!("{base}/schedule")).send().await.unwrap();
    assert_eq!(open.status(), 200);
    assert_eq!(handled.load(Ordering::SeqCst), 1);
    client.shutdown().await;
}
