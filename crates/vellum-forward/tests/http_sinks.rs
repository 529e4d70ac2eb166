//! Splunk HEC, OCSF and FHIR sinks end to end: events posted to a real Vellum server are
//! forwarded from its store to a real HTTP receiver on 127.0.0.1 that checks the path, the
//! authorization header and the body's shape, and answers like the real systems do.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use vellum_core::forward::ocsf::missing_required;
use vellum_forward::{SinkConfig, SinkKind, dead_letters};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splunk_hec_gets_stacked_events_with_the_token() {
    let server = Server::start().await;
    server.post_n("hec", 45).await;
    let receiver = Receiver::start(Arc::new(|r: &Received| {
        let ok = r.path == "/services/collector/event"
            && r.header("authorization") == Some("Splunk 11111111-2222-3333-4444-555555555555");
        if ok {
            (200, vec![], r#"{"text":"Success","code":0}"#.into())
        } else {
            (403, vec![], r#"{"text":"Invalid token","code":4}"#.into())
        }
    }))
    .await;
    let mut sink = quick(SinkConfig::new(
        "splunk",
        SinkKind::Splunk {
            url: format!("{}/", receiver.url),
            token_env: "HEC_TOKEN".into(),
            index: Some("audit".into()),
            sourcetype: "vellum:audit".into(),
            ca_file: None,
        },
    ));
    sink.batch_size = 20;
    let forwarder = start_forwarder(
        server.store(),
        vec![sink],
        &[("HEC_TOKEN", "11111111-2222-3333-4444-555555555555")],
    );
    let want = server.stored().await;
    let envelopes = |requests: &[Received]| -> Vec<Value> {
        requests
            .iter()
            .flat_map(|r| {
                std::str::from_utf8(&r.body)
                    .unwrap()
                    .split('\n')
                    .map(|line| serde_json::from_str::<Value>(line).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    wait_for("every event at HEC", Duration::from_secs(60), || {
        envelopes(&receiver.accepted()).len() >= want.len()
    })
    .await;
    let requests = receiver.requests();
    assert!(requests.iter().all(|r| r.status == 200));
    assert!(
        requests
            .iter()
            .all(|r| r.header("content-type") == Some("application/json"))
    );
    let got = envelopes(&requests);
    for envelope in &got {
        assert_eq!(envelope["sourcetype"], "vellum:audit");
        assert_eq!(envelope["source"], "vellum");
        assert_eq!(envelope["index"], "audit");
        assert_eq!(envelope["host"], "test-host");
        assert!(envelope["time"].is_f64() || envelope["time"].is_u64());
    }
    let events: Vec<Value> = got.iter().map(|e| e["event"].clone()).collect();
    assert_same_events(&events[..want.len()], &want);
    forwarder.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splunk_invalid_event_number_parks_only_that_event() {
    let server = Server::start().await;
    let receipts = server.post_n("hec-bad", 12).await;
    let bad_id = receipts[5]["id"].as_str().unwrap().to_owned();
    let needle = bad_id.clone();
    // Like HEC: stacked events are indexed in order up to the first bad one.
    let indexed = Arc::new(parking_lot::Mutex::new(Vec::<Value>::new()));
    let sink_log = indexed.clone();
    let receiver = Receiver::start(Arc::new(move |r: &Received| {
        let text = std::str::from_utf8(&r.body).unwrap();
        for (n, line) in text.split('\n').enumerate() {
            let envelope: Value = serde_json::from_str(line).unwrap();
            if envelope["event"]["id"] == needle.as_str() {
                return (
                    400,
                    vec![],
                    json!({"text": "Invalid data format", "code": 6, "invalid-event-number": n})
                        .to_string(),
                );
            }
            sink_log.lock().push(envelope["event"].clone());
        }
        (200, vec![], r#"{"text":"Success","code":0}"#.into())
    }))
    .await;
    let sink = quick(SinkConfig::new(
        "splunk-bad",
        SinkKind::Splunk {
            url: receiver.url.clone(),
            token_env: "HEC_TOKEN".into(),
            index: None,
            sourcetype: "vellum:audit".into(),
            ca_file: None,
        },
    ));
    let forwarder = start_forwarder(server.store(), vec![sink], &[("HEC_TOKEN", "t")]);
    let want: Vec<Value> = server
        .stored()
        .await
        .into_iter()
        .filter(|e| e["id"] != bad_id.as_str())
        .collect();
    wait_for("the good events", Duration::from_secs(60), || {
        indexed.lock().len() >= want.len()
    })
    .await;
    assert_same_events(&indexed.lock()[..want.len()], &want);
    wait_for("the dead letter", Duration::from_secs(10), || {
        status(&forwarder, "splunk-bad").dead_letters == 1
    })
    .await;
    let dead = dead_letters(server.store.as_ref(), "splunk-bad").unwrap();
    assert_eq!(dead[0].event_id.as_deref(), Some(bad_id.as_str()));
    assert!(dead[0].reason.contains("Invalid data format"));
    forwarder.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsf_receiver_gets_valid_ocsf_arrays() {
    let server = Server::start().await;
    server.post_n("ocsf", 33).await;
    let receiver = Receiver::start(Arc::new(|r: &Received| {
        let ok = r.path == "/ingest/ocsf" && r.header("authorization") == Some("Bearer lake-token");
        (if ok { 202 } else { 401 }, vec![], String::new())
    }))
    .await;
    let mut sink = quick(SinkConfig::new(
        "lake",
        SinkKind::Ocsf {
            url: format!("{}/ingest/ocsf", receiver.url),
            token_env: Some("LAKE_TOKEN".into()),
            ca_file: None,
        },
    ));
    sink.batch_size = 10;
    let forwarder = start_forwarder(server.store(), vec![sink], &[("LAKE_TOKEN", "lake-token")]);
    let want = server.stored().await;
    let objects = |requests: &[Received]| -> Vec<Value> {
        requests
            .iter()
            .flat_map(|r| r.json().as_array().unwrap().clone())
            .collect()
    };
    wait_for("every event as OCSF", Duration::from_secs(60), || {
        objects(&receiver.accepted()).len() >= want.len()
    })
    .await;
    let requests = receiver.requests();
    assert!(requests.iter().all(|r| r.status == 202));
    let got = objects(&requests);
    for (ocsf, event) in got.iter().zip(&want) {
        assert_eq!(missing_required(ocsf), Vec::<String>::new(), "{ocsf}");
        assert_eq!(ocsf["metadata"]["uid"], event["id"]);
        assert_eq!(ocsf["metadata"]["sequence"], event["seq"]);
        let raw: Value = serde_json::from_str(ocsf["raw_data"].as_str().unwrap()).unwrap();
        assert_eq!(&raw, event);
    }
    assert!(got.len() >= want.len());
    forwarder.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_server_gets_batch_bundles_of_audit_events() {
    let server = Server::start().await;
    server.post_n("fhir", 25).await;
    // Answers like a FHIR server: a batch-response with one entry per request entry.
    let receiver = Receiver::start(Arc::new(|r: &Received| {
        let bundle = r.json();
        let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
        let ok = r.path == "/fhir/r4"
            && r.header("content-type") == Some("application/fhir+json")
            && bundle["resourceType"] == "Bundle"
            && bundle["type"] == "batch";
        if !ok {
            return (400, vec![], "not a batch".into());
        }
        let responses: Vec<Value> = entries
            .iter()
            .map(|_| json!({"response": {"status": "201 Created"}}))
            .collect();
        (
            200,
            vec![],
            json!({"resourceType": "Bundle", "type": "batch-response", "entry": responses})
                .to_string(),
        )
    }))
    .await;
    let mut sink = quick(SinkConfig::new(
        "arr",
        SinkKind::Fhir {
            url: format!("{}/fhir/r4/", receiver.url),
            token_env: None,
            ca_file: None,
        },
    ));
    sink.batch_size = 8;
    let forwarder = start_forwarder(server.store(), vec![sink], &[]);
    let want = server.stored().await;
    let entries = |requests: &[Received]| -> Vec<Value> {
        requests
            .iter()
            .flat_map(|r| r.json()["entry"].as_array().unwrap().clone())
            .collect()
    };
    wait_for(
        "every event as an AuditEvent",
        Duration::from_secs(60),
        || entries(&receiver.accepted()).len() >= want.len(),
    )
    .await;
    let requests = receiver.requests();
    assert!(requests.iter().all(|r| r.status == 200));
    assert!(requests.iter().all(|r| r.header("authorization").is_none()));
    for r in &requests {
        assert!(r.json()["entry"].as_array().unwrap().len() <= 8);
    }
    let got = entries(&requests);
    for (entry, event) in got.iter().zip(&want) {
        assert_eq!(entry["resource"]["resourceType"], "AuditEvent");
        assert_eq!(
            entry["request"],
            json!({"method": "POST", "url": "AuditEvent"})
        );
        assert_eq!(entry["resource"]["id"], event["id"]);
        let hash = entry["resource"]["extension"][0]["valueString"].clone();
        assert_eq!(hash, event["hash"]);
    }
    assert!(got.len() >= want.len());
    forwarder.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_entry_refused_by_the_server_is_parked() {
    let server = Server::start().await;
    let receipts = server.post_n("fhir-bad", 10).await;
    let bad_id = receipts[3]["id"].as_str().unwrap().to_owned();
    let needle = bad_id.clone();
    let receiver = Receiver::start(Arc::new(move |r: &Received| {
        let responses: Vec<Value> = r.json()["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                if e["resource"]["id"] == needle.as_str() {
                    json!({"response": {"status": "422 Unprocessable Entity", "outcome": {
                        "resourceType": "OperationOutcome",
                        "issue": [{"severity": "error", "code": "invalid", "diagnostics": "AuditEvent.agent: minimum required = 1"}]}}})
                } else {
                    json!({"response": {"status": "201 Created"}})
                }
            })
            .collect();
        (
            200,
            vec![],
            json!({"resourceType": "Bundle", "type": "batch-response", "entry": responses})
                .to_string(),
        )
    }))
    .await;
    let sink = quick(SinkConfig::new(
        "arr-bad",
        SinkKind::Fhir {
            url: receiver.url.clone(),
            token_env: Some("FHIR_TOKEN".into()),
            ca_file: None,
        },
    ));
    let forwarder = start_forwarder(server.store(), vec![sink], &[("FHIR_TOKEN", "fhir-t")]);
    let total = server.stored().await.len();
    wait_for("the dead letter", Duration::from_secs(60), || {
        status(&forwarder, "arr-bad").dead_letters == 1
    })
    .await;
    wait_for("the cursor at the head", Duration::from_secs(30), || {
        status(&forwarder, "arr-bad").cursor.get("default") >= Some(&(total as u64))
    })
    .await;
    let requests = receiver.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.header("authorization") == Some("Bearer fhir-t"))
    );
    let sent: Vec<String> = requests
        .iter()
        .flat_map(|r| r.json()["entry"].as_array().unwrap().clone())
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect();
    let unique: std::collections::HashSet<&String> = sent.iter().collect();
    assert_eq!(
        unique.len(),
        sent.len(),
        "answered per entry: nothing is resent"
    );
    let dead = dead_letters(server.store.as_ref(), "arr-bad").unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_id.as_deref(), Some(bad_id.as_str()));
    assert!(dead[0].reason.contains("422") && dead[0].reason.contains("agent"));
    let st = status(&forwarder, "arr-bad");
    assert_eq!(st.delivered, total as u64 - 1);
    forwarder.stop().await;
    server.stop().await;
}
