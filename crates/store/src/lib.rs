//! Branchline's content store: content identity, piece verification, and the client's
//! crash-safe content cache.
//!
//! # Model
//!
//! A content item is one immutable file. Its [`ContentId`] is the BLAKE3 hash of its
//! bytes (32 bytes, shown as 64 hex characters). For transfer the file is cut into
//! fixed-size **pieces** (a power of two, [`DEFAULT_PIECE_SIZE`] = 1 MiB unless the
//! publisher chose otherwise); pieces are the unit that peers request, send, store and
//! report as present.
//!
//! Because a piece size is a power of two of at least one BLAKE3 chunk group (16 KiB),
//! every piece is an aligned subtree of the BLAKE3 hash tree. Its **chaining value**
//! (the subtree hash) can be computed from the piece alone, and the chaining values of
//! all pieces merge back, level by level, into the root hash, which is the content id.
//! The [`PieceMap`] is that list of chaining values (32 bytes per piece: 32 KiB for
//! 1 GiB at 1 MiB pieces) plus the size and piece size.
//!
//! Verification happens in two steps:
//!
//! 1. The piece map is checked once against the content id (and the size from the
//!    server's catalogue) by re-merging the tree: [`PieceMap::decode`]. A map that
//!    passes is the true one unless BLAKE3 is broken.
//! 2. Each piece is then checked on its own against its entry in the map:
//!    [`PieceMap::verify_piece`] hashes the piece as a subtree at its offset and
//!    compares 32 bytes. A single flipped bit anywhere is caught.
//!
//! The [`Cache`] applies step 2 before a piece is written ([`Cache::write_piece`]),
//! again before it is served to a peer ([`Cache::read_piece`]; [`Cache::read_piece_shared`]
//! serves a piece stored in this run by [`Cache::write_pieces_shared`] from the very buffer
//! that was verified, kept in a bounded memory), and hands a file out
//! ([`Cache::open_complete`]) only when every piece was verified and durably stored.
//!
//! # Why BLAKE3 chaining values and not `bao-tree`
//!
//! `bao-tree` (the verified-streaming crate behind iroh-blobs) checks data in 16 KiB
//! chunk groups against an outboard tree, and lets any byte range be verified. We need
//! less: pieces are fixed and are scheduled whole, so one hash per piece is enough, and
//! the whole "outboard" is the piece map. Computing per-piece chaining values with
//! `blake3::hazmat` gives that with no dependency beyond `blake3` itself (which we need
//! anyway), a wire format we control and version (the map, 48 + 32·n bytes), and full
//! BLAKE3 speed (a piece is hashed with one `update` call, so BLAKE3's SIMD and the
//! multi-piece parallelism of [`PieceMap::from_file`] apply). What we give up is
//! finer-grained verification inside a piece: a lying peer can waste at most one piece
//! (1 MiB) of our bandwidth before it is caught and dropped, which is small next to the
//! cost of the connection that carried it.
//!
//! # Piece size
//!
//! Larger pieces mean fewer requests, fewer fsyncs (the cache makes each piece durable
//! before recording it) and a smaller map; smaller pieces mean finer scheduling across
//! many sources, a shorter delay before a relay (the office's RVP) can pass a piece on,
//! and less waste when a piece is bad. 1 MiB is about 8 ms on a 1 Gbit/s LAN and about
//! 1 s on a 10 Mbit/s WAN link, so pieces pipeline well through an RVP while the
//! per-piece overhead (a request, a 32-byte hash, one fsync) stays well under 1%. The
//! size is carried in the map, so a publisher can choose any power of two from
//! [`MIN_PIECE_SIZE`] (16 KiB) to [`MAX_PIECE_SIZE`] (16 MiB) without a protocol change.
//!
//! # Where the piece map comes from
//!
//! `connector publish FILE` runs [`PieceMap::from_file`] (or [`hash_file`] for just the
//! id), which computes the content id and the map in one pass with a progress callback.
//! The map is published beside the metadata; any client that has it serves it to peers
//! ([`Cache::piece_map`], [`PieceMap::encode`]); a receiver trusts it only after
//! [`PieceMap::decode`] with the id and size from the catalogue. A host that holds the
//! whole file (the origin side) can also rebuild it with [`Cache::import_file`].
//!
//! # The cache
//!
//! [`Cache`] keeps, under one directory, each content's data file, its verified map, a
//! durable bitfield of the pieces present ([`Bitfield`]), and its last use and pin flag.
//! A download reserves its full size against the cap when it begins
//! ([`Cache::begin`]), evicting least-recently-used unpinned content if needed. Pieces
//! are written then recorded, so partial downloads survive `kill -9` and restarts and no
//! verified piece is fetched twice. A full disk yields [`StoreError::DiskFull`] and a
//! paused status, never damaged data. All disk access goes through the [`Storage`]
//! trait ([`FsStorage`] in production, [`MemStorage`] with fault injection in tests and
//! simulators); time is passed in as Unix milliseconds, never read inside. `DESIGN.md`
//! in this crate gives the on-disk layout and the crash-consistency argument.
//!
//! # Example
//!
//! ```
//! use branchline_store::{Cache, CacheCap, MemStorage, PieceMap, PieceSize, WriteOutcome};
//!
//! // Publisher: id and piece map from the bytes (from a file: `PieceMap::from_file`).
//! let content = vec![7u8; 100_000];
//! let map = PieceMap::from_bytes(&content, PieceSize::new(16 * 1024)?)?;
//! let (id, size, wire) = (map.id(), map.size(), map.encode());
//!
//! // Client: trust the map only against the catalogue's id and size.
//! let map = PieceMap::decode(&wire, &id, size)?;
//! let cache = Cache::with_storage(MemStorage::new(), CacheCap::Bytes(1 << 30), 0)?;
//! cache.begin(map.clone(), 1_000)?;
//! for i in cache.have(&id).unwrap().missing().collect::<Vec<_>>() {
//!     let (off, len) = map.piece_range(i).unwrap();
//!     let piece = &content[off as usize..(off + u64::from(len)) as usize];
//!     cache.write_piece(&id, i, piece, 2_000)?; // verified before it is stored
//! }
//! assert!(cache.status(&id).unwrap().complete);
//! assert!(cache.open_complete(&id, 3_000)?.is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Cache methods block on disk I/O (each stored piece, or each batch of pieces stored
//! with [`Cache::write_pieces`], costs two fsyncs). `Cache` is
//! `Send + Sync`: share it in an `Arc` and, from async code, call it inside
//! `tokio::task::spawn_blocking`. Pieces of one or many contents can be written from many
//! threads at once.
//!
//! Sizes are in bytes and times in milliseconds since the Unix epoch throughout. The
//! crate is Unix-only because of positioned I/O (`std::os::unix::fs::FileExt`); free space
//! comes from the portable `fs4`.

pub mod bitfield;
pub mod cache;
pub mod error;
pub mod id;
mod ledger;
pub mod map;
pub mod storage;

pub use bitfield::Bitfield;
pub use cache::{
    BatchOutcome, Cache, CacheCap, CacheMetrics, CacheUsage, CompleteContent, ContentStatus,
    DEFAULT_RECENT_PIECES_BYTES, LRU_PERSIST_INTERVAL_MS, MetricsSnapshot, VerifyReport,
    WriteOutcome,
};
pub use error::StoreError;
pub use id::{ContentId, ParseIdError};
pub use map::{
    DEFAULT_PIECE_SIZE, HashFileError, MAX_PIECE_SIZE, MIN_PIECE_SIZE, MapError, PieceError,
    PieceMap, PieceSize, VerifiedPiece, hash_file,
};
pub use storage::{DiskSpace, FsStorage, MemStorage, Storage};
