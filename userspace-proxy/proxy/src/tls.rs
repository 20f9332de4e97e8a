//! The TLS front of the proxy: read the ClientHello without consuming it, decide by SNI, then
//! either splice the raw bytes to the upstream (passthrough) or terminate TLS with a leaf
//! minted by the bottle's CA.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::ca::BottleCa;
use crate::policy::PolicyHandle;

/// Largest ClientHello we wait for (post-quantum key shares make them ~2 KiB; 32 KiB is ample).
const MAX_HELLO: usize = 32 * 1024;
/// How long a client may take to send its ClientHello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsFrontError {
    #[error("client sent no ClientHello within {0:?}")]
    Timeout(Duration),
    #[error("ClientHello larger than {MAX_HELLO} bytes")]
    TooLarge,
    #[error("connection closed before the ClientHello")]
    Closed,
    #[error("not a TLS ClientHello: {0}")]
    Malformed(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The ClientHello's server name and every byte read so far (to replay).
#[derive(Debug)]
pub struct PeekedHello {
    pub sni: Option<String>,
    pub buffered: Vec<u8>,
}

/// Reads until a complete ClientHello has arrived; bounded in size and time.
pub async fn peek_client_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<PeekedHello, TlsFrontError> {
    let work = async {
        let mut acceptor = Acceptor::default();
        let mut buffered = Vec::with_capacity(2048);
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(TlsFrontError::Closed);
            }
            if buffered.len() + n > MAX_HELLO {
                return Err(TlsFrontError::TooLarge);
            }
            buffered.extend_from_slice(&chunk[..n]);
            let mut input = &chunk[..n];
            while !input.is_empty() {
                let read = acceptor
                    .read_tls(&mut input)
                    .map_err(|e| TlsFrontError::Malformed(e.to_string()))?;
                if read == 0 {
                    break;
                }
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    let sni = accepted
                        .client_hello()
                        .server_name()
                        .map(|s| s.to_ascii_lowercase());
                    return Ok(PeekedHello { sni, buffered });
                }
                Ok(None) => continue,
                Err((e, _)) => return Err(TlsFrontError::Malformed(e.to_string())),
            }
        }
    };
    tokio::time::timeout(HELLO_TIMEOUT, work)
        .await
        .map_err(|_| TlsFrontError::Timeout(HELLO_TIMEOUT))?
}

/// A stream that first yields `prefix`, then reads from `inner`. Writes go to `inner`.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The name the agent's launch-time check asks for (`.invalid` can never be a real host):
/// the proxy completes the handshake with a leaf from the bottle's CA and then closes, so the
/// agent can prove the container's trust bundle validates the bottle's CA. Nothing is
/// forwarded for it.
pub const SELF_CHECK_HOST: &str = "self-check.bottle.invalid";

/// Picks the leaf by SNI: only allowlisted, non-passthrough names (and [`SELF_CHECK_HOST`])
/// get one. Returning `None` aborts the handshake.
#[derive(Debug)]
struct BottleCertResolver {
    policy: PolicyHandle,
    ca: Arc<BottleCa>,
}

impl ResolvesServerCert for BottleCertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name()?.to_ascii_lowercase();
        if sni == SELF_CHECK_HOST {
            return self.ca.leaf(&sni).ok();
        }
        let policy = self.policy.current();
        let route = policy.lookup(&sni)?;
        if route.passthrough {
            return None;
        }
        self.ca.leaf(&sni).ok()
    }
}

/// The bottle's TLS server configuration (h2 and http/1.1).
pub fn server_config(
    policy: PolicyHandle,
    ca: Arc<BottleCa>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(BottleCertResolver { policy, ca }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
