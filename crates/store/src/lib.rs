//! Branchline content store (being built).
pub mod bitfield;
pub mod cache;
pub mod error;
pub mod id;
mod ledger;
pub mod map;
pub mod storage;

pub use bitfield::Bitfield;
pub use cache::{
    Cache, CacheCap, CacheMetrics, CacheUsage, CompleteContent, ContentStatus,
    LRU_PERSIST_INTERVAL_MS, MetricsSnapshot, VerifyReport, WriteOutcome,
};
pub use error::StoreError;
pub use id::{ContentId, ParseIdError};
pub use map::{
    DEFAULT_PIECE_SIZE, HashFileError, MAX_PIECE_SIZE, MIN_PIECE_SIZE, MapError, PieceError,
    PieceMap, PieceSize, hash_file,
};
pub use storage::{DiskSpace, FsStorage, MemStorage, Storage};
