//! Reports, the accounting of disclosures and exports, all downloads produced by the API's own
//! functions ([`crate::reports::report_response`], [`crate::reports::disclosures_response`],
//! [`crate::export::export_response`]): the same files, scoping and audit events, recorded with
//! `/console/…` endpoints.

use super::{ConsoleError, Form, Nav, QueryForm, Signed, form_time, render};
use crate::AppState;
use crate::auth::Role;
use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use std::collections::BTreeMap;

/// Report types offered.
pub const REPORT_TYPES: &[&str] = &["HIPAA", "GDPR", "SOX", "LGPD", "GENERAL"];

#[derive(Template)]
#[template(path = "console/reports.html")]
struct ReportsPage {
    nav: Nav,
    types: &'static [&'static str],
    from: String,
    to: String,
}

/// `GET /console/reports`: the forms (auditor).
pub async fn page(State(state): State<AppState>, signed: Signed) -> Result<Response, ConsoleError> {
    signed
        .authorize_read(&state, "/console/reports", Role::Auditor)
        .await?;
    let today = time::OffsetDateTime::now_utc().date();
    let month_ago = today - time::Duration::days(30);
    render(&ReportsPage {
        nav: signed.nav("reports"),
        types: REPORT_TYPES,
        from: month_ago.to_string(),
        to: today.to_string(),
    })
}

/// `POST /console/reports`: generates a report and sends it as a download.
pub async fn generate(
    State(state): State<AppState>,
    signed: Signed,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, ConsoleError> {
    signed
        .authorize_form(&state, &headers, &form, "/console/reports", Role::Auditor)
        .await?;
    let need = |name: &str| {
        form.get(name)
            .ok_or_else(|| ConsoleError::bad_request(format!("{name} is required")))
    };
    let request = crate::reports::ReportRequest {
        report_type: need("type")?.to_owned(),
        from: form_time(need("from")?, false)?,
        to: form_time(need("to")?, true)?,
        format: form.owned("format"),
        organization_id: form.owned("organizationId"),
    };
    let mut response = crate::reports::report_response(
        &state,
        &signed.principal,
        signed.peer,
        "/console/reports",
        &request,
    )
    .await?;
    attach(&mut response, "vellum-report.json");
    Ok(response)
}

/// Makes a JSON answer a download too (the PDF one already is).
fn attach(response: &mut Response, file_name: &str) {
    use axum::http::{HeaderValue, header};
    if !response.headers().contains_key(header::CONTENT_DISPOSITION)
        && let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\""))
    {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, v);
    }
}

/// `GET /console/reports/disclosures?patientId=&from=&to=&format=`: the accounting of
/// disclosures for one patient, as a download.
pub async fn disclosures(
    State(state): State<AppState>,
    signed: Signed,
    QueryForm(form): QueryForm,
) -> Result<Response, ConsoleError> {
    signed
        .authorize_read(&state, "/console/reports/disclosures", Role::Auditor)
        .await?;
    let mut params = BTreeMap::new();
    if let Some(p) = form.get("patientId") {
        params.insert("patientId".to_owned(), p.to_owned());
    }
    if let Some(f) = form.get("from") {
        params.insert("from".to_owned(), form_time(f, false)?);
    }
    if let Some(t) = form.get("to") {
        params.insert("to".to_owned(), form_time(t, true)?);
    }
    if let Some(f) = form.get("format") {
        params.insert("format".to_owned(), f.to_owned());
    }
    let mut response = crate::reports::disclosures_response(
        &state,
        &signed.principal,
        signed.peer,
        "/console/reports/disclosures",
        &params,
    )
    .await?;
    attach(&mut response, "vellum-disclosures.json");
    Ok(response)
}

/// `GET /console/export?format=…&<search filters>`: a streamed export of a search (auditor).
pub async fn export(
    State(state): State<AppState>,
    signed: Signed,
    QueryForm(form): QueryForm,
) -> Result<Response, ConsoleError> {
    signed
        .authorize_read(&state, "/console/export", Role::Auditor)
        .await?;
    let mut params = BTreeMap::new();
    for (name, value) in &form.0 {
        if value.trim().is_empty() {
            continue;
        }
        if params
            .insert(name.clone(), value.trim().to_owned())
            .is_some()
        {
            return Err(ConsoleError::bad_request(format!(
                "{name} is given more than once"
            )));
        }
    }
    Ok(crate::export::export_response(
        &state,
        &signed.principal,
        signed.peer,
        "/console/export",
        params,
    )
    .await?)
}
