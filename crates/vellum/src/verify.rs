//! `vellum verify`: reads the store directly and checks every event of every log.

use anyhow::Context;
use std::process::ExitCode;
use std::sync::Arc;
use vellum_core::checkpoint::CheckpointKey;
use vellum_server::ServerConfig;
use vellum_server::verification::{VerifyOptions, verify_store};
use vellum_store::AuditStore;
use vellum_store::sqlite::{SqliteOptions, SqliteStore};

#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// Verify only this log.
    #[arg(long, value_name = "LOG_ID")]
    log: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Skip HMAC checks (when the secret is not available); hashes and chain are still checked.
    #[arg(long)]
    no_signatures: bool,
    /// Trust only this checkpoint public key (base64, or a signed-note verifier key); repeat
    /// for rotated keys. Default: the keys the store publishes plus the data dir's own key.
    #[arg(long, value_name = "KEY")]
    public_key: Vec<String>,
}

pub(crate) fn run(config: &ServerConfig, args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let dir = &config.data_dir;
    let mut sqlite_store = None;
    let store: Arc<dyn AuditStore> = match &config.db_url {
        // The PostgreSQL shapes: the store is the database; the data dir only may hold this
        // node's checkpoint key.
        Some(url) => Arc::new(
            vellum_store::postgres::PgStore::connect(
                url.as_str(),
                vellum_store::postgres::PgOptions {
                    schema: Some(config.db_schema.clone()),
                    ..vellum_store::postgres::PgOptions::default()
                },
            )
            .map_err(|e| anyhow::anyhow!("AUDIT_DB_URL: {e}"))?,
        ),
        None => {
            if !dir.join(vellum_store::sqlite::LOG_FILE).exists() {
                anyhow::bail!(
                    "no Vellum store in {} (expected {})",
                    dir.display(),
                    vellum_store::sqlite::LOG_FILE
                );
            }
            let sqlite: Arc<SqliteStore> = SqliteStore::open(
                dir,
                SqliteOptions {
                    run_indexer: false,
                    ..SqliteOptions::default()
                },
            )
            .with_context(|| format!("opening the store in {}", dir.display()))?;
            sqlite_store = Some(sqlite.clone());
            sqlite
        }
    };
    let keyring = if args.no_signatures {
        None
    } else {
        let configured = config.crypto_secret.as_ref();
        let secret_file = dir.join(vellum_server::bootstrap::SECRET_FILE);
        if configured.is_none() && !secret_file.exists() {
            anyhow::bail!(
                "no HMAC secret: set AUDIT_CRYPTO_SECRET (or keep {} in the data dir), or pass --no-signatures",
                secret_file.display()
            );
        }
        Some(vellum_server::bootstrap::load_keyring(
            dir,
            configured,
            config.crypto_keys.as_ref(),
        )?)
    };

    // Checkpoint keys: pinned ones only, when given (a key inserted into the store by whoever
    // altered it must not vouch for its own checkpoints); else the store's published keys and
    // the data directory's own signing key.
    let keys = if args.public_key.is_empty() {
        let mut local = Vec::new();
        let key_file = config
            .checkpoint_key_file
            .clone()
            .unwrap_or_else(|| dir.join(vellum_server::bootstrap::CHECKPOINT_KEY_FILE));
        if key_file.exists() {
            let seed = vellum_server::bootstrap::read_checkpoint_seed(&key_file)?;
            let signer = vellum_core::checkpoint::CheckpointSigner::from_seed(
                &config.checkpoint_key_name,
                &seed,
            )?;
            local.push(signer.public());
        }
        vellum_server::verification::known_keys(store.as_ref(), &local)?
    } else {
        args.public_key
            .iter()
            .map(|k| CheckpointKey::parse(k).with_context(|| format!("--public-key {k}")))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    if let Some(only) = &args.log
        && !store.log_ids()?.contains(only)
    {
        anyhow::bail!("no log {only:?} in the store");
    }
    let total: u64 = store
        .log_heads()?
        .iter()
        .filter(|h| args.log.as_ref().is_none_or(|l| *l == h.log_id))
        .map(|h| h.size)
        .sum();
    let progress = if args.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} verifying [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    };
    // With signatures enabled (the default), an unsigned event is a failure: otherwise anyone
    // could append a forged, self-consistent event without the secret. A store written with
    // AUDIT_ENABLE_SIGNATURES=false is verified with the same setting.
    let options = VerifyOptions {
        log_id: args.log.clone(),
        require_signatures: config.enable_signatures,
        from_seq: 0,
    };
    let report = verify_store(store.as_ref(), keyring.as_ref(), &keys, &options, |n| {
        progress.inc(n)
    })?;
    progress.finish_and_clear();
    let ok = report.ok;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for log in &report.logs {
            if log.ok() {
                println!(
                    "log {}: {} events verified, Merkle root {}, {} signed checkpoints match, OK",
                    log.log_id, log.events, log.merkle_root, log.checkpoints_matched
                );
            } else {
                println!(
                    "log {}: {} events checked, {} FAILURES",
                    log.log_id,
                    log.events,
                    log.failures.len()
                );
                for failure in &log.failures {
                    println!("  FAIL {failure}");
                }
            }
        }
        let rate = report.events as f64 / report.elapsed_seconds.max(1e-9);
        println!(
            "{}: {} events in {} logs, {} checkpoints, {:.2}s ({rate:.0} events/s){}",
            if ok { "OK" } else { "FAILED" },
            report.events,
            report.logs.len(),
            report.checkpoints_verified,
            report.elapsed_seconds,
            if report.signatures_checked {
                ""
            } else {
                ", signatures NOT checked"
            }
        );
    }
    if let Some(sqlite) = sqlite_store {
        sqlite.shutdown();
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
