//! One bottle's git-gate: its repos (bare mirrors under the bottle's state), their
//! credentials (memory only), and the smart-HTTP server on `gateway:9420`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bottle_api::gitgate::{GitGateSpec, IdentityKey, GIT_GATE_PORT};
use bottle_dlp::RuleSet;
use bottle_proxy::audit::{AuditEvent, AuditLog};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::refpolicy::RefPolicy;
use crate::stats::GitStats;

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("cannot prepare the mirror of {repo} at {path}: {message}")]
    Mirror {
        repo: String,
        path: String,
        message: String,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, GateError>;

/// One upstream repo as the gate holds it. The key lives only here, in memory.
pub struct RepoConfig {
    pub name: String,
    pub url: String,
    pub host_key: Option<String>,
    pub policy: RefPolicy,
    key: RwLock<Option<IdentityKey>>,
}

impl std::fmt::Debug for RepoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("has_key", &self.key().is_some())
            .finish_non_exhaustive()
    }
}

impl RepoConfig {
    pub fn new(name: &str, url: &str, host_key: Option<String>, policy: RefPolicy) -> Self {
        Self {
            name: name.to_string(),
            url: url.to_string(),
            host_key,
            policy,
            key: RwLock::new(None),
        }
    }

    /// The credential (SSH private key or HTTPS token), if the agent holds it.
    pub fn key(&self) -> Option<String> {
        let guard = match self.key.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        guard.as_ref().map(|k| k.0.clone())
    }

    pub fn set_key(&self, key: Option<IdentityKey>) {
        let mut guard = match self.key.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *guard = key;
    }
}

/// A repo and its mirror.
#[derive(Debug)]
pub struct GateRepo {
    pub cfg: RepoConfig,
    pub dir: PathBuf,
    /// One fetch or push at a time.
    pub lock: tokio::sync::Mutex<()>,
}

/// Bounds of the gate.
#[derive(Debug, Clone)]
pub struct GateLimits {
    pub header_timeout: Duration,
    /// Longest wait for the next chunk of a request body (half-open clients).
    pub body_idle_timeout: Duration,
    /// Deadline of one upstream fetch or push.
    pub upstream_deadline: Duration,
    pub upstream_connect_timeout: Duration,
    pub upstream_io_timeout: Duration,
    /// Longest wait for another push to the same repo to finish.
    pub lock_wait: Duration,
    /// Largest pack a push may send.
    pub max_push_bytes: u64,
    /// Largest (decoded) upload-pack negotiation request.
    pub max_upload_request: usize,
    /// Largest command section of a push (ref updates).
    pub max_command_bytes: usize,
    pub max_commands: usize,
    /// Longest a single upload-pack may run.
    pub upload_deadline: Duration,
    pub max_connections: usize,
    pub scan: crate::scan::ScanLimits,
    /// The `git` binary for upload-pack and index-pack.
    pub git_binary: PathBuf,
}

impl Default for GateLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(60),
            upstream_deadline: Duration::from_secs(600),
            upstream_connect_timeout: Duration::from_secs(10),
            upstream_io_timeout: Duration::from_secs(60),
            lock_wait: Duration::from_secs(120),
            max_push_bytes: 2 * 1024 * 1024 * 1024,
            max_upload_request: 32 * 1024 * 1024,
            max_command_bytes: 1024 * 1024,
            max_commands: 1000,
            upload_deadline: Duration::from_secs(1800),
            max_connections: 64,
            scan: crate::scan::ScanLimits::default(),
            git_binary: PathBuf::from("git"),
        }
    }
}

/// Source of the bottle's current DLP rules (its policy can change at any time).
pub type RulesFn = Arc<dyn Fn() -> Arc<RuleSet> + Send + Sync>;

/// Everything one bottle's gate shares.
pub struct GateContext {
    pub bottle: String,
    pub gateway: Ipv4Addr,
    pub bottle_addr: Ipv4Addr,
    pub repos: BTreeMap<String, Arc<GateRepo>>,
    pub rules: RulesFn,
    pub audit: Arc<AuditLog>,
    pub stats: Arc<GitStats>,
    pub limits: GateLimits,
    pub conn_limit: Arc<Semaphore>,
}

impl std::fmt::Debug for GateContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateContext")
            .field("bottle", &self.bottle)
            .field("repos", &self.repos.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Where bottle `state_dir`'s mirrors live.
pub fn mirrors_dir(bottle_state_dir: &Path) -> PathBuf {
    bottle_state_dir.join("git")
}

/// Creates (or reopens) the bare mirror of each repo.
pub fn open_mirrors(root: &Path, spec: &GitGateSpec) -> Result<BTreeMap<String, Arc<GateRepo>>> {
    let mut repos = BTreeMap::new();
    for (name, r) in spec.repos.iter().flatten() {
        let dir = root.join(format!("{name}.git"));
        let err = |message: String| GateError::Mirror {
            repo: name.clone(),
            path: dir.display().to_string(),
            message,
        };
        if !dir.join("HEAD").exists() {
            std::fs::create_dir_all(root).map_err(|e| err(e.to_string()))?;
            let mut opts = git2::RepositoryInitOptions::new();
            opts.bare(true).mkpath(true).no_reinit(true);
            let repo = git2::Repository::init_opts(&dir, &opts)
                .map_err(|e| err(e.message().to_string()))?;
            let mut cfg = repo.config().map_err(|e| err(e.message().to_string()))?;
            // The mirror is rewritten by fetches; reflogs and auto-gc would only grow or race.
            let _ = cfg.set_bool("core.logAllRefUpdates", false);
            let _ = cfg.set_i32("gc.auto", 0);
        }
        // Quarantines left by a crash hold objects nobody accepted.
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("quarantine-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        repos.insert(
            name.clone(),
            Arc::new(GateRepo {
                cfg: RepoConfig::new(
                    name,
                    &r.url,
                    r.host_key.clone(),
                    r.policy.as_ref().map(RefPolicy::from).unwrap_or_default(),
                ),
                dir,
                lock: tokio::sync::Mutex::new(()),
            }),
        );
    }
    Ok(repos)
}

impl GateContext {
    /// Hands the gate the keys the client sent; repos without one keep failing closed.
    pub fn set_keys(&self, keys: &BTreeMap<String, IdentityKey>) {
        for (name, repo) in &self.repos {
            repo.cfg.set_key(keys.get(name).cloned());
        }
    }

    /// Names of repos whose key the agent does not hold (after a restart).
    pub fn repos_without_key(&self) -> Vec<String> {
        self.repos
            .iter()
            .filter(|(_, r)| r.cfg.key().is_none())
            .map(|(n, _)| n.clone())
            .collect()
    }

    #[expect(clippy::too_many_arguments, reason = "the fields of one audit line")]
    pub(crate) fn audit(
        &self,
        repo: &str,
        op: &str,
        refname: Option<&str>,
        decision: &str,
        rule: Option<&str>,
        reason: Option<&str>,
        up: u64,
        down: u64,
    ) {
        self.audit.record(&AuditEvent {
            kind: "git",
            host: repo,
            method: Some(op),
            path: refname,
            status: None,
            bytes_up: up,
            bytes_down: down,
            decision,
            rule,
            reason,
        });
    }
}

/// The running gate; dropping it stops the server (mirrors stay on disk).
pub struct GitGate {
    pub ctx: Arc<GateContext>,
    task: JoinHandle<()>,
}

impl Drop for GitGate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GitGate {
    /// Binds `gateway:9420` and serves the bottle's repos.
    pub async fn start(ctx: Arc<GateContext>) -> Result<Self> {
        crate::upstream::set_global_timeouts(
            ctx.limits.upstream_connect_timeout,
            ctx.limits.upstream_io_timeout,
        );
        let addr = SocketAddr::V4(SocketAddrV4::new(ctx.gateway, GIT_GATE_PORT));
        let err = |source| GateError::Bind {
            addr: addr.to_string(),
            source,
        };
        let socket = TcpSocket::new_v4().map_err(err)?;
        socket.set_reuseaddr(true).map_err(err)?;
        socket.bind(addr).map_err(err)?;
        let listener = socket.listen(256).map_err(err)?;
        let task = tokio::spawn(accept_loop(listener, ctx.clone()));
        Ok(Self { ctx, task })
    }
}

async fn accept_loop(listener: TcpListener, ctx: Arc<GateContext>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if peer.ip() != ctx.bottle_addr {
            debug!(bottle = %ctx.bottle, %peer, "git-gate connection not from the bottle; dropped");
            continue;
        }
        let Ok(permit) = ctx.conn_limit.clone().try_acquire_owned() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let svc_ctx = ctx.clone();
            let service = service_fn(move |req| crate::server::handle(req, svc_ctx.clone()));
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(ctx.limits.header_timeout)
                .max_buf_size(64 * 1024);
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(error = %e, "git-gate connection ended with an error");
            }
            drop(permit);
        });
    }
}
