//! Both architectures boot the Debian kernel with our initramfs under TCG and run a script:
//! the kernel itself reports the architecture and the modules we loaded.

use std::time::Duration;

use mesh_testkit::{run_guest, Arch, GuestRun};

const TIMEOUT: Duration = Duration::from_secs(120);

fn boots_and_runs_a_script(arch: Arch) {
    let run = GuestRun::start(
        arch,
        &[],
        "uname -m\ngrep -c -E '^(virtio_blk|isofs|vfat) ' /proc/modules\nexit 7",
        TIMEOUT,
    )
    .expect("guest starts");
    let result = run.wait().expect("guest runs to the end");
    eprintln!("{arch}: boot {:?}, total {:?}", result.boot_time, result.total_time);

    let lines: Vec<&str> = result.output.lines().collect();
    assert_eq!(lines, [arch.as_str(), "3"], "uname -m, then three modules loaded");
    assert_eq!(result.exit_code, 7, "the script's exit status comes back");
}

#[test]
fn x86_64_guest_boots_and_runs_a_script() {
    boots_and_runs_a_script(Arch::X86_64);
}

#[test]
fn aarch64_guest_boots_and_runs_a_script() {
    boots_and_runs_a_script(Arch::Aarch64);
}

#[test]
fn failing_script_is_an_error_with_its_output() {
    let error = run_guest(Arch::X86_64, &[], "echo about to fail\nfalse", TIMEOUT)
        .expect_err("non-zero exit is an error");
    let message = format!("{error:#}");
    assert!(message.contains("exited with 1"), "{message}");
    assert!(message.contains("about to fail"), "{message}");
}

#[test]
fn guest_that_never_ends_is_killed_at_the_timeout() {
    let run = GuestRun::start(Arch::X86_64, &[], "sleep 600", Duration::from_secs(8))
        .expect("guest starts");
    let pid = run.pid();
    let error = run.wait().expect_err("timeout is an error");
    assert!(format!("{error:#}").contains("timed out"), "{error:#}");
    // The QEMU process is gone (reaped, so its /proc entry too).
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "QEMU {pid} still there");
}
