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

/// A TCP syslog receiver on 127.0.0.1 (RFC 6587 octet counting: `<length> <message>`): its
/// address, and each message received on any connection, in order.
pub(crate) async fn syslog_receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(socket);
                loop {
                    let mut length = Vec::new();
                    if reader.read_until(b' ', &mut length).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let text = String::from_utf8_lossy(&length[..length.len() - 1]).into_owned();
                    let Ok(n) = text.parse::<usize>() else {
                        return;
                    };
                    let mut message = vec![0; n];
                    if reader.read_exact(&mut message).await.is_err() {
                        return;
                    }
                    let _ = tx.send(String::from_utf8_lossy(&message).into_owned());
                }
            });
        }
    });
    (address, rx)
}

/// The next message of a [`syslog_receiver`], waiting at most 30 s.
pub(crate) async fn receive(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
        .await
        .expect("a message within 30 s")
        .expect("receiver open")
}
