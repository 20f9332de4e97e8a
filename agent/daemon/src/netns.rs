//! Named network namespaces, compatible with `ip netns` (bind mounts under `/run/netns`).
//!
//! Namespace switches happen only on dedicated OS threads that end afterwards, never on a
//! tokio worker: a worker that stayed in a bottle's namespace would run unrelated tasks there.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::paths::{ETC_NETNS_DIR, NETNS_DIR};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot prepare {NETNS_DIR}: {0}")]
    Prepare(#[source] nix::Error),
    #[error("network namespace {0} already exists")]
    Exists(String),
    #[error("cannot create network namespace {name}: {step}: {source}")]
    Create {
        name: String,
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("cannot open network namespace {name}: {source}")]
    Open {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {name}: {source}")]
    Enter {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot remove network namespace {name}: {source}")]
    Remove {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("namespace helper thread failed: {0}")]
    Thread(String),
}

pub type Result<T> = std::result::Result<T, NetnsError>;

pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Makes `/run/netns` a shared mount point, as `ip netns add` does, so namespace bind mounts
/// propagate to other mount namespaces (runc containers, `ip netns exec`).
fn prepare_netns_dir() -> Result<()> {
    std::fs::create_dir_all(NETNS_DIR).map_err(|e| {
        NetnsError::Prepare(nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    })?;
    let shared = |flags| mount(None::<&str>, NETNS_DIR, None::<&str>, flags, None::<&str>);
    match shared(MsFlags::MS_SHARED | MsFlags::MS_REC) {
        Ok(()) => Ok(()),
        Err(nix::Error::EINVAL) => {
            // Not a mount point yet: bind it onto itself, then mark it shared.
            mount(
                Some(NETNS_DIR),
                NETNS_DIR,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(NetnsError::Prepare)?;
            shared(MsFlags::MS_SHARED | MsFlags::MS_REC).map_err(NetnsError::Prepare)
        }
        Err(e) => Err(NetnsError::Prepare(e)),
    }
}

/// Creates the named namespace `/run/netns/<name>`.
pub fn create(name: &str) -> Result<()> {
    prepare_netns_dir()?;
    let path = netns_path(name);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(NetnsError::Exists(name.into()))
        }
        Err(e) => {
            return Err(NetnsError::Create {
                name: name.into(),
                step: "create mount point",
                source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            })
        }
    }
    let owned_name = name.to_string();
    let result = std::thread::spawn(move || -> Result<()> {
        // This thread never returns to a pool: it ends once the namespace is pinned.
        let err = |step, source| NetnsError::Create {
            name: owned_name.clone(),
            step,
            source,
        };
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| err("unshare", e))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| err("bind mount", e))
    })
    .join()
    .map_err(|_| NetnsError::Thread("namespace creation thread panicked".into()))?;
    if result.is_err() {
        let _ = std::fs::remove_file(netns_path(name));
    }
    result
}

/// Unmounts and removes a named namespace. Missing is not an error.
pub fn remove(name: &str) -> Result<()> {
    let path = netns_path(name);
    if !path.exists() {
        return Ok(());
    }
    // EINVAL: not mounted (a half-made namespace); the file still goes.
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => {
            return Err(NetnsError::Remove {
                name: name.into(),
                source: std::io::Error::from_raw_os_error(e as i32),
            })
        }
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetnsError::Remove {
            name: name.into(),
            source,
        }),
    }
}

pub fn exists(name: &str) -> bool {
    netns_path(name).exists()
}

pub fn open(name: &str) -> Result<File> {
    File::open(netns_path(name)).map_err(|source| NetnsError::Open {
        name: name.into(),
        source,
    })
}

/// Names in `/run/netns` that start with `prefix`.
pub fn list_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Runs `f` on a fresh OS thread that has entered the named namespace; the thread ends with
/// `f`, so no other work ever runs inside the bottle's namespace by accident.
pub fn run_in<T, F>(name: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    spawn_in(name, "netns".into(), f)?
        .join()
        .map_err(|_| NetnsError::Thread("namespace worker thread panicked".into()))?
}

/// [`run_in`] without waiting: the thread (named `thread_name`) enters the namespace, runs
/// `f` and ends; its result (or why it could not enter) comes from joining it.
pub fn spawn_in<T, F>(
    name: &str,
    thread_name: String,
    f: F,
) -> Result<std::thread::JoinHandle<Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns = open(name)?;
    let owned_name = name.to_string();
    std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || -> Result<T> {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                name: owned_name,
                source,
            })?;
            Ok(f())
        })
        .map_err(|e| NetnsError::Thread(format!("cannot start a thread: {e}")))
}

/// `ip netns exec` bind-mounts `/etc/netns/<name>/resolv.conf` over `/etc/resolv.conf`, so
/// host tools run inside the bottle resolve through its DNS server, like its workload does.
pub fn write_resolv_conf(name: &str, nameserver: std::net::Ipv4Addr) -> std::io::Result<()> {
    let dir = Path::new(ETC_NETNS_DIR).join(name);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("resolv.conf"),
        format!("nameserver {nameserver}\n"),
    )
}

/// Removes `/etc/netns/<name>`; missing is fine.
pub fn remove_etc(name: &str) -> std::io::Result<()> {
    match std::fs::remove_dir_all(Path::new(ETC_NETNS_DIR).join(name)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Names under `/etc/netns` that start with `prefix`.
pub fn etc_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(ETC_NETNS_DIR) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect()
}
