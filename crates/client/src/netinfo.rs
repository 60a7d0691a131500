//! What the client tells the server about its host: name, address, subnet, free space.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::Path;

use branchline_wire::validate::Subnet;

/// The host's name, or `unknown-host` if it cannot be read.
pub fn hostname() -> String {
    crate::platform::hostname()
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

/// The subnet of `addr` from the interface that carries it; a host route (/32, /128)
/// when no interface does.
pub fn subnet_of(addr: IpAddr) -> Subnet {
    let host = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    Subnet::of(
        addr,
        crate::platform::interface_prefix(addr).unwrap_or(host),
    )
}

/// Bytes available to this user on the file system holding `path`.
pub fn free_space(path: &Path) -> Option<u64> {
    crate::platform::free_space(path)
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
