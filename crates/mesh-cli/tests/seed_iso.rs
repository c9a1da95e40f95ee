//! `mesh seed` and `mesh iso` as a user meets them: drop-in use with cloud-localds' inputs,
//! images checked with independent readers (blkid, isoinfo, mtools, fsck.vfat), and bad input
//! refused in one line with nothing left at the output path.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn mesh() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mesh"));
    c.env_remove("MESH_LOG");
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(o.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn inputs(dir: &Path) {
    fs::write(dir.join("ud"), "#cloud-config\nhostname: n1\nruncmd:\n  - [touch, /run/x]\n")
        .expect("test setup");
    fs::write(dir.join("md"), "instance-id: iid-n1\nlocal-hostname: n1\n").expect("test setup");
    fs::write(
        dir.join("nc"),
        "version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: \"52:54:00:00:00:01\"\n    \
         set-name: eth0\n    addresses: [10.1.0.2/24]\n",
    )
    .expect("test setup");
}

fn blkid(image: &Path) -> String {
    ok(Command::new("blkid").args(["-p", "-o", "export"]).arg(image))
}

#[test]
fn seed_iso_is_a_cidata_volume_with_the_inputs_unchanged() {
    let tmp = tempfile::tempdir().expect("test setup");
    inputs(tmp.path());
    let out = tmp.path().join("seed.iso");
    // Same argument shapes as `cloud-localds -N nc seed.iso ud md`.
    ok(mesh()
        .current_dir(tmp.path())
        .args(["seed", "seed.iso", "--user-data", "ud", "--meta-data", "md"])
        .args(["--network-config", "nc"]));
    let id = blkid(&out);
    assert!(id.contains("TYPE=iso9660"), "{id}");
    assert!(id.lines().any(|l| l == "LABEL=cidata"), "{id}");
    let listing = ok(Command::new("isoinfo").args(["-R", "-f", "-i"]).arg(&out));
    for name in ["/user-data", "/meta-data", "/network-config"] {
        assert!(listing.lines().any(|l| l == name), "{name} missing: {listing}");
    }
    let ud = ok(Command::new("isoinfo").args(["-R", "-x", "/user-data", "-i"]).arg(&out));
    assert_eq!(ud, fs::read_to_string(tmp.path().join("ud")).expect("test setup"));
}

#[test]
fn seed_vfat_has_the_label_in_the_root_directory_and_is_clean() {
    let tmp = tempfile::tempdir().expect("test setup");
    inputs(tmp.path());
    let out = tmp.path().join("seed.img");
    // `-v` before the subcommand takes the general parser rather than the `seed` fast path.
    ok(mesh().current_dir(tmp.path()).args(["-v", "seed", "seed.img", "--format", "vfat"]).args([
        "--user-data",
        "ud",
        "--meta-data",
        "md",
    ]));
    let id = blkid(&out);
    assert!(id.lines().any(|l| l == "LABEL=CIDATA"), "{id}");
    assert!(id.contains("TYPE=vfat"), "{id}");
    ok(Command::new("fsck.vfat").arg("-n").arg(&out));
    let dir = ok(Command::new("mdir").args(["-b", "-i"]).arg(&out).arg("::"));
    assert!(dir.contains("user-data") && dir.contains("meta-data"), "{dir}");
}

#[test]
fn bad_seed_input_is_one_line_and_leaves_no_image() {
    let tmp = tempfile::tempdir().expect("test setup");
    inputs(tmp.path());
    fs::write(tmp.path().join("blank"), "\n#cloud-config\nhostname: x\n").expect("test setup");
    fs::write(tmp.path().join("md_bad"), "instance_id: x\n").expect("test setup");
    fs::write(tmp.path().join("nc_wrapped"), "network:\n  version: 2\n").expect("test setup");
    let cases: &[(&[&str], &str)] = &[
        (&["--user-data", "missing", "--meta-data", "md"], "missing"),
        (&["--user-data", "ud", "--meta-data", "md_bad"], "instance"),
        (&["--user-data", "ud", "--meta-data", "md", "--network-config", "nc_wrapped"], "network"),
        (&["--user-data", "ud", "--meta-data", "md", "--format", "floppy"], "floppy"),
    ];
    for (args, needle) in cases {
        let o = run(mesh().current_dir(tmp.path()).args(["seed", "out.iso"]).args(*args));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!tmp.path().join("out.iso").exists(), "{args:?} left an image");
        if *needle != "floppy" {
            assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: not one line: {err}");
        }
    }
    // Whitespace before the header is normalised away; anything else there is refused.
    fs::write(tmp.path().join("dashes"), "---\n#cloud-config\nhostname: x\n").expect("test setup");
    let seed = |ud: &str| {
        run(mesh().current_dir(tmp.path()).args([
            "seed",
            "out.iso",
            "--user-data",
            ud,
            "--meta-data",
            "md",
        ]))
    };
    let o = seed("dashes");
    assert!(!o.status.success());
    assert!(!tmp.path().join("out.iso").exists());
    let o = seed("blank");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ud = ok(Command::new("isoinfo")
        .args(["-R", "-x", "/user-data", "-i"])
        .arg(tmp.path().join("out.iso")));
    assert!(ud.starts_with("#cloud-config\n"), "{ud:?}");
}

#[test]
fn iso_of_a_directory_keeps_modes_and_links() {
    let tmp = tempfile::tempdir().expect("test setup");
    let src = tmp.path().join("tree");
    fs::create_dir_all(src.join("scripts")).expect("test setup");
    fs::write(src.join("scripts/build.sh"), "#!/bin/sh\necho hi\n").expect("test setup");
    ok(Command::new("chmod").arg("0755").arg(src.join("scripts/build.sh")));
    std::os::unix::fs::symlink("scripts/build.sh", src.join("build")).expect("test setup");
    let out = tmp.path().join("repo.iso");
    ok(mesh().arg("iso").arg(&out).arg(&src).args(["--label", "repo"]));
    let id = blkid(&out);
    assert!(id.lines().any(|l| l == "LABEL=repo"), "{id}");
    let listing = ok(Command::new("isoinfo").args(["-R", "-l", "-i"]).arg(&out));
    assert!(listing.contains("-rwxr-xr-x") && listing.contains("build.sh"), "{listing}");
    assert!(listing.contains("build -> scripts/build.sh"), "{listing}");
    // A file for a directory is one line, and nothing is written.
    let o = run(mesh().arg("iso").arg(tmp.path().join("bad.iso")).arg(src.join("build")));
    assert!(!o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stderr).trim_end().lines().count(), 1);
    assert!(!tmp.path().join("bad.iso").exists());
}

#[test]
fn seed_help_and_errors_are_those_of_the_whole_command_line() {
    // The plain-form reader declines anything unusual; what the user sees then must be what
    // `mesh` itself says about its `seed` subcommand.
    let help = ok(mesh().args(["seed", "--help"]));
    assert_eq!(help, ok(mesh().args(["help", "seed"])));
    for bad in [&["seed", "-V"][..], &["seed", "o", "--user-data", "u", "--meta-data", "m", "-x"]] {
        let o = run(mesh().args(bad));
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
        let via_flag = run(mesh().arg("-v").args(bad));
        assert_eq!(o.stderr, via_flag.stderr, "{bad:?}");
    }
}

#[test]
fn seed_names_the_document_it_rejects_and_says_when_it_normalised_one() {
    let tmp = tempfile::tempdir().expect("test setup");
    inputs(tmp.path());
    fs::write(tmp.path().join("dashed"), "---\n#cloud-config\n").expect("test setup");
    let o = run(mesh().current_dir(tmp.path()).args([
        "seed",
        "o.iso",
        "--user-data",
        "ud",
        "--meta-data",
        "md",
        "--vendor-data",
        "dashed",
    ]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.starts_with("error: vendor-data rejected") && !err.contains("user-data"), "{err}");

    fs::write(tmp.path().join("crlf"), "#!/bin/sh\r\necho hi\r\n").expect("test setup");
    let o = run(mesh().current_dir(tmp.path()).args([
        "seed",
        "o.iso",
        "--user-data",
        "crlf",
        "--meta-data",
        "md",
    ]));
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("note: user-data normalised"));
    let ud = ok(Command::new("isoinfo")
        .args(["-R", "-x", "/user-data", "-i"])
        .arg(tmp.path().join("o.iso")));
    assert_eq!(ud, "#!/bin/sh\necho hi\n");
}

#[test]
fn seed_iso_follows_source_date_epoch() {
    let tmp = tempfile::tempdir().expect("test setup");
    inputs(tmp.path());
    for name in ["a.iso", "b.iso"] {
        ok(mesh().current_dir(tmp.path()).env("SOURCE_DATE_EPOCH", "1700000000").args([
            "seed",
            name,
            "--user-data",
            "ud",
            "--meta-data",
            "md",
        ]));
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let read = |n: &str| fs::read(tmp.path().join(n)).expect("image");
    assert_eq!(read("a.iso"), read("b.iso"));
}

#[test]
fn seed_does_not_replace_a_file_the_user_may_not_write() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    inputs(dir.path());
    // The directory is writable for all, the output is read-only: a rename would succeed,
    // `cat > OUT` would not, and neither may mesh seed.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).expect("chmod dir");
    let binary = dir.path().join("mesh");
    fs::copy(env!("CARGO_BIN_EXE_mesh"), &binary).expect("copy the binary");
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).expect("chmod binary");
    let out = dir.path().join("seed.iso");
    fs::write(&out, "precious").expect("old output");
    fs::set_permissions(&out, fs::Permissions::from_mode(0o444)).expect("chmod out");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        // Root may write anything; run as nobody, as a user would meet this.
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(&binary);
        c
    } else {
        Command::new(&binary)
    };
    cmd.current_dir(dir.path()).args([
        "seed",
        "seed.iso",
        "--user-data",
        "ud",
        "--meta-data",
        "md",
    ]);
    let o = run(&mut cmd);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("seed.iso") && err.contains("Permission denied"), "{err}");
    assert_eq!(fs::read(&out).expect("output"), b"precious");
    let left: Vec<_> =
        fs::read_dir(dir.path()).expect("ls").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(left.len(), 5, "something was left: {left:?}");
}

#[test]
fn iso_killed_while_writing_leaves_nothing_behind() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join("tree");
    fs::create_dir(&tree).expect("mkdir");
    // 8 GiB of holes: reading them costs no disk, writing the image takes seconds.
    let big = fs::File::create(tree.join("big")).expect("create");
    big.set_len(8 << 30).expect("sparse file");
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).expect("mkdir");
    let mut child = mesh()
        .args(["iso"])
        .arg(out_dir.join("big.iso"))
        .arg(&tree)
        .spawn()
        .expect("start mesh iso");
    // Kill it once it is writing: the image's output directory then has a file only if the
    // image is written under a name before it is complete.
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_millis(600) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().expect("kill");
    let status = child.wait().expect("wait");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "mesh iso ended before it was killed");
    let left: Vec<_> =
        fs::read_dir(&out_dir).expect("ls").map(|e| e.expect("entry").file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
