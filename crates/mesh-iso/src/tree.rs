//! The in-memory description of what goes into an image: directories, files (bytes or a
//! path on disk, read only when the image is written) and symbolic links, with their POSIX
//! attributes.

use std::collections::BTreeMap;
use std::fs::{self, Metadata};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

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

/// Where the bytes of a file come from.
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
    /// A directory; children by name, so iteration order is deterministic.
    Dir { children: BTreeMap<String, NodeId> },
    /// A regular file of `size` bytes.
    File { data: FileData, size: u64 },
    /// A symbolic link.
    Symlink { target: String },
}

/// One entry of the tree with its POSIX attributes.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub kind: NodeKind,
    /// Permission bits (`0o7777`), without the file type.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time in Unix seconds; `None` means "when the image is written".
    pub mtime: Option<i64>,
}

impl Node {
    fn dir(mode: u32) -> Self {
        Node {
            kind: NodeKind::Dir { children: BTreeMap::new() },
            mode: mode & 0o7777,
            uid: 0,
            gid: 0,
            mtime: None,
        }
    }

    fn with_disk_attrs(mut self, meta: &Metadata) -> Self {
        self.mode = meta.mode() & 0o7777;
        self.uid = meta.uid();
        self.gid = meta.gid();
        self.mtime = Some(meta.mtime());
        self
    }
}

/// An in-memory description of an image's content.
///
/// File contents are either bytes held here or a disk path that is opened and streamed
/// only when the image is written, so describing a large tree costs memory proportional
/// to the number of entries, not to their size.
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
// FIXME: memory is about 500 bytes per entry while writing (12 MiB at 20,000 files, 48 MiB
// at 100,000), so trees beyond ~130,000 entries exceed the 64 MiB goal. Keeping one disk
// path per directory instead of per file, or describing the tree directory by directory
// while writing, would bound it; matters only for repositories far larger than ours.
#[derive(Debug, Clone)]
pub struct IsoTree {
    pub(crate) nodes: Vec<Node>,
}

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
        IsoTree { nodes: vec![Node::dir(0o755)] }
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
        let attrs = Node::dir(0).with_disk_attrs(&meta);
        let node = &mut self.nodes[dir];
        (node.mode, node.uid, node.gid, node.mtime) =
            (attrs.mode, attrs.uid, attrs.gid, attrs.mtime);

        self.graft(dir, iso_path.trim_matches('/'), disk_dir)
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
        let node = Node {
            kind: NodeKind::File { data: FileData::Disk(disk_file.to_owned()), size: meta.len() },
            ..Node::dir(0)
        }
        .with_disk_attrs(&meta);
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
        let node = Node {
            kind: NodeKind::File { data: FileData::Bytes(contents), size },
            ..Node::dir(mode)
        };
        self.insert(iso_path, node)
    }

    /// Adds a directory (and any missing parents, mode 0755). If the directory already
    /// exists its mode is set to `mode`.
    pub fn add_dir(&mut self, iso_path: &str, mode: u32) -> Result<(), TreeError> {
        let components = split_path(iso_path, false)?;
        let dir = self.ensure_dir(iso_path, &components)?;
        self.nodes[dir].mode = mode & 0o7777;
        Ok(())
    }

    /// Adds a symbolic link to `target`, which may be relative, absolute, or dangling.
    /// Rock Ridge records it; without Rock Ridge the image cannot be written.
    pub fn add_symlink(&mut self, iso_path: &str, target: &str) -> Result<(), TreeError> {
        check_symlink_target(iso_path, target)?;
        let node =
            Node { kind: NodeKind::Symlink { target: target.to_owned() }, ..Node::dir(0o777) };
        self.insert(iso_path, node)
    }

    /// Inserts `node` at `iso_path`, creating missing parents.
    fn insert(&mut self, iso_path: &str, node: Node) -> Result<(), TreeError> {
        let components = split_path(iso_path, false)?;
        let (name, parents) = components.split_last().expect("split_path returns a component");
        let parent = self.ensure_dir(iso_path, parents)?;
        self.attach(parent, name, node, iso_path).map(drop)
    }

    /// Adds `node` as child `name` of directory `parent`.
    fn attach(
        &mut self,
        parent: NodeId,
        name: &str,
        node: Node,
        iso_path: &str,
    ) -> Result<NodeId, TreeError> {
        let id = self.nodes.len();
        let NodeKind::Dir { children } = &mut self.nodes[parent].kind else {
            unreachable!("attach is only called with directories");
        };
        if children.contains_key(name) {
            return Err(TreeError::AlreadyExists { path: iso_path.to_owned() });
        }
        children.insert(name.to_owned(), id);
        self.nodes.push(node);
        Ok(id)
    }

    /// Walks (and creates, mode 0755) the directories named by `components`.
    fn ensure_dir(&mut self, iso_path: &str, components: &[&str]) -> Result<NodeId, TreeError> {
        let mut dir = ROOT;
        for (depth, name) in components.iter().enumerate() {
            let NodeKind::Dir { children } = &self.nodes[dir].kind else {
                unreachable!("ensure_dir only descends into directories");
            };
            dir = match children.get(*name) {
                Some(&child) => {
                    if !matches!(self.nodes[child].kind, NodeKind::Dir { .. }) {
                        return Err(TreeError::NotADirectory {
                            path: components[..=depth].join("/"),
                        });
                    }
                    child
                }
                None => self.attach(dir, name, Node::dir(0o755), iso_path)?,
            };
        }
        Ok(dir)
    }

    /// Copies the entries below `disk_dir` into directory node `dir`.
    fn graft(&mut self, dir: NodeId, iso_dir: &str, disk_dir: &Path) -> Result<(), TreeError> {
        let read = |source| TreeError::ReadDir { path: disk_dir.to_owned(), source };
        let mut entries = Vec::new();
        for entry in fs::read_dir(disk_dir).map_err(read)? {
            let entry = entry.map_err(read)?;
            let path = entry.path();
            let name = entry
                .file_name()
                .into_string()
                .map_err(|_| TreeError::NonUtf8Name { path: path.clone() })?;
            entries.push((name, path));
        }
        // Sorted so errors and node numbering do not depend on the directory's order.
        entries.sort();

        for (name, path) in entries {
            let iso_path =
                if iso_dir.is_empty() { name.clone() } else { format!("{iso_dir}/{name}") };
            let meta = fs::symlink_metadata(&path)
                .map_err(|source| TreeError::Stat { path: path.clone(), source })?;
            let ft = meta.file_type();
            if ft.is_dir() {
                let child = match self.child(dir, &name) {
                    Some(existing) if matches!(self.nodes[existing].kind, NodeKind::Dir { .. }) => {
                        existing
                    }
                    Some(_) => return Err(TreeError::AlreadyExists { path: iso_path }),
                    None => self.attach(dir, &name, Node::dir(0), &iso_path)?,
                };
                let attrs = Node::dir(0).with_disk_attrs(&meta);
                let node = &mut self.nodes[child];
                (node.mode, node.uid, node.gid, node.mtime) =
                    (attrs.mode, attrs.uid, attrs.gid, attrs.mtime);
                self.graft(child, &iso_path, &path)?;
            } else if ft.is_file() {
                let data = FileData::Disk(path);
                let node = Node { kind: NodeKind::File { data, size: meta.len() }, ..Node::dir(0) };
                self.attach(dir, &name, node.with_disk_attrs(&meta), &iso_path)?;
            } else if ft.is_symlink() {
                let target = fs::read_link(&path)
                    .map_err(|source| TreeError::ReadLink { path: path.clone(), source })?;
                let target = target
                    .into_os_string()
                    .into_string()
                    .map_err(|_| TreeError::NonUtf8Name { path: path.clone() })?;
                check_symlink_target(&iso_path, &target)?;
                let node = Node { kind: NodeKind::Symlink { target }, ..Node::dir(0) };
                self.attach(dir, &name, node.with_disk_attrs(&meta), &iso_path)?;
            } else {
                let kind = special_kind(&meta).unwrap_or("special file");
                return Err(TreeError::SpecialFile { path, kind });
            }
        }
        Ok(())
    }

    fn child(&self, dir: NodeId, name: &str) -> Option<NodeId> {
        match &self.nodes[dir].kind {
            NodeKind::Dir { children } => children.get(name).copied(),
            _ => None,
        }
    }

    /// The children of directory `id` in name order; empty for other nodes.
    pub(crate) fn children(&self, id: NodeId) -> impl Iterator<Item = (&str, NodeId)> + '_ {
        let map = match &self.nodes[id].kind {
            NodeKind::Dir { children } => Some(children),
            _ => None,
        };
        map.into_iter().flat_map(|m| m.iter().map(|(k, v)| (k.as_str(), *v)))
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
        assert_eq!(tree.nodes[a].mode, 0o755);
        assert_eq!(tree.nodes[b].mode, 0o755);
        let c = tree.child(b, "c.txt").expect("file added");
        assert_eq!(tree.nodes[c].mode, 0o600);
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
        assert_eq!(tree.nodes[d].mode, 0o700);
    }
}
