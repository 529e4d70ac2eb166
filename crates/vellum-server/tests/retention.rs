//! Retention with a fake clock (SPEC §7, issue 5): a real SQLite store and the real writer;
//! the purge is run "years later" by passing its clock. Expired events become tombstones, a
//! legal hold keeps its events, the purge records are in the log, `verify` stays green, and a
//! tombstone made by hand (without a purge record) is reported. Over HTTP: policies, holds and
//! a dry run, with their audit events.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use vellum_core::config::{RedactionConfig, ValidationConfig};
use vellum_core::integrity::HmacKeyring;
use vellum_core::pipeline::Pipeline;
use vellum_core::redact::Redactor;
use vellum_core::retention::{RetentionPolicies, Tombstone};
use vellum_server::ingest::{IngestHandle, Submission, Writer, WriterConfig};
use vellum_server::keys::Actor;
use vellum_server::verification::{VerifyOptions, verify_store};
use vellum_store::sqlite::{SqliteOptions, SqliteStore};
use vellum_store::{AuditStore, LegalHoldRecord, TombstoneWrite};
use zeroize::Zeroizing;

struct Rig {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    keyring: Arc<HmacKeyring>,
    pipeline: Pipeline,
    handle: Option<IngestHandle>,
    writer: Option<Writer>,
}

impl Rig {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).expect("store");
        let dyn_store: Arc<dyn AuditStore> = store.clone();
        let keyring = Arc::new(
            HmacKeyring::single(Zeroizing::new(b"retention-test-secret-0123456789".to_vec()))
                .expect("keyring"),
        );
        let signer = Arc::new(
            vellum_server::bootstrap::load_or_create_checkpoint_signer(
                dir.path(),
                None,
                "vellum",
                dyn_store.as_ref(),
            )
            .expect("signer"),
        );
        let token_key = keyring.derive("redaction-token");
        let pipeline = Pipeline::new(
            ValidationConfig::default(),
            Redactor::new(&RedactionConfig::default(), &token_key).expect("redactor"),
        );
        let (writer, handle) = Writer::start(
            dyn_store,
            Some(keyring.clone()),
            signer,
            WriterConfig {
                capacity: 10_000,
                max_batch: 1_000,
                log_per_organization: false,
                checkpoint_interval: Duration::from_millis(1),
                partition: None,
                commit_tap: None,
            },
        )
        .expect("writer");
        Self {
            _dir: dir,
            store,
            keyring,
            pipeline,
            handle: Some(handle),
            writer: Some(writer),
        }
    }

    fn dyn_store(&self) -> Arc<dyn AuditStore> {
        self.store.clone()
    }

    async fn ingest(&self, events: Vec<Value>) {
        let submissions = events
            .into_iter()
            .map(|e| Submission {
                event: self
                    .pipeline
                    .prepare(e, 0, time::OffsetDateTime::now_utc())
                    .expect("valid"),
                idempotency_key: None,
                id: None,
            })
            .collect();
        self.handle
            .as_ref()
            .expect("running")
            .submit(submissions)
            .await
            .expect("queued")
            .expect("committed");
    }

    fn verify(&self) -> vellum_server::verification::VerifyReport {
        let keys = vellum_server::verification::known_keys(self.store.as_ref(), &[]).expect("keys");
        verify_store(
            self.store.as_ref(),
            Some(&self.keyring),
            &keys,
            &VerifyOptions {
                require_signatures: true,
                ..VerifyOptions::default()
            },
            |_| {},
        )
        .expect("verify runs")
    }

    fn bodies(&self) -> Vec<String> {
        self.store
            .scan_log("default", 0, 10_000)
            .expect("scan")
            .into_iter()
            .map(|e| e.canonical)
            .collect()
    }

    fn stop(mut self) {
        drop(self.handle.take());
        if let Some(w) = self.writer.take() {
            w.join();
        }
        self.store.shutdown();
    }
}

fn event(policy: &str, patient: &str, n: u32) -> Value {
    json!({
        "action": "fhir.patient.read", "status": "success", "principalId": format!("dr-{n}"),
        "organizationId": "org-a", "dataClassification": "PHI", "retentionPolicy": policy,
        "healthcareContext": {"patientId": patient},
        "outcomeDescription": format!("purge-probe number{n}"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_with_a_fake_clock_tombstones_respects_holds_and_verifies() {
    let rig = Rig::new();
    // seq 0-3: one-year policy, patient p-1 (to purge); 4-5: one-year, p-hold (held);
    // 6-7: six-year HIPAA policy (not expired after 400 days).
    let mut events = Vec::new();
    for n in 0..4 {
        events.push(event("system", "p-1", n));
    }
    for n in 4..6 {
        events.push(event("system", "p-hold", n));
    }
    for n in 6..8 {
        events.push(event("hipaa-6-years", "p-1", n));
    }
    rig.ingest(events).await;
    rig.store
        .insert_legal_hold(
            &LegalHoldRecord {
                id: "case-7".into(),
                reason: "litigation".into(),
                organization_id: None,
                principal_id: None,
                patient_id: Some("p-hold".into()),
                data_subject_id: None,
                created_at: "2026-01-01T00:00:00Z".into(),
                created_by: "test".into(),
                released_at: None,
                released_by: None,
            },
            &[],
        )
        .expect("hold");
    let policies = RetentionPolicies::default();
    let actor = Actor::cli("test");
    let later = time::OffsetDateTime::now_utc() + time::Duration::days(400);
    let store = rig.dyn_store();
    let handle = rig.handle.clone().expect("handle");

    // Dry run: reports, changes nothing.
    let dry = vellum_server::retention::purge(
        &store,
        &rig.pipeline,
        &handle,
        &policies,
        later,
        true,
        &actor,
    )
    .await
    .expect("dry run");
    assert_eq!((dry.expired, dry.held, dry.purged), (6, 2, 0), "{dry:?}");
    assert_eq!(dry.by_policy.get("system"), Some(&4));
    assert!(
        rig.bodies()
            .iter()
            .all(|b| Tombstone::from_body(b).is_none())
    );
    // Now: nothing has expired yet.
    let today = vellum_server::retention::purge(
        &store,
        &rig.pipeline,
        &handle,
        &policies,
        time::OffsetDateTime::now_utc(),
        false,
        &actor,
    )
    .await
    .expect("today");
    assert_eq!((today.expired, today.purged), (0, 0), "{today:?}");

    // The real purge, 400 days on.
    let report = vellum_server::retention::purge(
        &store,
        &rig.pipeline,
        &handle,
        &policies,
        later,
        false,
        &actor,
    )
    .await
    .expect("purge");
    assert_eq!(
        (report.expired, report.held, report.purged),
        (6, 2, 4),
        "{report:?}"
    );
    assert_eq!(report.purge_ids.len(), 1);
    let bodies = rig.bodies();
    for (seq, body) in bodies.iter().enumerate().take(8) {
        let tomb = Tombstone::from_body(body);
        if seq < 4 {
            let tomb = tomb.expect("purged");
            assert_eq!(tomb.seq, seq as u64);
            assert_eq!(tomb.policy, "system");
            assert_eq!(tomb.purge_id, report.purge_ids[0]);
            assert!(!body.contains("purge-probe"), "content is gone");
        } else {
            assert!(tomb.is_none(), "seq {seq} must be kept");
        }
    }
    // The purge record is in the log, signed and chained after the events.
    let records: Vec<Value> = bodies
        .iter()
        .filter_map(|b| serde_json::from_str::<Value>(b).ok())
        .filter(|e| e["action"] == "retention.purge")
        .collect();
    assert_eq!(
        records.len(),
        1,
        "one purge, one record: {records:?} {report:?}"
    );
    let record = &records[0];
    assert_eq!(record["details"]["count"], 4);
    assert_eq!(record["details"]["purgeId"], report.purge_ids[0].as_str());
    // Chain, tree, checkpoints and every signature still verify.
    let verified = rig.verify();
    assert!(verified.ok, "{:?}", verified.logs);
    // A second run finds nothing more (held events stay held).
    let again = vellum_server::retention::purge(
        &store,
        &rig.pipeline,
        &handle,
        &policies,
        later,
        false,
        &actor,
    )
    .await
    .expect("again");
    assert_eq!((again.expired, again.purged), (2, 0), "{again:?}");
    // Releasing the hold lets them go.
    assert!(
        rig.store
            .release_legal_hold("case-7", "2027-01-01T00:00:00Z", "test", &[])
            .expect("release")
    );
    let released = vellum_server::retention::purge(
        &store,
        &rig.pipeline,
        &handle,
        &policies,
        later,
        false,
        &actor,
    )
    .await
    .expect("after release");
    assert_eq!(released.purged, 2, "{released:?}");
    assert!(rig.verify().ok);

    // A tombstone made by hand (no purge record accounts for it) is reported.
    let victim = rig.store.scan_log("default", 6, 1).expect("scan").remove(0);
    let hash: [u8; 32] = victim.hash.as_slice().try_into().expect("32 bytes");
    let forged = Tombstone {
        seq: 6,
        hash: hex::encode(hash),
        policy: "system".into(),
        purged_at: "2027-01-01T00:00:00Z".into(),
        purge_id: report.purge_ids[0].clone(),
    };
    rig.store
        .tombstone_events(
            "default",
            &[TombstoneWrite {
                seq: 6,
                hash,
                body: forged.to_body(),
            }],
        )
        .expect("forge");
    let verified = rig.verify();
    assert!(!verified.ok, "a hand-made tombstone passed verification");
    let failures = serde_json::to_string(&verified.logs).expect("json");
    assert!(failures.contains("unaccountedPurge"), "{failures}");
    drop(handle);
    rig.stop();
}

/// A client (any ingest key) cannot write a purge record that would excuse a tombstone: the
/// `purge` member is refused, and a `retention.purge` event with the facts in `details` does
/// not account for anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_forge_a_purge_record() {
    let rig = Rig::new();
    rig.ingest(vec![event("system", "p-1", 0)]).await;
    let refused = rig.pipeline.prepare(
        json!({"action": "retention.purge", "status": "success",
               "purge": {"purgeId": "x", "count": 1, "digest": "00"}}),
        0,
        time::OffsetDateTime::now_utc(),
    );
    let errors = refused.expect_err("a server field");
    assert_eq!(errors[0].path, "/purge", "{errors:?}");

    let victim = rig.store.scan_log("default", 0, 1).expect("scan").remove(0);
    let hash: [u8; 32] = victim.hash.as_slice().try_into().expect("32 bytes");
    let mut digest = vellum_core::retention::PurgeDigest::default();
    digest.add(0, &hash);
    rig.ingest(vec![json!({
        "action": "retention.purge", "status": "success",
        "details": {"purgeId": "forged-1", "count": 1, "digest": digest.finish()},
    })])
    .await;
    let tombstone = Tombstone {
        seq: 0,
        hash: hex::encode(hash),
        policy: "system".into(),
        purged_at: "2027-01-01T00:00:00Z".into(),
        purge_id: "forged-1".into(),
    };
    rig.store
        .tombstone_events(
            "default",
            &[TombstoneWrite {
                seq: 0,
                hash,
                body: tombstone.to_body(),
            }],
        )
        .expect("forge");
    let verified = rig.verify();
    assert!(
        !verified.ok,
        "a client-written purge record excused a tombstone"
    );
    let failures = serde_json::to_string(&verified.logs).expect("json");
    assert!(failures.contains("unaccountedPurge"), "{failures}");
    rig.stop();
}
