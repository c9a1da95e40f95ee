//! mesh-net: the isolated network of a vm-mesh, built in its own network namespace with
//! netlink.
//!
//! What it does:
//! - named network namespaces compatible with `ip netns` ([`Netns`]): create, open,
//!   delete, run code inside ([`Netns::run`]) or start a child inside
//!   ([`Netns::prepare_command`]);
//! - the mesh network ([`MeshNetwork`]): loopback up, a bridge holding the gateway address
//!   with the bridge netfilter hooks off, one persistent tap per VM (made with
//!   `/dev/net/tun` ioctls, since the kernel refuses tap creation over rtnetlink) enslaved
//!   with the bridge's MTU and raised over rtnetlink. Every object is passed to a journal
//!   *before* it is made ([`Created`]), a failure rolls back what was made, and
//!   [`teardown`] removes exactly the journal's objects after a crash;
//! - link controls for fault injection on a [`NetHandle`]: up/down, detach/re-attach,
//!   bridge port isolation, and rate limiting with `tbf` (encoded here; netlink-packet-route
//!   lacks it);
//! - deterministic names and addresses: [`tap_name`], [`node_mac`], [`plan_addresses`];
//! - an optional uplink with NAT to another namespace ([`MeshNetwork::add_uplink`]);
//! - a userspace link shaper ([`shaper`]) for delay, jitter, loss, duplication, reordering,
//!   rate and MAC partitions, since `sch_netem` is not available on every host.
//!
//! What it leaves out: starting QEMU (mesh-qemu), the guests' own network configuration
//! (mesh-cloudinit), the state directory the journal is written to, the choice of names and
//! which impairment goes where (mesh-core). It never changes links, addresses, routes,
//! firewall rules or sysctls of the host's root namespace; the only host-side change is
//! the `/run/netns` mount that `ip netns add` makes too. Everything here needs root
//! (CAP_SYS_ADMIN and CAP_NET_ADMIN); the pure helpers do not.
//!
//! Layering: used by mesh-core only; depends on no other vm-mesh crate.
//!
//! # Examples
//! ```
//! use std::net::Ipv4Addr;
//! use mesh_net::{format_mac, node_mac, plan_addresses, tap_name, MeshNetworkSpec};
//!
//! let (gateway, nodes) = plan_addresses(Ipv4Addr::new(10, 42, 0, 0), 24, 3)?;
//! let spec = MeshNetworkSpec {
//!     netns: "mesh-demo".into(),
//!     bridge: "br0".into(),
//!     gateway,
//!     prefix_len: 24,
//!     mtu: 1500,
//!     taps: (0..nodes.len()).map(|i| tap_name("demo", i)).collect(),
//! };
//! spec.validate()?;
//! assert_eq!(gateway, Ipv4Addr::new(10, 42, 0, 1));
//! assert!(format_mac(&node_mac("demo", "x86-0")).len() == 17);
//! // As root, in a Tokio runtime: MeshNetwork::create(&spec, &mut journal).await?
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod handle;
mod naming;
mod netns;
mod network;
pub mod shaper;
mod tap;
mod tbf;

pub use error::{NetError, NetlinkError};
pub use handle::{LinkInfo, NetHandle};
pub use naming::{format_mac, node_mac, plan_addresses, tap_name, PlanError, IFNAME_MAX};
pub use netns::{Netns, NetnsError, NETNS_RUN_DIR};
pub use network::{teardown, Created, Journal, MeshNetwork, MeshNetworkSpec, UplinkSpec};
pub use tap::{create_persistent_taps, TapError};
