//! Which pieces of a content are present, in memory and in the `have` file on disk.

use crate::id::ContentId;

/// A set of piece indices, one bit per piece.
///
/// Bit `i` lives in byte `i / 8` at mask `1 << (i % 8)` (least significant bit first),
/// the same layout the `have` file uses, so recording one piece rewrites one byte.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Bitfield {
    bits: Vec<u8>,
    len: u32,
    ones: u32,
}

impl Bitfield {
    /// An empty set over `len` pieces.
    pub fn new(len: u32) -> Self {
        Self {
            bits: vec![0; (len as usize).div_ceil(8)],
            len,
            ones: 0,
        }
    }

    /// Rebuilds a set from its byte form; `None` if `bytes` has the wrong length or bits
    /// set past `len`.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Option<Self> {
        if bytes.len() != (len as usize).div_ceil(8) {
            return None;
        }
        if !len.is_multiple_of(8) {
            let last = *bytes.last().expect("len > 0 when len % 8 != 0");
            if last >> (len % 8) != 0 {
                return None;
            }
        }
        let ones = bytes.iter().map(|b| b.count_ones()).sum();
        Some(Self {
            bits: bytes.to_vec(),
            len,
            ones,
        })
    }

    /// The byte form (see the type docs for the layout).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// Number of pieces the set ranges over.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True when the set ranges over zero pieces.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of pieces present.
    pub fn count_ones(&self) -> u32 {
        self.ones
    }

    /// True when every piece is present.
    pub fn is_complete(&self) -> bool {
        self.ones == self.len
    }

    /// Whether piece `i` is present (false past the end).
    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.bits[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    /// Marks piece `i` present; returns whether it changed. Panics if `i` is out of range
    /// (callers check against the piece map first).
    pub fn set(&mut self, i: u32) -> bool {
        assert!(i < self.len, "piece {i} out of range {}", self.len);
        let b = &mut self.bits[(i / 8) as usize];
        let m = 1 << (i % 8);
        let changed = *b & m == 0;
        *b |= m;
        self.ones += u32::from(changed);
        changed
    }

    /// Marks piece `i` absent; returns whether it changed. Panics if out of range.
    pub fn clear(&mut self, i: u32) -> bool {
        assert!(i < self.len, "piece {i} out of range {}", self.len);
        let b = &mut self.bits[(i / 8) as usize];
        let m = 1 << (i % 8);
        let changed = *b & m != 0;
        *b &= !m;
        self.ones -= u32::from(changed);
        changed
    }

    /// The byte that holds bit `i`, with its index.
    pub(crate) fn byte_of(&self, i: u32) -> (usize, u8) {
        let at = (i / 8) as usize;
        (at, self.bits[at])
    }

    /// Indices of missing pieces, in order.
    pub fn missing(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| !self.get(i))
    }

    /// Indices of present pieces, in order.
    pub fn present(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }
}

const HAVE_MAGIC: &[u8; 4] = b"BLHV";
const HAVE_VERSION: u8 = 1;
/// Length of the `have` file header (bytes): magic, version, three zero bytes, piece count
/// (u32 little-endian), content id.
pub(crate) const HAVE_HEADER_LEN: usize = 44;

/// Encodes a `have` file: header then the bitfield bytes.
pub(crate) fn encode_have(id: &ContentId, have: &Bitfield) -> Vec<u8> {
    let mut out = Vec::with_capacity(HAVE_HEADER_LEN + have.as_bytes().len());
    out.extend_from_slice(HAVE_MAGIC);
    out.push(HAVE_VERSION);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&have.len().to_le_bytes());
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(have.as_bytes());
    out
}

/// Length of the `have` file for a content of `pieces` pieces (bytes).
pub(crate) fn have_file_len(pieces: u32) -> u64 {
    HAVE_HEADER_LEN as u64 + u64::from(pieces).div_ceil(8)
}

/// Decodes a `have` file, checking it belongs to `id` and has `pieces` bits. `None` for
/// anything else; never panics.
pub(crate) fn decode_have(bytes: &[u8], id: &ContentId, pieces: u32) -> Option<Bitfield> {
    if bytes.len() < HAVE_HEADER_LEN
        || &bytes[0..4] != HAVE_MAGIC
        || bytes[4] != HAVE_VERSION
        || bytes[5..8] != [0, 0, 0]
        || u32::from_le_bytes(bytes[8..12].try_into().ok()?) != pieces
        || &bytes[12..44] != id.as_bytes()
    {
        return None;
    }
    Bitfield::from_bytes(pieces, &bytes[HAVE_HEADER_LEN..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn set_clear_count() {
        let mut b = Bitfield::new(10);
        assert!(!b.is_complete());
        assert!(b.set(9));
        assert!(!b.set(9));
        assert!(b.get(9) && !b.get(8) && !b.get(10));
        assert_eq!(b.count_ones(), 1);
        assert!(b.clear(9));
        assert!(!b.clear(9));
        assert_eq!(b.count_ones(), 0);
        for i in 0..10 {
            b.set(i);
        }
        assert!(b.is_complete());
        assert_eq!(b.missing().count(), 0);
        assert!(Bitfield::new(0).is_complete());
    }

    #[test]
    fn from_bytes_rejects_stray_bits() {
        assert!(Bitfield::from_bytes(3, &[0b0000_0111]).is_some());
        assert!(Bitfield::from_bytes(3, &[0b0000_1000]).is_none());
        assert!(Bitfield::from_bytes(3, &[0, 0]).is_none());
        assert!(Bitfield::from_bytes(0, &[]).is_some());
    }

    proptest! {
        #[test]
        fn have_round_trip(len in 0u32..200, seed in any::<u64>()) {
            let id = ContentId::of_bytes(&seed.to_le_bytes());
            let mut b = Bitfield::new(len);
            for i in 0..len {
                if (seed >> (i % 64)) & 1 == 1 {
                    b.set(i);
                }
            }
            let enc = encode_have(&id, &b);
            prop_assert_eq!(enc.len() as u64, have_file_len(len));
            prop_assert_eq!(decode_have(&enc, &id, len), Some(b.clone()));
            prop_assert_eq!(b.present().count() as u32, b.count_ones());
            prop_assert!(decode_have(&enc, &id, len + 1).is_none());
        }

        #[test]
        fn have_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120), pieces in 0u32..400) {
            let id = ContentId::from_bytes([7; 32]);
            if let Some(b) = decode_have(&bytes, &id, pieces) {
                prop_assert_eq!(b.len(), pieces);
                prop_assert_eq!(encode_have(&id, &b), bytes);
            }
        }
    }
}
