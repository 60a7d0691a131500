//! TCP bulk transfer between two hosts: calibrates a link, and serves as a
//! competing flow with a chosen congestion control (cubic, bbr, reno) for
//! yield measurements.
//!
//! The receiver listens in one host, the sender connects from another and
//! writes zeros until a byte count or a duration is reached, or until
//! [`TcpFlow::stop`]. The receiver samples its progress every
//! [`SAMPLE_INTERVAL`] so rates over time can be plotted, and both sides
//! read `TCP_INFO` at the end so wire bytes can be checked against link
//! counters.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::testbed::Testbed;

/// How often the receiver records its progress.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// When a flow ends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Until {
    /// After this many payload bytes.
    Bytes(u64),
    /// After this long (from connect).
    Duration(Duration),
    /// Only when [`TcpFlow::stop`] is called (bounded by a 10-minute cap).
    Stopped,
}

/// Options of a TCP bulk flow.
#[derive(Clone, Debug)]
pub struct TcpOptions {
    /// When the sender stops.
    pub until: Until,
    /// Congestion control for the sender (`cubic`, `bbr`, `reno`), or the
    /// namespace default (cubic) when `None`.
    pub congestion: Option<String>,
    /// Receiver's listening port (default 5001); give concurrent flows to
    /// the same receiving host different ports.
    pub port: u16,
    /// Leading time left out of [`TcpReport::steady_mbit`] (slow start).
    pub warmup: Duration,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            until: Until::Bytes(8 << 20),
            congestion: None,
            port: 5001,
            warmup: Duration::from_millis(800),
        }
    }
}

/// The kernel's `struct tcp_info` (linux/tcp.h) up to `tcpi_snd_wnd`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpInfo {
    /// Connection state.
    pub state: u8,
    /// Congestion-avoidance state.
    pub ca_state: u8,
    /// Retransmits of the current segment.
    pub retransmits: u8,
    /// Zero-window probes.
    pub probes: u8,
    /// RTO backoff.
    pub backoff: u8,
    /// TCPI_OPT_* flags (1 = timestamps).
    pub options: u8,
    /// Window scales (4 bits each).
    pub wscale: u8,
    /// App-limited and fastopen bits.
    pub flags: u8,
    /// Retransmission timeout (µs).
    pub rto: u32,
    /// Delayed-ACK timeout (µs).
    pub ato: u32,
    /// Send MSS (bytes).
    pub snd_mss: u32,
    /// Receive MSS estimate (bytes).
    pub rcv_mss: u32,
    /// Unacknowledged segments.
    pub unacked: u32,
    /// SACKed segments.
    pub sacked: u32,
    /// Lost segments.
    pub lost: u32,
    /// Retransmitted, unacknowledged segments.
    pub retrans: u32,
    /// Unused.
    pub fackets: u32,
    /// Since last data sent (ms).
    pub last_data_sent: u32,
    /// Unused.
    pub last_ack_sent: u32,
    /// Since last data received (ms).
    pub last_data_recv: u32,
    /// Since last ACK received (ms).
    pub last_ack_recv: u32,
    /// Path MTU (bytes).
    pub pmtu: u32,
    /// Receive slow-start threshold.
    pub rcv_ssthresh: u32,
    /// Smoothed RTT (µs).
    pub rtt: u32,
    /// RTT variance (µs).
    pub rttvar: u32,
    /// Send slow-start threshold (segments).
    pub snd_ssthresh: u32,
    /// Congestion window (segments).
    pub snd_cwnd: u32,
    /// Advertised MSS (bytes).
    pub advmss: u32,
    /// Reordering metric.
    pub reordering: u32,
    /// Receiver-side RTT estimate (µs).
    pub rcv_rtt: u32,
    /// Receive buffer space.
    pub rcv_space: u32,
    /// Total retransmitted segments.
    pub total_retrans: u32,
    /// Pacing rate (bytes/s).
    pub pacing_rate: u64,
    /// Max pacing rate (bytes/s).
    pub max_pacing_rate: u64,
    /// Payload bytes acknowledged.
    pub bytes_acked: u64,
    /// Payload bytes received (unique).
    pub bytes_received: u64,
    /// Segments sent, all kinds.
    pub segs_out: u32,
    /// Segments received, all kinds.
    pub segs_in: u32,
    /// Bytes not yet sent.
    pub notsent_bytes: u32,
    /// Minimum RTT (µs).
    pub min_rtt: u32,
    /// Data segments received.
    pub data_segs_in: u32,
    /// Data segments sent.
    pub data_segs_out: u32,
    /// Delivery rate (bytes/s).
    pub delivery_rate: u64,
    /// Time busy sending (µs).
    pub busy_time: u64,
    /// Time limited by the receive window (µs).
    pub rwnd_limited: u64,
    /// Time limited by the send buffer (µs).
    pub sndbuf_limited: u64,
    /// Segments delivered.
    pub delivered: u32,
    /// Segments delivered with CE.
    pub delivered_ce: u32,
    /// Payload bytes sent, retransmissions included.
    pub bytes_sent: u64,
    /// Payload bytes retransmitted.
    pub bytes_retrans: u64,
    /// DSACKed duplicates.
    pub dsack_dups: u32,
    /// Reordering events.
    pub reord_seen: u32,
    /// Out-of-order packets received.
    pub rcv_ooopack: u32,
    /// Peer's receive window (bytes).
    pub snd_wnd: u32,
}

impl TcpInfo {
    /// Bytes of headers per segment on an Ethernet wire: Ethernet 14, IPv4
    /// 20, TCP 20, plus 12 for the timestamp option when negotiated.
    pub fn wire_header_bytes(&self) -> u64 {
        14 + 20 + 20 + if self.options & 1 != 0 { 12 } else { 0 }
    }
}

/// Reads `TCP_INFO` of a connected socket.
pub fn tcp_info(s: &TcpStream) -> Result<TcpInfo> {
    let mut info = TcpInfo::default();
    let mut len = std::mem::size_of::<TcpInfo>() as libc::socklen_t;
    // SAFETY: info is a valid, writable repr(C) buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut TcpInfo).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(Error::last_os("reading TCP_INFO"));
    }
    Ok(info)
}

/// Sets the congestion control of a socket.
pub fn set_congestion(s: &TcpStream, name: &str) -> Result<()> {
    // SAFETY: passes a valid buffer of the stated length.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(Error::last_os(format!(
            "setting TCP congestion control {name:?} (see /proc/sys/net/ipv4/tcp_available_congestion_control)"
        )));
    }
    Ok(())
}

/// What a finished flow measured.
#[derive(Clone, Debug)]
pub struct TcpReport {
    /// Payload bytes the receiver got.
    pub bytes: u64,
    /// From the first to the last payload byte at the receiver.
    pub elapsed: Duration,
    /// Payload rate over `elapsed`, Mbit/s (10^6 bit/s).
    pub goodput_mbit: f64,
    /// Payload rate after the warm-up, Mbit/s.
    pub steady_mbit: f64,
    /// Receiver progress: (seconds since first byte, cumulative bytes).
    pub samples: Vec<(f64, u64)>,
    /// Sender's TCP_INFO at the end.
    pub sender: TcpInfo,
    /// Receiver's TCP_INFO at the end.
    pub receiver: TcpInfo,
    /// Congestion control used by the sender.
    pub congestion: String,
}

impl TcpReport {
    /// Estimated Ethernet bytes of the data direction: payload plus headers
    /// of every segment the receiver got.
    pub fn wire_bytes_data_direction(&self) -> u64 {
        self.bytes + u64::from(self.receiver.segs_in) * self.receiver.wire_header_bytes()
    }
}

struct RecvResult {
    bytes: u64,
    elapsed: Duration,
    steady_mbit: f64,
    samples: Vec<(f64, u64)>,
    info: TcpInfo,
}

struct SendResult {
    info: TcpInfo,
    congestion: String,
}

/// A running flow; [`TcpFlow::wait`] for its report.
pub struct TcpFlow {
    stop: Arc<AtomicBool>,
    recv: JoinHandle<Result<Result<RecvResult>>>,
    send: JoinHandle<Result<Result<SendResult>>>,
}

/// Longest any flow runs, whatever its options say.
pub const MAX_FLOW_TIME: Duration = Duration::from_secs(600);

impl TcpFlow {
    /// Starts a flow from host `from` to host `to`. Returns once the
    /// receiver listens and the sender thread has started.
    pub fn start(tb: &Testbed, from: &str, to: &str, opts: &TcpOptions) -> Result<TcpFlow> {
        let dst = SocketAddr::from((tb.host_addr(to)?, opts.port));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let port = opts.port;
        let warmup = opts.warmup;
        let stop_r = stop.clone();
        let recv = tb.spawn_in(to, move || receive(port, warmup, &stop_r, ready_tx))?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Error::Baseline(format!(
                    "the TCP receiver in {to} did not start listening"
                )));
            }
        }
        let (until, cc, stop_s) = (opts.until, opts.congestion.clone(), stop.clone());
        let send = tb.spawn_in(from, move || send(dst, until, cc, &stop_s))?;
        Ok(TcpFlow { stop, recv, send })
    }

    /// Asks the sender to stop now (for [`Until::Stopped`] flows, or early).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for both ends and returns the report.
    pub fn wait(self) -> Result<TcpReport> {
        let join = |r: std::thread::Result<Result<Result<SendResult>>>| match r {
            Ok(x) => x?,
            Err(_) => Err(Error::Baseline("TCP sender thread panicked".into())),
        };
        let s = join(self.send.join());
        if s.is_err() {
            self.stop.store(true, Ordering::SeqCst);
        }
        let r = match self.recv.join() {
            Ok(x) => x?,
            Err(_) => Err(Error::Baseline("TCP receiver thread panicked".into())),
        };
        let (s, r) = (s?, r?);
        let secs = r.elapsed.as_secs_f64().max(1e-9);
        Ok(TcpReport {
            bytes: r.bytes,
            elapsed: r.elapsed,
            goodput_mbit: r.bytes as f64 * 8.0 / secs / 1e6,
            steady_mbit: r.steady_mbit,
            samples: r.samples,
            sender: s.info,
            receiver: r.info,
            congestion: s.congestion,
        })
    }
}

/// Runs one flow to completion: see [`TcpFlow`].
pub fn tcp_bulk(tb: &Testbed, from: &str, to: &str, opts: &TcpOptions) -> Result<TcpReport> {
    TcpFlow::start(tb, from, to, opts)?.wait()
}

fn receive(
    port: u16,
    warmup: Duration,
    stop: &AtomicBool,
    ready: std::sync::mpsc::Sender<Result<()>>,
) -> Result<RecvResult> {
    let l = match TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)) {
        Ok(l) => l,
        Err(e) => {
            let err = Error::io(format!("TCP receiver: listening on port {port}"), e);
            let _ = ready.send(Err(Error::Baseline(err.to_string())));
            return Err(err);
        }
    };
    let _ = ready.send(Ok(()));
    l.set_nonblocking(true)
        .map_err(|e| Error::io("TCP receiver: set_nonblocking", e))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut s = loop {
        match l.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline || stop.load(Ordering::Relaxed) {
                    return Err(Error::Baseline(
                        "TCP receiver: no connection within 15 s".into(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(Error::io("TCP receiver: accept", e)),
        }
    };
    s.set_nonblocking(false)
        .map_err(|e| Error::io("TCP receiver: set_blocking", e))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| Error::io("TCP receiver: set_read_timeout", e))?;
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut samples = Vec::new();
    let mut next_sample = SAMPLE_INTERVAL;
    let mut at_warmup: Option<(Instant, u64)> = None;
    loop {
        let n = s
            .read(&mut buf)
            .map_err(|e| Error::io("TCP receiver: read (sender stalled for 15 s?)", e))?;
        let now = Instant::now();
        if n == 0 {
            break;
        }
        let t0 = *first.get_or_insert(now);
        total += n as u64;
        last = now;
        let since = now - t0;
        while since >= next_sample {
            samples.push((next_sample.as_secs_f64(), total));
            next_sample += SAMPLE_INTERVAL;
        }
        if at_warmup.is_none() && since >= warmup {
            at_warmup = Some((now, total));
        }
    }
    let info = tcp_info(&s)?;
    let t0 = first.unwrap_or(last);
    let elapsed = last - t0;
    samples.push((elapsed.as_secs_f64(), total));
    let steady_mbit = match at_warmup {
        Some((tw, bw)) if last > tw => (total - bw) as f64 * 8.0 / (last - tw).as_secs_f64() / 1e6,
        _ => total as f64 * 8.0 / elapsed.as_secs_f64().max(1e-9) / 1e6,
    };
    Ok(RecvResult {
        bytes: total,
        elapsed,
        steady_mbit,
        samples,
        info,
    })
}

fn send(
    dst: SocketAddr,
    until: Until,
    cc: Option<String>,
    stop: &AtomicBool,
) -> Result<SendResult> {
    let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(10))
        .map_err(|e| Error::io(format!("TCP sender: connecting to {dst}"), e))?;
    if let Some(cc) = &cc {
        set_congestion(&s, cc)?;
    }
    let congestion = current_congestion(&s).unwrap_or_else(|| "?".into());
    s.set_write_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| Error::io("TCP sender: set_write_timeout", e))?;
    let buf = vec![0u8; 64 << 10];
    let start = Instant::now();
    let mut sent = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) || start.elapsed() > MAX_FLOW_TIME {
            break;
        }
        let chunk = match until {
            Until::Bytes(b) => {
                if sent >= b {
                    break;
                }
                (b - sent).min(buf.len() as u64) as usize
            }
            Until::Duration(d) => {
                if start.elapsed() >= d {
                    break;
                }
                buf.len()
            }
            Until::Stopped => buf.len(),
        };
        let n = s
            .write(&buf[..chunk])
            .map_err(|e| Error::io(format!("TCP sender: writing to {dst}"), e))?;
        sent += n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| Error::io("TCP sender: shutdown", e))?;
    // Wait for the receiver to close: everything is then acknowledged.
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| Error::io("TCP sender: set_read_timeout", e))?;
    let mut sink = [0u8; 64];
    let _ = s.read(&mut sink);
    let info = tcp_info(&s)?;
    Ok(SendResult { info, congestion })
}

fn current_congestion(s: &TcpStream) -> Option<String> {
    let mut buf = [0u8; 32];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf is writable for `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    let end = buf[..len as usize]
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(len as usize);
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_info_layout_matches_the_kernel() {
        // linux/tcp.h: tcpi_snd_wnd ends at byte 232.
        assert_eq!(std::mem::size_of::<TcpInfo>(), 232);
        assert_eq!(std::mem::offset_of!(TcpInfo, pacing_rate), 104);
        assert_eq!(std::mem::offset_of!(TcpInfo, segs_out), 136);
        assert_eq!(std::mem::offset_of!(TcpInfo, bytes_sent), 200);
    }

    #[test]
    fn tcp_info_reads_on_loopback() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(&[7u8; 10_000]).unwrap();
        let mut got = vec![0u8; 10_000];
        s.read_exact(&mut got).unwrap();
        let rx = tcp_info(&s).unwrap();
        assert_eq!(rx.bytes_received, 10_000);
        assert!(rx.segs_in >= 1);
        set_congestion(&c, "reno").unwrap();
        assert_eq!(current_congestion(&c).as_deref(), Some("reno"));
        assert!(set_congestion(&c, "no-such-cc").is_err());
    }
}
