//! Large-message schema: client <-> server exchanges over QUIC (server 34333/34331,
//! `branchline-quic`'s large-message framing). Same protobuf evolution rules as
//! [`crate::msg`]. The requester is identified by its QUIC certificate, never by a field.

use crate::msg::{ContentMeta, ErrorCode};

/// The payload of a `Request` frame (`docs/wire.md` §5.2, §5.4): one request per stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LargeRequest {
    /// The request (tags 1-5, 10, 13). `None` when the requester sent a kind this build
    /// does not know; the responder answers [`ErrorCode::Unsupported`].
    #[prost(oneof = "Request", tags = "1, 2, 3, 4, 5, 10, 13")]
    pub request: Option<Request>,
}

/// Every large request kind (`docs/wire.md` §5.4), with the [`Response`] each gets.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Request {
    /// Catalogue entry and piece map of a content item.
    #[prost(message, tag = "1")]
    GetContent(GetContent),
    /// Where can I get this content? Answered with [`Locations`].
    #[prost(message, tag = "2")]
    Locate(Locate),
    /// What the requester holds of a content item. Answered with `Ack`.
    #[prost(message, tag = "3")]
    ReportHave(ReportHave),
    /// A peer sent a piece that failed verification. Answered with `Ack`.
    #[prost(message, tag = "4")]
    ReportBadPeer(ReportBadPeer),
    /// Central Office client -> server: open a connection to my content port (34760)
    /// and serve me this content over it. Answered with `Ack` once connected.
    #[prost(message, tag = "5")]
    SendContent(SendContent),
    /// The clients the admin revoked. Answered with [`Revocations`].
    #[prost(message, tag = "10")]
    GetRevocations(GetRevocations),
    /// A registered client asks for the deployment key the server seals with now (after
    /// a rotation). Answered with [`DeploymentKeyGrant`]. Over QUIC, never in a datagram:
    /// the key travels only to the holder of a client certificate, encrypted by TLS.
    #[prost(message, tag = "13")]
    GetDeploymentKey(GetDeploymentKey),
}

/// See [`Request::GetRevocations`]; no fields.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetRevocations {}

/// Most client ids in a [`Revocations`] answer (the server refuses to revoke more).
pub const MAX_REVOKED: usize = 10_000;

/// The revocation list: every peer refuses these clients' QUIC handshakes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Revocations {
    /// As in `HeartbeatAck.revocation_epoch`.
    #[prost(uint64, tag = "1")]
    pub epoch: u64,
    /// Revoked client ids (32 lowercase hex digits), at most [`MAX_REVOKED`].
    #[prost(string, repeated, tag = "2")]
    pub clients: Vec<String>,
}

/// See [`Request::GetDeploymentKey`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetDeploymentKey {}

/// The server's current deployment key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeploymentKeyGrant {
    /// The 32-byte deployment secret.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// Its key id (the receiver checks it against the key).
    #[prost(uint32, tag = "2")]
    pub key_id: u32,
    /// When the previous key stops being accepted (Unix ms); 0: no overlap runs.
    #[prost(uint64, tag = "3")]
    pub retire_ms: u64,
}

/// See [`Request::SendContent`] and `docs/wire.md` §6.5.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SendContent {
    /// The content id (32 bytes) the server should serve over the connection it opens.
    #[prost(bytes = "vec", tag = "1")]
    pub content_id: Vec<u8>,
}

/// The payload of a `Response` frame: the answer to one [`LargeRequest`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct LargeResponse {
    /// The answer (tags 1-4, 10, 13); `None` if the responder sent a kind this build does
    /// not know.
    #[prost(oneof = "Response", tags = "1, 2, 3, 4, 10, 13")]
    pub response: Option<Response>,
}

/// Every large response kind (`docs/wire.md` §5.4).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Response {
    /// Answer to [`Request::GetContent`].
    #[prost(message, tag = "1")]
    Content(ContentInfo),
    /// Answer to [`Request::Locate`].
    #[prost(message, tag = "2")]
    Locations(Locations),
    /// Answer to [`Request::ReportHave`], [`Request::ReportBadPeer`] and (once the server
    /// is connected) [`Request::SendContent`].
    #[prost(message, tag = "3")]
    Ack(crate::msg::Ack),
    /// The request was understood and refused (message-layer error, `docs/wire.md` §5.3);
    /// any request can get it.
    #[prost(message, tag = "4")]
    Error(LargeError),
    /// Answer to [`Request::GetRevocations`].
    #[prost(message, tag = "10")]
    Revocations(Revocations),
    /// Answer to [`Request::GetDeploymentKey`].
    #[prost(message, tag = "13")]
    DeploymentKey(DeploymentKeyGrant),
}

/// By id, or by name (and version; empty = the latest published).
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetContent {
    /// The content id (32 bytes); when set, `name` and `version` are ignored.
    #[prost(bytes = "vec", tag = "1")]
    pub content_id: Vec<u8>,
    /// The published name, used when `content_id` is empty.
    #[prost(string, tag = "2")]
    pub name: String,
    /// The version of `name` wanted; empty for the latest published.
    #[prost(string, tag = "3")]
    pub version: String,
}

/// A content item's catalogue entry and piece map (answer to [`GetContent`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContentInfo {
    /// The catalogue entry.
    #[prost(message, optional, tag = "1")]
    pub meta: Option<ContentMeta>,
    /// The encoded piece map (`branchline-store`'s format), verified by the server.
    #[prost(bytes = "vec", tag = "2")]
    pub piece_map: Vec<u8>,
}

/// Where to fetch a content item from (answered with [`Locations`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Locate {
    /// The content id (32 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub content_id: Vec<u8>,
    /// The requester is reading this content from the origin now (it keeps that role
    /// across a server restart).
    #[prost(bool, tag = "2")]
    pub reading_origin: bool,
    /// The requester was its office's RVP for this content at its last locate.
    #[prost(bool, tag = "3")]
    pub was_rvp: bool,
}

/// One peer that holds (part of) a content item.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PeerHolding {
    /// The peer's client id (32 hex digits); its certificate must name it.
    #[prost(string, tag = "1")]
    pub client_id: String,
    /// IP address to reach the peer's content port on.
    #[prost(string, tag = "2")]
    pub address: String,
    /// The peer's content port: its Foreground one (34760) in [`Locations::peers`], its
    /// Background one (34750) in [`Locations::upstream`], as it registered them.
    #[prost(uint32, tag = "3")]
    pub content_port: u32,
    /// The peer holds every piece.
    #[prost(bool, tag = "4")]
    pub complete: bool,
    /// Bitfield of verified pieces (`docs/wire.md` §8; empty when `complete`).
    #[prost(bytes = "vec", tag = "5")]
    pub have: Vec<u8>,
    /// Meant to say the peer shares the requester's subnet; this server sets it to true
    /// for every peer (upstream ones too) and the reference client does not read it.
    #[prost(bool, tag = "6")]
    pub same_subnet: bool,
    /// The peer's Adaptive Protocol port (34546), for control signals.
    #[prost(uint32, tag = "7")]
    pub adaptive_port: u32,
}

/// Where to fetch a content item from (answer to [`Locate`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Locations {
    /// Peers of the requester's office holding (or fetching) pieces, complete ones first,
    /// then by pieces held; at most 32.
    #[prost(message, repeated, tag = "1")]
    pub peers: Vec<PeerHolding>,
    /// True when the requester is the one client that reads this content from the origin.
    #[prost(bool, tag = "2")]
    pub read_origin: bool,
    /// The origin to read from (HTTP(S) URL or file path).
    #[prost(string, tag = "3")]
    pub origin: String,
    /// True when the server holds the content and sends it to the requester (a Central
    /// Office client) on request ([`SendContent`]).
    #[prost(bool, tag = "4")]
    pub server_sends: bool,
    /// Peers of the parent office (or the nearest ancestor office with clients online)
    /// holding pieces, reached over Background (their `content_port` is the Background
    /// content port, 34750). Only the office's RVP is given any.
    #[prost(message, repeated, tag = "5")]
    pub upstream: Vec<PeerHolding>,
    /// The requester's office.
    #[prost(string, tag = "6")]
    pub office: String,
    /// The office's rendezvous point for this content (client id), if one is elected.
    #[prost(string, tag = "7")]
    pub rvp: String,
    /// True when the requester is that RVP: it alone fetches from outside the office.
    #[prost(bool, tag = "8")]
    pub am_rvp: bool,
    /// The policy of the office's WAN link, for the RVP.
    #[prost(message, optional, tag = "9")]
    pub link: Option<LinkPolicy>,
    /// The office's type: default, wifi or vpn.
    #[prost(string, tag = "10")]
    pub office_kind: String,
}

/// The policy of one WAN link, as the RVP applies it to what it pulls over the link.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LinkPolicy {
    /// Background rate ceiling (bytes/s); 0 = none.
    #[prost(uint64, tag = "1")]
    pub ceiling_bytes_per_s: u64,
    /// False outside the link's allowed hours: pull nothing over the link.
    #[prost(bool, tag = "2")]
    pub open: bool,
    /// Milliseconds until the window opens or closes; 0 = never changes.
    #[prost(uint64, tag = "3")]
    pub change_in_ms: u64,
    /// The link carries its maximum number of other transfers: wait (pull nothing over
    /// it) and ask again.
    #[prost(bool, tag = "4")]
    pub queued: bool,
    /// An admin paused this transfer: pull nothing over the link until resumed.
    #[prost(bool, tag = "5")]
    pub paused: bool,
}

/// What the requester holds of a content item (answered with `Ack`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReportHave {
    /// The content id (32 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub content_id: Vec<u8>,
    /// Bitfield of verified pieces (`docs/wire.md` §8), exactly the item's piece count;
    /// empty when `complete`.
    #[prost(bytes = "vec", tag = "2")]
    pub have: Vec<u8>,
    /// The requester holds every piece (the server then ignores `have`).
    #[prost(bool, tag = "3")]
    pub complete: bool,
    /// The port this client serves content on (Foreground). Ignored by the server, which
    /// uses the port the client registered (`Register.ports.content_fg`).
    #[prost(uint32, tag = "4")]
    pub content_port: u32,
    /// Verified bytes this client has taken of this content, by source kind, since it
    /// started it (counts, for `connector status`).
    #[prost(message, optional, tag = "5")]
    pub sources: Option<SourceBytes>,
    /// Peers (client ids) that sent this client verified bytes of this content, at most
    /// [`MAX_SERVED_BY`]: the server's evidence that a peer claiming `complete` serves.
    #[prost(string, repeated, tag = "20")]
    pub served_by: Vec<String>,
}

/// Most entries of [`ReportHave::served_by`] the server reads.
pub const MAX_SERVED_BY: usize = 64;

/// Bytes by where they came from.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct SourceBytes {
    /// Read from the content's origin (URL or file path).
    #[prost(uint64, tag = "1")]
    pub origin: u64,
    /// From the server's own copy.
    #[prost(uint64, tag = "2")]
    pub server: u64,
    /// Over the office's WAN link, from the parent office.
    #[prost(uint64, tag = "3")]
    pub wan: u64,
    /// From peers in the same office.
    #[prost(uint64, tag = "4")]
    pub lan: u64,
}

/// A peer sent a piece of this content that failed verification (answered with `Ack`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReportBadPeer {
    /// The content id (32 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub content_id: Vec<u8>,
    /// The peer's client id (32 hex digits); counts only if the server named that peer to
    /// the reporter for this content.
    #[prost(string, tag = "2")]
    pub peer_id: String,
    /// What went wrong, for the server's log.
    #[prost(string, tag = "3")]
    pub reason: String,
}

/// A large request understood and refused (`docs/wire.md` §5.3, message layer).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LargeError {
    /// An [`ErrorCode`] as its number (`docs/wire.md` §4.3); unknown numbers read as
    /// [`ErrorCode::Unspecified`] through `code()`.
    #[prost(enumeration = "ErrorCode", tag = "1")]
    pub code: i32,
    /// Human-readable explanation, for logs and the user.
    #[prost(string, tag = "2")]
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message as _;

    #[test]
    fn round_trip() {
        let r = LargeRequest {
            request: Some(Request::Locate(Locate {
                content_id: vec![1; 32],
                reading_origin: true,
                was_rvp: false,
            })),
        };
        assert_eq!(LargeRequest::decode(&r.encode_to_vec()[..]).unwrap(), r);
    }

    proptest! {
        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = LargeRequest::decode(&data[..]);
            let _ = LargeResponse::decode(&data[..]);
        }
    }
}
