//! Laying out and writing the image.
//!
//! The writer plans everything before the first byte goes out: the primary hierarchy
//! (8.3 names, Rock Ridge entries, relocation of directories deeper than eight levels), the
//! Joliet hierarchy, and the position of every directory, continuation area and file. Sizes
//! do not depend on positions, so directory extents are encoded once to measure them and
//! again, with the final positions, to write them. The image is then written strictly in
//! order, which is why a plain [`Write`] is enough: no seeking back.
//!
//! Nothing is kept in memory per entry. The plan holds one record per directory (its place
//! in both hierarchies, its 8.3 name, where its extent and its files' contents start).
//! Each directory is listed twice while the primary hierarchy is built: once to find its
//! subdirectories and natural 8.3 names, once to give every entry its final name. Its
//! entries are then sorted by identifier, each file placed (files are laid out directory
//! by directory in identifier order, so a file's block follows from its directory's first
//! block and the sizes of the files before it), sorted again by Joliet identifier, and
//! both orders are kept in a log ([`crate::spill::Log`]) that every later pass (measuring,
//! writing the directories, writing the files) streams. Every sort holds a bounded amount
//! in memory and continues on a temporary file beyond it ([`crate::spill::Sorter`]), so a
//! directory of any size is written in bounded memory. Extents go out a sector at a time,
//! and continuation areas move to a temporary file once past 1 MiB.
//!
//! Image order: system area (16 zero sectors), primary and Joliet volume descriptors,
//! terminator, path tables, primary directories, Rock Ridge continuation areas, Joliet
//! directories, file data.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::names::{joliet_name_into, primary_natural, NameError, PrimaryName, PrimaryNamer};
use crate::raw::{
    self, DirRecord, VolumeFields, VolumeKind, FLAG_DIRECTORY, FLAG_MULTI_EXTENT, MAX_EXTENT,
    SECTOR,
};
use crate::spill::{self, Decoder, Encoder, Log, LogRecords, Sorter, Span, Spill};
use crate::susp::{self, ContinuationAreas, S_IFDIR, S_IFLNK, S_IFREG};
use crate::tree::{
    join, Attrs, Entry, EntryKind, FileData, FileSource, IsoTree, Listing, NodeId, NodeKind,
    MAX_DIRECTORIES, ROOT,
};

/// Deepest directory level ISO 9660 allows (the root is level 1).
const MAX_LEVEL: u32 = 8;
/// Longest volume identifier of the primary volume descriptor, in bytes.
const MAX_LABEL: usize = 32;
/// Longest Joliet volume identifier, in UCS-2 characters.
const MAX_JOLIET_LABEL: usize = 16;
/// Rock Ridge name of the directory holding relocated deep directories.
const RR_MOVED: &str = "rr_moved";

/// Options of an image.
///
/// # Examples
///
/// ```
/// let mut opts = mesh_iso::IsoOptions::new("cidata");
/// opts.timestamp = Some(1_700_000_000); // reproducible bytes
/// assert!(opts.rock_ridge && opts.joliet);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoOptions {
    /// Volume label, recorded exactly as given in the primary volume descriptor (up to 32
    /// printable ASCII characters; lowercase is kept) and in the Joliet descriptor (its
    /// first 16 characters, as much as Joliet holds).
    pub volume_id: String,
    /// `Some(unix seconds)`: the volume dates and every recorded file and directory time
    /// are this instant, so identical input gives identical bytes (like
    /// `SOURCE_DATE_EPOCH`). `None`: volume dates are the time of writing and file times
    /// come from the tree.
    pub timestamp: Option<i64>,
    /// Record Rock Ridge entries (full names, modes, owners, symbolic links, times).
    pub rock_ridge: bool,
    /// Write a Joliet supplementary volume (UCS-2 names up to 64 characters).
    pub joliet: bool,
}

impl IsoOptions {
    /// Options with Rock Ridge and Joliet on and no fixed timestamp.
    pub fn new(volume_id: impl Into<String>) -> Self {
        IsoOptions { volume_id: volume_id.into(), timestamp: None, rock_ridge: true, joliet: true }
    }
}

/// Errors raised while writing an image.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The volume label cannot be recorded exactly.
    #[error("volume label {label:?} is invalid: {reason}")]
    CheckLabel {
        /// The label as given.
        label: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A symbolic link cannot be recorded because Rock Ridge is off.
    #[error("symbolic link {path:?} needs Rock Ridge, which is off")]
    RecordSymlink {
        /// Image path of the link.
        path: String,
    },
    /// A directory is deeper than ISO 9660 allows and Rock Ridge (needed to relocate it)
    /// is off.
    #[error(
        "directory {path:?} is deeper than 8 levels and Rock Ridge, needed to relocate it, is off"
    )]
    RelocateDirectory {
        /// Image path of the first too-deep directory.
        path: String,
    },
    /// The tree is deep enough to need `rr_moved` for relocated directories, and already
    /// has an entry of that name at its root.
    #[error("{path:?} is needed for relocated deep directories but already exists")]
    ReserveRelocationDir {
        /// The reserved image path.
        path: String,
    },
    /// Two names of one directory map to the same Joliet name.
    #[error("{first:?} and {second:?} have the same Joliet name")]
    MapJolietName {
        /// Image path of the first entry.
        first: String,
        /// Image path of the second entry.
        second: String,
    },
    /// A path table can number at most 65535 directories.
    #[error("the tree has {count} directories; ISO 9660 path tables hold at most 65535")]
    NumberDirectories {
        /// How many directories the tree has.
        count: usize,
    },
    /// The image would exceed 2^32 sectors (8 TiB).
    #[error("the image would need {sectors} sectors; ISO 9660 addresses at most 2^32")]
    AddressSectors {
        /// Sectors needed.
        sectors: u64,
    },
    /// A source file could not be opened.
    #[error("cannot open {path}")]
    OpenFile {
        /// The disk path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A source file changed size between describing the tree and writing it.
    #[error(
        "{path} changed size while the image was written: expected {expected} bytes, found {found}"
    )]
    CheckFileSize {
        /// The disk path.
        path: PathBuf,
        /// Size recorded in the tree.
        expected: u64,
        /// Size found.
        found: u64,
    },
    /// Copying a source file into the image failed (reading it or writing the output).
    #[error("cannot copy {path} into the image")]
    CopyFile {
        /// The disk path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Sorting the entries of a directory (in a temporary file, for a large one) failed.
    #[error("cannot sort the entries of directory {path:?}")]
    SortEntries {
        /// Image path of the directory.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// More entries of one directory share an 8.3 name than the suffixes `_1` to
    /// `_9999999` can tell apart.
    #[error("cannot give every entry of directory {path:?} its own 8.3 name: too many collide")]
    MapPrimaryName {
        /// Image path of the directory.
        path: String,
    },
    /// Keeping the entries of directories, prepared for writing, in a temporary file (or
    /// reading them back) failed.
    #[error("cannot keep prepared directory entries in a temporary file")]
    KeepEntries {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading the recorded entries of directories described from disk back from their
    /// temporary file failed.
    #[error("cannot read recorded entries back from the temporary file")]
    ReadCatalog {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Keeping Rock Ridge continuation areas in a temporary file until they are written
    /// failed.
    #[error("cannot keep continuation areas in a temporary file")]
    SpillContinuationAreas {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing image metadata to the output failed.
    #[error("cannot write the image")]
    WriteImage {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Creating the temporary file next to the output failed.
    #[error("cannot create temporary file {path}")]
    CreateTemp {
        /// The temporary path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Flushing the temporary file to disk failed.
    #[error("cannot sync {path}")]
    SyncTemp {
        /// The temporary path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The output path is a directory, or a device or FIFO that cannot be opened or written.
    #[error("cannot write the image to {path}")]
    WriteOutput {
        /// The output path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Renaming the temporary file onto the output failed.
    #[error("cannot rename {from} to {to}")]
    RenameTemp {
        /// The temporary path.
        from: PathBuf,
        /// The output path.
        to: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Writes the image of `tree` to `out` and returns the number of bytes written.
///
/// The image is written front to back in one pass, so `out` needs no `Seek`; file
/// contents are streamed from disk, one file at a time (with `copy_file_range` when `out`
/// is a [`File`]). On error, `out` holds a partial image; [`write_iso_file`] cleans up.
///
/// # Examples
///
/// ```
/// let mut tree = mesh_iso::IsoTree::new();
/// tree.add_file_bytes("meta-data", b"instance-id: a\n".to_vec(), 0o644)?;
/// let mut image = Vec::new();
/// let len = mesh_iso::write_iso(&tree, &mesh_iso::IsoOptions::new("cidata"), &mut image)?;
/// assert_eq!(len, image.len() as u64);
/// assert_eq!(&image[32769..32774], b"CD001");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_iso<W: Write>(tree: &IsoTree, opts: &IsoOptions, out: W) -> Result<u64, WriteError> {
    write_iso_with(tree, opts, out, &mut |_| {})
}

/// [`write_iso`], calling `progress` with the bytes written so far after each file's
/// contents.
fn write_iso_with<W: Write>(
    tree: &IsoTree,
    opts: &IsoOptions,
    mut out: W,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, WriteError> {
    check_label(&opts.volume_id)?;
    let mut plan = Plan::new(tree, opts)?;
    plan.lay_out()?;
    tracing::debug!(
        directories = plan.pdirs.len(),
        files = plan.files(),
        sectors = plan.total_sectors,
        "writing ISO image"
    );
    plan.emit(&mut out, progress)
}

/// Writes the image of `tree` to the file `out`, atomically: the image goes to a temporary
/// file in the same directory, is synced, then renamed onto `out`. On error nothing is
/// left at `out` (an existing file there is untouched) and the temporary file is removed.
/// Where the filesystem allows, the temporary file has no name until it is complete, so a
/// process killed while writing leaves nothing either.
///
/// A symbolic link at `out` is written through (the file it names is replaced, the link
/// stays). A device or FIFO at `out` (a disk, `/dev/stdout`) is written into, not replaced.
/// A directory is refused.
pub fn write_iso_file(tree: &IsoTree, opts: &IsoOptions, out: &Path) -> Result<(), WriteError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let output_failed = |source| WriteError::WriteOutput { path: out.to_owned(), source };
    let resolved = follow_symlinks(out).map_err(output_failed)?;
    let out = resolved.as_path();
    let output_failed = |source| WriteError::WriteOutput { path: out.to_owned(), source };
    match fs::metadata(out) {
        Ok(m) if m.is_dir() => {
            return Err(output_failed(io::Error::new(
                io::ErrorKind::IsADirectory,
                "it is a directory",
            )))
        }
        Ok(m) if !m.is_file() => {
            let device = OpenOptions::new().write(true).open(out).map_err(output_failed)?;
            write_iso_with(tree, opts, io::BufWriter::with_capacity(1 << 20, device), &mut |_| {})?;
            return Ok(());
        }
        _ => {}
    }
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp_name = || {
        dir.join(format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ))
    };
    let mut tmp = temp_name();

    // An unnamed file where the filesystem has them (O_TMPFILE): a process killed while
    // writing leaves nothing behind, since the image gets a name only once it is complete.
    // Elsewhere a named temporary file, removed on every way out but a kill.
    let unnamed =
        OpenOptions::new().write(true).mode(0o644).custom_flags(libc::O_TMPFILE).open(dir);
    let (mut file, named) = match unnamed {
        Ok(file) => (file, false),
        Err(e)
            if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) =>
        {
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&tmp)
                .map_err(|source| WriteError::CreateTemp { path: tmp.clone(), source })?;
            (file, true)
        }
        Err(source) => return Err(WriteError::CreateTemp { path: dir.to_owned(), source }),
    };
    // Removes the named temporary file on every way out, panics included, until disarmed.
    let mut guard = TempGuard { path: named.then_some(tmp.clone()) };

    // The image must be on disk before the rename; asking for the write-back of what is
    // written as it grows lets the disk work while the rest is copied, instead of all of
    // it waiting for the final sync.
    let fd = file.as_raw_fd();
    let mut started = 0u64;
    let mut write_back = |written: u64| {
        if written - started >= WRITE_BACK_STEP {
            // SAFETY: `fd` is the temporary file, open for the whole write; the call only
            // starts write-back of a range of it. Its result is ignored: it is a hint, and
            // `sync_all` below reports any write error.
            unsafe {
                libc::sync_file_range(
                    fd,
                    started as libc::off64_t,
                    (written - started) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            started = written;
        }
    };
    write_iso_with(tree, opts, &mut file, &mut write_back)?;
    file.sync_all().map_err(|source| WriteError::SyncTemp { path: tmp.clone(), source })?;
    if !named {
        let mut tries = 0;
        loop {
            match link_unnamed(&file, &tmp) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 100 => {
                    tries += 1;
                    tmp = temp_name();
                }
                Err(source) => return Err(WriteError::CreateTemp { path: tmp.clone(), source }),
            }
        }
        guard.path = Some(tmp.clone());
    }
    drop(file);
    fs::rename(&tmp, out).map_err(|source| WriteError::RenameTemp {
        from: tmp.clone(),
        to: out.to_owned(),
        source,
    })?;
    guard.path = None;

    if let Ok(d) = File::open(dir) {
        // Makes the rename itself durable; the image is complete either way.
        let _ = d.sync_all();
    }
    Ok(())
}

/// The path a symbolic link at `path` leads to (`path` itself if it is none), followed link by
/// link as `open` would: a link to a missing file leads to that file's path, and a loop is an
/// error.
pub fn follow_symlinks(path: &Path) -> io::Result<PathBuf> {
    let mut path = path.to_owned();
    for _ in 0..40 {
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(&path)?;
                path = match path.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            _ => return Ok(path),
        }
    }
    Err(io::Error::other("too many levels of symbolic links"))
}

/// Bytes of image after which [`write_iso_file`] starts their write-back.
const WRITE_BACK_STEP: u64 = 8 << 20;

/// Gives the unnamed file `file` (opened with `O_TMPFILE`) the name `path`, which must not
/// exist yet (`AlreadyExists` otherwise: a name is never taken over).
fn link_unnamed(file: &File, path: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let by_proc = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|_| io::Error::other("descriptor path"))?;
    let target = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))?;
    // SAFETY: both strings are NUL-terminated and live for the call; linkat only reads them.
    let linked = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            by_proc.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if linked == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::ENOENT) {
        return Err(error);
    }
    // No /proc: link the descriptor itself (allowed to privileged processes only).
    // SAFETY: as above; the empty path with AT_EMPTY_PATH names `file`'s descriptor.
    let linked = unsafe {
        libc::linkat(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    if linked == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Deletes a temporary file when dropped, unless `path` was cleared.
struct TempGuard {
    path: Option<PathBuf>,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            // Best effort: the error being propagated is what the caller needs to see.
            let _ = fs::remove_file(path);
        }
    }
}

fn check_label(label: &str) -> Result<(), WriteError> {
    let bad = |reason| Err(WriteError::CheckLabel { label: label.to_owned(), reason });
    if label.len() > MAX_LABEL {
        return bad("longer than 32 bytes");
    }
    if !label.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return bad("only printable ASCII can be recorded exactly");
    }
    // FIXME: a label of 17..=32 characters is cut to MAX_JOLIET_LABEL in the Joliet
    // descriptor; blkid merges both back, other Joliet readers show the cut label. Matters
    // only for long labels, which vm-mesh does not use.
    Ok(())
}

/// A directory of the primary hierarchy. Its entries are not kept in memory: they are
/// prepared once, in identifier order, into the plan's [`Log`], and read back from there
/// by every later pass.
#[derive(Debug)]
struct PDir {
    /// `None` for `rr_moved`.
    node: Option<NodeId>,
    level: u32,
    /// Index of the directory that physically holds this one (itself for the root).
    parent: usize,
    /// For relocated directories, the directory it logically belongs in (PL).
    logical_parent: Option<usize>,
    /// Its 8.3 name in its physical parent; `None` for the root.
    name: Option<PrimaryName>,
    /// Regular files directly inside.
    files: u64,
    /// Sectors of their contents, each file rounded up to whole sectors.
    data_sectors: u64,
    /// First block of the contents of its files, which are laid out in identifier order.
    data_lba: u32,
    lba: u32,
    size: u32,
    /// Its children in identifier order ([`Prepared`] records).
    entries: Span,
    /// Its children in Joliet order ([`JolietEntry`] records), for tree directories when
    /// the image has a Joliet volume.
    joliet: Span,
}

impl PDir {
    fn new(node: Option<NodeId>, level: u32, parent: usize) -> Self {
        PDir {
            node,
            level,
            parent,
            logical_parent: None,
            name: None,
            files: 0,
            data_sectors: 0,
            data_lba: 0,
            lba: 0,
            size: 0,
            entries: Span::default(),
            joliet: Span::default(),
        }
    }

    /// The identifier recorded in path tables.
    fn ident(&self) -> Vec<u8> {
        self.name.map_or_else(|| vec![0], |n| n.identifier())
    }
}

/// A child of a primary directory as every pass after naming needs it: its 8.3 name, its
/// POSIX name (recorded in NM) and what it is. Sorted by identifier.
#[derive(Debug, Clone)]
struct Prepared {
    ident: PrimaryName,
    /// Position in its directory's listing, by name (for `rr_moved`, in the order the
    /// relocated directories were found).
    index: u32,
    name: String,
    kind: PKind,
    /// For files and symbolic links; directories take theirs from their node.
    attrs: Attrs,
}

/// What a child of a primary directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PKind {
    /// A subdirectory at its natural place or, inside `rr_moved`, a relocated one (RE).
    Dir(NodeId),
    /// The empty file standing for a relocated directory at its logical place (CL).
    Placeholder(NodeId),
    /// `rr_moved`, in the root.
    RrMoved,
    /// A regular file whose contents start `rel` blocks after its directory's first data
    /// block.
    File {
        size: u64,
        rel: u64,
        source: FileSource,
    },
    Symlink {
        target: String,
    },
}

/// A child of a Joliet directory: a directory, or a file placed by the primary layout.
/// Sorted by identifier, then by index in name order (which only matters for two entries
/// with the same identifier, an error).
#[derive(Debug, Clone)]
struct JolietEntry {
    /// UCS-2 big-endian bytes, which sort like the identifiers.
    ident: Vec<u8>,
    index: u32,
    /// The POSIX name, to report a collision.
    name: String,
    kind: JKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum JKind {
    Dir(NodeId),
    File { size: u64, rel: u64, mtime: Option<i64> },
}

impl PartialEq for Prepared {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Prepared {}

impl PartialOrd for Prepared {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Prepared {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Identifiers are unique once named; the index keeps the order total regardless.
        (self.ident, self.index).cmp(&(other.ident, other.index))
    }
}

impl PartialEq for JolietEntry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for JolietEntry {}

impl PartialOrd for JolietEntry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for JolietEntry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.ident, self.index).cmp(&(&other.ident, other.index))
    }
}

fn encode_attrs(a: &Attrs, e: &mut Encoder) {
    for v in [a.mode, a.uid, a.gid, a.serial] {
        e.u32(v);
    }
    encode_time(a.mtime, e);
}

fn decode_attrs(d: &mut Decoder<'_>) -> io::Result<Attrs> {
    let (mode, uid, gid, serial) = (d.u32()?, d.u32()?, d.u32()?, d.u32()?);
    Ok(Attrs { mode, uid, gid, serial, mtime: decode_time(d)? })
}

fn encode_time(t: Option<i64>, e: &mut Encoder) {
    e.u8(u8::from(t.is_some()));
    e.i64(t.unwrap_or(0));
}

fn decode_time(d: &mut Decoder<'_>) -> io::Result<Option<i64>> {
    let some = d.u8()? != 0;
    let t = d.i64()?;
    Ok(some.then_some(t))
}

fn decode_node(d: &mut Decoder<'_>) -> io::Result<NodeId> {
    usize::try_from(d.u64()?).map_err(|_| spill::damaged())
}

impl Spill for Prepared {
    fn heap_size(&self) -> usize {
        let target = match &self.kind {
            PKind::Symlink { target } => target.capacity(),
            _ => 0,
        };
        self.name.capacity() + target
    }

    fn encode(&self, e: &mut Encoder) {
        self.ident.encode(e);
        e.u32(self.index);
        e.str(&self.name);
        encode_attrs(&self.attrs, e);
        match &self.kind {
            PKind::Dir(n) => {
                e.u8(0);
                e.u64(*n as u64);
            }
            PKind::Placeholder(n) => {
                e.u8(1);
                e.u64(*n as u64);
            }
            PKind::RrMoved => e.u8(2),
            PKind::File { size, rel, source } => {
                e.u8(3);
                e.u64(*size);
                e.u64(*rel);
                match source {
                    FileSource::Node(n) => {
                        e.u8(0);
                        e.u64(*n as u64);
                    }
                    FileSource::Disk(run) => {
                        e.u8(1);
                        e.u64(u64::from(*run));
                    }
                }
            }
            PKind::Symlink { target } => {
                e.u8(4);
                e.str(target);
            }
        }
    }

    fn decode(d: &mut Decoder<'_>) -> io::Result<Self> {
        let ident = PrimaryName::decode(d)?;
        let index = d.u32()?;
        let name = d.string()?;
        let attrs = decode_attrs(d)?;
        let kind = match d.u8()? {
            0 => PKind::Dir(decode_node(d)?),
            1 => PKind::Placeholder(decode_node(d)?),
            2 => PKind::RrMoved,
            3 => {
                let (size, rel) = (d.u64()?, d.u64()?);
                let source = match d.u8()? {
                    0 => FileSource::Node(decode_node(d)?),
                    1 => FileSource::Disk(u32::try_from(d.u64()?).map_err(|_| spill::damaged())?),
                    _ => return Err(spill::damaged()),
                };
                PKind::File { size, rel, source }
            }
            4 => PKind::Symlink { target: d.string()? },
            _ => return Err(spill::damaged()),
        };
        Ok(Prepared { ident, index, name, kind, attrs })
    }
}

impl Spill for JolietEntry {
    fn heap_size(&self) -> usize {
        self.ident.capacity() + self.name.capacity()
    }

    fn encode(&self, e: &mut Encoder) {
        e.bytes(&self.ident);
        e.u32(self.index);
        e.str(&self.name);
        match self.kind {
            JKind::Dir(n) => {
                e.u8(0);
                e.u64(n as u64);
            }
            JKind::File { size, rel, mtime } => {
                e.u8(1);
                e.u64(size);
                e.u64(rel);
                encode_time(mtime, e);
            }
        }
    }

    fn decode(d: &mut Decoder<'_>) -> io::Result<Self> {
        let ident = d.bytes()?.to_vec();
        let index = d.u32()?;
        let name = d.string()?;
        let kind = match d.u8()? {
            0 => JKind::Dir(decode_node(d)?),
            1 => JKind::File { size: d.u64()?, rel: d.u64()?, mtime: decode_time(d)? },
            _ => return Err(spill::damaged()),
        };
        Ok(JolietEntry { ident, index, name, kind })
    }
}

/// A directory of the Joliet hierarchy.
#[derive(Debug)]
struct JDir {
    node: NodeId,
    parent: usize,
    ident: Box<[u8]>,
    lba: u32,
    size: u32,
}

/// Marks a node that has no directory in a hierarchy.
const NONE: usize = usize::MAX;

/// Everything about one image, from hierarchy to block addresses; per directory, never per
/// entry, so its size is bounded by the number of directories. Entries are prepared once
/// into `log`, which moves to a temporary file once it is large.
struct Plan<'a> {
    tree: &'a IsoTree,
    opts: &'a IsoOptions,
    volume_time: i64,
    pdirs: Vec<PDir>,
    /// The primary directory of each directory node.
    pdir_of: Vec<usize>,
    /// `rr_moved`, if any directory is relocated.
    rr_moved: Option<usize>,
    /// The directories inside `rr_moved`, by POSIX name, in the order they were found.
    relocated: Vec<(String, usize)>,
    jdirs: Vec<JDir>,
    /// The Joliet directory of each directory node.
    jdir_of: Vec<usize>,
    /// The prepared entries of every directory.
    log: Log,
    /// Directories with two entries of the same Joliet name: the first such pair in name
    /// order, reported in Joliet path table order once the whole tree has been seen.
    joliet_collisions: Vec<(NodeId, String, String)>,
    path_table: [u32; 4],
    path_table_size: u32,
    joliet_path_table_size: u32,
    ce_lba: u32,
    total_sectors: u32,
}

impl<'a> Plan<'a> {
    fn new(tree: &'a IsoTree, opts: &'a IsoOptions) -> Result<Self, WriteError> {
        let volume_time = opts.timestamp.unwrap_or_else(|| {
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
        });
        let mut plan = Plan {
            tree,
            opts,
            volume_time,
            pdirs: Vec::new(),
            pdir_of: vec![NONE; tree.nodes.len()],
            rr_moved: None,
            relocated: Vec::new(),
            jdirs: Vec::new(),
            jdir_of: vec![NONE; tree.nodes.len()],
            log: Log::default(),
            joliet_collisions: Vec::new(),
            path_table: [0; 4],
            path_table_size: 0,
            joliet_path_table_size: 0,
            ce_lba: 0,
            total_sectors: 0,
        };
        plan.build_primary()?;
        if opts.joliet {
            plan.build_joliet()?;
        }
        Ok(plan)
    }

    fn files(&self) -> u64 {
        self.pdirs.iter().map(|d| d.files).sum()
    }

    fn listing(&self, node: NodeId) -> Result<Listing<'a>, WriteError> {
        self.tree.listing(node).map_err(|source| WriteError::ReadCatalog { source })
    }

    /// The image path of primary directory `p`, for error messages.
    fn dir_path(&self, p: usize) -> String {
        self.pdirs[p].node.map_or_else(|| RR_MOVED.to_owned(), |n| self.tree.path_of(n))
    }

    fn sort_error(&self, p: usize) -> impl Fn(io::Error) -> WriteError + '_ {
        move |source| WriteError::SortEntries { path: self.dir_path(p), source }
    }

    /// The prepared entries of primary directory `p`, in identifier order.
    fn entries(&self, p: usize) -> LogRecords<'_, Prepared> {
        self.log.read(self.pdirs[p].entries)
    }

    /// Builds the primary hierarchy, relocating directories deeper than eight levels into
    /// `rr_moved`, names every directory and numbers them in path table order; prepares
    /// every directory's entries on the way.
    fn build_primary(&mut self) -> Result<(), WriteError> {
        let rock_ridge = self.opts.rock_ridge;
        self.pdirs.push(PDir::new(Some(ROOT), 1, 0));
        // Per directory, its physical subdirectories in identifier order.
        let mut subdirs: Vec<Vec<u32>> = Vec::new();
        self.pdir_of[ROOT] = 0;
        let mut root = None;
        let mut pending = vec![0usize];

        while let Some(d) = pending.pop() {
            let node = self.pdirs[d].node.expect("only tree directories are queued");
            let mut namer = PrimaryNamer::new(self.tree.sort_memory());
            let mut listing = self.listing(node)?;
            let mut index = 0u32;
            let mut has_rr_moved = false;
            while let Some(entry) =
                listing.next().map_err(|source| WriteError::ReadCatalog { source })?
            {
                let path = || join(&self.tree.path_of(node), &entry.name);
                // Whether the entry is a directory at this place, which its 8.3 name shows.
                let is_dir_here = match entry.kind {
                    EntryKind::Dir(child) if self.pdirs[d].level < MAX_LEVEL => {
                        let level = self.pdirs[d].level + 1;
                        self.pdirs.push(PDir::new(Some(child), level, d));
                        let x = self.pdirs.len() - 1;
                        self.pdir_of[child] = x;
                        pending.push(x);
                        true
                    }
                    EntryKind::Dir(child) if rock_ridge => {
                        let moved = match self.rr_moved {
                            Some(moved) => moved,
                            None => {
                                self.pdirs.push(PDir::new(None, 2, 0));
                                *self.rr_moved.insert(self.pdirs.len() - 1)
                            }
                        };
                        let mut relocated = PDir::new(Some(child), 3, moved);
                        relocated.logical_parent = Some(d);
                        self.pdirs.push(relocated);
                        let r = self.pdirs.len() - 1;
                        self.pdir_of[child] = r;
                        pending.push(r);
                        self.relocated.push((entry.name.clone(), r));
                        false
                    }
                    EntryKind::Dir(_) => {
                        return Err(WriteError::RelocateDirectory { path: path() })
                    }
                    EntryKind::File { size, .. } => {
                        self.pdirs[d].files += 1;
                        self.pdirs[d].data_sectors += size.div_ceil(SECTOR as u64);
                        false
                    }
                    EntryKind::Symlink { .. } if rock_ridge => false,
                    EntryKind::Symlink { .. } => {
                        return Err(WriteError::RecordSymlink { path: path() })
                    }
                };
                has_rr_moved |= entry.name == RR_MOVED;
                let natural = primary_natural(&entry.name, is_dir_here);
                namer.push(index, natural).map_err(self.sort_error(d))?;
                index += 1;
            }
            if d == 0 {
                // Prepared last: `rr_moved` joins the root once the whole tree has been seen.
                root = Some((namer, index, has_rr_moved));
            } else {
                self.prepare(d, namer, &mut subdirs)?;
            }
        }

        let (mut root_namer, root_entries, has_rr_moved) = root.expect("the root is listed first");
        if let Some(moved) = self.rr_moved {
            if has_rr_moved {
                // FIXME: pick another name when the tree already has `rr_moved` at its
                // root; only matters for trees that are both deep and contain that name.
                return Err(WriteError::ReserveRelocationDir { path: RR_MOVED.to_owned() });
            }
            let natural = primary_natural(RR_MOVED, true);
            root_namer.push(root_entries, natural).map_err(self.sort_error(0))?;
            let mut namer = PrimaryNamer::new(self.tree.sort_memory());
            for (i, (name, _)) in self.relocated.iter().enumerate() {
                namer
                    .push(i as u32, primary_natural(name, true))
                    .map_err(self.sort_error(moved))?;
            }
            self.prepare(moved, namer, &mut subdirs)?;
        }
        self.prepare(0, root_namer, &mut subdirs)?;
        self.log.seal().map_err(|source| WriteError::KeepEntries { source })?;

        // Path table order: breadth first, children in identifier order.
        let mut order = vec![0usize];
        let mut i = 0;
        while i < order.len() {
            let below = subdirs.get_mut(order[i]).map(std::mem::take).unwrap_or_default();
            order.extend(below.into_iter().map(|x| x as usize));
            i += 1;
        }
        if order.len() > MAX_DIRECTORIES {
            return Err(WriteError::NumberDirectories { count: order.len() });
        }
        let mut new_index = vec![0usize; self.pdirs.len()];
        for (new, &old) in order.iter().enumerate() {
            new_index[old] = new;
        }
        drop(order);
        for dir in &mut self.pdirs {
            dir.parent = new_index[dir.parent];
            dir.logical_parent = dir.logical_parent.map(|p| new_index[p]);
        }
        for p in self.pdir_of.iter_mut().filter(|p| **p != NONE) {
            *p = new_index[*p];
        }
        for (_, r) in &mut self.relocated {
            *r = new_index[*r];
        }
        self.rr_moved = self.rr_moved.map(|m| new_index[m]);
        // Moves each directory to its number in place, one cycle of the permutation at a
        // time, rather than into a second vector.
        for i in 0..self.pdirs.len() {
            while new_index[i] != i {
                let j = new_index[i];
                self.pdirs.swap(i, j);
                new_index.swap(i, j);
            }
        }
        Ok(())
    }

    /// Prepares the entries of primary directory `p`, whose natural 8.3 names `namer` has:
    /// names them, sorts them by identifier, places its files, and sorts its Joliet
    /// entries, each into the log; names its subdirectories, adding them to `subdirs[p]`
    /// in identifier order.
    fn prepare(
        &mut self,
        p: usize,
        namer: PrimaryNamer,
        subdirs: &mut Vec<Vec<u32>>,
    ) -> Result<(), WriteError> {
        let limit = self.tree.sort_memory();
        let mut renames = namer.finish().map_err(|e| match e {
            NameError::Sort(source) => self.sort_error(p)(source),
            NameError::Exhausted => WriteError::MapPrimaryName { path: self.dir_path(p) },
        })?;

        // The directory listed again, in the same order, now with final names.
        let mut by_ident = Sorter::new(limit);
        let mut index = 0u32;
        let mut add = |plan: &Self, entry: Entry| -> Result<(), WriteError> {
            let rename = renames.name_of(index).map_err(plan.sort_error(p))?;
            by_ident.push(plan.prepared(p, index, entry, rename)).map_err(plan.sort_error(p))?;
            index += 1;
            Ok(())
        };
        match self.pdirs[p].node {
            Some(node) => {
                let mut listing = self.listing(node)?;
                while let Some(entry) =
                    listing.next().map_err(|source| WriteError::ReadCatalog { source })?
                {
                    add(self, entry)?;
                }
            }
            None => {
                for (name, r) in &self.relocated {
                    let node = self.pdirs[*r].node.expect("only tree dirs are relocated");
                    let attrs = self.tree.nodes[node].attrs;
                    add(self, Entry { name: name.clone(), kind: EntryKind::Dir(node), attrs })?;
                }
            }
        }
        if p == 0 && self.rr_moved.is_some() {
            let ident = renames
                .name_of(index)
                .map_err(self.sort_error(p))?
                .unwrap_or_else(|| primary_natural(RR_MOVED, true));
            let attrs = self.tree.nodes[ROOT].attrs;
            let name = RR_MOVED.to_owned();
            let moved = Prepared { ident, index, name, kind: PKind::RrMoved, attrs };
            by_ident.push(moved).map_err(self.sort_error(p))?;
        }
        drop(renames);

        let mut by_ident = by_ident.finish().map_err(self.sort_error(p))?;
        let joliet = self.opts.joliet && self.pdirs[p].node.is_some();
        let mut by_joliet = joliet.then(|| Sorter::new(limit));
        if subdirs.len() < self.pdirs.len() {
            subdirs.resize_with(self.pdirs.len(), Vec::new);
        }
        let keep = |source| WriteError::KeepEntries { source };
        let start = self.log.len();
        let mut rel = 0u64;
        while let Some(mut entry) = by_ident.next().map_err(self.sort_error(p))? {
            match &mut entry.kind {
                PKind::Dir(child) => {
                    let x = self.pdir_of[*child];
                    self.pdirs[x].name = Some(entry.ident);
                    subdirs[p].push(x as u32);
                }
                PKind::RrMoved => {
                    let x = self.rr_moved.expect("listed only with rr_moved");
                    self.pdirs[x].name = Some(entry.ident);
                    subdirs[p].push(x as u32);
                }
                PKind::File { size, rel: at, .. } => {
                    *at = rel;
                    rel += size.div_ceil(SECTOR as u64);
                }
                PKind::Placeholder(_) | PKind::Symlink { .. } => {}
            }
            if let Some(by_joliet) = &mut by_joliet {
                let kind = match entry.kind {
                    PKind::Dir(child) | PKind::Placeholder(child) => Some(JKind::Dir(child)),
                    PKind::File { size, rel, .. } => {
                        Some(JKind::File { size, rel, mtime: entry.attrs.mtime })
                    }
                    PKind::RrMoved | PKind::Symlink { .. } => None,
                };
                if let Some(kind) = kind {
                    let mut ident = Vec::new();
                    joliet_name_into(&entry.name, &mut ident);
                    let (index, name) = (entry.index, entry.name.clone());
                    let j = JolietEntry { ident, index, name, kind };
                    by_joliet.push(j).map_err(self.sort_error(p))?;
                }
            }
            self.log.push(&entry).map_err(keep)?;
        }
        self.pdirs[p].entries = Span { offset: start, len: self.log.len() - start };

        if let Some(by_joliet) = by_joliet {
            let mut by_joliet = by_joliet.finish().map_err(self.sort_error(p))?;
            let start = self.log.len();
            // The first collision in name order: the earliest entry whose identifier an
            // earlier entry has, with the earliest of those.
            let mut collision: Option<(u32, String, String)> = None;
            let mut previous: Option<JolietEntry> = None;
            let mut repeats = 0;
            while let Some(entry) = by_joliet.next().map_err(self.sort_error(p))? {
                self.log.push(&entry).map_err(keep)?;
                match &previous {
                    Some(first) if first.ident == entry.ident => {
                        repeats += 1;
                        // Within a group of equal identifiers indexes ascend: the second
                        // is the first repeat of the group, the one before it the first.
                        if repeats == 1 && collision.as_ref().is_none_or(|c| entry.index < c.0) {
                            collision = Some((entry.index, first.name.clone(), entry.name.clone()));
                        }
                    }
                    _ => repeats = 0,
                }
                previous = Some(entry);
            }
            self.pdirs[p].joliet = Span { offset: start, len: self.log.len() - start };
            if let Some((_, first, second)) = collision {
                let node = self.pdirs[p].node.expect("Joliet entries are of tree directories");
                self.joliet_collisions.push((node, first, second));
            }
        }
        Ok(())
    }

    /// Entry `index` of primary directory `p` as prepared, named `rename` if it does not
    /// keep its natural 8.3 name.
    fn prepared(
        &self,
        p: usize,
        index: u32,
        entry: Entry,
        rename: Option<PrimaryName>,
    ) -> Prepared {
        let (kind, is_dir_here) = match entry.kind {
            EntryKind::Dir(child) if self.pdirs[self.pdir_of[child]].logical_parent == Some(p) => {
                (PKind::Placeholder(child), false)
            }
            EntryKind::Dir(child) => (PKind::Dir(child), true),
            EntryKind::File { size, source } => (PKind::File { size, rel: 0, source }, false),
            EntryKind::Symlink { target } => (PKind::Symlink { target }, false),
        };
        let ident = rename.unwrap_or_else(|| primary_natural(&entry.name, is_dir_here));
        Prepared { ident, index, name: entry.name, kind, attrs: entry.attrs }
    }

    /// Builds the Joliet hierarchy: the tree as is (no depth limit, no relocation),
    /// without symbolic links, which Joliet cannot express. Directories are created breadth
    /// first, which is path table order.
    fn build_joliet(&mut self) -> Result<(), WriteError> {
        let mut dirs = vec![JDir { node: ROOT, parent: 0, ident: Box::new([0]), lba: 0, size: 0 }];
        self.jdir_of[ROOT] = 0;
        let mut j = 0;
        while j < dirs.len() {
            let node = dirs[j].node;
            if let Some((_, first, second)) = self.joliet_collisions.iter().find(|c| c.0 == node) {
                let dir = self.tree.path_of(node);
                return Err(WriteError::MapJolietName {
                    first: join(&dir, first),
                    second: join(&dir, second),
                });
            }
            let mut entries = self.log.read::<JolietEntry>(self.pdirs[self.pdir_of[node]].joliet);
            while let Some(entry) =
                entries.next().map_err(|source| WriteError::KeepEntries { source })?
            {
                if let JKind::Dir(child) = entry.kind {
                    self.jdir_of[child] = dirs.len();
                    let ident = entry.ident.into_boxed_slice();
                    dirs.push(JDir { node: child, parent: j, ident, lba: 0, size: 0 });
                }
            }
            j += 1;
        }
        if dirs.len() > MAX_DIRECTORIES {
            return Err(WriteError::NumberDirectories { count: dirs.len() });
        }
        self.jdirs = dirs;
        Ok(())
    }

    /// Assigns every block: measures directory extents and continuation areas, then places
    /// them and the files.
    fn lay_out(&mut self) -> Result<(), WriteError> {
        let mut ce = ContinuationAreas::measuring();
        let mut measure = |_: &[u8]| Ok(());
        for p in 0..self.pdirs.len() {
            self.pdirs[p].size = self.primary_dir(p, &mut ce, &mut measure)?;
        }
        let ce_sectors = ce.sectors();
        for j in 0..self.jdirs.len() {
            self.jdirs[j].size = self.joliet_dir(j, &mut measure)?;
        }
        self.path_table_size = self.primary_path_table(false).len() as u32;
        self.joliet_path_table_size =
            if self.opts.joliet { self.joliet_path_table(false).len() as u32 } else { 0 };

        let mut next: u64 = 16 + 1 + u64::from(self.opts.joliet) + 1;
        let mut take_sectors = |sectors: u64| {
            let at = next;
            next += sectors;
            at as u32
        };
        let sectors = |bytes: u32| u64::from(bytes).div_ceil(SECTOR as u64);
        let pt = sectors(self.path_table_size);
        let jpt = sectors(self.joliet_path_table_size);
        self.path_table =
            [take_sectors(pt), take_sectors(pt), take_sectors(jpt), take_sectors(jpt)];
        for d in &mut self.pdirs {
            d.lba = take_sectors(sectors(d.size));
        }
        self.ce_lba = take_sectors(u64::from(ce_sectors));
        for d in &mut self.jdirs {
            d.lba = take_sectors(sectors(d.size));
        }
        for d in &mut self.pdirs {
            d.data_lba = take_sectors(d.data_sectors);
        }
        if next > u64::from(u32::MAX) {
            return Err(WriteError::AddressSectors { sectors: next });
        }
        self.total_sectors = next as u32;
        Ok(())
    }

    fn emit<W: Write>(
        &self,
        out: &mut W,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, WriteError> {
        let mut sink = Sink { out, written: 0 };
        sink.zeros(16 * SECTOR as u64)?;

        let root = &self.pdirs[0];
        let root_time = self.time_of(self.tree.nodes[ROOT].attrs.mtime);
        let label = self.opts.volume_id.as_bytes();
        sink.put(&raw::volume_descriptor(&VolumeFields {
            kind: VolumeKind::Primary,
            volume_id: label,
            volume_sectors: self.total_sectors,
            path_table_size: self.path_table_size,
            path_table_l: self.path_table[0],
            path_table_m: self.path_table[1],
            root_record: &root_record(root.lba, root.size, root_time),
            time: self.volume_time,
        }))?;
        if self.opts.joliet {
            let jroot = &self.jdirs[0];
            let label: String = self.opts.volume_id.chars().take(MAX_JOLIET_LABEL).collect();
            sink.put(&raw::volume_descriptor(&VolumeFields {
                kind: VolumeKind::Joliet,
                volume_id: &raw::ucs2_ascii(&label),
                volume_sectors: self.total_sectors,
                path_table_size: self.joliet_path_table_size,
                path_table_l: self.path_table[2],
                path_table_m: self.path_table[3],
                root_record: &root_record(jroot.lba, jroot.size, root_time),
                time: self.volume_time,
            }))?;
        }
        sink.put(&raw::terminator())?;

        sink.padded(&self.primary_path_table(false))?;
        sink.padded(&self.primary_path_table(true))?;
        if self.opts.joliet {
            sink.padded(&self.joliet_path_table(false))?;
            sink.padded(&self.joliet_path_table(true))?;
        }

        let mut ce = ContinuationAreas::new(self.ce_lba);
        for p in 0..self.pdirs.len() {
            debug_assert_eq!(sink.written, u64::from(self.pdirs[p].lba) * SECTOR as u64);
            self.primary_dir(p, &mut ce, &mut |sector| sink.put(sector))?;
        }
        debug_assert_eq!(sink.written, u64::from(self.ce_lba) * SECTOR as u64);
        sink.continuation_areas(ce)?;
        for j in 0..self.jdirs.len() {
            debug_assert_eq!(sink.written, u64::from(self.jdirs[j].lba) * SECTOR as u64);
            self.joliet_dir(j, &mut |sector| sink.put(sector))?;
        }

        for p in (0..self.pdirs.len()).filter(|&p| self.pdirs[p].files > 0) {
            debug_assert_eq!(sink.written, u64::from(self.pdirs[p].data_lba) * SECTOR as u64);
            let node = self.pdirs[p].node.expect("rr_moved holds no files");
            let mut disk_dir = None;
            let mut entries = self.entries(p);
            while let Some(entry) =
                entries.next().map_err(|source| WriteError::KeepEntries { source })?
            {
                if let PKind::File { size, source, .. } = entry.kind {
                    sink.file(self.tree, node, &entry.name, size, source, &mut disk_dir)?;
                    progress(sink.written);
                }
            }
        }
        debug_assert_eq!(sink.written, u64::from(self.total_sectors) * SECTOR as u64);
        sink.out.flush().map_err(|source| WriteError::WriteImage { source })?;
        Ok(sink.written)
    }

    /// The recorded time of an entry with modification time `mtime` (`None`: made in
    /// memory, or `rr_moved`).
    fn time_of(&self, mtime: Option<i64>) -> i64 {
        self.opts.timestamp.or(mtime).unwrap_or(self.volume_time)
    }

    /// The recorded time of primary directory `p`.
    fn dir_time(&self, p: usize) -> i64 {
        self.time_of(self.pdirs[p].node.and_then(|n| self.tree.nodes[n].attrs.mtime))
    }

    /// PX and TF of primary directory `p`.
    fn dir_attrs(&self, p: usize) -> Vec<Vec<u8>> {
        let (mode, nlink, uid, gid, serial) = match self.pdirs[p].node {
            None => {
                let subdirs = self.relocated.len() as u32;
                (S_IFDIR | 0o755, 2 + subdirs, 0, 0, self.tree.described() + 1)
            }
            Some(n) => {
                let a = &self.tree.nodes[n].attrs;
                let subdirs = self.tree.subdirs(n) as u32;
                (S_IFDIR | a.mode, 2 + subdirs, a.uid, a.gid, a.serial)
            }
        };
        vec![susp::px(mode, nlink, uid, gid, serial), susp::tf(self.dir_time(p))]
    }

    /// PX and TF of a file or symbolic link.
    fn entry_attrs(&self, file_type: u32, a: &Attrs) -> Vec<Vec<u8>> {
        vec![
            susp::px(file_type | a.mode, 1, a.uid, a.gid, a.serial),
            susp::tf(self.time_of(a.mtime)),
        ]
    }

    /// Encodes the extent of primary directory `p` into `out`, a sector at a time, and
    /// returns its size.
    fn primary_dir(
        &self,
        p: usize,
        ce: &mut ContinuationAreas,
        out: &mut dyn FnMut(&[u8]) -> Result<(), WriteError>,
    ) -> Result<u32, WriteError> {
        let rr = self.opts.rock_ridge;
        let dir = &self.pdirs[p];
        let parent = &self.pdirs[dir.parent];
        let mut out = Extent::new(out);
        let mut record = |out: &mut Extent<'_>, name: &[u8], lba, size, time, flags, entries| {
            let system_use = if rr {
                let base = 33 + name.len() + usize::from(name.len() % 2 == 0);
                ce.pack(entries, 254 - base)
                    .map_err(|source| WriteError::SpillContinuationAreas { source })?
            } else {
                Vec::new()
            };
            out.push(&DirRecord { name, lba, size, time, flags, system_use: &system_use })
        };

        let mut dot = Vec::new();
        if p == 0 {
            dot.push(susp::sp());
        }
        dot.extend(self.dir_attrs(p));
        if p == 0 {
            dot.push(susp::er());
        }
        record(&mut out, &[0], dir.lba, dir.size, self.dir_time(p), FLAG_DIRECTORY, dot)?;

        let mut dotdot = self.dir_attrs(dir.parent);
        if let Some(logical) = dir.logical_parent {
            dotdot.push(susp::pl(self.pdirs[logical].lba));
        }
        let parent_time = self.dir_time(dir.parent);
        record(&mut out, &[1], parent.lba, parent.size, parent_time, FLAG_DIRECTORY, dotdot)?;

        let mut entries = self.entries(p);
        while let Some(e) = entries.next().map_err(|source| WriteError::KeepEntries { source })? {
            let ident = e.ident.identifier();
            let nm = susp::nm(&e.name);
            match e.kind {
                PKind::Dir(_) | PKind::RrMoved => {
                    let x = match e.kind {
                        PKind::Dir(child) => self.pdir_of[child],
                        _ => self.rr_moved.expect("listed only with rr_moved"),
                    };
                    let sub = &self.pdirs[x];
                    let mut su = self.dir_attrs(x);
                    su.extend(nm);
                    if dir.node.is_none() {
                        su.push(susp::re());
                    }
                    let time = self.dir_time(x);
                    record(&mut out, &ident, sub.lba, sub.size, time, FLAG_DIRECTORY, su)?;
                }
                PKind::Placeholder(child) => {
                    let x = self.pdir_of[child];
                    let mut su = self.dir_attrs(x);
                    su.extend(nm);
                    su.push(susp::cl(self.pdirs[x].lba));
                    record(&mut out, &ident, 0, 0, self.dir_time(x), 0, su)?;
                }
                PKind::Symlink { target } => {
                    let mut su = self.entry_attrs(S_IFLNK, &e.attrs);
                    su.extend(nm);
                    su.extend(susp::sl(&target));
                    record(&mut out, &ident, 0, 0, self.time_of(e.attrs.mtime), 0, su)?;
                }
                PKind::File { size, rel, .. } => {
                    let time = self.time_of(e.attrs.mtime);
                    let first = (u64::from(dir.data_lba) + rel) as u32;
                    for (lba, size, flags) in extents(size, first) {
                        let mut su = self.entry_attrs(S_IFREG, &e.attrs);
                        su.extend(nm.iter().cloned());
                        record(&mut out, &ident, lba, size, time, flags, su)?;
                    }
                }
            }
        }
        out.finish()
    }

    /// Encodes the extent of Joliet directory `j` into `out`, a sector at a time, and
    /// returns its size.
    fn joliet_dir(
        &self,
        j: usize,
        out: &mut dyn FnMut(&[u8]) -> Result<(), WriteError>,
    ) -> Result<u32, WriteError> {
        let dir = &self.jdirs[j];
        let parent = &self.jdirs[dir.parent];
        let dir_time = |node: NodeId| self.time_of(self.tree.nodes[node].attrs.mtime);

        // Files lie where the primary layout of the same directory put them.
        let data_lba = u64::from(self.pdirs[self.pdir_of[dir.node]].data_lba);
        let mut out = Extent::new(out);
        let record = |out: &mut Extent<'_>, name: &[u8], lba, size, time, flags| {
            out.push(&DirRecord { name, lba, size, time, flags, system_use: &[] })
        };
        record(&mut out, &[0], dir.lba, dir.size, dir_time(dir.node), FLAG_DIRECTORY)?;
        record(&mut out, &[1], parent.lba, parent.size, dir_time(parent.node), FLAG_DIRECTORY)?;
        let mut entries = self.log.read::<JolietEntry>(self.pdirs[self.pdir_of[dir.node]].joliet);
        while let Some(e) = entries.next().map_err(|source| WriteError::KeepEntries { source })? {
            match e.kind {
                JKind::Dir(node) => {
                    let sub = &self.jdirs[self.jdir_of[node]];
                    let time = dir_time(node);
                    record(&mut out, &e.ident, sub.lba, sub.size, time, FLAG_DIRECTORY)?;
                }
                JKind::File { size, rel, mtime } => {
                    let time = self.time_of(mtime);
                    for (lba, size, flags) in extents(size, (data_lba + rel) as u32) {
                        record(&mut out, &e.ident, lba, size, time, flags)?;
                    }
                }
            }
        }
        out.finish()
    }

    fn primary_path_table(&self, big_endian: bool) -> Vec<u8> {
        let mut t = Vec::new();
        for d in &self.pdirs {
            raw::path_table_record(&mut t, &d.ident(), d.lba, d.parent as u16 + 1, big_endian);
        }
        t
    }

    fn joliet_path_table(&self, big_endian: bool) -> Vec<u8> {
        let mut t = Vec::new();
        for d in &self.jdirs {
            raw::path_table_record(&mut t, &d.ident, d.lba, d.parent as u16 + 1, big_endian);
        }
        t
    }
}

/// The directory records' view of a file of `size` bytes starting at block `first`: one
/// `(lba, size, flags)` per extent, all but the last flagged multi-extent. An empty file
/// has one empty extent at block 0.
fn extents(size: u64, first: u32) -> Vec<(u32, u32, u8)> {
    if size == 0 {
        return vec![(0, 0, 0)];
    }
    let count = size.div_ceil(MAX_EXTENT);
    (0..count)
        .map(|i| {
            let lba = first + (i * (MAX_EXTENT / SECTOR as u64)) as u32;
            let len = (size - i * MAX_EXTENT).min(MAX_EXTENT) as u32;
            let flags = if i + 1 < count { FLAG_MULTI_EXTENT } else { 0 };
            (lba, len, flags)
        })
        .collect()
}

fn root_record(lba: u32, size: u32, time: i64) -> [u8; 34] {
    let mut buf = Vec::with_capacity(34);
    DirRecord { name: &[0], lba, size, time, flags: FLAG_DIRECTORY, system_use: &[] }
        .encode(&mut buf);
    buf.try_into().expect("a root record is 34 bytes")
}

/// The directory records of one extent, handed on a sector at a time (a record never
/// crosses a sector boundary), so that a directory of any size takes one sector of memory.
struct Extent<'o> {
    sector: Vec<u8>,
    /// Bytes handed on so far.
    len: u64,
    out: &'o mut dyn FnMut(&[u8]) -> Result<(), WriteError>,
}

impl<'o> Extent<'o> {
    fn new(out: &'o mut dyn FnMut(&[u8]) -> Result<(), WriteError>) -> Self {
        Extent { sector: Vec::with_capacity(SECTOR), len: 0, out }
    }

    /// Appends a record, moving to the next sector first if it would cross a boundary.
    fn push(&mut self, rec: &DirRecord<'_>) -> Result<(), WriteError> {
        if self.sector.len() + rec.len() > SECTOR {
            self.next_sector()?;
        }
        rec.encode(&mut self.sector);
        Ok(())
    }

    fn next_sector(&mut self) -> Result<(), WriteError> {
        self.sector.resize(SECTOR, 0);
        (self.out)(&self.sector)?;
        self.len += SECTOR as u64;
        self.sector.clear();
        Ok(())
    }

    /// Pads the last sector and returns the size of the extent.
    fn finish(mut self) -> Result<u32, WriteError> {
        if !self.sector.is_empty() {
            self.next_sector()?;
        }
        // FIXME: a directory extent of 4 GiB or more (some 20 million entries in one
        // directory) cannot be recorded; it is not detected.
        Ok(self.len as u32)
    }
}

/// The output with a running byte count.
struct Sink<'w, W: Write> {
    out: &'w mut W,
    written: u64,
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

impl<W: Write> Sink<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        self.out.write_all(bytes).map_err(|source| WriteError::WriteImage { source })?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn zeros(&mut self, mut n: u64) -> Result<(), WriteError> {
        while n > 0 {
            let chunk = n.min(ZEROS.len() as u64) as usize;
            self.put(&ZEROS[..chunk])?;
            n -= chunk as u64;
        }
        Ok(())
    }

    /// Writes `bytes` and pads to a sector boundary.
    fn padded(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        self.put(bytes)?;
        self.pad()
    }

    fn pad(&mut self) -> Result<(), WriteError> {
        let rem = self.written % SECTOR as u64;
        if rem != 0 {
            self.zeros(SECTOR as u64 - rem)?;
        }
        Ok(())
    }

    /// Streams the contents of file `name` of `size` bytes, in directory `dir` of `tree`,
    /// and pads to a sector boundary. `disk_dir` keeps the disk directory of the run read
    /// last, which the next file most likely shares.
    fn file(
        &mut self,
        tree: &IsoTree,
        dir: NodeId,
        name: &str,
        size: u64,
        source: FileSource,
        disk_dir: &mut Option<(u32, PathBuf)>,
    ) -> Result<(), WriteError> {
        match source {
            FileSource::Node(n) => match &tree.nodes[n].kind {
                NodeKind::File { data: FileData::Bytes(bytes), .. } => self.put(bytes)?,
                NodeKind::File { data: FileData::Disk(path), .. } => self.stream(path, size)?,
                _ => unreachable!("file sources are file nodes"),
            },
            FileSource::Disk(run) => {
                let path = match disk_dir {
                    Some((cached, path)) if *cached == run => path,
                    _ => {
                        let path = tree
                            .disk_dir_of_run(dir, run)
                            .map_err(|source| WriteError::ReadCatalog { source })?;
                        &disk_dir.insert((run, path)).1
                    }
                };
                self.stream(&path.join(name), size)?;
            }
        }
        self.pad()
    }

    /// Copies the disk file `path`, which must still be `size` bytes long.
    fn stream(&mut self, path: &Path, size: u64) -> Result<(), WriteError> {
        let file = File::open(path)
            .map_err(|source| WriteError::OpenFile { path: path.to_owned(), source })?;
        let found = file
            .metadata()
            .map_err(|source| WriteError::OpenFile { path: path.to_owned(), source })?
            .len();
        let changed =
            |found| WriteError::CheckFileSize { path: path.to_owned(), expected: size, found };
        if found != size {
            return Err(changed(found));
        }
        // `io::copy` from a `File` to a `File` uses copy_file_range/sendfile, so the bytes
        // need not pass through this process.
        let copied = io::copy(&mut (&file).take(size), self.out)
            .map_err(|source| WriteError::CopyFile { path: path.to_owned(), source })?;
        self.written += copied;
        if copied != size {
            return Err(changed(copied));
        }
        Ok(())
    }

    /// Writes the continuation areas: what was spilled to a temporary file, then the rest.
    fn continuation_areas(&mut self, ce: ContinuationAreas) -> Result<(), WriteError> {
        let spill = |source| WriteError::SpillContinuationAreas { source };
        let (spilled, tail) = ce.into_parts().map_err(spill)?;
        if let Some(mut file) = spilled {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = file.read(&mut buf).map_err(spill)?;
                if n == 0 {
                    break;
                }
                self.put(&buf[..n])?;
            }
        }
        self.put(&tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn image(tree: &IsoTree) -> Vec<u8> {
        let mut opts = IsoOptions::new("cidata");
        opts.timestamp = Some(0);
        let mut out = Vec::new();
        write_iso(tree, &opts, &mut out).expect("in-memory write");
        out
    }

    fn all_entries(plan: &Plan<'_>, p: usize) -> Vec<Prepared> {
        let mut entries = plan.entries(p);
        let mut out = Vec::new();
        while let Some(e) = entries.next().expect("prepared entries") {
            out.push(e);
        }
        out
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
    }

    #[test]
    fn descriptors_sit_in_sectors_16_to_18_and_sizes_agree() {
        let mut tree = IsoTree::new();
        tree.add_file_bytes("a.txt", b"hello".to_vec(), 0o644).expect("add");
        let img = image(&tree);
        assert_eq!(img.len() % SECTOR, 0);
        assert_eq!(&img[16 * SECTOR..16 * SECTOR + 6], b"\x01CD001");
        assert_eq!(&img[17 * SECTOR..17 * SECTOR + 6], b"\x02CD001");
        assert_eq!(&img[18 * SECTOR..18 * SECTOR + 6], b"\xffCD001");
        assert!(img[..16 * SECTOR].iter().all(|&b| b == 0), "system area is zero");
        let sectors = u32_at(&img, 16 * SECTOR + 80) as usize;
        assert_eq!(sectors * SECTOR, img.len());
        assert_eq!(u32_at(&img, 17 * SECTOR + 80) as usize, sectors);
    }

    #[test]
    fn root_dot_record_starts_with_sp_and_points_to_itself() {
        let mut tree = IsoTree::new();
        tree.add_file_bytes("a.txt", b"hello".to_vec(), 0o644).expect("add");
        let img = image(&tree);
        let root_lba = u32_at(&img, 16 * SECTOR + 156 + 2) as usize;
        let dot = &img[root_lba * SECTOR..];
        assert_eq!(dot[32], 1, "identifier length of `.`");
        assert_eq!(dot[33], 0, "identifier of `.`");
        assert_eq!(u32_at(dot, 2) as usize, root_lba);
        // 33-byte header + 1-byte identifier, no padding: SUSP starts at 34.
        assert_eq!(&dot[34..41], &[b'S', b'P', 7, 1, 0xBE, 0xEF, 0]);
        // The file record carries PX, TF and NM, and its extent holds the contents.
        let dotdot_len = usize::from(dot[usize::from(dot[0])]);
        let file = &dot[usize::from(dot[0]) + dotdot_len..];
        assert_eq!(&file[33..33 + usize::from(file[32])], b"A.TXT;1");
        let data = u32_at(file, 2) as usize * SECTOR;
        assert_eq!(&img[data..data + 5], b"hello");
        let su = &file[33 + usize::from(file[32])..usize::from(file[0])];
        let su = if su[0] == 0 { &su[1..] } else { su };
        assert_eq!(&su[..2], b"PX");
        assert!(su.windows(7).any(|w| w == b"NM\x0a\x01\x00a."));
    }

    #[test]
    fn files_over_4_gib_get_sector_aligned_contiguous_extents() {
        let mut tree = IsoTree::new();
        tree.add_file_bytes("big", Vec::new(), 0o644).expect("add");
        let size = 2 * MAX_EXTENT + 5;
        let NodeKind::File { size: s, .. } = &mut tree.nodes[1].kind else {
            unreachable!("added a file");
        };
        *s = size;

        let opts = IsoOptions::new("x");
        let mut plan = Plan::new(&tree, &opts).expect("plan");
        plan.lay_out().expect("layout");
        let entries = all_entries(&plan, 0);
        let PKind::File { rel, .. } = entries[0].kind else {
            unreachable!("one file");
        };
        let lba = plan.pdirs[0].data_lba + rel as u32;
        let extents = extents(size, lba);
        assert_eq!(extents.len(), 3);
        let per = (MAX_EXTENT / SECTOR as u64) as u32;
        assert_eq!(extents[1].0, extents[0].0 + per);
        assert_eq!(extents[2].0, extents[1].0 + per);
        assert_eq!(
            extents.iter().map(|e| (e.1, e.2)).collect::<Vec<_>>(),
            [
                (MAX_EXTENT as u32, FLAG_MULTI_EXTENT),
                (MAX_EXTENT as u32, FLAG_MULTI_EXTENT),
                (5, 0)
            ]
        );
        assert_eq!(
            u64::from(plan.total_sectors),
            u64::from(extents[0].0) + size.div_ceil(SECTOR as u64)
        );
    }

    #[test]
    fn primary_records_are_sorted_and_unique_after_mapping() {
        let mut tree = IsoTree::new();
        for name in ["zeta", "Alpha.txt", "alpha.TXT", "beta-long-name.md", "beta-long-other.md"] {
            tree.add_file_bytes(name, Vec::new(), 0o644).expect("add");
        }
        let opts = IsoOptions::new("x");
        let plan = Plan::new(&tree, &opts).expect("plan");
        let ids: Vec<String> = all_entries(&plan, 0)
            .iter()
            .map(|e| String::from_utf8(e.ident.identifier()).expect("ascii"))
            .collect();
        assert_eq!(
            ids,
            ["ALPHA.TXT;1", "ALPHA_1.TXT;1", "BETA_LON.MD;1", "BETA_L_1.MD;1", "ZETA.;1"]
        );
    }

    /// A source directory with what the writer handles specially: deep directories, a
    /// directory of several sectors, 8.3 collisions, names and link targets long enough for
    /// continuation areas, empty files and directories.
    fn rich_source(root: &Path) {
        let write = |rel: &str, contents: &[u8]| {
            let path = root.join(rel);
            fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
            fs::write(path, contents).expect("write");
        };
        let deep = "l1/l2/l3/l4/l5/l6/l7/l8/l9/l10";
        write(&format!("{deep}/bottom.txt"), b"deep");
        write("l1/l2/l3/l4/l5/l6/l7/same/inner/f", b"f");
        for i in 0..300 {
            write(&format!("many/entry-with-a-long-name-{i:04}.data"), &[i as u8; 3]);
        }
        write(&format!("long/{}.txt", "n".repeat(200)), b"long");
        write("long/empty", b"");
        fs::create_dir_all(root.join("empty-dir")).expect("mkdir");
        let target = (0..8).map(|i| format!("part-{i}-{}", "x".repeat(40))).collect::<Vec<_>>();
        std::os::unix::fs::symlink(target.join("/"), root.join("long/link")).expect("symlink");
        std::os::unix::fs::symlink("../many", root.join("long/short-link")).expect("symlink");
    }

    #[test]
    fn a_tree_read_from_its_catalog_writes_the_bytes_of_the_same_tree_held_as_nodes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        rich_source(&src);
        let other = tmp.path().join("other");
        fs::create_dir_all(other.join("many")).expect("mkdir");
        fs::write(other.join("many/zz-from-another-graft"), b"z").expect("write");

        let mut tree = IsoTree::new();
        tree.add_file_bytes("meta-data", b"instance-id: x\n".to_vec(), 0o644).expect("add");
        tree.add_dir_from_disk("", &src).expect("graft");
        tree.add_dir_from_disk("", &other).expect("second graft");
        tree.add_dir_from_disk("copy/of/long", &src.join("long")).expect("graft below");
        tree.add_file_bytes("many/added-by-hand.txt", b"hand".to_vec(), 0o600).expect("add");
        let nodes = tree.without_catalog();
        assert!(nodes.nodes.len() > tree.nodes.len() + 300);

        for (rock_ridge, joliet) in [(true, true), (true, false)] {
            let mut opts = IsoOptions::new("same");
            opts.timestamp = Some(1_700_000_000);
            (opts.rock_ridge, opts.joliet) = (rock_ridge, joliet);
            let mut from_catalog = Vec::new();
            write_iso(&tree, &opts, &mut from_catalog).expect("write");
            let mut from_nodes = Vec::new();
            write_iso(&nodes, &opts, &mut from_nodes).expect("write");
            assert!(from_catalog == from_nodes, "images differ (joliet: {joliet})");
        }
    }

    /// Every sort through temporary files: runs of a few entries, merged in several rounds.
    const SPILL_ALWAYS: usize = 512;

    #[test]
    fn entries_sorted_in_spilled_runs_give_the_bytes_of_in_memory_sorts() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        rich_source(&src);
        for i in 0..2000 {
            // 8.3 collisions that need two- and three-digit suffixes, next to natural names
            // shaped like suffixed ones.
            fs::write(src.join(format!("many/{}-{i}.data", ["x", "entry"][i % 2])), b"")
                .expect("w");
        }
        for taken in ["ENTRY_1.DAT", "ENTRY_12.DAT", "ENTR_100.DAT"] {
            fs::write(src.join("many").join(taken), b"").expect("write");
        }
        let other = tmp.path().join("other");
        fs::create_dir_all(other.join("many")).expect("mkdir");
        for i in 0..300 {
            fs::write(other.join(format!("many/zz-from-another-graft-{i}")), b"z").expect("w");
        }

        let describe = |sort_memory| {
            let mut tree = IsoTree::new();
            tree.set_sort_memory(sort_memory);
            tree.add_file_bytes("meta-data", b"instance-id: x\n".to_vec(), 0o644).expect("add");
            tree.add_dir_from_disk("", &src).expect("graft");
            tree.add_dir_from_disk("", &other).expect("second graft");
            tree.add_file_bytes("many/added-by-hand.txt", b"hand".to_vec(), 0o600).expect("add");
            tree
        };
        let in_memory = describe(usize::MAX);
        let spilled = describe(SPILL_ALWAYS);
        for (rock_ridge, joliet) in [(true, true), (true, false)] {
            let mut opts = IsoOptions::new("same");
            opts.timestamp = Some(1_700_000_000);
            (opts.rock_ridge, opts.joliet) = (rock_ridge, joliet);
            let mut want = Vec::new();
            write_iso(&in_memory, &opts, &mut want).expect("write");
            let mut got = Vec::new();
            write_iso(&spilled, &opts, &mut got).expect("write");
            assert!(got == want, "images differ (joliet: {joliet})");
        }
    }

    #[test]
    fn a_joliet_collision_found_in_spilled_runs_names_the_first_pair_in_name_order() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("big")).expect("mkdir");
        for i in 0..1000 {
            fs::write(src.join(format!("big/file-{i:04}")), b"").expect("write");
        }
        // Two groups of equal Joliet names; the repeat that comes first by name decides.
        for name in ["b*x", "c:y", "c?y", "b?x", "b;x"] {
            fs::write(src.join("big").join(name), b"").expect("write");
        }
        for sort_memory in [usize::MAX, SPILL_ALWAYS] {
            let mut tree = IsoTree::new();
            tree.set_sort_memory(sort_memory);
            tree.add_dir_from_disk("", &src).expect("tree");
            let err = write_iso(&tree, &IsoOptions::new("x"), io::sink()).expect_err("collision");
            assert!(
                matches!(&err, WriteError::MapJolietName { first, second }
                    if first == "big/b*x" && second == "big/b;x"),
                "{err}"
            );
        }
    }

    #[test]
    fn errors_found_while_writing_name_entries_described_from_disk() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        rich_source(&src);
        fs::write(src.join("many/what:is"), b"").expect("write");
        fs::write(src.join("many/what?is"), b"").expect("write");
        let tree = IsoTree::from_dir(&src).expect("tree");
        let err = write_iso(&tree, &IsoOptions::new("x"), io::sink()).expect_err("collision");
        assert!(
            matches!(&err, WriteError::MapJolietName { first, second }
                if first == "many/what:is" && second == "many/what?is"),
            "{err}"
        );

        let mut opts = IsoOptions::new("x");
        (opts.rock_ridge, opts.joliet) = (false, false);
        fs::remove_file(src.join("long/link")).expect("rm");
        fs::remove_file(src.join("long/short-link")).expect("rm");
        let tree = IsoTree::from_dir(&src).expect("tree");
        let err = write_iso(&tree, &opts, io::sink()).expect_err("too deep");
        assert!(
            matches!(&err, WriteError::RelocateDirectory { path }
                if path == "l1/l2/l3/l4/l5/l6/l7/l8"),
            "{err}"
        );

        // A file that shrank after it was described.
        let tree = IsoTree::from_dir(&src.join("long")).expect("tree");
        let long = src.join(format!("long/{}.txt", "n".repeat(200)));
        fs::write(&long, b"").expect("truncate");
        let err = write_iso(&tree, &IsoOptions::new("x"), io::sink()).expect_err("shrank");
        assert!(
            matches!(&err, WriteError::CheckFileSize { path, expected: 4, found: 0 }
                if *path == long),
            "{err}"
        );
    }
}
