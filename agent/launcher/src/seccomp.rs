//! The workload's default seccomp profile: allow everything, then deny, with `EPERM`, the
//! syscalls a coding agent never needs and that are the usual ways out of a container or into
//! the kernel's less-trodden paths.
//!
//! Most of these already fail for an unprivileged process without capabilities; the filter is
//! the second fence, for the day a kernel bug or a mis-set capability makes one of them reachable.
//! runc loads the filter last, just before `execve` (because `noNewPrivileges` is set), so its
//! own setup (mounts, `pivot_root`) is unaffected. Names the running kernel or libseccomp does
//! not know are skipped by runc, so one list serves every architecture.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use oci_spec::OciSpecError;

/// Syscalls denied outright with `EPERM`, each with the reason.
pub const DENIED: &[(&str, &str)] = &[
    // Mounting: the rootfs is read-only and its mounts are fixed by the bundle. Both the
    // classic and the new (fd-based) mount API, or blocking one would be pointless.
    ("mount", "change the mount table"),
    ("umount", "change the mount table (legacy umount)"),
    ("umount2", "change the mount table"),
    ("pivot_root", "change the root"),
    ("fsopen", "new mount API"),
    ("fsconfig", "new mount API"),
    ("fsmount", "new mount API"),
    ("fspick", "new mount API"),
    ("move_mount", "new mount API"),
    ("open_tree", "new mount API (also clones mounts)"),
    ("mount_setattr", "new mount API (could drop read-only)"),
    // Namespaces: a new user namespace gives back every capability inside it and exposes a
    // large kernel surface (the origin of many container escapes); joining one is never needed.
    (
        "unshare",
        "new namespaces, notably user namespaces (denied outright)",
    ),
    ("setns", "join another namespace"),
    // eBPF: the host's enforcement is eBPF; a workload has no business loading programs or
    // reading maps, and unprivileged BPF has a long CVE history.
    ("bpf", "load eBPF programs / touch maps"),
    // Debugging other processes: ptrace and its cousins read and write another process's
    // memory (including the agent CLI's tokens held in memory by a sibling process).
    ("ptrace", "debug/trace other processes"),
    ("process_vm_readv", "read another process's memory"),
    ("process_vm_writev", "write another process's memory"),
    // Kernel keyrings are not namespaced: keys could leak between containers of one uid.
    ("keyctl", "kernel keyring (not namespaced)"),
    ("add_key", "kernel keyring (not namespaced)"),
    ("request_key", "kernel keyring (not namespaced)"),
    // Replacing the kernel or its modules.
    ("kexec_load", "load a new kernel"),
    ("kexec_file_load", "load a new kernel"),
    ("init_module", "load a kernel module"),
    ("finit_module", "load a kernel module"),
    ("delete_module", "unload a kernel module"),
    // perf events leak kernel addresses and have a long CVE history.
    (
        "perf_event_open",
        "performance counters (kernel info leaks)",
    ),
    // File handles bypass path-based confinement (the "shocker" escape).
    (
        "open_by_handle_at",
        "open files by handle, bypassing mounts",
    ),
    ("name_to_handle_at", "companion of open_by_handle_at"),
    // Host-wide administration.
    ("swapon", "host swap"),
    ("swapoff", "host swap"),
    ("reboot", "reboot the host (or the pid namespace)"),
    ("acct", "process accounting for the host"),
    ("quotactl", "disk quotas"),
    ("quotactl_fd", "disk quotas"),
    ("lookup_dcookie", "kernel profiling internals"),
    // userfaultfd makes kernel races easy to win (used by many exploits).
    (
        "userfaultfd",
        "page-fault handling in user space (exploit primitive)",
    ),
    // io_uring bypasses seccomp for the operations it performs and is a frequent CVE source.
    (
        "io_uring_setup",
        "io_uring (bypasses this filter, CVE source)",
    ),
    ("io_uring_enter", "io_uring"),
    ("io_uring_register", "io_uring"),
];

/// The profile for this architecture.
pub fn default_profile() -> Result<LinuxSeccomp, OciSpecError> {
    let eperm = libc::EPERM.unsigned_abs();
    let mut syscalls = vec![LinuxSyscallBuilder::default()
        .names(
            DENIED
                .iter()
                .map(|(n, _)| (*n).to_owned())
                .collect::<Vec<_>>(),
        )
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(eperm)
        .build()?];
    // clone: only with CLONE_NEWUSER (a new user namespace, see unshare above); plain clone is
    // how every thread and process is made. The flags are argument 0 on the architectures
    // listed below.
    syscalls.push(
        LinuxSyscallBuilder::default()
            .names(vec!["clone".to_owned()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(eperm)
            .args(vec![clone_flag(libc::CLONE_NEWUSER)?])
            .build()?,
    );
    // clone3 takes its flags in a struct seccomp cannot read, so it cannot be filtered like
    // clone. ENOSYS (not EPERM) makes glibc and others fall back to clone, which is filtered.
    syscalls.push(
        LinuxSyscallBuilder::default()
            .names(vec!["clone3".to_owned()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(libc::ENOSYS.unsigned_abs())
            .build()?,
    );
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(architectures())
        .syscalls(syscalls)
        .build()
}

/// `(flags & flag) == flag` on argument 0.
fn clone_flag(flag: libc::c_int) -> Result<LinuxSeccompArg, OciSpecError> {
    let flag = u64::from(flag.unsigned_abs());
    LinuxSeccompArgBuilder::default()
        .index(0_usize)
        .value(flag)
        .value_two(flag)
        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
        .build()
}

/// The native architecture and its compat ones, so 32-bit syscalls are filtered too (an
/// unlisted architecture's syscalls are refused by runc's filter).
fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchNative]
    }
}

/// Whether `profile` denies `name` unconditionally with `EPERM` (used by tests and checks).
pub fn denies(profile: &LinuxSeccomp, name: &str) -> bool {
    let eperm = libc::EPERM.unsigned_abs();
    profile.syscalls().iter().flatten().any(|s: &LinuxSyscall| {
        s.names().iter().any(|n| n == name)
            && s.action() == LinuxSeccompAction::ScmpActErrno
            && s.errno_ret() == Some(eperm)
            && s.args().is_none()
    })
}
