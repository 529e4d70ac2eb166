//! Records exchanged with the store.

use serde::{Deserialize, Serialize};

/// Where a log currently ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHead {
    /// The log.
    pub log_id: String,
    /// Number of events in the log (= next `seq`).
    pub size: u64,
    /// Hash of the last event (zeros for an empty log).
    pub last_hash: [u8; 32],
}

/// One sealed event ready to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Its log.
    pub log_id: String,
    /// Its position in the log.
    pub seq: u64,
    /// UUIDv7 bytes.
    pub id: [u8; 16],
    /// Canonical JSON text: exactly the hashed bytes.
    pub canonical: String,
    /// SHA-256 of `canonical`.
    pub hash: [u8; 32],
    /// HMAC-SHA256 of `canonical` (its key id is inside `canonical`).
    pub signature: Option<[u8; 32]>,
}

/// A receipt to remember under an idempotency key.
#[derive(Debug, Clone)]
pub struct IdempotencyRecord {
    /// The scoped key (API key id + client key).
    pub key: String,
    /// Receipt JSON returned to the first request.
    pub receipt: String,
    /// When it was stored (Unix µs), for the 24 h window.
    pub created_micros: i64,
}

/// What one group commit writes.
#[derive(Debug, Clone, Default)]
pub struct AppendBatch {
    /// Events in `(log, seq)` order within each log.
    pub events: Vec<NewEvent>,
    /// Receipts for idempotency keys carried by these events.
    pub idempotency: Vec<IdempotencyRecord>,
    /// Merkle tiles changed by these events (invariant: stored with them, atomically).
    pub tiles: Vec<(String, vellum_core::tiles::Tile)>,
    /// Checkpoints signed over the tree including these events.
    pub checkpoints: Vec<vellum_core::checkpoint::SignedCheckpoint>,
    /// Work done ahead for the first events, outside any transaction
    /// ([`crate::AuditStore::prepare`]); `append` does the rest itself.
    pub prepared: Prepared,
}

/// What a store built ahead for the events of an [`AppendBatch`] (PostgreSQL: the search
/// index rows, with their `tsvector`s), so that building them overlaps the previous commit
/// instead of delaying the next. Opaque; a clone starts empty (the work is redone).
#[derive(Default)]
pub struct Prepared {
    /// The search index rows of `events[..covered]` (tombstones have none).
    pub(crate) index: Option<crate::postgres::IndexColumns>,
    /// How many of the batch's events `index` covers.
    pub(crate) covered: usize,
}

impl Clone for Prepared {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("covered", &self.covered)
            .finish_non_exhaustive()
    }
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Global append position (row id), used for cursors and the index.
    pub pos: i64,
    /// Its log.
    pub log_id: String,
    /// Its position in the log.
    pub seq: u64,
    /// Canonical JSON text as stored.
    pub canonical: String,
    /// Stored hash.
    pub hash: Vec<u8>,
    /// Stored signature.
    pub signature: Option<Vec<u8>>,
    /// The `id` column the store files the event under (what `GET /v1/events/{id}` looks up),
    /// when the read fetched it; verification checks it against the `id` inside the event.
    pub id_column: Option<[u8; 16]>,
}

impl StoredEvent {
    /// Refuses an event looked up by `id` whose body carries another id. The lookup column is
    /// not hashed; the `id` inside the event is, so a row filed under another event's id must
    /// not be served as that event. Tombstones carry no id and pass.
    pub fn check_filed_under(&self, id: &uuid::Uuid) -> Result<(), crate::StoreError> {
        if vellum_core::retention::Tombstone::from_body(&self.canonical).is_some() {
            return Ok(());
        }
        let inside = serde_json::from_str::<serde_json::Value>(&self.canonical)
            .ok()
            .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned));
        if inside.as_deref() == Some(id.hyphenated().to_string().as_str()) {
            return Ok(());
        }
        Err(crate::StoreError::Corrupt(format!(
            "the event filed under id {id} (seq {} of log {}) carries id {inside:?}: run vellum verify",
            self.seq, self.log_id
        )))
    }

    /// The event as the API returns it: the stored object plus `hash` and `signature`, built by
    /// splicing text so the stored bytes are returned untouched.
    pub fn to_api_json(&self) -> String {
        let body = self.canonical.trim_end();
        let Some(open) = body.strip_suffix('}') else {
            return self.canonical.clone();
        };
        let mut out = String::with_capacity(body.len() + 160);
        out.push_str(open);
        if open.len() > 1 {
            out.push(',');
        }
        out.push_str("\"hash\":\"");
        out.push_str(&hex::encode(&self.hash));
        out.push('"');
        if let Some(sig) = &self.signature {
            out.push_str(",\"signature\":\"");
            out.push_str(&hex::encode(sig));
            out.push('"');
        }
        out.push('}');
        out
    }
}

/// Search filters of SPEC §5. Every `Some` filter must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SearchQuery {
    /// Exact principal.
    pub principal_id: Option<String>,
    /// Exact organization (also the tenant scope of org-bound keys).
    pub organization_id: Option<String>,
    /// Exact action, or a prefix when it ends with `*`.
    pub action: Option<String>,
    /// Exact status.
    pub status: Option<String>,
    /// Exact classification.
    pub data_classification: Option<String>,
    /// Exact target type.
    pub target_resource_type: Option<String>,
    /// Exact target id.
    pub target_resource_id: Option<String>,
    /// `sessionContext.sessionId`.
    pub session_id: Option<String>,
    /// `sessionContext.ipAddress`.
    pub ip_address: Option<String>,
    /// `healthcareContext.patientId`.
    pub patient_id: Option<String>,
    /// `gdprContext.dataSubjectId`.
    pub data_subject_id: Option<String>,
    /// `correlationId`.
    pub correlation_id: Option<String>,
    /// Lower bound on `timestamp`, inclusive, Unix µs.
    pub from_micros: Option<i64>,
    /// Upper bound on `timestamp`, exclusive, Unix µs.
    pub to_micros: Option<i64>,
    /// Full-text query (FTS5 terms; all must match).
    pub q: Option<String>,
    /// Page size (1..=1000).
    pub limit: usize,
    /// Opaque cursor from the previous page.
    pub cursor: Option<String>,
}

impl SearchQuery {
    /// The near-unique filters, in a fixed order: target id, session, IP address, patient,
    /// data subject, correlation id. Both stores find them through hashed tags rather than
    /// columns of their own (each store lists its tag names in this order).
    pub fn tag_filters(&self) -> [&Option<String>; 6] {
        [
            &self.target_resource_id,
            &self.session_id,
            &self.ip_address,
            &self.patient_id,
            &self.data_subject_id,
            &self.correlation_id,
        ]
    }
}

/// One page of search results.
#[derive(Debug, Clone, Default)]
pub struct SearchPage {
    /// Matching events, newest `timestamp` first.
    pub events: Vec<StoredEvent>,
    /// Cursor for the next page, when there may be one.
    pub next_cursor: Option<String>,
    /// Events committed to the log but not yet visible to search when the query ran.
    pub index_lag: u64,
}

/// A checkpoint public key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointKeyRecord {
    /// 8 hex digits.
    pub key_id: String,
    /// Signer name.
    pub name: String,
    /// Ed25519 public key.
    pub public_key: [u8; 32],
    /// When it was first used (RFC 3339).
    pub created_at: String,
}

/// An API key as stored: only a hash of the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyRecord {
    /// Public id of the key (also its principal in audit events).
    pub id: String,
    /// SHA-256 of the secret key text.
    #[serde(skip)]
    pub key_hash: [u8; 32],
    /// `ingest`, `reader`, `auditor` or `admin`.
    pub role: String,
    /// Tenant the key is bound to, if any.
    pub organization_id: Option<String>,
    /// Human label.
    pub name: Option<String>,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Revocation time, if revoked.
    pub revoked_at: Option<String>,
}

/// An audit event waiting in the outbox: recorded by a process that is not the log's writer
/// (the CLI on a data dir, or a route whose change and record must commit together), appended
/// by the writer with the idempotency key `outbox:<id>` so a retry after a crash never makes
/// a second event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Queue position (never reused).
    pub id: i64,
    /// The raw event JSON, to go through the pipeline like any submitted event.
    pub event: String,
}

/// A legal hold as stored (SPEC §7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LegalHoldRecord {
    /// Id.
    pub id: String,
    /// Why.
    pub reason: String,
    /// Held organization.
    pub organization_id: Option<String>,
    /// Held principal.
    pub principal_id: Option<String>,
    /// Held patient.
    pub patient_id: Option<String>,
    /// Held data subject.
    pub data_subject_id: Option<String>,
    /// When placed.
    pub created_at: String,
    /// Who placed it (key id or `cli:<user>`).
    pub created_by: String,
    /// When released, if released.
    pub released_at: Option<String>,
    /// Who released it.
    pub released_by: Option<String>,
}

/// A purged event's new body, for [`crate::AuditStore::tombstone_events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TombstoneWrite {
    /// Position in its log.
    pub seq: u64,
    /// Its stored hash; the row is only replaced if it still has this hash.
    pub hash: [u8; 32],
    /// The tombstone body.
    pub body: String,
}

/// Time granularity of `GET /v1/stats` buckets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeBucket {
    /// UTC hours.
    #[default]
    Hour,
    /// UTC days.
    Day,
}

/// What `GET /v1/stats` counts over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsQuery {
    /// The same filters as search (cursor and limit ignored).
    pub filter: SearchQuery,
    /// Time bucket size.
    pub bucket: TimeBucket,
    /// Most entries per breakdown (principals, actions, …).
    pub top: usize,
}

/// Counts over a filter set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Matching events.
    pub total: u64,
    /// By action, most frequent first.
    pub by_action: Vec<(String, u64)>,
    /// By status.
    pub by_status: Vec<(String, u64)>,
    /// By data classification.
    pub by_classification: Vec<(String, u64)>,
    /// By principal, most frequent first.
    pub by_principal: Vec<(String, u64)>,
    /// By organization, most frequent first.
    pub by_organization: Vec<(String, u64)>,
    /// By time bucket: (bucket start in Unix µs, count), oldest first.
    pub by_time: Vec<(i64, u64)>,
    /// Failures of `auth.*` and `security.*` actions.
    pub security_violations: u64,
    /// Events classified PHI.
    pub phi_accesses: u64,
    /// Break-glass accesses (`healthcareContext.emergencyAccess`).
    pub emergency_accesses: u64,
    /// Events committed but not yet counted (the index is just behind the log).
    pub index_lag: u64,
}
