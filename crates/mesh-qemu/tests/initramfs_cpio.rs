//! The initramfs archive read back by GNU cpio, an independent newc reader: the listing has
//! every entry once, in our order, and extraction gives the same tree, modes, link targets,
//! device numbers and contents.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use mesh_qemu::initramfs::{busybox_init_script, InitramfsBuilder};

/// What one extracted entry looks like: kind, permission bits, and contents, target or rdev.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Dir(u32),
    File(u32, Vec<u8>),
    Link(String),
    CharDevice(u32, u64),
}

fn sample() -> (InitramfsBuilder, BTreeMap<String, Seen>) {
    let big: Vec<u8> = (0..100_003u32).map(|i| (i * 7 % 251) as u8).collect();
    let init = busybox_init_script(&["/lib/modules/x/a.ko".to_owned()], "echo ok");
    let mut builder = InitramfsBuilder::new();
    builder
        .file_bytes("/init", init.clone().into_bytes(), 0o755)
        .dir("/tmp", 0o1777)
        .dir("/etc/secret", 0o700)
        .file_bytes("/etc/secret/key", b"k".to_vec(), 0o600)
        .file_bytes("/usr/bin/tool", big.clone(), 0o4755)
        .file_bytes("/empty", Vec::new(), 0o644)
        .symlink("/bin/sh", "busybox")
        .symlink("/lib64", "/usr/lib/../lib")
        .char_device("/dev/console", 5, 1, 0o600)
        .char_device("/dev/null", 1, 3, 0o666);

    let expected = BTreeMap::from([
        ("init".to_owned(), Seen::File(0o755, init.into_bytes())),
        ("tmp".to_owned(), Seen::Dir(0o1777)),
        ("etc".to_owned(), Seen::Dir(0o755)),
        ("etc/secret".to_owned(), Seen::Dir(0o700)),
        ("etc/secret/key".to_owned(), Seen::File(0o600, b"k".to_vec())),
        ("usr".to_owned(), Seen::Dir(0o755)),
        ("usr/bin".to_owned(), Seen::Dir(0o755)),
        ("usr/bin/tool".to_owned(), Seen::File(0o4755, big)),
        ("empty".to_owned(), Seen::File(0o644, Vec::new())),
        ("bin".to_owned(), Seen::Dir(0o755)),
        ("bin/sh".to_owned(), Seen::Link("busybox".to_owned())),
        ("lib64".to_owned(), Seen::Link("/usr/lib/../lib".to_owned())),
        ("dev".to_owned(), Seen::Dir(0o755)),
        ("dev/console".to_owned(), Seen::CharDevice(0o600, libc_makedev(5, 1))),
        ("dev/null".to_owned(), Seen::CharDevice(0o666, libc_makedev(1, 3))),
    ]);
    (builder, expected)
}

/// glibc's encoding of a device number, as `st_rdev` reports it.
fn libc_makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xfff) << 8) | (minor & 0xff) | ((minor & !0xff) << 12) | ((major & !0xfff) << 32)
}

fn cpio(args: &[&str], dir: &Path, input: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("cpio")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("GNU cpio must be installed (Debian package cpio)");
    child.stdin.take().expect("piped stdin").write_all(input).expect("feed cpio");
    let output = child.wait_with_output().expect("cpio runs");
    assert!(output.status.success(), "cpio {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("UTF-8 listing")
}

fn walk(root: &Path, dir: &Path, seen: &mut BTreeMap<String, Seen>) {
    for entry in fs::read_dir(dir).expect("read extracted dir") {
        let path = entry.expect("dir entry").path();
        let name = path.strip_prefix(root).expect("below root").to_string_lossy().into_owned();
        let meta = fs::symlink_metadata(&path).expect("stat extracted entry");
        let mode = meta.permissions().mode() & 0o7777;
        let kind = meta.file_type();
        let value = if kind.is_symlink() {
            Seen::Link(fs::read_link(&path).expect("readlink").to_string_lossy().into_owned())
        } else if kind.is_dir() {
            walk(root, &path, seen);
            Seen::Dir(mode)
        } else if kind.is_char_device() {
            Seen::CharDevice(mode, meta.rdev())
        } else {
            Seen::File(mode, fs::read(&path).expect("read extracted file"))
        };
        seen.insert(name, value);
    }
}

#[test]
fn gnu_cpio_lists_every_entry_once_in_archive_order() {
    let (builder, expected) = sample();
    let mut archive = Vec::new();
    builder.write(&mut archive).expect("write archive");

    let dir = tempfile::tempdir().expect("temp dir");
    let listing = cpio(&["-t", "--quiet", "-H", "newc"], dir.path(), &archive);
    let names: Vec<&str> = listing.lines().collect();
    let mut sorted: Vec<&str> = expected.keys().map(String::as_str).collect();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "cpio -t lists every entry once, sorted, parents first");
}

#[test]
fn gnu_cpio_extracts_the_same_tree_modes_and_contents() {
    let (builder, expected) = sample();
    let mut archive = Vec::new();
    builder.write(&mut archive).expect("write archive");

    let dir = tempfile::tempdir().expect("temp dir");
    // Tests run as root (CI too), so cpio can create the device nodes and keep setuid bits.
    cpio(&["-i", "-d", "-u", "--quiet", "--no-absolute-filenames"], dir.path(), &archive);
    let mut seen = BTreeMap::new();
    walk(dir.path(), dir.path(), &mut seen);
    assert_eq!(seen, expected);
}

#[test]
fn gnu_cpio_accepts_a_kernel_module_tree_and_its_load_order() {
    // A fake modules directory without modules.dep: dependencies come from .modinfo.
    let modules = tempfile::tempdir().expect("temp dir");
    let modules_dir = modules.path().join("6.1.0-9-test");
    fs::create_dir_all(modules_dir.join("kernel/fs")).expect("mkdir");
    fs::write(modules_dir.join("kernel/fs/isofs.ko"), b"\x7fELF\0depends=cdrom\0").expect("ko");
    fs::write(modules_dir.join("kernel/fs/cdrom.ko"), b"\x7fELF\0depends=\0").expect("ko");

    let mut builder = InitramfsBuilder::new();
    let order = builder.modules(&modules_dir, &["isofs"]).expect("modules found");
    assert_eq!(
        order,
        [
            "/lib/modules/6.1.0-9-test/kernel/fs/cdrom.ko",
            "/lib/modules/6.1.0-9-test/kernel/fs/isofs.ko"
        ]
    );
    let mut archive = Vec::new();
    builder.write(&mut archive).expect("write archive");

    let dir = tempfile::tempdir().expect("temp dir");
    cpio(&["-i", "-d", "--quiet"], dir.path(), &archive);
    for module in &order {
        let extracted = dir.path().join(module.trim_start_matches('/'));
        let original = modules_dir.join(module.rsplit_once("6.1.0-9-test/").expect("prefix").1);
        assert_eq!(fs::read(extracted).expect("extracted"), fs::read(original).expect("source"));
    }
}
