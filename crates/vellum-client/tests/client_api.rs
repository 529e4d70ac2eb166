//! The client against a real Vellum server on 127.0.0.1 (started in process, over real TCP):
//! receipts, batching, idempotent retries, permanent rejections, the circuit breaker's
//! transitions, and the verification helpers on what the server hands out.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use vellum_client::verify::{self, InclusionProof, PublishedKey, VerifyError};
use vellum_client::{
    BreakerConfig, BreakerState, Client, ClientError, DataClassification, Event, PrincipalType,
    RetryPolicy, Status,
};
use vellum_server::{RunningServer, ServerConfig};
use zeroize::Zeroizing;

const SECRET: &str = "client-test-secret-0123456789abcdef";

fn config(dir: &Path, listen: SocketAddr) -> ServerConfig {
    ServerConfig {
        listen,
        data_dir: dir.to_path_buf(),
        crypto_secret: Some(Zeroizing::new(SECRET.to_owned())),
        index_wait_ms: 60_000,
        ..ServerConfig::default()
    }
}

async fn start(dir: &Path, listen: SocketAddr) -> (RunningServer, String) {
    let server = vellum_server::start(config(dir, listen)).await.unwrap();
    let key = std::fs::read_to_string(dir.join("admin.key"))
        .unwrap()
        .trim()
        .to_owned();
    (server, key)
}

fn quick_client(url: &str, key: &str) -> Client {
    Client::builder()
        .url(url)
        .api_key(key)
        .retry(RetryPolicy {
            max_attempts: 2,
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
        })
        .breaker(BreakerConfig {
            failure_threshold: 2,
            open_for: Duration::from_millis(400),
        })
        .connect_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

fn read_event(n: u64) -> Event {
    Event::new("fhir.patient.read", Status::Success)
        .principal("dr-ana", PrincipalType::Professional)
        .organization("clinic-1")
        .target("Patient", format!("p-{n}"))
        .classification(DataClassification::Phi)
        .patient(format!("p-{n}"))
        .detail("n", n)
}

async fn get(url: &str, key: &str, path: &str) -> Value {
    let response = reqwest::Client::new()
        .get(format!("{url}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "GET {path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_returns_receipts_batches_concurrent_calls_and_never_duplicates_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let (server, key) = start(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let url = format!("http://{}", server.addr);
    let client = quick_client(&url, &key);

    // Concurrent `log` calls each get their own receipt with distinct positions.
    let calls: Vec<_> = (0..50)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move { client.log(read_event(n)).await })
        })
        .collect();
    let mut seqs = Vec::new();
    for call in calls {
        let receipt = call.await.unwrap().unwrap();
        assert_eq!(receipt.log_id, "default");
        assert!(!receipt.is_queued());
        assert_eq!(receipt.hash.as_ref().map(String::len), Some(64));
        seqs.push(receipt.seq.unwrap());
    }
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 50);

    // A resend with the same idempotency key (what a retry after a lost answer is) gets the
    // first receipt back, not a second event.
    let event = read_event(99).with_idempotency_key("order-4711");
    let first = client.log(event.clone()).await.unwrap();
    let again = client.log(event).await.unwrap();
    assert_eq!(first, again);
    let page = get(&url, &key, "/v1/events?targetResourceId=p-99").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);

    // log_batch: each event's fate, in order; the refused one names its field.
    let mut bad = read_event(100).into_json();
    bad["status"] = json!("maybe");
    let results = client
        .log_batch(vec![read_event(101), Event::from_json(bad).unwrap()])
        .await
        .unwrap();
    assert!(results[0].is_ok());
    let rejection = results[1].as_ref().unwrap_err();
    assert_eq!(rejection.status, 422);
    assert!(
        rejection.details.iter().any(|d| d.path == "/status"),
        "{rejection:?}"
    );

    // A refused single `log` is an error the caller can read.
    let mut bad = read_event(102).into_json();
    bad["hash"] = json!("00");
    match client.log(Event::from_json(bad).unwrap()).await {
        Err(ClientError::Rejected(r)) => {
            assert!(r.details.iter().any(|d| d.path == "/hash"), "{r:?}")
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    // A wrong key is not the event's fault and says so.
    let stranger = quick_client(&url, "vk_not-a-real-key");
    assert!(matches!(
        stranger.log(read_event(103)).await,
        Err(ClientError::Unauthorized(_))
    ));
    assert_eq!(client.stats().breaker, BreakerState::Closed);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_probes_and_closes_as_the_server_goes_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    // Reserve a port, then leave it closed: connections are refused, as with a dead server.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{addr}");
    let client = quick_client(&url, "not-yet");
    let mut states = client.watch_breaker();
    assert_eq!(client.breaker_state(), BreakerState::Closed);

    // Two failed attempts (one call, retried once) reach the threshold.
    match client.log(read_event(1)).await {
        Err(ClientError::Unavailable { attempts, last }) => {
            assert_eq!(attempts, 2);
            assert!(last.contains("connect"), "{last}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(client.breaker_state(), BreakerState::Open);
    assert!(states.has_changed().unwrap());
    assert_eq!(*states.borrow_and_update(), BreakerState::Open);
    // While open, calls fail at once without touching the network.
    match client.log(read_event(2)).await {
        Err(ClientError::CircuitOpen { retry_after }) => {
            assert!(retry_after <= Duration::from_millis(400));
        }
        other => panic!("expected CircuitOpen, got {other:?}"),
    }

    // After the open period the breaker admits one probe; it fails, so it opens again.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(client.breaker_state(), BreakerState::HalfOpen);
    assert!(client.log(read_event(3)).await.is_err());
    assert_eq!(client.breaker_state(), BreakerState::Open);

    // The server comes back on that address; the next probe succeeds and closes it.
    let (server, key) = start(dir.path(), addr).await;
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(client.breaker_state(), BreakerState::HalfOpen);
    // The probe reaches the server: 401 (wrong key) still proves it is up, so it closes.
    assert!(matches!(
        client.log(read_event(4)).await,
        Err(ClientError::Unauthorized(_))
    ));
    assert_eq!(client.breaker_state(), BreakerState::Closed);
    let seen: Vec<BreakerState> = {
        let mut seen = vec![*states.borrow_and_update()];
        while states.has_changed().unwrap_or(false) {
            seen.push(*states.borrow_and_update());
        }
        seen
    };
    assert_eq!(seen.last(), Some(&BreakerState::Closed));
    let good = quick_client(&url, &key);
    assert!(good.log(read_event(5)).await.is_ok());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_helpers_accept_what_the_server_serves_and_catch_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let (server, key) = start(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let url = format!("http://{}", server.addr);
    let client = quick_client(&url, &key);
    let mut last = None;
    for n in 0..7 {
        last = Some(client.log(read_event(n)).await.unwrap());
    }
    let receipt = last.unwrap();

    // Wait for a checkpoint covering the event, then fetch event, proof and keys.
    let proof: InclusionProof = loop {
        let p = get(&url, &key, &format!("/v1/events/{}/proof", receipt.id)).await;
        if p.get("checkpoint").is_some() {
            break serde_json::from_value(p).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let event = get(&url, &key, &format!("/v1/events/{}", receipt.id)).await;
    let keys: Vec<PublishedKey> =
        serde_json::from_value(get(&url, &key, "/v1/keys").await["checkpointKeys"].clone())
            .unwrap();
    let checkpoint = proof.checkpoint.clone().unwrap();

    assert_eq!(
        verify::event_hash(&event).unwrap(),
        receipt.hash.clone().unwrap()
    );
    verify::check_hash(&event).unwrap();
    verify::check_signature(&event, SECRET.as_bytes()).unwrap();
    verify::verify_checkpoint(&checkpoint, &keys).unwrap();
    verify::verify_inclusion(&event, &proof, &checkpoint).unwrap();
    verify::verify_event(&event, &proof, &checkpoint, &keys, Some(SECRET.as_bytes())).unwrap();

    // Tampering with any part is caught, each by the check that should catch it.
    let mut altered = event.clone();
    altered["principalId"] = json!("someone-else");
    assert!(matches!(
        verify::check_hash(&altered),
        Err(VerifyError::HashMismatch { .. })
    ));
    assert!(matches!(
        verify::check_signature(&event, b"another-secret-0123456789"),
        Err(VerifyError::SignatureMismatch { .. })
    ));
    let mut bad_proof = proof.clone();
    if let Some(h) = bad_proof.hashes.first_mut() {
        *h = "00".repeat(32);
    } else {
        bad_proof.leaf_index += 1;
    }
    assert!(matches!(
        verify::verify_inclusion(&event, &bad_proof, &checkpoint),
        Err(VerifyError::Inclusion(_))
    ));
    let mut forged = checkpoint.clone();
    forged.root_hash = "11".repeat(32);
    assert!(matches!(
        verify::verify_checkpoint(&forged, &keys),
        Err(VerifyError::Checkpoint(_))
    ));
    let mut wrong_key = keys.clone();
    wrong_key[0].key_id = "00000000".into();
    assert!(matches!(
        verify::verify_checkpoint(&checkpoint, &wrong_key),
        Err(VerifyError::BadKey(_))
    ));
    server.shutdown().await.unwrap();
}
