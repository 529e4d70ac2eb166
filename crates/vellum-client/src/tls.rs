//! The HTTP connector: plain HTTP, or TLS on rustls with the *ring* provider (the server's
//! own TLS stack, so one build carries one crypto library).
//!
//! The client does not use a process-wide rustls provider: it passes *ring* explicitly, so an
//! application that picked another provider (or none) is neither overridden nor broken.

use crate::error::ClientError;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::sync::Arc;
use std::time::Duration;

/// Where trust for `https` URLs comes from.
#[derive(Debug, Clone)]
pub(crate) enum Trust {
    /// The operating system's store (rustls-native-certs).
    System,
    /// Exactly the CA certificates in this PEM.
    CaPem(Vec<u8>),
    /// Nothing: the URL is plain `http`.
    None,
}

fn roots(trust: &Trust) -> Result<rustls::RootCertStore, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    match trust {
        Trust::None => {}
        Trust::CaPem(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert =
                    cert.map_err(|e| ClientError::Config(format!("CA certificate PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| ClientError::Config(format!("CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(ClientError::Config(
                    "the CA PEM holds no CERTIFICATE block".into(),
                ));
            }
        }
        Trust::System => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A malformed certificate in the system store is skipped, as browsers do.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(ClientError::Config(format!(
                    "no trusted CA certificates found in the system store ({} errors); pass \
                     one with ClientBuilder::ca_certificate_pem",
                    found.errors.len()
                )));
            }
        }
    }
    Ok(roots)
}

/// A connector for `http` and `https` URLs.
pub(crate) fn connector(
    trust: &Trust,
    connect_timeout: Duration,
) -> Result<HttpsConnector<HttpConnector>, ClientError> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Config(format!("TLS: {e}")))?
    .with_root_certificates(roots(trust)?)
    .with_no_client_auth();
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
