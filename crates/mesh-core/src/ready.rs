//! Readiness: a state machine per node, all nodes in parallel. Each phase is timed; a node that
//! fails is reported with the phase it reached and the tail of its serial log.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The phases a node passes through, in order.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// QEMU is being started.
    Starting,
    /// The QEMU process is alive.
    ProcessUp,
    /// QMP answers and reports `running`.
    QmpRunning,
    /// The guest said cloud-init finished (pushed over the readiness port).
    CloudInitDone,
    /// SSH with the pinned host key answers.
    SshReady,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Starting => "starting",
            Phase::ProcessUp => "process up",
            Phase::QmpRunning => "qmp running",
            Phase::CloudInitDone => "cloud-init done",
            Phase::SshReady => "ssh ready",
        })
    }
}

/// How one node's readiness went.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeReadiness {
    /// Node name.
    pub node: String,
    /// Last phase reached.
    pub phase: Phase,
    /// Seconds from start at which each phase was reached.
    pub phase_times: Vec<(Phase, f64)>,
    /// `None` when ready; else why not.
    pub error: Option<String>,
    /// What cloud-init reported (`done`, `error`, ...).
    pub cloud_init_status: Option<String>,
    /// Last lines of the serial log when the node failed.
    pub serial_tail: Option<String>,
}

impl NodeReadiness {
    /// A fresh record.
    pub fn new(node: &str) -> NodeReadiness {
        NodeReadiness {
            node: node.to_owned(),
            phase: Phase::Starting,
            phase_times: vec![(Phase::Starting, 0.0)],
            error: None,
            cloud_init_status: None,
            serial_tail: None,
        }
    }

    /// Whether the node reached SSH.
    pub fn is_ready(&self) -> bool {
        self.error.is_none() && self.phase == Phase::SshReady
    }

    /// Seconds until ready, if it got there.
    pub fn ready_secs(&self) -> Option<f64> {
        self.phase_times.iter().find(|(p, _)| *p == Phase::SshReady).map(|(_, t)| *t)
    }

    /// Records reaching `phase` at `since.elapsed()`.
    pub fn reach(&mut self, phase: Phase, since: Instant) {
        self.phase = phase;
        self.phase_times.push((phase, since.elapsed().as_secs_f64()));
    }
}

/// The line the guest writes on the readiness port when cloud-init has finished.
pub const READY_MARKER: &str = "VMMESH-READY";

/// Waits for the guest's readiness line on the virtio-serial socket at `socket` (QEMU is the
/// server). Returns cloud-init's status word (`done`, `error`, ...).
pub async fn wait_guest_signal(
    socket: &Path,
    deadline: Instant,
    alive: &(dyn Fn() -> bool + Send + Sync),
) -> Result<String, String> {
    loop {
        if Instant::now() >= deadline {
            return Err("timed out waiting for the guest's readiness signal".into());
        }
        if !alive() {
            return Err("QEMU exited".into());
        }
        let stream = match tokio::net::UnixStream::connect(socket).await {
            Ok(s) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut lines = BufReader::new(stream).lines();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            // Wake up now and then to notice a dead QEMU even if the socket stays open.
            let step = remaining.min(Duration::from_secs(2));
            match tokio::time::timeout(step, lines.next_line()).await {
                Ok(Ok(Some(line))) => {
                    if let Some(rest) = line.trim().strip_prefix(READY_MARKER) {
                        return Ok(rest.trim().to_owned());
                    }
                }
                Ok(Ok(None)) | Ok(Err(_)) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
                Err(_) => {
                    if Instant::now() >= deadline {
                        return Err("timed out waiting for the guest's readiness signal".into());
                    }
                    if !alive() {
                        return Err("QEMU exited".into());
                    }
                }
            }
        }
    }
}

/// The last `n` non-empty lines of a serial log, control characters removed.
pub fn serial_tail(path: &Path, n: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::from("(no serial log)");
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.chars().filter(|c| !c.is_control() || *c == '\t').collect::<String>())
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
