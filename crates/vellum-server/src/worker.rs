//! `vellum worker`: the writers of the scale-out shape (SPEC §1).
//!
//! The queue is split into partitions ([`crate::ingest::partition_of`] maps a log to one). A
//! worker owns a partition while it holds the partition's PostgreSQL advisory lock, taken on a
//! dedicated connection ([`PgLease`]); every append of that partition's writer runs on that
//! same connection. That is the fence: if the session dies, PostgreSQL drops the lock *and*
//! the writer's next commit fails, so two workers can never both append to a log.
//!
//! A worker holds all its partitions' locks on one lease and runs one group-commit writer on
//! it — the embedded server's ([`crate::ingest::Writer`]), restricted to those partitions'
//! logs — fed by one consumer per partition that reads the partition's two Redis streams (high
//! lane first), commits a batch, publishes each receipt to the API node that waits for it, and
//! only then `XACK`s. What the consumers read meanwhile goes into the same commit, so commits
//! stay large however many logs there are. A change of the set (a worker joins or dies)
//! drains the writer, releases the lease and takes the new set whole. A failed commit acks
//! nothing: the messages stay pending and are read again, first, after a back-off. On taking
//! a partition, the worker claims (`XAUTOCLAIM`) what the previous owner left pending; the
//! idempotency keys every message carries make a redelivered message a replay, not a second
//! event.
//!
//! Sharing: every worker heartbeats in Redis and aims for `ceil(partitions / live workers)`
//! partitions; it takes free partitions up to that share, sheds the excess, and takes a free
//! partition beyond its share only after seeing it free for two rounds (a standby covering for
//! a dead worker within about two seconds of PostgreSQL closing the dead worker's sessions).

use crate::ingest::{IngestHandle, Receipt, Writer, WriterConfig, log_for, partition_of};
use crate::scaleout::{CommitNotice, QueueMessage};
use crate::{ServerConfig, ServerError};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use vellum_core::checkpoint::CheckpointSigner;
use vellum_core::integrity::HmacKeyring;
use vellum_queue::{Consumer, Message, QueueConfig, ReceiptBus};
use vellum_store::AuditStore;
use vellum_store::postgres::{PgLease, PgStore, lock_key_for_partition};

/// Everything a partition's task needs, shared by all of a worker's partitions.
struct WorkerContext {
    store: Arc<PgStore>,
    keyring: Option<Arc<HmacKeyring>>,
    signer: Arc<CheckpointSigner>,
    writer: WriterConfig,
    queue: QueueConfig,
    redis_url: String,
    node: String,
    bus: ReceiptBus,
    /// The detection rules, when on: each assignment runs them over its partitions' logs.
    detection: Option<WorkerDetection>,
}

/// What a worker's detectors share.
struct WorkerDetection {
    config: vellum_core::detect::DetectionConfig,
    pipeline: Arc<vellum_core::pipeline::Pipeline>,
    /// Alerts go through the queue: an alert's log may be another worker's.
    queue: Arc<crate::scaleout::QueueIngest>,
    data_dir: std::path::PathBuf,
}

/// The partitions this worker owns: one lease (one PostgreSQL session holding their locks),
/// one group-commit writer on it, and one consumer per partition feeding that writer, so
/// that a commit takes what every partition's consumer read meanwhile.
struct Assignment {
    partitions: Arc<BTreeSet<u32>>,
    stop: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Assignment {
    /// Stops the consumers (each after its current batch), drains the writer, releases the
    /// lease.
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Runs a worker until `stop` fires: takes its share of partitions, writes them, hands them
/// over when told to stop.
pub async fn run(
    config: ServerConfig,
    mut stop: watch::Receiver<bool>,
    listen: Option<std::net::SocketAddr>,
) -> Result<(), ServerError> {
    let crate::WriterParts {
        _lock,
        store,
        keyring,
        signer,
        pipeline,
    } = crate::open_postgres_writer_parts(&config).await?;
    config
        .detection
        .validate()
        .map_err(|e| crate::config::ConfigError(format!("detection: {e}")))?;
    let redis_url = config
        .redis_url
        .as_ref()
        .map(|u| u.as_str().to_owned())
        .ok_or_else(|| crate::config::ConfigError("vellum worker needs AUDIT_REDIS_URL".into()))?;
    let queue = crate::queue_settings(&config);
    let node = config.node_name();
    let bus = ReceiptBus::connect(&redis_url, queue.clone())
        .await
        .map_err(|e| crate::queue_unavailable(&e))?;
    let mut membership = Membership::connect(&redis_url, &queue.name, &node)
        .await
        .map_err(|e| crate::queue_unavailable(&e))?;
    let mut writer = crate::writer_config(&config);
    writer.partition = None;
    let detection = if config.detection.enabled {
        let queue = crate::scaleout::QueueIngest::connect(
            &redis_url,
            queue.clone(),
            format!("{node}-detection"),
            store.clone(),
            config.log_per_organization,
            Duration::from_millis(config.commit_wait_ms.max(1)),
        )
        .await
        .map_err(|e| crate::queue_unavailable(&e))?;
        Some(WorkerDetection {
            config: config.detection.clone(),
            pipeline,
            queue: Arc::new(queue),
            data_dir: config.data_dir.clone(),
        })
    } else {
        None
    };
    let ctx = Arc::new(WorkerContext {
        store,
        keyring: config.enable_signatures.then_some(keyring),
        signer,
        writer,
        queue: queue.clone(),
        redis_url,
        node: node.clone(),
        bus,
        detection,
    });
    let health = Arc::new(Health {
        owned: std::sync::atomic::AtomicUsize::new(0),
        store: ctx.store.clone(),
        producer: vellum_queue::Producer::connect(&ctx.redis_url, queue.clone())
            .await
            .map_err(|e| crate::queue_unavailable(&e))?,
    });
    let http = match listen {
        Some(addr) => Some(serve_health(addr, health.clone()).await?),
        None => None,
    };
    tracing::info!(node = %node, partitions = queue.partitions, "vellum worker started");
    let partitions = queue.partitions.max(1);
    let mut current: Option<Assignment> = None;
    let mut seen_free: HashMap<u32, u32> = HashMap::new();
    let mut released_at: HashMap<u32, Instant> = HashMap::new();
    // Start scanning at a node-specific offset so that workers starting together spread.
    let offset = partition_of(&node, partitions);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        if current.as_ref().is_some_and(|a| a.task.is_finished()) {
            tracing::warn!("the partitions' writer ended (lock lost?); they are free again");
            current = None;
        }
        let live = membership.heartbeat().await.unwrap_or(1).max(1);
        let share = partitions.div_ceil(live) as usize;
        let owned: BTreeSet<u32> = current
            .as_ref()
            .map(|a| (*a.partitions).clone())
            .unwrap_or_default();
        metrics::gauge!("vellum_worker_partitions_owned").set(owned.len() as f64);
        health
            .owned
            .store(owned.len(), std::sync::atomic::Ordering::Relaxed);
        metrics::gauge!("vellum_workers_live").set(f64::from(live));
        // One look at which partitions nobody holds (pg_locks), instead of a session per probe.
        let free = match free_partitions(&ctx.store, partitions).await {
            Ok(free) => free,
            Err(e) => {
                tracing::warn!(error = %e, "cannot see the partitions' locks (PostgreSQL down?)");
                continue;
            }
        };
        let mut desired = owned.clone();
        while desired.len() > share {
            let Some(&p) = desired.iter().next_back() else {
                break;
            };
            desired.remove(&p);
            released_at.insert(p, Instant::now());
        }
        for i in 0..partitions {
            let p = (offset + i) % partitions;
            if desired.contains(&p) || !free.contains(&p) {
                seen_free.remove(&p);
                continue;
            }
            let within_share = desired.len() < share;
            let rounds = seen_free.get(&p).copied().unwrap_or(0) + 1;
            seen_free.insert(p, rounds);
            let recently_released = released_at
                .get(&p)
                .is_some_and(|at| at.elapsed() < Duration::from_secs(5));
            if within_share || (rounds >= 2 && !recently_released) {
                desired.insert(p);
            }
        }
        if desired == owned {
            continue;
        }
        // One writer and one lease cover all of this worker's partitions, so that a change of
        // the set hands the old one back (the writer drains) and takes the new one whole.
        if let Some(old) = current.take() {
            tracing::info!(from = ?owned, to = ?desired, share, "changing partitions");
            old.stop().await;
        }
        if desired.is_empty() {
            continue;
        }
        match take_partitions(&ctx, &desired).await {
            Ok(Some(assignment)) => {
                tracing::info!(partitions = ?desired, "took partitions");
                for p in &desired {
                    seen_free.remove(p);
                }
                current = Some(assignment);
            }
            // Someone took one of them meanwhile: look again next round.
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot take partitions (PostgreSQL down?)");
            }
        }
    }
    tracing::info!("worker stopping: handing every partition back");
    if let Some(old) = current.take() {
        old.stop().await;
    }
    let _ = membership.leave().await;
    if let Some(http) = http {
        http.abort();
    }
    Ok(())
}

/// What the worker's `/readyz` and `/metrics` look at.
struct Health {
    owned: std::sync::atomic::AtomicUsize,
    store: Arc<PgStore>,
    producer: vellum_queue::Producer,
}

/// Serves `/healthz`, `/readyz` and `/metrics` for the worker.
async fn serve_health(
    addr: std::net::SocketAddr,
    health: Arc<Health>,
) -> Result<tokio::task::JoinHandle<()>, ServerError> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Io {
            context: format!("binding {addr}"),
            source,
        })?;
    let prometheus = crate::telemetry::prometheus();
    let app = axum::Router::new()
        .route("/healthz", get(|| async { r#"{"status":"ok"}"# }))
        .route(
            "/readyz",
            get(
                move |axum::extract::State(h): axum::extract::State<Arc<Health>>| async move {
                    let store = h.store.clone();
                    let store_ok = tokio::task::spawn_blocking(move || store.ping().is_ok())
                        .await
                        .unwrap_or(false);
                    let stats = h.producer.stats().await.ok();
                    let owned = h.owned.load(std::sync::atomic::Ordering::Relaxed);
                    let ready = store_ok && stats.is_some();
                    let body = serde_json::json!({
                        "status": if ready { "ready" } else { "unavailable" },
                        "store": store_ok,
                        "queue": stats.as_ref().map(crate::api::queue_json),
                        "partitionsOwned": owned,
                    });
                    let status = if ready {
                        axum::http::StatusCode::OK
                    } else {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, body.to_string())
                },
            ),
        )
        .route(
            "/metrics",
            get(
                move |axum::extract::State(h): axum::extract::State<Arc<Health>>| async move {
                    if let Ok(stats) = h.producer.stats().await {
                        crate::api::record_queue_gauges(&stats);
                    }
                    prometheus.as_ref().map(|p| p.render()).unwrap_or_default()
                },
            ),
        )
        .with_state(health);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "worker health endpoint stopped");
        }
    }))
}

/// The partitions whose lock no session holds now.
async fn free_partitions(
    store: &Arc<PgStore>,
    partitions: u32,
) -> Result<std::collections::HashSet<u32>, vellum_store::StoreError> {
    let store = store.clone();
    let keys: Vec<i64> = (0..partitions).map(lock_key_for_partition).collect();
    let free = tokio::task::spawn_blocking(move || store.free_lock_keys(&keys))
        .await
        .map_err(|e| vellum_store::StoreError::Unavailable(e.to_string()))??;
    Ok((0..partitions)
        .filter(|p| free.contains(&lock_key_for_partition(*p)))
        .collect())
}

/// Takes `partitions` if no one holds any of them: their locks (all or nothing), one writer,
/// one consumer per partition.
async fn take_partitions(
    ctx: &Arc<WorkerContext>,
    partitions: &BTreeSet<u32>,
) -> Result<Option<Assignment>, vellum_store::StoreError> {
    let store = ctx.store.clone();
    let keys: Vec<i64> = partitions
        .iter()
        .map(|p| lock_key_for_partition(*p))
        .collect();
    let lease = tokio::task::spawn_blocking(move || store.writer_lease(&keys))
        .await
        .map_err(|e| vellum_store::StoreError::Unavailable(e.to_string()))??;
    let Some(lease) = lease else {
        return Ok(None);
    };
    let lease = Arc::new(lease);
    let owned = Arc::new(partitions.clone());
    let mut writer_config = ctx.writer.clone();
    writer_config.partition = Some((owned.clone(), ctx.queue.partitions.max(1)));
    let detection_tap = ctx
        .detection
        .as_ref()
        .map(|_| crate::detection::Detector::tap());
    writer_config.commit_tap = detection_tap.as_ref().map(|(tap, _)| tap.clone());
    let keyring = ctx.keyring.clone();
    let signer = ctx.signer.clone();
    let writer_store: Arc<dyn AuditStore> = lease.clone();
    let started = tokio::task::spawn_blocking(move || {
        Writer::start(writer_store, keyring, signer, writer_config)
    })
    .await
    .map_err(|e| vellum_store::StoreError::Unavailable(e.to_string()))?;
    let (writer, ingest) = match started {
        Ok(started) => started,
        Err(e) => {
            if let Ok(lease) = Arc::try_unwrap(lease) {
                let _ = tokio::task::spawn_blocking(move || lease.release()).await;
            }
            return Err(e);
        }
    };
    let detector = match (&ctx.detection, detection_tap) {
        (Some(detection), Some((_, announcements))) => {
            let (watched, partitions) = (owned.clone(), ctx.queue.partitions.max(1));
            let started = crate::detection::Detector::start(
                crate::detection::DetectorParts {
                    config: detection.config.clone(),
                    store: ctx.store.clone(),
                    pipeline: detection.pipeline.clone(),
                    alerts: crate::detection::AlertDestination::Queue(detection.queue.clone()),
                    logs: Some(Arc::new(move |log_id: &str| {
                        watched.contains(&partition_of(log_id, partitions))
                    })),
                    runtime: tokio::runtime::Handle::current(),
                    data_dir: detection.data_dir.clone(),
                },
                announcements,
            );
            match started {
                Ok(detector) => Some(detector),
                Err(e) => {
                    tracing::error!(error = %e, "the detection thread could not start");
                    None
                }
            }
        }
        _ => None,
    };
    let stop = Arc::new(watch::channel(false).0);
    let ctx = ctx.clone();
    let partition_list: Vec<u32> = owned.iter().copied().collect();
    let stop_inner = stop.clone();
    let task = tokio::spawn(async move {
        let mut consumers = tokio::task::JoinSet::new();
        for p in partition_list {
            let (ctx, lease, ingest, stop_rx) = (
                ctx.clone(),
                lease.clone(),
                ingest.clone(),
                stop_inner.subscribe(),
            );
            consumers.spawn(async move {
                if let Err(e) = consume(&ctx, p, &lease, &ingest, stop_rx).await {
                    tracing::warn!(partition = p, error = %e, "partition consumer stopped");
                }
            });
        }
        drop(ingest);
        // One consumer ending (stop, lock lost) ends them all: the assignment is then retaken
        // whole.
        let _ = consumers.join_next().await;
        let _ = stop_inner.send(true);
        while consumers.join_next().await.is_some() {}
        let _ = tokio::task::spawn_blocking(move || {
            // The detector observes what was committed, hands its last alerts to the queue
            // and saves its state before the partitions go.
            if let Some(detector) = detector {
                detector.stop();
            }
            writer.join();
            if let Ok(lease) = Arc::try_unwrap(lease) {
                lease.release();
            }
        })
        .await;
    });
    Ok(Some(Assignment {
        partitions: owned,
        stop,
        task,
    }))
}

/// The consumer loop of one owned partition.
async fn consume(
    ctx: &WorkerContext,
    p: u32,
    lease: &PgLease,
    ingest: &IngestHandle,
    mut stop: watch::Receiver<bool>,
) -> Result<(), vellum_queue::QueueError> {
    let mut consumer = Consumer::new(&ctx.redis_url, ctx.queue.clone(), p, &ctx.node).await?;
    // We hold the partition's lock, so whoever had it is gone: take over what it left.
    let claimed = consumer.claim_abandoned_now().await?;
    if claimed > 0 {
        tracing::info!(
            partition = p,
            claimed,
            "claimed messages a previous owner left pending"
        );
    }
    let max_batch = ctx.writer.max_batch.max(1);
    let mut backoff = Duration::from_millis(50);
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        if !lease.is_held() {
            tracing::warn!(
                partition = p,
                "lost the partition's lock (PostgreSQL session ended)"
            );
            return Ok(());
        }
        let batch = tokio::select! {
            batch = consumer.next_batch(max_batch, Duration::from_millis(250)) => batch,
            _ = stop.changed() => return Ok(()),
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "reading the queue failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        match commit_batch(ctx, p, ingest, &mut consumer, &batch).await {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(e) => {
                metrics::counter!("vellum_worker_commit_failures_total").increment(1);
                tracing::warn!(partition = p, error = %e, messages = batch.len(), "commit failed; nothing acknowledged, retrying");
                // A message that keeps failing while the store is up would hold its whole
                // partition back: commit each such message alone, and set aside the ones that
                // still fail (with the store's reason) so the others go on.
                if lease.is_held() {
                    let stuck: Vec<&Message> = batch
                        .iter()
                        .filter(|m| consumer.over_delivery_limit(m))
                        .collect();
                    for message in stuck {
                        if let Err(alone) = commit_batch(
                            ctx,
                            p,
                            ingest,
                            &mut consumer,
                            std::slice::from_ref(message),
                        )
                        .await
                            && lease.is_held()
                        {
                            let reason = format!(
                                "commit failed {} times, the last time alone: {alone}",
                                message.deliveries
                            );
                            if let Err(dl) = dead_letter(&mut consumer, message, &reason).await {
                                tracing::warn!(error = %dl, "dead-lettering failed");
                            }
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Commits one batch read from the queue, publishes the receipts, then acks.
async fn commit_batch(
    ctx: &WorkerContext,
    p: u32,
    ingest: &IngestHandle,
    consumer: &mut Consumer,
    batch: &[Message],
) -> Result<(), String> {
    let partitions = ctx.queue.partitions.max(1);
    let mut submissions = Vec::new();
    // (message, node, key, when queued): decoded once, here.
    let mut event_messages: Vec<(&Message, String, String, i64, bool)> = Vec::new();
    let mut checkpoints: Vec<(&Message, String, String, String)> = Vec::new();
    let mut want_checkpoint = false;
    for message in batch {
        let decoded = QueueMessage::decode(&message.payload);
        let routed = decoded.and_then(|m| {
            let (log_id, node, key) = match &m {
                QueueMessage::Event {
                    organization_id,
                    node,
                    key,
                    ..
                } => (
                    log_for(organization_id.as_deref(), ctx.writer.log_per_organization),
                    node.clone(),
                    key.clone(),
                ),
                QueueMessage::Checkpoint {
                    log_id, node, key, ..
                } => (log_id.clone(), node.clone(), key.clone()),
            };
            if partition_of(&log_id, partitions) != p {
                return Err(format!(
                    "log {log_id:?} belongs to partition {}, not {p}: do all nodes use the same queuePartitions and logPerOrganization?",
                    partition_of(&log_id, partitions)
                ));
            }
            Ok((m, log_id, node, key))
        });
        match routed {
            Ok((QueueMessage::Checkpoint { .. }, log_id, node, key)) => {
                checkpoints.push((message, log_id, node, key));
            }
            Ok((m, _, node, key)) => {
                let (queued_micros, notify) = match &m {
                    QueueMessage::Event {
                        queued_micros,
                        notify,
                        ..
                    } => (*queued_micros, *notify),
                    QueueMessage::Checkpoint { .. } => (0, true),
                };
                match m.into_submission() {
                    Ok(Some((submission, checkpoint))) => {
                        want_checkpoint |= checkpoint;
                        submissions.push(submission);
                        event_messages.push((message, node, key, queued_micros, notify));
                    }
                    Ok(None) => {}
                    Err(reason) => dead_letter(consumer, message, &reason).await?,
                }
            }
            Err(reason) => dead_letter(consumer, message, &reason).await?,
        }
    }
    let mut notices: Vec<vellum_queue::Receipt> = Vec::new();
    let mut done: Vec<&Message> = Vec::new();
    if !submissions.is_empty() {
        let receipts: Vec<Receipt> =
            match ingest.submit_with(submissions, want_checkpoint, None).await {
                Ok(Ok(receipts)) => receipts,
                Ok(Err(commit)) => return Err(commit.to_string()),
                Err(e) => return Err(e.to_string()),
            };
        let now = vellum_core::time_fmt::unix_micros(time::OffsetDateTime::now_utc());
        for ((message, node, key, queued_micros, notify), receipt) in
            event_messages.into_iter().zip(receipts)
        {
            let lag = (now - queued_micros).max(0) as f64 / 1e6;
            metrics::histogram!("vellum_queue_commit_lag_seconds").record(lag);
            if notify {
                notices.extend(notice(node, key, Some(receipt)));
            }
            done.push(message);
        }
    }
    for (message, log_id, node, key) in checkpoints {
        ingest
            .checkpoint_now(&log_id)
            .await
            .map_err(|e| e.to_string())?;
        notices.extend(notice(node, key, None));
        done.push(message);
    }
    // Durable now. A lost notice only makes the API node look the receipt up in the store.
    if !notices.is_empty()
        && let Err(e) = ctx.bus.publish_many(&notices).await
    {
        tracing::debug!(error = %e, "publishing receipts failed; waiters fall back to the store");
    }
    if !done.is_empty() {
        // If the ack fails the messages are delivered again and replayed by key.
        consumer.ack(&done).await.map_err(|e| e.to_string())?;
        metrics::counter!("vellum_worker_events_committed_total").increment(done.len() as u64);
    }
    Ok(())
}

/// What the waiting API node `node` gets for the message of `key`.
fn notice(node: String, key: String, receipt: Option<Receipt>) -> Option<vellum_queue::Receipt> {
    let payload = serde_json::to_vec(&CommitNotice {
        key: key.clone(),
        receipt,
    })
    .ok()?;
    Some(vellum_queue::Receipt {
        node_id: node,
        key,
        payload,
    })
}

async fn dead_letter(
    consumer: &mut Consumer,
    message: &Message,
    reason: &str,
) -> Result<(), String> {
    tracing::warn!(entry = %message.entry_id, reason, "dead-lettering a message");
    metrics::counter!("vellum_dead_letters_total").increment(1);
    consumer
        .dead_letter(message, reason)
        .await
        .map_err(|e| e.to_string())
}

/// Worker heartbeats in Redis: each live worker refreshes `{queue}:worker:{node}` (5 s TTL)
/// every second and counts the others.
struct Membership {
    conn: redis::aio::ConnectionManager,
    key: String,
    pattern: String,
}

impl Membership {
    async fn connect(url: &str, queue: &str, node: &str) -> Result<Self, vellum_queue::QueueError> {
        let client = redis::Client::open(url)
            .map_err(|e| vellum_queue::QueueError::Unavailable(e.to_string()))?;
        let conn = redis::aio::ConnectionManager::new(client)
            .await
            .map_err(|e| vellum_queue::QueueError::Unavailable(e.to_string()))?;
        Ok(Self {
            conn,
            key: format!("{queue}:worker:{node}"),
            pattern: format!("{queue}:worker:*"),
        })
    }

    /// Refreshes this worker's heartbeat; returns how many workers are alive.
    async fn heartbeat(&mut self) -> Result<u32, redis::RedisError> {
        let _: () = redis::cmd("SET")
            .arg(&self.key)
            .arg("1")
            .arg("EX")
            .arg(5)
            .query_async(&mut self.conn)
            .await?;
        let mut cursor: u64 = 0;
        let mut live = 0u32;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&self.pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut self.conn)
                .await?;
            live = live.saturating_add(u32::try_from(keys.len()).unwrap_or(u32::MAX));
            if next == 0 {
                return Ok(live);
            }
            cursor = next;
        }
    }

    async fn leave(&mut self) -> Result<(), redis::RedisError> {
        redis::cmd("DEL")
            .arg(&self.key)
            .query_async(&mut self.conn)
            .await
    }
}
