//! Client-side costs (issue 7): what a `log` call costs the application, what a
//! guaranteed-delivery append costs, how fast a spool fills and drains, and what the audit
//! layer adds to a request.
//!
//! `cargo bench -p vellum-client --bench client` (add `-- --quick` for one short round).
//! Everything runs on this machine: a real Vellum server (embedded store) on 127.0.0.1, the
//! client in the same process, so the figures include loopback HTTP and the server's own
//! durable commit. Each figure is the median of the rounds with min and max beside it
//! (BENCHMARKING.md); the fsync probe runs before and after, since spool appends and the
//! server's commits are fsync-bound.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vellum_client::middleware::{AuditConfig, AuditLayer};
use vellum_client::{BreakerConfig, Client, Delivery, Event, PrincipalType, RetryPolicy, Status};

fn event(n: u64) -> Event {
    Event::new("fhir.observation.read", Status::Success)
        .principal("dr-ana", PrincipalType::Professional)
        .organization("clinic-1")
        .target("Observation", format!("obs-{n}"))
        .patient(format!("p-{}", n % 97))
        .detail("n", n)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Median, min, max of a list of figures.
fn summary(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(f64::total_cmp);
    (xs[xs.len() / 2], xs[0], xs[xs.len() - 1])
}

/// 4 KiB write + fdatasync for `seconds`, in `dir`; the median latency in ms.
fn fsync_probe(dir: &Path, seconds: f64) -> f64 {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = [0u8; 4096];
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        file.write_all(&block).unwrap();
        file.sync_data().unwrap();
        lat.push(t.elapsed());
    }
    let _ = std::fs::remove_file(&path);
    lat.sort();
    micros(percentile(&lat, 0.5)) / 1000.0
}

async fn start_server(dir: &Path) -> (vellum_server::RunningServer, String, String) {
    let config = vellum_server::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        crypto_secret: Some(zeroize::Zeroizing::new(
            "bench-secret-0123456789abcdef0123".to_owned(),
        )),
        ..vellum_server::ServerConfig::default()
    };
    let server = vellum_server::start(config).await.unwrap();
    let key = std::fs::read_to_string(dir.join("admin.key"))
        .unwrap()
        .trim()
        .to_owned();
    let url = format!("http://{}", server.addr);
    (server, url, key)
}

fn client(url: &str, key: &str, spool: Option<&Path>) -> Client {
    let mut b = Client::builder()
        .url(url)
        .api_key(key)
        .retry(RetryPolicy {
            max_attempts: 3,
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        })
        .breaker(BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_millis(200),
        });
    if let Some(dir) = spool {
        b = b.spool_dir(dir);
    }
    b.build().unwrap()
}

/// Sequential `log` calls against the same event POSTed with a bare HTTP client (reqwest,
/// one request per event, alternating with `log`): the difference is what the client adds.
async fn log_latency(url: &str, key: &str, n: usize) -> [(Duration, Duration); 2] {
    let c = client(url, key, None);
    let raw = reqwest::Client::new();
    let events_url = format!("{url}/v1/events");
    let mut lat = [Vec::with_capacity(n), Vec::with_capacity(n)];
    for i in 0..(n + 50) as u64 {
        let t = Instant::now();
        c.log(event(i)).await.unwrap();
        let client_time = t.elapsed();
        let body = event(i)
            .with_idempotency_key(uuid::Uuid::now_v7().to_string())
            .into_json();
        let t = Instant::now();
        let r = raw
            .post(&events_url)
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let _ = r.bytes().await.unwrap();
        let raw_time = t.elapsed();
        if i >= 50 {
            lat[0].push(client_time);
            lat[1].push(raw_time);
        }
    }
    lat.map(|mut l| {
        l.sort();
        (percentile(&l, 0.5), percentile(&l, 0.99))
    })
}

/// `log` from `callers` concurrent tasks: events/s the batching reaches.
async fn log_throughput(url: &str, key: &str, callers: u64, total: u64) -> f64 {
    let c = client(url, key, None);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let c = c.clone();
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    c.log(event(1)).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// Guaranteed-delivery appends with the server down (the spool alone): the latency of one
/// sequential caller, and events/s with `producers` concurrent callers (group fsync).
async fn spool_append(dir: &Path, producers: u64, total: u64) -> (Duration, Duration, f64) {
    // A closed port: delivery fails fast and the breaker keeps it quiet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = client(&format!("http://127.0.0.1:{port}"), "unused", Some(dir));
    let mut lat = Vec::new();
    for i in 0..300 {
        let t = Instant::now();
        c.log_with_guaranteed_delivery(event(i), Delivery::default())
            .await
            .unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..producers)
        .map(|_| {
            let c = c.clone();
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    c.log_with_guaranteed_delivery(event(2), Delivery::default())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    c.shutdown().await;
    (percentile(&lat, 0.5), percentile(&lat, 0.99), rate)
}

/// Drain rate: a spool holding `total` events delivered to a running server.
async fn spool_drain(dir: &Path, url: &str, key: &str, total: u64) -> f64 {
    {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let filler = client(&format!("http://127.0.0.1:{port}"), "unused", Some(dir));
        let tasks: Vec<_> = (0..32)
            .map(|t| {
                let c = filler.clone();
                tokio::spawn(async move {
                    for i in (t..total).step_by(32) {
                        c.log_with_guaranteed_delivery(event(i), Delivery::default())
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        filler.shutdown().await;
    }
    let start = Instant::now();
    let c = client(url, key, Some(dir));
    assert!(c.drain(Duration::from_secs(600)).await);
    let rate = total as f64 / start.elapsed().as_secs_f64();
    c.shutdown().await;
    rate
}

/// Request latency of a small axum handler over TCP, with and without the audit layer
/// (fail-open, events to a spool), measured alternately.
async fn layer_overhead(dir: &Path, url: &str, key: &str, n: usize) -> [(Duration, Duration); 2] {
    use axum::Router;
    use axum::routing::get;
    let app = || Router::new().route("/patients/{id}", get(|| async { "{\"id\":\"p-1\"}" }));
    let c = client(url, key, Some(dir));
    let audited = app().layer(AuditLayer::new(c.clone(), AuditConfig::healthcare()));
    let mut addrs = Vec::new();
    for router in [app(), audited] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    }
    let http = reqwest::Client::new();
    let mut lat = [Vec::new(), Vec::new()];
    for i in 0..(n + 100) {
        for (k, addr) in addrs.iter().enumerate() {
            let t = Instant::now();
            let r = http
                .get(format!("http://{addr}/patients/p-{i}"))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
            let _ = r.bytes().await.unwrap();
            if i >= 100 {
                lat[k].push(t.elapsed());
            }
        }
    }
    assert!(c.drain(Duration::from_secs(120)).await);
    c.shutdown().await;
    lat.map(|mut l| {
        l.sort();
        (percentile(&l, 0.5), percentile(&l, 0.99))
    })
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 1 } else { 5 };
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "fsync probe before: median {:.3} ms",
        fsync_probe(tmp.path(), 5.0)
    );
    let (server, url, key) = rt.block_on(start_server(&tmp.path().join("server")));
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    let mut raw50 = Vec::new();
    let mut raw99 = Vec::new();
    let mut rates = Vec::new();
    let mut ap50 = Vec::new();
    let mut ap99 = Vec::new();
    let mut arates = Vec::new();
    let mut drains = Vec::new();
    let mut plain = (Vec::new(), Vec::new());
    let mut audited = (Vec::new(), Vec::new());
    for round in 0..rounds {
        rt.block_on(async {
            let [(p50, p99), (r50, r99)] = log_latency(&url, &key, 2000).await;
            p50s.push(micros(p50));
            p99s.push(micros(p99));
            raw50.push(micros(r50));
            raw99.push(micros(r99));
            rates.push(log_throughput(&url, &key, 64, 20_000).await);
            let dir = tmp.path().join(format!("spool-append-{round}"));
            let (p50, p99, rate) = spool_append(&dir, 64, 20_000).await;
            ap50.push(micros(p50));
            ap99.push(micros(p99));
            arates.push(rate);
            let dir = tmp.path().join(format!("spool-drain-{round}"));
            drains.push(spool_drain(&dir, &url, &key, 20_000).await);
            let dir = tmp.path().join(format!("spool-layer-{round}"));
            let [p, a] = layer_overhead(&dir, &url, &key, 2000).await;
            plain.0.push(micros(p.0));
            plain.1.push(micros(p.1));
            audited.0.push(micros(a.0));
            audited.1.push(micros(a.1));
        });
        eprintln!("round {} of {rounds} done", round + 1);
    }
    let show = |name: &str, xs: Vec<f64>, unit: &str| {
        let (m, lo, hi) = summary(xs);
        println!("{name:<52} {m:>10.0} {unit}  ({lo:.0}–{hi:.0})");
    };
    println!("median of {rounds} rounds (min–max)");
    show("log(): one caller, p50", p50s, "µs");
    show("log(): one caller, p99", p99s, "µs");
    show("same event, bare reqwest POST, p50", raw50, "µs");
    show("same event, bare reqwest POST, p99", raw99, "µs");
    show("log(): 64 callers, events/s", rates, "/s");
    show(
        "log_with_guaranteed_delivery(): one caller, p50",
        ap50,
        "µs",
    );
    show(
        "log_with_guaranteed_delivery(): one caller, p99",
        ap99,
        "µs",
    );
    show(
        "log_with_guaranteed_delivery(): 64 callers, events/s",
        arates,
        "/s",
    );
    show("spool drain to the server, events/s", drains, "/s");
    show("GET without audit layer, p50", plain.0, "µs");
    show("GET without audit layer, p99", plain.1, "µs");
    show(
        "GET with audit layer (healthcare, spool), p50",
        audited.0,
        "µs",
    );
    show(
        "GET with audit layer (healthcare, spool), p99",
        audited.1,
        "µs",
    );
    rt.block_on(async { server.shutdown().await.unwrap() });
    println!(
        "fsync probe after: median {:.3} ms",
        fsync_probe(tmp.path(), 5.0)
    );
}
