//! Datagram framing: a 20-byte clear header, then the sealed message.
//!
//! ```text
//!  0      2    3     4          8                    20                 len-16     len
//!  +------+----+-----+----------+--------------------+---------------------+--------+
//!  | "BL" | v1 | typ | key id   | nonce (96 bits)    | ChaCha20 ciphertext | tag    |
//!  +------+----+-----+----------+--------------------+---------------------+--------+
//!  \______________ header, authenticated as AAD ____/
//! ```
//!
//! * `v1` is the framing version ([`FRAME_VERSION`]). Message evolution does not touch it:
//!   the payload is a protobuf [`Envelope`] whose unknown fields are
//!   skipped, so mixed versions interoperate.
//! * `typ` is [`FrameType::Sealed`] for every message, or [`FrameType::KeyMismatch`] for the
//!   one unauthenticated frame: a receiver that gets a well-formed datagram sealed under a
//!   key id it does not hold answers with a bare header carrying *its own* key id and the
//!   offending datagram's nonce. The sender accepts such a notice only if the nonce matches a
//!   request it has outstanding, so an off-path attacker cannot forge one, and the notice
//!   (20 bytes) is smaller than what provoked it, so it cannot be used for amplification.
//! * The nonce is random per datagram (96 bits; a collision is expected only after about
//!   2^48 datagrams under one key). The receiver's replay guard does not rely on it.
//!
//! A datagram is at most [`MAX_DATAGRAM`] bytes, so it crosses any path with a 1280-byte
//! IPv6 minimum MTU without fragmentation.

use prost::Message as _;

use crate::key::{KeyId, SealingKey};
use crate::msg::Envelope;

/// Largest datagram Branchline sends or accepts (bytes).
pub const MAX_DATAGRAM: usize = 1200;
/// Clear header length (bytes).
pub const HEADER_LEN: usize = 20;
/// Poly1305 tag length (bytes).
pub const TAG_LEN: usize = 16;
/// Largest encoded envelope that fits in one datagram (bytes).
pub const MAX_PLAINTEXT: usize = MAX_DATAGRAM - HEADER_LEN - TAG_LEN;
/// First two bytes of every Branchline datagram.
pub const MAGIC: [u8; 2] = *b"BL";
/// Framing version this code speaks.
pub const FRAME_VERSION: u8 = 1;

/// What follows the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// An AEAD-sealed [`Envelope`].
    Sealed = 1,
    /// Unauthenticated notice: "I do not hold the key you sealed with; mine has this id".
    KeyMismatch = 2,
}

/// Why a datagram was not accepted. Each variant is a counted drop reason at the receiver.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum OpenError {
    /// Longer than [`MAX_DATAGRAM`] bytes (the length is carried); drop reason `oversized`.
    #[error("datagram of {0} bytes is larger than the {MAX_DATAGRAM}-byte limit")]
    Oversized(usize),
    #[error("datagram of {0} bytes is too short to be a Branchline message")]
    /// Shorter than the header, or a sealed frame shorter than header and tag (36 bytes);
    /// drop reason `too_short`.
    TooShort(usize),
    #[error("not a Branchline datagram (bad magic)")]
    /// Bytes 0-1 are not [`MAGIC`] ("BL"); drop reason `bad_magic`.
    BadMagic,
    #[error("framing version {0} is not supported (this build speaks {FRAME_VERSION})")]
    /// Byte 2 is not [`FRAME_VERSION`] (the version found is carried); drop reason
    /// `unsupported_version`.
    UnsupportedVersion(u8),
    #[error("unknown frame type {0}")]
    /// Byte 3 is not a [`FrameType`], or a key-mismatch notice is not exactly
    /// [`HEADER_LEN`] bytes; drop reason `unknown_frame_type`.
    UnknownFrameType(u8),
    #[error("sealed with key {0}, which this node does not hold")]
    /// Sealed under a key id (carried) that none of the receiver's keys has; drop reason
    /// `wrong_key`. The receiver may answer with [`key_mismatch_notice`].
    WrongKey(KeyId),
    #[error("authentication failed (forged, garbled or truncated)")]
    /// The AEAD tag does not verify under the key the header names; drop reason
    /// `auth_failed`.
    AuthFailed,
    #[error("authenticated payload does not decode")]
    /// The plaintext authenticated but is not a protobuf [`Envelope`]; drop reason `decode`.
    Decode,
    #[error("message id 0 is reserved")]
    /// The envelope's `msg_id` is 0, which no sender may use; drop reason
    /// `zero_message_id`.
    ZeroMessageId,
}

/// Why a message could not be sealed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// The encoded envelope (length carried) is longer than [`MAX_PLAINTEXT`] bytes.
    #[error(
        "message encodes to {0} bytes, more than the {MAX_PLAINTEXT} that fit in one datagram; send it as a large message"
    )]
    TooLarge(usize),
}

/// The clear header of a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Byte 3: what follows the header.
    pub frame_type: FrameType,
    /// Bytes 4-7 (big-endian): the id of the key the datagram is sealed under, or, in a
    /// key-mismatch notice, the id of the responder's own key.
    pub key_id: KeyId,
    /// Bytes 8-19: the AEAD nonce, random per datagram; a key-mismatch notice echoes the
    /// offending datagram's nonce here.
    pub nonce: [u8; 12],
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..2].copy_from_slice(&MAGIC);
        h[2] = FRAME_VERSION;
        h[3] = self.frame_type as u8;
        h[4..8].copy_from_slice(&self.key_id.0.to_be_bytes());
        h[8..20].copy_from_slice(&self.nonce);
        h
    }

    /// Parses and checks the clear header of `datagram` (length, magic, version, type).
    pub fn parse(datagram: &[u8]) -> Result<Header, OpenError> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(OpenError::Oversized(datagram.len()));
        }
        if datagram.len() < HEADER_LEN {
            return Err(OpenError::TooShort(datagram.len()));
        }
        if datagram[0..2] != MAGIC {
            return Err(OpenError::BadMagic);
        }
        if datagram[2] != FRAME_VERSION {
            return Err(OpenError::UnsupportedVersion(datagram[2]));
        }
        let frame_type = match datagram[3] {
            1 => FrameType::Sealed,
            2 => FrameType::KeyMismatch,
            other => return Err(OpenError::UnknownFrameType(other)),
        };
        let key_id = KeyId(u32::from_be_bytes(
            datagram[4..8].try_into().expect("4 bytes"),
        ));
        let nonce: [u8; 12] = datagram[8..20].try_into().expect("12 bytes");
        let min_len = match frame_type {
            FrameType::Sealed => HEADER_LEN + TAG_LEN,
            FrameType::KeyMismatch => HEADER_LEN,
        };
        if datagram.len() < min_len {
            return Err(OpenError::TooShort(datagram.len()));
        }
        if frame_type == FrameType::KeyMismatch && datagram.len() != HEADER_LEN {
            return Err(OpenError::UnknownFrameType(datagram[3]));
        }
        Ok(Header {
            frame_type,
            key_id,
            nonce,
        })
    }
}

/// Seals `envelope` under `key` with the given random `nonce`.
pub fn seal(key: &SealingKey, nonce: [u8; 12], envelope: &Envelope) -> Result<Vec<u8>, SealError> {
    let len = envelope.encoded_len();
    if len > MAX_PLAINTEXT {
        return Err(SealError::TooLarge(len));
    }
    let header = Header {
        frame_type: FrameType::Sealed,
        key_id: key.id(),
        nonce,
    }
    .encode();
    let mut body = Vec::with_capacity(HEADER_LEN + len + TAG_LEN);
    envelope
        .encode(&mut body)
        .expect("a Vec grows as needed, encoding cannot fail");
    key.seal(nonce, &header, &mut body);
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&body);
    Ok(out)
}

/// The key-mismatch notice sent in answer to a datagram with header `offending`.
pub fn key_mismatch_notice(ours: KeyId, offending: &Header) -> [u8; HEADER_LEN] {
    Header {
        frame_type: FrameType::KeyMismatch,
        key_id: ours,
        nonce: offending.nonce,
    }
    .encode()
}

/// An accepted datagram.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// An authenticated, decoded message.
    Message {
        /// The datagram's clear header (its key id names the key that opened it).
        header: Header,
        /// The decoded message; its `msg_id` is non-zero.
        envelope: Box<Envelope>,
    },
    /// The peer does not hold our key. Unauthenticated: trust it only if `echoed_nonce`
    /// matches a request we sent.
    KeyMismatch {
        /// The id of the key the responder holds (and seals with).
        responder_key: KeyId,
        /// The nonce of the datagram the responder could not open.
        echoed_nonce: [u8; 12],
    },
}

/// Parses, authenticates and decodes one datagram with the key in `keys` whose id the
/// header names.
pub fn open(keys: &[SealingKey], datagram: &[u8]) -> Result<Incoming, OpenError> {
    let header = Header::parse(datagram)?;
    if header.frame_type == FrameType::KeyMismatch {
        return Ok(Incoming::KeyMismatch {
            responder_key: header.key_id,
            echoed_nonce: header.nonce,
        });
    }
    let key = keys
        .iter()
        .find(|k| k.id() == header.key_id)
        .ok_or(OpenError::WrongKey(header.key_id))?;
    let mut buf = datagram[HEADER_LEN..].to_vec();
    let plain = key
        .open(header.nonce, &datagram[..HEADER_LEN], &mut buf)
        .ok_or(OpenError::AuthFailed)?;
    let envelope = Envelope::decode(&plain[..]).map_err(|_| OpenError::Decode)?;
    if envelope.msg_id == 0 {
        return Err(OpenError::ZeroMessageId);
    }
    Ok(Incoming::Message {
        header,
        envelope: Box::new(envelope),
    })
}
