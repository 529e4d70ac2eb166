//! Syslog sinks against a real rsyslogd: each test starts its own `rsyslogd -n` on a free
//! 127.0.0.1 port with its own configuration, work directory and pid file, writing every
//! received message raw (`%rawmsg%`) to a file. Events posted to a real Vellum server are
//! forwarded over TCP (RFC 6587 octet counting), TLS (RFC 5425, rsyslog's GnuTLS driver with a
//! certificate made here by rcgen) and UDP (RFC 5426); every line is parsed with `parse_5424`
//! and compared field by field with the stored event.
//!
//! rsyslog comes from Debian (`rsyslog`, `rsyslog-gnutls`; `.ci/run` installs them). Without
//! it these tests say so and pass, unless `VELLUM_REQUIRE_SERVICES` is set (CI), where they
//! fail.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vellum_core::forward::syslog::parse_5424;
use vellum_forward::{SinkConfig, SinkKind, SyslogTransport};

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";
const GTLS_DRIVER: &str = "lmnsd_gtls.so";

fn required() -> bool {
    std::env::var_os("VELLUM_REQUIRE_SERVICES").is_some()
}

/// Whether rsyslogd (and, for TLS, its GnuTLS driver) is installed; when not, panics in CI
/// and otherwise reports the skip.
fn available(tls: bool) -> bool {
    let mut missing = Vec::new();
    if !Path::new(RSYSLOGD).exists() {
        missing.push("rsyslog");
    }
    if tls
        && !rsyslog_module_dirs()
            .iter()
            .any(|d| d.join(GTLS_DRIVER).exists())
    {
        missing.push("rsyslog-gnutls");
    }
    if missing.is_empty() {
        return true;
    }
    assert!(
        !required(),
        "Debian package(s) {missing:?} missing (apt-get install -y rsyslog rsyslog-gnutls)"
    );
    eprintln!("SKIPPED: install Debian package(s) {missing:?} to run this test");
    false
}

fn rsyslog_module_dirs() -> Vec<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/rsyslog",
        "/usr/lib/aarch64-linux-gnu/rsyslog",
        "/usr/lib/rsyslog",
    ]
    .iter()
    .map(PathBuf::from)
    .collect()
}

enum Input {
    Tcp,
    Udp,
    Tls {
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
}

/// One rsyslogd of this test's own, killed on drop.
struct Rsyslog {
    child: Child,
    dir: tempfile::TempDir,
    out: PathBuf,
    port: u16,
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Rsyslog {
    fn start(input: &Input) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = match input {
            Input::Udp => free_udp_port(),
            Input::Tcp | Input::Tls { .. } => free_tcp_port(),
        };
        let out = dir.path().join("received.log");
        Self::start_in(dir, out, port, input)
    }

    fn start_in(dir: tempfile::TempDir, out: PathBuf, port: u16, input: &Input) -> Self {
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let (globals, module, kind) = match input {
            Input::Tcp => (String::new(), r#"module(load="imtcp")"#.to_owned(), "imtcp"),
            Input::Udp => (String::new(), r#"module(load="imudp")"#.to_owned(), "imudp"),
            Input::Tls { ca, cert, key } => (
                format!(
                    r#" defaultNetstreamDriver="gtls" defaultNetstreamDriverCAFile="{}" defaultNetstreamDriverCertFile="{}" defaultNetstreamDriverKeyFile="{}""#,
                    ca.display(),
                    cert.display(),
                    key.display()
                ),
                r#"module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")"#
                    .to_owned(),
                "imtcp",
            ),
        };
        let conf = format!(
            r#"global(workDirectory="{work}" maxMessageSize="64k"{globals})
{module}
template(name="raw" type="string" string="%rawmsg%\n")
ruleset(name="fwd") {{
  action(type="omfile" file="{out}" template="raw")
}}
input(type="{kind}" address="127.0.0.1" port="{port}" ruleset="fwd")
"#,
            work = work.display(),
            out = out.display(),
        );
        let conf_path = dir.path().join("rsyslog.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let stderr = std::fs::File::create(dir.path().join("rsyslogd.stderr")).unwrap();
        let child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(&conf_path)
            .arg("-i")
            .arg(dir.path().join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut rsyslog = Self {
            child,
            dir,
            out,
            port,
        };
        rsyslog.wait_ready(input);
        rsyslog
    }

    fn diagnostics(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rsyslogd.stderr")).unwrap_or_default()
    }

    fn wait_ready(&mut self, input: &Input) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("rsyslogd exited with {status}: {}", self.diagnostics());
            }
            assert!(
                Instant::now() < deadline,
                "rsyslogd not ready: {}",
                self.diagnostics()
            );
            match input {
                Input::Tcp | Input::Tls { .. } => {
                    if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                        return;
                    }
                }
                Input::Udp => {
                    // A datagram to a port nobody listens on is just lost: send probes until
                    // one is written out.
                    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                    let _ = socket.send_to(b"<13>1 - - - - - - probe", ("127.0.0.1", self.port));
                    if std::fs::read_to_string(&self.out)
                        .unwrap_or_default()
                        .contains(" probe")
                    {
                        return;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Lines received so far, readiness probes left out.
    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.ends_with(" probe"))
            .map(str::to_owned)
            .collect()
    }

    /// Stops it with SIGTERM (it flushes its output) and waits; keeps the directory.
    fn stop(mut self) -> (tempfile::TempDir, PathBuf, u16) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
        let dir = tempfile::tempdir().unwrap();
        let old = std::mem::replace(&mut self.dir, dir);
        (old, self.out.clone(), self.port)
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn syslog_sink(name: &str, transport: SyslogTransport, address: String) -> SinkConfig {
    let mut sink = quick(SinkConfig::new(
        name,
        SinkKind::Syslog {
            transport,
            address,
            ca_file: None,
            server_name: None,
            app_name: "vellum".into(),
            facility: 13,
            enterprise_id: 32473,
        },
    ));
    sink.batch_size = 40;
    sink
}

/// Parses every line and checks it against the stored event with the same seq; returns the
/// events by seq.
fn check_lines(lines: &[String], stored: &[Value]) -> BTreeMap<u64, Value> {
    let by_seq: BTreeMap<u64, &Value> = stored
        .iter()
        .map(|e| (e["seq"].as_u64().unwrap(), e))
        .collect();
    let mut got = BTreeMap::new();
    for line in lines {
        let parsed = parse_5424(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let seq: u64 = parsed.param("seq").unwrap().parse().unwrap();
        let event = by_seq[&seq];
        assert_eq!(parsed.version, 1);
        assert_eq!(parsed.facility(), 13);
        assert_eq!(parsed.hostname.as_deref(), Some("test-host"));
        assert_eq!(parsed.app_name.as_deref(), Some("vellum"));
        assert_eq!(parsed.msgid.as_deref(), event["action"].as_str());
        assert_eq!(parsed.param("id"), event["id"].as_str());
        assert_eq!(parsed.param("logId"), Some("default"));
        assert_eq!(parsed.param("hash"), event["hash"].as_str());
        assert_eq!(parsed.param("action"), event["action"].as_str());
        assert_eq!(parsed.param("status"), event["status"].as_str());
        assert_eq!(parsed.structured_data[0].id, "vellum@32473");
        assert!(parsed.msg_bom, "MSG starts with a BOM");
        let body: Value = serde_json::from_str(parsed.msg.as_deref().unwrap()).unwrap();
        assert_eq!(&body, event, "MSG is the event");
        got.insert(seq, body);
    }
    got
}

async fn wait_lines(rsyslog: &Rsyslog, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lines = rsyslog.lines();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "rsyslog has {} of {n} lines; stderr: {}",
            lines.len(),
            rsyslog.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_tcp_to_rsyslog_octet_counted() {
    if !available(false) {
        return;
    }
    let rsyslog = Rsyslog::start(&Input::Tcp);
    let server = Server::start().await;
    server.post_n("tcp", 120).await;
    let forwarder = start_forwarder(
        server.store(),
        vec![syslog_sink(
            "rsyslog-tcp",
            SyslogTransport::Tcp,
            format!("127.0.0.1:{}", rsyslog.port),
        )],
        &[],
    );
    let stored = server.stored().await;
    let lines = wait_lines(&rsyslog, stored.len()).await;
    let got = check_lines(&lines, &stored);
    // In order, every one, once.
    let seqs: Vec<u64> = lines
        .iter()
        .map(|l| {
            parse_5424(l)
                .unwrap()
                .param("seq")
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (0..lines.len() as u64).collect::<Vec<_>>());
    assert_eq!(got.len(), lines.len());
    let status = status(&forwarder, "rsyslog-tcp");
    assert!(status.connected && status.is_healthy(), "{status:?}");

    // The receiver restarts: the sink notices the closed connection, reconnects, and the
    // events posted afterwards all arrive.
    let (dir, out, port) = rsyslog.stop();
    let before = std::fs::read_to_string(&out).unwrap().lines().count();
    let rsyslog = Rsyslog::start_in(dir, out, port, &Input::Tcp);
    server.post_n("after-restart", 30).await;
    let stored = server.stored().await;
    let lines = wait_lines(&rsyslog, stored.len()).await;
    let got = check_lines(&lines, &stored);
    assert!(before < lines.len());
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        (0..stored.len() as u64).collect::<Vec<_>>(),
        "every event arrived"
    );
    forwarder.stop().await;
    server.stop().await;
    drop(rsyslog);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_udp_to_rsyslog_one_datagram_per_event() {
    if !available(false) {
        return;
    }
    let rsyslog = Rsyslog::start(&Input::Udp);
    let server = Server::start().await;
    server.post_n("udp", 60).await;
    let mut sink = syslog_sink(
        "rsyslog-udp",
        SyslogTransport::Udp,
        format!("127.0.0.1:{}", rsyslog.port),
    );
    // Small batches: loopback UDP does not drop, but a burst larger than the socket buffer
    // could.
    sink.batch_size = 10;
    let forwarder = start_forwarder(server.store(), vec![sink], &[]);
    let stored = server.stored().await;
    let lines = wait_lines(&rsyslog, stored.len()).await;
    let got = check_lines(&lines, &stored);
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        (0..stored.len() as u64).collect::<Vec<_>>()
    );
    assert_eq!(lines.len(), stored.len(), "one datagram per event");
    forwarder.stop().await;
    server.stop().await;
}

/// A CA and a server certificate for `localhost` and 127.0.0.1, as PEM files.
fn pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Vellum forward test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    (
        write("ca.pem", ca.pem()),
        write("cert.pem", cert.pem()),
        write("key.pem", key.serialize_pem()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_tls_to_rsyslog_gnutls() {
    if !available(true) {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki(certs.path());
    let rsyslog = Rsyslog::start(&Input::Tls {
        ca: ca.clone(),
        cert,
        key,
    });
    let server = Server::start().await;
    server.post_n("tls", 90).await;

    // A client that does not trust the CA never delivers (and says why).
    let other = tempfile::tempdir().unwrap();
    let (wrong_ca, _, _) = pki(other.path());
    let mut untrusting = syslog_sink(
        "rsyslog-tls-wrong-ca",
        SyslogTransport::Tls,
        format!("127.0.0.1:{}", rsyslog.port),
    );
    if let SinkKind::Syslog {
        ca_file,
        server_name,
        ..
    } = &mut untrusting.kind
    {
        *ca_file = Some(wrong_ca);
        *server_name = Some("localhost".into());
    }
    let mut sink = syslog_sink(
        "rsyslog-tls",
        SyslogTransport::Tls,
        format!("127.0.0.1:{}", rsyslog.port),
    );
    if let SinkKind::Syslog {
        ca_file,
        server_name,
        ..
    } = &mut sink.kind
    {
        *ca_file = Some(ca);
        *server_name = Some("localhost".into());
    }
    let forwarder = start_forwarder(server.store(), vec![sink, untrusting], &[]);
    let stored = server.stored().await;
    let lines = wait_lines(&rsyslog, stored.len()).await;
    let got = check_lines(&lines, &stored);
    let seqs: Vec<u64> = got.keys().copied().collect();
    assert_eq!(seqs, (0..stored.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        lines.len(),
        stored.len(),
        "only the trusting sink delivered"
    );
    let wrong = status(&forwarder, "rsyslog-tls-wrong-ca");
    assert_eq!(wrong.delivered, 0);
    assert!(wrong.retries >= 1);
    let reason = wrong.last_error.unwrap_or_default();
    assert!(reason.contains("certificate"), "{reason}");
    forwarder.stop().await;
    server.stop().await;
    drop(rsyslog);
}
