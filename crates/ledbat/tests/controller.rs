//! Deterministic tests of the LEDBAT++ controller, driven with synthetic RTT sequences and
//! synthetic `Instant`s (no clock, no sockets).

use std::sync::Arc;
use std::time::{Duration, Instant};

use branchline_ledbat::{Ledbat, LedbatConfig, LinkPolicy, Phase};
use quinn_proto::congestion::Controller;

const MTU: u16 = 1200;
const MS: Duration = Duration::from_millis(1);
/// 20 Mbit/s in bytes/s.
const LINK_RATE: u64 = 2_500_000;
/// 20 Mbit/s × 40 ms.
const BDP_20M_40MS: u64 = 100_000;

/// Feeds a controller with acknowledgements as a sender on a path with a given RTT would see
/// them: one window per round trip, one ACK frame per two packets.
struct Driver {
    c: Ledbat,
    now: Instant,
    /// Phase after every ACK frame, with its time, to check schedules.
    log: Vec<(Instant, Phase, u64)>,
    slow_start_exit: Option<Instant>,
}

impl Driver {
    /// A controller on a synthetic path. The path has no bottleneck of its own (the tests
    /// choose the RTTs), so unless the test sets a ceiling, a 20 Mbit/s ceiling stands in for
    /// the link and keeps windows realistic.
    fn new(mut config: LedbatConfig) -> Self {
        config.ceiling = config.ceiling.or(Some(LINK_RATE));
        config.validate().unwrap();
        let link = Arc::new(LinkPolicy::new(config.ceiling, config.floor).unwrap());
        let now = Instant::now();
        Self {
            c: Ledbat::new(Arc::new(config), link, now, MTU),
            now,
            log: Vec::new(),
            slow_start_exit: None,
        }
    }

    /// One round trip during which every packet sees `rtt`.
    fn round(&mut self, rtt: Duration) {
        self.round_with_loss(rtt, false);
    }

    /// One round trip; with `lose`, the middle packet of the round is declared lost.
    fn round_with_loss(&mut self, rtt: Duration, lose: bool) {
        let pkt = u64::from(MTU);
        let frames = (self.c.window() / (2 * pkt)).max(1);
        let step = rtt / frames as u32;
        for i in 0..frames {
            self.now += step;
            let sent = self.now - rtt;
            self.c.on_ack_sample(self.now, sent, 2 * pkt);
            self.c.end_acks(self.now, false);
            if lose && i == frames / 2 {
                self.c.on_congestion_event(self.now, sent, false, pkt);
            }
            self.log
                .push((self.now, self.c.stats().phase, self.c.window()));
        }
    }

    /// One round trip over a bottleneck of `capacity` bytes/s with propagation RTT `base`, on
    /// which other flows keep `others` of queue: the RTT is the base plus the queue this
    /// window builds plus `others`, and a window is acknowledged per round trip.
    fn round_on_link(&mut self, capacity: f64, base: Duration, others: Duration) {
        let w = self.c.window() as f64;
        let own = ((w - capacity * base.as_secs_f64()) / capacity).max(0.0);
        self.round(base + Duration::from_secs_f64(own) + others);
    }

    /// Round trips at `rtt` for `secs` seconds of synthetic time.
    fn run_for(&mut self, rtt: Duration, span: Duration) {
        let end = self.now + span;
        while self.now < end {
            self.round(rtt);
        }
    }

    /// Round trips at `rtt` until the window reaches `bytes`; returns the time it took, or
    /// `None` if not within `limit`.
    fn time_to_reach(&mut self, rtt: Duration, bytes: u64, limit: Duration) -> Option<Duration> {
        let start = self.now;
        while self.now - start < limit {
            if self.c.window() >= bytes {
                return Some(self.now - start);
            }
            self.round(rtt);
        }
        None
    }

    /// Leaves the initial slow start with a queue above ¾ of the target, then returns to the
    /// base RTT and lives through the first slowdown (two round trips after slow start), so
    /// the controller is in congestion avoidance.
    fn exit_slow_start(&mut self, base: Duration) {
        self.run_for(base, Duration::from_millis(400));
        let pkt = u64::from(MTU);
        for _ in 0..100 {
            if self.c.stats().phase != Phase::SlowStart {
                break;
            }
            self.now += MS;
            self.c
                .on_ack_sample(self.now, self.now - base - 50 * MS, 2 * pkt);
            self.c.end_acks(self.now, false);
        }
        assert_eq!(self.c.stats().phase, Phase::CongestionAvoidance);
        self.slow_start_exit = Some(self.now);
    }

    /// [`Driver::exit_slow_start`], then round trips with 10 ms of queue (above the idle
    /// threshold, so the gentle slowdown does not skip the first slowdown as unneeded) until
    /// the first slowdown is over.
    fn settle(&mut self, base: Duration) {
        self.exit_slow_start(base);
        for _ in 0..1000 {
            let s = self.c.stats();
            if s.slowdowns > 0 && s.phase == Phase::CongestionAvoidance {
                return;
            }
            self.round(base + 10 * MS);
        }
        panic!("no slowdown after slow start: {:?}", self.c.stats());
    }
}

/// No slowdown within any test's horizon, to look at one mechanism at a time.
fn no_slowdowns(mut c: LedbatConfig) -> LedbatConfig {
    c.slowdown_interval_factor = u32::MAX;
    c
}

#[test]
fn grows_to_fill_while_delay_stays_at_base() {
    for config in [LedbatConfig::default(), LedbatConfig::draft()] {
        let mut d = Driver::new(config.clone());
        let mut last = d.c.window();
        let start = d.c.window();
        for _ in 0..60 {
            d.round(40 * MS);
            let w = d.c.window();
            assert!(w >= last, "window fell from {last} to {w} with no queue");
            last = w;
        }
        assert!(
            last >= BDP_20M_40MS,
            "window {last} after 60 rounds at base delay (from {start}), config {config:?}"
        );
        assert_eq!(d.c.stats().queueing_delay, Some(Duration::ZERO));
    }
}

#[test]
fn congestion_avoidance_adds_gain_packets_per_round_trip_below_target() {
    // Draft behaviour: at base 40 ms and target 60 ms, GAIN = 1/ceil(120/40) = 1/3.
    let mut d = Driver::new(no_slowdowns(LedbatConfig::draft()));
    d.settle(40 * MS);
    assert!((d.c.gain() - 1.0 / 3.0).abs() < 1e-9);
    // Queue at 20 ms: below target, above the idle threshold.
    d.run_for(60 * MS, Duration::from_millis(600));
    let w0 = d.c.window() as f64;
    d.run_for(60 * MS, Duration::from_secs(6));
    let rounds = 6.0 / 0.060;
    let per_round = (d.c.window() as f64 - w0) / rounds;
    let expected = f64::from(MTU) / 3.0;
    assert!(
        (per_round - expected).abs() < 0.25 * expected,
        "grew {per_round:.0} bytes per round trip, expected about {expected:.0}"
    );
}

#[test]
fn backs_off_multiplicatively_when_delay_passes_target() {
    // The draft's proportional decrease, without the competition-aware extension (whose
    // stronger reaction to a queue it did not build is tested below).
    let config = LedbatConfig {
        competition_yield: false,
        ..LedbatConfig::default()
    };
    let target = config.target;
    let mut d = Driver::new(no_slowdowns(config));
    d.settle(40 * MS);
    d.run_for(40 * MS, Duration::from_secs(1));
    let w0 = d.c.window() as f64;
    assert!(w0 >= 95_000.0, "window {w0} before the test");

    // Queueing delay 1.25 × target: one round trip costs W·0.25 (a little less in the first
    // round, as the current-delay filter needs 4 samples to see the queue).
    d.round(40 * MS + target * 5 / 4);
    let w1 = d.c.window() as f64;
    let ratio = w1 / w0;
    assert!(
        (0.70..=0.85).contains(&ratio),
        "window went {w0} -> {w1} (×{ratio:.2}) at 1.25 × target"
    );

    // Queueing delay 3 × target: the decrease is capped at half the window per round trip.
    for _ in 0..4 {
        let before = d.c.window() as f64;
        d.round(40 * MS + target * 3);
        let after = d.c.window() as f64;
        let r = after / before;
        assert!(
            (0.49..=0.6).contains(&r),
            "window went {before} -> {after} (×{r:.2}) at 3 × target"
        );
    }
    // And it keeps going down to the floor while the delay stays high.
    d.run_for(40 * MS + target * 3, Duration::from_secs(3));
    assert_eq!(d.c.window(), d.c.floor_window());
}

#[test]
fn slows_down_on_schedule() {
    let mut d = Driver::new(LedbatConfig::draft());
    d.exit_slow_start(40 * MS);
    let exit = d.slow_start_exit.unwrap();
    d.log.clear();
    d.run_for(40 * MS, Duration::from_secs(20));

    let transitions: Vec<(Instant, Phase, u64)> = d
        .log
        .windows(2)
        .filter(|w| w[0].1 != w[1].1)
        .map(|w| w[1])
        .collect();
    let starts: Vec<Instant> = transitions
        .iter()
        .filter(|t| t.1 == Phase::SlowdownFreeze)
        .map(|t| t.0)
        .collect();
    let ends: Vec<Instant> = transitions
        .iter()
        .filter(|t| t.1 == Phase::CongestionAvoidance)
        .map(|t| t.0)
        .collect();
    assert!(starts.len() >= 2, "slowdowns: {transitions:?}");

    // The first slowdown comes two round trips after slow start ended.
    let first = starts[0] - exit;
    assert!(
        first >= 80 * MS && first <= 80 * MS + 60 * MS,
        "first slowdown {first:?} after slow start"
    );
    // During the frozen phase the window is the 2-packet minimum.
    for (t, phase, w) in &d.log {
        if *phase == Phase::SlowdownFreeze {
            assert_eq!(*w, 2 * u64::from(MTU), "window during slowdown at {t:?}");
        }
    }
    // Each next slowdown starts 9 slowdown durations after the previous one ended.
    for (i, pair) in starts.windows(2).enumerate() {
        let end = ends.iter().find(|e| **e > pair[0]).copied().unwrap();
        let duration = end - pair[0];
        let gap = pair[1] - end;
        let expected = duration * 9;
        assert!(
            gap >= expected && gap <= expected + 50 * MS,
            "slowdown {i}: lasted {duration:?}, next after {gap:?}, expected {expected:?}"
        );
        // The frozen phase lasts at least two round trips.
        let ramp = transitions
            .iter()
            .find(|t| t.0 > pair[0] && t.1 == Phase::SlowdownRamp)
            .unwrap();
        assert!(
            ramp.0 - pair[0] >= 80 * MS,
            "frozen for {:?}",
            ramp.0 - pair[0]
        );
    }
    assert!(d.c.stats().slowdowns >= 2);
}

#[test]
fn slowdown_freeze_ends_once_the_queue_is_drained() {
    // (config, shortest and longest expected freeze) at a 40 ms path with no queue: the
    // extension ends the freeze after one base RTT, the draft holds it two smoothed RTTs.
    let cases = [
        (LedbatConfig::default(), 40 * MS, 50 * MS),
        (LedbatConfig::draft(), 80 * MS, 110 * MS),
    ];
    for (config, shortest, longest) in cases {
        let mut d = Driver::new(config);
        d.exit_slow_start(40 * MS);
        d.log.clear();
        // An ACK frame every 5 ms, as the packets still in flight keep coming back: with 10 ms
        // of queue until the slowdown starts, none after (the slowdown drained it).
        for _ in 0..200 {
            d.now += 5 * MS;
            let frozen = d.log.iter().any(|e| e.1 == Phase::SlowdownFreeze);
            let rtt = if frozen { 40 * MS } else { 50 * MS };
            d.c.on_ack_sample(d.now, d.now - rtt, 2400);
            d.c.end_acks(d.now, false);
            d.log.push((d.now, d.c.stats().phase, d.c.window()));
        }
        let start = d
            .log
            .iter()
            .position(|e| e.1 == Phase::SlowdownFreeze)
            .expect("a slowdown");
        let end = d.log[start..]
            .iter()
            .find(|e| e.1 != Phase::SlowdownFreeze)
            .expect("the freeze ends");
        let frozen = end.0 - d.log[start].0;
        assert!(
            frozen >= shortest && frozen <= longest,
            "frozen for {frozen:?}, expected {shortest:?}..{longest:?}"
        );
    }
}

#[test]
fn slowdown_ramp_returns_to_the_previous_window() {
    let mut d = Driver::new(LedbatConfig::default());
    d.settle(40 * MS);
    d.run_for(40 * MS, Duration::from_secs(1));
    // Find a slowdown and the window held just before it.
    let before = d.log.last().unwrap().2;
    d.log.clear();
    // 10 ms of queue throughout: the slowdown is needed, and never sees the queue drain.
    d.run_for(50 * MS, Duration::from_secs(20));
    let i = d
        .log
        .iter()
        .position(|e| e.1 == Phase::SlowdownFreeze)
        .expect("a slowdown within 20 s");
    let held = if i == 0 { before } else { d.log[i - 1].2 };
    let back = d.log[i..]
        .iter()
        .find(|e| e.1 == Phase::CongestionAvoidance)
        .expect("the slowdown ends");
    assert!(
        back.2 >= held * 95 / 100,
        "window {} after the slowdown, {} before",
        back.2,
        held
    );
}

#[test]
fn old_base_delays_age_out() {
    // A ceiling keeps the window (and the test) small.
    let config = LedbatConfig {
        ceiling: Some(250_000),
        ..LedbatConfig::default()
    };
    let mut d = Driver::new(config);
    d.run_for(40 * MS, Duration::from_secs(5));
    assert_eq!(d.c.stats().base_delay, Some(40 * MS));
    // The route changes: 100 ms from now on, with no queue.
    d.run_for(100 * MS, Duration::from_secs(300));
    let s = d.c.stats();
    assert_eq!(
        s.base_delay,
        Some(40 * MS),
        "still within the 10 minute history"
    );
    assert_eq!(s.queueing_delay, Some(60 * MS));
    d.run_for(100 * MS, Duration::from_secs(310));
    let s = d.c.stats();
    assert_eq!(s.base_delay, Some(100 * MS), "the 40 ms minimum aged out");
    assert_eq!(s.queueing_delay, Some(Duration::ZERO));
}

#[test]
fn isolated_random_losses_do_not_collapse_the_window() {
    // One loss per round trip at an empty queue (about 1 % loss at 20 Mbit/s, 40 ms).
    let mut tolerant = Driver::new(no_slowdowns(LedbatConfig::default()));
    let mut draft = Driver::new(no_slowdowns(LedbatConfig::draft()));
    for d in [&mut tolerant, &mut draft] {
        for _ in 0..100 {
            d.round_with_loss(40 * MS, true);
        }
    }
    let t = tolerant.c.stats();
    let h = draft.c.stats();
    assert!(
        t.window >= BDP_20M_40MS * 9 / 10,
        "tolerant window {} after 100 lossy round trips",
        t.window
    );
    // At most one loss reaction per round trip.
    assert!(t.random_losses >= 40 && t.congestion_losses == 0, "{t:?}");
    // The draft's loss-halving does collapse, which is what the extension is for.
    assert!(
        h.window < 10_000,
        "draft window {} after 100 lossy round trips",
        h.window
    );
}

#[test]
fn loss_with_a_queue_halves_the_window() {
    let mut d = Driver::new(no_slowdowns(LedbatConfig::default()));
    d.settle(40 * MS);
    d.run_for(40 * MS, Duration::from_millis(500));
    // Queue of 30 ms: a loss now is an overflow at a queue we help fill.
    d.round(70 * MS);
    d.round(70 * MS);
    let before = d.c.window();
    let sent = d.now - 70 * MS;
    d.c.on_congestion_event(d.now, sent, false, u64::from(MTU));
    let after = d.c.window();
    assert_eq!(after, before / 2);
    // A second loss from the same flight is the same event.
    d.c.on_congestion_event(d.now, sent, false, u64::from(MTU));
    assert_eq!(d.c.window(), after);
    assert_eq!(d.c.stats().congestion_losses, 1);
}

#[test]
fn persistent_congestion_resets_to_the_floor() {
    let mut d = Driver::new(LedbatConfig::default());
    d.run_for(40 * MS, Duration::from_secs(1));
    d.c.on_congestion_event(d.now, d.now, true, 10_000);
    assert_eq!(d.c.window(), d.c.floor_window());
}

#[test]
fn recovers_fast_once_the_queue_empties_and_still_yields() {
    let mut results = Vec::new();
    for config in [LedbatConfig::default(), LedbatConfig::draft()] {
        let mut d = Driver::new(no_slowdowns(config));
        d.settle(40 * MS);
        d.run_for(40 * MS, Duration::from_secs(2));
        // Competing TCP fills a 100 ms queue for 10 s.
        d.run_for(140 * MS, Duration::from_secs(10));
        assert_eq!(d.c.window(), d.c.floor_window(), "yielded to the queue");
        // TCP stops; how long until the window is 80 % of the BDP again?
        let t = d.time_to_reach(40 * MS, BDP_20M_40MS * 8 / 10, Duration::from_secs(30));
        results.push(t);
    }
    let fast = results[0].expect("extension recovers");
    assert!(fast < Duration::from_secs(1), "recovered in {fast:?}");
    let slow = results[1].expect("draft recovers eventually");
    assert!(slow > Duration::from_secs(5), "draft recovered in {slow:?}");
}

#[test]
fn idle_ramp_stops_at_the_first_queue() {
    // Without the competition-aware yield, which would (rightly) take a queue this window does
    // not explain for a competitor's and back off.
    let mut d = Driver::new(no_slowdowns(LedbatConfig {
        competition_yield: false,
        ..LedbatConfig::default()
    }));
    d.settle(40 * MS);
    d.run_for(40 * MS, Duration::from_millis(500));
    assert!(d.c.stats().idle_ramp_active);
    // 10 ms of queue: above the idle threshold, below target: back to GAIN per round trip.
    d.round(50 * MS);
    d.round(50 * MS);
    assert!(!d.c.stats().idle_ramp_active);
    let w0 = d.c.window();
    d.round(50 * MS);
    let w1 = d.c.window();
    assert!(w1 > w0 && w1 - w0 <= u64::from(MTU), "grew {w0} -> {w1}");
}

#[test]
fn ceiling_and_floor_bound_the_window() {
    let config = LedbatConfig {
        ceiling: Some(500_000),
        floor: 100_000,
        ..no_slowdowns(LedbatConfig::default())
    };
    let mut d = Driver::new(config);
    d.run_for(40 * MS, Duration::from_secs(3));
    // 500 kB/s × 40 ms = 20 kB.
    let w = d.c.window();
    assert!(
        (19_000..=20_000).contains(&w),
        "window {w} under a 500 kB/s ceiling"
    );
    assert_eq!(d.c.ceiling_window(), Some(w));
    // Heavy queueing: the floor of 100 kB/s × RTT holds.
    d.run_for(240 * MS, Duration::from_secs(5));
    let w = d.c.window();
    let rtt = d.c.stats().smoothed_rtt.unwrap();
    let floor = (100_000.0 * rtt.as_secs_f64()) as u64;
    assert!(
        w >= floor - 1 && w <= floor + 1,
        "window {w}, floor {floor}"
    );
}

#[test]
fn ceiling_follows_the_link_policy_at_run_time() {
    let config = no_slowdowns(LedbatConfig::default());
    let link = Arc::new(LinkPolicy::new(None, config.floor).unwrap());
    let now = Instant::now();
    let mut c = Ledbat::new(Arc::new(config), link.clone(), now, MTU);
    let mut t = now;
    for _ in 0..2000 {
        t += 2 * MS;
        c.on_ack_sample(t, t - 40 * MS, 2400);
        c.end_acks(t, false);
    }
    assert!(c.window() > 100_000);
    link.set_ceiling(Some(1_000_000)).unwrap();
    // 1 MB/s × 40 ms = 40 kB, immediately on read.
    assert_eq!(c.window(), 40_000);
    // A second connection on the link halves each one's share.
    let other = Ledbat::new(Arc::new(LedbatConfig::default()), link.clone(), now, MTU);
    assert_eq!(c.window(), 20_000);
    drop(other);
    assert_eq!(c.window(), 40_000);
}

#[test]
fn app_limited_acks_do_not_grow_the_window() {
    let mut d = Driver::new(LedbatConfig::default());
    let w0 = d.c.window();
    for _ in 0..50 {
        d.now += 20 * MS;
        let sent = d.now - 40 * MS;
        d.c.on_ack_sample(d.now, sent, 1200);
        d.c.end_acks(d.now, true);
    }
    assert_eq!(d.c.window(), w0);
}

#[test]
fn quinn_interface_matches_state() {
    let d = Driver::new(LedbatConfig::default());
    let c: Box<dyn Controller> = d.c.clone_box();
    assert_eq!(c.window(), 4800);
    assert_eq!(c.initial_window(), 4800);
    assert_eq!(c.metrics().congestion_window, 4800);
    let back = c.into_any().downcast::<Ledbat>().expect("a Ledbat");
    assert_eq!(back.stats().phase, Phase::SlowStart);
}

#[test]
fn yields_to_a_competitor_that_keeps_the_queue_below_target() {
    // A BBR-like competitor holds 20 ms of queue: below the target (30 ms as shipped, 60 ms in
    // the draft), so the draft keeps a large window; the competition-aware extension sees the
    // queue is not its own and weighs it × 2.
    let mut windows = Vec::new();
    for config in [LedbatConfig::default(), LedbatConfig::draft()] {
        let mut d = Driver::new(no_slowdowns(config));
        let end = d.now + Duration::from_secs(5);
        while d.now < end {
            d.round_on_link(LINK_RATE as f64, 40 * MS, Duration::ZERO);
        }
        let alone = d.c.window();
        let end = d.now + Duration::from_secs(5);
        while d.now < end {
            d.round_on_link(LINK_RATE as f64, 40 * MS, 20 * MS);
        }
        windows.push((alone, d.c.window(), d.c.stats()));
    }
    let (alone, ext, stats) = windows[0];
    let (draft_alone, draft, _) = windows[1];
    assert!(
        ext <= 2 * d_floor(&stats),
        "extension window {ext} with a 20 ms competitor queue (alone {alone}): {stats:?}"
    );
    assert!(
        draft >= 50_000,
        "draft window {draft} (alone {draft_alone}) with a 20 ms competitor queue"
    );
}

/// Floor window of a controller in the state `stats` describes (default floor, 1200-byte MTU).
fn d_floor(stats: &branchline_ledbat::LedbatStats) -> u64 {
    let rtt = stats.smoothed_rtt.unwrap().as_secs_f64();
    (2 * u64::from(MTU)).max((LedbatConfig::default().floor as f64 * rtt) as u64)
}

#[test]
fn alone_on_a_link_the_extension_holds_the_same_queue_as_the_draft() {
    // No phantom competitor: alone, the window explains the whole queue.
    let mut results = Vec::new();
    for config in [LedbatConfig::default(), LedbatConfig::draft()] {
        let d_target = config.target;
        let config = LedbatConfig {
            ceiling: Some(100 * LINK_RATE),
            ..no_slowdowns(config)
        };
        let mut d = Driver::new(config);
        let end = d.now + Duration::from_secs(20);
        while d.now < end {
            d.round_on_link(LINK_RATE as f64, 40 * MS, Duration::ZERO);
        }
        let s = d.c.stats();
        assert!(s.others_delay < 5 * MS, "{s:?}");
        results.push((s.queueing_delay.unwrap(), d_target));
    }
    // Each holds about its own target (30 ms as shipped, 60 ms in the draft).
    for (qd, target) in &results {
        assert!(
            *qd >= *target * 5 / 6 && *qd <= *target * 11 / 10,
            "queueing delay {qd:?} alone, target {target:?} (extension, draft: {results:?})"
        );
    }
}

#[test]
fn a_short_burst_of_queue_is_not_taken_for_a_competitor() {
    let mut d = Driver::new(no_slowdowns(LedbatConfig {
        ceiling: Some(100 * LINK_RATE),
        ..LedbatConfig::default()
    }));
    let end = d.now + Duration::from_secs(10);
    while d.now < end {
        d.round_on_link(LINK_RATE as f64, 40 * MS, Duration::ZERO);
    }
    let w = d.c.window();
    // Three ACK frames see 30 ms of extra queue (a burst), then the path is as before.
    for _ in 0..3 {
        d.now += MS;
        d.c.on_ack_sample(d.now, d.now - 130 * MS, 2400);
        d.c.end_acks(d.now, false);
        assert!(d.c.stats().others_delay < 5 * MS, "{:?}", d.c.stats());
    }
    assert!(d.c.window() as f64 >= 0.95 * w as f64);
}

/// Rounds on a 20 Mbit/s, 40 ms link model (see [`Driver::round_on_link`]) with `others` of
/// queue held by other flows, for `span`; returns the link utilization the windows gave (a
/// window below the bandwidth-delay product leaves the link partly idle for that round trip).
fn utilization_on_link(d: &mut Driver, span: Duration, others: Duration) -> f64 {
    let base = 40 * MS;
    let capacity = LINK_RATE as f64;
    let bdp = capacity * base.as_secs_f64();
    let (mut busy, mut total) = (0.0, 0.0);
    let end = d.now + span;
    while d.now < end {
        let w = d.c.window() as f64;
        let start = d.now;
        d.round_on_link(capacity, base, others);
        let rtt = (d.now - start).as_secs_f64();
        busy += rtt * (w / bdp).min(1.0);
        total += rtt;
    }
    busy / total
}

#[test]
fn gentle_slowdown_refills_the_link_at_once_and_keeps_the_drafts_schedule() {
    // Alone on the link model, long enough for several slowdowns; the same controller without
    // the gentle slowdown for comparison.
    let mut results = Vec::new();
    for gentle in [true, false] {
        let config = LedbatConfig {
            gentle_slowdown: gentle,
            ceiling: Some(100 * LINK_RATE),
            ..LedbatConfig::default()
        };
        let mut d = Driver::new(config);
        utilization_on_link(&mut d, Duration::from_secs(5), Duration::ZERO);
        d.log.clear();
        let before = d.c.stats().slowdowns;
        let util = utilization_on_link(&mut d, Duration::from_secs(60), Duration::ZERO);
        // Alone, a slowdown's drain and return is no competitor arriving.
        assert_eq!(d.c.stats().competitor_arrivals, 0, "{:?}", d.c.stats());
        // The first window of each ramp after a freeze.
        let ramp_starts: Vec<u64> = d
            .log
            .windows(2)
            .filter(|w| w[0].1 == Phase::SlowdownFreeze && w[1].1 == Phase::SlowdownRamp)
            .map(|w| w[1].2)
            .collect();
        results.push((util, d.c.stats().slowdowns - before, ramp_starts));
    }
    let (gentle_util, gentle_n, gentle_ramps) = &results[0];
    let (plain_util, plain_n, plain_ramps) = &results[1];
    assert!(*gentle_n >= 2, "slowdowns still happen: {results:?}");
    assert!(
        gentle_n < plain_n,
        "the draft's schedule spaces slowdowns wider than the shortened ones: {results:?}"
    );
    // Straight back to about the bandwidth-delay product (100 kB) once the queue drained,
    // where the plain ramp starts from 2 packets.
    assert!(
        gentle_ramps.iter().all(|w| *w >= 90_000),
        "gentle ramps start at {gentle_ramps:?}"
    );
    assert!(
        plain_ramps.iter().all(|w| *w <= 10_000),
        "plain ramps start at {plain_ramps:?}"
    );
    assert!(
        *gentle_util >= 0.98 && gentle_util > plain_util,
        "utilization gentle {gentle_util:.3}, plain {plain_util:.3}"
    );
}

#[test]
fn no_slowdown_while_the_queue_is_already_empty() {
    // Below the bandwidth-delay product (a ceiling holds the window at 80 kB on a 100 kB
    // path), the queue stays empty and the base delay is measured all the time: the gentle
    // slowdown skips the slowdowns the draft would still take.
    let mut counts = Vec::new();
    for gentle in [true, false] {
        let config = LedbatConfig {
            gentle_slowdown: gentle,
            ceiling: Some(LINK_RATE * 8 / 10),
            ..LedbatConfig::default()
        };
        let mut d = Driver::new(config);
        d.settle(40 * MS);
        let before = d.c.stats().slowdowns;
        d.run_for(40 * MS, Duration::from_secs(30));
        counts.push(d.c.stats().slowdowns - before);
    }
    assert_eq!(counts[0], 0, "gentle, plain: {counts:?}");
    assert!(counts[1] >= 3, "gentle, plain: {counts:?}");
}

#[test]
fn yields_at_the_pace_of_the_base_round_trip_when_others_build_a_queue() {
    // Alone at about 30 ms of own queue, then a competitor adds 80 ms: the round trip grows
    // to ~150 ms, and the draft's cap (half per round trip) would make the yield that much
    // slower in wall-clock time.
    let mut after = Vec::new();
    for competition_yield in [true, false] {
        let config = LedbatConfig {
            competition_yield,
            ceiling: Some(100 * LINK_RATE),
            ..no_slowdowns(LedbatConfig::default())
        };
        let mut d = Driver::new(config);
        utilization_on_link(&mut d, Duration::from_secs(10), Duration::ZERO);
        let w0 = d.c.window();
        let start = d.now;
        while d.now - start < Duration::from_millis(450) {
            d.round_on_link(LINK_RATE as f64, 40 * MS, 80 * MS);
        }
        after.push((w0, d.c.window()));
    }
    let (w0, fast) = after[0];
    let (_, draft_cap) = after[1];
    assert!(
        fast * 3 <= draft_cap,
        "after 450 ms of competitor queue: {fast} with the extension, {draft_cap} with the \
         draft's cap (from {w0})"
    );
}

/// A competitor in slow start on the 20 Mbit/s, 40 ms link model: its window starts at 10
/// packets (12 kB) and doubles every round trip until it holds the path's bandwidth-delay
/// product plus `cap_queue` of queue. Each round trip, both windows share the link: the RTT
/// is the base plus the queue both build, and each flow delivers its window per round trip.
/// Returns the time from the competitor's start until it delivers 90 % of the link rate in
/// a round trip, and our window then.
fn competitor_ramp(
    d: &mut Driver,
    cap_queue: Duration,
    limit: Duration,
) -> Option<(Duration, u64)> {
    let capacity = LINK_RATE as f64;
    let base = 40 * MS;
    let cap = capacity * (base + cap_queue).as_secs_f64();
    let mut other = 12_000.0f64;
    let start = d.now;
    while d.now - start < limit {
        let w = d.c.window() as f64;
        let queue = ((w + other - capacity * base.as_secs_f64()) / capacity).max(0.0);
        let rtt = base + Duration::from_secs_f64(queue);
        d.round(rtt);
        let rate = other / rtt.as_secs_f64();
        if rate >= 0.9 * capacity {
            return Some((d.now - start, d.c.window()));
        }
        other = (other * 2.0).min(cap);
    }
    None
}

#[test]
fn yields_at_once_to_an_arriving_competitor() {
    // Alone at about 30 ms of own queue for 10 s, then a TCP-like flow starts. Without the
    // arrival yield, the filtered others-delay estimate trails the competitor's doubling by a
    // round trip and the cut is proportional to a queue just above the target; with it, the
    // first round trip of the competitor's queue starts the yield.
    let mut ramps = Vec::new();
    for arrival_yield in [true, false] {
        let config = LedbatConfig {
            arrival_yield,
            ceiling: Some(100 * LINK_RATE),
            ..no_slowdowns(LedbatConfig::default())
        };
        let mut d = Driver::new(config);
        utilization_on_link(&mut d, Duration::from_secs(10), Duration::ZERO);
        let alone = d.c.stats();
        assert_eq!(alone.competitor_arrivals, 0, "alone: {alone:?}");
        let ramp = competitor_ramp(&mut d, 30 * MS, Duration::from_secs(5));
        ramps.push((ramp, d.c.stats()));
    }
    let (with, with_stats) = ramps[0];
    let (without, _) = ramps[1];
    let (with, _) = with.expect("the competitor reaches 90 % with the arrival yield");
    let (without, _) = without.expect("the competitor reaches 90 % without it");
    assert!(with_stats.competitor_arrivals >= 1, "{with_stats:?}");
    assert!(
        with + 100 * MS <= without,
        "competitor at 90 % after {with:?} with the arrival yield, {without:?} without"
    );
}

#[test]
fn two_background_flows_keep_the_link_full_with_the_arrival_yield() {
    // Two controllers share the link model (the RTT is the base plus the queue both windows
    // build), the second starting 5 s after the first, for 60 s with slowdowns: each one's
    // slowdown and return look like an arrival to the other, which must not cost the link.
    let mut results = Vec::new();
    for arrival_yield in [true, false] {
        let config = LedbatConfig {
            arrival_yield,
            ceiling: Some(100 * LINK_RATE),
            ..LedbatConfig::default()
        };
        let mut a = Driver::new(config.clone());
        let mut b = Driver::new(config);
        b.now = a.now;
        let capacity = LINK_RATE as f64;
        let base = 40 * MS;
        let bdp = capacity * base.as_secs_f64();
        let (mut busy, mut total, mut share_b) = (0.0, 0.0, 0.0);
        let start = a.now;
        while a.now - start < Duration::from_secs(65) {
            let late = a.now - start < Duration::from_secs(5);
            let wa = a.c.window() as f64;
            let wb = if late { 0.0 } else { b.c.window() as f64 };
            let queue = ((wa + wb - bdp) / capacity).max(0.0);
            let rtt = base + Duration::from_secs_f64(queue);
            a.round(rtt);
            if late {
                b.now = a.now;
            } else {
                b.round(rtt);
                // Keep both on one clock (their rounds may end a few µs apart).
                b.now = a.now;
                if a.now - start >= Duration::from_secs(10) {
                    let dt = rtt.as_secs_f64();
                    busy += dt * ((wa + wb) / bdp).min(1.0);
                    total += dt;
                    share_b += dt * wb / (wa + wb);
                }
            }
        }
        results.push((
            busy / total,
            share_b / total,
            a.c.stats().competitor_arrivals,
            b.c.stats().competitor_arrivals,
        ));
    }
    // Both configurations leave the link as full; in this model the latecomer ends up with
    // most of it either way (each takes the other's queue for a competitor's), so the
    // arrival yield changes who yields, not how much of the link is used.
    let (util, _, arrivals_a, _) = results[0];
    let (util_without, _, _, _) = results[1];
    assert!(
        arrivals_a >= 1,
        "the first flow saw the second arrive: {results:?}"
    );
    assert!(
        util >= 0.97 && util >= util_without - 0.005,
        "utilization {util:.3} with the arrival yield, {util_without:.3} without: {results:?}"
    );
}

#[test]
fn a_stall_of_our_own_is_not_taken_for_an_arriving_competitor() {
    // Alone on the link model, then the sender stalls for 140 ms (a starved thread): the ACKs
    // of the window in flight wait and are processed at once, their samples inflated by the
    // wait, and the window then leaves as one burst into the drained pipe, its last packets
    // queued behind a window of its own. Neither is a competitor.
    let mut d = Driver::new(no_slowdowns(LedbatConfig {
        ceiling: Some(100 * LINK_RATE),
        ..LedbatConfig::default()
    }));
    utilization_on_link(&mut d, Duration::from_secs(10), Duration::ZERO);
    let w = d.c.window();
    let capacity = LINK_RATE as f64;
    let pkt = u64::from(MTU);
    let frames = w / (2 * pkt);
    let frame_time = Duration::from_secs_f64((2 * pkt) as f64 / capacity);
    // The window in flight, sent over the last round trip before the stall.
    let sent_from = d.now - frame_time * frames as u32;
    d.now += 140 * MS;
    for i in 0..frames {
        d.c.on_ack_sample(d.now, sent_from + frame_time * i as u32, 2 * pkt);
        d.c.end_acks(d.now, false);
    }
    // The burst: sent at once, acknowledged as the link serves it.
    let sent = d.now;
    let base = 40 * MS;
    for i in 1..=frames {
        d.now = sent + base + frame_time * i as u32;
        d.c.on_ack_sample(d.now, sent, 2 * pkt);
        d.c.end_acks(d.now, false);
    }
    for _ in 0..5 {
        d.round_on_link(capacity, base, Duration::ZERO);
    }
    let s = d.c.stats();
    assert_eq!(s.competitor_arrivals, 0, "{s:?}");
    assert!(
        s.window >= BDP_20M_40MS,
        "window {} after the stall (was {w}): {s:?}",
        s.window
    );
}

#[test]
fn no_slowdown_right_after_refilling_the_link() {
    // A competitor holds 100 ms of queue for 10 s plus an offset (so the slowdown schedule
    // falls anywhere), then stops. The controller ramps back over an empty queue, which
    // measures the base delay as a slowdown would: the next slowdown is due a whole interval
    // after that, not on the schedule the competitor's period left.
    let mut hits = Vec::new();
    for offset_ms in (0..3000).step_by(100) {
        let mut d = Driver::new(LedbatConfig {
            ceiling: Some(100 * LINK_RATE),
            ..LedbatConfig::default()
        });
        utilization_on_link(&mut d, Duration::from_secs(10), Duration::ZERO);
        utilization_on_link(&mut d, Duration::from_millis(10_000 + offset_ms), 100 * MS);
        let stop = d.now;
        // Back to 80 % of the bandwidth-delay product...
        while d.c.window() < BDP_20M_40MS * 8 / 10 {
            assert!(
                d.now - stop < Duration::from_secs(2),
                "no recovery: {:?}",
                d.c.stats()
            );
            d.round_on_link(LINK_RATE as f64, 40 * MS, Duration::ZERO);
        }
        // ... and no slowdown in the 2 s after.
        let before = d.c.stats().slowdowns;
        utilization_on_link(&mut d, Duration::from_secs(2), Duration::ZERO);
        if d.c.stats().slowdowns > before {
            hits.push(offset_ms);
        }
    }
    assert!(
        hits.is_empty(),
        "a slowdown right after refilling, offsets {hits:?} ms"
    );
}
