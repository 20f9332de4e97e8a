//! As root: overlayfs whiteouts and opaque directories, owners, and a real overlay mount.
//! Each test skips with a message when not root (fails under `BOTTLE_PRIVILEGED_TESTS=1`).

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use super::*;
use crate::fsutil::get_xattr;
use crate::unpack::OPAQUE_XATTR;
use crate::{mount_overlay, unmount};

fn layout(dir: &Path) -> PathBuf {
    let path = dir.join("layout");
    two_layers(Compression::Gzip, Compression::Gzip)
        .write_oci_layout(&path, "priv:1")
        .unwrap();
    path
}

#[test]
fn privileged_whiteouts_become_overlayfs_form() {
    if !have_root("privileged_whiteouts_become_overlayfs_form") {
        return;
    }
    let (dir, store) = store();
    let r = store.import(&layout(dir.path()), None).unwrap();
    assert!(r.overlay_ready);
    let top = &r.lower_dirs()[0];
    let wh = fs::symlink_metadata(top.join("etc/hidden")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!((wh.rdev(), wh.uid(), wh.gid()), (0, 0, 0));
    assert!(!top.join("etc/.wh.hidden").exists());
    assert_eq!(
        get_xattr(&top.join("opq"), OPAQUE_XATTR)
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert!(!top.join("opq/.wh..wh..opq").exists());
    assert_eq!(get_xattr(&top.join("etc"), OPAQUE_XATTR).unwrap(), None);

    let base = &r.lower_dirs()[1];
    let home = fs::metadata(base.join("home/bottle")).unwrap();
    assert_eq!(
        (home.uid(), home.gid(), home.permissions().mode() & 0o7777),
        (1000, 1000, 0o750)
    );
    let profile = fs::metadata(base.join("home/bottle/.profile")).unwrap();
    assert_eq!((profile.uid(), profile.gid()), (1000, 1000));
    let tool = fs::metadata(base.join("bin/tool")).unwrap();
    assert_eq!(
        tool.permissions().mode() & 0o7777,
        0o4755,
        "setuid kept after chown"
    );
}

#[test]
fn privileged_unprivileged_layers_are_redone_as_root() {
    if !have_root("privileged_unprivileged_layers_are_redone_as_root") {
        return;
    }
    let (dir, store) = store();
    let source = layout(dir.path());
    let rootless = ImageStore::open(store.root())
        .unwrap()
        .with_privileged(false);
    let r = rootless.import(&source, None).unwrap();
    assert!(!r.overlay_ready);
    let top = &r.lower_dirs()[0];
    assert!(
        top.join("etc/.wh.hidden").is_file(),
        "OCI form kept as the marker"
    );
    assert!(top.join("opq/.wh..wh..opq").is_file());
    assert_eq!(get_xattr(&top.join("opq"), OPAQUE_XATTR).unwrap(), None);

    let r = store.import(&source, None).unwrap();
    assert!(r.overlay_ready);
    assert_eq!(store.stats().layers_unpacked, 2, "both layers redone");
    let top = &r.lower_dirs()[0];
    assert!(fs::symlink_metadata(top.join("etc/hidden"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert!(!top.join("etc/.wh.hidden").exists());
    assert!(tree(&store.root().join("tmp")).is_empty());
}

#[test]
fn privileged_rootfs_directory_keeps_owners() {
    if !have_root("privileged_rootfs_directory_keeps_owners") {
        return;
    }
    let (dir, store) = store();
    let rootfs = dir.path().join("rootfs");
    fs::create_dir_all(rootfs.join("home/bottle")).unwrap();
    fs::write(rootfs.join("home/bottle/notes"), b"n").unwrap();
    std::os::unix::fs::chown(rootfs.join("home/bottle"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::chown(rootfs.join("home/bottle/notes"), Some(1000), Some(1001)).unwrap();
    let r = store.import(&rootfs, None).unwrap();
    let root = &r.lower_dirs()[0];
    let m = fs::metadata(root.join("home/bottle/notes")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1000, 1001));
    assert_eq!(fs::metadata(root.join("home/bottle")).unwrap().uid(), 1000);
}

/// Unmounts on drop, so a failing assertion does not leave a mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = unmount(&self.0) {
            eprintln!("cannot unmount {}: {e}", self.0.display());
        }
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn privileged_overlay_mount_applies_whiteouts_and_writes_only_upper() {
    if !have_root("privileged_overlay_mount_applies_whiteouts_and_writes_only_upper") {
        return;
    }
    let (dir, store) = store();
    let r = store.import(&layout(dir.path()), None).unwrap();
    let (upper, work, merged) = (
        dir.path().join("upper"),
        dir.path().join("work"),
        dir.path().join("merged"),
    );
    for d in [&upper, &work, &merged] {
        fs::create_dir(d).unwrap();
    }
    mount_overlay(&r.lower_dirs(), &upper, &work, &merged).unwrap();
    let mounted = Mounted(merged.clone());

    // The whiteout hides the lower file; the opaque directory hides the lower contents.
    assert!(fs::symlink_metadata(merged.join("etc/hidden")).is_err());
    assert_eq!(names(&merged.join("etc")), ["keep", "new"]);
    assert_eq!(names(&merged.join("opq")), ["upper"]);
    assert_eq!(fs::read(merged.join("bin/sh")).unwrap(), b"#!/bin/true\n");

    // Writes land in the bottle's upper only.
    fs::write(merged.join("written"), b"w").unwrap();
    fs::write(merged.join("etc/keep"), b"changed").unwrap();
    fs::remove_file(merged.join("opq/upper")).unwrap();
    assert_eq!(fs::read(upper.join("written")).unwrap(), b"w");
    assert_eq!(fs::read(upper.join("etc/keep")).unwrap(), b"changed");
    let (top, base) = (&r.lower_dirs()[0], &r.lower_dirs()[1]);
    assert_eq!(fs::read(base.join("etc/keep")).unwrap(), b"keep");
    assert_eq!(fs::read(top.join("opq/upper")).unwrap(), b"upper");
    for lower in r.lower_dirs() {
        assert!(!lower.join("written").exists());
    }

    drop(mounted);
    assert!(!merged.join("etc").exists(), "unmounted");
    // The cache is as it was: the same image mounts again, unchanged.
    let again = dir.path().join("again");
    let (u2, w2) = (dir.path().join("u2"), dir.path().join("w2"));
    for d in [&again, &u2, &w2] {
        fs::create_dir(d).unwrap();
    }
    mount_overlay(&r.lower_dirs(), &u2, &w2, &again).unwrap();
    let _m = Mounted(again.clone());
    assert_eq!(fs::read(again.join("etc/keep")).unwrap(), b"keep");
    assert!(!again.join("written").exists());
}
