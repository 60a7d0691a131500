//! Issue #10's adversary suite: real `branchline` processes on loopback, and a hostile
//! device that holds the deployment key (every device does) but not the connector's
//! credential. Each attack must fail with a clear refusal or a counted drop while the
//! honest parts keep working: publishing or replacing a package, forged key-mismatch
//! notices from another address, 10,000 garbage datagrams at 20k/s, a future-dated flood
//! with spoofed-source replays from other loopback addresses, and 1,000 QUIC connections
//! from one enrolled client. (The transport's own tests of these attacks against a bare
//! requester are in `crates/transport/tests/loopback.rs`.)

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use branchline_transport::{RequestError, Requester};
use branchline_wire::msg::{ContentMeta, ErrorCode, PublishBegin};
use branchline_wire::{Body, connector};

mod common;

use common::*;

fn hostile_requester(bed: &Bed, key: &str, last: u8) -> (tokio::runtime::Runtime, Requester) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let req = key_holder(&rt, key, bed.ip(last).parse().unwrap());
    (rt, req)
}

/// `publish FILE --name app --version 1.0 --origin FILE`.
fn publish_app(file: &str) -> [&str; 8] {
    [
        "publish",
        file,
        "--name",
        "app",
        "--version",
        "1.0",
        "--origin",
        file,
    ]
}

#[test]
fn a_device_with_the_deployment_key_cannot_publish_or_replace_a_package() {
    let bed = Bed::new();
    let (server, key) = bed.started_server();
    let server_addr: SocketAddr = format!("{}:34323", bed.ip(1)).parse().unwrap();

    // The hostile device: deployment key, no credential.
    let (rt, req) = hostile_requester(&bed, &key, 66);
    let meta = ContentMeta {
        content_id: vec![7; 32],
        name: "app".into(),
        version: "2.1".into(),
        size: 1 << 20,
        origin: "/tmp/evil".into(),
        piece_size: 1 << 20,
        ..Default::default()
    };
    let bare = rt.block_on(req.request(
        server_addr,
        Body::PublishBegin(PublishBegin {
            meta: Some(meta.clone()),
            map_len: 100,
        }),
    ));
    let detail = unauthorized(bare);
    assert!(detail.contains("credential"), "{detail}");
    // Signed with a credential it made up, under a name it guessed.
    let forged = connector::signed(
        &[9; 32],
        "admin",
        branchline_server::now_ms(),
        [1; 16],
        Body::PublishBegin(PublishBegin {
            meta: Some(meta),
            map_len: 100,
        }),
    );
    unauthorized(rt.block_on(req.request(server_addr, Body::ConnectorSigned(forged))));
    // Enrolling needs the token, which never travels: a made-up proof is refused.
    let enroll = Body::ConnectorEnroll(branchline_wire::msg::ConnectorEnroll {
        name: "evil".into(),
        nonce: vec![0; 16],
        proof: vec![0; 32],
    });
    let detail = unauthorized(rt.block_on(req.request(server_addr, enroll)));
    assert!(detail.contains("token"), "{detail}");
    // A copy of the key without the credential: the connector command says what is missing.
    let evil_dir = bed.path("evil");
    std::fs::create_dir_all(&evil_dir).unwrap();
    let evil_key = format!("{evil_dir}/deployment.key");
    write_key(&evil_key, &std::fs::read_to_string(&key).unwrap());
    let pkg = bed.path("app.bin");
    let mut data = random_file(Path::new(&pkg), 300_000);
    let out = bed.connector_raw(&evil_key, &publish_app(&pkg));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("activate --token"), "{err}");

    // The honest connector (enrolled with the printed token) publishes app@1.0 ...
    let out = bed.connector(&key, &publish_app(&pkg));
    assert!(out.status.success(), "{out:?}\n{}", server.log());
    // ... and the same name@version with other bytes is refused, even for it.
    let other = bed.path("other.bin");
    data[0] ^= 1;
    std::fs::write(&other, &data).unwrap();
    let out = bed.connector(&key, &publish_app(&other));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("app@1.0 is already published"), "{err}");
    // The token was one-time: enrolling again with it is refused.
    let tokens = bed.path("server/connector.tokens");
    let out = bed.connector_raw(
        &evil_key,
        &[
            "activate",
            "--token",
            "blct1_0000000000000000000000000000000000000000000000000000000000000000",
        ],
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(
        std::fs::read_to_string(&tokens)
            .unwrap_or_default()
            .trim()
            .is_empty(),
        "the used token is gone"
    );
    // The catalogue holds the honest item only.
    let out = bed.connector(&key, &["content", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = list.as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    let h = bed.health(&key).unwrap();
    assert!(h["drops"]["invalid"].as_u64().unwrap_or(0) >= 3, "{h}");
}

/// Forged key-mismatch notices from another address never stop a client daemon: they are
/// counted and ignored, and the client stays online.
#[test]
fn forged_key_mismatch_notices_do_not_stop_a_client() {
    let bed = Bed::new();
    let (server, key) = bed.started_server();
    let client = bed.client(1, &key);
    let procs = [&server, &client];
    bed.wait_online(&key, 1, &procs);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let target: SocketAddr = format!("{}:34324", bed.ip(11)).parse().unwrap();
    rt.block_on(async {
        let ip: IpAddr = bed.ip(66).parse().unwrap();
        let s = tokio::net::UdpSocket::bind((ip, 0)).await.unwrap();
        for _ in 0..1_000 {
            let mut notice = [0u8; 20];
            notice[..4].copy_from_slice(&[b'B', b'L', 1, 2]);
            rand::fill(&mut notice[4..]);
            s.send_to(&notice, target).await.unwrap();
        }
    });
    // Several heartbeats later the client is still there and online.
    std::thread::sleep(Duration::from_secs(2));
    let mut client = client;
    assert!(
        client.child.try_wait().unwrap().is_none(),
        "{}",
        client.log()
    );
    let procs = [&server, &client];
    wait_for(
        "the client still online",
        Duration::from_secs(10),
        &procs,
        || {
            bed.health(&key)
                .filter(|h| h["clients_online"].as_u64() == Some(1))
        },
    );
}

/// The kernel's drop count of the UDP socket bound to `addr` (IPv4), from /proc/net/udp
/// (its last column: datagrams the kernel dropped for that socket, a full receive buffer
/// above all). Per socket, so other traffic on the machine does not disturb it.
fn socket_drops(addr: SocketAddr) -> u64 {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only")
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/udp").unwrap();
    table
        .lines()
        .skip(1)
        .find(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
        .unwrap_or_else(|| panic!("no socket {addr} ({want}) in /proc/net/udp"))
        .split_whitespace()
        .last()
        .unwrap()
        .parse()
        .unwrap()
}

/// `Udp: ... RcvbufErrors` of /proc/net/snmp (machine-wide: informational only).
fn rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|n| n == "RcvbufErrors")
        .unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

fn dropped(h: &serde_json::Value) -> u64 {
    h["dropped_datagrams"].as_u64().unwrap()
}

/// Issue #10's garbage flood: 10,000 garbage datagrams at about 20,000 a second are all
/// counted by the server, and the kernel drops none of them (the small-message socket
/// asks for a 4 MiB receive buffer).
#[test]
fn ten_thousand_garbage_datagrams_at_20k_per_second_are_all_counted() {
    const GARBAGE: u64 = 10_000;
    let bed = Bed::new();
    let (server, key) = bed.started_server();
    let before = bed.health(&key).unwrap();
    let server_addr: SocketAddr = format!("{}:34323", bed.ip(1)).parse().unwrap();
    let (socket_before, snmp_before) = (socket_drops(server_addr), rcvbuf_errors());
    let from: IpAddr = bed.ip(66).parse().unwrap();
    let s = std::net::UdpSocket::bind((from, 0)).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let start = std::time::Instant::now();
    for i in 0..GARBAGE {
        // Random lengths up to the datagram limit; a third look like Branchline
        // datagrams (magic, version, type) with garbage after the header.
        let len = 1 + (next() % 1200) as usize;
        let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 3 == 0 && len >= 4 {
            d[..4].copy_from_slice(&[b'B', b'L', 1, 1]);
        }
        s.send_to(&d, server_addr).unwrap();
        // Paced at 20,000 a second: 100 datagrams every 5 ms.
        if i % 100 == 99 {
            let due = Duration::from_micros((i + 1) * 50);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let after = wait_for(
        "every garbage datagram counted",
        Duration::from_secs(30),
        &[&server],
        || {
            bed.health(&key)
                .filter(|h| dropped(h) >= dropped(&before) + GARBAGE)
        },
    );
    let (socket_after, snmp_after) = (socket_drops(server_addr), rcvbuf_errors());
    println!(
        "sent {GARBAGE} garbage datagrams in {secs:.2} s ({:.0}/s); server counted {}; \
         kernel drops on the server socket {}; machine-wide RcvbufErrors +{}",
        GARBAGE as f64 / secs,
        dropped(&after) - dropped(&before),
        socket_after - socket_before,
        snmp_after - snmp_before
    );
    assert_eq!(dropped(&after) - dropped(&before), GARBAGE, "{after}");
    assert_eq!(
        socket_after, socket_before,
        "the kernel dropped datagrams for the server's socket"
    );
}

fn now_ms() -> u64 {
    branchline_server::now_ms()
}

/// A sealed datagram of `body` dated `sent_at_ms`.
fn sealed_at(key: &str, body: Body, sent_at_ms: u64) -> Vec<u8> {
    let key = branchline_transport::read_key_file(Path::new(key))
        .unwrap()
        .derive();
    let envelope = branchline_wire::Envelope {
        msg_id: rand::random::<u64>() | 1,
        sent_at_ms,
        in_reply_to: 0,
        body: Some(body),
    };
    branchline_wire::frame::seal(&key, rand::random(), &envelope).unwrap()
}

/// A hostile key holder floods the server with messages dated 120 s ahead (which would
/// fill a replay guard that remembered them), and replays one captured request from
/// other loopback addresses (a spoofed source): the future-dated ones are dropped as
/// out of window without an answer, the replays are dropped as duplicates and never
/// answered to the spoofed addresses, and an honest client stays registered throughout
/// and still gets a package.
#[test]
fn future_dated_floods_and_spoofed_source_replays_are_counted_and_never_answered() {
    let bed = Bed::new();
    let (server, key) = bed.started_server();
    let client = bed.client(1, &key);
    let procs = [&server, &client];
    bed.wait_online(&key, 1, &procs);
    let server_addr: SocketAddr = format!("{}:34323", bed.ip(1)).parse().unwrap();
    let before = bed.health(&key).unwrap();
    let count = |h: &serde_json::Value, reason: &str| h["drops"][reason].as_u64().unwrap_or(0);

    // 5,000 messages dated 120 s ahead, each with its own id, from one address.
    let hostile = std::net::UdpSocket::bind((bed.ip(66).parse::<IpAddr>().unwrap(), 0)).unwrap();
    hostile
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    for _ in 0..5_000 {
        let d = sealed_at(&key, Body::Ping(Default::default()), now_ms() + 120_000);
        hostile.send_to(&d, server_addr).unwrap();
    }
    // One genuine request, answered once to its sender ...
    let captured = sealed_at(&key, Body::Ping(Default::default()), now_ms());
    hostile.send_to(&captured, server_addr).unwrap();
    let mut buf = [0u8; 2048];
    let answered = hostile.recv_from(&mut buf);
    assert!(answered.is_ok(), "the genuine ping is answered");
    // ... then replayed from two other loopback addresses, 500 times each.
    let victims: Vec<std::net::UdpSocket> = [67u8, 68]
        .iter()
        .map(|&last| {
            let s =
                std::net::UdpSocket::bind((bed.ip(last).parse::<IpAddr>().unwrap(), 0)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            s
        })
        .collect();
    for v in &victims {
        for _ in 0..500 {
            v.send_to(&captured, server_addr).unwrap();
        }
    }
    let after = wait_for(
        "the flood and the replays counted",
        Duration::from_secs(30),
        &procs,
        || {
            bed.health(&key).filter(|h| {
                count(h, "out_of_window") >= count(&before, "out_of_window") + 5_000
                    && count(h, "duplicate") >= count(&before, "duplicate") + 1_000
            })
        },
    );
    // Nothing was sent to the spoofed sources, nor more to the hostile one.
    for v in &victims {
        assert!(
            v.recv_from(&mut buf).is_err(),
            "a replay from another address was answered"
        );
    }
    assert!(
        hostile.recv_from(&mut buf).is_err(),
        "out-of-window messages were answered"
    );
    println!(
        "out_of_window +{}, duplicate +{}",
        count(&after, "out_of_window") - count(&before, "out_of_window"),
        count(&after, "duplicate") - count(&before, "duplicate")
    );

    // The honest client is still registered and still gets a package.
    assert_eq!(after["clients_online"].as_u64(), Some(1), "{after}");
    let pkg = bed.path("app.bin");
    let data = random_file(Path::new(&pkg), 3 << 20);
    let out = bed.connector(&key, &publish_app(&pkg));
    assert!(out.status.success(), "{out:?}\n{}", server.log());
    let got = bed.path("got.bin");
    let out = run(&[
        "get",
        "app@1.0",
        "--data-dir",
        &bed.path("client1"),
        "--out",
        &got,
    ]);
    assert!(out.status.success(), "{out:?}\n{}", client.log());
    assert_eq!(std::fs::read(&got).unwrap(), data);
}

/// Issue #10's "1,000 QUIC connections": a registered hostile client (a real client
/// process's identity, certificate and all) opens 1,000 QUIC connections at once to an
/// honest client's content port and to the server's large-message port. Each keeps at
/// most 8 of them (the per-identity cap); every other attempt is refused and counted,
/// and an honest client still downloads the package correctly.
#[test]
fn a_thousand_quic_connections_from_one_client_are_refused_beyond_the_cap() {
    use branchline_quic::endpoint::{self, Direction};
    use branchline_quic::{ClientIdentity, DeploymentTrust, Role};

    const ATTEMPTS: usize = 1_000;
    const PER_IDENTITY: usize = branchline_quic::limits::DEFAULT_MAX_PER_PEER;
    let bed = Bed::new();
    let (server, key) = bed.started_server();
    let seeder = bed.client(1, &key);
    let mut hostile = bed.client(3, &key);
    let procs = [&server, &seeder, &hostile];
    bed.wait_online(&key, 2, &procs);
    // The honest client 1 holds a package.
    let pkg = bed.path("app.bin");
    let data = random_file(Path::new(&pkg), 4 << 20);
    let out = bed.connector(&key, &publish_app(&pkg));
    assert!(out.status.success(), "{out:?}");
    let out = run(&["get", "app@1.0", "--data-dir", &bed.path("client1")]);
    assert!(out.status.success(), "{out:?}\n{}", seeder.log());

    // The hostile device: client 3's key and certificate, used by hand.
    hostile.kill9();
    let load = |n: u8| {
        ClientIdentity::load_or_generate(Path::new(&bed.path(&format!("client{n}/identity"))))
            .unwrap()
            .load_certificate(std::time::SystemTime::now())
            .unwrap()
            .expect("a registered client holds a certificate")
    };
    let (node, ca) = load(3);
    let trust = DeploymentTrust::new(node.deployment.clone(), ca);
    let seeder_role = load(1).0.role.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let attack = |target: SocketAddr, role: Role, alpn: &'static [u8]| {
        rt.block_on(async {
            let transport = Arc::new(branchline_quic::transport_config(
                &branchline_quic::TransportSettings::default(),
                &branchline_quic::Congestion::Foreground,
            ));
            let from: IpAddr = bed.ip(66).parse().unwrap();
            let ep = endpoint::bind(
                (from, 0).into(),
                &node,
                &trust,
                alpn,
                transport,
                Direction::Connect,
            )
            .unwrap();
            let mut attempts = tokio::task::JoinSet::new();
            for _ in 0..ATTEMPTS {
                let (ep, trust, role) = (ep.clone(), trust.clone(), role.clone());
                attempts.spawn(async move { endpoint::connect(&ep, target, &role, &trust).await });
            }
            let mut open = Vec::new();
            while let Some(r) = attempts.join_next().await {
                if let Ok((conn, _)) = r.unwrap() {
                    open.push(conn);
                }
            }
            // Connections over the cap are closed right after their handshake.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while open.iter().filter(|c| c.close_reason().is_none()).count() > PER_IDENTITY
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            open.retain(|c| c.close_reason().is_none());
            (ep, open)
        })
    };
    let quic_refusals = |drops: &serde_json::Value| -> u64 {
        drops
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, _)| k.starts_with("quic_"))
                    .map(|(_, v)| v.as_u64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0)
    };

    // Against the honest client's content port (34760).
    let content: SocketAddr = format!("{}:34760", bed.ip(11)).parse().unwrap();
    let (_ep1, kept) = attack(content, seeder_role, branchline_quic::ALPN_CONTENT);
    assert!(kept.len() <= PER_IDENTITY, "kept {}", kept.len());
    // Its refusals reach the server with its heartbeats.
    let procs = [&server, &seeder];
    let h = wait_for(
        "the client's refusals counted",
        Duration::from_secs(30),
        &procs,
        || {
            bed.health(&key)
                .filter(|h| quic_refusals(&h["client_drops"]) >= (ATTEMPTS - kept.len()) as u64)
        },
    );
    println!(
        "content port: {} of {ATTEMPTS} connections kept; client refusals {}",
        kept.len(),
        h["client_drops"]
    );

    // Against the server's large-message port (34333).
    let large: SocketAddr = format!("{}:34333", bed.ip(1)).parse().unwrap();
    let (_ep2, kept_server) = attack(large, Role::Server, branchline_quic::ALPN_LARGE);
    assert!(
        kept_server.len() <= PER_IDENTITY,
        "kept {}",
        kept_server.len()
    );
    let h = bed.health(&key).unwrap();
    assert!(
        quic_refusals(&h["drops"]) >= (ATTEMPTS - kept_server.len()) as u64,
        "{}",
        h["drops"]
    );
    println!(
        "server large port: {} of {ATTEMPTS} connections kept; server refusals {}",
        kept_server.len(),
        h["drops"]
    );

    // While the hostile client holds its connections, an honest client downloads the
    // package correctly.
    let honest = bed.client(2, &key);
    let procs = [&server, &seeder, &honest];
    bed.wait_online(&key, 2, &procs);
    let got = bed.path("got.bin");
    let out = run(&[
        "get",
        "app@1.0",
        "--data-dir",
        &bed.path("client2"),
        "--out",
        &got,
    ]);
    assert!(out.status.success(), "{out:?}\n{}", honest.log());
    assert_eq!(std::fs::read(&got).unwrap(), data);
    drop((kept, kept_server));
}

/// A hostile key holder registering new client ids from one address gets 600 a minute
/// (`server.new_clients_per_source_per_minute`); beyond that each is refused with a
/// clear "retry later" and counted, and an honest client still registers.
#[test]
fn registrations_of_new_ids_from_one_address_are_limited_per_minute() {
    const QUOTA: u64 = branchline_server::quota::DEFAULT_NEW_CLIENTS_PER_SOURCE_PER_MINUTE as u64;
    let bed = Bed::new();
    let (server, key) = bed.started_server();
    let server_addr: SocketAddr = format!("{}:34323", bed.ip(1)).parse().unwrap();
    let (rt, req) = hostile_requester(&bed, &key, 66);
    let register = |n: u64| {
        Body::Register(branchline_wire::msg::Register {
            client_id: format!("{:032x}", 0xbad0_0000_0000u64 + n),
            hostname: format!("fake-{n}"),
            addresses: vec![bed.ip(66)],
            subnet: format!("{}.0/24", bed.net),
            cache_size_bytes: 1 << 30,
            cache_free_bytes: 1 << 29,
            version: "0.1.0".into(),
            heartbeat_interval_ms: 30_000,
            ..Default::default()
        })
    };
    let (mut accepted, mut refused) = (0u64, 0u64);
    let mut reason = String::new();
    rt.block_on(async {
        for n in 0..QUOTA + 50 {
            match req.request(server_addr, register(n)).await {
                Ok(Body::RegisterOk(_)) => accepted += 1,
                Err(RequestError::Refused {
                    code: ErrorCode::Unavailable,
                    detail,
                    ..
                }) => {
                    refused += 1;
                    reason = detail;
                }
                other => panic!("unexpected answer {other:?}"),
            }
        }
    });
    assert_eq!((accepted, refused), (QUOTA, 50), "{reason}");
    assert!(reason.contains("retry later"), "{reason}");
    // A known id registers again freely.
    assert!(matches!(
        rt.block_on(req.request(server_addr, register(0))),
        Ok(Body::RegisterOk(_))
    ));
    let h = bed.health(&key).unwrap();
    assert_eq!(
        h["drops"]["registration_source_quota"].as_u64(),
        Some(50),
        "{h}"
    );
    // An honest client, from its own address, registers and comes online.
    let client = bed.client(1, &key);
    let procs = [&server, &client];
    wait_for(
        "the honest client online",
        Duration::from_secs(30),
        &procs,
        || {
            bed.health(&key)
                .filter(|h| h["clients_online"].as_u64().unwrap_or(0) >= 1)
                .filter(|h| h["clients_total"].as_u64() == Some(QUOTA + 1))
        },
    );
}
