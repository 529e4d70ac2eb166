//! The HTTP connector: plain HTTP, or TLS on rustls with the *ring* provider. The stack itself
//! lives in `vellum-http` (shared with the SIEM forwarder); this module maps its errors to
//! [`ClientError::Config`].

use crate::error::ClientError;
use std::time::Duration;

pub(crate) use vellum_http::Trust;

/// A connector for `http` and `https` URLs.
pub(crate) fn connector(
    trust: &Trust,
    connect_timeout: Duration,
) -> Result<vellum_http::Connector, ClientError> {
    vellum_http::connector(trust, connect_timeout).map_err(|e| match trust {
        Trust::System => ClientError::Config(format!(
            "{e}; pass one with ClientBuilder::ca_certificate_pem"
        )),
        Trust::CaPem(_) | Trust::None => ClientError::Config(e.0),
    })
}
