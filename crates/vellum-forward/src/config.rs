//! Sink configuration: what `[[forward.sinks]]` in `vellum.toml` deserializes into.
//!
//! Keys are camelCase, and unknown keys are refused (a typo must not silently change where
//! audit events go). A sink's Debug output shows only names of environment variables, never
//! a secret: secrets are read from the environment when the forwarder starts.

use crate::error::ForwardError;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use std::path::PathBuf;
use vellum_core::forward::filter::SinkFilter;
use vellum_core::forward::syslog::{DEFAULT_ENTERPRISE_ID, FACILITY_LOG_AUDIT, SyslogConfig};

/// Default events per delivery.
pub const DEFAULT_BATCH_SIZE: usize = 100;
/// Largest allowed `batchSize`.
pub const MAX_BATCH_SIZE: usize = 10_000;
/// Default first retry delay.
pub const DEFAULT_RETRY_INITIAL_MS: u64 = 500;
/// Default longest retry delay.
pub const DEFAULT_RETRY_MAX_MS: u64 = 60_000;
/// Default timeout of one delivery (connect + send + answer).
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// One sink: where events go, which ones, and how hard to try.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkConfig {
    /// `[a-z0-9_-]{1,64}`, unique among the sinks: it keys the cursor and the dead letters in
    /// the store, so renaming a sink starts it afresh.
    pub name: String,
    /// The sink type and its settings (`type = "webhook" | "syslog" | "splunk" | "ocsf" |
    /// "fhir"`).
    #[serde(flatten)]
    pub kind: SinkKind,
    /// Which events this sink forwards (default: all).
    pub filter: SinkFilter,
    /// Where a sink with no stored cursor starts.
    pub start: StartAt,
    /// Events per delivery (1..=10 000, default 100).
    pub batch_size: usize,
    /// First retry delay in milliseconds (default 500).
    pub retry_initial_ms: u64,
    /// Longest retry delay in milliseconds (default 60 000).
    pub retry_max_ms: u64,
    /// Timeout of one delivery attempt in milliseconds (default 10 000).
    pub timeout_ms: u64,
}

/// Where a new sink (one without a stored cursor) starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// The whole log, from `seq` 0 (default).
    #[default]
    Beginning,
    /// Only events committed after the sink's first start (logs created later are forwarded
    /// from their beginning, since all of them is "after").
    Now,
}

/// Syslog transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogTransport {
    /// TCP with RFC 6587 octet counting.
    Tcp,
    /// TLS (RFC 5425) with octet counting.
    Tls,
    /// One UDP datagram per message (RFC 5426); can lose messages.
    Udp,
}

/// The sink types and their settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "lowercase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum SinkKind {
    /// `POST url` with `{"events":[…]}` and a `Vellum-Signature` HMAC header.
    Webhook {
        /// Receiver URL (`http://` or `https://`).
        url: String,
        /// Name of the environment variable holding the HMAC secret (required).
        secret_env: String,
        /// PEM file of the CA certificates to trust for `https` (default: the system store).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<PathBuf>,
    },
    /// RFC 5424 messages over TCP or TLS (octet counting) or UDP.
    Syslog {
        /// `tcp`, `tls` or `udp`.
        transport: SyslogTransport,
        /// `host:port` (`[v6]:port` for an IPv6 literal).
        address: String,
        /// PEM file of the CA certificates to trust (`tls` only; default: the system store).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<PathBuf>,
        /// TLS server name to verify (`tls` only; default: the host of `address`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server_name: Option<String>,
        /// APP-NAME (default `vellum`).
        #[serde(default = "default_app_name")]
        app_name: String,
        /// Syslog facility 0..=23 (default 13, "log audit").
        #[serde(default = "default_facility")]
        facility: u8,
        /// Private enterprise number in the SD-ID `vellum@<PEN>` (default 32473).
        #[serde(default = "default_enterprise_id")]
        enterprise_id: u32,
    },
    /// Splunk HTTP Event Collector: `POST {url}/services/collector/event`.
    Splunk {
        /// HEC base URL, e.g. `https://splunk.example:8088`.
        url: String,
        /// Name of the environment variable holding the HEC token (required).
        token_env: String,
        /// HEC index (default: the token's default index).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<String>,
        /// HEC sourcetype (default `vellum:audit`).
        #[serde(default = "default_sourcetype")]
        sourcetype: String,
        /// PEM file of the CA certificates to trust for `https` (default: the system store).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<PathBuf>,
    },
    /// `POST url` with a JSON array of OCSF 1.1.0 events.
    Ocsf {
        /// Receiver URL.
        url: String,
        /// Name of the environment variable holding a bearer token, if the receiver wants one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_env: Option<String>,
        /// PEM file of the CA certificates to trust for `https` (default: the system store).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<PathBuf>,
    },
    /// `POST url` (a FHIR R4 base) with a `batch` Bundle of `AuditEvent` entries.
    Fhir {
        /// FHIR base URL.
        url: String,
        /// Name of the environment variable holding a bearer token, if the server wants one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_env: Option<String>,
        /// PEM file of the CA certificates to trust for `https` (default: the system store).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<PathBuf>,
    },
}

fn default_app_name() -> String {
    "vellum".to_owned()
}
fn default_facility() -> u8 {
    FACILITY_LOG_AUDIT
}
fn default_enterprise_id() -> u32 {
    DEFAULT_ENTERPRISE_ID
}
fn default_sourcetype() -> String {
    "vellum:audit".to_owned()
}

impl SinkKind {
    /// The `type` value: `webhook`, `syslog`, `splunk`, `ocsf` or `fhir`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Webhook { .. } => "webhook",
            Self::Syslog { .. } => "syslog",
            Self::Splunk { .. } => "splunk",
            Self::Ocsf { .. } => "ocsf",
            Self::Fhir { .. } => "fhir",
        }
    }
}

/// Keys of [`SinkConfig`] outside its kind.
const COMMON_KEYS: [&str; 7] = [
    "name",
    "filter",
    "start",
    "batchSize",
    "retryInitialMs",
    "retryMaxMs",
    "timeoutMs",
];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Common {
    name: String,
    #[serde(default)]
    filter: SinkFilter,
    #[serde(default)]
    start: StartAt,
    #[serde(default = "batch_size")]
    batch_size: usize,
    #[serde(default = "retry_initial_ms")]
    retry_initial_ms: u64,
    #[serde(default = "retry_max_ms")]
    retry_max_ms: u64,
    #[serde(default = "timeout_ms")]
    timeout_ms: u64,
}

fn batch_size() -> usize {
    DEFAULT_BATCH_SIZE
}
fn retry_initial_ms() -> u64 {
    DEFAULT_RETRY_INITIAL_MS
}
fn retry_max_ms() -> u64 {
    DEFAULT_RETRY_MAX_MS
}
fn timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

// Hand-written because serde does not support `deny_unknown_fields` together with `flatten`:
// the table is split into the common keys and the kind's keys, and each part is deserialized
// strictly.
impl<'de> Deserialize<'de> for SinkConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let table = Map::<String, Value>::deserialize(deserializer)?;
        let name = table
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let (common, kind): (Map<String, Value>, Map<String, Value>) = table
            .into_iter()
            .partition(|(k, _)| COMMON_KEYS.contains(&k.as_str()));
        let common: Common = serde_json::from_value(Value::Object(common))
            .map_err(|e| D::Error::custom(format!("sink {name:?}: {e}")))?;
        let kind: SinkKind = serde_json::from_value(Value::Object(kind))
            .map_err(|e| D::Error::custom(format!("sink {name:?}: {e}")))?;
        Ok(Self {
            name: common.name,
            kind,
            filter: common.filter,
            start: common.start,
            batch_size: common.batch_size,
            retry_initial_ms: common.retry_initial_ms,
            retry_max_ms: common.retry_max_ms,
            timeout_ms: common.timeout_ms,
        })
    }
}

impl SinkConfig {
    /// A sink of `kind` named `name` with every other setting at its default.
    pub fn new(name: impl Into<String>, kind: SinkKind) -> Self {
        Self {
            name: name.into(),
            kind,
            filter: SinkFilter::default(),
            start: StartAt::default(),
            batch_size: DEFAULT_BATCH_SIZE,
            retry_initial_ms: DEFAULT_RETRY_INITIAL_MS,
            retry_max_ms: DEFAULT_RETRY_MAX_MS,
            timeout_ms: DEFAULT_TIMEOUT_MS,
        }
    }

    /// Checks the settings without touching the environment or the network. The error names
    /// the field (`url: …`); [`validate_sinks`] prefixes it with `forward.sinks[i].`.
    pub fn validate(&self) -> Result<(), ForwardError> {
        let bad = |field: &str, message: String| Err(ForwardError::config(field, message));
        if !valid_name(&self.name) {
            return bad(
                "name",
                format!("{:?} must be 1 to 64 of a-z, 0-9, '_' and '-'", self.name),
            );
        }
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_SIZE {
            return bad(
                "batchSize",
                format!("must be 1..={MAX_BATCH_SIZE}, not {}", self.batch_size),
            );
        }
        if self.retry_initial_ms == 0 {
            return bad("retryInitialMs", "must be at least 1".into());
        }
        if self.retry_max_ms < self.retry_initial_ms {
            return bad(
                "retryMaxMs",
                format!(
                    "must be at least retryInitialMs ({}), not {}",
                    self.retry_initial_ms, self.retry_max_ms
                ),
            );
        }
        if self.timeout_ms == 0 || self.timeout_ms > 600_000 {
            return bad(
                "timeoutMs",
                format!("must be 1..=600000, not {}", self.timeout_ms),
            );
        }
        if let Err(e) = self.filter.validate() {
            return bad("filter", e);
        }
        match &self.kind {
            SinkKind::Webhook {
                url, secret_env, ..
            } => {
                check_url("url", url)?;
                check_env_name("secretEnv", secret_env)?;
            }
            SinkKind::Splunk {
                url,
                token_env,
                index,
                sourcetype,
                ..
            } => {
                check_url("url", url)?;
                check_env_name("tokenEnv", token_env)?;
                if index.as_deref().is_some_and(str::is_empty) {
                    return bad("index", "must not be empty (leave it out instead)".into());
                }
                if sourcetype.is_empty() {
                    return bad("sourcetype", "must not be empty".into());
                }
            }
            SinkKind::Ocsf { url, token_env, .. } | SinkKind::Fhir { url, token_env, .. } => {
                check_url("url", url)?;
                if let Some(name) = token_env {
                    check_env_name("tokenEnv", name)?;
                }
            }
            SinkKind::Syslog {
                transport,
                address,
                ca_file,
                server_name,
                app_name,
                facility,
                enterprise_id,
            } => {
                let (host, _) =
                    split_address(address).map_err(|e| ForwardError::config("address", e))?;
                if *transport != SyslogTransport::Tls {
                    if ca_file.is_some() {
                        return bad("caFile", "only for transport \"tls\"".into());
                    }
                    if server_name.is_some() {
                        return bad("serverName", "only for transport \"tls\"".into());
                    }
                } else {
                    let name = server_name.as_deref().unwrap_or(host);
                    if rustls_pki_types::ServerName::try_from(name).is_err() {
                        return bad(
                            if server_name.is_some() {
                                "serverName"
                            } else {
                                "address"
                            },
                            format!("{name:?} is not a DNS name or IP address TLS can verify"),
                        );
                    }
                }
                let probe = SyslogConfig {
                    app_name: app_name.clone(),
                    hostname: "vellum".into(),
                    facility: *facility,
                    enterprise_id: *enterprise_id,
                };
                if let Err(e) = probe.validate() {
                    let field = if e.contains("facility") {
                        "facility"
                    } else if e.contains("enterprise") {
                        "enterpriseId"
                    } else {
                        "appName"
                    };
                    return bad(field, e);
                }
            }
        }
        Ok(())
    }
}

/// Checks every sink and that names are unique; errors read `forward.sinks[2].url: …`.
pub fn validate_sinks(sinks: &[SinkConfig]) -> Result<(), ForwardError> {
    for (i, sink) in sinks.iter().enumerate() {
        sink.validate().map_err(|e| e.at_sink(i))?;
        if let Some(first) = sinks[..i].iter().position(|s| s.name == sink.name) {
            return Err(ForwardError::config(
                format!("forward.sinks[{i}].name"),
                format!(
                    "{:?} is already the name of forward.sinks[{first}]",
                    sink.name
                ),
            ));
        }
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn check_url(field: &str, url: &str) -> Result<(), ForwardError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| ForwardError::config(field, format!("{url:?} is not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(ForwardError::config(
                field,
                format!("{url:?} must start with http:// or https://"),
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(ForwardError::config(field, format!("{url:?} has no host")));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        // Not quoted back: the part before '@' is a credential.
        return Err(ForwardError::config(
            field,
            "must not carry credentials (user:password@); name an environment variable in \
             secretEnv/tokenEnv instead",
        ));
    }
    Ok(())
}

fn check_env_name(field: &str, name: &str) -> Result<(), ForwardError> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ForwardError::config(
            field,
            // The value is not quoted back: someone may have pasted the secret itself here.
            "must name an environment variable ([A-Za-z_][A-Za-z0-9_]*) that holds the secret; \
             the secret itself does not go in the configuration"
                .to_owned(),
        ))
    }
}

/// `host:port` or `[v6]:port` → (host without brackets, port).
pub(crate) fn split_address(address: &str) -> Result<(&str, u16), String> {
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, rest) = rest
            .split_once(']')
            .ok_or_else(|| format!("{address:?}: missing ']'"))?;
        let port = rest
            .strip_prefix(':')
            .ok_or_else(|| format!("{address:?} must be host:port"))?;
        (host, port)
    } else {
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| format!("{address:?} must be host:port"))?;
        if host.contains(':') {
            return Err(format!(
                "{address:?}: write an IPv6 address in brackets, [addr]:port"
            ));
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(format!("{address:?} has no host"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{address:?}: port must be 1..=65535"))?;
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn toml_round_trip_with_defaults() {
        let text = r#"
            name = "siem"
            type = "syslog"
            transport = "tls"
            address = "siem.example:6514"
            caFile = "/etc/vellum/siem-ca.pem"
            filter = { minSeverity = "high" }
        "#;
        let sink: SinkConfig = toml::from_str(text).unwrap();
        assert_eq!(sink.batch_size, DEFAULT_BATCH_SIZE);
        assert_eq!(sink.start, StartAt::Beginning);
        match &sink.kind {
            SinkKind::Syslog {
                transport,
                app_name,
                facility,
                ..
            } => {
                assert_eq!(*transport, SyslogTransport::Tls);
                assert_eq!(app_name, "vellum");
                assert_eq!(*facility, 13);
            }
            other => panic!("{other:?}"),
        }
        sink.validate().unwrap();
        let json = serde_json::to_value(&sink).unwrap();
        assert_eq!(json["type"], "syslog");
        let back: SinkConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, sink);
    }

    #[test]
    fn unknown_keys_are_refused_in_both_parts() {
        let kind_typo =
            r#"{"name":"a","type":"webhook","url":"http://x","secretEnv":"S","urll":"y"}"#;
        let err = serde_json::from_str::<SinkConfig>(kind_typo).unwrap_err();
        assert!(err.to_string().contains("urll"), "{err}");
        let common_typo =
            r#"{"name":"a","type":"webhook","url":"http://x","secretEnv":"S","batchsize":5}"#;
        let err = serde_json::from_str::<SinkConfig>(common_typo).unwrap_err();
        assert!(err.to_string().contains("batchsize"), "{err}");
        let no_type = r#"{"name":"a","url":"http://x"}"#;
        assert!(serde_json::from_str::<SinkConfig>(no_type).is_err());
        let filter_typo =
            r#"{"name":"a","type":"ocsf","url":"http://x","filter":{"action":["x"]}}"#;
        assert!(serde_json::from_str::<SinkConfig>(filter_typo).is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let ok = SinkConfig::new(
            "hook",
            SinkKind::Webhook {
                url: "https://hooks.example/vellum".into(),
                secret_env: "VELLUM_HOOK_SECRET".into(),
                ca_file: None,
            },
        );
        ok.validate().unwrap();
        let mut bad_url = ok.clone();
        bad_url.kind = SinkKind::Ocsf {
            url: "ftp://x".into(),
            token_env: None,
            ca_file: None,
        };
        let mut with_credentials = ok.clone();
        with_credentials.kind = SinkKind::Fhir {
            url: "https://admin:pw@fhir.example/r4".into(),
            token_env: None,
            ca_file: None,
        };
        let err = with_credentials.validate().unwrap_err().to_string();
        assert!(err.starts_with("url: ") && !err.contains("pw"), "{err}");
        let mut bad_name = ok.clone();
        bad_name.name = "Hook".into();
        let mut secret_inline = ok.clone();
        secret_inline.kind = SinkKind::Webhook {
            url: "https://x".into(),
            secret_env: "s3cr3t value!".into(),
            ca_file: None,
        };
        let mut bad_syslog = ok.clone();
        bad_syslog.name = "sys".into();
        bad_syslog.kind = SinkKind::Syslog {
            transport: SyslogTransport::Udp,
            address: "siem.example".into(),
            ca_file: None,
            server_name: None,
            app_name: "vellum".into(),
            facility: 13,
            enterprise_id: 32473,
        };
        let err = validate_sinks(&[ok.clone(), bad_url])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("forward.sinks[1].url: "), "{err}");
        let err = validate_sinks(&[bad_name]).unwrap_err().to_string();
        assert!(err.starts_with("forward.sinks[0].name: "), "{err}");
        let err = validate_sinks(&[secret_inline]).unwrap_err().to_string();
        assert!(err.starts_with("forward.sinks[0].secretEnv: "), "{err}");
        assert!(!err.contains("s3cr3t"), "the value is quoted back: {err}");
        let err = validate_sinks(&[bad_syslog]).unwrap_err().to_string();
        assert!(err.starts_with("forward.sinks[0].address: "), "{err}");
        let err = validate_sinks(&[ok.clone(), ok]).unwrap_err().to_string();
        assert!(err.starts_with("forward.sinks[1].name: "), "{err}");
    }

    #[test]
    fn addresses() {
        assert_eq!(split_address("a.example:514").unwrap(), ("a.example", 514));
        assert_eq!(split_address("[::1]:6514").unwrap(), ("::1", 6514));
        assert!(split_address("::1:514").is_err());
        assert!(split_address("host:0").is_err());
        assert!(split_address(":514").is_err());
    }
}
