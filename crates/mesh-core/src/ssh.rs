//! Running commands on nodes with the real OpenSSH client, started inside the mesh namespace,
//! authenticated with the mesh's client key and checking the pinned host keys.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::plan::{MeshPlan, NodePlan};

/// Errors while starting `ssh`.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The mesh namespace is gone.
    #[error("cannot open the namespace of mesh {mesh}")]
    OpenNetns {
        /// Mesh name.
        mesh: String,
        /// The cause.
        #[source]
        source: mesh_net::NetnsError,
    },
    /// `ssh` could not be started.
    #[error("cannot run ssh (install the Debian package openssh-client)")]
    Spawn(#[source] std::io::Error),
}

/// What one node did with a command.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecResult {
    /// Node name.
    pub node: String,
    /// Node architecture.
    pub arch: String,
    /// Node address.
    pub ip: String,
    /// The command as run on this node (templates filled in).
    pub command: String,
    /// Exit code; `None` if it was killed or timed out.
    pub exit_code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Wall time.
    pub duration_ms: u64,
    /// Whether the command was stopped by the timeout.
    pub timed_out: bool,
}

impl ExecResult {
    /// Whether the command succeeded.
    pub fn ok(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// The `ssh` arguments that reach `node` with pinned keys, without the remote command.
pub fn ssh_args(plan: &MeshPlan, node: &NodePlan, tty: bool) -> Vec<String> {
    let key = plan.paths.client_key();
    let known = plan.paths.known_hosts();
    let mut args = vec![
        "-F".to_owned(),
        "/dev/null".to_owned(),
        "-i".to_owned(),
        key.display().to_string(),
        "-o".to_owned(),
        "IdentitiesOnly=yes".to_owned(),
        "-o".to_owned(),
        format!("UserKnownHostsFile={}", known.display()),
        "-o".to_owned(),
        "GlobalKnownHostsFile=/dev/null".to_owned(),
        "-o".to_owned(),
        "StrictHostKeyChecking=yes".to_owned(),
        "-o".to_owned(),
        "BatchMode=yes".to_owned(),
        "-o".to_owned(),
        "ConnectTimeout=10".to_owned(),
        "-o".to_owned(),
        "LogLevel=ERROR".to_owned(),
        "-o".to_owned(),
        "ServerAliveInterval=15".to_owned(),
    ];
    args.push(if tty { "-t".to_owned() } else { "-T".to_owned() });
    args.push(format!("root@{}", node.ip));
    args
}

/// A `std::process::Command` for `ssh` to `node`, entering the mesh namespace before exec.
pub fn ssh_command(
    plan: &MeshPlan,
    node: &NodePlan,
    remote: Option<&str>,
    tty: bool,
) -> Result<std::process::Command, SshError> {
    let netns = mesh_net::Netns::open(&plan.netns)
        .map_err(|source| SshError::OpenNetns { mesh: plan.spec.name.clone(), source })?;
    let mut cmd = std::process::Command::new("ssh");
    cmd.args(ssh_args(plan, node, tty));
    if let Some(remote) = remote {
        cmd.arg("--").arg(remote);
    }
    netns.prepare_command(&mut cmd);
    Ok(cmd)
}

/// Runs `remote` on `node`, capturing its output, giving up after `timeout`.
pub async fn run(
    plan: &MeshPlan,
    node: &NodePlan,
    remote: &str,
    timeout: Duration,
) -> Result<ExecResult, SshError> {
    let mut std_cmd = ssh_command(plan, node, Some(remote), false)?;
    std_cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut cmd = tokio::process::Command::from(std_cmd);
    cmd.kill_on_drop(true);
    let started = Instant::now();
    let child = cmd.spawn().map_err(SshError::Spawn)?;
    let output = tokio::time::timeout(timeout, child.wait_with_output()).await;
    let duration_ms = started.elapsed().as_millis() as u64;
    let base = ExecResult {
        node: node.name.clone(),
        arch: node.arch.to_string(),
        ip: node.ip.to_string(),
        command: remote.to_owned(),
        exit_code: None,
        stdout: String::new(),
        stderr: String::new(),
        duration_ms,
        timed_out: false,
    };
    Ok(match output {
        Ok(Ok(out)) => ExecResult {
            exit_code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            ..base
        },
        Ok(Err(e)) => ExecResult { stderr: format!("ssh failed: {e}"), ..base },
        Err(_) => ExecResult {
            timed_out: true,
            stderr: format!("timed out after {} s", timeout.as_secs()),
            ..base
        },
    })
}

/// Runs a templated command on each of `nodes` at once and returns the results in node order.
pub async fn fan_out(
    plan: &MeshPlan,
    nodes: &[&NodePlan],
    template: &str,
    timeout: Duration,
) -> Result<Vec<ExecResult>, crate::Error> {
    let mut commands = Vec::new();
    for node in nodes {
        commands.push(crate::template::render(template, plan, node)?);
    }
    let runs = nodes.iter().zip(&commands).map(|(node, cmd)| run(plan, node, cmd, timeout));
    let results = futures::future::join_all(runs).await;
    results.into_iter().map(|r| r.map_err(crate::Error::from)).collect()
}

/// Runs a templated command on the named nodes (all when `only` is empty) of a mesh, found by
/// its plan. A node whose QEMU is not running is reported at once (no exit code) instead of
/// after an SSH connect timeout. Results come in node order.
pub async fn exec_nodes(
    plan: &MeshPlan,
    only: &[String],
    template: &str,
    timeout: Duration,
) -> Result<Vec<ExecResult>, crate::Error> {
    let targets: Vec<&NodePlan> =
        plan.nodes.iter().filter(|n| only.is_empty() || only.contains(&n.name)).collect();
    let (running, stopped): (Vec<&NodePlan>, Vec<&NodePlan>) =
        targets.iter().partition(|n| crate::fault::live_process(plan, &n.name).is_some());
    let mut results = fan_out(plan, &running, template, timeout).await?;
    for n in stopped {
        results.push(ExecResult {
            node: n.name.clone(),
            arch: n.arch.to_string(),
            ip: n.ip.to_string(),
            command: crate::template::render(template, plan, n)?,
            exit_code: None,
            stdout: String::new(),
            stderr: format!("{} is not running (see `mesh status {}`)", n.name, plan.spec.name),
            duration_ms: 0,
            timed_out: false,
        });
    }
    results.sort_by_key(|r| plan.nodes.iter().position(|n| n.name == r.node));
    let events = crate::state::EventLog::new(plan.paths.events());
    for r in &results {
        events.emit(
            Some(&r.node),
            "exec.exit",
            serde_json::json!({ "code": r.exit_code, "ms": r.duration_ms }),
        );
    }
    Ok(results)
}
