//! Tamper tests: events are ingested through a real server, which is then stopped with
//! SIGTERM (it must exit 0); the SQLite store is altered behind Vellum's back and
//! `vellum verify` must fail, naming the altered position.
//!
//! Every store holds signed checkpoints at sizes 30 (on demand, `POST
//! /v1/logs/default/checkpoint`), 35 (`POST /v1/events?wait=checkpoint`) and 40 (written at
//! shutdown), and possibly more (one every second while events arrive), so the Merkle checks of
//! SPEC §4 are exercised: modify, delete, insert, reorder and truncate are each caught and
//! located, and so are a corrupted Merkle tile and a corrupted checkpoint.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::Server;
use rusqlite::{Connection, params};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use vellum_core::checkpoint::CheckpointSigner;

/// Events in each test store.
const EVENTS: u64 = 40;
/// The position the tests tamper with.
const K: i64 = 17;
/// Checkpoint sizes every test store has (see the module doc).
const CHECKPOINTS: [u64; 3] = [30, 35, 40];

/// A fresh data dir holding `EVENTS` events (seq 0..EVENTS), written by a real server that was
/// then stopped gracefully.
fn store() -> (tempfile::TempDir, PathBuf) {
    store_with(|_| {})
}

/// As [`store`], with extra configuration for the server.
fn store_with(customize: impl Fn(&mut std::process::Command)) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let server = Server::start_with(&data, customize);
    let rt = common::runtime();
    let client = common::client();
    let key = server.admin_key();
    // One batch, then single events: both paths write the chain.
    let mut acks = rt.block_on(common::post_batch(
        &client,
        &server.url(),
        &key,
        (0..EVENTS - 10)
            .map(|n| common::event("tamper.batch", n))
            .collect(),
    ));
    // A checkpoint on demand, covering the batch.
    let checkpoint: Value = rt.block_on(async {
        let response = client
            .post(format!("{}/v1/logs/default/checkpoint", server.url()))
            .bearer_auth(&key)
            .send()
            .await
            .expect("asking for a checkpoint");
        assert_eq!(response.status().as_u16(), 201);
        response.json().await.expect("checkpoint JSON")
    });
    assert_eq!(checkpoint["treeSize"], EVENTS - 10, "{checkpoint}");
    for n in EVENTS - 10..EVENTS {
        // The fifth single event waits for a checkpoint covering it (size 35).
        let wait = if n == EVENTS - 6 {
            "?wait=checkpoint"
        } else {
            ""
        };
        let receipt: Value = rt.block_on(async {
            let response = client
                .post(format!("{}/v1/events{wait}", server.url()))
                .bearer_auth(&key)
                .json(&common::event("tamper.single", n))
                .send()
                .await
                .expect("posting an event");
            assert_eq!(response.status().as_u16(), 201);
            response.json().await.expect("receipt")
        });
        acks.push(common::Ack::from_json(&receipt));
    }
    let seqs: Vec<u64> = acks.iter().map(|a| a.seq).collect();
    assert_eq!(seqs, (0..EVENTS).collect::<Vec<_>>());
    let log = server.log_path();
    let status = server.terminate();
    assert!(
        status.success(),
        "SIGTERM must drain and exit 0, got {status}; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    let sizes = with_db(&data, checkpoint_sizes);
    for size in CHECKPOINTS {
        assert!(
            sizes.contains(&size),
            "no checkpoint of size {size}: {sizes:?}"
        );
    }
    (tmp, data)
}

/// Sizes of the stored checkpoints of the default log, ascending.
fn checkpoint_sizes(conn: &Connection) -> Vec<u64> {
    let mut stmt = conn
        .prepare("SELECT tree_size FROM checkpoints WHERE log_id = 'default' ORDER BY tree_size")
        .expect("SELECT checkpoints");
    stmt.query_map([], |r| r.get::<_, i64>(0))
        .expect("query")
        .map(|r| u64::try_from(r.expect("row")).expect("size"))
        .collect()
}

/// Opens the store file directly (the server is stopped), runs `f`, closes it.
fn with_db<T>(data: &Path, f: impl FnOnce(&Connection) -> T) -> T {
    let conn = Connection::open(data.join("vellum.db")).expect("opening vellum.db");
    let out = f(&conn);
    conn.close().expect("closing vellum.db");
    out
}

fn body_at(conn: &Connection, seq: i64) -> String {
    conn.query_row(
        "SELECT body FROM events WHERE log_id = 'default' AND seq = ?1",
        params![seq],
        |r| r.get(0),
    )
    .expect("reading a body")
}

/// Changes one field of the event at `seq` (its status), leaving hash and signature alone.
fn modify_body(conn: &Connection, seq: i64) {
    let before = body_at(conn, seq);
    assert!(before.contains(r#""status":"success""#), "{before}");
    let changed = conn
        .execute(
            r#"UPDATE events SET body = replace(body, '"status":"success"', '"status":"failure"')
               WHERE log_id = 'default' AND seq = ?1"#,
            params![seq],
        )
        .expect("UPDATE");
    assert_eq!(changed, 1);
    assert_ne!(body_at(conn, seq), before);
}

/// `FAIL …` lines of a text report.
fn fail_lines(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("FAIL "))
        .collect()
}

/// Runs verify, expects exit status 1, returns stdout.
fn verify_fails(data: &Path, extra: &[&str]) -> String {
    let out = common::verify(data, extra);
    let stdout = common::text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "verify should fail with status 1; stdout:\n{stdout}\nstderr:\n{}",
        common::text(&out.stderr)
    );
    stdout
}

fn json_failures(stdout: &str) -> (Value, Vec<Value>) {
    let report: Value = serde_json::from_str(stdout).expect("verify --json is JSON");
    let failures = report["logs"]
        .as_array()
        .expect("logs[]")
        .iter()
        .flat_map(|l| l["failures"].as_array().cloned().unwrap_or_default())
        .collect();
    (report, failures)
}

/// The smallest stored checkpoint size above `seq`: the first one a change at `seq` breaks.
fn first_checkpoint_after(data: &Path, seq: i64) -> u64 {
    let sizes = with_db(data, checkpoint_sizes);
    *sizes
        .iter()
        .find(|&&s| s > u64::try_from(seq).unwrap())
        .unwrap_or_else(|| panic!("no checkpoint above {seq}: {sizes:?}"))
}

/// Asserts a `checkpointMismatch` for the checkpoint of `size` that places the change at or
/// before `seq` (the range starts at the last checkpoint that still matched), in both reports.
fn assert_checkpoint_mismatch(stdout_text: &str, failures: &[Value], size: u64, seq: i64) {
    assert!(
        failures.iter().any(|f| f["kind"] == "checkpointMismatch"
            && f["treeSize"] == size
            && f["fromSeq"].as_i64().is_some_and(|from| from <= seq)),
        "no checkpointMismatch for the checkpoint of size {size} starting at or before seq {seq}: {failures:?}"
    );
    assert!(
        fail_lines(stdout_text)
            .iter()
            .any(|l| l.contains(&format!("..{size}: Merkle root"))
                && l.contains(&format!("checkpoint of size {size}"))),
        "the text report does not name the broken checkpoint {size}:\n{stdout_text}"
    );
}

/// The seed of the data dir's checkpoint signing key, as a signer.
fn checkpoint_signer(data: &Path) -> CheckpointSigner {
    let seed = vellum_server::bootstrap::read_checkpoint_seed(&data.join("checkpoint.key"))
        .expect("checkpoint.key");
    CheckpointSigner::from_seed("vellum", &seed).expect("signer")
}

#[test]
fn untouched_store_verifies_ok() {
    let (_tmp, data) = store();
    let out = common::verify(&data, &[]);
    let stdout = common::text(&out.stdout);
    assert!(
        out.status.success(),
        "{}: {stdout}\n{}",
        out.status,
        common::text(&out.stderr)
    );
    assert!(stdout.contains("OK"), "{stdout}");
    assert!(
        stdout.contains(&format!("{EVENTS} events verified")),
        "{stdout}"
    );
    assert!(fail_lines(&stdout).is_empty(), "{stdout}");

    let out = common::verify(&data, &["--json"]);
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["signaturesChecked"], true, "{report}");
    assert_eq!(report["logs"][0]["events"], EVENTS, "{report}");

    // Every stored checkpoint verified and matched, and the recomputed root is the one signed
    // at the last checkpoint.
    let (sizes, last_root): (Vec<u64>, Vec<u8>) = with_db(&data, |c| {
        let root = c
            .query_row(
                "SELECT root_hash FROM checkpoints WHERE log_id = 'default' AND tree_size = ?1",
                params![EVENTS as i64],
                |r| r.get(0),
            )
            .expect("last checkpoint");
        (checkpoint_sizes(c), root)
    });
    assert_eq!(report["checkpointsVerified"], sizes.len(), "{report}");
    assert_eq!(
        report["logs"][0]["checkpointsMatched"],
        sizes.len(),
        "{report}"
    );
    assert_eq!(
        report["logs"][0]["merkleRoot"],
        hex::encode(&last_root),
        "{report}"
    );
    assert!(
        stdout.contains(&format!("{} signed checkpoints match", sizes.len())),
        "{stdout}"
    );
}

/// `--public-key` pins the checkpoint keys: the store's own key (either form) verifies; any
/// other key fails every checkpoint, even though the store publishes its own key.
#[test]
fn pinned_checkpoint_public_key() {
    let (_tmp, data) = store();
    let public = checkpoint_signer(&data).public();
    for form in [public.verifier_key(), public.public_key_base64()] {
        let out = common::verify(&data, &["--public-key", &form]);
        let stdout = common::text(&out.stdout);
        assert!(
            out.status.success(),
            "--public-key {form}: {stdout}{}",
            common::text(&out.stderr)
        );
    }

    let wrong = CheckpointSigner::from_seed("vellum", &[9u8; 32])
        .expect("signer")
        .public();
    assert_ne!(wrong, public);
    let stdout = verify_fails(&data, &["--public-key", &wrong.verifier_key()]);
    let sizes = with_db(&data, checkpoint_sizes);
    for size in &sizes {
        assert!(
            stdout.contains(&format!("FAIL checkpoint of size {size}: invalid")),
            "checkpoint {size} accepted under a wrong key:\n{stdout}"
        );
    }
    let stdout = verify_fails(
        &data,
        &["--json", "--public-key", &wrong.public_key_base64()],
    );
    let (report, failures) = json_failures(&stdout);
    assert_eq!(report["checkpointsVerified"], 0, "{report}");
    assert_eq!(failures.len(), sizes.len(), "{report}");
    assert!(
        failures.iter().all(|f| f["kind"] == "checkpointInvalid"
            && f["reason"]
                .as_str()
                .is_some_and(|r| r.contains("unknown key"))),
        "{report}"
    );
}

#[test]
fn modified_body_is_named_by_seq() {
    let (_tmp, data) = store();
    with_db(&data, |c| modify_body(c, K));
    let stdout = verify_fails(&data, &[]);
    let fails = fail_lines(&stdout);
    assert!(!fails.is_empty(), "{stdout}");
    for line in &fails {
        assert!(
            line.starts_with(&format!("FAIL seq {K}:")),
            "only seq {K} was modified: {line}\n{stdout}"
        );
    }
    assert!(stdout.contains("modified"), "{stdout}");
    assert!(stdout.contains("FAILED"), "{stdout}");

    // (d) the JSON report says the same.
    let stdout = verify_fails(&data, &["--json"]);
    let (report, failures) = json_failures(&stdout);
    assert_eq!(report["ok"], false, "{report}");
    assert!(!failures.is_empty(), "{report}");
    assert!(
        failures.iter().all(|f| f["seq"] == K),
        "failures at other positions: {report}"
    );
    assert!(
        failures.iter().any(|f| f["kind"] == "hashMismatch"),
        "{report}"
    );

    // Without the secret the hash check alone still catches it.
    let stdout = verify_fails(&data, &["--no-signatures"]);
    assert!(stdout.contains(&format!("FAIL seq {K}:")), "{stdout}");
}

#[test]
fn deleted_event_is_reported_missing() {
    let (_tmp, data) = store();
    let deleted = with_db(&data, |c| {
        c.execute(
            "DELETE FROM events WHERE log_id = 'default' AND seq = ?1",
            params![K],
        )
        .expect("DELETE")
    });
    assert_eq!(deleted, 1);
    let stdout = verify_fails(&data, &[]);
    assert!(
        stdout.contains(&format!("FAIL seq {K}: missing")),
        "deletion not reported at seq {K}:\n{stdout}"
    );
    let stdout = verify_fails(&data, &["--json"]);
    let (report, failures) = json_failures(&stdout);
    assert_eq!(report["ok"], false);
    assert!(
        failures
            .iter()
            .any(|f| f["kind"] == "missing" && f["fromSeq"] == K && f["toSeq"] == K),
        "{report}"
    );
    // The signed roots no longer match; the tail is intact, so nothing says "truncated".
    let text = verify_fails(&data, &[]);
    assert_checkpoint_mismatch(&text, &failures, first_checkpoint_after(&data, K), K);
    assert!(
        failures.iter().all(|f| f["kind"] != "truncated"),
        "a deletion in the middle is not a truncated tail: {report}"
    );
}

#[test]
fn modified_body_with_recomputed_hash_is_caught() {
    let (_tmp, data) = store();
    with_db(&data, |c| {
        modify_body(c, K);
        let body = body_at(c, K);
        let hash = Sha256::digest(body.as_bytes()).to_vec();
        assert_eq!(hash.len(), 32);
        let changed = c
            .execute(
                "UPDATE events SET hash = ?1 WHERE log_id = 'default' AND seq = ?2",
                params![hash, K],
            )
            .expect("UPDATE hash");
        assert_eq!(changed, 1);
        let stored: Vec<u8> = c
            .query_row(
                "SELECT hash FROM events WHERE log_id = 'default' AND seq = ?1",
                params![K],
                |r| r.get(0),
            )
            .expect("hash");
        assert_eq!(hex::encode(stored), hex::encode(&hash));
    });
    let stdout = verify_fails(&data, &[]);
    assert!(
        stdout.contains(&format!("FAIL seq {K}:")),
        "the re-hashed event at seq {K} is not named:\n{stdout}"
    );
    assert!(
        stdout.contains(&format!("FAIL seq {}:", K + 1)) && stdout.contains("chain broken"),
        "the chain break after it is not reported:\n{stdout}"
    );
    let stdout = verify_fails(&data, &["--json"]);
    let (report, failures) = json_failures(&stdout);
    assert_eq!(report["ok"], false);
    assert!(
        failures
            .iter()
            .any(|f| f["kind"] == "signatureMismatch" && f["seq"] == K),
        "{report}"
    );
    assert!(
        failures
            .iter()
            .any(|f| f["kind"] == "chainBreak" && f["seq"] == K + 1),
        "{report}"
    );
    // The new hash changes the Merkle tree: the signed checkpoint no longer matches, and the
    // stored tile (which still holds the old leaf) is named at the altered position.
    let text = verify_fails(&data, &[]);
    assert_checkpoint_mismatch(&text, &failures, first_checkpoint_after(&data, K), K);
    assert!(
        failures
            .iter()
            .any(|f| f["kind"] == "tileMismatch" && f["seq"] == K),
        "{report}"
    );
    // Without the secret, the chain (and the signed checkpoints) still give it away.
    let stdout = verify_fails(&data, &["--no-signatures"]);
    assert!(
        stdout.contains(&format!("FAIL seq {}:", K + 1)),
        "without signatures the chain break must still be found:\n{stdout}"
    );
    assert!(stdout.contains("Merkle root"), "{stdout}");
}

#[test]
fn reordered_events_are_caught() {
    let (_tmp, data) = store();
    with_db(&data, |c| {
        // Swap the positions of K and K+1 (through a temporary position, the pair is unique).
        c.execute_batch(&format!(
            "BEGIN;
             UPDATE events SET seq = -1 WHERE log_id = 'default' AND seq = {K};
             UPDATE events SET seq = {K} WHERE log_id = 'default' AND seq = {};
             UPDATE events SET seq = {} WHERE log_id = 'default' AND seq = -1;
             COMMIT;",
            K + 1,
            K + 1
        ))
        .expect("swap");
    });
    let stdout = verify_fails(&data, &[]);
    assert!(
        stdout.contains(&format!("FAIL seq {K}:")),
        "reordering not reported at seq {K}:\n{stdout}"
    );
    let stdout_json = verify_fails(&data, &["--json"]);
    let (report, failures) = json_failures(&stdout_json);
    for seq in [K, K + 1] {
        assert!(
            failures
                .iter()
                .any(|f| f["kind"] == "misplaced" && f["seq"] == seq),
            "seq {seq} not reported as moved: {report}"
        );
    }
    assert_checkpoint_mismatch(&stdout, &failures, first_checkpoint_after(&data, K), K);
}

/// An attacker without the secret inserts a forged event in the middle: later events are
/// shifted up one position, and the forged one is chained to its predecessor (prevHash, hash
/// recomputed) with a made-up signature.
#[test]
fn inserted_forged_event_is_caught() {
    let (_tmp, data) = store();
    with_db(&data, |c| {
        c.execute_batch(&format!(
            "BEGIN;
             UPDATE events SET seq = seq + 1000 WHERE log_id = 'default' AND seq >= {K};
             UPDATE events SET seq = seq - 999 WHERE log_id = 'default' AND seq >= 1000;
             COMMIT;"
        ))
        .expect("shift");
        let (prev_body, prev_hash): (String, Vec<u8>) = c
            .query_row(
                "SELECT body, hash FROM events WHERE log_id = 'default' AND seq = ?1",
                params![K - 1],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("event before");
        let mut event: Value = serde_json::from_str(&prev_body).expect("stored JSON");
        let obj = event.as_object_mut().expect("object");
        assert!(obj.contains_key("keyId"), "{prev_body}");
        obj.insert("seq".into(), K.into());
        obj.insert("prevHash".into(), hex::encode(&prev_hash).into());
        obj.insert("id".into(), "01900000-0000-7000-8000-0000000000aa".into());
        obj.insert("outcomeDescription".into(), "forged".into());
        let body = vellum_core::canonical::to_canonical_string(&event);
        let hash = Sha256::digest(body.as_bytes()).to_vec();
        let id = [
            0x01u8, 0x90, 0, 0, 0, 0, 0x70, 0, 0x80, 0, 0, 0, 0, 0, 0, 0xaa,
        ];
        c.execute(
            "INSERT INTO events (log_id, seq, id, hash, signature, body)
             VALUES ('default', ?1, ?2, ?3, ?4, ?5)",
            params![K, &id[..], hash, &[0x5au8; 32][..], body],
        )
        .expect("INSERT");
    });
    let stdout = verify_fails(&data, &[]);
    assert!(
        stdout.contains(&format!("FAIL seq {K}: HMAC signature does not verify")),
        "the forged event at seq {K} is not named:\n{stdout}"
    );
    let stdout_json = verify_fails(&data, &["--json"]);
    let (report, failures) = json_failures(&stdout_json);
    assert!(
        failures
            .iter()
            .any(|f| f["kind"] == "signatureMismatch" && f["seq"] == K),
        "{report}"
    );
    // The displaced original now sits one position up and says so.
    assert!(
        failures
            .iter()
            .any(|f| f["kind"] == "misplaced" && f["seq"] == K + 1 && f["claimedSeq"] == K),
        "{report}"
    );
    assert_checkpoint_mismatch(&stdout, &failures, first_checkpoint_after(&data, K), K);
    // Without the secret the forged event's own hash and link are fine, but the signed
    // checkpoints are not.
    let stdout = verify_fails(&data, &["--no-signatures"]);
    assert!(stdout.contains("Merkle root"), "{stdout}");
}

/// The last events are deleted: the checkpoints covering them say the tail was cut, and where.
#[test]
fn truncated_tail_is_caught() {
    const CUT: u64 = 8;
    let (_tmp, data) = store();
    let deleted = with_db(&data, |c| {
        c.execute(
            "DELETE FROM events WHERE log_id = 'default' AND seq >= ?1",
            params![(EVENTS - CUT) as i64],
        )
        .expect("DELETE")
    });
    assert_eq!(deleted as u64, CUT);
    let stdout = verify_fails(&data, &[]);
    let fails = fail_lines(&stdout);
    assert!(
        fails.iter().any(
            |l| l.starts_with(&format!("FAIL seq {}..{EVENTS}:", EVENTS - CUT))
                && l.contains("tail truncated")
        ),
        "truncation not reported from seq {}:\n{stdout}",
        EVENTS - CUT
    );
    // The remaining events and the checkpoints they still reach are intact.
    assert_eq!(fails.len(), 1, "{stdout}");
    let stdout = verify_fails(&data, &["--json"]);
    let (report, failures) = json_failures(&stdout);
    assert_eq!(
        failures,
        vec![serde_json::json!({
            "kind": "truncated",
            "logSize": EVENTS - CUT,
            "treeSize": EVENTS,
        })],
        "{report}"
    );
    assert!(
        report["logs"][0]["checkpointsMatched"].as_u64().unwrap() >= 1,
        "{report}"
    );
}

/// One bit of one stored leaf hash flips in a Merkle tile (the events are intact): proofs
/// served from it would be wrong, and verify names the leaf.
#[test]
fn corrupted_merkle_tile_is_caught() {
    let (_tmp, data) = store();
    with_db(&data, |c| {
        let mut hashes: Vec<u8> = c
            .query_row(
                "SELECT hashes FROM merkle_tiles WHERE log_id = 'default' AND level = 0 AND idx = 0",
                [],
                |r| r.get(0),
            )
            .expect("tile 0/0");
        assert_eq!(hashes.len() as u64, 32 * EVENTS);
        hashes[K as usize * 32 + 5] ^= 0x10;
        let changed = c
            .execute(
                "UPDATE merkle_tiles SET hashes = ?1 WHERE log_id = 'default' AND level = 0 AND idx = 0",
                params![hashes],
            )
            .expect("UPDATE tile");
        assert_eq!(changed, 1);
    });
    let stdout = verify_fails(&data, &[]);
    assert!(
        fail_lines(&stdout)
            .iter()
            .any(|l| l.starts_with(&format!("FAIL seq {K}: stored Merkle tile"))),
        "the corrupted tile is not located at seq {K}:\n{stdout}"
    );
    let stdout = verify_fails(&data, &["--json"]);
    let (report, failures) = json_failures(&stdout);
    assert!(
        failures
            .iter()
            .any(|f| f["kind"] == "tileMismatch" && f["seq"] == K && f["level"] == 0),
        "{report}"
    );
    // The events themselves are fine.
    assert!(
        failures
            .iter()
            .all(|f| ["tileMismatch", "inconsistent"].contains(&f["kind"].as_str().unwrap())),
        "{report}"
    );
}

/// A checkpoint's note signature is altered, and another's JSON signature column: each is
/// reported invalid by its tree size, and verification fails.
#[test]
fn corrupted_checkpoint_signature_is_caught() {
    let (_tmp, data) = store();
    with_db(&data, |c| {
        let note: String = c
            .query_row(
                "SELECT note FROM checkpoints WHERE log_id = 'default' AND tree_size = 30",
                [],
                |r| r.get(0),
            )
            .expect("note");
        // The signature line is `— vellum <base64(keyId || signature)>`; change one base64
        // character inside the signature bytes.
        let sig_start = note.rfind(' ').expect("signature line") + 1;
        let mut bytes = note.into_bytes();
        let at = sig_start + 20;
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).expect("UTF-8");
        let changed = c
            .execute(
                "UPDATE checkpoints SET note = ?1 WHERE log_id = 'default' AND tree_size = 30",
                params![tampered],
            )
            .expect("UPDATE note");
        assert_eq!(changed, 1);
        let changed = c
            .execute(
                "UPDATE checkpoints SET signature = replace(signature, substr(signature, 10, 1),
                     CASE substr(signature, 10, 1) WHEN 'x' THEN 'y' ELSE 'x' END)
                 WHERE log_id = 'default' AND tree_size = 35",
                [],
            )
            .expect("UPDATE signature");
        assert_eq!(changed, 1);
    });
    let stdout = verify_fails(&data, &[]);
    for size in [30, 35] {
        assert!(
            stdout.contains(&format!("FAIL checkpoint of size {size}: invalid")),
            "checkpoint {size} not reported:\n{stdout}"
        );
    }
    let stdout = verify_fails(&data, &["--json"]);
    let (report, failures) = json_failures(&stdout);
    let invalid: Vec<u64> = failures
        .iter()
        .filter(|f| f["kind"] == "checkpointInvalid")
        .map(|f| f["treeSize"].as_u64().unwrap())
        .collect();
    assert_eq!(invalid, vec![30, 35], "{report}");
    assert_eq!(failures.len(), 2, "{report}");
}

#[test]
fn stripped_signature_is_caught() {
    let (_tmp, data) = store();
    let changed = with_db(&data, |c| {
        c.execute(
            "UPDATE events SET signature = NULL WHERE log_id = 'default' AND seq = ?1",
            params![K],
        )
        .expect("UPDATE")
    });
    assert_eq!(changed, 1);
    let stdout = verify_fails(&data, &[]);
    assert!(stdout.contains(&format!("FAIL seq {K}:")), "{stdout}");
}

#[test]
fn wrong_or_missing_secret() {
    let (tmp, data) = store();
    // Another secret: every signature fails.
    let mut cmd = common::vellum(tmp.path());
    cmd.env("AUDIT_CRYPTO_SECRET", "a-completely-different-secret-value")
        .args(["verify", "--json", "--data-dir"])
        .arg(&data);
    let out = common::run(cmd, common::CLI_LIMIT);
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out.stdout));
    let (_, failures) = json_failures(&common::text(&out.stdout));
    assert_eq!(failures.len() as u64, EVENTS, "every signature must fail");

    // No secret at all (the server ran with AUDIT_CRYPTO_SECRET, so no secret.key): refused
    // with a message, unless signatures are explicitly skipped.
    assert!(!data.join("secret.key").exists());
    let mut cmd = common::vellum(tmp.path());
    cmd.args(["verify", "--data-dir"]).arg(&data);
    let out = common::run(cmd, common::CLI_LIMIT);
    assert!(!out.status.success());
    let stderr = common::text(&out.stderr);
    assert!(stderr.contains("AUDIT_CRYPTO_SECRET"), "{stderr}");

    let mut cmd = common::vellum(tmp.path());
    cmd.args(["verify", "--no-signatures", "--data-dir"])
        .arg(&data);
    let out = common::run(cmd, common::CLI_LIMIT);
    let stdout = common::text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("signatures NOT checked"), "{stdout}");
}

/// An attacker without the secret appends a forged event at the end of the log: the body is
/// self-consistent (hash = SHA-256 of the text, prevHash = the last event's hash) but carries
/// no keyId and no signature. With signatures enabled, that must not verify.
#[test]
fn forged_unsigned_event_appended_is_caught() {
    let (_tmp, data) = store();
    let forged_seq = EVENTS as i64;
    with_db(&data, |c| {
        let (last_body, last_hash): (String, Vec<u8>) = c
            .query_row(
                "SELECT body, hash FROM events WHERE log_id = 'default' AND seq = ?1",
                params![forged_seq - 1],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("last event");
        let mut event: Value = serde_json::from_str(&last_body).expect("stored JSON");
        let obj = event.as_object_mut().expect("object");
        assert!(
            obj.remove("keyId").is_some(),
            "events are signed: {last_body}"
        );
        obj.insert("seq".into(), forged_seq.into());
        obj.insert("prevHash".into(), hex::encode(&last_hash).into());
        obj.insert("id".into(), "01900000-0000-7000-8000-000000000001".into());
        obj.insert("outcomeDescription".into(), "forged".into());
        let body = serde_json::to_string(&event).expect("JSON");
        let hash = Sha256::digest(body.as_bytes()).to_vec();
        let id = [0x01u8, 0x90, 0, 0, 0, 0, 0x70, 0, 0x80, 0, 0, 0, 0, 0, 0, 1];
        c.execute(
            "INSERT INTO events (log_id, seq, id, hash, signature, body)
             VALUES ('default', ?1, ?2, ?3, NULL, ?4)",
            params![forged_seq, &id[..], hash, body],
        )
        .expect("INSERT");
    });
    let stdout = verify_fails(&data, &[]);
    assert!(
        stdout.contains(&format!("FAIL seq {forged_seq}:")),
        "the forged event is not named:\n{stdout}"
    );
}

/// A store written with `AUDIT_ENABLE_SIGNATURES=false` verifies with the same setting (hashes
/// and chain still checked), and fails when signatures are required.
#[test]
fn store_written_without_signatures() {
    let (tmp, data) = store_with(|cmd| {
        cmd.env("AUDIT_ENABLE_SIGNATURES", "false");
    });
    let verify_unsigned = |extra: &[&str]| {
        let mut cmd = common::vellum(tmp.path());
        cmd.env("AUDIT_CRYPTO_SECRET", common::SECRET)
            .env("AUDIT_ENABLE_SIGNATURES", "false")
            .args(["verify", "--data-dir"])
            .arg(&data)
            .args(extra);
        common::run(cmd, common::CLI_LIMIT)
    };
    let out = verify_unsigned(&[]);
    let stdout = common::text(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        common::text(&out.stderr)
    );
    assert!(stdout.contains("OK"), "{stdout}");

    // Verified as if signatures were on: every event is reported unsigned.
    let stdout = verify_fails(&data, &["--json"]);
    let (_, failures) = json_failures(&stdout);
    assert_eq!(failures.len() as u64, EVENTS, "{stdout}");
    assert!(failures.iter().all(|f| f["kind"] == "unsigned"), "{stdout}");

    // Tampering is still found by hash.
    with_db(&data, |c| modify_body(c, K));
    let out = verify_unsigned(&[]);
    let stdout = common::text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(&format!("FAIL seq {K}:")), "{stdout}");
}

/// The `id` column is a lookup index outside the hash: swapping it between two events would
/// make `GET /v1/events/{id}` serve the wrong event. Verify names both positions; the store
/// refuses to serve a row whose body carries another id.
#[test]
fn swapped_id_columns_are_caught() {
    let (_tmp, data) = store();
    with_db(&data, |c| {
        let id_at = |seq: i64| -> Vec<u8> {
            c.query_row("SELECT id FROM events WHERE seq = ?1", [seq], |r| r.get(0))
                .expect("id")
        };
        let (a, b) = (id_at(K), id_at(K + 1));
        // Through a placeholder, as the column is UNIQUE.
        c.execute("UPDATE events SET id = x'00' WHERE seq = ?1", [K])
            .expect("park");
        c.execute(
            "UPDATE events SET id = ?1 WHERE seq = ?2",
            rusqlite::params![a, K + 1],
        )
        .expect("swap 1");
        c.execute(
            "UPDATE events SET id = ?1 WHERE seq = ?2",
            rusqlite::params![b, K],
        )
        .expect("swap 2");
    });
    let stdout = verify_fails(&data, &["--json"]);
    let (_, failures) = json_failures(&stdout);
    let misfiled: Vec<&Value> = failures
        .iter()
        .filter(|f| f["kind"] == "misfiled")
        .collect();
    assert_eq!(misfiled.len(), 2, "{stdout}");
    assert_eq!(misfiled[0]["seq"], K);
    assert_eq!(misfiled[1]["seq"], K + 1);
    assert_eq!(failures.len(), 2, "nothing else is wrong: {stdout}");

    let store = vellum_store::sqlite::SqliteStore::open(
        &data,
        vellum_store::sqlite::SqliteOptions {
            run_indexer: false,
            ..Default::default()
        },
    )
    .expect("store");
    let filed_id = with_db(&data, |c| -> Vec<u8> {
        c.query_row("SELECT id FROM events WHERE seq = ?1", [K], |r| r.get(0))
            .expect("id")
    });
    let uuid = uuid::Uuid::from_slice(&filed_id).expect("uuid");
    let served = vellum_store::AuditStore::get_event(store.as_ref(), &uuid);
    assert!(
        matches!(served, Err(vellum_store::StoreError::Corrupt(_))),
        "served the wrong event: {served:?}"
    );
    store.shutdown();
}
