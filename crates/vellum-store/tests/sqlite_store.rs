//! Tests of the embedded SQLite store through its public API: real files in a temporary
//! directory, events sealed by the real pipeline (so bodies are the canonical JSON the server
//! stores), reopening, rebuilding the search index, and file permissions.

#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use vellum_core::config::{RedactionConfig, ValidationConfig};
use vellum_core::integrity::{GENESIS_PREV_HASH, HmacKeyring, event_hash};
use vellum_core::pipeline::{Pipeline, Sequencing, seal, server_now};
use vellum_core::redact::Redactor;
use vellum_store::sqlite::{INDEX_FILE, LOG_FILE, SqliteOptions, SqliteStore};
use vellum_store::{
    ApiKeyRecord, AppendBatch, AuditStore, IdempotencyRecord, LogHead, NewEvent, SearchQuery,
    StoreError, StoredEvent,
};

fn options() -> SqliteOptions {
    SqliteOptions {
        // Generous: searches wait for the indexer, and the machine may be busy.
        index_wait: Duration::from_secs(60),
        ..SqliteOptions::default()
    }
}

fn open(dir: &Path) -> Arc<SqliteStore> {
    SqliteStore::open(dir, options()).expect("store opens")
}

fn pipeline() -> Pipeline {
    let redactor = Redactor::new(&RedactionConfig::default(), b"token-key").expect("redactor");
    Pipeline::new(ValidationConfig::default(), redactor)
}

/// Seals events for one log the way the server's writer does, keeping the chain head.
struct Chain {
    log_id: String,
    next_seq: u64,
    last_hash: [u8; 32],
    pipeline: Pipeline,
    keyring: HmacKeyring,
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
            keyring: HmacKeyring::single(zeroize_secret()).expect("keyring"),
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

    fn batch(&mut self, events: impl IntoIterator<Item = Value>) -> AppendBatch {
        AppendBatch {
            events: events.into_iter().map(|e| self.seal(e)).collect(),
            ..AppendBatch::default()
        }
    }
}

fn zeroize_secret() -> zeroize::Zeroizing<Vec<u8>> {
    zeroize::Zeroizing::new(b"sqlite-store-test-secret-0123456789".to_vec())
}

/// A realistic event with a given timestamp and principal.
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
        "details": {"i": i, "password": "never stored"},
    })
}

fn ts(i: usize) -> String {
    format!("2024-05-{:02}T10:00:00Z", 1 + i % 28)
}

fn query() -> SearchQuery {
    SearchQuery {
        limit: 1000,
        ..SearchQuery::default()
    }
}

fn ids(events: &[StoredEvent]) -> Vec<uuid::Uuid> {
    events.iter().map(event_id).collect()
}

fn event_id(e: &StoredEvent) -> uuid::Uuid {
    let v: Value = serde_json::from_str(&e.canonical).expect("stored JSON");
    uuid::Uuid::parse_str(v["id"].as_str().expect("id")).expect("uuid")
}

/// Checks that a stored row is exactly what was appended.
fn assert_same(stored: &StoredEvent, appended: &NewEvent) {
    assert_eq!(stored.log_id, appended.log_id);
    assert_eq!(stored.seq, appended.seq);
    assert_eq!(stored.canonical, appended.canonical);
    assert_eq!(stored.hash, appended.hash.to_vec());
    assert_eq!(
        stored.signature,
        appended.signature.map(|s| s.to_vec()),
        "signature"
    );
    assert_eq!(event_hash(&stored.canonical).to_vec(), stored.hash);
}

/// Walks every page of `q` with page size `limit`.
fn walk(store: &SqliteStore, mut q: SearchQuery, limit: usize) -> (Vec<StoredEvent>, usize) {
    q.limit = limit;
    q.cursor = None;
    let mut all = Vec::new();
    let mut pages = 0;
    loop {
        let page = store.search(&q).expect("search");
        pages += 1;
        assert!(pages < 10_000, "pagination does not terminate");
        assert_eq!(page.index_lag, 0, "the index caught up within the wait");
        match page.next_cursor {
            Some(c) => {
                assert_eq!(page.events.len(), limit, "pages before the last are full");
                all.extend(page.events);
                q.cursor = Some(c);
            }
            None => {
                assert!(
                    !page.events.is_empty() || all.is_empty(),
                    "no empty last page"
                );
                all.extend(page.events);
                return (all, pages);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn append_log_heads_scan_and_get() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    assert_eq!(store.log_heads().expect("heads"), vec![]);
    assert_eq!(store.scan_log("default", 0, 10).expect("scan"), vec![]);

    let mut default = Chain::new("default");
    let mut org = Chain::new("org-x");
    let first = default.batch((0..3).map(|i| ev(i, &ts(i), "alice")));
    store.append(&first).expect("append 1");
    // A group with two logs interleaved, as the writer produces with per-organization logs.
    let second = AppendBatch {
        events: vec![
            org.seal(ev(10, &ts(10), "bob")),
            default.seal(ev(3, &ts(3), "alice")),
            org.seal(ev(11, &ts(11), "bob")),
        ],
        idempotency: Vec::new(),
        ..AppendBatch::default()
    };
    store.append(&second).expect("append 2");
    // An empty batch is a no-op.
    store.append(&AppendBatch::default()).expect("empty append");

    let mut heads = store.log_heads().expect("heads");
    heads.sort_by(|a, b| a.log_id.cmp(&b.log_id));
    assert_eq!(
        heads,
        vec![
            LogHead {
                log_id: "default".into(),
                size: 4,
                last_hash: default.last_hash,
            },
            LogHead {
                log_id: "org-x".into(),
                size: 2,
                last_hash: org.last_hash,
            },
        ]
    );

    let appended_default: Vec<&NewEvent> = first
        .events
        .iter()
        .chain(second.events.iter().filter(|e| e.log_id == "default"))
        .collect();
    let scanned = store.scan_log("default", 0, 100).expect("scan");
    assert_eq!(scanned.len(), 4);
    for (stored, appended) in scanned.iter().zip(&appended_default) {
        assert_same(stored, appended);
    }
    // Positions grow in append order; the chain links.
    assert!(scanned.windows(2).all(|w| w[0].pos < w[1].pos));
    let mut prev = hex::encode(GENESIS_PREV_HASH);
    for e in &scanned {
        let v: Value = serde_json::from_str(&e.canonical).expect("json");
        assert_eq!(v["prevHash"], prev);
        assert_eq!(v["seq"], e.seq);
        assert_eq!(v["details"]["password"], "[REDACTED]");
        prev = hex::encode(&e.hash);
    }

    // Ranges.
    let middle = store.scan_log("default", 1, 2).expect("scan");
    assert_eq!(middle.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(store.scan_log("default", 4, 10).expect("scan"), vec![]);
    let org_events = store.scan_log("org-x", 0, 10).expect("scan");
    assert_eq!(org_events.len(), 2);
    assert_same(&org_events[0], &second.events[0]);
    assert_same(&org_events[1], &second.events[2]);
    assert_eq!(store.scan_log("nope", 0, 10).expect("scan"), vec![]);

    // By id, straight from the log.
    for appended in first.events.iter().chain(&second.events) {
        let id = uuid::Uuid::from_bytes(appended.id);
        let stored = store.get_event(&id).expect("get").expect("found");
        assert_same(&stored, appended);
    }
    assert_eq!(store.get_event(&uuid::Uuid::now_v7()).expect("get"), None);

    // Several by id at once: the ones the log holds, whatever else is asked.
    let wanted = [
        uuid::Uuid::from_bytes(second.events[2].id),
        uuid::Uuid::now_v7(),
        uuid::Uuid::from_bytes(first.events[0].id),
    ];
    let mut found = store.events_by_id(&wanted).expect("by id");
    found.sort_by_key(|e| e.pos);
    assert_eq!(found.len(), 2);
    assert_same(&found[0], &first.events[0]);
    assert_same(&found[1], &second.events[2]);
    assert_eq!(store.events_by_id(&[]).expect("none asked"), vec![]);

    // to_api_json splices hash and signature onto the stored text.
    let api: Value = serde_json::from_str(&scanned[0].to_api_json()).expect("json");
    assert_eq!(api["hash"], hex::encode(&scanned[0].hash));
    assert_eq!(
        api["signature"],
        hex::encode(scanned[0].signature.as_ref().expect("signed"))
    );
}

#[test]
fn a_failed_append_stores_nothing_of_its_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let mut chain = Chain::new("default");
    let good = chain.batch([ev(0, &ts(0), "a")]);
    store.append(&good).expect("append");

    // A batch whose second event repeats seq 0 of the log: the whole batch is refused.
    let mut bad = chain.batch([ev(1, &ts(1), "a")]);
    let mut duplicate = chain.seal(ev(2, &ts(2), "a"));
    duplicate.seq = 0;
    bad.events.push(duplicate);
    bad.idempotency.push(IdempotencyRecord {
        key: "k-bad".into(),
        receipt: "{}".into(),
        created_micros: 1,
    });
    assert!(store.append(&bad).is_err());

    assert_eq!(store.scan_log("default", 0, 10).expect("scan").len(), 1);
    assert_eq!(store.log_heads().expect("heads")[0].size, 1);
    assert_eq!(
        store
            .get_event(&uuid::Uuid::from_bytes(bad.events[0].id))
            .expect("get"),
        None
    );
    assert_eq!(
        store.idempotent_receipts(&["k-bad"], 0).expect("receipts"),
        vec![]
    );
    // Search never sees the refused rows either.
    assert_eq!(store.search(&query()).expect("search").events.len(), 1);
}

#[test]
fn reopening_keeps_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut chain = Chain::new("default");
    let batch = chain.batch((0..20).map(|i| ev(i, &ts(i), "carol")));
    let key = api_key("key-1", 7, None);
    {
        let store = open(dir.path());
        let mut with_receipt = batch.clone();
        with_receipt.idempotency.push(IdempotencyRecord {
            key: "k:1".into(),
            receipt: "{\"id\":\"r1\"}".into(),
            created_micros: 1_000,
        });
        store.append(&with_receipt).expect("append");
        store.insert_api_key(&key, &[]).expect("key");
        store.meta_set("example", "value").expect("meta");
        assert_eq!(store.search(&query()).expect("search").events.len(), 20);
        // Dropping the store shuts it down.
    }
    let store = open(dir.path());
    let heads = store.log_heads().expect("heads");
    assert_eq!(heads.len(), 1);
    assert_eq!(heads[0].size, 20);
    assert_eq!(heads[0].last_hash, chain.last_hash);
    let scanned = store.scan_log("default", 0, 100).expect("scan");
    assert_eq!(scanned.len(), 20);
    for (stored, appended) in scanned.iter().zip(&batch.events) {
        assert_same(stored, appended);
    }
    assert_eq!(
        store.idempotent_receipts(&["k:1"], 0).expect("receipts"),
        vec![("k:1".to_owned(), "{\"id\":\"r1\"}".to_owned())]
    );
    assert_eq!(store.list_api_keys().expect("keys"), vec![key.clone()]);
    assert_eq!(store.find_api_key(&key.key_hash).expect("find"), Some(key));
    assert_eq!(
        store.meta_get("example").expect("meta").as_deref(),
        Some("value")
    );
    assert_eq!(store.meta_get("missing").expect("meta"), None);
    assert_eq!(store.search(&query()).expect("search").events.len(), 20);

    // The chain continues after the reopen.
    let mut resumed = Chain::resume(&heads[0]);
    store
        .append(&resumed.batch([ev(20, &ts(20), "carol")]))
        .expect("append after reopen");
    let next = store.scan_log("default", 20, 1).expect("scan");
    let v: Value = serde_json::from_str(&next[0].canonical).expect("json");
    assert_eq!(v["prevHash"], hex::encode(chain.last_hash));
    assert_eq!(store.search(&query()).expect("search").events.len(), 21);
}

#[test]
fn index_is_rebuilt_when_index_db_is_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut chain = Chain::new("default");
    let principals = ["alice", "bob", "carol"];
    let before: Vec<uuid::Uuid>;
    let alice_before: Vec<uuid::Uuid>;
    {
        let store = open(dir.path());
        for b in 0..5 {
            let batch = chain.batch(
                (b * 12..(b + 1) * 12).map(|i| ev(i, &ts(i), principals[i % principals.len()])),
            );
            store.append(&batch).expect("append");
        }
        let (all, _) = walk(&store, query(), 1000);
        assert_eq!(all.len(), 60);
        before = ids(&all);
        alice_before = ids(&store
            .search(&SearchQuery {
                principal_id: Some("alice".into()),
                ..query()
            })
            .expect("search")
            .events);
        assert_eq!(alice_before.len(), 20);
    }
    for name in [
        INDEX_FILE.to_owned(),
        format!("{INDEX_FILE}-wal"),
        format!("{INDEX_FILE}-shm"),
    ] {
        let path = dir.path().join(name);
        if path.exists() {
            std::fs::remove_file(&path).expect("delete index file");
        }
    }
    assert!(!dir.path().join(INDEX_FILE).exists());
    assert!(dir.path().join(LOG_FILE).exists());

    let store = open(dir.path());
    let (all, _) = walk(&store, query(), 1000);
    assert_eq!(
        ids(&all),
        before,
        "the rebuilt index finds everything, same order"
    );
    let alice = store
        .search(&SearchQuery {
            principal_id: Some("alice".into()),
            ..query()
        })
        .expect("search");
    assert_eq!(ids(&alice.events), alice_before);
    let text = store
        .search(&SearchQuery {
            q: Some("ward 42".into()),
            ..query()
        })
        .expect("search");
    assert_eq!(text.events.len(), 1);
    assert!(text.events[0].canonical.contains("record number 42 viewed"));
    assert!(dir.path().join(INDEX_FILE).exists());
}

#[test]
fn index_ahead_of_the_log_is_rebuilt() {
    // An index from a bigger log next to a smaller one (a restored or replaced log).
    let big = tempfile::tempdir().expect("tempdir");
    let small = tempfile::tempdir().expect("tempdir");
    {
        let store = open(big.path());
        let mut chain = Chain::new("default");
        store
            .append(&chain.batch((0..10).map(|i| ev(i, &ts(i), "big"))))
            .expect("append");
        assert_eq!(store.search(&query()).expect("search").events.len(), 10);
    }
    let small_ids;
    {
        let store = open(small.path());
        let mut chain = Chain::new("default");
        store
            .append(&chain.batch((0..3).map(|i| ev(i, &ts(i), "small"))))
            .expect("append");
        small_ids = ids(&store.scan_log("default", 0, 10).expect("scan"));
    }
    std::fs::copy(big.path().join(INDEX_FILE), small.path().join(INDEX_FILE)).expect("copy");
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(small.path().join(format!("{INDEX_FILE}{suffix}")));
    }
    let store = open(small.path());
    let found = store.search(&query()).expect("search");
    let mut got = ids(&found.events);
    got.sort();
    let mut want = small_ids;
    want.sort();
    assert_eq!(got, want);
    assert!(
        found
            .events
            .iter()
            .all(|e| e.canonical.contains("\"small\""))
    );
}

#[test]
fn search_pages_newest_first_with_a_cursor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let mut chain = Chain::new("default");
    // 30 events over 10 distinct timestamps, appended out of timestamp order.
    let order: Vec<usize> = (0..30).map(|i| (i * 13) % 30).collect();
    let batch = chain.batch(order.iter().map(|&i| {
        ev(
            i,
            &format!("2024-06-01T00:00:{:02}.5Z", i % 10),
            if i.is_multiple_of(2) { "even" } else { "odd" },
        )
    }));
    store.append(&batch).expect("append");
    // Expected: timestamp descending, then append position descending.
    let mut expected: Vec<(usize, usize)> = order
        .iter()
        .enumerate()
        .map(|(pos, &i)| (i % 10, pos))
        .collect();
    expected.sort_by(|a, b| b.cmp(a));
    let expected: Vec<uuid::Uuid> = expected
        .iter()
        .map(|&(_, pos)| uuid::Uuid::from_bytes(batch.events[pos].id))
        .collect();

    for limit in [1, 4, 10, 29, 30, 31] {
        let (all, pages) = walk(&store, query(), limit);
        assert_eq!(ids(&all), expected, "limit {limit}");
        assert_eq!(pages, 30usize.div_ceil(limit), "limit {limit}");
        let unique: HashSet<uuid::Uuid> = ids(&all).into_iter().collect();
        assert_eq!(unique.len(), 30);
    }

    // With filters: only the matching events, still in order, across pages.
    let even = SearchQuery {
        principal_id: Some("even".into()),
        ..query()
    };
    let (all, _) = walk(&store, even, 4);
    let want: Vec<uuid::Uuid> = expected
        .iter()
        .copied()
        .filter(|id| {
            let e = store.get_event(id).expect("get").expect("found");
            e.canonical.contains("\"principalId\":\"even\"")
        })
        .collect();
    assert_eq!(want.len(), 15);
    assert_eq!(ids(&all), want);

    // Time bounds (inclusive from, exclusive to), action prefix and full text.
    let bounded = store
        .search(&SearchQuery {
            from_micros: Some(micros("2024-06-01T00:00:03.5Z")),
            to_micros: Some(micros("2024-06-01T00:00:05.5Z")),
            ..query()
        })
        .expect("search");
    assert_eq!(bounded.events.len(), 6);
    for e in &bounded.events {
        let v: Value = serde_json::from_str(&e.canonical).expect("json");
        let t = v["timestamp"].as_str().expect("ts");
        assert!(
            t == "2024-06-01T00:00:03.5Z" || t == "2024-06-01T00:00:04.5Z",
            "{t}"
        );
    }
    let prefix = store
        .search(&SearchQuery {
            action: Some("auth.*".into()),
            ..query()
        })
        .expect("search");
    assert_eq!(prefix.events.len(), 15);
    assert!(
        prefix
            .events
            .iter()
            .all(|e| e.canonical.contains("auth.login.failure"))
    );
    let none = store
        .search(&SearchQuery {
            action: Some("auth".into()),
            ..query()
        })
        .expect("search");
    assert!(none.events.is_empty());
    let text = store
        .search(&SearchQuery {
            q: Some("\"number 7\" OR".into()),
            ..query()
        })
        .expect("FTS operators in user input are literal, not syntax errors");
    assert!(text.events.is_empty());
    // A NUL cannot reach FTS5 (it used to end the query text early: a syntax error).
    let nul = store
        .search(&SearchQuery {
            q: Some("num\u{0}ber 7\u{0}".into()),
            ..query()
        })
        .expect("a NUL in the text query is not an error");
    assert_eq!(nul.events.len(), 1);
    assert!(nul.events[0].canonical.contains("record number 7 viewed"));

    // A cursor the store did not make.
    for bad in ["!!!", "eHl6", "MTox"] {
        let result = store.search(&SearchQuery {
            cursor: Some(bad.into()),
            ..query()
        });
        assert!(matches!(result, Err(StoreError::BadCursor)), "{bad}");
    }
    // "k1" decodes: a valid sort key, just an odd one (before every event here).
    let odd = store
        .search(&SearchQuery {
            cursor: Some("azE".into()),
            ..query()
        })
        .expect("a well-formed cursor");
    assert!(odd.events.is_empty());
}

fn micros(t: &str) -> i64 {
    vellum_core::time_fmt::unix_micros(vellum_core::time_fmt::parse_rfc3339(t).expect("ts"))
}

#[test]
fn idempotent_receipts_window_and_expiry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    assert_eq!(store.idempotent_receipts(&[], 0).expect("none"), vec![]);
    let mut chain = Chain::new("default");
    let mut batch = chain.batch([ev(0, &ts(0), "a")]);
    batch.idempotency = vec![
        IdempotencyRecord {
            key: "old".into(),
            receipt: "{\"r\":\"old\"}".into(),
            created_micros: 1_000,
        },
        IdempotencyRecord {
            key: "new".into(),
            receipt: "{\"r\":\"new\"}".into(),
            created_micros: 5_000,
        },
    ];
    store.append(&batch).expect("append");
    // Receipts alone (no events) are stored too.
    store
        .append(&AppendBatch {
            events: Vec::new(),
            idempotency: vec![IdempotencyRecord {
                key: "solo".into(),
                receipt: "{\"r\":\"solo\"}".into(),
                created_micros: 9_000,
            }],
            ..AppendBatch::default()
        })
        .expect("append receipts only");

    let mut all = store
        .idempotent_receipts(&["old", "new", "solo", "missing"], 0)
        .expect("receipts");
    all.sort();
    assert_eq!(
        all,
        vec![
            ("new".to_owned(), "{\"r\":\"new\"}".to_owned()),
            ("old".to_owned(), "{\"r\":\"old\"}".to_owned()),
            ("solo".to_owned(), "{\"r\":\"solo\"}".to_owned()),
        ]
    );
    // The window: created >= not_before.
    let mut recent = store
        .idempotent_receipts(&["old", "new", "solo"], 5_000)
        .expect("receipts");
    recent.sort();
    assert_eq!(
        recent.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        vec!["new", "solo"]
    );
    assert_eq!(
        store
            .idempotent_receipts(&["new"], 5_001)
            .expect("receipts"),
        vec![]
    );

    // Expiry deletes strictly older receipts.
    assert_eq!(store.expire_idempotency(5_000).expect("expire"), 1);
    assert_eq!(
        store.idempotent_receipts(&["old"], 0).expect("receipts"),
        vec![]
    );
    assert_eq!(
        store
            .idempotent_receipts(&["new"], 0)
            .expect("receipts")
            .len(),
        1
    );
    assert_eq!(store.expire_idempotency(5_000).expect("expire"), 0);
    assert_eq!(store.expire_idempotency(i64::MAX).expect("expire"), 2);
    // Expiring receipts never touches events.
    assert_eq!(store.scan_log("default", 0, 10).expect("scan").len(), 1);
}

fn api_key(id: &str, seed: u8, org: Option<&str>) -> ApiKeyRecord {
    ApiKeyRecord {
        id: id.into(),
        key_hash: [seed; 32],
        role: "reader".into(),
        organization_id: org.map(str::to_owned),
        name: Some(format!("key {id}")),
        created_at: format!("2026-01-0{}T00:00:00.000000Z", seed % 9 + 1),
        revoked_at: None,
    }
}

#[test]
fn api_keys_insert_find_list_revoke() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    assert_eq!(store.list_api_keys().expect("list"), vec![]);
    let a = api_key("key-a", 1, None);
    let b = ApiKeyRecord {
        role: "ingest".into(),
        ..api_key("key-b", 2, Some("org-9"))
    };
    store.insert_api_key(&b, &[]).expect("insert b");
    store.insert_api_key(&a, &[]).expect("insert a");
    // Listed by creation time.
    assert_eq!(
        store.list_api_keys().expect("list"),
        vec![a.clone(), b.clone()]
    );
    assert_eq!(store.find_api_key(&[1; 32]).expect("find"), Some(a.clone()));
    assert_eq!(store.find_api_key(&[2; 32]).expect("find"), Some(b.clone()));
    assert_eq!(store.find_api_key(&[3; 32]).expect("find"), None);

    // Ids and hashes are unique.
    assert!(
        store
            .insert_api_key(&api_key("key-a", 4, None), &[])
            .is_err()
    );
    assert!(
        store
            .insert_api_key(&api_key("key-c", 1, None), &[])
            .is_err()
    );
    assert_eq!(store.list_api_keys().expect("list").len(), 2);

    // Revocation: once, keeps the record, is visible to find.
    assert!(
        store
            .revoke_api_key("key-a", "2026-02-01T00:00:00Z", &[])
            .expect("revoke")
    );
    assert!(
        !store
            .revoke_api_key("key-a", "2026-03-01T00:00:00Z", &[])
            .expect("revoke again")
    );
    assert!(
        !store
            .revoke_api_key("key-zzz", "2026-03-01T00:00:00Z", &[])
            .expect("revoke unknown")
    );
    let found = store
        .find_api_key(&[1; 32])
        .expect("find")
        .expect("still there");
    assert_eq!(found.revoked_at.as_deref(), Some("2026-02-01T00:00:00Z"));
    assert_eq!(store.find_api_key(&[2; 32]).expect("find"), Some(b));
    assert_eq!(store.list_api_keys().expect("list").len(), 2);
}

#[cfg(unix)]
#[test]
fn files_and_directory_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;

    let parent = tempfile::tempdir().expect("tempdir");
    // A directory that is readable by others is tightened; a missing one is created private.
    let existing = parent.path().join("existing");
    std::fs::create_dir(&existing).expect("mkdir");
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let missing = parent.path().join("missing").join("nested");

    for dir in [existing, missing] {
        let store = open(&dir);
        let mut chain = Chain::new("default");
        store
            .append(&chain.batch((0..3).map(|i| ev(i, &ts(i), "p"))))
            .expect("append");
        assert_eq!(store.search(&query()).expect("search").events.len(), 3);
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        for name in [LOG_FILE, INDEX_FILE] {
            assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
        }
        // SQLite's side files must not be wider than the database files.
        for name in [
            "vellum.db-wal",
            "vellum.db-shm",
            "index.db-wal",
            "index.db-shm",
        ] {
            let path = dir.join(name);
            if path.exists() {
                assert_eq!(mode(&path) & 0o077, 0, "{name} is private");
            }
        }
        drop(store);
        // Reopening does not loosen anything.
        let store = open(&dir);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(LOG_FILE)), 0o600);
        assert_eq!(mode(&dir.join(INDEX_FILE)), 0o600);
        drop(store);
    }
}

#[test]
fn concurrent_reads_while_appending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let mut chain = Chain::new("default");
    let batches: Vec<AppendBatch> = (0..10)
        .map(|b| chain.batch((b * 10..b * 10 + 10).map(|i| ev(i, &ts(i), "r"))))
        .collect();
    let reader = {
        let store = store.clone();
        std::thread::spawn(move || {
            let mut last = 0;
            for _ in 0..50 {
                // A search sees a prefix of the log: never fewer rows than before.
                let n = store.search(&query()).expect("search").events.len();
                assert!(n >= last && n.is_multiple_of(10), "{n} after {last}");
                last = n;
                let scanned = store.scan_log("default", 0, 1000).expect("scan");
                assert!(scanned.len() >= n && scanned.len().is_multiple_of(10));
            }
        })
    };
    for batch in &batches {
        store.append(batch).expect("append");
    }
    reader.join().expect("reader thread");
    assert_eq!(store.search(&query()).expect("search").events.len(), 100);
    assert_eq!(store.log_heads().expect("heads")[0].size, 100);
}
