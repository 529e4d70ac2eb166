//! `GET /v1/alerts` and `POST /v1/alerts/{id}/acknowledge` (SPEC §5, §8).
//!
//! An alert is the audit event `security.alert.<rule>` that the detection thread appended
//! ([`crate::detection`]); listing alerts is a search over those events. Acknowledging one
//! appends a `security.acknowledge` event whose `targetResourceId` (and `correlationId`) is the
//! alert's id: the log is append-only, so a change of an alert's state is a new record, and who
//! acknowledged what, when and why is itself evidence. An alert is *acknowledged* when such an
//! event exists, *open* otherwise. Nothing here keeps state of its own, so every API node of a
//! scale-out deployment answers the same.
//!
//! - **Invariant: one acknowledgement per alert.** The acknowledgement is submitted with the
//!   idempotency key `vellum:ack:<alert id>`, so concurrent or repeated calls record one event
//!   and all get its receipt.
//! - Listing is a read of the audit log and is recorded (`audit.read`) like any search; an
//!   org-bound key sees its organization's alerts only.

use crate::AppState;
use crate::api::{
    Auth, Params, json_response, limit_param, record_read, require_read, scope_query, time_param,
};
use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::ingest::Submission;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::net::SocketAddr;
use vellum_core::detect::RuleId;
use vellum_store::{SearchQuery, StoredEvent};

/// Action prefix of alert events.
pub const ALERT_ACTION_PREFIX: &str = "security.alert.";

/// Action of the event that acknowledges an alert.
pub const ACKNOWLEDGE_ACTION: &str = "security.acknowledge";

/// Longest acknowledgement note, in bytes.
pub const MAX_NOTE_BYTES: usize = 2_000;

/// Store pages read at most for one page of a status-filtered listing (when most alerts are
/// in the other state, a page may come back short; `nextCursor` continues).
const MAX_ROUNDS: usize = 20;

/// Whether an alert is still waiting for someone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    /// Nobody has acknowledged it.
    Open,
    /// Someone has.
    Acknowledged,
}

impl AlertStatus {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "open" => Some(Self::Open),
            "acknowledged" => Some(Self::Acknowledged),
            _ => None,
        }
    }
}

/// Which alerts to list.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    /// Only this rule's.
    pub rule: Option<RuleId>,
    /// Only open (or only acknowledged) ones.
    pub status: Option<AlertStatus>,
    /// Only those about this principal.
    pub principal_id: Option<String>,
    /// Only this organization's (org-bound keys are held to theirs).
    pub organization_id: Option<String>,
    /// Raised at or after (event `timestamp`, Unix µs).
    pub from_micros: Option<i64>,
    /// Raised before (Unix µs).
    pub to_micros: Option<i64>,
    /// Page size (1..=1000).
    pub limit: usize,
    /// Where the previous page stopped.
    pub cursor: Option<String>,
}

/// Who acknowledged an alert, when, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Acknowledgement {
    /// The `security.acknowledge` event recording it.
    pub event_id: String,
    /// The key that acknowledged it.
    pub by: String,
    /// When (server time, RFC 3339).
    pub at: String,
    /// The note given, as stored (redacted like any event text).
    pub note: Option<String>,
}

/// One alert as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertView {
    /// The alert event's id.
    pub id: String,
    /// The rule (`failed_logins`, …).
    pub rule: String,
    /// `low` … `critical`.
    pub severity: String,
    /// Open or acknowledged.
    pub status: AlertStatus,
    /// When the server recorded it (`receivedAt`).
    pub raised_at: String,
    /// Its log.
    pub log_id: String,
    /// Its position in the log.
    pub seq: u64,
    /// The principal concerned, if any.
    pub principal_id: Option<String>,
    /// The organization concerned, if any.
    pub organization_id: Option<String>,
    /// One sentence.
    pub description: String,
    /// The events that raised it.
    pub triggering_event_ids: Vec<String>,
    /// Time of the oldest triggering event.
    pub window_start: Option<String>,
    /// Time of the newest triggering event.
    pub window_end: Option<String>,
    /// The rule's facts (counts, thresholds, addresses).
    #[schema(value_type = Object)]
    pub details: Value,
    /// Present once acknowledged.
    pub acknowledgement: Option<Acknowledgement>,
}

/// A page of alerts.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertPage {
    /// Newest first.
    pub alerts: Vec<AlertView>,
    /// Where the next page starts, if there may be one.
    pub next_cursor: Option<String>,
}

/// Body of `POST /v1/alerts/{id}/acknowledge` (optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcknowledgeRequest {
    /// Why, or what was done (at most 2 000 bytes).
    pub note: Option<String>,
}

/// Parses `GET /v1/alerts` parameters strictly: unknown names and bad values are 400s naming
/// them.
pub fn parse_filter(
    params: &std::collections::BTreeMap<String, String>,
) -> Result<AlertFilter, ApiError> {
    let mut filter = AlertFilter {
        limit: 100,
        ..AlertFilter::default()
    };
    for (name, value) in params {
        match name.as_str() {
            "rule" => {
                filter.rule = Some(RuleId::parse(value).ok_or_else(|| {
                    ApiError::bad_request(
                        "rule",
                        format!(
                            "must be one of {}",
                            RuleId::ALL.map(RuleId::as_str).join(", ")
                        ),
                    )
                })?);
            }
            "status" => {
                filter.status = Some(AlertStatus::parse(value).ok_or_else(|| {
                    ApiError::bad_request("status", "must be open or acknowledged")
                })?);
            }
            "principalId" => filter.principal_id = Some(value.clone()),
            "organizationId" => filter.organization_id = Some(value.clone()),
            "from" => filter.from_micros = Some(time_param(name, value)?),
            "to" => filter.to_micros = Some(time_param(name, value)?),
            "limit" => filter.limit = limit_param(value)?,
            "cursor" => filter.cursor = Some(value.clone()),
            other => {
                return Err(ApiError::bad_request(
                    other,
                    "is not an alerts parameter (rule, status, principalId, organizationId, from, to, limit, cursor)",
                ));
            }
        }
    }
    Ok(filter)
}

/// Lists the alerts visible to `principal` (org-scoped), newest first. Does not record the
/// read: the caller does, naming its endpoint.
pub async fn list(
    state: &AppState,
    principal: &Principal,
    filter: AlertFilter,
) -> Result<AlertPage, ApiError> {
    let mut query = SearchQuery {
        action: Some(match filter.rule {
            Some(rule) => rule.action(),
            None => format!("{ALERT_ACTION_PREFIX}*"),
        }),
        principal_id: filter.principal_id.clone(),
        organization_id: filter.organization_id.clone(),
        from_micros: filter.from_micros,
        to_micros: filter.to_micros,
        limit: filter.limit.clamp(1, 1000),
        cursor: filter.cursor.clone(),
        ..SearchQuery::default()
    };
    scope_query(principal, &mut query)?;
    let mut alerts = Vec::new();
    for _ in 0..MAX_ROUNDS {
        query.limit = filter.limit.clamp(1, 1000) - alerts.len();
        let store = state.store.clone();
        let asked = query.clone();
        let page = tokio::task::spawn_blocking(move || store.search(&asked))
            .await
            .map_err(|e| ApiError::internal(&e))??;
        for event in &page.events {
            let Some(mut view) = view_of(event) else {
                continue;
            };
            view.acknowledgement = acknowledgement_of(state, &view.id).await?;
            view.status = if view.acknowledgement.is_some() {
                AlertStatus::Acknowledged
            } else {
                AlertStatus::Open
            };
            if filter.status.is_none_or(|wanted| wanted == view.status) {
                alerts.push(view);
            }
        }
        query.cursor = page.next_cursor;
        if query.cursor.is_none() || alerts.len() >= filter.limit || filter.status.is_none() {
            break;
        }
    }
    Ok(AlertPage {
        alerts,
        next_cursor: query.cursor,
    })
}

/// How many alerts visible to `principal` are open: alerts minus acknowledgements, counted by
/// the search index (two aggregate queries, whatever the number of alerts). Each alert has at
/// most one acknowledgement (its idempotency key), filed under the alert's organization.
pub async fn open_count(state: &AppState, principal: &Principal) -> Result<u64, ApiError> {
    let count = |action: String| async move {
        let mut filter = SearchQuery {
            action: Some(action),
            ..SearchQuery::default()
        };
        scope_query(principal, &mut filter)?;
        let store = state.store.clone();
        let query = vellum_store::StatsQuery {
            filter,
            bucket: vellum_store::TimeBucket::Day,
            top: 1,
        };
        let stats = tokio::task::spawn_blocking(move || store.stats(&query))
            .await
            .map_err(|e| ApiError::internal(&e))??;
        Ok::<u64, ApiError>(stats.total)
    };
    let raised = count(format!("{ALERT_ACTION_PREFIX}*")).await?;
    let acknowledged = count(ACKNOWLEDGE_ACTION.to_owned()).await?;
    Ok(raised.saturating_sub(acknowledged))
}

/// Acknowledges an alert visible to `principal`: `Ok((ack, true))` when this call recorded it,
/// `Ok((ack, false))` when it already was. 404 when there is no such alert (or it belongs to
/// another organization).
pub async fn acknowledge(
    state: &AppState,
    principal: &Principal,
    alert_id: &str,
    note: Option<String>,
) -> Result<(Acknowledgement, bool), ApiError> {
    if let Some(note) = &note
        && note.len() > MAX_NOTE_BYTES
    {
        return Err(ApiError::bad_request(
            "note",
            format!("must be at most {MAX_NOTE_BYTES} bytes"),
        ));
    }
    let uuid = uuid::Uuid::parse_str(alert_id)
        .map_err(|_| ApiError::bad_request("id", "must be a UUID"))?;
    let store = state.store.clone();
    let event = tokio::task::spawn_blocking(move || store.get_event(&uuid))
        .await
        .map_err(|e| ApiError::internal(&e))??
        .filter(|e| crate::api::visible_to(principal, e));
    let Some(alert) = event.as_ref().and_then(view_of) else {
        return Err(ApiError::not_found(format!("no alert {alert_id}")));
    };
    if let Some(existing) = acknowledgement_of(state, &alert.id).await? {
        return Ok((existing, false));
    }
    let mut record = json!({
        "action": ACKNOWLEDGE_ACTION,
        "status": "success",
        "principalId": principal.key_id,
        "principalType": "service",
        "targetResourceType": "SecurityAlert",
        "targetResourceId": alert.id,
        "correlationId": alert.id,
        "dataClassification": "CONFIDENTIAL",
        "details": {"rule": alert.rule},
    });
    if let Some(note) = &note {
        record["details"]["note"] = Value::String(note.clone());
    }
    if let Some(org) = alert
        .organization_id
        .as_ref()
        .or(principal.organization_id.as_ref())
    {
        record["organizationId"] = Value::String(org.clone());
    }
    let prepared = state
        .pipeline
        .prepare(record, 0, time::OffsetDateTime::now_utc())
        .map_err(|errors| ApiError::internal(&format!("acknowledgement invalid: {errors:?}")))?;
    let receipts = crate::api::submit(
        state,
        vec![Submission {
            event: prepared,
            idempotency_key: Some(format!("vellum:ack:{}", alert.id)),
            id: None,
        }],
    )
    .await?;
    let receipt = receipts
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::internal(&"the writer returned no receipt"))?;
    // The note as stored (redacted like any event text), read back by id.
    let stored_note = match uuid::Uuid::parse_str(&receipt.id) {
        Ok(id) => {
            let store = state.store.clone();
            tokio::task::spawn_blocking(move || store.get_event(&id))
                .await
                .map_err(|e| ApiError::internal(&e))??
                .and_then(|e| serde_json::from_str::<Value>(&e.canonical).ok())
                .and_then(|v| {
                    v.pointer("/details/note")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
        }
        Err(_) => None,
    };
    Ok((
        Acknowledgement {
            event_id: receipt.id,
            by: principal.key_id.clone(),
            at: receipt.received_at,
            note: stored_note,
        },
        true,
    ))
}

/// The acknowledgement of an alert, if there is one.
async fn acknowledgement_of(
    state: &AppState,
    alert_id: &str,
) -> Result<Option<Acknowledgement>, ApiError> {
    let query = SearchQuery {
        action: Some(ACKNOWLEDGE_ACTION.to_owned()),
        target_resource_id: Some(alert_id.to_owned()),
        limit: 10,
        ..SearchQuery::default()
    };
    let store = state.store.clone();
    let page = tokio::task::spawn_blocking(move || store.search(&query))
        .await
        .map_err(|e| ApiError::internal(&e))??;
    // The oldest one is the acknowledgement (a second can only exist past the idempotency
    // window); search is newest first.
    Ok(page.events.iter().rev().find_map(|event| {
        let value: Value = serde_json::from_str(&event.canonical).ok()?;
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
        if text("targetResourceId").as_deref() != Some(alert_id) {
            return None;
        }
        Some(Acknowledgement {
            event_id: text("id")?,
            by: text("principalId").unwrap_or_default(),
            at: text("receivedAt").unwrap_or_default(),
            note: value
                .get("details")
                .and_then(|d| d.get("note"))
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }))
}

/// The alert a stored event is, if it is one (status open until looked up).
fn view_of(event: &StoredEvent) -> Option<AlertView> {
    let value: Value = serde_json::from_str(&event.canonical).ok()?;
    let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
    let rule = text("action")?
        .strip_prefix(ALERT_ACTION_PREFIX)?
        .to_owned();
    let details = value.get("details").cloned().unwrap_or(Value::Null);
    let detail_text = |key: &str| details.get(key).and_then(Value::as_str).map(str::to_owned);
    Some(AlertView {
        id: text("id")?,
        severity: text("severity").unwrap_or_default(),
        status: AlertStatus::Open,
        raised_at: text("receivedAt").unwrap_or_default(),
        log_id: event.log_id.clone(),
        seq: event.seq,
        principal_id: text("principalId"),
        organization_id: text("organizationId"),
        description: text("outcomeDescription").unwrap_or_default(),
        triggering_event_ids: details
            .get("triggeringEventIds")
            .and_then(Value::as_array)
            .map(|ids| {
                ids.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        window_start: detail_text("windowStart"),
        window_end: detail_text("windowEnd"),
        rule,
        details,
        acknowledgement: None,
    })
}

/// Lists security alerts, newest first.
#[utoipa::path(
    get, path = "/v1/alerts", tag = "alerts",
    params(
        ("rule" = Option<String>, Query, description = "failed_logins, phi_volume, off_hours, new_location, export_volume, dlp, integrity, injection, break_glass, silent_source"),
        ("status" = Option<String>, Query, description = "open or acknowledged"),
        ("principalId" = Option<String>, Query, description = "The principal concerned"),
        ("organizationId" = Option<String>, Query, description = "The organization"),
        ("from" = Option<String>, Query, description = "RFC 3339, inclusive"),
        ("to" = Option<String>, Query, description = "RFC 3339, exclusive"),
        ("limit" = Option<usize>, Query, description = "1..=1000, default 100"),
        ("cursor" = Option<String>, Query, description = "From the previous page")
    ),
    responses((status = 200, body = AlertPage), (status = 400), (status = 401), (status = 403)),
    security(("bearer" = []))
)]
pub async fn get_alerts(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Params(params): Params,
) -> Result<Response, ApiError> {
    require_read(&state, &principal, peer, "/v1/alerts", Role::Reader).await?;
    let filter = parse_filter(&params)?;
    let page = list(&state, &principal, filter).await?;
    record_read(
        &state,
        &principal,
        peer,
        "/v1/alerts",
        None,
        json!({"query": params, "resultCount": page.alerts.len()}),
    )
    .await?;
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_string(&page).map_err(|e| ApiError::internal(&e))?,
    ))
}

/// Acknowledges an alert (auditor): 201 when recorded now, 200 when it already was.
#[utoipa::path(
    post, path = "/v1/alerts/{id}/acknowledge", tag = "alerts",
    params(("id" = String, Path, description = "The alert's event id")),
    request_body(content = AcknowledgeRequest, description = "Optional note"),
    responses((status = 201, body = Acknowledgement), (status = 200, body = Acknowledgement), (status = 400), (status = 403), (status = 404)),
    security(("bearer" = []))
)]
pub async fn post_acknowledge(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require_read(
        &state,
        &principal,
        peer,
        "/v1/alerts/{id}/acknowledge",
        Role::Auditor,
    )
    .await?;
    // The body is optional: none (or only whitespace) means no note.
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        AcknowledgeRequest::default()
    } else {
        serde_json::from_slice::<AcknowledgeRequest>(&body).map_err(|e| {
            let field = if e.to_string().contains("note") {
                "note"
            } else {
                ""
            };
            ApiError::bad_request(field, format!("invalid body: {e}"))
        })?
    };
    let (ack, created) = acknowledge(&state, &principal, &id, request.note).await?;
    Ok(json_response(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        serde_json::to_string(&ack).map_err(|e| ApiError::internal(&e))?,
    ))
}
