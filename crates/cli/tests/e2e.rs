//! End-to-end tests with real `branchline` processes on loopback. Every process binds its
//! own 127.x address with the seed's real port numbers; each test picks a random
//! 127.X.Y.0/24 so tests (and test runs) never collide.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

mod common;

use common::*;

fn online(h: &Value) -> (u64, u64) {
    (
        h["clients_online"].as_u64().unwrap(),
        h["clients_total"].as_u64().unwrap(),
    )
}

/// Sum of every drop reason except retransmitted duplicates.
fn garbage_drops(h: &Value) -> u64 {
    h["drops"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.as_str() != "duplicate")
        .map(|(_, v)| v.as_u64().unwrap())
        .sum()
}

#[test]
fn foundation_end_to_end() {
    let bed = Bed::new();
    let mut server = bed.server();
    let key = bed.path("server/deployment.key");
    wait_for(
        "the server's key file",
        Duration::from_secs(20),
        &[&server],
        || Path::new(&key).exists().then_some(()),
    );
    let h = wait_for(
        "the server to answer health",
        Duration::from_secs(20),
        &[&server],
        || bed.health(&key),
    );
    for k in [
        "version",
        "uptime_s",
        "clients_total",
        "clients_online",
        "dropped_datagrams",
    ] {
        assert!(h.get(k).is_some(), "health --json lacks {k}: {h}");
    }
    assert_eq!(online(&h), (0, 0));

    let out = bed.connector(&key, &["activate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("activated"));

    let mut clients: Vec<Proc> = (1..=3).map(|n| bed.client(n, &key)).collect();
    let all: Vec<&Proc> = std::iter::once(&server).chain(clients.iter()).collect();
    wait_for("3 clients online", Duration::from_secs(30), &all, || {
        bed.health(&key).filter(|h| online(h) == (3, 3))
    });
    drop(all);

    // One client dies: the server shows it offline after 3 missed heartbeats.
    clients[0].kill9();
    let all: Vec<&Proc> = std::iter::once(&server).chain(clients.iter()).collect();
    wait_for(
        "2 of 3 clients online",
        Duration::from_secs(30),
        &all,
        || bed.health(&key).filter(|h| online(h) == (2, 3)),
    );
    drop(all);

    // The server is killed without warning and restarted: nothing enrolled is lost and
    // the two live clients come back by themselves.
    server.kill9();
    let server = bed.server();
    let all: Vec<&Proc> = std::iter::once(&server).chain(clients.iter()).collect();
    let h = wait_for(
        "2 clients back after the restart",
        Duration::from_secs(40),
        &all,
        || bed.health(&key).filter(|h| online(h) == (2, 3)),
    );
    assert_eq!(h["connectors_total"].as_u64(), Some(1), "{h}");

    // A wrong key is refused with the key message, not a time-out.
    let wrong = bed.path("wrong.key");
    write_key(&wrong, &format!("blk1_{}\n", "ab".repeat(32)));
    let out = bed.connector(&wrong, &["health"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("deployment key does not match"), "{err}");
    // A client daemon with the wrong key does not exit on the (unauthenticated) notice
    // (issue #10: anyone able to forge the server's address could stop it otherwise): it
    // logs the mismatch and keeps retrying. Before #10 it exited with code 3.
    let mut wrong_client = bed.client(9, &wrong);
    wait_for(
        "the wrong-key client to log the mismatch",
        Duration::from_secs(20),
        &[&wrong_client],
        || {
            std::fs::read_to_string(&wrong_client.log)
                .unwrap_or_default()
                .contains("deployment key does not match")
                .then_some(())
        },
    );
    assert!(
        wrong_client.child.try_wait().unwrap().is_none(),
        "the client kept running\n{}",
        wrong_client.log()
    );
    wrong_client.kill9();

    // 10,000 random datagrams: every one is dropped and counted, the server stays healthy.
    let before = bed.health(&key).unwrap();
    flood(&bed, &key, 10_000);
    let after = bed.health(&key).unwrap();
    assert_eq!(
        garbage_drops(&after) - garbage_drops(&before),
        10_000,
        "before {before}\nafter {after}"
    );
    assert_eq!(online(&after), (2, 3), "{after}");
    assert_eq!(after["database"], "ok");
    drop(all);
}

/// Sends `n` random datagrams to the server's request port: a third pure noise, a third
/// with a valid header and an unknown key id, a third with a valid header and the right
/// key id but a forged body. In batches of 50, each followed by a sealed Ping whose answer
/// proves the batch was processed (loopback keeps order), so the kernel never drops any.
fn flood(bed: &Bed, key_file: &str, n: usize) {
    use branchline_transport::{Context, Requester};
    use branchline_wire::{Body, msg::Ping};
    let key = branchline_transport::read_key_file(Path::new(key_file)).unwrap();
    let key_id = key.derive().id().0.to_be_bytes();
    let server: SocketAddr = format!("{}:34323", bed.ip(1)).parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ip: IpAddr = bed.ip(3).parse().unwrap();
        let noise = tokio::net::UdpSocket::bind((ip, 0)).await.unwrap();
        let req = Requester::new(
            tokio::net::UdpSocket::bind((ip, 34320)).await.unwrap(),
            Context::new(vec![key.derive()]),
        );
        let mut sent = 0;
        while sent < n {
            for _ in 0..50.min(n - sent) {
                let len = rand::random_range(0..1400usize);
                let mut d: Vec<u8> = (0..len).map(|_| rand::random()).collect();
                match sent % 3 {
                    0 => {}
                    kind => {
                        d.resize(d.len().max(40), 0);
                        d[..4].copy_from_slice(&[b'B', b'L', 1, 1]);
                        let id = if kind == 1 {
                            [0xde, 0xad, 0xbe, 0xef]
                        } else {
                            key_id
                        };
                        d[4..8].copy_from_slice(&id);
                    }
                }
                noise.send_to(&d, server).await.unwrap();
                sent += 1;
            }
            req.request(server, Body::Ping(Ping {}))
                .await
                .expect("server answers between batches");
        }
    });
}

#[test]
fn broken_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[client]\nheartbeat_interval_s = \"often\"\n").unwrap();
    let out = run(&[
        "--config",
        cfg.to_str().unwrap(),
        "server",
        "--data-dir",
        dir.path().join("d").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(cfg.to_str().unwrap()), "{err}");
    assert!(err.contains("line 2"), "{err}");
    assert!(err.contains("client.heartbeat_interval_s"), "{err}");
    assert!(
        !dir.path().join("d").exists(),
        "nothing created on a config error"
    );
}

#[test]
fn bad_cache_size_is_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[client]\ncache_size = \"lots\"\n").unwrap();
    let key = dir.path().join("k.key");
    write_key(&key, &format!("blk1_{}\n", "01".repeat(32)));
    let out = run(&[
        "--config",
        cfg.to_str().unwrap(),
        "client",
        "--server",
        "127.0.0.1",
        "--key-file",
        key.to_str().unwrap(),
        "--data-dir",
        dir.path().join("d").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("client.cache_size"), "{err}");
}

#[test]
fn unreachable_server_is_a_clear_error_after_the_deadline() {
    let bed = Bed::new();
    let cfg = bed.path("fast.toml");
    std::fs::write(&cfg, "[transport]\nrequest_deadline_s = 1.0\n").unwrap();
    let key = bed.path("k.key");
    write_key(&key, &format!("blk1_{}\n", "01".repeat(32)));
    let out = run(&[
        "--config",
        &cfg,
        "connector",
        "--server",
        &bed.ip(1),
        "--bind",
        &bed.ip(2),
        "--key-file",
        &key,
        "health",
    ]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no answer from"), "{err}");
    assert!(err.contains("34323"), "{err}");
}

#[test]
fn demo_shows_offices_and_where_the_bytes_came_from() {
    // The demo's offices take A.B.C, A.B.C+1 and A.B.C+2.
    let base = net();
    let (head, last) = base.rsplit_once('.').unwrap();
    let net = format!("{head}.{}", last.parse::<u8>().unwrap().min(250));
    let out = run(&[
        "demo",
        "--clients",
        "3",
        "--net",
        &net,
        "--package-mib",
        "4",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("3 online / 3 enrolled"), "{stdout}");
    // An orderly shutdown is not a task death.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("a serving task stopped"), "{stderr}");
    // One client per office; each office's only client is its RVP. The Central
    // Office's reads the origin, each branch's takes one copy over its WAN link.
    // The distribution table's row (the registration table above it starts alike).
    let row = |name: &str| {
        stdout
            .lines()
            .rfind(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{stdout}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let central = row("central-1");
    assert_eq!(&central[1..4], ["central", "yes", central[3].as_str()]);
    assert_eq!(central[5], "4.0", "origin MiB: {stdout}");
    for office in ["east", "west"] {
        let r = row(&format!("{office}-1"));
        assert_eq!(&r[1..3], [office, "yes"], "{stdout}");
        assert_eq!(r[5], "0.0", "no origin bytes in {office}: {stdout}");
        assert_eq!(r[7], "4.0", "one copy from the parent office: {stdout}");
    }
    assert!(
        stdout.contains("origin read 1.00 x the package size for 3 clients"),
        "{stdout}"
    );
}
