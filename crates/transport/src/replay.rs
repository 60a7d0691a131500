//! Replay protection and de-duplication at the receiver. Pure: time is passed in.
//!
//! Every request carries a random 64-bit `msg_id` and the sender's send time. The guard
//!
//! 1. refuses a message whose send time is more than `window` away from the receiver's
//!    clock (stale or from the future): the sender gets a clock-skew error;
//! 2. remembers every accepted `msg_id` for `2 × window`, so any copy of it that still
//!    passes check 1 is recognised: a retransmission is answered with the cached reply
//!    (kept for `reply_ttl`) and never handled twice; a later replay is dropped.
//!
//! Together these make every message act at most once, with no per-sender state. Memory
//! is bounded by `capacity`: when full, the oldest ids are forgotten and the guard raises
//! its *floor*: from then on it refuses any message sent at or before the newest forgotten
//! send time, so forgetting never lets a replay through.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Limits of the replay guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayConfig {
    /// Largest accepted difference between the sender's and the receiver's clocks.
    pub window: Duration,
    /// How long a reply is kept to answer retransmissions (longer than any retry deadline).
    pub reply_ttl: Duration,
    /// Most message ids remembered at once.
    pub capacity: usize,
}

impl Default for ReplayConfig {
    /// 120 s window (NTP-synchronised clocks agree far better), 30 s reply cache,
    /// 2,000,000 ids (about 100 MB at the worst; a server with 100,000 clients
    /// heartbeating every 30 s holds about 800,000).
    fn default() -> Self {
        ReplayConfig {
            window: Duration::from_secs(120),
            reply_ttl: Duration::from_secs(30),
            capacity: 2_000_000,
        }
    }
}

/// The guard's decision about one incoming request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// First sight: handle it, then call [`ReplayGuard::complete`].
    Fresh,
    /// Seen before and answered: send this cached reply again, do not handle.
    Answered(Arc<[u8]>),
    /// Seen before; no reply to resend (still being handled, no reply, or reply expired).
    Duplicate,
    /// Send time outside the window; `skew_ms` is sender minus receiver.
    OutOfWindow { skew_ms: i64 },
}

struct Entry {
    sent_at_ms: u64,
    reply: Option<Arc<[u8]>>,
}

/// Remembers recent message ids. See the module docs.
pub struct ReplayGuard {
    config: ReplayConfig,
    entries: HashMap<u64, Entry>,
    /// (forget at, msg id), in arrival order.
    ids: VecDeque<(u64, u64)>,
    /// (drop reply at, msg id), in completion order.
    replies: VecDeque<(u64, u64)>,
    /// Messages sent at or before this (ms) are refused: their ids may have been forgotten.
    floor_ms: u64,
    /// Latest `now` seen, so a clock that steps back cannot resurrect forgotten ids.
    now_ms: u64,
}

impl ReplayGuard {
    pub fn new(config: ReplayConfig) -> Self {
        ReplayGuard {
            config,
            entries: HashMap::new(),
            ids: VecDeque::new(),
            replies: VecDeque::new(),
            floor_ms: 0,
            now_ms: 0,
        }
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some(&(at, id)) = self.replies.front() {
            if at > now_ms {
                break;
            }
            self.replies.pop_front();
            if let Some(e) = self.entries.get_mut(&id) {
                e.reply = None;
            }
        }
        while let Some(&(at, id)) = self.ids.front() {
            if at > now_ms {
                break;
            }
            self.ids.pop_front();
            self.entries.remove(&id);
        }
    }

    /// Decides what to do with a request `msg_id` sent at `sent_at_ms` (sender's clock),
    /// received at `now_ms` (receiver's clock). A `Fresh` id is remembered from now on.
    pub fn check(&mut self, msg_id: u64, sent_at_ms: u64, now_ms: u64) -> Verdict {
        let now_ms = now_ms.max(self.now_ms);
        self.now_ms = now_ms;
        self.expire(now_ms);
        let window = self.config.window.as_millis() as u64;
        let skew_ms = sent_at_ms as i64 - now_ms as i64;
        if skew_ms.unsigned_abs() > window {
            return Verdict::OutOfWindow { skew_ms };
        }
        if let Some(e) = self.entries.get(&msg_id) {
            return match &e.reply {
                Some(r) => Verdict::Answered(r.clone()),
                None => Verdict::Duplicate,
            };
        }
        if sent_at_ms <= self.floor_ms {
            return Verdict::Duplicate;
        }
        while self.entries.len() >= self.config.capacity.max(1) {
            let Some((_, old)) = self.ids.pop_front() else {
                break;
            };
            if let Some(e) = self.entries.remove(&old) {
                self.floor_ms = self.floor_ms.max(e.sent_at_ms);
            }
        }
        if sent_at_ms <= self.floor_ms {
            return Verdict::Duplicate;
        }
        self.entries.insert(
            msg_id,
            Entry {
                sent_at_ms,
                reply: None,
            },
        );
        // Forget strictly after any copy could still pass the window check.
        self.ids.push_back((now_ms + 2 * window + 1, msg_id));
        Verdict::Fresh
    }

    /// Records the reply sent for `msg_id`, to answer retransmissions with.
    pub fn complete(&mut self, msg_id: u64, reply: Arc<[u8]>, now_ms: u64) {
        let now_ms = now_ms.max(self.now_ms);
        if let Some(e) = self.entries.get_mut(&msg_id) {
            e.reply = Some(reply);
            self.replies
                .push_back((now_ms + self.config.reply_ttl.as_millis() as u64, msg_id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: u64 = 1_800_000_000_000;

    fn guard() -> ReplayGuard {
        ReplayGuard::new(ReplayConfig::default())
    }

    #[test]
    fn fresh_then_duplicate_then_answered() {
        let mut g = guard();
        assert_eq!(g.check(1, T, T), Verdict::Fresh);
        assert_eq!(g.check(1, T, T + 10), Verdict::Duplicate);
        let reply: Arc<[u8]> = Arc::from(&b"ok"[..]);
        g.complete(1, reply.clone(), T + 20);
        assert_eq!(g.check(1, T, T + 30), Verdict::Answered(reply));
    }

    #[test]
    fn reply_expires_but_id_is_still_refused() {
        let mut g = guard();
        assert_eq!(g.check(7, T, T), Verdict::Fresh);
        g.complete(7, Arc::from(&b"r"[..]), T);
        // After the reply TTL, a copy is still refused (never handled twice)...
        assert_eq!(g.check(7, T, T + 31_000), Verdict::Duplicate);
        // ...and after the window, it is refused as out of window.
        assert!(matches!(
            g.check(7, T, T + 121_000),
            Verdict::OutOfWindow { skew_ms: -121_000 }
        ));
    }

    #[test]
    fn out_of_window_both_ways() {
        let mut g = guard();
        assert_eq!(
            g.check(1, T - 120_001, T),
            Verdict::OutOfWindow { skew_ms: -120_001 }
        );
        assert_eq!(
            g.check(2, T + 120_001, T),
            Verdict::OutOfWindow { skew_ms: 120_001 }
        );
        assert_eq!(g.check(3, T + 120_000, T), Verdict::Fresh);
    }

    #[test]
    fn ids_are_forgotten_after_twice_the_window() {
        let mut g = guard();
        g.check(1, T, T);
        assert_eq!(g.len(), 1);
        g.check(2, T + 240_000, T + 240_000);
        assert_eq!(g.len(), 2, "id 1 kept for the whole 2 windows");
        g.check(3, T + 240_001, T + 240_001);
        assert_eq!(g.len(), 2, "id 1 forgotten just after 2 windows");
    }

    #[test]
    fn clock_stepping_back_does_not_resurrect() {
        let mut g = guard();
        g.check(1, T, T);
        g.complete(1, Arc::from(&b"r"[..]), T);
        // The receiver's clock jumps back an hour: its 'now' is held at the latest seen.
        assert!(matches!(g.check(1, T, T - 3_600_000), Verdict::Answered(_)));
    }

    #[test]
    fn capacity_eviction_raises_the_floor() {
        let mut g = ReplayGuard::new(ReplayConfig {
            capacity: 3,
            ..ReplayConfig::default()
        });
        for i in 1..=3 {
            assert_eq!(g.check(i, T + i, T + 10), Verdict::Fresh);
        }
        // Id 4 evicts id 1 (sent at T+1): floor becomes T+1.
        assert_eq!(g.check(4, T + 4, T + 10), Verdict::Fresh);
        assert_eq!(g.len(), 3);
        // A replay of id 1 is still refused, by the floor.
        assert_eq!(g.check(1, T + 1, T + 10), Verdict::Duplicate);
    }

    proptest! {
        /// Whatever the order of arrivals, each id is `Fresh` at most once.
        #[test]
        fn each_id_handled_at_most_once(
            arrivals in proptest::collection::vec((0u64..20, 0u64..2000), 1..300),
            capacity in 1usize..30,
        ) {
            let mut g = ReplayGuard::new(ReplayConfig { capacity, ..ReplayConfig::default() });
            let mut handled = std::collections::HashSet::new();
            let mut now = T;
            for (id, advance) in arrivals {
                now += advance;
                // Each id has one fixed send time (a sender reuses it on retransmission).
                let sent = T + id * 1000;
                if g.check(id, sent, now) == Verdict::Fresh {
                    prop_assert!(handled.insert(id), "id {} handled twice", id);
                }
                prop_assert!(g.len() <= capacity);
            }
        }
    }
}
