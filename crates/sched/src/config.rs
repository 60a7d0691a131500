//! Tunables of the scheduler, with their documented defaults.
//!
//! Every default is a named function whose doc comment states the value and why, so the
//! numbers an operator may ask about are written down once.

use std::time::Duration;

use crate::SchedError;

/// Default number of requests a new source may have outstanding before its rate is known: 2.
///
/// Two keeps the pipe busy across one round trip without handing an unknown (maybe slow)
/// source much work to hold hostage.
pub const fn default_initial_in_flight() -> u32 {
    2
}

/// Default floor of the per-source request window: 2.
///
/// With one request outstanding a source idles for a whole round trip between pieces;
/// with two, the next request is already there when a piece leaves. For a slow WAN
/// source (1 MiB pieces at 1 MB/s, 200 ms round trip) that is 100 % instead of 83 %.
pub const fn default_min_in_flight() -> u32 {
    2
}

/// Default ceiling of the per-source request window: 16 requests.
///
/// With 1 MiB pieces that is 16 MiB queued on one source, which covers a 1 Gbit/s LAN
/// round trip many times over; more only adds pieces to cancel when the source goes away.
pub const fn default_max_in_flight() -> u32 {
    16
}

/// Default queue horizon: 500 ms. A source's window is sized to what it delivers in this
/// long at its measured rate (`rate × horizon / piece_size`), so a source only ever holds
/// about half a second of work (or the floor of 2 requests).
///
/// Short queues matter most at an office's RVP, whose upload every other client shares:
/// a piece queued there for long is often a piece some other client could have served
/// by the time the RVP gets to it. In the office simulation (8 clients, WAN 10 MB/s, LAN
/// 20 MB/s per client, 1,000 pieces of 1 MiB) the last client finished 5.9 s after the
/// WAN copy with 500 ms, 15.6 s with 1 s, and 30.6 s with 2 s.
pub const fn default_queue_horizon() -> Duration {
    Duration::from_millis(500)
}

/// Default EWMA weight of the newest throughput sample: 0.25.
pub const fn default_rate_smoothing() -> f64 {
    0.25
}

/// Default shortest interval a throughput sample covers: 20 ms. Pieces that arrive closer
/// together are pooled into one sample, so two pieces landing in the same millisecond do
/// not read as an infinite rate.
pub const fn default_min_rate_sample() -> Duration {
    Duration::from_millis(20)
}

/// Default deadline of a request to a source whose rate is not yet known: 30 s.
pub const fn default_initial_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Default shortest deadline of a request: 2 s (absorbs scheduling jitter and round trips).
pub const fn default_min_timeout() -> Duration {
    Duration::from_secs(2)
}

/// Default longest deadline of a request: 120 s, however slow the source's estimate.
pub const fn default_max_timeout() -> Duration {
    Duration::from_secs(120)
}

/// Default slack on the expected delivery time before a request counts as timed out: 4×.
pub const fn default_timeout_factor() -> f64 {
    4.0
}

/// Default number of consecutive strikes (timeouts or transport failures, at most one per
/// round of requests) after which a source is dropped: 3.
pub const fn default_max_strikes() -> u32 {
    3
}

/// Default silence after which a source's timeouts count as strikes: 30 s (the deadline
/// of a source whose rate is unknown).
///
/// A timeout alone says a source is slow, not that it is bad: a busy office peer serving
/// many clients at once, or writing a batch to a shared disk, goes quiet for seconds and
/// then delivers. So a timeout of an ungrouped source costs it work (its window drops to
/// the floor; see also [`default_max_backoff`]) but no strike, until the
/// source has had requests outstanding and delivered nothing for this long. A source that
/// answers nothing at all is thus dropped after about this long plus two deadlines; we
/// wait as long for the next piece from a source we know as for the first from one we
/// do not.
pub const fn default_silence_limit() -> Duration {
    Duration::from_secs(30)
}

/// Default cap on the deadline back-off of a source whose requests keep timing out: 0
/// (no back-off).
///
/// With a cap of n, each round of timeouts of an ungrouped source doubles the budget of
/// its later requests (once per round, like TCP's retransmission timer, at most 2^n
/// times and within `max_timeout`), and each whole piece it delivers halves it again,
/// so that a peer that is busy for seconds gets deadlines that fit it. Off by default
/// because it made the office simulation slower: an overloaded RVP then kept pieces
/// that other clients could have served (8 clients, LAN 20 MB/s, WAN 10 MB/s: the last
/// client 1.092 × the WAN copy with a cap of 6, 1.059 with 0; 40 clients: 1.230 and
/// 1.139). Without it a slow peer still earns no strike, only less work.
pub const fn default_max_backoff() -> u32 {
    0
}

/// Default time a piece that a source said it does not have (or failed to deliver in
/// time) is kept away from that source: 10 s, about ten have-set refreshes.
pub const fn default_holdoff() -> Duration {
    Duration::from_secs(10)
}

/// Default number of sources one piece may be requested from at once in endgame: 2.
pub const fn default_endgame_max_copies() -> u32 {
    2
}

/// Scheduler tunables. Build with [`SchedConfig::new`] (the piece size is the only
/// required value) and override fields as needed.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedConfig {
    /// Size of a full piece (bytes). Used to turn rates into windows and deadlines.
    pub piece_size: u64,
    /// Window of a source whose rate is not yet known (requests); see
    /// [`default_initial_in_flight`].
    pub initial_in_flight: u32,
    /// Smallest window (requests); see [`default_min_in_flight`].
    pub min_in_flight: u32,
    /// Largest window (requests); see [`default_max_in_flight`].
    pub max_in_flight: u32,
    /// Work queued on one source, in time at its rate; see [`default_queue_horizon`].
    pub queue_horizon: Duration,
    /// EWMA weight of the newest rate sample, in (0, 1]; see [`default_rate_smoothing`].
    pub rate_smoothing: f64,
    /// Shortest rate sample; see [`default_min_rate_sample`].
    pub min_rate_sample: Duration,
    /// Deadline while the rate is unknown; see [`default_initial_timeout`].
    pub initial_timeout: Duration,
    /// Deadline floor; see [`default_min_timeout`].
    pub min_timeout: Duration,
    /// Deadline ceiling; see [`default_max_timeout`].
    pub max_timeout: Duration,
    /// Slack on the expected delivery time (≥ 1); see [`default_timeout_factor`].
    pub timeout_factor: f64,
    /// Strikes before a source is dropped (≥ 1); see [`default_max_strikes`].
    pub max_strikes: u32,
    /// Silence (nothing delivered while requests are outstanding) after which timeouts of
    /// an ungrouped source count as strikes; see [`default_silence_limit`].
    pub silence_limit: Duration,
    /// Doublings of a slow source's deadlines at most; see [`default_max_backoff`].
    pub max_backoff: u32,
    /// How long a refused or late piece stays away from that source; see
    /// [`default_holdoff`].
    pub holdoff: Duration,
    /// Copies of one request allowed in endgame (≥ 1; 1 disables duplicates); see
    /// [`default_endgame_max_copies`].
    pub endgame_max_copies: u32,
    /// Seed of the tie-breaking random generator. Give each client a different seed (for
    /// example from its id) so that clients of one office spread over different pieces.
    pub seed: u64,
}

impl SchedConfig {
    /// Defaults for pieces of `piece_size` bytes.
    pub fn new(piece_size: u64) -> Self {
        Self {
            piece_size,
            initial_in_flight: default_initial_in_flight(),
            min_in_flight: default_min_in_flight(),
            max_in_flight: default_max_in_flight(),
            queue_horizon: default_queue_horizon(),
            rate_smoothing: default_rate_smoothing(),
            min_rate_sample: default_min_rate_sample(),
            initial_timeout: default_initial_timeout(),
            min_timeout: default_min_timeout(),
            max_timeout: default_max_timeout(),
            timeout_factor: default_timeout_factor(),
            max_strikes: default_max_strikes(),
            silence_limit: default_silence_limit(),
            max_backoff: default_max_backoff(),
            holdoff: default_holdoff(),
            endgame_max_copies: default_endgame_max_copies(),
            seed: 0,
        }
    }

    /// Checks that the values make sense together.
    pub fn validate(&self) -> Result<(), SchedError> {
        let bad = |what: &'static str| Err(SchedError::Config(what));
        if self.piece_size == 0 {
            return bad("piece_size must be at least 1 byte");
        }
        if self.min_in_flight == 0 {
            return bad("min_in_flight must be at least 1");
        }
        if self.max_in_flight < self.min_in_flight {
            return bad("max_in_flight must be at least min_in_flight");
        }
        if !(self.min_in_flight..=self.max_in_flight).contains(&self.initial_in_flight) {
            return bad("initial_in_flight must lie between min_in_flight and max_in_flight");
        }
        if self.queue_horizon.is_zero() {
            return bad("queue_horizon must be positive");
        }
        if !(self.rate_smoothing > 0.0 && self.rate_smoothing <= 1.0) {
            return bad("rate_smoothing must be in (0, 1]");
        }
        if self.max_timeout < self.min_timeout {
            return bad("max_timeout must be at least min_timeout");
        }
        if self.min_timeout.is_zero() || self.initial_timeout.is_zero() {
            return bad("min_timeout and initial_timeout must be positive");
        }
        if !(self.timeout_factor >= 1.0 && self.timeout_factor.is_finite()) {
            return bad("timeout_factor must be a finite number >= 1");
        }
        if self.max_strikes == 0 {
            return bad("max_strikes must be at least 1");
        }
        if self.max_backoff > 16 {
            return bad("max_backoff must be at most 16 doublings");
        }
        if self.endgame_max_copies == 0 {
            return bad("endgame_max_copies must be at least 1");
        }
        Ok(())
    }
}
