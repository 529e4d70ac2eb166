//! `vellum retention apply [--dry-run]`: a purge run on the data directory (SPEC §7), as the
//! directory's one writer; with a server running, use its `POST /v1/retention/apply`.

use anyhow::{Context, bail};
use std::process::ExitCode;
use vellum_server::ServerConfig;

/// `vellum retention …`.
#[derive(Debug, clap::Args)]
pub(crate) struct RetentionArgs {
    #[command(subcommand)]
    command: RetentionCommand,
}

#[derive(Debug, clap::Subcommand)]
enum RetentionCommand {
    /// Purge every expired event not under a legal hold (content replaced by a tombstone; the
    /// chain, the Merkle tree and `vellum verify` stay intact).
    Apply {
        /// Report what would be purged; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `vellum retention …`.
pub(crate) fn run(config: &ServerConfig, args: &RetentionArgs) -> anyhow::Result<ExitCode> {
    let RetentionCommand::Apply { dry_run, json } = &args.command;
    if config.db_url.is_some() {
        bail!(
            "with AUDIT_DB_URL the purge runs on a server: POST /v1/retention/apply (admin key) on any API node, or let its schedule (retentionIntervalHours) do it"
        );
    }
    if !config.data_dir.join("vellum.db").exists() {
        bail!("no store in {}", config.data_dir.display());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let Some(report) = runtime.block_on(vellum_server::retention_offline(config, *dry_run))? else {
        bail!(
            "a server is running on {}: use its POST /v1/retention/apply (admin key), or stop it",
            config.data_dir.display()
        );
    };
    if *json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} at {}: {} expired, {} kept by legal holds, {} {}",
            if report.dry_run { "dry run" } else { "purge" },
            report.now,
            report.expired,
            report.held,
            if report.dry_run {
                report.by_policy.values().sum::<u64>()
            } else {
                report.purged
            },
            if report.dry_run {
                "would be purged"
            } else {
                "purged"
            }
        );
        for (policy, count) in &report.by_policy {
            println!("  {policy}: {count}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
