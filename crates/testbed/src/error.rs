//! Errors of the test bed. Every message says what failed and, where it can,
//! what to do about it.

/// Result with the test bed's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while building, using or tearing down a test bed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Network namespaces, veths, qdiscs and packet sockets need root.
    #[error(
        "the test bed needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) for network namespaces; run as root"
    )]
    NotRoot,
    /// The topology file is malformed or asks for something unsupported.
    #[error("bad topology: {0}")]
    Topology(String),
    /// A host name that the topology does not define.
    #[error("no host named {0:?} in this topology")]
    UnknownHost(String),
    /// An office name that the topology does not define.
    #[error("no office named {0:?} in this topology")]
    UnknownOffice(String),
    /// An external command (ip, tc, nft, ...) failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
    /// An external program is missing.
    #[error("cannot run `{program}`: {source}; install it (Debian package {package})")]
    MissingProgram {
        /// Program name.
        program: String,
        /// Debian package that provides it.
        package: String,
        /// The spawn error.
        source: std::io::Error,
    },
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Teardown could not remove everything.
    #[error("teardown left things behind: {0}")]
    Teardown(String),
    /// A baseline measurement failed.
    #[error("baseline failed: {0}")]
    Baseline(String),
}

impl Error {
    /// Wraps the last OS error with a description of the failed step.
    pub fn last_os(what: impl Into<String>) -> Error {
        Error::Io {
            what: what.into(),
            source: std::io::Error::last_os_error(),
        }
    }

    /// Wraps an I/O error with a description of the failed step.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}
