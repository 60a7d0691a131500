//! Delay bookkeeping: the windowed base-delay history and the current-delay filter
//! (RFC 6817 §4.2, reused unchanged by LEDBAT++).
//!
//! quinn's `RttEstimator::min` never expires, so a route change that lengthens the path would
//! leave a stale, too-small base delay for the life of the connection and make the controller
//! see a permanent queue. This history keeps one minimum per bucket of time and forgets buckets
//! older than `buckets × bucket`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Minimum RTT per time bucket, for the last `capacity` buckets.
#[derive(Debug, Clone)]
pub struct BaseDelayHistory {
    bucket: Duration,
    capacity: usize,
    /// (bucket start, minimum RTT seen in it), oldest first.
    buckets: VecDeque<(Instant, Duration)>,
}

impl BaseDelayHistory {
    /// A history of `capacity` buckets of length `bucket` each. `capacity` of 0 is treated as 1.
    pub fn new(bucket: Duration, capacity: usize) -> Self {
        Self {
            bucket,
            capacity: capacity.max(1),
            buckets: VecDeque::new(),
        }
    }

    /// Records an RTT sample taken at `now`.
    pub fn update(&mut self, now: Instant, rtt: Duration) {
        self.expire(now);
        match self.buckets.back_mut() {
            Some((start, min)) if now.saturating_duration_since(*start) < self.bucket => {
                *min = (*min).min(rtt);
            }
            _ => {
                self.buckets.push_back((now, rtt));
                while self.buckets.len() > self.capacity {
                    self.buckets.pop_front();
                }
            }
        }
    }

    /// Drops buckets that started more than `capacity × bucket` before `now` (so a long idle
    /// period does not keep an ancient minimum alive).
    fn expire(&mut self, now: Instant) {
        let horizon = self.bucket.saturating_mul(self.capacity as u32);
        while let Some((start, _)) = self.buckets.front() {
            if now.saturating_duration_since(*start) >= horizon {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    /// The base delay: the minimum over the kept buckets, or `None` before the first sample.
    pub fn base(&self) -> Option<Duration> {
        self.buckets.iter().map(|(_, min)| *min).min()
    }
}

/// Minimum of the last `len` RTT samples: the current delay. The minimum (rather than the
/// latest sample) discards samples inflated by a delayed acknowledgement or a scheduling hiccup
/// at either end.
#[derive(Debug, Clone)]
pub struct CurrentDelayFilter {
    len: usize,
    samples: VecDeque<Duration>,
}

impl CurrentDelayFilter {
    /// A filter over the last `len` samples. `len` of 0 is treated as 1.
    pub fn new(len: usize) -> Self {
        Self {
            len: len.max(1),
            samples: VecDeque::new(),
        }
    }

    /// Adds one sample, dropping the oldest beyond the filter length.
    pub fn push(&mut self, rtt: Duration) {
        self.samples.push_back(rtt);
        while self.samples.len() > self.len {
            self.samples.pop_front();
        }
    }

    /// The current delay, or `None` before the first sample.
    pub fn current(&self) -> Option<Duration> {
        self.samples.iter().copied().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn base_is_minimum_over_buckets() {
        let t0 = Instant::now();
        let mut h = BaseDelayHistory::new(Duration::from_secs(60), 10);
        assert_eq!(h.base(), None);
        h.update(t0, 50 * MS);
        h.update(t0 + Duration::from_secs(1), 40 * MS);
        h.update(t0 + Duration::from_secs(61), 70 * MS);
        assert_eq!(h.base(), Some(40 * MS));
    }

    #[test]
    fn old_minimum_ages_out_after_the_window() {
        let t0 = Instant::now();
        let mut h = BaseDelayHistory::new(Duration::from_secs(60), 10);
        h.update(t0, 40 * MS);
        // The path gets longer: every later sample is at least 80 ms.
        for s in 1..=599 {
            h.update(t0 + Duration::from_secs(s), 80 * MS);
        }
        assert_eq!(h.base(), Some(40 * MS), "still inside the 10 minute window");
        h.update(t0 + Duration::from_secs(601), 80 * MS);
        assert_eq!(h.base(), Some(80 * MS), "the 40 ms minimum has aged out");
    }

    #[test]
    fn idle_period_expires_every_old_bucket() {
        let t0 = Instant::now();
        let mut h = BaseDelayHistory::new(Duration::from_secs(1), 3);
        h.update(t0, 10 * MS);
        h.update(t0 + Duration::from_secs(3600), 30 * MS);
        assert_eq!(h.base(), Some(30 * MS));
    }

    #[test]
    fn current_filter_keeps_minimum_of_last_samples() {
        let mut f = CurrentDelayFilter::new(3);
        for ms in [50, 90, 95, 99] {
            f.push(ms * MS);
        }
        assert_eq!(f.current(), Some(90 * MS));
    }
}

/// Windowed maximum of delivery-rate samples (bytes/s): the path capacity as this flow has
/// seen it over the last `window`.
#[derive(Debug, Clone)]
pub struct MaxRateFilter {
    window: Duration,
    /// (time, rate), rates strictly decreasing from front to back (a monotonic queue).
    samples: VecDeque<(Instant, f64)>,
}

impl MaxRateFilter {
    /// A filter over the last `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            samples: VecDeque::new(),
        }
    }

    /// Adds a rate sample (bytes/s) taken at `now`; non-finite or negative samples are ignored.
    pub fn push(&mut self, now: Instant, rate: f64) {
        if !(rate.is_finite() && rate >= 0.0) {
            return;
        }
        while self.samples.back().is_some_and(|(_, r)| *r <= rate) {
            self.samples.pop_back();
        }
        self.samples.push_back((now, rate));
        self.expire(now);
    }

    fn expire(&mut self, now: Instant) {
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > self.window)
        {
            self.samples.pop_front();
        }
    }

    /// The largest sample within the window ending at `now`, or `None`.
    pub fn max(&mut self, now: Instant) -> Option<f64> {
        self.expire(now);
        self.samples.front().map(|(_, r)| *r)
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    #[test]
    fn max_rate_expires_with_the_window() {
        let t0 = Instant::now();
        let mut f = MaxRateFilter::new(Duration::from_secs(10));
        assert_eq!(f.max(t0), None);
        f.push(t0, 100.0);
        f.push(t0 + Duration::from_secs(1), 50.0);
        f.push(t0 + Duration::from_secs(2), 70.0);
        assert_eq!(f.max(t0 + Duration::from_secs(2)), Some(100.0));
        assert_eq!(f.max(t0 + Duration::from_secs(11)), Some(70.0));
        assert_eq!(f.max(t0 + Duration::from_secs(13)), None);
        f.push(t0 + Duration::from_secs(13), f64::NAN);
        assert_eq!(f.max(t0 + Duration::from_secs(13)), None);
    }
}
