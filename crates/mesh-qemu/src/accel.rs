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

/// The longest a KVM probe guest gets to print its marker; a working KVM needs well under
/// a second (QEMU start, SeaBIOS, the page touching). It also has to beat TCG. Regression:
/// with 5 s, a loaded host slowed TCG so much that the nested KVM (3.8 s and more here) won
/// and was chosen; the cap stays well below what such a KVM needs.
const KVM_PROBE_TIMEOUT: Duration = Duration::from_millis(2500);
/// KVM always gets at least this long, because QEMU's own start-up (the same for both
/// accelerators) can dominate a fast TCG run. A working KVM needs a fraction of it; the
/// nested KVM this guards against needs four seconds or more.
const KVM_PROBE_FLOOR: Duration = Duration::from_millis(1500);
/// The longest the TCG run of the probe guest gets (it needs about a second).
const TCG_PROBE_TIMEOUT: Duration = Duration::from_secs(20);

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

/// How many distinct 4 KiB pages a probe guest writes to (64 MiB) before printing. On
/// nested hosts KVM does run guests, but every first touch of a page costs a trip through
/// the outer hypervisor: a Linux kernel then needs minutes to decompress itself. Touching
/// memory like a real guest makes such a KVM lose against TCG, and the probe notices.
const PROBE_PAGES: u32 = 0x4000;

/// Guest memory for the probe: room for the pages touched above the first 2 MiB (x86) or
/// 8 MiB (aarch64).
const PROBE_MEMORY: &str = "128M";

/// An x86 boot sector, loaded by SeaBIOS at 0000:7c00 and entered in real mode. It
/// switches straight to 64-bit long mode (as a kernel must), maps the first 128 MiB with
/// 2 MiB pages, writes one byte into each of [`PROBE_PAGES`] pages from 2 MiB up, then
/// writes the marker to COM1 and halts. Assembled by hand; one instruction per line, with
/// its offset. The marker follows at 0xbe.
const X86_BOOT_CODE: &[u8] = &[
    // 16-bit real mode.
    0xfa, //                               00 cli
    0xfc, //                               01 cld
    0x31, 0xc0, //                         02 xor ax, ax
    0x8e, 0xd8, //                         04 mov ds, ax
    0x8e, 0xc0, //                         06 mov es, ax
    0xbf, 0x00,
    0x10, //                   08 mov di, 0x1000        page tables at 0x1000-0x3fff
    0xb9, 0x00, 0x18, //                   0b mov cx, 0x1800        12 KiB in words
    0xf3, 0xab, //                         0e rep stosw             zero them
    0xc7, 0x06, 0x00, 0x10, 0x03, 0x20, // 10 mov word [0x1000], 0x2003  PML4[0] -> PDPT, P+W
    0xc7, 0x06, 0x00, 0x20, 0x03, 0x30, // 16 mov word [0x2000], 0x3003  PDPT[0] -> PD, P+W
    0xc7, 0x06, 0x00, 0x30, 0x83, 0x00, // 1c mov word [0x3000], 0x0083  PD[0] = 0, 2 MiB page
    0x66, 0x0f, 0x01, 0x16, 0xb8, 0x7c, // 22 lgdt [0x7cb8]        descriptor at offset b8
    0x66, 0xb8, 0x20, 0x00, 0x00, 0x00, // 28 mov eax, 0x20
    0x0f, 0x22, 0xe0, //                   2e mov cr4, eax          PAE
    0x66, 0xb8, 0x00, 0x10, 0x00, 0x00, // 31 mov eax, 0x1000
    0x0f, 0x22, 0xd8, //                   37 mov cr3, eax          PML4
    0x66, 0xb9, 0x80, 0x00, 0x00, 0xc0, // 3a mov ecx, 0xc0000080  EFER
    0x0f, 0x32, //                         40 rdmsr
    0x0d, 0x00, 0x01, //                   42 or ax, 0x100          LME
    0x0f, 0x30, //                         45 wrmsr
    0x0f, 0x20, 0xc0, //                   47 mov eax, cr0
    0x66, 0x0d, 0x01, 0x00, 0x00, 0x80, // 4a or eax, 0x80000001    PE and PG at once
    0x0f, 0x22, 0xc0, //                   50 mov cr0, eax
    0x66, 0xea, 0x5b, 0x7c, 0x00, 0x00, 0x08,
    0x00, // 53 jmp dword 0x08:0x7c5b  into 64-bit code
    // 64-bit long mode.
    0xbf, 0x08, 0x30, 0x00, 0x00, //       5b mov edi, 0x3008       PD[1]
    0xb8, 0x83, 0x00, 0x20, 0x00, //       60 mov eax, 0x200083     2 MiB, large, P+W
    0xb9, 0x3f, 0x00, 0x00, 0x00, //       65 mov ecx, 63
    0x48, 0x89, 0x07, //                   6a map: mov [rdi], rax
    0x48, 0x83, 0xc7, 0x08, //             6d add rdi, 8
    0x48, 0x05, 0x00, 0x00, 0x20, 0x00, // 71 add rax, 0x200000
    0xe2, 0xf1, //                         77 loop map
    0xbf, 0x00, 0x00, 0x20, 0x00, //       79 mov edi, 0x200000
    0xb9, 0x00, 0x40, 0x00, 0x00, //       7e mov ecx, PROBE_PAGES
    0xc6, 0x07, 0x01, //                   83 touch: mov byte [rdi], 1
    0x48, 0x81, 0xc7, 0x00, 0x10, 0x00, 0x00, // 86 add rdi, 4096
    0xe2, 0xf4, //                         8d loop touch
    0x66, 0xba, 0xf8, 0x03, //             8f mov dx, 0x3f8        COM1 data register
    0x48, 0x8d, 0x35, 0x24, 0x00, 0x00, 0x00, // 93 lea rsi, [rip + 0x24]  the marker at be
    0xac, //                               9a next: lodsb
    0x84, 0xc0, //                         9b test al, al
    0x74, 0x03, //                         9d jz done              NUL ends the message
    0xee, //                               9f out dx, al           the UART needs no setup
    0xeb, 0xf8, //                         a0 jmp next
    0xf4, //                               a2 done: hlt
    0xeb, 0xfd, //                         a3 jmp done
    0x0f, 0x1f, 0x00, //                   a5 nop                  align the GDT to 8
    // a8: GDT. Entry 0 is the null descriptor; entry 1 (selector 0x08) is a 64-bit code
    // segment: present, ring 0, execute/read, L bit set.
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
    0x00, 0x00, 0x00, 0x00, 0x00, 0x9a, 0x20, 0x00, //
    // b8: GDT descriptor for lgdt: limit 15, base 0x7ca8.
    0x0f, 0x00, 0xa8, 0x7c, 0x00, 0x00, //
];

// FIXME: the aarch64 probe guest has only run under TCG (on an x86_64 host); its KVM run
// on an arm64 host (with `-cpu host`) is untested until CI has such a runner.
/// An aarch64 program for the `virt` machine, loaded by QEMU's `-kernel` as a raw image and
/// entered at its first byte (position independent, MMU off). It writes one byte into each
/// of [`PROBE_PAGES`] pages from 8 MiB into RAM (past QEMU's device tree and the image),
/// then writes the marker to the PL011 UART at 0x0900_0000 and waits for interrupts
/// forever. Little-endian instruction words; the marker follows at 0x38.
const AARCH64_CODE: &[u32] = &[
    0xd2a8_1003, //      00 movz x3, #0x4080, lsl #16  RAM base 0x4000_0000 + 8 MiB
    0xd288_0004, //      04 movz x4, #0x4000           PROBE_PAGES
    0x3900_0064, //      08 touch: strb w4, [x3]
    0x9140_0463, //      0c add  x3, x3, #1, lsl #12   next 4 KiB page
    0xf100_0484, //      10 subs x4, x4, #1
    0x54ff_ffa1, //      14 b.ne touch
    0xd2a1_2001, //      18 movz x1, #0x0900, lsl #16  UART data register
    0x1000_00e2, //      1c adr  x2, message           28 bytes ahead (0x38)
    0x3840_1440, //      20 next: ldrb w0, [x2], #1
    0x3400_0060, //      24 cbz  w0, done
    0x3900_0020, //      28 strb w0, [x1]
    0x17ff_fffd, //      2c b    next
    0xd503_207f, //      30 done: wfi
    0x17ff_ffff, //      34 b    done
];

// The page count is encoded in both programs; keep them in step with the constant.
const _: () = assert!(
    u32::from_le_bytes([
        X86_BOOT_CODE[0x7f],
        X86_BOOT_CODE[0x80],
        X86_BOOT_CODE[0x81],
        X86_BOOT_CODE[0x82]
    ]) == PROBE_PAGES
);
const _: () = assert!((AARCH64_CODE[1] >> 5) & 0xffff == PROBE_PAGES);
const _: () = assert!(X86_BOOT_CODE.len() == 0xbe, "the marker must follow at 0xbe");

/// The probe guest for `arch`, as [`probe_accel`] boots it: for x86_64 a 512-byte boot
/// sector (SeaBIOS needs the disk to be at least 1 MiB: pad it), for aarch64 a raw image for
/// `-kernel`. Either prints [`PROBE_MARKER`] on the first serial port; useful wherever a test
/// needs a guest that proves it ran.
pub fn probe_guest(arch: Arch) -> Vec<u8> {
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
/// architecture, KVM is chosen only if `/dev/kvm` opens and a tiny probe guest (it enters
/// 64-bit mode, writes to 64 MiB of memory, then prints [`PROBE_MARKER`]) prints its marker
/// under KVM within 5 seconds *and* no later than the same guest under TCG (KVM gets at
/// least 1.5 s, as QEMU's start-up is part of both times). Nested hosts fail the second
/// condition: their KVM runs guests, but touching memory is so slow that a Linux kernel
/// spends minutes decompressing itself. The verdict is cached in `cache_dir` (see
/// [`accel_cache_path`]), so the probe runs once per kernel and QEMU version. Falling back
/// to TCG is logged as a warning once per process.
///
/// Blocks on the first call: about 2 s where KVM fails, well under 1 s where it works.
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

/// What every Linux kernel prints first on its console.
const BANNER: &[u8] = b"Linux version";
/// A working KVM prints the kernel banner in well under a second.
const KERNEL_CONFIRM_TIMEOUT: Duration = Duration::from_secs(8);

/// [`probe_accel`], and when that says KVM, a confirmation with a real Linux `kernel`: it is
/// booted under KVM without a root file system and must print its banner within seconds.
/// On some nested hosts the few-byte probe guest runs fine under KVM while a real kernel
/// under the same KVM prints nothing at all, so only a real kernel settles it. Both verdicts
/// are cached in `cache_dir` (the second keyed by the kernel file's size too).
pub fn probe_accel_with_kernel(arch: Arch, cache_dir: &Path, kernel: &Path) -> Accel {
    let first = probe_accel(arch, cache_dir);
    if first != Accel::Kvm {
        return first;
    }
    let key = accel_cache_path(arch, cache_dir).and_then(|base| {
        let len = fs::metadata(kernel).ok()?.len();
        Some(cache_dir.join(format!("{}-kernel-{len}", base.file_name()?.to_string_lossy())))
    });
    if let Some(cached) = key.as_ref().and_then(|k| fs::read_to_string(k).ok()) {
        if let Ok(accel) = cached.trim().parse::<Accel>() {
            warn_if_tcg(accel, "cached verdict");
            return accel;
        }
    }
    let verdict = if kernel_prints_banner(arch, kernel) { Accel::Kvm } else { Accel::Tcg };
    if let Some(key) = &key {
        if let Err(error) = write_cache(key, verdict) {
            tracing::debug!(%error, cache = %key.display(), "cannot cache accelerator verdict");
        }
    }
    warn_if_tcg(verdict, "a real kernel prints nothing under KVM");
    verdict
}

/// Boots `kernel` without root under KVM and waits for its banner on the serial port.
fn kernel_prints_banner(arch: Arch, kernel: &Path) -> bool {
    use std::io::Read;
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
    let ok = rx.recv_timeout(KERNEL_CONFIRM_TIMEOUT).is_ok();
    tracing::debug!(ok, secs = started.elapsed().as_secs_f64(), "KVM confirmed with a real kernel");
    let _ = child.kill();
    let _ = child.wait();
    ok
}

fn decide(arch: Arch) -> (Accel, &'static str) {
    if let Err(error) = fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        tracing::debug!(%error, "/dev/kvm does not open");
        return (Accel::Tcg, "/dev/kvm cannot be opened");
    }
    // KVM is only worth it if it beats TCG on the same guest; the TCG run also calibrates
    // the deadline to the host's current speed.
    let kvm_deadline = match probe_guest_time(arch, Accel::Tcg, TCG_PROBE_TIMEOUT) {
        Ok(Some(tcg)) => {
            tracing::debug!(?tcg, "TCG probe guest printed its marker");
            tcg.clamp(KVM_PROBE_FLOOR, KVM_PROBE_TIMEOUT)
        }
        Ok(None) => KVM_PROBE_TIMEOUT,
        Err(error) => {
            tracing::debug!(error = &error as &dyn std::error::Error, "TCG probe failed");
            KVM_PROBE_TIMEOUT
        }
    };
    match probe_guest_time(arch, Accel::Kvm, kvm_deadline) {
        Ok(Some(kvm)) => {
            tracing::debug!(?kvm, "KVM probe guest printed its marker");
            (Accel::Kvm, "the KVM probe guest ran faster than under TCG")
        }
        Ok(None) => (Accel::Tcg, "the KVM probe guest was slower than TCG or printed nothing"),
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

/// Boots the probe guest for `arch` under `accel` and returns how long after QEMU's start
/// it printed [`PROBE_MARKER`], or `None` if it did not within `timeout`. QEMU is killed
/// (by PID) afterwards.
///
/// [`probe_accel`] runs this under TCG and under KVM and compares.
pub fn probe_guest_time(
    arch: Arch,
    accel: Accel,
    timeout: Duration,
) -> Result<Option<Duration>, AccelProbeError> {
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
) -> Result<Option<Duration>, AccelProbeError> {
    let prepare = |path: &Path| {
        let path = path.to_owned();
        move |source| AccelProbeError::PrepareGuest { path, source }
    };
    fs::create_dir_all(dir).map_err(prepare(dir))?;
    let image = dir.join("probe.img");
    let serial = dir.join("serial.out");
    let log = dir.join("qemu.log");
    fs::write(&image, probe_guest(arch)).map_err(prepare(&image))?;
    if arch == Arch::X86_64 {
        // SeaBIOS reads the boot sector through a CHS geometry of 16 heads and 63 sectors
        // per track: a disk smaller than one such cylinder has zero cylinders and cannot be
        // booted. One sparse MiB is plenty.
        let extend = || fs::OpenOptions::new().write(true).open(&image)?.set_len(1 << 20);
        extend().map_err(prepare(&image))?;
    }
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
    command.args(["-accel", accel.as_str(), "-cpu", cpu, "-m", PROBE_MEMORY]);
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
            break Some(started.elapsed());
        }
        if child.try_wait().map_err(stop_error)?.is_some() || started.elapsed() >= timeout {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // `kill` addresses our own unreaped child by PID, so it cannot hit another process.
    if child.try_wait().map_err(stop_error)?.is_none() {
        child.kill().map_err(stop_error)?;
    }
    child.wait().map_err(stop_error)?;
    if seen.is_none() {
        let qemu_said = fs::read_to_string(&log).unwrap_or_default();
        tracing::debug!(%arch, %accel, qemu_said = qemu_said.trim(), "probe guest printed no marker");
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_probe_guest_addresses_point_where_the_code_means() {
        let guest = probe_guest(Arch::X86_64);
        assert_eq!(guest.len(), 512);
        assert_eq!(&guest[510..], &[0x55, 0xaa]);
        let at = |offset: usize| u16::from_le_bytes([guest[offset], guest[offset + 1]]) as usize;
        // lgdt operand -> descriptor whose base is the GDT with the 64-bit code segment.
        let gdtr = at(0x26) - 0x7c00;
        let gdt = at(gdtr + 2) - 0x7c00;
        assert_eq!(at(gdtr), 15);
        assert_eq!(guest[gdt + 8 + 5], 0x9a, "present ring-0 code segment");
        assert_eq!(guest[gdt + 8 + 6], 0x20, "long-mode bit");
        // The far jump lands on the first 64-bit instruction (mov edi, imm32).
        assert_eq!(guest[at(0x55) - 0x7c00], 0xbf);
        assert_eq!(at(0x59), 0x08, "code segment selector");
        // The page count, and lea's rip-relative displacement reaching the marker.
        assert_eq!(u32::from_le_bytes(guest[0x7f..0x83].try_into().expect("4")), PROBE_PAGES);
        let marker = 0x9a + u32::from_le_bytes(guest[0x96..0x9a].try_into().expect("4")) as usize;
        assert_eq!(&guest[marker..][..PROBE_MARKER.len()], PROBE_MARKER.as_bytes());
    }

    #[test]
    fn aarch64_probe_guest_adr_points_at_the_marker() {
        let guest = probe_guest(Arch::Aarch64);
        // adr x2 at byte 0x1c: immhi in bits 5..24, immlo in bits 29..31.
        let word = AARCH64_CODE[7];
        let offset = (((word >> 5) & 0x7ffff) << 2 | (word >> 29) & 3) as usize;
        assert_eq!(&guest[0x1c + offset..][..PROBE_MARKER.len()], PROBE_MARKER.as_bytes());
        // movz x4, #imm16 carries the page count in bits 5..21.
        assert_eq!((AARCH64_CODE[1] >> 5) & 0xffff, PROBE_PAGES);
    }

    #[test]
    fn foreign_arch_is_tcg_without_probing() {
        let other = if Arch::host() == Arch::X86_64 { Arch::Aarch64 } else { Arch::X86_64 };
        let dir = std::env::temp_dir().join("mesh-accel-never-created");
        assert_eq!(probe_accel(other, &dir), Accel::Tcg);
        assert!(!dir.exists(), "no probe and no cache for a foreign architecture");
    }
}
