//! Compliance reports (`POST /v1/reports`) and the accounting of disclosures
//! (`GET /v1/reports/disclosures`), SPEC §5 and §11.
//!
//! Both walk the events of the period page by page (constant memory) and fold them with
//! `vellum_core::report`. A report also runs the integrity verification of the logs it covers
//! and records the checkpoints it was checked against, then is signed with the server's
//! Ed25519 key so `vellum verify-report` can check it offline. Generating either is a read of
//! the audit log and is itself audited.

use crate::AppState;
use crate::api::{Auth, Params, json_response, record_read, require_read, scope_query};
use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::verification::{VerifyOptions, known_keys, verify_store};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use utoipa::ToSchema;
use vellum_core::report::{
    ComplianceReport, Disclosure, IntegrityResult, ReportBuilder, ReportType, disclosure,
    sign_report,
};
use vellum_core::time_fmt::{parse_rfc3339, unix_micros};
use vellum_store::{AuditStore, SearchQuery};

/// Events per page while folding.
const PAGE: usize = 1000;

/// `POST /v1/reports` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReportRequest {
    /// `HIPAA`, `GDPR`, `LGPD`, `SOX` or `GENERAL`.
    #[serde(rename = "type")]
    pub report_type: String,
    /// Period start, RFC 3339, inclusive.
    pub from: String,
    /// Period end, RFC 3339, exclusive.
    pub to: String,
    /// `json` (default) or `pdf`.
    pub format: Option<String>,
    /// Limit to one organization (org-bound keys are always limited to theirs).
    pub organization_id: Option<String>,
}

fn period(from: &str, to: &str) -> Result<(i64, i64), ApiError> {
    let f = parse_rfc3339(from)
        .map_err(|_| ApiError::bad_request("from", "must be an RFC 3339 date-time"))?;
    let t = parse_rfc3339(to)
        .map_err(|_| ApiError::bad_request("to", "must be an RFC 3339 date-time"))?;
    let (f, t) = (unix_micros(f), unix_micros(t));
    if f >= t {
        return Err(ApiError::bad_request("to", "must be after `from`"));
    }
    Ok((f, t))
}

/// Output format of reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    /// JSON.
    Json,
    /// PDF.
    Pdf,
}

fn report_format(name: Option<&str>) -> Result<ReportFormat, ApiError> {
    match name {
        None | Some("json") => Ok(ReportFormat::Json),
        Some("pdf") => Ok(ReportFormat::Pdf),
        Some(_) => Err(ApiError::bad_request("format", "must be `json` or `pdf`")),
    }
}

/// Folds every event matching `query` (all pages) with `each`.
fn walk(
    store: &dyn AuditStore,
    mut query: SearchQuery,
    mut each: impl FnMut(&Value),
) -> Result<(), ApiError> {
    query.limit = PAGE;
    query.cursor = None;
    loop {
        let page = store.search(&query)?;
        for event in &page.events {
            let value: Value =
                serde_json::from_str(&event.to_api_json()).map_err(|e| ApiError::internal(&e))?;
            each(&value);
        }
        match page.next_cursor {
            Some(c) => query.cursor = Some(c),
            None => return Ok(()),
        }
    }
}

/// `POST /v1/reports`: a signed compliance report (auditor or admin).
#[utoipa::path(
    post, path = "/v1/reports", tag = "reports",
    request_body = ReportRequest,
    responses((status = 200, description = "The signed report (JSON or PDF)"), (status = 400)),
    security(("bearer" = []))
)]
pub async fn post_report(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require_read(&state, &principal, peer, "/v1/reports", Role::Auditor).await?;
    let request: ReportRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request("", e.to_string()))?;
    report_response(&state, &principal, peer, "/v1/reports", &request).await
}

/// Generates, records (as a read at `endpoint`) and renders a signed report for `principal`,
/// whose auditor role the caller has checked; shared by `POST /v1/reports` and the console.
pub(crate) async fn report_response(
    state: &AppState,
    principal: &Principal,
    peer: SocketAddr,
    endpoint: &str,
    request: &ReportRequest,
) -> Result<Response, ApiError> {
    let report_type = ReportType::parse(&request.report_type).ok_or_else(|| {
        ApiError::bad_request("type", "must be one of HIPAA, GDPR, LGPD, SOX, GENERAL")
    })?;
    let format = report_format(request.format.as_deref())?;
    let (from, to) = period(&request.from, &request.to)?;
    let mut query = SearchQuery {
        organization_id: request.organization_id.clone(),
        from_micros: Some(from),
        to_micros: Some(to),
        ..SearchQuery::default()
    };
    scope_query(principal, &mut query)?;
    record_read(
        state,
        principal,
        peer,
        endpoint,
        None,
        json!({"type": request.report_type, "from": request.from, "to": request.to}),
    )
    .await?;
    let report = build_report(state, principal, report_type, query, request).await?;
    match format {
        ReportFormat::Json => Ok(json_response(
            StatusCode::OK,
            serde_json::to_string_pretty(&report).map_err(|e| ApiError::internal(&e))?,
        )),
        ReportFormat::Pdf => Ok(crate::pdf::pdf_response(
            crate::pdf::report_pdf(&report)?,
            "vellum-report.pdf",
        )),
    }
}

async fn build_report(
    state: &AppState,
    principal: &Principal,
    report_type: ReportType,
    query: SearchQuery,
    request: &ReportRequest,
) -> Result<ComplianceReport, ApiError> {
    // Integrity first: a fresh checkpoint per visible log, then the full verification.
    let store = state.store.clone();
    let mut logs = tokio::task::spawn_blocking(move || store.log_ids())
        .await
        .map_err(|e| ApiError::internal(&e))??;
    if let Some(org) = &principal.organization_id {
        logs.retain(|l| l == "default" || l == org);
    }
    for log in &logs {
        state
            .ingest
            .checkpoint_now(log)
            .await
            .map_err(|e| ApiError::overloaded(e.to_string()))?;
    }
    let store: Arc<dyn AuditStore> = state.store.clone();
    let keyring = state.keyring.clone();
    let current = state.checkpoint_key.clone();
    let signer = state.signer.clone();
    let require_signatures = state.config.enable_signatures;
    let (from, to, org) = (
        request.from.clone(),
        request.to.clone(),
        query.organization_id.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let keys = known_keys(store.as_ref(), std::slice::from_ref(&current))?;
        let mut integrity = IntegrityResult {
            ok: true,
            events_verified: 0,
            failures: 0,
            checkpoints: Vec::new(),
        };
        for log in &logs {
            let options = VerifyOptions {
                log_id: Some(log.clone()),
                require_signatures,
                from_seq: 0,
            };
            let verified = verify_store(
                store.as_ref(),
                Some(keyring.as_ref()),
                &keys,
                &options,
                |_| {},
            )?;
            integrity.ok &= verified.ok;
            integrity.events_verified += verified.events;
            integrity.failures += verified
                .logs
                .iter()
                .map(|l| l.failures.len() as u64)
                .sum::<u64>();
            if let Some(cp) = store.latest_checkpoint(log)? {
                integrity.checkpoints.push(cp);
            }
        }
        let mut builder = ReportBuilder::new(report_type);
        walk(store.as_ref(), query, |e| builder.add(e))?;
        let generated = vellum_core::pipeline::server_now().1;
        let mut report = builder.finish(&from, &to, &generated, org, integrity);
        sign_report(&mut report, &signer).map_err(|e| ApiError::internal(&e))?;
        Ok::<_, ApiError>(report)
    })
    .await
    .map_err(|e| ApiError::internal(&e))?
}

/// `GET /v1/reports/disclosures?patientId=&from=&to=&format=`: every access to one patient's
/// information in a period (HIPAA §164.528), oldest first.
#[utoipa::path(
    get, path = "/v1/reports/disclosures", tag = "reports",
    params(
        ("patientId" = String, Query, description = "The patient"),
        ("from" = Option<String>, Query, description = "RFC 3339, inclusive (default: 6 years ago)"),
        ("to" = Option<String>, Query, description = "RFC 3339, exclusive (default: now)"),
        ("format" = Option<String>, Query, description = "`json` (default) or `pdf`"),
    ),
    responses((status = 200, description = "{patientId, from, to, count, disclosures[]}"), (status = 400)),
    security(("bearer" = []))
)]
pub async fn get_disclosures(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Params(params): Params,
) -> Result<Response, ApiError> {
    require_read(
        &state,
        &principal,
        peer,
        "/v1/reports/disclosures",
        Role::Auditor,
    )
    .await?;
    disclosures_response(&state, &principal, peer, "/v1/reports/disclosures", &params).await
}

/// The accounting of disclosures for `params` (`patientId`, `from`, `to`, `format`), recorded
/// as a read at `endpoint`, for `principal` (whose auditor role the caller has checked);
/// shared by `GET /v1/reports/disclosures` and the console.
pub(crate) async fn disclosures_response(
    state: &AppState,
    principal: &Principal,
    peer: SocketAddr,
    endpoint: &str,
    params: &std::collections::BTreeMap<String, String>,
) -> Result<Response, ApiError> {
    if let Some(name) = params
        .keys()
        .find(|k| !["patientId", "from", "to", "format"].contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(name, "unknown parameter"));
    }
    let patient = params
        .get("patientId")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::bad_request("patientId", "is required"))?
        .clone();
    let format = report_format(params.get("format").map(String::as_str))?;
    let now = time::OffsetDateTime::now_utc();
    // HIPAA requires an accounting for the six years before the request.
    let default_from = now - time::Duration::days(6 * 366);
    let from_text = params
        .get("from")
        .cloned()
        .unwrap_or_else(|| vellum_core::time_fmt::format_server_time(default_from));
    let to_text = params
        .get("to")
        .cloned()
        .unwrap_or_else(|| vellum_core::time_fmt::format_server_time(now));
    let (from, to) = period(&from_text, &to_text)?;
    let mut query = SearchQuery {
        patient_id: Some(patient.clone()),
        from_micros: Some(from),
        to_micros: Some(to),
        ..SearchQuery::default()
    };
    scope_query(principal, &mut query)?;
    record_read(
        state,
        principal,
        peer,
        endpoint,
        None,
        json!({"patientId": patient, "from": from_text, "to": to_text}),
    )
    .await?;
    let store = state.store.clone();
    let mut lines: Vec<Disclosure> = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        walk(store.as_ref(), query, |e| out.push(disclosure(e)))?;
        Ok::<_, ApiError>(out)
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    lines.reverse(); // search is newest first; an accounting reads oldest first
    let body = json!({
        "patientId": patient,
        "from": from_text,
        "to": to_text,
        "count": lines.len(),
        "disclosures": lines,
    });
    match format {
        ReportFormat::Json => Ok(json_response(
            StatusCode::OK,
            serde_json::to_string(&body).map_err(|e| ApiError::internal(&e))?,
        )),
        ReportFormat::Pdf => Ok(crate::pdf::pdf_response(
            crate::pdf::disclosures_pdf(&patient, &from_text, &to_text, &lines)?,
            "vellum-disclosures.pdf",
        )),
    }
}
