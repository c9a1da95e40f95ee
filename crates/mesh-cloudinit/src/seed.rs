//! The NoCloud seed: its files, its instance-id, and the ISO9660 or vfat image holding them.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::config::{is_host_name, CloudConfig, RenderError};
use crate::metadata::{validate_meta_data, DsMode, MetaData, MetaDataError};
use crate::network::{validate_network_config, NetworkConfig, NetworkConfigError};
use crate::userdata::{parse_user_data, UserDataError};
use crate::vfat::{vfat_image, VfatError};

/// Volume label NoCloud looks for on an ISO9660 seed.
pub const ISO_LABEL: &str = "cidata";
/// Volume label NoCloud looks for on a vfat seed.
pub const VFAT_LABEL: &str = "CIDATA";
/// Mode of the files in an ISO seed (Rock Ridge).
const ISO_FILE_MODE: u32 = 0o444;

/// Why a seed could not be built or written.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The cloud-config is invalid.
    #[error("cannot render user-data")]
    RenderUserData(#[source] RenderError),
    /// The network configuration is invalid.
    #[error("cannot render network-config")]
    RenderNetworkConfig(#[source] NetworkConfigError),
    /// The meta-data could not be written.
    #[error("cannot render meta-data")]
    RenderMetaData(#[source] MetaDataError),
    /// The node name is not a valid host name.
    #[error("local-hostname {name:?} is not a valid host name")]
    CheckLocalHostname {
        /// The offending name.
        name: String,
    },
    /// Supplied user-data is invalid.
    #[error("user-data rejected")]
    CheckUserData(#[source] UserDataError),
    /// Supplied vendor-data is invalid.
    #[error("vendor-data rejected")]
    CheckVendorData(#[source] UserDataError),
    /// Supplied meta-data is invalid (the cause names the document).
    #[error(transparent)]
    CheckMetaData(MetaDataError),
    /// Supplied network-config is invalid (the cause names the document).
    #[error(transparent)]
    CheckNetworkConfig(NetworkConfigError),
    /// mesh-iso refused a file.
    #[error("cannot add {name} to the ISO tree")]
    BuildIsoTree {
        /// The seed file.
        name: &'static str,
        /// The cause.
        #[source]
        source: mesh_iso::TreeError,
    },
    /// mesh-iso failed to build the image.
    #[error("cannot build ISO seed for {path}")]
    BuildIso {
        /// The destination.
        path: PathBuf,
        /// The cause.
        #[source]
        source: mesh_iso::WriteError,
    },
    /// Building the vfat image failed.
    #[error("cannot build vfat seed for {path}")]
    BuildVfat {
        /// The destination.
        path: PathBuf,
        /// The cause.
        #[source]
        source: VfatError,
    },
    /// Writing the image file failed.
    #[error("cannot write seed image {path}")]
    WriteImage {
        /// The temporary file being written.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The temporary file, written next to the output and then renamed over it, cannot be
    /// created (a directory the user may not write in, say).
    #[error("cannot create a temporary file in {dir} (the seed is written there, then renamed to its name)")]
    CreateTemp {
        /// The output's directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Moving the finished image into place failed.
    #[error("cannot rename {from} to {to}")]
    Rename {
        /// The temporary file.
        from: PathBuf,
        /// The destination.
        to: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The files of a NoCloud seed, all checked.
///
/// # Examples
/// ```
/// use mesh_cloudinit::{CloudConfig, Seed};
///
/// let config = CloudConfig { hostname: Some("node-1".into()), ..CloudConfig::default() };
/// let seed = Seed::new(&config, "node-1", None).unwrap();
/// assert!(seed.instance_id().starts_with("iid-"));
/// let names: Vec<&str> = seed.files().iter().map(|(name, _)| *name).collect();
/// assert_eq!(names, ["user-data", "meta-data"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    user_data: Vec<u8>,
    meta_data: Vec<u8>,
    network_config: Option<Vec<u8>>,
    vendor_data: Option<Vec<u8>>,
    instance_id: String,
    /// Set when we wrote meta-data ourselves (and so derive the instance-id from content).
    local_hostname: Option<String>,
    /// meta-data's `dsmode`, for seeds built by [`Seed::new`].
    dsmode: Option<DsMode>,
    /// The supplied documents the seed does not hold byte for byte.
    normalised: Vec<&'static str>,
}

impl Seed {
    /// Builds a seed from typed parts; the instance-id is derived from all seed content.
    pub fn new(
        user_data: &CloudConfig,
        local_hostname: &str,
        network: Option<&NetworkConfig>,
    ) -> Result<Self, SeedError> {
        if !is_host_name(local_hostname) {
            return Err(SeedError::CheckLocalHostname { name: local_hostname.to_owned() });
        }
        let user_data = user_data.render().map_err(SeedError::RenderUserData)?.into_bytes();
        let network_config = network
            .map(|n| n.render().map_err(SeedError::RenderNetworkConfig))
            .transpose()?
            .map(String::into_bytes);

        let mut seed = Seed {
            user_data,
            meta_data: Vec::new(),
            network_config,
            vendor_data: None,
            instance_id: String::new(),
            local_hostname: Some(local_hostname.to_owned()),
            dsmode: None,
            normalised: Vec::new(),
        };
        seed.derive_meta_data()?;
        Ok(seed)
    }

    /// Builds a seed from user-supplied files (the `cloud-localds` inputs), checking all of
    /// them before anything is written.
    ///
    /// user-data and vendor-data are normalised as [`parse_user_data`] describes; meta-data
    /// and network-config are kept byte for byte.
    pub fn from_files(
        user_data: &[u8],
        meta_data: &[u8],
        network_config: Option<&[u8]>,
        vendor_data: Option<&[u8]>,
    ) -> Result<Self, SeedError> {
        let supplied_user_data = user_data;
        let user_data = parse_user_data(user_data).map_err(SeedError::CheckUserData)?;
        let instance_id = validate_meta_data(meta_data).map_err(SeedError::CheckMetaData)?;
        if let Some(network_config) = network_config {
            validate_network_config(network_config).map_err(SeedError::CheckNetworkConfig)?;
        }
        let parsed_vendor_data = vendor_data
            .map(|v| parse_user_data(v).map_err(SeedError::CheckVendorData))
            .transpose()?;
        let mut normalised = Vec::new();
        if user_data.as_bytes() != supplied_user_data {
            normalised.push("user-data");
        }
        if let (Some(parsed), Some(supplied)) = (&parsed_vendor_data, vendor_data) {
            if parsed.as_bytes() != supplied {
                normalised.push("vendor-data");
            }
        }
        let vendor_data = parsed_vendor_data;

        Ok(Seed {
            user_data: user_data.as_bytes().to_vec(),
            meta_data: meta_data.to_vec(),
            network_config: network_config.map(<[u8]>::to_vec),
            vendor_data: vendor_data.map(|v| v.as_bytes().to_vec()),
            instance_id,
            local_hostname: None,
            dsmode: None,
            normalised,
        })
    }

    /// Adds vendor-data (checked like user-data). For a seed built by [`Seed::new`], the
    /// instance-id changes with it.
    pub fn with_vendor_data(mut self, vendor: &[u8]) -> Result<Self, SeedError> {
        let vendor = parse_user_data(vendor).map_err(SeedError::CheckVendorData)?;
        self.vendor_data = Some(vendor.as_bytes().to_vec());
        if self.local_hostname.is_some() {
            self.derive_meta_data()?;
        }
        Ok(self)
    }

    /// Sets meta-data's `dsmode` of a seed built by [`Seed::new`] (a new instance-id comes
    /// with it). A seed built from files keeps its meta-data as given.
    pub fn with_dsmode(mut self, mode: DsMode) -> Result<Self, SeedError> {
        if self.local_hostname.is_some() {
            self.dsmode = Some(mode);
            self.derive_meta_data()?;
        }
        Ok(self)
    }

    /// The supplied documents (`user-data`, `vendor-data`) that the seed holds normalised
    /// rather than byte for byte: a byte-order mark, leading blank lines or CRLF line endings
    /// removed, as [`parse_user_data`] describes.
    pub fn normalised(&self) -> &[&'static str] {
        &self.normalised
    }

    /// The instance-id written in (or read from) meta-data.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The seed files as `(name, contents)`: `user-data`, `meta-data`, then `network-config`
    /// and `vendor-data` when present.
    pub fn files(&self) -> Vec<(&'static str, &[u8])> {
        let mut files: Vec<(&'static str, &[u8])> =
            vec![("user-data", &self.user_data), ("meta-data", &self.meta_data)];
        if let Some(network_config) = &self.network_config {
            files.push(("network-config", network_config));
        }
        if let Some(vendor_data) = &self.vendor_data {
            files.push(("vendor-data", vendor_data));
        }
        files
    }

    /// Writes the seed as an ISO9660 image labelled `cidata` (Rock Ridge and Joliet), via a
    /// temporary file renamed into place. Its timestamps are the current time; see
    /// [`Seed::write_iso_at`] for reproducible images.
    pub fn write_iso(&self, out: &Path) -> Result<(), SeedError> {
        self.write_iso_at(out, None)
    }

    /// As [`Seed::write_iso`], with every timestamp in the image set to `timestamp` (seconds
    /// since the Unix epoch, as in `SOURCE_DATE_EPOCH`) when given: the same seed and
    /// timestamp then give the same bytes.
    pub fn write_iso_at(&self, out: &Path, timestamp: Option<i64>) -> Result<(), SeedError> {
        let mut tree = mesh_iso::IsoTree::new();
        for (name, contents) in self.files() {
            tree.add_file_bytes(name, contents.to_vec(), ISO_FILE_MODE)
                .map_err(|source| SeedError::BuildIsoTree { name, source })?;
        }
        let mut options = mesh_iso::IsoOptions::new(ISO_LABEL);
        options.rock_ridge = true;
        options.joliet = true;
        options.timestamp = timestamp;

        // Seeds are a few KiB: build in memory, then write and rename like the vfat image.
        // Room for a typical seed (27 sectors), so the image is not copied as it grows.
        let mut image = Vec::with_capacity(64 << 10);
        mesh_iso::write_iso(&tree, &options, &mut image)
            .map_err(|source| SeedError::BuildIso { path: out.to_owned(), source })?;
        write_image(&image, out)
    }

    /// Writes the seed as a FAT12 image labelled `CIDATA` in the boot sector and in the root
    /// directory, via a temporary file renamed into place.
    pub fn write_vfat(&self, out: &Path) -> Result<(), SeedError> {
        let image = vfat_image(&self.files(), VFAT_LABEL, self.volume_serial())
            .map_err(|source| SeedError::BuildVfat { path: out.to_owned(), source })?;

        write_image(&image, out)
    }

    /// Recomputes the instance-id from the content and rewrites meta-data.
    fn derive_meta_data(&mut self) -> Result<(), SeedError> {
        let local_hostname = self.local_hostname.clone().unwrap_or_default();
        let mut hasher = Sha256::new();
        let mut fields: Vec<(&str, Option<&[u8]>)> = vec![
            ("user-data", Some(&self.user_data)),
            ("local-hostname", Some(local_hostname.as_bytes())),
            ("network-config", self.network_config.as_deref()),
            ("vendor-data", self.vendor_data.as_deref()),
        ];
        // Only when set, so that seeds without it keep the ids they always had.
        if let Some(mode) = self.dsmode {
            fields.push(("dsmode", Some(mode.as_str().as_bytes())));
        }
        for (name, contents) in fields {
            // Length-prefixed so that moving bytes between files changes the hash.
            hasher.update(name.as_bytes());
            match contents {
                Some(contents) => {
                    hasher.update([1]);
                    hasher.update((contents.len() as u64).to_le_bytes());
                    hasher.update(contents);
                }
                None => hasher.update([0]),
            }
        }
        self.instance_id = format!("iid-{}", &hex::encode(hasher.finalize())[..16]);

        let meta =
            MetaData { instance_id: self.instance_id.clone(), local_hostname, dsmode: self.dsmode };
        self.meta_data = meta.render().map_err(SeedError::RenderMetaData)?.into_bytes();
        Ok(())
    }

    /// FAT volume serial derived from the instance-id, so images are reproducible.
    fn volume_serial(&self) -> u32 {
        let digest = Sha256::digest(self.instance_id.as_bytes());
        u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]])
    }
}

/// Writes `image` to a temporary sibling of `out` and renames it into place, so readers see
/// the old seed or the new one, never a partial file.
///
/// As with a plain `open` of `out`: a symlink at `out` is written through (its target is
/// replaced; a dangling link is itself replaced), and a file that is replaced keeps its
/// permission bits.
///
/// No fsync: a seed is derived data that `mesh up` writes again from the mesh spec, so after
/// a host crash it is rebuilt rather than trusted; an fsync per node costs milliseconds on a
/// busy disk, more than building the seed.
fn write_image(image: &[u8], out: &Path) -> Result<(), SeedError> {
    let failed = |source| SeedError::WriteImage { path: out.to_owned(), source };
    let out = &mesh_iso::follow_symlinks(out).map_err(failed)?;
    let failed = |source| SeedError::WriteImage { path: out.to_owned(), source };
    match fs::metadata(out) {
        Ok(m) if m.is_dir() => {
            return Err(failed(std::io::Error::new(
                std::io::ErrorKind::IsADirectory,
                "it is a directory",
            )))
        }
        // A device or FIFO (a disk, `/dev/stdout`) is written into, as cloud-localds does:
        // renaming a file over it would replace the device node.
        Ok(m) if !m.is_file() => {
            use std::io::Write;
            let mut device = fs::OpenOptions::new().write(true).open(out).map_err(failed)?;
            device.write_all(image).and_then(|()| device.flush()).map_err(failed)?;
            return Ok(());
        }
        // Replacing a file is refused where writing into it would be (`cat > OUT`): the
        // rename itself asks only for the directory's permission.
        Ok(_) => drop(fs::OpenOptions::new().write(true).open(out).map_err(failed)?),
        Err(_) => {}
    }
    let (temp, file) = create_temp(out).map_err(|source| SeedError::CreateTemp {
        dir: out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned(),
        source,
    })?;
    let written = (|| {
        if let Some(old) = fs::metadata(out).ok().filter(|m| m.is_file()) {
            file.set_permissions(old.permissions())?;
        }
        write_sparse(&file, image)
    })();
    drop(file);
    if let Err(source) = written {
        let _ = fs::remove_file(&temp);
        return Err(failed(source));
    }
    rename_into_place(&temp, out)?;
    tracing::debug!(path = %out.display(), bytes = image.len(), "seed image written");
    Ok(())
}

/// Writes `image` into the empty `file`, leaving all-zero 4 KiB blocks as holes: most of a
/// FAT image is empty clusters, and a hole reads back as zeros at no I/O cost.
fn write_sparse(file: &fs::File, image: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;

    const BLOCK: usize = 4096;
    file.set_len(image.len() as u64)?;
    // Each run of non-zero blocks goes out in one write.
    let mut at = 0;
    while at < image.len() {
        let zero = |start: usize| {
            let block = &image[start..(start + BLOCK).min(image.len())];
            is_zero(block)
        };
        if zero(at) {
            at += BLOCK;
            continue;
        }
        let mut end = at + BLOCK;
        while end < image.len() && !zero(end) {
            end += BLOCK;
        }
        let end = end.min(image.len());
        file.write_all_at(&image[at..end], at as u64)?;
        at = end;
    }
    Ok(())
}

/// Whether every byte is zero. An OR over all of them, which the compiler turns into wide
/// vector operations (musl's `memcmp`, which comparing with a zero block would call, goes
/// byte by byte).
fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |acc, &b| acc | b) == 0
}

/// The serial number of the next temporary file name.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Creates a new temporary sibling of `out` (a sibling, so the final rename stays on one
/// filesystem). The name is unique per process and call, and the file is created with
/// `O_EXCL`: a file or symlink someone else put under that name is never opened, the next
/// name is tried instead.
fn create_temp(out: &Path) -> std::io::Result<(PathBuf, fs::File)> {
    let mut name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Room for the dot and suffix within a file name's 255 bytes.
    if name.len() > 200 {
        let mut end = 200;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    let mut tries = 0;
    loop {
        let serial = NEXT.fetch_add(1, Ordering::Relaxed);
        let temp = out.with_file_name(format!(".{name}.tmp-{}-{serial}", std::process::id()));
        match fs::OpenOptions::new().write(true).create_new(true).open(&temp) {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 100 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

fn rename_into_place(temp: &Path, out: &Path) -> Result<(), SeedError> {
    fs::rename(temp, out).map_err(|source| {
        let _ = fs::remove_file(temp);
        SeedError::Rename { from: temp.to_owned(), to: out.to_owned(), source }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Command;

    #[test]
    fn is_zero_sees_any_non_zero_byte() {
        assert!(is_zero(&[0; 4096]) && is_zero(&[]) && is_zero(&[0; 13]));
        for at in [0, 7, 8, 4095, 4099] {
            let mut block = vec![0u8; 4100];
            block[at] = 1;
            assert!(!is_zero(&block), "{at}");
        }
    }

    #[test]
    fn write_image_writes_into_a_fifo_and_leaves_it_one() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let fifo = dir.path().join("seed.fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo runs");
        assert!(made.success(), "mkfifo failed");
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || fs::read(fifo).expect("read the fifo"))
        };
        write_image(&[7u8; 10_000], &fifo).expect("written into the fifo");
        assert_eq!(reader.join().expect("reader"), vec![7u8; 10_000]);
        assert!(fs::symlink_metadata(&fifo).expect("fifo").file_type().is_fifo());
        assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 1, "no temporary file left");

        let error = write_image(b"x", dir.path()).expect_err("a directory");
        assert!(error.to_string().contains(&dir.path().display().to_string()), "{error}");
    }

    #[test]
    fn write_image_follows_dangling_links_refuses_loops_and_takes_long_names() {
        let dir = tempfile::tempdir().expect("temp dir");
        let link = dir.path().join("link.iso");
        std::os::unix::fs::symlink("sub/target.iso", &link).expect("symlink");
        fs::create_dir(dir.path().join("sub")).expect("mkdir");
        write_image(b"new", &link).expect("written through a dangling link");
        assert!(fs::symlink_metadata(&link).expect("link").file_type().is_symlink());
        assert_eq!(fs::read(dir.path().join("sub/target.iso")).expect("target"), b"new");

        let a = dir.path().join("a.iso");
        std::os::unix::fs::symlink("b.iso", &a).expect("symlink");
        std::os::unix::fs::symlink("a.iso", dir.path().join("b.iso")).expect("symlink");
        let error = write_image(b"x", &a).expect_err("a loop");
        assert!(error.to_string().contains("a.iso"), "{error}");

        let long = dir.path().join("s".repeat(250));
        write_image(b"long", &long).expect("a 250-byte name");
        assert_eq!(fs::read(&long).expect("long"), b"long");
    }

    #[test]
    fn write_image_opens_no_file_put_under_its_temporary_names() {
        let dir = tempfile::tempdir().expect("temp dir");
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").expect("victim");
        let next = NEXT.load(Ordering::Relaxed);
        for serial in next..next + 5 {
            let name = format!(".out.iso.tmp-{}-{serial}", std::process::id());
            std::os::unix::fs::symlink(&victim, dir.path().join(name)).expect("symlink");
        }
        let out = dir.path().join("out.iso");
        write_image(b"image", &out).expect("written");
        assert_eq!(fs::read(&victim).expect("victim"), b"precious");
        assert!(fs::symlink_metadata(&out).expect("out").is_file());
        assert_eq!(fs::read(&out).expect("out"), b"image");
    }

    #[test]
    fn write_image_keeps_the_mode_of_a_replaced_file_and_writes_through_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let real = dir.path().join("real.iso");
        fs::write(&real, "old").expect("old");
        fs::set_permissions(&real, fs::Permissions::from_mode(0o600)).expect("chmod");
        let link = dir.path().join("link.iso");
        std::os::unix::fs::symlink("real.iso", &link).expect("symlink");
        write_image(b"new", &link).expect("written");
        assert!(fs::symlink_metadata(&link).expect("link").file_type().is_symlink());
        assert_eq!(fs::read(&real).expect("real"), b"new");
        let mode = fs::metadata(&real).expect("real").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn an_iso_seed_with_a_timestamp_is_reproducible() {
        let dir = tempfile::tempdir().expect("temp dir");
        let seed = Seed::from_files(b"#!/bin/sh\n", b"instance-id: a\n", None, None).expect("ok");
        let (a, b) = (dir.path().join("a.iso"), dir.path().join("b.iso"));
        seed.write_iso_at(&a, Some(1_000_000)).expect("a");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        seed.write_iso_at(&b, Some(1_000_000)).expect("b");
        assert_eq!(fs::read(&a).expect("a"), fs::read(&b).expect("b"));
    }

    fn config(command: &str) -> CloudConfig {
        CloudConfig { runcmd: vec![Command::from(command)], ..CloudConfig::default() }
    }

    #[test]
    fn same_content_gives_same_instance_id() {
        let a = Seed::new(&config("true"), "n1", None).expect("valid");
        let b = Seed::new(&config("true"), "n1", None).expect("valid");
        assert_eq!(a.instance_id(), b.instance_id());
        assert_eq!(a, b);
    }

    #[test]
    fn any_change_gives_a_new_instance_id() {
        let base = Seed::new(&config("true"), "n1", None).expect("valid");
        let other_command = Seed::new(&config("false"), "n1", None).expect("valid");
        let other_name = Seed::new(&config("true"), "n2", None).expect("valid");
        let with_net =
            Seed::new(&config("true"), "n1", Some(&NetworkConfig::default())).expect("valid");
        let with_vendor = base.clone().with_vendor_data(b"#cloud-config\n").expect("valid");
        let ids =
            [&base, &other_command, &other_name, &with_net, &with_vendor].map(Seed::instance_id);
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn meta_data_carries_the_instance_id() {
        let seed = Seed::new(&config("true"), "n1", None).expect("valid");
        let id = validate_meta_data(&seed.meta_data).expect("our meta-data validates");
        assert_eq!(id, seed.instance_id());
    }

    #[test]
    fn from_files_names_the_documents_it_normalised() {
        let md = b"instance-id: a\n";
        let seed = Seed::from_files(b"#!/bin/sh\n", md, None, Some(b"#!/bin/sh\n")).expect("ok");
        assert!(seed.normalised().is_empty());
        let seed =
            Seed::from_files(b"#!/bin/sh\r\n", md, None, Some(b"\n#!/bin/sh\n")).expect("ok");
        assert_eq!(seed.normalised(), ["user-data", "vendor-data"]);
    }

    #[test]
    fn from_files_keeps_the_supplied_instance_id() {
        let seed = Seed::from_files(b"#!/bin/sh\n", b"instance-id: abc\n", None, None).expect("ok");
        assert_eq!(seed.instance_id(), "abc");
        let seed = seed.with_vendor_data(b"#!/bin/sh\n").expect("ok");
        assert_eq!(seed.instance_id(), "abc");
    }
}
