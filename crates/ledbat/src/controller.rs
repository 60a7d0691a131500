//! The LEDBAT++ state machine and its quinn [`Controller`] face.
//!
//! Everything here is a pure function of the events fed in and the `Instant`s that come with
//! them: no clock is read, no socket touched. quinn calls the [`Controller`] methods; tests call
//! the same methods (plus [`Ledbat::on_ack_sample`], which is `on_ack` without quinn's
//! `RttEstimator`, a type only quinn can build) with synthetic times.
//!
//! # RTT samples
//!
//! quinn calls `on_ack` once per newly acknowledged packet and then `on_end_acks` once per ACK
//! frame, all with the same `now`. The `RttEstimator` it passes is updated only *after* that
//! batch, and exposes only smoothed and minimum values, so the controller takes its own samples:
//! `now - sent` for every acknowledged packet, keeping the smallest of the batch (the packet
//! sent last, i.e. the one the ACK frame was sent for). One sample per ACK frame feeds the
//! base-delay history and the current-delay filter (see [`crate::delay`]).

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_proto::RttEstimator;
use quinn_proto::congestion::{Controller, ControllerFactory, ControllerMetrics};

use crate::config::LedbatConfig;
use crate::delay::{BaseDelayHistory, CurrentDelayFilter, MaxRateFilter};
use crate::policy::{LinkPolicy, Registration};

/// RTT assumed for rate-to-window conversions before the first sample: quinn's default initial
/// RTT (333 ms, RFC 9002 §6.2.2).
const INITIAL_RTT: Duration = Duration::from_millis(333);

/// Largest window the controller will ever ask for (bytes): 1 GiB, far beyond any WAN
/// bandwidth-delay product, so the arithmetic stays finite.
const MAX_WINDOW: f64 = (1u64 << 30) as f64;

/// Shortest interval over which a delivery rate is measured for the capacity estimate: 250 ms.
const MIN_RATE_INTERVAL: Duration = Duration::from_millis(250);

/// Largest divisor of the dynamic gain (draft §4.3: `GAIN = 1 / min(16, ceil(2·TARGET/base))`).
const MAX_GAIN_DIVISOR: f64 = 16.0;

/// Where the controller is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Initial slow start: grows by `GAIN` × acknowledged bytes until the queueing delay passes
    /// ¾ of the target (draft §4.2).
    SlowStart,
    /// Congestion avoidance: the LEDBAT++ delay controller (draft §4.1).
    CongestionAvoidance,
    /// A periodic slowdown, window held at the minimum so the queue drains and the base delay
    /// is measured afresh (draft §4.4).
    SlowdownFreeze,
    /// Slow start back up to the window held before the slowdown.
    SlowdownRamp,
}

/// A snapshot of the controller's state, for logs, metrics and the benchmark.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct LedbatStats {
    /// Congestion window (bytes).
    pub window: u64,
    /// Slow-start threshold (bytes); `u64::MAX` until the first slow start ends.
    pub ssthresh: u64,
    /// Current phase.
    pub phase: Phase,
    /// Base delay (minimum RTT over the history window), if any sample was taken.
    pub base_delay: Option<Duration>,
    /// Queueing delay (current delay minus base delay), if any sample was taken.
    pub queueing_delay: Option<Duration>,
    /// Smoothed RTT of the controller's own samples, if any.
    pub smoothed_rtt: Option<Duration>,
    /// Whether the idle-link ramp was active at the last ACK frame.
    pub idle_ramp_active: bool,
    /// Queueing delay attributed to other flows at the last ACK frame.
    pub others_delay: Duration,
    /// Whether the arrival yield (a competitor's queue rising, see
    /// [`LedbatConfig::arrival_yield`]) was active at the last ACK frame.
    pub arrival_yield_active: bool,
    /// Competitor arrivals detected so far (each starts an arrival yield).
    pub competitor_arrivals: u64,
    /// Slowdowns started so far.
    pub slowdowns: u64,
    /// Loss events handled as congestion (window halved).
    pub congestion_losses: u64,
    /// Loss events handled as random loss (window reduced by `random_loss_reduction`).
    pub random_losses: u64,
}

/// Builds [`Ledbat`] controllers for quinn; one factory per WAN link.
///
/// All controllers built by one factory share its [`LinkPolicy`], so the link's rate ceiling
/// is split between them.
#[derive(Debug, Clone)]
pub struct LedbatFactory {
    config: Arc<LedbatConfig>,
    link: Arc<LinkPolicy>,
}

impl LedbatFactory {
    /// A factory for the given configuration, with a fresh link policy taken from the
    /// configuration's `ceiling` and `floor`.
    ///
    /// # Errors
    /// [`crate::ConfigError`] if the configuration is inconsistent.
    pub fn new(config: LedbatConfig) -> Result<Self, crate::ConfigError> {
        config.validate()?;
        let link = Arc::new(LinkPolicy::new(config.ceiling, config.floor)?);
        Ok(Self {
            config: Arc::new(config),
            link,
        })
    }

    /// The link policy shared by this factory's controllers; change the ceiling or floor there
    /// when the server's policy changes.
    pub fn link(&self) -> &Arc<LinkPolicy> {
        &self.link
    }

    /// The configuration.
    pub fn config(&self) -> &LedbatConfig {
        &self.config
    }
}

impl ControllerFactory for LedbatFactory {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Ledbat::new(
            self.config.clone(),
            self.link.clone(),
            now,
            current_mtu,
        ))
    }
}

/// ACK frame being processed: packets acknowledged so far, and the smallest `now - sent`.
#[derive(Debug, Clone, Default)]
struct Batch {
    bytes: u64,
    min_rtt: Option<Duration>,
}

/// One LEDBAT++ congestion controller (one per QUIC path).
#[derive(Debug, Clone)]
pub struct Ledbat {
    config: Arc<LedbatConfig>,
    link: Registration,
    /// Current MTU (bytes).
    mtu: u64,
    /// Congestion window (bytes), fractional so that small per-ACK increments add up.
    cwnd: f64,
    /// Slow-start threshold (bytes).
    ssthresh: f64,
    phase: Phase,
    base: BaseDelayHistory,
    current: CurrentDelayFilter,
    /// Smoothed RTT of our own samples (RFC 6298 weights).
    srtt: Option<Duration>,
    batch: Batch,
    /// Time of the last loss reaction: losses of packets sent before it belong to the same
    /// event.
    recovery_start: Option<Instant>,
    /// Since when the queueing delay has stayed under `idle_delay`.
    idle_since: Option<Instant>,
    /// Whether the idle-link ramp was active at the last ACK frame.(for [`LedbatStats`]).
    ramp_active: bool,
    /// Path capacity estimate: maximum delivery rate per round trip (bytes/s).
    capacity: MaxRateFilter,
    /// Current delivery-rate interval: start, bytes acknowledged, whether app-limited.
    rate_interval: Option<(Instant, f64, bool)>,
    /// Queueing delay attributed to other flows at the last ACK frame: the minimum of the raw
    /// estimates over the last smoothed RTT, so a burst of our own (a ramp, a pacing hiccup)
    /// is not taken for a competitor.
    others_delay: Duration,
    /// Raw estimates of the last smoothed RTT, increasing from front to back (monotonic queue
    /// for the windowed minimum).
    others_recent: VecDeque<(Instant, Duration)>,
    /// Windows of the last smoothed RTT, decreasing from front to back (monotonic queue for
    /// the windowed maximum): the queue measured now was built by the window of up to one
    /// round trip ago, not by the one just cut.
    recent_windows: VecDeque<(Instant, f64)>,
    /// Until when the arrival yield lasts (one smoothed RTT after the last rise detected).
    arrival_until: Option<Instant>,
    /// Whether the arrival yield was active at the last ACK frame.
    arriving: bool,
    /// Time of the last ACK frame with an RTT sample, to see gaps in the ACK clock.
    last_frame: Option<Instant>,
    /// Until when a rise is not taken for an arrival, after a gap in the ACK clock.
    arrival_blind_until: Option<Instant>,
    /// Competitor arrivals detected so far.
    arrivals: u64,
    /// When the running slowdown started and when its frozen phase ends.
    slowdown_started: Option<Instant>,
    freeze_until: Option<Instant>,
    /// How long the running slowdown would take as the draft runs it (frozen for
    /// `slowdown_freeze_rtts`, then slow start at the draft's gain from the minimum window back
    /// to the window held before), for the gentle slowdown's schedule.
    slowdown_nominal: Duration,
    /// When the next slowdown is due.
    next_slowdown: Option<Instant>,
    slowdowns: u64,
    congestion_losses: u64,
    random_losses: u64,
}

impl Ledbat {
    /// A controller starting at `now` on a path with the given MTU (bytes).
    ///
    /// `config` should have passed [`LedbatConfig::validate`] (the factory checks it); an
    /// unchecked one is still used without panicking, with zero sizes treated as one.
    pub fn new(config: Arc<LedbatConfig>, link: Arc<LinkPolicy>, _now: Instant, mtu: u16) -> Self {
        let base = BaseDelayHistory::new(config.base_history_bucket, config.base_history_buckets);
        let current = CurrentDelayFilter::new(config.current_filter);
        let config_capacity_window = config.capacity_window;
        let mut me = Self {
            cwnd: config.initial_window as f64,
            config,
            link: Registration::new(link),
            mtu: u64::from(mtu.max(1)),
            ssthresh: f64::INFINITY,
            phase: Phase::SlowStart,
            base,
            current,
            srtt: None,
            batch: Batch::default(),
            recovery_start: None,
            idle_since: None,
            ramp_active: false,
            capacity: MaxRateFilter::new(config_capacity_window),
            rate_interval: None,
            others_delay: Duration::ZERO,
            others_recent: VecDeque::new(),
            recent_windows: VecDeque::new(),
            arrival_until: None,
            arriving: false,
            last_frame: None,
            arrival_blind_until: None,
            arrivals: 0,
            slowdown_started: None,
            freeze_until: None,
            slowdown_nominal: Duration::ZERO,
            next_slowdown: None,
            slowdowns: 0,
            congestion_losses: 0,
            random_losses: 0,
        };
        me.clamp();
        me
    }

    /// One acknowledged packet: `sent` is when it was sent, `bytes` its size. Same as
    /// [`Controller::on_ack`] without quinn's RTT estimator, which this controller does not use.
    pub fn on_ack_sample(&mut self, now: Instant, sent: Instant, bytes: u64) {
        let rtt = now.saturating_duration_since(sent);
        self.batch.bytes = self.batch.bytes.saturating_add(bytes);
        self.batch.min_rtt = Some(self.batch.min_rtt.map_or(rtt, |m| m.min(rtt)));
    }

    /// End of one ACK frame: take the RTT sample and update the window. Same as
    /// [`Controller::on_end_acks`].
    pub fn end_acks(&mut self, now: Instant, app_limited: bool) {
        let batch = std::mem::take(&mut self.batch);
        let Some(sample) = batch.min_rtt else {
            return;
        };
        self.note_ack_gap(now);
        self.take_sample(now, sample);
        self.measure_rate(now, batch.bytes as f64, app_limited);
        let qd = self.queueing_delay().unwrap_or(Duration::ZERO);
        self.track_idle(now, qd);
        self.ramp_active = self.idle_ramp_active(now);
        let bytes = batch.bytes as f64;
        let target = self.config.target.as_secs_f64();
        // The delay the controller steers by: the queueing delay, or (extension) the delay
        // other flows cause, weighted, if that is larger.
        let raw_others = self.others_delay_estimate(now, qd);
        self.others_delay = self.filter_others(now, raw_others);
        let qd_raw = qd.as_secs_f64();
        let qd_s = if self.config.competition_yield {
            qd_raw.max(self.config.others_weight * self.others_delay.as_secs_f64())
        } else {
            qd_raw
        };
        // Extension: a competitor arriving (the queue others hold rising fast) counts as a
        // queue of twice the target, so the window shrinks at the capped pace at once.
        self.arriving = self.detect_arrival(now);
        let qd_s = if self.arriving {
            qd_s.max(2.0 * target)
        } else {
            qd_s
        };

        match self.phase {
            Phase::SlowdownFreeze => {
                // Extension: the freeze exists to drain the queue and measure the base delay.
                // Once a sample shows the queue empty, after at least one base RTT, that is
                // done; holding on would leave the link idle for nothing.
                let drained = self.config.idle_ramp
                    && qd <= self.config.idle_delay
                    && self.slowdown_started.is_some_and(|t| {
                        now.saturating_duration_since(t) >= self.base.base().unwrap_or_default()
                    });
                if drained || self.freeze_until.is_none_or(|t| now >= t) {
                    self.freeze_until = None;
                    self.phase = Phase::SlowdownRamp;
                    if drained && self.config.gentle_slowdown {
                        self.restore_after_drain(now);
                    }
                }
            }
            Phase::SlowStart | Phase::SlowdownRamp => {
                // Slow start ends on the plain queueing delay (draft §4.2): while the window
                // grows from nothing, "our" share of the queue is not yet meaningful.
                if qd_raw > 0.75 * target {
                    self.exit_slow_start(now);
                } else if !app_limited {
                    let growth = if self.phase == Phase::SlowdownRamp && self.config.idle_ramp {
                        // Extension: back up to a window this path held moments ago, at full
                        // slow-start speed; the ¾-target exit above still stops it at a queue.
                        1.0
                    } else if self.idle_ramp_active(now) {
                        self.config.idle_growth.max(self.gain())
                    } else {
                        self.gain()
                    };
                    self.cwnd += growth * bytes;
                    if self.cwnd >= self.ssthresh {
                        self.cwnd = self.ssthresh;
                        self.exit_slow_start(now);
                    }
                }
            }
            Phase::CongestionAvoidance => {
                if self.config.gentle_slowdown && self.idle_ramp_active(now) {
                    // Extension: the queue has been empty for a while (the link is idle, or
                    // we are ramping back after a competitor left), so the base delay is
                    // being measured right now and nobody holds a queue for a latecomer to
                    // mistake for the base: this is as good as a slowdown, and the next one
                    // comes on the draft's schedule from here. A slowdown falling due now
                    // would only idle the link; one falling due just after the ramp (the
                    // schedule a competitor's period left) would idle it again.
                    let srtt = self.srtt.unwrap_or(INITIAL_RTT);
                    let nominal = self.draft_slowdown_duration(srtt, self.cwnd);
                    let next = now + nominal.saturating_mul(self.config.slowdown_interval_factor);
                    self.next_slowdown = Some(self.next_slowdown.map_or(next, |t| t.max(next)));
                }
                if self.next_slowdown.is_some_and(|t| now >= t) {
                    self.start_slowdown(now);
                } else if qd_s < target {
                    if !app_limited {
                        if self.idle_ramp_active(now) {
                            self.cwnd += self.config.idle_growth * bytes;
                        } else {
                            self.cwnd += self.gain() * self.mtu as f64 * bytes / self.cwnd;
                        }
                    }
                } else {
                    // Per round trip (about one window acknowledged), W changes by
                    // max(GAIN − W·(delay/target − 1), −W/2) packets (draft §4.1). Per ACK that
                    // is GAIN·MSS·acked/W − (delay/target − 1)·acked, never below −acked/2,
                    // which caps the decrease at half the window per round trip wherever the
                    // round trip starts.
                    let off_target = qd_s / target - 1.0;
                    let change =
                        self.gain() * self.mtu as f64 * bytes / self.cwnd - off_target * bytes;
                    self.cwnd += change.max(-self.max_decrease() * bytes);
                }
            }
        }
        self.clamp();
    }

    /// A loss (or ECN congestion mark, `lost_bytes == 0`) of a packet sent at `sent`. Same as
    /// [`Controller::on_congestion_event`].
    pub fn congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        persistent: bool,
        lost_bytes: u64,
    ) {
        if persistent {
            // Every packet for a whole PTO period was lost: start over from the minimum.
            self.recovery_start = Some(now);
            self.congestion_losses += 1;
            self.idle_since = None;
            self.cwnd = 0.0;
            self.ssthresh = self.min_window();
            self.leave_growth_phase(now);
            self.clamp();
            return;
        }
        if self.recovery_start.is_some_and(|r| sent <= r) {
            return;
        }
        self.recovery_start = Some(now);
        let random = self.config.loss_tolerance
            && lost_bytes > 0
            && self
                .queueing_delay()
                .is_some_and(|qd| qd < self.config.random_loss_delay);
        if random {
            self.random_losses += 1;
            self.cwnd *= 1.0 - self.config.random_loss_reduction;
        } else {
            self.congestion_losses += 1;
            self.idle_since = None;
            self.ramp_active = false;
            self.cwnd /= 2.0;
        }
        if matches!(self.phase, Phase::SlowStart | Phase::SlowdownRamp) {
            self.exit_slow_start(now);
        }
        self.clamp();
    }

    /// Congestion window (bytes), within the link policy's current floor and ceiling.
    pub fn window_bytes(&self) -> u64 {
        let (lo, hi) = self.bounds();
        self.cwnd.clamp(lo, hi) as u64
    }

    /// A snapshot of the state.
    pub fn stats(&self) -> LedbatStats {
        LedbatStats {
            window: self.window_bytes(),
            ssthresh: if self.ssthresh.is_finite() {
                self.ssthresh as u64
            } else {
                u64::MAX
            },
            phase: self.phase,
            base_delay: self.base.base(),
            queueing_delay: self.queueing_delay(),
            smoothed_rtt: self.srtt,
            idle_ramp_active: self.ramp_active,
            others_delay: self.others_delay,
            arrival_yield_active: self.arriving,
            competitor_arrivals: self.arrivals,
            slowdowns: self.slowdowns,
            congestion_losses: self.congestion_losses,
            random_losses: self.random_losses,
        }
    }

    /// Smallest window the controller will use now (bytes): the larger of the minimum window
    /// and `floor × RTT`.
    pub fn floor_window(&self) -> u64 {
        self.bounds().0 as u64
    }

    /// Largest window the controller will use now (bytes): `ceiling share × RTT`, never below
    /// the floor window; `None` without a ceiling.
    pub fn ceiling_window(&self) -> Option<u64> {
        let (_, hi) = self.bounds();
        (hi < MAX_WINDOW).then_some(hi as u64)
    }

    fn take_sample(&mut self, now: Instant, rtt: Duration) {
        self.base.update(now, rtt);
        self.current.push(rtt);
        self.srtt = Some(match self.srtt {
            None => rtt,
            Some(s) => (s * 7 + rtt) / 8,
        });
    }

    /// Delivery rate over intervals of two smoothed round trips (at least
    /// [`MIN_RATE_INTERVAL`]), into the capacity estimate; intervals during which the sender
    /// was app-limited say nothing about the path and are dropped. Long intervals keep a late
    /// burst of ACK processing (a busy sender) from inflating the estimate much.
    fn measure_rate(&mut self, now: Instant, bytes: f64, app_limited: bool) {
        let Some(srtt) = self.srtt else {
            return;
        };
        let span = (srtt * 2).max(MIN_RATE_INTERVAL);
        let (start, acked, limited) = self.rate_interval.get_or_insert((now, 0.0, false));
        *acked += bytes;
        *limited |= app_limited;
        let elapsed = now.saturating_duration_since(*start);
        if elapsed >= span {
            if !*limited {
                let rate = *acked / elapsed.as_secs_f64();
                self.capacity.push(now, rate);
            }
            self.rate_interval = Some((now, 0.0, false));
        }
    }

    /// Queueing delay other flows cause: the measured queueing delay minus the part this
    /// flow's own window explains at the estimated capacity, `(W − C·base) / C`.
    fn others_delay_estimate(&mut self, now: Instant, qd: Duration) -> Duration {
        let (Some(capacity), Some(base)) = (self.capacity.max(now), self.base.base()) else {
            return Duration::ZERO;
        };
        if capacity <= 0.0 {
            return Duration::ZERO;
        }
        let window = self.recent_window_max(now);
        let own = ((window - capacity * base.as_secs_f64()) / capacity).max(0.0);
        let others = qd.as_secs_f64() - own;
        if others > 0.0 && others.is_finite() {
            Duration::from_secs_f64(others.min(3600.0))
        } else {
            Duration::ZERO
        }
    }

    /// Largest window of the last smoothed RTT (the current one included). The queue this flow
    /// explains is that of the largest window whose packets may still be in it: right after a
    /// cut, the queue still holds the old window's packets for up to a round trip, and taking
    /// the cut window would attribute them to others.
    fn recent_window_max(&mut self, now: Instant) -> f64 {
        let span = self.srtt.unwrap_or(INITIAL_RTT);
        let w = self.cwnd;
        while self.recent_windows.back().is_some_and(|(_, x)| *x <= w) {
            self.recent_windows.pop_back();
        }
        self.recent_windows.push_back((now, w));
        while self
            .recent_windows
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > span)
        {
            self.recent_windows.pop_front();
        }
        self.recent_windows.front().map_or(w, |(_, x)| *x)
    }

    /// Minimum of the raw others-delay estimates over the last smoothed RTT.
    fn filter_others(&mut self, now: Instant, raw: Duration) -> Duration {
        let span = self.srtt.unwrap_or(INITIAL_RTT);
        while self.others_recent.back().is_some_and(|(_, d)| *d >= raw) {
            self.others_recent.pop_back();
        }
        self.others_recent.push_back((now, raw));
        while self
            .others_recent
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > span)
        {
            self.others_recent.pop_front();
        }
        self.others_recent.front().map_or(raw, |(_, d)| *d)
    }

    /// Minimum of the raw others-delay estimates taken within the last `span` (at most the
    /// smoothed RTT the estimates are kept for): the first entry of the monotonic queue inside
    /// the span.
    fn others_min_within(&self, now: Instant, span: Duration) -> Duration {
        self.others_recent
            .iter()
            .find(|(t, _)| now.saturating_duration_since(*t) <= span)
            .map_or(Duration::ZERO, |(_, d)| *d)
    }

    /// A gap in the ACK clock (no ACK frame for half a base RTT, and for four times the
    /// spacing the window implies) blinds the arrival yield for one smoothed RTT. After a
    /// stall of our own (a starved sender thread, or no data to send) the ACKs that waited
    /// come in at once, their RTT samples inflated by the wait, and the window then leaves as
    /// a burst into a drained pipe and builds a queue of its own that its size does not
    /// explain: both look like a queue others build. A competitor's arrival does not stop
    /// our ACK clock.
    fn note_ack_gap(&mut self, now: Instant) {
        let Some(last) = self.last_frame.replace(now) else {
            return;
        };
        let gap = now.saturating_duration_since(last);
        let srtt = self.srtt.unwrap_or(INITIAL_RTT);
        let base = self.base.base().unwrap_or(srtt);
        // One ACK frame per two packets; a window of `cwnd` bytes per smoothed RTT.
        let frames = (self.cwnd / (2 * self.mtu) as f64).max(1.0);
        let spacing = srtt.div_f64(frames);
        if gap > (base / 2).max(spacing * 4) {
            self.arrival_blind_until = Some(now + srtt.max(gap));
        }
    }

    /// Extension (arrival yield, with the competition-aware yield): whether a competitor is
    /// arriving, i.e. the queue others hold has risen by at least `arrival_rise` within the
    /// last smoothed RTT and stayed up for half a base RTT: the minimum of the raw
    /// others-delay estimates over the last half base RTT is `arrival_rise` above their
    /// minimum over the whole smoothed RTT (the filtered estimate the steering uses). A flow
    /// starting up doubles what it adds to the queue every round trip, while the filtered
    /// estimate lags a round trip behind it, and behind a queue that comes and goes as a
    /// starting flow's flights do; cutting in proportion to the excess over the target then
    /// yields a quarter of the window in the competitor's first 250 ms. Detected, the
    /// window shrinks at the capped pace (halving per base round trip) for one smoothed RTT
    /// from the last rise seen, after which the filtered estimate has caught up and the
    /// ordinary steering takes over. Only in congestion avoidance: in slow start and the ramp
    /// after a slowdown our own growth fills the queue, and those phases end at ¾ of the
    /// target anyway.
    fn detect_arrival(&mut self, now: Instant) -> bool {
        if !(self.config.competition_yield && self.config.arrival_yield)
            || self.phase != Phase::CongestionAvoidance
        {
            self.arrival_until = None;
            return false;
        }
        let Some(base) = self.base.base() else {
            return false;
        };
        let blind = self.arrival_blind_until.is_some_and(|t| now < t);
        let held = self.others_min_within(now, base / 2);
        if !blind && held >= self.others_delay.saturating_add(self.config.arrival_rise) {
            if self.arrival_until.is_none_or(|t| now >= t) {
                self.arrivals += 1;
            }
            self.arrival_until = Some(now + self.srtt.unwrap_or(INITIAL_RTT));
        }
        self.arrival_until.is_some_and(|t| now < t)
    }

    fn track_idle(&mut self, now: Instant, qd: Duration) {
        if qd <= self.config.idle_delay {
            self.idle_since.get_or_insert(now);
        } else {
            self.idle_since = None;
        }
    }

    /// Whether the queue has stayed empty long enough for the idle-link ramp.
    fn idle_ramp_active(&self, now: Instant) -> bool {
        let Some(since) = self.idle_since else {
            return false;
        };
        // Round trips counted at the latest RTT (the current delay) when it is shorter than the
        // smoothed one: right after a competitor's queue drains, the smoothed RTT still
        // remembers that queue for many samples (more so at a small window, with few ACKs per
        // round trip), and waiting two of those would leave the link idle for nothing.
        let rtt = match (self.srtt, self.current.current()) {
            (Some(s), Some(c)) => s.min(c),
            (Some(s), None) => s,
            _ => INITIAL_RTT,
        };
        let hold = rtt * self.config.idle_hold_rtts;
        self.config.idle_ramp && now.saturating_duration_since(since) >= hold
    }

    /// Queueing delay: current delay minus base delay.
    pub fn queueing_delay(&self) -> Option<Duration> {
        let current = self.current.current()?;
        let base = self.base.base()?;
        Some(current.saturating_sub(base))
    }

    /// Dynamic gain (draft §4.3): `1 / min(16, ceil(2·target / base delay))`.
    pub fn gain(&self) -> f64 {
        let Some(base) = self.base.base().filter(|b| !b.is_zero()) else {
            return 1.0 / MAX_GAIN_DIVISOR;
        };
        let ratio = (2.0 * self.config.target.as_secs_f64() / base.as_secs_f64()).ceil();
        1.0 / ratio.clamp(1.0, MAX_GAIN_DIVISOR)
    }

    fn exit_slow_start(&mut self, now: Instant) {
        self.ssthresh = self.cwnd;
        self.leave_growth_phase(now);
    }

    /// Ends slow start or a slowdown (if one is running) and schedules the next slowdown.
    fn leave_growth_phase(&mut self, now: Instant) {
        let srtt = self.srtt.unwrap_or(INITIAL_RTT);
        match self.phase {
            Phase::SlowStart => {
                // First slowdown two round trips after the initial slow start (draft §4.4).
                if self.next_slowdown.is_none() {
                    self.next_slowdown = Some(now + srtt * 2);
                }
            }
            Phase::SlowdownRamp | Phase::SlowdownFreeze => {
                // The idle-link ramp must not carry on from the drained queue the slowdown
                // just measured: the window is back where it was, and its queue is on the way.
                self.idle_since = None;
                let started = self.slowdown_started.take().unwrap_or(now);
                let mut took = now.saturating_duration_since(started);
                if self.config.gentle_slowdown {
                    // Extension: the schedule follows the draft's own slowdown, not the
                    // shortened one, so slowdowns come as often as in the draft and the time
                    // the shortcuts save is kept as link use rather than spent on more
                    // slowdowns.
                    took = took.max(self.slowdown_nominal);
                }
                self.next_slowdown =
                    Some(now + took.saturating_mul(self.config.slowdown_interval_factor));
                self.freeze_until = None;
            }
            Phase::CongestionAvoidance => {}
        }
        self.phase = Phase::CongestionAvoidance;
    }

    fn start_slowdown(&mut self, now: Instant) {
        let srtt = self.srtt.unwrap_or(INITIAL_RTT);
        self.slowdowns += 1;
        self.ssthresh = self.cwnd;
        self.cwnd = self.min_window();
        self.slowdown_started = Some(now);
        self.freeze_until = Some(now + srtt * self.config.slowdown_freeze_rtts);
        self.slowdown_nominal = self.draft_slowdown_duration(srtt, self.ssthresh);
        self.next_slowdown = None;
        self.phase = Phase::SlowdownFreeze;
    }

    /// Largest share of the window one round trip's acknowledgements may take off above the
    /// target: ½, the draft's cap (§4.1), when the round trip is at the base delay.
    ///
    /// Extension (with the competition-aware yield): while others hold a queue (more than
    /// `idle_delay` of it, see [`Ledbat::others_delay_estimate`], or one arriving, see
    /// [`Ledbat::detect_arrival`]), the cap is "halve at most
    /// once per *base* round trip", `1 − ½^(RTT / base)` per round trip. A competitor that
    /// builds a queue lengthens our round trip, and with the draft's per-round-trip cap the
    /// yield then gets slower in wall-clock time just when the competitor (a TCP flow in slow
    /// start) needs the link; this keeps the pace of the yield that of an empty path. A queue
    /// of our own (an overshoot) keeps the draft's cap: cutting it faster would take the
    /// window below the path's bandwidth-delay product and idle the link.
    fn max_decrease(&self) -> f64 {
        let others_queue = self.others_delay > self.config.idle_delay || self.arriving;
        if !self.config.competition_yield || !others_queue {
            return 0.5;
        }
        let (Some(current), Some(base)) = (self.current.current(), self.base.base()) else {
            return 0.5;
        };
        if base.is_zero() {
            return 0.5;
        }
        let rounds = (current.as_secs_f64() / base.as_secs_f64()).clamp(1.0, 16.0);
        1.0 - 0.5f64.powf(rounds)
    }

    /// How long the draft's slowdown takes from the current state: `slowdown_freeze_rtts`
    /// round trips frozen, then slow start at the draft's gain (× (1 + GAIN) per round trip)
    /// from the minimum window back to `window`.
    fn draft_slowdown_duration(&self, srtt: Duration, window: f64) -> Duration {
        let growth = (window / self.min_window()).max(1.0);
        let ramp_rounds = if growth.is_finite() {
            (growth.ln() / (1.0 + self.gain()).ln()).ceil()
        } else {
            0.0
        };
        let rounds = f64::from(self.config.slowdown_freeze_rtts) + ramp_rounds.min(1000.0);
        srtt.mul_f64(rounds)
    }

    /// Extension (gentle slowdown): once a slowdown has drained the queue, the base delay is
    /// measured and nobody else is queueing, so the window goes straight back to the path's
    /// bandwidth-delay product without a queue (capacity estimate × base delay), never above
    /// the window held before the slowdown; the ramp then slow-starts the rest of the way and
    /// its ¾-target exit still applies. The draft slow-starts from 2 packets instead, leaving
    /// the link mostly idle for several round trips per slowdown.
    fn restore_after_drain(&mut self, now: Instant) {
        let (Some(capacity), Some(base)) = (self.capacity.max(now), self.base.base()) else {
            return;
        };
        let bdp = capacity * base.as_secs_f64();
        if bdp.is_finite() && bdp > 0.0 {
            self.cwnd = self.cwnd.max(bdp.min(self.ssthresh));
        }
    }

    fn min_window(&self) -> f64 {
        (self.config.min_window_packets.max(1) * self.mtu) as f64
    }

    /// (floor window, ceiling window) in bytes.
    fn bounds(&self) -> (f64, f64) {
        let rtt = self.srtt.unwrap_or(INITIAL_RTT).as_secs_f64();
        let lo = self
            .min_window()
            .max(self.link.floor() as f64 * rtt)
            .min(MAX_WINDOW);
        let hi = match self.link.ceiling_share() {
            Some(rate) => (rate as f64 * rtt).clamp(lo, MAX_WINDOW),
            None => MAX_WINDOW,
        };
        (lo, hi)
    }

    fn clamp(&mut self) {
        let (lo, hi) = self.bounds();
        if !self.cwnd.is_finite() {
            self.cwnd = lo;
        }
        self.cwnd = self.cwnd.clamp(lo, hi);
    }
}

impl Controller for Ledbat {
    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        _app_limited: bool,
        _rtt: &RttEstimator,
    ) {
        self.on_ack_sample(now, sent, bytes);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        _in_flight: u64,
        app_limited: bool,
        _largest_packet_num_acked: Option<u64>,
    ) {
        self.end_acks(now, app_limited);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = u64::from(new_mtu.max(1));
        self.clamp();
    }

    fn window(&self) -> u64 {
        // The ceiling and floor follow the link policy, which may have changed since the last
        // event; `window_bytes` applies them on read too.
        self.window_bytes()
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = ControllerMetrics::default();
        m.congestion_window = self.window();
        m.ssthresh = self.ssthresh.is_finite().then_some(self.ssthresh as u64);
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        self.config.initial_window
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}
