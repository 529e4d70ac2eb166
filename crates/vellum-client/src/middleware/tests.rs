//! The layer end to end: a real axum `Router` served on 127.0.0.1, requests over TCP, and a
//! recorder that keeps events in memory (the layer's boundary; delivery to a Vellum server is
//! tested elsewhere).

#![allow(clippy::unwrap_used)]

use super::*;
use crate::{ClientError, DataClassification, Event, PrincipalType, Priority};
use axum::extract::Request as AxumRequest;
use axum::middleware::{Next, from_fn};
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Keeps what it records; can be told to be unready, to fail, or to wait at a gate.
#[derive(Clone, Default)]
struct Memory {
    state: Arc<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    events: Mutex<Vec<(Value, Priority)>>,
    not_ready: AtomicBool,
    fail: AtomicBool,
    /// When set, each record waits for a permit before finishing.
    gate: Mutex<Option<Arc<Semaphore>>>,
}

impl Memory {
    fn events(&self) -> Vec<(Value, Priority)> {
        self.state.events.lock().clone()
    }

    fn only_event(&self) -> (Value, Priority) {
        let events = self.events();
        assert_eq!(events.len(), 1, "{events:#?}");
        events.into_iter().next().unwrap()
    }

    /// Waits (bounded) until `n` events are recorded: fail-open records run in the background.
    async fn wait_for(&self, n: usize) -> Vec<(Value, Priority)> {
        for _ in 0..500 {
            if self.state.events.lock().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let events = self.events();
        assert_eq!(events.len(), n, "{events:#?}");
        events
    }

    fn close_gate(&self) -> Arc<Semaphore> {
        let gate = Arc::new(Semaphore::new(0));
        *self.state.gate.lock() = Some(Arc::clone(&gate));
        gate
    }
}

impl AuditRecorder for Memory {
    fn record(
        &self,
        event: Event,
        priority: Priority,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ClientError>> + Send>> {
        let state = Arc::clone(&self.state);
        Box::pin(async move {
            let gate = state.gate.lock().clone();
            if let Some(gate) = gate {
                gate.acquire().await.unwrap().forget();
            }
            if state.fail.load(Ordering::SeqCst) {
                return Err(ClientError::Closed);
            }
            state.events.lock().push((event.into_json(), priority));
            Ok(())
        })
    }

    fn ready(&self) -> bool {
        !self.state.not_ready.load(Ordering::SeqCst)
    }
}

async fn serve(app: Router) -> String {
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

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A handler that counts its calls.
fn counted(
    counter: &Arc<AtomicUsize>,
) -> impl Fn() -> std::future::Ready<&'static str> + Clone + use<> {
    let counter = Arc::clone(counter);
    move || {
        counter.fetch_add(1, Ordering::SeqCst);
        std::future::ready("handled")
    }
}

#[tokio::test]
async fn middleware_axum_router_records_requests_over_tcp() {
    let memory = Memory::default();
    // Fail-closed everywhere: each event is recorded before its response leaves, so the test
    // can look at it as soon as the response arrives.
    let config = AuditConfig::healthcare()
        .organization("clinic-7")
        .fail_closed("/");
    let layer = AuditLayer::new(memory.clone(), config);
    let app = Router::new()
        .route("/patients/{id}/observations", get(|| async { "[]" }))
        .route("/icd10/{code}", get(|| async { "code" }))
        .layer(layer.clone());
    let base = serve(app).await;

    let response = client()
        .get(format!("{base}/patients/john-doe/observations?code=8867-4"))
        .header("x-correlation-id", "corr-1")
        .header("user-agent", "test-agent")
        .header("authorization", "Bearer secret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "[]");
    let (event, priority) = memory.only_event();
    assert_eq!(event["action"], "api.observation.read");
    assert_eq!(event["status"], "success");
    assert_eq!(event["principalId"], "anonymous");
    assert_eq!(event["organizationId"], "clinic-7");
    assert_eq!(event["targetResourceType"], "Observation");
    assert_eq!(event["dataClassification"], "PHI");
    assert_eq!(event["correlationId"], "corr-1");
    assert_eq!(
        event["outcomeDescription"],
        "GET /patients/john-doe/observations -> 200"
    );
    assert_eq!(event["sessionContext"]["userAgent"], "test-agent");
    assert_eq!(
        event["technicalContext"]["endpoint"],
        "/patients/john-doe/observations"
    );
    assert_eq!(event["technicalContext"]["statusCode"], 200);
    assert_eq!(priority, Priority::High, "fail-closed route");
    assert!(!event.to_string().contains("secret-token"));
    assert!(!event.to_string().contains("8867"), "no query at Standard");
    if cfg!(feature = "axum") {
        // The route template says `john-doe` is an id (the heuristic alone would not).
        assert_eq!(event["healthcareContext"]["patientId"], "john-doe");
        assert_eq!(event["sessionContext"]["ipAddress"], "127.0.0.1");

        client()
            .get(format!("{base}/icd10/abc"))
            .send()
            .await
            .unwrap();
        let (event, _) = memory.events().pop().unwrap();
        assert_eq!(event["action"], "api.icd10.read");
        assert_eq!(event["targetResourceType"], "Icd10");
        assert_eq!(event["targetResourceId"], "abc");
    }
    assert_eq!(layer.dropped_events(), 0);
    assert_eq!(layer.record_failures(), 0);
}

#[tokio::test]
async fn middleware_request_bodies_reach_the_handler_byte_identical() {
    let memory = Memory::default();
    let config = AuditConfig::healthcare()
        .level(AuditLevel::Comprehensive)
        .max_body_bytes(1024)
        .fail_closed("/");
    let app = Router::new()
        .route("/patients", post(|body: Bytes| async move { body }))
        .layer(AuditLayer::new(memory.clone(), config));
    let base = serve(app).await;
    let url = format!("{base}/patients");

    let echo = |body: reqwest::Body, content_type: &'static str| {
        let request = client()
            .post(&url)
            .header("content-type", content_type)
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap()
        }
    };

    // Small JSON: captured, redacted, and the handler gets the very same bytes.
    let small = br#"{"name":"Ana","ssn":"123-45-6789","password":"hunter2","diagnosis":"flu"}"#;
    assert_eq!(
        echo(small.to_vec().into(), "application/json").await,
        &small[..]
    );
    let (event, _) = memory.events().pop().unwrap();
    assert_eq!(event["action"], "api.patient.create");
    assert_eq!(
        event["details"]["requestBody"],
        json!({"name": "Ana", "ssn": "[REDACTED]", "password": "[REDACTED]",
               "diagnosis": "[REDACTED]"})
    );

    // Larger than max_body_bytes: streamed through unread.
    let large = serde_json::to_vec(&json!({"notes": "x".repeat(200_000)})).unwrap();
    assert_eq!(
        echo(large.clone().into(), "application/fhir+json").await,
        &large[..]
    );
    let (event, _) = memory.events().pop().unwrap();
    assert_eq!(
        event["details"]["requestBody"],
        json!({"omitted": "larger than maxBodyBytes",
               "contentType": "application/fhir+json", "bytes": large.len()})
    );

    // Not JSON (and not UTF-8): passed through.
    let binary: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    assert_eq!(
        echo(binary.clone().into(), "application/octet-stream").await,
        &binary[..]
    );
    let (event, _) = memory.events().pop().unwrap();
    assert_eq!(event["details"]["requestBody"]["omitted"], "not JSON");
    assert_eq!(event["details"]["requestBody"]["bytes"], 5000);

    // Declared JSON but not UTF-8, and invalid JSON: read, handed on, not recorded.
    let not_utf8 = b"{\"a\":\"\xff\xfe\"}".to_vec();
    assert_eq!(
        echo(not_utf8.clone().into(), "application/json").await,
        &not_utf8[..]
    );
    let (event, _) = memory.events().pop().unwrap();
    assert_eq!(
        event["details"]["requestBody"]["omitted"],
        "not valid UTF-8"
    );
    assert_eq!(
        echo(b"{nope".to_vec().into(), "application/json").await,
        &b"{nope"[..]
    );
    let (event, _) = memory.events().pop().unwrap();
    assert_eq!(event["details"]["requestBody"]["omitted"], "invalid JSON");

    // Streamed (chunked, no content-length): never buffered.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(b"{\"a\":".to_vec()), Ok(b"1}".to_vec())];
    let streamed = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    assert_eq!(echo(streamed, "application/json").await, &b"{\"a\":1}"[..]);
    let (event, _) = memory.events().pop().unwrap();
    assert_eq!(
        event["details"]["requestBody"]["omitted"],
        "no content-length (streamed body)"
    );
    assert_eq!(memory.events().len(), 6);
}

#[tokio::test]
async fn middleware_fail_open_failing_recorder_leaves_the_response_alone() {
    let memory = Memory::default();
    memory.state.fail.store(true, Ordering::SeqCst);
    memory.state.not_ready.store(true, Ordering::SeqCst);
    let layer = AuditLayer::new(memory.clone(), AuditConfig::healthcare());
    let app = Router::new()
        .route("/patients/{id}", get(|| async { "record" }))
        .layer(layer.clone());
    let base = serve(app).await;

    let response = client()
        .get(format!("{base}/patients/7"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "record");
    for _ in 0..500 {
        if layer.record_failures() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(layer.record_failures(), 1);
    assert!(memory.events().is_empty());
}

#[tokio::test]
async fn middleware_fail_open_hanging_recorder_does_not_hold_the_response() {
    let memory = Memory::default();
    let gate = memory.close_gate();
    let layer = AuditLayer::new(memory.clone(), AuditConfig::healthcare().max_in_flight(1));
    let app = Router::new()
        .route("/patients/{id}", get(|| async { "record" }))
        .layer(layer.clone());
    let base = serve(app).await;

    for _ in 0..3 {
        let response = client()
            .get(format!("{base}/patients/7"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "record");
    }
    // The first record is still waiting at the gate; it holds the only in-flight slot, so
    // the next two events were dropped and counted.
    assert!(memory.events().is_empty());
    assert_eq!(layer.dropped_events(), 2);

    gate.add_permits(10);
    let events = memory.wait_for(1).await;
    let (event, priority) = &events[0];
    assert_eq!(event["action"], "api.patient.read");
    assert_eq!(event["targetResourceId"], "7");
    assert_eq!(*priority, Priority::Normal);
    assert_eq!(layer.record_failures(), 0);
}

#[tokio::test]
async fn middleware_fail_closed_refuses_before_the_handler() {
    let memory = Memory::default();
    memory.state.not_ready.store(true, Ordering::SeqCst);
    let calls = Arc::new(AtomicUsize::new(0));
    let config = AuditConfig::healthcare().fail_closed("/patients");
    let app = Router::new()
        .route("/patients/{id}", get(counted(&calls)))
        .route("/users/{id}", get(counted(&calls)))
        .layer(AuditLayer::new(memory.clone(), config));
    let base = serve(app).await;

    let response = client()
        .get(format!("{base}/patients/7"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "audit_unavailable");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler must not run");

    // The refusal itself is still recorded (fire-and-forget).
    let events = memory.wait_for(1).await;
    let (event, priority) = &events[0];
    assert_eq!(event["status"], "failure");
    assert_eq!(event["technicalContext"]["statusCode"], 503);
    assert_eq!(event["details"]["refusal"], "audit_unavailable");
    assert_eq!(*priority, Priority::High);

    // A fail-open route is served as usual.
    let response = client()
        .get(format!("{base}/users/7"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn middleware_fail_closed_withholds_the_response_when_the_record_fails() {
    let memory = Memory::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let config = AuditConfig::healthcare()
        .fail_closed("/patients")
        .record_timeout(Duration::from_millis(50));
    let layer = AuditLayer::new(memory.clone(), config);
    let app = Router::new()
        .route(
            "/patients/{id}",
            get({
                let calls = Arc::clone(&calls);
                move || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async {
                        (
                            [("x-request-id", "req-42")],
                            "PHI that must not leave unaudited",
                        )
                    }
                }
            }),
        )
        .layer(layer.clone());
    let base = serve(app).await;
    let get_patient = || client().get(format!("{base}/patients/7")).send();

    // The recorder fails.
    memory.state.fail.store(true, Ordering::SeqCst);
    let response = get_patient().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    assert_eq!(response.headers()["x-request-id"], "req-42");
    let text = response.text().await.unwrap();
    assert!(!text.contains("PHI"), "{text}");
    assert!(text.contains("audit_unavailable"));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the handler ran");
    assert_eq!(layer.record_failures(), 1);

    // The recorder hangs past record_timeout.
    memory.state.fail.store(false, Ordering::SeqCst);
    let gate = memory.close_gate();
    let response = get_patient().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(layer.record_failures(), 2);

    // The recorder works: the response leaves after its event is recorded.
    *memory.state.gate.lock() = None;
    gate.add_permits(10);
    let response = get_patient().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.unwrap(),
        "PHI that must not leave unaudited"
    );
    let recorded = memory.events();
    assert!(
        recorded
            .iter()
            .any(|(e, p)| e["technicalContext"]["statusCode"] == 200 && *p == Priority::High),
        "{recorded:#?}"
    );
}

#[tokio::test]
async fn middleware_audit_context_additions_reach_the_event() {
    let memory = Memory::default();
    let config = AuditConfig::healthcare().fail_closed("/");
    let app = Router::new()
        .route(
            "/search",
            post(|Extension(ctx): Extension<AuditContext>| async move {
                ctx.set_principal(
                    AuditPrincipal::new("dr-ana", PrincipalType::Professional)
                        .organization("clinic-9")
                        .session("sess-1"),
                );
                ctx.set_patient("p-77");
                ctx.set_target("Patient", "p-77");
                ctx.set_emergency_access("unconscious patient in ER");
                ctx.add_detail("query", json!({"mrn": "12345", "term": "smith"}));
                ctx.add_detail("reason", "break-glass");
                "found"
            }),
        )
        .layer(AuditLayer::new(memory.clone(), config));
    let base = serve(app).await;

    let response = client()
        .post(format!("{base}/search"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (event, priority) = memory.only_event();
    assert_eq!(event["action"], "api.search.create");
    assert_eq!(event["principalId"], "dr-ana");
    assert_eq!(event["principalType"], "professional");
    assert_eq!(event["organizationId"], "clinic-9");
    assert_eq!(event["sessionContext"]["sessionId"], "sess-1");
    assert_eq!(event["targetResourceType"], "Patient");
    assert_eq!(event["targetResourceId"], "p-77");
    assert_eq!(
        event["healthcareContext"],
        json!({"patientId": "p-77", "emergencyAccess": true,
               "clinicalJustification": "unconscious patient in ER"})
    );
    assert_eq!(event["details"]["reason"], "break-glass");
    // Handler details replace the layer's and are redacted like the rest.
    assert_eq!(
        event["details"]["query"],
        json!({"mrn": "[REDACTED]", "term": "smith"})
    );
    assert_eq!(priority, Priority::High);
}

#[tokio::test]
async fn middleware_principal_from_an_outer_auth_layer_wins() {
    let memory = Memory::default();
    let config = AuditConfig::healthcare().fail_closed("/");
    let app = Router::new()
        .route(
            "/patients/{id}",
            get(|Extension(ctx): Extension<AuditContext>| async move {
                ctx.set_principal(AuditPrincipal::new("handler", PrincipalType::Service));
                "ok"
            }),
        )
        .route(
            "/users/{id}",
            get(|| async {
                (
                    Extension(AuditPrincipal::new("from-response", PrincipalType::Admin)),
                    "ok",
                )
            }),
        )
        .layer(AuditLayer::new(memory.clone(), config))
        // Outside the audit layer, like an authentication layer.
        .layer(from_fn(|mut request: AxumRequest, next: Next| async move {
            if request.uri().path().starts_with("/patients") {
                request.extensions_mut().insert(
                    AuditPrincipal::new("edge-user", PrincipalType::User).organization("org-1"),
                );
            }
            next.run(request).await
        }));
    let base = serve(app).await;

    client()
        .get(format!("{base}/patients/1"))
        .send()
        .await
        .unwrap();
    let (event, _) = memory.only_event();
    assert_eq!(event["principalId"], "edge-user");
    assert_eq!(event["principalType"], "user");
    assert_eq!(event["organizationId"], "org-1");

    client()
        .get(format!("{base}/users/1"))
        .send()
        .await
        .unwrap();
    let (event, _) = memory.events().pop().unwrap();
    assert_eq!(event["principalId"], "from-response");
    assert_eq!(event["principalType"], "admin");
    assert_eq!(event["dataClassification"], "INTERNAL");
}

#[tokio::test]
async fn middleware_excluded_and_skipped_requests_produce_no_event() {
    let memory = Memory::default();
    // Not ready and fail-closed everywhere: an excluded route must still be served, and with
    // fail-closed recording inline, "no event" is certain as soon as the response is here.
    memory.state.not_ready.store(true, Ordering::SeqCst);
    let config = AuditConfig::healthcare()
        .fail_closed("/")
        .exclude("/internal/");
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/internal/ping", get(|| async { "pong" }))
        .route(
            "/cache-probe",
            get(|Extension(ctx): Extension<AuditContext>| async move {
                ctx.skip();
                "skipped"
            }),
        )
        .layer(AuditLayer::new(memory.clone(), config));
    let base = serve(app).await;

    for (path, body) in [("/healthz", "ok"), ("/internal/ping", "pong")] {
        let response = client().get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.text().await.unwrap(), body);
    }
    memory.state.not_ready.store(false, Ordering::SeqCst);
    let response = client()
        .get(format!("{base}/cache-probe"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "skipped");
    assert!(memory.events().is_empty(), "{:#?}", memory.events());

    // An unmatched route (axum's fallback) is still audited.
    let response = client()
        .get(format!("{base}/nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let (event, _) = memory.only_event();
    assert_eq!(event["action"], "api.nowhere.read");
    assert_eq!(event["status"], "failure");
}

#[tokio::test]
async fn middleware_levels_and_forwarded_for_over_tcp() {
    let memory = Memory::default();
    let config = AuditConfig::financial()
        .level(AuditLevel::Detailed)
        .trust_forwarded_for(true)
        .classify("/public", DataClassification::Public)
        .fail_closed("/");
    let app = Router::new()
        .route("/public/rates", get(|| async { "rates" }))
        .layer(AuditLayer::new(memory.clone(), config));
    let base = serve(app).await;

    client()
        .get(format!("{base}/public/rates?currency=EUR&apiKey=k-123"))
        .header("x-forwarded-for", "203.0.113.9, 10.0.0.1")
        .header("cookie", "sid=cookie-secret")
        .header("accept", "text/plain")
        .send()
        .await
        .unwrap();
    let (event, priority) = memory.only_event();
    assert_eq!(event["action"], "api.rate.read");
    assert_eq!(event["dataClassification"], "PUBLIC");
    assert_eq!(event["sessionContext"]["ipAddress"], "203.0.113.9");
    assert_eq!(
        event["details"]["query"],
        json!({"currency": "EUR", "apiKey": "[REDACTED]"})
    );
    let headers = event["details"]["requestHeaders"].as_object().unwrap();
    assert_eq!(headers["accept"], "text/plain");
    assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 10.0.0.1");
    assert!(!headers.contains_key("cookie"));
    assert!(!event.to_string().contains("cookie-secret"));
    assert_eq!(priority, Priority::High);
}

/// The layer without axum's router: a plain tower service, as a hyper application has.
#[tokio::test]
async fn middleware_tower_service_with_client_addr() {
    use tower::{Layer, ServiceExt};
    let memory = Memory::default();
    let layer = AuditLayer::new(
        memory.clone(),
        AuditConfig::healthcare()
            .level(AuditLevel::Comprehensive)
            .fail_closed("/"),
    );
    let service = layer.layer(tower::service_fn(
        |request: http::Request<AuditRequestBody<Full<Bytes>>>| async move {
            let body = request.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http::Response::new(Full::new(body)))
        },
    ));
    let mut request = http::Request::post("/observations?patient=p-1")
        .header("content-type", "application/json")
        .header("content-length", "9")
        .body(Full::new(Bytes::from_static(b"{\"v\":120}")))
        .unwrap();
    request
        .extensions_mut()
        .insert(ClientAddr("[::ffff:192.0.2.1]:5555".parse().unwrap()));
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        Bytes::from_static(b"{\"v\":120}")
    );
    let (event, _) = memory.only_event();
    assert_eq!(event["action"], "api.observation.create");
    assert_eq!(event["sessionContext"]["ipAddress"], "192.0.2.1");
    assert_eq!(event["details"]["requestBody"], json!({"v": 120}));
    assert_eq!(event["details"]["query"], json!({"patient": "p-1"}));
}

/// A request dropped before its response (the client went away) is recorded as an attempt.
#[tokio::test]
async fn middleware_dropped_request_is_recorded_as_an_attempt() {
    use tower::{Layer, Service, ServiceExt};
    let memory = Memory::default();
    let layer = AuditLayer::new(memory.clone(), AuditConfig::healthcare());
    let mut service = layer.layer(tower::service_fn(
        |_: http::Request<AuditRequestBody<Full<Bytes>>>| async {
            std::future::pending::<Result<http::Response<Full<Bytes>>, std::convert::Infallible>>()
                .await
        },
    ));
    let request = http::Request::get("/patients/7")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let future = service.ready().await.unwrap().call(request);
    assert!(
        tokio::time::timeout(Duration::from_millis(20), future)
            .await
            .is_err()
    );
    let events = memory.wait_for(1).await;
    let (event, _) = &events[0];
    assert_eq!(event["status"], "attempt");
    assert_eq!(event["action"], "api.patient.read");
    assert!(
        event["outcomeDescription"]
            .as_str()
            .unwrap()
            .contains("no response")
    );
}
