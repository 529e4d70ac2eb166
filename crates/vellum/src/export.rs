//! `vellum export --bundle FILE` / `--format F [--output FILE]` (through a running server, so
//! the read is authenticated and audited) and `vellum verify-bundle FILE` (offline: no server, no secret, no network).

use anyhow::{Context, bail};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use vellum_core::bundle::BundleVerifier;
use vellum_core::checkpoint::CheckpointKey;
use vellum_server::ServerConfig;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["bundle", "format"])))]
pub(crate) struct ExportArgs {
    /// Write a verifiable bundle (events, checkpoint, inclusion proofs, public keys) to FILE.
    #[arg(long, value_name = "FILE")]
    bundle: Option<PathBuf>,
    /// Export format: ndjson, json, csv, fhir, pdf (or bundle).
    #[arg(long, value_name = "FORMAT")]
    format: Option<String>,
    /// Where to write (default: standard output; with --bundle, the bundle file).
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
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
    let format = match (&args.bundle, &args.format) {
        (Some(_), _) => "bundle".to_owned(),
        (None, Some(f)) => f.clone(),
        (None, None) => bail!("give --bundle FILE or --format FORMAT"),
    };
    let target: Option<PathBuf> = args.bundle.clone().or_else(|| args.output.clone());
    let mut params: Vec<(String, String)> = vec![("format".into(), format.clone())];
    for filter in &args.filters {
        let Some((name, value)) = filter.split_once('=') else {
            bail!("filter {filter:?} must be NAME=VALUE, e.g. patientId=p-1");
        };
        params.push((name.to_owned(), value.to_owned()));
    }
    // Written beside the target and renamed at the end, so FILE is never a partial export.
    let partial = target.as_ref().map(|t| t.with_extension("partial"));
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
        let sink: Box<dyn Write> = match &partial {
            Some(path) => Box::new(
                std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?,
            ),
            None => Box::new(std::io::stdout().lock()),
        };
        let mut file = std::io::BufWriter::new(sink);
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
        file.flush()?;
        drop(file);
        if let Some(path) = &partial {
            std::fs::File::open(path)?.sync_all()?;
        }
        let tail = String::from_utf8_lossy(&tail);
        let last_line = tail.trim_end().rsplit('\n').next().unwrap_or("");
        if format == "bundle" && !last_line.contains("\"end\":true") {
            bail!("the export stream ended without its end line; the bundle is incomplete");
        }
        Ok(bytes)
    });
    let bytes = match written {
        Ok(b) => b,
        Err(e) => {
            if let Some(path) = &partial {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
    };
    if let (Some(path), Some(target)) = (&partial, &target) {
        std::fs::rename(path, target)
            .with_context(|| format!("renaming to {}", target.display()))?;
        if format == "bundle" {
            eprintln!(
                "wrote {} ({bytes} bytes); check it anywhere with `vellum verify-bundle {}`",
                target.display(),
                target.display()
            );
        } else {
            eprintln!("wrote {} ({bytes} bytes)", target.display());
        }
    }
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
