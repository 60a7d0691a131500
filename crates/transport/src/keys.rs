//! The deployment keys a node holds, shared by all its endpoints and changeable while they
//! run (key rotation, `docs/protocol.md`): the first key seals what the node sends on its
//! own; every key opens what arrives; a reply is sealed under the key its request used.

use std::sync::{Arc, RwLock};

use branchline_wire::frame;
use branchline_wire::{Envelope, Incoming, KeyId, OpenError, SealError, SealingKey};

/// A node's keys. Cloning shares them: [`KeySet::replace`] changes them for every
/// endpoint built from the same [`crate::Context`].
#[derive(Clone)]
pub struct KeySet(Arc<RwLock<Vec<SealingKey>>>);

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("KeySet").field(&self.ids()).finish()
    }
}

impl KeySet {
    /// `keys[0]` seals; all open. Panics on an empty list (a node needs a key).
    pub fn new(keys: Vec<SealingKey>) -> KeySet {
        assert!(!keys.is_empty(), "a node needs at least one key");
        KeySet(Arc::new(RwLock::new(keys)))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<SealingKey>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Id of the key that seals new messages.
    pub fn sealing_id(&self) -> KeyId {
        self.read()[0].id()
    }

    /// Ids of every key held, the sealing key first.
    pub fn ids(&self) -> Vec<KeyId> {
        self.read().iter().map(|k| k.id()).collect()
    }

    /// Whether a key with this id is held.
    pub fn holds(&self, id: KeyId) -> bool {
        self.read().iter().any(|k| k.id() == id)
    }

    /// Replaces every key; `keys[0]` seals from now on. An empty list is ignored (a node
    /// keeps at least one key).
    pub fn replace(&self, keys: Vec<SealingKey>) {
        if keys.is_empty() {
            return;
        }
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = keys;
    }

    /// Makes the held key `id` the sealing key; false when no such key is held.
    pub fn prefer(&self, id: KeyId) -> bool {
        let mut keys = self.0.write().unwrap_or_else(|e| e.into_inner());
        match keys.iter().position(|k| k.id() == id) {
            Some(i) => {
                keys[..=i].rotate_right(1);
                true
            }
            None => false,
        }
    }

    /// Opens a datagram with whichever held key its header names.
    pub fn open(&self, datagram: &[u8]) -> Result<Incoming, OpenError> {
        frame::open(&self.read(), datagram)
    }

    /// Seals under the key `with` if it is held, else under the sealing key.
    pub fn seal(
        &self,
        with: Option<KeyId>,
        nonce: [u8; 12],
        envelope: &Envelope,
    ) -> Result<Vec<u8>, SealError> {
        let keys = self.read();
        let key = with
            .and_then(|id| keys.iter().find(|k| k.id() == id))
            .unwrap_or(&keys[0]);
        frame::seal(key, nonce, envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use branchline_wire::DeploymentKey;
    use branchline_wire::msg::{Body, Ping};

    fn key(b: u8) -> SealingKey {
        DeploymentKey::from_bytes([b; 32]).derive()
    }

    fn env() -> Envelope {
        Envelope {
            msg_id: 1,
            sent_at_ms: 2,
            in_reply_to: 0,
            body: Some(Body::Ping(Ping {})),
        }
    }

    #[test]
    fn shared_keys_change_for_every_clone() {
        let a = KeySet::new(vec![key(1)]);
        let b = a.clone();
        let old = b.seal(None, [0; 12], &env()).unwrap();
        a.replace(vec![key(2), key(1)]);
        assert_eq!(b.sealing_id(), key(2).id());
        assert!(b.open(&old).is_ok(), "the previous key still opens");
        // A reply goes out under the request's key while it is held.
        let reply = b.seal(Some(key(1).id()), [1; 12], &env()).unwrap();
        assert!(KeySet::new(vec![key(1)]).open(&reply).is_ok());
        a.replace(vec![key(2)]);
        assert_eq!(b.open(&old), Err(OpenError::WrongKey(key(1).id())));
        let fallback = b.seal(Some(key(1).id()), [2; 12], &env()).unwrap();
        assert!(KeySet::new(vec![key(2)]).open(&fallback).is_ok());
        a.replace(Vec::new());
        assert_eq!(a.ids(), vec![key(2).id()], "never left without a key");
    }

    #[test]
    fn prefer_moves_a_held_key_first() {
        let s = KeySet::new(vec![key(1), key(2), key(3)]);
        assert!(s.prefer(key(3).id()));
        assert_eq!(s.ids(), vec![key(3).id(), key(1).id(), key(2).id()]);
        assert!(!s.prefer(key(9).id()));
        assert!(s.holds(key(2).id()) && !s.holds(key(9).id()));
    }
}
