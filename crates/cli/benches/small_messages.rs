//! Small-message server benchmark: how many registrations and heartbeats per second one
//! server core accepts (AEAD, replay guard, validation and, for registrations, the SQLite
//! commit included), and the server's resident memory per 10,000 registered clients.
//!
//! Run: `cargo bench -p branchline --bench small_messages` (see bench/README.md).
//! Options (environment): `BL_BENCH_CLIENTS` (default 100000), `BL_BENCH_SECS` (default 5),
//! `BL_BENCH_CERT_CLIENTS` (default 5000): registrations that carry a certificate request,
//! as every real client's first registration does (the server checks the key's proof and
//! signs a certificate before it answers), measured apart from those without one.
//!
//! The server is the real `branchline server` process with a single-threaded runtime,
//! pinned to CPU 0; this process generates load from CPU 1 over loopback, from several
//! source addresses in 127.0.0.0/8 (the server's replay guard remembers at most 65,536
//! message ids per sender address, a bound against a hostile device, and a real deployment
//! has one address per client).

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use branchline_wire::frame::{open, seal};
use branchline_wire::msg::{Heartbeat, Register};
use branchline_wire::{Body, ClientId, Envelope, Incoming, SealingKey};

const BIN: &str = env!("CARGO_BIN_EXE_branchline");
const WINDOW: usize = 64;
const THREADS: usize = 4;

#[allow(unsafe_code)] // sched_setaffinity
fn pin_to(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

use branchline_time::now_ms;

fn register(id: ClientId, n: usize, cert_request: Vec<u8>) -> Body {
    Body::Register(Register {
        client_id: id.to_string(),
        hostname: format!("bench-{n}"),
        addresses: vec![format!(
            "10.{}.{}.{}",
            (n >> 16) & 255,
            (n >> 8) & 255,
            n & 255
        )],
        subnet: format!("10.{}.{}.0/24", (n >> 16) & 255, (n >> 8) & 255),
        cache_size_bytes: 10 << 30,
        cache_free_bytes: 5 << 30,
        version: "0.1.0".into(),
        heartbeat_interval_ms: 30_000,
        ports: None,
        cert_request,
    })
}

fn heartbeat(id: ClientId) -> Body {
    Body::Heartbeat(Heartbeat {
        client_id: id.to_string(),
        cache_free_bytes: 4 << 30,
        uptime_s: 100,
        ..Default::default()
    })
}

/// Messages sent from one source address before moving to the next: below the server's
/// replay-guard quota of 65,536 remembered ids per sender address, which would otherwise
/// drop the load of one address (a real deployment has one address per client).
const PER_SOURCE: usize = 60_000;

/// Source addresses for the load: `127.A.B.2` upwards, each used by one socket for at
/// most [`PER_SOURCE`] messages.
struct Sources {
    net: String,
    next: std::sync::atomic::AtomicU32,
}

impl Sources {
    fn socket(&self) -> UdpSocket {
        let host = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(host <= 254, "out of load source addresses");
        let ip: std::net::IpAddr = format!("{}.{host}", self.net).parse().unwrap();
        let sock = UdpSocket::bind((ip, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        sock
    }
}

/// Sends the bodies `make(i)` for `i` in `range` with `WINDOW` requests in flight per
/// thread until all are answered or `limit` passes. Returns (answered, elapsed).
fn drive(
    key: &SealingKey,
    server: SocketAddr,
    sources: &Sources,
    total: usize,
    limit: Duration,
    make: &(dyn Fn(usize) -> Body + Sync),
) -> (usize, Duration) {
    let start = Instant::now();
    let answered: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || {
                    pin_to(1);
                    let mut sock = sources.socket();
                    let mut sent_here = 0usize;
                    let keys = std::slice::from_ref(key);
                    let mut next = t;
                    let mut inflight: HashMap<u64, usize> = HashMap::new();
                    // Sends body `i` under a fresh message id and remembers it in flight.
                    let send = |sock: &UdpSocket, inflight: &mut HashMap<u64, usize>, i: usize| {
                        let env = Envelope {
                            msg_id: rand::random_range(1..u64::MAX),
                            sent_at_ms: now_ms(),
                            in_reply_to: 0,
                            body: Some(make(i)),
                        };
                        let dg = seal(key, rand::random(), &env).unwrap();
                        sock.send_to(&dg, server).unwrap();
                        inflight.insert(env.msg_id, i);
                    };
                    let mut done = 0usize;
                    let mut buf = [0u8; 2048];
                    while start.elapsed() < limit {
                        if sent_here >= PER_SOURCE {
                            // The server remembers at most 65,536 message ids per sender
                            // address (its replay guard's quota): go on from a new one,
                            // sending what is in flight again under new ids.
                            sock = sources.socket();
                            sent_here = 0;
                            let lost: Vec<usize> = inflight.drain().map(|(_, i)| i).collect();
                            for i in lost {
                                send(&sock, &mut inflight, i);
                                sent_here += 1;
                            }
                        }
                        while inflight.len() < WINDOW && next < total {
                            send(&sock, &mut inflight, next);
                            sent_here += 1;
                            next += THREADS;
                        }
                        if inflight.is_empty() {
                            break;
                        }
                        match sock.recv(&mut buf) {
                            Ok(n) => {
                                if let Ok(Incoming::Message { envelope, .. }) =
                                    open(keys, &buf[..n])
                                {
                                    let ok = matches!(
                                        envelope.body,
                                        Some(Body::RegisterOk(_)) | Some(Body::HeartbeatAck(_))
                                    );
                                    if ok && inflight.remove(&envelope.in_reply_to).is_some() {
                                        done += 1;
                                    }
                                }
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    ErrorKind::WouldBlock | ErrorKind::TimedOut
                                ) =>
                            {
                                // Lost in a full socket buffer: send those again under new ids.
                                let lost: Vec<usize> = inflight.drain().map(|(_, i)| i).collect();
                                for i in lost {
                                    send(&sock, &mut inflight, i);
                                    sent_here += 1;
                                }
                            }
                            Err(e) => panic!("recv: {e}"),
                        }
                    }
                    done
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    (answered, start.elapsed())
}

fn main() {
    let clients: usize = std::env::var("BL_BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let secs: u64 = std::env::var("BL_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bench.toml");
    std::fs::write(&cfg, "[server]\nthreads = 1\n# Up to 60,000 new ids per load address: no per-source quota.\nnew_clients_per_source_per_minute = 0\n").unwrap();
    let net = format!(
        "127.{}.{}",
        rand::random_range(100..=250u8),
        rand::random_range(1..=254u8)
    );
    let server_ip: std::net::IpAddr = format!("{net}.1").parse().unwrap();
    let sources = Sources {
        net: net.clone(),
        next: std::sync::atomic::AtomicU32::new(2),
    };
    let data = dir.path().join("server");
    let mut cmd = Command::new(BIN);
    cmd.args([
        "--config",
        cfg.to_str().unwrap(),
        "server",
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .args(["--bind", &server_ip.to_string()])
    .env("BRANCHLINE_LOG", "warn")
    .stdin(Stdio::null())
    .stdout(Stdio::null());
    if cores > 1 {
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe work (sched_setaffinity) between fork and exec.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(|| {
                pin_to(0);
                Ok(())
            });
        }
    }
    let server = Server(cmd.spawn().expect("start branchline server"));
    let pid = server.0.id();
    let key_path = data.join("deployment.key");
    let t0 = Instant::now();
    while !key_path.exists() && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let key = branchline_transport::read_key_file(&key_path)
        .unwrap()
        .derive();
    let target: SocketAddr = (server_ip, 34323).into();
    let ids: Vec<ClientId> = (0..clients).map(|_| ClientId(rand::random())).collect();

    println!("Branchline small-message benchmark");
    println!(
        "server: `branchline server`, 1 runtime thread{}; load: {THREADS} sockets x {WINDOW} in flight{}",
        if cores > 1 { ", pinned to CPU 0" } else { "" },
        if cores > 1 {
            ", pinned to CPU 1"
        } else {
            " (same core: figures understate the server)"
        }
    );
    let rss0 = rss_kib(pid);
    println!(
        "resident memory, 0 clients: {:.1} MiB",
        rss0 as f64 / 1024.0
    );

    // Registrations in steps, reading memory at each.
    let mut registered = 0;
    let mut reg_time = Duration::ZERO;
    let mut rss_at = Vec::new();
    for step in [clients / 10, clients / 2, clients] {
        let from = registered;
        let ids_ref = &ids;
        let (n, t) = drive(
            &key,
            target,
            &sources,
            step - from,
            Duration::from_secs(120),
            // No certificate request: this measures the small-message path alone.
            &|i| register(ids_ref[from + i], from + i, Vec::new()),
        );
        assert_eq!(n, step - from, "every registration answered");
        registered = step;
        reg_time += t;
        std::thread::sleep(Duration::from_millis(300));
        rss_at.push((step, rss_kib(pid)));
    }
    println!(
        "registrations: {registered} in {:.2} s = {:.0} msg/s (open+validate+SQLite commit before the reply)",
        reg_time.as_secs_f64(),
        registered as f64 / reg_time.as_secs_f64()
    );
    for (n, rss) in &rss_at {
        println!(
            "resident memory, {n} clients: {:.1} MiB",
            *rss as f64 / 1024.0
        );
    }
    let (n_last, rss_last) = rss_at[rss_at.len() - 1];
    let per_10k = (rss_last.saturating_sub(rss0)) as f64 / 1024.0 / (n_last as f64 / 10_000.0);
    println!(
        "resident memory per 10,000 registered clients: {per_10k:.2} MiB (includes their replay-guard entries)"
    );

    // Heartbeats from registered clients for a fixed time.
    let ids_ref = &ids;
    let (n, t) = drive(
        &key,
        target,
        &sources,
        usize::MAX / 2,
        Duration::from_secs(secs),
        &|i| heartbeat(ids_ref[i % ids_ref.len()]),
    );
    println!(
        "heartbeats: {n} in {:.2} s = {:.0} msg/s on one server core",
        t.as_secs_f64(),
        n as f64 / t.as_secs_f64()
    );
    println!(
        "resident memory after heartbeats: {:.1} MiB",
        rss_kib(pid) as f64 / 1024.0
    );

    // Registrations as real clients first send them: with a certificate request, whose
    // proof the server checks and for which it signs a certificate.
    let cert_clients: usize = std::env::var("BL_BENCH_CERT_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let keys = tempfile::tempdir().unwrap();
    let requests: Vec<Vec<u8>> = (0..cert_clients)
        .map(|i| {
            let d = keys.path().join(i.to_string());
            std::fs::create_dir(&d).unwrap();
            branchline_quic::ClientIdentity::load_or_generate(&d)
                .unwrap()
                .cert_request()
                .unwrap()
                .encode()
                .to_vec()
        })
        .collect();
    let cert_ids: Vec<ClientId> = (0..cert_clients)
        .map(|_| ClientId(rand::random()))
        .collect();
    let (n, t) = drive(
        &key,
        target,
        &sources,
        cert_clients,
        Duration::from_secs(120),
        &|i| register(cert_ids[i], clients + i, requests[i].clone()),
    );
    assert_eq!(n, cert_clients, "every registration answered");
    println!(
        "registrations with a certificate request: {n} in {:.2} s = {:.0} msg/s (proof checked, certificate signed, SQLite commit)",
        t.as_secs_f64(),
        n as f64 / t.as_secs_f64()
    );
}
