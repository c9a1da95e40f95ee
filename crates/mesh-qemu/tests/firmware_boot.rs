//! Firmware and BIOS boot on our command line, under TCG: SeaBIOS boots the first virtio
//! disk (the x86_64 probe boot sector, which prints a marker), and AAVMF starts from its
//! read-only code bank and a per-VM variable store padded to 64 MiB (it prints its banner).

use std::path::Path;
use std::time::{Duration, Instant};

use mesh_qemu::{
    firmware_code, prepare_firmware_vars, probe_guest, Accel, Arch, Boot, Drive, ImageFormat,
    QemuProcess, VmSpec, AARCH64_FLASH_SIZE, PROBE_MARKER,
};

const LIMIT: Duration = Duration::from_secs(60);

fn spec(dir: &Path, arch: Arch, boot: Boot, drives: Vec<Drive>) -> VmSpec {
    VmSpec {
        name: format!("fw-{arch}"),
        arch,
        accel: Accel::Tcg,
        cpu_model: None,
        cpus: 1,
        memory_mib: 256,
        boot,
        drives,
        nics: vec![],
        serial_log: dir.join("serial.log"),
        qmp_socket: dir.join("qmp.sock"),
        virtio_serial: vec![],
    }
}

/// Runs the VM until its serial log contains `needle`, then stops it.
async fn expect_on_serial(spec: &VmSpec, needle: &str) {
    let log = spec.serial_log.with_file_name("qemu.log");
    let command = spec.command().expect("valid spec");
    let mut process = QemuProcess::spawn(&command, None, &log).expect("spawn QEMU");
    let started = Instant::now();
    let seen = loop {
        let serial = String::from_utf8_lossy(&std::fs::read(&spec.serial_log).unwrap_or_default())
            .into_owned();
        if serial.contains(needle) {
            break true;
        }
        if started.elapsed() > LIMIT || process.try_wait().expect("try_wait").is_some() {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("{}: {needle:?} after {:?}", spec.name, started.elapsed());
    process.stop(None, Duration::from_secs(5)).await.expect("stop");
    let qemu_said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(seen, "{needle:?} never appeared on {}; QEMU said: {qemu_said}", spec.name);
}

#[tokio::test]
async fn seabios_boots_the_first_virtio_disk() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let disk = dir.path().join("boot.img");
    std::fs::write(&disk, probe_guest(Arch::X86_64)).expect("write boot sector");
    std::fs::File::options()
        .write(true)
        .open(&disk)
        .and_then(|file| file.set_len(1 << 20))
        .expect("pad disk");
    // A second, blank disk must not get in the way: only drive0 carries a boot index.
    let blank = dir.path().join("blank.img");
    std::fs::write(&blank, vec![0u8; 1 << 20]).expect("write blank disk");
    let drives = vec![
        Drive { path: disk, format: ImageFormat::Raw, read_only: true, serial: None },
        Drive { path: blank, format: ImageFormat::Raw, read_only: false, serial: None },
    ];
    let spec = spec(dir.path(), Arch::X86_64, Boot::Bios, drives);
    expect_on_serial(&spec, PROBE_MARKER).await;
}

#[tokio::test]
async fn aavmf_starts_from_padded_flash_banks() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let code_template = Path::new("/usr/share/AAVMF/AAVMF_CODE.fd");
    let vars_template = Path::new("/usr/share/AAVMF/AAVMF_VARS.fd");
    assert!(code_template.exists(), "qemu-efi-aarch64 is needed for this test");
    let code = firmware_code(code_template, dir.path()).expect("code");
    let vars = dir.path().join("VARS.fd");
    prepare_firmware_vars(vars_template, &vars).expect("vars");
    assert_eq!(std::fs::metadata(&vars).expect("vars").len(), AARCH64_FLASH_SIZE);

    let spec = spec(dir.path(), Arch::Aarch64, Boot::Firmware { code, vars }, vec![]);
    expect_on_serial(&spec, "UEFI firmware").await;
}
