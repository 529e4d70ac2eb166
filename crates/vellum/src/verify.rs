//! `vellum verify`: reads the store directly and checks every event of every log.

use anyhow::Context;
use std::process::ExitCode;
use std::sync::Arc;
use vellum_core::integrity::HmacKeyring;
use vellum_core::verify::{ChainVerifier, LogReport};
use vellum_server::ServerConfig;
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
}

const CHUNK: usize = 20_000;

pub(crate) fn run(config: &ServerConfig, args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let dir = &config.data_dir;
    if !dir.join(vellum_store::sqlite::LOG_FILE).exists() {
        anyhow::bail!(
            "no Vellum store in {} (expected {})",
            dir.display(),
            vellum_store::sqlite::LOG_FILE
        );
    }
    let store: Arc<SqliteStore> = SqliteStore::open(
        dir,
        SqliteOptions {
            run_indexer: false,
            ..SqliteOptions::default()
        },
    )
    .with_context(|| format!("opening the store in {}", dir.display()))?;
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
        let secret = vellum_server::bootstrap::load_or_create_secret(dir, configured)?;
        Some(HmacKeyring::single(secret)?)
    };

    let mut logs: Vec<(String, u64)> = store
        .log_heads()?
        .into_iter()
        .map(|h| (h.log_id, h.size))
        .collect();
    logs.sort();
    if let Some(only) = &args.log {
        logs.retain(|(id, _)| id == only);
        if logs.is_empty() {
            anyhow::bail!("no log {only:?} in the store");
        }
    }
    let total: u64 = logs.iter().map(|(_, size)| size).sum();
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
    let started = std::time::Instant::now();
    let mut reports: Vec<LogReport> = Vec::new();
    for (log_id, _) in &logs {
        // With signatures enabled (the default), an unsigned event is a failure: otherwise
        // anyone could append a forged, self-consistent event without the secret. A store
        // written with AUDIT_ENABLE_SIGNATURES=false is verified with the same setting.
        let mut verifier = ChainVerifier::new(log_id, keyring.as_ref())
            .require_signatures(config.enable_signatures);
        let mut from = 0u64;
        loop {
            let rows = store.scan_log(log_id, from, CHUNK)?;
            let Some(last) = rows.last() else { break };
            from = last.seq + 1;
            for row in &rows {
                verifier.check(row.seq, &row.canonical, &row.hash, row.signature.as_deref());
            }
            progress.inc(rows.len() as u64);
            if rows.len() < CHUNK {
                break;
            }
        }
        reports.push(verifier.finish());
    }
    progress.finish_and_clear();
    let elapsed = started.elapsed();
    let ok = reports.iter().all(LogReport::ok);
    if args.json {
        let out = serde_json::json!({
            "ok": ok,
            "signaturesChecked": keyring.is_some(),
            "logs": reports,
            "elapsedSeconds": elapsed.as_secs_f64(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for report in &reports {
            if report.ok() {
                println!(
                    "log {}: {} events verified, OK",
                    report.log_id, report.events
                );
            } else {
                println!(
                    "log {}: {} events checked, {} FAILURES",
                    report.log_id,
                    report.events,
                    report.failures.len()
                );
                for failure in &report.failures {
                    println!("  FAIL {failure}");
                }
            }
        }
        let events: u64 = reports.iter().map(|r| r.events).sum();
        let rate = events as f64 / elapsed.as_secs_f64().max(1e-9);
        println!(
            "{}: {events} events in {} logs, {:.2}s ({rate:.0} events/s){}",
            if ok { "OK" } else { "FAILED" },
            reports.len(),
            elapsed.as_secs_f64(),
            if keyring.is_some() {
                ""
            } else {
                ", signatures NOT checked"
            }
        );
    }
    store.shutdown();
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
