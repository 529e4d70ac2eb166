//! Cross-site request forgery defences of the console's forms, in depth:
//!
//! 1. The session cookie is `SameSite=Strict`: another site's page cannot make the browser
//!    send it at all.
//! 2. Every state-changing request is a POST carrying the session's token in a hidden field,
//!    compared in constant time (`subtle`) with the one kept server-side.
//! 3. A POST whose `Origin` (or, lacking one, `Sec-Fetch-Site`) says it comes from another
//!    origin is refused before its form is looked at.
//!
//! The sign-in form has no session yet; it uses a double-submit token instead (a random value
//! in a short-lived `SameSite=Strict` cookie and in the form), plus the same origin check.

use axum::http::{HeaderMap, header};
use subtle::ConstantTimeEq;

/// Name of the hidden form field holding the token.
pub const FIELD: &str = "csrf";

/// Name of the cookie holding the sign-in form's double-submit token.
pub const SIGNIN_COOKIE: &str = "vellum_signin";

/// Whether the token a form sent equals the expected one. Constant-time in the content (the
/// length of a token is public: all are 43 characters); an empty expected token never matches.
pub fn tokens_match(expected: &str, given: Option<&str>) -> bool {
    let Some(given) = given else { return false };
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// Whether a request comes from the console's own origin, as far as the browser says: the
/// `Origin` header must be `<scheme>://<Host>` when present. Browsers send `Origin: null` on a
/// form POST from a page served with `Referrer-Policy: no-referrer` (as every console page
/// is), so `null` is accepted only together with `Sec-Fetch-Site: same-origin`. Without an
/// `Origin`, `Sec-Fetch-Site` must not be `cross-site` or `same-site`. A request with neither
/// header (old browsers, non-browser clients) passes here and still needs the token.
pub fn same_origin(headers: &HeaderMap, tls: bool) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if let Some(origin) = headers.get(header::ORIGIN) {
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        if origin == "null" {
            return fetch_site == Some("same-origin");
        }
        let scheme = if tls { "https" } else { "http" };
        return host.is_some_and(|h| origin.eq_ignore_ascii_case(&format!("{scheme}://{h}")));
    }
    !matches!(fetch_site, Some("cross-site" | "same-site"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn tokens_must_match_exactly() {
        let token = "tok_0123456789abcdefghijklmnopqrstuvwxyzABCD";
        assert!(tokens_match(token, Some(token)));
        assert!(!tokens_match(token, None));
        assert!(!tokens_match(token, Some("")));
        assert!(!tokens_match(token, Some(&token[..42])));
        assert!(!tokens_match(
            token,
            Some("tok_0123456789abcdefghijklmnopqrstuvwxyzABCE")
        ));
        assert!(
            !tokens_match("", Some("")),
            "no expected token: nothing matches"
        );
    }

    #[test]
    fn origin_must_be_this_server() {
        let ok = headers(&[
            ("host", "127.0.0.1:7870"),
            ("origin", "http://127.0.0.1:7870"),
        ]);
        assert!(same_origin(&ok, false));
        assert!(
            !same_origin(&ok, true),
            "TLS server: the origin must be https"
        );
        let evil = headers(&[
            ("host", "127.0.0.1:7870"),
            ("origin", "http://evil.example"),
        ]);
        assert!(!same_origin(&evil, false));
        let null = headers(&[("host", "127.0.0.1:7870"), ("origin", "null")]);
        assert!(!same_origin(&null, false));
        // What a browser sends for a form on a no-referrer page of this origin.
        let own_null = headers(&[
            ("host", "127.0.0.1:7870"),
            ("origin", "null"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert!(same_origin(&own_null, false));
        let sandboxed = headers(&[
            ("host", "127.0.0.1:7870"),
            ("origin", "null"),
            ("sec-fetch-site", "cross-site"),
        ]);
        assert!(!same_origin(&sandboxed, false));
        let other_port = headers(&[
            ("host", "127.0.0.1:7870"),
            ("origin", "http://127.0.0.1:7871"),
        ]);
        assert!(!same_origin(&other_port, false));
    }

    #[test]
    fn without_origin_fetch_metadata_decides() {
        assert!(same_origin(&headers(&[("host", "h")]), false));
        assert!(same_origin(
            &headers(&[("host", "h"), ("sec-fetch-site", "same-origin")]),
            false
        ));
        assert!(!same_origin(
            &headers(&[("host", "h"), ("sec-fetch-site", "cross-site")]),
            false
        ));
        assert!(!same_origin(
            &headers(&[("host", "h"), ("sec-fetch-site", "same-site")]),
            false
        ));
    }
}
