//! Webhook bodies and their HMAC signatures.
//!
//! | part | value | why |
//! | --- | --- | --- |
//! | body | `{"events":[…]}`, canonical JSON (RFC 8785) | the signature is over bytes, so the body has exactly one spelling |
//! | header | `Vellum-Signature: t=<unix seconds>,v1=<lowercase hex HMAC-SHA256(secret, "<t>." + body)>` | Stripe-style: the signed timestamp lets the receiver refuse replays of old deliveries, `v1` names the scheme so another can be added later |
//!
//! A receiver checks it with [`verify_signature`]: parse the header, recompute the HMAC over
//! `"<t>." + body` with the shared secret, compare in constant time with every `v1` in the header
//! (there can be several while a secret is being rotated), then check that `t` is within the
//! tolerance of its own clock, in either direction. Unknown keys in the header (say `v0`) are
//! ignored, so a newer sender can add schemes without breaking older receivers.

use crate::canonical::write_value;
use hmac::{KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The HTTP header that carries the signature.
pub const SIGNATURE_HEADER: &str = "Vellum-Signature";

/// The signature scheme name in the header.
pub const SCHEME: &str = "v1";

/// Why a webhook signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookSignatureError {
    /// The header is not `t=<integer>,v1=<hex>[,…]`.
    #[error("malformed signature header: {0}")]
    Malformed(String),
    /// The header has no `v1` signature.
    #[error("signature header has no v1 signature")]
    NoSignature,
    /// No `v1` signature matches the body under the secret.
    #[error("signature does not match")]
    Mismatch,
    /// The signed timestamp is further from now than the tolerance.
    #[error(
        "signature timestamp is {age_secs} s from now, outside the tolerance of {tolerance_secs} s"
    )]
    OutsideTolerance {
        /// `now - t` (negative for a timestamp in the future), saturated at the `i64` range.
        age_secs: i64,
        /// The tolerance that was applied.
        tolerance_secs: i64,
    },
    /// The receiver's secret is empty, which would make any signature forgeable.
    #[error("webhook secret is empty")]
    EmptySecret,
}

/// The body of one webhook delivery: `{"events":[…]}` in canonical JSON.
pub fn webhook_body(events: &[Value]) -> String {
    let mut out = String::with_capacity(events.len() * 1024 + 16);
    out.push_str("{\"events\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_value(&mut out, event);
    }
    out.push_str("]}");
    out
}

fn mac(secret: &[u8], timestamp_secs: i64, body: &str) -> [u8; 32] {
    // HMAC accepts keys of any length, so this never fails; the fallback keeps the function
    // total without a panic path.
    let Ok(mut mac) = <HmacSha256 as KeyInit>::new_from_slice(secret) else {
        return [0u8; 32];
    };
    mac.update(timestamp_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    mac.finalize().into_bytes().into()
}

/// The `Vellum-Signature` header value for `body` sent at `timestamp_secs` (Unix seconds, read
/// from the clock by the caller): `t=<ts>,v1=<hex HMAC-SHA256(secret, "<ts>." + body)>`.
pub fn signature_header(secret: &[u8], timestamp_secs: i64, body: &str) -> String {
    format!(
        "t={timestamp_secs},{SCHEME}={}",
        hex::encode(mac(secret, timestamp_secs, body))
    )
}

/// Checks a `Vellum-Signature` header against `body`: the header must parse, one of its `v1`
/// signatures must equal the HMAC under `secret` (compared in constant time), and its timestamp
/// must be within `tolerance_secs` of `now_secs` (a negative tolerance counts as 0).
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    body: &str,
    now_secs: i64,
    tolerance_secs: i64,
) -> Result<(), WebhookSignatureError> {
    if secret.is_empty() {
        return Err(WebhookSignatureError::EmptySecret);
    }
    let mut timestamp: Option<i64> = None;
    let mut signatures: Vec<&str> = Vec::new();
    for part in header.split(',') {
        let part = part.trim();
        let Some((key, value)) = part.split_once('=') else {
            return Err(WebhookSignatureError::Malformed(format!(
                "element {part:?} is not key=value"
            )));
        };
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(WebhookSignatureError::Malformed(
                        "more than one timestamp".to_owned(),
                    ));
                }
                let valid = !value.is_empty()
                    && value
                        .strip_prefix('-')
                        .unwrap_or(value)
                        .bytes()
                        .all(|b| b.is_ascii_digit());
                let parsed = value.parse::<i64>().ok().filter(|_| valid);
                timestamp = Some(parsed.ok_or_else(|| {
                    WebhookSignatureError::Malformed(format!(
                        "timestamp {value:?} is not an integer"
                    ))
                })?);
            }
            SCHEME => signatures.push(value),
            _ => {}
        }
    }
    let timestamp =
        timestamp.ok_or_else(|| WebhookSignatureError::Malformed("no timestamp".to_owned()))?;
    if signatures.is_empty() {
        return Err(WebhookSignatureError::NoSignature);
    }

    let expected = mac(secret, timestamp, body);
    let mut matched = subtle::Choice::from(0u8);
    for signature in signatures {
        // A signature of the wrong length or not hex cannot match; it is compared against
        // nothing rather than refused, so a header can carry signatures of other lengths.
        if let Ok(bytes) = hex::decode(signature)
            && bytes.len() == expected.len()
        {
            matched |= bytes.as_slice().ct_eq(&expected);
        }
    }
    if !bool::from(matched) {
        return Err(WebhookSignatureError::Mismatch);
    }

    let age = i128::from(now_secs) - i128::from(timestamp);
    let tolerance = tolerance_secs.max(0);
    if age.abs() > i128::from(tolerance) {
        return Err(WebhookSignatureError::OutsideTolerance {
            age_secs: i64::try_from(age).unwrap_or(if age < 0 { i64::MIN } else { i64::MAX }),
            tolerance_secs: tolerance,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"whsec-test-0123456789abcdef";
    const NOW: i64 = 1_795_424_462;

    fn body() -> String {
        webhook_body(&[
            json!({"id": "e1", "action": "security.alert.brute_force", "status": "warning", "b": 1, "a": 2}),
            json!({"id": "e2", "action": "auth.login.failure", "status": "failure"}),
        ])
    }

    #[test]
    fn body_is_canonical() {
        let body = body();
        assert_eq!(
            body,
            "{\"events\":[{\"a\":2,\"action\":\"security.alert.brute_force\",\"b\":1,\"id\":\"e1\",\"status\":\"warning\"},\
             {\"action\":\"auth.login.failure\",\"id\":\"e2\",\"status\":\"failure\"}]}"
        );
        let parsed: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(crate::canonical::to_canonical_string(&parsed), body);
        assert_eq!(webhook_body(&[]), "{\"events\":[]}");
    }

    #[test]
    fn header_is_hmac_of_timestamp_dot_body() {
        // Independent computation: HMAC-SHA256("key", "1.{}").
        let header = signature_header(b"key", 1, "{}");
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(b"key").expect("any length");
        mac.update(b"1.{}");
        let want = hex::encode(mac.finalize().into_bytes());
        assert_eq!(header, format!("t=1,v1={want}"));
        assert_eq!(want.len(), 64);
        assert!(
            want.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    }

    #[test]
    fn sign_then_verify() {
        let body = body();
        let header = signature_header(SECRET, NOW, &body);
        assert_eq!(verify_signature(SECRET, &header, &body, NOW, 300), Ok(()));
        assert_eq!(
            verify_signature(SECRET, &header, &body, NOW + 300, 300),
            Ok(())
        );
        assert_eq!(
            verify_signature(SECRET, &header, &body, NOW - 300, 300),
            Ok(())
        );
        let spaced = header.replace(',', ", ");
        assert_eq!(verify_signature(SECRET, &spaced, &body, NOW, 300), Ok(()));
    }

    #[test]
    fn tampered_body_is_refused() {
        let body = body();
        let header = signature_header(SECRET, NOW, &body);
        let tampered = body.replace("failure", "success");
        assert_eq!(
            verify_signature(SECRET, &header, &tampered, NOW, 300),
            Err(WebhookSignatureError::Mismatch)
        );
    }

    #[test]
    fn wrong_secret_is_refused() {
        let body = body();
        let header = signature_header(SECRET, NOW, &body);
        assert_eq!(
            verify_signature(b"another-secret-entirely", &header, &body, NOW, 300),
            Err(WebhookSignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"", &header, &body, NOW, 300),
            Err(WebhookSignatureError::EmptySecret)
        );
    }

    #[test]
    fn changed_timestamp_is_refused() {
        let body = body();
        let header = signature_header(SECRET, NOW, &body);
        let moved = header.replace(&format!("t={NOW}"), &format!("t={}", NOW + 1));
        assert_eq!(
            verify_signature(SECRET, &moved, &body, NOW, 300),
            Err(WebhookSignatureError::Mismatch)
        );
    }

    #[test]
    fn expired_or_future_timestamp_is_refused() {
        let body = body();
        let header = signature_header(SECRET, NOW, &body);
        assert_eq!(
            verify_signature(SECRET, &header, &body, NOW + 301, 300),
            Err(WebhookSignatureError::OutsideTolerance {
                age_secs: 301,
                tolerance_secs: 300
            })
        );
        assert_eq!(
            verify_signature(SECRET, &header, &body, NOW - 301, 300),
            Err(WebhookSignatureError::OutsideTolerance {
                age_secs: -301,
                tolerance_secs: 300
            })
        );
        assert!(verify_signature(SECRET, &header, &body, NOW + 1, -5).is_err());
        let ancient = signature_header(SECRET, i64::MIN, &body);
        assert_eq!(
            verify_signature(SECRET, &ancient, &body, i64::MAX, i64::MAX),
            Err(WebhookSignatureError::OutsideTolerance {
                age_secs: i64::MAX,
                tolerance_secs: i64::MAX
            })
        );
    }

    #[test]
    fn rotation_and_unknown_schemes() {
        let body = body();
        let good = signature_header(SECRET, NOW, &body);
        let sig = good.split_once(",v1=").map(|(_, s)| s).expect("v1");
        let header = format!("t={NOW},v0=legacy,v1={},v1={sig}", "0".repeat(64));
        assert_eq!(verify_signature(SECRET, &header, &body, NOW, 300), Ok(()));
        let short = format!("t={NOW},v1=abcd");
        assert_eq!(
            verify_signature(SECRET, &short, &body, NOW, 300),
            Err(WebhookSignatureError::Mismatch)
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        let body = body();
        let sig = "a".repeat(64);
        let cases = [
            String::new(),
            "garbage".to_owned(),
            format!("v1={sig}"),
            format!("t=,v1={sig}"),
            format!("t=12x,v1={sig}"),
            format!("t=+12,v1={sig}"),
            format!("t=1.5,v1={sig}"),
            format!("t=99999999999999999999,v1={sig}"),
            format!("t=1,t=2,v1={sig}"),
            format!("t=1,v1={sig},"),
        ];
        for header in &cases {
            assert!(
                matches!(
                    verify_signature(SECRET, header, &body, NOW, 300),
                    Err(WebhookSignatureError::Malformed(_))
                ),
                "{header:?}"
            );
        }
        assert_eq!(
            verify_signature(SECRET, &format!("t={NOW}"), &body, NOW, 300),
            Err(WebhookSignatureError::NoSignature)
        );
        assert_eq!(SIGNATURE_HEADER, "Vellum-Signature");
    }
}
