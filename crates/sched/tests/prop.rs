//! Property test: random sources, have-sets and outcomes. Whatever happens, requests go
//! only to sources that report the piece, never for a held piece, never twice outside
//! endgame, never to the origin or an upstream source for a piece a peer holds, never
//! beyond the source's or its group's window; and
//! once the surviving sources answer truthfully, the download completes exactly when
//! their holdings cover what is missing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use branchline_sched::{
    Failure, GroupId, Have, PieceSet, SchedConfig, Scheduler, SourceId, SourceKind, SourceState,
    Verdict,
};
use proptest::prelude::*;

const PIECE: u64 = 64 * 1024;

#[derive(Clone, Debug)]
enum Op {
    /// Ask source `i % sources` for everything it will take.
    Request(usize),
    /// The `k`-th outstanding request (mod count) arrives.
    Deliver(usize),
    /// The `k`-th outstanding request fails.
    Fail(usize, Failure),
    /// Source `i` reports a new have-set: its truth with some pieces masked (`mask`
    /// bits) or claimed extra (`extra` bits).
    Report(usize, u64, u64),
    /// Time passes.
    Advance(u64),
    /// Late requests are cancelled as timeouts.
    Timeouts,
    /// Source `i` goes away.
    Remove(usize),
    /// Source `i` is added (again).
    Add(usize),
    /// Bytes arrive for the `k`-th outstanding request's source, before the piece is
    /// whole.
    Progress(usize, u64),
    /// Source `i` is put in group `g` (or none).
    Group(usize, Option<u64>),
}

fn failure() -> impl Strategy<Value = Failure> {
    prop_oneof![
        4 => Just(Failure::Timeout),
        4 => Just(Failure::Transport),
        4 => Just(Failure::Unavailable),
        2 => Just(Failure::Busy),
        2 => Just(Failure::Local),
        1 => Just(Failure::BadPiece),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => any::<usize>().prop_map(Op::Request),
        6 => any::<usize>().prop_map(Op::Deliver),
        3 => (any::<usize>(), failure()).prop_map(|(k, f)| Op::Fail(k, f)),
        2 => (any::<usize>(), any::<u64>(), any::<u64>()).prop_map(|(i, m, e)| Op::Report(i, m, e)),
        2 => (0u64..5_000).prop_map(Op::Advance),
        1 => Just(Op::Timeouts),
        1 => any::<usize>().prop_map(Op::Remove),
        1 => any::<usize>().prop_map(Op::Add),
        2 => (any::<usize>(), 0..2 * PIECE).prop_map(|(k, b)| Op::Progress(k, b)),
        1 => (any::<usize>(), prop::option::of(0u64..2)).prop_map(|(i, g)| Op::Group(i, g)),
    ]
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Life {
    Active,
    Gone,
    Banned,
}

struct Model {
    n: u32,
    kinds: Vec<SourceKind>,
    truth: Vec<PieceSet>,
    reported: Vec<PieceSet>,
    /// (source, piece) → until when the scheduler must not ask for it.
    denied: BTreeMap<(usize, u32), Instant>,
    life: Vec<Life>,
}

impl Model {
    /// Would the scheduler be allowed to ask source `i` for `p` at `now`?
    fn may_ask(&self, i: usize, p: u32, now: Instant) -> bool {
        self.life[i] == Life::Active
            && self.reported[i].contains(p)
            && self.denied.get(&(i, p)).is_none_or(|&until| until <= now)
    }
}

fn check_and_send(
    s: &mut Scheduler,
    m: &Model,
    i: usize,
    now: Instant,
    cfg: &SchedConfig,
) -> Result<Vec<u32>, TestCaseError> {
    let id = SourceId(i as u64);
    let mut got = Vec::new();
    loop {
        // Endgame, judged independently: every missing piece is requested.
        let endgame = (0..m.n).all(|q| s.has_piece(q) || s.requests().any(|(_, r)| r == q));
        let Some(p) = s.next_request(id, now) else {
            break;
        };
        prop_assert!(
            m.may_ask(i, p, now),
            "piece {p} asked of source {i}, which may not be asked"
        );
        prop_assert!(!s.has_piece(p), "piece {p} asked although held");
        let others = s.requests().filter(|&(o, q)| q == p && o != id).count();
        prop_assert!(
            others == 0 || endgame,
            "piece {p} requested twice outside endgame"
        );
        prop_assert!(others < cfg.endgame_max_copies as usize);
        if m.kinds[i] != SourceKind::Peer {
            for j in 0..m.kinds.len() {
                prop_assert!(
                    !(m.kinds[j] == SourceKind::Peer && m.may_ask(j, p, now)),
                    "{:?} source asked for piece {p}, which peer {j} holds",
                    m.kinds[i]
                );
            }
        }
        let st = s.source_stats(id).unwrap();
        prop_assert!(st.in_flight <= st.window && st.window <= cfg.max_in_flight);
        if let Some(g) = st.group {
            let gs = s.group_stats(g).unwrap();
            prop_assert!(gs.in_flight <= gs.window, "group over its window: {gs:?}");
            prop_assert!(gs.window >= cfg.min_in_flight);
        }
        got.push(p);
    }
    Ok(got)
}

fn truthful_answer(s: &mut Scheduler, m: &mut Model, src: SourceId, p: u32, now: Instant) {
    let i = src.0 as usize;
    if m.truth[i].contains(p) {
        let _ = s.on_piece_received(src, p, PIECE, now).unwrap();
    } else {
        let v = s
            .on_piece_failed(src, p, Failure::Unavailable, now)
            .unwrap();
        assert_eq!(v, Verdict::Continue);
        m.denied.insert((i, p), now + s.config().holdoff);
    }
}

proptest! {
    // 300 cases by default; PROPTEST_CASES=N runs more.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300),
        ..ProptestConfig::default()
    })]

    #[test]
    fn scheduling_invariants_and_completion(
        n in 1u32..100,
        sources in prop::collection::vec((0u8..10, any::<u128>()), 1..6),
        held in any::<u128>(),
        ops in prop::collection::vec(op(), 0..250),
        seed in any::<u64>(),
    ) {
        let cfg = SchedConfig { seed, ..SchedConfig::new(PIECE) };
        let bits = |x: u128| (0..n).filter(move |&p| x >> (p % 128) & 1 == 1);
        let mut s = Scheduler::new(n, bits(held), cfg.clone()).unwrap();
        let t0 = Instant::now();
        let mut now = t0;
        let mut m = Model {
            n,
            kinds: Vec::new(),
            truth: Vec::new(),
            reported: Vec::new(),
            denied: BTreeMap::new(),
            life: Vec::new(),
        };
        for (i, &(kind, have)) in sources.iter().enumerate() {
            let kind = match kind {
                0 | 1 => SourceKind::Origin,
                2 | 3 => SourceKind::Upstream,
                _ => SourceKind::Peer,
            };
            let truth = if kind == SourceKind::Origin {
                PieceSet::full(n)
            } else {
                PieceSet::from_pieces(n, bits(have)).unwrap()
            };
            let id = SourceId(i as u64);
            s.add_source(id, kind).unwrap();
            if kind != SourceKind::Origin {
                s.set_source_pieces(id, Have::Some(truth.clone())).unwrap();
            }
            m.kinds.push(kind);
            m.reported.push(truth.clone());
            m.truth.push(truth);
            m.life.push(Life::Active);
        }
        let k = m.kinds.len();
        let apply_verdict = |m: &mut Model, v: Verdict| {
            if let Verdict::Drop(d) = v {
                let i = d.source.0 as usize;
                m.life[i] = if d.reason.report_to_server() { Life::Banned } else { Life::Gone };
            }
        };

        // Phase 1: anything goes.
        for op in ops {
            match op {
                Op::Request(i) => {
                    check_and_send(&mut s, &m, i % k, now, &cfg)?;
                }
                Op::Deliver(j) => {
                    let reqs: Vec<_> = s.requests().collect();
                    if let Some(&(src, p)) = reqs.get(j % reqs.len().max(1)) {
                        let was_missing = !s.has_piece(p);
                        let r = s.on_piece_received(src, p, PIECE, now).unwrap();
                        prop_assert_eq!(r.new, was_missing);
                        prop_assert!(s.has_piece(p));
                        prop_assert!(!s.requests().any(|(_, q)| q == p), "cancelled copies forgotten");
                        for &(o, q) in &r.cancel {
                            prop_assert!(q == p && o != src);
                        }
                    }
                }
                Op::Fail(j, f) => {
                    let reqs: Vec<_> = s.requests().collect();
                    if let Some(&(src, p)) = reqs.get(j % reqs.len().max(1)) {
                        let v = s.on_piece_failed(src, p, f, now).unwrap();
                        let i = src.0 as usize;
                        if f == Failure::Unavailable {
                            m.denied.insert((i, p), now + cfg.holdoff);
                        }
                        if f == Failure::BadPiece {
                            prop_assert!(matches!(&v, Verdict::Drop(d) if d.reason.report_to_server()));
                        }
                        if let Verdict::Drop(d) = &v {
                            prop_assert!(!d.cancel.contains(&p));
                            prop_assert!(!s.requests().any(|(o, _)| o == src));
                        }
                        apply_verdict(&mut m, v);
                    }
                }
                Op::Report(i, mask, extra) => {
                    let i = i % k;
                    if m.kinds[i] != SourceKind::Origin && m.life[i] == Life::Active {
                        let mut set = PieceSet::new(n);
                        for p in 0..n {
                            let t = m.truth[i].contains(p);
                            if (t && mask >> (p % 64) & 1 == 0) || (!t && extra >> (p % 64) & 1 == 1) {
                                set.insert(p);
                            }
                        }
                        s.set_source_pieces(SourceId(i as u64), Have::Some(set.clone())).unwrap();
                        m.reported[i] = set;
                    }
                }
                Op::Advance(ms) => now += Duration::from_millis(ms),
                Op::Progress(j, bytes) => {
                    let reqs: Vec<_> = s.requests().collect();
                    if let Some(&(src, _)) = reqs.get(j % reqs.len().max(1)) {
                        let before = s.requests().count();
                        s.on_progress(src, bytes, now);
                        prop_assert_eq!(s.requests().count(), before, "progress changes no request");
                    }
                }
                Op::Group(i, g) => {
                    let i = i % k;
                    let id = SourceId(i as u64);
                    let r = s.set_source_group(id, g.map(GroupId));
                    if s.source_stats(id).is_some() {
                        prop_assert!(r.is_ok());
                        prop_assert_eq!(s.source_group(id), g.map(GroupId));
                    } else {
                        prop_assert!(r.is_err(), "a removed source is unknown");
                    }
                }
                Op::Timeouts => {
                    for (src, p) in s.timeouts(now) {
                        let v = s.on_piece_failed(src, p, Failure::Timeout, now).unwrap();
                        apply_verdict(&mut m, v);
                    }
                }
                Op::Remove(i) => {
                    let i = i % k;
                    let id = SourceId(i as u64);
                    let cancel = s.remove_source(id);
                    if m.life[i] == Life::Gone && s.source_stats(id).is_none() {
                        prop_assert!(cancel.is_err() || cancel == Ok(vec![]));
                    }
                    prop_assert!(!s.requests().any(|(o, _)| o == id));
                    if m.life[i] == Life::Active {
                        m.life[i] = Life::Gone;
                    }
                }
                Op::Add(i) => {
                    let i = i % k;
                    let id = SourceId(i as u64);
                    let r = s.add_source(id, m.kinds[i]);
                    match m.life[i] {
                        Life::Banned => prop_assert!(r.is_err()),
                        Life::Active => prop_assert!(r.is_err()),
                        Life::Gone => {
                            prop_assert!(r.is_ok());
                            m.life[i] = Life::Active;
                            m.denied.retain(|&(j, _), _| j != i);
                            m.reported[i] = match m.kinds[i] {
                                SourceKind::Origin => PieceSet::full(n),
                                SourceKind::Peer | SourceKind::Upstream => PieceSet::new(n),
                            };
                        }
                    }
                }
            }
            for i in 0..k {
                let st = s.source_stats(SourceId(i as u64));
                let active = st.as_ref().is_some_and(|st| st.state == SourceState::Active);
                prop_assert_eq!(active, m.life[i] == Life::Active, "source {} state", i);
                if m.life[i] == Life::Banned {
                    prop_assert_eq!(st.unwrap().state, SourceState::Banned);
                }
            }
        }

        // Phase 2: every source that is not banned comes back and answers truthfully.
        now += cfg.holdoff + Duration::from_secs(1);
        for i in 0..k {
            let id = SourceId(i as u64);
            if m.life[i] == Life::Gone {
                s.add_source(id, m.kinds[i]).unwrap();
                m.life[i] = Life::Active;
                m.denied.retain(|&(j, _), _| j != i);
            }
            if m.life[i] == Life::Active {
                if m.kinds[i] != SourceKind::Origin {
                    s.set_source_pieces(id, Have::Some(m.truth[i].clone())).unwrap();
                }
                m.reported[i] = m.truth[i].clone();
            }
        }
        // Outstanding requests from phase 1 are answered first.
        for (src, p) in s.requests().collect::<Vec<_>>() {
            if s.requests().any(|r| r == (src, p)) {
                truthful_answer(&mut s, &mut m, src, p, now);
            }
        }
        let mut covered = s.have().clone();
        for i in 0..k {
            if m.life[i] == Life::Active {
                for p in m.truth[i].iter() {
                    covered.insert(p);
                }
            }
        }
        for _round in 0..(4 * n + 10) {
            if s.is_complete() {
                break;
            }
            now += Duration::from_millis(100);
            let mut sent = Vec::new();
            for i in 0..k {
                for p in check_and_send(&mut s, &m, i, now, &cfg)? {
                    sent.push((SourceId(i as u64), p));
                }
            }
            if sent.is_empty() {
                break;
            }
            for (src, p) in sent {
                if s.requests().any(|r| r == (src, p)) {
                    truthful_answer(&mut s, &mut m, src, p, now);
                }
            }
        }
        prop_assert_eq!(s.is_complete(), covered.is_full(), "covered {} of {}", covered.count(), m.n);
        if !s.is_complete() {
            prop_assert_eq!(s.in_flight(), 0);
            prop_assert!(s.progress().unobtainable > 0);
        }
    }

    /// Honest peers that pause for up to 25 s at a time (under the 30 s silence limit)
    /// and work between pauses, at any rates and rhythms: none is ever dropped, the download completes, no piece
    /// is received twice, and requests are duplicated only near the end (the simulator
    /// flags any other as a violation), a few at most.
    #[test]
    fn busy_honest_peers_are_never_dropped(
        n in 20u32..300,
        peers in prop::collection::vec((1u32..40, 1_000u64..28_000, 0u64..90), 1..6),
        seed in any::<u64>(),
    ) {
        use branchline_sched::sim::{self, Fault, SimConfig, SimSource};
        let srcs: Vec<SimSource> = peers
            .iter()
            .map(|&(mb, every, share)| {
                // Paused for `share` % of each period: at most 25.2 s.
                let pause = every * share / 100;
                SimSource::peer(f64::from(mb) * 1e6, Duration::from_millis(2)).with_fault(
                    Fault::Stalls {
                        every: Duration::from_millis(every),
                        pause: Duration::from_millis(pause),
                    },
                )
            })
            .collect();
        let c = SimConfig {
            piece_count: n,
            sched: SchedConfig { seed, ..SchedConfig::new(1 << 20) },
            refresh: Duration::from_secs(1),
            limit: Duration::from_secs(24 * 3600),
        };
        let r = sim::run(&c, &srcs);
        prop_assert!(r.violations.is_empty(), "{:?}", r.violations);
        prop_assert!(r.completed.is_some(), "{}", r.diagnosis);
        for (i, src) in r.sources.iter().enumerate() {
            prop_assert_eq!(src.dropped, None, "peer {} dropped", i);
            prop_assert_eq!(src.wasted_bytes, 0, "peer {} sent a piece twice", i);
        }
        prop_assert!(r.duplicates <= 2 * srcs.len() as u32, "{} duplicates", r.duplicates);
    }
}
