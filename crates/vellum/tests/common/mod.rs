//! Helpers shared by the integration tests: run the real `vellum` binary, start and stop a
//! server on a free port, and talk to it over HTTP.
//!
//! Every child process is owned by a guard that kills it on drop, so a failing assertion never
//! leaves a server running.

#![allow(dead_code)]

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The HMAC secret the tests run with (so `vellum verify` can be given the same one).
pub(crate) const SECRET: &str = "integration-test-secret-0123456789abcdef";

/// How long a server may take to answer `/healthz` on a slow, busy machine.
pub(crate) const HEALTH_WAIT: Duration = Duration::from_secs(60);

/// How long a one-shot CLI command (verify, query, …) may run.
pub(crate) const CLI_LIMIT: Duration = Duration::from_secs(300);

/// Environment variables that configure `vellum`; removed from every child so the tests do
/// not depend on the caller's environment.
const VELLUM_ENV: &[&str] = &[
    "AUDIT_DB_URL",
    "AUDIT_REDIS_URL",
    "AUDIT_QUEUE_NAME",
    "AUDIT_CRYPTO_SECRET",
    "AUDIT_ENABLE_SIGNATURES",
    "AUDIT_REQUIRE_TLS",
    "AUDIT_MAX_EVENT_SIZE",
    "VELLUM_DATA_DIR",
    "VELLUM_LISTEN",
    "VELLUM_API_KEY",
    "VELLUM_LOG",
];

/// A `vellum` command with a clean environment, run from `cwd` (a test's temporary directory,
/// so no stray `./vellum.toml` is picked up).
pub(crate) fn vellum(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vellum"));
    for name in VELLUM_ENV {
        cmd.env_remove(name);
    }
    cmd.env("VELLUM_LOG", "warn").current_dir(cwd);
    cmd
}

/// Runs a one-shot command to completion (bounded by `limit`), capturing its output.
pub(crate) fn run(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ChildGuard(Some(cmd.spawn().expect("spawning vellum")));
    let child_ref = child.0.as_mut().expect("child");
    let mut stdout = child_ref.stdout.take().expect("stdout");
    let mut stderr = child_ref.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child_ref.try_wait().expect("waiting for vellum") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{cmd:?} did not finish within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    child.0 = None;
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// Text of a captured stream.
pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `vellum verify --data-dir DIR [extra…]` with the tests' secret.
pub(crate) fn verify(data_dir: &Path, extra: &[&str]) -> Output {
    let mut cmd = vellum(data_dir.parent().unwrap_or(data_dir));
    cmd.env("AUDIT_CRYPTO_SECRET", SECRET)
        .arg("verify")
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra);
    run(cmd, CLI_LIMIT)
}

/// Kills the child (SIGKILL) and reaps it when dropped.
pub(crate) struct ChildGuard(pub(crate) Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// One plain HTTP/1.1 GET; returns the status code, or None when nothing answered.
pub(crate) fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    let line = std::str::from_utf8(&head).ok()?;
    line.strip_prefix("HTTP/1.1 ")?.trim().parse().ok()
}

/// Why a server did not come up.
#[derive(Debug)]
pub(crate) enum StartError {
    /// The process exited; its stderr.
    Exited(ExitStatus, String),
    /// It ran but never answered `/healthz`.
    NoHealth(String),
}

/// A running `vellum serve`, killed on drop.
pub(crate) struct Server {
    child: ChildGuard,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// Its data directory.
    pub(crate) data_dir: PathBuf,
    log: PathBuf,
}

impl Server {
    /// Spawns `cmd` (a prepared `vellum … serve …`), with stderr going to `log`, and waits
    /// until `addr` answers `/healthz`.
    pub(crate) fn spawn(
        mut cmd: Command,
        addr: SocketAddr,
        data_dir: &Path,
        log: &Path,
    ) -> Result<Self, StartError> {
        let log_file = std::fs::File::create(log).expect("creating the server log");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file));
        let mut server = Server {
            child: ChildGuard(Some(cmd.spawn().expect("spawning vellum serve"))),
            addr,
            data_dir: data_dir.to_owned(),
            log: log.to_owned(),
        };
        let deadline = Instant::now() + HEALTH_WAIT;
        loop {
            if let Some(status) = server.child_mut().try_wait().expect("try_wait") {
                server.child.0 = None;
                return Err(StartError::Exited(status, server.log_text()));
            }
            if http_status(addr, "/healthz") == Some(200) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(StartError::NoHealth(server.log_text()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts `vellum serve --data-dir DIR --listen 127.0.0.1:PORT` with the tests' secret on
    /// a free port, retrying on another port when the chosen one was taken meanwhile.
    pub(crate) fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, |_| {})
    }

    /// As [`Server::start`], letting `customize` add arguments or environment.
    pub(crate) fn start_with(data_dir: &Path, customize: impl Fn(&mut Command)) -> Self {
        let cwd = data_dir.parent().unwrap_or(data_dir).to_owned();
        let mut last = String::new();
        for attempt in 0..8 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut cmd = vellum(&cwd);
            cmd.env("AUDIT_CRYPTO_SECRET", SECRET)
                .arg("serve")
                .arg("--data-dir")
                .arg(data_dir)
                .arg("--listen")
                .arg(addr.to_string());
            customize(&mut cmd);
            let log = cwd.join(format!(
                "server-{}-{attempt}.log",
                data_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ));
            match Self::spawn(cmd, addr, data_dir, &log) {
                Ok(server) => return server,
                Err(StartError::Exited(status, stderr)) if stderr.contains("binding") => {
                    last = format!("{status}: {stderr}");
                }
                Err(e) => panic!("vellum serve did not start: {e:?}"),
            }
        }
        panic!("vellum serve could not bind a free port: {last}");
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.0.as_mut().expect("the server is running")
    }

    /// The server's stderr so far.
    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Path of the server's stderr log.
    pub(crate) fn log_path(&self) -> PathBuf {
        self.log.clone()
    }

    /// Base URL.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bootstrap admin key from the data dir.
    pub(crate) fn admin_key(&self) -> String {
        admin_key(&self.data_dir)
    }

    /// SIGKILL, then reap.
    pub(crate) fn kill(mut self) {
        let child = self.child_mut();
        child.kill().expect("SIGKILL");
        child.wait().expect("reaping the killed server");
        self.child.0 = None;
    }

    /// Its process id.
    pub(crate) fn pid(&mut self) -> u32 {
        self.child_mut().id()
    }

    /// SIGTERM, then wait (bounded) for it to exit; returns its exit status.
    pub(crate) fn terminate(mut self) -> ExitStatus {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let pid = i32::try_from(self.child_mut().id()).expect("pid fits i32");
        kill(Pid::from_raw(pid), Signal::SIGTERM).expect("sending SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.child_mut().try_wait().expect("try_wait") {
                self.child.0 = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit within 120 s of SIGTERM; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The bootstrap admin key written into `data_dir`.
pub(crate) fn admin_key(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("admin.key"))
        .expect("reading admin.key")
        .trim()
        .to_owned()
}

/// A multi-threaded runtime for the HTTP side of a test.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// An HTTP client with a generous per-request timeout.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("reqwest client")
}

/// A valid event whose `details.n` is `n`.
pub(crate) fn event(action: &str, n: u64) -> Value {
    json!({
        "action": action,
        "status": "success",
        "principalId": format!("dr-{}", n % 17),
        "principalType": "professional",
        "organizationId": "org-test",
        "targetResourceType": "Patient",
        "targetResourceId": format!("pt-{}", n % 101),
        "outcomeDescription": format!("record {n} viewed"),
        "dataClassification": "INTERNAL",
        "details": {"n": n},
    })
}

/// A receipt from a 201: what the server promised is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ack {
    pub(crate) id: String,
    pub(crate) log_id: String,
    pub(crate) seq: u64,
    pub(crate) hash: String,
}

impl Ack {
    /// Reads one receipt object (`{id, logId, seq, hash, …}`).
    pub(crate) fn from_json(v: &Value) -> Self {
        Ack {
            id: v["id"].as_str().expect("receipt id").to_owned(),
            log_id: v["logId"].as_str().expect("receipt logId").to_owned(),
            seq: v["seq"].as_u64().expect("receipt seq"),
            hash: v["hash"].as_str().expect("receipt hash").to_owned(),
        }
    }
}

/// POSTs a batch and returns its receipts (panics unless all are accepted with 201).
pub(crate) async fn post_batch(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    events: Vec<Value>,
) -> Vec<Ack> {
    let n = events.len();
    let response = client
        .post(format!("{url}/v1/events"))
        .bearer_auth(key)
        .json(&json!({ "events": events }))
        .send()
        .await
        .expect("posting a batch");
    let status = response.status();
    let body: Value = response.json().await.expect("batch receipt is JSON");
    assert_eq!(status.as_u16(), 201, "batch refused: {body}");
    let accepted = body["accepted"].as_array().expect("accepted[]");
    assert_eq!(accepted.len(), n, "not every event accepted: {body}");
    accepted.iter().map(Ack::from_json).collect()
}

/// Writes a `vellum.toml` turning the detection rules off into `dir`, the working directory of
/// servers started by [`Server::start`] for a data directory inside it. For tests that count
/// the events of a fixture: the rules would append alerts (break-glass, off-hours PHI access,
/// …) beside them. Detection itself is tested in vellum-server's `tests/detection.rs`.
pub(crate) fn without_detection(dir: &Path) {
    std::fs::write(
        dir.join("vellum.toml"),
        "# The rules would append alerts to the fixture's log.\n[detection]\nenabled = false\n",
    )
    .expect("writing vellum.toml");
}
