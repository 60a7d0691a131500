//! Real-socket tests of the QUIC layer, on loopback only (127.0.0.1, port 0).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use branchline_quic::cache_source::CacheSource;
use branchline_quic::endpoint::{self, Direction};
use branchline_quic::{
    ClientIdentity, ClientName, Congestion, ContentConfig, ContentError, ContentNode,
    DeploymentTrust, HandlerError, LargeConfig, LargeError, LargeMessaging, NodeIdentity,
    PeerIdentity, PieceError, PieceRequest, PieceSource, QuicError, Role, TransportSettings,
    transport_config,
};
use branchline_store::{Bitfield, Cache, CacheCap, PieceMap, PieceSize};
use bytes::Bytes;
use quinn::TransportConfig;
use tokio::net::UdpSocket;

mod common;
use common::{Deployment, YEAR, any_port, client_role};

/// Safety net against hangs: no test below needs more than a few seconds.
const GUARD: Duration = Duration::from_secs(30);

fn fast_transport() -> Arc<TransportConfig> {
    let settings = TransportSettings {
        idle_timeout: Duration::from_secs(3),
        keep_alive: Some(Duration::from_millis(500)),
        ..TransportSettings::default()
    };
    Arc::new(transport_config(&settings, &Congestion::Foreground))
}

/// Pieces in memory; remembers who asked.
#[derive(Default)]
struct MemSource {
    pieces: HashMap<([u8; 32], u32), Bytes>,
    askers: Mutex<Vec<PeerIdentity>>,
}

impl PieceSource for MemSource {
    async fn read_piece(
        &self,
        peer: &PeerIdentity,
        content: &[u8; 32],
        piece: u32,
    ) -> Result<Bytes, PieceError> {
        self.askers.lock().unwrap().push(peer.clone());
        self.pieces
            .get(&(*content, piece))
            .cloned()
            .ok_or(PieceError::NotFound)
    }
}

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

const CONTENT: [u8; 32] = [7; 32];

fn source_with_pieces() -> Arc<MemSource> {
    let mut s = MemSource::default();
    s.pieces.insert((CONTENT, 0), pattern(256 * 1024, 1));
    s.pieces.insert((CONTENT, 1), pattern(100_000, 2));
    Arc::new(s)
}

fn content_node(identity: &NodeIdentity, trust: DeploymentTrust) -> ContentNode {
    ContentNode::bind(
        any_port(),
        identity,
        trust,
        fast_transport(),
        ContentConfig::default(),
    )
    .unwrap()
}

/// Clients aa01 and bb02 of one deployment: `a` serves `source` and `b` has connected
/// to it, checking that the peer at `a`'s address is aa01 (`peer`).
struct Pair {
    b: ContentNode,
    conn: quinn::Connection,
    peer: PeerIdentity,
    /// `a`, the deployment and `a`'s serving task: bind it for the whole test.
    _keep: (ContentNode, Deployment, tokio::task::JoinHandle<()>),
}

async fn serving_pair<S: PieceSource>(source: Arc<S>) -> Pair {
    let dep = Deployment::new();
    let a = content_node(&dep.client("aa01"), dep.trust());
    let b = content_node(&dep.client("bb02"), dep.trust());
    let serving = a.serve(source);
    let (conn, peer) = b
        .connect(a.endpoint().local_addr().unwrap(), &client_role("aa01"))
        .await
        .unwrap();
    Pair {
        b,
        conn,
        peer,
        _keep: (a, dep, serving),
    }
}

#[tokio::test]
async fn two_clients_of_one_deployment_authenticate_each_other_and_move_pieces() {
    tokio::time::timeout(GUARD, async {
        let source = source_with_pieces();
        let Pair {
            b,
            conn,
            peer,
            _keep,
        } = serving_pair(source.clone()).await;
        assert_eq!(peer.role, client_role("aa01"));

        // Whole piece, a sub-range, and several pieces at once on one connection.
        let whole = PieceRequest {
            content: CONTENT,
            piece: 0,
            offset: 0,
            len: 0,
        };
        assert_eq!(
            b.fetch(&conn, &whole).await.unwrap(),
            source.pieces[&(CONTENT, 0)]
        );
        let part = PieceRequest {
            content: CONTENT,
            piece: 1,
            offset: 1000,
            len: 5000,
        };
        assert_eq!(
            b.fetch(&conn, &part).await.unwrap(),
            source.pieces[&(CONTENT, 1)].slice(1000..6000)
        );
        let piece1 = PieceRequest { piece: 1, ..whole };
        let (x, y) = tokio::join!(b.fetch(&conn, &whole), b.fetch(&conn, &piece1));
        assert_eq!(x.unwrap(), source.pieces[&(CONTENT, 0)]);
        assert_eq!(y.unwrap(), source.pieces[&(CONTENT, 1)]);

        // The serving side saw the fetcher's authenticated identity.
        let askers = source.askers.lock().unwrap().clone();
        assert!(!askers.is_empty());
        assert!(askers.iter().all(|p| p.role == client_role("bb02")));
    })
    .await
    .expect("test hung");
}

#[tokio::test]
async fn piece_errors_are_typed() {
    tokio::time::timeout(GUARD, async {
        let Pair { b, conn, _keep, .. } = serving_pair(source_with_pieces()).await;

        let missing = PieceRequest {
            content: CONTENT,
            piece: 9,
            offset: 0,
            len: 0,
        };
        assert!(matches!(
            b.fetch(&conn, &missing).await,
            Err(ContentError::NotFound)
        ));
        let outside = PieceRequest {
            content: CONTENT,
            piece: 1,
            offset: 99_000,
            len: 5000,
        };
        assert!(matches!(
            b.fetch(&conn, &outside).await,
            Err(ContentError::BadRange(_))
        ));

        // A piece larger than the fetcher's limit is refused before it is read.
        let small = ContentConfig {
            max_piece_len: 1000,
            ..ContentConfig::default()
        };
        let whole = PieceRequest {
            content: CONTENT,
            piece: 0,
            offset: 0,
            len: 0,
        };
        assert!(matches!(
            branchline_quic::fetch_piece(&conn, &whole, &small).await,
            Err(ContentError::TooLong {
                len: 262144,
                max: 1000
            })
        ));

        // A malformed request gets a BadRequest answer, not a hang or a crash.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&[1, 2, 3]).await.unwrap();
        send.finish().unwrap();
        let reply = recv.read_to_end(4096).await.unwrap();
        assert_eq!(reply[0], 4, "status BadRequest");

        // The connection still works afterwards.
        assert!(b.fetch(&conn, &whole).await.is_ok());
    })
    .await
    .expect("test hung");
}

#[tokio::test]
async fn connecting_to_the_wrong_name_is_refused() {
    tokio::time::timeout(GUARD, async {
        let dep = Deployment::new();
        let a = content_node(&dep.client("aa01"), dep.trust());
        let b = content_node(&dep.client("bb02"), dep.trust());
        let _serving = a.serve(source_with_pieces());
        // B expects client cc03 at A's address: A's certificate does not match.
        let err = b
            .connect(a.endpoint().local_addr().unwrap(), &client_role("cc03"))
            .await
            .unwrap_err();
        assert!(matches!(err, QuicError::Connection { .. }), "{err}");
        // Nor is A the server.
        let err = b
            .connect(a.endpoint().local_addr().unwrap(), &Role::Server)
            .await
            .unwrap_err();
        assert!(matches!(err, QuicError::Connection { .. }), "{err}");
    })
    .await
    .expect("test hung");
}

/// Accepts one incoming connection on `endpoint` and reports whether its
/// handshake was accepted.
async fn accept_one(
    endpoint: &quinn::Endpoint,
    trust: &DeploymentTrust,
) -> Result<PeerIdentity, QuicError> {
    let incoming = endpoint.accept().await.expect("endpoint open");
    endpoint::finish_accept(incoming, trust)
        .await
        .map(|(_, p)| p)
}

/// Tries to connect and use the connection; Err if either step is refused.
async fn connect_and_use(
    from: &quinn::Endpoint,
    to: SocketAddr,
    role: &Role,
    trust: &DeploymentTrust,
) -> Result<(), String> {
    let (conn, _) = endpoint::connect(from, to, role, trust)
        .await
        .map_err(|e| e.to_string())?;
    // Under TLS 1.3 the connecting side may finish its handshake before the
    // accepting side has checked its certificate; using the connection shows
    // whether it was accepted.
    let (mut send, _recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(b"x").await.map_err(|e| e.to_string())?;
    let reason = conn.closed().await;
    Err(reason.to_string())
}

fn bind_raw(identity: &NodeIdentity, trust: &DeploymentTrust, dir: Direction) -> quinn::Endpoint {
    endpoint::bind(
        any_port(),
        identity,
        trust,
        branchline_quic::ALPN_CONTENT,
        fast_transport(),
        dir,
    )
    .unwrap()
}

#[tokio::test]
async fn certificates_of_another_deployment_ca_are_refused_both_ways() {
    tokio::time::timeout(GUARD, async {
        let ours = Deployment::new();
        // Same deployment name, different CA: only the CA counts.
        let theirs = Deployment::new();
        let a_id = ours.client("aa01");
        let f_id = theirs.client("ff09");

        // Foreign client connects to our client: our side refuses.
        let a = bind_raw(&a_id, &ours.trust(), Direction::Both);
        let f = bind_raw(&f_id, &theirs.trust(), Direction::Both);
        let a_addr = a.local_addr().unwrap();
        let (ours_trust, theirs_trust, ra) = (ours.trust(), theirs.trust(), client_role("aa01"));
        let (accepted, used) = tokio::join!(
            accept_one(&a, &ours_trust),
            connect_and_use(&f, a_addr, &ra, &theirs_trust)
        );
        assert!(accepted.is_err(), "our side accepted a foreign certificate");
        assert!(used.is_err());

        // Our client connects to the foreign one: our side refuses its certificate.
        let f_addr = f.local_addr().unwrap();
        let f2 = f.clone();
        let acceptor = tokio::spawn(async move { accept_one(&f2, &theirs_trust).await });
        let err = endpoint::connect(&a, f_addr, &client_role("ff09"), &ours.trust())
            .await
            .unwrap_err();
        assert!(matches!(err, QuicError::Connection { .. }), "{err}");
        assert!(acceptor.await.unwrap().is_err());
    })
    .await
    .expect("test hung");
}

#[tokio::test]
async fn revoked_clients_and_serials_are_refused() {
    tokio::time::timeout(GUARD, async {
        let dep = Deployment::new();
        let a_id = dep.client("aa01");
        let b_id = dep.client("bb02");
        let a_trust = dep.trust();
        let b_trust = dep.trust();
        let a = bind_raw(&a_id, &a_trust, Direction::Both);
        let b = bind_raw(&b_id, &b_trust, Direction::Both);
        let a_addr = a.local_addr().unwrap();
        let (ra, rb) = (client_role("aa01"), client_role("bb02"));

        // Before revocation: accepted.
        let (accepted, _) = tokio::join!(
            accept_one(&a, &a_trust),
            endpoint::connect(&b, a_addr, &ra, &b_trust)
        );
        let b_peer = accepted.unwrap();
        assert_eq!(b_peer.role, rb);

        // A revokes B by name: B can no longer connect to A...
        a_trust
            .revoked
            .revoke_client(ClientName::new("bb02").unwrap());
        let (accepted, used) = tokio::join!(
            accept_one(&a, &a_trust),
            connect_and_use(&b, a_addr, &ra, &b_trust)
        );
        assert!(accepted.is_err());
        assert!(used.is_err());
        // ...and A refuses B as the accepting side too.
        let b_addr = b.local_addr().unwrap();
        let (accepted, connected) = tokio::join!(
            accept_one(&b, &b_trust),
            endpoint::connect(&a, b_addr, &rb, &a_trust)
        );
        assert!(connected.is_err());
        let _ = accepted;

        // Reinstated by name but revoked by certificate serial: still refused.
        a_trust
            .revoked
            .reinstate_client(&ClientName::new("bb02").unwrap());
        a_trust.revoked.revoke_serial(&b_peer.serial);
        let (accepted, used) = tokio::join!(
            accept_one(&a, &a_trust),
            connect_and_use(&b, a_addr, &ra, &b_trust)
        );
        assert!(accepted.is_err());
        assert!(used.is_err());

        // Cleared list: accepted again.
        a_trust.revoked.replace([], []);
        let (accepted, _) = tokio::join!(
            accept_one(&a, &a_trust),
            endpoint::connect(&b, a_addr, &ra, &b_trust)
        );
        assert!(accepted.is_ok());
    })
    .await
    .expect("test hung");
}

struct LargePair {
    server: LargeMessaging,
    client: LargeMessaging,
}

fn large_pair(dep: &Deployment, server_cfg: LargeConfig, client_cfg: LargeConfig) -> LargePair {
    let server = LargeMessaging::bind(
        any_port(),
        any_port(),
        &dep.server(),
        dep.trust(),
        fast_transport(),
        server_cfg,
    )
    .unwrap();
    let client = LargeMessaging::bind(
        any_port(),
        any_port(),
        &dep.client("cc03"),
        dep.trust(),
        fast_transport(),
        client_cfg,
    )
    .unwrap();
    LargePair { server, client }
}

impl LargePair {
    /// Serves `handler` on the server and connects the client to it: the serving task
    /// (keep it for the whole test) and the connection.
    async fn serve_and_connect<H, Fut>(
        &self,
        handler: H,
    ) -> (tokio::task::JoinHandle<()>, quinn::Connection)
    where
        H: Fn(PeerIdentity, Bytes) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Bytes, HandlerError>> + Send + 'static,
    {
        let serving = self.server.serve(handler);
        let addr = self.server.request_endpoint().local_addr().unwrap();
        let (conn, _) = self.client.connect(addr, &Role::Server).await.unwrap();
        (serving, conn)
    }
}

/// Answers with the request's bytes reversed, prefixed by the asker's name.
async fn reverse_handler(peer: PeerIdentity, request: Bytes) -> Result<Bytes, HandlerError> {
    if request.as_ref() == b"refuse" {
        return Err(HandlerError(
            "no such list; ask the server for the catalogue first".into(),
        ));
    }
    let mut out = format!("{}|", peer.role).into_bytes();
    out.extend(request.iter().rev());
    Ok(out.into())
}

#[tokio::test]
async fn large_message_round_trip_of_5_mib() {
    tokio::time::timeout(GUARD, async {
        let dep = Deployment::new();
        // Requests of 64 KiB at most by default; this pair allows 8 MiB.
        let roomy = LargeConfig {
            max_request: 8 << 20,
            ..LargeConfig::default()
        };
        let pair = large_pair(&dep, roomy.clone(), roomy);
        let _serving = pair.server.serve(reverse_handler);
        let server_request = pair.server.request_endpoint().local_addr().unwrap();

        let (conn, peer) = pair
            .client
            .connect(server_request, &Role::Server)
            .await
            .unwrap();
        assert_eq!(peer.role, Role::Server);
        let request = pattern(5 * 1024 * 1024, 9);
        let response = pair.client.request(&conn, request.clone()).await.unwrap();
        let prefix = b"client cc03|";
        assert_eq!(&response[..prefix.len()], prefix);
        assert!(response[prefix.len()..].iter().eq(request.iter().rev()));

        // A handler's refusal comes back as a typed error with its reason.
        let err = pair
            .client
            .request(&conn, Bytes::from_static(b"refuse"))
            .await
            .unwrap_err();
        match err {
            LargeError::Remote(reason) => assert!(reason.contains("catalogue"), "{reason}"),
            other => panic!("expected Remote, got {other}"),
        }
    })
    .await
    .expect("test hung");
}

#[tokio::test]
async fn request_port_sees_the_reply_port_as_source() {
    tokio::time::timeout(GUARD, async {
        let dep = Deployment::new();
        let pair = large_pair(&dep, LargeConfig::default(), LargeConfig::default());
        let trust = dep.trust();
        let server_request = pair.server.request_endpoint().local_addr().unwrap();
        let (accepted, connected) = tokio::join!(
            async {
                let incoming = pair.server.request_endpoint().accept().await.unwrap();
                endpoint::finish_accept(incoming, &trust).await
            },
            pair.client.connect(server_request, &Role::Server)
        );
        let (server_side, client_peer) = accepted.unwrap();
        connected.unwrap();
        assert_eq!(client_peer.role, client_role("cc03"));
        assert_eq!(
            server_side.remote_address(),
            pair.client.reply_endpoint().local_addr().unwrap()
        );
    })
    .await
    .expect("test hung");
}

#[tokio::test]
async fn oversized_frames_get_typed_errors() {
    tokio::time::timeout(GUARD, async {
        let dep = Deployment::new();
        let small = LargeConfig {
            max_payload: 64 * 1024,
            ..LargeConfig::default()
        };
        let big = LargeConfig {
            max_payload: 1024 * 1024,
            max_request: 1024 * 1024,
            ..LargeConfig::default()
        };

        // Our own limit: refused before anything is sent.
        let pair = large_pair(&dep, big.clone(), small.clone());
        let (_serving, conn) = pair.serve_and_connect(reverse_handler).await;
        let err = pair
            .client
            .request(&conn, pattern(100_000, 1))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                LargeError::RequestTooLarge {
                    len: 100_000,
                    max: 65536
                }
            ),
            "{err}"
        );

        // Just under the limit goes through.
        let under = branchline_quic::send_request(&conn, pattern(60_000, 1), &small).await;
        assert!(under.is_ok(), "{under:?}");

        // A response larger than our limit: the header is refused.
        let echo_big =
            async |_p: PeerIdentity, _r: Bytes| Ok::<_, HandlerError>(pattern(200_000, 3));
        let pair2 = large_pair(&dep, big.clone(), small.clone());
        let (_serving2, conn2) = pair2.serve_and_connect(echo_big).await;
        let err = pair2
            .client
            .request(&conn2, Bytes::from_static(b"hi"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                LargeError::Frame(branchline_quic::frame::FrameError::TooLarge {
                    len: 200_000,
                    max: 65536
                })
            ),
            "{err}"
        );

        // The peer's limit is smaller than ours: it refuses with a reason.
        let pair3 = large_pair(&dep, small.clone(), big.clone());
        let (_serving3, conn3) = pair3.serve_and_connect(reverse_handler).await;
        let err = pair3
            .client
            .request(&conn3, pattern(500_000, 1))
            .await
            .unwrap_err();
        match err {
            LargeError::Remote(reason) => assert!(reason.contains("exceeds"), "{reason}"),
            LargeError::Aborted(_) => {}
            other => panic!("expected a refusal, got {other}"),
        }
        // The connection survives a refused stream.
        assert!(
            pair3
                .client
                .request(&conn3, Bytes::from_static(b"ok"))
                .await
                .is_ok()
        );
    })
    .await
    .expect("test hung");
}

#[tokio::test]
async fn malformed_frames_are_answered_not_crashed_on() {
    tokio::time::timeout(GUARD, async {
        let dep = Deployment::new();
        let pair = large_pair(&dep, LargeConfig::default(), LargeConfig::default());
        let (_serving, conn) = pair.serve_and_connect(reverse_handler).await;
        for junk in [
            &[9u8, 0, 0, 0, 0][..],
            &[1, 0, 0, 0, 10, 1, 2][..],
            &[1, 0][..],
            &[2, 0, 0, 0, 0][..],
        ] {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(junk).await.unwrap();
            send.finish().unwrap();
            let reply = recv.read_to_end(4096).await.unwrap();
            assert_eq!(reply[0], 3, "Error frame for {junk:?}");
        }
        assert!(
            pair.client
                .request(&conn, Bytes::from_static(b"ok"))
                .await
                .is_ok()
        );
    })
    .await
    .expect("test hung");
}

#[tokio::test]
async fn a_stuck_handler_hits_the_request_timeout() {
    tokio::time::timeout(GUARD, async {
        let dep = Deployment::new();
        let quick = LargeConfig {
            request_timeout: Duration::from_millis(300),
            ..LargeConfig::default()
        };
        let pair = large_pair(&dep, LargeConfig::default(), quick);
        let stuck = async |_p: PeerIdentity, _r: Bytes| {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, HandlerError>(Bytes::new())
        };
        let (_serving, conn) = pair.serve_and_connect(stuck).await;
        let err = pair
            .client
            .request(&conn, Bytes::from_static(b"hi"))
            .await
            .unwrap_err();
        assert!(matches!(err, LargeError::Timeout(_)), "{err}");
    })
    .await
    .expect("test hung");
}

/// A UDP relay between a client and a server that can be cut, to make a peer
/// vanish without closing anything. Forwards at most `MAX_PACKETS` packets.
struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    to_client_bytes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

const MAX_PACKETS: u64 = 200_000;

/// `cut_after`: bytes forwarded towards the client before the path is cut.
async fn relay(target: SocketAddr, cut_after: u64) -> Relay {
    let front = UdpSocket::bind(any_port()).await.unwrap();
    let back = UdpSocket::bind(any_port()).await.unwrap();
    back.connect(target).await.unwrap();
    let addr = front.local_addr().unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let to_client_bytes = Arc::new(AtomicU64::new(0));
    let (c, t) = (cut.clone(), to_client_bytes.clone());
    let limit = Arc::new(AtomicU64::new(cut_after));
    let task = tokio::spawn(async move {
        let mut client: Option<SocketAddr> = None;
        let (mut a, mut b) = (vec![0u8; 65536], vec![0u8; 65536]);
        for _ in 0..MAX_PACKETS {
            tokio::select! {
                Ok((n, from)) = front.recv_from(&mut a) => {
                    client = Some(from);
                    if !c.load(Ordering::SeqCst) {
                        let _ = back.send(&a[..n]).await;
                    }
                }
                Ok(n) = back.recv(&mut b) => {
                    if let (Some(to), false) = (client, c.load(Ordering::SeqCst)) {
                        let total = t.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                        let _ = front.send_to(&b[..n], to).await;
                        // The path dies once the limit has passed through.
                        if total >= limit.load(Ordering::SeqCst) {
                            c.store(true, Ordering::SeqCst);
                        }
                    }
                }
            }
        }
    });
    Relay {
        addr,
        cut,
        to_client_bytes,
        task,
    }
}

#[tokio::test]
async fn a_peer_that_vanishes_mid_transfer_gives_an_error_not_a_hang() {
    tokio::time::timeout(GUARD, async {
        let dep = Deployment::new();
        let patient = LargeConfig {
            request_timeout: Duration::from_secs(600),
            ..LargeConfig::default()
        };
        let pair = large_pair(&dep, patient.clone(), patient);
        let big = pattern(8 * 1024 * 1024, 5);
        let big2 = big.clone();
        let _serving = pair.server.serve(move |_p, _r| {
            let big = big2.clone();
            async move { Ok::<_, HandlerError>(big) }
        });
        let relay = relay(
            pair.server.request_endpoint().local_addr().unwrap(),
            1024 * 1024,
        )
        .await;
        let (conn, _) = pair
            .client
            .connect(relay.addr, &Role::Server)
            .await
            .unwrap();

        let err = pair
            .client
            .request(&conn, Bytes::from_static(b"all"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                LargeError::Connection(quinn::ConnectionError::TimedOut)
            ),
            "{err}"
        );
        // The path was cut part-way through the response, as intended.
        assert!(relay.cut.load(Ordering::SeqCst));
        let passed = relay.to_client_bytes.load(Ordering::SeqCst);
        assert!(
            passed >= 1024 * 1024 && passed < big.len() as u64,
            "{passed}"
        );
        relay.task.abort();
    })
    .await
    .expect("test hung");
}

#[tokio::test]
async fn an_unreachable_peer_gives_an_error_not_a_hang() {
    tokio::time::timeout(GUARD, async {
        let dep = Deployment::new();
        let b = content_node(&dep.client("bb02"), dep.trust());
        // A bound socket that never answers.
        let silent = std::net::UdpSocket::bind(any_port()).unwrap();
        let err = b
            .connect(silent.local_addr().unwrap(), &client_role("aa01"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                QuicError::Connection {
                    source: quinn::ConnectionError::TimedOut,
                    ..
                }
            ),
            "{err}"
        );
    })
    .await
    .expect("test hung");
}

/// A congestion controller factory that counts the controllers it builds (and
/// delegates to NewReno), standing in for LEDBAT++.
#[derive(Debug, Default)]
struct CountingFactory {
    inner: Arc<quinn::congestion::NewRenoConfig>,
    built: std::sync::atomic::AtomicUsize,
}

impl quinn::congestion::ControllerFactory for CountingFactory {
    fn build(
        self: Arc<Self>,
        now: std::time::Instant,
        current_mtu: u16,
    ) -> Box<dyn quinn::congestion::Controller> {
        self.built.fetch_add(1, Ordering::SeqCst);
        self.inner.clone().build(now, current_mtu)
    }
}

#[tokio::test]
async fn background_endpoints_use_the_given_congestion_controller() {
    tokio::time::timeout(GUARD, async {
        let dep = Deployment::new();
        let factory = Arc::new(CountingFactory::default());
        let background = Arc::new(transport_config(
            &TransportSettings::default(),
            &Congestion::Background(factory.clone()),
        ));
        let bind = |name: &str| {
            ContentNode::bind(
                any_port(),
                &dep.client(name),
                dep.trust(),
                background.clone(),
                ContentConfig::default(),
            )
            .unwrap()
        };
        let (parent, child) = (bind("aa01"), bind("bb02"));
        let source = source_with_pieces();
        let _serving = parent.serve(source.clone());
        assert_eq!(factory.built.load(Ordering::SeqCst), 0);
        let (conn, _) = child
            .connect(
                parent.endpoint().local_addr().unwrap(),
                &client_role("aa01"),
            )
            .await
            .unwrap();
        let whole = PieceRequest {
            content: CONTENT,
            piece: 0,
            offset: 0,
            len: 0,
        };
        assert_eq!(
            child.fetch(&conn, &whole).await.unwrap(),
            source.pieces[&(CONTENT, 0)]
        );
        // One controller per connection end: the child's and the parent's.
        assert_eq!(factory.built.load(Ordering::SeqCst), 2);
    })
    .await
    .expect("test hung");
}

#[tokio::test]
async fn the_pool_reuses_connections_and_drops_revoked_peers() {
    tokio::time::timeout(GUARD, async {
        let dep = Deployment::new();
        let a_trust = dep.trust();
        let b_trust = dep.trust();
        let a = ContentNode::bind(
            any_port(),
            &dep.client("aa01"),
            a_trust.clone(),
            fast_transport(),
            ContentConfig::default(),
        )
        .unwrap();
        let b = ContentNode::bind(
            any_port(),
            &dep.client("bb02"),
            b_trust.clone(),
            fast_transport(),
            ContentConfig::default(),
        )
        .unwrap();
        let _serving = a.serve(source_with_pieces());
        let a_addr = a.endpoint().local_addr().unwrap();
        let ra = client_role("aa01");
        let pool = branchline_quic::ConnectionPool::new(b.endpoint().clone(), b_trust.clone());

        let (c1, peer) = pool.get(a_addr, &ra).await.unwrap();
        assert_eq!(peer.role, ra);
        let (c2, _) = pool.get(a_addr, &ra).await.unwrap();
        assert_eq!(
            c1.stable_id(),
            c2.stable_id(),
            "second get reuses the connection"
        );
        assert_eq!(pool.len(), 1);

        // A closed connection is replaced.
        c1.close(0u32.into(), b"test");
        let (c3, _) = pool.get(a_addr, &ra).await.unwrap();
        assert_ne!(c3.stable_id(), c1.stable_id());
        let whole = PieceRequest {
            content: CONTENT,
            piece: 1,
            offset: 0,
            len: 0,
        };
        assert!(b.fetch(&c3, &whole).await.is_ok());

        // B revokes A: prune closes the pooled connection.
        b_trust
            .revoked
            .revoke_client(ClientName::new("aa01").unwrap());
        assert_eq!(pool.prune(), 1);
        assert!(pool.is_empty());
        assert!(c3.close_reason().is_some());
        b_trust.revoked.replace([], []);

        // A revokes B: B's open connection is closed at its next request.
        let (c4, _) = pool.get(a_addr, &ra).await.unwrap();
        assert!(b.fetch(&c4, &whole).await.is_ok());
        a_trust
            .revoked
            .revoke_client(ClientName::new("bb02").unwrap());
        let err = b.fetch(&c4, &whole).await.unwrap_err();
        assert!(
            matches!(err, ContentError::Transfer(LargeError::Connection(_))),
            "{err}"
        );
    })
    .await
    .expect("test hung");
}

#[tokio::test]
async fn each_connection_can_get_its_own_congestion_controller() {
    tokio::time::timeout(GUARD, async {
        let dep = Deployment::new();
        let background = |f: &Arc<CountingFactory>| {
            Arc::new(transport_config(
                &TransportSettings::default(),
                &Congestion::Background(f.clone()),
            ))
        };
        let (parent_default, link, child_default) = (
            Arc::new(CountingFactory::default()),
            Arc::new(CountingFactory::default()),
            Arc::new(CountingFactory::default()),
        );
        let mut parent = ContentNode::bind(
            any_port(),
            &dep.client("aa01"),
            dep.trust(),
            background(&parent_default),
            ContentConfig::default(),
        )
        .unwrap();
        let bind_child = |name: &str| {
            ContentNode::bind(
                any_port(),
                &dep.client(name),
                dep.trust(),
                background(&child_default),
                ContentConfig::default(),
            )
            .unwrap()
        };
        let (near, far) = (bind_child("bb02"), bind_child("cc03"));
        // Only the far child is behind the WAN link with its own factory.
        let far_addr = far.endpoint().local_addr().unwrap();
        let link_transport = background(&link);
        parent.set_transport_selector(Arc::new(move |addr| {
            (addr == far_addr).then(|| link_transport.clone())
        }));
        let source = source_with_pieces();
        let _serving = parent.serve(source.clone());
        let parent_addr = parent.endpoint().local_addr().unwrap();
        let whole = PieceRequest {
            content: CONTENT,
            piece: 1,
            offset: 0,
            len: 0,
        };

        let (conn, _) = far
            .connect(parent_addr, &client_role("aa01"))
            .await
            .unwrap();
        assert_eq!(
            far.fetch(&conn, &whole).await.unwrap(),
            source.pieces[&(CONTENT, 1)]
        );
        assert_eq!(link.built.load(Ordering::SeqCst), 1);
        assert_eq!(parent_default.built.load(Ordering::SeqCst), 0);

        let (conn, _) = near
            .connect(parent_addr, &client_role("aa01"))
            .await
            .unwrap();
        assert_eq!(
            near.fetch(&conn, &whole).await.unwrap(),
            source.pieces[&(CONTENT, 1)]
        );
        assert_eq!(link.built.load(Ordering::SeqCst), 1);
        assert_eq!(parent_default.built.load(Ordering::SeqCst), 1);
        assert_eq!(child_default.built.load(Ordering::SeqCst), 2);
    })
    .await
    .expect("test hung");
}

/// A source that never finishes reading: a stuck disk.
struct StuckSource;

impl PieceSource for StuckSource {
    async fn read_piece(
        &self,
        _peer: &PeerIdentity,
        _content: &[u8; 32],
        _piece: u32,
    ) -> Result<Bytes, PieceError> {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Err(PieceError::NotFound)
    }
}

#[tokio::test]
async fn a_slow_peer_hits_the_piece_timeout_and_the_connection_stays_usable() {
    tokio::time::timeout(GUARD, async {
        let Pair {
            b: _b, conn, _keep, ..
        } = serving_pair(Arc::new(StuckSource)).await;
        let quick = ContentConfig {
            piece_timeout: Duration::from_millis(200),
            ..ContentConfig::default()
        };
        let req = PieceRequest {
            content: CONTENT,
            piece: 0,
            offset: 0,
            len: 0,
        };
        let err = branchline_quic::fetch_piece(&conn, &req, &quick)
            .await
            .unwrap_err();
        assert!(matches!(err, ContentError::Timeout(_)), "{err}");
        // The scheduler can still ask this peer for something else.
        assert!(conn.close_reason().is_none());
    })
    .await
    .expect("test hung");
}

use branchline_time::now_ms;

#[tokio::test]
async fn have_queries_follow_the_cache_as_it_grows() {
    tokio::time::timeout(GUARD, async {
        // A's cache: one content of 10 pieces of 16 KiB (10 bits: 2 bytes).
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(Cache::open(dir.path(), CacheCap::Bytes(1 << 30), now_ms()).unwrap());
        // Every piece different (`pattern` repeats every 256 bytes).
        let data: Vec<u8> = (0..10u8).flat_map(|i| pattern(16 * 1024, i)).collect();
        let map = PieceMap::from_bytes(&data, PieceSize::new(16 * 1024).unwrap()).unwrap();
        let id = map.id();
        let content = *id.as_bytes();
        let piece = |i: usize| &data[i * 16 * 1024..(i + 1) * 16 * 1024];
        let Pair { b, conn, _keep, .. } = serving_pair(Arc::new(CacheSource {
            cache: cache.clone(),
            corrupted: None,
        }))
        .await;

        // Unknown content, then begun but no piece yet: NotFound both times.
        assert_eq!(b.fetch_have(&conn, &content).await.unwrap(), None);
        assert_eq!(b.fetch_have(&conn, &[0xee; 32]).await.unwrap(), None);
        cache.begin(map.clone(), now_ms()).unwrap();
        assert_eq!(b.fetch_have(&conn, &content).await.unwrap(), None);

        // Each verified piece shows up in the next answer, in the store's bit order.
        cache.write_piece(&id, 0, piece(0), now_ms()).unwrap();
        assert_eq!(
            b.fetch_have(&conn, &content).await.unwrap(),
            Some(vec![0b0000_0001, 0])
        );
        cache.write_piece(&id, 9, piece(9), now_ms()).unwrap();
        cache.write_piece(&id, 3, piece(3), now_ms()).unwrap();
        let bits = b.fetch_have(&conn, &content).await.unwrap().unwrap();
        assert_eq!(bits, vec![0b0000_1001, 0b0000_0010]);
        assert_eq!(bits, cache.have(&id).unwrap().as_bytes());
        let held = Bitfield::from_bytes(map.piece_count(), &bits).unwrap();
        assert_eq!(held.present().collect::<Vec<_>>(), vec![0, 3, 9]);

        // A piece that fails verification is not recorded, so not announced.
        assert!(cache.write_piece(&id, 5, piece(4), now_ms()).is_err());
        assert_eq!(
            branchline_quic::fetch_have(&conn, &content, b.config())
                .await
                .unwrap(),
            Some(vec![0b0000_1001, 0b0000_0010])
        );

        // What the bitfield names can be fetched.
        let got = b
            .fetch(
                &conn,
                &PieceRequest {
                    content,
                    piece: 3,
                    offset: 0,
                    len: 0,
                },
            )
            .await
            .unwrap();
        assert_eq!(&got[..], piece(3));

        // Evicted content is NotFound again.
        assert!(cache.remove(&id).unwrap());
        assert_eq!(b.fetch_have(&conn, &content).await.unwrap(), None);
    })
    .await
    .expect("test hung");
}

#[tokio::test]
async fn have_queries_to_a_source_without_bitfields_say_not_found() {
    tokio::time::timeout(GUARD, async {
        // MemSource keeps the trait's default `have`.
        let Pair { b, conn, _keep, .. } = serving_pair(source_with_pieces()).await;
        assert_eq!(b.fetch_have(&conn, &CONTENT).await.unwrap(), None);
    })
    .await
    .expect("test hung");
}

#[tokio::test]
async fn an_unknown_first_byte_is_refused_cleanly() {
    tokio::time::timeout(GUARD, async {
        let Pair { b, conn, _keep, .. } = serving_pair(source_with_pieces()).await;

        for garbage in [&[0x00][..], &[0xff; 45][..], &[0x03; 33][..]] {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            // The responder stops reading after the first byte; our write may race
            // with that, its answer must not.
            let _ = send.write_all(garbage).await;
            let _ = send.finish();
            let reply = recv.read_to_end(4096).await.unwrap();
            assert_eq!(reply[0], 4, "status BadRequest for {garbage:?}");
            let len = u32::from_be_bytes(reply[1..5].try_into().unwrap()) as usize;
            assert_eq!(reply.len(), 5 + len);
            let reason = std::str::from_utf8(&reply[5..]).unwrap();
            assert!(reason.contains("unknown request kind"), "{reason}");
        }

        // A have query of the wrong length is refused too.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&[0x02; 20]).await.unwrap();
        send.finish().unwrap();
        assert_eq!(recv.read_to_end(4096).await.unwrap()[0], 4);

        // The connection still answers both kinds afterwards.
        assert_eq!(b.fetch_have(&conn, &CONTENT).await.unwrap(), None);
        let whole = PieceRequest {
            content: CONTENT,
            piece: 1,
            offset: 0,
            len: 0,
        };
        assert_eq!(b.fetch(&conn, &whole).await.unwrap().len(), 100_000);
        assert!(conn.close_reason().is_none());
    })
    .await
    .expect("test hung");
}

#[tokio::test]
async fn the_progress_counter_ends_at_the_piece_length() {
    tokio::time::timeout(GUARD, async {
        let source = source_with_pieces();
        let Pair { b, conn, _keep, .. } = serving_pair(source.clone()).await;

        let whole = PieceRequest {
            content: CONTENT,
            piece: 0,
            offset: 0,
            len: 0,
        };
        let progress = AtomicU64::new(0);
        let got = b.fetch_progress(&conn, &whole, &progress).await.unwrap();
        assert_eq!(got, source.pieces[&(CONTENT, 0)]);
        assert_eq!(progress.load(Ordering::Relaxed), 256 * 1024);

        // It adds up: a sub-range on the same counter.
        let part = PieceRequest {
            piece: 1,
            offset: 10,
            len: 999,
            ..whole
        };
        let got = branchline_quic::fetch_piece_progress(&conn, &part, b.config(), &progress)
            .await
            .unwrap();
        assert_eq!(got.len(), 999);
        assert_eq!(progress.load(Ordering::Relaxed), 256 * 1024 + 999);

        // Refusals carry no data and count nothing.
        let missing = PieceRequest { piece: 9, ..whole };
        assert!(matches!(
            b.fetch_progress(&conn, &missing, &progress).await,
            Err(ContentError::NotFound)
        ));
        assert_eq!(progress.load(Ordering::Relaxed), 256 * 1024 + 999);
    })
    .await
    .expect("test hung");
}

/// The counter moves while the piece is still arriving, not only at the end: a
/// hand-driven sender stops halfway until the fetcher has counted the first half.
#[tokio::test]
async fn the_progress_counter_moves_before_the_piece_is_complete() {
    tokio::time::timeout(GUARD, async {
        const LEN: usize = 64 * 1024;
        let dep = Deployment::new();
        let trust = dep.trust();
        let sender = bind_raw(&dep.client("aa01"), &trust, Direction::Both);
        let b = content_node(&dep.client("bb02"), dep.trust());
        let data = pattern(LEN, 5);
        let (half_seen, mut half_seen_rx) = tokio::sync::mpsc::channel::<()>(1);

        let serving = {
            let (sender, trust, data) = (sender.clone(), trust.clone(), data.clone());
            tokio::spawn(async move {
                let (conn, _) = endpoint::accept(&sender, &trust).await.unwrap();
                let (mut send, mut recv) = conn.accept_bi().await.unwrap();
                let request = recv.read_to_end(64).await.unwrap();
                assert_eq!(request.len(), 45);
                let mut header = vec![0u8];
                header.extend_from_slice(&(LEN as u32).to_be_bytes());
                send.write_all(&header).await.unwrap();
                send.write_all(&data[..LEN / 2]).await.unwrap();
                half_seen_rx.recv().await.unwrap();
                send.write_all(&data[LEN / 2..]).await.unwrap();
                send.finish().unwrap();
                conn.closed().await;
            })
        };

        let (conn, _) = b
            .connect(sender.local_addr().unwrap(), &client_role("aa01"))
            .await
            .unwrap();
        let progress = AtomicU64::new(0);
        let req = PieceRequest {
            content: CONTENT,
            piece: 0,
            offset: 0,
            len: 0,
        };
        let fetch = b.fetch_progress(&conn, &req, &progress);
        let watch = async {
            while progress.load(Ordering::Relaxed) < (LEN / 2) as u64 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(progress.load(Ordering::Relaxed), (LEN / 2) as u64);
            half_seen.send(()).await.unwrap();
        };
        let (got, ()) = tokio::join!(fetch, watch);
        assert_eq!(got.unwrap(), data);
        assert_eq!(progress.load(Ordering::Relaxed), LEN as u64);
        conn.close(0u32.into(), b"done");
        serving.await.unwrap();
    })
    .await
    .expect("test hung");
}

/// Certificate renewal without restarting anything: after [`NodeIdentity::renew`], new
/// handshakes present the renewed certificate on both sides (the accepting node's and
/// the connecting node's), and a connection opened before keeps working.
#[tokio::test]
async fn renewed_certificates_are_presented_in_new_handshakes_both_ways() {
    tokio::time::timeout(GUARD, async {
        let dep = Deployment::new();
        let issue = |id: &ClientIdentity, name: &str| {
            let now = SystemTime::now();
            let name = ClientName::new(name).unwrap();
            let cert = dep
                .ca
                .issue_client_cert(&name, &id.cert_request().unwrap(), now, YEAR)
                .unwrap();
            id.install_certificate(
                cert,
                dep.ca.certificate(),
                dep.ca.deployment(),
                &Role::Client(name),
                now,
            )
            .unwrap()
        };
        let serial = |n: &NodeIdentity| {
            PeerIdentity::from_certificate(&n.current_certificate(), dep.ca.deployment())
                .unwrap()
                .serial
        };
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (ia, ib) = (
            ClientIdentity::load_or_generate(da.path()).unwrap(),
            ClientIdentity::load_or_generate(db.path()).unwrap(),
        );
        let (a1, b1) = (issue(&ia, "aa01"), issue(&ib, "bb02"));
        let a = content_node(&a1, dep.trust());
        let b = content_node(&b1, dep.trust());
        let source = source_with_pieces();
        let _serving = a.serve(source.clone());
        let to = a.endpoint().local_addr().unwrap();
        let whole = PieceRequest {
            content: CONTENT,
            piece: 1,
            offset: 0,
            len: 0,
        };
        let (old_conn, peer) = b.connect(to, &client_role("aa01")).await.unwrap();
        assert_eq!(peer.serial, serial(&a1));
        b.fetch(&old_conn, &whole).await.unwrap();
        assert_eq!(
            source.askers.lock().unwrap().last().unwrap().serial,
            serial(&b1)
        );

        let (a2, b2) = (issue(&ia, "aa01"), issue(&ib, "bb02"));
        assert_ne!(serial(&a1), serial(&a2));
        a1.renew(&a2).unwrap();
        b1.renew(&b2).unwrap();
        assert_eq!(
            serial(&a1),
            serial(&a2),
            "the live certificate is the new one"
        );

        let (new_conn, peer) = b.connect(to, &client_role("aa01")).await.unwrap();
        assert_eq!(
            peer.serial,
            serial(&a2),
            "the accepting side presents the renewed one"
        );
        b.fetch(&new_conn, &whole).await.unwrap();
        assert_eq!(
            source.askers.lock().unwrap().last().unwrap().serial,
            serial(&b2),
            "the connecting side presents the renewed one"
        );
        // The connection of before goes on.
        assert_eq!(
            b.fetch(&old_conn, &whole).await.unwrap(),
            source.pieces[&(CONTENT, 1)]
        );
        // Renewing with another node's certificate is refused.
        assert!(a1.renew(&b2).is_err());
    })
    .await
    .expect("test hung");
}
