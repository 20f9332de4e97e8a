//! A bottle's services bound on its gateway address: DNS (UDP and TCP 53), plain HTTP (80),
//! intercepted HTTPS (443) and the explicit proxy (3128). Dropping [`GatewayServices`] stops
//! them all; the bottle then reaches nothing (fail closed).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tracing::debug;

use crate::audit::AuditEvent;
use crate::context::BottleContext;
use crate::http::{Front, ProxyBody};
use crate::tls::{peek_client_hello, Prefixed};

pub const DNS_PORT: u16 = 53;
pub const HTTP_PORT: u16 = 80;
pub const HTTPS_PORT: u16 = 443;
pub const PROXY_PORT: u16 = 3128;

/// How long a client may take to send request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Request header block limit (h1 buffer and h2 header list).
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// TLS handshake bound after the ClientHello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: String,
    #[source]
    pub source: std::io::Error,
}

/// The running services of one bottle.
pub struct GatewayServices {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for GatewayServices {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn tcp_listener(ip: Ipv4Addr, port: u16) -> Result<TcpListener, BindError> {
    let addr = SocketAddr::V4(SocketAddrV4::new(ip, port));
    let err = |source| BindError {
        addr: addr.to_string(),
        source,
    };
    let socket = TcpSocket::new_v4().map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(1024).map_err(err)
}

impl GatewayServices {
    /// Binds every service on the bottle's gateway address and starts serving.
    pub async fn start(ctx: Arc<BottleContext>) -> Result<Self, BindError> {
        let ip = ctx.gateway;
        let dns_addr = SocketAddr::V4(SocketAddrV4::new(ip, DNS_PORT));
        let udp = UdpSocket::bind(dns_addr)
            .await
            .map_err(|source| BindError {
                addr: format!("udp {dns_addr}"),
                source,
            })?;
        let dns_tcp = tcp_listener(ip, DNS_PORT)?;
        let http = tcp_listener(ip, HTTP_PORT)?;
        let https = tcp_listener(ip, HTTPS_PORT)?;
        let proxy = tcp_listener(ip, PROXY_PORT)?;
        let tasks = vec![
            tokio::spawn(crate::dns::serve_udp(udp, ctx.clone())),
            tokio::spawn(crate::dns::serve_tcp(dns_tcp, ctx.clone())),
            tokio::spawn(accept_loop(http, ctx.clone(), Service::PlainHttp)),
            tokio::spawn(accept_loop(https, ctx.clone(), Service::Https)),
            tokio::spawn(accept_loop(proxy, ctx, Service::ExplicitProxy)),
        ];
        Ok(Self { tasks })
    }
}

#[derive(Debug, Clone, Copy)]
enum Service {
    PlainHttp,
    Https,
    ExplicitProxy,
}

async fn accept_loop(listener: TcpListener, ctx: Arc<BottleContext>, service: Service) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if peer.ip() != ctx.bottle_addr {
            debug!(bottle = %ctx.name, %peer, "connection not from the bottle; dropped");
            continue;
        }
        // Over the bottle's limit: close at once, so a flood only hurts its sender.
        let Ok(permit) = ctx.conn_limit.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            match service {
                Service::PlainHttp => {
                    serve_http(TokioIo::new(stream), ctx, Front::Plain, false).await
                }
                Service::Https => tls_front(stream, ctx, None).await,
                Service::ExplicitProxy => {
                    serve_http(TokioIo::new(stream), ctx, Front::Plain, true).await
                }
            }
            drop(permit);
        });
    }
}

fn server_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(MAX_HEADER_BYTES).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    builder
}

/// Serves HTTP on an accepted (or TLS-terminated) connection.
async fn serve_http<I>(io: TokioIo<I>, ctx: Arc<BottleContext>, front: Front, explicit_proxy: bool)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let front = Arc::new(front);
    let service = service_fn(move |req: Request<Incoming>| {
        let ctx = ctx.clone();
        let front = front.clone();
        async move {
            if explicit_proxy && req.method() == Method::CONNECT {
                return Ok(connect_tunnel(req, ctx));
            }
            crate::http::serve(req, ctx, front).await
        }
    });
    if let Err(e) = server_builder()
        .serve_connection_with_upgrades(io, service)
        .await
    {
        debug!(error = %e, "connection ended with an error");
    }
}

fn plain_response(status: StatusCode, message: &str) -> Response<ProxyBody> {
    use http_body_util::BodyExt;
    let mut resp = Response::new(
        http_body_util::Full::new(bytes::Bytes::from(format!("{message}\n")))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp
}

/// `CONNECT host:443` on the explicit proxy: allowed hosts get a tunnel whose TLS must name
/// the same host; what flows inside is handled exactly like port 443.
fn connect_tunnel(mut req: Request<Incoming>, ctx: Arc<BottleContext>) -> Response<ProxyBody> {
    let Some(authority) = req.uri().authority().cloned() else {
        return plain_response(StatusCode::BAD_REQUEST, "CONNECT needs host:port");
    };
    let host = authority.host().to_ascii_lowercase();
    let allowed = ctx.policy.current().lookup(&host).is_some();
    if !allowed || authority.port_u16() != Some(443) {
        ctx.stats.request(&host, "denied", 0, 0);
        ctx.audit.record(&AuditEvent {
            kind: "tunnel",
            host: &host,
            method: Some("CONNECT"),
            status: Some(403),
            decision: "denied",
            reason: Some(if allowed {
                "only port 443 may be tunnelled"
            } else {
                "not in the egress allowlist"
            }),
            ..AuditEvent::default()
        });
        return plain_response(
            StatusCode::FORBIDDEN,
            &format!("{authority} is not allowed by this bottle's egress policy"),
        );
    }
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            tls_front(TokioIo::new(upgraded), ctx, Some(host)).await;
        }
    });
    plain_response(StatusCode::OK, "")
}

fn audit_tls_denied(ctx: &BottleContext, host: &str, reason: &str) {
    ctx.stats.request(host, "denied", 0, 0);
    ctx.audit.record(&AuditEvent {
        kind: "tls",
        host,
        decision: "denied",
        reason: Some(reason),
        ..AuditEvent::default()
    });
}

/// Port 443 (and CONNECT tunnels): decide by SNI, then splice (passthrough) or terminate.
pub async fn tls_front<S>(mut stream: S, ctx: Arc<BottleContext>, expected_host: Option<String>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let hello = match peek_client_hello(&mut stream).await {
        Ok(h) => h,
        Err(e) => {
            debug!(bottle = %ctx.name, error = %e, "no usable ClientHello");
            audit_tls_denied(&ctx, "(none)", "malformed or missing ClientHello");
            return;
        }
    };
    let Some(sni) = hello.sni.clone() else {
        audit_tls_denied(&ctx, "(none)", "ClientHello without a server name");
        return;
    };
    if let Some(expected) = &expected_host {
        if expected != &sni {
            audit_tls_denied(&ctx, &sni, "server name differs from the CONNECT target");
            return;
        }
    }
    if sni == crate::tls::SELF_CHECK_HOST && expected_host.is_none() {
        // The agent's trust check: a handshake, then nothing (see `SELF_CHECK_HOST`).
        let acceptor = tokio_rustls::TlsAcceptor::from(ctx.tls_server.clone());
        if let Ok(Ok(mut tls)) = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            acceptor.accept(Prefixed::new(hello.buffered, stream)),
        )
        .await
        {
            let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.shutdown()).await;
        }
        return;
    }
    let policy = ctx.policy.current();
    let Some(route) = policy.lookup(&sni) else {
        audit_tls_denied(&ctx, &sni, "not in the egress allowlist");
        // Let rustls answer with an alert: the resolver has no certificate for this name.
        let acceptor = tokio_rustls::TlsAcceptor::from(ctx.tls_server.clone());
        let _ = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            acceptor.accept(Prefixed::new(hello.buffered, stream)),
        )
        .await;
        return;
    };
    if route.passthrough {
        drop(policy);
        passthrough(stream, hello.buffered, &sni, &ctx).await;
        return;
    }
    drop(policy);
    let acceptor = tokio_rustls::TlsAcceptor::from(ctx.tls_server.clone());
    let tls = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        acceptor.accept(Prefixed::new(hello.buffered, stream)),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!(bottle = %ctx.name, sni = %sni, error = %e, "TLS handshake with the bottle failed");
            return;
        }
        Err(_) => return,
    };
    serve_http(TokioIo::new(tls), ctx, Front::Tls { sni }, false).await;
}

/// Splices the client's bytes (starting with the buffered ClientHello) to the upstream.
async fn passthrough<S>(mut client: S, hello: Vec<u8>, sni: &str, ctx: &BottleContext)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut upstream: TcpStream = match crate::upstream::dial(&ctx.policy, sni, HTTPS_PORT).await {
        Ok(s) => s,
        Err(e) => {
            debug!(bottle = %ctx.name, sni, error = %e, "passthrough upstream unreachable");
            ctx.stats.request(sni, "error", 0, 0);
            ctx.audit.record(&AuditEvent {
                kind: "tunnel",
                host: sni,
                decision: "error",
                reason: Some("upstream unreachable"),
                ..AuditEvent::default()
            });
            return;
        }
    };
    let hello_len = hello.len() as u64;
    if upstream.write_all(&hello).await.is_err() {
        return;
    }
    let (up, down) = tokio::io::copy_bidirectional(&mut client, &mut upstream)
        .await
        .unwrap_or((0, 0));
    ctx.stats.request(sni, "allowed", up + hello_len, down);
    ctx.audit.record(&AuditEvent {
        kind: "tunnel",
        host: sni,
        bytes_up: up + hello_len,
        bytes_down: down,
        decision: "allowed",
        reason: Some("tls passthrough"),
        ..AuditEvent::default()
    });
}
