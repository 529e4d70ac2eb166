//! The alerts page: the security alerts the detection rules raised ([`crate::alerts`]),
//! filtered by rule, status, principal, organization and time, paged like the search page, each
//! linked to its own event and to the events that raised it; auditors and admins acknowledge
//! open ones from here, with an optional note.
//!
//! Listing is [`crate::alerts::list`] with the parameters `GET /v1/alerts` takes, parsed by the
//! API's own [`crate::alerts::parse_filter`], so an organization-bound key sees its
//! organization's alerts only; the read is recorded (`/console/alerts`) before the page is
//! sent. Acknowledging is [`crate::alerts::acknowledge`] (one `security.acknowledge` event per
//! alert), behind this session's CSRF token and the auditor role (a refusal is recorded like
//! any refused read); the browser is sent back to the listing it came from with a notice.

use super::search::{Choice, RANGES, time_params};
use super::{ConsoleError, Form, Nav, QueryForm, Signed, pager, query_string, render, short_time};
use crate::AppState;
use crate::alerts::AlertView;
use crate::api::record_read;
use crate::auth::Role;
use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::json;
use std::collections::BTreeMap;
use vellum_core::detect::RuleId;

/// Alerts per page.
pub const PAGE_SIZE: usize = 50;

/// Triggering events linked per alert (the alert's own page lists them all).
pub const TRIGGERS_SHOWN: usize = 5;

/// The endpoint name of the listing in audit events.
const ENDPOINT: &str = "/console/alerts";

/// The endpoint name of an acknowledgement in audit events.
const ACK_ENDPOINT: &str = "/console/alerts/acknowledge";

/// The status choices: (value, label).
pub const STATUSES: &[(&str, &str)] = &[
    ("all", "Any"),
    ("open", "Open"),
    ("acknowledged", "Acknowledged"),
];

/// The form parameters that describe a listing (kept by paging and by an acknowledgement's
/// way back), in form order.
const FILTERS: &[&str] = &[
    "rule",
    "status",
    "principalId",
    "organizationId",
    "range",
    "from",
    "to",
];

/// A triggering event's link.
pub struct Trigger {
    /// Its id.
    pub id: String,
    /// The last characters of the id, shown (the first ones of a UUIDv7 are its time, the
    /// same for events of the same moment).
    pub short: String,
}

/// An acknowledgement as the table shows it.
pub struct AckLine {
    /// The key that acknowledged.
    pub by: String,
    /// When (UTC, to the second).
    pub at: String,
    /// The note, as stored.
    pub note: Option<String>,
    /// The `security.acknowledge` event.
    pub event_id: String,
}

/// One row of the table.
pub struct AlertRow {
    /// The alert event's id.
    pub id: String,
    /// When it was raised (UTC, to the second).
    pub raised_at: String,
    /// The rule.
    pub rule: String,
    /// The severity.
    pub severity: String,
    /// The CSS class of a known severity ("" otherwise).
    pub severity_class: &'static str,
    /// The principal concerned.
    pub principal: String,
    /// The organization concerned.
    pub organization: String,
    /// One sentence.
    pub description: String,
    /// The first triggering events.
    pub triggers: Vec<Trigger>,
    /// How many more there are.
    pub more_triggers: usize,
    /// Present once acknowledged.
    pub ack: Option<AckLine>,
}

#[derive(Template)]
#[template(path = "console/alerts.html")]
struct AlertsPage {
    nav: Nav,
    rules: Vec<Choice>,
    statuses: Vec<Choice>,
    ranges: Vec<Choice>,
    principal: String,
    organization: String,
    from: String,
    to: String,
    notice: Option<&'static str>,
    error: Option<String>,
    listed: bool,
    rows: Vec<AlertRow>,
    next: Option<String>,
    previous: Option<String>,
    may_acknowledge: bool,
    max_note: usize,
    return_fields: Vec<(String, String)>,
}

/// The form's parameters that describe the listing (not the paging).
fn filter_params(form: &Form) -> Vec<(String, String)> {
    FILTERS
        .iter()
        .filter_map(|name| form.get(name).map(|v| ((*name).to_owned(), v.to_owned())))
        .collect()
}

/// The `GET /v1/alerts` parameters a console form means, times made absolute (no time range
/// means any time: an alert stays of interest until someone deals with it).
pub fn api_params(
    form: &Form,
    now: time::OffsetDateTime,
) -> Result<BTreeMap<String, String>, ConsoleError> {
    let mut params = BTreeMap::new();
    for name in ["rule", "principalId", "organizationId"] {
        if let Some(v) = form.get(name) {
            params.insert(name.to_owned(), v.to_owned());
        }
    }
    match form.get("status") {
        None | Some("all") => {}
        Some(status) => {
            params.insert("status".to_owned(), status.to_owned());
        }
    }
    time_params(form, "all", now, &mut params)?;
    Ok(params)
}

/// The CSS class of a severity the console knows.
fn severity_class(severity: &str) -> &'static str {
    match severity {
        "critical" => "alert-sev-critical",
        "high" => "alert-sev-high",
        "medium" => "alert-sev-medium",
        "low" => "alert-sev-low",
        _ => "",
    }
}

/// The last 8 characters of an id.
fn short_id(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    chars[chars.len().saturating_sub(8)..].iter().collect()
}

/// A row of the table from an alert.
fn row_of(alert: AlertView) -> AlertRow {
    let more_triggers = alert
        .triggering_event_ids
        .len()
        .saturating_sub(TRIGGERS_SHOWN);
    AlertRow {
        raised_at: short_time(&alert.raised_at),
        severity_class: severity_class(&alert.severity),
        severity: alert.severity,
        rule: alert.rule,
        principal: alert.principal_id.unwrap_or_default(),
        organization: alert.organization_id.unwrap_or_default(),
        description: alert.description,
        triggers: alert
            .triggering_event_ids
            .into_iter()
            .take(TRIGGERS_SHOWN)
            .map(|id| Trigger {
                short: format!("…{}", short_id(&id)),
                id,
            })
            .collect(),
        more_triggers,
        ack: alert.acknowledgement.map(|a| AckLine {
            by: a.by,
            at: short_time(&a.at),
            note: a.note,
            event_id: a.event_id,
        }),
        id: alert.id,
    }
}

/// `GET /console/alerts`.
pub async fn page(
    State(state): State<AppState>,
    signed: Signed,
    QueryForm(form): QueryForm,
) -> Result<Response, ConsoleError> {
    let principal = &signed.principal;
    signed
        .authorize_read(&state, ENDPOINT, Role::Reader)
        .await?;
    let rule = form.get("rule");
    let status = form.get("status").unwrap_or("all");
    let range = form.get("range").unwrap_or("all");
    let mut return_fields = filter_params(&form);
    for name in ["cursor", "back"] {
        if let Some(v) = form.get(name) {
            return_fields.push((name.to_owned(), v.to_owned()));
        }
    }
    let mut page = AlertsPage {
        nav: signed.nav("alerts"),
        rules: std::iter::once(Choice {
            value: "",
            label: "Any",
            selected: rule.is_none(),
        })
        .chain(RuleId::ALL.iter().map(|r| Choice {
            value: r.as_str(),
            label: r.as_str(),
            selected: rule == Some(r.as_str()),
        }))
        .collect(),
        statuses: STATUSES
            .iter()
            .map(|(value, label)| Choice {
                value,
                label,
                selected: *value == status,
            })
            .collect(),
        ranges: RANGES
            .iter()
            .map(|(value, label)| Choice {
                value,
                label,
                selected: *value == range,
            })
            .collect(),
        principal: form.owned("principalId").unwrap_or_default(),
        organization: form
            .owned("organizationId")
            .or_else(|| principal.organization_id.clone())
            .unwrap_or_default(),
        from: form.owned("from").unwrap_or_default(),
        to: form.owned("to").unwrap_or_default(),
        notice: match form.get("done") {
            Some("acknowledged") => Some("The alert was acknowledged."),
            Some("already") => Some("The alert had already been acknowledged."),
            _ => None,
        },
        error: None,
        listed: false,
        rows: Vec::new(),
        next: None,
        previous: None,
        may_acknowledge: principal.role.allows(Role::Auditor),
        max_note: crate::alerts::MAX_NOTE_BYTES,
        return_fields,
    };
    let mut params = match api_params(&form, time::OffsetDateTime::now_utc()) {
        Ok(p) => p,
        Err(e) => {
            page.error = Some(e.message);
            return render(&page);
        }
    };
    params.insert("limit".into(), PAGE_SIZE.to_string());
    if let Some(c) = form.get("cursor") {
        params.insert("cursor".into(), c.to_owned());
    }
    // The API's own parsing; `list` confines the listing to the key's organization (asking
    // for another is refused, as on the API).
    let listed = match crate::alerts::parse_filter(&params) {
        Ok(filter) => crate::alerts::list(&state, principal, filter).await,
        Err(e) => Err(e),
    };
    let found = match listed {
        Ok(found) => found,
        Err(e) if matches!(e.status, StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN) => {
            page.error = Some(ConsoleError::from(e).message);
            return render(&page);
        }
        Err(e) => return Err(e.into()),
    };
    record_read(
        &state,
        principal,
        signed.peer,
        ENDPOINT,
        None,
        json!({"query": params, "resultCount": found.alerts.len()}),
    )
    .await?;
    page.listed = true;
    (page.previous, page.next) = pager(
        ENDPOINT,
        &filter_params(&form),
        &form,
        found.next_cursor.as_deref(),
    );
    page.rows = found.alerts.into_iter().map(row_of).collect();
    render(&page)
}

/// `POST /console/alerts/acknowledge` (auditor): acknowledges one alert, with an optional note,
/// and sends the browser back to the listing it came from.
pub async fn acknowledge(
    State(state): State<AppState>,
    signed: Signed,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, ConsoleError> {
    signed
        .authorize_form(&state, &headers, &form, ACK_ENDPOINT, Role::Auditor)
        .await?;
    let id = form
        .get("id")
        .ok_or_else(|| ConsoleError::bad_request("which alert?"))?;
    let (_, created) =
        crate::alerts::acknowledge(&state, &signed.principal, id, form.owned("note")).await?;
    // Back to the same listing: only the listing's own parameters are carried, so this can
    // never send the browser elsewhere.
    let mut pairs: Vec<(&str, &str)> = FILTERS
        .iter()
        .chain(&["cursor", "back"])
        .filter_map(|name| form.get(name).map(|v| (*name, v)))
        .collect();
    pairs.push(("done", if created { "acknowledged" } else { "already" }));
    let anchor = uuid::Uuid::parse_str(id)
        .map(|u| format!("#alert-{u}"))
        .unwrap_or_default();
    Ok(Redirect::to(&format!("{ENDPOINT}?{}{anchor}", query_string(pairs))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Form {
        Form(
            pairs
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn console_filters_become_api_parameters() {
        let now = time::macros::datetime!(2026-03-01 12:00 UTC);
        let p = api_params(
            &form(&[
                ("rule", "break_glass"),
                ("status", "all"),
                ("principalId", " dr-a "),
                ("organizationId", ""),
            ]),
            now,
        )
        .expect("params");
        assert_eq!(p.get("rule").map(String::as_str), Some("break_glass"));
        assert_eq!(p.get("principalId").map(String::as_str), Some("dr-a"));
        assert!(
            !p.contains_key("status") && !p.contains_key("organizationId"),
            "{p:?}"
        );
        assert!(!p.contains_key("from"), "any time by default");
        let p = api_params(&form(&[("status", "open"), ("range", "7d")]), now).expect("open");
        assert_eq!(p["status"], "open");
        assert_eq!(p["from"], "2026-02-22T12:00:00.000000Z");
        // The API's own parser accepts what the console builds, and refuses a bad status.
        crate::alerts::parse_filter(&p).expect("the API parses it");
        let bad = api_params(&form(&[("status", "closed")]), now).expect("passed on");
        assert!(crate::alerts::parse_filter(&bad).is_err());
        assert!(api_params(&form(&[("range", "forever")]), now).is_err());
    }

    #[test]
    fn rows_link_a_few_triggers_and_classify_known_severities() {
        let alert = AlertView {
            id: "a1".into(),
            rule: "failed_logins".into(),
            severity: "high".into(),
            status: crate::alerts::AlertStatus::Open,
            raised_at: "2026-03-01T10:00:00.123456Z".into(),
            log_id: "default".into(),
            seq: 3,
            principal_id: Some("dr-a".into()),
            organization_id: None,
            description: "d".into(),
            triggering_event_ids: (0..8).map(|i| format!("0197-{i}-abcdefgh")).collect(),
            window_start: None,
            window_end: None,
            details: serde_json::Value::Null,
            acknowledgement: None,
        };
        let row = row_of(alert.clone());
        assert_eq!(row.raised_at, "2026-03-01 10:00:00");
        assert_eq!(row.triggers.len(), TRIGGERS_SHOWN);
        assert_eq!(row.triggers[0].short, "…abcdefgh");
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(row.more_triggers, 3);
        assert_eq!(row.severity_class, "alert-sev-high");
        let odd = row_of(AlertView {
            severity: "x\" onmouseover=\"y".into(),
            ..alert
        });
        assert_eq!(odd.severity_class, "");
    }
}
