//! Tests of the PostgreSQL store through its public API, against a real server.
//!
//! `VELLUM_TEST_PG_URL` names the server (e.g. `postgres://postgres@127.0.0.1:5432/test`); when
//! unset each test prints `skipping: VELLUM_TEST_PG_URL not set` and passes, unless
//! `VELLUM_REQUIRE_SERVICES=1`, where a missing or unreachable server fails the test (in CI a
//! skip would hide a regression). Each test works in a schema of its own (`vt_<random>`,
//! dropped at the end), so tests run in parallel. The differential test builds the same log
//! into a `SqliteStore` and a `PgStore` and compares every search page, the statistics, tiles
//! and checkpoints.

#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vellum_core::checkpoint::SignedCheckpoint;
use vellum_core::config::{RedactionConfig, ValidationConfig};
use vellum_core::integrity::{GENESIS_PREV_HASH, HmacKeyring, event_hash};
use vellum_core::pipeline::{Pipeline, Sequencing, seal, server_now};
use vellum_core::redact::Redactor;
use vellum_core::retention::Tombstone;
use vellum_core::tiles::{TileKey, TileWriter};
use vellum_store::postgres::{PgLease, PgOptions, PgStore, lock_key_for_partition};
use vellum_store::sqlite::{SqliteOptions, SqliteStore};
use vellum_store::{
    ApiKeyRecord, AppendBatch, AuditStore, CheckpointKeyRecord, IdempotencyRecord, LegalHoldRecord,
    LogHead, NewEvent, SearchQuery, StatsQuery, StoreError, StoredEvent, TimeBucket,
    TombstoneWrite,
};

// --- the server and a schema per test -------------------------------------------------------

fn required() -> bool {
    std::env::var("VELLUM_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// The server URL, or `None` (after saying so) when tests should skip.
fn pg_url() -> Option<String> {
    match std::env::var("VELLUM_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                !required(),
                "VELLUM_REQUIRE_SERVICES=1 but VELLUM_TEST_PG_URL is not set"
            );
            println!("skipping: VELLUM_TEST_PG_URL not set");
            None
        }
    }
}

/// Runs plain SQL on its own connection (schema cleanup, tampering, inspection).
fn sql(url: &str, statements: &str) -> Vec<tokio_postgres::SimpleQueryMessage> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("test connection");
        let driver = tokio::spawn(connection);
        let out = client.simple_query(statements).await.expect(statements);
        drop(client);
        let _ = driver.await;
        out
    })
}

/// The first column of the first row of a query.
fn sql_value(url: &str, query: &str) -> Option<String> {
    sql(url, query).into_iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
        _ => None,
    })?
}

/// A fresh schema, dropped (with everything in it) when the test ends.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            name: format!("vt_{}", uuid::Uuid::now_v7().simple()),
        }
    }

    fn options(&self) -> PgOptions {
        PgOptions {
            schema: Some(self.name.clone()),
            pool_size: 4,
            ..PgOptions::default()
        }
    }

    fn open(&self) -> PgStore {
        match PgStore::connect(&self.url, self.options()) {
            Ok(store) => store,
            Err(e) => panic!("PostgreSQL at VELLUM_TEST_PG_URL is unreachable: {e}"),
        }
    }

    /// SQL with `search_path` set to this schema.
    fn sql(&self, statements: &str) -> Vec<tokio_postgres::SimpleQueryMessage> {
        sql(
            &self.url,
            &format!("SET search_path TO {};{statements}", self.name),
        )
    }

    fn value(&self, query: &str) -> Option<String> {
        sql_value(
            &self.url,
            &format!("SET search_path TO {}; {query}", self.name),
        )
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            sql(
                &self.url,
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
            )
        });
    }
}

/// A schema and a store in it, or `None` when the tests skip.
fn setup() -> Option<(Schema, PgStore)> {
    let url = pg_url()?;
    let schema = Schema::new(&url);
    let store = schema.open();
    Some((schema, store))
}

// --- events ---------------------------------------------------------------------------------

fn pipeline() -> Pipeline {
    let redactor = Redactor::new(&RedactionConfig::default(), b"token-key").expect("redactor");
    Pipeline::new(ValidationConfig::default(), redactor)
}

/// Seals events for one log the way the server's writer does, keeping the chain head and
/// the Merkle tree.
struct Chain {
    log_id: String,
    next_seq: u64,
    last_hash: [u8; 32],
    pipeline: Pipeline,
    keyring: HmacKeyring,
    tree: TileWriter,
}

impl Chain {
    fn new(log_id: &str) -> Self {
        Self::resume(&LogHead {
            log_id: log_id.to_owned(),
            size: 0,
            last_hash: GENESIS_PREV_HASH,
        })
    }

    fn resume(head: &LogHead) -> Self {
        Self {
            log_id: head.log_id.clone(),
            next_seq: head.size,
            last_hash: head.last_hash,
            pipeline: pipeline(),
            keyring: HmacKeyring::single(zeroize::Zeroizing::new(
                b"postgres-store-test-secret-0123456789".to_vec(),
            ))
            .expect("keyring"),
            tree: TileWriter::new(),
        }
    }

    fn seal(&mut self, event: Value) -> NewEvent {
        let encoded = event.to_string().len();
        let prepared = self
            .pipeline
            .prepare(event, encoded, server_now().0)
            .expect("valid test event");
        let id = uuid::Uuid::now_v7();
        let id_text = id.hyphenated().to_string();
        let received_at = server_now().1;
        let sealed = seal(
            &prepared,
            &Sequencing {
                id: &id_text,
                log_id: &self.log_id,
                seq: self.next_seq,
                received_at: &received_at,
                prev_hash: &self.last_hash,
            },
            Some(&self.keyring),
        );
        self.tree.push(vellum_core::merkle::leaf_hash(&sealed.hash));
        let new = NewEvent {
            log_id: self.log_id.clone(),
            seq: self.next_seq,
            id: *id.as_bytes(),
            canonical: sealed.canonical,
            hash: sealed.hash,
            signature: sealed.signature.map(|(_, s)| s),
        };
        self.next_seq += 1;
        self.last_hash = sealed.hash;
        new
    }

    /// A batch with its tiles and (optionally) a checkpoint over the tree after it.
    fn batch(&mut self, events: impl IntoIterator<Item = Value>, checkpoint: bool) -> AppendBatch {
        let events: Vec<NewEvent> = events.into_iter().map(|e| self.seal(e)).collect();
        let tiles = self
            .tree
            .take_changed()
            .into_iter()
            .map(|t| (self.log_id.clone(), t))
            .collect();
        let checkpoints = if checkpoint {
            vec![self.checkpoint()]
        } else {
            Vec::new()
        };
        AppendBatch {
            events,
            tiles,
            checkpoints,
            ..AppendBatch::default()
        }
    }

    /// A checkpoint record over the current tree (the signature is not checked by the store).
    fn checkpoint(&self) -> SignedCheckpoint {
        SignedCheckpoint {
            log_id: self.log_id.clone(),
            tree_size: self.tree.size(),
            root_hash: hex::encode(self.tree.root()),
            timestamp: server_now().1,
            key_id: "0a0b0c0d".into(),
            signature: format!("sig-{}", self.tree.size()),
            note: format!("vellum/{}\n{}\n", self.log_id, self.tree.size()),
        }
    }
}

/// A realistic event with every filterable field.
fn ev(i: usize, ts: &str, principal: &str) -> Value {
    json!({
        "action": if i.is_multiple_of(2) { "fhir.patient.read" } else { "auth.login.failure" },
        "status": if i.is_multiple_of(2) { "success" } else { "failure" },
        "timestamp": ts,
        "principalId": principal,
        "organizationId": "org-1",
        "dataClassification": "PHI",
        "targetResourceType": "Patient",
        "targetResourceId": format!("pat-{i}"),
        "sessionContext": {"sessionId": format!("s-{}", i % 3), "ipAddress": "10.1.2.3"},
        "healthcareContext": {"patientId": format!("pat-{}", i % 4)},
        "outcomeDescription": format!("record number {i} viewed in the ward"),
        "details": {"i": i},
    })
}

fn event_id(e: &StoredEvent) -> uuid::Uuid {
    let v: Value = serde_json::from_str(&e.canonical).expect("stored JSON");
    uuid::Uuid::parse_str(v["id"].as_str().expect("id")).expect("uuid")
}

fn assert_same(stored: &StoredEvent, appended: &NewEvent) {
    assert_eq!(stored.log_id, appended.log_id);
    assert_eq!(stored.seq, appended.seq);
    assert_eq!(stored.canonical, appended.canonical, "byte for byte");
    assert_eq!(stored.hash, appended.hash.to_vec());
    assert_eq!(stored.signature, appended.signature.map(|s| s.to_vec()));
    assert_eq!(event_hash(&stored.canonical).to_vec(), stored.hash);
}

fn micros(t: &str) -> i64 {
    vellum_core::time_fmt::unix_micros(vellum_core::time_fmt::parse_rfc3339(t).expect("ts"))
}

// --- tests ----------------------------------------------------------------------------------

#[test]
fn migrations_are_idempotent_and_safe_concurrently() {
    let Some(url) = pg_url() else { return };
    let schema = Schema::new(&url);
    // Two processes starting at once: both migrate the new schema; one waits for the other.
    std::thread::scope(|s| {
        let a = s.spawn(|| schema.open());
        let b = s.spawn(|| schema.open());
        a.join().unwrap();
        b.join().unwrap();
    });
    let store = schema.open();
    assert_eq!(
        schema
            .value("SELECT count(*) FROM schema_version")
            .as_deref(),
        Some("2")
    );
    assert!(store.ping().is_ok());
    assert!(store.log_heads().unwrap().is_empty());
    // The current month has its partition ahead of any event.
    let partitions = schema
        .value("SELECT count(*) FROM pg_inherits WHERE inhparent = 'event_index'::regclass")
        .unwrap();
    assert!(
        partitions.parse::<i32>().unwrap() >= 3,
        "default + this month + next: {partitions}"
    );
    // A newer schema than this binary knows is refused.
    schema.sql("INSERT INTO schema_version (version) VALUES (999)");
    assert!(matches!(
        PgStore::connect(&url, schema.options()),
        Err(StoreError::SchemaTooNew { found: 999, .. })
    ));
    // Bad schema names are refused before any SQL runs.
    let bad = PgOptions {
        schema: Some("x; DROP TABLE y".into()),
        ..PgOptions::default()
    };
    assert!(PgStore::connect(&url, bad).is_err());
}

#[test]
fn unreachable_server_is_unavailable_and_the_password_is_not_shown() {
    let Some(_) = pg_url() else { return };
    let options = PgOptions {
        schema: Some("vt_unreachable".into()),
        connect_timeout: Duration::from_secs(2),
        ..PgOptions::default()
    };
    let err = PgStore::connect("postgres://vellum:hunter2@127.0.0.1:1/x", options).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn append_log_heads_scan_and_get_round_trip() {
    let Some((schema, store)) = setup() else {
        return;
    };
    let mut a = Chain::new("default");
    let mut b = Chain::new("org-b");
    let first = a.batch((0..5).map(|i| ev(i, "2024-05-01T10:00:00Z", "dr-1")), true);
    let second = b.batch((0..3).map(|i| ev(i, "2024-05-02T10:00:00Z", "dr-2")), false);
    store.append(&first).unwrap();
    store.append(&second).unwrap();
    store.append(&AppendBatch::default()).unwrap();

    let mut heads = store.log_heads().unwrap();
    heads.sort_by(|x, y| x.log_id.cmp(&y.log_id));
    assert_eq!(
        heads,
        vec![
            LogHead {
                log_id: "default".into(),
                size: 5,
                last_hash: a.last_hash
            },
            LogHead {
                log_id: "org-b".into(),
                size: 3,
                last_hash: b.last_hash
            },
        ]
    );
    assert_eq!(store.log_ids().unwrap(), vec!["default", "org-b"]);

    let scanned = store.scan_log("default", 0, 100).unwrap();
    assert_eq!(scanned.len(), 5);
    for (stored, appended) in scanned.iter().zip(&first.events) {
        assert_same(stored, appended);
        assert_eq!(stored.id_column, Some(appended.id));
    }
    assert!(
        scanned.windows(2).all(|w| w[0].pos < w[1].pos),
        "positions grow"
    );
    assert_eq!(store.scan_log("default", 3, 1).unwrap()[0].seq, 3);
    assert!(store.scan_log("nope", 0, 10).unwrap().is_empty());

    let id = uuid::Uuid::from_bytes(second.events[1].id);
    let got = store.get_event(&id).unwrap().expect("found");
    assert_same(&got, &second.events[1]);
    assert_eq!(
        got.to_api_json(),
        StoredEvent {
            id_column: None,
            ..got.clone()
        }
        .to_api_json()
    );
    assert!(store.get_event(&uuid::Uuid::now_v7()).unwrap().is_none());

    // Several by id at once (one `= ANY` probe): the ones the log holds.
    let wanted = [
        uuid::Uuid::from_bytes(second.events[1].id),
        uuid::Uuid::now_v7(),
        uuid::Uuid::from_bytes(first.events[0].id),
    ];
    let mut found = store.events_by_id(&wanted).unwrap();
    found.sort_by_key(|e| e.pos);
    assert_eq!(found.len(), 2);
    assert_same(&found[0], &first.events[0]);
    assert_same(&found[1], &second.events[1]);
    assert_eq!(found[1].id_column, Some(second.events[1].id));
    assert!(store.events_by_id(&[]).unwrap().is_empty());

    // Tiles and the checkpoint went in with the events.
    let cp = store
        .latest_checkpoint("default")
        .unwrap()
        .expect("checkpoint");
    assert_eq!(cp, first.checkpoints[0]);
    let tile = store
        .merkle_tile("default", TileKey { level: 0, index: 0 })
        .unwrap()
        .expect("tile");
    assert_eq!(tile.len(), 5);

    // A row filed under an id that is not the one inside the event is refused.
    let other = uuid::Uuid::now_v7();
    schema.sql(&format!(
        "UPDATE events SET id = '{other}' WHERE log_id = 'default' AND seq = 2"
    ));
    assert!(matches!(
        store.get_event(&other),
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.events_by_id(&[other]),
        Err(StoreError::Corrupt(_))
    ));

    // A reopened store sees the same (migrations already done).
    drop(store);
    let again = schema.open();
    assert_eq!(again.scan_log("org-b", 0, 10).unwrap().len(), 3);
}

/// `prepare` (the writer builds the index rows while the previous group commits) stores the
/// same search rows as an append that builds them itself, whether it covered the batch in
/// two steps or covers only part of it when the append comes.
#[test]
fn a_prepared_batch_stores_the_same_index_rows() {
    let Some((schema, store)) = setup() else {
        return;
    };
    // 40 rows: a complete text block prepared ahead, and a partial one.
    let events: Vec<Value> = (0..40)
        .map(|i| ev(i, &format!("2026-11-23T10:00:{i:02}Z"), &format!("dr-{i}")))
        .collect();
    let mut plain = Chain::new("plain");
    store.append(&plain.batch(events.clone(), false)).unwrap();

    let mut twice = Chain::new("twice");
    let mut batch = twice.batch(events[..35].to_vec(), false);
    store.prepare(&mut batch);
    let more = twice.batch(events[35..].to_vec(), false);
    batch.events.extend(more.events);
    batch.tiles.extend(more.tiles);
    store.prepare(&mut batch);
    store.append(&batch).unwrap();

    // Covered in part: the append builds every row itself.
    let mut part = Chain::new("part");
    let mut batch = part.batch(events[..3].to_vec(), false);
    store.prepare(&mut batch);
    let more = part.batch(events[3..].to_vec(), false);
    batch.events.extend(more.events);
    batch.tiles.extend(more.tiles);
    store.append(&batch).unwrap();

    let rows = |log: &str| {
        schema.value(&format!(
            "SELECT count(*) || ':' || string_agg(concat_ws('|', seq, ms, ts, action, status,
                 classification, principal_id, organization_id, target_type, target_id,
                 session_id, ip, patient_id, subject_id, correlation_id, emergency, tags::text,
                 tsv::text), ';' ORDER BY seq)
             FROM event_index WHERE log_id = '{log}'"
        ))
    };
    let expected = rows("plain").expect("rows");
    assert!(expected.starts_with("40:"), "{expected}");
    assert_eq!(rows("twice").as_deref(), Some(expected.as_str()));
    assert_eq!(rows("part").as_deref(), Some(expected.as_str()));
    // The same text blocks: rows 0-31 and 32-39.
    let blocks = |log: &str| {
        schema.value(&format!(
            "SELECT string_agg(n || ':' || lexemes::text, ';' ORDER BY first)
             FROM (SELECT blk, count(*) AS n, min(pos) AS first FROM event_index
                   WHERE log_id = '{log}' GROUP BY blk) r JOIN text_blocks USING (blk)"
        ))
    };
    let expected = blocks("plain").expect("blocks");
    assert!(expected.starts_with("32:'"), "{expected}");
    assert!(expected.contains(";8:'"), "{expected}");
    assert_eq!(blocks("twice").as_deref(), Some(expected.as_str()));
    assert_eq!(blocks("part").as_deref(), Some(expected.as_str()));
}

#[test]
fn gin_pending_lists_are_emptied_in_the_background() {
    let Some((schema, store)) = setup() else {
        return;
    };
    let mut chain = Chain::new("pending");
    let events: Vec<Value> = (0..40)
        .map(|i| ev(i, &format!("2026-11-23T12:00:{i:02}Z"), "dr-1"))
        .collect();
    assert_eq!(store.pending_list_cleanups(), 0, "nothing appended yet");
    store.append(&chain.batch(events, false)).unwrap();
    // The append left its GIN entries (text blocks, tags) in the pending lists; the store's
    // cleaner merges them within about a second.
    wait_until("a background cleanup after the append", || {
        store.pending_list_cleanups() >= 1
    });
    let pending_pages = schema.value(
        "SELECT sum(gin_clean_pending_list(c.oid)) FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_am a ON a.oid = c.relam
         WHERE n.nspname = current_schema() AND a.amname = 'gin' AND c.relkind = 'i'",
    );
    assert_eq!(pending_pages.as_deref(), Some("0"), "nothing left pending");
    // Without appends the cleaner does not run.
    let after = store.pending_list_cleanups();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(store.pending_list_cleanups(), after);
}

#[test]
fn text_blocks_find_rows_exactly_and_lose_purged_words() {
    let Some((schema, store)) = setup() else {
        return;
    };
    let mut chain = Chain::new("blocks");
    let events: Vec<Value> = (0..40)
        .map(|i| {
            let mut e = ev(i, &format!("2026-11-23T11:00:{i:02}Z"), "dr-1");
            let words = match i {
                5 => "zanzibar lagoon",
                6 => "alpha",
                7 => "beta",
                33 => "alpha beta",
                _ => "plain",
            };
            e["outcomeDescription"] = json!(format!("record {i}: {words}"));
            e
        })
        .collect();
    let batch = chain.batch(events, false);
    let appended = batch.events.clone();
    store.append(&batch).unwrap();
    let found = |text: &str| -> Vec<u64> {
        let page = store
            .search(&SearchQuery {
                q: Some(text.into()),
                limit: 100,
                ..SearchQuery::default()
            })
            .unwrap();
        let mut seqs: Vec<u64> = page.events.iter().map(|e| e.seq).collect();
        seqs.sort_unstable();
        seqs
    };
    assert_eq!(found("zanzibar"), vec![5]);
    // Both words are in the first block, but in different rows: only row 33 has both.
    assert_eq!(found("alpha beta"), vec![33]);
    assert_eq!(found("alpha"), vec![6, 33]);
    // A phrase: the words must be adjacent in one row.
    assert_eq!(found("zanzibar-lagoon"), vec![5]);
    assert_eq!(found("lagoon-zanzibar"), Vec::<u64>::new());
    assert_eq!(found("record-5"), vec![5]);
    assert_eq!(
        schema.value("SELECT count(*) FROM text_blocks").as_deref(),
        Some("2")
    );
    let blocks_with = |word: &str| {
        schema.value(&format!(
            "SELECT count(*) FROM text_blocks WHERE lexemes @@ '{word}'::tsquery"
        ))
    };
    assert_eq!(blocks_with("zanzibar").as_deref(), Some("1"));
    // Purging row 5 takes its words out of its block; the block keeps the others'.
    let purged = &appended[5];
    let tombstone = TombstoneWrite {
        seq: purged.seq,
        hash: purged.hash,
        body: Tombstone {
            seq: purged.seq,
            hash: hex::encode(purged.hash),
            policy: "system".into(),
            purged_at: "2026-12-01T00:00:00Z".into(),
            purge_id: "purge-blocks".into(),
        }
        .to_body(),
    };
    assert_eq!(store.tombstone_events("blocks", &[tombstone]).unwrap(), 1);
    assert_eq!(blocks_with("zanzibar").as_deref(), Some("0"));
    assert_eq!(blocks_with("lagoon").as_deref(), Some("0"));
    assert_eq!(blocks_with("alpha").as_deref(), Some("2"));
    assert_eq!(found("zanzibar"), Vec::<u64>::new());
    assert_eq!(found("alpha"), vec![6, 33]);
}

#[test]
fn idempotent_receipts_window_and_expiry() {
    let Some((_schema, store)) = setup() else {
        return;
    };
    let long_key = format!("key-1#{}", "x".repeat(5000));
    let batch = AppendBatch {
        idempotency: vec![
            IdempotencyRecord {
                key: "key-1#a".into(),
                receipt: "{\"r\":1}".into(),
                created_micros: 1_000,
            },
            IdempotencyRecord {
                key: long_key.clone(),
                receipt: "{\"r\":2}".into(),
                created_micros: 2_000,
            },
            // The same key twice in one batch: the last one wins (SQLite's INSERT OR REPLACE).
            IdempotencyRecord {
                key: "key-1#a".into(),
                receipt: "{\"r\":3}".into(),
                created_micros: 3_000,
            },
        ],
        ..AppendBatch::default()
    };
    store.append(&batch).unwrap();
    let found = store
        .idempotent_receipts(&["missing", &long_key, "key-1#a"], 0)
        .unwrap();
    assert_eq!(
        found,
        vec![
            (long_key.clone(), "{\"r\":2}".to_owned()),
            ("key-1#a".to_owned(), "{\"r\":3}".to_owned())
        ]
    );
    assert_eq!(
        store
            .idempotent_receipts(&["key-1#a", &long_key], 2_500)
            .unwrap()
            .len(),
        1,
        "the window excludes older receipts"
    );
    assert!(store.idempotent_receipts(&[], 0).unwrap().is_empty());
    assert_eq!(store.expire_idempotency(2_500).unwrap(), 1);
    assert_eq!(store.expire_idempotency(2_500).unwrap(), 0);
    assert_eq!(store.idempotent_receipts(&["key-1#a"], 0).unwrap().len(), 1);
}

#[test]
fn a_duplicate_seq_fails_and_leaves_nothing_of_its_batch() {
    let Some((_schema, store)) = setup() else {
        return;
    };
    let mut chain = Chain::new("default");
    store
        .append(&chain.batch((0..3).map(|i| ev(i, "2024-05-01T10:00:00Z", "p")), false))
        .unwrap();
    // Two writers that both believe the log ends at seq 3, appending at once.
    let mut w1 = Chain::resume(&store.log_heads().unwrap()[0]);
    let mut w2 = Chain::resume(&store.log_heads().unwrap()[0]);
    let mut b1 = w1.batch((0..4).map(|i| ev(i, "2024-05-01T11:00:00Z", "w1")), false);
    let mut b2 = w2.batch((0..2).map(|i| ev(i, "2024-05-01T12:00:00Z", "w2")), true);
    for (b, name) in [(&mut b1, "w1"), (&mut b2, "w2")] {
        b.idempotency.push(IdempotencyRecord {
            key: format!("{name}#0"),
            receipt: "{}".into(),
            created_micros: 1,
        });
    }
    let (r1, r2) = std::thread::scope(|s| {
        let t1 = s.spawn(|| store.append(&b1));
        let t2 = s.spawn(|| store.append(&b2));
        (t1.join().unwrap(), t2.join().unwrap())
    });
    assert!(r1.is_ok() != r2.is_ok(), "exactly one wins: {r1:?} {r2:?}");
    let (loser, lost_batch, winner_len) = if r1.is_ok() {
        (r2, &b2, 4)
    } else {
        (r1, &b1, 2)
    };
    let message = loser.unwrap_err().to_string();
    assert!(message.contains("UNIQUE(log_id, seq)"), "{message}");
    let events = store.scan_log("default", 0, 100).unwrap();
    assert_eq!(events.len(), 3 + winner_len);
    for e in &lost_batch.events {
        assert!(
            store
                .get_event(&uuid::Uuid::from_bytes(e.id))
                .unwrap()
                .is_none()
        );
    }
    let loser_key = lost_batch.idempotency[0].key.as_str();
    assert!(
        store
            .idempotent_receipts(&[loser_key], 0)
            .unwrap()
            .is_empty()
    );
    if !lost_batch.checkpoints.is_empty() {
        assert!(store.latest_checkpoint("default").unwrap().is_none());
    }
    // Nothing of the loser is searchable either.
    let all = store
        .search(&SearchQuery {
            limit: 1000,
            ..SearchQuery::default()
        })
        .unwrap();
    assert_eq!(all.events.len(), 3 + winner_len);
}

/// A lease on `keys`, expected to be granted.
fn lease(store: &PgStore, keys: &[i64]) -> PgLease {
    store.writer_lease(keys).unwrap().expect("lease granted")
}

fn random_keys(n: usize) -> Vec<i64> {
    // Random partitions, so parallel tests (and other users of the server) do not collide.
    let base = u32::from_be_bytes(uuid::Uuid::now_v7().as_bytes()[12..16].try_into().unwrap());
    (0..n)
        .map(|i| lock_key_for_partition(base.wrapping_add(u32::try_from(i).unwrap())))
        .collect()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn writer_lease_is_exclusive_and_fenced() {
    let Some((schema, store)) = setup() else {
        return;
    };
    let keys = random_keys(2);
    assert_eq!(
        keys[0] >> 32,
        0x5645_4C4C,
        "Vellum's namespace in the high bits"
    );

    assert_eq!(
        store.free_lock_keys(&keys).unwrap().len(),
        2,
        "nobody holds them yet"
    );
    let first = lease(&store, &keys);
    assert!(first.is_held());
    assert!(
        store.free_lock_keys(&keys).unwrap().is_empty(),
        "pg_locks shows both held"
    );
    assert!(store.writer_lease(&keys).unwrap().is_none(), "same keys");
    assert!(
        store.writer_lease(&keys[1..]).unwrap().is_none(),
        "any held key refuses the whole lease"
    );
    // All or nothing: a refused lease keeps none of the keys it could take.
    let other = random_keys(1);
    assert!(store.writer_lease(&[other[0], keys[0]]).unwrap().is_none());
    let o = lease(&store, &other);
    o.release();
    assert_eq!(
        store.free_lock_keys(&other).unwrap(),
        other,
        "free again once released"
    );

    // The lease appends and reads heads on its own session; other methods use the pool.
    let mut chain = Chain::new("default");
    first
        .append(&chain.batch((0..2).map(|i| ev(i, "2024-05-01T10:00:00Z", "p")), true))
        .unwrap();
    assert_eq!(first.log_heads().unwrap()[0].size, 2);
    assert_eq!(first.scan_log("default", 0, 10).unwrap().len(), 2);
    assert!(first.latest_checkpoint("default").unwrap().is_some());

    // Released: a standby takes over at once.
    first.release();
    let second = lease(&store, &keys);

    // Killed: the session ends, its locks go, and the old lease can no longer append.
    let pid_rows = schema.value(&format!(
        "SELECT string_agg(pid::text, ',') FROM pg_locks WHERE locktype = 'advisory'
         AND ((classid::bigint << 32) | objid::bigint) = {}",
        keys[0]
    ));
    let pid = pid_rows.expect("the lease's backend holds the lock");
    assert!(!pid.contains(','), "one holder: {pid}");
    sql(&schema.url, &format!("SELECT pg_terminate_backend({pid})"));
    wait_until("the lease to notice", || !second.is_held());
    let err = second
        .append(&chain.batch([ev(9, "2024-05-01T10:00:00Z", "p")], false))
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(second.log_heads().is_err());
    let third = lease(&store, &keys);
    assert!(third.is_held());
    // The new writer resumes from the store: the failed append left nothing.
    assert_eq!(third.log_heads().unwrap()[0].size, 2);
    drop(second);
    drop(third);
    // Dropping closes the session, so the keys come free without an explicit release.
    wait_until("dropped lease to free its keys", || {
        store.writer_lease(&keys).unwrap().is_some()
    });
}

#[test]
fn subject_keys_insert_race_and_erase_leave_no_row() {
    let Some((schema, store)) = setup() else {
        return;
    };
    let wrapped = vec![0xA5u8; 72];
    // Racing inserts for one subject agree on one key.
    let results: Vec<(String, Vec<u8>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u8)
            .map(|i| {
                let store = &store;
                s.spawn(move || {
                    store
                        .insert_subject_key("lookup-1", &format!("ref-{i}"), &[0xA0 + i; 72])
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
    let (subject_ref, kept) = results[0].clone();
    assert_eq!(
        store
            .insert_subject_key("lookup-1", "ref-x", &wrapped)
            .unwrap(),
        (subject_ref.clone(), kept.clone())
    );
    assert_eq!(
        store.subject_key("lookup-1").unwrap(),
        Some((subject_ref.clone(), kept.clone()))
    );
    assert_eq!(
        store.subject_key_by_ref(&subject_ref).unwrap(),
        Some(kept.clone())
    );

    // Another subject's key stays, so the table keeps a page to inspect after the vacuum.
    store
        .insert_subject_key("lookup-2", "ref-other", &[0x11; 72])
        .unwrap();
    let audit = vec!["{\"action\":\"gdpr.erasure\"}".to_owned()];
    assert_eq!(
        store.erase_subject_key("lookup-1", &audit).unwrap(),
        Some(subject_ref.clone())
    );
    assert_eq!(store.erase_subject_key("lookup-1", &audit).unwrap(), None);
    assert!(store.subject_key("lookup-1").unwrap().is_none());
    assert!(store.subject_key_by_ref(&subject_ref).unwrap().is_none());
    assert_eq!(
        schema
            .value("SELECT count(*) FROM subject_keys WHERE lookup = 'lookup-1'")
            .as_deref(),
        Some("0")
    );
    let queued = store.outbox(10).unwrap();
    assert_eq!(
        queued.len(),
        1,
        "one audit event, for the erasure that happened"
    );
    // With pageinspect installed (superuser test servers), check the heap pages themselves.
    let has_pageinspect = sql_value(
        &schema.url,
        "SELECT count(*) FROM pg_extension WHERE extname = 'pageinspect'",
    );
    if has_pageinspect.as_deref() == Some("1") {
        let pages: i64 = schema
            .value("SELECT pg_relation_size('subject_keys') / current_setting('block_size')::int")
            .unwrap()
            .parse()
            .unwrap();
        assert!(pages > 0);
        let needle = hex::encode(&kept[..16]);
        for page in 0..pages {
            let found = schema.value(&format!(
                "SELECT position(decode('{needle}', 'hex') in public.get_raw_page('subject_keys', {page}))"
            ));
            assert_eq!(
                found.as_deref(),
                Some("0"),
                "key bytes remain in page {page}"
            );
        }
    }
}

#[test]
fn api_keys_outbox_holds_meta_and_checkpoint_keys() {
    let Some((_schema, store)) = setup() else {
        return;
    };
    let key = |id: &str, seed: u8, org: Option<&str>| ApiKeyRecord {
        id: id.into(),
        key_hash: [seed; 32],
        role: "reader".into(),
        organization_id: org.map(str::to_owned),
        name: Some(format!("key {id}")),
        created_at: format!("2024-05-0{seed}T00:00:00Z"),
        revoked_at: None,
    };
    store
        .insert_api_key(
            &key("k2", 2, Some("org-1")),
            &["{\"a\":\"create k2\"}".into()],
        )
        .unwrap();
    store.insert_api_key(&key("k1", 1, None), &[]).unwrap();
    assert!(
        store
            .insert_api_key(&key("k1", 3, None), &["{}".into()])
            .is_err(),
        "duplicate id"
    );
    assert_eq!(
        store.find_api_key(&[2; 32]).unwrap(),
        Some(key("k2", 2, Some("org-1")))
    );
    assert!(store.find_api_key(&[9; 32]).unwrap().is_none());
    let ids: Vec<String> = store
        .list_api_keys()
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(ids, vec!["k1", "k2"]);
    assert!(
        store
            .revoke_api_key("k2", "2024-06-01T00:00:00Z", &["{\"a\":\"revoke\"}".into()])
            .unwrap()
    );
    assert!(
        !store
            .revoke_api_key("k2", "2024-06-02T00:00:00Z", &["{\"a\":\"again\"}".into()])
            .unwrap()
    );
    assert_eq!(
        store
            .find_api_key(&[2; 32])
            .unwrap()
            .unwrap()
            .revoked_at
            .as_deref(),
        Some("2024-06-01T00:00:00Z")
    );

    let hold = LegalHoldRecord {
        id: "h1".into(),
        reason: "litigation".into(),
        organization_id: Some("org-1".into()),
        principal_id: None,
        patient_id: Some("pat-1".into()),
        data_subject_id: None,
        created_at: "2024-05-01T00:00:00Z".into(),
        created_by: "admin".into(),
        released_at: None,
        released_by: None,
    };
    store
        .insert_legal_hold(&hold, &["{\"a\":\"hold\"}".into()])
        .unwrap();
    assert_eq!(store.legal_holds().unwrap(), vec![hold.clone()]);
    assert!(
        store
            .release_legal_hold(
                "h1",
                "2024-05-02T00:00:00Z",
                "admin2",
                &["{\"a\":\"release\"}".into()]
            )
            .unwrap()
    );
    assert!(
        !store
            .release_legal_hold("h1", "2024-05-03T00:00:00Z", "admin2", &["{}".into()])
            .unwrap()
    );
    let released = &store.legal_holds().unwrap()[0];
    assert_eq!(released.released_by.as_deref(), Some("admin2"));

    store.meta_set("a", "1").unwrap();
    store.meta_set("a", "2").unwrap();
    store
        .meta_set_audited("policies", "{}", &["{\"a\":\"policies\"}".into()])
        .unwrap();
    assert_eq!(store.meta_get("a").unwrap().as_deref(), Some("2"));
    assert_eq!(store.meta_get("policies").unwrap().as_deref(), Some("{}"));
    assert!(store.meta_get("b").unwrap().is_none());

    // Every audited change queued its event, in order; nothing for the refused ones.
    store.push_outbox(&["{\"a\":\"direct\"}".into()]).unwrap();
    let queued = store.outbox(100).unwrap();
    let events: Vec<&str> = queued.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        events,
        vec![
            "{\"a\":\"create k2\"}",
            "{\"a\":\"revoke\"}",
            "{\"a\":\"hold\"}",
            "{\"a\":\"release\"}",
            "{\"a\":\"policies\"}",
            "{\"a\":\"direct\"}"
        ]
    );
    assert!(queued.windows(2).all(|w| w[0].id < w[1].id));
    store.remove_outbox(&[queued[0].id, queued[2].id]).unwrap();
    store.remove_outbox(&[]).unwrap();
    assert_eq!(
        store.outbox(2).unwrap(),
        vec![queued[1].clone(), queued[3].clone()]
    );

    let ck = CheckpointKeyRecord {
        key_id: "0a0b0c0d".into(),
        name: "vellum".into(),
        public_key: [7; 32],
        created_at: "2024-05-01T00:00:00Z".into(),
    };
    store.insert_checkpoint_key(&ck).unwrap();
    store.insert_checkpoint_key(&ck).unwrap();
    assert_eq!(store.checkpoint_keys().unwrap(), vec![ck]);
}

#[test]
fn checkpoints_inserted_alone_latest_covering_and_list() {
    let Some((_schema, store)) = setup() else {
        return;
    };
    let mut chain = Chain::new("audit");
    store
        .append(&chain.batch((0..3).map(|i| ev(i, "2024-05-01T10:00:00Z", "p")), true))
        .unwrap();
    store
        .append(&chain.batch((0..4).map(|i| ev(i, "2024-05-01T11:00:00Z", "p")), false))
        .unwrap();
    let cp7 = chain.checkpoint();
    store.insert_checkpoint(&cp7).unwrap();
    store.insert_checkpoint(&cp7).unwrap();
    assert_eq!(store.latest_checkpoint("audit").unwrap(), Some(cp7.clone()));
    assert_eq!(
        store.checkpoint_covering("audit", 4).unwrap(),
        Some(cp7.clone())
    );
    assert_eq!(
        store
            .checkpoint_covering("audit", 2)
            .unwrap()
            .unwrap()
            .tree_size,
        3
    );
    assert!(store.checkpoint_covering("audit", 8).unwrap().is_none());
    let sizes = |after, limit| -> Vec<u64> {
        store
            .list_checkpoints("audit", after, limit)
            .unwrap()
            .iter()
            .map(|c| c.tree_size)
            .collect()
    };
    assert_eq!(sizes(None, 10), vec![3, 7]);
    assert_eq!(sizes(Some(3), 10), vec![7]);
    assert_eq!(sizes(None, 1), vec![3]);
    // A log with only a checkpoint is a log too.
    let mut empty = Chain::new("zz-empty");
    store
        .insert_checkpoint(&empty.batch([], true).checkpoints[0])
        .unwrap();
    assert_eq!(store.log_ids().unwrap(), vec!["audit", "zz-empty"]);
}

#[test]
fn works_from_every_kind_of_caller() {
    let Some((_schema, store)) = setup() else {
        return;
    };
    let store = Arc::new(store);
    // Plain thread.
    std::thread::spawn({
        let store = store.clone();
        move || store.ping().unwrap()
    })
    .join()
    .unwrap();
    // Directly inside async tasks of a multi-thread runtime, spawn_blocking and block_in_place.
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    multi.block_on({
        let store = store.clone();
        async move {
            store.meta_set("from", "async").unwrap();
            let s = store.clone();
            tokio::spawn(async move { s.meta_get("from").unwrap() })
                .await
                .unwrap();
            let s = store.clone();
            tokio::task::spawn_blocking(move || s.ping().unwrap())
                .await
                .unwrap();
            tokio::task::block_in_place(|| store.ping().unwrap());
        }
    });
    // Inside a current-thread runtime (e.g. `#[tokio::test]`), and its blocking pool.
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    current.block_on({
        let store = store.clone();
        async move {
            assert_eq!(store.meta_get("from").unwrap().as_deref(), Some("async"));
            let s = store.clone();
            tokio::task::spawn_blocking(move || s.ping().unwrap())
                .await
                .unwrap();
        }
    });
    // Dropping the last handle inside an async context does not panic.
    multi.block_on(async move {
        let lease = store.writer_lease(&random_keys(1)).unwrap().unwrap();
        drop(lease);
        drop(store);
    });
}

// --- the differential test against SQLite ---------------------------------------------------

const ACTIONS: [&str; 7] = [
    "fhir.patient.read",
    "fhir.patient.update",
    "fhir.observation.read",
    "auth.login.failure",
    "auth.login",
    "security.alert",
    "admin.config.change",
];
const WORDS: [&str; 6] = ["viewed", "amended", "exported", "printed", "Café", "naïve"];

/// Event `k` of the differential log: every filter field, many events per millisecond (one
/// batch shares a timestamp), sub-millisecond differences, late events (up to a day behind)
/// and events spread over three months (three partitions).
fn diff_event(k: usize) -> Value {
    let base_ms: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    let k64 = i64::try_from(k).unwrap();
    let mut ms = base_ms + k64 * 37_000_013 % 7_776_000_000; // spread over ~90 days
    if k % 10 == 3 {
        ms -= (k64 * 7_919_000) % 86_400_000; // late by up to a day
    }
    if (200..230).contains(&k) {
        ms = base_ms + 1_000_000_000; // one batch, one millisecond
    }
    let micros = (k * 13) % 1000;
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(ms) * 1_000_000 + i128::try_from(micros).unwrap() * 1000,
    )
    .unwrap();
    let ts = at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let status = ["success", "failure", "attempt", "warning"][k % 4];
    let classification = ["PHI", "INTERNAL", "CONFIDENTIAL", "PUBLIC"][k % 4];
    let target_type = ["Patient", "Observation", "Encounter"][k % 3];
    let mut event = json!({
        "action": ACTIONS[k % ACTIONS.len()],
        "status": status,
        "timestamp": ts,
        "principalId": format!("dr-{}", k % 5),
        "organizationId": format!("org-{}", k % 3),
        "dataClassification": classification,
        "targetResourceType": target_type,
        "targetResourceId": format!("res-{}", k % 17),
        "correlationId": format!("corr-{}", k % 23),
        "sessionContext": {"sessionId": format!("sess-{}", k % 7), "ipAddress": format!("10.0.0.{}", k % 9)},
        "healthcareContext": {"patientId": format!("pat-{}", k % 11), "emergencyAccess": k.is_multiple_of(13)},
        "outcomeDescription": format!("{} {} ward {} by dr-{}", WORDS[k % 6],
            if k.is_multiple_of(9) { "rare" } else { "chart" }, k % 6, k % 5),
    });
    if k % 4 == 1 {
        event["gdprContext"] =
            json!({"dataSubjectId": format!("subj-{}", k % 5), "legalBasis": "consent"});
    }
    event
}

/// What two stores must agree on for one stored event (`pos` may differ).
type Stripped = (u64, String, Vec<u8>, Option<Vec<u8>>);

/// Every page of `query` (page size 7), as event ids in order.
fn all_pages(store: &dyn AuditStore, query: &SearchQuery) -> Vec<uuid::Uuid> {
    let mut query = query.clone();
    query.limit = 7;
    query.cursor = None;
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let page = store.search(&query).unwrap();
        assert_eq!(page.index_lag, 0);
        out.extend(page.events.iter().map(event_id));
        match page.next_cursor {
            Some(c) => {
                assert_eq!(page.events.len(), 7, "pages before the last are full");
                query.cursor = Some(c);
            }
            None => return out,
        }
    }
    panic!("paging does not end");
}

#[test]
fn search_stats_tiles_and_checkpoints_match_sqlite() {
    let Some((_schema, pg)) = setup() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(
        dir.path(),
        SqliteOptions {
            index_wait: Duration::from_secs(60),
            ..SqliteOptions::default()
        },
    )
    .unwrap();
    let mut chains = [
        Chain::new("default"),
        Chain::new("org-a"),
        Chain::new("org-b"),
    ];
    let mut k = 0;
    let mut appended: Vec<NewEvent> = Vec::new();
    for round in 0..12 {
        for (c, chain) in chains.iter_mut().enumerate() {
            let n = 10 + (round * 7 + c * 3) % 25;
            let events: Vec<Value> = (k..k + n).map(diff_event).collect();
            k += n;
            let batch = chain.batch(events, round % 3 == 2);
            appended.extend(batch.events.iter().cloned());
            pg.append(&batch).unwrap();
            sqlite.append(&batch).unwrap();
        }
    }
    // Purge some events (tombstones) in both.
    for chain in &chains {
        let rows: Vec<TombstoneWrite> = appended
            .iter()
            .filter(|e| e.log_id == chain.log_id && e.seq % 11 == 4)
            .map(|e| TombstoneWrite {
                seq: e.seq,
                hash: e.hash,
                body: Tombstone {
                    seq: e.seq,
                    hash: hex::encode(e.hash),
                    policy: "system".into(),
                    purged_at: "2026-06-01T00:00:00Z".into(),
                    purge_id: "purge-1".into(),
                }
                .to_body(),
            })
            .collect();
        let mut wrong_hash = rows[0].clone();
        wrong_hash.hash = [0; 32];
        let expected = rows.len();
        let mut with_wrong = rows.clone();
        with_wrong.push(TombstoneWrite {
            seq: rows[1].seq,
            ..wrong_hash
        });
        assert_eq!(pg.tombstone_events(&chain.log_id, &rows).unwrap(), expected);
        assert_eq!(
            sqlite.tombstone_events(&chain.log_id, &rows).unwrap(),
            expected
        );
        // Already replaced: the hash check still holds (the hash column is unchanged), but a
        // wrong hash replaces nothing.
        assert_eq!(
            pg.tombstone_events(&chain.log_id, &with_wrong[expected..])
                .unwrap(),
            0
        );
    }
    assert!(k > 600, "{k} events");

    let t = |s: &str| Some(micros(s));
    let mut queries: Vec<SearchQuery> = Vec::new();
    let q = SearchQuery::default;
    queries.push(q());
    for field in 0..12 {
        let mut query = q();
        let v = |s: &str| Some(s.to_owned());
        match field {
            0 => query.principal_id = v("dr-3"),
            1 => query.organization_id = v("org-2"),
            2 => query.action = v("auth.login"),
            3 => query.status = v("failure"),
            4 => query.data_classification = v("PHI"),
            5 => query.target_resource_type = v("Observation"),
            6 => query.target_resource_id = v("res-4"),
            7 => query.session_id = v("sess-2"),
            8 => query.ip_address = v("10.0.0.3"),
            9 => query.patient_id = v("pat-5"),
            10 => query.data_subject_id = v("subj-1"),
            _ => query.correlation_id = v("corr-7"),
        }
        queries.push(query);
    }
    for (action, text) in [
        ("fhir.*", None),
        ("fhir.patient.*", None),
        ("auth*", None),
        ("auth.login*", Some("chart")),
        ("nothing.*", None),
        ("*", None),
    ] {
        queries.push(SearchQuery {
            action: Some(action.into()),
            q: text.map(str::to_owned),
            ..q()
        });
    }
    for text in [
        "exported",
        "rare ward",
        "CHART",
        "cafe",
        "café naive",
        "dr-3",
        "by dr 2",
        "ward-3",
        "missing",
        "---",
        "  \u{1} ",
        "record",
        "\"quoted\" OR",
    ] {
        queries.push(SearchQuery {
            q: Some(text.into()),
            ..q()
        });
    }
    queries.extend([
        SearchQuery {
            from_micros: t("2026-01-20T00:00:00Z"),
            to_micros: t("2026-02-15T12:00:00.5005Z"),
            ..q()
        },
        SearchQuery {
            to_micros: t("2026-01-05T00:00:00Z"),
            ..q()
        },
        SearchQuery {
            from_micros: Some(micros("2026-01-12T13:46:40Z") + 91),
            to_micros: Some(micros("2026-01-12T13:46:40Z") + 900),
            ..q()
        },
        SearchQuery {
            principal_id: Some("dr-1".into()),
            q: Some("viewed".into()),
            from_micros: t("2026-01-10T00:00:00Z"),
            ..q()
        },
        SearchQuery {
            organization_id: Some("org-0".into()),
            status: Some("success".into()),
            patient_id: Some("pat-0".into()),
            ..q()
        },
        SearchQuery {
            action: Some("fhir.patient.*".into()),
            data_classification: Some("PHI".into()),
            session_id: Some("sess-1".into()),
            ..q()
        },
        SearchQuery {
            data_subject_id: Some("subj-2".into()),
            q: Some("chart".into()),
            to_micros: t("2026-03-01T00:00:00Z"),
            ..q()
        },
        SearchQuery {
            target_resource_type: Some("Patient".into()),
            target_resource_id: Some("res-3".into()),
            ip_address: Some("10.0.0.3".into()),
            ..q()
        },
        SearchQuery {
            principal_id: Some("nobody".into()),
            ..q()
        },
        SearchQuery {
            principal_id: Some("dr\u{0}1".into()),
            ..q()
        },
    ]);
    let mut compared = 0;
    for query in &queries {
        let want = all_pages(sqlite.as_ref(), query);
        let got = all_pages(&pg, query);
        assert_eq!(got, want, "{query:?}");
        compared += want.len();
        // One big page agrees too.
        let big = SearchQuery {
            limit: 1000,
            ..query.clone()
        };
        let ids = |s: &dyn AuditStore| -> Vec<uuid::Uuid> {
            s.search(&big)
                .unwrap()
                .events
                .iter()
                .map(event_id)
                .collect()
        };
        assert_eq!(ids(&pg), want, "one page: {query:?}");

        for (bucket, top) in [(TimeBucket::Hour, 3), (TimeBucket::Day, 1000)] {
            let stats_query = StatsQuery {
                filter: query.clone(),
                bucket,
                top,
            };
            assert_eq!(
                pg.stats(&stats_query).unwrap(),
                sqlite.stats(&stats_query).unwrap(),
                "stats {query:?}"
            );
        }
    }
    assert!(
        compared > 2_000,
        "the queries matched {compared} events in all"
    );

    // The log, tiles and checkpoints are the same too.
    let mut heads_pg = pg.log_heads().unwrap();
    let mut heads_sqlite = sqlite.log_heads().unwrap();
    heads_pg.sort_by(|a, b| a.log_id.cmp(&b.log_id));
    heads_sqlite.sort_by(|a, b| a.log_id.cmp(&b.log_id));
    assert_eq!(heads_pg, heads_sqlite);
    assert_eq!(pg.log_ids().unwrap(), sqlite.log_ids().unwrap());
    for chain in &chains {
        let log = &chain.log_id;
        let strip = |events: Vec<StoredEvent>| -> Vec<Stripped> {
            events
                .into_iter()
                .map(|e| (e.seq, e.canonical, e.hash, e.signature))
                .collect()
        };
        assert_eq!(
            strip(pg.scan_log(log, 0, 10_000).unwrap()),
            strip(sqlite.scan_log(log, 0, 10_000).unwrap())
        );
        assert_eq!(
            pg.list_checkpoints(log, None, 100).unwrap(),
            sqlite.list_checkpoints(log, None, 100).unwrap()
        );
        assert_eq!(
            pg.latest_checkpoint(log).unwrap(),
            sqlite.latest_checkpoint(log).unwrap()
        );
        for size in [1, 50, 200] {
            assert_eq!(
                pg.checkpoint_covering(log, size).unwrap(),
                sqlite.checkpoint_covering(log, size).unwrap()
            );
        }
        for level in 0..2u8 {
            for index in 0..3u64 {
                let key = TileKey { level, index };
                assert_eq!(
                    pg.merkle_tile(log, key).unwrap(),
                    sqlite.merkle_tile(log, key).unwrap(),
                    "{log} {key:?}"
                );
            }
        }
    }
    // A purged event is still readable by id (as its tombstone), from both.
    let purged = appended.iter().find(|e| e.seq % 11 == 4).unwrap();
    let id = uuid::Uuid::from_bytes(purged.id);
    let (a, b) = (
        pg.get_event(&id).unwrap().unwrap(),
        sqlite.get_event(&id).unwrap().unwrap(),
    );
    assert_eq!(a.canonical, b.canonical);
    assert!(Tombstone::from_body(&a.canonical).is_some());
    // Cursors of one store are refused by the other, never misread.
    let page = sqlite.search(&SearchQuery { limit: 1, ..q() }).unwrap();
    let err = pg
        .search(&SearchQuery {
            limit: 1,
            cursor: page.next_cursor,
            ..q()
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::BadCursor));
}

#[test]
fn tls_modes_when_a_tls_server_is_given() {
    // `VELLUM_TEST_PG_TLS_URL`: a server with TLS, e.g. with
    // `sslmode=verify-full&sslrootcert=/path/ca.crt`; optionally `VELLUM_TEST_PG_TLS_BAD_CA`, a
    // CA file that did not sign the server's certificate (the connection must then fail).
    let Ok(url) = std::env::var("VELLUM_TEST_PG_TLS_URL") else {
        println!("skipping: VELLUM_TEST_PG_TLS_URL not set");
        return;
    };
    // The helpers connect without TLS (this server must also accept plain connections).
    let (base, _) = url.split_once('?').unwrap_or((&url, ""));
    let schema = Schema::new(base);
    let store = PgStore::connect(&url, schema.options()).expect("TLS connect");
    store.ping().unwrap();
    let lease = store.writer_lease(&random_keys(1)).unwrap().unwrap();
    assert!(lease.log_heads().unwrap().is_empty());
    // Every session of the store (pool and lease) is encrypted.
    let plain = sql_value(
        base,
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
         WHERE application_name = 'vellum' AND NOT ssl",
    );
    assert_eq!(plain.as_deref(), Some("0"));
    lease.release();
    drop(store);
    if let Ok(bad_ca) = std::env::var("VELLUM_TEST_PG_TLS_BAD_CA") {
        let wrong = format!("{base}?sslmode=verify-ca&sslrootcert={bad_ca}");
        let err = PgStore::connect(&wrong, schema.options()).unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    }
}
