//! The accelerator probe: KVM only where it really runs a guest.
//!
//! On nested hosts `/dev/kvm` can open while guests stop with a KVM internal error, or
//! report `running` over QMP yet execute nothing. So the probe boots a guest of a few bytes
//! under KVM and requires its marker on the serial port within seconds. The verdict is
//! cached per host (kernel release and QEMU version) because the probe costs a QEMU start.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::{Accel, Arch};

/// What the probe guests print on their first serial port.
pub const PROBE_MARKER: &str = "MESH-PROBE-OK";

/// How long a KVM probe guest gets to print its marker; a working KVM needs well under a
/// second (QEMU start plus SeaBIOS).
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Failures while running a probe guest.
#[derive(Debug, thiserror::Error)]
pub enum AccelProbeError {
    /// The probe's scratch directory or guest image could not be written.
    #[error("cannot prepare the probe guest in {path}")]
    PrepareGuest {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// QEMU could not be started.
    #[error("cannot start {program} for the accelerator probe")]
    StartQemu {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Waiting for or killing the probe QEMU failed.
    #[error("cannot stop the probe QEMU (pid {pid})")]
    StopQemu {
        /// The process.
        pid: u32,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// An x86 boot sector, loaded by SeaBIOS at 0000:7c00 and run in real mode. It writes the
/// marker to COM1 and halts. Assembled by hand; each line is one instruction.
const X86_BOOT_CODE: &[u8] = &[
    0xfa, //             cli                  no interrupts: nothing is set up for them
    0xfc, //             cld                  lodsb walks forwards
    0x31, 0xc0, //       xor ax, ax
    0x8e, 0xd8, //       mov ds, ax           the message is addressed from segment 0
    0xbe, 0x17, 0x7c, // mov si, 0x7c17       0x7c00 + offset of the message (23)
    0xba, 0xf8, 0x03, // mov dx, 0x3f8        COM1 data register
    0xac, //             next: lodsb          al = [ds:si++]
    0x84, 0xc0, //       test al, al
    0x74, 0x03, //       jz done              NUL ends the message
    0xee, //             out dx, al           QEMU's UART needs no setup to transmit
    0xeb, 0xf8, //       jmp next
    0xf4, //             done: hlt
    0xeb, 0xfd, //       jmp done
];

/// An aarch64 program for the `virt` machine, loaded by QEMU's `-kernel` as a raw image and
/// entered at its first byte (position independent). It writes the marker to the PL011
/// UART at 0x0900_0000 and waits for interrupts forever. Little-endian instruction words.
const AARCH64_CODE: &[u32] = &[
    0xd2a1_2001, //      movz x1, #0x0900, lsl #16   UART data register
    0x1000_00e2, //      adr  x2, message            28 bytes ahead (0x20)
    0x3840_1440, //      next: ldrb w0, [x2], #1
    0x3400_0060, //      cbz  w0, done
    0x3900_0020, //      strb w0, [x1]
    0x17ff_fffd, //      b    next
    0xd503_207f, //      done: wfi
    0x17ff_ffff, //      b    done
];

/// The probe guest for `arch`: code followed by the NUL-terminated marker line.
fn probe_guest(arch: Arch) -> Vec<u8> {
    let mut image = match arch {
        Arch::X86_64 => X86_BOOT_CODE.to_vec(),
        Arch::Aarch64 => AARCH64_CODE.iter().flat_map(|word| word.to_le_bytes()).collect(),
    };
    image.extend_from_slice(PROBE_MARKER.as_bytes());
    image.extend_from_slice(b"\r\n\0");
    if arch == Arch::X86_64 {
        // SeaBIOS boots a sector only if it ends with the 0x55 0xaa signature.
        image.resize(510, 0);
        image.extend_from_slice(&[0x55, 0xaa]);
    }
    image
}

/// Decides which accelerator runs `arch` guests on this host.
///
/// Another architecture than the host's always gets TCG, without probing. For the host
/// architecture, KVM is chosen only if `/dev/kvm` opens and a tiny probe guest started
/// under KVM prints [`PROBE_MARKER`] within 5 seconds. The verdict is cached in `cache_dir`
/// (see [`accel_cache_path`]), so the probe runs once per kernel and QEMU version. Falling
/// back to TCG is logged as a warning once per process.
///
/// Blocks for up to the probe's timeout on the first call.
pub fn probe_accel(arch: Arch, cache_dir: &Path) -> Accel {
    if arch != Arch::host() {
        return Accel::Tcg;
    }
    let cache = accel_cache_path(arch, cache_dir);
    if let Some(cache) = &cache {
        if let Some(accel) = fs::read_to_string(cache).ok().and_then(|s| s.trim().parse().ok()) {
            tracing::debug!(%accel, cache = %cache.display(), "accelerator verdict from cache");
            warn_if_tcg(accel, "cached verdict");
            return accel;
        }
    }

    let (accel, reason) = decide(arch);
    tracing::debug!(%accel, reason, "accelerator probed");
    if let Some(cache) = &cache {
        if let Err(error) = write_cache(cache, accel) {
            tracing::debug!(%error, cache = %cache.display(), "cannot cache accelerator verdict");
        }
    }
    warn_if_tcg(accel, reason);
    accel
}

fn decide(arch: Arch) -> (Accel, &'static str) {
    if let Err(error) = fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        tracing::debug!(%error, "/dev/kvm does not open");
        return (Accel::Tcg, "/dev/kvm cannot be opened");
    }
    match probe_guest_prints_marker(arch, Accel::Kvm, KVM_PROBE_TIMEOUT) {
        Ok(true) => (Accel::Kvm, "the KVM probe guest printed its marker"),
        Ok(false) => (Accel::Tcg, "the KVM probe guest printed nothing in time"),
        Err(error) => {
            tracing::debug!(error = &error as &dyn std::error::Error, "KVM probe failed");
            (Accel::Tcg, "the KVM probe guest could not run")
        }
    }
}

fn warn_if_tcg(accel: Accel, reason: &str) {
    static WARNED: Once = Once::new();
    if accel == Accel::Tcg {
        WARNED.call_once(|| {
            tracing::warn!(reason, "KVM does not run guests here; using TCG (much slower)");
        });
    }
}

fn write_cache(cache: &Path, accel: Accel) -> io::Result<()> {
    if let Some(dir) = cache.parent() {
        fs::create_dir_all(dir)?;
    }
    let temp = cache.with_extension(format!("tmp-{}", std::process::id()));
    fs::write(&temp, accel.as_str())?;
    fs::rename(&temp, cache)
}

/// Where [`probe_accel`] caches its verdict for `arch`: a file in `cache_dir` named after
/// the kernel release and the QEMU version, so a kernel or QEMU upgrade probes again.
/// `None` when either cannot be found out (then nothing is cached).
pub fn accel_cache_path(arch: Arch, cache_dir: &Path) -> Option<PathBuf> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let output = Command::new(arch.qemu_binary()).arg("--version").output().ok()?;
    let version_line = String::from_utf8_lossy(&output.stdout).lines().next()?.to_owned();
    let version = version_line.split_whitespace().nth(3).unwrap_or(&version_line).to_owned();
    let key = format!("accel-{arch}-kernel-{}-qemu-{version}", release.trim());
    let key: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-+".contains(c) { c } else { '_' })
        .collect();
    Some(cache_dir.join(key))
}

/// Boots the probe guest for `arch` under `accel` and reports whether it printed
/// [`PROBE_MARKER`] within `timeout`. QEMU is killed (by PID) afterwards.
///
/// [`probe_accel`] uses this with KVM; with TCG it shows that the probe guest itself works.
pub fn probe_guest_prints_marker(
    arch: Arch,
    accel: Accel,
    timeout: Duration,
) -> Result<bool, AccelProbeError> {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mesh-accel-probe-{}-{run}", std::process::id()));
    let result = probe_in(&dir, arch, accel, timeout);
    let _ = fs::remove_dir_all(&dir);
    result
}

fn probe_in(
    dir: &Path,
    arch: Arch,
    accel: Accel,
    timeout: Duration,
) -> Result<bool, AccelProbeError> {
    let prepare = |path: &Path| {
        let path = path.to_owned();
        move |source| AccelProbeError::PrepareGuest { path, source }
    };
    fs::create_dir_all(dir).map_err(prepare(dir))?;
    let image = dir.join("probe.img");
    let serial = dir.join("serial.out");
    let log = dir.join("qemu.log");
    fs::write(&image, probe_guest(arch)).map_err(prepare(&image))?;
    let qemu_log = File::create(&log).map_err(prepare(&log))?;

    let (image_arg, serial_arg) = match (image.to_str(), serial.to_str()) {
        (Some(image), Some(serial)) => (image.replace(',', ",,"), serial.replace(',', ",,")),
        _ => {
            let error = io::Error::new(io::ErrorKind::InvalidInput, "path is not UTF-8");
            return Err(prepare(dir)(error));
        }
    };
    let cpu = if accel == Accel::Kvm { "host" } else { "max" };
    let mut command = Command::new(arch.qemu_binary());
    command.args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]);
    command.args(["-accel", accel.as_str(), "-cpu", cpu, "-m", "64M"]);
    match arch {
        Arch::X86_64 => {
            command.args(["-machine", "q35", "-drive"]);
            command.arg(format!("file={image_arg},format=raw,if=none,id=probe"));
            command.args(["-device", "virtio-blk-pci,drive=probe,bootindex=0"]);
        }
        Arch::Aarch64 => {
            command.args(["-machine", "virt", "-kernel"]).arg(&image);
        }
    }
    command.args(["-chardev", &format!("file,id=serial0,path={serial_arg}")]);
    command.args(["-serial", "chardev:serial0"]);
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(qemu_log);
    tracing::debug!(?command, "starting accelerator probe guest");

    let mut child = command.spawn().map_err(|source| AccelProbeError::StartQemu {
        program: arch.qemu_binary().to_owned(),
        source,
    })?;
    let pid = child.id();
    let stop_error = |source| AccelProbeError::StopQemu { pid, source };

    let started = Instant::now();
    let seen = loop {
        let output = fs::read(&serial).unwrap_or_default();
        if String::from_utf8_lossy(&output).contains(PROBE_MARKER) {
            break true;
        }
        if child.try_wait().map_err(stop_error)?.is_some() || started.elapsed() >= timeout {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // `kill` addresses our own unreaped child by PID, so it cannot hit another process.
    if child.try_wait().map_err(stop_error)?.is_none() {
        child.kill().map_err(stop_error)?;
    }
    child.wait().map_err(stop_error)?;
    if !seen {
        let qemu_said = fs::read_to_string(&log).unwrap_or_default();
        tracing::debug!(%arch, %accel, qemu_said = qemu_said.trim(), "probe guest printed no marker");
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_probe_guest_is_one_signed_sector_with_the_marker_where_the_code_points() {
        let guest = probe_guest(Arch::X86_64);
        assert_eq!(guest.len(), 512);
        assert_eq!(&guest[510..], &[0x55, 0xaa]);
        // `mov si, imm16` at offset 6 holds the marker's load address.
        let address = u16::from_le_bytes([guest[7], guest[8]]) as usize;
        assert_eq!(&guest[address - 0x7c00..][..PROBE_MARKER.len()], PROBE_MARKER.as_bytes());
    }

    #[test]
    fn aarch64_probe_guest_adr_points_at_the_marker() {
        let guest = probe_guest(Arch::Aarch64);
        // adr x2 at byte 4: immhi in bits 5..24, immlo in bits 29..31.
        let word = AARCH64_CODE[1];
        let offset = (((word >> 5) & 0x7ffff) << 2 | (word >> 29) & 3) as usize;
        assert_eq!(&guest[4 + offset..][..PROBE_MARKER.len()], PROBE_MARKER.as_bytes());
    }

    #[test]
    fn foreign_arch_is_tcg_without_probing() {
        let other = if Arch::host() == Arch::X86_64 { Arch::Aarch64 } else { Arch::X86_64 };
        let dir = std::env::temp_dir().join("mesh-accel-never-created");
        assert_eq!(probe_accel(other, &dir), Accel::Tcg);
        assert!(!dir.exists(), "no probe and no cache for a foreign architecture");
    }
}
