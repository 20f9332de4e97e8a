//! `bottle-test-git-https --listen IP:PORT --tls CERT KEY --root DIR --token-file FILE`: a git
//! smart-HTTP upstream over TLS for the git-gate's end-to-end tests: Debian git's
//! `git http-backend` (CGI) serving the bare repos under `DIR` (`GIT_HTTP_EXPORT_ALL`,
//! receive-pack on), behind HTTP/1.1 over rustls.
//!
//! Every request must carry `Authorization: Basic` whose password is the token in `FILE`
//! (read once, trimmed; it is never on the command line); anything else is answered 401 with
//! `WWW-Authenticate: Basic`, so a missing or wrong token can be tested. The basic-auth user
//! becomes `REMOTE_USER`. Prints `ready` on stdout once bound, then serves until killed;
//! logs `request METHOD PATH authorised|unauthorised` per request on stderr (never the token).
//! Request bodies are capped at 512 MiB and held in memory (test sizes only).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine;
use bytes::Bytes;
use clap::Parser;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::crypto::ring as ring_provider;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const MAX_BODY: usize = 512 * 1024 * 1024;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(
    name = "bottle-test-git-https",
    about = "git http-backend over TLS with a basic-auth token, for bottle's git-gate tests"
)]
struct Args {
    #[arg(long, value_name = "IP:PORT")]
    listen: SocketAddr,
    /// Certificate chain and key (PEM).
    #[arg(long, num_args = 2, value_names = ["CERT", "KEY"], required = true)]
    tls: Vec<PathBuf>,
    /// `GIT_PROJECT_ROOT`: the directory holding the bare repos.
    #[arg(long)]
    root: PathBuf,
    /// File holding the token every request must present as its basic-auth password.
    #[arg(long)]
    token_file: PathBuf,
}

struct State {
    root: PathBuf,
    token: String,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    bottle_tests::serve_main("bottle-test-git-https", run(args))
}

async fn run(args: Args) -> Result<()> {
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading {}", args.token_file.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        bail!("{} holds no token", args.token_file.display());
    }
    let (chain, key) = bottle_tests::load_cert_pair(&args.tls[0], &args.tls[1])?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(ring_provider::default_provider()))
            .with_safe_default_protocol_versions()
            .context("configuring TLS versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("loading the certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let state = Arc::new(State {
        root: args.root,
        token,
    });
    println!("ready");
    std::io::stdout().flush().ok();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    eprintln!("{peer}: TLS handshake failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, peer, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                eprintln!("{peer}: {e}");
            }
        });
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp
}

/// The basic-auth user if the request's password is the token.
fn authorised(state: &State, req: &Request<Incoming>) -> Option<String> {
    let value = req
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    (password == state.token && !user.is_empty()).then(|| user.to_string())
}

async fn handle(state: &State, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let user = authorised(state, &req);
    eprintln!(
        "request {} {} {}",
        req.method(),
        req.uri().path(),
        if user.is_some() {
            "authorised"
        } else {
            "unauthorised"
        }
    );
    let Some(user) = user else {
        let mut resp = text(StatusCode::UNAUTHORIZED, "authentication required\n");
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"bottle test git\""),
        );
        return resp;
    };
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let mut env: Vec<(&str, String)> = vec![
        ("GIT_PROJECT_ROOT", state.root.display().to_string()),
        ("GIT_HTTP_EXPORT_ALL", "1".into()),
        ("REMOTE_USER", user),
        ("REMOTE_ADDR", peer.ip().to_string()),
        ("REQUEST_METHOD", req.method().to_string()),
        ("PATH_INFO", req.uri().path().to_string()),
        (
            "QUERY_STRING",
            req.uri().query().unwrap_or_default().to_string(),
        ),
        ("CONTENT_TYPE", header("content-type")),
        ("HTTP_CONTENT_ENCODING", header("content-encoding")),
        ("GIT_PROTOCOL", header("git-protocol")),
        ("PATH", "/usr/local/bin:/usr/bin:/bin".into()),
    ];
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("request body: {e}\n")),
    };
    env.push(("CONTENT_LENGTH", body.len().to_string()));
    let out = tokio::task::spawn_blocking(move || cgi(&env, &body)).await;
    match out {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}\n")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
    }
}

/// Runs `git http-backend` with the CGI environment and turns its output into a response.
fn cgi(env: &[(&str, String)], body: &[u8]) -> Result<Response<Full<Bytes>>> {
    let mut child = Command::new("git")
        .arg("http-backend")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting git http-backend")?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let body = body.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .context("no stdout")?
        .read_to_end(&mut out)
        .context("reading git http-backend")?;
    let _ = writer.join();
    child.wait().context("waiting for git http-backend")?;
    let (head, rest) = split_head(&out).context("git http-backend wrote no CGI header")?;
    let mut resp = Response::new(Full::new(Bytes::copy_from_slice(rest)));
    for line in String::from_utf8_lossy(head).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("500");
            *resp.status_mut() = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
    Ok(resp)
}

fn split_head(out: &[u8]) -> Option<(&[u8], &[u8])> {
    if let Some(i) = out.windows(4).position(|w| w == b"\r\n\r\n") {
        return Some((&out[..i], &out[i + 4..]));
    }
    out.windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (&out[..i], &out[i + 2..]))
}
