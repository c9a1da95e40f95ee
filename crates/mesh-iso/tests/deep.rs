//! Trees deeper than ISO 9660's eight levels: relocated with Rock Ridge (and read back
//! whole by libisofs and libarchive), refused without it.

mod common;

use std::fs;

use common::{Compare, Kind};
use mesh_iso::{write_iso_file, IsoOptions, IsoTree, WriteError};

/// Twelve directory levels below the root, with files at several depths.
fn deep_source(root: &std::path::Path) {
    let mut dir = root.to_path_buf();
    for level in 1..=12 {
        dir = dir.join(format!("level-{level:02}"));
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join(format!("file-at-{level}.txt")), format!("depth {level}\n"))
            .expect("write");
    }
    fs::create_dir_all(
        root.join(
            "level-01/level-02/level-03/level-04/level-05/level-06/level-07/level-08/sibling/x",
        ),
    )
    .expect("mkdir");
}

#[test]
fn twelve_levels_read_back_whole() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    deep_source(&src);
    let image = tmp.path().join("deep.iso");
    write_iso_file(&IsoTree::from_dir(&src).expect("tree"), &IsoOptions::new("deep"), &image)
        .expect("write");
    let source = common::walk(&src);

    // libarchive undoes the relocation completely.
    let ex = tmp.path().join("bsdtar");
    common::bsdtar_extract(&image, &ex);
    common::assert_same("bsdtar -x", &source, &common::walk(&ex), Compare::ALL);

    // libisofs puts every directory back in place and, like for genisoimage's images,
    // keeps the (then empty) relocation directory visible.
    let ex = tmp.path().join("osirrox");
    common::osirrox_extract(&image, &ex);
    let mut got = common::walk(&ex);
    let moved = got.remove("rr_moved").expect("osirrox shows rr_moved");
    assert_eq!(moved.kind, Kind::Dir);
    assert!(got.keys().all(|p| !p.starts_with("rr_moved/")), "rr_moved is empty");
    common::assert_same("osirrox -extract", &source, &got, Compare::ALL);

    // The plain primary volume has every file exactly once, at most 8 levels deep.
    let plain = common::isoinfo_entries(&image, &[]);
    let files = plain.iter().filter(|e| e.kind == Kind::File).count();
    let source_files = source.values().filter(|e| e.kind == Kind::File).count();
    let relocated = plain.iter().filter(|e| e.dir == "RR_MOVED" && e.kind == Kind::Dir).count();
    assert!(relocated >= 1, "deep directories are relocated into RR_MOVED");
    // Each relocated directory leaves an empty placeholder file at its old place.
    assert_eq!(files, source_files + relocated);
    for e in plain.iter().filter(|e| e.kind == Kind::Dir) {
        // The root is level 1, its entries level 2.
        let level = if e.dir.is_empty() { 2 } else { e.dir.split('/').count() + 2 };
        assert!(level <= 8, "{}/{} is at level {level}", e.dir, e.name);
    }
}

#[test]
fn deep_tree_without_rock_ridge_is_refused_naming_the_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    deep_source(&src);
    let mut opts = IsoOptions::new("deep");
    opts.rock_ridge = false;
    let image = tmp.path().join("deep.iso");
    let err = write_iso_file(&IsoTree::from_dir(&src).expect("tree"), &opts, &image)
        .expect_err("needs relocation");
    assert!(
        matches!(&err, WriteError::RelocateDirectory { path } if path.ends_with("level-07/level-08")),
        "{err}"
    );
    assert!(!image.exists(), "nothing left at the output path");
}
