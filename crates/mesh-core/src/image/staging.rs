//! Staging directories: where an image is assembled before it is renamed into the store.
//!
//! A staging directory is `<root>/.staging-<what>-<random>` and holds an exclusive `flock` on
//! its `.lock` file for as long as the [`Staging`] value lives. Dropping it removes the
//! directory; a process killed outright leaves it behind with the lock released, which is how
//! [`remove_stale`] tells an abandoned directory from one a concurrent build still uses.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::ImageError;

const PREFIX: &str = ".staging-";
const LOCK_FILE: &str = ".lock";

/// A staging directory, removed on drop unless [`Staging::persist`] moved it into place.
#[derive(Debug)]
pub(crate) struct Staging {
    dir: PathBuf,
    // Held (not read) so that other processes see the directory as in use.
    _lock: Flock<fs::File>,
    persisted: bool,
}

impl Staging {
    /// Creates `<root>/.staging-<what>-<random>` and locks it.
    pub(crate) fn create(root: &Path, what: &str) -> Result<Staging, ImageError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{what}-"))
            .tempdir_in(root)
            .map_err(|source| ImageError::CacheNotWritable { path: root.to_owned(), source })?
            .keep();
        let lock_path = dir.join(LOCK_FILE);
        let file = fs::File::create(&lock_path).map_err(|source| ImageError::Io {
            step: "create",
            path: lock_path.clone(),
            source,
        })?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            ImageError::Io { step: "lock", path: lock_path, source: io::Error::from(errno) }
        })?;
        Ok(Staging { dir, _lock: lock, persisted: false })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// Renames the staging directory to `dest` (in the same filesystem, so atomically).
    pub(crate) fn persist(mut self, dest: &Path) -> Result<(), ImageError> {
        let lock_path = self.dir.join(LOCK_FILE);
        super::remove_file_if_exists(&lock_path)?;
        fs::rename(&self.dir, dest).map_err(|source| ImageError::Io {
            step: "rename into place",
            path: dest.to_owned(),
            source,
        })?;
        self.persisted = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.persisted {
            if let Err(error) = remove_tree(&self.dir) {
                tracing::warn!(%error, "cannot remove a staging directory");
            }
        }
    }
}

/// Removes staging directories under `root` that no live process holds locked.
pub(crate) fn remove_stale(root: &Path) -> Result<usize, ImageError> {
    let mut removed = 0;
    let entries = fs::read_dir(root).map_err(|source| ImageError::Io {
        step: "read",
        path: root.to_owned(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let dir = entry.path();
        let lock_path = dir.join(LOCK_FILE);
        let in_use = match fs::File::open(&lock_path) {
            Ok(file) => Flock::lock(file, FlockArg::LockExclusiveNonblock).is_err(),
            // No lock file: either being created this instant (the lock follows within
            // microseconds) or abandoned before it was; only the latter is old.
            Err(_) => entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age.as_secs() < 60),
        };
        if !in_use {
            tracing::info!(dir = %dir.display(), "removing an abandoned staging directory");
            remove_tree(&dir)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes a directory tree without ever leaving its filesystem.
///
/// A build killed while mmdebstrap had `/proc`, `/sys` or `/dev` mounted inside its chroot
/// leaves those mounts behind; a plain recursive delete would then delete host device
/// nodes. So mounts below `dir` are detached first, and the walk still refuses to descend
/// into anything on another device.
pub(crate) fn remove_tree(dir: &Path) -> Result<(), ImageError> {
    detach_mounts_below(dir);
    let meta = match fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(ImageError::Io { step: "remove", path: dir.to_owned(), source }),
    };
    remove_on_device(dir, meta.dev())
}

fn remove_on_device(path: &Path, dev: u64) -> Result<(), ImageError> {
    let err = |source| ImageError::Io { step: "remove", path: path.to_owned(), source };
    let meta = fs::symlink_metadata(path).map_err(err)?;
    if !meta.is_dir() {
        return fs::remove_file(path).map_err(err);
    }
    if meta.dev() != dev {
        return Err(ImageError::Io {
            step: "remove (a filesystem is still mounted at)",
            path: path.to_owned(),
            source: io::Error::other("refusing to cross into another filesystem"),
        });
    }
    for entry in fs::read_dir(path).map_err(err)? {
        remove_on_device(&entry.map_err(err)?.path(), dev)?;
    }
    fs::remove_dir(path).map_err(err)
}

/// Lazily unmounts every mount point at or below `dir`, deepest first.
fn detach_mounts_below(dir: &Path) {
    let Ok(dir) = fs::canonicalize(dir) else { return };
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else { return };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mount_path(field)))
        .filter(|point| point.starts_with(&dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in points {
        tracing::warn!(mount = %point.display(), "detaching a mount left in a staging directory");
        if let Err(errno) = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(mount = %point.display(), %errno, "cannot detach");
        }
    }
}

/// `/proc/self/mountinfo` escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let code =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_staging_is_removed_and_persisted_one_is_kept() {
        let root = tempfile::tempdir().expect("tempdir");
        let staging = Staging::create(root.path(), "t").expect("create");
        let dir = staging.path().to_owned();
        fs::write(dir.join("f"), b"x").expect("write");
        drop(staging);
        assert!(!dir.exists());

        let staging = Staging::create(root.path(), "t").expect("create");
        fs::write(staging.path().join("f"), b"x").expect("write");
        let dest = root.path().join("done");
        staging.persist(&dest).expect("persist");
        assert!(dest.join("f").is_file());
        assert!(!dest.join(LOCK_FILE).exists());
    }

    #[test]
    fn remove_stale_spares_a_locked_staging_dir() {
        let root = tempfile::tempdir().expect("tempdir");
        let live = Staging::create(root.path(), "live").expect("create");
        // An abandoned one: a lock file nobody holds.
        let dead = root.path().join(".staging-dead-1");
        fs::create_dir_all(dead.join("rootfs/etc")).expect("mkdir");
        fs::write(dead.join(LOCK_FILE), b"").expect("lock file");
        assert_eq!(remove_stale(root.path()).expect("remove stale"), 1);
        assert!(live.path().is_dir());
        assert!(!dead.exists());
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mount_path(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape_mount_path(r"/plain"), "/plain");
    }
}
