//! Loopback throughput and handshake cost of the QUIC layer.
//!
//! Run: `cargo bench -p branchline-quic --bench loopback`
//!
//! Prints, for Foreground (Cubic) endpoints on 127.0.0.1:
//! - mutual-TLS handshakes per second (sequential connects, each verified both ways);
//! - large-message round trips: a 16 MiB request answered with 16 bytes;
//! - piece fetches: 64 pieces of 1 MiB, 8 requests in flight on one connection.
//!
//! Each figure is the median and [min–max] of `BL_BENCH_REPEAT` runs (default 3).
//!
//! Figures depend on the machine and its load; loopback has no loss and near-zero
//! RTT, so these are upper bounds of the protocol and crypto cost, not WAN figures.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use branchline_quic::{
    ClientIdentity, ClientName, Congestion, ContentConfig, ContentNode, DeploymentCa,
    DeploymentName, DeploymentTrust, HandlerError, LargeConfig, LargeMessaging, NodeIdentity,
    PeerIdentity, PieceError, PieceRequest, PieceSource, Role, TransportSettings, transport_config,
};
use bytes::Bytes;

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
const MIB: f64 = 1024.0 * 1024.0;

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("valid address")
}

/// Median and [min–max] of some runs.
fn spread(mut v: Vec<f64>, digits: usize) -> String {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    format!(
        "{median:.digits$} [{:.digits$}–{:.digits$}]",
        v[0],
        v[n - 1]
    )
}

struct Pieces(HashMap<u32, Bytes>);

impl PieceSource for Pieces {
    async fn read_piece(
        &self,
        _peer: &PeerIdentity,
        _content: &[u8; 32],
        piece: u32,
    ) -> Result<Bytes, PieceError> {
        self.0.get(&piece).cloned().ok_or(PieceError::NotFound)
    }
}

fn client(ca: &DeploymentCa, name: &str, dir: &std::path::Path) -> NodeIdentity {
    let id = ClientIdentity::load_or_generate(dir).expect("key");
    let name = ClientName::new(name).expect("name");
    let now = SystemTime::now();
    let cert = ca
        .issue_client_cert(&name, &id.cert_request().expect("request"), now, YEAR)
        .expect("issue");
    id.install_certificate(
        cert,
        ca.certificate(),
        ca.deployment(),
        &Role::Client(name),
        now,
    )
    .expect("install")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let ca = DeploymentCa::generate(
        DeploymentName::new("bench").expect("name"),
        SystemTime::now(),
        YEAR,
    )
    .expect("ca");
    let trust = DeploymentTrust::new(ca.deployment().clone(), ca.certificate().clone());
    let transport = Arc::new(transport_config(
        &TransportSettings::default(),
        &Congestion::Foreground,
    ));
    let (da, db) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let a_id = client(&ca, "aa01", da.path());
    let b_id = client(&ca, "bb02", db.path());

    // Handshakes.
    let a = ContentNode::bind(
        any_port(),
        &a_id,
        trust.clone(),
        transport.clone(),
        ContentConfig::default(),
    )
    .expect("bind");
    let b = ContentNode::bind(
        any_port(),
        &b_id,
        trust.clone(),
        transport.clone(),
        ContentConfig::default(),
    )
    .expect("bind");
    let pieces: HashMap<u32, Bytes> = (0..64u32)
        .map(|i| (i, Bytes::from(vec![i as u8; 1024 * 1024])))
        .collect();
    let _serving = a.serve(Arc::new(Pieces(pieces)));
    let a_addr = a.endpoint().local_addr().expect("addr");
    let peer = Role::Client(ClientName::new("aa01").expect("name"));
    let repeat: usize = std::env::var("BL_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3usize)
        .max(1);
    let n = 200;
    let mut rates = Vec::new();
    for _ in 0..repeat {
        let start = Instant::now();
        for _ in 0..n {
            let (conn, _) = b.connect(a_addr, &peer).await.expect("connect");
            // Use the connection so the accepting side's verification is included.
            let req = PieceRequest {
                content: [0; 32],
                piece: 0,
                offset: 0,
                len: 1,
            };
            b.fetch(&conn, &req).await.expect("fetch");
            conn.close(0u32.into(), b"");
        }
        rates.push(n as f64 / start.elapsed().as_secs_f64());
    }
    println!(
        "handshake+1-byte fetch, {n} each run: {} per second",
        spread(rates, 0)
    );

    // Pieces, 8 in flight.
    let (conn, _) = b.connect(a_addr, &peer).await.expect("connect");
    let conn = Arc::new(conn);
    let mut rates = Vec::new();
    for _ in 0..repeat {
        let start = Instant::now();
        let mut total = 0usize;
        for batch in 0..8u32 {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..8u32 {
                let conn = conn.clone();
                set.spawn(async move {
                    let req = PieceRequest {
                        content: [0; 32],
                        piece: batch * 8 + i,
                        offset: 0,
                        len: 0,
                    };
                    branchline_quic::fetch_piece(&conn, &req, &ContentConfig::default()).await
                });
            }
            while let Some(r) = set.join_next().await {
                total += r.expect("task").expect("piece").len();
            }
        }
        rates.push(total as f64 / MIB / start.elapsed().as_secs_f64());
    }
    println!(
        "piece fetch: 64 MiB, 1 MiB pieces, 8 in flight: {} MiB/s",
        spread(rates, 0)
    );

    // Large messages: requests of 16 MiB to measure throughput, so both sides allow
    // requests that large (the default is 64 KiB: requests are control messages).
    let roomy = LargeConfig {
        max_request: 16 << 20,
        ..LargeConfig::default()
    };
    let server = LargeMessaging::bind(
        any_port(),
        any_port(),
        &ca.server_identity(SystemTime::now(), YEAR).expect("server"),
        trust.clone(),
        transport.clone(),
        roomy.clone(),
    )
    .expect("bind");
    let dc = tempfile::tempdir().expect("dir");
    let c = LargeMessaging::bind(
        any_port(),
        any_port(),
        &client(&ca, "cc03", dc.path()),
        trust.clone(),
        transport,
        roomy,
    )
    .expect("bind");
    let _answering = server.serve(|_p, r: Bytes| async move {
        Ok::<_, HandlerError>(Bytes::copy_from_slice(&r[..16]))
    });
    let (conn, _) = c
        .connect(
            server.request_endpoint().local_addr().expect("addr"),
            &Role::Server,
        )
        .await
        .expect("connect");
    let request = Bytes::from(vec![7u8; 16 * 1024 * 1024]);
    let rounds = 8;
    let mut rates = Vec::new();
    for _ in 0..repeat {
        let start = Instant::now();
        for _ in 0..rounds {
            let reply = c.request(&conn, request.clone()).await.expect("request");
            assert_eq!(reply.len(), 16);
        }
        let mib = rounds as f64 * request.len() as f64 / MIB;
        rates.push(mib / start.elapsed().as_secs_f64());
    }
    println!(
        "large messages: {rounds} x 16 MiB each run: {} MiB/s",
        spread(rates, 0)
    );
}
