//! Persistent tap devices, made with `/dev/net/tun` ioctls.
//!
//! The kernel refuses to create tun/tap devices over rtnetlink, so a tap is made by opening
//! `/dev/net/tun` inside the namespace, `TUNSETIFF` (tap, no packet info) and
//! `TUNSETPERSIST`; then the descriptor is closed. QEMU, started inside the namespace, opens
//! the tap again by name (`-netdev tap,ifname=NAME,script=no,downscript=no`). Removing a tap
//! is an ordinary rtnetlink link deletion.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use tracing::debug;

use crate::naming::check_ifname;
use crate::netns::{Netns, NetnsError};

/// The tun/tap control device.
const TUN_DEVICE: &str = "/dev/net/tun";

/// How often a busy tap (still attached to another descriptor) is retried.
const BUSY_ATTEMPTS: u32 = 5;

/// How long to wait between attempts on a busy tap: a QEMU that is exiting lets go soon.
const BUSY_PAUSE: Duration = Duration::from_millis(20);

/// Why a tap could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is not a valid interface name.
    #[error("invalid tap name: {reason}")]
    InvalidName {
        /// What is wrong with it.
        reason: String,
    },
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open {TUN_DEVICE} (is the tun module available?)")]
    OpenTun {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `TUNSETIFF` failed.
    #[error("TUNSETIFF for tap {name} failed (CAP_NET_ADMIN is needed; a non-tap link of that name makes it fail too)")]
    SetIff {
        /// The tap name.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The tap exists and another descriptor (a running QEMU?) still holds it.
    #[error("tap {name} is busy: another process still holds it open ({attempts} attempts)")]
    Busy {
        /// The tap name.
        name: String,
        /// How many times it was tried.
        attempts: u32,
    },
    /// `TUNSETPERSIST` failed.
    #[error("TUNSETPERSIST for tap {name} failed")]
    SetPersist {
        /// The tap name.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// Creates the persistent taps `names` inside `netns` (one thread entering the namespace for
/// all of them). Stops at the first failure; the taps made before it remain and are
/// reported through `made`, so the caller can remove them.
///
/// If a persistent tap of that name already exists and nobody holds it, it is adopted, as
/// `TUNSETIFF` does; one held open by another process fails with [`TapError::Busy`] after a
/// few short retries.
pub fn create_persistent_taps(
    netns: &Netns,
    names: &[String],
    made: &mut Vec<String>,
) -> Result<(), TapError> {
    for name in names {
        check_ifname(name).map_err(|reason| TapError::InvalidName { reason })?;
    }
    netns.run(|| {
        for name in names {
            create_one(name)?;
            made.push(name.clone());
        }
        Ok(())
    })?
}

/// Creates one persistent tap in the current thread's namespace.
fn create_one(name: &str) -> Result<(), TapError> {
    debug!(tap = name, "open {TUN_DEVICE}, TUNSETIFF(IFF_TAP|IFF_NO_PI), TUNSETPERSIST(1)");
    let mut attempt = 1;
    let tun = loop {
        // Opened on this thread: the tun file's namespace is fixed at open time.
        let tun = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(|source| TapError::OpenTun { source })?;
        match set_iff(&tun, name) {
            Ok(()) => break tun,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if attempt >= BUSY_ATTEMPTS {
                    return Err(TapError::Busy { name: name.into(), attempts: attempt });
                }
                debug!(tap = name, attempt, "tap busy, retrying");
                attempt += 1;
                std::thread::sleep(BUSY_PAUSE);
            }
            Err(source) => return Err(TapError::SetIff { name: name.into(), source }),
        }
    };

    // FIXME: no TUNSETOWNER/TUNSETGROUP yet, so only root can attach to the tap; this matters
    // once QEMU runs unprivileged inside the namespace.
    // SAFETY: TUNSETPERSIST takes its argument by value; `tun` is an open tun descriptor.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) };
    if rc < 0 {
        return Err(TapError::SetPersist { name: name.into(), source: io::Error::last_os_error() });
    }
    Ok(())
}

/// `TUNSETIFF` with a tap, no-packet-info request for `name`.
fn set_iff(tun: &std::fs::File, name: &str) -> io::Result<()> {
    // SAFETY: ifreq is plain old data; all zeroes is a valid (empty) request.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    // The name was checked to be at most IFNAMSIZ - 1 bytes, so a NUL always follows it.
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which lives for the whole call.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut request) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
