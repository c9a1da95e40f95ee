//! NoCloud seeds that cloud-init accepts: typed cloud-config, meta-data, network-config v2
//! and vendor-data, written as an ISO9660 (`cidata`) or vfat (`CIDATA`) image.
//!
//! cloud-init skips a config it cannot read without failing the boot, so this crate refuses
//! such mistakes up front: the YAML we emit reads back unchanged through PyYAML (YAML 1.1),
//! user-supplied files are checked strictly before anything is written ([`Seed::from_files`],
//! the engine of `mesh seed`, a drop-in for `cloud-localds`), and the instance-id changes
//! exactly when the seed content does.
//!
//! Layering: uses `mesh-iso` for ISO images and fatfs for vfat; pure (no processes, no
//! privileges, no network). Left out: generating SSH keys or password hashes (the caller
//! supplies them), the cloud-config JSON schema (only the fields we write are typed and
//! checked; `cloud-init schema` is the reference, used in our tests), attaching the seed to a
//! VM, and the `#include` / `#cloud-config-archive` / jinja user-data formats.
//!
//! # Examples
//! ```
//! use mesh_cloudinit::{CloudConfig, Ethernet, NetworkConfig, Seed, User};
//!
//! let mut config = CloudConfig::default();
//! config.users.push(User {
//!     name: "mesh".into(),
//!     ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE mesh".into()],
//!     ..User::default()
//! });
//! let mut net = NetworkConfig::default();
//! net.ethernets.insert("mesh0".into(), Ethernet {
//!     mac: "52:54:00:00:00:01".into(),
//!     set_name: Some("mesh0".into()),
//!     addresses: vec!["10.77.0.2/24".into()],
//!     ..Ethernet::default()
//! });
//!
//! let seed = Seed::new(&config, "node-1", Some(&net))?;
//! let dir = std::env::temp_dir().join(format!("mesh-cloudinit-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! seed.write_vfat(&dir.join("seed.img"))?;
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), mesh_cloudinit::SeedError>(())
//! ```

mod base64;
mod config;
mod libyaml;
mod load;
mod metadata;
mod mime;
mod network;
mod seed;
mod userdata;
mod vfat;
pub mod yaml;

pub use config::{
    CloudConfig, Command, FileEncoding, RenderError, SshHostKeys, User, WriteFile,
    CLOUD_CONFIG_HEADER,
};
pub use metadata::{validate_meta_data, DsMode, MetaData, MetaDataError};
pub use mime::{multipart, parse_mime, MimeError, MimePart};
pub use network::{
    validate_network_config, Ethernet, Nameservers, NetworkConfig, NetworkConfigError, Route,
};
pub use seed::{Seed, SeedError, ISO_LABEL, VFAT_LABEL};
pub use userdata::{parse_user_data, UserData, UserDataError};
pub use vfat::{vfat_image, VfatError};
