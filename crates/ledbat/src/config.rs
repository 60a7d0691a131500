//! Tunables of the LEDBAT++ controller, with their documented defaults.
//!
//! Every default is a named function whose doc comment states the value, so the numbers a
//! network admin may ask about are written down once. [`LedbatConfig::default`] is the
//! controller Branchline ships (LEDBAT++ plus the two extensions described in the crate docs);
//! [`LedbatConfig::draft`] is the draft algorithm alone, kept for comparison in the benchmark.

use std::time::Duration;

use crate::ConfigError;

/// Default target queueing delay: 30 ms, half the draft's 60 ms
/// (draft-irtf-iccrg-ledbat-plus-plus §4.1).
///
/// Why lower than the draft: Branchline promises admins that Background adds little delay to
/// business traffic, and alone on a link the controller holds about its target in the
/// bottleneck queue (the 60 ms target added ~59 ms median on the 20 Mbit/s benchmark link).
/// A lower target also yields sooner: competing traffic pushes the queue over it earlier.
/// What it costs: against another LEDBAT flow with the draft's 60 ms target, this one gets the
/// smaller share (fine for background traffic); and a base delay error (a route change until
/// the history forgets the old minimum) weighs more against a smaller target. Links with a
/// lot of delay jitter (some radio links) may want the draft's value back.
pub const fn default_target() -> Duration {
    Duration::from_millis(30)
}

/// The draft's target queueing delay: 60 ms (draft-irtf-iccrg-ledbat-plus-plus §4.1), used by
/// [`LedbatConfig::draft`].
pub const fn draft_target() -> Duration {
    Duration::from_millis(60)
}

/// Default initial congestion window: 4 full-sized packets (4 × 1200 bytes = 4800 bytes).
///
/// Smaller than quinn's standard 10 packets: a background flow has no business bursting into a
/// link before it has seen a single round trip.
pub const fn default_initial_window() -> u64 {
    4 * 1200
}

/// Default minimum window: 2 packets (the LEDBAT++ slowdown window).
pub const fn default_min_window_packets() -> u64 {
    2
}

/// Default length of one base-delay history bucket: 60 s (RFC 6817 §4.2 keeps one minimum per
/// minute).
pub const fn default_base_history_bucket() -> Duration {
    Duration::from_secs(60)
}

/// Default number of base-delay history buckets: 10, so a base delay older than 10 minutes ages
/// out (RFC 6817 §4.2, `BASE_HISTORY`).
pub const fn default_base_history_buckets() -> usize {
    10
}

/// Default size of the current-delay filter: the minimum of the last 4 RTT samples (RFC 6817
/// §4.2, `CURRENT_FILTER`). It also absorbs the occasional delayed acknowledgement.
pub const fn default_current_filter() -> usize {
    4
}

/// Default length of a slowdown's frozen phase: 2 round trips (draft §4.4).
pub const fn default_slowdown_freeze_rtts() -> u32 {
    2
}

/// Default spacing of slowdowns: the next one starts 9 × the duration of the last one after it
/// ended, so slowdowns take at most 10 % of the time (draft §4.4).
pub const fn default_slowdown_interval_factor() -> u32 {
    9
}

/// Default rate ceiling: none (bytes/s; `None` = unlimited).
pub const fn default_ceiling() -> Option<u64> {
    None
}

/// Default rate floor: 8000 bytes/s (64 kbit/s) per connection, so a transfer never starves
/// for ever, yet it takes under 1 % of a 10 Mbit/s link.
pub const fn default_floor() -> u64 {
    8_000
}

/// Default for the idle-link ramp extension: on.
pub const fn default_idle_ramp() -> bool {
    true
}

/// Default queueing delay under which the link counts as idle: 6 ms (a tenth of the target).
pub const fn default_idle_delay() -> Duration {
    Duration::from_millis(6)
}

/// Default time the queueing delay must stay under [`default_idle_delay`] before the idle-link
/// ramp starts: 2 smoothed round trips.
pub const fn default_idle_hold_rtts() -> u32 {
    2
}

/// Default growth of the idle-link ramp: the window grows by half of the bytes acknowledged,
/// i.e. × 1.5 per round trip.
///
/// Why not × 2 as in slow start: the ramp stops at the first queue sample above
/// [`default_idle_delay`], one round trip after the window passed the path's
/// bandwidth-delay product, so it overshoots by one round trip's growth. At × 1.5 that queue
/// is about half a base RTT (20 ms on a 40 ms path), under the 30 ms target, so nothing has to
/// be cut; at × 2 it is a whole base RTT, over the target: the cut that follows lags the queue
/// by a round trip, undershoots the bandwidth-delay product, empties the queue, and the ramp
/// starts again (a cycle seen on the benchmark link).
pub const fn default_idle_growth() -> f64 {
    0.5
}

/// Default for the random-loss tolerance extension: on.
pub const fn default_loss_tolerance() -> bool {
    true
}

/// Default queueing delay under which a loss is taken for random (non-congestion) loss: 15 ms
/// (half the 30 ms target; a quarter of the draft's 60 ms).
pub const fn default_random_loss_delay() -> Duration {
    Duration::from_millis(15)
}

/// Default window reduction on a random loss: 20 % (the window keeps 4/5, as TCP Veno does for
/// losses it attributes to the link rather than to a queue).
pub const fn default_random_loss_reduction() -> f64 {
    0.2
}

/// Default for the gentle slowdown extension: on.
pub const fn default_gentle_slowdown() -> bool {
    true
}

/// Default for the competition-aware yield extension: on.
pub const fn default_competition_yield() -> bool {
    true
}

/// Default weight of the queueing delay others cause: 2, so the controller stops growing when
/// others alone hold half the target (15 ms) in the queue.
///
/// Why not more: a weight of 5 let TCP reach 90 % of its solo rate sooner on the benchmark
/// link (Cubic leaves slow start early next to Background and then holds only 5–20 ms of
/// queue), but Background flows on one link then take each other's queue for a competitor's
/// and keep yielding to each other: the offices acceptance test `deploy_to_all_crosses_each_link_once`
/// saw 1.06–1.10 × the package cross a link (passes at 2).
pub const fn default_others_weight() -> f64 {
    2.0
}

/// Default for the arrival yield (part of the competition-aware yield): on.
pub const fn default_arrival_yield() -> bool {
    true
}

/// Default rise of the queue others hold that marks a competitor's arrival: 4 ms within one
/// smoothed round trip, held for half a base round trip.
///
/// Why 4 ms: a TCP flow starting with the usual 10-packet initial window puts 12 kB into the
/// bottleneck queue in its first round trip, 4.8 ms at 20 Mbit/s, and twice as much in each
/// round trip of its slow start after that; a threshold under the first step catches the
/// arrival in the competitor's first round trip on links up to about 20 Mbit/s and in its
/// second or third on faster ones. The queue this flow's own window explains does not count
/// (see [`LedbatConfig::competition_yield`]), and neither does a rise shorter than half a
/// base round trip, so the controller's own bursts and single late ACKs stay under it.
pub const fn default_arrival_rise() -> Duration {
    Duration::from_millis(4)
}

/// Default window of the path-capacity estimate (maximum delivery rate): 10 s.
pub const fn default_capacity_window() -> Duration {
    Duration::from_secs(10)
}

/// Configuration of one LEDBAT++ controller family (usually: all Background connections that
/// cross one WAN link).
///
/// Durations are wall-clock durations; windows are in bytes; rates are in bytes per second.
#[derive(Debug, Clone, PartialEq)]
pub struct LedbatConfig {
    /// Target queueing delay; the controller backs off when the measured queueing delay passes
    /// it. Default: [`default_target`] (30 ms).
    pub target: Duration,
    /// Initial congestion window (bytes). Default: [`default_initial_window`] (4800 bytes).
    pub initial_window: u64,
    /// Smallest window (packets of the current MTU). Default: [`default_min_window_packets`] (2).
    pub min_window_packets: u64,
    /// Length of one base-delay history bucket. Default: [`default_base_history_bucket`] (60 s).
    pub base_history_bucket: Duration,
    /// Number of base-delay buckets kept. Default: [`default_base_history_buckets`] (10).
    pub base_history_buckets: usize,
    /// Number of recent RTT samples whose minimum is the current delay. Default:
    /// [`default_current_filter`] (4).
    pub current_filter: usize,
    /// Round trips a slowdown holds the window at the minimum. Default:
    /// [`default_slowdown_freeze_rtts`] (2).
    pub slowdown_freeze_rtts: u32,
    /// Next slowdown starts this many slowdown durations after the last one ended. Default:
    /// [`default_slowdown_interval_factor`] (9).
    pub slowdown_interval_factor: u32,
    /// Rate ceiling for the whole WAN link (bytes/s), shared evenly by the connections built
    /// from one factory; `None` = unlimited. Default: [`default_ceiling`] (`None`). Can be changed
    /// at run time through [`crate::LinkPolicy`].
    pub ceiling: Option<u64>,
    /// Rate floor per connection (bytes/s): the window never drops below `floor × RTT`. Default:
    /// [`default_floor`] (8000 bytes/s).
    pub floor: u64,
    /// Idle-link ramp extension: grow multiplicatively while the queue stays empty. Default:
    /// [`default_idle_ramp`] (on).
    pub idle_ramp: bool,
    /// Queueing delay under which the link counts as idle. Default: [`default_idle_delay`] (6 ms).
    pub idle_delay: Duration,
    /// Smoothed round trips the queue must stay under `idle_delay` before the ramp starts.
    /// Default: [`default_idle_hold_rtts`] (2).
    pub idle_hold_rtts: u32,
    /// Fraction of acknowledged bytes added to the window per acknowledgement while ramping.
    /// Default: [`default_idle_growth`] (0.5, i.e. × 1.5 per round trip).
    pub idle_growth: f64,
    /// Random-loss tolerance extension: a loss seen with an empty queue costs
    /// `random_loss_reduction` of the window instead of half. Default:
    /// [`default_loss_tolerance`] (on).
    pub loss_tolerance: bool,
    /// Queueing delay under which a loss counts as random. Default:
    /// [`default_random_loss_delay`] (15 ms).
    pub random_loss_delay: Duration,
    /// Fraction of the window given up on a random loss. Default:
    /// [`default_random_loss_reduction`] (0.2).
    pub random_loss_reduction: f64,
    /// Gentle slowdown extension: after a slowdown drained the queue, go straight back to the
    /// estimated bandwidth-delay product instead of slow-starting from 2 packets, and schedule
    /// the next slowdown from the draft's slowdown duration rather than the shortened one.
    /// Default: [`default_gentle_slowdown`] (on).
    pub gentle_slowdown: bool,
    /// Competition-aware yield extension: react to the queue other flows cause, weighted by
    /// `others_weight`, as if it were the whole queueing delay. Default:
    /// [`default_competition_yield`] (on).
    pub competition_yield: bool,
    /// Weight of the queueing delay attributed to other flows. Default:
    /// [`default_others_weight`] (2).
    pub others_weight: f64,
    /// Window of the path-capacity estimate. Default: [`default_capacity_window`] (10 s).
    pub capacity_window: Duration,
    /// Arrival yield (with `competition_yield`): when the queue others hold rises by
    /// `arrival_rise` within a round trip, yield at once at the pace of the base round trip
    /// for one round trip, instead of in proportion to a delay estimate that lags the
    /// arrival. Default: [`default_arrival_yield`] (on).
    pub arrival_yield: bool,
    /// Rise of the queue others hold that marks an arrival. Default:
    /// [`default_arrival_rise`] (4 ms).
    pub arrival_rise: Duration,
}

impl Default for LedbatConfig {
    fn default() -> Self {
        Self {
            target: default_target(),
            initial_window: default_initial_window(),
            min_window_packets: default_min_window_packets(),
            base_history_bucket: default_base_history_bucket(),
            base_history_buckets: default_base_history_buckets(),
            current_filter: default_current_filter(),
            slowdown_freeze_rtts: default_slowdown_freeze_rtts(),
            slowdown_interval_factor: default_slowdown_interval_factor(),
            ceiling: default_ceiling(),
            floor: default_floor(),
            idle_ramp: default_idle_ramp(),
            idle_delay: default_idle_delay(),
            idle_hold_rtts: default_idle_hold_rtts(),
            idle_growth: default_idle_growth(),
            loss_tolerance: default_loss_tolerance(),
            random_loss_delay: default_random_loss_delay(),
            random_loss_reduction: default_random_loss_reduction(),
            gentle_slowdown: default_gentle_slowdown(),
            competition_yield: default_competition_yield(),
            others_weight: default_others_weight(),
            capacity_window: default_capacity_window(),
            arrival_yield: default_arrival_yield(),
            arrival_rise: default_arrival_rise(),
        }
    }
}

impl LedbatConfig {
    /// The draft algorithm alone: its 60 ms target, no idle-link ramp, no gentle slowdown, no
    /// competition-aware yield, and every loss halves the window.
    ///
    /// Kept so the benchmark can show what the extensions buy; Branchline ships
    /// [`LedbatConfig::default`].
    pub fn draft() -> Self {
        Self {
            idle_ramp: false,
            loss_tolerance: false,
            competition_yield: false,
            arrival_yield: false,
            gentle_slowdown: false,
            target: draft_target(),
            ..Self::default()
        }
    }

    /// Checks that the values make sense together.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first field that is out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.target.is_zero() {
            return Err(ConfigError::Invalid {
                field: "target",
                reason: "must be greater than zero",
            });
        }
        if self.min_window_packets == 0 {
            return Err(ConfigError::Invalid {
                field: "min_window_packets",
                reason: "must be at least 1",
            });
        }
        if self.base_history_bucket.is_zero() {
            return Err(ConfigError::Invalid {
                field: "base_history_bucket",
                reason: "must be greater than zero",
            });
        }
        if self.base_history_buckets == 0 {
            return Err(ConfigError::Invalid {
                field: "base_history_buckets",
                reason: "must be at least 1",
            });
        }
        if self.current_filter == 0 {
            return Err(ConfigError::Invalid {
                field: "current_filter",
                reason: "must be at least 1",
            });
        }
        if self.slowdown_interval_factor == 0 {
            return Err(ConfigError::Invalid {
                field: "slowdown_interval_factor",
                reason: "must be at least 1",
            });
        }
        if let Some(ceiling) = self.ceiling {
            if ceiling == 0 {
                return Err(ConfigError::Invalid {
                    field: "ceiling",
                    reason: "must be greater than zero bytes/s (use None for unlimited)",
                });
            }
            if ceiling < self.floor {
                return Err(ConfigError::CeilingBelowFloor {
                    ceiling,
                    floor: self.floor,
                });
            }
        }
        if !(self.idle_growth.is_finite() && self.idle_growth > 0.0 && self.idle_growth <= 1.0) {
            return Err(ConfigError::Invalid {
                field: "idle_growth",
                reason: "must be in (0, 1]",
            });
        }
        if !(self.random_loss_reduction.is_finite()
            && self.random_loss_reduction > 0.0
            && self.random_loss_reduction <= 0.5)
        {
            return Err(ConfigError::Invalid {
                field: "random_loss_reduction",
                reason: "must be in (0, 0.5]",
            });
        }
        if !(self.others_weight.is_finite() && (1.0..=10.0).contains(&self.others_weight)) {
            return Err(ConfigError::Invalid {
                field: "others_weight",
                reason: "must be in [1, 10]",
            });
        }
        if self.arrival_rise.is_zero() {
            return Err(ConfigError::Invalid {
                field: "arrival_rise",
                reason: "must be greater than zero",
            });
        }
        if self.capacity_window.is_zero() {
            return Err(ConfigError::Invalid {
                field: "capacity_window",
                reason: "must be greater than zero",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = LedbatConfig::default();
        c.validate().unwrap();
        assert_eq!(c.target, Duration::from_millis(30));
        assert_eq!(c.ceiling, None);
        assert!(c.idle_ramp && c.loss_tolerance && c.gentle_slowdown && c.competition_yield);
        assert!(c.arrival_yield);
        assert_eq!(c.arrival_rise, Duration::from_millis(4));
        let d = LedbatConfig::draft();
        d.validate().unwrap();
        assert_eq!(d.target, Duration::from_millis(60));
        assert!(!d.idle_ramp && !d.loss_tolerance && !d.competition_yield && !d.gentle_slowdown);
        assert!(!d.arrival_yield);
    }

    #[test]
    fn ceiling_below_floor_is_rejected() {
        let c = LedbatConfig {
            ceiling: Some(1000),
            floor: 2000,
            ..LedbatConfig::default()
        };
        assert_eq!(
            c.validate(),
            Err(ConfigError::CeilingBelowFloor {
                ceiling: 1000,
                floor: 2000
            })
        );
    }

    #[test]
    fn zero_target_is_rejected() {
        let c = LedbatConfig {
            target: Duration::ZERO,
            ..LedbatConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                field: "target",
                ..
            })
        ));
    }
}
