//! Syslog transports: TCP and TLS with RFC 6587 octet counting on one persistent connection
//! (RFC 5425 for TLS), and UDP with one message per datagram (RFC 5426).

use crate::config::{SyslogTransport, split_address};
use crate::error::ForwardError;
use crate::sink::SendError;
use futures_util::FutureExt;
use rustls_pki_types::ServerName;
use serde_json::Value;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use vellum_core::forward::syslog::{SyslogConfig, format_5424, frame_octet_counting};
use vellum_http::Trust;

/// The largest UDP payload over IPv4 (65 535 − 8 UDP − 20 IP header bytes).
const MAX_UDP_PAYLOAD: usize = 65_507;

enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Whether the receiver closed the connection (or it broke) while it was idle. Writing to
    /// such a socket can still succeed once (the kernel buffers it) and the batch would be
    /// lost, so this is checked before every batch.
    fn closed_by_peer(&mut self) -> bool {
        let mut scratch = [0u8; 1024];
        match self {
            Self::Tcp(stream) => match stream.try_read(&mut scratch) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != io::ErrorKind::WouldBlock,
            },
            Self::Tls(stream) => match stream.read(&mut scratch).now_or_never() {
                None => false,
                Some(Ok(n)) => n == 0,
                Some(Err(_)) => true,
            },
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Tcp(stream) => {
                stream.write_all(bytes).await?;
                stream.flush().await
            }
            Self::Tls(stream) => {
                stream.write_all(bytes).await?;
                stream.flush().await
            }
        }
    }

    async fn shutdown(&mut self) {
        let _ = match self {
            Self::Tcp(stream) => stream.shutdown().await,
            Self::Tls(stream) => stream.shutdown().await,
        };
    }
}

/// A syslog sink's connection state.
pub(crate) struct SyslogSink {
    transport: SyslogTransport,
    address: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    format: SyslogConfig,
    timeout: Duration,
    stream: Option<Stream>,
    udp: Option<UdpSocket>,
}

impl std::fmt::Debug for SyslogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyslogSink")
            .field("transport", &self.transport)
            .field("address", &self.address)
            .field("connected", &self.connected())
            .finish_non_exhaustive()
    }
}

impl SyslogSink {
    pub(crate) fn new(
        transport: SyslogTransport,
        address: &str,
        server_name: Option<&str>,
        trust: Option<Trust>,
        format: SyslogConfig,
        timeout: Duration,
    ) -> Result<Self, ForwardError> {
        let (host, _) = split_address(address).map_err(|e| ForwardError::config("address", e))?;
        // The settings were validated with the configuration; an odd host name is neutralized
        // by the formatter (RFC 5424 header grammar), so it needs no check here.
        let tls = match trust {
            Some(trust) => {
                let config = vellum_http::tls_client_config(&trust)
                    .map_err(|e| ForwardError::config("caFile", e.0))?;
                let name = server_name.unwrap_or(host);
                let name = ServerName::try_from(name.to_owned())
                    .map_err(|e| ForwardError::config("serverName", format!("{name:?}: {e}")))?;
                Some((TlsConnector::from(Arc::new(config)), name))
            }
            None => None,
        };
        Ok(Self {
            transport,
            address: address.to_owned(),
            tls,
            format,
            timeout,
            stream: None,
            udp: None,
        })
    }

    pub(crate) fn connected(&self) -> bool {
        self.stream.is_some() || self.udp.is_some()
    }

    pub(crate) async fn close(&mut self) {
        if let Some(mut stream) = self.stream.take() {
            let _ = tokio::time::timeout(self.timeout, stream.shutdown()).await;
        }
        self.udp = None;
    }

    pub(crate) async fn send(&mut self, events: &[Value]) -> Result<(), SendError> {
        match self.transport {
            SyslogTransport::Udp => self.send_udp(events).await,
            SyslogTransport::Tcp | SyslogTransport::Tls => {
                let mut bytes = Vec::with_capacity(events.len() * 1200);
                for event in events {
                    bytes.extend(frame_octet_counting(&format_5424(event, &self.format)));
                }
                let timeout = self.timeout;
                match tokio::time::timeout(timeout, self.write_stream(&bytes)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => {
                        self.stream = None;
                        Err(SendError::Transient {
                            reason: format!("syslog {}: {e}", self.address),
                            retry_after: None,
                        })
                    }
                    Err(_) => {
                        self.stream = None;
                        Err(SendError::Transient {
                            reason: format!(
                                "syslog {}: not written within {} ms",
                                self.address,
                                timeout.as_millis()
                            ),
                            retry_after: None,
                        })
                    }
                }
            }
        }
    }

    async fn resolve(&self) -> io::Result<Vec<SocketAddr>> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(self.address.as_str())
            .await?
            .collect();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the name resolves to no address",
            ));
        }
        Ok(addrs)
    }

    async fn connect(&self) -> io::Result<Stream> {
        let mut last = None;
        for addr in self.resolve().await? {
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    tcp.set_nodelay(true)?;
                    return match &self.tls {
                        None => Ok(Stream::Tcp(tcp)),
                        Some((connector, name)) => Ok(Stream::Tls(Box::new(
                            connector.connect(name.clone(), tcp).await?,
                        ))),
                    };
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no address to connect to")))
    }

    async fn write_stream(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.stream.as_mut().is_some_and(Stream::closed_by_peer) {
            tracing::debug!(address = %self.address, "syslog receiver closed the connection; reconnecting");
            self.stream = None;
        }
        if self.stream.is_none() {
            self.stream = Some(self.connect().await?);
        }
        match self.stream.as_mut() {
            Some(stream) => stream.write_all(bytes).await,
            None => Err(io::Error::other("not connected")),
        }
    }

    async fn send_udp(&mut self, events: &[Value]) -> Result<(), SendError> {
        let transient = |address: &str, e: io::Error| SendError::Transient {
            reason: format!("syslog udp {address}: {e}"),
            retry_after: None,
        };
        if self.udp.is_none() {
            let addr = self
                .resolve()
                .await
                .map_err(|e| transient(&self.address, e))?[0];
            let local: SocketAddr = if addr.is_ipv4() {
                SocketAddr::from(([0, 0, 0, 0], 0))
            } else {
                SocketAddr::from(([0u16; 8], 0))
            };
            let socket = UdpSocket::bind(local)
                .await
                .map_err(|e| transient(&self.address, e))?;
            socket
                .connect(addr)
                .await
                .map_err(|e| transient(&self.address, e))?;
            self.udp = Some(socket);
        }
        let Some(socket) = self.udp.as_ref() else {
            return Err(transient(&self.address, io::Error::other("no socket")));
        };
        let mut refused = Vec::new();
        for (i, event) in events.iter().enumerate() {
            let message = format_5424(event, &self.format);
            if message.len() > MAX_UDP_PAYLOAD {
                refused.push((
                    i,
                    format!(
                        "syslog message of {} bytes does not fit a UDP datagram (at most {MAX_UDP_PAYLOAD})",
                        message.len()
                    ),
                ));
                continue;
            }
            let sent = tokio::time::timeout(self.timeout, socket.send(message.as_bytes())).await;
            match sent {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    // A connected UDP socket reports an earlier datagram's ICMP "port
                    // unreachable" here: the receiver is down. Resending repeats what went
                    // out before the error (UDP is at most once per attempt anyway).
                    self.udp = None;
                    return Err(transient(&self.address, e));
                }
                Err(_) => {
                    self.udp = None;
                    return Err(transient(
                        &self.address,
                        io::Error::new(io::ErrorKind::TimedOut, "send timed out"),
                    ));
                }
            }
        }
        if refused.is_empty() {
            Ok(())
        } else {
            Err(SendError::RefusedSome { refused })
        }
    }
}
