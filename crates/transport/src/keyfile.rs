//! Reading and creating the deployment key file (`deployment.key`, mode 0600), and writing
//! other private files (credentials, tokens) the same atomic way.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use branchline_wire::DeploymentKey;
use branchline_wire::key::KeyParseError;

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file cannot be read.
    #[error("cannot read the deployment key file {path}: {source}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file's text is not a deployment key.
    #[error("{path} does not hold a deployment key: {source}")]
    Parse {
        /// The key file.
        path: PathBuf,
        /// What is wrong with the text.
        source: KeyParseError,
    },
    #[error(
        "the deployment key file {path} has mode {mode:o}, so other users can read it; run `chmod 600 {path}` (and keep it secret)"
    )]
    /// Users other than the owner may read the file.
    TooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A new key file cannot be written.
    #[error("cannot create the deployment key file {path}: {source}")]
    Create {
        /// The key file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Reads a deployment key from `path`, refusing a file that group or others may access.
pub fn read_key_file(path: &Path) -> Result<DeploymentKey, KeyFileError> {
    let meta = std::fs::metadata(path).map_err(|source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.parse().map_err(|source| KeyFileError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Writes `key` to a new file at `path` with mode 0600; refuses to overwrite.
pub fn create_key_file(path: &Path, key: &DeploymentKey) -> Result<(), KeyFileError> {
    create_private(path, key_line(key).as_bytes()).map_err(|source| KeyFileError::Create {
        path: path.to_owned(),
        source,
    })
}

/// Writes `key` to `path` (mode 0600), replacing the file atomically: a temporary file
/// beside it is written and synced, then renamed over `path`, so a crash leaves the old
/// key or the new one, never a torn file (key rotation).
pub fn write_key_file(path: &Path, key: &DeploymentKey) -> Result<(), KeyFileError> {
    write_private_file(path, key_line(key).as_bytes()).map_err(|source| KeyFileError::Create {
        path: path.to_owned(),
        source,
    })
}

/// A key file's text: the key, then a newline.
fn key_line(key: &DeploymentKey) -> String {
    format!("{}\n", key.to_text())
}

/// Writes `contents` to `path` (mode 0600), replacing the file atomically: a temporary
/// file beside it (`path` with `.tmp` appended) is written and synced, then renamed over
/// `path`, and the directory is synced, so a crash leaves the old contents or the new
/// ones, never a torn file. For keys, credentials and tokens.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    create_private(&tmp, contents)?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Writes `contents` to a new file at `path` with mode 0600 and syncs it; refuses to
/// overwrite.
fn create_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    // The umask cannot widen 0600, but make the mode explicit regardless.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(contents)?;
    f.sync_all()
}

/// Creates `dir` (and its parents) with mode 0700, and narrows an existing `dir` that group
/// or others may enter to 0700 (logged), so nothing inside (keys, databases, caches) is
/// reachable by other users. Returns whether the mode had to be narrowed.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return Ok(false);
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))?;
    tracing::warn!(
        dir = %dir.display(),
        was = format!("{mode:o}"),
        now = format!("{:o}", mode & 0o700),
        "data directory was open to other users; narrowed it"
    );
    Ok(true)
}

/// Narrows `path` to mode 0600 if it exists (a database and its journal files).
pub fn restrict_file(path: &Path) -> std::io::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_read_with_mode_0600() {
        let dir = std::env::temp_dir().join(format!("bl-keyfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("deployment.key");
        let _ = std::fs::remove_file(&path);
        let key = DeploymentKey::from_bytes([4; 32]);
        create_key_file(&path, &key).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_key_file(&path).unwrap(), key);
        assert!(matches!(
            create_key_file(&path, &key),
            Err(KeyFileError::Create { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let msg = read_key_file(&path).unwrap_err().to_string();
        assert!(msg.contains("chmod 600"), "{msg}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "garbage").unwrap();
        let msg = read_key_file(&path).unwrap_err().to_string();
        assert!(msg.contains("does not hold a deployment key"), "{msg}");
        // Replacing is atomic and keeps the mode.
        let other = DeploymentKey::from_bytes([5; 32]);
        write_key_file(&path, &other).unwrap();
        assert_eq!(read_key_file(&path).unwrap(), other);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
        let msg = read_key_file(&path).unwrap_err().to_string();
        assert!(msg.contains("cannot read"), "{msg}");
    }

    #[test]
    fn data_directories_are_private() {
        let root = std::env::temp_dir().join(format!("bl-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("a/b");
        assert!(!ensure_private_dir(&dir).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(ensure_private_dir(&dir).unwrap(), "narrowed");
        assert_eq!(mode(&dir), 0o700);
        let f = dir.join("db");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        restrict_file(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
        restrict_file(&dir.join("absent")).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }
}
