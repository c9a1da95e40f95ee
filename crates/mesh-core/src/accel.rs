//! The accelerator decision for a mesh. mesh-qemu's probe guest is a few bytes of real-mode
//! code; on some nested hosts that runs under KVM while a real kernel under the same KVM
//! prints nothing at all. So a KVM verdict is confirmed here with the base image's own kernel,
//! which must print its banner on the serial port within seconds.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mesh_qemu::{Accel, Arch};

/// What every Linux kernel prints first on its console.
const BANNER: &[u8] = b"Linux version";
/// A working KVM prints the banner in well under a second.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(8);

/// KVM if mesh-qemu's probe says so *and* `kernel` really boots under it, else TCG. Both
/// verdicts are cached in `cache_dir`, keyed by host kernel, QEMU version and guest kernel.
pub fn choose(arch: Arch, kernel: Option<&Path>, cache_dir: &Path) -> Accel {
    let first = mesh_qemu::probe_accel(arch, cache_dir);
    if first != Accel::Kvm {
        return first;
    }
    let Some(kernel) = kernel else { return first };
    let key = cache_key(arch, kernel, cache_dir);
    if let Some(cached) = key.as_ref().and_then(|k| std::fs::read_to_string(k).ok()) {
        if let Ok(accel) = cached.trim().parse::<Accel>() {
            return accel;
        }
    }
    let verdict = if kernel_prints_banner(arch, kernel) {
        Accel::Kvm
    } else {
        tracing::warn!(
            "KVM opens but a real kernel prints nothing under it (nested virtualisation?); using TCG"
        );
        Accel::Tcg
    };
    if let Some(key) = key {
        let _ = std::fs::create_dir_all(cache_dir);
        let _ = std::fs::write(key, verdict.to_string());
    }
    verdict
}

fn cache_key(arch: Arch, kernel: &Path, cache_dir: &Path) -> Option<std::path::PathBuf> {
    let base = mesh_qemu::accel_cache_path(arch, cache_dir)?;
    let meta = std::fs::metadata(kernel).ok()?;
    let name = format!("{}-confirmed-{}", base.file_name()?.to_string_lossy(), meta.len());
    Some(cache_dir.join(name))
}

/// Boots `kernel` without root under KVM and waits for its banner on the serial port.
fn kernel_prints_banner(arch: Arch, kernel: &Path) -> bool {
    let (machine, console) = match arch {
        Arch::X86_64 => ("q35", "ttyS0"),
        Arch::Aarch64 => ("virt", "ttyAMA0"),
    };
    let child = Command::new(arch.qemu_binary())
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-machine", machine])
        .args(["-accel", "kvm", "-cpu", "host", "-m", "256", "-no-reboot", "-serial", "stdio"])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", &format!("console={console} panic=-1")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    let Some(mut out) = child.stdout.take() else { return false };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(BANNER.len()).any(|w| w == BANNER) {
                let _ = tx.send(());
                break;
            }
        }
    });
    let started = Instant::now();
    let ok = rx.recv_timeout(CONFIRM_TIMEOUT).is_ok();
    tracing::debug!(
        ok,
        secs = started.elapsed().as_secs_f64(),
        "KVM confirmation with a real kernel"
    );
    let _ = child.kill();
    let _ = child.wait();
    ok
}
