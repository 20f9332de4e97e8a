//! A bottle's OCI runtime configuration (`config.json`), built from typed structs through
//! oci-spec's builders and checked before runc sees it.
//!
//! The container: new pid, mount, ipc, uts, cgroup and user namespaces; the bottle's network
//! namespace joined by path; container root mapped to an unprivileged host range; a process
//! with no capabilities, `noNewPrivileges` and a deny-list seccomp filter; a read-only rootfs
//! whose only writable places are `/tmp`, the user's home, the workspace and `/dev/shm`.
//!
//! `/sys` is a read-only recursive bind of the host's, not a sysfs mount: a sysfs mount needs
//! privilege over the network namespace, which was made outside the container's user namespace,
//! so the kernel refuses it (EPERM).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxDeviceCgroupBuilder, LinuxIdMapping, LinuxIdMappingBuilder, LinuxMemoryBuilder,
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::seccomp;
use oci_spec::OciSpecError;

/// The OCI runtime spec version written (what Debian's runc 1.1 implements).
pub const OCI_VERSION: &str = "1.0.2";
/// The default workload user when the image names none.
pub const DEFAULT_USER: (u32, u32) = (1000, 1000);
/// CFS period for the CPU quota, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// Where a CA bundle is bound (Debian/Ubuntu/Alpine's system bundle path).
pub const CA_BUNDLE_GUEST: &str = bottle_api::provision::GUEST_CA_BUNDLE;

/// The file name of the runtime configuration in a bundle directory.
pub const CONFIG_FILE: &str = "config.json";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{what} must be an absolute path, got {path:?}")]
    NotAbsolute { what: &'static str, path: PathBuf },
    #[error("{what} {path:?} must be absolute and must not contain '..' or '.' components")]
    GuestPath { what: &'static str, path: PathBuf },
    #[error("the process needs at least one argument")]
    NoArgs,
    #[error("environment entry #{index} is not NAME=value (or its name is empty)")]
    BadEnv { index: usize },
    #[error(
        "hostname {0:?} is not a valid host name (1-63 of [A-Za-z0-9-], not starting with '-')"
    )]
    BadHostname(String),
    #[error("cpus must be a finite number > 0, got {0}")]
    BadCpus(f64),
    #[error("memory limit must be at least 4 MiB, got {0} bytes")]
    BadMemory(u64),
    #[error("pids limit must be > 0, got {0}")]
    BadPids(i64),
    #[error("the id mapping is invalid: {0}")]
    BadIdMap(&'static str),
    #[error("user {uid}:{gid} is outside the mapped range 0..{size}")]
    UserNotMapped { uid: u32, gid: u32, size: u32 },
    #[error("nofile limits must be 0 < soft <= hard, got {soft}/{hard}")]
    BadNofile { soft: u64, hard: u64 },
    #[error("the generated config is inconsistent: {0}")]
    Inconsistent(&'static str),
    #[error("building the OCI config: {0}")]
    Spec(#[from] OciSpecError),
    #[error("{what} {path} does not exist (or cannot be read): {source}")]
    Missing {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("serializing the OCI config: {0}")]
    Serialize(#[source] serde_json::Error),
}

pub type Result<T, E = BundleError> = std::result::Result<T, E>;

/// Container ids `0..size` map to host ids `host_*_base..host_*_base+size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub host_uid_base: u32,
    pub host_gid_base: u32,
    pub size: u32,
}

impl Default for IdMap {
    /// 100000..165536, the range Debian's `/etc/subuid` hands out first.
    fn default() -> Self {
        Self {
            host_uid_base: 100_000,
            host_gid_base: 100_000,
            size: 65_536,
        }
    }
}

impl IdMap {
    /// The host uid a container uid runs as (`None` if it is not mapped).
    pub fn host_uid(&self, uid: u32) -> Option<u32> {
        (uid < self.size).then(|| self.host_uid_base.checked_add(uid))?
    }

    /// The host gid a container gid runs as (`None` if it is not mapped).
    pub fn host_gid(&self, gid: u32) -> Option<u32> {
        (gid < self.size).then(|| self.host_gid_base.checked_add(gid))?
    }

    fn check(&self) -> Result<()> {
        if self.size == 0 {
            return Err(BundleError::BadIdMap("size must be > 0"));
        }
        if self.host_uid_base == 0 || self.host_gid_base == 0 {
            return Err(BundleError::BadIdMap(
                "container root must not map to host root (base 0)",
            ));
        }
        if self.host_uid_base.checked_add(self.size - 1).is_none()
            || self.host_gid_base.checked_add(self.size - 1).is_none()
        {
            return Err(BundleError::BadIdMap("the range overflows u32"));
        }
        Ok(())
    }

    fn mappings(base: u32, size: u32) -> Result<Vec<LinuxIdMapping>> {
        Ok(vec![LinuxIdMappingBuilder::default()
            .container_id(0_u32)
            .host_id(base)
            .size(size)
            .build()?])
    }
}

/// Resource limits, applied through the container's cgroup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// CPUs' worth of time per period (`1.5` = 150 ms per 100 ms).
    pub cpus: Option<f64>,
    /// Memory limit; swap is limited to the same value (memory+swap = memory: no swap).
    pub memory_bytes: Option<u64>,
    /// Maximum number of tasks (processes and threads).
    pub pids: Option<i64>,
    /// RLIMIT_NOFILE (soft, hard). The hard limit is clamped to the caller's own hard limit:
    /// runc sets it inside the user namespace, where it cannot be raised.
    pub nofile: (u64, u64),
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cpus: None,
            memory_bytes: None,
            pids: Some(4096),
            nofile: (1024, 65_536),
        }
    }
}

/// One extra bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub host: PathBuf,
    pub guest: PathBuf,
    pub readonly: bool,
}

/// Where the user's home comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HomeSource {
    /// A tmpfs owned by the workload user: empty at every start.
    Tmpfs,
    /// A host directory (in the bottle's state, chowned to the mapped user).
    Host(PathBuf),
}

/// Everything a bottle's container needs; [`build`] turns it into a checked [`Spec`].
#[derive(Debug, Clone, PartialEq)]
pub struct BundleSpec {
    pub hostname: String,
    /// `/run/netns/bottle-<id>`.
    pub netns_path: PathBuf,
    /// The merged overlay directory.
    pub rootfs: PathBuf,
    pub args: Vec<String>,
    /// `NAME=value` entries. They go into `config.json` only (0600), never onto an argv.
    pub env: Vec<String>,
    pub cwd: PathBuf,
    /// Container (uid, gid) of the process: the image's `User`, else [`DEFAULT_USER`].
    pub user: (u32, u32),
    pub id_map: IdMap,
    pub limits: Limits,
    /// Guest path of the home directory, e.g. `/home/bottle`.
    pub home: PathBuf,
    pub home_source: HomeSource,
    /// Host directory bound read-write at `<home>/workspace`.
    pub workspace: Option<PathBuf>,
    pub mounts: Vec<BindMount>,
    /// A file holding `nameserver <gateway>`, bound read-only at `/etc/resolv.conf`.
    pub resolv_conf: PathBuf,
    /// A PEM bundle bound read-only at [`CA_BUNDLE_GUEST`].
    pub ca_bundle: Option<PathBuf>,
    pub terminal: bool,
    /// runc's `cgroupsPath`, e.g. `/bottle/<id>`.
    pub cgroups_path: PathBuf,
    /// The workload is the first thing the OOM killer should pick, before any host service.
    pub oom_score_adj: i32,
}

impl BundleSpec {
    /// `<home>/workspace`.
    pub fn workspace_guest(&self) -> PathBuf {
        self.home.join("workspace")
    }
}

/// The paths the runtime mounts over inside the rootfs: each must exist in the (read-only)
/// rootfs before `runc create`, because runc cannot create them there once it runs in the
/// user namespace. `(guest path, is_dir)`.
pub fn mount_points(spec: &BundleSpec) -> Vec<(PathBuf, bool)> {
    let mut v: Vec<(PathBuf, bool)> = ["/proc", "/dev", "/sys", "/tmp"]
        .iter()
        .map(|p| (PathBuf::from(p), true))
        .collect();
    v.push((spec.home.clone(), true));
    if spec.workspace.is_some() {
        v.push((spec.workspace_guest(), true));
    }
    v.push((PathBuf::from("/etc/resolv.conf"), false));
    if spec.ca_bundle.is_some() {
        v.push((PathBuf::from(CA_BUNDLE_GUEST), false));
    }
    for m in &spec.mounts {
        v.push((m.guest.clone(), m.host.is_dir()));
    }
    v
}

/// Checks `spec` and builds the runtime config. Pure: touches no file (see [`write`]).
pub fn build(spec: &BundleSpec) -> Result<Spec> {
    check(spec)?;
    let (uid, gid) = spec.user;

    let none = Capabilities::new;
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(none())
        .effective(none())
        .inheritable(none())
        .permitted(none())
        .ambient(none())
        .build()?;
    let (soft, hard) = clamp_nofile(spec.limits.nofile);
    let rlimits = vec![
        PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(soft)
            .hard(hard)
            .build()?,
        // No core dumps: a dump of an agent's process holds whatever it had in memory.
        PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitCore)
            .soft(0_u64)
            .hard(0_u64)
            .build()?,
    ];
    let process = ProcessBuilder::default()
        .terminal(spec.terminal)
        .user(UserBuilder::default().uid(uid).gid(gid).build()?)
        .args(spec.args.clone())
        .env(spec.env.clone())
        .cwd(spec.cwd.clone())
        .capabilities(capabilities)
        .rlimits(rlimits)
        .no_new_privileges(true)
        .oom_score_adj(spec.oom_score_adj)
        .build()?;

    let linux = LinuxBuilder::default()
        .uid_mappings(IdMap::mappings(
            spec.id_map.host_uid_base,
            spec.id_map.size,
        )?)
        .gid_mappings(IdMap::mappings(
            spec.id_map.host_gid_base,
            spec.id_map.size,
        )?)
        .namespaces(namespaces(&spec.netns_path)?)
        .resources(resources(&spec.limits)?)
        .cgroups_path(spec.cgroups_path.clone())
        .seccomp(seccomp::default_profile()?)
        .masked_paths(strings(MASKED_PATHS))
        .readonly_paths(strings(READONLY_PATHS))
        .build()?;

    let oci = SpecBuilder::default()
        .version(OCI_VERSION)
        .root(
            RootBuilder::default()
                .path(spec.rootfs.clone())
                .readonly(true)
                .build()?,
        )
        .hostname(spec.hostname.clone())
        .mounts(mounts(spec)?)
        .process(process)
        .linux(linux)
        .build()?;
    check_built(&oci)?;
    Ok(oci)
}

/// Writes `config.json` into `bundle_dir` (created 0700; the file 0600, replaced whole) after
/// checking that the paths the config names exist. Returns the file's path.
pub fn write(spec: &BundleSpec, oci: &Spec, bundle_dir: &Path) -> Result<PathBuf> {
    let exists = |what: &'static str, path: &Path| {
        fs::metadata(path)
            .map(drop)
            .map_err(|source| BundleError::Missing {
                what,
                path: path.to_path_buf(),
                source,
            })
    };
    exists("network namespace", &spec.netns_path)?;
    exists("rootfs", &spec.rootfs)?;
    exists("resolv.conf", &spec.resolv_conf)?;
    if let HomeSource::Host(p) = &spec.home_source {
        exists("home directory", p)?;
    }
    if let Some(p) = &spec.workspace {
        exists("workspace", p)?;
    }
    if let Some(p) = &spec.ca_bundle {
        exists("CA bundle", p)?;
    }
    for m in &spec.mounts {
        exists("bind mount source", &m.host)?;
    }
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BundleError::Write { path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(bundle_dir)
        .map_err(io_err(bundle_dir))?;
    let json = serde_json::to_vec_pretty(oci).map_err(BundleError::Serialize)?;
    let path = bundle_dir.join(CONFIG_FILE);
    let tmp = bundle_dir.join(".config.json.tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(&json).map_err(io_err(&tmp))?;
    // No fsync: a bundle lives as long as its container, which a power loss ends anyway, and
    // an fsync on a disk-backed run_dir cost ~1 ms of every launch.
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Ok(path)
}

/// runc's and Docker's defaults, plus powercap (RAPL energy counters leak what other tenants
/// compute, CVE-2020-8694).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// runc's and Docker's defaults.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn namespaces(netns: &Path) -> Result<Vec<LinuxNamespace>> {
    let mut v = Vec::new();
    for typ in [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::User,
        LinuxNamespaceType::Cgroup,
    ] {
        v.push(LinuxNamespaceBuilder::default().typ(typ).build()?);
    }
    v.push(
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Network)
            .path(netns.to_path_buf())
            .build()?,
    );
    Ok(v)
}

fn resources(limits: &Limits) -> Result<oci_spec::runtime::LinuxResources> {
    // Deny every device; runc adds its defaults (null, zero, full, tty, random, urandom,
    // ptmx, pts) on top.
    let mut b = LinuxResourcesBuilder::default().devices(vec![LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()?]);
    if let Some(bytes) = limits.memory_bytes {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        b = b.memory(
            LinuxMemoryBuilder::default()
                .limit(bytes)
                .swap(bytes)
                .build()?,
        );
    }
    if let Some(pids) = limits.pids {
        b = b.pids(LinuxPidsBuilder::default().limit(pids).build()?);
    }
    if let Some(cpus) = limits.cpus {
        b = b.cpu(
            LinuxCpuBuilder::default()
                .quota(cpu_quota(cpus))
                .period(CPU_PERIOD_US)
                .build()?,
        );
    }
    Ok(b.build()?)
}

/// `cpus` × the period, at least 1 ms (the kernel's minimum quota).
fn cpu_quota(cpus: f64) -> i64 {
    let quota = (cpus * CPU_PERIOD_US as f64).round();
    #[expect(
        clippy::cast_possible_truncation,
        reason = "clamped to a small positive range first"
    )]
    let quota = quota.clamp(1000.0, 1e12) as i64;
    quota
}

fn clamp_nofile((soft, hard): (u64, u64)) -> (u64, u64) {
    let own_hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, h)| h)
        .unwrap_or(hard);
    let hard = hard.min(own_hard);
    (soft.min(hard), hard)
}

fn mount(
    dest: impl Into<PathBuf>,
    typ: &str,
    source: impl Into<PathBuf>,
    options: &[&str],
) -> Result<Mount> {
    Ok(MountBuilder::default()
        .destination(dest.into())
        .typ(typ)
        .source(source.into())
        .options(strings(options))
        .build()?)
}

fn mounts(spec: &BundleSpec) -> Result<Vec<Mount>> {
    let (uid, gid) = spec.user;
    let mut v = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        // Not sysfs: see the module documentation. "rro" makes the submounts of the host's
        // /sys (cgroup, bpf, debugfs...) read-only too (mount_setattr, runc >= 1.1).
        mount(
            "/sys",
            "none",
            "/sys",
            &["rbind", "ro", "rro", "nosuid", "noexec", "nodev"],
        )?,
        mount("/tmp", "tmpfs", "tmpfs", &["nosuid", "nodev", "mode=1777"])?,
    ];
    match &spec.home_source {
        HomeSource::Tmpfs => {
            let uid_opt = format!("uid={uid}");
            let gid_opt = format!("gid={gid}");
            v.push(mount(
                spec.home.clone(),
                "tmpfs",
                "tmpfs",
                &["nosuid", "nodev", "mode=0755", &uid_opt, &gid_opt],
            )?);
        }
        HomeSource::Host(host) => v.push(bind(host, &spec.home, false)?),
    }
    if let Some(ws) = &spec.workspace {
        v.push(bind(ws, &spec.workspace_guest(), false)?);
    }
    v.push(bind(
        &spec.resolv_conf,
        Path::new("/etc/resolv.conf"),
        true,
    )?);
    if let Some(ca) = &spec.ca_bundle {
        v.push(bind(ca, Path::new(CA_BUNDLE_GUEST), true)?);
    }
    for m in &spec.mounts {
        v.push(bind(&m.host, &m.guest, m.readonly)?);
    }
    Ok(v)
}

fn bind(host: &Path, guest: &Path, readonly: bool) -> Result<Mount> {
    let mode = if readonly { "ro" } else { "rw" };
    mount(
        guest.to_path_buf(),
        "none",
        host.to_path_buf(),
        &["rbind", mode, "nosuid", "nodev"],
    )
}

fn absolute(what: &'static str, path: &Path) -> Result<()> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(BundleError::NotAbsolute {
            what,
            path: path.to_path_buf(),
        })
    }
}

/// A guest path must be absolute and plain (`/a/b`): no `..` that could climb out of the
/// rootfs, no `.`, and not `/` itself.
fn guest(what: &'static str, path: &Path) -> Result<()> {
    let plain = path.is_absolute()
        && path.components().count() > 1
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if plain {
        Ok(())
    } else {
        Err(BundleError::GuestPath {
            what,
            path: path.to_path_buf(),
        })
    }
}

fn valid_hostname(h: &str) -> bool {
    (1..=63).contains(&h.len())
        && !h.starts_with('-')
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn check(spec: &BundleSpec) -> Result<()> {
    if !valid_hostname(&spec.hostname) {
        return Err(BundleError::BadHostname(spec.hostname.clone()));
    }
    absolute("netns path", &spec.netns_path)?;
    absolute("rootfs", &spec.rootfs)?;
    absolute("resolv.conf", &spec.resolv_conf)?;
    absolute("cgroups path", &spec.cgroups_path)?;
    if let Some(p) = &spec.ca_bundle {
        absolute("CA bundle", p)?;
    }
    if let HomeSource::Host(p) = &spec.home_source {
        absolute("home directory", p)?;
    }
    if let Some(p) = &spec.workspace {
        absolute("workspace", p)?;
    }
    if spec.args.is_empty() || spec.args[0].is_empty() {
        return Err(BundleError::NoArgs);
    }
    for (index, e) in spec.env.iter().enumerate() {
        match e.split_once('=') {
            Some((name, _)) if !name.is_empty() => {}
            _ => return Err(BundleError::BadEnv { index }),
        }
    }
    guest("working directory", &spec.cwd).or_else(|e| {
        if spec.cwd == Path::new("/") {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    guest("home", &spec.home)?;
    for m in &spec.mounts {
        absolute("bind mount source", &m.host)?;
        guest("bind mount destination", &m.guest)?;
    }
    spec.id_map.check()?;
    let (uid, gid) = spec.user;
    if uid >= spec.id_map.size || gid >= spec.id_map.size {
        return Err(BundleError::UserNotMapped {
            uid,
            gid,
            size: spec.id_map.size,
        });
    }
    let l = &spec.limits;
    if let Some(c) = l.cpus {
        if !c.is_finite() || c <= 0.0 {
            return Err(BundleError::BadCpus(c));
        }
    }
    if let Some(m) = l.memory_bytes {
        if m < 4 << 20 {
            return Err(BundleError::BadMemory(m));
        }
    }
    if let Some(p) = l.pids {
        if p <= 0 {
            return Err(BundleError::BadPids(p));
        }
    }
    let (soft, hard) = l.nofile;
    if soft == 0 || soft > hard {
        return Err(BundleError::BadNofile { soft, hard });
    }
    Ok(())
}

/// The properties the rest of bottle relies on, checked on the built config itself.
fn check_built(oci: &Spec) -> Result<()> {
    let inconsistent = |m| Err(BundleError::Inconsistent(m));
    let Some(linux) = oci.linux() else {
        return inconsistent("no linux section");
    };
    let Some(process) = oci.process() else {
        return inconsistent("no process");
    };
    if oci.root().as_ref().and_then(|r| r.readonly()) != Some(true) {
        return inconsistent("rootfs is not read-only");
    }
    if process.no_new_privileges() != Some(true) {
        return inconsistent("noNewPrivileges is off");
    }
    let caps_empty = process.capabilities().as_ref().is_some_and(|c| {
        [
            c.bounding(),
            c.effective(),
            c.inheritable(),
            c.permitted(),
            c.ambient(),
        ]
        .iter()
        .all(|s| s.as_ref().is_some_and(|s| s.is_empty()))
    });
    if !caps_empty {
        return inconsistent("the process has capabilities");
    }
    let ns = linux.namespaces().as_deref().unwrap_or_default();
    let has = |t| ns.iter().any(|n| n.typ() == t);
    if !has(LinuxNamespaceType::User)
        || linux.uid_mappings().as_ref().is_none_or(Vec::is_empty)
        || linux.gid_mappings().as_ref().is_none_or(Vec::is_empty)
    {
        return inconsistent("no user namespace with mappings");
    }
    if !ns
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::Network && n.path().is_some())
    {
        return inconsistent("the network namespace is not joined by path");
    }
    if linux.seccomp().is_none() {
        return inconsistent("no seccomp profile");
    }
    for m in oci.mounts().iter().flatten() {
        if !m.destination().is_absolute() {
            return inconsistent("a mount destination is relative");
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn full() -> BundleSpec {
        BundleSpec {
            hostname: "dev".into(),
            netns_path: "/run/netns/bottle-0123abcd".into(),
            rootfs: "/var/lib/bottle/0123abcd/rootfs/merged".into(),
            args: vec!["sh".into(), "-c".into(), "id".into()],
            env: vec!["PATH=/usr/bin:/bin".into(), "SECRET=hunter2".into()],
            cwd: "/home/bottle/workspace".into(),
            user: (1000, 1000),
            id_map: IdMap::default(),
            limits: Limits {
                cpus: Some(1.5),
                memory_bytes: Some(512 << 20),
                pids: Some(256),
                nofile: (1024, 4096),
            },
            home: "/home/bottle".into(),
            home_source: HomeSource::Tmpfs,
            workspace: Some("/var/lib/bottle/0123abcd/workspace".into()),
            mounts: vec![BindMount {
                host: "/opt/tools".into(),
                guest: "/opt/tools".into(),
                readonly: true,
            }],
            resolv_conf: "/var/lib/bottle/0123abcd/resolv.conf".into(),
            ca_bundle: Some("/var/lib/bottle/0123abcd/ca-bundle.pem".into()),
            terminal: false,
            cgroups_path: "/bottle/0123abcd".into(),
            oom_score_adj: 500,
        }
    }

    #[test]
    fn full_spec_round_trips_and_has_what_it_must() {
        let oci = build(&full()).unwrap();
        let json = serde_json::to_string(&oci).unwrap();
        let back: Spec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, oci);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();

        assert_eq!(v["ociVersion"], OCI_VERSION);
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["hostname"], "dev");
        let p = &v["process"];
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(p["user"]["uid"], 1000);
        assert_eq!(p["user"]["gid"], 1000);
        assert_eq!(p["oomScoreAdj"], 500);
        for set in [
            "bounding",
            "effective",
            "inheritable",
            "permitted",
            "ambient",
        ] {
            assert_eq!(p["capabilities"][set], serde_json::json!([]), "{set}");
        }
        assert!(p["rlimits"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["type"] == "RLIMIT_NOFILE" && r["soft"] == 1024));

        let l = &v["linux"];
        let ns = l["namespaces"].as_array().unwrap();
        for t in ["pid", "mount", "ipc", "uts", "user", "cgroup", "network"] {
            assert!(ns.iter().any(|n| n["type"] == t), "namespace {t}");
        }
        let net = ns.iter().find(|n| n["type"] == "network").unwrap();
        assert_eq!(net["path"], "/run/netns/bottle-0123abcd");
        assert_eq!(
            l["uidMappings"],
            serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}])
        );
        assert_eq!(
            l["gidMappings"],
            serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}])
        );
        assert_eq!(l["cgroupsPath"], "/bottle/0123abcd");
        let r = &l["resources"];
        assert_eq!(r["memory"]["limit"], 512 << 20);
        assert_eq!(r["memory"]["swap"], 512 << 20);
        assert_eq!(r["pids"]["limit"], 256);
        assert_eq!(r["cpu"]["quota"], 150_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert!(l["maskedPaths"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("/proc/kcore")));
        assert!(l["readonlyPaths"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("/proc/sys")));

        let seccomp = oci.linux().as_ref().unwrap().seccomp().as_ref().unwrap();
        for name in [
            "bpf",
            "mount",
            "keyctl",
            "unshare",
            "setns",
            "io_uring_setup",
        ] {
            assert!(seccomp::denies(seccomp, name), "{name}");
        }
        assert_eq!(l["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        let syscalls = l["seccomp"]["syscalls"].as_array().unwrap();
        let clone = syscalls
            .iter()
            .find(|s| s["names"] == serde_json::json!(["clone"]))
            .unwrap();
        assert_eq!(clone["action"], "SCMP_ACT_ERRNO");
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(clone["args"][0]["value"], 0x1000_0000);

        let mounts = v["mounts"].as_array().unwrap();
        let at = |d: &str| mounts.iter().find(|m| m["destination"] == d).unwrap();
        let sys = at("/sys");
        assert_eq!(sys["source"], "/sys");
        assert_ne!(sys["type"], "sysfs");
        for o in ["rbind", "ro", "nosuid", "noexec", "nodev"] {
            assert!(
                sys["options"].as_array().unwrap().contains(&o.into()),
                "{o}"
            );
        }
        assert_eq!(at("/proc")["type"], "proc");
        assert_eq!(at("/tmp")["type"], "tmpfs");
        assert_eq!(at("/home/bottle")["type"], "tmpfs");
        assert_eq!(
            at("/home/bottle/workspace")["source"],
            "/var/lib/bottle/0123abcd/workspace"
        );
        let resolv = at("/etc/resolv.conf");
        assert!(resolv["options"].as_array().unwrap().contains(&"ro".into()));
        assert!(at(CA_BUNDLE_GUEST)["options"]
            .as_array()
            .unwrap()
            .contains(&"ro".into()));
        assert!(at("/opt/tools")["options"]
            .as_array()
            .unwrap()
            .contains(&"ro".into()));
        for d in ["/dev", "/dev/pts", "/dev/shm", "/dev/mqueue"] {
            at(d);
        }
    }

    #[test]
    fn no_limits_means_no_cgroup_limits() {
        let mut s = full();
        s.limits = Limits {
            cpus: None,
            memory_bytes: None,
            pids: None,
            nofile: (1024, 1024),
        };
        let v = serde_json::to_value(build(&s).unwrap()).unwrap();
        let r = &v["linux"]["resources"];
        assert!(r.get("memory").is_none() && r.get("pids").is_none() && r.get("cpu").is_none());
    }

    #[test]
    fn invalid_specs_are_refused_clearly() {
        type Case = (fn(&mut BundleSpec), &'static str);
        let cases: Vec<Case> = vec![
            (|s| s.limits.cpus = Some(0.0), "cpus must be"),
            (|s| s.limits.cpus = Some(-1.0), "cpus must be"),
            (|s| s.limits.cpus = Some(f64::NAN), "cpus must be"),
            (|s| s.limits.memory_bytes = Some(0), "memory limit"),
            (|s| s.limits.pids = Some(0), "pids limit"),
            (|s| s.rootfs = "rootfs".into(), "rootfs must be an absolute"),
            (|s| s.netns_path = "bottle-x".into(), "netns path"),
            (|s| s.resolv_conf = "resolv.conf".into(), "resolv.conf"),
            (
                |s| {
                    s.mounts[0].guest = "/opt/../../etc".into();
                },
                "bind mount destination",
            ),
            (
                |s| s.mounts[0].guest = "opt".into(),
                "bind mount destination",
            ),
            (|s| s.mounts[0].guest = "/".into(), "bind mount destination"),
            (|s| s.mounts[0].host = "tools".into(), "bind mount source"),
            (|s| s.home = "/home/../root".into(), "home"),
            (|s| s.cwd = "work".into(), "working directory"),
            (|s| s.args.clear(), "at least one argument"),
            (|s| s.env.push("NOEQUALS".into()), "environment entry #2"),
            (|s| s.hostname = "bad name".into(), "hostname"),
            (|s| s.user = (70000, 1000), "outside the mapped range"),
            (|s| s.id_map.host_uid_base = 0, "host root"),
            (|s| s.id_map.size = 0, "size must be"),
            (|s| s.limits.nofile = (10, 5), "nofile"),
        ];
        for (i, (mutate, want)) in cases.into_iter().enumerate() {
            let mut s = full();
            mutate(&mut s);
            let err = build(&s).expect_err(&format!("case {i} should fail"));
            let msg = err.to_string();
            assert!(msg.contains(want), "case {i}: {msg:?} lacks {want:?}");
            assert!(!msg.contains("hunter2"), "case {i} leaks an env value");
        }
    }

    #[test]
    fn env_errors_never_show_values() {
        let mut s = full();
        s.env = vec!["=secretvalue".into()];
        let msg = build(&s).unwrap_err().to_string();
        assert!(!msg.contains("secretvalue"), "{msg}");
    }

    #[test]
    fn write_makes_a_private_file_and_checks_sources() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut s = full();
        let f = dir.path().join("resolv.conf");
        fs::write(&f, "nameserver 10.213.0.1\n").unwrap();
        s.netns_path = dir.path().to_path_buf();
        s.rootfs = dir.path().to_path_buf();
        s.resolv_conf = f.clone();
        s.workspace = None;
        s.ca_bundle = None;
        s.mounts.clear();
        let oci = build(&s).unwrap();
        let bundle = dir.path().join("bundle");
        let path = write(&s, &oci, &bundle).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Spec::load(&path).unwrap(), oci);

        s.resolv_conf = dir.path().join("missing");
        let err = write(&s, &oci, &bundle).unwrap_err().to_string();
        assert!(
            err.contains("resolv.conf") && err.contains("missing"),
            "{err}"
        );
    }
}
