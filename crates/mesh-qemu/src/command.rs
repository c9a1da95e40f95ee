//! The QEMU command line as plain data, built from a typed VM description.
//!
//! Nothing here starts a process or touches a file: [`VmSpec::command`] turns a description
//! into a [`QemuCommand`] (program and arguments) that tests can compare against golden
//! vectors and [`crate::QemuProcess::spawn`] can run.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Accel, Arch, ImageFormat};

/// The longest path a Unix socket address can hold on Linux (`sun_path` is 108 bytes,
/// one of them the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Everything needed to start one VM.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    /// The VM's name, shown by QEMU in its window title and process list.
    pub name: String,
    /// Guest architecture: `q35` machine for x86_64, `virt` for aarch64.
    pub arch: Arch,
    /// Accelerator; KVM is only accepted for the host architecture.
    pub accel: Accel,
    /// CPU model; `None` picks the default for the arch and accelerator (see
    /// [`VmSpec::default_cpu_model`]).
    pub cpu_model: Option<String>,
    /// Number of virtual CPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// How the guest boots.
    pub boot: Boot,
    /// Disks, attached in order as virtio block devices `drive0`, `drive1`, ...
    pub drives: Vec<Drive>,
    /// NICs, attached in order as virtio-net devices `nic0`, `nic1`, ... on netdevs `net0`,
    /// `net1`, ... (either name works with [`crate::Qmp::set_link`]).
    pub nics: Vec<Nic>,
    /// File that receives everything the guest writes to its first serial port.
    pub serial_log: PathBuf,
    /// Unix socket on which QEMU serves QMP.
    pub qmp_socket: PathBuf,
    /// virtio-serial ports, each served by QEMU on a Unix socket.
    pub virtio_serial: Vec<VirtioSerialPort>,
}

/// How the guest boots.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Boot {
    /// QEMU loads a Linux kernel (and initrd) itself: fastest under TCG, no firmware.
    Direct {
        /// Kernel image (`vmlinuz` on x86_64, `Image` or `vmlinuz` on aarch64).
        kernel: PathBuf,
        /// Initial ramdisk, if any.
        initrd: Option<PathBuf>,
        /// Kernel command line.
        cmdline: String,
    },
    /// UEFI firmware from two pflash images: `code` attached read-only, `vars` a per-VM
    /// writable copy of the variable store. For aarch64 (AAVMF) both must be 64 MiB; see
    /// [`crate::prepare_firmware_vars`] and [`crate::firmware_code`].
    Firmware {
        /// Firmware code, shared and read-only.
        code: PathBuf,
        /// This VM's variable store.
        vars: PathBuf,
    },
    /// The default SeaBIOS of the x86_64 machine, booting the first drive.
    Bios,
}

impl Boot {
    fn kind(&self) -> &'static str {
        match self {
            Boot::Direct { .. } => "direct kernel",
            Boot::Firmware { .. } => "firmware",
            Boot::Bios => "BIOS",
        }
    }
}

/// A disk attached as a virtio block device.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Drive {
    /// The image file.
    pub path: PathBuf,
    /// Its format, passed explicitly so QEMU never guesses.
    pub format: ImageFormat,
    /// Attach read-only (seeds and repo images).
    pub read_only: bool,
    /// Serial number the guest sees (`/dev/disk/by-id/virtio-<serial>`), at most 20 bytes.
    pub serial: Option<String>,
}

/// A virtio-net NIC on an existing tap device.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    /// Name of the tap device, which must already exist in QEMU's network namespace.
    pub tap: String,
    /// MAC address, six colon-separated hex pairs.
    pub mac: String,
}

/// A virtio-serial port that QEMU serves on a Unix socket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VirtioSerialPort {
    /// Port name the guest sees under `/dev/virtio-ports/`.
    pub name: String,
    /// Socket QEMU listens on; the host connects whenever it likes.
    pub socket: PathBuf,
}

/// A program and its arguments, ready to run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct QemuCommand {
    /// The executable, looked up in `PATH`.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
}

impl QemuCommand {
    /// The same command as a [`std::process::Command`], with nothing else set.
    pub fn to_std(&self) -> std::process::Command {
        let mut command = std::process::Command::new(&self.program);
        command.args(&self.args);
        command
    }
}

impl fmt::Display for QemuCommand {
    /// Shell-quoted, for logs and for pasting into a terminal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&shell_quote(&self.program))?;
        for arg in &self.args {
            write!(f, " {}", shell_quote(arg))?;
        }
        Ok(())
    }
}

fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=.,:/@%+".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Reasons a [`VmSpec`] cannot be turned into a command line.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The VM has no name.
    #[error("the VM name is empty")]
    EmptyName,
    /// Zero CPUs or zero memory.
    #[error("VM {name} needs at least one CPU and some memory")]
    NoResources {
        /// The VM.
        name: String,
    },
    /// KVM was asked for a guest architecture other than the host's.
    #[error("VM {name}: {accel} cannot run {arch} guests on this host")]
    AccelForArch {
        /// The VM.
        name: String,
        /// Requested accelerator.
        accel: Accel,
        /// Guest architecture.
        arch: Arch,
    },
    /// The boot mode does not exist for the architecture (BIOS on aarch64).
    #[error("VM {name}: {boot} boot is not available for {arch}")]
    BootForArch {
        /// The VM.
        name: String,
        /// The boot mode.
        boot: &'static str,
        /// Guest architecture.
        arch: Arch,
    },
    /// A Unix socket path does not fit into a socket address.
    #[error("socket path {path} is {len} bytes long, more than {MAX_SOCKET_PATH}")]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// A path is not valid UTF-8, which QEMU's option syntax cannot carry.
    #[error("path {path} is not valid UTF-8")]
    NonUtf8Path {
        /// The path.
        path: PathBuf,
    },
    /// A MAC address is not six colon-separated hex pairs.
    #[error("MAC address {mac:?} is not six colon-separated hex pairs")]
    InvalidMac {
        /// The address as given.
        mac: String,
    },
    /// A tap name is empty, longer than 15 bytes, or contains `/`, `,` or whitespace.
    #[error("tap name {tap:?} is not a valid interface name")]
    InvalidTapName {
        /// The name as given.
        tap: String,
    },
    /// A drive serial is longer than virtio-blk allows.
    #[error("drive serial {serial:?} is longer than 20 bytes")]
    SerialTooLong {
        /// The serial as given.
        serial: String,
    },
    /// A virtio-serial port name is empty or used twice.
    #[error("virtio-serial port name {port:?} is empty or used twice")]
    InvalidPortName {
        /// The name as given.
        port: String,
    },
    /// A string the kernel command line or CPU model cannot carry (a NUL byte).
    #[error("{what} contains a NUL byte")]
    NulByte {
        /// Which field.
        what: &'static str,
    },
}

impl VmSpec {
    /// The CPU model used when [`VmSpec::cpu_model`] is `None`: `host` under KVM; under TCG
    /// `max` for x86_64 and `max,pauth-impdef=on` for aarch64 (the cheaper pointer
    /// authentication algorithm; QEMU's default one dominates TCG time on arm64 kernels).
    pub fn default_cpu_model(arch: Arch, accel: Accel) -> &'static str {
        match (arch, accel) {
            (_, Accel::Kvm) => "host",
            (Arch::X86_64, Accel::Tcg) => "max",
            (Arch::Aarch64, Accel::Tcg) => "max,pauth-impdef=on",
        }
    }

    /// QMP/qdev id of the `index`th NIC (`nic0`, ...): the name for [`crate::Qmp::set_link`].
    pub fn nic_id(index: usize) -> String {
        format!("nic{index}")
    }

    /// QEMU block device name of the `index`th drive (`drive0`, ...), as `query-block`
    /// reports it.
    pub fn drive_id(index: usize) -> String {
        format!("drive{index}")
    }

    /// Builds the QEMU command line, refusing combinations QEMU would reject or misuse.
    ///
    /// The guest gets no display, no default devices and no user configuration; a virtio
    /// RNG fed from `/dev/urandom` (guests otherwise wait for entropy at boot); its first
    /// serial port written to [`VmSpec::serial_log`]; QMP on [`VmSpec::qmp_socket`]
    /// (QEMU listens and does not wait for a client). All disks and NICs are virtio PCI
    /// devices.
    ///
    /// # Examples
    /// ```
    /// use mesh_qemu::{Accel, Arch, Boot, VmSpec};
    /// let spec = VmSpec {
    ///     name: "node1".into(),
    ///     arch: Arch::Aarch64,
    ///     accel: Accel::Tcg,
    ///     cpu_model: None,
    ///     cpus: 2,
    ///     memory_mib: 1024,
    ///     boot: Boot::Direct {
    ///         kernel: "/images/vmlinuz".into(),
    ///         initrd: None,
    ///         cmdline: "console=ttyAMA0".into(),
    ///     },
    ///     drives: vec![],
    ///     nics: vec![],
    ///     serial_log: "/run/m/node1.log".into(),
    ///     qmp_socket: "/run/m/node1.qmp".into(),
    ///     virtio_serial: vec![],
    /// };
    /// let command = spec.command().unwrap();
    /// assert_eq!(command.program, "qemu-system-aarch64");
    /// assert!(command.args.windows(2).any(|w| w == ["-cpu", "max,pauth-impdef=on"]));
    /// ```
    pub fn command(&self) -> Result<QemuCommand, SpecError> {
        self.build_command(None)
    }

    /// Like [`VmSpec::command`], but the serial console is also an interactive UNIX socket at
    /// `console` (QEMU listens; one client at a time), while everything the guest prints is
    /// still written to [`VmSpec::serial_log`].
    ///
    /// # Examples
    /// ```
    /// # use mesh_qemu::{Accel, Arch, Boot, VmSpec};
    /// let spec = VmSpec {
    ///     name: "n1".into(), arch: Arch::X86_64, accel: Accel::Tcg, cpu_model: None, cpus: 1,
    ///     memory_mib: 256, boot: Boot::Bios, drives: vec![], nics: vec![],
    ///     serial_log: "/m/n1.log".into(), qmp_socket: "/r/n1.qmp".into(), virtio_serial: vec![],
    /// };
    /// let cmd = spec.command_with_console("/r/n1.console".as_ref()).unwrap();
    /// assert!(cmd.args.iter().any(|a| a.starts_with("socket,id=serial0,path=/r/n1.console")
    ///     && a.ends_with("logfile=/m/n1.log")));
    /// ```
    pub fn command_with_console(&self, console: &Path) -> Result<QemuCommand, SpecError> {
        self.build_command(Some(console))
    }

    fn build_command(&self, console: Option<&Path>) -> Result<QemuCommand, SpecError> {
        self.validate()?;
        let mut args = Args::default();

        args.push(["-name", &escape(&self.name)]);
        args.push(["-nodefaults", "-no-user-config", "-display", "none"]);
        args.push(["-machine", self.machine()]);
        args.push(["-accel", self.accel.as_str()]);
        let cpu =
            self.cpu_model.as_deref().unwrap_or(Self::default_cpu_model(self.arch, self.accel));
        args.push(["-cpu", cpu]);
        args.push(["-smp".to_owned(), self.cpus.to_string()]);
        args.push(["-m".to_owned(), format!("{}M", self.memory_mib)]);

        self.boot_args(&mut args)?;
        self.drive_args(&mut args)?;
        self.nic_args(&mut args);

        args.push(["-object", "rng-random,id=rng0,filename=/dev/urandom"]);
        args.push(["-device", "virtio-rng-pci,rng=rng0"]);

        let log = utf8(&self.serial_log)?;
        match console {
            // The log keeps everything the guest prints, whether or not a client is attached.
            Some(console) => args.push([
                "-chardev".to_owned(),
                format!(
                    "socket,id=serial0,path={},server=on,wait=off,logfile={}",
                    escape(socket_path(console)?),
                    escape(log)
                ),
            ]),
            None => {
                args.push(["-chardev".to_owned(), format!("file,id=serial0,path={}", escape(log))])
            }
        }
        args.push(["-serial", "chardev:serial0"]);

        let qmp = socket_path(&self.qmp_socket)?;
        args.push([
            "-chardev".to_owned(),
            format!("socket,id=qmp,path={},server=on,wait=off", escape(qmp)),
        ]);
        args.push(["-mon", "chardev=qmp,mode=control"]);

        self.virtio_serial_args(&mut args)?;

        Ok(QemuCommand { program: self.arch.qemu_binary().to_owned(), args: args.0 })
    }

    fn validate(&self) -> Result<(), SpecError> {
        if self.name.is_empty() {
            return Err(SpecError::EmptyName);
        }
        if self.cpus == 0 || self.memory_mib == 0 {
            return Err(SpecError::NoResources { name: self.name.clone() });
        }
        if self.accel == Accel::Kvm && self.arch != Arch::host() {
            return Err(SpecError::AccelForArch {
                name: self.name.clone(),
                accel: self.accel,
                arch: self.arch,
            });
        }
        if matches!(self.boot, Boot::Bios) && self.arch != Arch::X86_64 {
            return Err(SpecError::BootForArch {
                name: self.name.clone(),
                boot: self.boot.kind(),
                arch: self.arch,
            });
        }
        if self.cpu_model.as_deref().is_some_and(|cpu| cpu.contains('\0')) {
            return Err(SpecError::NulByte { what: "the CPU model" });
        }
        self.validate_devices()
    }

    fn machine(&self) -> &'static str {
        match self.arch {
            Arch::X86_64 => "q35",
            // `max` picks the newest GIC the accelerator offers (GICv3 under TCG), which
            // lifts GICv2's limit of eight CPUs.
            Arch::Aarch64 => "virt,gic-version=max",
        }
    }

    fn boot_args(&self, args: &mut Args) -> Result<(), SpecError> {
        match &self.boot {
            Boot::Direct { kernel, initrd, cmdline } => {
                args.push(["-kernel", utf8(kernel)?]);
                if let Some(initrd) = initrd {
                    args.push(["-initrd", utf8(initrd)?]);
                }
                if cmdline.contains('\0') {
                    return Err(SpecError::NulByte { what: "the kernel command line" });
                }
                // -append takes its value verbatim: no comma escaping.
                args.push(["-append", cmdline]);
            }
            Boot::Firmware { code, vars } => {
                let code = escape(utf8(code)?);
                let vars = escape(utf8(vars)?);
                args.push([
                    "-drive".to_owned(),
                    format!("if=pflash,unit=0,format=raw,readonly=on,file={code}"),
                ]);
                args.push([
                    "-drive".to_owned(),
                    format!("if=pflash,unit=1,format=raw,file={vars}"),
                ]);
            }
            Boot::Bios => {}
        }
        Ok(())
    }

    fn drive_args(&self, args: &mut Args) -> Result<(), SpecError> {
        // Firmware boots from the first drive; direct boot ignores boot order anyway.
        let boot_from_disk = !matches!(self.boot, Boot::Direct { .. });
        for (index, drive) in self.drives.iter().enumerate() {
            let id = Self::drive_id(index);
            let path = escape(utf8(&drive.path)?);
            let mut backend = format!("file={path},format={},if=none,id={id}", drive.format);
            if drive.read_only {
                backend.push_str(",readonly=on");
            }
            args.push(["-drive".to_owned(), backend]);

            let mut device = format!("virtio-blk-pci,drive={id},id=disk{index}");
            if let Some(serial) = &drive.serial {
                if serial.len() > 20 {
                    return Err(SpecError::SerialTooLong { serial: serial.clone() });
                }
                device.push_str(&format!(",serial={}", escape(serial)));
            }
            if boot_from_disk && index == 0 {
                device.push_str(",bootindex=0");
            }
            args.push(["-device".to_owned(), device]);
        }
        Ok(())
    }

    fn nic_args(&self, args: &mut Args) {
        for (index, nic) in self.nics.iter().enumerate() {
            args.push([
                "-netdev".to_owned(),
                format!("tap,id=net{index},ifname={},script=no,downscript=no", nic.tap),
            ]);
            args.push([
                "-device".to_owned(),
                format!(
                    "virtio-net-pci,netdev=net{index},id={},mac={}",
                    Self::nic_id(index),
                    nic.mac
                ),
            ]);
        }
    }

    fn virtio_serial_args(&self, args: &mut Args) -> Result<(), SpecError> {
        if self.virtio_serial.is_empty() {
            return Ok(());
        }
        args.push(["-device", "virtio-serial-pci,id=vser0"]);
        for (index, port) in self.virtio_serial.iter().enumerate() {
            let socket = escape(socket_path(&port.socket)?);
            args.push([
                "-chardev".to_owned(),
                format!("socket,id=vport{index},path={socket},server=on,wait=off"),
            ]);
            args.push([
                "-device".to_owned(),
                format!(
                    "virtserialport,bus=vser0.0,chardev=vport{index},name={}",
                    escape(&port.name)
                ),
            ]);
        }
        Ok(())
    }

    /// Checks the parts of the spec that [`VmSpec::command`] would otherwise only notice
    /// while formatting: MACs, tap names, port names, socket lengths.
    fn validate_devices(&self) -> Result<(), SpecError> {
        for nic in &self.nics {
            if !valid_mac(&nic.mac) {
                return Err(SpecError::InvalidMac { mac: nic.mac.clone() });
            }
            let tap_ok = !nic.tap.is_empty()
                && nic.tap.len() <= 15
                && !nic.tap.contains(|c: char| c == '/' || c == ',' || c.is_whitespace());
            if !tap_ok {
                return Err(SpecError::InvalidTapName { tap: nic.tap.clone() });
            }
        }
        for (index, port) in self.virtio_serial.iter().enumerate() {
            let duplicate = self.virtio_serial[..index].iter().any(|p| p.name == port.name);
            if port.name.is_empty() || duplicate {
                return Err(SpecError::InvalidPortName { port: port.name.clone() });
            }
        }
        Ok(())
    }
}

/// Arguments being collected; `push` takes any number of words at once.
#[derive(Default)]
struct Args(Vec<String>);

impl Args {
    fn push<S: Into<String>, const N: usize>(&mut self, words: [S; N]) {
        self.0.extend(words.map(Into::into));
    }
}

/// Escapes a value for QEMU's `key=value,...` option syntax, where a comma is written twice.
fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

fn utf8(path: &Path) -> Result<&str, SpecError> {
    path.to_str().ok_or_else(|| SpecError::NonUtf8Path { path: path.to_owned() })
}

fn socket_path(path: &Path) -> Result<&str, SpecError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(SpecError::SocketPathTooLong { path: path.to_owned(), len });
    }
    utf8(path)
}

fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts.iter().all(|part| part.len() == 2 && part.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(arch: Arch, accel: Accel, boot: Boot) -> VmSpec {
        VmSpec {
            name: "n1".into(),
            arch,
            accel,
            cpu_model: None,
            cpus: 2,
            memory_mib: 512,
            boot,
            drives: vec![
                Drive {
                    path: "/m/n1.qcow2".into(),
                    format: ImageFormat::Qcow2,
                    read_only: false,
                    serial: Some("root".into()),
                },
                Drive {
                    path: "/m/seed.img".into(),
                    format: ImageFormat::Raw,
                    read_only: true,
                    serial: None,
                },
            ],
            nics: vec![Nic { tap: "tap-n1".into(), mac: "02:00:00:00:00:01".into() }],
            serial_log: "/m/n1.log".into(),
            qmp_socket: "/r/n1.qmp".into(),
            virtio_serial: vec![VirtioSerialPort {
                name: "mesh.ready".into(),
                socket: "/r/n1.ready".into(),
            }],
        }
    }

    fn direct() -> Boot {
        Boot::Direct {
            kernel: "/i/vmlinuz".into(),
            initrd: Some("/i/initrd".into()),
            cmdline: "console=ttyS0 root=/dev/vda1 ro".into(),
        }
    }

    fn firmware() -> Boot {
        Boot::Firmware { code: "/fw/CODE.fd".into(), vars: "/m/VARS.fd".into() }
    }

    const COMMON_TAIL: &str = "-object rng-random,id=rng0,filename=/dev/urandom \
        -device virtio-rng-pci,rng=rng0 \
        -chardev file,id=serial0,path=/m/n1.log -serial chardev:serial0 \
        -chardev socket,id=qmp,path=/r/n1.qmp,server=on,wait=off -mon chardev=qmp,mode=control \
        -device virtio-serial-pci,id=vser0 \
        -chardev socket,id=vport0,path=/r/n1.ready,server=on,wait=off \
        -device virtserialport,bus=vser0.0,chardev=vport0,name=mesh.ready";

    const NIC: &str = "-netdev tap,id=net0,ifname=tap-n1,script=no,downscript=no \
        -device virtio-net-pci,netdev=net0,id=nic0,mac=02:00:00:00:00:01";

    fn drives(bootindex: bool) -> String {
        let bootindex = if bootindex { ",bootindex=0" } else { "" };
        format!(
            "-drive file=/m/n1.qcow2,format=qcow2,if=none,id=drive0 \
             -device virtio-blk-pci,drive=drive0,id=disk0,serial=root{bootindex} \
             -drive file=/m/seed.img,format=raw,if=none,id=drive1,readonly=on \
             -device virtio-blk-pci,drive=drive1,id=disk1"
        )
    }

    fn golden(head: &str, boot: &str, bootindex: bool) -> Vec<String> {
        let all = format!("{head} {boot} {} {NIC} {COMMON_TAIL}", drives(bootindex));
        all.split_whitespace().map(str::to_owned).collect()
    }

    fn head(arch: Arch, accel: Accel) -> String {
        let (machine, cpu) = match (arch, accel) {
            (Arch::X86_64, Accel::Tcg) => ("q35", "max"),
            (Arch::X86_64, Accel::Kvm) => ("q35", "host"),
            (Arch::Aarch64, Accel::Tcg) => ("virt,gic-version=max", "max,pauth-impdef=on"),
            (Arch::Aarch64, Accel::Kvm) => ("virt,gic-version=max", "host"),
        };
        format!(
            "-name n1 -nodefaults -no-user-config -display none -machine {machine} \
             -accel {accel} -cpu {cpu} -smp 2 -m 512M"
        )
    }

    #[test]
    fn every_arch_boot_and_accel_combination_matches_its_golden_command_line() {
        const DIRECT: &str = "-kernel /i/vmlinuz -initrd /i/initrd -append";
        const FIRMWARE: &str = "-drive if=pflash,unit=0,format=raw,readonly=on,file=/fw/CODE.fd \
            -drive if=pflash,unit=1,format=raw,file=/m/VARS.fd";
        for arch in Arch::ALL {
            for accel in [Accel::Tcg, Accel::Kvm] {
                for (boot, boot_args, bootindex) in [
                    (direct(), DIRECT, false),
                    (firmware(), FIRMWARE, true),
                    (Boot::Bios, "", true),
                ] {
                    let what = format!("{arch} {accel} {}", boot.kind());
                    let result = spec(arch, accel, boot.clone()).command();
                    if accel == Accel::Kvm && arch != Arch::host() {
                        assert!(matches!(result, Err(SpecError::AccelForArch { .. })), "{what}");
                        continue;
                    }
                    if matches!(boot, Boot::Bios) && arch == Arch::Aarch64 {
                        assert!(matches!(result, Err(SpecError::BootForArch { .. })), "{what}");
                        continue;
                    }
                    let command = result.unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(command.program, arch.qemu_binary(), "{what}");
                    let mut expected = golden(&head(arch, accel), boot_args, bootindex);
                    if let Boot::Direct { cmdline, .. } = &boot {
                        // The command line is one argument, spaces included.
                        let at = expected.iter().position(|a| a == "-append").expect("in golden");
                        expected.insert(at + 1, cmdline.clone());
                    }
                    assert_eq!(command.args, expected, "{what}");
                }
            }
        }
    }

    #[test]
    fn explicit_cpu_model_replaces_the_default() {
        let mut spec = spec(Arch::Aarch64, Accel::Tcg, direct());
        spec.cpu_model = Some("cortex-a57".into());
        let args = spec.command().expect("valid spec").args;
        assert!(args.windows(2).any(|w| w == ["-cpu", "cortex-a57"]));
    }

    #[test]
    fn commas_in_paths_and_names_are_doubled() {
        let mut spec = spec(Arch::X86_64, Accel::Tcg, Boot::Bios);
        spec.name = "a,b".into();
        spec.drives[0].path = "/m/x,format=raw".into();
        let args = spec.command().expect("valid spec").args;
        assert!(args.windows(2).any(|w| w == ["-name", "a,,b"]));
        assert!(args.iter().any(|a| a.starts_with("file=/m/x,,format=raw,format=qcow2,")));
    }

    #[test]
    fn socket_paths_longer_than_107_bytes_are_refused() {
        let mut spec = spec(Arch::X86_64, Accel::Tcg, Boot::Bios);
        spec.qmp_socket = PathBuf::from(format!("/{}", "q".repeat(106)));
        assert!(spec.command().is_ok(), "107 bytes still fit");
        spec.qmp_socket = PathBuf::from(format!("/{}", "q".repeat(107)));
        let err = spec.command().expect_err("108 bytes do not fit");
        assert!(matches!(err, SpecError::SocketPathTooLong { len: 108, .. }));

        let mut spec = self::spec(Arch::X86_64, Accel::Tcg, Boot::Bios);
        spec.virtio_serial[0].socket = PathBuf::from(format!("/{}", "v".repeat(200)));
        assert!(matches!(spec.command(), Err(SpecError::SocketPathTooLong { .. })));
    }

    #[test]
    fn malformed_devices_are_refused() {
        let base = spec(Arch::X86_64, Accel::Tcg, Boot::Bios);
        for mac in ["02:00:00:00:00", "02:00:00:00:00:0g", "0200.0000.0001", ""] {
            let mut spec = base.clone();
            spec.nics[0].mac = mac.into();
            assert!(matches!(spec.command(), Err(SpecError::InvalidMac { .. })), "{mac}");
        }
        for tap in ["", "a-very-long-tap-name", "tap,x", "tap 1"] {
            let mut spec = base.clone();
            spec.nics[0].tap = tap.into();
            assert!(matches!(spec.command(), Err(SpecError::InvalidTapName { .. })), "{tap}");
        }
        let mut spec = base.clone();
        spec.virtio_serial.push(spec.virtio_serial[0].clone());
        assert!(matches!(spec.command(), Err(SpecError::InvalidPortName { .. })));
        let mut spec = base.clone();
        spec.drives[0].serial = Some("s".repeat(21));
        assert!(matches!(spec.command(), Err(SpecError::SerialTooLong { .. })));
        let mut spec = base.clone();
        spec.cpus = 0;
        assert!(matches!(spec.command(), Err(SpecError::NoResources { .. })));
        let mut spec = base;
        spec.name.clear();
        assert!(matches!(spec.command(), Err(SpecError::EmptyName)));
    }

    #[test]
    fn display_quotes_arguments_for_a_shell() {
        let command = QemuCommand {
            program: "qemu-system-x86_64".into(),
            args: vec!["-append".into(), "console=ttyS0 it's".into(), "-m".into(), "1M".into()],
        };
        assert_eq!(
            command.to_string(),
            r"qemu-system-x86_64 -append 'console=ttyS0 it'\''s' -m 1M"
        );
    }
}
