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
//! Sealing and committing are two threads, a pipeline of depth two: while the committer
//! thread appends group N (the store's work: SQLite's, or PostgreSQL's in another process),
//! the writer thread seals group N+1 on top of N's heads. The two halves' CPU then overlaps
//! instead of adding up (the scale-out worker spent as long sealing and building index rows as
//! PostgreSQL spent storing them, one after the other). Group N+1 stays open while N commits:
//! whatever arrives meanwhile is sealed on top of it and joins it, and it goes to the
//! committer the moment the committer is free (or when it reaches `max_batch`). Handing
//! N+1 over as soon as it was sealed made every other commit small, and a commit has a fixed
//! cost (transaction, fsync, tiles, acks): two scale-out workers sharing two cores made
//! about 1,000 commits of 20 events for 20,000 events, and now make 120 to 170. The price is
//! the failure rule below: a group sealed on top of a group that then fails to commit is
//! refused too.
//!
//! The writer also keeps each log's Merkle tree ([`TileWriter`]): the tiles an append changes
//! go into the same transaction as its events, and a signed checkpoint joins the transaction
//! whenever `checkpoint_interval` has passed since the last one (or a submitter asked for one).
//! When events stop arriving, the writer wakes up after the interval to checkpoint what is not
//! yet covered, so every event is under a checkpoint within about one interval.
//!
//! Invariants:
//! - **One writer per log**: only this thread appends; it owns each log's head.
//! - **Ack means durable**: replies are sent after [`AuditStore::append`] returned.
//! - **Bounded memory**: at most `capacity` events are between submission and the end of their
//!   commit (waiting, being sealed, or committing); beyond it submissions fail with
//!   [`SubmitError::Full`] (HTTP 503) instead of queueing.
//! - If a commit fails, nothing of the group is acknowledged, nor of the group sealed on top
//!   of it (the committer refuses groups sealed in an older *generation*), and the writer
//!   reloads the heads from the store once the committer has drained, so the chain continues
//!   from what is durable.
//! - Only the committer appends while groups are in flight; the writer's own appends (idle
//!   checkpoints, shutdown) wait for the committer to drain first.
//! - An idempotency key in a group not yet committed is answered from the in-flight map (the
//!   store cannot know it yet); the committer removes a group's keys only after its commit
//!   ended, so a key is always in the map or in the store.

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use vellum_core::checkpoint::{CheckpointBody, CheckpointSigner, SignedCheckpoint};
use vellum_core::integrity::{GENESIS_PREV_HASH, HmacKeyring, to_hex};
use vellum_core::merkle::leaf_hash;
use vellum_core::pipeline::{PreparedEvent, Sequencing, seal, server_now};
use vellum_core::tiles::TileWriter;
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

impl Receipt {
    /// The receipt of an event the log holds (a queue message delivered again after its
    /// commit is answered with it).
    pub fn of_stored(event: &vellum_store::StoredEvent) -> Self {
        /// The one field of the body a receipt repeats.
        #[derive(serde::Deserialize)]
        struct Received<'a> {
            #[serde(rename = "receivedAt", borrow)]
            received_at: Option<std::borrow::Cow<'a, str>>,
        }
        let received_at = serde_json::from_str::<Received<'_>>(&event.canonical)
            .ok()
            .and_then(|r| r.received_at)
            .map(std::borrow::Cow::into_owned)
            .unwrap_or_default();
        Self {
            id: uuid::Uuid::from_bytes(event.id_column.unwrap_or_default())
                .hyphenated()
                .to_string(),
            log_id: event.log_id.clone(),
            seq: event.seq,
            hash: hex::encode(&event.hash),
            received_at,
        }
    }
}

/// The event id a submission is deduplicated by, when its key is the API node's own
/// `q:<event id>` (scale-out, [`crate::scaleout::QUEUE_KEY_PREFIX`]). Such an event needs no
/// idempotency receipt: the id is in the log, under a unique index, once the event is.
/// Receipts made that way took a row, two index entries and their WAL per event, 5% of
/// PostgreSQL's work in the scale-out benchmark.
fn keyed_by_id(submission: &Submission) -> Option<uuid::Uuid> {
    let id = submission.id?;
    let rest = submission
        .idempotency_key
        .as_deref()?
        .strip_prefix(crate::scaleout::QUEUE_KEY_PREFIX)?;
    (uuid::Uuid::parse_str(rest).ok()? == id).then_some(id)
}

/// One event to append, with the idempotency key it is remembered under (already scoped to
/// the caller).
#[derive(Debug)]
pub struct Submission {
    /// The prepared event.
    pub event: PreparedEvent,
    /// Scoped idempotency key.
    pub idempotency_key: Option<String>,
    /// The event id, when it was assigned before the writer saw the event (scale-out: the API
    /// node answers with the id before a worker sequences the event); `None` lets the writer
    /// assign a fresh UUIDv7.
    pub id: Option<uuid::Uuid>,
}

struct Request {
    submissions: Vec<Submission>,
    /// Sign a checkpoint in this commit covering these events (`?wait=checkpoint`), or, with
    /// no submissions, covering everything in `checkpoint_log` (on-demand checkpoint).
    want_checkpoint: bool,
    checkpoint_log: Option<String>,
    enqueued: Instant,
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
    /// The queue (scale-out) cannot be reached; nothing was queued. Retry after the delay.
    #[error("the ingest queue is unavailable: {reason}")]
    Unavailable {
        /// What failed (never a secret).
        reason: String,
        /// When the circuit breaker lets the next attempt through.
        retry_after: Duration,
    },
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
    /// Longest time between events arriving and a checkpoint covering them.
    pub checkpoint_interval: Duration,
    /// `(owned partitions, partitions)` when this writer owns only the logs of some queue
    /// partitions (scale-out worker): it loads and checkpoints only those logs, so it never
    /// touches a log another worker writes. `None`: every log.
    pub partition: Option<(Arc<std::collections::BTreeSet<u32>>, u32)>,
    /// Where committed events are announced (detection), if anywhere.
    pub commit_tap: Option<CommitTap>,
}

/// One event as committed: enough for a consumer to parse it without reading the store.
#[derive(Debug, Clone)]
pub struct CommittedEvent {
    /// Its log.
    pub log_id: String,
    /// Its position in the log.
    pub seq: u64,
    /// The stored canonical text.
    pub canonical: String,
}

/// A bounded announcement channel from the writer to a consumer of committed events (the
/// detection thread). The writer never waits on it: when the consumer falls behind, batches
/// are dropped and the consumer, which tracks its position per log, reads the gap from the
/// store. So detection can never slow down or block a commit.
#[derive(Clone, Debug)]
pub struct CommitTap(crossbeam_channel::Sender<Vec<CommittedEvent>>);

impl CommitTap {
    /// A tap holding at most `batches` unread commits, and its receiving end.
    pub fn bounded(batches: usize) -> (Self, crossbeam_channel::Receiver<Vec<CommittedEvent>>) {
        let (tx, rx) = crossbeam_channel::bounded(batches.max(1));
        (Self(tx), rx)
    }

    fn announce(&self, events: Vec<CommittedEvent>) {
        if events.is_empty() {
            return;
        }
        if let Err(crossbeam_channel::TrySendError::Full(_)) = self.0.try_send(events) {
            metrics::counter!("vellum_commit_tap_dropped_total").increment(1);
        }
    }
}

/// The queue partition a log belongs to, out of `partitions` ([`vellum_queue::partition_of`]):
/// every API node and worker computes the same value, so one log is always in one partition
/// and written by that partition's one owner.
pub fn partition_of(log_id: &str, partitions: u32) -> u32 {
    vellum_queue::partition_of(log_id, partitions)
}

/// The log an event of `organization_id` goes to: its organization's own log when logs are
/// per organization, else `default`.
pub fn log_for(organization_id: Option<&str>, log_per_organization: bool) -> String {
    match organization_id {
        Some(org) if log_per_organization => org.to_owned(),
        _ => "default".to_owned(),
    }
}

/// Handle used by request tasks to submit events: to this process's writer, or (scale-out) to
/// the queue the workers read.
#[derive(Clone)]
pub struct IngestHandle {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Local(LocalHandle),
    Queue(Arc<crate::scaleout::QueueIngest>),
}

#[derive(Clone)]
struct LocalHandle {
    tx: Sender<Request>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    alive: Arc<AtomicBool>,
}

impl IngestHandle {
    /// A handle that queues events for the scale-out workers.
    pub fn queued(queue: Arc<crate::scaleout::QueueIngest>) -> Self {
        Self {
            backend: Backend::Queue(queue),
        }
    }

    /// The scale-out queue behind this handle, if any.
    pub fn queue(&self) -> Option<&Arc<crate::scaleout::QueueIngest>> {
        match &self.backend {
            Backend::Queue(q) => Some(q),
            Backend::Local(_) => None,
        }
    }

    /// Events waiting for the writer now (scale-out: in the queue, as last measured).
    pub fn queue_depth(&self) -> usize {
        match &self.backend {
            Backend::Local(l) => l.queued.load(Ordering::Relaxed),
            Backend::Queue(q) => q.depth(),
        }
    }

    /// Whether events can be submitted: the writer thread runs (scale-out: the queue's
    /// circuit breaker is not open).
    pub fn is_alive(&self) -> bool {
        match &self.backend {
            Backend::Local(l) => l.alive.load(Ordering::Relaxed),
            Backend::Queue(q) => q.is_available(),
        }
    }

    /// Submits events and waits until they are durable. Receipts come back in order.
    pub async fn submit(
        &self,
        submissions: Vec<Submission>,
    ) -> Result<Result<Vec<Receipt>, CommitError>, SubmitError> {
        self.submit_with(submissions, false, None).await
    }

    /// Asks the writer for a checkpoint of `log_id` now (if it grew since the last one) and
    /// waits until it is durable.
    pub async fn checkpoint_now(&self, log_id: &str) -> Result<(), SubmitError> {
        match self
            .submit_with(Vec::new(), true, Some(log_id.to_owned()))
            .await?
        {
            Ok(_) => Ok(()),
            Err(_) => Err(SubmitError::Stopped),
        }
    }

    /// [`IngestHandle::submit`], optionally asking for a checkpoint covering the events in the
    /// same commit.
    pub async fn submit_with(
        &self,
        submissions: Vec<Submission>,
        want_checkpoint: bool,
        checkpoint_log: Option<String>,
    ) -> Result<Result<Vec<Receipt>, CommitError>, SubmitError> {
        match &self.backend {
            Backend::Local(l) => {
                l.submit_with(submissions, want_checkpoint, checkpoint_log)
                    .await
            }
            Backend::Queue(q) => {
                q.submit_and_wait(submissions, want_checkpoint, checkpoint_log)
                    .await
            }
        }
    }
}

impl LocalHandle {
    async fn submit_with(
        &self,
        submissions: Vec<Submission>,
        want_checkpoint: bool,
        checkpoint_log: Option<String>,
    ) -> Result<Result<Vec<Receipt>, CommitError>, SubmitError> {
        let n = submissions.len();
        if n == 0 && checkpoint_log.is_none() {
            return Ok(Ok(Vec::new()));
        }
        if !self.alive.load(Ordering::Relaxed) {
            return Err(SubmitError::Stopped);
        }
        // Reserve room first so concurrent submitters cannot overshoot the bound.
        let previous = self.queued.fetch_add(n, Ordering::AcqRel);
        if previous + n > self.capacity && previous > 0 {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            return Err(SubmitError::Full);
        }
        let (reply, wait) = oneshot::channel();
        let request = Request {
            submissions,
            want_checkpoint,
            checkpoint_log,
            enqueued: Instant::now(),
            reply,
        };
        if self.tx.send(request).is_err() {
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
        signer: Arc<CheckpointSigner>,
        config: WriterConfig,
    ) -> Result<(Self, IngestHandle), StoreError> {
        let heads = load_heads(store.as_ref(), config.partition.as_ref())?;
        let (tx, rx) = crossbeam_channel::unbounded::<Request>();
        let queued = Arc::new(AtomicUsize::new(0));
        let alive = Arc::new(AtomicBool::new(true));
        let handle = IngestHandle {
            backend: Backend::Local(LocalHandle {
                tx,
                queued: queued.clone(),
                capacity: config.capacity.max(1),
                alive: alive.clone(),
            }),
        };
        let shared = Arc::new(PipelineShared::default());
        let committer = Committer::start(
            store.clone(),
            shared.clone(),
            config.commit_tap.clone(),
            queued.clone(),
        )?;
        let mut state = WriterState {
            store,
            keyring,
            signer,
            heads,
            config,
            queued,
            shared,
            generation: 0,
            committer: Some(committer),
            pending: None,
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
    tree: TileWriter,
    /// Size covered by the newest checkpoint.
    checkpointed: u64,
    /// When the newest checkpoint was made (by this process; startup counts as one).
    checkpointed_at: Instant,
}

impl Head {
    fn empty() -> Self {
        Self {
            size: 0,
            last_hash: GENESIS_PREV_HASH,
            tree: TileWriter::new(),
            checkpointed: 0,
            checkpointed_at: Instant::now(),
        }
    }
}

/// Loads every log's head and Merkle edge from the store.
///
/// A store written before the tree existed (schema v1) has events but no tiles: the tree is
/// then rebuilt once from the stored event hashes. Any other disagreement between the log and
/// its tiles is damage, and the writer refuses to start rather than extend a broken tree.
fn load_heads(
    store: &dyn AuditStore,
    partition: Option<&(Arc<std::collections::BTreeSet<u32>>, u32)>,
) -> Result<HashMap<String, Head>, StoreError> {
    let mut heads = HashMap::new();
    for h in store.log_heads()? {
        if partition.is_some_and(|(owned, of)| !owned.contains(&partition_of(&h.log_id, *of))) {
            continue;
        }
        let log = h.log_id.clone();
        let resumed = TileWriter::resume(h.size, |key| store.merkle_tile(&log, key))?;
        let tree = match resumed {
            Ok(tree) => tree,
            Err(e) => {
                let has_any_tile = TileWriter::edge_tiles(h.size)
                    .iter()
                    .any(|(k, _)| matches!(store.merkle_tile(&log, *k), Ok(Some(_))))
                    || matches!(
                        store.merkle_tile(&log, vellum_core::tiles::TileKey { level: 0, index: 0 }),
                        Ok(Some(_))
                    );
                if has_any_tile {
                    return Err(StoreError::Corrupt(format!(
                        "log {log}: the Merkle tree does not match the log ({e}); run `vellum verify`"
                    )));
                }
                tracing::warn!(log = %log, events = h.size, "log has no Merkle tree yet; building it from the stored events");
                rebuild_tree(store, &log, h.size)?
            }
        };
        let checkpointed = store.latest_checkpoint(&log)?.map_or(0, |c| c.tree_size);
        heads.insert(
            h.log_id,
            Head {
                size: h.size,
                last_hash: h.last_hash,
                tree,
                checkpointed,
                checkpointed_at: Instant::now(),
            },
        );
    }
    Ok(heads)
}

/// Builds a log's tree from its events and stores the tiles (one-time upgrade path).
fn rebuild_tree(store: &dyn AuditStore, log: &str, size: u64) -> Result<TileWriter, StoreError> {
    let mut tree = TileWriter::new();
    let mut next = 0u64;
    while next < size {
        let page = store.scan_log(log, next, 10_000)?;
        if page.is_empty() {
            break;
        }
        for event in &page {
            if event.seq != next {
                return Err(StoreError::Corrupt(format!(
                    "log {log}: seq {next} is missing; run `vellum verify`"
                )));
            }
            let hash: [u8; 32] = event.hash.as_slice().try_into().map_err(|_| {
                StoreError::Corrupt(format!("log {log}: seq {next} has a malformed hash"))
            })?;
            tree.push(leaf_hash(&hash));
            next += 1;
        }
        let batch = AppendBatch {
            tiles: tree
                .take_changed()
                .into_iter()
                .map(|t| (log.to_owned(), t))
                .collect(),
            ..AppendBatch::default()
        };
        store.append(&batch)?;
    }
    Ok(tree)
}

struct WriterState {
    store: Arc<dyn AuditStore>,
    keyring: Option<Arc<HmacKeyring>>,
    signer: Arc<CheckpointSigner>,
    heads: HashMap<String, Head>,
    config: WriterConfig,
    queued: Arc<AtomicUsize>,
    shared: Arc<PipelineShared>,
    /// The committer's generation the heads were last loaded in (see [`PipelineShared`]).
    generation: u64,
    committer: Option<Committer>,
    /// The group sealed while the committer is busy with the previous one. What arrives in
    /// the meantime is sealed on top of it and joins it, so a group holds everything that
    /// arrived during the previous commit: handing over a group as soon as it was sealed
    /// made every other commit a small one (what arrived while the previous group was being
    /// sealed), and a commit has a fixed cost (transaction, fsync, tiles, acks).
    pending: Option<Box<SealedGroup>>,
}

/// What [`WriterState::wait_for_committer_or_request`] ended with.
enum Waited {
    /// The pending group went to the committer.
    HandedOver,
    /// A request arrived first.
    Request(Request),
    /// Every handle is gone.
    Disconnected,
}

/// `first` and whatever else is waiting, up to `room` events (always `first`).
fn gather(rx: &Receiver<Request>, first: Request, room: usize) -> (Vec<Request>, usize) {
    let mut events: usize = first.submissions.len();
    let mut group = vec![first];
    while events < room {
        match rx.try_recv() {
            Ok(next) => {
                events += next.submissions.len();
                group.push(next);
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
        }
    }
    (group, events)
}

/// What the writer and the committer share.
#[derive(Default)]
struct PipelineShared {
    /// Bumped by the committer when an append fails: a group sealed in an earlier generation
    /// was sealed on top of events that are not in the store, and is refused.
    generation: AtomicU64,
    /// Receipts of sealed groups not yet committed, by idempotency key.
    in_flight: parking_lot::Mutex<HashMap<String, Receipt>>,
}

/// A sealed group on its way to the store.
struct SealedGroup {
    requests: Vec<Request>,
    receipts: Vec<Vec<Receipt>>,
    batch: AppendBatch,
    /// Idempotency keys this group put in the in-flight map.
    keys: Vec<String>,
    checkpoints: usize,
    events: usize,
    generation: u64,
    started: Instant,
}

impl SealedGroup {
    /// Takes in `later`, sealed on top of this group: its events follow these in every log,
    /// its tiles supersede these (the stores keep the last version of a tile in a batch).
    fn absorb(&mut self, later: SealedGroup) {
        self.requests.extend(later.requests);
        self.receipts.extend(later.receipts);
        self.batch.events.extend(later.batch.events);
        self.batch.idempotency.extend(later.batch.idempotency);
        self.batch.tiles.extend(later.batch.tiles);
        self.batch.checkpoints.extend(later.batch.checkpoints);
        self.keys.extend(later.keys);
        self.checkpoints += later.checkpoints;
        self.events += later.events;
        self.generation = self.generation.min(later.generation);
        self.started = self.started.min(later.started);
    }
}

enum ToCommitter {
    /// Boxed: a sealed group is large, the other variant small.
    Group(Box<SealedGroup>),
    /// Answered once everything sent before it has been committed or refused.
    Drain(crossbeam_channel::Sender<()>),
}

/// The committing half of the pipeline: appends sealed groups in order, answers their
/// requests, announces commits on the tap.
struct Committer {
    tx: Sender<ToCommitter>,
    thread: JoinHandle<()>,
}

impl Committer {
    fn start(
        store: Arc<dyn AuditStore>,
        shared: Arc<PipelineShared>,
        tap: Option<CommitTap>,
        queued: Arc<AtomicUsize>,
    ) -> Result<Self, StoreError> {
        // A rendezvous: the writer hands over group N+1 only when the committer is done with
        // N, so at most two groups are sealed and not yet durable.
        let (tx, rx) = crossbeam_channel::bounded::<ToCommitter>(0);
        let thread = std::thread::Builder::new()
            .name("vellum-commit".into())
            .spawn(move || {
                for message in rx {
                    match message {
                        ToCommitter::Drain(done) => {
                            let _ = done.send(());
                        }
                        ToCommitter::Group(group) => {
                            commit_sealed(store.as_ref(), &shared, tap.as_ref(), &queued, *group);
                        }
                    }
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start committer thread: {e}")))?;
        Ok(Self { tx, thread })
    }
}

/// Frees the room `events` held in the ingest queue's bound: the bound counts events from
/// submission until their commit ended (waiting, being sealed, or in the committer), so with
/// the store stalled, submissions are refused at once rather than piling up in the pipeline.
fn release(queued: &AtomicUsize, events: usize) {
    queued.fetch_sub(events, Ordering::AcqRel);
    metrics::gauge!("vellum_ingest_queue_depth").set(queued.load(Ordering::Relaxed) as f64);
}

/// Appends one sealed group (unless an earlier one failed since it was sealed), then answers
/// its requests: receipts only after the append returned.
fn commit_sealed(
    store: &dyn AuditStore,
    shared: &PipelineShared,
    tap: Option<&CommitTap>,
    queued: &AtomicUsize,
    group: SealedGroup,
) {
    let result = if group.generation != shared.generation.load(Ordering::Acquire) {
        Err(CommitError(
            "an earlier commit failed; this group was sealed on top of it and is not stored".into(),
        ))
    } else {
        store.append(&group.batch).map_err(|e| {
            shared.generation.fetch_add(1, Ordering::AcqRel);
            tracing::error!(error = %e, events = group.events, "group commit failed; nothing in it was acknowledged");
            metrics::counter!("vellum_commit_failures_total").increment(1);
            CommitError(e.to_string())
        })
    };
    if result.is_ok() {
        metrics::counter!("vellum_events_ingested_total")
            .increment(group.batch.events.len() as u64);
        if group.checkpoints > 0 {
            metrics::counter!("vellum_checkpoints_total").increment(group.checkpoints as u64);
        }
        metrics::histogram!("vellum_commit_batch_size").record(group.events as f64);
        metrics::histogram!("vellum_commit_duration_seconds")
            .record(group.started.elapsed().as_secs_f64());
        if let Some(tap) = tap {
            tap.announce(
                group
                    .batch
                    .events
                    .iter()
                    .map(|e| CommittedEvent {
                        log_id: e.log_id.clone(),
                        seq: e.seq,
                        canonical: e.canonical.clone(),
                    })
                    .collect(),
            );
        }
    }
    // Durable (or refused): from now on the store answers for these keys.
    {
        let mut in_flight = shared.in_flight.lock();
        for key in &group.keys {
            in_flight.remove(key);
        }
    }
    // The commit has ended: its events leave the ingest bound before anyone hears of it, so
    // a submitter that got its answer and sends again is never refused for its own events.
    release(queued, group.events);
    match result {
        Ok(()) => {
            for (request, receipts) in group.requests.into_iter().zip(group.receipts) {
                let _ = request.reply.send(Ok(receipts));
            }
        }
        Err(e) => {
            for request in group.requests {
                let _ = request.reply.send(Err(e.clone()));
            }
        }
    }
}

/// Where a submission's receipt comes from.
enum Outcome {
    New(usize),
    Replay(Receipt),
    SameAs(usize),
}

impl WriterState {
    fn run(&mut self, rx: &Receiver<Request>) {
        loop {
            if self.pending.is_some() {
                // A group is sealed and the committer is busy: add what arrives to it, and
                // hand it over the moment the committer is free.
                match self.wait_for_committer_or_request(rx) {
                    Waited::HandedOver => continue,
                    Waited::Request(first) => {
                        let room = self.config.max_batch.saturating_sub(self.pending_events());
                        let (group, events) = gather(rx, first, room);
                        self.commit_group(group, events);
                        continue;
                    }
                    Waited::Disconnected => break,
                }
            }
            let first = match self.next_checkpoint_due() {
                None => match rx.recv() {
                    Ok(r) => r,
                    Err(_) => break,
                },
                Some(due) => match rx.recv_timeout(due) {
                    Ok(r) => r,
                    Err(RecvTimeoutError::Timeout) => {
                        self.checkpoint_idle_logs();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
            };
            let (group, events) = gather(rx, first, self.config.max_batch);
            self.commit_group(group, events);
        }
        // Shutting down: leave every acknowledged event under a checkpoint.
        self.hand_over_pending();
        self.checkpoint_idle_logs_now();
        if let Some(committer) = self.committer.take() {
            drop(committer.tx);
            let _ = committer.thread.join();
        }
    }

    /// Waits until the committer has finished every group sent so far; if one failed since
    /// the heads were loaded, reloads them from the store (which is now final).
    fn drain(&mut self) {
        self.hand_over_pending();
        if let Some(committer) = &self.committer {
            let (done, wait) = crossbeam_channel::bounded(1);
            if committer.tx.send(ToCommitter::Drain(done)).is_ok() {
                let _ = wait.recv();
            }
        }
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation != self.generation {
            match load_heads(self.store.as_ref(), self.config.partition.as_ref()) {
                Ok(heads) => {
                    self.heads = heads;
                    self.generation = generation;
                }
                Err(e) => {
                    // Retried before the next group: nothing is sealed on unknown heads.
                    tracing::error!(error = %e, "cannot reload log heads after a failed commit");
                }
            }
        }
    }

    /// How long until some log with uncovered events is due for a checkpoint.
    fn next_checkpoint_due(&self) -> Option<Duration> {
        self.heads
            .values()
            .filter(|h| h.size > h.checkpointed)
            .map(|h| {
                (h.checkpointed_at + self.config.checkpoint_interval)
                    .saturating_duration_since(Instant::now())
            })
            .min()
    }

    fn checkpoint_idle_logs(&mut self) {
        let interval = self.config.checkpoint_interval;
        self.write_checkpoints(|h| h.checkpointed_at.elapsed() >= interval);
    }

    fn checkpoint_idle_logs_now(&mut self) {
        self.write_checkpoints(|_| true);
    }

    /// Signs and stores, on their own, checkpoints of the logs with uncovered events that
    /// `due` selects (after the committer drained: only one thread appends at a time).
    fn write_checkpoints(&mut self, due: impl Fn(&Head) -> bool) {
        self.drain();
        if self.shared.generation.load(Ordering::Acquire) != self.generation {
            return;
        }
        let timestamp = server_now().1;
        let mut batch = AppendBatch::default();
        let mut covered = Vec::new();
        for (log_id, head) in &self.heads {
            if head.size > head.checkpointed && due(head) {
                batch
                    .checkpoints
                    .push(self.signer.sign(&body_of(log_id, head), &timestamp));
                covered.push((log_id.clone(), head.size));
            }
        }
        if batch.checkpoints.is_empty() {
            return;
        }
        match self.store.append(&batch) {
            Ok(()) => {
                metrics::counter!("vellum_checkpoints_total").increment(covered.len() as u64);
                for (log_id, size) in covered {
                    if let Some(h) = self.heads.get_mut(&log_id) {
                        h.checkpointed = size;
                        h.checkpointed_at = Instant::now();
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "storing a checkpoint failed; retrying after the interval");
                for (log_id, _) in covered {
                    if let Some(h) = self.heads.get_mut(&log_id) {
                        h.checkpointed_at = Instant::now();
                    }
                }
            }
        }
    }

    fn log_for(&self, event: &PreparedEvent) -> String {
        log_for(
            event.organization_id.as_deref(),
            self.config.log_per_organization,
        )
    }

    fn commit_group(&mut self, group: Vec<Request>, events: usize) {
        let started = Instant::now();
        if self.shared.generation.load(Ordering::Acquire) != self.generation {
            // A group failed: seal nothing until the heads are what the store holds.
            self.drain();
        }
        let oldest = group.iter().map(|r| r.enqueued).min();
        if let Some(oldest) = oldest {
            // Time the oldest request of the group waited for the writer (queueing behind
            // earlier commits), as opposed to the commit itself.
            metrics::histogram!("vellum_ingest_queue_wait_seconds")
                .record(started.saturating_duration_since(oldest).as_secs_f64());
        }
        let sealed = if self.shared.generation.load(Ordering::Acquire) != self.generation {
            Err(StoreError::Unavailable(
                "log heads could not be reloaded after a failed commit".into(),
            ))
        } else {
            self.seal_group(&group)
        };
        let sealed = match sealed {
            Ok((receipts, batch, keys, checkpoints)) => SealedGroup {
                requests: group,
                receipts,
                batch,
                keys,
                checkpoints,
                events,
                generation: self.generation,
                started,
            },
            Err(e) => {
                // Nothing was sealed (the heads are untouched): only this group fails.
                tracing::error!(error = %e, events, "group commit failed; nothing in it was acknowledged");
                metrics::counter!("vellum_commit_failures_total").increment(1);
                release(&self.queued, events);
                for request in group {
                    let _ = request.reply.send(Err(CommitError(e.to_string())));
                }
                return;
            }
        };
        match &mut self.pending {
            // Sealed on top of the pending group: one commit for both.
            Some(pending) => pending.absorb(sealed),
            None => self.pending = Some(Box::new(sealed)),
        }
        self.try_hand_over();
        if let Some(pending) = &mut self.pending {
            // The committer is busy: build now what the append would build first (the
            // search index rows on PostgreSQL), so that it overlaps the commit in flight
            // instead of holding up this one.
            self.store.prepare(&mut pending.batch);
        }
    }

    /// Events in the pending group.
    fn pending_events(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.events)
    }

    /// Hands the pending group to the committer if it is waiting for one.
    fn try_hand_over(&mut self) {
        let Some(committer) = &self.committer else {
            return;
        };
        let Some(group) = self.pending.take() else {
            return;
        };
        match committer.tx.try_send(ToCommitter::Group(group)) {
            Ok(()) => {}
            Err(crossbeam_channel::TrySendError::Full(ToCommitter::Group(group))) => {
                self.pending = Some(group);
            }
            Err(
                crossbeam_channel::TrySendError::Full(message)
                | crossbeam_channel::TrySendError::Disconnected(message),
            ) => self.lost(message),
        }
    }

    /// Hands the pending group over, waiting for the committer if need be.
    fn hand_over_pending(&mut self) {
        let Some(group) = self.pending.take() else {
            return;
        };
        let sent = match &self.committer {
            Some(committer) => committer.tx.send(ToCommitter::Group(group)),
            None => Err(crossbeam_channel::SendError(ToCommitter::Group(group))),
        };
        if let Err(crossbeam_channel::SendError(message)) = sent {
            self.lost(message);
        }
    }

    /// A group the committer can no longer take (it is gone: it cannot be while the writer
    /// runs, barring a panic) is refused.
    fn lost(&self, message: ToCommitter) {
        if let ToCommitter::Group(lost) = message {
            release(&self.queued, lost.events);
            for request in lost.requests {
                let _ = request
                    .reply
                    .send(Err(CommitError("the committer thread stopped".into())));
            }
        }
    }

    /// With a group pending: blocks until the committer takes it (then hands it over) or a
    /// request arrives, whichever comes first. A full pending group only waits for the
    /// committer.
    fn wait_for_committer_or_request(&mut self, rx: &Receiver<Request>) -> Waited {
        let Some(committer) = &self.committer else {
            self.hand_over_pending();
            return Waited::HandedOver;
        };
        if self.pending_events() >= self.config.max_batch {
            self.hand_over_pending();
            return Waited::HandedOver;
        }
        let mut select = crossbeam_channel::Select::new();
        let send = select.send(&committer.tx);
        let recv = select.recv(rx);
        let operation = select.select();
        if operation.index() == send {
            if let Some(group) = self.pending.take()
                && let Err(crossbeam_channel::SendError(message)) =
                    operation.send(&committer.tx, ToCommitter::Group(group))
            {
                self.lost(message);
            }
            Waited::HandedOver
        } else {
            debug_assert_eq!(operation.index(), recv);
            match operation.recv(rx) {
                Ok(request) => Waited::Request(request),
                Err(_) => Waited::Disconnected,
            }
        }
    }

    /// Seals a group on top of the current heads (which it advances) and builds its append
    /// batch. Returns the receipts per request, the batch, the idempotency keys put in the
    /// in-flight map and how many checkpoints the batch signs. Fails (before touching any
    /// head) only if the store cannot say which idempotency keys it already knows.
    #[allow(clippy::type_complexity)]
    fn seal_group(
        &mut self,
        group: &[Request],
    ) -> Result<(Vec<Vec<Receipt>>, AppendBatch, Vec<String>, usize), StoreError> {
        let (now, received_at) = server_now();
        let now_micros = unix_micros(now);
        let window = i64::try_from(IDEMPOTENCY_WINDOW.as_micros()).unwrap_or(i64::MAX);

        // Receipts already given for these keys: in groups still in flight (checked first: a
        // key leaves that map only once its group's commit ended), in the store (earlier
        // groups), or earlier in this group.
        let keys: Vec<&str> = group
            .iter()
            .flat_map(|r| r.submissions.iter())
            .filter_map(|s| s.idempotency_key.as_deref())
            .collect();
        let mut known: HashMap<String, Receipt> = HashMap::new();
        if !keys.is_empty() {
            let in_flight = self.shared.in_flight.lock();
            if !in_flight.is_empty() {
                for key in &keys {
                    if let Some(receipt) = in_flight.get(*key) {
                        known.insert((*key).to_owned(), receipt.clone());
                    }
                }
            }
        }
        // A queue message's key names its event id: the log itself says whether that event
        // is in. Other keys (clients', the outbox's) have receipts of their own.
        let mut unknown_keys: Vec<&str> = Vec::new();
        let mut unknown_ids: HashMap<uuid::Uuid, &str> = HashMap::new();
        for submission in group.iter().flat_map(|r| r.submissions.iter()) {
            let Some(key) = submission.idempotency_key.as_deref() else {
                continue;
            };
            if known.contains_key(key) {
                continue;
            }
            match keyed_by_id(submission) {
                Some(id) => {
                    unknown_ids.insert(id, key);
                }
                None => unknown_keys.push(key),
            }
        }
        for (key, receipt) in self
            .store
            .idempotent_receipts(&unknown_keys, now_micros.saturating_sub(window))?
        {
            if let Ok(receipt) = serde_json::from_str::<Receipt>(&receipt) {
                known.insert(key, receipt);
            }
        }
        if !unknown_ids.is_empty() {
            let ids: Vec<uuid::Uuid> = unknown_ids.keys().copied().collect();
            for event in self.store.events_by_id(&ids)? {
                let id = uuid::Uuid::from_bytes(event.id_column.unwrap_or_default());
                if let Some(key) = unknown_ids.get(&id) {
                    known.insert((*key).to_owned(), Receipt::of_stored(&event));
                }
            }
        }
        let mut first_in_group: HashMap<&str, usize> = HashMap::new();
        let mut in_flight_keys: Vec<(String, usize)> = Vec::new();

        let mut batch = AppendBatch::default();
        let mut new_receipts: Vec<Receipt> = Vec::new();
        let mut outcomes: Vec<Vec<Outcome>> = Vec::with_capacity(group.len());
        let mut touched: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        let mut force_checkpoint: std::collections::BTreeSet<String> =
            std::collections::BTreeSet::new();
        for request in group {
            if let Some(log) = &request.checkpoint_log {
                force_checkpoint.insert(log.clone());
            }
            let mut request_outcomes = Vec::with_capacity(request.submissions.len());
            for submission in &request.submissions {
                if let Some(key) = submission.idempotency_key.as_deref() {
                    if let Some(receipt) = known.get(key) {
                        if request.want_checkpoint {
                            force_checkpoint.insert(receipt.log_id.clone());
                        }
                        request_outcomes.push(Outcome::Replay(receipt.clone()));
                        continue;
                    }
                    if let Some(&index) = first_in_group.get(key) {
                        request_outcomes.push(Outcome::SameAs(index));
                        continue;
                    }
                }
                let log_id = self.log_for(&submission.event);
                let head = self.heads.entry(log_id.clone()).or_insert_with(Head::empty);
                let id = submission.id.unwrap_or_else(uuid::Uuid::now_v7);
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
                head.tree.push(leaf_hash(&sealed.hash));
                if request.want_checkpoint {
                    force_checkpoint.insert(log_id.clone());
                }
                touched.insert(log_id.clone());
                if let Some(key) = submission.idempotency_key.as_deref() {
                    first_in_group.insert(key, new_receipts.len());
                    in_flight_keys.push((key.to_owned(), new_receipts.len()));
                    if keyed_by_id(submission).is_none() {
                        batch.idempotency.push(IdempotencyRecord {
                            key: key.to_owned(),
                            receipt: serde_json::to_string(&receipt).unwrap_or_default(),
                            created_micros: now_micros,
                        });
                    }
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

        // The tree's changed tiles, and checkpoints that are due or asked for, commit with the
        // events: one fsync covers all of it.
        let interval = self.config.checkpoint_interval;
        let mut checkpointed = Vec::new();
        for log_id in touched.union(&force_checkpoint) {
            let Some(head) = self.heads.get_mut(log_id) else {
                continue;
            };
            batch.tiles.extend(
                head.tree
                    .take_changed()
                    .into_iter()
                    .map(|t| (log_id.clone(), t)),
            );
            let due =
                head.checkpointed_at.elapsed() >= interval || force_checkpoint.contains(log_id);
            if head.size > head.checkpointed && due {
                batch
                    .checkpoints
                    .push(self.signer.sign(&body_of(log_id, head), &received_at));
                checkpointed.push(log_id.clone());
            }
        }

        // Checkpoints count as made now; if this group fails, the heads are reloaded.
        for log_id in &checkpointed {
            if let Some(head) = self.heads.get_mut(log_id) {
                head.checkpointed = head.size;
                head.checkpointed_at = Instant::now();
            }
        }
        let keys: Vec<String> = {
            let mut in_flight = self.shared.in_flight.lock();
            in_flight_keys
                .into_iter()
                .map(|(key, index)| {
                    in_flight.insert(key.clone(), new_receipts[index].clone());
                    key
                })
                .collect()
        };
        let receipts = outcomes
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
            .collect();
        Ok((receipts, batch, keys, checkpointed.len()))
    }
}

fn body_of(log_id: &str, head: &Head) -> CheckpointBody {
    CheckpointBody {
        log_id: log_id.to_owned(),
        tree_size: head.size,
        root_hash: head.tree.root(),
    }
}

/// Re-exported for handlers that build receipts with checkpoints.
pub type Checkpoint = SignedCheckpoint;
