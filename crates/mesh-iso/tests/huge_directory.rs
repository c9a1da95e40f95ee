//! One directory of 100,000 entries, described and written with so little sort memory that
//! every sort of it goes through temporary files: independent readers must list exactly
//! the source's entries, and the image must be the bytes that sorting in memory gives.
//!
//! Memory itself is not asserted here; `cargo xtask bench iso` measures it.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use common::{Compare, Kind};
use mesh_iso::{write_iso_file, IsoOptions, IsoTree};

const ENTRIES: usize = 100_000;

/// Asserts that a reader lists exactly the expected names, showing the first differences
/// rather than two sets of 100,000 names.
fn assert_same_names(reader: &str, want: &BTreeSet<String>, got: &BTreeSet<String>) {
    let missing: Vec<&String> = want.difference(got).take(10).collect();
    let unexpected: Vec<&String> = got.difference(want).take(10).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "{reader}: {} listed, {} expected; missing {missing:?}, unexpected {unexpected:?}",
        got.len(),
        want.len()
    );
}

/// `pool`: mostly empty files whose 8.3 names all collide (suffixes up to six digits),
/// with some contents, subdirectories, symbolic links, non-ASCII names and natural names
/// shaped like suffixed ones; and a small directory beside it.
fn make_source(root: &Path) {
    let pool = root.join("pool");
    fs::create_dir_all(&pool).expect("mkdir");
    for i in 0..ENTRIES {
        let name = match i % 1000 {
            0 => format!("dir-{i:06}"),
            1 => format!("link-{i:06}"),
            2 => format!("paquet-été-{i:06}.deb"),
            3 => format!("PACKAGE_{}.DEB", i / 1000 + 1),
            _ => format!("package-with-a-long-name-{i:06}.deb"),
        };
        let path = pool.join(&name);
        match i % 1000 {
            0 => {
                fs::create_dir(&path).expect("mkdir");
                fs::write(path.join("inside"), b"inside\n").expect("write");
            }
            1 => symlink(format!("package-with-a-long-name-{:06}.deb", i + 3), &path)
                .expect("symlink"),
            n if n % 97 == 0 => fs::write(&path, format!("{i}\n")).expect("write"),
            _ => drop(fs::File::create(&path).expect("create")),
        }
    }
    fs::create_dir_all(root.join("small")).expect("mkdir");
    fs::write(root.join("small/readme"), b"small\n").expect("write");
}

fn describe(src: &Path, sort_memory: usize) -> IsoTree {
    let mut tree = IsoTree::new();
    tree.set_sort_memory(sort_memory);
    tree.add_dir_from_disk("", src).expect("describe");
    tree
}

#[test]
fn a_directory_of_100k_entries_sorted_on_disk_reads_back_whole() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    make_source(&src);
    let mut opts = IsoOptions::new("HUGE");
    opts.timestamp = Some(1_700_000_000);

    let image = tmp.path().join("spilled.iso");
    write_iso_file(&describe(&src, 64 * 1024), &opts, &image).expect("write spilled");
    let in_memory = tmp.path().join("in-memory.iso");
    write_iso_file(&describe(&src, usize::MAX), &opts, &in_memory).expect("write in memory");
    assert!(
        fs::read(&image).expect("read") == fs::read(&in_memory).expect("read"),
        "sorting on disk changed the image"
    );
    fs::remove_file(&in_memory).expect("rm");

    let want = common::walk(&src);
    assert_eq!(want.keys().filter(|p| p.starts_with("pool/")).count(), ENTRIES + 100);

    // Rock Ridge through isoinfo: every path, type, mode, size and link target.
    let rr = common::isoinfo_listing(&common::isoinfo_entries(&image, &["-R"]));
    let what = Compare { owner: false, content: false, mtime: false, ..Compare::ALL };
    common::assert_same("isoinfo -R", &want, &rr, what);

    // libisofs: every path once.
    let listed = common::run(
        "xorriso",
        &["-abort_on", "FAILURE", "-indev", &image.to_string_lossy(), "-find", "/"],
    );
    let xorriso: BTreeSet<String> = listed
        .lines()
        .map(|l| l.trim().trim_matches('\'').trim_start_matches('/').to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    assert_eq!(listed.lines().count(), want.len() + 1, "xorriso lists each path once");
    assert_same_names("xorriso -find", &want.keys().cloned().collect(), &xorriso);

    // Joliet: every file and directory under its own name, no links. isoinfo prints Joliet
    // names in Latin-1, which reads back as U+FFFD for each non-ASCII character.
    let joliet: BTreeSet<String> = common::isoinfo_entries(&image, &["-J"])
        .into_iter()
        .map(|e| if e.dir.is_empty() { e.name } else { format!("{}/{}", e.dir, e.name) })
        .collect();
    let want_joliet: BTreeSet<String> = want
        .iter()
        .filter(|(_, e)| e.kind != Kind::Symlink)
        .map(|(p, _)| p.chars().map(|c| if c.is_ascii() { c } else { '\u{fffd}' }).collect())
        .collect();
    assert_same_names("isoinfo -J", &want_joliet, &joliet);

    // Plain ISO 9660: one unique 8.3 name per entry of the pool.
    let plain: Vec<String> = common::isoinfo_entries(&image, &[])
        .into_iter()
        .filter(|e| e.dir == "POOL")
        .map(|e| e.name.trim_end_matches(";1").trim_end_matches('.').to_owned())
        .collect();
    assert_eq!(plain.len(), ENTRIES);
    assert_eq!(plain.iter().collect::<BTreeSet<_>>().len(), ENTRIES, "8.3 names are unique");
}
