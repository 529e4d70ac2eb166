//! Proof and checkpoint cost on a large real store (issue 3's benchmark):
//!
//! ```text
//! cargo run --release -p vellum-server --example proof_bench -- DIR EVENTS [SAMPLES]
//! ```
//!
//! Fills `DIR` (a normal data directory, with `secret.key` and `checkpoint.key`) with `EVENTS`
//! synthetic events through the real writer (group commit, tiles, checkpoints; no HTTP, no
//! search indexer) unless it already holds that many, then measures on it:
//! inclusion-proof latency (tiles read from SQLite, as `GET /v1/events/{id}/proof` does),
//! consistency-proof latency, and what a checkpoint costs the writer (root from the edge tiles
//! plus an Ed25519 signature). Afterwards `vellum --data-dir DIR verify` measures verification.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};
use vellum_core::checkpoint::CheckpointBody;
use vellum_core::config::{RedactionConfig, ValidationConfig};
use vellum_core::integrity::HmacKeyring;
use vellum_core::merkle::{consistency_proof, inclusion_proof};
use vellum_core::pipeline::Pipeline;
use vellum_core::redact::Redactor;
use vellum_core::tiles::{TileSource, TileWriter};
use vellum_server::bootstrap;
use vellum_server::ingest::{Submission, Writer, WriterConfig};
use vellum_store::AuditStore;
use vellum_store::sqlite::{SqliteOptions, SqliteStore};

/// A small deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name}: n={} p50={:.1}µs p99={:.1}µs p99.9={:.1}µs max={:.1}µs",
        samples.len(),
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        percentile(&samples, 0.999),
        percentile(&samples, 1.0)
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).ok_or("usage: proof_bench DIR EVENTS")?);
    let target: u64 = args.get(2).ok_or("EVENTS missing")?.parse()?;
    let samples: usize = args.get(3).map_or(Ok(20_000), |s| s.parse())?;
    let store = SqliteStore::open(
        &dir,
        SqliteOptions {
            run_indexer: false,
            ..SqliteOptions::default()
        },
    )?;
    let dyn_store: Arc<dyn AuditStore> = store.clone();
    let secret = bootstrap::load_or_create_secret(&dir, None)?;
    let keyring = Arc::new(HmacKeyring::single(secret)?);
    let signer = Arc::new(bootstrap::load_or_create_checkpoint_signer(
        &dir,
        None,
        "vellum",
        dyn_store.as_ref(),
    )?);
    let size_now = |s: &dyn AuditStore| {
        s.log_heads()
            .unwrap()
            .into_iter()
            .find(|h| h.log_id == "default")
            .map_or(0, |h| h.size)
    };
    let have = size_now(dyn_store.as_ref());
    if have < target {
        fill(&dyn_store, &keyring, &signer, target - have)?;
    }
    let n = size_now(dyn_store.as_ref());
    println!("store: {} events in log default", n);

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Inclusion proofs at the current size, as the proof endpoint computes them.
    let mut times = Vec::with_capacity(samples);
    let mut tiles = 0usize;
    for _ in 0..samples {
        let leaf = rng.next() % n;
        let t = Instant::now();
        let mut src = TileSource::new(|k| dyn_store.merkle_tile("default", k));
        let proof = inclusion_proof(&mut src, leaf, n)?;
        times.push(t.elapsed());
        tiles += src.tiles_read();
        std::hint::black_box(proof);
    }
    report(&format!("inclusion proof (tree {n})"), times);
    println!(
        "  tiles read per proof: {:.2}",
        tiles as f64 / samples as f64
    );

    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let from = 1 + rng.next() % (n - 1);
        let t = Instant::now();
        let mut src = TileSource::new(|k| dyn_store.merkle_tile("default", k));
        let proof = consistency_proof(&mut src, from, n)?;
        times.push(t.elapsed());
        std::hint::black_box(proof);
    }
    report(&format!("consistency proof (M random, N={n})"), times);

    // What the writer pays per checkpoint: the root from its edge tiles plus one signature.
    let tree = TileWriter::resume(n, |k| dyn_store.merkle_tile("default", k))??;
    let mut times = Vec::with_capacity(2_000);
    for _ in 0..2_000 {
        let t = Instant::now();
        let cp = signer.sign(
            &CheckpointBody {
                log_id: "default".into(),
                tree_size: n,
                root_hash: tree.root(),
            },
            "2026-11-23T00:00:00Z",
        );
        times.push(t.elapsed());
        std::hint::black_box(cp);
    }
    report("checkpoint (edge root + Ed25519 sign)", times);
    // A checkpoint stored on its own (the idle-writer case) is one durable commit; measured
    // on a scratch store beside DIR so the measured store keeps only real checkpoints.
    let scratch_dir = dir.with_extension("checkpoint-scratch");
    let _ = std::fs::remove_dir_all(&scratch_dir);
    let scratch = SqliteStore::open(
        &scratch_dir,
        SqliteOptions {
            run_indexer: false,
            ..SqliteOptions::default()
        },
    )?;
    let mut times = Vec::with_capacity(200);
    for i in 0..200u64 {
        let cp = signer.sign(
            &CheckpointBody {
                log_id: "default".into(),
                tree_size: i + 1,
                root_hash: tree.root(),
            },
            "2026-11-23T00:00:00Z",
        );
        let t = Instant::now();
        scratch.insert_checkpoint(&cp)?;
        times.push(t.elapsed());
    }
    scratch.shutdown();
    let _ = std::fs::remove_dir_all(&scratch_dir);
    report("checkpoint stored alone (durable commit)", times);
    store.shutdown();
    Ok(())
}

/// Appends `count` events through the real writer from 4 submitting threads.
fn fill(
    store: &Arc<dyn AuditStore>,
    keyring: &Arc<HmacKeyring>,
    signer: &Arc<vellum_core::checkpoint::CheckpointSigner>,
    count: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let token_key = keyring.derive("redaction-token");
    let pipeline = Arc::new(Pipeline::new(
        ValidationConfig::default(),
        Redactor::new(&RedactionConfig::default(), &token_key)?,
    ));
    let (writer, handle) = Writer::start(
        store.clone(),
        Some(keyring.clone()),
        signer.clone(),
        WriterConfig {
            capacity: 200_000,
            max_batch: 5_000,
            log_per_organization: false,
            checkpoint_interval: Duration::from_secs(1),
            partition: None,
            commit_tap: None,
        },
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let per_task = count.div_ceil(8);
    // Event numbers are handed out in submission order, so timestamps follow the log's order
    // the way real traffic does (with the late arrivals below), across all 8 submitters.
    let next_number = Arc::new(std::sync::atomic::AtomicU64::new(0));
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for _task in 0..8u64 {
            let handle = handle.clone();
            let pipeline = pipeline.clone();
            let next_number = next_number.clone();
            tasks.push(tokio::spawn(async move {
                let mut done = 0u64;
                while done < per_task {
                    let n = (per_task - done).min(500);
                    let now = time::OffsetDateTime::now_utc();
                    let first = next_number.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    let batch: Vec<Submission> = (0..n)
                        .map(|i| {
                            let k = first + i;
                            // Realistic enough for search benchmarks: 40 actions, ~1000
                            // principals, 100k patients, timestamps spread over a year,
                            // a sentence for full text.
                            let verbs = ["read", "search", "update", "create", "delete"];
                            let nouns = [
                                "patient", "observation", "encounter", "medication",
                                "condition", "procedure", "allergy", "immunization",
                            ];
                            let action = format!(
                                "fhir.{}.{}",
                                nouns[(k % 8) as usize],
                                verbs[((k / 8) % 5) as usize]
                            );
                            let status = if k.is_multiple_of(50) { "failure" } else { "success" };
                            // One year spread evenly over the fill, in log order, with
                            // millisecond jitter; 1% arrive late by up to an hour (a client's
                            // spool draining after an outage).
                            let mut micros = 1_763_856_000_000_000i64
                                + (u128::from(k) * 31_536_000_000_000 / u128::from(count.max(1))) as i64
                                + ((k * 7_919) % 1_000) as i64 * 1_000;
                            if k % 100 == 37 {
                                micros -= ((k * 104_729) % 3_600_000_000) as i64;
                            }
                            let ts = time::OffsetDateTime::UNIX_EPOCH
                                + time::Duration::microseconds(micros);
                            let event = serde_json::json!({
                                "action": action,
                                "status": status,
                                "timestamp": vellum_core::time_fmt::format_server_time(ts),
                                "principalId": format!("dr-{}", k % 997),
                                "organizationId": format!("org-{}", k % 7),
                                "targetResourceType": "Patient",
                                "targetResourceId": format!("p-{}", k % 100_003),
                                "dataClassification": if k.is_multiple_of(3) { "PHI" } else { "CONFIDENTIAL" },
                                "healthcareContext": {"patientId": format!("p-{}", k % 100_003)},
                                "sessionContext": {"ipAddress": format!("10.{}.{}.{}", k % 7, k % 251, k % 13), "sessionId": format!("s-{}", k / 20)},
                                "outcomeDescription": format!("{} {} record {} for ward {}", ["viewed", "amended", "exported", "printed"][(k % 4) as usize], nouns[(k % 8) as usize], k % 100_003, k % 41),
                            });
                            Submission {
                                event: pipeline.prepare(event, 0, now).unwrap(),
                                idempotency_key: None,
                                id: None,
                            }
                        })
                        .collect();
                    handle.submit(batch).await.unwrap().unwrap();
                    done += n;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    drop(handle);
    writer.join();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "filled {count} events in {secs:.1}s ({:.0} events/s through the writer)",
        count as f64 / secs
    );
    Ok(())
}
