//! quinn endpoints: binding, transport settings, connecting and accepting.
//!
//! An endpoint serves one use (one ALPN) on one socket. Whether it accepts,
//! connects, or both follows the port rule of the design: a node sends a request
//! from the socket bound to its own reply port to the peer's request port, so the
//! endpoint on a request port accepts and the endpoint on a reply port connects.
//! Content endpoints (34760, 34750) do both: the receiver connects from its
//! content port to the sender's content port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::congestion::ControllerFactory;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, TransportConfig, VarInt};
use thiserror::Error;
use tokio::task::{JoinHandle, JoinSet};

use crate::identity::{NameError, PeerIdentity, Role};
use crate::limits::{HandshakePermit, Limiter, Refusal};
use crate::node::NodeIdentity;
use crate::tls::{self, DeploymentTrust, TlsError};

/// ALPN of large messages (ports 34333/34331, 34337/34335 and the Background
/// pairs 34341/34339, 34345/34343).
pub const ALPN_LARGE: &[u8] = b"branchline/large/1";
/// ALPN of content transfers (ports 34760 Foreground, 34750 Background).
pub const ALPN_CONTENT: &[u8] = b"branchline/content/1";

/// Default idle timeout: a connection with no traffic from the peer for this
/// long is closed, which is how a vanished peer is noticed (10 s).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default keep-alive interval: keeps idle but live connections open (3 s).
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(3);
/// Default limit of concurrent bidirectional streams a peer may open on one
/// connection (64): one per outstanding request or piece.
pub const DEFAULT_MAX_STREAMS: u32 = 64;

/// Application close code: normal close.
pub const CLOSE_DONE: VarInt = VarInt::from_u32(0);
/// Application close code: the peer's identity was not acceptable.
pub const CLOSE_REFUSED: VarInt = VarInt::from_u32(1);
/// Application close code: the accepting endpoint holds as many connections as it
/// admits (of this peer identity, or in all; see [`crate::limits`]).
pub const CLOSE_BUSY: VarInt = VarInt::from_u32(2);

/// Errors of endpoints and connections.
#[derive(Debug, Error)]
pub enum QuicError {
    /// TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The UDP socket could not be bound.
    #[error("cannot bind QUIC endpoint on {addr}: {source}; is another process using the port?")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// quinn refused the TLS configuration.
    #[error("QUIC rejected the TLS configuration: {0}")]
    Crypto(String),
    /// The endpoint cannot start a connection (e.g. it only accepts, or is closed).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The peer address.
        addr: SocketAddr,
        /// What quinn said.
        source: quinn::ConnectError,
    },
    /// The handshake or the connection failed (refused certificate, timeout,
    /// peer closed).
    #[error("QUIC connection with {addr} failed: {source}")]
    Connection {
        /// The peer address.
        addr: SocketAddr,
        /// What quinn said.
        source: quinn::ConnectionError,
    },
    /// The peer's certificate does not name an identity of the deployment.
    #[error(transparent)]
    Identity(#[from] NameError),
    /// The endpoint has been closed.
    #[error("QUIC endpoint is closed")]
    EndpointClosed,
}

/// Which congestion controller an endpoint's connections use.
#[derive(Clone)]
pub enum Congestion {
    /// quinn's default Cubic: TCP-friendly, for same-office and Central Office
    /// transfers.
    Foreground,
    /// A yielding controller (LEDBAT++ from the ledbat crate), for WAN transfers.
    Background(Arc<dyn ControllerFactory + Send + Sync>),
}

impl std::fmt::Debug for Congestion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Congestion::Foreground => f.write_str("Foreground"),
            Congestion::Background(_) => f.write_str("Background(..)"),
        }
    }
}

/// Transport knobs that matter to Branchline; everything else is quinn's default.
#[derive(Debug, Clone)]
pub struct TransportSettings {
    /// Close a connection after this long without hearing from the peer.
    pub idle_timeout: Duration,
    /// Send keep-alives this often on idle connections; `None` disables them.
    /// Must be shorter than `idle_timeout` to keep idle connections open.
    pub keep_alive: Option<Duration>,
    /// Concurrent bidirectional streams a peer may open on one connection.
    pub max_concurrent_streams: u32,
}

impl Default for TransportSettings {
    fn default() -> Self {
        Self {
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            keep_alive: Some(DEFAULT_KEEP_ALIVE),
            max_concurrent_streams: DEFAULT_MAX_STREAMS,
        }
    }
}

/// Builds a quinn transport configuration from `settings` and `congestion`.
/// Public so the integration can adjust it further before binding.
pub fn transport_config(settings: &TransportSettings, congestion: &Congestion) -> TransportConfig {
    let mut t = TransportConfig::default();
    // An idle timeout beyond QUIC's varint range is clamped to the maximum.
    let idle = quinn::IdleTimeout::try_from(settings.idle_timeout)
        .unwrap_or_else(|_| quinn::IdleTimeout::from(VarInt::MAX));
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(settings.keep_alive);
    t.max_concurrent_bidi_streams(VarInt::from_u32(settings.max_concurrent_streams));
    // Branchline uses bidirectional streams only.
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    if let Congestion::Background(factory) = congestion {
        t.congestion_controller_factory(factory.clone());
    }
    t
}

/// The transport of every Background port (34341/34339, 34345/34343, 34750): LEDBAT++
/// controllers from `factory` (one factory per WAN link shares that link's ceiling) and
/// prompt ACKs requested from the peer, so queueing delay is measured without the peer's
/// ACK delay (see `branchline-ledbat`).
pub fn background_transport(
    settings: &TransportSettings,
    factory: Arc<branchline_ledbat::LedbatFactory>,
) -> TransportConfig {
    let mut t = transport_config(settings, &Congestion::Background(factory.clone()));
    branchline_ledbat::configure_background(&mut t, factory);
    t
}

/// Whether an endpoint accepts connections, makes them, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Request port: accepts only.
    Accept,
    /// Reply port: connects only.
    Connect,
    /// Content port: accepts and connects.
    Both,
}

/// Chooses the transport settings (notably the congestion controller) of one
/// connection from the peer's address, e.g. one LEDBAT++ factory per WAN link so
/// all Background connections over a link share its ceiling. `None` keeps the
/// endpoint's default transport.
pub type TransportSelector = Arc<dyn Fn(SocketAddr) -> Option<Arc<TransportConfig>> + Send + Sync>;

/// The quinn configurations of an endpoint, kept so single connections can be
/// given other transport settings ([`TransportSelector`]).
#[derive(Clone)]
pub struct EndpointConfigs {
    /// Accepting side (None for a connect-only endpoint).
    pub server: Option<quinn::ServerConfig>,
    /// Connecting side (None for an accept-only endpoint).
    pub client: Option<quinn::ClientConfig>,
}

impl std::fmt::Debug for EndpointConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointConfigs")
            .field("accepts", &self.server.is_some())
            .field("connects", &self.client.is_some())
            .finish()
    }
}

impl EndpointConfigs {
    /// The server configuration with `transport` instead of the default.
    pub fn server_with(&self, transport: Arc<TransportConfig>) -> Option<Arc<quinn::ServerConfig>> {
        let mut server = self.server.clone()?;
        server.transport_config(transport);
        Some(Arc::new(server))
    }

    /// The client configuration with `transport` instead of the default.
    pub fn client_with(&self, transport: Arc<TransportConfig>) -> Option<quinn::ClientConfig> {
        let mut client = self.client.clone()?;
        client.transport_config(transport);
        Some(client)
    }
}

/// Builds the quinn server and client configurations an endpoint of
/// `direction` needs.
pub fn configs(
    identity: &NodeIdentity,
    trust: &DeploymentTrust,
    alpn: &[u8],
    transport: Arc<TransportConfig>,
    direction: Direction,
) -> Result<EndpointConfigs, QuicError> {
    let server = match direction {
        Direction::Accept | Direction::Both => {
            let tls = tls::server_config(identity, trust, alpn)?;
            let crypto = QuicServerConfig::try_from(Arc::new(tls))
                .map_err(|e| QuicError::Crypto(e.to_string()))?;
            let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
            server.transport_config(transport.clone());
            Some(server)
        }
        Direction::Connect => None,
    };
    let client = match direction {
        Direction::Connect | Direction::Both => {
            let tls = tls::client_config(identity, trust, alpn)?;
            let crypto = QuicClientConfig::try_from(Arc::new(tls))
                .map_err(|e| QuicError::Crypto(e.to_string()))?;
            let mut client = quinn::ClientConfig::new(Arc::new(crypto));
            client.transport_config(transport);
            Some(client)
        }
        Direction::Accept => None,
    };
    Ok(EndpointConfigs { server, client })
}

/// Binds a quinn endpoint on `addr` for one use (`alpn`), presenting `identity`
/// and trusting `trust`. Must be called inside a tokio runtime.
pub fn bind(
    addr: SocketAddr,
    identity: &NodeIdentity,
    trust: &DeploymentTrust,
    alpn: &[u8],
    transport: Arc<TransportConfig>,
    direction: Direction,
) -> Result<Endpoint, QuicError> {
    bind_with(addr, configs(identity, trust, alpn, transport, direction)?)
}

/// Binds a quinn endpoint on `addr` with prepared configurations.
pub fn bind_with(addr: SocketAddr, configs: EndpointConfigs) -> Result<Endpoint, QuicError> {
    let EndpointConfigs { server, client } = configs;
    let socket =
        std::net::UdpSocket::bind(addr).map_err(|source| QuicError::Bind { addr, source })?;
    let runtime = quinn::default_runtime().ok_or_else(|| QuicError::Bind {
        addr,
        source: std::io::Error::other("no async runtime found (call inside tokio)"),
    })?;
    let mut endpoint = Endpoint::new(quinn::EndpointConfig::default(), server, socket, runtime)
        .map_err(|source| QuicError::Bind { addr, source })?;
    if let Some(client) = client {
        endpoint.set_default_client_config(client);
    }
    Ok(endpoint)
}

/// Swaps the identity (e.g. a renewed certificate) or the transport settings of a
/// bound endpoint. New connections use them; open connections keep theirs.
pub fn reconfigure(
    endpoint: &mut Endpoint,
    identity: &NodeIdentity,
    trust: &DeploymentTrust,
    alpn: &[u8],
    transport: Arc<TransportConfig>,
    direction: Direction,
) -> Result<(), QuicError> {
    let EndpointConfigs { server, client } = configs(identity, trust, alpn, transport, direction)?;
    endpoint.set_server_config(server);
    if let Some(client) = client {
        endpoint.set_default_client_config(client);
    }
    Ok(())
}

/// Reads the authenticated identity of the peer of an established connection.
pub fn peer_identity(
    conn: &Connection,
    deployment: &crate::identity::DeploymentName,
) -> Result<PeerIdentity, NameError> {
    let any = conn.peer_identity().ok_or(NameError::NoCertificate)?;
    let chain = any
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .map_err(|_| NameError::NoCertificate)?;
    PeerIdentity::from_chain(&chain, deployment)
}

/// Connects from `endpoint` to the node holding `peer`'s certificate at `addr`,
/// and returns the connection with the peer's verified identity.
pub async fn connect(
    endpoint: &Endpoint,
    addr: SocketAddr,
    peer: &Role,
    trust: &DeploymentTrust,
) -> Result<(Connection, PeerIdentity), QuicError> {
    let name = peer.dns_name(&trust.deployment);
    let connecting = endpoint
        .connect(addr, &name)
        .map_err(|source| QuicError::Connect { addr, source })?;
    finish_connect(connecting, addr, trust).await
}

/// Completes an outgoing handshake and reads the peer's verified identity.
async fn finish_connect(
    connecting: quinn::Connecting,
    addr: SocketAddr,
    trust: &DeploymentTrust,
) -> Result<(Connection, PeerIdentity), QuicError> {
    let conn = connecting
        .await
        .map_err(|source| QuicError::Connection { addr, source })?;
    let identity = peer_identity(&conn, &trust.deployment)?;
    Ok((conn, identity))
}

/// Like [`connect`], with an explicit client configuration (e.g. from
/// [`EndpointConfigs::client_with`] for another congestion controller).
pub async fn connect_with(
    endpoint: &Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    peer: &Role,
    trust: &DeploymentTrust,
) -> Result<(Connection, PeerIdentity), QuicError> {
    let name = peer.dns_name(&trust.deployment);
    let connecting = endpoint
        .connect_with(config, addr, &name)
        .map_err(|source| QuicError::Connect { addr, source })?;
    finish_connect(connecting, addr, trust).await
}

/// Waits for the next incoming connection on `endpoint` that completes the
/// handshake, and returns it with the peer's verified identity. Handshakes that
/// fail (e.g. refused certificates) are logged and skipped. Handshakes complete
/// one at a time here; servers use [`serve_streams`], which runs each in its own
/// task. Returns
/// [`QuicError::EndpointClosed`] once the endpoint is closed.
pub async fn accept(
    endpoint: &Endpoint,
    trust: &DeploymentTrust,
) -> Result<(Connection, PeerIdentity), QuicError> {
    loop {
        let incoming = endpoint.accept().await.ok_or(QuicError::EndpointClosed)?;
        let addr = incoming.remote_address();
        match finish_accept(incoming, trust).await {
            Ok(pair) => return Ok(pair),
            Err(e) => tracing::info!(%addr, error = %e, "refused an incoming QUIC connection"),
        }
    }
}

/// Completes the handshake of one incoming connection.
pub async fn finish_accept(
    incoming: quinn::Incoming,
    trust: &DeploymentTrust,
) -> Result<(Connection, PeerIdentity), QuicError> {
    finish_accept_with(incoming, None, trust).await
}

/// Completes the handshake of one incoming connection, with `config` instead of
/// the endpoint's server configuration if given.
pub async fn finish_accept_with(
    incoming: quinn::Incoming,
    config: Option<Arc<quinn::ServerConfig>>,
    trust: &DeploymentTrust,
) -> Result<(Connection, PeerIdentity), QuicError> {
    let addr = incoming.remote_address();
    let connecting = match config {
        Some(config) => incoming.accept_with(config),
        None => incoming.accept(),
    }
    .map_err(|source| QuicError::Connection { addr, source })?;
    let conn = connecting
        .await
        .map_err(|source| QuicError::Connection { addr, source })?;
    match peer_identity(&conn, &trust.deployment) {
        Ok(identity) => Ok((conn, identity)),
        Err(e) => {
            conn.close(CLOSE_REFUSED, b"identity");
            Err(e.into())
        }
    }
}

/// Serves one connection: runs `per_stream` for each bidirectional stream the
/// peer opens, until the connection ends, then lets streams in flight finish.
/// Called with every accepted, authenticated connection (e.g. so a client can use the
/// connection the server opened to it to fetch pieces).
pub type ConnectionHook = Arc<dyn Fn(&Connection, &PeerIdentity) + Send + Sync>;

async fn serve_connection<F, Fut>(
    incoming: quinn::Incoming,
    handshake: HandshakePermit,
    config: Option<Arc<quinn::ServerConfig>>,
    trust: DeploymentTrust,
    limiter: Arc<Limiter>,
    hook: Option<ConnectionHook>,
    per_stream: Arc<F>,
) where
    F: Fn(PeerIdentity, quinn::SendStream, quinn::RecvStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let addr = incoming.remote_address();
    let deadline = limiter.limits().handshake_timeout;
    let accepted =
        tokio::time::timeout(deadline, finish_accept_with(incoming, config, &trust)).await;
    drop(handshake);
    let (conn, peer) = match accepted {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            limiter.stats().count(Refusal::HandshakeFailed);
            tracing::info!(%addr, error = %e, "refused an incoming QUIC connection");
            return;
        }
        Err(_) => {
            // Dropping the handshake closes the connection.
            limiter.stats().count(Refusal::HandshakeTimeout);
            tracing::info!(%addr, ?deadline, "dropped a QUIC handshake that did not finish in time");
            return;
        }
    };
    let _permit = match limiter.admit(&peer.role) {
        Ok(permit) => permit,
        Err(reason) => {
            tracing::debug!(%addr, peer = %peer.role, reason = reason.name(), "refused a QUIC connection over the limit");
            conn.close(CLOSE_BUSY, b"too many connections");
            return;
        }
    };
    if let Some(hook) = hook {
        hook(&conn, &peer);
    }
    serve_streams_of(conn, peer, trust, per_stream).await;
}

/// Runs `per_stream` for every bidirectional stream the peer opens on `conn`, until the
/// connection ends; also for a connection this node opened.
pub async fn serve_streams_of<F, Fut>(
    conn: Connection,
    peer: PeerIdentity,
    trust: DeploymentTrust,
    per_stream: Arc<F>,
) where
    F: Fn(PeerIdentity, quinn::SendStream, quinn::RecvStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let addr = conn.remote_address();
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    // Revocation also ends connections opened before it.
                    if trust.revoked.is_revoked(&peer) {
                        tracing::info!(%addr, peer = %peer.role, "closing the connection of a revoked peer");
                        conn.close(CLOSE_REFUSED, b"revoked");
                        break;
                    }
                    streams.spawn(per_stream(peer.clone(), send, recv));
                }
                Err(e) => {
                    tracing::debug!(%addr, peer = %peer.role, error = %e, "QUIC connection ended");
                    break;
                }
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
    while streams.join_next().await.is_some() {}
}

/// Per-connection transport choice for an accepting endpoint: its
/// configurations and the selector.
#[derive(Clone)]
pub struct AcceptTransports {
    /// The endpoint's configurations (the server side is used).
    pub configs: EndpointConfigs,
    /// Picks the transport for a peer address.
    pub select: TransportSelector,
}

impl std::fmt::Debug for AcceptTransports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcceptTransports").finish_non_exhaustive()
    }
}

/// Accepts connections on `endpoint` until it is closed, completing each
/// handshake in its own task (a stalled handshake holds up no one else), and runs
/// `per_stream` in a task for every bidirectional stream of every connection.
/// With `transports`, each connection gets the transport its selector picks for
/// the peer's address. `limiter` bounds handshakes and connections (per peer
/// identity and in all) and counts what it refuses. Aborting the returned task
/// aborts all of them.
pub fn serve_streams<F, Fut>(
    endpoint: Endpoint,
    trust: DeploymentTrust,
    transports: Option<AcceptTransports>,
    limiter: Arc<Limiter>,
    per_stream: F,
) -> JoinHandle<()>
where
    F: Fn(PeerIdentity, quinn::SendStream, quinn::RecvStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    serve_streams_hooked(endpoint, trust, transports, limiter, None, per_stream)
}

/// [`serve_streams`], also calling `hook` with every accepted connection.
pub fn serve_streams_hooked<F, Fut>(
    endpoint: Endpoint,
    trust: DeploymentTrust,
    transports: Option<AcceptTransports>,
    limiter: Arc<Limiter>,
    hook: Option<ConnectionHook>,
    per_stream: F,
) -> JoinHandle<()>
where
    F: Fn(PeerIdentity, quinn::SendStream, quinn::RecvStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let per_stream = Arc::new(per_stream);
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                incoming = endpoint.accept() => match incoming {
                    Some(incoming) => {
                        // Over the handshake cap: refused before any cryptography.
                        let Some(handshake) = limiter.handshake(incoming.remote_address().ip()) else {
                            tracing::debug!(addr = %incoming.remote_address(), "refused a QUIC handshake: too many in progress");
                            incoming.refuse();
                            continue;
                        };
                        let config = transports.as_ref().and_then(|t| {
                            (t.select)(incoming.remote_address()).and_then(|tc| t.configs.server_with(tc))
                        });
                        connections.spawn(serve_connection(incoming, handshake, config, trust.clone(), limiter.clone(), hook.clone(), per_stream.clone()));
                    }
                    None => break,
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    })
}
