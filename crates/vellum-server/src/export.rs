//! `GET /v1/export`: streaming exports. This issue delivers `format=bundle` (SPEC §4, format in
//! `vellum_core::bundle`); the other formats of SPEC §11 follow in their own issue.
//!
//! Constant memory: a blocking task walks the search results page by page, computes each
//! event's inclusion proof from the stored tiles, and sends NDJSON lines through a small bounded
//! channel that the response body drains, so a slow client slows the walk instead of growing a
//! buffer. The bundle is a consistent snapshot: a fresh checkpoint is taken for each log first,
//! and events committed after it are left out. If the walk fails halfway, the body ends without
//! its trailer line, which every verifier reports as a truncated bundle.

use crate::AppState;
use crate::api::{Auth, parse_search, record_read, scope_query};
use crate::auth::Role;
use crate::error::ApiError;
use crate::proofs::inclusion_from_store;
use crate::verification::known_keys;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use vellum_core::bundle::{BundleHeader, BundleKey, BundleProof, BundleTrailer, FORMAT, VERSION};
use vellum_core::checkpoint::SignedCheckpoint;
use vellum_store::{AuditStore, SearchQuery};

/// Bytes gathered before a chunk is handed to the body.
const CHUNK_BYTES: usize = 64 * 1024;
/// Events per search page while exporting.
const PAGE: usize = 1000;

/// A response body fed by a bounded channel.
struct ChannelBody(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures_core::Stream for ChannelBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// Streams selected events in an export format.
#[utoipa::path(
    get, path = "/v1/export", tag = "proofs",
    params(
        ("format" = String, Query, description = "`bundle`: NDJSON with checkpoints, inclusion proofs and public keys"),
        crate::api::SearchParams,
    ),
    responses((status = 200, description = "application/x-ndjson stream"), (status = 400)),
    security(("bearer" = []))
)]
pub async fn get_export(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(mut params): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    match params.remove("format").as_deref() {
        Some("bundle") => {}
        None => return Err(ApiError::bad_request("format", "is required (`bundle`)")),
        Some(other) => {
            return Err(ApiError::bad_request(
                "format",
                format!("`{other}` is not supported yet; use `bundle`"),
            ));
        }
    }
    let mut query = parse_search(&params)?;
    scope_query(&principal, &mut query)?;
    record_read(
        &state,
        &principal,
        peer,
        "/v1/export",
        None,
        json!({"format": "bundle", "query": params}),
    )
    .await?;

    // Snapshot: a checkpoint covering everything committed so far, per visible log.
    let store = state.store.clone();
    let mut logs = tokio::task::spawn_blocking(move || store.log_ids())
        .await
        .map_err(|e| ApiError::internal(&e))??;
    if let Some(org) = &principal.organization_id {
        logs.retain(|l| l == "default" || l == org);
    }
    let mut checkpoints = Vec::new();
    for log in &logs {
        state
            .ingest
            .checkpoint_now(log)
            .await
            .map_err(|e| ApiError::overloaded(e.to_string()))?;
        let store = state.store.clone();
        let id = log.clone();
        if let Some(cp) = tokio::task::spawn_blocking(move || store.latest_checkpoint(&id))
            .await
            .map_err(|e| ApiError::internal(&e))??
        {
            checkpoints.push(cp);
        }
    }
    let store = state.store.clone();
    let current = state.checkpoint_key.clone();
    let keys = tokio::task::spawn_blocking(move || {
        known_keys(store.as_ref(), std::slice::from_ref(&current))
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    let header = BundleHeader {
        format: FORMAT.into(),
        version: VERSION,
        created_at: vellum_core::pipeline::server_now().1,
        query: serde_json::to_value(&params).unwrap_or_default(),
        public_keys: keys
            .iter()
            .filter(|k| checkpoints.iter().any(|c| c.key_id == k.key_id_hex()))
            .map(BundleKey::from_key)
            .collect(),
        checkpoints,
    };

    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = write_bundle(store, header, query, &tx) {
            tracing::warn!(error = %e, "bundle export stopped before its end");
            let _ = tx.blocking_send(Err(std::io::Error::other(e)));
        }
    });
    let mut response = Body::from_stream(ChannelBody(rx)).into_response();
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"vellum-bundle.ndjson\""),
    );
    Ok(response)
}

/// Walks the selection and sends the bundle's lines; an `Err` means the stream was cut.
fn write_bundle(
    store: Arc<dyn AuditStore>,
    header: BundleHeader,
    mut query: SearchQuery,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), String> {
    let sizes: HashMap<String, SignedCheckpoint> = header
        .checkpoints
        .iter()
        .map(|c| (c.log_id.clone(), c.clone()))
        .collect();
    let mut buffer = serde_json::to_string(&header).map_err(|e| e.to_string())?;
    buffer.push('\n');
    let flush = |buffer: &mut String| -> Result<(), String> {
        let chunk = Bytes::from(std::mem::take(buffer));
        tx.blocking_send(Ok(chunk))
            .map_err(|_| "the client went away".to_owned())
    };
    query.limit = PAGE;
    query.cursor = None;
    let mut written = 0u64;
    loop {
        let page = store.search(&query).map_err(|e| e.to_string())?;
        for event in &page.events {
            let Some(cp) = sizes.get(&event.log_id) else {
                continue;
            };
            if event.seq >= cp.tree_size {
                continue; // committed after the snapshot checkpoint
            }
            let hashes =
                inclusion_from_store(store.as_ref(), &event.log_id, event.seq, cp.tree_size)
                    .map_err(|e| format!("proof for seq {}: {e:?}", event.seq))?;
            // Splice the stored text instead of re-serializing it: the event goes out byte
            // for byte as stored (plus hash and signature).
            let proof = BundleProof {
                log_id: event.log_id.clone(),
                leaf_index: event.seq,
                tree_size: cp.tree_size,
                hashes: hashes.iter().map(hex::encode).collect(),
            };
            buffer.push_str("{\"event\":");
            buffer.push_str(&event.to_api_json());
            buffer.push_str(",\"proof\":");
            buffer.push_str(&serde_json::to_string(&proof).map_err(|e| e.to_string())?);
            buffer.push_str("}\n");
            written += 1;
            if buffer.len() >= CHUNK_BYTES {
                flush(&mut buffer)?;
            }
        }
        match page.next_cursor {
            Some(c) => query.cursor = Some(c),
            None => break,
        }
    }
    let trailer = BundleTrailer {
        end: true,
        events: written,
    };
    buffer.push_str(&serde_json::to_string(&trailer).map_err(|e| e.to_string())?);
    buffer.push('\n');
    flush(&mut buffer)
}
