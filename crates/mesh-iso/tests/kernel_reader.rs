//! The Linux kernel as an independent reader of our images. This host's kernel has no iso9660
//! driver, so the reader is a Debian kernel booted under TCG (mesh-testkit): it mounts the
//! image read-only three ways and lists every entry, which must match the source tree:
//! with Rock Ridge, everything (names, modes, symlinks, contents); with `norock`, the Joliet
//! names and contents; with `norock,nojoliet`, every file exactly once under a valid name.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use mesh_iso::{write_iso_file, IsoOptions, IsoTree};
use mesh_testkit::{host_list, kernel_list, Arch, Entry};

fn source_tree(root: &Path) {
    let w = |p: &str, content: &[u8], mode: u32| {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, content).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    w("scripts/build.sh", b"#!/bin/sh\necho built\n", 0o755);
    w("README.md", b"read me\n", 0o644);
    w("private/key.txt", b"not secret\n", 0o600);
    w("src/a-rather-long-file-name-that-is-not-8.3.rs", b"fn main() {}\n", 0o644);
    w("src/UPPER_and_lower.TXT", b"mixed\n", 0o644);
    w("data/blob.bin", &(0..200_000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>(), 0o640);
    std::os::unix::fs::symlink("scripts/build.sh", root.join("build")).expect("symlink");
    std::os::unix::fs::symlink("../missing", root.join("src/dangling")).expect("symlink");
}

fn image(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let src = dir.join("src");
    std::fs::create_dir(&src).expect("mkdir");
    source_tree(&src);
    let iso = dir.join("out.iso");
    let tree = IsoTree::from_dir(&src).expect("tree");
    write_iso_file(&tree, &IsoOptions::new("cidata"), &iso).expect("write iso");
    (src, iso)
}

fn files(entries: &[Entry]) -> BTreeSet<(String, Option<String>)> {
    entries
        .iter()
        .filter(|e| e.kind == 'f')
        .map(|e| (e.path.to_lowercase(), e.sha256.clone()))
        .collect()
}

#[test]
fn kernel_reads_rock_ridge_exactly_like_the_source() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (src, iso) = image(tmp.path());
    let want = host_list(&src).expect("host listing");
    let got = kernel_list(Arch::X86_64, &iso, "iso9660", "ro").expect("kernel listing");
    assert_eq!(got, want);
}

#[test]
fn kernel_reads_joliet_and_plain_names_with_the_same_contents() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (src, iso) = image(tmp.path());
    let want = host_list(&src).expect("host listing");
    let want_files: BTreeSet<Option<String>> =
        want.iter().filter(|e| e.kind == 'f').map(|e| e.sha256.clone()).collect();

    // Joliet: full names (no symlinks: Joliet cannot hold them), the same contents.
    let joliet = kernel_list(Arch::X86_64, &iso, "iso9660", "ro,norock").expect("joliet listing");
    let want_names: BTreeSet<(String, Option<String>)> =
        want.iter().filter(|e| e.kind == 'f').map(|e| (e.path.clone(), e.sha256.clone())).collect();
    let joliet_names: BTreeSet<(String, Option<String>)> = joliet
        .iter()
        .filter(|e| e.kind == 'f')
        .map(|e| (e.path.clone(), e.sha256.clone()))
        .collect();
    assert_eq!(joliet_names, want_names);

    // Plain ISO9660: every file exactly once, under a valid 8.3-style name. Symlinks exist
    // only in Rock Ridge, so a plain reader sees each as an empty file (as with genisoimage).
    let plain =
        kernel_list(Arch::X86_64, &iso, "iso9660", "ro,norock,nojoliet").expect("plain listing");
    let plain_files: Vec<&Entry> = plain.iter().filter(|e| e.kind == 'f').collect();
    let links = want.iter().filter(|e| e.kind == 'l').count();
    let regular = want.iter().filter(|e| e.kind == 'f').count();
    assert_eq!(plain_files.len(), regular + links, "{plain:?}");
    let plain_hashes: BTreeSet<Option<String>> =
        plain_files.iter().filter(|e| e.size > 0).map(|e| e.sha256.clone()).collect();
    assert_eq!(plain_hashes, want_files);
    for e in plain_files {
        let name = e.path.rsplit('/').next().expect("name");
        let (stem, ext) = name.split_once('.').unwrap_or((name, ""));
        assert!(stem.len() <= 8 && ext.len() <= 3, "not 8.3: {}", e.path);
    }
    assert!(!files(&plain).is_empty());
}
