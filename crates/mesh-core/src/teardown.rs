//! Undoing a mesh from its journal: used by a normal teardown, by `mesh down` and by `mesh gc`
//! after a crash. Only what the journal names is removed, in reverse order of creation.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::plan::{MeshPaths, MeshPlan, NETNS_PREFIX};
use crate::state::{Journal, OwnerLock, Record};

/// Errors of a teardown.
#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    /// The mesh has no state directory.
    #[error("no mesh named {name} (no state at {path})")]
    NotFound {
        /// Mesh name.
        name: String,
        /// Where its state would be.
        path: std::path::PathBuf,
    },
    /// Its owner is still running.
    #[error("mesh {name} is owned by a running `mesh up`; stop that process (Ctrl-C) instead")]
    Owned {
        /// Mesh name.
        name: String,
    },
    /// The state could not be read.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The name cannot be a mesh's.
    #[error(transparent)]
    Name(#[from] crate::spec::SpecError),
}

/// What a teardown removed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct TeardownReport {
    /// QEMU processes ended.
    pub killed: Vec<String>,
    /// Network objects removed.
    pub network: usize,
    /// Problems met on the way (teardown carries on past them).
    pub problems: Vec<String>,
}

/// Removes everything the journal at `paths` names, then the state and runtime directories.
pub async fn teardown_recorded(paths: &MeshPaths) -> Result<TeardownReport, TeardownError> {
    let records = Journal::read(&paths.journal())?;
    let mut report = TeardownReport::default();

    // QEMU first: a running guest keeps its tap open.
    let mut started: Vec<String> = Vec::new();
    for rec in records.iter().rev() {
        match rec {
            Record::Qemu { node, pid, start_time } => {
                started.push(node.clone());
                match mesh_qemu::kill_recorded(*pid, *start_time) {
                    Ok(true) => report.killed.push(node.clone()),
                    Ok(false) => {}
                    Err(e) => report.problems.push(format!("kill {node} (pid {pid}): {e}")),
                }
            }
            Record::Shaper { node, pid, start_time } => {
                if let Err(e) = mesh_qemu::kill_recorded(*pid, *start_time) {
                    report.problems.push(format!("shaper of {node} (pid {pid}): {e}"));
                }
            }
            Record::QemuStarting { node } if !started.contains(node) => {
                // Crashed between spawn and journal: QEMU wrote its own pidfile.
                if let Some(killed) = kill_from_pidfile(paths, node) {
                    report.killed.push(killed);
                }
            }
            _ => {}
        }
    }
    if !report.killed.is_empty() {
        // Give the kernel a moment to release the taps of the processes we just ended.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let net: Vec<mesh_net::Created> = records
        .iter()
        .filter_map(|r| match r {
            Record::Net { object } => Some(object.clone()),
            _ => None,
        })
        .collect();
    report.network = net.len();
    if let Err(e) = mesh_net::teardown(&net).await {
        report.problems.push(format!("network: {e}"));
    }

    for rec in records.iter().rev() {
        if let Record::Dir { path } = rec {
            if let Err(e) = std::fs::remove_dir_all(path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    report.problems.push(format!("remove {}: {e}", path.display()));
                }
            }
        }
    }
    for dir in [&paths.runtime, &paths.state] {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                report.problems.push(format!("remove {}: {e}", dir.display()));
            }
        }
    }
    Ok(report)
}

fn kill_from_pidfile(paths: &MeshPaths, node: &str) -> Option<String> {
    let pidfile = paths.state.join("nodes").join(node).join("qemu.pid");
    let pid: u32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    // Make sure the PID is still the QEMU of this mesh before touching it.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let needle = paths.runtime.display().to_string();
    let text = String::from_utf8_lossy(&cmdline);
    if !text.contains("qemu-system") || !text.contains(&needle) {
        return None;
    }
    let start = crate::procinfo::start_time(pid)?;
    mesh_qemu::kill_recorded(pid, start).ok().filter(|k| *k).map(|_| node.to_owned())
}

/// The state of a mesh as seen from its state directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MeshState {
    /// A `mesh up` process owns it.
    Owned,
    /// Left running on purpose (`--keep`); only `mesh down` removes it.
    Kept,
    /// Nobody owns it and it was not kept (or all its guests died): a crash left it.
    Stale,
}

/// One mesh found in the state root.
#[derive(Debug, Clone, Serialize)]
pub struct MeshSummary {
    /// Mesh name.
    pub name: String,
    /// Its state.
    pub state: MeshState,
    /// Its plan, when readable.
    #[serde(skip)]
    pub plan: Option<MeshPlan>,
    /// QEMU processes of it still alive.
    pub alive_nodes: Vec<String>,
}

/// Inspects the mesh whose state lives in `dir`.
pub fn inspect(dir: &Path) -> MeshSummary {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let paths = MeshPaths::for_mesh(&name);
    let paths = MeshPaths { state: dir.to_owned(), ..paths };
    let records = Journal::read(&paths.journal()).unwrap_or_default();
    let alive_nodes: Vec<String> = records
        .iter()
        .filter_map(|r| match r {
            Record::Qemu { node, pid, start_time }
                if crate::procinfo::is_running(*pid, *start_time) =>
            {
                Some(node.clone())
            }
            _ => None,
        })
        .collect();
    let kept = records.iter().any(|r| matches!(r, Record::Kept));
    let state = if OwnerLock::is_held(&paths.lock()) {
        MeshState::Owned
    } else if kept {
        // Kept on purpose: only `mesh down` removes it, even when its nodes were killed (a
        // fault test may still restart them).
        MeshState::Kept
    } else {
        MeshState::Stale
    };
    MeshSummary { name, state, plan: MeshPlan::load(&paths.plan()).ok(), alive_nodes }
}

/// Every mesh with a state directory.
///
/// No state directory yet means no meshes; a state path that cannot be read (a file, no
/// permission) is an error, not an empty list, so that `gc` never takes live meshes for
/// strays.
pub fn list() -> std::io::Result<Vec<MeshSummary>> {
    let root = crate::plan::state_root();
    let entries = match std::fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("cannot read the mesh state directory {}: {e}", root.display()),
            ))
        }
    };
    let mut out: Vec<MeshSummary> =
        entries.flatten().filter(|e| e.path().is_dir()).map(|e| inspect(&e.path())).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Tears down mesh `name` (not while a `mesh up` owns it).
pub async fn down(name: &str) -> Result<TeardownReport, TeardownError> {
    // Regression: an unchecked name such as `..` or `/x` made the state path point outside
    // the state root, and everything there was removed.
    crate::spec::validate_name(name)?;
    let paths = MeshPaths::for_mesh(name);
    if !paths.state.exists() {
        // A namespace can outlive its state only if someone removed the state by hand.
        let netns = format!("{NETNS_PREFIX}{name}");
        if mesh_net::Netns::exists(&netns) {
            let mut report = TeardownReport::default();
            if let Err(e) = mesh_net::Netns::delete(&netns) {
                report.problems.push(format!("namespace {netns}: {e}"));
            }
            report.network = 1;
            return Ok(report);
        }
        return Err(TeardownError::NotFound { name: name.to_owned(), path: paths.state });
    }
    if OwnerLock::is_held(&paths.lock()) {
        return Err(TeardownError::Owned { name: name.to_owned() });
    }
    let _lock = OwnerLock::acquire(name, &paths.lock())?;
    teardown_recorded(&paths).await
}

/// Removes every mesh left by a crashed or killed run (not kept, not owned), and namespaces
/// named like ours that have no state at all. Returns the names removed.
pub async fn gc() -> std::io::Result<Vec<(String, TeardownReport)>> {
    let mut removed = Vec::new();
    let mut known = Vec::new();
    for summary in list()? {
        known.push(format!("{NETNS_PREFIX}{}", summary.name));
        if summary.state != MeshState::Stale {
            continue;
        }
        let paths = MeshPaths::for_mesh(&summary.name);
        let Ok(_lock) = OwnerLock::acquire(&summary.name, &paths.lock()) else { continue };
        if let Ok(report) = teardown_recorded(&paths).await {
            removed.push((summary.name.clone(), report));
        }
    }
    // Orphan namespaces: ours by prefix, with no state directory left.
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let ns = e.file_name().to_string_lossy().into_owned();
            if ns.starts_with(NETNS_PREFIX) && !known.contains(&ns) && !netns_in_use(&e.path()) {
                let mut report = TeardownReport::default();
                if let Err(err) = mesh_net::Netns::delete(&ns) {
                    report.problems.push(err.to_string());
                }
                report.network = 1;
                removed.push((ns.trim_start_matches(NETNS_PREFIX).to_owned(), report));
            }
        }
    }
    Ok(removed)
}

/// Whether any process runs inside the namespace bound at `path`. A namespace with no state
/// is only an orphan if nothing lives in it (it may belong to a mesh whose state lives under
/// another state root).
fn netns_in_use(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(target) = std::fs::metadata(path) else { return false };
    let Ok(procs) = std::fs::read_dir("/proc") else { return true };
    procs.flatten().any(|p| {
        std::fs::metadata(p.path().join("ns/net"))
            .is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
    })
}
