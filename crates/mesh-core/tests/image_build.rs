//! Builds (or reuses from the cache) both base images and boots each one under TCG with a
//! NoCloud seed made by `cloud-localds`, then reads the guest's own account of cloud-init
//! from the serial console.
//!
//! Independent readers: `qemu-img check`/`info` for the disk, `sha256sum` for the digest,
//! `cloud-localds` for the seed, and QEMU, the Debian kernel, systemd and cloud-init in the
//! guest for everything else.
//!
//! The images live in the normal image cache (`$XDG_CACHE_HOME/vm-mesh/images`), so a cached
//! image makes this test take about as long as the boots.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_core::image::{Arch, BaseImage, BuildOptions, ImageStore};

/// The MAC of the test NIC and the address network-config gives it.
const MAC: &str = "52:54:00:4d:e5:01";
const ADDRESS: &str = "10.213.7.5";

const REPORT_BEGIN: &str = "MESH-REPORT-BEGIN";
const REPORT_END: &str = "MESH-REPORT-END";

/// Prints what cloud-init says about itself to the console once cloud-final is done, then
/// powers off. It runs as its own unit ordered after cloud-final.service: `cloud-init
/// status --wait` from runcmd would wait for the very stage it runs in.
const USER_DATA: &str = r#"#cloud-config
write_files:
  - path: /usr/local/sbin/mesh-report
    permissions: "0755"
    content: |
      #!/bin/sh
      exec > /dev/console 2>&1
      echo MESH-REPORT-BEGIN
      cloud-init status --long
      echo "result: $(tr -d '\n' < /run/cloud-init/result.json)"
      grep -E ' (WARNING|ERROR|CRITICAL)|Traceback' /var/log/cloud-init.log | sed 's/^/log: /'
      ip -4 -o addr show | sed 's/^/addr: /'
      echo "rootkb: $(df -k --output=size / | tail -n 1 | tr -d ' ')"
      echo "machine-id: $(cat /etc/machine-id)"
      echo "hostkeys: $(ls /etc/ssh/ | grep -c '^ssh_host_.*_key$')"
      echo "failed-units: $(systemctl list-units --failed --plain --no-legend | tr '\n' ';')"
      echo MESH-REPORT-END
      systemctl poweroff
  - path: /etc/systemd/system/mesh-report.service
    content: |
      [Unit]
      Description=vm-mesh test report
      After=cloud-final.service
      [Service]
      Type=oneshot
      ExecStart=/usr/local/sbin/mesh-report
runcmd:
  - [systemctl, start, --no-block, mesh-report.service]
"#;

fn network_config() -> String {
    format!(
        "version: 2\nethernets:\n  mesh0:\n    match:\n      macaddress: \"{MAC}\"\n    \
         set-name: mesh0\n    addresses: [{ADDRESS}/24]\n"
    )
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn require_tool(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(found, "{tool} is missing: apt-get install -y --no-install-recommends {package}");
}

fn build_or_reuse(arch: Arch) -> BaseImage {
    let store = ImageStore::open_default().expect("open the image cache");
    let started = Instant::now();
    let image = store.build(arch, &BuildOptions::default()).expect("build the base image");
    eprintln!(
        "{arch:?}: image {} ready in {:.1} s (disk {} MiB)",
        image.manifest.id,
        started.elapsed().as_secs_f32(),
        image.manifest.disk_size >> 20
    );
    image
}

/// The disk is a sound qcow2 file and its digest is the manifest's.
fn check_disk(image: &BaseImage) {
    let disk = image.disk_path();
    run(Command::new("qemu-img").arg("check").arg("-q").arg(&disk));
    let info = run(Command::new("qemu-img").args(["info", "--output=json", "-U"]).arg(&disk));
    let info: serde_json::Value = serde_json::from_str(&info).expect("qemu-img info json");
    assert_eq!(info["format"], "qcow2", "{info}");
    let virtual_size = info["virtual-size"].as_u64().expect("virtual size");
    assert_eq!(virtual_size, 2048 << 20, "default disk size");

    let sum = run(Command::new("sha256sum").arg(&disk));
    assert_eq!(sum.split_whitespace().next(), Some(image.manifest.sha256.as_str()));
    for file in [image.kernel_path(), image.initrd_path()] {
        let file = file.expect("a built image boots directly");
        assert!(fs::metadata(&file).expect("kernel/initrd").len() > 0, "{}", file.display());
    }
}

struct Vm {
    child: Child,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn boot(image: &BaseImage, dir: &Path) -> (Vm, PathBuf) {
    let arch = image.manifest.arch;
    let overlay = dir.join("overlay.qcow2");
    // A larger overlay than the 2 GiB base: cloud-init's resizefs must grow the root.
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(image.disk_path())
        .arg(&overlay)
        .arg("3G"));

    let user_data = dir.join("user-data");
    let meta_data = dir.join("meta-data");
    let net = dir.join("network-config");
    fs::write(&user_data, USER_DATA).expect("user-data");
    fs::write(&meta_data, "instance-id: image-test-1\nlocal-hostname: imagetest\n")
        .expect("meta-data");
    fs::write(&net, network_config()).expect("network-config");
    let seed = dir.join("seed.img");
    run(Command::new("cloud-localds")
        .arg(format!("--network-config={}", net.display()))
        .arg(&seed)
        .arg(&user_data)
        .arg(&meta_data));

    let serial = dir.join("serial.log");
    let mut command = Command::new(arch.qemu_binary());
    match arch {
        Arch::X86_64 => command.args(["-machine", "q35", "-cpu", "max"]),
        Arch::Aarch64 => command.args(["-machine", "virt", "-cpu", "max,pauth-impdef=on"]),
    };
    command
        .args(["-accel", "tcg", "-m", "1024", "-smp", "2", "-nodefaults", "-display", "none"])
        .arg("-kernel")
        .arg(image.kernel_path().expect("kernel"))
        .arg("-initrd")
        .arg(image.initrd_path().expect("initrd"))
        .arg("-append")
        .arg(image.cmdline().expect("cmdline"))
        .arg("-drive")
        .arg(format!("file={},format=qcow2,if=none,id=root", overlay.display()))
        .args(["-device", "virtio-blk-pci,drive=root"])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=none,id=seed,readonly=on", seed.display()))
        .args(["-device", "virtio-blk-pci,drive=seed"])
        // A NIC on an otherwise empty hub: the guest gets an interface to configure and
        // no way out.
        .args(["-netdev", "hubport,id=net0,hubid=0"])
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=net0,mac={MAC}"))
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-no-reboot")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = command.spawn().expect("start QEMU");
    (Vm { child }, serial)
}

/// Waits for the report (or QEMU's exit, or the timeout) and returns the serial log.
fn wait_for_report(vm: &mut Vm, serial: &Path, timeout: Duration) -> (String, Duration) {
    let started = Instant::now();
    loop {
        let log = fs::read(serial).map(|b| String::from_utf8_lossy(&b).replace('\r', ""));
        let log = log.unwrap_or_default();
        if log.contains(REPORT_END) {
            return (log, started.elapsed());
        }
        if let Ok(Some(status)) = vm.child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut pipe) = vm.child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            panic!("QEMU exited ({status}) before the report: {stderr}\n{}", tail(&log));
        }
        if started.elapsed() > timeout {
            panic!("no report within {timeout:?}; serial log tail:\n{}", tail(&log));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Checks the guest's report: cloud-init done without errors or warnings, from NoCloud; the
/// static address applied to the NIC matched by MAC; the root grown; a fresh machine-id and
/// freshly made SSH host keys; no failed units.
fn check_report(log: &str) {
    let begin = log.find(REPORT_BEGIN).expect("report start") + REPORT_BEGIN.len();
    let end = log.find(REPORT_END).expect("report end");
    let report = &log[begin..end];
    // The report comes over the serial console, where the getty's login prompt can land at the
    // start of one of its lines ("imagetest login: status: done"): that prompt is dropped.
    let lines = || {
        report.lines().map(|l| {
            let l = l.trim();
            l.split_once(" login: ").map_or(l, |(_, rest)| rest.trim())
        })
    };
    let field = |name: &str| -> Vec<&str> {
        lines().filter_map(|l| l.strip_prefix(name)).map(str::trim).collect()
    };

    assert!(lines().any(|l| l == "status: done"), "cloud-init not done:\n{report}");
    let result = field("result:");
    let result: serde_json::Value =
        serde_json::from_str(result.first().expect("result.json")).expect("result.json parses");
    assert_eq!(result["v1"]["errors"], serde_json::json!([]), "cloud-init errors:\n{report}");
    let datasource = result["v1"]["datasource"].as_str().unwrap_or_default();
    assert!(datasource.contains("NoCloud"), "datasource {datasource}");
    let problems = field("log:");
    assert!(problems.is_empty(), "cloud-init logged problems:\n{}", problems.join("\n"));

    let addresses = field("addr:");
    assert!(
        addresses.iter().any(|l| l.contains("mesh0") && l.contains(&format!("{ADDRESS}/24"))),
        "static address not applied:\n{}",
        addresses.join("\n")
    );
    let root_kb: u64 = field("rootkb:").first().and_then(|v| v.parse().ok()).expect("root size");
    assert!(root_kb > 2_500_000, "root filesystem not grown to the 3 GiB overlay: {root_kb} KiB");
    let machine_id = field("machine-id:").first().copied().unwrap_or_default().to_owned();
    assert!(
        machine_id.len() == 32 && machine_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "machine-id {machine_id:?}"
    );
    let host_keys: u32 = field("hostkeys:").first().and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(host_keys > 0, "no SSH host keys generated");
    assert_eq!(field("failed-units:"), [""], "failed units");
}

fn build_and_boot(arch: Arch, timeout: Duration) {
    for (tool, package) in [
        ("qemu-img", "qemu-utils"),
        ("sha256sum", "coreutils"),
        ("cloud-localds", "cloud-image-utils"),
        ("genisoimage", "genisoimage"),
        (arch.qemu_binary(), "qemu-system-x86 or qemu-system-arm"),
    ] {
        require_tool(tool, package);
    }
    let image = build_or_reuse(arch);
    check_disk(&image);

    let dir = tempfile::tempdir().expect("tempdir");
    let (mut vm, serial) = boot(&image, dir.path());
    let (log, elapsed) = wait_for_report(&mut vm, &serial, timeout);
    eprintln!("{arch:?}: booted to cloud-init done in {:.1} s", elapsed.as_secs_f32());
    check_report(&log);
}

#[test]
fn x86_64_image_builds_and_boots_to_cloud_init_done() {
    build_and_boot(Arch::X86_64, Duration::from_secs(300));
}

#[test]
fn aarch64_image_builds_and_boots_to_cloud_init_done() {
    build_and_boot(Arch::Aarch64, Duration::from_secs(600));
}
