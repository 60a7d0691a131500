//! Branchline on the multi-office test bed: real `branchline` processes in the hosts of
//! a test-bed topology, an HTTP origin that counts what it serves, and the link counters.
//! Shared by `tests/offices_testbed.rs` and `benches/offices.rs`.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use branchline_origin::testserver::CountingServer;
use branchline_testbed::{Direction, Testbed, Topology};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_branchline");

pub fn topology(name: &str) -> Topology {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testbed/topologies")
        .join(name);
    Topology::from_file(&path).expect("topology")
}

/// Processes started in test-bed hosts, killed when the test ends however it ends.
pub struct Procs(Vec<(String, Child, std::path::PathBuf)>);

impl Procs {
    pub fn spawn(&mut self, tb: &Testbed, dir: &Path, host: &str, name: &str, args: &[&str]) {
        // A process started again under the same name gets a log of its own.
        let again = self.0.iter().filter(|(n, _, _)| n == name).count();
        let log = if again == 0 {
            dir.join(format!("{name}.log"))
        } else {
            dir.join(format!("{name}-{}.log", again + 1))
        };
        let out = std::fs::File::create(&log).unwrap();
        let mut c: Command = tb.command(host, BIN).unwrap();
        c.args(args)
            .env("BRANCHLINE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = c.spawn().unwrap();
        self.0.push((name.into(), child, log));
    }
    pub fn kill(&mut self, name: &str) {
        if let Some((_, c, _)) = self.0.iter_mut().find(|(n, _, _)| n == name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    /// True when any process's whole log contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.0
            .iter()
            .any(|(_, _, l)| std::fs::read_to_string(l).is_ok_and(|t| t.contains(text)))
    }

    pub fn logs(&self) -> String {
        self.0
            .iter()
            .map(|(n, _, l)| {
                let text = std::fs::read_to_string(l).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                format!(
                    "--- {n} (last lines) ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c, _) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The counting HTTP origin, on a runtime thread inside the `origin` host.
pub struct Origin {
    pub server: Arc<CountingServer>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<branchline_testbed::Result<()>>>,
}

impl Origin {
    pub fn start(tb: &Testbed, host: &str, name: &str, data: Vec<u8>) -> (Origin, String) {
        let ip = tb.host_addr(host).unwrap();
        let (tx, rx) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let name = name.to_owned();
        let thread = tb
            .spawn_in(host, move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let server = CountingServer::start(
                        (ip, 0).into(),
                        vec![(name.clone(), bytes::Bytes::from(data))],
                    )
                    .await
                    .unwrap();
                    let server = Arc::new(server);
                    tx.send((server.clone(), server.url(&name))).unwrap();
                    let _ = stopped.await;
                });
            })
            .unwrap();
        let (server, url) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        (
            Origin {
                server,
                stop: Some(stop),
                thread: Some(thread),
            },
            url,
        )
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A running Branchline deployment on the test bed.
pub struct Deployment {
    pub tb: Testbed,
    pub dir: tempfile::TempDir,
    pub procs: Procs,
    pub key: String,
    pub server_ip: String,
    /// One deployment at a time in this process (dropped last, after everything else).
    _alone: std::sync::MutexGuard<'static, ()>,
}

/// Deployments take turns: the tests measure WAN bytes that depend on timing (what an
/// office's peers had when its RVP was killed, how far a pause got), and a second test
/// bed running beside one on a 2-core machine turns its load into the other's figures.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Deployment {
    pub fn start(topo: &Topology, clients: &[&str]) -> Deployment {
        // A test that failed while holding it leaves nothing behind (its drop ran).
        let alone = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tb = Testbed::up(topo).expect("test bed up");
        let dir = tempfile::tempdir().unwrap();
        let mut procs = Procs(Vec::new());
        let server_ip = tb.host_addr("server").unwrap().to_string();
        let data = dir.path().join("server");
        procs.spawn(
            &tb,
            dir.path(),
            "server",
            "server",
            &[
                "server",
                "--data-dir",
                data.to_str().unwrap(),
                "--bind",
                &server_ip,
            ],
        );
        let key = data.join("deployment.key");
        // The server writes its key first and the connector's token a moment later: wait
        // for both, or an admin command may find no token to enrol with.
        let tokens = data.join("connector.tokens");
        let start = Instant::now();
        while !key.exists() || std::fs::metadata(&tokens).map_or(true, |m| m.len() == 0) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{}",
                procs.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let key = key.display().to_string();
        let mut d = Deployment {
            tb,
            dir,
            procs,
            key,
            server_ip,
            _alone: alone,
        };
        for c in clients {
            d.client(c);
        }
        d
    }

    /// [`Deployment::start`], then waits until every client is online and applies the
    /// office tree `offices` (a topology file's text).
    pub fn with_offices(topo: &Topology, clients: &[&str], offices: &str) -> Deployment {
        let d = Deployment::start(topo, clients);
        d.wait_online(clients.len() as u64);
        d.apply_topology(offices);
        d
    }

    /// `connector topology apply` of the office tree `offices` (a topology file's text).
    pub fn apply_topology(&self, offices: &str) {
        let file = self.dir.path().join("topology.toml");
        std::fs::write(&file, offices).unwrap();
        self.connector_ok(&["topology", "apply", file.to_str().unwrap()]);
    }

    pub fn client(&mut self, host: &str) {
        let ip = self.tb.host_addr(host).unwrap().to_string();
        let data = self.dir.path().join(host);
        let (server_ip, key) = (self.server_ip.clone(), self.key.clone());
        self.procs.spawn(
            &self.tb,
            self.dir.path(),
            host,
            host,
            &[
                "client",
                "--server",
                &server_ip,
                "--key-file",
                &key,
                "--data-dir",
                data.to_str().unwrap(),
                "--bind",
                &ip,
                "--heartbeat-interval",
                "1",
                "--hostname",
                host,
            ],
        );
    }

    /// Runs a connector command; the first admin command enrols the connector with the
    /// server's pending token (issue #10: admin commands need the connector credential).
    pub fn connector(&self, args: &[&str]) -> std::process::Output {
        let admin = matches!(
            args.first().copied(),
            Some("publish" | "topology" | "deploy" | "status")
        );
        let key = std::path::Path::new(&self.key);
        if admin && !key.with_file_name("connector.credential").exists() {
            let tokens = key.with_file_name("connector.tokens");
            let out = self.connector_raw(&["activate", "--token-file", tokens.to_str().unwrap()]);
            assert!(out.status.success(), "enrolment: {out:?}");
        }
        self.connector_raw(args)
    }

    /// Runs a connector command as given.
    pub fn connector_raw(&self, args: &[&str]) -> std::process::Output {
        let mut c = self.tb.command("server", BIN).unwrap();
        c.args([
            "connector",
            "--server",
            &self.server_ip,
            "--bind",
            &self.server_ip,
            "--key-file",
            &self.key,
        ])
        .args(args)
        .stdin(Stdio::null());
        c.output().unwrap()
    }

    pub fn connector_ok(&self, args: &[&str]) -> String {
        let out = self.connector(args);
        assert!(
            out.status.success(),
            "connector {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.procs.logs()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn wait_online(&self, n: u64) {
        let start = Instant::now();
        loop {
            let out = self.connector(&["health", "--json"]);
            if out.status.success() {
                let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                if v["clients_online"].as_u64() == Some(n) {
                    return;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "clients did not come online\n{}",
                self.procs.logs()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Polls `connector status --json` until every office with targets is done.
    pub fn wait_done(&self, content: &str, offices: usize, limit: Duration) -> Value {
        let start = Instant::now();
        loop {
            let out = self.connector(&["status", content, "--json"]);
            if out.status.success() {
                let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                let list = v["offices"].as_array().cloned().unwrap_or_default();
                let done = list.len() >= offices
                    && list.iter().all(|o| {
                        o["clients_total"].as_u64() > Some(0)
                            && o["clients_done"] == o["clients_total"]
                    });
                if done {
                    return v;
                }
                if start.elapsed() > limit {
                    panic!("not done after {limit:?}: {v:#}\n{}", self.procs.logs());
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    pub fn wan_in(&self) -> Vec<(String, u64)> {
        self.tb
            .wan_counters()
            .unwrap()
            .into_iter()
            .filter(|c| c.dir == Direction::Inbound)
            .map(|c| (c.link, c.bytes))
            .collect()
    }
}

pub fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::fill(&mut v[..]);
    v
}

pub fn publish(d: &Deployment, data: &[u8], url: &str) -> String {
    let file = d.dir.path().join("package.bin");
    std::fs::write(&file, data).unwrap();
    let out = d.connector_ok(&[
        "publish",
        file.to_str().unwrap(),
        "--name",
        "pkg",
        "--origin",
        url,
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["content_id"].as_str().unwrap().to_owned()
}

/// `size` random bytes, served as `pkg.bin` by an origin in the `origin` host and
/// published: the bytes, the origin (it serves while it lives) and the content id.
pub fn published_package(d: &Deployment, size: usize) -> (Vec<u8>, Origin, String) {
    let data = random(size);
    let (origin, url) = Origin::start(&d.tb, "origin", "pkg.bin", data.clone());
    let id = publish(d, &data, &url);
    (data, origin, id)
}

/// Every client's cached copy matches the package.
pub fn check_copies(d: &Deployment, hosts: &[&str], id: &str, data: &[u8]) {
    for h in hosts {
        let out_file = d.dir.path().join(format!("{h}.out"));
        let data_dir = d.dir.path().join(h);
        let mut c = d.tb.command(h, BIN).unwrap();
        c.args([
            "get",
            id,
            "--timeout",
            "120",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--out",
            out_file.to_str().unwrap(),
        ])
        .stdin(Stdio::null());
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "get on {h}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            std::fs::read(&out_file).unwrap() == data,
            "{h}: the copy differs from the package"
        );
    }
}

/// The Branchline topology file for a test-bed topology: the same offices, subnets and
/// parents (an office without `parent` other than the first hangs under the first).
pub fn branchline_topology(topo: &Topology) -> String {
    let mut out = String::new();
    let root = &topo.offices[0].name;
    for (i, o) in topo.offices.iter().enumerate() {
        out.push_str(&format!(
            "[[office]]\nname = \"{}\"\nsubnets = [\"{}\"]\n",
            o.name, o.subnet
        ));
        if i > 0 {
            let parent = o.parent.as_deref().unwrap_or(root);
            out.push_str(&format!("parent = \"{parent}\"\n"));
        }
        out.push('\n');
    }
    out
}

/// Runs `branchline get ID` for `host`'s client, bounded by `limit`; the file's bytes.
pub fn get_file(d: &Deployment, host: &str, id: &str, limit: Duration) -> Result<Vec<u8>, String> {
    let out_file = d.dir.path().join(format!("{host}.get"));
    let data_dir = d.dir.path().join(host);
    let mut c = d.tb.command(host, BIN).unwrap();
    c.args([
        "get",
        id,
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--out",
        out_file.to_str().unwrap(),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return if status.success() {
                std::fs::read(&out_file).map_err(|e| e.to_string())
            } else {
                Err(err)
            };
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("get on {host} did not finish within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Counts datagrams arriving at `addr` (a subnet's broadcast address and port) inside
/// `host` until `stop` is set; SO_REUSEADDR, so a client there still gets them too.
pub fn broadcast_probe(
    tb: &Testbed,
    host: &str,
    addr: std::net::SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<branchline_testbed::Result<u64>> {
    tb.spawn_in(host, move || {
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&addr.into()).unwrap();
        let s: std::net::UdpSocket = s.into();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut n = 0u64;
        let mut buf = [0u8; 2048];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if s.recv_from(&mut buf).is_ok() {
                n += 1;
            }
        }
        n
    })
    .unwrap()
}

/// A sealed small message under the deployment key in `key_file`.
pub fn sealed(key_file: &str, body: branchline_wire::Body) -> Vec<u8> {
    let key = branchline_transport::read_key_file(Path::new(key_file))
        .unwrap()
        .derive();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let envelope = branchline_wire::msg::Envelope {
        msg_id: rand::random::<u64>() | 1,
        sent_at_ms: now,
        in_reply_to: 0,
        body: Some(body),
    };
    branchline_wire::frame::seal(&key, rand::random(), &envelope).unwrap()
}

/// Sends `datagrams` to `to` from inside `host` (an ephemeral port).
pub fn send_from(tb: &Testbed, host: &str, to: std::net::SocketAddr, datagrams: Vec<Vec<u8>>) {
    tb.run_in(host, move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        for d in datagrams {
            s.send_to(&d, to).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .unwrap();
}

/// One client's drop counters as the server sums them (`health --json`'s client_drops).
pub fn client_drops(d: &Deployment) -> std::collections::BTreeMap<String, u64> {
    let v: Value = serde_json::from_str(&d.connector_ok(&["health", "--json"])).unwrap();
    v["client_drops"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}
