//! Connections to real upstreams: resolved on the host (or `connect_to`), checked against the
//! SSRF rules, dialled with a timeout, TLS-verified against system roots plus configured CAs.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::policy::PolicyHandle;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const TLS_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no egress route for {0}")]
    NoRoute(String),
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("{host} resolves only to internal addresses ({addrs}); add them to the route's pipelock.ssrf_ip_allowlist if that is intended")]
    Ssrf { host: String, addrs: String },
    #[error("cannot connect to {host} ({addr}): {source}")]
    Connect {
        host: String,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {0} timed out")]
    Timeout(String),
    #[error("TLS with {host} failed: {source}")]
    Tls {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("invalid upstream host {0:?}")]
    BadHost(String),
    #[error("cannot load upstream trust roots: {0}")]
    Roots(String),
}

/// Builds the TLS client configuration for upstreams: the system's roots plus `extra_pems`
/// (files of PEM certificates, e.g. a corporate or test CA).
pub fn client_config(
    extra_pems: &[Vec<u8>],
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, UpstreamError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    for pem in extra_pems {
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| UpstreamError::Roots(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| UpstreamError::Roots(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Roots(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Resolves and dials `host:port` as the route for `host` allows. Returns the TCP stream.
pub async fn dial(
    policy: &PolicyHandle,
    host: &str,
    port: u16,
) -> Result<TcpStream, UpstreamError> {
    let current = policy.current();
    let route = current
        .lookup(host)
        .ok_or_else(|| UpstreamError::NoRoute(host.to_string()))?;
    let candidates: Vec<SocketAddr> = match route.connect_to {
        // `connect_to` names the HTTPS endpoint; plain HTTP goes to the same address on the
        // port the request asked for.
        Some(addr) if port == 443 => vec![addr],
        Some(addr) => vec![SocketAddr::new(addr.ip(), port)],
        None => tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| UpstreamError::Timeout(host.to_string()))?
            .map_err(|source| UpstreamError::Resolve {
                host: host.to_string(),
                source,
            })?
            .collect(),
    };
    let allowed: Vec<SocketAddr> = candidates
        .iter()
        .copied()
        .filter(|a| route.upstream_ip_allowed(a.ip()))
        .collect();
    if allowed.is_empty() {
        return Err(UpstreamError::Ssrf {
            host: host.to_string(),
            addrs: candidates
                .iter()
                .map(|a| a.ip().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    drop(current);
    let mut last = None;
    for addr in allowed {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(source)) => {
                last = Some(UpstreamError::Connect {
                    host: host.to_string(),
                    addr,
                    source,
                })
            }
            Err(_) => last = Some(UpstreamError::Timeout(host.to_string())),
        }
    }
    Err(last.unwrap_or_else(|| UpstreamError::Timeout(host.to_string())))
}

/// TLS to `host` over `tcp`, verifying the certificate for `host`.
pub async fn tls(
    config: Arc<ClientConfig>,
    host: &str,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, UpstreamError> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| UpstreamError::BadHost(host.to_string()))?;
    tokio::time::timeout(TLS_TIMEOUT, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| UpstreamError::Timeout(host.to_string()))?
        .map_err(|source| UpstreamError::Tls {
            host: host.to_string(),
            source,
        })
}

/// A connection to an upstream, plain or TLS.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        match self {
            Self::Plain(_) => Connected::new(),
            Self::Tls(tls) => {
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    Connected::new().negotiated_h2()
                } else {
                    Connected::new()
                }
            }
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// The pooled client's connector: every new upstream connection goes through [`dial`], so
/// the bottle's current policy decides where it may go.
#[derive(Clone)]
pub struct Connector {
    pub policy: PolicyHandle,
    pub tls: Arc<ClientConfig>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<UpstreamStream>;
    type Error = UpstreamError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let policy = self.policy.clone();
        let tls_config = self.tls.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| UpstreamError::BadHost(uri.to_string()))?
                .to_string();
            let is_tls = uri.scheme_str() == Some("https");
            let port = uri.port_u16().unwrap_or(if is_tls { 443 } else { 80 });
            let tcp = dial(&policy, &host, port).await?;
            let stream = if is_tls {
                UpstreamStream::Tls(Box::new(tls(tls_config, &host, tcp).await?))
            } else {
                UpstreamStream::Plain(tcp)
            };
            Ok(TokioIo::new(stream))
        })
    }
}
