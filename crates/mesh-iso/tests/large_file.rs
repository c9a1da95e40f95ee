//! A file of 4 GiB + 1 byte (sparse on disk) becomes a multi-extent file that readers see
//! whole: right size, first and last bytes where they belong.

mod common;

use std::fs;
use std::io::{Seek, SeekFrom, Write};

use common::Kind;
use mesh_iso::{write_iso_file, IsoOptions, IsoTree};

const SIZE: u64 = 4 * 1024 * 1024 * 1024 + 1;

#[test]
fn file_over_4_gib_is_written_as_multi_extent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    fs::create_dir(&src).expect("mkdir");
    let mut huge = fs::File::create(src.join("huge.bin")).expect("create");
    huge.write_all(b"A").expect("write first byte");
    huge.seek(SeekFrom::Start(SIZE - 1)).expect("seek");
    huge.write_all(b"Z").expect("write last byte");
    drop(huge);
    fs::write(src.join("after.txt"), b"small\n").expect("write");

    let image = tmp.path().join("big.iso");
    let tree = IsoTree::from_dir(&src).expect("tree");
    write_iso_file(&tree, &IsoOptions::new("BIG"), &image).expect("write image");

    // libisofs joins the extents.
    let listing = common::xorriso_listing(&image);
    assert_eq!(listing["huge.bin"].size, Some(SIZE), "{listing:?}");
    assert_eq!(listing["after.txt"].size, Some(6));

    // libarchive too.
    let tv = common::run("bsdtar", &["-tvf", &image.to_string_lossy()]);
    let line = tv.lines().find(|l| l.ends_with(" huge.bin")).expect("bsdtar lists huge.bin");
    assert!(line.split_whitespace().any(|f| f == SIZE.to_string()), "{line}");

    // isoinfo shows the records: several extents of one name adding up to the size, both
    // with Rock Ridge and in the plain primary volume.
    for extra in [&["-R"][..], &[][..]] {
        let entries = common::isoinfo_entries(&image, extra);
        let parts: Vec<_> = entries
            .iter()
            .filter(|e| e.kind == Kind::File && e.name.to_lowercase().starts_with("huge.bin"))
            .collect();
        assert!(parts.len() >= 2, "multi-extent records expected: {parts:?}");
        assert_eq!(parts.iter().map(|e| e.size).sum::<u64>(), SIZE);
        // Extents are contiguous: each starts where the previous one's sectors end.
        for pair in parts.windows(2) {
            assert_eq!(pair[1].lba, pair[0].lba + pair[0].size.div_ceil(2048));
        }
    }

    // The first and last bytes come back through libisofs' reader.
    let img = image.to_string_lossy();
    for (offset, want) in [(0u64, b"A"), (SIZE - 1, b"Z")] {
        let out = tmp.path().join(format!("cut-{offset}"));
        common::run(
            "xorriso",
            &[
                "-abort_on",
                "FAILURE",
                "-indev",
                &img,
                "-osirrox",
                "on",
                "-extract_cut",
                "/huge.bin",
                &offset.to_string(),
                "1",
                &out.to_string_lossy(),
            ],
        );
        assert_eq!(fs::read(&out).expect("read cut"), want, "byte at {offset}");
    }
}
