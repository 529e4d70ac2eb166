//! The embedded store: SQLite files in the data directory.
//!
//! Durability: the log file runs in WAL mode with `synchronous=FULL`, so `COMMIT` returns only
//! after the WAL is fsynced; [`SqliteStore::append`] returns after `COMMIT`, and the server
//! acknowledges only after `append` returns (ack means durable). A crash at any point leaves
//! either the whole batch or none of it (SQLite's atomic commit).
//!
//! WAL checkpoints run on a checkpointer thread, not in the commit path: checkpointing inside
//! the writer (SQLite's auto-checkpoint) halved append throughput (measured 21k vs 45k
//! events/s at 100 per commit), because the writer sat idle while pages were copied back.
//! PASSIVE checkpoints copy frames back concurrently with commits; but under continuous
//! writes the WAL can then never restart (new frames always follow the last backfilled
//! one) and an ever-growing WAL slows every commit (measured: 690 MB and 5 ms commits). So
//! when the WAL passes [`WAL_RESTART_FRAMES`] the checkpointer copies everything back and
//! holds the writer (on the store's mutex) only for a last short pass over the frames
//! committed meanwhile; the writer's next commit then restarts the WAL from its beginning
//! (see `let_writer_restart_wal`; a RESTART checkpoint stalled the writer for tens of ms).

use crate::index;
use crate::model::*;
use crate::schema;
use crate::{AuditStore, StoreError};
use parking_lot::{Condvar, Mutex};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vellum_core::checkpoint::SignedCheckpoint;
use vellum_core::tiles::{Tile, TileKey};

/// File name of the log inside the data directory.
pub const LOG_FILE: &str = "vellum.db";
/// File name of the search index inside the data directory.
pub const INDEX_FILE: &str = "index.db";

/// WAL size (in frames, i.e. pages) beyond which the checkpointer forces the WAL to restart.
pub const WAL_RESTART_FRAMES: i64 = 16_384;

/// How often the checkpointer copies WAL frames back into `vellum.db` while commits arrive.
/// At 50k events/s of ~1.3 KB that is ~1,600 frames per round, far below
/// [`WAL_RESTART_FRAMES`].
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// Longest time the indexer waits for more rows before indexing a small backlog (unless a
/// search is waiting for it).
pub const INDEX_COALESCE: Duration = Duration::from_millis(50);

/// How the store is opened.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Run the background indexer (the server does; `vellum verify` does not need it).
    pub run_indexer: bool,
    /// How long a search waits for the index to reach the log's committed position.
    pub index_wait: Duration,
    /// Rows indexed per index transaction.
    pub index_batch: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            run_indexer: true,
            index_wait: Duration::from_secs(2),
            index_batch: 5_000,
        }
    }
}

#[derive(Default)]
struct Positions {
    committed: i64,
    indexed: i64,
    /// Searches waiting for the index to catch up (the indexer stops coalescing for them).
    waiters: usize,
    stop: bool,
    indexer_error: Option<String>,
}

struct Shared {
    positions: Mutex<Positions>,
    committed_changed: Condvar,
    indexed_changed: Condvar,
}

/// SQLite implementation of [`AuditStore`].
pub struct SqliteStore {
    dir: PathBuf,
    options: SqliteOptions,
    writer: Arc<Mutex<Connection>>,
    readers: Mutex<Vec<Connection>>,
    shared: Arc<Shared>,
    indexer: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("dir", &self.dir)
            .finish()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates `path` with mode 0600 if it does not exist, so SQLite (and its -wal/-shm files,
/// which copy the main file's mode) never expose audit data to other users.
fn precreate_private(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io_err(path))?;
    }
    #[cfg(not(unix))]
    {
        let _ = path;
    }
    Ok(())
}

fn open_log_writer(path: &Path) -> Result<Connection, StoreError> {
    precreate_private(path)?;
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // Larger pages mean fewer WAL frames (each checksummed and written) per ~1 KB event. Only
    // takes effect on a new file, before WAL mode is set.
    conn.execute_batch("PRAGMA page_size=8192;")?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "could not switch {} to WAL mode (got {mode})",
            path.display()
        )));
    }
    conn.execute_batch(
        "PRAGMA synchronous=FULL;
         PRAGMA wal_autocheckpoint=0;
         PRAGMA journal_size_limit=67108864;
         PRAGMA cache_size=-65536;
         PRAGMA temp_store=MEMORY;",
    )?;
    conn.set_prepared_statement_cache_capacity(32);
    schema::migrate_log(&mut conn)?;
    Ok(conn)
}

fn attach_log(conn: &Connection, log_path: &Path, read_only: bool) -> Result<(), StoreError> {
    let mode = if read_only { "ro" } else { "rw" };
    let uri = format!("file:{}?mode={mode}", log_path.display());
    conn.execute("ATTACH DATABASE ?1 AS log", params![uri])?;
    Ok(())
}

fn open_index(dir: &Path, read_only_log: bool) -> Result<Connection, StoreError> {
    let index_path = dir.join(INDEX_FILE);
    precreate_private(&index_path)?;
    let conn = Connection::open_with_flags(
        &index_path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))?;
    conn.execute_batch(
        "PRAGMA synchronous=NORMAL;
         PRAGMA journal_size_limit=67108864;
         PRAGMA cache_size=-32768;
         PRAGMA temp_store=MEMORY;",
    )?;
    // wal_autocheckpoint stays at SQLite's 1,000 pages on purpose: 8,192 pages made each
    // checkpoint of `index.db` sync ~32 MB at once, and the log's commit fsync queued behind it
    // (batch p99 ~+40 ms in A/B runs; BENCHMARKS.md).
    conn.set_prepared_statement_cache_capacity(64);
    attach_log(&conn, &dir.join(LOG_FILE), read_only_log)?;
    Ok(conn)
}

/// Makes sure `index.db` has this binary's schema; drops it for a rebuild otherwise.
fn prepare_index_schema(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version != schema::INDEX_VERSION {
        if version != 0 {
            tracing::warn!(
                found = version,
                "search index has another version; rebuilding it"
            );
        }
        conn.execute_batch(
            "DROP TABLE IF EXISTS ev; DROP TABLE IF EXISTS fts; DROP TABLE IF EXISTS state;",
        )?;
        conn.execute_batch(schema::INDEX_SCHEMA)?;
        conn.pragma_update(None, "user_version", schema::INDEX_VERSION)?;
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path, options: SqliteOptions) -> Result<Arc<Self>, StoreError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(dir).map_err(io_err(dir))?;
            if meta.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(io_err(dir))?;
            }
        }
        let writer = open_log_writer(&dir.join(LOG_FILE))?;
        let committed: i64 =
            writer.query_row("SELECT COALESCE(MAX(pos), 0) FROM events", [], |r| r.get(0))?;
        let index_conn = open_index(dir, false)?;
        prepare_index_schema(&index_conn)?;
        let mut indexed = index::indexed_pos(&index_conn)?;
        if indexed > committed {
            // The index claims rows the log lacks (the log was replaced or restored): rebuild.
            tracing::warn!(
                indexed,
                committed,
                "search index is ahead of the log; rebuilding it"
            );
            index_conn.pragma_update(None, "user_version", 0)?;
            prepare_index_schema(&index_conn)?;
            indexed = 0;
        }
        let shared = Arc::new(Shared {
            positions: Mutex::new(Positions {
                committed,
                indexed,
                waiters: 0,
                stop: false,
                indexer_error: None,
            }),
            committed_changed: Condvar::new(),
            indexed_changed: Condvar::new(),
        });
        let store = Arc::new(Self {
            dir: dir.to_owned(),
            options: options.clone(),
            writer: Arc::new(Mutex::new(writer)),
            readers: Mutex::new(Vec::new()),
            shared: shared.clone(),
            indexer: Mutex::new(None),
            checkpointer: Mutex::new(None),
        });
        {
            let conn = Connection::open(dir.join(LOG_FILE))?;
            conn.busy_timeout(Duration::from_secs(2))?;
            let shared = shared.clone();
            let writer = store.writer.clone();
            let handle = std::thread::Builder::new()
                .name("vellum-checkpoint".into())
                .spawn(move || run_checkpointer(conn, shared, writer))
                .map_err(io_err(dir))?;
            *store.checkpointer.lock() = Some(handle);
        }
        if options.run_indexer {
            let batch = options.index_batch.max(1);
            let handle = std::thread::Builder::new()
                .name("vellum-indexer".into())
                .spawn(move || run_indexer(index_conn, shared, batch))
                .map_err(io_err(dir))?;
            *store.indexer.lock() = Some(handle);
        }
        Ok(store)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the indexer thread (after it finishes its current batch). Idempotent.
    pub fn shutdown(&self) {
        {
            let mut p = self.shared.positions.lock();
            p.stop = true;
        }
        self.shared.committed_changed.notify_all();
        if let Some(handle) = self.indexer.lock().take() {
            let _ = handle.join();
        }
        if let Some(handle) = self.checkpointer.lock().take() {
            let _ = handle.join();
        }
    }

    /// Log position of the newest committed event, and of the newest indexed one.
    pub fn positions(&self) -> (i64, i64) {
        let p = self.shared.positions.lock();
        (p.committed, p.indexed)
    }

    /// Waits until the index has caught up with everything committed now, or `timeout`.
    /// Returns how many committed events are still not indexed.
    pub fn wait_for_index(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut p = self.shared.positions.lock();
        let target = p.committed;
        if p.indexed >= target {
            return 0;
        }
        // Tell the indexer someone waits, so it indexes now instead of coalescing.
        p.waiters += 1;
        self.shared.committed_changed.notify_all();
        while p.indexed < target && !p.stop && p.indexer_error.is_none() {
            if self
                .shared
                .indexed_changed
                .wait_until(&mut p, deadline)
                .timed_out()
            {
                break;
            }
        }
        p.waiters -= 1;
        u64::try_from(target - p.indexed).unwrap_or(0)
    }

    fn with_reader<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = match self.readers.lock().pop() {
            Some(conn) => conn,
            None => {
                let conn = open_index(&self.dir, true)?;
                conn.execute_batch("PRAGMA query_only=1;")?;
                conn
            }
        };
        let result = f(&conn);
        let mut readers = self.readers.lock();
        if readers.len() < 8 {
            readers.push(conn);
        }
        result
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Lowers the calling thread's scheduling priority (Linux: SCHED_BATCH at nice 10), so that
/// under contention the indexer takes roughly a tenth of a core from ingest instead of half:
/// ingest is what clients wait for; the index may lag and catches up when load drops.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
            set_thread_priority_and_policy, thread_native_id,
        };
        let Ok(value) = ThreadPriorityValue::try_from(25u8) else {
            return;
        };
        if let Err(e) = set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Crossplatform(value),
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch),
        ) {
            tracing::debug!(error = ?e, "could not lower the indexer's priority");
        }
    }
}

fn run_indexer(mut conn: Connection, shared: Arc<Shared>, batch: usize) {
    lower_priority();
    loop {
        let (indexed, committed) = {
            let mut p = shared.positions.lock();
            while p.indexed >= p.committed && !p.stop {
                shared
                    .committed_changed
                    .wait_for(&mut p, Duration::from_millis(500));
            }
            // Coalesce small backlogs for up to INDEX_COALESCE: each index transaction costs a
            // commit of `index.db` and a new FTS5 segment (later merged), so one transaction per
            // single-event group commit spends more on that than on the rows. A waiting search
            // ends the wait at once, so read-your-writes costs no extra latency.
            let coalesce_until = Instant::now() + INDEX_COALESCE;
            while !p.stop
                && p.waiters == 0
                && usize::try_from(p.committed - p.indexed).unwrap_or(usize::MAX) < batch
                && !shared
                    .committed_changed
                    .wait_until(&mut p, coalesce_until)
                    .timed_out()
            {}
            if p.stop {
                return;
            }
            (p.indexed, p.committed)
        };
        if indexed < committed {
            match index::index_more(&mut conn, indexed, batch) {
                Ok(new_pos) => {
                    let mut p = shared.positions.lock();
                    p.indexed = new_pos;
                    p.indexer_error = None;
                    drop(p);
                    shared.indexed_changed.notify_all();
                }
                Err(e) => {
                    tracing::error!(error = %e, "indexer failed; retrying");
                    shared.positions.lock().indexer_error = Some(e.to_string());
                    shared.indexed_changed.notify_all();
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}

/// Copies WAL frames back into `vellum.db` while the writer keeps committing; see the module
/// documentation for why this is a thread of its own and when it forces a restart.
///
/// It runs at most every [`CHECKPOINT_EVERY`], not after every commit: woken by each commit, it
/// ran one PASSIVE checkpoint (a WAL sync, page copies and a sync of `vellum.db`) per group
/// commit, i.e. thousands per second with single-event requests, and those syncs queued on the
/// disk in front of the writer's own WAL fsync, the one every client waits for.
fn run_checkpointer(conn: Connection, shared: Arc<Shared>, writer: Arc<Mutex<Connection>>) {
    let mut last_committed = -1;
    loop {
        {
            let mut p = shared.positions.lock();
            let next = Instant::now() + CHECKPOINT_EVERY;
            // Sleep the whole interval: commits notify the same condvar, so wait until the
            // deadline rather than until the first notification.
            while !p.stop
                && !shared
                    .committed_changed
                    .wait_until(&mut p, next)
                    .timed_out()
            {}
            if p.stop {
                return;
            }
            if p.committed == last_committed {
                continue;
            }
            last_committed = p.committed;
        }
        let passive = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        match passive {
            Ok((frames, _copied)) if frames > 4 * WAL_RESTART_FRAMES => {
                // The WAL did not restart although it was fully copied back (a reader kept
                // using it): force it, even though this holds the writer until readers finish.
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())) {
                    tracing::debug!(error = %e, "WAL restart checkpoint deferred");
                }
            }
            Ok((frames, _copied)) if frames > WAL_RESTART_FRAMES => {
                let held = let_writer_restart_wal(&conn, &writer);
                tracing::debug!(
                    held_ms = held.as_secs_f64() * 1e3,
                    "WAL copied back; the next commit restarts it"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
        }
    }
}

/// Copies every WAL frame back into `vellum.db` so that the writer's next commit restarts the
/// WAL from its beginning, holding the writer only for one short final pass. Returns how long
/// the writer was held.
///
/// SQLite restarts the WAL by itself when a write transaction begins while every frame has
/// been copied back (and synced) and no reader is using the WAL. Under continuous commits a
/// PASSIVE pass never gets there (commits arrive during the pass), and the RESTART mode used
/// before stalled the writer for the whole copy plus `vellum.db`'s fsync (measured 1–280 ms,
/// typically ~30 ms, every ~2.5 s at 25k events/s), made longer by SQLite's busy-handler back-off
/// (the writer sleeps 1, 2, 5, 10, 15, 20, 25, 25 … ms between retries) and by waiting for
/// readers, including the low-priority indexer. Here passes without the writer shrink the
/// backlog first; the writer then waits on a mutex (woken at once) only for the last few
/// frames. Durability is unchanged: SQLite reuses the WAL only once its frames are synced into
/// `vellum.db`.
fn let_writer_restart_wal(conn: &Connection, writer: &Mutex<Connection>) -> Duration {
    let passive = || {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        })
    };
    // Catch up without holding the writer: each pass copies what was committed during the
    // previous one, so the passes get shorter.
    for _ in 0..4 {
        let started = Instant::now();
        if passive().is_err() {
            return Duration::ZERO;
        }
        if started.elapsed() < Duration::from_millis(3) {
            break;
        }
    }
    let _writer = writer.lock();
    let held = Instant::now();
    if let Err(e) = passive() {
        tracing::debug!(error = %e, "final WAL checkpoint pass failed");
    }
    held.elapsed()
}

fn hash32(bytes: Vec<u8>, what: &str) -> Result<[u8; 32], StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{what} is not 32 bytes")))
}

fn insert_checkpoint_row(conn: &Connection, cp: &SignedCheckpoint) -> Result<(), StoreError> {
    let root = hex::decode(&cp.root_hash)
        .map_err(|_| StoreError::Corrupt("checkpoint root hash is not hex".into()))?;
    conn.prepare_cached(
        "INSERT OR IGNORE INTO checkpoints (log_id, tree_size, root_hash, timestamp, key_id, signature, note)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        cp.log_id,
        i64::try_from(cp.tree_size).unwrap_or(i64::MAX),
        root,
        cp.timestamp,
        cp.key_id,
        cp.signature,
        cp.note
    ])?;
    Ok(())
}

const CHECKPOINT_COLUMNS: &str = "log_id, tree_size, root_hash, timestamp, key_id, signature, note";

fn row_to_checkpoint(row: &rusqlite::Row<'_>) -> rusqlite::Result<SignedCheckpoint> {
    Ok(SignedCheckpoint {
        log_id: row.get(0)?,
        tree_size: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
        root_hash: hex::encode(row.get::<_, Vec<u8>>(2)?),
        timestamp: row.get(3)?,
        key_id: row.get(4)?,
        signature: row.get(5)?,
        note: row.get(6)?,
    })
}

fn row_to_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        pos: row.get(0)?,
        log_id: row.get(1)?,
        seq: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
        canonical: row.get(3)?,
        hash: row.get(4)?,
        signature: row.get(5)?,
        id_column: row
            .get::<_, Option<Vec<u8>>>(6)?
            .and_then(|id| <[u8; 16]>::try_from(id.as_slice()).ok()),
    })
}

impl AuditStore for SqliteStore {
    fn log_heads(&self) -> Result<Vec<LogHead>, StoreError> {
        let conn = self.writer.lock();
        let mut stmt = conn.prepare(
            "SELECT e.log_id, e.seq, e.hash FROM events e
             JOIN (SELECT log_id, MAX(seq) AS seq FROM events GROUP BY log_id) m
               ON m.log_id = e.log_id AND m.seq = e.seq",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        let mut heads = Vec::new();
        for row in rows {
            let (log_id, seq, hash) = row?;
            heads.push(LogHead {
                log_id,
                size: u64::try_from(seq).unwrap_or(0) + 1,
                last_hash: hash32(hash, "stored hash")?,
            });
        }
        Ok(heads)
    }

    fn append(&self, batch: &AppendBatch) -> Result<(), StoreError> {
        if batch.events.is_empty()
            && batch.idempotency.is_empty()
            && batch.tiles.is_empty()
            && batch.checkpoints.is_empty()
        {
            return Ok(());
        }
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO events (log_id, seq, id, hash, signature, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for event in &batch.events {
                insert.execute(params![
                    event.log_id,
                    i64::try_from(event.seq).unwrap_or(i64::MAX),
                    &event.id[..],
                    &event.hash[..],
                    event.signature.as_ref().map(|s| &s[..]),
                    event.canonical,
                ])?;
            }
            let mut remember = tx.prepare_cached(
                "INSERT OR REPLACE INTO idempotency (key, created, receipt) VALUES (?1, ?2, ?3)",
            )?;
            for record in &batch.idempotency {
                remember.execute(params![record.key, record.created_micros, record.receipt])?;
            }
            let mut tile = tx.prepare_cached(
                "INSERT OR REPLACE INTO merkle_tiles (log_id, level, idx, hashes) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (log_id, t) in &batch.tiles {
                tile.execute(params![
                    log_id,
                    t.key.level,
                    i64::try_from(t.key.index).unwrap_or(i64::MAX),
                    t.to_bytes()
                ])?;
            }
            for cp in &batch.checkpoints {
                insert_checkpoint_row(&tx, cp)?;
            }
        }
        tx.commit()?;
        let last = conn.last_insert_rowid();
        drop(conn);
        if !batch.events.is_empty() {
            let mut p = self.shared.positions.lock();
            p.committed = p.committed.max(last);
            drop(p);
            self.shared.committed_changed.notify_all();
        }
        Ok(())
    }

    fn idempotent_receipts(
        &self,
        keys: &[&str],
        not_before_micros: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let conn = self.writer.lock();
        let mut stmt = conn
            .prepare_cached("SELECT receipt FROM idempotency WHERE key = ?1 AND created >= ?2")?;
        let mut found = Vec::new();
        for key in keys {
            if let Some(receipt) = stmt
                .query_row(params![key, not_before_micros], |r| r.get::<_, String>(0))
                .optional()?
            {
                found.push(((*key).to_owned(), receipt));
            }
        }
        Ok(found)
    }

    fn expire_idempotency(&self, before_micros: i64) -> Result<usize, StoreError> {
        let conn = self.writer.lock();
        Ok(conn.execute(
            "DELETE FROM idempotency WHERE created < ?1",
            params![before_micros],
        )?)
    }

    fn events_by_id(&self, ids: &[uuid::Uuid]) -> Result<Vec<StoredEvent>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT pos, log_id, seq, body, hash, signature, id FROM log.events WHERE id = ?1",
            )?;
            let mut found = Vec::new();
            for id in ids {
                if let Some(event) = stmt
                    .query_row(params![&id.as_bytes()[..]], row_to_event)
                    .optional()?
                {
                    event.check_filed_under(id)?;
                    found.push(event);
                }
            }
            Ok(found)
        })
    }

    fn get_event(&self, id: &uuid::Uuid) -> Result<Option<StoredEvent>, StoreError> {
        Ok(self.events_by_id(std::slice::from_ref(id))?.pop())
    }

    fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError> {
        let lag = if self.options.run_indexer {
            self.wait_for_index(self.options.index_wait)
        } else {
            0
        };
        let mut page = self.with_reader(|conn| index::search(conn, query))?;
        page.index_lag = lag;
        Ok(page)
    }

    fn stats(&self, query: &StatsQuery) -> Result<Stats, StoreError> {
        let lag = if self.options.run_indexer {
            self.wait_for_index(self.options.index_wait)
        } else {
            0
        };
        let mut stats = self.with_reader(|conn| crate::stats::stats(conn, query))?;
        stats.index_lag = lag;
        Ok(stats)
    }

    fn scan_log(
        &self,
        log_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT pos, log_id, seq, body, hash, signature, id FROM log.events
                 WHERE log_id = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
            )?;
            let rows = stmt.query_map(
                params![
                    log_id,
                    i64::try_from(from_seq).unwrap_or(i64::MAX),
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                row_to_event,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn insert_api_key(&self, key: &ApiKeyRecord, audit: &[String]) -> Result<(), StoreError> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO api_keys (id, key_hash, role, organization_id, name, created_at, revoked_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                key.id,
                &key.key_hash[..],
                key.role,
                key.organization_id,
                key.name,
                key.created_at,
                key.revoked_at
            ],
        )?;
        push_outbox_in(&tx, audit)?;
        tx.commit()?;
        Ok(())
    }

    fn find_api_key(&self, key_hash: &[u8; 32]) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, key_hash, role, organization_id, name, created_at, revoked_at
                 FROM log.api_keys WHERE key_hash = ?1",
            )?;
            let found = stmt
                .query_row(params![&key_hash[..]], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, Option<String>>(6)?,
                    ))
                })
                .optional()?;
            match found {
                None => Ok(None),
                Some((id, hash, role, organization_id, name, created_at, revoked_at)) => {
                    Ok(Some(ApiKeyRecord {
                        id,
                        key_hash: hash32(hash, "API key hash")?,
                        role,
                        organization_id,
                        name,
                        created_at,
                        revoked_at,
                    }))
                }
            }
        })
    }

    fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, key_hash, role, organization_id, name, created_at, revoked_at
                 FROM log.api_keys ORDER BY created_at, id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Option<String>>(6)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, hash, role, organization_id, name, created_at, revoked_at) = row?;
                out.push(ApiKeyRecord {
                    id,
                    key_hash: hash32(hash, "API key hash")?,
                    role,
                    organization_id,
                    name,
                    created_at,
                    revoked_at,
                });
            }
            Ok(out)
        })
    }

    fn revoke_api_key(&self, id: &str, at: &str, audit: &[String]) -> Result<bool, StoreError> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let changed = tx.execute(
            "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, at],
        )?;
        if changed > 0 {
            push_outbox_in(&tx, audit)?;
        }
        tx.commit()?;
        Ok(changed > 0)
    }

    fn tombstone_events(&self, log_id: &str, rows: &[TombstoneWrite]) -> Result<usize, StoreError> {
        let mut replaced_positions = Vec::with_capacity(rows.len());
        {
            let mut conn = self.writer.lock();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut update = tx.prepare_cached(
                    "UPDATE events SET body = ?3, signature = NULL
                     WHERE log_id = ?1 AND seq = ?2 AND hash = ?4 RETURNING pos",
                )?;
                for row in rows {
                    let pos: Option<i64> = update
                        .query_row(
                            params![
                                log_id,
                                i64::try_from(row.seq).unwrap_or(i64::MAX),
                                row.body,
                                &row.hash[..]
                            ],
                            |r| r.get(0),
                        )
                        .optional()?;
                    replaced_positions.extend(pos);
                }
            }
            tx.commit()?;
        }
        // The index is derived: drop the purged rows from it now. (If this fails or the process
        // dies first, searches skip tombstones they meet, and a rebuild drops them for good.)
        let mut index = open_index(&self.dir, true)?;
        let tx = index.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut key_of = tx.prepare_cached("SELECT k FROM ev WHERE pos = ?1")?;
            let mut delete_text = tx.prepare_cached("DELETE FROM fts WHERE rowid = ?1")?;
            let mut delete_row = tx.prepare_cached("DELETE FROM ev WHERE k = ?1")?;
            for pos in &replaced_positions {
                if let Some(k) = key_of
                    .query_row(params![pos], |r| r.get::<_, i64>(0))
                    .optional()?
                {
                    delete_text.execute(params![k])?;
                    delete_row.execute(params![k])?;
                }
            }
        }
        tx.commit()?;
        Ok(replaced_positions.len())
    }

    fn insert_legal_hold(
        &self,
        hold: &LegalHoldRecord,
        audit: &[String],
    ) -> Result<(), StoreError> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO legal_holds (id, reason, organization_id, principal_id, patient_id,
                data_subject_id, created_at, created_by, released_at, released_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL, NULL)",
            params![
                hold.id,
                hold.reason,
                hold.organization_id,
                hold.principal_id,
                hold.patient_id,
                hold.data_subject_id,
                hold.created_at,
                hold.created_by
            ],
        )?;
        push_outbox_in(&tx, audit)?;
        tx.commit()?;
        Ok(())
    }

    fn release_legal_hold(
        &self,
        id: &str,
        at: &str,
        by: &str,
        audit: &[String],
    ) -> Result<bool, StoreError> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let changed = tx.execute(
            "UPDATE legal_holds SET released_at = ?2, released_by = ?3
             WHERE id = ?1 AND released_at IS NULL",
            params![id, at, by],
        )?;
        if changed > 0 {
            push_outbox_in(&tx, audit)?;
        }
        tx.commit()?;
        Ok(changed > 0)
    }

    fn legal_holds(&self) -> Result<Vec<LegalHoldRecord>, StoreError> {
        let conn = self.writer.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, reason, organization_id, principal_id, patient_id, data_subject_id,
                created_at, created_by, released_at, released_by
             FROM legal_holds ORDER BY created_at, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(LegalHoldRecord {
                id: r.get(0)?,
                reason: r.get(1)?,
                organization_id: r.get(2)?,
                principal_id: r.get(3)?,
                patient_id: r.get(4)?,
                data_subject_id: r.get(5)?,
                created_at: r.get(6)?,
                created_by: r.get(7)?,
                released_at: r.get(8)?,
                released_by: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn meta_set_audited(&self, key: &str, value: &str, audit: &[String]) -> Result<(), StoreError> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
            params![key, value],
        )?;
        push_outbox_in(&tx, audit)?;
        tx.commit()?;
        Ok(())
    }

    // Key reads use reader connections: they serve ingest and reads, and must not wait
    // behind the writer's group commits.
    fn subject_key(&self, lookup: &str) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        self.with_reader(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT subject_ref, wrapped FROM log.subject_keys WHERE lookup = ?1",
                )?
                .query_row(params![lookup], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?)
        })
    }

    fn subject_key_by_ref(&self, subject_ref: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.with_reader(|conn| {
            Ok(conn
                .prepare_cached("SELECT wrapped FROM log.subject_keys WHERE subject_ref = ?1")?
                .query_row(params![subject_ref], |r| r.get(0))
                .optional()?)
        })
    }

    fn insert_subject_key(
        &self,
        lookup: &str,
        subject_ref: &str,
        wrapped: &[u8],
    ) -> Result<(String, Vec<u8>), StoreError> {
        let conn = self.writer.lock();
        let now = vellum_core::time_fmt::format_server_time(time::OffsetDateTime::now_utc());
        conn.execute(
            "INSERT OR IGNORE INTO subject_keys (lookup, subject_ref, wrapped, created_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![lookup, subject_ref, wrapped, now],
        )?;
        Ok(conn
            .prepare_cached("SELECT subject_ref, wrapped FROM subject_keys WHERE lookup = ?1")?
            .query_row(params![lookup], |r| Ok((r.get(0)?, r.get(1)?)))?)
    }

    fn erase_subject_key(
        &self,
        lookup: &str,
        audit: &[String],
    ) -> Result<Option<String>, StoreError> {
        let mut conn = self.writer.lock();
        conn.pragma_update(None, "secure_delete", "ON")?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let subject_ref: Option<String> = tx
            .query_row(
                "DELETE FROM subject_keys WHERE lookup = ?1 RETURNING subject_ref",
                params![lookup],
                |r| r.get(0),
            )
            .optional()?;
        if subject_ref.is_some() {
            push_outbox_in(&tx, audit)?;
        }
        tx.commit()?;
        if subject_ref.is_some() {
            // The WAL still holds the page image with the key: copy back (overwritten in the
            // main file by secure_delete) and truncate it. Readers can delay the truncation;
            // then the next WAL restart overwrites it.
            let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        }
        Ok(subject_ref)
    }

    fn push_outbox(&self, events: &[String]) -> Result<(), StoreError> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        push_outbox_in(&tx, events)?;
        tx.commit()?;
        Ok(())
    }

    fn outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let conn = self.writer.lock();
        let mut stmt = conn.prepare_cached("SELECT id, event FROM outbox ORDER BY id LIMIT ?1")?;
        let rows = stmt.query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok(OutboxEntry {
                id: r.get(0)?,
                event: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn remove_outbox(&self, ids: &[i64]) -> Result<(), StoreError> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
            for id in ids {
                delete.execute(params![id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn merkle_tile(
        &self,
        log_id: &str,
        key: TileKey,
    ) -> Result<Option<Vec<vellum_core::merkle::Hash>>, StoreError> {
        self.with_reader(|conn| {
            let bytes: Option<Vec<u8>> = conn
                .prepare_cached(
                    "SELECT hashes FROM log.merkle_tiles WHERE log_id = ?1 AND level = ?2 AND idx = ?3",
                )?
                .query_row(
                    params![
                        log_id,
                        key.level,
                        i64::try_from(key.index).unwrap_or(i64::MAX)
                    ],
                    |r| r.get(0),
                )
                .optional()?;
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
        })
    }

    fn insert_checkpoint(&self, checkpoint: &SignedCheckpoint) -> Result<(), StoreError> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        insert_checkpoint_row(&tx, checkpoint)?;
        tx.commit()?;
        Ok(())
    }

    fn latest_checkpoint(&self, log_id: &str) -> Result<Option<SignedCheckpoint>, StoreError> {
        self.with_reader(|conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {CHECKPOINT_COLUMNS} FROM log.checkpoints WHERE log_id = ?1
                     ORDER BY tree_size DESC LIMIT 1"
                ))?
                .query_row(params![log_id], row_to_checkpoint)
                .optional()?)
        })
    }

    fn checkpoint_covering(
        &self,
        log_id: &str,
        min_size: u64,
    ) -> Result<Option<SignedCheckpoint>, StoreError> {
        self.with_reader(|conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {CHECKPOINT_COLUMNS} FROM log.checkpoints WHERE log_id = ?1 AND tree_size >= ?2
                     ORDER BY tree_size LIMIT 1"
                ))?
                .query_row(
                    params![log_id, i64::try_from(min_size).unwrap_or(i64::MAX)],
                    row_to_checkpoint,
                )
                .optional()?)
        })
    }

    fn list_checkpoints(
        &self,
        log_id: &str,
        after_size: Option<u64>,
        limit: usize,
    ) -> Result<Vec<SignedCheckpoint>, StoreError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM log.checkpoints WHERE log_id = ?1 AND tree_size > ?2
                 ORDER BY tree_size LIMIT ?3"
            ))?;
            let after = after_size.map_or(-1, |s| i64::try_from(s).unwrap_or(i64::MAX));
            let rows = stmt.query_map(
                params![log_id, after, i64::try_from(limit).unwrap_or(i64::MAX)],
                row_to_checkpoint,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn log_ids(&self) -> Result<Vec<String>, StoreError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT DISTINCT log_id FROM log.events
                 UNION SELECT DISTINCT log_id FROM log.checkpoints ORDER BY 1",
            )?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn insert_checkpoint_key(&self, key: &CheckpointKeyRecord) -> Result<(), StoreError> {
        let conn = self.writer.lock();
        conn.execute(
            "INSERT OR IGNORE INTO checkpoint_keys (key_id, name, public_key, created_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![key.key_id, key.name, &key.public_key[..], key.created_at],
        )?;
        Ok(())
    }

    fn checkpoint_keys(&self) -> Result<Vec<CheckpointKeyRecord>, StoreError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT key_id, name, public_key, created_at FROM log.checkpoint_keys ORDER BY created_at, key_id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (key_id, name, public_key, created_at) = row?;
                out.push(CheckpointKeyRecord {
                    key_id,
                    name,
                    public_key: hash32(public_key, "checkpoint public key")?,
                    created_at,
                });
            }
            Ok(out)
        })
    }

    fn meta_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let conn = self.writer.lock();
        Ok(conn
            .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    fn meta_set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let conn = self.writer.lock();
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
            params![key, value],
        )?;
        Ok(())
    }
}

/// Queues raw audit events in the outbox inside the caller's transaction.
fn push_outbox_in(tx: &rusqlite::Transaction<'_>, events: &[String]) -> Result<(), StoreError> {
    let now = vellum_core::time_fmt::format_server_time(time::OffsetDateTime::now_utc());
    let mut insert = tx.prepare_cached("INSERT INTO outbox (created_at, event) VALUES (?1, ?2)")?;
    for event in events {
        insert.execute(params![now, event])?;
    }
    Ok(())
}
