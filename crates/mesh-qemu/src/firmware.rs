//! UEFI firmware images for firmware boot ([`crate::Boot::Firmware`]).
//!
//! QEMU's aarch64 `virt` machine maps two 64 MiB flash banks, and refuses a pflash image of
//! any other size. Debian's AAVMF files are already 64 MiB; other distributions ship the
//! code as a 2 MiB `QEMU_EFI.fd`. Each VM needs its own writable copy of the variable store.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The size of each flash bank of the aarch64 `virt` machine.
pub const AARCH64_FLASH_SIZE: u64 = 64 << 20;

/// Failures while preparing firmware images.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    /// The template is larger than a flash bank.
    #[error("firmware image {path} is {len} bytes, more than a {AARCH64_FLASH_SIZE}-byte bank")]
    TooLarge {
        /// The template.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// Reading the template failed.
    #[error("cannot read firmware image {path}")]
    ReadTemplate {
        /// The template.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing the copy failed.
    #[error("cannot write firmware image {path}")]
    WriteCopy {
        /// The copy.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Copies the variable store `template` (such as `/usr/share/AAVMF/AAVMF_VARS.fd`) to
/// `dest` for one VM, padded with zeros to [`AARCH64_FLASH_SIZE`] (sparsely). An existing
/// `dest` is replaced; the copy is written under a temporary name and renamed.
pub fn prepare_firmware_vars(template: &Path, dest: &Path) -> Result<(), FirmwareError> {
    padded_copy(template, dest)
}

/// Returns firmware code usable as the read-only first bank: `code` itself if it already is
/// [`AARCH64_FLASH_SIZE`] bytes, otherwise a padded copy written once into `dir` (named after
/// the original) and reused while it is up to date.
pub fn firmware_code(code: &Path, dir: &Path) -> Result<PathBuf, FirmwareError> {
    let read_error = |source| FirmwareError::ReadTemplate { path: code.to_owned(), source };
    let meta = fs::metadata(code).map_err(read_error)?;
    if meta.len() == AARCH64_FLASH_SIZE {
        return Ok(code.to_owned());
    }
    let name = code.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let padded = dir.join(format!("{name}.padded-64M"));
    if let Ok(existing) = fs::metadata(&padded) {
        let fresh = match (existing.modified(), meta.modified()) {
            (Ok(copy), Ok(original)) => copy >= original,
            _ => false,
        };
        if fresh && existing.len() == AARCH64_FLASH_SIZE {
            return Ok(padded);
        }
    }
    padded_copy(code, &padded)?;
    Ok(padded)
}

fn padded_copy(template: &Path, dest: &Path) -> Result<(), FirmwareError> {
    let bytes = fs::read(template)
        .map_err(|source| FirmwareError::ReadTemplate { path: template.to_owned(), source })?;
    let len = bytes.len() as u64;
    if len > AARCH64_FLASH_SIZE {
        return Err(FirmwareError::TooLarge { path: template.to_owned(), len });
    }
    crate::atomic::write_file(dest, &bytes, AARCH64_FLASH_SIZE, false)
        .map_err(|source| FirmwareError::WriteCopy { path: dest.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_templates_are_padded_with_zeros_and_large_ones_refused() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let template = dir.path().join("QEMU_EFI.fd");
        fs::write(&template, [0xa5u8; 4096]).expect("write template");

        let code = firmware_code(&template, dir.path()).expect("padded code");
        assert_ne!(code, template);
        let bytes = fs::read(&code).expect("read copy");
        assert_eq!(bytes.len() as u64, AARCH64_FLASH_SIZE);
        assert!(bytes[..4096].iter().all(|&b| b == 0xa5));
        assert!(bytes[4096..].iter().all(|&b| b == 0));
        assert_eq!(firmware_code(&template, dir.path()).expect("reused"), code);
        assert_eq!(firmware_code(&code, dir.path()).expect("already 64 MiB"), code);

        let vars = dir.path().join("vm/VARS.fd");
        prepare_firmware_vars(&template, &vars).expect("vars");
        assert_eq!(fs::metadata(&vars).expect("vars").len(), AARCH64_FLASH_SIZE);

        let big = dir.path().join("big.fd");
        fs::File::create(&big).and_then(|f| f.set_len(AARCH64_FLASH_SIZE + 1)).expect("big");
        assert!(matches!(prepare_firmware_vars(&big, &vars), Err(FirmwareError::TooLarge { .. })));
    }
}
