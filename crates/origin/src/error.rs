//! The crate's error type.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong reading from an origin. Each message says what failed
/// and what to do. [`OriginError::is_transient`] tells the retry loop which ones are
/// worth another attempt; the others are final.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OriginError {
    /// The origin string could not be parsed.
    #[error(
        "invalid origin {input:?}: {reason}; give an http:// or https:// URL, a file:///abs/path URL or an absolute path"
    )]
    InvalidLocation {
        /// The string as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// HTTP 404/410, or the local file does not exist.
    #[error("origin {location} does not exist ({detail}); check the URL or path of the package")]
    NotFound {
        /// URL or path.
        location: String,
        /// Status or OS error.
        detail: String,
    },

    /// An HTTP status that retrying will not fix (401, 403, 400, 501, ...).
    #[error(
        "origin {url} answered HTTP {status} to {request}; not retried: check the URL, access rights and the web server"
    )]
    HttpStatus {
        /// The URL.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// What was asked, e.g. `GET bytes=0-1023`.
        request: String,
    },

    /// HTTP 416: the server says the range lies outside the file.
    #[error(
        "origin {url} refused bytes {offset}..{} as outside the file (HTTP 416, file size {}); the file is shorter than expected: check that the URL names the published package",
        offset + len, size.map_or_else(|| "unknown".to_string(), |s| s.to_string())
    )]
    RangeNotSatisfiable {
        /// The URL.
        url: String,
        /// First byte asked for.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// The size the server reported, if it did.
        size: Option<u64>,
    },

    /// The server answered a range request with the whole file.
    #[error(
        "origin {url} ignored the byte range {offset}..{} and sent the whole file ({} bytes) with HTTP 200; serve the package from a web server that supports Range requests",
        offset + len, body_len.map_or_else(|| "an unknown number of".to_string(), |s| s.to_string())
    )]
    RangesIgnored {
        /// The URL.
        url: String,
        /// First byte asked for.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// Content-Length of the full response, if given.
        body_len: Option<u64>,
    },

    /// A response that breaks HTTP rules (wrong Content-Range, too long a body, redirect
    /// loop, ...).
    #[error(
        "origin {url} sent a response that does not fit the request: {detail}; the web server or a proxy in between is misbehaving"
    )]
    Protocol {
        /// The URL.
        url: String,
        /// What did not fit.
        detail: String,
    },

    /// A TLS failure (bad or self-signed certificate, handshake failure).
    #[error(
        "TLS with origin {url} failed: {detail}; check the server's certificate, or add its CA to OriginConfig::tls_roots"
    )]
    Tls {
        /// The URL.
        url: String,
        /// The TLS error.
        detail: String,
    },

    /// The caller asked for bytes beyond the end of the file.
    #[error("asked origin {location} for bytes {offset}..{} but it holds only {size} bytes; ask for a range inside the file", offset.saturating_add(*len))]
    OutOfRange {
        /// URL or path.
        location: String,
        /// First byte asked for.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// Current size of the file.
        size: u64,
    },

    /// The file at the origin changed between two reads (size, ETag or modification
    /// time differ, or the server answered 412 to `If-Match`).
    #[error(
        "origin {location} changed during the download ({detail}); the pieces read so far belong to another version: start again from the new version (it has a new content hash)"
    )]
    Changed {
        /// URL or path.
        location: String,
        /// What changed.
        detail: String,
    },

    /// A local file could not be opened, inspected or read.
    #[error("could not {action} {}: {source}; check the path and its permissions", path.display())]
    File {
        /// `open`, `stat` or `read`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A network failure: connection refused/reset, timeout, DNS. Transient.
    #[error("network error talking to origin {url}: {detail}")]
    Transport {
        /// The URL.
        url: String,
        /// The underlying error.
        detail: String,
    },

    /// HTTP 408, 429 or a 5xx other than 501/505. Transient.
    #[error("origin {url} answered HTTP {status} (temporary server-side failure)")]
    ServerBusy {
        /// The URL.
        url: String,
        /// The HTTP status code.
        status: u16,
    },

    /// The body ended before the promised number of bytes. Transient.
    #[error("origin {url} ended the response after {got} of {expected} bytes")]
    ShortBody {
        /// The URL.
        url: String,
        /// Bytes promised.
        expected: u64,
        /// Bytes received.
        got: u64,
    },

    /// Transient failures went on past the retry policy's attempts or deadline.
    #[error(
        "gave up on origin {location} after {attempts} attempt(s) in {elapsed:.1?}; last error: {last}; the origin may be down or overloaded: try again later"
    )]
    RetriesExhausted {
        /// URL or path.
        location: String,
        /// Attempts made.
        attempts: u32,
        /// Time since the first attempt began.
        elapsed: Duration,
        /// The last transient error.
        #[source]
        last: Box<OriginError>,
    },

    /// The blocking worker thread running the request panicked or was cancelled.
    #[error("internal error: the origin I/O task failed ({0}); this is a bug, please report it")]
    TaskFailed(String),
}

impl OriginError {
    /// True for failures that another attempt may cure (network errors, 408/429/5xx,
    /// short bodies).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            OriginError::Transport { .. }
                | OriginError::ServerBusy { .. }
                | OriginError::ShortBody { .. }
        )
    }
}
