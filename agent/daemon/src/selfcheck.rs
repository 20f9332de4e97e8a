//! The launch-time trust check: before a workload starts, the agent makes a real TLS
//! handshake from inside the bottle's network namespace to the bottle's own proxy
//! (`<gateway>:443`, SNI [`SELF_CHECK_HOST`]), verifying the proxy's certificate against
//! exactly the trust bundle installed in the container's rootfs. If the container's TLS
//! clients could not trust the bottle's CA (a bundle the image broke, a proxy that does not
//! answer), the launch stops with the reason instead of starting a workload whose every
//! HTTPS request would fail.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bottle_proxy::tls::SELF_CHECK_HOST;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::netns::{self, NetnsError};

/// Bound on the connect and on each read/write of the handshake.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The proxy's intercepting port on the gateway.
const HTTPS_PORT: u16 = 443;

#[derive(Debug, thiserror::Error)]
pub enum SelfCheckError {
    #[error("the container's trust bundle (/etc/ssl/certs/ca-certificates.crt) holds no usable certificate{0}")]
    NoCerts(String),
    #[error("cannot reach the bottle's proxy at {addr} from inside the bottle: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS verification of the bottle's proxy failed inside the bottle: {0} (the image's trust bundle does not validate the bottle's CA; check /etc/ssl/certs/ca-certificates.crt in the image)")]
    Handshake(String),
    #[error("setting up the TLS check: {0}")]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

pub type Result<T> = std::result::Result<T, SelfCheckError>;

impl SelfCheckError {
    /// The image's fault (its trust bundle), not the agent's.
    pub fn is_user_error(&self) -> bool {
        matches!(self, Self::NoCerts(_) | Self::Handshake(_))
    }
}

/// Parses `bundle` like OpenSSL would read it: every PEM certificate must parse.
fn roots(bundle: &[u8]) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    let mut bad = 0usize;
    for cert in CertificateDer::pem_slice_iter(bundle) {
        match cert {
            Ok(c) => {
                if store.add(c).is_err() {
                    bad += 1;
                }
            }
            Err(e) => {
                return Err(SelfCheckError::NoCerts(format!(
                    " (the PEM does not parse: {e})"
                )))
            }
        }
    }
    if store.is_empty() {
        let why = if bad > 0 {
            format!(" ({bad} certificates could not be used)")
        } else {
            String::new()
        };
        return Err(SelfCheckError::NoCerts(why));
    }
    Ok(store)
}

/// Starts the check on a thread of its own inside namespace `netns_name` (no second thread to
/// enter it), against `gateway`, trusting only `bundle`; joining the handle gives its result.
pub fn spawn(
    netns_name: &str,
    id: &str,
    gateway: Ipv4Addr,
    bundle: Vec<u8>,
) -> Result<std::thread::JoinHandle<netns::Result<Result<()>>>> {
    Ok(netns::spawn_in(
        netns_name,
        format!("trust-{id}"),
        move || check_here(gateway, &bundle),
    )?)
}

/// The check, from the calling thread's namespace.
fn check_here(gateway: Ipv4Addr, bundle: &[u8]) -> Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(bundle)?)
        .with_no_client_auth();
    let config = Arc::new(config);
    handshake(config, SocketAddr::from((gateway, HTTPS_PORT)))
}

fn handshake(config: Arc<ClientConfig>, addr: SocketAddr) -> Result<()> {
    let connect = |source| SelfCheckError::Connect { addr, source };
    let begun = std::time::Instant::now();
    let us = |t: std::time::Instant| u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
    let mut sock = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(connect)?;
    let connect_us = us(begun);
    sock.set_read_timeout(Some(TIMEOUT)).map_err(connect)?;
    sock.set_write_timeout(Some(TIMEOUT)).map_err(connect)?;
    // The handshake is a few small writes each way: without this, delayed ACKs can add 40 ms.
    sock.set_nodelay(true).map_err(connect)?;
    let name = ServerName::try_from(SELF_CHECK_HOST)
        .map_err(|e| SelfCheckError::Handshake(e.to_string()))?;
    let mut conn = ClientConnection::new(config, name)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)
            .map_err(|e| SelfCheckError::Handshake(e.to_string()))?;
    }
    let handshake_us = us(begun);
    // Done: say goodbye (best effort) and drain what the proxy sends until it closes.
    conn.send_close_notify();
    let _ = conn.complete_io(&mut sock);
    let _ = sock.flush();
    let mut sink = [0u8; 256];
    let _ = sock.read(&mut sink);
    tracing::debug!(
        connect_us,
        handshake_us,
        total_us = us(begun),
        "trust check"
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn broken_bundles_are_refused_with_a_reason() {
        assert!(matches!(roots(b""), Err(SelfCheckError::NoCerts(_))));
        let broken = b"-----BEGIN CERTIFICATE-----\nMIIBroken\n";
        assert!(roots(broken).is_err());
    }
}
