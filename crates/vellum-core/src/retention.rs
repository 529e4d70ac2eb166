//! Retention (SPEC §7): named policies, the default policy per classification, legal holds, and
//! the tombstone that replaces a purged event's content.
//!
//! Purging must not break the chain, the Merkle tree or `vellum verify`, and it must not become
//! a way to delete an event quietly. So a purge works in two steps: first the writer appends a
//! **purge record** (a signed, chained event, action `retention.purge`) whose `purge` member
//! names the purge id, how many events it covers and a digest over their `(seq, hash)` pairs;
//! `purge` is a server field, so no client can send a record of its own, and redaction never
//! touches it. Then, in one
//! transaction, those events' content is replaced by a **tombstone** naming the purge id, while
//! their stored hash stays (it is what the next event's `prevHash` and the Merkle leaf commit
//! to). The verifier accepts a tombstone only if a purge record in the log accounts for it:
//! same purge id, same count, same digest ([`PurgeDigest`]). Tombstoning an event by hand, without
//! the HMAC secret to sign a matching purge record, is therefore reported.
//!
//! Expiry is `receivedAt + retentionDays` of the event's `retentionPolicy` (set at ingest, from
//! the classification default when the client named none): the server's clock, so a client
//! cannot backdate an event into early deletion.

use crate::FieldError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// One named policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// Name events refer to in `retentionPolicy`.
    pub name: String,
    /// Days after `receivedAt` the event may be purged.
    pub retention_days: u32,
}

/// The policy set: `GET/PUT /v1/retention/policies`, `[retention]` in `vellum.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetentionPolicies {
    /// Every named policy.
    pub policies: Vec<Policy>,
    /// Policy name per classification, for events that name no (known) policy.
    pub defaults: BTreeMap<String, String>,
}

impl Default for RetentionPolicies {
    /// SPEC §7's named policies and classification defaults.
    fn default() -> Self {
        let policies = [
            ("hipaa-6-years", 2190),
            ("hipaa-7-years", 2555),
            ("gdpr-standard", 1095),
            ("emergency-access", 3650),
            ("patient-data-access", 7300),
            ("consent-change", 2555),
            ("financial", 1825),
            ("administrative", 1095),
            ("system", 365),
        ]
        .into_iter()
        .map(|(name, days)| Policy {
            name: name.to_owned(),
            retention_days: days,
        })
        .collect();
        let defaults = ["PHI", "PII", "CONFIDENTIAL", "INTERNAL", "PUBLIC"]
            .into_iter()
            .map(|c| {
                (
                    c.to_owned(),
                    crate::model::default_retention_policy(c).to_owned(),
                )
            })
            .collect();
        Self { policies, defaults }
    }
}

impl RetentionPolicies {
    /// Checks the set: unique, well-formed names, at least one day each, defaults naming known
    /// policies. Every problem is listed with its JSON pointer.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (i, policy) in self.policies.iter().enumerate() {
            let name_ok = !policy.name.is_empty()
                && policy.name.len() <= 64
                && policy
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !name_ok {
                errors.push(FieldError::new(
                    format!("/policies/{i}/name"),
                    "must be 1-64 characters of A-Z a-z 0-9 - _ .",
                ));
            }
            if !seen.insert(policy.name.as_str()) {
                errors.push(FieldError::new(
                    format!("/policies/{i}/name"),
                    format!("{:?} is defined twice", policy.name),
                ));
            }
            if !(1..=MAX_RETENTION_DAYS).contains(&policy.retention_days) {
                errors.push(FieldError::new(
                    format!("/policies/{i}/retentionDays"),
                    format!("must be from 1 to {MAX_RETENTION_DAYS} (100 years)"),
                ));
            }
        }
        for (classification, name) in &self.defaults {
            if !seen.contains(name.as_str()) {
                errors.push(FieldError::new(
                    format!("/defaults/{classification}"),
                    format!("names no policy ({name:?})"),
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The policy governing an event: its own `retentionPolicy` if known, else its
    /// classification's default.
    pub fn policy_for(&self, named: Option<&str>, classification: Option<&str>) -> Option<&Policy> {
        let by_name = |name: &str| self.policies.iter().find(|p| p.name == name);
        named.and_then(by_name).or_else(|| {
            classification
                .and_then(|c| self.defaults.get(c))
                .and_then(|name| by_name(name))
        })
    }

    /// The shortest retention of any policy, in days (the purge scan stops at events younger
    /// than this).
    pub fn shortest_days(&self) -> Option<u32> {
        self.policies.iter().map(|p| p.retention_days).min()
    }
}

/// The longest retention a policy may have (100 years).
pub const MAX_RETENTION_DAYS: u32 = 36_525;

/// Microseconds in a day.
pub const DAY_MICROS: i64 = 86_400_000_000;

/// Whether an event received at `received_at_micros` under `policy` may be purged at `now`.
pub fn expired(received_at_micros: i64, policy: &Policy, now_micros: i64) -> bool {
    received_at_micros.saturating_add(i64::from(policy.retention_days).saturating_mul(DAY_MICROS))
        <= now_micros
}

/// A legal hold: every event matching all of its given fields is kept while it exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LegalHold {
    /// Id (given or generated).
    #[serde(default)]
    pub id: Option<String>,
    /// Why (a case number, a regulator's request).
    pub reason: String,
    /// Events of this organization.
    #[serde(default)]
    pub organization_id: Option<String>,
    /// Events by this principal.
    #[serde(default)]
    pub principal_id: Option<String>,
    /// Events about this patient (`healthcareContext.patientId`).
    #[serde(default)]
    pub patient_id: Option<String>,
    /// Events about this data subject (`gdprContext.dataSubjectId`).
    #[serde(default)]
    pub data_subject_id: Option<String>,
}

/// The fields of an event that legal holds match on.
#[derive(Debug, Clone, Copy, Default)]
pub struct HoldFacts<'a> {
    /// `organizationId`.
    pub organization_id: Option<&'a str>,
    /// `principalId`.
    pub principal_id: Option<&'a str>,
    /// `healthcareContext.patientId`.
    pub patient_id: Option<&'a str>,
    /// `gdprContext.dataSubjectId`.
    pub data_subject_id: Option<&'a str>,
}

impl LegalHold {
    /// Checks a hold: a reason, and at least one field to match (a hold on "everything" would
    /// stop retention altogether; that is a policy change, not a hold).
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.reason.trim().is_empty() || self.reason.len() > 1000 {
            errors.push(FieldError::new("/reason", "must be 1-1000 characters"));
        }
        let fields = [
            ("/organizationId", &self.organization_id),
            ("/principalId", &self.principal_id),
            ("/patientId", &self.patient_id),
            ("/dataSubjectId", &self.data_subject_id),
        ];
        for (path, value) in fields {
            if value
                .as_deref()
                .is_some_and(|v| v.is_empty() || v.len() > 256)
            {
                errors.push(FieldError::new(path, "must be 1-256 characters"));
            }
        }
        if fields.iter().all(|(_, v)| v.is_none()) {
            errors.push(FieldError::new(
                "",
                "a hold needs at least one of organizationId, principalId, patientId, dataSubjectId",
            ));
        }
        if let Some(id) = &self.id
            && (id.is_empty()
                || id.len() > 64
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
        {
            errors.push(FieldError::new(
                "/id",
                "must be 1-64 characters of A-Z a-z 0-9 - _ .",
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Whether this hold keeps an event with these fields.
    pub fn covers(&self, event: &HoldFacts<'_>) -> bool {
        let matches = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        matches(&self.organization_id, event.organization_id)
            && matches(&self.principal_id, event.principal_id)
            && matches(&self.patient_id, event.patient_id)
            && matches(&self.data_subject_id, event.data_subject_id)
    }
}

/// What remains of a purged event: its place and hash, the policy and the purge that removed
/// it. Stored as the event's body: `{"tombstone":{…}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tombstone {
    /// Position of the purged event.
    pub seq: u64,
    /// Its hash (hex), unchanged.
    pub hash: String,
    /// The retention policy that expired.
    pub policy: String,
    /// When it was purged (RFC 3339).
    pub purged_at: String,
    /// The purge (and its `retention.purge` record) it belongs to.
    pub purge_id: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TombstoneBody<T> {
    tombstone: T,
}

impl Tombstone {
    /// The stored body.
    pub fn to_body(&self) -> String {
        serde_json::to_string(&TombstoneBody { tombstone: self }).unwrap_or_default()
    }

    /// Reads a stored body as a tombstone (`None` for an event).
    pub fn from_body(body: &str) -> Option<Self> {
        if !body.starts_with("{\"tombstone\"") {
            return None;
        }
        serde_json::from_str::<TombstoneBody<Tombstone>>(body)
            .ok()
            .map(|b| b.tombstone)
    }
}

/// Digest of a purge's events: SHA-256 over `seq` (8 bytes big-endian) and the 32-byte hash of
/// each, in `seq` order. The purge record carries it; the verifier recomputes it from the
/// tombstones.
#[derive(Clone, Default)]
pub struct PurgeDigest {
    hasher: Sha256,
    count: u64,
}

impl std::fmt::Debug for PurgeDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PurgeDigest")
            .field("count", &self.count)
            .finish()
    }
}

impl PurgeDigest {
    /// Adds the next purged event.
    pub fn add(&mut self, seq: u64, hash: &[u8; 32]) {
        self.hasher.update(seq.to_be_bytes());
        self.hasher.update(hash);
        self.count += 1;
    }

    /// Events added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The digest, lowercase hex.
    pub fn finish(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

/// Action of the purge record event.
pub const PURGE_ACTION: &str = "retention.purge";

/// The `purge` member of a purge record: what the verifier checks tombstones against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PurgeFacts {
    /// The id the tombstones name.
    pub purge_id: String,
    /// How many events the purge covers.
    pub count: u64,
    /// [`PurgeDigest`] of their `(seq, hash)` pairs, hex.
    pub digest: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_spec_and_valid() {
        let p = RetentionPolicies::default();
        assert!(p.validate().is_ok());
        assert_eq!(
            p.policy_for(None, Some("PHI")).map(|p| p.retention_days),
            Some(2190)
        );
        assert_eq!(
            p.policy_for(Some("system"), Some("PHI"))
                .map(|p| p.retention_days),
            Some(365)
        );
        assert_eq!(
            p.policy_for(Some("unknown"), Some("PUBLIC"))
                .map(|p| p.name.as_str()),
            Some("system")
        );
        assert_eq!(p.shortest_days(), Some(365));
    }

    #[test]
    fn invalid_policies_name_every_problem() {
        let p = RetentionPolicies {
            policies: vec![
                Policy {
                    name: "a".into(),
                    retention_days: 0,
                },
                Policy {
                    name: "a".into(),
                    retention_days: 3,
                },
                Policy {
                    name: "b c".into(),
                    retention_days: 3,
                },
            ],
            defaults: [("PHI".to_owned(), "zzz".to_owned())].into(),
        };
        let paths: Vec<String> = p
            .validate()
            .expect_err("invalid")
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            paths,
            [
                "/policies/0/retentionDays",
                "/policies/1/name",
                "/policies/2/name",
                "/defaults/PHI"
            ]
        );
    }

    #[test]
    fn holds_match_all_given_fields() {
        let hold = LegalHold {
            id: None,
            reason: "case 7".into(),
            organization_id: Some("org-a".into()),
            principal_id: None,
            patient_id: Some("p-1".into()),
            data_subject_id: None,
        };
        assert!(hold.validate().is_ok());
        let facts = |org, patient| HoldFacts {
            organization_id: org,
            patient_id: patient,
            ..HoldFacts::default()
        };
        assert!(hold.covers(&facts(Some("org-a"), Some("p-1"))));
        assert!(!hold.covers(&facts(Some("org-a"), Some("p-2"))));
        assert!(!hold.covers(&facts(None, Some("p-1"))));
        let empty = LegalHold {
            organization_id: None,
            patient_id: None,
            ..hold
        };
        assert!(empty.validate().is_err());
    }

    #[test]
    fn tombstones_round_trip_and_expiry_uses_days() {
        let t = Tombstone {
            seq: 4,
            hash: "ab".repeat(32),
            policy: "system".into(),
            purged_at: "2030-01-01T00:00:00Z".into(),
            purge_id: "p1".into(),
        };
        assert_eq!(Tombstone::from_body(&t.to_body()), Some(t));
        assert_eq!(Tombstone::from_body(r#"{"action":"a"}"#), None);
        let policy = Policy {
            name: "x".into(),
            retention_days: 2,
        };
        assert!(!expired(0, &policy, 2 * DAY_MICROS - 1));
        assert!(expired(0, &policy, 2 * DAY_MICROS));
        // Day counts beyond validation never overflow the clock arithmetic.
        let forever = Policy {
            name: "y".into(),
            retention_days: u32::MAX,
        };
        assert!(!expired(0, &forever, i64::MAX / 2));
    }
}
