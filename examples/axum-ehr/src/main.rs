//! Runs the EHR example against a local Vellum server:
//!
//! ```sh
//! cargo run --release -- serve          # terminal 1, from the repository root
//! cargo run -p axum-ehr                 # terminal 2, from the repository root
//! curl -s -H 'Authorization: Bearer dr-ana-token' -H 'content-type: application/json' \
//!      -d '{"name":"Maria Silva","ssn":"123-45-6789"}' http://127.0.0.1:8080/patients
//! ```
//!
//! Environment: `VELLUM_URL` (default `http://127.0.0.1:7870`), `VELLUM_API_KEY` (default: the
//! bootstrap key in `./vellum-data/admin.key`), `EHR_LISTEN` (default `127.0.0.1:8080`),
//! `EHR_SPOOL_DIR` (default `./ehr-spool`).

use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EHR_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let url = std::env::var("VELLUM_URL").unwrap_or_else(|_| "http://127.0.0.1:7870".into());
    let key = match std::env::var("VELLUM_API_KEY") {
        Ok(key) => key,
        Err(_) => std::fs::read_to_string("vellum-data/admin.key")
            .context("set VELLUM_API_KEY, or run from the directory where `vellum serve` created vellum-data/")?
            .trim()
            .to_owned(),
    };
    let listen: SocketAddr = std::env::var("EHR_LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:8080".into())
        .parse()
        .context("EHR_LISTEN must be an address like 127.0.0.1:8080")?;
    let spool = std::env::var("EHR_SPOOL_DIR").unwrap_or_else(|_| "ehr-spool".into());

    let client = vellum_client::Client::builder()
        .url(&url)
        .api_key(key)
        .spool_dir(&spool)
        .build()
        .context("starting the Vellum client")?;
    let app = axum_ehr::app(Arc::new(axum_ehr::Records::default()), client.clone());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, vellum = %url, spool = %spool, "EHR example listening");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    // Give the spool a moment to deliver; whatever is left goes out on the next start.
    if !client.drain(Duration::from_secs(10)).await {
        tracing::warn!("audit events remain in the spool; they are delivered on the next start");
    }
    client.shutdown().await;
    Ok(())
}
