//! Offices on the multi-office test bed (network namespaces; root only): real `branchline`
//! processes in the hosts of `four-offices.toml` (a Central Office, two child offices and
//! a grandchild behind one of them; 20 Mbit/s links), an HTTP origin that counts what it
//! serves, and the link counters of the test bed.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use branchline_origin::testserver::CountingServer;
use branchline_testbed::{Direction, Testbed, Topology};
use rand::RngCore;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_branchline");

fn topology(name: &str) -> Topology {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testbed/topologies")
        .join(name);
    Topology::from_file(&path).expect("topology")
}

/// Processes started in test-bed hosts, killed when the test ends however it ends.
struct Procs(Vec<(String, Child, std::path::PathBuf)>);

impl Procs {
    fn spawn(&mut self, tb: &Testbed, dir: &Path, host: &str, name: &str, args: &[&str]) {
        let log = dir.join(format!("{name}.log"));
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
    fn kill(&mut self, name: &str) {
        if let Some((_, c, _)) = self.0.iter_mut().find(|(n, _, _)| n == name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    fn logs(&self) -> String {
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
struct Origin {
    server: Arc<CountingServer>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<branchline_testbed::Result<()>>>,
}

impl Origin {
    fn start(tb: &Testbed, host: &str, name: &str, data: Vec<u8>) -> (Origin, String) {
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
struct Deployment {
    tb: Testbed,
    dir: tempfile::TempDir,
    procs: Procs,
    key: String,
    server_ip: String,
}

impl Deployment {
    fn start(topo: &Topology, clients: &[&str]) -> Deployment {
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
        let start = Instant::now();
        while !key.exists() {
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
        };
        for c in clients {
            d.client(c);
        }
        d
    }

    fn client(&mut self, host: &str) {
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

    fn connector(&self, args: &[&str]) -> std::process::Output {
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

    fn connector_ok(&self, args: &[&str]) -> String {
        let out = self.connector(args);
        assert!(
            out.status.success(),
            "connector {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.procs.logs()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn wait_online(&self, n: u64) {
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
    fn wait_done(&self, content: &str, offices: usize, limit: Duration) -> Value {
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

    fn wan_in(&self) -> Vec<(String, u64)> {
        self.tb
            .wan_counters()
            .unwrap()
            .into_iter()
            .filter(|c| c.dir == Direction::Inbound)
            .map(|c| (c.link, c.bytes))
            .collect()
    }
}

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rng().fill_bytes(&mut v);
    v
}

const TOPOLOGY: &str = r#"
[[office]]
name = "central"
subnets = ["198.18.1.0/24"]

[[office]]
name = "north"
parent = "central"
subnets = ["198.18.2.0/24"]

[[office]]
name = "south"
parent = "central"
subnets = ["198.18.3.0/24"]

[[office]]
name = "deep"
parent = "north"
subnets = ["198.18.4.0/24"]
"#;

fn publish(d: &Deployment, data: &[u8], url: &str) -> String {
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

/// Every client's cached copy matches the package.
fn check_copies(d: &Deployment, hosts: &[&str], id: &str, data: &[u8]) {
    for h in hosts {
        let out_file = d.dir.path().join(format!("{h}.out"));
        let data_dir = d.dir.path().join(h);
        let mut c = d.tb.command(h, BIN).unwrap();
        c.args([
            "get",
            id,
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

const CLIENTS: [&str; 12] = [
    "hq1", "hq2", "hq3", "n1", "n2", "n3", "s1", "s2", "s3", "d1", "d2", "d3",
];

#[test]
#[ignore = "needs root: network namespaces"]
fn deploy_to_all_crosses_each_link_once() {
    let topo = topology("four-offices.toml");
    let d = Deployment::start(&topo, &CLIENTS);
    d.wait_online(CLIENTS.len() as u64);
    let file = d.dir.path().join("topology.toml");
    std::fs::write(&file, TOPOLOGY).unwrap();
    d.connector_ok(&["topology", "apply", file.to_str().unwrap()]);
    let size = 32 << 20;
    let data = random(size);
    let (origin, url) = Origin::start(&d.tb, "origin", "pkg.bin", data.clone());
    let id = publish(&d, &data, &url);
    let before = d.wan_in();
    let started = Instant::now();
    d.connector_ok(&["deploy", &id, "--to", "all"]);
    let status = d.wait_done(&id, 4, Duration::from_secs(300));
    let took = started.elapsed();
    let after = d.wan_in();
    let show = d.connector_ok(&["topology", "show"]);
    println!(
        "deployed in {:.1} s\n{status:#}\n{show}",
        took.as_secs_f64()
    );
    check_copies(&d, &CLIENTS, &id, &data);
    let served = origin.server.bytes_served_for("pkg.bin");
    println!("origin served {:.3} x", served as f64 / size as f64);
    assert!(
        served as f64 <= 1.02 * size as f64,
        "origin served {served} bytes for a {size}-byte package"
    );
    for (link, bytes) in &after {
        let b0 = before
            .iter()
            .find(|(l, _)| l == link)
            .map(|(_, b)| *b)
            .unwrap_or(0);
        let ratio = (bytes - b0) as f64 / size as f64;
        println!("link {link}: {ratio:.3} x the package inbound (frames)");
        assert!(
            ratio <= 1.06,
            "link {link} carried {ratio:.3} x the package\n{}",
            d.procs.logs()
        );
    }
    // Only the RVP of an office takes bytes over its WAN link: every office outside the
    // Central Office took about one copy over WAN, and its other clients took theirs
    // from office peers.
    for o in status["offices"].as_array().unwrap() {
        let wan = o["bytes_wan_in"].as_u64().unwrap();
        if o["office"] == "central" {
            assert_eq!(wan, 0);
            continue;
        }
        assert!(
            wan as f64 <= 1.02 * size as f64 && wan >= size as u64 / 2,
            "office {}: {wan} bytes over WAN",
            o["office"]
        );
        assert!(o["bytes_origin"].as_u64() == Some(0), "{o}");
    }
    drop(origin);
}

#[test]
#[ignore = "needs root: network namespaces"]
fn a_killed_rvp_is_replaced_and_its_office_completes() {
    let topo = topology("four-offices.toml");
    let hosts = ["hq1", "n1", "n2", "n3"];
    let mut d = Deployment::start(&topo, &hosts);
    d.wait_online(hosts.len() as u64);
    let file = d.dir.path().join("topology.toml");
    std::fs::write(&file, TOPOLOGY).unwrap();
    d.connector_ok(&["topology", "apply", file.to_str().unwrap()]);
    let size = 32 << 20;
    let data = random(size);
    let (origin, url) = Origin::start(&d.tb, "origin", "pkg.bin", data.clone());
    let id = publish(&d, &data, &url);
    let before = d.wan_in();
    d.connector_ok(&["deploy", &id, "--to", "all"]);
    // Find north's RVP once it has pulled about a third, and kill it.
    let start = Instant::now();
    let rvp = loop {
        let out = d.connector(&["status", &id, "--json"]);
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            let north = v["offices"]
                .as_array()
                .and_then(|l| l.iter().find(|o| o["office"] == "north").cloned());
            if let Some(n) = north
                && n["bytes_wan_in"].as_u64().unwrap_or(0) > (size as u64) / 3
                && let Some(r) = n["rvp"].as_str()
            {
                break r.split(' ').next().unwrap().to_owned();
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "north's RVP never got a third\n{}",
            d.procs.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("killing north's RVP {rvp}");
    d.procs.kill(&rvp);
    let rest: Vec<&str> = hosts.iter().copied().filter(|h| *h != rvp).collect();
    // The office completes without it (the killed client no longer counts as online).
    let start = Instant::now();
    loop {
        let out = d.connector(&["status", &id, "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let north_done = v["offices"].as_array().is_some_and(|l| {
            l.iter()
                .any(|o| o["office"] == "north" && o["clients_done"].as_u64() == Some(2))
        });
        if north_done {
            println!("{v:#}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "north did not complete: {v:#}\n{}",
            d.procs.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    check_copies(&d, &rest, &id, &data);
    let after = d.wan_in();
    let north = |l: &Vec<(String, u64)>| l.iter().find(|(n, _)| n == "north").unwrap().1;
    let ratio = (north(&after) - north(&before)) as f64 / size as f64;
    println!("north's link carried {ratio:.3} x the package");
    assert!(ratio <= 1.2, "north's link carried {ratio:.3} x");
    drop(origin);
}

#[test]
#[ignore = "needs root: network namespaces"]
fn topology_errors_name_the_office_and_field_and_exit_2() {
    let topo = topology("four-offices.toml");
    let d = Deployment::start(&topo, &[]);
    for (text, office, field) in [
        (
            "[[office]]\nname = \"a\"\n[[office]]\nname = \"b\"\nparent = \"c\"\n[[office]]\nname = \"c\"\nparent = \"b\"\n",
            "bc",
            "parent",
        ),
        (
            "[[office]]\nname = \"a\"\nsubnets = [\"10.0.0.0/16\"]\n[[office]]\nname = \"b\"\nparent = \"a\"\nsubnets = [\"10.0.1.0/24\"]\n",
            "b",
            "subnets",
        ),
        (
            "[[office]]\nname = \"a\"\n[[office]]\nname = \"b\"\nparent = \"nowhere\"\n",
            "b",
            "parent",
        ),
    ] {
        let file = d.dir.path().join("bad.toml");
        std::fs::write(&file, text).unwrap();
        let out = d.connector(&["topology", "apply", file.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        let names_office = office.chars().any(|o| err.contains(&format!("\"{o}\"")));
        assert!(names_office && err.contains(field), "{err}");
    }
}

const THREE_OFFICES: &str = r#"
[[office]]
name = "hq"
subnets = ["198.18.0.0/24"]

[[office]]
name = "east"
parent = "hq"
subnets = ["198.18.10.0/24"]

[[office]]
name = "west"
parent = "hq"
subnets = ["198.18.20.0/24"]
"#;

#[test]
#[ignore = "needs root: network namespaces"]
fn a_slow_lossy_link_completes_with_one_copy() {
    // West: 4 Mbit/s, 64 kB of queue, 60 ms each way, 0.5 % loss.
    let topo = topology("three-offices.toml");
    let hosts = ["hq1", "hq2", "e1", "e2", "e3", "e4", "w1", "w2"];
    let d = Deployment::start(&topo, &hosts);
    d.wait_online(hosts.len() as u64);
    let file = d.dir.path().join("topology.toml");
    std::fs::write(&file, THREE_OFFICES).unwrap();
    d.connector_ok(&["topology", "apply", file.to_str().unwrap()]);
    let size = 8 << 20;
    let data = random(size);
    let (origin, url) = Origin::start(&d.tb, "origin", "pkg.bin", data.clone());
    let id = publish(&d, &data, &url);
    let before = d.wan_in();
    let started = Instant::now();
    d.connector_ok(&["deploy", &id, "--to", "all"]);
    let status = d.wait_done(&id, 3, Duration::from_secs(300));
    println!(
        "deployed in {:.1} s\n{status:#}",
        started.elapsed().as_secs_f64()
    );
    check_copies(&d, &hosts, &id, &data);
    let after = d.wan_in();
    let west = |l: &Vec<(String, u64)>| l.iter().find(|(n, _)| n == "west").unwrap().1;
    let ratio = (west(&after) - west(&before)) as f64 / size as f64;
    println!("west's link carried {ratio:.3} x the package");
    assert!(ratio <= 1.1, "west's link carried {ratio:.3} x");
    let served = origin.server.bytes_served_for("pkg.bin");
    assert!(
        served as f64 <= 1.02 * size as f64,
        "origin served {served}"
    );
}

#[test]
#[ignore = "needs root: network namespaces"]
fn a_link_outside_its_hours_carries_nothing_until_they_begin() {
    let topo = topology("four-offices.toml");
    let hosts = ["hq1", "s1", "s2"];
    let d = Deployment::start(&topo, &hosts);
    d.wait_online(hosts.len() as u64);
    // South's window opens at the next whole minute (UTC), at least 15 s from now.
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut open_at = (now_s / 60 + 1) * 60;
    if open_at - now_s < 15 {
        open_at += 60;
    }
    let hm = |t: u64| format!("{:02}:{:02}", (t / 3600) % 24, (t / 60) % 60);
    let hours = format!("{}-{}", hm(open_at), hm(open_at + 3 * 3600));
    let text = TOPOLOGY.replace(
        "subnets = [\"198.18.3.0/24\"]\n",
        &format!("subnets = [\"198.18.3.0/24\"]\n[office.wan]\nhours = \"{hours}\"\n"),
    );
    let file = d.dir.path().join("topology.toml");
    std::fs::write(&file, text).unwrap();
    d.connector_ok(&["topology", "apply", file.to_str().unwrap()]);
    let size = 8 << 20;
    let data = random(size);
    let (_origin, url) = Origin::start(&d.tb, "origin", "pkg.bin", data.clone());
    let id = publish(&d, &data, &url);
    let before = d.wan_in();
    d.connector_ok(&["deploy", &id, "--to", "all"]);
    let south = |l: &Vec<(String, u64)>| l.iter().find(|(n, _)| n == "south").unwrap().1;
    // Until the window opens, the link carries under 1 % of the package.
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        if now + 2 >= open_at {
            break;
        }
        let carried = south(&d.wan_in()) - south(&before);
        assert!(
            (carried as f64) < 0.01 * size as f64,
            "{carried} bytes crossed south's link before {hours}\n{}",
            d.procs.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let carried_closed = south(&d.wan_in()) - south(&before);
    println!("south carried {carried_closed} bytes while closed; window {hours} UTC");
    d.wait_done(&id, 2, Duration::from_secs(240));
    check_copies(&d, &hosts, &id, &data);
    let ratio = (south(&d.wan_in()) - south(&before)) as f64 / size as f64;
    println!("south carried {ratio:.3} x after its window opened");
    assert!(ratio <= 1.1);
}
