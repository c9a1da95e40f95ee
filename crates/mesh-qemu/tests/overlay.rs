//! Overlays checked by QEMU's own tools: `qemu-img check`, `qemu-img info` and `qemu-io`,
//! always run from a working directory other than the images' so that only an absolute
//! backing path can work.

use std::path::Path;
use std::process::{Command, Output};

use mesh_qemu::{create_overlay, probe_format, ImageFormat};
use serde_json::Value;

fn run(program: &str, args: &[&str], cwd: &Path) -> Output {
    let output = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("{program} is needed for this test (qemu-utils): {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Checks an overlay made over `base` with qemu-img and qemu-io; `size` is the base's
/// virtual size.
fn check_overlay(base: &Path, size: u64) {
    let images = base.parent().expect("base is in a directory");
    let elsewhere = tempfile::tempdir().expect("a second temporary directory");
    let overlay = images.join("node.qcow2");
    create_overlay(base, &overlay).expect("create overlay");
    let base_format = probe_format(base).expect("probe base");

    let check = run("qemu-img", &["check", "--output=json", path_str(&overlay)], elsewhere.path());
    let check: Value = serde_json::from_slice(&check.stdout).expect("qemu-img check JSON");
    assert_eq!(check["check-errors"], 0, "{check}");
    assert_eq!(check.get("leaks"), None, "{check}");
    assert_eq!(check.get("corruptions"), None, "{check}");

    let info = run(
        "qemu-img",
        &["info", "--backing-chain", "--output=json", path_str(&overlay)],
        elsewhere.path(),
    );
    let chain: Value = serde_json::from_slice(&info.stdout).expect("qemu-img info JSON");
    let top = &chain[0];
    let canonical_base = base.canonicalize().expect("base exists");
    assert_eq!(top["format"], "qcow2");
    assert_eq!(top["virtual-size"], size);
    assert_eq!(top["backing-filename"], path_str(&canonical_base));
    assert_eq!(top["full-backing-filename"], path_str(&canonical_base));
    assert_eq!(top["backing-filename-format"], base_format.as_str());
    assert_eq!(top["format-specific"]["data"]["compat"], "1.1", "qcow2 version 3");
    assert_eq!(chain[1]["format"], base_format.as_str());
    assert_eq!(chain[1]["filename"], path_str(&canonical_base));

    // A guest write lands in the overlay and reads back through it; the base keeps its
    // bytes (zeros at offset 0, 0x5a further on from the fill below).
    let base_before = std::fs::read(base).expect("read base");
    let overlay_arg = path_str(&overlay);
    run("qemu-io", &["-c", "write -P 0xab 0 64k", overlay_arg], elsewhere.path());
    run("qemu-io", &["-c", "read -P 0xab 0 64k", overlay_arg], elsewhere.path());
    run("qemu-io", &["-c", "read -P 0x5a 1M 64k", overlay_arg], elsewhere.path());
    assert_eq!(std::fs::read(base).expect("read base"), base_before, "base was modified");
    let check = run("qemu-img", &["check", overlay_arg], elsewhere.path());
    assert!(String::from_utf8_lossy(&check.stdout).contains("No errors"));
}

/// A base whose first MiB is zero and whose second MiB is 0x5a, so reads through the
/// overlay can tell base data from nothing.
fn raw_base(dir: &Path, size: u64) -> std::path::PathBuf {
    let base = dir.join("base.raw.qcow2"); // a misleading extension: format comes from magic
    let mut bytes = vec![0u8; size as usize];
    bytes[1 << 20..2 << 20].fill(0x5a);
    std::fs::write(&base, bytes).expect("write raw base");
    base
}

#[test]
fn overlay_over_a_raw_base_passes_qemu_img_check_and_records_the_absolute_backing() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let base = raw_base(dir.path(), 3 << 20);
    assert_eq!(probe_format(&base).expect("probe"), ImageFormat::Raw);
    check_overlay(&base, 3 << 20);
}

#[test]
fn overlay_over_a_qcow2_base_passes_qemu_img_check_and_records_the_absolute_backing() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let raw = raw_base(dir.path(), 3 << 20);
    // Made by qemu-img, an independent writer; the `.img` extension must not matter.
    let base = dir.path().join("base.img");
    let (raw_arg, base_arg) = (path_str(&raw), path_str(&base));
    run("qemu-img", &["convert", "-f", "raw", "-O", "qcow2", raw_arg, base_arg], dir.path());
    run("qemu-img", &["resize", "-f", "qcow2", base_arg, "5G"], dir.path());
    assert_eq!(probe_format(&base).expect("probe"), ImageFormat::Qcow2);
    check_overlay(&base, 5 << 30);
}

#[test]
fn overlay_of_an_overlay_chains_three_deep() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let base = raw_base(dir.path(), 2 << 20);
    let middle = dir.path().join("middle");
    create_overlay(&base, &middle).expect("first overlay");
    check_overlay(&middle, 2 << 20);
}

#[test]
fn relative_backing_path_is_recorded_absolute() {
    // The test process's working directory is the crate; give a path relative to it.
    let cwd = std::env::current_dir().expect("working directory");
    let dir = tempfile::tempdir_in(&cwd).expect("a temporary directory below the crate");
    let base = raw_base(dir.path(), 1 << 21);
    let relative = base.strip_prefix(&cwd).expect("below the working directory");
    assert!(relative.is_relative());
    let overlay = dir.path().join("rel.qcow2");
    create_overlay(relative, &overlay).expect("create overlay");

    let elsewhere = tempfile::tempdir().expect("another directory");
    let info = run("qemu-img", &["info", "--output=json", path_str(&overlay)], elsewhere.path());
    let info: Value = serde_json::from_slice(&info.stdout).expect("qemu-img info JSON");
    assert_eq!(info["backing-filename"], path_str(&base.canonicalize().expect("exists")));
}

#[test]
fn odd_sized_raw_base_rounds_up_to_a_whole_sector_like_qemu_does() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let base = dir.path().join("odd");
    std::fs::write(&base, vec![1u8; 1000]).expect("write base");
    let overlay = dir.path().join("odd.qcow2");
    create_overlay(&base, &overlay).expect("create overlay");
    let ours = run("qemu-img", &["info", "--output=json", path_str(&overlay)], dir.path());
    let theirs =
        run("qemu-img", &["info", "--output=json", "-f", "raw", path_str(&base)], dir.path());
    let ours: Value = serde_json::from_slice(&ours.stdout).expect("JSON");
    let theirs: Value = serde_json::from_slice(&theirs.stdout).expect("JSON");
    assert_eq!(ours["virtual-size"], theirs["virtual-size"]);
}

#[test]
fn existing_overlay_is_replaced_whole() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let base = raw_base(dir.path(), 2 << 20);
    let overlay = dir.path().join("node.qcow2");
    std::fs::write(&overlay, vec![0xffu8; 1 << 20]).expect("write junk");
    create_overlay(&base, &overlay).expect("create overlay");
    run("qemu-img", &["check", path_str(&overlay)], dir.path());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .filter(|name| name.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}
