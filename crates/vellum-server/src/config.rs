//! Server configuration: everything `vellum serve` can be told, with the defaults of SPEC §10.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use vellum_core::config::{RedactionConfig, ValidationConfig};
use zeroize::Zeroizing;

/// How the server runs. Built by the command line from flags, `vellum.toml` and the
/// environment; tests build it directly.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServerConfig {
    /// Address to listen on (`VELLUM_LISTEN`, default `127.0.0.1:7870`).
    pub listen: SocketAddr,
    /// Data directory (`VELLUM_DATA_DIR`, default `./vellum-data`).
    pub data_dir: PathBuf,
    /// HMAC secret (`AUDIT_CRYPTO_SECRET`); generated into the data dir when absent.
    #[serde(skip_serializing)]
    pub crypto_secret: Option<Zeroizing<String>>,
    /// Rotated HMAC keys from the environment (`AUDIT_CRYPTO_KEYS`, `id=secret,id=secret`, the
    /// last one signs new events); when absent they come from `<data-dir>/hmac-keys`, which
    /// `vellum keys rotate-hmac` maintains.
    #[serde(skip_serializing)]
    pub crypto_keys: Option<Zeroizing<String>>,
    /// Sign events with HMAC (`AUDIT_ENABLE_SIGNATURES`, default true).
    pub enable_signatures: bool,
    /// Validation limits (SPEC §2).
    pub validation: ValidationConfig,
    /// Redaction rules (SPEC §2).
    pub redaction: RedactionConfig,
    /// Largest request body accepted, in bytes (default 16 MiB).
    pub max_request_bytes: usize,
    /// Events allowed to wait for the writer; beyond it requests get 503 (default 100 000).
    pub ingest_queue_events: usize,
    /// Most events committed in one transaction (default 5 000).
    pub max_commit_batch: usize,
    /// One log per organization instead of the single `default` log.
    pub log_per_organization: bool,
    /// How long a search waits for the index to catch up, in milliseconds (default 2000).
    pub index_wait_ms: u64,
    /// Longest time, in milliseconds, between events arriving and a checkpoint covering them
    /// (SPEC §4 `checkpointInterval`, default 1000).
    pub checkpoint_interval_ms: u64,
    /// File holding the Ed25519 checkpoint signing key (base64 32-byte seed); default
    /// `<data-dir>/checkpoint.key`, created on first start. Pointing it at a new key rotates:
    /// old public keys stay published and old checkpoints keep verifying.
    pub checkpoint_key_file: Option<PathBuf>,
    /// Signer name in checkpoint signature lines (default `vellum`).
    pub checkpoint_key_name: String,
    /// PEM certificate chain for HTTPS (`--tls-cert`); with `tls_key`, the server speaks only
    /// HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS (`--tls-key`).
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: when set, clients must present a certificate it signed (`--tls-client-ca`).
    pub tls_client_ca: Option<PathBuf>,
    /// Refuse plain HTTP, and plain PostgreSQL and Redis URLs (`AUDIT_REQUIRE_TLS`).
    pub require_tls: bool,
    /// Requests per second each API key may make (0 = no limit). Over it: 429 with
    /// `Retry-After`. Every key has its own budget.
    pub rate_limit_per_second: u32,
    /// Requests a key may make in a burst above its rate (default: one second's worth).
    pub rate_limit_burst: u32,
    /// Retention policies and classification defaults (SPEC §7); `PUT /v1/retention/policies`
    /// overrides them in the store.
    pub retention: vellum_core::retention::RetentionPolicies,
    /// Hours between scheduled purges in `serve` (0: only on request). Default 24.
    pub retention_interval_hours: u32,
    /// JSON pointers of the values sealed under a data subject's key, besides
    /// `gdprContext.dataSubjectId` itself (SPEC §7).
    pub personal_fields: Vec<String>,
    /// PostgreSQL URL (`AUDIT_DB_URL`): the store is PostgreSQL instead of the data
    /// directory's SQLite files. May carry a password, so it is never printed.
    #[serde(skip_serializing)]
    pub db_url: Option<Zeroizing<String>>,
    /// PostgreSQL schema holding Vellum's tables (`AUDIT_DB_SCHEMA`, default `vellum`).
    pub db_schema: String,
    /// Redis URL (`AUDIT_REDIS_URL`): with `db_url`, `serve` is a stateless API node that
    /// queues events on Redis Streams and `vellum worker` writes them.
    #[serde(skip_serializing)]
    pub redis_url: Option<Zeroizing<String>>,
    /// Queue name (`AUDIT_QUEUE_NAME`, default `audit`): the prefix of every stream.
    pub queue_name: String,
    /// Partitions of the queue (default 16). A log always maps to the same partition, and
    /// one worker at a time writes a partition; every node must use the same number.
    pub queue_partitions: u32,
    /// How long `?wait=committed` (and the server's own audit records) wait for a worker to
    /// commit a queued event, in milliseconds (default 30 000).
    pub commit_wait_ms: u64,
    /// Identity of this node in the queue (consumer and receipt channel name); default: host
    /// name, process id and a random suffix.
    pub node_id: Option<String>,
    /// Detection rules (SPEC §8, `[detection]`): thresholds, windows, working hours; every
    /// rule is on by default.
    pub detection: vellum_core::detect::DetectionConfig,
    /// Forwarding to SIEMs and other receivers (`[[forward.sinks]]`, SPEC §8).
    pub forward: ForwardConfig,
}

/// `[forward]`: the sinks committed events are forwarded to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ForwardConfig {
    /// The sinks, each with its own cursor, retries and dead letters (see `vellum_forward`).
    pub sinks: Vec<vellum_forward::SinkConfig>,
}

/// Where events are stored and how they reach the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployment {
    /// SQLite in the data directory, in-process writer.
    Embedded,
    /// PostgreSQL, in-process writer (this process is the one writer of every log).
    PostgresSingle,
    /// PostgreSQL and Redis Streams: API nodes queue, workers write.
    ScaleOut,
}

impl ServerConfig {
    /// The deployment shape the URLs select (SPEC §1).
    pub fn deployment(&self) -> Result<Deployment, ConfigError> {
        match (&self.db_url, &self.redis_url) {
            (None, None) => Ok(Deployment::Embedded),
            (Some(_), None) => Ok(Deployment::PostgresSingle),
            (Some(_), Some(_)) => Ok(Deployment::ScaleOut),
            (None, Some(_)) => Err(ConfigError(
                "AUDIT_REDIS_URL needs AUDIT_DB_URL: the scale-out shape stores events in PostgreSQL".into(),
            )),
        }
    }

    /// This node's identity in the queue.
    pub fn node_name(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "node".into());
            let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
            format!("{host}-{}-{suffix}", std::process::id())
        })
    }
}

/// Why a configuration is refused before anything starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ServerConfig {
    /// The HTTPS files, when HTTPS is configured; an error when only half of it is.
    pub fn tls_files(&self) -> Result<Option<crate::tls::TlsFiles>, ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            })),
            (None, None) if self.tls_client_ca.is_some() => Err(ConfigError(
                "--tls-client-ca needs --tls-cert and --tls-key".into(),
            )),
            (None, None) if self.require_tls => Err(ConfigError(
                "AUDIT_REQUIRE_TLS=true refuses plain HTTP: give --tls-cert and --tls-key (or tlsCert and tlsKey in vellum.toml)".into(),
            )),
            (None, None) => Ok(None),
            (Some(_), None) => Err(ConfigError("--tls-cert needs --tls-key".into())),
            (None, Some(_)) => Err(ConfigError("--tls-key needs --tls-cert".into())),
        }
    }
}

/// With `AUDIT_REQUIRE_TLS`, refuses database and queue URLs that would travel in clear text:
/// PostgreSQL must ask for `sslmode=require`, `verify-ca` or `verify-full`; Redis must be
/// `rediss://`. Named by variable, so the operator knows which one to fix.
pub fn check_transport_urls(require_tls: bool, urls: &[(&str, &str)]) -> Result<(), ConfigError> {
    if !require_tls {
        return Ok(());
    }
    for (variable, url) in urls {
        let lower = url.to_ascii_lowercase();
        let scheme = lower.split("://").next().unwrap_or_default();
        let plain = match scheme {
            "postgres" | "postgresql" => ![
                "sslmode=require",
                "sslmode=verify-ca",
                "sslmode=verify-full",
            ]
            .iter()
            .any(|mode| lower.contains(mode)),
            "redis" => true,
            "rediss" => false,
            _ => false,
        };
        if plain {
            return Err(ConfigError(format!(
                "AUDIT_REQUIRE_TLS=true refuses {variable}: it connects without TLS (use {} )",
                if scheme.starts_with("redis") {
                    "rediss://"
                } else {
                    "sslmode=require or verify-full"
                }
            )));
        }
    }
    Ok(())
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field(
                "crypto_secret",
                &self.crypto_secret.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "crypto_keys",
                &self.crypto_keys.as_ref().map(|_| "<redacted>"),
            )
            .field("enable_signatures", &self.enable_signatures)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("ingest_queue_events", &self.ingest_queue_events)
            .field("max_commit_batch", &self.max_commit_batch)
            .field("log_per_organization", &self.log_per_organization)
            .field("checkpoint_interval_ms", &self.checkpoint_interval_ms)
            .field("checkpoint_key_file", &self.checkpoint_key_file)
            .field("db_url", &self.db_url.as_ref().map(|_| "<redacted>"))
            .field("db_schema", &self.db_schema)
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<redacted>"))
            .field("queue_name", &self.queue_name)
            .field("queue_partitions", &self.queue_partitions)
            .field("detection", &self.detection.enabled)
            .field("forward", &self.forward)
            .finish_non_exhaustive()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7870)),
            data_dir: PathBuf::from("./vellum-data"),
            crypto_secret: None,
            crypto_keys: None,
            enable_signatures: true,
            validation: ValidationConfig::default(),
            redaction: RedactionConfig::default(),
            max_request_bytes: 16 * 1024 * 1024,
            ingest_queue_events: 100_000,
            max_commit_batch: 5_000,
            log_per_organization: false,
            index_wait_ms: 2_000,
            checkpoint_interval_ms: 1_000,
            checkpoint_key_file: None,
            checkpoint_key_name: vellum_core::checkpoint::DEFAULT_KEY_NAME.to_owned(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            require_tls: false,
            rate_limit_per_second: 0,
            rate_limit_burst: 0,
            retention: vellum_core::retention::RetentionPolicies::default(),
            retention_interval_hours: 24,
            personal_fields: [
                "/sessionContext/ipAddress",
                "/sessionContext/userAgent",
                "/outcomeDescription",
                "/changes",
            ]
            .map(str::to_owned)
            .to_vec(),
            db_url: None,
            db_schema: "vellum".into(),
            redis_url: None,
            queue_name: "audit".into(),
            queue_partitions: 16,
            commit_wait_ms: 30_000,
            node_id: None,
            detection: vellum_core::detect::DetectionConfig::default(),
            forward: ForwardConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_tls_refuses_plain_urls_and_half_configured_https() {
        let ok = |urls: &[(&str, &str)]| check_transport_urls(true, urls);
        assert!(ok(&[("AUDIT_DB_URL", "postgres://h/db?sslmode=verify-full")]).is_ok());
        assert!(ok(&[("AUDIT_REDIS_URL", "rediss://h:6380")]).is_ok());
        let err = ok(&[("AUDIT_DB_URL", "postgresql://h/db")]).expect_err("plain");
        assert!(err.0.contains("AUDIT_DB_URL"), "{err}");
        assert!(ok(&[("AUDIT_DB_URL", "postgres://h/db?sslmode=prefer")]).is_err());
        let err = ok(&[("AUDIT_REDIS_URL", "redis://127.0.0.1:6379")]).expect_err("plain");
        assert!(
            err.0.contains("AUDIT_REDIS_URL") && err.0.contains("rediss://"),
            "{err}"
        );
        assert!(check_transport_urls(false, &[("AUDIT_REDIS_URL", "redis://h")]).is_ok());

        let mut config = ServerConfig {
            require_tls: true,
            ..ServerConfig::default()
        };
        assert!(
            config
                .tls_files()
                .expect_err("plain http")
                .0
                .contains("AUDIT_REQUIRE_TLS")
        );
        config.tls_cert = Some("c.pem".into());
        assert!(
            config
                .tls_files()
                .expect_err("half")
                .0
                .contains("--tls-key")
        );
        config.tls_key = Some("k.pem".into());
        assert!(config.tls_files().expect("both").is_some());
        let plain = ServerConfig::default();
        assert_eq!(plain.tls_files(), Ok(None));
    }
}
