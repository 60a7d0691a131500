//! Sources (peers, upstream sources and origins), what they hold, and their per-source
//! state.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use crate::{GroupId, PieceSet};

/// One outstanding request of a source.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request {
    /// When it was sent.
    pub(crate) sent: Instant,
    /// Bytes of it reported through [`crate::Scheduler::on_progress`] so far (at most a
    /// piece).
    pub(crate) got: u64,
}

/// The caller's name for one source of this content (for example an index into its peer
/// table). The scheduler only compares ids; it never interprets them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SourceId(pub u64);

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What kind of source this is; the kinds follow different piece-selection rules (see the
/// crate docs).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SourceKind {
    /// Another client of the same office (over the LAN). May hold only part of the
    /// content, and its holdings grow.
    Peer,
    /// A source outside the office, reached over the WAN (a parent-office peer). May hold
    /// only part of the content, and its holdings grow; like an origin it is asked only
    /// for pieces that no active [`SourceKind::Peer`] holds, lowest index first.
    Upstream,
    /// The origin (HTTP range requests or a file path). Holds everything; read in order and
    /// only for pieces no peer holds.
    Origin,
}

/// What a source holds, as last reported.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Have {
    /// Every piece (a seeding peer, or the origin).
    All,
    /// The pieces in the set; its length must equal the content's piece count.
    Some(PieceSet),
}

/// Where a source stands in this download.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SourceState {
    /// Gets requests.
    Active,
    /// Dropped after too many strikes; may be added again (a later
    /// [`crate::Scheduler::add_source`] reactivates it).
    Dropped,
    /// Sent a bad piece: refused for the rest of this content, even if added again.
    Banned,
}

/// Counters and estimates of one source, for progress displays and reports.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceStats {
    /// Peer, upstream or origin.
    pub kind: SourceKind,
    /// The shared bottleneck it sits behind, if the caller declared one.
    pub group: Option<GroupId>,
    /// Active, dropped or banned.
    pub state: SourceState,
    /// Verified bytes received from it, duplicates included (bytes).
    pub bytes_received: u64,
    /// Verified pieces received from it, duplicates included.
    pub pieces_received: u64,
    /// Bytes received for pieces already held (endgame duplicates, late arrivals).
    pub wasted_bytes: u64,
    /// Smoothed delivery rate (bytes/s); `None` until the first sample.
    pub rate: Option<f64>,
    /// Requests outstanding now.
    pub in_flight: u32,
    /// Requests it may have outstanding now (its adaptive window).
    pub window: u32,
    /// Consecutive strikes (timeouts and transport failures since the last delivery).
    pub strikes: u32,
    /// Requests that timed out, all time.
    pub timeouts: u64,
    /// Requests that failed in transport, all time.
    pub transport_failures: u64,
    /// Requests it answered with "don't have", all time.
    pub unavailable: u64,
    /// Requests it answered with "busy", all time.
    pub busy: u64,
    /// Bad pieces it sent (0 or 1: the first one bans it).
    pub bad_pieces: u64,
    /// Pieces it holds that the scheduler would request from it (reported minus refused).
    pub pieces_held: u32,
    /// Back after a drop for strikes, and no whole piece delivered since: it is asked
    /// only for pieces no other active source holds, and what it claims holds back no
    /// origin or upstream read (see the crate docs, "Probation").
    pub probation: bool,
}

/// Internal state of one source.
#[derive(Debug)]
pub(crate) struct Source {
    pub(crate) kind: SourceKind,
    pub(crate) state: SourceState,
    /// Last reported holdings.
    pub(crate) reported: PieceSet,
    /// `reported` minus pieces under a "don't have" hold; counted in availability while
    /// the source is active.
    pub(crate) effective: PieceSet,
    /// Pieces it said it does not have, until when.
    pub(crate) denied_until: BTreeMap<u32, Instant>,
    /// Pieces that timed out or failed on it, kept away from it until when (unless no one
    /// else holds them).
    pub(crate) avoid_until: BTreeMap<u32, Instant>,
    /// Outstanding requests: piece → when sent, bytes reported.
    pub(crate) in_flight: BTreeMap<u32, Request>,
    /// The shared bottleneck it sits behind.
    pub(crate) group: Option<GroupId>,
    pub(crate) window: u32,
    pub(crate) rate: Option<f64>,
    /// Start of the current rate sample (set while requests are outstanding).
    pub(crate) sample_mark: Option<Instant>,
    pub(crate) sample_bytes: u64,
    pub(crate) last_progress: Option<Instant>,
    pub(crate) last_penalty: Option<Instant>,
    /// Silence so far (time with requests outstanding and nothing delivered), up to
    /// `silent_mark`.
    pub(crate) silent_for: Duration,
    /// Since when the silence has been running, while requests are outstanding.
    pub(crate) silent_mark: Option<Instant>,
    /// Doublings of its deadlines after rounds of timeouts (see
    /// [`crate::SchedConfig::max_backoff`]).
    pub(crate) backoff: u32,
    pub(crate) strikes: u32,
    pub(crate) bytes_received: u64,
    pub(crate) pieces_received: u64,
    pub(crate) wasted_bytes: u64,
    pub(crate) timeouts: u64,
    pub(crate) transport_failures: u64,
    pub(crate) unavailable: u64,
    pub(crate) busy: u64,
    pub(crate) bad_pieces: u64,
    /// See [`SourceStats::probation`].
    pub(crate) probation: bool,
}

impl Source {
    pub(crate) fn new(kind: SourceKind, piece_count: u32, window: u32) -> Self {
        let reported = match kind {
            SourceKind::Origin => PieceSet::full(piece_count),
            SourceKind::Peer | SourceKind::Upstream => PieceSet::new(piece_count),
        };
        Self {
            kind,
            state: SourceState::Active,
            effective: reported.clone(),
            reported,
            denied_until: BTreeMap::new(),
            avoid_until: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            group: None,
            window,
            rate: None,
            sample_mark: None,
            sample_bytes: 0,
            last_progress: None,
            last_penalty: None,
            silent_for: Duration::ZERO,
            silent_mark: None,
            backoff: 0,
            strikes: 0,
            bytes_received: 0,
            pieces_received: 0,
            wasted_bytes: 0,
            timeouts: 0,
            transport_failures: 0,
            unavailable: 0,
            busy: 0,
            bad_pieces: 0,
            probation: false,
        }
    }

    pub(crate) fn stats(&self) -> SourceStats {
        SourceStats {
            kind: self.kind,
            group: self.group,
            state: self.state,
            bytes_received: self.bytes_received,
            pieces_received: self.pieces_received,
            wasted_bytes: self.wasted_bytes,
            rate: self.rate,
            in_flight: self.in_flight.len() as u32,
            window: self.window,
            strikes: self.strikes,
            timeouts: self.timeouts,
            transport_failures: self.transport_failures,
            unavailable: self.unavailable,
            busy: self.busy,
            bad_pieces: self.bad_pieces,
            pieces_held: if self.state == SourceState::Active {
                self.effective.count()
            } else {
                0
            },
            probation: self.probation,
        }
    }

    /// How long it has had requests outstanding without delivering anything, as of
    /// `now`.
    pub(crate) fn silence(&self, now: Instant) -> Duration {
        self.silent_for
            + self
                .silent_mark
                .map_or(Duration::ZERO, |m| now.saturating_duration_since(m))
    }

    /// It delivered something at `now`: the silence ends.
    pub(crate) fn heard(&mut self, now: Instant) {
        self.silent_for = Duration::ZERO;
        if self.silent_mark.is_some() {
            self.silent_mark = Some(now);
        }
    }

    pub(crate) fn is_active(&self) -> bool {
        self.state == SourceState::Active
    }

    /// The kind its holdings count as in availability: a peer on probation counts like
    /// an upstream source, so its claims shield no piece from the origin and do not
    /// make a piece look common to rarest-first.
    pub(crate) fn avail_kind(&self) -> SourceKind {
        if self.probation && self.kind == SourceKind::Peer {
            SourceKind::Upstream
        } else {
            self.kind
        }
    }
}
