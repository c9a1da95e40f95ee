//! What the user asked for: the mesh spec, from flags and/or a `mesh.toml`, validated before
//! anything is created.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use mesh_qemu::Arch;
use serde::{Deserialize, Serialize};

/// Errors found while reading or checking a mesh spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The spec file could not be read.
    #[error("cannot read mesh spec {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The spec file is not valid TOML for a mesh.
    #[error("invalid mesh spec {path}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// The mesh name cannot be used in interface names and paths.
    #[error(
        "invalid mesh name {name:?}: use 1-16 characters a-z, 0-9 and '-', starting with a letter"
    )]
    BadName {
        /// The rejected name.
        name: String,
    },
    /// No node was asked for.
    #[error("a mesh needs at least one node (use --n-x86 and/or --n-aarch)")]
    NoNodes,
    /// More nodes than we allow in one mesh.
    #[error("{count} nodes asked for; a mesh holds at most {max}")]
    TooManyNodes {
        /// Nodes asked for.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A node's memory or CPU count is out of range.
    #[error("node {node}: {what}")]
    BadNode {
        /// The node's name.
        node: String,
        /// What is wrong.
        what: String,
    },
    /// The network part of the spec is unusable.
    #[error("network: {what}")]
    BadNetwork {
        /// What is wrong.
        what: String,
    },
    /// The memory all nodes ask for exceeds what the host has.
    #[error(
        "the nodes need {needed_mib} MiB of memory in all but the host has {available_mib} MiB \
         available"
    )]
    NotEnoughMemory {
        /// Sum over nodes.
        needed_mib: u64,
        /// MemAvailable of the host.
        available_mib: u64,
    },
}

/// The largest mesh we plan for; the default /24 subnet has room for more, but QEMU processes
/// beyond this on one host are a mistake more often than an intent.
pub const MAX_NODES: usize = 64;

/// One group of identical nodes in a spec file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeGroup {
    /// CPU architecture of these nodes.
    pub arch: Arch,
    /// How many nodes of this kind.
    #[serde(default = "one")]
    pub count: usize,
    /// Guest memory in MiB.
    #[serde(default)]
    pub memory_mib: Option<u32>,
    /// Guest vCPUs.
    #[serde(default)]
    pub cpus: Option<u32>,
    /// Extra cloud-config keys merged into each node's user-data.
    #[serde(default)]
    pub cloud_config: Option<toml::Table>,
}

fn one() -> usize {
    1
}

/// Network settings of a mesh.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetworkSettings {
    /// Mesh subnet in CIDR form, e.g. `10.77.0.0/24`. The first host address is the gateway
    /// (the bridge); nodes follow.
    #[serde(default = "default_subnet")]
    pub subnet: String,
    /// MTU of the bridge, the taps and the guests' NICs.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
}

fn default_subnet() -> String {
    "10.77.0.0/24".to_owned()
}

fn default_mtu() -> u32 {
    1500
}

impl Default for NetworkSettings {
    fn default() -> Self {
        Self { subnet: default_subnet(), mtu: default_mtu() }
    }
}

impl NetworkSettings {
    /// The subnet split into network address and prefix length.
    pub fn parse_subnet(&self) -> Result<(Ipv4Addr, u8), SpecError> {
        let bad = |what: &str| SpecError::BadNetwork {
            what: format!("subnet {:?}: {what}", self.subnet),
        };
        let (addr, len) =
            self.subnet.split_once('/').ok_or_else(|| bad("expected ADDRESS/PREFIX"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let len: u8 = len.parse().map_err(|_| bad("prefix length is not a number"))?;
        if !(8..=30).contains(&len) {
            return Err(bad("prefix length must be between 8 and 30"));
        }
        Ok((addr, len))
    }
}

/// The code repository injected into every node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RepoSettings {
    /// A local path or a URL git can clone. `None`: the git repository around the current
    /// directory, if any.
    pub source: Option<String>,
    /// Branch or tag to clone.
    pub branch: Option<String>,
    /// Build command run once per arch on the host; `{target}` and `{arch}` are filled in and
    /// `$MESH_OUT` names the directory whose content is that arch's build output.
    pub build: Option<String>,
    /// Inject no repository at all.
    #[serde(default)]
    pub none: bool,
}

/// A whole mesh as described in `mesh.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct MeshFile {
    /// Mesh name.
    pub name: Option<String>,
    /// Node groups.
    #[serde(default)]
    pub nodes: Vec<NodeGroup>,
    /// Network settings.
    #[serde(default)]
    pub network: NetworkSettings,
    /// Repository settings.
    #[serde(default)]
    pub repo: RepoSettings,
    /// Command run on every node once the mesh is ready.
    pub action: Option<String>,
}

impl MeshFile {
    /// Reads and parses a `mesh.toml`.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| SpecError::ReadFile { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|source| SpecError::ParseFile {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }
}

/// One node as asked for, before planning.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeSpec {
    /// Architecture.
    pub arch: Arch,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Extra cloud-config keys.
    pub cloud_config: Option<serde_json::Value>,
}

/// The validated description of a mesh.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MeshSpec {
    /// Mesh name, safe for interface names and paths.
    pub name: String,
    /// Nodes in order.
    pub nodes: Vec<NodeSpec>,
    /// Network settings.
    pub network: NetworkSettings,
    /// Repository settings.
    pub repo: RepoSettings,
    /// Action run on all nodes, if any.
    pub action: Option<String>,
}

/// Default guest memory per arch, MiB: enough for cloud-init and a small test program.
pub fn default_memory_mib(arch: Arch) -> u32 {
    match arch {
        Arch::X86_64 => 1024,
        Arch::Aarch64 => 1024,
    }
}

/// Checks that `name` can be used in interface names, namespace names and paths.
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 16
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(SpecError::BadName { name: name.to_owned() })
    }
}

/// Flags given on the command line; they override the file.
#[derive(Debug, Clone, Default)]
pub struct SpecOverrides {
    /// `--name`.
    pub name: Option<String>,
    /// `--n-x86`.
    pub n_x86: Option<usize>,
    /// `--n-aarch`.
    pub n_aarch: Option<usize>,
    /// `--repo`.
    pub repo: Option<String>,
    /// `--branch`.
    pub branch: Option<String>,
    /// `--build`.
    pub build: Option<String>,
    /// `--no-repo`.
    pub no_repo: bool,
    /// `--action`.
    pub action: Option<String>,
    /// `--memory` for every node, MiB.
    pub memory_mib: Option<u32>,
}

impl MeshSpec {
    /// Merges a spec file (if any) and flags into a checked spec.
    pub fn resolve(file: Option<MeshFile>, flags: &SpecOverrides) -> Result<MeshSpec, SpecError> {
        let file = file.unwrap_or_default();
        let name = flags.name.clone().or(file.name.clone()).unwrap_or_else(|| "mesh".to_owned());
        validate_name(&name)?;

        let mut groups = file.nodes.clone();
        // Counts given as flags replace the file's groups of that arch.
        for (arch, count) in [(Arch::X86_64, flags.n_x86), (Arch::Aarch64, flags.n_aarch)] {
            if let Some(count) = count {
                let template = groups.iter().find(|g| g.arch == arch).cloned();
                groups.retain(|g| g.arch != arch);
                let mut group = template.unwrap_or(NodeGroup {
                    arch,
                    count,
                    memory_mib: None,
                    cpus: None,
                    cloud_config: None,
                });
                group.count = count;
                groups.push(group);
            }
        }
        groups.sort_by_key(|g| match g.arch {
            Arch::X86_64 => 0,
            Arch::Aarch64 => 1,
        });

        let mut nodes = Vec::new();
        for group in &groups {
            for _ in 0..group.count {
                let memory_mib = flags
                    .memory_mib
                    .or(group.memory_mib)
                    .unwrap_or_else(|| default_memory_mib(group.arch));
                let cloud_config = group
                    .cloud_config
                    .as_ref()
                    .map(|t| serde_json::to_value(t).unwrap_or(serde_json::Value::Null));
                nodes.push(NodeSpec {
                    arch: group.arch,
                    memory_mib,
                    cpus: group.cpus.unwrap_or(1),
                    cloud_config,
                });
            }
        }
        if nodes.is_empty() {
            return Err(SpecError::NoNodes);
        }
        if nodes.len() > MAX_NODES {
            return Err(SpecError::TooManyNodes { count: nodes.len(), max: MAX_NODES });
        }
        for (i, n) in nodes.iter().enumerate() {
            if !(256..=65536).contains(&n.memory_mib) {
                return Err(SpecError::BadNode {
                    node: format!("#{i}"),
                    what: format!("memory {} MiB is outside 256..=65536", n.memory_mib),
                });
            }
            if !(1..=16).contains(&n.cpus) {
                return Err(SpecError::BadNode {
                    node: format!("#{i}"),
                    what: format!("{} vCPUs is outside 1..=16", n.cpus),
                });
            }
        }
        file.network.parse_subnet()?;
        if !(576..=9000).contains(&file.network.mtu) {
            return Err(SpecError::BadNetwork {
                what: format!("mtu {} is outside 576..=9000", file.network.mtu),
            });
        }

        let mut repo = file.repo.clone();
        if flags.repo.is_some() {
            repo.source = flags.repo.clone();
        }
        if flags.branch.is_some() {
            repo.branch = flags.branch.clone();
        }
        if flags.build.is_some() {
            repo.build = flags.build.clone();
        }
        if flags.no_repo {
            repo.none = true;
        }
        let action = flags.action.clone().or(file.action.clone());
        Ok(MeshSpec { name, nodes, network: file.network, repo, action })
    }

    /// Fails when the nodes together ask for more memory than the host has available.
    pub fn check_memory(&self) -> Result<(), SpecError> {
        let needed_mib: u64 = self.nodes.iter().map(|n| u64::from(n.memory_mib) + 64).sum();
        if let Some(available_mib) = host_available_mib() {
            if needed_mib > available_mib {
                return Err(SpecError::NotEnoughMemory { needed_mib, available_mib });
            }
        }
        Ok(())
    }
}

/// `MemAvailable` from /proc/meminfo, in MiB.
fn host_available_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(x: usize, a: usize) -> SpecOverrides {
        SpecOverrides {
            name: Some("demo".into()),
            n_x86: Some(x),
            n_aarch: Some(a),
            ..Default::default()
        }
    }

    #[test]
    fn flags_make_nodes_in_arch_order() {
        let spec = MeshSpec::resolve(None, &flags(2, 1)).expect("valid");
        let arches: Vec<Arch> = spec.nodes.iter().map(|n| n.arch).collect();
        assert_eq!(arches, vec![Arch::X86_64, Arch::X86_64, Arch::Aarch64]);
    }

    #[test]
    fn zero_nodes_is_refused() {
        assert!(matches!(MeshSpec::resolve(None, &flags(0, 0)), Err(SpecError::NoNodes)));
    }

    #[test]
    fn names_that_cannot_be_interfaces_are_refused() {
        for bad in ["", "Demo", "a b", "x/y", "-a", "a-", "0abc", "averyveryverylongname"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        validate_name("demo-2").expect("valid name");
    }

    #[test]
    fn file_groups_are_overridden_by_flags() {
        let file: MeshFile = toml::from_str(
            r#"
            name = "filemesh"
            [[nodes]]
            arch = "x86_64"
            count = 3
            memory_mib = 768
            [network]
            subnet = "10.9.0.0/24"
            "#,
        )
        .expect("parses");
        let spec =
            MeshSpec::resolve(Some(file), &SpecOverrides { n_x86: Some(1), ..Default::default() })
                .expect("valid");
        assert_eq!(spec.name, "filemesh");
        assert_eq!(spec.nodes.len(), 1);
        assert_eq!(spec.nodes[0].memory_mib, 768);
        assert_eq!(spec.network.subnet, "10.9.0.0/24");
    }

    #[test]
    fn unknown_keys_in_file_are_errors() {
        assert!(toml::from_str::<MeshFile>("nodez = 3").is_err());
    }

    #[test]
    fn bad_subnet_is_refused() {
        let file = MeshFile {
            network: NetworkSettings { subnet: "10.0.0.0/33".into(), mtu: 1500 },
            ..Default::default()
        };
        assert!(matches!(
            MeshSpec::resolve(Some(file), &flags(1, 0)),
            Err(SpecError::BadNetwork { .. })
        ));
    }
}
