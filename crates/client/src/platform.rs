//! The client's platform layer: every call into the operating system that portable
//! `std` does not cover goes through this module, so that porting the client means
//! reading one file.
//!
//! | need | how | portable? |
//! |---|---|---|
//! | host name | `whoami::hostname` | Unix, Windows, macOS |
//! | interface addresses and prefixes | `if-addrs` | Unix, Windows, macOS |
//! | free space on the cache's disk | `fs4::statvfs` (through `branchline-store`) | Unix, Windows, macOS |
//! | one daemon per data directory | `std::fs::File::try_lock` | Unix, Windows, macOS |
//! | the local API (`branchline get`) | a Unix socket, [`local_socket`] | **`cfg(unix)` only** |
//!
//! The `cfg(unix)` boundaries of the client (also listed in the crate's README):
//! - [`local_socket`]: the local API is a Unix socket `client.sock`, mode 0600, in the
//!   data directory. On Windows it is not built yet; the plan is a named pipe
//!   (`tokio::net::windows::named_pipe`) whose security descriptor admits only the
//!   daemon's user, carrying the same JSON lines.
//! - Outside this crate, `branchline-store` reads and writes pieces with positioned I/O
//!   (`std::os::unix::fs::FileExt`; Windows has `seek_read`/`seek_write`), and
//!   `branchline-transport` and `branchline-quic` set private file modes (0600/0700)
//!   through `std::os::unix::fs`.

use std::fs::File;
use std::net::IpAddr;
use std::path::Path;

/// The host's name, or `unknown-host` if it cannot be read.
pub fn hostname() -> String {
    match whoami::hostname() {
        Ok(name) if !name.trim().is_empty() => name.trim().to_owned(),
        _ => "unknown-host".into(),
    }
}

/// The prefix length of the interface that carries `addr`, or of a loopback interface
/// whose subnet holds it (every 127.x address is carried by `lo`); `None` when no
/// interface does or the interfaces cannot be listed.
pub fn interface_prefix(addr: IpAddr) -> Option<u8> {
    let interfaces = match if_addrs::get_if_addrs() {
        Ok(list) => list,
        Err(e) => {
            tracing::debug!(error = %e, "cannot list the network interfaces");
            return None;
        }
    };
    let exact = interfaces.iter().find_map(|i| match (&i.addr, addr) {
        (if_addrs::IfAddr::V4(a), IpAddr::V4(want)) if a.ip == want => Some(a.prefixlen),
        (if_addrs::IfAddr::V6(a), IpAddr::V6(want)) if a.ip == want => Some(a.prefixlen),
        _ => None,
    });
    exact.or_else(|| {
        interfaces.iter().find_map(|i| match (&i.addr, addr) {
            (if_addrs::IfAddr::V4(a), IpAddr::V4(_))
                if i.is_loopback()
                    && branchline_wire::validate::Subnet::of(a.ip.into(), a.prefixlen)
                        .contains(addr) =>
            {
                Some(a.prefixlen)
            }
            _ => None,
        })
    })
}

/// Bytes available to this user on the file system holding `path`.
pub fn free_space(path: &Path) -> Option<u64> {
    branchline_store::storage::statvfs(path)
        .ok()
        .map(|s| s.available)
}

/// Takes an exclusive lock on `file` without waiting: `Ok(false)` when another process
/// (or another handle in this one) holds it. The lock goes with the file handle, so the
/// OS releases it when the process dies, however it dies.
pub fn try_lock_exclusive(file: &File) -> std::io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// The local API's transport: a Unix socket in the data directory, mode 0600.
#[cfg(unix)]
pub mod local_socket {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    /// The daemon's end: accepts connections.
    pub type Listener = tokio::net::UnixListener;
    /// One connection, either end.
    pub type Stream = tokio::net::UnixStream;
    /// The writing half of a [`Stream`] split in two.
    pub type WriteHalf = tokio::net::unix::OwnedWriteHalf;

    /// Binds the socket at `path`, replacing a stale one left by a killed daemon (the
    /// caller must hold the data-directory lock, so no live daemon owns it), and makes
    /// it readable and writable by this user only.
    pub fn bind(path: &Path) -> std::io::Result<Listener> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = Listener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(listener)
    }

    /// Connects to the daemon's socket at `path`.
    pub async fn connect(path: &Path) -> std::io::Result<Stream> {
        Stream::connect(path).await
    }
}

#[cfg(not(unix))]
compile_error!(
    "the client's local API needs a Unix socket; the Windows named pipe is not built yet (see crates/client/README.md, \"Platform layer\")"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_has_a_name() {
        assert!(!hostname().is_empty());
    }

    #[test]
    fn loopback_addresses_have_the_loopback_prefix() {
        assert_eq!(interface_prefix("127.0.0.1".parse().unwrap()), Some(8));
        assert_eq!(interface_prefix("127.45.6.7".parse().unwrap()), Some(8));
        assert_eq!(interface_prefix("192.0.2.55".parse().unwrap()), None);
    }

    #[test]
    fn a_second_lock_on_the_same_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("lock");
        let a = File::create(&path).unwrap();
        let b = File::open(&path).unwrap();
        assert!(try_lock_exclusive(&a).unwrap());
        assert!(!try_lock_exclusive(&b).unwrap());
        drop(a);
        assert!(try_lock_exclusive(&b).unwrap());
    }

    #[tokio::test]
    async fn the_local_socket_is_private_and_replaces_a_stale_one() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("s.sock");
        std::fs::write(&path, b"stale").unwrap();
        let listener = local_socket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (client, server) = tokio::join!(local_socket::connect(&path), listener.accept());
        client.unwrap();
        server.unwrap();
    }
}
