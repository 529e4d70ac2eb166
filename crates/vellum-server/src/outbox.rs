//! Drains the outbox into the log: audit events of changes committed outside the writer (key
//! changes from `vellum keys` or the key routes) become ordinary events of the log.
//!
//! Ack rule: an outbox entry is removed only after the writer acknowledged its event as
//! durable. Each is submitted with the idempotency key `outbox:<id>`, so if the process dies
//! between the append and the removal, the next drain gets the first receipt back instead of
//! appending a second event. Entries are drained in id order, one drain at a time.
//!
//! Who drains: the running server (at start, every second, and at once after a key route), or,
//! when no server holds the data directory, the `vellum` command that queued the entries
//! ([`drain_offline`]), which then is the one writer for the moment it runs.

use crate::AppState;
use crate::error::ApiError;
use crate::ingest::{IngestHandle, Submission, SubmitError};
use std::sync::Arc;
use vellum_core::pipeline::Pipeline;
use vellum_store::AuditStore;

/// Entries read per round.
const ROUND: usize = 500;

/// Why a drain stopped.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] vellum_store::StoreError),
    /// The writer did not take the events (overloaded, stopping, or a failed commit).
    #[error("the writer did not append the outbox events: {0}")]
    Writer(String),
}

/// Appends every queued outbox event through `ingest`; returns how many were appended.
pub async fn drain_with(
    store: &Arc<dyn AuditStore>,
    pipeline: &Pipeline,
    ingest: &IngestHandle,
) -> Result<usize, DrainError> {
    let mut total = 0;
    loop {
        let reader = store.clone();
        let entries = tokio::task::spawn_blocking(move || reader.outbox(ROUND))
            .await
            .map_err(|e| DrainError::Writer(e.to_string()))??;
        if entries.is_empty() {
            return Ok(total);
        }
        let now = time::OffsetDateTime::now_utc();
        let mut submissions = Vec::with_capacity(entries.len());
        let mut ids = Vec::with_capacity(entries.len());
        for entry in &entries {
            ids.push(entry.id);
            let prepared = serde_json::from_str(&entry.event)
                .map_err(|e| format!("{e}"))
                .and_then(|value| {
                    pipeline
                        .prepare(value, 0, now)
                        .map_err(|e| format!("{e:?}"))
                });
            match prepared {
                Ok(event) => submissions.push(Submission {
                    event,
                    idempotency_key: Some(format!("outbox:{}", entry.id)),
                    id: None,
                }),
                // Written by this program, so this is a bug, not input: keep the entry out of
                // the way of the others and say so loudly.
                Err(error) => {
                    tracing::error!(id = entry.id, %error, "outbox entry is not a valid event; dropped")
                }
            }
        }
        let count = submissions.len();
        if count > 0 {
            match ingest.submit_with(submissions, false, None).await {
                Ok(Ok(_receipts)) => {}
                Ok(Err(commit)) => return Err(DrainError::Writer(commit.to_string())),
                Err(SubmitError::Full) => return Err(DrainError::Writer("queue full".into())),
                Err(SubmitError::Stopped) => return Err(DrainError::Writer("stopped".into())),
                Err(e @ SubmitError::Unavailable { .. }) => {
                    return Err(DrainError::Writer(e.to_string()));
                }
            }
        }
        let remover = store.clone();
        tokio::task::spawn_blocking(move || remover.remove_outbox(&ids))
            .await
            .map_err(|e| DrainError::Writer(e.to_string()))??;
        total += count;
    }
}

/// Appends a change's queued audit event before a route answers. The change and its record
/// already committed together, so if the writer cannot take it now the periodic drain will;
/// the change itself must still be reported (a created key's secret exists only in that
/// response), so a failure here is logged, not returned.
pub async fn settle(state: &AppState) {
    if let Err(e) = drain(state).await {
        tracing::warn!(error = ?e, "change stored; its audit event stays queued");
    }
}

/// Drains the outbox of a running server, one drain at a time; used by the key routes before
/// they answer (so the change's record is durable when the client hears of it).
pub async fn drain(state: &AppState) -> Result<usize, ApiError> {
    let _one_at_a_time = state.outbox_lock.lock().await;
    drain_with(&state.store, &state.pipeline, &state.ingest)
        .await
        .map_err(|e| ApiError::overloaded(format!("outbox drain: {e}")))
}
