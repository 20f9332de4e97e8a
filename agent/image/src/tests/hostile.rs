//! Bad input: every refusal names what it refused, and leaves nothing in the cache.

use std::fs;

use super::*;
use crate::limits::LimitError;
use crate::store::StoreError;
use crate::unpack::UnpackError;
use crate::{Limits, Sha256};

/// Imports a one-layer image made of `entries` and returns the error.
fn refuse(store: &ImageStore, dir: &Path, entries: &[Raw<'_>]) -> StoreError {
    let layout = dir.join(crate::fsutil::unique_name("layout"));
    one_layer(&raw_tar(entries))
        .write_oci_layout(&layout, "x:1")
        .unwrap();
    let e = store.import(&layout, None).unwrap_err();
    assert_nothing_left(store);
    e
}

fn unpack_error(e: StoreError) -> UnpackError {
    match e {
        StoreError::Layer { source, .. } => source,
        other => panic!("expected a layer error, got {other}"),
    }
}

#[test]
fn escaping_paths_are_refused_naming_the_entry() {
    let (dir, store) = store();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let outside_str = outside.to_str().unwrap();

    let cases: Vec<(Vec<Raw<'_>>, &str)> = vec![
        (vec![Raw::File("../x", b"x")], "\"../x\": `..` component"),
        (
            vec![Raw::File("a/../../x", b"x")],
            "\"a/../../x\": `..` component",
        ),
        (vec![Raw::File("/etc/x", b"x")], "\"/etc/x\": absolute path"),
        (
            vec![
                Raw::Symlink("link", outside_str),
                Raw::File("link/passwd", b"x"),
            ],
            "\"link/passwd\" would be written through the symlink \"link\"",
        ),
        (
            vec![
                Raw::Dir("d"),
                Raw::Symlink("d/up", ".."),
                Raw::Dir("d/up/e"),
            ],
            "\"d/up/e\" would be written through the symlink \"d/up\"",
        ),
        (
            vec![
                Raw::Symlink("link", outside_str),
                Raw::File("link/.wh.x", b""),
            ],
            "\"link/.wh.x\" would be written through the symlink \"link\"",
        ),
        (
            vec![Raw::Hardlink("h", "../outside/f")],
            "\"h\": hard link target \"../outside/f\": `..` component",
        ),
        (
            vec![Raw::Hardlink("h", "/etc/passwd")],
            "\"h\": hard link target \"/etc/passwd\": absolute path",
        ),
        (
            vec![Raw::Symlink("l", "/etc"), Raw::Hardlink("h", "l/passwd")],
            "\"h\" would be written through the symlink \"l\"",
        ),
        (
            vec![Raw::Hardlink("h", "not-yet")],
            "\"h\": hard link target \"not-yet\" is not an earlier file of this layer",
        ),
        (
            vec![Raw::File("etc/.wh..", b"")],
            "\"etc/.wh..\": whiteout of \".\" refused",
        ),
    ];
    for (entries, want) in cases {
        let e = refuse(&store, dir.path(), &entries);
        let text = e.to_string();
        assert!(text.contains(want), "want {want:?} in {text:?}");
        assert!(text.starts_with("layer 0 (sha256:"), "{text}");
    }
    assert!(tree(&outside).is_empty(), "nothing written outside");
}

#[test]
fn a_directory_replaced_by_a_symlink_is_not_finished_through_it() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (dir, store) = store();
    let outside = dir.path().join("outside");
    fs::create_dir_all(outside.join("b")).unwrap();
    fs::set_permissions(outside.join("b"), fs::Permissions::from_mode(0o711)).unwrap();
    let before = fs::metadata(outside.join("b")).unwrap().mtime();
    // `a/b` gets its mode and mtime at the end; by then `a` is a symlink to `outside`.
    let layout = dir.path().join("layout");
    let tar = raw_tar(&[
        Raw::Dir("a"),
        Raw::Dir("a/b"),
        Raw::Symlink("a", outside.to_str().unwrap()),
    ]);
    one_layer(&tar).write_oci_layout(&layout, "x:1").unwrap();
    let r = store.import(&layout, None).unwrap();
    let b = fs::metadata(outside.join("b")).unwrap();
    assert_eq!(b.permissions().mode() & 0o7777, 0o711, "outside untouched");
    assert_eq!(b.mtime(), before);
    assert!(fs::symlink_metadata(r.lower_dirs()[0].join("a"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn blob_digest_mismatch_leaves_nothing() {
    let (dir, store) = store();
    let w = two_layers(Compression::Gzip, Compression::Gzip);
    let layout = dir.path().join("layout");
    w.write_oci_layout(&layout, "x:1").unwrap();
    let blob = layout.join("blobs/sha256").join(w.layers[1].digest.hex());
    let mut bytes = fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&blob, &bytes).unwrap();
    let e = store.import(&layout, None).unwrap_err();
    assert!(
        matches!(
            &e,
            StoreError::LayerBlob {
                index: 1,
                source: crate::blobs::BlobError::Digest(_),
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("layer blob 1"), "{e}");
    // Layer 0 was fine and unpacked, but an import is all or nothing.
    assert_nothing_left(&store);

    // A tampered config is refused before any layer is looked at.
    let w = two_layers(Compression::Gzip, Compression::Gzip);
    let layout = dir.path().join("layout2");
    w.write_oci_layout(&layout, "x:1").unwrap();
    let config = layout
        .join("blobs/sha256")
        .join(Sha256::of(&w.config_json().unwrap()).hex());
    let tampered = String::from_utf8(fs::read(&config).unwrap())
        .unwrap()
        .replace("/bin/sh", "/bin/xx");
    fs::write(&config, tampered).unwrap();
    let e = store.import(&layout, None).unwrap_err();
    assert!(matches!(e, StoreError::Layout(_)), "{e}");
    assert!(e.to_string().contains("expected sha256:"), "{e}");
    assert_nothing_left(&store);
}

#[test]
fn diff_id_mismatch_leaves_nothing() {
    let (dir, store) = store();
    let mut w = two_layers(Compression::Gzip, Compression::Zstd);
    w.layers[1].diff_id = Sha256::of(b"some other layer");
    for (i, format) in [
        crate::write::DockerFormat::Legacy,
        crate::write::DockerFormat::Oci,
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.path().join(format!("d{i}.tar"));
        w.write_docker_archive(&path, "x:1", format).unwrap();
        let e = store.import(&path, None).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("layer 1 ("), "{text}");
        assert!(text.contains("against the config's diff_id"), "{text}");
        assert!(matches!(unpack_error(e), UnpackError::Digest(_)));
        assert_nothing_left(&store);
    }
}

#[test]
fn size_bounds_are_enforced_and_cleaned_up() {
    let (dir, store) = store();
    let store = store.with_limits(Limits {
        max_unpacked_bytes: 64 << 10,
        ..Limits::default()
    });
    // 1 MiB of zeros gzips to about a kilobyte: the bound is on what it inflates to.
    let e = refuse(&store, dir.path(), &[Raw::File("big", &vec![0u8; 1 << 20])]);
    let e = unpack_error(e);
    assert!(
        matches!(e, UnpackError::Limit(LimitError::TooLarge { limit: 65536 })),
        "{e}"
    );

    let store = store.with_limits(Limits {
        max_entries: 10,
        ..Limits::default()
    });
    let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    let entries: Vec<Raw<'_>> = names.iter().map(|n| Raw::File(n, b"")).collect();
    let e = refuse(&store, dir.path(), &entries);
    assert!(matches!(
        unpack_error(e),
        UnpackError::Limit(LimitError::TooManyEntries { limit: 10, .. })
    ));

    // A long name is held in memory by the tar reader: bounded before it is read whole.
    let store = store.with_limits(Limits {
        max_header_bytes: 4096,
        max_path_bytes: 100_000,
        ..Limits::default()
    });
    let long = format!("{}/f", "d".repeat(50_000));
    let mut l = LayerBuilder::new();
    l.file(&long, 0o644, 0, 0, b"x").unwrap();
    let layout = dir.path().join("long");
    one_layer(&l.finish().unwrap())
        .write_oci_layout(&layout, "x:1")
        .unwrap();
    let e = store.import(&layout, None).unwrap_err();
    assert!(matches!(
        unpack_error(e),
        UnpackError::Limit(LimitError::HeadersTooLarge { limit: 4096 })
    ));
    assert_nothing_left(&store);

    let store = store.with_limits(Limits {
        max_layers: 1,
        ..Limits::default()
    });
    let layout = dir.path().join("layers");
    two_layers(Compression::Gzip, Compression::Gzip)
        .write_oci_layout(&layout, "x:1")
        .unwrap();
    let e = store.import(&layout, None).unwrap_err();
    assert!(
        e.to_string()
            .contains("the image has 2 layers, more than the limit of 1"),
        "{e}"
    );
    assert_nothing_left(&store);

    let store = store.with_limits(Limits {
        max_json_bytes: 100,
        ..Limits::default()
    });
    let e = store.import(&layout, None).unwrap_err();
    assert!(e.to_string().contains("is larger than 100 bytes"), "{e}");
    assert_nothing_left(&store);
}

#[test]
fn archive_members_are_checked_too() {
    let (dir, store) = store();
    let tarball = dir.path().join("evil.tar");
    fs::write(
        &tarball,
        raw_tar(&[
            Raw::File("../evil", b"x"),
            Raw::File("manifest.json", b"[]"),
        ]),
    )
    .unwrap();
    let e = store.import(&tarball, None).unwrap_err();
    assert!(
        e.to_string()
            .contains("archive member \"../evil\": `..` component"),
        "{e}"
    );
    assert!(!store.root().join("evil").exists());
    assert_nothing_left(&store);
}

#[test]
fn truncated_and_corrupt_layers_fail_cleanly() {
    let (dir, store) = store();
    let path = dir.path().join("d.tar");
    // Classic docker save: no blob digests, so a bad layer is found while unpacking.
    let mut w = ImageWriter::new(runtime());
    w.add_layer(&base_layer(), Compression::Gzip).unwrap();
    let half = w.layers[0].blob.len() / 2;
    w.layers[0].blob.truncate(half);
    w.write_docker_archive(&path, "x:1", crate::write::DockerFormat::Legacy)
        .unwrap();
    let e = store.import(&path, None).unwrap_err();
    assert!(matches!(unpack_error(e), UnpackError::Read(_)));
    assert_nothing_left(&store);
}

#[test]
fn device_nodes_are_skipped() {
    let (dir, store) = store();
    let layout = dir.path().join("dev");
    one_layer(&raw_tar(&[
        Raw::Dir("dev"),
        Raw::CharDevice("dev/sda"),
        Raw::File("dev/ok", b""),
    ]))
    .write_oci_layout(&layout, "x:1")
    .unwrap();
    let r = store.import(&layout, None).unwrap();
    let root = &r.lower_dirs()[0];
    assert!(root.join("dev/ok").is_file());
    assert!(fs::symlink_metadata(root.join("dev/sda")).is_err());
    let meta: serde_json::Value =
        serde_json::from_slice(&fs::read(root.parent().unwrap().join("layer.json")).unwrap())
            .unwrap();
    assert_eq!(meta["devices_skipped"], 1);
    assert_eq!(meta["entries"], 3);
}
