//! qcow2 overlays over a base image, written in pure Rust.
//!
//! An overlay is an empty qcow2 v3 image whose backing file is the base image: the guest
//! reads the base through it and every write lands in the overlay, so one base serves many
//! nodes. The backing file is recorded as an absolute path together with its format,
//! probed from the file's magic bytes (never its extension), so QEMU neither guesses the
//! format nor resolves the path against its working directory.
//!
//! Layout of the file we write (cluster size 64 KiB, 16-bit refcounts):
//!
//! | cluster | content                                                    |
//! |---------|------------------------------------------------------------|
//! | 0       | header, backing-format extension, end marker, backing name |
//! | 1       | refcount table (one entry: cluster 2)                      |
//! | 2       | refcount block (clusters 0 to 2 + L1 clusters have count 1)|
//! | 3..     | L1 table, all zero (nothing allocated yet)                 |

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The on-disk format of a disk image.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// QEMU copy-on-write v2 or v3.
    #[serde(rename = "qcow2")]
    Qcow2,
    /// A plain byte-for-byte disk.
    #[serde(rename = "raw")]
    Raw,
}

impl ImageFormat {
    /// The name QEMU uses for this format (`qcow2`, `raw`).
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Raw => "raw",
        }
    }
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Failures while probing a base image or writing an overlay.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// The image could not be opened or read.
    #[error("cannot read image {path}")]
    ReadImage {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The image has the magic bytes of a format we do not back overlays with.
    #[error("image {path} is in format {format}, which is not supported (use qcow2 or raw)")]
    UnsupportedFormat {
        /// The image.
        path: PathBuf,
        /// The format its magic bytes name.
        format: &'static str,
    },
    /// A qcow2 base image has a header we cannot make sense of.
    #[error("image {path} has a malformed qcow2 header: {reason}")]
    MalformedHeader {
        /// The image.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The absolute path of the base image could not be found.
    #[error("cannot resolve the absolute path of base image {path}")]
    ResolveBacking {
        /// The base image as given.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The absolute path of the base image cannot be stored in a qcow2 header.
    #[error("base image path {path} is not valid UTF-8 or longer than 1023 bytes")]
    BackingPathUnusable {
        /// The absolute base image path.
        path: PathBuf,
    },
    /// Writing the overlay (or renaming it into place) failed.
    #[error("cannot write overlay {path}")]
    WriteOverlay {
        /// The overlay being written.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
const CLUSTER_BITS: u32 = 16;
const CLUSTER_SIZE: u64 = 1 << CLUSTER_BITS;
/// Length of the version 3 header without the optional compression-type field.
const HEADER_LENGTH: u32 = 104;
/// Header extension that names the backing file's format.
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// QEMU refuses backing file names longer than this.
const MAX_BACKING_NAME: usize = 1023;
/// Refcount entries are 2^4 = 16 bits wide (QEMU's default).
const REFCOUNT_ORDER: u32 = 4;

/// Other image formats recognised by magic so that they are refused by name instead of being
/// taken for raw disks (a raw backing file of a vmdk would boot garbage).
const FOREIGN_MAGICS: &[(&[u8], &str)] = &[
    (b"KDMV", "vmdk"),
    (b"conectix", "vpc"),
    (b"vhdxfile", "vhdx"),
    (b"<<< Oracle VM VirtualBox Disk Image >>>", "vdi"),
    (b"QEVM", "vmdk"),
    (b"QED\0", "qed"),
];

/// Tells a base image's format from its first bytes.
///
/// qcow2 (version 2 or 3) is recognised by its magic; files carrying the magic of other
/// image formats (qcow version 1, vmdk, vdi, vhd, vhdx, qed) are refused; anything else is a
/// raw disk.
///
/// # Examples
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let disk = dir.path().join("disk.qcow2"); // the extension is not looked at
/// std::fs::write(&disk, vec![0u8; 4096])?;
/// assert_eq!(mesh_qemu::probe_format(&disk)?, mesh_qemu::ImageFormat::Raw);
/// # Ok(()) }
/// ```
pub fn probe_format(path: &Path) -> Result<ImageFormat, OverlayError> {
    Ok(probe(path)?.format)
}

/// What probing a base image found out.
struct Probed {
    format: ImageFormat,
    virtual_size: u64,
}

fn probe(path: &Path) -> Result<Probed, OverlayError> {
    let read_error = |source| OverlayError::ReadImage { path: path.to_owned(), source };
    let mut file = File::open(path).map_err(read_error)?;
    let mut head = Vec::with_capacity(72);
    (&mut file).take(72).read_to_end(&mut head).map_err(read_error)?;
    let file_len = file.metadata().map_err(read_error)?.len();

    if head.starts_with(&QCOW2_MAGIC) {
        let malformed = |reason| OverlayError::MalformedHeader { path: path.to_owned(), reason };
        if head.len() < 32 {
            return Err(malformed("shorter than the fixed header"));
        }
        let version = be_u32(&head[4..8]);
        if version == 1 {
            return Err(OverlayError::UnsupportedFormat { path: path.to_owned(), format: "qcow" });
        }
        if version != 2 && version != 3 {
            return Err(malformed("version is neither 2 nor 3"));
        }
        let virtual_size = be_u64(&head[24..32]);
        return Ok(Probed { format: ImageFormat::Qcow2, virtual_size });
    }
    for (magic, format) in FOREIGN_MAGICS {
        if head.starts_with(magic) {
            return Err(OverlayError::UnsupportedFormat { path: path.to_owned(), format });
        }
    }
    Ok(Probed { format: ImageFormat::Raw, virtual_size: file_len })
}

fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes.try_into().expect("callers pass exactly four bytes"))
}

fn be_u64(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes.try_into().expect("callers pass exactly eight bytes"))
}

/// Creates an empty qcow2 v3 overlay at `overlay` backed by `backing`.
///
/// The backing file is recorded by absolute path (resolved now, symlinks included) with
/// its probed format; the overlay's virtual size is the backing image's (rounded up to a
/// whole 512-byte sector, as QEMU sees raw files). The file is written under a temporary
/// name beside `overlay` and renamed into place, so a crash never leaves half an overlay;
/// an existing `overlay` is replaced.
///
/// # Examples
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let base = dir.path().join("base.img");
/// std::fs::write(&base, vec![0u8; 1 << 20])?;
/// let overlay = dir.path().join("node1.qcow2");
/// mesh_qemu::create_overlay(&base, &overlay)?;
/// assert_eq!(mesh_qemu::probe_format(&overlay)?, mesh_qemu::ImageFormat::Qcow2);
/// # Ok(()) }
/// ```
pub fn create_overlay(backing: &Path, overlay: &Path) -> Result<(), OverlayError> {
    let backing_abs = fs::canonicalize(backing)
        .map_err(|source| OverlayError::ResolveBacking { path: backing.to_owned(), source })?;
    let probed = probe(&backing_abs)?;
    let name = match backing_abs.to_str() {
        Some(name) if name.len() <= MAX_BACKING_NAME => name,
        _ => return Err(OverlayError::BackingPathUnusable { path: backing_abs }),
    };
    let virtual_size = probed.virtual_size.div_ceil(512) * 512;
    let image = overlay_image(name, probed.format, virtual_size);
    tracing::debug!(
        overlay = %overlay.display(),
        backing = name,
        format = %probed.format,
        virtual_size,
        "creating qcow2 overlay"
    );
    write_atomically(overlay, &image)
}

/// The metadata of an empty overlay: the bytes to write and the file's total length.
struct OverlayImage {
    head: Vec<u8>,
    len: u64,
}

fn overlay_image(
    backing_name: &str,
    backing_format: ImageFormat,
    virtual_size: u64,
) -> OverlayImage {
    // Each L2 table fills one cluster of 8-byte entries and maps that many clusters.
    let bytes_per_l2 = (CLUSTER_SIZE / 8) * CLUSTER_SIZE;
    let l1_entries = virtual_size.div_ceil(bytes_per_l2).max(1);
    let l1_clusters = (l1_entries * 8).div_ceil(CLUSTER_SIZE);
    let refcount_table_offset = CLUSTER_SIZE;
    let refcount_block_offset = 2 * CLUSTER_SIZE;
    let l1_offset = 3 * CLUSTER_SIZE;
    let used_clusters = 3 + l1_clusters;

    let mut head = Vec::with_capacity(3 * CLUSTER_SIZE as usize);
    head.extend_from_slice(&QCOW2_MAGIC);
    head.extend_from_slice(&3u32.to_be_bytes()); // version
    let backing_offset_at = head.len();
    head.extend_from_slice(&0u64.to_be_bytes()); // backing_file_offset, patched below
    head.extend_from_slice(&(backing_name.len() as u32).to_be_bytes());
    head.extend_from_slice(&CLUSTER_BITS.to_be_bytes());
    head.extend_from_slice(&virtual_size.to_be_bytes());
    head.extend_from_slice(&0u32.to_be_bytes()); // crypt_method: none
    head.extend_from_slice(&(l1_entries as u32).to_be_bytes());
    head.extend_from_slice(&l1_offset.to_be_bytes());
    head.extend_from_slice(&refcount_table_offset.to_be_bytes());
    head.extend_from_slice(&1u32.to_be_bytes()); // refcount_table_clusters
    head.extend_from_slice(&0u32.to_be_bytes()); // nb_snapshots
    head.extend_from_slice(&0u64.to_be_bytes()); // snapshots_offset
    head.extend_from_slice(&0u64.to_be_bytes()); // incompatible_features
    head.extend_from_slice(&0u64.to_be_bytes()); // compatible_features
    head.extend_from_slice(&0u64.to_be_bytes()); // autoclear_features
    head.extend_from_slice(&REFCOUNT_ORDER.to_be_bytes());
    head.extend_from_slice(&HEADER_LENGTH.to_be_bytes());
    debug_assert_eq!(head.len(), HEADER_LENGTH as usize);

    // Header extensions: the backing format, then the end marker. Extension data is padded
    // to a multiple of eight bytes.
    let format = backing_format.as_str().as_bytes();
    head.extend_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
    head.extend_from_slice(&(format.len() as u32).to_be_bytes());
    head.extend_from_slice(format);
    head.resize(head.len().next_multiple_of(8), 0);
    head.extend_from_slice(&[0u8; 8]); // end of extensions: type 0, length 0

    let backing_offset = head.len() as u64;
    head[backing_offset_at..backing_offset_at + 8].copy_from_slice(&backing_offset.to_be_bytes());
    head.extend_from_slice(backing_name.as_bytes());

    // Refcount table: its only entry points at the refcount block.
    head.resize(refcount_table_offset as usize, 0);
    head.extend_from_slice(&refcount_block_offset.to_be_bytes());

    // Refcount block: every metadata cluster is referenced exactly once.
    head.resize(refcount_block_offset as usize, 0);
    for _ in 0..used_clusters {
        head.extend_from_slice(&1u16.to_be_bytes());
    }

    // The L1 table stays all zero: it needs no bytes written, only room in the file.
    OverlayImage { head, len: used_clusters * CLUSTER_SIZE }
}

fn write_atomically(overlay: &Path, image: &OverlayImage) -> Result<(), OverlayError> {
    // Extending with set_len keeps the zero L1 table sparse.
    crate::atomic::write_file(overlay, &image.head, image.len, true)
        .map_err(|source| OverlayError::WriteOverlay { path: overlay.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qcow2_magic_wins_over_a_raw_extension() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("disk.raw");
        let image = overlay_image("/base", ImageFormat::Raw, 1 << 30);
        fs::write(&path, &image.head).expect("write test image");
        let probed = probe(&path).expect("probe");
        assert_eq!(probed.format, ImageFormat::Qcow2);
        assert_eq!(probed.virtual_size, 1 << 30);
    }

    #[test]
    fn foreign_formats_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("disk.img");
        fs::write(&path, b"KDMV\x01\0\0\0 rest").expect("write test image");
        let err = probe_format(&path).expect_err("vmdk must be refused");
        assert!(matches!(err, OverlayError::UnsupportedFormat { format: "vmdk", .. }));

        let mut qcow1 = QCOW2_MAGIC.to_vec();
        qcow1.extend_from_slice(&1u32.to_be_bytes());
        qcow1.resize(64, 0);
        fs::write(&path, qcow1).expect("write test image");
        let err = probe_format(&path).expect_err("qcow v1 must be refused");
        assert!(matches!(err, OverlayError::UnsupportedFormat { format: "qcow", .. }));
    }

    #[test]
    fn empty_and_short_files_are_raw() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("empty");
        fs::write(&path, b"").expect("write test image");
        assert_eq!(probe_format(&path).expect("probe"), ImageFormat::Raw);
        fs::write(&path, b"QFI").expect("write test image");
        assert_eq!(probe_format(&path).expect("probe"), ImageFormat::Raw);
    }

    #[test]
    fn large_disks_get_a_multi_cluster_l1_table_with_matching_refcounts() {
        // 8 TiB needs 16384 L1 entries = 128 KiB = two clusters.
        let image = overlay_image("/base", ImageFormat::Qcow2, 8 << 40);
        assert_eq!(be_u32(&image.head[36..40]), 16384);
        assert_eq!(image.len, 5 * CLUSTER_SIZE);
        let block = &image.head[2 * CLUSTER_SIZE as usize..];
        assert_eq!(block.len(), 5 * 2);
        assert!(block.chunks(2).all(|entry| entry == [0, 1]));
    }

    #[test]
    fn overlay_path_without_file_name_is_refused() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let base = dir.path().join("base");
        fs::write(&base, [0u8; 512]).expect("write base");
        let err = create_overlay(&base, Path::new("/")).expect_err("no file name");
        assert!(matches!(err, OverlayError::WriteOverlay { .. }));
    }
}
