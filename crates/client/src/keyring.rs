//! The deployment keys a client holds across a rotation (issue #10).
//!
//! The client starts with the key file it was given (`--key-file`). When the server
//! announces another current key (`RegisterOk` / `HeartbeatAck` `key_id`), the client
//! fetches it over QUIC and keeps it in its data directory, `deployment.keys` (mode 0600,
//! written atomically), beside the key it had: it seals with the new key from then on and
//! still opens with the old one until the server says the overlap is over. A restarted
//! client reads that file, so it need not be given the new key file.
//!
//! [`decide`] is the policy (pure, time passed in); [`Stored`] is the file.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use branchline_wire::{DeploymentKey, KeyId};

/// File name inside the client's data directory.
pub const KEYS_FILE: &str = "deployment.keys";

/// What `deployment.keys` holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The key to seal with.
    pub current: DeploymentKey,
    /// The key it replaced, opened until `retire_ms` (Unix ms).
    pub previous: Option<(DeploymentKey, u64)>,
}

/// What to do about a key announcement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to change.
    Keep,
    /// The announced key is held but does not seal yet: seal with it.
    Seal(KeyId),
    /// The announced key is not held: fetch it from the server (over QUIC).
    Fetch,
    /// The overlap is over: hold only the announced key.
    Retire(KeyId),
}

/// Decides what a client holding the keys `held` (sealing key first) does when the server
/// announces `announced` (0: an older server that says nothing) and `retire_ms` (0: no
/// overlap runs; else when the previous key retires).
pub fn decide(held: &[KeyId], announced: u32, retire_ms: u64, now_ms: u64) -> Decision {
    if announced == 0 || held.is_empty() {
        return Decision::Keep;
    }
    let id = KeyId(announced);
    if !held.contains(&id) {
        return Decision::Fetch;
    }
    if held[0] != id {
        return Decision::Seal(id);
    }
    if held.len() > 1 && (retire_ms == 0 || retire_ms <= now_ms) {
        return Decision::Retire(id);
    }
    Decision::Keep
}

/// The keys to start with: the stored ones (current first) while they are usable, then
/// the configured key file's, without duplicates.
pub fn initial(
    configured: &DeploymentKey,
    stored: Option<&Stored>,
    now_ms: u64,
) -> Vec<DeploymentKey> {
    let mut keys = Vec::new();
    if let Some(s) = stored {
        keys.push(s.current.clone());
        if let Some((p, retire)) = &s.previous
            && *retire > now_ms
        {
            keys.push(p.clone());
        }
    }
    if !keys.contains(configured) {
        keys.push(configured.clone());
    }
    keys
}

impl Stored {
    /// Reads `DIR/deployment.keys`; `Ok(None)` when there is none.
    pub fn load(dir: &Path) -> Result<Option<Stored>, String> {
        let path = dir.join(KEYS_FILE);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "{} can be read by other users; run `chmod 600 {}`",
                path.display(),
                path.display()
            ));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let corrupt = || {
            format!(
                "{} is corrupt; delete it (the client then uses its --key-file key)",
                path.display()
            )
        };
        let mut current = None;
        let mut previous = None;
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some("current"), Some(k), None) => {
                    current = Some(k.parse::<DeploymentKey>().map_err(|_| corrupt())?)
                }
                (Some("previous"), Some(k), Some(retire)) => {
                    previous = Some((
                        k.parse::<DeploymentKey>().map_err(|_| corrupt())?,
                        retire.parse::<u64>().map_err(|_| corrupt())?,
                    ))
                }
                (None, _, _) => {}
                _ => return Err(corrupt()),
            }
        }
        Ok(Some(Stored {
            current: current.ok_or_else(corrupt)?,
            previous,
        }))
    }

    /// Writes `DIR/deployment.keys` (mode 0600): a temporary file, synced, renamed over
    /// the old one, so a crash leaves the old file or the new one.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let path = dir.join(KEYS_FILE);
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        writeln!(f, "current {}", self.current.to_text())?;
        if let Some((p, retire)) = &self.previous {
            writeln!(f, "previous {} {retire}", p.to_text())?;
        }
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

/// The keys a running client holds: the list (sealing key first), the transport's
/// shared [`KeySet`](branchline_transport::KeySet) built from it, and `deployment.keys`.
pub struct KeyHolder {
    dir: PathBuf,
    keys: std::sync::Mutex<Vec<DeploymentKey>>,
    set: branchline_transport::KeySet,
    fetching: std::sync::atomic::AtomicBool,
}

impl KeyHolder {
    /// `keys` must be what `set` was built from, in the same order.
    pub fn new(dir: PathBuf, keys: Vec<DeploymentKey>, set: branchline_transport::KeySet) -> Self {
        KeyHolder {
            dir,
            keys: std::sync::Mutex::new(keys),
            set,
            fetching: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Ids of the keys held, the sealing key first.
    pub fn ids(&self) -> Vec<KeyId> {
        self.set.ids()
    }

    /// Whether a held key has this id.
    pub(crate) fn holds(&self, id: KeyId) -> bool {
        self.set.holds(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<DeploymentKey>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a new key list: the endpoints first, then the file.
    fn apply(&self, keys: &mut Vec<DeploymentKey>, new: Vec<DeploymentKey>, retire_ms: u64) {
        if new.is_empty() {
            return;
        }
        *keys = new;
        self.set.replace(keys.iter().map(|k| k.derive()).collect());
        let stored = Stored {
            current: keys[0].clone(),
            previous: keys.get(1).map(|p| (p.clone(), retire_ms)),
        };
        if let Err(e) = stored.save(&self.dir) {
            tracing::error!(error = %e, file = %self.dir.join(KEYS_FILE).display(), "cannot store the deployment keys; after a restart this client may need the new key file");
        }
    }

    /// Seals with the held key `id` from now on.
    pub fn seal_with(&self, id: KeyId) {
        let mut keys = self.lock();
        let Some(i) = keys.iter().position(|k| k.derive().id() == id) else {
            return;
        };
        let mut new = keys.clone();
        let k = new.remove(i);
        new.insert(0, k);
        new.truncate(2);
        tracing::info!(key_id = %id, "sealing with the server's current deployment key");
        self.apply(&mut keys, new, u64::MAX);
    }

    /// Holds only the key `id` (the overlap is over).
    pub fn retire(&self, id: KeyId) {
        let mut keys = self.lock();
        let Some(k) = keys.iter().find(|k| k.derive().id() == id).cloned() else {
            return;
        };
        tracing::info!(key_id = %id, "the previous deployment key is retired; holding only the current one");
        self.apply(&mut keys, vec![k], 0);
    }

    /// Installs a key fetched from the server: it seals from now on; the key sealing
    /// until now is kept for opening until `retire_ms`.
    pub fn install(&self, key: DeploymentKey, retire_ms: u64) {
        let mut keys = self.lock();
        let mut new = vec![key.clone()];
        new.extend(keys.iter().filter(|k| **k != key).take(1).cloned());
        tracing::info!(key_id = %key.derive().id(), fingerprint = %key.fingerprint(), file = %self.dir.join(KEYS_FILE).display(), "moved to the rotated deployment key");
        self.apply(&mut keys, new, retire_ms);
    }

    /// Claims the one fetch allowed at a time; false when one runs.
    pub fn start_fetch(&self) -> bool {
        !self
            .fetching
            .swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// Fetches the server's current key over QUIC and installs it if its id is the one
    /// announced. Ends the fetch claimed with [`KeyHolder::start_fetch`].
    pub async fn fetch(&self, svc: &crate::Services, announced: u32) {
        use branchline_wire::large::{GetDeploymentKey, Request, Response};
        let got = svc
            .call(Request::GetDeploymentKey(GetDeploymentKey {}))
            .await;
        match got {
            Ok(Response::DeploymentKey(g)) => match <[u8; 32]>::try_from(g.key.as_slice()) {
                Ok(bytes) => {
                    let key = DeploymentKey::from_bytes(bytes);
                    let id = key.derive().id();
                    if id.0 == g.key_id && id.0 == announced {
                        self.install(key, g.retire_ms);
                    } else {
                        tracing::warn!(announced = %KeyId(announced), got = %id, "the server gave another key than it announced; asking again at the next heartbeat");
                    }
                }
                Err(_) => tracing::warn!(
                    len = g.key.len(),
                    "the server's deployment key is not 32 bytes; ignored"
                ),
            },
            Ok(other) => tracing::warn!(?other, "unexpected answer to GetDeploymentKey"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch the rotated deployment key; retrying at the next heartbeat")
            }
        }
        self.fetching
            .store(false, std::sync::atomic::Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_800_000_000_000;

    fn k(b: u8) -> DeploymentKey {
        DeploymentKey::from_bytes([b; 32])
    }

    fn id(b: u8) -> KeyId {
        k(b).derive().id()
    }

    #[test]
    fn announcements_lead_to_fetch_seal_and_retire() {
        // An older server says nothing.
        assert_eq!(decide(&[id(1)], 0, 0, T), Decision::Keep);
        assert_eq!(decide(&[id(1)], id(1).0, 0, T), Decision::Keep);
        // A rotation: fetch the new key.
        assert_eq!(decide(&[id(1)], id(2).0, T + 60_000, T), Decision::Fetch);
        // Held (e.g. read back after a restart) but not sealing: seal with it.
        assert_eq!(
            decide(&[id(1), id(2)], id(2).0, T + 60_000, T),
            Decision::Seal(id(2))
        );
        // Moved; the overlap runs: keep the old key for opening.
        assert_eq!(
            decide(&[id(2), id(1)], id(2).0, T + 60_000, T),
            Decision::Keep
        );
        // The overlap is over (the server says so, or its deadline passed).
        assert_eq!(
            decide(&[id(2), id(1)], id(2).0, 0, T),
            Decision::Retire(id(2))
        );
        assert_eq!(
            decide(&[id(2), id(1)], id(2).0, T + 60_000, T + 60_000),
            Decision::Retire(id(2))
        );
    }

    #[test]
    fn initial_keys_prefer_the_stored_ones() {
        assert_eq!(initial(&k(1), None, T), vec![k(1)]);
        let moved = Stored {
            current: k(2),
            previous: Some((k(1), T + 10)),
        };
        assert_eq!(initial(&k(1), Some(&moved), T), vec![k(2), k(1)]);
        // After the overlap the previous key is dropped, the configured one kept last.
        assert_eq!(initial(&k(1), Some(&moved), T + 10), vec![k(2), k(1)]);
        assert_eq!(initial(&k(3), Some(&moved), T + 10), vec![k(2), k(3)]);
    }

    #[test]
    fn the_file_round_trips_privately() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Stored::load(dir.path()).unwrap(), None);
        let s = Stored {
            current: k(2),
            previous: Some((k(1), T)),
        };
        s.save(dir.path()).unwrap();
        let path = dir.path().join(KEYS_FILE);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(Stored::load(dir.path()).unwrap(), Some(s));
        let alone = Stored {
            current: k(3),
            previous: None,
        };
        alone.save(dir.path()).unwrap();
        assert_eq!(Stored::load(dir.path()).unwrap(), Some(alone));
        std::fs::write(&path, "current nonsense\n").unwrap();
        assert!(Stored::load(dir.path()).unwrap_err().contains("delete it"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Stored::load(dir.path()).unwrap_err().contains("chmod 600"));
    }
}
