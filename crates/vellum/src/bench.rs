//! `vellum bench`: a load generator posting realistic synthetic audit events over HTTP.
//!
//! Closed loop by default (each of `--concurrency` connections sends its next request when the
//! previous one is answered) to find the peak rate; with `--rate` it runs open loop at a fixed
//! event rate and measures latency from each request's *scheduled* start, so a stalled server
//! cannot hide its queueing delay (no coordinated omission).
//!
//! Bodies are generated before the clock starts (a pool of distinct requests reused in turn),
//! so the generator spends its CPU on HTTP, not on building JSON; its own CPU time is printed
//! beside the result because it shares the machine with the server.

use anyhow::bail;
use bytes::Bytes;
use serde_json::{Value, json};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vellum_server::ServerConfig;

#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Server URL (default: http://<listen address>).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// API key (default: VELLUM_API_KEY, then <data-dir>/admin.key).
    #[arg(long, env = "VELLUM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Events per request (1 = single-event bodies, more = {"events":[…]}).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Total events to send (after warm-up).
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Events sent before measuring starts.
    #[arg(long, default_value_t = 10_000)]
    warmup: u64,
    /// Open-loop target rate in events/s (default: closed loop, as fast as answered).
    #[arg(long)]
    rate: Option<f64>,
    /// Against a scale-out API node: `committed` (default there: each request waits until a
    /// worker committed its events, so latency is commit latency) or `queued` (202 once Redis
    /// holds them). Ignored by the embedded server, which always answers once durable.
    #[arg(long, value_name = "MODE", default_value = "committed", value_parser = ["committed", "queued"])]
    wait: String,
    /// Print the result as one JSON object as well.
    #[arg(long)]
    json: bool,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

use vellum_core::synthetic::{Rng, synthetic_event};

fn build_pool(batch: usize, count: usize) -> Vec<Bytes> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut n = 0u64;
    (0..count)
        .map(|_| {
            let body = if batch == 1 {
                n += 1;
                synthetic_event(&mut rng, n)
            } else {
                let events: Vec<Value> = (0..batch)
                    .map(|_| {
                        n += 1;
                        synthetic_event(&mut rng, n)
                    })
                    .collect();
                json!({ "events": events })
            };
            Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
        })
        .collect()
}

/// CPU seconds (user + system) this process has used, from /proc (Linux).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64)).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

struct Shared {
    next: AtomicU64,
    total_requests: u64,
    warmup_requests: u64,
    errors: status_counter::Counter,
}

/// Error counts keyed by HTTP status (or `timeout` / `connection`).
mod status_counter {
    use std::sync::Mutex;
    #[derive(Default)]
    pub(crate) struct Counter(Mutex<std::collections::BTreeMap<String, u64>>);
    impl Counter {
        pub(crate) fn add(&self, what: String) {
            if let Ok(mut map) = self.0.lock() {
                *map.entry(what).or_insert(0) += 1;
            }
        }
        pub(crate) fn snapshot(&self) -> std::collections::BTreeMap<String, u64> {
            self.0.lock().map(|m| m.clone()).unwrap_or_default()
        }
    }
}

pub(crate) fn run(config: &ServerConfig, args: &BenchArgs) -> anyhow::Result<ExitCode> {
    if args.batch == 0 || args.concurrency == 0 {
        bail!("--batch and --concurrency must be at least 1");
    }
    let key = crate::query::api_key(config, args.api_key.as_deref())?;
    let url = format!(
        "{}/v1/events{}",
        crate::query::base_url(config, args.url.as_deref()),
        if args.wait == "committed" {
            "?wait=committed"
        } else {
            ""
        }
    );
    let batch = args.batch as u64;
    let total_requests = args.events.div_ceil(batch);
    let warmup_requests = args.warmup.div_ceil(batch);
    let pool = Arc::new(build_pool(
        args.batch,
        1024.min(usize::try_from(total_requests + warmup_requests).unwrap_or(1024))
            .max(1),
    ));
    let avg_bytes = pool.iter().map(Bytes::len).sum::<usize>() / pool.len().max(1) / args.batch;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let shared = Arc::new(Shared {
        next: AtomicU64::new(0),
        total_requests: total_requests + warmup_requests,
        warmup_requests,
        errors: Default::default(),
    });
    let progress = if args.quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(args.events + warmup_requests * batch);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:40}] {pos}/{len} events {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    };
    let request_interval = args
        .rate
        .map(|r| Duration::from_secs_f64(batch as f64 / r.max(1e-9)));
    let cpu_before = process_cpu_seconds();
    let (latencies, measured, accepted) = runtime.block_on(async {
        let start = Instant::now();
        let measure_start = Arc::new(start_slot::Once::default());
        let mut tasks = Vec::new();
        for _ in 0..args.concurrency {
            let client = client.clone();
            let url = url.clone();
            let key = key.clone();
            let pool = pool.clone();
            let shared = shared.clone();
            let progress = progress.clone();
            let measure_start = measure_start.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies: Vec<u64> = Vec::new();
                let mut accepted = 0u64;
                loop {
                    let i = shared.next.fetch_add(1, Ordering::Relaxed);
                    if i >= shared.total_requests {
                        break;
                    }
                    if i == shared.warmup_requests {
                        measure_start.set(Instant::now());
                    }
                    let scheduled = match request_interval {
                        Some(every) => {
                            let at = start + every.mul_f64(i as f64);
                            tokio::time::sleep_until(at.into()).await;
                            at
                        }
                        None => Instant::now(),
                    };
                    let body = pool[usize::try_from(i).unwrap_or(0) % pool.len()].clone();
                    let result = client
                        .post(&url)
                        .bearer_auth(&key)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    let ok = match result {
                        Ok(response) => {
                            let status = response.status();
                            let _ = response.bytes().await;
                            if status.as_u16() == 201 || status.as_u16() == 202 {
                                true
                            } else {
                                shared.errors.add(status.as_u16().to_string());
                                false
                            }
                        }
                        Err(e) => {
                            shared.errors.add(if e.is_timeout() {
                                "timeout".into()
                            } else {
                                "connection".into()
                            });
                            false
                        }
                    };
                    progress.inc(batch);
                    if i >= shared.warmup_requests {
                        latencies.push(
                            u64::try_from(scheduled.elapsed().as_micros()).unwrap_or(u64::MAX),
                        );
                        if ok {
                            accepted += batch;
                        }
                    }
                }
                (latencies, accepted)
            }));
        }
        let mut all = Vec::new();
        let mut accepted = 0;
        for task in tasks {
            if let Ok((mut l, a)) = task.await {
                all.append(&mut l);
                accepted += a;
            }
        }
        let measured = measure_start
            .get()
            .map(|t| t.elapsed())
            .unwrap_or_else(|| start.elapsed());
        (all, measured, accepted)
    });
    progress.finish_and_clear();
    let cpu = match (cpu_before, process_cpu_seconds()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let mut latencies = latencies;
    latencies.sort_unstable();
    let secs = measured.as_secs_f64().max(1e-9);
    let events_per_sec = accepted as f64 / secs;
    let errors = shared.errors.snapshot();
    let result = json!({
        "url": url,
        "concurrency": args.concurrency,
        "batch": args.batch,
        "targetRate": args.rate,
        "eventBytes": avg_bytes,
        "requests": latencies.len(),
        "eventsAccepted": accepted,
        "seconds": secs,
        "eventsPerSecond": events_per_sec,
        "latencyMs": {
            "p50": percentile(&latencies, 50.0),
            "p99": percentile(&latencies, 99.0),
            "p999": percentile(&latencies, 99.9),
            "max": percentile(&latencies, 100.0),
        },
        "errors": errors,
        "generatorCpuSeconds": cpu,
    });
    println!(
        "{accepted} events in {secs:.2}s = {events_per_sec:.0} events/s ({} requests of {} events, ~{avg_bytes} B/event, concurrency {})",
        latencies.len(),
        args.batch,
        args.concurrency
    );
    println!(
        "latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}{}",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 99.9),
        percentile(&latencies, 100.0),
        args.rate
            .map(|r| format!("  (open loop at {r:.0} events/s)"))
            .unwrap_or_default()
    );
    if let Some(cpu) = cpu {
        println!(
            "generator CPU: {cpu:.2}s ({:.0}% of one core)",
            100.0 * cpu / secs
        );
    }
    if !errors.is_empty() {
        println!("errors: {errors:?}");
    }
    if args.json {
        println!("{result}");
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A write-once slot for the measurement start time.
mod start_slot {
    use std::sync::OnceLock;
    use std::time::Instant;
    #[derive(Default)]
    pub(crate) struct Once(OnceLock<Instant>);
    impl Once {
        pub(crate) fn set(&self, at: Instant) {
            let _ = self.0.set(at);
        }
        pub(crate) fn get(&self) -> Option<Instant> {
            self.0.get().copied()
        }
    }
}
