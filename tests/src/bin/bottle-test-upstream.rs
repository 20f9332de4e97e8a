//! `bottle-test-upstream --listen IP:PORT... (--tls CERT KEY... | --plain) [--verbose]`: the
//! "internet" servers the end-to-end tests and benchmarks talk to through the proxy.
//!
//! Serves HTTPS (ALPN `h2` and `http/1.1`; SNI picks the certificate among the `--tls` pairs, the
//! first pair serves unknown or absent names) or, with `--plain`, cleartext HTTP/1.1 and h2c
//! (prior knowledge). Prints `ready` on stdout once every listener is bound, then serves until
//! killed. Endpoints:
//!
//! - `/echo*` (any method): 200 JSON with `method`, `path` (with query), `version`,
//!   `authority`, `headers` (lowercase name to value, or to an array of values when repeated),
//!   `body_len` and `body_sha256`, hashed while streaming the request body.
//! - `GET /sse?n=3&delay_ms=500`: `text/event-stream` of `data: event-<i>\n\n`, the first
//!   immediately, then one per delay.
//! - `GET /download?bytes=N`: N bytes where byte i is `i % 251`, streamed in 64 KiB chunks.
//! - `POST /upload`: 200 JSON with `body_len` and `body_sha256`.
//! - `GET /ws`: WebSocket (HTTP/1.1 Upgrade) echo of text and binary messages.
//! - anything else: 404.
//!
//! Nothing is logged per request; `--verbose` logs failed TLS handshakes and connections to stderr.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, UPGRADE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::crypto::ring as ring_provider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Size of the chunks `/download` sends.
const CHUNK: usize = 64 * 1024;
/// `/download` byte i is `i % PATTERN_MOD`.
const PATTERN_MOD: u64 = 251;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(
    name = "bottle-test-upstream",
    about = "Upstream HTTP(S)/WebSocket servers for bottle's end-to-end tests"
)]
struct Args {
    /// Address to listen on (repeatable).
    #[arg(long, value_name = "IP:PORT", required = true)]
    listen: Vec<SocketAddr>,
    /// Certificate chain and key (PEM) to serve; repeatable, SNI picks among them.
    #[arg(long, num_args = 2, value_names = ["CERT", "KEY"])]
    tls: Vec<PathBuf>,
    /// Serve cleartext HTTP/1.1 and h2c instead of TLS.
    #[arg(long, conflicts_with = "tls")]
    plain: bool,
    /// Log failed handshakes and connection errors to stderr.
    #[arg(long)]
    verbose: bool,
}

type RespBody = UnsyncBoxBody<Bytes, Infallible>;

/// Connection builders, chosen by the ALPN protocol the client negotiated.
struct Builders {
    auto: auto::Builder<TokioExecutor>,
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    bottle_tests::serve_main("bottle-test-upstream", run(args))
}

async fn run(args: Args) -> Result<()> {
    let acceptor = if args.plain {
        None
    } else {
        if args.tls.is_empty() {
            bail!("give at least one --tls CERT KEY, or --plain");
        }
        let mut pairs = Vec::new();
        for pair in args.tls.chunks(2) {
            pairs.push(load_pair(&pair[0], &pair[1])?);
        }
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(ring_provider::default_provider()))
                .with_safe_default_protocol_versions()
                .context("configuring TLS versions")?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(SniResolver::new(pairs)?));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Some(TlsAcceptor::from(Arc::new(config)))
    };

    let auto_builder = auto::Builder::new(TokioExecutor::new());
    let builders = Arc::new(Builders {
        http1: auto_builder.clone().http1_only(),
        http2: auto_builder.clone().http2_only(),
        auto: auto_builder,
    });

    let mut listeners = Vec::new();
    for addr in &args.listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        listeners.push(listener);
    }
    let mut tasks = Vec::new();
    for listener in listeners {
        tasks.push(tokio::spawn(accept_loop(
            listener,
            acceptor.clone(),
            Arc::clone(&builders),
            args.verbose,
        )));
    }
    {
        let mut out = std::io::stdout().lock();
        // The reader may have gone away; serving on is still right.
        let _ = writeln!(out, "ready");
        let _ = out.flush();
    }
    for task in tasks {
        task.await.context("accept loop panicked")?;
    }
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    builders: Arc<Builders>,
    verbose: bool,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Typically EMFILE under load: back off instead of spinning.
                if verbose {
                    eprintln!("bottle-test-upstream: accept: {e}");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let builders = Arc::clone(&builders);
        tokio::spawn(async move {
            let result = match acceptor {
                None => serve(stream, &builders.auto).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls)) => {
                            let builder = match tls.get_ref().1.alpn_protocol() {
                                Some(b"h2") => &builders.http2,
                                Some(b"http/1.1") => &builders.http1,
                                _ => &builders.auto,
                            };
                            serve(tls, builder).await
                        }
                        Ok(Err(e)) => Err(anyhow::Error::new(e).context("TLS handshake")),
                        Err(_) => Err(anyhow::anyhow!("TLS handshake timed out")),
                    }
                }
            };
            if let Err(e) = result {
                if verbose {
                    eprintln!("bottle-test-upstream: {peer}: {e:#}");
                }
            }
        });
    }
}

async fn serve<S>(stream: S, builder: &auto::Builder<TokioExecutor>) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service_fn(handle))
        .await
        .map_err(|e| anyhow::anyhow!("serving: {e}"))
}

async fn handle(req: Request<Incoming>) -> Result<Response<RespBody>, Infallible> {
    let path = req.uri().path();
    let response = if path.starts_with("/echo") {
        echo(req).await
    } else {
        match (req.method(), path) {
            (&Method::GET, "/sse") => sse(&req),
            (&Method::GET, "/download") => download(&req),
            (&Method::POST, "/upload") => upload(req).await,
            (&Method::GET, "/ws") => websocket(req),
            (_, "/sse" | "/download" | "/upload" | "/ws") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    };
    Ok(response)
}

fn text(status: StatusCode, body: &'static str) -> Response<RespBody> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed_unsync());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn json_response(value: &Value) -> Response<RespBody> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Reads a body to its end, hashing as it goes: (length, lowercase hex SHA-256).
async fn hash_body(mut body: Incoming) -> Result<(u64, String), hyper::Error> {
    let mut len = 0u64;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            len += data.len() as u64;
            ctx.update(&data);
        }
    }
    Ok((len, hex(ctx.finish().as_ref())))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

async fn echo(req: Request<Incoming>) -> Response<RespBody> {
    let (parts, body) = req.into_parts();
    let mut headers = Map::new();
    for name in parts.headers.keys() {
        let mut values: Vec<Value> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let value = if values.len() == 1 {
            values.remove(0)
        } else {
            Value::Array(values)
        };
        headers.insert(name.as_str().to_owned(), value);
    }
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        });
    let (body_len, body_sha256) = match hash_body(body).await {
        Ok(hashed) => hashed,
        Err(_) => return text(StatusCode::BAD_REQUEST, "error reading the request body\n"),
    };
    json_response(&json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        "version": format!("{:?}", parts.version),
        "authority": authority,
        "headers": headers,
        "body_len": body_len,
        "body_sha256": body_sha256,
    }))
}

async fn upload(req: Request<Incoming>) -> Response<RespBody> {
    match hash_body(req.into_body()).await {
        Ok((body_len, body_sha256)) => {
            json_response(&json!({ "body_len": body_len, "body_sha256": body_sha256 }))
        }
        Err(_) => text(StatusCode::BAD_REQUEST, "error reading the request body\n"),
    }
}

/// The value of query parameter `key`, parsed; `Ok(None)` if absent.
fn query_param<T: std::str::FromStr>(req: &Request<Incoming>, key: &str) -> Result<Option<T>, ()> {
    let Some(query) = req.uri().query() else {
        return Ok(None);
    };
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == key {
            return v.parse().map(Some).map_err(|_| ());
        }
    }
    Ok(None)
}

fn sse(req: &Request<Incoming>) -> Response<RespBody> {
    let (Ok(n), Ok(delay_ms)) = (
        query_param::<u64>(req, "n"),
        query_param::<u64>(req, "delay_ms"),
    ) else {
        return text(StatusCode::BAD_REQUEST, "bad n or delay_ms\n");
    };
    let body = SseBody {
        next: 0,
        count: n.unwrap_or(3),
        delay: Duration::from_millis(delay_ms.unwrap_or(500)),
        sleep: None,
    };
    let mut response = Response::new(body.boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    response
}

/// `data: event-<i>\n\n` for i in 0..count, the first at once and then one per `delay`.
struct SseBody {
    next: u64,
    count: u64,
    delay: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.next >= self.count {
            return Poll::Ready(None);
        }
        if let Some(sleep) = self.sleep.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            self.sleep = None;
        }
        let event = Bytes::from(format!("data: event-{}\n\n", self.next));
        self.next += 1;
        if self.next < self.count {
            self.sleep = Some(Box::pin(tokio::time::sleep(self.delay)));
        }
        Poll::Ready(Some(Ok(Frame::data(event))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.count
    }
}

fn download(req: &Request<Incoming>) -> Response<RespBody> {
    let Ok(Some(len)) = query_param::<u64>(req, "bytes") else {
        return text(StatusCode::BAD_REQUEST, "need bytes=N\n");
    };
    let mut response = Response::new(DownloadBody { offset: 0, len }.boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    response
}

/// The repeating pattern, long enough that any chunk is one slice of it.
fn pattern() -> &'static Bytes {
    static PATTERN: OnceLock<Bytes> = OnceLock::new();
    PATTERN.get_or_init(|| {
        (0..CHUNK as u64 + PATTERN_MOD)
            .map(|i| u8::try_from(i % PATTERN_MOD).expect("below 251"))
            .collect::<Vec<u8>>()
            .into()
    })
}

/// `len` bytes of the pattern, served as zero-copy slices of [`pattern`].
struct DownloadBody {
    offset: u64,
    len: u64,
}

impl Body for DownloadBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let remaining = self.len - self.offset;
        if remaining == 0 {
            return Poll::Ready(None);
        }
        let n = usize::try_from(remaining).map_or(CHUNK, |r| r.min(CHUNK));
        let start = usize::try_from(self.offset % PATTERN_MOD).expect("below 251");
        let chunk = pattern().slice(start..start + n);
        self.offset += n as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.offset >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.offset)
    }
}

fn header_has_token(req: &Request<Incoming>, name: http::header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

fn websocket(mut req: Request<Incoming>) -> Response<RespBody> {
    if req.version() != http::Version::HTTP_11
        || !header_has_token(&req, UPGRADE, "websocket")
        || !header_has_token(&req, CONNECTION, "upgrade")
    {
        return text(
            StatusCode::BAD_REQUEST,
            "expected an HTTP/1.1 WebSocket upgrade\n",
        );
    }
    let Some(key) = req.headers().get("sec-websocket-key") else {
        return text(StatusCode::BAD_REQUEST, "missing sec-websocket-key\n");
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        // Pings and the closing handshake are answered by tungstenite while reading.
        while let Some(Ok(message)) = ws.next().await {
            if matches!(message, Message::Text(_) | Message::Binary(_))
                && ws.send(message).await.is_err()
            {
                break;
            }
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert("sec-websocket-accept", accept);
    }
    response
}

fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>> {
    let (chain, key_der) = bottle_tests::load_cert_pair(cert, key)?;
    let signing_key = ring_provider::sign::any_supported_type(&key_der)
        .with_context(|| format!("unsupported key {}", key.display()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
}

/// Picks the certificate whose DNS SANs match the client's SNI (exactly or by a `*.` wildcard);
/// the first pair serves every other client.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn new(pairs: Vec<Arc<CertifiedKey>>) -> Result<Self> {
        let default = Arc::clone(pairs.first().context("no certificates")?);
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for pair in &pairs {
            let leaf = pair.end_entity_cert().context("empty certificate chain")?;
            let parsed = webpki::EndEntityCert::try_from(leaf)
                .map_err(|e| anyhow::anyhow!("parsing a certificate: {e:?}"))?;
            for name in parsed.valid_dns_names() {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_owned()),
                    None => exact.entry(name),
                }
                .or_insert_with(|| Arc::clone(pair));
            }
        }
        Ok(Self {
            exact,
            wildcard,
            default,
        })
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(Arc::clone(&self.default));
        };
        let name = name.to_ascii_lowercase();
        let found = self.exact.get(&name).or_else(|| {
            name.split_once('.')
                .and_then(|(_, parent)| self.wildcard.get(parent))
        });
        Some(Arc::clone(found.unwrap_or(&self.default)))
    }
}
