//! The sinks' transports: one [`Sink`] per configured sink, sending one batch at a time and
//! saying what became of it ([`SendError`]).

use crate::config::{SinkConfig, SinkKind, SyslogTransport};
use crate::error::ForwardError;
use crate::syslog::SyslogSink;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER, USER_AGENT};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use vellum_core::export::{FhirObserver, fhir_audit_event};
use vellum_core::forward::ocsf::to_ocsf;
use vellum_core::forward::splunk::{HecConfig, hec_batch};
use vellum_core::forward::webhook::{SIGNATURE_HEADER, signature_header, webhook_body};
use vellum_http::{HttpClient, Trust};
use zeroize::Zeroizing;

/// Largest answer body read from a receiver (the rest is not needed to judge the answer).
const MAX_ANSWER_BYTES: usize = 4 << 20;
/// Characters of an answer body quoted in an error or dead letter.
const QUOTED_ANSWER: usize = 300;

/// Where secrets come from: the value of the environment variable with this name.
pub type SecretLookup<'a> = &'a dyn Fn(&str) -> Option<Zeroizing<String>>;

/// The process environment as a [`SecretLookup`].
pub fn env_secret(name: &str) -> Option<Zeroizing<String>> {
    std::env::var(name).ok().map(Zeroizing::new)
}

/// A secret read from the environment: zeroized on drop, never shown by `Debug`.
pub(crate) struct Secret(Zeroizing<String>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// Looks the secret named `name` up; `field` names the setting in errors. The value is
    /// never part of an error.
    pub(crate) fn lookup(
        field: &str,
        name: &str,
        secrets: SecretLookup<'_>,
    ) -> Result<Self, ForwardError> {
        match secrets(name) {
            Some(value) if !value.is_empty() => Ok(Self(value)),
            Some(_) => Err(ForwardError::config(
                field,
                format!("environment variable {name} is empty"),
            )),
            None => Err(ForwardError::config(
                field,
                format!("environment variable {name} is not set (or not UTF-8)"),
            )),
        }
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// `"<scheme> <secret>"` as a header value marked sensitive (hyper and `http` then keep it
    /// out of debug output and HPACK tables).
    fn header(&self, scheme: &str) -> Result<HeaderValue, SendError> {
        let text = Zeroizing::new(format!("{scheme} {}", self.expose()));
        let mut value = HeaderValue::from_str(&text).map_err(|_| SendError::Transient {
            reason: "the token holds characters a header cannot carry".into(),
            retry_after: None,
        })?;
        value.set_sensitive(true);
        Ok(value)
    }
}

/// What became of a batch that was not (entirely) delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SendError {
    /// Not delivered, try again later (connection or TLS failure, timeout, 408/425/429/5xx,
    /// a sink that is misconfigured rather than refusing these events: 401/403/404/…).
    Transient {
        /// What happened.
        reason: String,
        /// What the receiver asked for (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The request as a whole was refused for good (400, 413, 422, …): the batch holds at
    /// least one event the receiver will never take. Split it to find which.
    Refused {
        /// Status and the start of the answer.
        reason: String,
    },
    /// The receiver took the events before `index`, refused the one at `index` for good and
    /// did not look at the rest (Splunk HEC's `invalid-event-number`).
    RefusedAt {
        /// Position in the batch of the refused event.
        index: usize,
        /// Why.
        reason: String,
    },
    /// The receiver answered per event: these were refused for good, all others were taken
    /// (a FHIR `batch-response`, a UDP message too large for a datagram).
    RefusedSome {
        /// Positions in the batch, with reasons.
        refused: Vec<(usize, String)>,
    },
}

/// One sink's transport.
#[derive(Debug)]
pub(crate) enum Sink {
    Http(HttpSink),
    Syslog(SyslogSink),
}

impl Sink {
    /// Builds the transport: reads secrets and CA files, parses URLs. Errors name the field
    /// within the sink (`secretEnv: …`).
    pub(crate) fn build(
        config: &SinkConfig,
        hostname: &str,
        secrets: SecretLookup<'_>,
    ) -> Result<Self, ForwardError> {
        let timeout = Duration::from_millis(config.timeout_ms);
        let http = |url: &str, ca_file: &Option<std::path::PathBuf>, format: HttpFormat| {
            HttpSink::new(url, ca_file.as_deref(), format, timeout)
        };
        Ok(match &config.kind {
            SinkKind::Webhook {
                url,
                secret_env,
                ca_file,
            } => Self::Http(http(
                url,
                ca_file,
                HttpFormat::Webhook {
                    secret: Secret::lookup("secretEnv", secret_env, secrets)?,
                },
            )?),
            SinkKind::Splunk {
                url,
                token_env,
                index,
                sourcetype,
                ca_file,
            } => Self::Http(http(
                &splunk_event_url(url),
                ca_file,
                HttpFormat::Splunk {
                    token: Secret::lookup("tokenEnv", token_env, secrets)?,
                    hec: HecConfig {
                        source: "vellum".into(),
                        sourcetype: sourcetype.clone(),
                        index: index.clone(),
                        host: Some(hostname.to_owned()),
                    },
                },
            )?),
            SinkKind::Ocsf {
                url,
                token_env,
                ca_file,
            } => Self::Http(http(
                url,
                ca_file,
                HttpFormat::Ocsf {
                    token: optional_secret(token_env.as_deref(), secrets)?,
                },
            )?),
            SinkKind::Fhir {
                url,
                token_env,
                ca_file,
            } => Self::Http(http(
                url.trim_end_matches('/'),
                ca_file,
                HttpFormat::Fhir {
                    token: optional_secret(token_env.as_deref(), secrets)?,
                    observer: FhirObserver {
                        display: format!("Vellum {} ({hostname})", env!("CARGO_PKG_VERSION")),
                    },
                },
            )?),
            SinkKind::Syslog {
                transport,
                address,
                ca_file,
                server_name,
                app_name,
                facility,
                enterprise_id,
            } => {
                let format = vellum_core::forward::syslog::SyslogConfig {
                    app_name: app_name.clone(),
                    hostname: hostname.to_owned(),
                    facility: *facility,
                    enterprise_id: *enterprise_id,
                };
                let tls = match transport {
                    SyslogTransport::Tls => Some(read_trust(ca_file.as_deref())?),
                    SyslogTransport::Tcp | SyslogTransport::Udp => None,
                };
                Self::Syslog(SyslogSink::new(
                    *transport,
                    address,
                    server_name.as_deref(),
                    tls,
                    format,
                    timeout,
                )?)
            }
        })
    }

    /// Sends one batch (events in API form, in log order).
    pub(crate) async fn send(&mut self, events: &[Value]) -> Result<(), SendError> {
        match self {
            Self::Http(sink) => sink.send(events).await,
            Self::Syslog(sink) => sink.send(events).await,
        }
    }

    /// Whether the last attempt reached the receiver (an HTTP answer of any kind, an open
    /// syslog connection).
    pub(crate) fn connected(&self) -> bool {
        match self {
            Self::Http(sink) => sink.reached,
            Self::Syslog(sink) => sink.connected(),
        }
    }

    /// Closes connections (syslog), after the last batch.
    pub(crate) async fn close(&mut self) {
        if let Self::Syslog(sink) = self {
            sink.close().await;
        }
    }
}

fn optional_secret(
    name: Option<&str>,
    secrets: SecretLookup<'_>,
) -> Result<Option<Secret>, ForwardError> {
    name.map(|n| Secret::lookup("tokenEnv", n, secrets))
        .transpose()
}

/// Trust for TLS: the CA file when given, else the system store.
pub(crate) fn read_trust(ca_file: Option<&Path>) -> Result<Trust, ForwardError> {
    match ca_file {
        None => Ok(Trust::System),
        Some(path) => std::fs::read(path).map(Trust::CaPem).map_err(|e| {
            ForwardError::config("caFile", format!("reading {}: {e}", path.display()))
        }),
    }
}

/// `{url}/services/collector/event`, unless the URL already names the endpoint.
fn splunk_event_url(url: &str) -> String {
    let base = url.trim_end_matches('/');
    if base.ends_with("/services/collector/event") {
        base.to_owned()
    } else if base.ends_with("/services/collector") {
        format!("{base}/event")
    } else {
        format!("{base}/services/collector/event")
    }
}

/// How an HTTP sink shapes its request.
enum HttpFormat {
    Webhook {
        secret: Secret,
    },
    Splunk {
        token: Secret,
        hec: HecConfig,
    },
    Ocsf {
        token: Option<Secret>,
    },
    Fhir {
        token: Option<Secret>,
        observer: FhirObserver,
    },
}

impl std::fmt::Debug for HttpFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Webhook { .. } => "Webhook",
            Self::Splunk { .. } => "Splunk",
            Self::Ocsf { .. } => "Ocsf",
            Self::Fhir { .. } => "Fhir",
        })
    }
}

/// A sink that POSTs each batch.
pub(crate) struct HttpSink {
    client: HttpClient,
    uri: Uri,
    format: HttpFormat,
    timeout: Duration,
    reached: bool,
}

impl std::fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSink")
            .field("uri", &self.uri)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl HttpSink {
    fn new(
        url: &str,
        ca_file: Option<&Path>,
        format: HttpFormat,
        timeout: Duration,
    ) -> Result<Self, ForwardError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| ForwardError::config("url", format!("{url:?}: {e}")))?;
        let trust = if uri.scheme_str() == Some("https") {
            read_trust(ca_file)?
        } else {
            Trust::None
        };
        let client =
            vellum_http::client(&trust, timeout, Duration::from_secs(60)).map_err(|e| {
                ForwardError::config(if ca_file.is_some() { "caFile" } else { "url" }, e.0)
            })?;
        Ok(Self {
            client,
            uri,
            format,
            timeout,
            reached: false,
        })
    }

    fn request(&self, events: &[Value]) -> Result<Request<Full<Bytes>>, SendError> {
        let (body, content_type, auth) = match &self.format {
            HttpFormat::Webhook { secret } => {
                let body = webhook_body(events);
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                let mut signature = HeaderValue::from_str(&signature_header(
                    secret.expose().as_bytes(),
                    now,
                    &body,
                ))
                .map_err(|e| SendError::Transient {
                    reason: format!("signature header: {e}"),
                    retry_after: None,
                })?;
                signature.set_sensitive(true);
                let request = Request::builder().header(SIGNATURE_HEADER, signature);
                return finish(request, &self.uri, body, "application/json", None);
            }
            HttpFormat::Splunk { token, hec } => (
                hec_batch(events, hec),
                "application/json",
                Some(token.header("Splunk")?),
            ),
            HttpFormat::Ocsf { token } => {
                let array: Vec<Value> = events.iter().map(to_ocsf).collect();
                let mut body = String::with_capacity(events.len() * 2048);
                vellum_core::canonical::write_value(&mut body, &Value::Array(array));
                (
                    body,
                    "application/json",
                    token.as_ref().map(|t| t.header("Bearer")).transpose()?,
                )
            }
            HttpFormat::Fhir { token, observer } => {
                let entries: Vec<Value> = events
                    .iter()
                    .map(|e| {
                        json!({
                            "resource": fhir_audit_event(e, observer),
                            "request": {"method": "POST", "url": "AuditEvent"},
                        })
                    })
                    .collect();
                let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": entries});
                (
                    bundle.to_string(),
                    "application/fhir+json",
                    token.as_ref().map(|t| t.header("Bearer")).transpose()?,
                )
            }
        };
        finish(Request::builder(), &self.uri, body, content_type, auth)
    }

    async fn send(&mut self, events: &[Value]) -> Result<(), SendError> {
        let request = self.request(events)?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                // The whole source chain: "client error (Connect)" alone says little.
                let mut reason = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    reason.push_str(": ");
                    reason.push_str(&s.to_string());
                    source = s.source();
                }
                SendError::Transient {
                    reason,
                    retry_after: None,
                }
            })?;
            let (parts, body) = response.into_parts();
            // An answer too large to read in full is judged by its status alone.
            let body = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Ok::<_, SendError>((parts.status, parts.headers, body))
        };
        let (status, headers, body) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                self.reached = false;
                return Err(e);
            }
            Err(_) => {
                self.reached = false;
                return Err(SendError::Transient {
                    reason: format!("no answer within {} ms", self.timeout.as_millis()),
                    retry_after: None,
                });
            }
        };
        self.reached = true;
        let kind = match self.format {
            HttpFormat::Splunk { .. } => AnswerKind::Splunk,
            HttpFormat::Fhir { .. } => AnswerKind::FhirBatch(events.len()),
            HttpFormat::Webhook { .. } | HttpFormat::Ocsf { .. } => AnswerKind::Plain,
        };
        judge(status, &headers, &body, kind)
    }
}

fn finish(
    builder: http::request::Builder,
    uri: &Uri,
    body: String,
    content_type: &'static str,
    auth: Option<HeaderValue>,
) -> Result<Request<Full<Bytes>>, SendError> {
    let mut builder = builder
        .method(Method::POST)
        .uri(uri.clone())
        .header(CONTENT_TYPE, content_type)
        .header(
            USER_AGENT,
            concat!("vellum-forward/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(auth) = auth {
        builder = builder.header(AUTHORIZATION, auth);
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| SendError::Transient {
            reason: format!("building the request: {e}"),
            retry_after: None,
        })
}

/// How to read a receiver's answer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AnswerKind {
    /// Status only.
    Plain,
    /// Splunk HEC: `{"text","code","invalid-event-number"}` on errors.
    Splunk,
    /// A FHIR `batch-response` Bundle with this many entries expected.
    FhirBatch(usize),
}

/// Answers that are about the sink's configuration (credentials, URL, method, media type),
/// not about the events: every event would get the same answer, so they are retried (and
/// reported) rather than dead-lettered, the way the SDK treats 401/403 (nothing is dropped
/// while someone fixes a token).
fn is_configuration_status(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        401 | 403 | 404 | 405 | 407 | 410 | 411 | 415 | 421 | 426 | 431 | 501 | 505
    )
}

fn is_transient_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 425 | 429) || status.is_server_error()
}

/// Decides what an answer means for the batch.
pub(crate) fn judge(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    kind: AnswerKind,
) -> Result<(), SendError> {
    let reason = || {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let quoted: String = text.chars().take(QUOTED_ANSWER).collect();
        if quoted.is_empty() {
            format!("HTTP {status}")
        } else if quoted.len() < text.len() {
            format!("HTTP {status}: {quoted}…")
        } else {
            format!("HTTP {status}: {quoted}")
        }
    };
    if status.is_success() {
        if let AnswerKind::FhirBatch(n) = kind {
            return judge_fhir_batch(body, n);
        }
        return Ok(());
    }
    if is_configuration_status(status) {
        return Err(SendError::Transient {
            reason: format!("{} (check the sink's URL and credentials)", reason()),
            retry_after: retry_after(headers),
        });
    }
    if is_transient_status(status) || !status.is_client_error() {
        return Err(SendError::Transient {
            reason: reason(),
            retry_after: retry_after(headers),
        });
    }
    if let AnswerKind::Splunk = kind
        && let Ok(answer) = serde_json::from_slice::<Value>(body)
    {
        // HEC codes about the setup, not the data: incorrect index (7), data channel missing
        // or invalid (10, 11), ACK disabled (14), query-string auth disabled (16).
        if let Some(code) = answer.get("code").and_then(Value::as_i64)
            && matches!(code, 7 | 10 | 11 | 14 | 16)
        {
            return Err(SendError::Transient {
                reason: format!("{} (check the sink's HEC settings)", reason()),
                retry_after: retry_after(headers),
            });
        }
        // HEC indexes stacked events in order and stops at the first bad one.
        if let Some(index) = answer
            .get("invalid-event-number")
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
        {
            return Err(SendError::RefusedAt {
                index,
                reason: reason(),
            });
        }
    }
    Err(SendError::Refused { reason: reason() })
}

/// Per-entry outcomes of a FHIR `batch-response`. An answer that is not one (some servers
/// answer a batch with an OperationOutcome or nothing) counts as success: the status was 2xx.
fn judge_fhir_batch(body: &[u8], expected: usize) -> Result<(), SendError> {
    let Ok(bundle) = serde_json::from_slice::<Value>(body) else {
        return Ok(());
    };
    let Some(entries) = bundle
        .get("entry")
        .and_then(Value::as_array)
        .filter(|e| e.len() == expected && bundle["resourceType"] == "Bundle")
    else {
        return Ok(());
    };
    let mut refused = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let status_text = entry
            .pointer("/response/status")
            .and_then(Value::as_str)
            .unwrap_or("");
        let code: u16 = status_text
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
            .unwrap_or(200);
        let Ok(status) = StatusCode::from_u16(code) else {
            continue;
        };
        if status.is_success() {
            continue;
        }
        let diagnostics = entry
            .pointer("/response/outcome/issue/0/diagnostics")
            .and_then(Value::as_str)
            .unwrap_or("");
        let reason = format!("FHIR batch entry {status_text}: {diagnostics}")
            .trim_end_matches([' ', ':'])
            .to_owned();
        if is_transient_status(status)
            || is_configuration_status(status)
            || !status.is_client_error()
        {
            // Resending the batch repeats the entries that were created: at least once.
            return Err(SendError::Transient {
                reason,
                retry_after: None,
            });
        }
        refused.push((i, reason));
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(SendError::RefusedSome { refused })
    }
}

/// `Retry-After` as delta-seconds or an HTTP-date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(text, format)
        .ok()?
        .assume_utc();
    let wait = at - time::OffsetDateTime::now_utc();
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).unwrap()
    }

    #[test]
    fn answers_are_sorted_into_kinds() {
        let none = HeaderMap::new();
        assert_eq!(judge(status(204), &none, b"", AnswerKind::Plain), Ok(()));
        for code in [408, 429, 500, 502, 503, 504, 401, 403, 404] {
            assert!(
                matches!(
                    judge(status(code), &none, b"", AnswerKind::Plain),
                    Err(SendError::Transient { .. })
                ),
                "{code}"
            );
        }
        for code in [400, 409, 413, 422] {
            assert!(
                matches!(
                    judge(status(code), &none, b"bad", AnswerKind::Plain),
                    Err(SendError::Refused { .. })
                ),
                "{code}"
            );
        }
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(
            judge(status(503), &headers, b"", AnswerKind::Plain),
            Err(SendError::Transient {
                reason: "HTTP 503 Service Unavailable".into(),
                retry_after: Some(Duration::from_secs(7)),
            })
        );
    }

    #[test]
    fn retry_after_http_date() {
        let mut headers = HeaderMap::new();
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
    }

    #[test]
    fn splunk_answers() {
        let none = HeaderMap::new();
        let bad_event = br#"{"text":"Invalid data format","code":6,"invalid-event-number":3}"#;
        assert_eq!(
            judge(status(400), &none, bad_event, AnswerKind::Splunk),
            Err(SendError::RefusedAt {
                index: 3,
                reason: format!(
                    "HTTP 400 Bad Request: {}",
                    std::str::from_utf8(bad_event).unwrap()
                ),
            })
        );
        let bad_index = br#"{"text":"Incorrect index","code":7,"invalid-event-number":0}"#;
        assert!(matches!(
            judge(status(400), &none, bad_index, AnswerKind::Splunk),
            Err(SendError::Transient { .. })
        ));
    }

    #[test]
    fn fhir_batch_response_entries() {
        let none = HeaderMap::new();
        let body = json!({"resourceType": "Bundle", "type": "batch-response", "entry": [
            {"response": {"status": "201 Created"}},
            {"response": {"status": "400 Bad Request", "outcome": {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "no agent"}]}}},
            {"response": {"status": "201"}},
        ]})
        .to_string();
        assert_eq!(
            judge(
                status(200),
                &none,
                body.as_bytes(),
                AnswerKind::FhirBatch(3)
            ),
            Err(SendError::RefusedSome {
                refused: vec![(1, "FHIR batch entry 400 Bad Request: no agent".into())]
            })
        );
        assert_eq!(
            judge(
                status(200),
                &none,
                body.as_bytes(),
                AnswerKind::FhirBatch(2)
            ),
            Ok(()),
            "an answer that does not line up with the batch is judged by its status"
        );
    }

    #[test]
    fn splunk_url_forms() {
        assert_eq!(
            splunk_event_url("https://s:8088/"),
            "https://s:8088/services/collector/event"
        );
        assert_eq!(
            splunk_event_url("https://s:8088/services/collector"),
            "https://s:8088/services/collector/event"
        );
    }

    #[test]
    fn secrets_do_not_show() {
        let secret = Secret(Zeroizing::new("hunter2".into()));
        assert!(!format!("{secret:?}").contains("hunter2"));
        let value = secret.header("Splunk").unwrap();
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("hunter2"));
    }
}
