//! Per-event CPU cost of the ingest path's pure part: parse → prepare (sanitize, validate,
//! defaults, redact, canonical members) → seal (splice, SHA-256, HMAC). Run with
//! `cargo bench -p vellum-core --bench pipeline`.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use std::hint::black_box;
use vellum_core::config::{RedactionConfig, ValidationConfig};
use vellum_core::integrity::HmacKeyring;
use vellum_core::pipeline::{Pipeline, Sequencing, seal};
use vellum_core::redact::Redactor;
use zeroize::Zeroizing;

fn typical_event() -> Value {
    json!({
        "action": "fhir.observation.read", "status": "success", "principalId": "dr-417",
        "principalType": "professional", "organizationId": "org-7",
        "targetResourceType": "Observation", "targetResourceId": "observation-88123",
        "outcomeDescription": "dr-417 performed fhir.observation.read on Observation for patient-004211 during routine care, request 1",
        "dataClassification": "PHI", "correlationId": "corr-9f1c2a7d55e01b3a",
        "sessionContext": {"sessionId": "sess-0a1b2c3d4e5f", "ipAddress": "10.1.2.3",
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) EHRClient/4.2",
            "deviceId": "ws-77"},
        "healthcareContext": {"patientId": "patient-004211", "clinicId": "clinic-3", "departmentId": "cardiology",
            "emergencyAccess": false,
            "clinicalJustification": "Continuity of care: reviewing latest results before the scheduled consultation"},
        "technicalContext": {"endpoint": "/fhir/R4/Observation/88123", "httpMethod": "GET", "statusCode": 200,
            "durationMs": 37, "requestId": "req-00ff00ff00ff00ff"},
        "details": {"application": "ehr-frontend", "version": "4.2.1", "fields": ["name", "birthDate", "address", "telecom"],
            "note": "Patient SSN 123-45-6789 and card 4111 1111 1111 1111 were mentioned on the phone"}
    })
}

fn bench(c: &mut Criterion) {
    let text = serde_json::to_string(&typical_event()).expect("serializes");
    let redactor = Redactor::new(
        &RedactionConfig::default(),
        b"bench-token-key-bench-token-key!",
    )
    .expect("valid");
    let pipeline = Pipeline::new(ValidationConfig::default(), redactor);
    let ring = HmacKeyring::single(Zeroizing::new(b"bench-secret-bench-secret-bench!".to_vec()))
        .expect("valid");
    let now = time::OffsetDateTime::now_utc();
    let mut group = c.benchmark_group("ingest_cpu_path");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse", |b| {
        b.iter(|| serde_json::from_str::<Value>(black_box(&text)).expect("json"))
    });
    group.bench_function("parse+prepare", |b| {
        b.iter(|| {
            let value: Value = serde_json::from_str(black_box(&text)).expect("json");
            pipeline.prepare(value, text.len(), now).expect("valid")
        })
    });
    let parsed: Value = serde_json::from_str(&text).expect("json");
    group.bench_function("stage/sanitize", |b| {
        b.iter_batched(
            || parsed.clone(),
            |mut v| vellum_core::sanitize::sanitize(&mut v),
            criterion::BatchSize::SmallInput,
        )
    });
    let config = ValidationConfig::default();
    group.bench_function("stage/validate", |b| {
        b.iter(|| vellum_core::validate::validate(black_box(&parsed), text.len(), &config))
    });
    let redactor2 = Redactor::new(
        &RedactionConfig::default(),
        b"bench-token-key-bench-token-key!",
    )
    .expect("valid");
    let Value::Object(map) = parsed.clone() else {
        unreachable!()
    };
    group.bench_function("stage/redact", |b| {
        b.iter_batched(
            || map.clone(),
            |mut m| redactor2.redact(&mut m),
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("stage/members", |b| {
        b.iter(|| vellum_core::canonical::CanonicalMembers::from_map(black_box(&map)))
    });
    group.bench_function("stage/clone+drop", |b| b.iter(|| black_box(parsed.clone())));
    let prepared = pipeline
        .prepare(serde_json::from_str(&text).expect("json"), text.len(), now)
        .expect("valid");
    let prev = [7u8; 32];
    group.bench_function("seal", |b| {
        b.iter(|| {
            seal(
                black_box(&prepared),
                &Sequencing {
                    id: "01a207ba-af56-70e2-aec5-97bec588d67d",
                    log_id: "default",
                    seq: 123_456,
                    received_at: "2026-11-23T09:26:44.822525Z",
                    prev_hash: &prev,
                },
                Some(&ring),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
