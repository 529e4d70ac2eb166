//! Forwarding throughput, end to end: how fast a [`Forwarder`] drains a backlog of committed
//! events from a real SQLite store to each kind of receiver on 127.0.0.1.
//!
//! ```sh
//! cargo bench -p vellum-forward --bench sinks                 # every scenario
//! cargo bench -p vellum-forward --bench sinks -- webhook      # scenarios whose name contains "webhook"
//! VELLUM_SINKS_EVENTS=50000 VELLUM_SINKS_RUNS=5 cargo bench -p vellum-forward --bench sinks
//! ```
//!
//! - **Store.** A real Vellum server (`vellum_server::start`, signatures on) in a temporary
//!   directory receives `VELLUM_SINKS_EVENTS` (default 50 000) synthetic events over HTTP in
//!   requests of 500: the ~1.1 KB events of `vellum bench`, one in eight carrying an SSN and a
//!   card number for the redactor. The server is then shut down (its indexer and checkpoints
//!   no longer compete for the CPU) and the forwarder gets its own `SqliteStore` handle on the
//!   directory, as the server hands it over. The total to forward is every committed event of
//!   every log (the client events plus the server's own audit events).
//! - **Receivers.** Each scenario's receiver is a child process (this binary, started with
//!   `VELLUM_SINKS_RECEIVER=<kind>`) on a multi-threaded tokio runtime, so its CPU time is
//!   measured apart from the forwarder's. It checks nothing but counts events: webhook bodies
//!   and OCSF arrays are parsed into `serde::de::IgnoredAny` (a full JSON scan, no
//!   allocation), Splunk HEC bodies are counted by line, syslog TCP frames by their RFC 6587
//!   octet-count prefix. It prints a line each time its count reaches a multiple of the total.
//!   `rsyslog-tcp` is a real `rsyslogd -n` instead (imtcp, octet counting, every message
//!   written raw to a file by omfile, as `tests/syslog.rs` runs it), whose output lines a
//!   thread of the bench counts every 5 ms; skipped when rsyslog is not installed.
//! - **A run.** A new sink name (so a fresh cursor at `seq` 0 of every log); the clock starts
//!   just before `Forwarder::start_with_secrets` and stops when the receiver has counted the
//!   total. The forwarder is then stopped (untimed) and its status checked: every event
//!   delivered, no retry, no dead letter.
//! - **Order.** One discarded warm-up round, then `VELLUM_SINKS_RUNS` (default 5) rounds; a
//!   round runs every selected scenario once, in turn, so drift on the shared machine hits all
//!   of them alike. Per scenario: median (min–max) events/s, and the CPU time (user + system,
//!   `/proc/<pid>/stat`) of the forwarder's process and of the receiver's during the runs, as
//!   a percentage of one core.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use vellum_forward::{Forwarder, SinkConfig, SinkKind, SyslogTransport};
use vellum_server::ServerConfig;
use vellum_store::AuditStore;
use vellum_store::sqlite::{SqliteOptions, SqliteStore};
use zeroize::Zeroizing;

const RECEIVER_ENV: &str = "VELLUM_SINKS_RECEIVER";
const TOTAL_ENV: &str = "VELLUM_SINKS_TOTAL";
const SECRET: &str = "bench-secret-0123456789abcdef0123";
/// Longest a single run may take before the bench gives up.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

fn main() {
    if let Ok(kind) = std::env::var(RECEIVER_ENV) {
        receiver_main(&kind);
        return;
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(filters));
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// The forwarder's side.

#[derive(Clone, Copy)]
enum Kind {
    Webhook,
    SyslogTcp,
    Rsyslog,
    Splunk,
    Ocsf,
}

impl Kind {
    fn receiver(self) -> &'static str {
        match self {
            Kind::Webhook => "webhook",
            Kind::SyslogTcp => "syslog-tcp",
            Kind::Rsyslog => "rsyslog-tcp",
            Kind::Splunk => "splunk",
            Kind::Ocsf => "ocsf",
        }
    }
}

struct Scenario {
    name: String,
    kind: Kind,
    batch_size: usize,
    receiver: Receiver,
    rates: Vec<f64>,
    forwarder_cpu: Duration,
    receiver_cpu: Duration,
    wall: Duration,
}

impl Scenario {
    fn sink(&self, run: &str) -> SinkConfig {
        let base = format!("http://{}", self.receiver.addr);
        let kind = match self.kind {
            Kind::Webhook => SinkKind::Webhook {
                url: format!("{base}/hook"),
                secret_env: "BENCH_SECRET".into(),
                ca_file: None,
            },
            Kind::SyslogTcp | Kind::Rsyslog => SinkKind::Syslog {
                transport: SyslogTransport::Tcp,
                address: self.receiver.addr.clone(),
                ca_file: None,
                server_name: None,
                app_name: "vellum".into(),
                facility: 13,
                enterprise_id: 32473,
            },
            Kind::Splunk => SinkKind::Splunk {
                url: base,
                token_env: "BENCH_SECRET".into(),
                index: Some("audit".into()),
                sourcetype: "vellum:audit".into(),
                ca_file: None,
            },
            Kind::Ocsf => SinkKind::Ocsf {
                url: format!("{base}/ocsf"),
                token_env: Some("BENCH_SECRET".into()),
                ca_file: None,
            },
        };
        let mut sink = SinkConfig::new(format!("{}-{run}", self.name), kind);
        sink.batch_size = self.batch_size;
        sink
    }
}

async fn run(filters: Vec<String>) {
    let events = env_number("VELLUM_SINKS_EVENTS", 50_000);
    let runs = env_number("VELLUM_SINKS_RUNS", 5);
    let all: Vec<(Kind, usize)> = vec![
        (Kind::Webhook, 100),
        (Kind::Webhook, 500),
        (Kind::SyslogTcp, 100),
        (Kind::SyslogTcp, 500),
        (Kind::Rsyslog, 100),
        (Kind::Rsyslog, 500),
        (Kind::Splunk, 100),
        (Kind::Splunk, 500),
        (Kind::Ocsf, 100),
        (Kind::Ocsf, 500),
    ];
    let selected: Vec<(Kind, usize, String)> = all
        .into_iter()
        .map(|(kind, batch)| (kind, batch, format!("{}-b{batch}", kind.receiver())))
        .filter(|(_, _, name)| filters.is_empty() || filters.iter().any(|f| name.contains(f)))
        .filter(|(kind, _, name)| {
            let missing = matches!(kind, Kind::Rsyslog) && !std::path::Path::new(RSYSLOGD).exists();
            if missing {
                eprintln!("{name}: skipped, {RSYSLOGD} is not installed (Debian package rsyslog)");
            }
            !missing
        })
        .collect();
    if selected.is_empty() {
        eprintln!("no scenario matches {filters:?}");
        return;
    }
    println!(
        "load average before: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );

    let dir = tempfile::tempdir().unwrap();
    let store = fill(dir.path(), events).await;
    let heads = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.log_heads().unwrap())
            .await
            .unwrap()
    };
    let total: u64 = heads.iter().map(|h| h.size).sum();
    println!(
        "store: {total} committed events in {} log(s) ({events} client events), database {:.1} MiB",
        heads.len(),
        dir_size(dir.path()) as f64 / (1024.0 * 1024.0)
    );

    println!(
        "server's own events: {:?}",
        own_events(&store, &heads).await
    );

    let mut scenarios: Vec<Scenario> = selected
        .into_iter()
        .map(|(kind, batch_size, name)| Scenario {
            name,
            kind,
            batch_size,
            receiver: Receiver::spawn(kind.receiver(), total),
            rates: Vec::new(),
            forwarder_cpu: Duration::ZERO,
            receiver_cpu: Duration::ZERO,
            wall: Duration::ZERO,
        })
        .collect();

    let dyn_store: Arc<dyn AuditStore> = store.clone();
    let mut scan_rates = Vec::new();
    for round in 0..=runs {
        let label = if round == 0 {
            "warm-up".to_owned()
        } else {
            format!("run {round}")
        };
        let (rate, wall) = scan_only(&dyn_store, &heads, 500).await;
        println!(
            "{label:>7} {:<16} {rate:>9.0} events/s  {:>6.2} s  (store read + to_api_json + parse, no sink)",
            "scan-only",
            wall.as_secs_f64()
        );
        if round > 0 {
            scan_rates.push(rate);
        }
        for scenario in &mut scenarios {
            let sink = scenario.sink(&format!("r{round}"));
            let (rate, forwarder_cpu, receiver_cpu, wall) =
                one_run(&dyn_store, sink, &mut scenario.receiver, total).await;
            println!(
                "{label:>7} {:<16} {rate:>9.0} events/s  {:>6.2} s  forwarder CPU {:>5.1} %  receiver CPU {:>5.1} %",
                scenario.name,
                wall.as_secs_f64(),
                percent(forwarder_cpu, wall),
                percent(receiver_cpu, wall),
            );
            if round > 0 {
                scenario.rates.push(rate);
                scenario.forwarder_cpu += forwarder_cpu;
                scenario.receiver_cpu += receiver_cpu;
                scenario.wall += wall;
            }
        }
    }

    println!(
        "\n{total} events per run, {runs} runs after a warm-up round; median (min–max)\n\n| sink | batchSize | events/s | forwarder CPU (% of a core) | receiver CPU (% of a core) |\n|---|---|---|---|---|"
    );
    scan_rates.sort_by(f64::total_cmp);
    println!(
        "| (none: read and parse only) | 500 | **{:.0}** ({:.0}–{:.0}) | | |",
        scan_rates[scan_rates.len() / 2],
        scan_rates[0],
        scan_rates[scan_rates.len() - 1],
    );
    for scenario in &scenarios {
        let mut rates = scenario.rates.clone();
        rates.sort_by(f64::total_cmp);
        println!(
            "| {} | {} | **{:.0}** ({:.0}–{:.0}) | {:.0} | {:.0} |",
            scenario.kind.receiver(),
            scenario.batch_size,
            rates[rates.len() / 2],
            rates[0],
            rates[rates.len() - 1],
            percent(scenario.forwarder_cpu, scenario.wall),
            percent(scenario.receiver_cpu, scenario.wall),
        );
    }
    println!(
        "load average after: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );

    for scenario in scenarios {
        scenario.receiver.stop();
    }
    let closing = store.clone();
    tokio::task::spawn_blocking(move || closing.shutdown())
        .await
        .unwrap();
}

/// One timed drain of the whole store to one sink: (events/s, forwarder CPU, receiver CPU,
/// wall time).
async fn one_run(
    store: &Arc<dyn AuditStore>,
    sink: SinkConfig,
    receiver: &mut Receiver,
    total: u64,
) -> (f64, Duration, Duration, Duration) {
    let name = sink.name.clone();
    let own_before = cpu_time(std::process::id());
    let receiver_before = cpu_time(receiver.child.id());
    let started = Instant::now();
    let forwarder = Forwarder::start_with_secrets(
        Arc::clone(store),
        vec![sink],
        "bench-host".into(),
        &|_name| Some(Zeroizing::new(SECRET.to_owned())),
    )
    .unwrap();
    let reached = tokio::time::timeout(RUN_TIMEOUT, receiver.reached.recv())
        .await
        .unwrap_or_else(|_| panic!("{name}: the receiver did not count {total} events in time"))
        .expect("receiver exited");
    let wall = started.elapsed();
    let own = cpu_time(std::process::id()) - own_before;
    let receiver_cpu = cpu_time(receiver.child.id()) - receiver_before;
    assert_eq!(reached % total, 0, "{name}: receiver count {reached}");
    // The receiver counts before it answers: give the last acknowledgement a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = forwarder.status().into_iter().next().unwrap();
    while status.delivered < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
        status = forwarder.status().into_iter().next().unwrap();
    }
    forwarder.stop().await;
    assert_eq!(status.delivered, total, "{name}: {status:?}");
    assert_eq!(status.retries, 0, "{name}: {status:?}");
    assert_eq!(status.dead_letters, 0, "{name}: {status:?}");
    (total as f64 / wall.as_secs_f64(), own, receiver_cpu, wall)
}

/// Actions of the events the server added itself (not of `synthetic_event`), with counts.
async fn own_events(
    store: &Arc<SqliteStore>,
    heads: &[vellum_store::LogHead],
) -> std::collections::BTreeMap<String, usize> {
    let store = Arc::clone(store);
    let logs: Vec<String> = heads.iter().map(|h| h.log_id.clone()).collect();
    tokio::task::spawn_blocking(move || {
        let mut own = std::collections::BTreeMap::new();
        for log in logs {
            for row in store.scan_log(&log, 0, usize::MAX).unwrap() {
                let event: Value = serde_json::from_str(&row.canonical).unwrap();
                let action = event["action"].as_str().unwrap_or("").to_owned();
                if !ACTIONS.iter().any(|(a, _, _)| *a == action) {
                    *own.entry(action).or_insert(0) += 1;
                }
            }
        }
        own
    })
    .await
    .unwrap()
}

/// What the forwarder does for every event before a sink sees it, without a sink: `scan_log`
/// pages of `page` on the blocking pool, `to_api_json`, parse. The ceiling of any sink.
async fn scan_only(
    store: &Arc<dyn AuditStore>,
    heads: &[vellum_store::LogHead],
    page: usize,
) -> (f64, Duration) {
    let store = Arc::clone(store);
    let logs: Vec<(String, u64)> = heads.iter().map(|h| (h.log_id.clone(), h.size)).collect();
    let started = Instant::now();
    let mut events = 0u64;
    for (log, size) in logs {
        let mut next = 0u64;
        while next < size {
            let (store, log_id) = (Arc::clone(&store), log.clone());
            let parsed = tokio::task::spawn_blocking(move || {
                let rows = store.scan_log(&log_id, next, page).unwrap();
                let last = rows.last().map_or(next, |r| r.seq + 1);
                let values: Vec<Value> = rows
                    .iter()
                    .map(|r| serde_json::from_str(&r.to_api_json()).unwrap())
                    .collect();
                (last, values.len() as u64)
            })
            .await
            .unwrap();
            if parsed.1 == 0 {
                break;
            }
            next = parsed.0;
            events += parsed.1;
        }
    }
    let wall = started.elapsed();
    (events as f64 / wall.as_secs_f64(), wall)
}

fn percent(cpu: Duration, wall: Duration) -> f64 {
    100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9)
}

/// User + system CPU time of a process (all threads), from `/proc/<pid>/stat` (clock ticks of
/// 10 ms).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, after)) = stat.rsplit_once(") ") else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(std::fs::Metadata::is_file)
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Starts a real server on `dir`, posts `events` synthetic events in requests of 500, shuts
/// the server down and opens the store for the forwarder.
async fn fill(dir: &std::path::Path, events: usize) -> Arc<SqliteStore> {
    let server = vellum_server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        crypto_secret: Some(Zeroizing::new(SECRET.to_owned())),
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    let key = std::fs::read_to_string(dir.join("admin.key"))
        .unwrap()
        .trim()
        .to_owned();
    let url = format!("http://{}/v1/events", server.addr);
    let http = reqwest::Client::new();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let started = Instant::now();
    let mut n = 0u64;
    while (n as usize) < events {
        let batch: Vec<Value> = (0..500.min(events - n as usize))
            .map(|_| {
                n += 1;
                synthetic_event(&mut rng, n)
            })
            .collect();
        let response = http
            .post(&url)
            .bearer_auth(&key)
            .json(&json!({ "events": batch }))
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert!(
            status.is_success(),
            "{status}: {}",
            response.text().await.unwrap_or_default()
        );
    }
    println!(
        "fill: {events} events posted in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    server.shutdown().await.unwrap();
    let path = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        SqliteStore::open(
            &path,
            SqliteOptions {
                run_indexer: false,
                ..SqliteOptions::default()
            },
        )
    })
    .await
    .unwrap()
    .unwrap()
}

use vellum_core::synthetic::{ACTIONS, Rng, synthetic_event};

/// A receiver child process and the counts it reports.
struct Receiver {
    child: Child,
    addr: String,
    reached: mpsc::UnboundedReceiver<u64>,
    /// rsyslogd's configuration, work directory and output.
    _dir: Option<tempfile::TempDir>,
}

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

impl Receiver {
    fn spawn(kind: &str, total: u64) -> Self {
        if kind == "rsyslog-tcp" {
            return Self::rsyslogd(total);
        }
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(RECEIVER_ENV, kind)
            .env(TOTAL_ENV, total.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let addr = first
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("receiver said {first:?}"))
            .to_owned();
        let (tx, reached) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(count) = line.strip_prefix("reached ")
                    && tx.send(count.parse().unwrap()).is_err()
                {
                    return;
                }
            }
        });
        Self {
            child,
            addr,
            reached,
            _dir: None,
        }
    }

    /// A real rsyslogd (imtcp, octet counting) writing every message raw to a file, as the
    /// syslog tests run it; a thread here counts the file's lines every 5 ms.
    fn rsyslogd(total: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let out = dir.path().join("received.log");
        let conf = format!(
            r#"global(workDirectory="{work}" maxMessageSize="64k")
module(load="imtcp")
template(name="raw" type="string" string="%rawmsg%\n")
ruleset(name="fwd") {{
  action(type="omfile" file="{out}" template="raw")
}}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="fwd")
"#,
            work = work.display(),
            out = out.display(),
        );
        let conf_path = dir.path().join("rsyslog.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(&conf_path)
            .arg("-i")
            .arg(dir.path().join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(child.try_wait().unwrap().is_none(), "rsyslogd exited");
            assert!(Instant::now() < deadline, "rsyslogd not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        let (tx, reached) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut file = loop {
                match std::fs::File::open(&out) {
                    Ok(file) => break file,
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            };
            let mut lines = 0u64;
            let mut chunk = vec![0u8; 1 << 20];
            loop {
                let read = std::io::Read::read(&mut file, &mut chunk).unwrap_or(0);
                if read == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                let before = lines;
                lines += chunk[..read].iter().filter(|&&b| b == b'\n').count() as u64;
                if lines / total > before / total && tx.send(lines / total * total).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            addr: format!("127.0.0.1:{port}"),
            reached,
            _dir: Some(dir),
        }
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The receiver's side (a child process).

struct Counter {
    count: AtomicU64,
    total: u64,
}

impl Counter {
    fn add(&self, n: u64) {
        if n == 0 {
            return;
        }
        let after = self.count.fetch_add(n, Ordering::SeqCst) + n;
        let before = after - n;
        if after / self.total > before / self.total {
            let mut out = std::io::stdout().lock();
            writeln!(out, "reached {}", after / self.total * self.total).unwrap();
            out.flush().unwrap();
        }
    }
}

fn receiver_main(kind: &str) {
    let total: u64 = std::env::var(TOTAL_ENV).unwrap().parse().unwrap();
    let counter = Arc::new(Counter {
        count: AtomicU64::new(0),
        total: total.max(1),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening {}", listener.local_addr().unwrap()).unwrap();
            out.flush().unwrap();
        }
        match kind {
            "syslog-tcp" => syslog_tcp(listener, counter).await,
            "webhook" | "splunk" | "ocsf" => http(listener, counter, kind.to_owned()).await,
            other => panic!("unknown receiver {other}"),
        }
    });
}

#[derive(Deserialize)]
struct WebhookBody {
    events: Vec<IgnoredAny>,
}

async fn http(listener: tokio::net::TcpListener, counter: Arc<Counter>, kind: String) {
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let counter = counter.clone();
        let kind = kind.clone();
        async move {
            let events = match kind.as_str() {
                "webhook" => serde_json::from_slice::<WebhookBody>(&body).map(|b| b.events.len()),
                "ocsf" => serde_json::from_slice::<Vec<IgnoredAny>>(&body).map(|b| b.len()),
                // Stacked HEC envelopes, one per line.
                _ => Ok(body
                    .split(|&b| b == b'\n')
                    .filter(|line| !line.is_empty())
                    .count()),
            };
            match events {
                Ok(n) => {
                    counter.add(n as u64);
                    (
                        axum::http::StatusCode::OK,
                        r#"{"text":"Success","code":0}"#.to_owned(),
                    )
                }
                Err(e) => (axum::http::StatusCode::BAD_REQUEST, e.to_string()),
            }
        }
    });
    axum::serve(listener, app).await.unwrap();
}

/// RFC 6587 octet counting: `MSG-LEN SP SYSLOG-MSG`, repeated.
async fn syslog_tcp(listener: tokio::net::TcpListener, counter: Arc<Counter>) {
    loop {
        let (mut socket, _) = listener.accept().await.unwrap();
        let counter = counter.clone();
        tokio::spawn(async move {
            let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
            let mut chunk = vec![0u8; 256 * 1024];
            loop {
                let read = match socket.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..read]);
                let mut at = 0;
                let mut frames = 0;
                while let Some(space) = buf[at..].iter().position(|&b| b == b' ') {
                    let len: usize = std::str::from_utf8(&buf[at..at + space])
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .expect("octet count");
                    let end = at + space + 1 + len;
                    if end > buf.len() {
                        break;
                    }
                    frames += 1;
                    at = end;
                }
                buf.drain(..at);
                counter.add(frames);
            }
        });
    }
}
