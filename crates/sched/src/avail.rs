//! How many active sources hold each piece, and which missing pieces are unrequested.

use crate::pieceset::bits;
use crate::{PieceSet, SourceKind};

/// Per-piece holder counts of active sources (same-office peers, and the others: origins
/// and upstream sources), the *pool* (missing pieces
/// with no outstanding request), and two summaries kept in step with them:
///
/// * `any` / `peer_any`: the pieces at least one active source / peer holds, so
///   "missing pieces nobody holds" and "pool pieces no peer holds" (the origin's
///   candidates) are word scans;
/// * `levels[a]`: how many pool pieces exactly `a` active peers hold, so a rarest-first
///   search can stop at the first piece of the lowest level instead of scanning on.
#[derive(Debug)]
pub(crate) struct Pieces {
    peers: Vec<u32>,
    origins: Vec<u32>,
    any: PieceSet,
    peer_any: PieceSet,
    pool: PieceSet,
    levels: Vec<u32>,
}

impl Pieces {
    /// Nothing held by anyone; `pool` holds the missing pieces.
    pub(crate) fn new(pool: PieceSet) -> Self {
        let n = pool.len();
        let levels = vec![pool.count()];
        Self {
            peers: vec![0; n as usize],
            origins: vec![0; n as usize],
            any: PieceSet::new(n),
            peer_any: PieceSet::new(n),
            pool,
            levels,
        }
    }

    /// Active peers holding `p`.
    pub(crate) fn peers(&self, p: u32) -> u32 {
        self.peers[p as usize]
    }

    /// Active sources of any kind holding `p` (`origins` counts upstream sources too).
    pub(crate) fn total(&self, p: u32) -> u32 {
        self.peers[p as usize] + self.origins[p as usize]
    }

    /// Pieces at least one active source holds.
    pub(crate) fn any(&self) -> &PieceSet {
        &self.any
    }

    /// Pieces at least one active peer holds.
    pub(crate) fn peer_any(&self) -> &PieceSet {
        &self.peer_any
    }

    /// Missing pieces with no outstanding request.
    pub(crate) fn pool(&self) -> &PieceSet {
        &self.pool
    }

    /// The smallest number (at least 1) of peers holding some pool piece, if any.
    pub(crate) fn rarest_level(&self) -> Option<u32> {
        self.levels
            .iter()
            .enumerate()
            .skip(1)
            .find(|&(_, &c)| c > 0)
            .map(|(a, _)| a as u32)
    }

    pub(crate) fn pool_insert(&mut self, p: u32) {
        if self.pool.insert(p) {
            self.level(self.peers[p as usize], 1);
        }
    }

    pub(crate) fn pool_remove(&mut self, p: u32) {
        if self.pool.remove(p) {
            self.level(self.peers[p as usize], -1);
        }
    }

    pub(crate) fn add(&mut self, kind: SourceKind, p: u32) {
        let i = p as usize;
        match kind {
            SourceKind::Peer => {
                if self.pool.contains(p) {
                    self.level(self.peers[i], -1);
                    self.level(self.peers[i] + 1, 1);
                }
                self.peers[i] += 1;
                self.peer_any.insert(p);
            }
            SourceKind::Origin | SourceKind::Upstream => self.origins[i] += 1,
        }
        self.any.insert(p);
    }

    pub(crate) fn sub(&mut self, kind: SourceKind, p: u32) {
        let i = p as usize;
        match kind {
            SourceKind::Peer => {
                if self.pool.contains(p) {
                    self.level(self.peers[i], -1);
                    self.level(self.peers[i] - 1, 1);
                }
                self.peers[i] -= 1;
                if self.peers[i] == 0 {
                    self.peer_any.remove(p);
                }
            }
            SourceKind::Origin | SourceKind::Upstream => self.origins[i] -= 1,
        }
        if self.total(p) == 0 {
            self.any.remove(p);
        }
    }

    /// A source of `kind` went from holding `old` to holding `new`; touches only the
    /// words that changed.
    pub(crate) fn apply(&mut self, kind: SourceKind, old: &PieceSet, new: &PieceSet) {
        for (i, (&o, &n)) in old.words().iter().zip(new.words()).enumerate() {
            if o == n {
                continue;
            }
            for b in bits(n & !o) {
                self.add(kind, i as u32 * 64 + b);
            }
            for b in bits(o & !n) {
                self.sub(kind, i as u32 * 64 + b);
            }
        }
    }

    fn level(&mut self, a: u32, delta: i32) {
        let a = a as usize;
        if a >= self.levels.len() {
            self.levels.resize(a + 1, 0);
        }
        self.levels[a] = self.levels[a].wrapping_add_signed(delta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_pool_and_holders() {
        let mut p = Pieces::new(PieceSet::full(4));
        assert_eq!(p.rarest_level(), None);
        p.add(SourceKind::Peer, 0);
        p.add(SourceKind::Peer, 0);
        p.add(SourceKind::Peer, 1);
        assert_eq!(p.rarest_level(), Some(1));
        p.pool_remove(1);
        assert_eq!(p.rarest_level(), Some(2));
        p.add(SourceKind::Origin, 2);
        assert_eq!(p.rarest_level(), Some(2), "origins do not count as peers");
        assert!(p.any().contains(2));
        p.sub(SourceKind::Peer, 0);
        assert_eq!(p.rarest_level(), Some(1));
        p.pool_insert(1);
        p.sub(SourceKind::Peer, 1);
        assert_eq!(p.levels, vec![3, 1, 0]);
        assert!(!p.any().contains(1));
        assert!(!p.peer_any().contains(1));
        assert!(p.peer_any().contains(0));
        assert!(!p.peer_any().contains(2) && p.any().contains(2));
    }
}
