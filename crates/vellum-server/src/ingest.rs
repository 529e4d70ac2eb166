//! The ingest pipeline's serial half: one writer thread per store sequences, seals and commits
//! events in groups.
//!
//! Request tasks prepare events (validate, sanitize, redact, canonicalize members) in
//! parallel, then submit them here with a reply channel. The writer takes every submission
//! that is waiting, assigns `seq`/`prevHash`/`id`/`receivedAt`, seals (hash + HMAC), appends
//! the whole group in one durable transaction, and only then answers each submitter. Events
//! that arrive while a group is committing form the next group (group commit), so one fsync
//! covers many requests.
//!
//! Invariants:
//! - **One writer per log**: only this thread appends; it owns each log's head.
//! - **Ack means durable**: replies are sent after [`AuditStore::append`] returned.
//! - **Bounded memory**: at most `capacity` events wait; beyond it submissions fail with
//!   [`SubmitError::Full`] (HTTP 503) instead of queueing.
//! - If a commit fails, nothing of the group is acknowledged and the heads are reloaded from
//!   the store, so the chain continues from what is durable.

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use vellum_core::integrity::{GENESIS_PREV_HASH, HmacKeyring, to_hex};
use vellum_core::pipeline::{PreparedEvent, Sequencing, seal, server_now};
use vellum_core::time_fmt::unix_micros;
use vellum_store::{AppendBatch, AuditStore, IdempotencyRecord, NewEvent, StoreError};

/// How long an idempotency key is honoured (SPEC §5).
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// What the client gets back for an accepted event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    /// Event id (UUIDv7).
    pub id: String,
    /// Its log.
    pub log_id: String,
    /// Its position in the log.
    pub seq: u64,
    /// Its hash (hex).
    pub hash: String,
    /// Server acceptance time.
    pub received_at: String,
}

/// One event to append, with the idempotency key it is remembered under (already scoped to
/// the caller).
#[derive(Debug)]
pub struct Submission {
    /// The prepared event.
    pub event: PreparedEvent,
    /// Scoped idempotency key.
    pub idempotency_key: Option<String>,
}

struct Request {
    submissions: Vec<Submission>,
    reply: oneshot::Sender<Result<Vec<Receipt>, CommitError>>,
}

/// Why a group was not committed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("commit failed: {0}")]
pub struct CommitError(pub String);

/// Why a submission was refused before it reached the writer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    /// Too many events are waiting.
    #[error("ingest queue is full")]
    Full,
    /// The writer has stopped (shutdown or fatal error).
    #[error("ingest writer has stopped")]
    Stopped,
}

/// Tunables of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Events allowed to wait.
    pub capacity: usize,
    /// Most events per commit.
    pub max_batch: usize,
    /// One log per organization.
    pub log_per_organization: bool,
}

/// Handle used by request tasks to submit events.
#[derive(Clone)]
pub struct IngestHandle {
    tx: Sender<Request>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    alive: Arc<AtomicBool>,
}

impl IngestHandle {
    /// Events waiting for the writer now.
    pub fn queue_depth(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Whether the writer thread is running.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// Submits events and waits until they are durable. Receipts come back in order.
    pub async fn submit(
        &self,
        submissions: Vec<Submission>,
    ) -> Result<Result<Vec<Receipt>, CommitError>, SubmitError> {
        let n = submissions.len();
        if n == 0 {
            return Ok(Ok(Vec::new()));
        }
        if !self.is_alive() {
            return Err(SubmitError::Stopped);
        }
        // Reserve room first so concurrent submitters cannot overshoot the bound.
        let previous = self.queued.fetch_add(n, Ordering::AcqRel);
        if previous + n > self.capacity && previous > 0 {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            return Err(SubmitError::Full);
        }
        let (reply, wait) = oneshot::channel();
        if self.tx.send(Request { submissions, reply }).is_err() {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            return Err(SubmitError::Stopped);
        }
        wait.await.map_err(|_| SubmitError::Stopped)
    }
}

/// The writer thread; dropping every [`IngestHandle`] and calling [`Writer::join`] drains it.
pub struct Writer {
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer over `store`, resuming every log's chain from the store.
    pub fn start(
        store: Arc<dyn AuditStore>,
        keyring: Option<Arc<HmacKeyring>>,
        config: WriterConfig,
    ) -> Result<(Self, IngestHandle), StoreError> {
        let heads = load_heads(store.as_ref())?;
        let (tx, rx) = crossbeam_channel::unbounded::<Request>();
        let queued = Arc::new(AtomicUsize::new(0));
        let alive = Arc::new(AtomicBool::new(true));
        let handle = IngestHandle {
            tx,
            queued: queued.clone(),
            capacity: config.capacity.max(1),
            alive: alive.clone(),
        };
        let mut state = WriterState {
            store,
            keyring,
            heads,
            config,
            queued,
        };
        let thread = std::thread::Builder::new()
            .name("vellum-writer".into())
            .spawn(move || {
                state.run(&rx);
                alive.store(false, Ordering::Relaxed);
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start writer thread: {e}")))?;
        Ok((
            Self {
                thread: Some(thread),
            },
            handle,
        ))
    }

    /// Waits for the writer to finish everything submitted (call after every handle is
    /// dropped).
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Head {
    size: u64,
    last_hash: [u8; 32],
}

fn load_heads(store: &dyn AuditStore) -> Result<HashMap<String, Head>, StoreError> {
    Ok(store
        .log_heads()?
        .into_iter()
        .map(|h| {
            (
                h.log_id,
                Head {
                    size: h.size,
                    last_hash: h.last_hash,
                },
            )
        })
        .collect())
}

struct WriterState {
    store: Arc<dyn AuditStore>,
    keyring: Option<Arc<HmacKeyring>>,
    heads: HashMap<String, Head>,
    config: WriterConfig,
    queued: Arc<AtomicUsize>,
}

/// Where a submission's receipt comes from.
enum Outcome {
    New(usize),
    Replay(Receipt),
    SameAs(usize),
}

impl WriterState {
    fn run(&mut self, rx: &Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            let mut events: usize = group[0].submissions.len();
            while events < self.config.max_batch {
                match rx.try_recv() {
                    Ok(next) => {
                        events += next.submissions.len();
                        group.push(next);
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            self.commit_group(group, events);
        }
    }

    fn log_for(&self, event: &PreparedEvent) -> String {
        if self.config.log_per_organization
            && let Some(org) = &event.organization_id
        {
            return org.clone();
        }
        "default".to_owned()
    }

    fn commit_group(&mut self, group: Vec<Request>, events: usize) {
        let started = Instant::now();
        let result = self.seal_and_append(&group);
        self.queued.fetch_sub(events, Ordering::AcqRel);
        metrics::gauge!("vellum_ingest_queue_depth")
            .set(self.queued.load(Ordering::Relaxed) as f64);
        match result {
            Ok(mut receipts_per_request) => {
                metrics::histogram!("vellum_commit_batch_size").record(events as f64);
                metrics::histogram!("vellum_commit_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
                for (request, receipts) in group.into_iter().zip(receipts_per_request.drain(..)) {
                    let _ = request.reply.send(Ok(receipts));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, events, "group commit failed; nothing in it was acknowledged");
                metrics::counter!("vellum_commit_failures_total").increment(1);
                match load_heads(self.store.as_ref()) {
                    Ok(heads) => self.heads = heads,
                    Err(reload) => {
                        tracing::error!(error = %reload, "cannot reload log heads after a failed commit")
                    }
                }
                for request in group {
                    let _ = request.reply.send(Err(CommitError(e.to_string())));
                }
            }
        }
    }

    fn seal_and_append(&mut self, group: &[Request]) -> Result<Vec<Vec<Receipt>>, StoreError> {
        let (now, received_at) = server_now();
        let now_micros = unix_micros(now);
        let window = i64::try_from(IDEMPOTENCY_WINDOW.as_micros()).unwrap_or(i64::MAX);

        // Receipts already given for these keys (earlier groups, or earlier in this group).
        let keys: Vec<&str> = group
            .iter()
            .flat_map(|r| r.submissions.iter())
            .filter_map(|s| s.idempotency_key.as_deref())
            .collect();
        let mut known: HashMap<String, Receipt> = HashMap::new();
        for (key, receipt) in self
            .store
            .idempotent_receipts(&keys, now_micros.saturating_sub(window))?
        {
            if let Ok(receipt) = serde_json::from_str::<Receipt>(&receipt) {
                known.insert(key, receipt);
            }
        }
        let mut first_in_group: HashMap<&str, usize> = HashMap::new();

        let mut batch = AppendBatch::default();
        let mut new_receipts: Vec<Receipt> = Vec::new();
        let mut outcomes: Vec<Vec<Outcome>> = Vec::with_capacity(group.len());
        for request in group {
            let mut request_outcomes = Vec::with_capacity(request.submissions.len());
            for submission in &request.submissions {
                if let Some(key) = submission.idempotency_key.as_deref() {
                    if let Some(receipt) = known.get(key) {
                        request_outcomes.push(Outcome::Replay(receipt.clone()));
                        continue;
                    }
                    if let Some(&index) = first_in_group.get(key) {
                        request_outcomes.push(Outcome::SameAs(index));
                        continue;
                    }
                }
                let log_id = self.log_for(&submission.event);
                let head = self.heads.entry(log_id.clone()).or_insert(Head {
                    size: 0,
                    last_hash: GENESIS_PREV_HASH,
                });
                let id = uuid::Uuid::now_v7();
                let id_text = id.hyphenated().to_string();
                let sealed = seal(
                    &submission.event,
                    &Sequencing {
                        id: &id_text,
                        log_id: &log_id,
                        seq: head.size,
                        received_at: &received_at,
                        prev_hash: &head.last_hash,
                    },
                    self.keyring.as_deref(),
                );
                let receipt = Receipt {
                    id: id_text,
                    log_id: log_id.clone(),
                    seq: head.size,
                    hash: to_hex(&sealed.hash),
                    received_at: received_at.clone(),
                };
                head.size += 1;
                head.last_hash = sealed.hash;
                if let Some(key) = submission.idempotency_key.as_deref() {
                    first_in_group.insert(key, new_receipts.len());
                    batch.idempotency.push(IdempotencyRecord {
                        key: key.to_owned(),
                        receipt: serde_json::to_string(&receipt).unwrap_or_default(),
                        created_micros: now_micros,
                    });
                }
                batch.events.push(NewEvent {
                    log_id,
                    seq: receipt.seq,
                    id: *id.as_bytes(),
                    canonical: sealed.canonical,
                    hash: sealed.hash,
                    signature: sealed.signature.map(|(_, sig)| sig),
                });
                request_outcomes.push(Outcome::New(new_receipts.len()));
                new_receipts.push(receipt);
            }
            outcomes.push(request_outcomes);
        }

        self.store.append(&batch)?;
        metrics::counter!("vellum_events_ingested_total").increment(batch.events.len() as u64);

        Ok(outcomes
            .into_iter()
            .map(|request_outcomes| {
                request_outcomes
                    .into_iter()
                    .map(|o| match o {
                        Outcome::New(i) | Outcome::SameAs(i) => new_receipts[i].clone(),
                        Outcome::Replay(r) => r,
                    })
                    .collect()
            })
            .collect())
    }
}
