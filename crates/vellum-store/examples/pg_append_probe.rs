//! Measures durable append throughput of the PostgreSQL store and what each part of it costs:
//! `cargo run --release -p vellum-store --example pg_append_probe -- URL [BATCH] [EVENTS]
//! [DROP_INDEXES]`, where DROP_INDEXES is a comma-separated list of index names to drop before
//! appending (e.g. `event_index_tsv,event_index_tags`), to see what each costs. Uses (and
//! drops) the schema `append_probe`.

use std::time::Instant;
use vellum_store::postgres::{PgOptions, PgStore};
use vellum_store::{AppendBatch, AuditStore, IdempotencyRecord, NewEvent};

fn event(n: u64) -> String {
    let words = [
        "chart",
        "reviewed",
        "before",
        "consultation",
        "results",
        "laboratory",
        "cardiology",
        "medication",
        "allergy",
        "observation",
        "encounter",
        "discharge",
        "summary",
    ];
    let w = |k: u64| words[((n.wrapping_mul(2654435761) >> k) % words.len() as u64) as usize];
    format!(
        concat!(
            r#"{{"action":"fhir.patient.read","correlationId":"corr-{n:016x}","dataClassification":"PHI","#,
            r#""details":{{"note":"{} {} {} {} for patient pt-{}"}},"eventVersion":"1.0","#,
            r#""healthcareContext":{{"clinicId":"clinic-{}","departmentId":"cardiology","patientId":"pt-{}"}},"#,
            r#""id":"00000000-0000-7000-8000-{n:012x}","logId":"default","organizationId":"org-{}","#,
            r#""outcomeDescription":"dr-{} performed fhir.patient.read on Observation for pt-{} during routine care, request {n}","#,
            r#""prevHash":"{:064x}","principalId":"dr-{}","principalType":"professional","receivedAt":"2026-11-23T17:00:00.000000Z","#,
            r#""seq":{n},"sessionContext":{{"ipAddress":"10.1.{}.{}","sessionId":"sess-{n:012x}","userAgent":"Mozilla/5.0 EHRClient/4.2"}},"#,
            r#""status":"success","targetResourceId":"observation-{}","targetResourceType":"Observation","timestamp":"2026-11-23T17:00:00.{:06}Z"}}"#
        ),
        w(1),
        w(5),
        w(9),
        w(13),
        n % 5000,
        n % 40,
        n % 5000,
        n % 12,
        n % 300,
        n % 5000,
        n,
        n % 300,
        n % 256,
        n % 199,
        n % 1_000_000,
        n % 1_000_000,
        n = n,
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into());
    let batch: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let total: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(50_000);
    let drop: Vec<String> = args
        .get(4)
        .map(|s| {
            s.split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let client = psql(&url);
    let options = PgOptions {
        schema: Some("append_probe".into()),
        ..PgOptions::default()
    };
    client("DROP SCHEMA IF EXISTS append_probe CASCADE")?;
    let store = PgStore::connect(&url, options)?;
    for index in &drop {
        client(&format!("DROP INDEX IF EXISTS append_probe.{index}"))?;
    }
    // Appends go through a writer lease, as the server's and the workers' writers do.
    let lease = store
        .writer_lease(&[vellum_store::postgres::lock_key_for_partition(4095)])?
        .ok_or("the probe's lock is held by someone else")?;
    let started = Instant::now();
    let mut seq = 0u64;
    // The Merkle tiles change with every batch, as the writer's do (VELLUM_PROBE_TILES=0: off).
    let with_tiles = std::env::var("VELLUM_PROBE_TILES").map_or(true, |v| v != "0");
    let mut tree = vellum_core::tiles::TileWriter::new();
    while seq < total {
        let mut b = AppendBatch::default();
        for _ in 0..batch {
            let id = uuid::Uuid::now_v7();
            b.events.push(NewEvent {
                log_id: "default".into(),
                seq,
                id: *id.as_bytes(),
                canonical: event(seq),
                hash: [7; 32],
                signature: Some([9; 32]),
            });
            b.idempotency.push(IdempotencyRecord {
                key: format!("q:{id}"),
                receipt: format!(r#"{{"id":"{id}","logId":"default","seq":{seq},"hash":"{:064x}","receivedAt":"2026-11-23T17:00:00.000000Z"}}"#, seq),
                created_micros: 1,
            });
            tree.push(vellum_core::merkle::leaf_hash(&[(seq % 251) as u8; 32]));
            seq += 1;
        }
        if with_tiles {
            b.tiles = tree
                .take_changed()
                .into_iter()
                .map(|t| ("default".to_owned(), t))
                .collect();
        }
        lease.append(&b)?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{total} events in batches of {batch}: {:.0} events/s, {:.1} µs/event (dropped: {drop:?})",
        total as f64 / secs,
        secs * 1e6 / total as f64
    );
    lease.release();
    client("DROP SCHEMA IF EXISTS append_probe CASCADE")?;
    Ok(())
}

type Exec = Box<dyn Fn(&str) -> Result<(), Box<dyn std::error::Error>>>;

/// Runs one SQL statement with `psql` (schema set-up and clean-up, outside the measurement).
fn psql(url: &str) -> Exec {
    let url = url.to_owned();
    Box::new(move |sql: &str| {
        let status = std::process::Command::new("psql")
            .arg(&url)
            .args(["-q", "-c", sql])
            .status()?;
        if !status.success() {
            return Err(format!("psql failed: {sql}").into());
        }
        Ok(())
    })
}
