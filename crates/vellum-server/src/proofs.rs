//! HTTP routes of the verifiable log (SPEC §4–5): public keys, checkpoints, inclusion and
//! consistency proofs, on-demand checkpoints, and `POST /v1/verify`.
//!
//! Proofs are read from the stored Merkle tiles (O(log n) tile reads, see
//! `vellum_core::tiles`), never from the events. Hashes in JSON are lowercase hex, like every
//! other hash Vellum returns; the checkpoint's signed note carries its root in base64 as the
//! C2SP format requires.

use crate::AppState;
use crate::api::{Auth, Params, json_response, record_read, require_read, visible_to};
use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::verification::{VerifyOptions, VerifyReport, known_keys, verify_store};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use utoipa::ToSchema;
use vellum_core::checkpoint::SignedCheckpoint;
use vellum_core::merkle::{Hash, TreeError, consistency_proof, inclusion_proof, leaf_hash};
use vellum_core::tiles::{TileSource, TileSourceError};
use vellum_store::{AuditStore, StoreError};

/// One published checkpoint key.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishedKey {
    /// 8 hex digits: the signed-note key id.
    pub key_id: String,
    /// Always `ed25519`.
    pub algorithm: String,
    /// The raw 32-byte public key, base64.
    pub public_key: String,
    /// Signer name in note signature lines.
    pub name: String,
    /// The signed-note verifier key `<name>+<keyid>+<base64(0x01||key)>` (Go `note.NewVerifier`).
    pub verifier_key: String,
    /// Whether this key signs new checkpoints (older keys stay published for old checkpoints).
    pub current: bool,
}

/// `GET /v1/keys` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeysResponse {
    /// Every checkpoint key ever used, current first.
    pub checkpoint_keys: Vec<PublishedKey>,
}

/// An inclusion proof (`GET /v1/events/{id}/proof`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InclusionProof {
    /// The log.
    pub log_id: String,
    /// The event's `seq`.
    pub leaf_index: u64,
    /// Size of the tree the proof is for.
    pub tree_size: u64,
    /// `SHA-256(0x00 || event hash)`, hex.
    pub leaf_hash: String,
    /// The audit path, leaf to root, hex.
    pub hashes: Vec<String>,
    /// The signed checkpoint of exactly `treeSize`, when there is one (always, unless a
    /// `treeSize` without a checkpoint was asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub checkpoint: Option<SignedCheckpoint>,
}

/// A consistency proof (`GET /v1/logs/{logId}/consistency`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsistencyProof {
    /// The log.
    pub log_id: String,
    /// Smaller tree size.
    pub from: u64,
    /// Larger tree size.
    pub to: u64,
    /// The proof hashes, hex.
    pub hashes: Vec<String>,
}

fn hexes(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(hex::encode).collect()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(&e))?
}

/// Org-bound keys see the shared `default` log and their organization's own log only.
fn require_log_access(principal: &Principal, log_id: &str) -> Result<(), ApiError> {
    match &principal.organization_id {
        Some(org) if log_id != "default" && log_id != org => Err(ApiError::forbidden(format!(
            "this API key may not read log {log_id:?}"
        ))),
        _ => Ok(()),
    }
}

/// Maps a proof-generation error to a response; `size_param` is the query parameter that
/// names the (larger) tree size, so a 400 says which one is wrong in `error.details` as SPEC §5
/// requires (`treeSize` for inclusion, `to` for consistency).
fn tree_error(e: TreeError<TileSourceError<StoreError>>, size_param: &str) -> ApiError {
    match e {
        TreeError::Request(e) => ApiError::bad_request(size_param, e.to_string()),
        TreeError::Source(TileSourceError::Read(e)) => ApiError::from(e),
        // Tiles only hold the tree as far as the log goes: a missing node means the size asked
        // for is larger than the log.
        TreeError::Source(e @ TileSourceError::Missing { .. }) => {
            ApiError::bad_request(size_param, format!("the tree is not that large yet ({e})"))
        }
    }
}

/// Computes an inclusion proof from the stored tiles.
pub(crate) fn inclusion_from_store(
    store: &dyn AuditStore,
    log_id: &str,
    leaf_index: u64,
    tree_size: u64,
) -> Result<Vec<Hash>, ApiError> {
    let mut src = TileSource::new(|k| store.merkle_tile(log_id, k));
    let proof =
        inclusion_proof(&mut src, leaf_index, tree_size).map_err(|e| tree_error(e, "treeSize"))?;
    metrics::histogram!("vellum_proof_tiles_read").record(src.tiles_read() as f64);
    Ok(proof)
}

/// `GET /v1/keys`: the public checkpoint keys.
#[utoipa::path(
    get, path = "/v1/keys", tag = "proofs",
    responses((status = 200, body = KeysResponse)),
    security(("bearer" = []))
)]
pub async fn get_keys(
    State(state): State<AppState>,
    Auth(_principal): Auth,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let current = state.checkpoint_key.clone();
    let keys =
        blocking(move || Ok(known_keys(store.as_ref(), std::slice::from_ref(&current))?)).await?;
    let body = KeysResponse {
        checkpoint_keys: keys
            .iter()
            .map(|k| PublishedKey {
                key_id: k.key_id_hex(),
                algorithm: "ed25519".into(),
                public_key: k.public_key_base64(),
                name: k.name.clone(),
                verifier_key: k.verifier_key(),
                current: *k == state.checkpoint_key,
            })
            .collect(),
    };
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_string(&body).map_err(|e| ApiError::internal(&e))?,
    ))
}

/// `GET /v1/logs/{logId}/checkpoint`: the latest signed checkpoint.
#[utoipa::path(
    get, path = "/v1/logs/{logId}/checkpoint", tag = "proofs",
    params(("logId" = String, Path, description = "The log")),
    responses((status = 200, description = "Latest checkpoint {logId, treeSize, rootHash, timestamp, keyId, signature, note}"), (status = 404)),
    security(("bearer" = []))
)]
pub async fn get_checkpoint(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(log_id): Path<String>,
    Params(params): Params,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    require_log_access(&principal, &log_id)?;
    let as_note = match params.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("note") => true,
        Some(_) => return Err(ApiError::bad_request("format", "must be `json` or `note`")),
    };
    if let Some(name) = params.keys().find(|k| k.as_str() != "format") {
        return Err(ApiError::bad_request(name, "unknown parameter"));
    }
    let store = state.store.clone();
    let id = log_id.clone();
    let checkpoint = blocking(move || Ok(store.latest_checkpoint(&id)?))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("log {log_id:?} has no checkpoint yet")))?;
    if as_note {
        return Ok(axum::response::IntoResponse::into_response((
            StatusCode::OK,
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )],
            checkpoint.note,
        )));
    }
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_string(&checkpoint).map_err(|e| ApiError::internal(&e))?,
    ))
}

/// `POST /v1/logs/{logId}/checkpoint`: sign a checkpoint now (auditor or admin).
#[utoipa::path(
    post, path = "/v1/logs/{logId}/checkpoint", tag = "proofs",
    params(("logId" = String, Path, description = "The log")),
    responses((status = 201, description = "The checkpoint covering every event committed so far"), (status = 404)),
    security(("bearer" = []))
)]
pub async fn post_checkpoint(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(log_id): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(Role::Auditor)?;
    require_log_access(&principal, &log_id)?;
    state
        .ingest
        .checkpoint_now(&log_id)
        .await
        .map_err(|e| ApiError::overloaded(e.to_string()))?;
    let store = state.store.clone();
    let id = log_id.clone();
    let checkpoint = blocking(move || Ok(store.latest_checkpoint(&id)?))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("log {log_id:?} has no events")))?;
    Ok(json_response(
        StatusCode::CREATED,
        serde_json::to_string(&checkpoint).map_err(|e| ApiError::internal(&e))?,
    ))
}

fn parse_size(params: &BTreeMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    params
        .get(name)
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(name, "must be a non-negative integer"))
        })
        .transpose()
}

fn reject_unknown(params: &BTreeMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    match params.keys().find(|k| !known.contains(&k.as_str())) {
        Some(name) => Err(ApiError::bad_request(name, "unknown parameter")),
        None => Ok(()),
    }
}

/// The checkpoint to prove against: exactly `tree_size` if asked (when one exists), else the
/// oldest covering `min_size`, asking the writer for a fresh one when none does yet.
async fn checkpoint_for(
    state: &AppState,
    log_id: &str,
    min_size: u64,
) -> Result<SignedCheckpoint, ApiError> {
    let lookup = |state: &AppState| {
        let store = state.store.clone();
        let id = log_id.to_owned();
        blocking(move || Ok(store.checkpoint_covering(&id, min_size)?))
    };
    if let Some(cp) = lookup(state).await? {
        return Ok(cp);
    }
    state
        .ingest
        .checkpoint_now(log_id)
        .await
        .map_err(|e| ApiError::overloaded(e.to_string()))?;
    lookup(state)
        .await?
        .ok_or_else(|| ApiError::internal(&"no checkpoint covers a committed event"))
}

/// `GET /v1/events/{id}/proof?treeSize=N`: the event's inclusion proof.
#[utoipa::path(
    get, path = "/v1/events/{id}/proof", tag = "proofs",
    params(
        ("id" = String, Path, description = "Event id"),
        ("treeSize" = Option<u64>, Query, description = "Tree size to prove against (default: the oldest checkpoint covering the event)"),
    ),
    responses((status = 200, body = InclusionProof), (status = 400), (status = 404)),
    security(("bearer" = []))
)]
pub async fn get_proof(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    Params(params): Params,
) -> Result<Response, ApiError> {
    require_read(
        &state,
        &principal,
        peer,
        "/v1/events/{id}/proof",
        Role::Reader,
    )
    .await?;
    reject_unknown(&params, &["treeSize"])?;
    let tree_size = parse_size(&params, "treeSize")?;
    let uuid =
        uuid::Uuid::parse_str(&id).map_err(|_| ApiError::bad_request("id", "must be a UUID"))?;
    let store = state.store.clone();
    let who = principal.clone();
    let event = blocking(move || Ok(store.get_event(&uuid)?))
        .await?
        .filter(|e| visible_to(&who, e))
        .ok_or_else(|| ApiError::not_found(format!("no event {id}")))?;
    let hash: [u8; 32] = event
        .hash
        .as_slice()
        .try_into()
        .map_err(|_| ApiError::internal(&"stored hash is not 32 bytes"))?;
    let log_id = event.log_id.clone();
    let (size, checkpoint) = match tree_size {
        Some(n) => {
            if n <= event.seq {
                return Err(ApiError::bad_request(
                    "treeSize",
                    format!(
                        "must be greater than the event's seq {} to include it",
                        event.seq
                    ),
                ));
            }
            let store = state.store.clone();
            let id = log_id.clone();
            let cp = blocking(move || Ok(store.checkpoint_covering(&id, n)?))
                .await?
                .filter(|c| c.tree_size == n);
            (n, cp)
        }
        None => {
            let cp = checkpoint_for(&state, &log_id, event.seq + 1).await?;
            (cp.tree_size, Some(cp))
        }
    };
    let store = state.store.clone();
    let id = log_id.clone();
    let seq = event.seq;
    let hashes = blocking(move || inclusion_from_store(store.as_ref(), &id, seq, size)).await?;
    record_read(
        &state,
        &principal,
        peer,
        "/v1/events/{id}/proof",
        Some(&event_id_of(&event.canonical).unwrap_or_default()),
        json!({"treeSize": size}),
    )
    .await?;
    let body = InclusionProof {
        log_id,
        leaf_index: event.seq,
        tree_size: size,
        leaf_hash: hex::encode(leaf_hash(&hash)),
        hashes: hexes(&hashes),
        checkpoint,
    };
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_string(&body).map_err(|e| ApiError::internal(&e))?,
    ))
}

fn event_id_of(canonical: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(canonical)
        .ok()?
        .get("id")?
        .as_str()
        .map(str::to_owned)
}

/// `GET /v1/logs/{logId}/consistency?from=M&to=N`.
#[utoipa::path(
    get, path = "/v1/logs/{logId}/consistency", tag = "proofs",
    params(
        ("logId" = String, Path, description = "The log"),
        ("from" = u64, Query, description = "Smaller tree size (> 0)"),
        ("to" = Option<u64>, Query, description = "Larger tree size (default: the latest checkpoint)"),
    ),
    responses((status = 200, body = ConsistencyProof), (status = 400)),
    security(("bearer" = []))
)]
pub async fn get_consistency(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(log_id): Path<String>,
    Params(params): Params,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    require_log_access(&principal, &log_id)?;
    reject_unknown(&params, &["from", "to"])?;
    let from =
        parse_size(&params, "from")?.ok_or_else(|| ApiError::bad_request("from", "is required"))?;
    let to = match parse_size(&params, "to")? {
        Some(to) => to,
        None => {
            let store = state.store.clone();
            let id = log_id.clone();
            blocking(move || Ok(store.latest_checkpoint(&id)?))
                .await?
                .map(|c| c.tree_size)
                .ok_or_else(|| ApiError::not_found(format!("log {log_id:?} has no checkpoint")))?
        }
    };
    if from > to {
        return Err(ApiError::bad_request("from", "must not exceed `to`"));
    }
    if from == 0 && to > 0 {
        return Err(ApiError::bad_request(
            "from",
            "must be at least 1 (every tree is consistent with the empty tree)",
        ));
    }
    let store = state.store.clone();
    let id = log_id.clone();
    let hashes = blocking(move || {
        let mut src = TileSource::new(|k| store.merkle_tile(&id, k));
        consistency_proof(&mut src, from, to).map_err(|e| tree_error(e, "to"))
    })
    .await?;
    let body = ConsistencyProof {
        log_id,
        from,
        to,
        hashes: hexes(&hashes),
    };
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_string(&body).map_err(|e| ApiError::internal(&e))?,
    ))
}

/// `POST /v1/verify` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerifyRequest {
    /// Only this log.
    pub log_id: Option<String>,
    /// Report only failures at or after this `seq` (earlier events are still read).
    pub from_seq: Option<u64>,
}

/// `POST /v1/verify`: the same report as `vellum verify` (auditor or admin).
#[utoipa::path(
    post, path = "/v1/verify", tag = "proofs",
    request_body(content = VerifyRequest, description = "Optional {logId, fromSeq}"),
    responses((status = 200, body = VerifyReport)),
    security(("bearer" = []))
)]
pub async fn post_verify(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require_read(&state, &principal, peer, "/v1/verify", Role::Auditor).await?;
    let request: VerifyRequest = if body.iter().all(u8::is_ascii_whitespace) {
        VerifyRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request("", e.to_string()))?
    };
    if let Some(log) = &request.log_id {
        require_log_access(&principal, log)?;
    } else if principal.organization_id.is_some() {
        return Err(ApiError::bad_request(
            "logId",
            "is required for an organization-bound API key",
        ));
    }
    record_read(
        &state,
        &principal,
        peer,
        "/v1/verify",
        None,
        json!({"logId": request.log_id}),
    )
    .await?;
    let store = state.store.clone();
    let keyring = state.keyring.clone();
    let current = state.checkpoint_key.clone();
    let options = VerifyOptions {
        log_id: request.log_id,
        require_signatures: state.config.enable_signatures,
        from_seq: request.from_seq.unwrap_or(0),
    };
    let report: VerifyReport = blocking(move || {
        let keys = known_keys(store.as_ref(), std::slice::from_ref(&current))?;
        Ok(verify_store(
            store.as_ref(),
            Some(keyring.as_ref()),
            &keys,
            &options,
            |_| {},
        )?)
    })
    .await?;
    if !report.ok {
        record_integrity_failure(&state, &principal, &report).await?;
    }
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_string(&report).map_err(|e| ApiError::internal(&e))?,
    ))
}

/// A failed verification is itself an audit event (`integrity.verify.failure`, critical), so the
/// detection rules raise an alert and the log keeps the record of what was found when.
async fn record_integrity_failure(
    state: &AppState,
    principal: &Principal,
    report: &VerifyReport,
) -> Result<(), ApiError> {
    let failed: Vec<Value> = report
        .logs
        .iter()
        .filter(|l| !l.failures.is_empty())
        .map(|l| {
            json!({
                "logId": l.log_id,
                "failures": l.failures.len(),
                "firstSeqs": l.failures.iter().take(20).map(|f| f.seq()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let total: usize = report.logs.iter().map(|l| l.failures.len()).sum();
    let mut event = json!({
        "action": "integrity.verify.failure",
        "status": "failure",
        "severity": "critical",
        "principalId": principal.key_id,
        "principalType": "service",
        "targetResourceType": "AuditLog",
        "dataClassification": "CONFIDENTIAL",
        "outcomeDescription": format!("integrity verification found {total} failures"),
        "details": {"logs": failed, "eventsChecked": report.events},
    });
    if let Some(org) = &principal.organization_id {
        event["organizationId"] = Value::String(org.clone());
    }
    let prepared = state
        .pipeline
        .prepare(event, 0, time::OffsetDateTime::now_utc())
        .map_err(|errors| ApiError::internal(&format!("integrity event invalid: {errors:?}")))?;
    crate::api::submit(
        state,
        vec![crate::ingest::Submission {
            event: prepared,
            idempotency_key: None,
            id: None,
        }],
    )
    .await
    .map(|_| ())
}

/// Attaches a checkpoint and inclusion proof to receipts (`POST /v1/events?wait=checkpoint`).
pub(crate) async fn proofs_for_receipts(
    state: &AppState,
    receipts: &[crate::ingest::Receipt],
) -> Result<Vec<InclusionProof>, ApiError> {
    let store: Arc<dyn AuditStore> = state.store.clone();
    let wanted: Vec<(String, u64, String)> = receipts
        .iter()
        .map(|r| (r.log_id.clone(), r.seq, r.hash.clone()))
        .collect();
    blocking(move || {
        let mut out = Vec::with_capacity(wanted.len());
        for (log_id, seq, hash_hex) in wanted {
            let cp = store
                .checkpoint_covering(&log_id, seq + 1)?
                .ok_or_else(|| {
                    ApiError::internal(&"the commit carried no checkpoint covering the event")
                })?;
            let hashes = inclusion_from_store(store.as_ref(), &log_id, seq, cp.tree_size)?;
            let hash: [u8; 32] = vellum_core::integrity::from_hex(&hash_hex)
                .ok_or_else(|| ApiError::internal(&"receipt hash is not hex"))?;
            out.push(InclusionProof {
                log_id,
                leaf_index: seq,
                tree_size: cp.tree_size,
                leaf_hash: hex::encode(leaf_hash(&hash)),
                hashes: hexes(&hashes),
                checkpoint: Some(cp),
            });
        }
        Ok(out)
    })
    .await
}
