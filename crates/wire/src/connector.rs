//! The connector's own credential (issue #10): admin rights never come from the deployment
//! key alone, which every device holds. Pure.
//!
//! The server mints a one-time **token** (32 random bytes, text `blct1_` + 64 hex digits)
//! and prints it; the admin gives it to `branchline connector activate --token`. The token
//! never travels: the connector proves it with an HMAC over its name and a nonce
//! ([`enroll_proof`]), and both sides derive the connector's **credential**
//! ([`credential`], HKDF-SHA256 of the token with the name) from it. The server then
//! forgets the token. Every admin request travels inside a `ConnectorSigned` message whose
//! MAC ([`sign`]) covers the connector's name, the time, a nonce and the request's bytes;
//! the server refuses a bad MAC, a stale time and a nonce it has seen. A device holding
//! the deployment key can read these messages but cannot forge one or learn the
//! credential.

use ring::{hkdf, hmac};

/// Length of a token and of a credential.
pub const SECRET_LEN: usize = 32;
/// Length of the nonces in enrolment and signed requests.
pub const NONCE_LEN: usize = 16;

const TOKEN_PREFIX: &str = "blct1_";
const SALT: &[u8] = b"branchline connector v1";

/// A one-time activation token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub [u8; SECRET_LEN]);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// The text form the server prints and the admin passes on: `blct1_` followed by 64
    /// lowercase hex digits.
    pub fn to_text(&self) -> String {
        format!("{TOKEN_PREFIX}{}", hex(&self.0))
    }

    /// Parses the text form (white space around it ignored).
    pub fn parse(text: &str) -> Option<Token> {
        let h = text.trim().strip_prefix(TOKEN_PREFIX)?;
        Some(Token(unhex(h)?))
    }
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    hex::encode(b)
}

/// Parses exactly `SECRET_LEN` bytes of hex.
pub fn unhex(h: &str) -> Option<[u8; SECRET_LEN]> {
    let mut out = [0u8; SECRET_LEN];
    hex::decode_to_slice(h, &mut out).ok()?;
    Some(out)
}

fn expand(secret: &[u8], info: &[&[u8]]) -> [u8; SECRET_LEN] {
    struct Len;
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            SECRET_LEN
        }
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(secret);
    let mut out = [0u8; SECRET_LEN];
    prk.expand(info, Len)
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes of HKDF-SHA256 output");
    out
}

/// The credential of connector `name` enrolled with `token`.
pub fn credential(token: &Token, name: &str) -> [u8; SECRET_LEN] {
    expand(&token.0, &[b"connector credential", name.as_bytes()])
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    for p in parts {
        // Length-prefixed, so no two different part lists give the same input.
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p);
    }
    let tag = ctx.sign();
    tag.as_ref().try_into().expect("HMAC-SHA256 is 32 bytes")
}

/// The proof that the sender of an enrolment holds `token`.
pub fn enroll_proof(token: &Token, name: &str, nonce: &[u8]) -> [u8; 32] {
    let k = expand(&token.0, &[b"enrolment proof"]);
    mac(&k, &[b"enroll", name.as_bytes(), nonce])
}

/// The MAC of a signed admin request.
pub fn sign(
    credential: &[u8; SECRET_LEN],
    name: &str,
    issued_ms: u64,
    nonce: &[u8],
    request: &[u8],
) -> [u8; 32] {
    mac(
        credential,
        &[
            b"admin",
            name.as_bytes(),
            &issued_ms.to_be_bytes(),
            nonce,
            request,
        ],
    )
}

/// Constant-time comparison of a received MAC with the expected one.
pub fn mac_matches(expected: &[u8; 32], got: &[u8]) -> bool {
    // Every byte compared, whatever differs first.
    got.len() == 32
        && expected
            .iter()
            .zip(got)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Builds the `ConnectorSigned` message carrying `body`.
pub fn signed(
    credential: &[u8; SECRET_LEN],
    name: &str,
    issued_ms: u64,
    nonce: [u8; NONCE_LEN],
    body: crate::Body,
) -> crate::msg::ConnectorSigned {
    use prost::Message;
    let request = crate::Envelope {
        msg_id: 0,
        sent_at_ms: 0,
        in_reply_to: 0,
        body: Some(body),
    }
    .encode_to_vec();
    let mac = sign(credential, name, issued_ms, &nonce, &request);
    crate::msg::ConnectorSigned {
        connector: name.to_owned(),
        issued_ms,
        nonce: nonce.to_vec(),
        request,
        mac: mac.to_vec(),
    }
}

/// The request inside a `ConnectorSigned` whose MAC was checked; `None` if it does not
/// decode to a body.
pub fn inner(signed: &crate::msg::ConnectorSigned) -> Option<crate::Body> {
    use prost::Message;
    crate::Envelope::decode(signed.request.as_slice())
        .ok()?
        .body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Body;
    use crate::msg::Ping;

    #[test]
    fn token_text_round_trips_and_debug_hides_it() {
        let t = Token([9; 32]);
        assert_eq!(
            Token::parse(&format!(" {}\n", t.to_text())),
            Some(t.clone())
        );
        assert_eq!(Token::parse("blct1_zz"), None);
        assert!(!format!("{t:?}").contains("09"));
    }

    #[test]
    fn signatures_bind_every_field() {
        let t = Token([1; 32]);
        let c = credential(&t, "admin-1");
        assert_ne!(c, credential(&t, "admin-2"));
        assert_ne!(c, credential(&Token([2; 32]), "admin-1"));
        let s = signed(&c, "admin-1", 1000, [3; 16], Body::Ping(Ping {}));
        let expect = sign(&c, "admin-1", 1000, &s.nonce, &s.request);
        assert!(mac_matches(&expect, &s.mac));
        assert!(!mac_matches(
            &sign(&c, "admin-1", 1001, &s.nonce, &s.request),
            &s.mac
        ));
        assert!(!mac_matches(
            &sign(&c, "admin-2", 1000, &s.nonce, &s.request),
            &s.mac
        ));
        assert!(!mac_matches(&expect, &s.mac[..31]));
        assert_eq!(inner(&s), Some(Body::Ping(Ping {})));
        assert_ne!(
            enroll_proof(&t, "a", &[0; 16]),
            enroll_proof(&t, "b", &[0; 16])
        );
    }
}
