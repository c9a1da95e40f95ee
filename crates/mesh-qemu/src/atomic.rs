//! Writing a file whole or not at all: a temporary file beside the target, renamed over it
//! only once complete, and removed again on any error.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `head` to `dest`, extended with zeros to `len` bytes (sparse where the file system
/// allows), then renames it into place; `sync` makes the content durable before the rename.
pub(crate) fn write_file(dest: &Path, head: &[u8], len: u64, sync: bool) -> io::Result<()> {
    let file_name = dest
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let (temp, mut file) = create_temp(dest, file_name)?;
    let result = (|| {
        file.write_all(head)?;
        file.set_len(len)?;
        if sync {
            file.sync_all()?;
        }
        fs::rename(&temp, dest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// The serial number of the next temporary file name.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Creates a new temporary sibling of `dest`, unique per process and call. It is created
/// with `O_EXCL`, so a file or symlink someone else put under that name is never opened or
/// written through; the next name is tried instead.
fn create_temp(dest: &Path, file_name: &OsStr) -> io::Result<(PathBuf, File)> {
    let mut tries = 0;
    loop {
        let mut temp_name = OsString::from(".");
        temp_name.push(file_name);
        let serial = NEXT.fetch_add(1, Ordering::Relaxed);
        temp_name.push(format!(".tmp-{}-{serial}", std::process::id()));
        let temp = dest.with_file_name(temp_name);
        match OpenOptions::new().write(true).create_new(true).open(&temp) {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 100 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_put_under_a_temporary_name_is_opened() {
        let dir = tempfile::tempdir().expect("temp dir");
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").expect("victim");
        let next = NEXT.load(Ordering::Relaxed);
        for serial in next..next + 5 {
            let name = format!(".disk.tmp-{}-{serial}", std::process::id());
            std::os::unix::fs::symlink(&victim, dir.path().join(name)).expect("symlink");
        }
        let dest = dir.path().join("disk");
        write_file(&dest, b"head", 4096, false).expect("written");
        assert_eq!(fs::read(&victim).expect("victim"), b"precious");
        let written = fs::read(&dest).expect("dest");
        assert_eq!((&written[..4], written.len()), (&b"head"[..], 4096));
    }
}
