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
        }
    }
}
