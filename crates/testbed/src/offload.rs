//! Turning off segmentation and checksum offloads on an interface, through
//! the `SIOCETHTOOL` ioctl (what `ethtool -K IF tx off sg off tso off gso
//! off gro off` does), so no `ethtool` binary is needed.
//!
//! Why: veths pass 64 KiB TCP super-frames (TSO/GSO) and frames whose
//! checksum is left for "hardware" to fill in. A packet socket reading such
//! a veth gets frames it cannot put back on a wire: too big, or with wrong
//! checksums. With these offloads off on the interface that *transmits*
//! towards the relay, the kernel segments and checksums in software first.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::{Error, Result};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_SSG: u32 = 0x19;
const ETHTOOL_STSO: u32 = 0x1f;
const ETHTOOL_SGSO: u32 = 0x24;
const ETHTOOL_SGRO: u32 = 0x2c;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// Turns off TSO, GSO, GRO, scatter-gather and TX checksum offload on
/// `ifname` in the calling thread's network namespace.
pub fn disable_offloads(ifname: &str) -> Result<()> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(Error::Topology(format!(
            "interface name {ifname:?} is empty or longer than 15 bytes"
        )));
    }
    // SAFETY: plain socket creation; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::last_os("creating a socket for SIOCETHTOOL"));
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // Order matters: features that depend on others go first.
    for (cmd, what) in [
        (ETHTOOL_STSO, "tso"),
        (ETHTOOL_SGSO, "gso"),
        (ETHTOOL_SGRO, "gro"),
        (ETHTOOL_SSG, "sg"),
        (ETHTOOL_STXCSUM, "tx-checksumming"),
    ] {
        let mut val = EthtoolValue { cmd, data: 0 };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: (&mut val as *mut EthtoolValue).cast(),
            _pad: [0; 16],
        };
        req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
        // SAFETY: req points to a valid ifreq whose data points to a valid
        // ethtool_value, both alive for the duration of the call.
        let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
        if rc != 0 {
            return Err(Error::last_os(format!(
                "turning off {what} offload on interface {ifname}"
            )));
        }
    }
    Ok(())
}
