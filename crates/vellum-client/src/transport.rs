//! One HTTP request to `POST /v1/events`, and what its answer means for each event in it.
//!
//! Every send uses the batch form `{"events":[…]}`, so the answer is always per event
//! (`accepted[]`/`rejected[]`, or a 422 whose `details` name `/events/<index>/…`). The answer
//! is sorted into three kinds, because each calls for a different action by the caller:
//!
//! | answer | kind | caller |
//! | --- | --- | --- |
//! | 201/202 | per event: accepted (receipt) or rejected (reason) | done; rejected ones are dead letters |
//! | 422 with every event rejected | per event: rejected | dead letters |
//! | 401, 403 | [`SendError::Unauthorized`] | not the events' fault: keep them, back off |
//! | 408, 425, 429, 5xx (not 501), network error, timeout | [`SendError::Retryable`] | back off and resend; the idempotency keys make the resend harmless |
//! | 413 | [`SendError::Rejected`] of the whole request | split the batch; one event alone is a dead letter |
//! | other 4xx | [`SendError::Rejected`] | dead letters |

use crate::error::{FieldProblem, ServerRejection};
use crate::event::Priority;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};
use http::{StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// The pooled HTTP/1.1 client the transport sends with.
pub(crate) type HttpClient = HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The server's receipt for one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    /// Event id (UUIDv7).
    pub id: String,
    /// The log it belongs to.
    pub log_id: String,
    /// Its position in the log; absent when a scale-out node only queued it (202).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Its hash (hex); absent when only queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// When the server accepted it; absent when only queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<String>,
    /// `queued` for a 202 from a scale-out API node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

impl Receipt {
    /// Whether the event is only queued (scale-out 202), not yet committed to the log.
    pub fn is_queued(&self) -> bool {
        self.seq.is_none()
    }
}

/// The fate of one event of a request that got an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EventOutcome {
    /// Durable (or queued) on the server.
    Accepted(Receipt),
    /// Refused for good.
    Rejected(ServerRejection),
}

/// A request that got no per-event answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SendError {
    /// Try again later; `counts_for_breaker` is false for answers that prove the server is up
    /// but busy (429), which back off without opening the breaker.
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
        counts_for_breaker: bool,
    },
    /// The API key was refused.
    Unauthorized(ServerRejection),
    /// The whole request was refused for good (413 too large, 400, …).
    Rejected(ServerRejection),
}

#[derive(Serialize)]
struct BatchBody<'a> {
    events: &'a [Value],
}

#[derive(Deserialize)]
struct BatchAnswer {
    #[serde(default)]
    accepted: Vec<AcceptedAnswer>,
    #[serde(default)]
    rejected: Vec<RejectedAnswer>,
}

#[derive(Deserialize)]
struct AcceptedAnswer {
    index: usize,
    #[serde(flatten)]
    receipt: Receipt,
}

#[derive(Deserialize)]
struct RejectedAnswer {
    index: usize,
    #[serde(default)]
    errors: Vec<FieldProblem>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: ErrorInner,
}

#[derive(Deserialize)]
struct ErrorInner {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Vec<FieldProblem>,
}

/// Sends batches to one server with one API key.
#[derive(Clone)]
pub(crate) struct Transport {
    http: HttpClient,
    events_url: Uri,
    events_url_high: Uri,
    authorization: Option<HeaderValue>,
    request_timeout: Duration,
}

impl std::fmt::Debug for Transport {
    // The API key must never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("events_url", &self.events_url)
            .field("authorization", &self.authorization.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Transport {
    /// `base` is the server's base URL ending in `/`.
    pub(crate) fn new(
        http: HttpClient,
        base: &str,
        api_key: Option<&str>,
        request_timeout: Duration,
    ) -> Result<Self, String> {
        let parse = |text: String| {
            text.parse::<Uri>()
                .map_err(|e| format!("cannot build the events URL {text:?}: {e}"))
        };
        let events_url = parse(format!("{base}v1/events"))?;
        let events_url_high = parse(format!("{base}v1/events?priority=high"))?;
        let authorization = match api_key {
            None => None,
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                    .map_err(|_| "the API key has characters a header cannot carry".to_owned())?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Self {
            http,
            events_url,
            events_url_high,
            authorization,
            request_timeout,
        })
    }

    /// Posts `events` as one batch and sorts the answer (see the module docs).
    pub(crate) async fn send(
        &self,
        events: &[Value],
        priority: Priority,
    ) -> Result<Vec<EventOutcome>, SendError> {
        let body = serde_json::to_vec(&BatchBody { events }).map_err(|e| {
            SendError::Rejected(ServerRejection {
                status: 0,
                code: "unserializable".into(),
                message: format!("the batch cannot be serialized: {e}"),
                details: Vec::new(),
            })
        })?;
        let url = match priority {
            Priority::High => self.events_url_high.clone(),
            Priority::Normal => self.events_url.clone(),
        };
        let mut request = http::Request::post(url)
            .header(CONTENT_TYPE, "application/json")
            .header(
                USER_AGENT,
                concat!("vellum-client/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(auth) = &self.authorization {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let request = request.body(Full::new(Bytes::from(body))).map_err(|e| {
            SendError::Rejected(ServerRejection {
                status: 0,
                code: "bad_request".into(),
                message: format!("the request cannot be built: {e}"),
                details: Vec::new(),
            })
        })?;
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| {
                let kind = if e.is_connect() {
                    "could not connect"
                } else {
                    "request failed"
                };
                (format!("{kind}: {}", chain(&e)), None)
            })?;
            let (parts, body) = response.into_parts();
            let retry_after = retry_after(parts.headers.get(RETRY_AFTER));
            let bytes = body
                .collect()
                .await
                .map_err(|e| (format!("reading the answer: {}", chain(&e)), retry_after))?
                .to_bytes();
            Ok::<_, (String, Option<Duration>)>((parts.status, retry_after, bytes))
        };
        let (status, retry_after, bytes) = tokio::time::timeout(self.request_timeout, exchange)
            .await
            .map_err(|_| SendError::Retryable {
                reason: format!("timed out after {:?}", self.request_timeout),
                retry_after: None,
                counts_for_breaker: true,
            })?
            .map_err(|(reason, retry_after)| SendError::Retryable {
                reason,
                retry_after,
                counts_for_breaker: true,
            })?;
        classify(status, retry_after, &bytes, events.len())
    }
}

/// An error with its sources, for one readable line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `Retry-After` in seconds (the HTTP-date form is not used by Vellum and is ignored).
fn retry_after(value: Option<&HeaderValue>) -> Option<Duration> {
    let seconds: u64 = value?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds))
}

fn rejection(status: StatusCode, bytes: &[u8]) -> ServerRejection {
    match serde_json::from_slice::<ErrorAnswer>(bytes) {
        Ok(answer) => ServerRejection {
            status: status.as_u16(),
            code: answer.error.code,
            message: answer.error.message,
            details: answer.error.details,
        },
        Err(_) => ServerRejection {
            status: status.as_u16(),
            code: status
                .canonical_reason()
                .unwrap_or("error")
                .to_ascii_lowercase()
                .replace(' ', "_"),
            message: String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
            details: Vec::new(),
        },
    }
}

/// Sorts one answer (see the module docs).
fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    bytes: &[u8],
    sent: usize,
) -> Result<Vec<EventOutcome>, SendError> {
    if status.is_success() {
        let answer: BatchAnswer =
            serde_json::from_slice(bytes).map_err(|e| SendError::Retryable {
                // A 2xx we cannot read is most likely a proxy's page; the events may or may not
                // be stored, and the idempotency keys make a resend safe either way.
                reason: format!("unreadable {status} answer: {e}"),
                retry_after,
                counts_for_breaker: true,
            })?;
        let mut outcomes: Vec<Option<EventOutcome>> = vec![None; sent];
        for a in answer.accepted {
            if let Some(slot) = outcomes.get_mut(a.index) {
                *slot = Some(EventOutcome::Accepted(a.receipt));
            }
        }
        for r in answer.rejected {
            if let Some(slot) = outcomes.get_mut(r.index) {
                *slot = Some(EventOutcome::Rejected(ServerRejection {
                    status: 422,
                    code: "invalid_event".into(),
                    message: "the event was rejected".into(),
                    details: r.errors,
                }));
            }
        }
        return outcomes
            .into_iter()
            .enumerate()
            .map(|(i, o)| {
                o.ok_or_else(|| SendError::Retryable {
                    reason: format!("the answer says nothing about event {i}"),
                    retry_after,
                    counts_for_breaker: true,
                })
            })
            .collect();
    }
    match status.as_u16() {
        401 | 403 => Err(SendError::Unauthorized(rejection(status, bytes))),
        408 | 425 | 500 | 502 | 503 | 504 | 507..=599 => Err(SendError::Retryable {
            reason: rejection(status, bytes).to_string(),
            retry_after,
            counts_for_breaker: true,
        }),
        429 => Err(SendError::Retryable {
            reason: rejection(status, bytes).to_string(),
            retry_after,
            counts_for_breaker: false,
        }),
        422 => Ok(split_invalid(rejection(status, bytes), sent)),
        _ => Err(SendError::Rejected(rejection(status, bytes))),
    }
}

/// A 422 for a batch in which every event was rejected: `details` paths start with
/// `/events/<index>`; each event gets its own problems, with paths relative to the event.
fn split_invalid(all: ServerRejection, sent: usize) -> Vec<EventOutcome> {
    let mut per_event: Vec<Vec<FieldProblem>> = vec![Vec::new(); sent];
    let mut shared = Vec::new();
    for detail in all.details {
        let indexed = detail
            .path
            .strip_prefix("/events/")
            .and_then(|rest| {
                let (index, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                index.parse::<usize>().ok().map(|i| (i, tail.to_owned()))
            })
            .filter(|(i, _)| *i < sent);
        match indexed {
            Some((i, tail)) => per_event[i].push(FieldProblem {
                path: tail,
                message: detail.message,
            }),
            None => shared.push(detail),
        }
    }
    per_event
        .into_iter()
        .map(|mut details| {
            details.extend(shared.iter().cloned());
            // The server's message counts the problems of the whole batch; say this event's.
            let message = match details.len() {
                1 => "the event is invalid (1 problem)".to_owned(),
                n => format!("the event is invalid ({n} problems)"),
            };
            EventOutcome::Rejected(ServerRejection {
                status: all.status,
                code: all.code.clone(),
                message,
                details,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn a_mixed_batch_answer_is_sorted_by_index() {
        let answer = body(json!({
            "accepted": [{"index": 1, "id": "e1", "logId": "default", "seq": 7, "hash": "ab", "receivedAt": "t"}],
            "rejected": [{"index": 0, "errors": [{"path": "/status", "message": "required"}]}]
        }));
        let outcomes = classify(StatusCode::CREATED, None, &answer, 2).unwrap();
        assert!(
            matches!(&outcomes[0], EventOutcome::Rejected(r) if r.details[0].path == "/status")
        );
        assert!(
            matches!(&outcomes[1], EventOutcome::Accepted(r) if r.seq == Some(7) && !r.is_queued())
        );
    }

    #[test]
    fn a_queued_answer_is_accepted_without_seq() {
        let answer = body(json!({
            "accepted": [{"index": 0, "id": "e1", "logId": "default", "status": "queued"}],
            "rejected": []
        }));
        let outcomes = classify(StatusCode::ACCEPTED, None, &answer, 1).unwrap();
        assert!(matches!(&outcomes[0], EventOutcome::Accepted(r) if r.is_queued()));
    }

    #[test]
    fn an_answer_missing_an_event_is_retried_not_guessed() {
        let answer = body(json!({"accepted": [], "rejected": []}));
        assert!(matches!(
            classify(StatusCode::CREATED, None, &answer, 1),
            Err(SendError::Retryable { .. })
        ));
    }

    #[test]
    fn an_all_rejected_batch_gets_each_event_its_own_problems() {
        let answer = body(
            json!({"error": {"code": "invalid_event", "message": "invalid", "details": [
                {"path": "/events/0/status", "message": "required"},
                {"path": "/events/1", "message": "too large"},
                {"path": "/events/1/action", "message": "required"}
            ]}}),
        );
        let outcomes = classify(StatusCode::UNPROCESSABLE_ENTITY, None, &answer, 2).unwrap();
        let EventOutcome::Rejected(first) = &outcomes[0] else {
            panic!("rejected")
        };
        assert_eq!(first.details.len(), 1);
        assert_eq!(first.details[0].path, "/status");
        let EventOutcome::Rejected(second) = &outcomes[1] else {
            panic!("rejected")
        };
        assert_eq!(
            second
                .details
                .iter()
                .map(|d| d.path.as_str())
                .collect::<Vec<_>>(),
            ["", "/action"]
        );
    }

    #[test]
    fn statuses_map_to_what_the_caller_must_do() {
        let err = body(json!({"error": {"code": "x", "message": "m", "details": []}}));
        let secs = Some(Duration::from_secs(3));
        for (code, expect) in [
            (401, "unauthorized"),
            (403, "unauthorized"),
            (413, "rejected"),
            (400, "rejected"),
            (409, "rejected"),
            (501, "rejected"),
            (408, "retry"),
            (429, "retry-busy"),
            (500, "retry"),
            (502, "retry"),
            (503, "retry"),
            (504, "retry"),
        ] {
            let status = StatusCode::from_u16(code).unwrap();
            let got = match classify(status, secs, &err, 1) {
                Err(SendError::Unauthorized(_)) => "unauthorized",
                Err(SendError::Rejected(r)) => {
                    assert_eq!(r.status, code);
                    "rejected"
                }
                Err(SendError::Retryable {
                    counts_for_breaker,
                    retry_after,
                    ..
                }) => {
                    assert_eq!(retry_after, secs);
                    if counts_for_breaker {
                        "retry"
                    } else {
                        "retry-busy"
                    }
                }
                Ok(_) => "ok",
            };
            assert_eq!(got, expect, "HTTP {code}");
        }
    }

    #[test]
    fn a_non_json_error_page_still_gives_a_reason() {
        let r = rejection(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(r.code, "bad_gateway");
        assert!(r.message.contains("bad gateway"));
        assert_eq!(
            retry_after(Some(&HeaderValue::from_static(" 7 "))),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(Some(&HeaderValue::from_static(
                "Wed, 21 Oct 2015 07:28:00 GMT"
            ))),
            None
        );
    }
}
