//! HTTPS end to end (SPEC §6, issue 5): a CA, a server certificate and a client certificate
//! made in the test with rcgen; a real server on 127.0.0.1 serving HTTPS only; a real rustls
//! client. Also: mutual TLS refuses a client without a certificate, `require_tls` refuses to
//! start on plain HTTP, and per-key rate limits answer 429 with `Retry-After`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;
use vellum_server::ServerConfig;
use zeroize::Zeroizing;

/// PEM files of a test PKI.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: String,
    client_key: String,
}

fn make_pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Vellum test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");

    let server_key = KeyPair::generate().expect("server key");
    let server_cert = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("params")
        .signed_by(&server_key, &ca)
        .expect("server cert");
    let client_key = KeyPair::generate().expect("client key");
    let mut client_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    client_params
        .distinguished_name
        .push(DnType::CommonName, "ward-app");
    let client_cert = client_params
        .signed_by(&client_key, &ca)
        .expect("client cert");

    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write pem");
        path
    };
    Pki {
        ca: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &server_cert.pem()),
        server_key: write("server.key", &server_key.serialize_pem()),
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    }
}

fn config(dir: &Path) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        data_dir: dir.join("data"),
        crypto_secret: Some(Zeroizing::new("tls-test-secret-0123456789abcdef".into())),
        index_wait_ms: 60_000,
        ..ServerConfig::default()
    }
}

/// A rustls client configuration trusting only `roots` (the test CA, or nothing), optionally
/// presenting the client certificate.
fn tls_client(pki: &Pki, trust_ca: bool, with_certificate: bool) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    if trust_ca {
        for cert in CertificateDer::pem_file_iter(&pki.ca).expect("ca pem") {
            roots.add(cert.expect("cert")).expect("add root");
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let config = if with_certificate {
        let chain = CertificateDer::pem_slice_iter(pki.client_cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("client chain");
        let key = PrivateKeyDer::from_pem_slice(pki.client_key.as_bytes()).expect("client key");
        builder
            .with_client_auth_cert(chain, key)
            .expect("client auth")
    } else {
        builder.with_no_client_auth()
    };
    Arc::new(config)
}

/// One HTTP/1.1 request over a real TLS connection to `localhost:port`; the status and body,
/// or the error that stopped it (handshake refused, connection closed).
async fn https(
    tls: Arc<rustls::ClientConfig>,
    port: u16,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&serde_json::Value>,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        payload.len()
    );
    if let Some(key) = key {
        request.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    if body.is_some() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str("\r\n");
    request.push_str(&payload);
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    // A server that closes without TLS close_notify shows up as an error after the data.
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP response: {text:?}")))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_self_signed_ca_and_plain_http_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(dir.path());
    let mut cfg = config(dir.path());
    cfg.tls_cert = Some(pki.server_cert.clone());
    cfg.tls_key = Some(pki.server_key.clone());
    cfg.require_tls = true;
    let server = vellum_server::start(cfg)
        .await
        .expect("https server starts");
    assert!(server.https);
    let admin = std::fs::read_to_string(server.admin_key_file.clone().expect("admin"))
        .expect("key")
        .trim()
        .to_owned();
    let port = server.addr.port();
    let trusted = tls_client(&pki, true, false);
    let (status, receipt) = https(
        trusted.clone(),
        port,
        "POST",
        "/v1/events",
        Some(&admin),
        Some(&serde_json::json!({"action": "tls.probe", "status": "success"})),
    )
    .await
    .expect("https request");
    assert_eq!(status, 201, "{receipt}");
    assert!(receipt.contains("\"seq\":0"), "{receipt}");
    let (status, _) = https(trusted.clone(), port, "GET", "/healthz", None, None)
        .await
        .expect("health");
    assert_eq!(status, 200);

    // Plain HTTP on the same port gets no HTTP answer (the port speaks TLS only).
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("plain client");
    let attempt = plain
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(attempt.is_err(), "plain HTTP was answered: {attempt:?}");
    // A client that does not trust the CA cannot connect.
    let untrusting = tls_client(&pki, false, false);
    assert!(
        https(untrusting, port, "GET", "/healthz", None, None)
            .await
            .is_err()
    );
    server.shutdown().await.expect("clean shutdown");

    // require_tls without a certificate: refused before the data directory is touched.
    let other = tempfile::tempdir().expect("tempdir");
    let mut plain_cfg = config(other.path());
    plain_cfg.require_tls = true;
    let refused = vellum_server::start(plain_cfg).await;
    let message = refused.err().expect("refused").to_string();
    assert!(message.contains("AUDIT_REQUIRE_TLS"), "{message}");
    assert!(!other.path().join("data").exists());

    // A key file that is not a key: a clear error naming the file.
    let mut bad = config(other.path());
    bad.tls_cert = Some(pki.server_cert.clone());
    bad.tls_key = Some(pki.ca.clone());
    let message = vellum_server::start(bad)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(message.contains("ca.pem"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(dir.path());
    let mut cfg = config(dir.path());
    cfg.tls_cert = Some(pki.server_cert.clone());
    cfg.tls_key = Some(pki.server_key.clone());
    cfg.tls_client_ca = Some(pki.ca.clone());
    let server = vellum_server::start(cfg).await.expect("mTLS server starts");
    let port = server.addr.port();
    let (status, _) = https(
        tls_client(&pki, true, true),
        port,
        "GET",
        "/healthz",
        None,
        None,
    )
    .await
    .expect("with a certificate");
    assert_eq!(status, 200);
    let without = https(
        tls_client(&pki, true, false),
        port,
        "GET",
        "/healthz",
        None,
        None,
    )
    .await;
    assert!(
        without.is_err(),
        "a client without a certificate was served: {without:?}"
    );
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_has_its_own_request_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.rate_limit_per_second = 1;
    cfg.rate_limit_burst = 3;
    let server = vellum_server::start(cfg).await.expect("server starts");
    let admin = std::fs::read_to_string(server.admin_key_file.clone().expect("admin"))
        .expect("key")
        .trim()
        .to_owned();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    // A second key, created before the admin's budget runs out.
    let created: serde_json::Value = http
        .post(format!("{base}/v1/api-keys"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"role": "reader"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let reader = created["key"].as_str().expect("key").to_owned();
    let mut limited = None;
    for _ in 0..10 {
        let response = http
            .get(format!("{base}/v1/api-keys"))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("request");
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("the admin key was never limited");
    let retry_after: u64 = limited
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = limited.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    // Another key is not affected by the admin's spending.
    let other = http
        .get(format!("{base}/v1/events"))
        .bearer_auth(&reader)
        .send()
        .await
        .expect("request");
    assert_eq!(other.status(), 200);
    server.shutdown().await.expect("clean shutdown");
}

/// One raw HTTP/1.1 exchange over TLS to `localhost:port`: the whole response text.
async fn https_exchange(tls: Arc<rustls::ClientConfig>, port: u16, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .expect("handshake");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

/// The console over HTTPS: its cookies are `Secure`, and a form must come from the `https`
/// origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_cookies_are_secure_over_https() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(dir.path());
    let mut cfg = config(dir.path());
    cfg.tls_cert = Some(pki.server_cert.clone());
    cfg.tls_key = Some(pki.server_key.clone());
    let server = vellum_server::start(cfg)
        .await
        .expect("https server starts");
    let admin = std::fs::read_to_string(server.admin_key_file.clone().expect("admin"))
        .expect("key")
        .trim()
        .to_owned();
    let port = server.addr.port();
    let tls = tls_client(&pki, true, false);
    let page = https_exchange(
        tls.clone(),
        port,
        "GET /console/signin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let cookie_line = page
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie: vellum_signin=")
        })
        .expect("sign-in cookie");
    assert!(cookie_line.contains("; Secure"), "{cookie_line}");
    let token = cookie_line["set-cookie: vellum_signin=".len()..]
        .split(';')
        .next()
        .expect("token")
        .to_owned();
    let sign_in = |origin: &str| {
        let body = format!("csrf={token}&apiKey={admin}");
        format!(
            "POST /console/signin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nOrigin: {origin}\r\nCookie: vellum_signin={token}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let refused = https_exchange(tls.clone(), port, &sign_in("http://localhost")).await;
    assert!(
        refused.starts_with("HTTP/1.1 403"),
        "an http origin on an https server: {refused}"
    );
    let answer = https_exchange(tls, port, &sign_in("https://localhost")).await;
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    let session = answer
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie: vellum_session=")
        })
        .expect("session cookie");
    for flag in ["; Secure", "; HttpOnly", "; SameSite=Strict", "; Path=/"] {
        assert!(session.contains(flag), "{session} lacks {flag}");
    }
    server.shutdown().await.expect("clean shutdown");
}
