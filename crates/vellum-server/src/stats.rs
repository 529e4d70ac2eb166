//! `GET /v1/stats`: totals and breakdowns over any search filter set (SPEC §5).

use crate::AppState;
use crate::api::{
    Auth, Params, json_response, parse_search, record_read, require_read, scope_query,
};
use crate::auth::Role;
use crate::error::ApiError;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use std::net::SocketAddr;
use vellum_store::{StatsQuery, TimeBucket};

fn entries(name: &str, pairs: &[(String, u64)]) -> Value {
    Value::Array(
        pairs
            .iter()
            .map(|(k, n)| json!({ name: k, "count": n }))
            .collect(),
    )
}

/// Confines a statistics filter to what `principal` may see (its organization) and turns a
/// data-subject filter into the stored tag; shared by `GET /v1/stats` and the console.
pub(crate) fn scope_filter(
    state: &AppState,
    principal: &crate::auth::Principal,
    filter: &mut vellum_store::SearchQuery,
) -> Result<(), ApiError> {
    scope_query(principal, filter)?;
    tokio::task::block_in_place(|| crate::subjects::translate_filter(&state.subjects, filter))
        .map_err(ApiError::from)
}

/// Aggregates a scoped query on the blocking pool (the caller has audited the read).
pub(crate) async fn collect(
    state: &AppState,
    query: StatsQuery,
) -> Result<vellum_store::Stats, ApiError> {
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || store.stats(&query))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(ApiError::from)
}

/// Counts by action, status, classification, principal, organization and time bucket, plus
/// security violations, PHI accesses and emergency accesses, over the search filters given.
#[utoipa::path(
    get, path = "/v1/stats", tag = "events",
    params(
        crate::api::SearchParams,
        ("bucket" = Option<String>, Query, description = "`hour` (default) or `day`"),
        ("top" = Option<usize>, Query, description = "Entries per breakdown, 1..=1000 (default 20)"),
    ),
    responses((status = 200, description = "{total, byAction, byStatus, byClassification, byPrincipal, byOrganization, byTime, securityViolations, phiAccesses, emergencyAccesses}"), (status = 400)),
    security(("bearer" = []))
)]
pub async fn get_stats(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Params(mut params): Params,
) -> Result<Response, ApiError> {
    require_read(&state, &principal, peer, "/v1/stats", Role::Reader).await?;
    let bucket = match params.remove("bucket").as_deref() {
        None | Some("hour") => TimeBucket::Hour,
        Some("day") => TimeBucket::Day,
        Some(_) => return Err(ApiError::bad_request("bucket", "must be `hour` or `day`")),
    };
    let top = match params.remove("top") {
        None => 20,
        Some(t) => t
            .parse::<usize>()
            .ok()
            .filter(|t| (1..=1000).contains(t))
            .ok_or_else(|| ApiError::bad_request("top", "must be an integer in 1..=1000"))?,
    };
    for name in ["limit", "cursor"] {
        if params.contains_key(name) {
            return Err(ApiError::bad_request(name, "does not apply to statistics"));
        }
    }
    let mut filter = parse_search(&params)?;
    scope_filter(&state, &principal, &mut filter)?;
    record_read(
        &state,
        &principal,
        peer,
        "/v1/stats",
        None,
        json!({"query": crate::subjects::scrub_params(&params)}),
    )
    .await?;
    let stats = collect(
        &state,
        StatsQuery {
            filter,
            bucket,
            top,
        },
    )
    .await?;
    let by_time: Vec<Value> = stats
        .by_time
        .iter()
        .map(|(start, n)| {
            let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(*start) * 1000)
                .map(vellum_core::time_fmt::format_server_time)
                .unwrap_or_default();
            json!({"start": at, "count": n})
        })
        .collect();
    let body = json!({
        "total": stats.total,
        "byAction": entries("action", &stats.by_action),
        "byStatus": entries("status", &stats.by_status),
        "byClassification": entries("dataClassification", &stats.by_classification),
        "byPrincipal": entries("principalId", &stats.by_principal),
        "byOrganization": entries("organizationId", &stats.by_organization),
        "bucket": if bucket == TimeBucket::Day { "day" } else { "hour" },
        "byTime": by_time,
        "securityViolations": stats.security_violations,
        "phiAccesses": stats.phi_accesses,
        "emergencyAccesses": stats.emergency_accesses,
        "indexLag": stats.index_lag,
    });
    Ok(json_response(StatusCode::OK, body.to_string()))
}
