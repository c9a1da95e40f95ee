//! [`MeshNetwork`]: the namespace, bridge and taps of one mesh, built all or nothing and
//! recorded object by object so that [`teardown`] can remove exactly what was made.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::error::NetError;
use crate::handle::NetHandle;
use crate::naming::{check_ifname, node_mac};
use crate::netns::{check_name, Netns, NetnsError};
use crate::tap::create_persistent_taps;

/// Name of the nftables table the uplink's NAT lives in (inside the mesh namespace).
const NAT_TABLE: &str = "mesh_uplink";

/// What to build: the namespace, its bridge with the gateway address, and the taps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshNetworkSpec {
    /// Name of the network namespace (`ip netns` name); must not exist yet.
    pub netns: String,
    /// Name of the bridge inside the namespace.
    pub bridge: String,
    /// Address of the bridge: the gateway the VMs see.
    pub gateway: Ipv4Addr,
    /// Prefix length of the mesh subnet.
    pub prefix_len: u8,
    /// MTU of the bridge and of every tap.
    pub mtu: u32,
    /// Names of the taps, one per VM (see [`tap_name`](crate::tap_name)).
    pub taps: Vec<String>,
}

impl MeshNetworkSpec {
    /// Checks the spec before anything is made.
    pub fn validate(&self) -> Result<(), NetError> {
        let invalid = |reason: String| Err(NetError::InvalidSpec { reason });

        if let Err(NetnsError::InvalidName { reason, .. }) = check_name(&self.netns) {
            return invalid(format!("namespace name {:?}: {reason}", self.netns));
        }
        if let Err(reason) = check_ifname(&self.bridge) {
            return invalid(format!("bridge: {reason}"));
        }
        if !(68..=65535).contains(&self.mtu) {
            return invalid(format!("MTU {} is outside 68..=65535", self.mtu));
        }
        if !(1..=30).contains(&self.prefix_len) {
            return invalid(format!("prefix length /{} is outside /1../30", self.prefix_len));
        }
        let mask = u32::MAX << (32 - u32::from(self.prefix_len));
        let host = u32::from(self.gateway) & !mask;
        if host == 0 || host == !mask {
            return invalid(format!(
                "gateway {}/{} is the network or broadcast address",
                self.gateway, self.prefix_len
            ));
        }

        let mut seen = std::collections::HashSet::new();
        seen.insert("lo");
        seen.insert(self.bridge.as_str());
        if self.bridge == "lo" {
            return invalid("the bridge cannot be called lo".into());
        }
        for tap in &self.taps {
            if let Err(reason) = check_ifname(tap) {
                return invalid(format!("tap: {reason}"));
            }
            if !seen.insert(tap.as_str()) {
                return invalid(format!("link name {tap:?} is used twice"));
            }
        }
        Ok(())
    }
}

/// One object a [`MeshNetwork`] made, as recorded in the journal before it was made.
///
/// Serialised into mesh-core's state directory; [`teardown`] removes exactly these.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// A network namespace (`/run/netns/NAME`).
    Netns {
        /// Namespace name.
        name: String,
    },
    /// A bridge inside a namespace.
    Bridge {
        /// Namespace name.
        netns: String,
        /// Bridge name.
        name: String,
    },
    /// A persistent tap inside a namespace.
    Tap {
        /// Namespace name.
        netns: String,
        /// Tap name.
        name: String,
    },
    /// A veth pair; deleting one end removes both.
    Veth {
        /// Namespace of the first end.
        netns: String,
        /// The first end.
        name: String,
        /// Namespace of the other end.
        peer_netns: String,
        /// The other end.
        peer: String,
    },
    /// An nftables table (the uplink's NAT) inside a namespace.
    NftTable {
        /// Namespace name.
        netns: String,
        /// Table family (`ip`).
        family: String,
        /// Table name.
        name: String,
    },
}

impl std::fmt::Display for Created {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Created::Netns { name } => write!(f, "network namespace {name}"),
            Created::Bridge { netns, name } => write!(f, "bridge {name} in {netns}"),
            Created::Tap { netns, name } => write!(f, "tap {name} in {netns}"),
            Created::Veth { netns, name, peer_netns, peer } => {
                write!(f, "veth {name} in {netns} (peer {peer} in {peer_netns})")
            }
            Created::NftTable { netns, family, name } => {
                write!(f, "nftables table {family} {name} in {netns}")
            }
        }
    }
}

/// The journal callback: records an object before it is made; an error aborts creation.
pub type Journal<'a> = dyn FnMut(&Created) -> std::io::Result<()> + Send + 'a;

/// An optional route out of the mesh: a veth pair from the mesh namespace to another
/// namespace, with the mesh subnet masqueraded behind the inner end's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkSpec {
    /// The namespace the uplink leads to (it must exist).
    pub outside_netns: String,
    /// Name of the veth end inside the mesh namespace.
    pub inside_ifname: String,
    /// Name of the veth end in the outside namespace.
    pub outside_ifname: String,
    /// Address of the inside end; mesh traffic leaves with this source address.
    pub inside_address: Ipv4Addr,
    /// Address of the outside end: the mesh namespace's default gateway.
    pub outside_address: Ipv4Addr,
    /// Prefix length of the link between them (e.g. 30).
    pub prefix_len: u8,
}

/// The network of one mesh: a namespace with loopback up, a bridge holding the gateway
/// address (bridge netfilter hooks off), and persistent taps enslaved to it with the
/// bridge's MTU, up.
///
/// Dropping a `MeshNetwork` leaves the network in place (for `--keep`); remove it with
/// [`MeshNetwork::destroy`] or later with [`teardown`] over the journal.
#[derive(Debug)]
pub struct MeshNetwork {
    spec: MeshNetworkSpec,
    netns: Netns,
    handle: NetHandle,
    created: Vec<Created>,
}

impl MeshNetwork {
    /// Builds the network of `spec`.
    ///
    /// Every object is passed to `journal` *before* it is made; a journal error aborts. On
    /// any failure, what was made is removed again before the error is returned, so the
    /// caller can discard the journal entries of a failed create. A namespace that already
    /// exists is never touched: that fails with [`NetnsError::AlreadyExists`].
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> Result<(), mesh_net::NetError> {
    /// use mesh_net::{MeshNetwork, MeshNetworkSpec, tap_name};
    /// let spec = MeshNetworkSpec {
    ///     netns: "mesh-demo".into(),
    ///     bridge: "br0".into(),
    ///     gateway: "10.77.0.1".parse().unwrap(),
    ///     prefix_len: 24,
    ///     mtu: 1500,
    ///     taps: (0..3).map(|i| tap_name("demo", i)).collect(),
    /// };
    /// let mut journal = Vec::new();
    /// let net = MeshNetwork::create(&spec, &mut |c: &mesh_net::Created| {
    ///     journal.push(c.clone());
    ///     Ok(())
    /// })
    /// .await?;
    /// net.destroy().await?;
    /// # Ok(()) }
    /// ```
    pub async fn create(
        spec: &MeshNetworkSpec,
        journal: &mut Journal<'_>,
    ) -> Result<MeshNetwork, NetError> {
        spec.validate()?;
        // Checked before journaling so that a failed create never records a namespace that
        // belongs to someone else.
        if Netns::exists(&spec.netns) {
            return Err(NetnsError::AlreadyExists {
                name: spec.netns.clone(),
                path: Netns::path_of(&spec.netns),
            }
            .into());
        }

        let started = std::time::Instant::now();
        let mut made = Vec::new();
        match build(spec, journal, &mut made).await {
            Ok((netns, handle)) => {
                info!(
                    netns = %spec.netns,
                    taps = spec.taps.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "mesh network up"
                );
                Ok(MeshNetwork { spec: spec.clone(), netns, handle, created: made })
            }
            Err(error) => {
                debug!(netns = %spec.netns, %error, "create failed, rolling back");
                if let Err(rollback) = teardown(&made).await {
                    warn!(netns = %spec.netns, %rollback, "rollback after a failed create failed");
                }
                Err(error)
            }
        }
    }

    /// Removes everything this network made, in reverse order.
    pub async fn destroy(self) -> Result<(), NetError> {
        let MeshNetwork { spec, netns, handle, created } = self;
        drop(handle);
        drop(netns);
        teardown(&created).await?;
        info!(netns = %spec.netns, "mesh network torn down");
        Ok(())
    }

    /// The mesh namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The rtnetlink connection inside the mesh namespace.
    pub fn handle(&self) -> &NetHandle {
        &self.handle
    }

    /// The spec this network was built from.
    pub fn spec(&self) -> &MeshNetworkSpec {
        &self.spec
    }

    /// Everything made so far, in creation order.
    pub fn created(&self) -> &[Created] {
        &self.created
    }

    /// Adds a route out: a veth pair to `uplink.outside_netns`, addresses on both ends, a
    /// default route in the mesh namespace, forwarding on and the mesh subnet masqueraded
    /// (an nftables table inside the mesh namespace; needs the `nft` tool). Off unless
    /// called. Nothing changes outside the two namespaces. On failure what this call made is
    /// removed again.
    pub async fn add_uplink(
        &mut self,
        uplink: &UplinkSpec,
        journal: &mut Journal<'_>,
    ) -> Result<(), NetError> {
        for name in [&uplink.inside_ifname, &uplink.outside_ifname] {
            check_ifname(name).map_err(|reason| NetError::InvalidSpec { reason })?;
        }
        let outside = Netns::open(&uplink.outside_netns)?;
        let mut made = Vec::new();
        match self.build_uplink(uplink, &outside, journal, &mut made).await {
            Ok(()) => {
                self.created.extend(made);
                Ok(())
            }
            Err(error) => {
                if let Err(rollback) = teardown(&made).await {
                    warn!(netns = %self.spec.netns, %rollback, "uplink rollback failed");
                }
                Err(error)
            }
        }
    }

    async fn build_uplink(
        &self,
        uplink: &UplinkSpec,
        outside: &Netns,
        journal: &mut Journal<'_>,
        made: &mut Vec<Created>,
    ) -> Result<(), NetError> {
        let netns = self.spec.netns.clone();
        record(
            journal,
            made,
            Created::Veth {
                netns: netns.clone(),
                name: uplink.inside_ifname.clone(),
                peer_netns: outside.name().into(),
                peer: uplink.outside_ifname.clone(),
            },
        )?;
        self.handle.create_veth(&uplink.inside_ifname, &uplink.outside_ifname, outside).await?;

        let outside_handle = NetHandle::open(outside).await?;
        let (inside_addr, outside_addr) =
            (IpAddr::V4(uplink.inside_address), IpAddr::V4(uplink.outside_address));
        self.handle.add_address(&uplink.inside_ifname, inside_addr, uplink.prefix_len).await?;
        outside_handle.add_address(&uplink.outside_ifname, outside_addr, uplink.prefix_len).await?;
        self.handle.set_link_up(&uplink.inside_ifname, true).await?;
        outside_handle.set_link_up(&uplink.outside_ifname, true).await?;
        self.handle.add_default_route(uplink.outside_address).await?;

        write_sysctls(&self.netns, &[("/proc/sys/net/ipv4/ip_forward", "1")], false)?;

        record(
            journal,
            made,
            Created::NftTable { netns, family: "ip".into(), name: NAT_TABLE.into() },
        )?;
        let mask = u32::MAX << (32 - u32::from(self.spec.prefix_len));
        let subnet = Ipv4Addr::from(u32::from(self.spec.gateway) & mask);
        let rules = format!(
            "table ip {NAT_TABLE} {{\n  chain postrouting {{\n    type nat hook postrouting \
             priority srcnat; policy accept;\n    ip saddr {subnet}/{} oifname \"{}\" \
             masquerade\n  }}\n}}\n",
            self.spec.prefix_len, uplink.inside_ifname
        );
        run_nft(&self.netns, &["-f", "-"], Some(&rules))
    }
}

/// Journals `object`, then remembers it for rollback.
fn record(
    journal: &mut Journal<'_>,
    made: &mut Vec<Created>,
    object: Created,
) -> Result<(), NetError> {
    journal(&object).map_err(|source| NetError::Journal { object: object.to_string(), source })?;
    made.push(object);
    Ok(())
}

/// The steps of [`MeshNetwork::create`]; `made` collects what needs removing on failure.
async fn build(
    spec: &MeshNetworkSpec,
    journal: &mut Journal<'_>,
    made: &mut Vec<Created>,
) -> Result<(Netns, NetHandle), NetError> {
    let ns_name = spec.netns.clone();

    journal(&Created::Netns { name: ns_name.clone() }).map_err(|source| NetError::Journal {
        object: format!("network namespace {ns_name}"),
        source,
    })?;
    let netns = Netns::create(&spec.netns)?;
    // Only now: on AlreadyExists the namespace is someone else's and must survive rollback.
    made.push(Created::Netns { name: ns_name.clone() });

    let handle = NetHandle::open(&netns).await?;
    handle.set_link_up("lo", true).await?;

    record(journal, made, Created::Bridge { netns: ns_name.clone(), name: spec.bridge.clone() })?;
    let bridge_mac = node_mac(&spec.netns, &spec.bridge);
    handle.create_bridge(&spec.bridge, spec.mtu, bridge_mac).await?;
    handle.add_address(&spec.bridge, IpAddr::V4(spec.gateway), spec.prefix_len).await?;
    handle.set_link_up(&spec.bridge, true).await?;
    disable_bridge_netfilter(&netns)?;

    for tap in &spec.taps {
        record(journal, made, Created::Tap { netns: ns_name.clone(), name: tap.clone() })?;
    }
    let mut taps_made = Vec::new();
    create_persistent_taps(&netns, &spec.taps, &mut taps_made)
        .map_err(|source| NetError::CreateTaps { netns: ns_name.clone(), source })?;

    let bridge_index = handle.link_index(&spec.bridge).await?;
    let enslaved = spec.taps.iter().map(|tap| handle.enslave(tap, bridge_index, spec.mtu));
    futures::future::try_join_all(enslaved).await?;

    Ok((netns, handle))
}

/// Turns the bridge netfilter hooks off inside `netns`, so a loaded `br_netfilter` and the
/// host's iptables rules never see (and silently drop) bridged mesh traffic.
///
/// These sysctls exist only while `br_netfilter` is loaded and are per namespace on current
/// kernels (the tests check the root namespace's values stay as they were).
// FIXME: if br_netfilter is loaded only after the mesh is up, the new namespace defaults
// (1) apply; the bridge's own nf_call_* options are off, but the per-namespace sysctls win.
fn disable_bridge_netfilter(netns: &Netns) -> Result<(), NetError> {
    write_sysctls(
        netns,
        &[
            ("/proc/sys/net/bridge/bridge-nf-call-iptables", "0"),
            ("/proc/sys/net/bridge/bridge-nf-call-ip6tables", "0"),
            ("/proc/sys/net/bridge/bridge-nf-call-arptables", "0"),
        ],
        true,
    )
}

/// Writes sysctls from a thread inside `netns` (`/proc/sys/net` follows the writing
/// thread's namespace). With `skip_missing`, absent files are ignored.
fn write_sysctls(
    netns: &Netns,
    settings: &[(&str, &str)],
    skip_missing: bool,
) -> Result<(), NetError> {
    netns
        .run(|| {
            for (path, value) in settings {
                debug!(netns = netns.name(), path, value, "write sysctl");
                match std::fs::write(path, value) {
                    Ok(()) => {}
                    Err(e) if skip_missing && e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err((Path::new(path).to_path_buf(), source)),
                }
            }
            Ok(())
        })?
        .map_err(|(path, source)| NetError::Sysctl { netns: netns.name().into(), path, source })
}

/// Runs `nft ARGS` inside `netns`, feeding `stdin` if given.
fn run_nft(netns: &Netns, args: &[&str], stdin: Option<&str>) -> Result<(), NetError> {
    use std::io::Write;
    use std::process::{Command, Stdio};

    let command = format!("nft {}", args.join(" "));
    let fail = |source: std::io::Error| NetError::Nat {
        netns: netns.name().into(),
        command: command.clone(),
        source,
    };
    debug!(netns = netns.name(), %command, "run");
    let mut cmd = Command::new("nft");
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    netns.prepare_command(&mut cmd);
    let mut child = cmd.spawn().map_err(fail)?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin.unwrap_or_default().as_bytes()).map_err(fail)?;
    }
    let output = child.wait_with_output().map_err(fail)?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(fail(std::io::Error::other(format!("{}: {}", output.status, stderr.trim()))));
    }
    Ok(())
}

/// Removes exactly the objects in `created`, in reverse order; objects (or whole
/// namespaces) that are already gone are fine. This is crash recovery: pass the journal of
/// a run that died.
///
/// Links inside a namespace that is itself in `created` go with the namespace: the kernel
/// removes them once the last process, socket or open tap of the namespace is gone (so stop
/// the VMs first).
///
/// Keeps going after a failure and returns the first error at the end, so one stuck object
/// does not leave the rest behind.
pub async fn teardown(created: &[Created]) -> Result<(), NetError> {
    let mut handles: HashMap<String, Option<NetHandle>> = HashMap::new();
    let mut first_error: Option<NetError> = None;
    let mut keep = |result: Result<(), NetError>| {
        if let Err(error) = result {
            warn!(%error, "teardown step failed");
            first_error.get_or_insert(error);
        }
    };

    // Links inside a namespace that is deleted too are left to the kernel: it removes every
    // link of a namespace when the namespace goes away, in one batch, where deleting 32 taps
    // one by one costs a second (an RCU grace period each).
    let doomed: std::collections::HashSet<&str> = created
        .iter()
        .filter_map(|c| match c {
            Created::Netns { name } => Some(name.as_str()),
            _ => None,
        })
        .collect();

    // Links of one namespace that follow each other are deleted concurrently.
    let mut index = created.len();
    while index > 0 {
        let object = &created[index - 1];
        if let Some((ns, _)) = link_of(object) {
            let mut batch = Vec::new();
            while let Some((netns, name)) = index.checked_sub(1).and_then(|i| link_of(&created[i]))
            {
                if netns != ns {
                    break;
                }
                batch.push(name);
                index -= 1;
            }
            if doomed.contains(ns) {
                debug!(netns = ns, links = batch.len(), "left to the namespace's removal");
                continue;
            }
            match handle_for(&mut handles, ns).await {
                Ok(Some(handle)) => {
                    let deletions = batch.iter().map(|name| handle.delete_link(name));
                    for result in futures::future::join_all(deletions).await {
                        keep(result.map(|_| ()));
                    }
                }
                Ok(None) => {}
                Err(error) => keep(Err(error)),
            }
            continue;
        }

        index -= 1;
        match object {
            Created::Netns { name } => {
                // Close our socket first so it does not pin the namespace.
                handles.remove(name);
                keep(Netns::delete_if_exists(name).map(|_| ()).map_err(NetError::from));
            }
            Created::NftTable { netns, family, name } => {
                if doomed.contains(netns.as_str()) {
                    continue;
                }
                if let Ok(ns) = Netns::open(netns) {
                    // A missing table is fine: it goes away with its namespace anyway.
                    let _ = run_nft(&ns, &["delete", "table", family, name], None);
                }
            }
            Created::Bridge { .. } | Created::Tap { .. } | Created::Veth { .. } => {}
        }
    }

    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// The namespace and name of a link object; `None` for other objects.
fn link_of(object: &Created) -> Option<(&str, &str)> {
    match object {
        Created::Bridge { netns, name }
        | Created::Tap { netns, name }
        | Created::Veth { netns, name, .. } => Some((netns, name)),
        Created::Netns { .. } | Created::NftTable { .. } => None,
    }
}

/// The cached handle for namespace `name`; `None` if the namespace is gone.
async fn handle_for<'a>(
    handles: &'a mut HashMap<String, Option<NetHandle>>,
    name: &str,
) -> Result<Option<&'a NetHandle>, NetError> {
    if !handles.contains_key(name) {
        let handle = match Netns::open(name) {
            Ok(netns) => Some(NetHandle::open(&netns).await?),
            Err(NetnsError::NotFound { .. } | NetnsError::NotANamespace { .. }) => None,
            Err(error) => return Err(error.into()),
        };
        handles.insert(name.to_string(), handle);
    }
    Ok(handles.get(name).and_then(Option::as_ref))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MeshNetworkSpec {
        MeshNetworkSpec {
            netns: "mesh-unit".into(),
            bridge: "br0".into(),
            gateway: Ipv4Addr::new(10, 1, 0, 1),
            prefix_len: 24,
            mtu: 1500,
            taps: vec!["t0".into(), "t1".into()],
        }
    }

    fn rejects(change: impl FnOnce(&mut MeshNetworkSpec), needle: &str) {
        let mut s = spec();
        change(&mut s);
        let err = s.validate().expect_err("spec must be rejected");
        assert!(err.to_string().contains(needle), "{err} lacks {needle:?}");
    }

    #[test]
    fn valid_spec_passes() {
        spec().validate().expect("the base spec is valid");
    }

    #[test]
    fn bad_specs_are_rejected_before_anything_is_made() {
        rejects(|s| s.taps.push("a-name-of-16-bytes".into()), "IFNAMSIZ");
        rejects(|s| s.taps.push("t0".into()), "used twice");
        rejects(|s| s.taps.push("br0".into()), "used twice");
        rejects(|s| s.taps.push("lo".into()), "used twice");
        rejects(|s| s.bridge = "lo".into(), "lo");
        rejects(|s| s.netns = "a/b".into(), "namespace name");
        rejects(|s| s.mtu = 20, "MTU");
        rejects(|s| s.prefix_len = 31, "prefix");
        rejects(|s| s.gateway = Ipv4Addr::new(10, 1, 0, 0), "network or broadcast");
        rejects(|s| s.gateway = Ipv4Addr::new(10, 1, 0, 255), "network or broadcast");
    }

    #[test]
    fn created_round_trips_through_serde_and_displays() {
        let objects = vec![
            Created::Netns { name: "n".into() },
            Created::Tap { netns: "n".into(), name: "t".into() },
            Created::Veth {
                netns: "n".into(),
                name: "a".into(),
                peer_netns: "o".into(),
                peer: "b".into(),
            },
        ];
        let text = format!("{objects:?}");
        let json = serde_json::to_string(&objects).expect("Created serialises");
        let back: Vec<Created> = serde_json::from_str(&json).expect("and deserialises");
        assert_eq!(back, objects, "{text}");
        assert_eq!(objects[1].to_string(), "tap t in n");
    }
}
