//! SSH keys made per mesh: one client key for the host side and one host key per node, so the
//! host pins every node's identity instead of trusting whatever answers first.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors while making or reading keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// `ssh-keygen` could not be run.
    #[error("cannot run ssh-keygen (install the Debian package openssh-client)")]
    SpawnKeygen(#[source] std::io::Error),
    /// `ssh-keygen` failed.
    #[error("ssh-keygen failed for {path}: {stderr}")]
    Keygen {
        /// Key path.
        path: PathBuf,
        /// What it printed.
        stderr: String,
    },
    /// A key file could not be read or written.
    #[error("key file {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// An ed25519 key pair on disk.
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// Private key file (mode 0600).
    pub private: PathBuf,
    /// OpenSSH public key line, e.g. `ssh-ed25519 AAAA... comment`.
    pub public: String,
}

impl KeyPair {
    /// Private key text. Never log it.
    pub fn private_text(&self) -> Result<String, KeyError> {
        std::fs::read_to_string(&self.private)
            .map_err(|source| KeyError::Io { path: self.private.clone(), source })
    }
}

/// Generates a new ed25519 key at `path` (its directory must exist, ideally 0700), or reuses
/// the key already there.
pub fn ensure_key(path: &Path, comment: &str) -> Result<KeyPair, KeyError> {
    let pub_path = path.with_extension("pub");
    if !path.exists() {
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(path)
            .output()
            .map_err(KeyError::SpawnKeygen)?;
        if !out.status.success() {
            return Err(KeyError::Keygen {
                path: path.to_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
    }
    let public = std::fs::read_to_string(&pub_path)
        .map_err(|source| KeyError::Io { path: pub_path.clone(), source })?
        .trim()
        .to_owned();
    Ok(KeyPair { private: path.to_owned(), public })
}

/// Writes a known_hosts file pinning each node's host key to its address.
pub fn write_known_hosts(path: &Path, hosts: &[(Ipv4Addr, &str)]) -> Result<(), KeyError> {
    let mut text = String::new();
    for (ip, public) in hosts {
        // Only the key type and body: the comment is not part of the identity.
        let mut parts = public.split_whitespace();
        let (Some(kind), Some(body)) = (parts.next(), parts.next()) else { continue };
        text.push_str(&format!("{ip} {kind} {body}\n"));
    }
    std::fs::write(path, text).map_err(|source| KeyError::Io { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_made_once_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        let a = ensure_key(&path, "test").expect("keygen");
        assert!(a.public.starts_with("ssh-ed25519 "));
        let b = ensure_key(&path, "test").expect("reuse");
        assert_eq!(a.public, b.public);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
