//! `vellum query`: searches through a running server's API, so that the read is
//! authenticated, scoped to the key's organization and itself audited.

use anyhow::{Context, bail};
use serde_json::Value;
use std::process::ExitCode;
use vellum_server::ServerConfig;

#[derive(Debug, clap::Args)]
pub(crate) struct QueryArgs {
    /// Server URL (default: http://<listen address>).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// API key (default: VELLUM_API_KEY, then <data-dir>/admin.key).
    #[arg(long, env = "VELLUM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Filters as NAME=VALUE, any of SPEC §5 (principalId, action, from, q, …).
    #[arg(value_name = "NAME=VALUE")]
    filters: Vec<String>,
    /// Events per page (1..=1000).
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Follow cursors and print every page.
    #[arg(long)]
    all: bool,
    /// Print events as NDJSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn api_key(config: &ServerConfig, given: Option<&str>) -> anyhow::Result<String> {
    if let Some(key) = given {
        return Ok(key.trim().to_owned());
    }
    let path = config
        .data_dir
        .join(vellum_server::bootstrap::ADMIN_KEY_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no --api-key or VELLUM_API_KEY, and cannot read {}",
            path.display()
        )
    })?;
    Ok(text.trim().to_owned())
}

pub(crate) fn base_url(config: &ServerConfig, given: Option<&str>) -> String {
    given
        .map(|u| u.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| format!("http://{}", config.listen))
}

fn cell(event: &Value, pointer: &str) -> String {
    match event.pointer(pointer) {
        Some(Value::String(s)) => s.replace(['\n', '\t', '\r'], " "),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        format!("{text:width$}")
    } else {
        let cut: String = text.chars().take(width.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

pub(crate) fn run(config: &ServerConfig, args: &QueryArgs) -> anyhow::Result<ExitCode> {
    let key = api_key(config, args.api_key.as_deref())?;
    let url = format!("{}/v1/events", base_url(config, args.url.as_deref()));
    let mut params: Vec<(String, String)> = Vec::new();
    for filter in &args.filters {
        let Some((name, value)) = filter.split_once('=') else {
            bail!("filter {filter:?} must be NAME=VALUE, e.g. principalId=dr-7");
        };
        params.push((name.to_owned(), value.to_owned()));
    }
    params.push(("limit".into(), args.limit.to_string()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = reqwest::Client::new();
    if !args.json {
        println!(
            "{} {} {} {} {} CLASS",
            truncate("TIMESTAMP", 27),
            truncate("PRINCIPAL", 18),
            truncate("ACTION", 28),
            truncate("STATUS", 8),
            truncate("TARGET", 26),
        );
    }
    let mut cursor: Option<String> = None;
    let mut shown = 0usize;
    loop {
        let mut page_params = params.clone();
        if let Some(c) = &cursor {
            page_params.push(("cursor".into(), c.clone()));
        }
        let response = runtime
            .block_on(
                client
                    .get(&url)
                    .bearer_auth(&key)
                    .query(&page_params)
                    .send(),
            )
            .with_context(|| format!("cannot reach {url}"))?;
        let status = response.status();
        let body: Value = runtime
            .block_on(response.json())
            .context("the server's answer is not JSON")?;
        if !status.is_success() {
            let message = body
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("no message");
            bail!("server answered {status}: {message}");
        }
        let events = body["events"].as_array().cloned().unwrap_or_default();
        for event in &events {
            if args.json {
                println!("{event}");
            } else {
                let target = format!(
                    "{}/{}",
                    cell(event, "/targetResourceType"),
                    cell(event, "/targetResourceId")
                );
                println!(
                    "{} {} {} {} {} {}",
                    truncate(&cell(event, "/timestamp"), 27),
                    truncate(&cell(event, "/principalId"), 18),
                    truncate(&cell(event, "/action"), 28),
                    truncate(&cell(event, "/status"), 8),
                    truncate(&target, 26),
                    cell(event, "/dataClassification"),
                );
            }
        }
        shown += events.len();
        cursor = body["nextCursor"].as_str().map(str::to_owned);
        if !args.all || cursor.is_none() {
            break;
        }
    }
    if !args.json {
        eprintln!(
            "{shown} events{}",
            if cursor.is_some() {
                " (more: use --all)"
            } else {
                ""
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
