//! [`AuditLayer`] and [`AuditService`]: where requests pass through and events leave.

use super::AuditRecorder;
use super::body::{self, AuditRequestBody, AuditResponseBody, BodyPlan, BoxError};
use super::config::{AuditConfig, Compiled};
use super::context::{AuditContext, AuditPrincipal};
use super::events::{self, CapturedBody, Ending, RequestFacts};
use super::mapping::{MAX_ID_CHARS, header_text};
use crate::{ClientError, Event, Priority};
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::sync::Semaphore;
use tower::{Layer, Service};

/// The future of [`AuditService`]: the inner response (or the layer's 503), once the request's
/// audit event is handed over (fail-open) or recorded (fail-closed).
pub type AuditFuture<ResB, E> =
    Pin<Box<dyn Future<Output = Result<Response<AuditResponseBody<ResB>>, E>> + Send + 'static>>;

/// `x-request-id`.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// State shared by a layer, its clones and every service it made.
struct Shared {
    cfg: Compiled,
    /// Bounds the fail-open records in progress.
    permits: Arc<Semaphore>,
    dropped: AtomicU64,
    failures: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("cfg", &self.cfg)
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .field("failures", &self.failures.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn note_dropped(&self, why: &'static str) {
        let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if worth_logging(total) {
            tracing::warn!(
                reason = why,
                dropped_total = total,
                "audit event dropped (fail-open route)"
            );
        }
    }

    fn note_failure(&self, why: &str) {
        let total = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if worth_logging(total) {
            tracing::warn!(
                error = why,
                failures_total = total,
                "audit event could not be recorded"
            );
        }
    }
}

/// Logs the 1st, 2nd, 4th, 8th… and every 1024th occurrence: an outage must be visible in the
/// logs without the logging of each lost event adding to the overload. The counters are exact.
fn worth_logging(total: u64) -> bool {
    total.is_power_of_two() || total.is_multiple_of(1024)
}

/// What a recorder error says without the event's content (server messages quote field
/// pointers, which are kept out too).
fn describe(error: &ClientError) -> String {
    match error {
        ClientError::Rejected(r) | ClientError::Unauthorized(r) => {
            format!("HTTP {} {}", r.status, r.code)
        }
        other => other.to_string(),
    }
}

/// Builds an event and hands it to the recorder in a background task, within the in-flight
/// bound. The event is built in the task: parsing and redacting a body stays off the
/// request's path.
fn spawn_record<R, F>(shared: &Arc<Shared>, recorder: &R, build: F)
where
    R: AuditRecorder,
    F: FnOnce(&Compiled) -> (Event, Priority) + Send + 'static,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        shared.note_dropped("no tokio runtime to record it on");
        return;
    };
    let Ok(permit) = Arc::clone(&shared.permits).try_acquire_owned() else {
        shared.note_dropped("too many audit records in flight");
        return;
    };
    let recorder = recorder.clone();
    let shared = Arc::clone(shared);
    runtime.spawn(async move {
        let (event, priority) = build(&shared.cfg);
        let result = recorder.record(event, priority).await;
        drop(permit);
        if let Err(e) = result {
            shared.note_failure(&describe(&e));
        }
    });
}

/// The tower layer that audits every request; see the [module docs](super).
///
/// Clones share their configuration and counters.
pub struct AuditLayer<R> {
    recorder: R,
    shared: Arc<Shared>,
}

impl<R: Clone> Clone for AuditLayer<R> {
    fn clone(&self) -> Self {
        Self {
            recorder: self.recorder.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<R> std::fmt::Debug for AuditLayer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLayer")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl<R: AuditRecorder> AuditLayer<R> {
    /// A layer sending its events to `recorder`. Compiles the preset's redaction rules once.
    pub fn new(recorder: R, config: AuditConfig) -> Self {
        let cfg = Compiled::new(config);
        let permits = Arc::new(Semaphore::new(cfg.max_in_flight));
        Self {
            recorder,
            shared: Arc::new(Shared {
                cfg,
                permits,
                dropped: AtomicU64::new(0),
                failures: AtomicU64::new(0),
            }),
        }
    }

    /// Events of fail-open routes dropped because [`AuditConfig::max_in_flight`] records were
    /// already in progress (or no tokio runtime was running). Export it as a metric: any
    /// non-zero value is an audit gap.
    pub fn dropped_events(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Records the recorder failed (or, on fail-closed routes, did not finish in time).
    pub fn record_failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }
}

impl<S, R: AuditRecorder> Layer<S> for AuditLayer<R> {
    type Service = AuditService<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        AuditService {
            inner,
            recorder: self.recorder.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service made by [`AuditLayer`]: calls the inner service and records the request.
pub struct AuditService<S, R> {
    inner: S,
    recorder: R,
    shared: Arc<Shared>,
}

impl<S: Clone, R: Clone> Clone for AuditService<S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            recorder: self.recorder.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: std::fmt::Debug, R> std::fmt::Debug for AuditService<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, R: AuditRecorder> AuditService<S, R> {
    /// Same as [`AuditLayer::dropped_events`] (the counters are shared).
    pub fn dropped_events(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Same as [`AuditLayer::record_failures`].
    pub fn record_failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }
}

impl<S, R, B, ResB> Service<Request<B>> for AuditService<S, R>
where
    S: Service<Request<AuditRequestBody<B>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: AuditRecorder,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResB: Send + 'static,
{
    type Response = Response<AuditResponseBody<ResB>>;
    type Error = S::Error;
    type Future = AuditFuture<ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The clone takes the place of the service that was polled ready, which handles
        // this request (tower's usual dance).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(handle(
            inner,
            self.recorder.clone(),
            Arc::clone(&self.shared),
            request,
        ))
    }
}

/// A request between its arrival and its response. Dropped before then (the connection went
/// away, or a panic), it still records the request, with status `attempt`.
struct Pending<R: AuditRecorder> {
    shared: Arc<Shared>,
    recorder: R,
    /// `None` once taken: the request has its ending and is no longer pending.
    facts: Option<RequestFacts>,
    context: AuditContext,
}

impl<R: AuditRecorder> Pending<R> {
    fn set_body(&mut self, body: CapturedBody) {
        if let Some(facts) = self.facts.as_mut() {
            facts.body = Some(body);
        }
    }

    /// The facts, for the event of a response; the request is no longer pending.
    fn take(&mut self) -> Option<RequestFacts> {
        self.facts.take()
    }

    /// Records the request as ended without a response (fire-and-forget).
    fn finish(&mut self, ending: Ending) {
        let Some(facts) = self.facts.take() else {
            return;
        };
        if self.context.skipped() {
            return;
        }
        let context = self.context.snapshot();
        let facts = facts.end();
        spawn_record(&self.shared, &self.recorder, move |cfg| {
            events::build(cfg, &facts, &context, &ending)
        });
    }
}

impl<R: AuditRecorder> Drop for Pending<R> {
    fn drop(&mut self) {
        self.finish(Ending::Cancelled {
            panicked: std::thread::panicking(),
        });
    }
}

async fn handle<S, R, B, ResB>(
    mut inner: S,
    recorder: R,
    shared: Arc<Shared>,
    request: Request<B>,
) -> Result<Response<AuditResponseBody<ResB>>, S::Error>
where
    S: Service<Request<AuditRequestBody<B>>, Response = Response<ResB>>,
    R: AuditRecorder,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = request.into_parts();
    let context = AuditContext::default();
    parts.extensions.insert(context.clone());
    let cfg = &shared.cfg;

    if cfg.is_excluded(parts.uri.path()) {
        let request = Request::from_parts(parts, AuditRequestBody::passthrough(body));
        let response = inner.call(request).await?;
        return Ok(response.map(AuditResponseBody::inner));
    }

    let facts = RequestFacts::capture(cfg, &parts);
    if facts.fail_closed && !recorder.ready() {
        let snapshot = context.snapshot();
        let facts = facts.end();
        spawn_record(&shared, &recorder, move |cfg| {
            events::build(cfg, &facts, &snapshot, &Ending::Refused)
        });
        return Ok(refusal(Refusal::BeforeHandler, None));
    }

    // Armed from here on: a request dropped while its body is read or its handler runs is
    // still recorded.
    let fail_closed = facts.fail_closed;
    let mut pending = Pending {
        shared: Arc::clone(&shared),
        recorder: recorder.clone(),
        facts: Some(facts),
        context: context.clone(),
    };
    let body = if cfg.captures_bodies() {
        match body::plan(&parts.headers, body.is_end_stream(), cfg.max_body_bytes) {
            BodyPlan::Empty => AuditRequestBody::passthrough(body),
            BodyPlan::Omit(note) => {
                pending.set_body(CapturedBody::Omitted(note));
                AuditRequestBody::passthrough(body)
            }
            BodyPlan::Read(declared) => {
                let (replay, captured) = body::read(body, declared, cfg.max_body_bytes).await;
                let content_type = header_text(&parts.headers, &CONTENT_TYPE, 256);
                pending.set_body(match captured {
                    Ok(bytes) => CapturedBody::Bytes {
                        bytes,
                        content_type,
                    },
                    Err(why) => CapturedBody::Omitted(body::omitted(
                        why,
                        content_type.as_deref(),
                        Some(declared as u64),
                    )),
                });
                replay
            }
        }
    } else {
        AuditRequestBody::passthrough(body)
    };

    let response = match inner.call(Request::from_parts(parts, body)).await {
        Ok(response) => response,
        Err(e) => {
            pending.finish(Ending::ServiceError);
            return Err(e);
        }
    };
    let Some(facts) = pending.take().filter(|_| !context.skipped()) else {
        return Ok(response.map(AuditResponseBody::inner));
    };
    let facts = facts.end();
    let ending = Ending::Response {
        status: response.status(),
        request_id: header_text(response.headers(), &REQUEST_ID, MAX_ID_CHARS),
        principal: response.extensions().get::<AuditPrincipal>().cloned(),
    };
    let snapshot = context.snapshot();
    if !fail_closed {
        spawn_record(&shared, &recorder, move |cfg| {
            events::build(cfg, &facts, &snapshot, &ending)
        });
        return Ok(response.map(AuditResponseBody::inner));
    }

    // Fail-closed: the response leaves only once its event is recorded. The record runs in
    // its own task when it can, so that a client hanging up does not cancel it halfway; a
    // record that times out is aborted, so a hung recorder does not pile up tasks.
    let (event, priority) = events::build(cfg, &facts, &snapshot, &ending);
    let record = recorder.record(event, priority);
    let failure = match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            let mut task = runtime.spawn(record);
            match tokio::time::timeout(cfg.record_timeout, &mut task).await {
                Ok(Ok(Ok(()))) => None,
                Ok(Ok(Err(e))) => Some(describe(&e)),
                Ok(Err(_)) => Some("the record task panicked".to_owned()),
                Err(_) => {
                    task.abort();
                    Some("timed out".to_owned())
                }
            }
        }
        Err(_) => record.await.err().map(|e| describe(&e)),
    };
    match failure {
        None => Ok(response.map(AuditResponseBody::inner)),
        Some(why) => {
            shared.note_failure(&why);
            let request_id = response.headers().get(REQUEST_ID).cloned();
            Ok(refusal(Refusal::AfterHandler, request_id))
        }
    }
}

/// When a fail-closed request is refused.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// The recorder was not ready: the handler did not run.
    BeforeHandler,
    /// The record failed: the handler ran, its response is withheld.
    AfterHandler,
}

/// The 503 of a fail-closed route whose audit event cannot be recorded.
fn refusal<B>(when: Refusal, request_id: Option<HeaderValue>) -> Response<AuditResponseBody<B>> {
    let message = match when {
        Refusal::BeforeHandler => {
            "the audit log cannot record this request right now, so it was not processed; \
             retry later"
        }
        Refusal::AfterHandler => {
            "the request was processed, but its audit record could not be written, so the \
             response is withheld; check before retrying a change"
        }
    };
    let body = serde_json::json!({"error": {"code": "audit_unavailable", "message": message}});
    let mut response = Response::new(AuditResponseBody::refusal(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(RETRY_AFTER, HeaderValue::from_static("5"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(id) = request_id {
        headers.insert(REQUEST_ID, id);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logging_is_rate_limited() {
        let logged: Vec<u64> = (1..=3000).filter(|n| worth_logging(*n)).collect();
        assert_eq!(
            logged,
            vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
        );
    }

    #[test]
    fn errors_are_described_without_server_details() {
        let rejection = crate::ServerRejection {
            status: 422,
            code: "invalid_event".into(),
            message: "bad".into(),
            details: vec![crate::FieldProblem {
                path: "/details/ssn-123-45-6789".into(),
                message: "too long".into(),
            }],
        };
        assert_eq!(
            describe(&ClientError::Rejected(rejection)),
            "HTTP 422 invalid_event"
        );
    }
}
