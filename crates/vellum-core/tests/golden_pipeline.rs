//! Golden test of the ingest path's output: a varied set of client events (unicode, control
//! characters, PII for every redaction preset and rule kind, custom fields, awkward numbers,
//! injection text, invalid events) goes through `Pipeline::prepare` and `seal`, and every
//! observable result is pinned byte for byte: canonical text, hash, signature, redactions,
//! signals, idempotency key, organization and validation errors.
//!
//! Other programs verify the stored hashes and signatures, so any change here is a breaking
//! change of the stored format, not a refactoring detail. Performance work on the pipeline must
//! leave this file's expectations untouched. To regenerate after an *intended* format change,
//! run with `VELLUM_BLESS_GOLDEN=1` and review the diff of `tests/golden/pipeline.golden`.

use serde_json::Value;
use std::fmt::Write as _;
use vellum_core::config::{
    FieldRule, PatternKind, PatternRule, PointerRule, RedactionConfig, RedactionMode,
    RedactionPreset, ValidationConfig,
};
use vellum_core::integrity::{GENESIS_PREV_HASH, HmacKeyring, to_hex};
use vellum_core::pipeline::{Pipeline, Sequencing, seal};
use vellum_core::redact::Redactor;
use zeroize::Zeroizing;

const GOLDEN_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/pipeline.golden");

/// Client events as raw JSON text (parsed like the server parses them, so `-0`, `1E21` and
/// escapes reach the pipeline exactly as a client would send them).
const EVENTS: &[&str] = &[
    // The benchmark's typical event.
    r#"{"action":"fhir.observation.read","status":"success","principalId":"dr-417","principalType":"professional","organizationId":"org-7","targetResourceType":"Observation","targetResourceId":"observation-88123","outcomeDescription":"dr-417 performed fhir.observation.read on Observation for patient-004211 during routine care, request 1","dataClassification":"PHI","correlationId":"corr-9f1c2a7d55e01b3a","sessionContext":{"sessionId":"sess-0a1b2c3d4e5f","ipAddress":"10.1.2.3","userAgent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) EHRClient/4.2","deviceId":"ws-77"},"healthcareContext":{"patientId":"patient-004211","clinicId":"clinic-3","departmentId":"cardiology","emergencyAccess":false,"clinicalJustification":"Continuity of care: reviewing latest results before the scheduled consultation"},"technicalContext":{"endpoint":"/fhir/R4/Observation/88123","httpMethod":"GET","statusCode":200,"durationMs":37,"requestId":"req-00ff00ff00ff00ff"},"details":{"application":"ehr-frontend","version":"4.2.1","fields":["name","birthDate","address","telecom"],"note":"Patient SSN 123-45-6789 and card 4111 1111 1111 1111 were mentioned on the phone"}}"#,
    // Minimal event: every default filled.
    r#"{"action":"fhir.patient.read","status":"success"}"#,
    // Severity derivations and classification defaults.
    r#"{"action":"auth.login.failure","status":"failure","dataClassification":"CONFIDENTIAL"}"#,
    r#"{"action":"admin.config.change","status":"success","organizationId":"org-1","dataClassification":"PUBLIC"}"#,
    r#"{"action":"fhir.patient.read","status":"warning","healthcareContext":{"emergencyAccess":true}}"#,
    r#"{"action":"fhir.patient.read","status":"attempt","healthcareContext":{"emergencyAccess":true},"severity":"critical","retentionPolicy":"custom-1","eventVersion":"1.0","timestamp":"2026-01-02T03:04:05.123+01:00"}"#,
    // Numbers.
    r#"{"action":"a.b","status":"success","details":{"n":[1e21,1E21,-0,0,-0.0,0.1,0.2,1e-7,1e-6,123.456,-1.5e300,5e-324,9007199254740992,-9007199254740992,9007199254740991.0,1.0,100,2.5e-3,333333333.33333329,4.50,1e30,0.000001,-12]},"technicalContext":{"statusCode":404,"durationMs":0.125}}"#,
    // Unicode: NFD values and keys, singleton decompositions, Hangul jamo, emoji, keys that
    // sort differently in UTF-16 than in UTF-8, escapes that must be written back.
    r#"{"action":"a.b","status":"success","outcomeDescription":"caf\u0065\u0301 \u212b \u1100\u1161\u11a8 \ud83d\ude00 \"quoted\" back\\slash tab\there\nnewline / slash","details":{"cafe\u0301":"e\u0301","\ufb33":1,"\ud83d\ude00":2,"\u20ac":3,"\u00f6":4,"\u0080":5,"z":6,"ä":"déjà vu","한국어":"한국어 텍스트","\u1e0a\u0323":"x"},"çustom":{"ключ":"значение"},"日本":"東京"}"#,
    // Control characters in values and keys, colliding keys after cleaning, DEL and C1 kept.
    r#"{"action":"a.b","status":"success","outcomeDescription":"x\u0000y\u0001\u001fz\t\n\r\u007f\u0085","details":{"a\u0000b":1,"a\u0001b":2,"ab\u0002":3,"c":"e\u0000\u0301","d":["\u0007bell",{"k\u0003":"\u0004v"}]}}"#,
    // PII in free text and by field name, nested, in arrays, with existing masks and tokens.
    r#"{"action":"fhir.patient.update","status":"success","principalId":"123-45-6789","targetResourceId":"4111111111111111","outcomeDescription":"SSN 123-45-6789, card 4111-1111-1111-1111, CPF 529.982.247-25 and 52998224725, mail john.doe@example.com, phone +55 11 98765-4321 and (555) 123-4567 and 555.123.4567, MRN: AB-12345, IBAN DE89 3704 0044 0532 0130 00 and GB82WEST12345698765432","healthcareContext":{"patientId":"52998224725","clinicalJustification":"patient 123-45-6789 card 5500 0000 0000 0004 2025","diagnosisCode":"E11.9"},"details":{"password":"hunter2","api_key":"k-1","API-KEY":"k-2","Ssn":"123-45-6789","cardNumber":4111111111111111,"creditCard":{"number":"4111111111111111","exp":"12/29"},"cvv":123,"dob":"1980-01-01","birthDate":null,"note":["000-12-3456","666-12-3456","900-12-3456","123-00-4567","123-45-0000","1234-56-7890","111.111.111-11","tok:0123456789abcdef and 4111111111111111","[REDACTED]"],"nested":{"deeper":{"token":"abc","iban":"DE89370400440532013000","medication":["a","b"]}}},"changes":{"changedFields":["ssn"],"oldValues":{"ssn":"123-45-6789","secret":"s"},"newValues":{"ssn":"tok:0123456789abcdef","secret":"[REDACTED]","email":"a@b.co"}},"password":"top-level custom","customPII":{"cpf":"529.982.247-25","text":"call 555-123-4567 or write x.y@example.org"}}"#,
    // Injection-looking text in values and keys.
    r#"{"action":"a.b","status":"success","outcomeDescription":"' or 1=1 -- <script>alert(1)</script>","details":{"<iframe src=x>":"1 UNION SELECT password FROM users","q":"a; DROP TABLE patients","j":"javascript:alert(1)","o":"<img src=x onerror=alert(1)>","benign":"O'Brien or Smith"}}"#,
    // Contexts, idempotency key, custom fields of every JSON type.
    r#"{"action":"gdpr.export","status":"success","idempotencyKey":"idem-ü-1","organizationId":"org-ß","sessionContext":{"sessionId":"s","ipAddress":"2001:db8::1","userAgent":"ua","geolocation":{"lat":1.5,"lon":-0.25},"deviceId":"d"},"gdprContext":{"dataSubjectId":"ds-1","legalBasis":"consent","processingPurpose":"export","dataCategories":["contact","health"]},"changes":{"changedFields":["a"],"oldValues":{"a":null},"newValues":{"a":true}},"custom1":null,"custom2":false,"custom3":[],"custom4":{},"custom5":"","custom6":[[[1]]]}"#,
    // Invalid events: every error reported, with pointers.
    r#"{"action":"bad action","status":"nope","seq":1,"hash":"x","dataClassification":"SECRET","principalType":"robot","timestamp":"yesterday","details":{"big":9007199254740993,"neg":-9007199254740993,"a":{"b":{"c":{"d":{"e":{"f":1}}}}}},"technicalContext":{"statusCode":99,"durationMs":-1},"sessionContext":{"ipAddress":"999.1.1.1"},"eventVersion":"2.0","idempotencyKey":""}"#,
    r#"{"status":"success","dataClassification":"PHI"}"#,
    r#"{"action":"admin.user.delete","status":"success","principalId":null,"healthcareContext":"x","gdprContext":{"dataCategories":[1,"a"]}}"#,
    r#"[1,2]"#,
    r#""just a string""#,
];

fn now() -> time::OffsetDateTime {
    match vellum_core::time_fmt::parse_rfc3339("2026-11-23T09:00:00.5Z") {
        Ok(t) => t,
        Err(e) => panic!("fixed time parses: {e}"),
    }
}

/// Every preset, plus a configuration exercising every explicit rule kind in both modes.
fn configs() -> Vec<(&'static str, RedactionConfig)> {
    let preset = |preset| RedactionConfig {
        preset,
        ..RedactionConfig::default()
    };
    vec![
        ("healthcare", preset(RedactionPreset::Healthcare)),
        ("financial", preset(RedactionPreset::Financial)),
        ("auth", preset(RedactionPreset::Auth)),
        ("none", preset(RedactionPreset::None)),
        (
            "custom",
            RedactionConfig {
                preset: RedactionPreset::Healthcare,
                extra_fields: vec![
                    FieldRule {
                        name: "note".into(),
                        mode: RedactionMode::Tokenize,
                    },
                    FieldRule {
                        name: "ключ".into(),
                        mode: RedactionMode::Mask,
                    },
                    FieldRule {
                        name: "custom_PII".into(),
                        mode: RedactionMode::Tokenize,
                    },
                ],
                pointers: vec![
                    PointerRule {
                        pointer: "/healthcareContext/diagnosisCode".into(),
                        mode: RedactionMode::Mask,
                    },
                    PointerRule {
                        pointer: "/principalId".into(),
                        mode: RedactionMode::Tokenize,
                    },
                    PointerRule {
                        pointer: "/details/note/1".into(),
                        mode: RedactionMode::Tokenize,
                    },
                    PointerRule {
                        pointer: "/details/a~1b".into(),
                        mode: RedactionMode::Mask,
                    },
                    PointerRule {
                        pointer: "/sessionContext/geolocation".into(),
                        mode: RedactionMode::Tokenize,
                    },
                ],
                extra_patterns: vec![
                    PatternRule {
                        kind: PatternKind::Email,
                        mode: RedactionMode::Tokenize,
                    },
                    PatternRule {
                        kind: PatternKind::Phone,
                        mode: RedactionMode::Mask,
                    },
                    PatternRule {
                        kind: PatternKind::Mrn,
                        mode: RedactionMode::Tokenize,
                    },
                    PatternRule {
                        kind: PatternKind::Iban,
                        mode: RedactionMode::Mask,
                    },
                    PatternRule {
                        kind: PatternKind::Ssn,
                        mode: RedactionMode::Mask,
                    },
                ],
            },
        ),
    ]
}

/// Runs every event under every configuration and renders all results as text.
fn render() -> String {
    let ring = match HmacKeyring::single(Zeroizing::new(b"golden-secret-golden-secret!".to_vec())) {
        Ok(r) => r,
        Err(e) => panic!("keyring: {e}"),
    };
    let mut out = String::new();
    let mut prev = GENESIS_PREV_HASH;
    let mut seq = 0u64;
    for (name, config) in configs() {
        let redactor = match Redactor::new(&config, b"golden-token-key") {
            Ok(r) => r,
            Err(e) => panic!("{name}: {e}"),
        };
        let pipeline = Pipeline::new(ValidationConfig::default(), redactor);
        for (i, text) in EVENTS.iter().enumerate() {
            let _ = writeln!(out, "## {name} #{i}");
            let value: Value = match serde_json::from_str(text) {
                Ok(v) => v,
                Err(e) => panic!("{name} #{i}: test JSON must parse: {e}"),
            };
            match pipeline.prepare(value, text.len(), now()) {
                Err(errors) => {
                    for e in errors {
                        let _ = writeln!(out, "error {:?}: {}", e.path, e.message);
                    }
                }
                Ok(prepared) => {
                    let signed = seq.is_multiple_of(2);
                    let sealed = seal(
                        &prepared,
                        &Sequencing {
                            id: "0190f5e2-0000-7000-8000-00000000000a",
                            log_id: if signed { "default" } else { "org-\"7\"" },
                            seq,
                            received_at: "2026-11-23T09:00:00.000001Z",
                            prev_hash: &prev,
                        },
                        signed.then_some(&ring),
                    );
                    let _ = writeln!(out, "canonical {}", sealed.canonical);
                    let _ = writeln!(out, "hash {}", to_hex(&sealed.hash));
                    match &sealed.signature {
                        Some((key, sig)) => {
                            let _ = writeln!(out, "signature {key} {}", to_hex(sig));
                        }
                        None => {
                            let _ = writeln!(out, "signature none");
                        }
                    }
                    let _ = writeln!(out, "redactions {:?}", prepared.redactions);
                    let signals: Vec<String> = prepared
                        .signals
                        .iter()
                        .map(|s| format!("{}={:?}", s.pointer, s.kind))
                        .collect();
                    let _ = writeln!(out, "signals {signals:?}");
                    let _ = writeln!(
                        out,
                        "idempotency {:?} organization {:?}",
                        prepared.idempotency_key, prepared.organization_id
                    );
                    let _ = writeln!(
                        out,
                        "contains-redactions {}",
                        prepared.members.contains("redactions")
                    );
                    prev = sealed.hash;
                    seq += 1;
                }
            }
        }
    }
    out
}

#[test]
fn pipeline_output_is_pinned() {
    let got = render();
    if std::env::var_os("VELLUM_BLESS_GOLDEN").is_some() {
        if let Err(e) = std::fs::write(GOLDEN_PATH, &got) {
            panic!("writing {GOLDEN_PATH}: {e}");
        }
        return;
    }
    let expected = match std::fs::read_to_string(GOLDEN_PATH) {
        Ok(t) => t,
        Err(e) => panic!("reading {GOLDEN_PATH}: {e} (bless with VELLUM_BLESS_GOLDEN=1)"),
    };
    if got != expected {
        for (n, (g, e)) in got.lines().zip(expected.lines()).enumerate() {
            if g != e {
                panic!(
                    "golden output differs at line {}:\n  expected: {e}\n  got:      {g}",
                    n + 1
                );
            }
        }
        panic!(
            "golden output differs in length: {} lines expected, {} got",
            expected.lines().count(),
            got.lines().count()
        );
    }
}

/// The golden file itself is pinned by its SHA-256, so a careless re-bless shows up in review
/// as a change of this constant too.
#[test]
fn golden_file_is_the_reviewed_one() {
    let text = match std::fs::read_to_string(GOLDEN_PATH) {
        Ok(t) => t,
        Err(e) => panic!("reading {GOLDEN_PATH}: {e}"),
    };
    let digest = to_hex(&vellum_core::integrity::sha256(text.as_bytes()));
    assert_eq!(digest, GOLDEN_SHA256);
}

const GOLDEN_SHA256: &str = "249859294974f29dc1142dc7c9d2b26e6942081ab19a890bdcd6cb1116d5831d";
