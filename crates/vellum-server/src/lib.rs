//! # vellum-server
//!
//! The HTTP face of Vellum (axum): authentication, the ingest pipeline with group commit
//! ([`ingest`]), search and lookup, health, metrics and the OpenAPI document.
//!
//! [`start`] wires a data directory into a running server: it opens the store, loads (or
//! creates) the HMAC secret and the bootstrap admin key, starts the writer thread, and serves
//! until told to stop, then drains: in-flight requests finish, the writer commits what it was
//! given, the indexer stops.

pub mod alerts;
pub mod api;
pub mod auth;
pub mod bootstrap;
pub mod config;
pub mod console;
pub mod detection;
pub mod error;
pub mod export;
pub mod ingest;
pub mod keys;
pub mod outbox;
pub mod pdf;
pub mod proofs;
pub mod reports;
pub mod retention;
pub mod scaleout;
pub mod stats;
pub mod subjects;
pub mod telemetry;
pub mod tls;
pub mod verification;
pub mod worker;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use utoipa::OpenApi;
use vellum_core::integrity::HmacKeyring;
use vellum_core::pipeline::Pipeline;
use vellum_core::redact::Redactor;
use vellum_store::AuditStore;
use vellum_store::sqlite::{SqliteOptions, SqliteStore};

pub use config::ServerConfig;

/// Shared state of every request handler: one `Arc`, because axum clones the state for every
/// request and every middleware layer, and cloning the parts one by one (fifteen reference
/// counts and a `String`) showed up at 3% of the API node's CPU.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    /// Wraps the parts.
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Services {
    /// The store.
    pub store: Arc<dyn AuditStore>,
    /// Validation, sanitization, redaction.
    pub pipeline: Arc<Pipeline>,
    /// Submission side of the writer.
    pub ingest: ingest::IngestHandle,
    /// Bearer-key authentication.
    pub auth: auth::Authenticator,
    /// The configuration in force.
    pub config: Arc<ServerConfig>,
    /// Prometheus renderer.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// HMAC keys, for `POST /v1/verify`.
    pub keyring: Arc<HmacKeyring>,
    /// Public half of the key signing new checkpoints.
    pub checkpoint_key: vellum_core::checkpoint::CheckpointKey,
    /// The Ed25519 signer (checkpoints in the writer; reports here).
    pub signer: Arc<vellum_core::checkpoint::CheckpointSigner>,
    /// One outbox drain at a time (see [`outbox`]).
    pub outbox_lock: Arc<tokio::sync::Mutex<()>>,
    /// Per-key request budgets, when configured.
    pub rate_limiter: Option<Arc<auth::RateLimiter>>,
    /// One purge run at a time.
    pub retention_lock: Arc<tokio::sync::Mutex<()>>,
    /// Data subjects' keys (crypto-shredding).
    pub subjects: Arc<subjects::SubjectKeys>,
    /// The forwarding sinks, when this node runs them (see [`start_forwarding`]).
    pub forwarder: ForwarderSlot,
}

/// Where the running [`vellum_forward::Forwarder`] is kept: empty when no sink is configured,
/// and in the scale-out shape on every node but the one holding the forwarder lock.
pub type ForwarderSlot = Arc<parking_lot::Mutex<Option<vellum_forward::Forwarder>>>;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] vellum_store::StoreError),
    /// The data directory could not be prepared.
    #[error(transparent)]
    Bootstrap(#[from] bootstrap::BootstrapError),
    /// The HMAC key configuration is invalid.
    #[error(transparent)]
    Keyring(#[from] vellum_core::integrity::KeyringError),
    /// The redaction configuration is invalid.
    #[error(transparent)]
    Redaction(#[from] vellum_core::redact::RedactionConfigError),
    /// The configuration is refused.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Binding or serving failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// The OpenAPI 3.1 document, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "Vellum", description = "Tamper-evident audit log (SPEC §5)"),
    paths(
        api::post_events,
        api::search_events,
        api::get_event,
        api::healthz,
        api::readyz,
        api::metrics_text,
        proofs::get_keys,
        proofs::get_checkpoint,
        proofs::post_checkpoint,
        proofs::get_proof,
        proofs::get_consistency,
        proofs::post_verify,
        export::get_export,
        reports::post_report,
        reports::get_disclosures,
        stats::get_stats,
        keys::create_key,
        keys::list_keys,
        keys::revoke_key,
        subjects::erase_subject,
        alerts::get_alerts,
        alerts::post_acknowledge
    ),
    components(schemas(
        ingest::Receipt, api::BatchReceipt, api::AcceptedEntry, api::RejectedEntry,
        proofs::KeysResponse, proofs::PublishedKey, proofs::InclusionProof,
        proofs::ConsistencyProof, proofs::VerifyRequest, verification::VerifyReport,
        reports::ReportRequest, keys::CreateKeyRequest, keys::KeyInfo, keys::CreatedKey,
        alerts::AlertPage, alerts::AlertView, alerts::AlertStatus, alerts::Acknowledgement,
        alerts::AcknowledgeRequest
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "events", description = "Ingest and search"),
        (name = "proofs", description = "Checkpoints, proofs and verification"),
        (name = "reports", description = "Compliance reports and accounting of disclosures"),
        (name = "admin", description = "API keys"),
        (name = "alerts", description = "Security alerts raised by the detection rules"),
        (name = "operations", description = "Health and metrics")
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

async fn openapi_json() -> Response {
    use axum::response::IntoResponse;
    let text = ApiDoc::openapi()
        .to_json()
        .unwrap_or_else(|_| "{}".to_owned());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        text,
    )
        .into_response()
}

async fn track_latency(State(_): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    metrics::histogram!(
        "vellum_http_request_duration_seconds",
        "method" => method,
        "route" => route,
        "status" => response.status().as_u16().to_string(),
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// Builds the router over prepared state.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/events", get(api::search_events).post(api::post_events))
        .route("/v1/events/{id}", get(api::get_event))
        .route("/v1/events/{id}/proof", get(proofs::get_proof))
        .route("/v1/keys", get(proofs::get_keys))
        .route(
            "/v1/logs/{logId}/checkpoint",
            get(proofs::get_checkpoint).post(proofs::post_checkpoint),
        )
        .route("/v1/logs/{logId}/consistency", get(proofs::get_consistency))
        .route("/v1/verify", axum::routing::post(proofs::post_verify))
        .route("/v1/export", get(export::get_export))
        .route("/v1/stats", get(stats::get_stats))
        .route("/v1/alerts", get(alerts::get_alerts))
        .route(
            "/v1/alerts/{id}/acknowledge",
            axum::routing::post(alerts::post_acknowledge),
        )
        .route("/v1/reports", axum::routing::post(reports::post_report))
        .route("/v1/reports/disclosures", get(reports::get_disclosures))
        .route("/v1/api-keys", get(keys::list_keys).post(keys::create_key))
        .route("/v1/api-keys/{id}", axum::routing::delete(keys::revoke_key))
        .route(
            "/v1/retention/policies",
            get(retention::get_policies).put(retention::put_policies),
        )
        .route(
            "/v1/retention/apply",
            axum::routing::post(retention::post_apply),
        )
        .route(
            "/v1/subjects/{id}/erase",
            axum::routing::post(subjects::erase_subject),
        )
        .route(
            "/v1/legal-holds",
            get(retention::list_holds).post(retention::create_hold),
        )
        .route(
            "/v1/legal-holds/{id}",
            axum::routing::delete(retention::release_hold),
        )
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics_text))
        .route("/openapi.json", get(openapi_json))
        .merge(console::router())
        .route_layer(middleware::from_fn_with_state(state.clone(), track_latency))
        // Unknown routes and methods answer in the SPEC §5 error format too.
        .fallback(|| async { error::ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            error::ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not accept that method",
            )
        })
        .with_state(state)
}

/// A server running in the background (used by `vellum serve` and by tests).
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Whether it speaks HTTPS (and only HTTPS).
    pub https: bool,
    /// Where the bootstrap admin key was written, when this start created it.
    pub admin_key_file: Option<PathBuf>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl RunningServer {
    /// Stops accepting, drains in-flight work, and waits for a clean exit.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.wait().await
    }

    /// Waits until the server exits by itself (it only does on error or after shutdown).
    pub async fn wait(self) -> Result<(), ServerError> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(ServerError::Io {
                context: "server task".into(),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    /// A sender that triggers shutdown (for signal handlers).
    pub fn take_stop(&mut self) -> Option<tokio::sync::oneshot::Sender<()>> {
        self.stop.take()
    }
}

/// Opens the data directory, starts the writer and binds the listener; the server runs in a
/// background task until [`RunningServer::shutdown`].
pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
    let config = Arc::new(config);
    // Configuration first: a refused configuration must not touch the data directory.
    let tls = match config.tls_files()? {
        Some(files) => Some(tls::server_config(&files)?),
        None => None,
    };
    let data_dir = config.data_dir.clone();
    let deployment = config.deployment()?;
    config
        .detection
        .validate()
        .map_err(|e| config::ConfigError(format!("detection: {e}")))?;
    vellum_forward::validate_sinks(&config.forward.sinks)
        .map_err(|e| config::ConfigError(e.to_string()))?;
    let lock = lock_data_dir(&data_dir)?;
    let mut sqlite = None;
    let mut postgres = None;
    let store: Arc<dyn AuditStore> = match deployment {
        config::Deployment::Embedded => {
            let opened = open_sqlite(
                &data_dir,
                SqliteOptions {
                    index_wait: Duration::from_millis(config.index_wait_ms),
                    ..SqliteOptions::default()
                },
            )
            .await?;
            sqlite = Some(opened.clone());
            opened
        }
        config::Deployment::PostgresSingle | config::Deployment::ScaleOut => {
            require_shared_secret(&config, deployment)?;
            let opened = open_pg_store(&config).await?;
            postgres = Some(opened.clone());
            opened
        }
    };
    let (keyring, pipeline) = keyring_and_pipeline(&config)?;
    let pipeline = Arc::new(pipeline);
    let admin_key_file = bootstrap::ensure_admin_key(&data_dir, store.as_ref())?;
    let signer = Arc::new(bootstrap::load_or_create_checkpoint_signer(
        &data_dir,
        config.checkpoint_key_file.as_deref(),
        &config.checkpoint_key_name,
        store.as_ref(),
    )?);
    let checkpoint_key = signer.public();
    let signing_keyring = config.enable_signatures.then(|| keyring.clone());
    // Detection watches the in-process writer's commits; in the scale-out shape the writers are
    // the workers (see ARCHITECTURE.md, "Detection").
    let detection_tap = (config.detection.enabled && deployment != config::Deployment::ScaleOut)
        .then(detection::Detector::tap);
    let with_tap = |mut writer_config: ingest::WriterConfig| {
        writer_config.commit_tap = detection_tap.as_ref().map(|(tap, _)| tap.clone());
        writer_config
    };
    let (writer, ingest) = match deployment {
        config::Deployment::ScaleOut => {
            let redis_url = config
                .redis_url
                .as_ref()
                .map(|u| u.as_str().to_owned())
                .unwrap_or_default();
            let queue = scaleout::QueueIngest::connect(
                &redis_url,
                queue_settings(&config),
                config.node_name(),
                store.clone(),
                config.log_per_organization,
                Duration::from_millis(config.commit_wait_ms.max(1)),
            )
            .await
            .map_err(|e| queue_unavailable(&e))?;
            (None, ingest::IngestHandle::queued(Arc::new(queue)))
        }
        config::Deployment::PostgresSingle => {
            let pg = postgres
                .clone()
                .ok_or_else(|| config::ConfigError("AUDIT_DB_URL is not set".into()))?;
            let lease = single_node_lease(&config, pg).await?;
            let (writer, ingest) = ingest::Writer::start(
                Arc::new(lease),
                signing_keyring,
                signer.clone(),
                with_tap(writer_config(&config)),
            )?;
            (Some(writer), ingest)
        }
        config::Deployment::Embedded => {
            let (writer, ingest) = ingest::Writer::start(
                store.clone(),
                signing_keyring,
                signer.clone(),
                with_tap(writer_config(&config)),
            )?;
            (Some(writer), ingest)
        }
    };
    let detector = match detection_tap {
        Some((_, announcements)) => Some(
            detection::Detector::start(
                detection::DetectorParts {
                    config: config.detection.clone(),
                    store: store.clone(),
                    pipeline: pipeline.clone(),
                    alerts: detection::AlertDestination::Writer(ingest.clone()),
                    logs: None,
                    runtime: tokio::runtime::Handle::current(),
                    data_dir: data_dir.clone(),
                },
                announcements,
            )
            .map_err(|source| ServerError::Io {
                context: "starting the detection thread".into(),
                source,
            })?,
        ),
        None => None,
    };
    let subjects = Arc::new(subjects::SubjectKeys::new(
        store.clone(),
        &keyring,
        deployment == config::Deployment::ScaleOut,
    ));
    let state = AppState::new(Services {
        store: store.clone(),
        pipeline,
        ingest,
        auth: auth::Authenticator::new(store.clone()),
        config: config.clone(),
        metrics: telemetry::prometheus(),
        keyring,
        checkpoint_key,
        signer,
        outbox_lock: Arc::new(tokio::sync::Mutex::new(())),
        rate_limiter: auth::RateLimiter::new(config.rate_limit_per_second, config.rate_limit_burst)
            .map(Arc::new),
        retention_lock: Arc::new(tokio::sync::Mutex::new(())),
        subjects,
        forwarder: ForwarderSlot::default(),
    });
    let forwarding = start_forwarding(&state, deployment, postgres.clone())?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Io {
            context: format!("binding {}", config.listen),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Io {
        context: "reading the bound address".into(),
        source,
    })?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let maintenance = tokio::spawn(maintenance(state.clone()));
    let state_forwarder = state.forwarder.clone();
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    tracing::info!(%addr, https = tls.is_some(), data_dir = %data_dir.display(), ?deployment, "vellum listening");
    let shutdown = async {
        let _ = stop_rx.await;
    };
    let serving: std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>> =
        match tls.clone() {
            Some(tls_config) => {
                let listener = tls::TlsListener::new(listener, tls_config).map_err(|source| {
                    ServerError::Io {
                        context: "starting the TLS listener".into(),
                        source,
                    }
                })?;
                // `tap_io` (a no-op) lets axum's `ConnectInfo<SocketAddr>` see the peer address
                // of a listener other than its own TcpListener.
                use axum::serve::ListenerExt;
                let listener = listener.tap_io(|_| {});
                Box::pin(async move {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(shutdown)
                        .await
                })
            }
            None => Box::pin(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            }),
        };
    let forwarder = state_forwarder;
    let task = tokio::spawn(async move {
        let served = serving.await;
        maintenance.abort();
        let _ = maintenance.await;
        if let Some(forwarding) = forwarding {
            forwarding.abort();
            let _ = forwarding.await;
        }
        let running = forwarder.lock().take();
        if let Some(running) = running {
            running.stop().await;
        }
        // Every IngestHandle lived in the router, which is gone now: the writer drains what it
        // was given and exits.
        tokio::task::spawn_blocking(move || {
            // The detection thread holds an ingest handle and appends its last alerts.
            if let Some(detector) = detector {
                detector.stop();
            }
            if let Some(writer) = writer {
                writer.join();
            }
            if let Some(sqlite) = sqlite {
                sqlite.shutdown();
            }
        })
        .await
        .map_err(|e| ServerError::Io {
            context: "draining the writer".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        drop(lock);
        tracing::info!("vellum stopped cleanly");
        served.map_err(|source| ServerError::Io {
            context: "serving".into(),
            source,
        })
    });
    Ok(RunningServer {
        addr,
        https: tls.is_some(),
        admin_key_file,
        stop: Some(stop_tx),
        task,
    })
}

/// The advisory lock key whose holder runs the forwarding sinks of the deployment in `schema`
/// (scale-out shape). Advisory locks are per database, not per schema, so the key depends on
/// the schema: two deployments sharing a database in different schemas each forward their own
/// events. It is one of the 65 536 highest "partitions", far above any queue partition count,
/// so it never names a writer's lock.
pub fn forwarder_lock_key(schema: &str) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(schema.as_bytes());
    let offset = u32::from(u16::from_be_bytes([digest[0], digest[1]]));
    vellum_store::postgres::lock_key_for_partition(u32::MAX - offset)
}

/// How often a scale-out node without the forwarder lock tries to take it, and the holder
/// checks that it still has it.
const FORWARDER_LEASE_CHECK: Duration = Duration::from_secs(5);

/// Starts the forwarding sinks, if any are configured. Cursors live in the store, so one
/// process per store runs them: the server itself when it is the one writer (embedded,
/// single PostgreSQL node); in the scale-out shape, whichever API node holds the forwarder's
/// advisory lock, taken over by another node within seconds when that one dies. Returns the
/// task that watches the lock (scale-out only).
fn start_forwarding(
    state: &AppState,
    deployment: config::Deployment,
    postgres: Option<Arc<vellum_store::postgres::PgStore>>,
) -> Result<Option<tokio::task::JoinHandle<()>>, ServerError> {
    // The sinks were validated by `start` before anything was opened, on every node (a bad
    // sink is a start error everywhere, not only on the node that takes the lock).
    let sinks = state.config.forward.sinks.clone();
    if sinks.is_empty() {
        return Ok(None);
    }
    let host = host_name();
    match (deployment, postgres) {
        (config::Deployment::ScaleOut, Some(pg)) => {
            let (store, slot) = (state.store.clone(), state.forwarder.clone());
            let schema = state.config.db_schema.clone();
            Ok(Some(tokio::spawn(async move {
                let mut lease: Option<vellum_store::postgres::PgLease> = None;
                loop {
                    if lease.as_ref().is_some_and(|l| !l.is_held()) {
                        tracing::warn!("lost the forwarder lock; stopping the sinks");
                        lease = None;
                        let running = slot.lock().take();
                        if let Some(running) = running {
                            running.stop().await;
                        }
                    }
                    if lease.is_none() {
                        let pg = pg.clone();
                        let key = forwarder_lock_key(&schema);
                        lease = match tokio::task::spawn_blocking(move || pg.writer_lease(&[key]))
                            .await
                        {
                            Ok(Ok(taken)) => taken,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "forwarder lock not available");
                                None
                            }
                            Err(_) => None,
                        };
                        if lease.is_some() {
                            match vellum_forward::Forwarder::start(
                                store.clone(),
                                sinks.clone(),
                                host.clone(),
                            ) {
                                Ok(forwarder) => {
                                    tracing::info!(
                                        sinks = sinks.len(),
                                        "this node runs the forwarding sinks"
                                    );
                                    *slot.lock() = Some(forwarder);
                                }
                                Err(e) => {
                                    tracing::error!(error = %e, "the forwarding sinks could not start");
                                    lease = None;
                                }
                            }
                        }
                    }
                    tokio::time::sleep(FORWARDER_LEASE_CHECK).await;
                }
            })))
        }
        _ => {
            let forwarder = vellum_forward::Forwarder::start(state.store.clone(), sinks, host)
                .map_err(|e| config::ConfigError(e.to_string()))?;
            *state.forwarder.lock() = Some(forwarder);
            Ok(None)
        }
    }
}

/// This machine's name, for syslog headers and the FHIR observer.
fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "vellum".into())
}

/// File whose exclusive lock marks the one server writing a data directory.
pub const LOCK_FILE: &str = "vellum.lock";

/// Takes the data directory's exclusive lock, so that a second server on the same directory
/// fails at start instead of becoming a second writer (invariant: one writer per log). The lock
/// is released by the OS when the process dies, so a crash never leaves it stale.
fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File, ServerError> {
    let io = |context: String| move |source| ServerError::Io { context, source };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(data_dir)
        .map_err(io(format!("creating {}", data_dir.display())))?;
    let path = data_dir.join(LOCK_FILE);
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options
        .open(&path)
        .map_err(io(format!("opening {}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(ServerError::Io {
            context: format!(
                "another Vellum server is already using {} (lock {})",
                data_dir.display(),
                path.display()
            ),
            source: std::io::Error::from(std::io::ErrorKind::WouldBlock),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io(format!("locking {}", path.display()))(e)),
    }
}

/// Background upkeep: append queued outbox events (at start, then every second) and expire
/// idempotency receipts older than the window (every 10 minutes).
async fn maintenance(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_expiry: Option<Instant> = None;
    let mut last_purge = Instant::now();
    loop {
        tick.tick().await;
        let every = Duration::from_secs(u64::from(state.config.retention_interval_hours) * 3600);
        if !every.is_zero() && last_purge.elapsed() >= every {
            last_purge = Instant::now();
            let actor = keys::Actor {
                principal_id: "vellum".into(),
                principal_type: "system",
                organization_id: None,
                ip: None,
                endpoint: "scheduled retention".into(),
            };
            match retention::run(&state, &actor, false).await {
                Ok(report) if report.purged > 0 => {
                    tracing::info!(
                        purged = report.purged,
                        held = report.held,
                        "retention purge"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = ?e, "scheduled retention purge failed"),
            }
        }
        if let Err(e) = outbox::drain(&state).await {
            tracing::warn!(error = ?e, "outbox drain failed; retrying");
        }
        if let Some(limiter) = &state.rate_limiter {
            limiter.forget_idle();
        }
        if last_expiry.is_some_and(|at| at.elapsed() < Duration::from_secs(600)) {
            continue;
        }
        last_expiry = Some(Instant::now());
        let store = state.store.clone();
        let cutoff = vellum_core::time_fmt::unix_micros(time::OffsetDateTime::now_utc())
            - i64::try_from(ingest::IDEMPOTENCY_WINDOW.as_micros()).unwrap_or(i64::MAX);
        match tokio::task::spawn_blocking(move || store.expire_idempotency(cutoff)).await {
            Ok(Ok(n)) if n > 0 => tracing::debug!(expired = n, "expired idempotency receipts"),
            Ok(Err(e)) => tracing::warn!(error = %e, "expiring idempotency receipts failed"),
            _ => {}
        }
    }
}

/// Opens the data directory's SQLite store on the blocking pool.
async fn open_sqlite(
    data_dir: &std::path::Path,
    options: SqliteOptions,
) -> Result<Arc<SqliteStore>, ServerError> {
    let dir = data_dir.to_owned();
    Ok(
        tokio::task::spawn_blocking(move || SqliteStore::open(&dir, options))
            .await
            .map_err(|e| ServerError::Io {
                context: "opening the store".into(),
                source: std::io::Error::other(e.to_string()),
            })??,
    )
}

/// In the PostgreSQL shapes, several processes hash, sign and redact for the same logs: a key
/// generated into one node's data directory would make the others' events unverifiable. The
/// scale-out shape therefore needs the secret from the configuration.
fn require_shared_secret(
    config: &ServerConfig,
    deployment: config::Deployment,
) -> Result<(), ServerError> {
    if deployment == config::Deployment::ScaleOut
        && config.crypto_secret.is_none()
        && config.crypto_keys.is_none()
    {
        return Err(config::ConfigError(
            "the scale-out shape (AUDIT_DB_URL with AUDIT_REDIS_URL) needs AUDIT_CRYPTO_SECRET (or AUDIT_CRYPTO_KEYS), the same on every API node and worker".into(),
        )
        .into());
    }
    Ok(())
}

/// Connects to PostgreSQL (`AUDIT_DB_URL`), migrating the schema if needed.
async fn open_pg_store(
    config: &ServerConfig,
) -> Result<Arc<vellum_store::postgres::PgStore>, ServerError> {
    let url = config
        .db_url
        .as_ref()
        .map(|u| zeroize::Zeroizing::new(u.as_str().to_owned()))
        .ok_or_else(|| config::ConfigError("AUDIT_DB_URL is not set".into()))?;
    let options = vellum_store::postgres::PgOptions {
        schema: Some(config.db_schema.clone()),
        ..vellum_store::postgres::PgOptions::default()
    };
    let store = tokio::task::spawn_blocking(move || {
        vellum_store::postgres::PgStore::connect(url.as_str(), options)
    })
    .await
    .map_err(|e| ServerError::Io {
        context: "connecting to PostgreSQL".into(),
        source: std::io::Error::other(e.to_string()),
    })?
    .map_err(|e| config::ConfigError(format!("AUDIT_DB_URL: {e}")))?;
    Ok(Arc::new(store))
}

/// The single PostgreSQL node writes every log: it holds every partition's lock, so that no
/// worker (or second single node) on the same database writes beside it.
async fn single_node_lease(
    config: &ServerConfig,
    store: Arc<vellum_store::postgres::PgStore>,
) -> Result<vellum_store::postgres::PgLease, ServerError> {
    let keys: Vec<i64> = (0..config.queue_partitions.max(1))
        .map(vellum_store::postgres::lock_key_for_partition)
        .collect();
    tokio::task::spawn_blocking(move || store.writer_lease(&keys))
        .await
        .map_err(|e| ServerError::Io {
            context: "taking the writer locks".into(),
            source: std::io::Error::other(e.to_string()),
        })??
        .ok_or_else(|| {
            config::ConfigError(
                "another Vellum process (a server or a worker) writes this PostgreSQL database; there is one writer per log".into(),
            )
            .into()
        })
}

/// What a worker needs to write.
pub(crate) struct WriterParts {
    /// The worker's data directory, locked (it holds the worker's checkpoint key).
    pub(crate) _lock: std::fs::File,
    pub(crate) store: Arc<vellum_store::postgres::PgStore>,
    pub(crate) keyring: Arc<HmacKeyring>,
    pub(crate) signer: Arc<vellum_core::checkpoint::CheckpointSigner>,
    /// The pipeline the worker's alerts go through.
    pub(crate) pipeline: Arc<Pipeline>,
}

/// Opens what a worker needs to write: its data directory (locked), the store, the HMAC
/// keys, the checkpoint signer.
pub(crate) async fn open_postgres_writer_parts(
    config: &ServerConfig,
) -> Result<WriterParts, ServerError> {
    require_shared_secret(config, config::Deployment::ScaleOut)?;
    let lock = lock_data_dir(&config.data_dir)?;
    let store = open_pg_store(config).await?;
    let (keyring, pipeline) = keyring_and_pipeline(config)?;
    let signer = Arc::new(bootstrap::load_or_create_checkpoint_signer(
        &config.data_dir,
        config.checkpoint_key_file.as_deref(),
        &config.checkpoint_key_name,
        store.as_ref(),
    )?);
    Ok(WriterParts {
        _lock: lock,
        store,
        keyring,
        signer,
        pipeline: Arc::new(pipeline),
    })
}

/// The queue settings of a configuration (name, partitions; the rest default).
pub fn queue_settings(config: &ServerConfig) -> vellum_queue::QueueConfig {
    vellum_queue::QueueConfig {
        name: config.queue_name.clone(),
        partitions: config.queue_partitions.max(1),
        ..vellum_queue::QueueConfig::default()
    }
}

/// A queue failure at start-up, as a server error (no secret in it: the queue crate's
/// messages never carry the URL).
pub(crate) fn queue_unavailable(e: &vellum_queue::QueueError) -> ServerError {
    config::ConfigError(format!("AUDIT_REDIS_URL: {e}")).into()
}

/// The HMAC keyring of the data directory and the pipeline whose redaction tokens derive
/// from it.
fn keyring_and_pipeline(
    config: &ServerConfig,
) -> Result<(Arc<HmacKeyring>, Pipeline), ServerError> {
    let keyring = Arc::new(bootstrap::load_keyring(
        &config.data_dir,
        config.crypto_secret.as_ref(),
        config.crypto_keys.as_ref(),
    )?);
    let token_key = keyring.derive("redaction-token");
    let redactor = Redactor::new(&config.redaction, &token_key)?;
    Ok((keyring, Pipeline::new(config.validation.clone(), redactor)))
}

/// The writer's settings from the server's.
fn writer_config(config: &ServerConfig) -> ingest::WriterConfig {
    ingest::WriterConfig {
        capacity: config.ingest_queue_events,
        max_batch: config.max_commit_batch,
        log_per_organization: config.log_per_organization,
        checkpoint_interval: Duration::from_millis(config.checkpoint_interval_ms.max(1)),
        partition: None,
        commit_tap: None,
    }
}

/// The data directory's writer, run by a `vellum` command while no server holds the directory
/// (`vellum keys`, `vellum retention apply`): it takes the directory's lock, so it is the one
/// writer of every log for as long as it lives.
pub struct OfflineWriter {
    lock: std::fs::File,
    sqlite: Arc<SqliteStore>,
    /// The store.
    pub store: Arc<dyn AuditStore>,
    /// The pipeline events go through.
    pub pipeline: Pipeline,
    /// Submission side of the writer.
    pub ingest: ingest::IngestHandle,
    writer: ingest::Writer,
}

impl OfflineWriter {
    /// Opens the directory's writer; `None`, touching nothing, when a server holds it.
    pub async fn open(config: &ServerConfig) -> Result<Option<Self>, ServerError> {
        let data_dir = config.data_dir.clone();
        let lock = match lock_data_dir(&data_dir) {
            Ok(lock) => lock,
            Err(ServerError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::WouldBlock =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let sqlite = open_sqlite(
            &data_dir,
            SqliteOptions {
                run_indexer: false,
                ..SqliteOptions::default()
            },
        )
        .await?;
        let store: Arc<dyn AuditStore> = sqlite.clone();
        let (keyring, pipeline) = keyring_and_pipeline(config)?;
        let signer = Arc::new(bootstrap::load_or_create_checkpoint_signer(
            &data_dir,
            config.checkpoint_key_file.as_deref(),
            &config.checkpoint_key_name,
            store.as_ref(),
        )?);
        let (writer, ingest) = ingest::Writer::start(
            store.clone(),
            config.enable_signatures.then(|| keyring.clone()),
            signer,
            writer_config(config),
        )?;
        Ok(Some(Self {
            lock,
            sqlite,
            store,
            pipeline,
            ingest,
            writer,
        }))
    }

    /// Appends the outbox, stops the writer (it drains what it was given) and releases the
    /// directory. Returns how many outbox events were appended.
    pub async fn close(self) -> Result<usize, ServerError> {
        let drained = outbox::drain_with(&self.store, &self.pipeline, &self.ingest).await;
        let Self {
            lock,
            sqlite,
            store,
            ingest,
            writer,
            ..
        } = self;
        drop(ingest);
        drop(store);
        tokio::task::spawn_blocking(move || {
            writer.join();
            sqlite.shutdown();
        })
        .await
        .map_err(|e| ServerError::Io {
            context: "stopping the writer".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        drop(lock);
        drained.map_err(|e| ServerError::Io {
            context: "appending the outbox".into(),
            source: std::io::Error::other(e.to_string()),
        })
    }
}

/// Appends the outbox's queued audit events when no server is running on the data directory
/// (`vellum keys …` with the server stopped). Returns `None`, doing nothing, when a server
/// holds the directory: that server appends them within a second.
pub async fn drain_outbox_offline(config: &ServerConfig) -> Result<Option<usize>, ServerError> {
    match OfflineWriter::open(config).await? {
        None => Ok(None),
        Some(writer) => writer.close().await.map(Some),
    }
}

/// `vellum retention apply`: a purge run at the current time on a data directory no server
/// holds (`None` when one does: use its `POST /v1/retention/apply`). A dry run is recorded as
/// `retention.dryrun`; a purge by its `retention.purge` records.
pub async fn retention_offline(
    config: &ServerConfig,
    dry_run: bool,
) -> Result<Option<retention::PurgeReport>, ServerError> {
    let Some(writer) = OfflineWriter::open(config).await? else {
        return Ok(None);
    };
    let actor = keys::Actor::cli("vellum retention apply");
    let run = async {
        let policies = retention::current_policies(writer.store.as_ref(), &config.retention)?;
        let report = retention::purge(
            &writer.store,
            &writer.pipeline,
            &writer.ingest,
            &policies,
            time::OffsetDateTime::now_utc(),
            dry_run,
            &actor,
        )
        .await
        .map_err(|e| ServerError::Io {
            context: "retention".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        if dry_run {
            let mut event = retention::admin_event("retention.dryrun", &actor, "AuditLog", "all");
            event["details"] = serde_json::to_value(&report).unwrap_or_default();
            writer.store.push_outbox(&[event.to_string()])?;
        }
        Ok::<_, ServerError>(report)
    };
    let result = run.await;
    writer.close().await?;
    result.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forwarder_lock_is_per_schema_and_above_the_partitions() {
        let a = forwarder_lock_key("vellum");
        assert_eq!(a, forwarder_lock_key("vellum"));
        assert_ne!(a, forwarder_lock_key("tenant_b"));
        for schema in ["vellum", "tenant_b", "x"] {
            let partition = forwarder_lock_key(schema) & 0xFFFF_FFFF;
            assert!(
                partition >= i64::from(u32::MAX - 0xFFFF),
                "{schema}: {partition}"
            );
        }
    }
}
