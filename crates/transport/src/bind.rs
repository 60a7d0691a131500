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
    pub addr: SocketAddr,
    pub name: String,
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
