//! NoCloud `network-config`, version 2: NICs matched by MAC address and renamed, static
//! addresses, routes, DNS and MTU.
//!
//! The document has no top-level `network:` key: that wrapper belongs to the cloud-config
//! form, and inside a NoCloud seed some cloud-init releases ignore a wrapped config.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;
use serde_json::Value;

use crate::yaml::{self, YamlError};

/// A version 2 network configuration.
///
/// # Examples
/// ```
/// use mesh_cloudinit::{Ethernet, NetworkConfig, Route};
///
/// let mut net = NetworkConfig::default();
/// net.ethernets.insert("mesh0".into(), Ethernet {
///     mac: "52:54:00:12:34:56".into(),
///     set_name: Some("mesh0".into()),
///     addresses: vec!["10.77.0.2/24".into()],
///     routes: vec![Route { to: "0.0.0.0/0".into(), via: "10.77.0.1".into(), metric: None }],
///     mtu: Some(1500),
///     ..Ethernet::default()
/// });
/// let text = net.render().unwrap();
/// assert!(text.starts_with("version: 2\n"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Ethernet interfaces keyed by an id of our choosing (used as the name when
    /// [`Ethernet::set_name`] is absent).
    pub ethernets: BTreeMap<String, Ethernet>,
}

/// One Ethernet interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ethernet {
    /// MAC address the NIC is matched by (`match.macaddress`), `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Name to give the NIC (`set-name`), at most 15 bytes.
    pub set_name: Option<String>,
    /// Static addresses in CIDR form, e.g. `10.77.0.2/24` or `fd00::2/64`.
    pub addresses: Vec<String>,
    /// Static routes.
    pub routes: Vec<Route>,
    /// DNS servers and search domains.
    pub nameservers: Option<Nameservers>,
    /// Link MTU.
    pub mtu: Option<u32>,
    /// Ask for an IPv4 lease (`dhcp4`); written always so images that default to DHCP on
    /// every NIC do not wait for one.
    pub dhcp4: bool,
    /// Ask for an IPv6 lease (`dhcp6`).
    pub dhcp6: bool,
}

/// A static route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Route {
    /// Destination in CIDR form (`0.0.0.0/0` for the default route).
    pub to: String,
    /// Gateway address.
    pub via: String,
    /// Route metric.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

/// DNS configuration of an interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Nameservers {
    /// Server addresses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Search domains.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
}

/// What is wrong with a network configuration.
#[derive(Debug, thiserror::Error)]
pub enum NetworkConfigError {
    /// An interface id is empty or has characters netplan refuses.
    #[error("interface id {id:?} is not usable")]
    CheckInterfaceId {
        /// The id.
        id: String,
    },
    /// A MAC address is not six colon-separated hex bytes.
    #[error("interface {id}: MAC address {mac:?} is not of the form aa:bb:cc:dd:ee:ff")]
    CheckMac {
        /// The interface id.
        id: String,
        /// The offending value.
        mac: String,
    },
    /// `set-name` is empty, too long for the kernel, or has `/` or whitespace.
    #[error("interface {id}: set-name {name:?} is not a valid interface name")]
    CheckSetName {
        /// The interface id.
        id: String,
        /// The offending value.
        name: String,
    },
    /// An address is not `IP/prefix`.
    #[error("interface {id}: {value:?} is not an address in CIDR form")]
    CheckAddress {
        /// The interface id.
        id: String,
        /// The offending value.
        value: String,
    },
    /// A route destination or gateway is malformed.
    #[error("interface {id}: route to {to:?} via {via:?} is malformed")]
    CheckRoute {
        /// The interface id.
        id: String,
        /// The destination.
        to: String,
        /// The gateway.
        via: String,
    },
    /// A nameserver is not an IP address.
    #[error("interface {id}: nameserver {value:?} is not an IP address")]
    CheckNameserver {
        /// The interface id.
        id: String,
        /// The offending value.
        value: String,
    },
    /// Writing the YAML failed.
    #[error("cannot write network-config")]
    Emit(#[source] YamlError),
    /// A supplied document is not UTF-8 text.
    #[error("network-config is not UTF-8 text")]
    Decode(#[source] std::str::Utf8Error),
    /// A supplied document is not a YAML mapping (the cause names the document).
    #[error(transparent)]
    Parse(YamlError),
    /// A supplied document wraps its config in a top-level `network:` key.
    #[error("network-config has a top-level `network:` key; write its contents at the top level")]
    CheckNetworkWrapper,
    /// A supplied document has no `version` or one cloud-init does not know.
    #[error("network-config version {found} is not supported (expected 1 or 2)")]
    CheckVersion {
        /// What was found, as JSON (`null` when absent).
        found: String,
    },
}

impl NetworkConfig {
    /// Writes the document (starting `version: 2`, no `network:` wrapper).
    pub fn render(&self) -> Result<String, NetworkConfigError> {
        let mut ethernets = BTreeMap::new();
        for (id, ethernet) in &self.ethernets {
            ethernets.insert(id.as_str(), ethernet.to_wire(id)?);
        }
        let document = WireConfig { version: 2, ethernets };
        yaml::to_yaml("network-config", &document).map_err(NetworkConfigError::Emit)
    }
}

#[derive(Serialize)]
struct WireConfig<'a> {
    version: u8,
    ethernets: BTreeMap<&'a str, WireEthernet<'a>>,
}

#[derive(Serialize)]
struct WireEthernet<'a> {
    #[serde(rename = "match")]
    matching: WireMatch,
    #[serde(rename = "set-name", skip_serializing_if = "Option::is_none")]
    set_name: Option<&'a str>,
    dhcp4: bool,
    dhcp6: bool,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    addresses: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    routes: &'a [Route],
    #[serde(skip_serializing_if = "Option::is_none")]
    nameservers: Option<&'a Nameservers>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
}

#[derive(Serialize)]
struct WireMatch {
    macaddress: String,
}

impl Ethernet {
    fn to_wire<'a>(&'a self, id: &str) -> Result<WireEthernet<'a>, NetworkConfigError> {
        if id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/') {
            return Err(NetworkConfigError::CheckInterfaceId { id: id.into() });
        }
        if !is_mac(&self.mac) {
            return Err(NetworkConfigError::CheckMac { id: id.into(), mac: self.mac.clone() });
        }
        if let Some(name) = &self.set_name {
            if !is_interface_name(name) {
                return Err(NetworkConfigError::CheckSetName { id: id.into(), name: name.clone() });
            }
        }
        for address in &self.addresses {
            if !is_cidr(address) {
                let value = address.clone();
                return Err(NetworkConfigError::CheckAddress { id: id.into(), value });
            }
        }
        for route in &self.routes {
            if !is_cidr(&route.to) || route.via.parse::<IpAddr>().is_err() {
                let (to, via) = (route.to.clone(), route.via.clone());
                return Err(NetworkConfigError::CheckRoute { id: id.into(), to, via });
            }
        }
        for server in self.nameservers.iter().flat_map(|n| n.addresses.iter()) {
            if server.parse::<IpAddr>().is_err() {
                let value = server.clone();
                return Err(NetworkConfigError::CheckNameserver { id: id.into(), value });
            }
        }

        Ok(WireEthernet {
            // cloud-init compares MACs in lower case.
            matching: WireMatch { macaddress: self.mac.to_ascii_lowercase() },
            set_name: self.set_name.as_deref(),
            dhcp4: self.dhcp4,
            dhcp6: self.dhcp6,
            addresses: &self.addresses,
            routes: &self.routes,
            nameservers: self.nameservers.as_ref(),
            mtu: self.mtu,
        })
    }
}

/// Checks a user-supplied network-config document.
pub fn validate_network_config(bytes: &[u8]) -> Result<(), NetworkConfigError> {
    // A leading byte-order mark is skipped by the reader, as by PyYAML.
    let text = std::str::from_utf8(bytes).map_err(NetworkConfigError::Decode)?;
    let map = yaml::parse_mapping("network-config", text).map_err(NetworkConfigError::Parse)?;

    if map.contains_key("network") {
        return Err(NetworkConfigError::CheckNetworkWrapper);
    }
    match map.get("version") {
        Some(Value::Number(n)) if n.as_u64() == Some(1) || n.as_u64() == Some(2) => Ok(()),
        other => Err(NetworkConfigError::CheckVersion {
            found: other.map_or_else(|| "null".to_owned(), Value::to_string),
        }),
    }
}

fn is_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Linux interface names: 1 to 15 bytes (IFNAMSIZ - 1), no `/`, `:` or whitespace.
fn is_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == ':')
}

fn is_cidr(value: &str) -> bool {
    let Some((address, prefix)) = value.split_once('/') else {
        return false;
    };
    let Ok(address) = address.parse::<IpAddr>() else {
        return false;
    };
    let max = if address.is_ipv4() { 32 } else { 128 };
    // A leading `+` or zero would parse but is not what netplan expects.
    let oddly_spelt = prefix.starts_with('+') || (prefix.len() > 1 && prefix.starts_with('0'));
    !oddly_spelt && prefix.parse::<u8>().is_ok_and(|p| p <= max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_nic() -> NetworkConfig {
        let mut net = NetworkConfig::default();
        net.ethernets.insert(
            "mesh0".into(),
            Ethernet {
                mac: "52:54:00:AB:cd:01".into(),
                set_name: Some("mesh0".into()),
                addresses: vec!["10.0.0.2/24".into(), "fd00::2/64".into()],
                ..Ethernet::default()
            },
        );
        net
    }

    #[test]
    fn renders_without_network_wrapper_and_with_lowercase_mac() {
        let text = one_nic().render().expect("valid");
        assert!(text.starts_with("version: 2\nethernets:\n"), "{text}");
        assert!(
            text.contains("macaddress: 52:54:00:ab:cd:01")
                || text.contains("\"52:54:00:ab:cd:01\"")
        );
        validate_network_config(text.as_bytes()).expect("our own output validates");
    }

    #[test]
    fn bad_cidr_is_rejected() {
        let mut net = one_nic();
        net.ethernets.get_mut("mesh0").expect("inserted above").addresses = vec!["10.0.0.2".into()];
        assert!(matches!(net.render(), Err(NetworkConfigError::CheckAddress { .. })));
    }

    #[test]
    fn wrapper_and_unknown_version_are_rejected() {
        assert!(matches!(
            validate_network_config(b"network:\n  version: 2\n"),
            Err(NetworkConfigError::CheckNetworkWrapper)
        ));
        assert!(matches!(
            validate_network_config(b"version: 3\n"),
            Err(NetworkConfigError::CheckVersion { .. })
        ));
        assert!(matches!(
            validate_network_config(b"ethernets: {}\n"),
            Err(NetworkConfigError::CheckVersion { .. })
        ));
    }
}
