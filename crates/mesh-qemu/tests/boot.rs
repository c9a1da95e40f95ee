//! Boots a real Debian kernel (from `mesh-testkit`) with a small busybox initramfs on our
//! [`VmSpec`] command line under TCG, for each architecture, and checks what the guest
//! itself saw: the marker on the serial log, the drive with its serial number and the
//! overlay's data, a message pushed over the virtio-serial port; QMP says `running`; then
//! [`QemuProcess::stop`] brings QEMU down (on x86_64 the guest powers off on the ACPI power
//! button). Afterwards the guest's disk write is in the overlay and not in the base.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mesh_qemu::initramfs::{busybox_init_script, InitramfsBuilder};
use mesh_qemu::{
    create_overlay, kill_recorded, process_matches, Accel, Arch, Boot, Drive, ImageFormat,
    QemuProcess, Qmp, QmpEvent, VirtioSerialPort, VmSpec,
};
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::time::timeout;

const BOOT_LIMIT: Duration = Duration::from_secs(90);
const BASE_TEXT: &[u8] = b"MESH-BASE-DATA";
const GUEST_TEXT: &str = "GUEST-WROTE-THIS";

/// The guest's work, after its modules are loaded.
fn guest_body(arch: Arch) -> String {
    format!(
        r#"
echo "MESH-BOOT-OK arch=$(uname -m) serial=$(cat /sys/block/vda/serial) base=$(head -c 14 /dev/vda)"
printf '{GUEST_TEXT}' | dd of=/dev/vda bs=512 seek=8 conv=notrunc 2>/dev/null
sync
# Open every input device before telling the host we are ready: from the open on, the
# kernel queues key events (the ACPI power button) for us, so none can slip by.
fd=3
for event in /dev/input/event*; do
    [ -e "$event" ] || continue
    eval "exec $fd<$event"
    (head -c 1 <&$fd >/dev/null; echo MESH-POWER-BUTTON; poweroff -f) &
    fd=$((fd + 1))
done
echo "input devices: $(ls /dev/input 2>&1 | tr '\n' ' ')"
for port in /sys/class/virtio-ports/*; do
    if [ "$(cat $port/name)" = mesh.ready ]; then
        echo "READY {arch}" > /dev/$(basename $port)
    fi
done
while :; do sleep 1; done
"#
    )
}

fn initramfs(arch: Arch, out: &Path) -> mesh_testkit::GuestKernel {
    let kernel = mesh_testkit::guest_kernel(arch)
        .unwrap_or_else(|e| panic!("guest kernel for {arch} (needs apt-get): {e:#}"));
    let mut modules = vec!["virtio_pci", "virtio_blk", "virtio_console", "evdev"];
    if arch == Arch::X86_64 {
        modules.push("button");
    }
    let mut builder = InitramfsBuilder::new();
    builder.busybox(&kernel.busybox).expect("busybox");
    let order = builder.modules(&kernel.modules_dir, &modules).expect("modules");
    builder.file_bytes("/init", busybox_init_script(&order, &guest_body(arch)).into_bytes(), 0o755);
    builder.write(File::create(out).expect("create initramfs")).expect("write initramfs");
    kernel
}

fn serial_text(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).replace("\r\n", "\n")
}

async fn boot(arch: Arch) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let initrd = dir.path().join("initrd.cpio");
    let kernel = initramfs(arch, &initrd);

    let base = dir.path().join("base.raw");
    let mut base_bytes = vec![0u8; 8 << 20];
    base_bytes[..BASE_TEXT.len()].copy_from_slice(BASE_TEXT);
    std::fs::write(&base, &base_bytes).expect("write base");
    let overlay = dir.path().join("root.qcow2");
    create_overlay(&base, &overlay).expect("overlay");

    let console = if arch == Arch::X86_64 { "ttyS0" } else { "ttyAMA0" };
    let spec = VmSpec {
        name: format!("boot-{arch}"),
        arch,
        accel: Accel::Tcg,
        cpu_model: None,
        cpus: 1,
        memory_mib: 256,
        boot: Boot::Direct {
            kernel: kernel.kernel.clone(),
            initrd: Some(initrd),
            cmdline: format!("console={console} panic=-1 quiet"),
        },
        drives: vec![Drive {
            path: overlay.clone(),
            format: ImageFormat::Qcow2,
            read_only: false,
            serial: Some("mesh-root".into()),
        }],
        nics: vec![],
        serial_log: dir.path().join("serial.log"),
        qmp_socket: dir.path().join("qmp.sock"),
        virtio_serial: vec![VirtioSerialPort {
            name: "mesh.ready".into(),
            socket: dir.path().join("ready.sock"),
        }],
    };
    let command = spec.command().expect("valid spec");
    let mut process =
        QemuProcess::spawn(&command, None, &dir.path().join("qemu.log")).expect("spawn QEMU");
    let (pid, start) = (process.pid(), process.start_time());

    let test = async {
        let qmp =
            Qmp::connect(&spec.qmp_socket, Duration::from_secs(10), || process_matches(pid, start))
                .await
                .expect("QMP");
        let mut events = qmp.events();
        // QEMU listens on the port's socket from the start; connect before the guest talks.
        let mut ready = UnixStream::connect(&spec.virtio_serial[0].socket).await.expect("port");

        let started = Instant::now();
        let boot_line = loop {
            let text = serial_text(&spec.serial_log);
            if let Some(line) = text.lines().find(|l| l.starts_with("MESH-BOOT-OK")) {
                break line.to_owned();
            }
            assert!(process.try_wait().expect("try_wait").is_none(), "QEMU died:\n{text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        eprintln!("{arch}: booted to the marker in {:?}", started.elapsed());
        let uname = if arch == Arch::X86_64 { "x86_64" } else { "aarch64" };
        assert_eq!(
            boot_line,
            format!("MESH-BOOT-OK arch={uname} serial=mesh-root base=MESH-BASE-DATA")
        );

        let mut message = Vec::new();
        while !message.ends_with(b"\n") {
            let mut buf = [0u8; 64];
            let n = ready.read(&mut buf).await.expect("read port");
            assert!(n > 0, "port closed early");
            message.extend_from_slice(&buf[..n]);
        }
        assert_eq!(String::from_utf8_lossy(&message), format!("READY {arch}\n"));

        let status = qmp.query_status().await.expect("query-status");
        assert_eq!((status.status.as_str(), status.running), ("running", true));

        // x86_64 guests see the ACPI power button; aarch64 `virt` without firmware gives the
        // guest no ACPI, so QEMU gets `quit` after the grace period.
        let grace =
            if arch == Arch::X86_64 { Duration::from_secs(20) } else { Duration::from_secs(1) };
        process.stop(Some(&qmp), grace).await.expect("stop");
        let status = process.wait().await.expect("wait");
        assert!(status.success(), "{status:?}");
        let mut shutdown: Option<QmpEvent> = None;
        while let Ok(event) = events.try_recv() {
            if event.event == "SHUTDOWN" {
                shutdown = Some(event);
            }
        }
        let shutdown = shutdown.expect("a SHUTDOWN event");
        let by_guest = arch == Arch::X86_64;
        let serial = serial_text(&spec.serial_log);
        assert_eq!(shutdown.data["guest"], by_guest, "{shutdown:?}; serial:\n{serial}");
        if by_guest {
            assert!(serial_text(&spec.serial_log).contains("MESH-POWER-BUTTON"));
        }
    };
    if timeout(BOOT_LIMIT, test).await.is_err() {
        let _ = kill_recorded(pid, start);
        panic!("{arch} timed out; serial:\n{}", serial_text(&spec.serial_log));
    }

    // The guest's write is in the overlay, read back by qemu-img; the base is untouched.
    let flat = dir.path().join("flat.raw");
    let status = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&overlay)
        .arg(&flat)
        .status()
        .expect("qemu-img (qemu-utils) is needed");
    assert!(status.success());
    let mut flat_bytes = Vec::new();
    File::open(&flat).expect("flat").read_to_end(&mut flat_bytes).expect("read");
    assert_eq!(&flat_bytes[..BASE_TEXT.len()], BASE_TEXT);
    assert_eq!(&flat_bytes[4096..4096 + GUEST_TEXT.len()], GUEST_TEXT.as_bytes());
    assert_eq!(std::fs::read(&base).expect("base"), base_bytes, "base was written");
    let _ = std::io::stdout().flush();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x86_64_guest_boots_reports_and_powers_off_on_the_acpi_button() {
    boot(Arch::X86_64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aarch64_guest_boots_reports_and_stops_through_quit() {
    boot(Arch::Aarch64).await;
}
