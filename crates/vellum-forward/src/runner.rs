//! One sink's delivery loop (the record flow and acknowledgement rules are in the crate docs).

use crate::config::{SinkConfig, StartAt};
use crate::error::ForwardError;
use crate::sink::{SendError, Sink};
use crate::state::{self, Cursor, DeadLetter};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use vellum_core::retention::Tombstone;
use vellum_store::AuditStore;

/// How long an idle sink waits before looking for new events again.
pub(crate) const IDLE_POLL: Duration = Duration::from_millis(250);
/// How often the log heads (the list of logs, and the lag) are read. Not every poll: on
/// SQLite `log_heads` scans the whole `(log_id, seq)` index under the writer's lock; new
/// events of known logs are found with `scan_log` (an index seek on a reader connection).
pub(crate) const HEADS_EVERY: Duration = Duration::from_secs(5);
/// Longest time a delivered position stays unpersisted while a backlog drains (it is always
/// persisted when the sink catches up, after a dead letter, and at stop).
pub(crate) const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Most events examined per batch when the filter skips most of them.
const MAX_SCAN_PER_BATCH: usize = 20_000;
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What one sink is doing, for `/readyz`, metrics and operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkStatus {
    /// The sink's name.
    pub name: String,
    /// Its `type` (`webhook`, `syslog`, `splunk`, `ocsf`, `fhir`).
    pub kind: String,
    /// Per log, the next `seq` to forward.
    pub cursor: BTreeMap<String, u64>,
    /// Events committed but not yet forwarded (from the last look at the log heads, at most
    /// a few seconds old).
    pub lag: u64,
    /// Events delivered since start.
    pub delivered: u64,
    /// Failed attempts that will be (or were) retried, since start.
    pub retries: u64,
    /// Dead letters stored for this sink (including any dropped to respect the cap).
    pub dead_letters: u64,
    /// Attempts in a row that failed and are being retried; 0 when the last attempt worked.
    pub consecutive_failures: u32,
    /// The last failure (never contains a secret).
    pub last_error: Option<String>,
    /// When it happened (RFC 3339).
    pub last_error_at: Option<String>,
    /// When events were last delivered (RFC 3339).
    pub last_delivery_at: Option<String>,
    /// Whether the last attempt reached the receiver.
    pub connected: bool,
    /// Whether the sink's task is running.
    pub running: bool,
}

impl SinkStatus {
    pub(crate) fn new(config: &SinkConfig) -> Self {
        Self {
            name: config.name.clone(),
            kind: config.kind.type_name().to_owned(),
            cursor: BTreeMap::new(),
            lag: 0,
            delivered: 0,
            retries: 0,
            dead_letters: 0,
            consecutive_failures: 0,
            last_error: None,
            last_error_at: None,
            last_delivery_at: None,
            connected: false,
            running: true,
        }
    }

    /// Healthy: running and not stuck retrying.
    pub fn is_healthy(&self) -> bool {
        self.running && self.consecutive_failures == 0
    }
}

/// One event ready to send.
struct Batch {
    seqs: Vec<u64>,
    ids: Vec<Option<String>>,
    events: Vec<Value>,
    /// The next `seq` after everything this batch examined (including skipped events).
    consumed_to: u64,
}

pub(crate) struct Runner {
    config: SinkConfig,
    store: Arc<dyn AuditStore>,
    sink: Sink,
    status: Arc<Mutex<SinkStatus>>,
    stop: watch::Receiver<bool>,
    cursor: Cursor,
    heads: BTreeMap<String, u64>,
    heads_read: Option<Instant>,
    dirty: bool,
    saved: Instant,
    attempt: u32,
}

fn now_text() -> String {
    vellum_core::time_fmt::format_server_time(time::OffsetDateTime::now_utc())
}

/// Runs a store call on the blocking pool.
async fn blocking<T: Send + 'static>(
    store: &Arc<dyn AuditStore>,
    f: impl FnOnce(&dyn AuditStore) -> Result<T, ForwardError> + Send + 'static,
) -> Result<T, ForwardError> {
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || f(&*store))
        .await
        .map_err(|e| ForwardError::Runtime(format!("store task: {e}")))?
}

/// Exponential backoff with full jitter: a uniform delay in `[0, min(max, initial·2^n)]`
/// (at least 1 ms), but never shorter than the receiver's `Retry-After` (honoured up to an
/// hour).
pub(crate) fn backoff(
    attempt: u32,
    initial_ms: u64,
    max_ms: u64,
    retry_after: Option<Duration>,
) -> Duration {
    let ceiling = initial_ms
        .saturating_mul(1u64 << attempt.min(40))
        .min(max_ms)
        .max(1);
    let wait = Duration::from_millis(fastrand::u64(1..=ceiling));
    match retry_after {
        Some(asked) => wait.max(asked.min(MAX_RETRY_AFTER)),
        None => wait,
    }
}

impl Runner {
    pub(crate) fn new(
        config: SinkConfig,
        store: Arc<dyn AuditStore>,
        sink: Sink,
        status: Arc<Mutex<SinkStatus>>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            config,
            store,
            sink,
            status,
            stop,
            cursor: Cursor::new(),
            heads: BTreeMap::new(),
            heads_read: None,
            dirty: false,
            saved: Instant::now(),
            attempt: 0,
        }
    }

    fn name(&self) -> String {
        self.config.name.clone()
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow() || self.stop.has_changed().is_err()
    }

    /// Sleeps `wait`, or less when asked to stop; true when stopping.
    async fn pause(&mut self, wait: Duration) -> bool {
        if self.stopping() {
            return true;
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => self.stopping(),
            changed = self.stop.changed() => changed.is_err() || *self.stop.borrow(),
        }
    }

    fn record_error(&mut self, reason: &str) {
        let mut status = self.status.lock();
        status.last_error = Some(reason.to_owned());
        status.last_error_at = Some(now_text());
    }

    /// A store failure outside delivery: report it and wait (backoff); true when stopping.
    async fn store_trouble(&mut self, error: &ForwardError) -> bool {
        tracing::warn!(sink = %self.config.name, error = %error, "forwarder store access failed; retrying");
        self.record_error(&error.to_string());
        let wait = backoff(
            self.attempt,
            self.config.retry_initial_ms,
            self.config.retry_max_ms,
            None,
        );
        self.attempt = self.attempt.saturating_add(1);
        self.pause(wait).await
    }

    pub(crate) async fn run(mut self) {
        let name = self.name();
        tracing::info!(sink = %name, kind = self.config.kind.type_name(), "forwarder sink started");
        if self.load().await {
            self.drive().await;
        }
        self.save(true).await;
        self.sink.close().await;
        self.status.lock().running = false;
        tracing::info!(sink = %name, "forwarder sink stopped");
    }

    /// Loads the cursor (or sets it for a new sink); false when stopped first.
    async fn load(&mut self) -> bool {
        loop {
            let name = self.name();
            let start = self.config.start;
            let loaded = blocking(&self.store, move |store| {
                let dead = state::dead_letters(store, &name)?.len() as u64
                    + state::dead_letters_dropped(store, &name)?;
                let cursor = match state::load_cursor(store, &name)? {
                    Some(cursor) => cursor,
                    None => {
                        let cursor: Cursor = match start {
                            StartAt::Beginning => Cursor::new(),
                            StartAt::Now => store
                                .log_heads()?
                                .into_iter()
                                .map(|h| (h.log_id, h.size))
                                .collect(),
                        };
                        state::save_cursor(store, &name, &cursor)?;
                        cursor
                    }
                };
                Ok((cursor, dead))
            })
            .await;
            match loaded {
                Ok((cursor, dead)) => {
                    self.cursor = cursor;
                    self.attempt = 0;
                    let mut status = self.status.lock();
                    status.cursor = self.cursor.clone();
                    status.dead_letters = dead;
                    return true;
                }
                Err(e) => {
                    if self.store_trouble(&e).await {
                        return false;
                    }
                }
            }
        }
    }

    async fn refresh_heads(&mut self) -> Result<(), ForwardError> {
        let heads = blocking(&self.store, |store| Ok(store.log_heads()?)).await?;
        for head in heads {
            let known = self.heads.entry(head.log_id).or_insert(0);
            *known = (*known).max(head.size);
        }
        self.heads_read = Some(Instant::now());
        self.publish_lag();
        Ok(())
    }

    fn publish_lag(&self) {
        let lag: u64 = self
            .heads
            .iter()
            .map(|(log, size)| size.saturating_sub(self.cursor.get(log).copied().unwrap_or(0)))
            .sum();
        metrics::gauge!("vellum_forward_lag_events", "sink" => self.config.name.clone())
            .set(lag as f64);
        self.status.lock().lag = lag;
    }

    async fn drive(&mut self) {
        loop {
            if self.stopping() {
                return;
            }
            if self.heads_read.is_none_or(|at| at.elapsed() >= HEADS_EVERY)
                && let Err(e) = self.refresh_heads().await
            {
                if self.store_trouble(&e).await {
                    return;
                }
                continue;
            }
            let logs: Vec<String> = self
                .heads
                .keys()
                .chain(self.cursor.keys())
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let mut backlog = false;
            for log in logs {
                if self.stopping() {
                    return;
                }
                let from = self.cursor.get(&log).copied().unwrap_or(0);
                let batch = match self.next_batch(&log, from).await {
                    Ok(batch) => batch,
                    Err(e) => {
                        if self.store_trouble(&e).await {
                            return;
                        }
                        backlog = true;
                        continue;
                    }
                };
                let Some(batch) = batch else { continue };
                backlog = true;
                let consumed_to = batch.consumed_to;
                if !self.deliver(&log, batch).await {
                    return;
                }
                self.advance(&log, consumed_to);
                let head = self.heads.entry(log).or_insert(0);
                *head = (*head).max(consumed_to);
            }
            self.publish_lag();
            self.save(!backlog).await;
            if !backlog && self.pause(IDLE_POLL).await {
                return;
            }
        }
    }

    /// The next batch of a log from `from`: events that pass the filter, at most
    /// `batchSize`, skipping tombstones. `None` when the log has nothing at or after `from`.
    async fn next_batch(&self, log: &str, from: u64) -> Result<Option<Batch>, ForwardError> {
        let limit = self.config.batch_size;
        let mut batch = Batch {
            seqs: Vec::new(),
            ids: Vec::new(),
            events: Vec::new(),
            consumed_to: from,
        };
        let mut examined = 0usize;
        // Read a batch's worth first; when the filter skips events, read wider pages.
        let mut page = limit;
        loop {
            let (log_id, next) = (log.to_owned(), batch.consumed_to);
            let rows = blocking(&self.store, move |store| {
                Ok(store.scan_log(&log_id, next, page)?)
            })
            .await?;
            if rows.is_empty() {
                break;
            }
            let full = rows.len() == page;
            page = (page * 2).min(limit.max(1_000));
            for row in rows {
                examined += 1;
                batch.consumed_to = row.seq + 1;
                if Tombstone::from_body(&row.canonical).is_some() {
                    continue;
                }
                let event: Value = match serde_json::from_str(&row.to_api_json()) {
                    Ok(event) => event,
                    Err(e) => {
                        // Not forwardable, and `vellum verify` will report it; do not stall.
                        tracing::error!(sink = %self.config.name, log, seq = row.seq, error = %e, "stored event does not parse; skipped");
                        continue;
                    }
                };
                if !self.config.filter.matches(&event) {
                    continue;
                }
                batch.seqs.push(row.seq);
                batch
                    .ids
                    .push(event.get("id").and_then(Value::as_str).map(str::to_owned));
                batch.events.push(event);
                if batch.events.len() == limit {
                    return Ok(Some(batch));
                }
            }
            if !full || examined >= MAX_SCAN_PER_BATCH {
                break;
            }
        }
        Ok((batch.consumed_to > from).then_some(batch))
    }

    fn advance(&mut self, log: &str, next: u64) {
        let entry = self.cursor.entry(log.to_owned()).or_insert(0);
        if next > *entry {
            *entry = next;
            self.dirty = true;
            self.status.lock().cursor.insert(log.to_owned(), next);
        }
    }

    /// Persists the cursor if it moved, at most every [`SAVE_EVERY`] unless `now`.
    async fn save(&mut self, now: bool) {
        if !self.dirty || (!now && self.saved.elapsed() < SAVE_EVERY) {
            return;
        }
        let (name, cursor) = (self.name(), self.cursor.clone());
        match blocking(&self.store, move |store| {
            state::save_cursor(store, &name, &cursor)
        })
        .await
        {
            Ok(()) => {
                self.dirty = false;
                self.saved = Instant::now();
            }
            Err(e) => {
                // Kept dirty: the next save tries again; a crash meanwhile resends (at least once).
                tracing::warn!(sink = %self.config.name, error = %e, "saving the forwarder cursor failed");
                self.record_error(&format!("saving the cursor: {e}"));
            }
        }
    }

    fn delivered(&mut self, log: &str, batch: &Batch, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        self.advance(log, batch.seqs[range.end - 1] + 1);
        self.count_delivered(range.len() as u64);
    }

    fn count_delivered(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        metrics::counter!("vellum_forward_delivered_total", "sink" => self.config.name.clone())
            .increment(n);
        let mut status = self.status.lock();
        status.delivered += n;
        status.last_delivery_at = Some(now_text());
        status.consecutive_failures = 0;
        status.connected = true;
    }

    /// Parks refused events (retrying the store until it works or the sink stops); false
    /// when stopping before they were stored.
    async fn dead_letter(
        &mut self,
        log: &str,
        batch: &Batch,
        refused: Vec<(usize, String)>,
    ) -> bool {
        let at = now_text();
        let letters: Vec<DeadLetter> = refused
            .iter()
            .map(|(i, reason)| DeadLetter {
                log_id: log.to_owned(),
                seq: batch.seqs[*i],
                event_id: batch.ids[*i].clone(),
                reason: reason.clone(),
                at: at.clone(),
            })
            .collect();
        for letter in &letters {
            tracing::warn!(sink = %self.config.name, log, seq = letter.seq, event_id = ?letter.event_id, reason = %letter.reason, "event refused by the sink; parked as a dead letter");
        }
        loop {
            let (name, letters) = (self.name(), letters.clone());
            match blocking(&self.store, move |store| {
                state::push_dead_letters(store, &name, letters)
            })
            .await
            {
                Ok(added) => {
                    metrics::counter!("vellum_forward_dead_letters_total", "sink" => self.config.name.clone())
                        .increment(added as u64);
                    let mut status = self.status.lock();
                    status.dead_letters += added as u64;
                    status.last_error = refused.last().map(|(_, r)| format!("dead letter: {r}"));
                    status.last_error_at = Some(at);
                    return true;
                }
                Err(e) => {
                    if self.store_trouble(&e).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Delivers a batch: retries transient failures (same events, same order) until they
    /// pass or the sink stops; splits a refused request to find the refused events and parks
    /// them (one write of the dead-letter store per batch). False when stopping with part of
    /// the batch undelivered (the cursor covers what was delivered or parked).
    async fn deliver(&mut self, log: &str, batch: Batch) -> bool {
        if batch.events.is_empty() {
            // Everything examined was filtered out or a tombstone: nothing to send.
            return true;
        }
        let mut refused = Vec::new();
        let completed = self.send_all(log, &batch, &mut refused).await;
        if refused.is_empty() {
            return completed;
        }
        let first = refused.iter().map(|(i, _)| batch.seqs[*i]).min();
        if !self.dead_letter(log, &batch, refused).await {
            // Stopping before the dead letters were stored: move the cursor back to the
            // first of them, so that they are tried (and parked) again after the restart.
            if let Some(first) = first {
                self.rewind(log, first);
            }
            return false;
        }
        if completed {
            // A dead letter is stored; make the cursor that skips it durable too.
            self.save(true).await;
        }
        completed
    }

    fn rewind(&mut self, log: &str, next: u64) {
        let entry = self.cursor.entry(log.to_owned()).or_insert(0);
        if next < *entry {
            *entry = next;
            self.dirty = true;
            self.status.lock().cursor.insert(log.to_owned(), next);
        }
    }

    /// The sending part of [`Runner::deliver`]: events refused for good are added to
    /// `refused` (positions in the batch) and the cursor moves past them in memory.
    async fn send_all(
        &mut self,
        log: &str,
        batch: &Batch,
        refused: &mut Vec<(usize, String)>,
    ) -> bool {
        let mut pending: VecDeque<Range<usize>> = VecDeque::new();
        pending.push_back(0..batch.events.len());
        while let Some(range) = pending.pop_front() {
            let result = self.sink.send(&batch.events[range.clone()]).await;
            self.status.lock().connected = self.sink.connected();
            match result {
                Ok(()) => {
                    self.attempt = 0;
                    self.delivered(log, batch, range);
                }
                Err(SendError::Transient {
                    reason,
                    retry_after,
                }) => {
                    tracing::warn!(sink = %self.config.name, log, events = range.len(), attempt = self.attempt, reason = %reason, "delivery failed; retrying");
                    metrics::counter!("vellum_forward_retries_total", "sink" => self.config.name.clone())
                        .increment(1);
                    {
                        let mut status = self.status.lock();
                        status.retries += 1;
                        status.consecutive_failures = status.consecutive_failures.saturating_add(1);
                    }
                    self.record_error(&reason);
                    let wait = backoff(
                        self.attempt,
                        self.config.retry_initial_ms,
                        self.config.retry_max_ms,
                        retry_after,
                    );
                    self.attempt = self.attempt.saturating_add(1);
                    pending.push_front(range);
                    if self.pause(wait).await {
                        return false;
                    }
                }
                Err(SendError::Refused { reason }) => {
                    self.attempt = 0;
                    if range.len() == 1 {
                        refused.push((range.start, reason));
                        self.advance(log, batch.seqs[range.start] + 1);
                    } else {
                        let mid = range.start + range.len() / 2;
                        pending.push_front(mid..range.end);
                        pending.push_front(range.start..mid);
                    }
                }
                Err(SendError::RefusedAt { index, reason }) => {
                    self.attempt = 0;
                    let index = range.start + index.min(range.len() - 1);
                    self.delivered(log, batch, range.start..index);
                    refused.push((index, reason));
                    self.advance(log, batch.seqs[index] + 1);
                    if index + 1 < range.end {
                        pending.push_front(index + 1..range.end);
                    }
                }
                Err(SendError::RefusedSome { refused: some }) => {
                    self.attempt = 0;
                    let some: Vec<(usize, String)> = some
                        .into_iter()
                        .filter(|(i, _)| *i < range.len())
                        .map(|(i, r)| (range.start + i, r))
                        .collect();
                    let taken = (range.len() - some.len()) as u64;
                    refused.extend(some);
                    self.count_delivered(taken);
                    self.advance(log, batch.seqs[range.end - 1] + 1);
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_within_bounds_and_honours_retry_after() {
        for attempt in 0..50 {
            let wait = backoff(attempt, 500, 60_000, None);
            let ceiling = (500u64 << attempt.min(40)).min(60_000);
            assert!(wait >= Duration::from_millis(1));
            assert!(
                wait <= Duration::from_millis(ceiling),
                "{attempt}: {wait:?}"
            );
        }
        let asked = backoff(0, 500, 60_000, Some(Duration::from_secs(30)));
        assert!(asked >= Duration::from_secs(30));
        let capped = backoff(0, 500, 60_000, Some(Duration::from_secs(86_400)));
        assert_eq!(capped, MAX_RETRY_AFTER);
    }
}
