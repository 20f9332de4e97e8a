//! Talking to the upstream with the host-held credential, through libgit2: fetch into the
//! mirror, push accepted refs. Blocking calls; callers run them on a blocking thread under a
//! deadline. The SSH host key must match a pinned one (no trust on first use); the key
//! material is handed to libssh2 from memory and never touches disk. An HTTPS upstream's
//! certificate must verify against the system roots plus the agent's `upstream_ca_files`
//! ([`trust_ca_files`]); its token goes to libgit2 from memory as the basic-auth password.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use git2::{
    CertificateCheckStatus, Cred, CredentialType, FetchOptions, FetchPrune, PushOptions,
    RemoteCallbacks, Repository,
};

use crate::gate::RepoConfig;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{repo}: no host key is pinned for {url}, so the git-gate refuses to connect (no trust on first use). Pin it: add `host_key: \"<type> <base64>\"` to the repo's git-gate entry, e.g. the output of `ssh-keyscan -t ed25519 -p PORT HOST | cut -d' ' -f2-` checked against a fingerprint you trust, and create the bottle again")]
    NoHostKey { repo: String, url: String },
    #[error("{repo}: the agent has no credential for this repo (keys are kept in memory only and are lost when the agent restarts); supply them again with `bottle git-gate-keys BOTTLE --git-gate FILE`")]
    NoCredential { repo: String },
    #[error("{repo}: the upstream's host key does not match the pinned host_key; refusing to talk to it (a changed key may mean a man in the middle: check it out of band before updating the pin)")]
    HostKeyMismatch { repo: String },
    #[error("{repo}: the upstream {host} presented a TLS certificate the git-gate does not trust ({message}); it must chain to the system roots or to a CA in the agent's `upstream_ca_files`, be valid now and name {host}. The gate refuses to talk to it")]
    Certificate {
        repo: String,
        host: String,
        message: String,
    },
    #[error("{repo}: the upstream refused the gate's credential for {url}: {hint}")]
    CredentialRefused {
        repo: String,
        url: String,
        hint: &'static str,
    },
    #[error("cannot add {} to the git-gate's trusted upstream CAs: {message}", path.display())]
    Trust { path: PathBuf, message: String },
    #[error("{repo}: upstream did not finish within {secs} s")]
    Timeout { repo: String, secs: u64 },
    #[error("{repo}: upstream {op} failed: {message}")]
    Git {
        repo: String,
        op: &'static str,
        message: String,
    },
}

pub type Result<T> = std::result::Result<T, UpstreamError>;

/// Bounds of one upstream operation.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamLimits {
    /// Whole-operation deadline (checked in libgit2's progress callbacks).
    pub deadline: Duration,
    /// Connect and per-read/write timeouts of the fast path (libgit2 has its own, global).
    pub connect: Duration,
    pub io: Duration,
}

/// Adds the PEM CA `files` to the roots libgit2 verifies HTTPS upstreams against
/// (process-wide; call once at start, before any upstream operation). With the OpenSSL
/// backend this crate builds (`git2`'s `https` feature on Linux), libgit2 first loads
/// OpenSSL's default verify paths (the system bundle) and each call here *adds* a file to
/// that store, so the system roots stay trusted. The egress proxy trusts the same files.
pub fn trust_ca_files(files: &[PathBuf]) -> Result<()> {
    for path in files {
        // SAFETY: stores a path in libgit2's global TLS context; called at agent start, before
        // any thread runs an upstream operation.
        unsafe { git2::opts::set_ssl_cert_file(path) }.map_err(|e| UpstreamError::Trust {
            path: path.clone(),
            message: e.message().to_string(),
        })?;
    }
    Ok(())
}

/// Sets libgit2's socket connect and I/O timeouts (process-wide).
pub fn set_global_timeouts(connect: Duration, io: Duration) {
    let ms = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: these only store an integer in libgit2's global settings; called before any
    // upstream operation runs.
    unsafe {
        let _ = git2::opts::set_server_connect_timeout_in_milliseconds(ms(connect));
        let _ = git2::opts::set_server_timeout_in_milliseconds(ms(io));
    }
}

fn pinned_blobs(repo: &RepoConfig) -> Result<Vec<Vec<u8>>> {
    let keys = repo
        .host_key
        .as_deref()
        .and_then(bottle_api::gitgate::parse_host_keys)
        .unwrap_or_default();
    let blobs: Vec<Vec<u8>> = keys
        .iter()
        .filter_map(|(_, b64)| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .collect();
    if blobs.is_empty() {
        return Err(UpstreamError::NoHostKey {
            repo: repo.name.clone(),
            url: repo.url.clone(),
        });
    }
    Ok(blobs)
}

/// Shared state of the callbacks of one operation.
struct CallbackState {
    host_key_mismatch: Cell<bool>,
    cred_attempts: Cell<u32>,
    timed_out: Cell<bool>,
}

fn callbacks<'a>(
    repo: &'a RepoConfig,
    key: &'a str,
    pinned: &'a [Vec<u8>],
    state: &'a CallbackState,
    started: Instant,
    limits: UpstreamLimits,
) -> RemoteCallbacks<'a> {
    let mut cb = RemoteCallbacks::new();
    let is_ssh = repo.url.starts_with("ssh://");
    cb.credentials(move |_url, username, allowed| {
        let n = state.cred_attempts.get() + 1;
        state.cred_attempts.set(n);
        if n > 3 {
            return Err(git2::Error::from_str(
                "upstream refused the gate's credential",
            ));
        }
        if is_ssh && allowed.contains(CredentialType::USERNAME) {
            return Cred::username(username.unwrap_or("git"));
        }
        if is_ssh && allowed.contains(CredentialType::SSH_KEY) {
            return Cred::ssh_key_from_memory(username.unwrap_or("git"), None, key, None);
        }
        if !is_ssh && allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            // The URL's user if it names one (libgit2 passes it), else GitHub's convention.
            let token = bottle_api::gitgate::https_token(key).unwrap_or_default();
            return Cred::userpass_plaintext(username.unwrap_or("x-access-token"), token);
        }
        Err(git2::Error::from_str(
            "upstream asks for a credential type the gate does not hold",
        ))
    });
    cb.certificate_check(move |cert, _host| {
        if !is_ssh {
            // HTTPS: libgit2 verified the chain (system roots + `trust_ca_files`) and the
            // host name; passthrough keeps its verdict, so an invalid certificate fails.
            return Ok(CertificateCheckStatus::CertificatePassthrough);
        }
        let matches = cert
            .as_hostkey()
            .and_then(|h| h.hostkey())
            .is_some_and(|raw| pinned.iter().any(|p| p.as_slice() == raw));
        if matches {
            Ok(CertificateCheckStatus::CertificateOk)
        } else {
            state.host_key_mismatch.set(true);
            Err(git2::Error::from_str("host key mismatch"))
        }
    });
    cb.transfer_progress(move |_| {
        let ok = started.elapsed() < limits.deadline;
        if !ok {
            state.timed_out.set(true);
        }
        ok
    });
    cb
}

fn map_err(
    repo: &RepoConfig,
    op: &'static str,
    state: &CallbackState,
    limits: UpstreamLimits,
    e: &git2::Error,
) -> UpstreamError {
    if state.host_key_mismatch.get() {
        UpstreamError::HostKeyMismatch {
            repo: repo.name.clone(),
        }
    } else if !repo.url.starts_with("ssh://") && is_certificate_error(e) {
        UpstreamError::Certificate {
            repo: repo.name.clone(),
            host: url_host(&repo.url).to_string(),
            message: e.message().chars().take(200).collect(),
        }
    } else if state.cred_attempts.get() > 3 || e.code() == git2::ErrorCode::Auth {
        UpstreamError::CredentialRefused {
            repo: repo.name.clone(),
            url: repo.url.clone(),
            hint: if repo.url.starts_with("ssh://") {
                "check that the key in the identity file is authorised upstream"
            } else {
                "check the token in the identity file, its expiry and its scopes (read and \
                 write on this repo), then send it again with `bottle git-gate-keys`"
            },
        }
    } else if state.timed_out.get() {
        UpstreamError::Timeout {
            repo: repo.name.clone(),
            secs: limits.deadline.as_secs(),
        }
    } else {
        UpstreamError::Git {
            repo: repo.name.clone(),
            op,
            message: e.message().chars().take(500).collect(),
        }
    }
}

/// Whether libgit2 refused an HTTPS upstream's certificate. With `CertificatePassthrough`
/// libgit2 returns a plain -1 carrying its own SSL-class message ("the SSL certificate is
/// invalid", "hostname does not match certificate"), not `GIT_ECERTIFICATE`.
fn is_certificate_error(e: &git2::Error) -> bool {
    e.code() == git2::ErrorCode::Certificate
        || (e.class() == git2::ErrorClass::Ssl && e.message().contains("certificate"))
}

/// The host (with port) of a URL the gate accepted, for messages.
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    authority.rsplit_once('@').map_or(authority, |(_, h)| h)
}

fn preflight(repo: &RepoConfig) -> Result<(Vec<Vec<u8>>, String)> {
    let pinned = if repo.url.starts_with("ssh://") {
        pinned_blobs(repo)?
    } else {
        Vec::new()
    };
    let key = repo.key().ok_or_else(|| UpstreamError::NoCredential {
        repo: repo.name.clone(),
    })?;
    Ok((pinned, key))
}

/// Fetches every branch and tag of the upstream into the bare mirror at `dir` (pruning what
/// the upstream deleted) and points the mirror's HEAD at the upstream's default branch.
/// Returns bytes received.
pub fn fetch(dir: &Path, repo: &RepoConfig, limits: UpstreamLimits) -> Result<u64> {
    let (pinned, key) = preflight(repo)?;
    let git = |op, e: git2::Error| UpstreamError::Git {
        repo: repo.name.clone(),
        op,
        message: e.message().to_string(),
    };
    let mirror = Repository::open_bare(dir).map_err(|e| git("open mirror", e))?;
    let mut remote = mirror
        .remote_anonymous(&repo.url)
        .map_err(|e| git("remote", e))?;
    let state = CallbackState {
        host_key_mismatch: Cell::new(false),
        cred_attempts: Cell::new(0),
        timed_out: Cell::new(false),
    };
    let received = Cell::new(0u64);
    let started = Instant::now();
    let mut cb = callbacks(repo, &key, &pinned, &state, started, limits);
    cb.transfer_progress(|p| {
        received.set(p.received_bytes() as u64);
        let ok = started.elapsed() < limits.deadline;
        if !ok {
            state.timed_out.set(true);
        }
        ok
    });
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(cb)
        .prune(FetchPrune::On)
        .download_tags(git2::AutotagOption::None);
    remote
        .fetch(
            &["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
            Some(&mut opts),
            None,
        )
        .map_err(|e| map_err(repo, "fetch", &state, limits, &e))?;
    // Anonymous remotes do not prune; drop mirror refs the upstream no longer has.
    if let Ok(heads) = remote.list() {
        let upstream: std::collections::HashSet<String> =
            heads.iter().map(|h| h.name().to_string()).collect();
        if let Ok(refs) = mirror.references() {
            let stale: Vec<String> = refs
                .flatten()
                .filter_map(|r| r.name().map(str::to_string))
                .filter(|n| {
                    (n.starts_with("refs/heads/") || n.starts_with("refs/tags/"))
                        && !upstream.contains(n)
                })
                .collect();
            for name in stale {
                if let Ok(mut r) = mirror.find_reference(&name) {
                    let _ = r.delete();
                }
            }
        }
    }
    if let Ok(buf) = remote.default_branch() {
        if let Some(head) = buf.as_str() {
            let _ = mirror.set_head(head);
        }
    }
    Ok(received.get())
}

/// What the upstream said about one ref of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefOutcome {
    pub refname: String,
    /// `None`: accepted; `Some(reason)`: the upstream's words.
    pub rejected: Option<String>,
}

/// Result of a push: per-ref outcomes and any text the upstream printed (`remote:` lines).
#[derive(Debug, Default)]
pub struct PushOutcome {
    pub refs: Vec<RefOutcome>,
    pub messages: Vec<u8>,
    pub bytes: u64,
}

/// Pushes `refspecs` (built by the caller: `[+]src:dst` or `:dst`) from `quarantine` to
/// the upstream.
pub fn push(
    quarantine: &Repository,
    repo: &RepoConfig,
    refspecs: &[String],
    limits: UpstreamLimits,
) -> Result<PushOutcome> {
    let (pinned, key) = preflight(repo)?;
    let mut remote = quarantine
        .remote_anonymous(&repo.url)
        .map_err(|e| UpstreamError::Git {
            repo: repo.name.clone(),
            op: "remote",
            message: e.message().to_string(),
        })?;
    let state = CallbackState {
        host_key_mismatch: Cell::new(false),
        cred_attempts: Cell::new(0),
        timed_out: Cell::new(false),
    };
    let outcomes = RefCell::new(Vec::new());
    let messages = RefCell::new(Vec::new());
    let bytes = Cell::new(0u64);
    let started = Instant::now();
    let mut cb = callbacks(repo, &key, &pinned, &state, started, limits);
    cb.push_update_reference(|refname, status| {
        outcomes.borrow_mut().push(RefOutcome {
            refname: refname.to_string(),
            rejected: status.map(str::to_string),
        });
        Ok(())
    });
    cb.sideband_progress(|data| {
        let mut m = messages.borrow_mut();
        if m.len() < 64 * 1024 {
            m.extend_from_slice(data);
        }
        started.elapsed() < limits.deadline
    });
    cb.push_transfer_progress(|_, _, b| bytes.set(b as u64));
    let mut opts = PushOptions::new();
    // 0: one packbuilder thread per CPU (libgit2's default is one thread).
    opts.remote_callbacks(cb).packbuilder_parallelism(0);
    let specs: Vec<&str> = refspecs.iter().map(String::as_str).collect();
    remote
        .push(&specs, Some(&mut opts))
        .map_err(|e| map_err(repo, "push", &state, limits, &e))?;
    drop(opts);
    Ok(PushOutcome {
        refs: outcomes.into_inner(),
        messages: messages.into_inner(),
        bytes: bytes.get(),
    })
}

/// A fast-path connection being made in the background (while the push is scanned): the
/// SSH handshake, pin check, authentication and ref advertisement cost nothing then. `None`
/// when the fast path does not apply to this repo.
pub struct Preconnect(
    std::thread::JoinHandle<
        std::result::Result<crate::sendpack::Opened, crate::sendpack::SendPackError>,
    >,
);

pub fn preconnect(repo: &RepoConfig, limits: UpstreamLimits) -> Option<Preconnect> {
    let url = crate::sendpack::parse_ssh_url(&repo.url)?;
    let (pinned, key) = preflight(repo).ok()?;
    let sp = sp_limits(limits);
    std::thread::Builder::new()
        .name("git-gate-connect".into())
        .spawn(move || crate::sendpack::open(&url, &pinned, &key, sp))
        .ok()
        .map(Preconnect)
}

fn sp_limits(limits: UpstreamLimits) -> crate::sendpack::Limits {
    crate::sendpack::Limits {
        connect: limits.connect,
        io: limits.io,
        deadline: limits.deadline,
    }
}

fn sp_err(
    repo: &RepoConfig,
    limits: UpstreamLimits,
    e: crate::sendpack::SendPackError,
) -> UpstreamError {
    use crate::sendpack::SendPackError;
    match e {
        SendPackError::HostKeyMismatch => UpstreamError::HostKeyMismatch {
            repo: repo.name.clone(),
        },
        SendPackError::Timeout(_) => UpstreamError::Timeout {
            repo: repo.name.clone(),
            secs: limits.deadline.as_secs(),
        },
        SendPackError::Failed(message) => UpstreamError::Git {
            repo: repo.name.clone(),
            op: "push",
            message: message.chars().take(500).collect(),
        },
    }
}

/// The fast path: hands the upstream the client's own pack over SSH ([`crate::sendpack`]),
/// on the connection `pre` made if it is still fresh. `Ok(Outcome::Fallback)` when it cannot
/// (an HTTPS upstream, missing capabilities, ...): nothing changed upstream and the caller
/// uses [`push`].
pub fn push_pack(
    repo: &RepoConfig,
    pre: Option<Preconnect>,
    updates: &[crate::sendpack::Update],
    mirror_tips: &[crate::pktline::Hex],
    pack: Option<&Path>,
    limits: UpstreamLimits,
) -> Result<crate::sendpack::Outcome> {
    use crate::sendpack::{self, Outcome};
    let Some(url) = sendpack::parse_ssh_url(&repo.url) else {
        return Ok(Outcome::Fallback(
            "not an ssh:// URL the fast path handles".into(),
        ));
    };
    let (pinned, key) = preflight(repo)?;
    let early = pre
        .and_then(|p| p.0.join().ok())
        .transpose()
        .map_err(|e| sp_err(repo, limits, e))?
        // An idle connection may have been dropped by the upstream by now.
        .filter(|o| o.age() < limits.io / 2);
    let opened = match early {
        Some(o) => o,
        None => sendpack::open(&url, &pinned, &key, sp_limits(limits))
            .map_err(|e| sp_err(repo, limits, e))?,
    };
    sendpack::send_pack(opened, updates, mirror_tips, pack).map_err(|e| sp_err(repo, limits, e))
}
