//! Everything about running one QEMU VM: its disk overlay, its command line, its process,
//! its monitor (QMP) and its console log.
//!
//! - [`create_overlay`] writes a qcow2 v3 overlay over a qcow2 or raw base image (format
//!   probed from magic bytes, backing path absolute) in pure Rust.
//! - [`VmSpec::command`] turns a typed VM description into a [`QemuCommand`]: plain data,
//!   testable without QEMU.
//! - [`QemuProcess`] spawns QEMU (optionally inside a network namespace), reaps it and stops
//!   it gracefully; [`kill_recorded`] ends a VM left behind by a crashed run, only if its PID
//!   still names the same process.
//! - [`Qmp`] is an async QMP client with command ids and events routed apart from replies.
//! - [`probe_accel`] tells whether KVM really runs guests on this host.
//!
//! Left out, on purpose: networks (taps, bridges and namespaces are made by `mesh-net`),
//! cloud-init seeds, image building and downloads, and anything that concerns more than one
//! VM (that is `mesh-core`). This crate sits at the bottom of the layering and depends on no
//! other vm-mesh crate.
//!
//! # Examples
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use mesh_qemu::{Accel, Arch, Boot, Drive, ImageFormat, VmSpec};
//!
//! let dir = tempfile::tempdir()?;
//! let base = dir.path().join("base.img");
//! std::fs::write(&base, vec![0u8; 1 << 20])?;
//! let overlay = dir.path().join("node1.qcow2");
//! mesh_qemu::create_overlay(&base, &overlay)?;
//!
//! let spec = VmSpec {
//!     name: "node1".into(),
//!     arch: Arch::X86_64,
//!     accel: Accel::Tcg,
//!     cpu_model: None,
//!     cpus: 1,
//!     memory_mib: 256,
//!     boot: Boot::Bios,
//!     drives: vec![Drive {
//!         path: overlay,
//!         format: ImageFormat::Qcow2,
//!         read_only: false,
//!         serial: None,
//!     }],
//!     nics: vec![],
//!     serial_log: dir.path().join("node1.log"),
//!     qmp_socket: dir.path().join("node1.qmp"),
//!     virtio_serial: vec![],
//! };
//! let command = spec.command()?;
//! assert_eq!(command.program, "qemu-system-x86_64");
//! assert!(command.args.contains(&"-nodefaults".to_string()));
//! # Ok(()) }
//! ```

mod accel;
mod arch;
mod atomic;
mod command;
mod firmware;
pub mod initramfs;
mod overlay;
mod process;
mod qmp;

pub use accel::{
    accel_cache_path, probe_accel, probe_accel_with_kernel, probe_guest, probe_guest_time,
    AccelProbeError, PROBE_MARKER,
};
pub use arch::{Accel, Arch, ParseAccelError, ParseArchError};
pub use command::{
    Boot, Drive, Nic, QemuCommand, SpecError, VirtioSerialPort, VmSpec, MAX_SOCKET_PATH,
};
pub use firmware::{firmware_code, prepare_firmware_vars, FirmwareError, AARCH64_FLASH_SIZE};
pub use overlay::{create_overlay, probe_format, ImageFormat, OverlayError};
pub use process::{
    kill_recorded, priority, process_matches, process_start_time, set_priority, ProcessError,
    QemuProcess,
};
pub use qmp::{BlockInfo, BlockInserted, Qmp, QmpError, QmpEvent, QmpTimestamp, RunState};
