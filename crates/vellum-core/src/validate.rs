//! Validation of a client event against SPEC §2 and a [`ValidationConfig`].
//! (Being written by a helper; this placeholder keeps the signature.)

use crate::FieldError;
use crate::config::ValidationConfig;
use serde_json::Value;

/// Checks a client event (after sanitization, before defaults are applied) and reports every
/// problem at once, each naming the JSON pointer of the bad value. `encoded_len` is the size in
/// bytes of the JSON the client sent for this event.
pub fn validate(
    event: &Value,
    encoded_len: usize,
    config: &ValidationConfig,
) -> Result<(), Vec<FieldError>> {
    let _ = (event, encoded_len, config);
    Ok(())
}
