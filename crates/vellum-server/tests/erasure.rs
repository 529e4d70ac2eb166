//! Erasure by crypto-shredding end to end (SPEC §7, GDPR Art. 17; issue 5): a real server and
//! store. A data subject's values are stored sealed (never in clear, in any file), auditors read
//! them decrypted, readers do not; after `POST /v1/subjects/{id}/erase` the values are
//! unreadable, a search by the subject finds nothing, verification still passes, and the
//! erasure is in the log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::call;

use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;
use vellum_server::ServerConfig;
use zeroize::Zeroizing;

const EMAIL: &str = "jane.roe.0451@example.org";
const IP: &str = "203.0.113.177";
const SUBJECT: &str = "ds-7f3a9c-subject";

/// Every file of the data directory, as bytes (main files and WALs).
fn store_bytes(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_shreds_the_subject_and_verification_still_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        data_dir: data.clone(),
        crypto_secret: Some(Zeroizing::new(
            "erasure-test-secret-0123456789abcdef".into(),
        )),
        index_wait_ms: 60_000,
        ..ServerConfig::default()
    };
    let server = vellum_server::start(config.clone()).await.expect("server");
    let admin = std::fs::read_to_string(server.admin_key_file.clone().expect("admin"))
        .expect("key")
        .trim()
        .to_owned();
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let (_, reader) = call(
        &client,
        &base,
        &admin,
        Method::POST,
        "/v1/api-keys",
        Some(&json!({"role": "reader"})),
    )
    .await;
    let reader = reader["key"].as_str().expect("key").to_owned();

    let subject_event = |n: u32| {
        json!({
            "action": "gdpr.record.access", "status": "success", "principalId": "dpo-1",
            "dataClassification": "CONFIDENTIAL",
            "gdprContext": {"dataSubjectId": SUBJECT, "lawfulBasis": "consent"},
            "sessionContext": {"ipAddress": IP, "sessionId": format!("s-{n}")},
            "outcomeDescription": format!("exported record {n} and emailed {EMAIL}"),
        })
    };
    let mut ids = Vec::new();
    for n in 0..3 {
        let (status, receipt) = call(
            &client,
            &base,
            &admin,
            Method::POST,
            "/v1/events",
            Some(&subject_event(n)),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{receipt}");
        ids.push(receipt["id"].as_str().expect("id").to_owned());
    }
    let (_, other) = call(
        &client,
        &base,
        &admin,
        Method::POST,
        "/v1/events",
        Some(&json!({
            "action": "gdpr.record.access", "status": "success", "principalId": "dpo-1",
            "gdprContext": {"dataSubjectId": "ds-other"}, "outcomeDescription": "other subject",
        })),
    )
    .await;
    let other_id = other["id"].as_str().expect("id").to_owned();

    // Stored sealed; an auditor/admin reads the plaintext in `decrypted`, a reader does not.
    let (status, event) = call(
        &client,
        &base,
        &admin,
        Method::GET,
        &format!("/v1/events/{}", ids[0]),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert!(event.get("sealed").is_some(), "{event}");
    assert!(
        event["gdprContext"].get("dataSubjectId").is_none(),
        "{event}"
    );
    assert_eq!(event["gdprContext"]["lawfulBasis"], "consent");
    assert_eq!(event["decrypted"]["/gdprContext/dataSubjectId"], SUBJECT);
    assert_eq!(event["decrypted"]["/sessionContext/ipAddress"], IP);
    let (_, seen_by_reader) = call(
        &client,
        &base,
        &reader,
        Method::GET,
        &format!("/v1/events/{}", ids[0]),
        None,
    )
    .await;
    assert!(
        seen_by_reader.get("decrypted").is_none(),
        "{seen_by_reader}"
    );
    assert!(!seen_by_reader.to_string().contains(EMAIL));
    // Search by the subject finds its events (through its key), and only those.
    let (_, page) = call(
        &client,
        &base,
        &admin,
        Method::GET,
        &format!("/v1/events?dataSubjectId={SUBJECT}"),
        None,
    )
    .await;
    let found: Vec<&str> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    assert_eq!(found.len(), 3, "{page}");
    assert!(page["events"][0]["decrypted"].is_object(), "{page}");

    // Erase.
    let (status, erased) = call(
        &client,
        &base,
        &admin,
        Method::POST,
        &format!("/v1/subjects/{SUBJECT}/erase"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{erased}");
    let subject_ref = erased["subjectRef"].as_str().expect("ref").to_owned();
    let (status, _) = call(
        &client,
        &base,
        &admin,
        Method::POST,
        &format!("/v1/subjects/{SUBJECT}/erase"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "already erased");
    let (status, _) = call(
        &client,
        &base,
        &reader,
        Method::POST,
        "/v1/subjects/ds-other/erase",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Unreadable, unfindable; the other subject untouched.
    let (_, event) = call(
        &client,
        &base,
        &admin,
        Method::GET,
        &format!("/v1/events/{}", ids[0]),
        None,
    )
    .await;
    assert_eq!(event["decrypted"], json!({"erased": true}), "{event}");
    let (_, page) = call(
        &client,
        &base,
        &admin,
        Method::GET,
        &format!("/v1/events?dataSubjectId={SUBJECT}"),
        None,
    )
    .await;
    assert_eq!(page["events"], json!([]), "{page}");
    let (_, other_now) = call(
        &client,
        &base,
        &admin,
        Method::GET,
        &format!("/v1/events/{other_id}"),
        None,
    )
    .await;
    assert_eq!(
        other_now["decrypted"]["/gdprContext/dataSubjectId"],
        "ds-other"
    );
    // Verification passes: not one stored byte of the events changed.
    let (status, report) = call(
        &client,
        &base,
        &admin,
        Method::POST,
        "/v1/verify",
        Some(&json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["ok"], true, "{report}");
    // The erasure is in the log, naming the subject only by its reference.
    let (_, erasures) = call(
        &client,
        &base,
        &admin,
        Method::GET,
        "/v1/events?action=gdpr.erasure",
        None,
    )
    .await;
    let erasures = erasures["events"].as_array().expect("events").clone();
    assert_eq!(erasures.len(), 1, "{erasures:?}");
    assert_eq!(erasures[0]["targetResourceId"], subject_ref.as_str());
    assert!(!erasures[0].to_string().contains(SUBJECT));

    server.shutdown().await.expect("clean shutdown");
    // No file of the data directory holds the subject's id or values in clear — not the log,
    // not the index, not a WAL, not the audit records of the searches by that subject.
    for (name, bytes) in store_bytes(&data) {
        for secret in [EMAIL, IP, SUBJECT] {
            assert!(!contains(&bytes, secret), "{secret} in clear in {name}");
        }
    }
}
