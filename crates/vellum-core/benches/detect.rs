//! Per-event CPU cost of detection: `Engine::observe` with every rule on over a realistic mix
//! (10 000 principals in 50 organizations, 5 % PHI, 1 % failed logins, 0.2 % exports, most
//! events from the principal's usual address and some from anywhere), in steady state (windows,
//! histories and sources already populated), and `ObservedEvent::from_stored` on a typical
//! stored event. Run with `cargo bench -p vellum-core --bench detect`.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use std::hint::black_box;
use std::time::{Duration, Instant};
use vellum_core::detect::{DetectionConfig, Engine, ObservedEvent};

const PRINCIPALS: u64 = 10_000;
const ORGS: u64 = 50;
const EVENTS: usize = 200_000;
/// One event per millisecond of event time.
const STEP_MICROS: i64 = 1_000;
/// 2026-11-23T10:00:00Z, a Monday morning (working hours).
const START: i64 = 1_795_392_000_000_000 + 10 * 3_600_000_000;

/// xorshift64*, so the mix is the same on every run without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn mix() -> Vec<ObservedEvent> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..EVENTS)
        .map(|i| {
            let principal = rng.below(PRINCIPALS);
            let roll = rng.below(1_000);
            let at = START + i as i64 * STEP_MICROS;
            let (action, status, phi) = match roll {
                0..=9 => ("auth.login.failure", "failure", false),
                10..=59 => ("fhir.patient.read", "success", true),
                60..=61 => ("fhir.patient.export", "success", true),
                62..=99 => ("auth.login.success", "success", false),
                _ => ("fhir.schedule.read", "success", false),
            };
            let ip = if rng.below(100) < 3 {
                format!("198.51.{}.{}", rng.below(256), rng.below(256))
            } else {
                format!(
                    "10.{}.{}.{}",
                    principal / 65_536,
                    (principal / 256) % 256,
                    principal % 256
                )
            };
            let description = format!("{action} by user-{principal}");
            ObservedEvent {
                id: format!("0190f5e2-{:04x}-7000-8000-{:012x}", i % 65_536, i),
                log_id: "default".into(),
                seq: i as u64,
                action: action.into(),
                status: status.into(),
                principal_id: Some(format!("user-{principal}")),
                organization_id: Some(format!("org-{}", principal % ORGS)),
                classification: Some(if phi { "PHI" } else { "INTERNAL" }.into()),
                occurred_micros: at,
                received_micros: at + 500,
                ip_address: Some(ip),
                country: Some(if rng.below(200) == 0 { "BR" } else { "PT" }.into()),
                emergency_access: rng.below(2_000) == 0,
                clinical_justification: None,
                record_count: if roll == 60 || roll == 61 {
                    1 + rng.below(500)
                } else {
                    1
                },
                redactions: Vec::new(),
                free_text: vec![("/outcomeDescription".into(), description)],
                injection: Vec::new(),
            }
        })
        .collect()
}

fn stored_event() -> Value {
    json!({
        "id": "0190f5e2-1c2d-7000-8000-0123456789ab", "logId": "default", "seq": 123_456,
        "receivedAt": "2026-11-23T09:01:02.123456Z", "prevHash": "0".repeat(64),
        "hash": "1".repeat(64), "keyId": "default", "signature": "2".repeat(64),
        "action": "fhir.observation.read", "status": "success", "timestamp": "2026-11-23T09:01:02.100000Z",
        "principalId": "dr-417", "principalType": "professional", "organizationId": "org-7",
        "targetResourceType": "Observation", "targetResourceId": "observation-88123",
        "outcomeDescription": "dr-417 performed fhir.observation.read on Observation for patient-004211 during routine care, request 1",
        "dataClassification": "PHI", "severity": "low", "retentionPolicy": "hipaa-6-years", "eventVersion": "1.0",
        "correlationId": "corr-9f1c2a7d55e01b3a",
        "sessionContext": {"sessionId": "sess-0a1b2c3d4e5f", "ipAddress": "10.1.2.3",
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) EHRClient/4.2",
            "deviceId": "ws-77"},
        "healthcareContext": {"patientId": "patient-004211", "clinicId": "clinic-3", "departmentId": "cardiology",
            "emergencyAccess": false,
            "clinicalJustification": "Continuity of care: reviewing latest results before the scheduled consultation"},
        "technicalContext": {"endpoint": "/fhir/R4/Observation/88123", "httpMethod": "GET", "statusCode": 200,
            "durationMs": 37, "requestId": "req-00ff00ff00ff00ff"},
        "details": {"application": "ehr-frontend", "version": "4.2.1", "fields": ["name", "birthDate", "address", "telecom"],
            "note": "Patient SSN tok:0123456789abcdef and card tok:fedcba9876543210 were mentioned on the phone"},
        "redactions": ["/details/note"]
    })
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("detect");
    group.throughput(Throughput::Elements(1));

    let mut events = mix();
    let span = EVENTS as i64 * STEP_MICROS;
    let mut engine = Engine::new(DetectionConfig::default());
    // Steady state: one pass populates windows, histories and sources.
    let mut alerts = std::collections::BTreeMap::new();
    for e in &events {
        for alert in engine.observe(e) {
            *alerts.entry(alert.rule.as_str()).or_insert(0usize) += 1;
        }
    }
    eprintln!(
        "warm-up: {} events, alerts {alerts:?}, {} tracked keys",
        events.len(),
        engine.tracked_keys()
    );
    let mut seq = events.len() as u64;
    let mut cursor = 0usize;
    group.bench_function("observe/all_rules_mix", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                if cursor == events.len() {
                    // Next pass: later in time, later in the log.
                    for e in &mut events {
                        e.occurred_micros += span;
                        e.received_micros += span;
                    }
                    cursor = 0;
                }
                let n = left.min((events.len() - cursor) as u64) as usize;
                for e in &mut events[cursor..cursor + n] {
                    e.seq = seq;
                    seq += 1;
                }
                let start = Instant::now();
                for e in &events[cursor..cursor + n] {
                    black_box(engine.observe(black_box(e)));
                }
                spent += start.elapsed();
                cursor += n;
                left -= n as u64;
            }
            spent
        })
    });
    group.bench_function("observe/replayed_event", |b| {
        let e = &events[0];
        b.iter(|| black_box(engine.observe(black_box(e))))
    });

    let stored = stored_event();
    group.bench_function("from_stored/typical", |b| {
        b.iter(|| ObservedEvent::from_stored(black_box(&stored)))
    });
    let small = json!({
        "id": "0190f5e2-1c2d-7000-8000-0123456789ab", "logId": "default", "seq": 7,
        "receivedAt": "2026-11-23T09:01:02.123456Z", "prevHash": "0".repeat(64), "hash": "1".repeat(64),
        "action": "auth.login.failure", "status": "failure", "timestamp": "2026-11-23T09:01:02.123456Z",
        "principalId": "eve", "organizationId": "clinic-1", "dataClassification": "INTERNAL",
        "severity": "high", "retentionPolicy": "administrative", "eventVersion": "1.0",
        "sessionContext": {"ipAddress": "10.0.0.9"}, "details": {"n": 3}
    });
    group.bench_function("from_stored/small", |b| {
        b.iter(|| ObservedEvent::from_stored(black_box(&small)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
