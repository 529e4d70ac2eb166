//! The path of one event through the pure core: raw client JSON → sanitized, validated,
//! defaulted, redacted → [`PreparedEvent`] (canonical members, computed in parallel by request
//! tasks) → [`seal`] (server fields spliced in, hashed, signed, chained — done by the single
//! writer of a log, in sequence order).

use crate::FieldError;
use crate::canonical::{CanonicalMembers, MembersBuilder, write_string};
use crate::config::ValidationConfig;
use crate::integrity::{HmacKeyring, event_hash};
use crate::model::{EVENT_VERSION, Severity, default_retention_policy};
use crate::redact::Redactor;
use crate::sanitize::{SecuritySignal, sanitize};
use crate::time_fmt::format_server_time;
use crate::validate::validate;
use serde_json::{Map, Value};
use std::borrow::Cow;
use time::OffsetDateTime;

/// The configured event pipeline: validation limits and compiled redaction rules.
#[derive(Debug)]
pub struct Pipeline {
    validation: ValidationConfig,
    redactor: Redactor,
}

/// An event that passed validation, with its top-level members already canonical. Everything
/// but the server's sequencing fields is final.
#[derive(Debug, Clone)]
pub struct PreparedEvent {
    /// Canonical members of the stored event, minus the sequencing fields.
    pub members: CanonicalMembers,
    /// The per-event `idempotencyKey`, if the client sent one.
    pub idempotency_key: Option<String>,
    /// The tenant, used to pick the log when logs are per organization.
    pub organization_id: Option<String>,
    /// Pointers of redacted values (also stored in the event as `redactions`).
    pub redactions: Vec<String>,
    /// Injection-looking values found by sanitization, for the detection rules.
    pub signals: Vec<SecuritySignal>,
}

/// The fields the writer assigns when it sequences an event.
#[derive(Debug, Clone, Copy)]
pub struct Sequencing<'a> {
    /// UUIDv7 of the event, as text.
    pub id: &'a str,
    /// Log the event is appended to.
    pub log_id: &'a str,
    /// Position in that log.
    pub seq: u64,
    /// Server acceptance time, formatted by [`format_server_time`].
    pub received_at: &'a str,
    /// Hash of the event at `seq - 1` (zeros at 0).
    pub prev_hash: &'a [u8; 32],
}

/// A sequenced event: the exact stored text, its hash and its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedEvent {
    /// RFC 8785 text of the stored event without `hash` and `signature`: what is hashed,
    /// signed and stored, byte for byte.
    pub canonical: String,
    /// SHA-256 of `canonical`.
    pub hash: [u8; 32],
    /// `(keyId, HMAC-SHA256 of canonical)` when signatures are on.
    pub signature: Option<(String, [u8; 32])>,
}

/// The last step of [`Pipeline::prepare_sealed`]: may move members of the event (after
/// validation, defaults and redaction) into a sealed form before canonicalization.
pub type Sealer<'a> = dyn FnMut(&mut serde_json::Map<String, Value>) -> Result<(), FieldError> + 'a;

impl Pipeline {
    /// Builds a pipeline from its validation limits and compiled redaction rules.
    pub fn new(validation: ValidationConfig, redactor: Redactor) -> Self {
        Self {
            validation,
            redactor,
        }
    }

    /// The validation limits in force.
    pub fn validation(&self) -> &ValidationConfig {
        &self.validation
    }

    /// Runs sanitization, validation, defaults and redaction on one client event and
    /// canonicalizes its members. `encoded_len` is the size of the event's JSON as sent;
    /// `now` fills `timestamp` when the client sent none.
    pub fn prepare(
        &self,
        event: Value,
        encoded_len: usize,
        now: OffsetDateTime,
    ) -> Result<PreparedEvent, Vec<FieldError>> {
        self.prepare_sealed(event, encoded_len, now, &mut |_| Ok(()))
    }

    /// [`Pipeline::prepare`] with a last step on the validated, defaulted, redacted members
    /// before they are canonicalized: the server seals a data subject's values there
    /// ([`crate::shred`]), so the hash covers the sealed form.
    pub fn prepare_sealed(
        &self,
        mut event: Value,
        encoded_len: usize,
        now: OffsetDateTime,
        seal: &mut Sealer<'_>,
    ) -> Result<PreparedEvent, Vec<FieldError>> {
        let signals = sanitize(&mut event);
        validate(&event, encoded_len, &self.validation)?;
        let Value::Object(mut map) = event else {
            return Err(vec![FieldError::new("", "an event must be a JSON object")]);
        };
        // Defaults are written straight into the canonical members (no map insertion, no
        // `Value` to build and drop), except for a field that a pointer rule names: that rule
        // must see (and may redact) the default, so it goes into the map before redaction as
        // it always did. So does a default that replaces a member of the wrong type.
        let mut direct = missing_defaults(&map, now);
        for entry in &mut direct {
            let into_map = entry.as_ref().is_some_and(|(name, _)| {
                self.redactor.targets_member(name) || map.contains_key(*name)
            });
            if into_map && let Some((name, value)) = entry.take() {
                map.insert(name.to_owned(), Value::String(value.into_owned()));
            }
        }
        let redactions = self.redactor.redact(&mut map);
        seal(&mut map).map_err(|e| vec![e])?;
        let idempotency_key = map
            .get("idempotencyKey")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let organization_id = map
            .get("organizationId")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut members = MembersBuilder::with_capacity(
            encoded_len + 64 * (DEFAULTED_FIELDS + 1) + 32 * redactions.len(),
            map.len() + DEFAULTED_FIELDS + 1,
        );
        members.push_map(&map);
        for (name, value) in direct.iter().flatten() {
            members.push_str_value(name, value);
        }
        if !redactions.is_empty() {
            members.push_str_array("redactions", &redactions);
        }
        Ok(PreparedEvent {
            members: members.finish(),
            idempotency_key,
            organization_id,
            redactions,
            signals,
        })
    }
}

/// How many fields the server may default.
const DEFAULTED_FIELDS: usize = 5;

/// The fields the server defaults (SPEC §2) that `map` lacks, with their values:
/// `timestamp`, `dataClassification`, `severity`, `retentionPolicy`, `eventVersion`. Every
/// value is derived from the client's fields only, never from another default (the retention
/// policy follows the classification, defaulted or not). A `dataClassification` that is not a
/// string is defaulted too (validation refuses one, so this is only belt and braces).
fn missing_defaults(
    map: &Map<String, Value>,
    now: OffsetDateTime,
) -> [Option<DefaultedField>; DEFAULTED_FIELDS] {
    let timestamp = (!map.contains_key("timestamp")).then(|| Cow::Owned(format_server_time(now)));
    let given_classification = map.get("dataClassification").and_then(Value::as_str);
    let classification = given_classification.unwrap_or("INTERNAL");
    let default_classification = given_classification
        .is_none()
        .then_some(Cow::Borrowed("INTERNAL"));
    let severity = (!map.contains_key("severity")).then(|| {
        let action = map.get("action").and_then(Value::as_str).unwrap_or("");
        let status = map.get("status").and_then(Value::as_str).unwrap_or("");
        let emergency = map
            .get("healthcareContext")
            .and_then(|h| h.get("emergencyAccess"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Cow::Borrowed(Severity::derive(action, status, emergency).as_str())
    });
    let retention = (!map.contains_key("retentionPolicy"))
        .then(|| Cow::Borrowed(default_retention_policy(classification)));
    let version = (!map.contains_key("eventVersion")).then_some(Cow::Borrowed(EVENT_VERSION));
    [
        timestamp.map(|v| ("timestamp", v)),
        default_classification.map(|v| ("dataClassification", v)),
        severity.map(|v| ("severity", v)),
        retention.map(|v| ("retentionPolicy", v)),
        version.map(|v| ("eventVersion", v)),
    ]
}

/// A defaulted field: its name and its (string) value.
type DefaultedField = (&'static str, Cow<'static, str>);

/// Adds the sequencing fields to a prepared event, then hashes and (when a keyring is given)
/// signs the canonical text. This is the only step that must run in sequence order, so the
/// server fields' canonical values are written into one buffer rather than one string each.
pub fn seal(
    prepared: &PreparedEvent,
    sequencing: &Sequencing<'_>,
    keyring: Option<&HmacKeyring>,
) -> SealedEvent {
    let key_id = keyring.map(HmacKeyring::active_key_id);
    let mut values = String::with_capacity(
        sequencing.id.len()
            + sequencing.log_id.len()
            + sequencing.received_at.len()
            + key_id.map_or(0, str::len)
            + 64
            + 20
            + 16,
    );
    let id = push_range(&mut values, |out| write_string(out, sequencing.id));
    let key_id_range = key_id.map(|k| push_range(&mut values, |out| write_string(out, k)));
    let log_id = push_range(&mut values, |out| write_string(out, sequencing.log_id));
    let prev_hash = push_range(&mut values, |out| {
        out.push('"');
        push_hex(out, sequencing.prev_hash);
        out.push('"');
    });
    let received_at = push_range(&mut values, |out| write_string(out, sequencing.received_at));
    let seq = push_range(&mut values, |out| {
        out.push_str(itoa::Buffer::new().format(sequencing.seq));
    });
    // Pushed in RFC 8785 order, so joining needs no sort.
    let mut extra: [(&str, &str); 6] = [("", ""); 6];
    let mut n = 0;
    let mut add = |name: &'static str, range: std::ops::Range<usize>| {
        extra[n] = (name, &values[range]);
        n += 1;
    };
    add("id", id);
    if let Some(range) = key_id_range {
        add("keyId", range);
    }
    add("logId", log_id);
    add("prevHash", prev_hash);
    add("receivedAt", received_at);
    add("seq", seq);
    let canonical = prepared.members.join_with_str(&mut extra[..n]);
    let hash = event_hash(&canonical);
    let signature = keyring.map(|ring| {
        (
            ring.active_key_id().to_owned(),
            ring.sign(canonical.as_bytes()),
        )
    });
    SealedEvent {
        canonical,
        hash,
        signature,
    }
}

/// Appends what `write` writes to `values` and returns where it is.
fn push_range(values: &mut String, write: impl FnOnce(&mut String)) -> std::ops::Range<usize> {
    let start = values.len();
    write(values);
    start..values.len()
}

/// Appends the lowercase hex of `bytes` (what [`crate::integrity::to_hex`] returns, without
/// the allocation).
fn push_hex(out: &mut String, bytes: &[u8; 32]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0F)]));
    }
}

/// Formats the current time as the server writes it.
pub fn server_now() -> (OffsetDateTime, String) {
    let now = OffsetDateTime::now_utc();
    (now, format_server_time(now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::to_canonical_string;
    use crate::config::RedactionConfig;
    use crate::integrity::{DEFAULT_KEY_ID, GENESIS_PREV_HASH, to_hex};
    use serde_json::json;
    use zeroize::Zeroizing;

    fn pipeline() -> Pipeline {
        let redactor =
            Redactor::new(&RedactionConfig::default(), b"token-key-for-tests").expect("ok");
        Pipeline::new(ValidationConfig::default(), redactor)
    }

    fn now() -> OffsetDateTime {
        crate::time_fmt::parse_rfc3339("2026-11-23T09:00:00Z").expect("valid")
    }

    #[test]
    fn prepare_fills_defaults() {
        let prepared = pipeline()
            .prepare(
                json!({"action": "fhir.patient.read", "status": "success"}),
                50,
                now(),
            )
            .expect("valid");
        let sealed = seal(
            &prepared,
            &Sequencing {
                id: "0190f5e2-0000-7000-8000-000000000000",
                log_id: "default",
                seq: 0,
                received_at: "2026-11-23T09:00:00.000001Z",
                prev_hash: &GENESIS_PREV_HASH,
            },
            None,
        );
        let stored: Value = serde_json::from_str(&sealed.canonical).expect("json");
        assert_eq!(stored["timestamp"], "2026-11-23T09:00:00.000000Z");
        assert_eq!(stored["dataClassification"], "INTERNAL");
        assert_eq!(stored["severity"], "low");
        assert_eq!(stored["retentionPolicy"], "administrative");
        assert_eq!(stored["eventVersion"], "1.0");
        assert_eq!(stored["seq"], 0);
        assert_eq!(stored["prevHash"], "0".repeat(64));
        assert!(stored.get("keyId").is_none());
        assert_eq!(sealed.signature, None);
    }

    /// The hash covers exactly the canonical text, which equals an independent RFC 8785
    /// serialization of the stored object; the signature is HMAC over the same bytes.
    #[test]
    fn seal_hashes_exactly_the_canonical_text() {
        let ring = HmacKeyring::single(Zeroizing::new(b"a-test-secret-of-some-length".to_vec()))
            .expect("ok");
        let prepared = pipeline()
            .prepare(
                json!({"action": "auth.login.failure", "status": "failure", "principalId": "u1",
                       "custom": {"nested": [1, 2.5, "x"]}}),
                120,
                now(),
            )
            .expect("valid");
        let prev = [7u8; 32];
        let sealed = seal(
            &prepared,
            &Sequencing {
                id: "id-1",
                log_id: "default",
                seq: 41,
                received_at: "2026-11-23T09:00:00.000001Z",
                prev_hash: &prev,
            },
            Some(&ring),
        );
        let stored: Value = serde_json::from_str(&sealed.canonical).expect("json");
        assert_eq!(to_canonical_string(&stored), sealed.canonical);
        assert_eq!(sealed.hash, event_hash(&sealed.canonical));
        assert_eq!(stored["keyId"], DEFAULT_KEY_ID);
        assert_eq!(stored["severity"], "high");
        assert_eq!(stored["prevHash"], to_hex(&prev));
        let (key_id, sig) = sealed.signature.expect("signed");
        assert_eq!(
            ring.verify(&key_id, sealed.canonical.as_bytes(), &sig),
            Ok(())
        );
    }

    #[test]
    fn non_object_is_refused() {
        let errors = pipeline()
            .prepare(json!([1, 2]), 5, now())
            .expect_err("refused");
        assert_eq!(errors[0].path, "");
    }
}
