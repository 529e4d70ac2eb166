//! A tiny EHR-style service (patients and their observations), as a hospital team would wire
//! Vellum into one of theirs:
//!
//! - [`vellum_client::middleware::AuditLayer`] outermost, with the `healthcare` preset at the
//!   `comprehensive` level: every request is an audit event (who, which patient, which record,
//!   from where, with the redacted request body), including the ones authentication refuses.
//! - `/patients` is **fail-closed**: a patient's data is not released unless its audit event
//!   is durable in the local spool.
//! - The [`vellum_client::Client`] spools to disk and delivers in the background, so a Vellum
//!   outage of hours loses nothing.
//! - The authentication middleware (inside the audit layer) hands the caller to the audit
//!   event through [`AuditContext`]; a break-glass header marks emergency access.
//!
//! The data lives in memory: this is a demonstration of the wiring, not of an EHR.

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use vellum_client::PrincipalType;
use vellum_client::middleware::{
    AuditConfig, AuditContext, AuditLayer, AuditLevel, AuditPrincipal, AuditRecorder,
};

/// A patient record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Patient {
    /// Server-assigned id.
    #[serde(default)]
    pub id: String,
    /// Full name.
    pub name: String,
    /// Date of birth (`YYYY-MM-DD`).
    #[serde(default)]
    pub birth_date: Option<String>,
    /// Social security number: redacted in the audit event, kept here.
    #[serde(default)]
    pub ssn: Option<String>,
}

/// A clinical observation (e.g. a lab value).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    /// Server-assigned id.
    #[serde(default)]
    pub id: String,
    /// LOINC or local code.
    pub code: String,
    /// The value.
    pub value: serde_json::Value,
}

/// The in-memory records.
#[derive(Default)]
pub struct Records {
    patients: Mutex<BTreeMap<String, Patient>>,
    observations: Mutex<BTreeMap<String, Vec<Observation>>>,
}

/// Demo users: bearer token → who they are. A real service verifies a signed token instead.
fn principal_for(token: &str) -> Option<AuditPrincipal> {
    let (id, kind) = match token {
        "dr-ana-token" => ("dr-ana", PrincipalType::Professional),
        "nurse-bo-token" => ("nurse-bo", PrincipalType::Professional),
        "admin-token" => ("it-admin", PrincipalType::Admin),
        _ => return None,
    };
    Some(AuditPrincipal::new(id, kind).organization("clinic-1"))
}

/// Authentication: 401 without a known bearer token; otherwise the caller goes into the audit
/// event. `x-break-glass: <justification>` marks emergency access to a record.
async fn authenticate(request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(principal) = token.and_then(principal_for) else {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "a bearer token is required"})),
        )
            .into_response();
    };
    if let Some(ctx) = request.extensions().get::<AuditContext>() {
        ctx.set_principal(principal);
        if let Some(why) = request
            .headers()
            .get("x-break-glass")
            .and_then(|v| v.to_str().ok())
        {
            ctx.set_emergency_access(why);
        }
    }
    next.run(request).await
}

async fn list_patients(State(records): State<Arc<Records>>) -> Json<Vec<Patient>> {
    Json(records.patients.lock().values().cloned().collect())
}

async fn create_patient(
    State(records): State<Arc<Records>>,
    Extension(audit): Extension<AuditContext>,
    Json(mut patient): Json<Patient>,
) -> (StatusCode, Json<Patient>) {
    patient.id = format!("p-{}", uuid::Uuid::now_v7().simple());
    // The id did not exist when the request arrived: tell the audit event which record it made.
    audit.set_target("Patient", patient.id.clone());
    audit.set_patient(patient.id.clone());
    records
        .patients
        .lock()
        .insert(patient.id.clone(), patient.clone());
    (StatusCode::CREATED, Json(patient))
}

async fn get_patient(
    State(records): State<Arc<Records>>,
    Path(id): Path<String>,
) -> Result<Json<Patient>, StatusCode> {
    records
        .patients
        .lock()
        .get(&id)
        .cloned()
        .map(Json)
        .ok_or(StatusCode::NOT_FOUND)
}

async fn update_patient(
    State(records): State<Arc<Records>>,
    Path(id): Path<String>,
    Json(mut patient): Json<Patient>,
) -> Result<Json<Patient>, StatusCode> {
    let mut patients = records.patients.lock();
    let slot = patients.get_mut(&id).ok_or(StatusCode::NOT_FOUND)?;
    patient.id = id;
    *slot = patient.clone();
    Ok(Json(patient))
}

async fn delete_patient(State(records): State<Arc<Records>>, Path(id): Path<String>) -> StatusCode {
    match records.patients.lock().remove(&id) {
        Some(_) => StatusCode::NO_CONTENT,
        None => StatusCode::NOT_FOUND,
    }
}

async fn list_observations(
    State(records): State<Arc<Records>>,
    Path(id): Path<String>,
) -> Result<Json<Vec<Observation>>, StatusCode> {
    if !records.patients.lock().contains_key(&id) {
        return Err(StatusCode::NOT_FOUND);
    }
    Ok(Json(
        records
            .observations
            .lock()
            .get(&id)
            .cloned()
            .unwrap_or_default(),
    ))
}

async fn add_observation(
    State(records): State<Arc<Records>>,
    Extension(audit): Extension<AuditContext>,
    Path(id): Path<String>,
    Json(mut observation): Json<Observation>,
) -> Result<(StatusCode, Json<Observation>), StatusCode> {
    if !records.patients.lock().contains_key(&id) {
        return Err(StatusCode::NOT_FOUND);
    }
    observation.id = format!("obs-{}", uuid::Uuid::now_v7().simple());
    audit.set_target("Observation", observation.id.clone());
    records
        .observations
        .lock()
        .entry(id)
        .or_default()
        .push(observation.clone());
    Ok((StatusCode::CREATED, Json(observation)))
}

/// The audit configuration of this service.
pub fn audit_config() -> AuditConfig {
    AuditConfig::healthcare()
        .level(AuditLevel::Comprehensive)
        .action_prefix("ehr")
        .organization("clinic-1")
        .fail_closed("/patients")
}

/// The service, audited by `recorder` (a [`vellum_client::Client`] in production).
pub fn app<R: AuditRecorder>(records: Arc<Records>, recorder: R) -> Router {
    Router::new()
        .route("/patients", get(list_patients).post(create_patient))
        .route(
            "/patients/{id}",
            get(get_patient).put(update_patient).delete(delete_patient),
        )
        .route(
            "/patients/{id}/observations",
            get(list_observations).post(add_observation),
        )
        .layer(axum::middleware::from_fn(authenticate))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(records)
        // Outermost, so refused logins and 404s are audited too.
        .layer(AuditLayer::new(recorder, audit_config()))
}
