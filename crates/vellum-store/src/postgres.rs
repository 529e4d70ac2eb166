//! The PostgreSQL store (SPEC §1 "single node, server DB" and "scale-out").
//!
//! # Layout
//!
//! Every table lives in one schema ([`PgOptions::schema`], created if missing; connections set
//! `search_path` to it). Migrations are versioned in `schema_version` and run inside a
//! transaction holding a `pg_advisory_xact_lock`, so two processes starting at once migrate
//! one after the other.
//!
//! - `events` is **the log**: `(log_id, seq)` primary key, `id uuid` unique, the canonical JSON
//!   as `text` (exactly the hashed bytes, never `jsonb`), hash, signature, and `pos`, an
//!   identity column giving the global append position ([`StoredEvent::pos`]). It is not
//!   partitioned, so its uniqueness constraints hold across the whole log: a bug or a
//!   second writer cannot fork a chain.
//! - `event_index` is **the search index**: one row per searchable event with the filter
//!   columns parsed once in Rust at insert (`index::extract`, as SQLite's indexer does), the
//!   exact timestamp (µs), tags for the nearly-unique filters and a `tsvector` of the free
//!   text. It is written **in the same transaction** as the events, so search never lags
//!   (`index_lag` is always 0) and read-your-writes holds without waiting.
//!
//! # Time partitioning
//!
//! `event_index` is `PARTITION BY RANGE (ms)`, one partition per UTC month, created on demand
//! before the append that needs it (in a short transaction of its own, under an advisory lock,
//! and remembered in memory), plus the current and next month at connect, and a `DEFAULT`
//! partition for timestamps outside 1970-2199 (never split, so creating a month never moves
//! rows). The partition key is `ms`, the timestamp in Unix milliseconds, rather than a
//! `timestamptz`: `ms` is also the leading column of the sort key `(ms, pos)`, so a time
//! filter, a keyset cursor and a partition bound are the same integer comparison and prune the
//! same partitions without conversions. Only the index is partitioned: a partitioned table's
//! unique constraints must include the partition key, which would have given up the global
//! `UNIQUE(log_id, seq)` and `UNIQUE(id)` of the log. What grows with time and is scanned by
//! time is the index; the log is read by `(log_id, seq)` and `id`, which B-trees serve at any
//! size. An old month's index can be detached or moved to cheaper storage without touching the
//! log. There is no foreign key from the index to the log: it would add a row-locking check per
//! event to every append, and both tables are only written together, by this module.
//!
//! Indexes per partition: the primary key `(ms, pos)` (unfiltered pages), `(left(column, 200),
//! ms, pos)` for each low-cardinality filter (principal, organization, action, status,
//! classification, target type — truncated because PostgreSQL refuses B-tree entries above
//! ~2.7 kB while event strings may be longer; queries compare the full value too), `pos` (to drop
//! purged rows), GIN on `tags` (64-bit hashes of target id, session id, IP, patient id,
//! data-subject tag and correlation id: nearly unique values would put every insert on a random
//! B-tree page, GIN batches them in its pending list) and `blk`, the row's text block.
//!
//! # Full text through text blocks
//!
//! Each row keeps its `tsvector` (`tsv`) but it has no index: one GIN entry per lexeme per row
//! was about 40% of the database's CPU per appended event. The rows of an append are cut into
//! blocks of [`search::BLOCK_ROWS`]; `text_blocks` holds, per block, every lexeme of its rows
//! once (without positions), under a GIN index, and each row names its block. A search's `q`
//! takes the blocks holding all its words, then checks their rows against the exact query.
//! A block's lexemes always cover its rows' (purges rebuild the blocks they touch), so nothing
//! that matches is missed.
//!
//! # Same answers as SQLite
//!
//! Search orders by timestamp millisecond newest first, then by log position — the order of
//! SQLite's sort key `ms << 20 | slot`, whose slot follows log order — and pages with a keyset
//! cursor on `(ms, pos)`. Text columns use the `"C"` collation, so comparisons (the action
//! prefix range, the order of statistics ties) are bytewise like SQLite's. Full text does not
//! use PostgreSQL's parser: the store tokenizes like FTS5 `unicode61` itself (`tokenize.rs`) and
//! hands PostgreSQL lexemes; a term is a phrase of its tokens and all terms must match.
//! Statistics are the same aggregates as `stats.rs`.
//!
//! # Threads and runtimes
//!
//! [`AuditStore`] is synchronous. [`PgStore`] owns a small multi-thread tokio runtime (two
//! workers) that drives its connections; each method blocks on a future there. It works from
//! plain threads, `spawn_blocking` threads and `block_in_place` sections; called from inside an
//! async task it steps out of the async context first (`block_in_place` on a multi-thread
//! runtime; on a current-thread runtime the work is run from a scoped thread, which blocks that
//! runtime's only thread meanwhile but cannot panic or deadlock, since the store's own runtime
//! does the I/O).
//!
//! # Single writer
//!
//! [`PgStore::writer_lease`] takes session advisory locks on a dedicated connection; the
//! [`PgLease`] appends through that connection only, so if the session dies both the lock and
//! the ability to append are gone at once (the fence).

mod schema;
mod search;
mod tokenize;
mod url;

pub(crate) use search::IndexColumns;

use crate::model::*;
use crate::{AuditStore, StoreError};
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod};
use schema::MonthId;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_postgres::types::Type;
use vellum_core::checkpoint::SignedCheckpoint;
use vellum_core::tiles::{Tile, TileKey};

/// High 32 bits of every advisory lock key Vellum's writers take ("VELL"), so that Vellum's
/// keys do not collide with other applications' advisory locks in the same database.
pub const LOCK_NAMESPACE: i64 = 0x5645_4C4C;

/// High 32 bits of the store's own advisory locks (migrations, partition creation): "VELM".
pub(crate) const LOCK_NAMESPACE_INTERNAL: i64 = 0x5645_4C4D;

/// The advisory lock key of writer partition `partition` (a log, or a group of logs, that one
/// worker writes at a time). Keys are per database: two deployments in different schemas of
/// one database share them, which only makes their writers exclude each other.
pub fn lock_key_for_partition(partition: u32) -> i64 {
    (LOCK_NAMESPACE << 32) | i64::from(partition)
}

/// How [`PgStore::connect`] sets the store up.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Schema holding every table, created if missing (lowercase letters, digits and `_`,
    /// starting with a letter or `_`, at most 63 bytes). `None` means `vellum`. Separate
    /// schemas let several stores (tests, tenants) share one database.
    pub schema: Option<String>,
    /// Most pooled connections (readers and writers share them; a writer lease has its own).
    pub pool_size: usize,
    /// Connect timeout when the URL sets none (`connect_timeout=`).
    pub connect_timeout: Duration,
    /// After erasing a subject key, rewrite `subject_keys` with `VACUUM FULL` (default) rather
    /// than a plain `VACUUM`. PostgreSQL never overwrites a deleted row in place: a plain
    /// `VACUUM` frees its space but can leave its bytes in the page until reused (measured),
    /// while `VACUUM FULL` writes the live rows to a new file and drops the old one. It locks
    /// the table while it runs (subject-key lookups wait), at a cost proportional to the number
    /// of subjects; erasures are rare.
    pub vacuum_full_on_erase: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            schema: None,
            pool_size: 8,
            connect_timeout: Duration::from_secs(10),
            vacuum_full_on_erase: true,
        }
    }
}

/// The TLS choice for new connections.
#[derive(Clone)]
enum Tls {
    Plain,
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

struct Inner {
    /// `None` only while dropping (shut down without blocking, so dropping the store inside
    /// an async context cannot panic).
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: Pool,
    config: tokio_postgres::Config,
    tls: Tls,
    schema: String,
    /// Month partitions of `event_index` known to exist.
    partitions: parking_lot::Mutex<HashSet<MonthId>>,
    options: PgOptions,
    /// The URL with its password replaced, for messages.
    target: String,
    /// Opens after consecutive failures to get a connection, so that while PostgreSQL is
    /// unreachable every caller fails at once (HTTP 503 with `Retry-After`) instead of each
    /// waiting out a connect timeout; one probe at a time closes it again.
    breaker: parking_lot::Mutex<vellum_core::breaker::CircuitBreaker>,
    /// Shared with the pending-list cleaner task (see [`PendingLists`]).
    pending_lists: Arc<PendingLists>,
}

/// How often the cleaner empties the GIN pending lists of a store that appended.
const PENDING_LIST_CLEAN_EVERY: Duration = Duration::from_secs(1);

/// The GIN pending lists of this schema's indexes (text blocks, tags), emptied in the
/// background.
///
/// A GIN index with `fastupdate` (the default) takes new entries into a pending list and
/// merges the list into the index once it passes `gin_pending_list_limit` (4 MB) — in the
/// insert that crossed the limit. That one append then takes 70–100 ms instead of ~3: at 1,000
/// events/s it was the p99 of commit latency. A task of the store's runtime empties the lists
/// (`gin_clean_pending_list`) once a second after appends, on a pooled connection of its own,
/// so appends only add to short lists. An insert that finds the cleaner at work does not wait
/// for it (PostgreSQL takes its cleanup lock conditionally). Without ownership of the indexes
/// (another role migrated the schema) the call fails and appends clean inline, as before.
#[derive(Default)]
struct PendingLists {
    /// Set by every append; the cleaner runs only when it was set.
    appended: AtomicBool,
    /// Cleaner runs that completed (see [`PgStore::pending_list_cleanups`]).
    cleanups: std::sync::atomic::AtomicU64,
    /// Whether a failed run was already logged at `warn` (once per store).
    warned: AtomicBool,
}

impl PendingLists {
    /// Empties the pending list of every GIN index of `schema`.
    async fn clean(pool: &Pool, schema: &str) -> Result<(), StoreError> {
        let client = pool.get().await.map_err(pool_err)?;
        client
            .query_typed(
                "SELECT gin_clean_pending_list(c.oid)
                 FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_am a ON a.oid = c.relam
                 WHERE n.nspname = $1 AND a.amname = 'gin' AND c.relkind = 'i'",
                &[(&schema, Type::TEXT)],
            )
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    /// The cleaner: runs on the store's runtime until the runtime shuts down with the store.
    async fn run(self: Arc<Self>, pool: Pool, schema: String) {
        let mut tick = tokio::time::interval(PENDING_LIST_CLEAN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !self.appended.swap(false, Ordering::AcqRel) {
                continue;
            }
            match Self::clean(&pool, &schema).await {
                Ok(()) => {
                    self.cleanups.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    if !self.warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "cannot empty the GIN pending lists in the \
                            background; appends will merge them themselves");
                    } else {
                        tracing::debug!(error = %e, "GIN pending-list cleanup failed");
                    }
                }
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// PostgreSQL implementation of [`AuditStore`]; cheap to clone (one pool and runtime shared).
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.inner.target)
            .field("schema", &self.inner.schema)
            .finish()
    }
}

/// For the unit tests that need a server: its URL (`VELLUM_TEST_PG_URL`), or `None` after
/// saying the test skips; under `VELLUM_REQUIRE_SERVICES=1` a missing URL fails the test.
#[cfg(test)]
pub(crate) fn test_pg_url() -> Option<String> {
    let required = std::env::var("VELLUM_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
    let url = std::env::var("VELLUM_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty());
    if url.is_none() {
        assert!(
            !required,
            "VELLUM_REQUIRE_SERVICES=1 but VELLUM_TEST_PG_URL is not set"
        );
        println!("skipping: VELLUM_TEST_PG_URL not set");
    }
    url
}

/// Maps a driver error to the store's: lost connections, shutdowns, resource exhaustion,
/// timeouts and serialization failures are `Unavailable` (retry later, 503); anything else
/// is reported with its SQLSTATE as `Corrupt` (500).
pub(crate) fn pg_err(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let message = match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_owned(),
        };
        let transient = ["08", "53", "57", "58"]
            .iter()
            .any(|class| code.starts_with(class))
            || matches!(code, "40001" | "40P01" | "55P03");
        return if transient {
            StoreError::Unavailable(format!("postgres {code}: {message}"))
        } else {
            StoreError::Corrupt(format!("postgres {code}: {message}"))
        };
    }
    let text = e.to_string();
    if text.starts_with("error deserializing") || text.starts_with("error serializing") {
        StoreError::Corrupt(format!("postgres: {text}"))
    } else {
        StoreError::Unavailable(format!("postgres: {text}"))
    }
}

fn pool_err(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => pg_err(e),
        other => StoreError::Unavailable(format!("postgres pool: {other}")),
    }
}

/// Runs `future` on the store's runtime from whatever context the caller is in (see the
/// module documentation).
fn run_blocking<T, F>(handle: &tokio::runtime::Handle, future: F) -> Result<T, StoreError>
where
    T: Send,
    F: Future<Output = Result<T, StoreError>> + Send,
{
    use tokio::runtime::RuntimeFlavor;
    match tokio::runtime::Handle::try_current() {
        Err(_) => handle.block_on(future),
        Ok(current) => match current.runtime_flavor() {
            RuntimeFlavor::MultiThread => tokio::task::block_in_place(|| handle.block_on(future)),
            _ => std::thread::scope(|scope| {
                scope
                    .spawn(|| handle.block_on(future))
                    .join()
                    .unwrap_or_else(|_| {
                        Err(StoreError::Unavailable(
                            "a PostgreSQL call panicked".to_owned(),
                        ))
                    })
            }),
        },
    }
}

fn valid_schema(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn hash32(bytes: Vec<u8>, what: &str) -> Result<[u8; 32], StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{what} is not 32 bytes")))
}

fn now_text() -> String {
    vellum_core::time_fmt::format_server_time(time::OffsetDateTime::now_utc())
}

const EVENT_COLUMNS: &str = "pos, log_id, seq, canonical, hash, signature, id";

fn row_to_event(row: &tokio_postgres::Row) -> Result<StoredEvent, StoreError> {
    let seq: i64 = row.try_get(2).map_err(pg_err)?;
    let id: Option<uuid::Uuid> = row.try_get(6).map_err(pg_err)?;
    Ok(StoredEvent {
        pos: row.try_get(0).map_err(pg_err)?,
        log_id: row.try_get(1).map_err(pg_err)?,
        seq: u64::try_from(seq).unwrap_or(0),
        canonical: row.try_get(3).map_err(pg_err)?,
        hash: row.try_get(4).map_err(pg_err)?,
        signature: row.try_get(5).map_err(pg_err)?,
        id_column: id.map(|id| *id.as_bytes()),
    })
}

const CHECKPOINT_COLUMNS: &str = "log_id, tree_size, root_hash, timestamp, key_id, signature, note";

fn row_to_checkpoint(row: &tokio_postgres::Row) -> Result<SignedCheckpoint, StoreError> {
    let size: i64 = row.try_get(1).map_err(pg_err)?;
    let root: Vec<u8> = row.try_get(2).map_err(pg_err)?;
    Ok(SignedCheckpoint {
        log_id: row.try_get(0).map_err(pg_err)?,
        tree_size: u64::try_from(size).unwrap_or(0),
        root_hash: hex::encode(root),
        timestamp: row.try_get(3).map_err(pg_err)?,
        key_id: row.try_get(4).map_err(pg_err)?,
        signature: row.try_get(5).map_err(pg_err)?,
        note: row.try_get(6).map_err(pg_err)?,
    })
}

fn row_to_api_key(row: &tokio_postgres::Row) -> Result<ApiKeyRecord, StoreError> {
    Ok(ApiKeyRecord {
        id: row.try_get(0).map_err(pg_err)?,
        key_hash: hash32(row.try_get(1).map_err(pg_err)?, "API key hash")?,
        role: row.try_get(2).map_err(pg_err)?,
        organization_id: row.try_get(3).map_err(pg_err)?,
        name: row.try_get(4).map_err(pg_err)?,
        created_at: row.try_get(5).map_err(pg_err)?,
        revoked_at: row.try_get(6).map_err(pg_err)?,
    })
}

/// Queues raw audit events in the outbox inside the caller's transaction.
async fn push_outbox_in(
    tx: &tokio_postgres::Transaction<'_>,
    events: &[String],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    tx.query_typed(
        "INSERT INTO outbox (created_at, event)
         SELECT $1, e FROM unnest($2::text[]) WITH ORDINALITY AS u(e, o) ORDER BY o",
        &[(&now_text(), Type::TEXT), (&events, Type::TEXT_ARRAY)],
    )
    .await
    .map_err(pg_err)?;
    Ok(())
}

/// Keeps the last of several entries with the same key (SQLite's `INSERT OR REPLACE` in a
/// loop; PostgreSQL refuses to upsert one row twice in one statement).
fn last_wins<K: std::hash::Hash + Eq, T>(items: impl IntoIterator<Item = (K, T)>) -> Vec<T> {
    let mut latest: HashMap<K, (usize, T)> = HashMap::new();
    for (i, (key, item)) in items.into_iter().enumerate() {
        latest.insert(key, (i, item));
    }
    let mut out: Vec<(usize, T)> = latest.into_values().collect();
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, item)| item).collect()
}

/// One dedicated (unpooled) connection and the task driving it.
struct Dedicated {
    client: tokio_postgres::Client,
    task: tokio::task::JoinHandle<()>,
    /// Set when the connection ends (server gone, session terminated, or closed by us).
    closed: Arc<AtomicBool>,
}

impl Inner {
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        let now = std::time::Instant::now();
        if !self.breaker.lock().allow(now) {
            let wait = self
                .breaker
                .lock()
                .retry_after(now)
                .unwrap_or(Duration::from_secs(1));
            return Err(StoreError::Unavailable(format!(
                "PostgreSQL is unreachable (circuit open; next attempt in {} ms)",
                wait.as_millis()
            )));
        }
        let got = self.pool.get().await;
        let mut breaker = self.breaker.lock();
        match got {
            Ok(client) => {
                breaker.on_success(std::time::Instant::now());
                Ok(client)
            }
            Err(e) => {
                let e = pool_err(e);
                if matches!(e, StoreError::Unavailable(_)) {
                    breaker.on_failure(std::time::Instant::now());
                } else {
                    breaker.on_success(std::time::Instant::now());
                }
                Err(e)
            }
        }
    }

    /// A connection outside the pool (writer leases: their session *is* the lock).
    async fn connect_dedicated(&self) -> Result<Dedicated, StoreError> {
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        let unavailable = |e: tokio_postgres::Error| {
            StoreError::Unavailable(format!("cannot connect to {}: {}", self.target, pg_err(e)))
        };
        let (client, task) = match &self.tls {
            Tls::Plain => {
                let (client, connection) = self
                    .config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(unavailable)?;
                let task = self.handle.spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "PostgreSQL lease connection ended");
                    }
                    flag.store(true, Ordering::SeqCst);
                });
                (client, task)
            }
            Tls::Rustls(tls) => {
                let (client, connection) = self
                    .config
                    .connect(tls.clone())
                    .await
                    .map_err(unavailable)?;
                let task = self.handle.spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "PostgreSQL lease connection ended");
                    }
                    flag.store(true, Ordering::SeqCst);
                });
                (client, task)
            }
        };
        Ok(Dedicated {
            client,
            task,
            closed,
        })
    }

    async fn log_heads_on(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<Vec<LogHead>, StoreError> {
        // A loose index scan: one index seek per log rather than a pass over every event.
        let rows = client
            .query_typed(
                "WITH RECURSIVE l(log_id) AS (
                     (SELECT log_id FROM events ORDER BY log_id LIMIT 1)
                     UNION ALL
                     SELECT (SELECT e.log_id FROM events e WHERE e.log_id > l.log_id
                             ORDER BY e.log_id LIMIT 1)
                     FROM l WHERE l.log_id IS NOT NULL
                 )
                 SELECT l.log_id, h.seq, h.hash FROM l
                 CROSS JOIN LATERAL (SELECT seq, hash FROM events e WHERE e.log_id = l.log_id
                                     ORDER BY seq DESC LIMIT 1) h
                 WHERE l.log_id IS NOT NULL",
                &[],
            )
            .await
            .map_err(pg_err)?;
        let mut heads = Vec::with_capacity(rows.len());
        for row in rows {
            let seq: i64 = row.try_get(1).map_err(pg_err)?;
            heads.push(LogHead {
                log_id: row.try_get(0).map_err(pg_err)?,
                size: u64::try_from(seq).unwrap_or(0) + 1,
                last_hash: hash32(row.try_get(2).map_err(pg_err)?, "stored hash")?,
            });
        }
        Ok(heads)
    }

    /// Appends `batch` in one transaction on `client` (a pooled connection, or a lease's own).
    async fn append_on(
        &self,
        client: &mut tokio_postgres::Client,
        statements: Option<&StatementCache>,
        batch: &AppendBatch,
    ) -> Result<(), StoreError> {
        if batch.events.is_empty()
            && batch.idempotency.is_empty()
            && batch.tiles.is_empty()
            && batch.checkpoints.is_empty()
        {
            return Ok(());
        }
        // Parse each body once for the index (outside the transaction), unless the writer
        // had it done ahead (`prepare`).
        let built;
        let index = match &batch.prepared.index {
            Some(index) if batch.prepared.covered == batch.events.len() => index,
            _ => {
                let mut index = search::IndexColumns::default();
                index_rows(&batch.events, &mut index);
                built = index;
                &built
            }
        };
        let block_of_rows = index.block_of_rows();
        let tail_block = index.tail_block();
        let block_lexemes = index.block_lexemes(tail_block.as_ref());
        let months: Vec<MonthId> = index
            .ms
            .iter()
            .filter_map(|&ms| schema::partition_of(ms))
            .collect();
        schema::ensure_partitions(client, &self.schema, &self.partitions, months).await?;

        let log_ids: Vec<&str> = batch.events.iter().map(|e| e.log_id.as_str()).collect();
        let seqs: Vec<i64> = batch.events.iter().map(|e| to_i64(e.seq)).collect();
        let ids: Vec<uuid::Uuid> = batch
            .events
            .iter()
            .map(|e| uuid::Uuid::from_bytes(e.id))
            .collect();
        let hashes: Vec<&[u8]> = batch.events.iter().map(|e| &e.hash[..]).collect();
        let signatures: Vec<Option<&[u8]>> = batch
            .events
            .iter()
            .map(|e| e.signature.as_ref().map(|s| &s[..]))
            .collect();
        let bodies: Vec<&str> = batch.events.iter().map(|e| e.canonical.as_str()).collect();

        let receipts = last_wins(batch.idempotency.iter().map(|r| (r.key.as_str(), r)));
        let receipt_hashes: Vec<Vec<u8>> = receipts
            .iter()
            .map(|r| vellum_core::integrity::sha256(r.key.as_bytes()).to_vec())
            .collect();
        let receipt_keys: Vec<&str> = receipts.iter().map(|r| r.key.as_str()).collect();
        let receipt_created: Vec<i64> = receipts.iter().map(|r| r.created_micros).collect();
        let receipt_bodies: Vec<&str> = receipts.iter().map(|r| r.receipt.as_str()).collect();

        let tiles = last_wins(
            batch
                .tiles
                .iter()
                .map(|(log, t)| ((log.as_str(), t.key.level, t.key.index), (log, t))),
        );
        let tile_logs: Vec<&str> = tiles.iter().map(|(log, _)| log.as_str()).collect();
        let tile_levels: Vec<i16> = tiles.iter().map(|(_, t)| i16::from(t.key.level)).collect();
        let tile_indexes: Vec<i64> = tiles.iter().map(|(_, t)| to_i64(t.key.index)).collect();
        let tile_bytes: Vec<Vec<u8>> = tiles.iter().map(|(_, t)| t.to_bytes()).collect();

        let mut cp_roots = Vec::with_capacity(batch.checkpoints.len());
        for cp in &batch.checkpoints {
            cp_roots.push(
                hex::decode(&cp.root_hash)
                    .map_err(|_| StoreError::Corrupt("checkpoint root hash is not hex".into()))?,
            );
        }
        let cp_logs: Vec<&str> = batch
            .checkpoints
            .iter()
            .map(|c| c.log_id.as_str())
            .collect();
        let cp_sizes: Vec<i64> = batch
            .checkpoints
            .iter()
            .map(|c| to_i64(c.tree_size))
            .collect();
        let cp_times: Vec<&str> = batch
            .checkpoints
            .iter()
            .map(|c| c.timestamp.as_str())
            .collect();
        let cp_keys: Vec<&str> = batch
            .checkpoints
            .iter()
            .map(|c| c.key_id.as_str())
            .collect();
        let cp_sigs: Vec<&str> = batch
            .checkpoints
            .iter()
            .map(|c| c.signature.as_str())
            .collect();
        let cp_notes: Vec<&str> = batch.checkpoints.iter().map(|c| c.note.as_str()).collect();

        let tx = client.transaction().await.map_err(pg_err)?;
        // The statements are sent together (pipelined) and run in order; the first failure
        // aborts the transaction, and dropping it uncommitted rolls everything back.
        let events =
            async {
                if batch.events.is_empty() {
                    return Ok(());
                }
                execute_cached(&tx, statements,
                "WITH ins AS (
                     INSERT INTO events (log_id, seq, id, hash, signature, canonical)
                     SELECT r.log_id, r.seq, r.id, r.hash, r.signature, r.canonical
                     FROM unnest($1::text[], $2::int8[], $3::uuid[], $4::bytea[], $5::bytea[],
                                 $6::text[]) WITH ORDINALITY
                          AS r(log_id, seq, id, hash, signature, canonical, ord)
                     ORDER BY r.ord
                     RETURNING pos, log_id, seq
                 ), blocks AS MATERIALIZED (
                     SELECT u.n - 1 AS block, nextval('text_blocks_blk') AS blk, u.lexemes
                     FROM unnest($27::tsvector[]) WITH ORDINALITY AS u(lexemes, n)
                 ), new_blocks AS (
                     INSERT INTO text_blocks (blk, lexemes) SELECT blk, lexemes FROM blocks
                 )
                 INSERT INTO event_index (ms, pos, ts, log_id, seq, action, status,
                     classification, principal_id, organization_id, target_type, target_id,
                     session_id, ip, patient_id, subject_id, correlation_id, emergency, tags, tsv,
                     blk)
                 SELECT x.ms, ins.pos, x.ts, ins.log_id, ins.seq, x.action, x.status,
                     x.classification, x.principal_id, x.organization_id, x.target_type,
                     x.target_id, x.session_id, x.ip, x.patient_id, x.subject_id,
                     x.correlation_id, x.emergency, x.tags::int8[], x.tsv, blocks.blk
                 FROM ins JOIN unnest($7::text[], $8::int8[], $9::int8[], $10::int8[],
                     $11::text[], $12::text[], $13::text[], $14::text[], $15::text[],
                     $16::text[], $17::text[], $18::text[], $19::text[], $20::text[],
                     $21::text[], $22::text[], $23::bool[], $24::text[], $25::tsvector[],
                     $26::int4[])
                   AS x(log_id, seq, ms, ts, action, status, classification, principal_id,
                        organization_id, target_type, target_id, session_id, ip, patient_id,
                        subject_id, correlation_id, emergency, tags, tsv, block)
                   ON x.log_id = ins.log_id AND x.seq = ins.seq
                 JOIN blocks ON blocks.block = x.block",
                &[
                    (&log_ids, Type::TEXT_ARRAY),
                    (&seqs, Type::INT8_ARRAY),
                    (&ids, Type::UUID_ARRAY),
                    (&hashes, Type::BYTEA_ARRAY),
                    (&signatures, Type::BYTEA_ARRAY),
                    (&bodies, Type::TEXT_ARRAY),
                    (&index.log_id, Type::TEXT_ARRAY),
                    (&index.seq, Type::INT8_ARRAY),
                    (&index.ms, Type::INT8_ARRAY),
                    (&index.ts, Type::INT8_ARRAY),
                    (&index.action, Type::TEXT_ARRAY),
                    (&index.status, Type::TEXT_ARRAY),
                    (&index.classification, Type::TEXT_ARRAY),
                    (&index.principal_id, Type::TEXT_ARRAY),
                    (&index.organization_id, Type::TEXT_ARRAY),
                    (&index.target_type, Type::TEXT_ARRAY),
                    (&index.target_id, Type::TEXT_ARRAY),
                    (&index.session_id, Type::TEXT_ARRAY),
                    (&index.ip, Type::TEXT_ARRAY),
                    (&index.patient_id, Type::TEXT_ARRAY),
                    (&index.subject_id, Type::TEXT_ARRAY),
                    (&index.correlation_id, Type::TEXT_ARRAY),
                    (&index.emergency, Type::BOOL_ARRAY),
                    (&index.tags, Type::TEXT_ARRAY),
                    (&index.tsv, Type::TS_VECTOR_ARRAY),
                    (&block_of_rows, Type::INT4_ARRAY),
                    (&block_lexemes, Type::TS_VECTOR_ARRAY),
                ],
            )
            .await
            .map(|_| ())
            .map_err(|e| {
                if e.as_db_error().is_some_and(|db| {
                    db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION
                        && db.constraint() == Some("events_pkey")
                }) {
                    StoreError::Corrupt(format!(
                        "append refused: the log already has an event at one of these positions \
                         (UNIQUE(log_id, seq)); another writer appended to it: {}",
                        pg_err(e)
                    ))
                } else {
                    pg_err(e)
                }
            })
            };
        let receipts = async {
            if receipt_keys.is_empty() {
                return Ok(());
            }
            execute_cached(
                &tx,
                statements,
                "INSERT INTO idempotency (key_hash, key, created, receipt)
                 SELECT * FROM unnest($1::bytea[], $2::text[], $3::int8[], $4::text[])
                 ON CONFLICT (key_hash) DO UPDATE
                 SET key = EXCLUDED.key, created = EXCLUDED.created, receipt = EXCLUDED.receipt",
                &[
                    (&receipt_hashes, Type::BYTEA_ARRAY),
                    (&receipt_keys, Type::TEXT_ARRAY),
                    (&receipt_created, Type::INT8_ARRAY),
                    (&receipt_bodies, Type::TEXT_ARRAY),
                ],
            )
            .await
            .map(|_| ())
            .map_err(pg_err)
        };
        let tiles = async {
            if tile_logs.is_empty() {
                return Ok(());
            }
            execute_cached(
                &tx,
                statements,
                "INSERT INTO merkle_tiles (log_id, level, idx, hashes)
                 SELECT * FROM unnest($1::text[], $2::int2[], $3::int8[], $4::bytea[])
                 ON CONFLICT (log_id, level, idx) DO UPDATE SET hashes = EXCLUDED.hashes",
                &[
                    (&tile_logs, Type::TEXT_ARRAY),
                    (&tile_levels, Type::INT2_ARRAY),
                    (&tile_indexes, Type::INT8_ARRAY),
                    (&tile_bytes, Type::BYTEA_ARRAY),
                ],
            )
            .await
            .map(|_| ())
            .map_err(pg_err)
        };
        let checkpoints = async {
            if cp_logs.is_empty() {
                return Ok(());
            }
            execute_cached(
                &tx,
                statements,
                "INSERT INTO checkpoints (log_id, tree_size, root_hash, timestamp, key_id,
                     signature, note)
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[], $4::text[],
                     $5::text[], $6::text[], $7::text[])
                 ON CONFLICT DO NOTHING",
                &[
                    (&cp_logs, Type::TEXT_ARRAY),
                    (&cp_sizes, Type::INT8_ARRAY),
                    (&cp_roots, Type::BYTEA_ARRAY),
                    (&cp_times, Type::TEXT_ARRAY),
                    (&cp_keys, Type::TEXT_ARRAY),
                    (&cp_sigs, Type::TEXT_ARRAY),
                    (&cp_notes, Type::TEXT_ARRAY),
                ],
            )
            .await
            .map(|_| ())
            .map_err(pg_err)
        };
        // Report the first statement's error: the later ones then only say "transaction
        // aborted".
        let (r1, r2, r3, r4) = futures_util::join!(events, receipts, tiles, checkpoints);
        r1?;
        r2?;
        r3?;
        r4?;
        // `synchronous_commit=on` for these sessions: COMMIT returns once the WAL is flushed.
        tx.commit().await.map_err(pg_err)?;
        if !batch.events.is_empty() {
            self.pending_lists.appended.store(true, Ordering::Release);
        }
        Ok(())
    }
}

/// Statements prepared on one connection, by their SQL text.
#[derive(Default)]
struct StatementCache {
    prepared: parking_lot::Mutex<HashMap<&'static str, tokio_postgres::Statement>>,
}

/// Runs `sql` in `tx`: as a statement prepared once per connection when `cache` is given, else
/// as an unnamed statement (parsed and planned each time).
async fn execute_cached(
    tx: &tokio_postgres::Transaction<'_>,
    cache: Option<&StatementCache>,
    sql: &'static str,
    params: &[(&(dyn tokio_postgres::types::ToSql + Sync), Type)],
) -> Result<u64, tokio_postgres::Error> {
    let Some(cache) = cache else {
        return tx
            .query_typed(sql, params)
            .await
            .map(|rows| rows.len() as u64);
    };
    let known = cache.prepared.lock().get(sql).cloned();
    let statement = match known {
        Some(statement) => statement,
        None => {
            let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
            let statement = tx.prepare_typed(sql, &types).await?;
            cache.prepared.lock().insert(sql, statement.clone());
            statement
        }
    };
    let values: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        params.iter().map(|(v, _)| *v).collect();
    tx.execute(&statement, &values).await
}

impl PgStore {
    /// Connects (a pool of up to [`PgOptions::pool_size`] connections), creates the schema if
    /// needed and migrates it. `url` is a libpq-style URL or key/value string; `sslmode` may be
    /// `disable`, `prefer`, `require`, `verify-ca` or `verify-full` (rustls; `sslrootcert`
    /// names the CA file for the verifying modes). The password never appears in errors.
    pub fn connect(url: &str, options: PgOptions) -> Result<PgStore, StoreError> {
        let schema = options
            .schema
            .clone()
            .unwrap_or_else(|| "vellum".to_owned());
        if !valid_schema(&schema) {
            return Err(StoreError::Unavailable(format!(
                "invalid PostgreSQL schema name {schema:?} (lowercase letters, digits, _)"
            )));
        }
        let target = url::parse(url)?;
        let tls = match url::tls_connector(&target)? {
            Some(connector) => Tls::Rustls(connector),
            None => Tls::Plain,
        };
        let mut config = target.config.clone();
        config.ssl_mode(url::driver_mode(target.ssl));
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        // Dead peers are noticed (a lease whose server vanished stops being held).
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        // Durability does not depend on the server's default: ack means durable.
        let session = format!("-c search_path={schema} -c synchronous_commit=on");
        let session = match config.get_options() {
            Some(own) => format!("{own} {session}"),
            None => session,
        };
        config.options(&session);
        if config.get_application_name().is_none() {
            config.application_name("vellum");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vellum-pg")
            .enable_all()
            .build()
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot start PostgreSQL runtime: {e}"))
            })?;
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Tls::Plain => {
                Manager::from_config(config.clone(), tokio_postgres::NoTls, manager_config)
            }
            Tls::Rustls(tls) => Manager::from_config(config.clone(), tls.clone(), manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("PostgreSQL pool: {e}")))?;
        let store = PgStore {
            inner: Arc::new(Inner {
                handle: runtime.handle().clone(),
                runtime: Some(runtime),
                pool,
                config,
                tls,
                schema,
                partitions: parking_lot::Mutex::new(HashSet::new()),
                options,
                target: url::redact(url),
                breaker: parking_lot::Mutex::new(vellum_core::breaker::CircuitBreaker::new(
                    3,
                    Duration::from_secs(2),
                )),
                pending_lists: Arc::default(),
            }),
        };
        let inner = &store.inner;
        store.block_on(async {
            let mut client = inner.client().await.map_err(|e| {
                StoreError::Unavailable(format!("cannot connect to {}: {e}", inner.target))
            })?;
            schema::migrate(&mut client, &inner.schema).await?;
            let existing = schema::existing_partitions(&client, &inner.schema).await?;
            inner.partitions.lock().extend(existing);
            // This month's and next month's partitions, so that the first append of a month
            // does not wait for DDL.
            if let Some(now) = schema::month_of_now() {
                schema::ensure_partitions(
                    &mut client,
                    &inner.schema,
                    &inner.partitions,
                    [now, now + 1],
                )
                .await?;
            }
            Ok(())
        })?;
        inner.handle.spawn(
            inner
                .pending_lists
                .clone()
                .run(inner.pool.clone(), inner.schema.clone()),
        );
        Ok(store)
    }

    /// Background GIN pending-list cleanups completed so far (see `PendingLists`): for
    /// metrics and tests.
    pub fn pending_list_cleanups(&self) -> u64 {
        self.inner.pending_lists.cleanups.load(Ordering::Relaxed)
    }

    /// The schema holding the store's tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    fn block_on<T: Send>(
        &self,
        future: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        run_blocking(&self.inner.handle, future)
    }

    /// Readiness: `SELECT 1` on a pooled connection within 2 s.
    pub fn ping(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            tokio::time::timeout(Duration::from_secs(2), async {
                let client = inner.client().await?;
                client.simple_query("SELECT 1").await.map_err(pg_err)?;
                Ok::<(), StoreError>(())
            })
            .await
            .map_err(|_| StoreError::Unavailable("PostgreSQL ping timed out".to_owned()))?
        })
    }

    /// Which of `lock_keys` no session of this database holds right now, in one query over
    /// `pg_locks`: how a worker sees free partitions every second without opening a session
    /// per probe. A key can be taken between this answer and a [`PgStore::writer_lease`];
    /// the lease is what decides.
    pub fn free_lock_keys(&self, lock_keys: &[i64]) -> Result<Vec<i64>, StoreError> {
        let inner = &self.inner;
        let keys = lock_keys.to_vec();
        self.block_on(async {
            let client = inner.client().await?;
            let rows = client
                .query_typed(
                    "SELECT k FROM unnest($1::int8[]) AS k
                     WHERE NOT EXISTS (
                         SELECT 1 FROM pg_locks l
                         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                           AND l.database = (SELECT oid FROM pg_database
                                             WHERE datname = current_database())
                           AND ((l.classid::int8 << 32) | l.objid::int8) = k)
                     ORDER BY k",
                    &[(&keys, Type::INT8_ARRAY)],
                )
                .await
                .map_err(pg_err)?;
            rows.iter()
                .map(|r| r.try_get::<_, i64>(0).map_err(pg_err))
                .collect()
        })
    }

    /// Takes the writer lease for `lock_keys` (see [`lock_key_for_partition`]): a dedicated
    /// connection holding a session advisory lock on every key, all or nothing. `Ok(None)`
    /// when another session holds any of them (what it took is released). The lease's
    /// [`AuditStore::append`] runs on that connection, so once the session is gone (and with it
    /// the locks, which another writer may then take) this lease can append nothing more.
    pub fn writer_lease(&self, lock_keys: &[i64]) -> Result<Option<PgLease>, StoreError> {
        let inner = &self.inner;
        let dedicated = self.block_on(async {
            let dedicated = inner.connect_dedicated().await?;
            for key in lock_keys {
                let taken: bool = dedicated
                    .client
                    .query_typed_one("SELECT pg_try_advisory_lock($1)", &[(key, Type::INT8)])
                    .await
                    .map_err(pg_err)?
                    .try_get(0)
                    .map_err(pg_err)?;
                if !taken {
                    // Closing the session releases what it took.
                    let Dedicated { client, task, .. } = dedicated;
                    drop(client);
                    let _ = task.await;
                    return Ok(None);
                }
            }
            Ok(Some(dedicated))
        })?;
        Ok(dedicated.map(|d| PgLease {
            store: self.clone(),
            client: tokio::sync::Mutex::new(Some(d.client)),
            task: parking_lot::Mutex::new(Some(d.task)),
            closed: d.closed,
            keys: lock_keys.to_vec(),
            statements: StatementCache::default(),
        }))
    }
}

/// Adds the search index rows of `events` to `index`. A purged event (tombstone) is not
/// searchable; a body that does not parse is indexed as empty rather than refused (`vellum
/// verify` reports it).
fn index_rows(events: &[NewEvent], index: &mut search::IndexColumns) {
    for event in events {
        if vellum_core::retention::Tombstone::from_body(&event.canonical).is_none() {
            let row = crate::index::extract(&event.canonical).unwrap_or_default();
            index.push(&event.log_id, to_i64(event.seq), row);
        }
    }
    index.complete_blocks();
}

/// [`AuditStore::prepare`] of both PostgreSQL stores: the index rows of the events not yet
/// covered.
fn prepare_index(batch: &mut AppendBatch) {
    if batch.prepared.covered > batch.events.len() {
        batch.prepared = Prepared::default();
    }
    let covered = batch.prepared.covered;
    let index = batch.prepared.index.get_or_insert_with(Default::default);
    index_rows(&batch.events[covered..], index);
    batch.prepared.covered = batch.events.len();
}

impl AuditStore for PgStore {
    fn prepare(&self, batch: &mut AppendBatch) {
        prepare_index(batch);
    }

    fn log_heads(&self) -> Result<Vec<LogHead>, StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            let client = inner.client().await?;
            inner.log_heads_on(&client).await
        })
    }

    fn append(&self, batch: &AppendBatch) -> Result<(), StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            let mut client = inner.client().await?;
            inner.append_on(&mut client, None, batch).await
        })
    }

    fn idempotent_receipts(
        &self,
        keys: &[&str],
        not_before_micros: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let hashes: Vec<Vec<u8>> = keys
            .iter()
            .map(|k| vellum_core::integrity::sha256(k.as_bytes()).to_vec())
            .collect();
        let found: HashMap<String, String> = self.block_on(async {
            let client = inner.client().await?;
            // Every group commit asks, so this must stay a primary-key probe, and two plans
            // PostgreSQL preferred were scans of every receipt (seen in the scale-out
            // benchmark, where they took half the database's CPU):
            // - as a named prepared statement, it switches to its generic plan after five
            //   runs, and a generic plan made while the table was nearly empty is a
            //   sequential scan, kept until the next ANALYZE. `query_typed` sends the
            //   unnamed statement instead, planned for these keys, in one round trip;
            // - with `created >= $2` in the query, an unanalyzed table makes the `created`
            //   index look selective, and the scan reads every receipt of the window. The
            //   window is applied here instead, so the key is the only indexed condition.
            let rows = client
                .query_typed(
                    "SELECT key, receipt, created FROM idempotency WHERE key_hash = ANY($1)",
                    &[(&hashes, Type::BYTEA_ARRAY)],
                )
                .await
                .map_err(pg_err)?;
            let mut found = HashMap::with_capacity(rows.len());
            for r in &rows {
                let created: i64 = r.try_get(2).map_err(pg_err)?;
                if created >= not_before_micros {
                    found.insert(r.try_get(0).map_err(pg_err)?, r.try_get(1).map_err(pg_err)?);
                }
            }
            Ok::<_, StoreError>(found)
        })?;
        // In the order asked, like SQLite's one lookup per key.
        Ok(keys
            .iter()
            .filter_map(|k| found.get(*k).map(|r| ((*k).to_owned(), r.clone())))
            .collect())
    }

    fn expire_idempotency(&self, before_micros: i64) -> Result<usize, StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            let client = inner.client().await?;
            let n = client
                .execute(
                    "DELETE FROM idempotency WHERE created < $1",
                    &[&before_micros],
                )
                .await
                .map_err(pg_err)?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn get_event(&self, id: &uuid::Uuid) -> Result<Option<StoredEvent>, StoreError> {
        Ok(self.events_by_id(std::slice::from_ref(id))?.pop())
    }

    fn events_by_id(&self, ids: &[uuid::Uuid]) -> Result<Vec<StoredEvent>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let events = self.block_on(async {
            let client = inner.client().await?;
            // Unnamed (`query_typed`), for the reason `idempotent_receipts` gives: planned
            // for these ids, a probe of `events_id_key` each.
            let rows = client
                .query_typed(
                    &format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ANY($1)"),
                    &[(&ids, Type::UUID_ARRAY)],
                )
                .await
                .map_err(pg_err)?;
            rows.iter().map(row_to_event).collect::<Result<Vec<_>, _>>()
        })?;
        for event in &events {
            let id = uuid::Uuid::from_bytes(event.id_column.unwrap_or_default());
            event.check_filed_under(&id)?;
        }
        Ok(events)
    }

    fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            let client = inner.client().await?;
            search::search(&client, query).await
        })
    }

    fn stats(&self, query: &StatsQuery) -> Result<Stats, StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            let client = inner.client().await?;
            search::stats(&client, query).await
        })
    }

    fn scan_log(
        &self,
        log_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let inner = &self.inner;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.block_on(async {
            let client = inner.client().await?;
            let rows = client
                .query_typed(
                    &format!(
                        "SELECT {EVENT_COLUMNS} FROM events
                         WHERE log_id = $1 AND seq >= $2 ORDER BY seq LIMIT $3"
                    ),
                    &[
                        (&log_id, Type::TEXT),
                        (&to_i64(from_seq), Type::INT8),
                        (&limit, Type::INT8),
                    ],
                )
                .await
                .map_err(pg_err)?;
            rows.iter().map(row_to_event).collect()
        })
    }

    fn insert_api_key(&self, key: &ApiKeyRecord, audit: &[String]) -> Result<(), StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            let mut client = inner.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            tx.execute(
                "INSERT INTO api_keys (id, key_hash, role, organization_id, name, created_at,
                     revoked_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &key.id,
                    &&key.key_hash[..],
                    &key.role,
                    &key.organization_id,
                    &key.name,
                    &key.created_at,
                    &key.revoked_at,
                ],
            )
            .await
            .map_err(pg_err)?;
            push_outbox_in(&tx, audit).await?;
            tx.commit().await.map_err(pg_err)
        })
    }

    fn find_api_key(&self, key_hash: &[u8; 32]) -> Result<Option<ApiKeyRecord>, StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            let client = inner.client().await?;
            let row = client
                .query_typed_opt(
                    "SELECT id, key_hash, role, organization_id, name, created_at, revoked_at
                     FROM api_keys WHERE key_hash = $1",
                    &[(&&key_hash[..], Type::BYTEA)],
                )
                .await
                .map_err(pg_err)?;
            row.as_ref().map(row_to_api_key).transpose()
        })
    }

    fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            let client = inner.client().await?;
            let rows = client
                .query_typed(
                    "SELECT id, key_hash, role, organization_id, name, created_at, revoked_at
                     FROM api_keys ORDER BY created_at COLLATE \"C\", id COLLATE \"C\"",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            rows.iter().map(row_to_api_key).collect()
        })
    }

    fn revoke_api_key(&self, id: &str, at: &str, audit: &[String]) -> Result<bool, StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            let mut client = inner.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let changed = tx
                .execute(
                    "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                    &[&id, &at],
                )
                .await
                .map_err(pg_err)?;
            if changed > 0 {
                push_outbox_in(&tx, audit).await?;
            }
            tx.commit().await.map_err(pg_err)?;
            Ok(changed > 0)
        })
    }

    fn tombstone_events(&self, log_id: &str, rows: &[TombstoneWrite]) -> Result<usize, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let inner = &self.inner;
        let seqs: Vec<i64> = rows.iter().map(|r| to_i64(r.seq)).collect();
        let hashes: Vec<&[u8]> = rows.iter().map(|r| &r.hash[..]).collect();
        let bodies: Vec<&str> = rows.iter().map(|r| r.body.as_str()).collect();
        self.block_on(async {
            let mut client = inner.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            // The body is replaced only where the row still has the given hash, and the row
            // leaves the search index in the same transaction.
            let row = tx
                .query_typed_one(
                    "WITH r AS (
                         SELECT * FROM unnest($2::int8[], $3::bytea[], $4::text[])
                             AS r(seq, hash, body)
                     ), upd AS (
                         UPDATE events e SET canonical = r.body, signature = NULL
                         FROM r WHERE e.log_id = $1 AND e.seq = r.seq AND e.hash = r.hash
                         RETURNING e.pos
                     ), gone AS (
                         DELETE FROM event_index i WHERE i.pos IN (SELECT pos FROM upd)
                         RETURNING i.blk
                     )
                     SELECT (SELECT count(*) FROM upd),
                            (SELECT coalesce(array_agg(DISTINCT blk), '{}') FROM gone)",
                    &[
                        (&log_id, Type::TEXT),
                        (&seqs, Type::INT8_ARRAY),
                        (&hashes, Type::BYTEA_ARRAY),
                        (&bodies, Type::TEXT_ARRAY),
                    ],
                )
                .await
                .map_err(pg_err)?;
            let replaced: i64 = row.try_get(0).map_err(pg_err)?;
            // The purged events' words leave their text blocks too: each block touched is
            // rebuilt from the rows it still has (a separate statement, which sees the delete).
            let blocks: Vec<i64> = row.try_get(1).map_err(pg_err)?;
            if !blocks.is_empty() {
                tx.execute_typed(
                    "UPDATE text_blocks b SET lexemes = coalesce(
                         (SELECT array_to_tsvector(array_agg(DISTINCT l))
                          FROM event_index i, unnest(tsvector_to_array(i.tsv)) AS l
                          WHERE i.blk = b.blk),
                         ''::tsvector)
                     WHERE b.blk = ANY($1)",
                    &[(&blocks, Type::INT8_ARRAY)],
                )
                .await
                .map_err(pg_err)?;
            }
            tx.commit().await.map_err(pg_err)?;
            Ok(usize::try_from(replaced).unwrap_or(0))
        })
    }

    fn insert_legal_hold(
        &self,
        hold: &LegalHoldRecord,
        audit: &[String],
    ) -> Result<(), StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            let mut client = inner.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            tx.execute(
                "INSERT INTO legal_holds (id, reason, organization_id, principal_id, patient_id,
                     data_subject_id, created_at, created_by, released_at, released_by)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL)",
                &[
                    &hold.id,
                    &hold.reason,
                    &hold.organization_id,
                    &hold.principal_id,
                    &hold.patient_id,
                    &hold.data_subject_id,
                    &hold.created_at,
                    &hold.created_by,
                ],
            )
            .await
            .map_err(pg_err)?;
            push_outbox_in(&tx, audit).await?;
            tx.commit().await.map_err(pg_err)
        })
    }

    fn release_legal_hold(
        &self,
        id: &str,
        at: &str,
        by: &str,
        audit: &[String],
    ) -> Result<bool, StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            let mut client = inner.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let changed = tx
                .execute(
                    "UPDATE legal_holds SET released_at = $2, released_by = $3
                     WHERE id = $1 AND released_at IS NULL",
                    &[&id, &at, &by],
                )
                .await
                .map_err(pg_err)?;
            if changed > 0 {
                push_outbox_in(&tx, audit).await?;
            }
            tx.commit().await.map_err(pg_err)?;
            Ok(changed > 0)
        })
    }

    fn legal_holds(&self) -> Result<Vec<LegalHoldRecord>, StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            let client = inner.client().await?;
            let rows = client
                .query_typed(
                    "SELECT id, reason, organization_id, principal_id, patient_id,
                         data_subject_id, created_at, created_by, released_at, released_by
                     FROM legal_holds ORDER BY created_at COLLATE \"C\", id COLLATE \"C\"",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            rows.iter()
                .map(|r| {
                    Ok(LegalHoldRecord {
                        id: r.try_get(0).map_err(pg_err)?,
                        reason: r.try_get(1).map_err(pg_err)?,
                        organization_id: r.try_get(2).map_err(pg_err)?,
                        principal_id: r.try_get(3).map_err(pg_err)?,
                        patient_id: r.try_get(4).map_err(pg_err)?,
                        data_subject_id: r.try_get(5).map_err(pg_err)?,
                        created_at: r.try_get(6).map_err(pg_err)?,
                        created_by: r.try_get(7).map_err(pg_err)?,
                        released_at: r.try_get(8).map_err(pg_err)?,
                        released_by: r.try_get(9).map_err(pg_err)?,
                    })
                })
                .collect()
        })
    }

    fn meta_set_audited(&self, key: &str, value: &str, audit: &[String]) -> Result<(), StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            let mut client = inner.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&key, &value],
            )
            .await
            .map_err(pg_err)?;
            push_outbox_in(&tx, audit).await?;
            tx.commit().await.map_err(pg_err)
        })
    }

    fn subject_key(&self, lookup: &str) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            let client = inner.client().await?;
            let row = client
                .query_typed_opt(
                    "SELECT subject_ref, wrapped FROM subject_keys WHERE lookup = $1",
                    &[(&lookup, Type::TEXT)],
                )
                .await
                .map_err(pg_err)?;
            row.map(|r| Ok((r.try_get(0).map_err(pg_err)?, r.try_get(1).map_err(pg_err)?)))
                .transpose()
        })
    }

    fn subject_key_by_ref(&self, subject_ref: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            let client = inner.client().await?;
            let row = client
                .query_typed_opt(
                    "SELECT wrapped FROM subject_keys WHERE subject_ref = $1",
                    &[(&subject_ref, Type::TEXT)],
                )
                .await
                .map_err(pg_err)?;
            row.map(|r| r.try_get(0).map_err(pg_err)).transpose()
        })
    }

    /// Race-safe: of two concurrent inserts for one `lookup`, the second waits for the first
    /// (`ON CONFLICT DO NOTHING`) and then reads the key the first stored.
    fn insert_subject_key(
        &self,
        lookup: &str,
        subject_ref: &str,
        wrapped: &[u8],
    ) -> Result<(String, Vec<u8>), StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            let client = inner.client().await?;
            client
                .execute(
                    "INSERT INTO subject_keys (lookup, subject_ref, wrapped, created_at)
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    &[&lookup, &subject_ref, &wrapped, &now_text()],
                )
                .await
                .map_err(pg_err)?;
            // A new statement, so a new snapshot: it sees the row that made ours conflict.
            let row = client
                .query_typed_one(
                    "SELECT subject_ref, wrapped FROM subject_keys WHERE lookup = $1",
                    &[(&lookup, Type::TEXT)],
                )
                .await
                .map_err(pg_err)?;
            Ok((
                row.try_get(0).map_err(pg_err)?,
                row.try_get(1).map_err(pg_err)?,
            ))
        })
    }

    /// Deletes the key row and queues `audit` in one transaction, then vacuums
    /// `subject_keys` (see [`PgOptions::vacuum_full_on_erase`]). PostgreSQL keeps a deleted
    /// row's bytes as a dead tuple until `VACUUM` removes it, so the vacuum is what makes the
    /// key unreadable from the table's files; it runs after the commit (it cannot run inside a
    /// transaction) and cannot remove the row while an older snapshot may still see it, so it
    /// first waits (up to 10 s) for transactions older than the delete to end. Copies
    /// outside the table remain PostgreSQL's: WAL segments until recycled, replicas' WAL, and
    /// backups. A failed vacuum is logged, not returned: the key is deleted either way.
    fn erase_subject_key(
        &self,
        lookup: &str,
        audit: &[String],
    ) -> Result<Option<String>, StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            let mut client = inner.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let subject_ref: Option<String> = tx
                .query_typed_opt(
                    "DELETE FROM subject_keys WHERE lookup = $1 RETURNING subject_ref",
                    &[(&lookup, Type::TEXT)],
                )
                .await
                .map_err(pg_err)?
                .map(|r| r.try_get(0).map_err(pg_err))
                .transpose()?;
            if subject_ref.is_some() {
                push_outbox_in(&tx, audit).await?;
            }
            tx.commit().await.map_err(pg_err)?;
            if subject_ref.is_some() {
                // VACUUM keeps a deleted row while a transaction that started before the
                // delete committed may still see it: wait (up to 10 s) for those to end. Only
                // sessions whose activity this role may see are waited for.
                let committed_at: std::time::SystemTime = client
                    .query_one("SELECT clock_timestamp()", &[])
                    .await
                    .map_err(pg_err)?
                    .try_get(0)
                    .map_err(pg_err)?;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                loop {
                    let older: i64 = client
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity
                             WHERE datname = current_database() AND pid <> pg_backend_pid()
                               AND backend_xmin IS NOT NULL AND xact_start < $1",
                            &[&committed_at],
                        )
                        .await
                        .map_err(pg_err)?
                        .try_get(0)
                        .map_err(pg_err)?;
                    if older == 0 || tokio::time::Instant::now() >= deadline {
                        if older > 0 {
                            tracing::warn!(
                                transactions = older,
                                "older transactions still open; the erased key's row may survive \
                                 this vacuum until the next one"
                            );
                        }
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                // One statement per call: several in one simple query form an implicit
                // transaction block, where VACUUM is refused.
                let vacuum = if inner.options.vacuum_full_on_erase {
                    "VACUUM FULL subject_keys"
                } else {
                    "VACUUM subject_keys"
                };
                let _ = client.batch_execute("SET lock_timeout = '10s'").await;
                let vacuumed = client.batch_execute(vacuum).await;
                let _ = client.batch_execute("RESET lock_timeout").await;
                if let Err(e) = vacuumed {
                    tracing::warn!(error = %pg_err(e), "could not vacuum subject_keys after an erasure");
                }
            }
            Ok(subject_ref)
        })
    }

    fn push_outbox(&self, events: &[String]) -> Result<(), StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            let mut client = inner.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            push_outbox_in(&tx, events).await?;
            tx.commit().await.map_err(pg_err)
        })
    }

    fn outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let inner = &self.inner;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.block_on(async {
            let client = inner.client().await?;
            let rows = client
                .query_typed(
                    "SELECT id, event FROM outbox ORDER BY id LIMIT $1",
                    &[(&limit, Type::INT8)],
                )
                .await
                .map_err(pg_err)?;
            rows.iter()
                .map(|r| {
                    Ok(OutboxEntry {
                        id: r.try_get(0).map_err(pg_err)?,
                        event: r.try_get(1).map_err(pg_err)?,
                    })
                })
                .collect()
        })
    }

    fn remove_outbox(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let inner = &self.inner;
        self.block_on(async {
            let client = inner.client().await?;
            client
                .query_typed(
                    "DELETE FROM outbox WHERE id = ANY($1)",
                    &[(&ids, Type::INT8_ARRAY)],
                )
                .await
                .map_err(pg_err)?;
            Ok(())
        })
    }

    fn merkle_tile(
        &self,
        log_id: &str,
        key: TileKey,
    ) -> Result<Option<Vec<vellum_core::merkle::Hash>>, StoreError> {
        let inner = &self.inner;
        let bytes: Option<Vec<u8>> = self.block_on(async {
            let client = inner.client().await?;
            client
                .query_typed_opt(
                    "SELECT hashes FROM merkle_tiles WHERE log_id = $1 AND level = $2 AND idx = $3",
                    &[
                        (&log_id, Type::TEXT),
                        (&i16::from(key.level), Type::INT2),
                        (&to_i64(key.index), Type::INT8),
                    ],
                )
                .await
                .map_err(pg_err)?
                .map(|r| r.try_get(0).map_err(pg_err))
                .transpose()
        })?;
        match bytes {
            None => Ok(None),
            Some(b) => Tile::hashes_from_bytes(&b).map(Some).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "Merkle tile {log_id}/{}/{} has {} bytes",
                    key.level,
                    key.index,
                    b.len()
                ))
            }),
        }
    }

    fn insert_checkpoint(&self, checkpoint: &SignedCheckpoint) -> Result<(), StoreError> {
        self.append(&AppendBatch {
            checkpoints: vec![checkpoint.clone()],
            ..AppendBatch::default()
        })
    }

    fn latest_checkpoint(&self, log_id: &str) -> Result<Option<SignedCheckpoint>, StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            let client = inner.client().await?;
            client
                .query_typed_opt(
                    &format!(
                        "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE log_id = $1
                         ORDER BY tree_size DESC LIMIT 1"
                    ),
                    &[(&log_id, Type::TEXT)],
                )
                .await
                .map_err(pg_err)?
                .as_ref()
                .map(row_to_checkpoint)
                .transpose()
        })
    }

    fn checkpoint_covering(
        &self,
        log_id: &str,
        min_size: u64,
    ) -> Result<Option<SignedCheckpoint>, StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            let client = inner.client().await?;
            client
                .query_typed_opt(
                    &format!(
                        "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints
                         WHERE log_id = $1 AND tree_size >= $2 ORDER BY tree_size LIMIT 1"
                    ),
                    &[(&log_id, Type::TEXT), (&to_i64(min_size), Type::INT8)],
                )
                .await
                .map_err(pg_err)?
                .as_ref()
                .map(row_to_checkpoint)
                .transpose()
        })
    }

    fn list_checkpoints(
        &self,
        log_id: &str,
        after_size: Option<u64>,
        limit: usize,
    ) -> Result<Vec<SignedCheckpoint>, StoreError> {
        let inner = &self.inner;
        let after = after_size.map_or(-1, to_i64);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.block_on(async {
            let client = inner.client().await?;
            let rows = client
                .query_typed(
                    &format!(
                        "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints
                         WHERE log_id = $1 AND tree_size > $2 ORDER BY tree_size LIMIT $3"
                    ),
                    &[
                        (&log_id, Type::TEXT),
                        (&after, Type::INT8),
                        (&limit, Type::INT8),
                    ],
                )
                .await
                .map_err(pg_err)?;
            rows.iter().map(row_to_checkpoint).collect()
        })
    }

    fn log_ids(&self) -> Result<Vec<String>, StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            let client = inner.client().await?;
            let rows = client
                .query_typed(
                    "WITH RECURSIVE l(log_id) AS (
                         (SELECT log_id FROM events ORDER BY log_id LIMIT 1)
                         UNION ALL
                         SELECT (SELECT e.log_id FROM events e WHERE e.log_id > l.log_id
                                 ORDER BY e.log_id LIMIT 1)
                         FROM l WHERE l.log_id IS NOT NULL
                     )
                     SELECT log_id FROM l WHERE log_id IS NOT NULL
                     UNION SELECT DISTINCT log_id FROM checkpoints ORDER BY 1",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            rows.iter().map(|r| r.try_get(0).map_err(pg_err)).collect()
        })
    }

    fn insert_checkpoint_key(&self, key: &CheckpointKeyRecord) -> Result<(), StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            let client = inner.client().await?;
            client
                .execute(
                    "INSERT INTO checkpoint_keys (key_id, name, public_key, created_at)
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    &[
                        &key.key_id,
                        &key.name,
                        &&key.public_key[..],
                        &key.created_at,
                    ],
                )
                .await
                .map_err(pg_err)?;
            Ok(())
        })
    }

    fn checkpoint_keys(&self) -> Result<Vec<CheckpointKeyRecord>, StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            let client = inner.client().await?;
            let rows = client
                .query_typed(
                    "SELECT key_id, name, public_key, created_at FROM checkpoint_keys
                     ORDER BY created_at COLLATE \"C\", key_id COLLATE \"C\"",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            rows.iter()
                .map(|r| {
                    Ok(CheckpointKeyRecord {
                        key_id: r.try_get(0).map_err(pg_err)?,
                        name: r.try_get(1).map_err(pg_err)?,
                        public_key: hash32(r.try_get(2).map_err(pg_err)?, "checkpoint public key")?,
                        created_at: r.try_get(3).map_err(pg_err)?,
                    })
                })
                .collect()
        })
    }

    fn meta_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            let client = inner.client().await?;
            client
                .query_typed_opt(
                    "SELECT value FROM meta WHERE key = $1",
                    &[(&key, Type::TEXT)],
                )
                .await
                .map_err(pg_err)?
                .map(|r| r.try_get(0).map_err(pg_err))
                .transpose()
        })
    }

    fn meta_set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let inner = &self.inner;
        self.block_on(async {
            let client = inner.client().await?;
            client
                .execute(
                    "INSERT INTO meta (key, value) VALUES ($1, $2)
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    &[&key, &value],
                )
                .await
                .map_err(pg_err)?;
            Ok(())
        })
    }
}

/// The exclusive right to write some logs, held as PostgreSQL session advisory locks on a
/// dedicated connection (see [`PgStore::writer_lease`]). [`AuditStore::append`] and
/// [`AuditStore::log_heads`] run on that connection; everything else goes through the store's
/// pool. Dropping the lease closes the connection, which releases the locks.
pub struct PgLease {
    store: PgStore,
    /// `None` once released.
    client: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    task: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
    closed: Arc<AtomicBool>,
    keys: Vec<i64>,
    /// The append statements, prepared once on the lease's connection: planning the
    /// events-and-index insert costs about half a millisecond, which small group commits
    /// otherwise pay every time.
    statements: StatementCache,
}

impl std::fmt::Debug for PgLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLease")
            .field("store", &self.store)
            .field("keys", &self.keys)
            .field("held", &self.is_held())
            .finish()
    }
}

impl PgLease {
    /// Whether the lease's session is still up (and so its locks held). `false` once the
    /// connection has failed or closed; a writer that sees `false` must stop appending and
    /// take a new lease. (Appends fail by themselves then; this is the cheap check.)
    pub fn is_held(&self) -> bool {
        !self.closed.load(Ordering::SeqCst)
    }

    /// The advisory lock keys this lease holds.
    pub fn keys(&self) -> &[i64] {
        &self.keys
    }

    /// The store the lease was taken from (for everything that is not appending).
    pub fn store(&self) -> &PgStore {
        &self.store
    }

    /// Releases the locks and closes the connection, returning once the session is gone, so
    /// that a standby can take the lease at once.
    pub fn release(self) {
        let client = &self.client;
        let task = self.task.lock().take();
        let _ = self.store.block_on(async move {
            if let Some(client) = client.lock().await.take() {
                let _ = client
                    .batch_execute("SELECT pg_advisory_unlock_all()")
                    .await;
                drop(client);
            }
            if let Some(task) = task {
                let _ = task.await;
            }
            Ok(())
        });
    }

    /// The error of an append or head read after the session is gone.
    fn lost() -> StoreError {
        StoreError::Unavailable(
            "writer lease lost: its PostgreSQL session ended, so its locks may be held by \
             another writer now"
                .to_owned(),
        )
    }
}

impl AuditStore for PgLease {
    fn prepare(&self, batch: &mut AppendBatch) {
        prepare_index(batch);
    }

    fn log_heads(&self) -> Result<Vec<LogHead>, StoreError> {
        if !self.is_held() {
            return Err(Self::lost());
        }
        let inner = &self.store.inner;
        self.store.block_on(async {
            let guard = self.client.lock().await;
            match guard.as_ref() {
                Some(client) if !client.is_closed() => inner.log_heads_on(client).await,
                _ => Err(Self::lost()),
            }
        })
    }

    fn append(&self, batch: &AppendBatch) -> Result<(), StoreError> {
        if !self.is_held() {
            return Err(Self::lost());
        }
        let inner = &self.store.inner;
        self.store.block_on(async {
            let mut guard = self.client.lock().await;
            match guard.as_mut() {
                Some(client) if !client.is_closed() => {
                    inner.append_on(client, Some(&self.statements), batch).await
                }
                _ => Err(Self::lost()),
            }
        })
    }

    fn idempotent_receipts(
        &self,
        keys: &[&str],
        not_before_micros: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.store.idempotent_receipts(keys, not_before_micros)
    }
    fn expire_idempotency(&self, before_micros: i64) -> Result<usize, StoreError> {
        self.store.expire_idempotency(before_micros)
    }
    fn get_event(&self, id: &uuid::Uuid) -> Result<Option<StoredEvent>, StoreError> {
        self.store.get_event(id)
    }
    fn events_by_id(&self, ids: &[uuid::Uuid]) -> Result<Vec<StoredEvent>, StoreError> {
        self.store.events_by_id(ids)
    }
    fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError> {
        self.store.search(query)
    }
    fn stats(&self, query: &StatsQuery) -> Result<Stats, StoreError> {
        self.store.stats(query)
    }
    fn scan_log(
        &self,
        log_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.store.scan_log(log_id, from_seq, limit)
    }
    fn insert_api_key(&self, key: &ApiKeyRecord, audit: &[String]) -> Result<(), StoreError> {
        self.store.insert_api_key(key, audit)
    }
    fn find_api_key(&self, key_hash: &[u8; 32]) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.store.find_api_key(key_hash)
    }
    fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.store.list_api_keys()
    }
    fn revoke_api_key(&self, id: &str, at: &str, audit: &[String]) -> Result<bool, StoreError> {
        self.store.revoke_api_key(id, at, audit)
    }
    fn tombstone_events(&self, log_id: &str, rows: &[TombstoneWrite]) -> Result<usize, StoreError> {
        self.store.tombstone_events(log_id, rows)
    }
    fn insert_legal_hold(
        &self,
        hold: &LegalHoldRecord,
        audit: &[String],
    ) -> Result<(), StoreError> {
        self.store.insert_legal_hold(hold, audit)
    }
    fn release_legal_hold(
        &self,
        id: &str,
        at: &str,
        by: &str,
        audit: &[String],
    ) -> Result<bool, StoreError> {
        self.store.release_legal_hold(id, at, by, audit)
    }
    fn legal_holds(&self) -> Result<Vec<LegalHoldRecord>, StoreError> {
        self.store.legal_holds()
    }
    fn meta_set_audited(&self, key: &str, value: &str, audit: &[String]) -> Result<(), StoreError> {
        self.store.meta_set_audited(key, value, audit)
    }
    fn subject_key(&self, lookup: &str) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        self.store.subject_key(lookup)
    }
    fn subject_key_by_ref(&self, subject_ref: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.subject_key_by_ref(subject_ref)
    }
    fn insert_subject_key(
        &self,
        lookup: &str,
        subject_ref: &str,
        wrapped: &[u8],
    ) -> Result<(String, Vec<u8>), StoreError> {
        self.store.insert_subject_key(lookup, subject_ref, wrapped)
    }
    fn erase_subject_key(
        &self,
        lookup: &str,
        audit: &[String],
    ) -> Result<Option<String>, StoreError> {
        self.store.erase_subject_key(lookup, audit)
    }
    fn push_outbox(&self, events: &[String]) -> Result<(), StoreError> {
        self.store.push_outbox(events)
    }
    fn outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.store.outbox(limit)
    }
    fn remove_outbox(&self, ids: &[i64]) -> Result<(), StoreError> {
        self.store.remove_outbox(ids)
    }
    fn merkle_tile(
        &self,
        log_id: &str,
        key: TileKey,
    ) -> Result<Option<Vec<vellum_core::merkle::Hash>>, StoreError> {
        self.store.merkle_tile(log_id, key)
    }
    fn insert_checkpoint(&self, checkpoint: &SignedCheckpoint) -> Result<(), StoreError> {
        self.store.insert_checkpoint(checkpoint)
    }
    fn latest_checkpoint(&self, log_id: &str) -> Result<Option<SignedCheckpoint>, StoreError> {
        self.store.latest_checkpoint(log_id)
    }
    fn checkpoint_covering(
        &self,
        log_id: &str,
        min_size: u64,
    ) -> Result<Option<SignedCheckpoint>, StoreError> {
        self.store.checkpoint_covering(log_id, min_size)
    }
    fn list_checkpoints(
        &self,
        log_id: &str,
        after_size: Option<u64>,
        limit: usize,
    ) -> Result<Vec<SignedCheckpoint>, StoreError> {
        self.store.list_checkpoints(log_id, after_size, limit)
    }
    fn log_ids(&self) -> Result<Vec<String>, StoreError> {
        self.store.log_ids()
    }
    fn insert_checkpoint_key(&self, key: &CheckpointKeyRecord) -> Result<(), StoreError> {
        self.store.insert_checkpoint_key(key)
    }
    fn checkpoint_keys(&self) -> Result<Vec<CheckpointKeyRecord>, StoreError> {
        self.store.checkpoint_keys()
    }
    fn meta_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.store.meta_get(key)
    }
    fn meta_set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.store.meta_set(key, value)
    }
}
