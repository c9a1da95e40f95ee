//! The description of what goes into an image: directories, files (bytes, or a path on
//! disk read only when the image is written) and symbolic links, with their POSIX
//! attributes. Directories and entries added one by one are nodes in memory; the files and
//! links of directories described from disk are records in the [catalog](crate::catalog).

use std::collections::BTreeMap;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::catalog::{Catalog, Record, RecordKind, Run, RunReader, RunWriter, CHUNK};
use crate::spill::Sorter;

/// Longest name component Rock Ridge readers (and Linux) accept, in bytes.
const MAX_NAME_BYTES: usize = 255;

/// Errors raised while describing the tree.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// An image path was empty, had an empty, `.` or `..` component, a NUL byte, or a
    /// component longer than 255 bytes.
    #[error("invalid image path {path:?}: {reason}")]
    InvalidPath {
        /// The image path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A component of the image path exists and is not a directory.
    #[error("{path:?} in the image is not a directory")]
    NotADirectory {
        /// The image path of the non-directory.
        path: String,
    },
    /// Something already exists at the image path.
    #[error("{path:?} already exists in the image")]
    AlreadyExists {
        /// The image path.
        path: String,
    },
    /// `lstat`/`stat` of a disk path failed.
    #[error("cannot stat {path}")]
    Stat {
        /// The disk path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Listing a disk directory failed.
    #[error("cannot read directory {path}")]
    ReadDir {
        /// The disk directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading a symbolic link on disk failed.
    #[error("cannot read symbolic link {path}")]
    ReadLink {
        /// The disk path of the link.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A disk entry is a socket, device or FIFO, which an ISO image cannot carry.
    #[error("{path} is a {kind}, which an ISO image cannot hold")]
    SpecialFile {
        /// The disk path.
        path: PathBuf,
        /// `socket`, `FIFO`, `block device` or `character device`.
        kind: &'static str,
    },
    /// A disk path given as a file is not a regular file, or as a directory is not one.
    #[error("{path} is not a {expected}")]
    WrongFileType {
        /// The disk path.
        path: PathBuf,
        /// What it should have been.
        expected: &'static str,
    },
    /// A disk name (or symbolic link target) is not valid UTF-8.
    #[error("{path} has a name that is not valid UTF-8")]
    NonUtf8Name {
        /// The disk path, lossily printable.
        path: PathBuf,
    },
    /// The tree would have more directories than an image can number (65535).
    #[error("{path:?} is one directory more than the 65535 an ISO 9660 image can hold")]
    NumberDirectories {
        /// The image path of the first directory over the limit.
        path: String,
    },
    /// Creating the temporary file that records the entries found on disk failed.
    #[error("cannot create a temporary file in {path}")]
    CreateCatalog {
        /// The temporary directory (`TMPDIR`).
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Recording entries found on disk in the temporary file failed.
    #[error("cannot record entries in the temporary file")]
    WriteCatalog {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Sorting the names of a disk directory (in a temporary file, for a large one) failed.
    #[error("cannot sort the names of directory {path}")]
    SortNames {
        /// The disk directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading recorded entries back from the temporary file failed.
    #[error("cannot read recorded entries back from the temporary file")]
    ReadCatalog {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A symbolic link target is empty, contains NUL, or is not valid UTF-8.
    #[error("symbolic link {path:?} has an invalid target: {reason}")]
    InvalidSymlinkTarget {
        /// The image path (or disk path) of the link.
        path: String,
        /// What is wrong with the target.
        reason: &'static str,
    },
}

/// Index of a node in [`IsoTree::nodes`].
pub(crate) type NodeId = usize;

/// Most directories an image can hold: path tables number them with 16 bits.
pub(crate) const MAX_DIRECTORIES: usize = u16::MAX as usize;

/// Where the bytes of a file held as a node come from.
#[derive(Debug, Clone)]
pub(crate) enum FileData {
    /// Held in memory.
    Bytes(Vec<u8>),
    /// Read from this disk path while the image is written.
    Disk(PathBuf),
}

/// What a node is.
#[derive(Debug, Clone)]
pub(crate) enum NodeKind {
    /// A directory: its subdirectories and the entries added one by one, by name (so
    /// iteration order is deterministic), plus the files and symbolic links of the disk
    /// directories grafted here, which live in the catalog.
    Dir { children: BTreeMap<String, NodeId>, runs: Vec<Run> },
    /// A regular file of `size` bytes.
    File { data: FileData, size: u64 },
    /// A symbolic link.
    Symlink { target: String },
}

/// The POSIX attributes of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attrs {
    /// Permission bits (`0o7777`), without the file type.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time in Unix seconds; `None` means "when the image is written".
    pub mtime: Option<i64>,
    /// The Rock Ridge serial number (PX): the entry's position in the order entries were
    /// described, starting at 1 for the root.
    pub serial: u32,
}

impl Attrs {
    fn from_disk(meta: &Metadata, serial: u32) -> Self {
        Attrs {
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: Some(meta.mtime()),
            serial,
        }
    }
}

/// A directory, or an entry added one by one, with its POSIX attributes.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub kind: NodeKind,
    pub attrs: Attrs,
    /// The directory holding this node (the root holds itself).
    pub parent: NodeId,
}

impl Node {
    fn dir(mode: u32) -> Self {
        Node::new(NodeKind::Dir { children: BTreeMap::new(), runs: Vec::new() }, mode)
    }

    /// A node owned by root, timestamped when the image is written; `attach` numbers it.
    fn new(kind: NodeKind, mode: u32) -> Self {
        let attrs = Attrs { mode: mode & 0o7777, uid: 0, gid: 0, mtime: None, serial: 0 };
        Node { kind, attrs, parent: ROOT }
    }

    fn is_dir(&self) -> bool {
        matches!(self.kind, NodeKind::Dir { .. })
    }

    /// Takes the mode, owner, group and time of `meta`, keeping the serial number.
    fn set_disk_attrs(&mut self, meta: &Metadata) {
        self.attrs = Attrs::from_disk(meta, self.attrs.serial);
    }
}

/// One child of a directory as the writer sees it, whether a node or a catalog record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub name: String,
    pub kind: EntryKind,
    pub attrs: Attrs,
}

/// What a child is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Dir(NodeId),
    File { size: u64, source: FileSource },
    Symlink { target: String },
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileSource {
    /// A file node (bytes in memory, or a disk path of its own).
    Node(NodeId),
    /// A file of the disk directory of the run that starts at chunk `i` of its
    /// directory's list ([`IsoTree::disk_dir_of_run`]).
    Disk(u32),
}

impl Entry {
    fn of_node(tree: &IsoTree, name: &str, id: NodeId) -> Self {
        let node = &tree.nodes[id];
        let kind = match &node.kind {
            NodeKind::Dir { .. } => EntryKind::Dir(id),
            NodeKind::File { size, .. } => {
                EntryKind::File { size: *size, source: FileSource::Node(id) }
            }
            NodeKind::Symlink { target } => EntryKind::Symlink { target: target.clone() },
        };
        Entry { name: name.to_owned(), kind, attrs: node.attrs }
    }

    fn of_record(record: Record<'_>, first_chunk: u32) -> Self {
        let kind = match record.kind {
            RecordKind::File { size } => {
                EntryKind::File { size, source: FileSource::Disk(first_chunk) }
            }
            RecordKind::Symlink { target } => EntryKind::Symlink { target: target.to_owned() },
        };
        Entry { name: record.name.to_owned(), kind, attrs: record.attrs }
    }
}

/// The records of one run (one graft of a disk directory), a chunk at a time.
#[derive(Debug)]
struct RunCursor {
    catalog: Arc<Catalog>,
    chunks: Vec<Run>,
    /// Index of the run's first chunk in its directory's list.
    first: u32,
    next_chunk: usize,
    current: Option<RunReader>,
    next_record: usize,
}

impl RunCursor {
    fn next(&mut self) -> io::Result<Option<Entry>> {
        loop {
            if let Some(reader) = &self.current {
                if self.next_record < reader.len() {
                    let record = reader.record(self.next_record);
                    self.next_record += 1;
                    return Ok(Some(Entry::of_record(record, self.first)));
                }
            }
            let Some(&chunk) = self.chunks.get(self.next_chunk) else {
                self.current = None;
                return Ok(None);
            };
            self.next_chunk += 1;
            self.current = Some(self.catalog.read(chunk)?);
            self.next_record = 0;
        }
    }
}

/// The catalog entries of one directory in name order: a merge of its runs, each sorted
/// by name, holding one chunk of each. It owns what it reads, so it can be kept while the
/// tree changes.
#[derive(Debug)]
struct RunMerge {
    /// Each run with its next entry.
    runs: Vec<(RunCursor, Option<Entry>)>,
}

impl RunMerge {
    fn new(catalog: Option<&Arc<Catalog>>, chunks: &[Run]) -> io::Result<Self> {
        let mut runs = Vec::new();
        let Some(catalog) = catalog else {
            return Ok(RunMerge { runs });
        };
        let mut start = 0;
        while start < chunks.len() {
            let end = start + 1 + chunks[start + 1..].iter().take_while(|c| c.continues).count();
            let mut cursor = RunCursor {
                catalog: Arc::clone(catalog),
                chunks: chunks[start..end].to_vec(),
                first: start as u32,
                next_chunk: 0,
                current: None,
                next_record: 0,
            };
            let head = cursor.next()?;
            runs.push((cursor, head));
            start = end;
        }
        Ok(RunMerge { runs })
    }

    /// The run holding the smallest next name, if any entry is left.
    fn smallest(&self) -> Option<usize> {
        let mut best: Option<(usize, &str)> = None;
        for (i, (_, head)) in self.runs.iter().enumerate() {
            if let Some(head) = head {
                if best.is_none_or(|(_, name)| head.name.as_str() < name) {
                    best = Some((i, &head.name));
                }
            }
        }
        best.map(|(i, _)| i)
    }

    fn peek_name(&self) -> Option<&str> {
        let i = self.smallest()?;
        self.runs[i].1.as_ref().map(|e| e.name.as_str())
    }

    fn next(&mut self) -> io::Result<Option<Entry>> {
        let Some(i) = self.smallest() else {
            return Ok(None);
        };
        let (cursor, head) = &mut self.runs[i];
        let refill = cursor.next()?;
        Ok(std::mem::replace(head, refill))
    }

    /// Skips the entries named before `name`; says whether one is named `name`. Calls must
    /// come in ascending order of names.
    fn skip_to(&mut self, name: &str) -> io::Result<bool> {
        while let Some(next) = self.peek_name() {
            match next.cmp(name) {
                std::cmp::Ordering::Less => drop(self.next()?),
                std::cmp::Ordering::Equal => return Ok(true),
                std::cmp::Ordering::Greater => return Ok(false),
            }
        }
        Ok(false)
    }
}

/// The children of one directory in name order, nodes and catalog records alike, read as
/// they are needed: a directory of any size takes one chunk of records per run.
#[derive(Debug)]
pub(crate) struct Listing<'t> {
    tree: &'t IsoTree,
    nodes: std::iter::Peekable<std::collections::btree_map::Iter<'t, String, NodeId>>,
    runs: RunMerge,
}

impl Listing<'_> {
    /// The next child, or `None` after the last.
    pub(crate) fn next(&mut self) -> io::Result<Option<Entry>> {
        // Names are unique across nodes and runs.
        let node_first = match (self.nodes.peek(), self.runs.peek_name()) {
            (Some((node, _)), Some(record)) => node.as_str() < record,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if node_first {
            let (name, &id) = self.nodes.next().expect("peeked");
            return Ok(Some(Entry::of_node(self.tree, name, id)));
        }
        self.runs.next()
    }
}

/// An in-memory description of an image's content.
///
/// File contents are either bytes held here or a disk path that is opened and streamed
/// only when the image is written. Directories, and entries added one by one, are held in
/// memory; the files and symbolic links of directories described from disk
/// ([`IsoTree::from_dir`], [`IsoTree::add_dir_from_disk`]) are recorded in an unnamed
/// temporary file in [`std::env::temp_dir`] instead, and directories of more entries than
/// the sort memory holds ([`IsoTree::set_sort_memory`]) are sorted on temporary files, so
/// describing and writing a large tree takes memory in proportion to its number of
/// directories (at most 65535 in an image), whatever its number of files and the size of
/// its largest directory.
///
/// What is recorded is what the disk held when the tree was described: later changes to
/// those directories are not picked up, and a file whose size changed is an error when the
/// image is written.
///
/// # Examples
///
/// ```
/// use mesh_iso::IsoTree;
///
/// let mut tree = IsoTree::new();
/// tree.add_file_bytes("scripts/build.sh", b"#!/bin/sh\n".to_vec(), 0o755)?;
/// tree.add_symlink("build", "scripts/build.sh")?;
/// tree.add_dir("empty", 0o700)?;
/// # Ok::<(), mesh_iso::TreeError>(())
/// ```
// FIXME: two things still grow. Each directory costs about 560 bytes while an image is
// written (35 MiB peak RSS for 63,000 directories; an image holds at most 65535), more with
// long names. And describing keeps, for every directory from the root down to the one
// being read, its sorted names not yet visited: in memory, halved at each level down, so at
// most twice the sort memory plus 64 KiB a level; but a directory whose sort spilled keeps
// up to 16 open runs with their read buffers, so only a chain of hundreds of nested
// directories, each of more than 64 KiB of names, would add up. Measured: 1,000,000 entries
// in one directory peak at 24 MiB RSS.
#[derive(Debug, Clone)]
pub struct IsoTree {
    pub(crate) nodes: Vec<Node>,
    /// Entries described so far, the root included: the last serial number handed out.
    described: u32,
    /// Directories in the tree, the root included.
    dirs: usize,
    /// Created on the first directory described from disk.
    catalog: Option<Arc<Catalog>>,
    /// Bytes a sort of one directory's entries may hold in memory.
    sort_memory: usize,
}

/// The least sort memory a directory deep in a graft gets (see `IsoTree::graft`).
const MIN_SORT_MEMORY: usize = 64 << 10;

/// Default of [`IsoTree::set_sort_memory`].
const DEFAULT_SORT_MEMORY: usize = 4 << 20;

impl Default for IsoTree {
    fn default() -> Self {
        Self::new()
    }
}

/// The root node's index.
pub(crate) const ROOT: NodeId = 0;

impl IsoTree {
    /// An empty tree: just the root directory, mode 0755, owned by root.
    pub fn new() -> Self {
        let mut root = Node::dir(0o755);
        root.attrs.serial = 1;
        IsoTree {
            nodes: vec![root],
            described: 1,
            dirs: 1,
            catalog: None,
            sort_memory: DEFAULT_SORT_MEMORY,
        }
    }

    /// Sets how many bytes sorting the entries of one directory may hold in memory, when
    /// directories are described from disk and when the image is written (4 MiB by
    /// default). A directory whose entries need more is sorted in pieces in an unnamed
    /// temporary file (in `TMPDIR`) and merged back, with the same result: only memory
    /// and temporary-file traffic change.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut tree = mesh_iso::IsoTree::new();
    /// tree.set_sort_memory(1 << 20);
    /// tree.add_file_bytes("a", b"a".to_vec(), 0o644)?;
    /// # Ok::<(), mesh_iso::TreeError>(())
    /// ```
    pub fn set_sort_memory(&mut self, bytes: usize) {
        self.sort_memory = bytes;
    }

    /// Bytes a sort of one directory's entries may hold in memory.
    pub(crate) fn sort_memory(&self) -> usize {
        self.sort_memory
    }

    /// Describes the content of `dir`: every file, directory and symbolic link below it
    /// with its mode, owner, group and modification time. The root of the image takes the
    /// attributes of `dir` itself.
    ///
    /// Symbolic links are kept as links (never followed). Sockets, devices and FIFOs, and
    /// names that are not UTF-8, are errors naming the offending path.
    pub fn from_dir(dir: &Path) -> Result<Self, TreeError> {
        let mut tree = IsoTree::new();
        tree.add_dir_from_disk("", dir)?;
        Ok(tree)
    }

    /// Grafts the content of `disk_dir` at `iso_path` (`""` is the root), merging with
    /// directories already there. The directory at `iso_path` takes the attributes of
    /// `disk_dir`.
    pub fn add_dir_from_disk(&mut self, iso_path: &str, disk_dir: &Path) -> Result<(), TreeError> {
        let meta = fs::metadata(disk_dir)
            .map_err(|source| TreeError::Stat { path: disk_dir.to_owned(), source })?;
        if !meta.is_dir() {
            return Err(TreeError::WrongFileType {
                path: disk_dir.to_owned(),
                expected: "directory",
            });
        }

        let components = split_path(iso_path, true)?;
        let dir = self.ensure_dir(iso_path, &components)?;
        self.nodes[dir].set_disk_attrs(&meta);
        self.graft(dir, iso_path.trim_matches('/'), disk_dir, 0)?;
        // Up to half the vector is room to grow, which a large tree need not keep.
        self.nodes.shrink_to_fit();
        Ok(())
    }

    /// Adds the regular file `disk_file` at `iso_path` with its mode, owner, group and
    /// modification time. Its contents are read only when the image is written.
    pub fn add_file_from_disk(
        &mut self,
        iso_path: &str,
        disk_file: &Path,
    ) -> Result<(), TreeError> {
        let meta = fs::metadata(disk_file)
            .map_err(|source| TreeError::Stat { path: disk_file.to_owned(), source })?;
        if let Some(kind) = special_kind(&meta) {
            return Err(TreeError::SpecialFile { path: disk_file.to_owned(), kind });
        }
        if !meta.is_file() {
            return Err(TreeError::WrongFileType {
                path: disk_file.to_owned(),
                expected: "regular file",
            });
        }
        let data = FileData::Disk(disk_file.to_owned());
        let mut node = Node::new(NodeKind::File { data, size: meta.len() }, 0);
        node.set_disk_attrs(&meta);
        self.insert(iso_path, node)
    }

    /// Adds a file with the given contents and permission bits, owned by root, timestamped
    /// when the image is written (or with the fixed timestamp of the options).
    pub fn add_file_bytes(
        &mut self,
        iso_path: &str,
        contents: Vec<u8>,
        mode: u32,
    ) -> Result<(), TreeError> {
        let size = contents.len() as u64;
        let node = Node::new(NodeKind::File { data: FileData::Bytes(contents), size }, mode);
        self.insert(iso_path, node)
    }

    /// Adds a directory (and any missing parents, mode 0755). If the directory already
    /// exists its mode is set to `mode`.
    pub fn add_dir(&mut self, iso_path: &str, mode: u32) -> Result<(), TreeError> {
        let components = split_path(iso_path, false)?;
        let dir = self.ensure_dir(iso_path, &components)?;
        self.nodes[dir].attrs.mode = mode & 0o7777;
        Ok(())
    }

    /// Adds a symbolic link to `target`, which may be relative, absolute, or dangling.
    /// Rock Ridge records it; without Rock Ridge the image cannot be written.
    pub fn add_symlink(&mut self, iso_path: &str, target: &str) -> Result<(), TreeError> {
        check_symlink_target(iso_path, target)?;
        let node = Node::new(NodeKind::Symlink { target: target.to_owned() }, 0o777);
        self.insert(iso_path, node)
    }

    /// Inserts `node` at `iso_path`, creating missing parents.
    fn insert(&mut self, iso_path: &str, node: Node) -> Result<(), TreeError> {
        let components = split_path(iso_path, false)?;
        let (name, parents) = components.split_last().expect("split_path returns a component");
        let parent = self.ensure_dir(iso_path, parents)?;
        if self.in_catalog(parent, name)? {
            return Err(TreeError::AlreadyExists { path: iso_path.to_owned() });
        }
        self.attach(parent, name, node, iso_path).map(drop)
    }

    /// Adds `node` as child `name` of directory `parent`, numbering it. Names in the
    /// catalog are the caller's to check.
    fn attach(
        &mut self,
        parent: NodeId,
        name: &str,
        mut node: Node,
        iso_path: &str,
    ) -> Result<NodeId, TreeError> {
        let id = self.nodes.len();
        let is_dir = node.is_dir();
        if is_dir && self.dirs >= MAX_DIRECTORIES {
            return Err(TreeError::NumberDirectories { path: iso_path.to_owned() });
        }
        let NodeKind::Dir { children, .. } = &mut self.nodes[parent].kind else {
            unreachable!("attach is only called with directories");
        };
        if children.contains_key(name) {
            return Err(TreeError::AlreadyExists { path: iso_path.to_owned() });
        }
        children.insert(name.to_owned(), id);
        node.attrs.serial = self.next_serial();
        node.parent = parent;
        self.nodes.push(node);
        self.dirs += usize::from(is_dir);
        Ok(id)
    }

    /// The number of entries described, the root included: the last serial number.
    pub(crate) fn described(&self) -> u32 {
        self.described
    }

    fn next_serial(&mut self) -> u32 {
        self.described += 1;
        self.described
    }

    /// Walks (and creates, mode 0755) the directories named by `components`.
    fn ensure_dir(&mut self, iso_path: &str, components: &[&str]) -> Result<NodeId, TreeError> {
        let mut dir = ROOT;
        for (depth, name) in components.iter().enumerate() {
            let not_a_dir = || TreeError::NotADirectory { path: components[..=depth].join("/") };
            dir = match self.child(dir, name) {
                Some(child) if self.nodes[child].is_dir() => child,
                Some(_) => return Err(not_a_dir()),
                // Only files and symbolic links are in the catalog.
                None if self.in_catalog(dir, name)? => return Err(not_a_dir()),
                None => self.attach(dir, name, Node::dir(0o755), iso_path)?,
            };
        }
        Ok(dir)
    }

    /// Copies the entries below `disk_dir` into directory node `dir`, `depth` levels below
    /// the directory the graft started at: subdirectories as nodes, everything else as one
    /// catalog run.
    fn graft(
        &mut self,
        dir: NodeId,
        iso_dir: &str,
        disk_dir: &Path,
        depth: u32,
    ) -> Result<(), TreeError> {
        let read = |source| TreeError::ReadDir { path: disk_dir.to_owned(), source };
        let sort = |source| TreeError::SortNames { path: disk_dir.to_owned(), source };
        // Each directory on the way down keeps its sorted names not yet visited while its
        // subdirectories are read, so each level down may hold half as much as the one above
        // it: the whole chain then holds at most twice the sort memory, plus the floor per
        // level.
        let memory = (self.sort_memory >> depth.min(usize::BITS - 1)).max(MIN_SORT_MEMORY);
        let mut names = Sorter::new(memory.min(self.sort_memory));
        for entry in fs::read_dir(disk_dir).map_err(read)? {
            let entry = entry.map_err(read)?;
            let name = entry
                .file_name()
                .into_string()
                .map_err(|_| TreeError::NonUtf8Name { path: entry.path() })?;
            names.push(name).map_err(sort)?;
        }
        // Sorted so errors and serial numbers do not depend on the directory's order.
        let mut names = names.finish().map_err(sort)?;
        // Files and links an earlier graft put here, which the new entries must not hit.
        let mut earlier =
            self.run_merge(dir).map_err(|source| TreeError::ReadCatalog { source })?;

        let mut run = RunWriter::new(disk_dir);
        let mut continues = false;
        while let Some(name) = names.next().map_err(sort)? {
            let path = disk_dir.join(&name);
            let iso_path = || join(iso_dir, &name);
            let taken =
                earlier.skip_to(&name).map_err(|source| TreeError::ReadCatalog { source })?;
            let meta = fs::symlink_metadata(&path)
                .map_err(|source| TreeError::Stat { path: path.clone(), source })?;
            let ft = meta.file_type();
            if ft.is_dir() {
                let child = match self.child(dir, &name) {
                    Some(existing) if self.nodes[existing].is_dir() => existing,
                    Some(_) => return Err(TreeError::AlreadyExists { path: iso_path() }),
                    None if taken => return Err(TreeError::AlreadyExists { path: iso_path() }),
                    None => self.attach(dir, &name, Node::dir(0), &iso_path())?,
                };
                self.nodes[child].set_disk_attrs(&meta);
                self.graft(child, &iso_path(), &path, depth + 1)?;
            } else if ft.is_file() {
                if taken || self.child(dir, &name).is_some() {
                    return Err(TreeError::AlreadyExists { path: iso_path() });
                }
                run.file(&name, meta.len(), &Attrs::from_disk(&meta, self.next_serial()));
            } else if ft.is_symlink() {
                let target = fs::read_link(&path)
                    .map_err(|source| TreeError::ReadLink { path: path.clone(), source })?;
                let target = target
                    .into_os_string()
                    .into_string()
                    .map_err(|_| TreeError::NonUtf8Name { path: path.clone() })?;
                check_symlink_target(&iso_path(), &target)?;
                if taken || self.child(dir, &name).is_some() {
                    return Err(TreeError::AlreadyExists { path: iso_path() });
                }
                run.symlink(&name, &target, &Attrs::from_disk(&meta, self.next_serial()));
            } else {
                let kind = special_kind(&meta).unwrap_or("special file");
                return Err(TreeError::SpecialFile { path, kind });
            }
            // A run goes to the catalog a chunk at a time, so a huge directory is never
            // held whole.
            if run.len() >= CHUNK {
                self.store_run(dir, &run, continues)?;
                run = RunWriter::new(disk_dir);
                continues = true;
            }
        }
        self.store_run(dir, &run, continues)
    }

    /// Appends the chunk `run` to the catalog (created on first use) as part of directory
    /// `dir`; `continues` says whether it continues the run of the chunk stored before it.
    fn store_run(
        &mut self,
        dir: NodeId,
        run: &RunWriter,
        continues: bool,
    ) -> Result<(), TreeError> {
        if run.is_empty() {
            return Ok(());
        }
        let catalog = match &self.catalog {
            Some(c) => c,
            None => {
                let c = Catalog::new().map_err(|source| TreeError::CreateCatalog {
                    path: std::env::temp_dir(),
                    source,
                })?;
                self.catalog.insert(Arc::new(c))
            }
        };
        let stored =
            catalog.append(run, continues).map_err(|source| TreeError::WriteCatalog { source })?;
        let NodeKind::Dir { runs, .. } = &mut self.nodes[dir].kind else {
            unreachable!("runs are only stored in directories");
        };
        // Nearly every directory gets exactly one chunk: no room for more.
        if !continues {
            runs.reserve_exact(1);
        }
        runs.push(stored);
        Ok(())
    }

    /// The catalog entries of directory `dir` as they are now, in name order.
    fn run_merge(&self, dir: NodeId) -> io::Result<RunMerge> {
        match &self.nodes[dir].kind {
            NodeKind::Dir { runs, .. } => RunMerge::new(self.catalog.as_ref(), runs),
            _ => RunMerge::new(None, &[]),
        }
    }

    /// Whether directory `dir` has a catalog entry called `name`.
    // Reads the directory's runs each time: adding entries one by one into a large
    // directory described from disk is quadratic, which no caller does.
    fn in_catalog(&self, dir: NodeId, name: &str) -> Result<bool, TreeError> {
        let read = |source| TreeError::ReadCatalog { source };
        self.run_merge(dir).map_err(read)?.skip_to(name).map_err(read)
    }

    /// The disk directory of the files of the run that starts at chunk `first` of
    /// directory `dir` ([`FileSource::Disk`]).
    pub(crate) fn disk_dir_of_run(&self, dir: NodeId, first: u32) -> io::Result<PathBuf> {
        let (NodeKind::Dir { runs, .. }, Some(catalog)) = (&self.nodes[dir].kind, &self.catalog)
        else {
            unreachable!("disk files belong to directories with runs");
        };
        catalog.disk_dir(runs[first as usize])
    }

    fn child(&self, dir: NodeId, name: &str) -> Option<NodeId> {
        match &self.nodes[dir].kind {
            NodeKind::Dir { children, .. } => children.get(name).copied(),
            _ => None,
        }
    }

    /// The number of subdirectories of directory `dir`.
    pub(crate) fn subdirs(&self, dir: NodeId) -> usize {
        match &self.nodes[dir].kind {
            NodeKind::Dir { children, .. } => {
                children.values().filter(|&&c| self.nodes[c].is_dir()).count()
            }
            _ => 0,
        }
    }

    /// The children of directory `dir` (nodes and catalog records alike), by name.
    pub(crate) fn listing(&self, dir: NodeId) -> io::Result<Listing<'_>> {
        static NO_CHILDREN: BTreeMap<String, NodeId> = BTreeMap::new();
        let (children, runs) = match &self.nodes[dir].kind {
            NodeKind::Dir { children, .. } => (children, self.run_merge(dir)?),
            _ => (&NO_CHILDREN, RunMerge::new(None, &[])?),
        };
        Ok(Listing { tree: self, nodes: children.iter().peekable(), runs })
    }

    /// The same tree with every catalog record made a node, the way trees were held before
    /// the catalog existed: what the writer must not be able to tell apart.
    #[cfg(test)]
    pub(crate) fn without_catalog(&self) -> IsoTree {
        let mut out = self.clone();
        out.catalog = None;
        for dir in 0..self.nodes.len() {
            let mut records = self.run_merge(dir).expect("catalog readable");
            while let Some(record) = records.next().expect("catalog readable") {
                let kind = match record.kind {
                    EntryKind::File { size, source: FileSource::Disk(first) } => {
                        let disk = self.disk_dir_of_run(dir, first).expect("catalog readable");
                        NodeKind::File { data: FileData::Disk(disk.join(&record.name)), size }
                    }
                    EntryKind::Symlink { target } => NodeKind::Symlink { target },
                    _ => unreachable!("the catalog holds files and symbolic links"),
                };
                let id = out.nodes.len();
                out.nodes.push(Node { kind, attrs: record.attrs, parent: dir });
                let NodeKind::Dir { children, .. } = &mut out.nodes[dir].kind else {
                    unreachable!("runs belong to directories");
                };
                children.insert(record.name, id);
            }
            if let NodeKind::Dir { runs, .. } = &mut out.nodes[dir].kind {
                runs.clear();
            }
        }
        out
    }

    /// The image path of node `id`, for error messages.
    pub(crate) fn path_of(&self, id: NodeId) -> String {
        let mut parts = Vec::new();
        let mut at = id;
        while at != ROOT {
            let parent = self.nodes[at].parent;
            if let NodeKind::Dir { children, .. } = &self.nodes[parent].kind {
                if let Some((name, _)) = children.iter().find(|(_, &c)| c == at) {
                    parts.push(name.as_str());
                }
            }
            at = parent;
        }
        parts.reverse();
        parts.join("/")
    }
}

/// `dir/name`, or `name` at the root.
pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// Splits an image path into components; `allow_root` accepts `""` / `"/"`.
fn split_path(iso_path: &str, allow_root: bool) -> Result<Vec<&str>, TreeError> {
    let invalid = |reason| TreeError::InvalidPath { path: iso_path.to_owned(), reason };
    let trimmed = iso_path.trim_matches('/');
    if trimmed.is_empty() {
        return if allow_root { Ok(Vec::new()) } else { Err(invalid("it names the root")) };
    }
    if trimmed.contains('\0') {
        return Err(invalid("it contains a NUL byte"));
    }
    let components: Vec<&str> = trimmed.split('/').collect();
    for c in &components {
        match *c {
            "" => return Err(invalid("it has an empty component")),
            "." | ".." => return Err(invalid("it has a `.` or `..` component")),
            c if c.len() > MAX_NAME_BYTES => return Err(invalid("a component exceeds 255 bytes")),
            _ => {}
        }
    }
    Ok(components)
}

fn check_symlink_target(iso_path: &str, target: &str) -> Result<(), TreeError> {
    let invalid = |reason| TreeError::InvalidSymlinkTarget { path: iso_path.to_owned(), reason };
    if target.is_empty() {
        return Err(invalid("it is empty"));
    }
    if target.contains('\0') {
        return Err(invalid("it contains a NUL byte"));
    }
    if target.len() > 4095 {
        return Err(invalid("it exceeds 4095 bytes"));
    }
    Ok(())
}

fn special_kind(meta: &Metadata) -> Option<&'static str> {
    let ft = meta.file_type();
    if ft.is_socket() {
        Some("socket")
    } else if ft.is_fifo() {
        Some("FIFO")
    } else if ft.is_block_device() {
        Some("block device")
    } else if ft.is_char_device() {
        Some("character device")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_parents_are_created_with_mode_0755() {
        let mut tree = IsoTree::new();
        tree.add_file_bytes("a/b/c.txt", b"x".to_vec(), 0o600).expect("valid path");
        let a = tree.child(ROOT, "a").expect("a created");
        let b = tree.child(a, "b").expect("b created");
        assert_eq!(tree.nodes[a].attrs.mode, 0o755);
        assert_eq!(tree.nodes[b].attrs.mode, 0o755);
        let c = tree.child(b, "c.txt").expect("file added");
        assert_eq!(tree.nodes[c].attrs.mode, 0o600);
    }

    #[test]
    fn duplicate_and_through_file_paths_are_rejected() {
        let mut tree = IsoTree::new();
        tree.add_file_bytes("f", Vec::new(), 0o644).expect("valid path");
        assert!(matches!(
            tree.add_file_bytes("f", Vec::new(), 0o644),
            Err(TreeError::AlreadyExists { path }) if path == "f"
        ));
        assert!(matches!(
            tree.add_dir("f/g", 0o755),
            Err(TreeError::NotADirectory { path }) if path == "f"
        ));
    }

    #[test]
    fn bad_image_paths_are_rejected() {
        let mut tree = IsoTree::new();
        for bad in ["", "/", "a//b", "a/../b", "./a"] {
            assert!(
                matches!(tree.add_dir(bad, 0o755), Err(TreeError::InvalidPath { .. })),
                "{bad:?} accepted"
            );
        }
        let long = "x".repeat(256);
        assert!(matches!(tree.add_dir(&long, 0o755), Err(TreeError::InvalidPath { .. })));
    }

    #[test]
    fn empty_symlink_target_is_rejected() {
        let mut tree = IsoTree::new();
        assert!(matches!(
            tree.add_symlink("l", ""),
            Err(TreeError::InvalidSymlinkTarget { path, .. }) if path == "l"
        ));
    }

    #[test]
    fn add_dir_on_existing_dir_sets_mode() {
        let mut tree = IsoTree::new();
        tree.add_file_bytes("d/f", Vec::new(), 0o644).expect("valid path");
        tree.add_dir("d", 0o700).expect("existing dir");
        let d = tree.child(ROOT, "d").expect("d exists");
        assert_eq!(tree.nodes[d].attrs.mode, 0o700);
    }

    /// The children of `dir`, in listing order.
    fn children(tree: &IsoTree, dir: NodeId) -> Vec<Entry> {
        let mut listing = tree.listing(dir).expect("listing");
        let mut out = Vec::new();
        while let Some(entry) = listing.next().expect("listing") {
            out.push(entry);
        }
        out
    }

    fn names(tree: &IsoTree, dir: NodeId) -> Vec<String> {
        children(tree, dir).into_iter().map(|e| e.name).collect()
    }

    fn disk_tree() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        fs::create_dir_all(root.join("d/sub")).expect("mkdir");
        fs::write(root.join("a.txt"), b"a").expect("write");
        fs::write(root.join("d/b.txt"), b"b").expect("write");
        std::os::unix::fs::symlink("../a.txt", root.join("d/link")).expect("symlink");
        tmp
    }

    #[test]
    fn disk_files_and_links_live_in_the_catalog_and_directories_in_memory() {
        let src = disk_tree();
        let tree = IsoTree::from_dir(src.path()).expect("tree");
        // The root, d and d/sub: no node per file or link.
        assert_eq!(tree.nodes.len(), 3);
        assert_eq!(tree.described(), 6);
        let d = tree.child(ROOT, "d").expect("d");
        let listing = children(&tree, d);
        let names: Vec<&str> = listing.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["b.txt", "link", "sub"]);
        assert_eq!(listing[1].kind, EntryKind::Symlink { target: "../a.txt".to_owned() });
        assert!(matches!(listing[2].kind, EntryKind::Dir(_)));
        // Serial numbers follow the order entries were described, depth first.
        let serials: Vec<u32> = listing.iter().map(|e| e.attrs.serial).collect();
        assert_eq!(serials, [4, 5, 6]);
    }

    #[test]
    fn entries_added_over_disk_entries_are_refused_by_path() {
        let src = disk_tree();
        let mut tree = IsoTree::from_dir(src.path()).expect("tree");
        for path in ["a.txt", "d/b.txt", "d/link"] {
            assert!(
                matches!(
                    tree.add_file_bytes(path, Vec::new(), 0o644),
                    Err(TreeError::AlreadyExists { path: p }) if p == path
                ),
                "{path}"
            );
        }
        assert!(matches!(
            tree.add_symlink("d/b.txt", "x"),
            Err(TreeError::AlreadyExists { path }) if path == "d/b.txt"
        ));
        assert!(matches!(
            tree.add_dir("d/b.txt/deeper", 0o755),
            Err(TreeError::NotADirectory { path }) if path == "d/b.txt"
        ));
        // Beside them, and into a directory from disk, is fine; the listing merges both.
        tree.add_file_bytes("d/c.txt", Vec::new(), 0o644).expect("new name");
        tree.add_file_bytes("d/sub/x", Vec::new(), 0o644).expect("into a disk directory");
        let d = tree.child(ROOT, "d").expect("d");
        assert_eq!(names(&tree, d), ["b.txt", "c.txt", "link", "sub"]);
    }

    #[test]
    fn grafts_that_collide_are_refused_and_disjoint_ones_merge() {
        let first = disk_tree();
        let second = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(second.path().join("d")).expect("mkdir");
        fs::write(second.path().join("d/z.txt"), b"z").expect("write");
        fs::write(second.path().join("top"), b"t").expect("write");

        let mut tree = IsoTree::from_dir(first.path()).expect("tree");
        tree.add_dir_from_disk("", second.path()).expect("disjoint");
        let d = tree.child(ROOT, "d").expect("d");
        assert_eq!(names(&tree, d), ["b.txt", "link", "sub", "z.txt"]);

        // A file over a disk file, a directory over a disk file, a file over a directory.
        let clash = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(clash.path().join("d")).expect("mkdir");
        fs::write(clash.path().join("d/b.txt"), b"again").expect("write");
        let err = IsoTree::from_dir(first.path())
            .and_then(|mut t| t.add_dir_from_disk("", clash.path()))
            .expect_err("file over file");
        assert!(matches!(&err, TreeError::AlreadyExists { path } if path == "d/b.txt"), "{err}");

        let clash = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(clash.path().join("a.txt")).expect("mkdir");
        let err = IsoTree::from_dir(first.path())
            .and_then(|mut t| t.add_dir_from_disk("", clash.path()))
            .expect_err("directory over file");
        assert!(matches!(&err, TreeError::AlreadyExists { path } if path == "a.txt"), "{err}");

        let clash = tempfile::tempdir().expect("tempdir");
        fs::write(clash.path().join("d"), b"not a dir").expect("write");
        let err = IsoTree::from_dir(first.path())
            .and_then(|mut t| t.add_dir_from_disk("", clash.path()))
            .expect_err("file over directory");
        assert!(matches!(&err, TreeError::AlreadyExists { path } if path == "d"), "{err}");
    }

    #[test]
    fn what_was_described_is_what_is_listed_even_if_the_disk_changes() {
        let src = disk_tree();
        let tree = IsoTree::from_dir(src.path()).expect("tree");
        fs::write(src.path().join("d/later.txt"), b"new").expect("write");
        fs::remove_file(src.path().join("d/link")).expect("rm");
        let d = tree.child(ROOT, "d").expect("d");
        assert_eq!(names(&tree, d), ["b.txt", "link", "sub"]);
    }

    #[test]
    fn directories_beyond_what_an_image_can_number_are_refused() {
        let mut tree = IsoTree::new();
        for i in 1..MAX_DIRECTORIES {
            tree.add_dir(&format!("d{i}"), 0o755).expect("within the limit");
        }
        assert!(matches!(
            tree.add_file_bytes("one-more/f", Vec::new(), 0o644),
            Err(TreeError::NumberDirectories { path }) if path == "one-more/f"
        ));
        tree.add_file_bytes("files-are-fine", Vec::new(), 0o644).expect("not a directory");
    }
}
