//! Errors shared by the validation pipeline.

use serde::{Deserialize, Serialize};

/// One problem with one field of a client event. `path` is the RFC 6901 JSON pointer of the
/// offending value (empty string for the whole event), so that a client can find it without
/// parsing the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// RFC 6901 JSON pointer to the offending value, e.g. `/sessionContext/ipAddress`.
    pub path: String,
    /// Human-readable explanation, e.g. `must be one of attempt, success, failure, warning`.
    pub message: String,
}

impl FieldError {
    /// Builds an error for the value at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "(event): {}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Escapes one reference token of a JSON pointer (RFC 6901 §3: `~` → `~0`, `/` → `~1`).
pub fn escape_pointer_token(token: &str) -> std::borrow::Cow<'_, str> {
    if token.contains(['~', '/']) {
        std::borrow::Cow::Owned(token.replace('~', "~0").replace('/', "~1"))
    } else {
        std::borrow::Cow::Borrowed(token)
    }
}

/// Appends one reference token to a JSON pointer.
pub fn child_pointer(parent: &str, token: &str) -> String {
    let escaped = escape_pointer_token(token);
    let mut out = String::with_capacity(parent.len() + 1 + escaped.len());
    out.push_str(parent);
    out.push('/');
    out.push_str(&escaped);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_tokens_are_escaped() {
        assert_eq!(child_pointer("/details", "a/b~c"), "/details/a~1b~0c");
        assert_eq!(child_pointer("", "action"), "/action");
    }
}
