//! Webhook sink end to end: events posted over HTTP to a real Vellum server are forwarded from
//! its store to a real HTTP receiver on 127.0.0.1 that checks every signature. Also: retries
//! across 503s keep order with no gap and no duplicate, a permanently refused event is parked
//! as a dead letter while the others go through, a restart resumes from the persisted
//! cursor, filters and tombstones are skipped, and configuration errors name their field.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use vellum_core::forward::webhook::{SIGNATURE_HEADER, verify_signature};
use vellum_forward::{Forwarder, SinkConfig, SinkFilter, SinkKind, dead_letters};

const HOOK_SECRET: &str = "whsec-test-8f1e2d3c4b5a69788796a5b4";

fn webhook(name: &str, url: &str, batch_size: usize) -> SinkConfig {
    let mut sink = quick(SinkConfig::new(
        name,
        SinkKind::Webhook {
            url: format!("{url}/hook"),
            secret_env: "HOOK_SECRET".into(),
            ca_file: None,
        },
    ));
    sink.batch_size = batch_size;
    sink
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// 200 when the signature verifies (and the request is well formed), 401 otherwise.
fn verifying() -> Answer {
    Arc::new(|r: &Received| {
        let body = std::str::from_utf8(&r.body).unwrap_or("");
        let signature = r.header(SIGNATURE_HEADER).unwrap_or("");
        let ok = r.path == "/hook"
            && r.header("content-type") == Some("application/json")
            && verify_signature(HOOK_SECRET.as_bytes(), signature, body, now(), 300).is_ok();
        (if ok { 200 } else { 401 }, vec![], String::new())
    })
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_delivers_every_event_signed_and_in_order() {
    let server = Server::start().await;
    server.post_n("signed", 230).await;
    let receiver = Receiver::start(verifying()).await;
    let forwarder = start_forwarder(
        server.store(),
        vec![webhook("hook", &receiver.url, 100)],
        &[("HOOK_SECRET", HOOK_SECRET)],
    );
    let want = server.stored().await;
    assert!(want.len() >= 230);
    wait_for(
        "every event at the webhook",
        Duration::from_secs(60),
        || webhook_events(&receiver.accepted()).len() >= want.len(),
    )
    .await;
    let requests = receiver.requests();
    assert!(
        requests.iter().all(|r| r.status == 200),
        "a signature did not verify"
    );
    let got = webhook_events(&requests);
    assert_same_events(&got[..want.len()], &want);
    assert_eq!(seqs(&got), (0..got.len() as u64).collect::<Vec<_>>());
    assert!(
        requests
            .iter()
            .all(|r| r.json()["events"].as_array().unwrap().len() <= 100)
    );

    let status = status(&forwarder, "hook");
    assert_eq!(status.kind, "webhook");
    assert!(status.delivered >= want.len() as u64);
    assert_eq!(status.dead_letters, 0);
    assert!(status.connected && status.running && status.is_healthy());
    let shown = format!("{status:?} {forwarder:?}");
    assert!(!shown.contains(HOOK_SECRET));
    forwarder.stop().await;

    let cursor: Value = serde_json::from_str(
        &server
            .store
            .as_ref()
            .meta_get_for_test("forward.hook.cursor"),
    )
    .unwrap();
    assert_eq!(cursor["default"].as_u64().unwrap(), got.len() as u64);
    server.stop().await;
}

/// `meta_get` through the trait, for brevity.
trait MetaForTest {
    fn meta_get_for_test(&self, key: &str) -> String;
}

impl MetaForTest for vellum_store::sqlite::SqliteStore {
    fn meta_get_for_test(&self, key: &str) -> String {
        vellum_store::AuditStore::meta_get(self, key)
            .unwrap()
            .unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_retries_through_503_without_gap_or_duplicate() {
    let server = Server::start().await;
    server.post_n("first", 60).await;
    // The first 6 requests get 503 without being processed (one with Retry-After), then the
    // receiver recovers; more events arrive while the forwarder is retrying.
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let receiver = Receiver::start(Arc::new(move |_r: &Received| {
        match counter.fetch_add(1, Ordering::SeqCst) {
            0 => (503, vec![("retry-after".into(), "1".into())], "busy".into()),
            1..=5 => (503, vec![], "busy".into()),
            _ => (200, vec![], String::new()),
        }
    }))
    .await;
    let forwarder = start_forwarder(
        server.store(),
        vec![webhook("retry", &receiver.url, 25)],
        &[("HOOK_SECRET", HOOK_SECRET)],
    );
    wait_for("a few 503s", Duration::from_secs(30), || {
        calls.load(Ordering::SeqCst) >= 3
    })
    .await;
    let during = status(&forwarder, "retry");
    assert!(during.consecutive_failures >= 1 && !during.is_healthy());
    assert!(during.last_error.as_deref().unwrap_or("").contains("503"));
    server.post_n("during", 90).await;
    let want = server.stored().await;
    wait_for(
        "every event after the 503s",
        Duration::from_secs(60),
        || webhook_events(&receiver.accepted()).len() >= want.len(),
    )
    .await;
    let got = webhook_events(&receiver.accepted());
    assert_same_events(&got[..want.len()], &want);
    assert_eq!(
        seqs(&got),
        (0..got.len() as u64).collect::<Vec<_>>(),
        "a gap or a duplicate"
    );
    let refused: Vec<Received> = receiver
        .requests()
        .into_iter()
        .filter(|r| r.status == 503)
        .collect();
    assert_eq!(refused.len(), 6);
    // Every 503 was for the very first batch: the cursor did not move past it.
    for r in &refused {
        assert_eq!(seqs(r.json()["events"].as_array().unwrap())[0], 0);
    }
    let after = status(&forwarder, "retry");
    assert!(after.retries >= 6, "{after:?}");
    assert!(after.is_healthy());
    forwarder.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_refused_event_becomes_a_dead_letter() {
    let server = Server::start().await;
    let receipts = server.post_n("poison", 40).await;
    let poison_id = receipts[17]["id"].as_str().unwrap().to_owned();
    let poison_seq = receipts[17]["seq"].as_u64().unwrap();
    let needle = poison_id.clone();
    let receiver = Receiver::start(Arc::new(move |r: &Received| {
        if std::str::from_utf8(&r.body).unwrap().contains(&needle) {
            (
                400,
                vec![],
                format!("{{\"error\":\"event {needle} refused\"}}"),
            )
        } else {
            (200, vec![], String::new())
        }
    }))
    .await;
    let forwarder = start_forwarder(
        server.store(),
        vec![webhook("dlq", &receiver.url, 16)],
        &[("HOOK_SECRET", HOOK_SECRET)],
    );
    let want: Vec<Value> = server
        .stored()
        .await
        .into_iter()
        .filter(|e| e["id"] != poison_id.as_str())
        .collect();
    wait_for("the other events", Duration::from_secs(60), || {
        webhook_events(&receiver.accepted()).len() >= want.len()
    })
    .await;
    wait_for("the dead letter", Duration::from_secs(10), || {
        status(&forwarder, "dlq").dead_letters == 1
    })
    .await;
    let got = webhook_events(&receiver.accepted());
    assert_same_events(&got[..want.len()], &want);
    let ids: HashSet<&str> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), got.len(), "an event was delivered twice");

    let dead = dead_letters(server.store.as_ref(), "dlq").unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].event_id.as_deref(), Some(poison_id.as_str()));
    assert_eq!(dead[0].seq, poison_seq);
    assert_eq!(dead[0].log_id, "default");
    assert!(dead[0].reason.starts_with("HTTP 400"), "{}", dead[0].reason);
    assert!(dead[0].reason.contains("refused"), "{}", dead[0].reason);
    forwarder.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_the_persisted_cursor() {
    let server = Server::start().await;
    server.post_n("before", 300).await;
    // A slow receiver, so the stop lands mid-stream.
    let receiver = Receiver::start(Arc::new(|_r: &Received| {
        std::thread::sleep(Duration::from_millis(15));
        (200, vec![], String::new())
    }))
    .await;
    let sink = webhook("resume", &receiver.url, 10);
    let forwarder = start_forwarder(
        server.store(),
        vec![sink.clone()],
        &[("HOOK_SECRET", HOOK_SECRET)],
    );
    wait_for("part of the backlog", Duration::from_secs(60), || {
        webhook_events(&receiver.accepted()).len() >= 50
    })
    .await;
    forwarder.stop().await;
    let first = webhook_events(&receiver.accepted());
    let want = server.stored().await;
    assert!(
        first.len() < want.len(),
        "stopped too late to test a resume"
    );
    let cursor: Value =
        serde_json::from_str(&server.store.meta_get_for_test("forward.resume.cursor")).unwrap();
    assert_eq!(
        cursor["default"].as_u64().unwrap(),
        first.len() as u64,
        "the stop persisted exactly what was delivered"
    );

    server.post_n("after", 40).await;
    let forwarder = start_forwarder(server.store(), vec![sink], &[("HOOK_SECRET", HOOK_SECRET)]);
    let want = server.stored().await;
    wait_for(
        "the rest after the restart",
        Duration::from_secs(90),
        || webhook_events(&receiver.accepted()).len() >= want.len(),
    )
    .await;
    let got = webhook_events(&receiver.accepted());
    assert_same_events(&got[..want.len()], &want);
    assert_eq!(
        seqs(&got),
        (0..got.len() as u64).collect::<Vec<_>>(),
        "an event was delivered twice or skipped"
    );
    forwarder.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_events_and_tombstones_are_skipped_and_the_cursor_still_advances() {
    let server = Server::start().await;
    let receipts = server.post_n("filter", 40).await;
    // Purge one matching event the way retention does: its content becomes a tombstone.
    let purged = receipts
        .iter()
        .find(|r| r["seq"].as_u64().unwrap() > 3)
        .unwrap();
    let purged_seq = purged["seq"].as_u64().unwrap();
    let hash: [u8; 32] = hex::decode(purged["hash"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let body = vellum_core::retention::Tombstone {
        seq: purged_seq,
        hash: purged["hash"].as_str().unwrap().to_owned(),
        policy: "test".into(),
        purged_at: "2026-01-01T00:00:00Z".into(),
        purge_id: "purge-1".into(),
    }
    .to_body();
    let replaced = vellum_store::AuditStore::tombstone_events(
        server.store.as_ref(),
        "default",
        &[vellum_store::TombstoneWrite {
            seq: purged_seq,
            hash,
            body,
        }],
    )
    .unwrap();
    assert_eq!(replaced, 1);

    let receiver = Receiver::start(verifying()).await;
    let mut sink = webhook("phi-only", &receiver.url, 7);
    sink.filter = SinkFilter {
        classifications: vec!["PHI".into()],
        ..SinkFilter::default()
    };
    let forwarder = start_forwarder(server.store(), vec![sink], &[("HOOK_SECRET", HOOK_SECRET)]);
    let all = server.stored().await;
    let want: Vec<Value> = all
        .iter()
        .filter(|e| e["dataClassification"] == "PHI")
        .cloned()
        .collect();
    assert!(want.len() >= 10);
    let head = all.last().unwrap()["seq"].as_u64().unwrap() + 1;
    wait_for("the cursor at the head", Duration::from_secs(60), || {
        status(&forwarder, "phi-only").cursor.get("default") == Some(&head)
    })
    .await;
    let got = webhook_events(&receiver.accepted());
    assert_same_events(&got, &want);
    assert!(got.iter().all(|e| e["seq"] != purged_seq));
    forwarder.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn configuration_errors_name_the_field_and_never_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn vellum_store::AuditStore> =
        vellum_store::sqlite::SqliteStore::open(dir.path(), Default::default()).unwrap();
    let good = webhook("good", "http://127.0.0.1:9", 10);
    let missing = webhook("missing", "http://127.0.0.1:9", 10);
    let err = Forwarder::start_with_secrets(
        store.clone(),
        vec![good.clone(), missing],
        "h".into(),
        &|name| (name == "OTHER").then(|| zeroize::Zeroizing::new("x".into())),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "forward.sinks[0].secretEnv: environment variable HOOK_SECRET is not set (or not UTF-8)"
    );
    let mut bad = good.clone();
    bad.batch_size = 0;
    let err = Forwarder::start(store.clone(), vec![good.clone(), bad], "h".into())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("forward.sinks[1].batchSize: "), "{err}");

    let text = r#"
        [[sinks]]
        name = "siem"
        type = "splunk"
        url = "http://127.0.0.1:9"
        tokenEnv = "SPLUNK_TOKEN"
        index = "audit"
        filter = { alertsOnly = true }
    "#;
    #[derive(serde::Deserialize)]
    struct Forward {
        sinks: Vec<SinkConfig>,
    }
    let parsed: Forward = toml::from_str(text).unwrap();
    vellum_forward::validate_sinks(&parsed.sinks).unwrap();
    let forwarder = Forwarder::start_with_secrets(store, parsed.sinks, "h".into(), &|_| {
        Some(zeroize::Zeroizing::new("hec-token-value".into()))
    })
    .unwrap();
    assert!(!format!("{forwarder:?}").contains("hec-token-value"));
    forwarder.stop().await;
}
