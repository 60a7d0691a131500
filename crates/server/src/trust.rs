//! The connector's credential on the server (issue #10): admin requests (publish, admin
//! calls) are acted on only inside a `ConnectorSigned` message from an enrolled connector,
//! never on the deployment key alone. See `branchline_wire::connector` for the scheme.
//!
//! Files in the data directory (mode 0600):
//! * `connector.tokens`: pending one-time tokens, one per line. At start the server mints
//!   one when none is pending and prints it; enrolling consumes it.
//! * `connectors.cred`: `NAME HEX` per enrolled connector (its credential).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use branchline_wire::Body;
use branchline_wire::connector::{self, NONCE_LEN, SECRET_LEN, Token};
use branchline_wire::msg::{ConnectorEnroll, ConnectorSigned};

/// File name, in the data directory, of the pending one-time activation tokens (one per
/// line, mode 0600).
pub const TOKENS_FILE: &str = "connector.tokens";
/// File name, in the data directory, of the enrolled connectors' credentials (`NAME HEX`
/// per line, mode 0600).
pub const CREDENTIALS_FILE: &str = "connectors.cred";
/// Oldest accepted signing time, behind the server's clock (ms).
pub const SIGNED_BEHIND_MS: u64 = 120_000;
/// Newest accepted signing time, ahead of the server's clock (ms).
pub const SIGNED_AHEAD_MS: u64 = 5_000;
/// Most nonces of signed requests remembered (admin traffic is light).
pub const MAX_NONCES: usize = 65_536;
/// Longest connector name.
pub const MAX_NAME: usize = 64;

/// Why an enrolment or a signed request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The enrolling connector's name is empty, longer than [`MAX_NAME`] or has other
    /// characters.
    #[error("the connector name must be 1 to {MAX_NAME} letters, digits, '.', '-' or '_'")]
    BadName,
    /// The activation token is not pending (never issued, or used already).
    #[error(
        "the activation token is not one the server issued, or it was used already: take the one the server printed at start (also in its data directory, {TOKENS_FILE})"
    )]
    BadToken,
    /// The signed request names a connector that is not enrolled; a request that needs a
    /// connector but came unsigned carries an empty name.
    #[error(
        "this request needs an enrolled connector's credential, not just the deployment key{}: run `branchline connector activate --token TOKEN` with the token the server printed",
        if .0.is_empty() { String::new() } else { format!(" (connector {:?} is not enrolled)", .0) }
    )]
    UnknownConnector(String),
    /// The MAC (or the nonce's length) does not match the connector's credential.
    #[error(
        "the connector credential does not match (was the connector enrolled again elsewhere?)"
    )]
    BadMac,
    /// `issued_ms` is more than [`SIGNED_BEHIND_MS`] behind or [`SIGNED_AHEAD_MS`] ahead of
    /// the server's clock.
    #[error("the signed request is dated outside the accepted window (check the clocks)")]
    Stale,
    /// The nonce was seen within the accepted window.
    #[error("this signed request was already used")]
    Replayed,
    /// [`MAX_NONCES`] nonces are remembered already.
    #[error("too many signed requests at once; try again shortly")]
    Busy,
    /// The signed payload is not a request the server knows.
    #[error("the signed request holds no request this server understands")]
    Undecodable,
    /// The credential or token file cannot be written.
    #[error("the server cannot store the connector credential: {0}")]
    Io(String),
}

/// Enrolled connectors, pending tokens and recently seen nonces.
pub struct ConnectorAuth {
    dir: PathBuf,
    tokens: Vec<Token>,
    creds: HashMap<String, [u8; SECRET_LEN]>,
    seen: HashMap<[u8; NONCE_LEN], u64>,
    order: VecDeque<(u64, [u8; NONCE_LEN])>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn read_private(path: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => {
            crate::restrict_file(path)?;
            Ok(t)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}

impl ConnectorAuth {
    /// Reads the files in `dir` (missing files: nothing enrolled, no token pending).
    pub fn load(dir: &Path) -> std::io::Result<ConnectorAuth> {
        let tokens = read_private(&dir.join(TOKENS_FILE))?
            .lines()
            .filter_map(Token::parse)
            .collect();
        let mut creds = HashMap::new();
        for line in read_private(&dir.join(CREDENTIALS_FILE))?.lines() {
            let mut parts = line.split_whitespace();
            if let (Some(name), Some(hex)) = (parts.next(), parts.next())
                && let Some(c) = connector::unhex(hex)
                && valid_name(name)
            {
                creds.insert(name.to_owned(), c);
            }
        }
        Ok(ConnectorAuth {
            dir: dir.to_owned(),
            tokens,
            creds,
            seen: HashMap::new(),
            order: VecDeque::new(),
        })
    }

    /// The pending token, minting (and storing) one when none is pending.
    pub fn pending_token(&mut self) -> std::io::Result<Token> {
        if let Some(t) = self.tokens.first() {
            return Ok(t.clone());
        }
        let t = Token(rand::random());
        self.tokens.push(t.clone());
        self.save_tokens()?;
        Ok(t)
    }

    /// Names of the enrolled connectors.
    pub fn enrolled(&self) -> Vec<String> {
        let mut v: Vec<String> = self.creds.keys().cloned().collect();
        v.sort();
        v
    }

    fn save_tokens(&self) -> std::io::Result<()> {
        let text: String = self.tokens.iter().map(|t| t.to_text() + "\n").collect();
        branchline_transport::write_private_file(&self.dir.join(TOKENS_FILE), text.as_bytes())
    }

    fn save_creds(&self) -> std::io::Result<()> {
        let mut names: Vec<&String> = self.creds.keys().collect();
        names.sort();
        let text: String = names
            .into_iter()
            .map(|n| format!("{n} {}\n", connector::hex(&self.creds[n])))
            .collect();
        branchline_transport::write_private_file(&self.dir.join(CREDENTIALS_FILE), text.as_bytes())
    }

    /// Enrols a connector: the proof must match a pending token, which is consumed.
    /// Returns whether the name was enrolled before (its credential is replaced).
    pub fn enroll(&mut self, e: &ConnectorEnroll) -> Result<bool, AuthError> {
        if !valid_name(&e.name) {
            return Err(AuthError::BadName);
        }
        let at = self
            .tokens
            .iter()
            .position(|t| {
                connector::mac_matches(&connector::enroll_proof(t, &e.name, &e.nonce), &e.proof)
            })
            .ok_or(AuthError::BadToken)?;
        let token = self.tokens.remove(at);
        let replaced = self
            .creds
            .insert(e.name.clone(), connector::credential(&token, &e.name))
            .is_some();
        self.save_creds()
            .and_then(|()| self.save_tokens())
            .map_err(|e| AuthError::Io(e.to_string()))?;
        Ok(replaced)
    }

    /// Checks a signed request and returns the request inside it.
    pub fn verify(&mut self, s: &ConnectorSigned, now_ms: u64) -> Result<Body, AuthError> {
        let cred = self
            .creds
            .get(&s.connector)
            .ok_or_else(|| AuthError::UnknownConnector(s.connector.clone()))?;
        let expect = connector::sign(cred, &s.connector, s.issued_ms, &s.nonce, &s.request);
        if !connector::mac_matches(&expect, &s.mac) {
            return Err(AuthError::BadMac);
        }
        // Saturating: a signed time near u64::MAX is stale, not an overflow.
        if s.issued_ms.saturating_add(SIGNED_BEHIND_MS) < now_ms
            || s.issued_ms > now_ms.saturating_add(SIGNED_AHEAD_MS)
        {
            return Err(AuthError::Stale);
        }
        let nonce: [u8; NONCE_LEN] = s
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| AuthError::BadMac)?;
        while let Some(&(at, n)) = self.order.front() {
            if at > now_ms {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&n);
        }
        if self.seen.contains_key(&nonce) {
            return Err(AuthError::Replayed);
        }
        if self.seen.len() >= MAX_NONCES {
            return Err(AuthError::Busy);
        }
        let forget = now_ms.saturating_add(SIGNED_BEHIND_MS + SIGNED_AHEAD_MS + 1);
        self.seen.insert(nonce, forget);
        self.order.push_back((forget, nonce));
        connector::inner(s).ok_or(AuthError::Undecodable)
    }
}

/// The request the handler acts on, or the reply that refuses it: a `ConnectorEnroll` is
/// answered here; a `ConnectorSigned` yields its checked request; a request that needs
/// the connector (publish, admin calls) outside one is refused as unauthorized.
pub fn admit(
    s: &crate::ServerState,
    from: std::net::SocketAddr,
    body: Body,
    now_ms: u64,
) -> Result<Body, Box<Body>> {
    use branchline_transport::DropReason;
    use branchline_wire::msg::{ConnectorEnrolled, ErrorCode};
    let refuse = |e: AuthError| {
        s.counters.count(DropReason::Invalid);
        tracing::warn!(%from, error = %e, "refused an admin request");
        Box::new(crate::handler::error(
            ErrorCode::Unauthorized,
            e.to_string(),
            now_ms,
        ))
    };
    match body {
        Body::ConnectorEnroll(e) => {
            let enrolled = crate::lock(&s.connector_auth).enroll(&e);
            match enrolled {
                Ok(replaced) => {
                    tracing::info!(connector = %e.name, %from, replaced, "connector enrolled");
                    Err(Box::new(Body::ConnectorEnrolled(ConnectorEnrolled {
                        name: e.name,
                        replaced,
                    })))
                }
                Err(e) => Err(refuse(e)),
            }
        }
        Body::ConnectorSigned(signed) => {
            let inner = crate::lock(&s.connector_auth).verify(&signed, now_ms);
            match inner {
                Ok(Body::ConnectorSigned(_) | Body::ConnectorEnroll(_)) => {
                    Err(refuse(AuthError::Undecodable))
                }
                Ok(b) => Ok(b),
                Err(e) => Err(refuse(e)),
            }
        }
        b if b.needs_connector() => Err(refuse(AuthError::UnknownConnector(String::new()))),
        b => Ok(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use branchline_wire::msg::Ping;
    use std::os::unix::fs::PermissionsExt;

    const T: u64 = 1_800_000_000_000;

    fn enroll_msg(token: &Token, name: &str) -> ConnectorEnroll {
        ConnectorEnroll {
            name: name.into(),
            nonce: vec![5; 16],
            proof: connector::enroll_proof(token, name, &[5; 16]).to_vec(),
        }
    }

    #[test]
    fn enrol_once_then_sign_and_refuse_forgeries_and_replays() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = ConnectorAuth::load(dir.path()).unwrap();
        let token = a.pending_token().unwrap();
        assert_eq!(a.pending_token().unwrap(), token, "one pending token");
        // A wrong token, a bad name: refused.
        assert_eq!(
            a.enroll(&enroll_msg(&Token([0; 32]), "admin")),
            Err(AuthError::BadToken)
        );
        assert_eq!(
            a.enroll(&enroll_msg(&token, "a b")),
            Err(AuthError::BadName)
        );
        assert_eq!(a.enroll(&enroll_msg(&token, "admin")), Ok(false));
        // One time only.
        assert_eq!(
            a.enroll(&enroll_msg(&token, "admin")),
            Err(AuthError::BadToken)
        );
        let cred = connector::credential(&token, "admin");
        let s = connector::signed(&cred, "admin", T, [1; 16], Body::Ping(Ping {}));
        assert_eq!(a.verify(&s, T), Ok(Body::Ping(Ping {})));
        assert_eq!(a.verify(&s, T + 1), Err(AuthError::Replayed));
        // Signed with the deployment key's knowledge only: no credential, no luck.
        let forged = connector::signed(&[0; 32], "admin", T, [2; 16], Body::Ping(Ping {}));
        assert_eq!(a.verify(&forged, T), Err(AuthError::BadMac));
        let stranger = connector::signed(&cred, "other", T, [3; 16], Body::Ping(Ping {}));
        assert!(matches!(
            a.verify(&stranger, T),
            Err(AuthError::UnknownConnector(_))
        ));
        let old = connector::signed(&cred, "admin", T - 200_000, [4; 16], Body::Ping(Ping {}));
        assert_eq!(a.verify(&old, T), Err(AuthError::Stale));
        // The far future, signed by the connector itself: stale, not an overflow.
        for at in [u64::MAX, u64::MAX - SIGNED_BEHIND_MS / 2] {
            let far = connector::signed(&cred, "admin", at, [7; 16], Body::Ping(Ping {}));
            assert_eq!(a.verify(&far, T), Err(AuthError::Stale));
        }
        // Survives a restart, files private.
        let mut b = ConnectorAuth::load(dir.path()).unwrap();
        assert_eq!(b.enrolled(), vec!["admin".to_string()]);
        let s = connector::signed(&cred, "admin", T, [6; 16], Body::Ping(Ping {}));
        assert!(b.verify(&s, T).is_ok());
        for f in [TOKENS_FILE, CREDENTIALS_FILE] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        assert_ne!(b.pending_token().unwrap(), token, "a fresh token after use");
    }
}
