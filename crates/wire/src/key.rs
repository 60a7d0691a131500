//! The deployment key and the keys derived from it.
//!
//! A deployment has one 256-bit secret, created by the server on first start and written
//! to `deployment.key`. Nothing uses it directly: HKDF-SHA256 (RFC 5869) derives
//!
//! * the ChaCha20-Poly1305 key that seals small messages (`info = "small-messages aead"`), and
//! * a 32-bit *key id* (`info = "key id"`), sent in clear in every datagram header so a
//!   receiver can tell "sealed with another deployment's key" (answer: a key-mismatch
//!   notice, see [`crate::frame`]) from "forged or garbled" (answer: silent drop).
//!
//! The key id reveals nothing useful about the key (it is an HKDF output) and lets a
//! receiver hold more than one key at a time ([`crate::frame::open`] takes a list). Key
//! rotation rests on that: during a rotation's overlap the server accepts the previous
//! and the current key, and a client opens with both once it has fetched the new one
//! (`docs/wire.md` §3.2, "Rotation").

use std::fmt;
use std::str::FromStr;

use ring::aead::{self, CHACHA20_POLY1305, LessSafeKey, UnboundKey};
use ring::hkdf;

/// Length of the deployment secret in bytes.
pub const DEPLOYMENT_KEY_LEN: usize = 32;

/// Text prefix of a deployment key file; the version lets the format change later.
const KEY_PREFIX: &str = "blk1_";

const HKDF_SALT: &[u8] = b"branchline deployment key v1";

/// Why a deployment key could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyParseError {
    /// The text (after trimming white space) does not start with `blk1_`.
    #[error(
        "a deployment key starts with `{KEY_PREFIX}`; this text does not (is it the right file?)"
    )]
    MissingPrefix,
    #[error(
        "a deployment key has {expected} hex digits after `{KEY_PREFIX}`, this one has {found}"
    )]
    /// The text after `blk1_` is not 64 characters long.
    WrongLength {
        /// Hex digits a key has (64).
        expected: usize,
        /// Characters found after the prefix.
        found: usize,
    },
    #[error("a deployment key is hexadecimal; found {0:?}")]
    /// This character after the prefix is not a hex digit (either case is accepted).
    NotHex(char),
}

/// The deployment's shared secret. `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct DeploymentKey([u8; DEPLOYMENT_KEY_LEN]);

impl DeploymentKey {
    /// Wraps raw key bytes (the caller supplies randomness; see [`Self::to_text`]).
    pub fn from_bytes(bytes: [u8; DEPLOYMENT_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw secret, for deriving further keys (e.g. the QUIC CA's protection).
    pub fn as_bytes(&self) -> &[u8; DEPLOYMENT_KEY_LEN] {
        &self.0
    }

    /// The file and copy-paste form: `blk1_` followed by 64 lowercase hex digits.
    pub fn to_text(&self) -> String {
        format!("{KEY_PREFIX}{}", hex::encode(self.0))
    }

    /// A fingerprint to show people instead of the key: 128 bits derived with HKDF
    /// (`info = "fingerprint"`), as 8 groups of 4 hex digits. It identifies the key (two
    /// files hold the same key when their fingerprints agree) and reveals nothing of it.
    pub fn fingerprint(&self) -> String {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(&self.0);
        let mut fp = [0u8; 16];
        fill(&prk, b"fingerprint", &mut fp);
        fp.chunks(2).map(hex::encode).collect::<Vec<_>>().join(":")
    }

    /// Derives the keys used on the wire.
    pub fn derive(&self) -> SealingKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(&self.0);
        let mut aead_key = [0u8; 32];
        fill(&prk, b"small-messages aead", &mut aead_key);
        let mut id = [0u8; 4];
        fill(&prk, b"key id", &mut id);
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &aead_key)
            .expect("a 32-byte key is valid for ChaCha20-Poly1305");
        SealingKey {
            id: KeyId(u32::from_be_bytes(id)),
            aead: LessSafeKey::new(unbound),
        }
    }
}

fn fill(prk: &hkdf::Prk, info: &[u8], out: &mut [u8]) {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let infos = [info];
    prk.expand(&infos, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("HKDF-SHA256 output of at most 255*32 bytes is always possible");
}

impl FromStr for DeploymentKey {
    type Err = KeyParseError;

    /// Parses the text form; surrounding white space is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s
            .trim()
            .strip_prefix(KEY_PREFIX)
            .ok_or(KeyParseError::MissingPrefix)?;
        let digits: Vec<char> = hex.chars().collect();
        if digits.len() != 2 * DEPLOYMENT_KEY_LEN {
            return Err(KeyParseError::WrongLength {
                expected: 2 * DEPLOYMENT_KEY_LEN,
                found: digits.len(),
            });
        }
        let mut out = [0u8; DEPLOYMENT_KEY_LEN];
        for (i, pair) in digits.chunks(2).enumerate() {
            let hi = pair[0].to_digit(16).ok_or(KeyParseError::NotHex(pair[0]))?;
            let lo = pair[1].to_digit(16).ok_or(KeyParseError::NotHex(pair[1]))?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Ok(Self(out))
    }
}

impl fmt::Debug for DeploymentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeploymentKey({})", self.derive().id())
    }
}

/// Public 32-bit identifier of a deployment key, carried in clear in every datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyId(pub u32);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// The AEAD key for small messages plus its id.
pub struct SealingKey {
    id: KeyId,
    aead: LessSafeKey,
}

impl SealingKey {
    /// The id of the deployment key this was derived from, as sent in datagram headers.
    pub fn id(&self) -> KeyId {
        self.id
    }

    pub(crate) fn seal(&self, nonce: [u8; 12], aad: &[u8], in_out: &mut Vec<u8>) {
        self.aead
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                in_out,
            )
            .expect("small messages are far below ChaCha20-Poly1305's length limit");
    }

    pub(crate) fn open<'a>(
        &self,
        nonce: [u8; 12],
        aad: &[u8],
        in_out: &'a mut [u8],
    ) -> Option<&'a mut [u8]> {
        self.aead
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                in_out,
            )
            .ok()
            .map(|plain| &mut plain[..])
    }
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealingKey({})", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_identifies_the_key_without_showing_it() {
        let k = DeploymentKey::from_bytes([7; 32]);
        let fp = k.fingerprint();
        assert_eq!(fp.len(), 8 * 4 + 7, "{fp}");
        assert_eq!(fp, DeploymentKey::from_bytes([7; 32]).fingerprint());
        assert_ne!(fp, DeploymentKey::from_bytes([8; 32]).fingerprint());
        assert!(!k.to_text().contains(&fp.replace(':', "")[..8]));
    }

    #[test]
    fn text_round_trip() {
        let k = DeploymentKey::from_bytes([7u8; 32]);
        let t = k.to_text();
        assert!(t.starts_with("blk1_"));
        assert_eq!(t.len(), 5 + 64);
        assert_eq!(t.parse::<DeploymentKey>().unwrap(), k);
        assert_eq!(format!(" {t}\n").parse::<DeploymentKey>().unwrap(), k);
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        assert_eq!(
            "hello".parse::<DeploymentKey>(),
            Err(KeyParseError::MissingPrefix)
        );
        assert_eq!(
            "blk1_abcd".parse::<DeploymentKey>(),
            Err(KeyParseError::WrongLength {
                expected: 64,
                found: 4
            })
        );
        let bad = format!("blk1_{}", "g".repeat(64));
        assert_eq!(
            bad.parse::<DeploymentKey>(),
            Err(KeyParseError::NotHex('g'))
        );
    }

    #[test]
    fn different_keys_have_different_ids_and_debug_hides_secret() {
        let a = DeploymentKey::from_bytes([1u8; 32]);
        let b = DeploymentKey::from_bytes([2u8; 32]);
        assert_ne!(a.derive().id(), b.derive().id());
        assert_eq!(a.derive().id(), a.derive().id());
        assert!(!format!("{a:?}").contains("0101"));
    }
}
