//! Content benchmark: real `branchline` processes on loopback and an HTTP origin.
//!
//! Prints:
//! 1. single-transfer throughput peer to peer (QUIC, verified, written to the cache) next
//!    to a plain TCP copy of the same bytes on the same machine, and the ratio;
//! 2. the time for N clients to get an F-byte package at once, next to the lower bound
//!    max(F/u_s, F/d_min, N*F/(u_s + sum u_i)) for the measured rates (u_s: the origin
//!    to one client; u_i and d_min: one peer to one peer);
//! 3. origin bytes served divided by the package size.
//!
//! Run: `cargo bench -p branchline --bench content` (bench/README.md). Options
//! (environment): `BL_BENCH_MIB` (package size, default 1024), `BL_BENCH_CLIENTS` (6).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use branchline_origin::testserver::CountingServer;

const BIN: &str = env!("CARGO_BIN_EXE_branchline");

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
        Command::new(BIN)
            .args(args)
            .env("BRANCHLINE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap(),
    )
}

fn run_ok(args: &[&str]) -> String {
    let out = Command::new(BIN)
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

struct Bench {
    dir: PathBuf,
    net: String,
    key: String,
}

impl Bench {
    fn ip(&self, last: u8) -> String {
        format!("{}.{last}", self.net)
    }
    fn client(&self, n: u8) -> Kill {
        let dir = self.dir.join(format!("client{n}"));
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
        let dir = self.dir.join(format!("client{n}"));
        Command::new(BIN)
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

fn main() {
    let mib: u64 = std::env::var("BL_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let n: u8 = std::env::var("BL_BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let size = mib << 20;
    let tmp = tempfile::tempdir().unwrap();
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
    };
    println!(
        "Branchline content benchmark: {mib} MiB package, {n} clients, loopback, release build"
    );

    let origin_dir = bench.dir.join("origin");
    std::fs::create_dir_all(&origin_dir).unwrap();
    let (a, b) = (origin_dir.join("single.bin"), origin_dir.join("swarm.bin"));
    random_file(&a, size);
    random_file(&b, size);

    // 1. Plain TCP copy of the same bytes.
    let tcp = tcp_copy(&a, &bench.dir.join("tcp-copy.bin"), &bench.ip(9));
    std::fs::remove_file(bench.dir.join("tcp-copy.bin")).unwrap();

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
    let publish = |file: &Path, name: &str| -> String {
        let out = bench.connector(&[
            "publish",
            file.to_str().unwrap(),
            "--name",
            name,
            "--origin",
            &origin.url(file.file_name().unwrap().to_str().unwrap()),
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["content_id"].as_str().unwrap().to_owned()
    };
    let single = publish(&a, "single");
    let swarm = publish(&b, "swarm");

    // 2. Single transfers: the origin to client 1, then client 1 to client 2.
    let _c1 = bench.client(1);
    let _c2 = bench.client(2);
    bench.wait_online(2);
    let t = Instant::now();
    let v = done(bench.get(1, &single));
    let origin_rate = mib as f64 / t.elapsed().as_secs_f64();
    assert_eq!(v["from_origin"].as_u64(), Some(size));
    let t = Instant::now();
    let v = done(bench.get(2, &single));
    let p2p = mib as f64 / t.elapsed().as_secs_f64();
    assert_eq!(
        v["from_peers"].as_u64(),
        Some(size),
        "client 2 fetched from client 1 only"
    );
    println!(
        "single transfer, origin (HTTP) -> client: {origin_rate:.0} MiB/s (verified and written to the cache)"
    );
    println!(
        "single transfer, peer -> peer (QUIC):    {p2p:.0} MiB/s (verified and written to the cache)"
    );
    println!(
        "plain TCP copy of the same bytes:        {tcp:.0} MiB/s (file -> socket -> file, fsync at end)"
    );
    println!("peer-to-peer / TCP ratio:                {:.2}", p2p / tcp);

    // 3. N fresh clients get the swarm package at once.
    let clients: Vec<Kill> = (3..3 + n).map(|i| bench.client(i)).collect();
    bench.wait_online(2 + u64::from(n));
    let t = Instant::now();
    let gets: Vec<Child> = (3..3 + n).map(|i| bench.get(i, &swarm)).collect();
    let mut from_origin = 0;
    for g in gets {
        from_origin += done(g)["from_origin"].as_u64().unwrap();
    }
    let took = t.elapsed().as_secs_f64();
    let f = mib as f64;
    let nf = f64::from(n);
    let bound = (f / origin_rate)
        .max(f / p2p)
        .max(nf * f / (origin_rate + nf * p2p));
    println!(
        "{n} clients get {mib} MiB at once: {took:.2} s; lower bound max(F/u_s, F/d_min, N*F/(u_s+sum u_i)) = {bound:.2} s (u_s = {origin_rate:.0} MiB/s, u_i = d_min = {p2p:.0} MiB/s); ratio {:.2}",
        took / bound
    );
    println!(
        "aggregate delivered to the {n} clients: {:.0} MiB/s (on one machine every client shares its cores, so the single-transfer rates do not add up the way the bound assumes)",
        nf * f / took
    );
    println!(
        "shared-disk floor on this machine: N*F / (TCP copy rate, which ends in fsync) = {:.2} s; ratio {:.2}",
        nf * f / tcp,
        took / (nf * f / tcp)
    );
    let served = origin.bytes_served_for("swarm.bin");
    println!(
        "origin bytes / package size: {:.3} (served {served} bytes; the clients report {from_origin} from the origin)",
        served as f64 / size as f64
    );
    drop(clients);
    drop(origin);
}
