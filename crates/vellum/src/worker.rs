//! `vellum worker` and `vellum dlq`: the scale-out writer and its dead letters (SPEC §1).

use anyhow::{Context, bail};
use std::process::ExitCode;
use vellum_server::ServerConfig;

/// Arguments of `vellum worker`.
#[derive(Debug, clap::Args)]
pub(crate) struct WorkerArgs {
    /// Serve `/healthz`, `/readyz` and `/metrics` on this address.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<std::net::SocketAddr>,
}

/// Arguments of `vellum dlq`.
#[derive(Debug, clap::Args)]
pub(crate) struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Debug, clap::Subcommand)]
enum DlqCommand {
    /// List dead-lettered messages with the reason each was set aside.
    List {
        /// Most entries to show.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Put messages back on the stream they came from (after fixing the cause).
    Retry {
        /// Dead-letter entry id (from `list`).
        id: Option<String>,
        /// Every dead-lettered message.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Delete messages from the dead-letter stream for good.
    Drop {
        /// Dead-letter entry id (from `list`).
        id: Option<String>,
        /// Every dead-lettered message.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vellum-worker")
        .build()
        .context("starting the async runtime")
}

/// Runs the worker until SIGTERM or Ctrl-C, then hands its partitions over.
pub(crate) fn run_worker(config: ServerConfig, args: &WorkerArgs) -> anyhow::Result<ExitCode> {
    if config.db_url.is_none() || config.redis_url.is_none() {
        bail!("vellum worker needs AUDIT_DB_URL and AUDIT_REDIS_URL (the scale-out shape)");
    }
    runtime()?.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let signal = crate::shutdown_signal();
        tokio::spawn(async move {
            signal.await;
            tracing::info!("shutdown signal received; handing partitions over");
            let _ = stop_tx.send(true);
        });
        vellum_server::worker::run(config, stop_rx, args.listen).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `vellum dlq list|retry|drop`.
pub(crate) fn run_dlq(config: &ServerConfig, args: &DlqArgs) -> anyhow::Result<ExitCode> {
    let Some(url) = config.redis_url.as_ref() else {
        bail!("vellum dlq needs AUDIT_REDIS_URL");
    };
    let queue = vellum_server::queue_settings(config);
    runtime()?.block_on(async move {
        let dlq = vellum_queue::DeadLetters::connect(url.as_str(), queue)
            .await
            .context("connecting to Redis (AUDIT_REDIS_URL)")?;
        match &args.command {
            DlqCommand::List { limit } => {
                let entries = dlq.list(*limit).await?;
                if entries.is_empty() {
                    eprintln!("no dead letters");
                }
                for entry in entries {
                    println!(
                        "{}",
                        serde_json::json!({
                            "id": entry.id,
                            "reason": entry.reason,
                            "stream": entry.stream,
                            "entry": entry.entry_id,
                            "deliveries": entry.deliveries,
                            "deadAtMs": entry.dead_at_ms,
                            "payload": String::from_utf8_lossy(&entry.payload),
                        })
                    );
                }
            }
            DlqCommand::Retry { id, all } => {
                let n = dlq.retry(&selection(id.as_deref(), *all)?).await?;
                eprintln!("{n} message(s) put back on their stream");
            }
            DlqCommand::Drop { id, all } => {
                let n = dlq.discard(&selection(id.as_deref(), *all)?).await?;
                eprintln!("{n} message(s) dropped");
            }
        }
        Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
    })
}

fn selection(id: Option<&str>, all: bool) -> anyhow::Result<vellum_queue::Selection> {
    match (id, all) {
        (Some(id), false) => Ok(vellum_queue::Selection::One(id.to_owned())),
        (None, true) => Ok(vellum_queue::Selection::All),
        _ => bail!("give a dead-letter id, or --all"),
    }
}
