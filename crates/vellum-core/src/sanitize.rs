//! Sanitization (SPEC §2): control characters removed, NFC normalization, injection signals.
//! (Being written by a helper; this placeholder keeps the signature.)

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What kind of suspicious content a string held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SignalKind {
    /// HTML/JavaScript injection (`<script`, `javascript:`, event-handler attributes).
    Script,
    /// SQL meta patterns (`' OR 1=1`, `UNION SELECT`, `; DROP TABLE`).
    Sql,
}

/// A suspicious value found while sanitizing; raised to the detection rules (SPEC §8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecuritySignal {
    /// JSON pointer of the string.
    pub pointer: String,
    /// What it looked like.
    pub kind: SignalKind,
}

/// Removes C0 control characters (except tab and newline) and NFC-normalizes every string and
/// object key in `event`, in place; returns the injection signals found.
pub fn sanitize(event: &mut Value) -> Vec<SecuritySignal> {
    let _ = event;
    Vec::new()
}
