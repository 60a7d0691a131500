//! Admin calls: topology, deployments and status, as JSON carried by the `AdminChunk` /
//! `AdminRun` / `AdminPage` small messages (`docs/protocol.md`). The connector uploads a
//! request in chunks, runs it, and reads the result in pages.
//!
//! [`Calls`] is the bounded store of uploads and results (pure, time passed in); the
//! request and result types are shared with the command line, which prints them.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Bytes of request or result data carried by one chunk or page.
pub const CHUNK: usize = 900;
/// Largest admin request (bytes).
pub const MAX_REQUEST: usize = 256 << 10;
/// Largest admin result (bytes).
pub const MAX_RESULT: usize = 16 << 20;
/// Most uploads and most results kept at once.
pub const MAX_CALLS: usize = 32;
/// Uploads and results are forgotten this long after they were last touched (ms).
pub const CALL_TTL_MS: u64 = 120_000;

/// One admin request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum AdminCall {
    /// Replace the declared offices with this TOML file (declarative, idempotent).
    TopologyApply {
        /// The topology file's text (`docs/offices.md`).
        toml: String,
    },
    /// The tree with clients online and RVPs.
    TopologyShow,
    /// Today's tree, automatic offices included, as TOML that `apply` accepts.
    TopologyExport,
    /// Make `target` (all, office:NAME, client:ID) fetch `content` (id or `name[@version]`).
    Deploy {
        /// The content: its id (64 hex digits) or `name[@version]` (the last published
        /// version when none is given).
        content: String,
        /// `all`, `office:NAME` or `client:ID`, parsed by [`crate::deploy::Target`].
        target: String,
        /// `--prestage`: recorded and shown only; Branchline runs no installer, so every
        /// deployment just fills the clients' caches.
        prestage: bool,
    },
    /// Per office: who is done and where the bytes came from.
    Status {
        /// The content: its id (64 hex digits) or `name[@version]`.
        content: String,
    },
    /// Pause a live WAN transfer (its id from `transfers`).
    TransferPause {
        /// The transfer's `transfer_id` in [`TransferView`].
        id: u64,
    },
    /// Resume a paused WAN transfer.
    TransferResume {
        /// The transfer's `transfer_id` in [`TransferView`].
        id: u64,
    },
    /// Every client: office, online, cache, RVP roles.
    Clients,
    /// The published content items.
    Catalogue,
    /// Every deployment with its progress per office, and the bytes saved.
    Deployments,
    /// The WAN transfers each office's link carries now.
    Transfers,
    /// Every client identity: key fingerprint and state (pending, active, revoked).
    ClientList,
    /// Let a pending client enroll (`server.enrollment = "approve"`).
    ClientApprove {
        /// The client's id (32 hex digits).
        id: String,
    },
    /// Forget a client's key binding: its next registration binds the key it brings.
    ClientReset {
        /// The client's id (32 hex digits).
        id: String,
    },
    /// Refuse a client everywhere: at the server and, within one heartbeat interval, at
    /// every peer.
    ClientRevoke {
        /// The client's id (32 hex digits).
        id: String,
    },
    /// Make a new deployment key; the current one stays accepted for the overlap
    /// (seconds; default `server.key_overlap_s`).
    KeyRotate {
        /// How long the current key stays accepted (seconds); `None`:
        /// `server.key_overlap_s`.
        overlap_s: Option<u64>,
    },
    /// The current and previous key and which clients have moved.
    KeyStatus,
}

/// `key status` (and the answer to `key rotate`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyStatusView {
    /// The key in use now: new messages are sealed with it.
    pub current: crate::keys::KeyView,
    /// During an overlap: the key being retired.
    pub previous: Option<crate::keys::KeyView>,
    /// When the previous key stops being accepted (Unix ms); absent without an overlap.
    pub retire_at_ms: Option<u64>,
    /// Where the current key is on the server.
    pub key_file: String,
    /// Clients in the registry (revoked ones are not in it).
    pub clients_total: u64,
    /// Of those, the ones whose last heartbeat is recent enough to count as online.
    pub clients_online: u64,
    /// Clients whose last message was sealed with the current key.
    pub clients_moved: u64,
    /// One row per registered client, sorted by host name, then id.
    pub clients: Vec<ClientKeyView>,
}

/// One client in `key status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientKeyView {
    /// The client's id (32 hex digits).
    pub client_id: String,
    /// The host name the client reported when it registered.
    pub hostname: String,
    /// Whether its heartbeats arrive in time (the registry's missed-heartbeat rule).
    pub online: bool,
    /// Id of the key its last registration or heartbeat was sealed with (absent: not
    /// heard from since the server started).
    pub last_key_id: Option<String>,
    /// True when that is the current key.
    pub moved: bool,
}

/// How a call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailKind {
    /// The request is wrong (the connector exits 2).
    Invalid,
    /// No such content, office, transfer or client (the connector exits 1).
    NotFound,
    /// The server could not do it (the connector exits 1).
    Failed,
}

/// The result of a call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminResult {
    /// The call's answer as JSON: a view of this module or of [`crate::enroll`], or for
    /// `topology export` `{"toml": …}` and for a pause or resume the transfer's id,
    /// office, content id and `paused`.
    Ok(serde_json::Value),
    /// The call failed; `message` says why and what to do.
    Error {
        /// What kind of failure, which sets the connector's exit code.
        kind: FailKind,
        /// For the person at the connector: what went wrong and what to do.
        message: String,
    },
}

impl AdminResult {
    /// An [`FailKind::Invalid`] error: the request is wrong.
    pub fn invalid(message: impl Into<String>) -> AdminResult {
        AdminResult::Error {
            kind: FailKind::Invalid,
            message: message.into(),
        }
    }
    /// A [`FailKind::NotFound`] error: what the request names does not exist.
    pub fn not_found(message: impl Into<String>) -> AdminResult {
        AdminResult::Error {
            kind: FailKind::NotFound,
            message: message.into(),
        }
    }
    /// A [`FailKind::Failed`] error: the server could not carry the call out.
    pub fn failed(message: impl Into<String>) -> AdminResult {
        AdminResult::Error {
            kind: FailKind::Failed,
            message: message.into(),
        }
    }
    /// Encodes `v` as the `ok` answer, or a `failed` error if it cannot be encoded as JSON.
    pub fn ok(v: impl Serialize) -> AdminResult {
        match serde_json::to_value(v) {
            Ok(v) => AdminResult::Ok(v),
            Err(e) => AdminResult::failed(format!("cannot encode the result: {e}")),
        }
    }
}

/// `topology show`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopologyView {
    /// Every office of the tree, declared and automatic, the Central Office first.
    pub offices: Vec<OfficeView>,
}

/// One office in `topology show` (and `/api/topology`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OfficeView {
    /// The office's name (automatic offices: `auto-SUBNET`).
    pub name: String,
    /// Its parent office; `None` only for the Central Office (the root).
    pub parent: Option<String>,
    /// default, wifi or vpn.
    pub kind: String,
    /// Its subnets, in CIDR notation.
    pub subnets: Vec<String>,
    /// True for an automatic office (made for a client in no declared subnet, not stored).
    pub auto: bool,
    /// Clients placed in the office, online or not.
    pub clients_total: u64,
    /// Of those, the ones online now.
    pub clients_online: u64,
    /// Background ceiling of the office's WAN link (bytes/s).
    pub ceiling_bytes_per_s: Option<u64>,
    /// The UTC hours in which Background transfers may use its WAN link (`HH:MM-HH:MM`);
    /// `None`: always.
    pub allowed_hours: Option<String>,
    /// Most contents crossing its WAN link at once (`[office.wan] max_transfers`).
    pub max_transfers: u32,
    /// Current RVPs: (content id, client id).
    pub rvps: Vec<RvpView>,
}

/// One office's RVP for one content item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RvpView {
    /// The content id (64 hex digits).
    pub content_id: String,
    /// The content as `name@version`; empty when it is no longer in the catalogue.
    pub content: String,
    /// The RVP's client id.
    pub client_id: String,
    /// The RVP's host name; empty when the client is no longer in the registry.
    pub hostname: String,
}

/// `deploy`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeployView {
    /// The deployment's id (new or the existing one).
    pub deployment: u64,
    /// The deployed content's id (64 hex digits).
    pub content_id: String,
    /// The deployed content as `name@version`.
    pub content: String,
    /// Who it is for: `all`, `office:NAME` or `client:ID`.
    pub target: String,
    /// Whether `--prestage` was given (recorded and shown only: every deployment fills the
    /// caches).
    pub prestage: bool,
    /// False when the same deployment existed already.
    pub new: bool,
    /// Targeted clients known now.
    pub clients: u64,
}

/// `status CONTENT`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    /// The content id (64 hex digits).
    pub content_id: String,
    /// The content as `name@version`.
    pub content: String,
    /// The content's size in bytes (0 if it is no longer in the catalogue).
    pub size: u64,
    /// One row per office that has targeted or holding clients, or received bytes of it.
    pub offices: Vec<OfficeStatus>,
}

/// One office's row in `status CONTENT`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OfficeStatus {
    /// The office's name.
    pub office: String,
    /// Its parent office; `None` for the Central Office.
    pub parent: Option<String>,
    /// Targeted (or holding) clients of the office that hold the content complete.
    pub clients_done: u64,
    /// Clients of the office counted: targeted by a deployment of the content, holding it
    /// complete, or having received bytes of it.
    pub clients_total: u64,
    /// The office's RVP for the content as `HOST (ID)`, if one is elected.
    pub rvp: Option<String>,
    /// Verified bytes the office's clients read from the origin.
    pub bytes_origin: u64,
    /// Verified bytes the office's clients received from the server's own content cache.
    pub bytes_server: u64,
    /// Over the office's WAN link into it.
    pub bytes_wan_in: u64,
    /// Over child offices' links out of it.
    pub bytes_wan_out: u64,
    /// Verified bytes the office's clients received from peers in the same office.
    pub bytes_lan: u64,
}

/// `clients`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientsView {
    /// Every client in the registry.
    pub clients: Vec<ClientView>,
}

/// One client in `clients` (and `/api/clients`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientView {
    /// The client's id (32 hex digits).
    pub client_id: String,
    /// The host name it reported at registration.
    pub hostname: String,
    /// The address the server sees it at.
    pub address: Option<String>,
    /// The office it is placed in; `None` before it is placed.
    pub office: Option<String>,
    /// Whether its heartbeats arrive in time.
    pub online: bool,
    /// Its last heartbeat or registration (Unix ms).
    pub last_seen_ms: u64,
    /// Its first registration (Unix ms).
    pub first_seen_ms: u64,
    /// Size of its content cache (bytes), as it last reported.
    pub cache_size_bytes: u64,
    /// Free space in its content cache (bytes), as it last reported.
    pub cache_free_bytes: u64,
    /// The Branchline version it reported.
    pub version: String,
    /// Content items (name@version) it is its office's RVP for.
    pub rvp_for: Vec<String>,
    /// Content items it holds complete.
    pub complete: u64,
}

/// `catalogue`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CatalogueView {
    /// Every published content item.
    pub items: Vec<CatalogueItem>,
}

/// One published content item in `catalogue` (and `/api/catalogue`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CatalogueItem {
    /// The content id: BLAKE3 of the whole file (64 hex digits).
    pub content_id: String,
    /// The name it was published under.
    pub name: String,
    /// The version it was published under.
    pub version: String,
    /// File size (bytes).
    pub size: u64,
    /// Where clients read it when no peer has it: an HTTP(S) URL or a file path.
    pub origin: String,
    /// Piece size (bytes, a power of two).
    pub piece_size: u32,
    /// When it was published (Unix ms).
    pub published_ms: u64,
    /// Clients holding it complete.
    pub complete_holders: u64,
    /// True when the server's own content cache holds it complete.
    pub server_holds: bool,
}

/// `deployments`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploymentsView {
    /// Every deployment, oldest first.
    pub deployments: Vec<DeploymentStatus>,
    /// Over every content item (deployed or fetched with `get`).
    pub savings: Savings,
}

/// One deployment in `deployments` (and `/api/deployments`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploymentStatus {
    /// The deployment's id.
    pub deployment: u64,
    /// Who it is for: `all`, `office:NAME` or `client:ID`.
    pub target: String,
    /// Whether `--prestage` was given (recorded and shown only).
    pub prestage: bool,
    /// When it was made (Unix ms).
    pub created_ms: u64,
    /// Targeted clients known now, and those of them holding the content complete.
    pub clients_done: u64,
    /// Of those, the ones holding it complete.
    pub clients_total: u64,
    /// The content's status (the same as `status CONTENT`).
    pub status: StatusView,
}

/// Where the delivered bytes came from, and what that saved against every client
/// reading the origin.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Savings {
    /// Verified bytes delivered to clients (every source).
    pub delivered_bytes: u64,
    /// Of those, bytes read from the origin.
    pub origin_bytes: u64,
    /// Of those, bytes from the server's content cache.
    pub server_bytes: u64,
    /// Of those, bytes that crossed a WAN link into an office (from a peer in an ancestor
    /// office).
    pub wan_bytes: u64,
    /// Of those, bytes from peers in the same office.
    pub lan_bytes: u64,
    /// Bytes the origin did not serve: delivered minus read from the origin.
    pub origin_saved_bytes: u64,
    /// Bytes that did not cross WAN links: what the clients outside the Central Office
    /// received minus what crossed their offices' links and what they read from the
    /// origin.
    pub wan_saved_bytes: u64,
}

/// `transfers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransfersView {
    /// One row per (office, content) that an office's WAN link carries now.
    pub transfers: Vec<TransferView>,
}

/// One WAN transfer in `transfers` (and `/api/transfers`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransferView {
    /// The office whose link carries it (into the office, from `parent`).
    pub office: String,
    /// The parent office the link leads to; `None` only for the Central Office.
    pub parent: Option<String>,
    /// The content id (64 hex digits).
    pub content_id: String,
    /// The content as `name@version` (the id when it is no longer in the catalogue).
    pub content: String,
    /// The content's size in bytes (0 if it is no longer in the catalogue).
    pub size: u64,
    /// The office's RVP for it: "HOST (ID)".
    pub rvp: Option<String>,
    /// Bytes the office has taken over its link for this content so far.
    pub bytes_wan_in: u64,
    /// The server's id for the transfer (from the RVP's control signals), for
    /// `connector transfer pause|resume ID`; absent until the RVP has signalled.
    #[serde(default)]
    pub transfer_id: Option<u64>,
    /// `paused` (by an admin) or `running`. Contents waiting for a turn on the link are
    /// not listed at all.
    #[serde(default)]
    pub state: String,
    /// The receive rate the RVP last signalled (bytes/s).
    #[serde(default)]
    pub signalled_rate_bytes_per_s: u64,
    /// The sending clients (ids) the RVP pulls from.
    #[serde(default)]
    pub senders: Vec<String>,
}

#[derive(Debug)]
struct Upload {
    total: usize,
    data: Vec<u8>,
    got: Vec<bool>,
    touched_ms: u64,
}

#[derive(Debug)]
struct Stored {
    data: Vec<u8>,
    touched_ms: u64,
}

/// Why a chunk or run was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    /// The declared length of the request (`AdminChunk.total_len`) is over [`MAX_REQUEST`].
    #[error("admin request of {0} bytes; at most {MAX_REQUEST}")]
    TooLarge(usize),
    /// A chunk's offset or length breaks the chunking rules (`docs/wire.md` §4.4), or its
    /// `total_len` differs from the upload's.
    #[error("admin chunk at offset {offset} of {len} bytes does not fit a request of {total}")]
    BadChunk {
        /// The chunk's `offset`.
        offset: usize,
        /// The chunk's data length.
        len: usize,
        /// The `total_len` it came with.
        total: usize,
    },
    /// [`MAX_CALLS`] uploads are held already; the connector should retry later.
    #[error("the server is busy with {MAX_CALLS} admin calls; try again shortly")]
    Busy,
    /// `AdminRun` for a call with no upload and no stored result (`NOT_FOUND` on the wire).
    #[error("no such admin call (its upload expired or never completed); run it again")]
    Unknown,
    /// `AdminRun` before every chunk of the upload arrived (`NOT_FOUND` on the wire).
    #[error("the admin request has missing chunks")]
    Incomplete,
}

/// What `run` found.
#[derive(Debug, PartialEq)]
pub enum Run {
    /// The result is stored: here is the page.
    /// The result is stored: here is the page.
    Page {
        /// Length of the whole stored result (bytes), `AdminPage.total_len`.
        total_len: u32,
        /// Up to [`CHUNK`] bytes of the result from the requested offset (empty past its
        /// end).
        data: Vec<u8>,
    },
    /// Not run yet: here is the request.
    Execute(Vec<u8>),
}

/// Uploads and results, bounded in count, size and time.
#[derive(Debug, Default)]
pub struct Calls {
    uploads: HashMap<u64, Upload>,
    results: HashMap<u64, Stored>,
}

impl Calls {
    fn expire(&mut self, now_ms: u64) {
        self.uploads
            .retain(|_, u| now_ms.saturating_sub(u.touched_ms) < CALL_TTL_MS);
        self.results
            .retain(|_, r| now_ms.saturating_sub(r.touched_ms) < CALL_TTL_MS);
    }

    /// Stores one chunk (idempotent).
    pub fn chunk(
        &mut self,
        call: u64,
        total: usize,
        offset: usize,
        data: &[u8],
        now_ms: u64,
    ) -> Result<(), CallError> {
        self.expire(now_ms);
        if self.results.contains_key(&call) {
            return Ok(());
        }
        if total > MAX_REQUEST {
            return Err(CallError::TooLarge(total));
        }
        let chunks = total.div_ceil(CHUNK);
        let bad = CallError::BadChunk {
            offset,
            len: data.len(),
            total,
        };
        if !offset.is_multiple_of(CHUNK) || offset >= total.max(1) {
            return Err(bad);
        }
        let want = CHUNK.min(total - offset);
        if data.len() != want {
            return Err(bad);
        }
        if !self.uploads.contains_key(&call) && self.uploads.len() >= MAX_CALLS {
            return Err(CallError::Busy);
        }
        let u = self.uploads.entry(call).or_insert_with(|| Upload {
            total,
            data: vec![0; total],
            got: vec![false; chunks],
            touched_ms: now_ms,
        });
        if u.total != total {
            return Err(bad);
        }
        u.data[offset..offset + want].copy_from_slice(data);
        u.got[offset / CHUNK] = true;
        u.touched_ms = now_ms;
        Ok(())
    }

    /// The stored result's page at `offset`, or the complete request to execute.
    pub fn run(&mut self, call: u64, offset: usize, now_ms: u64) -> Result<Run, CallError> {
        self.expire(now_ms);
        if let Some(r) = self.results.get_mut(&call) {
            r.touched_ms = now_ms;
            let start = offset.min(r.data.len());
            let end = (start + CHUNK).min(r.data.len());
            return Ok(Run::Page {
                total_len: r.data.len() as u32,
                data: r.data[start..end].to_vec(),
            });
        }
        let u = self.uploads.get(&call).ok_or(CallError::Unknown)?;
        if !u.got.iter().all(|g| *g) {
            return Err(CallError::Incomplete);
        }
        let u = self.uploads.remove(&call).ok_or(CallError::Unknown)?;
        Ok(Run::Execute(u.data))
    }

    /// Stores a call's result (truncated results are replaced by an error).
    pub fn finish(&mut self, call: u64, result: &AdminResult, now_ms: u64) {
        let mut data = serde_json::to_vec(result).unwrap_or_default();
        if data.len() > MAX_RESULT {
            data = serde_json::to_vec(&AdminResult::failed(format!(
                "the result is larger than {MAX_RESULT} bytes"
            )))
            .unwrap_or_default();
        }
        if self.results.len() >= MAX_CALLS {
            // Drop the oldest result; its connector has had its chance.
            if let Some(oldest) = self
                .results
                .iter()
                .min_by_key(|(_, r)| r.touched_ms)
                .map(|(k, _)| *k)
            {
                self.results.remove(&oldest);
            }
        }
        self.results.insert(
            call,
            Stored {
                data,
                touched_ms: now_ms,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_run_and_page() {
        let mut c = Calls::default();
        let req = vec![7u8; CHUNK * 2 + 10];
        assert_eq!(c.run(1, 0, 0), Err(CallError::Unknown));
        for off in (0..req.len()).step_by(CHUNK) {
            let end = (off + CHUNK).min(req.len());
            if off > 0 {
                assert_eq!(c.run(1, 0, 0), Err(CallError::Incomplete));
            }
            c.chunk(1, req.len(), off, &req[off..end], 0).unwrap();
            // A retransmitted chunk is harmless.
            c.chunk(1, req.len(), off, &req[off..end], 0).unwrap();
        }
        assert_eq!(c.run(1, 0, 1).unwrap(), Run::Execute(req));
        let result = AdminResult::ok(vec!["x".repeat(2000)]);
        c.finish(1, &result, 2);
        let mut got = Vec::new();
        loop {
            let Run::Page { total_len, data } = c.run(1, got.len(), 3).unwrap() else {
                panic!("stored result expected");
            };
            got.extend(data);
            if got.len() >= total_len as usize {
                break;
            }
        }
        assert_eq!(serde_json::from_slice::<AdminResult>(&got).unwrap(), result);
    }

    #[test]
    fn bounds_and_bad_chunks() {
        let mut c = Calls::default();
        assert_eq!(
            c.chunk(1, MAX_REQUEST + 1, 0, &[0; CHUNK], 0),
            Err(CallError::TooLarge(MAX_REQUEST + 1))
        );
        assert!(c.chunk(1, 2000, 5, &[0; CHUNK], 0).is_err(), "misaligned");
        assert!(c.chunk(1, 2000, 0, &[0; 10], 0).is_err(), "short");
        for call in 0..MAX_CALLS as u64 {
            c.chunk(call, 10, 0, &[0; 10], 0).unwrap();
        }
        assert_eq!(c.chunk(999, 10, 0, &[0; 10], 0), Err(CallError::Busy));
        // Uploads expire.
        c.chunk(999, 10, 0, &[0; 10], CALL_TTL_MS).unwrap();
        assert_eq!(c.run(5, 0, CALL_TTL_MS), Err(CallError::Unknown));
    }
}
