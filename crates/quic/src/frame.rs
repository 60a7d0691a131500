//! Framing of large messages on a QUIC stream (pure: no I/O).
//!
//! A frame is a 5-byte header followed by the payload:
//!
//! ```text
//! +--------+----------------------+----------------------+
//! | kind   | length (u32, BE)     | payload (length B)   |
//! | 1 byte | 4 bytes              |                      |
//! +--------+----------------------+----------------------+
//! ```
//!
//! One request/response uses one bidirectional stream: the requester writes one
//! `Request` frame and finishes its side; the responder writes one `Response`
//! frame (the handler's bytes) or one `Error` frame (a UTF-8 reason) and finishes.
//! The payload is opaque here: `branchline-wire` defines what is inside.

use thiserror::Error;

/// Header length, in bytes.
pub const HEADER_LEN: usize = 5;

/// Default largest payload accepted, in bytes (64 MiB).
pub const DEFAULT_MAX_PAYLOAD: u32 = 64 * 1024 * 1024;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A request payload.
    Request = 1,
    /// A successful response payload.
    Response = 2,
    /// The responder refused or failed; payload is a UTF-8 reason.
    Error = 3,
}

impl FrameKind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Request),
            2 => Some(Self::Response),
            3 => Some(Self::Error),
            _ => None,
        }
    }
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Frame kind.
    pub kind: FrameKind,
    /// Payload length, in bytes.
    pub len: u32,
}

/// A frame header is not acceptable.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Unknown kind byte: the peer speaks another protocol version.
    #[error("unknown frame kind {0}; the peer speaks another protocol version")]
    UnknownKind(u8),
    /// The announced payload is larger than allowed.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced payload length, in bytes.
        len: u32,
        /// The limit, in bytes.
        max: u32,
    },
}

impl FrameHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = self.kind as u8;
        out[1..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    /// Decodes a header, refusing payloads longer than `max_payload` bytes.
    pub fn decode(bytes: [u8; HEADER_LEN], max_payload: u32) -> Result<Self, FrameError> {
        let kind = FrameKind::from_byte(bytes[0]).ok_or(FrameError::UnknownKind(bytes[0]))?;
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        if len > max_payload {
            return Err(FrameError::TooLarge {
                len,
                max: max_payload,
            });
        }
        Ok(Self { kind, len })
    }
}

/// Encodes a whole frame into one buffer. Fails if `payload` exceeds
/// `max_payload` bytes (or `u32::MAX`).
pub fn encode_frame(
    kind: FrameKind,
    payload: &[u8],
    max_payload: u32,
) -> Result<Vec<u8>, FrameError> {
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge {
        len: u32::MAX,
        max: max_payload,
    })?;
    if len > max_payload {
        return Err(FrameError::TooLarge {
            len,
            max: max_payload,
        });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&FrameHeader { kind, len }.encode());
    out.extend_from_slice(payload);
    Ok(out)
}

/// A frame decoded from a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The header.
    pub header: FrameHeader,
    /// The payload (`header.len` bytes).
    pub payload: &'a [u8],
    /// Bytes of the buffer the frame took, header included.
    pub consumed: usize,
}

/// Decodes one frame at the start of `buf`. Returns `Ok(None)` if `buf` holds
/// only part of a frame.
pub fn decode_frame(buf: &[u8], max_payload: u32) -> Result<Option<Frame<'_>>, FrameError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = FrameHeader::decode(*header, max_payload)?;
    let end = HEADER_LEN + header.len as usize;
    match buf.get(HEADER_LEN..end) {
        Some(payload) => Ok(Some(Frame {
            header,
            payload,
            consumed: end,
        })),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let f = encode_frame(FrameKind::Response, b"hello", 10).unwrap();
        assert_eq!(f, [2, 0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']);
        let Frame {
            header: h,
            payload: p,
            consumed: n,
        } = decode_frame(&f, 10).unwrap().unwrap();
        assert_eq!(
            (h.kind, h.len, p, n),
            (FrameKind::Response, 5, &b"hello"[..], 10)
        );
    }

    #[test]
    fn limits_and_kinds_are_enforced() {
        assert_eq!(
            encode_frame(FrameKind::Request, &[0; 11], 10),
            Err(FrameError::TooLarge { len: 11, max: 10 })
        );
        assert_eq!(
            FrameHeader::decode([1, 0, 0, 0, 11], 10),
            Err(FrameError::TooLarge { len: 11, max: 10 })
        );
        assert_eq!(
            FrameHeader::decode([0, 0, 0, 0, 0], 10),
            Err(FrameError::UnknownKind(0))
        );
        assert_eq!(
            FrameHeader::decode([4, 0, 0, 0, 0], 10),
            Err(FrameError::UnknownKind(4))
        );
        assert_eq!(decode_frame(&[1, 0, 0], 10), Ok(None));
        assert_eq!(decode_frame(&[1, 0, 0, 0, 3, 1, 2], 10), Ok(None));
    }

    fn kind() -> impl Strategy<Value = FrameKind> {
        prop_oneof![
            Just(FrameKind::Request),
            Just(FrameKind::Response),
            Just(FrameKind::Error)
        ]
    }

    proptest! {
        #[test]
        fn decoder_never_panics_and_respects_limit(
            buf in proptest::collection::vec(any::<u8>(), 0..64),
            max in 0u32..100,
        ) {
            match decode_frame(&buf, max) {
                Ok(Some(Frame { header: h, payload, consumed: n })) => {
                    prop_assert!(h.len <= max);
                    prop_assert_eq!(payload.len(), h.len as usize);
                    prop_assert_eq!(n, HEADER_LEN + payload.len());
                    prop_assert!(n <= buf.len());
                }
                Ok(None) => prop_assert!(buf.len() < HEADER_LEN
                    || buf.len() < HEADER_LEN + u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize),
                Err(FrameError::TooLarge { len, max: m }) => {
                    prop_assert!(len > m);
                    prop_assert_eq!(m, max);
                }
                Err(FrameError::UnknownKind(k)) => prop_assert!(!(1..=3).contains(&k)),
            }
        }

        #[test]
        fn encode_then_decode_is_identity(
            k in kind(),
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            tail in proptest::collection::vec(any::<u8>(), 0..10),
        ) {
            let mut buf = encode_frame(k, &payload, 1000).unwrap();
            let frame_len = buf.len();
            buf.extend_from_slice(&tail);
            let Frame { header: h, payload: p, consumed: n } = decode_frame(&buf, 1000).unwrap().unwrap();
            prop_assert_eq!(h.kind, k);
            prop_assert_eq!(p, &payload[..]);
            prop_assert_eq!(n, frame_len);
            // Every strict prefix is incomplete, never an error or a frame.
            for cut in 0..frame_len {
                prop_assert_eq!(decode_frame(&buf[..cut], 1000), Ok(None));
            }
        }
    }
}
