//! Deterministic names, MAC addresses and address plans for the nodes of a mesh.
//!
//! Everything here is pure: the same mesh and node names always give the same tap names and
//! MACs, so a crashed run can be recognised and a re-run produces an identical network.

use std::net::Ipv4Addr;

/// The longest interface name the kernel accepts (`IFNAMSIZ` minus the terminating NUL).
pub const IFNAME_MAX: usize = 15;

/// Why an address plan could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// The prefix leaves no room for a gateway and nodes (or is above 32).
    #[error("prefix length /{prefix_len} is unusable for a mesh subnet (use /1 to /30)")]
    InvalidPrefix {
        /// The prefix length asked for.
        prefix_len: u8,
    },
    /// The network address has bits set below the prefix.
    #[error("{network}/{prefix_len} has host bits set; the network address is {expected}")]
    HostBitsSet {
        /// The address given.
        network: Ipv4Addr,
        /// The prefix length given.
        prefix_len: u8,
        /// The network address the prefix implies.
        expected: Ipv4Addr,
    },
    /// The subnet has fewer host addresses than the gateway plus the nodes need.
    #[error(
        "subnet {network}/{prefix_len} has room for {available} nodes besides the gateway, \
         but {requested} were asked for; choose a shorter prefix"
    )]
    NoRoom {
        /// The network address.
        network: Ipv4Addr,
        /// The prefix length.
        prefix_len: u8,
        /// Nodes asked for.
        requested: usize,
        /// Nodes that fit.
        available: u64,
    },
}

/// 64-bit FNV-1a: tiny, stable across releases and platforms, which is all a name needs.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            // A separator keeps ("ab", "c") and ("a", "bc") apart.
            hash ^= 0xff;
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        for byte in part.iter() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

/// The tap name of node `index` of mesh `mesh`: `vm` + 6 hex digits of a hash of the mesh
/// name + `-` + the index, at most 15 bytes so it fits `IFNAMSIZ`.
///
/// Indexes from 1 000 000 on wrap around (a mesh that large does not fit on one host).
///
/// # Examples
/// ```
/// let name = mesh_net::tap_name("demo", 3);
/// assert!(name.starts_with("vm") && name.ends_with("-3") && name.len() <= 15);
/// assert_eq!(name, mesh_net::tap_name("demo", 3));
/// assert_ne!(name, mesh_net::tap_name("other", 3));
/// ```
pub fn tap_name(mesh: &str, index: usize) -> String {
    let hash = fnv1a(&[mesh.as_bytes()]) & 0xff_ffff;
    format!("vm{hash:06x}-{}", index % 1_000_000)
}

/// The MAC address of node `node` of mesh `mesh`: locally administered, unicast, and
/// derived from both names only.
///
/// # Examples
/// ```
/// let mac = mesh_net::node_mac("demo", "x86-0");
/// assert_eq!(mac[0] & 0b11, 0b10); // locally administered, unicast
/// assert_eq!(mac, mesh_net::node_mac("demo", "x86-0"));
/// ```
pub fn node_mac(mesh: &str, node: &str) -> [u8; 6] {
    let hash = fnv1a(&[b"mac", mesh.as_bytes(), node.as_bytes()]).to_be_bytes();
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&hash[..6]);
    // Bit 1 of the first octet marks a locally administered address, bit 0 a multicast one.
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
}

/// Formats a MAC address as lowercase hex pairs separated by colons, as `ip link` prints it.
///
/// # Examples
/// ```
/// assert_eq!(mesh_net::format_mac(&[0x52, 0x54, 0, 0xab, 1, 2]), "52:54:00:ab:01:02");
/// ```
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Plans the addresses of a mesh subnet: the gateway (the bridge) gets the first host
/// address, the `count` nodes the ones after it.
///
/// # Examples
/// ```
/// use std::net::Ipv4Addr;
/// let (gw, nodes) = mesh_net::plan_addresses(Ipv4Addr::new(10, 9, 0, 0), 24, 2).unwrap();
/// assert_eq!(gw, Ipv4Addr::new(10, 9, 0, 1));
/// assert_eq!(nodes, [Ipv4Addr::new(10, 9, 0, 2), Ipv4Addr::new(10, 9, 0, 3)]);
/// assert!(mesh_net::plan_addresses(Ipv4Addr::new(10, 9, 0, 0), 30, 2).is_err());
/// ```
pub fn plan_addresses(
    network: Ipv4Addr,
    prefix_len: u8,
    count: usize,
) -> Result<(Ipv4Addr, Vec<Ipv4Addr>), PlanError> {
    if !(1..=30).contains(&prefix_len) {
        return Err(PlanError::InvalidPrefix { prefix_len });
    }

    let mask = u32::MAX << (32 - u32::from(prefix_len));
    let base = u32::from(network);
    if base & !mask != 0 {
        return Err(PlanError::HostBitsSet {
            network,
            prefix_len,
            expected: Ipv4Addr::from(base & mask),
        });
    }

    // Host addresses exclude the network and broadcast addresses; one goes to the gateway.
    let hosts = (1u64 << (32 - u32::from(prefix_len))) - 2;
    let available = hosts - 1;
    if count as u64 > available {
        return Err(PlanError::NoRoom { network, prefix_len, requested: count, available });
    }

    let gateway = Ipv4Addr::from(base + 1);
    let nodes = (0..count as u32).map(|i| Ipv4Addr::from(base + 2 + i)).collect();
    Ok((gateway, nodes))
}

/// Checks that `name` is acceptable to the kernel as an interface name.
pub(crate) fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("interface name is empty".into());
    }
    if name.len() > IFNAME_MAX {
        return Err(format!(
            "interface name {name:?} is {} bytes; the kernel allows at most {IFNAME_MAX} \
             (IFNAMSIZ)",
            name.len()
        ));
    }
    if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        return Err(format!("interface name {name:?} contains '/', ':' or whitespace"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_fit_ifnamsiz_and_differ_per_index_and_mesh() {
        let long_mesh = "a-very-long-mesh-name-that-goes-on-and-on";
        for index in [0, 9, 10, 999_999, 1_000_000, usize::MAX] {
            let name = tap_name(long_mesh, index);
            assert!(name.len() <= IFNAME_MAX, "{name} too long");
            assert!(check_ifname(&name).is_ok());
        }
        let names: std::collections::HashSet<_> = (0..1000).map(|i| tap_name("m", i)).collect();
        assert_eq!(names.len(), 1000);
        assert_ne!(tap_name("m1", 0), tap_name("m2", 0));
    }

    #[test]
    fn macs_are_local_unicast_and_distinct() {
        let macs: std::collections::HashSet<_> =
            (0..1000).map(|i| node_mac("mesh", &format!("node-{i}"))).collect();
        assert_eq!(macs.len(), 1000);
        for mac in &macs {
            assert_eq!(mac[0] & 0x03, 0x02, "{}", format_mac(mac));
        }
        assert_ne!(node_mac("a", "bc"), node_mac("ab", "c"));
    }

    #[test]
    fn format_mac_is_lowercase_with_colons() {
        assert_eq!(format_mac(&[0xde, 0xad, 0xbe, 0xef, 0x00, 0x0a]), "de:ad:be:ef:00:0a");
    }

    #[test]
    fn plan_fills_subnet_exactly() {
        let net = Ipv4Addr::new(192, 168, 7, 0);
        let (gw, nodes) = plan_addresses(net, 29, 5).expect("a /29 holds a gateway and 5 nodes");
        assert_eq!(gw, Ipv4Addr::new(192, 168, 7, 1));
        assert_eq!(nodes.last(), Some(&Ipv4Addr::new(192, 168, 7, 6)));
        assert_eq!(
            plan_addresses(net, 29, 6),
            Err(PlanError::NoRoom { network: net, prefix_len: 29, requested: 6, available: 5 })
        );
    }

    #[test]
    fn plan_rejects_bad_prefixes_and_host_bits() {
        let net = Ipv4Addr::new(10, 0, 0, 0);
        assert_eq!(plan_addresses(net, 31, 0), Err(PlanError::InvalidPrefix { prefix_len: 31 }));
        assert_eq!(plan_addresses(net, 0, 0), Err(PlanError::InvalidPrefix { prefix_len: 0 }));
        assert!(matches!(
            plan_addresses(Ipv4Addr::new(10, 0, 0, 5), 24, 1),
            Err(PlanError::HostBitsSet { expected, .. }) if expected == net
        ));
        let err = plan_addresses(net, 30, 3).expect_err("a /30 holds 1 node");
        assert!(err.to_string().contains("room for 1"), "{err}");
    }

    #[test]
    fn ifname_checks() {
        assert!(check_ifname("br0").is_ok());
        assert!(check_ifname("0123456789abcdef").expect_err("16 bytes").contains("IFNAMSIZ"));
        assert!(check_ifname("").is_err());
        assert!(check_ifname("a/b").is_err());
        assert!(check_ifname("a b").is_err());
    }
}
