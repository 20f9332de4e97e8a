//! The versioned HTTP/JSON API on the agent's Unix socket.
//!
//! Each connection is identified by SO_PEERCRED; the manager decides what that uid may see.
//! Bodies are bounded (`bottle_api::MAX_REQUEST_BODY`), headers must arrive within a timeout,
//! and every error is a JSON `{code, message}`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bottle_api::{
    ApiError, CreateBottle, ErrorCode, KillSwitch, RunRequest, StopRequest, VersionInfo,
    MAX_REQUEST_BODY,
};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;
use tracing::{debug, warn};

use crate::manager::{Caller, Manager};
use crate::paths::SOCKET_MODE;

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more wait in the kernel backlog.
const MAX_CONNECTIONS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("another bottle-agent is already serving on {0}; stop it first")]
    InUse(String),
    #[error("cannot prepare socket {path}: {source}")]
    Socket {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Every response body: whole (`full`) or, for `POST /v1/run`, streamed.
type Body = UnsyncBoxBody<Bytes, std::convert::Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// The run's frames as they come; ends after the exit trailer (or if the run's threads are
/// gone without one, which the client reports as a lost connection).
fn streamed(rx: tokio::sync::mpsc::Receiver<crate::run::Msg>) -> Body {
    use crate::run::Msg;
    let frames = futures_util::stream::unfold((rx, false), |(mut rx, done)| async move {
        if done {
            return None;
        }
        match rx.recv().await? {
            Msg::Frame(b) => Some((Ok(hyper::body::Frame::data(b)), (rx, false))),
            Msg::End(b) => Some((Ok(hyper::body::Frame::data(b)), (rx, true))),
        }
    });
    StreamBody::new(frames).boxed_unsync()
}

/// Binds the API socket: replaces a stale socket file, refuses when a live agent answers,
/// sets mode 0660 and group `group` when that group exists.
pub async fn bind(path: &Path, group: &str) -> Result<UnixListener, ApiServerError> {
    let shown = path.display().to_string();
    let err = |source| ApiServerError::Socket {
        path: shown.clone(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ApiServerError::InUse(shown));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(err)?;
    if let Ok(Some(g)) = nix::unistd::Group::from_name(group) {
        nix::unistd::chown(path, None, Some(g.gid))
            .map_err(|e| err(std::io::Error::from_raw_os_error(e as i32)))?;
    }
    Ok(listener)
}

/// Serves the API until the listener fails.
pub async fn serve(listener: UnixListener, manager: Arc<Mutex<Manager>>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let caller = match stream.peer_cred() {
            Ok(cred) => Caller { uid: cred.uid() },
            Err(e) => {
                warn!(error = %e, "cannot read peer credentials; dropping connection");
                continue;
            }
        };
        let manager = manager.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let manager = manager.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, caller, manager).await) }
            });
            let result = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
            if let Err(e) = result {
                debug!(error = %e, "API connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// Bytes of a log (audit or workload) per page.
const LOG_PAGE: usize = 1024 * 1024;

/// `?offset=N` (0 when absent or malformed).
fn query_offset<B>(req: &Request<B>) -> u64 {
    req.uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("offset=")))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
}

/// One page of a log: `{offset, next_offset, size, lines[, running]}`.
fn log_page(bytes: &[u8], start: u64, size: u64, running: Option<bool>) -> Response<Body> {
    let mut page = serde_json::json!({
        "offset": start,
        "next_offset": start + bytes.len() as u64,
        "size": size,
        "lines": String::from_utf8_lossy(bytes),
    });
    if let Some(running) = running {
        page["running"] = serde_json::Value::Bool(running);
    }
    json(StatusCode::OK, &page)
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(e: ApiError) -> Response<Body> {
    let status =
        StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(status, &e)
}

fn no_such_endpoint(method: &Method, path: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NoSuchEndpoint,
        format!("no endpoint {method} {path} in API v1"),
    )
}

/// Reads a bounded JSON body into `T`, rejecting unknown fields (the types deny them).
async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::BodyTooLarge,
            format!("request body is larger than {MAX_REQUEST_BODY} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REQUEST_BODY as u64) {
        return Err(too_large());
    }
    let collect = Limited::new(req.into_body(), MAX_REQUEST_BODY).collect();
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, collect).await {
        Err(_) => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "request body did not arrive in time",
            ))
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Ok(Err(e)) => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("cannot read request body: {e}"),
            ))
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let bytes = if bytes.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        bytes
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("invalid request body: {e}")))
}

/// `PUT /v1/workspaces`: spools the tar body (bounded in size and time), unpacks it off the
/// runtime's workers, and answers with the upload's id. A failed upload leaves nothing.
async fn receive_workspace(
    caller: Caller,
    req: Request<Incoming>,
    state_dir: &Path,
) -> Result<bottle_api::WorkspaceUpload, ApiError> {
    use crate::workspace;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > bottle_api::MAX_WORKSPACE_BYTES) {
        return Err(workspace::WorkspaceError::TooLarge.into());
    }
    let id = workspace::reserve(state_dir, caller.uid)?;
    let result = async {
        let (_, mut file) = workspace::spool_file(state_dir, &id)?;
        let mut body = req.into_body();
        let mut written = 0u64;
        let receive = async {
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| {
                    ApiError::new(
                        ErrorCode::BadRequest,
                        format!("reading the workspace upload: {e}"),
                    )
                })?;
                if let Ok(data) = frame.into_data() {
                    workspace::spool_write(&mut file, &mut written, &data)?;
                }
            }
            Ok::<_, ApiError>(())
        };
        tokio::time::timeout(workspace::UPLOAD_TIMEOUT, receive)
            .await
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "the workspace upload did not arrive within {}s",
                        workspace::UPLOAD_TIMEOUT.as_secs()
                    ),
                )
            })??;
        drop(file);
        let (dir, up_id) = (state_dir.to_path_buf(), id.clone());
        let upload = tokio::task::spawn_blocking(move || workspace::unpack_upload(&dir, &up_id))
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))??;
        Ok::<_, ApiError>(upload)
    }
    .await;
    match &result {
        Ok(u) => debug!(
            uid = caller.uid,
            entries = u.entries,
            bytes = u.bytes,
            "workspace uploaded"
        ),
        Err(_) => workspace::abandon(state_dir, &id),
    }
    result
}

async fn handle(
    req: Request<Incoming>,
    caller: Caller,
    manager: Arc<Mutex<Manager>>,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    match route(req, caller, manager, &method, &path).await {
        Ok(resp) => resp,
        Err(e) => {
            debug!(%method, %path, uid = caller.uid, code = ?e.code, "request refused");
            error(e)
        }
    }
}

/// Whether the client asks for the interactive stream (`Upgrade: bottle-stream/1`).
fn wants_stream<B>(req: &Request<B>) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, bottle_api::STREAM_PROTOCOL)
}

/// `101 Switching Protocols` to the interactive stream.
fn switching() -> Response<Body> {
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static(bottle_api::STREAM_PROTOCOL),
    );
    resp
}

async fn route(
    mut req: Request<Incoming>,
    caller: Caller,
    manager: Arc<Mutex<Manager>>,
    method: &Method,
    path: &str,
) -> Result<Response<Body>, ApiError> {
    let Some(rest) = path.strip_prefix(bottle_api::API_PREFIX) else {
        return Err(no_such_endpoint(method, path));
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match (method, segments.as_slice()) {
        (&Method::GET, ["version"]) => Ok(json(
            StatusCode::OK,
            &VersionInfo {
                api: "v1".into(),
                agent_version: env!("CARGO_PKG_VERSION").into(),
            },
        )),
        (&Method::GET, ["bottles"]) => Ok(json(StatusCode::OK, &manager.lock().await.list(caller))),
        (&Method::POST, ["bottles"]) => {
            let body: CreateBottle = read_json(req).await?;
            let info = manager.lock().await.create(caller, body).await?;
            Ok(json(StatusCode::CREATED, &info))
        }
        (&Method::PUT, ["workspaces"]) => {
            let state_dir = manager.lock().await.state_dir();
            let upload = receive_workspace(caller, req, &state_dir).await?;
            Ok(json(StatusCode::CREATED, &upload))
        }
        (&Method::POST, ["run"]) => {
            let upgrade = wants_stream(&req).then(|| hyper::upgrade::on(&mut req));
            let body: RunRequest = read_json(req).await?;
            let interactive = upgrade.is_some();
            let session = match crate::run::start(caller, manager, body, interactive).await? {
                crate::run::Started::Stream(session) => session,
                crate::run::Started::Detached(info) => {
                    return Ok(json(StatusCode::CREATED, &info));
                }
            };
            if let Some(on_upgrade) = upgrade {
                tokio::spawn(crate::stream::serve(on_upgrade, session));
                return Ok(switching());
            }
            let mut resp = Response::new(streamed(session.rx));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/x-bottle-run"),
            );
            Ok(resp)
        }
        (&Method::GET, ["images"]) => {
            let dir = manager.lock().await.image_dir();
            Ok(json(StatusCode::OK, &crate::images::list(dir).await?))
        }
        (&Method::POST, ["images"]) => {
            let body: bottle_api::images::ImportImage = read_json(req).await?;
            let dir = manager.lock().await.image_dir();
            let info = crate::images::import(caller, dir, body).await?;
            Ok(json(StatusCode::CREATED, &info))
        }
        (&Method::POST, ["bottles", name, "exec"]) => {
            let Some(on_upgrade) = wants_stream(&req).then(|| hyper::upgrade::on(&mut req)) else {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "exec needs the interactive stream (Upgrade: {})",
                        bottle_api::STREAM_PROTOCOL
                    ),
                ));
            };
            let body: bottle_api::ExecRequest = read_json(req).await?;
            let session = crate::exec::start(caller, manager, name, body).await?;
            tokio::spawn(crate::stream::serve(on_upgrade, session));
            Ok(switching())
        }
        (&Method::GET, ["bottles", name]) => Ok(json(
            StatusCode::OK,
            &manager.lock().await.get(caller, name)?,
        )),
        (&Method::DELETE, ["bottles", name]) => {
            manager.lock().await.remove(caller, name).await?;
            let mut resp = Response::new(full(Bytes::new()));
            *resp.status_mut() = StatusCode::NO_CONTENT;
            Ok(resp)
        }
        (&Method::POST, ["bottles", name, action @ ("freeze" | "unfreeze")]) => {
            let info = manager
                .lock()
                .await
                .set_frozen(caller, name, *action == "freeze")
                .await?;
            Ok(json(StatusCode::OK, &info))
        }
        (&Method::GET, ["bottles", name, "stats"]) => Ok(json(
            StatusCode::OK,
            &manager.lock().await.stats(caller, name)?,
        )),
        (&Method::PUT, ["bottles", name, "policy"]) => {
            let body: bottle_api::SetPolicy = read_json(req).await?;
            let info = manager.lock().await.set_policy(caller, name, body)?;
            Ok(json(StatusCode::OK, &info))
        }
        (&Method::PUT, ["bottles", name, "git-gate", "keys"]) => {
            let body: bottle_api::gitgate::GitGateConfig = read_json(req).await?;
            let info = manager.lock().await.set_git_gate_keys(caller, name, body)?;
            Ok(json(StatusCode::OK, &info))
        }
        (&Method::GET, ["bottles", name, "ca"]) => {
            let pem = manager.lock().await.ca_pem(caller, name)?;
            let mut resp = Response::new(full(pem));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/x-pem-file"),
            );
            Ok(resp)
        }
        (&Method::GET, ["bottles", name, "audit"]) => {
            let (bytes, start, size) =
                manager
                    .lock()
                    .await
                    .audit(caller, name, query_offset(&req), LOG_PAGE)?;
            Ok(log_page(&bytes, start, size, None))
        }
        (&Method::GET, ["bottles", name, "logs"]) => {
            let (bytes, start, size, running) =
                manager
                    .lock()
                    .await
                    .workload_log(caller, name, query_offset(&req), LOG_PAGE)?;
            Ok(log_page(&bytes, start, size, Some(running)))
        }
        (&Method::POST, ["bottles", name, "stop"]) => {
            let body: StopRequest = read_json(req).await?;
            let grace = body.time_secs.map(Duration::from_secs);
            let info = crate::run::stop(caller, manager, name, grace).await?;
            Ok(json(StatusCode::OK, &info))
        }
        (&Method::GET, ["stats"]) => Ok(json(
            StatusCode::OK,
            &manager.lock().await.all_stats(caller),
        )),
        (&Method::GET, ["kill-switch"]) => {
            let engaged = manager.lock().await.kill_switch(caller)?;
            Ok(json(StatusCode::OK, &KillSwitch { engaged }))
        }
        (&Method::PUT, ["kill-switch"]) => {
            let body: KillSwitch = read_json(req).await?;
            let engaged = manager.lock().await.set_kill_switch(caller, body.engaged)?;
            Ok(json(StatusCode::OK, &KillSwitch { engaged }))
        }
        _ => Err(no_such_endpoint(method, path)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(Method::POST).uri("/v1/run");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn the_stream_needs_both_upgrade_headers() {
        let proto = bottle_api::STREAM_PROTOCOL;
        assert!(wants_stream(&req(&[
            ("connection", "Upgrade"),
            ("upgrade", proto)
        ])));
        assert!(wants_stream(&req(&[
            ("connection", "keep-alive, upgrade"),
            ("upgrade", proto)
        ])));
        assert!(!wants_stream(&req(&[("upgrade", proto)])));
        assert!(!wants_stream(&req(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket")
        ])));
        assert!(!wants_stream(&req(&[])));
    }
}
