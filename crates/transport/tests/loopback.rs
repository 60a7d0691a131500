//! Endpoint wiring over real loopback sockets (127.0.0.1, ephemeral ports).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use branchline_transport::Clock;
use branchline_transport::{
    Context, DropReason, Handler, RequestError, Requester, Responder, Response, RetryPolicy,
};
use branchline_wire::msg::{Ack, Heartbeat, HeartbeatAck, Ping};
use branchline_wire::{Body, DeploymentKey};
use tokio::net::UdpSocket;

/// Counts how often it is called; answers heartbeats and pings.
#[derive(Default)]
struct Counting {
    calls: AtomicU64,
}

impl Handler for Counting {
    fn handle(&self, _from: SocketAddr, body: Body) -> Response {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match body {
            Body::Heartbeat(_) => Response::Reply(Body::HeartbeatAck(HeartbeatAck {
                known: true,
                ..Default::default()
            })),
            Body::Ping(_) => Response::Later(Box::pin(async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Body::Ack(Ack {})
            })),
            _ => Response::Silent,
        }
    }
}

fn ctx(key: u8) -> Context {
    Context::new(vec![DeploymentKey::from_bytes([key; 32]).derive()])
}

async fn server(key: u8) -> (SocketAddr, Context, Arc<Counting>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let ctx = ctx(key);
    let handler = Arc::new(Counting::default());
    tokio::spawn(Responder::serve(sock, ctx.clone(), handler.clone()));
    (addr, ctx, handler)
}

async fn requester(ctx: Context) -> Requester {
    Requester::new(UdpSocket::bind("127.0.0.1:0").await.unwrap(), ctx)
}

fn heartbeat() -> Body {
    Body::Heartbeat(Heartbeat {
        client_id: "00112233445566778899aabbccddeeff".into(),
        cache_free_bytes: 1,
        uptime_s: 2,
        ..Default::default()
    })
}

#[tokio::test]
async fn request_reply_and_deferred_reply() {
    let (addr, _, handler) = server(1).await;
    let req = requester(ctx(1)).await;
    let reply = req.request(addr, heartbeat()).await.unwrap();
    assert_eq!(
        reply,
        Body::HeartbeatAck(HeartbeatAck {
            known: true,
            ..Default::default()
        })
    );
    let reply = req.request(addr, Body::Ping(Ping {})).await.unwrap();
    assert_eq!(reply, Body::Ack(Ack {}));
    assert_eq!(handler.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn wrong_key_is_reported_as_key_mismatch_not_timeout() {
    let (addr, server_ctx, handler) = server(1).await;
    let req = requester(ctx(2)).await;
    let err = req.request(addr, heartbeat()).await.unwrap_err();
    match &err {
        RequestError::KeyMismatch { ours, theirs, .. } => {
            assert_eq!(*theirs, server_ctx.keys.sealing_id());
            assert_eq!(*ours, ctx(2).keys.sealing_id());
        }
        other => panic!("expected key mismatch, got {other}"),
    }
    assert!(err.to_string().contains("deployment key does not match"));
    assert_eq!(handler.calls.load(Ordering::SeqCst), 0);
    assert_eq!(server_ctx.counters.get(DropReason::WrongKey), 1);
}

/// Key rotation on live endpoints: during the overlap the responder accepts both keys and
/// answers each request under its own key; once the old key is retired, a request sealed
/// with it is refused (a counted `wrong_key` drop and a key-mismatch notice).
#[tokio::test]
async fn rotated_keys_overlap_then_the_old_one_is_refused() {
    let (addr, server_ctx, handler) = server(1).await;
    let moved = requester(ctx(1)).await;
    let stayed = requester(ctx(1)).await;
    moved.request(addr, heartbeat()).await.unwrap();
    let new = || DeploymentKey::from_bytes([2; 32]).derive();
    let old = || DeploymentKey::from_bytes([1; 32]).derive();
    // Rotation: the server seals with the new key and still opens the old one.
    server_ctx.keys.replace(vec![new(), old()]);
    stayed.request(addr, heartbeat()).await.unwrap();
    moved.context().keys.replace(vec![new(), old()]);
    moved.request(addr, heartbeat()).await.unwrap();
    // Retirement.
    server_ctx.keys.replace(vec![new()]);
    moved.request(addr, heartbeat()).await.unwrap();
    let before = server_ctx.counters.get(DropReason::WrongKey);
    match stayed.request(addr, heartbeat()).await {
        Err(RequestError::KeyMismatch { theirs, .. }) => assert_eq!(theirs, new().id()),
        other => panic!("expected a key mismatch, got {other:?}"),
    }
    assert!(server_ctx.counters.get(DropReason::WrongKey) > before);
    assert_eq!(handler.calls.load(Ordering::SeqCst), 4);
}

/// A replayed datagram is answered from the cache and never reaches the handler again.
#[tokio::test]
async fn replayed_request_is_not_handled_twice() {
    let (addr, server_ctx, handler) = server(1).await;
    // Capture the exact bytes a requester sends by pointing it at a relay socket.
    let relay = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let req = requester(ctx(1)).await;
    let req_addr = req.local_addr().unwrap();
    let pending = tokio::spawn(async move { req.request(relay_addr, heartbeat()).await });
    let mut buf = [0u8; 2048];
    let (n, _) = relay.recv_from(&mut buf).await.unwrap();
    let captured = buf[..n].to_vec();
    // Forward to the real server three times, then relay the answer back.
    let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for _ in 0..3 {
        attacker.send_to(&captured, addr).await.unwrap();
    }
    let mut answers = Vec::new();
    for _ in 0..3 {
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), attacker.recv_from(&mut buf))
            .await
            .expect("each copy is answered")
            .unwrap();
        answers.push(buf[..n].to_vec());
    }
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1, "handled once");
    assert_eq!(server_ctx.counters.get(DropReason::Duplicate), 2);
    assert!(
        answers.iter().all(|a| *a == answers[0]),
        "same cached reply"
    );
    relay.send_to(&answers[0], req_addr).await.unwrap();
    let reply = pending.await.unwrap().unwrap();
    assert_eq!(
        reply,
        Body::HeartbeatAck(HeartbeatAck {
            known: true,
            ..Default::default()
        })
    );
}

#[tokio::test]
async fn garbage_is_counted_and_server_keeps_serving() {
    let (addr, server_ctx, _) = server(1).await;
    let junk = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let samples: Vec<Vec<u8>> = vec![
        vec![],
        vec![0; 3],
        b"BL".to_vec(),
        vec![
            b'B', b'L', 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
        vec![0xff; 1500],
        vec![b'X'; 100],
    ];
    for s in &samples {
        junk.send_to(s, addr).await.unwrap();
    }
    let req = requester(ctx(1)).await;
    // The server still answers, and (datagrams on loopback arrive in order) all junk
    // was processed before this request.
    req.request(addr, heartbeat()).await.unwrap();
    let c = &server_ctx.counters;
    assert_eq!(c.get(DropReason::TooShort), 4, "{:?}", c.snapshot());
    assert_eq!(c.get(DropReason::Oversized), 1, "{:?}", c.snapshot());
    assert_eq!(c.get(DropReason::BadMagic), 1, "{:?}", c.snapshot());
}

/// With tokio's clock paused, a request to a silent peer follows the retry schedule
/// exactly: 6 sends, then a timeout error after the 10 s deadline.
#[tokio::test(start_paused = true)]
async fn silent_peer_gets_backoff_then_timeout() {
    let hole = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let r2 = received.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while hole.recv_from(&mut buf).await.is_ok() {
            r2.fetch_add(1, Ordering::SeqCst);
        }
    });
    let mut c = ctx(1);
    c.retry = RetryPolicy {
        jitter: 0.0,
        ..RetryPolicy::default()
    };
    let req = requester(c).await;
    let started = tokio::time::Instant::now();
    let err = req.request(hole_addr, heartbeat()).await.unwrap_err();
    let elapsed = started.elapsed();
    match err {
        RequestError::Timeout { attempts, .. } => assert_eq!(attempts, 6),
        other => panic!("expected timeout, got {other}"),
    }
    assert_eq!(elapsed, Duration::from_secs(10));
    // Let the black hole's task drain its socket.
    tokio::time::sleep(Duration::from_millis(1)).await;
    for _ in 0..100 {
        if received.load(Ordering::SeqCst) == 6 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(received.load(Ordering::SeqCst), 6);
}

/// A stale message (sender clock far behind) or one dated ahead is dropped and counted,
/// with no answer at all: an answer could be aimed at a victim by replaying a capture with
/// a spoofed source. (Before issue #10 it was answered with a clock-skew error.)
#[tokio::test]
async fn out_of_window_gets_no_answer() {
    struct Off(i64);
    impl branchline_transport::Clock for Off {
        fn now_ms(&self) -> u64 {
            (branchline_transport::SystemClock.now_ms() as i64 + self.0) as u64
        }
    }
    let (addr, server_ctx, handler) = server(1).await;
    for (n, offset) in [(1u64, -600_000i64), (2, 60_000)] {
        let mut c = ctx(1);
        c.clock = Arc::new(Off(offset));
        c.retry = RetryPolicy {
            deadline: Duration::from_millis(600),
            ..RetryPolicy::default()
        };
        let req = requester(c).await;
        let err = req.request(addr, heartbeat()).await.unwrap_err();
        match &err {
            RequestError::Timeout { .. } => assert!(err.to_string().contains("clock"), "{err}"),
            other => panic!("expected a time-out, got {other}"),
        }
        assert!(server_ctx.counters.get(DropReason::OutOfWindow) >= n);
    }
    assert_eq!(handler.calls.load(Ordering::SeqCst), 0);
}

/// Captures the exact bytes of one request from a fresh requester.
async fn capture(body: Body) -> Vec<u8> {
    let relay = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let req = requester(ctx(1)).await;
    let pending = tokio::spawn(async move { req.request(relay_addr, body).await });
    let mut buf = [0u8; 2048];
    let (n, _) = relay.recv_from(&mut buf).await.unwrap();
    pending.abort();
    buf[..n].to_vec()
}

/// Sends `datagram` from `sock` to `to` and returns how many answers arrive before a Ping
/// from `sock`'s own requester gets through (loopback keeps order, so answers to the
/// datagram arrive before the Ping's).
async fn answers_to(sock: &UdpSocket, datagram: &[u8], to: SocketAddr, copies: usize) -> usize {
    for _ in 0..copies {
        sock.send_to(datagram, to).await.unwrap();
    }
    // A marker: a fresh request from the same socket, sealed by hand.
    let marker = capture(Body::Ping(Ping {})).await;
    sock.send_to(&marker, to).await.unwrap();
    let mut buf = [0u8; 2048];
    let mut answers = 0;
    loop {
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .expect("the marker is answered")
            .unwrap();
        let env = ctx(1).keys.open(&buf[..n]).unwrap();
        match env {
            branchline_wire::Incoming::Message { envelope, .. }
                if envelope.body == Some(Body::Ack(Ack {})) =>
            {
                return answers;
            }
            _ => answers += 1,
        }
    }
}

/// Issue #10, "no reflection": a captured request replayed from another address gets no
/// answer; from its original address it is answered a few times at most; never handled
/// twice.
#[tokio::test]
async fn replays_are_not_reflected() {
    let (addr, server_ctx, handler) = server(1).await;
    let captured = capture(heartbeat()).await;
    let original = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let spoofer = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    assert_eq!(answers_to(&original, &captured, addr, 1).await, 1);
    assert_eq!(answers_to(&spoofer, &captured, addr, 20).await, 0);
    // The original source: at most 5 more (the default max_resends).
    assert_eq!(answers_to(&original, &captured, addr, 20).await, 5);
    assert_eq!(
        handler.calls.load(Ordering::SeqCst),
        1 + 3,
        "handled once (+3 markers)"
    );
    assert_eq!(server_ctx.counters.get(DropReason::Duplicate), 40);
}

/// Issue #10: a key-mismatch notice counts only from the address the request went to.
/// A forged one from anywhere else (echoing the clear nonce) is counted and ignored, and
/// the request still gets its real answer.
#[tokio::test]
async fn key_mismatch_notice_from_another_address_is_ignored() {
    let (addr, _, handler) = server(1).await;
    let relay = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let c = ctx(1);
    let counters = c.counters.clone();
    let req = Arc::new(requester(c).await);
    let req_addr = req.local_addr().unwrap();
    let r2 = req.clone();
    let pending = tokio::spawn(async move { r2.request(relay_addr, heartbeat()).await });
    let mut buf = [0u8; 2048];
    let (n, _) = relay.recv_from(&mut buf).await.unwrap();
    let request = buf[..n].to_vec();
    let header = branchline_wire::frame::Header::parse(&request).unwrap();
    let forged = branchline_wire::frame::key_mismatch_notice(ctx(9).keys.sealing_id(), &header);
    let forger = UdpSocket::bind("127.0.0.3:0").await.unwrap();
    forger.send_to(&forged, req_addr).await.unwrap();
    // Now relay both ways between the requester and the real server.
    relay.send_to(&request, addr).await.unwrap();
    let relay_task = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = relay.recv_from(&mut buf).await {
            let to = if from == addr { req_addr } else { addr };
            let _ = relay.send_to(&buf[..n], to).await;
        }
    });
    let reply = pending
        .await
        .unwrap()
        .expect("the forged notice did not end the request");
    relay_task.abort();
    assert!(matches!(reply, Body::HeartbeatAck(_)));
    assert!(counters.get(DropReason::Unsolicited) >= 1);
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
}

/// The same notice from the address the request went to does end it, at once.
#[tokio::test]
async fn key_mismatch_notice_from_the_peer_ends_the_request() {
    let hole = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let req = Arc::new(requester(ctx(1)).await);
    let req_addr = req.local_addr().unwrap();
    let r2 = req.clone();
    let pending = tokio::spawn(async move { r2.request(hole_addr, heartbeat()).await });
    let mut buf = [0u8; 2048];
    let (n, _) = hole.recv_from(&mut buf).await.unwrap();
    let header = branchline_wire::frame::Header::parse(&buf[..n]).unwrap();
    let notice = branchline_wire::frame::key_mismatch_notice(ctx(9).keys.sealing_id(), &header);
    hole.send_to(&notice, req_addr).await.unwrap();
    assert!(matches!(
        pending.await.unwrap(),
        Err(RequestError::KeyMismatch { .. })
    ));
}

/// Issue #10, "silence the server": a key holder flooding messages dated a few seconds
/// ahead from one address fills only its own quota; another sender is still served.
#[tokio::test]
async fn future_dated_flood_does_not_silence_the_server() {
    struct Ahead;
    impl branchline_transport::Clock for Ahead {
        fn now_ms(&self) -> u64 {
            branchline_transport::SystemClock.now_ms() + 4_000
        }
    }
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    branchline_transport::enlarge_receive_buffer(&sock, branchline_transport::SMALL_RECV_BUFFER)
        .unwrap();
    let addr = sock.local_addr().unwrap();
    let mut server_ctx = ctx(1);
    server_ctx.replay = branchline_transport::ReplayConfig {
        per_sender: 200,
        capacity: 1_000,
        ..Default::default()
    };
    let handler = Arc::new(Counting::default());
    tokio::spawn(Responder::serve(sock, server_ctx.clone(), handler.clone()));
    let hostile = UdpSocket::bind("127.0.0.4:0").await.unwrap();
    let key = &DeploymentKey::from_bytes([1; 32]).derive();
    for i in 0..2_000u64 {
        let env = branchline_wire::Envelope {
            msg_id: 1 + i,
            sent_at_ms: Ahead.now_ms(),
            in_reply_to: 0,
            body: Some(Body::Ping(Ping {})),
        };
        let d = branchline_wire::frame::seal(key, rand_nonce(i), &env).unwrap();
        hostile.send_to(&d, addr).await.unwrap();
        if i % 100 == 99 {
            tokio::task::yield_now().await;
        }
    }
    let req = Requester::new(UdpSocket::bind("127.0.0.5:0").await.unwrap(), ctx(1));
    for _ in 0..10 {
        req.request(addr, heartbeat())
            .await
            .expect("honest sender served");
    }
    assert!(server_ctx.counters.get(DropReason::OverQuota) >= 1_000);
}

fn rand_nonce(i: u64) -> [u8; 12] {
    let mut n = [7u8; 12];
    n[..8].copy_from_slice(&i.to_be_bytes());
    n
}
