//! The client's identity and its claim on the data directory.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use branchline_wire::ClientId;

/// File holding the client id.
pub const ID_FILE: &str = "client-id";
/// Lock file: one client per data directory.
pub const LOCK_FILE: &str = "client.lock";

/// Why the client cannot take its data directory or read its id.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The directory, its lock file or its id file cannot be created, read or written.
    #[error("cannot use the data directory {path}: {source}")]
    DataDir {
        /// The data directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Another process holds the directory's lock (`client.lock`).
    #[error(
        "another Branchline client is already using the data directory {0}; give each client its own --data-dir"
    )]
    InUse(PathBuf),
    #[error("{path} is corrupt ({reason}); delete it to enrol this machine as a new client")]
    /// The id file does not hold 32 lowercase hex digits. Deleting it makes this machine a
    /// new client (the server sees a new id).
    Corrupt {
        /// The id file (`DATA_DIR/client-id`).
        path: PathBuf,
        /// What is wrong with its text.
        reason: String,
    },
}

/// An exclusive lock on `DIR/client.lock` (`flock` on Unix, `LockFileEx` on Windows,
/// through [`crate::platform::try_lock_exclusive`]), released when dropped (or when the
/// process dies, however it dies).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Creates `dir` (mode 0700) if needed and locks it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, IdentityError> {
        let err = |source| IdentityError::DataDir {
            path: dir.to_owned(),
            source,
        };
        branchline_transport::ensure_private_dir(dir).map_err(err)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(err)?;
        if !crate::platform::try_lock_exclusive(&file).map_err(err)? {
            return Err(IdentityError::InUse(dir.to_owned()));
        }
        Ok(DataDirLock { _file: file })
    }
}

/// Reads the client id from `DIR/client-id`, creating a random one on first start.
pub fn load_or_create(dir: &Path) -> Result<ClientId, IdentityError> {
    let path = dir.join(ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            text.trim()
                .parse()
                .map_err(|e: branchline_wire::Invalid| IdentityError::Corrupt {
                    path: path.clone(),
                    reason: e.reason,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = ClientId(rand::random());
            let err = |source| IdentityError::DataDir {
                path: dir.to_owned(),
                source,
            };
            // Write a temporary file, sync it, then rename: a crash leaves either no id
            // or a whole one.
            let tmp = dir.join(format!("{ID_FILE}.tmp"));
            let mut f = File::create(&tmp).map_err(err)?;
            writeln!(f, "{id}").map_err(err)?;
            f.sync_all().map_err(err)?;
            std::fs::rename(&tmp, &path).map_err(err)?;
            File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
            Ok(id)
        }
        Err(source) => Err(IdentityError::DataDir {
            path: dir.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bl-ident-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn id_is_created_once_and_kept() {
        let d = tmp("keep");
        let _lock = DataDirLock::acquire(&d).unwrap();
        let a = load_or_create(&d).unwrap();
        let b = load_or_create(&d).unwrap();
        assert_eq!(a, b);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_id_says_how_to_recover() {
        let d = tmp("corrupt");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(ID_FILE), "not-an-id").unwrap();
        let msg = load_or_create(&d).unwrap_err().to_string();
        assert!(msg.contains("delete it"), "{msg}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn second_lock_is_refused_until_released() {
        let d = tmp("lock");
        let first = DataDirLock::acquire(&d).unwrap();
        assert!(matches!(
            DataDirLock::acquire(&d),
            Err(IdentityError::InUse(_))
        ));
        drop(first);
        DataDirLock::acquire(&d).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }
}
