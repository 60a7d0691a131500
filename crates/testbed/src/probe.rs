//! Small probes between hosts: UDP round-trip times and subnet broadcast
//! reach. They run as threads inside the hosts' namespaces, bounded in
//! count and time.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::testbed::Testbed;

/// Round-trip times of a UDP echo exchange.
#[derive(Clone, Debug, PartialEq)]
pub struct RttStats {
    /// Probes answered.
    pub answered: usize,
    /// Probes sent.
    pub sent: usize,
    /// Smallest round trip.
    pub min: Duration,
    /// Median round trip.
    pub median: Duration,
    /// Largest round trip.
    pub max: Duration,
}

/// Sends `count` UDP probes (one at a time, each waiting up to `timeout`)
/// from `from` to an echo responder started in `to` on `port`, and returns
/// the round-trip times.
pub fn udp_rtt(
    tb: &Testbed,
    from: &str,
    to: &str,
    port: u16,
    count: usize,
    timeout: Duration,
) -> Result<RttStats> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    let window = timeout * (count as u32 + 2) + Duration::from_secs(2);
    let echo = tb.spawn_in(to, move || -> Result<()> {
        let s = match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)) {
            Ok(s) => s,
            Err(e) => {
                let _ = ready_tx.send(Err(Error::io(format!("binding UDP echo port {port}"), e)));
                return Ok(());
            }
        };
        let _ = ready_tx.send(Ok(()));
        s.set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|e| Error::io("set_read_timeout", e))?;
        let end = Instant::now() + window;
        let mut buf = [0u8; 64];
        let mut answered = 0;
        while Instant::now() < end && answered < count {
            if let Ok((n, peer)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], peer);
                answered += 1;
            }
        }
        Ok(())
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| Error::Baseline(format!("UDP echo in {to} did not start")))??;
    let dst = SocketAddr::from((tb.host_addr(to)?, port));
    let rtts = tb.run_in(from, move || -> Result<Vec<Duration>> {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .map_err(|e| Error::io("binding UDP probe socket", e))?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| Error::io("set_read_timeout", e))?;
        let mut rtts = Vec::new();
        let mut buf = [0u8; 64];
        for i in 0..count as u32 {
            let t = Instant::now();
            s.send_to(&i.to_be_bytes(), dst)
                .map_err(|e| Error::io(format!("sending UDP probe to {dst}"), e))?;
            // Skip late answers to earlier probes.
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                if n == 4 && buf[..4] == i.to_be_bytes() {
                    rtts.push(t.elapsed());
                    break;
                }
                if t.elapsed() > timeout {
                    break;
                }
            }
        }
        Ok(rtts)
    })??;
    let _ = echo.join();
    if rtts.is_empty() {
        return Err(Error::Baseline(format!(
            "no UDP probe from {from} to {to} was answered"
        )));
    }
    let mut sorted = rtts.clone();
    sorted.sort();
    Ok(RttStats {
        answered: rtts.len(),
        sent: count,
        min: sorted[0],
        median: sorted[sorted.len() / 2],
        max: sorted[sorted.len() - 1],
    })
}

/// Sends one UDP datagram from `from` to `dst` (a broadcast address is
/// fine) on `port`, with listeners bound on `port` in every host of
/// `listeners`; returns the listeners that received it within `wait`.
pub fn broadcast_reach(
    tb: &Testbed,
    from: &str,
    dst: Ipv4Addr,
    port: u16,
    listeners: &[String],
    wait: Duration,
) -> Result<Vec<String>> {
    let mut handles = Vec::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    let token: u64 = u64::from(std::process::id()) << 32 | u64::from(port);
    for h in listeners {
        let ready = ready_tx.clone();
        let name = h.clone();
        handles.push(tb.spawn_in(h, move || -> Result<Option<String>> {
            let s = match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready.send(Err(Error::io(
                        format!("binding UDP port {port} in {name}"),
                        e,
                    )));
                    return Ok(None);
                }
            };
            let _ = ready.send(Ok(()));
            s.set_read_timeout(Some(Duration::from_millis(20)))
                .map_err(|e| Error::io("set_read_timeout", e))?;
            let end = Instant::now() + wait + Duration::from_millis(200);
            let mut buf = [0u8; 16];
            while Instant::now() < end {
                if let Ok((8, _)) = s.recv_from(&mut buf)
                    && buf[..8] == token.to_be_bytes()
                {
                    return Ok(Some(name));
                }
            }
            Ok(None)
        })?);
    }
    drop(ready_tx);
    for _ in listeners {
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| Error::Baseline("a broadcast listener did not start".into()))??;
    }
    tb.run_in(from, move || -> Result<()> {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .map_err(|e| Error::io("binding broadcast sender", e))?;
        s.set_broadcast(true)
            .map_err(|e| Error::io("setting SO_BROADCAST", e))?;
        s.send_to(&token.to_be_bytes(), (dst, port))
            .map_err(|e| Error::io(format!("sending to {dst}:{port}"), e))?;
        Ok(())
    })??;
    let mut got = Vec::new();
    for h in handles {
        match h.join() {
            Ok(r) => {
                if let Some(n) = r?? {
                    got.push(n);
                }
            }
            Err(_) => return Err(Error::Baseline("a broadcast listener panicked".into())),
        }
    }
    got.sort();
    Ok(got)
}
