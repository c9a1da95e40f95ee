//! A small initramfs writer: a `newc` cpio archive built in memory, for direct kernel boot.
//!
//! Tiny probe and test guests boot a distribution kernel with an initramfs made here: busybox,
//! a few kernel modules (with their dependencies resolved from `modules.dep`) and an `/init`
//! shell script. The archive is uncompressed, since the kernel accepts a plain cpio and
//! compressing a few megabytes costs more time than it saves under TCG.
//!
//! What it leaves out: it starts no process (no `depmod`, no `cpio`), it does not fetch kernels
//! or busybox (see `mesh-testkit`), it writes no hard links and no uid/gid other than root.
//!
//! Output is deterministic: entries are written sorted by path (so every parent directory comes
//! before its children), with inode numbers assigned in that order and every mtime set to the
//! same fixed value, so the same inputs always give the same bytes.
//!
//! # Examples
//!
//! ```
//! use mesh_qemu::initramfs::{busybox_init_script, InitramfsBuilder};
//!
//! let mut builder = InitramfsBuilder::new();
//! builder
//!     .dir("/proc", 0o755)
//!     .char_device("/dev/console", 5, 1, 0o600)
//!     .symlink("/bin/sh", "busybox")
//!     .file_bytes("/init", busybox_init_script(&[], "echo hello").into_bytes(), 0o755);
//!
//! let mut archive = Vec::new();
//! builder.write(&mut archive)?;
//! assert!(archive.starts_with(b"070701"));
//! # Ok::<(), mesh_qemu::initramfs::InitramfsError>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Magic of the `newc` ("new ASCII", no checksum) cpio format, the one the kernel unpacks.
const NEWC_MAGIC: &[u8; 6] = b"070701";

/// Name of the entry that ends every cpio archive.
const TRAILER: &str = "TRAILER!!!";

/// File type bits of `st_mode`, as in `<sys/stat.h>`.
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// The permission part of a mode (including setuid, setgid and sticky bits).
const PERMISSION_BITS: u32 = 0o7777;

/// Mode given to parent directories that were not added explicitly.
const IMPLICIT_DIR_MODE: u32 = 0o755;

/// Module file suffixes that may appear in `modules.dep`, longest first so that `.ko.xz` is not
/// taken for `.ko`.
const MODULE_SUFFIXES: [&str; 4] = [".ko.zst", ".ko.xz", ".ko.gz", ".ko"];

/// Errors from building or writing an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// A file to copy into the archive could not be read.
    #[error("cannot read {path} for the initramfs")]
    ReadFile {
        /// The file on disk.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// A path inside the archive was empty, contained `..` or `.`, or a NUL byte.
    #[error("invalid path inside the initramfs: {path:?}")]
    InvalidPath {
        /// The path as given.
        path: String,
    },

    /// An entry was added below a path that is not a directory.
    #[error("{path} is inside {parent}, which is not a directory")]
    ParentNotDirectory {
        /// The entry that was added.
        path: String,
        /// The non-directory entry on its way.
        parent: String,
    },

    /// An entry is too large for the 32-bit size field of the newc format.
    #[error("{path} is {size} bytes, more than newc cpio can hold")]
    EntryTooLarge {
        /// The entry inside the archive.
        path: String,
        /// Its size in bytes.
        size: usize,
    },

    /// The module directory has no usable `modules.dep` and could not be scanned either.
    #[error("cannot read the module index of {modules_dir}")]
    ReadModuleIndex {
        /// The `lib/modules/<version>` directory.
        modules_dir: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// A requested module is neither a loadable module nor built into the kernel.
    #[error("module {name} is not in {modules_dir} and not built into the kernel")]
    UnknownModule {
        /// The module name as requested.
        name: String,
        /// The `lib/modules/<version>` directory searched.
        modules_dir: PathBuf,
    },

    /// A module is compressed in a format busybox `insmod` cannot load.
    #[error("module {path} is zstd-compressed, which busybox insmod cannot load")]
    UnsupportedModuleCompression {
        /// The module file.
        path: PathBuf,
    },

    /// Writing the archive to the output failed.
    #[error("cannot write the initramfs archive")]
    WriteArchive {
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// One entry of the archive, keyed by its normalised path in [`InitramfsBuilder`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir { mode: u32 },
    File { contents: Vec<u8>, mode: u32 },
    Symlink { target: String },
    CharDevice { major: u32, minor: u32, mode: u32 },
}

/// Collects the files of an initramfs and writes them as a `newc` cpio archive.
///
/// Paths are absolute or relative to the archive root (`/init` and `init` are the same entry);
/// adding a path twice replaces the first entry. Missing parent directories are created with
/// mode 0755. Modes are permission bits (`0o755`); the type bits are added from the method.
/// Every entry is owned by root.
#[derive(Debug, Clone, Default)]
pub struct InitramfsBuilder {
    entries: BTreeMap<String, Node>,
    // Invalid paths are remembered and reported by `write`, so that the adding methods can
    // stay chainable.
    invalid_paths: Vec<String>,
}

impl InitramfsBuilder {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory with the given permission bits.
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.insert(path, Node::Dir { mode: mode & PERMISSION_BITS })
    }

    /// Adds a regular file with the given contents and permission bits.
    pub fn file_bytes(&mut self, path: &str, contents: Vec<u8>, mode: u32) -> &mut Self {
        self.insert(path, Node::File { contents, mode: mode & PERMISSION_BITS })
    }

    /// Adds a regular file read from `disk` (read now, not when writing).
    pub fn file_from_disk(
        &mut self,
        path: &str,
        disk: &Path,
        mode: u32,
    ) -> Result<&mut Self, InitramfsError> {
        let contents = fs::read(disk)
            .map_err(|source| InitramfsError::ReadFile { path: disk.to_path_buf(), source })?;
        Ok(self.file_bytes(path, contents, mode))
    }

    /// Adds a symbolic link pointing at `target` (stored as given, relative or absolute).
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.insert(path, Node::Symlink { target: target.to_owned() })
    }

    /// Adds a character device node, such as `/dev/console` (5, 1), which the kernel opens
    /// for the first process before any devtmpfs is mounted.
    pub fn char_device(&mut self, path: &str, major: u32, minor: u32, mode: u32) -> &mut Self {
        self.insert(path, Node::CharDevice { major, minor, mode: mode & PERMISSION_BITS })
    }

    /// Adds a static busybox at `/bin/busybox` plus `/bin/sh`, the directories its
    /// `--install -s` fills, and `/dev/console`, `/proc`, `/sys` and `/tmp`: what
    /// [`busybox_init_script`] expects.
    pub fn busybox(&mut self, busybox: &Path) -> Result<&mut Self, InitramfsError> {
        self.file_from_disk("/bin/busybox", busybox, 0o755)?;
        self.symlink("/bin/sh", "busybox");
        for dir in ["/sbin", "/usr/bin", "/usr/sbin", "/proc", "/sys", "/dev", "/mnt"] {
            self.dir(dir, 0o755);
        }
        self.dir("/tmp", 0o1777);
        self.char_device("/dev/console", 5, 1, 0o600);
        Ok(self)
    }

    /// Adds the named modules and everything they depend on, from a `lib/modules/<version>`
    /// directory, and returns the paths inside the archive in load order (dependencies
    /// first), ready for `insmod`.
    ///
    /// Names may use `-` or `_` (`virtio_blk`, `nls-cp437`). Dependencies come from
    /// `modules.dep`; a directory straight out of a kernel package has none (Debian runs
    /// `depmod` at install time), so then the tree is scanned and each module's own
    /// `depends=` field is read instead. Modules listed in `modules.builtin` are skipped
    /// silently. Modules compressed with xz or gzip are copied as they are: busybox `insmod`
    /// decompresses those itself. zstd-compressed modules are refused, since busybox cannot.
    pub fn modules(
        &mut self,
        modules_dir: &Path,
        names: &[&str],
    ) -> Result<Vec<String>, InitramfsError> {
        let index = ModuleIndex::load(modules_dir)?;
        let version = modules_dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();

        let mut order = Vec::new();
        let mut visited = BTreeSet::new();
        for name in names {
            let key = module_key(name);
            if index.modules.contains_key(&key) {
                index.visit(&key, &mut visited, &mut order);
            } else if !index.builtin.contains(&key) {
                return Err(InitramfsError::UnknownModule {
                    name: (*name).to_owned(),
                    modules_dir: modules_dir.to_path_buf(),
                });
            }
        }

        let mut load_order = Vec::with_capacity(order.len());
        for key in order {
            let relative = &index.modules[&key].relative_path;
            let disk = modules_dir.join(relative);
            // FIXME: zstd modules would need a decoder here (ruzstd, pure Rust); matters for
            // kernels built with MODULE_COMPRESS_ZSTD (Ubuntu), not Debian (none or xz).
            if relative.ends_with(".ko.zst") {
                return Err(InitramfsError::UnsupportedModuleCompression { path: disk });
            }
            let inside = format!("/lib/modules/{version}/{relative}");
            self.file_from_disk(&inside, &disk, 0o644)?;
            load_order.push(inside);
        }
        Ok(load_order)
    }

    /// Writes the archive: every entry in path order, then the trailer, padded as the kernel
    /// expects.
    pub fn write<W: Write>(&self, out: W) -> Result<(), InitramfsError> {
        if let Some(path) = self.invalid_paths.first() {
            return Err(InitramfsError::InvalidPath { path: path.clone() });
        }
        let entries = self.with_implicit_dirs()?;

        let mut writer = NewcWriter { out, written: 0, next_inode: 1 };
        for (path, node) in &entries {
            writer.entry(path, node)?;
        }
        writer.trailer()
    }

    fn insert(&mut self, path: &str, node: Node) -> &mut Self {
        match normalise(path) {
            Some(path) => {
                self.entries.insert(path, node);
            }
            None => self.invalid_paths.push(path.to_owned()),
        }
        self
    }

    /// The entries plus every parent directory not added explicitly, checking that no entry
    /// sits below a non-directory.
    fn with_implicit_dirs(&self) -> Result<BTreeMap<&str, Node>, InitramfsError> {
        let mut all: BTreeMap<&str, Node> =
            self.entries.iter().map(|(path, node)| (path.as_str(), node.clone())).collect();
        for path in self.entries.keys() {
            let mut end = 0;
            while let Some(slash) = path[end..].find('/') {
                let parent = &path[..end + slash];
                match all.get(parent) {
                    None => {
                        all.insert(parent, Node::Dir { mode: IMPLICIT_DIR_MODE });
                    }
                    Some(Node::Dir { .. }) => {}
                    Some(_) => {
                        return Err(InitramfsError::ParentNotDirectory {
                            path: path.clone(),
                            parent: parent.to_owned(),
                        })
                    }
                }
                end += slash + 1;
            }
        }
        Ok(all)
    }
}

/// Returns the path without leading or doubled slashes, or `None` if it cannot name an entry.
fn normalise(path: &str) -> Option<String> {
    let components: Vec<&str> = path.split('/').filter(|part| !part.is_empty()).collect();
    let valid = !components.is_empty()
        && !path.contains('\0')
        && components.iter().all(|part| *part != "." && *part != "..");
    valid.then(|| components.join("/"))
}

/// A `modules.dep` path relative to the modules directory. depmod writes relative paths,
/// but very old ones and some hand-made files write `/lib/modules/<version>/kernel/...`.
fn relative_module_path(path: &str) -> &str {
    const MODULES: &str = "/lib/modules/";
    if !path.starts_with('/') {
        return path;
    }
    let Some(at) = path.find(MODULES) else {
        return path.trim_start_matches('/');
    };
    let after_modules = &path[at + MODULES.len()..];
    after_modules.split_once('/').map_or(after_modules, |(_version, rest)| rest)
}

/// The name `modprobe` would use for a module file or a requested module: no directory, no
/// suffix, dashes as underscores.
fn module_key(name_or_path: &str) -> String {
    let base = name_or_path.rsplit('/').next().unwrap_or(name_or_path);
    let stem = MODULE_SUFFIXES.iter().find_map(|suffix| base.strip_suffix(suffix)).unwrap_or(base);
    stem.replace('-', "_")
}

/// Where one module lives and what it needs.
#[derive(Debug)]
struct ModuleInfo {
    /// Path relative to the modules directory, as `modules.dep` writes it.
    relative_path: String,
    /// Keys of the modules it depends on.
    depends: Vec<String>,
}

/// The modules of one kernel, from `modules.dep` or from scanning the tree.
#[derive(Debug, Default)]
struct ModuleIndex {
    modules: BTreeMap<String, ModuleInfo>,
    builtin: BTreeSet<String>,
}

impl ModuleIndex {
    fn load(modules_dir: &Path) -> Result<Self, InitramfsError> {
        let read_error = |source| InitramfsError::ReadModuleIndex {
            modules_dir: modules_dir.to_path_buf(),
            source,
        };

        let mut index = ModuleIndex::default();
        match fs::read_to_string(modules_dir.join("modules.builtin")) {
            Ok(text) => index.builtin = text.lines().map(module_key).collect(),
            // A kernel with every driver modular has no built-in list; nothing to skip.
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(read_error(error)),
        }

        match fs::read_to_string(modules_dir.join("modules.dep")) {
            Ok(text) => index.parse_modules_dep(&text),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                index.scan(modules_dir, modules_dir).map_err(read_error)?;
            }
            Err(error) => return Err(read_error(error)),
        }
        Ok(index)
    }

    /// Reads `modules.dep` lines: `kernel/fs/isofs/isofs.ko: kernel/lib/dep.ko ...`. depmod
    /// lists every dependency, direct or not; the visit below orders them regardless.
    fn parse_modules_dep(&mut self, text: &str) {
        for line in text.lines() {
            let Some((module, depends)) = line.split_once(':') else {
                continue;
            };
            let module = module.trim();
            self.modules.insert(
                module_key(module),
                ModuleInfo {
                    relative_path: relative_module_path(module).to_owned(),
                    depends: depends.split_whitespace().map(module_key).collect(),
                },
            );
        }
    }

    /// Walks the tree for module files and reads each one's `depends=` field from its
    /// `.modinfo` strings, for a directory on which `depmod` was never run.
    fn scan(&mut self, modules_dir: &Path, dir: &Path) -> io::Result<()> {
        let mut children: Vec<_> = fs::read_dir(dir)?.collect::<io::Result<_>>()?;
        children.sort_by_key(|entry| entry.file_name());
        for child in children {
            let path = child.path();
            if child.file_type()?.is_dir() {
                self.scan(modules_dir, &path)?;
                continue;
            }
            let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
                continue;
            };
            if !MODULE_SUFFIXES.iter().any(|suffix| name.ends_with(suffix)) {
                continue;
            }
            let relative = path
                .strip_prefix(modules_dir)
                .expect("scan only descends below modules_dir")
                .to_string_lossy()
                .into_owned();
            // FIXME: compressed modules found by scanning are taken to have no dependencies;
            // matters only for a kernel that compresses modules and ships no modules.dep.
            let depends =
                if name.ends_with(".ko") { modinfo_depends(&fs::read(&path)?) } else { Vec::new() };
            self.modules.insert(module_key(name), ModuleInfo { relative_path: relative, depends });
        }
        Ok(())
    }

    /// Depth-first: every dependency is pushed before the module needing it, each once.
    fn visit(&self, key: &str, visited: &mut BTreeSet<String>, order: &mut Vec<String>) {
        if !visited.insert(key.to_owned()) {
            return;
        }
        if let Some(info) = self.modules.get(key) {
            for dependency in &info.depends {
                self.visit(dependency, visited, order);
            }
            order.push(key.to_owned());
        }
    }
}

/// The `depends=` value of a module's `.modinfo` section, found as a NUL-delimited
/// `depends=a,b` string in the ELF file; modinfo strings are the only place that byte sequence
/// appears in practice, so the ELF structure is not walked.
fn modinfo_depends(module: &[u8]) -> Vec<String> {
    const FIELD: &[u8] = b"\0depends=";
    let Some(start) = module.windows(FIELD.len()).position(|window| window == FIELD) else {
        return Vec::new();
    };
    let value = &module[start + FIELD.len()..];
    let end = value.iter().position(|byte| *byte == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|name| !name.is_empty())
        .map(module_key)
        .collect()
}

/// Writes newc records, tracking the offset for 4-byte alignment.
struct NewcWriter<W> {
    out: W,
    written: u64,
    next_inode: u32,
}

/// The numeric fields of one newc header, in the order the format lays them out.
struct NewcHeader {
    inode: u32,
    mode: u32,
    nlink: u32,
    file_size: u32,
    rdev_major: u32,
    rdev_minor: u32,
}

impl<W: Write> NewcWriter<W> {
    fn entry(&mut self, path: &str, node: &Node) -> Result<(), InitramfsError> {
        let (mode, nlink, data, rdev) = match node {
            Node::Dir { mode } => (S_IFDIR | mode, 2, &[][..], (0, 0)),
            Node::File { contents, mode } => (S_IFREG | mode, 1, contents.as_slice(), (0, 0)),
            Node::Symlink { target } => (S_IFLNK | 0o777, 1, target.as_bytes(), (0, 0)),
            Node::CharDevice { major, minor, mode } => {
                (S_IFCHR | mode, 1, &[][..], (*major, *minor))
            }
        };
        let file_size = u32::try_from(data.len()).map_err(|_| InitramfsError::EntryTooLarge {
            path: path.to_owned(),
            size: data.len(),
        })?;

        let inode = self.next_inode;
        self.next_inode += 1;
        let header =
            NewcHeader { inode, mode, nlink, file_size, rdev_major: rdev.0, rdev_minor: rdev.1 };
        self.record(path, &header, data).map_err(|source| InitramfsError::WriteArchive { source })
    }

    fn trailer(&mut self) -> Result<(), InitramfsError> {
        let header =
            NewcHeader { inode: 0, mode: 0, nlink: 1, file_size: 0, rdev_major: 0, rdev_minor: 0 };
        self.record(TRAILER, &header, &[])
            .and_then(|()| self.out.flush())
            .map_err(|source| InitramfsError::WriteArchive { source })
    }

    /// Header, NUL-terminated name, padding to 4 bytes, data, padding to 4 bytes.
    fn record(&mut self, name: &str, header: &NewcHeader, data: &[u8]) -> io::Result<()> {
        let name_size = name.len() + 1;
        let fields = [
            header.inode,
            header.mode,
            0, // uid
            0, // gid
            header.nlink,
            0, // mtime: fixed, so that the archive is reproducible
            header.file_size,
            0, // device major of the file system: meaningless here
            0, // device minor
            header.rdev_major,
            header.rdev_minor,
            u32::try_from(name_size).map_err(|_| io::Error::other("entry name too long"))?,
            0, // check: always zero in newc (only the 070702 "crc" variant uses it)
        ];
        let mut head = Vec::with_capacity(110 + name_size + 3);
        head.extend_from_slice(NEWC_MAGIC);
        for field in fields {
            head.extend_from_slice(format!("{field:08X}").as_bytes());
        }
        head.extend_from_slice(name.as_bytes());
        head.push(0);
        self.emit(&head)?;
        self.pad()?;
        self.emit(data)?;
        self.pad()
    }

    fn emit(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let padding = (4 - self.written % 4) % 4;
        self.emit(&[0; 3][..padding as usize])
    }
}

/// Returns an `/init` script for an initramfs made with [`InitramfsBuilder::busybox`]: it
/// installs the busybox applet links, mounts proc, sysfs and devtmpfs, loads the modules in the
/// given order (the paths [`InitramfsBuilder::modules`] returned), runs `body`, then syncs
/// and powers the machine off so that QEMU exits instead of the kernel panicking when init
/// ends.
///
/// A module that fails to load is reported on the console and the script goes on: the body
/// usually fails more informatively (a missing device, an unknown file system).
pub fn busybox_init_script(module_load_order: &[String], body: &str) -> String {
    let mut script = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s\n\
         export PATH=/bin:/sbin:/usr/bin:/usr/sbin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n",
    );
    for module in module_load_order {
        let quoted = shell_quote(module);
        script.push_str(&format!(
            "insmod {quoted} || echo \"init: insmod {} failed\"\n",
            module.replace(['"', '\\', '$', '`'], "_")
        ));
    }
    script.push_str("\n# body\n");
    script.push_str(body);
    if !body.ends_with('\n') {
        script.push('\n');
    }
    script.push_str("# end of body\nsync\npoweroff -f\n");
    script
}

/// Quotes a word for a POSIX shell.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parsed newc record: (name, header fields, data).
    type Record = (String, [u32; 13], Vec<u8>);

    /// A minimal reader, written from the format description, to check the layout; the
    /// integration tests use GNU cpio as the independent reader.
    fn parse(archive: &[u8]) -> Vec<Record> {
        let mut records = Vec::new();
        let mut offset = 0;
        loop {
            assert_eq!(&archive[offset..offset + 6], NEWC_MAGIC, "magic at {offset}");
            let mut fields = [0u32; 13];
            for (index, field) in fields.iter_mut().enumerate() {
                let start = offset + 6 + index * 8;
                let text = std::str::from_utf8(&archive[start..start + 8]).expect("ASCII hex");
                *field = u32::from_str_radix(text, 16).expect("hex field");
            }
            let name_size = fields[11] as usize;
            let name_start = offset + 110;
            let name = &archive[name_start..name_start + name_size];
            assert_eq!(name.last(), Some(&0), "name is NUL-terminated");
            let name = String::from_utf8(name[..name_size - 1].to_vec()).expect("UTF-8 name");
            let data_start = (name_start + name_size).next_multiple_of(4);
            let data_end = data_start + fields[6] as usize;
            let data = archive[data_start..data_end].to_vec();
            offset = data_end.next_multiple_of(4);
            let done = name == TRAILER;
            records.push((name, fields, data));
            if done {
                assert_eq!(offset, archive.len(), "nothing after the trailer");
                return records;
            }
        }
    }

    fn archive(builder: &InitramfsBuilder) -> Vec<u8> {
        let mut out = Vec::new();
        builder.write(&mut out).expect("write to a Vec");
        out
    }

    #[test]
    fn empty_archive_is_only_the_trailer() {
        let bytes = archive(&InitramfsBuilder::new());
        let records = parse(&bytes);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].0, TRAILER);
        assert_eq!(records[0].1[4], 1, "trailer nlink");
        assert_eq!(bytes.len(), 124, "110-byte header + 11-byte name, padded to 4");
    }

    #[test]
    fn header_fields_for_each_kind() {
        let mut builder = InitramfsBuilder::new();
        builder
            .dir("/etc", 0o750)
            .file_bytes("/etc/hello", b"hello\n".to_vec(), 0o4755)
            .symlink("/etc/link", "../target")
            .char_device("/dev/console", 5, 1, 0o600);
        let records = parse(&archive(&builder));
        let names: Vec<&str> = records.iter().map(|record| record.0.as_str()).collect();
        assert_eq!(names, ["dev", "dev/console", "etc", "etc/hello", "etc/link", TRAILER]);

        let by_name = |name: &str| {
            records.iter().find(|record| record.0 == name).expect("record present").clone()
        };
        let (_, dev, _) = by_name("dev");
        assert_eq!(dev[1], S_IFDIR | IMPLICIT_DIR_MODE);
        let (_, etc, _) = by_name("etc");
        assert_eq!(etc[1], S_IFDIR | 0o750);
        let (_, hello, data) = by_name("etc/hello");
        assert_eq!(hello[1], S_IFREG | 0o4755);
        assert_eq!((hello[4], hello[6]), (1, 6));
        assert_eq!(data, b"hello\n");
        let (_, link, target) = by_name("etc/link");
        assert_eq!(link[1], S_IFLNK | 0o777);
        assert_eq!(target, b"../target");
        let (_, console, data) = by_name("dev/console");
        assert_eq!(console[1], S_IFCHR | 0o600);
        assert_eq!((console[9], console[10]), (5, 1));
        assert!(data.is_empty());

        let inodes: Vec<u32> = records[..records.len() - 1].iter().map(|r| r.1[0]).collect();
        assert_eq!(inodes, [1, 2, 3, 4, 5], "unique inodes: the kernel links equal ones");
        assert!(records.iter().all(|r| r.1[2] == 0 && r.1[3] == 0 && r.1[5] == 0));
    }

    #[test]
    fn names_and_data_are_padded_to_four_bytes() {
        for length in 0..9 {
            let mut builder = InitramfsBuilder::new();
            let name = format!("f{}", "x".repeat(length));
            builder.file_bytes(&name, vec![7; length], 0o644);
            let bytes = archive(&builder);
            let records = parse(&bytes);
            assert_eq!(records[0].0, name);
            assert_eq!(records[0].2, vec![7; length]);
            assert_eq!(bytes.len() % 4, 0);
        }
    }

    #[test]
    fn same_input_gives_same_bytes_whatever_the_insertion_order() {
        let mut first = InitramfsBuilder::new();
        first.file_bytes("/b", b"b".to_vec(), 0o644).file_bytes("/a/c", b"c".to_vec(), 0o600);
        let mut second = InitramfsBuilder::new();
        second.file_bytes("a/c", b"c".to_vec(), 0o600).file_bytes("//b", b"b".to_vec(), 0o644);
        assert_eq!(archive(&first), archive(&second));
    }

    #[test]
    fn parents_come_before_children_even_when_a_sibling_sorts_between() {
        let mut builder = InitramfsBuilder::new();
        builder.file_bytes("/a-b", vec![], 0o644).file_bytes("/a/b", vec![], 0o644);
        let records = parse(&archive(&builder));
        let names: Vec<&str> = records.iter().map(|record| record.0.as_str()).collect();
        assert_eq!(names, ["a", "a-b", "a/b", TRAILER]);
    }

    #[test]
    fn invalid_paths_are_reported_on_write() {
        for bad in ["", "/", "/a/../b", "./x", "a\0b"] {
            let mut builder = InitramfsBuilder::new();
            builder.file_bytes(bad, vec![], 0o644);
            let error = builder.write(Vec::new()).expect_err("invalid path refused");
            assert!(matches!(error, InitramfsError::InvalidPath { .. }), "{bad:?}: {error}");
        }
    }

    #[test]
    fn entry_below_a_file_is_refused() {
        let mut builder = InitramfsBuilder::new();
        builder.file_bytes("/a", vec![], 0o644).file_bytes("/a/b", vec![], 0o644);
        let error = builder.write(Vec::new()).expect_err("file used as a directory");
        assert!(
            matches!(error, InitramfsError::ParentNotDirectory { ref parent, .. } if parent == "a")
        );
    }

    #[test]
    fn absolute_modules_dep_paths_become_relative() {
        assert_eq!(relative_module_path("kernel/fs/a.ko"), "kernel/fs/a.ko");
        assert_eq!(relative_module_path("/lib/modules/6.1.0-1/kernel/fs/a.ko"), "kernel/fs/a.ko");
        assert_eq!(
            relative_module_path("/usr/lib/modules/6.1.0-1/updates/b.ko.xz"),
            "updates/b.ko.xz"
        );
    }

    #[test]
    fn module_keys_ignore_directory_suffix_and_dashes() {
        assert_eq!(module_key("kernel/fs/nls/nls_cp437.ko"), "nls_cp437");
        assert_eq!(module_key("kernel/a/crc-t10dif.ko.xz"), "crc_t10dif");
        assert_eq!(module_key("virtio-blk"), "virtio_blk");
        assert_eq!(module_key("x.ko.zst"), "x");
    }

    /// A `lib/modules/6.1.0-test` tree with three modules and a zstd one, with or without
    /// `modules.dep`; the `.modinfo` strings are embedded as the kernel build lays them out.
    fn fake_modules_dir(with_dep: bool) -> (tempfile::TempDir, PathBuf) {
        let parent = tempfile::tempdir().expect("temp dir");
        let root = parent.path().join("6.1.0-test");
        let write = |relative: &str, contents: &[u8]| {
            let path = root.join(relative);
            fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
            fs::write(path, contents).expect("write");
        };
        write("kernel/fs/vfat.ko", b"\x7fELF\0license=GPL\0depends=fat,nls-base\0name=vfat\0");
        write("kernel/fs/fat.ko", b"\x7fELF\0depends=nls_base\0");
        write("kernel/fs/nls_base.ko", b"\x7fELF\0depends=\0");
        write("kernel/fs/zmod.ko.zst", b"zstd");
        write("modules.builtin", b"kernel/fs/ext4/ext4.ko\n");
        if with_dep {
            write(
                "modules.dep",
                b"kernel/fs/vfat.ko: kernel/fs/fat.ko kernel/fs/nls_base.ko\n\
                  kernel/fs/fat.ko: kernel/fs/nls_base.ko\n\
                  kernel/fs/nls_base.ko:\n\
                  kernel/fs/zmod.ko.zst:\n",
            );
        }
        (parent, root)
    }

    #[test]
    fn modules_come_with_dependencies_first_from_either_index() {
        for with_dep in [true, false] {
            let (_parent, modules_dir) = fake_modules_dir(with_dep);
            let mut builder = InitramfsBuilder::new();
            let order = builder.modules(&modules_dir, &["ext4", "vfat", "fat"]).expect("found");
            assert_eq!(
                order,
                [
                    "/lib/modules/6.1.0-test/kernel/fs/nls_base.ko",
                    "/lib/modules/6.1.0-test/kernel/fs/fat.ko",
                    "/lib/modules/6.1.0-test/kernel/fs/vfat.ko",
                ],
                "with modules.dep: {with_dep}"
            );
            let records = parse(&archive(&builder));
            assert!(records.iter().any(|r| r.0 == "lib/modules/6.1.0-test/kernel/fs/vfat.ko"));

            let error = builder.modules(&modules_dir, &["nope"]).expect_err("unknown module");
            assert!(matches!(error, InitramfsError::UnknownModule { .. }));
            let error = builder.modules(&modules_dir, &["zmod"]).expect_err("zstd module");
            assert!(matches!(error, InitramfsError::UnsupportedModuleCompression { .. }));
        }
    }

    #[test]
    fn init_script_loads_modules_in_order_then_runs_body_and_powers_off() {
        let script = busybox_init_script(&["/lib/a.ko".into(), "/lib/b'c.ko".into()], "echo hi");
        assert!(script.starts_with("#!/bin/busybox sh\n"));
        let a = script.find("insmod '/lib/a.ko'").expect("first module");
        let b = script.find(r"insmod '/lib/b'\''c.ko'").expect("second module, quoted");
        let body = script.find("echo hi\n").expect("body");
        let off = script.find("poweroff -f").expect("power off");
        assert!(script.find("mount -t devtmpfs").expect("devtmpfs") < a);
        assert!(a < b && b < body && body < off);
    }
}
