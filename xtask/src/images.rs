//! `cargo xtask images`: the small test image the launcher's tests and the demo run, built
//! offline from Debian packages — no registry involved.
//!
//! Layer 1 is busybox-static with its applet symlinks, `/etc/passwd` and `/etc/group` with
//! root and `bottle` (1000:1000), `/tmp`, `/home/bottle`. Layer 2 (left out with `--minimal`)
//! is the host's Debian `curl` and `git` with the shared libraries `ldd` names, copied as they
//! are: enough to fetch through the bottle's proxy and clone through its git-gate, not a
//! distribution (no CA bundle: the launcher installs the bottle's CA). Layer 3 (also left out
//! with `--minimal`) holds stand-in `claude` and `codex` executables
//! (`tests/fixtures/stand-in-agent.sh`) for the manifest tests.
//!
//! The same image is written twice, so tests exercise both import paths:
//! `target/images/bottle-test/` (OCI image layout, gzip layers) and
//! `target/images/bottle-test.tar` (`docker save` format). Both are then imported into a
//! scratch store to check they agree; as root the result is also mounted with overlayfs and
//! `sh`, `curl` and `git` run in it through chroot.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use bottle_image::write::{DockerFormat, ImageWriter, LayerBuilder};
use bottle_image::{Compression, ImageStore, RuntimeConfig};

const NAME: &str = "bottle-test:latest";
const BUSYBOX: &str = "/bin/busybox";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Host files for layer 2 (with the libraries `ldd` finds for the executables among them).
const TOOLS: &[&str] = &[
    "/usr/bin/curl",
    "/usr/bin/git",
    "/usr/lib/git-core/git-remote-http",
];

pub fn run(minimal: bool) -> Result<()> {
    ensure_busybox()?;
    let out = target_dir()?.join("images");
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let mut image = ImageWriter::new(RuntimeConfig {
        env: vec![PATH_ENV.into()],
        cmd: vec!["/bin/sh".into()],
        ..RuntimeConfig::default()
    });
    image.add_layer(&base_layer()?, Compression::Gzip)?;
    if minimal {
        eprintln!("xtask: --minimal: busybox only");
    } else {
        match tools_layer() {
            Ok(tools) => {
                image.add_layer(&tools, Compression::Gzip)?;
            }
            Err(e) => eprintln!("xtask: curl and git left out: {e:#}"),
        }
        image.add_layer(&stand_ins_layer()?, Compression::Gzip)?;
    }

    let layout = out.join("bottle-test");
    let tarball = out.join("bottle-test.tar");
    if layout.exists() {
        fs::remove_dir_all(&layout).with_context(|| format!("removing {}", layout.display()))?;
    }
    let manifest = image.write_oci_layout(&layout, NAME)?;
    image.write_docker_archive(&tarball, NAME, DockerFormat::Legacy)?;
    let id = verify(&out, &layout, &tarball)?;

    println!("bottle-test image {id} (manifest {manifest})");
    println!(
        "  OCI layout   {}  {}",
        layout.display(),
        size(&dir_size(&layout)?)
    );
    println!(
        "  docker save  {}  {}",
        tarball.display(),
        size(&fs::metadata(&tarball)?.len())
    );
    Ok(())
}

/// `/bin/busybox` from Debian's busybox-static, installed with apt-get when missing.
fn ensure_busybox() -> Result<()> {
    if Path::new(BUSYBOX).is_file() && is_static(BUSYBOX) {
        return Ok(());
    }
    eprintln!("xtask: installing busybox-static");
    let root = nix_is_root();
    let apt = |args: &[&str]| -> Result<()> {
        let mut cmd = if root {
            Command::new("env")
        } else {
            let mut c = Command::new("sudo");
            c.arg("env");
            c
        };
        cmd.args(["DEBIAN_FRONTEND=noninteractive", "apt-get"])
            .args(args);
        let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
        if !status.success() {
            bail!("{cmd:?} failed ({status})");
        }
        Ok(())
    };
    apt(&["update", "-q"])?;
    apt(&[
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "busybox-static",
    ])?;
    if !is_static(BUSYBOX) {
        bail!("{BUSYBOX} is not the static busybox (is the dynamic `busybox` package installed instead?)");
    }
    Ok(())
}

fn is_static(path: &str) -> bool {
    // A static binary has no PT_INTERP: ldd says so.
    Command::new("ldd")
        .arg(path)
        .output()
        .map(|o| {
            !o.status.success() || String::from_utf8_lossy(&o.stdout).contains("not a dynamic")
        })
        .unwrap_or(false)
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn target_dir() -> Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?;
    Ok(std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from))
}

fn base_layer() -> Result<Vec<u8>> {
    let mut l = LayerBuilder::new();
    for (dir, mode) in [
        ("bin", 0o755),
        ("sbin", 0o755),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("etc", 0o755),
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("run", 0o755),
        ("root", 0o700),
        ("home", 0o755),
        ("tmp", 0o1777),
        ("var", 0o755),
        ("var/tmp", 0o1777),
    ] {
        l.dir(dir, mode, 0, 0)?;
    }
    l.dir("home/bottle", 0o755, 1000, 1000)?;
    let busybox = fs::read(BUSYBOX).with_context(|| format!("reading {BUSYBOX}"))?;
    l.file("bin/busybox", 0o755, 0, 0, &busybox)?;
    let list = Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .context("busybox --list-full")?;
    let mut applets = 0;
    for path in String::from_utf8_lossy(&list.stdout).lines() {
        let path = path.trim().trim_start_matches('/');
        if path.is_empty() || path == "bin/busybox" || path.contains("..") {
            continue;
        }
        l.symlink(path, "/bin/busybox")?;
        applets += 1;
    }
    if applets < 50 {
        bail!("busybox --list-full listed only {applets} applets");
    }
    l.file(
        "etc/passwd",
        0o644,
        0,
        0,
        b"root:x:0:0:root:/root:/bin/sh\nbottle:x:1000:1000:bottle:/home/bottle:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    l.file(
        "etc/group",
        0o644,
        0,
        0,
        b"root:x:0:\nbottle:x:1000:\nnogroup:x:65534:\n",
    )?;
    l.file("etc/hostname", 0o644, 0, 0, b"bottle\n")?;
    Ok(l.finish()?)
}

/// The stand-in `claude` and `codex` of the manifest tests: one script under both names that
/// prints its argv, env and config files and calls its provider's API host.
const STAND_IN: &[u8] = include_bytes!("../../tests/fixtures/stand-in-agent.sh");

fn stand_ins_layer() -> Result<Vec<u8>> {
    let mut l = LayerBuilder::new();
    l.dir("usr", 0o755, 0, 0)?;
    l.dir("usr/local", 0o755, 0, 0)?;
    l.dir("usr/local/bin", 0o755, 0, 0)?;
    for name in ["claude", "codex"] {
        l.file(&format!("usr/local/bin/{name}"), 0o755, 0, 0, STAND_IN)?;
    }
    Ok(l.finish()?)
}

/// Debian's curl and git as the host has them, with their libraries and the loader.
fn tools_layer() -> Result<Vec<u8>> {
    for tool in TOOLS {
        if !Path::new(tool).is_file() {
            bail!("{tool} is missing (apt-get install curl git)");
        }
    }
    let mut files: Vec<String> = TOOLS.iter().map(|s| (*s).to_owned()).collect();
    for tool in TOOLS {
        for lib in ldd(tool)? {
            if !files.contains(&lib) {
                files.push(lib);
            }
        }
    }
    files.sort();
    let mut l = LayerBuilder::new();
    let mut dirs: Vec<String> = Vec::new();
    for file in &files {
        let rel = file.trim_start_matches('/');
        let mut parent = String::new();
        for part in rel
            .split('/')
            .rev()
            .skip(1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            parent = if parent.is_empty() {
                part.to_owned()
            } else {
                format!("{parent}/{part}")
            };
            if !dirs.contains(&parent) {
                l.dir(&parent, 0o755, 0, 0)?;
                dirs.push(parent.clone());
            }
        }
        // fs::read follows symlinks: the library's real content under the name ldd gave.
        let data = fs::read(file).with_context(|| format!("reading {file}"))?;
        l.file(rel, 0o755, 0, 0, &data)?;
    }
    l.symlink("usr/lib/git-core/git-remote-https", "git-remote-http")?;
    l.symlink("usr/lib/git-core/git", "../../bin/git")?;
    Ok(l.finish()?)
}

/// The absolute paths of the shared objects (and loader) `path` needs.
fn ldd(path: &str) -> Result<Vec<String>> {
    let out = Command::new("ldd")
        .arg(path)
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        bail!("ldd {path} failed");
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let lib = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(lib) = lib.filter(|l| l.starts_with('/')) {
            libs.push(lib.to_owned());
        }
    }
    Ok(libs)
}

/// Imports both outputs into a scratch store: they must give the same image. As root, also
/// mounts it and runs a few commands inside.
fn verify(out: &Path, layout: &Path, tarball: &Path) -> Result<String> {
    let scratch = out.join(format!(".verify-{}", std::process::id()));
    let result = (|| {
        let store = ImageStore::open(&scratch.join("store"))?;
        let a = store.import(layout, None)?;
        let b = store.import(tarball, None)?;
        if a.config_digest != b.config_digest || a.layers != b.layers {
            bail!("the OCI layout and the docker archive import differently");
        }
        if a.overlay_ready {
            run_inside(&scratch, &a.lower_dirs())?;
        } else {
            eprintln!("xtask: not root: imported both formats, skipped the overlay check");
        }
        Ok(a.id().to_owned())
    })();
    if let Err(e) = fs::remove_dir_all(&scratch) {
        eprintln!("xtask: cannot remove {}: {e}", scratch.display());
    }
    result
}

fn run_inside(scratch: &Path, lower: &[PathBuf]) -> Result<()> {
    let (upper, work, merged) = (
        scratch.join("upper"),
        scratch.join("work"),
        scratch.join("merged"),
    );
    for d in [&upper, &work, &merged] {
        fs::create_dir_all(d)?;
    }
    bottle_image::mount_overlay(lower, &upper, &work, &merged)?;
    // runc gives a container its /dev; a bare chroot needs at least /dev/null (git opens it).
    // It lands in the scratch upper, never in the image.
    let null = std::ffi::CString::new(format!("{}/dev/null", merged.display()))?;
    // SAFETY: `null` is a NUL-terminated path that outlives the call.
    if unsafe { libc::mknod(null.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) } != 0 {
        let e = std::io::Error::last_os_error();
        bottle_image::unmount(&merged)?;
        bail!("creating /dev/null in the scratch overlay: {e}");
    }
    let script = "id bottle && ls /bin/sh && \
                  if [ -x /usr/bin/curl ]; then curl --version | head -1; fi && \
                  if [ -x /usr/bin/git ]; then git --version; fi";
    let output = Command::new("chroot")
        .arg(&merged)
        .args(["/bin/sh", "-c", script])
        .env_clear()
        .env("PATH", PATH_ENV.trim_start_matches("PATH="))
        .output();
    bottle_image::unmount(&merged)?;
    let output = output.context("running chroot")?;
    if !output.status.success() {
        bail!(
            "the image does not run: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        println!("  inside: {line}");
    }
    Ok(())
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

fn size(bytes: &u64) -> String {
    format!("{:.1} MiB", *bytes as f64 / (1024.0 * 1024.0))
}
