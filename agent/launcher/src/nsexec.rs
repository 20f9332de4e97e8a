//! `exec` without `runc exec`: one more process in a running container, made by joining its
//! init's namespaces ourselves.
//!
//! Why: Debian's runc 1.1 cannot `exec` into our containers, whose network namespace belongs
//! to the host's user namespace while the container has its own (runc#4390, fixed in 1.2).
//! The order that works is util-linux `nsenter`'s: every namespace that is not the user
//! namespace first, while the process is still host root (the network namespace can only be
//! joined then), then the user namespace.
//!
//! The process gets what runc gives the container's own process, so an exec'd command is no
//! more privileged than the workload:
//! - the pid namespace: `setns` on a dedicated thread that then forks, so the child is born
//!   inside it (a process cannot change its own pid namespace); it dies with the container's
//!   init like every other process there, and (parent-death signal) with that thread, so
//!   with the agent;
//! - the cgroups (every hierarchy of `/proc/<init>/cgroup`, cgroup v1, v2 or hybrid): the child
//!   writes itself into each `cgroup.procs` before anything else, so the container's limits
//!   hold from the start;
//! - net, ipc, uts, cgroup and mount namespaces, then the user namespace;
//! - the container's uid, gid and supplementary groups; an empty capability bounding, ambient,
//!   permitted and effective set; `PR_SET_NO_NEW_PRIVS`; the container's working directory,
//!   rlimits and `oom_score_adj`;
//! - the workload's seccomp deny-list ([`crate::seccomp::DENIED`]), compiled to classic BPF by
//!   `seccompiler` (rust-vmm) and loaded last, just before `execve` (it denies `setns`). Unlike
//!   runc's libseccomp filter it allows only the native architecture's syscall ABI: a 32-bit
//!   syscall from an exec'd process is refused outright.
//!
//! The environment is set on the `Command` (never on an argv). Everything done after `fork`
//! uses only raw syscalls on data prepared before it (async-signal-safe).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum NsExecError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the container's cgroups ({0}) are not mounted where this host mounts cgroups")]
    Cgroups(String),
    #[error("seccomp profile: {0}")]
    Seccomp(String),
    #[error("starting the process in the container: {0}")]
    Spawn(#[source] io::Error),
    #[error("the container's process setting {0:?} is not usable here")]
    BadSpec(String),
}

pub type Result<T, E = NsExecError> = std::result::Result<T, E>;

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> NsExecError + '_ {
    move |source| NsExecError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Who the process runs as and where, inside the container (from the bundle's `process`).
#[derive(Debug, Clone)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub cwd: String,
    /// The container process's rlimits, by `RLIMIT_*` name: `(name, soft, hard)`.
    pub rlimits: Vec<(String, u64, u64)>,
    /// The container process's `oom_score_adj`.
    pub oom_score_adj: Option<i32>,
}

/// The resource of an OCI `RLIMIT_*` name.
fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        _ => return None,
    })
}

/// Everything the child needs after `fork`, prepared before it.
struct Plan {
    /// Namespaces other than user and pid, in joining order.
    namespaces: Vec<(OwnedFd, libc::c_int)>,
    user_ns: OwnedFd,
    pid_ns: OwnedFd,
    cgroup_procs: Vec<CString>,
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    oom_path: CString,
    oom_score_adj: Option<Vec<u8>>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    cwd: CString,
    filters: Vec<BpfProgram>,
    /// Make the child a session leader with stdin as its controlling terminal.
    tty: bool,
}

/// The standard streams of a process started by [`spawn`] (those set to `Stdio::piped()`).
#[derive(Debug)]
pub struct ChildIo {
    pub pid: u32,
    pub stdin: Option<std::process::ChildStdin>,
    pub stdout: Option<std::process::ChildStdout>,
    pub stderr: Option<std::process::ChildStderr>,
}

/// Spawns `cmd` inside the container whose init is `init_pid` and returns its pipes. `cmd`
/// carries the program, arguments, environment and stdio; this adds the joining.
///
/// The pid namespace can only be entered by the thread that forks, and the child's
/// parent-death signal (SIGKILL: an exec'd process does not outlive the agent) fires when that
/// thread ends. So a new thread forks and then runs `supervise` with the child (waiting for
/// it, typically); it ends when `supervise` returns, and runs nothing else.
pub fn spawn<F>(
    mut cmd: Command,
    init_pid: i32,
    user: &ExecUser,
    tty: bool,
    supervise: F,
) -> Result<ChildIo>
where
    F: FnOnce(Child) + Send + 'static,
{
    let plan = Arc::new(prepare(init_pid, user, tty)?);
    let in_child = plan.clone();
    // SAFETY: the closure runs between fork and exec in the single-threaded child and only
    // makes raw syscalls on memory prepared before the fork (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || join(&in_child));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("exec".into())
        .spawn(move || {
            // SAFETY: setns on a descriptor we own; CLONE_NEWPID changes only which pid
            // namespace this thread's future children are born in.
            if unsafe { libc::setns(plan.pid_ns.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
                let _ = tx.send(Err(io::Error::last_os_error()));
                return;
            }
            drop(plan);
            match cmd.spawn() {
                Ok(mut child) => {
                    let io = ChildIo {
                        pid: child.id(),
                        stdin: child.stdin.take(),
                        stdout: child.stdout.take(),
                        stderr: child.stderr.take(),
                    };
                    drop(cmd);
                    let _ = tx.send(Ok(io));
                    supervise(child);
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
        .map_err(NsExecError::Spawn)?;
    match rx.recv() {
        Ok(r) => r.map_err(NsExecError::Spawn),
        Err(_) => Err(NsExecError::Spawn(io::Error::other(
            "the forking thread died",
        ))),
    }
}

fn prepare(init_pid: i32, user: &ExecUser, tty: bool) -> Result<Plan> {
    let proc = PathBuf::from(format!("/proc/{init_pid}"));
    let open_ns = |name: &str| -> Result<OwnedFd> {
        let path = proc.join("ns").join(name);
        File::open(&path).map(OwnedFd::from).map_err(io_at(&path))
    };
    let mut namespaces = Vec::new();
    for (name, flag) in [
        ("net", libc::CLONE_NEWNET),
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("cgroup", libc::CLONE_NEWCGROUP),
        ("mnt", libc::CLONE_NEWNS),
    ] {
        namespaces.push((open_ns(name)?, flag));
    }
    let cgroup_procs = cgroup_procs(&proc.join("cgroup"))?
        .into_iter()
        .map(|p| CString::new(p.as_os_str().as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| NsExecError::Cgroups("a path with NUL".into()))?;
    let bad = |what: &str| NsExecError::BadSpec(what.to_owned());
    Ok(Plan {
        namespaces,
        user_ns: open_ns("user")?,
        pid_ns: open_ns("pid")?,
        cgroup_procs,
        rlimits: user
            .rlimits
            .iter()
            .map(|(name, soft, hard)| {
                let r = rlimit_resource(name).ok_or_else(|| bad(name))?;
                Ok((
                    r,
                    libc::rlimit {
                        rlim_cur: *soft,
                        rlim_max: *hard,
                    },
                ))
            })
            .collect::<Result<_>>()?,
        oom_path: CString::new("/proc/self/oom_score_adj").map_err(|_| bad("oom"))?,
        oom_score_adj: user.oom_score_adj.map(|n| n.to_string().into_bytes()),
        uid: user.uid,
        gid: user.gid,
        groups: user.additional_gids.clone(),
        cwd: CString::new(user.cwd.as_bytes()).map_err(|_| bad(&user.cwd))?,
        filters: filters()?,
        tty,
    })
}

/// The `cgroup.procs` file of every hierarchy the process in `cgroup_file` belongs to.
fn cgroup_procs(cgroup_file: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(cgroup_file).map_err(io_at(cgroup_file))?;
    let mounts_path = Path::new("/proc/self/mounts");
    let mounts = std::fs::read_to_string(mounts_path).map_err(io_at(mounts_path))?;
    let found = procs_paths(&text, &mounts);
    let missing: Vec<&str> = found
        .iter()
        .filter(|(_, p)| p.as_ref().is_none_or(|p| !p.exists()))
        .map(|(line, _)| *line)
        .collect();
    if !missing.is_empty() || found.is_empty() {
        return Err(NsExecError::Cgroups(missing.join(", ")));
    }
    Ok(found.into_iter().filter_map(|(_, p)| p).collect())
}

/// Pure part of [`cgroup_procs`]: each `/proc/PID/cgroup` line with its `cgroup.procs` path
/// under the matching mount (`None` when no mount matches).
fn procs_paths<'a>(cgroup: &'a str, mounts: &str) -> Vec<(&'a str, Option<PathBuf>)> {
    // (mount point, fstype, options)
    let mounts: Vec<(&str, &str, Vec<&str>)> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() >= 4 && (f[2] == "cgroup" || f[2] == "cgroup2"))
                .then(|| (f[1], f[2], f[3].split(',').collect()))
        })
        .collect();
    cgroup
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
            let (Some(controllers), Some(path)) = (controllers, path) else {
                return (line, None);
            };
            let mount = if controllers.is_empty() {
                mounts.iter().find(|(_, t, _)| *t == "cgroup2")
            } else {
                mounts.iter().find(|(_, t, opts)| {
                    *t == "cgroup" && controllers.split(',').all(|c| opts.contains(&c))
                })
            };
            let procs = mount.map(|(point, _, _)| {
                Path::new(point)
                    .join(path.trim_start_matches('/'))
                    .join("cgroup.procs")
            });
            (line, procs)
        })
        .collect()
}

/// The deny-list as BPF: one filter returning `EPERM` for the denied syscalls (and `clone`
/// with `CLONE_NEWUSER`), one returning `ENOSYS` for `clone3` (so libcs fall back to the
/// filtered `clone`). Names this architecture does not have are skipped.
pub fn filters() -> Result<Vec<BpfProgram>> {
    let err = |e: seccompiler::BackendError| NsExecError::Seccomp(e.to_string());
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| NsExecError::Seccomp(e.to_string()))?;
    let mut deny: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (name, _) in crate::seccomp::DENIED {
        if let Some(nr) = syscall_number(name) {
            deny.insert(nr, vec![]);
        }
    }
    let newuser = u64::from(libc::CLONE_NEWUSER.unsigned_abs());
    deny.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(newuser),
            newuser,
        )
        .map_err(err)?])
        .map_err(err)?],
    );
    let eperm = libc::EPERM.unsigned_abs();
    let enosys = libc::ENOSYS.unsigned_abs();
    let deny = SeccompFilter::new(
        deny,
        SeccompAction::Allow,
        SeccompAction::Errno(eperm),
        arch,
    )
    .map_err(err)?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, vec![])]),
        SeccompAction::Allow,
        SeccompAction::Errno(enosys),
        arch,
    )
    .map_err(err)?;
    let compile = |f: SeccompFilter| -> Result<BpfProgram> {
        f.try_into()
            .map_err(|e: seccompiler::BackendError| NsExecError::Seccomp(e.to_string()))
    };
    Ok(vec![compile(deny)?, compile(clone3)?])
}

/// This architecture's number for a syscall of [`crate::seccomp::DENIED`].
fn syscall_number(name: &str) -> Option<i64> {
    let nr = match name {
        "mount" => libc::SYS_mount,
        "umount2" => libc::SYS_umount2,
        "pivot_root" => libc::SYS_pivot_root,
        "fsopen" => libc::SYS_fsopen,
        "fsconfig" => libc::SYS_fsconfig,
        "fsmount" => libc::SYS_fsmount,
        "fspick" => libc::SYS_fspick,
        "move_mount" => libc::SYS_move_mount,
        "open_tree" => libc::SYS_open_tree,
        "mount_setattr" => libc::SYS_mount_setattr,
        "unshare" => libc::SYS_unshare,
        "setns" => libc::SYS_setns,
        "bpf" => libc::SYS_bpf,
        "ptrace" => libc::SYS_ptrace,
        "process_vm_readv" => libc::SYS_process_vm_readv,
        "process_vm_writev" => libc::SYS_process_vm_writev,
        "keyctl" => libc::SYS_keyctl,
        "add_key" => libc::SYS_add_key,
        "request_key" => libc::SYS_request_key,
        "kexec_load" => libc::SYS_kexec_load,
        "kexec_file_load" => libc::SYS_kexec_file_load,
        "init_module" => libc::SYS_init_module,
        "finit_module" => libc::SYS_finit_module,
        "delete_module" => libc::SYS_delete_module,
        "perf_event_open" => libc::SYS_perf_event_open,
        "open_by_handle_at" => libc::SYS_open_by_handle_at,
        "name_to_handle_at" => libc::SYS_name_to_handle_at,
        "swapon" => libc::SYS_swapon,
        "swapoff" => libc::SYS_swapoff,
        "reboot" => libc::SYS_reboot,
        "acct" => libc::SYS_acct,
        "quotactl" => libc::SYS_quotactl,
        "quotactl_fd" => libc::SYS_quotactl_fd,
        "lookup_dcookie" => libc::SYS_lookup_dcookie,
        "userfaultfd" => libc::SYS_userfaultfd,
        "io_uring_setup" => libc::SYS_io_uring_setup,
        "io_uring_enter" => libc::SYS_io_uring_enter,
        "io_uring_register" => libc::SYS_io_uring_register,
        // `umount` (legacy) exists on neither x86_64 nor aarch64.
        _ => return None,
    };
    Some(nr)
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Writes `text` to the file at `path` (raw syscalls only).
fn write_file(path: &CString, text: &[u8]) -> io::Result<()> {
    // SAFETY: `path` is a valid C string; the descriptor is closed before returning.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    check(fd)?;
    // SAFETY: writes `text.len()` bytes from a live slice to the descriptor just opened.
    let n = unsafe { libc::write(fd, text.as_ptr().cast(), text.len()) };
    let err = io::Error::last_os_error();
    // SAFETY: closes the descriptor opened above, once.
    unsafe { libc::close(fd) };
    if usize::try_from(n).ok() == Some(text.len()) {
        Ok(())
    } else {
        Err(err)
    }
}

/// Runs in the child between fork and exec.
fn join(plan: &Plan) -> io::Result<()> {
    // Into the container's cgroups first ("0" = the writing process), as host root.
    for procs in &plan.cgroup_procs {
        write_file(procs, b"0")?;
    }
    // The workload's OOM preference and rlimits, set as host root (raising a hard limit
    // needs privilege in the initial user namespace).
    if let Some(adj) = &plan.oom_score_adj {
        write_file(&plan.oom_path, adj)?;
    }
    for (resource, limit) in &plan.rlimits {
        // SAFETY: setrlimit reads one rlimit from memory owned by the plan.
        check(unsafe { libc::setrlimit(*resource, limit) })?;
    }
    for (fd, flag) in &plan.namespaces {
        // SAFETY: setns on a descriptor owned by the plan, which outlives this call.
        check(unsafe { libc::setns(fd.as_raw_fd(), *flag) })?;
    }
    // SAFETY: as above; the child is single-threaded, as joining a user namespace requires.
    check(unsafe { libc::setns(plan.user_ns.as_raw_fd(), libc::CLONE_NEWUSER) })?;
    if plan.tty {
        // SAFETY: plain syscalls without pointers; stdin is the PTY slave (set up by the
        // caller before the fork).
        check(unsafe { libc::setsid() })?;
        // SAFETY: TIOCSCTTY takes an integer argument.
        check(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) })?;
    }
    // SAFETY: reads `groups.len()` gids from a live vector.
    check(unsafe { libc::setgroups(plan.groups.len(), plan.groups.as_ptr()) })?;
    // SAFETY: plain syscalls without pointers.
    check(unsafe { libc::setresgid(plan.gid, plan.gid, plan.gid) })?;
    // Empty the bounding set while we still hold CAP_SETPCAP (in the container's user
    // namespace); EINVAL marks the end of the kernel's capability list.
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(e);
        }
    }
    // SAFETY: plain syscall without pointers.
    check(unsafe { libc::setresuid(plan.uid, plan.uid, plan.uid) })?;
    // After the uid change, which clears it: killed when the forking thread (the agent's
    // supervisor of this process) ends, so an agent crash does not leave it running. A crash
    // between the fork and this line is not covered.
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) })?;
    // Permitted, effective and inheritable sets to nothing (a uid 0 user keeps them across
    // setresuid), ambient too.
    let mut header = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads one header and two data structs (version 3) from live memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: prctl with integer arguments only.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    })?;
    // SAFETY: `cwd` is a valid C string.
    check(unsafe { libc::chdir(plan.cwd.as_ptr()) })?;
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
    for f in &plan.filters {
        seccompiler::apply_filter(f).map_err(|_| io::Error::last_os_error())?;
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_cgroups_map_to_their_mounts() {
        let cgroup =
            "9:name=systemd:/bottle/x\n4:memory:/bottle/x\n1:cpu,cpuacct:/bottle/x\n0::/bottle/x\n";
        let mounts = "tmpfs /sys/fs/cgroup tmpfs ro 0 0\n\
            cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid 0 0\n\
            cgroup /sys/fs/cgroup/systemd cgroup rw,xattr,name=systemd 0 0\n\
            cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n\
            cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n";
        let got: Vec<_> = procs_paths(cgroup, mounts)
            .into_iter()
            .map(|(_, p)| p.unwrap().display().to_string())
            .collect();
        assert_eq!(
            got,
            [
                "/sys/fs/cgroup/systemd/bottle/x/cgroup.procs",
                "/sys/fs/cgroup/memory/bottle/x/cgroup.procs",
                "/sys/fs/cgroup/cpu,cpuacct/bottle/x/cgroup.procs",
                "/sys/fs/cgroup/unified/bottle/x/cgroup.procs",
            ]
        );
        // A hierarchy with no mount is reported, not skipped.
        let none = procs_paths("5:pids:/bottle/x\n", mounts);
        assert!(none[0].1.is_none());
    }

    #[test]
    fn the_deny_list_compiles_for_this_architecture() {
        let f = filters().unwrap();
        assert_eq!(f.len(), 2);
        assert!(f.iter().all(|p| !p.is_empty()));
        // Every denied name but the legacy umount has a number here.
        let unknown: Vec<_> = crate::seccomp::DENIED
            .iter()
            .filter(|(n, _)| syscall_number(n).is_none())
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(unknown, ["umount"]);
    }
}
