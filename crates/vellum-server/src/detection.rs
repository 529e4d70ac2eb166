//! The detection thread: runs the SPEC §8 rules ([`vellum_core::detect::Engine`]) on every
//! committed event and appends the alerts they raise.
//!
//! ## Event flow
//!
//! ```text
//! writer ──commit──▶ CommitTap (bounded, try_send) ──▶ detection thread ──observe──▶ Engine
//!                                                             │  ▲                    │
//!                                   gap (dropped announcement, │  │ scan_log           │ alerts
//!                                   restart): read the store ──┘  └── store            ▼
//!                                                     pipeline.prepare ─▶ writer (like any event)
//! ```
//!
//! - **Never in the way of a commit.** The writer announces each commit with `try_send`; when
//!   this thread falls behind the announcement is dropped (and counted), and the thread, which
//!   knows the last `seq` it observed per log, reads the missing events from the store before
//!   it goes on. Every committed event is therefore observed exactly once, in log order.
//! - **State survives a restart.** The engine's snapshot (windows, known locations, source
//!   rates, cooldowns, per-log positions) and the alerts not yet appended are written to
//!   `<data-dir>/detection-state.json` (mode 0600, write-to-temporary + fsync + rename) every
//!   30 s and at shutdown. At start the snapshot is restored and every log replayed from its
//!   position to its head; a log the snapshot does not know (first start with detection on an
//!   existing store) is replayed over its last [`REPLAY_LIMIT`] events only, which covers the
//!   rules' windows at any realistic rate without reading years of history.
//! - **Alerts are audit events.** Each alert goes through the pipeline and the writer as
//!   `security.alert.<rule>`; its idempotency key is derived from the rule, the triggering
//!   event ids and the time, so an alert raised again after a crash (its triggering events
//!   replayed because the snapshot was older than the alert) returns the first receipt instead
//!   of appending a duplicate (within the server's 24 h idempotency window).
//! - **Invariant: an alert is durable once committed, and a crash loses no alert** whose
//!   triggering events were committed: either the snapshot holds it as pending, or its events
//!   are after the snapshot's position and are replayed.

use crate::ingest::{CommitTap, CommittedEvent, IngestHandle, Submission};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use vellum_core::detect::{Alert, DetectionConfig, Engine, EngineSnapshot, ObservedEvent};
use vellum_core::pipeline::Pipeline;
use vellum_store::AuditStore;

/// File in the data directory holding the engine's state between runs.
pub const STATE_FILE: &str = "detection-state.json";

/// Events replayed from a log the saved state does not know (the newest ones).
pub const REPLAY_LIMIT: u64 = 200_000;

/// Commit announcements that may wait for the thread (each one batch of events).
const TAP_BATCHES: usize = 1_024;

/// How often the time-driven rule (`silent_source`) runs.
const TICK_EVERY: Duration = Duration::from_secs(5);

/// How often the state is saved while running.
const SAVE_EVERY: Duration = Duration::from_secs(30);

/// Alerts kept for a retry when the writer refuses them (overloaded, stopping); beyond it the
/// oldest are dropped and counted.
const MAX_PENDING: usize = 1_000;

/// Events read from the store per call while catching up.
const SCAN_PAGE: usize = 1_000;

/// What the detection thread needs.
pub struct DetectorParts {
    /// The rules' settings (already validated).
    pub config: DetectionConfig,
    /// Where events are read when catching up.
    pub store: Arc<dyn AuditStore>,
    /// The pipeline alerts go through (validation, redaction), like any event.
    pub pipeline: Arc<Pipeline>,
    /// Where alerts are appended.
    pub alerts: AlertDestination,
    /// Which logs this detector watches (a worker: the logs of its partitions); `None`: all.
    pub logs: Option<LogFilter>,
    /// The runtime the (async) submission runs on.
    pub runtime: tokio::runtime::Handle,
    /// The data directory ([`STATE_FILE`] lives there).
    pub data_dir: PathBuf,
}

/// Whether a log is one this detector watches.
pub type LogFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Where a detector appends its alerts.
#[derive(Clone)]
pub enum AlertDestination {
    /// The in-process writer (embedded, single PostgreSQL node): an alert is handed over when
    /// it is committed.
    Writer(IngestHandle),
    /// The queue (a scale-out worker): the alert's log may belong to another worker's
    /// partition, so it goes the way an API node's events go, and is handed over when Redis
    /// holds it.
    Queue(Arc<crate::scaleout::QueueIngest>),
}

/// The running detection thread.
pub struct Detector {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What is saved between runs.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SavedState {
    engine: EngineSnapshot,
    /// Alerts raised but not yet appended.
    #[serde(default)]
    pending: Vec<Alert>,
}

impl Detector {
    /// The announcement channel the writer is given ([`crate::ingest::WriterConfig::commit_tap`])
    /// and its receiving end, for [`Detector::start`].
    pub fn tap() -> (CommitTap, Receiver<Vec<CommittedEvent>>) {
        CommitTap::bounded(TAP_BATCHES)
    }

    /// Starts the thread: restores the saved state, catches up with the store, then observes
    /// what `announcements` brings. Returns at once; catching up happens on the thread.
    pub fn start(
        parts: DetectorParts,
        announcements: Receiver<Vec<CommittedEvent>>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vellum-detection".into())
            .spawn(move || {
                let mut worker = Worker::new(parts);
                worker.run(&announcements, &thread_stop);
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread after it observed what was already announced, appended the alerts it
    /// could, and saved its state. Call before the writer is joined: the thread holds an
    /// ingest handle.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the detection thread panicked");
        }
    }
}

impl Drop for Detector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

struct Worker {
    parts: DetectorParts,
    engine: Engine,
    pending: VecDeque<Alert>,
    state_file: PathBuf,
}

impl Worker {
    fn new(parts: DetectorParts) -> Self {
        let state_file = parts.data_dir.join(STATE_FILE);
        let saved = load_state(&state_file);
        let (engine, pending) = match saved {
            Some(saved) => (
                Engine::restore(parts.config.clone(), saved.engine),
                saved.pending.into(),
            ),
            None => (Engine::new(parts.config.clone()), VecDeque::new()),
        };
        Self {
            parts,
            engine,
            pending,
            state_file,
        }
    }

    fn run(&mut self, announcements: &Receiver<Vec<CommittedEvent>>, stop: &AtomicBool) {
        if let Err(e) = self.catch_up_all() {
            tracing::warn!(error = %e, "detection could not read the store at start; it will catch up with the next commits");
        }
        self.flush_alerts();
        let mut last_tick = Instant::now() - TICK_EVERY;
        let mut last_save = Instant::now();
        loop {
            if stop.load(Ordering::SeqCst) {
                // What was committed before the stop is observed before the state is saved.
                while let Ok(batch) = announcements.try_recv() {
                    self.observe_committed(batch);
                }
                self.flush_alerts();
                self.save();
                return;
            }
            let until_tick = TICK_EVERY.saturating_sub(last_tick.elapsed());
            match announcements.recv_timeout(until_tick.min(Duration::from_millis(250))) {
                Ok(batch) => self.observe_committed(batch),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush_alerts();
                    self.save();
                    return;
                }
            }
            if last_tick.elapsed() >= TICK_EVERY {
                last_tick = Instant::now();
                let now = vellum_core::time_fmt::unix_micros(time::OffsetDateTime::now_utc());
                let alerts = self.engine.tick(now);
                self.queue(alerts);
            }
            self.flush_alerts();
            if last_save.elapsed() >= SAVE_EVERY {
                last_save = Instant::now();
                self.save();
            }
            metrics::gauge!("vellum_detection_tracked_keys").set(self.engine.tracked_keys() as f64);
        }
    }

    /// Replays every log from the engine's position to its head.
    fn catch_up_all(&mut self) -> Result<(), vellum_store::StoreError> {
        let heads = self.parts.store.log_heads()?;
        for head in heads {
            if head.size == 0 || !self.watches(&head.log_id) {
                continue;
            }
            // At most the newest REPLAY_LIMIT events: a log never seen, or one another worker
            // wrote for a long time since this one last did.
            let newest = head.size.saturating_sub(REPLAY_LIMIT);
            let from = match self.engine.position(&head.log_id) {
                Some(position) => (position + 1).max(newest),
                None => newest,
            };
            self.replay(&head.log_id, from, head.size)?;
        }
        Ok(())
    }

    /// Observes the events of `log_id` with `from <= seq < to` from the store.
    fn replay(&mut self, log_id: &str, from: u64, to: u64) -> Result<(), vellum_store::StoreError> {
        let mut next = from;
        while next < to {
            let limit = usize::try_from(to - next)
                .unwrap_or(usize::MAX)
                .min(SCAN_PAGE);
            let page = self.parts.store.scan_log(log_id, next, limit)?;
            let Some(last) = page.last() else {
                break;
            };
            next = last.seq + 1;
            for event in &page {
                self.observe_text(&event.canonical);
            }
            metrics::counter!("vellum_detection_replayed_events_total")
                .increment(page.len() as u64);
        }
        Ok(())
    }

    /// Observes one announced commit, first reading from the store whatever the engine missed
    /// before it in each log.
    fn observe_committed(&mut self, batch: Vec<CommittedEvent>) {
        for event in batch {
            if !self.watches(&event.log_id) {
                continue;
            }
            let expected = self.engine.position(&event.log_id).map(|p| p + 1);
            if let Some(expected) = expected
                && event.seq > expected
                && let Err(e) = self.replay(&event.log_id, expected, event.seq)
            {
                // The engine stays behind; the next announcement tries again.
                tracing::warn!(error = %e, log = %event.log_id, "detection could not read a gap from the store");
                return;
            }
            self.observe_text(&event.canonical);
        }
    }

    fn watches(&self, log_id: &str) -> bool {
        self.parts.logs.as_ref().is_none_or(|watch| watch(log_id))
    }

    fn observe_text(&mut self, canonical: &str) {
        let Some(observed) = ObservedEvent::from_stored_text(canonical) else {
            return;
        };
        metrics::counter!("vellum_detection_events_total").increment(1);
        let alerts = self.engine.observe(&observed);
        self.queue(alerts);
    }

    fn queue(&mut self, alerts: Vec<Alert>) {
        for alert in alerts {
            metrics::counter!("vellum_detection_alerts_total", "rule" => alert.rule.as_str())
                .increment(1);
            tracing::warn!(rule = %alert.rule, description = %alert.description, "security alert");
            if self.pending.len() >= MAX_PENDING {
                self.pending.pop_front();
                metrics::counter!("vellum_detection_alerts_dropped_total").increment(1);
                tracing::error!("too many alerts waiting to be appended; the oldest was dropped");
            }
            self.pending.push_back(alert);
        }
    }

    /// Appends the pending alerts; those the writer refuses stay pending for the next turn.
    fn flush_alerts(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let now = time::OffsetDateTime::now_utc();
        let mut submissions = Vec::with_capacity(self.pending.len());
        let mut invalid = 0usize;
        for alert in &self.pending {
            match self.parts.pipeline.prepare(alert.to_event(), 0, now) {
                Ok(event) => submissions.push(Submission {
                    event,
                    idempotency_key: Some(alert_idempotency_key(alert)),
                    id: None,
                }),
                Err(errors) => {
                    // A configuration whose validation refuses alert events (a tiny size
                    // limit, say): the alert cannot be recorded; say so loudly.
                    invalid += 1;
                    tracing::error!(rule = %alert.rule, ?errors, "an alert event was refused by validation");
                }
            }
        }
        if invalid > 0 {
            metrics::counter!("vellum_detection_alerts_dropped_total").increment(invalid as u64);
        }
        if submissions.is_empty() {
            self.pending.clear();
            return;
        }
        let destination = self.parts.alerts.clone();
        let handed_over = self.parts.runtime.block_on(async move {
            match destination {
                AlertDestination::Writer(ingest) => match ingest.submit(submissions).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
                AlertDestination::Queue(queue) => queue
                    .enqueue(&submissions, vellum_queue::Lane::High, false, false)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            }
        });
        match handed_over {
            Ok(()) => self.pending.clear(),
            Err(e) => tracing::warn!(error = %e, "appending alerts failed; retrying"),
        }
    }

    fn save(&self) {
        let saved = SavedState {
            engine: self.engine.snapshot(),
            pending: self.pending.iter().cloned().collect(),
        };
        if let Err(e) = save_state(&self.state_file, &saved) {
            tracing::warn!(error = %e, file = %self.state_file.display(), "saving the detection state failed");
        }
    }
}

/// The idempotency key of an alert: the same alert raised twice (replay after a crash) maps to
/// the same key, so the server answers the second with the first receipt.
fn alert_idempotency_key(alert: &Alert) -> String {
    let mut hasher = Sha256::new();
    hasher.update(alert.rule.as_str().as_bytes());
    hasher.update([0]);
    for id in &alert.triggering_event_ids {
        hasher.update(id.as_bytes());
        hasher.update([0]);
    }
    hasher.update(alert.window_end_micros.to_be_bytes());
    format!("vellum:detection:{}", hex::encode(hasher.finalize()))
}

fn load_state(path: &Path) -> Option<SavedState> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(error = %e, file = %path.display(), "the detection state is unreadable; starting afresh");
            return None;
        }
    };
    match serde_json::from_str(&text) {
        Ok(saved) => Some(saved),
        Err(e) => {
            tracing::warn!(error = %e, file = %path.display(), "the detection state is damaged; starting afresh");
            None
        }
    }
}

/// Writes the state atomically: a temporary file (0600), fsync, rename, fsync of the directory.
fn save_state(path: &Path, saved: &SavedState) -> std::io::Result<()> {
    use std::io::Write;
    let text = serde_json::to_vec(saved).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(true).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(&text)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vellum_core::detect::RuleId;

    fn alert(ids: &[&str], end: i64) -> Alert {
        Alert {
            rule: RuleId::FailedLogins,
            severity: RuleId::FailedLogins.severity(),
            principal_id: Some("p".into()),
            organization_id: None,
            description: "d".into(),
            triggering_event_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
            window_start_micros: 0,
            window_end_micros: end,
            details: serde_json::Map::new(),
            at_micros: end,
        }
    }

    #[test]
    fn the_same_alert_gets_the_same_key_and_another_does_not() {
        let a = alert_idempotency_key(&alert(&["a", "b"], 5));
        assert_eq!(a, alert_idempotency_key(&alert(&["a", "b"], 5)));
        assert_ne!(a, alert_idempotency_key(&alert(&["a", "b"], 6)));
        assert_ne!(a, alert_idempotency_key(&alert(&["ab"], 5)));
        assert!(a.len() <= 255 && a.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    }

    #[test]
    fn state_round_trips_with_mode_0600_and_damage_starts_afresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(STATE_FILE);
        assert!(load_state(&path).is_none());
        let saved = SavedState {
            engine: Engine::new(DetectionConfig::default()).snapshot(),
            pending: vec![alert(&["x"], 1)],
        };
        save_state(&path, &saved).expect("saved");
        let loaded = load_state(&path).expect("loads");
        assert_eq!(loaded.pending, saved.pending);
        assert_eq!(loaded.engine, saved.engine);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, b"{not json").expect("damage");
        assert!(load_state(&path).is_none());
    }
}
