//! How many active sources hold each piece.

use crate::pieceset::bits;
use crate::{PieceSet, SourceKind};

/// Per-piece holder counts of active sources, split by kind, plus the set of pieces held
/// by anyone (kept in step so "is any unrequested piece obtainable?" is a word scan).
#[derive(Debug)]
pub(crate) struct Avail {
    peers: Vec<u32>,
    origins: Vec<u32>,
    any: PieceSet,
}

impl Avail {
    pub(crate) fn new(piece_count: u32) -> Self {
        Self {
            peers: vec![0; piece_count as usize],
            origins: vec![0; piece_count as usize],
            any: PieceSet::new(piece_count),
        }
    }

    /// Active peers holding `p`.
    pub(crate) fn peers(&self, p: u32) -> u32 {
        self.peers[p as usize]
    }

    /// Active sources of any kind holding `p`.
    pub(crate) fn total(&self, p: u32) -> u32 {
        self.peers[p as usize] + self.origins[p as usize]
    }

    /// Pieces at least one active source holds.
    pub(crate) fn any(&self) -> &PieceSet {
        &self.any
    }

    pub(crate) fn add(&mut self, kind: SourceKind, p: u32) {
        self.counts(kind)[p as usize] += 1;
        self.any.insert(p);
    }

    pub(crate) fn sub(&mut self, kind: SourceKind, p: u32) {
        let c = &mut self.counts(kind)[p as usize];
        *c -= 1;
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

    fn counts(&mut self, kind: SourceKind) -> &mut Vec<u32> {
        match kind {
            SourceKind::Peer => &mut self.peers,
            SourceKind::Origin => &mut self.origins,
        }
    }
}
