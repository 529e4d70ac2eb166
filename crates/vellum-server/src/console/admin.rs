//! Admin pages: API keys (list, create showing the secret once, revoke), retention policies
//! (view, edit, dry run, apply) and legal holds (list, place, release).
//!
//! Each action calls the function the JSON route calls ([`crate::keys`], [`crate::retention`]),
//! so an organization-bound admin is confined exactly as on the API, and every change commits
//! with its audit event. A created key's secret is rendered once into the answer to the POST
//! (never stored, never logged, never in a URL) and the page is not cached.

use super::{ConsoleError, Form, Nav, QueryForm, Signed, render};
use crate::AppState;
use crate::api::record_read;
use crate::auth::Role;
use crate::keys::{Actor, CreateKeyRequest, KeyInfo};
use crate::retention::PurgeReport;
use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::json;
use vellum_core::retention::{LegalHold, RetentionPolicies};
use vellum_store::LegalHoldRecord;
use zeroize::Zeroizing;

/// A key just created, shown once.
pub struct CreatedView {
    /// Its id.
    pub id: String,
    /// Its secret.
    pub secret: Zeroizing<String>,
}

#[derive(Template)]
#[template(path = "console/keys.html")]
struct KeysPage {
    nav: Nav,
    keys: Vec<KeyInfo>,
    created: Option<CreatedView>,
    roles: &'static [&'static str],
}

async fn keys_view(
    state: &AppState,
    signed: &Signed,
    created: Option<CreatedView>,
) -> Result<Response, ConsoleError> {
    let keys = crate::keys::list(state, &signed.principal, signed.peer, "/console/keys").await?;
    render(&KeysPage {
        nav: signed.nav("keys"),
        keys,
        created,
        roles: &["reader", "auditor", "admin", "ingest"],
    })
}

/// `GET /console/keys` (admin).
pub async fn keys_page(
    State(state): State<AppState>,
    signed: Signed,
) -> Result<Response, ConsoleError> {
    signed
        .authorize_read(&state, "/console/keys", Role::Admin)
        .await?;
    keys_view(&state, &signed, None).await
}

/// `POST /console/keys`: creates a key and shows its secret once.
pub async fn create_key(
    State(state): State<AppState>,
    signed: Signed,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, ConsoleError> {
    signed
        .authorize_form(&state, &headers, &form, "/console/keys", Role::Admin)
        .await?;
    let request = CreateKeyRequest {
        role: form.owned("role").unwrap_or_default(),
        organization_id: form.owned("organizationId"),
        name: form.owned("name"),
    };
    let created = crate::keys::create(
        &state,
        &signed.principal,
        signed.peer,
        "/console/keys",
        request,
    )
    .await?;
    let view = CreatedView {
        id: created.info.id.clone(),
        secret: Zeroizing::new(created.key),
    };
    keys_view(&state, &signed, Some(view)).await
}

/// `POST /console/keys/revoke`.
pub async fn revoke_key(
    State(state): State<AppState>,
    signed: Signed,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, ConsoleError> {
    signed
        .authorize_form(&state, &headers, &form, "/console/keys/revoke", Role::Admin)
        .await?;
    let id = form
        .owned("id")
        .ok_or_else(|| ConsoleError::bad_request("which key?"))?;
    crate::keys::revoke(
        &state,
        &signed.principal,
        signed.peer,
        "/console/keys/revoke",
        &id,
    )
    .await?;
    Ok(Redirect::to("/console/keys").into_response())
}

/// One policy line.
pub struct PolicyRow {
    /// Name.
    pub name: String,
    /// Days kept.
    pub days: u32,
    /// Classifications defaulting to it.
    pub default_for: Vec<String>,
}

#[derive(Template)]
#[template(path = "console/retention.html")]
struct RetentionPage {
    nav: Nav,
    policies: Vec<PolicyRow>,
    policies_json: String,
    holds: Vec<LegalHoldRecord>,
    report: Option<PurgeReport>,
    message: Option<String>,
    unbound: bool,
}

async fn retention_view(
    state: &AppState,
    signed: &Signed,
    report: Option<PurgeReport>,
    message: Option<String>,
    edited: Option<String>,
) -> Result<Response, ConsoleError> {
    let principal = &signed.principal;
    let policies = crate::retention::policies_in_force(state).await?;
    record_read(
        state,
        principal,
        signed.peer,
        "/console/retention",
        None,
        json!({}),
    )
    .await?;
    let holds =
        crate::retention::holds_of(state, principal, signed.peer, "/console/retention").await?;
    let value = serde_json::to_value(&policies).map_err(|e| ConsoleError::internal(&e))?;
    let defaults = value.get("defaults").cloned().unwrap_or_default();
    let rows = value
        .get("policies")
        .and_then(serde_json::Value::as_array)
        .map(|list| {
            list.iter()
                .map(|p| {
                    let name = super::text_at(p, "/name");
                    PolicyRow {
                        days: p
                            .get("retentionDays")
                            .and_then(serde_json::Value::as_u64)
                            .and_then(|d| u32::try_from(d).ok())
                            .unwrap_or_default(),
                        default_for: defaults
                            .as_object()
                            .map(|m| {
                                m.iter()
                                    .filter(|(_, v)| v.as_str() == Some(name.as_str()))
                                    .map(|(k, _)| k.clone())
                                    .collect()
                            })
                            .unwrap_or_default(),
                        name,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    render(&RetentionPage {
        nav: signed.nav("retention"),
        policies: rows,
        policies_json: match edited {
            Some(text) => text,
            None => {
                serde_json::to_string_pretty(&policies).map_err(|e| ConsoleError::internal(&e))?
            }
        },
        holds,
        report,
        message,
        unbound: principal.organization_id.is_none(),
    })
}

/// `GET /console/retention` (admin): policies, holds, purge.
pub async fn retention_page(
    State(state): State<AppState>,
    signed: Signed,
    QueryForm(form): QueryForm,
) -> Result<Response, ConsoleError> {
    signed
        .authorize_read(&state, "/console/retention", Role::Admin)
        .await?;
    let message = match form.get("done") {
        Some("policies") => Some("Policies saved.".to_owned()),
        Some("hold") => Some("Legal hold placed.".to_owned()),
        Some("released") => Some("Legal hold released.".to_owned()),
        _ => None,
    };
    retention_view(&state, &signed, None, message, None).await
}

/// `POST /console/retention/policies`: replaces the policy set (JSON, as `PUT` takes it).
pub async fn save_policies(
    State(state): State<AppState>,
    signed: Signed,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, ConsoleError> {
    signed
        .authorize_form(
            &state,
            &headers,
            &form,
            "/console/retention/policies",
            Role::Admin,
        )
        .await?;
    let text = form.owned("policies").unwrap_or_default();
    let policies: RetentionPolicies = match serde_json::from_str(&text) {
        Ok(p) => p,
        Err(e) => {
            let message = format!("The policies are not valid JSON of the expected shape: {e}");
            return retention_view(&state, &signed, None, Some(message), Some(text)).await;
        }
    };
    if let Err(e) = crate::retention::replace_policies(
        &state,
        &signed.principal,
        signed.peer,
        "/console/retention/policies",
        &policies,
    )
    .await
    {
        let message = ConsoleError::from(e).message;
        return retention_view(&state, &signed, None, Some(message), Some(text)).await;
    }
    Ok(Redirect::to("/console/retention?done=policies").into_response())
}

/// `POST /console/retention/apply`: a dry run, or (confirmed) a purge.
pub async fn apply_retention(
    State(state): State<AppState>,
    signed: Signed,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, ConsoleError> {
    signed
        .authorize_form(
            &state,
            &headers,
            &form,
            "/console/retention/apply",
            Role::Admin,
        )
        .await?;
    crate::retention::require_unbound(&signed.principal)?;
    let dry_run = form.get("mode") != Some("apply");
    if !dry_run && form.get("confirm") != Some("yes") {
        return retention_view(
            &state,
            &signed,
            None,
            Some("Tick the confirmation box to purge expired events.".into()),
            None,
        )
        .await;
    }
    let report = crate::retention::run(
        &state,
        &Actor::http(&signed.principal, signed.peer, "/console/retention/apply"),
        dry_run,
    )
    .await?;
    retention_view(&state, &signed, Some(report), None, None).await
}

/// `POST /console/holds`: places a legal hold.
pub async fn create_hold(
    State(state): State<AppState>,
    signed: Signed,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, ConsoleError> {
    signed
        .authorize_form(&state, &headers, &form, "/console/holds", Role::Admin)
        .await?;
    let hold = LegalHold {
        id: form.owned("id"),
        reason: form.owned("reason").unwrap_or_default(),
        organization_id: form.owned("organizationId"),
        principal_id: form.owned("principalId"),
        patient_id: form.owned("patientId"),
        data_subject_id: form.owned("dataSubjectId"),
    };
    crate::retention::place_hold(
        &state,
        &signed.principal,
        signed.peer,
        "/console/holds",
        hold,
    )
    .await?;
    Ok(Redirect::to("/console/retention?done=hold#holds").into_response())
}

/// `POST /console/holds/release`.
pub async fn release_hold(
    State(state): State<AppState>,
    signed: Signed,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, ConsoleError> {
    signed
        .authorize_form(
            &state,
            &headers,
            &form,
            "/console/holds/release",
            Role::Admin,
        )
        .await?;
    let id = form
        .owned("id")
        .ok_or_else(|| ConsoleError::bad_request("which hold?"))?;
    crate::retention::release(
        &state,
        &signed.principal,
        signed.peer,
        "/console/holds/release",
        &id,
    )
    .await?;
    Ok(Redirect::to("/console/retention?done=released#holds").into_response())
}
