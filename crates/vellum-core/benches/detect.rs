//! Per-event CPU cost of detection: `Engine::observe` with every rule on over a realistic mix
//! (10 000 principals in 50 organizations, 5 % PHI, 1 % failed logins, 0.2 % exports, most
//! events from the principal's usual address and some from anywhere), in steady state (windows,
//! histories and sources already populated), and `ObservedEvent::from_stored` on a typical
//! stored event. Run with `cargo bench -p vellum-core --bench detect`.
//!
//! `pipeline/*` measure the server's path for the same mix: each committed event arrives as
//! its stored canonical text (about 1.1 KB, like `vellum bench` events after the pipeline:
//! one in eight with a note whose SSN and card number were tokenized and a redacted
//! password), is read into an [`ObservedEvent`] with `ObservedEvent::from_stored_text`
//! (a tree borrowed from the text) and observed with every rule on; `pipeline/*_dlp_patterns`
//! adds three DLP regexes (the default has none). The texts are made outside the timed loop.
//!
//! Instruction counts (they repeat exactly, whatever the neighbours do): with
//! `VELLUM_DETECT_COUNT=observe|pipeline|pipeline_dlp` (and optionally
//! `VELLUM_DETECT_COUNT_EVENTS`, default 50 000) the binary skips criterion, warms an engine up
//! on the mix and then runs that many events through `measured_pass`, for
//! `valgrind --tool=callgrind --toggle-collect='*measured_pass*'`.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{Criterion, Throughput, criterion_group};
use serde_json::{Value, json};
use std::hint::black_box;
use std::time::{Duration, Instant};
use vellum_core::detect::{DetectionConfig, Dlp, Engine, ObservedEvent};

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
    let stored_text = vellum_core::canonical::to_canonical_string(&stored);
    group.bench_function("from_stored_text/typical", |b| {
        b.iter(|| ObservedEvent::from_stored_text(black_box(&stored_text)))
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

    for (name, config) in [
        ("pipeline/all_rules_mix", DetectionConfig::default()),
        ("pipeline/all_rules_mix_dlp_patterns", with_dlp_patterns()),
    ] {
        let mut stream = StoredStream::new();
        let mut engine = Engine::new(config);
        let alerts = stream.warm_up(&mut engine);
        eprintln!(
            "{name} warm-up: {EVENTS} stored events (mean {} bytes), alerts {alerts:?}, {} tracked keys",
            stream.mean_bytes,
            engine.tracked_keys()
        );
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let texts = stream.next_texts(left.min(CHUNK as u64) as usize);
                    let start = Instant::now();
                    black_box(measured_pass(&mut engine, &texts));
                    spent += start.elapsed();
                    left -= texts.len() as u64;
                }
                spent
            })
        });
    }
    group.finish();
}

/// Every rule on, plus three DLP patterns of the kind a deployment adds.
fn with_dlp_patterns() -> DetectionConfig {
    DetectionConfig {
        dlp: Dlp {
            patterns: vec![
                r"\bMRN[-: ]?\d{6,10}\b".into(),
                r"\b\d{3}-\d{2}-\d{4}\b".into(),
                r"(?i)\b(?:password|passwd|secret)\s*[:=]".into(),
            ],
            ..Dlp::default()
        },
        ..DetectionConfig::default()
    }
}

/// Stored texts are made this many at a time, outside the timed loop.
const CHUNK: usize = 4_096;

/// The server's detection path for committed events: `ObservedEvent::from_stored_text` of
/// the stored canonical text, `Engine::observe`. Returns the number of alerts.
#[inline(never)]
fn measured_pass(engine: &mut Engine, texts: &[String]) -> usize {
    let mut alerts = 0;
    for text in texts {
        if let Some(event) = ObservedEvent::from_stored_text(black_box(text)) {
            alerts += engine.observe(&event).len();
        }
    }
    alerts
}

/// [`measured_pass`] for already observed events (the `observe/all_rules_mix` case).
#[inline(never)]
fn measured_pass_observe(engine: &mut Engine, events: &[ObservedEvent]) -> usize {
    events
        .iter()
        .map(|e| engine.observe(black_box(e)).len())
        .sum()
}

/// The mix of [`mix`] as stored canonical texts, pass after pass (each later in time and in
/// the log than the one before).
struct StoredStream {
    events: Vec<ObservedEvent>,
    rng: Rng,
    pass: i64,
    cursor: usize,
    seq: u64,
    mean_bytes: usize,
}

impl StoredStream {
    fn new() -> Self {
        Self {
            events: mix(),
            rng: Rng(0x2545_f491_4f6c_dd1d),
            pass: 0,
            cursor: 0,
            seq: 0,
            mean_bytes: 0,
        }
    }

    /// One pass over the mix, so windows, histories and sources are populated; the alerts
    /// by rule.
    fn warm_up(&mut self, engine: &mut Engine) -> std::collections::BTreeMap<String, usize> {
        let mut alerts = std::collections::BTreeMap::new();
        let mut bytes = 0usize;
        while self.pass == 0 {
            let texts = self.next_texts(CHUNK);
            bytes += texts.iter().map(String::len).sum::<usize>();
            for text in &texts {
                let value: Value = serde_json::from_str(text).expect("stored text parses");
                let event = ObservedEvent::from_stored(&value).expect("stored event observes");
                for alert in engine.observe(&event) {
                    *alerts.entry(alert.rule.as_str().to_owned()).or_insert(0) += 1;
                }
            }
        }
        self.mean_bytes = bytes / EVENTS;
        alerts
    }

    /// The next (at most) `n` stored texts, not crossing the end of a pass.
    fn next_texts(&mut self, n: usize) -> Vec<String> {
        if self.cursor == self.events.len() {
            self.cursor = 0;
            self.pass += 1;
        }
        let end = (self.cursor + n).min(self.events.len());
        let shift = self.pass * EVENTS as i64 * STEP_MICROS;
        let mut texts = Vec::with_capacity(end - self.cursor);
        for i in self.cursor..end {
            let seq = self.seq;
            self.seq += 1;
            let pii = self.rng.below(8) == 0;
            texts.push(stored_text(&self.events[i], seq, shift, pii, &mut self.rng));
        }
        self.cursor = end;
        texts
    }
}

fn server_time(micros: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .expect("time in range");
    vellum_core::time_fmt::format_server_time(at)
}

/// An event of the mix as the server stores it (canonical JSON: sorted keys, no spaces), with
/// the fields a real client sends; `pii` adds the tokenized note and redacted password.
fn stored_text(e: &ObservedEvent, seq: u64, shift: i64, pii: bool, rng: &mut Rng) -> String {
    let principal = e.principal_id.as_deref().unwrap_or("-");
    let patient = format!("patient-{:06}", rng.below(50_000));
    let (resource, method) = match e.action.as_str() {
        a if a.starts_with("auth.") => ("Session", "POST"),
        "fhir.schedule.read" => ("Schedule", "GET"),
        _ => ("Patient", "GET"),
    };
    let mut details = json!({
        "application": "ehr-frontend",
        "version": "4.2.1",
        "fields": ["name", "birthDate", "address", "telecom"],
    });
    if e.record_count > 1 {
        details["recordCount"] = json!(e.record_count);
    }
    let mut redactions = Vec::new();
    if pii {
        details["note"] = json!(format!(
            "Patient SSN tok:{:016x} and card tok:{:016x} were mentioned on the phone",
            rng.next(),
            rng.next()
        ));
        details["password"] = json!("[REDACTED]");
        redactions = vec!["/details/note", "/details/password"];
    }
    let mut event = json!({
        "id": e.id, "logId": e.log_id, "seq": seq,
        "receivedAt": server_time(e.received_micros + shift),
        "timestamp": server_time(e.occurred_micros + shift),
        "prevHash": format!("{:064x}", u128::from(seq)), "keyId": "default",
        "action": e.action, "status": e.status,
        "principalId": principal, "principalType": "professional",
        "organizationId": e.organization_id,
        "targetResourceType": resource,
        "targetResourceId": format!("{}-{}", resource.to_ascii_lowercase(), rng.below(1_000_000)),
        "outcomeDescription": format!("{principal} performed {} on {resource} for {patient} during routine care, request {seq}", e.action),
        "dataClassification": e.classification,
        "severity": if e.status == "failure" { "medium" } else { "low" },
        "retentionPolicy": "hipaa-6-years", "eventVersion": "1.0",
        "correlationId": format!("corr-{:016x}", rng.next()),
        "sessionContext": {
            "sessionId": format!("sess-{:012x}", rng.next() & 0xffff_ffff_ffff),
            "ipAddress": e.ip_address,
            "geolocation": {"country": e.country},
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) EHRClient/4.2",
            "deviceId": format!("ws-{}", rng.below(2_000)),
        },
        "healthcareContext": {
            "patientId": patient, "clinicId": format!("clinic-{}", rng.below(40)),
            "departmentId": "cardiology", "emergencyAccess": e.emergency_access,
            "clinicalJustification": "Continuity of care: reviewing latest results before the scheduled consultation",
        },
        "technicalContext": {
            "endpoint": format!("/fhir/R4/{resource}/{}", rng.below(1_000_000)),
            "httpMethod": method, "statusCode": if e.status == "failure" { 401 } else { 200 },
            "durationMs": rng.below(250), "requestId": format!("req-{:016x}", rng.next()),
        },
        "details": details,
    });
    if !redactions.is_empty() {
        event["redactions"] = json!(redactions);
    }
    // serde_json's map is ordered by key, as canonical JSON is.
    serde_json::to_string(&event).expect("serializes")
}

/// `VELLUM_DETECT_COUNT=observe|pipeline|pipeline_dlp`: warm up, then run
/// `VELLUM_DETECT_COUNT_EVENTS` (default 50 000) events through one measured pass, for
/// callgrind's `--toggle-collect`.
fn count_mode(mode: &str) {
    let n: usize = std::env::var("VELLUM_DETECT_COUNT_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50_000);
    let config = if mode == "pipeline_dlp" {
        with_dlp_patterns()
    } else {
        DetectionConfig::default()
    };
    let mut engine = Engine::new(config);
    let alerts = match mode {
        "observe" => {
            let mut events = mix();
            let span = EVENTS as i64 * STEP_MICROS;
            for e in &events {
                engine.observe(e);
            }
            let mut batch = Vec::with_capacity(n);
            let mut seq = events.len() as u64;
            let mut pass = 1;
            while batch.len() < n {
                for e in &mut events {
                    e.occurred_micros += span;
                    e.received_micros += span;
                }
                for e in &events {
                    if batch.len() == n {
                        break;
                    }
                    let mut e = e.clone();
                    e.seq = seq;
                    seq += 1;
                    batch.push(e);
                }
                pass += 1;
            }
            eprintln!("observe: {n} events of pass 1..{pass}");
            let start = Instant::now();
            let alerts = measured_pass_observe(&mut engine, &batch);
            eprintln!(
                "{:.0} ns/event",
                start.elapsed().as_nanos() as f64 / n as f64
            );
            alerts
        }
        "pipeline" | "pipeline_dlp" => {
            let mut stream = StoredStream::new();
            stream.warm_up(&mut engine);
            let mut texts = Vec::with_capacity(n);
            while texts.len() < n {
                texts.extend(stream.next_texts(n - texts.len()));
            }
            let start = Instant::now();
            let alerts = measured_pass(&mut engine, &texts);
            eprintln!(
                "{:.0} ns/event",
                start.elapsed().as_nanos() as f64 / n as f64
            );
            alerts
        }
        other => panic!("VELLUM_DETECT_COUNT={other}: expected observe, pipeline or pipeline_dlp"),
    };
    eprintln!("{mode}: {n} events measured, {alerts} alerts");
}

criterion_group!(benches, bench);

fn main() {
    if let Ok(mode) = std::env::var("VELLUM_DETECT_COUNT") {
        count_mode(&mode);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
