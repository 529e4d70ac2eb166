//! The queue's error type and the mapping from Redis errors to it.

use redis::{ErrorKind, RedisError, ServerErrorKind};

/// Everything that can go wrong in the queue, grouped by what the caller should do about it.
///
/// Messages never contain connection URLs or passwords: Redis errors are reduced to their
/// category and detail, and anything that looks like `scheme://user:secret@` is scrubbed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// Redis cannot be reached, did not answer in time, or is loading/failing over. Transient:
    /// the API node answers 503 with `Retry-After`; a worker backs off and tries again.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// The target stream is at its configured length limit, or Redis is out of memory.
    /// Backpressure: answer 503 with `Retry-After`; nothing was enqueued.
    #[error("queue full: {0}")]
    Full(String),
    /// Redis refused a command (wrong type, missing permission, unknown command). Not
    /// transient: it points at a misconfiguration or a bug, so it should be logged loudly.
    #[error("queue command failed: {0}")]
    Command(String),
    /// Redis answered with a reply of an unexpected shape.
    #[error("unexpected reply from Redis: {0}")]
    Protocol(String),
    /// A stored entry (a stream entry or a dead letter) lacks the fields this crate writes;
    /// something other than Vellum wrote to the queue's keys.
    #[error("malformed queue entry {id}: {reason}")]
    Malformed {
        /// The stream entry id.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration or an argument is invalid (bad URL, partition out of range, …).
    #[error("invalid queue configuration: {0}")]
    Config(String),
}

impl QueueError {
    /// Whether retrying later may succeed ([`Unavailable`](Self::Unavailable) and
    /// [`Full`](Self::Full)): the cases an HTTP caller maps to 503 rather than 500.
    pub fn is_transient(&self) -> bool {
        matches!(self, QueueError::Unavailable(_) | QueueError::Full(_))
    }
}

impl From<RedisError> for QueueError {
    fn from(err: RedisError) -> Self {
        classify(&err)
    }
}

/// Maps a Redis error to the variant that tells the caller what to do.
pub(crate) fn classify(err: &RedisError) -> QueueError {
    let text = scrub_credentials(&describe(err));
    match err.kind() {
        ErrorKind::AuthenticationFailed | ErrorKind::InvalidClientConfig => {
            return QueueError::Config(text);
        }
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => return QueueError::Protocol(text),
        _ => {}
    }
    if err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_unrecoverable_error()
    {
        return QueueError::Unavailable(text);
    }
    match err.kind() {
        ErrorKind::ClusterConnectionNotFound
        | ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly,
        ) => QueueError::Unavailable(text),
        _ => match err.code() {
            Some("OOM") | Some(FULL_CODE) => QueueError::Full(text),
            Some("LOADING") | Some("MASTERDOWN") | Some("READONLY") | Some("BUSY") => {
                QueueError::Unavailable(text)
            }
            _ => QueueError::Command(text),
        },
    }
}

/// Error code our enqueue script raises when a stream is at its length limit.
pub(crate) const FULL_CODE: &str = "VELLUMFULL";

/// The server error code of a Redis error, if it carries one (`BUSYGROUP`, `NOGROUP`, …).
pub(crate) fn server_code(err: &RedisError) -> Option<&str> {
    err.code()
}

/// A one-line description of a Redis error without the library's debug formatting.
fn describe(err: &RedisError) -> String {
    let category = err.category();
    match (err.code(), err.detail()) {
        (Some(code), Some(detail)) => format!("{code}: {detail}"),
        (Some(code), None) => code.to_owned(),
        (None, Some(detail)) if !category.is_empty() => format!("{category}: {detail}"),
        _ => err.to_string(),
    }
}

/// Replaces the user-info part of anything that looks like a URL (`scheme://user:pw@host`)
/// with `***`, so a password can never reach a log line or an HTTP error body through us.
pub(crate) fn scrub_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '/' || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// A connection URL with any credentials replaced, for log lines that name the server.
pub fn redact_url(url: &str) -> String {
    scrub_credentials(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_scrubbed() {
        assert_eq!(
            scrub_credentials("cannot reach redis://:hunter2@db:6379/0 now"),
            "cannot reach redis://***@db:6379/0 now"
        );
        assert_eq!(
            scrub_credentials("rediss://user:p@ss@host/1"),
            "rediss://***@host/1"
        );
        assert_eq!(scrub_credentials("redis://host:6379"), "redis://host:6379");
        assert_eq!(scrub_credentials("no url here"), "no url here");
        assert_eq!(
            scrub_credentials("a redis://u:x@h b redis://v:y@k"),
            "a redis://***@h b redis://***@k"
        );
        assert_eq!(redact_url("redis://:pw@h"), "redis://***@h");
    }

    #[test]
    fn io_errors_are_unavailable() {
        let err = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        let q = classify(&err);
        assert!(matches!(q, QueueError::Unavailable(_)), "{q:?}");
        assert!(q.is_transient());
    }

    #[test]
    fn client_config_errors_are_config() {
        let err = match redis::Client::open("redis://:secret@") {
            Err(e) => e,
            Ok(_) => return,
        };
        let q = QueueError::from(err);
        assert!(matches!(q, QueueError::Config(_)), "{q:?}");
        assert!(!q.to_string().contains("secret"));
        assert!(!q.is_transient());
    }
}
