//! `vellum report` (through a running server: the report needs the search index, the signing
//! key and an audited read) and `vellum verify-report` (offline).

use anyhow::{Context, bail};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use vellum_core::checkpoint::CheckpointKey;
use vellum_core::report::{ComplianceReport, verify_report};
use vellum_server::ServerConfig;

#[derive(Debug, clap::Args)]
pub(crate) struct ReportArgs {
    /// HIPAA, GDPR, LGPD, SOX or GENERAL.
    #[arg(long = "type", value_name = "TYPE")]
    report_type: String,
    /// Period start (RFC 3339, inclusive).
    #[arg(long)]
    from: String,
    /// Period end (RFC 3339, exclusive).
    #[arg(long)]
    to: String,
    /// json (default) or pdf.
    #[arg(long, default_value = "json")]
    format: String,
    /// Limit to one organization.
    #[arg(long, value_name = "ORG")]
    organization: Option<String>,
    /// Where to write (default: standard output).
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Server URL (default: http://<listen address>).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// API key (default: VELLUM_API_KEY, then <data-dir>/admin.key).
    #[arg(long, env = "VELLUM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

pub(crate) fn report(config: &ServerConfig, args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let key = crate::query::api_key(config, args.api_key.as_deref())?;
    let url = format!(
        "{}/v1/reports",
        crate::query::base_url(config, args.url.as_deref())
    );
    let body = serde_json::json!({
        "type": args.report_type,
        "from": args.from,
        "to": args.to,
        "format": args.format,
        "organizationId": args.organization,
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bytes = runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(&url)
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let status = response.status();
        let bytes = response.bytes().await.context("reading the report")?;
        if !status.is_success() {
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let message = body
                .pointer("/error/message")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("no message");
            let path = body
                .pointer("/error/details/0/path")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("");
            bail!("server answered {status}: {message} {path}");
        }
        Ok(bytes)
    })?;
    match &args.output {
        Some(path) => {
            std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {} ({} bytes)", path.display(), bytes.len());
        }
        None => std::io::stdout().lock().write_all(&bytes)?,
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub(crate) struct VerifyReportArgs {
    /// The report (JSON, as `vellum report` writes it).
    file: PathBuf,
    /// Trust only this public key (base64, or a signed-note verifier key); default: the key of
    /// the data directory's `checkpoint.key`.
    #[arg(long, value_name = "KEY")]
    public_key: Vec<String>,
}

pub(crate) fn verify_report_file(
    config: &ServerConfig,
    args: &VerifyReportArgs,
) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let report: ComplianceReport = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a Vellum compliance report", args.file.display()))?;
    let keys: Vec<CheckpointKey> = if args.public_key.is_empty() {
        let path = config.checkpoint_key_file.clone().unwrap_or_else(|| {
            config
                .data_dir
                .join(vellum_server::bootstrap::CHECKPOINT_KEY_FILE)
        });
        let seed = vellum_server::bootstrap::read_checkpoint_seed(&path).with_context(|| {
            format!(
                "no --public-key given and cannot read {}; pass the key from GET /v1/keys",
                path.display()
            )
        })?;
        vec![
            vellum_core::checkpoint::CheckpointSigner::from_seed(
                &config.checkpoint_key_name,
                &seed,
            )?
            .public(),
        ]
    } else {
        args.public_key
            .iter()
            .map(|k| CheckpointKey::parse(k).with_context(|| format!("--public-key {k}")))
            .collect::<anyhow::Result<_>>()?
    };
    match verify_report(&report, &keys) {
        Ok(key) => {
            let kind = serde_json::to_value(report.report_type)?;
            println!(
                "OK: {} report {}..{}, score {}%, signed by key {}",
                kind.as_str().unwrap_or("?"),
                report.from,
                report.to,
                report.compliance_score,
                key.key_id_hex()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("FAILED: {e}");
            Ok(ExitCode::from(1))
        }
    }
}
