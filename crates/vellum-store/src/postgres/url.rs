//! Connection strings: `sslmode` as libpq knows it, rustls, and redaction for messages.
//!
//! tokio-postgres understands `sslmode=disable|prefer|require` only, and does no TLS itself.
//! So the store takes `sslmode` and `sslrootcert` out of the URL before tokio-postgres parses
//! it, and builds the rustls configuration (ring provider, as the server's HTTPS) itself:
//!
//! | `sslmode` | transport | certificate |
//! | --- | --- | --- |
//! | absent, `disable`, `allow` | plain | — |
//! | `prefer` | TLS when the server offers it, else plain | not checked |
//! | `require` | TLS or no connection | not checked (libpq's meaning) |
//! | `verify-ca` | TLS | chain to `sslrootcert` (or `~/.postgresql/root.crt`) |
//! | `verify-full` | TLS | chain, and the host name must match |
//!
//! Client certificates (`sslcert`, `sslkey`) are not supported.

use crate::StoreError;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// The `sslmode` of a connection string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// A parsed connection string.
pub(crate) struct Target {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) ssl: SslMode,
    pub(crate) root_cert: Option<PathBuf>,
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2))
            && let (Some(h), Some(l)) = (hex(h), hex(l))
        {
            out.extend(u8::try_from(h * 16 + l).ok());
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Replaces the password of a connection string (URL user info, `password=` parameter or
/// key/value) with `***`, for error messages and logs.
pub(crate) fn redact(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest_start + colon + 1..rest_start + at, "***");
            }
        }
    }
    // `password=...` as a URL query parameter or a key/value pair.
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.to_ascii_lowercase().find("password=") {
        let value_start = i + "password=".len();
        result.push_str(&rest[..value_start]);
        result.push_str("***");
        let tail = &rest[value_start..];
        let end = tail.find(['&', ' ']).unwrap_or(tail.len());
        rest = &tail[end..];
    }
    result.push_str(rest);
    result
}

fn parse_mode(value: &str) -> Result<SslMode, StoreError> {
    Ok(match value {
        "disable" | "allow" => SslMode::Disable,
        "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        other => {
            return Err(StoreError::Unavailable(format!(
                "unknown sslmode {other:?} in the PostgreSQL URL"
            )));
        }
    })
}

/// Parses a connection string (URL or key/value form), taking out `sslmode` and
/// `sslrootcert`.
pub(crate) fn parse(url: &str) -> Result<Target, StoreError> {
    let mut ssl = SslMode::Disable;
    let mut root_cert = None;
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    match key {
                        "sslmode" => ssl = parse_mode(&percent_decode(value))?,
                        "sslrootcert" => root_cert = Some(PathBuf::from(percent_decode(value))),
                        _ => kept.push(pair),
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for pair in url.split_whitespace() {
            match pair.split_once('=') {
                Some(("sslmode", value)) => ssl = parse_mode(value.trim_matches('\''))?,
                Some(("sslrootcert", value)) => {
                    root_cert = Some(PathBuf::from(value.trim_matches('\'')));
                }
                _ => kept.push(pair),
            }
        }
        kept.join(" ")
    };
    let config: tokio_postgres::Config = rest.parse().map_err(|e| {
        StoreError::Unavailable(format!("invalid PostgreSQL URL {}: {e}", redact(url)))
    })?;
    Ok(Target {
        config,
        ssl,
        root_cert,
    })
}

/// Accepts any certificate (`sslmode=require`/`prefer`: encrypted, not authenticated) but still
/// checks that the server holds the key of the certificate it presented.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct VerifyChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for VerifyChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn tls_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("PostgreSQL TLS setup: {e}"))
}

/// The rustls connector for `target`, or `None` for a plain connection.
pub(crate) fn tls_connector(
    target: &Target,
) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?;
    let config = match target.ssl {
        SslMode::Disable => return Ok(None),
        SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth(),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let path = match &target.root_cert {
                Some(path) => path.clone(),
                None => std::env::var_os("HOME")
                    .map(|home| PathBuf::from(home).join(".postgresql/root.crt"))
                    .filter(|p| p.exists())
                    .ok_or_else(|| {
                        tls_err("sslmode=verify-ca/verify-full needs sslrootcert=<CA file>")
                    })?,
            };
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(&path)
                .map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
            for cert in certs {
                let cert = cert.map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
                roots.add(cert).map_err(tls_err)?;
            }
            if roots.is_empty() {
                return Err(tls_err(format!("{} holds no certificate", path.display())));
            }
            let roots = Arc::new(roots);
            if target.ssl == SslMode::VerifyFull {
                builder.with_root_certificates(roots).with_no_client_auth()
            } else {
                let verifier =
                    rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                        .build()
                        .map_err(tls_err)?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(VerifyChainOnly(verifier)))
                    .with_no_client_auth()
            }
        }
    };
    Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
}

/// tokio-postgres' own mode for a libpq `sslmode`.
pub(crate) fn driver_mode(ssl: SslMode) -> tokio_postgres::config::SslMode {
    match ssl {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://vellum:s3cr%40t@db:5432/audit?sslmode=require"),
            "postgres://vellum:***@db:5432/audit?sslmode=require"
        );
        assert_eq!(
            redact("postgres://db/audit?user=v&password=hunter2&x=1"),
            "postgres://db/audit?user=v&password=***&x=1"
        );
        assert_eq!(
            redact("host=db password=hunter2 dbname=a"),
            "host=db password=*** dbname=a"
        );
        assert_eq!(
            redact("postgres://postgres@h/db"),
            "postgres://postgres@h/db"
        );
    }

    #[test]
    fn sslmode_is_taken_out_of_the_url() {
        let t = parse("postgres://u:p@h:5433/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=x")
            .map_err(|e| e.to_string())
            .expect("parses");
        assert_eq!(t.ssl, SslMode::VerifyFull);
        assert_eq!(t.root_cert, Some(PathBuf::from("/tmp/ca.pem")));
        assert_eq!(t.config.get_application_name(), Some("x"));
        let t = parse("host=h user=u sslmode=require")
            .map_err(|e| e.to_string())
            .expect("kv");
        assert_eq!(t.ssl, SslMode::Require);
        assert_eq!(
            parse("postgres://h/db")
                .map_err(|e| e.to_string())
                .expect("plain")
                .ssl,
            SslMode::Disable
        );
        let err = parse("postgres://u:topsecret@h/db?sslmode=bogus")
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| !e.contains("topsecret")));
        // Without a CA file, verification modes are refused rather than silently weakened.
        let t = parse("postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
            .map_err(|e| e.to_string())
            .expect("parses");
        assert!(tls_connector(&t).is_err());
        let t = parse("postgres://h/db?sslmode=require")
            .map_err(|e| e.to_string())
            .expect("parses");
        assert!(matches!(tls_connector(&t), Ok(Some(_))));
    }
}
