//! The small-message schema (protobuf encoding via `prost`, written out by hand so no
//! code generator is needed). `proto/branchline.proto` describes the same messages, and
//! `tests/proto.rs` fails if the two differ; `docs/wire.md` is the normative text.
//!
//! Evolution rules, which keep a server and clients of different versions working together:
//! * a field's tag and type never change; removed tags are never reused;
//! * new fields are optional with a safe zero default; receivers skip unknown fields;
//! * a new message kind gets a new tag in [`Body`]; a receiver that does not know it sees
//!   `body == None` and answers [`ErrorCode::Unsupported`].

/// The unit of every datagram: ids for reliability and replay protection, and the body.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    /// Uniformly random over 1..=2^64-1 for every new message (replies too);
    /// retransmissions reuse it. Receivers remember ids across all senders, so an id
    /// must never be a counter or otherwise predictable.
    #[prost(uint64, tag = "1")]
    pub msg_id: u64,
    /// Sender's clock when the message was first sent (Unix milliseconds).
    #[prost(uint64, tag = "2")]
    pub sent_at_ms: u64,
    /// For a reply or ack: the `msg_id` of the request. 0 for a request.
    #[prost(uint64, tag = "3")]
    pub in_reply_to: u64,
    /// The message (tags 10-34 and 40-42, `docs/wire.md` §4.2). `None` when the sender
    /// used a kind this build does not know; a request is then answered
    /// [`ErrorCode::Unsupported`].
    #[prost(
        oneof = "Body",
        tags = "10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 40, 41, 42"
    )]
    pub body: Option<Body>,
}

/// Every message kind. Requests and their replies are listed in pairs.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Body {
    /// Plain acknowledgement of a request that needs no data back.
    #[prost(message, tag = "10")]
    Ack(Ack),
    /// The request was understood but refused.
    #[prost(message, tag = "11")]
    Error(ErrorReply),
    /// client -> server: enrol or refresh a client's record.
    #[prost(message, tag = "12")]
    Register(Register),
    /// server -> client: reply to [`Register`].
    #[prost(message, tag = "13")]
    RegisterOk(RegisterOk),
    /// client -> server: liveness and cache state.
    #[prost(message, tag = "14")]
    Heartbeat(Heartbeat),
    /// server -> client: reply to [`Heartbeat`].
    #[prost(message, tag = "15")]
    HeartbeatAck(HeartbeatAck),
    /// connector -> server: prove the key and record the connector.
    #[prost(message, tag = "16")]
    Activate(Activate),
    /// server -> connector: reply to [`Activate`].
    #[prost(message, tag = "17")]
    ActivateOk(ActivateOk),
    /// connector -> server: ask for the server's health.
    #[prost(message, tag = "18")]
    HealthRequest(HealthRequest),
    /// server -> connector: reply to [`HealthRequest`].
    #[prost(message, tag = "19")]
    Health(Health),
    /// any -> any: reachability probe, answered with [`Ack`].
    #[prost(message, tag = "20")]
    Ping(Ping),
    /// connector -> server: announce a content item; its piece map follows in chunks.
    #[prost(message, tag = "21")]
    PublishBegin(PublishBegin),
    /// connector -> server: one chunk of the piece map, answered with [`Ack`].
    #[prost(message, tag = "22")]
    PublishChunk(PublishChunk),
    /// connector -> server: the map is complete; verify and publish.
    #[prost(message, tag = "23")]
    PublishCommit(PublishCommit),
    /// server -> connector: reply to [`PublishCommit`] (and to a repeated [`PublishBegin`]).
    #[prost(message, tag = "24")]
    Published(Published),
    /// connector -> server: one page of the catalogue.
    #[prost(message, tag = "25")]
    ListContent(ListContent),
    /// server -> connector: reply to [`ListContent`].
    #[prost(message, tag = "26")]
    ContentList(ContentList),
    /// connector -> server: one chunk of an admin call's request (JSON), answered with
    /// [`Ack`].
    #[prost(message, tag = "27")]
    AdminChunk(AdminChunk),
    /// connector -> server: run the admin call whose request was uploaded (or, again, fetch
    /// another page of its result). Answered with [`AdminPage`].
    #[prost(message, tag = "28")]
    AdminRun(AdminRun),
    /// server -> connector: one page of an admin call's result (JSON).
    #[prost(message, tag = "29")]
    AdminPage(AdminPage),
    /// server -> client (from the server's 34322 to the client's 34325): fetch this
    /// content now (a deployment, or relaying for a child office). Answered with [`Ack`].
    #[prost(message, tag = "30")]
    Assign(Assign),
    /// client -> its subnet's broadcast address, port 34329: who holds pieces of this
    /// content? Never answered on the broadcast port; holders send [`IHave`].
    #[prost(message, tag = "31")]
    WhoHas(WhoHas),
    /// client -> client (to the asker's 34325, after a random delay): I hold pieces of
    /// this content. Answered with [`Ack`].
    #[prost(message, tag = "32")]
    IHave(IHave),
    /// Adaptive Protocol control signal about a WAN transfer: the receiving RVP to the
    /// server's 34545 (start, progress, end) and to each sending client's 34546 (start,
    /// pause, resume, cancel). Answered with [`Ack`].
    #[prost(message, tag = "33")]
    TransferSignal(TransferSignal),
    /// server -> the receiving RVP (its 34325): pause or resume a WAN transfer (an
    /// admin's request). Answered with [`Ack`].
    #[prost(message, tag = "34")]
    TransferControl(TransferControl),
    // Tags 35-39 and 43-59 are unassigned; a new body takes a tag never used before.
    /// connector -> server: enrol this connector with a one-time token (the token itself
    /// never travels: `proof` is an HMAC keyed by it). Answered with [`ConnectorEnrolled`].
    #[prost(message, tag = "40")]
    ConnectorEnroll(ConnectorEnroll),
    /// server -> connector: reply to [`ConnectorEnroll`].
    #[prost(message, tag = "41")]
    ConnectorEnrolled(ConnectorEnrolled),
    /// connector -> server: an admin request (publish, admin calls) authenticated with
    /// the connector's own credential. Answered as the request inside it.
    #[prost(message, tag = "42")]
    ConnectorSigned(ConnectorSigned),
}

impl Body {
    /// Short name for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Ack(_) => "Ack",
            Body::Error(_) => "Error",
            Body::Register(_) => "Register",
            Body::RegisterOk(_) => "RegisterOk",
            Body::Heartbeat(_) => "Heartbeat",
            Body::HeartbeatAck(_) => "HeartbeatAck",
            Body::Activate(_) => "Activate",
            Body::ActivateOk(_) => "ActivateOk",
            Body::HealthRequest(_) => "HealthRequest",
            Body::Health(_) => "Health",
            Body::Ping(_) => "Ping",
            Body::PublishBegin(_) => "PublishBegin",
            Body::PublishChunk(_) => "PublishChunk",
            Body::PublishCommit(_) => "PublishCommit",
            Body::Published(_) => "Published",
            Body::ListContent(_) => "ListContent",
            Body::ContentList(_) => "ContentList",
            Body::AdminChunk(_) => "AdminChunk",
            Body::AdminRun(_) => "AdminRun",
            Body::AdminPage(_) => "AdminPage",
            Body::Assign(_) => "Assign",
            Body::WhoHas(_) => "WhoHas",
            Body::IHave(_) => "IHave",
            Body::TransferSignal(_) => "TransferSignal",
            Body::TransferControl(_) => "TransferControl",
            Body::ConnectorEnroll(_) => "ConnectorEnroll",
            Body::ConnectorEnrolled(_) => "ConnectorEnrolled",
            Body::ConnectorSigned(_) => "ConnectorSigned",
        }
    }

    /// Whether the server acts on this request only inside [`ConnectorSigned`], i.e. with
    /// the connector's credential and never with the deployment key alone.
    pub fn needs_connector(&self) -> bool {
        matches!(
            self,
            Body::PublishBegin(_)
                | Body::PublishChunk(_)
                | Body::PublishCommit(_)
                | Body::AdminChunk(_)
                | Body::AdminRun(_)
        )
    }
}

/// See [`Body::ConnectorEnroll`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConnectorEnroll {
    /// The connector's name: 1-64 letters, digits, `.`, `-` or `_` (the server refuses
    /// others).
    #[prost(string, tag = "1")]
    pub name: String,
    /// 16 random bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub nonce: Vec<u8>,
    /// HMAC-SHA256 keyed by the token (see `branchline_wire::connector`).
    #[prost(bytes = "vec", tag = "3")]
    pub proof: Vec<u8>,
}

/// See [`Body::ConnectorEnrolled`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConnectorEnrolled {
    /// The name the credential was made for (as in [`ConnectorEnroll::name`]).
    #[prost(string, tag = "1")]
    pub name: String,
    /// True when the name had a credential before (it is replaced).
    #[prost(bool, tag = "2")]
    pub replaced: bool,
}

/// See [`Body::ConnectorSigned`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConnectorSigned {
    /// The enrolled connector's name; the server refuses a name it has no credential for.
    #[prost(string, tag = "1")]
    pub connector: String,
    /// The connector's clock when it signed (Unix milliseconds); the server refuses one
    /// more than 120 s behind or 5 s ahead of its clock.
    #[prost(uint64, tag = "2")]
    pub issued_ms: u64,
    /// 16 random bytes, never used twice; the server refuses one it saw within 125 s.
    #[prost(bytes = "vec", tag = "3")]
    pub nonce: Vec<u8>,
    /// An [`Envelope`] holding only the request's body, encoded.
    #[prost(bytes = "vec", tag = "4")]
    pub request: Vec<u8>,
    /// HMAC-SHA256 by the connector's credential (see `branchline_wire::connector`).
    #[prost(bytes = "vec", tag = "5")]
    pub mac: Vec<u8>,
}

/// See [`Body::Ack`]; no fields (also the large-message `Ack` response).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ack {}

/// See [`Body::Ping`]; no fields.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ping {}

/// Refusal codes. Unknown codes from newer peers decode as `Unspecified`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ErrorCode {
    /// No code given, or a code this build does not know.
    Unspecified = 0,
    /// The receiver does not know this message kind (it is older than the sender).
    Unsupported = 1,
    /// A field failed validation; `detail` says which.
    Invalid = 2,
    /// The receiver's clock and the sender's differ by more than the replay window. Sent
    /// by older versions only: current receivers drop such requests unanswered.
    ClockSkew = 3,
    /// The receiver is temporarily unable to serve (e.g. its database failed, or the
    /// client has no office yet); retry later.
    Unavailable = 4,
    /// The thing asked for does not exist (e.g. no such content).
    NotFound = 5,
    /// The request needs a credential the sender did not show (e.g. the connector's), or
    /// the client id is bound to another key, revoked or not yet approved.
    Unauthorized = 6,
}

/// See [`Body::Error`]: a small-message request understood and refused.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ErrorReply {
    /// An [`ErrorCode`] as its number; unknown numbers read as [`ErrorCode::Unspecified`]
    /// through `code()`.
    #[prost(enumeration = "ErrorCode", tag = "1")]
    pub code: i32,
    /// Human-readable explanation; for `Invalid`, `field `x`: ...` naming the field.
    #[prost(string, tag = "2")]
    pub detail: String,
    /// Receiver's clock (Unix ms), so a sender can report clock skew precisely; 0 when the
    /// receiver does not say (the reference client's own refusals).
    #[prost(uint64, tag = "3")]
    pub receiver_time_ms: u64,
}

/// The ports a client listens on, reported so the server and peers can reach it even
/// when an admin moved them away from the defaults. Each must be 1-65535
/// ([`crate::validate::ports_from_wire`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ClientPorts {
    /// Small-message requests are received here (default 34325).
    #[prost(uint32, tag = "1")]
    pub small_request: u32,
    /// Small-message requests are sent from here and answers come back (default 34324).
    #[prost(uint32, tag = "2")]
    pub small_reply: u32,
    /// Foreground large-message requests are received here (default 34337).
    #[prost(uint32, tag = "3")]
    pub large_fg_request: u32,
    /// Foreground large-message requests are sent from here (default 34335).
    #[prost(uint32, tag = "4")]
    pub large_fg_reply: u32,
    /// Background large-message requests are received here (default 34345).
    #[prost(uint32, tag = "5")]
    pub large_bg_request: u32,
    /// Background large-message requests are sent from here (default 34343).
    #[prost(uint32, tag = "6")]
    pub large_bg_reply: u32,
    /// Subnet discovery ([`WhoHas`]) is received here (default 34329).
    #[prost(uint32, tag = "7")]
    pub broadcast: u32,
    /// Foreground content port (QUIC, default 34760): peers and the server's
    /// `SendContent` connection reach the client here.
    #[prost(uint32, tag = "8")]
    pub content_fg: u32,
    /// Background content port (QUIC, default 34750), for child offices' pulls.
    #[prost(uint32, tag = "9")]
    pub content_bg: u32,
    /// Adaptive Protocol signals ([`TransferSignal`]) are received here (default 34546).
    #[prost(uint32, tag = "10")]
    pub adaptive: u32,
}

/// See [`Body::Register`]; checked by [`Register::validate`] before the server acts.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Register {
    /// 32 lowercase hex digits, chosen by the client once and kept in its data dir.
    #[prost(string, tag = "1")]
    pub client_id: String,
    /// The client host's name (1-253 bytes, no control characters).
    #[prost(string, tag = "2")]
    pub hostname: String,
    /// The client's IP addresses (text form, 1-16), most preferred first. Informational:
    /// the server lists the client at the source address of the registration.
    #[prost(string, repeated, tag = "3")]
    pub addresses: Vec<String>,
    /// The client's subnet in CIDR form, e.g. `10.1.2.0/24`.
    #[prost(string, tag = "4")]
    pub subnet: String,
    /// Cache cap (bytes).
    #[prost(uint64, tag = "5")]
    pub cache_size_bytes: u64,
    /// Free cache space (bytes); at most `cache_size_bytes`.
    #[prost(uint64, tag = "6")]
    pub cache_free_bytes: u64,
    /// Client software version (1-64 bytes).
    #[prost(string, tag = "7")]
    pub version: String,
    /// Interval between this client's heartbeats (milliseconds, 100 to 3 600 000); the
    /// server counts the client offline after several missed ones.
    #[prost(uint32, tag = "8")]
    pub heartbeat_interval_ms: u32,
    /// The client's ports; absent: the defaults. Peers and the server use these.
    #[prost(message, optional, tag = "9")]
    pub ports: Option<ClientPorts>,
    /// The client's QUIC certificate request (97 bytes, `docs/wire.md` §9.2); empty when
    /// the client wants no certificate. Its key binds the client id at the first
    /// registration.
    #[prost(bytes = "vec", tag = "10")]
    pub cert_request: Vec<u8>,
}

/// See [`Body::RegisterOk`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct RegisterOk {
    /// The server's software version.
    #[prost(string, tag = "1")]
    pub server_version: String,
    /// Server clock (Unix ms).
    #[prost(uint64, tag = "2")]
    pub server_time_ms: u64,
    /// True when this registration created the record, false when it refreshed one.
    #[prost(bool, tag = "3")]
    pub new_client: bool,
    /// The client's certificate (DER), issued for `Register.cert_request`.
    #[prost(bytes = "vec", tag = "4")]
    pub client_cert: Vec<u8>,
    /// The deployment CA's certificate (DER).
    #[prost(bytes = "vec", tag = "5")]
    pub ca_cert: Vec<u8>,
    /// The deployment's name, as in the certificates.
    #[prost(string, tag = "6")]
    pub deployment: String,
    /// The office the server placed this client in (empty: none yet).
    #[prost(string, tag = "7")]
    pub office: String,
    /// The office's type: `default`, `wifi` or `vpn`.
    #[prost(string, tag = "8")]
    pub office_kind: String,
    /// The server runs `server.enrollment = "approve"` and the admin has not approved
    /// this client yet: no certificate; register again later.
    #[prost(bool, tag = "9")]
    pub pending: bool,
    /// Id of the deployment key the server seals its own messages with now (0: not
    /// said). A client that does not hold it fetches it over QUIC (`GetDeploymentKey`).
    #[prost(uint32, tag = "12")]
    pub key_id: u32,
    /// While a rotation's overlap runs: when the previous key stops being accepted (Unix
    /// ms). 0: no overlap, only `key_id` is accepted.
    #[prost(uint64, tag = "13")]
    pub key_retire_ms: u64,
}

/// See [`Body::Heartbeat`]; checked by [`Heartbeat::validate`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct Heartbeat {
    /// The sender's client id (32 lowercase hex digits), as registered.
    #[prost(string, tag = "1")]
    pub client_id: String,
    /// Free cache space now (bytes).
    #[prost(uint64, tag = "2")]
    pub cache_free_bytes: u64,
    /// Seconds since the client process started.
    #[prost(uint64, tag = "3")]
    pub uptime_s: u64,
    /// The client's drop counters since it started, by reason (non-zero only; at most
    /// [`crate::validate::MAX_DROP_REASONS`], checked by [`crate::validate::drop_counts`]).
    #[prost(message, repeated, tag = "4")]
    pub drops: Vec<DropCount>,
}

/// See [`Body::HeartbeatAck`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeartbeatAck {
    /// False when the server has no record of this client: it must register again.
    #[prost(bool, tag = "1")]
    pub known: bool,
    /// Content the server wants this client to fetch (deployments, relaying). The same
    /// list as the [`Assign`] messages pushed to the client, repeated here in case a push
    /// was lost; at most [`MAX_ASSIGNMENTS`] entries.
    #[prost(message, repeated, tag = "2")]
    pub assignments: Vec<Assign>,
    /// The client's office, as in [`RegisterOk::office`] (offices can change).
    #[prost(string, tag = "3")]
    pub office: String,
    /// The office's type, as in [`RegisterOk::office_kind`].
    #[prost(string, tag = "4")]
    pub office_kind: String,
    /// Changes whenever the server's list of revoked clients does: the client then asks
    /// for the list (`GetRevocations`) and refuses those clients' QUIC handshakes.
    #[prost(uint64, tag = "5")]
    pub revocation_epoch: u64,
    /// As [`RegisterOk::key_id`]: the key the server seals with now.
    #[prost(uint32, tag = "8")]
    pub key_id: u32,
    /// As [`RegisterOk::key_retire_ms`].
    #[prost(uint64, tag = "9")]
    pub key_retire_ms: u64,
}

/// What a [`TransferSignal`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum SignalKind {
    /// Not set, or a kind this build does not know: receivers drop the signal.
    Unspecified = 0,
    /// The receiving client (its office's RVP) started pulling the content over the WAN
    /// link; sent to the server and each sender.
    Start = 1,
    /// Bytes received over the link so far and the rate now; sent to the server.
    Progress = 2,
    /// The receiving client holds the whole content; sent to the server.
    End = 3,
    /// The receiving client paused pulling over the link (an admin's request); sent to
    /// each sender, which only acknowledges it.
    Pause = 4,
    /// The receiving client resumed pulling after a pause; sent to each sender.
    Resume = 5,
    /// The receiving client needs nothing more from the senders (sent with `End`); sent
    /// to each sender.
    Cancel = 6,
}

/// A control signal about one WAN transfer (a content item pulled over an office's link).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TransferSignal {
    /// The content id (32 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub content_id: Vec<u8>,
    /// A [`SignalKind`] as its number.
    #[prost(enumeration = "SignalKind", tag = "2")]
    pub kind: i32,
    /// Bytes received over the link so far.
    #[prost(uint64, tag = "3")]
    pub bytes: u64,
    /// Receive rate now (bytes/s).
    #[prost(uint64, tag = "4")]
    pub rate: u64,
    /// The sending clients (ids), in signals to the server.
    #[prost(string, repeated, tag = "5")]
    pub senders: Vec<String>,
    /// The receiving client's id (the server checks it against the source address).
    #[prost(string, tag = "6")]
    pub client_id: String,
}

/// Pause or resume a WAN transfer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TransferControl {
    /// The content id (32 bytes) of the transfer.
    #[prost(bytes = "vec", tag = "1")]
    pub content_id: Vec<u8>,
    /// True: pause the transfer; false: resume it.
    #[prost(bool, tag = "2")]
    pub pause: bool,
    /// The server's id for the transfer.
    #[prost(uint64, tag = "3")]
    pub transfer_id: u64,
}

/// Who holds pieces of a content item (subnet broadcast on 34329).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WhoHas {
    /// The content id (32 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub content_id: Vec<u8>,
    /// The asker's client id.
    #[prost(string, tag = "2")]
    pub client_id: String,
    /// The asker's small-message request port (34325), where answers go.
    #[prost(uint32, tag = "3")]
    pub reply_port: u32,
    /// The asker's office (as the server told it): only clients of that office answer.
    /// A subnet may hold several offices, or the interface's subnet be wider than one.
    #[prost(string, tag = "4")]
    pub office: String,
}

/// An answer to [`WhoHas`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct IHave {
    /// The content id (32 bytes) asked about.
    #[prost(bytes = "vec", tag = "1")]
    pub content_id: Vec<u8>,
    /// The holder's client id (its certificate must name it).
    #[prost(string, tag = "2")]
    pub client_id: String,
    /// The holder's Foreground content port (34760).
    #[prost(uint32, tag = "3")]
    pub content_port: u32,
    /// The holder has every piece.
    #[prost(bool, tag = "4")]
    pub complete: bool,
    /// Bitfield of verified pieces (`docs/wire.md` §8) when not complete and it fits the
    /// datagram (the asker then asks the holder directly otherwise).
    #[prost(bytes = "vec", tag = "5")]
    pub have: Vec<u8>,
    /// The holder's office: the asker takes holders of its own office only.
    #[prost(string, tag = "6")]
    pub office: String,
}

/// Most assignments carried in one heartbeat reply (they fit in one datagram).
pub const MAX_ASSIGNMENTS: usize = 16;

/// Fetch a content item into the cache.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Assign {
    /// The content id (32 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub content_id: Vec<u8>,
    /// Why: a deployment's id, or 0 for relaying on behalf of a child office.
    #[prost(uint64, tag = "2")]
    pub deployment: u64,
}

/// Admin calls (topology, deployments, status) carry a JSON request that can be larger
/// than one datagram: the connector uploads it in chunks under a random `call_id`, then
/// asks the server to run it and reads the JSON result page by page. The server keeps a
/// bounded number of uploads and results for a short time; running a call twice returns
/// the stored result, so a retransmitted `AdminRun` never runs a call twice.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AdminChunk {
    /// Random, chosen by the connector for this call.
    #[prost(uint64, tag = "1")]
    pub call_id: u64,
    /// Length of the whole request (bytes).
    #[prost(uint32, tag = "2")]
    pub total_len: u32,
    /// Offset of `data` in the request (a multiple of 900).
    #[prost(uint32, tag = "3")]
    pub offset: u32,
    /// The request bytes at `offset`: 900, or fewer in the last chunk.
    #[prost(bytes = "vec", tag = "4")]
    pub data: Vec<u8>,
}

/// See [`Body::AdminRun`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct AdminRun {
    /// The call whose request was uploaded in [`AdminChunk`]s.
    #[prost(uint64, tag = "1")]
    pub call_id: u64,
    /// Offset in the result of the page wanted (a multiple of 900); 0 runs the call (or
    /// returns its stored result).
    #[prost(uint32, tag = "2")]
    pub offset: u32,
}

/// See [`Body::AdminPage`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct AdminPage {
    /// The call, as in [`AdminRun::call_id`].
    #[prost(uint64, tag = "1")]
    pub call_id: u64,
    /// Length of the whole result (bytes, at most 16 MiB).
    #[prost(uint32, tag = "2")]
    pub total_len: u32,
    /// Offset of `data` in the result, as asked in [`AdminRun::offset`].
    #[prost(uint32, tag = "3")]
    pub offset: u32,
    /// At most 900 bytes of the JSON result.
    #[prost(bytes = "vec", tag = "4")]
    pub data: Vec<u8>,
}

/// See [`Body::Activate`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct Activate {
    /// The connector host's name (1-253 bytes, no control characters).
    #[prost(string, tag = "1")]
    pub hostname: String,
    /// The connector's software version (1-64 bytes).
    #[prost(string, tag = "2")]
    pub version: String,
}

/// See [`Body::ActivateOk`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct ActivateOk {
    /// The server's software version.
    #[prost(string, tag = "1")]
    pub server_version: String,
    /// True the first time this connector host activates.
    #[prost(bool, tag = "2")]
    pub first_activation: bool,
}

/// See [`Body::HealthRequest`]; no fields.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthRequest {}

/// One drop reason with its count.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DropCount {
    /// The reason's name (`docs/wire.md` §10; 1-32 bytes of `[a-z_]` in heartbeats).
    /// Receivers accept names they do not know.
    #[prost(string, tag = "1")]
    pub reason: String,
    /// Datagrams (or refusals) counted under it.
    #[prost(uint64, tag = "2")]
    pub count: u64,
}

/// See [`Body::Health`]: the server's state, for `connector health`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Health {
    /// The server's software version.
    #[prost(string, tag = "1")]
    pub version: String,
    /// Seconds since the server process started.
    #[prost(uint64, tag = "2")]
    pub uptime_s: u64,
    /// `ok` or a short description of what is wrong with the database.
    #[prost(string, tag = "3")]
    pub database: String,
    /// The database schema version (the number of the last migration applied).
    #[prost(uint32, tag = "4")]
    pub schema_version: u32,
    /// Clients the server has a record of.
    #[prost(uint64, tag = "5")]
    pub clients_total: u64,
    /// Clients heard from within their last few heartbeat intervals.
    #[prost(uint64, tag = "6")]
    pub clients_online: u64,
    /// Small-message datagrams the server dropped since it started (the sum of the
    /// `docs/wire.md` §10 reasons in `drops`; the other entries are not included).
    #[prost(uint64, tag = "7")]
    pub dropped_datagrams: u64,
    /// The server's own drops and refusals since it started, by reason (non-zero only):
    /// datagram drops, QUIC refusals (`quic_*`), refused registrations and dropped
    /// heartbeat updates.
    #[prost(message, repeated, tag = "8")]
    pub drops: Vec<DropCount>,
    /// Connector hosts that ever activated.
    #[prost(uint64, tag = "9")]
    pub connectors_total: u64,
    /// Large-message requests (QUIC) the server has answered since it started.
    #[prost(uint64, tag = "10")]
    pub large_requests: u64,
    /// Drops that clients counted, summed over the latest report of every client.
    #[prost(message, repeated, tag = "11")]
    pub client_drops: Vec<DropCount>,
}

/// A content item's catalogue entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContentMeta {
    /// BLAKE3 hash of the whole file (32 bytes): the content's identity.
    #[prost(bytes = "vec", tag = "1")]
    pub content_id: Vec<u8>,
    /// The published name (1-128 bytes, no `@` and no control characters).
    #[prost(string, tag = "2")]
    pub name: String,
    /// The published version of `name` (1-64 bytes).
    #[prost(string, tag = "3")]
    pub version: String,
    /// File size (bytes).
    #[prost(uint64, tag = "4")]
    pub size: u64,
    /// Where the bytes can be read when no peer has them: an HTTP(S) URL or a file path.
    #[prost(string, tag = "5")]
    pub origin: String,
    /// Piece size (bytes, a power of two from 16 KiB to 16 MiB).
    #[prost(uint32, tag = "6")]
    pub piece_size: u32,
    /// When it was published (Unix ms); 0 in requests.
    #[prost(uint64, tag = "7")]
    pub published_ms: u64,
    /// Clients holding the complete file (in listings; 0 elsewhere).
    #[prost(uint32, tag = "8")]
    pub complete_holders: u32,
    /// The server holds the file itself and sends it to Central Office clients.
    #[prost(bool, tag = "9")]
    pub server_holds: bool,
}

/// See [`Body::PublishBegin`] and `docs/wire.md` §4.4.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PublishBegin {
    /// The item to publish (checked by [`ContentMeta::validate`]).
    #[prost(message, optional, tag = "1")]
    pub meta: Option<ContentMeta>,
    /// Length of the encoded piece map that the chunks will carry (bytes).
    #[prost(uint32, tag = "2")]
    pub map_len: u32,
}

/// See [`Body::PublishChunk`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct PublishChunk {
    /// The content id (32 bytes) given in [`PublishBegin`].
    #[prost(bytes = "vec", tag = "1")]
    pub content_id: Vec<u8>,
    /// Byte offset of `data` in the encoded piece map (a multiple of 1024).
    #[prost(uint32, tag = "2")]
    pub offset: u32,
    /// The map bytes at `offset`: 1024, or fewer in the last chunk.
    #[prost(bytes = "vec", tag = "3")]
    pub data: Vec<u8>,
}

/// See [`Body::PublishCommit`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct PublishCommit {
    /// The content id (32 bytes) whose piece map is complete.
    #[prost(bytes = "vec", tag = "1")]
    pub content_id: Vec<u8>,
}

/// See [`Body::Published`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct Published {
    /// The content id (32 bytes) the reply is about.
    #[prost(bytes = "vec", tag = "1")]
    pub content_id: Vec<u8>,
    /// False when the same bytes were already published (publishing is idempotent).
    #[prost(bool, tag = "2")]
    pub new_content: bool,
    /// True when the server still needs the piece map chunks (reply to `PublishBegin`).
    #[prost(bool, tag = "3")]
    pub needs_map: bool,
}

/// See [`Body::ListContent`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListContent {
    /// Index of the first item wanted.
    #[prost(uint32, tag = "1")]
    pub offset: u32,
}

/// See [`Body::ContentList`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContentList {
    /// As many items from `offset` as fit in one datagram.
    #[prost(message, repeated, tag = "1")]
    pub items: Vec<ContentMeta>,
    /// Items in the whole catalogue.
    #[prost(uint32, tag = "2")]
    pub total: u32,
}
