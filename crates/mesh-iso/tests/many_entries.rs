//! Trees described from disk keep their files and links in a temporary catalog and are
//! listed one directory at a time while written. A tree of some thousands of entries
//! exercises that: a directory of thousands of files whose 8.3 names collide, hundreds of
//! small directories, a branch deeper than ISO 9660 allows, and two grafts merged into one
//! directory. Independent readers must read back exactly the source.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use common::{Compare, Kind, Listing};
use mesh_iso::{write_iso_file, IsoOptions, IsoTree};

const BIG_DIR_FILES: usize = 3000;

fn make_source(root: &Path) {
    let big = root.join("pool");
    fs::create_dir_all(&big).expect("mkdir");
    for i in 0..BIG_DIR_FILES {
        // All of them are PACKAGE_.DEB before collisions are resolved.
        let name = format!("package-with-a-long-name_{i:05}.deb");
        fs::write(big.join(name), format!("{i}\n").repeat(i % 7)).expect("write");
    }
    for d in 0..300 {
        let dir = root.join(format!("tree/group-{:02}/dir-{d:03}", d / 30));
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("README"), format!("{d}\n")).expect("write");
        fs::write(dir.join(".hidden"), b"").expect("write");
        symlink("README", dir.join("readme-link")).expect("symlink");
    }
    let deep = root.join("a/b/c/d/e/f/g/h/i/j/k");
    fs::create_dir_all(&deep).expect("mkdir");
    fs::write(deep.join("bottom.txt"), b"bottom\n").expect("write");
}

/// A second tree grafted onto `pool`: more files in the same directory.
fn make_extra(root: &Path) {
    fs::create_dir_all(root).expect("mkdir");
    for i in 0..200 {
        fs::write(root.join(format!("extra-{i:03}.deb")), b"extra\n").expect("write");
    }
}

fn expected(src: &Path, extra: &Path) -> Listing {
    let mut want = common::walk(src);
    for (path, entry) in common::walk(extra) {
        want.insert(format!("pool/{path}"), entry);
    }
    want
}

#[test]
fn thousands_of_entries_read_back_whole() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (src, extra) = (tmp.path().join("src"), tmp.path().join("extra"));
    make_source(&src);
    make_extra(&extra);
    // The graft gives `pool` the attributes of `extra`; make them agree with the source.
    fs::set_permissions(&extra, fs::metadata(src.join("pool")).expect("stat").permissions())
        .expect("chmod");

    let mut tree = IsoTree::from_dir(&src).expect("describe");
    tree.add_dir_from_disk("pool", &extra).expect("second graft");
    let image = tmp.path().join("many.iso");
    write_iso_file(&tree, &IsoOptions::new("MANY"), &image).expect("write");
    let want = expected(&src, &extra);

    // libisofs, extracting (Rock Ridge, relocation undone): everything.
    let ex = tmp.path().join("osirrox");
    common::osirrox_extract(&image, &ex);
    let mut got = common::walk(&ex);
    got.remove("rr_moved").expect("osirrox shows the (empty) rr_moved");
    common::assert_same("osirrox -extract", &want, &got, Compare::ALL);

    // libarchive, extracting.
    let ex = tmp.path().join("bsdtar");
    common::bsdtar_extract(&image, &ex);
    common::assert_same("bsdtar -x", &want, &common::walk(&ex), Compare::ALL);

    // Joliet: every file and directory once (no symbolic links), under its own name.
    let joliet: BTreeSet<String> = common::isoinfo_entries(&image, &["-J"])
        .into_iter()
        .map(|e| if e.dir.is_empty() { e.name } else { format!("{}/{}", e.dir, e.name) })
        .collect();
    let want_joliet: BTreeSet<String> =
        want.iter().filter(|(_, e)| e.kind != Kind::Symlink).map(|(p, _)| p.clone()).collect();
    assert_eq!(joliet, want_joliet);

    // Plain ISO 9660: the pool's files under unique 8.3 names.
    let plain: Vec<_> = common::isoinfo_entries(&image, &[])
        .into_iter()
        .filter(|e| e.dir == "POOL" && e.kind == Kind::File)
        .collect();
    assert_eq!(plain.len(), BIG_DIR_FILES + 200);
    let names: BTreeSet<&str> = plain.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names.len(), plain.len(), "8.3 names are unique");
}
