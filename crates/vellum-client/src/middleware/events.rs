//! Building the audit event of a request from what the layer saw: the request on entry
//! ([`RequestFacts`]), what the handler added ([`ContextState`]) and how it ended ([`Ending`]).

use super::config::{AuditLevel, Compiled, Preset};
use super::context::{AuditPrincipal, ContextState};
use super::mapping::{
    MAX_ID_CHARS, MAX_TEXT_CHARS, RouteInfo, allowed_headers, analyze_path, clip, fit,
    forwarded_for, header_text, parse_ip, query_object, verb,
};
use crate::{
    DataClassification, Event, HealthcareContext, Priority, SessionContext, Status,
    TechnicalContext,
};
use http::request::Parts;
use http::{Extensions, HeaderMap, Method, StatusCode};
use serde_json::{Map, Value};
use std::net::IpAddr;
use std::time::Instant;
use time::OffsetDateTime;

/// Longest path in `technicalContext.endpoint`.
const MAX_ENDPOINT_CHARS: usize = 2048;

/// Longest path quoted in `outcomeDescription`.
const MAX_OUTCOME_PATH_CHARS: usize = 512;

/// Longest user agent.
const MAX_USER_AGENT_CHARS: usize = 512;

/// Largest captured body kept in an event, as JSON text (the server's default event limit is
/// 64 KiB, and the rest of the event needs room too).
const MAX_RECORDED_BODY_BYTES: usize = 32 * 1024;

/// Largest event the layer sends; beyond it `details` is replaced by a note.
const MAX_EVENT_BYTES: usize = 60 * 1024;

/// What the layer knows about a request when it arrives (and, for `body`, once it is read).
#[derive(Debug, Clone)]
pub(crate) struct RequestFacts {
    pub(crate) started: Instant,
    /// When the request ended (response ready, refused, failed or dropped); the event may be
    /// built later, in a background task.
    pub(crate) ended: Option<Instant>,
    pub(crate) timestamp: OffsetDateTime,
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) route: RouteInfo,
    pub(crate) classification: DataClassification,
    pub(crate) fail_closed: bool,
    pub(crate) principal: Option<AuditPrincipal>,
    pub(crate) ip: Option<IpAddr>,
    pub(crate) user_agent: Option<String>,
    pub(crate) request_id: Option<String>,
    pub(crate) correlation_id: Option<String>,
    /// `details.query` (Comprehensive and above, when the request has a query).
    pub(crate) query: Option<Map<String, Value>>,
    /// `details.requestHeaders` (Detailed).
    pub(crate) headers: Option<Map<String, Value>>,
    /// `details.requestBody`.
    pub(crate) body: Option<CapturedBody>,
}

/// A request body as the layer got it. Parsing waits until the event is built, which for a
/// fail-open route happens in the background task, off the request's path.
#[derive(Debug, Clone)]
pub(crate) enum CapturedBody {
    /// The bytes the handler received.
    Bytes {
        bytes: bytes::Bytes,
        content_type: Option<String>,
    },
    /// Why the body is not recorded (`{"omitted": …}`).
    Omitted(Value),
}

impl CapturedBody {
    /// The body as recorded: parsed JSON, or a note saying why not.
    fn to_value(&self) -> Value {
        match self {
            CapturedBody::Bytes {
                bytes,
                content_type,
            } => super::body::parse(bytes).unwrap_or_else(|why| {
                super::body::omitted(why, content_type.as_deref(), Some(bytes.len() as u64))
            }),
            CapturedBody::Omitted(note) => note.clone(),
        }
    }
}

impl RequestFacts {
    /// Notes that the request ended now (for `durationMs`).
    pub(crate) fn end(mut self) -> Self {
        self.ended = Some(Instant::now());
        self
    }

    /// Captures what the event needs from the request head.
    pub(crate) fn capture(cfg: &Compiled, parts: &Parts) -> Self {
        let path = parts.uri.path();
        let template = matched_template(&parts.extensions);
        let route = analyze_path(path, template.as_deref());
        let classification = cfg.classification(path, &route);
        let redacting = cfg.redactor.is_some();
        let query = parts
            .uri
            .query()
            .filter(|_| cfg.level >= AuditLevel::Comprehensive && redacting)
            .map(query_object)
            .filter(|q| !q.is_empty());
        let headers = (cfg.level >= AuditLevel::Detailed && redacting)
            .then(|| allowed_headers(&parts.headers))
            .filter(|h| !h.is_empty());
        Self {
            started: Instant::now(),
            ended: None,
            timestamp: OffsetDateTime::now_utc(),
            method: parts.method.clone(),
            path: path.to_owned(),
            route,
            classification,
            fail_closed: cfg.is_fail_closed(path),
            principal: parts.extensions.get::<AuditPrincipal>().cloned(),
            ip: client_ip(cfg.trust_forwarded_for, &parts.headers, &parts.extensions),
            user_agent: header_text(
                &parts.headers,
                &http::header::USER_AGENT,
                MAX_USER_AGENT_CHARS,
            ),
            request_id: id_header(&parts.headers, "x-request-id"),
            correlation_id: id_header(&parts.headers, "x-correlation-id"),
            query,
            headers,
            body: None,
        }
    }
}

/// The route axum matched (`/patients/{id}`), when the `axum` feature is on.
#[cfg(feature = "axum")]
fn matched_template(extensions: &Extensions) -> Option<String> {
    extensions
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_owned())
}

#[cfg(not(feature = "axum"))]
fn matched_template(_: &Extensions) -> Option<String> {
    None
}

/// The peer address from axum's `ConnectInfo`, when the `axum` feature is on.
#[cfg(feature = "axum")]
fn connect_info(extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

#[cfg(not(feature = "axum"))]
fn connect_info(_: &Extensions) -> Option<IpAddr> {
    None
}

/// The client IP: `x-forwarded-for` when trusted, else the connection's peer address.
pub(crate) fn client_ip(
    trust_forwarded_for: bool,
    headers: &HeaderMap,
    extensions: &Extensions,
) -> Option<IpAddr> {
    trust_forwarded_for
        .then(|| forwarded_for(headers))
        .flatten()
        .or_else(|| connect_info(extensions))
        .or_else(|| extensions.get::<super::ClientAddr>().map(|a| a.0.ip()))
        .and_then(|ip| parse_ip(&ip.to_string()))
}

fn id_header(headers: &HeaderMap, name: &'static str) -> Option<String> {
    header_text(headers, &http::HeaderName::from_static(name), MAX_ID_CHARS)
}

/// How a request ended.
#[derive(Debug, Clone)]
pub(crate) enum Ending {
    /// The inner service answered.
    Response {
        status: StatusCode,
        /// The response's `x-request-id`.
        request_id: Option<String>,
        /// An [`AuditPrincipal`] in the response's extensions.
        principal: Option<AuditPrincipal>,
    },
    /// A fail-closed route was refused before its handler ran.
    Refused,
    /// The inner service failed without a response.
    ServiceError,
    /// The request was dropped before a response (client gone, or a panic).
    Cancelled {
        /// Whether the thread was panicking.
        panicked: bool,
    },
}

impl Ending {
    fn status_code(&self) -> Option<StatusCode> {
        match self {
            Ending::Response { status, .. } => Some(*status),
            Ending::Refused => Some(StatusCode::SERVICE_UNAVAILABLE),
            Ending::ServiceError | Ending::Cancelled { .. } => None,
        }
    }

    fn status(&self) -> Status {
        match (self, self.status_code()) {
            (Ending::Cancelled { .. }, _) => Status::Attempt,
            (_, Some(code)) if code.as_u16() < 400 => Status::Success,
            _ => Status::Failure,
        }
    }
}

/// The principal of an event: the one on entry, else the handler's, else the response's.
pub(crate) fn resolve_principal<'a>(
    on_entry: Option<&'a AuditPrincipal>,
    from_handler: Option<&'a AuditPrincipal>,
    in_response: Option<&'a AuditPrincipal>,
) -> Option<&'a AuditPrincipal> {
    on_entry.or(from_handler).or(in_response)
}

/// Builds the event and its priority.
pub(crate) fn build(
    cfg: &Compiled,
    facts: &RequestFacts,
    ctx: &ContextState,
    ending: &Ending,
) -> (Event, Priority) {
    let status = ending.status();
    let code = ending.status_code();
    let route = &facts.route;

    let action = match cfg.preset {
        Preset::Auth => format!(
            "{}.{}.{}",
            cfg.action_prefix,
            route.operation,
            status.as_str()
        ),
        Preset::Healthcare | Preset::Financial => format!(
            "{}.{}.{}",
            cfg.action_prefix,
            route.resource,
            verb(&facts.method)
        ),
    };
    let mut event = Event::new(action, status).timestamp(facts.timestamp);

    let (response_request_id, response_principal) = match ending {
        Ending::Response {
            request_id,
            principal,
            ..
        } => (request_id.as_ref(), principal.as_ref()),
        _ => (None, None),
    };
    let principal = resolve_principal(
        facts.principal.as_ref(),
        ctx.principal.as_ref(),
        response_principal,
    );
    event = match principal {
        Some(p) => event.principal(clip(&p.id, MAX_ID_CHARS), p.kind),
        None => event.principal_id("anonymous"),
    };
    let organization = principal
        .and_then(|p| p.organization_id.as_deref())
        .or(cfg.organization.as_deref());
    if let Some(org) = organization {
        event = event.organization(clip(org, MAX_ID_CHARS));
    }

    let target = match &ctx.target {
        Some((kind, id)) => Some((clip(kind, MAX_ID_CHARS), Some(clip(id, MAX_ID_CHARS)))),
        None if cfg.preset == Preset::Auth => None,
        None => route
            .target_type
            .clone()
            .map(|kind| (kind, route.target_id.clone())),
    };
    match target {
        Some((kind, Some(id))) => event = event.target(kind, id),
        Some((kind, None)) => event = event.target_type(kind),
        None => {}
    }

    let method = clip(facts.method.as_str(), 32);
    let request_id = facts
        .request_id
        .clone()
        .or_else(|| response_request_id.cloned());
    if cfg.level >= AuditLevel::Standard {
        let path = clip(&facts.path, MAX_OUTCOME_PATH_CHARS);
        let outcome = match ending {
            Ending::Response { status, .. } => format!("{method} {path} -> {}", status.as_u16()),
            Ending::Refused => {
                format!("{method} {path} -> 503 (refused: the audit log is unavailable)")
            }
            Ending::ServiceError => {
                format!("{method} {path} -> no response (the service failed)")
            }
            Ending::Cancelled { panicked: true } => {
                format!("{method} {path} -> no response (the handler panicked)")
            }
            Ending::Cancelled { panicked: false } => {
                format!("{method} {path} -> no response (the request was dropped)")
            }
        };
        event = event.outcome(outcome);
    }
    event = event.classification(facts.classification);

    if cfg.level >= AuditLevel::Standard {
        if let Some(correlation) = facts.correlation_id.clone().or(request_id.clone()) {
            event = event.correlation(correlation);
        }
        event = event.session(SessionContext {
            session_id: principal
                .and_then(|p| p.session_id.as_deref())
                .map(|s| clip(s, MAX_ID_CHARS)),
            ip_address: facts.ip.map(|ip| ip.to_string()),
            user_agent: facts.user_agent.clone(),
            ..Default::default()
        });
    }

    let patient = ctx.patient.clone().or_else(|| route.patient_id.clone());
    event = event.healthcare(HealthcareContext {
        patient_id: patient.map(|p| clip(&p, MAX_ID_CHARS)),
        emergency_access: ctx.emergency.as_ref().map(|_| true),
        clinical_justification: ctx.emergency.as_deref().map(|j| clip(j, MAX_TEXT_CHARS)),
        ..Default::default()
    });

    if cfg.level >= AuditLevel::Standard {
        event = event.technical(TechnicalContext {
            endpoint: Some(clip(&facts.path, MAX_ENDPOINT_CHARS)),
            http_method: Some(method),
            status_code: code.map(|c| c.as_u16()).filter(|c| (100..=599).contains(c)),
            duration_ms: Some(duration_ms(facts)),
            request_id,
        });
    }

    let mut details = Map::new();
    if let Some(query) = &facts.query {
        details.insert("query".into(), Value::Object(query.clone()));
    }
    if let Some(body) = &facts.body {
        details.insert("requestBody".into(), body.to_value());
    }
    if let Some(headers) = &facts.headers {
        details.insert("requestHeaders".into(), Value::Object(headers.clone()));
    }
    if matches!(ending, Ending::Refused) {
        details.insert("refusal".into(), Value::String("audit_unavailable".into()));
    }
    for (name, value) in &ctx.details {
        details.insert(name.clone(), value.clone());
    }
    if !details.is_empty() {
        event
            .as_map_mut()
            .insert("details".into(), Value::Object(details));
    }

    if let Some(redactor) = &cfg.redactor {
        redactor.redact(event.as_map_mut());
    }
    fit_event(&mut event);

    let priority = if ctx.emergency.is_some()
        || facts.fail_closed
        || matches!(code, Some(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN))
    {
        Priority::High
    } else {
        Priority::Normal
    };
    (event, priority)
}

fn duration_ms(facts: &RequestFacts) -> u64 {
    let ended = facts.ended.unwrap_or_else(Instant::now);
    let elapsed = ended.saturating_duration_since(facts.started);
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

/// Keeps `details` within the server's limits: nesting, string lengths, exact integers, and
/// the event's size (a body too large is replaced by a note, then `details` as a whole).
fn fit_event(event: &mut Event) {
    let map = event.as_map_mut();
    let Some(details) = map.get_mut("details") else {
        return;
    };
    fit(details, 1);
    if let Some(body) = details.get_mut("requestBody") {
        let len = encoded_len(body);
        if len > MAX_RECORDED_BODY_BYTES {
            *body = super::body::omitted("too large for an audit event", None, Some(len as u64));
        }
    }
    if encoded_len(&*map) > MAX_EVENT_BYTES {
        map.insert(
            "details".into(),
            serde_json::json!({"omitted": "details too large for an audit event"}),
        );
    }
}

/// The size of a value's JSON text, counted without building it.
fn encoded_len<T: serde::Serialize + ?Sized>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::config::AuditConfig;
    use super::*;
    use crate::PrincipalType;
    use serde_json::json;

    fn facts(cfg: &Compiled, method: &str, uri: &str, headers: &[(&str, &str)]) -> RequestFacts {
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let (parts, ()) = builder.body(()).unwrap().into_parts();
        RequestFacts::capture(cfg, &parts)
    }

    fn ok(status: u16) -> Ending {
        Ending::Response {
            status: StatusCode::from_u16(status).unwrap(),
            request_id: None,
            principal: None,
        }
    }

    fn event_of(cfg: &Compiled, facts: &RequestFacts, ending: &Ending) -> (Value, Priority) {
        let (event, priority) = build(cfg, facts, &ContextState::default(), ending);
        (event.into_json(), priority)
    }

    #[test]
    fn minimal_level_has_only_who_what_which() {
        let cfg = Compiled::new(
            AuditConfig::healthcare()
                .level(AuditLevel::Minimal)
                .organization("clinic-7"),
        );
        let f = facts(
            &cfg,
            "GET",
            "/patients/p-1/observations?code=x",
            &[("user-agent", "curl"), ("x-request-id", "r-1")],
        );
        let (mut e, priority) = event_of(&cfg, &f, &ok(200));
        assert!(e["timestamp"].is_string());
        e.as_object_mut().unwrap().remove("timestamp");
        assert_eq!(
            e,
            json!({
                "action": "api.observation.read",
                "status": "success",
                "principalId": "anonymous",
                "organizationId": "clinic-7",
                "targetResourceType": "Observation",
                "dataClassification": "PHI",
                "healthcareContext": {"patientId": "p-1"},
            })
        );
        assert_eq!(priority, Priority::Normal);
    }

    #[test]
    fn standard_level_adds_session_technical_correlation_outcome() {
        let cfg = Compiled::new(AuditConfig::healthcare());
        let mut f = facts(
            &cfg,
            "PUT",
            "/patients/7?secret=1",
            &[("user-agent", "app/1.0"), ("x-request-id", "r-1")],
        );
        f.ip = "10.1.2.3".parse().ok();
        let (e, _) = event_of(&cfg, &f, &ok(204));
        assert_eq!(e["action"], "api.patient.update");
        assert_eq!(e["targetResourceType"], "Patient");
        assert_eq!(e["targetResourceId"], "7");
        assert_eq!(e["outcomeDescription"], "PUT /patients/7 -> 204");
        assert_eq!(e["correlationId"], "r-1");
        assert_eq!(
            e["sessionContext"],
            json!({"ipAddress": "10.1.2.3", "userAgent": "app/1.0"})
        );
        assert_eq!(e["technicalContext"]["endpoint"], "/patients/7");
        assert_eq!(e["technicalContext"]["httpMethod"], "PUT");
        assert_eq!(e["technicalContext"]["statusCode"], 204);
        assert_eq!(e["technicalContext"]["requestId"], "r-1");
        assert!(e["technicalContext"]["durationMs"].is_u64());
        assert!(e.get("details").is_none(), "no query below Comprehensive");
        assert!(!e.to_string().contains("secret"));

        let f = facts(
            &cfg,
            "GET",
            "/x",
            &[("x-correlation-id", "c-9"), ("x-request-id", "r-2")],
        );
        let (e, _) = event_of(&cfg, &f, &ok(200));
        assert_eq!(e["correlationId"], "c-9");
        // The response's request id is used when the request had none.
        let f = facts(&cfg, "GET", "/x", &[]);
        let ending = Ending::Response {
            status: StatusCode::OK,
            request_id: Some("from-response".into()),
            principal: None,
        };
        let (e, _) = event_of(&cfg, &f, &ending);
        assert_eq!(e["technicalContext"]["requestId"], "from-response");
        assert_eq!(e["correlationId"], "from-response");
    }

    #[test]
    fn comprehensive_and_detailed_levels() {
        let cfg = Compiled::new(AuditConfig::healthcare().level(AuditLevel::Detailed));
        let f = facts(
            &cfg,
            "GET",
            "/patients?name=Ana&ssn=123-45-6789&password=hunter2&tag=a&tag=b",
            &[
                ("authorization", "Bearer abc"),
                ("cookie", "sid=abc"),
                ("accept", "application/json"),
            ],
        );
        let (e, _) = event_of(&cfg, &f, &ok(200));
        assert_eq!(
            e["details"]["query"],
            json!({"name": "Ana", "ssn": "[REDACTED]", "password": "[REDACTED]",
                   "tag": ["a", "b"]})
        );
        assert_eq!(
            e["details"]["requestHeaders"],
            json!({"accept": "application/json"})
        );
        assert!(!e.to_string().contains("abc"));
    }

    #[test]
    fn bodies_are_redacted_per_preset() {
        let body = json!({
            "name": "Ana",
            "ssn": "123-45-6789",
            "password": "hunter2",
            "diagnosis": "flu",
            "cardNumber": "4111 1111 1111 1111",
            "cvv": "123",
            "iban": "DE89370400440532013000",
            "note": "card 4111111111111111 on file",
        });
        let healthcare = Compiled::new(AuditConfig::healthcare().level(AuditLevel::Comprehensive));
        let mut f = facts(&healthcare, "POST", "/patients", &[]);
        f.body = Some(CapturedBody::Bytes {
            bytes: serde_json::to_vec(&body).unwrap().into(),
            content_type: Some("application/json".into()),
        });
        let (e, _) = event_of(&healthcare, &f, &ok(201));
        let b = &e["details"]["requestBody"];
        assert_eq!(b["name"], "Ana");
        for field in ["ssn", "password", "diagnosis", "cardNumber", "cvv", "iban"] {
            assert_eq!(b[field], "[REDACTED]", "healthcare {field}");
        }
        assert!(!b["note"].as_str().unwrap().contains("4111111111111111"));

        let financial = Compiled::new(AuditConfig::financial().level(AuditLevel::Comprehensive));
        let mut f = facts(&financial, "POST", "/payments", &[]);
        f.body = Some(CapturedBody::Bytes {
            bytes: serde_json::to_vec(&body).unwrap().into(),
            content_type: None,
        });
        let (e, _) = event_of(&financial, &f, &ok(201));
        let b = &e["details"]["requestBody"];
        for field in ["password", "cardNumber", "cvv", "iban"] {
            assert_eq!(b[field], "[REDACTED]", "financial {field}");
        }
        assert_eq!(b["diagnosis"], "flu", "not a financial field");
        assert_eq!(e["dataClassification"], "CONFIDENTIAL");
        assert_eq!(e["action"], "api.payment.create");
    }

    #[test]
    fn auth_preset_names_operations_and_redacts_credentials_in_queries() {
        let cfg = Compiled::new(AuditConfig::auth().level(AuditLevel::Detailed));
        let f = facts(&cfg, "POST", "/login?user=ana&token=abc123", &[]);
        let (e, priority) = event_of(&cfg, &f, &ok(401));
        assert_eq!(e["action"], "auth.login.failure");
        assert_eq!(e["status"], "failure");
        assert_eq!(e["dataClassification"], "INTERNAL");
        assert_eq!(
            e["details"]["query"],
            json!({"user": "ana", "token": "[REDACTED]"})
        );
        assert!(e.get("targetResourceType").is_none());
        assert_eq!(priority, Priority::High);
        let f = facts(&cfg, "POST", "/oauth/token", &[]);
        assert_eq!(
            event_of(&cfg, &f, &ok(200)).0["action"],
            "auth.token.success"
        );
    }

    #[test]
    fn principal_resolution_order() {
        let entry = AuditPrincipal::new("edge", PrincipalType::User).organization("org-edge");
        let handler = AuditPrincipal::new("handler", PrincipalType::Service);
        let response = AuditPrincipal::new("response", PrincipalType::Admin);
        assert_eq!(
            resolve_principal(Some(&entry), Some(&handler), Some(&response)),
            Some(&entry)
        );
        assert_eq!(
            resolve_principal(None, Some(&handler), Some(&response)),
            Some(&handler)
        );
        assert_eq!(
            resolve_principal(None, None, Some(&response)),
            Some(&response)
        );
        assert_eq!(resolve_principal(None, None, None), None);

        let cfg = Compiled::new(AuditConfig::healthcare().organization("default-org"));
        let mut f = facts(&cfg, "GET", "/x", &[]);
        let ending = Ending::Response {
            status: StatusCode::OK,
            request_id: None,
            principal: Some(response),
        };
        let (e, _) = event_of(&cfg, &f, &ending);
        assert_eq!(e["principalId"], "response");
        assert_eq!(e["principalType"], "admin");
        assert_eq!(e["organizationId"], "default-org");
        f.principal = Some(entry.session("s-1"));
        let (e, _) = event_of(&cfg, &f, &ending);
        assert_eq!(e["principalId"], "edge");
        assert_eq!(e["organizationId"], "org-edge");
        assert_eq!(e["sessionContext"]["sessionId"], "s-1");
    }

    #[test]
    fn context_additions_and_priority() {
        let cfg = Compiled::new(AuditConfig::healthcare());
        let f = facts(&cfg, "GET", "/search", &[]);
        let ctx = ContextState {
            patient: Some("p-9".into()),
            target: Some(("Patient".into(), "p-9".into())),
            emergency: Some("unconscious in ER".into()),
            details: [("reason".to_owned(), json!("break-glass"))]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let (event, priority) = build(&cfg, &f, &ctx, &ok(200));
        let e = event.into_json();
        assert_eq!(e["targetResourceType"], "Patient");
        assert_eq!(e["targetResourceId"], "p-9");
        assert_eq!(
            e["healthcareContext"],
            json!({"patientId": "p-9", "emergencyAccess": true,
                   "clinicalJustification": "unconscious in ER"})
        );
        assert_eq!(e["details"]["reason"], "break-glass");
        assert_eq!(priority, Priority::High);

        for (status, high) in [(200, false), (401, true), (403, true), (404, false)] {
            assert_eq!(
                event_of(&cfg, &f, &ok(status)).1 == Priority::High,
                high,
                "{status}"
            );
        }
        let closed = Compiled::new(AuditConfig::healthcare().fail_closed("/search"));
        let f = facts(&closed, "GET", "/search", &[]);
        assert_eq!(event_of(&closed, &f, &ok(200)).1, Priority::High);
    }

    #[test]
    fn endings_without_a_response() {
        let cfg = Compiled::new(AuditConfig::healthcare());
        let f = facts(&cfg, "GET", "/patients/1", &[]);
        let (e, _) = event_of(&cfg, &f, &Ending::Refused);
        assert_eq!(e["status"], "failure");
        assert_eq!(e["technicalContext"]["statusCode"], 503);
        assert_eq!(e["details"]["refusal"], "audit_unavailable");
        let (e, _) = event_of(&cfg, &f, &Ending::Cancelled { panicked: false });
        assert_eq!(e["status"], "attempt");
        assert!(e["technicalContext"].get("statusCode").is_none());
        let (e, _) = event_of(&cfg, &f, &Ending::ServiceError);
        assert_eq!(e["status"], "failure");
        // A status code the server would refuse is left out.
        let (e, _) = event_of(&cfg, &f, &ok(999));
        assert!(e["technicalContext"].get("statusCode").is_none());
        assert_eq!(e["status"], "failure");
    }

    #[test]
    fn oversized_parts_are_replaced_by_notes() {
        let cfg = Compiled::new(AuditConfig::healthcare().level(AuditLevel::Comprehensive));
        let mut f = facts(&cfg, "POST", "/notes", &[]);
        let big: Vec<String> = (0..2000)
            .map(|i| format!("line {i} of a long note"))
            .collect();
        f.body = Some(CapturedBody::Bytes {
            bytes: serde_json::to_vec(&json!({ "lines": big })).unwrap().into(),
            content_type: None,
        });
        let (e, _) = event_of(&cfg, &f, &ok(201));
        assert_eq!(
            e["details"]["requestBody"]["omitted"],
            "too large for an audit event"
        );
        let ctx = ContextState {
            details: (0..40)
                .map(|i| (format!("k{i}"), json!("x".repeat(3000))))
                .collect(),
            ..Default::default()
        };
        let (event, _) = build(&cfg, &f, &ctx, &ok(201));
        let e = event.into_json();
        assert_eq!(
            e["details"]["omitted"],
            "details too large for an audit event"
        );
        assert!(e.to_string().len() < MAX_EVENT_BYTES);
    }

    #[test]
    fn captured_bytes_are_parsed_when_the_event_is_built() {
        let cfg = Compiled::new(AuditConfig::healthcare().level(AuditLevel::Comprehensive));
        let mut f = facts(&cfg, "POST", "/patients", &[]);
        f.body = Some(CapturedBody::Bytes {
            bytes: bytes::Bytes::from_static(b"{\"a\":\"\xff\"}"),
            content_type: Some("application/json".into()),
        });
        // The duration runs to the end of the request, not to when the event is built.
        let start = Instant::now();
        f.started = start;
        f.ended = start.checked_add(std::time::Duration::from_millis(1234));
        let (e, _) = event_of(&cfg, &f, &ok(201));
        assert_eq!(
            e["details"]["requestBody"],
            json!({"omitted": "not valid UTF-8", "contentType": "application/json", "bytes": 9})
        );
        assert_eq!(e["technicalContext"]["durationMs"], 1234);
    }

    #[test]
    fn hostile_heads_do_not_panic() {
        let cfg = Compiled::new(
            AuditConfig::healthcare()
                .level(AuditLevel::Detailed)
                .trust_forwarded_for(true),
        );
        let mut builder = http::Request::builder()
            .method(Method::from_bytes(b"X-WEIRD").unwrap())
            .uri(format!("/{}?{}", "a%ff/".repeat(5000), "q=%".repeat(5000)));
        builder = builder
            .header(
                "user-agent",
                http::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
            )
            .header(
                "x-forwarded-for",
                http::HeaderValue::from_bytes(b"\xff").unwrap(),
            )
            .header("x-request-id", "r".repeat(100_000));
        let (parts, ()) = builder.body(()).unwrap().into_parts();
        let f = RequestFacts::capture(&cfg, &parts);
        let (e, _) = event_of(&cfg, &f, &ok(200));
        assert_eq!(e["action"], "api.a.xweird");
        assert_eq!(
            e["technicalContext"]["requestId"].as_str().map(str::len),
            Some(MAX_ID_CHARS)
        );
        assert!(e.to_string().len() < MAX_EVENT_BYTES);
    }
}
