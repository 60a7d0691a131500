//! Endpoint wiring over real loopback sockets (127.0.0.1, ephemeral ports).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
            assert_eq!(*theirs, server_ctx.keys[0].id());
            assert_eq!(*ours, ctx(2).keys[0].id());
        }
        other => panic!("expected key mismatch, got {other}"),
    }
    assert!(err.to_string().contains("deployment key does not match"));
    assert_eq!(handler.calls.load(Ordering::SeqCst), 0);
    assert_eq!(server_ctx.counters.get(DropReason::WrongKey), 1);
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

/// A stale message (sender clock far behind) gets a clock-skew error, not silence.
#[tokio::test]
async fn clock_skew_is_reported() {
    struct Behind;
    impl branchline_transport::Clock for Behind {
        fn now_ms(&self) -> u64 {
            branchline_transport::SystemClock.now_ms() - 600_000
        }
    }
    let (addr, server_ctx, handler) = server(1).await;
    let mut c = ctx(1);
    c.clock = Arc::new(Behind);
    let req = requester(c).await;
    let err = req.request(addr, heartbeat()).await.unwrap_err();
    match err {
        RequestError::ClockSkew { skew_ms, .. } => {
            assert!((-601_000..=-599_000).contains(&skew_ms), "{skew_ms}")
        }
        other => panic!("expected clock skew, got {other}"),
    }
    assert_eq!(handler.calls.load(Ordering::SeqCst), 0);
    assert_eq!(server_ctx.counters.get(DropReason::OutOfWindow), 1);
}
