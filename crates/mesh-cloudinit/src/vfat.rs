//! The seed as a FAT12 image, labelled in the boot sector *and* in the root directory.
//!
//! blkid (util-linux 2.38 and later) reports `LABEL` only from the root-directory volume
//! entry and shows the boot-sector copy as `LABEL_FATBOOT`; cloud-init's NoCloud looks for
//! `LABEL=CIDATA`/`cidata`. fatfs 0.3.6 writes both copies, but older releases wrote only the
//! boot sector and the format code is not ours to pin, so the root entry is (re)written here,
//! into the first root-directory slot, before any file is created, and tests check it with
//! blkid.

use std::io::{self, Cursor, Write};

use fatfs::{
    Date, DateTime, FatType, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider,
};

/// FAT12 tops out at 4084 clusters of at most 32 KiB; fatfs sizes clusters from the volume
/// size, and stays within FAT12 up to this size.
const MAX_IMAGE_BYTES: u64 = 120 << 20;
/// Smallest image we make (what `cloud-localds` makes is 2 MiB; smaller is fine for FAT12).
const MIN_IMAGE_BYTES: u64 = 1 << 20;
/// Attribute bit of a volume-label directory entry.
const ATTR_VOLUME_ID: u8 = 0x08;
/// 1980-01-01, the FAT epoch, as a DOS date.
const DOS_EPOCH_DATE: u16 = (1 << 5) | 1;

/// Why a vfat image could not be made.
#[derive(Debug, thiserror::Error)]
pub enum VfatError {
    /// The label is not 1 to 11 upper-case ASCII letters, digits, `-` or `_`.
    #[error("volume label {label:?} must be 1 to 11 upper-case letters, digits, '-' or '_'")]
    CheckLabel {
        /// The offending label.
        label: String,
    },
    /// The files do not fit in a FAT12 volume.
    #[error("seed files total {bytes} bytes, more than a FAT12 seed image holds")]
    CheckSize {
        /// Total size of the files.
        bytes: u64,
    },
    /// fatfs failed to format the volume.
    #[error("cannot format the FAT volume")]
    Format(#[source] io::Error),
    /// The boot sector does not describe a FAT12/16 layout we can patch.
    #[error("formatted volume has an unexpected boot sector")]
    ReadBootSector,
    /// fatfs failed to mount the fresh volume.
    #[error("cannot open the formatted FAT volume")]
    Mount(#[source] io::Error),
    /// Writing a file into the volume failed.
    #[error("cannot write {name} into the FAT volume")]
    WriteFile {
        /// The file name.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Flushing the volume failed.
    #[error("cannot close the FAT volume")]
    Unmount(#[source] io::Error),
}

/// Every timestamp in the image is the FAT epoch, so the same files give the same bytes.
#[derive(Debug)]
struct FixedTime;

impl TimeProvider for FixedTime {
    fn get_current_date(&self) -> Date {
        Date { year: 1980, month: 1, day: 1 }
    }

    fn get_current_date_time(&self) -> DateTime {
        DateTime {
            date: self.get_current_date(),
            time: Time { hour: 0, min: 0, sec: 0, millis: 0 },
        }
    }
}

static FIXED_TIME: FixedTime = FixedTime;

/// Builds a FAT12 image holding `files` in its root directory.
///
/// `volume_id` is the serial number blkid shows as `UUID`.
pub fn vfat_image(
    files: &[(&str, &[u8])],
    label: &str,
    volume_id: u32,
) -> Result<Vec<u8>, VfatError> {
    let label_bytes = label_field(label)?;
    let size = image_size(files)?;
    let mut image =
        vec![0u8; usize::try_from(size).expect("image size is bounded by MAX_IMAGE_BYTES")];

    let options = FormatVolumeOptions::new()
        .fat_type(FatType::Fat12)
        .volume_label(label_bytes)
        .volume_id(volume_id);
    fatfs::format_volume(Cursor::new(&mut image[..]), options).map_err(VfatError::Format)?;
    write_root_label(&mut image, &label_bytes)?;

    let options = FsOptions::new().time_provider(&FIXED_TIME).update_accessed_date(false);
    let fs = FileSystem::new(Cursor::new(&mut image[..]), options).map_err(VfatError::Mount)?;
    {
        let root = fs.root_dir();
        for (name, contents) in files {
            let write = || -> io::Result<()> {
                let mut file = root.create_file(name)?;
                file.truncate()?;
                file.write_all(contents)?;
                file.flush()
            };
            write().map_err(|source| VfatError::WriteFile { name: (*name).to_owned(), source })?;
        }
    }
    fs.unmount().map_err(VfatError::Unmount)?;
    Ok(image)
}

/// The label padded with spaces to the 11 bytes FAT stores.
fn label_field(label: &str) -> Result<[u8; 11], VfatError> {
    let valid = (1..=11).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        return Err(VfatError::CheckLabel { label: label.to_owned() });
    }
    let mut field = [b' '; 11];
    field[..label.len()].copy_from_slice(label.as_bytes());
    Ok(field)
}

/// Room for the files rounded up to 32 KiB clusters (the largest fatfs picks), plus slack for
/// the FATs and root directory, in whole 64 KiB.
fn image_size(files: &[(&str, &[u8])]) -> Result<u64, VfatError> {
    const CLUSTER: u64 = 32 << 10;
    let bytes: u64 = files.iter().map(|(_, data)| data.len() as u64).sum();
    let clustered: u64 =
        files.iter().map(|(_, data)| (data.len() as u64).div_ceil(CLUSTER) * CLUSTER).sum();
    let wanted = (clustered + (256 << 10)).div_ceil(64 << 10) * (64 << 10);
    if wanted > MAX_IMAGE_BYTES {
        return Err(VfatError::CheckSize { bytes });
    }
    Ok(wanted.max(MIN_IMAGE_BYTES))
}

/// Writes the volume-label entry into the first slot of the FAT12/16 root directory.
fn write_root_label(image: &mut [u8], label: &[u8; 11]) -> Result<(), VfatError> {
    let u16_at = |offset: usize| u16::from_le_bytes([image[offset], image[offset + 1]]);
    let bytes_per_sector = usize::from(u16_at(11));
    let reserved_sectors = usize::from(u16_at(14));
    let fats = usize::from(image[16]);
    let root_entries = u16_at(17);
    let sectors_per_fat = usize::from(u16_at(22));
    if bytes_per_sector == 0 || root_entries == 0 || sectors_per_fat == 0 {
        return Err(VfatError::ReadBootSector);
    }

    let root = (reserved_sectors + fats * sectors_per_fat) * bytes_per_sector;
    let entry = image.get_mut(root..root + 32).ok_or(VfatError::ReadBootSector)?;
    // The slot is either free or already holds the label fatfs wrote; anything else means
    // the layout is not what we expect, and overwriting it would lose a file.
    let free = entry[0] == 0;
    let label_entry = entry[11] & ATTR_VOLUME_ID != 0 && entry[11] != 0x0f;
    if !free && !label_entry {
        return Err(VfatError::ReadBootSector);
    }
    entry.fill(0);
    entry[..11].copy_from_slice(label);
    entry[11] = ATTR_VOLUME_ID;
    // Modification date (offset 24); time (22) stays midnight.
    entry[24..26].copy_from_slice(&DOS_EPOCH_DATE.to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_is_in_boot_sector_and_root_directory() {
        let image = vfat_image(&[("user-data", b"x"), ("meta-data", b"y")], "CIDATA", 7)
            .expect("small image");
        let fs =
            FileSystem::new(Cursor::new(image), FsOptions::new()).expect("fatfs reads it back");
        assert_eq!(fs.volume_label(), "CIDATA");
        let root_label = fs.read_volume_label_from_root_dir().expect("readable");
        assert_eq!(root_label.as_deref(), Some("CIDATA"));
        let names: Vec<String> =
            fs.root_dir().iter().filter_map(Result::ok).map(|e| e.file_name()).collect();
        assert_eq!(names, ["user-data", "meta-data"]);
    }

    #[test]
    fn same_files_give_same_bytes() {
        let files: [(&str, &[u8]); 1] = [("user-data", b"x")];
        let first = vfat_image(&files, "CIDATA", 1).expect("image");
        let second = vfat_image(&files, "CIDATA", 1).expect("image");
        assert!(first == second, "vfat image is not reproducible");
    }

    #[test]
    fn lower_case_label_is_rejected() {
        assert!(matches!(vfat_image(&[], "cidata", 0), Err(VfatError::CheckLabel { .. })));
    }
}
