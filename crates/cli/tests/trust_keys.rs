//! Trust model, keys and certificates (issue #10), end to end with real processes on
//! loopback: deployment-key rotation with 5 clients online, certificate renewal with a
//! lifetime of seconds, and a client refusing a server with another CA.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use branchline_wire::msg::{Body, Ping};
use branchline_wire::{DeploymentKey, Envelope, frame};
use serde_json::Value;

mod common;

use common::*;

/// Enrols the connector (admin calls need its credential) with the server's token.
fn enrol(bed: &Bed, key: &str) {
    let tokens = bed.path("server/connector.tokens");
    let out = bed.connector_raw(key, &["activate", "--token-file", &tokens]);
    assert!(out.status.success(), "enrolment: {out:?}");
}

fn json_of(out: &std::process::Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: not JSON ({e})"))
}

fn key_status(bed: &Bed, key: &str) -> Option<Value> {
    let out = bed.connector_raw(key, &["key", "status", "--json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("key status --json prints JSON"))
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Sends one Ping sealed with `key` to the server's request port from `from` and returns
/// the answer datagram, if any came within a second.
fn ping_sealed_with(key: &DeploymentKey, from: &str, server: &str) -> Option<Vec<u8>> {
    let sock = std::net::UdpSocket::bind(format!("{from}:0")).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let env = Envelope {
        msg_id: rand::random_range(1..=u64::MAX),
        sent_at_ms: branchline_server::now_ms(),
        in_reply_to: 0,
        body: Some(Body::Ping(Ping {})),
    };
    let dg = frame::seal(&key.derive(), rand::random(), &env).unwrap();
    sock.send_to(&dg, format!("{server}:34323")).unwrap();
    let mut buf = [0u8; 2048];
    sock.recv_from(&mut buf)
        .ok()
        .map(|(n, _)| buf[..n].to_vec())
}

fn drops(bed: &Bed, key: &str, reason: &str) -> u64 {
    bed.health(key).expect("health")["drops"][reason]
        .as_u64()
        .unwrap_or(0)
}

/// Rotation, end to end: 5 clients online, `key rotate`; none goes offline, `key status`
/// shows all of them moved (each keeps the new key in its data directory, mode 0600), a
/// server restart during the overlap keeps both keys, and after the overlap a message
/// sealed with the old key is refused and counted.
#[test]
fn key_rotation_moves_every_online_client_then_refuses_the_old_key() {
    let bed = Bed::new();
    let mut server = bed.server();
    let server_key = bed.path("server/deployment.key");
    wait_for("the server", Duration::from_secs(20), &[&server], || {
        bed.health(&server_key)
    });
    // The clients get a copy of the key file (and the CA fingerprint beside it), as an
    // admin would hand it out: the rotation must reach them without a new copy.
    std::fs::create_dir_all(bed.path("keys")).unwrap();
    let old_text = std::fs::read_to_string(&server_key).unwrap();
    write_key(bed.path("keys/deployment.key"), &old_text);
    std::fs::copy(
        bed.path("server/deployment.ca"),
        bed.path("keys/deployment.ca"),
    )
    .unwrap();
    let old: DeploymentKey = old_text.parse().unwrap();
    let client_key = bed.path("keys/deployment.key");
    let clients: Vec<Proc> = (1..=5).map(|n| bed.client(n, &client_key)).collect();
    let mut procs: Vec<&Proc> = clients.iter().collect();
    procs.push(&server);
    wait_for("5 clients online", Duration::from_secs(60), &procs, || {
        bed.health(&server_key)
            .filter(|h| h["clients_online"].as_u64() == Some(5))
    });
    enrol(&bed, &server_key);

    let before = key_status(&bed, &server_key).expect("key status");
    assert_eq!(before["current"]["fingerprint"], old.fingerprint().as_str());
    assert!(before["previous"].is_null());

    let rotated = json_of(
        &bed.connector_raw(&server_key, &["key", "rotate", "--overlap", "12", "--json"]),
        "key rotate",
    );
    let new_fp = rotated["current"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_fp, old.fingerprint());
    assert_eq!(
        rotated["previous"]["fingerprint"],
        old.fingerprint().as_str()
    );
    let retire_at = rotated["retire_at_ms"]
        .as_u64()
        .expect("an overlap deadline");
    // The server's key file holds the new key now (mode 0600); never printed.
    let new: DeploymentKey = std::fs::read_to_string(&server_key)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(new.fingerprint(), new_fp);
    assert_eq!(mode(Path::new(&server_key)), 0o600);
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(
        !log.contains(&new.to_text()[5..]),
        "the key is never logged"
    );

    // Every client moves within a few heartbeats, and none goes offline meanwhile.
    let moved = wait_for(
        "5 clients moved to the new key",
        Duration::from_secs(30),
        &procs,
        || {
            let h = bed.health(&server_key)?;
            assert_eq!(
                h["clients_online"].as_u64(),
                Some(5),
                "a client went offline during the rotation"
            );
            key_status(&bed, &server_key).filter(|s| s["clients_moved"].as_u64() == Some(5))
        },
    );
    assert_eq!(moved["clients_online"].as_u64(), Some(5));
    let new_id = moved["current"]["key_id"].as_str().unwrap().to_owned();
    for c in moved["clients"].as_array().unwrap() {
        assert_eq!(c["last_key_id"].as_str(), Some(new_id.as_str()), "{c}");
        assert_eq!(c["moved"], true);
    }
    for n in 1..=5 {
        let f = bed.path(&format!("client{n}/deployment.keys"));
        assert_eq!(mode(Path::new(&f)), 0o600, "{f}");
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(text.contains(&format!("current {}", new.to_text())), "{f}");
    }
    // The table form names both keys.
    let table = bed.connector_raw(&server_key, &["key", "status"]);
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(
        table.contains(&new_fp) && table.contains(&old.fingerprint()),
        "{table}"
    );
    assert!(table.contains("5 moved / 5 online"), "{table}");

    // A restart during the overlap keeps both keys and the same deadline.
    server.kill9();
    let server = bed.server();
    let mut procs: Vec<&Proc> = clients.iter().collect();
    procs.push(&server);
    let status = wait_for(
        "the restarted server",
        Duration::from_secs(20),
        &procs,
        || key_status(&bed, &server_key),
    );
    assert_eq!(
        status["previous"]["fingerprint"],
        old.fingerprint().as_str()
    );
    assert_eq!(status["retire_at_ms"].as_u64(), Some(retire_at));
    assert!(
        ping_sealed_with(&old, &bed.ip(60), &bed.ip(1)).is_some(),
        "during the overlap the old key is still accepted"
    );
    wait_for(
        "5 clients online again",
        Duration::from_secs(60),
        &procs,
        || {
            bed.health(&server_key)
                .filter(|h| h["clients_online"].as_u64() == Some(5))
        },
    );

    // After the overlap the old key is retired.
    wait_for(
        "the old key retired",
        Duration::from_secs(30),
        &procs,
        || key_status(&bed, &server_key).filter(|s| s["previous"].is_null()),
    );
    assert!(branchline_server::now_ms() >= retire_at);
    let wrong_before = drops(&bed, &server_key, "wrong_key");
    let answer = ping_sealed_with(&old, &bed.ip(61), &bed.ip(1));
    // The only answer to the old key is a 20-byte key-mismatch notice naming the new key.
    let answer = answer.expect("a key-mismatch notice");
    assert_eq!(answer.len(), frame::HEADER_LEN);
    match frame::open(&[], &answer).unwrap() {
        branchline_wire::Incoming::KeyMismatch { responder_key, .. } => {
            assert_eq!(responder_key, new.derive().id())
        }
        other => panic!("expected a key-mismatch notice, got {other:?}"),
    }
    let wrong_after = wait_for("the counted drop", Duration::from_secs(10), &procs, || {
        let n = drops(&bed, &server_key, "wrong_key");
        (n > wrong_before).then_some(n)
    });
    assert!(wrong_after > wrong_before);
    assert!(
        ping_sealed_with(&new, &bed.ip(62), &bed.ip(1)).is_some(),
        "the new key is answered"
    );
    // The clients stay online on the new key alone.
    wait_for(
        "5 clients online after retirement",
        Duration::from_secs(30),
        &procs,
        || {
            let s = key_status(&bed, &server_key)?;
            (s["clients_online"].as_u64() == Some(5) && s["clients_moved"].as_u64() == Some(5))
                .then_some(())
        },
    );
    // ... and drop the old key at their next heartbeat.
    wait_for(
        "every client to drop the old key",
        Duration::from_secs(30),
        &procs,
        || {
            (1..=5)
                .all(|n| {
                    std::fs::read_to_string(bed.path(&format!("client{n}/deployment.keys")))
                        .is_ok_and(|t| !t.contains("previous"))
                })
                .then_some(())
        },
    );
    // A connector still holding the old key gets an error that says what to do.
    let stale = bed.connector_raw(&client_key, &["health"]);
    assert_eq!(stale.status.code(), Some(3), "{stale:?}");
    let msg = String::from_utf8_lossy(&stale.stderr);
    assert!(
        msg.contains("rotated") && msg.contains("key status"),
        "{msg}"
    );
}

/// Renewal: with a certificate lifetime of 6 s, a client renews (its certificate file
/// changes, it logs the renewal) and keeps serving: a second client started after the
/// first certificate had expired downloads a package from it (the origin is gone by then).
#[test]
fn certificates_renew_and_the_client_keeps_serving_peers() {
    let bed = Bed::new();
    let config = bed.path("short-certs.toml");
    std::fs::write(&config, "[server]\nclient_cert_lifetime_s = 6.0\n").unwrap();
    let server = bed.server_with(&["--config", &config]);
    let key = bed.path("server/deployment.key");
    wait_for("the server", Duration::from_secs(20), &[&server], || {
        bed.health(&key)
    });
    let c1 = bed.client(1, &key);
    let cert = bed.path("client1/identity/identity.crt");
    let first = wait_for(
        "client 1's certificate",
        Duration::from_secs(30),
        &[&server, &c1],
        || std::fs::read_to_string(&cert).ok(),
    );
    let issued = Instant::now();

    // A package whose origin is a local file, fetched by client 1.
    let src = bed.path("pkg.bin");
    let mut data = vec![0u8; 3 << 20];
    rand::fill(&mut data[..]);
    std::fs::write(&src, &data).unwrap();
    let out = bed.connector(&key, &["publish", &src, "--name", "pkg", "--json"]);
    let id = json_of(&out, "publish")["content_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let get = |n: u8| {
        let out = Command::new(BIN)
            .args(["get", &id, "--json", "--data-dir"])
            .arg(bed.path(&format!("client{n}")))
            .arg("--out")
            .arg(bed.path(&format!("out{n}.bin")))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        json_of(&out, &format!("get on client {n}"))
    };
    get(1);

    // Renewed before it expires, and again after that: the file changes.
    let renewed = wait_for(
        "client 1 to renew its certificate",
        Duration::from_secs(30),
        &[&server, &c1],
        || std::fs::read_to_string(&cert).ok().filter(|c| *c != first),
    );
    assert_ne!(renewed, first);
    assert!(
        std::fs::read_to_string(&c1.log)
            .unwrap()
            .contains("certificate renewed"),
        "{}",
        c1.log()
    );
    // Past the first certificate's end (6 s after issue, plus margin), with the origin
    // gone: only client 1 can serve the package, with a certificate it got since.
    while issued.elapsed() < Duration::from_secs(9) {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::remove_file(&src).unwrap();
    let c2 = bed.client(2, &key);
    wait_for(
        "2 clients online",
        Duration::from_secs(30),
        &[&server, &c1, &c2],
        || {
            bed.health(&key)
                .filter(|h| h["clients_online"].as_u64() == Some(2))
        },
    );
    let got = get(2);
    assert_eq!(got["from_peers"].as_u64(), Some(data.len() as u64), "{got}");
    assert_eq!(got["from_origin"].as_u64(), Some(0), "{got}");
    assert_eq!(std::fs::read(bed.path("out2.bin")).unwrap(), data);
    assert_ne!(std::fs::read_to_string(&cert).unwrap(), first);
}

/// CA pinning: a client refuses a server presenting another CA than the one it pinned,
/// whether pinned at its first registration or by `deployment.ca` beside its key file.
#[test]
fn a_client_refuses_a_server_with_another_ca() {
    let bed = Bed::new();
    let server_a = bed.server();
    let key_a = bed.path("server/deployment.key");
    wait_for("server A", Duration::from_secs(20), &[&server_a], || {
        bed.health(&key_a)
    });
    // The key alone in its own directory: client 1 pins at its first registration.
    std::fs::create_dir_all(bed.path("bare")).unwrap();
    let key_text = std::fs::read_to_string(&key_a).unwrap();
    write_key(bed.path("bare/deployment.key"), &key_text);
    let bare_key = bed.path("bare/deployment.key");
    let mut c1 = bed.client(1, &bare_key);
    let pinned = bed.path("client1/identity/ca.crt");
    wait_for(
        "client 1 registered with A",
        Duration::from_secs(30),
        &[&server_a, &c1],
        || {
            bed.health(&key_a)
                .filter(|h| h["clients_online"].as_u64() == Some(1))
        },
    );
    let ca_a = std::fs::read_to_string(&pinned).unwrap();
    let cert_a = std::fs::read_to_string(bed.path("client1/identity/identity.crt")).unwrap();
    c1.kill9();
    drop(server_a);

    // Server B: same address and the same deployment key, but its own CA (an impostor
    // that got hold of the key, or a rebuilt server).
    let data_b = bed.path("server-b");
    std::fs::create_dir_all(&data_b).unwrap();
    write_key(bed.path("server-b/deployment.key"), &key_text);
    let server_b = Proc::spawn(
        bed.dir.path(),
        "server-b",
        &["server", "--data-dir", &data_b, "--bind", &bed.ip(1)],
    );
    let key_b = bed.path("server-b/deployment.key");
    wait_for("server B", Duration::from_secs(20), &[&server_b], || {
        bed.health(&key_b)
    });
    assert_ne!(
        std::fs::read_to_string(bed.path("server/deployment.ca")).unwrap(),
        std::fs::read_to_string(bed.path("server-b/deployment.ca")).unwrap()
    );

    // Client 1 again: it refuses B's CA and keeps what it had.
    let mut c1 = bed.client(1, &bare_key);
    wait_for(
        "client 1 to refuse B's CA",
        Duration::from_secs(30),
        &[&server_b, &c1],
        || {
            let log = std::fs::read_to_string(&c1.log).ok()?;
            log.contains("different certificate authority")
                .then_some(())
        },
    );
    let log = std::fs::read_to_string(&c1.log).unwrap();
    assert!(log.contains("pinned") && log.contains("ca.crt"), "{log}");
    assert_eq!(std::fs::read_to_string(&pinned).unwrap(), ca_a);
    assert_eq!(
        std::fs::read_to_string(bed.path("client1/identity/identity.crt")).unwrap(),
        cert_a,
        "no certificate from B was installed"
    );

    // Client 2, new, given A's key file with A's CA fingerprint beside it: refuses B at
    // its very first registration and stores nothing from it.
    let mut c2 = bed.client(2, &key_a);
    wait_for(
        "client 2 to refuse B's CA",
        Duration::from_secs(30),
        &[&server_b, &c2],
        || {
            let log = std::fs::read_to_string(&c2.log).ok()?;
            log.contains("different certificate authority")
                .then_some(())
        },
    );
    assert!(
        std::fs::read_to_string(&c2.log)
            .unwrap()
            .contains("deployment.ca beside the key file"),
        "{}",
        c2.log()
    );
    assert!(!Path::new(&bed.path("client2/identity/ca.crt")).exists());
    assert!(!Path::new(&bed.path("client2/identity/identity.crt")).exists());
    // Both daemons keep running (a refusal is not fatal).
    for p in [&mut c1, &mut c2] {
        assert!(p.child.try_wait().unwrap().is_none(), "{} exited", p.name);
    }
}
