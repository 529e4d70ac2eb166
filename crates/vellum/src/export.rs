//! `vellum export --bundle FILE` (through a running server, so the read is authenticated and
//! audited) and `vellum verify-bundle FILE` (offline: no server, no secret, no network).

use anyhow::{Context, bail};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use vellum_core::bundle::BundleVerifier;
use vellum_core::checkpoint::CheckpointKey;
use vellum_server::ServerConfig;

#[derive(Debug, clap::Args)]
pub(crate) struct ExportArgs {
    /// Write a verifiable bundle (events, checkpoint, inclusion proofs, public keys) to FILE.
    #[arg(long, value_name = "FILE")]
    bundle: PathBuf,
    /// Server URL (default: http://<listen address>).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// API key (default: VELLUM_API_KEY, then <data-dir>/admin.key).
    #[arg(long, env = "VELLUM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Filters as NAME=VALUE, any of SPEC §5 (principalId, patientId, from, to, q, …).
    #[arg(value_name = "NAME=VALUE")]
    filters: Vec<String>,
}

pub(crate) fn export(config: &ServerConfig, args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let key = crate::query::api_key(config, args.api_key.as_deref())?;
    let url = format!(
        "{}/v1/export",
        crate::query::base_url(config, args.url.as_deref())
    );
    let mut params: Vec<(String, String)> = vec![("format".into(), "bundle".into())];
    for filter in &args.filters {
        let Some((name, value)) = filter.split_once('=') else {
            bail!("filter {filter:?} must be NAME=VALUE, e.g. patientId=p-1");
        };
        params.push((name.to_owned(), value.to_owned()));
    }
    // Written beside the target and renamed at the end, so FILE is never a partial bundle.
    let partial = args.bundle.with_extension("partial");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let written = runtime.block_on(async {
        let mut response = reqwest::Client::new()
            .get(&url)
            .bearer_auth(&key)
            .query(&params)
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let status = response.status();
        if !status.is_success() {
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            let message = body
                .pointer("/error/message")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("no message");
            bail!("server answered {status}: {message}");
        }
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(&partial)
                .with_context(|| format!("creating {}", partial.display()))?,
        );
        let mut bytes = 0u64;
        let mut tail: Vec<u8> = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .context("the export stream was cut")?
        {
            file.write_all(&chunk)?;
            bytes += chunk.len() as u64;
            tail.extend_from_slice(&chunk);
            if tail.len() > 256 {
                tail.drain(..tail.len() - 256);
            }
        }
        let mut file = file.into_inner().map_err(|e| e.into_error())?;
        file.flush()?;
        file.sync_all()?;
        let tail = String::from_utf8_lossy(&tail);
        if !tail
            .trim_end()
            .rsplit('\n')
            .next()
            .unwrap_or("")
            .contains("\"end\":true")
        {
            bail!("the export stream ended without its end line; the bundle is incomplete");
        }
        Ok(bytes)
    });
    let bytes = match written {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, &args.bundle)
        .with_context(|| format!("renaming to {}", args.bundle.display()))?;
    eprintln!(
        "wrote {} ({bytes} bytes); check it anywhere with `vellum verify-bundle {}`",
        args.bundle.display(),
        args.bundle.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub(crate) struct VerifyBundleArgs {
    /// The bundle file.
    file: PathBuf,
    /// Trust only this checkpoint public key (base64, or a signed-note verifier key); repeat
    /// for rotated keys. Without it the bundle's own keys are used, which proves integrity only
    /// if you compare their key id with the one the operator publishes.
    #[arg(long, value_name = "KEY")]
    public_key: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn verify_bundle(args: &VerifyBundleArgs) -> anyhow::Result<ExitCode> {
    let keys = args
        .public_key
        .iter()
        .map(|k| CheckpointKey::parse(k).with_context(|| format!("--public-key {k}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("opening {}", args.file.display()))?;
    let mut verifier = BundleVerifier::new(keys);
    for line in std::io::BufReader::new(file).lines() {
        let line = line.with_context(|| format!("reading {}", args.file.display()))?;
        verifier.line(&line);
    }
    let report = verifier.finish();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for (log, size, key_id) in &report.checkpoints {
            println!("checkpoint log {log} size {size}: signature OK (key {key_id})");
        }
        for failure in &report.failures {
            println!("FAIL {failure}");
        }
        println!(
            "{}: {} of {} events verified against signed checkpoints",
            if report.ok { "OK" } else { "FAILED" },
            report.events_verified,
            report.events
        );
        if report.keys_from_bundle && report.ok {
            let ids: Vec<&str> = report.checkpoints.iter().map(|c| c.2.as_str()).collect();
            println!(
                "note: trusted the public key carried in the bundle (key id {}); compare it with the operator's published key, or pass --public-key",
                ids.join(", ")
            );
        }
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
