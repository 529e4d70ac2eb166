//! HTTP routes of SPEC §5 implemented so far: ingest, search, lookup, health, metrics,
//! OpenAPI.

use crate::AppState;
use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::ingest::{Receipt, Submission, SubmitError};
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use utoipa::{IntoParams, ToSchema};
use vellum_core::FieldError;
use vellum_core::model::{DataClassification, Status};
use vellum_core::time_fmt::{parse_rfc3339, unix_micros};
use vellum_store::{SearchQuery, StoredEvent};

/// Extractor: the authenticated caller (401 otherwise).
pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let hash = crate::auth::Authenticator::bearer_hash(header)?;
        let principal = match state.auth.cached(&hash) {
            Some(principal) => principal,
            None => {
                // Cache miss: the store lookup is blocking I/O.
                let auth = state.auth.clone();
                tokio::task::spawn_blocking(move || auth.lookup(&hash))
                    .await
                    .map_err(|e| ApiError::internal(&e))??
            }
        };
        if let Some(limiter) = &state.rate_limiter {
            limiter.check(&principal.key_id)?;
        }
        Ok(Auth(principal))
    }
}

/// Query parameters as a map, with errors in the SPEC §5 JSON format: a malformed query string
/// or a parameter given twice is a 400 naming it (axum's own rejection is plain text, and a
/// repeated filter silently keeping one value would make a search mean something else).
pub struct Params(pub BTreeMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(pairs): Query<Vec<(String, String)>> = Query::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request("", format!("malformed query string: {e}")))?;
        let mut map = BTreeMap::new();
        for (name, value) in pairs {
            if map.contains_key(&name) {
                return Err(ApiError::bad_request(&name, "is given more than once"));
            }
            map.insert(name, value);
        }
        Ok(Params(map))
    }
}

pub(crate) fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Query parameters of `POST /v1/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct IngestParams {
    /// `committed` (the default in embedded mode: the answer comes once the event is durable)
    /// or `checkpoint` (the answer comes once a signed checkpoint covers the event, and each
    /// receipt carries that checkpoint and the event's inclusion proof).
    pub wait: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

/// Result of a batch ingest.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchReceipt {
    /// Accepted events, with their index in the request.
    pub accepted: Vec<AcceptedEntry>,
    /// Refused events, with every problem found.
    pub rejected: Vec<RejectedEntry>,
}

/// One accepted event of a batch.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AcceptedEntry {
    /// Position in the request.
    pub index: usize,
    /// Its receipt.
    #[serde(flatten)]
    pub receipt: Receipt,
    /// With `?wait=checkpoint`: the covering checkpoint and the inclusion proof.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(value_type = Option<Object>)]
    pub proof: Option<crate::proofs::InclusionProof>,
}

/// A single event's receipt with `?wait=checkpoint`.
#[derive(Debug, Serialize)]
struct ReceiptWithProof {
    #[serde(flatten)]
    receipt: Receipt,
    proof: crate::proofs::InclusionProof,
}

/// One refused event of a batch.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RejectedEntry {
    /// Position in the request.
    pub index: usize,
    /// Every problem, by JSON pointer within the event (`[{path, message}]`).
    #[schema(value_type = Vec<Object>)]
    pub errors: Vec<FieldError>,
}

async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the request body exceeds {limit} bytes"),
        )),
        Err(e) => Err(ApiError::bad_request(
            "",
            format!("could not read the body: {e}"),
        )),
    }
}

fn valid_idempotency_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// Accepts one event, `{"events":[…]}` or NDJSON, and answers once they are durable.
#[utoipa::path(
    post, path = "/v1/events", tag = "events",
    params(IngestParams),
    request_body(content = Object, description = "One event, {\"events\":[…]}, or NDJSON (application/x-ndjson)"),
    responses(
        (status = 201, description = "Durable; one receipt, or accepted[]/rejected[] for a batch", body = Receipt),
        (status = 400, description = "Malformed JSON"), (status = 401), (status = 403),
        (status = 413, description = "Too large"), (status = 422, description = "Invalid event"),
        (status = 503, description = "Overloaded; see Retry-After"),
    ),
    security(("bearer" = []))
)]
pub async fn post_events(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Params(params): Params,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    principal.require(Role::Ingest)?;
    if let Some(name) = params
        .keys()
        .find(|k| k.as_str() != "wait" && k.as_str() != "priority")
    {
        return Err(ApiError::bad_request(name, "unknown parameter"));
    }
    let lane = match params.get("priority").map(String::as_str) {
        None | Some("normal") => vellum_queue::Lane::Normal,
        Some("high") => vellum_queue::Lane::High,
        Some(_) => {
            return Err(ApiError::bad_request(
                "priority",
                "must be `high` or `normal`",
            ));
        }
    };
    // Scale-out: without `?wait=`, answer 202 as soon as the queue holds the events.
    let queue_only = !params.contains_key("wait") && state.ingest.queue().is_some();
    let wait_checkpoint = match params.get("wait").map(String::as_str) {
        None | Some("committed") => false,
        Some("checkpoint") => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "wait",
                "must be `committed` or `checkpoint`",
            ));
        }
    };
    let header_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if valid_idempotency_key(k) => Some(k.to_owned()),
            _ => {
                return Err(ApiError::bad_request(
                    "Idempotency-Key",
                    "must be 1-255 visible ASCII characters",
                ));
            }
        },
    };
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-ndjson"));
    let bytes = read_body(body, state.config.max_request_bytes).await?;
    let max_event = state.pipeline.validation().max_event_bytes;

    // Split the body into raw events (keeping each one's exact length).
    let (raw_events, single): (Vec<&str>, bool) = if ndjson {
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| ApiError::bad_request("", "the body is not UTF-8"))?;
        (
            text.lines().filter(|l| !l.trim().is_empty()).collect(),
            false,
        )
    } else if let Ok(batch) = serde_json::from_slice::<BatchBody<'_>>(&bytes) {
        (batch.events.iter().map(|r| r.get()).collect(), false)
    } else {
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| ApiError::bad_request("", "the body is not UTF-8"))?;
        if single_too_large(text.len(), max_event) {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the event is {} bytes; the limit is {max_event}",
                    text.len()
                ),
            ));
        }
        (vec![text], true)
    };
    if raw_events.is_empty() {
        return Err(ApiError::bad_request(
            "/events",
            "must contain at least one event",
        ));
    }

    let now = time::OffsetDateTime::now_utc();
    let mut submissions = Vec::with_capacity(raw_events.len());
    let mut indices = Vec::with_capacity(raw_events.len());
    let mut rejected = Vec::new();
    for (index, raw) in raw_events.iter().enumerate() {
        match prepare_one(&state, &principal, raw, now) {
            Ok(event) => {
                let idempotency_key = event
                    .idempotency_key
                    .as_ref()
                    .map(|k| format!("{}:e:{k}", principal.key_id))
                    .or_else(|| {
                        header_key
                            .as_ref()
                            .map(|k| format!("{}:h:{k}#{index}", principal.key_id))
                    });
                submissions.push(Submission {
                    event,
                    idempotency_key,
                    id: None,
                });
                indices.push(index);
            }
            Err(errors) => {
                if single {
                    if raw.len() > max_event && errors.iter().any(|e| e.path.is_empty()) {
                        return Err(ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "too_large",
                            format!("the event is {} bytes; the limit is {max_event}", raw.len()),
                        ));
                    }
                    return Err(match errors.first() {
                        Some(e) if e.message.starts_with("malformed JSON") => {
                            ApiError::bad_request("", e.message.clone())
                        }
                        _ => ApiError::invalid(errors),
                    });
                }
                rejected.push(RejectedEntry { index, errors });
            }
        }
    }
    if let (true, Some(queue)) = (queue_only, state.ingest.queue()) {
        return queued_response(queue, &submissions, &indices, rejected, single, lane).await;
    }
    let receipts = match state.ingest.queue() {
        Some(queue) => committed(
            queue
                .submit_and_wait_in(submissions, wait_checkpoint, None, lane)
                .await,
        )?,
        None => submit_with(&state, submissions, wait_checkpoint).await?,
    };
    let mut proofs = if wait_checkpoint {
        crate::proofs::proofs_for_receipts(&state, &receipts)
            .await?
            .into_iter()
            .map(Some)
            .collect()
    } else {
        vec![None; receipts.len()]
    };
    if single {
        let receipt = receipts
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::internal(&"no receipt for an accepted event"))?;
        let body = match proofs.pop().flatten() {
            None => serde_json::to_string(&receipt),
            Some(proof) => serde_json::to_string(&ReceiptWithProof { receipt, proof }),
        };
        return Ok(json_response(
            StatusCode::CREATED,
            body.map_err(|e| ApiError::internal(&e))?,
        ));
    }
    let accepted: Vec<AcceptedEntry> = indices
        .into_iter()
        .zip(receipts)
        .zip(proofs)
        .map(|((index, receipt), proof)| AcceptedEntry {
            index,
            receipt,
            proof,
        })
        .collect();
    if accepted.is_empty() {
        let details = rejected
            .iter()
            .flat_map(|r| {
                r.errors.iter().map(move |e| {
                    FieldError::new(format!("/events/{}{}", r.index, e.path), e.message.clone())
                })
            })
            .collect();
        return Err(ApiError::invalid(details));
    }
    let body = serde_json::to_string(&BatchReceipt { accepted, rejected })
        .map_err(|e| ApiError::internal(&e))?;
    Ok(json_response(StatusCode::CREATED, body))
}

/// Scale-out answer without `?wait=`: 202 with the ids the events will have.
async fn queued_response(
    queue: &crate::scaleout::QueueIngest,
    submissions: &[Submission],
    indices: &[usize],
    rejected: Vec<RejectedEntry>,
    single: bool,
    lane: vellum_queue::Lane,
) -> Result<Response, ApiError> {
    if submissions.is_empty() {
        let details = rejected
            .iter()
            .flat_map(|r| {
                r.errors.iter().map(move |e| {
                    FieldError::new(format!("/events/{}{}", r.index, e.path), e.message.clone())
                })
            })
            .collect();
        return Err(ApiError::invalid(details));
    }
    let queued = queue
        .enqueue(submissions, lane, false, false)
        .await
        .map_err(submit_error)?;
    let body = if single {
        let (receipt, _) = queued
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::internal(&"no receipt for a queued event"))?;
        serde_json::to_string(&receipt)
    } else {
        let accepted: Vec<Value> = indices
            .iter()
            .zip(queued)
            .map(|(index, (receipt, _))| {
                json!({"index": index, "id": receipt.id, "logId": receipt.log_id, "status": receipt.status})
            })
            .collect();
        serde_json::to_string(&json!({"accepted": accepted, "rejected": rejected}))
    };
    Ok(json_response(
        StatusCode::ACCEPTED,
        body.map_err(|e| ApiError::internal(&e))?,
    ))
}

/// A writer's (or the queue's) answer as the API's.
fn committed(
    result: Result<Result<Vec<Receipt>, crate::ingest::CommitError>, SubmitError>,
) -> Result<Vec<Receipt>, ApiError> {
    match result {
        Ok(Ok(receipts)) => Ok(receipts),
        Ok(Err(commit)) => Err(ApiError::overloaded(format!(
            "the events could not be stored ({commit}); nothing was recorded, retry"
        ))),
        Err(e) => Err(submit_error(e)),
    }
}

fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::Full => {
            ApiError::overloaded("the ingest queue is full; retry after the indicated delay")
        }
        SubmitError::Stopped => ApiError::overloaded("the server is shutting down"),
        SubmitError::Unavailable {
            reason,
            retry_after,
        } => ApiError::unavailable(
            format!("the ingest queue is unavailable ({reason}); nothing was queued, retry"),
            retry_after,
        ),
    }
}

fn single_too_large(len: usize, max: usize) -> bool {
    len > max
}

/// Parses, scopes and prepares one raw event.
fn prepare_one(
    state: &AppState,
    principal: &Principal,
    raw: &str,
    now: time::OffsetDateTime,
) -> Result<vellum_core::pipeline::PreparedEvent, Vec<FieldError>> {
    let mut value: Value = serde_json::from_str(raw)
        .map_err(|e| vec![FieldError::new("", format!("malformed JSON: {e}"))])?;
    if let (Some(org), Value::Object(map)) = (&principal.organization_id, &mut value) {
        match map.get("organizationId") {
            None => {
                map.insert("organizationId".into(), Value::String(org.clone()));
            }
            Some(Value::String(given)) if given == org => {}
            Some(_) => {
                return Err(vec![FieldError::new(
                    "/organizationId",
                    format!("this API key may only write events of organization {org:?}"),
                )]);
            }
        }
    }
    let mut seal = crate::subjects::sealer(&state.subjects, &state.config.personal_fields);
    state
        .pipeline
        .prepare_sealed(value, raw.len(), now, &mut seal)
}

/// Hands prepared events to the writer and waits until they are durable.
pub(crate) async fn submit(
    state: &AppState,
    submissions: Vec<Submission>,
) -> Result<Vec<Receipt>, ApiError> {
    submit_with(state, submissions, false).await
}

/// [`submit`], optionally with a checkpoint in the same commit.
async fn submit_with(
    state: &AppState,
    submissions: Vec<Submission>,
    want_checkpoint: bool,
) -> Result<Vec<Receipt>, ApiError> {
    committed(
        state
            .ingest
            .submit_with(submissions, want_checkpoint, None)
            .await,
    )
}

/// Records that `principal` read the audit log (SPEC §6), durably, before the data is
/// returned: a read that cannot be audited is refused.
pub(crate) async fn record_read(
    state: &AppState,
    principal: &Principal,
    peer: SocketAddr,
    endpoint: &str,
    target_id: Option<&str>,
    details: Value,
) -> Result<(), ApiError> {
    record_access(
        state, principal, peer, endpoint, target_id, details, "success",
    )
    .await
}

/// Checks that `principal` has `role` for a read of the audit log; a refused attempt is itself
/// recorded (an `audit.read` event with status `failure`, severity `high`) before the 403 goes
/// out, so that probing the log with an under-privileged key leaves a trace.
pub(crate) async fn require_read(
    state: &AppState,
    principal: &Principal,
    peer: SocketAddr,
    endpoint: &str,
    role: Role,
) -> Result<(), ApiError> {
    let Err(denied) = principal.require(role) else {
        return Ok(());
    };
    record_access(
        state,
        principal,
        peer,
        endpoint,
        None,
        json!({"denied": format!("{role:?} role required")}),
        "failure",
    )
    .await?;
    Err(denied)
}

async fn record_access(
    state: &AppState,
    principal: &Principal,
    peer: SocketAddr,
    endpoint: &str,
    target_id: Option<&str>,
    details: Value,
    status: &str,
) -> Result<(), ApiError> {
    let mut event = json!({
        "action": "audit.read",
        "status": status,
        "principalId": principal.key_id,
        "principalType": "service",
        "targetResourceType": "AuditEvent",
        "dataClassification": "CONFIDENTIAL",
        "sessionContext": {"ipAddress": peer.ip().to_string()},
        "technicalContext": {"endpoint": endpoint, "statusCode": if status == "success" { 200 } else { 403 }},
        "details": details,
    });
    if status != "success" {
        event["severity"] = Value::String("high".into());
    }
    if let Some(org) = &principal.organization_id {
        event["organizationId"] = Value::String(org.clone());
    }
    if let Some(id) = target_id {
        event["targetResourceId"] = Value::String(id.to_owned());
    }
    let prepared = state
        .pipeline
        .prepare(event, 0, time::OffsetDateTime::now_utc())
        .map_err(|errors| ApiError::internal(&format!("audit.read event invalid: {errors:?}")))?;
    submit(
        state,
        vec![Submission {
            event: prepared,
            idempotency_key: None,
            id: None,
        }],
    )
    .await
    .map(|_| ())
}

/// The search filters, as query parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documents the parameters for OpenAPI; parsing is strict and by hand
pub struct SearchParams {
    principal_id: Option<String>,
    organization_id: Option<String>,
    /// Exact, or prefix with a trailing `*`.
    action: Option<String>,
    status: Option<String>,
    data_classification: Option<String>,
    target_resource_type: Option<String>,
    target_resource_id: Option<String>,
    session_id: Option<String>,
    ip_address: Option<String>,
    patient_id: Option<String>,
    data_subject_id: Option<String>,
    correlation_id: Option<String>,
    /// RFC 3339, inclusive.
    from: Option<String>,
    /// RFC 3339, exclusive.
    to: Option<String>,
    /// Full text.
    q: Option<String>,
    /// 1..=1000, default 100.
    limit: Option<usize>,
    cursor: Option<String>,
}

/// A `from`/`to` query parameter (RFC 3339) as Unix microseconds; a 400 naming it otherwise.
pub(crate) fn time_param(name: &str, value: &str) -> Result<i64, ApiError> {
    parse_rfc3339(value).map(unix_micros).map_err(|_| {
        ApiError::bad_request(
            name,
            "must be an RFC 3339 timestamp, e.g. 2026-11-23T09:00:00Z",
        )
    })
}

/// A `limit` query parameter: 1..=1000.
pub(crate) fn limit_param(value: &str) -> Result<usize, ApiError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|l| (1..=1000).contains(l))
        .ok_or_else(|| ApiError::bad_request("limit", "must be an integer from 1 to 1000"))
}

/// Parses search parameters strictly: unknown names and bad values are 400s naming them.
pub fn parse_search(params: &BTreeMap<String, String>) -> Result<SearchQuery, ApiError> {
    let mut q = SearchQuery {
        limit: 100,
        ..SearchQuery::default()
    };
    for (name, value) in params {
        let v = Some(value.clone());
        match name.as_str() {
            "principalId" => q.principal_id = v,
            "organizationId" => q.organization_id = v,
            "action" => q.action = v,
            "status" => {
                if Status::parse(value).is_none() {
                    return Err(ApiError::bad_request(
                        "status",
                        format!("must be one of {}", Status::ALL.join(", ")),
                    ));
                }
                q.status = v;
            }
            "dataClassification" => {
                if DataClassification::parse(value).is_none() {
                    return Err(ApiError::bad_request(
                        "dataClassification",
                        format!("must be one of {}", DataClassification::ALL.join(", ")),
                    ));
                }
                q.data_classification = v;
            }
            "targetResourceType" => q.target_resource_type = v,
            "targetResourceId" => q.target_resource_id = v,
            "sessionId" => q.session_id = v,
            "ipAddress" => q.ip_address = v,
            "patientId" => q.patient_id = v,
            "dataSubjectId" => q.data_subject_id = v,
            "correlationId" => q.correlation_id = v,
            "from" => q.from_micros = Some(time_param(name, value)?),
            "to" => q.to_micros = Some(time_param(name, value)?),
            "q" => q.q = v,
            "limit" => q.limit = limit_param(value)?,
            "cursor" => q.cursor = v,
            other => {
                return Err(ApiError::bad_request(
                    other,
                    "is not a search parameter (see GET /openapi.json)",
                ));
            }
        }
    }
    Ok(q)
}

/// Scopes a query to the caller's organization: an org-bound key never sees another's events.
pub(crate) fn scope_query(principal: &Principal, query: &mut SearchQuery) -> Result<(), ApiError> {
    if let Some(org) = &principal.organization_id {
        match &query.organization_id {
            Some(asked) if asked != org => {
                return Err(ApiError::forbidden(format!(
                    "this API key may only read organization {org:?}"
                )));
            }
            _ => query.organization_id = Some(org.clone()),
        }
    }
    Ok(())
}

/// Searches events, newest first.
#[utoipa::path(
    get, path = "/v1/events", tag = "events", params(SearchParams),
    responses((status = 200, description = "{events, nextCursor}"), (status = 400), (status = 401), (status = 403)),
    security(("bearer" = []))
)]
pub async fn search_events(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Params(params): Params,
) -> Result<Response, ApiError> {
    require_read(&state, &principal, peer, "/v1/events", Role::Reader).await?;
    let mut query = parse_search(&params)?;
    scope_query(&principal, &mut query)?;
    tokio::task::block_in_place(|| crate::subjects::translate_filter(&state.subjects, &mut query))?;
    let store = state.store.clone();
    let page = tokio::task::spawn_blocking(move || store.search(&query))
        .await
        .map_err(|e| ApiError::internal(&e))??;
    metrics::gauge!("vellum_index_lag_events").set(page.index_lag as f64);
    record_read(
        &state,
        &principal,
        peer,
        "/v1/events",
        None,
        json!({"query": crate::subjects::scrub_params(&params), "resultCount": page.events.len()}),
    )
    .await?;
    let mut body = String::with_capacity(
        64 + page
            .events
            .iter()
            .map(|e| e.canonical.len() + 200)
            .sum::<usize>(),
    );
    body.push_str("{\"events\":[");
    for (i, event) in page.events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        let json = event.to_api_json();
        if crate::subjects::may_decrypt(&principal) {
            body.push_str(&tokio::task::block_in_place(|| {
                crate::subjects::with_decrypted(json, &event.canonical, &state.subjects)
            }));
        } else {
            body.push_str(&json);
        }
    }
    body.push_str("],\"nextCursor\":");
    match &page.next_cursor {
        Some(c) => body.push_str(&serde_json::to_string(c).map_err(|e| ApiError::internal(&e))?),
        None => body.push_str("null"),
    }
    body.push('}');
    let mut response = json_response(StatusCode::OK, body);
    if page.index_lag > 0 {
        response
            .headers_mut()
            .insert("vellum-index-lag", HeaderValue::from(page.index_lag));
    }
    Ok(response)
}

/// Whether a stored event belongs to the caller's organization (always, for unbound keys).
pub(crate) fn visible_to(principal: &Principal, event: &StoredEvent) -> bool {
    let Some(org) = &principal.organization_id else {
        return true;
    };
    serde_json::from_str::<Value>(&event.canonical)
        .ok()
        .and_then(|v| {
            v.get("organizationId")
                .and_then(Value::as_str)
                .map(|o| o == org)
        })
        .unwrap_or(false)
}

/// One event by id.
#[utoipa::path(
    get, path = "/v1/events/{id}", tag = "events",
    params(("id" = String, Path, description = "Event id (UUID)")),
    responses((status = 200, description = "The stored event with hash and signature"), (status = 400), (status = 404)),
    security(("bearer" = []))
)]
pub async fn get_event(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_read(&state, &principal, peer, "/v1/events/{id}", Role::Reader).await?;
    let uuid =
        uuid::Uuid::parse_str(&id).map_err(|_| ApiError::bad_request("id", "must be a UUID"))?;
    let store = state.store.clone();
    let event = tokio::task::spawn_blocking(move || store.get_event(&uuid))
        .await
        .map_err(|e| ApiError::internal(&e))??
        .filter(|e| visible_to(&principal, e))
        .ok_or_else(|| ApiError::not_found(format!("no event {id}")))?;
    if let Some(tombstone) = vellum_core::retention::Tombstone::from_body(&event.canonical) {
        return Err(ApiError::new(
            StatusCode::GONE,
            "purged",
            format!(
                "event {id} (seq {}) was purged under retention policy {} at {}; its hash {} stays in the log",
                tombstone.seq, tombstone.policy, tombstone.purged_at, tombstone.hash
            ),
        ));
    }
    record_read(
        &state,
        &principal,
        peer,
        "/v1/events/{id}",
        Some(&id),
        json!({"resultCount": 1}),
    )
    .await?;
    let mut body = event.to_api_json();
    if crate::subjects::may_decrypt(&principal) {
        body = tokio::task::block_in_place(|| {
            crate::subjects::with_decrypted(body, &event.canonical, &state.subjects)
        });
    }
    Ok(json_response(StatusCode::OK, body))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200)))]
pub async fn healthz() -> Response {
    json_response(StatusCode::OK, r#"{"status":"ok"}"#.to_owned())
}

/// Readiness: the writer runs and the store answers.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200), (status = 503)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.store.clone();
    let store_ok = tokio::task::spawn_blocking(move || store.meta_get("schema").is_ok())
        .await
        .unwrap_or(false);
    let (writer, queue) = match state.ingest.queue() {
        // Scale-out: the writers are the workers; this node needs the queue.
        Some(queue) => match queue.refresh_stats().await {
            Some(stats) => (true, Some(queue_json(&stats))),
            None => (false, Some(json!({"reachable": false}))),
        },
        None => (state.ingest.is_alive(), None),
    };
    let ready = writer && store_ok;
    let mut body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "writer": writer,
        "store": store_ok,
        "queueDepth": state.ingest.queue_depth(),
    });
    if let Some(queue) = queue {
        body["queue"] = queue;
    }
    // Sinks are reported, not required: a SIEM that is down delays forwarding (the events
    // wait in the log, cursors hold), it does not make this node unfit to take events.
    let sinks = state
        .forwarder
        .lock()
        .as_ref()
        .map(vellum_forward::Forwarder::status);
    if let Some(sinks) = sinks {
        body["forwarding"] = serde_json::to_value(sinks).unwrap_or_default();
    }
    let mut response = json_response(
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        body.to_string(),
    );
    if !ready {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(1));
    }
    response
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200)))]
pub async fn metrics_text(State(state): State<AppState>) -> Response {
    if let Some(queue) = state.ingest.queue()
        && let Some(stats) = queue.refresh_stats().await
    {
        record_queue_gauges(&stats);
    }
    metrics::gauge!("vellum_ingest_queue_depth").set(state.ingest.queue_depth() as f64);
    let text = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        text,
    )
        .into_response()
}

/// The queue's health as `/readyz` shows it.
pub(crate) fn queue_json(stats: &vellum_queue::QueueStats) -> Value {
    use vellum_queue::Lane;
    json!({
        "reachable": true,
        "depth": {"high": stats.depth(Lane::High), "normal": stats.depth(Lane::Normal)},
        "pending": stats.pending(Lane::High) + stats.pending(Lane::Normal),
        "deadLetters": stats.dlq_len,
        "oldestPendingSeconds": stats.oldest_pending_age().map(|d| d.as_secs_f64()),
    })
}

/// Queue depth, pending, lag and dead letters as Prometheus gauges.
pub(crate) fn record_queue_gauges(stats: &vellum_queue::QueueStats) {
    use vellum_queue::Lane;
    for lane in [Lane::High, Lane::Normal] {
        let name = lane.as_str();
        metrics::gauge!("vellum_queue_depth", "lane" => name).set(stats.depth(lane) as f64);
        metrics::gauge!("vellum_queue_pending", "lane" => name).set(stats.pending(lane) as f64);
        if let Some(lag) = stats.lag(lane) {
            metrics::gauge!("vellum_queue_lag", "lane" => name).set(lag as f64);
        }
    }
    metrics::gauge!("vellum_queue_dead_letters").set(stats.dlq_len as f64);
    metrics::gauge!("vellum_queue_oldest_pending_seconds")
        .set(stats.oldest_pending_age().map_or(0.0, |d| d.as_secs_f64()));
}
