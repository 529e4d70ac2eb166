//! Configuration of the event pipeline: validation limits (SPEC §2 "Validation") and redaction
//! rules (SPEC §2 "Redaction"). Every limit is a plain field with a documented default so that
//! `vellum.toml` can set any of them.

use serde::{Deserialize, Serialize};

/// Limits and required fields applied to every client event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ValidationConfig {
    /// Largest accepted event, in bytes of the JSON the client sent (default 64 KiB).
    pub max_event_bytes: usize,
    /// Longest accepted string value, in Unicode scalar values (default 10 000).
    pub max_string_length: usize,
    /// Deepest nesting accepted inside `details`, `changes` and custom fields (default 5;
    /// the container itself is depth 1).
    pub max_custom_field_depth: usize,
    /// Top-level fields (or dotted paths such as `sessionContext.ipAddress`) every event needs.
    pub required_fields: Vec<String>,
    /// Classifications this deployment accepts.
    pub allowed_data_classifications: Vec<String>,
    /// `eventVersion` values this deployment accepts.
    pub allowed_event_versions: Vec<String>,
    /// Extra required fields for events of one classification (after defaulting).
    pub classification_rules: Vec<ClassificationRule>,
    /// Extra required fields for events whose action starts with a prefix.
    pub action_rules: Vec<ActionRule>,
}

/// Fields required when an event has a given classification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClassificationRule {
    /// `PUBLIC`, `INTERNAL`, `CONFIDENTIAL` or `PHI`.
    pub classification: String,
    /// Dotted paths that must be present and non-null.
    pub required_fields: Vec<String>,
}

/// Fields required when an event's action starts with a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionRule {
    /// e.g. `admin.`
    pub action_prefix: String,
    /// Dotted paths that must be present and non-null.
    pub required_fields: Vec<String>,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            max_event_bytes: 64 * 1024,
            max_string_length: 10_000,
            max_custom_field_depth: 5,
            required_fields: vec!["action".into(), "status".into()],
            allowed_data_classifications: crate::model::DataClassification::ALL
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            allowed_event_versions: vec![crate::model::EVENT_VERSION.to_owned()],
            classification_rules: vec![ClassificationRule {
                classification: "PHI".into(),
                required_fields: vec!["principalId".into()],
            }],
            action_rules: vec![ActionRule {
                action_prefix: "admin.".into(),
                required_fields: vec!["organizationId".into()],
            }],
        }
    }
}

/// Which built-in rule set redaction starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedactionPreset {
    /// PHI and credential fields, US SSN, card numbers (Luhn), CPF (the default).
    #[default]
    Healthcare,
    /// Credential and payment fields, card numbers, IBAN, SSN.
    Financial,
    /// Credential fields only.
    Auth,
    /// Nothing but the rules configured explicitly.
    None,
}

/// What a rule does to the value it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedactionMode {
    /// Replace with `[REDACTED]`.
    #[default]
    Mask,
    /// Replace with `tok:` + first 16 hex digits of HMAC-SHA256(redaction key, value), so equal
    /// inputs give equal tokens and searches by the token still work.
    Tokenize,
}

/// Value patterns detectable in free text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PatternKind {
    /// US social security number, `123-45-6789`.
    Ssn,
    /// Payment card number of 13–19 digits (optionally grouped) passing the Luhn check.
    CardNumber,
    /// Brazilian CPF with valid check digits, `123.456.789-09` or 11 digits.
    Cpf,
    /// E-mail address.
    Email,
    /// Phone number (international or North American forms).
    Phone,
    /// Medical record number written as `MRN` followed by an id.
    Mrn,
    /// IBAN with a valid mod-97 check.
    Iban,
}

/// Redaction settings. The effective rule set is the preset's rules plus these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RedactionConfig {
    /// Built-in rule set to start from.
    pub preset: RedactionPreset,
    /// Extra field names (matched case-insensitively, ignoring `_` and `-`) to redact inside
    /// `details`, `changes` and custom fields.
    pub extra_fields: Vec<FieldRule>,
    /// JSON pointers redacted wherever the event has them, typed fields included
    /// (e.g. `/healthcareContext/diagnosisCode`).
    pub pointers: Vec<PointerRule>,
    /// Patterns detected in free text in addition to the preset's.
    pub extra_patterns: Vec<PatternRule>,
}

impl Default for RedactionConfig {
    fn default() -> Self {
        Self {
            preset: RedactionPreset::Healthcare,
            extra_fields: Vec::new(),
            pointers: Vec::new(),
            extra_patterns: Vec::new(),
        }
    }
}

/// Redact values of fields with this name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldRule {
    /// Field name, e.g. `insuranceNumber`.
    pub name: String,
    /// Mask or tokenize.
    #[serde(default)]
    pub mode: RedactionMode,
}

/// Redact the value at this pointer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PointerRule {
    /// RFC 6901 pointer, e.g. `/healthcareContext/diagnosisCode`.
    pub pointer: String,
    /// Mask or tokenize.
    #[serde(default)]
    pub mode: RedactionMode,
}

/// Detect this pattern in free text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PatternRule {
    /// Which pattern.
    pub kind: PatternKind,
    /// Mask or tokenize the matched substring.
    #[serde(default)]
    pub mode: RedactionMode,
}
