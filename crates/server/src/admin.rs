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
    TopologyApply { toml: String },
    /// The tree with clients online and RVPs.
    TopologyShow,
    /// Today's tree, automatic offices included, as TOML that `apply` accepts.
    TopologyExport,
    /// Make `target` (all, office:NAME, client:ID) fetch `content` (id or name[@version]).
    Deploy {
        content: String,
        target: String,
        prestage: bool,
    },
    /// Per office: who is done and where the bytes came from.
    Status { content: String },
    /// Pause a live WAN transfer (its id from `transfers`).
    TransferPause { id: u64 },
    /// Resume a paused WAN transfer.
    TransferResume { id: u64 },
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
    ClientApprove { id: String },
    /// Forget a client's key binding: its next registration binds the key it brings.
    ClientReset { id: String },
    /// Refuse a client everywhere: at the server and, within one heartbeat interval, at
    /// every peer.
    ClientRevoke { id: String },
    /// Make a new deployment key; the current one stays accepted for the overlap
    /// (seconds; default `server.key_overlap_s`).
    KeyRotate { overlap_s: Option<u64> },
    /// The current and previous key and which clients have moved.
    KeyStatus,
}

/// `key status` (and the answer to `key rotate`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyStatusView {
    pub current: crate::keys::KeyView,
    /// During an overlap: the key being retired.
    pub previous: Option<crate::keys::KeyView>,
    /// When the previous key stops being accepted (Unix ms); absent without an overlap.
    pub retire_at_ms: Option<u64>,
    /// Where the current key is on the server.
    pub key_file: String,
    pub clients_total: u64,
    pub clients_online: u64,
    /// Clients whose last message was sealed with the current key.
    pub clients_moved: u64,
    pub clients: Vec<ClientKeyView>,
}

/// One client in `key status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientKeyView {
    pub client_id: String,
    pub hostname: String,
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
    NotFound,
    /// The server could not do it (the connector exits 1).
    Failed,
}

/// The result of a call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminResult {
    Ok(serde_json::Value),
    Error { kind: FailKind, message: String },
}

impl AdminResult {
    pub fn invalid(message: impl Into<String>) -> AdminResult {
        AdminResult::Error {
            kind: FailKind::Invalid,
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> AdminResult {
        AdminResult::Error {
            kind: FailKind::NotFound,
            message: message.into(),
        }
    }
    pub fn failed(message: impl Into<String>) -> AdminResult {
        AdminResult::Error {
            kind: FailKind::Failed,
            message: message.into(),
        }
    }
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
    pub offices: Vec<OfficeView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OfficeView {
    pub name: String,
    pub parent: Option<String>,
    /// default, wifi or vpn.
    pub kind: String,
    pub subnets: Vec<String>,
    pub auto: bool,
    pub clients_total: u64,
    pub clients_online: u64,
    /// Background ceiling of the office's WAN link (bytes/s).
    pub ceiling_bytes_per_s: Option<u64>,
    pub allowed_hours: Option<String>,
    pub max_transfers: u32,
    /// Current RVPs: (content id, client id).
    pub rvps: Vec<RvpView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RvpView {
    pub content_id: String,
    pub content: String,
    pub client_id: String,
    pub hostname: String,
}

/// `deploy`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeployView {
    pub deployment: u64,
    pub content_id: String,
    pub content: String,
    pub target: String,
    pub prestage: bool,
    /// False when the same deployment existed already.
    pub new: bool,
    /// Targeted clients known now.
    pub clients: u64,
}

/// `status CONTENT`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub content_id: String,
    pub content: String,
    pub size: u64,
    pub offices: Vec<OfficeStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OfficeStatus {
    pub office: String,
    pub parent: Option<String>,
    /// Targeted (or holding) clients of the office that hold the content complete.
    pub clients_done: u64,
    pub clients_total: u64,
    pub rvp: Option<String>,
    pub bytes_origin: u64,
    pub bytes_server: u64,
    /// Over the office's WAN link into it.
    pub bytes_wan_in: u64,
    /// Over child offices' links out of it.
    pub bytes_wan_out: u64,
    pub bytes_lan: u64,
}

/// `clients`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientsView {
    pub clients: Vec<ClientView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientView {
    pub client_id: String,
    pub hostname: String,
    /// The address the server sees it at.
    pub address: Option<String>,
    pub office: Option<String>,
    pub online: bool,
    pub last_seen_ms: u64,
    pub first_seen_ms: u64,
    pub cache_size_bytes: u64,
    pub cache_free_bytes: u64,
    pub version: String,
    /// Content items (name@version) it is its office's RVP for.
    pub rvp_for: Vec<String>,
    /// Content items it holds complete.
    pub complete: u64,
}

/// `catalogue`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CatalogueView {
    pub items: Vec<CatalogueItem>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CatalogueItem {
    pub content_id: String,
    pub name: String,
    pub version: String,
    pub size: u64,
    pub origin: String,
    pub piece_size: u32,
    pub published_ms: u64,
    /// Clients holding it complete.
    pub complete_holders: u64,
    pub server_holds: bool,
}

/// `deployments`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploymentsView {
    pub deployments: Vec<DeploymentStatus>,
    /// Over every content item (deployed or fetched with `get`).
    pub savings: Savings,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploymentStatus {
    pub deployment: u64,
    pub target: String,
    pub prestage: bool,
    pub created_ms: u64,
    /// Targeted clients known now, and those of them holding the content complete.
    pub clients_done: u64,
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
    pub origin_bytes: u64,
    pub server_bytes: u64,
    pub wan_bytes: u64,
    pub lan_bytes: u64,
    /// Bytes the origin did not serve: delivered minus read from the origin.
    pub origin_saved_bytes: u64,
    /// Bytes that did not cross WAN links: what the clients outside the Central Office
    /// received minus what crossed their offices' links.
    pub wan_saved_bytes: u64,
}

/// `transfers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransfersView {
    pub transfers: Vec<TransferView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransferView {
    /// The office whose link carries it (into the office, from `parent`).
    pub office: String,
    pub parent: Option<String>,
    pub content_id: String,
    pub content: String,
    pub size: u64,
    /// The office's RVP for it: "HOST (ID)".
    pub rvp: Option<String>,
    /// Bytes the office has taken over its link for this content so far.
    pub bytes_wan_in: u64,
    /// The server's id for the transfer (from the RVP's control signals), for
    /// `connector transfer pause|resume ID`; absent until the RVP has signalled.
    #[serde(default)]
    pub transfer_id: Option<u64>,
    /// running, paused (by an admin) or queued (the link carries other transfers).
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
    #[error("admin request of {0} bytes; at most {MAX_REQUEST}")]
    TooLarge(usize),
    #[error("admin chunk at offset {offset} of {len} bytes does not fit a request of {total}")]
    BadChunk {
        offset: usize,
        len: usize,
        total: usize,
    },
    #[error("the server is busy with {MAX_CALLS} admin calls; try again shortly")]
    Busy,
    #[error("no such admin call (its upload expired or never completed); run it again")]
    Unknown,
    #[error("the admin request has missing chunks")]
    Incomplete,
}

/// What `run` found.
#[derive(Debug, PartialEq)]
pub enum Run {
    /// The result is stored: here is the page.
    Page { total_len: u32, data: Vec<u8> },
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
