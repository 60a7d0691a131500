//! Rendezvous point (RVP) election: which client of an office fetches a content from outside.

use crate::ClientKey;

/// How a client reaches its LAN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LinkMedium {
    /// The client did not say.
    #[default]
    Unknown,
    /// A wired LAN.
    Wired,
    /// WiFi.
    Wifi,
}

/// One client of an office, as the server sees it, for one content.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The client's id.
    pub client: ClientKey,
    /// Whether it is online now (only online clients are eligible).
    pub online: bool,
    /// Seconds the server has known it (since it was first seen).
    pub uptime_s: u64,
    /// Free space in its cache, in bytes.
    pub cache_free_bytes: u64,
    /// How it reaches its LAN.
    pub medium: LinkMedium,
    /// On a VPN: never an RVP for others.
    pub vpn: bool,
    /// Admin weight, added to the score (×1000).
    pub weight: i32,
    /// Pieces of this content it already holds.
    pub pieces: u32,
}

/// Points per admin weight unit.
pub const WEIGHT_POINTS: i64 = 1000;
/// Points per piece already held, up to [`PIECES_CAP`] pieces.
pub const PIECE_POINTS: i64 = 10;
/// Pieces beyond this many earn nothing more.
pub const PIECES_CAP: u32 = 100;
/// Points for a wired client.
pub const WIRED_POINTS: i64 = 300;
/// Points for a client whose medium is unknown.
pub const UNKNOWN_MEDIUM_POINTS: i64 = 150;
/// Points per hour of uptime, up to [`UPTIME_CAP_H`] hours.
pub const UPTIME_POINTS_PER_H: i64 = 10;
/// Hours of uptime beyond this earn nothing more.
pub const UPTIME_CAP_H: u64 = 24;
/// Points per whole GiB of free cache, up to [`FREE_CAP_GIB`] GiB.
pub const FREE_POINTS_PER_GIB: i64 = 2;
/// GiB of free cache beyond this earn nothing more.
pub const FREE_CAP_GIB: u64 = 100;

const GIB: u64 = 1 << 30;

/// The RVP score of a candidate; None when it may not be an RVP (offline, or on a VPN).
///
/// ```text
/// score = weight × 1000
///       + min(pieces, 100) × 10                    (0..=1000: it already holds the content)
///       + wired 300 | unknown 150 | wifi 0
///       + min(uptime_s / 3600, 24) × 10            (0..=240: whole hours)
///       + min(cache_free_bytes / 2^30, 100) × 2    (0..=200: whole GiB)
/// ```
///
/// Higher wins; equal scores go to the lowest client id.
pub fn score(c: &Candidate) -> Option<i64> {
    if !c.online || c.vpn {
        return None;
    }
    let medium = match c.medium {
        LinkMedium::Wired => WIRED_POINTS,
        LinkMedium::Unknown => UNKNOWN_MEDIUM_POINTS,
        LinkMedium::Wifi => 0,
    };
    let uptime_h = (c.uptime_s / 3600).min(UPTIME_CAP_H) as i64;
    let free_gib = (c.cache_free_bytes / GIB).min(FREE_CAP_GIB) as i64;
    Some(
        i64::from(c.weight) * WEIGHT_POINTS
            + i64::from(c.pieces.min(PIECES_CAP)) * PIECE_POINTS
            + medium
            + uptime_h * UPTIME_POINTS_PER_H
            + free_gib * FREE_POINTS_PER_GIB,
    )
}

/// The current RVP of one office for one content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RvpState {
    /// The RVP's client id.
    pub client: ClientKey,
    /// When it was elected (Unix ms).
    pub elected_ms: u64,
    /// When it last showed progress (Unix ms); also moved forward while the link is paused.
    pub progress_ms: u64,
    /// Pieces it held at the last progress.
    pub pieces: u32,
}

/// What [`elect`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Election {
    /// The current RVP stays.
    Kept(ClientKey),
    /// A new RVP (`replaced` is the previous one, if any; it may equal `client` when a
    /// stalled RVP is the only eligible candidate and is elected afresh).
    Elected {
        /// The new RVP.
        client: ClientKey,
        /// The RVP it replaces, if there was one.
        replaced: Option<ClientKey>,
    },
    /// Nobody is eligible; the RVP is cleared.
    NoCandidate,
}

fn fresh(c: &Candidate, now_ms: u64) -> RvpState {
    RvpState {
        client: c.client,
        elected_ms: now_ms,
        progress_ms: now_ms,
        pieces: c.pieces,
    }
}

/// Elects (or keeps) the RVP of one office for one content, updating `current` in place.
///
/// 1. An admin override (`override_client`) that is an eligible candidate (online, not VPN)
///    always wins.
/// 2. Otherwise the current RVP is kept while it is an eligible candidate and has made
///    progress within `stall_ms` (its later of `progress_ms` and `elected_ms` is at most
///    `stall_ms` before `now_ms`) — or while `paused` (a closed link window: no progress is
///    expected, so no stall; the stall clock is held by moving `progress_ms` to `now_ms`, so
///    when the window opens the RVP has a full `stall_ms` to show progress).
/// 3. Otherwise the best [`score`] wins, ties to the lowest client id. A stalled RVP is
///    passed over while anyone else is eligible; when it is the only one it is elected
///    afresh (`Elected { client: x, replaced: Some(x) }`, with a new stall clock).
/// 4. No eligible candidate: `current` becomes None and the result is `NoCandidate`.
pub fn elect(
    current: &mut Option<RvpState>,
    candidates: &[Candidate],
    override_client: Option<ClientKey>,
    now_ms: u64,
    stall_ms: u64,
    paused: bool,
) -> Election {
    let eligible = |k: &ClientKey| {
        candidates
            .iter()
            .find(|c| c.client == *k)
            .filter(|c| score(c).is_some())
    };
    let previous = current.as_ref().map(|s| s.client);

    if let Some(o) = override_client
        && let Some(c) = eligible(&o)
    {
        if previous == Some(o) {
            hold_if_paused(current, now_ms, paused);
            return Election::Kept(o);
        }
        *current = Some(fresh(c, now_ms));
        return Election::Elected {
            client: o,
            replaced: previous,
        };
    }

    let mut stalled = None;
    if let Some(cur) = current.as_ref()
        && eligible(&cur.client).is_some()
    {
        let last = cur.progress_ms.max(cur.elected_ms);
        if paused || now_ms.saturating_sub(last) <= stall_ms {
            let k = cur.client;
            hold_if_paused(current, now_ms, paused);
            return Election::Kept(k);
        }
        stalled = Some(cur.client);
    }

    let best = |skip: Option<ClientKey>| {
        candidates
            .iter()
            .filter(|c| Some(c.client) != skip)
            .filter_map(|c| score(c).map(|s| (s, c)))
            .max_by(|(sa, a), (sb, b)| sa.cmp(sb).then_with(|| b.client.cmp(&a.client)))
            .map(|(_, c)| c)
    };
    match best(stalled).or_else(|| stalled.and_then(|_| best(None))) {
        Some(c) => {
            *current = Some(fresh(c, now_ms));
            Election::Elected {
                client: c.client,
                replaced: previous,
            }
        }
        None => {
            *current = None;
            Election::NoCandidate
        }
    }
}

fn hold_if_paused(current: &mut Option<RvpState>, now_ms: u64, paused: bool) {
    if paused && let Some(s) = current.as_mut() {
        s.progress_ms = s.progress_ms.max(now_ms);
    }
}

/// Records that `client` now holds `pieces` pieces: when it is the RVP and the count grew,
/// that is progress at `now_ms`.
pub fn record_progress(
    current: &mut Option<RvpState>,
    client: ClientKey,
    pieces: u32,
    now_ms: u64,
) {
    if let Some(s) = current.as_mut()
        && s.client == client
        && pieces > s.pieces
    {
        s.pieces = pieces;
        s.progress_ms = s.progress_ms.max(now_ms);
    }
}
