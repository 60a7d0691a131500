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

fn realtime_now() -> libc::timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts
}

fn ts_diff(later: &libc::timespec, earlier: &libc::timespec) -> Option<Duration> {
    let ns = (later.tv_sec as i128 - earlier.tv_sec as i128) * 1_000_000_000
        + (later.tv_nsec as i128 - earlier.tv_nsec as i128);
    u64::try_from(ns).ok().map(Duration::from_nanos)
}

/// Builds an ICMP echo request (id left 0: a ping socket fills it in).
fn echo_request(seq: u16) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = 8; // echo request
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(b"bl-probe");
    p
}

/// Sequence number of an ICMP echo reply (as a ping socket returns it:
/// ICMP header first), or `None` for anything else.
pub fn parse_echo_reply(p: &[u8]) -> Option<u16> {
    if p.len() < 8 || p[0] != 0 || p[1] != 0 {
        return None;
    }
    Some(u16::from_be_bytes([p[6], p[7]]))
}

/// Round trips of ICMP echo (ping) from host `from` to host `to`, one at a
/// time. The target's kernel answers, and replies are stamped by the
/// sender's kernel on arrival (`SO_TIMESTAMPNS`), so neither side's thread
/// scheduling adds to the figures: they show the network path (relays,
/// queues) only. Uses an ICMP datagram socket ("ping socket").
pub fn icmp_rtt(
    tb: &Testbed,
    from: &str,
    to: &str,
    count: usize,
    timeout: Duration,
) -> Result<RttStats> {
    let dst = tb.host_addr(to)?;
    let rtts = tb.run_in(from, move || -> Result<Vec<Duration>> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: plain socket creation; the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::IPPROTO_ICMP,
            )
        };
        if fd < 0 {
            return Err(Error::last_os(
                "creating an ICMP datagram socket (is net.ipv4.ping_group_range open?)",
            ));
        }
        // SAFETY: fd is fresh and owned by nobody else.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = sock.as_raw_fd();
        let one: libc::c_int = 1;
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: valid option values of the stated sizes.
        unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        // SAFETY: sockaddr_in is plain data; all-zero is a valid start.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from(dst).to_be();
        let mut rtts = Vec::new();
        for i in 0..count {
            let seq = i as u16;
            let req = echo_request(seq);
            let sent = realtime_now();
            // SAFETY: sends from a valid buffer to a valid address.
            let rc = unsafe {
                libc::sendto(
                    raw,
                    req.as_ptr().cast(),
                    req.len(),
                    0,
                    (&sin as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(Error::last_os(format!("sending ICMP echo to {dst}")));
            }
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                let mut buf = [0u8; 128];
                let mut cbuf = [0u64; 16];
                let mut iov = libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                };
                // SAFETY: msghdr is plain data; all-zero is valid.
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = cbuf.as_mut_ptr().cast();
                msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
                // SAFETY: msg points at live buffers of the stated sizes.
                let n = unsafe { libc::recvmsg(raw, &mut msg, 0) };
                if n < 0 {
                    break; // timeout: this probe is lost
                }
                if parse_echo_reply(&buf[..n as usize]) != Some(seq) {
                    continue;
                }
                // SAFETY: walking the control messages the kernel wrote.
                let stamp = unsafe {
                    let mut c = libc::CMSG_FIRSTHDR(&msg);
                    let mut found = None;
                    while !c.is_null() {
                        if (*c).cmsg_level == libc::SOL_SOCKET
                            && (*c).cmsg_type == libc::SO_TIMESTAMPNS
                        {
                            found = Some(std::ptr::read_unaligned(
                                libc::CMSG_DATA(c).cast::<libc::timespec>(),
                            ));
                        }
                        c = libc::CMSG_NXTHDR(&msg, c);
                    }
                    found
                };
                let arrived = stamp.unwrap_or_else(realtime_now);
                if let Some(d) = ts_diff(&arrived, &sent) {
                    rtts.push(d);
                }
                break;
            }
        }
        Ok(rtts)
    })??;
    if rtts.is_empty() {
        return Err(Error::Baseline(format!(
            "no ICMP echo from {from} to {to} was answered"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_packets() {
        let req = echo_request(0x1234);
        assert_eq!(req[0], 8);
        let mut reply = req;
        reply[0] = 0;
        assert_eq!(parse_echo_reply(&reply), Some(0x1234));
        assert_eq!(parse_echo_reply(&req), None);
        assert_eq!(parse_echo_reply(&reply[..7]), None);
    }

    #[test]
    fn time_differences() {
        let a = libc::timespec {
            tv_sec: 10,
            tv_nsec: 900_000_000,
        };
        let b = libc::timespec {
            tv_sec: 11,
            tv_nsec: 100_000_000,
        };
        assert_eq!(ts_diff(&b, &a), Some(Duration::from_millis(200)));
        assert_eq!(ts_diff(&a, &b), None);
    }
}
