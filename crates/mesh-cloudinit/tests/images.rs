//! The seed images as independent readers see them: blkid (labels, as cloud-init's NoCloud
//! looks for them), fsck.vfat, mtools and isoinfo (file list and contents).

mod common;

use std::path::Path;
use std::process::Command as Process;

use mesh_cloudinit::{CloudConfig, Command, Ethernet, NetworkConfig, Seed, WriteFile};

/// A seed with all four files, one of them larger than a FAT cluster and an ISO sector.
fn seed() -> Seed {
    let mut config = CloudConfig { hostname: Some("node-3".into()), ..CloudConfig::default() };
    config.runcmd.push(Command::from("echo hi"));
    config.write_files.push(WriteFile {
        path: "/etc/big".into(),
        content: "line of text\n".repeat(2000),
        ..WriteFile::default()
    });
    let mut net = NetworkConfig::default();
    net.ethernets.insert(
        "mesh0".into(),
        Ethernet {
            mac: "52:54:00:aa:bb:cc".into(),
            addresses: vec!["10.77.0.3/24".into()],
            ..Ethernet::default()
        },
    );
    Seed::new(&config, "node-3", Some(&net))
        .expect("valid seed")
        .with_vendor_data(b"#!/bin/sh\necho vendor\n")
        .expect("valid vendor-data")
}

/// `blkid -p -o export` as key/value pairs.
fn blkid(image: &Path) -> Vec<(String, String)> {
    common::require("blkid", "util-linux");
    let out = common::run_ok(Process::new("blkid").args(["-p", "-o", "export"]).arg(image));
    out.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

fn has(pairs: &[(String, String)], key: &str, value: &str) -> bool {
    pairs.iter().any(|(k, v)| k == key && v == value)
}

#[test]
fn iso_seed_is_labelled_cidata_and_lists_every_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("seed.iso");
    let seed = seed();
    seed.write_iso(&image).expect("ISO written");

    let tags = blkid(&image);
    assert!(has(&tags, "TYPE", "iso9660"), "{tags:?}");
    assert!(has(&tags, "LABEL", "cidata"), "blkid does not report LABEL=cidata: {tags:?}");

    common::require("isoinfo", "genisoimage");
    let listing = common::run_ok(Process::new("isoinfo").args(["-R", "-l", "-i"]).arg(&image));
    for (name, contents) in seed.files() {
        assert!(
            listing.lines().any(|line| line.trim_end().ends_with(name)),
            "isoinfo lacks {name}:\n{listing}"
        );
        let output = common::run(
            Process::new("isoinfo")
                .args(["-R", "-i"])
                .arg(&image)
                .args(["-x", &format!("/{name}")]),
            b"",
        );
        assert!(output.status.success(), "isoinfo -x /{name} failed");
        assert!(output.stdout == contents, "isoinfo reads different contents for {name}");
    }
    assert!(
        !dir.path().read_dir().expect("list").any(|e| e.expect("entry").file_name() != "seed.iso"),
        "temp file left"
    );
}

#[test]
fn vfat_seed_is_labelled_cidata_in_root_directory_and_clean() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("seed.img");
    let seed = seed();
    seed.write_vfat(&image).expect("vfat written");

    let tags = blkid(&image);
    assert!(has(&tags, "TYPE", "vfat"), "{tags:?}");
    // LABEL comes from the root-directory entry; LABEL_FATBOOT alone is not enough for
    // cloud-init's `blkid -tLABEL=CIDATA` lookup.
    assert!(has(&tags, "LABEL", "CIDATA"), "blkid does not report LABEL=CIDATA: {tags:?}");
    assert!(has(&tags, "LABEL_FATBOOT", "CIDATA"), "boot sector label missing: {tags:?}");

    common::require("fsck.vfat", "dosfstools");
    common::run_ok(Process::new("fsck.vfat").arg("-n").arg(&image));

    common::require("mdir", "mtools");
    let listing = common::run_ok(Process::new("mdir").arg("-i").arg(&image).arg("::"));
    assert!(listing.contains("CIDATA"), "mdir shows no volume label:\n{listing}");
    for (name, contents) in seed.files() {
        assert!(
            listing.lines().any(|line| line.trim_end().ends_with(name)),
            "mdir lacks {name}:\n{listing}"
        );
        let output =
            common::run(Process::new("mtype").arg("-i").arg(&image).arg(format!("::{name}")), b"");
        assert!(output.status.success(), "mtype ::{name} failed");
        assert!(output.stdout == contents, "mtype reads different contents for {name}");
    }
}

#[test]
fn rewriting_a_seed_replaces_it_atomically() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("seed.img");
    let first = Seed::new(&CloudConfig::default(), "node-4", None).expect("valid");
    first.write_vfat(&image).expect("first write");
    let second = Seed::new(
        &CloudConfig { hostname: Some("x".into()), ..CloudConfig::default() },
        "node-4",
        None,
    )
    .expect("valid");
    second.write_vfat(&image).expect("second write");

    let meta = common::run_ok(Process::new("mtype").arg("-i").arg(&image).arg("::meta-data"));
    assert!(meta.contains(second.instance_id()), "old seed still in place:\n{meta}");
    let names: Vec<_> =
        dir.path().read_dir().expect("list").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(names, ["seed.img"], "temporary file left behind");
}
