//! Bad input gives a typed error naming the offending path, and never leaves a file at
//! the output path.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;

use mesh_iso::{write_iso_file, IsoOptions, IsoTree, TreeError, WriteError};

#[test]
fn fifo_socket_and_device_are_refused_by_name() {
    let tmp = tempfile::tempdir().expect("tempdir");

    let fifo_dir = tmp.path().join("fifo");
    fs::create_dir(&fifo_dir).expect("mkdir");
    let status = Command::new("mkfifo").arg(fifo_dir.join("pipe")).status().expect("run mkfifo");
    assert!(status.success());
    let err = IsoTree::from_dir(&fifo_dir).expect_err("FIFO refused");
    assert!(
        matches!(&err, TreeError::SpecialFile { path, kind: "FIFO" } if path.ends_with("pipe")),
        "{err}"
    );
    assert!(err.to_string().contains("pipe"), "{err}");

    let sock_dir = tmp.path().join("sock");
    fs::create_dir(&sock_dir).expect("mkdir");
    let _listener = UnixListener::bind(sock_dir.join("control.sock")).expect("bind");
    let err = IsoTree::from_dir(&sock_dir).expect_err("socket refused");
    assert!(matches!(&err, TreeError::SpecialFile { kind: "socket", .. }), "{err}");
    assert!(err.to_string().contains("control.sock"), "{err}");

    let err =
        IsoTree::new().add_file_from_disk("null", Path::new("/dev/null")).expect_err("device");
    assert!(matches!(&err, TreeError::SpecialFile { kind: "character device", .. }), "{err}");
    assert!(err.to_string().contains("/dev/null"), "{err}");
}

#[test]
fn non_utf8_name_is_refused_by_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = tmp.path().join(OsStr::from_bytes(b"caf\xe9.txt"));
    fs::write(&bad, b"x").expect("write");
    let err = IsoTree::from_dir(tmp.path()).expect_err("non-UTF-8 refused");
    assert!(matches!(&err, TreeError::NonUtf8Name { path } if *path == bad), "{err}");
    assert!(err.to_string().contains("caf"), "{err}");
}

#[test]
fn missing_and_vanished_files_are_refused_by_name_and_leave_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = IsoTree::new()
        .add_file_from_disk("x", &tmp.path().join("absent"))
        .expect_err("missing file");
    assert!(matches!(&err, TreeError::Stat { path, .. } if path.ends_with("absent")), "{err}");

    // Readable when described, gone when written: the write fails naming it, and neither
    // the image nor the temporary file remains.
    let src = tmp.path().join("will-vanish");
    fs::write(&src, b"data").expect("write");
    let mut tree = IsoTree::new();
    tree.add_file_from_disk("f", &src).expect("add");
    fs::remove_file(&src).expect("remove");
    let out_dir = tmp.path().join("out");
    fs::create_dir(&out_dir).expect("mkdir");
    let image = out_dir.join("x.iso");
    let err = write_iso_file(&tree, &IsoOptions::new("x"), &image).expect_err("vanished file");
    assert!(matches!(&err, WriteError::OpenFile { path, .. } if *path == src), "{err}");
    assert!(err.to_string().contains("will-vanish"), "{err}");
    assert_eq!(fs::read_dir(&out_dir).expect("ls").count(), 0, "output directory left empty");

    // A file that changed size between describing and writing is not silently truncated.
    fs::write(&src, b"data").expect("write");
    let mut tree = IsoTree::new();
    tree.add_file_from_disk("f", &src).expect("add");
    fs::write(&src, b"more data now").expect("grow");
    let err = write_iso_file(&tree, &IsoOptions::new("x"), &image).expect_err("grown file");
    assert!(matches!(&err, WriteError::CheckFileSize { expected: 4, found: 13, .. }), "{err}");
    assert_eq!(fs::read_dir(&out_dir).expect("ls").count(), 0, "output directory left empty");
}

#[test]
fn existing_output_survives_a_failed_write() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = tmp.path().join("keep.iso");
    fs::write(&image, b"previous image").expect("write");
    let mut tree = IsoTree::new();
    tree.add_file_from_disk("f", &tmp.path().join("keep.iso")).expect("add");
    fs::write(&image, b"previous image, longer now").expect("write");
    write_iso_file(&tree, &IsoOptions::new("x"), &image).expect_err("size changed");
    assert_eq!(fs::read(&image).expect("read"), b"previous image, longer now");
}

#[test]
fn joliet_collisions_are_refused_naming_both_paths() {
    let mut tree = IsoTree::new();
    tree.add_file_bytes("dir/what:is", Vec::new(), 0o644).expect("add");
    tree.add_file_bytes("dir/what?is", Vec::new(), 0o644).expect("add");
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = tmp.path().join("j.iso");
    let err = write_iso_file(&tree, &IsoOptions::new("x"), &image).expect_err("collision");
    assert!(
        matches!(&err, WriteError::MapJolietName { first, second }
            if first == "dir/what:is" && second == "dir/what?is"),
        "{err}"
    );
    assert!(!image.exists());

    let mut tree = IsoTree::new();
    let stem = "s".repeat(70);
    tree.add_file_bytes(&format!("{stem}-one"), Vec::new(), 0o644).expect("add");
    tree.add_file_bytes(&format!("{stem}-two"), Vec::new(), 0o644).expect("add");
    let err = write_iso_file(&tree, &IsoOptions::new("x"), &image).expect_err("collision");
    assert!(matches!(&err, WriteError::MapJolietName { .. }), "{err}");

    // Without Joliet the same tree is fine (primary names get suffixes).
    let mut opts = IsoOptions::new("x");
    opts.joliet = false;
    write_iso_file(&tree, &opts, &image).expect("no Joliet, no collision");
}

#[test]
fn bad_labels_are_refused() {
    let tree = IsoTree::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = tmp.path().join("l.iso");
    for label in ["x".repeat(33), "naïve".to_owned(), "tab\there".to_owned()] {
        let err =
            write_iso_file(&tree, &IsoOptions::new(label.clone()), &image).expect_err("bad label");
        assert!(matches!(&err, WriteError::CheckLabel { label: l, .. } if *l == label), "{err}");
        assert!(!image.exists());
    }
}

#[test]
fn symlink_without_rock_ridge_is_refused_by_name() {
    let mut tree = IsoTree::new();
    tree.add_symlink("bin/tool", "../lib/tool").expect("add");
    let mut opts = IsoOptions::new("x");
    opts.rock_ridge = false;
    let err = write_iso_file(&tree, &opts, Path::new("/nonexistent-dir/never.iso"))
        .expect_err("needs Rock Ridge");
    // Refused before any file is created, even where none could be.
    assert!(
        matches!(&err, WriteError::CreateTemp { .. } | WriteError::RecordSymlink { .. }),
        "{err}"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let err =
        write_iso_file(&tree, &opts, &tmp.path().join("s.iso")).expect_err("needs Rock Ridge");
    assert!(matches!(&err, WriteError::RecordSymlink { path } if path == "bin/tool"), "{err}");
}

#[test]
fn output_that_is_a_fifo_symlink_or_directory_is_handled_in_place() {
    use std::os::unix::fs::FileTypeExt;
    let mut tree = IsoTree::new();
    tree.add_file_bytes("a.txt", b"hello".to_vec(), 0o644).expect("add");
    let opts = IsoOptions::new("out");
    let tmp = tempfile::tempdir().expect("tempdir");

    // A FIFO is written into and stays a FIFO (as a device would), no temporary file left.
    let fifo = tmp.path().join("image.fifo");
    let status = Command::new("mkfifo").arg(&fifo).status().expect("run mkfifo");
    assert!(status.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || fs::read(fifo).expect("read the fifo"))
    };
    write_iso_file(&tree, &opts, &fifo).expect("written into the FIFO");
    let through_fifo = reader.join().expect("reader");
    assert!(fs::symlink_metadata(&fifo).expect("fifo").file_type().is_fifo());
    let mut in_memory = Vec::new();
    mesh_iso::write_iso(&tree, &opts, &mut in_memory).expect("in memory");
    assert_eq!(through_fifo, in_memory);

    // A symbolic link is written through: the link stays, the file it names is replaced.
    let real = tmp.path().join("real.iso");
    fs::write(&real, "old").expect("old");
    let link = tmp.path().join("link.iso");
    std::os::unix::fs::symlink("real.iso", &link).expect("symlink");
    write_iso_file(&tree, &opts, &link).expect("written through the link");
    assert!(fs::symlink_metadata(&link).expect("link").file_type().is_symlink());
    assert_eq!(fs::read(&real).expect("real"), in_memory);

    // A directory is refused by name and left alone.
    let dir = tmp.path().join("dir.iso");
    fs::create_dir(&dir).expect("mkdir");
    let err = write_iso_file(&tree, &opts, &dir).expect_err("a directory");
    assert!(matches!(&err, WriteError::WriteOutput { path, .. } if *path == dir), "{err}");
    assert!(dir.is_dir());
    let names: Vec<_> =
        fs::read_dir(tmp.path()).expect("ls").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(names.len(), 4, "a temporary file was left: {names:?}");
}
