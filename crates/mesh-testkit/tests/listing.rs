//! The kernel reader against images made by independent tools (`mke2fs -d`, `mkfs.vfat` +
//! `mcopy`, `genisoimage -R`), compared with `host_list` of the source tree: every entry's
//! kind, mode, size, link target and content hash.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use mesh_testkit::{host_list, kernel_list, Arch, Entry};

/// A small tree with the cases readers get wrong: modes beyond 0644/0755, setuid, empty and
/// multi-block files, spaces and non-ASCII in names, deep nesting; symlinks if `links`.
fn source_tree(root: &Path, links: bool) {
    let file = |relative: &str, contents: &[u8], mode: u32| {
        let path = root.join(relative);
        fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        fs::write(&path, contents).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
    };
    file("README.md", b"# readme\n", 0o644);
    file("scripts/build.sh", b"#!/bin/sh\necho build\n", 0o755);
    file("secret/key", b"not really\n", 0o600);
    file("empty", b"", 0o644);
    file("with space.txt", "ünïcödé\n".as_bytes(), 0o640);
    file("Größe.bin", &(0..70_000u32).map(|i| (i % 253) as u8).collect::<Vec<_>>(), 0o644);
    file("a/b/c/d/e/f/g/h/i/deep.txt", b"nine levels down\n", 0o444);
    fs::set_permissions(root.join("secret"), fs::Permissions::from_mode(0o700)).expect("chmod");
    if links {
        file("tool", b"\x7fELF pretend\n", 0o4755);
        symlink("scripts/build.sh", root.join("build")).expect("symlink");
        symlink("../README.md", root.join("scripts/readme")).expect("symlink");
        symlink("does/not/exist", root.join("dangling")).expect("symlink");
    }
}

fn run(command: &mut Command) {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program} (is it installed?): {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn ext2_image(source: &Path, dir: &Path) -> PathBuf {
    let image = dir.join("tree.ext2");
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext2", "-b", "1024", "-d"])
        .arg(source)
        .arg(&image)
        .arg("4M"));
    image
}

fn without_lost_and_found(entries: Vec<Entry>) -> Vec<Entry> {
    // mke2fs always adds lost+found; it is not part of the source tree.
    entries.into_iter().filter(|entry| entry.path != "lost+found").collect()
}

fn ext2_listing_matches_the_source_tree(arch: Arch) {
    let work = tempfile::tempdir().expect("temp dir");
    let source = work.path().join("src");
    source_tree(&source, true);
    // Only ext2 among the producers here stores a newline in a name; the reader must cope.
    fs::write(source.join("line\nbreak"), b"odd name\n").expect("write");
    let image = ext2_image(&source, work.path());

    let seen = kernel_list(arch, &image, "ext2", "ro").expect("kernel lists the image");
    let expected = host_list(&source).expect("host lists the source");
    assert_eq!(expected.len(), 23, "the source tree is what the test means it to be");
    assert_eq!(without_lost_and_found(seen), expected);
}

#[test]
fn x86_64_kernel_lists_an_ext2_image_like_the_source_tree() {
    ext2_listing_matches_the_source_tree(Arch::X86_64);
}

#[test]
fn aarch64_kernel_lists_an_ext2_image_like_the_source_tree() {
    ext2_listing_matches_the_source_tree(Arch::Aarch64);
}

#[test]
fn kernel_lists_a_vfat_image_made_by_mtools() {
    let work = tempfile::tempdir().expect("temp dir");
    let source = work.path().join("src");
    source_tree(&source, false);
    let image = work.path().join("tree.vfat");
    run(Command::new("mkfs.vfat").args(["-C", "-n", "TESTVOL"]).arg(&image).arg("4096"));
    let mut copy = Command::new("mcopy");
    copy.arg("-s").arg("-i").arg(&image);
    for child in fs::read_dir(&source).expect("read source") {
        copy.arg(child.expect("entry").path());
    }
    run(copy.arg("::/"));

    let seen = kernel_list(Arch::X86_64, &image, "vfat", "ro,fmask=0133,dmask=0022")
        .expect("kernel lists the image");
    // FAT keeps no modes: the mount options decide them.
    let expected: Vec<Entry> = host_list(&source)
        .expect("host lists the source")
        .into_iter()
        .map(|entry| Entry { mode: if entry.kind == 'd' { 0o755 } else { 0o644 }, ..entry })
        .collect();
    assert_eq!(seen, expected);
}

#[test]
fn kernel_lists_a_rock_ridge_iso_made_by_genisoimage() {
    let work = tempfile::tempdir().expect("temp dir");
    let source = work.path().join("src");
    source_tree(&source, true);
    let image = work.path().join("tree.iso");
    run(Command::new("genisoimage")
        .args(["-quiet", "-R", "-J", "-V", "cidata", "-o"])
        .arg(&image)
        .arg(&source));

    let seen = kernel_list(Arch::X86_64, &image, "iso9660", "ro").expect("kernel lists the image");
    // Rock Ridge keeps modes and links; genisoimage -R keeps the source's own modes. The tree
    // is nine levels deep, so genisoimage relocates the deepest directory into `rr_moved`;
    // the kernel shows it back in place but still lists the (then empty) `rr_moved` itself.
    let rr_moved = seen.iter().find(|entry| entry.path == "rr_moved").cloned();
    assert_eq!(rr_moved.map(|entry| entry.kind), Some('d'), "genisoimage relocated a directory");
    let seen: Vec<Entry> = seen.into_iter().filter(|entry| entry.path != "rr_moved").collect();
    assert_eq!(seen, host_list(&source).expect("host lists the source"));

    let plain = kernel_list(Arch::X86_64, &image, "iso9660", "ro,norock,nojoliet")
        .expect("kernel lists the image without extensions");
    assert!(plain.iter().all(|entry| entry.kind != 'l'), "no symlinks without Rock Ridge");
    // Primary-volume names only, which the kernel shows lower-cased (map=normal).
    let paths: Vec<&str> = plain.iter().map(|entry| entry.path.as_str()).collect();
    assert!(paths.contains(&"readme.md"), "{paths:?}");
    assert!(!paths.contains(&"with space.txt"), "no long names without Joliet: {paths:?}");
}
