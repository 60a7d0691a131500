//! Piece layout and the piece map: one BLAKE3 chaining value per piece, verified against
//! the content id by re-merging the BLAKE3 tree.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
};
use bytes::Bytes;

use crate::id::ContentId;

/// Smallest piece size a map may declare (bytes): 16 KiB, one BLAKE3 chunk group of 16
/// chunks.
pub const MIN_PIECE_SIZE: u32 = 16 * 1024;
/// Largest piece size a map may declare (bytes): 16 MiB. A piece is held in memory while
/// it is verified, so this bounds per-transfer memory.
pub const MAX_PIECE_SIZE: u32 = 16 * 1024 * 1024;
/// Piece size the publisher uses unless told otherwise (bytes): 1 MiB. See the crate docs
/// for the trade-off.
pub const DEFAULT_PIECE_SIZE: PieceSize = PieceSize(20);

/// Size of one piece hash in a map (bytes).
pub const PIECE_HASH_LEN: usize = 32;

/// Magic bytes that open an encoded piece map.
const MAGIC: &[u8; 4] = b"BLPM";
/// Encoding version written by this crate.
const VERSION: u8 = 1;
/// Length of the encoded header (bytes) before the piece hashes.
pub const MAP_HEADER_LEN: usize = 48;

/// Size of a piece: a power of two between [`MIN_PIECE_SIZE`] and [`MAX_PIECE_SIZE`]
/// bytes. Powers of two keep every piece an aligned BLAKE3 subtree, so a piece's chaining
/// value can be computed from the piece alone.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PieceSize(u8);

impl PieceSize {
    /// Validates a piece size in bytes.
    pub fn new(bytes: u32) -> Result<Self, MapError> {
        if !bytes.is_power_of_two() || !(MIN_PIECE_SIZE..=MAX_PIECE_SIZE).contains(&bytes) {
            return Err(MapError::BadPieceSize(u64::from(bytes)));
        }
        Ok(Self(bytes.trailing_zeros() as u8))
    }

    fn from_log2(log2: u8) -> Result<Self, MapError> {
        if u32::from(log2) >= 32 {
            return Err(MapError::BadPieceSize(1u64 << log2.min(63)));
        }
        Self::new(1u32 << log2)
    }

    /// The piece size in bytes.
    pub fn bytes(self) -> u32 {
        1u32 << self.0
    }

    /// Base-2 logarithm of the piece size.
    pub fn log2(self) -> u8 {
        self.0
    }

    /// Number of pieces of a content of `size` bytes (zero for empty content).
    pub fn piece_count(self, size: u64) -> u64 {
        size.div_ceil(u64::from(self.bytes()))
    }
}

impl fmt::Debug for PieceSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PieceSize({} bytes)", self.bytes())
    }
}

impl Default for PieceSize {
    fn default() -> Self {
        DEFAULT_PIECE_SIZE
    }
}

/// Why a piece map could not be built, decoded or trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// Piece size outside the allowed range or not a power of two.
    #[error("piece size {0} bytes is not allowed: it must be a power of two from 16 KiB to 16 MiB")]
    BadPieceSize(u64),
    /// The content has more pieces than a `u32` index can name.
    #[error(
        "content of {size} bytes has too many pieces at this piece size; use a larger piece size"
    )]
    TooManyPieces {
        /// Content size (bytes).
        size: u64,
    },
    /// Encoded map shorter than its header.
    #[error(
        "piece map is {0} bytes, shorter than its 48-byte header; the sender's map is truncated, fetch it again"
    )]
    TooShort(usize),
    /// The bytes do not start with the piece-map magic.
    #[error("these bytes are not a Branchline piece map (bad magic)")]
    BadMagic,
    /// Encoded with a version this build does not read.
    #[error("piece map version {0} is not supported by this build (it reads version 1); upgrade")]
    UnsupportedVersion(u8),
    /// Reserved header bytes are not zero.
    #[error("piece map header has non-zero reserved bytes; the map is damaged, fetch it again")]
    BadHeader,
    /// The number of piece hashes does not match the declared size and piece size.
    #[error(
        "piece map should be {expected} bytes for its declared size and piece size but is {found}; fetch it again"
    )]
    WrongLength {
        /// Expected encoded length (bytes).
        expected: u64,
        /// Actual encoded length (bytes).
        found: usize,
    },
    /// The map declares a different size than the catalogue's.
    #[error(
        "piece map declares {found} bytes but the content is {expected} bytes; drop the peer that sent it"
    )]
    SizeMismatch {
        /// Size from the catalogue (bytes).
        expected: u64,
        /// Size written in the map (bytes).
        found: u64,
    },
    /// The map names a different content than the one asked for.
    #[error("piece map is for content {found}, not the requested {expected}")]
    IdMismatch {
        /// The content id asked for.
        expected: ContentId,
        /// The content id written in the map.
        found: ContentId,
    },
    /// The piece hashes do not combine to the content id: the map is forged or damaged.
    #[error(
        "piece map for {0} does not verify: its piece hashes do not combine to the content id; drop the peer that sent it"
    )]
    RootMismatch(ContentId),
}

/// Why a piece failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PieceError {
    /// No such piece in this content.
    #[error("piece {index} does not exist: the content has {count} pieces")]
    OutOfRange {
        /// Requested piece index.
        index: u32,
        /// Number of pieces in the content.
        count: u32,
    },
    /// The piece has the wrong number of bytes.
    #[error("piece {index} must be {expected} bytes but {found} were given")]
    WrongLength {
        /// Piece index.
        index: u32,
        /// Expected length (bytes).
        expected: u32,
        /// Given length (bytes).
        found: usize,
    },
    /// The piece's bytes do not hash to the value in the verified piece map.
    #[error("piece {index} does not match its hash: the bytes are corrupt or forged")]
    HashMismatch {
        /// Piece index.
        index: u32,
    },
    /// The piece was verified against another content's map (a caller's mistake):
    /// nothing was written.
    #[error("piece {index} was verified for content {verified_for}, not this one")]
    OtherContent {
        /// Piece index.
        index: u32,
        /// The content whose map it matched.
        verified_for: ContentId,
    },
}

/// A piece whose bytes matched its content's piece map. The only way to make one is
/// [`PieceMap::verify_shared`], so holding one proves the check was done (against the
/// map of [`VerifiedPiece::content`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedPiece {
    content: ContentId,
    index: u32,
    data: Bytes,
}

impl VerifiedPiece {
    /// The content whose map the piece matched.
    pub fn content(&self) -> &ContentId {
        &self.content
    }

    /// The piece's index in that content.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The piece's bytes (shared, not copied).
    pub fn data(&self) -> &Bytes {
        &self.data
    }
}

/// The piece map of one content item: its id, size, piece size, and the BLAKE3 chaining
/// value of every piece.
///
/// A `PieceMap` value is always trustworthy: it is either computed from the content's
/// bytes ([`PieceMap::from_file`], [`PieceMap::from_bytes`]) or decoded with
/// [`PieceMap::decode`], which re-merges the piece hashes into the BLAKE3 root and
/// compares it to the expected content id. Every piece can then be checked on its own with
/// [`PieceMap::verify_piece`].
///
/// For content of one piece (size at most the piece size), the single "piece hash" is the
/// content id itself (a root hash, not a chaining value). Empty content has no pieces.
#[derive(Clone, PartialEq, Eq)]
pub struct PieceMap {
    id: ContentId,
    size: u64,
    piece_size: PieceSize,
    hashes: Vec<ChainingValue>,
}

impl fmt::Debug for PieceMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PieceMap")
            .field("id", &self.id)
            .field("size", &self.size)
            .field("piece_size", &self.piece_size)
            .field("pieces", &self.hashes.len())
            .finish()
    }
}

/// Checks the size fits the index space and returns the piece count.
fn checked_count(size: u64, piece_size: PieceSize) -> Result<u32, MapError> {
    u32::try_from(piece_size.piece_count(size)).map_err(|_| MapError::TooManyPieces { size })
}

/// Largest power of two strictly less than `n` (n >= 2): the number of pieces in the
/// left subtree of a node over `n` pieces (BLAKE3's `left_subtree_len`, counted in
/// pieces, which holds because pieces are power-of-two aligned subtrees).
fn left_len(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// Chaining value of the (non-root) subtree over `cvs` (at least one).
fn subtree_cv(cvs: &[ChainingValue]) -> ChainingValue {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let k = left_len(cvs.len());
    merge_subtrees_non_root(&subtree_cv(&cvs[..k]), &subtree_cv(&cvs[k..]), Mode::Hash)
}

/// Root hash of a content whose piece hashes are `hashes`.
fn root_of(hashes: &[ChainingValue]) -> ContentId {
    match hashes.len() {
        0 => ContentId::of_bytes(b""),
        // One piece: its hash is already the root hash.
        1 => ContentId::from_bytes(hashes[0]),
        n => {
            let k = left_len(n);
            let root = merge_subtrees_root(
                &subtree_cv(&hashes[..k]),
                &subtree_cv(&hashes[k..]),
                Mode::Hash,
            );
            root.into()
        }
    }
}

/// Hash of one piece as stored in a map: a chaining value, or the root hash for
/// single-piece content.
fn piece_hash(data: &[u8], offset: u64, single: bool) -> ChainingValue {
    if single {
        *blake3::hash(data).as_bytes()
    } else {
        let mut h = blake3::Hasher::new();
        h.set_input_offset(offset);
        h.update(data);
        h.finalize_non_root()
    }
}

impl PieceMap {
    /// Builds the map of an in-memory buffer (single-threaded).
    pub fn from_bytes(data: &[u8], piece_size: PieceSize) -> Result<Self, MapError> {
        let size = data.len() as u64;
        let count = checked_count(size, piece_size)?;
        let p = piece_size.bytes() as usize;
        let single = count == 1;
        let hashes: Vec<ChainingValue> = data
            .chunks(p)
            .enumerate()
            .map(|(i, piece)| piece_hash(piece, (i * p) as u64, single))
            .collect();
        Ok(Self {
            id: root_of(&hashes),
            size,
            piece_size,
            hashes,
        })
    }

    /// Builds the map of a file, hashing pieces on several threads, and reports progress
    /// as `progress(bytes_hashed, total_bytes)` from the calling thread after each piece.
    ///
    /// This is what `connector publish` runs: it yields the content id and the map to
    /// upload beside it in one pass over the file.
    pub fn from_file(
        path: &Path,
        piece_size: PieceSize,
        progress: impl FnMut(u64, u64),
    ) -> Result<Self, HashFileError> {
        let file = File::open(path).map_err(|source| HashFileError::Io {
            path: path.to_owned(),
            source,
        })?;
        let size = file
            .metadata()
            .map_err(|source| HashFileError::Io {
                path: path.to_owned(),
                source,
            })?
            .len();
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8);
        Self::from_reader_at(
            |off, buf| file.read_exact_at(buf, off),
            size,
            piece_size,
            threads,
            progress,
        )
        .map_err(|e| match e {
            HashFileError::Read { source, .. } => HashFileError::Io {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// Builds the map from any positioned reader (`read_at(offset, buf)` fills `buf`
    /// exactly) of `size` bytes, using up to `threads` hashing threads.
    pub fn from_reader_at<R>(
        read_at: R,
        size: u64,
        piece_size: PieceSize,
        threads: usize,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Self, HashFileError>
    where
        R: Fn(u64, &mut [u8]) -> io::Result<()> + Sync,
    {
        let count = checked_count(size, piece_size)?;
        let p = u64::from(piece_size.bytes());
        let single = count == 1;
        let piece_len = |i: u64| (size - i * p).min(p) as usize;
        let mut hashes = vec![[0u8; 32]; count as usize];
        let threads = threads.clamp(1, (count as usize).max(1));
        let next = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        let (tx, rx) = mpsc::channel::<Result<(u64, ChainingValue), (u64, io::Error)>>();
        let mut result: Result<(), (u64, io::Error)> = Ok(());
        progress(0, size);
        std::thread::scope(|s| {
            for _ in 0..threads {
                let tx = tx.clone();
                let (next, stop, read_at) = (&next, &stop, &read_at);
                s.spawn(move || {
                    let mut buf = vec![0u8; piece_len(0).max(1)];
                    loop {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= u64::from(count) {
                            return;
                        }
                        let buf = &mut buf[..piece_len(i)];
                        let msg = read_at(i * p, buf)
                            .map(|()| (i, piece_hash(buf, i * p, single)))
                            .map_err(|e| (i * p, e));
                        if tx.send(msg).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(tx);
            let mut done = 0u64;
            for msg in rx {
                match msg {
                    Ok((i, h)) => {
                        hashes[i as usize] = h;
                        done += piece_len(i) as u64;
                        progress(done, size);
                    }
                    Err(e) => {
                        stop.store(true, Ordering::Relaxed);
                        result = Err(e);
                        break;
                    }
                }
            }
        });
        result.map_err(|(offset, source)| HashFileError::Read { offset, source })?;
        Ok(Self {
            id: root_of(&hashes),
            size,
            piece_size,
            hashes,
        })
    }

    /// The content id (BLAKE3 hash of the whole content).
    pub fn id(&self) -> ContentId {
        self.id
    }

    /// Content size (bytes).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Piece size.
    pub fn piece_size(&self) -> PieceSize {
        self.piece_size
    }

    /// Number of pieces.
    pub fn piece_count(&self) -> u32 {
        self.hashes.len() as u32
    }

    /// Byte offset and length of piece `index`, or `None` if there is no such piece.
    pub fn piece_range(&self, index: u32) -> Option<(u64, u32)> {
        if index >= self.piece_count() {
            return None;
        }
        let p = u64::from(self.piece_size.bytes());
        let off = u64::from(index) * p;
        Some((off, (self.size - off).min(p) as u32))
    }

    /// Length of the encoded form (bytes).
    pub fn encoded_len(&self) -> usize {
        MAP_HEADER_LEN + self.hashes.len() * PIECE_HASH_LEN
    }

    /// Verifies one piece against this (trusted) map.
    pub fn verify_piece(&self, index: u32, data: &[u8]) -> Result<(), PieceError> {
        let (off, len) = self.piece_range(index).ok_or(PieceError::OutOfRange {
            index,
            count: self.piece_count(),
        })?;
        if data.len() != len as usize {
            return Err(PieceError::WrongLength {
                index,
                expected: len,
                found: data.len(),
            });
        }
        let single = self.piece_count() == 1;
        if piece_hash(data, off, single) != self.hashes[index as usize] {
            return Err(PieceError::HashMismatch { index });
        }
        Ok(())
    }

    /// Verifies one piece held in a shared buffer and, when it matches, returns it as a
    /// [`VerifiedPiece`]: the proof that [`crate::Cache::write_verified`] asks for, so a
    /// piece can be hashed as it arrives (on any thread) and written later without a
    /// second hash. No copy is made.
    pub fn verify_shared(&self, index: u32, data: Bytes) -> Result<VerifiedPiece, PieceError> {
        self.verify_piece(index, &data)?;
        Ok(VerifiedPiece {
            content: self.id,
            index,
            data,
        })
    }

    /// Checks that this map belongs to `id`, declares `size` bytes, and that its piece
    /// hashes combine to `id`. Maps from this crate's constructors always pass; this
    /// exists for callers that want to state the check where they rely on it.
    ///
    /// The size must come from a trusted source (the server's catalogue, which the
    /// connector fills at publish time): the BLAKE3 root commits to the size only through
    /// the last piece's hash, so a map that lies about the size by less than one piece
    /// would merge to the right root and make honest last pieces fail.
    pub fn verify_against(&self, id: &ContentId, size: u64) -> Result<(), MapError> {
        if self.size != size {
            return Err(MapError::SizeMismatch {
                expected: size,
                found: self.size,
            });
        }
        if self.id != *id {
            return Err(MapError::IdMismatch {
                expected: *id,
                found: self.id,
            });
        }
        if root_of(&self.hashes) != *id {
            return Err(MapError::RootMismatch(*id));
        }
        Ok(())
    }

    /// Encodes the map: a 48-byte header (magic `BLPM`, version 1, log2 piece size, two
    /// zero bytes, size as u64 little-endian, 32-byte content id) then 32 bytes per piece.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(self.piece_size.log2());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(self.id.as_bytes());
        for h in &self.hashes {
            out.extend_from_slice(h);
        }
        out
    }

    /// Decodes a map received from a peer and verifies it against the content id and
    /// size the caller expects (see [`PieceMap::verify_against`]). Garbage yields an
    /// error, never a panic.
    pub fn decode(bytes: &[u8], expected: &ContentId, size: u64) -> Result<Self, MapError> {
        let map = Self::parse(bytes)?;
        if map.size != size {
            return Err(MapError::SizeMismatch {
                expected: size,
                found: map.size,
            });
        }
        map.verify_against(expected, size)?;
        Ok(map)
    }

    /// Decodes a map the cache itself stored after verifying it (so its size is
    /// trusted), re-checking that its hashes still combine to `expected`.
    pub(crate) fn decode_stored(bytes: &[u8], expected: &ContentId) -> Result<Self, MapError> {
        let map = Self::parse(bytes)?;
        map.verify_against(expected, map.size)?;
        Ok(map)
    }

    /// Parses the encoding without trusting it.
    fn parse(bytes: &[u8]) -> Result<Self, MapError> {
        if bytes.len() < MAP_HEADER_LEN {
            return Err(MapError::TooShort(bytes.len()));
        }
        if &bytes[0..4] != MAGIC {
            return Err(MapError::BadMagic);
        }
        if bytes[4] != VERSION {
            return Err(MapError::UnsupportedVersion(bytes[4]));
        }
        let piece_size = PieceSize::from_log2(bytes[5])?;
        if bytes[6..8] != [0, 0] {
            return Err(MapError::BadHeader);
        }
        let size = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let id = ContentId::from_bytes(bytes[16..48].try_into().expect("32 bytes"));
        let count = checked_count(size, piece_size)?;
        let expected_len = MAP_HEADER_LEN as u64 + u64::from(count) * PIECE_HASH_LEN as u64;
        if bytes.len() as u64 != expected_len {
            return Err(MapError::WrongLength {
                expected: expected_len,
                found: bytes.len(),
            });
        }
        let hashes = bytes[MAP_HEADER_LEN..]
            .chunks_exact(PIECE_HASH_LEN)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect();
        Ok(Self {
            id,
            size,
            piece_size,
            hashes,
        })
    }
}

/// Why hashing a file failed.
#[derive(Debug, thiserror::Error)]
pub enum HashFileError {
    /// Reading the file failed.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file being hashed.
        path: std::path::PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Reading from a positioned reader failed.
    #[error("cannot read the content at byte offset {offset}: {source}")]
    Read {
        /// Offset of the piece being read (bytes).
        offset: u64,
        /// The underlying error.
        source: io::Error,
    },
    /// The file cannot be split into pieces of the requested size.
    #[error(transparent)]
    Map(#[from] MapError),
}

/// Computes the content id of a file (its BLAKE3 hash), reading it on several threads and
/// reporting `progress(bytes_hashed, total_bytes)` after every piece. Use
/// [`PieceMap::from_file`] instead when the piece map is wanted too (it costs the same).
pub fn hash_file(path: &Path, progress: impl FnMut(u64, u64)) -> Result<ContentId, HashFileError> {
    PieceMap::from_file(path, DEFAULT_PIECE_SIZE, progress).map(|m| m.id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(seed);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn ps(bytes: u32) -> PieceSize {
        PieceSize::new(bytes).unwrap()
    }

    #[test]
    fn left_len_is_largest_power_of_two_below() {
        for n in 2..=1000usize {
            let k = left_len(n);
            assert!(k.is_power_of_two() && k < n && 2 * k >= n, "n={n} k={k}");
        }
    }

    #[test]
    fn piece_size_bounds() {
        assert!(PieceSize::new(MIN_PIECE_SIZE).is_ok());
        assert!(PieceSize::new(MAX_PIECE_SIZE).is_ok());
        assert!(PieceSize::new(MIN_PIECE_SIZE / 2).is_err());
        assert!(PieceSize::new(MAX_PIECE_SIZE * 2).is_err());
        assert!(PieceSize::new(3 * 16 * 1024).is_err());
        assert_eq!(DEFAULT_PIECE_SIZE.bytes(), 1 << 20);
    }

    #[test]
    fn root_matches_blake3_at_edge_sizes() {
        let p = MIN_PIECE_SIZE as usize;
        for len in [
            0,
            1,
            1024,
            1025,
            p - 1,
            p,
            p + 1,
            2 * p,
            3 * p - 7,
            3 * p,
            4 * p + 1,
            7 * p,
            8 * p,
            9 * p + 100,
        ] {
            let d = data(len, 1);
            let map = PieceMap::from_bytes(&d, ps(MIN_PIECE_SIZE)).unwrap();
            assert_eq!(map.id(), ContentId::of_bytes(&d), "len {len}");
            assert_eq!(
                u64::from(map.piece_count()),
                (len as u64).div_ceil(p as u64)
            );
            for i in 0..map.piece_count() {
                let (off, l) = map.piece_range(i).unwrap();
                map.verify_piece(i, &d[off as usize..off as usize + l as usize])
                    .unwrap();
            }
            let enc = map.encode();
            assert_eq!(enc.len(), map.encoded_len());
            assert_eq!(PieceMap::decode(&enc, &map.id(), map.size()).unwrap(), map);
        }
    }

    #[test]
    fn threaded_reader_matches_in_memory() {
        let d = data(10 * MIN_PIECE_SIZE as usize + 333, 2);
        let mem = PieceMap::from_bytes(&d, ps(MIN_PIECE_SIZE)).unwrap();
        let mut last = (0, 0);
        let calls = std::cell::Cell::new(0);
        let threaded = PieceMap::from_reader_at(
            |off, buf| {
                buf.copy_from_slice(&d[off as usize..off as usize + buf.len()]);
                Ok(())
            },
            d.len() as u64,
            ps(MIN_PIECE_SIZE),
            3,
            |done, total| {
                assert!(done >= last.0, "progress never goes back");
                last = (done, total);
                calls.set(calls.get() + 1);
            },
        )
        .unwrap();
        assert_eq!(threaded, mem);
        assert_eq!(last, (d.len() as u64, d.len() as u64));
        assert_eq!(calls.get(), 12, "one initial call plus one per piece");
    }

    #[test]
    fn reader_error_is_reported() {
        let err = PieceMap::from_reader_at(
            |off, _buf| {
                if off >= 2 * u64::from(MIN_PIECE_SIZE) {
                    Err(io::Error::other("disk gone"))
                } else {
                    Ok(())
                }
            },
            5 * u64::from(MIN_PIECE_SIZE),
            ps(MIN_PIECE_SIZE),
            2,
            |_, _| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("disk gone"), "{err}");
    }

    #[test]
    fn hash_file_matches_blake3() {
        let d = data(3 * (1 << 20) + 12345, 3);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, &d).unwrap();
        let mut last = 0;
        let id = hash_file(f.path(), |done, _| last = done).unwrap();
        assert_eq!(id, ContentId::of_bytes(&d));
        assert_eq!(last, d.len() as u64);
        let missing = hash_file(Path::new("/nonexistent/branchline"), |_, _| {}).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/branchline"));
    }

    #[test]
    fn forged_map_is_rejected() {
        let d = data(5 * MIN_PIECE_SIZE as usize, 4);
        let map = PieceMap::from_bytes(&d, ps(MIN_PIECE_SIZE)).unwrap();
        let mut enc = map.encode();
        let last = enc.len() - 1;
        enc[last] ^= 1;
        assert_eq!(
            PieceMap::decode(&enc, &map.id(), map.size()),
            Err(MapError::RootMismatch(map.id()))
        );
        let other = ContentId::of_bytes(b"other");
        assert!(matches!(
            PieceMap::decode(&map.encode(), &other, map.size()),
            Err(MapError::IdMismatch { .. })
        ));
        // Same id, but hashes recomputed at a different (claimed) piece size: rejected
        // because the header's piece size no longer matches the hash count.
        let mut enc = map.encode();
        enc[5] += 1;
        assert!(matches!(
            PieceMap::decode(&enc, &map.id(), map.size()),
            Err(MapError::WrongLength { .. })
        ));
    }

    #[test]
    fn a_lying_size_is_rejected() {
        // Claim a size one byte shorter: same piece count, same hashes, so the tree still
        // merges to the right root. Only the trusted size catches it.
        let d = data(3 * MIN_PIECE_SIZE as usize + 10, 5);
        let map = PieceMap::from_bytes(&d, ps(MIN_PIECE_SIZE)).unwrap();
        let mut enc = map.encode();
        enc[8..16].copy_from_slice(&(d.len() as u64 - 1).to_le_bytes());
        assert_eq!(
            PieceMap::decode(&enc, &map.id(), map.size()),
            Err(MapError::SizeMismatch {
                expected: map.size(),
                found: map.size() - 1
            })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A single flipped bit anywhere in any piece is caught.
        #[test]
        fn flipped_bit_is_caught(
            len in 1usize..(6 * MIN_PIECE_SIZE as usize),
            piece_pick in any::<prop::sample::Index>(),
            byte_pick in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let d = data(len, 6);
            let map = PieceMap::from_bytes(&d, ps(MIN_PIECE_SIZE)).unwrap();
            let i = piece_pick.index(map.piece_count() as usize) as u32;
            let (off, l) = map.piece_range(i).unwrap();
            let mut piece = d[off as usize..off as usize + l as usize].to_vec();
            prop_assert!(map.verify_piece(i, &piece).is_ok());
            let b = byte_pick.index(piece.len());
            piece[b] ^= 1 << bit;
            prop_assert_eq!(map.verify_piece(i, &piece), Err(PieceError::HashMismatch { index: i }));
        }

        /// For any size and piece size, the map's root is the standard BLAKE3 hash and
        /// every piece verifies in place.
        #[test]
        fn root_is_blake3_for_any_size(len in 0usize..200_000, log2 in 14u8..=16, seed in any::<u8>()) {
            let d = data(len, seed);
            let map = PieceMap::from_bytes(&d, PieceSize::from_log2(log2).unwrap()).unwrap();
            prop_assert_eq!(map.id(), ContentId::of_bytes(&d));
            for i in 0..map.piece_count() {
                let (off, l) = map.piece_range(i).unwrap();
                prop_assert!(map.verify_piece(i, &d[off as usize..off as usize + l as usize]).is_ok());
            }
        }

        /// A piece presented under another index (same length) is caught.
        #[test]
        fn misplaced_piece_is_caught(n in 3usize..8) {
            let d = data(n * MIN_PIECE_SIZE as usize, 7);
            let map = PieceMap::from_bytes(&d, ps(MIN_PIECE_SIZE)).unwrap();
            let p = MIN_PIECE_SIZE as usize;
            prop_assert!(map.verify_piece(1, &d[0..p]).is_err());
        }

        /// The decoder never panics on garbage, and anything it accepts re-encodes to the
        /// same bytes.
        #[test]
        fn decode_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), size in any::<u64>()) {
            let id = ContentId::of_bytes(&bytes);
            if let Ok(m) = PieceMap::decode(&bytes, &id, size) {
                prop_assert_eq!(m.encode(), bytes);
            }
        }

        /// Well-formed headers with arbitrary fields and tails never panic the decoder
        /// (this reaches the length and tree checks that pure garbage does not).
        #[test]
        fn decode_structured_garbage(
            log2 in any::<u8>(),
            size in prop_oneof![0u64..200_000, any::<u64>()],
            id in proptest::array::uniform32(any::<u8>()),
            tail in proptest::collection::vec(any::<u8>(), 0..700),
        ) {
            let mut enc = Vec::new();
            enc.extend_from_slice(MAGIC);
            enc.push(VERSION);
            enc.push(log2);
            enc.extend_from_slice(&[0, 0]);
            enc.extend_from_slice(&size.to_le_bytes());
            enc.extend_from_slice(&id);
            enc.extend_from_slice(&tail);
            let id = ContentId::from_bytes(id);
            if let Ok(m) = PieceMap::decode(&enc, &id, size) {
                // Accepted only if the hashes really merge to the id.
                prop_assert_eq!(root_of(&m.hashes), id);
            }
            let _ = PieceMap::decode_stored(&enc, &id);
        }

        /// Mutating a valid encoding anywhere is either rejected or (for the size field
        /// only) yields a map that still names the same content.
        #[test]
        fn decode_mutated_map(len in 0usize..(5 * MIN_PIECE_SIZE as usize), pos in any::<prop::sample::Index>(), val in any::<u8>()) {
            let d = data(len, 8);
            let map = PieceMap::from_bytes(&d, ps(MIN_PIECE_SIZE)).unwrap();
            let mut enc = map.encode();
            let at = pos.index(enc.len());
            enc[at] = val;
            let res = PieceMap::decode(&enc, &map.id(), map.size());
            match res {
                Ok(m) => {
                    prop_assert!(enc == map.encode() || at == 5, "accepted a change at byte {}", at);
                    prop_assert_eq!(m.id(), map.id());
                    prop_assert_eq!(m.size(), map.size());
                    for i in 0..m.piece_count() {
                        let (off, l) = m.piece_range(i).unwrap();
                        prop_assert!(m.verify_piece(i, &d[off as usize..(off + u64::from(l)) as usize]).is_ok());
                    }
                }
                Err(_) => prop_assert!(enc != map.encode()),
            }
        }
    }
}
