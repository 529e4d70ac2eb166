//! A fixed-work driver of the ingest CPU path for instruction-count profiling, because wall
//! time on a small shared machine is too noisy to decide between two versions of a hot loop:
//!
//! ```text
//! cargo build --release -p vellum-core --example pipeline_profile
//! valgrind --tool=callgrind --callgrind-out-file=cg.out \
//!     target/release/examples/pipeline_profile all 2000
//! ```
//!
//! The first argument picks the stage (`parse`, `prepare` = parse+prepare, `seal`, `all` =
//! parse+prepare+seal, `sanitize`, `validate`, `redact`, `members`, `clone`), the second the
//! number of events. Instructions per event = (total of a run with N events − total with 0
//! events) / N. The event is the benchmark's typical ~1 KB event.

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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let stage = args.next().unwrap_or_else(|| "all".to_owned());
    let n: usize = args.next().map_or(Ok(1000), |s| s.parse())?;
    let text = serde_json::to_string(&typical_event())?;
    let redactor = Redactor::new(
        &RedactionConfig::default(),
        b"bench-token-key-bench-token-key!",
    )?;
    let pipeline = Pipeline::new(ValidationConfig::default(), redactor);
    let ring = HmacKeyring::single(Zeroizing::new(b"bench-secret-bench-secret-bench!".to_vec()))?;
    let now = time::OffsetDateTime::UNIX_EPOCH;
    let parsed: Value = serde_json::from_str(&text)?;
    let Value::Object(map) = parsed.clone() else {
        return Err("typical event is an object".into());
    };
    let prepared = pipeline
        .prepare(parsed.clone(), text.len(), now)
        .map_err(|e| format!("{e:?}"))?;
    let prev = [7u8; 32];
    let sequencing = Sequencing {
        id: "01a207ba-af56-70e2-aec5-97bec588d67d",
        log_id: "default",
        seq: 123_456,
        received_at: "2026-11-23T09:26:44.822525Z",
        prev_hash: &prev,
    };
    let redactor2 = Redactor::new(
        &RedactionConfig::default(),
        b"bench-token-key-bench-token-key!",
    )?;
    let config = ValidationConfig::default();
    for _ in 0..n {
        match stage.as_str() {
            "parse" => {
                black_box(serde_json::from_str::<Value>(black_box(&text))?);
            }
            "prepare" => {
                let value: Value = serde_json::from_str(black_box(&text))?;
                black_box(pipeline.prepare(value, text.len(), now).ok());
            }
            "all" => {
                let value: Value = serde_json::from_str(black_box(&text))?;
                if let Ok(p) = pipeline.prepare(value, text.len(), now) {
                    black_box(seal(&p, &sequencing, Some(&ring)));
                }
            }
            "seal" => {
                black_box(seal(black_box(&prepared), &sequencing, Some(&ring)));
            }
            "sanitize" => {
                let mut v = parsed.clone();
                black_box(vellum_core::sanitize::sanitize(&mut v));
            }
            "validate" => {
                black_box(vellum_core::validate::validate(
                    black_box(&parsed),
                    text.len(),
                    &config,
                ))
                .ok();
            }
            "redact" => {
                let mut m = map.clone();
                black_box(redactor2.redact(&mut m));
            }
            "members" => {
                black_box(vellum_core::canonical::CanonicalMembers::from_map(
                    black_box(&map),
                ));
            }
            "clone" => {
                black_box(parsed.clone());
            }
            other => return Err(format!("unknown stage {other}").into()),
        }
    }
    Ok(())
}
