//! Content on one LAN, end to end: a server, 6 clients and an HTTP origin that counts the
//! bytes it serves, all real processes (the origin runs in this test) on loopback.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use branchline_client::local::{LocalReply, LocalRequest};
use serde_json::Value;

mod common;

use common::*;

fn get_proc(bed: &Bed, n: u8, content: &str, out: &Path) -> Child {
    Command::new(BIN)
        .args([
            "get",
            content,
            "--json",
            // Bounds `finish`: a download that stalls fails the test with `get`'s
            // message instead of hanging it.
            "--timeout",
            "600",
            "--data-dir",
            &bed.path(&format!("client{n}")),
        ])
        .args(["--out", out.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a `get` process (bounded), returns its JSON answer.
fn finish(child: Child, what: &str, procs: &[&Proc]) -> Value {
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        let logs: Vec<String> = procs.iter().map(|p| p.log()).collect();
        panic!(
            "{what} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            logs.join("\n")
        );
    }
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wait_registered(bed: &Bed, key: &str, n: u64, procs: &[&Proc]) {
    bed.wait_online(key, n, procs);
    // The QUIC services start right after registration.
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn content_on_one_lan() {
    // A 64 MiB package behind the HTTP origin, published by the connector.
    const SIZE: usize = 64 << 20;
    let Lan {
        bed,
        server,
        key,
        origin,
        data,
        id,
    } = lan(SIZE, "pkg", &["--version", "1"]);
    assert_eq!(
        origin.server.bytes_served(),
        0,
        "publishing reads the local file, not the origin"
    );

    // Publishing the same bytes again is idempotent: same id, nothing new.
    let again = bed.connector_json(
        &key,
        &[
            "publish",
            &bed.path("pkg.bin"),
            "--name",
            "pkg",
            "--version",
            "1",
            "--json",
        ],
    );
    assert_eq!(again["content_id"], id.as_str());
    assert_eq!(again["new"], false);

    let clients: Vec<Proc> = (1..=6).map(|n| bed.client(n, &key)).collect();
    let mut all: Vec<&Proc> = vec![&server];
    all.extend(clients.iter());
    wait_registered(&bed, &key, 6, &all);

    // All six ask at once; one reads the origin, the others take pieces as they arrive.
    let outs: Vec<PathBuf> = (1..=6)
        .map(|n| PathBuf::from(bed.path(&format!("out{n}"))))
        .collect();
    let gets: Vec<Child> = (1..=6u8)
        .map(|n| get_proc(&bed, n, "pkg@1", &outs[n as usize - 1]))
        .collect();
    let mut from_peers = 0;
    for (i, g) in gets.into_iter().enumerate() {
        let v = finish(g, &format!("get on client {}", i + 1), &all);
        assert_eq!(v["content_id"], id.as_str());
        assert_eq!(v["size"].as_u64(), Some(SIZE as u64));
        from_peers += v["from_peers"].as_u64().unwrap();
    }
    for (i, out) in outs.iter().enumerate() {
        let got = std::fs::read(out).unwrap();
        assert!(
            got == data,
            "client {} output differs from the source",
            i + 1
        );
    }
    let served = origin.server.bytes_served_for("pkg.bin");
    assert!(
        served as f64 <= 1.05 * SIZE as f64,
        "origin served {served} bytes for a {SIZE}-byte package"
    );
    assert!(
        from_peers >= 5 * SIZE as u64 * 95 / 100,
        "most bytes came from peers: {from_peers}"
    );

    // The catalogue now shows six complete copies.
    let out = bed.connector(&key, &["content", "list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["complete_holders"].as_u64(), Some(6), "{list}");

    // Corrupt every piece of clients 1-5's cached copies on disk: a seventh client still
    // gets a correct file (from client 6 or the origin), and nobody passes a bad piece on.
    for n in 1..=5 {
        let f = PathBuf::from(bed.path(&format!("client{n}/cache/v1/{id}/data")));
        let mut bytes = std::fs::read(&f).unwrap();
        for i in (0..bytes.len()).step_by(64 * 1024) {
            bytes[i] ^= 0xff;
        }
        std::fs::write(&f, bytes).unwrap();
    }
    let seventh = bed.client(7, &key);
    let mut all2 = all.clone();
    all2.push(&seventh);
    wait_registered(&bed, &key, 7, &all2);
    let out7 = PathBuf::from(bed.path("out7"));
    let v = finish(get_proc(&bed, 7, &id, &out7), "get on client 7", &all2);
    assert_eq!(v["size"].as_u64(), Some(SIZE as u64));
    assert!(
        std::fs::read(&out7).unwrap() == data,
        "client 7 output differs"
    );
    // The corrupted clients that were asked for a piece stop claiming a complete copy.
    wait_for(
        "corrupted copies to be withdrawn",
        Duration::from_secs(30),
        &all2,
        || {
            let out = bed.connector(&key, &["content", "list", "--json"]);
            let list: Value = serde_json::from_slice(&out.stdout).ok()?;
            (list[0]["complete_holders"].as_u64()? < 7).then_some(())
        },
    );
    let server_log = std::fs::read_to_string(&server.log).unwrap();
    assert!(
        !server_log.contains("bad piece"),
        "a corrupted cache passed a bad piece on:\n{server_log}"
    );
    drop(all2);
    drop(seventh);
    drop(all);
    drop(clients);
    drop(server);
}

#[test]
fn the_server_sends_content_it_holds_to_central_office_clients() {
    let bed = Bed::new();
    let cfg = bed.path("server.toml");
    std::fs::write(&cfg, "[server]\ncontent_cache_size = \"1GiB\"\n").unwrap();
    let (server, key) = bed.started_server_with(&["--config", &cfg]);
    // A package published with a file origin this host can read: the server keeps a copy.
    const SIZE: usize = 24 << 20;
    let src = PathBuf::from(bed.path("pkg.bin"));
    let data = random_file(&src, SIZE);
    let id = bed.connector_json(
        &key,
        &["publish", src.to_str().unwrap(), "--name", "held", "--json"],
    )["content_id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for(
        "the server to hold the package",
        Duration::from_secs(60),
        &[&server],
        || {
            let out = bed.connector(&key, &["content", "list", "--json"]);
            let list: Value = serde_json::from_slice(&out.stdout).ok()?;
            (list[0]["server_holds"] == true).then_some(())
        },
    );

    let clients: Vec<Proc> = (1..=2).map(|n| bed.client(n, &key)).collect();
    let mut all: Vec<&Proc> = vec![&server];
    all.extend(clients.iter());
    wait_registered(&bed, &key, 2, &all);
    let outs: Vec<PathBuf> = (1..=2)
        .map(|n| PathBuf::from(bed.path(&format!("out{n}"))))
        .collect();
    let gets: Vec<Child> = (1..=2u8)
        .map(|n| get_proc(&bed, n, &id, &outs[n as usize - 1]))
        .collect();
    let mut from_server = 0;
    for (i, g) in gets.into_iter().enumerate() {
        let v = finish(g, &format!("get on client {}", i + 1), &all);
        assert_eq!(
            v["from_origin"].as_u64(),
            Some(0),
            "a Central Office client never reads the origin: {v}"
        );
        from_server += v["from_server"].as_u64().unwrap();
    }
    for out in &outs {
        assert!(std::fs::read(out).unwrap() == data);
    }
    assert!(from_server > 0, "the server sent pieces");
}

/// Reads local-API progress lines until `have_bytes` reaches `at_least`; returns it.
fn watch_progress(sock: &Path, content: &str, at_least: u64, limit: Duration) -> u64 {
    use std::io::{BufRead, BufReader, Write};
    let deadline = Instant::now() + limit;
    let mut s = loop {
        match std::os::unix::net::UnixStream::connect(sock) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("cannot connect to {}: {e}", sock.display()),
        }
    };
    let mut req = serde_json::to_vec(&LocalRequest {
        get: content.into(),
    })
    .unwrap();
    req.push(b'\n');
    s.write_all(&req).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    for line in BufReader::new(s).lines() {
        match serde_json::from_str::<LocalReply>(&line.unwrap()).unwrap() {
            LocalReply::Progress(p) if p.have_bytes >= at_least => return p.have_bytes,
            LocalReply::Progress(_) => {}
            other => panic!("finished before it could be interrupted: {other:?}"),
        }
    }
    panic!("the progress stream ended");
}

#[test]
fn killed_client_resumes_without_fetching_verified_pieces_again() {
    // Small pieces make a long enough download to interrupt on any machine.
    const SIZE: usize = 48 << 20;
    let Lan {
        bed,
        server,
        key,
        origin,
        data,
        id,
    } = lan(SIZE, "big", &["--piece-size", "16384"]);

    // The origin stops sending after a fifth of the package, so the download is
    // interrupted at a known point however fast this machine is.
    origin.server.hold_after(SIZE as u64 / 5);
    let mut client = bed.client(1, &key);
    wait_registered(&bed, &key, 1, &[&server, &client]);
    let sock = PathBuf::from(bed.path("client1/client.sock"));
    let had = watch_progress(&sock, &id, SIZE as u64 / 10, Duration::from_secs(120));
    client.kill9();
    origin.server.release();
    assert!(had < SIZE as u64, "interrupted before the end");

    let client = bed.client(1, &key);
    wait_registered(&bed, &key, 1, &[&server, &client]);
    let out = PathBuf::from(bed.path("out"));
    let v = finish(
        get_proc(&bed, 1, &id, &out),
        "get after restart",
        &[&server, &client],
    );
    assert!(std::fs::read(&out).unwrap() == data);
    let fetched = v["from_peers"].as_u64().unwrap() + v["from_origin"].as_u64().unwrap();
    assert!(
        fetched <= SIZE as u64 - had,
        "after restart fetched {fetched} bytes, but {had} of {SIZE} were already verified"
    );
    let served = origin.server.bytes_served_for("pkg.bin");
    assert!(
        served as f64 <= 1.05 * SIZE as f64,
        "origin served {served}"
    );
}

#[test]
fn a_server_restarted_mid_download_keeps_one_origin_reader() {
    // 4 clients get 256 MiB; the server is killed with kill -9 once the origin has sent a
    // quarter, and started again two seconds later.
    const SIZE: usize = 256 << 20;
    let Lan {
        bed,
        mut server,
        key,
        origin,
        data,
        id,
    } = lan(SIZE, "big", &["--version", "1"]);
    let clients: Vec<Proc> = (1..=4).map(|n| bed.client(n, &key)).collect();
    let mut all: Vec<&Proc> = vec![&server];
    all.extend(clients.iter());
    wait_registered(&bed, &key, 4, &all);
    let outs: Vec<PathBuf> = (1..=4)
        .map(|n| PathBuf::from(bed.path(&format!("out{n}.bin"))))
        .collect();
    let gets: Vec<Child> = (1..=4u8)
        .map(|n| get_proc(&bed, n, &id, &outs[usize::from(n) - 1]))
        .collect();
    let start = Instant::now();
    while origin.server.bytes_served_for("pkg.bin") < (SIZE / 4) as u64 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the origin read never began"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill9();
    let served_at_kill = origin.server.bytes_served_for("pkg.bin");
    std::thread::sleep(Duration::from_secs(2));
    let server = bed.server();
    let all: Vec<&Proc> = std::iter::once(&server).chain(clients.iter()).collect();
    for (n, g) in gets.into_iter().enumerate() {
        let v = finish(g, &format!("get on client {}", n + 1), &all);
        assert_eq!(v["size"], SIZE as u64);
        assert!(std::fs::read(&outs[n]).unwrap() == data, "client {}", n + 1);
    }
    let served = origin.server.bytes_served_for("pkg.bin");
    println!(
        "origin served {:.3} x ({:.3} x when the server was killed)",
        served as f64 / SIZE as f64,
        served_at_kill as f64 / SIZE as f64
    );
    assert!(
        served as f64 <= 1.05 * SIZE as f64,
        "origin served {:.3} x the package",
        served as f64 / SIZE as f64
    );
}

/// `GET /metrics` from a client's loopback metrics port.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// The value of one sample line (`name{labels} value`) in a scrape.
fn sample(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}")) as u64
}

#[test]
fn client_metrics_count_where_the_bytes_came_from() {
    const SIZE: usize = 8 << 20;
    let Lan {
        bed,
        server,
        key,
        origin: _origin,
        data,
        id,
    } = lan(SIZE, "metered", &["--version", "1"]);
    let port = |n: u8| 35800 + u16::from(n);
    let clients: Vec<Proc> = (1..=2u8)
        .map(|n| bed.client_with(&[], n, &key, &["--metrics-port", &port(n).to_string()]))
        .collect();
    let mut all: Vec<&Proc> = vec![&server];
    all.extend(clients.iter());
    wait_registered(&bed, &key, 2, &all);
    let before = scrape(&format!("{}:{}", bed.ip(11), port(1)));
    assert_eq!(
        sample(
            &before,
            "branchline_client_fetched_bytes_total{source=\"origin\"}"
        ),
        0
    );
    for n in 1..=2u8 {
        let out = PathBuf::from(bed.path(&format!("m{n}.bin")));
        let v = finish(get_proc(&bed, n, &id, &out), "get", &all);
        assert_eq!(v["size"], SIZE as u64);
        assert!(std::fs::read(&out).unwrap() == data);
    }
    let (a, b) = (
        scrape(&format!("{}:{}", bed.ip(11), port(1))),
        scrape(&format!("{}:{}", bed.ip(12), port(2))),
    );
    let fetched = |t: &str, s: &str| {
        sample(
            t,
            &format!("branchline_client_fetched_bytes_total{{source=\"{s}\"}}"),
        )
    };
    // The first reads the origin; the second takes everything from it (one office).
    assert_eq!(
        fetched(&a, "origin") + fetched(&a, "lan"),
        SIZE as u64,
        "{a}"
    );
    assert_eq!(
        fetched(&b, "origin") + fetched(&b, "lan"),
        SIZE as u64,
        "{b}"
    );
    assert_eq!(fetched(&a, "origin") + fetched(&b, "origin"), SIZE as u64);
    assert!(
        sample(&a, "branchline_client_served_bytes_total")
            + sample(&b, "branchline_client_served_bytes_total")
            >= SIZE as u64
    );
    assert_eq!(
        sample(&a, "branchline_client_cache_items{state=\"complete\"}"),
        1
    );
    assert_eq!(sample(&a, "branchline_client_downloads_active"), 0);
    // The text passes Prometheus's own check.
    for text in [&a, &b] {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (Debian package prometheus; .ci/apt-packages.txt lists it)");
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn json_logs_carry_the_client_content_and_office() {
    const SIZE: usize = 2 << 20;
    let Lan {
        bed,
        server,
        key,
        origin: _origin,
        data,
        id,
    } = lan(SIZE, "logged", &["--version", "1"]);
    let client = bed.client_with(&["--log-format", "json"], 1, &key, &[]);
    wait_registered(&bed, &key, 1, &[&server, &client]);
    let out = PathBuf::from(bed.path("logged.bin"));
    finish(get_proc(&bed, 1, &id, &out), "get", &[&server, &client]);
    assert!(std::fs::read(&out).unwrap() == data);
    let log = std::fs::read_to_string(&client.log).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let spans_of = |v: &Value| v["spans"].as_array().cloned().unwrap_or_default();
    let with = |field: &str| {
        lines
            .iter()
            .any(|v| spans_of(v).iter().any(|s| s.get(field).is_some()))
    };
    assert!(with("client"), "no line carries the client id:\n{log}");
    let download = lines.iter().find(|v| {
        spans_of(v)
            .iter()
            .any(|s| s["content"] == id.as_str() && s.get("office").is_some())
    });
    assert!(
        download.is_some(),
        "no line carries the content id and office:\n{log}"
    );
}

/// A tmpfs mounted on a directory for one test, unmounted when dropped (also when the
/// test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, bytes: u64) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs(dir.to_owned())
    }

    fn resize(&self, bytes: u64) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "growing the test tmpfs failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
#[ignore = "needs root: mounts a small tmpfs as a client's data directory"]
fn a_full_disk_pauses_a_download_that_ends_intact_once_there_is_room() {
    // 12 MiB of 256 KiB pieces onto a 4 MiB disk: the writer hits ENOSPC with pieces
    // queued; they must go back to the pool, and nothing recorded may be lost.
    const SIZE: usize = 12 << 20;
    let Lan {
        bed,
        server,
        key,
        origin,
        data,
        id,
    } = lan(SIZE, "big", &["--piece-size", "262144"]);
    let disk = Tmpfs::mount(Path::new(&bed.path("client1")), 4 << 20);
    let client = bed.client_with(
        &[],
        1,
        &key,
        &["--hostname", "client-1", "--cache-size", "1GiB"],
    );
    wait_registered(&bed, &key, 1, &[&server, &client]);
    let out = PathBuf::from(bed.path("out"));
    let get = get_proc(&bed, 1, &id, &out);
    wait_for(
        "the download to pause on the full disk",
        Duration::from_secs(120),
        &[&server, &client],
        || {
            client
                .log()
                .contains("disk full: download paused")
                .then_some(())
        },
    );
    disk.resize(64 << 20);
    let v = finish(get, "get once the disk grew", &[&server, &client]);
    assert!(std::fs::read(&out).unwrap() == data, "the file is intact");
    assert_eq!(v["size"].as_u64(), Some(SIZE as u64), "{v}");
    // The pieces that were waiting for the disk were fetched again, from the only
    // source: the origin served more than once, but at most what could wait.
    let served = origin.server.bytes_served_for("pkg.bin");
    assert!(served >= SIZE as u64, "origin served {served}");
    assert!(
        served <= (SIZE + (64 << 20)) as u64,
        "origin served {served}"
    );
    drop(client);
}
