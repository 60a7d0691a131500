//! A deterministic discrete-event simulation that drives a [`Scheduler`] against
//! virtual sources of given rates, latencies, holdings and faults.
//!
//! Used by the tests (policy outcomes such as "a 10× slower peer does not delay the
//! download") and by the benchmark. Time is virtual: a fixed base [`Instant`] plus
//! offsets, so a run takes microseconds of real time and gives the same answer every
//! time.
//!
//! Each source serves its requests one at a time, in arrival order, at its rate; a
//! request reaches it half a round trip after being sent and the piece comes back half a
//! round trip after it is served. A cancelled request that is already being served still
//! occupies the source until done (its bytes are thrown away), as with a stream reset that
//! arrives late.
//!
//! [`run_office`] simulates a whole office instead: one client reading the origin and
//! every client fetching from every other, each with its own scheduler.

mod office;

pub use office::{OfficeConfig, OfficeReport, run_office, wan_copy_time};

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use crate::{
    DropReason, Failure, Have, PieceSet, SchedConfig, Scheduler, SourceId, SourceKind, Verdict,
};

/// What a simulated source holds.
#[derive(Clone, Debug)]
pub enum SimHave {
    /// Everything from the start.
    All,
    /// A fixed set.
    Pieces(PieceSet),
    /// Piece `i` from `start + i × interval` on: a peer downstream of a reader that
    /// fetches the content in order (the office's RVP).
    Growing {
        /// When piece 0 appears (virtual time).
        start: Duration,
        /// Time between consecutive pieces appearing.
        interval: Duration,
    },
}

/// How a simulated source misbehaves.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Serves every request.
    None,
    /// Goes silent at this virtual time: no more deliveries, no errors.
    StopsAt(Duration),
    /// Its `n`-th delivery (counting from 1) fails verification.
    BadPieceNth(u32),
    /// Claims to hold these pieces too, but answers "don't have" for them.
    Refuses(PieceSet),
}

/// One simulated source.
#[derive(Clone, Debug)]
pub struct SimSource {
    /// Peer or origin.
    pub kind: SourceKind,
    /// Service rate (bytes/s).
    pub rate: f64,
    /// Round-trip time.
    pub rtt: Duration,
    /// Holdings.
    pub have: SimHave,
    /// Misbehaviour.
    pub fault: Fault,
}

impl SimSource {
    /// An honest peer holding everything.
    pub fn peer(rate: f64, rtt: Duration) -> Self {
        Self {
            kind: SourceKind::Peer,
            rate,
            rtt,
            have: SimHave::All,
            fault: Fault::None,
        }
    }

    /// An honest origin.
    pub fn origin(rate: f64, rtt: Duration) -> Self {
        Self {
            kind: SourceKind::Origin,
            ..Self::peer(rate, rtt)
        }
    }

    /// The same source with other holdings.
    pub fn with_have(mut self, have: SimHave) -> Self {
        self.have = have;
        self
    }

    /// The same source with a fault.
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    fn truly_has(&self, piece: u32, at: Duration) -> bool {
        match &self.have {
            SimHave::All => true,
            SimHave::Pieces(set) => set.contains(piece),
            SimHave::Growing { start, interval } => at >= *start + interval.saturating_mul(piece),
        }
    }

    fn refuses(&self, piece: u32) -> bool {
        matches!(&self.fault, Fault::Refuses(set) if set.contains(piece))
    }

    fn report(&self, piece_count: u32, at: Duration) -> Have {
        let mut set = match &self.have {
            SimHave::All => return Have::All,
            SimHave::Pieces(set) => set.clone(),
            SimHave::Growing { .. } => {
                let mut s = PieceSet::new(piece_count);
                for p in 0..piece_count {
                    if !self.truly_has(p, at) {
                        break;
                    }
                    s.insert(p);
                }
                s
            }
        };
        if let Fault::Refuses(extra) = &self.fault {
            for p in extra.iter() {
                set.insert(p);
            }
        }
        Have::Some(set)
    }
}

/// Parameters of one simulation run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Pieces in the content.
    pub piece_count: u32,
    /// Scheduler configuration; its `piece_size` is the size of every piece (bytes).
    pub sched: SchedConfig,
    /// Interval of have-set refreshes (the server's list).
    pub refresh: Duration,
    /// Virtual time after which the run gives up.
    pub limit: Duration,
}

/// Outcome of one source in a run.
#[derive(Clone, Debug, PartialEq)]
pub struct SimSourceReport {
    /// Verified pieces it delivered (duplicates included).
    pub pieces: u64,
    /// Bytes it delivered for pieces already held.
    pub wasted_bytes: u64,
    /// Most requests it had outstanding at once.
    pub max_in_flight: u32,
    /// Why it was dropped, if it was.
    pub dropped: Option<DropReason>,
}

/// Outcome of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct SimReport {
    /// Virtual time at which the last piece arrived; `None` if the run hit its limit or
    /// ran out of events first.
    pub completed: Option<Duration>,
    /// Per source, in the order given.
    pub sources: Vec<SimSourceReport>,
    /// Requests reported as timed out.
    pub timeouts: u32,
    /// Requests the scheduler duplicated in endgame.
    pub duplicates: u32,
    /// Broken invariants seen while running (empty when the scheduler behaved).
    pub violations: Vec<String>,
}

/// Time the download would take if every byte moved at the sum of the rates of all
/// sources (the ideal a perfect scheduler approaches).
pub fn ideal_time(piece_count: u32, piece_size: u64, sources: &[SimSource]) -> Duration {
    let total: f64 = sources.iter().map(|s| s.rate).sum();
    Duration::from_secs_f64(f64::from(piece_count) * piece_size as f64 / total)
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Event {
    /// Request `req` reaches its source.
    Arrive(u64),
    /// Source `src` finishes serving its current request.
    Finish(usize),
    /// The answer to request `req` reaches the client.
    Answer(u64),
    Refresh,
    Wake,
}

#[derive(Clone, Copy, Debug)]
struct Req {
    src: usize,
    piece: u32,
    cancelled: bool,
    answer: Option<Failure>,
}

#[derive(Default)]
struct Server {
    queue: VecDeque<u64>,
    busy: Option<u64>,
    delivered: u32,
}

/// Runs the simulation to completion (or to `cfg.limit`).
pub fn run(cfg: &SimConfig, sources: &[SimSource]) -> SimReport {
    Sim::new(cfg, sources).run()
}

struct Sim<'a> {
    cfg: &'a SimConfig,
    srcs: &'a [SimSource],
    sched: Scheduler,
    base: Instant,
    now: Duration,
    seq: u64,
    events: BinaryHeap<Reverse<(Duration, u64, Event)>>,
    reqs: BTreeMap<u64, Req>,
    /// (source, piece) → current request id.
    current: BTreeMap<(usize, u32), u64>,
    servers: Vec<Server>,
    reported: Vec<Have>,
    report: SimReport,
    wake_at: Option<Duration>,
}

impl<'a> Sim<'a> {
    fn new(cfg: &'a SimConfig, srcs: &'a [SimSource]) -> Self {
        let sched = Scheduler::new(cfg.piece_count, [], cfg.sched.clone())
            .expect("simulation config is valid");
        Self {
            cfg,
            srcs,
            sched,
            base: Instant::now(),
            now: Duration::ZERO,
            seq: 0,
            events: BinaryHeap::new(),
            reqs: BTreeMap::new(),
            current: BTreeMap::new(),
            servers: srcs.iter().map(|_| Server::default()).collect(),
            reported: Vec::new(),
            report: SimReport {
                completed: None,
                sources: srcs
                    .iter()
                    .map(|_| SimSourceReport {
                        pieces: 0,
                        wasted_bytes: 0,
                        max_in_flight: 0,
                        dropped: None,
                    })
                    .collect(),
                timeouts: 0,
                duplicates: 0,
                violations: Vec::new(),
            },
            wake_at: None,
        }
    }

    fn at(&self) -> Instant {
        self.base + self.now
    }

    fn push(&mut self, t: Duration, e: Event) {
        self.seq += 1;
        self.events.push(Reverse((t, self.seq, e)));
    }

    fn violation(&mut self, what: String) {
        if self.report.violations.len() < 20 {
            self.report
                .violations
                .push(format!("t={:?}: {what}", self.now));
        }
    }

    fn run(mut self) -> SimReport {
        for (i, s) in self.srcs.iter().enumerate() {
            self.sched
                .add_source(SourceId(i as u64), s.kind)
                .expect("fresh source");
        }
        self.refresh();
        self.schedule();
        self.push(self.cfg.refresh, Event::Refresh);
        while let Some(Reverse((t, _, e))) = self.events.pop() {
            if t > self.cfg.limit {
                break;
            }
            self.now = t;
            match e {
                Event::Arrive(r) => self.arrive(r),
                Event::Finish(s) => self.finish(s),
                Event::Answer(r) => self.answer(r),
                Event::Refresh => {
                    self.refresh();
                    self.push(self.now + self.cfg.refresh, Event::Refresh);
                }
                Event::Wake => {
                    if self.wake_at == Some(t) {
                        self.wake_at = None;
                    }
                }
            }
            if self.sched.is_complete() {
                self.report.completed = Some(self.now);
                break;
            }
            self.expire();
            self.schedule();
        }
        self.report
    }

    fn refresh(&mut self) {
        self.reported.clear();
        for (i, s) in self.srcs.iter().enumerate() {
            let have = s.report(self.cfg.piece_count, self.now);
            self.reported.push(have.clone());
            if s.kind == SourceKind::Peer {
                self.sched
                    .set_source_pieces(SourceId(i as u64), have)
                    .expect("sizes match");
            }
        }
    }

    fn schedule(&mut self) {
        for i in 0..self.srcs.len() {
            let id = SourceId(i as u64);
            loop {
                let endgame = self.sched.in_endgame();
                let Some(p) = self.sched.next_request(id, self.at()) else {
                    break;
                };
                self.check_request(i, p, endgame);
                self.send(i, p);
            }
        }
        if let Some(d) = self.sched.next_deadline() {
            let t = d.saturating_duration_since(self.base);
            if self.wake_at.is_none_or(|w| t < w) {
                self.wake_at = Some(t);
                self.push(t, Event::Wake);
            }
        }
    }

    fn check_request(&mut self, i: usize, p: u32, endgame: bool) {
        let claims = match &self.reported[i] {
            Have::All => true,
            Have::Some(set) => set.contains(p),
        };
        if !claims {
            self.violation(format!(
                "piece {p} requested from source {i}, which never reported it"
            ));
        }
        if self.sched.has_piece(p) {
            self.violation(format!("piece {p} requested although held"));
        }
        let others = self
            .current
            .iter()
            .filter(|&(&(s, q), _)| q == p && s != i)
            .count();
        if others > 0 {
            self.report.duplicates += 1;
            if !endgame {
                self.violation(format!("piece {p} requested twice outside endgame"));
            }
        }
        let stats = self.sched.source_stats(SourceId(i as u64)).expect("known");
        let r = &mut self.report.sources[i];
        r.max_in_flight = r.max_in_flight.max(stats.in_flight);
        if stats.in_flight > self.cfg.sched.max_in_flight || stats.in_flight > stats.window {
            let w = stats.window;
            self.violation(format!(
                "source {i} has {} requests outstanding, window {w}",
                stats.in_flight
            ));
        }
    }

    fn send(&mut self, i: usize, p: u32) {
        self.seq += 1;
        let id = self.seq;
        let s = &self.srcs[i];
        let half = s.rtt / 2;
        let answer = if s.refuses(p) {
            Some(Failure::Unavailable)
        } else {
            None
        };
        self.reqs.insert(
            id,
            Req {
                src: i,
                piece: p,
                cancelled: false,
                answer,
            },
        );
        self.current.insert((i, p), id);
        if answer.is_some() {
            self.push(self.now + s.rtt, Event::Answer(id));
        } else {
            self.push(self.now + half, Event::Arrive(id));
        }
    }

    fn stopped(&self, i: usize) -> bool {
        matches!(self.srcs[i].fault, Fault::StopsAt(t) if self.now >= t)
    }

    fn arrive(&mut self, r: u64) {
        let req = self.reqs[&r];
        if req.cancelled {
            return;
        }
        let i = req.src;
        self.servers[i].queue.push_back(r);
        if self.servers[i].busy.is_none() {
            self.start_next(i);
        }
    }

    fn start_next(&mut self, i: usize) {
        while let Some(r) = self.servers[i].queue.pop_front() {
            if self.reqs[&r].cancelled {
                continue;
            }
            self.servers[i].busy = Some(r);
            let service =
                Duration::from_secs_f64(self.cfg.sched.piece_size as f64 / self.srcs[i].rate);
            self.push(self.now + service, Event::Finish(i));
            return;
        }
    }

    fn finish(&mut self, i: usize) {
        let Some(r) = self.servers[i].busy.take() else {
            return;
        };
        if self.stopped(i) {
            return; // silent from now on; nothing more is served
        }
        if !self.reqs[&r].cancelled {
            self.servers[i].delivered += 1;
            if self.srcs[i].fault == Fault::BadPieceNth(self.servers[i].delivered) {
                self.reqs.get_mut(&r).expect("known").answer = Some(Failure::BadPiece);
            }
            self.push(self.now + self.srcs[i].rtt / 2, Event::Answer(r));
        }
        self.start_next(i);
    }

    fn answer(&mut self, r: u64) {
        let req = self.reqs[&r];
        if req.cancelled {
            return;
        }
        self.current.remove(&(req.src, req.piece));
        let id = SourceId(req.src as u64);
        let at = self.at();
        match req.answer {
            None => {
                let size = self.cfg.sched.piece_size;
                let got = self
                    .sched
                    .on_piece_received(id, req.piece, size, at)
                    .expect("piece in range");
                let rep = &mut self.report.sources[req.src];
                rep.pieces += 1;
                if !got.new {
                    rep.wasted_bytes += size;
                }
                for (s, p) in got.cancel {
                    self.cancel(s.0 as usize, p);
                }
            }
            Some(f) => {
                let v = self
                    .sched
                    .on_piece_failed(id, req.piece, f, at)
                    .expect("piece in range");
                self.verdict(req.src, v);
            }
        }
    }

    fn verdict(&mut self, i: usize, v: Verdict) {
        if let Verdict::Drop(d) = v {
            self.report.sources[i].dropped = Some(d.reason);
            for p in d.cancel {
                self.cancel(i, p);
            }
        }
    }

    fn cancel(&mut self, i: usize, p: u32) {
        if let Some(r) = self.current.remove(&(i, p)) {
            self.reqs.get_mut(&r).expect("known").cancelled = true;
        }
    }

    fn expire(&mut self) {
        for (s, p) in self.sched.timeouts(self.at()) {
            self.report.timeouts += 1;
            let i = s.0 as usize;
            self.cancel(i, p);
            let v = self
                .sched
                .on_piece_failed(s, p, Failure::Timeout, self.at())
                .expect("piece in range");
            self.verdict(i, v);
        }
    }
}
