//! The group-commit writer on a real SQLite store.
//!
//! - Idempotency: a queue message (`q:<event id>` key) delivered again is recognised by its
//!   event id in the log, with no receipt row of its own, across a writer restart; clients'
//!   keys keep their receipts.
//! - Grouping: what arrives while a commit runs joins one group, sealed as it arrives.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use vellum_core::config::{RedactionConfig, ValidationConfig};
use vellum_core::integrity::HmacKeyring;
use vellum_core::pipeline::Pipeline;
use vellum_core::redact::Redactor;
use vellum_server::ingest::{CommitTap, IngestHandle, Receipt, Submission, Writer, WriterConfig};
use vellum_server::scaleout::QUEUE_KEY_PREFIX;
use vellum_store::AuditStore;
use vellum_store::sqlite::{SqliteOptions, SqliteStore};
use zeroize::Zeroizing;

fn start(dir: &std::path::Path, store: &Arc<SqliteStore>) -> (Writer, IngestHandle) {
    start_with_tap(dir, store, None)
}

fn start_with_tap(
    dir: &std::path::Path,
    store: &Arc<SqliteStore>,
    commit_tap: Option<CommitTap>,
) -> (Writer, IngestHandle) {
    let dyn_store: Arc<dyn AuditStore> = store.clone();
    let keyring = Arc::new(
        HmacKeyring::single(Zeroizing::new(
            b"idempotency-test-secret-0123456789".to_vec(),
        ))
        .expect("keyring"),
    );
    let signer = Arc::new(
        vellum_server::bootstrap::load_or_create_checkpoint_signer(
            dir,
            None,
            "vellum",
            dyn_store.as_ref(),
        )
        .expect("signer"),
    );
    Writer::start(
        dyn_store,
        Some(keyring),
        signer,
        WriterConfig {
            capacity: 1_000,
            max_batch: 100,
            log_per_organization: false,
            checkpoint_interval: Duration::from_secs(3600),
            partition: None,
            commit_tap,
        },
    )
    .expect("writer")
}

fn submission(n: u32, key: Option<String>, id: Option<uuid::Uuid>) -> Submission {
    let pipeline = Pipeline::new(
        ValidationConfig::default(),
        Redactor::new(&RedactionConfig::default(), &[3u8; 32]).expect("redactor"),
    );
    let event = json!({
        "action": "fhir.patient.read", "status": "success", "principalId": format!("dr-{n}"),
        "targetResourceType": "Patient", "targetResourceId": format!("patient-{n}"),
    });
    Submission {
        event: pipeline
            .prepare(event, 0, time::OffsetDateTime::now_utc())
            .expect("valid"),
        idempotency_key: key,
        id,
    }
}

async fn submit(handle: &IngestHandle, submissions: Vec<Submission>) -> Vec<Receipt> {
    handle
        .submit(submissions)
        .await
        .expect("queued")
        .expect("committed")
}

fn queue_key(id: uuid::Uuid) -> String {
    format!("{QUEUE_KEY_PREFIX}{id}")
}

#[tokio::test]
async fn queue_messages_are_recognised_by_event_id_and_client_keys_by_receipt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path(), SqliteOptions::default()).expect("store");
    let (writer, handle) = start(dir.path(), &store);

    let first = uuid::Uuid::now_v7();
    let twice = uuid::Uuid::now_v7();
    let receipts = submit(
        &handle,
        vec![
            submission(1, Some(queue_key(first)), Some(first)),
            // The same message twice in one group: one event.
            submission(2, Some(queue_key(twice)), Some(twice)),
            submission(2, Some(queue_key(twice)), Some(twice)),
            submission(3, Some("key-1:client".into()), None),
        ],
    )
    .await;
    assert_eq!(receipts[0].id, first.hyphenated().to_string());
    assert_eq!(receipts[1], receipts[2]);
    assert_eq!(
        receipts.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [0, 1, 1, 2]
    );

    // A queue message keeps no receipt row; a client key does.
    assert!(
        store
            .idempotent_receipts(&[&queue_key(first), &queue_key(twice)], 0)
            .expect("receipts")
            .is_empty()
    );
    assert_eq!(
        store
            .idempotent_receipts(&["key-1:client"], 0)
            .expect("receipts")
            .len(),
        1
    );

    // A new writer (nothing in flight, heads from the store) gets the messages again, as
    // after a worker died between its commit and its ack: same receipts, nothing appended.
    drop(handle);
    writer.join();
    let (writer, handle) = start(dir.path(), &store);
    let again = submit(
        &handle,
        vec![
            submission(1, Some(queue_key(first)), Some(first)),
            submission(2, Some(queue_key(twice)), Some(twice)),
            submission(3, Some("key-1:client".into()), None),
        ],
    )
    .await;
    assert_eq!(
        again,
        vec![
            receipts[0].clone(),
            receipts[1].clone(),
            receipts[3].clone()
        ]
    );
    assert!(!again[0].received_at.is_empty(), "read back from the body");

    // A `q:` key that does not name the submission's id is an ordinary key: it gets a
    // receipt row, and the next event continues the chain.
    let other = uuid::Uuid::now_v7();
    let odd_key = queue_key(uuid::Uuid::now_v7());
    let odd = submit(
        &handle,
        vec![submission(4, Some(odd_key.clone()), Some(other))],
    )
    .await;
    assert_eq!(odd[0].seq, 3);
    assert_eq!(odd[0].id, other.hyphenated().to_string());
    assert_eq!(
        store
            .idempotent_receipts(&[&odd_key], 0)
            .expect("receipts")
            .len(),
        1
    );
    assert_eq!(store.scan_log("default", 0, 100).expect("scan").len(), 4);

    drop(handle);
    writer.join();
    store.shutdown();
}

/// While a commit waits on the store (here: another connection holds SQLite's write lock),
/// requests that arrive one after the other are sealed into one open group, committed as
/// one when the store is free: two commits in all, not one per request (nor a small one
/// followed by the rest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_arriving_during_a_commit_form_one_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path(), SqliteOptions::default()).expect("store");
    let (tap, commits) = CommitTap::bounded(64);
    let (writer, handle) = start_with_tap(dir.path(), &store, Some(tap));
    let handle = Arc::new(handle);

    let blocker = rusqlite::Connection::open(dir.path().join("vellum.db")).expect("open log");
    blocker
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    let send = |n: u32| {
        let handle = handle.clone();
        tokio::spawn(async move { submit(&handle, vec![submission(n, None, None)]).await })
    };
    // The first request's commit waits for the lock.
    let first = send(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // These arrive one at a time while it waits.
    let mut later = Vec::new();
    for n in 1..=8 {
        later.push(send(n));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    blocker.execute_batch("COMMIT").expect("release the lock");

    assert_eq!(first.await.expect("task")[0].seq, 0);
    let mut seqs: Vec<u64> = Vec::new();
    for task in later {
        seqs.push(task.await.expect("task")[0].seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=8).collect::<Vec<u64>>());
    let sizes: Vec<usize> = commits.try_iter().map(|batch| batch.len()).collect();
    assert_eq!(sizes, [1, 8], "events per commit");

    drop(handle);
    writer.join();
    store.shutdown();
}
