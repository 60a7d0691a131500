//! Downloading one content item into the cache: the I/O shell around
//! `branchline-sched`'s scheduler.
//!
//! 1. Ask the server for the catalogue entry and piece map (verified against the id).
//! 2. Start (or resume) the item in the cache: verified pieces already there are kept.
//! 3. Ask the server where the pieces are (after 1 s, then at doubling gaps up to 10 s):
//!    same-office peers, and for the office's RVP the way out of the office (parent
//!    office peers, the origin, the server's copy) with the link's policy. Ask each peer
//!    what it holds every 500 ms (have queries). Feed that to the scheduler.
//! 4. Fetch what the scheduler hands out: pieces from office peers over QUIC
//!    (Foreground, 34760), from parent-office peers over Background (34750, LEDBAT++;
//!    the RVP only, under the link's ceiling and in its allowed hours), from the origin
//!    by HTTP range or file read. Every piece is verified against the piece map before it
//!    is written; a peer that sends a bad piece is dropped for this content and reported.
//! 5. Report what this client holds as it grows (every 3 s, with bytes by source kind),
//!    and once more when complete.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use branchline_origin::Origin;
use branchline_quic::{ClientName, ContentError, PieceRequest, PieceSink, Role, fetch_piece};
use branchline_sched::{
    Failure, Have, PieceSet, SchedConfig, Scheduler, SourceId, SourceKind, Verdict,
};
use branchline_store::{BatchOutcome, ContentId, PieceMap, StoreError, VerifiedPiece};
/// The scheduler group of every upstream source: they share the office's WAN link.
const WAN_GROUP: GroupId = GroupId(1);
/// How often bytes of pieces still streaming over the WAN are reported to the scheduler.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

use branchline_sched::GroupId;
use branchline_wire::large::{
    GetContent, Locate, Locations, PeerHolding, ReportBadPeer, ReportHave, Request, Response,
    SendContent, SourceBytes,
};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

use crate::adaptive::PROGRESS_EVERY as SIGNAL_EVERY;
use crate::discovery::Found;
use crate::services::{ServerCallError, Services, now_ms};
use branchline_wire::msg::SignalKind;

/// The server is asked where the pieces are after 1 s, then less and less often, up to
/// every [`LOCATE_MAX`]: what peers hold is asked of the peers themselves
/// ([`HAVE_EVERY`]), so the server's load does not grow with every downloader.
const LOCATE_EVERY: Duration = Duration::from_secs(1);
/// Longest gap between two locates once sources are known.
const LOCATE_MAX: Duration = Duration::from_secs(10);
/// Most office peers a download keeps (from the server and the subnet together).
const MAX_FOUND_PEERS: usize = 64;
/// How often a downloading client asks its subnet who holds the content (besides the
/// server's answers; at once when the server does not answer).
const DISCOVER_EVERY: Duration = Duration::from_secs(15);
/// How often each peer is asked what it holds (a have query on its content port).
const HAVE_EVERY: Duration = Duration::from_millis(500);
/// Most have queries in flight at once.
const MAX_HAVE_QUERIES: usize = 16;
/// How long to wait for the server's catalogue entry when the cache holds the item's
/// piece map already (then the download goes on without the server).
const CACHED_MAP_WAIT: Duration = Duration::from_secs(5);
/// Longest wait for the final have report when a download ends.
const FINAL_REPORT_WAIT: Duration = Duration::from_secs(5);
/// How often a growing have-set is reported to the server.
const REPORT_EVERY: Duration = Duration::from_secs(3);
/// A download with no new piece for this long fails (no source has what is missing).
const STALL_LIMIT: Duration = Duration::from_secs(120);
/// Most bytes of verified pieces waiting for the disk (being written, or queued for the
/// next group commit). Pieces are written by one writer beside the download loop, so the
/// network and the disk work at once; beyond this no new request is issued, so a disk
/// slower than the network holds the download back instead of filling memory.
const MAX_UNWRITTEN_BYTES: u64 = 64 << 20;
/// Wait before retrying after the disk filled up.
const DISK_FULL_RETRY: Duration = Duration::from_secs(5);

/// What to download: a content id, or `name[@version]` (latest version when omitted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A content id (parsed from 64 hex digits).
    Id(ContentId),
    /// A published name, resolved by the server.
    Name {
        /// The published name (the text before `@`).
        name: String,
        /// The version (after `@`); `None` for the latest published.
        version: Option<String>,
    },
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
            return ContentId::from_str(s)
                .map(Target::Id)
                .map_err(|e| e.to_string());
        }
        let (name, version) = match s.split_once('@') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (s, None),
        };
        if name.is_empty() || version.as_deref() == Some("") {
            return Err(format!(
                "{s:?} is neither a content id (64 hex digits) nor name[@version]"
            ));
        }
        Ok(Target::Name {
            name: name.to_owned(),
            version,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Id(id) => write!(f, "{id}"),
            Target::Name {
                name,
                version: None,
            } => write!(f, "{name}"),
            Target::Name {
                name,
                version: Some(v),
            } => write!(f, "{name}@{v}"),
        }
    }
}

/// Progress of a download, for `branchline get`'s progress bar.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct DownloadProgress {
    /// The content id (64 hex digits).
    pub content_id: String,
    /// `name@version` from the catalogue, or the content id when the server is
    /// unreachable and the download goes on from the cached piece map.
    pub name: String,
    /// File size (bytes).
    pub size: u64,
    /// Verified bytes in the cache.
    pub have_bytes: u64,
    /// Pieces in the item.
    pub pieces: u32,
    /// Verified pieces in the cache.
    pub have_pieces: u32,
    /// Sources delivering now (peers and the origin).
    pub sources: u32,
    /// True while this client reads the origin.
    pub reading_origin: bool,
    /// Why the download waits, while it does (e.g. "disk full", "paused by an admin").
    pub paused: Option<String>,
}

/// A finished download.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Downloaded {
    /// The content id (64 hex digits).
    pub content_id: String,
    /// File size (bytes).
    pub size: u64,
    /// The verified file in the cache (do not modify it).
    pub path: PathBuf,
    /// Verified bytes this download fetched from same-office peers. Pieces already in
    /// the cache when it started count under no source.
    pub from_peers: u64,
    /// Verified bytes this download read from the origin.
    pub from_origin: u64,
    /// Verified bytes the server sent from its own copy.
    pub from_server: u64,
    /// Verified bytes fetched over the office's WAN link from the parent office.
    pub from_wan: u64,
    /// The office the server placed this client in (empty if it never said).
    pub office: String,
    /// This client was the office's RVP for the item at its last locate.
    pub rvp: bool,
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// A large request to the server failed or was refused (e.g. `NotFound`: no such
    /// content in the catalogue).
    #[error("{0}")]
    Server(#[from] ServerCallError),
    /// The piece map the server sent does not hash to the content id, or does not fit
    /// the catalogue's size: nothing is fetched with it.
    #[error("the server's piece map for {id} does not match the content id: {source}")]
    BadMap {
        /// The content id (64 hex digits).
        id: String,
        /// What the check found.
        #[source]
        source: branchline_store::MapError,
    },
    /// The server answered the named request with another kind of answer, or without
    /// its catalogue entry.
    #[error("the server sent an unexpected answer to {0}")]
    Unexpected(&'static str),
    /// The content cache failed (disk error, or it cannot hold the item).
    #[error("content cache: {0}")]
    Store(#[from] StoreError),
    /// The origin the server named is not a usable URL or file path.
    #[error("the origin {origin} cannot be read: {source}")]
    Origin {
        /// The origin as the server sent it.
        origin: String,
        /// Why it was refused.
        #[source]
        source: branchline_origin::OriginError,
    },
    /// No new piece for `secs` seconds while the WAN link was open: no source has what
    /// is missing. Getting the item again resumes from the verified pieces.
    #[error("no progress for {secs} s: {why}")]
    Stalled {
        /// The stall limit (seconds).
        secs: u64,
        /// The scheduler's diagnosis (which pieces nobody offers, and why).
        why: String,
    },
    /// A task of the download (cache I/O, locating sources) panicked or was cancelled.
    #[error("a download task ({what}) stopped before it finished: {source}")]
    Task {
        /// Which task.
        what: &'static str,
        /// How it ended.
        #[source]
        source: tokio::task::JoinError,
    },
    /// The piece scheduler refused an event: a bug in the download's bookkeeping.
    #[error("the piece scheduler refused {what}: {source}")]
    Sched {
        /// The event refused.
        what: &'static str,
        /// The scheduler's reason.
        #[source]
        source: branchline_sched::SchedError,
    },
    /// The content finished, but the cache cannot hand out its file.
    #[error("content {id} finished downloading, but {why}; get it again")]
    NotInCache {
        /// The content id (64 hex digits).
        id: String,
        /// Why the cache cannot give the file.
        why: &'static str,
    },
}

enum SourceInfo {
    /// A same-office peer (Foreground, its 34760).
    Peer {
        client: String,
        addr: SocketAddr,
    },
    /// A parent-office peer (Background, its 34750): only the office's RVP has these.
    Upstream {
        client: String,
        addr: SocketAddr,
    },
    Origin(Origin),
    /// The server, over the connection it opened to this client's content port.
    Server,
}

struct Fetched {
    source: SourceId,
    piece: u32,
    /// The piece, verified against the map as it arrived, or why there is none (a piece
    /// that fails verification is [`Failure::BadPiece`]).
    result: Result<VerifiedPiece, Failure>,
}

/// A write of verified pieces on the blocking pool: the pieces, and what the cache did.
type Writing = JoinHandle<(Vec<VerifiedPiece>, Result<BatchOutcome, StoreError>)>;

/// Checks a fetched piece against the content's map, on the blocking pool (hashing a
/// piece takes long enough to hold up the runtime), as soon as it arrives: every piece is
/// verified before it is written, and the writer does not hash it again.
async fn verified(
    map: Arc<PieceMap>,
    piece: u32,
    fetched: Result<Bytes, Failure>,
) -> Result<VerifiedPiece, Failure> {
    let bytes = fetched?;
    match tokio::task::spawn_blocking(move || map.verify_shared(piece, bytes)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::debug!(piece, error = %e, "a fetched piece failed verification");
            Err(Failure::BadPiece)
        }
        Err(e) => {
            tracing::warn!(piece, error = %e, "verifying a fetched piece failed");
            Err(Failure::Local)
        }
    }
}

/// Downloads `target` into the cache, publishing progress on `progress`.
pub async fn download(
    svc: Arc<Services>,
    target: Target,
    seed: u64,
    progress: watch::Sender<DownloadProgress>,
) -> Result<Downloaded, DownloadError> {
    let (content_id, name, version) = match &target {
        Target::Id(id) => (id.as_bytes().to_vec(), String::new(), String::new()),
        Target::Name { name, version } => (
            Vec::new(),
            name.clone(),
            version.clone().unwrap_or_default(),
        ),
    };
    let ask = svc.call(Request::GetContent(GetContent {
        content_id,
        name,
        version,
    }));
    // With the piece map in the cache, an unreachable server need not be waited for long.
    let cached = matches!(&target, Target::Id(id) if svc.cache.piece_map(id).is_some());
    let answer = if cached {
        match tokio::time::timeout(CACHED_MAP_WAIT, ask).await {
            Ok(a) => a,
            Err(_) => Err(ServerCallError::Exchange(format!(
                "no answer within {} s",
                CACHED_MAP_WAIT.as_secs()
            ))),
        }
    } else {
        ask.await
    };
    let (id, map, label, origin_text) = match answer {
        Ok(Response::Content(info)) => {
            let meta = info.meta.ok_or(DownloadError::Unexpected("GetContent"))?;
            let id = ContentId::from_bytes(
                meta.content_id
                    .as_slice()
                    .try_into()
                    .map_err(|_| DownloadError::Unexpected("GetContent"))?,
            );
            let map = PieceMap::decode(&info.piece_map, &id, meta.size).map_err(|source| {
                DownloadError::BadMap {
                    id: id.to_hex(),
                    source,
                }
            })?;
            (
                id,
                Arc::new(map),
                format!("{}@{}", meta.name, meta.version),
                meta.origin,
            )
        }
        Ok(_) => return Err(DownloadError::Unexpected("GetContent")),
        Err(e @ (ServerCallError::Connect { .. } | ServerCallError::Exchange(_))) => {
            // The server is unreachable. An item this client has started keeps its
            // verified piece map in the cache, so it can finish it from office peers
            // (found on the subnet); nothing is read from the origin without the server.
            let Target::Id(id) = &target else {
                return Err(e.into());
            };
            let Some(map) = svc.cache.piece_map(id) else {
                return Err(e.into());
            };
            tracing::warn!(content = %id, error = %e, "the server is unreachable; going on from the cached piece map");
            (*id, map, id.to_hex(), String::new())
        }
        Err(e) => return Err(e.into()),
    };
    // One download per content item: a `get` and a deployment wait for each other, and
    // the second finds the item complete.
    let lock = svc.download_lock(id);
    let _one = lock.lock().await;
    let _running = crate::metrics::Running::start(&svc.metrics.downloads);
    let cache = svc.cache.clone();
    let status = {
        let (cache, map) = (cache.clone(), (*map).clone());
        tokio::task::spawn_blocking(move || cache.begin(map, now_ms()))
            .await
            .map_err(|source| DownloadError::Task {
                what: "opening the content in the cache",
                source,
            })??
    };
    let mut dl = Download {
        svc: svc.clone(),
        id,
        map: map.clone(),
        origin_text,
        progress,
        sources: HashMap::new(),
        peers: HashMap::new(),
        upstream: HashMap::new(),
        next_source: 1,
        origin_source: None,
        in_flight: HashMap::new(),
        streamed: HashMap::new(),
        partials: HashMap::new(),
        assembled: Default::default(),
        from_peers: 0,
        served_by: Default::default(),
        from_origin: 0,
        from_server: 0,
        from_wan: 0,
        server_source: None,
        have_dirty: false,
        office: String::new(),
        am_rvp: false,
        link_open: true,
        ceiling: 0,
        budget: Budget::default(),
        locates: 0,
        reporting: None,
        signalled: false,
        signal_addrs: HashMap::new(),
        admin_paused: false,
        last_control: None,
        locate_sent: Instant::now(),
        wan_at_signal: (Instant::now(), 0),
        link_change: None,
        whole: Default::default(),
        unwritten: Vec::new(),
        unwritten_bytes: 0,
        durable: (0, 0),
    };
    dl.progress.send_modify(|p| {
        p.content_id = id.to_hex();
        p.name = label;
        p.size = map.size();
        p.pieces = map.piece_count();
    });
    if !status.complete {
        let have: Vec<u32> = cache
            .have(&id)
            .map(|b| b.present().collect())
            .unwrap_or_default();
        dl.durable = (
            have.len() as u32,
            have.iter()
                .filter_map(|&i| map.piece_range(i))
                .map(|(_, len)| u64::from(len))
                .sum(),
        );
        let mut config = SchedConfig::new(u64::from(map.piece_size().bytes()));
        config.seed = seed;
        let sched = Scheduler::new(map.piece_count(), have, config).map_err(|source| {
            DownloadError::Sched {
                what: "the download's piece count",
                source,
            }
        })?;
        // The download's lines carry the content id and, once the server said, the office.
        let span = tracing::info_span!("download", content = %id, office = tracing::field::Empty);
        tracing::Instrument::instrument(dl.run(sched), span).await?;
    }
    dl.report_have(true).await;
    let complete = {
        let cache = cache.clone();
        tokio::task::spawn_blocking(move || cache.open_complete(&id, now_ms()))
            .await
            .map_err(|source| DownloadError::Task {
                what: "opening the finished file",
                source,
            })??
    };
    let complete = complete.ok_or_else(|| DownloadError::NotInCache {
        id: id.to_hex(),
        why: "the cache no longer holds it (evicted or removed meanwhile)",
    })?;
    let path = complete.path.ok_or_else(|| DownloadError::NotInCache {
        id: id.to_hex(),
        why: "the cache keeps it in memory, not in a file",
    })?;
    Ok(Downloaded {
        content_id: id.to_hex(),
        size: complete.size,
        path,
        from_peers: dl.from_peers,
        from_origin: dl.from_origin,
        from_server: dl.from_server,
        from_wan: dl.from_wan,
        office: dl.office.clone(),
        rvp: dl.am_rvp,
    })
}

/// A WAN piece fetch in flight: where its bytes go, how many the scheduler was told
/// about, and the prefix an earlier abandoned fetch left (asked only for the rest).
struct Streamed {
    sink: Arc<PieceSink>,
    told: u64,
    prefix: Option<Bytes>,
}

/// Most abandoned WAN piece prefixes kept.
const MAX_PARTIALS: usize = 64;

/// A token bucket that keeps what the RVP pulls over its office's WAN link under the
/// link's ceiling: a request is issued only when the bucket holds the piece's bytes.
#[derive(Debug, Default)]
struct Budget {
    tokens: f64,
    last: Option<Instant>,
}

impl Budget {
    /// Refills at `rate` bytes/s (at most one second's worth) and takes `bytes` if there.
    fn take(&mut self, rate: u64, bytes: u64, now: Instant) -> bool {
        let rate = rate as f64;
        let burst = rate.max(bytes as f64);
        if let Some(last) = self.last {
            self.tokens =
                (self.tokens + rate * now.saturating_duration_since(last).as_secs_f64()).min(burst);
        } else {
            self.tokens = bytes as f64;
        }
        self.last = Some(now);
        if self.tokens >= bytes as f64 {
            self.tokens -= bytes as f64;
            true
        } else {
            false
        }
    }

    /// When `bytes` will be there at `rate`.
    fn ready_at(&self, rate: u64, bytes: u64) -> Option<Instant> {
        let last = self.last?;
        let missing = (bytes as f64 - self.tokens).max(0.0);
        Some(last + Duration::from_secs_f64(missing / (rate.max(1) as f64)))
    }
}

struct Download {
    svc: Arc<Services>,
    id: ContentId,
    map: Arc<PieceMap>,
    origin_text: String,
    progress: watch::Sender<DownloadProgress>,
    sources: HashMap<SourceId, SourceInfo>,
    /// Peer client id -> source.
    peers: HashMap<String, SourceId>,
    /// Parent-office peer client id -> source.
    upstream: HashMap<String, SourceId>,
    next_source: u64,
    origin_source: Option<SourceId>,
    in_flight: HashMap<(SourceId, u32), AbortHandle>,
    /// Bytes arrived so far of pieces streaming from upstream sources, and how many of
    /// them the scheduler has been told about.
    streamed: HashMap<(SourceId, u32), Streamed>,
    /// The first bytes of WAN pieces whose fetch was abandoned (a pause, a late
    /// request): the next request over the link asks only for the rest.
    partials: HashMap<u32, Bytes>,
    /// Requests whose piece is an earlier prefix plus the rest: if it fails verification
    /// nobody can tell which source was wrong, so neither is judged.
    assembled: std::collections::HashSet<(SourceId, u32)>,
    from_peers: u64,
    /// Peers (client ids) that sent verified pieces: reported to the server, which takes
    /// it as proof that they serve (a bare `complete` claim is not).
    served_by: std::collections::BTreeSet<String>,
    from_origin: u64,
    from_server: u64,
    from_wan: u64,
    server_source: Option<SourceId>,
    have_dirty: bool,
    office: String,
    am_rvp: bool,
    /// False outside the office link's allowed hours: nothing is pulled over it.
    link_open: bool,
    /// The office link's Background ceiling (bytes/s), 0 = none.
    ceiling: u64,
    budget: Budget,
    locates: u32,
    /// The have report on its way to the server, if any.
    reporting: Option<JoinHandle<()>>,
    /// Control signals: whether this RVP told the server its WAN transfer started, the
    /// senders' Adaptive Protocol addresses, an admin's pause.
    signalled: bool,
    signal_addrs: HashMap<String, SocketAddr>,
    admin_paused: bool,
    /// When the server last pushed a pause or resume, and when the last locate went out
    /// (an answer older than the push does not undo it).
    last_control: Option<Instant>,
    locate_sent: Instant,
    wan_at_signal: (Instant, u64),
    /// When the office link's allowed-hours window opens or closes next.
    link_change: Option<Instant>,
    /// Sources known to hold every piece (no more have queries).
    whole: std::collections::HashSet<SourceId>,
    /// Verified pieces received and not yet handed to the writer.
    unwritten: Vec<VerifiedPiece>,
    /// Bytes of pieces queued or being written (bounded by [`MAX_UNWRITTEN_BYTES`]).
    unwritten_bytes: u64,
    /// Pieces and bytes recorded in the cache (durable): what progress reports.
    durable: (u32, u64),
}

impl Drop for Download {
    fn drop(&mut self) {
        self.svc.signals.untrack(self.id);
        if self.signalled {
            self.svc
                .metrics
                .wan_transfers
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Download {
    fn new_source(&mut self, info: SourceInfo) -> SourceId {
        let id = SourceId(self.next_source);
        self.next_source += 1;
        self.sources.insert(id, info);
        id
    }

    async fn run(&mut self, mut sched: Scheduler) -> Result<(), DownloadError> {
        let mut tasks: JoinSet<Fetched> = JoinSet::new();
        let mut haves: JoinSet<(SourceId, Option<Have>)> = JoinSet::new();
        let mut next_locate = Instant::now();
        let mut locate_gap = LOCATE_EVERY;
        let mut next_have = Instant::now() + HAVE_EVERY;
        let mut next_report = Instant::now() + REPORT_EVERY;
        let mut last_progress = Instant::now();
        let mut paused_until: Option<Instant> = None;
        let mut found = self.svc.discovery.subscribe();
        let mut locating: Option<JoinHandle<Result<Locations, DownloadError>>> = None;
        let mut next_ask = Instant::now();
        let mut controls = self.svc.signals.subscribe();
        let mut next_signal = Instant::now() + Duration::from_millis(300);
        // The write in progress, if any. The download ends once every piece is received
        // and every received piece is durable.
        let mut writing: Option<Writing> = None;
        while !(sched.is_complete() && writing.is_none() && self.unwritten.is_empty()) {
            let now = Instant::now();
            if now >= next_signal {
                self.signal_progress(now);
                next_signal = now + SIGNAL_EVERY;
            }
            if now >= next_ask {
                self.svc.discovery.ask(self.id).await;
                next_ask = now + DISCOVER_EVERY;
            }
            if now >= next_locate && locating.is_none() {
                locating = Some(self.start_locate());
                // Rescheduled when the answer (or the failure) comes.
                next_locate = now + LOCATE_MAX * 6;
            }
            if now >= next_have {
                self.query_haves(&mut haves);
                next_have = now + HAVE_EVERY;
            }
            if now >= next_report && self.have_dirty {
                self.report_have(false).await;
                next_report = Instant::now() + REPORT_EVERY;
            }
            if paused_until.is_some_and(|t| now >= t) {
                paused_until = None;
                self.progress.send_modify(|p| p.paused = None);
            }
            for (source, piece) in sched.timeouts(now) {
                // A fetch that already finished is not late: its answer waits in `tasks`
                // while this loop was busy (writing a batch, on a loaded machine), and is
                // judged when it is read below. Timing it out would blame the source for
                // our own delay and fetch the piece a second time.
                if self
                    .in_flight
                    .get(&(source, piece))
                    .is_some_and(|h| h.is_finished())
                {
                    continue;
                }
                tracing::debug!(content = %self.id, %source, piece, "request timed out");
                if let Some(h) = self.in_flight.remove(&(source, piece)) {
                    h.abort();
                }
                self.apply_verdict(&mut sched, source, piece, Failure::Timeout, now)
                    .await;
            }
            self.report_streamed(&mut sched, now);
            if writing.is_none() {
                writing = self.start_write();
            }
            if paused_until.is_none() && self.unwritten_bytes < MAX_UNWRITTEN_BYTES {
                self.issue(&mut sched, &mut tasks, now);
            }
            let p = sched.progress();
            self.progress.send_modify(|d| {
                // What the cache holds durably, not what is still on its way to the disk.
                (d.have_pieces, d.have_bytes) = self.durable;
                d.sources = p.active_sources;
                d.reading_origin = self.origin_source.is_some();
            });
            if !self.link_open {
                // A closed link window is not a stall.
                last_progress = Instant::now();
            }
            if last_progress.elapsed() > STALL_LIMIT {
                return Err(DownloadError::Stalled {
                    secs: STALL_LIMIT.as_secs(),
                    why: sched.diagnose(now).to_string(),
                });
            }
            let piece_bytes = u64::from(self.map.piece_size().bytes());
            let budget_wake = (self.ceiling > 0 && !self.upstream.is_empty())
                .then(|| self.budget.ready_at(self.ceiling, piece_bytes))
                .flatten()
                .map(|t| t.max(now + Duration::from_millis(5)));
            // Nothing asked of a closed link or while paused lifts the scheduler's
            // expired holds: lift them here, or the earliest of them would be a wake-up
            // time in the past.
            sched.expire_holds(now);
            let wake = [
                Some(next_locate),
                Some(next_ask),
                Some(next_signal),
                Some(next_have),
                // Due only once there is something to report (until then it stays in the
                // past, and this loop would spin).
                self.have_dirty.then_some(next_report),
                sched.next_deadline(),
                paused_until,
                budget_wake,
                (!self.streamed.is_empty()).then(|| now + PROGRESS_EVERY),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + LOCATE_EVERY);
            tokio::select! {
                answer = async { locating.as_mut().expect("guarded").await }, if locating.is_some() => {
                    locating = None;
                    let plan_before = (self.am_rvp, self.sources.len());
                    let applied = match answer {
                        Ok(Ok(located)) => self.apply_located(&mut sched, located).await,
                        Ok(Err(e)) => Err(e),
                        Err(source) => Err(DownloadError::Task { what: "locating sources", source }),
                    };
                    match applied {
                        Ok(()) => {
                            // Back off while the plan holds; start over when it changes
                            // or there is nobody to ask.
                            if plan_before != (self.am_rvp, self.sources.len())
                                || self.sources.is_empty()
                            {
                                locate_gap = LOCATE_EVERY;
                            } else {
                                locate_gap = (locate_gap * 2).min(LOCATE_MAX);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(content = %self.id, error = %e, "locate failed; retrying");
                            locate_gap = LOCATE_EVERY;
                            // Without the server, the subnet still knows who holds what.
                            if self.svc.discovery.ask(self.id).await {
                                tracing::info!(content = %self.id, "the server does not answer; asked the subnet");
                            }
                        }
                    }
                    if !self.link_open && self.link_change.is_none() {
                        // Queued behind another transfer on the link: ask again soon.
                        locate_gap = LOCATE_EVERY;
                    }
                    next_locate = Instant::now() + locate_gap;
                    if let Some(change) = self.link_change {
                        next_locate = next_locate.min(change);
                    }
                }
                control = controls.recv() => match control {
                    Ok(c) if c.content_id.as_slice() == self.id.as_bytes() => {
                        self.last_control = Some(Instant::now());
                        self.set_paused(&mut sched, c.pause, Instant::now());
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        controls = self.svc.signals.subscribe();
                    }
                },
                got = found.recv() => match got {
                    Ok(f) => self.on_found(&mut sched, f),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        found = self.svc.discovery.subscribe();
                    }
                },
                Some(answer) = haves.join_next(), if !haves.is_empty() => {
                    if let Ok((source, Some(have))) = answer
                        && self.sources.contains_key(&source)
                    {
                        if matches!(have, Have::All) {
                            self.whole.insert(source);
                        }
                        if let Err(e) = sched.set_source_pieces(source, have) {
                            tracing::debug!(content = %self.id, error = %e, "a peer's have set was refused");
                        }
                    }
                }
                joined = tasks.join_next(), if !tasks.is_empty() => {
                    // This result and every other one already finished: verified pieces
                    // count as received at once (their requests are done) and queue for
                    // the writer; failures are judged.
                    let mut next = joined;
                    while let Some(joined) = next {
                        if let Ok(fetched) = joined {
                            let (source, piece) = (fetched.source, fetched.piece);
                            self.in_flight.remove(&(source, piece));
                            let assembled = self.assembled.remove(&(source, piece));
                            match fetched.result {
                                Ok(verified) => {
                                    if self.received(&mut sched, source, verified, Instant::now())? {
                                        last_progress = Instant::now();
                                    }
                                }
                                Err(Failure::BadPiece) if assembled => {
                                    tracing::warn!(content = %self.id, piece, "a piece continued from an abandoned fetch failed verification; fetching it whole");
                                    self.apply_verdict(&mut sched, source, piece, Failure::Local, Instant::now()).await;
                                }
                                Err(failure) => {
                                    self.apply_verdict(&mut sched, source, piece, failure, Instant::now()).await
                                }
                            }
                        } // else: an aborted (cancelled) fetch
                        next = tasks.try_join_next();
                    }
                }
                done = async { writing.as_mut().expect("guarded").await }, if writing.is_some() => {
                    writing = None;
                    let (pieces, result) = done.map_err(|source| DownloadError::Task {
                        what: "writing pieces",
                        source,
                    })?;
                    let bytes: u64 = pieces.iter().map(|p| p.data().len() as u64).sum();
                    self.unwritten_bytes = self.unwritten_bytes.saturating_sub(bytes);
                    match result {
                        Ok(out) => {
                            self.have_dirty |= !out.stored.is_empty();
                            for &piece in &out.stored {
                                let len = self.map.piece_range(piece).map_or(0, |(_, l)| l);
                                self.durable.0 += 1;
                                self.durable.1 += u64::from(len);
                            }
                            for (piece, e) in out.bad {
                                // Verified for another content: a bug here, not a bad source.
                                tracing::error!(content = %self.id, piece, error = %e, "a piece was refused by the cache; fetching it again");
                                self.lost(&mut sched, piece);
                            }
                        }
                        Err(StoreError::DiskFull { .. }) => {
                            tracing::warn!(content = %self.id, "disk full: download paused");
                            self.progress.send_modify(|p| p.paused = Some("disk full".into()));
                            paused_until = Some(Instant::now() + DISK_FULL_RETRY);
                            // Nothing wrong with the sources: these pieces, and those queued
                            // behind them, are missing again and fetched after the pause.
                            let queued = std::mem::take(&mut self.unwritten);
                            for p in pieces.iter().chain(&queued) {
                                self.lost(&mut sched, p.index());
                            }
                            self.unwritten_bytes = 0;
                            last_progress = Instant::now();
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
        if self.signalled {
            let senders: Vec<SocketAddr> = self.signal_addrs.values().copied().collect();
            self.svc
                .signals
                .to_server(self.id, SignalKind::End, self.from_wan, 0, Vec::new());
            self.svc
                .signals
                .to_senders(self.id, SignalKind::Cancel, &senders);
        }
        // Anything still in flight is a duplicate of a piece we now hold.
        tasks.abort_all();
        haves.abort_all();
        if let Some(l) = locating {
            l.abort();
        }
        Ok(())
    }

    /// Pauses or resumes pulling over the WAN link (an admin's request): stops issuing
    /// requests to upstream sources and resets those in flight (their pieces go back to
    /// the pool, no source is judged), and tells the senders.
    fn set_paused(&mut self, sched: &mut Scheduler, paused: bool, now: Instant) {
        if paused == self.admin_paused {
            return;
        }
        self.admin_paused = paused;
        tracing::info!(content = %self.id, paused, "WAN transfer paused or resumed by the server");
        if paused {
            self.link_open = false;
            let upstream: Vec<(SourceId, u32)> = self
                .in_flight
                .keys()
                .filter(|(s, _)| matches!(self.sources.get(s), Some(SourceInfo::Upstream { .. })))
                .copied()
                .collect();
            for (source, piece) in upstream {
                if let Some(h) = self.in_flight.remove(&(source, piece)) {
                    h.abort();
                }
                // A local failure judges no source (the verdict is always `Continue`); an
                // error is a bookkeeping bug that leaves the piece marked in flight.
                if let Err(e) = sched.on_piece_failed(source, piece, Failure::Local, now) {
                    tracing::error!(content = %self.id, %source, piece, error = %e, "scheduler refused a piece reset by the pause; it may not be fetched again until the download restarts");
                }
            }
            self.progress
                .send_modify(|p| p.paused = Some("paused by an admin".into()));
        } else {
            self.link_open = true;
            self.progress.send_modify(|p| p.paused = None);
        }
        let kind = if paused {
            SignalKind::Pause
        } else {
            SignalKind::Resume
        };
        let senders: Vec<SocketAddr> = self.signal_addrs.values().copied().collect();
        self.svc.signals.to_senders(self.id, kind, &senders);
    }

    /// Control signals of a running WAN transfer: start (to the server and the senders),
    /// then progress to the server.
    fn signal_progress(&mut self, now: Instant) {
        if !self.am_rvp || self.upstream.is_empty() || !self.link_open {
            return;
        }
        let (then, bytes_then) = self.wan_at_signal;
        let secs = now.saturating_duration_since(then).as_secs_f64().max(0.001);
        let rate = (self.from_wan.saturating_sub(bytes_then) as f64 / secs) as u64;
        self.wan_at_signal = (now, self.from_wan);
        let senders: Vec<String> = self.upstream.keys().cloned().collect();
        if !self.signalled {
            self.signalled = true;
            self.svc
                .metrics
                .wan_transfers
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let addrs: Vec<SocketAddr> = self.signal_addrs.values().copied().collect();
            self.svc
                .signals
                .to_senders(self.id, SignalKind::Start, &addrs);
            self.svc
                .signals
                .to_server(self.id, SignalKind::Start, self.from_wan, 0, senders);
        } else {
            self.svc
                .signals
                .to_server(self.id, SignalKind::Progress, self.from_wan, rate, senders);
        }
    }

    /// Adds (or refreshes) a same-office peer: listed by the server, or found on the
    /// subnet. A source dropped for strikes comes back on probation when it is listed
    /// again (see the scheduler's crate docs); a banned one is refused by the scheduler.
    fn add_peer(&mut self, sched: &mut Scheduler, client: &str, addr: SocketAddr, have: Have) {
        let source = match self.peers.get(client) {
            Some(s) => *s,
            None => {
                let s = self.new_source(SourceInfo::Peer {
                    client: client.to_owned(),
                    addr,
                });
                self.peers.insert(client.to_owned(), s);
                s
            }
        };
        if matches!(have, Have::All) {
            self.whole.insert(source);
        }
        if (sched.add_source(source, SourceKind::Peer).is_ok()
            || sched.source_stats(source).is_some())
            && let Err(e) = sched.set_source_pieces(source, have)
        {
            tracing::debug!(content = %self.id, error = %e, "a peer's have set was refused");
        }
    }

    /// A holder found by subnet discovery.
    fn on_found(&mut self, sched: &mut Scheduler, found: Found) {
        if found.content != self.id || self.svc.discovery.office_kind() == "vpn" {
            return;
        }
        // A hostile device of the office could claim many ids: peers found on the subnet
        // are bounded like the server's lists.
        let client = found.client.to_string();
        if !self.peers.contains_key(&client) && self.peers.len() >= MAX_FOUND_PEERS {
            tracing::debug!(content = %self.id, "peer found on the subnet ignored: enough peers already");
            return;
        }
        let pieces = self.map.piece_count();
        let have = if found.complete {
            Have::All
        } else {
            match PieceSet::from_lsb_bytes(pieces, &found.have) {
                Ok(s) => Have::Some(s),
                // No bitfield in the answer: the have queries will tell.
                Err(_) => Have::Some(PieceSet::new(pieces)),
            }
        };
        if self.peers.contains_key(&client) {
            tracing::debug!(content = %self.id, peer = %client, addr = %found.addr, "found on the subnet again");
        } else {
            tracing::info!(content = %self.id, peer = %client, addr = %found.addr, "found a peer on the subnet");
        }
        self.add_peer(sched, &client, found.addr, have);
    }

    /// Asks each peer that is not known to hold everything what it holds now (a have
    /// query on its content port), a few at a time.
    fn query_haves(&mut self, haves: &mut JoinSet<(SourceId, Option<Have>)>) {
        let pieces = self.map.piece_count();
        let mut asked = haves.len();
        for (source, info) in &self.sources {
            if asked >= MAX_HAVE_QUERIES {
                break;
            }
            if self.whole.contains(source) {
                continue;
            }
            let (pool, client, addr) = match info {
                SourceInfo::Peer { client, addr } => (self.svc.peer_pool.clone(), client, *addr),
                SourceInfo::Upstream { client, addr } => {
                    (self.svc.upstream_pool.clone(), client, *addr)
                }
                _ => continue,
            };
            let Ok(name) = ClientName::new(client.clone()) else {
                continue;
            };
            let (svc, id, source) = (self.svc.clone(), self.id, *source);
            asked += 1;
            haves.spawn(async move {
                let answer = async {
                    let (conn, _) = pool.get(addr, &Role::Client(name)).await.ok()?;
                    let bytes = tokio::time::timeout(
                        Duration::from_secs(5),
                        branchline_quic::fetch_have(&conn, id.as_bytes(), svc.content.config()),
                    )
                    .await
                    .ok()?
                    .ok()?;
                    Some(match bytes {
                        None => Have::Some(PieceSet::new(pieces)),
                        Some(b) => {
                            let set = PieceSet::from_lsb_bytes(pieces, &b).ok()?;
                            if set.count() == pieces {
                                Have::All
                            } else {
                                Have::Some(set)
                            }
                        }
                    })
                };
                (source, answer.await)
            });
        }
    }

    /// Tells the scheduler about bytes of upstream pieces still streaming, so a slow but
    /// flowing piece over the WAN is never taken for a stalled one.
    fn report_streamed(&mut self, sched: &mut Scheduler, now: Instant) {
        // Fetches that ended: a piece not received keeps what arrived, for the next
        // request to continue from.
        let ended: Vec<(SourceId, u32)> = self
            .streamed
            .keys()
            .filter(|k| !self.in_flight.contains_key(k))
            .copied()
            .collect();
        for key in ended {
            let Some(st) = self.streamed.remove(&key) else {
                continue;
            };
            let rest = st.sink.take();
            if sched.has_piece(key.1) {
                continue;
            }
            let kept = match st.prefix {
                Some(p) if rest.is_empty() => p,
                Some(p) => {
                    let mut whole = bytes::BytesMut::with_capacity(p.len() + rest.len());
                    whole.extend_from_slice(&p);
                    whole.extend_from_slice(&rest);
                    whole.freeze()
                }
                None => rest,
            };
            if kept.is_empty() {
                continue;
            }
            let longer = self
                .partials
                .get(&key.1)
                .is_none_or(|old| old.len() < kept.len());
            if longer && (self.partials.len() < MAX_PARTIALS || self.partials.contains_key(&key.1))
            {
                self.partials.insert(key.1, kept);
            }
        }
        for ((source, _), st) in &mut self.streamed {
            let seen = st.sink.received();
            if seen > st.told {
                sched.on_progress(*source, seen - st.told, now);
                st.told = seen;
            }
        }
    }

    /// Starts every request the scheduler hands out.
    fn issue(&mut self, sched: &mut Scheduler, tasks: &mut JoinSet<Fetched>, now: Instant) {
        let ids: Vec<SourceId> = self.sources.keys().copied().collect();
        let piece_bytes = u64::from(self.map.piece_size().bytes());
        for source in ids {
            let wan = matches!(self.sources.get(&source), Some(SourceInfo::Upstream { .. }));
            loop {
                if wan
                    && (!self.link_open
                        || (self.ceiling > 0 && !self.budget.take(self.ceiling, piece_bytes, now)))
                {
                    break;
                }
                let Some(piece) = sched.next_request(source, now) else {
                    if wan && self.ceiling > 0 {
                        // Not used: give the bytes back.
                        self.budget.tokens += piece_bytes as f64;
                    }
                    break;
                };
                let Some((offset, len)) = self.map.piece_range(piece) else {
                    break;
                };
                let handle = match &self.sources[&source] {
                    SourceInfo::Upstream { client, addr } => {
                        let (svc, client, addr, id) =
                            (self.svc.clone(), client.clone(), *addr, self.id);
                        let sink = Arc::new(PieceSink::new());
                        // What an abandoned fetch of this piece left: ask for the rest.
                        let prefix = self
                            .partials
                            .remove(&piece)
                            .filter(|p| (p.len() as u64) < u64::from(len));
                        if prefix.is_some() {
                            self.assembled.insert((source, piece));
                        }
                        self.streamed.insert(
                            (source, piece),
                            Streamed {
                                sink: sink.clone(),
                                told: 0,
                                prefix: prefix.clone(),
                            },
                        );
                        let map = self.map.clone();
                        let handle = tasks.spawn(async move {
                            let result = fetch_from_upstream(
                                &svc, &client, addr, id, piece, len, prefix, &sink,
                            )
                            .await;
                            let result = verified(map, piece, result).await;
                            Fetched {
                                source,
                                piece,
                                result,
                            }
                        });
                        self.svc.signals.track(self.id, handle.clone());
                        handle
                    }
                    SourceInfo::Peer { client, addr } => {
                        let (svc, client, addr, id) =
                            (self.svc.clone(), client.clone(), *addr, self.id);
                        let map = self.map.clone();
                        tasks.spawn(async move {
                            let result = fetch_from_peer(&svc, &client, addr, id, piece).await;
                            let result = verified(map, piece, result).await;
                            Fetched {
                                source,
                                piece,
                                result,
                            }
                        })
                    }
                    SourceInfo::Server => {
                        let (svc, id) = (self.svc.clone(), self.id);
                        let map = self.map.clone();
                        tasks.spawn(async move {
                            let result = fetch_from_server(&svc, id, piece).await;
                            let result = verified(map, piece, result).await;
                            Fetched {
                                source,
                                piece,
                                result,
                            }
                        })
                    }
                    SourceInfo::Origin(origin) => {
                        let (origin, map) = (origin.clone(), self.map.clone());
                        tasks.spawn(async move {
                            let result =
                                origin
                                    .read_range(offset, u64::from(len))
                                    .await
                                    .map_err(|e| {
                                        tracing::warn!(error = %e, piece, "origin read failed");
                                        Failure::Transport
                                    });
                            let result = verified(map, piece, result).await;
                            Fetched {
                                source,
                                piece,
                                result,
                            }
                        })
                    }
                };
                self.in_flight.insert((source, piece), handle);
            }
        }
    }

    /// A verified piece arrived from `source`: the scheduler counts it as received (its
    /// request is done, duplicates elsewhere are cancelled) and, when new, it queues for
    /// the writer. True when it was new.
    fn received(
        &mut self,
        sched: &mut Scheduler,
        source: SourceId,
        piece: VerifiedPiece,
        now: Instant,
    ) -> Result<bool, DownloadError> {
        let len = piece.data().len() as u64;
        let m = &self.svc.metrics;
        match self.sources.get(&source) {
            Some(SourceInfo::Origin(_)) => {
                self.from_origin += len;
                m.fetched(crate::metrics::ORIGIN, len);
            }
            Some(SourceInfo::Peer { client, .. }) => {
                self.from_peers += len;
                m.fetched(crate::metrics::LAN, len);
                if self.served_by.len() < branchline_wire::large::MAX_SERVED_BY {
                    self.served_by.insert(client.clone());
                }
            }
            Some(SourceInfo::Upstream { client, .. }) => {
                if self.served_by.len() < branchline_wire::large::MAX_SERVED_BY {
                    self.served_by.insert(client.clone());
                }
                self.from_wan += len;
                m.fetched(crate::metrics::WAN, len);
            }
            Some(SourceInfo::Server) => {
                self.from_server += len;
                m.fetched(crate::metrics::SERVER, len);
            }
            None => {}
        }
        let received = sched
            .on_piece_received(source, piece.index(), len, now)
            .map_err(|source| DownloadError::Sched {
                what: "a received piece",
                source,
            })?;
        for (s, p) in received.cancel {
            if let Some(h) = self.in_flight.remove(&(s, p)) {
                h.abort();
            }
        }
        if !received.new {
            tracing::debug!(content = %self.id, %source, piece = piece.index(), "a piece already held arrived again");
            return Ok(false);
        }
        self.unwritten_bytes += len;
        self.unwritten.push(piece);
        Ok(true)
    }

    /// Starts writing every queued piece in one group commit (one data fsync and one
    /// bitfield fsync) on the blocking pool, if any is queued. Pieces are recorded in the
    /// cache only once durable; the download loop goes on receiving meanwhile.
    fn start_write(&mut self) -> Option<Writing> {
        if self.unwritten.is_empty() {
            return None;
        }
        let pieces = std::mem::take(&mut self.unwritten);
        let (cache, id) = (self.svc.cache.clone(), self.id);
        Some(tokio::task::spawn_blocking(move || {
            let result = cache.write_verified(&id, &pieces, now_ms());
            (pieces, result)
        }))
    }

    /// A received piece could not be kept: it is missing again.
    fn lost(&mut self, sched: &mut Scheduler, piece: u32) {
        if let Err(e) = sched.on_piece_lost(piece) {
            tracing::error!(content = %self.id, piece, error = %e, "scheduler refused a lost piece");
        }
    }

    async fn apply_verdict(
        &mut self,
        sched: &mut Scheduler,
        source: SourceId,
        piece: u32,
        failure: Failure,
        now: Instant,
    ) {
        let verdict = match sched.on_piece_failed(source, piece, failure, now) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "scheduler refused an outcome");
                return;
            }
        };
        let Verdict::Drop(dropped) = verdict else {
            return;
        };
        for p in &dropped.cancel {
            if let Some(h) = self.in_flight.remove(&(source, *p)) {
                h.abort();
            }
        }
        let Some(SourceInfo::Peer { client, .. } | SourceInfo::Upstream { client, .. }) =
            self.sources.get(&source)
        else {
            if self.origin_source == Some(source) {
                tracing::warn!(content = %self.id, "the origin keeps failing; it will be tried again");
                self.sources.remove(&source);
                self.origin_source = None;
            }
            if self.server_source == Some(source) {
                // Asked again (and reconnected) at the next locate.
                tracing::warn!(content = %self.id, "the server's sending failed; asking again");
                self.sources.remove(&source);
                self.server_source = None;
            }
            return;
        };
        let client = client.clone();
        tracing::warn!(content = %self.id, peer = %client, reason = ?dropped.reason, "peer dropped for this content");
        if dropped.reason.report_to_server() {
            let report = Request::ReportBadPeer(ReportBadPeer {
                content_id: self.id.as_bytes().to_vec(),
                peer_id: client.clone(),
                reason: format!("piece {piece} failed BLAKE3 verification"),
            });
            let svc = self.svc.clone();
            tokio::spawn(async move {
                if let Err(e) = svc.call(report).await {
                    tracing::warn!(error = %e, "could not report the bad peer");
                }
            });
        }
        match self.sources.get(&source) {
            Some(SourceInfo::Peer { addr, .. }) => {
                if let Ok(name) = ClientName::new(client.clone()) {
                    self.svc.peer_pool.forget(*addr, &Role::Client(name));
                }
            }
            Some(SourceInfo::Upstream { addr, .. }) => {
                if let Ok(name) = ClientName::new(client.clone()) {
                    self.svc.upstream_pool.forget(*addr, &Role::Client(name));
                }
            }
            _ => {}
        }
    }

    /// Asks the server where the pieces are and updates the scheduler's sources.
    /// Starts asking the server where the pieces are, in a task of its own: the download
    /// goes on with what it has while the server is slow or unreachable.
    fn start_locate(&mut self) -> JoinHandle<Result<Locations, DownloadError>> {
        self.locate_sent = Instant::now();
        let (svc, request) = (
            self.svc.clone(),
            Locate {
                content_id: self.id.as_bytes().to_vec(),
                reading_origin: self.origin_source.is_some(),
                was_rvp: self.am_rvp,
            },
        );
        tokio::spawn(async move {
            match svc.call(Request::Locate(request)).await? {
                Response::Locations(l) => Ok(l),
                _ => Err(DownloadError::Unexpected("Locate")),
            }
        })
    }

    /// Applies the server's answer to "where are the pieces".
    async fn apply_located(
        &mut self,
        sched: &mut Scheduler,
        located: Locations,
    ) -> Result<(), DownloadError> {
        self.locates += 1;
        let pieces = self.map.piece_count();
        if self.office != located.office || self.am_rvp != located.am_rvp {
            tracing::info!(content = %self.id, office = %located.office, rvp = %located.rvp, am_rvp = located.am_rvp, "office plan");
        }
        if self.office != located.office {
            tracing::Span::current().record("office", located.office.as_str());
        }
        self.office = located.office.clone();
        self.am_rvp = located.am_rvp;
        let (open, queued, paused, ceiling) = located
            .link
            .as_ref()
            .map(|l| (l.open, l.queued, l.paused, l.ceiling_bytes_per_s))
            .unwrap_or((true, false, false, 0));
        // A pause or resume pushed by the server after this locate was sent is newer
        // than what the answer says.
        let stale = self.last_control.is_some_and(|c| c > self.locate_sent);
        if !stale && paused != self.admin_paused {
            self.set_paused(sched, paused, Instant::now());
        }
        let queued = queued || self.admin_paused;
        if (open && !queued) != self.link_open {
            tracing::info!(content = %self.id, open, queued, "the office's WAN link changed");
            self.progress.send_modify(|p| {
                p.paused = if !open {
                    Some("outside the WAN link's allowed hours".into())
                } else if self.admin_paused {
                    Some("paused by an admin".into())
                } else if queued {
                    Some("waiting for the WAN link (another transfer is using it)".into())
                } else {
                    None
                }
            });
        }
        let open = open && !queued;
        self.link_open = open;
        self.ceiling = ceiling;
        self.link_change = located
            .link
            .as_ref()
            .filter(|l| l.change_in_ms > 0)
            .map(|l| Instant::now() + Duration::from_millis(l.change_in_ms + 50));
        // Upstream peers: only the RVP gets any; a client that stopped being the RVP
        // stops pulling over the WAN.
        let listed: Vec<String> = located
            .upstream
            .iter()
            .map(|p| p.client_id.clone())
            .collect();
        let gone: Vec<(String, SourceId)> = self
            .upstream
            .iter()
            .filter(|(c, _)| !listed.contains(c))
            .map(|(c, s)| (c.clone(), *s))
            .collect();
        for (client, s) in gone {
            for p in sched.remove_source(s).unwrap_or_default() {
                if let Some(h) = self.in_flight.remove(&(s, p)) {
                    h.abort();
                }
            }
            self.sources.remove(&s);
            self.upstream.remove(&client);
        }
        for peer in located.upstream {
            let Some((addr, have)) = peer_entry(&peer, pieces) else {
                continue;
            };
            if let Ok(port) = u16::try_from(peer.adaptive_port)
                && port != 0
            {
                self.signal_addrs
                    .insert(peer.client_id.clone(), SocketAddr::new(addr.ip(), port));
            }
            let source = match self.upstream.get(&peer.client_id) {
                Some(s) => *s,
                None => {
                    let s = self.new_source(SourceInfo::Upstream {
                        client: peer.client_id.clone(),
                        addr,
                    });
                    self.upstream.insert(peer.client_id.clone(), s);
                    s
                }
            };
            if matches!(have, Have::All) {
                self.whole.insert(source);
            }
            if sched.add_source(source, SourceKind::Upstream).is_ok()
                || sched.source_stats(source).is_some()
            {
                if let Err(e) = sched.set_source_group(source, Some(WAN_GROUP)) {
                    tracing::error!(content = %self.id, %source, error = %e, "scheduler refused the WAN group for an upstream peer; it is paced alone, not with the link");
                }
                if let Err(e) = sched.set_source_pieces(source, have) {
                    tracing::debug!(content = %self.id, error = %e, "an upstream peer's have set was refused");
                }
            }
        }
        for peer in located.peers {
            let Some((addr, have)) = peer_entry(&peer, pieces) else {
                continue;
            };
            self.add_peer(sched, &peer.client_id, addr, have);
        }
        if located.server_sends && self.server_source.is_none() {
            self.start_server_source(sched).await;
        }
        match (located.read_origin, self.origin_source) {
            (true, None) => {
                let origin_text = if located.origin.is_empty() {
                    self.origin_text.clone()
                } else {
                    located.origin.clone()
                };
                let origin =
                    Origin::parse(&origin_text).map_err(|source| DownloadError::Origin {
                        origin: origin_text.clone(),
                        source,
                    })?;
                let s = self.new_source(SourceInfo::Origin(origin));
                sched
                    .add_source(s, SourceKind::Origin)
                    .map_err(|source| DownloadError::Sched {
                        what: "the origin as a source",
                        source,
                    })?;
                // Without its pieces the origin would be a source that serves nothing.
                sched
                    .set_source_pieces(s, Have::All)
                    .map_err(|source| DownloadError::Sched {
                        what: "the origin's pieces",
                        source,
                    })?;
                self.origin_source = Some(s);
                tracing::info!(content = %self.id, origin = %origin_text, "reading from the origin");
            }
            (false, Some(s)) => {
                // Another client reads the origin now (or a complete copy exists).
                for p in sched.remove_source(s).unwrap_or_default() {
                    if let Some(h) = self.in_flight.remove(&(s, p)) {
                        h.abort();
                    }
                }
                self.sources.remove(&s);
                self.origin_source = None;
            }
            _ => {}
        }
        Ok(())
    }

    /// Asks the server to send this content (it holds it and this client is in the
    /// Central Office) and, once its connection to our content port is up, adds it as a
    /// source holding every piece.
    async fn start_server_source(&mut self, sched: &mut Scheduler) {
        let asked = self
            .svc
            .call(Request::SendContent(SendContent {
                content_id: self.id.as_bytes().to_vec(),
            }))
            .await;
        if let Err(e) = asked {
            tracing::warn!(content = %self.id, error = %e, "the server cannot send the content; using peers");
            return;
        }
        // The server's connection reaches our accept loop right after its handshake.
        for _ in 0..100 {
            let up = self
                .svc
                .server_conn
                .lock()
                .expect("server_conn lock")
                .as_ref()
                .is_some_and(|c| c.close_reason().is_none());
            if up {
                let s = self.new_source(SourceInfo::Server);
                if sched.add_source(s, SourceKind::Peer).is_ok() {
                    match sched.set_source_pieces(s, Have::All) {
                        Ok(()) => {
                            self.server_source = Some(s);
                            tracing::info!(content = %self.id, "the server sends this content");
                        }
                        // Not recorded as the server source: the next locate asks again.
                        Err(e) => {
                            tracing::error!(content = %self.id, error = %e, "scheduler refused the server's pieces; using peers")
                        }
                    }
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!(content = %self.id, "the server's connection did not arrive; using peers");
    }

    /// Tells the server what this client holds now.
    async fn report_have(&mut self, force: bool) {
        if !self.have_dirty && !force {
            return;
        }
        let Some(have) = self.svc.cache.have(&self.id) else {
            return;
        };
        let complete = have.is_complete();
        let report = Request::ReportHave(ReportHave {
            content_id: self.id.as_bytes().to_vec(),
            have: if complete {
                Vec::new()
            } else {
                have.as_bytes().to_vec()
            },
            complete,
            content_port: self.svc.content_port.into(),
            sources: Some(SourceBytes {
                origin: self.from_origin,
                server: self.from_server,
                wan: self.from_wan,
                lan: self.from_peers,
            }),
            served_by: self.served_by.iter().cloned().collect(),
        });
        if force {
            // The last report, when the download ends: waited for, but not for long.
            match tokio::time::timeout(FINAL_REPORT_WAIT, self.svc.call(report)).await {
                Ok(Ok(_)) => self.have_dirty = false,
                Ok(Err(e)) => tracing::debug!(error = %e, "final have report failed"),
                Err(_) => tracing::debug!("final have report: the server did not answer in time"),
            }
            return;
        }
        // Reports while downloading never hold the download up (the server may be slow
        // or gone); one at a time.
        if self.reporting.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        self.have_dirty = false;
        let svc = self.svc.clone();
        self.reporting = Some(tokio::spawn(async move {
            if let Err(e) = svc.call(report).await {
                tracing::debug!(error = %e, "have report failed; the next one carries it");
            }
        }));
    }
}

async fn fetch_from_server(svc: &Services, id: ContentId, piece: u32) -> Result<Bytes, Failure> {
    let conn = svc
        .server_conn
        .lock()
        .expect("server_conn lock")
        .clone()
        .ok_or(Failure::Transport)?;
    fetch_on(svc, &conn, "the server", id, piece).await
}

/// The address and holdings of a listed peer, or `None` when the entry is unusable.
fn peer_entry(peer: &PeerHolding, pieces: u32) -> Option<(SocketAddr, Have)> {
    let ip = peer.address.parse::<IpAddr>().ok()?;
    let port = u16::try_from(peer.content_port).ok()?;
    let have = if peer.complete {
        Have::All
    } else {
        Have::Some(PieceSet::from_lsb_bytes(pieces, &peer.have).ok()?)
    };
    Some((SocketAddr::new(ip, port), have))
}

/// A piece from a parent-office peer, over Background (our 34750 to its 34750). Bytes
/// go into `sink` as they arrive, so an abandoned fetch leaves them for the next
/// request; `prefix` is what an earlier, abandoned fetch of this piece left, and then
/// only the rest is asked for. The whole piece is verified by the caller as usual.
#[allow(clippy::too_many_arguments)]
async fn fetch_from_upstream(
    svc: &Services,
    client: &str,
    addr: SocketAddr,
    id: ContentId,
    piece: u32,
    piece_len: u32,
    prefix: Option<Bytes>,
    sink: &PieceSink,
) -> Result<Bytes, Failure> {
    let name = ClientName::new(client.to_owned()).map_err(|_| Failure::Transport)?;
    let (conn, _) = svc
        .upstream_pool
        .get(addr, &Role::Client(name))
        .await
        .map_err(|e| {
            tracing::debug!(peer = %client, %addr, error = %e, "cannot connect to the parent-office peer");
            Failure::Transport
        })?;
    let offset = prefix.as_ref().map_or(0, |p| p.len() as u32);
    let request = PieceRequest {
        content: *id.as_bytes(),
        piece,
        offset,
        len: if offset == 0 { 0 } else { piece_len - offset },
    };
    let rest = map_fetch(
        client,
        piece,
        branchline_quic::fetch_piece_into(&conn, &request, svc.content.config(), sink).await,
    )?;
    Ok(match prefix {
        None => rest,
        Some(p) => {
            let mut whole = bytes::BytesMut::with_capacity(piece_len as usize);
            whole.extend_from_slice(&p);
            whole.extend_from_slice(&rest);
            whole.freeze()
        }
    })
}

async fn fetch_from_peer(
    svc: &Services,
    client: &str,
    addr: SocketAddr,
    id: ContentId,
    piece: u32,
) -> Result<Bytes, Failure> {
    let name = ClientName::new(client.to_owned()).map_err(|_| Failure::Transport)?;
    let role = Role::Client(name);
    let (conn, _) = svc.peer_pool.get(addr, &role).await.map_err(|e| {
        tracing::debug!(peer = %client, %addr, error = %e, "cannot connect to peer");
        Failure::Transport
    })?;
    fetch_on(svc, &conn, client, id, piece).await
}

/// Fetches one whole piece on `conn` and maps the answer to the scheduler's terms.
async fn fetch_on(
    svc: &Services,
    conn: &quinn::Connection,
    who: &str,
    id: ContentId,
    piece: u32,
) -> Result<Bytes, Failure> {
    let request = PieceRequest {
        content: *id.as_bytes(),
        piece,
        offset: 0,
        len: 0,
    };
    map_fetch(
        who,
        piece,
        fetch_piece(conn, &request, svc.content.config()).await,
    )
}

/// A fetch's outcome in the scheduler's terms.
fn map_fetch(who: &str, piece: u32, r: Result<Bytes, ContentError>) -> Result<Bytes, Failure> {
    match r {
        Ok(bytes) => Ok(bytes),
        Err(ContentError::NotFound) => Err(Failure::Unavailable),
        // Holds it but cannot serve now: no strike against a healthy source.
        Err(ContentError::Unavailable(_)) => Err(Failure::Busy),
        Err(e) => {
            tracing::debug!(source = %who, piece, error = %e, "piece fetch failed");
            Err(Failure::Transport)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let hex = "ab".repeat(32);
        assert!(matches!(hex.parse::<Target>(), Ok(Target::Id(_))));
        assert_eq!(
            "app@1.2".parse::<Target>(),
            Ok(Target::Name {
                name: "app".into(),
                version: Some("1.2".into())
            })
        );
        assert_eq!(
            "app".parse::<Target>(),
            Ok(Target::Name {
                name: "app".into(),
                version: None
            })
        );
        assert!("@1".parse::<Target>().is_err());
        assert!("app@".parse::<Target>().is_err());
    }
}
