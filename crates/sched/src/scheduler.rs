//! The scheduler: which piece to request from which source, and what to do with outcomes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::avail::Pieces;
use crate::group::{Group, Meter, sample};
use crate::pieceset::bits;
use crate::rng::SplitMix64;
use crate::source::{Request, Source};
use crate::{
    Diagnosis, GroupId, GroupStats, Have, PieceSet, SchedConfig, SchedError, SourceId, SourceKind,
    SourceState, SourceStats, StallCause,
};

/// How a request failed, as seen by the caller.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Failure {
    /// The caller cancelled it because [`Scheduler::timeouts`] listed it (late, or
    /// stuck near the end while another source is idle). Slowness, not a fault: it
    /// strikes only a source silent for [`SchedConfig::silence_limit`] (or a group gone
    /// quiet).
    Timeout,
    /// The source answered that it does not have the piece after all.
    Unavailable,
    /// The stream or connection failed (reset, closed, I/O error) before a whole piece
    /// arrived.
    Transport,
    /// The piece arrived but did not match the piece map (BLAKE3).
    BadPiece,
    /// The source holds the piece but cannot serve it now (overloaded, disk busy): the
    /// piece goes elsewhere if anyone else holds it, the source's window halves, and
    /// it earns no strike.
    Busy,
    /// The failure was on this side (our disk is full, we are shutting down): the
    /// piece simply goes back to the pool and the source is not judged at all.
    Local,
}

/// What the caller must do after [`Scheduler::on_piece_failed`].
#[derive(Clone, PartialEq, Eq, Debug)]
#[must_use = "a dropped source's other requests must be cancelled, and a bad piece reported"]
pub enum Verdict {
    /// Keep using the source; the piece went back to the pool (or is still requested
    /// elsewhere).
    Continue,
    /// Stop using the source for this content.
    Drop(Dropped),
}

/// A source the scheduler stopped using.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Dropped {
    /// The source.
    pub source: SourceId,
    /// Why.
    pub reason: DropReason,
    /// Its other outstanding requests: cancel them (they are back in the pool already).
    pub cancel: Vec<u32>,
}

/// Why a source was dropped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DropReason {
    /// It sent a piece that failed verification: banned for this content; report it to the
    /// server.
    BadPiece,
    /// It reached [`SchedConfig::max_strikes`] consecutive timeouts or transport failures;
    /// it may be added again later (for example when the server lists it again).
    Strikes,
}

impl DropReason {
    /// True if the server must hear about it (a bad piece is evidence of a faulty or
    /// hostile client).
    pub fn report_to_server(self) -> bool {
        matches!(self, DropReason::BadPiece)
    }
}

/// What the caller must do after [`Scheduler::on_piece_received`].
#[derive(Clone, PartialEq, Eq, Debug, Default)]
#[must_use = "duplicate requests listed in `cancel` must be cancelled"]
pub struct Received {
    /// True if the piece was missing until now (false: a duplicate or late copy).
    pub new: bool,
    /// True if every piece is now held.
    pub complete: bool,
    /// Other outstanding requests for this piece (endgame duplicates): cancel them. They are
    /// already forgotten by the scheduler and do not count against those sources.
    pub cancel: Vec<(SourceId, u32)>,
}

/// A snapshot of the whole download, for progress bars and reports.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Progress {
    /// Pieces in the content.
    pub pieces: u32,
    /// Pieces held and verified.
    pub have: u32,
    /// Distinct pieces with at least one outstanding request.
    pub in_flight_pieces: u32,
    /// Outstanding requests (endgame duplicates counted once per source).
    pub requests: u32,
    /// Sources currently active ("sources" on a progress bar).
    pub active_sources: u32,
    /// Verified bytes received from all sources, duplicates included (bytes).
    pub bytes_received: u64,
    /// Bytes received for pieces already held (bytes).
    pub wasted_bytes: u64,
    /// True while in endgame (every missing piece is requested).
    pub endgame: bool,
    /// Missing pieces that no active source holds: if nothing is in flight and this is
    /// not zero, the download waits for more sources.
    pub unobtainable: u32,
}

/// How many equally rare pieces a peer's choice is drawn from (see `pick_fresh`).
const TIE_SAMPLE: u32 = 32;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum HoldKind {
    /// "Don't have": the piece leaves the source's effective set (and availability).
    Denied,
    /// Timed out or failed: the source is asked for it only if no one else holds it.
    Avoid,
}

/// The piece scheduler for one content item. See the crate docs for the policy.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedConfig,
    piece_count: u32,
    /// Pieces held and verified.
    have: PieceSet,
    /// Outstanding requests: piece → sources asked (more than one only in endgame).
    in_flight: BTreeMap<u32, Vec<SourceId>>,
    /// Per piece: active sources whose effective set holds it; the pool of missing,
    /// unrequested pieces.
    avail: Pieces,
    sources: BTreeMap<SourceId, Source>,
    /// Expiry queue of holds: (until, source, piece, kind).
    holds: BTreeSet<(Instant, SourceId, u32, HoldKind)>,
    rng: SplitMix64,
    bytes_received: u64,
    wasted_bytes: u64,
    /// Shared bottlenecks, by the caller's id.
    groups: BTreeMap<GroupId, Group>,
    /// The whole download's aggregate rate and last delivery.
    meter: Meter,
    /// Best aggregate rate seen (bytes/s).
    best_rate: Option<f64>,
    dropped_strikes: u32,
    banned: u32,
    timeouts_total: u64,
    transport_total: u64,
}

impl Scheduler {
    /// A scheduler for content of `piece_count` pieces, of which `already_have` are held
    /// and verified (for example from a partial download kept across a restart).
    pub fn new(
        piece_count: u32,
        already_have: impl IntoIterator<Item = u32>,
        config: SchedConfig,
    ) -> Result<Self, SchedError> {
        config.validate()?;
        let have = PieceSet::from_pieces(piece_count, already_have)?;
        let mut pool = PieceSet::new(piece_count);
        for p in have.iter_absent() {
            pool.insert(p);
        }
        let avail = Pieces::new(pool);
        Ok(Self {
            rng: SplitMix64::new(config.seed),
            cfg: config,
            piece_count,
            have,
            in_flight: BTreeMap::new(),
            avail,
            sources: BTreeMap::new(),
            holds: BTreeSet::new(),
            bytes_received: 0,
            wasted_bytes: 0,
            groups: BTreeMap::new(),
            meter: Meter::default(),
            best_rate: None,
            dropped_strikes: 0,
            banned: 0,
            timeouts_total: 0,
            transport_total: 0,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &SchedConfig {
        &self.cfg
    }

    // ----- sources -------------------------------------------------------------------

    /// Adds a source. A peer or upstream source starts holding nothing (report its pieces
    /// with [`Scheduler::set_source_pieces`]); an origin starts holding everything.
    ///
    /// Re-adding a source dropped for strikes reactivates it with a fresh window and
    /// strike count (its counters and group are kept). A banned source is refused.
    pub fn add_source(&mut self, id: SourceId, kind: SourceKind) -> Result<(), SchedError> {
        let window = self.cfg.initial_in_flight;
        match self.sources.get(&id).map(|s| s.state) {
            Some(SourceState::Active) => return Err(SchedError::AlreadyAdded(id)),
            Some(SourceState::Banned) => return Err(SchedError::Banned(id)),
            Some(SourceState::Dropped) => {
                let old = self.sources.remove(&id).expect("present");
                let mut s = Source::new(kind, self.piece_count, window);
                s.bytes_received = old.bytes_received;
                s.pieces_received = old.pieces_received;
                s.wasted_bytes = old.wasted_bytes;
                s.timeouts = old.timeouts;
                s.transport_failures = old.transport_failures;
                s.unavailable = old.unavailable;
                s.busy = old.busy;
                s.group = old.group;
                // Dropped for strikes and listed again: it must prove itself before its
                // claims count (a peer that claims everything and serves nothing would
                // otherwise hold every missing piece back from the origin, again and
                // again).
                s.probation = true;
                self.sources.insert(id, s);
            }
            None => {
                self.sources
                    .insert(id, Source::new(kind, self.piece_count, window));
            }
        }
        let s = &self.sources[&id];
        let empty = PieceSet::new(self.piece_count);
        self.avail.apply(s.avail_kind(), &empty, &s.effective);
        Ok(())
    }

    /// Replaces what a source holds. Call it whenever a fresher report arrives (the
    /// server's list, about every second, or the peer's own announcement). Pieces the
    /// source recently refused stay refused until their hold expires.
    ///
    /// Reports for dropped or banned sources are ignored (`Ok`).
    pub fn set_source_pieces(&mut self, id: SourceId, have: Have) -> Result<(), SchedError> {
        let reported = match have {
            Have::All => PieceSet::full(self.piece_count),
            Have::Some(set) => {
                if set.len() != self.piece_count {
                    return Err(SchedError::HaveLength {
                        expected: self.piece_count,
                        got: set.len(),
                    });
                }
                set
            }
        };
        let s = self
            .sources
            .get_mut(&id)
            .ok_or(SchedError::UnknownSource(id))?;
        if !s.is_active() {
            return Ok(());
        }
        let mut effective = reported.clone();
        for &p in s.denied_until.keys() {
            effective.remove(p);
        }
        self.avail.apply(s.avail_kind(), &s.effective, &effective);
        s.reported = reported;
        s.effective = effective;
        Ok(())
    }

    /// Records that a source now holds one more piece (a peer's "have" announcement).
    pub fn source_has_piece(&mut self, id: SourceId, piece: u32) -> Result<(), SchedError> {
        self.check_piece(piece)?;
        let s = self
            .sources
            .get_mut(&id)
            .ok_or(SchedError::UnknownSource(id))?;
        if !s.is_active() {
            return Ok(());
        }
        s.reported.insert(piece);
        if !s.denied_until.contains_key(&piece) && s.effective.insert(piece) {
            self.avail.add(s.avail_kind(), piece);
        }
        Ok(())
    }

    /// Forgets a source (it went away, or the caller closed it). Returns its outstanding
    /// requests, which go back to the pool: cancel them. A banned source stays banned.
    pub fn remove_source(&mut self, id: SourceId) -> Result<Vec<u32>, SchedError> {
        let state = self
            .sources
            .get(&id)
            .ok_or(SchedError::UnknownSource(id))?
            .state;
        match state {
            SourceState::Banned => Ok(Vec::new()),
            SourceState::Dropped => {
                self.leave_group(id);
                self.sources.remove(&id);
                Ok(Vec::new())
            }
            SourceState::Active => {
                let cancel = self.deactivate(id, SourceState::Dropped);
                self.leave_group(id);
                self.sources.remove(&id);
                Ok(cancel)
            }
        }
    }

    /// Declares that `source` sits behind the shared bottleneck `group` (for example the
    /// WAN link of the office it is in), or behind none (`None`, the default). Sources of
    /// one group are paced and judged together (see the crate docs): the group's
    /// outstanding requests follow its measured aggregate rate, deadlines follow the
    /// group's rate and queue, and timeouts while the group keeps delivering earn no
    /// strikes. Requests already outstanding stay where they are. The group survives a
    /// drop and re-add of the source, but not [`Scheduler::remove_source`].
    pub fn set_source_group(
        &mut self,
        source: SourceId,
        group: Option<GroupId>,
    ) -> Result<(), SchedError> {
        let old = self
            .sources
            .get(&source)
            .ok_or(SchedError::UnknownSource(source))?
            .group;
        if old == group {
            return Ok(());
        }
        self.leave_group(source);
        let min = self.cfg.min_in_flight;
        let s = self.sources.get_mut(&source).expect("checked above");
        s.group = group;
        match group {
            Some(g) => {
                let window = self.cfg.initial_in_flight;
                let grp = self.groups.entry(g).or_insert_with(|| Group::new(window));
                grp.members.insert(source);
                if !s.in_flight.is_empty() && grp.meter.mark.is_none() {
                    grp.meter.mark = s.sample_mark;
                }
            }
            None => {
                if s.is_active() {
                    s.window = s.window.max(min);
                }
            }
        }
        Ok(())
    }

    /// The group `source` was declared in, if any.
    pub fn source_group(&self, source: SourceId) -> Option<GroupId> {
        self.sources.get(&source).and_then(|s| s.group)
    }

    /// Counters of one group, if any source was declared in it.
    pub fn group_stats(&self, group: GroupId) -> Option<GroupStats> {
        let g = self.groups.get(&group)?;
        Some(GroupStats {
            members: g.members.len() as u32,
            active: self.group_active(group),
            rate: g.meter.rate,
            window: g.window,
            in_flight: self.group_in_flight(group),
        })
    }

    // ----- progress within pieces ----------------------------------------------------

    /// `bytes` more bytes of outstanding pieces arrived from `source` (the caller's fetch
    /// reports data as it streams in, before the piece is whole and verified). They feed
    /// the source's (and its group's) rate estimate and count as a delivery for the
    /// deadlines, so a piece that is still flowing is never late.
    ///
    /// The bytes are credited to the source's outstanding requests oldest first, each up
    /// to `piece_size`; [`Scheduler::on_piece_received`] later counts, for the rate, only
    /// the part of the piece not credited yet, so nothing is counted twice. Bytes beyond
    /// what the outstanding requests can take, and bytes from a source with nothing
    /// outstanding (a cancelled request still draining), are ignored. Reporting is
    /// optional: a caller that never calls this gets the behaviour of whole pieces only.
    pub fn on_progress(&mut self, source: SourceId, bytes: u64, now: Instant) {
        self.expire(now);
        let piece_size = self.cfg.piece_size;
        let Some(s) = self.sources.get_mut(&source) else {
            return;
        };
        if !s.is_active() || s.in_flight.is_empty() || bytes == 0 {
            return;
        }
        let mut order: Vec<(Instant, u32)> =
            s.in_flight.iter().map(|(&p, r)| (r.sent, p)).collect();
        order.sort_unstable();
        let mut left = bytes;
        for (_, p) in order {
            if left == 0 {
                break;
            }
            let r = s.in_flight.get_mut(&p).expect("listed above");
            let take = left.min(piece_size.saturating_sub(r.got));
            r.got += take;
            left -= take;
        }
        let credited = bytes - left;
        if credited > 0 {
            self.credit(source, credited, now);
        }
    }

    // ----- requests ------------------------------------------------------------------

    /// The piece to request from `source` now, or `None` if it should get nothing more
    /// (window full, holds nothing useful, unknown or inactive). Call it in a loop until
    /// `None` for every source whenever something changed (a piece arrived, a request
    /// failed, a have-set grew, a source joined).
    pub fn next_request(&mut self, source: SourceId, now: Instant) -> Option<u32> {
        self.expire(now);
        let s = self.sources.get(&source)?;
        if !s.is_active() || s.in_flight.len() as u32 >= s.window {
            return None;
        }
        if let Some(g) = s.group
            && !self.group_admits(g, s.in_flight.len() as u32)
        {
            return None;
        }
        let piece = self
            .pick_fresh(source)
            .or_else(|| self.pick_duplicate(source, now))?;
        self.issue(source, piece, now);
        Some(piece)
    }

    /// Outstanding requests past their deadline, as `(source, piece)`. The caller cancels
    /// each and reports it with [`Failure::Timeout`]. A request's deadline is
    /// `max(sent, source's last delivery) + clamp(k × piece_size × outstanding / rate,
    /// min_timeout, max_timeout)`, at most `sent + max_timeout`; or `sent +
    /// initial_timeout` while the rate is unknown. In a group, the rate is the group's
    /// and the queue is the group's bytes outstanding up to this request (see the crate
    /// docs). A delivery is a whole piece or bytes reported by
    /// [`Scheduler::on_progress`].
    ///
    /// Near the end ([`Scheduler::in_endgame`]) a request of an ungrouped source is also
    /// listed once it is stuck (silent for half its deadline) while another source that
    /// would take the piece is idle: the piece moves there instead of waiting out its
    /// deadline, and no second copy is fetched.
    pub fn timeouts(&self, now: Instant) -> Vec<(SourceId, u32)> {
        let mut out = Vec::new();
        for (&id, s) in &self.sources {
            for (&p, r) in &s.in_flight {
                let due = self.deadline(s, r.sent);
                let due = self.takeover_at(id, p).map_or(due, |t| t.min(due));
                if due <= now {
                    out.push((id, p));
                }
            }
        }
        out
    }

    /// Lifts the holds that have expired by `now` (pieces kept away from a source for a
    /// while). Every call that takes `now` does this too; call it before
    /// [`Scheduler::next_deadline`] when the caller asks for no request this turn (a
    /// closed WAN link, a pause), or the expired hold stays the earliest deadline and a
    /// timer armed for it fires at once, again and again.
    pub fn expire_holds(&mut self, now: Instant) {
        self.expire(now);
    }

    /// The earliest instant at which something times out or a hold expires: arm a timer
    /// for it, then call [`Scheduler::timeouts`] and [`Scheduler::next_request`] (or
    /// [`Scheduler::expire_holds`]).
    pub fn next_deadline(&self) -> Option<Instant> {
        let req = self
            .sources
            .iter()
            .flat_map(|(&id, s)| {
                s.in_flight.iter().map(move |(&p, r)| {
                    let due = self.deadline(s, r.sent);
                    self.takeover_at(id, p).map_or(due, |t| t.min(due))
                })
            })
            .min();
        let hold = self.holds.first().map(|h| h.0);
        match (req, hold) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ----- outcomes ------------------------------------------------------------------

    /// A piece arrived from `source` and passed verification; `bytes` is its length (the
    /// whole piece, also when parts of it were reported through
    /// [`Scheduler::on_progress`]: the rate estimate counts only the part not reported
    /// yet for this request). Also accepted for requests already forgotten (a late copy
    /// after a timeout, or from a removed source): verified data is never thrown away.
    pub fn on_piece_received(
        &mut self,
        source: SourceId,
        piece: u32,
        bytes: u64,
        now: Instant,
    ) -> Result<Received, SchedError> {
        self.check_piece(piece)?;
        self.expire(now);
        let request = self.forget_request(source, piece);
        let was_new = !self.have.contains(piece);
        self.bytes_received += bytes;
        if !was_new {
            self.wasted_bytes += bytes;
        }
        if let Some(s) = self.sources.get_mut(&source) {
            s.bytes_received += bytes;
            s.pieces_received += 1;
            if !was_new {
                s.wasted_bytes += bytes;
            }
            s.last_progress = Some(now);
            s.heard(now);
            if request.is_some() {
                s.strikes = 0;
                s.backoff = s.backoff.saturating_sub(1);
                if s.probation && s.is_active() {
                    // Proven: its claims count again.
                    let before = s.avail_kind();
                    s.probation = false;
                    let none = PieceSet::new(self.piece_count);
                    self.avail.apply(before, &s.effective, &none);
                    self.avail.apply(s.kind, &none, &s.effective);
                }
            }
        }
        if let Some(r) = request {
            self.credit(source, bytes.saturating_sub(r.got), now);
        }
        self.settle(source);
        self.pause_silence(source, now);
        if !was_new {
            return Ok(Received {
                new: false,
                complete: self.is_complete(),
                cancel: Vec::new(),
            });
        }
        self.have.insert(piece);
        self.avail.pool_remove(piece);
        let mut cancel = Vec::new();
        if let Some(others) = self.in_flight.remove(&piece) {
            for o in others {
                if let Some(s) = self.sources.get_mut(&o) {
                    s.in_flight.remove(&piece);
                    self.settle(o);
                    self.pause_silence(o, now);
                }
                cancel.push((o, piece));
            }
        }
        Ok(Received {
            new: true,
            complete: self.is_complete(),
            cancel,
        })
    }

    /// A piece this scheduler counted as received could not be kept after all (the write
    /// to the local disk failed, for example because it is full): it is missing again and
    /// goes back to the pool, to be asked of a source that holds it. No source is judged:
    /// the piece was good. Returns false if the piece was not held (nothing changes).
    pub fn on_piece_lost(&mut self, piece: u32) -> Result<bool, SchedError> {
        self.check_piece(piece)?;
        if !self.have.remove(piece) {
            return Ok(false);
        }
        if !self.in_flight.contains_key(&piece) {
            self.avail.pool_insert(piece);
        }
        Ok(true)
    }

    /// A request to `source` for `piece` failed. See [`Failure`] for the kinds and the
    /// crate docs for the consequences. Failures of requests the scheduler already
    /// forgot (cancelled duplicates, removed sources) are ignored, except that a bad piece
    /// always bans and "don't have" always corrects the have-set.
    ///
    /// | failure | piece | source |
    /// |---|---|---|
    /// | `Timeout` | back to the pool, elsewhere first | ungrouped and silent under `silence_limit`: window to minimum, deadlines back off if `max_backoff` allows, no strike; else strike; window to minimum; rate halved |
    /// | `Transport` | back to the pool, elsewhere first | strike; window halved |
    /// | `Unavailable` | back to the pool; not asked of this source for the holdoff | none |
    /// | `Busy` | back to the pool, elsewhere first | window halved |
    /// | `Local` | back to the pool | none |
    /// | `BadPiece` | back to the pool | banned: [`Verdict::Drop`] |
    ///
    /// Strikes count once per round (see the crate docs); at `max_strikes` the source is
    /// dropped: [`Verdict::Drop`].
    pub fn on_piece_failed(
        &mut self,
        source: SourceId,
        piece: u32,
        failure: Failure,
        now: Instant,
    ) -> Result<Verdict, SchedError> {
        self.check_piece(piece)?;
        self.expire(now);
        let group_live = self.group_live(source, piece, now);
        let silence = self
            .sources
            .get(&source)
            .map_or(Duration::ZERO, |s| s.silence(now));
        let sent = self.forget_request(source, piece).map(|r| r.sent);
        self.settle(source);
        self.pause_silence(source, now);
        let floor = self.window_floor(source);
        let Some(s) = self.sources.get_mut(&source) else {
            return Ok(Verdict::Continue);
        };
        if !s.is_active() {
            return Ok(Verdict::Continue);
        }
        match failure {
            Failure::BadPiece => {
                s.bad_pieces += 1;
                self.banned += 1;
                let cancel = self.deactivate(source, SourceState::Banned);
                Ok(Verdict::Drop(Dropped {
                    source,
                    reason: DropReason::BadPiece,
                    cancel,
                }))
            }
            Failure::Unavailable => {
                s.unavailable += 1;
                self.hold(source, piece, now, HoldKind::Denied);
                Ok(Verdict::Continue)
            }
            Failure::Local => Ok(Verdict::Continue),
            Failure::Busy => {
                if sent.is_none() {
                    return Ok(Verdict::Continue);
                }
                s.busy += 1;
                s.window = (s.window / 2).max(floor);
                self.hold(source, piece, now, HoldKind::Avoid);
                Ok(Verdict::Continue)
            }
            Failure::Timeout | Failure::Transport => {
                let Some(sent) = sent else {
                    return Ok(Verdict::Continue);
                };
                if failure == Failure::Timeout {
                    s.timeouts += 1;
                    self.timeouts_total += 1;
                } else {
                    s.transport_failures += 1;
                    self.transport_total += 1;
                }
                if failure == Failure::Timeout && group_live {
                    // Its group kept delivering: the path is alive, this source is only
                    // slow (or starved by its neighbours). It gets less work, no strike.
                    s.window = floor;
                    s.rate = s.rate.map(|r| r / 2.0);
                    self.hold(source, piece, now, HoldKind::Avoid);
                    return Ok(Verdict::Continue);
                }
                // One penalty per round: requests sent before the last penalty failed for
                // the same reason as the one that earned it.
                let round = s.last_penalty.is_none_or(|lp| sent >= lp);
                if failure == Failure::Timeout
                    && s.group.is_none()
                    && silence < self.cfg.silence_limit
                {
                    // Slow, not bad: it delivered something recently (a busy peer serving
                    // others, a disk catching up). Less work and longer deadlines, no
                    // strike; the piece goes elsewhere first.
                    if round {
                        s.last_penalty = Some(now);
                        s.window = floor;
                        s.backoff = (s.backoff + 1).min(self.cfg.max_backoff);
                    }
                    self.hold(source, piece, now, HoldKind::Avoid);
                    return Ok(Verdict::Continue);
                }
                let strike = round;
                let group = s.group;
                if strike {
                    s.strikes += 1;
                    s.last_penalty = Some(now);
                    if failure == Failure::Timeout {
                        // Nothing arrived for k times the expected time: like TCP after a
                        // retransmission timeout, start again from the smallest window.
                        // Its deadlines no longer back off: it has been silent for the
                        // silence limit, so the next rounds judge it quickly.
                        s.window = floor;
                        s.rate = s.rate.map(|r| r / 2.0);
                        s.backoff = 0;
                    } else {
                        s.window = (s.window / 2).max(floor);
                    }
                }
                let strikes = s.strikes;
                if strike
                    && failure == Failure::Timeout
                    && let Some(g) = group.and_then(|g| self.groups.get_mut(&g))
                {
                    // The whole path went quiet: the group starts again small too.
                    g.window = self.cfg.min_in_flight;
                    g.meter.rate = g.meter.rate.map(|r| r / 2.0);
                }
                self.hold(source, piece, now, HoldKind::Avoid);
                if strikes >= self.cfg.max_strikes {
                    self.dropped_strikes += 1;
                    let cancel = self.deactivate(source, SourceState::Dropped);
                    return Ok(Verdict::Drop(Dropped {
                        source,
                        reason: DropReason::Strikes,
                        cancel,
                    }));
                }
                Ok(Verdict::Continue)
            }
        }
    }

    // ----- progress ------------------------------------------------------------------

    /// Pieces in the content.
    pub fn piece_count(&self) -> u32 {
        self.piece_count
    }

    /// True once every piece is held.
    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    /// Pieces held and verified.
    pub fn have_count(&self) -> u32 {
        self.have.count()
    }

    /// True if `piece` is held.
    pub fn has_piece(&self, piece: u32) -> bool {
        self.have.contains(piece)
    }

    /// The held pieces.
    pub fn have(&self) -> &PieceSet {
        &self.have
    }

    /// Number of pieces still missing.
    pub fn missing(&self) -> u32 {
        self.piece_count - self.have.count()
    }

    /// The missing pieces, in increasing order.
    pub fn missing_pieces(&self) -> impl Iterator<Item = u32> + '_ {
        self.have.iter_absent()
    }

    /// Outstanding requests (a piece requested from two sources in endgame counts twice).
    pub fn in_flight(&self) -> u32 {
        self.in_flight.values().map(|v| v.len() as u32).sum()
    }

    /// Outstanding requests as `(source, piece)`, in piece order.
    pub fn requests(&self) -> impl Iterator<Item = (SourceId, u32)> + '_ {
        self.in_flight
            .iter()
            .flat_map(|(&p, v)| v.iter().map(move |&s| (s, p)))
    }

    /// True near the end: every missing piece is requested and no more pieces are
    /// missing than there are active sources. Only then may an idle source duplicate a
    /// request that is stuck (see the crate docs).
    pub fn in_endgame(&self) -> bool {
        !self.is_complete()
            && self.avail.pool().count() == 0
            && self.missing() <= self.active_sources().max(1)
    }

    /// Missing pieces that no active source holds.
    pub fn unobtainable(&self) -> u32 {
        let any = self.avail.any().words();
        self.have
            .words()
            .iter()
            .zip(any)
            .map(|(&h, &a)| (!h & !a).count_ones())
            .sum::<u32>()
            - self.have.padding()
    }

    /// Active sources.
    pub fn active_sources(&self) -> u32 {
        self.sources.values().filter(|s| s.is_active()).count() as u32
    }

    /// Counters of one source (also of dropped and banned ones until removed).
    pub fn source_stats(&self, id: SourceId) -> Option<SourceStats> {
        self.sources.get(&id).map(Source::stats)
    }

    /// Counters of every known source, in id order.
    pub fn sources(&self) -> impl Iterator<Item = (SourceId, SourceStats)> + '_ {
        self.sources.iter().map(|(&id, s)| (id, s.stats()))
    }

    /// True if `source` would be asked for `piece` at all: it is active, reports the
    /// piece, and has not refused it recently.
    pub fn source_offers(&self, source: SourceId, piece: u32) -> bool {
        self.sources
            .get(&source)
            .is_some_and(|s| s.is_active() && s.effective.contains(piece))
    }

    /// A snapshot for progress bars and reports.
    pub fn progress(&self) -> Progress {
        Progress {
            pieces: self.piece_count,
            have: self.have.count(),
            in_flight_pieces: self.in_flight.len() as u32,
            requests: self.in_flight(),
            active_sources: self.active_sources(),
            bytes_received: self.bytes_received,
            wasted_bytes: self.wasted_bytes,
            endgame: self.in_endgame(),
            unobtainable: self.unobtainable(),
        }
    }

    /// Why the download cannot progress (or that it can), for the caller's stall message:
    /// dropped and banned sources, timeouts, the best aggregate rate the sources ever
    /// delivered, time since the last bytes, and the missing pieces no active source
    /// holds. Its `Display` is one sentence, e.g. "every source failed on a ~3.9 Mbit/s
    /// path (6 sources dropped: strikes); 14 timeouts" or "no active source holds pieces
    /// 40..64 (24 of 30 missing)".
    pub fn diagnose(&self, now: Instant) -> Diagnosis {
        let unobtainable = self.unobtainable();
        let any = self.avail.any();
        let mut ranges: Vec<std::ops::Range<u32>> = Vec::new();
        if unobtainable > 0 {
            for p in self.have.iter_absent() {
                if any.contains(p) {
                    continue;
                }
                if let Some(r) = ranges.last_mut()
                    && r.end == p
                {
                    r.end += 1;
                } else if ranges.len() == 8 {
                    break;
                } else {
                    ranges.push(p..p + 1);
                }
            }
        }
        let in_flight = self.in_flight();
        let active = self.active_sources();
        let cause = if self.is_complete() {
            StallCause::Complete
        } else if active == 0 {
            StallCause::NoSources
        } else if in_flight > 0 {
            StallCause::Waiting
        } else if unobtainable > 0 {
            StallCause::Unobtainable
        } else {
            StallCause::Idle
        };
        Diagnosis {
            cause,
            pieces: self.piece_count,
            missing: self.missing(),
            in_flight,
            active_sources: active,
            dropped_strikes: self.dropped_strikes,
            banned: self.banned,
            timeouts: self.timeouts_total,
            transport_failures: self.transport_total,
            rate: self.meter.rate,
            best_rate: self.best_rate,
            since_delivery: self.meter.last.map(|l| now.saturating_duration_since(l)),
            unobtainable,
            unobtainable_ranges: ranges,
        }
    }

    // ----- internals -----------------------------------------------------------------

    fn check_piece(&self, piece: u32) -> Result<(), SchedError> {
        if piece >= self.piece_count {
            return Err(SchedError::PieceOutOfRange {
                piece,
                piece_count: self.piece_count,
            });
        }
        Ok(())
    }

    /// A piece no one is asked for yet: the origin takes the lowest-numbered piece no peer
    /// holds; a peer takes the rarest (fewest peers hold it), chosen uniformly at random
    /// among the first [`TIE_SAMPLE`] pieces of that rarity met in a scan that starts at
    /// a random word. The scan stops there once the rarity is the lowest any pool piece
    /// has, so the usual cost, when every peer holds everything, is a handful of words;
    /// and clients of one office choosing among the same fresh pieces of their RVP pick
    /// different ones, which they then trade with each other instead of all taking
    /// every piece from the RVP.
    fn pick_fresh(&mut self, id: SourceId) -> Option<u32> {
        let s = &self.sources[&id];
        let avoided = |p: u32| s.avoid_until.contains_key(&p) && self.avail.total(p) > 1;
        let pool = self.avail.pool().words();
        let held = s.effective.words();
        if s.probation {
            // Only what no other active source holds: a source on probation is a last
            // resort until it delivers.
            for (i, (&pw, &ew)) in pool.iter().zip(held).enumerate() {
                for b in bits(pw & ew) {
                    let p = i as u32 * 64 + b;
                    if self.avail.total(p) == 1 {
                        return Some(p);
                    }
                }
            }
            return None;
        }
        if s.kind != SourceKind::Peer {
            let peer_held = self.avail.peer_any().words();
            for (i, ((&pw, &ew), &hw)) in pool.iter().zip(held).zip(peer_held).enumerate() {
                for b in bits(pw & ew & !hw) {
                    let p = i as u32 * 64 + b;
                    if !avoided(p) {
                        return Some(p);
                    }
                }
            }
            return None;
        }
        let floor = self.avail.rarest_level()?;
        let words = pool.len();
        let start = self.rng.below(words as u32) as usize;
        let mut best: Option<(u32, u32)> = None; // (peers holding, piece)
        let mut ties = 0u32;
        'scan: for k in 0..words {
            let i = (start + k) % words;
            for b in bits(pool[i] & held[i]) {
                let p = i as u32 * 64 + b;
                if avoided(p) {
                    continue;
                }
                let peers = self.avail.peers(p);
                match best {
                    Some((r, _)) if peers > r => continue,
                    Some((r, _)) if peers == r => {
                        ties += 1;
                        if self.rng.below(ties) == 0 {
                            best = Some((peers, p));
                        }
                    }
                    _ => {
                        best = Some((peers, p));
                        ties = 1;
                    }
                }
                if peers == floor && ties >= TIE_SAMPLE {
                    break 'scan;
                }
            }
        }
        best.map(|(_, p)| p)
    }

    /// In endgame, a piece already requested elsewhere that this source would likely
    /// deliver sooner: fewest copies first, then the latest expected arrival. A copy
    /// behind the same bottleneck as this source is duplicated only once it is overdue:
    /// before that a second copy would only split the same link.
    fn pick_duplicate(&self, id: SourceId, now: Instant) -> Option<u32> {
        if self.cfg.endgame_max_copies < 2 || !self.in_endgame() {
            return None;
        }
        let s = &self.sources[&id];
        if !s.in_flight.is_empty() || s.probation {
            // Only an idle source takes over (and not one on probation): one that is busy would only queue the copy.
            return None;
        }
        let remote = s.kind != SourceKind::Peer;
        let piece_size = self.cfg.piece_size as f64;
        let mine = match s.group.and_then(|g| Some((g, self.groups[&g].meter.rate?))) {
            Some((g, rate)) if rate > 0.0 => Some(
                now + secs(
                    (self.group_bytes_ahead(g, None) as f64 + piece_size) / rate,
                    self.cfg.max_timeout,
                ),
            ),
            _ => s.rate.filter(|&r| r > 0.0).map(|r| {
                now + secs(
                    (s.in_flight.len() as f64 + 1.0) * piece_size / r,
                    self.cfg.max_timeout,
                )
            }),
        };
        let mut best: Option<(usize, Instant, u32)> = None;
        for (&p, holders) in &self.in_flight {
            if holders.len() as u32 >= self.cfg.endgame_max_copies
                || holders.contains(&id)
                || !s.effective.contains(p)
                || s.avoid_until.contains_key(&p)
                || (remote && self.avail.peers(p) > 0)
            {
                continue;
            }
            let same_link_on_time = s.group.is_some_and(|g| {
                holders.iter().any(|h| {
                    self.sources[h].group == Some(g) && self.eta(h, p).is_none_or(|eta| eta >= now)
                })
            });
            if same_link_on_time {
                continue;
            }
            // Only a copy that is stuck: silent for half its deadline. A copy merely later
            // than our estimate (a busy peer, a noisy rate) arrives soon, and a second one
            // would cross the network for nothing.
            if holders.iter().any(|h| self.stuck_at(h, p) > now) {
                continue;
            }
            let existing = holders
                .iter()
                .map(|h| self.expected_arrival(h, p, now))
                .min()
                .expect("an in-flight piece has a holder");
            if mine.is_some_and(|m| m >= existing) {
                continue;
            }
            let better = match best {
                None => true,
                Some((c, e, _)) => holders.len() < c || (holders.len() == c && existing > e),
            };
            if better {
                best = Some((holders.len(), existing, p));
            }
        }
        best.map(|(_, _, p)| p)
    }

    /// When the request for `piece` on `h` should arrive, assuming the source serves its
    /// requests in the order sent at its measured rate. A request already overdue by that
    /// estimate is presumed stuck and expected at its deadline, so endgame copies go
    /// first to pieces held up by stalled sources.
    fn expected_arrival(&self, h: &SourceId, piece: u32, now: Instant) -> Instant {
        let s = &self.sources[h];
        let sent = s.in_flight[&piece].sent;
        match self.eta(h, piece) {
            Some(eta) if eta < now => self.deadline(s, sent),
            Some(eta) => eta,
            None => sent + self.cfg.initial_timeout,
        }
    }

    /// When an idle source takes over the request for `piece` on `id` (see
    /// [`Scheduler::timeouts`]): `None` unless the download is near its end, `id` is
    /// ungrouped, and another active source that would be asked for the piece now
    /// holds it and has nothing outstanding.
    fn takeover_at(&self, id: SourceId, piece: u32) -> Option<Instant> {
        let s = &self.sources[&id];
        if s.group.is_some() || !self.in_endgame() {
            return None;
        }
        let idle = self.sources.iter().any(|(&h, o)| {
            h != id
                && o.is_active()
                && o.in_flight.is_empty()
                && !o.probation
                && o.window > 0
                && o.effective.contains(piece)
                && !o.avoid_until.contains_key(&piece)
                && (o.kind == SourceKind::Peer || self.avail.peers(piece) == 0)
                && o.group.is_none_or(|g| self.group_admits(g, 0))
        });
        idle.then(|| self.stuck_at(&id, piece))
    }

    /// When the request for `piece` on `h` counts as stuck, for endgame: halfway from the
    /// later of its sending and its source's last delivery to its deadline.
    fn stuck_at(&self, h: &SourceId, piece: u32) -> Instant {
        let s = &self.sources[h];
        let sent = s.in_flight[&piece].sent;
        let deadline = self.deadline(s, sent);
        let base = s
            .last_progress
            .map_or(sent, |lp| lp.max(sent))
            .min(deadline);
        base + (deadline - base) / 2
    }

    /// The estimate behind [`Scheduler::expected_arrival`], before the overdue check:
    /// the bytes still due up to and including this request (its source's, or its
    /// group's when the group's rate is known) at that rate, from the later of its
    /// sending and the last delivery. `None` while no rate is known.
    fn eta(&self, h: &SourceId, piece: u32) -> Option<Instant> {
        let s = &self.sources[h];
        let sent = s.in_flight[&piece].sent;
        let (rate, ahead, last) = self.pace(s, sent)?;
        let start = last.map_or(sent, |lp| lp.max(sent));
        Some(start + secs(ahead as f64 / rate, self.cfg.max_timeout))
    }

    /// The rate (bytes/s), the bytes due up to and including the request sent at `sent`,
    /// and the last delivery that a request of `s` is judged by: its group's when `s` is
    /// grouped and the group's rate is known, else its own. `None` while no rate is
    /// known.
    fn pace(&self, s: &Source, sent: Instant) -> Option<(f64, u64, Option<Instant>)> {
        if let Some(g) = s.group
            && let Some(grp) = self.groups.get(&g)
            && let Some(rate) = grp.meter.rate.filter(|&r| r > 0.0)
        {
            return Some((rate, self.group_bytes_ahead(g, Some(sent)), grp.meter.last));
        }
        let rate = s.rate.filter(|&r| r > 0.0)?;
        let ahead = s
            .in_flight
            .values()
            .filter(|r| r.sent <= sent)
            .map(|r| self.cfg.piece_size.saturating_sub(r.got))
            .sum();
        Some((rate, ahead, s.last_progress))
    }

    /// When the request sent at `sent` to `s` counts as late: `k × piece_size ×
    /// outstanding / rate` (clamped) after the later of its sending and the source's last
    /// delivery, but never more than `max_timeout` after its sending, so one stuck
    /// request cannot hide behind a source that keeps delivering others.
    ///
    /// In a group whose rate is known the budget is `k × (group bytes due up to this
    /// request) / group rate` (clamped), and the request is late when the whole group
    /// delivered nothing for one budget, or this source delivered nothing for two.
    fn deadline(&self, s: &Source, sent: Instant) -> Instant {
        let cap = sent + self.cfg.max_timeout;
        if let Some(budget) = self.group_budget(s, sent) {
            let g = &self.groups[&s.group.expect("grouped")];
            let group_base = g.meter.last.map_or(sent, |lp| lp.max(sent));
            let own_base = s.last_progress.map_or(sent, |lp| lp.max(sent));
            return (group_base + budget).min(own_base + budget * 2).min(cap);
        }
        match s.rate.filter(|&r| r > 0.0) {
            Some(rate) => {
                let base = s.last_progress.map_or(sent, |lp| lp.max(sent));
                let expect = self.cfg.timeout_factor
                    * self.cfg.piece_size as f64
                    * s.in_flight.len().max(1) as f64
                    / rate;
                let budget = secs(expect, self.cfg.max_timeout).max(self.cfg.min_timeout);
                let budget = budget
                    .saturating_mul(1 << s.backoff.min(16))
                    .min(self.cfg.max_timeout);
                (base + budget).min(cap)
            }
            None => sent + self.cfg.initial_timeout,
        }
    }

    /// The deadline budget of a grouped request sent at `sent` (`None` if `s` is not
    /// grouped or its group's rate is unknown).
    fn group_budget(&self, s: &Source, sent: Instant) -> Option<Duration> {
        let g = s.group?;
        let rate = self.groups.get(&g)?.meter.rate.filter(|&r| r > 0.0)?;
        let ahead = self.group_bytes_ahead(g, Some(sent)).max(1) as f64;
        let expect = self.cfg.timeout_factor * ahead / rate;
        Some(secs(expect, self.cfg.max_timeout).max(self.cfg.min_timeout))
    }

    /// Bytes still due from the group's outstanding requests sent at or before `upto`
    /// (all of them for `None`).
    fn group_bytes_ahead(&self, g: GroupId, upto: Option<Instant>) -> u64 {
        let Some(grp) = self.groups.get(&g) else {
            return 0;
        };
        grp.members
            .iter()
            .filter_map(|m| self.sources.get(m))
            .flat_map(|s| s.in_flight.values())
            .filter(|r| upto.is_none_or(|t| r.sent <= t))
            .map(|r| self.cfg.piece_size.saturating_sub(r.got))
            .sum()
    }

    /// True if `source` is grouped and its group delivered something since the request
    /// for `piece` was sent and within that request's budget before `now`: the path is
    /// alive, so a timeout of this request says the source is slow, not the path dead.
    fn group_live(&self, source: SourceId, piece: u32, now: Instant) -> bool {
        let Some(s) = self.sources.get(&source) else {
            return false;
        };
        let (Some(g), Some(r)) = (s.group, s.in_flight.get(&piece)) else {
            return false;
        };
        let Some(last) = self.groups.get(&g).and_then(|g| g.meter.last) else {
            return false;
        };
        let budget = self
            .group_budget(s, r.sent)
            .unwrap_or(self.cfg.initial_timeout);
        last > r.sent && now.saturating_duration_since(last) < budget
    }

    /// Requests outstanding across group `g`.
    fn group_in_flight(&self, g: GroupId) -> u32 {
        self.groups.get(&g).map_or(0, |grp| {
            grp.members
                .iter()
                .filter_map(|m| self.sources.get(m))
                .map(|s| s.in_flight.len() as u32)
                .sum()
        })
    }

    /// Active sources in group `g`.
    fn group_active(&self, g: GroupId) -> u32 {
        self.groups.get(&g).map_or(0, |grp| {
            grp.members
                .iter()
                .filter(|m| self.sources.get(m).is_some_and(Source::is_active))
                .count() as u32
        })
    }

    /// May a member of `g` with `mine` requests outstanding get one more? Only while the
    /// group is below its window, and the member below its equal share of it among the
    /// active members that hold some missing piece (so the first source the caller asks
    /// does not take the whole window of a slow link).
    fn group_admits(&self, g: GroupId, mine: u32) -> bool {
        let Some(grp) = self.groups.get(&g) else {
            return true;
        };
        if self.group_in_flight(g) >= grp.window {
            return false;
        }
        let have = self.have.words();
        let useful = grp
            .members
            .iter()
            .filter_map(|m| self.sources.get(m))
            .filter(|s| {
                s.is_active()
                    && s.effective
                        .words()
                        .iter()
                        .zip(have)
                        .any(|(&e, &h)| e & !h != 0)
            })
            .count() as u32;
        mine < grp.window.div_ceil(useful.max(1))
    }

    /// The smallest window of `source`: `min_in_flight`, or 1 in a group (the group's
    /// own window keeps the floor of `min_in_flight`).
    fn window_floor(&self, source: SourceId) -> u32 {
        match self.sources.get(&source).and_then(|s| s.group) {
            Some(_) => 1,
            None => self.cfg.min_in_flight,
        }
    }

    /// `bytes` of outstanding requests arrived from `id` (a known source): feeds the
    /// rate estimates of the source, its group and the whole download, and adapts their
    /// windows.
    fn credit(&mut self, id: SourceId, bytes: u64, now: Instant) {
        let floor = self.window_floor(id);
        let cfg = &self.cfg;
        let s = self.sources.get_mut(&id).expect("crediting a known source");
        s.last_progress = Some(now);
        s.heard(now);
        if let Some(rate) = sample(
            &mut s.rate,
            &mut s.sample_mark,
            &mut s.sample_bytes,
            bytes,
            now,
            cfg.min_rate_sample,
            cfg.rate_smoothing,
        ) {
            s.window = grow(s.window, window_for(cfg, rate, floor, cfg.max_in_flight));
        }
        if let Some(g) = s.group {
            let active = self.group_active(g).max(1);
            let cfg = &self.cfg;
            let grp = self.groups.get_mut(&g).expect("a member's group exists");
            if let Some(rate) = grp.meter.credit(bytes, now, cfg) {
                let cap = cfg.max_in_flight.saturating_mul(active);
                grp.window = grow(grp.window, window_for(cfg, rate, cfg.min_in_flight, cap));
            }
        }
        if let Some(rate) = self.meter.credit(bytes, now, &self.cfg) {
            self.best_rate = Some(self.best_rate.map_or(rate, |b| b.max(rate)));
        }
    }

    /// Restarts the rate samples that `id`'s last requests ended (a sample only covers
    /// time with something outstanding).
    fn settle(&mut self, id: SourceId) {
        let Some(s) = self.sources.get_mut(&id) else {
            return;
        };
        if s.in_flight.is_empty() {
            s.sample_mark = None;
            s.sample_bytes = 0;
        }
        if let Some(g) = s.group
            && self.group_in_flight(g) == 0
            && let Some(grp) = self.groups.get_mut(&g)
        {
            grp.meter.mark = None;
            grp.meter.bytes = 0;
        }
        if self.in_flight.is_empty() {
            self.meter.mark = None;
            self.meter.bytes = 0;
        }
    }

    /// Stops the silence clock of `id` at `now` if it has nothing outstanding any more
    /// (idle time never counts as silence).
    fn pause_silence(&mut self, id: SourceId, now: Instant) {
        if let Some(s) = self.sources.get_mut(&id)
            && s.in_flight.is_empty()
            && let Some(m) = s.silent_mark.take()
        {
            s.silent_for += now.saturating_duration_since(m);
        }
    }

    fn leave_group(&mut self, id: SourceId) {
        let Some(g) = self.sources.get(&id).and_then(|s| s.group) else {
            return;
        };
        if let Some(grp) = self.groups.get_mut(&g) {
            grp.members.remove(&id);
            if grp.members.is_empty() {
                self.groups.remove(&g);
            }
        }
        if let Some(s) = self.sources.get_mut(&id) {
            s.group = None;
        }
    }

    fn issue(&mut self, id: SourceId, piece: u32, now: Instant) {
        if self.in_flight.is_empty() {
            self.meter.start(now);
        }
        let group = self.sources.get(&id).and_then(|s| s.group);
        if let Some(g) = group
            && self.group_in_flight(g) == 0
            && let Some(grp) = self.groups.get_mut(&g)
        {
            grp.meter.start(now);
        }
        self.avail.pool_remove(piece);
        self.in_flight.entry(piece).or_default().push(id);
        let s = self
            .sources
            .get_mut(&id)
            .expect("issuing to a known source");
        if s.in_flight.is_empty() {
            s.sample_mark = Some(now);
            s.sample_bytes = 0;
            if s.silent_mark.is_none() {
                s.silent_mark = Some(now);
            }
        }
        s.in_flight.insert(piece, Request { sent: now, got: 0 });
    }

    /// Removes the request (source, piece) if outstanding; returns it. A missing piece
    /// left with no request goes back to the pool. Rate samples are left to
    /// [`Scheduler::settle`], so that a delivery can still close the current sample.
    fn forget_request(&mut self, id: SourceId, piece: u32) -> Option<Request> {
        let req = self.sources.get_mut(&id)?.in_flight.remove(&piece)?;
        if let Some(v) = self.in_flight.get_mut(&piece) {
            v.retain(|&h| h != id);
            if v.is_empty() {
                self.in_flight.remove(&piece);
                if !self.have.contains(piece) {
                    self.avail.pool_insert(piece);
                }
            }
        }
        Some(req)
    }

    /// Takes a source out of service; returns its outstanding requests (now back in the
    /// pool).
    fn deactivate(&mut self, id: SourceId, state: SourceState) -> Vec<u32> {
        let pieces: Vec<u32> = self.sources[&id].in_flight.keys().copied().collect();
        for &p in &pieces {
            self.forget_request(id, p);
        }
        let n = self.piece_count;
        let s = self
            .sources
            .get_mut(&id)
            .expect("deactivating a known source");
        let empty = PieceSet::new(n);
        self.avail.apply(s.avail_kind(), &s.effective, &empty);
        s.state = state;
        s.reported = empty.clone();
        s.effective = empty;
        s.denied_until.clear();
        s.avoid_until.clear();
        s.sample_mark = None;
        s.sample_bytes = 0;
        s.rate = None;
        s.window = 0;
        self.holds.retain(|h| h.1 != id);
        self.settle(id);
        pieces
    }

    fn hold(&mut self, id: SourceId, piece: u32, now: Instant, kind: HoldKind) {
        let until = now + self.cfg.holdoff;
        let s = self
            .sources
            .get_mut(&id)
            .expect("holding on a known source");
        match kind {
            HoldKind::Denied => {
                s.denied_until.insert(piece, until);
                if s.effective.remove(piece) {
                    self.avail.sub(s.avail_kind(), piece);
                }
            }
            HoldKind::Avoid => {
                s.avoid_until.insert(piece, until);
            }
        }
        self.holds.insert((until, id, piece, kind));
    }

    /// Lifts holds that have expired by `now`.
    fn expire(&mut self, now: Instant) {
        while let Some(&(until, id, piece, kind)) = self.holds.first() {
            if until > now {
                break;
            }
            self.holds.pop_first();
            let Some(s) = self.sources.get_mut(&id) else {
                continue;
            };
            let map = match kind {
                HoldKind::Denied => &mut s.denied_until,
                HoldKind::Avoid => &mut s.avoid_until,
            };
            // A newer hold on the same piece replaced this entry's expiry.
            if map.get(&piece) != Some(&until) {
                continue;
            }
            map.remove(&piece);
            if kind == HoldKind::Denied
                && s.is_active()
                && s.reported.contains(piece)
                && s.effective.insert(piece)
            {
                self.avail.add(s.avail_kind(), piece);
            }
        }
    }
}

/// The window that queues `queue_horizon` worth of work at `rate` (bytes/s), between
/// `floor` and `cap` requests.
fn window_for(cfg: &SchedConfig, rate: f64, floor: u32, cap: u32) -> u32 {
    let w = (rate * cfg.queue_horizon.as_secs_f64() / cfg.piece_size as f64).ceil();
    let w = if w.is_finite() && w > 0.0 {
        w.min(f64::from(u32::MAX)) as u32
    } else {
        0
    };
    w.clamp(floor, cap.max(floor))
}

/// The next window towards `target`: down at once, up at most twofold per sample.
fn grow(window: u32, target: u32) -> u32 {
    if target > window {
        target.min(window.saturating_mul(2))
    } else {
        target
    }
}

/// Seconds as a duration, capped (guards against huge or non-finite values).
fn secs(s: f64, cap: Duration) -> Duration {
    if s.is_finite() && s >= 0.0 && s < cap.as_secs_f64() {
        Duration::from_secs_f64(s)
    } else {
        cap
    }
}
