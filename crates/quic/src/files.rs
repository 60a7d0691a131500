//! Writing and reading the small PEM/text files of identities.
//!
//! Files are written to a temporary name in the same directory and renamed into
//! place, so a crash never leaves a half-written key. Private keys are created with
//! mode 0600 from the start (never world-readable, not even briefly).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// A file of an identity could not be read or written.
#[derive(Debug, Error)]
pub enum FileError {
    /// Reading failed.
    #[error("cannot read {path}: {source}; check that the file exists and is readable")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing failed.
    #[error("cannot write {path}: {source}; check that the directory exists and is writable")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A private key file can be read by other users.
    #[error(
        "private key {path} has mode {mode:o}, readable by other users; run `chmod 600 {path}`"
    )]
    KeyTooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Mode of private key files.
pub(crate) const KEY_MODE: u32 = 0o600;
/// Mode of certificates and other public files.
pub(crate) const PUBLIC_MODE: u32 = 0o644;

/// Writes `contents` to `path` atomically with permission bits `mode`.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    let err = |source| FileError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(err)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    // The umask may have narrowed the mode; set it exactly.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

/// Reads a whole file as text.
pub(crate) fn read_text(path: &Path) -> Result<String, FileError> {
    fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads a private key file, refusing one that group or others can read.
pub(crate) fn read_key(path: &Path) -> Result<String, FileError> {
    let meta = fs::metadata(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(FileError::KeyTooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    read_text(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_private_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("k.pem");
        write_atomic(&path, b"secret", KEY_MODE).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_key(&path).unwrap(), "secret");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(read_key(&path), Err(FileError::KeyTooOpen { .. })));
    }

    #[test]
    fn rewrite_replaces_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.pem");
        write_atomic(&path, b"one", PUBLIC_MODE).unwrap();
        write_atomic(&path, b"two", PUBLIC_MODE).unwrap();
        assert_eq!(read_text(&path).unwrap(), "two");
        assert!(matches!(
            read_text(&dir.path().join("missing")),
            Err(FileError::Read { .. })
        ));
    }
}
