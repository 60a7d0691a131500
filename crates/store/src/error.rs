//! Errors of the cache.

use std::io;

use crate::id::ContentId;
use crate::map::{HashFileError, MapError, PieceError};

/// Why a cache operation failed. Each message says what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The disk holding the cache is full (ENOSPC or quota). Nothing was recorded; every
    /// verified piece already stored is kept and the download can resume later.
    #[error(
        "the disk holding the cache is full: {what} of content {id} was not stored; the download is paused with its verified pieces kept. Free disk space (or lower the cache cap), then resume"
    )]
    DiskFull {
        /// The content being written.
        id: ContentId,
        /// What was being written, e.g. "piece 7".
        what: String,
    },
    /// The content does not fit under the cap even after evicting every unpinned item.
    #[error(
        "content of {needed} bytes does not fit in the cache cap of {cap} bytes ({pinned} bytes are pinned and cannot be evicted); raise the cache cap or unpin content"
    )]
    NoRoom {
        /// Bytes the content needs (bytes).
        needed: u64,
        /// Cache cap (bytes).
        cap: u64,
        /// Bytes held by pinned content.
        pinned: u64,
    },
    /// The content is not in the cache (never begun, removed, or evicted).
    #[error("content {0} is not in the cache; start its download again")]
    UnknownContent(ContentId),
    /// A piece received from a peer failed verification. Drop the peer for this
    /// content and report it to the server.
    #[error(
        "a piece of content {id} received from a peer failed verification ({source}); nothing was stored. Drop this peer for this content and report it"
    )]
    BadPiece {
        /// The content.
        id: ContentId,
        /// What exactly failed.
        source: PieceError,
    },
    /// A stored piece no longer matches its hash (bit rot, tampering). It was discarded
    /// and will be fetched again; it was not served.
    #[error(
        "piece {index} of content {id} was corrupt on disk; it was discarded (not served) and must be fetched again. Check the disk if this repeats"
    )]
    CorruptOnDisk {
        /// The content.
        id: ContentId,
        /// The piece index.
        index: u32,
    },
    /// The piece is not (yet) in the cache.
    #[error("piece {index} of content {id} is not in the cache yet")]
    PieceMissing {
        /// The content.
        id: ContentId,
        /// The piece index.
        index: u32,
    },
    /// Another open cache (in this or another process) holds the directory.
    #[error(
        "the cache directory {0} is in use by another Branchline client; stop it or give this one its own data directory"
    )]
    InUse(String),
    /// The cap configuration is invalid.
    #[error("invalid cache cap: {0}")]
    BadCap(String),
    /// A piece map could not be built or trusted.
    #[error(transparent)]
    Map(#[from] MapError),
    /// Hashing a file for import failed.
    #[error(transparent)]
    Hash(#[from] HashFileError),
    /// The content being imported is not the content expected.
    #[error("file {path} has content id {found}, not the expected {expected}; check the file")]
    ImportMismatch {
        /// The file imported.
        path: String,
        /// The id the caller expected.
        expected: ContentId,
        /// The id of the file.
        found: ContentId,
    },
    /// Any other disk error.
    #[error(
        "cache I/O failed while {op}: {source}; check the cache directory's disk and permissions"
    )]
    Io {
        /// What the cache was doing.
        op: String,
        /// The underlying error.
        source: io::Error,
    },
}

impl StoreError {
    pub(crate) fn io(op: impl Into<String>, source: io::Error) -> Self {
        StoreError::Io {
            op: op.into(),
            source,
        }
    }

    /// True when the download should pause until disk space is freed.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. })
    }

    /// True when the peer that sent the data should be dropped for this content.
    pub fn is_peer_fault(&self) -> bool {
        matches!(self, StoreError::BadPiece { .. })
    }
}
