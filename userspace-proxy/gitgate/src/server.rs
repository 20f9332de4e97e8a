//! Smart HTTP: `GET /<name>.git/info/refs?service=…`, `POST /<name>.git/git-upload-pack`,
//! `POST /<name>.git/git-receive-pack`. Errors before the pack protocol starts are plain
//! text, which git prints as `remote:` lines.

use std::io::Read;
use std::process::Stdio;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command as Process;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::gate::{GateContext, GateRepo};
use crate::pktline::{self, Command, PushRequest};
use crate::refpolicy::UpdateKind;
use crate::scan::{self, ScanTotals};
use crate::upstream::{self, UpstreamError, UpstreamLimits};

pub type GateBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Refused(String),
}

fn text(status: StatusCode, message: &str) -> Response<GateBody> {
    let mut body = String::new();
    for line in message.lines() {
        body.push_str("git-gate: ");
        body.push_str(line);
        body.push('\n');
    }
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|n| match n {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn git_response(content_type: &'static str, body: GateBody) -> Response<GateBody> {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    resp
}

fn full(bytes: Vec<u8>) -> GateBody {
    Full::new(Bytes::from(bytes))
        .map_err(|n| match n {})
        .boxed_unsync()
}

/// Splits `/<name>.git/<rest>`.
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (name, rest) = rest.split_once(".git/")?;
    Some((name, rest))
}

pub async fn handle(
    req: Request<Incoming>,
    ctx: Arc<GateContext>,
) -> Result<Response<GateBody>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let Some((name, rest)) = split_path(&path) else {
        return Ok(text(
            StatusCode::NOT_FOUND,
            "use http://<gateway>:9420/<repo>.git",
        ));
    };
    if !bottle_api::gitgate::is_repo_name(name) {
        return Ok(text(StatusCode::BAD_REQUEST, "invalid repo name"));
    }
    let Some(repo) = ctx.repos.get(name).cloned() else {
        let known: Vec<&str> = ctx.repos.keys().map(String::as_str).collect();
        return Ok(text(
            StatusCode::NOT_FOUND,
            &format!(
                "no repo {name} in this bottle's git-gate (known: {})",
                known.join(", ")
            ),
        ));
    };
    let service = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("service=")))
        .map(str::to_string);
    let resp = match (req.method(), rest, service.as_deref()) {
        (&Method::GET, "info/refs", Some("git-upload-pack")) => advertise(&ctx, &repo, false).await,
        (&Method::GET, "info/refs", Some("git-receive-pack")) => advertise(&ctx, &repo, true).await,
        (&Method::GET, "info/refs", _) => text(
            StatusCode::FORBIDDEN,
            "only git's smart HTTP protocol is served; use a git client newer than 1.6.6",
        ),
        (&Method::POST, "git-upload-pack", _) => upload_pack(req, &ctx, &repo).await,
        (&Method::POST, "git-receive-pack", _) => receive_pack(req, &ctx, &repo).await,
        _ => text(StatusCode::NOT_FOUND, "not a git smart HTTP endpoint"),
    };
    Ok(resp)
}

fn upstream_limits(ctx: &GateContext) -> UpstreamLimits {
    UpstreamLimits {
        deadline: ctx.limits.upstream_deadline,
        connect: ctx.limits.upstream_connect_timeout,
        io: ctx.limits.upstream_io_timeout,
    }
}

/// Fetches the upstream into the mirror (under the repo lock). Errors are the client's
/// message.
async fn fetch_through(
    ctx: &GateContext,
    repo: &Arc<GateRepo>,
) -> Result<(), (StatusCode, String)> {
    let guard = match tokio::time::timeout(ctx.limits.lock_wait, repo.lock.lock()).await {
        Ok(g) => g,
        Err(_) => {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{}: another push or fetch is still running; try again",
                    repo.cfg.name
                ),
            ))
        }
    };
    let r = repo.clone();
    let limits = upstream_limits(ctx);
    let result = tokio::time::timeout(
        ctx.limits.upstream_deadline + std::time::Duration::from_secs(5),
        tokio::task::spawn_blocking(move || upstream::fetch(&r.dir, &r.cfg, limits)),
    )
    .await;
    drop(guard);
    let outcome = match result {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(UpstreamError::Git {
            repo: repo.cfg.name.clone(),
            op: "fetch",
            message: "internal error".into(),
        }),
        Err(_) => Err(UpstreamError::Timeout {
            repo: repo.cfg.name.clone(),
            secs: ctx.limits.upstream_deadline.as_secs(),
        }),
    };
    match outcome {
        Ok(bytes) => {
            ctx.stats.fetch(true);
            ctx.audit(
                &repo.cfg.name,
                "fetch",
                None,
                "allowed",
                None,
                None,
                0,
                bytes,
            );
            Ok(())
        }
        Err(e) => {
            ctx.stats.fetch(false);
            let status = match e {
                UpstreamError::NoHostKey { .. } | UpstreamError::NoCredential { .. } => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                UpstreamError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            };
            let msg = match e {
                UpstreamError::Git { .. }
                | UpstreamError::Timeout { .. }
                | UpstreamError::Certificate { .. }
                | UpstreamError::CredentialRefused { .. } => {
                    format!(
                        "{e}\nthe gate serves no stale data: fix the upstream, then fetch again"
                    )
                }
                _ => e.to_string(),
            };
            ctx.audit(
                &repo.cfg.name,
                "fetch",
                None,
                "error",
                None,
                Some(&e.to_string()),
                0,
                0,
            );
            Err((status, msg))
        }
    }
}

fn git_cmd(ctx: &GateContext) -> Process {
    let mut cmd = Process::new(&ctx.limits.git_binary);
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("HOME", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn advertise(ctx: &GateContext, repo: &Arc<GateRepo>, receive: bool) -> Response<GateBody> {
    if let Err((status, msg)) = fetch_through(ctx, repo).await {
        return text(status, &msg);
    }
    let service = if receive {
        "git-receive-pack"
    } else {
        "git-upload-pack"
    };
    let mut out = pktline::encode(format!("# service={service}\n").as_bytes());
    out.extend_from_slice(pktline::FLUSH);
    if receive {
        match receive_advertisement(&repo.dir) {
            Ok(refs) => out.extend(refs),
            Err(e) => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("cannot list refs: {e}"),
                )
            }
        }
        return git_response("application/x-git-receive-pack-advertisement", full(out));
    }
    let mut cmd = git_cmd(ctx);
    cmd.args(["upload-pack", "--stateless-rpc", "--advertise-refs"])
        .arg(&repo.dir)
        .stdin(Stdio::null());
    match tokio::time::timeout(ctx.limits.header_timeout * 3, cmd.output()).await {
        Ok(Ok(o)) if o.status.success() => out.extend(o.stdout),
        _ => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "git upload-pack failed to list refs",
            )
        }
    }
    git_response("application/x-git-upload-pack-advertisement", full(out))
}

const RECEIVE_CAPS: &str = "report-status delete-refs side-band-64k quiet ofs-delta object-format=sha1 agent=bottle-git-gate";

/// The ref advertisement of receive-pack, from the mirror.
fn receive_advertisement(dir: &std::path::Path) -> Result<Vec<u8>, git2::Error> {
    let repo = git2::Repository::open_bare(dir)?;
    let mut refs: Vec<(String, String)> = Vec::new();
    for r in repo.references()?.flatten() {
        let (Some(name), Some(oid)) = (r.name(), r.target()) else {
            continue;
        };
        if name.starts_with("refs/heads/") || name.starts_with("refs/tags/") {
            refs.push((name.to_string(), oid.to_string()));
        }
    }
    refs.sort();
    let mut out = Vec::new();
    if refs.is_empty() {
        out.extend(pktline::encode(
            format!("{} capabilities^{{}}\0{RECEIVE_CAPS}\n", pktline::Hex::ZERO).as_bytes(),
        ));
    }
    for (i, (name, oid)) in refs.iter().enumerate() {
        let line = if i == 0 {
            format!("{oid} {name}\0{RECEIVE_CAPS}\n")
        } else {
            format!("{oid} {name}\n")
        };
        out.extend(pktline::encode(line.as_bytes()));
    }
    out.extend_from_slice(pktline::FLUSH);
    Ok(out)
}

/// Reads the next body frame's data, bounded by the idle timeout. `Ok(None)` at the end.
async fn next_data(body: &mut Incoming, ctx: &GateContext) -> Result<Option<Bytes>, String> {
    loop {
        match tokio::time::timeout(ctx.limits.body_idle_timeout, body.frame()).await {
            Err(_) => return Err("the client stopped sending".into()),
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => return Err(format!("reading the request: {e}")),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

async fn upload_pack(
    req: Request<Incoming>,
    ctx: &Arc<GateContext>,
    repo: &Arc<GateRepo>,
) -> Response<GateBody> {
    let gzip = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let max = ctx.limits.max_upload_request;
    let mut body = req.into_body();
    let mut raw = Vec::new();
    loop {
        match next_data(&mut body, ctx).await {
            Ok(Some(d)) => {
                if raw.len() + d.len() > max {
                    return text(StatusCode::PAYLOAD_TOO_LARGE, "fetch negotiation too large");
                }
                raw.extend_from_slice(&d);
            }
            Ok(None) => break,
            Err(e) => return text(StatusCode::REQUEST_TIMEOUT, &e),
        }
    }
    let input = if gzip {
        let mut out = Vec::new();
        let limit = u64::try_from(max).unwrap_or(u64::MAX) + 1;
        match flate2::read::GzDecoder::new(raw.as_slice())
            .take(limit)
            .read_to_end(&mut out)
        {
            Ok(n) if n <= max => out,
            Ok(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "fetch negotiation too large"),
            Err(_) => return text(StatusCode::BAD_REQUEST, "malformed gzip body"),
        }
    } else {
        raw
    };
    // Refuse garbage before git sees it: the body must be pkt-lines.
    if let Err(e) = pktline::parse(&input) {
        return text(StatusCode::BAD_REQUEST, &format!("malformed request: {e}"));
    }
    let mut cmd = git_cmd(ctx);
    cmd.args(["upload-pack", "--stateless-rpc"]).arg(&repo.dir);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot run git upload-pack: {e}"),
            )
        }
    };
    let (Some(mut stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "git upload-pack has no pipes",
        );
    };
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(8);
    let ctx2 = ctx.clone();
    let deadline = ctx.limits.upload_deadline;
    let idle = ctx.limits.body_idle_timeout;
    let name = repo.cfg.name.clone();
    let in_len = input.len() as u64;
    tokio::spawn(async move {
        let writer = tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
            drop(stdin);
        });
        let mut sent = 0u64;
        let run = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match tokio::time::timeout(idle * 5, stdout.read(&mut buf)).await {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => n,
                };
                sent += n as u64;
                // A client that stops reading blocks here; the deadline ends it.
                if tx
                    .send(Ok(Frame::data(Bytes::copy_from_slice(&buf[..n]))))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(deadline, run).await;
        writer.abort();
        let _ = child.kill().await;
        ctx2.stats.bytes(in_len, sent);
        ctx2.audit(
            &name,
            "upload-pack",
            None,
            "allowed",
            None,
            None,
            in_len,
            sent,
        );
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    git_response(
        "application/x-git-upload-pack-result",
        StreamBody::new(stream).boxed_unsync(),
    )
}

/// The outcome of one ref update, for the report.
#[derive(Debug, Clone)]
struct RefResult {
    cmd: Command,
    /// `None`: ok; `Some(reason)`: ng.
    ng: Option<String>,
    /// Extra `remote:` lines.
    notes: Vec<String>,
    kind: Option<UpdateKind>,
    /// Stats key when rejected.
    reason_key: &'static str,
}

async fn receive_pack(
    req: Request<Incoming>,
    ctx: &Arc<GateContext>,
    repo: &Arc<GateRepo>,
) -> Response<GateBody> {
    let mut body = req.into_body();
    // 1. The command section, bounded.
    let mut buf: Vec<u8> = Vec::new();
    let (push, used) = loop {
        match pktline::parse_push(&buf, ctx.limits.max_commands) {
            Ok(Some(found)) => break found,
            Ok(None) => {}
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("malformed push: {e}")),
        }
        if buf.len() > ctx.limits.max_command_bytes {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the list of ref updates is too large",
            );
        }
        match next_data(&mut body, ctx).await {
            Ok(Some(d)) => buf.extend_from_slice(&d),
            Ok(None) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "malformed push: the request ended early",
                )
            }
            Err(e) => return text(StatusCode::REQUEST_TIMEOUT, &e),
        }
    };
    if push.commands.is_empty() {
        // git's probe before a large push.
        return git_response("application/x-git-receive-pack-result", full(Vec::new()));
    }
    if let Some(key) = ["report-status-v2", "atomic", "push-options", "push-cert"]
        .iter()
        .find(|c| push.has_capability(c))
    {
        return text(
            StatusCode::BAD_REQUEST,
            &format!("capability {key} was not offered"),
        );
    }
    // 2. One push at a time per repo.
    let guard = match tokio::time::timeout(ctx.limits.lock_wait, repo.lock.lock()).await {
        Ok(g) => g,
        Err(_) => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "{}: another push is still running; try again",
                    repo.cfg.name
                ),
            )
        }
    };
    // 3. Quarantine: a bare repo borrowing the mirror's objects; the pack lands here only.
    let quarantine = match make_quarantine(&repo.dir) {
        Ok(q) => q,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot make a quarantine: {e}"),
            )
        }
    };
    let mut bytes_in = buf.len() as u64;
    let needs_pack = push.commands.iter().any(|c| !c.is_delete());
    let unpack_started = std::time::Instant::now();
    let unpack: Result<(), String> = if needs_pack {
        match index_pack(
            ctx,
            quarantine.path(),
            &buf[used..],
            &mut body,
            &mut bytes_in,
        )
        .await
        {
            Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    } else {
        Ok(())
    };
    ctx.stats.bytes(bytes_in, 0);
    info!(
        repo = %repo.cfg.name,
        bytes = bytes_in,
        unpack_ms = u64::try_from(unpack_started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "push received"
    );
    let rules = (ctx.rules)();
    let (results, upstream_messages) = match unpack {
        Err(e) => {
            warn!(repo = %repo.cfg.name, error = %e, "push unpack failed");
            let results = push
                .commands
                .iter()
                .map(|c| RefResult {
                    cmd: c.clone(),
                    ng: Some("unpacker error".into()),
                    notes: vec![e.clone()],
                    kind: None,
                    reason_key: "unpack",
                })
                .collect();
            (results, Vec::new())
        }
        Ok(()) => {
            let r = repo.clone();
            let q = quarantine.path().to_path_buf();
            let commands = push.commands.clone();
            let limits = ctx.limits.clone();
            let up = upstream_limits(ctx);
            match tokio::task::spawn_blocking(move || {
                decide_and_forward(&r, &q, &commands, &rules, &limits, up)
            })
            .await
            {
                Ok(v) => v,
                Err(_) => (
                    push.commands
                        .iter()
                        .map(|c| RefResult {
                            cmd: c.clone(),
                            ng: Some("internal error in the git-gate".into()),
                            notes: Vec::new(),
                            kind: None,
                            reason_key: "internal",
                        })
                        .collect(),
                    Vec::new(),
                ),
            }
        }
    };
    drop(quarantine);
    drop(guard);
    for r in &results {
        let decision = match (&r.ng, r.reason_key) {
            (None, _) => "allowed",
            (Some(_), "secret") => "dlp_blocked",
            _ => "denied",
        };
        match &r.ng {
            None => ctx.stats.accepted(),
            Some(_) => ctx.stats.rejected(r.reason_key),
        }
        let rule = r
            .notes
            .first()
            .filter(|_| r.reason_key == "secret")
            .map(String::as_str);
        ctx.audit(
            &repo.cfg.name,
            "push",
            Some(&r.cmd.refname),
            decision,
            rule,
            r.ng.as_deref(),
            bytes_in,
            0,
        );
    }
    git_response(
        "application/x-git-receive-pack-result",
        full(report(&push, &results, &upstream_messages)),
    )
}

fn make_quarantine(mirror: &std::path::Path) -> std::io::Result<tempfile::TempDir> {
    let q = tempfile::Builder::new()
        .prefix("quarantine-")
        .tempdir_in(mirror)?;
    let repo = git2::Repository::init_bare(q.path())
        .map_err(|e| std::io::Error::other(e.message().to_string()))?;
    // libgit2 re-packs what it forwards from scratch (it cannot reuse the client's deltas);
    // a small delta window (git's `pack.windowMemory`) trades a larger pack on the wire for
    // far less delta search.
    if let Ok(mut cfg) = repo.config() {
        let _ = cfg.set_i64("pack.windowMemory", 1);
    }
    let objects = mirror.join("objects").canonicalize()?;
    std::fs::write(
        q.path().join("objects/info/alternates"),
        format!("{}\n", objects.display()),
    )?;
    Ok(q)
}

/// Streams the pack into `git index-pack --stdin --fix-thin` in the quarantine.
async fn index_pack(
    ctx: &GateContext,
    quarantine: &std::path::Path,
    first: &[u8],
    body: &mut Incoming,
    bytes_in: &mut u64,
) -> Result<(), String> {
    let mut cmd = git_cmd(ctx);
    cmd.env("GIT_DIR", quarantine)
        .current_dir(quarantine)
        .args(["index-pack", "--stdin", "--fix-thin"])
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run git index-pack: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("index-pack has no stdin")?;
    let feed = async {
        stdin.write_all(first).await.map_err(|e| e.to_string())?;
        while let Some(d) = next_data(body, ctx).await? {
            *bytes_in += d.len() as u64;
            if *bytes_in > ctx.limits.max_push_bytes {
                return Err(format!(
                    "the push is larger than {} bytes",
                    ctx.limits.max_push_bytes
                ));
            }
            stdin
                .write_all(&d)
                .await
                .map_err(|e| format!("index-pack: {e}"))?;
        }
        drop(stdin);
        Ok::<(), String>(())
    };
    let fed = feed.await;
    if let Err(e) = fed {
        let _ = child.kill().await;
        return Err(e);
    }
    match tokio::time::timeout(ctx.limits.upstream_deadline, child.wait_with_output()).await {
        Ok(Ok(o)) if o.status.success() => Ok(()),
        Ok(Ok(o)) => Err(format!(
            "index-pack: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("failed")
        )),
        Ok(Err(e)) => Err(format!("index-pack: {e}")),
        Err(_) => Err("index-pack took too long".into()),
    }
}

fn ng(
    cmd: &Command,
    reason: &str,
    key: &'static str,
    notes: Vec<String>,
    kind: Option<UpdateKind>,
) -> RefResult {
    RefResult {
        cmd: cmd.clone(),
        ng: Some(reason.to_string()),
        notes,
        kind,
        reason_key: key,
    }
}

/// Policy, scan, upstream push, mirror update. Runs on a blocking thread under the repo lock.
fn decide_and_forward(
    repo: &GateRepo,
    quarantine: &std::path::Path,
    commands: &[Command],
    rules: &bottle_dlp::RuleSet,
    limits: &crate::gate::GateLimits,
    up: UpstreamLimits,
) -> (Vec<RefResult>, Vec<u8>) {
    let fail_all = |reason: String| {
        (
            commands
                .iter()
                .map(|c| ng(c, &reason, "internal", Vec::new(), None))
                .collect(),
            Vec::new(),
        )
    };
    let (mirror, q) = match (
        git2::Repository::open_bare(&repo.dir),
        git2::Repository::open_bare(quarantine),
    ) {
        (Ok(m), Ok(q)) => (m, q),
        _ => return fail_all("cannot open the mirror".into()),
    };
    // While the commits are scanned: connect to the upstream (nothing is sent before the scan
    // passes) and check whether the client's pack can go upstream as it is.
    let pre = upstream::preconnect(&repo.cfg, up);
    let pack_check = {
        let (m, qd) = (repo.dir.clone(), quarantine.to_path_buf());
        let tips: Vec<git2::Oid> = commands
            .iter()
            .filter(|c| !c.is_delete())
            .filter_map(|c| git2::Oid::from_str(c.new.as_str()).ok())
            .collect();
        std::thread::Builder::new()
            .name("git-gate-packcheck".into())
            .spawn(move || pack_fits(&m, &qd, &tips))
    };
    let mut known = Vec::new();
    let mut current = std::collections::HashMap::new();
    if let Ok(refs) = mirror.references() {
        for r in refs.flatten() {
            if let (Some(name), Some(oid)) = (r.name(), r.target()) {
                known.push(oid);
                current.insert(name.to_string(), oid);
            }
        }
    }
    let default_branch = mirror
        .find_reference("HEAD")
        .ok()
        .and_then(|h| h.symbolic_target().map(str::to_string));
    // A tag object already in the mirror is already upstream (not the push's to answer for).
    let mirror_odb = mirror.odb().ok();
    let is_known = |oid: git2::Oid| mirror_odb.as_ref().is_some_and(|db| db.exists(oid));
    let mut results = Vec::new();
    let mut totals = ScanTotals::default();
    let started = std::time::Instant::now();
    for cmd in commands {
        let oid = |h: &pktline::Hex| git2::Oid::from_str(h.as_str()).ok();
        let (Some(old), Some(new)) = (oid(&cmd.old), oid(&cmd.new)) else {
            results.push(ng(cmd, "bad object id", "malformed", Vec::new(), None));
            continue;
        };
        let cur = current
            .get(&cmd.refname)
            .copied()
            .unwrap_or_else(git2::Oid::zero);
        if cur != old {
            results.push(ng(
                cmd,
                "fetch first",
                "stale",
                vec![format!(
                    "{} moved upstream; fetch, then push again",
                    cmd.refname
                )],
                None,
            ));
            continue;
        }
        let kind = if cmd.is_delete() {
            UpdateKind::Delete
        } else if cmd.is_create() {
            UpdateKind::Create
        } else if old == new || q.graph_descendant_of(new, old).unwrap_or(false) {
            UpdateKind::FastForward
        } else {
            UpdateKind::Force
        };
        if let Err(refusal) = repo
            .cfg
            .policy
            .check(&cmd.refname, kind, default_branch.as_deref())
        {
            results.push(ng(
                cmd,
                refusal.reason(),
                refusal.key(),
                Vec::new(),
                Some(kind),
            ));
            continue;
        }
        if kind != UpdateKind::Delete {
            let old_tip = (!cmd.is_create()).then_some(old);
            let commits = match scan::introduced(&q, old_tip, new, &known, &limits.scan) {
                Ok(c) => c,
                Err(e) => {
                    results.push(ng(
                        cmd,
                        "rejected by the git-gate",
                        "scan",
                        vec![e.to_string()],
                        Some(kind),
                    ));
                    continue;
                }
            };
            let scanned = scan::scan_tags(&q, new, &is_known, rules, &limits.scan, &mut totals)
                .and_then(|mut hits| {
                    hits.extend(scan::scan_commits(
                        &q,
                        &commits,
                        rules,
                        &limits.scan,
                        &mut totals,
                    )?);
                    hits.truncate(limits.scan.max_hits);
                    Ok(hits)
                });
            match scanned {
                Ok(hits) if !hits.is_empty() => {
                    let mut notes: Vec<String> =
                        hits.iter().map(|h| h.rule.clone()).take(1).collect();
                    notes.extend(
                        hits.iter()
                            .map(|h| format!("secret found: {}", h.describe())),
                    );
                    results.push(ng(cmd, "secret detected by the git-gate; remove it from the commits and push again", "secret", notes, Some(kind)));
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    results.push(ng(
                        cmd,
                        "rejected by the git-gate",
                        "scan",
                        vec![e.to_string()],
                        Some(kind),
                    ));
                    continue;
                }
            }
        }
        results.push(RefResult {
            cmd: cmd.clone(),
            ng: None,
            notes: Vec::new(),
            kind: Some(kind),
            reason_key: "",
        });
    }
    // Forward the clean ones.
    let mut refspecs = Vec::new();
    for r in results.iter().filter(|r| r.ng.is_none()) {
        if r.kind == Some(UpdateKind::Delete) {
            refspecs.push(format!(":{}", r.cmd.refname));
            continue;
        }
        let Ok(new) = git2::Oid::from_str(r.cmd.new.as_str()) else {
            continue;
        };
        if q.reference(&r.cmd.refname, new, true, "git-gate push")
            .is_err()
        {
            continue;
        }
        let force = if r.kind == Some(UpdateKind::Force) {
            "+"
        } else {
            ""
        };
        refspecs.push(format!("{force}{0}:{0}", r.cmd.refname));
    }
    if refspecs.is_empty() {
        return (results, Vec::new());
    }
    let scanned = started.elapsed();
    let fits = match pack_check {
        Ok(h) => h
            .join()
            .unwrap_or_else(|_| Err("the pack check failed".into())),
        Err(e) => Err(e.to_string()),
    };
    let outcome = forward(repo, &mirror, &q, fits, pre, &results, &refspecs, up);
    info!(
        repo = %repo.cfg.name,
        commits = totals.commits,
        scanned_bytes = totals.bytes,
        scan_ms = u64::try_from(scanned.as_millis()).unwrap_or(u64::MAX),
        push_ms = u64::try_from((started.elapsed() - scanned).as_millis()).unwrap_or(u64::MAX),
        "push decided and forwarded"
    );
    let messages = match outcome {
        Err(e) => {
            let text = e.to_string();
            for r in results.iter_mut().filter(|r| r.ng.is_none()) {
                r.ng = Some("upstream refused or unreachable; nothing was pushed".into());
                r.notes = vec![text.clone()];
                r.reason_key = "upstream";
            }
            return (results, Vec::new());
        }
        Ok(o) => {
            let by_ref: std::collections::HashMap<&str, &Option<String>> = o
                .refs
                .iter()
                .map(|r| (r.refname.as_str(), &r.rejected))
                .collect();
            for r in results.iter_mut().filter(|r| r.ng.is_none()) {
                match by_ref.get(r.cmd.refname.as_str()) {
                    Some(None) => {}
                    Some(Some(reason)) => {
                        r.ng = Some(reason.clone());
                        r.reason_key = "upstream";
                    }
                    None => {
                        r.ng = Some("the upstream did not report on this ref".into());
                        r.reason_key = "upstream";
                    }
                }
            }
            o.messages
        }
    };
    // Only what the upstream accepted enters the mirror.
    let accepted: Vec<&RefResult> = results.iter().filter(|r| r.ng.is_none()).collect();
    if !accepted.is_empty() {
        if let Err(e) = migrate_objects(quarantine, &repo.dir) {
            warn!(repo = %repo.cfg.name, error = %e, "moving pushed objects into the mirror failed; the next fetch repairs it");
        }
        for r in accepted {
            let res = if r.kind == Some(UpdateKind::Delete) {
                mirror
                    .find_reference(&r.cmd.refname)
                    .and_then(|mut x| x.delete())
            } else {
                git2::Oid::from_str(r.cmd.new.as_str()).and_then(|new| {
                    mirror
                        .reference(&r.cmd.refname, new, true, "git-gate push")
                        .map(|_| ())
                })
            };
            if let Err(e) = res {
                debug!(error = %e.message(), "mirror ref update failed; the next fetch repairs it");
            }
        }
    }
    (results, messages)
}

/// Forwards the accepted updates: the client's own pack over SSH when every update was
/// accepted and the pack holds nothing but what those updates bring (or what the mirror, so
/// the upstream, already has; `fits`); libgit2's push (which re-packs exactly the reachable
/// objects) otherwise.
#[allow(clippy::too_many_arguments)]
fn forward(
    repo: &GateRepo,
    mirror: &git2::Repository,
    q: &git2::Repository,
    fits: Result<Option<std::path::PathBuf>, String>,
    pre: Option<upstream::Preconnect>,
    results: &[RefResult],
    refspecs: &[String],
    up: UpstreamLimits,
) -> Result<upstream::PushOutcome, UpstreamError> {
    let fits = if results.iter().any(|r| r.ng.is_some()) {
        // A refused update's objects must not leave.
        Err("some updates were refused".to_string())
    } else {
        fits
    };
    match fits {
        Err(why) => debug!(repo = %repo.cfg.name, %why, "forwarding with libgit2"),
        Ok(pack) => {
            let updates: Vec<crate::sendpack::Update> = results
                .iter()
                .map(|r| crate::sendpack::Update {
                    old: r.cmd.old,
                    new: r.cmd.new,
                    refname: r.cmd.refname.clone(),
                })
                .collect();
            let tips = mirror_tips(mirror);
            match upstream::push_pack(&repo.cfg, pre, &updates, &tips, pack.as_deref(), up)? {
                crate::sendpack::Outcome::Done(o) => return Ok(o),
                crate::sendpack::Outcome::Fallback(why) => {
                    info!(repo = %repo.cfg.name, %why, "forwarding with libgit2");
                }
            }
        }
    }
    upstream::push(q, &repo.cfg, refspecs, up)
}

/// The refs the gate advertises to a pushing client (the client leaves out what they reach).
fn mirror_tips(mirror: &git2::Repository) -> Vec<pktline::Hex> {
    let mut tips = Vec::new();
    if let Ok(refs) = mirror.references() {
        for r in refs.flatten() {
            if let (Some(name), Some(oid)) = (r.name(), r.target()) {
                if name.starts_with("refs/heads/") || name.starts_with("refs/tags/") {
                    if let Some(h) = pktline::Hex::parse(oid.to_string().as_bytes()) {
                        tips.push(h);
                    }
                }
            }
        }
    }
    tips
}

/// The quarantine's pack, if it may go upstream as it is once every update is accepted: each
/// of its objects is either already in the mirror or reachable from the pushed `tips` (an
/// unreachable object was never scanned). `Ok(None)`: a delete-only push, no pack.
/// `Err`: why not.
fn pack_fits(
    mirror: &std::path::Path,
    quarantine: &std::path::Path,
    tips: &[git2::Oid],
) -> Result<Option<std::path::PathBuf>, String> {
    let started = std::time::Instant::now();
    let mut packs: Vec<std::path::PathBuf> = std::fs::read_dir(quarantine.join("objects/pack"))
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect();
    if tips.is_empty() {
        return if packs.is_empty() {
            Ok(None)
        } else {
            Err("a delete-only push came with a pack".into())
        };
    }
    let (Some(pack), true) = (packs.pop(), packs.is_empty()) else {
        return Err("not exactly one pack in the quarantine".into());
    };
    let git = |e: git2::Error| e.message().to_string();
    let (mirror, q) = (
        git2::Repository::open_bare(mirror).map_err(git)?,
        git2::Repository::open_bare(quarantine).map_err(git)?,
    );
    let idx = std::fs::read(pack.with_extension("idx")).map_err(|e| e.to_string())?;
    let ids = crate::packcheck::index_ids(&idx).map_err(|e| e.to_string())?;
    let odb = mirror.odb().map_err(git)?;
    let mut fresh: std::collections::HashSet<git2::Oid> =
        ids.into_iter().filter(|id| !odb.exists(*id)).collect();
    crate::packcheck::strike_reachable(&q, tips, &mut fresh).map_err(|e| e.to_string())?;
    debug!(
        check_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "pack checked"
    );
    if let Some(stray) = fresh.iter().next() {
        return Err(format!(
            "the pack holds {} object(s) no pushed ref reaches, e.g. {stray}",
            fresh.len()
        ));
    }
    Ok(Some(pack))
}

/// Moves the quarantine's packs into the mirror: `.pack` before `.idx`, so a reader never
/// sees an index without its pack.
fn migrate_objects(quarantine: &std::path::Path, mirror: &std::path::Path) -> std::io::Result<()> {
    let src = quarantine.join("objects/pack");
    let dst = mirror.join("objects/pack");
    std::fs::create_dir_all(&dst)?;
    let mut entries: Vec<_> = std::fs::read_dir(&src)?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort_by_key(|p| p.extension().is_some_and(|e| e == "idx"));
    for p in entries {
        if let Some(name) = p.file_name() {
            std::fs::rename(&p, dst.join(name))?;
        }
    }
    Ok(())
}

/// report-status, on side-band 1 when the client asked for side-band-64k, with the
/// upstream's text and the gate's notes on side-band 2 (git prints them as `remote:`).
fn report(push: &PushRequest, results: &[RefResult], upstream_messages: &[u8]) -> Vec<u8> {
    let mut status = Vec::new();
    let unpack_failed = results.iter().find(|r| r.reason_key == "unpack");
    match unpack_failed {
        Some(r) => status.extend(pktline::encode(
            format!(
                "unpack {}\n",
                r.notes.first().map(String::as_str).unwrap_or("failed")
            )
            .replace('\n', " ")
            .trim_end()
            .as_bytes(),
        )),
        None => status.extend(pktline::encode(b"unpack ok\n")),
    }
    let mut notes = Vec::new();
    for r in results {
        match &r.ng {
            None => status.extend(pktline::encode(
                format!("ok {}\n", r.cmd.refname).as_bytes(),
            )),
            Some(reason) => {
                let reason: String = reason.chars().filter(|c| *c != '\n').take(400).collect();
                status.extend(pktline::encode(
                    format!("ng {} {reason}\n", r.cmd.refname).as_bytes(),
                ));
                let lines: Vec<&String> = if r.reason_key == "secret" {
                    r.notes.iter().skip(1).collect()
                } else {
                    r.notes.iter().collect()
                };
                for n in lines {
                    notes.push(format!("git-gate: {}: {n}\n", r.cmd.refname));
                }
            }
        }
    }
    status.extend_from_slice(pktline::FLUSH);
    if !push.has_capability("report-status") {
        return Vec::new();
    }
    if !push.has_capability("side-band-64k") {
        return status;
    }
    let mut out = Vec::new();
    if !upstream_messages.is_empty() {
        out.extend(pktline::sideband(2, upstream_messages));
    }
    let notes: String = notes.concat();
    if !notes.is_empty() {
        out.extend(pktline::sideband(2, notes.as_bytes()));
    }
    out.extend(pktline::sideband(1, &status));
    out.extend_from_slice(pktline::FLUSH);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(split_path("/app.git/info/refs"), Some(("app", "info/refs")));
        assert_eq!(
            split_path("/../x.git/info/refs"),
            Some(("../x", "info/refs"))
        );
        assert_eq!(split_path("/app/info/refs"), None);
        assert!(!bottle_api::gitgate::is_repo_name("../x"));
    }

    /// A mirror with one commit, and a quarantine holding a pack of a second commit on top,
    /// plus `stray` (an object no ref reaches) when asked.
    fn quarantined_push(stray: bool) -> (tempfile::TempDir, tempfile::TempDir, git2::Oid) {
        let mdir = tempfile::tempdir().unwrap();
        let mirror = git2::Repository::init_bare(mdir.path()).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        let commit = |repo: &git2::Repository, parent: Option<git2::Oid>, content: &[u8]| {
            let blob = repo.blob(content).unwrap();
            let mut tb = repo.treebuilder(None).unwrap();
            tb.insert("f", blob, 0o100_644).unwrap();
            let tree = repo.find_tree(tb.write().unwrap()).unwrap();
            let parents: Vec<git2::Commit> = parent
                .map(|p| repo.find_commit(p).unwrap())
                .into_iter()
                .collect();
            let refs: Vec<&git2::Commit> = parents.iter().collect();
            repo.commit(None, &sig, &sig, "m", &tree, &refs).unwrap()
        };
        let base = commit(&mirror, None, b"base\n");
        mirror
            .reference("refs/heads/main", base, true, "t")
            .unwrap();
        let q = make_quarantine(mdir.path()).unwrap();
        let qrepo = git2::Repository::open_bare(q.path()).unwrap();
        let tip = commit(&qrepo, Some(base), b"next\n");
        let mut pb = qrepo.packbuilder().unwrap();
        pb.insert_commit(tip).unwrap();
        if stray {
            let junk = qrepo.blob(b"never scanned: no ref reaches it\n").unwrap();
            pb.insert_object(junk, None).unwrap();
        }
        pb.write(&q.path().join("objects/pack"), 0o644).unwrap();
        drop(pb);
        drop(qrepo);
        (mdir, q, tip)
    }

    #[test]
    fn the_clients_pack_goes_upstream_only_if_the_pushed_tips_reach_all_of_it() {
        let (m, q, tip) = quarantined_push(false);
        let pack = pack_fits(m.path(), q.path(), &[tip]).unwrap().unwrap();
        assert_eq!(pack.extension().unwrap(), "pack");
        let (m, q, tip) = quarantined_push(true);
        let why = pack_fits(m.path(), q.path(), &[tip]).unwrap_err();
        assert!(why.contains("no pushed ref reaches"), "{why}");
        // A delete-only push has no pack to send; one that comes with a pack is not trusted.
        let (m, q, _) = quarantined_push(false);
        assert!(pack_fits(m.path(), q.path(), &[]).is_err());
    }

    #[test]
    fn report_with_sidebands() {
        let push = PushRequest {
            commands: vec![],
            capabilities: vec!["report-status".into(), "side-band-64k".into()],
        };
        let cmd = Command {
            old: pktline::Hex::ZERO,
            new: pktline::Hex::parse(&[b'1'; 40]).unwrap(),
            refname: "refs/heads/x".into(),
        };
        let results = vec![ng(
            &cmd,
            "secret detected",
            "secret",
            vec!["rule".into(), "secret found: commit 1".into()],
            None,
        )];
        let out = report(&push, &results, b"upstream says hi\n");
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("\x02upstream says hi"));
        assert!(text.contains("\x02git-gate: refs/heads/x: secret found: commit 1"));
        assert!(text.contains("\x01000eunpack ok\n"));
        assert!(text.contains("ng refs/heads/x secret detected"));
        assert!(text.ends_with("0000"));
    }
}
