//! Failures of the command line and the exit codes they map to.

/// Exit codes, documented in README.md.
pub mod exit {
    /// Something failed (the message says what).
    pub const FAILURE: u8 = 1;
    /// Bad command line or configuration.
    pub const USAGE: u8 = 2;
    /// The deployment key does not match the server's.
    pub const KEY_MISMATCH: u8 = 3;
    /// The server did not answer before the deadline.
    pub const UNREACHABLE: u8 = 4;
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Fail {
    pub code: u8,
    pub message: String,
}

impl Fail {
    pub fn new(code: u8, message: impl Into<String>) -> Fail {
        Fail {
            code,
            message: message.into(),
        }
    }
}

impl From<branchline_transport::RequestError> for Fail {
    fn from(e: branchline_transport::RequestError) -> Fail {
        use branchline_transport::RequestError as E;
        let code = match &e {
            E::KeyMismatch { .. } => exit::KEY_MISMATCH,
            E::Timeout { .. } => exit::UNREACHABLE,
            _ => exit::FAILURE,
        };
        Fail::new(code, e.to_string())
    }
}
