//! What the client tells the server about its host: name, address, subnet, free space.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::Path;

use branchline_wire::validate::Subnet;

/// The host's name, or `unknown-host` if it cannot be read.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success
    // when the name fits, and we force a terminator at the end regardless.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len() - 1);
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_owned();
    if name.is_empty() {
        "unknown-host".into()
    } else {
        name
    }
}

/// The local address this host uses to reach `server`: `bind` itself when it is a
/// specific address, otherwise the one the routing table picks (no packet is sent).
pub fn local_address(bind: IpAddr, server: SocketAddr) -> IpAddr {
    if !bind.is_unspecified() {
        return bind;
    }
    let probe = match server {
        SocketAddr::V4(_) => UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)),
    };
    probe
        .and_then(|s| s.connect(server).and_then(|_| s.local_addr()))
        .map(|a| a.ip())
        .unwrap_or(bind)
}

fn prefix_of_mask(mask: &[u8]) -> u8 {
    mask.iter().map(|b| b.count_ones() as u8).sum()
}

/// The subnet of `addr` from the interface that carries it; a host route (/32, /128)
/// when no interface does.
pub fn subnet_of(addr: IpAddr) -> Subnet {
    let host = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let mut prefix = host;
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `ifap` with a list we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut ifap) == 0 {
            let mut cur = ifap;
            while !cur.is_null() {
                let ifa = &*cur;
                if !ifa.ifa_addr.is_null() && !ifa.ifa_netmask.is_null() {
                    match (i32::from((*ifa.ifa_addr).sa_family), addr) {
                        (libc::AF_INET, IpAddr::V4(want)) => {
                            let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                            let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
                            let have = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                            let mask = u32::from_be(m.sin_addr.s_addr).to_be_bytes();
                            let p = prefix_of_mask(&mask);
                            if have == want
                                || (ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0
                                    && Subnet::of(have.into(), p).contains(addr))
                            {
                                prefix = p;
                                break;
                            }
                        }
                        (libc::AF_INET6, IpAddr::V6(want)) => {
                            let a = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                            let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in6);
                            if Ipv6Addr::from(a.sin6_addr.s6_addr) == want {
                                prefix = prefix_of_mask(&m.sin6_addr.s6_addr);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                cur = ifa.ifa_next;
            }
            libc::freeifaddrs(ifap);
        }
    }
    Subnet::of(addr, prefix)
}

/// Bytes available to this user on the file system holding `path`.
pub fn free_space(path: &Path) -> Option<u64> {
    branchline_store::storage::statvfs(path)
        .ok()
        .map(|s| s.available)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_alias_is_in_the_loopback_subnet() {
        // Every 127.x address is carried by `lo` (127.0.0.1/8).
        let s = subnet_of("127.45.6.7".parse().unwrap());
        assert_eq!(s.to_string(), "127.0.0.0/8");
    }

    #[test]
    fn unknown_address_is_a_host_route() {
        let s = subnet_of("192.0.2.55".parse().unwrap());
        assert_eq!(s.to_string(), "192.0.2.55/32");
    }

    #[test]
    fn specific_bind_is_reported_as_is() {
        let ip: IpAddr = "127.9.9.9".parse().unwrap();
        assert_eq!(local_address(ip, "127.0.0.1:34323".parse().unwrap()), ip);
        let picked = local_address(
            "0.0.0.0".parse().unwrap(),
            "127.0.0.1:34323".parse().unwrap(),
        );
        assert!(picked.is_loopback(), "{picked}");
    }

    #[test]
    fn hostname_and_free_space_are_readable() {
        assert!(!hostname().is_empty());
        assert!(free_space(Path::new("/")).is_some());
        assert!(free_space(Path::new("/nonexistent/path")).is_none());
    }
}
