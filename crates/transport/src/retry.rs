//! Retransmission schedule for requests: exponential backoff with jitter, bounded by a
//! deadline. Pure: the caller passes the current time and a jitter sample.

use std::time::{Duration, Instant};

use branchline_time::Backoff;

/// How a request is retried until it is answered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Wait after the first send before the first retransmission.
    pub initial_timeout: Duration,
    /// Each further wait is the previous one times this factor.
    pub backoff: f64,
    /// No single wait is longer than this.
    pub max_timeout: Duration,
    /// Each wait is scaled by a factor drawn uniformly from `[1 - jitter, 1 + jitter]`, so
    /// clients that lost the server together do not retry in lock step.
    pub jitter: f64,
    /// Give up this long after the first send.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    /// 250 ms, doubling, at most 4 s per wait, ±25 % jitter, 10 s in all: attempts at
    /// about 0, 0.25, 0.75, 1.75, 3.75, 7.75 s, then an error at 10 s.
    fn default() -> Self {
        RetryPolicy {
            initial_timeout: Duration::from_millis(250),
            backoff: 2.0,
            max_timeout: Duration::from_secs(4),
            jitter: 0.25,
            deadline: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait after attempt number `attempt` (1 = the first send), before jitter.
    pub fn base_timeout(&self, attempt: u32) -> Duration {
        self.steps().step(attempt)
    }

    fn steps(&self) -> Backoff {
        Backoff {
            initial: self.initial_timeout,
            factor: self.backoff,
            max: self.max_timeout,
        }
    }
}

/// What to do when the retransmission timer fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send the datagram again now; the next timer is at [`Retransmit::next_at`].
    Resend,
    /// Nothing to do yet; the timer should fire at the given instant.
    Wait(Instant),
    /// The deadline has passed without an answer.
    GiveUp,
}

/// The retransmission state of one outstanding request.
#[derive(Clone, Debug)]
pub struct Retransmit {
    policy: RetryPolicy,
    started: Instant,
    attempts: u32,
    next_at: Instant,
}

impl Retransmit {
    /// State right after the first send at `now`. `jitter_sample` is uniform in `[0, 1)`.
    pub fn start(policy: RetryPolicy, now: Instant, jitter_sample: f64) -> Self {
        let mut r = Retransmit {
            policy,
            started: now,
            attempts: 1,
            next_at: now,
        };
        r.schedule(now, jitter_sample);
        r
    }

    fn schedule(&mut self, now: Instant, jitter_sample: f64) {
        let wait = self
            .policy
            .steps()
            .spread(self.attempts, self.policy.jitter, jitter_sample);
        let deadline = self.started + self.policy.deadline;
        self.next_at = (now + wait).min(deadline);
    }

    /// Attempts made so far (the first send counts).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// When the timer should next fire.
    pub fn next_at(&self) -> Instant {
        self.next_at
    }

    /// Time since the first send.
    pub fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// Advances the state at `now`.
    pub fn on_timer(&mut self, now: Instant, jitter_sample: f64) -> Step {
        if now < self.next_at {
            return Step::Wait(self.next_at);
        }
        if now >= self.started + self.policy.deadline {
            return Step::GiveUp;
        }
        self.attempts += 1;
        self.schedule(now, jitter_sample);
        Step::Resend
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy::default();
        let ms: Vec<u128> = (1..=7).map(|a| p.base_timeout(a).as_millis()).collect();
        assert_eq!(ms, vec![250, 500, 1000, 2000, 4000, 4000, 4000]);
    }

    /// Without jitter, the attempts land exactly on the documented schedule and the
    /// request gives up at the deadline.
    #[test]
    fn schedule_without_jitter_is_exact() {
        let p = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        let t0 = Instant::now();
        let mut r = Retransmit::start(p, t0, 0.5);
        let mut sends = vec![0u128];
        let mut now;
        loop {
            now = r.next_at();
            match r.on_timer(now, 0.5) {
                Step::Resend => sends.push((now - t0).as_millis()),
                Step::GiveUp => break,
                Step::Wait(_) => unreachable!("timer fired at next_at"),
            }
        }
        assert_eq!(sends, vec![0, 250, 750, 1750, 3750, 7750]);
        assert_eq!((now - t0).as_millis(), 10_000);
        assert_eq!(r.attempts(), 6);
    }

    #[test]
    fn early_timer_waits() {
        let t0 = Instant::now();
        let mut r = Retransmit::start(RetryPolicy::default(), t0, 0.0);
        let at = r.next_at();
        assert_eq!(
            r.on_timer(t0 + Duration::from_millis(1), 0.0),
            Step::Wait(at)
        );
        assert_eq!(r.attempts(), 1);
    }

    /// Jitter keeps every wait within ±25 % of the base and never past the deadline.
    #[test]
    fn jitter_bounds() {
        let p = RetryPolicy::default();
        for sample in [0.0, 0.1, 0.5, 0.9, 0.999] {
            let t0 = Instant::now();
            let mut r = Retransmit::start(p, t0, sample);
            let mut sent_at = t0;
            loop {
                let wait = (r.next_at() - sent_at).as_secs_f64();
                let base = p.base_timeout(r.attempts()).as_secs_f64();
                let capped = r.next_at() == t0 + p.deadline;
                assert!(
                    wait >= base * 0.75 - 1e-9 || capped,
                    "{sample}: {wait} < {base}"
                );
                assert!(wait <= base * 1.25 + 1e-9, "{sample}: {wait} > {base}");
                sent_at = r.next_at();
                match r.on_timer(sent_at, sample) {
                    Step::Resend => continue,
                    Step::GiveUp => break,
                    Step::Wait(_) => panic!("timer fired at next_at"),
                }
            }
            assert_eq!(sent_at, t0 + p.deadline);
            assert!(r.attempts() >= 5, "{sample}: {} attempts", r.attempts());
        }
    }
}
