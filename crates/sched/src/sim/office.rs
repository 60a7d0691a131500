//! A whole office in virtual time: one client (the RVP) reads the origin over the WAN,
//! every client fetches from every other, each with its own [`Scheduler`].
//!
//! It checks the two claims the policy exists for: the origin serves each piece once
//! (no second origin download), and the office finishes shortly after the WAN copy.
//!
//! Every client uploads through one FIFO queue at `lan_rate`; the origin serves through
//! one at `origin_rate`. Have-sets reach other clients only through the periodic refresh
//! (the server's list), so a piece becomes visible up to one refresh after it arrived.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use crate::{Failure, Have, PieceSet, SchedConfig, Scheduler, SourceId, SourceKind, Verdict};

/// Parameters of an office run.
#[derive(Clone, Debug)]
pub struct OfficeConfig {
    /// Clients in the office, the RVP (client 0) included.
    pub clients: u32,
    /// Pieces in the content.
    pub piece_count: u32,
    /// Scheduler configuration of every client; client `i` uses seed `seed + i`. Its
    /// `piece_size` is the size of every piece (bytes).
    pub sched: SchedConfig,
    /// Origin rate as seen by the RVP (bytes/s): the WAN.
    pub origin_rate: f64,
    /// Round trip to the origin.
    pub origin_rtt: Duration,
    /// Upload rate of each client (bytes/s).
    pub lan_rate: f64,
    /// Round trip between clients.
    pub lan_rtt: Duration,
    /// Interval of have-set refreshes.
    pub refresh: Duration,
    /// Virtual time after which the run gives up.
    pub limit: Duration,
}

/// Outcome of an office run.
#[derive(Clone, Debug, PartialEq)]
pub struct OfficeReport {
    /// Per client: when it held every piece.
    pub completed: Vec<Option<Duration>>,
    /// Pieces the origin delivered (the content has `piece_count`).
    pub origin_pieces: u64,
    /// Per client: pieces it uploaded to others.
    pub uploaded: Vec<u64>,
    /// Bytes received for pieces already held, all clients together.
    pub wasted_bytes: u64,
    /// Broken invariants seen while running (empty when the schedulers behaved).
    pub violations: Vec<String>,
}

impl OfficeReport {
    /// When the last client finished, if all did.
    pub fn last_completion(&self) -> Option<Duration> {
        self.completed
            .iter()
            .try_fold(Duration::ZERO, |m, c| c.map(|c| m.max(c)))
    }
}

/// Time the RVP needs to read the whole content over the WAN alone.
pub fn wan_copy_time(cfg: &OfficeConfig) -> Duration {
    Duration::from_secs_f64(
        f64::from(cfg.piece_count) * cfg.sched.piece_size as f64 / cfg.origin_rate,
    )
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Event {
    Arrive(u64),
    Finish(usize),
    Answer(u64),
    Refresh,
    Wake,
}

#[derive(Clone, Copy, Debug)]
struct Req {
    from: usize,
    to: usize,
    piece: u32,
    cancelled: bool,
}

/// Runs the office to completion (or to `cfg.limit`).
pub fn run_office(cfg: &OfficeConfig) -> OfficeReport {
    Office::new(cfg).run()
}

struct Office<'a> {
    cfg: &'a OfficeConfig,
    n: usize,
    scheds: Vec<Scheduler>,
    base: Instant,
    now: Duration,
    seq: u64,
    events: BinaryHeap<Reverse<(Duration, u64, Event)>>,
    reqs: BTreeMap<u64, Req>,
    current: BTreeMap<(usize, usize, u32), u64>,
    /// Upload queues: one per client, then the origin's.
    queues: Vec<VecDeque<u64>>,
    busy: Vec<Option<u64>>,
    report: OfficeReport,
    wake_at: Option<Duration>,
}

impl<'a> Office<'a> {
    fn new(cfg: &'a OfficeConfig) -> Self {
        let n = cfg.clients as usize;
        let scheds = (0..n)
            .map(|i| {
                let c = SchedConfig {
                    seed: cfg.sched.seed.wrapping_add(i as u64),
                    ..cfg.sched.clone()
                };
                Scheduler::new(cfg.piece_count, [], c).expect("office config is valid")
            })
            .collect();
        Self {
            cfg,
            n,
            scheds,
            base: Instant::now(),
            now: Duration::ZERO,
            seq: 0,
            events: BinaryHeap::new(),
            reqs: BTreeMap::new(),
            current: BTreeMap::new(),
            queues: vec![VecDeque::new(); n + 1],
            busy: vec![None; n + 1],
            report: OfficeReport {
                completed: vec![None; n],
                origin_pieces: 0,
                uploaded: vec![0; n],
                wasted_bytes: 0,
                violations: Vec::new(),
            },
            wake_at: None,
        }
    }

    fn origin(&self) -> usize {
        self.n
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

    fn run(mut self) -> OfficeReport {
        for a in 0..self.n {
            for b in 0..self.n {
                if a != b {
                    self.scheds[a]
                        .add_source(SourceId(b as u64), SourceKind::Peer)
                        .expect("fresh");
                }
            }
        }
        let o = self.origin() as u64;
        self.scheds[0]
            .add_source(SourceId(o), SourceKind::Origin)
            .expect("fresh");
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
            if self.report.completed.iter().all(Option::is_some) {
                break;
            }
            self.expire();
            self.schedule();
        }
        self.report
    }

    fn refresh(&mut self) {
        let haves: Vec<PieceSet> = self.scheds.iter().map(|s| s.have().clone()).collect();
        for a in 0..self.n {
            for (b, have) in haves.iter().enumerate() {
                if a != b {
                    self.scheds[a]
                        .set_source_pieces(SourceId(b as u64), Have::Some(have.clone()))
                        .expect("sizes match");
                }
            }
        }
    }

    fn schedule(&mut self) {
        let at = self.at();
        for a in 0..self.n {
            // Sources in a rotating order, so no client is everyone's first choice.
            for k in 1..=self.n {
                let to = (a + k) % (self.n + 1);
                if to == a || (to == self.origin() && a != 0) {
                    continue;
                }
                while let Some(p) = self.scheds[a].next_request(SourceId(to as u64), at) {
                    if to != self.origin() && !self.scheds[to].has_piece(p) {
                        self.violation(format!("client {a} asked {to} for piece {p} it lacks"));
                    }
                    self.send(a, to, p);
                }
            }
        }
        let next = self
            .scheds
            .iter()
            .filter_map(Scheduler::next_deadline)
            .min();
        if let Some(d) = next {
            let t = d.saturating_duration_since(self.base);
            if self.wake_at.is_none_or(|w| t < w) {
                self.wake_at = Some(t);
                self.push(t, Event::Wake);
            }
        }
    }

    fn rtt(&self, to: usize) -> Duration {
        if to == self.origin() {
            self.cfg.origin_rtt
        } else {
            self.cfg.lan_rtt
        }
    }

    fn send(&mut self, from: usize, to: usize, piece: u32) {
        self.seq += 1;
        let id = self.seq;
        self.reqs.insert(
            id,
            Req {
                from,
                to,
                piece,
                cancelled: false,
            },
        );
        self.current.insert((from, to, piece), id);
        self.push(self.now + self.rtt(to) / 2, Event::Arrive(id));
    }

    fn arrive(&mut self, r: u64) {
        let req = self.reqs[&r];
        if req.cancelled {
            return;
        }
        self.queues[req.to].push_back(r);
        if self.busy[req.to].is_none() {
            self.start_next(req.to);
        }
    }

    fn start_next(&mut self, s: usize) {
        while let Some(r) = self.queues[s].pop_front() {
            if self.reqs[&r].cancelled {
                continue;
            }
            self.busy[s] = Some(r);
            let rate = if s == self.origin() {
                self.cfg.origin_rate
            } else {
                self.cfg.lan_rate
            };
            let service = Duration::from_secs_f64(self.cfg.sched.piece_size as f64 / rate);
            self.push(self.now + service, Event::Finish(s));
            return;
        }
    }

    fn finish(&mut self, s: usize) {
        let Some(r) = self.busy[s].take() else {
            return;
        };
        if !self.reqs[&r].cancelled {
            if s == self.origin() {
                self.report.origin_pieces += 1;
            } else {
                self.report.uploaded[s] += 1;
            }
            self.push(self.now + self.rtt(s) / 2, Event::Answer(r));
        }
        self.start_next(s);
    }

    fn answer(&mut self, r: u64) {
        let req = self.reqs[&r];
        if req.cancelled {
            return;
        }
        self.current.remove(&(req.from, req.to, req.piece));
        let at = self.at();
        let size = self.cfg.sched.piece_size;
        let got = self.scheds[req.from]
            .on_piece_received(SourceId(req.to as u64), req.piece, size, at)
            .expect("piece in range");
        if !got.new {
            self.report.wasted_bytes += size;
        }
        for (s, p) in got.cancel {
            self.cancel(req.from, s.0 as usize, p);
        }
        if got.complete && self.report.completed[req.from].is_none() {
            self.report.completed[req.from] = Some(self.now);
        }
    }

    fn cancel(&mut self, from: usize, to: usize, p: u32) {
        if let Some(r) = self.current.remove(&(from, to, p)) {
            self.reqs.get_mut(&r).expect("known").cancelled = true;
        }
    }

    fn expire(&mut self) {
        let at = self.at();
        for a in 0..self.n {
            for (s, p) in self.scheds[a].timeouts(at) {
                self.cancel(a, s.0 as usize, p);
                let v = self.scheds[a]
                    .on_piece_failed(s, p, Failure::Timeout, at)
                    .expect("piece in range");
                if let Verdict::Drop(d) = v {
                    for q in d.cancel {
                        self.cancel(a, s.0 as usize, q);
                    }
                }
            }
        }
    }
}
