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
//! Sources may instead sit behind a shared bottleneck ([`SimLink`], run with
//! [`run_linked`]): a link of fixed rate shared fairly between connections (each source
//! is one connection, capped at its own rate, e.g. what congestion control achieves
//! under loss; the link may also carry other greedy connections, such as another
//! client's download). There a source serves all its requests at once, as streams
//! splitting its connection's share equally, and the client can hear of bytes as they
//! arrive ([`SimLink::progress`]). Loss is modelled as delay: each lost packet of a piece
//! adds one round trip before the piece is whole, and a lost request reaches the source
//! three round trips late (a QUIC probe timeout). A cancelled stream stops half a round
//! trip after the cancel (when the reset reaches the source); the bytes that crossed the
//! link until then count in [`SimReport::bytes_in`].
//!
//! [`run_office`] simulates a whole office instead: one client reading the origin and
//! every client fetching from every other, each with its own scheduler.

mod office;

pub use office::{OfficeConfig, OfficeReport, run_office, wan_copy_time};

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use crate::rng::SplitMix64;
use crate::{
    Diagnosis, DropReason, Failure, GroupId, Have, PieceSet, SchedConfig, Scheduler, SourceId,
    SourceKind, Verdict,
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
    /// Honest but busy: from `every` on, every `every` it serves nothing for `pause`
    /// (other clients' requests, a disk catching up), then goes on where it left off.
    /// Requests queue meanwhile; none is lost. Only for sources not behind a link.
    Stalls {
        /// Time between the starts of two pauses (and before the first).
        every: Duration,
        /// Length of each pause.
        pause: Duration,
    },
}

/// A shared bottleneck between the client and the sources that name it
/// ([`SimSource::behind`]), such as the WAN link of the client's office.
#[derive(Clone, Debug)]
pub struct SimLink {
    /// The link's id; sources behind it say so with [`SimSource::behind`].
    pub id: u64,
    /// Capacity (bytes/s), shared max-min fairly between the connections using it.
    pub rate: f64,
    /// Buffer in front of the link (bytes): while the link is busy, data waits
    /// `queue / rate` longer.
    pub queue: u64,
    /// Packet loss probability (packets of 1,448 bytes): each lost packet delays its
    /// piece by one round trip; a lost request arrives three round trips late.
    pub loss: f64,
    /// Other greedy connections sharing the link all the time (another client's
    /// download, say).
    pub cross_flows: u32,
    /// How often the client reports bytes that arrived, as
    /// [`Scheduler::on_progress`]; `None`: whole pieces only.
    pub progress: Option<Duration>,
    /// Whether the client declares the sources behind it as one group
    /// ([`Scheduler::set_source_group`]).
    pub declare_group: bool,
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
    /// The shared link it sends through ([`SimLink::id`]), if any.
    pub link: Option<u64>,
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
            link: None,
        }
    }

    /// An honest upstream source (outside the office) holding everything.
    pub fn upstream(rate: f64, rtt: Duration) -> Self {
        Self {
            kind: SourceKind::Upstream,
            ..Self::peer(rate, rtt)
        }
    }

    /// The same source, sending through the shared link `link`.
    pub fn behind(mut self, link: u64) -> Self {
        self.link = Some(link);
        self
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

    /// When a source may start serving a request at `at`: at once, or at the end of the
    /// pause it is in.
    fn resume_at(&self, at: Duration) -> Duration {
        let Fault::Stalls { every, pause } = self.fault else {
            return at;
        };
        if every.is_zero() {
            return at;
        }
        let k = (at.as_nanos() / every.as_nanos()) as u32;
        let start = every * k;
        if k >= 1 && at < start + pause {
            start + pause
        } else {
            at
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
    /// Bytes that reached the client, including pieces cancelled or thrown away (for a
    /// source behind a link: what crossed the link; otherwise whole pieces served).
    pub bytes_in: u64,
    /// The scheduler's own account at the end ([`Scheduler::diagnose`]).
    pub diagnosis: Diagnosis,
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
    /// Link `l` may have a stream finishing (stale unless the epoch matches).
    LinkDone(usize, u64),
    /// Link `l`'s client reports bytes that arrived.
    Tick(usize),
    /// `bytes` of request `req` reach the client before the piece is whole.
    Progress(u64, u64),
    /// The reset of cancelled request `req` reaches its source: its stream stops.
    Stop(u64),
    /// Something changed on link `l` (a source behind it went silent).
    Recompute(usize),
}

/// Bytes per packet, for the loss model.
const PACKET: f64 = 1448.0;

#[derive(Clone, Debug)]
struct Stream {
    req: u64,
    src: usize,
    remaining: f64,
    crossed: f64,
    reported: u64,
    rate: f64,
    /// Recovery time of the packets it loses, added when it completes.
    extra: Duration,
}

#[derive(Clone, Debug, Default)]
struct LinkState {
    streams: Vec<Stream>,
    last: Duration,
    epoch: u64,
    tick_pending: bool,
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
    Sim::new(cfg, sources, &[]).run()
}

/// Runs the simulation with shared links: every source whose [`SimSource::link`] names
/// one of `links` sends through it.
///
/// # Panics
///
/// If a source names a link not in `links`.
pub fn run_linked(cfg: &SimConfig, sources: &[SimSource], links: &[SimLink]) -> SimReport {
    Sim::new(cfg, sources, links).run()
}

struct Sim<'a> {
    cfg: &'a SimConfig,
    srcs: &'a [SimSource],
    links: &'a [SimLink],
    link_of: Vec<Option<usize>>,
    link_state: Vec<LinkState>,
    rng: SplitMix64,
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
    fn new(cfg: &'a SimConfig, srcs: &'a [SimSource], links: &'a [SimLink]) -> Self {
        let sched = Scheduler::new(cfg.piece_count, [], cfg.sched.clone())
            .expect("simulation config is valid");
        let link_of = srcs
            .iter()
            .map(|s| {
                s.link.map(|id| {
                    links
                        .iter()
                        .position(|l| l.id == id)
                        .expect("a source names a link that exists")
                })
            })
            .collect();
        let diagnosis = sched.diagnose(Instant::now());
        Self {
            cfg,
            srcs,
            links,
            link_of,
            link_state: vec![LinkState::default(); links.len()],
            rng: SplitMix64::new(cfg.sched.seed ^ 0x5151_0000_5151),
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
                bytes_in: 0,
                diagnosis,
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
            if let Some(l) = self.link_of[i] {
                let link = &self.links[l];
                if link.declare_group {
                    self.sched
                        .set_source_group(SourceId(i as u64), Some(GroupId(link.id)))
                        .expect("known source");
                }
                if let Fault::StopsAt(t) = s.fault {
                    self.push(t, Event::Recompute(l));
                }
            }
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
                Event::LinkDone(l, epoch) => {
                    if self.link_state[l].epoch == epoch {
                        self.link_update(l);
                    }
                }
                Event::Recompute(l) => self.link_update(l),
                Event::Tick(l) => self.tick(l),
                Event::Progress(r, bytes) => {
                    let req = self.reqs[&r];
                    if !req.cancelled {
                        let at = self.at();
                        self.sched.on_progress(SourceId(req.src as u64), bytes, at);
                    }
                }
                Event::Stop(r) => self.stop(r),
            }
            if self.sched.is_complete() {
                self.report.completed = Some(self.now);
                break;
            }
            self.expire();
            self.schedule();
        }
        for l in 0..self.links.len() {
            self.advance(l);
            for st in &self.link_state[l].streams {
                self.report.bytes_in += st.crossed as u64;
            }
        }
        self.report.diagnosis = self.sched.diagnose(self.at());
        self.report
    }

    // ----- shared links --------------------------------------------------------------

    /// Moves every stream of link `l` forward to now at its current rate.
    fn advance(&mut self, l: usize) {
        let ls = &mut self.link_state[l];
        let dt = self.now.saturating_sub(ls.last).as_secs_f64();
        for st in &mut ls.streams {
            let d = (st.rate * dt).min(st.remaining);
            st.remaining -= d;
            st.crossed += d;
        }
        ls.last = self.now;
    }

    /// Brings link `l` to now, completes finished streams, shares the capacity anew and
    /// schedules the next completion.
    fn link_update(&mut self, l: usize) {
        self.advance(l);
        let mut done = Vec::new();
        self.link_state[l].streams.retain(|st| {
            if st.remaining < 0.5 {
                done.push(st.clone());
                false
            } else {
                true
            }
        });
        let queue_delay = self.queue_delay(l);
        for st in done {
            self.report.bytes_in += st.crossed.round() as u64;
            if self.stopped(st.src) || self.reqs[&st.req].cancelled {
                continue;
            }
            let i = st.src;
            self.servers[i].delivered += 1;
            if self.srcs[i].fault == Fault::BadPieceNth(self.servers[i].delivered) {
                self.reqs.get_mut(&st.req).expect("known").answer = Some(Failure::BadPiece);
            }
            let at = self.now + self.srcs[i].rtt / 2 + queue_delay + st.extra;
            self.push(at, Event::Answer(st.req));
        }
        self.share(l);
    }

    /// Max-min fair shares: each connection (a source with streams, or a cross flow)
    /// gets an equal share of the link, at most its own rate, and splits it equally
    /// between its streams.
    fn share(&mut self, l: usize) {
        let link = &self.links[l];
        let mut conns: BTreeMap<usize, u32> = BTreeMap::new();
        for st in &self.link_state[l].streams {
            *conns.entry(st.src).or_default() += 1;
        }
        let mut caps: Vec<(f64, usize)> = conns
            .keys()
            .map(|&i| {
                (
                    if self.stopped(i) {
                        0.0
                    } else {
                        self.srcs[i].rate
                    },
                    i,
                )
            })
            .collect();
        caps.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut left = link.rate;
        let mut m = caps.len() as f64 + f64::from(link.cross_flows);
        let mut rate_of: BTreeMap<usize, f64> = BTreeMap::new();
        for (cap, i) in caps {
            let fair = left / m;
            let r = cap.min(fair);
            rate_of.insert(i, r);
            left -= r;
            m -= 1.0;
        }
        let ls = &mut self.link_state[l];
        let mut next: Option<f64> = None;
        for st in &mut ls.streams {
            st.rate = rate_of[&st.src] / f64::from(conns[&st.src]);
            if st.rate > 0.0 {
                let t = st.remaining / st.rate;
                next = Some(next.map_or(t, |n: f64| n.min(t)));
            }
        }
        ls.epoch += 1;
        let epoch = ls.epoch;
        if let Some(t) = next {
            let at = self.now + Duration::from_secs_f64(t) + Duration::from_nanos(1);
            self.push(at, Event::LinkDone(l, epoch));
        }
        let want_tick = self.links[l].progress.is_some() && !self.link_state[l].streams.is_empty();
        if want_tick && !self.link_state[l].tick_pending {
            self.link_state[l].tick_pending = true;
            let every = self.links[l].progress.expect("checked");
            self.push(self.now + every, Event::Tick(l));
        }
    }

    fn queue_delay(&self, l: usize) -> Duration {
        let link = &self.links[l];
        if self.link_state[l].streams.is_empty() && link.cross_flows == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(link.queue as f64 / link.rate)
        }
    }

    /// The client hears of the bytes that crossed link `l` since its last report.
    fn tick(&mut self, l: usize) {
        self.link_state[l].tick_pending = false;
        self.advance(l);
        let queue_delay = self.queue_delay(l);
        let mut reports = Vec::new();
        for st in &mut self.link_state[l].streams {
            let whole = st.crossed as u64;
            if whole > st.reported {
                reports.push((st.req, st.src, whole - st.reported));
                st.reported = whole;
            }
        }
        for (r, i, bytes) in reports {
            if !self.reqs[&r].cancelled {
                let at = self.now + self.srcs[i].rtt / 2 + queue_delay;
                self.push(at, Event::Progress(r, bytes));
            }
        }
        if let Some(every) = self.links[l].progress
            && !self.link_state[l].streams.is_empty()
        {
            self.link_state[l].tick_pending = true;
            self.push(self.now + every, Event::Tick(l));
        }
    }

    /// A cancelled request's reset reached its source: its stream stops.
    fn stop(&mut self, r: u64) {
        let i = self.reqs[&r].src;
        let Some(l) = self.link_of[i] else {
            return;
        };
        self.advance(l);
        let ls = &mut self.link_state[l];
        if let Some(k) = ls.streams.iter().position(|st| st.req == r) {
            let st = ls.streams.remove(k);
            self.report.bytes_in += st.crossed.round() as u64;
            self.share(l);
        }
    }

    /// Packets of `bytes` lost on link `l`, drawn at random.
    fn losses(&mut self, l: usize, bytes: u64) -> u32 {
        let p = self.links[l].loss;
        if p <= 0.0 {
            return 0;
        }
        let packets = (bytes as f64 / PACKET).ceil() as u64;
        let threshold = (p * u64::MAX as f64) as u64;
        (0..packets)
            .filter(|_| self.rng.next_u64() < threshold)
            .count() as u32
    }

    fn refresh(&mut self) {
        self.reported.clear();
        for (i, s) in self.srcs.iter().enumerate() {
            let have = s.report(self.cfg.piece_count, self.now);
            self.reported.push(have.clone());
            if s.kind != SourceKind::Origin {
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
        if let Some(g) = stats.group
            && let Some(gs) = self.sched.group_stats(g)
            && gs.in_flight > gs.window
        {
            self.violation(format!(
                "group {} has {} requests outstanding, window {}",
                g.0, gs.in_flight, gs.window
            ));
        }
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
        let mut late = Duration::ZERO;
        if let Some(l) = self.link_of[i]
            && self.losses(l, 1) > 0
        {
            late = s.rtt * 3;
        }
        if answer.is_some() {
            self.push(self.now + s.rtt + late, Event::Answer(id));
        } else {
            self.push(self.now + half + late, Event::Arrive(id));
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
        if let Some(l) = self.link_of[i] {
            // Behind a link, a source serves every request at once, one stream each.
            self.advance(l);
            let size = self.cfg.sched.piece_size;
            let lost = self.losses(l, size);
            let extra = self.srcs[i].rtt * lost;
            self.link_state[l].streams.push(Stream {
                req: r,
                src: i,
                remaining: size as f64,
                crossed: 0.0,
                reported: 0,
                rate: 0.0,
                extra,
            });
            self.share(l);
            return;
        }
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
            let start = self.srcs[i].resume_at(self.now);
            self.push(start + service, Event::Finish(i));
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
        self.report.bytes_in += self.cfg.sched.piece_size;
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
            if self.link_of[i].is_some() {
                self.push(self.now + self.srcs[i].rtt / 2, Event::Stop(r));
            }
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
