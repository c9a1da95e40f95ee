//! Typed cloud-config (the `user-data` document we build ourselves).
//!
//! Every field maps to one cloud-init module key; anything not modelled goes through
//! [`CloudConfig::extra`]. [`CloudConfig::render`] checks the values cloud-init would reject
//! or silently misread, then writes YAML that PyYAML reads back unchanged.

use std::collections::BTreeMap;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::yaml::{self, YamlError};

/// The first line of every cloud-config document; cloud-init ignores the file without it.
pub const CLOUD_CONFIG_HEADER: &str = "#cloud-config\n";

/// cloud-init treats user-data as MIME when this text occurs (any case) in its first 4096 bytes.
pub(crate) const MIME_SNIFF_MARKER: &str = "mime-version:";
/// How far cloud-init looks for [`MIME_SNIFF_MARKER`].
pub(crate) const MIME_SNIFF_WINDOW: usize = 4096;

/// A cloud-config document: users, SSH keys, hostname, files, mounts and commands.
///
/// # Examples
/// ```
/// use mesh_cloudinit::{CloudConfig, Command, User};
///
/// let mut config = CloudConfig::default();
/// config.hostname = Some("node-1".into());
/// config.users.push(User {
///     name: "mesh".into(),
///     sudo: Some("ALL=(ALL) NOPASSWD:ALL".into()),
///     ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3Nza mesh@host".into()],
///     ..User::default()
/// });
/// config.runcmd.push(Command::Argv(vec!["touch".into(), "/run/ready".into()]));
/// let text = config.render().unwrap();
/// assert!(text.starts_with("#cloud-config\n"));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CloudConfig {
    /// Users to create (`users`). When non-empty, the image's default user is created only if
    /// [`CloudConfig::keep_default_user`] is set.
    pub users: Vec<User>,
    /// Keep the image's default user (emits `default` as the first entry of `users`).
    pub keep_default_user: bool,
    /// SSH host keys to install (`ssh_keys`), so the host can pin them.
    pub ssh_keys: SshHostKeys,
    /// Allow SSH password authentication (`ssh_pwauth`).
    pub ssh_pwauth: Option<bool>,
    /// Refuse root logins over SSH (`disable_root`).
    pub disable_root: Option<bool>,
    /// Short host name (`hostname`).
    pub hostname: Option<String>,
    /// Fully qualified domain name (`fqdn`).
    pub fqdn: Option<String>,
    /// Let cloud-init write `/etc/hosts` from a template (`manage_etc_hosts`).
    pub manage_etc_hosts: Option<bool>,
    /// Files to write (`write_files`).
    pub write_files: Vec<WriteFile>,
    /// fstab entries (`mounts`): each is 1 to 6 fields, `[spec, mount point, type, options,
    /// dump, pass]`.
    pub mounts: Vec<Vec<String>>,
    /// Packages to install (`packages`). Needs a package mirror the guest can reach.
    pub packages: Vec<String>,
    /// Commands run early on every boot (`bootcmd`).
    pub bootcmd: Vec<Command>,
    /// Commands run once, late in the first boot (`runcmd`).
    pub runcmd: Vec<Command>,
    /// Message logged when cloud-init finishes (`final_message`).
    pub final_message: Option<String>,
    /// Any other top-level key, written as given. A key that a typed field above also
    /// writes is an error at render time.
    pub extra: BTreeMap<String, Value>,
}

/// One user to create.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Full name or comment (`gecos`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gecos: Option<String>,
    /// A sudoers rule, e.g. `ALL=(ALL) NOPASSWD:ALL`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sudo: Option<String>,
    /// Supplementary groups.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Login shell, e.g. `/bin/bash`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Public keys allowed to log in as this user.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
    /// Lock the password (`lock_passwd`); cloud-init's default is to lock it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_passwd: Option<bool>,
    /// A crypt(3) password hash (`passwd`), e.g. from `mkpasswd -m sha-512`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passwd: Option<String>,
    /// A clear-text password (`plain_text_passwd`). Only for throw-away test guests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plain_text_passwd: Option<String>,
}

/// SSH host keys (`ssh_keys`), in OpenSSH private and public formats.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SshHostKeys {
    /// Ed25519 private key (`-----BEGIN OPENSSH PRIVATE KEY-----` ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ed25519_private: Option<String>,
    /// Ed25519 public key line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ed25519_public: Option<String>,
    /// ECDSA private key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ecdsa_private: Option<String>,
    /// ECDSA public key line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ecdsa_public: Option<String>,
    /// RSA private key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rsa_private: Option<String>,
    /// RSA public key line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rsa_public: Option<String>,
}

impl SshHostKeys {
    /// True when no key is set (then `ssh_keys` is left out and the guest generates its own).
    pub fn is_empty(&self) -> bool {
        self.pairs().iter().all(|(_, key)| key.is_none())
    }

    fn pairs(&self) -> [(&'static str, &Option<String>); 6] {
        [
            ("ed25519_private", &self.ed25519_private),
            ("ed25519_public", &self.ed25519_public),
            ("ecdsa_private", &self.ecdsa_private),
            ("ecdsa_public", &self.ecdsa_public),
            ("rsa_private", &self.rsa_private),
            ("rsa_public", &self.rsa_public),
        ]
    }
}

/// One file for `write_files`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WriteFile {
    /// Absolute path in the guest.
    pub path: String,
    /// The contents, encoded as [`WriteFile::encoding`] says.
    pub content: String,
    /// Octal mode as a string, e.g. `"0755"` (a YAML number would be read as decimal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
    /// `user:group` owning the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// How `content` is encoded; `None` is plain text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<FileEncoding>,
    /// Append instead of replacing.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub append: bool,
    /// Write the file late in boot, after users and packages exist (needed when `owner`
    /// names a user cloud-init creates).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub defer: bool,
}

impl WriteFile {
    /// A file with arbitrary bytes, carried base64-encoded.
    ///
    /// # Examples
    /// ```
    /// let file = mesh_cloudinit::WriteFile::binary("/etc/blob", &[0, 159, 255]);
    /// assert_eq!(file.content, "AJ//");
    /// ```
    pub fn binary(path: impl Into<String>, bytes: &[u8]) -> Self {
        WriteFile {
            path: path.into(),
            content: crate::base64::encode(bytes),
            encoding: Some(FileEncoding::Base64),
            ..WriteFile::default()
        }
    }
}

/// Encoding of [`WriteFile::content`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FileEncoding {
    /// Base64 (`b64`).
    #[serde(rename = "b64")]
    Base64,
    /// Gzip, then base64 (`gz+b64`).
    #[serde(rename = "gz+b64")]
    GzipBase64,
}

/// One `runcmd`/`bootcmd` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Command {
    /// A line given to `sh -c`.
    Shell(String),
    /// An argument vector, executed without a shell.
    Argv(Vec<String>),
}

impl From<&str> for Command {
    fn from(line: &str) -> Self {
        Command::Shell(line.to_owned())
    }
}

/// What is wrong with a [`CloudConfig`].
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A user has an empty name or one with characters `useradd` refuses.
    #[error("user name {name:?} is not a valid login name")]
    CheckUserName {
        /// The offending name.
        name: String,
    },
    /// A `write_files` path is not absolute.
    #[error("write_files path {path:?} is not absolute")]
    CheckWriteFilePath {
        /// The offending path.
        path: String,
    },
    /// `permissions` is not an octal mode like `0644`.
    #[error("write_files {path}: permissions {permissions:?} is not an octal mode like \"0644\"")]
    CheckPermissions {
        /// The file.
        path: String,
        /// The offending mode.
        permissions: String,
    },
    /// A `mounts` entry has no field or more than six.
    #[error("mounts entry {index} has {fields} fields, expected 1 to 6")]
    CheckMount {
        /// 0-based index of the entry.
        index: usize,
        /// How many fields it has.
        fields: usize,
    },
    /// A `runcmd`/`bootcmd` entry is an empty argument vector.
    #[error("{key} entry {index} is an empty argument list")]
    CheckCommand {
        /// `runcmd` or `bootcmd`.
        key: &'static str,
        /// 0-based index of the entry.
        index: usize,
    },
    /// An `extra` key is also written by a typed field.
    #[error("extra key {key:?} is also set by a typed field")]
    CheckExtraKey {
        /// The duplicated key.
        key: String,
    },
    /// The hostname is not a valid DNS label sequence.
    #[error("host name {name:?} is not a valid host name")]
    CheckHostname {
        /// The offending name.
        name: String,
    },
    /// Writing the YAML failed.
    #[error("cannot write cloud-config")]
    Emit(#[source] YamlError),
    /// The output would make cloud-init read the whole document as a MIME message.
    #[error(
        "a value places \"MIME-Version:\" in the first {MIME_SNIFF_WINDOW} bytes, which makes \
         cloud-init read the document as MIME; move that value into write_files further down \
         or encode it"
    )]
    CheckMimeLookalike,
}

impl CloudConfig {
    /// Writes the document: `#cloud-config\n` followed by YAML.
    ///
    /// Checks first what cloud-init would reject or misread, and fails naming the field.
    pub fn render(&self) -> Result<String, RenderError> {
        self.check()?;

        // An empty config stays `{}`: an empty document loads as None, which `cloud-init
        // schema` rejects as "not a YAML dict".
        let body = yaml::to_yaml("user-data", self).map_err(RenderError::Emit)?;
        let text = format!("{CLOUD_CONFIG_HEADER}{body}");

        if has_mime_marker(text.as_bytes()) {
            return Err(RenderError::CheckMimeLookalike);
        }
        Ok(text)
    }

    fn check(&self) -> Result<(), RenderError> {
        for user in &self.users {
            if !is_login_name(&user.name) {
                return Err(RenderError::CheckUserName { name: user.name.clone() });
            }
        }
        for name in self.hostname.iter().chain(self.fqdn.iter()) {
            if !is_host_name(name) {
                return Err(RenderError::CheckHostname { name: name.clone() });
            }
        }
        for file in &self.write_files {
            check_write_file(file)?;
        }
        for (index, mount) in self.mounts.iter().enumerate() {
            if mount.is_empty() || mount.len() > 6 {
                return Err(RenderError::CheckMount { index, fields: mount.len() });
            }
        }
        for (key, commands) in [("bootcmd", &self.bootcmd), ("runcmd", &self.runcmd)] {
            for (index, command) in commands.iter().enumerate() {
                if matches!(command, Command::Argv(argv) if argv.is_empty()) {
                    return Err(RenderError::CheckCommand { key, index });
                }
            }
        }
        self.check_extra_keys()
    }

    fn check_extra_keys(&self) -> Result<(), RenderError> {
        // A typed field left empty does not claim its key, so `extra` may carry a value of
        // another shape (e.g. `manage_etc_hosts: localhost`); only keys both sides write
        // are ambiguous.
        match self.extra.keys().find(|key| self.typed_key_is_set(key)) {
            Some(key) => Err(RenderError::CheckExtraKey { key: key.clone() }),
            None => Ok(()),
        }
    }

    fn typed_key_is_set(&self, key: &str) -> bool {
        match key {
            "users" => !self.users.is_empty(),
            "ssh_keys" => !self.ssh_keys.is_empty(),
            "ssh_pwauth" => self.ssh_pwauth.is_some(),
            "disable_root" => self.disable_root.is_some(),
            "hostname" => self.hostname.is_some(),
            "fqdn" => self.fqdn.is_some(),
            "manage_etc_hosts" => self.manage_etc_hosts.is_some(),
            "write_files" => !self.write_files.is_empty(),
            "mounts" => !self.mounts.is_empty(),
            "packages" => !self.packages.is_empty(),
            "bootcmd" => !self.bootcmd.is_empty(),
            "runcmd" => !self.runcmd.is_empty(),
            "final_message" => self.final_message.is_some(),
            _ => false,
        }
    }
}

fn check_write_file(file: &WriteFile) -> Result<(), RenderError> {
    if !file.path.starts_with('/') || file.path.contains('\0') {
        return Err(RenderError::CheckWriteFilePath { path: file.path.clone() });
    }
    if let Some(permissions) = &file.permissions {
        let digits = permissions.strip_prefix("0o").unwrap_or(permissions);
        let octal =
            (3..=4).contains(&digits.len()) && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
        if !octal {
            return Err(RenderError::CheckPermissions {
                path: file.path.clone(),
                permissions: permissions.clone(),
            });
        }
    }
    Ok(())
}

/// What `useradd` accepts by default (Debian's `NAME_REGEX` is stricter; this is the union
/// that both shadow-utils and cloud-init handle): letters, digits, `_`, `-`, `.`, not starting
/// with `-`, at most 32 bytes.
fn is_login_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name != "default"
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
pub(crate) fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// True when cloud-init would take the bytes for a MIME message.
pub(crate) fn has_mime_marker(bytes: &[u8]) -> bool {
    let window = &bytes[..bytes.len().min(MIME_SNIFF_WINDOW)];
    window
        .windows(MIME_SNIFF_MARKER.len())
        .any(|w| w.eq_ignore_ascii_case(MIME_SNIFF_MARKER.as_bytes()))
}

impl Serialize for CloudConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if !self.users.is_empty() {
            let default = self.keep_default_user.then_some(UserEntry::Default("default"));
            let entries: Vec<UserEntry<'_>> =
                default.into_iter().chain(self.users.iter().map(UserEntry::User)).collect();
            map.serialize_entry("users", &entries)?;
        }
        if !self.ssh_keys.is_empty() {
            map.serialize_entry("ssh_keys", &self.ssh_keys)?;
        }
        optional_entry(&mut map, "ssh_pwauth", &self.ssh_pwauth)?;
        optional_entry(&mut map, "disable_root", &self.disable_root)?;
        optional_entry(&mut map, "hostname", &self.hostname)?;
        optional_entry(&mut map, "fqdn", &self.fqdn)?;
        optional_entry(&mut map, "manage_etc_hosts", &self.manage_etc_hosts)?;
        list_entry(&mut map, "write_files", &self.write_files)?;
        list_entry(&mut map, "mounts", &self.mounts)?;
        list_entry(&mut map, "packages", &self.packages)?;
        list_entry(&mut map, "bootcmd", &self.bootcmd)?;
        list_entry(&mut map, "runcmd", &self.runcmd)?;
        optional_entry(&mut map, "final_message", &self.final_message)?;
        for (key, value) in &self.extra {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// An entry of `users`: the image's default user, or one of ours.
#[derive(Serialize)]
#[serde(untagged)]
enum UserEntry<'a> {
    Default(&'static str),
    User(&'a User),
}

fn optional_entry<M: SerializeMap, T: Serialize>(
    map: &mut M,
    key: &'static str,
    value: &Option<T>,
) -> Result<(), M::Error> {
    match value {
        Some(value) => map.serialize_entry(key, value),
        None => Ok(()),
    }
}

fn list_entry<M: SerializeMap, T: Serialize>(
    map: &mut M,
    key: &'static str,
    values: &[T],
) -> Result<(), M::Error> {
    if values.is_empty() {
        return Ok(());
    }
    map.serialize_entry(key, values)
}
