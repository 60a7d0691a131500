//! Wire form of content requests and responses (pure: no I/O).
//!
//! One bidirectional stream per request. The requester writes one request and
//! finishes its side; the first byte says which kind it is, and with it the
//! request's length:
//!
//! | first byte | kind | length |
//! |---|---|---|
//! | `0x01` ([`PIECE_PROTOCOL_VERSION`]) | piece request ([`PieceRequest`]) | 45 bytes ([`REQUEST_LEN`]) |
//! | `0x02` ([`HAVE_QUERY_KIND`]) | have query ([`HaveQuery`]) | 33 bytes ([`HAVE_QUERY_LEN`]) |
//!
//! Any other first byte is refused with `BadRequest`; a request of the wrong
//! length for its first byte, or with bytes after it, likewise.
//!
//! **Piece request**: (part of) one piece.
//!
//! ```text
//! +---------+-------------------+--------------+--------------+--------------+
//! | version | content id        | piece index  | offset       | length       |
//! | 0x01    | 32 bytes (BLAKE3) | u32 BE       | u32 BE       | u32 BE       |
//! +---------+-------------------+--------------+--------------+--------------+
//! ```
//!
//! `offset` and `length` select bytes within the piece, in bytes; `length` 0 means
//! "to the end of the piece".
//!
//! **Have query**: which pieces of a content the responder holds, so peers (the
//! clients of one office) learn each other's holdings from each other rather than
//! from the server.
//!
//! ```text
//! +------+-------------------+
//! | kind | content id        |
//! | 0x02 | 32 bytes (BLAKE3) |
//! +------+-------------------+
//! ```
//!
//! The responder answers either kind with a 5-byte header, then exactly `length`
//! bytes, and finishes:
//!
//! ```text
//! +--------+----------------------+----------------------------------------+
//! | status | length (u32, BE)     | data, bitfield (Ok) or reason (else)    |
//! +--------+----------------------+----------------------------------------+
//! ```
//!
//! For a piece request, Ok carries the selected bytes of the piece. For a have
//! query, Ok carries the responder's bitfield of *verified* pieces of the content
//! at the time of the answer, in the content store's byte form
//! (`branchline_store::Bitfield::as_bytes`: bit `i` in byte `i / 8` at mask
//! `1 << (i % 8)`, `ceil(piece_count / 8)` bytes, bits past the last piece zero).
//! A responder MUST answer NotFound (length 0) when it holds no verified piece of
//! the content, MUST NOT send a bitfield longer than [`MAX_HAVE_LEN`] bytes
//! (it answers Unavailable instead), and MUST NOT set a bit for a piece it
//! would not serve. A requester MUST refuse a longer bitfield unread, and MUST
//! check the length against the piece count it knows from the piece map before
//! using the bits. The bitfield is a hint: a piece it names may be gone by the
//! time it is asked for (NotFound then).
use thiserror::Error;

/// Version byte of piece requests (their first byte).
pub const PIECE_PROTOCOL_VERSION: u8 = 1;
/// Length of an encoded piece request, in bytes.
pub const REQUEST_LEN: usize = 1 + 32 + 4 + 4 + 4;
/// First byte of a have query.
pub const HAVE_QUERY_KIND: u8 = 2;
/// Length of an encoded have query, in bytes.
pub const HAVE_QUERY_LEN: usize = 1 + 32;
/// Length of the longest request of any kind, in bytes.
pub const MAX_REQUEST_LEN: usize = REQUEST_LEN;
/// Largest bitfield in a have response, in bytes: 2^20 pieces (1 TiB of content
/// in 1 MiB pieces), 128 KiB.
pub const MAX_HAVE_LEN: u32 = (1 << 20) / 8;
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
    /// Unknown request kind (first byte).
    #[error(
        "unknown request kind {0:#04x}; this node answers piece requests \
         ({PIECE_PROTOCOL_VERSION:#04x}) and have queries ({HAVE_QUERY_KIND:#04x})"
    )]
    UnknownKind(u8),
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

/// A have query: which pieces of `content` does the peer hold?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HaveQuery {
    /// The content's BLAKE3 hash.
    pub content: [u8; 32],
}

impl HaveQuery {
    /// Encodes the query.
    pub fn encode(&self) -> [u8; HAVE_QUERY_LEN] {
        let mut out = [0u8; HAVE_QUERY_LEN];
        out[0] = HAVE_QUERY_KIND;
        out[1..].copy_from_slice(&self.content);
        out
    }

    /// Decodes a query.
    pub fn decode(bytes: &[u8]) -> Result<Self, PieceWireError> {
        let b: &[u8; HAVE_QUERY_LEN] = bytes
            .try_into()
            .map_err(|_| PieceWireError::BadLength(bytes.len()))?;
        if b[0] != HAVE_QUERY_KIND {
            return Err(PieceWireError::UnknownKind(b[0]));
        }
        let mut content = [0u8; 32];
        content.copy_from_slice(&b[1..]);
        Ok(Self { content })
    }
}

/// Any request on the content port, told apart by its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Request {
    /// Bytes of a piece.
    Piece(PieceRequest),
    /// The bitfield of a content.
    Have(HaveQuery),
}

impl Request {
    /// Length of the request that starts with `first`, or `None` if no request
    /// kind starts with it (the responder then refuses without reading more).
    pub fn len_for_first_byte(first: u8) -> Option<usize> {
        match first {
            PIECE_PROTOCOL_VERSION => Some(REQUEST_LEN),
            HAVE_QUERY_KIND => Some(HAVE_QUERY_LEN),
            _ => None,
        }
    }

    /// Decodes a whole request.
    pub fn decode(bytes: &[u8]) -> Result<Self, PieceWireError> {
        match bytes.first() {
            None => Err(PieceWireError::BadLength(0)),
            Some(&PIECE_PROTOCOL_VERSION) => PieceRequest::decode(bytes).map(Self::Piece),
            Some(&HAVE_QUERY_KIND) => HaveQuery::decode(bytes).map(Self::Have),
            Some(&other) => Err(PieceWireError::UnknownKind(other)),
        }
    }

    /// Encodes the request.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Piece(r) => r.encode().to_vec(),
            Self::Have(q) => q.encode().to_vec(),
        }
    }
}

/// Outcome of a request, first byte of the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceStatus {
    /// Data follows.
    Ok = 0,
    /// This node does not hold the piece (for a have query: no verified piece of
    /// the content): ask another peer.
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
        fn piece_request_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            match PieceRequest::decode(&bytes) {
                Ok(req) => prop_assert_eq!(&req.encode()[..], &bytes[..]),
                Err(PieceWireError::BadLength(n)) => prop_assert!(n != REQUEST_LEN),
                Err(PieceWireError::BadVersion(v)) => prop_assert!(v != PIECE_PROTOCOL_VERSION),
                Err(PieceWireError::BadStatus(_) | PieceWireError::UnknownKind(_)) => {
                    prop_assert!(false, "piece requests have a version, not a kind or status")
                }
            }
        }

        #[test]
        fn have_query_round_trips(content in any::<[u8; 32]>()) {
            let q = HaveQuery { content };
            prop_assert_eq!(HaveQuery::decode(&q.encode()), Ok(q));
            prop_assert_eq!(Request::decode(&q.encode()), Ok(Request::Have(q)));
            prop_assert_eq!(Request::len_for_first_byte(q.encode()[0]), Some(HAVE_QUERY_LEN));
        }

        #[test]
        fn have_query_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            match HaveQuery::decode(&bytes) {
                Ok(q) => prop_assert_eq!(&q.encode()[..], &bytes[..]),
                Err(PieceWireError::BadLength(n)) => prop_assert!(n != HAVE_QUERY_LEN),
                Err(PieceWireError::UnknownKind(k)) => prop_assert!(k != HAVE_QUERY_KIND),
                Err(e) => prop_assert!(false, "unexpected {e:?}"),
            }
        }

        /// Any bytes, including ones that start like a valid request: the decoder
        /// never panics, accepts exactly the encodings, and agrees with
        /// `len_for_first_byte` (what the responder reads before decoding).
        #[test]
        fn any_request_decoder_never_panics(
            first in prop_oneof![Just(1u8), Just(2u8), any::<u8>()],
            rest in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let mut bytes = vec![first];
            bytes.extend_from_slice(&rest);
            for bytes in [&bytes[..], &[][..]] {
                match Request::decode(bytes) {
                    Ok(req) => {
                        prop_assert_eq!(req.encode(), bytes.to_vec());
                        prop_assert_eq!(Request::len_for_first_byte(bytes[0]), Some(bytes.len()));
                    }
                    Err(PieceWireError::BadLength(n)) => {
                        prop_assert_eq!(n, bytes.len());
                        if let Some(&b) = bytes.first() {
                            prop_assert!(Request::len_for_first_byte(b).is_some_and(|l| l != n));
                        }
                    }
                    Err(PieceWireError::UnknownKind(k)) => {
                        prop_assert_eq!(Request::len_for_first_byte(k), None);
                    }
                    Err(e) => prop_assert!(false, "unexpected {e:?}"),
                }
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
