//! Issue #10, identities, revocation and checked reports, end to end: a real server and
//! real clients (`branchline` processes on loopback), an HTTP origin that counts what it
//! serves, and a hostile device run by the test itself. The device holds the deployment
//! key and enrolls like any client (so it has a certificate and speaks QUIC), then tries:
//! taking over another client's id, getting an honest peer dropped with bad-peer reports,
//! stopping origin reads with false `complete` claims, and, once revoked, fetching pieces
//! from peers. Each attempt must fail while the honest clients download the same package
//! correctly.

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use branchline_quic::{
    CertificateDer, ClientIdentity, ClientName, Congestion, ContentConfig, ContentNode,
    DeploymentName, DeploymentTrust, LargeConfig, LargeMessaging, PieceRequest, Role,
    TransportSettings, transport_config,
};
use branchline_transport::{RequestError, Requester};
use branchline_wire::large::{
    LargeRequest, LargeResponse, Locate, Locations, ReportBadPeer, ReportHave, Request, Response,
};
use branchline_wire::msg::{Register, RegisterOk};
use branchline_wire::{Body, ClientId};
use prost::Message as _;
use serde_json::Value;

mod common;

use common::*;

const SIZE: usize = 4 << 20;

/// `branchline get` through client `n`'s daemon; the file's bytes.
fn get(bed: &Bed, n: u8, content: &str, procs: &[&Proc]) -> Vec<u8> {
    let out_path = bed.path(&format!("got-{n}.bin"));
    let out = Command::new(BIN)
        .args([
            "get",
            content,
            "--json",
            "--timeout",
            "90",
            "--data-dir",
            &bed.path(&format!("client{n}")),
            "--out",
            &out_path,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if !out.status.success() {
        let logs: Vec<String> = procs.iter().map(|p| p.log()).collect();
        panic!(
            "get on client {n} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            logs.join("\n")
        );
    }
    std::fs::read(out_path).unwrap()
}

/// User and system CPU time a daemon has used so far (`/proc/<pid>/stat`), in seconds.
fn cpu_seconds(p: &Proc) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", p.child.id())).unwrap();
    // The fields after the command name (in parentheses, which may hold spaces):
    // utime and stime are fields 14 and 15 of the whole line, in clock ticks.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // In USER_HZ ticks, which Linux fixes at 100 for /proc on every architecture we
    // run on.
    ticks as f64 / 100.0
}

/// `connector client list --json`, by hostname.
fn identities(bed: &Bed, key: &str) -> Vec<Value> {
    let v = bed.connector_json(key, &["client", "list", "--json"]);
    v["clients"].as_array().unwrap().clone()
}

fn identity_of(bed: &Bed, key: &str, host: &str) -> Option<Value> {
    identities(bed, key)
        .into_iter()
        .find(|c| c["hostname"] == host)
}

/// The hostile (or soon revoked) device: the deployment key, its own client key, and,
/// once registered, a certificate for QUIC.
struct Device {
    rt: tokio::runtime::Runtime,
    req: Requester,
    ip: IpAddr,
    id: ClientId,
    identity: ClientIdentity,
    server: IpAddr,
    quic: Option<(LargeMessaging, ContentNode)>,
    _dir: tempfile::TempDir,
}

impl Device {
    fn new(bed: &Bed, key: &str, last: u8, id: ClientId) -> Device {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let ip: IpAddr = bed.ip(last).parse().unwrap();
        let req = key_holder(&rt, key, ip);
        let dir = tempfile::tempdir().unwrap();
        let identity = ClientIdentity::load_or_generate(dir.path()).unwrap();
        Device {
            rt,
            req,
            ip,
            id,
            identity,
            server: bed.ip(1).parse().unwrap(),
            quic: None,
            _dir: dir,
        }
    }

    /// Registers (claiming `claimed` as its address) and, given a certificate, binds
    /// its QUIC endpoints.
    fn register(&mut self, claimed: IpAddr) -> Result<RegisterOk, RequestError> {
        let net = self.ip.to_string();
        let net = net.rsplit_once('.').unwrap().0;
        let body = Body::Register(Register {
            client_id: self.id.to_string(),
            hostname: "hostile".into(),
            addresses: vec![claimed.to_string()],
            subnet: format!("{net}.0/24"),
            cache_size_bytes: 1 << 30,
            cache_free_bytes: 1 << 30,
            version: "0.1.0".into(),
            // Online for as long as the test runs without heartbeating.
            heartbeat_interval_ms: 600_000,
            ports: None,
            cert_request: self.identity.cert_request().unwrap().encode().to_vec(),
        });
        let server = SocketAddr::new(self.server, 34323);
        let ok = match self.rt.block_on(self.req.request(server, body))? {
            Body::RegisterOk(ok) => ok,
            other => panic!("unexpected answer to Register: {other:?}"),
        };
        if !ok.client_cert.is_empty() && self.quic.is_none() {
            let deployment = DeploymentName::new(ok.deployment.clone()).unwrap();
            let ca = CertificateDer::from(ok.ca_cert.clone());
            let role = Role::Client(ClientName::from_id(&self.id.0).unwrap());
            let node = self
                .identity
                .install_certificate(
                    CertificateDer::from(ok.client_cert.clone()),
                    &ca,
                    &deployment,
                    &role,
                    std::time::SystemTime::now(),
                )
                .unwrap();
            let trust = DeploymentTrust::new(deployment, ca.into_owned());
            let transport = Arc::new(transport_config(
                &TransportSettings::default(),
                &Congestion::Foreground,
            ));
            let _g = self.rt.enter();
            let large = LargeMessaging::bind(
                SocketAddr::new(self.ip, 0),
                SocketAddr::new(self.ip, 0),
                &node,
                trust.clone(),
                transport.clone(),
                LargeConfig::default(),
            )
            .unwrap();
            let content = ContentNode::bind(
                SocketAddr::new(self.ip, 0),
                &node,
                trust,
                transport,
                ContentConfig::default(),
            )
            .unwrap();
            self.quic = Some((large, content));
        }
        Ok(ok)
    }

    /// One large request to the server, over a fresh connection.
    fn call(&self, request: Request) -> Result<Response, String> {
        let (large, _) = self.quic.as_ref().expect("registered with a certificate");
        let bytes = LargeRequest {
            request: Some(request),
        }
        .encode_to_vec();
        self.rt.block_on(async {
            let (conn, _) = large
                .connect(SocketAddr::new(self.server, 34333), &Role::Server)
                .await
                .map_err(|e| e.to_string())?;
            let answer = large
                .request(&conn, bytes.into())
                .await
                .map_err(|e| e.to_string())?;
            conn.close(0u32.into(), b"done");
            LargeResponse::decode(answer)
                .map_err(|e| e.to_string())?
                .response
                .ok_or_else(|| "empty answer".to_string())
        })
    }

    fn locate(&self, content: &str) -> Locations {
        match self.call(Request::Locate(Locate {
            content_id: hex32(content).to_vec(),
            ..Default::default()
        })) {
            Ok(Response::Locations(l)) => l,
            other => panic!("unexpected answer to Locate: {other:?}"),
        }
    }

    /// Fetches piece 0 of `content` from client `peer` at `ip`:34760 over a new
    /// connection. The piece's length, or why it failed.
    fn fetch(&self, ip: &str, peer: &str, content: &str) -> Result<usize, String> {
        let (_, node) = self.quic.as_ref().expect("registered with a certificate");
        let addr: SocketAddr = format!("{ip}:34760").parse().unwrap();
        let role = Role::Client(ClientName::new(peer.to_owned()).unwrap());
        let request = PieceRequest {
            content: hex32(content),
            piece: 0,
            offset: 0,
            len: 0,
        };
        self.rt.block_on(async {
            let (conn, _) =
                tokio::time::timeout(Duration::from_secs(10), node.connect(addr, &role))
                    .await
                    .map_err(|_| "connect timed out".to_string())?
                    .map_err(|e| format!("handshake refused: {e}"))?;
            let got = tokio::time::timeout(Duration::from_secs(10), node.fetch(&conn, &request))
                .await
                .map_err(|_| "fetch timed out".to_string())?
                .map_err(|e| format!("fetch refused: {e}"));
            conn.close(0u32.into(), b"done");
            got.map(|b| b.len())
        })
    }
}

fn hex32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

fn random_id() -> ClientId {
    ClientId(rand::random())
}

#[test]
fn another_clients_id_cannot_be_taken_over() {
    let Lan {
        bed,
        server,
        key,
        data,
        id,
        origin: _origin,
    } = lan(SIZE, "pkg", &["--version", "1"]);
    let victim = bed.client(1, &key);
    bed.wait_online(&key, 1, &[&server, &victim]);
    let before = wait_for(
        "the victim's identity",
        Duration::from_secs(20),
        &[&server, &victim],
        || identity_of(&bed, &key, "client-1"),
    );
    assert_eq!(before["state"], "active");
    let victim_id: ClientId = before["client_id"].as_str().unwrap().parse().unwrap();

    // The hostile device registers the victim's id (listed in every Locate answer)
    // with its own key, claiming the victim's address too.
    let mut hostile = Device::new(&bed, &key, 66, victim_id);
    let detail = unauthorized(hostile.register(bed.ip(11).parse().unwrap()));
    assert!(
        detail.contains("bound to another key") && detail.contains("client reset"),
        "{detail}"
    );
    assert!(hostile.quic.is_none(), "no certificate for the hostile key");

    // The victim is unaffected: same key, same address, still downloading.
    let after = identity_of(&bed, &key, "client-1").unwrap();
    assert_eq!(after["key_fingerprint"], before["key_fingerprint"]);
    assert_eq!(after["state"], "active");
    let out = bed.connector_raw(&key, &["clients", "--json"]);
    let clients: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = clients["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == victim_id.to_string())
        .unwrap()
        .clone();
    assert_eq!(row["address"], bed.ip(11), "{row}");
    assert_eq!(get(&bed, 1, &id, &[&server, &victim]), data);

    // An admin reset lets the id bind again: the victim's own daemon re-registers at
    // its next heartbeat and is bound to its (same) key again.
    let out = bed.connector_raw(&key, &["client", "reset", &victim_id.to_string()]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("now unbound"));
    let again = wait_for(
        "the victim's new binding",
        Duration::from_secs(30),
        &[&server, &victim],
        || identity_of(&bed, &key, "client-1"),
    );
    assert_eq!(again["key_fingerprint"], before["key_fingerprint"]);
}

#[test]
fn one_hostile_reporter_cannot_get_an_honest_peer_dropped() {
    let Lan {
        bed,
        server,
        key,
        origin,
        data,
        id,
    } = lan(SIZE, "pkg", &["--version", "1"]);
    let honest = bed.client(1, &key);
    let other = bed.client(2, &key);
    bed.wait_online(&key, 2, &[&server, &honest, &other]);
    assert_eq!(get(&bed, 1, &id, &[&server, &honest]), data);
    let honest_id = identity_of(&bed, &key, "client-1").unwrap()["client_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Two hostile ids on one device (one address): each is named the honest peer, and
    // each reports it bad again and again.
    let mut hostiles = Vec::new();
    for _ in 0..2 {
        let mut h = Device::new(&bed, &key, 66, random_id());
        h.register(bed.ip(66).parse().unwrap()).unwrap();
        let l = h.locate(&id);
        assert!(
            l.peers
                .iter()
                .any(|p| p.client_id == honest_id && p.complete),
            "the honest peer is offered: {l:?}"
        );
        for _ in 0..10 {
            let r = h.call(Request::ReportBadPeer(ReportBadPeer {
                content_id: hex32(&id).to_vec(),
                peer_id: honest_id.clone(),
                reason: "piece 0 failed BLAKE3 verification".into(),
            }));
            assert!(matches!(r, Ok(Response::Ack(_))), "{r:?}");
        }
        hostiles.push(h);
    }
    // The honest peer is still offered...
    let l = hostiles[0].locate(&id);
    assert!(
        l.peers.iter().any(|p| p.client_id == honest_id),
        "one reporter dropped an honest peer: {l:?}"
    );
    // ...and the next honest client takes the package from it, not from the origin.
    let served = origin.server.bytes_served();
    assert_eq!(get(&bed, 2, &id, &[&server, &honest, &other]), data);
    assert_eq!(
        origin.server.bytes_served(),
        served,
        "client 2 fetched from its peer"
    );
    assert!(server.log().contains("bad-peer report counted"));
}

#[test]
fn false_complete_claims_do_not_stop_origin_reads() {
    let Lan {
        bed,
        server,
        key,
        origin,
        data,
        id,
    } = lan(SIZE, "pkg", &["--version", "1"]);
    // Before anyone holds the package, a hostile device claims it holds all of it (and
    // serves nothing).
    let mut hostile = Device::new(&bed, &key, 66, random_id());
    hostile.register(bed.ip(66).parse().unwrap()).unwrap();
    let r = hostile.call(Request::ReportHave(ReportHave {
        content_id: hex32(&id).to_vec(),
        complete: true,
        ..Default::default()
    }));
    assert!(matches!(r, Ok(Response::Ack(_))), "{r:?}");

    // Honest clients still get it: the first from the origin (the claim counted for
    // nothing), the second from the first.
    let c1 = bed.client(1, &key);
    let c2 = bed.client(2, &key);
    // The hostile device counts as online (it announced a 10-minute heartbeat).
    bed.wait_online(&key, 3, &[&server, &c1, &c2]);
    let got = std::thread::scope(|scope| {
        let fetching = scope.spawn(|| get(&bed, 1, &id, &[&server, &c1]));
        // For the claim's first 20 s nothing can be fetched (the hostile peer never
        // answers, and the origin waits for the claim to prove itself): client 1 must
        // wait asleep. Its download loop once spun on a wake-up time in the past,
        // burning a core; asleep it uses a few milliseconds of CPU in this window.
        std::thread::sleep(Duration::from_secs(3));
        let before = cpu_seconds(&c1);
        std::thread::sleep(Duration::from_secs(5));
        let used = cpu_seconds(&c1) - before;
        println!("client 1 used {used:.3} s of CPU in 5 s while waiting");
        assert!(
            used < 1.0,
            "client 1 used {used:.2} s of CPU in 5 s while waiting\n{}",
            c1.log()
        );
        fetching.join().unwrap()
    });
    assert_eq!(got, data);
    let read = origin.server.bytes_served();
    assert!(read >= SIZE as u64, "the origin was read: {read} bytes");
    assert_eq!(get(&bed, 2, &id, &[&server, &c1, &c2]), data);
    // The hostile device is still offered as a "complete" peer, but served nothing.
    let l = hostile.locate(&id);
    assert!(l.peers.iter().any(|p| p.complete), "{l:?}");
}

#[test]
fn a_revoked_client_cannot_fetch_from_any_peer() {
    let Lan {
        bed,
        server,
        key,
        data,
        id,
        origin: _origin,
    } = lan(SIZE, "pkg", &["--version", "1"]);
    let c1 = bed.client(1, &key);
    let c2 = bed.client(2, &key);
    bed.wait_online(&key, 2, &[&server, &c1, &c2]);
    let procs = [&server, &c1, &c2];
    assert_eq!(get(&bed, 1, &id, &procs), data);
    let c1_id = identity_of(&bed, &key, "client-1").unwrap()["client_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The device to be revoked is an enrolled client: it fetches from client 1.
    let mut r = Device::new(&bed, &key, 66, random_id());
    r.register(bed.ip(66).parse().unwrap()).unwrap();
    assert_eq!(
        r.fetch(&bed.ip(11), &c1_id, &id),
        Ok(1 << 20),
        "an enrolled client fetches pieces"
    );

    let out = bed.connector_raw(&key, &["client", "revoke", &r.id.to_string()]);
    assert!(
        out.status.success(),
        "revoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("now revoked"));
    // The server refuses it at once.
    let detail = unauthorized(r.register(bed.ip(66).parse().unwrap()));
    assert!(detail.contains("revoked"), "{detail}");
    let listed = identities(&bed, &key)
        .into_iter()
        .find(|c| c["client_id"] == r.id.to_string())
        .unwrap();
    assert_eq!(listed["state"], "revoked");

    // Client 1 refuses it within a heartbeat interval (0.3 s) of its next heartbeat;
    // polled with a generous bound.
    // (A timeout on this busy machine proves nothing either way: asked again.)
    let answer = |ip: &str, peer: &str| {
        wait_for(
            "an answer from the peer",
            Duration::from_secs(60),
            &procs,
            || match r.fetch(ip, peer, &id) {
                Err(e) if e.contains("timed out") => None,
                other => Some(other),
            },
        )
    };
    let refused = wait_for(
        "client 1 to refuse the revoked client",
        Duration::from_secs(30),
        &procs,
        || answer(&bed.ip(11), &c1_id).err(),
    );
    assert!(refused.contains("refused"), "{refused}");
    // Other clients still download, and client 2 refuses it too once it has pieces.
    assert_eq!(get(&bed, 2, &id, &procs), data);
    let c2_id = identity_of(&bed, &key, "client-2").unwrap()["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let last = answer(&bed.ip(12), &c2_id);
    assert!(last.is_err(), "client 2 served a revoked client: {last:?}");
    assert!(c1.log().contains("revocation list updated"), "{}", c1.log());
}

#[test]
fn in_approve_mode_a_new_client_waits_for_the_admin() {
    let bed = Bed::new();
    let config = bed.path("approve.toml");
    std::fs::write(&config, "[server]\nenrollment = \"approve\"\n").unwrap();
    let (server, key) = bed.started_server_with(&["--config", &config]);
    // The connector enrols (its credential is needed for `client` commands).
    let tokens = bed.path("server/connector.tokens");
    let out = bed.connector_raw(&key, &["activate", "--token-file", &tokens]);
    assert!(out.status.success(), "{out:?}");

    let c1 = bed.client(1, &key);
    let pending = wait_for(
        "the new client to be pending",
        Duration::from_secs(30),
        &[&server, &c1],
        || identity_of(&bed, &key, "client-1").filter(|i| i["state"] == "pending"),
    );
    wait_for(
        "the client to say it waits",
        Duration::from_secs(30),
        &[&server, &c1],
        || {
            c1.log()
                .contains("waiting for the admin's approval")
                .then_some(())
        },
    );
    // Not enrolled meanwhile: no record, nobody is given it, it gets no certificate.
    let h = bed.health(&key).unwrap();
    assert_eq!(h["clients_total"], 0, "{h}");
    assert!(!c1.log().contains("QUIC services started"));

    let id = pending["client_id"].as_str().unwrap();
    let out = bed.connector_raw(&key, &["client", "approve", id]);
    assert!(
        out.status.success(),
        "approve: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bed.wait_online(&key, 1, &[&server, &c1]);
    wait_for(
        "the approved client's QUIC services",
        Duration::from_secs(30),
        &[&server, &c1],
        || c1.log().contains("QUIC services started").then_some(()),
    );
    assert_eq!(
        identity_of(&bed, &key, "client-1").unwrap()["state"],
        "active"
    );
    // Approving twice says so.
    let out = bed.connector_raw(&key, &["client", "approve", id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already active"));
}
