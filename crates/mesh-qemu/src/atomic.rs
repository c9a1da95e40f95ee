//! Writing a file whole or not at all: a temporary file beside the target, renamed over it
//! only once complete, and removed again on any error.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Writes `head` to `dest`, extended with zeros to `len` bytes (sparse where the file system
/// allows), then renames it into place; `sync` makes the content durable before the rename.
pub(crate) fn write_file(dest: &Path, head: &[u8], len: u64, sync: bool) -> io::Result<()> {
    let file_name = dest
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".tmp-{}", std::process::id()));
    let temp = dest.with_file_name(temp_name);
    let result = (|| {
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&temp)?;
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
