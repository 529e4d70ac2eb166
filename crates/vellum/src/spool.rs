//! `vellum spool inspect|replay`: look at an application's guaranteed-delivery spool (the
//! directory its `vellum-client` writes to) and resend what it holds.
//!
//! `inspect` reads without the spool's lock, so it works while the application runs.
//! `replay` takes the lock (the application must be stopped, or it would deliver the same
//! events concurrently), delivers every pending event, and resends the dead letters with
//! their original idempotency keys: an event the server already holds is answered with its
//! first receipt, never written twice. Dead letters the server refuses again stay in the file
//! with the new reason.

use anyhow::{Context, bail};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use vellum_server::ServerConfig;

#[derive(Debug, clap::Args)]
pub(crate) struct SpoolArgs {
    #[command(subcommand)]
    action: SpoolAction,
}

#[derive(Debug, clap::Subcommand)]
enum SpoolAction {
    /// Show pending events per lane, the size bound, and every dead letter with its reason.
    Inspect {
        /// The spool directory (the client's `spool_dir`).
        dir: PathBuf,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Deliver the pending events and resend the dead letters (the application must be
    /// stopped: the spool is locked while in use).
    Replay {
        /// The spool directory.
        dir: PathBuf,
        /// Server URL (default: http://<listen address>).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// API key (default: VELLUM_API_KEY, then <data-dir>/admin.key).
        #[arg(long, env = "VELLUM_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// How long to wait for the pending events to be delivered.
        #[arg(long, default_value_t = 60, value_name = "SECONDS")]
        timeout: u64,
        /// Only deliver pending events; leave the dead letters alone.
        #[arg(long)]
        pending_only: bool,
    },
}

fn micros_text(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| micros.to_string())
}

pub(crate) fn run(config: &ServerConfig, args: &SpoolArgs) -> anyhow::Result<ExitCode> {
    match &args.action {
        SpoolAction::Inspect { dir, json } => inspect(dir, *json),
        SpoolAction::Replay {
            dir,
            url,
            api_key,
            timeout,
            pending_only,
        } => {
            let url = crate::query::base_url(config, url.as_deref());
            let key = crate::query::api_key(config, api_key.as_deref())?;
            replay(
                dir,
                &url,
                &key,
                Duration::from_secs(*timeout),
                *pending_only,
            )
        }
    }
}

fn inspect(dir: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    if !dir.is_dir() {
        bail!("{} is not a spool directory", dir.display());
    }
    let (stats, letters) = vellum_client::spool::inspect(dir)
        .with_context(|| format!("reading the spool in {}", dir.display()))?;
    if json {
        let doc = serde_json::json!({"stats": stats, "deadLetters": letters});
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("spool {}", dir.display());
    for (name, lane) in [("high", &stats.high), ("normal", &stats.normal)] {
        let oldest = lane
            .oldest_spooled_at_micros
            .map(micros_text)
            .unwrap_or_else(|| "-".into());
        println!(
            "  {name:<6} pending {:>8} events {:>12} bytes   oldest {oldest}",
            lane.pending_records, lane.pending_bytes
        );
    }
    println!(
        "  {} bytes on disk; {} dead letters; {} bytes quarantined",
        stats.used_bytes, stats.dead_letters, stats.quarantined_bytes
    );
    for letter in &letters {
        let action = letter
            .record
            .event
            .get("action")
            .and_then(|v| v.as_str())
            .unwrap_or("-");
        println!(
            "  dead letter {} {} action={action} {}",
            micros_text(letter.dead_lettered_at_micros),
            letter.record.idempotency_key,
            letter.rejection
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn replay(
    dir: &std::path::Path,
    url: &str,
    key: &str,
    timeout: Duration,
    pending_only: bool,
) -> anyhow::Result<ExitCode> {
    if !dir.is_dir() {
        bail!("{} is not a spool directory", dir.display());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let client = vellum_client::Client::builder()
            .url(url)
            .api_key(key)
            .spool_dir(dir)
            .build()
            .with_context(|| format!("opening the spool in {}", dir.display()))?;
        let drained = client.drain(timeout).await;
        let stats = client.stats();
        let mut failed = !drained;
        if drained {
            println!("pending events delivered");
        } else if let Some(spool) = &stats.spool {
            eprintln!(
                "{} events still pending after {}s (server unreachable or refusing the key?)",
                spool.high.pending_records + spool.normal.pending_records,
                timeout.as_secs()
            );
        }
        if !pending_only {
            let report = client
                .replay_dead_letters()
                .await
                .context("resending the dead letters")?;
            println!(
                "dead letters: {} resent, {} accepted, {} refused again",
                report.resent, report.accepted, report.refused
            );
            failed |= report.refused > 0;
        }
        client.shutdown().await;
        Ok(if failed {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        })
    })
}
