//! The mesh: spec, plan (names, addresses, MACs, paths), base images, repository injection,
//! provisioning, readiness, fan-out exec, state and crash recovery, teardown.
//!
//! This is the only crate that composes the others:
//!
//! ```text
//! mesh-core -> mesh-qemu      (overlays, QEMU command line, processes, QMP)
//!           -> mesh-net       (namespace, bridge, taps)
//!           -> mesh-cloudinit -> mesh-iso   (seeds)
//!           -> mesh-iso       (the shared repo image)
//! ```
//!
//! It leaves argument parsing, progress display and report formatting to `mesh-cli`, and
//! never decides how things look on a terminal.
//!
//! # Example
//!
//! Planning is pure and cheap; it is what `mesh up` does first:
//!
//! ```
//! use mesh_core::{MeshPlan, MeshSpec, SpecOverrides};
//!
//! let flags = SpecOverrides {
//!     name: Some("demo".into()),
//!     n_x86: Some(2),
//!     n_aarch: Some(1),
//!     ..Default::default()
//! };
//! let spec = MeshSpec::resolve(None, &flags).expect("a valid spec");
//! let plan = MeshPlan::new(&spec).expect("room for three nodes");
//! let names: Vec<&str> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
//! assert_eq!(names, ["x86-1", "x86-2", "aarch-1"]);
//! ```

pub mod accel;
pub mod fault;
pub mod image;
pub mod keys;
pub mod mesh;
pub mod netfault;
pub mod plan;
pub mod procinfo;
pub mod provision;
pub mod ready;
pub mod repo;
pub mod spec;
pub mod ssh;
pub mod state;
pub mod teardown;
pub mod template;

use std::path::PathBuf;

pub use mesh::{AccelChoice, Mesh, Progress, ProgressFn, UpOptions};
pub use plan::{MeshPaths, MeshPlan, NodePlan};
pub use spec::{MeshFile, MeshSpec, SpecOverrides};

/// Everything that can stop a mesh operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec is invalid.
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    /// The mesh cannot be planned.
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    /// The state directory.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// A command template.
    #[error(transparent)]
    Template(#[from] template::TemplateError),
    /// Keys.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// The repository.
    #[error(transparent)]
    Repo(#[from] repo::RepoError),
    /// Base images.
    #[error(transparent)]
    Image(#[from] image::ImageError),
    /// SSH.
    #[error(transparent)]
    Ssh(#[from] ssh::SshError),
    /// Teardown.
    #[error(transparent)]
    Teardown(#[from] teardown::TeardownError),
    /// The network.
    #[error("cannot build the mesh network")]
    Net(#[from] mesh_net::NetError),
    /// No base image for an arch.
    #[error("no base image for {arch}: run `mesh image build --arch {arch}` (or `cargo xtask mesh`, which builds missing images)")]
    NoImage {
        /// The arch.
        arch: mesh_qemu::Arch,
    },
    /// A namespace of that name exists without our state.
    #[error("network namespace {name} already exists; run `mesh gc` if a crashed run left it")]
    NetnsInUse {
        /// Namespace name.
        name: String,
    },
    /// A node's overlay.
    #[error("cannot create the disk overlay of {node}")]
    Overlay {
        /// Node.
        node: String,
        /// Cause.
        #[source]
        source: mesh_qemu::OverlayError,
    },
    /// A node's seed.
    #[error("cannot write the cloud-init seed of {node}")]
    Seed {
        /// Node.
        node: String,
        /// Cause.
        #[source]
        source: mesh_cloudinit::SeedError,
    },
    /// A node's QEMU command line.
    #[error("invalid VM description for {node}")]
    VmSpec {
        /// Node.
        node: String,
        /// Cause.
        #[source]
        source: mesh_qemu::SpecError,
    },
    /// QEMU could not be started.
    #[error("cannot start QEMU for {node}")]
    Spawn {
        /// Node.
        node: String,
        /// Cause.
        #[source]
        source: mesh_qemu::ProcessError,
    },
    /// A fault could not be applied.
    #[error("fault on {node}: {what}")]
    Fault {
        /// Node.
        node: String,
        /// What went wrong.
        what: String,
    },
    /// A network condition could not be applied.
    #[error("{what}")]
    NetFault {
        /// What went wrong.
        what: String,
    },
    /// No such mesh or node.
    #[error("{what}")]
    NotFound {
        /// What is missing.
        what: String,
    },
    /// A file.
    #[error("{path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
