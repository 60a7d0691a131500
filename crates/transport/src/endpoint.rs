//! The tokio shell around the pure parts: a [`Responder`] serves requests on a node's
//! request port, a [`Requester`] sends requests from the node's reply port and waits for
//! the answers there (DESIGN.md: "a node sends a request from the socket bound to its own
//! reply port, to the peer's request port").

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use branchline_wire::frame::{self, Header};
use branchline_wire::msg::{ErrorCode, ErrorReply};
use branchline_wire::{Body, Envelope, Incoming, KeyId, OpenError, SealingKey};

use crate::keys::KeySet;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::counters::{Counters, DropReason};
use crate::ratelimit::TokenBucket;
use crate::replay::{ReplayConfig, ReplayGuard, Verdict};
use crate::retry::{Retransmit, RetryPolicy, Step};

/// Wall-clock source for send times and replay windows (Unix milliseconds).
pub trait Clock: Send + Sync + 'static {
    /// Unix milliseconds now.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        branchline_time::now_ms()
    }
}

/// What every endpoint of a node shares: keys, counters, clock, limits.
#[derive(Clone)]
pub struct Context {
    /// Keys this node accepts; the first one seals new requests. Shared and changeable
    /// at run time (key rotation).
    pub keys: KeySet,
    /// Datagrams dropped, by reason.
    pub counters: Arc<Counters>,
    /// Send times and replay windows are read from this clock.
    pub clock: Arc<dyn Clock>,
    /// How requests are retransmitted until answered.
    pub retry: RetryPolicy,
    /// The replay guard's window and bounds.
    pub replay: ReplayConfig,
    /// Most key-mismatch notices sent per second (bursts of the same size allowed).
    pub mismatch_notices_per_s: u32,
}

impl Context {
    /// A context with default limits, the system clock and fresh counters.
    pub fn new(keys: Vec<SealingKey>) -> Self {
        Context {
            keys: KeySet::new(keys),
            counters: Arc::new(Counters::default()),
            clock: Arc::new(SystemClock),
            retry: RetryPolicy::default(),
            replay: ReplayConfig::default(),
            mismatch_notices_per_s: 100,
        }
    }
}

fn random_msg_id() -> u64 {
    rand::random_range(1..=u64::MAX)
}

fn random_nonce() -> [u8; 12] {
    rand::random()
}

/// Uniform in `[0, 1)`, for retransmission jitter.
fn jitter_sample() -> f64 {
    rand::random()
}

/// Receive buffer: larger than any valid datagram so oversized ones are seen as such.
const RECV_BUF: usize = 2048;

/// How a handler answers a request.
pub enum Response {
    /// Reply now.
    Reply(Body),
    /// Reply when the future completes (e.g. after a database commit). The receive loop
    /// does not wait for it.
    Later(Pin<Box<dyn Future<Output = Body> + Send>>),
    /// Send nothing (the request was dropped and counted by the handler).
    Silent,
}

/// Handles requests arriving on a request port. Must be idempotent only per message id
/// (the endpoint never calls it twice for one id), but should tolerate the same *content*
/// arriving again under a new id.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request `body` that arrived from `from`.
    fn handle(&self, from: SocketAddr, body: Body) -> Response;

    /// As [`Handler::handle`], also told the id of the key the request was sealed with
    /// (e.g. to see which clients moved to a rotated key). Calls `handle` by default.
    fn handle_keyed(&self, from: SocketAddr, key: KeyId, body: Body) -> Response {
        let _ = key;
        self.handle(from, body)
    }
}

/// Serves requests on a node's request port.
pub struct Responder;

impl Responder {
    /// Runs the receive loop on `socket` until a non-transient socket error.
    pub async fn serve<H: Handler>(
        socket: UdpSocket,
        ctx: Context,
        handler: Arc<H>,
    ) -> io::Result<()> {
        let socket = Arc::new(socket);
        let guard = Arc::new(Mutex::new(ReplayGuard::new(ctx.replay)));
        let mut notices = TokenBucket::new(
            ctx.mismatch_notices_per_s as f64,
            ctx.mismatch_notices_per_s.max(1) as f64,
        );
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let (n, from) = match socket.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(e),
            };
            let dg = &buf[..n];
            let (header, envelope) = match ctx.keys.open(dg) {
                Ok(Incoming::Message { header, envelope }) => (header, envelope),
                Ok(Incoming::KeyMismatch { .. }) => {
                    ctx.counters.count(DropReason::Unsolicited);
                    continue;
                }
                Err(OpenError::WrongKey(theirs)) => {
                    ctx.counters.count(DropReason::WrongKey);
                    if notices.take(ctx.clock.now_ms())
                        && let Ok(h) = Header::parse(dg)
                    {
                        let notice = frame::key_mismatch_notice(ctx.keys.sealing_id(), &h);
                        let _ = socket.send_to(&notice, from).await;
                        tracing::debug!(%from, %theirs, "sent key-mismatch notice");
                    }
                    continue;
                }
                Err(e) => {
                    ctx.counters.count(DropReason::from(e));
                    continue;
                }
            };
            if envelope.in_reply_to != 0 {
                ctx.counters.count(DropReason::Unsolicited);
                continue;
            }
            let now = ctx.clock.now_ms();
            let verdict = guard.lock().unwrap_or_else(PoisonError::into_inner).check(
                from,
                envelope.msg_id,
                envelope.sent_at_ms,
                now,
            );
            match verdict {
                Verdict::Fresh => {}
                Verdict::Answered(bytes) => {
                    // Only ever to the address the original came from (the guard checks),
                    // a few times at most.
                    ctx.counters.count(DropReason::Duplicate);
                    let _ = socket.send_to(&bytes, from).await;
                    continue;
                }
                Verdict::Duplicate => {
                    ctx.counters.count(DropReason::Duplicate);
                    continue;
                }
                Verdict::OverQuota => {
                    ctx.counters.count(DropReason::OverQuota);
                    continue;
                }
                Verdict::OutOfWindow { skew_ms } => {
                    // No answer: a replayed capture with a spoofed source must not make
                    // this node send anything to anyone. The sender times out; its error
                    // names the clock as a possible cause.
                    ctx.counters.count(DropReason::OutOfWindow);
                    tracing::debug!(%from, skew_ms, "dropped a message outside the replay window");
                    continue;
                }
            }
            let request_id = envelope.msg_id;
            let response = match envelope.body {
                Some(body) => handler.handle_keyed(from, header.key_id, body),
                None => {
                    ctx.counters.count(DropReason::Unsupported);
                    Response::Reply(Body::Error(ErrorReply {
                        code: ErrorCode::Unsupported as i32,
                        detail: format!(
                            "this node (version {}) does not know that message kind",
                            branchline_wire::SOFTWARE_VERSION
                        ),
                        receiver_time_ms: now,
                    }))
                }
            };
            match response {
                Response::Reply(body) => {
                    if let Some(bytes) = seal_reply(&ctx, header.key_id, request_id, body) {
                        guard
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .complete(request_id, bytes.clone(), now);
                        let _ = socket.send_to(&bytes, from).await;
                    }
                }
                Response::Later(fut) => {
                    let (ctx, socket, guard) = (ctx.clone(), socket.clone(), guard.clone());
                    tokio::spawn(async move {
                        let body = fut.await;
                        if let Some(bytes) = seal_reply(&ctx, header.key_id, request_id, body) {
                            let now = ctx.clock.now_ms();
                            guard
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .complete(request_id, bytes.clone(), now);
                            let _ = socket.send_to(&bytes, from).await;
                        }
                    });
                }
                Response::Silent => {}
            }
        }
    }
}

/// Seals a reply to request `in_reply_to` under the key the request used.
fn seal_reply(ctx: &Context, key: KeyId, in_reply_to: u64, body: Body) -> Option<Arc<[u8]>> {
    let now = ctx.clock.now_ms();
    let mut env = Envelope {
        msg_id: random_msg_id(),
        sent_at_ms: now,
        in_reply_to,
        body: Some(body),
    };
    match ctx.keys.seal(Some(key), random_nonce(), &env) {
        Ok(b) => Some(b.into()),
        Err(e) => {
            tracing::error!(error = %e, "reply does not fit in a datagram; answering with an error");
            env.body = Some(Body::Error(ErrorReply {
                code: ErrorCode::Unavailable as i32,
                detail: "the reply is too large for a small message".into(),
                receiver_time_ms: now,
            }));
            ctx.keys
                .seal(Some(key), random_nonce(), &env)
                .ok()
                .map(Into::into)
        }
    }
}

/// Errors a UDP socket reports for earlier sends (ICMP) that do not affect receiving.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EHOSTUNREACH | libc::ENETUNREACH)
    )
}

/// Why a request got no useful answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(
        "no answer from {to} after {attempts} attempts in {elapsed:.1?}: check that the peer is running, that UDP port {} is open towards it, that the reply port {reply_port} is open back to this host and that this host's clock agrees with the peer's (NTP; a message dated outside the peer's replay window is dropped unanswered){}",
        to.port(),
        last_error.as_ref().map(|e| format!(" (last send error: {e})")).unwrap_or_default()
    )]
    /// No answer came before the retry policy's deadline.
    Timeout {
        /// The peer asked.
        to: SocketAddr,
        /// Sends made, the first one included.
        attempts: u32,
        /// Time from the first send to giving up.
        elapsed: Duration,
        /// This endpoint's port, where the answer was expected.
        reply_port: u16,
        /// The last error the socket reported when sending, if any.
        last_error: Option<String>,
    },
    #[error(
        "the deployment key does not match the one used by {to} (this key has id {ours}, the peer's has id {theirs}): copy deployment.key from the server's data directory and try again (if the key was rotated, `branchline connector key status` shows the current key's fingerprint; clients that were online during the rotation's overlap have it already)"
    )]
    /// The peer answered that it uses another deployment key.
    KeyMismatch {
        /// The peer.
        to: SocketAddr,
        /// The id of this node's key.
        ours: KeyId,
        /// The id of the peer's key.
        theirs: KeyId,
    },
    #[error(
        "{to} refused the message because the clocks differ by {:.1} s (limit {window_s} s): synchronise this host's clock (NTP)",
        skew_ms.unsigned_abs() as f64 / 1000.0
    )]
    /// The peer refused the message as dated outside its replay window.
    ClockSkew {
        /// The peer.
        to: SocketAddr,
        /// This node's send time minus the peer's clock when it refused (ms).
        skew_ms: i64,
        /// This node's replay window (s), which the peer is expected to share.
        window_s: u64,
    },
    #[error("{to} does not support {kind} messages (it runs an older version): {detail}")]
    /// The peer does not know this kind of message.
    Unsupported {
        /// The peer.
        to: SocketAddr,
        /// The kind of message sent.
        kind: &'static str,
        /// What the peer said.
        detail: String,
    },
    #[error("{to} refused the request ({code:?}): {detail}")]
    /// The peer answered with an error.
    Refused {
        /// The peer.
        to: SocketAddr,
        /// The error's code.
        code: ErrorCode,
        /// What the peer said.
        detail: String,
    },
    /// The request could not be sealed into one datagram.
    #[error("the request does not fit in a datagram: {0}")]
    TooLarge(#[from] branchline_wire::SealError),
    /// The requester cannot send or receive any more.
    #[error("the requester's receive loop stopped: {0}")]
    Closed(String),
}

enum Outcome {
    Reply(Box<Body>),
    KeyMismatch(KeyId),
}

struct Pending {
    tx: oneshot::Sender<Outcome>,
    nonce: [u8; 12],
    /// Where the request went: the only address whose key-mismatch notice counts.
    to: SocketAddr,
}

#[derive(Default)]
struct PendingTable {
    by_id: HashMap<u64, Pending>,
    by_nonce: HashMap<[u8; 12], u64>,
}

struct RequesterInner {
    socket: UdpSocket,
    ctx: Context,
    pending: Mutex<PendingTable>,
    closed: Mutex<Option<String>>,
}

/// Sends requests from a node's reply port and matches the answers.
pub struct Requester {
    inner: Arc<RequesterInner>,
    task: JoinHandle<()>,
}

impl Drop for Requester {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Removes a request's entries from the pending table however the request ends.
struct PendingGuard<'a> {
    table: &'a Mutex<PendingTable>,
    msg_id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = t.by_id.remove(&self.msg_id) {
            t.by_nonce.remove(&p.nonce);
        }
    }
}

impl Requester {
    /// Starts the receive loop on `socket` (the node's reply port).
    pub fn new(socket: UdpSocket, ctx: Context) -> Requester {
        let inner = Arc::new(RequesterInner {
            socket,
            ctx,
            pending: Mutex::new(PendingTable::default()),
            closed: Mutex::new(None),
        });
        let task = tokio::spawn(Self::receive_loop(inner.clone()));
        Requester { inner, task }
    }

    /// The address and port this requester's socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.socket.local_addr()
    }

    /// Lets this endpoint send to broadcast addresses (subnet discovery).
    pub fn set_broadcast(&self, on: bool) -> io::Result<()> {
        self.inner.socket.set_broadcast(on)
    }

    /// Sends `body` once to `to`, sealed, expecting no answer (a subnet broadcast: the
    /// receivers answer with requests of their own, never on the broadcast port).
    pub async fn send_oneway(&self, to: SocketAddr, body: Body) -> Result<(), RequestError> {
        let ctx = &self.inner.ctx;
        let envelope = Envelope {
            msg_id: random_msg_id(),
            sent_at_ms: ctx.clock.now_ms(),
            in_reply_to: 0,
            body: Some(body),
        };
        let datagram = ctx.keys.seal(None, random_nonce(), &envelope)?;
        self.inner
            .socket
            .send_to(&datagram, to)
            .await
            .map(|_| ())
            .map_err(|e| RequestError::Closed(format!("cannot send to {to}: {e}")))
    }

    /// The keys, counters, clock and policies this requester uses.
    pub fn context(&self) -> &Context {
        &self.inner.ctx
    }

    async fn receive_loop(inner: Arc<RequesterInner>) {
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let (n, from) = match inner.socket.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) if is_transient(&e) => continue,
                Err(e) => {
                    *inner.closed.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some(e.to_string());
                    // Wake every waiter: dropping the senders makes them fail fast.
                    let mut t = inner.pending.lock().unwrap_or_else(PoisonError::into_inner);
                    t.by_id.clear();
                    t.by_nonce.clear();
                    return;
                }
            };
            let counters = &inner.ctx.counters;
            match inner.ctx.keys.open(&buf[..n]) {
                Ok(Incoming::Message { envelope, .. }) => {
                    let mut t = inner.pending.lock().unwrap_or_else(PoisonError::into_inner);
                    match (envelope.in_reply_to, envelope.body) {
                        (0, _) => counters.count(DropReason::Unsolicited),
                        (id, Some(body)) => match t.by_id.remove(&id) {
                            Some(p) => {
                                t.by_nonce.remove(&p.nonce);
                                let _ = p.tx.send(Outcome::Reply(Box::new(body)));
                            }
                            None => counters.count(DropReason::Unsolicited),
                        },
                        (_, None) => counters.count(DropReason::Unsupported),
                    }
                }
                Ok(Incoming::KeyMismatch {
                    responder_key,
                    echoed_nonce,
                }) => {
                    // The notice is unauthenticated: it counts only if it echoes the nonce
                    // of a request still outstanding *and* comes from the address that
                    // request went to. Anything else is counted and ignored.
                    let mut t = inner.pending.lock().unwrap_or_else(PoisonError::into_inner);
                    let matching = t
                        .by_nonce
                        .get(&echoed_nonce)
                        .copied()
                        .filter(|id| t.by_id.get(id).is_some_and(|p| p.to == from));
                    match matching {
                        Some(id) => {
                            t.by_nonce.remove(&echoed_nonce);
                            if let Some(p) = t.by_id.remove(&id) {
                                let _ = p.tx.send(Outcome::KeyMismatch(responder_key));
                            }
                        }
                        None => {
                            tracing::debug!(%from, "ignored a key-mismatch notice nobody waits for from that address");
                            counters.count(DropReason::Unsolicited)
                        }
                    }
                }
                Err(e) => counters.count(DropReason::from(e)),
            }
        }
    }

    /// Sends `body` to `to` with the context's retry policy and waits for the answer.
    pub async fn request(&self, to: SocketAddr, body: Body) -> Result<Body, RequestError> {
        self.request_with(to, body, self.inner.ctx.retry).await
    }

    /// Sends `body` to `to`, retransmitting per `policy`, and waits for the answer. An
    /// `Error` reply becomes the matching [`RequestError`].
    pub async fn request_with(
        &self,
        to: SocketAddr,
        body: Body,
        policy: RetryPolicy,
    ) -> Result<Body, RequestError> {
        let ctx = &self.inner.ctx;
        let kind = body.kind();
        let msg_id = random_msg_id();
        let nonce = random_nonce();
        let envelope = Envelope {
            msg_id,
            sent_at_ms: ctx.clock.now_ms(),
            in_reply_to: 0,
            body: Some(body),
        };
        let datagram = ctx.keys.seal(None, nonce, &envelope)?;
        let (tx, mut rx) = oneshot::channel();
        {
            if let Some(reason) = self
                .inner
                .closed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
            {
                return Err(RequestError::Closed(reason));
            }
            let mut t = self
                .inner
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            t.by_id.insert(msg_id, Pending { tx, nonce, to });
            t.by_nonce.insert(nonce, msg_id);
        }
        let _cleanup = PendingGuard {
            table: &self.inner.pending,
            msg_id,
        };
        let start = tokio::time::Instant::now();
        let mut last_error = None;
        if let Err(e) = self.inner.socket.send_to(&datagram, to).await {
            last_error = Some(e.to_string());
        }
        let mut rt = Retransmit::start(policy, start.into_std(), jitter_sample());
        let outcome = loop {
            tokio::select! {
                r = &mut rx => match r {
                    Ok(o) => break o,
                    Err(_) => {
                        let reason = self.inner.closed.lock().unwrap_or_else(PoisonError::into_inner).clone();
                        return Err(RequestError::Closed(reason.unwrap_or_else(|| "endpoint dropped".into())));
                    }
                },
                _ = tokio::time::sleep_until(rt.next_at().into()) => {
                    match rt.on_timer(tokio::time::Instant::now().into_std(), jitter_sample()) {
                        Step::Resend => {
                            if let Err(e) = self.inner.socket.send_to(&datagram, to).await {
                                last_error = Some(e.to_string());
                            }
                        }
                        Step::Wait(_) => {}
                        Step::GiveUp => {
                            return Err(RequestError::Timeout {
                                to,
                                attempts: rt.attempts(),
                                elapsed: start.elapsed(),
                                reply_port: self.local_addr().map(|a| a.port()).unwrap_or(0),
                                last_error,
                            });
                        }
                    }
                }
            }
        };
        match outcome {
            Outcome::KeyMismatch(theirs) => Err(RequestError::KeyMismatch {
                to,
                ours: ctx.keys.sealing_id(),
                theirs,
            }),
            Outcome::Reply(body) => match *body {
                Body::Error(e) => {
                    let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
                    Err(match code {
                        ErrorCode::ClockSkew => RequestError::ClockSkew {
                            to,
                            skew_ms: envelope.sent_at_ms as i64 - e.receiver_time_ms as i64,
                            window_s: ctx.replay.window.as_secs(),
                        },
                        ErrorCode::Unsupported => RequestError::Unsupported {
                            to,
                            kind,
                            detail: e.detail,
                        },
                        code => RequestError::Refused {
                            to,
                            code,
                            detail: e.detail,
                        },
                    })
                }
                other => Ok(other),
            },
        }
    }
}
