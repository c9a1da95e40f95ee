//! Building a Debian 12 base image with mmdebstrap.
//!
//! The steps, each timed in the log:
//! 1. mmdebstrap installs the packages into `rootfs/` (foreign arches run their maintainer
//!    scripts through qemu-user-static). `update-initramfs` and `py3compile` are diverted to
//!    `true` while the packages install: generating Debian's initramfs with emulated shell
//!    scripts was most of a 27-minute arm64 build, and emulated Python compiling cloud-init
//!    most of the rest. The diversions are removed again before the image is sealed.
//! 2. The rootfs is customised from the host (fstab, cloud-init settings, no machine-id,
//!    no SSH host keys, no apt lists) and its Python modules are byte-compiled by the host's
//!    Python when it is the same version.
//! 3. A small initramfs is written on the host (see [`super::initramfs`]): busybox from the
//!    rootfs, the virtio modules, and an `/init` that mounts `root=LABEL=vmroot`.
//! 4. `mkfs.ext4 -d` turns the rootfs into a filesystem image without mounting anything, and
//!    `qemu-img convert` makes it qcow2.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use super::staging::{self, Staging};
use super::tools::{self, Tool};
use super::{
    arch_name, debian_arch, initramfs, now, Arch, BaseImage, BootMode, BuildOptions, ImageError,
    ImageFormat, ImageSource, ImageStore, Manifest, DEFAULT_DEBIAN_MIRROR, MANIFEST_VERSION,
    RELEASE, ROOT_LABEL,
};

/// Bumped whenever the recipe changes in a way the inputs below do not show (the code of
/// the customisation or the initramfs), so old cached images are not reused.
const BUILDER_VERSION: u32 = 1;

/// Packages of every image, besides the kernel.
const BASE_PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "cloud-init",
    "openssh-server",
    // resize2fs for cloud-init's resizefs module, which grows the root filesystem to fill a
    // larger overlay.
    "e2fsprogs",
    "qemu-guest-agent",
    "iproute2",
    "iputils-ping",
    "python3",
    // The initramfs's only program; also handy in the guest.
    "busybox-static",
    "netbase",
    // cloud-init 22.4 on Debian renders network-config as /etc/network/interfaces.d
    // (the "eni" renderer), which needs ifupdown.
    "ifupdown",
    "procps",
    "sudo",
    "less",
];

/// Paths left out of every package: documentation and translations nobody reads in a test
/// VM. Copyright files stay.
const DPKG_EXCLUDES: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
];

/// Programs turned into `true` while the packages install, because under emulation they
/// cost minutes and their work is done better elsewhere: `update-initramfs` (we write our own
/// initramfs on the host) and `py3compile` (the host's Python compiles the same bytecode
/// natively, see [`compile_python`]).
const DIVERTED: &[&str] = &["/usr/sbin/update-initramfs", "/usr/bin/py3compile"];

/// The essential hook: divert the programs above before any package that ships or calls
/// them is configured.
fn divert_hook() -> String {
    DIVERTED
        .iter()
        .map(|path| {
            format!(
                "chroot \"$1\" dpkg-divert --quiet --local --rename --add {path} && \
                 ln -s /bin/true \"$1{path}\""
            )
        })
        .collect::<Vec<_>>()
        .join(" && ")
}

/// The customize hook: put the real programs back, so the guest's own package updates
/// behave as on any Debian system.
fn undivert_hook() -> String {
    DIVERTED
        .iter()
        .map(|path| {
            format!(
                "rm -f \"$1{path}\" && chroot \"$1\" dpkg-divert --quiet --local --rename \
                 --remove {path}"
            )
        })
        .collect::<Vec<_>>()
        .join(" && ")
}

/// Where Debian's Python packages keep the modules `py3compile` would have compiled.
const PYTHON_DIRS: &[&str] = &["usr/lib/python3/dist-packages", "usr/share/python3"];

/// cloud-init settings of every image.
const CLOUD_CFG: &str = "\
# Written by vm-mesh: seeds come as NoCloud volumes; no network metadata service is probed.
datasource_list: [NoCloud, None]
# The image has no locales package (its postinst takes minutes under emulation); C.UTF-8 is
# built into glibc and /etc/default/locale already names it, so the locale module has nothing
# to generate.
locale: C.UTF-8
# Images boot their kernel directly and carry no GRUB; the module would still spend seconds
# under emulation probing for one.
grub_dpkg:
  enabled: false
# Host keys are pinned by the host; printing fingerprints to the console only costs time.
ssh:
  emit_keys_to_console: false
# One Python start fewer per boot (several seconds under emulation): Debian's config-stage
# modules run, in their usual order, at the start of the final stage, and the image masks
# cloud-config.service. The final stage runs once multi-user.target is reached, when
# everything the config stage expected (network, basic.target) is up.
cloud_config_modules: []
cloud_final_modules:
 - snap
 - ssh-import-id
 - keyboard
 - locale
 - set-passwords
 - grub-dpkg
 - apt-pipelining
 - apt-configure
 - ntp
 - timezone
 - disable-ec2-metadata
 - runcmd
 - byobu
 - package-update-upgrade-install
 - fan
 - landscape
 - lxd
 - write-files-deferred
 - puppet
 - chef
 - mcollective
 - salt-minion
 - reset_rmc
 - refresh_rmc_and_interface
 - rightscale_userdata
 - scripts-vendor
 - scripts-per-once
 - scripts-per-boot
 - scripts-per-instance
 - scripts-user
 - ssh-authkey-fingerprints
 - keys-to-console
 - install-hotplug
 - phone-home
 - final-message
 - power-state-change
";

/// sshd settings of every image: keys only. Set here rather than through cloud-init's
/// `ssh_pwauth`, which restarts sshd in the middle of the boot and holds up
/// `multi-user.target` (and with it cloud-final) until the restart is done.
const SSHD_CONFIG: &str = "\
# Written by vm-mesh.
PasswordAuthentication no
KbdInteractiveAuthentication no
";

/// Units masked in every image: work a short-lived test VM never needs, which otherwise
/// competes for the (often emulated) CPU while cloud-init runs. `e2scrub_reap` alone took
/// 11 s (x86_64) and 18 s (aarch64) of a boot under TCG; `getty-static` starts gettys on
/// virtual consoles these VMs do not have.
/// `cloud-config.service` is masked because its modules run in the final stage (see
/// [`CLOUD_CFG`]). The rest each start a process early in boot, about a second of emulated
/// CPU for nothing here: no EFI (`efi_pstore`), no binfmt registrations, no huge pages, and
/// the `dm_mod`, `loop` and `fuse` modules still load on demand when their device is opened.
const MASKED_UNITS: &[&str] = &[
    "e2scrub_reap.service",
    "e2scrub_all.timer",
    "getty-static.service",
    "cloud-config.service",
    "modprobe@efi_pstore.service",
    "modprobe@dm_mod.service",
    "modprobe@loop.service",
    "modprobe@fuse.service",
    "sys-fs-fuse-connections.mount",
    "systemd-binfmt.service",
    "dev-hugepages.mount",
];

const FSTAB: &str = "\
# Written by vm-mesh.
LABEL=vmroot / ext4 defaults,errors=remount-ro 0 1
";

const NETWORK_INTERFACES: &str = "\
# Written by vm-mesh: cloud-init writes the guest's interfaces into interfaces.d.
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback
";

const HOSTS: &str = "\
127.0.0.1 localhost
::1 localhost ip6-localhost ip6-loopback
";

/// Where a vm-mesh seed (NoCloud `dsmode: local`) notes, each boot, that cloud-init's init
/// stage has run in the local stage already.
pub(crate) const INIT_DONE_LOCALLY: &str = "/run/vm-mesh/init-stage-done-locally";

/// A drop-in for `cloud-init.service`, cloud-init's network stage: skipped when the init stage
/// ran in the local stage ([`INIT_DONE_LOCALLY`]). cloud-init would find nothing left to do
/// there, but only after starting Python and importing itself, seconds under emulation. Any
/// other seed (the flag is absent) gets the unit as Debian ships it.
const CLOUD_INIT_NETWORK_STAGE_DROPIN: &str = "\
# Written by vm-mesh.
[Unit]
ConditionPathExists=!/run/vm-mesh/init-stage-done-locally
";

/// The files written into every rootfs, as (path, contents).
const ROOTFS_FILES: &[(&str, &str)] = &[
    ("etc/fstab", FSTAB),
    ("etc/hostname", "localhost\n"),
    ("etc/hosts", HOSTS),
    // An empty machine-id makes systemd generate a fresh one at each VM's first boot.
    ("etc/machine-id", ""),
    ("etc/default/locale", "LANG=C.UTF-8\n"),
    ("etc/cloud/cloud.cfg.d/90_vm_mesh.cfg", CLOUD_CFG),
    ("etc/network/interfaces", NETWORK_INTERFACES),
    ("etc/ssh/sshd_config.d/10-vm-mesh.conf", SSHD_CONFIG),
    ("etc/systemd/system/cloud-init.service.d/10-vm-mesh.conf", CLOUD_INIT_NETWORK_STAGE_DROPIN),
];

/// The kernel arguments that find and mount the root filesystem of a built image.
fn cmdline_root() -> String {
    format!("root=LABEL={ROOT_LABEL} rw")
}

fn kernel_package(arch: Arch) -> String {
    format!("linux-image-cloud-{}", debian_arch(arch))
}

/// Every package of an image, sorted and without duplicates.
fn packages(arch: Arch, opts: &BuildOptions) -> Vec<String> {
    let mut all: Vec<String> = BASE_PACKAGES.iter().map(|p| (*p).to_owned()).collect();
    all.push(kernel_package(arch));
    all.extend(opts.extra_packages.iter().cloned());
    all.sort();
    all.dedup();
    all
}

fn mirror(opts: &BuildOptions) -> String {
    opts.mirror.clone().unwrap_or_else(|| DEFAULT_DEBIAN_MIRROR.to_owned())
}

/// A digest of everything that decides an image's content; equal digests mean the cached
/// image can be reused.
pub(super) fn recipe_hash(arch: Arch, opts: &BuildOptions) -> String {
    let mut recipe = format!(
        "builder {BUILDER_VERSION}\narch {}\nrelease {RELEASE}\nmirror {}\ndisk {}\n",
        arch_name(arch),
        mirror(opts),
        opts.disk_size_mib
    );
    for package in packages(arch, opts) {
        recipe.push_str(&format!("package {package}\n"));
    }
    for exclude in DPKG_EXCLUDES {
        recipe.push_str(&format!("dpkg {exclude}\n"));
    }
    for (path, contents) in ROOTFS_FILES {
        recipe.push_str(&format!("file {path}\n{contents}\n"));
    }
    for unit in MASKED_UNITS {
        recipe.push_str(&format!("mask {unit}\n"));
    }
    recipe.push_str(&divert_hook());
    recipe.push_str(&undivert_hook());
    recipe.push_str(&format!("compile {PYTHON_DIRS:?}\n"));
    recipe.push_str(&initramfs::recipe(arch));
    hex::encode(Sha256::digest(recipe.as_bytes()))
}

/// The mmdebstrap command line for a build into `rootfs`.
fn mmdebstrap_command(
    mmdebstrap: &Path,
    arch: Arch,
    opts: &BuildOptions,
    rootfs: &Path,
) -> Command {
    // FIXME: for a foreign arch, most of the build is dpkg unpacking packages under
    // emulation (decompression included), not the maintainer scripts. Running the host's dpkg
    // with `--root` (native unpack, chrooted scripts) would take most of it away; it needs
    // care with the multi-arch view of the database and matters when the arm64 build is on a
    // critical path (a CI run with a cold cache).
    let mut command = Command::new(mmdebstrap);
    command
        .arg("--mode=root")
        // dpkg's own output goes to the build log, which shows where a slow build spends
        // its time.
        .arg("--verbose")
        .arg("--variant=apt")
        .arg("--format=directory")
        .arg(format!("--arch={}", debian_arch(arch)))
        .arg("--aptopt=APT::Install-Recommends \"false\"");
    for exclude in DPKG_EXCLUDES {
        command.arg(format!("--dpkgopt={exclude}"));
    }
    command
        .arg(format!("--essential-hook={}", divert_hook()))
        .arg(format!("--customize-hook={}", undivert_hook()))
        .arg(format!("--include={}", packages(arch, opts).join(",")))
        .arg(RELEASE)
        .arg(rootfs);
    let mirror = mirror(opts);
    // FIXME: no bookworm-security suite: it lives at another address than the main mirror,
    // and matters once images are used for more than short-lived test meshes.
    for suite in [RELEASE.to_owned(), format!("{RELEASE}-updates")] {
        command.arg(format!("deb {mirror} {suite} main"));
    }
    // mmdebstrap reads TMPDIR for its own scratch space; keep it out of a small /tmp.
    command.env_remove("TMPDIR");
    command
}

/// Builds (or reuses) the image of `arch`. See [`ImageStore::build`].
pub(super) fn build(
    store: &ImageStore,
    arch: Arch,
    opts: &BuildOptions,
) -> Result<BaseImage, ImageError> {
    let recipe = recipe_hash(arch, opts);

    // One build per arch at a time: a second caller waits, then finds the first one's
    // image and reuses it.
    let lock_path = store.root.join(format!(".build-{}.lock", arch_name(arch)));
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| ImageError::CacheNotWritable { path: store.root.clone(), source })?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, errno)| {
        ImageError::Io { step: "lock", path: lock_path.clone(), source: errno.into() }
    })?;

    if let Some(image) = store.find_recipe(arch, &recipe)? {
        tracing::info!(id = %image.manifest.id, "reusing the cached base image");
        store.set_current(arch, &image.manifest.id)?;
        return Ok(image);
    }

    let mmdebstrap = tools::require(tools::MMDEBSTRAP)?;
    let mkfs = tools::require(tools::MKFS_EXT4)?;
    let qemu_img = tools::require(tools::QEMU_IMG)?;
    tools::require(tools::CHROOT)?;
    if let Some(tool) = emulator_needed(arch) {
        tools::require(tool)?;
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(ImageError::NotRoot { step: "building a base image (mmdebstrap --mode=root)" });
    }
    if emulator_needed(arch).is_some() {
        ensure_binfmt(arch)?;
    }

    staging::remove_stale(&store.root)?;
    let staging = Staging::create(&store.root, arch_name(arch))?;
    // The staging directory becomes the image directory: work files (rootfs, raw disk) are
    // removed before it is renamed into place; the build log stays.
    let out = staging.path().to_owned();
    let rootfs = out.join("rootfs");
    let started = Instant::now();

    let log = out.join("build.log");
    let result = tools::run_logged(&mut mmdebstrap_command(&mmdebstrap, arch, opts, &rootfs), &log);
    if let Err(error) = result {
        keep_log(store, arch, &log);
        return Err(error);
    }
    tracing::info!(secs = started.elapsed().as_secs_f32(), "mmdebstrap done");

    customize(&rootfs)?;
    compile_python(&rootfs)?;
    let (kernel_version, vmlinuz) = find_kernel(&rootfs)?;
    copy(&vmlinuz, &out.join("vmlinuz"))?;
    let initrd = out.join("initrd.img");
    initramfs::write(arch, &rootfs, &kernel_version, &initrd)?;

    let raw = out.join("disk.raw");
    tools::run(
        Command::new(&mkfs)
            .args(["-q", "-F", "-L", ROOT_LABEL, "-d"])
            .arg(&rootfs)
            .arg(&raw)
            .arg(format!("{}M", opts.disk_size_mib)),
    )?;
    // The rootfs and the raw disk are gigabytes; drop them as soon as they are used.
    staging::remove_tree(&rootfs)?;
    let disk = out.join("disk.qcow2");
    tools::run(
        Command::new(&qemu_img).args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&disk),
    )?;
    super::remove_file_if_exists(&raw)?;
    tracing::info!(secs = started.elapsed().as_secs_f32(), "disk written");

    let disk_size = fs::metadata(&disk)
        .map_err(|source| ImageError::Io { step: "read", path: disk.clone(), source })?
        .len();
    let sha256 = super::sha256_file(&disk)?;
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        id: format!("debian-12-{}-{}", arch_name(arch), &recipe[..12]),
        arch,
        release: RELEASE.to_owned(),
        boot: BootMode::Direct {
            kernel: "vmlinuz".to_owned(),
            initrd: "initrd.img".to_owned(),
            cmdline_root: cmdline_root(),
        },
        disk: "disk.qcow2".to_owned(),
        disk_format: ImageFormat::Qcow2,
        disk_size,
        sha256,
        recipe_hash: Some(recipe),
        created: now(),
        kernel_version: Some(kernel_version),
        source: ImageSource::Built {
            mirror: mirror(opts),
            extra_packages: opts.extra_packages.clone(),
        },
    };
    let image = store.commit(staging, manifest)?;
    tracing::info!(secs = started.elapsed().as_secs_f32(), id = %image.manifest.id, "build done");
    Ok(image)
}

/// The qemu-user-static program a build for `arch` needs on this host, if any.
fn emulator_needed(arch: Arch) -> Option<Tool> {
    match (std::env::consts::ARCH, arch) {
        ("x86_64", Arch::X86_64) | ("aarch64", Arch::Aarch64) => None,
        (_, Arch::Aarch64) => Some(tools::QEMU_AARCH64_STATIC),
        (_, Arch::X86_64) => Some(tools::QEMU_X86_64_STATIC),
    }
}

const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// Makes sure the kernel runs `arch` binaries through qemu-user-static: mounts binfmt_misc
/// if needed and registers the interpreter from qemu-user-static's binfmt.d file.
fn ensure_binfmt(arch: Arch) -> Result<(), ImageError> {
    let interpreter = format!("qemu-{}", arch_name(arch));
    let dir = Path::new(BINFMT_DIR);
    let fail = |path: &Path, source| ImageError::RegisterBinfmt {
        interpreter: interpreter.clone(),
        path: path.to_owned(),
        source,
    };

    let register = dir.join("register");
    if !register.exists() {
        tracing::info!("mounting binfmt_misc");
        nix::mount::mount(
            Some("binfmt_misc"),
            dir,
            Some("binfmt_misc"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|errno| fail(dir, errno.into()))?;
    }

    let entry = dir.join(&interpreter);
    if let Ok(state) = fs::read_to_string(&entry) {
        if state.starts_with("enabled") {
            return Ok(());
        }
        tracing::info!(%interpreter, "enabling the binfmt_misc entry");
        return fs::write(&entry, "1").map_err(|e| fail(&entry, e));
    }

    let conf = PathBuf::from(format!("/usr/lib/binfmt.d/{interpreter}.conf"));
    let text = fs::read_to_string(&conf).map_err(|_| ImageError::MissingTool {
        tool: "qemu-user-static binfmt rules",
        package: "qemu-user-static",
    })?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| fail(&conf, std::io::Error::other("no rule in the file")))?;
    tracing::info!(%interpreter, "registering with binfmt_misc");
    fs::write(&register, line).map_err(|e| fail(&register, e))
}

/// Writes the vm-mesh files into the rootfs and removes what must not be shared between
/// VMs (SSH host keys: cloud-init installs each node's own) or is dead weight (apt lists).
fn customize(rootfs: &Path) -> Result<(), ImageError> {
    for (path, contents) in ROOTFS_FILES {
        let path = rootfs.join(path);
        if let Some(parent) = path.parent() {
            mkdir(parent)?;
        }
        // A symlink here (some packages link /etc/hostname or /etc/machine-id) would send
        // the write outside the rootfs: replace it by a plain file.
        super::remove_file_if_exists(&path)?;
        fs::write(&path, contents).map_err(|source| ImageError::Io {
            step: "write",
            path: path.clone(),
            source,
        })?;
    }
    super::remove_file_if_exists(&rootfs.join("var/lib/dbus/machine-id"))?;
    let units = rootfs.join("etc/systemd/system");
    mkdir(&units)?;
    for unit in MASKED_UNITS {
        let link = units.join(unit);
        super::remove_file_if_exists(&link)?;
        std::os::unix::fs::symlink("/dev/null", &link).map_err(|source| ImageError::Io {
            step: "mask",
            path: link.clone(),
            source,
        })?;
    }

    let ssh = rootfs.join("etc/ssh");
    for entry in read_dir(&ssh)? {
        if entry.to_string_lossy().starts_with("ssh_host_") {
            super::remove_file_if_exists(&ssh.join(entry))?;
        }
    }
    for dir in ["var/lib/apt/lists", "var/cache/apt"] {
        let dir = rootfs.join(dir);
        for entry in read_dir(&dir)? {
            let path = dir.join(&entry);
            if path.is_file() {
                super::remove_file_if_exists(&path)?;
            }
        }
    }
    Ok(())
}

/// Byte-compiles the Python modules of the rootfs, which `py3compile` skipped during the
/// install. Bytecode does not depend on the CPU, so when the host runs the same Python
/// version as the guest, the host compiles natively (seconds instead of minutes of emulated
/// Python); otherwise the guest's Python does it in the chroot. Without bytecode, every
/// first boot would compile cloud-init again under TCG.
fn compile_python(rootfs: &Path) -> Result<(), ImageError> {
    let started = Instant::now();
    let Some(guest_version) = guest_python_version(rootfs) else {
        return Ok(());
    };
    let dirs: Vec<PathBuf> =
        PYTHON_DIRS.iter().map(|d| rootfs.join(d)).filter(|d| d.is_dir()).collect();
    let host_version = host_python_version();
    let mut command = if host_version.as_deref() == Some(guest_version.as_str()) {
        let mut command = Command::new("python3");
        // -s/-p record the paths as the guest sees them (/usr/lib/...), not as the host does.
        command
            .args(["-m", "compileall", "-q", "-j", "0", "-s"])
            .arg(rootfs)
            .args(["-p", "/"])
            .args(&dirs);
        command
    } else {
        tracing::info!(
            guest = %guest_version,
            host = host_version.as_deref().unwrap_or("none"),
            "host Python differs from the guest's: compiling bytecode under emulation"
        );
        let mut command = Command::new(tools::require(tools::CHROOT)?);
        command.arg(rootfs).args(["python3", "-m", "compileall", "-q"]);
        command.args(PYTHON_DIRS.iter().map(|d| format!("/{d}")));
        command
    };
    // A module that does not compile (Python 2 leftovers in some packages) is no reason to
    // fail the image: Python then reads that one module from source.
    if let Err(error) = tools::run(&mut command) {
        tracing::warn!(%error, "some Python modules were not byte-compiled");
    }
    tracing::info!(secs = started.elapsed().as_secs_f32(), "Python modules compiled");
    Ok(())
}

/// `3.11` for a rootfs whose `/usr/bin/python3` links to `python3.11`.
fn guest_python_version(rootfs: &Path) -> Option<String> {
    let target = fs::read_link(rootfs.join("usr/bin/python3")).ok()?;
    let name = target.file_name()?.to_str()?;
    name.strip_prefix("python").map(str::to_owned)
}

fn host_python_version() -> Option<String> {
    let output = Command::new("python3")
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The kernel release and vmlinuz of the rootfs (exactly one kernel is installed).
fn find_kernel(rootfs: &Path) -> Result<(String, PathBuf), ImageError> {
    let boot = rootfs.join("boot");
    let mut kernels: Vec<String> = read_dir(&boot)?
        .into_iter()
        .filter_map(|name| {
            name.to_str().and_then(|n| n.strip_prefix("vmlinuz-")).map(str::to_owned)
        })
        .collect();
    kernels.sort();
    let version = kernels.pop().ok_or_else(|| ImageError::IncompleteRootfs {
        rootfs: rootfs.to_owned(),
        what: "a kernel in /boot".to_owned(),
    })?;
    let vmlinuz = boot.join(format!("vmlinuz-{version}"));
    Ok((version, vmlinuz))
}

/// Saves a failed build's log outside the staging directory, which is about to go.
fn keep_log(store: &ImageStore, arch: Arch, log: &Path) {
    let dir = store.root.join(".logs");
    let dest = dir.join(format!("build-{}.log", arch_name(arch)));
    if fs::create_dir_all(&dir).and_then(|()| fs::copy(log, &dest)).is_ok() {
        tracing::warn!(log = %dest.display(), "mmdebstrap failed; its log is kept");
    }
}

fn read_dir(dir: &Path) -> Result<Vec<std::ffi::OsString>, ImageError> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(entries.flatten().map(|e| e.file_name()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(ImageError::Io { step: "read", path: dir.to_owned(), source }),
    }
}

fn mkdir(dir: &Path) -> Result<(), ImageError> {
    fs::create_dir_all(dir).map_err(|source| ImageError::Io {
        step: "create",
        path: dir.to_owned(),
        source,
    })
}

fn copy(from: &Path, to: &Path) -> Result<(), ImageError> {
    fs::copy(from, to).map(|_| ()).map_err(|source| ImageError::Io {
        step: "copy",
        path: from.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_stage_dropin_tests_the_flag_seeds_write() {
        let condition = format!("ConditionPathExists=!{INIT_DONE_LOCALLY}\n");
        assert!(CLOUD_INIT_NETWORK_STAGE_DROPIN.contains(&condition));
    }

    #[test]
    fn recipe_hash_follows_the_inputs() {
        let base = BuildOptions::default();
        let same = recipe_hash(Arch::X86_64, &base);
        assert_eq!(same, recipe_hash(Arch::X86_64, &BuildOptions::default()));
        assert_ne!(same, recipe_hash(Arch::Aarch64, &base));
        let extra = BuildOptions { extra_packages: vec!["jq".into()], ..base.clone() };
        assert_ne!(same, recipe_hash(Arch::X86_64, &extra));
        // Listing a base package again changes nothing: the package set is the same.
        let dup = BuildOptions { extra_packages: vec!["sudo".into()], ..base };
        assert_eq!(same, recipe_hash(Arch::X86_64, &dup));
    }

    #[test]
    fn mmdebstrap_gets_the_arch_kernel_and_hooks() {
        let command = mmdebstrap_command(
            Path::new("/usr/bin/mmdebstrap"),
            Arch::Aarch64,
            &BuildOptions::default(),
            Path::new("/s/rootfs"),
        );
        let line = tools::describe(&command);
        assert!(line.contains("--arch=arm64"), "{line}");
        assert!(line.contains("linux-image-cloud-arm64"), "{line}");
        assert!(line.contains("dpkg-divert"), "{line}");
        assert!(
            line.contains("'deb http://deb.debian.org/debian bookworm-updates main'"),
            "{line}"
        );
    }

    #[test]
    fn customize_removes_host_keys_and_empties_machine_id() {
        let rootfs = tempfile::tempdir().expect("tempdir");
        let ssh = rootfs.path().join("etc/ssh");
        fs::create_dir_all(&ssh).expect("mkdir");
        fs::write(ssh.join("ssh_host_ed25519_key"), b"secret").expect("key");
        fs::write(ssh.join("sshd_config"), b"x").expect("config");
        fs::write(rootfs.path().join("etc/machine-id"), b"0123").expect("machine-id");
        customize(rootfs.path()).expect("customize");
        assert!(!ssh.join("ssh_host_ed25519_key").exists());
        assert!(ssh.join("sshd_config").exists());
        let id = fs::read(rootfs.path().join("etc/machine-id")).expect("machine-id");
        assert!(id.is_empty());
        let cfg = fs::read_to_string(rootfs.path().join("etc/cloud/cloud.cfg.d/90_vm_mesh.cfg"))
            .expect("cloud cfg");
        assert!(cfg.contains("NoCloud"));
        let masked = rootfs.path().join("etc/systemd/system/e2scrub_reap.service");
        assert_eq!(fs::read_link(&masked).expect("masked"), Path::new("/dev/null"));
        let sshd = fs::read_to_string(rootfs.path().join("etc/ssh/sshd_config.d/10-vm-mesh.conf"))
            .expect("sshd drop-in");
        assert!(sshd.contains("PasswordAuthentication no"));
    }
}
