//! # vellum-http
//!
//! The outbound HTTP stack shared by Vellum's clients of other services: the SDK
//! (`vellum-client`, which talks to a Vellum server) and the SIEM forwarder (`vellum-forward`,
//! which talks to webhooks, Splunk, OCSF and FHIR receivers). One place decides how a Vellum
//! process makes a TLS connection:
//!
//! - hyper 1 with the hyper-util "legacy" pooled client, HTTP/1.1;
//! - rustls with the *ring* provider, passed explicitly rather than installed process-wide, so
//!   an application that picked another provider (or none) is neither overridden nor broken,
//!   and one build carries one crypto library (the server's TLS is rustls/*ring* too);
//! - trust from the operating system's store or from exactly the CA certificates given
//!   ([`Trust`]).
//!
//! Not reqwest: enabling a reqwest TLS feature anywhere in the workspace turns on rustls
//! features that make every `reqwest::Client::new()` without a process-wide provider panic.

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::sync::Arc;
use std::time::Duration;

/// Where trust for TLS connections comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The operating system's store (rustls-native-certs).
    System,
    /// Exactly the CA certificates in this PEM.
    CaPem(Vec<u8>),
    /// Nothing: only plain `http` (or plain TCP) is used.
    None,
}

/// A TLS or client setting that cannot be used (bad PEM, empty trust store).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The connector of [`HttpClient`]: `http` and `https` URLs.
pub type Connector = HttpsConnector<HttpConnector>;

/// A pooled HTTP/1.1 client with a whole-body request type.
pub type HttpClient = hyper_util::client::legacy::Client<Connector, Full<Bytes>>;

/// The root certificates `trust` stands for.
pub fn root_store(trust: &Trust) -> Result<rustls::RootCertStore, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    match trust {
        Trust::None => {}
        Trust::CaPem(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| ConfigError(format!("CA certificate PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| ConfigError(format!("CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(ConfigError("the CA PEM holds no CERTIFICATE block".into()));
            }
        }
        Trust::System => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A malformed certificate in the system store is skipped, as browsers do.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(ConfigError(format!(
                    "no trusted CA certificates found in the system store ({} errors); \
                     configure a CA certificate",
                    found.errors.len()
                )));
            }
        }
    }
    Ok(roots)
}

/// A rustls client configuration (ring provider, safe default protocol versions, no client
/// certificate) trusting `trust`. Also used for raw TLS streams (syslog over TLS).
pub fn tls_client_config(trust: &Trust) -> Result<rustls::ClientConfig, ConfigError> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ConfigError(format!("TLS: {e}")))?
    .with_root_certificates(root_store(trust)?)
    .with_no_client_auth())
}

/// A connector for `http` and `https` URLs, with TCP_NODELAY and a connect timeout.
pub fn connector(trust: &Trust, connect_timeout: Duration) -> Result<Connector, ConfigError> {
    let config = tls_client_config(trust)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

/// A pooled client over [`connector`]; idle connections are closed after `pool_idle_timeout`.
/// Must be called inside a tokio runtime (the pool's timer and executor are tokio's).
pub fn client(
    trust: &Trust,
    connect_timeout: Duration,
    pool_idle_timeout: Duration,
) -> Result<HttpClient, ConfigError> {
    let connector = connector(trust, connect_timeout)?;
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(pool_idle_timeout)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_pem_without_certificates_is_refused() {
        let err = root_store(&Trust::CaPem(b"not a pem".to_vec())).err();
        assert!(err.is_some_and(|e| e.0.contains("no CERTIFICATE")));
    }

    #[test]
    fn plain_trust_builds_a_connector() {
        assert!(connector(&Trust::None, Duration::from_secs(1)).is_ok());
    }
}
