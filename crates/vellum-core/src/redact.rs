//! Redaction (SPEC §2), applied before hashing so the stored hash covers the redacted form.
//! (Being written by a helper; this placeholder keeps the signature.)

use crate::config::RedactionConfig;
use serde_json::{Map, Value};

/// Error in a redaction configuration (e.g. a malformed pointer).
#[derive(Debug, thiserror::Error)]
#[error("invalid redaction configuration: {0}")]
pub struct RedactionConfigError(pub String);

/// A compiled redaction rule set.
#[derive(Debug)]
pub struct Redactor {
    _config: RedactionConfig,
}

impl Redactor {
    /// Compiles `config`; `token_key` is the HMAC key for `tokenize`.
    pub fn new(config: &RedactionConfig, token_key: &[u8]) -> Result<Self, RedactionConfigError> {
        let _ = token_key;
        Ok(Self {
            _config: config.clone(),
        })
    }

    /// Redacts `event` in place and returns the sorted JSON pointers of the values it changed.
    pub fn redact(&self, event: &mut Map<String, Value>) -> Vec<String> {
        let _ = event;
        Vec::new()
    }
}
