//! `vellum keys create|list|revoke` on a data directory, with the server stopped and running:
//! keys work over HTTP, secrets never show in listings, and every change is an event of the
//! log (appended by the command itself when no server runs, by the server otherwise), with the
//! chain still verifying.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::Server;
use serde_json::Value;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

fn keys(data: &Path, args: &[&str]) -> Output {
    let mut cmd = common::vellum(data.parent().expect("parent"));
    cmd.arg("--data-dir").arg(data).arg("keys").args(args);
    cmd.env("AUDIT_CRYPTO_SECRET", common::SECRET);
    common::run(cmd, common::CLI_LIMIT)
}

async fn get(url: &str, key: &str, path: &str) -> (u16, Value) {
    let response = common::client()
        .get(format!("{url}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Events with `action` whose target is `key_id`, read by the admin.
async fn key_events(url: &str, admin: &str, action: &str, key_id: &str) -> Vec<Value> {
    let (status, page) = get(
        url,
        admin,
        &format!("/v1/events?action={action}&limit=1000"),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["targetResourceId"] == key_id)
        .cloned()
        .collect()
}

#[test]
fn keys_are_managed_from_the_command_line_with_the_server_stopped_or_running() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    // A store to work on; the server is stopped afterwards.
    let server = Server::start(&data);
    let admin = server.admin_key();
    assert!(server.terminate().success());

    // Server stopped: create, list, bad role.
    let out = keys(
        &data,
        &[
            "create", "--role", "reader", "--org", "org-a", "--name", "ward app", "--json",
        ],
    );
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout).expect("json");
    let id = created["id"].as_str().expect("id").to_owned();
    let secret = created["key"].as_str().expect("key").to_owned();
    assert!(secret.starts_with("vlm_"));
    assert_eq!(created["organizationId"], "org-a");
    let out = keys(&data, &["list", "--json"]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let listed = common::text(&out.stdout);
    assert!(
        listed.contains(&id) && listed.contains("ward app"),
        "{listed}"
    );
    assert!(!listed.contains(&secret), "a listing never shows a secret");
    let out = keys(&data, &["list"]);
    assert!(
        common::text(&out.stdout).contains(&id),
        "table lists the key"
    );
    let out = keys(&data, &["create", "--role", "root"]);
    assert!(!out.status.success());
    assert!(
        common::text(&out.stderr).contains("role"),
        "{}",
        common::text(&out.stderr)
    );

    // Server running: the key works; its creation is already in the log (appended by the
    // command, which was the log's only writer at the time).
    let server = Server::start(&data);
    let url = server.url();
    let rt = common::runtime();
    rt.block_on(async {
        let (status, _) = get(&url, &secret, "/v1/events").await;
        assert_eq!(status, 200);
        let (status, _) = get(&url, &secret, "/v1/events?organizationId=org-b").await;
        assert_eq!(status, 403, "bound to org-a");
        let created = key_events(&url, &admin, "apikey.create", &id).await;
        assert_eq!(created.len(), 1, "{created:?}");
        assert!(
            created[0]["principalId"]
                .as_str()
                .expect("principal")
                .starts_with("cli:")
        );
        assert!(!created[0].to_string().contains(&secret));
    });

    // Revoke while the server runs: refused within the key cache's lifetime, recorded by the
    // server within a second or so.
    let out = keys(&data, &["revoke", &id]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, _) = get(&url, &secret, "/v1/events").await;
            let revoked = key_events(&url, &admin, "apikey.revoke", &id).await;
            if status == 401 && revoked.len() == 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "revocation not effective/recorded: {status} {revoked:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let out = keys(&data, &["revoke", &id]);
    assert!(!out.status.success());
    assert!(common::text(&out.stderr).contains("already revoked"));
    let out = keys(&data, &["revoke", "key_nosuchkey"]);
    assert!(!out.status.success());
    assert!(common::text(&out.stderr).contains("no API key"));
    assert!(server.terminate().success());

    // The chain, with the key events in it, verifies.
    let out = common::verify(&data, &[]);
    assert!(
        out.status.success(),
        "{}{}",
        common::text(&out.stdout),
        common::text(&out.stderr)
    );
}

/// `vellum keys rotate-hmac`: new events are signed with the new key after a restart, events
/// signed before keep verifying, the key file is private, and losing it is caught by verify.
#[test]
fn hmac_rotation_signs_new_events_with_the_new_key_and_old_ones_still_verify() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    let admin = server.admin_key();
    let rt = common::runtime();
    let before = rt.block_on(common::post_batch(
        &common::client(),
        &server.url(),
        &admin,
        vec![common::event("rotation.before", 1)],
    ));
    assert!(server.terminate().success());

    let mut ids = Vec::new();
    for _ in 0..2 {
        let out = keys(&data, &["rotate-hmac"]);
        assert!(out.status.success(), "{}", common::text(&out.stderr));
        let id = common::text(&out.stdout).trim().to_owned();
        assert!(id.starts_with('k') && id.len() > 8, "{id}");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
    let file = data.join("hmac-keys");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file)
            .expect("key file")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "the key file is private");
    }
    let keys_text = std::fs::read_to_string(&file).expect("read");
    assert_eq!(keys_text.lines().count(), 2);

    let server = Server::start(&data);
    let url = server.url();
    rt.block_on(async {
        common::post_batch(
            &common::client(),
            &url,
            &admin,
            vec![common::event("rotation.after", 2)],
        )
        .await;
        let (_, page) = get(&url, &admin, "/v1/events?action=rotation.*&limit=10").await;
        let events = page["events"].as_array().expect("events");
        assert_eq!(events.len(), 2, "{page}");
        for e in events {
            let want = if e["action"] == "rotation.after" {
                ids[1].as_str()
            } else {
                "default"
            };
            assert_eq!(e["keyId"], want, "{e}");
        }
        // The rotations themselves are in the log.
        let (_, rotations) = get(&url, &admin, "/v1/events?action=hmac.rotate").await;
        assert_eq!(
            rotations["events"].as_array().expect("events").len(),
            2,
            "{rotations}"
        );
    });
    assert!(server.terminate().success());
    assert_eq!(before.len(), 1);
    let out = common::verify(&data, &[]);
    assert!(
        out.status.success(),
        "{}{}",
        common::text(&out.stdout),
        common::text(&out.stderr)
    );

    // Without the rotated keys, the events they signed cannot be verified: verify says so.
    std::fs::rename(&file, data.join("hmac-keys.away")).expect("move");
    let out = common::verify(&data, &[]);
    assert!(
        !out.status.success(),
        "verify passed without the signing keys"
    );
    let report = format!("{}{}", common::text(&out.stdout), common::text(&out.stderr));
    assert!(
        report.contains(&ids[1]) || report.contains("key"),
        "{report}"
    );
}

/// `vellum retention apply`: runs as the directory's writer when no server does (a dry run is
/// recorded and verify stays green), and refuses, pointing at the API, while one does.
#[test]
fn retention_apply_runs_offline_and_refuses_beside_a_server() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    let admin = server.admin_key();
    let rt = common::runtime();
    rt.block_on(common::post_batch(
        &common::client(),
        &server.url(),
        &admin,
        vec![common::event("retention.cli", 1)],
    ));
    let mut cmd = common::vellum(tmp.path());
    cmd.arg("--data-dir")
        .arg(&data)
        .args(["retention", "apply", "--dry-run"]);
    cmd.env("AUDIT_CRYPTO_SECRET", common::SECRET);
    let out = common::run(cmd, common::CLI_LIMIT);
    assert!(!out.status.success(), "ran beside a server");
    assert!(
        common::text(&out.stderr).contains("/v1/retention/apply"),
        "{}",
        common::text(&out.stderr)
    );
    assert!(server.terminate().success());

    let mut cmd = common::vellum(tmp.path());
    cmd.arg("--data-dir")
        .arg(&data)
        .args(["retention", "apply", "--dry-run", "--json"]);
    cmd.env("AUDIT_CRYPTO_SECRET", common::SECRET);
    let out = common::run(cmd, common::CLI_LIMIT);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["dryRun"], true);
    assert_eq!(
        report["expired"], 0,
        "nothing expires on its first day: {report}"
    );
    let out = common::verify(&data, &["--json"]);
    assert!(out.status.success(), "{}", common::text(&out.stdout));
    let verified: Value = serde_json::from_slice(&out.stdout).expect("json");
    // The event sent and the record of the dry run.
    assert_eq!(verified["logs"][0]["events"], 2, "{verified}");
}
