//! Branchline's shared time arithmetic: the wall clock in Unix milliseconds
//! ([`now_ms`]) and the exponential backoff step ([`Backoff`]) behind every retry
//! schedule in the workspace.
//!
//! Only [`now_ms`] reads a clock; [`Backoff`] is pure arithmetic, and the callers pass
//! in their own jitter samples.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix milliseconds now, by the system's wall clock; 0 if the clock is set before 1970.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// An exponential backoff step: `initial`, then `initial * factor`, `initial *
/// factor²`, …, never more than `max`. The callers add their own jitter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The step of the first attempt.
    pub initial: Duration,
    /// Each later step is the previous one times this factor (values below 1 count as 1).
    pub factor: f64,
    /// No step is longer than this.
    pub max: Duration,
}

impl Backoff {
    /// A step that doubles from `initial` up to `max`.
    pub fn doubling(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            factor: 2.0,
            max,
        }
    }

    /// The step of attempt number `attempt` (1 = the first; 0 counts as 1).
    pub fn step(&self, attempt: u32) -> Duration {
        let factor = if self.factor.is_finite() {
            self.factor.max(1.0)
        } else {
            1.0
        };
        let grown = factor.powi(attempt.saturating_sub(1).min(64) as i32);
        let secs = (self.initial.as_secs_f64() * grown).min(self.max.as_secs_f64());
        Duration::try_from_secs_f64(secs).unwrap_or(self.max)
    }

    /// The step of attempt `attempt`, scaled by a factor drawn uniformly from
    /// `[1 - spread, 1 + spread]` by `sample` (uniform in `[0, 1)`), so that many clients
    /// that failed together do not retry in lock step. `spread` is clamped to `[0, 1]`.
    pub fn spread(&self, attempt: u32, spread: f64, sample: f64) -> Duration {
        let j = if spread.is_finite() {
            spread.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let s = if sample.is_finite() {
            sample.clamp(0.0, 1.0)
        } else {
            0.5
        };
        self.step(attempt).mul_f64(1.0 - j + 2.0 * j * s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_grow_and_cap() {
        let b = Backoff::doubling(Duration::from_millis(250), Duration::from_secs(4));
        let ms: Vec<u128> = (0..=7).map(|a| b.step(a).as_millis()).collect();
        assert_eq!(ms, vec![250, 250, 500, 1000, 2000, 4000, 4000, 4000]);
        assert_eq!(b.step(u32::MAX), Duration::from_secs(4));
    }

    #[test]
    fn odd_factors_do_not_shrink_or_panic() {
        for factor in [0.5, f64::NAN, f64::INFINITY, -2.0] {
            let b = Backoff {
                initial: Duration::from_millis(100),
                factor,
                max: Duration::from_secs(1),
            };
            let s = b.step(10);
            assert!(s >= Duration::from_millis(100) && s <= Duration::from_secs(1));
        }
    }

    #[test]
    fn spread_stays_in_its_band() {
        let b = Backoff::doubling(Duration::from_secs(1), Duration::from_secs(30));
        assert_eq!(b.spread(3, 0.25, 0.0), Duration::from_secs(3));
        assert_eq!(b.spread(3, 0.25, 1.0), Duration::from_secs(5));
        assert_eq!(b.spread(3, 0.0, 0.9), Duration::from_secs(4));
        assert_eq!(b.spread(3, f64::NAN, f64::NAN), Duration::from_secs(4));
    }

    #[test]
    fn the_clock_is_after_2020() {
        assert!(now_ms() > 1_577_836_800_000);
    }
}
