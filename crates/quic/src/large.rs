//! Large messages: one request and one response per bidirectional QUIC stream.
//!
//! Used for whatever does not fit in a small-message datagram (piece maps, lists).
//! Framing is in [`crate::frame`]. A requester may run many requests at once on
//! one connection (one stream each, up to the transport's stream limit).
//!
//! Every wait is bounded: a vanished peer ends the connection after the idle
//! timeout of the transport ([`crate::TransportSettings::idle_timeout`]), and a
//! peer that stays alive but never answers is cut off by
//! [`LargeConfig::request_timeout`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::{Connection, Endpoint, RecvStream, SendStream, TransportConfig, VarInt};
use thiserror::Error;
use tokio::task::JoinHandle;

use crate::endpoint::{self, Direction, QuicError};
use crate::frame::{DEFAULT_MAX_PAYLOAD, FrameError, FrameHeader, FrameKind, HEADER_LEN};
use crate::identity::{PeerIdentity, Role};
use crate::limits::{AcceptLimits, AcceptStats, Limiter, Refusal};
use crate::node::NodeIdentity;
use crate::tls::DeploymentTrust;

/// Default largest request payload an accepting endpoint reads (64 KiB): requests
/// are control messages (a locate, a have-set of up to 500,000 pieces); replies
/// may be larger (up to `max_payload`).
pub const DEFAULT_MAX_REQUEST: u32 = 64 * 1024;
/// Default bound on one whole request/response exchange (120 s).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest reason text sent in an `Error` frame, in bytes.
pub const MAX_REASON_LEN: usize = 1024;
/// Largest buffer reserved ahead of data actually received, in bytes (1 MiB):
/// a peer announcing 64 MiB does not make us allocate 64 MiB up front.
const MAX_PREALLOC: usize = 1024 * 1024;

/// Stream error code: the peer's frame was malformed or too large.
pub const STREAM_BAD_FRAME: VarInt = VarInt::from_u32(1);
/// Stream error code: the exchange was abandoned (timeout or local failure).
pub const STREAM_ABANDONED: VarInt = VarInt::from_u32(2);

/// Limits of large messages.
///
/// Memory: a request or response is held whole, so an accepting endpoint holds
/// at most `max_concurrent_streams` ([`crate::TransportSettings`]) ×
/// `max_request` bytes of requests per connection (64 × 64 KiB = 4 MiB by
/// default), and admits a bounded number of connections ([`crate::limits`]).
/// Piece maps are small (32 bytes per piece: 320 KiB for 10 GiB in 1 MiB pieces),
/// so a server with many clients should set `max_payload` to a few MiB.
#[derive(Debug, Clone)]
pub struct LargeConfig {
    /// Largest response payload accepted or sent, in bytes.
    pub max_payload: u32,
    /// Largest request payload sent, or read by an accepting endpoint, in bytes;
    /// a longer one is refused unread with an Error frame (and counted).
    pub max_request: u32,
    /// Bound on one whole exchange, from opening the stream to the last byte of
    /// the response.
    pub request_timeout: Duration,
}

impl Default for LargeConfig {
    fn default() -> Self {
        Self {
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_request: DEFAULT_MAX_REQUEST,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// A large-message exchange failed.
#[derive(Debug, Error)]
pub enum LargeError {
    /// The peer's frame header is not acceptable (too large, unknown kind).
    #[error("bad frame from peer: {0}")]
    Frame(#[from] FrameError),
    /// Our own request is larger than the configured limit.
    #[error(
        "request of {len} bytes exceeds the limit of {max} bytes; split it or raise max_payload"
    )]
    RequestTooLarge {
        /// Request length, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: u32,
    },
    /// The stream ended before the announced number of bytes arrived.
    #[error("peer ended the stream after {got} of {expected} bytes")]
    Truncated {
        /// Bytes announced (header included).
        expected: u64,
        /// Bytes received.
        got: u64,
    },
    /// Bytes followed the one frame of the stream.
    #[error("peer sent bytes after the end of the frame")]
    TrailingBytes,
    /// The peer sent a frame of the wrong kind.
    #[error("peer sent a {0:?} frame where it should not")]
    UnexpectedKind(FrameKind),
    /// The peer answered with an `Error` frame.
    #[error("peer refused the request: {0}")]
    Remote(String),
    /// The peer reset or stopped the stream with an error code.
    #[error("peer aborted the stream (code {0})")]
    Aborted(u64),
    /// The connection failed (peer vanished: idle timeout; peer closed; refused).
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The stream failed for another reason.
    #[error("stream failed: {0}")]
    Stream(String),
    /// The exchange did not finish within the request timeout.
    #[error("no complete response within {0:?}; the peer is too slow or stuck")]
    Timeout(Duration),
}

pub(crate) fn read_error(e: quinn::ReadError) -> LargeError {
    match e {
        quinn::ReadError::Reset(code) => LargeError::Aborted(code.into_inner()),
        quinn::ReadError::ConnectionLost(c) => LargeError::Connection(c),
        other => LargeError::Stream(other.to_string()),
    }
}

pub(crate) fn write_error(e: quinn::WriteError) -> LargeError {
    match e {
        quinn::WriteError::Stopped(code) => LargeError::Aborted(code.into_inner()),
        quinn::WriteError::ConnectionLost(c) => LargeError::Connection(c),
        other => LargeError::Stream(other.to_string()),
    }
}

/// Reads exactly `len` bytes of payload, growing the buffer as data arrives.
/// `already` is how many bytes of the frame were read before (for error reports).
pub(crate) async fn read_payload(
    recv: &mut RecvStream,
    len: usize,
    already: u64,
) -> Result<Bytes, LargeError> {
    read_payload_counted(recv, len, already, &AtomicU64::new(0)).await
}

/// [`read_payload`], also adding the length of every chunk to `progress` as it
/// arrives (before the payload is complete), so a watcher sees a slow transfer
/// still moving.
pub(crate) async fn read_payload_counted(
    recv: &mut RecvStream,
    len: usize,
    already: u64,
    progress: &AtomicU64,
) -> Result<Bytes, LargeError> {
    let mut payload = BytesMut::with_capacity(len.min(MAX_PREALLOC));
    while payload.len() < len {
        match recv
            .read_chunk(len - payload.len(), true)
            .await
            .map_err(read_error)?
        {
            Some(chunk) => {
                payload.extend_from_slice(&chunk.bytes);
                progress.fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
            }
            None => {
                return Err(LargeError::Truncated {
                    expected: already + len as u64,
                    got: already + payload.len() as u64,
                });
            }
        }
    }
    Ok(payload.freeze())
}

/// Reads exactly `buf.len()` bytes.
pub(crate) async fn read_exact(recv: &mut RecvStream, buf: &mut [u8]) -> Result<(), LargeError> {
    recv.read_exact(buf).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(got) => LargeError::Truncated {
            expected: buf.len() as u64,
            got: got as u64,
        },
        quinn::ReadExactError::ReadError(e) => read_error(e),
    })
}

/// Checks that the peer finished the stream right after the frame.
pub(crate) async fn expect_end(recv: &mut RecvStream) -> Result<(), LargeError> {
    match recv.read_chunk(1, true).await.map_err(read_error)? {
        None => Ok(()),
        Some(_) => Err(LargeError::TrailingBytes),
    }
}

/// Reads one whole frame and the end of the stream.
async fn read_frame(
    recv: &mut RecvStream,
    max_payload: u32,
) -> Result<(FrameKind, Bytes), LargeError> {
    let mut header = [0u8; HEADER_LEN];
    read_exact(recv, &mut header).await?;
    let header = FrameHeader::decode(header, max_payload)?;
    let payload = read_payload(recv, header.len as usize, HEADER_LEN as u64).await?;
    expect_end(recv).await?;
    Ok((header.kind, payload))
}

/// Writes one frame and finishes the stream.
async fn write_frame(
    send: &mut SendStream,
    kind: FrameKind,
    payload: Bytes,
) -> Result<(), LargeError> {
    let len = u32::try_from(payload.len()).map_err(|_| LargeError::RequestTooLarge {
        len: payload.len(),
        max: u32::MAX,
    })?;
    send.write_all(&FrameHeader { kind, len }.encode())
        .await
        .map_err(write_error)?;
    send.write_chunk(payload).await.map_err(write_error)?;
    send.finish()
        .map_err(|e| LargeError::Stream(e.to_string()))?;
    Ok(())
}

/// Sends `request` on a new stream of `conn` and returns the response payload.
pub async fn send_request(
    conn: &Connection,
    request: Bytes,
    config: &LargeConfig,
) -> Result<Bytes, LargeError> {
    let max_request = config.max_request.min(config.max_payload);
    if request.len() > max_request as usize {
        return Err(LargeError::RequestTooLarge {
            len: request.len(),
            max: max_request,
        });
    }
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        let written = write_frame(&mut send, FrameKind::Request, request).await;
        // Read even if writing failed: a peer that refuses a request stops our
        // stream and explains why in an Error frame.
        let response = read_frame(&mut recv, config.max_payload).await;
        match (written, response) {
            (_, Ok((FrameKind::Response, payload))) => Ok(payload),
            (_, Ok((FrameKind::Error, reason))) => Err(LargeError::Remote(
                String::from_utf8_lossy(&reason).into_owned(),
            )),
            (_, Ok((kind, _))) => Err(LargeError::UnexpectedKind(kind)),
            (Err(w), Err(_)) => Err(w),
            (Ok(()), Err(r)) => {
                if matches!(r, LargeError::Frame(_)) {
                    let _ = recv.stop(STREAM_BAD_FRAME);
                }
                Err(r)
            }
        }
    };
    tokio::time::timeout(config.request_timeout, exchange)
        .await
        .map_err(|_| LargeError::Timeout(config.request_timeout))?
}

/// A handler's refusal or failure, sent to the requester in an `Error` frame.
/// Say what failed in words the requester's operator can act on; at most
/// [`MAX_REASON_LEN`] bytes are sent.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

fn reason_bytes(reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Bytes::copy_from_slice(&reason.as_bytes()[..end])
}

/// Answers one request stream. The request (at most `max_request` bytes) must arrive
/// whole within the limiter's request deadline; refusals are counted there.
async fn answer<H, Fut>(
    mut send: SendStream,
    mut recv: RecvStream,
    peer: PeerIdentity,
    handler: Arc<H>,
    limits: (u32, u32),
    limiter: Arc<Limiter>,
) where
    H: Fn(PeerIdentity, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, HandlerError>> + Send + 'static,
{
    let (max_request, max_payload) = limits;
    let deadline = limiter.limits().request_timeout;
    let Ok(read) = tokio::time::timeout(deadline, read_frame(&mut recv, max_request)).await else {
        limiter.stats().count(Refusal::RequestTimeout);
        tracing::debug!(peer = %peer.role, ?deadline, "large-message request not received in time");
        let _ = recv.stop(STREAM_ABANDONED);
        let _ = send.reset(STREAM_ABANDONED);
        return;
    };
    let reply = match read {
        Ok((FrameKind::Request, request)) => match handler(peer.clone(), request).await {
            Ok(response) if response.len() <= max_payload as usize => {
                (FrameKind::Response, response)
            }
            Ok(response) => {
                tracing::warn!(peer = %peer.role, len = response.len(), "large-message response exceeds the limit");
                (
                    FrameKind::Error,
                    reason_bytes(&format!(
                        "response of {} bytes exceeds the responder's limit of {max_payload} bytes",
                        response.len()
                    )),
                )
            }
            Err(e) => (FrameKind::Error, reason_bytes(&e.0)),
        },
        Ok((kind, _)) => {
            limiter.stats().count(Refusal::BadRequest);
            (
                FrameKind::Error,
                reason_bytes(&format!("expected a Request frame, got {kind:?}")),
            )
        }
        Err(
            e @ (LargeError::Frame(_) | LargeError::TrailingBytes | LargeError::Truncated { .. }),
        ) => {
            limiter.stats().count(Refusal::BadRequest);
            let _ = recv.stop(STREAM_BAD_FRAME);
            tracing::info!(peer = %peer.role, error = %e, "refused a large-message request");
            (FrameKind::Error, reason_bytes(&e.to_string()))
        }
        Err(e) => {
            tracing::debug!(peer = %peer.role, error = %e, "large-message request failed");
            let _ = send.reset(STREAM_ABANDONED);
            return;
        }
    };
    if let Err(e) = write_frame(&mut send, reply.0, reply.1).await {
        tracing::debug!(peer = %peer.role, error = %e, "could not send large-message response");
    }
}

/// Accepts connections on `endpoint` and answers every request with `handler`,
/// until the endpoint is closed. Each connection and each stream runs in its own
/// task; aborting the returned task stops them all. `limiter` bounds connections
/// and request deadlines and counts refusals.
pub fn serve<H, Fut>(
    endpoint: Endpoint,
    trust: DeploymentTrust,
    config: LargeConfig,
    limiter: Arc<Limiter>,
    handler: H,
) -> JoinHandle<()>
where
    H: Fn(PeerIdentity, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, HandlerError>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let limits = (
        config.max_request.min(config.max_payload),
        config.max_payload,
    );
    let per_stream_limiter = limiter.clone();
    endpoint::serve_streams(endpoint, trust, None, limiter, move |peer, send, recv| {
        answer(
            send,
            recv,
            peer,
            handler.clone(),
            limits,
            per_stream_limiter.clone(),
        )
    })
}

/// A node's pair of large-message endpoints for one class (Foreground or
/// Background), following the port rule: the request endpoint (e.g. client
/// 34337, server 34333) accepts; the reply endpoint (client 34335, server 34331)
/// connects to peers' request ports.
#[derive(Debug)]
pub struct LargeMessaging {
    request_endpoint: Endpoint,
    reply_endpoint: Endpoint,
    trust: DeploymentTrust,
    config: LargeConfig,
    limiter: Arc<Limiter>,
}

impl LargeMessaging {
    /// Binds both endpoints. `transport` sets the congestion controller and
    /// timeouts (see [`crate::transport_config`]).
    pub fn bind(
        request_addr: SocketAddr,
        reply_addr: SocketAddr,
        identity: &NodeIdentity,
        trust: DeploymentTrust,
        transport: Arc<TransportConfig>,
        config: LargeConfig,
    ) -> Result<Self, QuicError> {
        let request_endpoint = endpoint::bind(
            request_addr,
            identity,
            &trust,
            crate::ALPN_LARGE,
            transport.clone(),
            Direction::Accept,
        )?;
        let reply_endpoint = endpoint::bind(
            reply_addr,
            identity,
            &trust,
            crate::ALPN_LARGE,
            transport,
            Direction::Connect,
        )?;
        Ok(Self {
            request_endpoint,
            reply_endpoint,
            trust,
            config,
            limiter: Limiter::new(AcceptLimits::default(), Arc::default()),
        })
    }

    /// Bounds what peers may hold on the request port from now on (serving loops
    /// started afterwards), counting refusals into `stats` (which several endpoints
    /// may share). The default is [`AcceptLimits::default`] with counters of its own.
    pub fn set_accept_limits(&mut self, limits: AcceptLimits, stats: Arc<AcceptStats>) {
        self.limiter = Limiter::new(limits, stats);
    }

    /// The admission control of the request port: its limits and counters.
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// The accepting endpoint (request port).
    pub fn request_endpoint(&self) -> &Endpoint {
        &self.request_endpoint
    }

    /// The connecting endpoint (reply port).
    pub fn reply_endpoint(&self) -> &Endpoint {
        &self.reply_endpoint
    }

    /// The limits in use.
    pub fn config(&self) -> &LargeConfig {
        &self.config
    }

    /// Connects from the reply port to `peer`'s request port at `addr`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        peer: &Role,
    ) -> Result<(Connection, PeerIdentity), QuicError> {
        endpoint::connect(&self.reply_endpoint, addr, peer, &self.trust).await
    }

    /// Sends one request on `conn` (from [`LargeMessaging::connect`]) and waits
    /// for the response.
    pub async fn request(&self, conn: &Connection, request: Bytes) -> Result<Bytes, LargeError> {
        send_request(conn, request, &self.config).await
    }

    /// Starts answering requests on the request port with `handler`.
    pub fn serve<H, Fut>(&self, handler: H) -> JoinHandle<()>
    where
        H: Fn(PeerIdentity, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, HandlerError>> + Send + 'static,
    {
        serve(
            self.request_endpoint.clone(),
            self.trust.clone(),
            self.config.clone(),
            self.limiter.clone(),
            handler,
        )
    }

    /// Closes both endpoints and their connections.
    pub fn close(&self) {
        self.request_endpoint
            .close(endpoint::CLOSE_DONE, b"shutting down");
        self.reply_endpoint
            .close(endpoint::CLOSE_DONE, b"shutting down");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_on_char_boundaries() {
        let long = "é".repeat(MAX_REASON_LEN);
        let cut = reason_bytes(&long);
        assert!(cut.len() <= MAX_REASON_LEN);
        assert!(std::str::from_utf8(&cut).is_ok());
        assert_eq!(reason_bytes("short"), Bytes::from_static(b"short"));
    }
}
