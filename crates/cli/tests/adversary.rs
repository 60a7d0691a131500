//! Issue #10's adversary suite, for what is built so far: real `branchline` processes on
//! loopback, and a hostile device that holds the deployment key (every device does) but
//! not the connector's credential. Each attack must fail with a clear refusal or a counted
//! drop while the honest parts keep working. (Attacks at the transport layer alone, i.e.
//! spoofed-source replays, future-dated floods and forged key-mismatch notices against a
//! requester, are in `crates/transport/tests/loopback.rs`.)

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use branchline_transport::{Context, RequestError, Requester};
use branchline_wire::msg::{ContentMeta, ErrorCode, PublishBegin};
use branchline_wire::{Body, connector};

mod common;

use common::*;

fn hostile_requester(bed: &Bed, key: &str, last: u8) -> (tokio::runtime::Runtime, Requester) {
    let key = branchline_transport::read_key_file(Path::new(key)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ip: IpAddr = bed.ip(last).parse().unwrap();
    let req = rt.block_on(async {
        Requester::new(
            tokio::net::UdpSocket::bind((ip, 0)).await.unwrap(),
            Context::new(vec![key.derive()]),
        )
    });
    (rt, req)
}

fn unauthorized(r: Result<Body, RequestError>) -> String {
    match r {
        Err(RequestError::Refused {
            code: ErrorCode::Unauthorized,
            detail,
            ..
        }) => detail,
        other => panic!("expected an unauthorized refusal, got {other:?}"),
    }
}

#[test]
fn a_device_with_the_deployment_key_cannot_publish_or_replace_a_package() {
    let bed = Bed::new();
    let server = bed.server();
    let key = bed.path("server/deployment.key");
    wait_for("the server", Duration::from_secs(20), &[&server], || {
        bed.health(&key)
    });
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
    let mut data = vec![0u8; 300_000];
    rand::fill(&mut data[..]);
    std::fs::write(&pkg, &data).unwrap();
    let out = bed.connector_raw(
        &evil_key,
        &[
            "publish",
            &pkg,
            "--name",
            "app",
            "--version",
            "1.0",
            "--origin",
            &pkg,
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("activate --token"), "{err}");

    // The honest connector (enrolled with the printed token) publishes app@1.0 ...
    let out = bed.connector(
        &key,
        &[
            "publish",
            &pkg,
            "--name",
            "app",
            "--version",
            "1.0",
            "--origin",
            &pkg,
        ],
    );
    assert!(out.status.success(), "{out:?}\n{}", server.log());
    // ... and the same name@version with other bytes is refused, even for it.
    let other = bed.path("other.bin");
    data[0] ^= 1;
    std::fs::write(&other, &data).unwrap();
    let out = bed.connector(
        &key,
        &[
            "publish",
            &other,
            "--name",
            "app",
            "--version",
            "1.0",
            "--origin",
            &other,
        ],
    );
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
    let server = bed.server();
    let key = bed.path("server/deployment.key");
    wait_for("the server", Duration::from_secs(20), &[&server], || {
        bed.health(&key)
    });
    let client = bed.client(1, &key);
    let procs = [&server, &client];
    wait_for("the client online", Duration::from_secs(30), &procs, || {
        bed.health(&key)
            .filter(|h| h["clients_online"].as_u64() == Some(1))
    });
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
