//! Command-line behaviour of the real `vellum` binary: verify without a store, query (table,
//! NDJSON, bad filters), configuration precedence (flags over `vellum.toml` over environment),
//! bad environment values, and bench.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{Server, StartError};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// Short limit for commands that must fail at start-up (a bad configuration accepted would
/// otherwise serve forever).
const STARTUP_LIMIT: Duration = Duration::from_secs(60);

fn query(data: &Path, url: &str, args: &[&str]) -> Output {
    let mut cmd = common::vellum(data.parent().expect("parent"));
    cmd.args(["query", "--data-dir"])
        .arg(data)
        .args(["--url", url])
        .args(args);
    common::run(cmd, common::CLI_LIMIT)
}

#[test]
fn verify_without_a_store_fails_with_a_clear_message() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("empty");
    std::fs::create_dir(&data).expect("mkdir");
    let out = common::verify(&data, &[]);
    assert!(!out.status.success(), "verify of an empty dir succeeded");
    let stderr = common::text(&out.stderr);
    assert!(
        stderr.contains("no Vellum store") && stderr.contains("vellum.db"),
        "unclear message: {stderr}"
    );
    // It must not have created a store as a side effect.
    assert!(!data.join("vellum.db").exists());

    let missing = tmp.path().join("does-not-exist");
    let out = common::verify(&missing, &[]);
    assert!(!out.status.success());
    assert!(
        common::text(&out.stderr).contains("no Vellum store"),
        "{}",
        common::text(&out.stderr)
    );
}

#[test]
fn query_prints_a_table_and_ndjson() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    let rt = common::runtime();
    let events: Vec<Value> = (0..3)
        .map(|n| {
            json!({
                "action": "cli.query.probe",
                "status": "success",
                "principalId": "dr-query",
                "targetResourceType": "Patient",
                "targetResourceId": format!("pt-q{n}"),
                "dataClassification": "INTERNAL",
            })
        })
        .collect();
    let acks = rt.block_on(common::post_batch(
        &common::client(),
        &server.url(),
        &server.admin_key(),
        events,
    ));
    let url = server.url();

    // The index is written behind the log; retry (bounded) until it has caught up.
    let mut stdout = String::new();
    for _ in 0..30 {
        let out = query(
            &data,
            &url,
            &["action=cli.query.probe", "principalId=dr-query"],
        );
        stdout = common::text(&out.stdout);
        assert!(
            out.status.success(),
            "{}\n{stdout}\n{}",
            out.status,
            common::text(&out.stderr)
        );
        if stdout.matches("cli.query.probe").count() == 3 {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let mut lines = stdout.lines();
    let header = lines.next().expect("a header line");
    assert!(
        header.contains("ACTION") && header.contains("PRINCIPAL"),
        "{stdout}"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    for row in &rows {
        assert!(
            row.contains("cli.query.probe") && row.contains("dr-query"),
            "{row}"
        );
    }

    // --json: one event per line, complete with hash.
    let out = query(&data, &url, &["--json", "action=cli.query.*"]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let stdout = common::text(&out.stdout);
    let events: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON event"))
        .collect();
    assert_eq!(events.len(), 3, "{stdout}");
    let mut ids: Vec<&str> = events
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    ids.sort_unstable();
    let mut want: Vec<&str> = acks.iter().map(|a| a.id.as_str()).collect();
    want.sort_unstable();
    assert_eq!(ids, want);
    for e in &events {
        assert_eq!(e["action"], "cli.query.probe");
        assert!(e["hash"].as_str().is_some_and(|h| h.len() == 64), "{e}");
    }

    // A filter that matches nothing: header only, success.
    let out = query(&data, &url, &["principalId=nobody-at-all"]);
    assert!(out.status.success());
    assert_eq!(common::text(&out.stdout).lines().count(), 1);

    // A filter name the server does not know: non-zero, with the server's reason.
    let out = query(&data, &url, &["bogus=1"]);
    assert!(!out.status.success());
    let stderr = common::text(&out.stderr);
    assert!(
        stderr.contains("400") && stderr.contains("not a search parameter"),
        "{stderr}"
    );
    let out = query(&data, &url, &["status=sideways"]);
    assert!(!out.status.success());
    assert!(common::text(&out.stderr).contains("status"));

    // A wrong key is refused.
    let out = query(&data, &url, &["--api-key", "not-a-real-key"]);
    assert!(!out.status.success());
    assert!(common::text(&out.stderr).contains("401"));

    let status = server.terminate();
    assert!(status.success(), "{status}");
}

#[test]
fn query_rejects_a_malformed_filter() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cmd = common::vellum(tmp.path());
    // No server is needed: the filter is refused before any request is made.
    cmd.args([
        "query",
        "--api-key",
        "k",
        "--url",
        "http://127.0.0.1:9",
        "nonsense",
    ]);
    let out = common::run(cmd, common::CLI_LIMIT);
    assert!(!out.status.success());
    let stderr = common::text(&out.stderr);
    assert!(
        stderr.contains("nonsense") && stderr.contains("NAME=VALUE"),
        "{stderr}"
    );
}

/// Starts `vellum serve` from `cwd` with `setup` adding arguments and environment; the
/// listening address is the one `setup` is given (retrying with new ports on a bind race).
fn start_custom(
    cwd: &Path,
    data_dir: &Path,
    setup: impl Fn(&mut Command, SocketAddr, SocketAddr),
) -> (Server, SocketAddr) {
    for attempt in 0..8 {
        let expected = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
        let other = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
        let mut cmd = common::vellum(cwd);
        cmd.env("AUDIT_CRYPTO_SECRET", common::SECRET);
        setup(&mut cmd, expected, other);
        let log = cwd.join(format!("custom-{attempt}.log"));
        match Server::spawn(cmd, expected, data_dir, &log) {
            Ok(server) => return (server, other),
            Err(StartError::Exited(_, stderr)) if stderr.contains("binding") => {}
            Err(e) => panic!("server did not start as configured: {e:?}"),
        }
    }
    panic!("no free port after 8 attempts");
}

#[test]
fn flags_override_config_file_and_environment() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let env_dir = tmp.path().join("env-dir");
    let flag_dir = tmp.path().join("flag-dir");
    let config = tmp.path().join("custom.toml");
    let (server, file_addr) = start_custom(tmp.path(), &flag_dir, |cmd, listen, other| {
        std::fs::write(&config, format!("listen = \"{other}\"\n")).expect("write toml");
        cmd.env("VELLUM_DATA_DIR", &env_dir)
            .arg("--config")
            .arg(&config)
            .args(["serve", "--listen", &listen.to_string(), "--data-dir"])
            .arg(&flag_dir);
    });
    // --listen won over the file: the flag's port answered (Server::spawn waited for it), the
    // file's does not.
    assert_eq!(common::http_status(server.addr, "/healthz"), Some(200));
    assert_eq!(common::http_status(file_addr, "/healthz"), None);
    // --data-dir won over VELLUM_DATA_DIR.
    assert!(flag_dir.join("admin.key").exists());
    assert!(flag_dir.join("vellum.db").exists());
    assert!(
        !env_dir.exists(),
        "VELLUM_DATA_DIR was used despite --data-dir"
    );
    let status = server.terminate();
    assert!(status.success(), "{status}");
}

#[test]
fn config_file_overrides_environment() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let env_dir = tmp.path().join("env-dir");
    let file_dir = tmp.path().join("file-dir");
    // ./vellum.toml in the working directory is read without --config.
    let config = tmp.path().join("vellum.toml");
    let (server, env_addr) = start_custom(tmp.path(), &file_dir, |cmd, listen, other| {
        std::fs::write(
            &config,
            format!(
                "listen = \"{listen}\"\ndataDir = \"{}\"\n",
                file_dir.display()
            ),
        )
        .expect("write toml");
        cmd.env("VELLUM_DATA_DIR", &env_dir)
            .env("VELLUM_LISTEN", other.to_string())
            .arg("serve");
    });
    assert_eq!(common::http_status(env_addr, "/healthz"), None);
    assert!(file_dir.join("admin.key").exists());
    assert!(!env_dir.exists(), "VELLUM_DATA_DIR won over vellum.toml");
    let status = server.terminate();
    assert!(status.success(), "{status}");
}

fn serve_must_refuse(env: &[(&str, &str)], args: &[&str]) -> String {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let mut cmd = common::vellum(tmp.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let listen = format!("127.0.0.1:{}", common::free_port());
    cmd.args(args)
        .args(["serve", "--listen", &listen, "--data-dir"])
        .arg(&data);
    let out = common::run(cmd, STARTUP_LIMIT);
    let stderr = common::text(&out.stderr);
    assert!(
        !out.status.success(),
        "serve accepted {env:?} {args:?}: {stderr}"
    );
    assert!(
        !data.join("vellum.db").exists(),
        "a store was created before the configuration was checked"
    );
    stderr
}

#[test]
fn bad_configuration_is_refused_with_a_message() {
    let stderr = serve_must_refuse(&[("AUDIT_ENABLE_SIGNATURES", "maybe")], &[]);
    assert!(stderr.contains("AUDIT_ENABLE_SIGNATURES"), "{stderr}");

    let stderr = serve_must_refuse(&[("AUDIT_MAX_EVENT_SIZE", "huge")], &[]);
    assert!(stderr.contains("AUDIT_MAX_EVENT_SIZE"), "{stderr}");

    let stderr = serve_must_refuse(&[("AUDIT_DB_URL", "postgres://u:p@h/db")], &[]);
    assert!(stderr.contains("AUDIT_DB_URL"), "{stderr}");
    assert!(!stderr.contains("u:p"), "credentials echoed: {stderr}");

    let stderr = serve_must_refuse(&[], &["--config", "/nonexistent/vellum.toml"]);
    assert!(stderr.contains("does not exist"), "{stderr}");

    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "enableSignatures = \"perhaps\"\n").expect("write");
    let stderr = serve_must_refuse(&[], &["--config", bad.to_str().expect("utf-8 path")]);
    assert!(stderr.contains("invalid configuration"), "{stderr}");
}

#[test]
fn bench_sends_exactly_the_requested_events() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    // The synthetic events carry PII and injection-looking text on purpose, so the detection
    // rules would append alerts to the log; this test counts what the bench sent.
    common::without_detection(tmp.path());
    let server = Server::start(&data);
    let mut cmd = common::vellum(tmp.path());
    cmd.args(["bench", "--data-dir"]).arg(&data).args([
        "--url",
        &server.url(),
        "--events",
        "2000",
        "--batch",
        "50",
        "--concurrency",
        "4",
        "--warmup",
        "0",
        "--quiet",
        "--json",
    ]);
    let out = common::run(cmd, common::CLI_LIMIT);
    let stdout = common::text(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        out.status,
        common::text(&out.stderr)
    );
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .expect("a JSON result line");
    let result: Value = serde_json::from_str(last).expect("bench JSON");
    assert_eq!(result["eventsAccepted"], 2000, "{result}");
    assert_eq!(result["requests"], 40, "{result}");
    assert_eq!(result["errors"], json!({}), "{result}");

    let status = server.terminate();
    assert!(status.success(), "{status}");
    let out = common::verify(&data, &["--json"]);
    assert!(out.status.success(), "{}", common::text(&out.stdout));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["logs"][0]["events"], 2000, "{report}");
}

/// One writer per log: a second server on the same data directory refuses to start (it would
/// otherwise race the first one's writer), and the first keeps serving.
#[test]
fn a_second_server_on_the_same_data_dir_refuses_to_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let first = Server::start(&data);
    let addr = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let mut cmd = common::vellum(tmp.path());
    cmd.env("AUDIT_CRYPTO_SECRET", common::SECRET)
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args(["--listen", &addr.to_string()]);
    match Server::spawn(cmd, addr, &data, &tmp.path().join("second.log")) {
        Err(StartError::Exited(status, stderr)) => {
            assert!(!status.success());
            assert!(
                stderr.contains("another Vellum server is already using"),
                "unclear message: {stderr}"
            );
        }
        Err(other) => panic!("second server failed oddly: {other:?}"),
        Ok(_) => panic!("a second server started on the same data directory"),
    }
    assert_eq!(common::http_status(first.addr, "/healthz"), Some(200));
    // The lock dies with the process: after a clean stop, a new server starts.
    assert!(first.terminate().success());
    let again = Server::start(&data);
    assert_eq!(common::http_status(again.addr, "/healthz"), Some(200));
}

/// mimalloc's huge pages cost more than they give (see `disable_transparent_huge_pages` in
/// main.rs): the server runs with transparent huge pages off, unless the operator set
/// mimalloc's own `MIMALLOC_ALLOW_THP`.
#[cfg(target_os = "linux")]
#[test]
fn the_server_runs_without_transparent_huge_pages_unless_asked() {
    /// The `THP_enabled` line of /proc/PID/status: the PR_SET_THP_DISABLE flag (Linux 5.0+).
    fn thp_enabled(pid: u32) -> Option<String> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("THP_enabled:"))?;
        line.split_whitespace().nth(1).map(str::to_owned)
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(&tmp.path().join("data"));
    let Some(flag) = thp_enabled(server.pid()) else {
        println!("skipping: this kernel does not report THP_enabled");
        return;
    };
    assert_eq!(flag, "0", "transparent huge pages left on");
    let mut asked = Server::start_with(&tmp.path().join("asked"), |cmd| {
        cmd.env("MIMALLOC_ALLOW_THP", "1");
    });
    assert_eq!(thp_enabled(asked.pid()).as_deref(), Some("1"));
}
