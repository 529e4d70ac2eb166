//! Vellum's Rust SDK (SPEC §9): get audit events from an application to Vellum without losing
//! them.
//!
//! - [`Client`]: `log` (batched within a short window, waits for the server's receipt),
//!   `log_batch` (one request), and `log_with_guaranteed_delivery` (fsynced to a local
//!   [`spool`] first, delivered in the background in priority order, survives crashes and
//!   restarts). Every event carries an idempotency key, so a retry never writes a second
//!   event. Retries use exponential backoff with full jitter and only happen on failures that
//!   can succeed later; a [circuit breaker](BreakerState) stops hammering a server that is down.
//! - [`verify`]: recompute an event's hash, check its HMAC, verify an inclusion proof against
//!   a checkpoint and the checkpoint's Ed25519 signature, offline.
//! - [`middleware`]: a tower layer that records every HTTP request of an axum/hyper service.

mod breaker;
mod client;
mod error;
pub mod event;
pub mod middleware;
mod retry;
pub mod spool;
mod tls;
mod transport;
pub mod verify;

pub use breaker::{BreakerConfig, BreakerState};
pub use client::{Client, ClientBuilder, ClientStats, ReplayReport, Spooled};
pub use error::{ClientError, FieldProblem, ServerRejection};
pub use event::{
    Changes, DataClassification, Delivery, Event, GdprContext, HealthcareContext, PrincipalType,
    Priority, SessionContext, Severity, Status, TechnicalContext,
};
pub use retry::RetryPolicy;
pub use spool::{Spool, SpoolConfig, SpoolError};
pub use transport::Receipt;
