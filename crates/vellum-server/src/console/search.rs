//! The search page: every SPEC §5 filter, time-range presets, keyset paging with a way back,
//! export links for the filters shown, and saved searches.
//!
//! The page builds the same parameter map `GET /v1/events` takes and runs it through the API's
//! own parsing ([`crate::api::parse_search`]), organization scoping and subject translation,
//! and records the read before showing anything. Paging: "next" carries the store's cursor;
//! "previous" works from a stack of the earlier pages' cursors kept in the query string
//! (`back=-.c2.c3`, `-` being the first page), so no server state is needed and any page can
//! be bookmarked. Saved searches live in the store's meta table under
//! `console.saved.<keyId>`, written with an audit event like every configuration change.

use super::{ConsoleError, Form, Nav, QueryForm, Signed, form_time, pager, query_string, render};
use crate::AppState;
use crate::api::{parse_search, record_read};
use crate::auth::Role;
use crate::keys::Actor;
use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use vellum_core::model::{DataClassification, Status};

/// Events per page.
pub const PAGE_SIZE: usize = 50;
/// Saved searches kept per key.
pub const MAX_SAVED: usize = 50;

/// The free-text filters of SPEC §5, in form order: (parameter, label, hint).
pub const TEXT_FILTERS: &[(&str, &str, &str)] = &[
    ("q", "Full text", "words anywhere in the event"),
    ("principalId", "Principal", "exact id"),
    (
        "action",
        "Action",
        "exact, or a prefix with a trailing * (auth.*)",
    ),
    ("organizationId", "Organization", "exact id"),
    ("targetResourceType", "Target type", "e.g. Patient"),
    ("targetResourceId", "Target id", "exact id"),
    ("sessionId", "Session", "exact id"),
    ("ipAddress", "IP address", "exact address"),
    ("patientId", "Patient", "exact id"),
    ("dataSubjectId", "Data subject", "exact id"),
    ("correlationId", "Correlation", "exact id"),
];

/// The time-range presets: (value, label).
pub const RANGES: &[(&str, &str)] = &[
    ("1h", "Last hour"),
    ("24h", "Last 24 hours"),
    ("7d", "Last 7 days"),
    ("30d", "Last 30 days"),
    ("all", "Any time"),
    ("custom", "Custom range"),
];

/// A saved search: a name and the console's query parameters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedSearch {
    /// Its name.
    pub name: String,
    /// The search form's parameters.
    pub params: Vec<(String, String)>,
}

/// One text input of the form.
pub struct TextField {
    /// Parameter name (and input id).
    pub name: &'static str,
    /// Label.
    pub label: &'static str,
    /// Help text.
    pub hint: &'static str,
    /// Current value.
    pub value: String,
}

/// One option of a select.
pub struct Choice {
    /// Submitted value.
    pub value: &'static str,
    /// Shown label.
    pub label: &'static str,
    /// Whether it is selected.
    pub selected: bool,
}

/// One result row.
pub struct Row {
    /// Event id (link to its page).
    pub id: String,
    /// Timestamp, shortened.
    pub time: String,
    /// Principal.
    pub principal: String,
    /// Action.
    pub action: String,
    /// Target type and id.
    pub target: String,
    /// Status (also a CSS class suffix).
    pub status: String,
    /// Classification.
    pub classification: String,
}

/// A link with a label.
pub struct Link {
    /// Label.
    pub label: String,
    /// Href.
    pub href: String,
}

#[derive(Template)]
#[template(path = "console/search.html")]
struct SearchPage {
    nav: Nav,
    fields: Vec<TextField>,
    statuses: Vec<Choice>,
    classifications: Vec<Choice>,
    ranges: Vec<Choice>,
    from: String,
    to: String,
    error: Option<String>,
    rows: Vec<Row>,
    searched: bool,
    index_lag: u64,
    next: Option<String>,
    previous: Option<String>,
    exports: Vec<Link>,
    saved: Vec<Link>,
    saved_names: Vec<String>,
    current_query: Vec<(String, String)>,
}

/// The form's parameters that describe the search (not the paging).
fn search_params(form: &Form) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in TEXT_FILTERS.iter().map(|f| f.0).chain([
        "status",
        "dataClassification",
        "range",
        "from",
        "to",
    ]) {
        if let Some(v) = form.get(name) {
            out.push((name.to_owned(), v.to_owned()));
        }
    }
    out
}

/// The API parameters (`GET /v1/events` names) a console form means, times made absolute.
pub fn api_params(
    form: &Form,
    now: time::OffsetDateTime,
) -> Result<BTreeMap<String, String>, ConsoleError> {
    let mut params = BTreeMap::new();
    for name in TEXT_FILTERS
        .iter()
        .map(|f| f.0)
        .chain(["status", "dataClassification"])
    {
        if let Some(v) = form.get(name) {
            params.insert(name.to_owned(), v.to_owned());
        }
    }
    time_params(form, "24h", now, &mut params)?;
    Ok(params)
}

/// Adds the `from`/`to` API parameters (RFC 3339) that the form's time range means: a preset
/// (`1h`, `24h`, `7d`, `30d`, `all`), or `custom` with the form's own `from` and `to`;
/// `default` when the form names none.
pub fn time_params(
    form: &Form,
    default: &str,
    now: time::OffsetDateTime,
    params: &mut BTreeMap<String, String>,
) -> Result<(), ConsoleError> {
    let back = |d: time::Duration| vellum_core::time_fmt::format_server_time(now - d);
    match form.get("range").unwrap_or(default) {
        "1h" => {
            params.insert("from".into(), back(time::Duration::hours(1)));
        }
        "24h" => {
            params.insert("from".into(), back(time::Duration::hours(24)));
        }
        "7d" => {
            params.insert("from".into(), back(time::Duration::days(7)));
        }
        "30d" => {
            params.insert("from".into(), back(time::Duration::days(30)));
        }
        "all" => {}
        "custom" => {
            if let Some(from) = form.get("from") {
                params.insert("from".into(), form_time(from, false)?);
            }
            if let Some(to) = form.get("to") {
                params.insert("to".into(), form_time(to, false)?);
            }
        }
        other => {
            return Err(ConsoleError::bad_request(format!(
                "{other:?} is not a time range"
            )));
        }
    }
    Ok(())
}

fn choices(all: &[&'static str], current: Option<&str>) -> Vec<Choice> {
    std::iter::once(Choice {
        value: "",
        label: "Any",
        selected: current.is_none(),
    })
    .chain(all.iter().map(|v| Choice {
        value: v,
        label: v,
        selected: current == Some(*v),
    }))
    .collect()
}

/// The meta key of a key's saved searches.
pub fn saved_key(key_id: &str) -> String {
    format!("console.saved.{key_id}")
}

async fn load_saved(state: &AppState, key_id: &str) -> Result<Vec<SavedSearch>, ConsoleError> {
    let store = state.store.clone();
    let key = saved_key(key_id);
    let text = tokio::task::spawn_blocking(move || store.meta_get(&key))
        .await
        .map_err(|e| ConsoleError::internal(&e))?
        .map_err(crate::error::ApiError::from)?;
    Ok(text
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default())
}

async fn store_saved(
    state: &AppState,
    signed: &Signed,
    saved: &[SavedSearch],
    action: &str,
    name: &str,
) -> Result<(), ConsoleError> {
    let actor = Actor::http(&signed.principal, signed.peer, "/console/search/save");
    let mut event = crate::retention::admin_event(action, &actor, "SavedSearch", name);
    event["severity"] = json!("low");
    event["details"] = json!({"keyId": signed.principal.key_id, "name": name});
    let text = serde_json::to_string(saved).map_err(|e| ConsoleError::internal(&e))?;
    let store = state.store.clone();
    let key = saved_key(&signed.principal.key_id);
    let audit = vec![event.to_string()];
    tokio::task::spawn_blocking(move || store.meta_set_audited(&key, &text, &audit))
        .await
        .map_err(|e| ConsoleError::internal(&e))?
        .map_err(crate::error::ApiError::from)?;
    crate::outbox::settle(state).await;
    Ok(())
}

/// A row of the results table from an event's API JSON.
pub fn row_of(event: &Value) -> Row {
    let t = |p: &str| super::text_at(event, p);
    let target_id = t("/targetResourceId");
    Row {
        id: t("/id"),
        time: super::short_time(&t("/timestamp")),
        principal: t("/principalId"),
        action: t("/action"),
        target: if target_id.is_empty() {
            t("/targetResourceType")
        } else {
            format!("{} {target_id}", t("/targetResourceType"))
        },
        status: t("/status"),
        classification: t("/dataClassification"),
    }
}

/// `GET /console/search`.
pub async fn page(
    State(state): State<AppState>,
    signed: Signed,
    QueryForm(form): QueryForm,
) -> Result<Response, ConsoleError> {
    let principal = &signed.principal;
    signed
        .authorize_read(&state, "/console/search", Role::Reader)
        .await?;
    let range = form.get("range").unwrap_or("24h");
    let mut page = SearchPage {
        nav: signed.nav("search"),
        fields: TEXT_FILTERS
            .iter()
            .map(|(name, label, hint)| TextField {
                name,
                label,
                hint,
                value: form.owned(name).unwrap_or_default(),
            })
            .collect(),
        statuses: choices(Status::ALL, form.get("status")),
        classifications: choices(DataClassification::ALL, form.get("dataClassification")),
        ranges: RANGES
            .iter()
            .map(|(value, label)| Choice {
                value,
                label,
                selected: *value == range,
            })
            .collect(),
        from: form.owned("from").unwrap_or_default(),
        to: form.owned("to").unwrap_or_default(),
        error: None,
        rows: Vec::new(),
        searched: false,
        index_lag: 0,
        next: None,
        previous: None,
        exports: Vec::new(),
        saved: Vec::new(),
        saved_names: Vec::new(),
        current_query: search_params(&form),
    };
    for s in load_saved(&state, &principal.key_id).await? {
        page.saved.push(Link {
            href: format!(
                "/console/search?{}",
                query_string(s.params.iter().map(|(n, v)| (n.as_str(), v.as_str())))
            ),
            label: s.name.clone(),
        });
        page.saved_names.push(s.name);
    }
    let now = time::OffsetDateTime::now_utc();
    let params = match api_params(&form, now) {
        Ok(p) => p,
        Err(e) => {
            page.error = Some(e.message);
            return render(&page);
        }
    };
    let mut with_paging = params.clone();
    with_paging.insert("limit".into(), PAGE_SIZE.to_string());
    if let Some(c) = form.get("cursor") {
        with_paging.insert("cursor".into(), c.to_owned());
    }
    // Confined to the key's organization (asking for another is refused, as on the API).
    let query = parse_search(&with_paging).and_then(|mut q| {
        crate::stats::scope_filter(&state, principal, &mut q)?;
        Ok(q)
    });
    let query = match query {
        Ok(q) => q,
        Err(e) => {
            page.error = Some(e.message);
            return render(&page);
        }
    };
    let store = state.store.clone();
    let result = tokio::task::spawn_blocking(move || store.search(&query))
        .await
        .map_err(|e| ConsoleError::internal(&e))?
        .map_err(crate::error::ApiError::from);
    let found = match result {
        Ok(found) => found,
        Err(e) if e.status == axum::http::StatusCode::BAD_REQUEST => {
            page.error = Some(e.message);
            return render(&page);
        }
        Err(e) => return Err(e.into()),
    };
    record_read(
        &state,
        principal,
        signed.peer,
        "/console/search",
        None,
        json!({"query": crate::subjects::scrub_params(&with_paging), "resultCount": found.events.len()}),
    )
    .await?;
    page.searched = true;
    page.index_lag = found.index_lag;
    for event in &found.events {
        let value: Value =
            serde_json::from_str(&event.to_api_json()).map_err(|e| ConsoleError::internal(&e))?;
        page.rows.push(row_of(&value));
    }
    // Paging links keep the search and move the cursor; `back` remembers earlier pages.
    (page.previous, page.next) = pager(
        "/console/search",
        &page.current_query,
        &form,
        found.next_cursor.as_deref(),
    );
    if principal.role.allows(Role::Auditor) {
        for format in ["csv", "json", "ndjson", "pdf", "fhir"] {
            let mut pairs: Vec<(&str, &str)> = vec![("format", format)];
            pairs.extend(params.iter().map(|(n, v)| (n.as_str(), v.as_str())));
            page.exports.push(Link {
                label: format.to_uppercase(),
                href: format!("/console/export?{}", query_string(pairs)),
            });
        }
    }
    render(&page)
}

/// `POST /console/search/save`: saves (or replaces) a named search for this key.
pub async fn save(
    State(state): State<AppState>,
    signed: Signed,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, ConsoleError> {
    signed.check_form(&headers, &form)?;
    let name = form
        .get("name")
        .filter(|n| n.chars().count() <= 100 && !n.chars().any(char::is_control))
        .ok_or_else(|| {
            ConsoleError::bad_request("a saved search needs a name of 1 to 100 characters")
        })?
        .to_owned();
    let params = search_params(&form);
    let mut saved = load_saved(&state, &signed.principal.key_id).await?;
    saved.retain(|s| s.name != name);
    if saved.len() >= MAX_SAVED {
        return Err(ConsoleError::bad_request(format!(
            "at most {MAX_SAVED} saved searches per key; delete one first"
        )));
    }
    saved.push(SavedSearch {
        name: name.clone(),
        params: params.clone(),
    });
    saved.sort_by(|a, b| a.name.cmp(&b.name));
    store_saved(&state, &signed, &saved, "console.search.save", &name).await?;
    let query = query_string(params.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    Ok(Redirect::to(&format!("/console/search?{query}")).into_response())
}

/// `POST /console/search/delete`: deletes a saved search of this key.
pub async fn delete(
    State(state): State<AppState>,
    signed: Signed,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, ConsoleError> {
    signed.check_form(&headers, &form)?;
    let name = form
        .owned("name")
        .ok_or_else(|| ConsoleError::bad_request("which saved search?"))?;
    let mut saved = load_saved(&state, &signed.principal.key_id).await?;
    let before = saved.len();
    saved.retain(|s| s.name != name);
    if saved.len() != before {
        store_saved(&state, &signed, &saved, "console.search.delete", &name).await?;
    }
    Ok(Redirect::to("/console/search").into_response())
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
    fn presets_become_absolute_times_and_blank_filters_vanish() {
        let now = time::macros::datetime!(2026-03-01 12:00 UTC);
        let p = api_params(
            &form(&[("range", "1h"), ("principalId", " "), ("action", "auth.*")]),
            now,
        )
        .expect("params");
        assert_eq!(
            p.get("from").map(String::as_str),
            Some("2026-03-01T11:00:00.000000Z")
        );
        assert_eq!(p.get("action").map(String::as_str), Some("auth.*"));
        assert!(!p.contains_key("principalId"));
        let custom = api_params(
            &form(&[
                ("range", "custom"),
                ("from", "2026-01-01T00:00"),
                ("to", "2026-02-01T00:00"),
            ]),
            now,
        )
        .expect("custom");
        assert_eq!(custom["from"], "2026-01-01T00:00:00Z");
        assert_eq!(custom["to"], "2026-02-01T00:00:00Z");
        assert!(
            api_params(&form(&[("range", "all")]), now)
                .expect("all")
                .is_empty()
        );
        assert!(api_params(&form(&[("range", "forever")]), now).is_err());
        // The API's own parser accepts what the console builds.
        parse_search(&custom).expect("the API parses it");
    }
}
