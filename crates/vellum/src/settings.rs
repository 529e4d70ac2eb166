//! Configuration resolution: flags, then `vellum.toml`, then the environment (SPEC §10), then
//! defaults. Later layers only fill what earlier ones left unset.

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde_json::{Map, Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use vellum_server::ServerConfig;

/// Values given as command-line flags.
#[derive(Debug, Default)]
pub(crate) struct Overrides {
    pub(crate) config_file: Option<PathBuf>,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
    pub(crate) tls_client_ca: Option<PathBuf>,
}

fn parse_bool(name: &str, value: &str) -> anyhow::Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => bail!("{name}={value:?}: expected true or false"),
    }
}

/// The environment variables of SPEC §10, as a partial configuration.
fn from_env() -> anyhow::Result<Value> {
    let mut config = Map::new();
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let require_tls = match var("AUDIT_REQUIRE_TLS") {
        Some(v) => parse_bool("AUDIT_REQUIRE_TLS", &v)?,
        None => false,
    };
    config.insert("requireTls".into(), Value::Bool(require_tls));
    let urls: Vec<(&str, String)> = ["AUDIT_DB_URL", "AUDIT_REDIS_URL"]
        .into_iter()
        .filter_map(|name| var(name).map(|url| (name, url)))
        .collect();
    let url_refs: Vec<(&str, &str)> = urls.iter().map(|(n, u)| (*n, u.as_str())).collect();
    vellum_server::config::check_transport_urls(require_tls, &url_refs)?;
    for (name, key) in [
        ("AUDIT_DB_URL", "dbUrl"),
        ("AUDIT_REDIS_URL", "redisUrl"),
        ("AUDIT_DB_SCHEMA", "dbSchema"),
        ("AUDIT_QUEUE_NAME", "queueName"),
        ("VELLUM_NODE_ID", "nodeId"),
    ] {
        if let Some(value) = var(name) {
            config.insert(key.into(), Value::String(value));
        }
    }
    if let Some(secret) = var("AUDIT_CRYPTO_SECRET") {
        config.insert("cryptoSecret".into(), Value::String(secret));
    }
    if let Some(keys) = var("AUDIT_CRYPTO_KEYS") {
        config.insert("cryptoKeys".into(), Value::String(keys));
    }
    if let Some(v) = var("AUDIT_ENABLE_SIGNATURES") {
        config.insert(
            "enableSignatures".into(),
            Value::Bool(parse_bool("AUDIT_ENABLE_SIGNATURES", &v)?),
        );
    }
    if let Some(v) = var("AUDIT_MAX_EVENT_SIZE") {
        let bytes: u64 = v
            .trim()
            .parse()
            .with_context(|| format!("AUDIT_MAX_EVENT_SIZE={v:?}: expected a number of bytes"))?;
        config.insert("validation".into(), json!({"maxEventBytes": bytes}));
    }
    if let Some(dir) = var("VELLUM_DATA_DIR") {
        config.insert("dataDir".into(), Value::String(dir));
    }
    if let Some(listen) = var("VELLUM_LISTEN") {
        config.insert("listen".into(), Value::String(listen));
    }
    Ok(Value::Object(config))
}

/// Resolves the configuration.
pub(crate) fn load(overrides: &Overrides) -> anyhow::Result<ServerConfig> {
    let mut figment = Figment::from(Serialized::defaults(ServerConfig::default()))
        .merge(Serialized::defaults(from_env()?));
    let file = overrides.config_file.clone().or_else(|| {
        let default = PathBuf::from("vellum.toml");
        default.exists().then_some(default)
    });
    if let Some(file) = &file {
        if !file.exists() {
            bail!("configuration file {} does not exist", file.display());
        }
        figment = figment.merge(Toml::file(file));
    }
    let mut flags = Map::new();
    if let Some(dir) = &overrides.data_dir {
        flags.insert("dataDir".into(), Value::String(dir.display().to_string()));
    }
    if let Some(listen) = overrides.listen {
        flags.insert("listen".into(), Value::String(listen.to_string()));
    }
    for (name, path) in [
        ("tlsCert", &overrides.tls_cert),
        ("tlsKey", &overrides.tls_key),
        ("tlsClientCa", &overrides.tls_client_ca),
    ] {
        if let Some(path) = path {
            flags.insert(name.into(), Value::String(path.display().to_string()));
        }
    }
    figment = figment.merge(Serialized::defaults(Value::Object(flags)));
    let config: ServerConfig = figment.extract().map_err(|e| {
        anyhow::anyhow!(
            "invalid configuration{}: {e}",
            file.as_ref()
                .map(|f| format!(" (from {})", f.display()))
                .unwrap_or_default()
        )
    })?;
    if config.validation.max_event_bytes == 0 {
        bail!("validation.maxEventBytes must be at least 1");
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_toml(text: &str) -> anyhow::Result<ServerConfig> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("vellum.toml");
        std::fs::write(&file, text)?;
        load(&Overrides {
            config_file: Some(file),
            ..Overrides::default()
        })
    }

    #[test]
    fn detection_and_forwarding_come_from_vellum_toml() {
        let config = load_toml(
            r#"
[detection]
cooldownSecs = 60

[detection.failedLogins]
threshold = 10

[detection.offHours]
start = "07:00"
end = "19:00"
utcOffset = "-03:00"

[[forward.sinks]]
name = "siem"
type = "syslog"
transport = "tcp"
address = "127.0.0.1:6514"

[[forward.sinks]]
name = "soc-alerts"
type = "webhook"
url = "https://soc.example/hooks/vellum"
secretEnv = "VELLUM_SOC_SECRET"
filter = { alertsOnly = true }
"#,
        )
        .expect("loads");
        assert_eq!(config.detection.failed_logins.threshold, 10);
        assert_eq!(config.detection.cooldown_secs, 60);
        assert!(config.detection.validate().is_ok());
        // Unset settings keep their defaults.
        assert_eq!(config.detection.phi_volume.threshold, 50);
        let names: Vec<&str> = config
            .forward
            .sinks
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["siem", "soc-alerts"]);
        assert!(config.forward.sinks[1].filter.alerts_only);
        assert!(vellum_forward::validate_sinks(&config.forward.sinks).is_ok());
    }

    #[test]
    fn a_misspelt_detection_or_sink_key_is_refused() {
        let err = load_toml("[detection.failedLogins]\nthreshhold = 3\n").expect_err("typo");
        assert!(err.to_string().contains("threshhold"), "{err}");
        let err = load_toml(
            "[[forward.sinks]]\nname = \"x\"\ntype = \"syslog\"\ntransport = \"tcp\"\naddress = \"h:1\"\nadress = \"h:2\"\n",
        )
        .expect_err("typo");
        assert!(err.to_string().contains("adress"), "{err}");
    }
}
