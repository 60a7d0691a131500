//! Checks on what clients report about their peers (issue #10). Pure: time passed in.
//!
//! A hostile enrolled client must not be able to make the server drop an honest peer or
//! stop origin reads with words alone, so:
//!
//! * **Named peers.** The server remembers, per client and bounded, which peers it named
//!   to it (in `Locate` answers). A report about a peer the reporter was never given is
//!   ignored (counted).
//! * **Bad-peer reports.** A peer is dropped for a content item only when at least
//!   [`DROP_REPORTERS`] distinct reporters (distinct client ids seen from distinct source
//!   addresses) reported it within [`BAD_REPORT_WINDOW_MS`]. One reporter, however many
//!   times it reports, is not enough. Each reporter still drops the peer for itself.
//! * **Complete claims.** A client's `complete` claim stops other clients' origin reads
//!   for good only once it has *served*: another client that was given it as a peer
//!   reported (`ReportHave.served_by`) that it received verified bytes of that content
//!   from it. An unproven claim is given [`PROVE_WINDOW_MS`] from the first time the
//!   server offers the claimant to another client (so an honest holder, e.g. after a
//!   server restart forgot who served, gets the chance to serve before anyone reads the
//!   origin again); after that it stops nothing. A false claim delays origin reads by at
//!   most that window, once.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::net::IpAddr;

use branchline_store::ContentId;
use branchline_wire::ClientId;

/// Distinct reporters it takes to drop a peer for a content item.
pub const DROP_REPORTERS: usize = 2;
/// Bad-peer reports older than this no longer count (ms).
pub const BAD_REPORT_WINDOW_MS: u64 = 10 * 60 * 1000;
/// (content, peer) pairs remembered per client as "named to it" (the latest ones).
pub const MAX_NAMED_PER_CLIENT: usize = 256;
/// Clients whose named peers are remembered (the least recently named are forgotten).
pub const MAX_NAMED_CLIENTS: usize = 200_000;
/// Most (content, peer) pairs with pending bad-peer reports.
pub const MAX_BAD_PAIRS: usize = 100_000;
/// Most (content, peer) pairs known to have served, and most unproven complete claims
/// being given their window.
pub const MAX_SERVED: usize = 1_000_000;
/// How long an unproven `complete` claim keeps others from reading the origin, from the
/// first time the claimant is offered to another client (ms).
pub const PROVE_WINDOW_MS: u64 = 20_000;

/// What a bad-peer report did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadVerdict {
    /// The reporter was never given this peer for this content: ignored.
    NotNamed,
    /// Counted, but too few distinct reporters so far to drop the peer.
    Counted {
        /// Distinct reporters of this peer for this content so far.
        reporters: usize,
    },
    /// Enough distinct reporters: drop the peer for this content.
    Drop,
    /// Too many pairs under report already: ignored.
    Full,
}

#[derive(Debug)]
struct BadReport {
    reporter: ClientId,
    ip: IpAddr,
    at_ms: u64,
}

/// The state behind the checks.
#[derive(Debug)]
pub struct Reports {
    hasher: RandomState,
    /// Per client: hashes of (content, peer) pairs named to it, oldest first.
    named: HashMap<ClientId, VecDeque<u64>>,
    /// Clients in `named`, in the order they were first named something (eviction).
    named_order: VecDeque<ClientId>,
    bad: HashMap<(ContentId, ClientId), Vec<BadReport>>,
    served: HashSet<(ContentId, ClientId)>,
    /// Unproven complete claims: when the claimant was first offered as complete.
    offered: HashMap<(ContentId, ClientId), u64>,
}

impl Default for Reports {
    fn default() -> Self {
        Reports {
            hasher: RandomState::new(),
            named: HashMap::new(),
            named_order: VecDeque::new(),
            bad: HashMap::new(),
            served: HashSet::new(),
            offered: HashMap::new(),
        }
    }
}

impl Reports {
    /// Empty: nothing named, reported or served yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn key(&self, content: &ContentId, peer: &ClientId) -> u64 {
        self.hasher.hash_one((content.as_bytes(), peer.0))
    }

    /// Notes that the server named `peers` to `client` for `content`.
    pub fn named(&mut self, client: ClientId, content: ContentId, peers: &[ClientId]) {
        let keys: Vec<u64> = peers
            .iter()
            .filter(|p| **p != client)
            .map(|p| self.key(&content, p))
            .collect();
        if keys.is_empty() {
            return;
        }
        if !self.named.contains_key(&client) {
            while self.named.len() >= MAX_NAMED_CLIENTS {
                match self.named_order.pop_front() {
                    Some(old) => {
                        self.named.remove(&old);
                    }
                    None => break,
                }
            }
            self.named_order.push_back(client);
        }
        let set = self.named.entry(client).or_default();
        for k in keys {
            if set.contains(&k) {
                continue;
            }
            if set.len() >= MAX_NAMED_PER_CLIENT {
                set.pop_front();
            }
            set.push_back(k);
        }
    }

    /// Whether the server named `peer` to `client` for `content` (among the latest).
    pub fn was_named(&self, client: &ClientId, content: &ContentId, peer: &ClientId) -> bool {
        let k = self.key(content, peer);
        self.named.get(client).is_some_and(|s| s.contains(&k))
    }

    /// `reporter` (seen from `ip`) says `peer` sent it a bad piece of `content`.
    pub fn bad_peer(
        &mut self,
        reporter: ClientId,
        ip: IpAddr,
        content: ContentId,
        peer: ClientId,
        now_ms: u64,
    ) -> BadVerdict {
        if peer == reporter || !self.was_named(&reporter, &content, &peer) {
            return BadVerdict::NotNamed;
        }
        let pair = (content, peer);
        if !self.bad.contains_key(&pair) {
            if self.bad.len() >= MAX_BAD_PAIRS {
                self.expire(now_ms);
            }
            if self.bad.len() >= MAX_BAD_PAIRS {
                return BadVerdict::Full;
            }
        }
        let reports = self.bad.entry(pair).or_default();
        reports.retain(|r| now_ms.saturating_sub(r.at_ms) < BAD_REPORT_WINDOW_MS);
        match reports.iter_mut().find(|r| r.reporter == reporter) {
            Some(r) => {
                r.at_ms = now_ms;
                r.ip = ip;
            }
            None => reports.push(BadReport {
                reporter,
                ip,
                at_ms: now_ms,
            }),
        }
        // Distinct ids from distinct addresses: one device registering several ids
        // counts once.
        let ips: HashSet<IpAddr> = reports.iter().map(|r| r.ip).collect();
        let distinct = ips.len().min(reports.len());
        if distinct >= DROP_REPORTERS {
            self.bad.remove(&pair);
            self.served.remove(&pair);
            BadVerdict::Drop
        } else {
            BadVerdict::Counted {
                reporters: distinct,
            }
        }
    }

    fn expire(&mut self, now_ms: u64) {
        self.bad.retain(|_, reports| {
            reports.retain(|r| now_ms.saturating_sub(r.at_ms) < BAD_REPORT_WINDOW_MS);
            !reports.is_empty()
        });
    }

    /// `reporter` says it received verified bytes of `content` from each of `peers`.
    /// Returns how many of them now count as having served (named to the reporter).
    pub fn served_by(
        &mut self,
        reporter: ClientId,
        content: ContentId,
        peers: impl IntoIterator<Item = ClientId>,
    ) -> usize {
        let mut n = 0;
        for peer in peers {
            if peer == reporter || !self.was_named(&reporter, &content, &peer) {
                continue;
            }
            if self.served.len() >= MAX_SERVED && !self.served.contains(&(content, peer)) {
                continue;
            }
            self.served.insert((content, peer));
            self.offered.remove(&(content, peer));
            n += 1;
        }
        n
    }

    /// Whether another client confirmed receiving bytes of `content` from `peer`.
    pub fn has_served(&self, content: &ContentId, peer: &ClientId) -> bool {
        self.served.contains(&(*content, *peer))
    }

    /// Whether `peer`'s complete copy of `content`, about to be offered at `now_ms`, may
    /// stand in for the origin: it has served, or its claim is still within its
    /// [`PROVE_WINDOW_MS`] (which starts now if this is the first offer).
    pub fn complete_covers(&mut self, content: ContentId, peer: ClientId, now_ms: u64) -> bool {
        if self.served.contains(&(content, peer)) {
            return true;
        }
        let first = match self.offered.get(&(content, peer)) {
            Some(t) => *t,
            None if self.offered.len() >= MAX_SERVED => return false,
            None => {
                self.offered.insert((content, peer), now_ms);
                now_ms
            }
        };
        now_ms.saturating_sub(first) < PROVE_WINDOW_MS
    }

    /// [`Reports::complete_covers`] without starting a window: whether `peer`'s complete
    /// copy counts when the server plans who fetches (RVP election, relays). A claim
    /// never offered yet counts (its window starts when it is offered).
    pub fn complete_counts(&self, content: &ContentId, peer: &ClientId, now_ms: u64) -> bool {
        self.served.contains(&(*content, *peer))
            || self
                .offered
                .get(&(*content, *peer))
                .is_none_or(|first| now_ms.saturating_sub(*first) < PROVE_WINDOW_MS)
    }

    /// Forgets everything about `client` (its identity was reset or revoked).
    pub fn forget_client(&mut self, client: &ClientId) {
        self.named.remove(client);
        self.named_order.retain(|c| c != client);
        self.served.retain(|(_, p)| p != client);
        self.offered.retain(|(_, p), _| p != client);
        self.bad.retain(|(_, p), _| p != client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: u8) -> ClientId {
        ClientId([n; 16])
    }
    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }
    const X: ContentId = ContentId::from_bytes([7; 32]);
    const Y: ContentId = ContentId::from_bytes([8; 32]);

    #[test]
    fn reports_about_peers_never_named_are_ignored() {
        let mut r = Reports::new();
        assert_eq!(r.bad_peer(c(1), ip(1), X, c(9), 0), BadVerdict::NotNamed);
        r.named(c(1), X, &[c(9)]);
        assert!(r.was_named(&c(1), &X, &c(9)));
        assert!(!r.was_named(&c(1), &Y, &c(9)), "named for X only");
        assert!(!r.was_named(&c(2), &X, &c(9)), "named to c1 only");
        assert_eq!(r.bad_peer(c(1), ip(1), Y, c(9), 0), BadVerdict::NotNamed);
        assert_eq!(r.bad_peer(c(1), ip(1), X, c(1), 0), BadVerdict::NotNamed);
    }

    #[test]
    fn one_reporter_never_drops_a_peer() {
        let mut r = Reports::new();
        r.named(c(1), X, &[c(9)]);
        for t in 0..100 {
            assert_eq!(
                r.bad_peer(c(1), ip(1), X, c(9), t),
                BadVerdict::Counted { reporters: 1 }
            );
        }
        // A second id from the same address (one device, two ids) does not count.
        r.named(c(2), X, &[c(9)]);
        assert_eq!(
            r.bad_peer(c(2), ip(1), X, c(9), 200),
            BadVerdict::Counted { reporters: 1 }
        );
        // A second reporter from elsewhere does.
        r.named(c(3), X, &[c(9)]);
        assert_eq!(r.bad_peer(c(3), ip(3), X, c(9), 300), BadVerdict::Drop);
    }

    #[test]
    fn old_reports_expire() {
        let mut r = Reports::new();
        r.named(c(1), X, &[c(9)]);
        r.named(c(2), X, &[c(9)]);
        r.bad_peer(c(1), ip(1), X, c(9), 0);
        assert_eq!(
            r.bad_peer(c(2), ip(2), X, c(9), BAD_REPORT_WINDOW_MS),
            BadVerdict::Counted { reporters: 1 },
            "c1's report is too old"
        );
    }

    #[test]
    fn named_peers_are_bounded_per_client() {
        let mut r = Reports::new();
        let many: Vec<ClientId> = (0..=255u8).map(c).collect();
        r.named(c(1), X, &many);
        r.named(c(1), Y, &[c(5), c(6)]);
        assert!(r.was_named(&c(1), &Y, &c(5)) && r.was_named(&c(1), &Y, &c(6)));
        // c(1) is never named to itself, so 255 of X plus 2 of Y: the oldest of X fell
        // out.
        assert!(!r.was_named(&c(1), &X, &c(0)));
        assert!(r.was_named(&c(1), &X, &c(255)));
        assert_eq!(r.named[&c(1)].len(), MAX_NAMED_PER_CLIENT);
    }

    #[test]
    fn an_unproven_complete_claim_covers_only_for_its_window() {
        let mut r = Reports::new();
        assert!(
            r.complete_covers(X, c(9), 1000),
            "first offer: window starts"
        );
        assert!(r.complete_covers(X, c(9), 1000 + PROVE_WINDOW_MS - 1));
        assert!(
            !r.complete_covers(X, c(9), 1000 + PROVE_WINDOW_MS),
            "window over, never served"
        );
        assert!(r.complete_covers(Y, c(9), 50_000), "per content");
        assert!(!r.complete_counts(&X, &c(9), 1000 + PROVE_WINDOW_MS));
        assert!(r.complete_counts(&Y, &c(9), 50_001));
        assert!(r.complete_counts(&X, &c(7), 0), "never offered yet");
        // Once someone it was named to confirms bytes from it, it covers for good.
        r.named(c(1), X, &[c(9)]);
        r.served_by(c(1), X, [c(9)]);
        assert!(r.complete_covers(X, c(9), 10_000_000));
    }

    #[test]
    fn serving_counts_only_when_confirmed_by_someone_given_the_peer() {
        let mut r = Reports::new();
        assert!(!r.has_served(&X, &c(9)));
        assert_eq!(r.served_by(c(1), X, [c(9)]), 0, "never named to c1");
        assert_eq!(r.served_by(c(9), X, [c(9)]), 0, "nobody vouches for itself");
        r.named(c(1), X, &[c(9)]);
        assert_eq!(r.served_by(c(1), X, [c(9), c(8)]), 1);
        assert!(r.has_served(&X, &c(9)) && !r.has_served(&Y, &c(9)));
        r.forget_client(&c(9));
        assert!(!r.has_served(&X, &c(9)));
    }
}
