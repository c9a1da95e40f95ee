//! Debian 12 guest kernels and a static busybox, fetched with apt and cached per architecture.
//!
//! The cloud flavour is used: it is small and has every driver the test guests need as
//! modules (virtio PCI and block, isofs, vfat with its code pages) or built in (ext4, which
//! also mounts ext2).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use serde::{Deserialize, Serialize};

use crate::Arch;

/// A guest kernel with its modules and a static busybox of the same architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestKernel {
    /// The architecture all three files are built for.
    pub arch: Arch,
    /// The kernel image for QEMU's `-kernel` (`vmlinuz-<version>`).
    pub kernel: PathBuf,
    /// The `lib/modules/<version>` directory (no `modules.dep`: Debian makes it at install).
    pub modules_dir: PathBuf,
    /// A statically linked busybox.
    pub busybox: PathBuf,
    /// The kernel release, such as `6.1.0-57-cloud-amd64`.
    pub version: String,
}

/// What a complete cache directory records about itself; its presence marks completion.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    kernel_package: String,
    version: String,
}

const MANIFEST: &str = "manifest.json";

/// Serialises cache builds within one process: tests run in parallel threads, and one
/// download per architecture is enough. Other processes are handled by the atomic rename.
static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Returns the cached Debian 12 cloud kernel and busybox for `arch`, downloading and
/// unpacking them on first use.
///
/// The cache lives in `$XDG_CACHE_HOME/vm-mesh/testkit/<arch>/` (default `~/.cache`). It is
/// built in a temporary directory beside it and renamed into place once complete, so an
/// interrupted download leaves nothing that looks usable. For aarch64 the `arm64` foreign
/// architecture is added to dpkg (and the package lists updated) when missing. Needs `apt-get`,
/// `apt-cache` and `dpkg-deb`, and root for the `dpkg --add-architecture` step.
pub fn guest_kernel(arch: Arch) -> anyhow::Result<GuestKernel> {
    let cache = cache_root()?.join(arch.as_str());
    if let Some(kernel) = load_cached(arch, &cache)? {
        return Ok(kernel);
    }

    let _guard = BUILD_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(kernel) = load_cached(arch, &cache)? {
        return Ok(kernel);
    }
    build_cache(arch, &cache)?;
    load_cached(arch, &cache)?
        .with_context(|| format!("cache {} incomplete after build", cache.display()))
}

/// `$XDG_CACHE_HOME/vm-mesh/testkit`, or `~/.cache/vm-mesh/testkit`.
fn cache_root() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|value| !value.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home =
                std::env::var_os("HOME").context("neither XDG_CACHE_HOME nor HOME is set")?;
            PathBuf::from(home).join(".cache")
        }
    };
    Ok(base.join("vm-mesh").join("testkit"))
}

fn load_cached(arch: Arch, cache: &Path) -> anyhow::Result<Option<GuestKernel>> {
    let manifest_path = cache.join(MANIFEST);
    let text = match fs::read_to_string(&manifest_path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(error).with_context(|| format!("reading {}", manifest_path.display()))
        }
    };
    let manifest: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", manifest_path.display()))?;
    Ok(Some(layout(arch, cache, &manifest.version)))
}

fn layout(arch: Arch, root: &Path, version: &str) -> GuestKernel {
    GuestKernel {
        arch,
        kernel: root.join("boot").join(format!("vmlinuz-{version}")),
        modules_dir: root.join("lib/modules").join(version),
        busybox: root.join("bin/busybox"),
        version: version.to_owned(),
    }
}

fn build_cache(arch: Arch, cache: &Path) -> anyhow::Result<()> {
    let parent = cache.parent().context("cache directory has a parent")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let work = tempfile::Builder::new()
        .prefix(&format!(".build-{arch}-"))
        .tempdir_in(parent)
        .with_context(|| format!("creating a build directory in {}", parent.display()))?;

    let suffix = apt_suffix(arch)?;
    let kernel_package = resolve_kernel_package(arch, &suffix)?;
    tracing::info!(%arch, %kernel_package, "downloading the test guest kernel and busybox");
    let downloads = work.path().join("debs");
    fs::create_dir_all(&downloads)?;
    for package in [format!("{kernel_package}{suffix}"), format!("busybox-static{suffix}")] {
        run(Command::new("apt-get")
            .args(["download", "-q", "-o", "APT::Sandbox::User=root", &package])
            .current_dir(&downloads))?;
    }

    let root = work.path().join("root");
    for deb in fs::read_dir(&downloads)? {
        let deb = deb?.path();
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    }
    fs::remove_dir_all(&downloads)?;

    // busybox-static installs /bin/busybox; newer packages may use /usr/bin.
    if !root.join("bin/busybox").exists() && root.join("usr/bin/busybox").exists() {
        fs::create_dir_all(root.join("bin"))?;
        fs::rename(root.join("usr/bin/busybox"), root.join("bin/busybox"))?;
    }
    let version = kernel_package.trim_start_matches("linux-image-").to_owned();
    if !root.join("lib/modules").exists() && root.join("usr/lib/modules").exists() {
        fs::rename(root.join("usr/lib/modules"), root.join("lib/modules"))?;
    }
    let kernel = layout(arch, &root, &version);
    for path in [&kernel.kernel, &kernel.modules_dir, &kernel.busybox] {
        ensure!(path.exists(), "{} missing after unpacking {kernel_package}", path.display());
    }
    let manifest = serde_json::to_string_pretty(&Manifest { kernel_package, version })?;
    fs::write(root.join(MANIFEST), manifest)?;

    match fs::rename(&root, cache) {
        Ok(()) => Ok(()),
        // Another process finished first: its copy is as good as ours.
        Err(_) if cache.join(MANIFEST).exists() => Ok(()),
        Err(error) => {
            Err(error).with_context(|| format!("moving the cache to {}", cache.display()))
        }
    }
}

/// The `:arm64` suffix apt needs for a foreign architecture, enabling it when missing.
fn apt_suffix(arch: Arch) -> anyhow::Result<String> {
    let native = output(Command::new("dpkg").arg("--print-architecture"))?;
    if native.trim() == arch.debian_name() {
        return Ok(String::new());
    }
    let foreign = output(Command::new("dpkg").arg("--print-foreign-architectures"))?;
    if !foreign.lines().any(|line| line.trim() == arch.debian_name()) {
        tracing::info!(%arch, "enabling the foreign dpkg architecture for test guests");
        run(Command::new("dpkg").args(["--add-architecture", arch.debian_name()]))?;
        apt_update()?;
    }
    Ok(format!(":{}", arch.debian_name()))
}

/// `apt-get update`, retried while another apt holds the lists lock.
fn apt_update() -> anyhow::Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match run(Command::new("apt-get").args(["update", "-q", "-o", "DPkg::Lock::Timeout=120"])) {
            Ok(()) => return Ok(()),
            Err(error) if attempt < 5 => {
                tracing::warn!(%error, "apt-get update failed, retrying");
                thread::sleep(Duration::from_secs(10));
            }
            Err(error) => return Err(error),
        }
    }
}

/// `linux-image-<version>-cloud-<arch>`, from the dependency of the unversioned meta package.
fn resolve_kernel_package(arch: Arch, suffix: &str) -> anyhow::Result<String> {
    let meta = format!("linux-image-cloud-{}{suffix}", arch.debian_name());
    let mut depends = output(Command::new("apt-cache").args(["depends", &meta]));
    if depends.is_err() && !suffix.is_empty() {
        // The foreign architecture is enabled but its package lists were never fetched.
        apt_update()?;
        depends = output(Command::new("apt-cache").args(["depends", &meta]));
    }
    let depends = depends?;
    versioned_kernel_package(&depends)
        .with_context(|| format!("no versioned kernel in `apt-cache depends {meta}`:\n{depends}"))
}

/// Picks `linux-image-6.1.0-57-cloud-amd64` out of `apt-cache depends` output.
fn versioned_kernel_package(depends: &str) -> Option<String> {
    depends.lines().find_map(|line| {
        let name = line.trim().strip_prefix("Depends:")?.trim();
        let name = name.split(':').next().unwrap_or(name);
        let version_part = name.strip_prefix("linux-image-")?;
        version_part.starts_with(|c: char| c.is_ascii_digit()).then(|| name.to_owned())
    })
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    output(command).map(drop)
}

fn output(command: &mut Command) -> anyhow::Result<String> {
    tracing::debug!(?command, "running");
    let program = command.get_program().to_string_lossy().into_owned();
    let result =
        command.output().with_context(|| format!("cannot run `{program}`: is it installed?"))?;
    if !result.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            result.status,
            String::from_utf8_lossy(&result.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&result.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_package_is_taken_from_apt_cache_depends() {
        let amd64 = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-57-cloud-amd64\n";
        assert_eq!(
            versioned_kernel_package(amd64).as_deref(),
            Some("linux-image-6.1.0-57-cloud-amd64")
        );
        let arm64 =
            "linux-image-cloud-arm64:arm64\n  Depends: linux-image-6.1.0-57-cloud-arm64:arm64\n";
        assert_eq!(
            versioned_kernel_package(arm64).as_deref(),
            Some("linux-image-6.1.0-57-cloud-arm64")
        );
        assert_eq!(versioned_kernel_package("x\n  Depends: linux-image-cloud-amd64\n"), None);
    }
}
