//! Ctrl-C during a build: the build process and mmdebstrap get SIGINT as a terminal would
//! send it (to the whole process group) while packages are being installed. Afterwards the
//! store holds no image, nothing stays mounted below it, and the abandoned staging directory
//! is removed by the next store operation that cleans up.
//!
//! The build runs in a child process: this same test binary, re-run with `--exact` on the
//! entry point below and the store path in an environment variable.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mesh_core::image::{Arch, BuildOptions, ImageStore};

const CHILD_STORE: &str = "VM_MESH_INTERRUPT_TEST_STORE";

/// Not a test of its own: the child process of `ctrl_c_during_a_build_leaves_no_image`
/// (it does nothing when that test did not start it).
#[test]
fn interrupted_build_child() {
    let Some(root) = std::env::var_os(CHILD_STORE) else { return };
    let store = ImageStore::open(Path::new(&root)).expect("open");
    let result = store.build(Arch::X86_64, &BuildOptions::default());
    panic!("the build should have been interrupted, it returned {result:?}");
}

fn staging_dirs(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root)
        .expect("read store")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".staging-")))
        .collect()
}

fn mounts_below(root: &Path) -> Vec<String> {
    let root = std::fs::canonicalize(root).expect("canonical store path");
    let root = root.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|point| point.starts_with(&root))
        .map(str::to_owned)
        .collect()
}

#[test]
fn ctrl_c_during_a_build_leaves_no_image() {
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().join("store");
    std::fs::create_dir_all(&root).expect("store dir");

    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "interrupted_build_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_STORE, &root)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the child build");
    let pgid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));

    // Wait until packages are being installed into the chroot: the point where a careless
    // interruption would leave mounts and a half-made rootfs behind.
    let started = Instant::now();
    loop {
        let installing = staging_dirs(&root).iter().any(|dir| {
            std::fs::read_to_string(dir.join("build.log"))
                .is_ok_and(|log| log.contains("installing essential packages"))
        });
        if installing {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the child build ended ({status}) before it could be interrupted");
        }
        assert!(started.elapsed() < Duration::from_secs(300), "the build never got going");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGINT).expect("send SIGINT");

    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            panic!("the build did not stop within 2 minutes of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!status.success(), "an interrupted build must not succeed");

    let store = ImageStore::open(&root).expect("open");
    assert!(store.list().expect("list").is_empty());
    assert_eq!(store.get(Arch::X86_64).expect("get"), None);
    store.remove_abandoned().expect("remove the abandoned staging directory");
    assert!(staging_dirs(&root).is_empty(), "{:?}", staging_dirs(&root));
    assert!(mounts_below(&root).is_empty(), "{:?}", mounts_below(&root));
    // Only the (empty) build lock file may remain.
    let left: Vec<_> = std::fs::read_dir(&root)
        .expect("read store")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
