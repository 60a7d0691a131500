//! Branchline's QUIC layer: the deployment certificate authority, mutually
//! authenticated QUIC endpoints (quinn + rustls with the ring provider), large
//! messages, and piece transfers.
//!
//! # Identity model
//!
//! Each deployment has one certificate authority, run by the server
//! ([`DeploymentCa`], files `ca.crt`, `ca.key` (mode 0600), `deployment`). It is
//! the only trust anchor of every node: no system or web roots are consulted, so a
//! certificate from another deployment never verifies, even one whose deployment
//! name is the same. The CA certificate carries a DNS name constraint for the
//! deployment, so even a misused CA key cannot vouch for outside names.
//!
//! All keys are Ed25519 (smallest keys, signatures and certificates; supported
//! by rustls' ring provider in TLS 1.3, which QUIC requires).
//!
//! - **Registration.** A client creates its key pair once
//!   ([`ClientIdentity::load_or_generate`], `identity.key` at mode 0600 in its
//!   data directory) and sends a [`CertRequest`] in its registration datagram:
//!   version byte, raw public key and an Ed25519 proof-of-possession signature,
//!   **97 bytes**. This replaces a PKCS#10 CSR, which would be about twice the size
//!   and need an X.509 parser on the server. The server assigns the client's name
//!   ([`ClientName`], a DNS label such as the client id in hex) and answers with
//!   [`DeploymentCa::issue_client_cert`]'s certificate plus the CA certificate;
//!   the client checks both ([`ClientIdentity::install_certificate`]: our key,
//!   chains to the CA, names us) and stores them.
//! - **Certificates** are minimal: empty subject, one critical DNS SAN naming the
//!   holder, random 9-byte serial, validity starting one hour back (clock skew),
//!   no other extensions. A client without extended key usage is accepted by
//!   WebPKI both as TLS client and TLS server, which every node needs.
//! - **Renewal.** Endpoints present their node's *live* certificate through a
//!   rustls certificate resolver; [`NodeIdentity::renew`] swaps it while they run
//!   (new handshakes, accepting and connecting, use the new one; open connections
//!   keep theirs). [`Validity`] reads a certificate's validity and says when to
//!   renew (two thirds of its lifetime). TLS sessions are never resumed, so every
//!   handshake checks the peer's current certificate. [`ca::fingerprint`] is what
//!   clients pin the CA by.
//! - **Server.** [`DeploymentCa::server_identity`] makes the server a fresh key and
//!   certificate (`s.<deployment>`); calling it at every start is fine.
//! - **Revocation.** A [`RevocationList`] (clients by name, certificates by
//!   serial) is shared between the application and the verifiers and checked at
//!   every handshake and at every new stream of an accepted connection.
//!   The server's list reaches every client within one heartbeat interval: the
//!   heartbeat reply carries its epoch, the client fetches the list
//!   (`GetRevocations`) and applies it with [`RevocationList::replace_clients`].
//!
//! Measured sizes (`cargo run -p branchline-quic --example sizes`), DER bytes:
//!
//! | deployment / client name length | client cert | server cert | CA cert |
//! |---|---|---|---|
//! | 4 / 6 chars (`acme`, `0f3a9c`) | 231 | 224 | 309 |
//! | 4 / 32 chars (128-bit id in hex) | 257 | 224 | 309 |
//! | 63 / 63 chars (longest allowed) | 414 | 344 | 489 |
//!
//! So a registration reply holds the client certificate and the CA certificate
//! together in under 1000 bytes even with the longest names (a unit test keeps
//! it that way).
//!
//! # Names and SNI
//!
//! Nodes reach each other by IP address, so names exist only inside
//! certificates. Each certificate's one DNS SAN is `s.<deployment>` for the server
//! and `<client>.c.<deployment>` for a client ([`Role::dns_name`]). The
//! connecting side always knows whom it dials (the server tells it which peer
//! holds which pieces), and passes that name as the TLS server name: the verifier
//! then checks that the node at that address is that peer, not just any member
//! of the deployment. The name is **not sent** as SNI (`enable_sni = false`):
//! the accepting side has one certificate, and client names need not travel in
//! clear text. The accepting side learns the connecting peer's identity from its
//! certificate ([`endpoint::peer_identity`]).
//!
//! # Endpoints, ports and ALPNs
//!
//! One quinn endpoint per port and use ([`endpoint::bind`]), with one ALPN:
//! [`ALPN_LARGE`] (`branchline/large/1`) for large messages and [`ALPN_CONTENT`]
//! (`branchline/content/1`) for content. Foreground endpoints use quinn's Cubic;
//! Background endpoints take any quinn `ControllerFactory` ([`Congestion`]), i.e.
//! LEDBAT++ from the ledbat crate (build the transport with [`transport_config`]
//! and pass it through the ledbat crate's `configure_background`). A content
//! endpoint can also pick each connection's transport by peer address
//! ([`ContentNode::set_transport_selector`]), so every WAN link gets its own
//! LEDBAT++ factory on the one Background port. Every connection has an idle timeout (default
//! 10 s, [`TransportSettings`]) with keep-alives (3 s), so a vanished peer is
//! noticed and no wait is unbounded.
//!
//! The design's port rule, *a node sends a request from the socket bound to its
//! own reply port to the peer's request port*, maps to QUIC as:
//!
//! - **Large messages** ([`LargeMessaging`]): the endpoint on the request port
//!   (server 34333/34341, client 34337/34345) accepts; the endpoint on the reply
//!   port (server 34331/34339, client 34335/34343) connects. The response travels
//!   back on the same connection, hence to the reply port.
//! - **Content** ([`ContentNode`]): the receiving client connects from its
//!   content port (34760 Foreground, 34750 Background) to the sender's content
//!   port, so content arrives at the receiver's 34760/34750 as the port table
//!   says; the same endpoint also accepts, to serve pieces to others.
//!
//! Port numbers come from the configuration crate; this crate takes socket
//! addresses. A [`ConnectionPool`] keeps one connection per peer so handshakes
//! are paid once; revoking a peer also ends its open connections (at its next
//! request on the accepting side, at [`ConnectionPool::prune`] on the connecting
//! side).
//!
//! # Framing
//!
//! - **Large messages** ([`frame`], [`large`]): one request and one response per
//!   bidirectional stream; each is one frame `kind (1 byte) || length (u32 BE) ||
//!   payload`, kinds Request, Response and Error (a UTF-8 reason of at most 1024
//!   bytes), followed by the end of the stream. Payloads are opaque bytes (the
//!   wire crate encodes them): requests at most [`LargeConfig::max_request`]
//!   (default 64 KiB), responses at most [`LargeConfig::max_payload`] (default
//!   64 MiB); a whole exchange is bounded by [`LargeConfig::request_timeout`].
//!
//! # Limits
//!
//! Accepting endpoints bound handshakes, connections per certificate identity and
//! in all, and request deadlines, and count every refusal ([`limits`]).
//! - **Content port** ([`piece_wire`], [`content`]): one stream per request;
//!   the request's first byte is its kind and fixes its length, and a responder
//!   MUST refuse any other first byte with BadRequest without reading on:
//!   - *piece request*, first byte `0x01` (the version), 45 bytes: `0x01 ||
//!     content id (32) || piece (u32) || offset (u32) || length (u32)`
//!     ([`fetch_piece`], and [`fetch_piece_progress`], which counts the data
//!     bytes into an `AtomicU64` as they arrive);
//!   - *have query*, first byte `0x02`, 33 bytes: `0x02 || content id (32)`
//!     ([`fetch_have`]), so clients of one office learn each other's holdings
//!     from each other instead of polling the server.
//!
//!   Both are answered with `status (1) || length (u32 BE)` then `length`
//!   bytes: the piece's data, the responder's bitfield of verified pieces (the
//!   store's `Bitfield::as_bytes` order: bit `i` in byte `i / 8`, mask
//!   `1 << (i % 8)`), or a reason of at most 1024 bytes. A have responder MUST
//!   answer NotFound when it holds no verified piece of the content and MUST NOT
//!   send more than [`MAX_HAVE_LEN`] bytes of bitfield (2^20 pieces); a requester
//!   MUST refuse a longer one unread. Pieces and bitfields come from a
//!   [`PieceSource`] (the content store); pieces are passed on unverified:
//!   callers check them against the BLAKE3 hash.
//!
//! Malformed, oversized or truncated frames give typed errors ([`LargeError`],
//! [`ContentError`]) and an Error/BadRequest answer to the peer; they never
//! panic. Every decoder is property-tested.

pub mod ca;
pub mod cache_source;
pub mod content;
pub mod endpoint;
pub mod files;
pub mod frame;
pub mod identity;
pub mod large;
pub mod limits;
pub mod node;
pub mod piece_wire;
pub mod pool;
pub mod renewal;
pub mod tls;

pub use ca::DeploymentCa;
pub use content::{
    ContentConfig, ContentError, ContentNode, PieceError, PieceSink, PieceSource, fetch_have,
    fetch_piece, fetch_piece_into, fetch_piece_progress,
};
pub use endpoint::{
    ALPN_CONTENT, ALPN_LARGE, Congestion, Direction, QuicError, TransportSettings,
    background_transport, transport_config,
};
pub use identity::{ClientName, DeploymentName, NameError, PeerIdentity, Role};
pub use large::{HandlerError, LargeConfig, LargeError, LargeMessaging, send_request};
pub use limits::{AcceptLimits, AcceptStats, Limiter, Refusal};
pub use node::{CertRequest, ClientIdentity, IdentityError, NodeIdentity};
pub use piece_wire::{HaveQuery, MAX_HAVE_LEN, PieceRequest};
pub use pool::ConnectionPool;
pub use renewal::Validity;
pub use tls::{DeploymentTrust, RevocationList, TlsError};

/// DER certificate bytes, as carried in registration replies.
pub use rustls::pki_types::CertificateDer;
