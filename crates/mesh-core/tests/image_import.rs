//! `ImageStore::import`, `list`, `remove` and the store's error paths, checked with
//! `qemu-img info` and `sha256sum` as independent readers.

use std::path::Path;
use std::process::Command;

use mesh_core::image::{Arch, BootMode, ImageError, ImageFormat, ImageStore, RemoveTarget};

fn qemu_img_format(path: &Path) -> String {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path)
        .output()
        .expect("qemu-img is needed: apt-get install -y --no-install-recommends qemu-utils");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    info["format"].as_str().expect("format").to_owned()
}

fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum (coreutils)");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().expect("digest").to_owned()
}

fn qemu_img_create(format: &str, path: &Path) {
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", format])
        .arg(path)
        .arg("8M")
        .status()
        .expect("qemu-img is needed: apt-get install -y --no-install-recommends qemu-utils");
    assert!(status.success());
}

#[test]
fn import_refuses_garbage_and_keeps_the_current_image() {
    let work = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(&work.path().join("store")).expect("open");
    let garbage = work.path().join("garbage.qcow2");
    std::fs::write(&garbage, (0..3000u32).map(|i| (i * 131 % 251) as u8).collect::<Vec<_>>())
        .expect("write");
    let err = store.import(&garbage, Arch::X86_64).expect_err("garbage must be refused");
    assert!(err.to_string().contains("garbage.qcow2"), "{err}");
    assert_eq!(store.get(Arch::X86_64).expect("get"), None);
    assert!(store.list().expect("list").is_empty());
}

#[test]
fn import_probes_the_format_from_magic_bytes_not_the_name() {
    let work = tempfile::tempdir().expect("tempdir");
    // Names that lie about the content.
    let raw = work.path().join("looks-like.qcow2");
    let qcow2 = work.path().join("looks-like.img");
    qemu_img_create("raw", &raw);
    // A raw disk with an (empty) MBR partition table: 0x55aa at the end of sector 0.
    let mut disk = vec![0u8; 8192];
    disk[..18].copy_from_slice(b"not a qcow2 header");
    disk[510] = 0x55;
    disk[511] = 0xaa;
    std::fs::write(&raw, disk).expect("raw");
    qemu_img_create("qcow2", &qcow2);

    let store = ImageStore::open(&work.path().join("store")).expect("open");
    let a = store.import(&raw, Arch::X86_64).expect("import raw");
    let b = store.import(&qcow2, Arch::Aarch64).expect("import qcow2");

    for (image, source, format) in [(&a, &raw, ImageFormat::Raw), (&b, &qcow2, ImageFormat::Qcow2)]
    {
        assert_eq!(image.manifest.disk_format, format);
        assert_eq!(image.manifest.boot, BootMode::Firmware);
        assert_eq!(qemu_img_format(&image.disk_path()), format.as_str());
        assert_eq!(image.manifest.sha256, sha256_hex(source));
        assert_eq!(sha256_hex(&image.disk_path()), sha256_hex(source));
        assert!(image.kernel_path().is_none() && image.cmdline().is_none());
        image.verify().expect("verify");
    }
    assert_eq!(store.get(Arch::X86_64).expect("get"), Some(a.clone()));
    assert_eq!(store.get(Arch::Aarch64).expect("get"), Some(b.clone()));
    assert_eq!(store.list().expect("list").len(), 2);

    // Removing by arch leaves the other arch alone.
    assert_eq!(store.remove(&RemoveTarget::Arch(Arch::X86_64)).expect("rm"), [a.manifest.id]);
    assert_eq!(store.get(Arch::X86_64).expect("get"), None);
    assert!(!a.dir.exists());
    assert_eq!(store.remove(&RemoveTarget::parse(&b.manifest.id)).expect("rm"), [b.manifest.id]);
    assert!(store.list().expect("list").is_empty());
    assert!(matches!(
        store.remove(&RemoveTarget::Arch(Arch::X86_64)),
        Err(ImageError::NotFound { .. })
    ));
}

#[test]
fn import_refuses_an_empty_file_and_leaves_nothing() {
    let work = tempfile::tempdir().expect("tempdir");
    let empty = work.path().join("empty.qcow2");
    std::fs::write(&empty, b"").expect("empty");
    let store = ImageStore::open(&work.path().join("store")).expect("open");
    let err = store.import(&empty, Arch::X86_64).expect_err("empty");
    assert!(matches!(err, ImageError::NotADisk { .. }), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(store.root()).expect("read").flatten().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn an_unwritable_cache_is_a_one_line_error() {
    let work = tempfile::tempdir().expect("tempdir");
    // Even root cannot create a directory below a regular file.
    let file = work.path().join("file");
    std::fs::write(&file, b"x").expect("file");
    let err = ImageStore::open(&file.join("images")).expect_err("not a directory");
    assert!(matches!(err, ImageError::CacheNotWritable { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("not writable") && !text.contains('\n'), "{text}");
}
