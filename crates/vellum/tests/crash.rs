//! Crash tests against the real `vellum` binary: concurrent ingest, SIGKILL with requests in
//! flight, restart on the same data directory. Every event the server acknowledged (201) must
//! come back with the same id, seq and hash, and `vellum verify` must pass on what is on disk.
//! A second test does the same with SIGTERM, which must drain and exit 0.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{Ack, Server};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Ingest tasks per cycle.
const WRITERS: u64 = 8;

/// Shared between the ingest tasks and the test.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    acked: AtomicU64,
    errors: AtomicU64,
    acks: Mutex<Vec<Ack>>,
}

/// One ingest task: single events and small batches, until told to stop. Records every
/// receipt of a 201; anything else (error, cut-off connection) is simply not acknowledged.
async fn writer(load: Arc<Load>, client: reqwest::Client, url: String, key: String, task: u64) {
    let mut i: u64 = 0;
    // Bounded: at most this many requests per task (far more than a cycle needs).
    while i < 1_000_000 && !load.stop.load(Ordering::Relaxed) {
        let base = task * 10_000_000 + i * 16;
        let single = i.is_multiple_of(3);
        let body = if single {
            common::event("crash.single", base)
        } else {
            let n = 2 + (i % 7);
            json!({"events": (0..n).map(|k| common::event("crash.batch", base + k)).collect::<Vec<_>>()})
        };
        i += 1;
        let response = client
            .post(format!("{url}/v1/events"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await;
        let Ok(response) = response else {
            load.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let status = response.status().as_u16();
        let Ok(bytes) = response.bytes().await else {
            load.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if status != 201 {
            load.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        // A 201 whose body is complete is a promise: it must parse.
        let receipt: Value = serde_json::from_slice(&bytes).expect("a 201 body is JSON");
        let acks: Vec<Ack> = if single {
            vec![Ack::from_json(&receipt)]
        } else {
            let accepted = receipt["accepted"].as_array().expect("accepted[]");
            assert!(
                receipt["rejected"].as_array().is_some_and(Vec::is_empty),
                "valid events were rejected: {receipt}"
            );
            accepted.iter().map(Ack::from_json).collect()
        };
        load.acked.fetch_add(acks.len() as u64, Ordering::Relaxed);
        load.acks.lock().unwrap().extend(acks);
    }
}

/// Checks, through the API, that every acknowledged event is there, unchanged.
async fn check_acks(client: &reqwest::Client, url: &str, key: &str, acks: &[Ack]) -> Vec<String> {
    let acks = Arc::new(acks.to_vec());
    let mut tasks = Vec::new();
    for part in 0..8usize {
        let (client, url, key, acks) =
            (client.clone(), url.to_owned(), key.to_owned(), acks.clone());
        tasks.push(tokio::spawn(async move {
            let mut problems = Vec::new();
            for ack in acks.iter().skip(part).step_by(8) {
                let response = client
                    .get(format!("{url}/v1/events/{}", ack.id))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .expect("GET /v1/events/{id}");
                let status = response.status().as_u16();
                let body: Value = response.json().await.expect("event JSON");
                if status != 200 {
                    problems.push(format!("{ack:?}: GET answered {status}: {body}"));
                    continue;
                }
                let got = (
                    body["id"].as_str(),
                    body["logId"].as_str(),
                    body["seq"].as_u64(),
                    body["hash"].as_str(),
                );
                let want = (
                    Some(ack.id.as_str()),
                    Some(ack.log_id.as_str()),
                    Some(ack.seq),
                    Some(ack.hash.as_str()),
                );
                if got != want {
                    problems.push(format!("{ack:?}: stored event differs: {body}"));
                }
            }
            problems
        }));
    }
    let mut problems = Vec::new();
    for task in tasks {
        problems.extend(task.await.expect("check task"));
    }
    problems
}

fn assert_unique(acks: &[Ack]) {
    let mut ids = HashSet::new();
    let mut positions = HashSet::new();
    for ack in acks {
        assert!(ids.insert(&ack.id), "id acknowledged twice: {ack:?}");
        assert!(
            positions.insert((&ack.log_id, ack.seq)),
            "two acknowledged events share a position: {ack:?}"
        );
    }
}

fn assert_verifies(data_dir: &std::path::Path, at_least: usize, when: &str) {
    let out = common::verify(data_dir, &["--json"]);
    let stdout = common::text(&out.stdout);
    assert!(
        out.status.success(),
        "vellum verify failed {when}: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        common::text(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).expect("verify --json output");
    assert_eq!(report["ok"], true, "{report}");
    let events: u64 = report["logs"]
        .as_array()
        .expect("logs[]")
        .iter()
        .map(|l| l["events"].as_u64().expect("events"))
        .sum();
    assert!(
        events >= at_least as u64,
        "verify saw {events} events but {at_least} were acknowledged ({when})"
    );
}

/// Runs ingest against `server` until `target` more events are acknowledged (or the time
/// limit passes), then stops the server with `stop` while requests are still in flight.
fn load_then(
    rt: &tokio::runtime::Runtime,
    server: Server,
    target: u64,
    stop: impl FnOnce(Server),
) -> (Vec<Ack>, u64) {
    let load = Arc::new(Load::default());
    let client = common::client();
    let key = server.admin_key();
    let handles: Vec<_> = (0..WRITERS)
        .map(|task| {
            rt.spawn(writer(
                load.clone(),
                client.clone(),
                server.url(),
                key.clone(),
                task,
            ))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    while load.acked.load(Ordering::Relaxed) < target && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Stop the server while the writers are still sending.
    stop(server);
    load.stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for handle in handles {
            handle.await.expect("ingest task panicked");
        }
    });
    let acks = std::mem::take(&mut *load.acks.lock().unwrap());
    (acks, load.errors.load(Ordering::Relaxed))
}

#[test]
fn sigkill_during_concurrent_ingest_loses_no_acknowledged_event() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let rt = common::runtime();
    let client = common::client();
    let mut all: Vec<Ack> = Vec::new();
    let mut server = Server::start(&data);
    for cycle in 0..3 {
        let (acks, errors) = load_then(&rt, server, 2_000, |s| s.kill());
        assert!(
            acks.len() >= 100,
            "cycle {cycle}: only {} events acknowledged ({errors} errors): the load did not run",
            acks.len()
        );
        eprintln!(
            "cycle {cycle}: {} acknowledged, {errors} failed or cut off",
            acks.len()
        );
        all.extend(acks);
        assert_unique(&all);

        // What is on disk right after the crash verifies.
        assert_verifies(&data, all.len(), &format!("after SIGKILL {cycle}"));

        // Restart on the same data dir: everything acknowledged so far is there, unchanged.
        server = Server::start(&data);
        let problems = rt.block_on(check_acks(
            &client,
            &server.url(),
            &server.admin_key(),
            &all,
        ));
        assert!(
            problems.is_empty(),
            "cycle {cycle}: {} of {} acknowledged events lost or changed, e.g.:\n{}",
            problems.len(),
            all.len(),
            problems[..problems.len().min(10)].join("\n")
        );
    }
    // The restarted server keeps extending the same chain.
    let more = rt.block_on(common::post_batch(
        &client,
        &server.url(),
        &server.admin_key(),
        (0..5).map(|n| common::event("crash.after", n)).collect(),
    ));
    all.extend(more);
    assert_unique(&all);
    let status = server.terminate();
    assert!(status.success(), "SIGTERM exit status {status}");
    assert_verifies(&data, all.len(), "at the end");
}

#[test]
fn sigterm_during_concurrent_ingest_drains_and_exits_zero() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let rt = common::runtime();
    let client = common::client();
    let server = Server::start(&data);
    let mut exit = None;
    let (acks, errors) = load_then(&rt, server, 1_000, |s| {
        let log = s.log_path();
        let status = s.terminate();
        exit = Some((status, std::fs::read_to_string(log).unwrap_or_default()));
    });
    let (status, log) = exit.expect("server stopped");
    assert!(
        status.success(),
        "SIGTERM exit status {status}; log:\n{log}"
    );
    assert!(
        acks.len() >= 100,
        "only {} events acknowledged ({errors} errors)",
        acks.len()
    );
    assert_unique(&acks);
    assert_verifies(&data, acks.len(), "after SIGTERM");
    let server = Server::start(&data);
    let problems = rt.block_on(check_acks(
        &client,
        &server.url(),
        &server.admin_key(),
        &acks,
    ));
    assert!(
        problems.is_empty(),
        "{} of {} acknowledged events lost or changed after SIGTERM, e.g.:\n{}",
        problems.len(),
        acks.len(),
        problems[..problems.len().min(10)].join("\n")
    );
    let status = server.terminate();
    assert!(status.success(), "second SIGTERM exit status {status}");
}
