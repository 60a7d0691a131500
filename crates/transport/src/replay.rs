//! Replay protection and de-duplication at the receiver. Pure: time is passed in.
//!
//! Every request carries a random 64-bit `msg_id` and the sender's send time. The guard
//!
//! 1. refuses a message sent more than `window` ago or more than `future_skew` ahead of
//!    the receiver's clock: it is dropped without an answer (an answer would let a replayed
//!    capture with a spoofed source reflect traffic at a victim);
//! 2. remembers every accepted `msg_id` (whoever sent it) for `window + future_skew`, so
//!    any copy of it that still passes check 1 is recognised and never handled twice. A
//!    retransmission from the *original source address* is answered with the cached reply
//!    (kept for `reply_ttl`, at most `max_resends` times); a copy from any other address
//!    is dropped, so a spoofed replay cannot aim cached replies at anyone.
//!
//! Memory is bounded three ways: each sender (source IP) holds at most `per_sender` ids,
//! and a sender over that quota has its new messages dropped, so one sender (say, a
//! hostile enrolled device flooding future-dated messages) can neither evict others' ids
//! nor raise anybody's floor; all senders together hold at most `capacity` ids, and when
//! that is full the oldest ids are forgotten and the guard raises its *floor*: it refuses
//! any message sent at or before the newest forgotten send time, so forgetting never lets
//! a replay through (and, with `future_skew` a few seconds, the floor never runs more than
//! that ahead of the clock); cached replies take at most `reply_bytes`, the oldest being
//! dropped first.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Limits of the replay guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayConfig {
    /// Oldest accepted send time, behind the receiver's clock.
    pub window: Duration,
    /// Newest accepted send time, ahead of the receiver's clock.
    pub future_skew: Duration,
    /// How long a reply is kept to answer retransmissions (longer than any retry deadline).
    pub reply_ttl: Duration,
    /// Most message ids remembered at once, all senders together.
    pub capacity: usize,
    /// Most message ids remembered at once for one sender (source IP address).
    pub per_sender: usize,
    /// Most bytes of cached replies held at once.
    pub reply_bytes: usize,
    /// Most times one cached reply is sent again.
    pub max_resends: u32,
}

impl Default for ReplayConfig {
    /// 120 s behind, 5 s ahead (NTP-synchronised clocks agree far better), 30 s reply
    /// cache, 2,000,000 ids (about 150 MB at the worst; a server with 100,000 clients
    /// heartbeating every 30 s holds about 420,000), 65,536 ids per sender address (a NAT
    /// with 500 devices behind it sending one message every 3 s holds about 21,000), 16 MiB
    /// of cached replies, 5 resends (the default retry policy sends 6 copies).
    fn default() -> Self {
        ReplayConfig {
            window: Duration::from_secs(120),
            future_skew: Duration::from_secs(5),
            reply_ttl: Duration::from_secs(30),
            capacity: 2_000_000,
            per_sender: 65_536,
            reply_bytes: 16 << 20,
            max_resends: 5,
        }
    }
}

/// The guard's decision about one incoming request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// First sight: handle it, then call [`ReplayGuard::complete`].
    Fresh,
    /// A retransmission from the original source: send this cached reply again to it.
    Answered(Arc<[u8]>),
    /// Seen before; send nothing (still being handled, no reply cached, reply expired or
    /// resent enough, or the copy comes from another address).
    Duplicate,
    /// Send time outside the window; `skew_ms` is sender minus receiver. Send nothing.
    OutOfWindow {
        /// Sender's send time minus the receiver's clock (ms).
        skew_ms: i64,
    },
    /// The sender holds its whole quota of remembered ids. Send nothing.
    OverQuota,
}

struct Entry {
    sent_at_ms: u64,
    from: SocketAddr,
    reply: Option<Arc<[u8]>>,
    resends: u32,
}

/// Remembers recent message ids. See the module docs.
pub struct ReplayGuard {
    config: ReplayConfig,
    entries: HashMap<u64, Entry>,
    /// Ids remembered per sender IP.
    per_sender: HashMap<IpAddr, usize>,
    /// (forget at, msg id), in arrival order.
    ids: VecDeque<(u64, u64)>,
    /// (drop reply at, msg id), in completion order.
    replies: VecDeque<(u64, u64)>,
    /// Bytes of cached replies.
    reply_bytes: usize,
    /// Messages sent at or before this (ms) are refused: their ids may have been forgotten.
    floor_ms: u64,
    /// Latest `now` seen, so a clock that steps back cannot resurrect forgotten ids.
    now_ms: u64,
}

impl ReplayGuard {
    /// An empty guard with the given window and bounds.
    pub fn new(config: ReplayConfig) -> Self {
        ReplayGuard {
            config,
            entries: HashMap::new(),
            per_sender: HashMap::new(),
            ids: VecDeque::new(),
            replies: VecDeque::new(),
            reply_bytes: 0,
            floor_ms: 0,
            now_ms: 0,
        }
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of cached replies currently held.
    pub fn reply_bytes(&self) -> usize {
        self.reply_bytes
    }

    /// Ids currently remembered for sender `ip`.
    pub fn sender_len(&self, ip: IpAddr) -> usize {
        self.per_sender.get(&ip).copied().unwrap_or(0)
    }

    /// Drops the cached reply of `id`, if any.
    fn drop_reply(&mut self, id: u64) {
        if let Some(e) = self.entries.get_mut(&id)
            && let Some(r) = e.reply.take()
        {
            self.reply_bytes -= r.len();
        }
    }

    /// Forgets `id` entirely; returns its send time.
    fn forget(&mut self, id: u64) -> Option<u64> {
        let e = self.entries.remove(&id)?;
        if let Some(r) = &e.reply {
            self.reply_bytes -= r.len();
        }
        let ip = e.from.ip();
        if let Some(n) = self.per_sender.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_sender.remove(&ip);
            }
        }
        Some(e.sent_at_ms)
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some(&(at, id)) = self.replies.front() {
            if at > now_ms {
                break;
            }
            self.replies.pop_front();
            self.drop_reply(id);
        }
        while let Some(&(at, id)) = self.ids.front() {
            if at > now_ms {
                break;
            }
            self.ids.pop_front();
            self.forget(id);
        }
    }

    /// Decides what to do with a request `msg_id` from `from`, sent at `sent_at_ms`
    /// (sender's clock), received at `now_ms` (receiver's clock). A `Fresh` id is
    /// remembered from now on.
    pub fn check(
        &mut self,
        from: SocketAddr,
        msg_id: u64,
        sent_at_ms: u64,
        now_ms: u64,
    ) -> Verdict {
        let now_ms = now_ms.max(self.now_ms);
        self.now_ms = now_ms;
        self.expire(now_ms);
        let window = self.config.window.as_millis() as u64;
        let ahead = self.config.future_skew.as_millis() as u64;
        let skew_ms = sent_at_ms as i64 - now_ms as i64;
        if (skew_ms < 0 && skew_ms.unsigned_abs() > window)
            || (skew_ms > 0 && skew_ms as u64 > ahead)
        {
            return Verdict::OutOfWindow { skew_ms };
        }
        let max_resends = self.config.max_resends;
        if let Some(e) = self.entries.get_mut(&msg_id) {
            return match &e.reply {
                Some(r) if e.from == from && e.resends < max_resends => {
                    e.resends += 1;
                    Verdict::Answered(r.clone())
                }
                _ => Verdict::Duplicate,
            };
        }
        if sent_at_ms <= self.floor_ms {
            return Verdict::Duplicate;
        }
        if self.sender_len(from.ip()) >= self.config.per_sender.max(1) {
            return Verdict::OverQuota;
        }
        while self.entries.len() >= self.config.capacity.max(1) {
            let Some((_, old)) = self.ids.pop_front() else {
                break;
            };
            if let Some(sent) = self.forget(old) {
                self.floor_ms = self.floor_ms.max(sent);
            }
        }
        if sent_at_ms <= self.floor_ms {
            return Verdict::Duplicate;
        }
        self.entries.insert(
            msg_id,
            Entry {
                sent_at_ms,
                from,
                reply: None,
                resends: 0,
            },
        );
        *self.per_sender.entry(from.ip()).or_insert(0) += 1;
        // Forget strictly after any copy could still pass the window check: a message
        // accepted now was sent at most `ahead` from now and stays acceptable until
        // `window` after it was sent.
        self.ids.push_back((now_ms + ahead + window + 1, msg_id));
        Verdict::Fresh
    }

    /// Records the reply sent for `msg_id`, to answer retransmissions with. Replies beyond
    /// the byte bound push out the oldest ones.
    pub fn complete(&mut self, msg_id: u64, reply: Arc<[u8]>, now_ms: u64) {
        let now_ms = now_ms.max(self.now_ms);
        if reply.len() > self.config.reply_bytes {
            return;
        }
        let Some(e) = self.entries.get_mut(&msg_id) else {
            return;
        };
        if let Some(old) = e.reply.replace(reply.clone()) {
            self.reply_bytes -= old.len();
        }
        self.reply_bytes += reply.len();
        self.replies
            .push_back((now_ms + self.config.reply_ttl.as_millis() as u64, msg_id));
        while self.reply_bytes > self.config.reply_bytes {
            let Some((_, id)) = self.replies.pop_front() else {
                break;
            };
            self.drop_reply(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: u64 = 1_800_000_000_000;

    fn a(n: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, n], 34324))
    }

    fn guard() -> ReplayGuard {
        ReplayGuard::new(ReplayConfig::default())
    }

    #[test]
    fn fresh_then_duplicate_then_answered() {
        let mut g = guard();
        assert_eq!(g.check(a(1), 1, T, T), Verdict::Fresh);
        assert_eq!(g.check(a(1), 1, T, T + 10), Verdict::Duplicate);
        let reply: Arc<[u8]> = Arc::from(&b"ok"[..]);
        g.complete(1, reply.clone(), T + 20);
        assert_eq!(g.check(a(1), 1, T, T + 30), Verdict::Answered(reply));
    }

    #[test]
    fn cached_reply_goes_only_to_the_original_source_a_few_times() {
        let mut g = guard();
        assert_eq!(g.check(a(1), 1, T, T), Verdict::Fresh);
        g.complete(1, Arc::from(&b"ok"[..]), T);
        // Another address (a spoofed replay): nothing, ever.
        assert_eq!(g.check(a(2), 1, T, T + 1), Verdict::Duplicate);
        // Another port on the same host: nothing either.
        let other_port = SocketAddr::from(([127, 0, 0, 1], 9));
        assert_eq!(g.check(other_port, 1, T, T + 1), Verdict::Duplicate);
        // The original source: at most max_resends copies.
        for _ in 0..ReplayConfig::default().max_resends {
            assert!(matches!(g.check(a(1), 1, T, T + 2), Verdict::Answered(_)));
        }
        assert_eq!(g.check(a(1), 1, T, T + 3), Verdict::Duplicate);
    }

    #[test]
    fn reply_expires_but_id_is_still_refused() {
        let mut g = guard();
        assert_eq!(g.check(a(1), 7, T, T), Verdict::Fresh);
        g.complete(7, Arc::from(&b"r"[..]), T);
        // After the reply TTL, a copy is still refused (never handled twice)...
        assert_eq!(g.check(a(1), 7, T, T + 31_000), Verdict::Duplicate);
        assert_eq!(g.reply_bytes(), 0);
        // ...and after the window, it is refused as out of window.
        assert!(matches!(
            g.check(a(1), 7, T, T + 121_000),
            Verdict::OutOfWindow { skew_ms: -121_000 }
        ));
    }

    #[test]
    fn window_is_wide_behind_and_narrow_ahead() {
        let mut g = guard();
        assert_eq!(
            g.check(a(1), 1, T - 120_001, T),
            Verdict::OutOfWindow { skew_ms: -120_001 }
        );
        assert_eq!(g.check(a(1), 2, T - 120_000, T), Verdict::Fresh);
        assert_eq!(
            g.check(a(1), 3, T + 5_001, T),
            Verdict::OutOfWindow { skew_ms: 5_001 }
        );
        assert_eq!(
            g.check(a(1), 4, T + 120_000, T),
            Verdict::OutOfWindow { skew_ms: 120_000 }
        );
        assert_eq!(g.check(a(1), 5, T + 5_000, T), Verdict::Fresh);
    }

    #[test]
    fn ids_are_forgotten_after_window_plus_skew() {
        let mut g = guard();
        g.check(a(1), 1, T, T);
        assert_eq!(g.len(), 1);
        g.check(a(1), 2, T + 125_000, T + 125_000);
        assert_eq!(g.len(), 2, "id 1 kept for window + skew");
        g.check(a(1), 3, T + 125_001, T + 125_001);
        assert_eq!(g.len(), 2, "id 1 forgotten just after");
        assert_eq!(g.sender_len(a(1).ip()), 2);
    }

    #[test]
    fn clock_stepping_back_does_not_resurrect() {
        let mut g = guard();
        g.check(a(1), 1, T, T);
        g.complete(1, Arc::from(&b"r"[..]), T);
        // The receiver's clock jumps back an hour: its 'now' is held at the latest seen.
        assert!(matches!(
            g.check(a(1), 1, T, T - 3_600_000),
            Verdict::Answered(_)
        ));
    }

    #[test]
    fn capacity_eviction_raises_the_floor() {
        let mut g = ReplayGuard::new(ReplayConfig {
            capacity: 3,
            ..ReplayConfig::default()
        });
        for i in 1..=3 {
            assert_eq!(g.check(a(i as u8), i, T + i, T + 10), Verdict::Fresh);
        }
        // Id 4 evicts id 1 (sent at T+1): floor becomes T+1.
        assert_eq!(g.check(a(4), 4, T + 4, T + 10), Verdict::Fresh);
        assert_eq!(g.len(), 3);
        // A replay of id 1 is still refused, by the floor, from any address.
        assert_eq!(g.check(a(1), 1, T + 1, T + 10), Verdict::Duplicate);
        assert_eq!(g.check(a(9), 1, T + 1, T + 10), Verdict::Duplicate);
    }

    /// The attack of issue #10: one sender floods messages dated ahead. It only uses up
    /// its own quota; an honest sender is never refused.
    #[test]
    fn future_dated_flood_from_one_sender_does_not_touch_others() {
        let mut g = ReplayGuard::new(ReplayConfig {
            capacity: 1_000,
            per_sender: 100,
            ..ReplayConfig::default()
        });
        let mut over = 0;
        for i in 0..10_000u64 {
            match g.check(a(66), 1_000_000 + i, T + 5_000, T) {
                Verdict::Fresh => {}
                Verdict::OverQuota => over += 1,
                v => panic!("unexpected {v:?}"),
            }
        }
        assert_eq!(over, 9_900);
        assert_eq!(g.sender_len(a(66).ip()), 100);
        // Far-future messages are not even remembered.
        assert!(matches!(
            g.check(a(66), 1, T + 120_000, T),
            Verdict::OutOfWindow { .. }
        ));
        for i in 1..=500u64 {
            let ip = SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 34324));
            assert_eq!(g.check(ip, i, T + i, T + i), Verdict::Fresh, "honest {i}");
        }
    }

    #[test]
    fn reply_cache_is_bounded_in_bytes() {
        let mut g = ReplayGuard::new(ReplayConfig {
            reply_bytes: 3_000,
            ..ReplayConfig::default()
        });
        for i in 1..=10u64 {
            assert_eq!(g.check(a(1), i, T, T), Verdict::Fresh);
            g.complete(i, Arc::from(vec![0u8; 1_000]), T);
            assert!(g.reply_bytes() <= 3_000);
        }
        assert_eq!(g.reply_bytes(), 3_000);
        // The oldest replies went first; the newest are still answered.
        assert_eq!(g.check(a(1), 1, T, T), Verdict::Duplicate);
        assert!(matches!(g.check(a(1), 10, T, T), Verdict::Answered(_)));
    }

    proptest! {
        /// Whatever the order of arrivals and senders, each id is `Fresh` at most once,
        /// and every bound holds.
        #[test]
        fn each_id_handled_at_most_once(
            arrivals in proptest::collection::vec((0u64..20, 0u64..2000, 1u8..4), 1..300),
            capacity in 1usize..30,
            per_sender in 1usize..30,
        ) {
            let config = ReplayConfig {
                capacity,
                per_sender,
                reply_bytes: 10,
                ..ReplayConfig::default()
            };
            let mut g = ReplayGuard::new(config);
            let mut handled = std::collections::HashSet::new();
            let mut now = T;
            for (id, advance, sender) in arrivals {
                now += advance;
                // Each id has one fixed send time (a sender reuses it on retransmission).
                let sent = T + id * 1000;
                if g.check(a(sender), id, sent, now) == Verdict::Fresh {
                    prop_assert!(handled.insert(id), "id {} handled twice", id);
                    g.complete(id, Arc::from(vec![0u8; 4]), now);
                }
                prop_assert!(g.len() <= capacity);
                prop_assert!(g.sender_len(a(sender).ip()) <= per_sender);
                prop_assert!(g.reply_bytes() <= 10);
            }
        }
    }
}
