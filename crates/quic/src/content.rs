//! Content transfer: one QUIC stream per piece request.
//!
//! The receiving client connects from its content port (34760 Foreground, 34750
//! Background) to the sending node's content port, and asks for pieces, each on
//! its own bidirectional stream (wire form in [`crate::piece_wire`]). Many
//! requests run at once on one connection, up to the transport's stream limit;
//! the multi-peer scheduler above decides which piece to ask whom.
//!
//! The same port answers have queries ([`fetch_have`]): which pieces of a
//! content the peer holds, as a bitfield. Clients of one office ask each other
//! this directly, so the server is not asked once a second by every downloader.
//!
//! Storage stays outside: the serving side reads pieces and bitfields through a
//! [`PieceSource`], which the client implements over its content store. Bytes
//! are passed on unverified: the caller checks every piece against the content's
//! BLAKE3 hash before it keeps, serves or installs it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, Endpoint, RecvStream, SendStream, TransportConfig};
use thiserror::Error;
use tokio::task::JoinHandle;

use crate::endpoint::{
    self, AcceptTransports, Direction, EndpointConfigs, QuicError, TransportSelector,
};
use crate::identity::{PeerIdentity, Role};
use crate::large::{
    LargeError, MAX_REASON_LEN, STREAM_ABANDONED, STREAM_BAD_FRAME, expect_end, read_exact,
    read_payload, read_payload_counted, write_error,
};
use crate::limits::{AcceptLimits, AcceptStats, Limiter, Refusal};
use crate::node::NodeIdentity;
use crate::piece_wire::{
    HaveQuery, MAX_HAVE_LEN, MAX_REQUEST_LEN, PieceRequest, PieceStatus, PieceWireError,
    RESPONSE_HEADER_LEN, Request, ResponseHeader,
};
use crate::tls::DeploymentTrust;

/// Default largest piece accepted, in bytes (16 MiB).
pub const DEFAULT_MAX_PIECE_LEN: u32 = 16 * 1024 * 1024;
/// Default bound on one piece request, from opening the stream to the last byte
/// (60 s).
pub const DEFAULT_PIECE_TIMEOUT: Duration = Duration::from_secs(60);

/// Limits of piece transfers.
#[derive(Debug, Clone)]
pub struct ContentConfig {
    /// Largest piece response accepted or served, in bytes.
    pub max_piece_len: u32,
    /// Bound on one piece request; a slow peer is abandoned after it so the
    /// scheduler can move the piece to another peer.
    pub piece_timeout: Duration,
}

impl Default for ContentConfig {
    fn default() -> Self {
        Self {
            max_piece_len: DEFAULT_MAX_PIECE_LEN,
            piece_timeout: DEFAULT_PIECE_TIMEOUT,
        }
    }
}

/// Why a [`PieceSource`] cannot give a piece.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PieceError {
    /// This node does not hold the piece (or the content).
    #[error("piece not held here")]
    NotFound,
    /// The piece is held but cannot be read now; the reason goes to the peer.
    #[error("piece unavailable: {0}")]
    Unavailable(String),
}

/// Where the serving side reads pieces from (the client's content store).
pub trait PieceSource: Send + Sync + 'static {
    /// Returns the whole piece `piece` of content `content` (its BLAKE3 hash),
    /// already verified. `peer` is who asks, for policy and accounting.
    fn read_piece(
        &self,
        peer: &PeerIdentity,
        content: &[u8; 32],
        piece: u32,
    ) -> impl Future<Output = Result<Bytes, PieceError>> + Send;

    /// Returns this node's current bitfield of verified pieces of `content`, in
    /// `branchline_store::Bitfield::as_bytes` form, for a peer's have query.
    /// `Err(PieceError::NotFound)` when no verified piece of it is held; a
    /// bitfield without any bit set is answered NotFound too. `peer` is who asks.
    ///
    /// The default answers NotFound for everything: a source that cannot tell
    /// leaves peers to learn holdings from the server.
    fn have(
        &self,
        peer: &PeerIdentity,
        content: &[u8; 32],
    ) -> impl Future<Output = Result<Bytes, PieceError>> + Send {
        let _ = (peer, content);
        async { Err(PieceError::NotFound) }
    }
}

/// A piece request failed.
#[derive(Debug, Error)]
pub enum ContentError {
    /// The peer does not hold the piece: ask another peer.
    #[error("peer does not hold the piece")]
    NotFound,
    /// The peer holds the piece but cannot serve it now.
    #[error("peer cannot serve the piece now: {0}")]
    Unavailable(String),
    /// The peer says the requested range is outside the piece.
    #[error("requested range lies outside the piece: {0}")]
    BadRange(String),
    /// The peer could not decode our request.
    #[error("peer refused the request as malformed: {0}")]
    BadRequest(String),
    /// The peer's response header is malformed.
    #[error("bad response from peer: {0}")]
    Wire(#[from] PieceWireError),
    /// The peer announced more bytes than we accept.
    #[error("peer announced {len} bytes, more than the limit of {max} bytes")]
    TooLong {
        /// Announced length, in bytes.
        len: u32,
        /// The limit, in bytes.
        max: u32,
    },
    /// The peer announced another length than we asked for.
    #[error("peer announced {got} bytes for a request of {asked} bytes")]
    WrongLength {
        /// Bytes asked for.
        asked: u32,
        /// Bytes announced.
        got: u32,
    },
    /// The transfer failed (truncated stream, connection lost, peer aborted).
    #[error("piece transfer failed: {0}")]
    Transfer(#[from] LargeError),
    /// The request did not finish within the piece timeout.
    #[error("piece not received within {0:?}; the peer is too slow")]
    Timeout(Duration),
}

/// Opens a stream on `conn`, sends `request` and finishes our side.
async fn send_request(conn: &Connection, request: &[u8]) -> Result<RecvStream, ContentError> {
    let (mut send, recv) = conn.open_bi().await.map_err(LargeError::from)?;
    send.write_all(request).await.map_err(write_error)?;
    send.finish()
        .map_err(|e| LargeError::Stream(e.to_string()))?;
    Ok(recv)
}

/// Reads the response header; a status other than Ok becomes its error (its
/// reason read, bounded by [`MAX_REASON_LEN`]).
async fn read_ok_header(recv: &mut RecvStream) -> Result<ResponseHeader, ContentError> {
    let mut header = [0u8; RESPONSE_HEADER_LEN];
    read_exact(recv, &mut header).await?;
    let header = ResponseHeader::decode(header)?;
    if header.status == PieceStatus::Ok {
        return Ok(header);
    }
    if header.len as usize > MAX_REASON_LEN {
        let _ = recv.stop(STREAM_BAD_FRAME);
        return Err(ContentError::TooLong {
            len: header.len,
            max: MAX_REASON_LEN as u32,
        });
    }
    let reason = read_payload(recv, header.len as usize, RESPONSE_HEADER_LEN as u64).await?;
    let reason = String::from_utf8_lossy(&reason).into_owned();
    Err(match header.status {
        PieceStatus::NotFound => ContentError::NotFound,
        PieceStatus::BadRange => ContentError::BadRange(reason),
        PieceStatus::BadRequest => ContentError::BadRequest(reason),
        PieceStatus::Unavailable | PieceStatus::Ok => ContentError::Unavailable(reason),
    })
}

/// Bounds `exchange` by `limit`.
async fn within<T>(
    limit: Duration,
    exchange: impl Future<Output = Result<T, ContentError>>,
) -> Result<T, ContentError> {
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| ContentError::Timeout(limit))?
}

/// Asks `conn`'s peer for the piece range in `request` and returns its bytes
/// (unverified). For `request.len == 0` the response may have any length up to
/// `config.max_piece_len`; otherwise it must have exactly `request.len` bytes.
pub async fn fetch_piece(
    conn: &Connection,
    request: &PieceRequest,
    config: &ContentConfig,
) -> Result<Bytes, ContentError> {
    fetch_piece_progress(conn, request, config, &AtomicU64::new(0)).await
}

/// Reads a piece answer's header and checks its length against the request and the
/// configured maximum (stopping the stream when it is wrong).
async fn read_piece_header(
    recv: &mut RecvStream,
    request: &PieceRequest,
    config: &ContentConfig,
) -> Result<ResponseHeader, ContentError> {
    let header = read_ok_header(recv).await?;
    if header.len > config.max_piece_len {
        let _ = recv.stop(STREAM_BAD_FRAME);
        return Err(ContentError::TooLong {
            len: header.len,
            max: config.max_piece_len,
        });
    }
    if request.len != 0 && header.len != request.len {
        let _ = recv.stop(STREAM_BAD_FRAME);
        return Err(ContentError::WrongLength {
            asked: request.len,
            got: header.len,
        });
    }
    Ok(header)
}

/// [`fetch_piece`], also adding the number of data bytes received to `progress`
/// as they arrive (not at the end), so a scheduler can tell a slow piece that is
/// still flowing from a stalled one. Only the piece's data counts (not headers
/// nor a refusal's reason); after a successful fetch exactly the returned
/// length has been added. On failure, the bytes that did arrive stay counted.
/// Relaxed ordering: `progress` is a gauge, not a synchronisation point.
pub async fn fetch_piece_progress(
    conn: &Connection,
    request: &PieceRequest,
    config: &ContentConfig,
    progress: &AtomicU64,
) -> Result<Bytes, ContentError> {
    within(config.piece_timeout, async {
        let mut recv = send_request(conn, &request.encode()).await?;
        let header = read_piece_header(&mut recv, request, config).await?;
        let data = read_payload_counted(
            &mut recv,
            header.len as usize,
            RESPONSE_HEADER_LEN as u64,
            progress,
        )
        .await?;
        expect_end(&mut recv).await?;
        Ok(data)
    })
    .await
}

/// Where [`fetch_piece_into`] puts a piece's bytes as they arrive, so that what came
/// before a fetch was abandoned (a paused transfer, a late request) is kept: the caller
/// can ask for the rest only (`offset`) instead of the whole piece again.
#[derive(Debug, Default)]
pub struct PieceSink {
    buf: std::sync::Mutex<bytes::BytesMut>,
    received: AtomicU64,
}

impl PieceSink {
    /// An empty sink.
    pub fn new() -> PieceSink {
        PieceSink::default()
    }

    /// Data bytes received so far (also after the fetch was abandoned).
    pub fn received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes the bytes received so far, leaving the sink empty.
    pub fn take(&self) -> Bytes {
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        self.received.store(0, std::sync::atomic::Ordering::Relaxed);
        buf.split().freeze()
    }
}

/// Like [`fetch_piece_progress`], but the data goes into `sink` as it arrives (no
/// extra copy): when the future is dropped midway, what arrived stays in the sink.
/// On success the sink is emptied and the bytes returned.
pub async fn fetch_piece_into(
    conn: &Connection,
    request: &PieceRequest,
    config: &ContentConfig,
    sink: &PieceSink,
) -> Result<Bytes, ContentError> {
    within(config.piece_timeout, async {
        let mut recv = send_request(conn, &request.encode()).await?;
        let header = read_piece_header(&mut recv, request, config).await?;
        let len = header.len as usize;
        let mut got = 0usize;
        while got < len {
            match recv
                .read_chunk(len - got, true)
                .await
                .map_err(|e| ContentError::from(crate::large::read_error(e)))?
            {
                Some(chunk) => {
                    got += chunk.bytes.len();
                    sink.buf
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&chunk.bytes);
                    sink.received.fetch_add(
                        chunk.bytes.len() as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
                None => {
                    return Err(ContentError::from(crate::large::LargeError::Truncated {
                        expected: RESPONSE_HEADER_LEN as u64 + len as u64,
                        got: RESPONSE_HEADER_LEN as u64 + got as u64,
                    }));
                }
            }
        }
        expect_end(&mut recv).await?;
        Ok(sink.take())
    })
    .await
}

/// Asks `conn`'s peer which pieces of `content` it holds: `Some(bitfield)` in
/// `branchline_store::Bitfield::as_bytes` form (check its length against the
/// piece count before use, e.g. with `Bitfield::from_bytes`), or `None` if the
/// peer holds no verified piece of it. A bitfield longer than
/// [`MAX_HAVE_LEN`] bytes is refused unread ([`ContentError::TooLong`]). Bounded by
/// `config.piece_timeout`. A peer predating have queries answers
/// [`ContentError::BadRequest`]: ask the server instead.
pub async fn fetch_have(
    conn: &Connection,
    content: &[u8; 32],
    config: &ContentConfig,
) -> Result<Option<Vec<u8>>, ContentError> {
    within(config.piece_timeout, async {
        let query = HaveQuery { content: *content };
        let mut recv = send_request(conn, &query.encode()).await?;
        let header = match read_ok_header(&mut recv).await {
            Ok(header) => header,
            Err(ContentError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        if header.len > MAX_HAVE_LEN {
            let _ = recv.stop(STREAM_BAD_FRAME);
            return Err(ContentError::TooLong {
                len: header.len,
                max: MAX_HAVE_LEN,
            });
        }
        let bits = read_payload(&mut recv, header.len as usize, RESPONSE_HEADER_LEN as u64).await?;
        expect_end(&mut recv).await?;
        Ok(Some(Vec::from(bits)))
    })
    .await
}

fn refusal(status: PieceStatus, reason: &str) -> (ResponseHeader, Bytes) {
    let mut end = reason.len().min(MAX_REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = Bytes::copy_from_slice(&reason.as_bytes()[..end]);
    (
        ResponseHeader {
            status,
            len: reason.len() as u32,
        },
        reason,
    )
}

/// Decides the response to one request (no I/O besides the source).
async fn respond<S: PieceSource>(
    source: &S,
    peer: &PeerIdentity,
    raw: &[u8],
    max_piece_len: u32,
) -> (ResponseHeader, Bytes) {
    match Request::decode(raw) {
        Ok(Request::Piece(request)) => respond_piece(source, peer, &request, max_piece_len).await,
        Ok(Request::Have(query)) => respond_have(source, peer, &query).await,
        Err(e) => refusal(PieceStatus::BadRequest, &e.to_string()),
    }
}

async fn respond_have<S: PieceSource>(
    source: &S,
    peer: &PeerIdentity,
    query: &HaveQuery,
) -> (ResponseHeader, Bytes) {
    let bits = match source.have(peer, &query.content).await {
        Ok(bits) => bits,
        Err(PieceError::NotFound) => return refusal(PieceStatus::NotFound, ""),
        Err(PieceError::Unavailable(reason)) => {
            return refusal(PieceStatus::Unavailable, &reason);
        }
    };
    if bits.iter().all(|&b| b == 0) {
        return refusal(PieceStatus::NotFound, "");
    }
    if bits.len() > MAX_HAVE_LEN as usize {
        return refusal(
            PieceStatus::Unavailable,
            &format!(
                "bitfield of {} bytes exceeds the limit of {MAX_HAVE_LEN} bytes",
                bits.len()
            ),
        );
    }
    (
        ResponseHeader {
            status: PieceStatus::Ok,
            len: bits.len() as u32,
        },
        bits,
    )
}

async fn respond_piece<S: PieceSource>(
    source: &S,
    peer: &PeerIdentity,
    request: &PieceRequest,
    max_piece_len: u32,
) -> (ResponseHeader, Bytes) {
    let piece = match source
        .read_piece(peer, &request.content, request.piece)
        .await
    {
        Ok(piece) => piece,
        Err(PieceError::NotFound) => return refusal(PieceStatus::NotFound, ""),
        Err(PieceError::Unavailable(reason)) => {
            return refusal(PieceStatus::Unavailable, &reason);
        }
    };
    let Some(range) = request.range_in(piece.len()) else {
        return refusal(
            PieceStatus::BadRange,
            &format!(
                "offset {} length {} in a piece of {} bytes",
                request.offset,
                request.len,
                piece.len()
            ),
        );
    };
    if range.len() > max_piece_len as usize {
        return refusal(
            PieceStatus::Unavailable,
            &format!("{} bytes exceed this node's piece limit", range.len()),
        );
    }
    (
        ResponseHeader {
            status: PieceStatus::Ok,
            len: range.len() as u32,
        },
        piece.slice(range),
    )
}

/// Reads one request: its first byte gives its kind and length. `Ok(None)` for
/// an unknown first byte (nothing more is read).
async fn read_request(
    recv: &mut RecvStream,
    raw: &mut [u8; MAX_REQUEST_LEN],
) -> Result<Option<usize>, LargeError> {
    read_exact(recv, &mut raw[..1]).await?;
    let Some(len) = Request::len_for_first_byte(raw[0]) else {
        return Ok(None);
    };
    read_exact(recv, &mut raw[1..len])
        .await
        .map_err(|e| match e {
            // Count the first byte in what the peer is told.
            LargeError::Truncated { expected, got } => LargeError::Truncated {
                expected: expected + 1,
                got: got + 1,
            },
            e => e,
        })?;
    expect_end(recv).await?;
    Ok(Some(len))
}

/// Answers one request stream (a piece request or a have query). The request must
/// arrive whole within the limiter's request deadline; refusals are counted there.
async fn answer<S: PieceSource>(
    mut send: SendStream,
    mut recv: RecvStream,
    peer: PeerIdentity,
    source: Arc<S>,
    max_piece_len: u32,
    limiter: Arc<Limiter>,
) {
    let mut raw = [0u8; MAX_REQUEST_LEN];
    let deadline = limiter.limits().request_timeout;
    let Ok(read) = tokio::time::timeout(deadline, read_request(&mut recv, &mut raw)).await else {
        limiter.stats().count(Refusal::RequestTimeout);
        tracing::debug!(peer = %peer.role, ?deadline, "piece request not received in time");
        let _ = recv.stop(STREAM_ABANDONED);
        let _ = send.reset(STREAM_ABANDONED);
        return;
    };
    let (header, body) = match read {
        Ok(Some(len)) => respond(&*source, &peer, &raw[..len], max_piece_len).await,
        Ok(None) => {
            let _ = recv.stop(STREAM_BAD_FRAME);
            refusal(
                PieceStatus::BadRequest,
                &PieceWireError::UnknownKind(raw[0]).to_string(),
            )
        }
        Err(e @ (LargeError::Truncated { .. } | LargeError::TrailingBytes)) => {
            let _ = recv.stop(STREAM_BAD_FRAME);
            refusal(PieceStatus::BadRequest, &e.to_string())
        }
        Err(e) => {
            tracing::debug!(peer = %peer.role, error = %e, "piece request failed");
            let _ = send.reset(STREAM_ABANDONED);
            return;
        }
    };
    if header.status == PieceStatus::BadRequest {
        limiter.stats().count(Refusal::BadRequest);
    }
    let sent = async {
        send.write_all(&header.encode()).await?;
        send.write_chunk(body).await?;
        send.finish().map_err(|_| quinn::WriteError::ClosedStream)
    }
    .await;
    if let Err(e) = sent {
        tracing::debug!(peer = %peer.role, error = %e, "could not send piece");
    }
}

/// Serves pieces from `source` on `endpoint` until it is closed. With
/// `transports`, each connection gets the transport (congestion controller) its
/// selector picks for the peer's address.
pub fn serve<S: PieceSource>(
    endpoint: Endpoint,
    trust: DeploymentTrust,
    config: ContentConfig,
    transports: Option<AcceptTransports>,
    limiter: Arc<Limiter>,
    source: Arc<S>,
) -> JoinHandle<()> {
    let max = config.max_piece_len;
    let per_stream_limiter = limiter.clone();
    endpoint::serve_streams(
        endpoint,
        trust,
        transports,
        limiter,
        move |peer, send, recv| {
            answer(
                send,
                recv,
                peer,
                source.clone(),
                max,
                per_stream_limiter.clone(),
            )
        },
    )
}

/// A node's content endpoint (34760 Foreground or 34750 Background): serves
/// pieces to peers and fetches pieces from them, on the one port.
pub struct ContentNode {
    endpoint: Endpoint,
    trust: DeploymentTrust,
    config: ContentConfig,
    configs: EndpointConfigs,
    selector: Option<TransportSelector>,
    limiter: Arc<Limiter>,
}

impl std::fmt::Debug for ContentNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentNode")
            .field("endpoint", &self.endpoint.local_addr().ok())
            .field("config", &self.config)
            .field("per_peer_transport", &self.selector.is_some())
            .finish_non_exhaustive()
    }
}

impl ContentNode {
    /// Binds the content endpoint on `addr`. `transport` sets the congestion
    /// controller and timeouts (see [`crate::transport_config`]).
    pub fn bind(
        addr: SocketAddr,
        identity: &NodeIdentity,
        trust: DeploymentTrust,
        transport: Arc<TransportConfig>,
        config: ContentConfig,
    ) -> Result<Self, QuicError> {
        let configs = endpoint::configs(
            identity,
            &trust,
            crate::ALPN_CONTENT,
            transport,
            Direction::Both,
        )?;
        let endpoint = endpoint::bind_with(addr, configs.clone())?;
        Ok(Self {
            endpoint,
            trust,
            config,
            configs,
            selector: None,
            limiter: Limiter::new(AcceptLimits::default(), Arc::default()),
        })
    }

    /// Bounds what peers may hold on this endpoint from now on (serving loops
    /// started afterwards), counting refusals into `stats` (which several endpoints
    /// may share). The default is [`AcceptLimits::default`] with counters of its own.
    pub fn set_accept_limits(&mut self, limits: AcceptLimits, stats: Arc<AcceptStats>) {
        self.limiter = Limiter::new(limits, stats);
    }

    /// The admission control of the serving side: its limits and counters.
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// Picks each connection's transport by peer address from now on (connections
    /// made by [`ContentNode::connect`], and those accepted by serving loops
    /// started afterwards), e.g. one LEDBAT++ factory per WAN link on the
    /// Background port.
    pub fn set_transport_selector(&mut self, selector: TransportSelector) {
        self.selector = Some(selector);
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The limits in use.
    pub fn config(&self) -> &ContentConfig {
        &self.config
    }

    /// Connects to `peer`'s content port at `addr`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        peer: &Role,
    ) -> Result<(Connection, PeerIdentity), QuicError> {
        let chosen = self
            .selector
            .as_ref()
            .and_then(|select| select(addr))
            .and_then(|transport| self.configs.client_with(transport));
        match chosen {
            Some(config) => {
                endpoint::connect_with(&self.endpoint, config, addr, peer, &self.trust).await
            }
            None => endpoint::connect(&self.endpoint, addr, peer, &self.trust).await,
        }
    }

    /// Fetches one piece range over `conn`.
    pub async fn fetch(
        &self,
        conn: &Connection,
        request: &PieceRequest,
    ) -> Result<Bytes, ContentError> {
        fetch_piece(conn, request, &self.config).await
    }

    /// Fetches one piece range over `conn`, counting data bytes into `progress`
    /// as they arrive ([`fetch_piece_progress`]).
    pub async fn fetch_progress(
        &self,
        conn: &Connection,
        request: &PieceRequest,
        progress: &AtomicU64,
    ) -> Result<Bytes, ContentError> {
        fetch_piece_progress(conn, request, &self.config, progress).await
    }

    /// Asks `conn`'s peer which pieces of `content` it holds ([`fetch_have`]).
    pub async fn fetch_have(
        &self,
        conn: &Connection,
        content: &[u8; 32],
    ) -> Result<Option<Vec<u8>>, ContentError> {
        fetch_have(conn, content, &self.config).await
    }

    /// Starts serving pieces (and have queries) from `source`.
    pub fn serve<S: PieceSource>(&self, source: Arc<S>) -> JoinHandle<()> {
        self.serve_hooked(source, None)
    }

    /// [`ContentNode::serve`], also calling `hook` with every accepted connection (a
    /// client uses it to fetch over the connection the server opens to it).
    pub fn serve_hooked<S: PieceSource>(
        &self,
        source: Arc<S>,
        hook: Option<endpoint::ConnectionHook>,
    ) -> JoinHandle<()> {
        let transports = self.selector.clone().map(|select| AcceptTransports {
            configs: self.configs.clone(),
            select,
        });
        let max = self.config.max_piece_len;
        let limiter = self.limiter.clone();
        endpoint::serve_streams_hooked(
            self.endpoint.clone(),
            self.trust.clone(),
            transports,
            self.limiter.clone(),
            hook,
            move |peer, send, recv| answer(send, recv, peer, source.clone(), max, limiter.clone()),
        )
    }

    /// Serves pieces from `source` on a connection this node opened to `peer` (the
    /// server sending to a Central Office client's 34760), until it ends.
    pub fn serve_on<S: PieceSource>(
        &self,
        conn: Connection,
        peer: PeerIdentity,
        source: Arc<S>,
    ) -> JoinHandle<()> {
        let max = self.config.max_piece_len;
        let trust = self.trust.clone();
        let limiter = self.limiter.clone();
        tokio::spawn(endpoint::serve_streams_of(
            conn,
            peer,
            trust,
            Arc::new(move |peer, send, recv| {
                answer(send, recv, peer, source.clone(), max, limiter.clone())
            }),
        ))
    }

    /// Closes the endpoint and its connections.
    pub fn close(&self) {
        self.endpoint.close(endpoint::CLOSE_DONE, b"shutting down");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ClientName;
    use crate::piece_wire::{HAVE_QUERY_LEN, REQUEST_LEN};

    struct OnePiece;

    impl PieceSource for OnePiece {
        async fn read_piece(
            &self,
            _peer: &PeerIdentity,
            content: &[u8; 32],
            piece: u32,
        ) -> Result<Bytes, PieceError> {
            match (content[0], piece) {
                (1, 0) => Ok(Bytes::from_static(b"0123456789")),
                (1, 1) => Err(PieceError::Unavailable("disk busy".into())),
                _ => Err(PieceError::NotFound),
            }
        }

        async fn have(
            &self,
            _peer: &PeerIdentity,
            content: &[u8; 32],
        ) -> Result<Bytes, PieceError> {
            match content[0] {
                1 => Ok(Bytes::from_static(&[0b01])),
                3 => Ok(Bytes::from_static(&[0, 0])),
                4 => Ok(vec![0xff; MAX_HAVE_LEN as usize + 1].into()),
                5 => Err(PieceError::Unavailable("index locked".into())),
                _ => Err(PieceError::NotFound),
            }
        }
    }

    /// Keeps the trait's default `have`.
    struct NoHave;

    impl PieceSource for NoHave {
        async fn read_piece(
            &self,
            _peer: &PeerIdentity,
            _content: &[u8; 32],
            _piece: u32,
        ) -> Result<Bytes, PieceError> {
            Err(PieceError::NotFound)
        }
    }

    fn have(content: u8) -> [u8; HAVE_QUERY_LEN] {
        HaveQuery {
            content: [content; 32],
        }
        .encode()
    }

    fn peer() -> PeerIdentity {
        PeerIdentity {
            role: Role::Client(ClientName::new("x").unwrap()),
            serial: vec![1],
        }
    }

    fn req(content: u8, piece: u32, offset: u32, len: u32) -> [u8; REQUEST_LEN] {
        PieceRequest {
            content: [content; 32],
            piece,
            offset,
            len,
        }
        .encode()
    }

    async fn answer_to(raw: &[u8], max: u32) -> (PieceStatus, Bytes) {
        let (h, body) = respond(&OnePiece, &peer(), raw, max).await;
        assert_eq!(h.len as usize, body.len());
        (h.status, body)
    }

    #[tokio::test]
    async fn responses_follow_the_request_and_the_source() {
        assert_eq!(
            answer_to(&req(1, 0, 0, 0), 100).await,
            (PieceStatus::Ok, Bytes::from_static(b"0123456789"))
        );
        assert_eq!(
            answer_to(&req(1, 0, 3, 4), 100).await,
            (PieceStatus::Ok, Bytes::from_static(b"3456"))
        );
        assert_eq!(
            answer_to(&req(1, 0, 8, 4), 100).await.0,
            PieceStatus::BadRange
        );
        assert_eq!(
            answer_to(&req(2, 0, 0, 0), 100).await.0,
            PieceStatus::NotFound
        );
        let (status, reason) = answer_to(&req(1, 1, 0, 0), 100).await;
        assert_eq!(status, PieceStatus::Unavailable);
        assert_eq!(reason, Bytes::from_static(b"disk busy"));
        // Over this node's limit: refused, not sent.
        assert_eq!(
            answer_to(&req(1, 0, 0, 0), 5).await.0,
            PieceStatus::Unavailable
        );
        // Malformed requests.
        assert_eq!(answer_to(&[1, 2, 3], 100).await.0, PieceStatus::BadRequest);
        let mut bad_version = req(1, 0, 0, 0);
        bad_version[0] = 9;
        assert_eq!(
            answer_to(&bad_version, 100).await.0,
            PieceStatus::BadRequest
        );
    }

    #[tokio::test]
    async fn have_queries_answer_the_bitfield_or_not_found() {
        assert_eq!(
            answer_to(&have(1), 100).await,
            (PieceStatus::Ok, Bytes::from_static(&[0b01]))
        );
        // Nothing held, whether unknown or an all-zero bitfield.
        assert_eq!(answer_to(&have(2), 100).await.0, PieceStatus::NotFound);
        assert_eq!(answer_to(&have(3), 100).await.0, PieceStatus::NotFound);
        // Too large to send: refused, not sent.
        assert_eq!(answer_to(&have(4), 100).await.0, PieceStatus::Unavailable);
        let (status, reason) = answer_to(&have(5), 100).await;
        assert_eq!(status, PieceStatus::Unavailable);
        assert_eq!(reason, Bytes::from_static(b"index locked"));
        // The default of the trait.
        let (h, body) = respond(&NoHave, &peer(), &have(1), 100).await;
        assert_eq!((h.status, h.len, body.len()), (PieceStatus::NotFound, 0, 0));
        // Wrong length for the kind, unknown kind.
        assert_eq!(
            answer_to(&have(1)[..32], 100).await.0,
            PieceStatus::BadRequest
        );
        let mut unknown = have(1);
        unknown[0] = 0x7f;
        assert_eq!(answer_to(&unknown, 100).await.0, PieceStatus::BadRequest);
        assert_eq!(answer_to(&[], 100).await.0, PieceStatus::BadRequest);
    }
}
