//! The command line, process supervision and QMP client against a real QEMU.
//!
//! QEMU runs under TCG with our [`VmSpec`] command line. Its NIC is a tap that exists only
//! in a network namespace this test creates, so QEMU can only start if it really runs
//! inside that namespace, and no traffic leaves it.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mesh_qemu::{
    create_overlay, kill_recorded, process_matches, Accel, Arch, Boot, Drive, ImageFormat, Nic,
    ProcessError, QemuCommand, QemuProcess, Qmp, QmpError, VmSpec,
};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);

/// A network namespace with one tap, deleted (with the tap) on drop.
struct Netns {
    name: String,
    tap: String,
}

impl Netns {
    fn new() -> Netns {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let netns =
            Netns { name: format!("mqtest-{}-{n}", std::process::id()), tap: "mqtap0".into() };
        ip(&["netns", "add", &netns.name]);
        ip(&["-n", &netns.name, "tuntap", "add", "dev", &netns.tap, "mode", "tap"]);
        netns
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("`ip` (iproute2) is needed for this test: {e}"));
    assert!(status.success(), "ip {args:?} failed (the test must run as root)");
}

fn spec(dir: &Path, nics: Vec<Nic>, drives: Vec<Drive>) -> VmSpec {
    VmSpec {
        name: "qmp-test".into(),
        arch: Arch::X86_64,
        accel: Accel::Tcg,
        cpu_model: None,
        cpus: 1,
        memory_mib: 128,
        boot: Boot::Bios,
        drives,
        nics,
        serial_log: dir.join("serial.log"),
        qmp_socket: dir.join("qmp.sock"),
        virtio_serial: vec![],
    }
}

fn paused(mut command: QemuCommand) -> QemuCommand {
    command.args.push("-S".into());
    command
}

async fn connect(process: &QemuProcess, spec: &VmSpec) -> Qmp {
    let (pid, start) = (process.pid(), process.start_time());
    Qmp::connect(&spec.qmp_socket, Duration::from_secs(10), move || process_matches(pid, start))
        .await
        .expect("connect to QEMU's QMP socket")
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("qemu.log")).unwrap_or_default()
}

#[tokio::test]
async fn paused_qemu_in_a_netns_answers_status_stop_cont_set_link_query_block_and_quit() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let netns = Netns::new();
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![0u8; 4 << 20]).expect("write base");
    let overlay = dir.path().join("node.qcow2");
    create_overlay(&base, &overlay).expect("overlay");
    let nic = Nic { tap: netns.tap.clone(), mac: "02:6d:65:73:68:01".into() };
    let drive = Drive { path: overlay, format: ImageFormat::Qcow2, read_only: false, serial: None };
    let spec = spec(dir.path(), vec![nic], vec![drive]);
    let command = paused(spec.command().expect("valid spec"));

    let mut process =
        QemuProcess::spawn(&command, Some(&netns.path()), &dir.path().join("qemu.log"))
            .expect("spawn QEMU");
    let test = async {
        let ns_of_qemu = std::fs::metadata(format!("/proc/{}/ns/net", process.pid()))
            .expect("QEMU's namespace")
            .ino();
        let ns_made = std::fs::metadata(netns.path()).expect("test namespace").ino();
        assert_eq!(ns_of_qemu, ns_made, "QEMU runs in the test namespace");

        let qmp = connect(&process, &spec).await;
        let mut events = qmp.events();
        let status = qmp.query_status().await.expect("query-status");
        assert_eq!((status.status.as_str(), status.running), ("prelaunch", false));

        qmp.cont().await.expect("cont");
        assert!(qmp.query_status().await.expect("query-status").running);
        assert_eq!(events.recv().await.expect("event").event, "RESUME");

        qmp.stop().await.expect("stop");
        let status = qmp.query_status().await.expect("query-status");
        assert_eq!((status.status.as_str(), status.running), ("paused", false));
        assert_eq!(events.recv().await.expect("event").event, "STOP");

        qmp.set_link(&VmSpec::nic_id(0), false).await.expect("link down");
        qmp.set_link("net0", true).await.expect("link up by netdev name");
        match qmp.set_link("nic9", false).await {
            Err(QmpError::Command { class, .. }) => assert_eq!(class, "DeviceNotFound"),
            other => panic!("set_link on a missing NIC: {other:?}"),
        }

        let blocks = qmp.query_block().await.expect("query-block");
        let drive0 = blocks.iter().find(|b| b.device == VmSpec::drive_id(0)).expect("drive0");
        let inserted = drive0.inserted.as_ref().expect("medium");
        assert_eq!(inserted.drv, "qcow2");
        assert!(!inserted.ro);
        let base = base.canonicalize().expect("base");
        assert_eq!(inserted.backing_file.as_deref(), base.to_str());

        // QEMU may close the socket before or after its reply to `quit`.
        match qmp.quit().await {
            Ok(()) | Err(QmpError::Closed { .. }) => {}
            Err(other) => panic!("quit: {other:?}"),
        }
        let status = process.wait().await.expect("wait");
        assert!(status.success(), "QEMU exit status {status:?}");
        assert!(!process_matches(process.pid(), process.start_time()) || status.code().is_some());
        let later = timeout(Duration::from_secs(5), async {
            while !qmp.is_closed() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        later.await.expect("the connection closes when QEMU exits");
    };
    if timeout(LIMIT, test).await.is_err() {
        let _ = kill_recorded(process.pid(), process.start_time());
        panic!("timed out; QEMU said: {}", log_of(dir.path()));
    }
}

#[tokio::test]
async fn stop_falls_back_to_quit_when_the_guest_ignores_the_power_button() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let spec = spec(dir.path(), vec![], vec![]);
    // No guest OS at all: SeaBIOS finds nothing to boot, and nothing handles ACPI.
    let command = spec.command().expect("valid spec");
    let mut process =
        QemuProcess::spawn(&command, None, &dir.path().join("qemu.log")).expect("spawn QEMU");
    let qmp = connect(&process, &spec).await;
    let started = Instant::now();
    let grace = Duration::from_millis(500);
    timeout(LIMIT, process.stop(Some(&qmp), grace)).await.expect("no hang").expect("stop");
    let elapsed = started.elapsed();
    let status = process.wait().await.expect("wait");
    assert!(status.success(), "quit ends QEMU normally, not by a signal: {status:?}");
    assert!(elapsed >= grace, "the guest got its grace period first ({elapsed:?})");
    assert!(!process_matches(process.pid(), process.start_time()) || status.code().is_some());
}

#[tokio::test]
async fn stop_without_qmp_uses_sigterm_and_kill_recorded_ends_a_running_qemu() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let spec = spec(dir.path(), vec![], vec![]);
    let command = paused(spec.command().expect("valid spec"));
    let log = dir.path().join("qemu.log");

    let mut process = QemuProcess::spawn(&command, None, &log).expect("spawn QEMU");
    // Until QEMU is up, SIGTERM's default action would end it before its handler exists.
    let qmp = connect(&process, &spec).await;
    timeout(LIMIT, process.stop(None, Duration::from_secs(5)))
        .await
        .expect("no hang")
        .expect("stop");
    let status = process.wait().await.expect("wait");
    // QEMU catches SIGTERM and exits on its own, so this is no kill.
    assert_ne!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert!(log_of(dir.path()).contains("terminating on signal 15"), "{}", log_of(dir.path()));
    drop(qmp);

    let mut process = QemuProcess::spawn(&command, None, &log).expect("spawn QEMU again");
    let (pid, start) = (process.pid(), process.start_time());
    assert!(process_matches(pid, start));
    assert!(!kill_recorded(pid, start + 1).expect("other start time"), "left alone");
    assert!(process.try_wait().expect("try_wait").is_none(), "still running");
    assert!(kill_recorded(pid, start).expect("kill"));
    let status = timeout(LIMIT, process.wait()).await.expect("no hang").expect("wait");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
}

fn thread_priorities(pid: u32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("QEMU's threads")
        .map(|t| {
            let tid: u32 =
                t.expect("task").file_name().to_str().expect("tid").parse().expect("tid");
            mesh_qemu::priority(tid).expect("getpriority")
        })
        .collect()
}

#[tokio::test]
async fn a_niced_qemu_has_every_thread_niced_until_set_back() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let spec = spec(dir.path(), vec![], vec![]);
    let command = paused(spec.command().expect("valid spec"));
    let mut process =
        QemuProcess::spawn_niced(&command, None, &dir.path().join("qemu.log"), 7).expect("spawn");
    // Once QMP answers, QEMU's vCPU and I/O threads exist.
    let qmp = connect(&process, &spec).await;
    let before = thread_priorities(process.pid());
    assert!(before.len() > 1, "QEMU runs several threads: {before:?}");
    assert!(before.iter().all(|&n| n == 7), "{before:?}");
    mesh_qemu::set_priority(process.pid(), 0).expect("renice");
    let after = thread_priorities(process.pid());
    assert!(after.iter().all(|&n| n == 0), "{after:?}");
    timeout(LIMIT, process.stop(Some(&qmp), Duration::from_millis(100)))
        .await
        .expect("no hang")
        .expect("stop");
}

#[tokio::test]
async fn spawn_reports_a_missing_namespace_and_a_missing_program() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let command =
        QemuCommand { program: "qemu-system-x86_64".into(), args: vec!["-version".into()] };
    let log = dir.path().join("qemu.log");
    let missing = dir.path().join("no-such-netns");
    let err = QemuProcess::spawn(&command, Some(&missing), &log).expect_err("no namespace");
    assert!(matches!(err, ProcessError::OpenNetns { .. }), "{err:?}");

    // A file that is not a namespace makes setns fail in the child: spawn must report it.
    let not_a_netns = dir.path().join("plain");
    std::fs::write(&not_a_netns, b"").expect("write");
    let err = QemuProcess::spawn(&command, Some(&not_a_netns), &log).expect_err("setns fails");
    assert!(matches!(err, ProcessError::Spawn { .. }), "{err:?}");

    let command = QemuCommand { program: "/nonexistent/qemu".into(), args: vec![] };
    let err = QemuProcess::spawn(&command, None, &log).expect_err("no program");
    assert!(matches!(err, ProcessError::Spawn { .. }), "{err:?}");
}
