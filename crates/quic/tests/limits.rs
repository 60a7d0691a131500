//! Real-socket tests of the accepting endpoints' bounds ([`branchline_quic::limits`]):
//! a hostile enrolled client opening 1,000 connections, stalling requests and sending
//! oversized ones is refused with counted drops while an honest client keeps fetching.
//! Loopback only (127.0.0.1, port 0).

use std::sync::Arc;
use std::time::Duration;

use branchline_quic::endpoint;
use branchline_quic::{
    AcceptLimits, AcceptStats, ClientName, Congestion, ContentConfig, ContentNode, LargeConfig,
    LargeMessaging, PeerIdentity, PieceError, PieceRequest, PieceSource, Refusal, Role,
    TransportSettings, fetch_piece, transport_config,
};
use bytes::Bytes;
use quinn::TransportConfig;

mod common;
use common::{Deployment, any_port};

/// Safety net against hangs.
const GUARD: Duration = Duration::from_secs(120);
const CONTENT: [u8; 32] = [9; 32];
const HOSTILE_CONNECTIONS: usize = 1000;

fn transport() -> Arc<TransportConfig> {
    let settings = TransportSettings {
        idle_timeout: Duration::from_secs(20),
        keep_alive: Some(Duration::from_secs(1)),
        ..TransportSettings::default()
    };
    Arc::new(transport_config(&settings, &Congestion::Foreground))
}

fn piece_bytes() -> Bytes {
    (0..300_000u32)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(5))
        .collect::<Vec<u8>>()
        .into()
}

struct OnePiece(Bytes);

impl PieceSource for OnePiece {
    async fn read_piece(
        &self,
        _peer: &PeerIdentity,
        content: &[u8; 32],
        piece: u32,
    ) -> Result<Bytes, PieceError> {
        if *content == CONTENT && piece == 0 {
            Ok(self.0.clone())
        } else {
            Err(PieceError::NotFound)
        }
    }
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Polls `done` every 20 ms until it holds or `limit` passes.
async fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_of_one_identity_are_refused_beyond_the_cap_and_honest_fetches_go_on()
 {
    tokio::time::timeout(GUARD, async {
        let dep = Deployment::new();
        let piece = piece_bytes();
        let mut seeder = ContentNode::bind(
            any_port(),
            &dep.client("seed01"),
            dep.trust(),
            transport(),
            ContentConfig::default(),
        )
        .unwrap();
        let stats = Arc::new(AcceptStats::default());
        let limits = AcceptLimits {
            request_timeout: Duration::from_millis(500),
            ..AcceptLimits::default()
        };
        seeder.set_accept_limits(limits.clone(), stats.clone());
        let _serving = seeder.serve(Arc::new(OnePiece(piece.clone())));
        let addr = seeder.endpoint().local_addr().unwrap();
        let seeder_role = Role::Client(ClientName::new("seed01").unwrap());
        let rss_before = resident_kib();

        // The hostile client: one identity, 1,000 connections at once, all kept.
        let hostile = ContentNode::bind(
            any_port(),
            &dep.client("evil66"),
            dep.trust(),
            transport(),
            ContentConfig::default(),
        )
        .unwrap();
        let mut attempts = tokio::task::JoinSet::new();
        for _ in 0..HOSTILE_CONNECTIONS {
            let (endpoint, trust, role) =
                (hostile.endpoint().clone(), dep.trust(), seeder_role.clone());
            attempts.spawn(async move { endpoint::connect(&endpoint, addr, &role, &trust).await });
        }
        // Meanwhile an honest client on another address connects and fetches: the
        // flood holds at most its per-source share of the handshake slots.
        let during = {
            let honest = ContentNode::bind(
                "127.0.0.2:0".parse().unwrap(),
                &dep.client("good02"),
                dep.trust(),
                transport(),
                ContentConfig::default(),
            )
            .unwrap();
            let role = seeder_role.clone();
            tokio::spawn(async move {
                let (conn, _) = honest.connect(addr, &role).await?;
                let request = PieceRequest {
                    content: CONTENT,
                    piece: 0,
                    offset: 0,
                    len: 0,
                };
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    fetch_piece(&conn, &request, &ContentConfig::default()).await?,
                )
            })
        };
        let mut handshaken = Vec::new();
        let mut failed = 0;
        while let Some(result) = attempts.join_next().await {
            match result.unwrap() {
                Ok(pair) => handshaken.push(pair),
                Err(_) => failed += 1,
            }
        }
        // Connections over the cap are closed right after their handshake.
        assert!(
            eventually(Duration::from_secs(20), || {
                handshaken.iter().filter(|(c, _)| c.close_reason().is_none()).count()
                    <= limits.max_per_peer
            })
            .await,
            "the hostile client keeps more than {} connections",
            limits.max_per_peer
        );
        let closed_busy = handshaken
            .iter()
            .filter(|(c, _)| {
                matches!(c.close_reason(), Some(quinn::ConnectionError::ApplicationClosed(ref a)) if a.error_code == endpoint::CLOSE_BUSY)
            })
            .count();
        let fetched_during = during.await.unwrap().expect("honest fetch during the flood");
        assert_eq!(fetched_during, piece);
        let kept: Vec<_> = handshaken
            .into_iter()
            .filter(|(c, _)| c.close_reason().is_none())
            .collect();

        let rss_after = resident_kib();
        println!(
            "hostile: {HOSTILE_CONNECTIONS} connections tried, {} kept open, {closed_busy} closed as \
             busy after the handshake, {failed} refused in the handshake; server counts: {:?}; \
             peak open {}; resident memory (both sides) {} -> {} KiB",
            kept.len(),
            stats.snapshot(),
            stats.peak_open(),
            rss_before,
            rss_after
        );
        assert!(kept.len() <= limits.max_per_peer);
        // The hostile client's connections and the honest one.
        assert!(stats.peak_open() <= limits.max_per_peer as u64 + 1);
        // Every attempt beyond the kept ones was refused (in the handshake, or closed
        // as busy or unfinished right after it), and every refusal counted.
        assert_eq!(stats.admitted(), kept.len() as u64 + 1);
        assert!(closed_busy as u64 <= stats.refused(Refusal::PeerConnections));
        assert!(closed_busy > 0 && failed > 0);
        assert!(
            stats.refused_total() >= (HOSTILE_CONNECTIONS - kept.len()) as u64,
            "{:?}",
            stats.snapshot()
        );

        // A stream that never sends its request is dropped at the request deadline.
        let (conn, _) = &kept[0];
        let (_send, mut recv) = conn.open_bi().await.unwrap();
        // Open the stream on the wire: quinn announces it with its first byte only,
        // so send a first byte of a piece request and then nothing.
        let (mut send2, mut recv2) = conn.open_bi().await.unwrap();
        send2.write_all(&[1]).await.unwrap();
        let stalled = recv2.read_to_end(1024).await;
        assert!(stalled.is_err(), "a stalled request is reset, not answered");
        assert!(stats.refused(Refusal::RequestTimeout) >= 1);
        drop(recv.stop(0u32.into()));

        // The honest client fetches the piece, bytes intact, while the hostile
        // client holds its connections.
        let honest = ContentNode::bind(
            any_port(),
            &dep.client("good01"),
            dep.trust(),
            transport(),
            ContentConfig::default(),
        )
        .unwrap();
        let (hconn, _) = honest.connect(addr, &seeder_role).await.unwrap();
        let got = fetch_piece(
            &hconn,
            &PieceRequest {
                content: CONTENT,
                piece: 0,
                offset: 0,
                len: 0,
            },
            &ContentConfig::default(),
        )
        .await
        .unwrap();
        assert_eq!(got, piece);
        assert!(stats.open() <= limits.max_per_peer as u64 + 1);
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn large_requests_over_64_kib_are_refused_unread_and_counted() {
    tokio::time::timeout(GUARD, async {
        let dep = Deployment::new();
        let mut server = LargeMessaging::bind(
            any_port(),
            any_port(),
            &dep.server(),
            dep.trust(),
            transport(),
            LargeConfig {
                max_payload: 16 << 20,
                ..LargeConfig::default()
            },
        )
        .unwrap();
        let stats = Arc::new(AcceptStats::default());
        server.set_accept_limits(AcceptLimits::default(), stats.clone());
        let _serving = server.serve(|_p, r: Bytes| async move { Ok(r) });
        let client = LargeMessaging::bind(
            any_port(),
            any_port(),
            &dep.client("cc03"),
            dep.trust(),
            transport(),
            LargeConfig::default(),
        )
        .unwrap();
        let addr = server.request_endpoint().local_addr().unwrap();
        let (conn, _) = client.connect(addr, &Role::Server).await.unwrap();
        // Our own side refuses to send one.
        let big = Bytes::from(vec![0u8; 64 * 1024 + 1]);
        assert!(matches!(
            client.request(&conn, big).await,
            Err(branchline_quic::LargeError::RequestTooLarge { .. })
        ));
        // A hostile peer sends the header anyway: refused unread with an Error frame.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let mut header = vec![1u8];
        header.extend_from_slice(&(16u32 << 20).to_be_bytes());
        send.write_all(&header).await.unwrap();
        let answer = recv.read_to_end(4096).await.unwrap();
        assert_eq!(answer[0], 3, "an Error frame");
        let reason = String::from_utf8_lossy(&answer[5..]).into_owned();
        assert!(reason.contains("exceeds the limit of 65536"), "{reason}");
        assert_eq!(stats.refused(Refusal::BadRequest), 1);
        // A request within the limit still works on the same connection.
        let ok = client
            .request(&conn, Bytes::from(vec![7u8; 60 * 1024]))
            .await
            .unwrap();
        assert_eq!(ok.len(), 60 * 1024);
    })
    .await
    .expect("test finished in time");
}
