//! The audit event of SPEC §2: its fields, its enumerations, and which fields belong to the
//! server.
//!
//! On the ingest path an event is handled as a JSON object (`serde_json::Map`), because the
//! stored form must be exactly what the client sent plus server fields, including custom
//! top-level keys; the typed [`EventView`] is for reading stored events back.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The event schema version this server writes when the client sends none.
pub const EVENT_VERSION: &str = "1.0";

/// Fields only the server may set (SPEC §2). A client event carrying any of them is refused
/// with 422, so a client can never forge a sequence number, a hash or a redaction record.
pub const SERVER_FIELDS: &[&str] = &[
    "id",
    "logId",
    "seq",
    "receivedAt",
    "prevHash",
    "hash",
    "keyId",
    "signature",
    "redactions",
    "decrypted",
    "sealed",
    "purge",
];

/// Fields excluded from the canonical (hashed) form (SPEC §3).
pub const UNHASHED_FIELDS: &[&str] = &["hash", "signature", "decrypted"];

/// The typed top-level fields of SPEC §2. Any other top-level key is a custom field.
pub const TYPED_FIELDS: &[&str] = &[
    "action",
    "status",
    "timestamp",
    "principalId",
    "principalType",
    "organizationId",
    "targetResourceType",
    "targetResourceId",
    "outcomeDescription",
    "dataClassification",
    "retentionPolicy",
    "severity",
    "correlationId",
    "sessionContext",
    "gdprContext",
    "healthcareContext",
    "technicalContext",
    "changes",
    "details",
    "eventVersion",
    "idempotencyKey",
];

/// Whether `key` is one of [`SERVER_FIELDS`]. A `match` rather than a scan of the list: it
/// runs for every top-level key of every event, and the compiler turns it into a dispatch on
/// length and bytes instead of up to ten string comparisons.
pub fn is_server_field(key: &str) -> bool {
    matches!(
        key,
        "id" | "logId"
            | "seq"
            | "receivedAt"
            | "prevHash"
            | "hash"
            | "keyId"
            | "signature"
            | "redactions"
            | "decrypted"
            | "sealed"
            | "purge"
    )
}

/// Whether `key` is one of [`TYPED_FIELDS`] (a `match`, for the same reason as
/// [`is_server_field`]).
pub fn is_typed_field(key: &str) -> bool {
    matches!(
        key,
        "action"
            | "status"
            | "timestamp"
            | "principalId"
            | "principalType"
            | "organizationId"
            | "targetResourceType"
            | "targetResourceId"
            | "outcomeDescription"
            | "dataClassification"
            | "retentionPolicy"
            | "severity"
            | "correlationId"
            | "sessionContext"
            | "gdprContext"
            | "healthcareContext"
            | "technicalContext"
            | "changes"
            | "details"
            | "eventVersion"
            | "idempotencyKey"
    )
}

/// Outcome of the audited action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The action was attempted; its outcome is not known yet.
    Attempt,
    /// The action succeeded.
    Success,
    /// The action failed.
    Failure,
    /// The action succeeded with a caveat.
    Warning,
}

impl Status {
    /// Every status, in wire spelling.
    pub const ALL: &'static [&'static str] = &["attempt", "success", "failure", "warning"];

    /// Wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Attempt => "attempt",
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Warning => "warning",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "attempt" => Some(Self::Attempt),
            "success" => Some(Self::Success),
            "failure" => Some(Self::Failure),
            "warning" => Some(Self::Warning),
            _ => None,
        }
    }
}

/// Who performed the action.
pub const PRINCIPAL_TYPES: &[&str] = &[
    "user",
    "service",
    "system",
    "patient",
    "professional",
    "admin",
    "ai_agent",
];

/// Sensitivity of the data the event is about; drives retention and redaction defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DataClassification {
    /// Public information.
    Public,
    /// Internal business data (the default).
    Internal,
    /// Confidential business data.
    Confidential,
    /// Protected health information (HIPAA).
    Phi,
}

impl DataClassification {
    /// Every classification, in wire spelling.
    pub const ALL: &'static [&'static str] = &["PUBLIC", "INTERNAL", "CONFIDENTIAL", "PHI"];

    /// Wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "PUBLIC",
            Self::Internal => "INTERNAL",
            Self::Confidential => "CONFIDENTIAL",
            Self::Phi => "PHI",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "PUBLIC" => Some(Self::Public),
            "INTERNAL" => Some(Self::Internal),
            "CONFIDENTIAL" => Some(Self::Confidential),
            "PHI" => Some(Self::Phi),
            _ => None,
        }
    }
}

/// How serious the event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Routine.
    Low,
    /// Worth a look.
    Medium,
    /// Needs attention.
    High,
    /// Needs attention now.
    Critical,
}

impl Severity {
    /// Every severity, in wire spelling.
    pub const ALL: &'static [&'static str] = &["low", "medium", "high", "critical"];

    /// Wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }

    /// The severity the server assigns when the client sends none: failures of security-relevant
    /// actions are high, other failures and warnings medium, emergency ("break-glass") and admin
    /// changes medium, everything else low.
    pub fn derive(action: &str, status: &str, emergency_access: bool) -> Self {
        let security = action.starts_with("auth.")
            || action.starts_with("security.")
            || action.starts_with("admin.")
            || action.starts_with("integrity.");
        match status {
            "failure" if security => Self::High,
            "failure" | "warning" => Self::Medium,
            _ if emergency_access => Self::High,
            _ if action.starts_with("admin.") || action.starts_with("security.") => Self::Medium,
            _ => Self::Low,
        }
    }
}

/// The retention policy an event gets when the client names none (SPEC §7 defaults).
pub fn default_retention_policy(classification: &str) -> &'static str {
    match classification {
        "PHI" => "hipaa-6-years",
        "CONFIDENTIAL" => "financial",
        "PUBLIC" => "system",
        _ => "administrative",
    }
}

/// A stored event read back, typed for the fields the server and its tools use. Unknown and
/// custom fields stay in `other`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    /// UUIDv7 assigned by the server.
    pub id: String,
    /// The log the event belongs to.
    pub log_id: String,
    /// 0-based position in its log.
    pub seq: u64,
    /// Server time of acceptance.
    pub received_at: String,
    /// `hash` of the event at `seq - 1`, or 64 zeros.
    pub prev_hash: String,
    /// Dotted verb.
    pub action: String,
    /// Outcome.
    pub status: String,
    /// When it happened.
    pub timestamp: String,
    /// Who.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
    /// Tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<String>,
    /// Everything else.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// Reads a string at a JSON pointer, if present and a string.
pub fn str_at<'a>(event: &'a Value, pointer: &str) -> Option<&'a str> {
    event.pointer(pointer).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_derivation() {
        assert_eq!(
            Severity::derive("auth.login.failure", "failure", false),
            Severity::High
        );
        assert_eq!(
            Severity::derive("fhir.patient.read", "failure", false),
            Severity::Medium
        );
        assert_eq!(
            Severity::derive("fhir.patient.read", "success", true),
            Severity::High
        );
        assert_eq!(
            Severity::derive("admin.config.change", "success", false),
            Severity::Medium
        );
        assert_eq!(
            Severity::derive("fhir.patient.read", "success", false),
            Severity::Low
        );
    }

    /// The `match`-based membership tests agree with the published lists.
    #[test]
    fn field_predicates_match_the_lists() {
        for name in SERVER_FIELDS {
            assert!(is_server_field(name) && !is_typed_field(name), "{name}");
        }
        for name in TYPED_FIELDS {
            assert!(is_typed_field(name) && !is_server_field(name), "{name}");
        }
        for name in ["", "Action", "details2", "custom", "ids", "i"] {
            assert!(!is_typed_field(name) && !is_server_field(name), "{name}");
        }
    }

    #[test]
    fn classification_round_trips() {
        for name in DataClassification::ALL {
            let parsed = DataClassification::parse(name).expect("known");
            assert_eq!(parsed.as_str(), *name);
        }
        assert!(DataClassification::parse("phi").is_none());
    }
}
