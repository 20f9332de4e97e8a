//! Every source format imports to the same record; re-imports reuse layers; names resolve.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::*;
use crate::write::DockerFormat;
use crate::{Sha256, SourceKind, StoreError};

/// What every import of the two-layer image must give, whatever the format.
fn check_two_layer(store: &ImageStore, record: &crate::ImageRecord, writer: &ImageWriter) {
    let config = writer.config_json().unwrap();
    assert_eq!(record.config_digest, Sha256::of(&config));
    assert_eq!(record.id(), Sha256::of(&config).hex());
    assert_eq!(
        record.layers,
        vec![Sha256::of(&base_layer()), Sha256::of(&top_layer())]
    );
    assert_eq!(record.config, runtime());
    assert_eq!(record.os, "linux");
    assert_eq!(record.architecture, crate::layout::host_arch());

    let lower = record.lower_dirs();
    assert_eq!(lower.len(), 2);
    // Top-most first.
    assert!(lower[0].ends_with(format!("{}/root", Sha256::of(&top_layer()).hex())));
    assert!(lower[1].starts_with(store.root().join("layers/sha256")));

    let base = &lower[1];
    assert_eq!(fs::read(base.join("etc/hidden")).unwrap(), b"secret");
    assert_eq!(fs::read(base.join("opq/lower")).unwrap(), b"lower");
    assert_eq!(
        fs::read_link(base.join("bin/sh")).unwrap(),
        Path::new("tool")
    );
    let tool = fs::metadata(base.join("bin/tool")).unwrap();
    assert_eq!(
        tool.ino(),
        fs::metadata(base.join("bin/tool2")).unwrap().ino()
    );
    assert_eq!(tool.permissions().mode() & 0o7777, 0o4755);
    let ro = fs::metadata(base.join("ro")).unwrap();
    assert_eq!(ro.permissions().mode() & 0o7777, 0o555, "deferred dir mode");
    assert_eq!(ro.mtime(), 0);

    let top = &lower[0];
    assert_eq!(fs::read(top.join("etc/new")).unwrap(), b"new");
    assert_eq!(fs::read(top.join("opq/upper")).unwrap(), b"upper");
    if record.overlay_ready {
        assert!(!top.join("etc/.wh.hidden").exists());
        assert!(fs::symlink_metadata(top.join("etc/hidden")).is_ok());
    } else {
        assert!(top.join("etc/.wh.hidden").is_file());
        assert!(top.join("opq/.wh..wh..opq").is_file());
    }
    assert!(
        tree(&store.root().join("tmp")).is_empty(),
        "staging removed"
    );
}

#[test]
fn imports_oci_layout_with_gzip_layers() {
    let (dir, store) = store();
    let w = two_layers(Compression::Gzip, Compression::Gzip);
    let layout = dir.path().join("layout");
    let manifest = w.write_oci_layout(&layout, "bottle-test:v1").unwrap();
    let r = store.import(&layout, Some("mine")).unwrap();
    check_two_layer(&store, &r, &w);
    assert_eq!(r.source, SourceKind::OciLayout);
    assert_eq!(r.manifest_digest, Some(manifest.clone()));
    assert_eq!(r.names, ["bottle-test:v1", "mine:latest"]);
    assert_eq!(r.overlay_ready, crate::fsutil::is_root());
    // The verified blobs are kept.
    for d in [&manifest, &r.config_digest] {
        assert!(store.root().join("blobs/sha256").join(d.hex()).is_file());
    }
}

#[test]
fn imports_oci_archive_with_zstd_and_plain_layers() {
    let (dir, store) = store();
    let w = two_layers(Compression::Zstd, Compression::None);
    let path = dir.path().join("image.oci.tar");
    w.write_oci_archive(&path, "latest").unwrap();
    let r = store.import(&path, Some("zs")).unwrap();
    check_two_layer(&store, &r, &w);
    assert_eq!(r.source, SourceKind::OciArchive);
    // A bare tag in ref.name is not a name worth indexing.
    assert_eq!(r.names, ["zs:latest"]);
}

#[test]
fn imports_docker_save_classic_layout_sniffing_compression() {
    let (dir, store) = store();
    // Classic `docker save` has no media types: the layers are told apart by magic bytes.
    let w = two_layers(Compression::None, Compression::Gzip);
    let path = dir.path().join("docker.tar");
    w.write_docker_archive(&path, "bottle-test:v1", DockerFormat::Legacy)
        .unwrap();
    let r = store.import(&path, None).unwrap();
    check_two_layer(&store, &r, &w);
    assert_eq!(r.source, SourceKind::DockerArchive);
    assert_eq!(r.manifest_digest, None);
    assert_eq!(r.names, ["bottle-test:v1"]);
}

#[test]
fn imports_docker_save_oci_layout_and_gzipped_archive() {
    let (dir, store) = store();
    let w = two_layers(Compression::Gzip, Compression::Gzip);
    let path = dir.path().join("docker25.tar");
    w.write_docker_archive(&path, "bottle-test:v2", DockerFormat::Oci)
        .unwrap();
    // `docker save | gzip`: the archive itself compressed.
    let gz = dir.path().join("docker25.tar.gz");
    let mut enc =
        flate2::write::GzEncoder::new(fs::File::create(&gz).unwrap(), flate2::Compression::fast());
    std::io::copy(&mut fs::File::open(&path).unwrap(), &mut enc).unwrap();
    enc.finish().unwrap();
    let r = store.import(&gz, None).unwrap();
    check_two_layer(&store, &r, &w);
    assert_eq!(r.source, SourceKind::DockerArchive);
    assert!(r.manifest_digest.is_some(), "read as an OCI layout");
    assert_eq!(r.names, ["bottle-test:v2"]);
}

#[test]
fn imports_an_unpacked_docker_save_directory() {
    let (dir, store) = store();
    let w = two_layers(Compression::Gzip, Compression::None);
    let path = dir.path().join("docker.tar");
    w.write_docker_archive(&path, "unpacked:1", DockerFormat::Legacy)
        .unwrap();
    let out = dir.path().join("unpacked");
    tar::Archive::new(fs::File::open(&path).unwrap())
        .unpack(&out)
        .unwrap();
    let r = store.import(&out, None).unwrap();
    check_two_layer(&store, &r, &w);
    assert_eq!(r.names, ["unpacked:1"]);
    // The source directory is read, never moved.
    assert!(out.join("manifest.json").is_file());
}

#[test]
fn picks_this_hosts_platform_from_a_nested_index() {
    let (dir, store) = store();
    let w = two_layers(Compression::Gzip, Compression::Gzip);
    let layout = dir.path().join("multi");
    let manifest = w.write_oci_layout(&layout, "multi:1").unwrap();
    let manifest_size = fs::metadata(layout.join("blobs/sha256").join(manifest.hex()))
        .unwrap()
        .len();
    // index.json → a multi-platform index → (arm64: never read, host arch: the real one).
    let other_arch = if crate::layout::host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    let nested = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": Sha256::of(b"elsewhere").to_string(), "size": 9,
             "platform": {"architecture": other_arch, "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": manifest.to_string(), "size": manifest_size,
             "platform": {"architecture": crate::layout::host_arch(), "os": "linux"}},
        ]
    });
    let nested = serde_json::to_vec(&nested).unwrap();
    let nested_digest = Sha256::of(&nested);
    fs::write(
        layout.join("blobs/sha256").join(nested_digest.hex()),
        &nested,
    )
    .unwrap();
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
                       "digest": nested_digest.to_string(), "size": nested.len()}]
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    let r = store.import(&layout, Some("multi")).unwrap();
    check_two_layer(&store, &r, &w);
    assert_eq!(r.manifest_digest, Some(manifest));
}

#[test]
fn imports_a_rootfs_directory_as_one_layer_and_reuses_it() {
    let (dir, store) = store();
    let rootfs = dir.path().join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::create_dir_all(rootfs.join("etc")).unwrap();
    fs::write(rootfs.join("bin/busybox"), b"\x7fELF pretend").unwrap();
    fs::set_permissions(
        rootfs.join("bin/busybox"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    fs::hard_link(rootfs.join("bin/busybox"), rootfs.join("bin/ls")).unwrap();
    fs::write(rootfs.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
    nix::unistd::mkfifo(
        &rootfs.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();

    let r = store.import(&rootfs, Some("dev-root")).unwrap();
    assert_eq!(r.source, SourceKind::RootfsDir);
    assert_eq!(r.layers, [crate::rootfs::digest_of(&rootfs)]);
    assert_eq!(r.config.env, [crate::rootfs::DEFAULT_PATH]);
    let root = &r.lower_dirs()[0];
    assert_eq!(
        fs::read(root.join("etc/passwd")).unwrap(),
        b"root:x:0:0::/root:/bin/sh\n"
    );
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::metadata(root.join("bin/ls")).unwrap().ino(),
        fs::metadata(root.join("bin/busybox")).unwrap().ino()
    );
    assert!(fs::symlink_metadata(root.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    // The tar stream was not kept as a blob: only the config is in blobs/.
    assert_eq!(tree(&store.root().join("blobs/sha256")).len(), 1);

    // Unchanged directory: same image, layer reused.
    let again = store.import(&rootfs, None).unwrap();
    assert_eq!(again.config_digest, r.config_digest);
    assert_eq!(again.names, ["dev-root:latest"]);
    assert_eq!(store.stats().layers_unpacked, 1);
    assert_eq!(store.stats().layers_reused, 1);
    // Changed: a new layer.
    fs::write(rootfs.join("etc/hostname"), b"bottle\n").unwrap();
    let changed = store.import(&rootfs, None).unwrap();
    assert_ne!(changed.layers, r.layers);
}

#[test]
fn reimport_reuses_layers_across_formats() {
    let (dir, store) = store();
    let w = two_layers(Compression::Gzip, Compression::Gzip);
    let layout = dir.path().join("layout");
    w.write_oci_layout(&layout, "reuse:1").unwrap();
    let first = store.import(&layout, None).unwrap();
    let meta = first.lower_dirs()[0].parent().unwrap().join("layer.json");
    let before = fs::metadata(&meta).unwrap();
    assert_eq!(store.stats().layers_unpacked, 2);

    let again = store.import(&layout, None).unwrap();
    assert_eq!(again, first);
    // Same diff_ids through another format (different compression, no manifest digest).
    let docker = dir.path().join("docker.tar");
    let w2 = two_layers(Compression::None, Compression::Zstd);
    w2.write_docker_archive(&docker, "reuse:2", DockerFormat::Legacy)
        .unwrap();
    let third = store.import(&docker, None).unwrap();
    assert_eq!(third.config_digest, first.config_digest, "same config");
    assert_eq!(third.names, ["reuse:1", "reuse:2"]);

    let stats = store.stats();
    assert_eq!(stats.layers_unpacked, 2, "no second unpack");
    assert_eq!(stats.layers_reused, 4);
    assert_eq!(stats.import_count, 3);
    let after = fs::metadata(&meta).unwrap();
    assert_eq!(
        (before.ino(), before.mtime_nsec()),
        (after.ino(), after.mtime_nsec())
    );
}

#[test]
fn concurrent_imports_of_one_image_unpack_each_layer_once() {
    let (dir, store) = store();
    let w = two_layers(Compression::Gzip, Compression::Gzip);
    let layout = dir.path().join("layout");
    w.write_oci_layout(&layout, "race:1").unwrap();
    let records: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| store.import(&layout, None).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(records.windows(2).all(|p| p[0] == p[1]));
    assert_eq!(store.stats().layers_unpacked, 2);
    assert_eq!(
        tree(&store.root().join("layers/sha256"))
            .iter()
            .filter(|p| p.components().count() == 1)
            .count(),
        2
    );
    check_two_layer(&store, &records[0], &w);
}

#[test]
fn names_index_finds_images_and_moves_names() {
    let (dir, store) = store();
    let a = two_layers(Compression::Gzip, Compression::Gzip);
    let a_dir = dir.path().join("a");
    a.write_oci_layout(&a_dir, "latest").unwrap();
    let ra = store.import(&a_dir, Some("docker.io/library/app")).unwrap();
    assert_eq!(ra.names, ["app:latest"]);
    let full_id = ra.config_digest.to_string();
    for spec in [
        "app",
        "app:latest",
        "docker.io/library/app:latest",
        ra.id(),
        full_id.as_str(),
    ] {
        assert_eq!(store.get(spec).unwrap().as_ref(), Some(&ra), "{spec}");
    }
    assert_eq!(store.get("app:other").unwrap(), None);
    assert!(matches!(store.get("bad name"), Err(StoreError::Name(_))));

    // Another image takes the name: the first keeps its id but loses the name.
    let b = one_layer(&base_layer());
    let b_dir = dir.path().join("b");
    b.write_oci_layout(&b_dir, "latest").unwrap();
    let rb = store.import(&b_dir, Some("app")).unwrap();
    assert_eq!(
        store.get("app").unwrap().unwrap().config_digest,
        rb.config_digest
    );
    assert!(store.get(ra.id()).unwrap().unwrap().names.is_empty());
    assert_eq!(store.list().unwrap().len(), 2);

    // resolve: a name, a path, and the error when neither.
    assert_eq!(
        store.resolve("app").unwrap().config_digest,
        rb.config_digest
    );
    let by_path = store.resolve(a_dir.to_str().unwrap()).unwrap();
    assert_eq!(by_path.config_digest, ra.config_digest);
    if crate::pull::find_skopeo().is_none() {
        let e = store.resolve("no-such-image").unwrap_err();
        assert!(matches!(e, StoreError::NotFound { .. }));
        let text = e.to_string();
        assert!(
            text.contains("\"no-such-image\" is not a path and not in the image cache"),
            "{text}"
        );
        assert!(
            text.contains("bottle image import PATH --name no-such-image"),
            "{text}"
        );
        assert!(text.contains("install skopeo"), "{text}");
    }
    let missing = store.resolve("/no/such/dir").unwrap_err();
    assert!(
        matches!(missing, StoreError::SourceMissing { .. }),
        "{missing}"
    );
}

#[test]
fn damaged_cache_is_reported_not_used() {
    let (dir, store) = store();
    let w = two_layers(Compression::Gzip, Compression::Gzip);
    let layout = dir.path().join("layout");
    w.write_oci_layout(&layout, "dmg:1").unwrap();
    let r = store.import(&layout, None).unwrap();
    fs::remove_dir_all(r.lower_dirs()[0].parent().unwrap()).unwrap();
    let e = store.resolve("dmg:1").unwrap_err();
    assert!(matches!(e, StoreError::Damaged { .. }), "{e}");
    // Importing again repairs it.
    store.import(&layout, None).unwrap();
    store.resolve("dmg:1").unwrap();
}

#[test]
fn not_an_image() {
    let (dir, store) = store();
    let text = dir.path().join("notes.txt");
    fs::write(&text, "hello").unwrap();
    assert!(store.import(&text, None).is_err());
    let tarball = dir.path().join("files.tar");
    fs::write(&tarball, raw_tar(&[Raw::File("readme", b"hi")])).unwrap();
    let e = store.import(&tarball, None).unwrap_err();
    assert!(matches!(e, StoreError::NotAnImage { .. }), "{e}");
    assert_nothing_left(&store);
    assert_eq!(store.stats().import_fails, 2);
}
