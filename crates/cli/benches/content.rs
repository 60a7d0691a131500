//! Content benchmark: real `branchline` processes on loopback and an HTTP origin.
//!
//! Prints, each figure as the median and [min–max] of `BL_BENCH_REPEAT` runs (default 3),
//! every run beside its reference so that a ratio means something on a busy machine:
//! 1. single-transfer throughput peer to peer (QUIC, verified, written to the cache) next
//!    to a plain TCP copy of the same bytes on the same machine, and the ratio;
//! 2. the same peer-to-peer transfer between two clients whose caches are on tmpfs (no
//!    disk), next to QUIC piece fetches from memory (no cache, no verification), and
//!    the ratio;
//! 3. the time for N clients to get an F-byte package at once, next to the lower bound
//!    max(F/u_s, F/d_min, N*F/(u_s + sum u_i)) for the measured rates (u_s: the origin
//!    to one client; u_i and d_min: one peer to one peer) and next to the shared-disk
//!    floor: the time of N TCP copies of the package run one after another just before;
//! 4. origin bytes served divided by the package size.
//!
//! Run: `cargo bench -p branchline --bench content` (bench/README.md). Options
//! (environment): `BL_BENCH_MIB` (package size, default 1024), `BL_BENCH_CLIENTS` (6),
//! `BL_BENCH_REPEAT` (3), `BL_BENCH_BIN` (another `branchline` binary to run, to compare
//! builds), `BL_BENCH_TMPFS` (a tmpfs directory for the no-disk pair,
//! default `/dev/shm`; `off` skips it).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use branchline_origin::testserver::CountingServer;
use branchline_quic::{
    ClientIdentity, ClientName, Congestion, ContentConfig, ContentNode, DeploymentCa,
    DeploymentName, DeploymentTrust, NodeIdentity, PeerIdentity, PieceError, PieceRequest,
    PieceSource, Role, TransportSettings, transport_config,
};
use bytes::Bytes;

/// If this is a virtual machine whose balloon device reports free memory to the host
/// (virtio device 5 with feature bit 5, `VIRTIO_BALLOON_F_REPORTING`), the order of the
/// smallest free blocks it reports (`/sys/module/page_reporting`; above 10 none are
/// reported on x86-64, whose largest order is 10).
fn free_page_reporting() -> Option<u32> {
    let reporting = std::fs::read_dir("/sys/bus/virtio/devices")
        .ok()?
        .flatten()
        .any(|d| {
            let read = |f: &str| std::fs::read_to_string(d.path().join(f)).unwrap_or_default();
            read("device").trim() == "0x0005" && read("features").as_bytes().get(5) == Some(&b'1')
        });
    let order: u32 =
        std::fs::read_to_string("/sys/module/page_reporting/parameters/page_reporting_order")
            .ok()?
            .trim()
            .parse()
            .ok()?;
    (reporting && order <= 10).then_some(order)
}

/// The `branchline` binary: this build's, or `BL_BENCH_BIN` (to compare two builds).
fn bin() -> String {
    std::env::var("BL_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_branchline").into())
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str], log: &Path) -> Kill {
    let f = std::fs::File::create(log).unwrap();
    Kill(
        Command::new(bin())
            .args(args)
            .env("BRANCHLINE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap(),
    )
}

/// CPU time (user + system, seconds) a process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / hz as f64
}

fn run_ok(args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "branchline {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn random_file(path: &Path, bytes: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..(bytes >> 20) {
        rand::fill(&mut buf[..]);
        f.write_all(&buf).unwrap();
    }
    f.flush().unwrap();
}

/// Plain TCP copy of `src` to `dst` over loopback: file -> socket -> file (MiB/s).
///
/// `dst` must be a new file that is kept at least until the transfers it is compared with
/// have run, like the clients' caches: on a virtual machine that hands freed guest memory back to its host (free page
/// reporting, as on the machine these figures come from), writing into page cache that
/// was freed a moment ago runs several times faster than writing into fresh memory
/// (measured 5.8 GB/s against 0.4 GB/s). A copy deleted after each run would let the
/// next one reuse its pages, which the clients' caches, growing by one package per run,
/// never can.
fn tcp_copy(src: &Path, dst: &Path, ip: &str) -> f64 {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let dst = dst.to_owned();
    let start = Instant::now();
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut out = std::fs::File::create(&dst).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).unwrap();
        }
        out.sync_all().unwrap();
    });
    let mut s = TcpStream::connect(addr).unwrap();
    let mut f = std::fs::File::open(src).unwrap();
    std::io::copy(&mut f, &mut s).unwrap();
    drop(s);
    receiver.join().unwrap();
    let size = std::fs::metadata(src).unwrap().len();
    size as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
}

/// Client numbers of the pair whose caches are on tmpfs.
const TMPFS_A: u8 = 200;
const TMPFS_B: u8 = 201;

struct Bench {
    dir: PathBuf,
    net: String,
    key: String,
    tmpfs: Option<tempfile::TempDir>,
}

impl Bench {
    fn ip(&self, last: u8) -> String {
        format!("{}.{last}", self.net)
    }
    fn data_dir(&self, n: u8) -> PathBuf {
        match (&self.tmpfs, n) {
            (Some(t), TMPFS_A | TMPFS_B) => t.path().join(format!("client{n}")),
            _ => self.dir.join(format!("client{n}")),
        }
    }
    fn client(&self, n: u8) -> Kill {
        let dir = self.data_dir(n);
        spawn(
            &[
                "client",
                "--server",
                &self.ip(1),
                "--key-file",
                &self.key,
                "--data-dir",
                dir.to_str().unwrap(),
                "--bind",
                &self.ip(10 + n),
                "--heartbeat-interval",
                "1",
                "--hostname",
                &format!("bench-{n}"),
            ],
            &self.dir.join(format!("client{n}.log")),
        )
    }
    fn connector(&self, args: &[&str]) -> String {
        let (server, bind) = (self.ip(1), self.ip(2));
        let mut all = vec!["connector", "--server", &server];
        all.extend(["--bind", &bind, "--key-file", &self.key]);
        all.extend_from_slice(args);
        run_ok(&all)
    }
    fn wait_online(&self, n: u64) {
        let start = Instant::now();
        loop {
            let h: serde_json::Value =
                serde_json::from_str(&self.connector(&["health", "--json"])).unwrap();
            if h["clients_online"].as_u64() == Some(n) {
                std::thread::sleep(Duration::from_millis(500));
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "clients did not come online: {h}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    fn get(&self, n: u8, content: &str) -> Child {
        let dir = self.data_dir(n);
        Command::new(bin())
            .args([
                "get",
                content,
                "--json",
                "--data-dir",
                dir.to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

fn done(child: Child) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "get: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Median and [min–max] of some runs.
struct Spread(Vec<f64>);

impl Spread {
    fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }
    fn show(&self, digits: usize) -> String {
        let min = self.0.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{:.digits$} [{min:.digits$}–{max:.digits$}]", self.median())
    }
}

fn ratios(a: &Spread, b: &Spread) -> Spread {
    Spread(a.0.iter().zip(&b.0).map(|(x, y)| x / y).collect())
}

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

struct MemPieces(Vec<Bytes>);

impl PieceSource for MemPieces {
    async fn read_piece(
        &self,
        _peer: &PeerIdentity,
        _content: &[u8; 32],
        piece: u32,
    ) -> Result<Bytes, PieceError> {
        self.0
            .get(piece as usize % self.0.len())
            .cloned()
            .ok_or(PieceError::NotFound)
    }
}

fn quic_client(ca: &DeploymentCa, name: &str, dir: &Path) -> NodeIdentity {
    let id = ClientIdentity::load_or_generate(dir).unwrap();
    let name = ClientName::new(name).unwrap();
    let now = SystemTime::now();
    let cert = ca
        .issue_client_cert(&name, &id.cert_request().unwrap(), now, YEAR)
        .unwrap();
    id.install_certificate(
        cert,
        ca.certificate(),
        ca.deployment(),
        &Role::Client(name),
        now,
    )
    .unwrap()
}

/// The no-disk reference: `mib` pieces of 1 MiB fetched over one QUIC connection between
/// two endpoints of this process on loopback (Foreground transport, as between peers),
/// from memory, 8 requests in flight, nothing verified or written (MiB/s).
fn quic_pieces_from_memory(mib: u64, ip: &str) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ca = DeploymentCa::generate(
            DeploymentName::new("bench").unwrap(),
            SystemTime::now(),
            YEAR,
        )
        .unwrap();
        let trust = DeploymentTrust::new(ca.deployment().clone(), ca.certificate().clone());
        let transport = Arc::new(transport_config(
            &TransportSettings::default(),
            &Congestion::Foreground,
        ));
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let bind = || format!("{ip}:0").parse().unwrap();
        let a = ContentNode::bind(
            bind(),
            &quic_client(&ca, "aa01", da.path()),
            trust.clone(),
            transport.clone(),
            ContentConfig::default(),
        )
        .unwrap();
        let b = ContentNode::bind(
            bind(),
            &quic_client(&ca, "bb02", db.path()),
            trust,
            transport,
            ContentConfig::default(),
        )
        .unwrap();
        let pieces = (0..64u8).map(|i| Bytes::from(vec![i; 1 << 20])).collect();
        let _serving = a.serve(Arc::new(MemPieces(pieces)));
        let peer = Role::Client(ClientName::new("aa01").unwrap());
        let (conn, _) = b
            .connect(a.endpoint().local_addr().unwrap(), &peer)
            .await
            .unwrap();
        let start = Instant::now();
        let mut set: tokio::task::JoinSet<Bytes> = tokio::task::JoinSet::new();
        let mut total = 0u64;
        for piece in 0..mib as u32 {
            if set.len() >= 8 {
                total += set.join_next().await.unwrap().unwrap().len() as u64;
            }
            let conn = conn.clone();
            set.spawn(async move {
                let req = PieceRequest {
                    content: [0; 32],
                    piece,
                    offset: 0,
                    len: 0,
                };
                branchline_quic::fetch_piece(&conn, &req, &ContentConfig::default())
                    .await
                    .unwrap()
            });
        }
        while let Some(r) = set.join_next().await {
            total += r.unwrap().len() as u64;
        }
        assert_eq!(total, mib << 20);
        mib as f64 / start.elapsed().as_secs_f64()
    })
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let mib: u64 = env("BL_BENCH_MIB", 1024);
    let n: u8 = env("BL_BENCH_CLIENTS", 6);
    let repeat: usize = env("BL_BENCH_REPEAT", 3usize).max(1);
    let tmpfs_root = std::env::var("BL_BENCH_TMPFS").unwrap_or_else(|_| "/dev/shm".into());
    let size = mib << 20;
    let tmp = tempfile::tempdir().unwrap();
    let tmpfs = (tmpfs_root != "off").then(|| {
        tempfile::Builder::new()
            .prefix("bl-bench-")
            .tempdir_in(&tmpfs_root)
            .unwrap_or_else(|e| panic!("a directory in {tmpfs_root} (BL_BENCH_TMPFS): {e}"))
    });
    let bench = Bench {
        dir: tmp.path().to_owned(),
        net: format!(
            "127.{}.{}",
            rand::random_range(100..=250u8),
            rand::random_range(1..=254u8)
        ),
        key: tmp
            .path()
            .join("server/deployment.key")
            .display()
            .to_string(),
        tmpfs,
    };
    println!(
        "Branchline content benchmark: {mib} MiB package, {n} clients, loopback, release build, {repeat} runs (median [min–max])"
    );
    if let Some(order) = free_page_reporting() {
        println!(
            "note: this machine hands freed memory back to its host (free page reporting, \
             page_reporting_order={order}): writes into page cache the host must back again \
             run ~10x slower, so every rate below depends on what was freed before it; see \
             bench/README.md (\"Read the TCP reference with care\")"
        );
    }

    // Fresh packages for every run, so every run starts from empty caches.
    let origin_dir = bench.dir.join("origin");
    std::fs::create_dir_all(&origin_dir).unwrap();
    let kinds: &[&str] = if bench.tmpfs.is_some() {
        &["single", "tmpfs", "swarm"]
    } else {
        &["single", "swarm"]
    };
    for kind in kinds {
        for k in 0..repeat {
            random_file(&origin_dir.join(format!("{kind}-{k}.bin")), size);
        }
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let origin = rt
        .block_on(CountingServer::start_dir(
            format!("{}:0", bench.ip(5)).parse().unwrap(),
            &origin_dir,
        ))
        .unwrap();
    let server_dir = bench.dir.join("server");
    let _server = spawn(
        &[
            "server",
            "--data-dir",
            server_dir.to_str().unwrap(),
            "--bind",
            &bench.ip(1),
        ],
        &bench.dir.join("server.log"),
    );
    let start = Instant::now();
    while !Path::new(&bench.key).exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    // Publishing needs the connector's credential (issue #10): enrol with the token.
    let tokens = Path::new(&bench.key).with_file_name("connector.tokens");
    bench.connector(&["activate", "--token-file", tokens.to_str().unwrap()]);
    let publish = |name: &str| -> String {
        let file = origin_dir.join(format!("{name}.bin"));
        let out = bench.connector(&[
            "publish",
            file.to_str().unwrap(),
            "--name",
            name,
            "--origin",
            &origin.url(&format!("{name}.bin")),
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["content_id"].as_str().unwrap().to_owned()
    };
    let ids = |kind: &str| -> Vec<String> {
        if !kinds.contains(&kind) {
            return Vec::new();
        }
        (0..repeat)
            .map(|k| publish(&format!("{kind}-{k}")))
            .collect()
    };
    let (single, tmpfs_ids, swarm) = (ids("single"), ids("tmpfs"), ids("swarm"));

    // 1 and 2. Single transfers, each run beside its references: a TCP copy of the same
    // bytes; the origin to client 1, then client 1 to client 2 (it can only fetch from
    // client 1); the same between the tmpfs pair; QUIC pieces from memory.
    let _c1 = bench.client(1);
    let _c2 = bench.client(2);
    let tmpfs_pair = bench
        .tmpfs
        .is_some()
        .then(|| (bench.client(TMPFS_A), bench.client(TMPFS_B)));
    bench.wait_online(if tmpfs_pair.is_some() { 4 } else { 2 });
    let timed_get = |client: u8, id: &str| -> (f64, serde_json::Value) {
        let t = Instant::now();
        let v = done(bench.get(client, id));
        (mib as f64 / t.elapsed().as_secs_f64(), v)
    };
    // CPU seconds both daemons of a pair use per GiB moved: unlike rates, this hardly
    // depends on what else the machine is running.
    let gib = mib as f64 / 1024.0;
    let cpu = |pids: &[u32]| -> f64 { pids.iter().map(|p| cpu_secs(*p)).sum() };
    let pair = [_c1.0.id(), _c2.0.id()];
    // The references' copies, kept until the end (see `tcp_copy`).
    let copies = bench.dir.join("tcp-copies");
    std::fs::create_dir_all(&copies).unwrap();
    let (mut tcp, mut origin_rate, mut p2p) = (Vec::new(), Vec::new(), Vec::new());
    let (mut p2p_tmpfs, mut quic_mem) = (Vec::new(), Vec::new());
    let (mut p2p_cpu, mut tmpfs_cpu) = (Vec::new(), Vec::new());
    for k in 0..repeat {
        let src = origin_dir.join(format!("single-{k}.bin"));
        let copy = copies.join(format!("single-{k}.bin"));
        tcp.push(tcp_copy(&src, &copy, &bench.ip(9)));
        let (rate, v) = timed_get(1, &single[k]);
        assert_eq!(v["from_origin"].as_u64(), Some(size));
        origin_rate.push(rate);
        let before = cpu(&pair);
        let (rate, v) = timed_get(2, &single[k]);
        p2p_cpu.push((cpu(&pair) - before) / gib);
        assert_eq!(
            v["from_peers"].as_u64(),
            Some(size),
            "client 2 fetched from client 1 only"
        );
        p2p.push(rate);
        if let Some((a, b)) = &tmpfs_pair {
            let (_, v) = timed_get(TMPFS_A, &tmpfs_ids[k]);
            assert_eq!(v["from_origin"].as_u64(), Some(size));
            let tpair = [a.0.id(), b.0.id()];
            let before = cpu(&tpair);
            let (rate, v) = timed_get(TMPFS_B, &tmpfs_ids[k]);
            tmpfs_cpu.push((cpu(&tpair) - before) / gib);
            assert_eq!(v["from_peers"].as_u64(), Some(size));
            p2p_tmpfs.push(rate);
            quic_mem.push(quic_pieces_from_memory(mib, &bench.ip(8)));
        }
    }
    let (tcp, origin_rate, p2p) = (Spread(tcp), Spread(origin_rate), Spread(p2p));
    println!(
        "single transfer, origin (HTTP) -> client: {} MiB/s (verified and written to the cache)",
        origin_rate.show(0)
    );
    println!(
        "single transfer, peer -> peer (QUIC):    {} MiB/s (verified and written to the cache)",
        p2p.show(0)
    );
    println!(
        "plain TCP copy of the same bytes:        {} MiB/s (file -> socket -> new file kept, fsync at end)",
        tcp.show(0)
    );
    println!(
        "peer-to-peer / TCP ratio:                {} (per run)",
        ratios(&p2p, &tcp).show(2)
    );
    println!(
        "CPU of both daemons per GiB, peer -> peer: {} s",
        Spread(p2p_cpu).show(2)
    );
    if tmpfs_pair.is_some() {
        let (p2p_tmpfs, quic_mem) = (Spread(p2p_tmpfs), Spread(quic_mem));
        println!(
            "peer -> peer, caches on tmpfs:           {} MiB/s (verified and written to the cache)",
            p2p_tmpfs.show(0)
        );
        println!(
            "QUIC pieces from memory, no disk:        {} MiB/s (1 MiB pieces, 8 in flight, one process)",
            quic_mem.show(0)
        );
        println!(
            "tmpfs peer-to-peer / QUIC from memory:   {} (per run)",
            ratios(&p2p_tmpfs, &quic_mem).show(2)
        );
        println!(
            "CPU of both daemons per GiB, tmpfs pair: {} s",
            Spread(tmpfs_cpu).show(2)
        );
    }
    drop(tmpfs_pair);

    // 3. N fresh clients get a swarm package at once, after a TCP copy for the floor.
    let clients: Vec<Kill> = (3..3 + n).map(|i| bench.client(i)).collect();
    bench.wait_online(2 + u64::from(n));
    let f = mib as f64;
    let nf = f64::from(n);
    let (mut took, mut floor, mut served, mut from_origin) = (Vec::new(), Vec::new(), 0, 0);
    let swarm_pids: Vec<u32> = clients.iter().map(|c| c.0.id()).collect();
    let mut swarm_cpu = Vec::new();
    for (k, swarm) in swarm.iter().enumerate() {
        let src = origin_dir.join(format!("swarm-{k}.bin"));
        // N copies, each into a new file kept like the clients' caches: the time the disk
        // and the page cache take to absorb what the N clients will write.
        floor.push(
            (0..n)
                .map(|i| {
                    let copy = copies.join(format!("swarm-{k}-{i}.bin"));
                    f / tcp_copy(&src, &copy, &bench.ip(9))
                })
                .sum(),
        );
        let t = Instant::now();
        let before = cpu(&swarm_pids);
        let gets: Vec<Child> = (3..3 + n).map(|i| bench.get(i, swarm)).collect();
        for g in gets {
            from_origin += done(g)["from_origin"].as_u64().unwrap();
        }
        took.push(t.elapsed().as_secs_f64());
        // The run is measured: its N copies go, so that the disk holds one run's at a time.
        for i in 0..n {
            std::fs::remove_file(copies.join(format!("swarm-{k}-{i}.bin"))).unwrap();
        }
        swarm_cpu.push((cpu(&swarm_pids) - before) / (nf * gib));
        served += origin.bytes_served_for(&format!("swarm-{k}.bin"));
    }
    let (took, floor) = (Spread(took), Spread(floor));
    let (u_s, d) = (origin_rate.median(), p2p.median());
    let bound = (f / u_s).max(f / d).max(nf * f / (u_s + nf * d));
    println!(
        "{n} clients get {mib} MiB at once: {} s; lower bound max(F/u_s, F/d_min, N*F/(u_s+sum u_i)) = {bound:.2} s (u_s = {u_s:.0} MiB/s, u_i = d_min = {d:.0} MiB/s, medians); ratio {:.2}",
        took.show(2),
        took.median() / bound
    );
    println!(
        "aggregate delivered to the {n} clients: {} MiB/s (on one machine every client shares its cores, so the single-transfer rates do not add up the way the bound assumes)",
        Spread(took.0.iter().map(|t| nf * f / t).collect()).show(0)
    );
    println!(
        "shared-disk floor on this machine: N TCP copies of F, one after another, just before (each ends in fsync) = {} s",
        floor.show(2)
    );
    println!(
        "{n}-client time / shared-disk floor:      {} (per run)",
        ratios(&took, &floor).show(2)
    );
    println!(
        "CPU of the {n} daemons per GiB delivered: {} s",
        Spread(swarm_cpu).show(2)
    );
    let runs = swarm.len() as f64;
    println!(
        "origin bytes / package size: {:.3} per run (served {served} bytes in {runs} runs; the clients report {from_origin} from the origin)",
        served as f64 / size as f64 / runs
    );
    drop(clients);
    drop(origin);
}
