//! What can go wrong when sending audit events, split by what the caller can do about it.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One problem the server found in an event (`details[]` of its error body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldProblem {
    /// JSON pointer of the bad field ("" for the whole event).
    #[serde(default)]
    pub path: String,
    /// What is wrong with it.
    #[serde(default)]
    pub message: String,
}

/// A permanent refusal by the server: sending the same event again cannot succeed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerRejection {
    /// HTTP status (400, 409, 413, 422, …).
    pub status: u16,
    /// The server's error code (`invalid_event`, `too_large`, …).
    pub code: String,
    /// The server's message.
    pub message: String,
    /// Every problem found, by field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldProblem>,
}

impl std::fmt::Display for ServerRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}: {}", self.status, self.code, self.message)?;
        for d in &self.details {
            write!(f, "; {}: {}", d.path, d.message)?;
        }
        Ok(())
    }
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client was configured wrongly (no URL, a malformed API key, …).
    #[error("client configuration: {0}")]
    Config(String),
    /// The event cannot be sent as it is (not a JSON object, not serializable).
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    /// The server refused the event for good; retrying cannot help.
    #[error("the server rejected the event: {0}")]
    Rejected(ServerRejection),
    /// The server refused the API key (401/403). Not the event's fault: guaranteed-delivery
    /// events stay in the spool until the key is fixed.
    #[error("the server refused the API key: {0}")]
    Unauthorized(ServerRejection),
    /// Retries were exhausted on failures that could succeed later (network, 429, 5xx).
    #[error("the server could not be reached after {attempts} attempts: {last}")]
    Unavailable {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The circuit breaker is open: recent calls failed, so this one was not tried.
    #[error("circuit breaker open; next attempt in {retry_after:?}")]
    CircuitOpen {
        /// When the breaker lets a probe through.
        retry_after: Duration,
    },
    /// The local spool failed or is full.
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    /// The client is shutting down.
    #[error("the client is shut down")]
    Closed,
}

impl ClientError {
    /// Whether the same call may succeed later (network, overload, breaker open).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Unavailable { .. } | ClientError::CircuitOpen { .. }
        )
    }
}
