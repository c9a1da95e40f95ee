//! [`PacketSocket`]: an `AF_PACKET` raw socket bound to one interface, reading the frames
//! the interface receives (never the ones it sends) with their `virtio_net_hdr`, and sending
//! frames out of it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tracing::debug;

/// Largest buffer a frame can need: a 64 KiB GSO super-frame, its Ethernet and VLAN header
/// and the vnet header.
pub(crate) const MAX_FRAME: usize = 65_536 + 14 + 4 + super::engine::VNET_HDR_LEN;

/// A raw packet socket on one interface, non-blocking.
#[derive(Debug)]
pub(crate) struct PacketSocket {
    fd: OwnedFd,
    ifname: String,
}

/// The step of [`PacketSocket::open`] that failed, with the OS error.
pub(crate) type OpenError = (&'static str, io::Error);

impl PacketSocket {
    /// Opens a socket on `ifname`. Must run on a thread inside the interface's namespace:
    /// the socket and the name lookup belong to the caller's namespace.
    ///
    /// Options, and why:
    /// - `PACKET_VNET_HDR`: frames come with their GSO and checksum-offload state and go out
    ///   with it, so super-frames larger than the MTU and frames with a partial checksum
    ///   survive the round trip through userspace;
    /// - `PACKET_IGNORE_OUTGOING`: the frames we (or the kernel) send out of the interface
    ///   are not read back, so nothing loops;
    /// - promiscuous membership: frames for any MAC are seen, whatever the device filters;
    /// - bound with `ETH_P_ALL` only after all that, so no frame of another interface and no
    ///   frame without a vnet header is ever queued.
    // FIXME: a VLAN tag the kernel keeps out of band (accelerated VLAN on a veth) is
    // reported only through PACKET_AUXDATA, which is not read, so it is lost on the way
    // through; matters only for guests that tag their own frames.
    pub(crate) fn open(ifname: &str) -> Result<PacketSocket, OpenError> {
        let name = CString::new(ifname).map_err(|e| ("if_nametoindex", io::Error::other(e)))?;
        // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(("if_nametoindex", io::Error::last_os_error()));
        }

        // SAFETY: plain socket(2) call; the result is checked before it is used.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(("socket(AF_PACKET)", io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        set_int(&fd, libc::SOL_PACKET, libc::PACKET_VNET_HDR, 1)
            .map_err(|e| ("PACKET_VNET_HDR", e))?;
        set_int(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1)
            .map_err(|e| ("PACKET_IGNORE_OUTGOING", e))?;
        let membership = libc::packet_mreq {
            mr_ifindex: ifindex as libc::c_int,
            mr_type: libc::PACKET_MR_PROMISC as libc::c_ushort,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        set_option(&fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &membership)
            .map_err(|e| ("PACKET_ADD_MEMBERSHIP", e))?;
        // Room for bursts while the loop is busy with the other direction; the kernel caps
        // these at rmem_max/wmem_max, which is fine.
        set_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 4 << 20).map_err(|e| ("SO_RCVBUF", e))?;
        set_int(&fd, libc::SOL_SOCKET, libc::SO_SNDBUF, 4 << 20).map_err(|e| ("SO_SNDBUF", e))?;

        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as libc::c_ushort;
        address.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        address.sll_ifindex = ifindex as libc::c_int;
        // SAFETY: the pointer and length describe `address`, which outlives the call.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(address).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if bound < 0 {
            return Err(("bind", io::Error::last_os_error()));
        }
        debug!(ifname, ifindex, "AF_PACKET socket bound (vnet header, promiscuous)");
        Ok(PacketSocket { fd, ifname: ifname.into() })
    }

    /// The interface name.
    pub(crate) fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Reads one frame into `buffer`; `Ok(None)` when none is waiting. The length returned
    /// is the frame's real length, which exceeds `buffer.len()` if it was truncated.
    pub(crate) fn recv(&self, buffer: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: the pointer and length describe `buffer`; MSG_TRUNC only changes the
        // returned length, never how much is written.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                libc::MSG_TRUNC | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
            _ => Err(error),
        }
    }

    /// Sends one frame (vnet header included) out of the interface, without waiting.
    pub(crate) fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: the pointer and length describe `frame`.
        let n = unsafe {
            libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), libc::MSG_DONTWAIT)
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn set_int(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    set_option(fd, level, name, &value)
}

fn set_option<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: the pointer and length describe `value`, which outlives the call; the kernel
    // only reads it.
    let result = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
