//! Wire form of piece requests and responses (pure: no I/O).
//!
//! One bidirectional stream per piece request. The fetcher writes a fixed-size
//! request and finishes its side:
//!
//! ```text
//! +---------+-------------------+--------------+--------------+--------------+
//! | version | content id        | piece index  | offset       | length       |
//! | 1 byte  | 32 bytes (BLAKE3) | u32 BE       | u32 BE       | u32 BE       |
//! +---------+-------------------+--------------+--------------+--------------+
//! ```
//!
//! `offset` and `length` select bytes within the piece, in bytes; `length` 0 means
//! "to the end of the piece". The server answers with a 5-byte header and then
//! streams exactly `length` bytes of data, and finishes:
//!
//! ```text
//! +--------+----------------------+---------------------------+
//! | status | length (u32, BE)     | data (Ok) or reason (else) |
//! +--------+----------------------+---------------------------+
//! ```

use thiserror::Error;

/// Version byte of piece requests.
pub const PIECE_PROTOCOL_VERSION: u8 = 1;
/// Length of an encoded request, in bytes.
pub const REQUEST_LEN: usize = 1 + 32 + 4 + 4 + 4;
/// Length of a response header, in bytes.
pub const RESPONSE_HEADER_LEN: usize = 5;

/// A request for (part of) one piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PieceRequest {
    /// The content's BLAKE3 hash.
    pub content: [u8; 32],
    /// Piece index within the content.
    pub piece: u32,
    /// First byte within the piece.
    pub offset: u32,
    /// Number of bytes; 0 means to the end of the piece.
    pub len: u32,
}

/// A request could not be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PieceWireError {
    /// Wrong request length.
    #[error("piece request of {0} bytes; expected {REQUEST_LEN}")]
    BadLength(usize),
    /// Unknown version.
    #[error("piece request version {0}; this node speaks version {PIECE_PROTOCOL_VERSION}")]
    BadVersion(u8),
    /// Unknown response status.
    #[error("unknown piece response status {0}")]
    BadStatus(u8),
}

impl PieceRequest {
    /// Encodes the request.
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut out = [0u8; REQUEST_LEN];
        out[0] = PIECE_PROTOCOL_VERSION;
        out[1..33].copy_from_slice(&self.content);
        out[33..37].copy_from_slice(&self.piece.to_be_bytes());
        out[37..41].copy_from_slice(&self.offset.to_be_bytes());
        out[41..45].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    /// Decodes a request.
    pub fn decode(bytes: &[u8]) -> Result<Self, PieceWireError> {
        let b: &[u8; REQUEST_LEN] = bytes
            .try_into()
            .map_err(|_| PieceWireError::BadLength(bytes.len()))?;
        if b[0] != PIECE_PROTOCOL_VERSION {
            return Err(PieceWireError::BadVersion(b[0]));
        }
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut content = [0u8; 32];
        content.copy_from_slice(&b[1..33]);
        Ok(Self {
            content,
            piece: u32_at(33),
            offset: u32_at(37),
            len: u32_at(41),
        })
    }

    /// The byte range `start..end` this request selects in a piece of
    /// `piece_len` bytes, or `None` if it reaches outside the piece.
    pub fn range_in(&self, piece_len: usize) -> Option<std::ops::Range<usize>> {
        let start = self.offset as usize;
        let end = if self.len == 0 {
            piece_len
        } else {
            start.checked_add(self.len as usize)?
        };
        (start <= end && end <= piece_len).then_some(start..end)
    }
}

/// Outcome of a piece request, first byte of the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceStatus {
    /// Data follows.
    Ok = 0,
    /// This node does not hold the piece: ask another peer.
    NotFound = 1,
    /// The requested range lies outside the piece.
    BadRange = 2,
    /// The node holds the piece but cannot serve it now (busy, disk error): retry
    /// later or elsewhere.
    Unavailable = 3,
    /// The request was malformed.
    BadRequest = 4,
}

impl PieceStatus {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Ok,
            1 => Self::NotFound,
            2 => Self::BadRange,
            3 => Self::Unavailable,
            4 => Self::BadRequest,
            _ => return None,
        })
    }
}

/// A response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHeader {
    /// Outcome.
    pub status: PieceStatus,
    /// Length of what follows, in bytes.
    pub len: u32,
}

impl ResponseHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; RESPONSE_HEADER_LEN] {
        let mut out = [0u8; RESPONSE_HEADER_LEN];
        out[0] = self.status as u8;
        out[1..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    /// Decodes a header (lengths are checked by the caller, who knows what it
    /// asked for).
    pub fn decode(bytes: [u8; RESPONSE_HEADER_LEN]) -> Result<Self, PieceWireError> {
        let status = PieceStatus::from_byte(bytes[0]).ok_or(PieceWireError::BadStatus(bytes[0]))?;
        Ok(Self {
            status,
            len: u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges() {
        let r = |offset, len| PieceRequest {
            content: [0; 32],
            piece: 0,
            offset,
            len,
        };
        assert_eq!(r(0, 0).range_in(10), Some(0..10));
        assert_eq!(r(4, 0).range_in(10), Some(4..10));
        assert_eq!(r(4, 6).range_in(10), Some(4..10));
        assert_eq!(r(4, 7).range_in(10), None);
        assert_eq!(r(11, 0).range_in(10), None);
        assert_eq!(r(10, 0).range_in(10), Some(10..10));
        assert_eq!(r(u32::MAX, u32::MAX).range_in(10), None);
    }

    proptest! {
        #[test]
        fn request_round_trips(content in any::<[u8; 32]>(), piece: u32, offset: u32, len: u32) {
            let req = PieceRequest { content, piece, offset, len };
            prop_assert_eq!(PieceRequest::decode(&req.encode()), Ok(req));
        }

        #[test]
        fn request_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            match PieceRequest::decode(&bytes) {
                Ok(req) => prop_assert_eq!(&req.encode()[..], &bytes[..]),
                Err(PieceWireError::BadLength(n)) => prop_assert!(n != REQUEST_LEN),
                Err(PieceWireError::BadVersion(v)) => prop_assert!(v != PIECE_PROTOCOL_VERSION),
                Err(PieceWireError::BadStatus(_)) => prop_assert!(false, "requests have no status"),
            }
        }

        #[test]
        fn response_header_decoder_never_panics(bytes in any::<[u8; RESPONSE_HEADER_LEN]>()) {
            match ResponseHeader::decode(bytes) {
                Ok(h) => prop_assert_eq!(h.encode(), bytes),
                Err(e) => prop_assert_eq!(e, PieceWireError::BadStatus(bytes[0])),
            }
        }

        #[test]
        fn range_stays_inside_piece(offset: u32, len: u32, piece_len in 0usize..1_000_000) {
            let req = PieceRequest { content: [0; 32], piece: 0, offset, len };
            if let Some(r) = req.range_in(piece_len) {
                prop_assert!(r.start <= r.end && r.end <= piece_len);
                if len != 0 { prop_assert_eq!(r.len(), len as usize); }
            }
        }
    }
}
