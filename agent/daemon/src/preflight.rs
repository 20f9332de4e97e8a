//! Start-up checks: everything the agent needs from the host, each missing piece reported on
//! one line that says how to fix it.

use std::path::Path;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Runs every check, mounting bpffs at `bpffs_root` when it is missing. Returns the problems.
pub fn check(bpffs_root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    match effective_caps() {
        Some(caps) => {
            for (bit, name) in [
                (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
                (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
                (CAP_BPF, "CAP_BPF"),
            ] {
                if caps & (1u64 << bit) == 0 {
                    problems.push(format!(
                        "missing {name}: run bottle-agent as root (sudo bottle-agent)"
                    ));
                }
            }
        }
        None => problems.push("cannot read capabilities from /proc/self/status".into()),
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        problems.push(
            "kernel BTF missing (/sys/kernel/btf/vmlinux): use a kernel built with CONFIG_DEBUG_INFO_BTF=y"
                .into(),
        );
    }
    if let Err(problem) = ensure_bpffs(bpffs_root) {
        problems.push(problem);
    }
    if !Path::new("/proc/sys/net/ipv4").exists() {
        problems.push("/proc/sys/net is not available: mount procfs read-write".into());
    }
    problems
}

/// The container runtime's problem, if it cannot be found in `PATH`.
pub fn runtime(binary: &str) -> Option<String> {
    // The agent's PATH and the standard directories, where the launcher looks too.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let standard = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    let found = std::env::split_paths(&path)
        .chain(std::env::split_paths(standard))
        .any(|dir| dir.join(binary).is_file());
    (!found).then(|| {
        format!(
            "container runtime {binary} not found in PATH: install the Debian package `{binary}` (apt-get install {binary}); `bottle run` fails until then"
        )
    })
}

fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

#[expect(
    clippy::unnecessary_cast,
    reason = "statfs f_type is i64 on x86_64 glibc but narrower on other targets"
)]
fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 as i64 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// bpffs must hold `root` (the pin root lives on it); mount it at /sys/fs/bpf if absent.
fn ensure_bpffs(root: &Path) -> Result<(), String> {
    let mount_point = Path::new("/sys/fs/bpf");
    if !is_bpffs(mount_point) {
        std::fs::create_dir_all(mount_point).ok();
        nix::mount::mount(
            Some("bpf"),
            mount_point,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| {
            format!("bpffs is not mounted at /sys/fs/bpf and mounting it failed ({e}): mount -t bpf bpf /sys/fs/bpf")
        })?;
    }
    let parent = root.parent().unwrap_or(root);
    if !is_bpffs(parent) && !is_bpffs(root) {
        return Err(format!(
            "bpf_pin_root {} is not on a bpffs; put it under /sys/fs/bpf",
            root.display()
        ));
    }
    Ok(())
}
