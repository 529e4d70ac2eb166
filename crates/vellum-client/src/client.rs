//! The client: batching, retries, the circuit breaker, and the spool's background delivery.
//!
//! Three ways to send, by what the caller needs:
//!
//! | call | returns when | if the server is down |
//! | --- | --- | --- |
//! | [`Client::log`] | the server holds the event (receipt) | retried with backoff, then [`ClientError::Unavailable`] |
//! | [`Client::log_batch`] | the server answered for every event | same |
//! | [`Client::log_with_guaranteed_delivery`] | the event is fsynced in the local spool | delivered later, in priority order, however long it takes |
//!
//! `log` calls are batched adaptively: a call that finds a free request slot leaves at once,
//! and calls that arrive while every slot is busy leave together in the next request, so a
//! busy service makes few requests and a quiet one adds no waiting window. Every event gets an `idempotencyKey` (a UUIDv7) before its first send, so a resend
//! after a timeout, a crash or a lost answer returns the first receipt instead of writing a
//! second event.
//!
//! ## Delivery from the spool
//! One background task drains the spool: the oldest records of the highest-priority lane
//! with any, in one request; accepted ones are acknowledged (the spool's cursor moves past
//! them), refused ones go to the dead-letter file with the server's reason, and on a
//! retryable failure nothing is acknowledged and the batch is sent again after a backoff. A
//! crash between the server's answer and the acknowledgement resends the batch on restart; the
//! idempotency keys make the server answer with the first receipts (it keeps them 24 h).
//! A 401/403 is not the events' fault: they stay in the spool, and delivery resumes once the
//! key is fixed.

use crate::breaker::{Breaker, BreakerConfig, BreakerState};
use crate::error::{ClientError, ServerRejection};
use crate::event::{Delivery, Event, Priority};
use crate::retry::RetryPolicy;
use crate::spool::{PendingRecord, Spool, SpoolConfig, SpoolStats, SpooledEvent};
use crate::transport::{EventOutcome, Receipt, SendError, Transport};
use parking_lot::Mutex;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

/// How long the delivery task waits after a 401/403 before trying the spool again.
const UNAUTHORIZED_BACKOFF: Duration = Duration::from_secs(30);

/// Where a guaranteed-delivery event is: durable in the local spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled {
    /// The idempotency key the event is sent with.
    pub idempotency_key: String,
    /// Its lane.
    pub priority: Priority,
}

/// The outcome of [`Client::replay_dead_letters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Dead letters sent again.
    pub resent: u64,
    /// Of those, accepted (removed from the dead-letter file).
    pub accepted: u64,
    /// Of those, refused again (kept, with the new reason).
    pub refused: u64,
}

/// What the client has done so far (counters since it was built).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientStats {
    /// Events the server accepted.
    pub accepted: u64,
    /// Events the server refused for good (for spooled events: dead-lettered).
    pub rejected: u64,
    /// Requests sent again after a retryable failure.
    pub retries: u64,
    /// The circuit breaker's state now.
    pub breaker: BreakerState,
    /// The spool's counts, when the client has one.
    pub spool: Option<SpoolStats>,
}

/// Builds a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: Option<String>,
    api_key: Option<Zeroizing<String>>,
    request_timeout: Duration,
    connect_timeout: Duration,
    batch_max_events: usize,
    batch_linger: Duration,
    max_concurrent_requests: usize,
    delivery_batch_events: usize,
    delivery_batch_bytes: u64,
    retry: RetryPolicy,
    breaker: BreakerConfig,
    spool: Option<SpoolConfig>,
    ca_pem: Option<Vec<u8>>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            url: None,
            api_key: None,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            batch_max_events: 100,
            batch_linger: Duration::ZERO,
            max_concurrent_requests: 4,
            delivery_batch_events: 500,
            delivery_batch_bytes: 2 << 20,
            retry: RetryPolicy::default(),
            breaker: BreakerConfig::default(),
            spool: None,
            ca_pem: None,
        }
    }
}

impl ClientBuilder {
    /// The server's base URL, e.g. `http://127.0.0.1:7870` (required).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// The API key (an `ingest` key is enough to send events). Kept in zeroizing memory and
    /// sent as a sensitive header, so it never shows in logs or `Debug` output.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(Zeroizing::new(key.into()));
        self
    }

    /// Timeout of one request, answer included (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Timeout of establishing a connection (default 3 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// `log` batching: at most `max_events` per request (default 100), and `linger`, how long
    /// a call waits for others to share its request (default zero: calls are batched only
    /// while earlier requests are in flight, so a lone caller never waits).
    pub fn batching(mut self, max_events: usize, linger: Duration) -> Self {
        self.batch_max_events = max_events.max(1);
        self.batch_linger = linger;
        self
    }

    /// Requests in flight at once for `log` batches (default 4).
    pub fn max_concurrent_requests(mut self, n: usize) -> Self {
        self.max_concurrent_requests = n.max(1);
        self
    }

    /// Largest batch the spool's delivery sends in one request (default 500 events, 2 MiB).
    pub fn delivery_batch(mut self, max_events: usize, max_bytes: u64) -> Self {
        self.delivery_batch_events = max_events.max(1);
        self.delivery_batch_bytes = max_bytes.max(1);
        self
    }

    /// Retry policy of `log` and `log_batch`, and the backoff of spool delivery.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Circuit breaker settings.
    pub fn breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = config;
        self
    }

    /// Enables guaranteed delivery with a spool in `dir` (default bound 1 GiB).
    pub fn spool_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.spool = Some(SpoolConfig::new(dir));
        self
    }

    /// Enables guaranteed delivery with a fully configured spool.
    pub fn spool(mut self, config: SpoolConfig) -> Self {
        self.spool = Some(config);
        self
    }

    /// Trusts exactly this CA (PEM) for `https` URLs, instead of the system's roots; for a
    /// server with a private CA, as hospitals' internal services usually have.
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Builds the client: opens the spool (recovering it after a crash) and starts its
    /// delivery in the background. Must be called inside a tokio runtime.
    pub fn build(self) -> Result<Client, ClientError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ClientError::Config("Client::build must be called inside a tokio runtime".into())
        })?;
        let url_text = self
            .url
            .as_deref()
            .ok_or_else(|| ClientError::Config("no server URL: call ClientBuilder::url".into()))?;
        let uri: http::Uri = url_text
            .parse()
            .map_err(|e| ClientError::Config(format!("server URL {url_text:?}: {e}")))?;
        let trust = match (uri.scheme_str(), &self.ca_pem) {
            (Some("https"), Some(pem)) => crate::tls::Trust::CaPem(pem.clone()),
            (Some("https"), None) => crate::tls::Trust::System,
            (Some("http"), _) => crate::tls::Trust::None,
            _ => {
                return Err(ClientError::Config(format!(
                    "server URL {url_text:?} must start with http:// or https://"
                )));
            }
        };
        if uri.query().is_some() {
            return Err(ClientError::Config(format!(
                "server URL {url_text:?} must not have a query"
            )));
        }
        let base = if url_text.ends_with('/') {
            url_text.to_owned()
        } else {
            format!("{url_text}/")
        };
        let connector = crate::tls::connector(&trust, self.connect_timeout)?;
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build(connector);
        let transport = Transport::new(
            http,
            &base,
            self.api_key.as_deref().map(String::as_str),
            self.request_timeout,
        )
        .map_err(ClientError::Config)?;
        let shared = Arc::new(Shared {
            transport,
            breaker: Breaker::new(self.breaker),
            retry: self.retry,
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        });
        let spool = match self.spool {
            Some(config) => Some(Spool::open(config)?),
            None => None,
        };
        let (batch_tx, batch_rx) = mpsc::channel(self.batch_max_events.saturating_mul(64));
        runtime.spawn(batcher(
            Arc::clone(&shared),
            batch_rx,
            self.batch_max_events,
            self.batch_linger,
            Arc::new(Semaphore::new(self.max_concurrent_requests)),
        ));
        let (stop_tx, stop_rx) = watch::channel(false);
        let progress = Arc::new(Notify::new());
        let deliverer = spool.clone().map(|spool| {
            runtime.spawn(deliver(
                Arc::clone(&shared),
                spool,
                stop_rx,
                Arc::clone(&progress),
                self.delivery_batch_events,
                self.delivery_batch_bytes,
            ))
        });
        Ok(Client {
            inner: Arc::new(Inner {
                shared,
                batch_tx,
                spool,
                stop: stop_tx,
                deliverer: Mutex::new(deliverer),
                progress,
            }),
        })
    }
}

/// What the batcher, the senders and the delivery task share.
struct Shared {
    transport: Transport,
    breaker: Breaker,
    retry: RetryPolicy,
    accepted: AtomicU64,
    rejected: AtomicU64,
    retries: AtomicU64,
}

struct Inner {
    shared: Arc<Shared>,
    batch_tx: mpsc::Sender<Queued>,
    spool: Option<Spool>,
    stop: watch::Sender<bool>,
    deliverer: Mutex<Option<JoinHandle<()>>>,
    /// Signalled after every delivered (or dead-lettered) spool batch.
    progress: Arc<Notify>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The delivery task holds a spool handle; stopping it releases the spool's lock.
        let _ = self.stop.send(true);
    }
}

/// A Vellum client; cheap to clone (all clones share batching, the breaker and the spool).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("transport", &self.inner.shared.transport)
            .field("spool", &self.inner.spool.as_ref().map(Spool::dir))
            .finish_non_exhaustive()
    }
}

struct Queued {
    event: Value,
    reply: oneshot::Sender<Result<Receipt, ClientError>>,
}

impl Client {
    /// Starts building a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// Sends one event (gathered with concurrent calls into one request) and returns the
    /// server's receipt once the server holds it. Retryable failures are retried with backoff
    /// up to the policy's attempts; a permanent refusal is [`ClientError::Rejected`].
    pub async fn log(&self, mut event: Event) -> Result<Receipt, ClientError> {
        event.ensure_idempotency_key();
        let (reply, answer) = oneshot::channel();
        self.inner
            .batch_tx
            .send(Queued {
                event: event.into_json(),
                reply,
            })
            .await
            .map_err(|_| ClientError::Closed)?;
        answer.await.map_err(|_| ClientError::Closed)?
    }

    /// Sends these events in one request (with retries) and returns each one's fate, in order:
    /// its receipt, or the server's reason for refusing it.
    pub async fn log_batch(
        &self,
        events: Vec<Event>,
    ) -> Result<Vec<Result<Receipt, ServerRejection>>, ClientError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Value> = events
            .into_iter()
            .map(|mut e| {
                e.ensure_idempotency_key();
                e.into_json()
            })
            .collect();
        let outcomes = send_with_retries(&self.inner.shared, &values, Priority::Normal).await?;
        Ok(outcomes
            .into_iter()
            .map(|o| match o {
                EventOutcome::Accepted(r) => Ok(r),
                EventOutcome::Rejected(r) => Err(r),
            })
            .collect())
    }

    /// Appends the event to the local spool (fsynced; concurrent calls share one fsync) and
    /// returns; the background task delivers it, high priority first, for as long as it takes.
    /// Fails only when the event cannot be made durable locally: no spool configured, the
    /// spool full ([`crate::SpoolError::Full`]), or a disk error.
    pub async fn log_with_guaranteed_delivery(
        &self,
        mut event: Event,
        delivery: Delivery,
    ) -> Result<Spooled, ClientError> {
        let spool = self.inner.spool.as_ref().ok_or_else(|| {
            ClientError::Config(
                "guaranteed delivery needs a spool: ClientBuilder::spool_dir".into(),
            )
        })?;
        let idempotency_key = event.ensure_idempotency_key();
        spool
            .append(SpooledEvent {
                idempotency_key: idempotency_key.clone(),
                priority: delivery.priority,
                spooled_at_micros: now_micros(),
                event: event.into_json(),
            })
            .await?;
        Ok(Spooled {
            idempotency_key,
            priority: delivery.priority,
        })
    }

    /// The circuit breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.shared.breaker.state()
    }

    /// A receiver that sees every change of the breaker's state (for health checks and
    /// metrics); the state reads half-open only once a call looks at an expired open breaker.
    pub fn watch_breaker(&self) -> watch::Receiver<BreakerState> {
        self.inner.shared.breaker.subscribe()
    }

    /// Counters and the spool's state.
    pub fn stats(&self) -> ClientStats {
        let shared = &self.inner.shared;
        ClientStats {
            accepted: shared.accepted.load(Ordering::Relaxed),
            rejected: shared.rejected.load(Ordering::Relaxed),
            retries: shared.retries.load(Ordering::Relaxed),
            breaker: shared.breaker.state(),
            spool: self.inner.spool.as_ref().map(Spool::stats),
        }
    }

    /// The spool, when guaranteed delivery is on.
    pub fn spool(&self) -> Option<&Spool> {
        self.inner.spool.as_ref()
    }

    /// Waits until the spool has nothing left to deliver, or `timeout` passes; returns whether
    /// it is empty. For an orderly shutdown ("deliver what you can in 10 s") and for tests.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let Some(spool) = &self.inner.spool else {
            return true;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let progressed = self.inner.progress.notified();
            let stats = spool.stats();
            if stats.high.pending_records == 0 && stats.normal.pending_records == 0 {
                return true;
            }
            // Progress wakes us early; the timeout re-checks in case a wakeup was missed.
            let step = tokio::time::Instant::now() + Duration::from_millis(200);
            if tokio::time::timeout_at(step.min(deadline), progressed)
                .await
                .is_err()
                && tokio::time::Instant::now() >= deadline
            {
                let stats = spool.stats();
                return stats.high.pending_records == 0 && stats.normal.pending_records == 0;
            }
        }
    }

    /// Resends every dead letter of the spool, high priority first, with its original
    /// idempotency key (an event the server already holds gets its first receipt back, never a
    /// second copy). Accepted ones leave the dead-letter file; refused ones stay with the new
    /// reason. On a retryable failure the letters not yet settled stay as they were and the
    /// error is returned.
    pub async fn replay_dead_letters(&self) -> Result<ReplayReport, ClientError> {
        let spool =
            self.inner.spool.as_ref().ok_or_else(|| {
                ClientError::Config("replaying dead letters needs a spool".into())
            })?;
        let mut letters = spool.dead_letters()?;
        letters.sort_by_key(|l| l.record.priority);
        let mut report = ReplayReport::default();
        let mut keep = Vec::new();
        let mut failure = None;
        let mut rest = letters.into_iter().peekable();
        while rest.peek().is_some() {
            let Some(priority) = rest.peek().map(|l| l.record.priority) else {
                break;
            };
            let mut chunk = Vec::new();
            while chunk.len() < 500 && rest.peek().is_some_and(|l| l.record.priority == priority) {
                if let Some(letter) = rest.next() {
                    chunk.push(letter);
                }
            }
            if failure.is_some() {
                keep.extend(chunk);
                continue;
            }
            let events: Vec<Value> = chunk.iter().map(|l| l.record.event.clone()).collect();
            match send_with_retries(&self.inner.shared, &events, priority).await {
                Ok(outcomes) => {
                    report.resent += chunk.len() as u64;
                    for (mut letter, outcome) in chunk.into_iter().zip(outcomes) {
                        match outcome {
                            EventOutcome::Accepted(_) => report.accepted += 1,
                            EventOutcome::Rejected(rejection) => {
                                report.refused += 1;
                                letter.rejection = rejection;
                                letter.dead_lettered_at_micros = now_micros();
                                keep.push(letter);
                            }
                        }
                    }
                }
                Err(e) => {
                    keep.extend(chunk);
                    failure = Some(e);
                }
            }
        }
        spool.replace_dead_letters(&keep)?;
        match failure {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Stops the spool's delivery task after the request it is sending, and waits for it; the
    /// spool's lock is released once every clone of this client is dropped. Undelivered events
    /// stay in the spool and are delivered by the next client that opens it.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        let task = self.inner.deliverer.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl crate::middleware::AuditRecorder for Client {
    fn record(
        &self,
        event: Event,
        priority: Priority,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), ClientError>> + Send + 'static>,
    > {
        let client = self.clone();
        Box::pin(async move {
            if client.inner.spool.is_some() {
                client
                    .log_with_guaranteed_delivery(event, Delivery { priority })
                    .await
                    .map(|_| ())
            } else {
                client.log(event).await.map(|_| ())
            }
        })
    }

    fn ready(&self) -> bool {
        match &self.inner.spool {
            Some(spool) => !spool.is_full(),
            None => self.inner.shared.breaker.state() != BreakerState::Open,
        }
    }
}

fn now_micros() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

/// Gathers `log` calls into batches and hands each to a sender task.
///
/// Adaptive: a call that finds a free request slot is sent at once with whatever else is
/// already queued, so a lone caller pays one round trip and no waiting window. Calls that
/// arrive while every slot is busy pile up and leave together in the next request, so under
/// load batches grow by themselves. `linger` (default zero) adds a fixed wait for more calls.
async fn batcher(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Queued>,
    max_events: usize,
    linger: Duration,
    slots: Arc<Semaphore>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        if !linger.is_zero() {
            let deadline = tokio::time::Instant::now() + linger;
            while batch.len() < max_events {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(next)) => batch.push(next),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        // Whatever arrived while waiting for the slot goes in the same request.
        while batch.len() < max_events {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _permit = permit;
            let (events, replies): (Vec<Value>, Vec<_>) =
                batch.into_iter().map(|q| (q.event, q.reply)).unzip();
            match send_with_retries(&shared, &events, Priority::Normal).await {
                Ok(outcomes) => {
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        let _ = reply.send(match outcome {
                            EventOutcome::Accepted(r) => Ok(r),
                            EventOutcome::Rejected(r) => Err(ClientError::Rejected(r)),
                        });
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    let mut first = Some(e);
                    for reply in replies {
                        let err = first.take().unwrap_or_else(|| copy_error(&text));
                        let _ = reply.send(Err(err));
                    }
                }
            }
        });
    }
}

/// The same failure for every caller of a batch (errors are not `Clone`: the spool error
/// inside one holds an `io::Error`; a send error never does).
fn copy_error(text: &str) -> ClientError {
    ClientError::Unavailable {
        attempts: 0,
        last: text.to_owned(),
    }
}

/// Sends one batch with the retry policy: backoff with jitter on retryable failures, the
/// breaker consulted before each attempt, a 413 split in halves.
async fn send_with_retries(
    shared: &Shared,
    events: &[Value],
    priority: Priority,
) -> Result<Vec<EventOutcome>, ClientError> {
    let mut attempt: u32 = 0;
    loop {
        if let Err(wait) = shared.breaker.admit() {
            return Err(ClientError::CircuitOpen { retry_after: wait });
        }
        attempt += 1;
        match shared.transport.send(events, priority).await {
            Ok(outcomes) => {
                shared.breaker.success();
                count_outcomes(shared, &outcomes);
                return Ok(outcomes);
            }
            Err(SendError::Retryable {
                reason,
                retry_after,
                counts_for_breaker,
            }) => {
                if counts_for_breaker {
                    shared.breaker.failure();
                } else {
                    shared.breaker.success();
                }
                if attempt >= shared.retry.max_attempts.max(1) {
                    return Err(ClientError::Unavailable {
                        attempts: attempt,
                        last: reason,
                    });
                }
                shared.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(shared.retry.delay(attempt - 1, retry_after)).await;
            }
            Err(SendError::Unauthorized(r)) => {
                shared.breaker.success();
                return Err(ClientError::Unauthorized(r));
            }
            Err(SendError::Rejected(r)) => {
                shared.breaker.success();
                if r.status == 413 && events.len() > 1 {
                    let (left, right) = events.split_at(events.len() / 2);
                    let mut outcomes = Box::pin(send_with_retries(shared, left, priority)).await?;
                    outcomes.extend(Box::pin(send_with_retries(shared, right, priority)).await?);
                    return Ok(outcomes);
                }
                let outcomes = vec![EventOutcome::Rejected(r); events.len()];
                count_outcomes(shared, &outcomes);
                return Ok(outcomes);
            }
        }
    }
}

fn count_outcomes(shared: &Shared, outcomes: &[EventOutcome]) {
    let accepted = outcomes
        .iter()
        .filter(|o| matches!(o, EventOutcome::Accepted(_)))
        .count() as u64;
    shared.accepted.fetch_add(accepted, Ordering::Relaxed);
    shared
        .rejected
        .fetch_add(outcomes.len() as u64 - accepted, Ordering::Relaxed);
}

/// The spool's delivery task (see the module docs).
async fn deliver(
    shared: Arc<Shared>,
    spool: Spool,
    mut stop: watch::Receiver<bool>,
    progress: Arc<Notify>,
    max_events: usize,
    max_bytes: u64,
) {
    let mut failures: u32 = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            () = spool.wait_for_records() => {}
            _ = stop.changed() => return,
        }
        let batch = match spool.next_batch(max_events, max_bytes) {
            Ok(Some(batch)) => batch,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(error = %e, "reading the audit spool failed; retrying");
                if pause(&mut stop, Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        };
        let (priority, records) = batch;
        match deliver_records(&shared, &spool, priority, &records).await {
            Ok(()) => {
                failures = 0;
                progress.notify_waiters();
            }
            Err(wait) => {
                failures = failures.saturating_add(1);
                let wait = wait.unwrap_or_else(|| shared.retry.delay(failures - 1, None));
                if pause(&mut stop, wait).await {
                    return;
                }
            }
        }
    }
}

/// Sleeps for `wait` unless asked to stop; returns whether to stop.
async fn pause(stop: &mut watch::Receiver<bool>, wait: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(wait) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// Sends spooled records in one request and settles each: accepted ones acknowledged,
/// refused ones dead-lettered. `Err(wait)` leaves them all (from the first unsettled one) in
/// the spool; `wait` is the server's `Retry-After` or the breaker's remaining time, if any.
async fn deliver_records(
    shared: &Shared,
    spool: &Spool,
    priority: Priority,
    records: &[PendingRecord],
) -> Result<(), Option<Duration>> {
    let Some(last) = records.last() else {
        return Ok(());
    };
    if let Err(wait) = shared.breaker.admit() {
        return Err(Some(wait));
    }
    let events: Vec<Value> = records.iter().map(|r| r.record.event.clone()).collect();
    match shared.transport.send(&events, priority).await {
        Ok(outcomes) => {
            shared.breaker.success();
            count_outcomes(shared, &outcomes);
            for (record, outcome) in records.iter().zip(&outcomes) {
                if let EventOutcome::Rejected(rejection) = outcome {
                    settle_rejected(spool, record, rejection)?;
                }
            }
            spool.ack(priority, last.position).map_err(|e| {
                tracing::error!(error = %e, "acknowledging delivered audit events failed");
                None
            })
        }
        Err(SendError::Retryable {
            reason,
            retry_after,
            counts_for_breaker,
        }) => {
            if counts_for_breaker {
                shared.breaker.failure();
            } else {
                shared.breaker.success();
            }
            shared.retries.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                reason = %reason,
                events = records.len(),
                "audit events could not be delivered yet; they stay in the spool"
            );
            Err(retry_after)
        }
        Err(SendError::Unauthorized(r)) => {
            shared.breaker.success();
            tracing::error!(
                status = r.status,
                code = %r.code,
                "the Vellum server refuses this client's API key; spooled audit events wait \
                 until it is fixed"
            );
            Err(Some(UNAUTHORIZED_BACKOFF))
        }
        Err(SendError::Rejected(r)) => {
            shared.breaker.success();
            if records.len() == 1 {
                shared.rejected.fetch_add(1, Ordering::Relaxed);
                return settle_rejected(spool, last, &r);
            }
            // A refusal of the whole request (413, 400) says nothing about which event is at
            // fault: send them one by one, so only the culprits become dead letters.
            for record in records {
                Box::pin(deliver_records(
                    shared,
                    spool,
                    priority,
                    std::slice::from_ref(record),
                ))
                .await?;
            }
            Ok(())
        }
    }
}

fn settle_rejected(
    spool: &Spool,
    record: &PendingRecord,
    rejection: &ServerRejection,
) -> Result<(), Option<Duration>> {
    tracing::warn!(
        status = rejection.status,
        code = %rejection.code,
        idempotency_key = %record.record.idempotency_key,
        "the Vellum server refused an audit event; it is in the spool's dead-letter file"
    );
    spool.dead_letter(record, rejection).map_err(|e| {
        tracing::error!(error = %e, "writing an audit dead letter failed");
        None
    })
}
