//! Same input and same fixed timestamp give the same bytes; the timestamp is what every
//! reader then reports.

mod common;

use std::fs;
use std::os::unix::fs::symlink;

use mesh_iso::{write_iso, write_iso_file, IsoOptions, IsoTree};

fn source_tree(root: &std::path::Path) -> IsoTree {
    fs::create_dir_all(root.join("a/b")).expect("mkdir");
    fs::write(root.join("a/b/c.txt"), b"c\n").expect("write");
    fs::write(root.join("top"), vec![7u8; 5000]).expect("write");
    symlink("a/b/c.txt", root.join("link")).expect("symlink");
    let mut tree = IsoTree::from_dir(root).expect("tree");
    tree.add_file_bytes("generated/meta-data", b"instance-id: i\n".to_vec(), 0o644).expect("add");
    tree
}

#[test]
fn two_writes_with_a_fixed_timestamp_are_identical() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = source_tree(&tmp.path().join("src"));
    let mut opts = IsoOptions::new("cidata");
    opts.timestamp = Some(1_234_567_890);

    let first = tmp.path().join("first.iso");
    write_iso_file(&tree, &opts, &first).expect("write");
    // Let the wall clock move on, so a leaked "now" would show.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut second = Vec::new();
    write_iso(&tree, &opts, &mut second).expect("write");
    assert!(fs::read(&first).expect("read") == second, "images differ");

    // A different timestamp must change the bytes: the option is really used.
    opts.timestamp = Some(1_234_567_891);
    let mut third = Vec::new();
    write_iso(&tree, &opts, &mut third).expect("write");
    assert!(third != second, "timestamp did not reach the image");
}

#[test]
fn fixed_timestamp_is_what_readers_report() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = source_tree(&tmp.path().join("src"));
    let mut opts = IsoOptions::new("cidata");
    opts.timestamp = Some(1_234_567_890); // 2009-02-13T23:31:30Z
    let image = tmp.path().join("t.iso");
    write_iso_file(&tree, &opts, &image).expect("write");

    let ex = tmp.path().join("ex");
    common::osirrox_extract(&image, &ex);
    let listing = common::walk(&ex);
    assert!(!listing.is_empty());
    for (path, e) in &listing {
        if let Some(mtime) = e.mtime {
            assert_eq!(mtime, 1_234_567_890, "{path}");
        }
    }
    let probe = common::blkid(&image);
    assert_eq!(probe.get("UUID").map(String::as_str), Some("2009-02-13-23-31-30-00"), "{probe:?}");
}
