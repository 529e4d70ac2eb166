//! The HTTP error body of SPEC §5: `{"error":{"code","message","details":[{"path","message"}]}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use vellum_core::FieldError;

/// An error answered to a client. `code` is a stable machine-readable string; `details` name
/// the offending fields by JSON pointer (or query parameter name).
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code, e.g. `invalid_event`.
    pub code: &'static str,
    /// One sentence for a human.
    pub message: String,
    /// Per-field problems.
    pub details: Vec<FieldError>,
    /// Seconds to wait before retrying (429/503).
    pub retry_after: Option<u32>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    details: &'a [FieldError],
}

impl ApiError {
    /// Builds an error with no details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
        }
    }

    /// 400 for a malformed request, naming the field.
    pub fn bad_request(path: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            details: vec![FieldError::new(path, message.clone())],
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("{path}: {message}"),
            )
        }
    }

    /// 422 for an event that failed validation.
    pub fn invalid(details: Vec<FieldError>) -> Self {
        let message = match details.len() {
            1 => format!("the event is invalid: {}", details[0]),
            n => format!("the event is invalid ({n} problems)"),
        };
        Self {
            details,
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_event", message)
        }
    }

    /// 503 with `Retry-After`.
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
        }
    }

    /// 503: a dependency (the queue) is unreachable; `Retry-After` says when the circuit
    /// breaker lets the next attempt through.
    pub fn unavailable(message: impl Into<String>, retry_after: std::time::Duration) -> Self {
        let secs = u32::try_from(retry_after.as_secs()).unwrap_or(u32::MAX);
        Self {
            retry_after: Some(secs.max(1)),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }

    /// 429: this key spent its request budget; `Retry-After` says when to come back.
    pub fn rate_limited(retry_after_secs: u32) -> Self {
        Self {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "this API key is over its request rate; retry after the indicated delay",
            )
        }
    }

    /// 409: the request conflicts with the current state (already revoked, already exists).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 500; the cause is logged, not sent.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the server log has the cause",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                details: &self.details,
            },
        })
        .unwrap_or_default();
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<vellum_store::StoreError> for ApiError {
    fn from(e: vellum_store::StoreError) -> Self {
        match e {
            vellum_store::StoreError::BadCursor => {
                Self::bad_request("cursor", "is not a cursor returned by this server")
            }
            vellum_store::StoreError::Unavailable(m) => Self::overloaded(m),
            other => Self::internal(&other),
        }
    }
}
