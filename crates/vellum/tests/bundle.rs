//! The export bundle end to end with the real binary: `vellum export --bundle` from a running
//! server, then `vellum verify-bundle` offline (server stopped, no data dir, no secret) — with
//! the right pinned key, a wrong key, an edited event, a forged proof and a truncated file.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::Server;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Output;

fn verify_bundle(cwd: &Path, file: &Path, extra: &[&str]) -> Output {
    let mut cmd = common::vellum(cwd);
    cmd.arg("verify-bundle").arg(file).args(extra);
    common::run(cmd, common::CLI_LIMIT)
}

#[test]
fn bundles_verify_offline_and_every_alteration_is_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    let rt = common::runtime();
    let client = common::client();
    let key = server.admin_key();
    // 40 events, 10 of them for patient p-7, so the bundle is a real selection.
    let events: Vec<Value> = (0..40u64)
        .map(|n| {
            let mut e = common::event("fhir.patient.read", n);
            e["healthcareContext"] = json!({"patientId": format!("p-{}", n % 4 + 4)});
            e
        })
        .collect();
    let acks = rt.block_on(common::post_batch(&client, &server.url(), &key, events));
    let published: Value = rt.block_on(async {
        client
            .get(format!("{}/v1/keys", server.url()))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let public_key = published["checkpointKeys"][0]["publicKey"]
        .as_str()
        .expect("a published key")
        .to_owned();

    let bundle = tmp.path().join("p7.ndjson");
    let mut cmd = common::vellum(tmp.path());
    cmd.args(["export", "--data-dir"])
        .arg(&data)
        .args(["--url", &server.url(), "--bundle"])
        .arg(&bundle)
        .arg("patientId=p-7");
    let out = common::run(cmd, common::CLI_LIMIT);
    assert!(
        out.status.success(),
        "export failed: {}",
        common::text(&out.stderr)
    );
    server.terminate();

    // Offline from here on: the data directory is gone too.
    std::fs::remove_dir_all(&data).expect("removing the data dir");
    let text = std::fs::read_to_string(&bundle).expect("bundle");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 12, "header + 10 events + end: {text}");
    let expected_ids: Vec<&str> = acks
        .iter()
        .enumerate()
        .filter(|(n, _)| n % 4 + 4 == 7)
        .map(|(_, a)| a.id.as_str())
        .collect();
    for id in &expected_ids {
        assert!(text.contains(id), "event {id} missing from the bundle");
    }

    let out = verify_bundle(tmp.path(), &bundle, &["--public-key", &public_key]);
    let stdout = common::text(&out.stdout);
    assert!(out.status.success(), "faithful bundle refused: {stdout}");
    assert!(stdout.contains("OK: 10 of 10 events verified"), "{stdout}");

    // Without a pinned key it still verifies, but says whose key it trusted.
    let out = verify_bundle(tmp.path(), &bundle, &[]);
    assert!(out.status.success());
    assert!(common::text(&out.stdout).contains("trusted the public key carried in the bundle"));

    // A key that did not sign the checkpoint.
    let stranger = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let out = verify_bundle(tmp.path(), &bundle, &["--public-key", stranger]);
    assert_eq!(out.status.code(), Some(1));
    assert!(common::text(&out.stdout).contains("unknown key"));

    let write = |name: &str, lines: &[String]| {
        let path = tmp.path().join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    };
    let owned: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();

    // An edited event (line 4) is named by line, id and seq.
    let mut edited = owned.clone();
    let mut entry: Value = serde_json::from_str(&edited[3]).unwrap();
    let seq = entry["proof"]["leafIndex"].as_u64().unwrap();
    let id = entry["event"]["id"].as_str().unwrap().to_owned();
    entry["event"]["outcomeDescription"] = json!("nothing to see");
    edited[3] = entry.to_string();
    let out = verify_bundle(
        tmp.path(),
        &write("edited.ndjson", &edited),
        &["--public-key", &public_key],
    );
    let stdout = common::text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "line 4, event {id} (seq {seq}): content does not match"
        )),
        "{stdout}"
    );

    // A forged proof hash.
    let mut forged = owned.clone();
    let mut entry: Value = serde_json::from_str(&forged[5]).unwrap();
    let seq = entry["proof"]["leafIndex"].as_u64().unwrap();
    entry["proof"]["hashes"][0] = json!("00".repeat(32));
    forged[5] = entry.to_string();
    let out = verify_bundle(
        tmp.path(),
        &write("forged.ndjson", &forged),
        &["--public-key", &public_key],
    );
    let stdout = common::text(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.contains(&format!("(seq {seq}): inclusion proof")),
        "{stdout}"
    );

    // A truncated file (end line and one event gone).
    let out = verify_bundle(
        tmp.path(),
        &write("cut.ndjson", &owned[..owned.len() - 2]),
        &["--public-key", &public_key],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(common::text(&out.stdout).contains("truncated"));

    // Not a bundle at all.
    let out = verify_bundle(tmp.path(), &write("junk.ndjson", &["{}".into()]), &[]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn export_refuses_bad_filters_and_leaves_no_partial_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    let bundle = tmp.path().join("x.ndjson");
    let mut cmd = common::vellum(tmp.path());
    cmd.args(["export", "--data-dir"])
        .arg(&data)
        .args(["--url", &server.url(), "--bundle"])
        .arg(&bundle)
        .arg("color=blue");
    let out = common::run(cmd, common::CLI_LIMIT);
    assert!(!out.status.success());
    assert!(
        common::text(&out.stderr).contains("color"),
        "{}",
        common::text(&out.stderr)
    );
    assert!(!bundle.exists() && !bundle.with_extension("partial").exists());
    let out = verify_bundle(tmp.path(), &tmp.path().join("missing.ndjson"), &[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a missing file is a usage error"
    );
    server.terminate();
}
