//! The dashboard: events over time by status and by classification, top principals and
//! actions, PHI and emergency accesses (the `GET /v1/stats` aggregation, [`crate::stats`]),
//! the open security alerts ([`crate::alerts::open_count`]),
//! integrity (the latest checkpoint of each visible log and the last verification run from the
//! console), and a button that runs a full verification in the background.
//!
//! The verification is [`crate::verification::verify_store`], log by log, on the blocking
//! pool; its progress callback feeds a counter the page polls (`GET /console/verify/status`,
//! a few lines of vendored script; without script the page refreshes itself). One run at a time
//! per server. The result is kept in the store's meta table (`console.verify.last`, or
//! `console.verify.last.<org>` for an organization-bound key's run over its logs), so it
//! survives restarts and every console user sees when the log was last checked.

use super::charts::{Series, StackedChart, class_for, stacked};
use super::{ConsoleError, Form, Nav, QueryForm, Signed, render};
use crate::AppState;
use crate::api::record_read;
use crate::auth::{Principal, Role};
use askama::Template;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use vellum_core::model::{DataClassification, Status};
use vellum_store::{SearchQuery, StatsQuery, TimeBucket};

/// A verification run started from the console.
pub struct VerifyJob {
    /// The organization it was limited to (`None`: every log).
    pub scope: Option<String>,
    /// Events checked so far.
    pub checked: Arc<AtomicU64>,
    /// Events in the logs when it started.
    pub total: u64,
    /// Set when it ended.
    pub done: Arc<AtomicBool>,
    /// Its result, once done.
    pub result: Arc<Mutex<Option<Result<LastVerify, String>>>>,
}

/// The stored summary of a console verification run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastVerify {
    /// When it ended.
    pub finished_at: String,
    /// The key that started it.
    pub by: String,
    /// Whether nothing failed.
    pub ok: bool,
    /// Events checked.
    pub events: u64,
    /// Checkpoints whose signature verified.
    pub checkpoints_verified: u64,
    /// Failures found.
    pub failures: u64,
    /// The first failures, described.
    pub first_failures: Vec<String>,
    /// Wall time.
    pub elapsed_seconds: f64,
    /// The logs checked.
    pub logs: Vec<String>,
}

/// The meta key of the last run in `scope`.
pub fn last_verify_key(scope: Option<&str>) -> String {
    match scope {
        None => "console.verify.last".to_owned(),
        Some(org) => format!("console.verify.last.{org}"),
    }
}

/// The logs `principal` may see: all, or the shared `default` log and its organization's.
pub async fn visible_logs(
    state: &AppState,
    principal: &Principal,
) -> Result<Vec<String>, ConsoleError> {
    let store = state.store.clone();
    let mut logs = tokio::task::spawn_blocking(move || store.log_ids())
        .await
        .map_err(|e| ConsoleError::internal(&e))?
        .map_err(crate::error::ApiError::from)?;
    if let Some(org) = &principal.organization_id {
        logs.retain(|l| l == "default" || l == org);
    }
    Ok(logs)
}

/// A row of a top-N table.
pub struct TopRow {
    /// The value.
    pub name: String,
    /// Its count.
    pub count: u64,
    /// A search link for it.
    pub href: String,
}

/// One log's integrity line.
pub struct LogLine {
    /// The log.
    pub log_id: String,
    /// Latest checkpoint, if any.
    pub checkpoint: Option<CheckpointLine>,
}

/// A checkpoint as the integrity table shows it.
pub struct CheckpointLine {
    /// Events covered.
    pub size: u64,
    /// When it was signed.
    pub at: String,
    /// Signing key id.
    pub key: String,
}

/// The verification shown on the page.
pub struct VerifyView {
    /// A run is going on in this scope.
    pub running: bool,
    /// A run is going on in another scope (an organization's, or everything).
    pub busy_elsewhere: bool,
    /// Events checked so far.
    pub checked: u64,
    /// Events to check.
    pub total: u64,
    /// The last finished run.
    pub last: Option<LastVerify>,
}

#[derive(Template)]
#[template(path = "console/dashboard.html")]
struct DashboardPage {
    nav: Nav,
    ranges: Vec<super::search::Choice>,
    total: u64,
    security_violations: u64,
    phi: u64,
    emergency: u64,
    index_lag: u64,
    open_alerts: Option<OpenAlerts>,
    charts: Vec<StackedChart>,
    top_principals: Vec<TopRow>,
    top_actions: Vec<TopRow>,
    logs: Vec<LogLine>,
    verify: VerifyView,
    may_verify: bool,
}

/// The open-alerts tile.
pub struct OpenAlerts {
    /// The count as shown.
    pub shown: String,
    /// Whether there is any.
    pub any: bool,
}

/// Counts the open alerts `principal` may see (org-scoped), any time, with two aggregate
/// queries ([`crate::alerts::open_count`]) rather than by listing them.
async fn open_alerts(state: &AppState, principal: &Principal) -> Result<OpenAlerts, ConsoleError> {
    let n = crate::alerts::open_count(state, principal).await?;
    Ok(OpenAlerts {
        shown: n.to_string(),
        any: n > 0,
    })
}

/// The dashboard's periods: (value, label, length, bucket).
const PERIODS: &[(&str, &str, i64, TimeBucket)] = &[
    ("24h", "Last 24 hours", 24, TimeBucket::Hour),
    ("7d", "Last 7 days", 7 * 24, TimeBucket::Day),
    ("30d", "Last 30 days", 30 * 24, TimeBucket::Day),
];

fn micros_of(at: time::OffsetDateTime) -> i64 {
    vellum_core::time_fmt::unix_micros(at)
}

/// The bucket starts (µs) from the one holding `from` to the one holding `now`.
fn bucket_starts(from: i64, now: i64, bucket: TimeBucket) -> Vec<i64> {
    let step: i64 = match bucket {
        TimeBucket::Hour => 3_600_000_000,
        TimeBucket::Day => 86_400_000_000,
    };
    let first = from.div_euclid(step) * step;
    (0..)
        .map(|i| first + i * step)
        .take_while(|start| *start <= now)
        .collect()
}

fn bucket_label(start: i64, bucket: TimeBucket) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(start) * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    match bucket {
        TimeBucket::Hour => format!(
            "{:02}-{:02} {:02}h",
            u8::from(at.month()),
            at.day(),
            at.hour()
        ),
        TimeBucket::Day => format!("{}-{:02}-{:02}", at.year(), u8::from(at.month()), at.day()),
    }
}

fn series_of(starts: &[i64], by_time: &[(i64, u64)]) -> Vec<u64> {
    starts
        .iter()
        .map(|s| by_time.iter().find(|(t, _)| t == s).map_or(0, |(_, n)| *n))
        .collect()
}

/// Stats of `filter` narrowed by one more field, time series only.
async fn series_for(
    state: &AppState,
    base: &SearchQuery,
    bucket: TimeBucket,
    starts: &[i64],
    narrow: impl FnOnce(&mut SearchQuery),
) -> Result<Vec<u64>, ConsoleError> {
    let mut filter = base.clone();
    narrow(&mut filter);
    let stats = crate::stats::collect(
        state,
        StatsQuery {
            filter,
            bucket,
            top: 1,
        },
    )
    .await?;
    Ok(series_of(starts, &stats.by_time))
}

/// `GET /console/dashboard?range=24h|7d|30d`.
pub async fn page(
    State(state): State<AppState>,
    signed: Signed,
    QueryForm(form): QueryForm,
) -> Result<Response, ConsoleError> {
    let principal = &signed.principal;
    signed
        .authorize_read(&state, "/console/dashboard", Role::Reader)
        .await?;
    let asked = form.get("range").unwrap_or("24h");
    let &(range, _, hours, bucket) = PERIODS
        .iter()
        .find(|p| p.0 == asked)
        .ok_or_else(|| ConsoleError::bad_request(format!("{asked:?} is not a period")))?;
    let now = time::OffsetDateTime::now_utc();
    let from = now - time::Duration::hours(hours);
    let mut filter = SearchQuery {
        from_micros: Some(micros_of(from)),
        ..SearchQuery::default()
    };
    crate::stats::scope_filter(&state, principal, &mut filter)?;
    let logs = visible_logs(&state, principal).await?;
    record_read(
        &state,
        principal,
        signed.peer,
        "/console/dashboard",
        None,
        json!({"range": range, "logIds": logs, "openAlerts": true}),
    )
    .await?;
    let open_alerts = open_alerts(&state, principal).await?;
    let overall = crate::stats::collect(
        &state,
        StatsQuery {
            filter: filter.clone(),
            bucket,
            top: 10,
        },
    )
    .await?;
    let starts = bucket_starts(micros_of(from), micros_of(now), bucket);
    let labels: Vec<String> = starts.iter().map(|s| bucket_label(*s, bucket)).collect();
    let mut status_series = Vec::new();
    for status in Status::ALL {
        let values = series_for(&state, &filter, bucket, &starts, |f| {
            f.status = Some((*status).to_owned());
        })
        .await?;
        status_series.push(Series {
            name: (*status).to_owned(),
            class: class_for("st", status, Status::ALL),
            values,
        });
    }
    let mut class_series = Vec::new();
    for class in DataClassification::ALL {
        let values = series_for(&state, &filter, bucket, &starts, |f| {
            f.data_classification = Some((*class).to_owned());
        })
        .await?;
        class_series.push(Series {
            name: (*class).to_owned(),
            class: class_for("cl", class, DataClassification::ALL),
            values,
        });
    }
    let top = |pairs: &[(String, u64)], param: &str| -> Vec<TopRow> {
        pairs
            .iter()
            .map(|(name, count)| TopRow {
                name: name.clone(),
                count: *count,
                href: format!(
                    "/console/search?{}",
                    super::query_string([(param, name.as_str()), ("range", range)])
                ),
            })
            .collect()
    };
    let mut log_lines = Vec::new();
    for log in &logs {
        let store = state.store.clone();
        let id = log.clone();
        let cp = tokio::task::spawn_blocking(move || store.latest_checkpoint(&id))
            .await
            .map_err(|e| ConsoleError::internal(&e))?
            .map_err(crate::error::ApiError::from)?;
        log_lines.push(LogLine {
            log_id: log.clone(),
            checkpoint: cp.map(|c| CheckpointLine {
                size: c.tree_size,
                at: super::short_time(&c.timestamp),
                key: c.key_id,
            }),
        });
    }
    let verify = verify_view(&state, &signed).await?;
    let page = DashboardPage {
        nav: signed.nav("dashboard"),
        ranges: PERIODS
            .iter()
            .map(|(value, label, _, _)| super::search::Choice {
                value,
                label,
                selected: *value == range,
            })
            .collect(),
        total: overall.total,
        security_violations: overall.security_violations,
        phi: overall.phi_accesses,
        emergency: overall.emergency_accesses,
        index_lag: overall.index_lag,
        open_alerts: Some(open_alerts),
        charts: vec![
            stacked(
                "chart-status",
                "Events over time by status",
                &labels,
                &status_series,
            ),
            stacked(
                "chart-class",
                "Events over time by data classification",
                &labels,
                &class_series,
            ),
        ],
        top_principals: top(&overall.by_principal, "principalId"),
        top_actions: top(&overall.by_action, "action"),
        logs: log_lines,
        verify,
        may_verify: principal.role.allows(Role::Auditor),
    };
    render(&page)
}

async fn verify_view(state: &AppState, signed: &Signed) -> Result<VerifyView, ConsoleError> {
    let scope = signed.principal.organization_id.clone();
    let (running, busy_elsewhere, checked, total) = {
        let job = signed.console.inner().verify.lock();
        match job.as_ref() {
            Some(j) if !j.done.load(Ordering::Acquire) => {
                let mine = j.scope == scope;
                (mine, !mine, j.checked.load(Ordering::Relaxed), j.total)
            }
            _ => (false, false, 0, 0),
        }
    };
    let store = state.store.clone();
    let key = last_verify_key(scope.as_deref());
    let last = tokio::task::spawn_blocking(move || store.meta_get(&key))
        .await
        .map_err(|e| ConsoleError::internal(&e))?
        .map_err(crate::error::ApiError::from)?
        .and_then(|t| serde_json::from_str(&t).ok());
    Ok(VerifyView {
        running,
        busy_elsewhere,
        checked,
        total,
        last,
    })
}

/// `POST /console/verify`: starts a verification of the visible logs (auditor).
pub async fn start_verify(
    State(state): State<AppState>,
    signed: Signed,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, ConsoleError> {
    signed.check_form(&headers, &form)?;
    let principal = &signed.principal;
    signed
        .authorize_read(&state, "/console/verify", Role::Auditor)
        .await?;
    let logs = visible_logs(&state, principal).await?;
    let store = state.store.clone();
    let heads = tokio::task::spawn_blocking(move || store.log_heads())
        .await
        .map_err(|e| ConsoleError::internal(&e))?
        .map_err(crate::error::ApiError::from)?;
    let total = heads
        .iter()
        .filter(|h| logs.contains(&h.log_id))
        .map(|h| h.size)
        .sum();
    let job = VerifyJob {
        scope: principal.organization_id.clone(),
        checked: Arc::new(AtomicU64::new(0)),
        total,
        done: Arc::new(AtomicBool::new(false)),
        result: Arc::new(Mutex::new(None)),
    };
    let (checked, done, result) = (job.checked.clone(), job.done.clone(), job.result.clone());
    {
        let mut slot = signed.console.inner().verify.lock();
        if slot
            .as_ref()
            .is_some_and(|j| !j.done.load(Ordering::Acquire))
        {
            return Ok(Redirect::to("/console/dashboard#integrity").into_response());
        }
        *slot = Some(job);
    }
    let recorded = record_read(
        &state,
        principal,
        signed.peer,
        "/console/verify",
        None,
        json!({"logIds": logs}),
    )
    .await;
    if let Err(e) = recorded {
        done.store(true, Ordering::Release);
        return Err(e.into());
    }
    let store = state.store.clone();
    let keyring = state.keyring.clone();
    let current = state.checkpoint_key.clone();
    let require_signatures = state.config.enable_signatures;
    let by = principal.key_id.clone();
    let scope = principal.organization_id.clone();
    tokio::spawn(async move {
        let run = tokio::task::spawn_blocking(move || {
            let keys =
                crate::verification::known_keys(store.as_ref(), std::slice::from_ref(&current))
                    .map_err(|e| e.to_string())?;
            let mut summary = LastVerify {
                finished_at: String::new(),
                by,
                ok: true,
                events: 0,
                checkpoints_verified: 0,
                failures: 0,
                first_failures: Vec::new(),
                elapsed_seconds: 0.0,
                logs: logs.clone(),
            };
            let started = std::time::Instant::now();
            for log in &logs {
                let options = crate::verification::VerifyOptions {
                    log_id: Some(log.clone()),
                    require_signatures,
                    from_seq: 0,
                };
                let report = crate::verification::verify_store(
                    store.as_ref(),
                    Some(keyring.as_ref()),
                    &keys,
                    &options,
                    |n| {
                        checked.fetch_add(n, Ordering::Relaxed);
                    },
                )
                .map_err(|e| e.to_string())?;
                summary.ok &= report.ok;
                summary.events += report.events;
                summary.checkpoints_verified += report.checkpoints_verified;
                for l in &report.logs {
                    summary.failures += l.failures.len() as u64;
                    for f in l
                        .failures
                        .iter()
                        .take(10 - summary.first_failures.len().min(10))
                    {
                        summary.first_failures.push(format!(
                            "log {}: {}",
                            l.log_id,
                            serde_json::to_string(f).unwrap_or_default()
                        ));
                    }
                }
            }
            summary.elapsed_seconds = started.elapsed().as_secs_f64();
            summary.finished_at = vellum_core::pipeline::server_now().1;
            let text = serde_json::to_string(&summary).map_err(|e| e.to_string())?;
            store
                .meta_set(&last_verify_key(scope.as_deref()), &text)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(summary)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = &run {
            tracing::warn!(error = %e, "console verification failed to run");
        }
        *result.lock() = Some(run);
        done.store(true, Ordering::Release);
    });
    Ok(Redirect::to("/console/dashboard#integrity").into_response())
}

/// The JSON the page polls.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusBody {
    running: bool,
    checked: u64,
    total: u64,
    ok: Option<bool>,
    error: Option<String>,
}

/// `GET /console/verify/status`: progress of the run in the caller's scope.
pub async fn status(signed: Signed) -> Response {
    let job = signed.console.inner().verify.lock();
    let body = match job.as_ref() {
        Some(j) if j.scope == signed.principal.organization_id => {
            let result = j.result.lock();
            StatusBody {
                running: !j.done.load(Ordering::Acquire),
                checked: j.checked.load(Ordering::Relaxed),
                total: j.total,
                ok: result.as_ref().and_then(|r| r.as_ref().ok()).map(|s| s.ok),
                error: result.as_ref().and_then(|r| r.as_ref().err()).cloned(),
            }
        }
        _ => StatusBody {
            running: false,
            checked: 0,
            total: 0,
            ok: None,
            error: None,
        },
    };
    Json(body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_period() {
        let hour = 3_600_000_000;
        let starts = bucket_starts(10 * hour + 5, 13 * hour + 1, TimeBucket::Hour);
        assert_eq!(starts, vec![10 * hour, 11 * hour, 12 * hour, 13 * hour]);
        assert_eq!(
            series_of(&starts, &[(11 * hour, 4), (99, 1)]),
            vec![0, 4, 0, 0]
        );
        assert_eq!(bucket_label(0, TimeBucket::Day), "1970-01-01");
        assert_eq!(bucket_label(13 * hour, TimeBucket::Hour), "01-01 13h");
    }
}
