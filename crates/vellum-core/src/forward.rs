//! The pure formatting side of SIEM forwarding (SPEC §8): how one stored event becomes the bytes
//! a sink sends. Sockets, HTTP, cursors, retries and dead letters live in the server; everything
//! here is a deterministic function of its inputs (no clock reads, no I/O), so every deployment
//! shape forwards byte-identical messages and the formats are testable in isolation.
//!
//! | module | format | used by | what the receiver gets |
//! | --- | --- | --- | --- |
//! | [`syslog`] | RFC 5424 message, RFC 6587 octet-counting framing | syslog sinks (TCP, TLS per RFC 5425, UDP per RFC 5426) | header fields for routing, a `vellum@<PEN>` SD element for indexing, and the complete event as canonical JSON in MSG |
//! | [`ocsf`] | OCSF 1.1.0 JSON: Authentication (3002), Entity Management (3004) or API Activity (6003) | OCSF sinks (security lakes, OCSF-native SIEMs) | a normalized event plus the complete event in `raw_data` |
//! | [`splunk`] | Splunk HTTP Event Collector envelope, stacked for batches | HEC sinks | the stored event under `event`, indexed by `receivedAt` |
//! | [`webhook`] | `{"events":[…]}` canonical JSON, `Vellum-Signature: t=…,v1=…` | webhook sinks | the stored events, signed with HMAC-SHA256 over timestamp and body |
//! | [`filter`] | [`filter::SinkFilter`] | every sink | which events a sink forwards at all |
//!
//! ## Input
//!
//! Every formatter takes one stored event as a `serde_json::Value`: an object with the SPEC §2
//! fields plus the server fields `id`, `logId`, `seq`, `receivedAt`, `prevHash`, `hash`, `keyId`,
//! `signature`, `redactions`. No formatter assumes any field is present or well typed: a missing
//! or oddly typed field is left out (or replaced by the format's "unknown" value), never a panic,
//! and the output is still valid for its format. Where the receiver can re-verify the event, the
//! complete event travels as RFC 8785 canonical JSON ([`crate::canonical`]): the syslog MSG and
//! the OCSF `raw_data` are exactly the bytes whose SHA-256 (after removing `hash` and
//! `signature`) is the event's `hash` (SPEC §3).
//!
//! ## Why these choices
//!
//! - **Canonical JSON everywhere the bytes matter.** The webhook signature is over the body
//!   bytes, so the body must have one spelling; the syslog MSG lets a SIEM recompute the hash.
//! - **No clock reads.** The webhook timestamp is passed in by the caller, syslog and HEC times
//!   come from the event (`receivedAt`, the server's own acceptance time, which a client cannot
//!   backdate), OCSF `time` from the event's `timestamp`.
//! - **Text is not rewritten.** Evidence stays as sent (SPEC §2 "Sanitization"); only fields
//!   whose grammar forbids a character (syslog header fields, SD parameter values) are
//!   neutralized, and the untouched value is always in the canonical JSON next to them.

pub mod filter;
pub mod ocsf;
pub mod splunk;
pub mod syslog;
pub mod webhook;

use serde_json::Value;
use std::borrow::Cow;
use time::OffsetDateTime;

/// The string at `pointer`, if present, a string, and not empty.
fn text<'a>(event: &'a Value, pointer: &str) -> Option<&'a str> {
    event
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A scalar at `pointer` as text: strings as they are, numbers and booleans in JSON spelling.
/// Absent values, `null`, objects and arrays give `None`.
fn scalar<'a>(event: &'a Value, pointer: &str) -> Option<Cow<'a, str>> {
    match event.pointer(pointer)? {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// The RFC 3339 timestamp at `pointer`, parsed.
fn time_at(event: &Value, pointer: &str) -> Option<OffsetDateTime> {
    text(event, pointer).and_then(|s| crate::time_fmt::parse_rfc3339(s).ok())
}

/// Milliseconds since the Unix epoch, rounded down (towards the past).
fn epoch_millis(at: OffsetDateTime) -> i64 {
    let millis = at.unix_timestamp_nanos().div_euclid(1_000_000);
    i64::try_from(millis).unwrap_or(if millis < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn helpers_tolerate_any_shape() {
        let odd = json!({"a": "", "b": 7, "c": true, "d": null, "e": [1], "t": "2026-01-02T03:04:05.678Z"});
        assert_eq!(text(&odd, "/a"), None);
        assert_eq!(scalar(&odd, "/b").as_deref(), Some("7"));
        assert_eq!(scalar(&odd, "/c").as_deref(), Some("true"));
        assert_eq!(scalar(&odd, "/d"), None);
        assert_eq!(scalar(&odd, "/e"), None);
        assert_eq!(scalar(&json!("not an object"), "/a"), None);
        let at = time_at(&odd, "/t").expect("parses");
        assert_eq!(epoch_millis(at), 1_767_323_045_678);
        let before_epoch = crate::time_fmt::parse_rfc3339("1969-12-31T23:59:59.9995Z").expect("ok");
        assert_eq!(epoch_millis(before_epoch), -1);
    }

    mod never_panic {
        use super::super::*;
        use proptest::prelude::*;
        use serde_json::{Map, Value};

        /// Field names the formatters read, so generated events hit every code path.
        const KEYS: &[&str] = &[
            "id",
            "logId",
            "seq",
            "receivedAt",
            "timestamp",
            "action",
            "status",
            "severity",
            "principalId",
            "principalType",
            "organizationId",
            "targetResourceType",
            "targetResourceId",
            "outcomeDescription",
            "dataClassification",
            "correlationId",
            "sessionContext",
            "technicalContext",
            "healthcareContext",
            "hash",
            "prevHash",
            "keyId",
            "signature",
            "sessionId",
            "ipAddress",
            "userAgent",
            "deviceId",
            "endpoint",
            "httpMethod",
            "statusCode",
            "requestId",
            "patientId",
            "emergencyAccess",
            "other",
        ];

        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                Just("2026-11-23T09:01:02.123456Z".to_owned()),
                Just("2026-11-23T10:01:02.5+01:00".to_owned()),
                Just("9999-12-31T23:59:59.999999-23:59".to_owned()),
                Just("auth.login.failure".to_owned()),
                Just("admin.apikey.create".to_owned()),
                Just("security.alert.x".to_owned()),
                Just("failure".to_owned()),
                Just("critical".to_owned()),
                Just("203.0.113.9".to_owned()),
                Just("a\"b\\c]d\n\u{0}é😀".to_owned()),
            ]
        }

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(Value::from),
                text().prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 48, 8, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::vec((prop::sample::select(KEYS), inner), 0..10).prop_map(
                        |members| {
                            Value::Object(
                                members
                                    .into_iter()
                                    .map(|(k, v)| (k.to_owned(), v))
                                    .collect::<Map<String, Value>>(),
                            )
                        }
                    ),
                ]
            })
        }

        fn json_for_ocsf() -> Value {
            serde_json::json!({"action": "fhir.patient.read", "status": "success"})
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Any JSON at all: every formatter returns, and the output is valid for its format.
            #[test]
            fn formatters_are_total(event in json_value()) {
                let cfg = syslog::SyslogConfig::new("host");
                let message = syslog::format_5424(&event, &cfg);
                let parsed = syslog::parse_5424(&message);
                prop_assert!(parsed.is_ok(), "{message:?}: {parsed:?}");
                let framed = syslog::frame_octet_counting(&message);
                prop_assert!(framed.ends_with(message.as_bytes()));

                let o = ocsf::to_ocsf(&event);
                prop_assert_eq!(ocsf::missing_required(&o), Vec::<String>::new());

                let hec = splunk::hec_batch(std::slice::from_ref(&event), &splunk::HecConfig::default());
                prop_assert!(serde_json::from_str::<Value>(&hec).is_ok());

                let body = webhook::webhook_body(std::slice::from_ref(&event));
                prop_assert!(serde_json::from_str::<Value>(&body).is_ok());
                let header = webhook::signature_header(b"secret", 1, &body);
                prop_assert!(webhook::verify_signature(b"secret", &header, &body, 1, 0).is_ok());

                let _ = filter::SinkFilter::default().matches(&event);
            }

            /// Any JSON handed to the validator, and any value in a valid OCSF event's
            /// integer fields: it answers, never panics, and flags what is wrong.
            #[test]
            fn validator_is_total(
                junk in json_value(),
                field in prop::sample::select(&["activity_id", "type_uid", "class_uid",
                    "category_uid", "severity_id", "status_id", "time"][..]),
                n in any::<i64>(),
            ) {
                let _ = ocsf::missing_required(&junk);
                let mut o = ocsf::to_ocsf(&json_for_ocsf());
                o[field] = Value::from(n);
                let _ = ocsf::missing_required(&o);
                o[field] = junk;
                let _ = ocsf::missing_required(&o);
            }

            /// Any header text: verification answers, never panics.
            #[test]
            fn verify_is_total(header in any::<String>(), now in any::<i64>(), tol in any::<i64>()) {
                let _ = webhook::verify_signature(b"k", &header, "{}", now, tol);
            }

            /// Any line: the parser answers, never panics.
            #[test]
            fn parse_is_total(line in any::<String>()) {
                let _ = syslog::parse_5424(&line);
                let with_header = format!("<13>1 - - - - - {line}");
                let _ = syslog::parse_5424(&with_header);
            }
        }
    }
}
