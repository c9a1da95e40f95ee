//! Guest architectures and accelerators.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A guest CPU architecture that vm-mesh can run.
///
/// Spelled `x86_64` and `aarch64` everywhere: in serde, in [`fmt::Display`] and in
/// [`FromStr`].
///
/// # Examples
/// ```
/// use mesh_qemu::Arch;
/// let arch: Arch = "aarch64".parse().unwrap();
/// assert_eq!(arch.qemu_binary(), "qemu-system-aarch64");
/// assert_eq!(arch.to_string(), "aarch64");
/// ```
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// 64-bit x86, run on the `q35` machine.
    #[serde(rename = "x86_64")]
    X86_64,
    /// 64-bit Arm, run on the `virt` machine.
    #[serde(rename = "aarch64")]
    Aarch64,
}

impl Arch {
    /// Every architecture, in a stable order.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The architecture this program was built for, which is the one KVM could run.
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    /// The QEMU system emulator for this architecture.
    pub fn qemu_binary(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// The name used by Debian for this architecture (`amd64`, `arm64`).
    pub fn debian_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// The name as written in serde, [`fmt::Display`] and [`FromStr`].
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no architecture (see [`Arch`] for the accepted spellings).
#[derive(Debug, thiserror::Error)]
#[error("unknown architecture {0:?} (expected x86_64 or aarch64)")]
pub struct ParseArchError(pub String);

impl FromStr for Arch {
    type Err = ParseArchError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "x86_64" => Ok(Arch::X86_64),
            "aarch64" => Ok(Arch::Aarch64),
            other => Err(ParseArchError(other.to_owned())),
        }
    }
}

/// How QEMU executes guest code.
///
/// Spelled `kvm` and `tcg` in serde, [`fmt::Display`] and [`FromStr`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Accel {
    /// Hardware virtualization through `/dev/kvm`; only for the host architecture.
    #[serde(rename = "kvm")]
    Kvm,
    /// QEMU's portable binary translator: slow but runs anywhere.
    #[serde(rename = "tcg")]
    Tcg,
}

impl Accel {
    /// The name as written in serde, [`fmt::Display`], [`FromStr`] and QEMU's `-accel`.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no accelerator (`kvm` or `tcg`).
#[derive(Debug, thiserror::Error)]
#[error("unknown accelerator {0:?} (expected kvm or tcg)")]
pub struct ParseAccelError(pub String);

impl FromStr for Accel {
    type Err = ParseAccelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(ParseAccelError(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_spellings_agree_between_serde_display_and_fromstr() {
        for arch in Arch::ALL {
            let json = serde_json::to_string(&arch).expect("serializing an enum cannot fail");
            assert_eq!(json, format!("\"{arch}\""));
            assert_eq!(arch.to_string().parse::<Arch>().ok(), Some(arch));
            assert_eq!(serde_json::from_str::<Arch>(&json).ok(), Some(arch));
        }
        assert!("arm64".parse::<Arch>().is_err());
    }

    #[test]
    fn accel_spellings_agree_between_serde_display_and_fromstr() {
        for accel in [Accel::Kvm, Accel::Tcg] {
            let json = serde_json::to_string(&accel).expect("serializing an enum cannot fail");
            assert_eq!(json, format!("\"{accel}\""));
            assert_eq!(accel.to_string().parse::<Accel>().ok(), Some(accel));
        }
        assert!("auto".parse::<Accel>().is_err());
    }
}
