//! Measures raw durable append throughput of the SQLite log (no HTTP, no indexer):
//! `cargo run --release -p vellum-store --example append_probe -- [DIR] [BATCH] [EVENTS]`.

use std::time::Instant;
use vellum_store::sqlite::{SqliteOptions, SqliteStore};
use vellum_store::{AppendBatch, AuditStore, NewEvent};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(
        args.get(1)
            .cloned()
            .unwrap_or_else(|| "/tmp/append-probe".into()),
    );
    let batch: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    let total: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let _ = std::fs::remove_dir_all(&dir);
    let store = SqliteStore::open(
        &dir,
        SqliteOptions {
            run_indexer: false,
            ..SqliteOptions::default()
        },
    )?;
    let body = format!(
        "{{\"action\":\"fhir.patient.read\",\"details\":\"{}\"}}",
        "x".repeat(1000)
    );
    let started = Instant::now();
    let mut seq = 0u64;
    let mut commits = 0;
    while (seq as usize) < total {
        let mut b = AppendBatch::default();
        for _ in 0..batch {
            let id = uuid::Uuid::now_v7();
            b.events.push(NewEvent {
                log_id: "default".into(),
                seq,
                id: *id.as_bytes(),
                canonical: body.clone(),
                hash: [seq as u8; 32],
                signature: Some([1; 32]),
            });
            seq += 1;
        }
        store.append(&b)?;
        commits += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "batch {batch}: {seq} events in {secs:.2}s = {:.0} events/s, {:.2} ms/commit",
        seq as f64 / secs,
        1000.0 * secs / commits as f64
    );
    Ok(())
}
