//! Base images: building, pulling, importing and caching the disks nodes boot from.
//!
//! A *base image* is a directory in the image store holding a disk (qcow2 or raw), a
//! `manifest.json` that describes it, and, for images built here, the kernel and initrd
//! that boot it directly (`-kernel`/`-initrd`, which is much faster under TCG than
//! firmware). Nodes never write to a base image: they boot from qcow2 overlays on top of it
//! (made by `mesh-qemu`).
//!
//! The store lives in `$XDG_CACHE_HOME/vm-mesh/images` (default `~/.cache/vm-mesh/images`):
//!
//! ```text
//! images/
//!   debian-12-x86_64-3f0c9a1b2d4e/   one base image: manifest.json, disk.qcow2, vmlinuz, initrd.img
//!   current-x86_64 -> debian-12-...  the image `get` returns for the arch
//!   .staging-*                       builds and downloads under way (never listed)
//!   .logs/                           the last mmdebstrap log per arch, for failed builds
//! ```
//!
//! Every image is assembled in a staging directory under the store root and renamed into
//! place only once complete, so an interrupted build, download or import leaves no image
//! behind; a staging directory abandoned by a killed process is removed by the next build.
//!
//! This module does not create overlays, start QEMU or write seeds: it only hands out the
//! paths and the kernel command line a node boots with.
//!
//! # Examples
//!
//! ```no_run
//! use mesh_core::image::{Arch, BuildOptions, ImageStore};
//!
//! let store = ImageStore::open_default()?;
//! let image = match store.get(Arch::X86_64)? {
//!     Some(image) => image,
//!     None => store.build(Arch::X86_64, &BuildOptions::default())?,
//! };
//! println!("{} {}", image.disk_path().display(), image.cmdline().unwrap_or_default());
//! # Ok::<(), mesh_core::image::ImageError>(())
//! ```

mod build;
pub(crate) use build::INIT_DONE_LOCALLY;
mod initramfs;
mod pull;
mod staging;
mod tools;

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use mesh_qemu::{Arch, ImageFormat};

/// Version of the manifest layout; a manifest with another version is not used.
pub const MANIFEST_VERSION: u32 = 1;

/// Label of the root filesystem of built images; `root=LABEL=vmroot` finds it.
pub const ROOT_LABEL: &str = "vmroot";

/// The Debian release images are built from and pulled for.
pub const RELEASE: &str = "bookworm";

/// Where `pull` fetches official Debian cloud images from by default.
pub const DEFAULT_CLOUD_MIRROR: &str = "https://cloud.debian.org/images/cloud";

/// Default Debian package mirror for `build`.
pub const DEFAULT_DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";

const MANIFEST_FILE: &str = "manifest.json";

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// An architecture name that is neither x86_64 nor aarch64.
    #[error("unknown architecture `{name}`: use x86_64 (amd64) or aarch64 (arm64)")]
    UnknownArch {
        /// The name given.
        name: String,
    },
    /// Neither `XDG_CACHE_HOME` nor `HOME` is set.
    #[error("cannot find the cache directory: neither XDG_CACHE_HOME nor HOME is set")]
    NoCacheDir,
    /// The store directory cannot be created or written.
    #[error("image cache {} is not writable", path.display())]
    CacheNotWritable {
        /// The store root.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A step needs root and the process is not root.
    #[error("{step} needs root: run it as root (for example with sudo)")]
    NotRoot {
        /// What needed root.
        step: &'static str,
    },
    /// A program the step needs is not installed.
    #[error(
        "`{tool}` is not installed: install it with \
         `apt-get install -y --no-install-recommends {package}`"
    )]
    MissingTool {
        /// The program.
        tool: &'static str,
        /// The Debian package that ships it.
        package: &'static str,
    },
    /// A program could not be started.
    #[error("cannot run `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A program ran and failed.
    #[error("`{command}` failed ({status}): {detail}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The last line of its error output, and where the full log is when there is one.
        detail: String,
    },
    /// binfmt_misc could not be set up to run foreign binaries through qemu-user-static.
    #[error("cannot register {interpreter} with binfmt_misc ({path})")]
    RegisterBinfmt {
        /// The interpreter (`qemu-aarch64`).
        interpreter: String,
        /// The file that was read or written.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The initramfs of a built image could not be assembled.
    #[error("cannot write the initramfs {}", path.display())]
    Initramfs {
        /// The initrd being written.
        path: PathBuf,
        /// Why.
        #[source]
        source: mesh_qemu::initramfs::InitramfsError,
    },
    /// A file operation in the store failed.
    #[error("cannot {step} {}", path.display())]
    Io {
        /// What was being done ("write", "rename", "read").
        step: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A manifest is unreadable or malformed.
    #[error("manifest {} is invalid", path.display())]
    ParseManifest {
        /// The manifest file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A manifest does not match the files beside it.
    #[error("image {} is damaged: {problem}", dir.display())]
    Damaged {
        /// The image directory.
        dir: PathBuf,
        /// What does not match.
        problem: String,
    },
    /// The rootfs the build produced lacks something the image needs.
    #[error("the built root filesystem {} lacks {what}", rootfs.display())]
    IncompleteRootfs {
        /// The rootfs directory.
        rootfs: PathBuf,
        /// What is missing.
        what: String,
    },
    /// No image matches an arch or id given to `remove`.
    #[error("no image `{name}` in {}", root.display())]
    NotFound {
        /// The arch or id asked for.
        name: String,
        /// The store root.
        root: PathBuf,
    },
    /// A file given to `import` is empty or not a disk image.
    #[error("{} is not a disk image: {problem}", path.display())]
    NotADisk {
        /// The file.
        path: PathBuf,
        /// Why it was refused.
        problem: String,
    },
    /// The format of a disk could not be read from its first bytes.
    #[error("cannot tell the format of {}", path.display())]
    ProbeFormat {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: mesh_qemu::OverlayError,
    },
    /// A release name `pull` does not know.
    #[error("unknown release `{release}`: use debian-12 (bookworm)")]
    UnknownRelease {
        /// The name given.
        release: String,
    },
    /// A download failed before completing.
    #[error("download of {url} failed: {problem}")]
    Download {
        /// What was downloaded.
        url: String,
        /// What went wrong (HTTP status, truncation, connection).
        problem: String,
    },
    /// The published checksum list does not name the file.
    #[error("{list_url} has no SHA512 checksum for {file}")]
    ChecksumMissing {
        /// The checksum list.
        list_url: String,
        /// The file name looked for.
        file: String,
    },
    /// A download does not match its published checksum.
    #[error("{url} does not match its published SHA512 (expected {expected}, got {actual})")]
    ChecksumMismatch {
        /// What was downloaded.
        url: String,
        /// The published digest.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
}

/// Parses an architecture name as users write it: `x86_64`/`amd64` or `aarch64`/`arm64`.
///
/// # Examples
///
/// ```
/// use mesh_core::image::{parse_arch, Arch};
/// assert_eq!(parse_arch("arm64").unwrap(), Arch::Aarch64);
/// assert!(parse_arch("riscv64").is_err());
/// ```
pub fn parse_arch(name: &str) -> Result<Arch, ImageError> {
    match name {
        "x86_64" | "amd64" | "x86-64" => Ok(Arch::X86_64),
        "aarch64" | "arm64" => Ok(Arch::Aarch64),
        _ => Err(ImageError::UnknownArch { name: name.to_owned() }),
    }
}

/// The QEMU/kernel name of an arch (`x86_64`, `aarch64`), used in ids and file names.
fn arch_name(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "x86_64",
        Arch::Aarch64 => "aarch64",
    }
}

/// The Debian name of an arch (`amd64`, `arm64`).
fn debian_arch(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "amd64",
        Arch::Aarch64 => "arm64",
    }
}

/// The serial console a guest of this arch prints to on QEMU's default machine (q35, virt).
fn serial_console(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "ttyS0",
        Arch::Aarch64 => "ttyAMA0",
    }
}

/// How a base image boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum BootMode {
    /// QEMU loads the kernel and initrd beside the disk itself (`-kernel`, `-initrd`).
    Direct {
        /// Kernel file name in the image directory.
        kernel: String,
        /// Initrd file name in the image directory.
        initrd: String,
        /// The kernel arguments that find and mount the root filesystem.
        cmdline_root: String,
    },
    /// The disk carries its own boot loader: boot it through UEFI (OVMF, AAVMF).
    Firmware,
}

/// Where an image came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageSource {
    /// Built here with mmdebstrap.
    Built {
        /// The Debian mirror packages came from.
        mirror: String,
        /// Packages installed beyond the base recipe.
        extra_packages: Vec<String>,
    },
    /// Downloaded with `pull`.
    Pulled {
        /// The download address.
        url: String,
        /// The verified SHA512 of the download.
        sha512: String,
    },
    /// Adopted from a local file with `import`.
    Imported {
        /// The file it was copied from.
        path: PathBuf,
    },
}

/// The description of a base image, stored as `manifest.json` beside its disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest layout version ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// The image id: its directory name in the store.
    pub id: String,
    /// Guest architecture.
    pub arch: Arch,
    /// Debian release (`bookworm`), or `unknown` for imported disks.
    pub release: String,
    /// How it boots.
    pub boot: BootMode,
    /// Disk file name in the image directory.
    pub disk: String,
    /// Disk format, probed from its magic bytes.
    pub disk_format: ImageFormat,
    /// Disk file size in bytes.
    pub disk_size: u64,
    /// SHA-256 of the disk file, lowercase hex.
    pub sha256: String,
    /// Hash of everything that went into a build; `None` for pulled and imported images.
    pub recipe_hash: Option<String>,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Kernel release (`uname -r`) of direct-boot images.
    pub kernel_version: Option<String>,
    /// Where it came from.
    pub source: ImageSource,
}

/// A base image in the store: its directory and manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImage {
    /// The image directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

impl BaseImage {
    /// The disk file; overlays use it as backing file, in [`Manifest::disk_format`].
    pub fn disk_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.disk)
    }

    /// The kernel of a direct-boot image.
    pub fn kernel_path(&self) -> Option<PathBuf> {
        match &self.manifest.boot {
            BootMode::Direct { kernel, .. } => Some(self.dir.join(kernel)),
            BootMode::Firmware => None,
        }
    }

    /// The initrd of a direct-boot image.
    pub fn initrd_path(&self) -> Option<PathBuf> {
        match &self.manifest.boot {
            BootMode::Direct { initrd, .. } => Some(self.dir.join(initrd)),
            BootMode::Firmware => None,
        }
    }

    /// The kernel command line of a direct-boot image: the root arguments and the serial
    /// console of its arch. Callers append their own arguments.
    pub fn cmdline(&self) -> Option<String> {
        match &self.manifest.boot {
            BootMode::Direct { cmdline_root, .. } => {
                Some(format!("{cmdline_root} console={}", serial_console(self.manifest.arch)))
            }
            BootMode::Firmware => None,
        }
    }

    /// Re-reads the disk and checks its SHA-256 against the manifest.
    pub fn verify(&self) -> Result<(), ImageError> {
        let actual = sha256_file(&self.disk_path())?;
        if actual != self.manifest.sha256 {
            return Err(ImageError::Damaged {
                dir: self.dir.clone(),
                problem: format!("disk sha256 is {actual}, manifest says {}", self.manifest.sha256),
            });
        }
        Ok(())
    }

    /// Loads an image directory, checking that the files the manifest names are there and
    /// the disk has the recorded size (cheap checks; [`BaseImage::verify`] hashes).
    fn load(dir: &Path) -> Result<BaseImage, ImageError> {
        let path = dir.join(MANIFEST_FILE);
        let text = fs::read_to_string(&path).map_err(|source| ImageError::Io {
            step: "read",
            path: path.clone(),
            source,
        })?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|source| ImageError::ParseManifest { path: path.clone(), source })?;
        let image = BaseImage { dir: dir.to_owned(), manifest };
        image.check_files()?;
        Ok(image)
    }

    fn check_files(&self) -> Result<(), ImageError> {
        let damaged = |problem: String| ImageError::Damaged { dir: self.dir.clone(), problem };
        if self.manifest.version != MANIFEST_VERSION {
            return Err(damaged(format!("manifest version {}", self.manifest.version)));
        }
        let dir_name = self.dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if self.manifest.id != dir_name {
            return Err(damaged(format!("manifest id {} in {dir_name}", self.manifest.id)));
        }
        let disk = self.disk_path();
        let size = fs::metadata(&disk)
            .map(|m| m.len())
            .map_err(|e| damaged(format!("disk {}: {e}", disk.display())))?;
        if size != self.manifest.disk_size {
            return Err(damaged(format!(
                "disk is {size} bytes, manifest says {}",
                self.manifest.disk_size
            )));
        }
        for extra in [self.kernel_path(), self.initrd_path()].into_iter().flatten() {
            if !extra.is_file() {
                return Err(damaged(format!("{} is missing", extra.display())));
            }
        }
        Ok(())
    }
}

/// Knobs of [`ImageStore::build`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// Debian packages installed beyond the base recipe (a protocol's runtime, tools).
    pub extra_packages: Vec<String>,
    /// Debian mirror; `None` means [`DEFAULT_DEBIAN_MIRROR`].
    pub mirror: Option<String>,
    /// Virtual size of the root disk. The guest grows its filesystem to fill a larger
    /// overlay at first boot, so this only needs to hold the packages.
    pub disk_size_mib: u64,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions { extra_packages: Vec::new(), mirror: None, disk_size_mib: 2048 }
    }
}

/// What [`ImageStore::remove`] removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoveTarget {
    /// Every image of an arch.
    Arch(Arch),
    /// One image by id.
    Id(String),
}

impl RemoveTarget {
    /// Reads `x86_64`, `aarch64` (or their Debian names) as an arch, anything else as an id.
    pub fn parse(text: &str) -> RemoveTarget {
        match parse_arch(text) {
            Ok(arch) => RemoveTarget::Arch(arch),
            Err(_) => RemoveTarget::Id(text.to_owned()),
        }
    }
}

/// The image cache: a directory of base images, one per subdirectory.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    /// Opens the store in `$XDG_CACHE_HOME/vm-mesh/images` (default
    /// `~/.cache/vm-mesh/images`), creating it if needed.
    pub fn open_default() -> Result<Self, ImageError> {
        Self::open(&default_root()?)
    }

    /// Opens (creating if needed) a store at `root` and checks that it is writable.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        let not_writable = |source| ImageError::CacheNotWritable { path: root.to_owned(), source };
        fs::create_dir_all(root).map_err(not_writable)?;
        // Creating a directory proves the store is writable before a long build starts, and
        // failing here gives the one-line "not writable" error rather than one mid-build.
        let probe = tempfile::Builder::new().prefix(".probe-").tempdir_in(root);
        drop(probe.map_err(not_writable)?);
        Ok(ImageStore { root: root.to_owned() })
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Removes staging directories left by builds, pulls or imports whose process was
    /// killed (those still in use are spared), returning how many went. `build` does this
    /// itself; `mesh gc` can call it too.
    pub fn remove_abandoned(&self) -> Result<usize, ImageError> {
        staging::remove_stale(&self.root)
    }

    /// The current image for `arch`, if any: the one last built, pulled or imported for it
    /// (or, when that one is gone, the newest valid one).
    pub fn get(&self, arch: Arch) -> Result<Option<BaseImage>, ImageError> {
        let link = self.current_link(arch);
        if let Ok(target) = fs::read_link(&link) {
            if let Ok(image) = BaseImage::load(&self.root.join(target)) {
                if image.manifest.arch == arch {
                    return Ok(Some(image));
                }
            }
        }
        let newest = self
            .list()?
            .into_iter()
            .filter(|image| image.manifest.arch == arch)
            .max_by_key(|image| (image.manifest.created, image.manifest.id.clone()));
        Ok(newest)
    }

    /// Every valid image in the store, sorted by id. Damaged images are skipped (and logged).
    pub fn list(&self) -> Result<Vec<BaseImage>, ImageError> {
        let entries = fs::read_dir(&self.root).map_err(|source| ImageError::Io {
            step: "read",
            path: self.root.clone(),
            source,
        })?;
        let mut images = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if name.starts_with('.') || !is_dir {
                continue;
            }
            match BaseImage::load(&entry.path()) {
                Ok(image) => images.push(image),
                Err(error) => tracing::warn!(%error, "skipping a damaged image"),
            }
        }
        images.sort_by(|a, b| a.manifest.id.cmp(&b.manifest.id));
        Ok(images)
    }

    /// Removes every image of an arch or one image by id, returning the ids removed.
    pub fn remove(&self, target: &RemoveTarget) -> Result<Vec<String>, ImageError> {
        let name = match target {
            RemoveTarget::Arch(arch) => arch_name(*arch).to_owned(),
            RemoveTarget::Id(id) => id.clone(),
        };
        let mut removed = Vec::new();
        for image in self.list()? {
            let matches = match target {
                RemoveTarget::Arch(arch) => image.manifest.arch == *arch,
                RemoveTarget::Id(id) => image.manifest.id == *id,
            };
            if matches {
                staging::remove_tree(&image.dir)?;
                removed.push(image.manifest.id);
            }
        }
        if removed.is_empty() {
            // A damaged image is not listed but can still be removed by its id.
            if let RemoveTarget::Id(id) = target {
                let dir = self.root.join(id);
                let is_dir = fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir());
                if !id.starts_with('.') && !id.contains('/') && is_dir {
                    staging::remove_tree(&dir)?;
                    removed.push(id.clone());
                }
            }
        }
        if removed.is_empty() {
            return Err(ImageError::NotFound { name, root: self.root.clone() });
        }
        for arch in [Arch::X86_64, Arch::Aarch64] {
            let link = self.current_link(arch);
            let dangling = fs::read_link(&link).is_ok() && !link.exists();
            if dangling {
                remove_file_if_exists(&link)?;
            }
        }
        Ok(removed)
    }

    /// Builds a Debian 12 image for `arch` with mmdebstrap, or returns the cached one when
    /// an image with the same recipe is already in the store. Needs root. The result becomes
    /// the current image for `arch`.
    ///
    /// Images of older recipes stay in the store until removed.
    // FIXME: nothing prunes images of superseded recipes (about 400 MiB each); it matters for
    // long-lived CI caches once the recipe changes often.
    pub fn build(&self, arch: Arch, opts: &BuildOptions) -> Result<BaseImage, ImageError> {
        build::build(self, arch, opts)
    }

    /// Copies a local disk into the store as a firmware-boot image for `arch`. The format
    /// (qcow2 or raw) is read from the file's magic bytes, never its name. The result
    /// becomes the current image for `arch`.
    pub fn import(&self, path: &Path, arch: Arch) -> Result<BaseImage, ImageError> {
        let format = probe_disk(path)?;
        let staging = staging::Staging::create(&self.root, &format!("import-{}", arch_name(arch)))?;
        let file_name = format!("disk.{}", format.as_str());
        let disk = staging.path().join(&file_name);
        let (size, sha256) = copy_hashing(path, &disk)?;
        let id = format!("import-{}-{}", arch_name(arch), &sha256[..12]);
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            id,
            arch,
            release: "unknown".to_owned(),
            boot: BootMode::Firmware,
            disk: file_name,
            disk_format: format,
            disk_size: size,
            sha256,
            recipe_hash: None,
            created: now(),
            kernel_version: None,
            source: ImageSource::Imported { path: absolute(path) },
        };
        self.commit(staging, manifest)
    }

    /// Downloads the official Debian cloud image of `release` (`debian-12` or `bookworm`)
    /// for `arch` from `mirror_base_url` (normally [`DEFAULT_CLOUD_MIRROR`]), verifies it
    /// against the published `SHA512SUMS` and caches it as a firmware-boot image. Nothing
    /// is cached when the download or the verification fails.
    pub fn pull(
        &self,
        release: &str,
        arch: Arch,
        mirror_base_url: &str,
    ) -> Result<BaseImage, ImageError> {
        pull::pull(self, release, arch, mirror_base_url)
    }

    /// Writes the manifest into a staging directory, renames it into place as
    /// `root/<id>` and makes it current for its arch.
    fn commit(
        &self,
        staging: staging::Staging,
        manifest: Manifest,
    ) -> Result<BaseImage, ImageError> {
        let manifest_path = staging.path().join(MANIFEST_FILE);
        let json = serde_json::to_string_pretty(&manifest)
            .expect("a manifest is plain data and always serialises");
        write_synced(&manifest_path, json.as_bytes())?;

        let dest = self.root.join(&manifest.id);
        if dest.exists() {
            // Same id means same content (the id carries a digest), but the old copy failed
            // to load or it would have been reused: replace it.
            staging::remove_tree(&dest)?;
        }
        staging.persist(&dest)?;
        self.set_current(manifest.arch, &manifest.id)?;
        tracing::info!(id = %manifest.id, "base image ready");
        BaseImage::load(&dest)
    }

    fn current_link(&self, arch: Arch) -> PathBuf {
        self.root.join(format!("current-{}", arch_name(arch)))
    }

    /// Points `current-<arch>` at `id`, atomically (a new link renamed over the old).
    fn set_current(&self, arch: Arch, id: &str) -> Result<(), ImageError> {
        let link = self.current_link(arch);
        let tmp = self.root.join(format!(".current-{}.{}", arch_name(arch), std::process::id()));
        remove_file_if_exists(&tmp)?;
        std::os::unix::fs::symlink(id, &tmp).map_err(|source| ImageError::Io {
            step: "create link",
            path: tmp.clone(),
            source,
        })?;
        fs::rename(&tmp, &link).map_err(|source| ImageError::Io {
            step: "rename",
            path: link.clone(),
            source,
        })
    }

    /// An image of `arch` in the store whose recipe hash is `recipe_hash` and whose disk
    /// still matches its digest.
    fn find_recipe(&self, arch: Arch, recipe_hash: &str) -> Result<Option<BaseImage>, ImageError> {
        for image in self.list()? {
            if image.manifest.arch == arch
                && image.manifest.recipe_hash.as_deref() == Some(recipe_hash)
            {
                match image.verify() {
                    Ok(()) => return Ok(Some(image)),
                    Err(error) => tracing::warn!(%error, "cached image fails verification"),
                }
            }
        }
        Ok(None)
    }
}

fn default_root() -> Result<PathBuf, ImageError> {
    let cache = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => PathBuf::from(home).join(".cache"),
            None => return Err(ImageError::NoCacheDir),
        },
    };
    Ok(cache.join("vm-mesh").join("images"))
}

/// Reads the first bytes of a would-be disk and names its format.
fn probe_disk(path: &Path) -> Result<ImageFormat, ImageError> {
    let meta = fs::metadata(path).map_err(|source| ImageError::Io {
        step: "read",
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(ImageError::NotADisk { path: path.to_owned(), problem: "not a file".into() });
    }
    if meta.len() == 0 {
        return Err(ImageError::NotADisk { path: path.to_owned(), problem: "empty".into() });
    }
    let format = mesh_qemu::probe_format(path)
        .map_err(|source| ImageError::ProbeFormat { path: path.to_owned(), source })?;
    if format == ImageFormat::Raw && !looks_bootable(path) {
        // Regression: random bytes or an ISO were taken as a raw disk, made current, and
        // every later `mesh up` booted garbage until its readiness timeout.
        return Err(ImageError::NotADisk {
            path: path.to_owned(),
            problem:
                "neither qcow2 nor a raw disk with a partition table or an ext2/3/4 file system"
                    .into(),
        });
    }
    Ok(format)
}

/// Whether a raw file starts like a disk a VM can boot: an MBR or GPT partition table, or an
/// ext2/3/4 file system spanning the whole disk.
fn looks_bootable(path: &Path) -> bool {
    use std::io::Read;
    let mut head = vec![0u8; 4096];
    let Ok(mut f) = fs::File::open(path) else { return false };
    let Ok(n) = f.read(&mut head) else { return false };
    let head = &head[..n];
    let mbr = head.len() >= 512 && head[510] == 0x55 && head[511] == 0xaa;
    let gpt = head.len() >= 520 && &head[512..520] == b"EFI PART";
    let ext = head.len() >= 1082 && head[1080] == 0x53 && head[1081] == 0xef;
    mbr || gpt || ext
}

/// Copies `from` to `to`, returning the size and SHA-256 of what was copied.
fn copy_hashing(from: &Path, to: &Path) -> Result<(u64, String), ImageError> {
    let read_err = |source| ImageError::Io { step: "read", path: from.to_owned(), source };
    let write_err = |source| ImageError::Io { step: "write", path: to.to_owned(), source };
    let mut input = fs::File::open(from).map_err(read_err)?;
    let mut output = fs::File::create(to).map_err(write_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n]).map_err(write_err)?;
        size += n as u64;
    }
    output.sync_all().map_err(write_err)?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// SHA-256 of a file, lowercase hex.
fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let read_err = |source| ImageError::Io { step: "read", path: path.to_owned(), source };
    let mut file = fs::File::open(path).map_err(read_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let write_err = |source| ImageError::Io { step: "write", path: path.to_owned(), source };
    let mut file = fs::File::create(path).map_err(write_err)?;
    file.write_all(bytes).map_err(write_err)?;
    file.sync_all().map_err(write_err)
}

fn remove_file_if_exists(path: &Path) -> Result<(), ImageError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(ImageError::Io { step: "remove", path: path.to_owned(), source: e })
        }
        _ => Ok(()),
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_manifest(id: &str, arch: Arch) -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            id: id.to_owned(),
            arch,
            release: RELEASE.to_owned(),
            boot: BootMode::Direct {
                kernel: "vmlinuz".into(),
                initrd: "initrd.img".into(),
                cmdline_root: "root=LABEL=vmroot rw".into(),
            },
            disk: "disk.qcow2".into(),
            disk_format: ImageFormat::Qcow2,
            disk_size: 3,
            sha256: hex::encode(Sha256::digest(b"abc")),
            recipe_hash: Some("r".into()),
            created: 1,
            kernel_version: Some("6.1.0-1-cloud-amd64".into()),
            source: ImageSource::Built {
                mirror: DEFAULT_DEBIAN_MIRROR.into(),
                extra_packages: vec![],
            },
        }
    }

    fn write_image(root: &Path, manifest: &Manifest) {
        let dir = root.join(&manifest.id);
        fs::create_dir_all(&dir).expect("test dir");
        fs::write(dir.join("disk.qcow2"), b"abc").expect("test disk");
        fs::write(dir.join("vmlinuz"), b"k").expect("test kernel");
        fs::write(dir.join("initrd.img"), b"i").expect("test initrd");
        fs::write(dir.join(MANIFEST_FILE), serde_json::to_string(manifest).expect("json"))
            .expect("test manifest");
    }

    #[test]
    fn manifest_round_trips_through_json() {
        let manifest = sample_manifest("a", Arch::Aarch64);
        let json = serde_json::to_string(&manifest).expect("serialise");
        assert!(json.contains(r#""mode":"direct""#), "{json}");
        let back: Manifest = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, manifest);
    }

    #[test]
    fn cmdline_names_the_serial_console_of_the_arch() {
        let image = BaseImage { dir: "/x".into(), manifest: sample_manifest("a", Arch::Aarch64) };
        assert_eq!(image.cmdline().as_deref(), Some("root=LABEL=vmroot rw console=ttyAMA0"));
        assert_eq!(image.kernel_path(), Some(PathBuf::from("/x/vmlinuz")));
    }

    #[test]
    fn list_get_and_remove_follow_the_store() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(tmp.path()).expect("open");
        write_image(tmp.path(), &sample_manifest("a", Arch::X86_64));
        let mut newer = sample_manifest("b", Arch::X86_64);
        newer.created = 2;
        write_image(tmp.path(), &newer);
        write_image(tmp.path(), &sample_manifest("c", Arch::Aarch64));
        // A damaged image (disk size differs from the manifest) is not listed.
        let mut bad = sample_manifest("d", Arch::X86_64);
        bad.disk_size = 99;
        write_image(tmp.path(), &bad);

        let ids: Vec<_> = store.list().expect("list").into_iter().map(|i| i.manifest.id).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(store.get(Arch::X86_64).expect("get").map(|i| i.manifest.id), Some("b".into()));

        store.set_current(Arch::X86_64, "a").expect("set current");
        assert_eq!(store.get(Arch::X86_64).expect("get").map(|i| i.manifest.id), Some("a".into()));

        assert_eq!(store.remove(&RemoveTarget::Id("a".into())).expect("rm"), ["a"]);
        assert!(fs::symlink_metadata(store.current_link(Arch::X86_64)).is_err());
        assert_eq!(store.get(Arch::X86_64).expect("get").map(|i| i.manifest.id), Some("b".into()));
        assert_eq!(store.remove(&RemoveTarget::parse("arm64")).expect("rm"), ["c"]);
        assert_eq!(store.remove(&RemoveTarget::Id("d".into())).expect("rm damaged"), ["d"]);
        assert!(matches!(
            store.remove(&RemoveTarget::Id("zzz".into())),
            Err(ImageError::NotFound { .. })
        ));
    }

    #[test]
    fn verify_catches_a_changed_disk() {
        let tmp = tempfile::tempdir().expect("tempdir");
        write_image(tmp.path(), &sample_manifest("a", Arch::X86_64));
        let image = BaseImage::load(&tmp.path().join("a")).expect("load");
        image.verify().expect("intact");
        fs::write(image.disk_path(), b"abd").expect("tamper");
        assert!(matches!(image.verify(), Err(ImageError::Damaged { .. })));
    }

    #[test]
    fn unknown_arch_is_refused() {
        let err = parse_arch("mips").expect_err("mips is not supported");
        assert!(err.to_string().contains("mips"));
    }
}
