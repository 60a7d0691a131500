//! Reading and creating the deployment key file (`deployment.key`, mode 0600).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use branchline_wire::DeploymentKey;
use branchline_wire::key::KeyParseError;

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the deployment key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} does not hold a deployment key: {source}")]
    Parse {
        path: PathBuf,
        source: KeyParseError,
    },
    #[error("cannot create the deployment key file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads a deployment key from `path`.
pub fn read_key_file(path: &Path) -> Result<DeploymentKey, KeyFileError> {
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
    let err = |source| KeyFileError::Create {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    // The umask cannot widen 0600, but make the mode explicit regardless.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(err)?;
    writeln!(f, "{}", key.to_text()).map_err(err)?;
    f.sync_all().map_err(err)?;
    Ok(())
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
        std::fs::write(&path, "garbage").unwrap();
        let msg = read_key_file(&path).unwrap_err().to_string();
        assert!(msg.contains("does not hold a deployment key"), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
        let msg = read_key_file(&path).unwrap_err().to_string();
        assert!(msg.contains("cannot read"), "{msg}");
    }
}
