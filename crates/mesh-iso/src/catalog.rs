//! The catalog: the files and symbolic links found on disk while a tree is described, kept
//! in an unnamed temporary file instead of memory.
//!
//! A tree described from disk can hold millions of entries, while an image can hold at
//! most 65535 directories. So directories stay in memory as tree nodes, and every other
//! disk entry becomes a record here: name, attributes, size or link target. The records of
//! one disk directory, sorted by name, form a *run*, cut into chunks of about 64 KiB that
//! are read back one at a time whenever the writer lists that directory, so memory grows
//! neither with the tree nor with its largest directory.
//!
//! The file is created with [`tempfile::tempfile`] in [`std::env::temp_dir`]: it has no
//! name, so nothing is left behind whatever happens to the process.

use std::fs::File;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::spill::{damaged, Decoder, Encoder};
use crate::tree::Attrs;

/// Record kinds.
const KIND_FILE: u8 = 1;
const KIND_SYMLINK: u8 = 2;

/// Bytes of records after which a run is cut into a new chunk.
pub(crate) const CHUNK: usize = 64 * 1024;

/// The temporary file of records, shared by clones of a tree: chunks are only ever
/// appended, each at a range reserved atomically, so what one clone wrote never changes.
#[derive(Debug)]
pub(crate) struct Catalog {
    file: File,
    end: AtomicU64,
}

/// Where one chunk of a disk directory's records is in the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    offset: u64,
    len: u32,
    /// The chunk continues the run of the chunk before it in its directory's list; the
    /// first chunk of a run does not.
    pub continues: bool,
}

impl Catalog {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Catalog { file: tempfile::tempfile()?, end: AtomicU64::new(0) })
    }

    /// Appends the finished chunk `run`; `continues` says whether it continues the run of
    /// the chunk stored before it for the same directory.
    pub(crate) fn append(&self, run: &RunWriter, continues: bool) -> io::Result<Run> {
        let bytes = run.enc.as_bytes();
        let len = u32::try_from(bytes.len()).map_err(io::Error::other)?;
        let offset = self.end.fetch_add(u64::from(len), Ordering::Relaxed);
        self.file.write_all_at(bytes, offset)?;
        Ok(Run { offset, len, continues })
    }

    /// Reads chunk `run` back.
    pub(crate) fn read(&self, run: Run) -> io::Result<RunReader> {
        let mut buf = vec![0; run.len as usize];
        self.file.read_exact_at(&mut buf, run.offset)?;
        RunReader::new(buf)
    }

    /// The disk directory of the entries of chunk `run`, read from its header alone.
    pub(crate) fn disk_dir(&self, run: Run) -> io::Result<PathBuf> {
        let mut len = [0u8; 2];
        self.file.read_exact_at(&mut len, run.offset)?;
        let len = u16::from_le_bytes(len);
        if u32::from(len) + 2 > run.len {
            return Err(damaged());
        }
        let mut path = vec![0; usize::from(len)];
        self.file.read_exact_at(&mut path, run.offset + 2)?;
        Ok(PathBuf::from(std::ffi::OsString::from_vec(path)))
    }
}

/// Encodes one chunk of the records of a disk directory: a header with the directory's
/// path, then one record per entry, all numbers little-endian.
#[derive(Debug)]
pub(crate) struct RunWriter {
    enc: Encoder,
    records: usize,
}

impl RunWriter {
    pub(crate) fn new(disk_dir: &Path) -> Self {
        let mut enc = Encoder::default();
        enc.bytes(disk_dir.as_os_str().as_bytes());
        RunWriter { enc, records: 0 }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Bytes encoded so far, header included.
    pub(crate) fn len(&self) -> usize {
        self.enc.as_bytes().len()
    }

    pub(crate) fn file(&mut self, name: &str, size: u64, attrs: &Attrs) {
        self.header(KIND_FILE, name, attrs);
        self.enc.u64(size);
    }

    pub(crate) fn symlink(&mut self, name: &str, target: &str, attrs: &Attrs) {
        self.header(KIND_SYMLINK, name, attrs);
        self.enc.str(target);
    }

    /// Names are at most 255 bytes, link targets and disk paths at most 4095 (checked when
    /// the tree is described), so the encoder's 16-bit lengths are enough.
    fn header(&mut self, kind: u8, name: &str, attrs: &Attrs) {
        self.records += 1;
        self.enc.u8(kind);
        self.enc.str(name);
        for v in [attrs.mode, attrs.uid, attrs.gid, attrs.serial] {
            self.enc.u32(v);
        }
        // Disk entries always have a time; `None` is only for entries made in memory.
        self.enc.i64(attrs.mtime.unwrap_or(0));
    }
}

/// What one record describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordKind<'r> {
    File { size: u64 },
    Symlink { target: &'r str },
}

/// One decoded record, borrowing from its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record<'r> {
    pub name: &'r str,
    pub kind: RecordKind<'r>,
    pub attrs: Attrs,
}

/// A chunk read back and checked: its records (the header is skipped).
#[derive(Debug)]
pub(crate) struct RunReader {
    buf: Vec<u8>,
    /// Where each record starts in `buf`.
    records: Vec<u32>,
}

impl RunReader {
    fn new(buf: Vec<u8>) -> io::Result<Self> {
        let mut d = Decoder::new(&buf);
        d.bytes()?;
        let mut records = Vec::new();
        while d.remaining() > 0 {
            records.push((buf.len() - d.remaining()) as u32);
            decode(&mut d)?;
        }
        Ok(RunReader { buf, records })
    }

    /// The number of records.
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// Record `i`, in the order they were written (by name).
    pub(crate) fn record(&self, i: usize) -> Record<'_> {
        let mut d = Decoder::new(&self.buf[self.records[i] as usize..]);
        decode(&mut d).expect("records are checked when the chunk is read")
    }
}

fn decode<'r>(d: &mut Decoder<'r>) -> io::Result<Record<'r>> {
    let kind = d.u8()?;
    let name = d.str()?;
    let (mode, uid, gid, serial) = (d.u32()?, d.u32()?, d.u32()?, d.u32()?);
    let attrs = Attrs { mode, uid, gid, mtime: Some(d.i64()?), serial };
    let kind = match kind {
        KIND_FILE => RecordKind::File { size: d.u64()? },
        KIND_SYMLINK => RecordKind::Symlink { target: d.str()? },
        _ => return Err(damaged()),
    };
    Ok(Record { name, kind, attrs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(serial: u32) -> Attrs {
        Attrs { mode: 0o640, uid: 1000, gid: 100, mtime: Some(-5), serial }
    }

    #[test]
    fn runs_read_back_as_written() {
        let catalog = Catalog::new().expect("temporary file");
        let mut first = RunWriter::new(Path::new("/src/dir"));
        first.file("a.txt", 5_000_000_000, &attrs(2));
        first.symlink("link", "../a.txt", &attrs(3));
        let mut second = RunWriter::new(Path::new("/other"));
        assert!(second.is_empty());
        second.file("données", 0, &attrs(9));

        let one = catalog.append(&first, false).expect("append");
        let two = catalog.append(&second, true).expect("append");
        assert!(two.continues && !one.continues);

        let back = catalog.read(two).expect("read");
        assert_eq!(catalog.disk_dir(two).expect("header"), Path::new("/other"));
        assert_eq!(catalog.disk_dir(one).expect("header"), Path::new("/src/dir"));
        assert_eq!(back.len(), 1);
        assert_eq!(back.record(0).name, "données");

        let back = catalog.read(one).expect("read");
        let records: Vec<Record<'_>> = (0..back.len()).map(|i| back.record(i)).collect();
        assert_eq!(
            records,
            [
                Record {
                    name: "a.txt",
                    kind: RecordKind::File { size: 5_000_000_000 },
                    attrs: attrs(2)
                },
                Record {
                    name: "link",
                    kind: RecordKind::Symlink { target: "../a.txt" },
                    attrs: attrs(3)
                },
            ]
        );
    }

    #[test]
    fn a_damaged_run_is_an_error_when_read_not_a_panic_later() {
        let mut run = RunWriter::new(Path::new("/d"));
        run.file("f", 1, &attrs(1));
        let bytes = run.enc.as_bytes();
        let cut = bytes[..bytes.len() - 3].to_vec();
        let err = RunReader::new(cut).expect_err("truncated record");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let mut bad_name = bytes.to_vec();
        let name_at = bad_name.len() - 8 - 8 - 16 - 1;
        bad_name[name_at] = 0xff;
        assert!(RunReader::new(bad_name).is_err());
    }
}
