//! The deployment key's rotation (issue #10): a new key without reinstalling anything.
//!
//! `branchline connector key rotate` (a connector-signed admin call) makes a new key the
//! *current* one; the old one becomes *previous* and is still accepted until the overlap
//! ends (`server.key_overlap_s`, or the call's own overlap), then it is retired: datagrams
//! sealed with it are dropped (`wrong_key`) and answered only with a key-mismatch notice.
//! Clients learn the current key id from every `RegisterOk` / `HeartbeatAck` and fetch the
//! key itself over QUIC (`GetDeploymentKey`), where only a certificate holder can ask and
//! TLS hides it; so someone who learnt the old key cannot read the new one off the wire.
//!
//! [`KeyState`] is pure (time passed in). Files in the data directory, mode 0600:
//! * `deployment.key`: the current key (replaced atomically at a rotation);
//! * `deployment.key.previous`: during an overlap, the previous key and, on a second
//!   line, `retire_at_ms N`; removed at retirement. A restart during the overlap keeps
//!   accepting both keys until the same deadline.

use std::collections::HashMap;
use std::path::Path;

use branchline_wire::{ClientId, DeploymentKey, KeyId, SealingKey};
use serde::{Deserialize, Serialize};

/// File name of the previous key (during an overlap) inside the data directory.
pub const PREVIOUS_KEY_FILE: &str = "deployment.key.previous";
/// Default overlap of a rotation (1 hour).
pub const DEFAULT_OVERLAP: std::time::Duration = std::time::Duration::from_secs(3600);
/// Shortest overlap accepted (a client must get a heartbeat reply in it).
pub const MIN_OVERLAP: std::time::Duration = std::time::Duration::from_secs(1);
/// Longest overlap accepted (30 days).
pub const MAX_OVERLAP: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);
/// Most clients whose last key id is remembered.
pub const MAX_TRACKED: usize = 1_000_000;

/// Why a rotation was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RotateError {
    /// Another rotation's overlap has not ended; one rotation runs at a time.
    #[error(
        "a rotation is under way: the previous key (fingerprint {previous}) is accepted until {retire_at_ms} (Unix ms); rotate again after that"
    )]
    InOverlap {
        /// The previous key's fingerprint.
        previous: String,
        /// When the previous key retires (Unix ms).
        retire_at_ms: u64,
    },
    /// The requested overlap is outside [`MIN_OVERLAP`]..=[`MAX_OVERLAP`].
    #[error("the overlap must be between {min} and {max} seconds", min = MIN_OVERLAP.as_secs(), max = MAX_OVERLAP.as_secs())]
    BadOverlap,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Previous {
    key: DeploymentKey,
    retire_at_ms: u64,
}

/// The keys a server accepts and which key each client used last.
#[derive(Debug)]
pub struct KeyState {
    current: DeploymentKey,
    previous: Option<Previous>,
    last_seen: HashMap<ClientId, KeyId>,
}

/// A key as `connector key status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    /// The key id as 8 hex digits (`docs/wire.md` §3.2: 4 bytes from HKDF, sent in clear in
    /// every datagram header).
    pub key_id: String,
    /// The key's fingerprint (8 groups of 4 hex digits), never the key itself.
    pub fingerprint: String,
}

fn view(k: &DeploymentKey) -> KeyView {
    KeyView {
        key_id: k.derive().id().to_string(),
        fingerprint: k.fingerprint(),
    }
}

impl KeyState {
    /// A state with `current` as the only key accepted and no client seen yet.
    pub fn new(current: DeploymentKey) -> KeyState {
        KeyState {
            current,
            previous: None,
            last_seen: HashMap::new(),
        }
    }

    /// The current key: what the server seals with and hands to clients.
    pub fn current(&self) -> &DeploymentKey {
        &self.current
    }

    /// The previous key and when it retires, during an overlap.
    pub fn previous(&self) -> Option<(&DeploymentKey, u64)> {
        self.previous.as_ref().map(|p| (&p.key, p.retire_at_ms))
    }

    /// When the previous key retires (Unix ms); 0 when no overlap runs.
    pub fn retire_ms(&self) -> u64 {
        self.previous.as_ref().map_or(0, |p| p.retire_at_ms)
    }

    /// The keys to accept now, the current (sealing) key first.
    pub fn accepted(&self) -> Vec<SealingKey> {
        let mut v = vec![self.current.derive()];
        if let Some(p) = &self.previous {
            v.push(p.key.derive());
        }
        v
    }

    /// Makes `new` the current key; the current one is accepted until `now + overlap`.
    pub fn rotate(
        &mut self,
        new: DeploymentKey,
        now_ms: u64,
        overlap: std::time::Duration,
    ) -> Result<(), RotateError> {
        if !(MIN_OVERLAP..=MAX_OVERLAP).contains(&overlap) {
            return Err(RotateError::BadOverlap);
        }
        if let Some(p) = &self.previous {
            return Err(RotateError::InOverlap {
                previous: p.key.fingerprint(),
                retire_at_ms: p.retire_at_ms,
            });
        }
        let old = std::mem::replace(&mut self.current, new);
        self.previous = Some(Previous {
            key: old,
            retire_at_ms: now_ms + overlap.as_millis() as u64,
        });
        Ok(())
    }

    /// Retires the previous key once its deadline has passed; true when it did now.
    pub fn tick(&mut self, now_ms: u64) -> bool {
        match &self.previous {
            Some(p) if now_ms >= p.retire_at_ms => {
                self.previous = None;
                true
            }
            _ => false,
        }
    }

    /// Records the key a known client's message was sealed with.
    pub fn seen(&mut self, client: ClientId, key: KeyId) {
        if self.last_seen.len() < MAX_TRACKED || self.last_seen.contains_key(&client) {
            self.last_seen.insert(client, key);
        }
    }

    /// The key id a client used last, if it was seen since the server started.
    pub fn last_key_of(&self, client: &ClientId) -> Option<KeyId> {
        self.last_seen.get(client).copied()
    }

    /// Forgets a client (e.g. one deleted by an admin).
    pub fn forget(&mut self, client: &ClientId) {
        self.last_seen.remove(client);
    }

    /// The current key as `key status` shows it.
    pub fn current_view(&self) -> KeyView {
        view(&self.current)
    }

    /// The previous key as `key status` shows it, during an overlap.
    pub fn previous_view(&self) -> Option<KeyView> {
        self.previous.as_ref().map(|p| view(&p.key))
    }

    /// Loads the state a data directory holds: `current` (read from `deployment.key`)
    /// and, during an overlap not over at `now_ms`, the previous key. A previous-key
    /// file whose overlap is over, or that holds the current key (a crash mid-rotation),
    /// is removed.
    pub fn load(dir: &Path, current: DeploymentKey, now_ms: u64) -> std::io::Result<KeyState> {
        let mut state = KeyState::new(current);
        let path = dir.join(PREVIOUS_KEY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(state),
            Err(e) => return Err(e),
        };
        let mut lines = text.lines();
        let key = lines.next().and_then(|l| l.parse::<DeploymentKey>().ok());
        let retire = lines
            .next()
            .and_then(|l| l.trim().strip_prefix("retire_at_ms "))
            .and_then(|n| n.trim().parse::<u64>().ok());
        match (key, retire) {
            (Some(key), Some(retire_at_ms)) if key != state.current && retire_at_ms > now_ms => {
                state.previous = Some(Previous { key, retire_at_ms });
            }
            (Some(_), Some(_)) => std::fs::remove_file(&path)?,
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} is not a previous-key file (a key line, then `retire_at_ms N`); delete it to stop accepting the previous key",
                        path.display()
                    ),
                ));
            }
        }
        Ok(state)
    }

    /// Writes the previous key (before the current key file is replaced) or removes the
    /// file when no overlap runs.
    pub fn save_previous(&self, dir: &Path) -> std::io::Result<()> {
        let path = dir.join(PREVIOUS_KEY_FILE);
        match &self.previous {
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            Some(p) => branchline_transport::write_private_file(
                &path,
                format!("{}\nretire_at_ms {}\n", p.key.to_text(), p.retire_at_ms).as_bytes(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    const T: u64 = 1_800_000_000_000;

    fn k(b: u8) -> DeploymentKey {
        DeploymentKey::from_bytes([b; 32])
    }

    fn ids(s: &KeyState) -> Vec<KeyId> {
        s.accepted().iter().map(|k| k.id()).collect()
    }

    #[test]
    fn overlap_accepts_both_then_retires_the_old_key() {
        let mut s = KeyState::new(k(1));
        assert_eq!(ids(&s), vec![k(1).derive().id()]);
        assert_eq!(s.retire_ms(), 0);
        s.rotate(k(2), T, Duration::from_secs(60)).unwrap();
        assert_eq!(ids(&s), vec![k(2).derive().id(), k(1).derive().id()]);
        assert_eq!(s.retire_ms(), T + 60_000);
        // A second rotation waits for the first to finish.
        assert!(matches!(
            s.rotate(k(3), T + 1, Duration::from_secs(60)),
            Err(RotateError::InOverlap { .. })
        ));
        assert!(!s.tick(T + 59_999));
        assert_eq!(ids(&s).len(), 2);
        assert!(s.tick(T + 60_000));
        assert!(!s.tick(T + 60_001), "retires once");
        assert_eq!(ids(&s), vec![k(2).derive().id()]);
        assert_eq!(s.retire_ms(), 0);
        s.rotate(k(3), T + 70_000, Duration::from_secs(1)).unwrap();
        assert_eq!(s.current(), &k(3));
    }

    #[test]
    fn overlaps_out_of_bounds_are_refused() {
        let mut s = KeyState::new(k(1));
        assert_eq!(
            s.rotate(k(2), T, Duration::from_millis(10)),
            Err(RotateError::BadOverlap)
        );
        assert_eq!(
            s.rotate(k(2), T, MAX_OVERLAP + Duration::from_secs(1)),
            Err(RotateError::BadOverlap)
        );
        assert_eq!(s.current(), &k(1));
    }

    #[test]
    fn who_moved_is_tracked_per_client() {
        let mut s = KeyState::new(k(1));
        let (a, b) = (ClientId([1; 16]), ClientId([2; 16]));
        s.seen(a, k(1).derive().id());
        s.rotate(k(2), T, Duration::from_secs(60)).unwrap();
        s.seen(a, k(2).derive().id());
        assert_eq!(s.last_key_of(&a), Some(k(2).derive().id()));
        assert_eq!(s.last_key_of(&b), None);
        s.forget(&a);
        assert_eq!(s.last_key_of(&a), None);
    }

    #[test]
    fn a_restart_during_the_overlap_keeps_both_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = KeyState::new(k(1));
        s.rotate(k(2), T, Duration::from_secs(60)).unwrap();
        s.save_previous(dir.path()).unwrap();
        let path = dir.path().join(PREVIOUS_KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = KeyState::load(dir.path(), k(2), T + 1).unwrap();
        assert_eq!(back.previous(), Some((&k(1), T + 60_000)));
        // After the deadline the file is gone and only the current key remains.
        let late = KeyState::load(dir.path(), k(2), T + 60_000).unwrap();
        assert_eq!(late.previous(), None);
        assert!(!path.exists());
        // A crash between writing the previous key and replacing the current key.
        s.save_previous(dir.path()).unwrap();
        let torn = KeyState::load(dir.path(), k(1), T + 1).unwrap();
        assert_eq!(torn.previous(), None);
        // Garbage is a clear error.
        std::fs::write(&path, "nonsense").unwrap();
        let e = KeyState::load(dir.path(), k(2), T).unwrap_err().to_string();
        assert!(e.contains("delete it"), "{e}");
        // No overlap: no file.
        KeyState::new(k(2)).save_previous(dir.path()).unwrap();
        assert!(!path.exists());
    }
}
