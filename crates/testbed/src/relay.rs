//! The delay relay: a userspace layer-2 forwarder that adds a fixed
//! propagation delay to every frame between two interfaces.
//!
//! This kernel has no netem, so a WAN link's propagation delay is made here.
//! Two packet sockets (`AF_PACKET`, `SOCK_RAW`, all protocols) are bound to
//! interfaces A and B. Each frame read from A is written to B `delay` later,
//! and each frame from B to A. Frames keep their order per direction (the
//! delay is constant, so a FIFO is the timer queue). The interfaces that
//! transmit *towards* the relay must have their offloads off (see
//! [`crate::offload`]) so that frames arrive segmented and checksummed.
//!
//! The logic ([`DelayLine`]) is a plain value with time passed in, tested
//! without sockets. The I/O loop ([`Relay`]) runs on its own OS thread:
//! `ppoll` until the next frame is due (nanosecond timeout), `recvmmsg` in
//! batches stamped with `CLOCK_MONOTONIC`, `sendmmsg` of everything due. It
//! asks for `SCHED_FIFO` priority so that compilers on a busy machine do not
//! delay it (it sleeps between frames, so it never hogs a core), and it stops
//! at once through an eventfd when its [`Relay`] handle is stopped or
//! dropped.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Most bytes a relay holds in flight per direction before it drops frames
/// (32 MiB: 1 Gbit/s for over 250 ms).
pub const DEFAULT_MAX_BYTES_IN_FLIGHT: usize = 32 << 20;

/// Largest frame the relay carries, in bytes (Ethernet with 1500-byte MTU
/// and a VLAN tag, with room to spare). Longer frames are dropped and counted.
pub const MAX_FRAME: usize = 4096;

const BATCH: usize = 32;

/// Labels of relay threads that are running in this process.
static LIVE_RELAYS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Labels (`NETNS:A<->B`) of the relay threads running in this process, to
/// check that teardown stopped them.
pub fn live_relays() -> Vec<String> {
    LIVE_RELAYS.lock().map(|l| l.clone()).unwrap_or_default()
}

/// Removes a relay's label from [`LIVE_RELAYS`] when its thread ends,
/// however it ends.
struct LiveGuard(String);

impl LiveGuard {
    fn new(label: String) -> LiveGuard {
        if let Ok(mut l) = LIVE_RELAYS.lock() {
            l.push(label.clone());
        }
        LiveGuard(label)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if let Ok(mut l) = LIVE_RELAYS.lock()
            && let Some(i) = l.iter().position(|x| x == &self.0)
        {
            l.swap_remove(i);
        }
    }
}

/// A fixed-delay FIFO of frames; time is nanoseconds on any monotonic clock
/// the caller chooses.
#[derive(Debug)]
pub struct DelayLine {
    delay_ns: u64,
    max_bytes: usize,
    bytes: usize,
    queue: VecDeque<(u64, Vec<u8>)>,
    spare: Vec<Vec<u8>>,
    dropped_full: u64,
}

impl DelayLine {
    /// A line that holds each frame `delay_ns` nanoseconds and at most
    /// `max_bytes` bytes in total.
    pub fn new(delay_ns: u64, max_bytes: usize) -> DelayLine {
        DelayLine {
            delay_ns,
            max_bytes,
            bytes: 0,
            queue: VecDeque::new(),
            spare: Vec::new(),
            dropped_full: 0,
        }
    }

    /// Adds a frame that arrived at `now_ns`. Returns false (and counts a
    /// drop) when the line is full.
    pub fn push(&mut self, now_ns: u64, frame: &[u8]) -> bool {
        if self.bytes + frame.len() > self.max_bytes {
            self.dropped_full += 1;
            return false;
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(frame);
        self.bytes += buf.len();
        // Arrivals are stamped by one monotonic clock, so due times do not
        // decrease; clamp anyway so a misbehaving caller cannot reorder.
        let due = now_ns.saturating_add(self.delay_ns);
        let due = self.queue.back().map_or(due, |(d, _)| due.max(*d));
        self.queue.push_back((due, buf));
        true
    }

    /// When the oldest frame is due, if any.
    pub fn next_due(&self) -> Option<u64> {
        self.queue.front().map(|(d, _)| *d)
    }

    /// Takes the oldest frame if it is due at `now_ns`.
    pub fn pop_due(&mut self, now_ns: u64) -> Option<Vec<u8>> {
        match self.queue.front() {
            Some((d, _)) if *d <= now_ns => {
                let (_, f) = self.queue.pop_front()?;
                self.bytes -= f.len();
                Some(f)
            }
            _ => None,
        }
    }

    /// Returns a frame buffer for reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.spare.len() < 1024 {
            self.spare.push(buf);
        }
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no frame waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Frames dropped because the line was full.
    pub fn dropped_full(&self) -> u64 {
        self.dropped_full
    }
}

/// Counters of a running relay, readable at any time.
#[derive(Debug, Default)]
pub struct RelayCounters {
    /// Frames forwarded from A to B.
    pub frames_a_to_b: AtomicU64,
    /// Bytes (whole frames) forwarded from A to B.
    pub bytes_a_to_b: AtomicU64,
    /// Frames forwarded from B to A.
    pub frames_b_to_a: AtomicU64,
    /// Bytes (whole frames) forwarded from B to A.
    pub bytes_b_to_a: AtomicU64,
    /// Frames dropped because a delay line was full.
    pub dropped_full: AtomicU64,
    /// Frames the kernel refused on send (queue full, interface down).
    pub dropped_send: AtomicU64,
    /// Frames longer than [`MAX_FRAME`] (offloads left on?), dropped.
    pub dropped_oversize: AtomicU64,
}

/// A snapshot of [`RelayCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Frames forwarded from A to B.
    pub frames_a_to_b: u64,
    /// Bytes forwarded from A to B.
    pub bytes_a_to_b: u64,
    /// Frames forwarded from B to A.
    pub frames_b_to_a: u64,
    /// Bytes forwarded from B to A.
    pub bytes_b_to_a: u64,
    /// Frames dropped because a delay line was full.
    pub dropped_full: u64,
    /// Frames the kernel refused on send.
    pub dropped_send: u64,
    /// Oversized frames dropped.
    pub dropped_oversize: u64,
}

impl RelayCounters {
    /// Reads all counters.
    pub fn snapshot(&self) -> RelayStats {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RelayStats {
            frames_a_to_b: r(&self.frames_a_to_b),
            bytes_a_to_b: r(&self.bytes_a_to_b),
            frames_b_to_a: r(&self.frames_b_to_a),
            bytes_b_to_a: r(&self.bytes_b_to_a),
            dropped_full: r(&self.dropped_full),
            dropped_send: r(&self.dropped_send),
            dropped_oversize: r(&self.dropped_oversize),
        }
    }
}

/// A running relay thread. Stopping or dropping it stops the thread and
/// closes its sockets.
#[derive(Debug)]
pub struct Relay {
    label: String,
    wake: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    counters: Arc<RelayCounters>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Relay {
    /// Starts a relay between interfaces `a` and `b` of network namespace
    /// `netns` (or of the caller's namespace if `None`), delaying each frame
    /// by `delay` in each direction. Returns once both sockets are bound.
    pub fn start(netns: Option<&str>, a: &str, b: &str, delay: Duration) -> Result<Relay> {
        // SAFETY: eventfd creation; the fd is owned below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(Error::last_os("creating the relay's eventfd"));
        }
        // SAFETY: efd is a fresh descriptor nobody else owns.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(RelayCounters::default());
        let label = format!("{}:{a}<->{b}", netns.unwrap_or("-"));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let (ns, a2, b2) = (netns.map(str::to_string), a.to_string(), b.to_string());
        let (wake2, stop2, counters2) = (wake.clone(), stop.clone(), counters.clone());
        let label2 = label.clone();
        let thread = std::thread::Builder::new()
            .name(format!("bl-relay-{a}"))
            .spawn(move || -> Result<()> {
                let _live = LiveGuard::new(label2);
                let setup = (|| -> Result<(OwnedFd, OwnedFd)> {
                    if let Some(ns) = &ns {
                        crate::netns::enter_netns(ns)?;
                    }
                    Ok((open_packet_socket(&a2)?, open_packet_socket(&b2)?))
                })();
                let (sa, sb) = match setup {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        let _ = ready_tx.send(Err(e));
                        return Err(Error::Topology(msg));
                    }
                };
                set_realtime();
                run_loop(&sa, &sb, wake2.as_raw_fd(), &stop2, &counters2, delay)
            })
            .map_err(|e| Error::io("spawning the relay thread", e))?;
        let relay = Relay {
            label,
            wake,
            stop,
            counters,
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(relay),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Topology(
                "the relay thread died while starting".into(),
            )),
        }
    }

    /// What this relay connects, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Current counters.
    pub fn stats(&self) -> RelayStats {
        self.counters.snapshot()
    }

    /// Whether the relay thread is still running.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the thread, closes the sockets and returns the final counters,
    /// or the error that ended the loop early.
    pub fn stop(mut self) -> Result<RelayStats> {
        self.stop_inner()?;
        Ok(self.counters.snapshot())
    }

    fn stop_inner(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to our eventfd.
        unsafe {
            libc::write(
                self.wake.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        match self.thread.take() {
            Some(t) => match t.join() {
                Ok(r) => r,
                Err(_) => Err(Error::Topology(format!("relay {} panicked", self.label))),
            },
            None => Ok(()),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

fn set_realtime() {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: changes only the calling thread's policy; failure is harmless
    // (the relay then runs at normal priority).
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
}

fn setsockopt_int(fd: RawFd, level: i32, opt: i32, val: i32, what: &str) -> Result<()> {
    // SAFETY: passes a pointer to a valid c_int of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&val as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(Error::last_os(what.to_string()));
    }
    Ok(())
}

/// Opens a non-blocking packet socket bound to `ifname`, seeing only frames
/// that arrive on it (not the ones sent through it).
fn open_packet_socket(ifname: &str) -> Result<OwnedFd> {
    let cname = std::ffi::CString::new(ifname)
        .map_err(|_| Error::Topology(format!("interface name {ifname:?} contains NUL")))?;
    // SAFETY: if_nametoindex reads a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(Error::last_os(format!("looking up interface {ifname}")));
    }
    // Protocol 0 at creation: receive nothing until bound to one interface.
    // SAFETY: plain socket creation; the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(Error::last_os(format!(
            "creating a packet socket for {ifname}"
        )));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = sock.as_raw_fd();
    const PACKET_IGNORE_OUTGOING: i32 = 23;
    setsockopt_int(
        raw,
        libc::SOL_PACKET,
        PACKET_IGNORE_OUTGOING,
        1,
        "setting PACKET_IGNORE_OUTGOING",
    )?;
    setsockopt_int(
        raw,
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        8 << 20,
        "setting SO_RCVBUFFORCE",
    )?;
    setsockopt_int(
        raw,
        libc::SOL_SOCKET,
        libc::SO_SNDBUFFORCE,
        8 << 20,
        "setting SO_SNDBUFFORCE",
    )?;
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: binds with a valid sockaddr_ll of the stated size.
    let rc = unsafe {
        libc::bind(
            raw,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(Error::last_os(format!(
            "binding a packet socket to {ifname}"
        )));
    }
    Ok(sock)
}

fn now_ns(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

struct RecvBatch {
    bufs: Vec<[u8; MAX_FRAME]>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    fn new() -> Box<RecvBatch> {
        let mut b = Box::new(RecvBatch {
            bufs: vec![[0u8; MAX_FRAME]; BATCH],
            iovs: Vec::with_capacity(BATCH),
            hdrs: Vec::with_capacity(BATCH),
        });
        for i in 0..BATCH {
            let p = b.bufs[i].as_mut_ptr();
            b.iovs.push(libc::iovec {
                iov_base: p.cast(),
                iov_len: MAX_FRAME,
            });
        }
        for i in 0..BATCH {
            // SAFETY: mmsghdr is plain data; all-zero is valid.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = &mut b.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            b.hdrs.push(h);
        }
        b
    }

    /// Reads up to BATCH frames; returns how many (0 when none waits).
    fn recv(&mut self, fd: RawFd) -> Result<usize> {
        for h in &mut self.hdrs {
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        loop {
            // SAFETY: hdrs/iovs/bufs are valid, pinned in a Box, and sized
            // as declared.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    self.hdrs.as_mut_ptr(),
                    BATCH as u32,
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    std::ptr::null_mut(),
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Ok(0),
                // The interface went down (teardown); nothing to read.
                Some(libc::ENETDOWN) | Some(libc::ENXIO) => return Ok(0),
                _ => return Err(Error::last_os("receiving frames in the relay")),
            }
        }
    }

    fn frame(&self, i: usize) -> Option<&[u8]> {
        let len = self.hdrs[i].msg_len as usize;
        if len > MAX_FRAME || self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            None
        } else {
            Some(&self.bufs[i][..len])
        }
    }
}

/// Sends every due frame of `line` through `fd`, in batches.
fn flush_due(
    fd: RawFd,
    line: &mut DelayLine,
    now: u64,
    frames: &AtomicU64,
    bytes: &AtomicU64,
    dropped: &AtomicU64,
) {
    let mut due: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
    loop {
        due.clear();
        while due.len() < BATCH {
            match line.pop_due(now) {
                Some(f) => due.push(f),
                None => break,
            }
        }
        if due.is_empty() {
            return;
        }
        let mut iovs: Vec<libc::iovec> = due
            .iter()
            .map(|f| libc::iovec {
                iov_base: f.as_ptr() as *mut libc::c_void,
                iov_len: f.len(),
            })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: mmsghdr is plain data; all-zero is valid.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        let mut start = 0;
        while start < hdrs.len() {
            // SAFETY: hdrs[start..] point at iovecs over live buffers.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    hdrs[start..].as_mut_ptr(),
                    (hdrs.len() - start) as u32,
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                for f in &due[start..start + n as usize] {
                    frames.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(f.len() as u64, Ordering::Relaxed);
                }
                start += n as usize;
            } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            } else {
                // Queue full (ENOBUFS/EAGAIN) or interface gone: this frame
                // is lost, as on a router with a full queue.
                dropped.fetch_add(1, Ordering::Relaxed);
                start += 1;
            }
        }
        for f in due.drain(..) {
            line.recycle(f);
        }
    }
}

fn run_loop(
    sa: &OwnedFd,
    sb: &OwnedFd,
    wake: RawFd,
    stop: &AtomicBool,
    c: &RelayCounters,
    delay: Duration,
) -> Result<()> {
    let origin = Instant::now();
    let delay_ns = delay.as_nanos() as u64;
    let mut ab = DelayLine::new(delay_ns, DEFAULT_MAX_BYTES_IN_FLIGHT);
    let mut ba = DelayLine::new(delay_ns, DEFAULT_MAX_BYTES_IN_FLIGHT);
    let mut batch = RecvBatch::new();
    let (fa, fb) = (sa.as_raw_fd(), sb.as_raw_fd());
    while !stop.load(Ordering::Relaxed) {
        // Sleep until a frame arrives, one is due, or we are told to stop.
        let now = now_ns(origin);
        let next = [ab.next_due(), ba.next_due()].into_iter().flatten().min();
        let wait_ns = next
            .map_or(200_000_000, |d| d.saturating_sub(now))
            .min(200_000_000);
        let ts = libc::timespec {
            tv_sec: (wait_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (wait_ns % 1_000_000_000) as libc::c_long,
        };
        let mut fds = [
            libc::pollfd {
                fd: fa,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: fb,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        if wait_ns > 0 {
            // SAFETY: fds and ts are valid for the call.
            let rc = unsafe { libc::ppoll(fds.as_mut_ptr(), 3, &ts, std::ptr::null()) };
            if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return Err(Error::last_os("waiting for frames in the relay"));
            }
        }
        if fds[2].revents != 0 {
            break;
        }
        // Read what arrived, a bounded number of batches per side so that
        // due frames are not held back by a flood.
        for (fd, line) in [(fa, &mut ab), (fb, &mut ba)] {
            for _ in 0..8 {
                let n = batch.recv(fd)?;
                if n == 0 {
                    break;
                }
                let t = now_ns(origin);
                for i in 0..n {
                    match batch.frame(i) {
                        Some(f) => {
                            if !line.push(t, f) {
                                c.dropped_full.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        None => {
                            c.dropped_oversize.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if n < BATCH {
                    break;
                }
            }
        }
        let now = now_ns(origin);
        flush_due(
            fb,
            &mut ab,
            now,
            &c.frames_a_to_b,
            &c.bytes_a_to_b,
            &c.dropped_send,
        );
        flush_due(
            fa,
            &mut ba,
            now,
            &c.frames_b_to_a,
            &c.bytes_b_to_a,
            &c.dropped_send,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_leave_in_order_after_the_delay() {
        let mut l = DelayLine::new(20, 1000);
        assert!(l.push(0, b"a"));
        assert!(l.push(5, b"bb"));
        assert_eq!(l.next_due(), Some(20));
        assert_eq!(l.pop_due(19), None);
        assert_eq!(l.pop_due(20).as_deref(), Some(&b"a"[..]));
        assert_eq!(l.pop_due(24), None);
        assert_eq!(l.bytes(), 2);
        assert_eq!(l.pop_due(100).as_deref(), Some(&b"bb"[..]));
        assert!(l.is_empty());
        assert_eq!(l.next_due(), None);
    }

    #[test]
    fn full_line_drops_and_counts() {
        let mut l = DelayLine::new(10, 5);
        assert!(l.push(0, b"abc"));
        assert!(!l.push(1, b"def"));
        assert_eq!(l.dropped_full(), 1);
        assert!(l.push(1, b"de"));
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn never_reorders_even_if_clock_steps_back() {
        let mut l = DelayLine::new(10, 100);
        l.push(50, b"x");
        l.push(40, b"y");
        assert_eq!(l.pop_due(59), None);
        assert_eq!(l.pop_due(60).as_deref(), Some(&b"x"[..]));
        assert_eq!(l.pop_due(60).as_deref(), Some(&b"y"[..]));
    }

    proptest::proptest! {
        #[test]
        fn each_frame_waits_at_least_the_delay(
            delay in 0u64..1000,
            gaps in proptest::collection::vec(0u64..300, 1..60),
        ) {
            let mut l = DelayLine::new(delay, usize::MAX);
            let mut t = 0u64;
            let mut sent = Vec::new();
            for (i, g) in gaps.iter().enumerate() {
                t += g;
                l.push(t, &(i as u32).to_be_bytes());
                sent.push(t);
            }
            let mut out = Vec::new();
            let mut now = 0;
            while !l.is_empty() {
                now += 7;
                while let Some(f) = l.pop_due(now) {
                    let i = u32::from_be_bytes(f[..4].try_into().unwrap()) as usize;
                    out.push(i);
                    proptest::prop_assert!(now >= sent[i] + delay);
                    proptest::prop_assert!(now < sent[i] + delay + 7 || now - 7 < sent[i] + delay);
                }
            }
            proptest::prop_assert_eq!(out, (0..gaps.len()).collect::<Vec<_>>());
        }
    }
}
