//! The mesh's life: `up` (plan, state, images, keys, seeds, repo image, network, QEMU),
//! readiness of all nodes in parallel, running commands, and teardown.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh_qemu::{Accel, Arch};
use serde::Serialize;
use tracing::{info, info_span, warn, Instrument};

use crate::image::{BaseImage, ImageStore};
use crate::plan::{MeshPlan, NodePlan, READY_PORT};
use crate::ready::{NodeReadiness, Phase};
use crate::ssh::ExecResult;
use crate::state::{create_private_dir, EventLog, Journal, OwnerLock, Record, StateError};
use crate::teardown::{teardown_recorded, TeardownReport};
use crate::{Error, MeshSpec};

/// Which accelerator to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM where a probe guest proves it works, else TCG.
    #[default]
    Auto,
    /// Force KVM (fails if it does not work).
    Kvm,
    /// Force TCG.
    Tcg,
}

/// Something worth showing the user while the mesh comes up.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Progress {
    /// A mesh-wide step started.
    Step {
        /// What.
        what: String,
    },
    /// A node reached a phase.
    Node {
        /// Node name.
        node: String,
        /// The phase.
        phase: Phase,
        /// Seconds since the node was started.
        secs: f64,
    },
    /// A node failed.
    NodeFailed {
        /// Node name.
        node: String,
        /// Last phase reached.
        phase: Phase,
        /// Why.
        error: String,
    },
}

/// Callback receiving progress.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Knobs of `mesh up`.
#[derive(Clone, Default)]
pub struct UpOptions {
    /// Accelerator choice.
    pub accel: AccelChoice,
    /// Override of the per-node readiness timeout (default scales with the accelerator).
    pub ready_timeout: Option<Duration>,
    /// Progress callback.
    pub progress: Option<ProgressFn>,
    /// Image store (default: the XDG cache).
    pub images: Option<PathBuf>,
}

impl UpOptions {
    fn say(&self, p: Progress) {
        if let Some(f) = &self.progress {
            f(&p);
        }
    }
}

struct NodeRuntime {
    process: Option<mesh_qemu::QemuProcess>,
    qmp: Option<mesh_qemu::Qmp>,
    accel: Accel,
}

/// A mesh this process owns.
pub struct Mesh {
    /// The plan.
    pub plan: MeshPlan,
    /// The event log.
    pub events: EventLog,
    /// Readiness per node, in node order (filled by [`Mesh::wait_ready`]).
    pub readiness: Vec<NodeReadiness>,
    /// The repository injected, if any.
    pub repo: Option<crate::repo::InjectedRepo>,
    journal: Arc<Mutex<Journal>>,
    lock: Option<OwnerLock>,
    nodes: Vec<NodeRuntime>,
    options: UpOptions,
    shapers: HashMap<String, mesh_net::shaper::RunningShaper>,
}

/// Why `record` could not write the journal: the effect is then not made.
fn record(journal: &Arc<Mutex<Journal>>, rec: &Record) -> Result<(), StateError> {
    journal.lock().map_err(|_| poisoned())?.record(rec)
}

fn poisoned() -> StateError {
    StateError::Io {
        path: PathBuf::from("journal"),
        source: std::io::Error::other("journal lock poisoned"),
    }
}

/// Checks everything that can be checked before any side effect: spec, templates, images,
/// name not in use.
pub fn preflight(
    spec: &MeshSpec,
    options: &UpOptions,
) -> Result<(MeshPlan, HashMap<Arch, BaseImage>), Error> {
    let plan = MeshPlan::new(spec)?;
    spec.check_memory()?;
    if let Some(action) = &spec.action {
        crate::template::check(action, &plan)?;
    }
    if let Some(build) = &spec.repo.build {
        crate::repo::check_build_template(build)?;
    }
    let store = match &options.images {
        Some(root) => ImageStore::open(root)?,
        None => ImageStore::open_default()?,
    };
    let mut images = HashMap::new();
    for node in &plan.nodes {
        if images.contains_key(&node.arch) {
            continue;
        }
        let image = store.get(node.arch)?.ok_or(Error::NoImage { arch: node.arch })?;
        images.insert(node.arch, image);
    }
    if plan.paths.state.exists() {
        if OwnerLock::is_held(&plan.paths.lock()) {
            return Err(
                StateError::Busy { name: spec.name.clone(), path: plan.paths.lock() }.into()
            );
        }
        return Err(StateError::Leftover {
            name: spec.name.clone(),
            path: plan.paths.state.clone(),
        }
        .into());
    }
    if mesh_net::Netns::exists(&plan.netns) {
        return Err(Error::NetnsInUse { name: plan.netns.clone() });
    }
    Ok((plan, images))
}

impl Mesh {
    /// Creates the mesh and starts every node; returns once all QEMU processes run. On error
    /// everything made so far is removed again.
    pub async fn up(spec: &MeshSpec, options: UpOptions) -> Result<Mesh, Error> {
        let (plan, images) = preflight(spec, &options)?;
        let span = info_span!("mesh", name = %plan.spec.name);

        // From here on every effect is journaled; a failure rolls back through the journal.
        create_private_dir(&plan.paths.state)?;
        let lock = OwnerLock::acquire(&spec.name, &plan.paths.lock())?;
        let journal = Arc::new(Mutex::new(Journal::open(&plan.paths.journal())?));
        let events = EventLog::new(plan.paths.events());
        let mut mesh = Mesh {
            plan,
            events,
            readiness: Vec::new(),
            repo: None,
            journal,
            lock: Some(lock),
            nodes: Vec::new(),
            options,
            shapers: HashMap::new(),
        };
        match mesh.provision(&images).instrument(span).await {
            Ok(()) => Ok(mesh),
            Err(e) => {
                tracing::debug!(error = %e, "mesh up failed, removing what was made");
                mesh.rollback().await;
                Err(e)
            }
        }
    }

    async fn provision(&mut self, images: &HashMap<Arch, BaseImage>) -> Result<(), Error> {
        let plan = self.plan.clone();
        record(&self.journal, &Record::Dir { path: plan.paths.runtime.clone() })?;
        create_private_dir(&plan.paths.runtime)?;
        std::fs::write(
            plan.paths.plan(),
            serde_json::to_vec_pretty(&plan)
                .map_err(std::io::Error::other)
                .map_err(|e| Error::Io { path: plan.paths.plan(), source: e })?,
        )
        .map_err(|e| Error::Io { path: plan.paths.plan(), source: e })?;
        self.events.emit(None, "mesh.up", serde_json::json!({ "nodes": plan.nodes.len() }));

        self.options.say(Progress::Step { what: "keys".into() });
        create_private_dir(&plan.paths.keys())?;
        let client = crate::keys::ensure_key(
            &plan.paths.client_key(),
            &format!("vm-mesh {}", plan.spec.name),
        )?;
        let mut host_keys = Vec::new();
        for node in &plan.nodes {
            create_private_dir(&node.dir)?;
            host_keys.push(crate::keys::ensure_key(&node.host_key(), &node.name)?);
        }
        let pins: Vec<_> =
            plan.nodes.iter().zip(&host_keys).map(|(n, k)| (n.ip, k.public.as_str())).collect();
        crate::keys::write_known_hosts(&plan.paths.known_hosts(), &pins)?;

        if !plan.spec.repo.none {
            self.options.say(Progress::Step { what: "repository".into() });
            let source = crate::repo::resolve_source(plan.spec.repo.source.as_deref())?;
            let mut arches: Vec<Arch> = plan.nodes.iter().map(|n| n.arch).collect();
            arches.sort_by_key(|a| a.to_string());
            arches.dedup();
            let repo = crate::repo::prepare(
                &source,
                plan.spec.repo.branch.as_deref(),
                plan.spec.repo.build.as_deref(),
                &arches,
                &plan.paths.repo_work(),
                &plan.paths.repo_image(),
            )
            .await?;
            // The clone and build outputs are in the image now; the image is all guests need.
            let _ = std::fs::remove_dir_all(plan.paths.repo_work());
            self.repo = Some(repo);
        }

        self.options.say(Progress::Step { what: "overlays and seeds".into() });
        for (node, host_key) in plan.nodes.iter().zip(&host_keys) {
            let image = &images[&node.arch];
            mesh_qemu::create_overlay(&image.disk_path(), &node.overlay())
                .map_err(|source| Error::Overlay { node: node.name.clone(), source })?;
            let seed =
                crate::provision::node_seed(&plan, node, &client, host_key, self.repo.as_ref())?;
            seed.write_iso(&node.seed())
                .map_err(|source| Error::Seed { node: node.name.clone(), source })?;
        }

        self.options.say(Progress::Step { what: "network".into() });
        let net_spec = mesh_net::MeshNetworkSpec {
            netns: plan.netns.clone(),
            bridge: plan.bridge.clone(),
            gateway: plan.gateway,
            prefix_len: plan.prefix_len,
            mtu: plan.spec.network.mtu,
            taps: plan.nodes.iter().map(|n| n.tap.clone()).collect(),
        };
        let journal = self.journal.clone();
        let mut journal_net = move |created: &mesh_net::Created| -> std::io::Result<()> {
            record(&journal, &Record::Net { object: created.clone() })
                .map_err(std::io::Error::other)
        };
        let network = mesh_net::MeshNetwork::create(&net_spec, &mut journal_net).await?;
        let netns_path = network.netns().path();
        // The journal, not this handle, owns the network from now on.
        std::mem::forget(network);

        self.options.say(Progress::Step { what: "probing the accelerator".into() });
        let mut accels = HashMap::new();
        for node in &plan.nodes {
            if let std::collections::hash_map::Entry::Vacant(e) = accels.entry(node.arch) {
                e.insert(self.accel_for(node.arch, &images[&node.arch]));
            }
        }

        let mut chosen: Vec<String> =
            accels.iter().map(|(arch, accel)| format!("{arch} {accel}")).collect();
        chosen.sort();
        self.options.say(Progress::Step { what: format!("accelerator: {}", chosen.join(", ")) });
        self.options.say(Progress::Step { what: "starting QEMU".into() });
        for node in &plan.nodes {
            let accel = accels[&node.arch];
            let cmd = crate::provision::vm_command(
                &plan,
                node,
                &images[&node.arch],
                accel,
                self.repo.as_ref(),
            )?;
            tracing::debug!(node = %node.name, args = ?cmd.args, "qemu command line");
            let saved = crate::fault::command_file(node);
            std::fs::write(
                &saved,
                serde_json::to_vec(&cmd)
                    .map_err(std::io::Error::other)
                    .map_err(|source| Error::Io { path: saved.clone(), source })?,
            )
            .map_err(|source| Error::Io { path: saved.clone(), source })?;
            record(&self.journal, &Record::QemuStarting { node: node.name.clone() })?;
            let nice = boot_nice(&plan, node.arch);
            let process = mesh_qemu::QemuProcess::spawn_niced(
                &cmd,
                Some(&netns_path),
                &node.qemu_log(),
                nice,
            )
            .map_err(|source| Error::Spawn { node: node.name.clone(), source })?;
            record(
                &self.journal,
                &Record::Qemu {
                    node: node.name.clone(),
                    pid: process.pid(),
                    start_time: process.start_time(),
                },
            )?;
            self.events.emit(Some(&node.name), "node.started", serde_json::json!({ "pid": process.pid(), "accel": format!("{accel:?}").to_lowercase(), "nice": nice }));
            info!(node = %node.name, pid = process.pid(), "node started");
            self.nodes.push(NodeRuntime { process: Some(process), qmp: None, accel });
        }
        Ok(())
    }

    fn accel_for(&self, arch: Arch, image: &BaseImage) -> Accel {
        match self.options.accel {
            AccelChoice::Tcg => Accel::Tcg,
            AccelChoice::Kvm => Accel::Kvm,
            AccelChoice::Auto => crate::accel::choose(
                arch,
                image.kernel_path().as_deref(),
                &crate::plan::cache_root(),
            ),
        }
    }

    /// Waits for every node in parallel; returns their readiness in node order.
    pub async fn wait_ready(&mut self) -> &[NodeReadiness] {
        let plan = Arc::new(self.plan.clone());
        let mut futures = Vec::new();
        for (node, rt) in plan.nodes.iter().zip(self.nodes.iter()) {
            let timeout = self
                .options
                .ready_timeout
                .unwrap_or_else(|| default_ready_timeout(node.arch, rt.accel, plan.nodes.len()));
            let pid = rt.process.as_ref().map(|p| (p.pid(), p.start_time()));
            futures.push(wait_node(
                plan.clone(),
                node.clone(),
                pid,
                timeout,
                self.options.progress.clone(),
                self.events.clone(),
            ));
        }
        let results = futures::future::join_all(futures).await;
        self.readiness.clear();
        for ((readiness, qmp), rt) in results.into_iter().zip(self.nodes.iter_mut()) {
            rt.qmp = qmp;
            self.readiness.push(readiness);
        }
        &self.readiness
    }

    /// Runs a templated command on the ready nodes (or the named ones).
    pub async fn exec(
        &self,
        template: &str,
        only: &[String],
        timeout: Duration,
    ) -> Result<Vec<ExecResult>, Error> {
        crate::ssh::exec_nodes(&self.plan, only, template, timeout).await
    }

    /// The default check: every node pings every other over the mesh; stdout is the kernel
    /// release.
    pub async fn check(&self, timeout: Duration) -> Result<Vec<ExecResult>, Error> {
        self.exec(CHECK_COMMAND, &[], timeout).await
    }

    /// Applies a node fault, using this mesh's own QMP connections.
    pub async fn fault(
        &mut self,
        node: &str,
        fault: crate::fault::NodeFault,
    ) -> Result<String, Error> {
        use crate::fault::NodeFault;
        let index = self.plan.nodes.iter().position(|n| n.name == node).ok_or_else(|| {
            Error::NotFound { what: format!("mesh {} has no node {node}", self.plan.spec.name) }
        })?;
        let rt = &mut self.nodes[index];
        let held = rt.qmp.as_ref().filter(|q| !q.is_closed());
        let direct = match (fault, held) {
            (NodeFault::Pause, Some(q)) => Some(q.stop().await),
            (NodeFault::Resume, Some(q)) => Some(q.cont().await),
            (NodeFault::Reset, Some(q)) => Some(q.system_reset().await),
            (NodeFault::LinkDown, Some(q)) => Some(q.set_link("nic0", false).await),
            (NodeFault::LinkUp, Some(q)) => Some(q.set_link("nic0", true).await),
            _ => None,
        };
        if let Some(result) = direct {
            result.map_err(|e| Error::Fault { node: node.to_owned(), what: e.to_string() })?;
            self.events.emit(
                Some(node),
                &format!(
                    "fault.node.{}",
                    serde_json::to_value(fault)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                ),
                serde_json::Value::Null,
            );
            return Ok(format!("{node}: {fault:?}"));
        }
        // Kill and restart end the process: the old QMP connection and handle go with it.
        rt.qmp = None;
        let outcome = crate::fault::apply(&self.plan, node, fault).await?;
        if let Some(mut p) = rt.process.take() {
            if fault == NodeFault::Kill || fault == NodeFault::Restart {
                let _ = tokio::time::timeout(Duration::from_secs(5), p.wait()).await;
            } else {
                rt.process = Some(p);
            }
        }
        Ok(outcome)
    }

    /// Changes the mesh network (delay, loss, partition, ...), with shapers on threads of this
    /// process. `seed` fixes every random decision (recorded in the event log).
    pub async fn net(
        &mut self,
        op: &crate::netfault::NetOp,
        seed: Option<u64>,
    ) -> Result<String, Error> {
        crate::netfault::apply(
            &self.plan,
            op,
            seed,
            crate::netfault::ShaperHost::Threads(&mut self.shapers),
        )
        .await
    }

    /// Waits until `node` is ready again (after a restart) and returns its readiness.
    pub async fn wait_node_ready(
        &mut self,
        node: &str,
        timeout: Duration,
    ) -> Result<NodeReadiness, Error> {
        let index = self.plan.nodes.iter().position(|n| n.name == node).ok_or_else(|| {
            Error::NotFound { what: format!("mesh {} has no node {node}", self.plan.spec.name) }
        })?;
        let plan = Arc::new(self.plan.clone());
        let pid = crate::fault::live_process(&self.plan, node);
        let (r, qmp) = wait_node(
            plan.clone(),
            plan.nodes[index].clone(),
            pid,
            timeout,
            self.options.progress.clone(),
            self.events.clone(),
        )
        .await;
        self.nodes[index].qmp = qmp;
        Ok(r)
    }

    /// Leaves the mesh running after this process exits (`--keep`).
    pub fn keep(mut self) -> Result<(), Error> {
        record(&self.journal, &Record::Kept)?;
        self.events.emit(None, "mesh.kept", serde_json::Value::Null);
        self.lock.take();
        Ok(())
    }

    /// Stops every node and removes everything the mesh made.
    pub async fn teardown(mut self) -> Result<TeardownReport, Error> {
        let started = Instant::now();
        for (_, shaper) in self.shapers.drain() {
            let _ = shaper.stop();
        }
        for rt in &mut self.nodes {
            if let Some(qmp) = rt.qmp.take() {
                // A clean `quit` closes the tap at once; the journal-driven kill follows anyway.
                let _ = tokio::time::timeout(Duration::from_millis(500), qmp.quit()).await;
            }
        }
        for rt in &mut self.nodes {
            if let Some(mut p) = rt.process.take() {
                let _ = tokio::time::timeout(Duration::from_millis(500), p.wait()).await;
            }
        }
        self.events.emit(None, "mesh.down", serde_json::Value::Null);
        let report = teardown_recorded(&self.plan.paths).await?;
        info!(secs = started.elapsed().as_secs_f64(), "mesh torn down");
        Ok(report)
    }

    async fn rollback(&mut self) {
        self.nodes.clear();
        if let Err(e) = teardown_recorded(&self.plan.paths).await {
            warn!(error = %e, "rollback incomplete; run `mesh gc`");
        }
    }
}

/// Waits until `node` of a mesh this process does not own is ready (after `mesh node
/// restart`). Readiness is pushed by the guest again on every boot.
pub async fn wait_node_detached(
    plan: &MeshPlan,
    node: &str,
    timeout: Duration,
    progress: Option<ProgressFn>,
) -> Result<NodeReadiness, Error> {
    let node_plan = plan
        .node(node)
        .ok_or_else(|| Error::NotFound {
            what: format!("mesh {} has no node {node}", plan.spec.name),
        })?
        .clone();
    let pid = crate::fault::live_process(plan, node);
    let events = EventLog::new(plan.paths.events());
    let (r, _qmp) =
        wait_node(Arc::new(plan.clone()), node_plan, pid, timeout, progress, events).await;
    Ok(r)
}

/// The built-in check run on every node when no action is given.
pub const CHECK_COMMAND: &str = "set -e; for p in $(echo {peers} | tr , ' '); do if ! ping -c 1 -W 5 $p >/dev/null 2>&1; then echo \"cannot reach $p\" >&2; exit 1; fi; done; uname -r";

/// Niceness of the QEMU processes of fast nodes while they boot; see [`boot_nice`].
// FIXME: a fixed value. Measured on 2 cores with 2 x86_64 + 1 aarch64 nodes, 5 sometimes
// lets the aarch64 node finish well before the x86_64 ones (49 s against 64 s), so the
// x86_64 nodes become the slowest; weights balanced from each arch's expected boot work
// and the core count would finish all nodes together. Matters for meshes that mix arches.
pub const BOOT_NICE: i32 = 5;

/// The niceness a node's QEMU starts with. A mesh is ready when its slowest node is, and
/// when it mixes arches that is a node emulating a foreign instruction set (aarch64 on an
/// x86_64 host takes two to three times as long as x86_64 to boot). So nodes of the host's
/// own arch boot at [`BOOT_NICE`] (a third of the CPU weight), which leaves the slow nodes a
/// whole core where cores are scarce; each node goes back to 0 once it is ready or failed.
/// Where cores are plentiful, the niceness makes no difference.
pub fn boot_nice(plan: &MeshPlan, arch: Arch) -> i32 {
    let host = Arch::host();
    if arch == host && plan.nodes.iter().any(|n| n.arch != host) {
        BOOT_NICE
    } else {
        0
    }
}

/// Readiness timeout per node: TCG is slow, and slower still when nodes share few cores.
pub fn default_ready_timeout(arch: Arch, accel: Accel, nodes: usize) -> Duration {
    let base = match (accel, arch == Arch::host()) {
        (Accel::Kvm, _) => 120,
        (Accel::Tcg, true) => 300,
        (Accel::Tcg, false) => 600,
    };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let load = (nodes as u64).div_ceil(cores as u64).max(1);
    Duration::from_secs(base * load)
}

async fn wait_node(
    plan: Arc<MeshPlan>,
    node: NodePlan,
    pid: Option<(u32, u64)>,
    timeout: Duration,
    progress: Option<ProgressFn>,
    events: EventLog,
) -> (NodeReadiness, Option<mesh_qemu::Qmp>) {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut r = NodeReadiness::new(&node.name);
    let say = |p: Progress| {
        if let Some(f) = &progress {
            f(&p);
        }
    };
    let alive = move || pid.is_some_and(|(pid, start)| crate::procinfo::is_running(pid, start));
    let mut qmp = None;

    let outcome: Result<(), String> = async {
        if !alive() {
            return Err("QEMU exited at once".into());
        }
        r.reach(Phase::ProcessUp, started);
        say(Progress::Node {
            node: node.name.clone(),
            phase: Phase::ProcessUp,
            secs: started.elapsed().as_secs_f64(),
        });

        let client = mesh_qemu::Qmp::connect(&node.qmp_socket, Duration::from_secs(30), alive)
            .await
            .map_err(|e| format!("QMP: {e}"))?;
        loop {
            let status =
                client.query_status().await.map_err(|e| format!("QMP query-status: {e}"))?;
            if status.running {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!("QEMU never reached running (status {})", status.status));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        qmp = Some(client);
        r.reach(Phase::QmpRunning, started);
        say(Progress::Node {
            node: node.name.clone(),
            phase: Phase::QmpRunning,
            secs: started.elapsed().as_secs_f64(),
        });

        let status = crate::ready::wait_guest_signal(&node.ready_socket, deadline, &alive).await?;
        r.cloud_init_status = Some(status.clone());
        if status != "done" {
            return Err(format!("cloud-init finished with status {status:?}"));
        }
        r.reach(Phase::CloudInitDone, started);
        say(Progress::Node {
            node: node.name.clone(),
            phase: Phase::CloudInitDone,
            secs: started.elapsed().as_secs_f64(),
        });

        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err("SSH did not answer in time".into());
            }
            let res = crate::ssh::run(&plan, &node, "true", remaining.min(Duration::from_secs(20)))
                .await
                .map_err(|e| e.to_string())?;
            if res.ok() {
                break;
            }
            if !alive() {
                return Err("QEMU exited".into());
            }
            tracing::debug!(node = %node.name, stderr = %res.stderr.trim(), "ssh not ready yet");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        r.reach(Phase::SshReady, started);
        say(Progress::Node {
            node: node.name.clone(),
            phase: Phase::SshReady,
            secs: started.elapsed().as_secs_f64(),
        });
        Ok(())
    }
    .await;

    // Booting is over either way: a node niced for its boot (see `boot_nice`) gets its
    // full share back.
    if let Some((pid, _)) = pid.filter(|_| alive()) {
        if let Err(e) = mesh_qemu::set_priority(pid, 0) {
            tracing::warn!(node = %node.name, error = %e, "cannot restore QEMU's priority");
        }
    }
    match outcome {
        Ok(()) => {
            events.emit(
                Some(&node.name),
                "node.ready",
                serde_json::json!({ "secs": r.ready_secs() }),
            );
        }
        Err(error) => {
            r.serial_tail = Some(crate::ready::serial_tail(&node.serial_log(), 15));
            say(Progress::NodeFailed {
                node: node.name.clone(),
                phase: r.phase,
                error: error.clone(),
            });
            events.emit(
                Some(&node.name),
                "node.failed",
                serde_json::json!({ "phase": r.phase, "error": error }),
            );
            r.error = Some(error);
        }
    }
    let _ = READY_PORT;
    (r, qmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(n_x86: usize, n_aarch: usize) -> crate::MeshPlan {
        let spec = crate::MeshSpec::resolve(
            None,
            &crate::SpecOverrides {
                name: Some("t".into()),
                n_x86: Some(n_x86),
                n_aarch: Some(n_aarch),
                ..Default::default()
            },
        )
        .expect("spec");
        crate::MeshPlan::with_paths(
            &spec,
            crate::MeshPaths { state: "/s".into(), runtime: "/r".into() },
        )
        .expect("plan")
    }

    #[test]
    fn only_host_arch_nodes_of_a_mixed_mesh_boot_niced() {
        let host = Arch::host();
        let foreign = if host == Arch::X86_64 { Arch::Aarch64 } else { Arch::X86_64 };
        let mixed = plan_of(2, 1);
        assert_eq!(boot_nice(&mixed, host), BOOT_NICE);
        assert_eq!(boot_nice(&mixed, foreign), 0);
        let (x, a) = if host == Arch::X86_64 { (3, 0) } else { (0, 3) };
        assert_eq!(boot_nice(&plan_of(x, a), host), 0, "one arch: nobody waits for another");
    }

    #[test]
    fn builtin_check_command_is_a_valid_template() {
        // Regression: the check once used `{ ...; }` shell groups, which the template
        // renderer took for placeholders, so every default `mesh up` failed after boot.
        let spec = crate::MeshSpec::resolve(
            None,
            &crate::SpecOverrides { name: Some("t".into()), n_x86: Some(2), ..Default::default() },
        )
        .expect("spec");
        let plan = crate::MeshPlan::with_paths(
            &spec,
            crate::MeshPaths { state: "/s".into(), runtime: "/r".into() },
        )
        .expect("plan");
        let cmd = crate::template::render(CHECK_COMMAND, &plan, &plan.nodes[0]).expect("renders");
        assert!(cmd.contains(&plan.nodes[1].ip.to_string()));
    }
}
