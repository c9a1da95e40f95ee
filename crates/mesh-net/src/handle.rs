//! [`NetHandle`]: an rtnetlink connection bound to one namespace, and the link controls
//! built on it (the ones fault injection uses: up/down, detach/attach, port isolation, tbf).

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd};

use futures::{StreamExt, TryStreamExt};
use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoPortData, InfoVeth, LinkAttribute, LinkFlags,
    LinkInfo as NlLinkInfo, LinkMessage,
};
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::{LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth};
use tracing::debug;

use crate::error::{NetError, NetlinkError};
use crate::netns::Netns;
use crate::tbf::TbfParams;

/// What [`NetHandle::links`] reports about one link (a subset of `ip -d link`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// MTU in bytes.
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Carrier present (`IFF_LOWER_UP`); a tap has it only while QEMU holds it open.
    pub lower_up: bool,
    /// Name of the bridge (or other controller) the link is enslaved to.
    pub master: Option<String>,
    /// Hardware address, for Ethernet-like links.
    pub mac: Option<[u8; 6]>,
    /// Link kind (`bridge`, `tun`, `veth`, ...); `None` for loopback and physical links.
    pub kind: Option<String>,
    /// For bridge ports: whether the port is isolated.
    pub port_isolated: Option<bool>,
}

/// An rtnetlink connection whose socket was opened inside a namespace, so every request
/// acts on that namespace, whichever thread sends it.
///
/// Needs a Tokio runtime with I/O enabled; the connection runs as a task of it and stops
/// when the handle is dropped.
#[derive(Debug)]
pub struct NetHandle {
    netns: String,
    handle: rtnetlink::Handle,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for NetHandle {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl NetHandle {
    /// Opens an rtnetlink connection inside `netns` (the socket is created on a thread that
    /// entered it).
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> Result<(), mesh_net::NetError> {
    /// let ns = mesh_net::Netns::open("demo")?;
    /// let net = mesh_net::NetHandle::open(&ns).await?;
    /// net.set_link_up("lo", true).await?; // ip -n demo link set lo up
    /// # Ok(()) }
    /// ```
    pub async fn open(netns: &Netns) -> Result<NetHandle, NetError> {
        let name = netns.name().to_string();
        let fail = |source: io::Error| NetError::OpenHandle { netns: name.clone(), source };

        let socket = netns
            .run(|| -> io::Result<netlink_sys::Socket> {
                let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
                socket.bind_auto()?;
                socket.set_non_blocking(true)?;
                Ok(socket)
            })?
            .map_err(fail)?;

        // TokioSocket::from_raw_fd panics outside a runtime with I/O; turn that into an error.
        match tokio::runtime::Handle::try_current() {
            Ok(_) => {}
            Err(e) => return Err(fail(io::Error::other(e))),
        }
        // SAFETY: the descriptor comes straight from into_raw_fd, so nothing else owns it.
        let socket = unsafe { netlink_sys::TokioSocket::from_raw_fd(socket.into_raw_fd()) };
        let (connection, handle, _unsolicited) = rtnetlink::from_socket(socket);
        let connection = tokio::spawn(connection);
        Ok(NetHandle { netns: name, handle, connection })
    }

    /// The name of the namespace this handle acts on.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The underlying rtnetlink handle, for requests this type does not wrap.
    pub fn rtnetlink(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    /// The index of link `ifname`.
    pub async fn link_index(&self, ifname: &str) -> Result<u32, NetError> {
        let mut links = self.handle.link().get().match_name(ifname.to_string()).execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(link.header.index),
            Ok(None) => Err(self.not_found(ifname)),
            Err(e) => {
                let source = NetlinkError::from(e);
                if source.errno() == Some(libc::ENODEV) {
                    Err(self.not_found(ifname))
                } else {
                    Err(NetError::DumpLinks { netns: self.netns.clone(), source })
                }
            }
        }
    }

    /// Sets a link up or down, like `ip link set IFNAME up|down`.
    pub async fn set_link_up(&self, ifname: &str, up: bool) -> Result<(), NetError> {
        debug!(netns = %self.netns, ifname, up, "RTM_SETLINK flags");
        let builder = LinkUnspec::new_with_name(ifname);
        let message = if up { builder.up() } else { builder.down() }.build();
        self.handle.link().set(message).execute().await.map_err(|e| {
            self.link_error(ifname, e, |netns, ifname, source| NetError::SetLinkUp {
                netns,
                ifname,
                source,
            })
        })
    }

    /// Attaches a link to `bridge`, or detaches it with `None`, like
    /// `ip link set IFNAME master BRIDGE|nomaster`.
    pub async fn set_master(&self, ifname: &str, bridge: Option<&str>) -> Result<(), NetError> {
        let controller = match bridge {
            Some(bridge) => self.link_index(bridge).await?,
            None => 0,
        };
        debug!(netns = %self.netns, ifname, controller, "RTM_SETLINK IFLA_MASTER");
        let message = LinkUnspec::new_with_name(ifname).controller(controller).build();
        self.handle.link().set(message).execute().await.map_err(|e| {
            self.link_error(ifname, e, |netns, ifname, source| NetError::SetMaster {
                netns,
                ifname,
                source,
            })
        })
    }

    /// Isolates a bridge port (it then talks only to non-isolated ports), or lifts that,
    /// like `bridge link set dev IFNAME isolated on|off`.
    pub async fn set_port_isolated(&self, ifname: &str, isolated: bool) -> Result<(), NetError> {
        let index = self.link_index(ifname).await?;
        debug!(netns = %self.netns, ifname, isolated, "RTM_NEWLINK IFLA_BRPORT_ISOLATED");
        let message = LinkBridgePort::new(index).isolated(isolated).build();
        self.handle.link().set_port(message).execute().await.map_err(|e| {
            self.link_error(ifname, e, |netns, ifname, source| NetError::SetPortIsolated {
                netns,
                ifname,
                source,
            })
        })
    }

    /// Replaces the root qdisc of `ifname` with a token bucket filter, like
    /// `tc qdisc replace dev IFNAME root tbf rate R burst B latency L`.
    ///
    /// The limit applies to packets leaving `ifname`: on a bridge port that is the traffic
    /// towards the VM or host behind it. `burst_bytes` should be at least the MTU.
    pub async fn set_tbf(
        &self,
        ifname: &str,
        rate_bits_per_sec: u64,
        burst_bytes: u32,
        latency_us: u32,
    ) -> Result<(), NetError> {
        let params = TbfParams::new(rate_bits_per_sec, burst_bytes, latency_us)
            .map_err(|reason| NetError::InvalidTbf { ifname: ifname.into(), reason })?;
        let index = self.link_index(ifname).await?;
        debug!(netns = %self.netns, ifname, ?params, "RTM_NEWQDISC tbf (create|replace)");

        let mut message = TcMessage::with_index(index as i32);
        message.header.parent = TcHandle::ROOT;
        message.attributes.push(TcAttribute::Kind("tbf".into()));
        message.attributes.push(TcAttribute::Options(params.options()));
        let mut request = NetlinkMessage::from(RouteNetlinkMessage::NewQueueDiscipline(message));
        request.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        self.request_ack(request).await.map_err(|source| NetError::SetTbf {
            netns: self.netns.clone(),
            ifname: ifname.into(),
            source,
        })
    }

    /// Removes the root qdisc of `ifname` (the kernel's default comes back), like
    /// `tc qdisc del dev IFNAME root`. A link without a configured qdisc is fine.
    pub async fn clear_qdisc(&self, ifname: &str) -> Result<(), NetError> {
        let index = self.link_index(ifname).await?;
        debug!(netns = %self.netns, ifname, "RTM_DELQDISC root");
        let mut message = TcMessage::with_index(index as i32);
        message.header.parent = TcHandle::ROOT;
        let mut request = NetlinkMessage::from(RouteNetlinkMessage::DelQueueDiscipline(message));
        request.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        match self.request_ack(request).await {
            Ok(()) => Ok(()),
            // ENOENT: no qdisc configured; EINVAL: the default one, which cannot be deleted.
            Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::EINVAL)) => Ok(()),
            Err(source) => Err(NetError::ClearQdisc {
                netns: self.netns.clone(),
                ifname: ifname.into(),
                source,
            }),
        }
    }

    /// Lists the links of the namespace, like `ip -d link`.
    pub async fn links(&self) -> Result<Vec<LinkInfo>, NetError> {
        let messages: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetError::DumpLinks { netns: self.netns.clone(), source: e.into() })?;

        let names: std::collections::HashMap<u32, String> = messages
            .iter()
            .filter_map(|m| ifname_of(m).map(|name| (m.header.index, name)))
            .collect();
        Ok(messages.iter().map(|m| link_info(m, &names)).collect())
    }

    /// Creates a bridge with a fixed MAC (so it does not change as ports come and go), with
    /// the bridge netfilter hooks off, down; like `ip link add NAME type bridge`.
    pub async fn create_bridge(&self, name: &str, mtu: u32, mac: [u8; 6]) -> Result<(), NetError> {
        debug!(netns = %self.netns, bridge = name, mtu, "RTM_NEWLINK bridge");
        let message = LinkBridge::new(name)
            .down()
            .mtu(mtu)
            .address(mac.to_vec())
            .nf_call_iptables(false)
            .nf_call_ip6tables(false)
            .nf_call_arptables(false)
            .build();
        self.handle.link().add(message).execute().await.map_err(|e| NetError::CreateBridge {
            netns: self.netns.clone(),
            ifname: name.into(),
            source: e.into(),
        })
    }

    /// Creates a veth pair: `name` here and `peer` in `peer_netns` (which may be this
    /// namespace too), both down; like `ip link add NAME type veth peer name PEER netns NS`.
    pub async fn create_veth(
        &self,
        name: &str,
        peer: &str,
        peer_netns: &Netns,
    ) -> Result<(), NetError> {
        debug!(netns = %self.netns, name, peer, peer_netns = peer_netns.name(), "RTM_NEWLINK veth");
        let peer_message = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .setns_by_fd(peer_netns.as_fd().as_raw_fd())
            .build();
        let message = LinkVeth::new(name, peer)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_message)))
            .build();
        self.handle.link().add(message).execute().await.map_err(|e| NetError::CreateVeth {
            netns: self.netns.clone(),
            ifname: name.into(),
            peer: peer.into(),
            source: e.into(),
        })
    }

    /// Adds an address to a link, like `ip addr add ADDRESS/PREFIX dev IFNAME`.
    pub async fn add_address(
        &self,
        ifname: &str,
        address: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetError> {
        let index = self.link_index(ifname).await?;
        debug!(netns = %self.netns, ifname, %address, prefix_len, "RTM_NEWADDR");
        self.handle.address().add(index, address, prefix_len).execute().await.map_err(|e| {
            NetError::AddAddress {
                netns: self.netns.clone(),
                ifname: ifname.into(),
                address: format!("{address}/{prefix_len}"),
                source: e.into(),
            }
        })
    }

    /// Adds a default IPv4 route, like `ip route add default via GATEWAY`.
    pub async fn add_default_route(&self, gateway: std::net::Ipv4Addr) -> Result<(), NetError> {
        debug!(netns = %self.netns, %gateway, "RTM_NEWROUTE default");
        let route =
            rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new().gateway(gateway).build();
        self.handle.route().add(route).execute().await.map_err(|e| NetError::AddRoute {
            netns: self.netns.clone(),
            gateway: gateway.to_string(),
            source: e.into(),
        })
    }

    /// Attaches a tap (or any link) to a bridge, gives it `mtu` and raises it, in one request:
    /// `ip link set IFNAME mtu MTU master BRIDGE up`.
    pub async fn enslave(&self, ifname: &str, bridge_index: u32, mtu: u32) -> Result<(), NetError> {
        debug!(netns = %self.netns, ifname, bridge_index, mtu, "RTM_SETLINK master+mtu+up");
        let message =
            LinkUnspec::new_with_name(ifname).mtu(mtu).controller(bridge_index).up().build();
        self.handle.link().set(message).execute().await.map_err(|e| NetError::EnslaveTap {
            netns: self.netns.clone(),
            ifname: ifname.into(),
            source: e.into(),
        })
    }

    /// Deletes a link; returns `false` if there was none of that name (`ip link del IFNAME`).
    pub async fn delete_link(&self, ifname: &str) -> Result<bool, NetError> {
        debug!(netns = %self.netns, ifname, "RTM_DELLINK");
        let message = LinkUnspec::new_with_name(ifname).build();
        match self.handle.link().del_with_message(message).execute().await {
            Ok(()) => Ok(true),
            Err(e) => {
                let source = NetlinkError::from(e);
                if source.errno() == Some(libc::ENODEV) {
                    Ok(false)
                } else {
                    Err(NetError::DeleteLink {
                        netns: self.netns.clone(),
                        ifname: ifname.into(),
                        source,
                    })
                }
            }
        }
    }

    /// Sends one request and waits for its acknowledgement.
    async fn request_ack(
        &self,
        request: NetlinkMessage<RouteNetlinkMessage>,
    ) -> Result<(), NetlinkError> {
        let mut handle = self.handle.clone();
        let mut responses = handle.request(request)?;
        while let Some(message) = responses.next().await {
            if let NetlinkPayload::Error(error) = message.payload {
                if error.code.is_some() {
                    return Err(rtnetlink::Error::NetlinkError(error).into());
                }
            }
        }
        Ok(())
    }

    fn not_found(&self, ifname: &str) -> NetError {
        NetError::LinkNotFound { netns: self.netns.clone(), ifname: ifname.into() }
    }

    /// Maps ENODEV to [`NetError::LinkNotFound`] and everything else with `variant`.
    fn link_error(
        &self,
        ifname: &str,
        error: rtnetlink::Error,
        variant: impl FnOnce(String, String, NetlinkError) -> NetError,
    ) -> NetError {
        let source = NetlinkError::from(error);
        if source.errno() == Some(libc::ENODEV) {
            self.not_found(ifname)
        } else {
            variant(self.netns.clone(), ifname.into(), source)
        }
    }
}

fn ifname_of(message: &LinkMessage) -> Option<String> {
    message.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

fn link_info(message: &LinkMessage, names: &std::collections::HashMap<u32, String>) -> LinkInfo {
    let mut info = LinkInfo {
        name: ifname_of(message).unwrap_or_default(),
        index: message.header.index,
        mtu: 0,
        up: message.header.flags.contains(LinkFlags::Up),
        lower_up: message.header.flags.contains(LinkFlags::LowerUp),
        master: None,
        mac: None,
        kind: None,
        port_isolated: None,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::Mtu(mtu) => info.mtu = *mtu,
            LinkAttribute::Controller(index) => info.master = names.get(index).cloned(),
            LinkAttribute::Address(mac) => info.mac = <[u8; 6]>::try_from(mac.as_slice()).ok(),
            LinkAttribute::LinkInfo(infos) => {
                for item in infos {
                    match item {
                        NlLinkInfo::Kind(kind) => info.kind = Some(kind.to_string()),
                        NlLinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                            info.port_isolated = port.iter().find_map(|p| match p {
                                InfoBridgePort::Isolated(isolated) => Some(*isolated),
                                _ => None,
                            });
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    info
}
