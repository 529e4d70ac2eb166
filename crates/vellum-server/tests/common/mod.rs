//! Helpers shared by the server's integration tests.

#![allow(dead_code, clippy::expect_used)]

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// One authenticated request; the body parsed as JSON (or kept as a JSON string when it is
/// not JSON).
pub(crate) async fn call(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let mut request = client
        .request(method, format!("{base}{path}"))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub(crate) mod console;
