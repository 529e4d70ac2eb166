//! # vellum-forward
//!
//! Sink runners that forward committed audit events to the systems security teams use
//! (SPEC §8): HMAC-signed webhooks, syslog (RFC 5424 over TCP, TLS or UDP), Splunk HEC, OCSF
//! JSON and FHIR R4 `AuditEvent` bundles. The formats are pure functions in
//! `vellum_core::forward` (and `vellum_core::export` for FHIR); this crate reads the log,
//! sends, retries, keeps cursors and parks what cannot be delivered.
//!
//! ## Record flow
//!
//! ```text
//! store (committed log) ──scan_log──▶ tombstone? skip ──▶ filter? skip ──▶ batch (≤ batchSize)
//!        ▲                                                                 │
//!        │ meta: forward.<name>.cursor {logId: nextSeq}                    ▼
//!        └──────────── persisted after delivery ◀── ack ◀────────── sink transport
//!                                                      │ refused for good
//!                                                      ▼
//!                                         meta: forward.<name>.dead (dead letters)
//! ```
//!
//! - **Source.** Only committed events: the forwarder reads the store (`scan_log`), never the
//!   ingest queue, so an event is forwarded only after it is durable, and every deployment
//!   shape forwards the same bytes. Each sink runs as its own tokio task with its own cursor;
//!   a slow or failing sink delays no other sink and never the ingest path.
//! - **Cursor.** Per sink and per log, the next `seq` to forward, stored in the store's
//!   metadata under `forward.<name>.cursor` as `{"<logId>": nextSeq}`. A restart (or, with
//!   PostgreSQL, another node) resumes where it stopped. A new sink starts at `seq` 0 of every
//!   log (`start = "beginning"`, the default) or after what is committed when it first starts
//!   (`start = "now"`).
//! - **Polling.** Each log is read in `seq` order from its cursor, a batch at a time,
//!   immediately again while there is a backlog and every 250 ms when caught up. The list of
//!   logs (and the lag) comes from `log_heads()` every 5 s: on SQLite that call scans the
//!   whole `(log_id, seq)` index under the writer's lock, so it is not made on every poll; a
//!   new log is found within 5 s.
//! - **Skipped, cursor still advances:** tombstones (events purged by retention; their
//!   content is gone) and events the sink's [`SinkFilter`] does not pass.
//! - **Order.** Within a log, events are delivered in `seq` order, and a batch is not
//!   followed by the next until it is delivered or parked. Logs are independent.
//! - **What is sent.** The event as the API serves it (`StoredEvent::to_api_json`: the stored
//!   canonical object plus `hash` and `signature`): redactions are already applied, and
//!   values sealed for crypto-shredding travel as ciphertext (a forwarded copy cannot
//!   outlive an erasure in plaintext). A receiver can recompute the hash.
//! - **One forwarder per store.** Cursors live in the store, so exactly one process may run
//!   the sinks of a store (in the scale-out shape: one node, not every API node); two
//!   forwarders with the same sink names would both deliver everything and overwrite each
//!   other's cursor.
//!
//! ## Acknowledgement rules
//!
//! A batch is delivered when the sink acknowledges it:
//!
//! | sink | acknowledged when |
//! | --- | --- |
//! | webhook, Splunk HEC, OCSF | the receiver answers 2xx |
//! | FHIR | the server answers 2xx; in a `batch-response`, each entry with a 4xx status is refused (parked), any 5xx/429 entry makes the whole batch retry |
//! | syslog TCP/TLS | every byte of the batch was written to a connection that did not fail (and had not been closed by the receiver before the write). Syslog has no application-level acknowledgement: "delivered" means written to a socket that did not fail; bytes in flight when the receiver dies can be lost with the connection |
//! | syslog UDP | every datagram was handed to the kernel. UDP can lose messages silently (RFC 5426 §3.6): a UDP sink is *not* at-least-once; use TCP or TLS where every event matters |
//!
//! What a failure means:
//!
//! - **Transient** — connect errors, TLS errors, timeouts (`timeoutMs` per attempt), HTTP 408,
//!   425, 429 and 5xx, a syslog write error — and answers that are about the sink's setup
//!   rather than the events (401, 403, 404, 405, 407, 410, 411, 415, 421, 426, 431, 501, 505;
//!   HEC codes for a wrong index or channel): the *same* batch is retried, forever, after an
//!   exponential backoff with full jitter between `retryInitialMs` and `retryMaxMs` (and no
//!   sooner than a `Retry-After`, honoured up to an hour). The cursor does not move, so nothing
//!   is skipped and order is kept. A bad token therefore stops delivery (the sink's status
//!   reports it) instead of dead-lettering the log.
//! - **Permanent** — any other 4xx (400, 409, 413, 422, …): the receiver will never take at
//!   least one event of the batch. The batch is split in halves, recursively, to find the
//!   refused events (Splunk's `invalid-event-number` and FHIR's per-entry statuses name them
//!   directly); a single event refused for good is parked in the sink's **dead-letter store**
//!   (`forward.<name>.dead`, see [`dead_letters`]) with the reason, and the cursor moves past
//!   it. The dead letters of a batch are stored in one write, before the cursor that skips
//!   them is persisted. The dead-letter store keeps the newest 10 000 entries (reasons cut to
//!   512 bytes); older ones are dropped and counted (`forward.<name>.dead.dropped`). A
//!   receiver that refuses *every* event with a 400 therefore parks every event: its
//!   dead-letter count (status, metric) is the alarm.
//!
//! **At least once.** The cursor is persisted after delivered batches — at most every second
//! while a backlog drains (so that a replay of a large log does not add a durable metadata
//! write for every 100 events to the store's writer), and always when the sink catches up,
//! after a dead letter and at stop. A crash resends what was delivered after the last
//! persisted position (at most about a second's worth plus the batch in flight); a clean
//! [`Forwarder::stop`] lets the batch in flight finish (or its retry wait end early), persists
//! the cursor and resends nothing. Receivers should deduplicate by the event's `id` (or
//! `hash`), which every format carries.
//!
//! ## Sinks
//!
//! - **webhook** — `POST url`, body `{"events":[…]}` (canonical JSON,
//!   `vellum_core::forward::webhook`), `Content-Type: application/json`,
//!   `Vellum-Signature: t=<unix seconds>,v1=<HMAC-SHA256(secret, "<t>." + body)>`.
//! - **syslog** — RFC 5424 messages (`vellum_core::forward::syslog`): TCP and TLS (RFC 5425,
//!   tokio-rustls with the *ring* provider, trusting `caFile` or the system store) on one
//!   persistent connection with RFC 6587 octet counting, reconnecting after an error and
//!   resending the batch; UDP with one message per datagram (RFC 5426). Receivers must accept
//!   messages as large as the events (rsyslog: `global(maxMessageSize="64k")`).
//! - **splunk** — `POST {url}/services/collector/event`, `Authorization: Splunk <token>`,
//!   stacked HEC envelopes (`vellum_core::forward::splunk`), `host` = this host.
//! - **ocsf** — `POST url` with a JSON array of OCSF 1.1.0 events
//!   (`vellum_core::forward::ocsf`), optional `Authorization: Bearer <token>`.
//! - **fhir** — `POST` to the FHIR base URL of a `Bundle` of type `batch` whose entries are
//!   `POST AuditEvent` requests (the IHE BALP / RESTful ATNA feed), mapped by
//!   `vellum_core::export::fhir_audit_event`, `Content-Type: application/fhir+json`, optional
//!   bearer token. A resent batch creates the resources again (at least once).
//!
//! HTTP sinks use `vellum-http` (hyper 1, rustls/*ring*, the system trust store or `caFile`).
//!
//! ## Secrets
//!
//! The configuration names environment variables (`secretEnv`, `tokenEnv`); the values are
//! read once at [`Forwarder::start`], held in `zeroize::Zeroizing` buffers, sent in headers
//! marked sensitive, and never logged or shown by `Debug`. A missing variable is a start
//! error naming the setting, not the value.
//!
//! ## Metrics
//!
//! `vellum_forward_delivered_total{sink}`, `vellum_forward_retries_total{sink}`,
//! `vellum_forward_dead_letters_total{sink}` (counters) and `vellum_forward_lag_events{sink}`
//! (gauge), through the `metrics` facade; [`Forwarder::status`] gives the same per sink with
//! the cursor, the last error and whether the receiver is reachable.
//!
//! ## Configuration
//!
//! ```toml
//! [[forward.sinks]]
//! name = "soc-webhook"
//! type = "webhook"
//! url = "https://soc.example/hooks/vellum"
//! secretEnv = "VELLUM_SOC_WEBHOOK_SECRET"
//! filter = { alertsOnly = true }
//!
//! [[forward.sinks]]
//! name = "siem-syslog"
//! type = "syslog"
//! transport = "tls"                  # "tcp" | "tls" | "udp"
//! address = "siem.example:6514"
//! caFile = "/etc/vellum/siem-ca.pem"
//! start = "now"
//!
//! [[forward.sinks]]
//! name = "splunk"
//! type = "splunk"
//! url = "https://splunk.example:8088"
//! tokenEnv = "VELLUM_SPLUNK_HEC_TOKEN"
//! index = "audit"
//! filter = { classifications = ["PHI"], minSeverity = "medium" }
//! batchSize = 500
//!
//! [[forward.sinks]]
//! name = "security-lake"
//! type = "ocsf"
//! url = "https://lake.example/ingest/ocsf"
//! tokenEnv = "VELLUM_LAKE_TOKEN"
//!
//! [[forward.sinks]]
//! name = "arr"
//! type = "fhir"
//! url = "https://fhir.example/r4"
//! retryMaxMs = 300000
//! ```
//!
//! Common keys: `name` (`[a-z0-9_-]{1,64}`, unique; it keys the cursor and dead letters),
//! `type`, `filter` (`actions`, `classifications`, `minSeverity`, `alertsOnly`,
//! `organizations`), `start`, `batchSize` (100), `retryInitialMs` (500), `retryMaxMs`
//! (60 000), `timeoutMs` (10 000). Syslog also takes `serverName` (TLS name to verify;
//! default the address's host), `appName` (`vellum`), `facility` (13) and `enterpriseId`
//! (32473); Splunk `sourcetype` (`vellum:audit`); every HTTP sink an optional `caFile`.

mod config;
mod error;
mod runner;
mod sink;
mod state;
mod syslog;

pub use config::{
    DEFAULT_BATCH_SIZE, DEFAULT_RETRY_INITIAL_MS, DEFAULT_RETRY_MAX_MS, DEFAULT_TIMEOUT_MS,
    MAX_BATCH_SIZE, SinkConfig, SinkKind, StartAt, SyslogTransport, validate_sinks,
};
pub use error::ForwardError;
pub use runner::SinkStatus;
pub use sink::{SecretLookup, env_secret};
pub use state::{
    DeadLetter, MAX_DEAD_LETTERS, MAX_REASON_BYTES, dead_letters, dead_letters_dropped,
};
pub use vellum_core::forward::filter::SinkFilter;

use parking_lot::Mutex;
use runner::Runner;
use sink::Sink;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use vellum_store::AuditStore;

struct Running {
    status: Arc<Mutex<SinkStatus>>,
    task: JoinHandle<()>,
}

/// The running sinks: one tokio task each.
pub struct Forwarder {
    stop: watch::Sender<bool>,
    sinks: Vec<Running>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field(
                "sinks",
                &self
                    .sinks
                    .iter()
                    .map(|s| s.status.lock().name.clone())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Forwarder {
    /// Validates the sinks, reads their secrets and CA files, and starts one task per sink
    /// on the current tokio runtime. `hostname` names this machine in syslog headers, HEC
    /// `host` and the FHIR observer. Fails (starting nothing) on any configuration error,
    /// named by its field (`forward.sinks[2].secretEnv: environment variable … is not set`).
    pub fn start(
        store: Arc<dyn AuditStore>,
        sinks: Vec<SinkConfig>,
        hostname: String,
    ) -> Result<Self, ForwardError> {
        Self::start_with_secrets(store, sinks, hostname, &env_secret)
    }

    /// [`Forwarder::start`] with secrets looked up by `secrets(name)` instead of the process
    /// environment: for a secret manager, or for tests (Rust 2024 makes `set_var` unsafe).
    pub fn start_with_secrets(
        store: Arc<dyn AuditStore>,
        sinks: Vec<SinkConfig>,
        hostname: String,
        secrets: SecretLookup<'_>,
    ) -> Result<Self, ForwardError> {
        validate_sinks(&sinks)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ForwardError::Runtime("Forwarder::start must be called inside a tokio runtime".into())
        })?;
        let hostname = if hostname.trim().is_empty() {
            "-".to_owned()
        } else {
            hostname
        };
        // Build every transport first: a bad sink must not leave the others running.
        let mut built = Vec::with_capacity(sinks.len());
        for (i, config) in sinks.into_iter().enumerate() {
            let sink = {
                let _guard = runtime.enter();
                Sink::build(&config, &hostname, secrets).map_err(|e| e.at_sink(i))?
            };
            built.push((config, sink));
        }
        describe_metrics();
        let (stop, stop_rx) = watch::channel(false);
        let sinks = built
            .into_iter()
            .map(|(config, sink)| {
                let status = Arc::new(Mutex::new(SinkStatus::new(&config)));
                let runner = Runner::new(
                    config,
                    Arc::clone(&store),
                    sink,
                    Arc::clone(&status),
                    stop_rx.clone(),
                );
                Running {
                    status,
                    task: runtime.spawn(runner.run()),
                }
            })
            .collect();
        Ok(Self { stop, sinks })
    }

    /// Stops every sink: each finishes the attempt in flight (a retry wait ends at once),
    /// persists its cursor and closes its connection. Returns when all have stopped.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for sink in self.sinks {
            if let Err(e) = sink.task.await {
                tracing::error!(error = %e, "forwarder sink task failed");
            }
        }
    }

    /// Every sink's state, in configuration order.
    pub fn status(&self) -> Vec<SinkStatus> {
        self.sinks
            .iter()
            .map(|s| {
                let mut status = s.status.lock().clone();
                status.running = status.running && !s.task.is_finished();
                status
            })
            .collect()
    }
}

fn describe_metrics() {
    metrics::describe_counter!(
        "vellum_forward_delivered_total",
        "Events delivered to a forwarding sink"
    );
    metrics::describe_counter!(
        "vellum_forward_retries_total",
        "Failed delivery attempts of a forwarding sink that are retried"
    );
    metrics::describe_counter!(
        "vellum_forward_dead_letters_total",
        "Events a forwarding sink refused for good, parked as dead letters"
    );
    metrics::describe_gauge!(
        "vellum_forward_lag_events",
        "Committed events a forwarding sink has not forwarded yet"
    );
}
