//! Content identity: the 32-byte BLAKE3 hash of a file's bytes.

use std::fmt;
use std::str::FromStr;

/// Length of a [`ContentId`] in bytes (BLAKE3's default output length).
pub const ID_LEN: usize = 32;

/// Identity of one immutable content item: the BLAKE3 hash (default mode, 32 bytes) of
/// all its bytes.
///
/// Shown and parsed as 64 lowercase hexadecimal characters; parsing also accepts
/// uppercase.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId([u8; ID_LEN]);

impl ContentId {
    /// Wraps 32 raw hash bytes.
    pub const fn from_bytes(bytes: [u8; ID_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw 32 hash bytes.
    pub const fn as_bytes(&self) -> &[u8; ID_LEN] {
        &self.0
    }

    /// Hashes a whole in-memory buffer. For files use [`crate::hash_file`], which reads in
    /// pieces and reports progress.
    pub fn of_bytes(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// Lowercase hexadecimal form (64 characters).
    pub fn to_hex(&self) -> String {
        self.to_string()
    }
}

impl From<blake3::Hash> for ContentId {
    fn from(h: blake3::Hash) -> Self {
        Self(*h.as_bytes())
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentId({self})")
    }
}

/// Why a string is not a valid [`ContentId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseIdError {
    /// The string does not have exactly 64 characters.
    #[error(
        "a content id is 64 hexadecimal characters (a BLAKE3 hash), but this one has {0} characters; copy the whole id"
    )]
    WrongLength(usize),
    /// A character is not a hexadecimal digit.
    #[error(
        "a content id is hexadecimal, but character {position} is {found:?}; copy the id exactly"
    )]
    NotHex {
        /// Zero-based character position.
        position: usize,
        /// The offending character.
        found: char,
    },
}

impl FromStr for ContentId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let n = s.chars().count();
        if n != 2 * ID_LEN {
            return Err(ParseIdError::WrongLength(n));
        }
        // 64 characters; if any is multi-byte it fails the hex check below.
        let mut out = [0u8; ID_LEN];
        let mut chars = s.chars().enumerate();
        for byte in out.iter_mut() {
            let mut v = 0u8;
            for _ in 0..2 {
                let (position, c) = chars.next().expect("length checked above");
                let d = c
                    .to_digit(16)
                    .ok_or(ParseIdError::NotHex { position, found: c })?;
                v = (v << 4) | d as u8;
            }
            *byte = v;
        }
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_vector_of_empty_input() {
        // BLAKE3 of the empty input, from the BLAKE3 test vectors.
        let id = ContentId::of_bytes(b"");
        assert_eq!(
            id.to_string(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn parse_errors_are_specific() {
        assert_eq!(
            "abc".parse::<ContentId>(),
            Err(ParseIdError::WrongLength(3))
        );
        let mut s = "0".repeat(64);
        s.replace_range(10..11, "g");
        assert_eq!(
            s.parse::<ContentId>(),
            Err(ParseIdError::NotHex {
                position: 10,
                found: 'g'
            })
        );
        // 64 characters but one is multi-byte.
        let s = format!("{}é", "0".repeat(63));
        assert!(matches!(
            s.parse::<ContentId>(),
            Err(ParseIdError::NotHex { position: 63, .. })
        ));
    }

    #[test]
    fn uppercase_is_accepted() {
        let id = ContentId::of_bytes(b"x");
        let upper = id.to_string().to_uppercase();
        assert_eq!(upper.parse::<ContentId>().unwrap(), id);
    }

    proptest! {
        #[test]
        fn hex_round_trip(bytes in proptest::array::uniform32(any::<u8>())) {
            let id = ContentId::from_bytes(bytes);
            let s = id.to_string();
            prop_assert_eq!(s.len(), 64);
            prop_assert_eq!(s.parse::<ContentId>().unwrap(), id);
        }

        #[test]
        fn parse_never_panics(s in ".{0,80}") {
            let _ = s.parse::<ContentId>();
        }
    }
}
