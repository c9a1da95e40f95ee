//! Node faults injected from the host: freeze and thaw a node (QMP `stop`/`cont`, clocks
//! included), power loss (`kill`), a fresh boot from the same overlay (`restart`, same address
//! and host key), `reset`, and carrier loss on the NIC (`link down|up`). Every fault is written
//! to the mesh's event log with a timestamp.

use std::path::Path;
use std::time::{Duration, Instant};

use mesh_qemu::{QemuCommand, QemuProcess, Qmp};
use serde::{Deserialize, Serialize};

use crate::plan::{MeshPlan, NodePlan};
use crate::state::{EventLog, Journal, Record};
use crate::Error;

/// A fault applied to one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeFault {
    /// Freeze the guest (QMP `stop`).
    Pause,
    /// Thaw it (QMP `cont`).
    Resume,
    /// End the QEMU process at once, as a power loss would.
    Kill,
    /// Boot again from the same overlay (kills first if running).
    Restart,
    /// Hardware reset (QMP `system_reset`).
    Reset,
    /// The NIC loses carrier.
    LinkDown,
    /// The NIC regains carrier.
    LinkUp,
}

impl std::str::FromStr for NodeFault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pause" => NodeFault::Pause,
            "resume" => NodeFault::Resume,
            "kill" => NodeFault::Kill,
            "restart" => NodeFault::Restart,
            "reset" => NodeFault::Reset,
            "link-down" => NodeFault::LinkDown,
            "link-up" => NodeFault::LinkUp,
            other => {
                return Err(format!(
                    "unknown node fault {other:?} (pause, resume, kill, restart, reset, link down, link up)"
                ))
            }
        })
    }
}

/// The saved QEMU command of a node, so a restart boots exactly the same machine.
pub fn command_file(node: &NodePlan) -> std::path::PathBuf {
    node.dir.join("qemu-command.json")
}

/// The last QEMU process the journal records for `node`, if it is still alive.
pub fn live_process(plan: &MeshPlan, node: &str) -> Option<(u32, u64)> {
    let records = Journal::read(&plan.paths.journal()).ok()?;
    records
        .iter()
        .rev()
        .find_map(|r| match r {
            Record::Qemu { node: n, pid, start_time } if n == node => Some((*pid, *start_time)),
            _ => None,
        })
        .filter(|(pid, start)| crate::procinfo::is_running(*pid, *start))
}

fn node_of<'a>(plan: &'a MeshPlan, name: &str) -> Result<&'a NodePlan, Error> {
    plan.node(name).ok_or_else(|| Error::NotFound {
        what: format!(
            "mesh {} has no node {name} (nodes: {})",
            plan.spec.name,
            plan.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
        ),
    })
}

async fn qmp_for(node: &NodePlan, alive: (u32, u64)) -> Result<Qmp, Error> {
    let (pid, start) = alive;
    Qmp::connect(&node.qmp_socket, Duration::from_secs(10), move || {
        crate::procinfo::is_running(pid, start)
    })
    .await
    .map_err(|e| Error::Fault { node: node.name.clone(), what: format!("QMP: {e}") })
}

/// Applies `fault` to `node` of a mesh this process does not hold QMP connections to (a kept
/// mesh, from `mesh node`). Returns a one-line description of what happened.
pub async fn apply(plan: &MeshPlan, node: &str, fault: NodeFault) -> Result<String, Error> {
    let node = node_of(plan, node)?;
    let events = EventLog::new(plan.paths.events());
    let alive = live_process(plan, &node.name);
    let outcome = match (fault, alive) {
        (NodeFault::Restart, _) => {
            if let Some((pid, start)) = alive {
                let _ = mesh_qemu::kill_recorded(pid, start);
                wait_gone(pid, start).await;
            }
            let pid = restart(plan, node).await?;
            format!("{} restarted (pid {pid})", node.name)
        }
        (_, None) => {
            return Err(Error::Fault {
                node: node.name.clone(),
                what: "node is not running".into(),
            })
        }
        (NodeFault::Kill, Some((pid, start))) => {
            mesh_qemu::kill_recorded(pid, start)
                .map_err(|e| Error::Fault { node: node.name.clone(), what: e.to_string() })?;
            wait_gone(pid, start).await;
            format!("{} killed", node.name)
        }
        (f, Some(alive)) => {
            let qmp = qmp_for(node, alive).await?;
            let result = match f {
                NodeFault::Pause => qmp.stop().await,
                NodeFault::Resume => qmp.cont().await,
                NodeFault::Reset => qmp.system_reset().await,
                NodeFault::LinkDown => qmp.set_link("nic0", false).await,
                NodeFault::LinkUp => qmp.set_link("nic0", true).await,
                NodeFault::Kill | NodeFault::Restart => unreachable!("handled above"),
            };
            result.map_err(|e| Error::Fault { node: node.name.clone(), what: e.to_string() })?;
            format!("{}: {}", node.name, describe(f))
        }
    };
    events.emit(
        Some(&node.name),
        &format!("fault.node.{}", event_name(fault)),
        serde_json::Value::Null,
    );
    Ok(outcome)
}

fn describe(f: NodeFault) -> &'static str {
    match f {
        NodeFault::Pause => "paused",
        NodeFault::Resume => "resumed",
        NodeFault::Kill => "killed",
        NodeFault::Restart => "restarted",
        NodeFault::Reset => "reset",
        NodeFault::LinkDown => "link down",
        NodeFault::LinkUp => "link up",
    }
}

fn event_name(f: NodeFault) -> &'static str {
    match f {
        NodeFault::Pause => "pause",
        NodeFault::Resume => "resume",
        NodeFault::Kill => "kill",
        NodeFault::Restart => "restart",
        NodeFault::Reset => "reset",
        NodeFault::LinkDown => "link_down",
        NodeFault::LinkUp => "link_up",
    }
}

async fn wait_gone(pid: u32, start: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::procinfo::is_running(pid, start) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the node's QEMU again with its saved command line, journaled like the first start.
pub async fn restart(plan: &MeshPlan, node: &NodePlan) -> Result<u32, Error> {
    let path = command_file(node);
    let cmd: QemuCommand = read_json(&path)?;
    let mut journal = Journal::open(&plan.paths.journal())?;
    journal.record(&Record::QemuStarting { node: node.name.clone() })?;
    // Sockets of the dead process would make the new QEMU fail to listen.
    let _ = std::fs::remove_file(&node.qmp_socket);
    let _ = std::fs::remove_file(&node.ready_socket);
    let _ = std::fs::remove_file(node.console_socket());
    let netns = mesh_net::Netns::open(&plan.netns)
        .map_err(|e| Error::Fault { node: node.name.clone(), what: format!("namespace: {e}") })?;
    let process = QemuProcess::spawn(&cmd, Some(&netns.path()), &node.qemu_log())
        .map_err(|source| Error::Spawn { node: node.name.clone(), source })?;
    journal.record(&Record::Qemu {
        node: node.name.clone(),
        pid: process.pid(),
        start_time: process.start_time(),
    })?;
    let pid = process.pid();
    // The process outlives this handle: the journal owns it now.
    std::mem::forget(process);
    Ok(pid)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let bytes =
        std::fs::read(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Io { path: path.to_owned(), source: std::io::Error::other(e) })
}
