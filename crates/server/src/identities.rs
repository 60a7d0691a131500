//! Client identities: each client id is bound to one public key at its first
//! registration, and the admin approves, resets or revokes it. Pure: time passed in.
//!
//! * A registration carries the public key of the client's certificate request. The first
//!   one binds the id to that key; a later registration of the id with another key is
//!   refused until the admin resets the id (`branchline connector client reset ID`), so a
//!   device holding only the deployment key cannot take over another client's id.
//! * With `server.enrollment = "approve"` a new binding starts [`IdState::Pending`]: no
//!   certificate, no place in the registry (so it is never named to peers and never
//!   given content) until the admin approves it.
//! * A [`IdState::Revoked`] client is refused at registration and heartbeat; the list of
//!   revoked ids and its epoch travel to every client (`HeartbeatAck.revocation_epoch`,
//!   `GetRevocations`), which then refuse its QUIC handshakes.

use std::collections::HashMap;

use branchline_wire::ClientId;
use branchline_wire::large::MAX_REVOKED;

/// How new clients enroll (`server.enrollment`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Enrollment {
    /// Any client holding the deployment key enrolls at its first registration.
    #[default]
    Open,
    /// A new client waits, without a certificate, until the admin approves it.
    Approve,
}

impl std::str::FromStr for Enrollment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "open" => Ok(Enrollment::Open),
            "approve" => Ok(Enrollment::Approve),
            other => Err(format!(
                "server.enrollment is \"open\" or \"approve\", not {other:?}"
            )),
        }
    }
}

/// Where an identity stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdState {
    /// Bound, waiting for the admin's approval (`server.enrollment = "approve"`): no
    /// certificate, not in the registry.
    Pending,
    /// Bound and allowed: it gets a certificate, a place in the registry and content.
    Active,
    /// Refused at registration and heartbeat, and on the revocation list sent to every
    /// peer.
    Revoked,
}

impl IdState {
    /// The state's name as stored in the database and shown by `client list`.
    pub fn as_str(self) -> &'static str {
        match self {
            IdState::Pending => "pending",
            IdState::Active => "active",
            IdState::Revoked => "revoked",
        }
    }

    /// The inverse of [`IdState::as_str`]; `None` for any other text (a corrupt database
    /// row).
    pub fn parse(s: &str) -> Option<IdState> {
        match s {
            "pending" => Some(IdState::Pending),
            "active" => Some(IdState::Active),
            "revoked" => Some(IdState::Revoked),
            _ => None,
        }
    }
}

/// One client's binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The client id bound.
    pub id: ClientId,
    /// Raw Ed25519 public key of the client's certificate requests.
    pub public_key: [u8; 32],
    /// Where the binding stands.
    pub state: IdState,
    /// The hostname of the registration that bound it (shown while pending).
    pub hostname: String,
    /// When the key was bound (Unix ms).
    pub bound_ms: u64,
    /// When the state last changed.
    pub changed_ms: u64,
    /// Last registration attempt (in memory only; the registry has `last_seen`).
    pub last_attempt_ms: u64,
}

impl Identity {
    /// The key's fingerprint as the admin sees it: the first 16 hex digits of
    /// BLAKE3(public key).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public_key)
    }
}

/// The fingerprint of a raw public key (see [`Identity::fingerprint`]).
pub fn fingerprint(key: &[u8; 32]) -> String {
    blake3::hash(key).to_hex()[..16].to_owned()
}

/// The answer to a registration attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead; `bound` is the new binding to store, if this registration made one.
    Active {
        /// The new binding, when this registration made one.
        bound: Option<Identity>,
    },
    /// Waiting for the admin; `bound` as above.
    Pending {
        /// The new binding, when this registration made one.
        bound: Option<Identity>,
    },
    /// The id is bound to another key.
    KeyMismatch {
        /// The bound key's fingerprint ([`Identity::fingerprint`]), for the refusal
        /// message.
        bound_fingerprint: String,
    },
    /// The id is revoked: refused until the admin resets it.
    Revoked,
    /// Too many identities already: the id is not bound.
    Full,
}

/// An admin action on an identity that cannot be done.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id has no binding.
    #[error("no client {0} has registered with a key (see `branchline connector client list`)")]
    Unknown(ClientId),
    /// Approving a revoked client: it must be reset first.
    #[error("client {0} is revoked: `branchline connector client reset {0}` lets it enroll again")]
    IsRevoked(ClientId),
    /// Approving a client that is already active.
    #[error("client {0} is already active")]
    AlreadyActive(ClientId),
    /// Revoking would put more than [`MAX_REVOKED`] ids on the revocation list.
    #[error(
        "the revocation list is full ({MAX_REVOKED} clients): reset revoked clients that are gone for good"
    )]
    ListFull,
}

/// Most identities kept (pending ones included). Registrations beyond it are refused.
pub const MAX_IDENTITIES: usize = 1_000_000;
/// Most pending identities: further unapproved clients are refused until the admin
/// approves or resets some (a flood of new ids cannot grow the table).
pub const MAX_PENDING: usize = 10_000;

/// Every binding, by client id.
#[derive(Debug, Default)]
pub struct Identities {
    by_id: HashMap<ClientId, Identity>,
    mode: Enrollment,
    /// Changes whenever the revocation list does.
    epoch: u64,
    pending: usize,
    revoked: usize,
}

impl Identities {
    /// `first_epoch` should differ across server restarts (e.g. the start time in ms), so
    /// a client never keeps an old list because a restarted server counts from 1 again.
    pub fn new(mode: Enrollment, first_epoch: u64) -> Self {
        Identities {
            mode,
            epoch: first_epoch.max(1),
            ..Default::default()
        }
    }

    /// How new clients enroll, as configured.
    pub fn mode(&self) -> Enrollment {
        self.mode
    }

    /// Loads bindings read back from the database.
    pub fn load(&mut self, rows: impl IntoIterator<Item = Identity>) {
        for r in rows {
            self.insert(r);
        }
    }

    fn insert(&mut self, r: Identity) {
        if let Some(old) = self.by_id.insert(r.id, r.clone()) {
            self.count(old.state, false);
        }
        self.count(r.state, true);
    }

    fn count(&mut self, state: IdState, add: bool) {
        let n = match state {
            IdState::Pending => &mut self.pending,
            IdState::Revoked => &mut self.revoked,
            IdState::Active => return,
        };
        if add {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
        }
    }

    /// The binding of `id`, if it has one.
    pub fn get(&self, id: &ClientId) -> Option<&Identity> {
        self.by_id.get(id)
    }

    /// The state of `id`; `None` when unbound.
    pub fn state(&self, id: &ClientId) -> Option<IdState> {
        self.by_id.get(id).map(|i| i.state)
    }

    /// Whether `id` may be named to peers and given content: bound and active, or
    /// unbound (a client registering without a certificate request has no QUIC at all).
    pub fn may_serve(&self, id: &ClientId) -> bool {
        self.by_id
            .get(id)
            .is_none_or(|i| i.state == IdState::Active)
    }

    /// A registration of `id` with `key` (from its certificate request).
    pub fn admit(&mut self, id: ClientId, key: [u8; 32], hostname: &str, now_ms: u64) -> Admission {
        if let Some(i) = self.by_id.get_mut(&id) {
            i.last_attempt_ms = now_ms;
            if i.public_key != key {
                return Admission::KeyMismatch {
                    bound_fingerprint: i.fingerprint(),
                };
            }
            return match i.state {
                IdState::Active => Admission::Active { bound: None },
                IdState::Pending => Admission::Pending { bound: None },
                IdState::Revoked => Admission::Revoked,
            };
        }
        let state = match self.mode {
            Enrollment::Open => IdState::Active,
            Enrollment::Approve => IdState::Pending,
        };
        if self.by_id.len() >= MAX_IDENTITIES
            || (state == IdState::Pending && self.pending >= MAX_PENDING)
        {
            return Admission::Full;
        }
        let identity = Identity {
            id,
            public_key: key,
            state,
            hostname: hostname.to_owned(),
            bound_ms: now_ms,
            changed_ms: now_ms,
            last_attempt_ms: now_ms,
        };
        self.insert(identity.clone());
        match state {
            IdState::Pending => Admission::Pending {
                bound: Some(identity),
            },
            _ => Admission::Active {
                bound: Some(identity),
            },
        }
    }

    /// Approves a pending client. Returns the record to store.
    pub fn approve(&mut self, id: &ClientId, now_ms: u64) -> Result<Identity, IdError> {
        let i = self.by_id.get(id).ok_or(IdError::Unknown(*id))?;
        match i.state {
            IdState::Active => Err(IdError::AlreadyActive(*id)),
            IdState::Revoked => Err(IdError::IsRevoked(*id)),
            IdState::Pending => {
                let mut i = i.clone();
                i.state = IdState::Active;
                i.changed_ms = now_ms;
                self.insert(i.clone());
                Ok(i)
            }
        }
    }

    /// Revokes a client (any state). Returns the record to store.
    pub fn revoke(&mut self, id: &ClientId, now_ms: u64) -> Result<Identity, IdError> {
        let i = self.by_id.get(id).ok_or(IdError::Unknown(*id))?;
        if i.state == IdState::Revoked {
            return Ok(i.clone());
        }
        if self.revoked >= MAX_REVOKED {
            return Err(IdError::ListFull);
        }
        let mut i = i.clone();
        i.state = IdState::Revoked;
        i.changed_ms = now_ms;
        self.insert(i.clone());
        self.epoch += 1;
        Ok(i)
    }

    /// Forgets the binding of `id`: its next registration binds whatever key it brings.
    /// Returns the removed binding.
    pub fn reset(&mut self, id: &ClientId) -> Result<Identity, IdError> {
        let i = self.by_id.remove(id).ok_or(IdError::Unknown(*id))?;
        self.count(i.state, false);
        if i.state == IdState::Revoked {
            self.epoch += 1;
        }
        Ok(i)
    }

    /// The revocation list's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Revoked ids, sorted (at most [`MAX_REVOKED`]).
    pub fn revoked(&self) -> Vec<ClientId> {
        let mut v: Vec<ClientId> = self
            .by_id
            .values()
            .filter(|i| i.state == IdState::Revoked)
            .map(|i| i.id)
            .collect();
        v.sort();
        v.truncate(MAX_REVOKED);
        v
    }

    /// Every binding, sorted by id.
    pub fn snapshot(&self) -> Vec<Identity> {
        let mut v: Vec<Identity> = self.by_id.values().cloned().collect();
        v.sort_by_key(|i| i.id);
        v
    }

    /// Number of bindings, every state included.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when no id is bound.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: u8) -> ClientId {
        ClientId([n; 16])
    }

    #[test]
    fn first_key_binds_and_another_key_is_refused_until_reset() {
        let mut ids = Identities::new(Enrollment::Open, 1);
        let Admission::Active { bound: Some(b) } = ids.admit(c(1), [1; 32], "pc-1", 10) else {
            panic!("first registration binds");
        };
        assert_eq!((b.state, b.public_key), (IdState::Active, [1; 32]));
        assert_eq!(
            ids.admit(c(1), [1; 32], "pc-1", 20),
            Admission::Active { bound: None },
            "same key: nothing new to store"
        );
        assert_eq!(
            ids.admit(c(1), [2; 32], "evil", 30),
            Admission::KeyMismatch {
                bound_fingerprint: fingerprint(&[1; 32])
            }
        );
        assert_eq!(ids.get(&c(1)).unwrap().public_key, [1; 32], "victim kept");
        ids.reset(&c(1)).unwrap();
        assert!(matches!(
            ids.admit(c(1), [2; 32], "reinstalled", 40),
            Admission::Active { bound: Some(_) }
        ));
        assert_eq!(ids.reset(&c(9)), Err(IdError::Unknown(c(9))));
    }

    #[test]
    fn approve_mode_holds_new_clients_until_approved() {
        let mut ids = Identities::new(Enrollment::Approve, 1);
        assert!(matches!(
            ids.admit(c(1), [1; 32], "pc-1", 0),
            Admission::Pending { bound: Some(_) }
        ));
        assert!(!ids.may_serve(&c(1)));
        assert_eq!(
            ids.admit(c(1), [1; 32], "pc-1", 5),
            Admission::Pending { bound: None }
        );
        let a = ids.approve(&c(1), 7).unwrap();
        assert_eq!((a.state, a.changed_ms), (IdState::Active, 7));
        assert!(ids.may_serve(&c(1)));
        assert_eq!(ids.approve(&c(1), 8), Err(IdError::AlreadyActive(c(1))));
        assert_eq!(
            ids.admit(c(1), [1; 32], "pc-1", 9),
            Admission::Active { bound: None }
        );
    }

    #[test]
    fn revocation_refuses_and_moves_the_epoch() {
        let mut ids = Identities::new(Enrollment::Open, 100);
        ids.admit(c(1), [1; 32], "a", 0);
        ids.admit(c(2), [2; 32], "b", 0);
        assert_eq!(ids.epoch(), 100);
        ids.revoke(&c(2), 1).unwrap();
        assert_eq!(ids.epoch(), 101);
        ids.revoke(&c(2), 2).unwrap();
        assert_eq!(ids.epoch(), 101, "revoking twice changes nothing");
        assert_eq!(ids.revoked(), vec![c(2)]);
        assert_eq!(ids.admit(c(2), [2; 32], "b", 3), Admission::Revoked);
        assert!(!ids.may_serve(&c(2)) && ids.may_serve(&c(1)));
        assert_eq!(ids.approve(&c(2), 4), Err(IdError::IsRevoked(c(2))));
        ids.reset(&c(2)).unwrap();
        assert_eq!(ids.epoch(), 102);
        assert!(ids.revoked().is_empty());
        assert!(ids.may_serve(&c(2)), "unbound again");
    }

    #[test]
    fn pending_clients_are_bounded() {
        let mut ids = Identities::new(Enrollment::Approve, 1);
        for n in 0..MAX_PENDING {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(n as u64).to_be_bytes());
            assert!(matches!(
                ids.admit(ClientId(id), [3; 32], "x", 0),
                Admission::Pending { .. }
            ));
        }
        assert_eq!(ids.admit(c(0xee), [4; 32], "y", 0), Admission::Full);
        assert_eq!(ids.len(), MAX_PENDING);
    }

    #[test]
    fn enrollment_parses() {
        assert_eq!("open".parse::<Enrollment>(), Ok(Enrollment::Open));
        assert_eq!("approve".parse::<Enrollment>(), Ok(Enrollment::Approve));
        assert!(
            "maybe"
                .parse::<Enrollment>()
                .unwrap_err()
                .contains("approve")
        );
    }
}
