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

/// Pins what `mesh_qemu::initramfs` relies on when it copies compressed modules as they are:
/// busybox `insmod` in the guest loads xz- and gzip-compressed modules, not zstd ones.
#[test]
fn busybox_insmod_loads_xz_and_gzip_modules_but_not_zstd() {
    use std::process::Command;

    let kernel = mesh_testkit::guest_kernel(Arch::X86_64).expect("guest kernel");
    let work = tempfile::tempdir().expect("temp dir");
    let source = work.path().join("src");
    std::fs::create_dir(&source).expect("mkdir");
    let compressions = [("nls_cp850", "xz"), ("nls_cp852", "gzip"), ("nls_cp855", "zstd")];
    for (module, tool) in compressions {
        let original = kernel.modules_dir.join(format!("kernel/fs/nls/{module}.ko"));
        let suffix = match tool {
            "xz" => "xz",
            "gzip" => "gz",
            _ => "zst",
        };
        let output = Command::new(tool)
            .arg("-c")
            .arg(&original)
            .output()
            .unwrap_or_else(|error| panic!("cannot run {tool} (is it installed?): {error}"));
        assert!(output.status.success(), "{tool} failed");
        std::fs::write(source.join(format!("{module}.ko.{suffix}")), output.stdout).expect("write");
    }
    let image = work.path().join("modules.ext2");
    let status = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext2", "-d"])
        .arg(&source)
        .arg(&image)
        .arg("2M")
        .status()
        .expect("mke2fs (e2fsprogs) must be installed");
    assert!(status.success(), "mke2fs failed");

    let script = "mount -t ext2 -o ro /dev/vda /mnt\n\
                  for m in /mnt/*.ko.*; do insmod \"$m\" 2>/dev/null && echo \"loaded $m\"; done\n\
                  cut -d' ' -f1 /proc/modules | grep '^nls_cp85' | sort";
    let output = run_guest(Arch::X86_64, &[image], script, TIMEOUT).expect("guest runs");
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(
        lines,
        ["loaded /mnt/nls_cp850.ko.xz", "loaded /mnt/nls_cp852.ko.gz", "nls_cp850", "nls_cp852"],
        "xz and gzip load, zstd does not"
    );
}
