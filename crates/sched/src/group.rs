//! Shared bottlenecks: sources that reach us over one link, and rate meters.

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, Instant};

use crate::{SchedConfig, SourceId};

/// The caller's name for a shared bottleneck (for example the WAN link of the office a
/// set of sources sits in). Sources in one group are paced and judged together: see
/// [`crate::Scheduler::set_source_group`] and the crate docs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct GroupId(pub u64);

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group {}", self.0)
    }
}

/// Counters and estimates of one group, for progress displays and reports.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupStats {
    /// Sources in the group (any state).
    pub members: u32,
    /// Active sources in the group.
    pub active: u32,
    /// Smoothed aggregate delivery rate of the group (bytes/s); `None` until the first
    /// sample.
    pub rate: Option<f64>,
    /// Requests the whole group may have outstanding now.
    pub window: u32,
    /// Requests outstanding across the group now.
    pub in_flight: u32,
}

/// A delivery-rate estimate: an EWMA of samples taken while requests are outstanding
/// (bytes over the time since the previous sample, pooled until a sample spans at least
/// `min_rate_sample`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Meter {
    pub(crate) rate: Option<f64>,
    /// Start of the current sample; `None` while nothing is outstanding.
    pub(crate) mark: Option<Instant>,
    pub(crate) bytes: u64,
    /// Last delivery of any bytes.
    pub(crate) last: Option<Instant>,
}

impl Meter {
    /// The pipe became non-empty: a new sample starts now.
    pub(crate) fn start(&mut self, now: Instant) {
        self.mark = Some(now);
        self.bytes = 0;
    }

    /// `bytes` arrived at `now`; returns the new rate if a sample was taken.
    ///
    /// An aggregate meter hears of several connections at once: whole pieces of
    /// parallel streams often land within moments of each other after a long wait, and
    /// a sample closed between two of them would read as many times the link's rate.
    /// So a sample spans at least one piece at the current estimate (at most a quarter
    /// of `max_timeout`), not just `min_rate_sample`.
    pub(crate) fn credit(&mut self, bytes: u64, now: Instant, cfg: &SchedConfig) -> Option<f64> {
        self.last = Some(now);
        let span = self
            .rate
            .filter(|&r| r > 0.0)
            .map(|r| cfg.piece_size as f64 / r)
            .filter(|s| s.is_finite())
            .map_or(cfg.min_rate_sample, |s| {
                Duration::from_secs_f64(s.min(cfg.max_timeout.as_secs_f64() / 4.0))
                    .max(cfg.min_rate_sample)
            });
        sample(
            &mut self.rate,
            &mut self.mark,
            &mut self.bytes,
            bytes,
            now,
            span,
            cfg.rate_smoothing,
        )
    }
}

/// Adds `add` bytes to the current sample and closes it if it spans at least `span`:
/// the shared rate rule of sources, groups and the whole download (EWMA of weight
/// `smoothing`).
pub(crate) fn sample(
    rate: &mut Option<f64>,
    mark: &mut Option<Instant>,
    bytes: &mut u64,
    add: u64,
    now: Instant,
    span: Duration,
    smoothing: f64,
) -> Option<f64> {
    *bytes += add;
    let m = (*mark)?;
    let dt = now.saturating_duration_since(m);
    if dt < span || dt.is_zero() {
        return None;
    }
    let s = *bytes as f64 / dt.as_secs_f64();
    let r = match *rate {
        None => s,
        Some(r) => r + smoothing * (s - r),
    };
    *rate = Some(r);
    *bytes = 0;
    *mark = Some(now);
    Some(r)
}

/// One shared bottleneck.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) members: BTreeSet<SourceId>,
    /// Aggregate rate of the members, and their last delivery.
    pub(crate) meter: Meter,
    /// Requests the whole group may have outstanding.
    pub(crate) window: u32,
}

impl Group {
    pub(crate) fn new(window: u32) -> Self {
        Self {
            members: BTreeSet::new(),
            meter: Meter::default(),
            window,
        }
    }
}
