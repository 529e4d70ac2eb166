//! The PostgreSQL schema: versioned migrations and the monthly partitions of `event_index`.

use super::{LOCK_NAMESPACE_INTERNAL, pg_err};
use crate::StoreError;
use std::collections::HashSet;
use time::{Date, Month, OffsetDateTime};

/// Characters of a filter column that its B-tree indexes hold. PostgreSQL refuses B-tree
/// entries above ~2.7 kB, and event strings may be 10,000 characters: the indexes are on
/// `left(column, 200)` (≤ 800 bytes), and every query compares the full value too.
pub(crate) const INDEXED_CHARS: i32 = 200;

/// Migrations, index = version - 1. Released ones are never edited.
const MIGRATIONS: &[&str] = &[
    // v1: everything of SQLite's log schema v1-v5, plus the search index (which SQLite keeps
    // in its own file).
    r#"
    CREATE TABLE events (
        pos        bigint GENERATED ALWAYS AS IDENTITY,
        log_id     text COLLATE "C" NOT NULL,
        seq        bigint NOT NULL,
        id         uuid NOT NULL,
        hash       bytea NOT NULL,
        signature  bytea,
        -- Exactly the hashed bytes: text, never jsonb (which would normalize them).
        canonical  text NOT NULL,
        CONSTRAINT events_pkey PRIMARY KEY (log_id, seq),
        CONSTRAINT events_id_key UNIQUE (id),
        CONSTRAINT events_pos_key UNIQUE (pos)
    );
    -- Keyed by SHA-256 of the key: client keys are free text, and a B-tree entry is limited.
    CREATE TABLE idempotency (
        key_hash   bytea PRIMARY KEY,
        key        text NOT NULL,
        created    bigint NOT NULL,
        receipt    text NOT NULL
    );
    CREATE INDEX idempotency_created ON idempotency (created);
    CREATE TABLE api_keys (
        id              text PRIMARY KEY,
        key_hash        bytea NOT NULL UNIQUE,
        role            text NOT NULL,
        organization_id text,
        name            text,
        created_at      text NOT NULL,
        revoked_at      text
    );
    CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
    CREATE TABLE merkle_tiles (
        log_id     text NOT NULL,
        level      smallint NOT NULL,
        idx        bigint NOT NULL,
        hashes     bytea NOT NULL,
        PRIMARY KEY (log_id, level, idx)
    );
    CREATE TABLE checkpoints (
        log_id     text COLLATE "C" NOT NULL,
        tree_size  bigint NOT NULL,
        root_hash  bytea NOT NULL,
        timestamp  text NOT NULL,
        key_id     text NOT NULL,
        signature  text NOT NULL,
        note       text NOT NULL,
        PRIMARY KEY (log_id, tree_size)
    );
    CREATE TABLE checkpoint_keys (
        key_id     text PRIMARY KEY,
        name       text NOT NULL,
        public_key bytea NOT NULL,
        created_at text NOT NULL
    );
    CREATE TABLE outbox (
        id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        created_at text NOT NULL,
        event      text NOT NULL
    );
    CREATE TABLE legal_holds (
        id              text PRIMARY KEY,
        reason          text NOT NULL,
        organization_id text,
        principal_id    text,
        patient_id      text,
        data_subject_id text,
        created_at      text NOT NULL,
        created_by      text NOT NULL,
        released_at     text,
        released_by     text
    );
    CREATE TABLE subject_keys (
        lookup      text PRIMARY KEY,
        subject_ref text NOT NULL UNIQUE,
        wrapped     bytea NOT NULL,
        created_at  text NOT NULL
    );
    -- The search index: one row per searchable event, partitioned by month of `ms` (see the
    -- module documentation of `postgres`). Text columns use the "C" collation so that
    -- comparisons and ordering are bytewise, like SQLite's BINARY.
    CREATE TABLE event_index (
        ms              bigint NOT NULL,   -- timestamp in Unix ms (clamped): the sort key
        pos             bigint NOT NULL,   -- events.pos: the tiebreak and the join
        ts              bigint NOT NULL,   -- exact timestamp, Unix µs
        log_id          text COLLATE "C" NOT NULL,
        seq             bigint NOT NULL,
        action          text COLLATE "C" NOT NULL,
        status          text COLLATE "C" NOT NULL,
        classification  text COLLATE "C",
        principal_id    text COLLATE "C",
        organization_id text COLLATE "C",
        target_type     text COLLATE "C",
        target_id       text COLLATE "C",
        session_id      text COLLATE "C",
        ip              text COLLATE "C",
        patient_id      text COLLATE "C",
        subject_id      text COLLATE "C",
        correlation_id  text COLLATE "C",
        emergency       boolean NOT NULL,
        -- 64-bit hashes of the six nearly-unique filters (field letter + value).
        tags            bigint[] NOT NULL,
        -- Free text, tokenized like FTS5 unicode61 (postgres/tokenize.rs).
        tsv             tsvector NOT NULL,
        PRIMARY KEY (ms, pos)
    ) PARTITION BY RANGE (ms);
    CREATE INDEX event_index_principal ON event_index (left(principal_id, 200), ms, pos)
        WHERE principal_id IS NOT NULL;
    CREATE INDEX event_index_org ON event_index (left(organization_id, 200), ms, pos)
        WHERE organization_id IS NOT NULL;
    CREATE INDEX event_index_action ON event_index (left(action, 200), ms, pos);
    CREATE INDEX event_index_status ON event_index (left(status, 200), ms, pos);
    CREATE INDEX event_index_class ON event_index (left(classification, 200), ms, pos);
    CREATE INDEX event_index_target_type ON event_index (left(target_type, 200), ms, pos)
        WHERE target_type IS NOT NULL;
    CREATE INDEX event_index_pos ON event_index (pos);
    CREATE INDEX event_index_tags ON event_index USING gin (tags);
    CREATE INDEX event_index_tsv ON event_index USING gin (tsv);
    -- Rows whose month has no partition of its own (outside 1970-2199); see `partition_of`.
    CREATE TABLE event_index_default PARTITION OF event_index DEFAULT;
    "#,
    // v2: full text through text blocks. A GIN entry per lexeme per event was about 40% of
    // PostgreSQL's CPU per appended event; a block of up to 32 rows appended together holds
    // each of their lexemes once (`text_blocks`), and the rows keep their own `tsvector` for
    // the exact match (see `search::BLOCK_ROWS`). Rows indexed before get blocks of 32
    // consecutive positions.
    r#"
    ALTER TABLE event_index ADD COLUMN blk bigint;
    UPDATE event_index SET blk = pos - pos % 32;
    ALTER TABLE event_index ALTER COLUMN blk SET NOT NULL;
    CREATE INDEX event_index_blk ON event_index (blk);
    -- A block's lexemes take ~5 kB: above the default 2 kB target PostgreSQL would compress
    -- them (pglz) and move them to the TOAST table on every append; up to a page, they stay
    -- in the row as they are.
    CREATE TABLE text_blocks (
        blk      bigint PRIMARY KEY,  -- from text_blocks_blk (backfilled: first position)
        lexemes  tsvector NOT NULL    -- every lexeme of its rows, without positions
    ) WITH (toast_tuple_target = 8160);
    INSERT INTO text_blocks (blk, lexemes)
        SELECT i.blk, coalesce(array_to_tsvector(array_agg(DISTINCT l.l)
                                                 FILTER (WHERE l.l IS NOT NULL)), ''::tsvector)
        FROM event_index i LEFT JOIN LATERAL unnest(tsvector_to_array(i.tsv)) AS l(l) ON TRUE
        GROUP BY i.blk;
    CREATE INDEX text_blocks_lexemes ON text_blocks USING gin (lexemes);
    -- A block holds a few hundred lexemes, most of them rare: with the default statistics
    -- the planner guessed a rare word in 0.5% of the blocks and scanned them all instead of
    -- asking the GIN index (1M events: 18 ms → 5 ms for a word in 8 blocks).
    ALTER TABLE text_blocks ALTER COLUMN lexemes SET STATISTICS 1000;
    ANALYZE text_blocks;
    -- New blocks are numbered past the backfilled ones.
    CREATE SEQUENCE text_blocks_blk;
    SELECT setval('text_blocks_blk', greatest(1, (SELECT max(blk) + 1 FROM text_blocks)));
    DROP INDEX event_index_tsv;
    "#,
];

/// Newest schema version this binary knows.
pub(crate) fn version() -> i32 {
    i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX)
}

/// A lock key of this schema for internal purposes (`purpose` 0: migrations, 1: partitions).
fn internal_key(schema: &str, purpose: u8) -> i64 {
    let digest = vellum_core::integrity::sha256(schema.as_bytes());
    let low = u32::from_be_bytes([
        digest[0],
        digest[1],
        digest[2],
        digest[3] & 0xfe | purpose & 1,
    ]);
    (LOCK_NAMESPACE_INTERNAL << 32) | i64::from(low)
}

/// Creates the schema if needed and brings it to [`version`], under a transaction-scoped
/// advisory lock so that two processes starting at once migrate one after the other (the
/// second finds the work done).
pub(crate) async fn migrate(
    client: &mut tokio_postgres::Client,
    schema: &str,
) -> Result<(), StoreError> {
    migrate_to(client, schema, version()).await
}

/// [`migrate`], up to version `target` (tests start from older versions).
async fn migrate_to(
    client: &mut tokio_postgres::Client,
    schema: &str,
    target: i32,
) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(pg_err)?;
    tx.query_typed(
        "SELECT pg_advisory_xact_lock($1)",
        &[(&internal_key(schema, 0), tokio_postgres::types::Type::INT8)],
    )
    .await
    .map_err(pg_err)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         SET LOCAL search_path TO {schema};
         CREATE TABLE IF NOT EXISTS schema_version (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(pg_err)?;
    let current: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await
        .map_err(pg_err)?
        .try_get(0)
        .map_err(pg_err)?;
    let supported = version();
    if current > supported {
        return Err(StoreError::SchemaTooNew {
            found: i64::from(current),
            supported: i64::from(supported),
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let version = i32::try_from(index).unwrap_or(i32::MAX) + 1;
        if version <= current || version > target {
            continue;
        }
        tx.batch_execute(sql).await.map_err(pg_err)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(pg_err)?;
        tracing::info!(version, schema, "migrated PostgreSQL schema");
    }
    tx.commit().await.map_err(pg_err)?;
    Ok(())
}

/// First year with partitions of its own; earlier months go to the default partition.
const FIRST_YEAR: i32 = 1970;
/// First year without partitions of its own.
const END_YEAR: i32 = 2200;

/// A month, as `year * 12 + month0`.
pub(crate) type MonthId = i32;

fn month_start_ms(id: MonthId) -> Option<i64> {
    let month = Month::try_from(u8::try_from(id.rem_euclid(12) + 1).ok()?).ok()?;
    let date = Date::from_calendar_date(id.div_euclid(12), month, 1).ok()?;
    Some(date.midnight().assume_utc().unix_timestamp() * 1000)
}

/// The month partition an event with sort-key millisecond `ms` goes to, if it has one of its
/// own (months of 1970-2199; anything else lands in the default partition, which is never
/// split, so creating a month partition never has to move rows out of it).
pub(crate) fn partition_of(ms: i64) -> Option<MonthId> {
    let at = OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).ok()?;
    if !(FIRST_YEAR..END_YEAR).contains(&at.year()) {
        return None;
    }
    Some(at.year() * 12 + i32::from(u8::from(at.month())) - 1)
}

/// The month of a Unix time in seconds (for creating the current month's partition ahead).
pub(crate) fn month_of_now() -> Option<MonthId> {
    partition_of(OffsetDateTime::now_utc().unix_timestamp() * 1000)
}

/// Creates the partitions of `months` that `known` does not list yet. Each is created in a
/// short transaction of its own (never in an append's: `CREATE TABLE … PARTITION OF` locks
/// the parent table until commit), under an advisory lock so that two writers needing the
/// same month do not race (`IF NOT EXISTS` alone is not race-free in PostgreSQL).
pub(crate) async fn ensure_partitions(
    client: &mut tokio_postgres::Client,
    schema: &str,
    known: &parking_lot::Mutex<HashSet<MonthId>>,
    months: impl IntoIterator<Item = MonthId>,
) -> Result<(), StoreError> {
    let missing: Vec<MonthId> = {
        let known = known.lock();
        let mut missing: Vec<MonthId> = months.into_iter().filter(|m| !known.contains(m)).collect();
        missing.sort_unstable();
        missing.dedup();
        missing
    };
    for month in missing {
        let (Some(lo), Some(hi)) = (month_start_ms(month), month_start_ms(month + 1)) else {
            continue;
        };
        let name = format!(
            "event_index_y{:04}m{:02}",
            month.div_euclid(12),
            month.rem_euclid(12) + 1
        );
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.batch_execute("SET LOCAL lock_timeout = '30s'")
            .await
            .map_err(pg_err)?;
        tx.query_typed(
            "SELECT pg_advisory_xact_lock($1)",
            &[(&internal_key(schema, 1), tokio_postgres::types::Type::INT8)],
        )
        .await
        .map_err(pg_err)?;
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {schema}.{name} PARTITION OF {schema}.event_index
                 FOR VALUES FROM ({lo}) TO ({hi})"
        ))
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        known.lock().insert(month);
        tracing::debug!(partition = %name, "search index partition ready");
    }
    Ok(())
}

/// The month partitions that exist (so a restarted process does not recreate them).
pub(crate) async fn existing_partitions(
    client: &tokio_postgres::Client,
    schema: &str,
) -> Result<HashSet<MonthId>, StoreError> {
    let rows = client
        .query_typed(
            "SELECT c.relname::text FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_class p ON p.oid = i.inhparent
             JOIN pg_namespace n ON n.oid = p.relnamespace
             WHERE n.nspname = $1 AND p.relname = 'event_index'",
            &[(&schema, tokio_postgres::types::Type::TEXT)],
        )
        .await
        .map_err(pg_err)?;
    let mut out = HashSet::new();
    for row in rows {
        let name: String = row.try_get(0).map_err(pg_err)?;
        if let Some(rest) = name.strip_prefix("event_index_y")
            && let Some((y, m)) = rest.split_once('m')
            && let (Ok(y), Ok(m)) = (y.parse::<i32>(), m.parse::<i32>())
        {
            out.insert(y * 12 + m - 1);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store whose search index was built at schema v1 (one GIN entry per lexeme per row)
    /// finds the same events after v2 moved full text to text blocks.
    #[test]
    fn v2_builds_text_blocks_for_rows_indexed_at_v1() {
        let Some(url) = crate::postgres::test_pg_url() else {
            return;
        };
        let schema = format!("vm_{}", uuid::Uuid::now_v7().simple());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (mut client, driver) = runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            (client, tokio::spawn(connection))
        });
        runtime.block_on(async {
            migrate_to(&mut client, &schema, 1).await.expect("v1");
            // 70 events at v1 (three blocks of 32 positions after the migration): row k has
            // the words "common" and "word{k}", row 40 also "needle".
            let mut sql = format!("SET search_path TO {schema};");
            for k in 0..70 {
                let text = if k == 40 {
                    format!("'common':1 'word{k}':2 'needle':3")
                } else {
                    format!("'common':1 'word{k}':2")
                };
                sql.push_str(&format!(
                    "INSERT INTO events (log_id, seq, id, hash, canonical) OVERRIDING SYSTEM VALUE
                         VALUES ('v1', {k}, gen_random_uuid(), '\\x00', '{{\"seq\":{k}}}');
                     INSERT INTO event_index (ms, pos, ts, log_id, seq, action, status, emergency,
                         tags, tsv)
                         SELECT {ms}, pos, {ms}000, 'v1', {k}, 'a', 'success', false, '{{}}',
                             $t${text}$t$ FROM events WHERE seq = {k};",
                    ms = 1_767_225_600_000_i64 + k,
                ));
            }
            client.batch_execute(&sql).await.expect("v1 rows");
        });
        drop(client);
        runtime.block_on(async {
            let _ = driver.await;
        });
        let store = crate::postgres::PgStore::connect(
            &url,
            crate::postgres::PgOptions {
                schema: Some(schema.clone()),
                ..Default::default()
            },
        )
        .expect("v2");
        let found = |q: &str| -> Vec<u64> {
            let page = crate::AuditStore::search(
                &store,
                &crate::SearchQuery {
                    q: Some(q.into()),
                    limit: 100,
                    ..Default::default()
                },
            )
            .expect("search");
            let mut seqs: Vec<u64> = page.events.iter().map(|e| e.seq).collect();
            seqs.sort_unstable();
            seqs
        };
        assert_eq!(found("needle"), vec![40]);
        assert_eq!(found("word7"), vec![7]);
        assert_eq!(found("common").len(), 70);
        assert_eq!(found("needle word7"), Vec::<u64>::new());
        let cleanup = tokio_postgres::connect(&url, tokio_postgres::NoTls);
        runtime.block_on(async {
            let (client, connection) = cleanup.await.expect("connect");
            let driver = tokio::spawn(connection);
            let blocks: i64 = client
                .query_one(&format!("SELECT count(*) FROM {schema}.text_blocks"), &[])
                .await
                .expect("blocks")
                .get(0);
            assert!((3..=4).contains(&blocks), "{blocks} blocks of 32 positions");
            client
                .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                .await
                .expect("drop");
            drop(client);
            let _ = driver.await;
        });
    }

    #[test]
    fn months_and_bounds() {
        let ms = 1_767_225_600_000; // 2026-01-01T00:00:00Z
        let id = partition_of(ms).expect("in range");
        assert_eq!(id, 2026 * 12);
        assert_eq!(month_start_ms(id), Some(ms));
        assert_eq!(partition_of(ms - 1), Some(2025 * 12 + 11));
        assert_eq!(month_start_ms(2025 * 12 + 11 + 1), Some(ms));
        assert_eq!(partition_of(-1), None, "before 1970: default partition");
        assert_eq!(partition_of(0), Some(1970 * 12));
        assert_eq!(partition_of(i64::MAX / 4), None);
    }
}
