//! `vellum`: the command line. Thin: each command parses its arguments, builds configuration,
//! and calls into the library crates.

mod bench;
mod export;
mod keys;
mod query;
mod report;
mod retention;
mod settings;
mod spool;
mod verify;
mod worker;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc instead of glibc malloc: the ingest path allocates many small strings per event,
/// and glibc's allocator showed up at 10% of server CPU in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tamper-evident audit log for regulated systems.
#[derive(Debug, Parser)]
#[command(name = "vellum", version, about)]
struct Cli {
    /// Configuration file (default: ./vellum.toml when it exists).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (overrides vellum.toml and VELLUM_DATA_DIR).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (embedded store; PostgreSQL with AUDIT_DB_URL; an API node of the
    /// scale-out shape with AUDIT_REDIS_URL too).
    Serve(ServeArgs),
    /// Verify every hash, signature, chain link and sequence position in the store.
    Verify(verify::VerifyArgs),
    /// Search events through a running server.
    Query(query::QueryArgs),
    /// Export events through a running server (`--bundle FILE`: verifiable offline).
    Export(export::ExportArgs),
    /// Check an export bundle offline: no server, no secret, no network.
    VerifyBundle(export::VerifyBundleArgs),
    /// Generate a signed compliance report through a running server.
    Report(report::ReportArgs),
    /// Check a compliance report's signature offline.
    VerifyReport(report::VerifyReportArgs),
    /// Load-test a running server with realistic synthetic events.
    Bench(bench::BenchArgs),
    /// Create, list and revoke API keys on the data directory (server running or not).
    Keys(keys::KeysArgs),
    /// Apply retention policies to the data directory (with the server stopped).
    Retention(retention::RetentionArgs),
    /// Write queued events to PostgreSQL (scale-out: AUDIT_DB_URL and AUDIT_REDIS_URL).
    Worker(worker::WorkerArgs),
    /// List, retry or drop dead-lettered queue messages (scale-out).
    Dlq(worker::DlqArgs),
    /// Inspect or replay an application's guaranteed-delivery spool (vellum-client).
    Spool(spool::SpoolArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on (overrides vellum.toml and VELLUM_LISTEN).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// PEM certificate chain: serve HTTPS only (with --tls-key).
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle: require client certificates signed by it (mutual TLS).
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("VELLUM_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Turns transparent huge pages off for this process, unless the operator set mimalloc's own
/// `MIMALLOC_ALLOW_THP`.
///
/// mimalloc asks for huge pages on its arenas (`madvise(MADV_HUGEPAGE)`), and then returns
/// freed memory to the kernel 64 KiB at a time. Each such purge splits a 2 MiB page, and the
/// next allocation there faults in a fresh one that the kernel zeroes whole: in profiles of the
/// scale-out shape, zeroing pages took 10% of all CPU, 30% of the worker's. mimalloc has a
/// switch for this (`allow_thp`) but reads it only from the environment, before `main`; the
/// prctl flag is checked at each fault, so setting it first thing covers every later one.
/// Databases recommend the same (PostgreSQL, Redis): huge pages of anonymous memory trade a
/// little TLB for zeroing and compaction stalls.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // Best effort: a kernel without the flag leaves the default, which only costs speed.
        let _ = nix::sys::prctl::set_thp_disable(true);
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let overrides = settings::Overrides {
        config_file: cli.config.clone(),
        data_dir: cli.data_dir.clone(),
        listen: match &cli.command {
            Command::Serve(args) => args.listen,
            _ => None,
        },
        tls_cert: match &cli.command {
            Command::Serve(args) => args.tls_cert.clone(),
            _ => None,
        },
        tls_key: match &cli.command {
            Command::Serve(args) => args.tls_key.clone(),
            _ => None,
        },
        tls_client_ca: match &cli.command {
            Command::Serve(args) => args.tls_client_ca.clone(),
            _ => None,
        },
    };
    match cli.command {
        Command::Serve(_) => {
            let config = settings::load(&overrides)?;
            serve(config)
        }
        Command::Verify(args) => {
            let config = settings::load(&overrides)?;
            verify::run(&config, &args)
        }
        Command::Query(args) => {
            let config = settings::load(&overrides)?;
            query::run(&config, &args)
        }
        Command::Export(args) => {
            let config = settings::load(&overrides)?;
            export::export(&config, &args)
        }
        Command::VerifyBundle(args) => export::verify_bundle(&args),
        Command::Report(args) => {
            let config = settings::load(&overrides)?;
            report::report(&config, &args)
        }
        Command::VerifyReport(args) => {
            let config = settings::load(&overrides)?;
            report::verify_report_file(&config, &args)
        }
        Command::Bench(args) => {
            let config = settings::load(&overrides)?;
            bench::run(&config, &args)
        }
        Command::Keys(args) => {
            let config = settings::load(&overrides)?;
            keys::run(&config, &args)
        }
        Command::Retention(args) => {
            let config = settings::load(&overrides)?;
            retention::run(&config, &args)
        }
        Command::Worker(args) => {
            let config = settings::load(&overrides)?;
            worker::run_worker(config, &args)
        }
        Command::Dlq(args) => {
            let config = settings::load(&overrides)?;
            worker::run_dlq(&config, &args)
        }
        Command::Spool(args) => {
            let config = settings::load(&overrides)?;
            spool::run(&config, &args)
        }
    }
}

fn serve(config: vellum_server::ServerConfig) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vellum-http")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let signal = shutdown_signal();
        let mut server = vellum_server::start(config).await?;
        if let Some(path) = &server.admin_key_file {
            eprintln!(
                "Bootstrap admin API key written to {} (mode 0600).",
                path.display()
            );
        }
        eprintln!(
            "Vellum listening on {}://{}",
            if server.https { "https" } else { "http" },
            server.addr
        );
        let stop = server.take_stop();
        tokio::spawn(async move {
            signal.await;
            tracing::info!("shutdown signal received; draining");
            if let Some(stop) = stop {
                let _ = stop.send(());
            }
        });
        server.wait().await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Registers for SIGTERM and SIGINT at once and returns a future that completes on the first
/// of them. Registering before the server starts matters: a signal that arrives once the port
/// answers but before a lazily registered handler exists would take the default action and
/// kill the process instead of draining it.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let interrupt = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, interrupt) {
                (Some(mut term), Some(mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                (Some(mut only), None) | (None, Some(mut only)) => {
                    only.recv().await;
                }
                (None, None) => std::future::pending::<()>().await,
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
