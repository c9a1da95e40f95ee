//! The plan: every name, address, MAC and path of a mesh, derived deterministically from the
//! spec before anything is created.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use mesh_qemu::Arch;
use serde::{Deserialize, Serialize};

use crate::spec::{MeshSpec, SpecError};

/// Errors while planning a mesh.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The spec itself is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The subnet cannot hold the nodes.
    #[error("cannot place {nodes} nodes in subnet {subnet}")]
    Addresses {
        /// The subnet asked for.
        subnet: String,
        /// Node count.
        nodes: usize,
        /// The cause.
        #[source]
        source: mesh_net::PlanError,
    },
}

/// The mesh's directories.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MeshPaths {
    /// Per-mesh state: journal, event log, keys, overlays, seeds, logs.
    pub state: PathBuf,
    /// Short directory for UNIX sockets (QMP, readiness ports); paths must fit 107 bytes.
    pub runtime: PathBuf,
}

impl MeshPaths {
    /// Paths for mesh `name` under the XDG state directory and the runtime directory.
    pub fn for_mesh(name: &str) -> MeshPaths {
        MeshPaths { state: state_root().join(name), runtime: runtime_root().join(name) }
    }

    /// The journal of side effects.
    pub fn journal(&self) -> PathBuf {
        self.state.join("journal.jsonl")
    }

    /// The event log.
    pub fn events(&self) -> PathBuf {
        self.state.join("events.jsonl")
    }

    /// The saved plan.
    pub fn plan(&self) -> PathBuf {
        self.state.join("plan.json")
    }

    /// The lock held by the process that owns the mesh.
    pub fn lock(&self) -> PathBuf {
        self.state.join("lock")
    }

    /// Keys directory (0700).
    pub fn keys(&self) -> PathBuf {
        self.state.join("keys")
    }

    /// Client private key.
    pub fn client_key(&self) -> PathBuf {
        self.keys().join("client_ed25519")
    }

    /// known_hosts with every node's pinned host key.
    pub fn known_hosts(&self) -> PathBuf {
        self.keys().join("known_hosts")
    }

    /// The shared read-only repository image.
    pub fn repo_image(&self) -> PathBuf {
        self.state.join("repo.iso")
    }

    /// Work directory for the clone and per-arch build outputs.
    pub fn repo_work(&self) -> PathBuf {
        self.state.join("repo-work")
    }
}

/// `$XDG_STATE_HOME/vm-mesh/meshes` (default `~/.local/state/vm-mesh/meshes`).
pub fn state_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("VM_MESH_STATE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| home().join(".local/state"));
    base.join("vm-mesh/meshes")
}

/// `$XDG_CACHE_HOME/vm-mesh` (default `~/.cache/vm-mesh`).
pub fn cache_root() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| home().join(".cache"));
    base.join("vm-mesh")
}

/// A short directory for sockets: `/run/vm-mesh` as root, else `$XDG_RUNTIME_DIR/vm-mesh`.
pub fn runtime_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("VM_MESH_RUNTIME_DIR") {
        return PathBuf::from(dir);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/vm-mesh");
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("vm-mesh")
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"))
}

/// One node's planned identity and files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodePlan {
    /// Position in the mesh, from 0.
    pub index: usize,
    /// Node name, also the guest's hostname (e.g. `x86-1`, `aarch-1`).
    pub name: String,
    /// Architecture.
    pub arch: Arch,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Address on the mesh network.
    pub ip: Ipv4Addr,
    /// MAC of its NIC, `aa:bb:..`.
    pub mac: String,
    /// Tap device in the mesh namespace.
    pub tap: String,
    /// Extra cloud-config keys.
    pub cloud_config: Option<serde_json::Value>,
    /// Node directory (overlay, seed, logs).
    pub dir: PathBuf,
    /// QMP socket.
    pub qmp_socket: PathBuf,
    /// Readiness port socket (virtio-serial).
    pub ready_socket: PathBuf,
}

impl NodePlan {
    /// Disk overlay.
    pub fn overlay(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }

    /// NoCloud seed image.
    pub fn seed(&self) -> PathBuf {
        self.dir.join("seed.iso")
    }

    /// Serial console log.
    pub fn serial_log(&self) -> PathBuf {
        self.dir.join("serial.log")
    }

    /// Interactive serial console socket (QEMU listens).
    pub fn console_socket(&self) -> PathBuf {
        self.qmp_socket.with_extension("console")
    }

    /// QEMU's own stdout/stderr.
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }

    /// The node's host key pair (private part; `.pub` beside it).
    pub fn host_key(&self) -> PathBuf {
        self.dir.join("ssh_host_ed25519_key")
    }
}

/// The whole planned mesh.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MeshPlan {
    /// The spec it was made from.
    pub spec: MeshSpec,
    /// Directories.
    pub paths: MeshPaths,
    /// Network namespace name.
    pub netns: String,
    /// Bridge name inside the namespace.
    pub bridge: String,
    /// Gateway (bridge) address.
    pub gateway: Ipv4Addr,
    /// Prefix length of the mesh subnet.
    pub prefix_len: u8,
    /// Nodes in order.
    pub nodes: Vec<NodePlan>,
}

/// The readiness port's name inside guests (`/dev/virtio-ports/<name>`).
pub const READY_PORT: &str = "org.vmmesh.ready";

/// Name prefix of every namespace vm-mesh creates; `gc` only ever looks at these.
pub const NETNS_PREFIX: &str = "vmmesh-";

impl MeshPlan {
    /// Plans `spec` with the default directories.
    pub fn new(spec: &MeshSpec) -> Result<MeshPlan, PlanError> {
        Self::with_paths(spec, MeshPaths::for_mesh(&spec.name))
    }

    /// Plans `spec` with the given directories.
    pub fn with_paths(spec: &MeshSpec, paths: MeshPaths) -> Result<MeshPlan, PlanError> {
        let (network, prefix_len) = spec.network.parse_subnet()?;
        let (gateway, addrs) = mesh_net::plan_addresses(network, prefix_len, spec.nodes.len())
            .map_err(|source| PlanError::Addresses {
                subnet: spec.network.subnet.clone(),
                nodes: spec.nodes.len(),
                source,
            })?;
        let mut per_arch = [0usize; 2];
        let nodes = spec
            .nodes
            .iter()
            .zip(addrs)
            .enumerate()
            .map(|(index, (node, ip))| {
                let slot = usize::from(node.arch == Arch::Aarch64);
                per_arch[slot] += 1;
                let name = format!("{}-{}", arch_short(node.arch), per_arch[slot]);
                let dir = paths.state.join("nodes").join(&name);
                NodePlan {
                    index,
                    mac: mesh_net::format_mac(&mesh_net::node_mac(&spec.name, &name)),
                    tap: mesh_net::tap_name(&spec.name, index),
                    qmp_socket: paths.runtime.join(format!("{index}.qmp")),
                    ready_socket: paths.runtime.join(format!("{index}.ready")),
                    name,
                    arch: node.arch,
                    memory_mib: node.memory_mib,
                    cpus: node.cpus,
                    ip,
                    cloud_config: node.cloud_config.clone(),
                    dir,
                }
            })
            .collect();
        Ok(MeshPlan {
            netns: format!("{NETNS_PREFIX}{}", spec.name),
            bridge: "meshbr0".to_owned(),
            gateway,
            prefix_len,
            nodes,
            paths,
            spec: spec.clone(),
        })
    }

    /// Finds a node by name.
    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Loads a saved plan.
    pub fn load(path: &Path) -> std::io::Result<MeshPlan> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }
}

/// The short arch word used in node names.
pub fn arch_short(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "x86",
        Arch::Aarch64 => "aarch",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::SpecOverrides;

    fn plan(x: usize, a: usize) -> MeshPlan {
        let spec = MeshSpec::resolve(
            None,
            &SpecOverrides {
                name: Some("demo".into()),
                n_x86: Some(x),
                n_aarch: Some(a),
                ..Default::default()
            },
        )
        .expect("valid spec");
        MeshPlan::with_paths(
            &spec,
            MeshPaths { state: "/tmp/s/demo".into(), runtime: "/run/vm-mesh/demo".into() },
        )
        .expect("plannable")
    }

    #[test]
    fn names_addresses_and_macs_are_deterministic_and_unique() {
        let a = plan(2, 1);
        assert_eq!(a, plan(2, 1));
        let names: Vec<&str> = a.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["x86-1", "x86-2", "aarch-1"]);
        let mut macs: Vec<&str> = a.nodes.iter().map(|n| n.mac.as_str()).collect();
        macs.sort();
        macs.dedup();
        assert_eq!(macs.len(), 3);
        let mut taps: Vec<&str> = a.nodes.iter().map(|n| n.tap.as_str()).collect();
        taps.sort();
        taps.dedup();
        assert_eq!(taps.len(), 3);
        assert!(a.nodes.iter().all(|n| n.ip != a.gateway));
    }

    #[test]
    fn socket_paths_fit_in_sun_path() {
        for n in plan(3, 3).nodes {
            assert!(n.qmp_socket.as_os_str().len() < 108);
        }
    }
}
