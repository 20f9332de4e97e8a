//! Tests that go through the public API: images are built here (with the crate's writer, or
//! as raw tar bytes for hostile ones), imported into a store in a temporary directory, and
//! the cache inspected.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod formats;
mod hostile;
mod privileged;

use std::fs;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::write::{ImageWriter, LayerBuilder};
use crate::{Compression, ImageStore, RuntimeConfig};

/// A temporary directory removed on drop even when it holds read-only directories (layers
/// unpacked without root keep their `0555` modes).
pub(crate) struct Scratch(TempDir);

impl Scratch {
    pub(crate) fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = crate::fsutil::remove_tree(self.0.path());
    }
}

/// A fresh store in its own temporary directory (kept alive by the returned guard).
pub(crate) fn store() -> (Scratch, ImageStore) {
    let dir = Scratch(TempDir::new().unwrap());
    let store = ImageStore::open(&dir.path().join("images")).unwrap();
    (dir, store)
}

pub(crate) fn runtime() -> RuntimeConfig {
    RuntimeConfig {
        env: vec!["PATH=/bin".into(), "HOME=/home/bottle".into()],
        entrypoint: vec![],
        cmd: vec!["/bin/sh".into()],
        working_dir: Some("/home/bottle".into()),
        user: None,
    }
}

/// Layer 1: a small tree. Layer 2: deletes `etc/hidden`, makes `opq` opaque, adds files.
pub(crate) fn base_layer() -> Vec<u8> {
    let mut l = LayerBuilder::new();
    l.dir("etc", 0o755, 0, 0).unwrap();
    l.file("etc/hidden", 0o600, 0, 0, b"secret").unwrap();
    l.file("etc/keep", 0o644, 0, 0, b"keep").unwrap();
    l.dir("opq", 0o755, 0, 0).unwrap();
    l.file("opq/lower", 0o644, 0, 0, b"lower").unwrap();
    l.dir("bin", 0o755, 0, 0).unwrap();
    l.file("bin/tool", 0o4755, 0, 0, b"#!/bin/true\n").unwrap();
    l.symlink("bin/sh", "tool").unwrap();
    l.hardlink("bin/tool2", "bin/tool").unwrap();
    l.dir("home", 0o755, 0, 0).unwrap();
    l.dir("home/bottle", 0o750, 1000, 1000).unwrap();
    l.file("home/bottle/.profile", 0o644, 1000, 1000, b"# hi\n")
        .unwrap();
    l.dir("ro", 0o555, 0, 0).unwrap();
    l.file("ro/file", 0o444, 0, 0, b"ro").unwrap();
    l.finish().unwrap()
}

pub(crate) fn top_layer() -> Vec<u8> {
    let mut l = LayerBuilder::new();
    l.dir("etc", 0o755, 0, 0).unwrap();
    l.whiteout("etc/hidden").unwrap();
    l.file("etc/new", 0o644, 0, 0, b"new").unwrap();
    l.dir("opq", 0o755, 0, 0).unwrap();
    l.opaque("opq").unwrap();
    l.file("opq/upper", 0o644, 0, 0, b"upper").unwrap();
    l.finish().unwrap()
}

/// The two-layer test image, layers compressed as given.
pub(crate) fn two_layers(c1: Compression, c2: Compression) -> ImageWriter {
    let mut w = ImageWriter::new(runtime());
    w.add_layer(&base_layer(), c1).unwrap();
    w.add_layer(&top_layer(), c2).unwrap();
    w
}

/// A one-layer image from a raw tar stream.
pub(crate) fn one_layer(tar: &[u8]) -> ImageWriter {
    let mut w = ImageWriter::new(runtime());
    w.add_layer(tar, Compression::Gzip).unwrap();
    w
}

/// Everything under `dir`, relative, sorted.
pub(crate) fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Nothing committed and nothing staged: what a failed import must leave.
pub(crate) fn assert_nothing_left(store: &ImageStore) {
    let root = store.root();
    for dir in ["layers/sha256", "images", "blobs/sha256", "tmp"] {
        let left = tree(&root.join(dir));
        assert!(left.is_empty(), "{dir} holds {left:?}");
    }
    assert!(!root.join("names.json").exists());
}

/// One raw tar entry, with a name the tar crate's own builder would refuse.
pub(crate) enum Raw<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    CharDevice(&'a str),
}

pub(crate) fn raw_tar(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (kind, name, link, data): (tar::EntryType, &str, &str, &[u8]) = match e {
            Raw::Dir(n) => (tar::EntryType::Directory, n, "", b""),
            Raw::File(n, d) => (tar::EntryType::Regular, n, "", d),
            Raw::Symlink(n, t) => (tar::EntryType::Symlink, n, t, b""),
            Raw::Hardlink(n, t) => (tar::EntryType::Link, n, t, b""),
            Raw::CharDevice(n) => (tar::EntryType::Char, n, "", b""),
        };
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Root, or a skip (a failure under `BOTTLE_PRIVILEGED_TESTS=1`).
pub(crate) fn have_root(test: &str) -> bool {
    if crate::fsutil::is_root() {
        return true;
    }
    if std::env::var_os("BOTTLE_PRIVILEGED_TESTS").is_some_and(|v| v == "1") {
        panic!("{test} needs root and BOTTLE_PRIVILEGED_TESTS=1 is set");
    }
    eprintln!("skipping {test}: needs root (mknod, trusted.* xattrs, mount)");
    false
}
