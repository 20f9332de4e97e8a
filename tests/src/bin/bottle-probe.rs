//! `bottle-probe`: a client the end-to-end tests run inside a bottle's network namespace.
//!
//! ```text
//! bottle-probe h2 URL [--header 'K: V']... [--method M] [--data STR] [--show-headers]
//! bottle-probe ws URL
//! bottle-probe sse URL [--header 'K: V']...
//! bottle-probe tls-verify HOST:PORT [--sni NAME]
//! common: --ca FILE (repeatable) | --system-roots, --resolve HOST:IP (repeatable;
//!         curl's HOST:PORT:IP too), --timeout-ms MS (default 10000, whole run)
//! ```
//!
//! TLS trusts only the `--ca` certificates (plus the system store with `--system-roots`).
//! URLs are `https://host[:port]/path` (`wss://` for ws); `http://` (h2c prior knowledge for
//! h2) and `ws://` work too. Exit status: 0 on an HTTP response (whatever its status) or a
//! successful check, 1 on a connect, TLS, protocol or timeout failure (reported on stderr),
//! 2 on bad usage.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use http::header::{ACCEPT, HOST};
use http::{HeaderName, HeaderValue, Method, Request, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::crypto::ring as ring_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
#[command(name = "bottle-probe", about = "Network probes run inside a bottle")]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug)]
struct Common {
    /// CA certificate(s) (PEM) to trust; the only trust anchors unless --system-roots.
    #[arg(long, value_name = "FILE", global = true)]
    ca: Vec<PathBuf>,
    /// Also trust the system's root certificates.
    #[arg(long, global = true)]
    system_roots: bool,
    /// Connect to IP for HOST instead of resolving it (HOST:IP, or curl's HOST:PORT:IP).
    #[arg(long, value_name = "HOST:IP", global = true)]
    resolve: Vec<String>,
    /// Deadline for the whole probe, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000, global = true)]
    timeout_ms: u64,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// HTTPS request over HTTP/2 (ALPN h2 only); prints status=, version=, then the body.
    H2 {
        url: String,
        /// Request header 'Name: value' (repeatable).
        #[arg(long = "header", short = 'H', value_name = "K: V")]
        headers: Vec<String>,
        /// Request method.
        #[arg(long, short = 'X', default_value = "GET")]
        method: String,
        /// Request body.
        #[arg(long, short = 'd')]
        data: Option<String>,
        /// Print response headers as `header=<name>: <value>` lines before the body.
        #[arg(long)]
        show_headers: bool,
    },
    /// WebSocket echo check: sends hello-<random>, expects it back, prints `echo ok`.
    Ws { url: String },
    /// Server-sent events over HTTP/1.1; prints first_event_ms=, event= lines, events=, total_ms=.
    Sse {
        url: String,
        /// Request header 'Name: value' (repeatable).
        #[arg(long = "header", short = 'H', value_name = "K: V")]
        headers: Vec<String>,
    },
    /// TLS handshake verifying the server certificate for NAME; prints `verified`.
    TlsVerify {
        #[arg(value_name = "HOST:PORT")]
        target: String,
        /// Server name to send and verify (defaults to HOST).
        #[arg(long, value_name = "NAME")]
        sni: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bottle-probe: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let timeout = Duration::from_millis(cli.common.timeout_ms);
    let result = runtime.block_on(async {
        match tokio::time::timeout(timeout, run(&cli)).await {
            Ok(result) => result,
            Err(_) => Err(anyhow!("timed out after {} ms", cli.common.timeout_ms)),
        }
    });
    let _ = std::io::stdout().flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bottle-probe: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> Result<()> {
    let common = &cli.common;
    match &cli.command {
        Command::H2 {
            url,
            headers,
            method,
            data,
            show_headers,
        } => h2(common, url, headers, method, data.as_deref(), *show_headers).await,
        Command::Ws { url } => ws(common, url).await,
        Command::Sse { url, headers } => sse(common, url, headers).await,
        Command::TlsVerify { target, sni } => tls_verify(common, target, sni.as_deref()).await,
    }
}

/// A parsed `scheme://host[:port]/path?query` URL.
struct Target {
    uri: Uri,
    tls: bool,
    /// Without IPv6 brackets.
    host: String,
    port: u16,
    /// `host[:port]` as written in the URL.
    authority: String,
    path_and_query: String,
}

impl Target {
    fn parse(url: &str, schemes: (&str, &str)) -> Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("invalid URL {url:?}"))?;
        let scheme = uri.scheme_str().unwrap_or_default().to_ascii_lowercase();
        let tls = if scheme == schemes.1 {
            true
        } else if scheme == schemes.0 {
            false
        } else {
            bail!(
                "URL {url:?} must start with {}:// or {}://",
                schemes.1,
                schemes.0
            );
        };
        let authority = uri
            .authority()
            .with_context(|| format!("URL {url:?} has no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self {
            tls,
            host,
            port,
            authority: authority.as_str().to_owned(),
            path_and_query: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            uri,
        })
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The address `--resolve` gives for host:port, if any.
fn resolved(common: &Common, host: &str, port: u16) -> Result<Option<IpAddr>> {
    for entry in &common.resolve {
        let Some((name, rest)) = entry.split_once(':') else {
            bail!("--resolve {entry:?}: expected HOST:IP or HOST:PORT:IP");
        };
        let parse_ip = |s: &str| {
            s.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .ok()
        };
        let (for_port, ip) = match parse_ip(rest) {
            Some(ip) => (None, ip),
            None => {
                let parsed = rest
                    .split_once(':')
                    .and_then(|(p, ip)| Some((p.parse::<u16>().ok()?, parse_ip(ip)?)));
                let Some((p, ip)) = parsed else {
                    bail!("--resolve {entry:?}: expected HOST:IP or HOST:PORT:IP");
                };
                (Some(p), ip)
            }
        };
        if name.eq_ignore_ascii_case(host) && for_port.is_none_or(|p| p == port) {
            return Ok(Some(ip));
        }
    }
    Ok(None)
}

async fn connect_tcp(common: &Common, host: &str, port: u16) -> Result<TcpStream> {
    let addrs: Vec<SocketAddr> = if let Some(ip) = resolved(common, host, port)? {
        vec![SocketAddr::new(ip, port)]
    } else if let Ok(ip) = host.parse::<IpAddr>() {
        vec![SocketAddr::new(ip, port)]
    } else {
        tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .collect()
    };
    let mut last_error = None;
    for addr in &addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => {
                last_error = Some(anyhow::Error::new(e).context(format!("connecting to {addr}")))
            }
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow!("{host} resolved to no addresses")))
}

fn client_config(common: &Common, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for path in &common.ca {
        let certs = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading {}", path.display()))?;
        for cert in certs {
            let cert = cert.with_context(|| format!("parsing {}", path.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("adding a CA from {}", path.display()))?;
        }
    }
    if common.system_roots {
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            // The system store routinely holds a few certificates webpki rejects.
            let _ = roots.add(cert);
        }
    }
    if roots.is_empty() {
        bail!("no CA to trust: give --ca FILE (or --system-roots)");
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(ring_provider::default_provider()))
            .with_safe_default_protocol_versions()
            .context("configuring TLS versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// TLS to `server_name` over `tcp`; returns the stream and the negotiated ALPN protocol.
async fn tls_connect(
    common: &Common,
    tcp: TcpStream,
    server_name: &str,
    alpn: &[&[u8]],
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Option<Vec<u8>>)> {
    let config = client_config(common, alpn)?;
    let name = ServerName::try_from(server_name.to_owned())
        .with_context(|| format!("{server_name:?} is not a valid server name"))?;
    let tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS handshake with {server_name}"))?;
    let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    Ok((tls, negotiated))
}

/// Connects to the URL's host (TLS if its scheme says so).
async fn connect(
    common: &Common,
    target: &Target,
    alpn: &[&[u8]],
) -> Result<(Box<dyn Io>, Option<Vec<u8>>)> {
    let tcp = connect_tcp(common, &target.host, target.port).await?;
    if !target.tls {
        return Ok((Box::new(tcp), None));
    }
    let (tls, negotiated) = tls_connect(common, tcp, &target.host, alpn).await?;
    Ok((Box::new(tls), negotiated))
}

fn parse_header(header: &str) -> Result<(HeaderName, HeaderValue)> {
    let (name, value) = header
        .split_once(':')
        .with_context(|| format!("header {header:?} is not 'Name: value'"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .with_context(|| format!("invalid header name in {header:?}"))?;
    let value = HeaderValue::from_str(value.trim())
        .with_context(|| format!("invalid header value in {header:?}"))?;
    Ok((name, value))
}

fn alpn_name(alpn: Option<&[u8]>) -> String {
    alpn.map_or_else(
        || "none".to_owned(),
        |p| String::from_utf8_lossy(p).into_owned(),
    )
}

async fn h2(
    common: &Common,
    url: &str,
    headers: &[String],
    method: &str,
    data: Option<&str>,
    show_headers: bool,
) -> Result<()> {
    let target = Target::parse(url, ("http", "https"))?;
    let (io, negotiated) = connect(common, &target, &[b"h2"]).await?;
    if target.tls && negotiated.as_deref() != Some(b"h2".as_slice()) {
        bail!(
            "{} did not negotiate h2 (ALPN: {})",
            target.authority,
            alpn_name(negotiated.as_deref())
        );
    }
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .context("HTTP/2 handshake")?;
    tokio::spawn(conn);

    let method = Method::from_bytes(method.as_bytes()).context("invalid method")?;
    let mut request = Request::builder()
        .method(method)
        .uri(target.uri.clone())
        .version(Version::HTTP_2)
        .body(Full::new(Bytes::from(data.unwrap_or_default().to_owned())))
        .context("building the request")?;
    for header in headers {
        let (name, value) = parse_header(header)?;
        request.headers_mut().append(name, value);
    }
    let response = sender
        .send_request(request)
        .await
        .context("sending the HTTP/2 request")?;

    let mut out = std::io::stdout().lock();
    writeln!(out, "status={}", response.status().as_u16())?;
    writeln!(out, "version={:?}", response.version())?;
    if show_headers {
        for (name, value) in response.headers() {
            writeln!(
                out,
                "header={name}: {}",
                String::from_utf8_lossy(value.as_bytes())
            )?;
        }
    }
    out.flush()?;
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the response body")?;
        if let Ok(data) = frame.into_data() {
            out.write_all(&data)?;
        }
    }
    out.flush()?;
    Ok(())
}

fn random_hex() -> Result<String> {
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow!("no randomness available"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

async fn ws(common: &Common, url: &str) -> Result<()> {
    let target = Target::parse(url, ("ws", "wss"))?;
    let (io, _) = connect(common, &target, &[b"http/1.1"]).await?;
    let (mut socket, _) = tokio_tungstenite::client_async(url, io)
        .await
        .context("WebSocket handshake")?;
    let hello = format!("hello-{}", random_hex()?);
    socket
        .send(Message::text(hello.clone()))
        .await
        .context("sending the message")?;
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) if text.as_str() == hello => break,
            Some(Ok(Message::Text(text))) => {
                bail!("expected the echo {hello:?}, got {:?}", text.as_str())
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(other)) => bail!("expected the echo {hello:?}, got {other:?}"),
            Some(Err(e)) => return Err(anyhow::Error::new(e).context("reading the echo")),
            None => bail!("connection closed before the echo"),
        }
    }
    // Best effort: the check has passed.
    let _ = socket.close(None).await;
    println!("echo ok");
    Ok(())
}

async fn sse(common: &Common, url: &str, headers: &[String]) -> Result<()> {
    let target = Target::parse(url, ("http", "https"))?;
    let (io, _) = connect(common, &target, &[b"http/1.1"]).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(conn);

    let mut request = Request::builder()
        .uri(target.path_and_query.as_str())
        .header(HOST, target.authority.as_str())
        .header(ACCEPT, "text/event-stream")
        .body(http_body_util::Empty::<Bytes>::new())
        .context("building the request")?;
    for header in headers {
        let (name, value) = parse_header(header)?;
        request.headers_mut().append(name, value);
    }
    let start = Instant::now();
    let response = sender
        .send_request(request)
        .await
        .context("sending the request")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "status={}", response.status().as_u16())?;
    out.flush()?;

    let mut body = response.into_body();
    let mut pending = Vec::new();
    let mut events = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the event stream")?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(data) = line.strip_prefix("data:") {
                if events == 0 {
                    writeln!(out, "first_event_ms={}", start.elapsed().as_millis())?;
                }
                events += 1;
                writeln!(out, "event={}", data.strip_prefix(' ').unwrap_or(data))?;
                out.flush()?;
            }
        }
    }
    writeln!(out, "events={events}")?;
    writeln!(out, "total_ms={}", start.elapsed().as_millis())?;
    out.flush()?;
    Ok(())
}

async fn tls_verify(common: &Common, target: &str, sni: Option<&str>) -> Result<()> {
    let (host, port) = target
        .rsplit_once(':')
        .and_then(|(h, p)| {
            Some((
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse::<u16>().ok()?,
            ))
        })
        .with_context(|| format!("{target:?} is not HOST:PORT"))?;
    let tcp = connect_tcp(common, host, port).await?;
    let name = sni.unwrap_or(host);
    tls_connect(common, tcp, name, &[]).await?;
    println!("verified");
    Ok(())
}
