//! The API node's half of the scale-out shape (SPEC §1): prepared events go to Redis Streams
//! instead of an in-process writer, and receipts come back from the workers.
//!
//! An API node validates, sanitizes, redacts and seals an event exactly as the embedded server
//! does ([`vellum_core::pipeline`]), assigns its id, and `XADD`s a [`QueueMessage`] to the
//! partition of the event's log ([`crate::ingest::partition_of`]); a worker owning that
//! partition sequences, hashes, chains and commits it to PostgreSQL ([`crate::worker`]), then
//! publishes the receipt on this node's channel.
//!
//! Invariants:
//! - **Every queued event carries an idempotency key**: the client's (scoped to its API key)
//!   or `q:<event id>`. The worker remembers receipts by key in the same transaction as the
//!   events, so a message delivered twice (a worker died between commit and `XACK`) is written
//!   once.
//! - **A 202 is given only after `XADD` succeeded**: Redis holds the event from then on.
//! - **The members cross the queue as canonical text** and the worker refuses text that
//!   re-canonicalization would change, so the stored bytes are what the API node prepared.

use crate::ingest::{CommitError, Receipt, Submission, SubmitError, log_for, partition_of};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use vellum_core::breaker::CircuitBreaker;
use vellum_core::canonical::CanonicalMembers;
use vellum_core::pipeline::PreparedEvent;
use vellum_core::sanitize::SecuritySignal;
use vellum_queue::{Lane, Producer, QueueConfig, QueueError, ReceiptListener};
use vellum_store::AuditStore;

/// Version of the [`QueueMessage`] format an API node writes. A worker reads this one and
/// [`OLDEST_READABLE_VERSION`] onwards, and dead-letters others (a newer API node's), so during
/// a rolling upgrade workers go first.
///
/// Version 2 carries `event` as a JSON object (the canonical text verbatim); version 1 carried
/// it as a JSON string, which cost the API node an escaping pass over every quote of the event
/// and the worker the matching unescaping.
pub const MESSAGE_VERSION: u8 = 2;

/// The oldest [`QueueMessage`] version a worker still reads.
pub const OLDEST_READABLE_VERSION: u8 = 1;

/// The prepared members as one canonical JSON object, carried through the queue verbatim.
///
/// Serialized as the object itself (not as a string holding it), so neither side escapes
/// anything. Reads either form: the object (version 2) or a string holding it (version 1).
#[derive(Debug, Clone)]
pub struct CanonicalObject(Box<serde_json::value::RawValue>);

impl CanonicalObject {
    /// Wraps canonical text. Fails only if `text` is not JSON, which canonical text always is.
    pub fn new(text: String) -> Result<Self, serde_json::Error> {
        serde_json::value::RawValue::from_string(text).map(CanonicalObject)
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for CanonicalObject {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for CanonicalObject {}

impl Serialize for CanonicalObject {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for CanonicalObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
        if raw.get().starts_with('"') {
            // Version 1: a string holding the object.
            let text: String = serde_json::from_str(raw.get()).map_err(serde::de::Error::custom)?;
            return CanonicalObject::new(text).map_err(serde::de::Error::custom);
        }
        Ok(CanonicalObject(raw))
    }
}

/// What an API node puts on the queue.
///
/// Deserialized through [`WireMessage`]: serde reads an internally tagged enum by buffering
/// its fields, which a raw JSON value ([`CanonicalObject`]) cannot pass through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum QueueMessage {
    /// One prepared event.
    #[serde(rename_all = "camelCase")]
    Event {
        /// Format version ([`MESSAGE_VERSION`]).
        v: u8,
        /// The event id the API node answered with.
        id: uuid::Uuid,
        /// Scoped idempotency key (client's, or `q:<id>`).
        key: String,
        /// Node whose receipt channel wants the receipt.
        node: String,
        /// The prepared members as one canonical JSON object.
        event: CanonicalObject,
        /// The tenant (picks the log).
        organization_id: Option<String>,
        /// The event's own `idempotencyKey`, as the client sent it.
        idempotency_key: Option<String>,
        /// Pointers of redacted values.
        redactions: Vec<String>,
        /// Injection signals found by sanitization.
        signals: Vec<SecuritySignal>,
        /// Sign a checkpoint covering this event in its commit (`?wait=checkpoint`).
        checkpoint: bool,
        /// Whether the API node waits for the receipt (`?wait=committed|checkpoint`, the
        /// server's own audit records). Without a waiter the worker publishes nothing: a 202
        /// answered event needs no notice, and publishing one per event cost Redis, the
        /// worker and every API node's receipt listener work for nothing. Absent (version 1):
        /// notify.
        notify: bool,
        /// When the API node queued it (Unix µs), for the queue-lag metric.
        queued_micros: i64,
    },
    /// Asks the log's writer for a checkpoint now.
    #[serde(rename_all = "camelCase")]
    Checkpoint {
        /// Format version.
        v: u8,
        /// The log.
        log_id: String,
        /// Key the answer is published under.
        key: String,
        /// Node waiting for it.
        node: String,
    },
}

/// The fields of either [`QueueMessage`] kind, as they arrive.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMessage {
    kind: String,
    v: u8,
    id: Option<uuid::Uuid>,
    key: String,
    node: String,
    event: Option<CanonicalObject>,
    log_id: Option<String>,
    organization_id: Option<String>,
    idempotency_key: Option<String>,
    redactions: Option<Vec<String>>,
    signals: Option<Vec<SecuritySignal>>,
    checkpoint: Option<bool>,
    notify: Option<bool>,
    queued_micros: Option<i64>,
}

impl<'de> Deserialize<'de> for QueueMessage {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let wire = WireMessage::deserialize(deserializer)?;
        let missing = |field: &'static str| D::Error::missing_field(field);
        match wire.kind.as_str() {
            "event" => Ok(QueueMessage::Event {
                v: wire.v,
                id: wire.id.ok_or_else(|| missing("id"))?,
                key: wire.key,
                node: wire.node,
                event: wire.event.ok_or_else(|| missing("event"))?,
                organization_id: wire.organization_id,
                idempotency_key: wire.idempotency_key,
                redactions: wire.redactions.ok_or_else(|| missing("redactions"))?,
                signals: wire.signals.ok_or_else(|| missing("signals"))?,
                checkpoint: wire.checkpoint.ok_or_else(|| missing("checkpoint"))?,
                notify: wire.notify.unwrap_or(true),
                queued_micros: wire.queued_micros.ok_or_else(|| missing("queuedMicros"))?,
            }),
            "checkpoint" => Ok(QueueMessage::Checkpoint {
                v: wire.v,
                log_id: wire.log_id.ok_or_else(|| missing("logId"))?,
                key: wire.key,
                node: wire.node,
            }),
            other => Err(D::Error::unknown_variant(other, &["event", "checkpoint"])),
        }
    }
}

impl QueueMessage {
    /// The payload of the [`QueueMessage::Event`] for one submission, as its `Serialize`
    /// form would write it but for the member order: the envelope is serialized, then the
    /// members' canonical text goes in as the `event` member as it is. It is Vellum's own
    /// canonical output, so always JSON; wrapping it in a `RawValue` first made serde_json
    /// parse it again only to check that (12k instructions per event on the API node), and
    /// the worker checks it anyway. Fails only if the envelope cannot be serialized.
    pub fn encode_event(
        submission: &Submission,
        id: uuid::Uuid,
        key: &str,
        node: &str,
        checkpoint: bool,
        notify: bool,
    ) -> Result<Vec<u8>, serde_json::Error> {
        /// Every field of [`QueueMessage::Event`] but `event`, borrowed.
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Envelope<'a> {
            kind: &'static str,
            v: u8,
            id: uuid::Uuid,
            key: &'a str,
            node: &'a str,
            organization_id: Option<&'a str>,
            idempotency_key: Option<&'a str>,
            redactions: &'a [String],
            signals: &'a [SecuritySignal],
            checkpoint: bool,
            notify: bool,
            queued_micros: i64,
        }
        let event = &submission.event;
        let canonical = event.members.to_canonical_object();
        let mut out = Vec::with_capacity(canonical.len() + 320);
        serde_json::to_writer(
            &mut out,
            &Envelope {
                kind: "event",
                v: MESSAGE_VERSION,
                id,
                key,
                node,
                organization_id: event.organization_id.as_deref(),
                idempotency_key: event.idempotency_key.as_deref(),
                redactions: &event.redactions,
                signals: &event.signals,
                checkpoint,
                notify,
                queued_micros: vellum_core::time_fmt::unix_micros(time::OffsetDateTime::now_utc()),
            },
        )?;
        // `{…}` becomes `{…,"event":<canonical text>}`.
        if out.pop() != Some(b'}') {
            return Err(serde::ser::Error::custom(
                "the envelope is not a JSON object",
            ));
        }
        out.extend_from_slice(b",\"event\":");
        out.extend_from_slice(canonical.as_bytes());
        out.push(b'}');
        Ok(out)
    }

    /// Decodes a payload; the error says why a worker dead-letters it.
    pub fn decode(payload: &[u8]) -> Result<Self, String> {
        let message: QueueMessage =
            serde_json::from_slice(payload).map_err(|e| format!("undecodable message: {e}"))?;
        let v = match &message {
            QueueMessage::Event { v, .. } | QueueMessage::Checkpoint { v, .. } => *v,
        };
        if !(OLDEST_READABLE_VERSION..=MESSAGE_VERSION).contains(&v) {
            return Err(format!(
                "message version {v}; this worker reads versions {OLDEST_READABLE_VERSION} to \
                 {MESSAGE_VERSION}"
            ));
        }
        Ok(message)
    }

    /// The submission a worker hands its writer.
    pub fn into_submission(self) -> Result<Option<(Submission, bool)>, String> {
        let QueueMessage::Event {
            id,
            key,
            event,
            organization_id,
            idempotency_key,
            redactions,
            signals,
            checkpoint,
            ..
        } = self
        else {
            return Ok(None);
        };
        let members =
            CanonicalMembers::from_canonical_object(event.as_str()).map_err(|e| e.to_string())?;
        Ok(Some((
            Submission {
                event: PreparedEvent {
                    members,
                    idempotency_key,
                    organization_id,
                    redactions,
                    signals,
                },
                idempotency_key: Some(key),
                id: Some(id),
            },
            checkpoint,
        )))
    }
}

/// What a worker publishes back for one message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitNotice {
    /// The message's key.
    pub key: String,
    /// The receipt (absent for a checkpoint request).
    pub receipt: Option<Receipt>,
}

/// An event accepted into the queue (HTTP 202).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueuedReceipt {
    /// Event id it will have in the log.
    pub id: String,
    /// Its log.
    pub log_id: String,
    /// Always `queued`: a worker has not committed it yet.
    pub status: String,
}

/// The queue side of an API node: producer, receipt listener, circuit breaker.
pub struct QueueIngest {
    producer: Producer,
    receipts: ReceiptListener,
    store: Arc<dyn AuditStore>,
    breaker: Mutex<CircuitBreaker>,
    node: String,
    partitions: u32,
    log_per_organization: bool,
    commit_wait: Duration,
    depth: AtomicUsize,
}

/// Prefix of the keys the API node gives events that came without one (`q:<event id>`).
/// Client keys are scoped as `<api key id>:…` and internal ones as `outbox:…`, so they never
/// start with it; such keys need no reservation, the id being fresh.
pub const QUEUE_KEY_PREFIX: &str = "q:";

/// A client's idempotency key (reserved across nodes), as opposed to the API node's own
/// `q:` keys, which need no reservation.
fn client_key(submission: &Submission) -> Option<&str> {
    submission
        .idempotency_key
        .as_deref()
        .filter(|k| !k.starts_with(QUEUE_KEY_PREFIX))
}

/// How long an idempotency reservation lives in Redis (the 24 h window).
const RESERVATION_TTL: Duration = crate::ingest::IDEMPOTENCY_WINDOW;

impl QueueIngest {
    /// Connects the producer and the receipt listener of node `node`.
    pub async fn connect(
        redis_url: &str,
        queue: QueueConfig,
        node: String,
        store: Arc<dyn AuditStore>,
        log_per_organization: bool,
        commit_wait: Duration,
    ) -> Result<Self, QueueError> {
        let partitions = queue.partitions;
        let producer = Producer::connect(redis_url, queue.clone()).await?;
        let receipts = ReceiptListener::start(redis_url, &queue, &node).await?;
        Ok(Self {
            producer,
            receipts,
            store,
            breaker: Mutex::new(CircuitBreaker::new(3, Duration::from_secs(2))),
            node,
            partitions,
            log_per_organization,
            commit_wait,
            depth: AtomicUsize::new(0),
        })
    }

    /// Events in the queue at the last measurement.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Whether the breaker lets requests through. Only looks: asking `allow` here would spend
    /// the half-open probe on a health check.
    pub fn is_available(&self) -> bool {
        self.breaker.lock().state(Instant::now()) != vellum_core::breaker::BreakerState::Open
    }

    /// The producer (stats, ping).
    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// Measures the queue and remembers its depth; `None` when Redis does not answer.
    pub async fn refresh_stats(&self) -> Option<vellum_queue::QueueStats> {
        match self.producer.stats().await {
            Ok(stats) => {
                let depth = stats.depth(Lane::High) + stats.depth(Lane::Normal);
                self.depth.store(
                    usize::try_from(depth).unwrap_or(usize::MAX),
                    Ordering::Relaxed,
                );
                Some(stats)
            }
            Err(_) => None,
        }
    }

    fn refuse(&self, reason: String) -> SubmitError {
        let retry_after = self
            .breaker
            .lock()
            .retry_after(Instant::now())
            .unwrap_or(Duration::from_secs(1));
        SubmitError::Unavailable {
            reason,
            retry_after,
        }
    }

    fn check_breaker(&self) -> Result<(), SubmitError> {
        if self.breaker.lock().allow(Instant::now()) {
            Ok(())
        } else {
            Err(self.refuse("Redis is unreachable (circuit open)".into()))
        }
    }

    fn record<T>(&self, result: Result<T, QueueError>) -> Result<T, SubmitError> {
        match result {
            Ok(v) => {
                self.breaker.lock().on_success(Instant::now());
                Ok(v)
            }
            Err(e) => {
                // Only an unreachable Redis opens the breaker; a full stream is back-pressure.
                if matches!(e, QueueError::Unavailable(_)) {
                    self.breaker.lock().on_failure(Instant::now());
                }
                metrics::counter!("vellum_queue_errors_total").increment(1);
                tracing::warn!(error = %e, "queue operation failed");
                Err(self.refuse(e.to_string()))
            }
        }
    }

    /// Queues events and returns as soon as Redis holds them (HTTP 202). `notify`: a caller
    /// will wait for the receipts (so the worker publishes them).
    pub async fn enqueue(
        &self,
        submissions: &[Submission],
        lane: Lane,
        checkpoint: bool,
        notify: bool,
    ) -> Result<Vec<(QueuedReceipt, String)>, SubmitError> {
        self.check_breaker()?;
        // Ids first, with every client key's reservation sent at once (one pipelined round
        // trip on the multiplexed connection, not one per event). The first node to see a key
        // fixes the event's id; a retry on any node answers with it and queues the event
        // again under the same key (the worker keeps one), so a node that died between
        // reserving and queueing cannot lose the event.
        let ids: Vec<uuid::Uuid> = submissions
            .iter()
            .map(|s| s.id.unwrap_or_else(uuid::Uuid::now_v7))
            .collect();
        let reservations = futures_util::future::join_all(
            submissions
                .iter()
                .zip(&ids)
                .filter_map(|(s, id)| client_key(s).map(|key| (key, id.to_string())))
                .map(|(key, id)| async move {
                    self.producer
                        .reserve_idempotency(key, &id, RESERVATION_TTL)
                        .await
                }),
        )
        .await;
        let mut reserved = reservations.into_iter();
        let mut out = Vec::with_capacity(submissions.len());
        let mut by_partition: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
        for (submission, mut id) in submissions.iter().zip(ids) {
            let log_id = log_for(
                submission.event.organization_id.as_deref(),
                self.log_per_organization,
            );
            let key = match (client_key(submission), &submission.idempotency_key) {
                (Some(key), _) => {
                    let first = self.record(reserved.next().unwrap_or(Ok(None)))?;
                    if let Some(first) = first.and_then(|v| uuid::Uuid::parse_str(&v).ok()) {
                        id = first;
                    }
                    key.to_owned()
                }
                (None, Some(internal)) => internal.clone(),
                (None, None) => format!("{QUEUE_KEY_PREFIX}{id}"),
            };
            let payload =
                QueueMessage::encode_event(submission, id, &key, &self.node, checkpoint, notify)
                    .map_err(|e| self.refuse(format!("encoding a message: {e}")))?;
            by_partition
                .entry(partition_of(&log_id, self.partitions))
                .or_default()
                .push(payload);
            out.push((
                QueuedReceipt {
                    id: id.hyphenated().to_string(),
                    log_id,
                    status: "queued".into(),
                },
                key,
            ));
        }
        for (partition, payloads) in by_partition {
            self.record(self.producer.enqueue(partition, lane, &payloads).await)?;
        }
        metrics::counter!("vellum_events_queued_total").increment(out.len() as u64);
        Ok(out)
    }

    /// Queues events and waits for the workers' receipts (`?wait=committed`, and the
    /// server's own audit records, which must be durable before the read they record is
    /// answered).
    pub async fn submit_and_wait(
        &self,
        submissions: Vec<Submission>,
        want_checkpoint: bool,
        checkpoint_log: Option<String>,
    ) -> Result<Result<Vec<Receipt>, CommitError>, SubmitError> {
        self.submit_and_wait_in(submissions, want_checkpoint, checkpoint_log, Lane::High)
            .await
    }

    /// [`QueueIngest::submit_and_wait`] on a chosen lane.
    pub async fn submit_and_wait_in(
        &self,
        submissions: Vec<Submission>,
        want_checkpoint: bool,
        checkpoint_log: Option<String>,
        lane: Lane,
    ) -> Result<Result<Vec<Receipt>, CommitError>, SubmitError> {
        self.check_breaker()?;
        // Register before queueing, so a fast worker's notice cannot be missed.
        let mut waits = Vec::new();
        if let Some(log_id) = checkpoint_log {
            let key = format!("cp:{}", uuid::Uuid::now_v7());
            let waiter = self.record(self.receipts.register(&key))?;
            let message = QueueMessage::Checkpoint {
                v: MESSAGE_VERSION,
                log_id: log_id.clone(),
                key: key.clone(),
                node: self.node.clone(),
            };
            let payload = serde_json::to_vec(&message)
                .map_err(|e| self.refuse(format!("encoding a message: {e}")))?;
            self.record(
                self.producer
                    .enqueue(
                        partition_of(&log_id, self.partitions),
                        Lane::High,
                        &[payload],
                    )
                    .await,
            )?;
            if !matches!(waiter.wait(self.commit_wait).await, Ok(Some(_))) {
                return Ok(Err(CommitError(format!(
                    "no worker made a checkpoint of log {log_id} within {:?}",
                    self.commit_wait
                ))));
            }
        }
        if submissions.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        let keyed: Vec<Submission> = submissions
            .into_iter()
            .map(|mut s| {
                if s.idempotency_key.is_none() {
                    let id = s.id.unwrap_or_else(uuid::Uuid::now_v7);
                    s.id = Some(id);
                    s.idempotency_key = Some(format!("{QUEUE_KEY_PREFIX}{id}"));
                }
                s
            })
            .collect();
        for s in &keyed {
            let key = s.idempotency_key.as_deref().unwrap_or_default();
            waits.push(self.record(self.receipts.register(key))?);
        }
        let queued = self.enqueue(&keyed, lane, want_checkpoint, true).await?;
        let deadline = tokio::time::Instant::now() + self.commit_wait;
        let mut receipts: Vec<Option<Receipt>> = Vec::with_capacity(waits.len());
        for waiter in waits {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let notice = waiter
                .wait(left)
                .await
                .ok()
                .flatten()
                .and_then(|bytes| serde_json::from_slice::<CommitNotice>(&bytes).ok())
                .and_then(|n| n.receipt);
            receipts.push(notice);
        }
        // A notice can be lost (Redis restarted between commit and publish): the event is in
        // the store all the same, found by its id (`q:` keys, see `ingest::keyed_by_id`) or
        // by its client key's receipt.
        let mut missing_keys: Vec<String> = Vec::new();
        let mut missing_ids: Vec<uuid::Uuid> = Vec::new();
        for (_, (queued, key)) in receipts.iter().zip(&queued).filter(|(r, _)| r.is_none()) {
            match key
                .strip_prefix(QUEUE_KEY_PREFIX)
                .filter(|id| *id == queued.id)
                .and_then(|id| uuid::Uuid::parse_str(id).ok())
            {
                Some(id) => missing_ids.push(id),
                None => missing_keys.push(key.clone()),
            }
        }
        if !missing_keys.is_empty() || !missing_ids.is_empty() {
            let store = self.store.clone();
            let found = tokio::task::spawn_blocking(move || {
                let refs: Vec<&str> = missing_keys.iter().map(String::as_str).collect();
                let mut found: HashMap<String, Receipt> = store
                    .idempotent_receipts(&refs, 0)?
                    .into_iter()
                    .filter_map(|(k, r)| serde_json::from_str(&r).ok().map(|r| (k, r)))
                    .collect();
                for event in store.events_by_id(&missing_ids)? {
                    let receipt = Receipt::of_stored(&event);
                    found.insert(format!("{QUEUE_KEY_PREFIX}{}", receipt.id), receipt);
                }
                Ok::<_, vellum_store::StoreError>(found)
            })
            .await
            .map_err(|e| self.refuse(e.to_string()))?;
            let found = match found {
                Ok(found) => found,
                Err(e) => return Ok(Err(CommitError(e.to_string()))),
            };
            for (slot, (_, key)) in receipts.iter_mut().zip(&queued) {
                if slot.is_none() {
                    *slot = found.get(key).cloned();
                }
            }
        }
        let committed: Option<Vec<Receipt>> = receipts.into_iter().collect();
        Ok(committed.ok_or_else(|| {
            CommitError(format!(
                "queued, but no worker committed it within {:?}; retry with the same idempotency key",
                self.commit_wait
            ))
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use vellum_core::config::{RedactionConfig, ValidationConfig};
    use vellum_core::pipeline::Pipeline;
    use vellum_core::redact::Redactor;

    #[test]
    fn a_message_carries_the_prepared_event_byte_for_byte() {
        let pipeline = Pipeline::new(
            ValidationConfig::default(),
            Redactor::new(&RedactionConfig::default(), &[7u8; 32]).expect("redactor"),
        );
        let event = serde_json::json!({
            "action": "fhir.patient.read", "status": "success", "principalId": "dr-é",
            "details": {"n": 1.5e300, "s": "a\u{2028}b"}, "organizationId": "org-1",
            "idempotencyKey": "k-1"
        });
        let prepared = pipeline
            .prepare(event, 100, time::OffsetDateTime::now_utc())
            .expect("valid");
        let submission = Submission {
            event: prepared.clone(),
            idempotency_key: Some("key:e:k-1".into()),
            id: None,
        };
        let id = uuid::Uuid::now_v7();
        let bytes = QueueMessage::encode_event(&submission, id, "key:e:k-1", "n1", true, false)
            .expect("encode");
        // The same message as its `Serialize` form gives (member order aside).
        let decoded = QueueMessage::decode(&bytes).expect("decodes");
        let QueueMessage::Event { queued_micros, .. } = decoded else {
            panic!("an event");
        };
        let whole = QueueMessage::Event {
            v: MESSAGE_VERSION,
            id,
            key: "key:e:k-1".into(),
            node: "n1".into(),
            event: CanonicalObject::new(prepared.members.to_canonical_object()).expect("json"),
            organization_id: Some("org-1".into()),
            idempotency_key: Some("k-1".into()),
            redactions: prepared.redactions.clone(),
            signals: prepared.signals.clone(),
            checkpoint: true,
            notify: false,
            queued_micros,
        };
        assert_eq!(decoded, whole);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&bytes).expect("json"),
            serde_json::to_value(&whole).expect("value")
        );
        // Version 2: the canonical text sits in the payload as it is, not escaped.
        let canonical = prepared.members.to_canonical_object();
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        assert!(text.contains(&format!("\"event\":{canonical}")), "{text}");
        // A version-1 payload (the text as a JSON string) decodes to the same message.
        let mut v1: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        v1["v"] = 1.into();
        v1["event"] = serde_json::Value::String(canonical.clone());
        v1.as_object_mut().expect("object").remove("notify");
        let from_v1 = QueueMessage::decode(&serde_json::to_vec(&v1).expect("v1")).expect("v1");
        match (&from_v1, &QueueMessage::decode(&bytes).expect("v2")) {
            (
                QueueMessage::Event {
                    event: a,
                    notify: notify_v1,
                    ..
                },
                QueueMessage::Event {
                    event: b,
                    notify: notify_v2,
                    ..
                },
            ) => {
                assert_eq!(a, b);
                // Version 1 carried no flag: its API nodes expected a notice for every event.
                assert!(*notify_v1);
                assert!(!*notify_v2, "an enqueue nobody waits on asks for no notice");
            }
            _ => panic!("events"),
        }
        let (back, checkpoint) = QueueMessage::decode(&bytes)
            .expect("decode")
            .into_submission()
            .expect("canonical")
            .expect("an event");
        assert!(checkpoint);
        assert_eq!(back.id, Some(id));
        assert_eq!(
            back.event.members.to_canonical_object(),
            prepared.members.to_canonical_object()
        );
        assert_eq!(back.event.organization_id.as_deref(), Some("org-1"));
        assert_eq!(back.event.idempotency_key.as_deref(), Some("k-1"));
    }

    #[test]
    fn a_worker_refuses_what_it_cannot_hash_faithfully() {
        assert!(QueueMessage::decode(b"not json").is_err());
        let wrong_version =
            br#"{"kind":"checkpoint","v":9,"logId":"default","key":"k","node":"n"}"#;
        assert!(
            QueueMessage::decode(wrong_version)
                .unwrap_err()
                .contains("version 9")
        );
        let reordered = serde_json::to_vec(&serde_json::json!({
            "kind": "event", "v": 1, "id": uuid::Uuid::nil(), "key": "k", "node": "n",
            "event": "{\"status\":\"success\",\"action\":\"x\"}", "organizationId": null,
            "idempotencyKey": null, "redactions": [], "signals": [], "checkpoint": false,
            "queuedMicros": 0
        }))
        .expect("json");
        let message = QueueMessage::decode(&reordered).expect("decodes");
        assert!(message.into_submission().is_err());
        let reordered_v2 = br#"{"kind":"event","v":2,"id":"00000000-0000-0000-0000-000000000000","key":"k","node":"n","event":{"status":"success","action":"x"},"organizationId":null,"idempotencyKey":null,"redactions":[],"signals":[],"checkpoint":false,"queuedMicros":0}"#;
        let message = QueueMessage::decode(reordered_v2).expect("decodes");
        assert!(message.into_submission().is_err());
        let spaced_v2 = br#"{"kind":"event","v":2,"id":"00000000-0000-0000-0000-000000000000","key":"k","node":"n","event":{"action": "x","status":"success"},"organizationId":null,"idempotencyKey":null,"redactions":[],"signals":[],"checkpoint":false,"queuedMicros":0}"#;
        let message = QueueMessage::decode(spaced_v2).expect("decodes");
        assert!(message.into_submission().is_err());
        let unknown_kind = br#"{"kind":"gossip","v":2,"key":"k","node":"n"}"#;
        assert!(
            QueueMessage::decode(unknown_kind)
                .unwrap_err()
                .contains("gossip")
        );
        let no_event = br#"{"kind":"event","v":2,"id":"00000000-0000-0000-0000-000000000000","key":"k","node":"n","redactions":[],"signals":[],"checkpoint":false,"queuedMicros":0}"#;
        assert!(
            QueueMessage::decode(no_event)
                .unwrap_err()
                .contains("missing field `event`")
        );
    }
}
