//! API key administration (SPEC §5, §6): `POST/GET /v1/api-keys`, `DELETE /v1/api-keys/{id}`,
//! and the key-change audit events shared with `vellum keys`.
//!
//! A key change and the audit event that records it commit in one transaction (the event goes
//! to the outbox, see [`crate::outbox`]); the route answers only once the writer has appended
//! the event, so a created key is never unrecorded, even across a crash. Keys are generated
//! here, shown once in the response, and stored as SHA-256 only.
//!
//! An admin key bound to an organization administers that organization only: it creates keys
//! bound to it, lists and revokes only them. Otherwise a tenant admin could mint an unbound key
//! and read every organization.

use crate::AppState;
use crate::api::{Params, record_read, require_read};
use crate::auth::{Principal, Role, generate_key, new_key_id};
use crate::error::ApiError;
use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::net::SocketAddr;
use utoipa::ToSchema;
use vellum_store::ApiKeyRecord;

/// Body of `POST /v1/api-keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// `ingest`, `reader`, `auditor` or `admin`.
    pub role: String,
    /// Bind the key to one organization: it never sees another's events.
    pub organization_id: Option<String>,
    /// A label for people ("billing-service ingest").
    pub name: Option<String>,
}

/// A key as listed: everything but its secret (which is never stored) and its hash.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    /// Public id; audit events of this key name it as `principalId`.
    pub id: String,
    /// Its role.
    pub role: String,
    /// Organization it is bound to, if any.
    pub organization_id: Option<String>,
    /// Label.
    pub name: Option<String>,
    /// Creation time.
    pub created_at: String,
    /// Revocation time, if revoked.
    pub revoked_at: Option<String>,
}

impl From<&ApiKeyRecord> for KeyInfo {
    fn from(record: &ApiKeyRecord) -> Self {
        Self {
            id: record.id.clone(),
            role: record.role.clone(),
            organization_id: record.organization_id.clone(),
            name: record.name.clone(),
            created_at: record.created_at.clone(),
            revoked_at: record.revoked_at.clone(),
        }
    }
}

/// Response of `POST /v1/api-keys`: the key's secret appears here and nowhere else.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedKey {
    /// The key's metadata.
    #[serde(flatten)]
    pub info: KeyInfo,
    /// The secret to send as `Authorization: Bearer <key>`; shown once.
    pub key: String,
}

/// Who made a key change, for its audit event.
#[derive(Debug, Clone)]
pub struct Actor {
    /// `principalId` of the event: the admin key's id, or `cli:<user>` for `vellum keys`.
    pub principal_id: String,
    /// `principalType`.
    pub principal_type: &'static str,
    /// The actor's organization, if bound.
    pub organization_id: Option<String>,
    /// Where the change came from (peer IP), if over the network.
    pub ip: Option<String>,
    /// The route or command.
    pub endpoint: String,
}

impl Actor {
    /// The actor of an HTTP request.
    pub fn http(principal: &Principal, peer: SocketAddr, endpoint: &str) -> Self {
        Self {
            principal_id: principal.key_id.clone(),
            principal_type: "service",
            organization_id: principal.organization_id.clone(),
            ip: Some(peer.ip().to_string()),
            endpoint: endpoint.to_owned(),
        }
    }

    /// The operator running `vellum` on the data directory.
    pub fn cli(command: &str) -> Self {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into());
        Self {
            principal_id: format!("cli:{user}"),
            principal_type: "user",
            organization_id: None,
            ip: None,
            endpoint: command.to_owned(),
        }
    }
}

/// The audit event of a key change (`apikey.create`, `apikey.revoke`): names the actor and
/// the key, never the key's secret.
pub fn key_change_event(action: &str, actor: &Actor, key: &ApiKeyRecord) -> Value {
    let mut event = json!({
        "action": action,
        "status": "success",
        "principalId": actor.principal_id,
        "principalType": actor.principal_type,
        "targetResourceType": "ApiKey",
        "targetResourceId": key.id,
        "dataClassification": "CONFIDENTIAL",
        "severity": "medium",
        "technicalContext": {"endpoint": actor.endpoint},
        "details": {
            "role": key.role,
            "keyOrganizationId": key.organization_id,
            "name": key.name,
        },
    });
    if let Some(org) = actor
        .organization_id
        .as_ref()
        .or(key.organization_id.as_ref())
    {
        event["organizationId"] = Value::String(org.clone());
    }
    if let Some(ip) = &actor.ip {
        event["sessionContext"] = json!({"ipAddress": ip});
    }
    event
}

/// Why a key request is refused before anything is stored.
fn check_text(path: &str, value: &Option<String>) -> Result<(), ApiError> {
    if let Some(v) = value
        && (v.trim().is_empty() || v.len() > 200 || v.chars().any(char::is_control))
    {
        return Err(ApiError::bad_request(
            path,
            "must be 1 to 200 characters without control characters",
        ));
    }
    Ok(())
}

/// Builds a new key record from a request (validated), without storing it.
pub fn new_key(
    role: &str,
    organization_id: Option<String>,
    name: Option<String>,
) -> Result<(ApiKeyRecord, zeroize::Zeroizing<String>), ApiError> {
    let role = Role::parse(role).ok_or_else(|| {
        ApiError::bad_request("role", "must be one of ingest, reader, auditor, admin")
    })?;
    check_text("organizationId", &organization_id)?;
    check_text("name", &name)?;
    let generated = generate_key().map_err(|e| ApiError::internal(&e))?;
    let record = ApiKeyRecord {
        id: new_key_id(),
        key_hash: generated.hash,
        role: role.as_str().to_owned(),
        organization_id,
        name,
        created_at: vellum_core::time_fmt::format_server_time(time::OffsetDateTime::now_utc()),
        revoked_at: None,
    };
    Ok((record, generated.secret))
}

fn audit_json(event: &Value) -> Result<String, ApiError> {
    serde_json::to_string(event).map_err(|e| ApiError::internal(&e))
}

/// Creates an API key (admin).
#[utoipa::path(
    post, path = "/v1/api-keys", tag = "admin", request_body = CreateKeyRequest,
    responses((status = 201, body = CreatedKey), (status = 400), (status = 403)),
    security(("bearer" = []))
)]
pub async fn create_key(
    State(state): State<AppState>,
    crate::api::Auth(principal): crate::api::Auth,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<CreateKeyRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    require_read(&state, &principal, peer, "/v1/api-keys", Role::Admin).await?;
    let Json(request) = body.map_err(|e| ApiError::bad_request("", e.body_text()))?;
    let body = create(&state, &principal, peer, "/v1/api-keys", request).await?;
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Creates a key for `principal` (whose admin role the caller has checked), recording the
/// change with `endpoint`: shared by `POST /v1/api-keys` and the console, so both bind an
/// org-bound admin's keys to its organization and audit the same way.
pub(crate) async fn create(
    state: &AppState,
    principal: &Principal,
    peer: SocketAddr,
    endpoint: &str,
    request: CreateKeyRequest,
) -> Result<CreatedKey, ApiError> {
    let organization_id = match (&principal.organization_id, request.organization_id) {
        (Some(own), Some(asked)) if *own != asked => {
            return Err(ApiError::forbidden(format!(
                "this admin key may only create keys of organization {own:?}"
            )));
        }
        (Some(own), _) => Some(own.clone()),
        (None, asked) => asked,
    };
    let (record, secret) = new_key(&request.role, organization_id, request.name)?;
    let event = key_change_event(
        "apikey.create",
        &Actor::http(principal, peer, endpoint),
        &record,
    );
    let audit = vec![audit_json(&event)?];
    let store = state.store.clone();
    let stored = record.clone();
    tokio::task::spawn_blocking(move || store.insert_api_key(&stored, &audit))
        .await
        .map_err(|e| ApiError::internal(&e))??;
    crate::outbox::settle(state).await;
    Ok(CreatedKey {
        info: KeyInfo::from(&record),
        key: secret.to_string(),
    })
}

/// Lists API keys (admin; an org-bound admin sees its organization's keys).
#[utoipa::path(
    get, path = "/v1/api-keys", tag = "admin",
    responses((status = 200, description = "{keys: [KeyInfo]}"), (status = 403)),
    security(("bearer" = []))
)]
pub async fn list_keys(
    State(state): State<AppState>,
    crate::api::Auth(principal): crate::api::Auth,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Params(params): Params,
) -> Result<Response, ApiError> {
    require_read(&state, &principal, peer, "/v1/api-keys", Role::Admin).await?;
    if let Some(name) = params.keys().next() {
        return Err(ApiError::bad_request(
            name,
            "GET /v1/api-keys takes no parameters",
        ));
    }
    let keys = list(&state, &principal, peer, "/v1/api-keys").await?;
    Ok(Json(json!({ "keys": keys })).into_response())
}

/// The keys `principal` administers (an org-bound admin: its organization's), the listing
/// recorded as a read at `endpoint`; shared by `GET /v1/api-keys` and the console.
pub(crate) async fn list(
    state: &AppState,
    principal: &Principal,
    peer: SocketAddr,
    endpoint: &str,
) -> Result<Vec<KeyInfo>, ApiError> {
    let store = state.store.clone();
    let keys = tokio::task::spawn_blocking(move || store.list_api_keys())
        .await
        .map_err(|e| ApiError::internal(&e))??;
    let keys: Vec<KeyInfo> = keys
        .iter()
        .filter(|k| {
            principal.organization_id.is_none() || k.organization_id == principal.organization_id
        })
        .map(KeyInfo::from)
        .collect();
    record_read(
        state,
        principal,
        peer,
        endpoint,
        None,
        json!({"keys": keys.len()}),
    )
    .await?;
    Ok(keys)
}

/// Revokes an API key (admin). Takes effect on every node within the authentication cache's
/// lifetime (5 s), on this node at once.
#[utoipa::path(
    delete, path = "/v1/api-keys/{id}", tag = "admin",
    params(("id" = String, Path, description = "Key id")),
    responses((status = 200, body = KeyInfo), (status = 404), (status = 409), (status = 403)),
    security(("bearer" = []))
)]
pub async fn revoke_key(
    State(state): State<AppState>,
    crate::api::Auth(principal): crate::api::Auth,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_read(&state, &principal, peer, "/v1/api-keys/{id}", Role::Admin).await?;
    let info = revoke(&state, &principal, peer, "/v1/api-keys/{id}", &id).await?;
    Ok(Json(info).into_response())
}

/// Revokes key `id` if `principal` administers it (404 otherwise, 409 when already revoked),
/// recording the change with `endpoint`; shared by `DELETE /v1/api-keys/{id}` and the console.
pub(crate) async fn revoke(
    state: &AppState,
    principal: &Principal,
    peer: SocketAddr,
    endpoint: &str,
    id: &str,
) -> Result<KeyInfo, ApiError> {
    let store = state.store.clone();
    let keys = tokio::task::spawn_blocking(move || store.list_api_keys())
        .await
        .map_err(|e| ApiError::internal(&e))??;
    let Some(mut record) = keys.into_iter().find(|k| {
        k.id == id
            && (principal.organization_id.is_none()
                || k.organization_id == principal.organization_id)
    }) else {
        return Err(ApiError::not_found(format!("no API key {id}")));
    };
    if record.revoked_at.is_some() {
        return Err(ApiError::conflict(format!(
            "API key {id} is already revoked"
        )));
    }
    let at = vellum_core::time_fmt::format_server_time(time::OffsetDateTime::now_utc());
    record.revoked_at = Some(at.clone());
    let event = key_change_event(
        "apikey.revoke",
        &Actor::http(principal, peer, endpoint),
        &record,
    );
    let audit = vec![audit_json(&event)?];
    let store = state.store.clone();
    let key_id = record.id.clone();
    let revoked = tokio::task::spawn_blocking(move || store.revoke_api_key(&key_id, &at, &audit))
        .await
        .map_err(|e| ApiError::internal(&e))??;
    if !revoked {
        return Err(ApiError::conflict(format!(
            "API key {id} is already revoked"
        )));
    }
    state.auth.invalidate();
    crate::outbox::settle(state).await;
    Ok(KeyInfo::from(&record))
}
