//! The per-mesh state directory: the journal of side effects (written *before* each effect, so
//! a crashed run can be undone), the owner lock, and the event log.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Errors of the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file or directory of the state could not be written or read.
    #[error("state file {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another process owns the mesh.
    #[error("mesh {name} is already running (owner lock {path} is held); use another --name or `mesh down {name}`")]
    Busy {
        /// Mesh name.
        name: String,
        /// Lock file.
        path: PathBuf,
    },
    /// Leftovers of an earlier run are in the way.
    #[error("mesh {name} has state from an earlier run at {path}; run `mesh down {name}` or `mesh gc` first")]
    Leftover {
        /// Mesh name.
        name: String,
        /// The state directory.
        path: PathBuf,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.to_owned(), source }
}

/// One recorded side effect.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// A directory we created and own entirely.
    Dir {
        /// The directory.
        path: PathBuf,
    },
    /// A network object.
    Net {
        /// What was (about to be) created.
        object: mesh_net::Created,
    },
    /// A QEMU process is about to be started for `node`.
    QemuStarting {
        /// Node name.
        node: String,
    },
    /// A QEMU process was started.
    Qemu {
        /// Node name.
        node: String,
        /// Its PID.
        pid: u32,
        /// Its start time (clock ticks since boot), so the PID is never mistaken for another.
        start_time: u64,
    },
    /// A shaper daemon was started for `node`.
    Shaper {
        /// Node name.
        node: String,
        /// Its PID.
        pid: u32,
        /// Its start time.
        start_time: u64,
    },
    /// The owner finished with `--keep`: the mesh is meant to stay up.
    Kept,
}

/// Append-only, fsynced journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Opens (creating) the journal at `path`.
    pub fn open(path: &Path) -> Result<Journal, StateError> {
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(io(path))?;
        Ok(Journal { path: path.to_owned(), file })
    }

    /// Appends one record and makes it durable.
    pub fn record(&mut self, record: &Record) -> Result<(), StateError> {
        let mut line = serde_json::to_vec(record).map_err(|e| StateError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(io(&self.path))?;
        self.file.sync_data().map_err(io(&self.path))
    }

    /// Reads all records of the journal at `path`; a torn last line (crash mid-write) is
    /// skipped.
    pub fn read(path: &Path) -> Result<Vec<Record>, StateError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StateError::Io { path: path.to_owned(), source: e }),
        };
        let mut out = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line.map_err(io(path))?;
            if let Ok(rec) = serde_json::from_str(&line) {
                out.push(rec);
            }
        }
        Ok(out)
    }
}

/// An exclusive `flock` on the mesh's lock file, held for as long as this value lives.
#[derive(Debug)]
pub struct OwnerLock {
    _file: File,
}

impl OwnerLock {
    /// Takes the lock, failing at once with [`StateError::Busy`] if another process holds it.
    pub fn acquire(name: &str, path: &Path) -> Result<OwnerLock, StateError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io(path))?;
        // SAFETY: flock on a valid, owned descriptor has no memory-safety preconditions.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(StateError::Busy { name: name.to_owned(), path: path.to_owned() });
        }
        Ok(OwnerLock { _file: file })
    }

    /// Whether some process holds the lock at `path` right now.
    pub fn is_held(path: &Path) -> bool {
        let Ok(file) = OpenOptions::new().write(true).open(path) else {
            return false;
        };
        // SAFETY: as above.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            // SAFETY: as above; we release the lock we just took.
            unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
            false
        } else {
            true
        }
    }
}

/// One line of the event log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u128,
    /// Node concerned, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub node: Option<String>,
    /// What happened, e.g. `ready`, `fault.partition`.
    pub kind: String,
    /// Details.
    #[serde(skip_serializing_if = "serde_json::Value::is_null", default)]
    pub detail: serde_json::Value,
}

/// The mesh's event log (`events.jsonl`): readiness, exits and injected faults, in time order.
#[derive(Debug, Clone)]
pub struct EventLog {
    path: PathBuf,
}

impl EventLog {
    /// The log at `path`.
    pub fn new(path: PathBuf) -> EventLog {
        EventLog { path }
    }

    /// Appends an event; failures to log are reported but never fail the caller's action.
    pub fn emit(&self, node: Option<&str>, kind: &str, detail: serde_json::Value) {
        let ts_ms =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let event = Event { ts_ms, node: node.map(str::to_owned), kind: kind.to_owned(), detail };
        let result =
            serde_json::to_vec(&event).map_err(std::io::Error::other).and_then(|mut line| {
                line.push(b'\n');
                OpenOptions::new().create(true).append(true).open(&self.path)?.write_all(&line)
            });
        if let Err(error) = result {
            tracing::warn!(path = %self.path.display(), %error, "cannot write event log");
        }
    }

    /// Reads every event.
    pub fn read(&self) -> Vec<Event> {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return Vec::new();
        };
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

/// Creates `path` (and parents) with mode 0700.
pub fn create_private_dir(path: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trips_and_skips_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        let mut j = Journal::open(&path).expect("open");
        j.record(&Record::Dir { path: "/x".into() }).expect("write");
        j.record(&Record::Qemu { node: "x86-1".into(), pid: 42, start_time: 7 }).expect("write");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"{\"kind\":\"qe"))
            .expect("append torn line");
        let recs = Journal::read(&path).expect("read");
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1], Record::Qemu { node: "x86-1".into(), pid: 42, start_time: 7 });
    }

    #[test]
    fn lock_is_exclusive_across_descriptors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lock");
        let held = OwnerLock::acquire("m", &path).expect("first");
        assert!(OwnerLock::is_held(&path));
        assert!(matches!(OwnerLock::acquire("m", &path), Err(StateError::Busy { .. })));
        drop(held);
        assert!(!OwnerLock::is_held(&path));
    }
}
