//! The system packages vm-mesh and its tests need, installed with apt-get when missing.

use std::process::Command;

use anyhow::{bail, Context, Result};

/// Debian packages needed at run time and by the test suite.
pub const PACKAGES: &[&str] = &[
    // Guests and images.
    "qemu-system-x86",
    "qemu-system-arm",
    "qemu-utils",
    "qemu-efi-aarch64",
    "ovmf",
    "seabios",
    "ipxe-qemu",
    "mmdebstrap",
    "qemu-user-static",
    "binfmt-support",
    "arch-test",
    "e2fsprogs",
    "busybox-static",
    // Network and SSH.
    "iproute2",
    "nftables",
    "iputils-ping",
    "openssh-client",
    "iperf3",
    "git",
    // Independent readers the tests check our output with.
    "xorriso",
    "genisoimage",
    "libarchive-tools",
    "cloud-image-utils",
    "cloud-init",
    "mtools",
    "dosfstools",
    "cpio",
    "zstd",
    "time",
    // Cross builds of the test fixture.
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "gcc",
    "libc6-dev",
];

/// Packages taken from bookworm-backports when the host's qemu-utils comes from there (QEMU's
/// packages must all be of one version).
const QEMU_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-arm",
    "qemu-utils",
    "qemu-user-static",
    "qemu-system-common",
    "qemu-system-data",
];

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn is_debian() -> bool {
    std::fs::read_to_string("/etc/os-release").is_ok_and(|t| t.lines().any(|l| l == "ID=debian"))
}

fn qemu_from_backports() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "qemu-utils"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("bpo12"))
        .unwrap_or(false)
}

/// Installs whatever is missing, saying what; refuses with the exact command when it cannot.
pub fn ensure() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let backports = qemu_from_backports();
    let command = format!(
        "apt-get update && apt-get install -y --no-install-recommends{} {}",
        if backports { " -t bookworm-backports" } else { "" },
        missing.join(" ")
    );
    if !nix_is_root() || !is_debian() {
        bail!(
            "missing system packages: {}; as root on Debian 12 run: {command}",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    if backports {
        let list = "/etc/apt/sources.list.d/bookworm-backports.list";
        if !std::path::Path::new(list).exists() {
            std::fs::write(list, "deb http://deb.debian.org/debian bookworm-backports main\n")
                .with_context(|| format!("cannot write {list}"))?;
        }
    }
    crate::check(Command::new("apt-get").args(["update", "-q"]))?;
    let mut install = Command::new("apt-get");
    install.env("DEBIAN_FRONTEND", "noninteractive").args([
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
    ]);
    if backports {
        // Only QEMU's own packages follow the backports version; the rest stay on bookworm.
        for p in &missing {
            if QEMU_PACKAGES.contains(p) {
                install.arg(format!("{p}/bookworm-backports"));
            } else {
                install.arg(p);
            }
        }
    } else {
        install.args(&missing);
    }
    crate::check(&mut install)?;
    Ok(())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
