//! Retry policy for transient origin failures: pure arithmetic, with the clock reading
//! and the random jitter passed in by the caller.

use std::time::Duration;

use branchline_time::Backoff;

/// How often and how long to retry transient failures (connection resets, 5xx, short
/// bodies) of one origin request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts per request, including the first (at least 1 is always made).
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles for each later one.
    pub initial_backoff: Duration,
    /// Upper bound of a single delay.
    pub max_backoff: Duration,
    /// No new attempt starts once this much time has passed since the first one began.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    /// 8 attempts, 250 ms doubling up to 8 s, within 2 minutes.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
            deadline: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// A policy that makes exactly one attempt.
    pub fn no_retries() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The delay before the next attempt, or `None` to give up.
    ///
    /// `attempts_made` counts attempts already made (≥ 1); `elapsed` is the time since
    /// the first attempt began; `jitter` in `[0, 1)` spreads retries of many clients
    /// ("equal jitter": the delay is between half and all of the exponential step).
    pub fn next_delay(
        &self,
        attempts_made: u32,
        elapsed: Duration,
        jitter: f64,
    ) -> Option<Duration> {
        if attempts_made >= self.max_attempts {
            return None;
        }
        let step = Backoff::doubling(self.initial_backoff, self.max_backoff).step(attempts_made);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let delay = step / 2 + step.mul_f64(jitter / 2.0);
        if elapsed.saturating_add(delay) >= self.deadline {
            return None;
        }
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            deadline: Duration::from_secs(2),
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = policy();
        let z = Duration::ZERO;
        assert_eq!(p.next_delay(1, z, 0.0), Some(Duration::from_millis(50)));
        assert_eq!(p.next_delay(1, z, 1.0), Some(Duration::from_millis(100)));
        assert_eq!(p.next_delay(2, z, 1.0), Some(Duration::from_millis(200)));
        assert_eq!(p.next_delay(3, z, 1.0), Some(Duration::from_millis(300)));
        assert_eq!(p.next_delay(4, z, 0.0), Some(Duration::from_millis(150)));
    }

    #[test]
    fn gives_up_on_count_and_deadline() {
        let p = policy();
        assert_eq!(p.next_delay(5, Duration::ZERO, 0.5), None);
        assert_eq!(p.next_delay(1, Duration::from_millis(1990), 1.0), None);
        assert!(p.next_delay(1, Duration::from_millis(1800), 1.0).is_some());
        assert_eq!(
            RetryPolicy::no_retries().next_delay(1, Duration::ZERO, 0.0),
            None
        );
    }

    #[test]
    fn odd_jitter_and_huge_counts_do_not_panic() {
        let p = RetryPolicy {
            max_attempts: u32::MAX,
            ..policy()
        };
        assert_eq!(
            p.next_delay(1000, Duration::ZERO, f64::NAN),
            Some(Duration::from_millis(150))
        );
        assert_eq!(
            p.next_delay(2, Duration::ZERO, -3.0),
            Some(Duration::from_millis(100))
        );
        assert_eq!(p.next_delay(1, Duration::MAX, 0.0), None);
    }
}
