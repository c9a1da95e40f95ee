//! The error of network building and link control ([`NetError`]), and the kernel's answer
//! it wraps ([`NetlinkError`]).

use std::io;
use std::path::PathBuf;

use crate::netns::NetnsError;
use crate::tap::TapError;

/// A netlink request the kernel refused, or a protocol failure talking to it.
#[derive(Debug)]
pub struct NetlinkError {
    // Boxed: rtnetlink::Error can hold a whole netlink message, which would make every
    // Result<_, NetError> hundreds of bytes large.
    inner: Box<rtnetlink::Error>,
}

impl NetlinkError {
    /// The errno the kernel answered with, if it answered with one.
    pub fn errno(&self) -> Option<i32> {
        match self.inner.as_ref() {
            rtnetlink::Error::NetlinkError(message) => Some(message.raw_code().abs()),
            _ => None,
        }
    }
}

impl From<rtnetlink::Error> for NetlinkError {
    fn from(inner: rtnetlink::Error) -> Self {
        NetlinkError { inner: Box::new(inner) }
    }
}

impl std::fmt::Display for NetlinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.errno() {
            Some(libc::EPERM) => write!(
                f,
                "the kernel answered: operation not permitted (CAP_NET_ADMIN is needed; run \
                 as root)"
            ),
            Some(errno) => {
                write!(f, "the kernel answered: {}", io::Error::from_raw_os_error(errno))
            }
            None => write!(f, "netlink exchange failed: {}", self.inner),
        }
    }
}

impl std::error::Error for NetlinkError {}

/// Why building, changing or removing a mesh network failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The [`MeshNetworkSpec`](crate::MeshNetworkSpec) is unusable; nothing was made.
    #[error("invalid mesh network spec: {reason}")]
    InvalidSpec {
        /// What is wrong.
        reason: String,
    },
    /// A namespace step failed.
    #[error(transparent)]
    Namespace(#[from] NetnsError),
    /// The journal refused to record an object, so it was not made.
    #[error("the journal could not record {object}, so it was not created")]
    Journal {
        /// The object that was about to be made.
        object: String,
        /// The journal's error.
        #[source]
        source: io::Error,
    },
    /// Taps could not be created.
    #[error("cannot create taps in namespace {netns}")]
    CreateTaps {
        /// The namespace.
        netns: String,
        /// The cause.
        #[source]
        source: TapError,
    },
    /// A netlink socket could not be opened in the namespace.
    #[error("cannot open a netlink socket in namespace {netns}")]
    OpenHandle {
        /// The namespace.
        netns: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No link of that name exists in the namespace.
    #[error("no link {ifname} in namespace {netns}")]
    LinkNotFound {
        /// The namespace.
        netns: String,
        /// The link name.
        ifname: String,
    },
    /// Listing links failed.
    #[error("cannot list links in namespace {netns}")]
    DumpLinks {
        /// The namespace.
        netns: String,
        /// The cause.
        #[source]
        source: NetlinkError,
    },
    /// Creating the bridge failed.
    #[error("cannot create bridge {ifname} in namespace {netns}")]
    CreateBridge {
        /// The namespace.
        netns: String,
        /// The bridge name.
        ifname: String,
        /// The cause.
        #[source]
        source: NetlinkError,
    },
    /// Creating a veth pair failed.
    #[error("cannot create veth pair {ifname}/{peer} in namespace {netns}")]
    CreateVeth {
        /// The namespace of the first end.
        netns: String,
        /// The first end.
        ifname: String,
        /// The other end.
        peer: String,
        /// The cause.
        #[source]
        source: NetlinkError,
    },
    /// Adding an address failed.
    #[error("cannot add address {address} to {ifname} in namespace {netns}")]
    AddAddress {
        /// The namespace.
        netns: String,
        /// The link.
        ifname: String,
        /// The address with its prefix length.
        address: String,
        /// The cause.
        #[source]
        source: NetlinkError,
    },
    /// Adding a route failed.
    #[error("cannot add a default route via {gateway} in namespace {netns}")]
    AddRoute {
        /// The namespace.
        netns: String,
        /// The gateway.
        gateway: String,
        /// The cause.
        #[source]
        source: NetlinkError,
    },
    /// Enslaving a tap to the bridge (with its MTU and up) failed.
    #[error("cannot attach tap {ifname} to the bridge in namespace {netns}")]
    EnslaveTap {
        /// The namespace.
        netns: String,
        /// The tap.
        ifname: String,
        /// The cause.
        #[source]
        source: NetlinkError,
    },
    /// Setting a link up or down failed.
    #[error("cannot set link {ifname} up/down in namespace {netns}")]
    SetLinkUp {
        /// The namespace.
        netns: String,
        /// The link.
        ifname: String,
        /// The cause.
        #[source]
        source: NetlinkError,
    },
    /// Attaching a link to or detaching it from a bridge failed.
    #[error("cannot change the bridge of {ifname} in namespace {netns}")]
    SetMaster {
        /// The namespace.
        netns: String,
        /// The link.
        ifname: String,
        /// The cause.
        #[source]
        source: NetlinkError,
    },
    /// Changing bridge port isolation failed.
    #[error("cannot change port isolation of {ifname} in namespace {netns}")]
    SetPortIsolated {
        /// The namespace.
        netns: String,
        /// The link.
        ifname: String,
        /// The cause.
        #[source]
        source: NetlinkError,
    },
    /// The rate limit asked for cannot be expressed.
    #[error("invalid rate limit for {ifname}: {reason}")]
    InvalidTbf {
        /// The link.
        ifname: String,
        /// What is wrong.
        reason: String,
    },
    /// Installing the tbf qdisc failed.
    #[error("cannot install a tbf qdisc on {ifname} in namespace {netns}")]
    SetTbf {
        /// The namespace.
        netns: String,
        /// The link.
        ifname: String,
        /// The cause.
        #[source]
        source: NetlinkError,
    },
    /// Removing the root qdisc failed.
    #[error("cannot remove the root qdisc of {ifname} in namespace {netns}")]
    ClearQdisc {
        /// The namespace.
        netns: String,
        /// The link.
        ifname: String,
        /// The cause.
        #[source]
        source: NetlinkError,
    },
    /// Deleting a link failed.
    #[error("cannot delete link {ifname} in namespace {netns}")]
    DeleteLink {
        /// The namespace.
        netns: String,
        /// The link.
        ifname: String,
        /// The cause.
        #[source]
        source: NetlinkError,
    },
    /// Writing a sysctl inside the namespace failed.
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
    /// Setting up NAT for the uplink failed.
    #[error("cannot install the uplink NAT rules in namespace {netns} (`nft` in {command})")]
    Nat {
        /// The namespace.
        netns: String,
        /// The command run.
        command: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl NetError {
    /// The errno of the kernel's refusal at the bottom of this error, if there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetError::DumpLinks { source, .. }
            | NetError::CreateBridge { source, .. }
            | NetError::CreateVeth { source, .. }
            | NetError::AddAddress { source, .. }
            | NetError::AddRoute { source, .. }
            | NetError::EnslaveTap { source, .. }
            | NetError::SetLinkUp { source, .. }
            | NetError::SetMaster { source, .. }
            | NetError::SetPortIsolated { source, .. }
            | NetError::SetTbf { source, .. }
            | NetError::ClearQdisc { source, .. }
            | NetError::DeleteLink { source, .. } => source.errno(),
            _ => None,
        }
    }
}
