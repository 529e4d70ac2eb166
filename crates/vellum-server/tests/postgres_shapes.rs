//! The acceptance flows over the PostgreSQL shapes (SPEC §1), in process but with everything
//! real: the machine's PostgreSQL (a fresh database per test) and Redis (a fresh queue name per
//! test), servers on 127.0.0.1, workers reading the streams.
//!
//! - scale-out: two API nodes and a worker; ingest queued (202) and committed (201),
//!   idempotency across nodes, search and full text, proofs and on-demand checkpoints through
//!   the queue, every export format, a signed report, retention dry run and purge record,
//!   erasure, verification, readiness and metrics showing the queue;
//! - single node on PostgreSQL: the in-process writer holds every partition's lock, so a second
//!   writer on the same database is refused.
//!
//! Without `VELLUM_TEST_PG_URL` / `VELLUM_TEST_REDIS_URL` the tests skip, unless
//! `VELLUM_REQUIRE_SERVICES=1`, where a missing service fails them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::call;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use vellum_server::{RunningServer, ServerConfig};
use zeroize::Zeroizing;

const SECRET: &str = "postgres-shapes-test-secret-0123456789abcdef";

fn services(need_redis: bool) -> Option<(String, String)> {
    let required = std::env::var("VELLUM_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
    let pg = std::env::var("VELLUM_TEST_PG_URL")
        .ok()
        .filter(|v| !v.is_empty());
    let redis = std::env::var("VELLUM_TEST_REDIS_URL")
        .ok()
        .filter(|v| !v.is_empty());
    match (pg, redis) {
        (Some(pg), Some(redis)) => Some((pg, redis)),
        (Some(pg), None) if !need_redis => Some((pg, String::new())),
        _ if required => {
            panic!(
                "VELLUM_REQUIRE_SERVICES=1 but VELLUM_TEST_PG_URL or VELLUM_TEST_REDIS_URL is not set"
            )
        }
        _ => {
            eprintln!("skipping: VELLUM_TEST_PG_URL (and VELLUM_TEST_REDIS_URL) not set");
            None
        }
    }
}

fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// A fresh database on the test server; dropped by [`Database::drop_now`].
struct Database {
    admin_url: String,
    name: String,
    url: String,
}

impl Database {
    async fn create(admin_url: &str) -> Self {
        let name = format!("vt_{}", suffix());
        let (client, connection) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
            .await
            .expect("connecting to PostgreSQL");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("creating the test database");
        let base = admin_url.split('?').next().unwrap_or(admin_url);
        let prefix = &base[..base.rfind('/').expect("a database in the URL")];
        Database {
            admin_url: admin_url.to_owned(),
            url: format!("{prefix}/{name}"),
            name,
        }
    }

    async fn drop_now(&self) {
        if let Ok((client, connection)) =
            tokio_postgres::connect(&self.admin_url, tokio_postgres::NoTls).await
        {
            tokio::spawn(connection);
            let _ = client
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .await;
        }
    }
}

fn config(dir: &std::path::Path, db: &str, redis: Option<&str>, queue: &str) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        data_dir: dir.to_owned(),
        crypto_secret: Some(Zeroizing::new(SECRET.into())),
        db_url: Some(Zeroizing::new(db.to_owned())),
        redis_url: redis.map(|r| Zeroizing::new(r.to_owned())),
        queue_name: queue.to_owned(),
        queue_partitions: 4,
        checkpoint_interval_ms: 200,
        commit_wait_ms: 60_000,
        retention_interval_hours: 0,
        ..ServerConfig::default()
    }
}

fn base(server: &RunningServer) -> String {
    format!("http://{}", server.addr)
}

/// `POST /v1/verify` finds every chain and tree whole.
async fn assert_log_verifies(client: &reqwest::Client, url: &str, key: &str) {
    let (status, body) = call(
        client,
        url,
        key,
        Method::POST,
        "/v1/verify",
        Some(&json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ok"], json!(true), "{body}");
}

fn admin_key(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("admin.key"))
        .expect("admin key")
        .trim()
        .to_owned()
}

fn event(n: u64) -> Value {
    json!({
        "action": "fhir.patient.read",
        "status": "success",
        "principalId": format!("dr-{}", n % 3),
        "principalType": "professional",
        "organizationId": "org-a",
        "targetResourceType": "Patient",
        "targetResourceId": format!("pt-{n}"),
        "outcomeDescription": format!("chart {n} opened for rounds"),
        "dataClassification": "PHI",
        "healthcareContext": {"patientId": format!("pt-{n}")},
        "sessionContext": {"ipAddress": "10.1.2.3"},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_flow_works_over_the_scale_out_shape() {
    let Some((pg, redis)) = services(true) else {
        return;
    };
    let db = Database::create(&pg).await;
    let queue = format!("vt-{}", suffix());
    let tmp = tempfile::tempdir().expect("tempdir");

    // A worker (with its health endpoint), then two API nodes.
    let worker_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr")
    };
    let (stop_worker, stop_rx) = tokio::sync::watch::channel(false);
    let worker_config = config(&tmp.path().join("w1"), &db.url, Some(&redis), &queue);
    let worker = tokio::spawn(vellum_server::worker::run(
        worker_config,
        stop_rx,
        Some(worker_addr),
    ));
    let a1_dir = tmp.path().join("a1");
    let a1 = vellum_server::start(config(&a1_dir, &db.url, Some(&redis), &queue))
        .await
        .expect("API node 1");
    let a2 = vellum_server::start(config(
        &tmp.path().join("a2"),
        &db.url,
        Some(&redis),
        &queue,
    ))
    .await
    .expect("API node 2");
    let (u1, u2) = (base(&a1), base(&a2));
    let key = admin_key(&a1_dir);
    let client = reqwest::Client::new();

    // Every receipt notice the workers publish, to any node.
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let listener = {
        let mut pubsub = redis::Client::open(redis.as_str())
            .expect("redis url")
            .get_async_pubsub()
            .await
            .expect("pubsub");
        pubsub
            .psubscribe(format!("{queue}:receipts:*"))
            .await
            .expect("psubscribe");
        let notices = notices.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut messages = pubsub.on_message();
            while let Some(m) = messages.next().await {
                let payload: Vec<u8> = m.get_payload().unwrap_or_default();
                notices
                    .lock()
                    .expect("notices")
                    .push(String::from_utf8_lossy(&payload).into_owned());
            }
        })
    };

    // Queued: 202 with the id it will have.
    let (status, queued) = call(
        &client,
        &u1,
        &key,
        Method::POST,
        "/v1/events",
        Some(&event(1)),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    assert_eq!(queued["status"], "queued");
    let queued_id = queued["id"].as_str().expect("id").to_owned();
    // Committed: 201 with seq and hash.
    let batch = json!({"events": (2..12).map(event).collect::<Vec<_>>()});
    let (status, committed) = call(
        &client,
        &u2,
        &key,
        Method::POST,
        "/v1/events?wait=committed&priority=high",
        Some(&batch),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{committed}");
    assert_eq!(
        committed["accepted"].as_array().expect("accepted").len(),
        10
    );
    assert!(committed["accepted"][0]["seq"].is_u64(), "{committed}");
    assert!(committed["accepted"][0]["hash"].is_string(), "{committed}");
    // The queued one arrives (read-your-writes by id once committed).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = call(
            &client,
            &u1,
            &key,
            Method::GET,
            &format!("/v1/events/{queued_id}"),
            None,
        )
        .await;
        if status == StatusCode::OK {
            assert_eq!(body["targetResourceId"], "pt-1");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queued event never committed: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The batch that waited got its notices; the event nobody waited for was committed
    // without one (a notice per 202 event was pure cost for Redis, worker and API nodes).
    {
        let seen = notices.lock().expect("notices").clone();
        for accepted in committed["accepted"].as_array().expect("accepted") {
            let id = accepted["id"].as_str().expect("id");
            assert!(
                seen.iter().any(|n| n.contains(id)),
                "no notice for waited-on {id}: {seen:?}"
            );
        }
        assert!(
            !seen.iter().any(|n| n.contains(&queued_id)),
            "a notice for the 202 event {queued_id}"
        );
    }
    listener.abort();

    // Idempotency holds across nodes: the same key on both gives one event, one id.
    let mut ids = Vec::new();
    for url in [&u1, &u2, &u1] {
        let response = client
            .post(format!("{url}/v1/events?wait=committed"))
            .bearer_auth(&key)
            .header("Idempotency-Key", "order-77")
            .json(&event(77))
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.expect("json");
        ids.push((body["id"].clone(), body["seq"].clone()));
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    let (_, found) = call(
        &client,
        &u2,
        &key,
        Method::GET,
        "/v1/events?targetResourceId=pt-77",
        None,
    )
    .await;
    assert_eq!(
        found["events"].as_array().expect("events").len(),
        1,
        "{found}"
    );

    // Search: a filter, full text, a prefix.
    let (status, page) = call(
        &client,
        &u1,
        &key,
        Method::GET,
        "/v1/events?principalId=dr-1&q=rounds&action=fhir.*&limit=100",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let hits = page["events"].as_array().expect("events");
    assert!(
        !hits.is_empty() && hits.iter().all(|e| e["principalId"] == "dr-1"),
        "{page}"
    );

    // Proof and an on-demand checkpoint, both through the queue's writer.
    let first_id = committed["accepted"][0]["id"].as_str().expect("id");
    let (status, proof) = call(
        &client,
        &u2,
        &key,
        Method::GET,
        &format!("/v1/events/{first_id}/proof"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{proof}");
    let (status, cp) = call(
        &client,
        &u1,
        &key,
        Method::POST,
        "/v1/logs/default/checkpoint",
        Some(&json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{cp}");
    assert!(cp["treeSize"].as_u64().expect("treeSize") >= 12, "{cp}");

    // `?wait=checkpoint`: the worker signs a checkpoint in the same commit; the receipt
    // comes with its inclusion proof.
    let (status, with_proof) = call(
        &client,
        &u2,
        &key,
        Method::POST,
        "/v1/events?wait=checkpoint",
        Some(&event(90)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{with_proof}");
    assert!(
        with_proof["proof"]["checkpoint"].is_object(),
        "{with_proof}"
    );

    // Every export format.
    for format in ["ndjson", "json", "csv", "fhir", "pdf", "bundle"] {
        let response = client
            .get(format!(
                "{u1}/v1/export?format={format}&action=fhir.patient.read"
            ))
            .bearer_auth(&key)
            .send()
            .await
            .expect("export");
        assert_eq!(response.status(), StatusCode::OK, "export {format}");
        let bytes = response.bytes().await.expect("export body");
        assert!(bytes.len() > 100, "export {format} is nearly empty");
    }
    // A signed report.
    let report =
        json!({"type": "HIPAA", "from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"});
    let (status, body) = call(
        &client,
        &u2,
        &key,
        Method::POST,
        "/v1/reports",
        Some(&report),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Retention: a dry run (nothing is old enough to go).
    let (status, body) = call(
        &client,
        &u1,
        &key,
        Method::POST,
        "/v1/retention/apply?dryRun=true",
        Some(&json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Erasure: a subject's event, then its key destroyed.
    let mut subject_event = event(500);
    subject_event["gdprContext"] = json!({"dataSubjectId": "ds-scale-1", "legalBasis": "consent"});
    let (status, body) = call(
        &client,
        &u1,
        &key,
        Method::POST,
        "/v1/events?wait=committed",
        Some(&subject_event),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, found) = call(
        &client,
        &u2,
        &key,
        Method::GET,
        "/v1/events?dataSubjectId=ds-scale-1",
        None,
    )
    .await;
    assert_eq!(
        found["events"].as_array().expect("events").len(),
        1,
        "{found}"
    );
    let (status, body) = call(
        &client,
        &u2,
        &key,
        Method::POST,
        "/v1/subjects/ds-scale-1/erase",
        Some(&json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, found) = call(
        &client,
        &u1,
        &key,
        Method::GET,
        "/v1/events?dataSubjectId=ds-scale-1",
        None,
    )
    .await;
    assert_eq!(
        found["events"].as_array().expect("events").len(),
        0,
        "{found}"
    );

    // Verification of everything, including the audit records of all these reads.
    let (status, body) = call(
        &client,
        &u1,
        &key,
        Method::POST,
        "/v1/verify",
        Some(&json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ok"], json!(true), "{body}");

    // Readiness and metrics show the queue.
    let (status, ready) = call(&client, &u1, &key, Method::GET, "/readyz", None).await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["queue"]["reachable"], json!(true), "{ready}");
    assert!(ready["queue"]["deadLetters"].is_u64(), "{ready}");
    let metrics = client
        .get(format!("{u2}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("vellum_queue_depth"), "{metrics}");
    let worker_ready: Value = client
        .get(format!("http://{worker_addr}/readyz"))
        .send()
        .await
        .expect("worker readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(worker_ready["partitionsOwned"], json!(4), "{worker_ready}");

    a1.shutdown().await.expect("shutdown a1");
    a2.shutdown().await.expect("shutdown a2");
    let _ = stop_worker.send(true);
    worker.await.expect("worker task").expect("worker");
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_postgres_node_is_the_one_writer() {
    let Some((pg, _)) = services(false) else {
        return;
    };
    let db = Database::create(&pg).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("single");
    let server = vellum_server::start(config(&dir, &db.url, None, "unused"))
        .await
        .expect("single node on PostgreSQL");
    let url = base(&server);
    let key = admin_key(&dir);
    let client = reqwest::Client::new();
    let (status, receipt) = call(
        &client,
        &url,
        &key,
        Method::POST,
        "/v1/events",
        Some(&event(1)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{receipt}");
    assert_eq!(receipt["seq"], json!(0));

    // A second writer on the same database is refused, naming why.
    let second =
        vellum_server::start(config(&tmp.path().join("second"), &db.url, None, "unused")).await;
    let error = match second {
        Ok(_) => panic!("a second single node started beside the first"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("another Vellum process"), "{error}");

    assert_log_verifies(&client, &url, &key).await;
    server.shutdown().await.expect("shutdown");
    // Restarted, it continues the chain.
    let server = vellum_server::start(config(&dir, &db.url, None, "unused"))
        .await
        .expect("restart");
    let (status, receipt) = call(
        &client,
        &base(&server),
        &key,
        Method::POST,
        "/v1/events",
        Some(&event(2)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{receipt}");
    assert!(receipt["seq"].as_u64().expect("seq") >= 1, "{receipt}");
    server.shutdown().await.expect("shutdown");
    db.drop_now().await;
}

/// The writer seals the next group while the store commits the previous one. When a commit
/// fails, nothing of that group is acknowledged, a group sealed on top of it is refused or (if
/// sealed after the failure was seen) continues from what is durable, and the chain in the
/// store stays whole. The failure is real: a trigger that makes PostgreSQL wait, then refuse
/// rows carrying a marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_commit_takes_down_only_what_was_sealed_on_top_of_it() {
    let Some((pg, _)) = services(false) else {
        return;
    };
    let db = Database::create(&pg).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("single");
    let mut settings = config(&dir, &db.url, None, "unused");
    settings.detection.enabled = false;
    // No idle checkpoint in the middle: it waits for the commit in flight, and the group
    // behind it would then be sealed after the failure instead of on top of it.
    settings.checkpoint_interval_ms = 60_000;
    let server = vellum_server::start(settings).await.expect("single node");
    let url = base(&server);
    let key = admin_key(&dir);
    let client = reqwest::Client::new();
    let post = |body: Value| {
        let (client, url, key) = (client.clone(), url.clone(), key.clone());
        async move { call(&client, &url, &key, Method::POST, "/v1/events", Some(&body)).await }
    };
    for n in 0..3 {
        let (status, body) = post(event(n)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (admin, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    admin
        .batch_execute(
            "CREATE FUNCTION vellum.refuse_marked() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.canonical LIKE '%refuse-this-group%' THEN
                 PERFORM pg_sleep(1.5);
                 RAISE EXCEPTION 'injected failure';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_marked BEFORE INSERT ON vellum.events
               FOR EACH ROW EXECUTE FUNCTION vellum.refuse_marked();",
        )
        .await
        .expect("trigger");

    let mut doomed = event(10);
    doomed["details"] = json!({"note": "refuse-this-group"});
    let mut behind = event(11);
    behind["details"] = json!({"note": "sealed-behind-the-failure"});
    let first = tokio::spawn(post(doomed));
    // While PostgreSQL holds the first group, the writer seals the second on top of it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = tokio::spawn(post(behind));
    let (status, body) = first.await.expect("first");
    assert!(
        status.is_server_error(),
        "the failed group was acknowledged: {status} {body}"
    );
    let (second_status, second_body) = second.await.expect("second");
    println!("group sealed behind the failure: {second_status} {second_body}");
    assert!(
        second_status.is_server_error() || second_status == StatusCode::CREATED,
        "{second_status} {second_body}"
    );

    // The chain goes on from what is durable.
    let (status, body) = post(event(12)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let count = |pattern: &'static str| {
        let admin = &admin;
        async move {
            admin
                .query_one(
                    "SELECT count(*) FROM vellum.events WHERE canonical LIKE $1",
                    &[&pattern],
                )
                .await
                .expect("count")
                .get::<_, i64>(0)
        }
    };
    assert_eq!(count("%refuse-this-group%").await, 0);
    assert_eq!(
        count("%sealed-behind-the-failure%").await,
        i64::from(second_status == StatusCode::CREATED),
        "stored exactly when acknowledged"
    );
    for row in admin
        .query(
            "SELECT log_id, count(*), max(seq) + 1 FROM vellum.events GROUP BY log_id",
            &[],
        )
        .await
        .expect("logs")
    {
        let (log, n, next): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(n, next, "log {log} has a gap");
    }
    assert_log_verifies(&client, &url, &key).await;
    server.shutdown().await.expect("shutdown");
    db.drop_now().await;
}

/// Detection and forwarding over the scale-out shape: the worker that writes a log runs the
/// rules on its commits and queues the alerts; any API node lists them; of two API nodes with
/// the same sink, only the one holding the forwarder lock forwards, and each event arrives
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_out_workers_raise_alerts_and_one_node_forwards() {
    let Some((pg, redis)) = services(true) else {
        return;
    };
    let db = Database::create(&pg).await;
    let queue = format!("vt-{}", suffix());
    let tmp = tempfile::tempdir().expect("tempdir");

    let (sink_address, mut received) = common::syslog_receiver().await;
    let sinks: Vec<vellum_forward::SinkConfig> = serde_json::from_value(json!([
        {"name": "soc", "type": "syslog", "transport": "tcp", "address": sink_address,
         "filter": {"alertsOnly": true}, "retryInitialMs": 50, "retryMaxMs": 200}
    ]))
    .expect("sinks");

    let (stop_worker, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(vellum_server::worker::run(
        config(&tmp.path().join("w1"), &db.url, Some(&redis), &queue),
        stop_rx,
        None,
    ));
    let a1_dir = tmp.path().join("a1");
    let mut c1 = config(&a1_dir, &db.url, Some(&redis), &queue);
    c1.forward.sinks = sinks.clone();
    let a1 = vellum_server::start(c1).await.expect("API node 1");
    let mut c2 = config(&tmp.path().join("a2"), &db.url, Some(&redis), &queue);
    c2.forward.sinks = sinks;
    let a2 = vellum_server::start(c2).await.expect("API node 2");
    let (u1, u2) = (base(&a1), base(&a2));
    let key = admin_key(&a1_dir);
    let client = reqwest::Client::new();

    let failures: Vec<Value> = (0..6)
        .map(|_| {
            json!({"action": "auth.login.failure", "status": "failure", "principalId": "dr-mallory",
                   "organizationId": "org-a", "sessionContext": {"ipAddress": "10.9.9.9"}})
        })
        .collect();
    let (status, body) = call(
        &client,
        &u1,
        &key,
        Method::POST,
        "/v1/events?wait=committed",
        Some(&json!({"events": failures})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let deadline = Instant::now() + Duration::from_secs(60);
    let alerts = loop {
        let (status, page) = call(
            &client,
            &u2,
            &key,
            Method::GET,
            "/v1/alerts?rule=failed_logins",
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let alerts = page["alerts"].as_array().cloned().unwrap_or_default();
        if !alerts.is_empty() || Instant::now() > deadline {
            break alerts;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["principalId"], "dr-mallory");
    let alert_id = alerts[0]["id"].as_str().expect("id").to_owned();

    // The alert reaches the sink once, from whichever node holds the forwarder lock.
    let message = tokio::time::timeout(Duration::from_secs(60), received.recv())
        .await
        .expect("the alert is forwarded within 60 s")
        .expect("receiver open");
    assert!(message.contains(&alert_id), "{message}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(received.try_recv().is_err(), "forwarded twice");
    let running: usize = [&u1, &u2]
        .into_iter()
        .map(|u| {
            let client = client.clone();
            let url = format!("{u}/readyz");
            async move {
                let ready: Value = client
                    .get(url)
                    .send()
                    .await
                    .expect("readyz")
                    .json()
                    .await
                    .expect("json");
                usize::from(ready["forwarding"].is_array())
            }
        })
        .collect::<futures_util::future::JoinAll<_>>()
        .await
        .into_iter()
        .sum();
    assert_eq!(running, 1, "exactly one node runs the sinks");

    a1.shutdown().await.expect("shutdown a1");
    a2.shutdown().await.expect("shutdown a2");
    let _ = stop_worker.send(true);
    worker.await.expect("worker task").expect("worker");
    db.drop_now().await;
}
