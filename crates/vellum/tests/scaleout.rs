//! The scale-out shape end to end (SPEC §1), with real processes, the machine's PostgreSQL and
//! Redis: API nodes (`vellum serve` with AUDIT_DB_URL and AUDIT_REDIS_URL) queue events on
//! Redis Streams, workers (`vellum worker`) write them to PostgreSQL.
//!
//! Each test gets its own PostgreSQL database and queue name, so the tests run in parallel
//! with each other and with everything else using these services. Without
//! `VELLUM_TEST_PG_URL` / `VELLUM_TEST_REDIS_URL` they skip, unless `VELLUM_REQUIRE_SERVICES=1`
//! (CI), where a missing service fails them.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{ChildGuard, SECRET, Server, StartError, free_port, http_status, vellum};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The services' URLs, or `None` (skip) when they are not configured and not required.
fn services() -> Option<(String, String)> {
    let required = std::env::var("VELLUM_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
    let pg = std::env::var("VELLUM_TEST_PG_URL")
        .ok()
        .filter(|v| !v.is_empty());
    let redis = std::env::var("VELLUM_TEST_REDIS_URL")
        .ok()
        .filter(|v| !v.is_empty());
    match (pg, redis) {
        (Some(pg), Some(redis)) => Some((pg, redis)),
        _ if required => panic!(
            "VELLUM_REQUIRE_SERVICES=1 but VELLUM_TEST_PG_URL or VELLUM_TEST_REDIS_URL is not set"
        ),
        _ => {
            eprintln!("skipping: VELLUM_TEST_PG_URL and VELLUM_TEST_REDIS_URL not set");
            None
        }
    }
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("randomness");
    hex::encode(bytes)
}

/// Replaces the database of a PostgreSQL URL.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let prefix = match base.rfind('/') {
        Some(i) if base[..i].contains("://") && i > base.find("://").unwrap() + 2 => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{prefix}/{db}?{q}"),
        None => format!("{prefix}/{db}"),
    }
}

async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to PostgreSQL for the test: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// One test's private slice of the services: a database, a queue name, a directory.
struct ScaleEnv {
    admin_url: String,
    db: String,
    db_url: String,
    queue: String,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl ScaleEnv {
    async fn new(pg: &str, partitions: u32) -> Self {
        let db = format!("vt_{}", random_suffix());
        let admin = pg_client(pg).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .expect("creating the test database");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("vellum.toml");
        std::fs::write(
            &config,
            format!(
                "queuePartitions = {partitions}\nlogPerOrganization = true\ncommitWaitMs = 60000\ncheckpointIntervalMs = 500\n"
            ),
        )
        .expect("config");
        ScaleEnv {
            admin_url: pg.to_owned(),
            db_url: with_database(pg, &db),
            db,
            queue: format!("vt-{}", random_suffix()),
            dir,
            config,
        }
    }

    fn command(&self, name: &str, redis_url: &str) -> Command {
        let mut cmd = vellum(self.dir.path());
        cmd.env("AUDIT_CRYPTO_SECRET", SECRET)
            .env("AUDIT_DB_URL", &self.db_url)
            .env("AUDIT_REDIS_URL", redis_url)
            .env("AUDIT_QUEUE_NAME", &self.queue)
            .env("VELLUM_NODE_ID", name)
            .arg("--config")
            .arg(&self.config);
        cmd
    }

    fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts an API node.
    fn api(&self, name: &str, redis_url: &str) -> Server {
        let data_dir = self.data_dir(name);
        for attempt in 0..8 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut cmd = self.command(name, redis_url);
            cmd.arg("serve")
                .arg("--data-dir")
                .arg(&data_dir)
                .arg("--listen")
                .arg(addr.to_string());
            let log = self.dir.path().join(format!("{name}-{attempt}.log"));
            match Server::spawn(cmd, addr, &data_dir, &log) {
                Ok(server) => return server,
                Err(StartError::Exited(_, stderr)) if stderr.contains("binding") => continue,
                Err(e) => panic!("API node {name} did not start: {e:?}"),
            }
        }
        panic!("API node {name} could not bind a port");
    }

    /// Starts a worker, with its health endpoint on a free port.
    fn worker(&self, name: &str, redis_url: &str) -> Worker {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = self.dir.path().join(format!("{name}.log"));
        let mut cmd = self.command(name, redis_url);
        cmd.env("VELLUM_LOG", "info")
            .arg("worker")
            .arg("--data-dir")
            .arg(self.data_dir(name))
            .arg("--listen")
            .arg(addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log")));
        let child = ChildGuard(Some(cmd.spawn().expect("spawning vellum worker")));
        let deadline = Instant::now() + common::HEALTH_WAIT;
        while http_status(addr, "/healthz") != Some(200) {
            assert!(
                Instant::now() < deadline,
                "worker {name} did not come up: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Worker { child, addr, log }
    }

    /// `(log_id, count, min seq, max seq)` per log, and every stored event id.
    async fn stored(&self) -> (Vec<(String, i64, i64, i64)>, HashMap<String, (i64, String)>) {
        let client = pg_client(&self.db_url).await;
        let logs = client
            .query(
                "SELECT log_id, count(*), min(seq), max(seq) FROM vellum.events GROUP BY log_id",
                &[],
            )
            .await
            .expect("counting events");
        let logs = logs
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        let rows = client
            .query(
                "SELECT id::text, seq, encode(hash, 'hex') FROM vellum.events",
                &[],
            )
            .await
            .expect("listing events");
        let ids = rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    (r.get::<_, i64>(1), r.get::<_, String>(2)),
                )
            })
            .collect();
        (logs, ids)
    }

    async fn drop_database(&self) {
        let admin = pg_client(&self.admin_url).await;
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db))
            .await;
    }
}

struct Worker {
    child: ChildGuard,
    addr: SocketAddr,
    log: PathBuf,
}

impl Worker {
    fn kill(mut self) {
        if let Some(mut child) = self.child.0.take() {
            child.kill().expect("SIGKILL");
            let _ = child.wait();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// What the load saw acknowledged.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    /// Event id → (log, seq, hash) for 201s; (log, -1, "") for 202s.
    acked: Mutex<HashMap<String, (String, i64, String)>>,
    unavailable: AtomicU64,
    other_errors: AtomicU64,
}

/// Posts batches to the nodes in turn until stopped: half queued (202), half
/// `?wait=committed` (201), events of four organizations.
async fn load(load: Arc<Load>, urls: Vec<String>, key: String, task: u64) {
    let client = common::client();
    let mut i = 0u64;
    while !load.stop.load(Ordering::Relaxed) && i < 100_000 {
        let url = &urls[(i as usize + task as usize) % urls.len()];
        let committed = i.is_multiple_of(2);
        let events: Vec<Value> = (0..10)
            .map(|k| {
                let mut e = common::event("scale.write", task * 1_000_000 + i * 10 + k);
                e["organizationId"] = json!(format!("org-{}", (i + k) % 4));
                e
            })
            .collect();
        i += 1;
        let target = if committed {
            format!("{url}/v1/events?wait=committed")
        } else {
            format!("{url}/v1/events")
        };
        let response = client
            .post(target)
            .bearer_auth(&key)
            .json(&json!({ "events": events }))
            .send()
            .await;
        let Ok(response) = response else {
            load.other_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let status = response.status().as_u16();
        let retry_after = response.headers().contains_key("retry-after");
        let Ok(body) = response.json::<Value>().await else {
            load.other_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        match status {
            201 | 202 => {
                assert_eq!(status, if committed { 201 } else { 202 }, "{body}");
                let mut acked = load.acked.lock().unwrap();
                for entry in body["accepted"].as_array().expect("accepted[]") {
                    let id = entry["id"].as_str().expect("id").to_owned();
                    let log = entry["logId"].as_str().expect("logId").to_owned();
                    let seq = entry["seq"].as_i64().unwrap_or(-1);
                    let hash = entry["hash"].as_str().unwrap_or_default().to_owned();
                    acked.insert(id, (log, seq, hash));
                }
            }
            503 => {
                assert!(retry_after, "a 503 without Retry-After: {body}");
                load.unavailable.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => panic!("unexpected {status}: {body}"),
        }
    }
}

/// Waits until every acknowledged event is in PostgreSQL, then checks: each exactly once,
/// receipts as promised, every log's `seq` from 0 without a gap, and `POST /v1/verify` ok.
async fn check_everything_arrived(env: &ScaleEnv, load: &Load, api: &Server, key: &str) {
    let acked = load.acked.lock().unwrap().clone();
    assert!(!acked.is_empty(), "the load acknowledged nothing");
    let deadline = Instant::now() + Duration::from_secs(120);
    let (logs, stored) = loop {
        let (logs, stored) = env.stored().await;
        let missing = acked.keys().filter(|id| !stored.contains_key(*id)).count();
        if missing == 0 {
            break (logs, stored);
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} acknowledged events never reached PostgreSQL",
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for (id, (_, seq, hash)) in &acked {
        if *seq >= 0 {
            let (stored_seq, stored_hash) = &stored[id];
            assert_eq!(
                (seq, hash),
                (stored_seq, stored_hash),
                "receipt of {id} differs"
            );
        }
    }
    for (log, count, min, max) in &logs {
        assert_eq!(*min, 0, "log {log} does not start at seq 0");
        assert_eq!(*count, max + 1, "log {log} has a gap or a duplicate in seq");
    }
    let response = common::client()
        .post(format!("{}/v1/verify", api.url()))
        .bearer_auth(key)
        .json(&json!({}))
        .send()
        .await
        .expect("verify");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("verify JSON");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], json!(true), "verification failed: {body}");
}

#[test]
fn two_api_nodes_two_workers_a_worker_killed_mid_stream_nothing_lost_nothing_twice() {
    let Some((pg, redis)) = services() else {
        return;
    };
    let rt = common::runtime();
    let env = rt.block_on(ScaleEnv::new(&pg, 4));
    let w1 = env.worker("w1", &redis);
    let w2 = env.worker("w2", &redis);
    let a1 = env.api("a1", &redis);
    let key = a1.admin_key();
    let a2 = env.api("a2", &redis);
    let load_state = Arc::new(Load::default());
    let urls = vec![a1.url(), a2.url()];
    let tasks: Vec<_> = (0..4)
        .map(|t| rt.spawn(load(load_state.clone(), urls.clone(), key.clone(), t)))
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let before_kill = load_state.acked.lock().unwrap().len();
    let w1_log = w1.log_text();
    w1.kill();
    std::thread::sleep(Duration::from_secs(5));
    load_state.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        rt.block_on(t).expect("load task");
    }
    let total = load_state.acked.lock().unwrap().len();
    assert!(
        total > before_kill,
        "nothing was acknowledged after the kill"
    );
    rt.block_on(check_everything_arrived(&env, &load_state, &a1, &key));
    // `vellum verify` reads PostgreSQL directly: every hash, signature, link, tree, checkpoint.
    let mut verify = env.command("verify", &redis);
    verify.arg("verify");
    let out = common::run(verify, common::CLI_LIMIT);
    let report = common::text(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        common::text(&out.stderr)
    );
    assert!(
        report.contains("OK") && !report.contains("FAILURES"),
        "{report}"
    );
    // The survivor took every partition over.
    let ready: Value = rt.block_on(async {
        common::client()
            .get(format!("http://{}/readyz", w2.addr))
            .send()
            .await
            .expect("readyz")
            .json()
            .await
            .expect("json")
    });
    assert_eq!(
        ready["partitionsOwned"],
        json!(4),
        "{ready}\n{}",
        w2.log_text()
    );
    assert!(w1_log.contains("took partitions"), "{w1_log}");
    drop((a1, a2, w2));
    rt.block_on(env.drop_database());
}

/// A private Redis server (append-only file, fsync on every write, as a production queue
/// must be configured) that the test may stop and restart without disturbing anyone else.
struct PrivateRedis {
    child: ChildGuard,
    port: u16,
    dir: PathBuf,
}

impl PrivateRedis {
    fn start(dir: &Path, port: u16) -> Self {
        std::fs::create_dir_all(dir).expect("redis dir");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning redis-server (Debian package redis-server)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        PrivateRedis {
            child: ChildGuard(Some(child)),
            port,
            dir: dir.to_owned(),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: what survives is what was fsynced).
    fn crash(&mut self) {
        if let Some(mut child) = self.child.0.take() {
            child.kill().expect("SIGKILL redis");
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory.
    fn restart(&mut self) {
        *self = PrivateRedis::start(&self.dir.clone(), self.port);
    }
}

/// Posts one event (no wait) until the node answers 503 with `Retry-After`, which it must
/// while Redis is down; panics if it never does.
async fn until_unavailable(url: &str, key: &str) -> u16 {
    let client = common::client();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = client
            .post(format!("{url}/v1/events"))
            .bearer_auth(key)
            .json(&common::event("probe.down", 0))
            .send()
            .await
            .expect("the API node answers while Redis is down");
        let status = response.status().as_u16();
        if status == 503 {
            assert!(response.headers().contains_key("retry-after"));
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the API node never said 503 while Redis was down (last {status})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A private PostgreSQL cluster (initdb into the test's directory, a free port) that the test
/// may crash (`pg_ctl stop -m immediate`: no shutdown checkpoint, WAL recovery on restart) and
/// start again without disturbing anyone else. `None` when the PostgreSQL server binaries are
/// not installed.
struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    fn start(dir: &Path) -> Option<Self> {
        let versions = std::fs::read_dir("/usr/lib/postgresql").ok()?;
        let bin = versions
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").exists())
            .max()?;
        std::fs::create_dir_all(dir).expect("pg dir");
        // initdb refuses to run as root: run the cluster as the `postgres` user then.
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("chmod");
        let pg = PrivatePostgres {
            bin,
            data: dir.join("data"),
            port: free_port(),
        };
        let out = pg
            .as_postgres(&pg.bin.join("initdb"))
            .arg("-D")
            .arg(&pg.data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            common::text(&out.stderr)
        );
        pg.start_server();
        Some(pg)
    }

    fn as_postgres(&self, program: &Path) -> Command {
        // /proc/self belongs to the effective user.
        let root = std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false);
        if root {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        }
    }

    fn start_server(&self) {
        let socket_dir = self.data.parent().expect("parent");
        let out = self
            .as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on",
                self.port,
                socket_dir.display()
            ))
            .arg("-l")
            .arg(socket_dir.join("postgres.log"))
            .args(["-w", "start"])
            .output()
            .expect("pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            common::text(&out.stderr)
        );
    }

    /// Crash: immediate stop, every session cut, recovery from WAL at the next start.
    fn crash(&self) {
        let out = self
            .as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output()
            .expect("pg_ctl stop");
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            common::text(&out.stderr)
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

#[test]
fn redis_and_postgres_crash_and_restart_mid_stream_lose_nothing() {
    let Some(_) = services() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    // The cluster may run as another user (root cannot run PostgreSQL): let it in.
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .expect("chmod");
    let Some(postgres) = PrivatePostgres::start(&tmp.path().join("pg")) else {
        assert!(
            std::env::var("VELLUM_REQUIRE_SERVICES").is_err(),
            "VELLUM_REQUIRE_SERVICES=1 but the PostgreSQL server binaries are not installed"
        );
        eprintln!("skipping: no PostgreSQL server binaries (/usr/lib/postgresql/*/bin)");
        return;
    };
    let rt = common::runtime();
    let env = rt.block_on(ScaleEnv::new(&postgres.url(), 2));
    let mut redis = PrivateRedis::start(&env.dir.path().join("redis"), free_port());
    let redis_url = redis.url();
    let worker = env.worker("w1", &redis_url);
    let api = env.api("a1", &redis_url);
    let key = api.admin_key();
    let load_state = Arc::new(Load::default());
    let tasks: Vec<_> = (0..3)
        .map(|t| rt.spawn(load(load_state.clone(), vec![api.url()], key.clone(), t)))
        .collect();
    std::thread::sleep(Duration::from_secs(2));

    // Redis dies with events queued and unacknowledged; while it is down the API node says
    // 503 with Retry-After, then recovers by itself.
    redis.crash();
    rt.block_on(until_unavailable(&api.url(), &key));
    redis.restart();
    std::thread::sleep(Duration::from_secs(3));

    // PostgreSQL crashes: the worker loses its partition locks and its commits fail; the API
    // node keeps queueing. It comes back after recovery; the worker must re-take its
    // partitions and go on, without loss or duplicate.
    let before = load_state.acked.lock().unwrap().len();
    postgres.crash();
    // While it is down, what needs it fails fast: after a few refused connections the store's
    // circuit opens (503 + Retry-After naming it) instead of every request trying again.
    // An unknown key must be looked up in the store, so it shows the store's state.
    rt.block_on(async {
        let client = common::client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let response = client
                .get(format!("{}/v1/events?limit=1", api.url()))
                .bearer_auth("vk_not_a_key_of_this_server_000000000000")
                .send()
                .await
                .expect("the API node answers while PostgreSQL is down");
            let status = response.status().as_u16();
            let retry_after = response.headers().contains_key("retry-after");
            let body = response.text().await.unwrap_or_default();
            if status == 503 && body.contains("circuit open") {
                assert!(retry_after, "{body}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the store's circuit never opened (last {status}: {body})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    postgres.start_server();
    // Crash recovery takes a while on a busy machine: wait (bounded) for the load to be
    // acknowledged again, then a little longer.
    let deadline = Instant::now() + Duration::from_secs(90);
    while load_state.acked.lock().unwrap().len() <= before {
        assert!(
            Instant::now() < deadline,
            "nothing acknowledged after PostgreSQL came back\n{}",
            worker.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    load_state.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        rt.block_on(t).expect("load task");
    }
    rt.block_on(check_everything_arrived(&env, &load_state, &api, &key));
    // Readiness is back, on both sides, without anyone restarting them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_status(api.addr, "/readyz") != Some(200)
        || http_status(worker.addr, "/readyz") != Some(200)
    {
        assert!(
            Instant::now() < deadline,
            "not ready again: API {:?}, worker {:?}\n{}",
            http_status(api.addr, "/readyz"),
            http_status(worker.addr, "/readyz"),
            worker.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop((api, worker, redis));
    drop(postgres);
}

#[test]
fn poison_messages_are_dead_lettered_and_the_cli_works_on_postgres() {
    let Some((pg, redis)) = services() else {
        return;
    };
    let rt = common::runtime();
    let env = rt.block_on(ScaleEnv::new(&pg, 1));
    let worker = env.worker("w1", &redis);
    let api = env.api("a1", &redis);
    let key = api.admin_key();
    // A message no API node would write, straight into the partition's stream.
    let stream = format!("{}:p0:normal", env.queue);
    let status = Command::new("redis-cli")
        .args([
            "-u",
            &redis,
            "XADD",
            &stream,
            "*",
            "p",
            "{\"kind\":\"event\",\"v\":1}",
        ])
        .stdout(Stdio::null())
        .status()
        .expect("redis-cli");
    assert!(status.success());
    // Good events behind it still get written.
    let ack = rt.block_on(async {
        let response = common::client()
            .post(format!("{}/v1/events?wait=committed", api.url()))
            .bearer_auth(&key)
            .json(&common::event("after.poison", 1))
            .send()
            .await
            .expect("post");
        assert_eq!(response.status().as_u16(), 201);
        response.json::<Value>().await.expect("json")
    });
    assert!(ack["seq"].is_u64(), "{ack}");
    let dlq = |args: &[&str]| {
        let mut cmd = env.command("cli", &redis);
        cmd.arg("dlq").args(args);
        common::run(cmd, common::CLI_LIMIT)
    };
    let listed = dlq(&["list"]);
    assert!(listed.status.success(), "{}", common::text(&listed.stderr));
    let out = common::text(&listed.stdout);
    assert_eq!(out.lines().count(), 1, "{out}");
    let entry: Value = serde_json::from_str(out.lines().next().unwrap()).expect("json line");
    assert!(
        entry["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("undecodable"),
        "{entry}"
    );
    let dropped = dlq(&["drop", "--all"]);
    assert!(
        dropped.status.success(),
        "{}",
        common::text(&dropped.stderr)
    );
    let listed = dlq(&["list"]);
    assert_eq!(common::text(&listed.stdout).lines().count(), 0);
    let refused = dlq(&["retry"]);
    assert!(!refused.status.success());

    // The key commands work on PostgreSQL too: the key is usable at once, and its creation
    // reaches the log through the servers' outbox.
    let cli = |args: &[&str]| {
        let mut cmd = env.command("cli", &redis);
        cmd.args(args);
        common::run(cmd, common::CLI_LIMIT)
    };
    let created = cli(&["keys", "create", "--role", "reader", "--json"]);
    assert!(
        created.status.success(),
        "{}",
        common::text(&created.stderr)
    );
    let created: Value = serde_json::from_slice(&created.stdout).expect("key JSON");
    let reader = created["key"].as_str().expect("key").to_owned();
    let key_id = created["id"].as_str().expect("id").to_owned();
    let listed = cli(&["keys", "list", "--json"]);
    assert!(common::text(&listed.stdout).contains(&key_id));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found: Value = rt.block_on(async {
            common::client()
                .get(format!("{}/v1/events?action=apikey.create", api.url()))
                .bearer_auth(&reader)
                .send()
                .await
                .expect("search")
                .json()
                .await
                .expect("json")
        });
        if found["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e.to_string().contains(&key_id)))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the key's creation never reached the log: {found}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // What needs the data directory's own files is refused with the way to do it instead.
    let rotate = cli(&["keys", "rotate-hmac"]);
    assert!(!rotate.status.success());
    assert!(common::text(&rotate.stderr).contains("AUDIT_CRYPTO_KEYS"));
    let purge = cli(&["retention", "apply", "--dry-run"]);
    assert!(!purge.status.success());
    assert!(common::text(&purge.stderr).contains("/v1/retention/apply"));
    drop((api, worker));
    rt.block_on(env.drop_database());
}
