//! Who holds which pieces, and who reads from the origin. Pure: time passed in.
//!
//! Clients report what they hold (complete or partial) as they download. "Where can I get
//! X?" is answered with the peers that hold pieces of X (same subnet first), and with a
//! decision about the origin: **one** client at a time is the origin reader for a content
//! item, and only while no client holds it complete. Everyone else takes pieces from
//! peers, including from the reader as its pieces arrive, so the origin serves the
//! content once. A reader that goes offline or stops making progress for
//! [`READER_STALL_MS`] is replaced by the next client that asks.

use std::collections::HashMap;

use branchline_store::{Bitfield, ContentId};
use branchline_wire::ClientId;

/// An origin reader that reports no new piece for this long is replaced (ms).
pub const READER_STALL_MS: u64 = 30_000;
/// Most peers returned by one locate.
pub const MAX_PEERS: usize = 32;

#[derive(Clone, Debug)]
struct Holding {
    have: Bitfield,
}

#[derive(Clone, Debug)]
struct Reader {
    client: ClientId,
    /// Last time the reader was assigned or reported more pieces.
    progress_ms: u64,
    pieces: u32,
}

#[derive(Default, Debug)]
struct ContentState {
    holders: HashMap<ClientId, Holding>,
    reader: Option<Reader>,
}

/// One answer row: a peer and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPieces {
    /// The peer.
    pub client: ClientId,
    /// Whether it reported the content complete.
    pub complete: bool,
    /// The pieces it reported (`have`, `docs/wire.md` §8).
    pub have: Bitfield,
}

/// The answer to "where can I get X".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    /// Online peers holding pieces of the content (at most [`MAX_PEERS`]): the nearest
    /// first, then complete holders, then those with more pieces.
    pub peers: Vec<PeerPieces>,
    /// The requester should read the pieces no peer has from the origin.
    pub read_origin: bool,
}

/// Who holds which pieces of every content item, and which client reads the origin for it.
#[derive(Default, Debug)]
pub struct Locations {
    contents: HashMap<ContentId, ContentState>,
}

impl Locations {
    /// Empty: nobody holds anything yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records what `client` holds of `content` (its whole have-set, replacing the last).
    pub fn report(&mut self, client: ClientId, content: ContentId, have: Bitfield, now_ms: u64) {
        let state = self.contents.entry(content).or_default();
        if let Some(r) = &mut state.reader
            && r.client == client
            && have.count_ones() > r.pieces
        {
            r.pieces = have.count_ones();
            r.progress_ms = now_ms;
        }
        if have.count_ones() == 0 {
            state.holders.remove(&client);
        } else {
            state.holders.insert(client, Holding { have });
        }
    }

    /// Forgets a client entirely (e.g. it sent bad pieces and was dropped).
    pub fn forget(&mut self, client: &ClientId, content: &ContentId) {
        if let Some(s) = self.contents.get_mut(content) {
            s.holders.remove(client);
            if s.reader.as_ref().is_some_and(|r| r.client == *client) {
                s.reader = None;
            }
        }
    }

    /// Forgets a client for every content item (its identity was reset or revoked).
    pub fn forget_client(&mut self, client: &ClientId) {
        for s in self.contents.values_mut() {
            s.holders.remove(client);
            if s.reader.as_ref().is_some_and(|r| r.client == *client) {
                s.reader = None;
            }
        }
    }

    /// Decides whether `requester` reads `content` from the origin: never when `covered`
    /// (a complete copy it may use exists, or the server sends it the content); otherwise
    /// when no other live origin reader exists, which makes the requester the reader.
    pub fn read_origin(
        &mut self,
        requester: ClientId,
        content: ContentId,
        now_ms: u64,
        covered: bool,
        online: impl Fn(&ClientId) -> bool,
    ) -> bool {
        if covered {
            return false;
        }
        let state = self.contents.entry(content).or_default();
        let reader_alive = state.reader.as_ref().is_some_and(|r| {
            r.client != requester
                && online(&r.client)
                && now_ms.saturating_sub(r.progress_ms) < READER_STALL_MS
        });
        if reader_alive {
            return false;
        }
        let keep = state.reader.as_ref().is_some_and(|r| r.client == requester);
        if !keep {
            let pieces = state
                .holders
                .get(&requester)
                .map(|h| h.have.count_ones())
                .unwrap_or(0);
            state.reader = Some(Reader {
                client: requester,
                progress_ms: now_ms,
                pieces,
            });
        }
        true
    }

    /// True when someone is (or was, until replaced) the origin reader of `content`.
    pub fn has_reader(&self, content: &ContentId) -> bool {
        self.contents
            .get(content)
            .is_some_and(|s| s.reader.is_some())
    }

    /// What `client` holds of `content`, if anything.
    pub fn have(&self, client: &ClientId, content: &ContentId) -> Option<&Bitfield> {
        self.contents
            .get(content)?
            .holders
            .get(client)
            .map(|h| &h.have)
    }

    /// Number of clients holding `content` complete.
    pub fn complete_holders(&self, content: &ContentId) -> usize {
        self.contents
            .get(content)
            .map(|s| s.holders.values().filter(|h| h.have.is_complete()).count())
            .unwrap_or(0)
    }

    /// Answers `requester`'s "where can I get `content`". `origin_covered` says the
    /// requester has a complete source besides peers (the server); `online` tells which
    /// clients are online; `near` ranks a peer for the requester (lower first: same subnet).
    pub fn locate(
        &mut self,
        requester: ClientId,
        content: ContentId,
        now_ms: u64,
        origin_covered: bool,
        online: impl Fn(&ClientId) -> bool,
        near: impl Fn(&ClientId) -> u8,
    ) -> Located {
        let state = self.contents.entry(content).or_default();
        let mut peers: Vec<PeerPieces> = state
            .holders
            .iter()
            .filter(|(c, _)| **c != requester && online(c))
            .map(|(c, h)| PeerPieces {
                client: *c,
                complete: h.have.is_complete(),
                have: h.have.clone(),
            })
            .collect();
        // Same subnet first, then complete holders, then those with more pieces.
        peers.sort_by_key(|p| {
            (
                near(&p.client),
                !p.complete,
                u32::MAX - p.have.count_ones(),
                p.client,
            )
        });
        peers.truncate(MAX_PEERS);
        let any_complete = state
            .holders
            .iter()
            .any(|(c, h)| h.have.is_complete() && online(c));
        // `origin_covered`: the requester has another complete source (the server sends
        // it the content), so it never reads the origin.
        let read_origin = self.read_origin(
            requester,
            content,
            now_ms,
            any_complete || origin_covered,
            &online,
        );
        Located { peers, read_origin }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: u8) -> ClientId {
        ClientId([n; 16])
    }
    const X: ContentId = ContentId::from_bytes([7; 32]);

    fn have(len: u32, pieces: &[u32]) -> Bitfield {
        let mut b = Bitfield::new(len);
        for p in pieces {
            b.set(*p);
        }
        b
    }

    #[test]
    fn one_origin_reader_at_a_time() {
        let mut l = Locations::new();
        let all = |_: &ClientId| true;
        let near = |_: &ClientId| 0;
        assert!(
            l.locate(c(1), X, 0, false, all, near).read_origin,
            "first asker reads the origin"
        );
        let second = l.locate(c(2), X, 10, false, all, near);
        assert!(!second.read_origin, "no second origin reader");
        assert!(second.peers.is_empty(), "the reader has nothing yet");
        l.report(c(1), X, have(4, &[0, 1]), 20);
        let third = l.locate(c(3), X, 30, false, all, near);
        assert!(!third.read_origin);
        assert_eq!(third.peers.len(), 1);
        assert_eq!(third.peers[0].client, c(1));
        assert!(
            l.locate(c(1), X, 40, false, all, near).read_origin,
            "the reader stays the reader"
        );
    }

    #[test]
    fn stalled_or_offline_reader_is_replaced() {
        let mut l = Locations::new();
        let near = |_: &ClientId| 0;
        assert!(l.locate(c(1), X, 0, false, |_| true, near).read_origin);
        l.report(c(1), X, have(4, &[0]), 1000);
        assert!(
            !l.locate(c(2), X, 1000 + READER_STALL_MS - 1, false, |_| true, near)
                .read_origin
        );
        assert!(
            l.locate(c(2), X, 1000 + READER_STALL_MS, false, |_| true, near)
                .read_origin,
            "stalled"
        );
        assert!(
            l.locate(
                c(3),
                X,
                1000 + READER_STALL_MS + 1,
                false,
                |id| *id != c(2),
                near
            )
            .read_origin,
            "offline"
        );
    }

    #[test]
    fn nobody_reads_the_origin_once_a_complete_copy_exists() {
        let mut l = Locations::new();
        let near = |_: &ClientId| 0;
        l.report(c(1), X, have(2, &[0, 1]), 0);
        let r = l.locate(c(2), X, 1, false, |_| true, near);
        assert!(!r.read_origin);
        assert!(r.peers[0].complete);
        // ...unless that copy's holder is offline.
        assert!(
            l.locate(c(2), X, 2, false, |id| *id != c(1), near)
                .read_origin
        );
    }

    #[test]
    fn peers_are_ranked_same_subnet_first_and_exclude_the_requester() {
        let mut l = Locations::new();
        l.report(c(1), X, have(4, &[0, 1, 2, 3]), 0);
        l.report(c(2), X, have(4, &[0]), 0);
        l.report(c(3), X, have(4, &[0, 1]), 0);
        let r = l.locate(
            c(3),
            X,
            1,
            false,
            |_| true,
            |id| if *id == c(2) { 0 } else { 1 },
        );
        let order: Vec<ClientId> = r.peers.iter().map(|p| p.client).collect();
        assert_eq!(order, vec![c(2), c(1)]);
    }

    #[test]
    fn a_client_the_server_sends_to_never_reads_the_origin() {
        let mut l = Locations::new();
        assert!(!l.locate(c(1), X, 0, true, |_| true, |_| 0).read_origin);
        assert!(
            l.locate(c(2), X, 1, false, |_| true, |_| 0).read_origin,
            "c1 took no reader role"
        );
    }

    #[test]
    fn forgotten_peer_is_not_offered() {
        let mut l = Locations::new();
        l.report(c(1), X, have(4, &[0, 1]), 0);
        l.forget(&c(1), &X);
        assert!(
            l.locate(c(2), X, 1, false, |_| true, |_| 0)
                .peers
                .is_empty()
        );
    }
}
