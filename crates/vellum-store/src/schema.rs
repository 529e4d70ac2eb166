//! Versioned schema migrations for the two SQLite files.
//!
//! Each file records its version in `PRAGMA user_version`. The log's migrations run in order
//! inside one transaction each and are never edited once released; the index has no
//! migrations: when its version differs it is dropped and rebuilt from the log.

use crate::StoreError;
use rusqlite::Connection;

/// Migrations of `vellum.db`, index = version - 1.
const LOG_MIGRATIONS: &[&str] = &[
    // v1: the log, idempotency receipts, API keys, metadata.
    "CREATE TABLE events (
        pos        INTEGER PRIMARY KEY,
        log_id     TEXT    NOT NULL,
        seq        INTEGER NOT NULL,
        id         BLOB    NOT NULL,
        hash       BLOB    NOT NULL,
        signature  BLOB,
        body       TEXT    NOT NULL
     );
     CREATE UNIQUE INDEX events_log_seq ON events(log_id, seq);
     CREATE UNIQUE INDEX events_id ON events(id);
     CREATE TABLE idempotency (
        key        TEXT PRIMARY KEY,
        created    INTEGER NOT NULL,
        receipt    TEXT NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE api_keys (
        id              TEXT PRIMARY KEY,
        key_hash        BLOB NOT NULL UNIQUE,
        role            TEXT NOT NULL,
        organization_id TEXT,
        name            TEXT,
        created_at      TEXT NOT NULL,
        revoked_at      TEXT
     );
     CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    // v2: the verifiable log. Merkle tiles (written in the same transaction as the events they
    // cover), signed checkpoints, and every checkpoint public key ever used.
    "CREATE TABLE merkle_tiles (
        log_id     TEXT    NOT NULL,
        level      INTEGER NOT NULL,
        idx        INTEGER NOT NULL,
        hashes     BLOB    NOT NULL,
        PRIMARY KEY (log_id, level, idx)
     ) WITHOUT ROWID;
     CREATE TABLE checkpoints (
        log_id     TEXT    NOT NULL,
        tree_size  INTEGER NOT NULL,
        root_hash  BLOB    NOT NULL,
        timestamp  TEXT    NOT NULL,
        key_id     TEXT    NOT NULL,
        signature  TEXT    NOT NULL,
        note       TEXT    NOT NULL,
        PRIMARY KEY (log_id, tree_size)
     ) WITHOUT ROWID;
     CREATE TABLE checkpoint_keys (
        key_id     TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        public_key BLOB NOT NULL,
        created_at TEXT NOT NULL
     );",
    // v3: the outbox. Administrative changes made outside the writer (`vellum keys` on the
    // data dir, key routes) are committed together with the audit event that records them;
    // the one writer of the log appends those events and removes them from here.
    "CREATE TABLE outbox (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at TEXT NOT NULL,
        event      TEXT NOT NULL
     );",
    // v4: legal holds (SPEC §7). Released holds stay, with who released them and when.
    "CREATE TABLE legal_holds (
        id              TEXT PRIMARY KEY,
        reason          TEXT NOT NULL,
        organization_id TEXT,
        principal_id    TEXT,
        patient_id      TEXT,
        data_subject_id TEXT,
        created_at      TEXT NOT NULL,
        created_by      TEXT NOT NULL,
        released_at     TEXT,
        released_by     TEXT
     );",
    // v5: per-data-subject keys for crypto-shredding (SPEC §7). `lookup` is a keyed hash of
    // the subject id (never the id itself); `wrapped` is the subject key encrypted under a
    // key-encryption key derived from the HMAC secret. Erasing a subject deletes its row.
    "CREATE TABLE subject_keys (
        lookup      TEXT PRIMARY KEY,
        subject_ref TEXT NOT NULL UNIQUE,
        wrapped     BLOB NOT NULL,
        created_at  TEXT NOT NULL
     );",
];

/// Version of `index.db` this binary writes. v2: the high-cardinality filters moved from
/// B-trees to FTS5 tags (see `index.rs`). v4: rows keyed by their time-ordered sort key, so
/// every index, FTS5 included, returns newest first. v5: the column indexes cover `pos`. An
/// index of another version is rebuilt from the log.
pub(crate) const INDEX_VERSION: i64 = 5;

/// Schema of `index.db`.
pub(crate) const INDEX_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS ev (
        -- Sort key: timestamp in ms << 20 | a per-millisecond slot (index.rs, `sort_key`).
        -- Also the FTS5 rowid, so full text walks newest first like every other index.
        k              INTEGER PRIMARY KEY,
        pos            INTEGER NOT NULL UNIQUE,
        ts             INTEGER NOT NULL,
        log_id         TEXT NOT NULL,
        action         TEXT NOT NULL,
        status         TEXT NOT NULL,
        classification TEXT,
        principal_id   TEXT,
        organization_id TEXT,
        target_type    TEXT,
        target_id      TEXT,
        session_id     TEXT,
        ip             TEXT,
        patient_id     TEXT,
        subject_id     TEXT,
        correlation_id TEXT,
        -- healthcareContext.emergencyAccess (break-glass), for GET /v1/stats.
        emergency      INTEGER NOT NULL DEFAULT 0
    );
    -- Each index is (field, k, pos): an equality on the field walks its events newest first,
    -- a time range is a range of `k` within it, and `pos` (to fetch the event from the log)
    -- is in the entry, so a page costs no lookup in `ev` itself (measured: that lookup doubled
    -- the p99 of a principal's page when the index outgrew the page cache).
    CREATE INDEX IF NOT EXISTS ev_principal ON ev(principal_id, k, pos) WHERE principal_id IS NOT NULL;
    CREATE INDEX IF NOT EXISTS ev_org ON ev(organization_id, k, pos) WHERE organization_id IS NOT NULL;
    CREATE INDEX IF NOT EXISTS ev_action ON ev(action, k, pos);
    CREATE INDEX IF NOT EXISTS ev_status ON ev(status, k, pos);
    CREATE INDEX IF NOT EXISTS ev_class ON ev(classification, k, pos);
    CREATE INDEX IF NOT EXISTS ev_target_type ON ev(target_type, k, pos) WHERE target_type IS NOT NULL;
    -- targetResourceId, sessionId, ipAddress, patientId, dataSubjectId and correlationId have
    -- no B-tree: nearly unique values put every new row on a random page of each such index
    -- (the indexer fell below 7k rows/s at 1M events). They are FTS5 tokens in `tags`.
    CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(text, tags, content='', contentless_delete=1);
    -- Fewer, larger merges: the index is written in big batches behind the log.
    INSERT INTO fts (fts, rank) VALUES ('automerge', 8);
    INSERT INTO fts (fts, rank) VALUES ('crisismerge', 32);
    -- FTS5 flushes its in-memory token hash as a new segment whenever it passes `hashsize`
    -- (default 1 MiB, ~1,000 events here): five segments and their merges per 5,000-row index
    -- transaction. 16 MiB holds a whole transaction, so it flushes once, at commit.
    INSERT INTO fts (fts, rank) VALUES ('hashsize', 16777216);
    CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
";

/// Newest log schema version this binary knows.
pub(crate) fn log_version() -> i64 {
    i64::try_from(LOG_MIGRATIONS.len()).unwrap_or(i64::MAX)
}

/// Brings `vellum.db` to the newest version.
pub(crate) fn migrate_log(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let supported = log_version();
    if current > supported {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported,
        });
    }
    for (index, sql) in LOG_MIGRATIONS.iter().enumerate() {
        let version = i64::try_from(index).unwrap_or(i64::MAX) + 1;
        if version <= current {
            continue;
        }
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(version, "migrated log schema");
    }
    Ok(())
}
