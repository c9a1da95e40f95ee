//! Laying out and writing the image.
//!
//! The writer plans everything before the first byte goes out: the primary hierarchy
//! (8.3 names, Rock Ridge entries, relocation of directories deeper than eight levels), the
//! Joliet hierarchy, and the position of every directory, continuation area and file. Sizes
//! do not depend on positions, so directory extents are encoded once to measure them and
//! again, with the final positions, to write them. The image is then written strictly in
//! order, which is why a plain [`Write`] is enough: no seeking back.
//!
//! Image order: system area (16 zero sectors), primary and Joliet volume descriptors,
//! terminator, path tables, primary directories, Rock Ridge continuation areas, Joliet
//! directories, file data.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::names::{assign_primary, joliet_name, PrimaryName};
use crate::raw::{
    self, DirRecord, VolumeFields, VolumeKind, FLAG_DIRECTORY, FLAG_MULTI_EXTENT, MAX_EXTENT,
    SECTOR,
};
use crate::susp::{self, ContinuationAreas, S_IFDIR, S_IFLNK, S_IFREG};
use crate::tree::{FileData, IsoTree, NodeId, NodeKind, ROOT};

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
pub fn write_iso<W: Write>(
    tree: &IsoTree,
    opts: &IsoOptions,
    mut out: W,
) -> Result<u64, WriteError> {
    check_label(&opts.volume_id)?;
    let mut plan = Plan::new(tree, opts)?;
    plan.lay_out()?;
    tracing::debug!(
        directories = plan.pdirs.len(),
        files = plan.files.len(),
        sectors = plan.total_sectors,
        "writing ISO image"
    );
    plan.emit(&mut out)
}

/// Writes the image of `tree` to the file `out`, atomically: the image goes to a temporary
/// file in the same directory, is synced, then renamed onto `out`. On error nothing is
/// left at `out` (an existing file there is untouched) and the temporary file is removed.
pub fn write_iso_file(tree: &IsoTree, opts: &IsoOptions, out: &Path) -> Result<(), WriteError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));

    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(|source| WriteError::CreateTemp { path: tmp.clone(), source })?;
    // Removes the temporary file on every way out, panics included, until disarmed.
    let mut guard = TempGuard { path: Some(tmp.as_path()) };

    write_iso(tree, opts, &mut file)?;
    file.sync_all().map_err(|source| WriteError::SyncTemp { path: tmp.clone(), source })?;
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

/// Deletes a temporary file when dropped, unless `path` was cleared.
struct TempGuard<'p> {
    path: Option<&'p Path>,
}

impl Drop for TempGuard<'_> {
    fn drop(&mut self) {
        if let Some(path) = self.path {
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

/// A child of a primary directory.
#[derive(Debug, Clone)]
enum PKind {
    /// A subdirectory at its natural place.
    Dir(usize),
    /// A relocated directory inside `rr_moved` (RE).
    Relocated(usize),
    /// The empty file standing for a relocated directory at its logical place (CL).
    Placeholder(usize),
    File(NodeId),
    Symlink(NodeId),
}

#[derive(Debug, Clone)]
struct PChild<'a> {
    rr_name: &'a str,
    kind: PKind,
    name: Option<PrimaryName>,
}

/// A directory of the primary hierarchy.
#[derive(Debug)]
struct PDir<'a> {
    /// `None` for `rr_moved`.
    node: Option<NodeId>,
    path: String,
    level: u32,
    /// Index of the directory that physically holds this one (itself for the root).
    parent: usize,
    /// For relocated directories, the directory it logically belongs in (PL).
    logical_parent: Option<usize>,
    children: Vec<PChild<'a>>,
    ident: Vec<u8>,
    lba: u32,
    size: u32,
}

#[derive(Debug)]
enum JKind {
    Dir(usize),
    File(NodeId),
}

#[derive(Debug)]
struct JDir<'a> {
    node: NodeId,
    parent: usize,
    ident: Vec<u8>,
    /// Children by POSIX name, in Joliet order; their identifiers are recomputed when the
    /// extent is encoded rather than kept for every entry of the tree.
    children: Vec<(&'a str, JKind)>,
    lba: u32,
    size: u32,
}

/// Everything about one image, from hierarchy to block addresses.
struct Plan<'a> {
    tree: &'a IsoTree,
    opts: &'a IsoOptions,
    volume_time: i64,
    pdirs: Vec<PDir<'a>>,
    jdirs: Vec<JDir<'a>>,
    /// Data files in image order, with their first block.
    files: Vec<(NodeId, u32)>,
    /// Index into `files` per node.
    file_index: Vec<Option<usize>>,
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
            jdirs: Vec::new(),
            files: Vec::new(),
            file_index: vec![None; tree.nodes.len()],
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

    /// Builds the primary hierarchy, relocating directories deeper than eight levels into
    /// `rr_moved`, names every entry and numbers directories in path table order.
    fn build_primary(&mut self) -> Result<(), WriteError> {
        let rock_ridge = self.opts.rock_ridge;
        let mut dirs = vec![PDir::new(Some(ROOT), String::new(), 1, 0)];
        let mut rr_moved: Option<usize> = None;
        let mut pending = vec![0usize];

        while let Some(d) = pending.pop() {
            let node = dirs[d].node.expect("only tree directories are queued");
            for (name, child) in self.tree.children(node) {
                let path = join(&dirs[d].path, name);
                let kind = match &self.tree.nodes[child].kind {
                    NodeKind::Dir { .. } if dirs[d].level < MAX_LEVEL => {
                        let level = dirs[d].level + 1;
                        dirs.push(PDir::new(Some(child), path, level, d));
                        pending.push(dirs.len() - 1);
                        PKind::Dir(dirs.len() - 1)
                    }
                    NodeKind::Dir { .. } if rock_ridge => {
                        let moved = *rr_moved.get_or_insert_with(|| {
                            dirs.push(PDir::new(None, RR_MOVED.to_owned(), 2, 0));
                            dirs.len() - 1
                        });
                        let mut relocated = PDir::new(Some(child), path, 3, moved);
                        relocated.logical_parent = Some(d);
                        dirs.push(relocated);
                        let r = dirs.len() - 1;
                        pending.push(r);
                        dirs[moved].children.push(PChild::new(name, PKind::Relocated(r)));
                        PKind::Placeholder(r)
                    }
                    NodeKind::Dir { .. } => return Err(WriteError::RelocateDirectory { path }),
                    NodeKind::File { .. } => PKind::File(child),
                    NodeKind::Symlink { .. } if rock_ridge => PKind::Symlink(child),
                    NodeKind::Symlink { .. } => return Err(WriteError::RecordSymlink { path }),
                };
                dirs[d].children.push(PChild::new(name, kind));
            }
        }
        if let Some(moved) = rr_moved {
            if self.tree.children(ROOT).any(|(name, _)| name == RR_MOVED) {
                // FIXME: pick another name when the tree already has `rr_moved` at its
                // root; only matters for trees that are both deep and contain that name.
                return Err(WriteError::ReserveRelocationDir { path: RR_MOVED.to_owned() });
            }
            dirs[0].children.push(PChild::new(RR_MOVED, PKind::Dir(moved)));
        }

        for dir in &mut dirs {
            let entries: Vec<(&str, bool)> = dir
                .children
                .iter()
                .map(|c| (c.rr_name, matches!(c.kind, PKind::Dir(_) | PKind::Relocated(_))))
                .collect();
            let names = assign_primary(&entries);
            for (child, name) in dir.children.iter_mut().zip(names) {
                child.name = Some(name);
            }
            dir.children.sort_by_key(|c| c.name);
        }

        // Path table order: breadth first, children in identifier order.
        let mut order = vec![0usize];
        let mut i = 0;
        while i < order.len() {
            for c in &dirs[order[i]].children {
                if let PKind::Dir(x) | PKind::Relocated(x) = c.kind {
                    order.push(x);
                }
            }
            i += 1;
        }
        if order.len() > usize::from(u16::MAX) {
            return Err(WriteError::NumberDirectories { count: order.len() });
        }
        let mut new_index = vec![0usize; dirs.len()];
        for (new, &old) in order.iter().enumerate() {
            new_index[old] = new;
        }
        let mut idents = vec![vec![0u8]; dirs.len()];
        for dir in &dirs {
            for c in &dir.children {
                if let PKind::Dir(x) | PKind::Relocated(x) = c.kind {
                    idents[x] = c.name.as_ref().expect("names assigned above").identifier();
                }
            }
        }
        let mut slots: Vec<Option<PDir>> = dirs.into_iter().map(Some).collect();
        let mut numbered = Vec::with_capacity(order.len());
        for &old in &order {
            let mut dir = slots[old].take().expect("each directory is numbered once");
            dir.ident = std::mem::take(&mut idents[old]);
            dir.parent = new_index[dir.parent];
            dir.logical_parent = dir.logical_parent.map(|p| new_index[p]);
            for c in &mut dir.children {
                c.kind = match c.kind {
                    PKind::Dir(x) => PKind::Dir(new_index[x]),
                    PKind::Relocated(x) => PKind::Relocated(new_index[x]),
                    PKind::Placeholder(x) => PKind::Placeholder(new_index[x]),
                    ref other => other.clone(),
                };
            }
            numbered.push(dir);
        }

        for dir in &numbered {
            for c in &dir.children {
                if let PKind::File(n) = c.kind {
                    self.file_index[n] = Some(self.files.len());
                    self.files.push((n, 0));
                }
            }
        }
        self.pdirs = numbered;
        Ok(())
    }

    /// Builds the Joliet hierarchy: the tree as is (no depth limit, no relocation),
    /// without symbolic links, which Joliet cannot express.
    fn build_joliet(&mut self) -> Result<(), WriteError> {
        let mut dirs =
            vec![JDir { node: ROOT, parent: 0, ident: vec![0], children: vec![], lba: 0, size: 0 }];
        let mut paths = vec![String::new()];
        let mut order = vec![0usize];
        let mut i = 0;
        while i < order.len() {
            let d = order[i];
            let mut seen: BTreeMap<Vec<u8>, String> = BTreeMap::new();
            let mut children = Vec::new();
            for (name, child) in self.tree.children(dirs[d].node) {
                let path = join(&paths[d], name);
                let ident = joliet_name(name);
                let kind = match &self.tree.nodes[child].kind {
                    NodeKind::Dir { .. } => JKind::Dir(child),
                    NodeKind::File { .. } => JKind::File(child),
                    NodeKind::Symlink { .. } => continue,
                };
                if let Some(first) = seen.insert(ident.clone(), path.clone()) {
                    return Err(WriteError::MapJolietName { first, second: path });
                }
                children.push((ident, name, kind, path));
            }
            children.sort_by(|a, b| a.0.cmp(&b.0));
            for (ident, name, kind, path) in children {
                let kind = match kind {
                    JKind::Dir(node) => {
                        dirs.push(JDir {
                            node,
                            parent: d,
                            ident,
                            children: vec![],
                            lba: 0,
                            size: 0,
                        });
                        paths.push(path);
                        order.push(dirs.len() - 1);
                        JKind::Dir(dirs.len() - 1)
                    }
                    file => file,
                };
                dirs[d].children.push((name, kind));
            }
            i += 1;
        }
        // Breadth-first creation order is already path table order.
        if dirs.len() > usize::from(u16::MAX) {
            return Err(WriteError::NumberDirectories { count: dirs.len() });
        }
        self.jdirs = dirs;
        Ok(())
    }

    /// Assigns every block: measures directory extents and continuation areas, then places
    /// them and the files.
    fn lay_out(&mut self) -> Result<(), WriteError> {
        let mut ce = ContinuationAreas::new(0);
        for p in 0..self.pdirs.len() {
            let bytes = self.primary_dir(p, &mut ce);
            self.pdirs[p].size = bytes.len() as u32;
        }
        let ce_sectors = ce.sectors();
        for j in 0..self.jdirs.len() {
            let bytes = self.joliet_dir(j);
            self.jdirs[j].size = bytes.len() as u32;
        }
        self.path_table_size = self.primary_path_table(false).len() as u32;
        self.joliet_path_table_size =
            if self.opts.joliet { self.joliet_path_table(false).len() as u32 } else { 0 };

        let mut next: u64 = 16 + 1 + u64::from(self.opts.joliet) + 1;
        let mut take = |bytes: u64| {
            let at = next;
            next += bytes.div_ceil(SECTOR as u64);
            at as u32
        };
        let pt = u64::from(self.path_table_size);
        let jpt = u64::from(self.joliet_path_table_size);
        self.path_table = [take(pt), take(pt), take(jpt), take(jpt)];
        for d in &mut self.pdirs {
            d.lba = take(u64::from(d.size));
        }
        self.ce_lba = take(u64::from(ce_sectors) * SECTOR as u64);
        for d in &mut self.jdirs {
            d.lba = take(u64::from(d.size));
        }
        for (node, lba) in &mut self.files {
            *lba = take(file_size(self.tree, *node));
        }
        if next > u64::from(u32::MAX) {
            return Err(WriteError::AddressSectors { sectors: next });
        }
        self.total_sectors = next as u32;
        Ok(())
    }

    fn emit<W: Write>(&self, out: &mut W) -> Result<u64, WriteError> {
        let mut sink = Sink { out, written: 0 };
        sink.zeros(16 * SECTOR as u64)?;

        let root = &self.pdirs[0];
        let label = self.opts.volume_id.as_bytes();
        sink.put(&raw::volume_descriptor(&VolumeFields {
            kind: VolumeKind::Primary,
            volume_id: label,
            volume_sectors: self.total_sectors,
            path_table_size: self.path_table_size,
            path_table_l: self.path_table[0],
            path_table_m: self.path_table[1],
            root_record: &root_record(root.lba, root.size, self.time_of(Some(ROOT))),
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
                root_record: &root_record(jroot.lba, jroot.size, self.time_of(Some(ROOT))),
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
            sink.put(&self.primary_dir(p, &mut ce))?;
        }
        sink.put(&ce.into_bytes())?;
        for j in 0..self.jdirs.len() {
            sink.put(&self.joliet_dir(j))?;
        }

        for &(node, lba) in &self.files {
            debug_assert_eq!(sink.written, u64::from(lba) * SECTOR as u64);
            sink.file(self.tree, node)?;
        }
        debug_assert_eq!(sink.written, u64::from(self.total_sectors) * SECTOR as u64);
        sink.out.flush().map_err(|source| WriteError::WriteImage { source })?;
        Ok(sink.written)
    }

    /// The recorded time of a node (`None`: a directory we made up, `rr_moved`).
    fn time_of(&self, node: Option<NodeId>) -> i64 {
        self.opts
            .timestamp
            .or_else(|| node.and_then(|n| self.tree.nodes[n].mtime))
            .unwrap_or(self.volume_time)
    }

    /// PX and TF of a node, or of `rr_moved` for `None`.
    fn rr_attrs(&self, node: Option<NodeId>) -> Vec<Vec<u8>> {
        let (mode, nlink, uid, gid, serial) = match node {
            None => {
                let subdirs = self.pdirs.iter().filter(|d| d.logical_parent.is_some()).count();
                (S_IFDIR | 0o755, 2 + subdirs as u32, 0, 0, self.tree.nodes.len() as u32 + 1)
            }
            Some(n) => {
                let node = &self.tree.nodes[n];
                let (kind, nlink) = match &node.kind {
                    NodeKind::Dir { .. } => {
                        let subdirs = self
                            .tree
                            .children(n)
                            .filter(|(_, c)| {
                                matches!(self.tree.nodes[*c].kind, NodeKind::Dir { .. })
                            })
                            .count();
                        (S_IFDIR, 2 + subdirs as u32)
                    }
                    NodeKind::File { .. } => (S_IFREG, 1),
                    NodeKind::Symlink { .. } => (S_IFLNK, 1),
                };
                (kind | node.mode, nlink, node.uid, node.gid, n as u32 + 1)
            }
        };
        vec![susp::px(mode, nlink, uid, gid, serial), susp::tf(self.time_of(node))]
    }

    /// Encodes the extent of primary directory `p`.
    fn primary_dir(&self, p: usize, ce: &mut ContinuationAreas) -> Vec<u8> {
        let rr = self.opts.rock_ridge;
        let dir = &self.pdirs[p];
        let parent = &self.pdirs[dir.parent];
        let mut out = Vec::with_capacity(SECTOR);
        let mut record = |out: &mut Vec<u8>, name: &[u8], lba, size, node, flags, entries| {
            let system_use = if rr {
                let base = 33 + name.len() + usize::from(name.len() % 2 == 0);
                ce.pack(entries, 254 - base)
            } else {
                Vec::new()
            };
            let time = self.time_of(node);
            push_record(out, &DirRecord { name, lba, size, time, flags, system_use: &system_use });
        };

        let mut dot = Vec::new();
        if p == 0 {
            dot.push(susp::sp());
        }
        dot.extend(self.rr_attrs(dir.node));
        if p == 0 {
            dot.push(susp::er());
        }
        record(&mut out, &[0], dir.lba, dir.size, dir.node, FLAG_DIRECTORY, dot);

        let mut dotdot = self.rr_attrs(parent.node);
        if let Some(logical) = dir.logical_parent {
            dotdot.push(susp::pl(self.pdirs[logical].lba));
        }
        record(&mut out, &[1], parent.lba, parent.size, parent.node, FLAG_DIRECTORY, dotdot);

        for child in &dir.children {
            let ident = child.name.as_ref().expect("names assigned in build_primary").identifier();
            let nm = susp::nm(child.rr_name);
            match child.kind {
                PKind::Dir(x) | PKind::Relocated(x) => {
                    let sub = &self.pdirs[x];
                    let mut e = self.rr_attrs(sub.node);
                    e.extend(nm);
                    if matches!(child.kind, PKind::Relocated(_)) {
                        e.push(susp::re());
                    }
                    record(&mut out, &ident, sub.lba, sub.size, sub.node, FLAG_DIRECTORY, e);
                }
                PKind::Placeholder(x) => {
                    let sub = &self.pdirs[x];
                    let mut e = self.rr_attrs(sub.node);
                    e.extend(nm);
                    e.push(susp::cl(sub.lba));
                    record(&mut out, &ident, 0, 0, sub.node, 0, e);
                }
                PKind::Symlink(n) => {
                    let NodeKind::Symlink { target } = &self.tree.nodes[n].kind else {
                        unreachable!("PKind::Symlink holds symlink nodes");
                    };
                    let mut e = self.rr_attrs(Some(n));
                    e.extend(nm);
                    e.extend(susp::sl(target));
                    record(&mut out, &ident, 0, 0, Some(n), 0, e);
                }
                PKind::File(n) => {
                    for (lba, size, flags) in self.extents(n) {
                        let mut e = self.rr_attrs(Some(n));
                        e.extend(nm.iter().cloned());
                        record(&mut out, &ident, lba, size, Some(n), flags, e);
                    }
                }
            }
        }
        out.resize(out.len().next_multiple_of(SECTOR), 0);
        out
    }

    /// Encodes the extent of Joliet directory `j`.
    fn joliet_dir(&self, j: usize) -> Vec<u8> {
        let dir = &self.jdirs[j];
        let parent = &self.jdirs[dir.parent];
        let mut out = Vec::with_capacity(SECTOR);
        let record = |out: &mut Vec<u8>, name: &[u8], lba, size, node: NodeId, flags| {
            let time = self.time_of(Some(node));
            push_record(out, &DirRecord { name, lba, size, time, flags, system_use: &[] });
        };
        record(&mut out, &[0], dir.lba, dir.size, dir.node, FLAG_DIRECTORY);
        record(&mut out, &[1], parent.lba, parent.size, parent.node, FLAG_DIRECTORY);
        for (name, kind) in &dir.children {
            let ident = &joliet_name(name);
            match *kind {
                JKind::Dir(x) => {
                    let sub = &self.jdirs[x];
                    record(&mut out, ident, sub.lba, sub.size, sub.node, FLAG_DIRECTORY);
                }
                JKind::File(n) => {
                    for (lba, size, flags) in self.extents(n) {
                        record(&mut out, ident, lba, size, n, flags);
                    }
                }
            }
        }
        out.resize(out.len().next_multiple_of(SECTOR), 0);
        out
    }

    /// The directory records' view of file `n`: one `(lba, size, flags)` per extent, all
    /// but the last flagged multi-extent. An empty file has one empty extent at block 0.
    fn extents(&self, n: NodeId) -> Vec<(u32, u32, u8)> {
        let size = file_size(self.tree, n);
        let first = self.file_index[n].map_or(0, |i| self.files[i].1);
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

    fn primary_path_table(&self, big_endian: bool) -> Vec<u8> {
        let mut t = Vec::new();
        for d in &self.pdirs {
            raw::path_table_record(&mut t, &d.ident, d.lba, d.parent as u16 + 1, big_endian);
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

impl PDir<'_> {
    fn new(node: Option<NodeId>, path: String, level: u32, parent: usize) -> Self {
        PDir {
            node,
            path,
            level,
            parent,
            logical_parent: None,
            children: Vec::new(),
            ident: Vec::new(),
            lba: 0,
            size: 0,
        }
    }
}

impl<'a> PChild<'a> {
    fn new(name: &'a str, kind: PKind) -> Self {
        PChild { rr_name: name, kind, name: None }
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

fn file_size(tree: &IsoTree, n: NodeId) -> u64 {
    match &tree.nodes[n].kind {
        NodeKind::File { size, .. } => *size,
        _ => 0,
    }
}

fn root_record(lba: u32, size: u32, time: i64) -> [u8; 34] {
    let mut buf = Vec::with_capacity(34);
    DirRecord { name: &[0], lba, size, time, flags: FLAG_DIRECTORY, system_use: &[] }
        .encode(&mut buf);
    buf.try_into().expect("a root record is 34 bytes")
}

/// Appends a record, moving to the next sector first if it would cross a boundary.
fn push_record(out: &mut Vec<u8>, rec: &DirRecord<'_>) {
    if out.len() % SECTOR + rec.len() > SECTOR {
        out.resize(out.len().next_multiple_of(SECTOR), 0);
    }
    rec.encode(out);
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

    /// Streams file `n`'s contents and pads to a sector boundary.
    fn file(&mut self, tree: &IsoTree, n: NodeId) -> Result<(), WriteError> {
        let NodeKind::File { data, size } = &tree.nodes[n].kind else {
            unreachable!("only file nodes are in the file list");
        };
        match data {
            FileData::Bytes(bytes) => self.put(bytes)?,
            FileData::Disk(path) => {
                let file = File::open(path)
                    .map_err(|source| WriteError::OpenFile { path: path.clone(), source })?;
                let found = file
                    .metadata()
                    .map_err(|source| WriteError::OpenFile { path: path.clone(), source })?
                    .len();
                let changed = |found| WriteError::CheckFileSize {
                    path: path.clone(),
                    expected: *size,
                    found,
                };
                if found != *size {
                    return Err(changed(found));
                }
                // `io::copy` from a `File` to a `File` uses copy_file_range/sendfile, so the
                // bytes need not pass through this process.
                let copied = io::copy(&mut (&file).take(*size), self.out)
                    .map_err(|source| WriteError::CopyFile { path: path.clone(), source })?;
                self.written += copied;
                if copied != *size {
                    return Err(changed(copied));
                }
            }
        }
        self.pad()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Node;

    fn image(tree: &IsoTree) -> Vec<u8> {
        let mut opts = IsoOptions::new("cidata");
        opts.timestamp = Some(0);
        let mut out = Vec::new();
        write_iso(tree, &opts, &mut out).expect("in-memory write");
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
        let node = tree.children(ROOT).next().expect("one child").1;
        let Node { kind: NodeKind::File { size: s, .. }, .. } = &mut tree.nodes[node] else {
            unreachable!("added a file");
        };
        *s = size;

        let opts = IsoOptions::new("x");
        let mut plan = Plan::new(&tree, &opts).expect("plan");
        plan.lay_out().expect("layout");
        let extents = plan.extents(node);
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
        let ids: Vec<String> = plan.pdirs[0]
            .children
            .iter()
            .map(|c| String::from_utf8(c.name.expect("named").identifier()).expect("ascii"))
            .collect();
        assert_eq!(
            ids,
            ["ALPHA.TXT;1", "ALPHA_1.TXT;1", "BETA_LON.MD;1", "BETA_L_1.MD;1", "ZETA.;1"]
        );
    }
}
