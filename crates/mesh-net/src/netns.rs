//! Named network namespaces, compatible with `ip netns`.
//!
//! A namespace is kept alive by bind-mounting its nsfs file onto `/run/netns/NAME`, exactly as
//! `ip netns add` does, so `ip netns`, `ip -n NAME` and `ip netns exec NAME` see ours.
//! Entering one never changes the namespace of the calling thread: [`Netns::run`] uses a
//! short-lived scoped thread, and [`Netns::prepare_command`] switches only the child.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use tracing::debug;

/// Where named network namespaces are mounted (the `ip netns` convention).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Serialises the one-time preparation of [`NETNS_RUN_DIR`] inside this process.
static RUN_DIR_LOCK: Mutex<()> = Mutex::new(());

/// Why a namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The name cannot be a file name under [`NETNS_RUN_DIR`].
    #[error("invalid network namespace name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A namespace (or a leftover file) of that name exists already.
    #[error(
        "network namespace {name:?} already exists ({path}); if a crashed run left it \
         behind, `mesh gc` removes it"
    )]
    AlreadyExists {
        /// The namespace name.
        name: String,
        /// Its mount point.
        path: PathBuf,
    },
    /// No namespace of that name exists.
    #[error("network namespace {name:?} does not exist ({path})")]
    NotFound {
        /// The namespace name.
        name: String,
        /// Its mount point.
        path: PathBuf,
    },
    /// The file exists but no namespace is mounted on it.
    #[error(
        "{path} is not a mounted network namespace (half-made by a crashed run?); \
         `mesh gc` removes it"
    )]
    NotANamespace {
        /// The namespace name.
        name: String,
        /// The file found.
        path: PathBuf,
    },
    /// `/run/netns` could not be created or made a shared mount.
    #[error("cannot prepare the namespace directory {path}")]
    PrepareRunDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The mount point file could not be created.
    #[error("cannot create the namespace mount point {path}")]
    CreateMountPoint {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `unshare(CLONE_NEWNET)` failed (it needs CAP_SYS_ADMIN).
    #[error("cannot create a new network namespace for {name:?} (needs CAP_SYS_ADMIN)")]
    Unshare {
        /// The namespace name.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The new namespace could not be bind-mounted onto its file.
    #[error("cannot bind-mount the new network namespace onto {path}")]
    BindMount {
        /// The mount point.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The namespace file could not be opened or inspected.
    #[error("cannot open network namespace file {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `setns` into the namespace failed.
    #[error("cannot enter network namespace {name:?}")]
    Enter {
        /// The namespace name.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A thread to run inside the namespace could not be started.
    #[error("cannot start a thread for network namespace {name:?}")]
    SpawnThread {
        /// The namespace name.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The namespace could not be unmounted.
    #[error("cannot unmount network namespace {path}")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The mount point file could not be removed.
    #[error("cannot remove network namespace file {path}")]
    RemoveMountPoint {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// An open, named network namespace.
///
/// Holding a `Netns` keeps the namespace itself alive (through its open file) even if its
/// name is deleted, so operations on it never land in the wrong namespace.
#[derive(Debug, Clone)]
pub struct Netns {
    name: String,
    file: Arc<OwnedFd>,
}

impl Netns {
    /// Creates a new namespace named `name`, like `ip netns add NAME`.
    ///
    /// Fails with [`NetnsError::AlreadyExists`] if the name is taken (also by a leftover of a
    /// crashed run): an existing namespace is never reused silently.
    ///
    /// # Examples
    /// ```no_run
    /// let ns = mesh_net::Netns::create("demo")?;
    /// assert!(mesh_net::Netns::exists("demo"));
    /// mesh_net::Netns::delete(ns.name())?;
    /// # Ok::<(), mesh_net::NetnsError>(())
    /// ```
    pub fn create(name: &str) -> Result<Netns, NetnsError> {
        check_name(name)?;
        let path = Self::path_of(name);
        prepare_run_dir()?;

        // O_EXCL makes a second creator of the same name fail here rather than mount over ours.
        match OpenOptions::new().write(true).create_new(true).mode(0o000).open(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(NetnsError::AlreadyExists { name: name.into(), path });
            }
            Err(source) => return Err(NetnsError::CreateMountPoint { path, source }),
        }

        debug!(netns = name, "unshare(CLONE_NEWNET) and bind-mount onto {}", path.display());
        if let Err(e) = unshare_and_mount(name, &path) {
            // Leave nothing behind: the file alone would look like a crashed run's leftover.
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Self::open(name)
    }

    /// Opens the existing namespace `name` (as created by us or by `ip netns add`).
    pub fn open(name: &str) -> Result<Netns, NetnsError> {
        check_name(name)?;
        let path = Self::path_of(name);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(NetnsError::NotFound { name: name.into(), path });
            }
            Err(source) => return Err(NetnsError::Open { path, source }),
        };

        // A plain file here means a create that crashed between touch and mount; entering it
        // would fail later with a far less helpful EINVAL.
        let fs = nix::sys::statfs::fstatfs(&file)
            .map_err(|e| NetnsError::Open { path: path.clone(), source: e.into() })?;
        if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
            return Err(NetnsError::NotANamespace { name: name.into(), path });
        }
        Ok(Netns { name: name.into(), file: Arc::new(file.into()) })
    }

    /// Whether something exists at the namespace's mount point (a namespace, or the
    /// leftover file of a crashed create).
    pub fn exists(name: &str) -> bool {
        check_name(name).is_ok() && Self::path_of(name).symlink_metadata().is_ok()
    }

    /// Deletes the namespace `name`, like `ip netns delete NAME`: lazy unmount, then unlink.
    ///
    /// The namespace itself disappears once no process, open file or mount refers to it any
    /// more. Fails with [`NetnsError::NotFound`] if nothing of that name exists; see
    /// [`Netns::delete_if_exists`] for the forgiving variant.
    pub fn delete(name: &str) -> Result<(), NetnsError> {
        if Self::delete_if_exists(name)? {
            Ok(())
        } else {
            Err(NetnsError::NotFound { name: name.into(), path: Self::path_of(name) })
        }
    }

    /// Deletes the namespace `name` if it exists; returns whether there was anything to
    /// delete. Also removes the plain file a crashed create may have left.
    pub fn delete_if_exists(name: &str) -> Result<bool, NetnsError> {
        check_name(name)?;
        let path = Self::path_of(name);
        if path.symlink_metadata().is_err() {
            return Ok(false);
        }

        debug!(netns = name, "umount2(MNT_DETACH) and unlink {}", path.display());
        match umount2(&path, MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point, i.e. the leftover of a crashed create.
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(NetnsError::Unmount { path, source: e.into() }),
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(source) => Err(NetnsError::RemoveMountPoint { path, source }),
        }
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's mount point, `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        Self::path_of(&self.name)
    }

    /// The mount point a namespace named `name` has.
    pub fn path_of(name: &str) -> PathBuf {
        Path::new(NETNS_RUN_DIR).join(name)
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    ///
    /// Sockets and tun devices opened by `f` belong to this namespace for their whole life,
    /// whatever thread uses them afterwards. The calling thread's namespace is untouched. A
    /// panic in `f` is resumed on the caller. This blocks for the duration of `f`; from async
    /// code keep `f` short (a thread start costs tens of microseconds).
    ///
    /// # Examples
    /// ```no_run
    /// let ns = mesh_net::Netns::open("demo")?;
    /// let socket = ns.run(|| std::net::UdpSocket::bind("127.0.0.1:0"))?;
    /// # Ok::<(), mesh_net::NetnsError>(())
    /// ```
    pub fn run<F, R>(&self, f: F) -> Result<R, NetnsError>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = &self.file;
        std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .name(format!("netns-{}", self.name))
                .spawn_scoped(scope, move || {
                    setns(file.as_fd(), CloneFlags::CLONE_NEWNET)?;
                    Ok(f())
                })
                .map_err(|source| NetnsError::SpawnThread { name: self.name.clone(), source })?;
            match worker.join() {
                Ok(result) => result.map_err(|e: nix::errno::Errno| NetnsError::Enter {
                    name: self.name.clone(),
                    source: e.into(),
                }),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Makes `cmd`'s child enter this namespace before it executes its program.
    ///
    /// The namespace file is already open, so the child only calls `setns(2)` between fork
    /// and exec. Works for `tokio::process::Command` through `as_std_mut()`.
    ///
    /// # Examples
    /// ```no_run
    /// let ns = mesh_net::Netns::open("demo")?;
    /// let mut cmd = std::process::Command::new("ip");
    /// cmd.args(["-br", "link"]);
    /// ns.prepare_command(&mut cmd);
    /// let out = cmd.output().expect("ip runs");
    /// # Ok::<(), mesh_net::NetnsError>(())
    /// ```
    pub fn prepare_command(&self, cmd: &mut std::process::Command) {
        let file = Arc::clone(&self.file);
        let hook = move || {
            // SAFETY: setns(2) is async-signal-safe, and the descriptor is owned by the Arc
            // captured here, so it is open in the child.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        };
        // SAFETY: the hook runs in the forked child before exec; it allocates nothing, takes
        // no lock and only makes one async-signal-safe system call.
        unsafe {
            cmd.pre_exec(hook);
        }
    }
}

impl AsFd for Netns {
    /// The open namespace file, e.g. for `IFLA_NET_NS_FD`.
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Rejects names that are not a single plain file name.
pub(crate) fn check_name(name: &str) -> Result<(), NetnsError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        "it must be a plain file name"
    } else if name.len() > 200 {
        "it is longer than 200 bytes"
    } else {
        return Ok(());
    };
    Err(NetnsError::InvalidName { name: name.into(), reason })
}

/// Makes sure `/run/netns` exists and is a shared mount, as `ip netns add` does, so that
/// unmounting a namespace there also unmounts it in other mount namespaces.
fn prepare_run_dir() -> Result<(), NetnsError> {
    let _guard = RUN_DIR_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = Path::new(NETNS_RUN_DIR);
    let fail = |source: io::Error| NetnsError::PrepareRunDir { path: dir.into(), source };

    std::fs::create_dir_all(dir).map_err(fail)?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(None::<&str>, dir, Some("none"), shared, None::<&str>) {
        Ok(()) => Ok(()),
        // EINVAL: the directory is not a mount point yet; make it one and retry once.
        Err(nix::errno::Errno::EINVAL) => {
            let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
            mount(Some(dir), dir, Some("none"), bind, None::<&str>).map_err(|e| fail(e.into()))?;
            mount(None::<&str>, dir, Some("none"), shared, None::<&str>).map_err(|e| fail(e.into()))
        }
        Err(e) => Err(fail(e.into())),
    }
}

/// On a throw-away thread: make a new network namespace and pin it by a bind mount.
fn unshare_and_mount(name: &str, path: &Path) -> Result<(), NetnsError> {
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name(format!("netns-add-{name}"))
            .spawn_scoped(scope, || {
                unshare(CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetnsError::Unshare { name: name.into(), source: e.into() })?;
                // thread-self, not self: only this thread is in the new namespace.
                mount(
                    Some("/proc/thread-self/ns/net"),
                    path,
                    Some("none"),
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| NetnsError::BindMount { path: path.into(), source: e.into() })
            })
            .map_err(|source| NetnsError::SpawnThread { name: name.into(), source })?;
        match worker.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_plain_file_names() {
        for bad in ["", ".", "..", "a/b", "x\0y"] {
            assert!(matches!(check_name(bad), Err(NetnsError::InvalidName { .. })), "{bad:?}");
        }
        assert!(check_name("mesh-demo_1").is_ok());
        assert!(!Netns::exists("../etc"));
    }

    #[test]
    fn already_exists_suggests_gc() {
        let err = NetnsError::AlreadyExists { name: "m".into(), path: Netns::path_of("m") };
        assert!(err.to_string().contains("mesh gc"), "{err}");
        assert_eq!(Netns::path_of("m"), Path::new("/run/netns/m"));
    }
}
