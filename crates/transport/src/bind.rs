//! Binding a node's UDP ports, with errors that say which port and what to do, and the
//! listener for ports whose protocol this build does not serve yet.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::UdpSocket;

use crate::counters::{Counters, DropReason};

/// A port that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot bind UDP {addr} ({name}): {source}{hint}",
    hint = hint(source)
)]
pub struct BindError {
    /// The address and port asked for.
    pub addr: SocketAddr,
    /// The port's name in the port table (e.g. `server.small_request`).
    pub name: String,
    /// What the OS said.
    pub source: std::io::Error,
}

fn hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " - another process (another Branchline node?) already uses it; give each node on one host its own --bind address, or move the port with --port"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            " - that address is not on this host; choose one of its addresses with --bind"
        }
        std::io::ErrorKind::PermissionDenied => " - this user may not bind that port",
        _ => "",
    }
}

/// Binds UDP `ip:port`, naming the port (`name`, e.g. `server.small_request`) on error.
pub async fn bind_udp(ip: IpAddr, port: u16, name: &str) -> Result<UdpSocket, BindError> {
    let addr = SocketAddr::new(ip, port);
    UdpSocket::bind(addr).await.map_err(|source| BindError {
        addr,
        name: name.to_owned(),
        source,
    })
}

/// Receive buffer asked for on small-message sockets: room for a burst of thousands of
/// datagrams while the receive loop is busy (the kernel default, about 208 KiB, lost 1,686
/// of 10,000 datagrams sent at 20k/s).
pub const SMALL_RECV_BUFFER: usize = 4 << 20;

#[allow(unsafe_code)] // getsockopt has no safe wrapper in std
fn sockopt_int(fd: i32, opt: i32) -> std::io::Result<usize> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket; `v` and `len` are valid for writes of their size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v.max(0) as usize)
}

#[allow(unsafe_code)] // setsockopt has no safe wrapper in std
fn set_sockopt_int(fd: i32, opt: i32, value: usize) -> std::io::Result<()> {
    let v = value.min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: `fd` is an open socket; `v` is a valid c_int for the call's duration.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Asks for a receive buffer of at least `bytes` on `socket`: `SO_RCVBUF`, and when the
/// kernel caps that (`net.core.rmem_max`), `SO_RCVBUFFORCE`, which root (CAP_NET_ADMIN)
/// may use beyond the cap. Returns the size the kernel reports (`SO_RCVBUF`; Linux counts
/// its bookkeeping too and reports twice the size asked for).
pub fn enlarge_receive_buffer(socket: &UdpSocket, bytes: usize) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let before = sockopt_int(fd, libc::SO_RCVBUF)?;
    if before >= bytes {
        return Ok(before);
    }
    set_sockopt_int(fd, libc::SO_RCVBUF, bytes)?;
    let got = sockopt_int(fd, libc::SO_RCVBUF)?;
    if got >= bytes {
        return Ok(got);
    }
    // Capped by rmem_max: only root may go beyond it. Failing is not an error.
    let _ = set_sockopt_int(fd, libc::SO_RCVBUFFORCE, bytes);
    sockopt_int(fd, libc::SO_RCVBUF)
}

/// Binds a small-message port like [`bind_udp`] and gives it a receive buffer of at least
/// [`SMALL_RECV_BUFFER`], logging the size the kernel granted (a warning, with the fix,
/// when it is smaller).
pub async fn bind_small(ip: IpAddr, port: u16, name: &str) -> Result<UdpSocket, BindError> {
    let socket = bind_udp(ip, port, name).await?;
    match enlarge_receive_buffer(&socket, SMALL_RECV_BUFFER) {
        Ok(n) if n >= SMALL_RECV_BUFFER => {
            tracing::info!(
                port = name,
                receive_buffer_bytes = n,
                "small-message socket bound"
            );
        }
        Ok(n) => tracing::warn!(
            port = name,
            receive_buffer_bytes = n,
            wanted = SMALL_RECV_BUFFER,
            "the kernel capped this socket's receive buffer, so a burst of datagrams may be lost: run as root, or raise net.core.rmem_max (sysctl -w net.core.rmem_max=4194304)"
        ),
        Err(e) => tracing::warn!(port = name, error = %e, "cannot size the receive buffer"),
    }
    Ok(socket)
}

/// Holds a port whose protocol comes in a later version: it stays bound (so the firewall
/// contract and port conflicts show up now), and whatever arrives is counted and dropped.
pub async fn serve_reserved(socket: UdpSocket, counters: Arc<Counters>) {
    let mut buf = vec![0u8; 2048];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok(_) => counters.count(DropReason::ReservedPort),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(e) => {
                tracing::warn!(error = %e, "reserved port listener stopped");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_use_names_the_port_and_the_fix() {
        let a = bind_udp("127.0.0.1".parse().unwrap(), 0, "x")
            .await
            .unwrap();
        let port = a.local_addr().unwrap().port();
        let err = bind_udp("127.0.0.1".parse().unwrap(), port, "server.small_request")
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("server.small_request"), "{msg}");
        assert!(msg.contains("--bind"), "{msg}");
    }

    #[tokio::test]
    #[allow(unsafe_code)] // geteuid
    async fn small_message_sockets_get_a_large_receive_buffer() {
        let s = bind_small("127.0.0.1".parse().unwrap(), 0, "server.small_request")
            .await
            .unwrap();
        let granted = enlarge_receive_buffer(&s, SMALL_RECV_BUFFER).unwrap();
        use std::os::fd::AsRawFd;
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        let is_root = unsafe { libc::geteuid() } == 0;
        if is_root || rmem_max >= SMALL_RECV_BUFFER {
            assert!(granted >= SMALL_RECV_BUFFER, "granted {granted}");
        } else {
            // Capped by the kernel for this user: at least what the cap allows.
            assert!(
                granted >= rmem_max.min(SMALL_RECV_BUFFER),
                "granted {granted}"
            );
        }
        assert_eq!(
            granted,
            sockopt_int(s.as_raw_fd(), libc::SO_RCVBUF).unwrap()
        );
    }

    #[tokio::test]
    async fn reserved_port_counts_what_arrives() {
        let s = bind_udp("127.0.0.1".parse().unwrap(), 0, "r")
            .await
            .unwrap();
        let addr = s.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        tokio::spawn(serve_reserved(s, counters.clone()));
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for _ in 0..3 {
            tx.send_to(b"hello", addr).await.unwrap();
        }
        for _ in 0..200 {
            if counters.get(DropReason::ReservedPort) == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(counters.get(DropReason::ReservedPort), 3);
    }
}
