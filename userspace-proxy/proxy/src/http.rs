//! One request from a bottle: checked against the policy, its credential replaced, scanned
//! for secrets as it streams, forwarded to the real host through the bottle's pooled client,
//! and the answer streamed back. Every decision is counted and audited.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bottle_dlp::{DecodeLimits, DecodingScanner, Finding, RuleSet};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::audit::{path_without_query, AuditEvent};
use crate::context::BottleContext;
use crate::policy::{CompiledPolicy, Credential, DlpMode};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// How long the upstream may take to send its response headers.
const RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(120);

/// How the request reached us.
#[derive(Debug, Clone)]
pub enum Front {
    /// Inside TLS we terminated for this server name.
    Tls { sni: String },
    /// Plain HTTP on port 80, or absolute-form through the explicit proxy.
    Plain,
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus the bottle's own
/// credentials, which are replaced.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A refusal with a JSON body that names the reason (and the rule, for DLP) — never the
/// secret itself.
fn refuse(
    status: StatusCode,
    error: &str,
    message: &str,
    rule: Option<&str>,
) -> Response<ProxyBody> {
    let mut body = serde_json::json!({ "error": error, "message": message });
    if let Some(rule) = rule {
        body["rule"] = serde_json::Value::from(rule);
    }
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Host and port the request is for: the URI's authority (HTTP/2, absolute form) or `Host`.
fn request_authority(req: &Request<Incoming>) -> Option<(String, Option<u16>)> {
    if let Some(auth) = req.uri().authority() {
        return Some((auth.host().to_ascii_lowercase(), auth.port_u16()));
    }
    let host = req.headers().get(header::HOST)?.to_str().ok()?;
    let auth: http::uri::Authority = host.parse().ok()?;
    Some((auth.host().to_ascii_lowercase(), auth.port_u16()))
}

fn is_websocket_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Scans what leaves in the request line and headers (minus the credentials we replace).
fn scan_head(
    rules: &RuleSet,
    method: &Method,
    host: &str,
    path_and_query: &str,
    headers: &HeaderMap,
) -> Vec<Finding> {
    let mut text = Vec::with_capacity(512);
    text.extend_from_slice(method.as_str().as_bytes());
    text.push(b' ');
    text.extend_from_slice(host.as_bytes());
    text.extend_from_slice(path_and_query.as_bytes());
    text.push(b'\n');
    for (name, value) in headers {
        if name == header::AUTHORIZATION || name == header::PROXY_AUTHORIZATION {
            continue;
        }
        text.extend_from_slice(name.as_str().as_bytes());
        text.extend_from_slice(b": ");
        text.extend_from_slice(value.as_bytes());
        text.push(b'\n');
    }
    rules.scan(&text)
}

/// Facts about one exchange, recorded once when it ends (or is dropped).
struct Exchange {
    ctx: Arc<BottleContext>,
    host: String,
    method: String,
    path: String,
    status: Mutex<Option<u16>>,
    up: std::sync::atomic::AtomicU64,
    down: std::sync::atomic::AtomicU64,
    /// First DLP finding in the body: (rule id, redacted preview).
    body_hit: Mutex<Option<(String, String)>>,
    warned: Mutex<Vec<String>>,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        let (up, down) = (self.up.load(Relaxed), self.down.load(Relaxed));
        let hit = self.body_hit.lock().ok().and_then(|h| h.clone());
        let status = self.status.lock().ok().and_then(|s| *s);
        let decision = if hit.is_some() {
            "dlp_blocked"
        } else {
            "allowed"
        };
        self.ctx.stats.request(&self.host, decision, up, down);
        if let Some((rule, _)) = &hit {
            self.ctx.stats.dlp_hit(rule);
        }
        self.ctx.audit.record(&AuditEvent {
            kind: if hit.is_some() { "dlp" } else { "http" },
            host: &self.host,
            method: Some(&self.method),
            path: Some(&self.path),
            status: if hit.is_some() { Some(403) } else { status },
            bytes_up: up,
            bytes_down: down,
            decision,
            rule: hit.as_ref().map(|(r, _)| r.as_str()),
            reason: hit.as_ref().map(|_| "secret in request body"),
        });
        if let Ok(warned) = self.warned.lock() {
            for rule in warned.iter() {
                self.ctx.stats.dlp_hit(rule);
                self.ctx.audit.record(&AuditEvent {
                    kind: "dlp",
                    host: &self.host,
                    method: Some(&self.method),
                    path: Some(&self.path),
                    decision: "dlp_warned",
                    rule: Some(rule),
                    ..AuditEvent::default()
                });
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("request body blocked: it contains a secret (rule {0})")]
struct DlpBlocked(String);

/// The request body on its way up: counted, and scanned (decoded per Content-Encoding) as it
/// streams. A hit in block mode ends the body with an error, so the upstream never receives
/// the chunk that completes the secret and the request is aborted.
struct ScannedBody {
    inner: Incoming,
    scanner: Option<DecodingScanner>,
    mode: DlpMode,
    exchange: Arc<Exchange>,
}

impl ScannedBody {
    fn judge(
        &mut self,
        result: Result<Vec<Finding>, bottle_dlp::DecodeError>,
    ) -> Result<(), BoxError> {
        let findings = match result {
            Ok(f) => f,
            Err(e) => {
                let rule = format!("undecodable-body ({e})");
                if let Ok(mut hit) = self.exchange.body_hit.lock() {
                    hit.get_or_insert((rule.clone(), String::new()));
                }
                return Err(Box::new(DlpBlocked(rule)));
            }
        };
        let Some(first) = findings.first() else {
            return Ok(());
        };
        match self.mode {
            DlpMode::Block => {
                if let Ok(mut hit) = self.exchange.body_hit.lock() {
                    hit.get_or_insert((first.rule_id.clone(), first.redacted.clone()));
                }
                Err(Box::new(DlpBlocked(first.rule_id.clone())))
            }
            DlpMode::Warn => {
                if let Ok(mut warned) = self.exchange.warned.lock() {
                    warned.extend(findings.iter().map(|f| f.rule_id.clone()));
                }
                Ok(())
            }
        }
    }
}

impl Body for ScannedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.exchange
                        .up
                        .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    if let Some(scanner) = this.scanner.as_mut() {
                        let result = scanner.feed(data);
                        this.judge(result)?;
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                if let Some(scanner) = this.scanner.take() {
                    let result = scanner.finish();
                    this.judge(result)?;
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream() && self.scanner.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response body on its way down: counted; the exchange is recorded when it ends.
struct CountedBody {
    inner: Incoming,
    exchange: Arc<Exchange>,
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.exchange
                        .down
                        .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn deny(
    ctx: &BottleContext,
    host: &str,
    req: &Request<Incoming>,
    status: StatusCode,
    error: &str,
    message: &str,
) -> Response<ProxyBody> {
    ctx.stats.request(host, "denied", 0, 0);
    ctx.audit.record(&AuditEvent {
        kind: "http",
        host,
        method: Some(req.method().as_str()),
        path: Some(path_without_query(
            req.uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/"),
        )),
        status: Some(status.as_u16()),
        decision: "denied",
        reason: Some(error),
        ..AuditEvent::default()
    });
    refuse(status, error, message, None)
}

/// Serves one request from the bottle.
pub async fn serve(
    req: Request<Incoming>,
    ctx: Arc<BottleContext>,
    front: Arc<Front>,
) -> Result<Response<ProxyBody>, Infallible> {
    Ok(handle(req, ctx, &front).await)
}

async fn handle(
    mut req: Request<Incoming>,
    ctx: Arc<BottleContext>,
    front: &Front,
) -> Response<ProxyBody> {
    // Request smuggling: hyper parses HTTP/1 framing strictly (duplicate or bad
    // Content-Length, bad chunking: 400; Content-Length with Transfer-Encoding: chunked wins and
    // the connection closes after the response, RFC 9112 §6.3), and every request is framed
    // afresh towards the upstream, so there is no second parser to disagree with.
    let Some((host, port)) = request_authority(&req) else {
        return deny(
            &ctx,
            "(none)",
            &req,
            StatusCode::BAD_REQUEST,
            "no_host",
            "the request names no host",
        );
    };
    let tls = match front {
        Front::Tls { sni } => {
            if &host != sni || port.is_some_and(|p| p != 443) {
                let message = format!(
                    "request host {host:?} does not match the TLS server name {sni:?}; domain fronting is refused"
                );
                return deny(
                    &ctx,
                    &host,
                    &req,
                    StatusCode::MISDIRECTED_REQUEST,
                    "host_mismatch",
                    &message,
                );
            }
            true
        }
        Front::Plain => {
            if port.is_some_and(|p| p != 80) {
                return deny(
                    &ctx,
                    &host,
                    &req,
                    StatusCode::FORBIDDEN,
                    "port_denied",
                    "plain HTTP goes to port 80 only",
                );
            }
            false
        }
    };
    let policy: Arc<CompiledPolicy> = ctx.policy.current();
    let Some(route) = policy.lookup(&host) else {
        let message = format!("{host} is not in this bottle's egress allowlist");
        return deny(
            &ctx,
            &host,
            &req,
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            &message,
        );
    };
    if route.passthrough {
        return deny(
            &ctx,
            &host,
            &req,
            StatusCode::FORBIDDEN,
            "passthrough_only",
            "this host is TLS passthrough only; connect with TLS on port 443",
        );
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let path = path_without_query(&path_and_query).to_string();
    if !route.path_allowed(&path) {
        let message = format!("path {path} is outside the allowlist for {host}");
        return deny(
            &ctx,
            &host,
            &req,
            StatusCode::FORBIDDEN,
            "path_not_allowed",
            &message,
        );
    }

    // Secrets in the request line or headers.
    let head_hits = scan_head(
        &policy.dlp,
        req.method(),
        &host,
        &path_and_query,
        req.headers(),
    );
    if let Some(hit) = head_hits.first() {
        ctx.stats.dlp_hit(&hit.rule_id);
        if policy.dlp_mode == DlpMode::Block {
            ctx.stats.request(&host, "dlp_blocked", 0, 0);
            ctx.audit.record(&AuditEvent {
                kind: "dlp",
                host: &host,
                method: Some(req.method().as_str()),
                path: Some(&path),
                status: Some(403),
                decision: "dlp_blocked",
                rule: Some(&hit.rule_id),
                reason: Some("secret in request line or headers"),
                ..AuditEvent::default()
            });
            return refuse(
                StatusCode::FORBIDDEN,
                "dlp",
                &format!(
                    "request blocked: it contains a secret ({} rule {})",
                    hit.redacted, hit.rule_id
                ),
                Some(&hit.rule_id),
            );
        }
        ctx.audit.record(&AuditEvent {
            kind: "dlp",
            host: &host,
            method: Some(req.method().as_str()),
            path: Some(&path),
            decision: "dlp_warned",
            rule: Some(&hit.rule_id),
            ..AuditEvent::default()
        });
    }

    let websocket = is_websocket_upgrade(&req);
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));

    // The upstream request: same method, path, headers minus hop-by-hop and credentials, plus
    // the route's credential.
    let scheme = if tls { "https" } else { "http" };
    let uri: Uri = match format!("{scheme}://{host}{path_and_query}").parse() {
        Ok(u) => u,
        Err(_) => {
            return deny(
                &ctx,
                &host,
                &req,
                StatusCode::BAD_REQUEST,
                "bad_uri",
                "the request target is not a valid URI",
            )
        }
    };
    let mut headers = HeaderMap::with_capacity(req.headers().len() + 1);
    for (name, value) in req.headers() {
        let lower = name.as_str();
        if HOP_BY_HOP.contains(&lower) || name == header::HOST || name == header::AUTHORIZATION {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    if websocket {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    match &route.credential {
        Some(Credential::Present(value)) => {
            headers.insert(header::AUTHORIZATION, value.clone());
        }
        Some(Credential::Unavailable { token_ref }) => {
            let message = format!(
                "the credential for {host} ({token_ref}) is not loaded: the agent restarted and keeps tokens in memory only; run `bottle policy set` again"
            );
            return deny(
                &ctx,
                &host,
                &req,
                StatusCode::SERVICE_UNAVAILABLE,
                "credential_unavailable",
                &message,
            );
        }
        None => {}
    }
    let exchange = Arc::new(Exchange {
        ctx: ctx.clone(),
        host: host.clone(),
        method: req.method().as_str().to_string(),
        path: path.clone(),
        status: Mutex::new(None),
        up: Default::default(),
        down: Default::default(),
        body_hit: Mutex::new(None),
        warned: Mutex::new(Vec::new()),
    });
    let encoding = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .to_string();
    let scanner = match DecodingScanner::new(&policy.dlp, &encoding, DecodeLimits::default()) {
        Ok(s) => s,
        Err(e) => {
            let message = format!("request body encoding {encoding:?} cannot be inspected: {e}");
            return deny(
                &ctx,
                &host,
                &req,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "body_not_inspectable",
                &message,
            );
        }
    };
    let method = req.method().clone();
    let body = ScannedBody {
        inner: req.into_body(),
        scanner: Some(scanner),
        mode: policy.dlp_mode,
        exchange: exchange.clone(),
    };
    let mut upstream_req = Request::new(body.boxed_unsync());
    *upstream_req.method_mut() = method;
    *upstream_req.uri_mut() = uri;
    *upstream_req.headers_mut() = headers;
    drop(policy);

    let client = if websocket {
        &ctx.client_h1
    } else {
        &ctx.client
    };
    let sent = tokio::time::timeout(RESPONSE_HEADER_TIMEOUT, client.request(upstream_req)).await;
    let mut upstream_resp = match sent {
        Err(_) => {
            return upstream_failure(
                &exchange,
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the upstream did not answer in time",
            )
        }
        Ok(Err(e)) => {
            if let Some((rule, redacted)) = exchange.body_hit.lock().ok().and_then(|h| h.clone()) {
                let message =
                    format!("request blocked: its body contains a secret ({redacted} rule {rule})");
                if let Ok(mut s) = exchange.status.lock() {
                    *s = Some(403);
                }
                return refuse(StatusCode::FORBIDDEN, "dlp", &message, Some(&rule));
            }
            let message = format!("upstream request failed: {}", error_chain(&e));
            return upstream_failure(
                &exchange,
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                &message,
            );
        }
        Ok(Ok(resp)) => resp,
    };
    if let Ok(mut s) = exchange.status.lock() {
        *s = Some(upstream_resp.status().as_u16());
    }

    if upstream_resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut upstream_resp);
            let exchange = exchange.clone();
            tokio::spawn(async move {
                let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await)
                else {
                    return;
                };
                let mut client = hyper_util::rt::TokioIo::new(client);
                let mut upstream = hyper_util::rt::TokioIo::new(upstream);
                if let Ok((up, down)) =
                    tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                {
                    exchange
                        .up
                        .fetch_add(up, std::sync::atomic::Ordering::Relaxed);
                    exchange
                        .down
                        .fetch_add(down, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    }

    let (parts, body) = upstream_resp.into_parts();
    let mut resp = Response::new(
        CountedBody {
            inner: body,
            exchange,
        }
        .boxed_unsync(),
    );
    *resp.status_mut() = parts.status;
    for (name, value) in &parts.headers {
        if HOP_BY_HOP.contains(&name.as_str()) && !(websocket && is_upgrade_header(name)) {
            continue;
        }
        resp.headers_mut().append(name.clone(), value.clone());
    }
    resp
}

fn is_upgrade_header(name: &HeaderName) -> bool {
    name == header::UPGRADE || name == header::CONNECTION
}

fn upstream_failure(
    exchange: &Exchange,
    status: StatusCode,
    error: &str,
    message: &str,
) -> Response<ProxyBody> {
    if let Ok(mut s) = exchange.status.lock() {
        *s = Some(status.as_u16());
    }
    refuse(status, error, message, None)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
