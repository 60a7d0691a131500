//! Errors of the scheduler.

use crate::SourceId;

/// What went wrong when calling the scheduler. Every variant is a caller mistake or bad
/// input from the network (a have-set of the wrong size); none leaves the scheduler in a
/// changed state.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SchedError {
    /// A configuration value is out of range.
    #[error("invalid scheduler configuration: {0}; fix the value or start from SchedConfig::new")]
    Config(&'static str),
    /// A piece index is not below the piece count.
    #[error(
        "piece {piece} is out of range for content of {piece_count} pieces; the piece map or the peer's message is for other content"
    )]
    PieceOutOfRange {
        /// The offending index.
        piece: u32,
        /// Pieces in the content.
        piece_count: u32,
    },
    /// A have-set covers a different number of pieces than the content.
    #[error(
        "have-set covers {got} pieces but the content has {expected}; the report is for other content or corrupt, ignore it"
    )]
    HaveLength {
        /// Pieces in the content.
        expected: u32,
        /// Pieces in the set given.
        got: u32,
    },
    /// A bitfield in byte form has the wrong length.
    #[error(
        "bitfield is {got} bytes long, expected {expected}; the report is truncated or for other content"
    )]
    BitfieldLength {
        /// Bytes expected (`ceil(pieces / 8)`).
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// A bitfield in byte form has bits set past the last piece.
    #[error("bitfield has bits set past piece {len}; the report is corrupt, ignore it")]
    BitfieldTail {
        /// Pieces the bitfield should cover.
        len: u32,
    },
    /// The source was never added (or was removed).
    #[error("source {0} is not known to this download; add it with add_source first")]
    UnknownSource(SourceId),
    /// The source is already part of this download.
    #[error("source {0} is already part of this download")]
    AlreadyAdded(SourceId),
    /// The source sent a bad piece earlier and stays banned for this content.
    #[error(
        "source {0} sent a bad piece for this content and is banned from it; do not connect to it again for this content"
    )]
    Banned(SourceId),
}
