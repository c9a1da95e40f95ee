//! The golden-tree test: a source directory with the cases readers get wrong (modes,
//! owners, every kind of symbolic link, long and non-ASCII names, 8.3 collisions, a
//! directory spanning several sectors) is written with `write_iso_file` and read back by
//! independent readers, each compared entry by entry with the source.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{chown, symlink, PermissionsExt};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use common::{Compare, Kind};
use mesh_iso::{write_iso_file, IsoOptions, IsoTree};

const LONG_NAME: &str =
    "this-file-name-is-clearly-longer-than-the-sixty-four-characters-joliet-allows.txt";

fn file(root: &Path, rel: &str, contents: &[u8], mode: u32) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir -p");
    fs::write(&path, contents).expect("write source file");
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Builds the source tree; returns its root.
fn make_source(root: &Path) {
    file(root, "scripts/build.sh", b"#!/bin/sh\nexec make \"$@\"\n", 0o755);
    file(root, "README", b"vm-mesh repository\n", 0o644);
    chown(root.join("README"), Some(1234), Some(5678)).expect("chown README");
    file(root, "secret.txt", b"only me\n", 0o600);
    file(root, "tools/setuid-helper", b"\x7fELF not really\n", 0o4755);
    file(root, "Makefile", b"all:\n\ttrue\n", 0o644);
    file(root, "archive.tar.gz", &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0], 0o644);
    file(root, ".gitignore", b"target/\n", 0o644);
    file(root, ".config/settings.toml", b"[a]\nb = 1\n", 0o640);
    file(root, "Grüße-日本語.md", "# héllo\n".as_bytes(), 0o644);
    file(root, LONG_NAME, b"long\n", 0o644);
    file(root, &"n".repeat(240), b"nm continued across entries\n", 0o644);
    for name in
        ["collision-alpha.txt", "collision-beta.txt", "collision-gamma.txt", "Collision-Alpha.TXT"]
    {
        file(root, &format!("collide/{name}"), name.as_bytes(), 0o644);
    }
    // Enough entries that the directory spans several sectors.
    for i in 0..150 {
        file(root, &format!("many/entry-number-{i:03}.data"), format!("{i}\n").as_bytes(), 0o644);
    }
    let big: Vec<u8> =
        (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    file(root, "data/blob.bin", &big, 0o644);
    file(root, "empty", b"", 0o644);
    fs::create_dir_all(root.join("empty-dir")).expect("mkdir");
    fs::create_dir_all(root.join("private")).expect("mkdir");
    file(root, "private/key", b"k\n", 0o600);
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).expect("chmod");

    symlink("scripts/build.sh", root.join("build")).expect("symlink");
    symlink("../outside/the/tree", root.join("scripts/up-and-out")).expect("symlink");
    symlink("/etc/hostname", root.join("absolute")).expect("symlink");
    symlink("does/not/exist", root.join("dangling")).expect("symlink");
    symlink("scripts", root.join("dir-link")).expect("symlink");
    symlink("./README", root.join("dot-link")).expect("symlink");
    let long_target =
        (0..12).map(|i| format!("component-{i}-{}", "x".repeat(40))).collect::<Vec<_>>();
    symlink(long_target.join("/"), root.join("long-link")).expect("symlink");

    let old = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::options()
        .write(true)
        .open(root.join("Makefile"))
        .and_then(|f| f.set_modified(old))
        .expect("set mtime");
}

#[test]
fn golden_tree_reads_back_identically_in_every_reader() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    make_source(&src);
    let image = tmp.path().join("golden.iso");

    let tree = IsoTree::from_dir(&src).expect("describe source tree");
    write_iso_file(&tree, &IsoOptions::new("cidata"), &image).expect("write image");
    let source = common::walk(&src);

    // libisofs, extracting: type, mode, owner, size, target, content, mtime.
    let ex = tmp.path().join("osirrox");
    common::osirrox_extract(&image, &ex);
    common::assert_same("osirrox -extract", &source, &common::walk(&ex), Compare::ALL);

    // libarchive, extracting.
    let ex = tmp.path().join("bsdtar");
    common::bsdtar_extract(&image, &ex);
    common::assert_same("bsdtar -x", &source, &common::walk(&ex), Compare::ALL);

    // libisofs, listing.
    let listing = Compare { content: false, mtime: false, ..Compare::ALL };
    common::assert_same("xorriso -find", &source, &common::xorriso_listing(&image), listing);

    // isoinfo with Rock Ridge: names, modes, sizes, targets. Its uid column is garbled and
    // it never prints setuid/setgid/sticky bits, even for genisoimage's images, so owners
    // and those bits are left to the readers above.
    let entries = common::isoinfo_entries(&image, &["-R"]);
    let rr = common::isoinfo_listing(&entries);
    let mut plain_modes = source.clone();
    plain_modes.values_mut().for_each(|e| e.mode &= 0o777);
    let isoinfo = Compare { owner: false, ..listing };
    common::assert_same("isoinfo -R -l", &plain_modes, &rr, isoinfo);
}

/// The names a Joliet reader must see: the source names, with the one name over 64
/// characters cut to 64 keeping its extension, and no symbolic links.
#[test]
fn joliet_names_are_kept_and_cut_only_past_64_characters() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    make_source(&src);
    let image = tmp.path().join("joliet.iso");
    write_iso_file(&IsoTree::from_dir(&src).expect("tree"), &IsoOptions::new("cidata"), &image)
        .expect("write image");

    let mut expected = BTreeMap::new();
    for (path, e) in common::walk(&src) {
        if e.kind == Kind::Symlink {
            continue;
        }
        expected.insert(path, (e.kind, e.size));
    }
    let got: BTreeMap<String, (Kind, Option<u64>)> = common::isoinfo_entries(&image, &["-J"])
        .into_iter()
        .map(|e| {
            let path = if e.dir.is_empty() { e.name } else { format!("{}/{}", e.dir, e.name) };
            (path, (e.kind, (e.kind == Kind::File).then_some(e.size)))
        })
        .collect();

    // isoinfo prints Joliet names in a single-byte charset, so only ASCII paths can be
    // compared by name; every entry must still be there exactly once.
    assert_eq!(got.len(), expected.len(), "entries in the Joliet tree");
    let cut: Vec<&String> =
        got.keys().filter(|p| p.is_ascii() && !expected.contains_key(*p)).collect();
    assert_eq!(cut.len(), 2, "only the two over-long names differ: {cut:?}");
    for name in cut {
        assert_eq!(name.chars().count(), 64, "{name} is cut to exactly 64 characters");
        if name.ends_with(".txt") {
            assert!(LONG_NAME.starts_with(&name[..60]), "{name} keeps the start of the name");
        } else {
            assert_eq!(*name, "n".repeat(64));
        }
    }
    for (path, want) in &expected {
        let name = path.rsplit('/').next().expect("non-empty path");
        if path.is_ascii() && name.len() <= 64 {
            assert_eq!(got.get(path), Some(want), "Joliet entry {path}");
        }
    }
}

/// A reader that ignores both extensions sees every entry exactly once, under a valid
/// ISO 9660 level 1 name, unique in its directory even after versions are stripped.
#[test]
fn plain_primary_volume_lists_every_entry_once_with_valid_names() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    make_source(&src);
    let image = tmp.path().join("plain.iso");
    write_iso_file(&IsoTree::from_dir(&src).expect("tree"), &IsoOptions::new("cidata"), &image)
        .expect("write image");

    let source = common::walk(&src);
    let entries = common::isoinfo_entries(&image, &[]);

    let file_re = |n: &str| {
        let Some(stem) = n.strip_suffix(";1") else { return false };
        let Some((base, ext)) = stem.split_once('.') else { return false };
        let d =
            |s: &str| s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        (1..=8).contains(&base.len()) && ext.len() <= 3 && d(base) && d(ext)
    };
    let dir_re = |n: &str| {
        (1..=8).contains(&n.len())
            && n.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    };
    let mut seen = BTreeSet::new();
    for e in &entries {
        match e.kind {
            Kind::Dir => assert!(dir_re(&e.name), "invalid directory name {:?}", e.name),
            _ => assert!(file_re(&e.name), "invalid file name {:?}", e.name),
        }
        let visible = e.name.trim_end_matches(";1").trim_end_matches('.').to_owned();
        assert!(seen.insert((e.dir.clone(), visible.clone())), "{}/{visible} twice", e.dir);
    }

    let count = |k: Kind| source.values().filter(|e| e.kind == k).count();
    let dirs = entries.iter().filter(|e| e.kind == Kind::Dir).count();
    let files = entries.iter().filter(|e| e.kind == Kind::File).count();
    assert_eq!(dirs, count(Kind::Dir), "every directory exactly once");
    // Symbolic links appear as empty files to a reader without Rock Ridge.
    assert_eq!(files, count(Kind::File) + count(Kind::Symlink), "every file exactly once");
    let mut sizes: Vec<u64> = source.values().filter_map(|e| e.size).collect();
    sizes.extend(std::iter::repeat_n(0, count(Kind::Symlink)));
    sizes.sort_unstable();
    let mut got: Vec<u64> =
        entries.iter().filter(|e| e.kind == Kind::File).map(|e| e.size).collect();
    got.sort_unstable();
    assert_eq!(got, sizes, "file sizes in the primary volume");
}

#[test]
fn volume_label_reads_back_exactly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut tree = IsoTree::new();
    tree.add_file_bytes("meta-data", b"instance-id: x\n".to_vec(), 0o644).expect("add");
    for label in ["cidata", "Mixed Case-1.2", "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"] {
        let image = tmp.path().join("label.iso");
        write_iso_file(&tree, &IsoOptions::new(label), &image).expect("write image");

        let info = common::run("isoinfo", &["-d", "-i", &image.to_string_lossy()]);
        let volume_id = info
            .lines()
            .find_map(|l| l.strip_prefix("Volume id: "))
            .expect("isoinfo -d prints the volume id");
        assert_eq!(volume_id, label);

        let probe = common::blkid(&image);
        assert_eq!(probe.get("TYPE").map(String::as_str), Some("iso9660"), "{probe:?}");
        assert_eq!(probe.get("LABEL").map(String::as_str), Some(label), "{probe:?}");
        assert!(!probe.contains_key("PTTYPE"), "no partition table expected: {probe:?}");
    }
}

#[test]
fn bsdtar_lists_modes_and_links() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut tree = IsoTree::new();
    tree.add_file_bytes("scripts/build.sh", b"#!/bin/sh\n".to_vec(), 0o755).expect("add");
    tree.add_symlink("build", "scripts/build.sh").expect("add");
    let image = tmp.path().join("t.iso");
    write_iso_file(&tree, &IsoOptions::new("cidata"), &image).expect("write image");

    let listing = common::run("bsdtar", &["-tvf", &image.to_string_lossy()]);
    let line = |suffix: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(suffix))
            .unwrap_or_else(|| panic!("bsdtar -tv lists no {suffix:?}:\n{listing}"))
    };
    assert!(line(" scripts/build.sh").starts_with("-rwxr-xr-x"), "{listing}");
    assert!(line(" build -> scripts/build.sh").starts_with("lrwxrwxrwx"), "{listing}");
}
