//! Tiny TCG guests: a Debian kernel, our initramfs with busybox, a shell script as the work.
//!
//! The guest gets read-only virtio block drives (`/dev/vda`, `/dev/vdb`, ... in the order
//! given), runs the script once and powers off. Its serial console goes to a file; what the
//! script printed is cut out between two markers that include a per-run nonce, so neither
//! kernel messages before it nor a script that happens to print a marker-like line can be
//! mistaken for the result.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use mesh_qemu::initramfs::{busybox_init_script, InitramfsBuilder};
use mesh_qemu::{Accel, Boot, Drive, ImageFormat, QemuCommand, VmSpec};

use crate::kernel::{guest_kernel, GuestKernel};
use crate::Arch;

/// Modules every test guest loads: virtio block on PCI (both q35 and `virt` put virtio on
/// PCI here) and the file systems tests read. ext2 is served by ext4, built into the kernel.
const GUEST_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "isofs",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "nls_iso8859-1",
    "ext4",
];

/// Memory for a guest: the kernel, an initramfs of a few MiB and busybox need little.
const GUEST_MEMORY_MIB: u32 = 256;

/// How often the serial log and the process are checked while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What a finished guest produced.
#[derive(Debug, Clone)]
pub struct GuestOutput {
    /// What the script printed (stdout and stderr), with `\r\n` turned back into `\n`.
    pub output: String,
    /// The script's exit status.
    pub exit_code: i32,
    /// From starting QEMU to the script starting: the boot time.
    pub boot_time: Duration,
    /// From starting QEMU to QEMU exiting.
    pub total_time: Duration,
}

/// A tiny guest running under QEMU/TCG. Dropping it kills QEMU (by its PID) if still running.
#[derive(Debug)]
pub struct GuestRun {
    child: Child,
    // Holds the initramfs and serial log until QEMU is gone.
    _dir: tempfile::TempDir,
    serial_log: PathBuf,
    begin_marker: String,
    end_marker: String,
    started: Instant,
    timeout: Duration,
}

impl GuestRun {
    /// Boots a guest of `arch` that runs `script` with `sh` after loading its modules.
    ///
    /// `drives` are attached read-only as raw virtio block devices, in order. `timeout`
    /// bounds the whole run in [`GuestRun::wait`].
    pub fn start(
        arch: Arch,
        drives: &[PathBuf],
        script: &str,
        timeout: Duration,
    ) -> anyhow::Result<GuestRun> {
        let kernel = guest_kernel(arch)?;
        let base = base_initramfs(&kernel)?;
        let nonce = nonce();
        let begin_marker = format!("@@mesh-testkit-begin-{nonce}@@");
        let end_marker = format!("@@mesh-testkit-end-{nonce}@@");

        let dir = tempfile::Builder::new().prefix("mesh-testkit-").tempdir()?;
        let initrd = dir.path().join("initrd.cpio");
        // Kernel messages would interleave with the script's output: quieten the console
        // before the begin marker. The script runs in its own shell so that `exit` in it
        // still reaches the end marker.
        let body = format!(
            "dmesg -n 1\n\
             echo '{begin_marker}'\n\
             sh /mesh/script.sh </dev/null 2>&1\n\
             echo \"{end_marker} rc=$?\"\n"
        );
        let mut builder = base.builder.clone();
        builder.file_bytes("/mesh/script.sh", script.as_bytes().to_vec(), 0o755).file_bytes(
            "/init",
            busybox_init_script(&base.load_order, &body).into_bytes(),
            0o755,
        );
        let file = fs::File::create(&initrd)?;
        builder
            .write(std::io::BufWriter::new(file))
            .with_context(|| format!("writing {}", initrd.display()))?;

        let command = qemu_command(arch, &kernel.kernel, &initrd, dir.path(), drives)?;
        let serial_log = dir.path().join("serial.log");
        tracing::debug!(%command, "starting test guest");
        let started = Instant::now();
        let child = command
            .to_std()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}: is QEMU installed?", command.program))?;

        Ok(GuestRun { child, _dir: dir, serial_log, begin_marker, end_marker, started, timeout })
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the guest to power off (or the timeout) and returns what the script printed.
    ///
    /// Fails if QEMU exits with an error, if the timeout passes (QEMU is then killed), or if
    /// the markers are missing; the error carries the tail of the serial console.
    pub fn wait(mut self) -> anyhow::Result<GuestOutput> {
        let mut boot_time = None;
        let status = loop {
            if boot_time.is_none() && self.serial_contains_begin() {
                boot_time = Some(self.started.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if self.started.elapsed() > self.timeout {
                self.kill();
                bail!(
                    "test guest timed out after {:?}; serial console ends with:\n{}",
                    self.timeout,
                    self.serial_tail()
                );
            }
            thread::sleep(POLL_INTERVAL);
        };
        let total_time = self.started.elapsed();

        if !status.success() {
            let mut stderr = String::new();
            if let Some(mut pipe) = self.child.stderr.take() {
                use std::io::Read;
                let _ = pipe.read_to_string(&mut stderr);
            }
            bail!("QEMU exited with {status}: {}\nserial:\n{}", stderr.trim(), self.serial_tail());
        }
        let serial = self.serial_text();
        let (output, exit_code) = between_markers(&serial, &self.begin_marker, &self.end_marker)
            .with_context(|| {
                format!("script markers missing; serial console:\n{}", tail(&serial))
            })?;
        Ok(GuestOutput {
            output,
            exit_code,
            boot_time: boot_time.unwrap_or(total_time),
            total_time,
        })
    }

    fn serial_text(&self) -> String {
        let bytes = fs::read(&self.serial_log).unwrap_or_default();
        String::from_utf8_lossy(&bytes).replace("\r\n", "\n")
    }

    fn serial_contains_begin(&self) -> bool {
        self.serial_text().contains(&self.begin_marker)
    }

    fn serial_tail(&self) -> String {
        tail(&self.serial_text())
    }

    fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Child::kill sends SIGKILL to this child's PID only.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for GuestRun {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Boots a guest running `script` with read-only `drives` and returns what it printed.
///
/// Fails if the script exits non-zero (with its output in the error), or as
/// [`GuestRun::wait`] does.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use mesh_testkit::{run_guest, Arch};
///
/// let output = run_guest(Arch::X86_64, &[], "uname -m", Duration::from_secs(60))?;
/// assert_eq!(output.trim(), "x86_64");
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn run_guest(
    arch: Arch,
    drives: &[PathBuf],
    script: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    let result = GuestRun::start(arch, drives, script, timeout)?.wait()?;
    tracing::debug!(%arch, boot = ?result.boot_time, total = ?result.total_time, "test guest ran");
    if result.exit_code != 0 {
        bail!("guest script exited with {}; it printed:\n{}", result.exit_code, result.output);
    }
    Ok(result.output)
}

/// An initramfs with busybox and the guest modules, and their load order.
#[derive(Debug)]
struct BaseInitramfs {
    builder: InitramfsBuilder,
    load_order: Vec<String>,
}

/// Built once per architecture and process: scanning the module tree costs more than a copy.
fn base_initramfs(kernel: &GuestKernel) -> anyhow::Result<Arc<BaseInitramfs>> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Arc<BaseInitramfs>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(base) = cache.get(&kernel.modules_dir) {
        return Ok(Arc::clone(base));
    }

    let mut builder = InitramfsBuilder::new();
    builder.busybox(&kernel.busybox)?;
    let load_order = builder
        .modules(&kernel.modules_dir, GUEST_MODULES)
        .with_context(|| format!("collecting modules for the {} guest", kernel.arch))?;
    let base = Arc::new(BaseInitramfs { builder, load_order });
    cache.insert(kernel.modules_dir.clone(), Arc::clone(&base));
    Ok(base)
}

/// The QEMU command for a test guest, from `mesh-qemu`'s [`VmSpec`]: TCG, direct kernel
/// boot, read-only raw virtio drives, serial console to `serial_log`; plus `-no-reboot`, so
/// that a kernel panic ends QEMU instead of rebooting into the same panic until the timeout.
fn qemu_command(
    arch: Arch,
    kernel: &Path,
    initrd: &Path,
    run_dir: &Path,
    drives: &[PathBuf],
) -> anyhow::Result<QemuCommand> {
    let console = match arch {
        Arch::X86_64 => "ttyS0",
        Arch::Aarch64 => "ttyAMA0",
    };
    let spec = VmSpec {
        name: format!("testkit-{arch}"),
        arch,
        accel: Accel::Tcg,
        cpu_model: None,
        cpus: 1,
        memory_mib: GUEST_MEMORY_MIB,
        boot: Boot::Direct {
            kernel: kernel.to_path_buf(),
            initrd: Some(initrd.to_path_buf()),
            cmdline: format!("console={console} panic=-1 quiet"),
        },
        drives: drives
            .iter()
            .map(|path| Drive {
                path: path.clone(),
                format: ImageFormat::Raw,
                read_only: true,
                serial: None,
            })
            .collect(),
        nics: Vec::new(),
        serial_log: run_dir.join("serial.log"),
        qmp_socket: run_dir.join("qmp.sock"),
        virtio_serial: Vec::new(),
    };
    let mut command = spec.command().context("building the test guest's QEMU command")?;
    command.args.push("-no-reboot".to_owned());
    Ok(command)
}

/// The lines between the begin marker and the end marker, and the exit code the end marker
/// reports.
fn between_markers(serial: &str, begin: &str, end: &str) -> Option<(String, i32)> {
    let begin_line = format!("{begin}\n");
    let start = serial.find(&begin_line)? + begin_line.len();
    let rest = &serial[start..];
    let end_at = rest.find(&format!("{end} rc="))?;
    let status_text = &rest[end_at + end.len() + " rc=".len()..];
    let status: String = status_text.chars().take_while(char::is_ascii_digit).collect();
    Some((rest[..end_at].to_owned(), status.parse().ok()?))
}

/// The last lines of a console log, enough to see why a guest failed.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A value unique to this run within the host, for the output markers.
fn nonce() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}-{}-{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_cut_between_markers_with_status() {
        let serial = "boot noise\n@@b@@\nline 1\n@@b@@ inside\nline 2\n@@e@@ rc=3\npoweroff\n";
        let (output, status) = between_markers(serial, "@@b@@", "@@e@@").expect("markers");
        assert_eq!(output, "line 1\n@@b@@ inside\nline 2\n");
        assert_eq!(status, 3);
        assert!(between_markers("@@b@@\nno end\n", "@@b@@", "@@e@@").is_none());
        // The echo of the init script itself must not count as the begin marker.
        assert!(between_markers("echo '@@b@@'\n", "@@b@@", "@@e@@").is_none());
    }

    #[test]
    fn drives_are_read_only_raw_virtio_and_reboot_ends_qemu() {
        let command = qemu_command(
            Arch::Aarch64,
            Path::new("/k"),
            Path::new("/i"),
            Path::new("/run"),
            &[PathBuf::from("/a,b.img")],
        )
        .expect("valid spec");
        assert_eq!(command.program, "qemu-system-aarch64");
        let joined = command.args.join(" ");
        assert!(joined.contains("-accel tcg"), "{joined}");
        assert!(joined.contains("file=/a,,b.img,format=raw,if=none"), "{joined}");
        assert!(joined.contains(",readonly=on"), "{joined}");
        assert!(joined.contains("virtio-blk-pci,drive="), "{joined}");
        assert!(joined.contains("console=ttyAMA0"), "{joined}");
        assert_eq!(command.args.last().map(String::as_str), Some("-no-reboot"));
    }
}
