//! Why a download is not progressing, in terms a caller can print.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

/// The main reason a download is not progressing, as judged by
/// [`crate::Scheduler::diagnose`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StallCause {
    /// Every piece is held.
    Complete,
    /// No source is active: none was added, or every one was dropped or banned.
    NoSources,
    /// Nothing is in flight and some missing pieces are held by no active source: the
    /// download waits for a source that holds them.
    Unobtainable,
    /// Requests are outstanding: the download waits for them (see
    /// [`Diagnosis::since_delivery`] for how long nothing arrived).
    Waiting,
    /// Nothing is in flight although active sources hold missing pieces: the caller
    /// should call [`crate::Scheduler::next_request`] (or a holdoff still has to expire).
    Idle,
}

/// A summary of why a download cannot progress, for logs and error messages. Its
/// [`fmt::Display`] gives one sentence, such as "every source failed on a ~3.9 Mbit/s
/// path (6 sources dropped: strikes); 14 timeouts".
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnosis {
    /// The main reason.
    pub cause: StallCause,
    /// Pieces in the content.
    pub pieces: u32,
    /// Pieces still missing.
    pub missing: u32,
    /// Outstanding requests.
    pub in_flight: u32,
    /// Active sources.
    pub active_sources: u32,
    /// Times a source was dropped for strikes in this download (a source re-added and
    /// dropped again counts again).
    pub dropped_strikes: u32,
    /// Sources banned for a bad piece.
    pub banned: u32,
    /// Requests that timed out, all sources, all time.
    pub timeouts: u64,
    /// Requests that failed in transport, all sources, all time.
    pub transport_failures: u64,
    /// Current aggregate delivery rate of the whole download (bytes/s), if measured.
    pub rate: Option<f64>,
    /// Best aggregate delivery rate seen in this download (bytes/s): what the path
    /// delivered when it worked.
    pub best_rate: Option<f64>,
    /// Time since any bytes last arrived; `None` if nothing ever did.
    pub since_delivery: Option<Duration>,
    /// Missing pieces that no active source holds.
    pub unobtainable: u32,
    /// The first (up to 8) ranges of those pieces, in increasing order.
    pub unobtainable_ranges: Vec<Range<u32>>,
}

fn mbit(rate: f64) -> String {
    let m = rate * 8.0 / 1e6;
    if m >= 10.0 {
        format!("{m:.0} Mbit/s")
    } else {
        format!("{m:.1} Mbit/s")
    }
}

impl Diagnosis {
    fn losses(&self) -> String {
        let mut parts = Vec::new();
        if self.dropped_strikes > 0 {
            parts.push(format!(
                "{} source{} dropped: strikes",
                self.dropped_strikes,
                if self.dropped_strikes == 1 { "" } else { "s" }
            ));
        }
        if self.banned > 0 {
            parts.push(format!("{} banned: bad piece", self.banned));
        }
        parts.join("; ")
    }

    fn ranges(&self) -> String {
        let mut s: Vec<String> = self
            .unobtainable_ranges
            .iter()
            .map(|r| {
                if r.end - r.start == 1 {
                    r.start.to_string()
                } else {
                    format!("{}..{}", r.start, r.end)
                }
            })
            .collect();
        let shown: u32 = self
            .unobtainable_ranges
            .iter()
            .map(|r| r.end - r.start)
            .sum();
        if shown < self.unobtainable {
            s.push("...".into());
        }
        s.join(", ")
    }

    fn path(&self) -> String {
        match self.best_rate {
            Some(r) => format!(" on a ~{} path", mbit(r)),
            None => " before any data arrived".into(),
        }
    }
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let losses = self.losses();
        let tail = |f: &mut fmt::Formatter<'_>| -> fmt::Result {
            if self.timeouts > 0 {
                write!(f, "; {} timeouts", self.timeouts)?;
            }
            if self.transport_failures > 0 {
                write!(f, "; {} transport failures", self.transport_failures)?;
            }
            Ok(())
        };
        match self.cause {
            StallCause::Complete => write!(f, "complete"),
            StallCause::NoSources if losses.is_empty() => {
                write!(f, "no source for this content")
            }
            StallCause::NoSources => {
                write!(f, "every source failed{} ({losses})", self.path())?;
                tail(f)
            }
            StallCause::Unobtainable => {
                write!(
                    f,
                    "no active source holds pieces {} ({} of {} missing)",
                    self.ranges(),
                    self.unobtainable,
                    self.missing
                )?;
                if !losses.is_empty() {
                    write!(f, "; {losses}")?;
                }
                tail(f)
            }
            StallCause::Waiting => {
                write!(f, "{} requests outstanding", self.in_flight)?;
                match self.since_delivery {
                    Some(d) => write!(f, ", nothing received for {:.0} s", d.as_secs_f64())?,
                    None => write!(f, ", nothing received yet")?,
                }
                if let Some(r) = self.best_rate {
                    write!(f, " (best ~{})", mbit(r))?;
                }
                if !losses.is_empty() {
                    write!(f, "; {losses}")?;
                }
                tail(f)
            }
            StallCause::Idle => write!(
                f,
                "{} pieces missing; active sources hold them but nothing is requested",
                self.missing
            ),
        }
    }
}
