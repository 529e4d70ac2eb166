//! # vellum-store
//!
//! Durable storage for Vellum behind one trait, [`AuditStore`]. The embedded implementation,
//! [`sqlite::SqliteStore`], keeps two SQLite files in the data directory:
//!
//! - `vellum.db`, **the log**: every event as its canonical JSON text with its hash and
//!   signature, appended in group-commit transactions with `synchronous=FULL` in WAL mode, plus
//!   idempotency receipts, API keys and metadata. An acknowledged event is in this file.
//! - `index.db`, **the search index**: one row of filterable columns per event and an FTS5 table
//!   for full text, maintained by a background indexer *just behind* the log and rebuildable
//!   from it at any time. Searches wait (briefly) for the index to reach the log's committed
//!   position, so a client that searched after its write was acknowledged finds it.
//!
//! The split exists because SQLite with a dozen secondary indexes and FTS in the commit path
//! cannot reach the ingest target on two cores; see ARCHITECTURE.md for the measurements.
//!
//! The server-database implementation, [`postgres::PgStore`], keeps the log and a
//! time-partitioned search index in one PostgreSQL schema, written in the same transaction,
//! and gives scale-out writers a fenced lease ([`postgres::PgStore::writer_lease`]).

pub mod error;
pub mod model;
pub mod postgres;
pub mod sqlite;

mod extract;
mod index;
mod schema;
mod stats;

pub use error::StoreError;
pub use model::*;
pub use postgres::{PgLease, PgOptions, PgStore, lock_key_for_partition};

/// Everything the server, the worker and the command line need from storage.
///
/// Methods are synchronous: the embedded store is SQLite, and callers run them on dedicated
/// threads (the writer) or a blocking pool (reads). Every method is safe to call from many
/// threads, except that [`AuditStore::append`] must only ever be called by the one writer of a
/// log (invariant: one writer per log).
pub trait AuditStore: Send + Sync + 'static {
    /// Last sequence number and hash of every log, so a writer can resume its chains.
    fn log_heads(&self) -> Result<Vec<LogHead>, StoreError>;

    /// Appends a batch of sealed events and their idempotency receipts in one transaction.
    /// Returns only once the batch is durable (survives a crash or power loss).
    fn append(&self, batch: &AppendBatch) -> Result<(), StoreError>;

    /// Builds ahead, outside any transaction, what [`AuditStore::append`] would build for the
    /// events of `batch` not yet covered (PostgreSQL: the search index rows). The writer calls
    /// it on the group it keeps open while the previous group commits, so that the work
    /// overlaps that commit. Optional: `append` builds whatever is not prepared.
    fn prepare(&self, batch: &mut AppendBatch) {
        let _ = batch;
    }

    /// Receipts stored for any of these idempotency keys within the retention window.
    fn idempotent_receipts(
        &self,
        keys: &[&str],
        not_before_micros: i64,
    ) -> Result<Vec<(String, String)>, StoreError>;

    /// Deletes idempotency receipts older than `before_micros`; returns how many.
    fn expire_idempotency(&self, before_micros: i64) -> Result<usize, StoreError>;

    /// One event by id, straight from the log (read-your-writes).
    fn get_event(&self, id: &uuid::Uuid) -> Result<Option<StoredEvent>, StoreError>;

    /// The events of these ids that the log holds, in no particular order; ids it does not
    /// hold are left out. The writer asks this for every group that carries queue messages: a
    /// message delivered again after its commit is recognised by its event id, which the API
    /// node assigned, instead of by an idempotency receipt written for every event.
    fn events_by_id(&self, ids: &[uuid::Uuid]) -> Result<Vec<StoredEvent>, StoreError>;

    /// Events matching `query`, newest first, one page at a time.
    fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError>;

    /// Counts over a filter set (`GET /v1/stats`), from the search index.
    fn stats(&self, query: &StatsQuery) -> Result<Stats, StoreError>;

    /// Events of one log in `seq` order starting at `from_seq`, at most `limit`; used by
    /// verification and exports.
    fn scan_log(
        &self,
        log_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Stores a new API key and, in the same transaction, `audit` (raw audit events for the
    /// outbox), so a key never exists without the record of its creation.
    fn insert_api_key(&self, key: &ApiKeyRecord, audit: &[String]) -> Result<(), StoreError>;
    /// The API key whose secret hashes to `key_hash`, if any (revoked ones included).
    fn find_api_key(&self, key_hash: &[u8; 32]) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// Every API key.
    fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Marks a key revoked and queues `audit` in the same transaction; false (and nothing
    /// queued) when no such unrevoked key.
    fn revoke_api_key(&self, id: &str, at: &str, audit: &[String]) -> Result<bool, StoreError>;

    /// Replaces purged events' content with their tombstones, in one transaction, and removes
    /// them from the search index. A row is replaced only if it still holds the given hash;
    /// returns how many were replaced.
    fn tombstone_events(&self, log_id: &str, rows: &[TombstoneWrite]) -> Result<usize, StoreError>;

    /// Places a legal hold and queues `audit` in the same transaction.
    fn insert_legal_hold(&self, hold: &LegalHoldRecord, audit: &[String])
    -> Result<(), StoreError>;
    /// Releases a hold (kept, marked released) and queues `audit`; false if no such active hold.
    fn release_legal_hold(
        &self,
        id: &str,
        at: &str,
        by: &str,
        audit: &[String],
    ) -> Result<bool, StoreError>;
    /// Every legal hold, active and released, oldest first.
    fn legal_holds(&self) -> Result<Vec<LegalHoldRecord>, StoreError>;
    /// Sets a metadata value and queues `audit` in the same transaction.
    fn meta_set_audited(&self, key: &str, value: &str, audit: &[String]) -> Result<(), StoreError>;

    /// A data subject's wrapped key by its lookup hash: `(subject_ref, wrapped)`.
    fn subject_key(&self, lookup: &str) -> Result<Option<(String, Vec<u8>)>, StoreError>;
    /// A data subject's wrapped key by its reference (reads of sealed events).
    fn subject_key_by_ref(&self, subject_ref: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores a subject key unless one exists for `lookup`; returns the one in force.
    fn insert_subject_key(
        &self,
        lookup: &str,
        subject_ref: &str,
        wrapped: &[u8],
    ) -> Result<(String, Vec<u8>), StoreError>;
    /// Destroys a subject's key (crypto-shredding) and queues `audit` in the same transaction;
    /// the deleted bytes are overwritten (`secure_delete`) and the WAL is checkpointed and
    /// truncated, so the key leaves no copy in the files. Returns the subject reference, or
    /// `None` when there was no key.
    fn erase_subject_key(
        &self,
        lookup: &str,
        audit: &[String],
    ) -> Result<Option<String>, StoreError>;

    /// Queues raw audit events for the log's writer (see [`OutboxEntry`]).
    fn push_outbox(&self, events: &[String]) -> Result<(), StoreError>;
    /// The oldest queued outbox entries, at most `limit`.
    fn outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError>;
    /// Removes outbox entries once their events are in the log.
    fn remove_outbox(&self, ids: &[i64]) -> Result<(), StoreError>;

    /// The stored hashes of one Merkle tile (see `vellum_core::tiles`), if any.
    fn merkle_tile(
        &self,
        log_id: &str,
        key: vellum_core::tiles::TileKey,
    ) -> Result<Option<Vec<vellum_core::merkle::Hash>>, StoreError>;

    /// Stores a checkpoint on its own (one made while no events arrived).
    fn insert_checkpoint(
        &self,
        checkpoint: &vellum_core::checkpoint::SignedCheckpoint,
    ) -> Result<(), StoreError>;

    /// The newest checkpoint of a log.
    fn latest_checkpoint(
        &self,
        log_id: &str,
    ) -> Result<Option<vellum_core::checkpoint::SignedCheckpoint>, StoreError>;

    /// The oldest checkpoint of a log with `tree_size >= min_size`.
    fn checkpoint_covering(
        &self,
        log_id: &str,
        min_size: u64,
    ) -> Result<Option<vellum_core::checkpoint::SignedCheckpoint>, StoreError>;

    /// Checkpoints of a log in `tree_size` order, at most `limit`, with size `> after_size`
    /// (pass `None` to start at the beginning).
    fn list_checkpoints(
        &self,
        log_id: &str,
        after_size: Option<u64>,
        limit: usize,
    ) -> Result<Vec<vellum_core::checkpoint::SignedCheckpoint>, StoreError>;

    /// Every log id that has events or checkpoints.
    fn log_ids(&self) -> Result<Vec<String>, StoreError>;

    /// Records a checkpoint public key (idempotent).
    fn insert_checkpoint_key(&self, key: &CheckpointKeyRecord) -> Result<(), StoreError>;

    /// Every checkpoint public key ever used, oldest first.
    fn checkpoint_keys(&self) -> Result<Vec<CheckpointKeyRecord>, StoreError>;

    /// A metadata value.
    fn meta_get(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Sets a metadata value.
    fn meta_set(&self, key: &str, value: &str) -> Result<(), StoreError>;
}
