//! Putting a shaper into a node's link and taking it out again: a veth pair between the
//! node's port and the bridge ([`insert_shaper_path`], [`remove_shaper_path`]).

use std::io;
use std::path::PathBuf;

use rtnetlink::LinkUnspec;
use tracing::{debug, info, warn};

use super::{Impairment, ShaperConfig};
use crate::error::{NetError, NetlinkError};
use crate::handle::NetHandle;
use crate::naming::{check_ifname, IFNAME_MAX};
use crate::netns::{Netns, NetnsError};
use crate::network::{Created, Journal};

/// The veth pair that carries a node's frames to the bridge while a shaper runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShaperPath {
    /// The mesh namespace.
    pub netns: String,
    /// The bridge.
    pub bridge: String,
    /// The node's port, detached from the bridge while the path exists.
    pub node_port: String,
    /// The veth end enslaved to the bridge in the node port's place.
    pub bridge_end: String,
    /// The free veth end the shaper forwards to ([`ShaperConfig::bridge_port`]).
    pub shaper_end: String,
    /// The MTU given to both ends (the bridge's).
    pub mtu: u32,
}

impl ShaperPath {
    /// A shaper config for this path.
    ///
    /// # Examples
    /// ```
    /// use mesh_net::shaper::{Impairment, ShaperPath};
    /// let path = ShaperPath {
    ///     netns: "m".into(),
    ///     bridge: "br0".into(),
    ///     node_port: "vh1".into(),
    ///     bridge_end: "vh1-b".into(),
    ///     shaper_end: "vh1-s".into(),
    ///     mtu: 1500,
    /// };
    /// let config = path.config(7, Impairment { delay_us: 1000, ..Default::default() }, Impairment::default());
    /// assert_eq!(config.bridge_port, "vh1-s");
    /// config.validate()?;
    /// # Ok::<(), mesh_net::shaper::ShaperError>(())
    /// ```
    pub fn config(&self, seed: u64, egress: Impairment, ingress: Impairment) -> ShaperConfig {
        ShaperConfig {
            netns: self.netns.clone(),
            node_port: self.node_port.clone(),
            bridge_port: self.shaper_end.clone(),
            seed,
            egress,
            ingress,
            queue_limit: 1000,
            stats_file: None,
        }
    }
}

/// Why a shaper path could not be inserted or removed.
#[derive(Debug, thiserror::Error)]
pub enum ShaperPathError {
    /// The port name is not a valid interface name.
    #[error("invalid node port name: {reason}")]
    InvalidName {
        /// What is wrong.
        reason: String,
    },
    /// Listing the links of the namespace failed.
    #[error("cannot list the links of namespace {netns}")]
    Inspect {
        /// The namespace.
        netns: String,
        /// The cause.
        #[source]
        source: Box<NetError>,
    },
    /// No link of that name (an unknown node?).
    #[error("no port {node_port} in namespace {netns}")]
    PortNotFound {
        /// The namespace.
        netns: String,
        /// The port asked for.
        node_port: String,
    },
    /// No bridge of that name.
    #[error("no bridge {bridge} in namespace {netns}")]
    BridgeNotFound {
        /// The namespace.
        netns: String,
        /// The bridge asked for.
        bridge: String,
    },
    /// The port is not on the bridge, e.g. because a shaper path is inserted already.
    #[error(
        "port {node_port} in namespace {netns} is not attached to bridge {bridge} (attached \
         to: {attached_to}); is a shaper path inserted already?"
    )]
    NotOnBridge {
        /// The namespace.
        netns: String,
        /// The port.
        node_port: String,
        /// The bridge.
        bridge: String,
        /// Where it is attached instead (`nothing` if nowhere).
        attached_to: String,
    },
    /// A veth of the name the path would use exists: the leftover of a crashed run.
    #[error(
        "link {ifname} exists already in namespace {netns} (left by an earlier shaper path?); \
         remove_shaper_path clears it"
    )]
    VethExists {
        /// The namespace.
        netns: String,
        /// The link.
        ifname: String,
    },
    /// The journal refused to record the veth pair, so nothing was made.
    #[error("the journal could not record {object}, so it was not created")]
    Journal {
        /// The object.
        object: String,
        /// The journal's error.
        #[source]
        source: io::Error,
    },
    /// A step of inserting or removing the path failed (the network error names the step).
    #[error("cannot {action} the shaper path of {node_port}")]
    Link {
        /// `insert` or `remove`.
        action: &'static str,
        /// The node port.
        node_port: String,
        /// The cause.
        #[source]
        source: Box<NetError>,
    },
    /// The shaper's veth end could not be given its MTU and raised.
    #[error("cannot set MTU {mtu} and raise {ifname} in namespace {netns}")]
    RaiseShaperEnd {
        /// The namespace.
        netns: String,
        /// The veth end.
        ifname: String,
        /// The MTU.
        mtu: u32,
        /// The cause.
        #[source]
        source: NetlinkError,
    },
    /// A sysctl of a port could not be written.
    #[error("cannot write {path} in namespace {netns}")]
    Sysctl {
        /// The namespace.
        netns: String,
        /// The sysctl file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The namespace could not be opened or entered.
    #[error("cannot enter the namespace of the shaper path")]
    Namespace(#[source] NetnsError),
}

/// The names of the veth pair for `node_port`: `(bridge end, shaper end)`.
///
/// `PORT-b` and `PORT-s` when that fits in 15 bytes, else `shp` + 10 hex digits of a hash
/// of the port name + `b`/`s`. Deterministic, so a crashed run's leftover is found again.
///
/// # Examples
/// ```
/// use mesh_net::shaper::shaper_veth_names;
/// assert_eq!(shaper_veth_names("vm1a2b3c-0"), ("vm1a2b3c-0-b".into(), "vm1a2b3c-0-s".into()));
/// let (b, s) = shaper_veth_names("vm1a2b3c-123456");
/// assert!(b.len() <= 15 && s.len() <= 15 && b != s);
/// ```
pub fn shaper_veth_names(node_port: &str) -> (String, String) {
    if node_port.len() + 2 <= IFNAME_MAX {
        return (format!("{node_port}-b"), format!("{node_port}-s"));
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in node_port.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let hash = hash & 0xff_ffff_ffff;
    (format!("shp{hash:010x}b"), format!("shp{hash:010x}s"))
}

/// Puts a veth pair between `node_port` and `bridge`, ready for a shaper: the pair is
/// created (recorded in `journal` first, as a [`Created::Veth`]), one end enslaved to the
/// bridge with the bridge's MTU, the other raised with the same MTU, and the node port
/// detached from the bridge. Until a shaper runs on the path, the node is cut off.
///
/// The host stack of the mesh namespace is kept off the free veth end and the detached port
/// (`arp_ignore=8`, `disable_ipv6=1`): once they are no bridge ports, the kernel would
/// otherwise answer ARP for the gateway address there, with the wrong MAC.
///
/// On failure what was made is removed again and the port is back on the bridge.
///
/// # Examples
/// ```no_run
/// # async fn demo(net: &mesh_net::NetHandle) -> Result<(), Box<dyn std::error::Error>> {
/// use mesh_net::shaper::{insert_shaper_path, remove_shaper_path, spawn_shaper, Impairment};
/// let path = insert_shaper_path(net, "br0", "vm1a2b3c-0", &mut |_| Ok(())).await?;
/// let egress = Impairment { delay_us: 100_000, ..Default::default() };
/// let shaper = spawn_shaper(&path.config(1, egress, Impairment::default()))?;
/// // ... traffic of node 0 leaves 100 ms late ...
/// shaper.stop()?;
/// remove_shaper_path(net, "br0", "vm1a2b3c-0").await?;
/// # Ok(()) }
/// ```
pub async fn insert_shaper_path(
    net: &NetHandle,
    bridge: &str,
    node_port: &str,
    journal: &mut Journal<'_>,
) -> Result<ShaperPath, ShaperPathError> {
    check_ifname(node_port).map_err(|reason| ShaperPathError::InvalidName { reason })?;
    let netns = net.netns().to_string();
    let (bridge_end, shaper_end) = shaper_veth_names(node_port);

    let links = net
        .links()
        .await
        .map_err(|e| ShaperPathError::Inspect { netns: netns.clone(), source: Box::new(e) })?;
    let find = |name: &str| links.iter().find(|l| l.name == name);
    let port = find(node_port).ok_or_else(|| ShaperPathError::PortNotFound {
        netns: netns.clone(),
        node_port: node_port.into(),
    })?;
    let bridge_link = find(bridge).ok_or_else(|| ShaperPathError::BridgeNotFound {
        netns: netns.clone(),
        bridge: bridge.into(),
    })?;
    if port.master.as_deref() != Some(bridge) {
        return Err(ShaperPathError::NotOnBridge {
            netns,
            node_port: node_port.into(),
            bridge: bridge.into(),
            attached_to: port.master.clone().unwrap_or_else(|| "nothing".into()),
        });
    }
    for name in [&bridge_end, &shaper_end] {
        if find(name).is_some() {
            return Err(ShaperPathError::VethExists { netns, ifname: name.clone() });
        }
    }

    let path = ShaperPath {
        netns: netns.clone(),
        bridge: bridge.into(),
        node_port: node_port.into(),
        bridge_end,
        shaper_end,
        mtu: bridge_link.mtu,
    };
    let object = Created::Veth {
        netns: netns.clone(),
        name: path.bridge_end.clone(),
        peer_netns: netns.clone(),
        peer: path.shaper_end.clone(),
    };
    journal(&object)
        .map_err(|source| ShaperPathError::Journal { object: object.to_string(), source })?;

    match build(net, &path).await {
        Ok(()) => {
            info!(netns = %netns, node_port, "shaper path inserted");
            Ok(path)
        }
        Err(error) => {
            debug!(netns = %netns, node_port, %error, "insert failed, rolling back");
            if let Err(rollback) = remove_shaper_path(net, bridge, node_port).await {
                warn!(netns = %netns, node_port, %rollback, "shaper path rollback failed");
            }
            Err(error)
        }
    }
}

/// The steps of [`insert_shaper_path`] after the checks.
async fn build(net: &NetHandle, path: &ShaperPath) -> Result<(), ShaperPathError> {
    let link = |source| ShaperPathError::Link {
        action: "insert",
        node_port: path.node_port.clone(),
        source: Box::new(source),
    };
    let netns = Netns::open(&path.netns).map_err(ShaperPathError::Namespace)?;

    net.create_veth(&path.bridge_end, &path.shaper_end, &netns).await.map_err(link)?;
    keep_host_stack_off(&netns, &[&path.bridge_end, &path.shaper_end], true)?;
    let bridge_index = net.link_index(&path.bridge).await.map_err(link)?;
    net.enslave(&path.bridge_end, bridge_index, path.mtu).await.map_err(link)?;

    debug!(netns = %path.netns, ifname = %path.shaper_end, mtu = path.mtu, "RTM_SETLINK mtu+up");
    let raise = LinkUnspec::new_with_name(&path.shaper_end).mtu(path.mtu).up().build();
    net.rtnetlink().link().set(raise).execute().await.map_err(|e| {
        ShaperPathError::RaiseShaperEnd {
            netns: path.netns.clone(),
            ifname: path.shaper_end.clone(),
            mtu: path.mtu,
            source: e.into(),
        }
    })?;

    keep_host_stack_off(&netns, &[&path.node_port], true)?;
    net.set_master(&path.node_port, None).await.map_err(link)
}

/// Takes the shaper path of `node_port` out: deletes its veth pair and puts the port back
/// on `bridge` (its MTU and up/down state were never changed). Stop the shaper first.
///
/// Works from names alone and is idempotent, so it also cleans up after a crash (a journal
/// entry for the veth pair, or nothing at all). Returns whether a veth pair was there.
pub async fn remove_shaper_path(
    net: &NetHandle,
    bridge: &str,
    node_port: &str,
) -> Result<bool, ShaperPathError> {
    check_ifname(node_port).map_err(|reason| ShaperPathError::InvalidName { reason })?;
    let link = |source| ShaperPathError::Link {
        action: "remove",
        node_port: node_port.into(),
        source: Box::new(source),
    };
    let netns = Netns::open(net.netns()).map_err(ShaperPathError::Namespace)?;
    let (bridge_end, _) = shaper_veth_names(node_port);

    // Deleting one end of a veth pair deletes both.
    let existed = net.delete_link(&bridge_end).await.map_err(link)?;
    keep_host_stack_off(&netns, &[node_port], false)?;
    net.set_master(node_port, Some(bridge)).await.map_err(link)?;
    info!(netns = net.netns(), node_port, existed, "shaper path removed");
    Ok(existed)
}

/// With `off`, stops the mesh namespace's own IP stack from answering on `ifnames`
/// (`arp_ignore=8`: never reply to ARP; `disable_ipv6=1`: no addresses, no neighbour
/// discovery); without, puts back the namespace defaults. Links that are gone are skipped.
fn keep_host_stack_off(netns: &Netns, ifnames: &[&str], off: bool) -> Result<(), ShaperPathError> {
    let settings = [("ipv4", "arp_ignore", "8"), ("ipv6", "disable_ipv6", "1")];
    netns
        .run(|| {
            for ifname in ifnames {
                for (family, key, value) in settings {
                    let path = PathBuf::from(format!("/proc/sys/net/{family}/conf/{ifname}/{key}"));
                    let value = if off {
                        value.to_string()
                    } else {
                        let default = format!("/proc/sys/net/{family}/conf/default/{key}");
                        match std::fs::read_to_string(&default) {
                            Ok(text) => text.trim().to_string(),
                            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                            Err(source) => return Err((PathBuf::from(default), source)),
                        }
                    };
                    debug!(netns = netns.name(), path = %path.display(), %value, "write sysctl");
                    match std::fs::write(&path, &value) {
                        Ok(()) => {}
                        // No IPv6 in this kernel, or the link is gone.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(source) => return Err((path, source)),
                    }
                }
            }
            Ok(())
        })
        .map_err(ShaperPathError::Namespace)?
        .map_err(|(path, source)| ShaperPathError::Sysctl {
            netns: netns.name().into(),
            path,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_ifnamsiz_and_differ_per_port() {
        for port in
            ["a", "vh1", "vm1a2b3c-0", "vm1a2b3c-12345", "vm1a2b3c-123456", "x".repeat(15).as_str()]
        {
            let (b, s) = shaper_veth_names(port);
            assert!(check_ifname(&b).is_ok() && check_ifname(&s).is_ok(), "{port}: {b} {s}");
            assert_ne!(b, s);
            assert_ne!(b, port);
        }
        assert_ne!(shaper_veth_names("vm1a2b3c-123456"), shaper_veth_names("vm1a2b3c-123457"));
    }
}
