//! Reading content from its **origin**: the HTTP(S) URL or local file where a published
//! package lives.
//!
//! # Model
//!
//! For each content item the server assigns exactly one client (the Central Office RVP)
//! to read it from the origin. That client reads the file piece by piece with
//! [`Origin::read_range`], verifies each piece against the BLAKE3 hash and passes it on
//! to its peers while the rest is still arriving. A download that stops half way resumes
//! by asking for the ranges it still lacks; nothing is read twice and nothing is read
//! that was not asked for (no read-ahead).
//!
//! An [`Origin`] is parsed from a string ([`Origin::parse`]): `http://…`, `https://…`,
//! `file:///abs/path` or `/abs/path`. All offsets and lengths are in **bytes**; all
//! durations are [`std::time::Duration`]s.
//!
//! * HTTP: [`Origin::size`] sends `HEAD` (falling back to `GET` with `Range: bytes=0-0`);
//!   [`Origin::read_range`] sends `GET` with `Range: bytes=a-b` and accepts only a `206`
//!   whose `Content-Range` is exactly the range asked for, or a `200` when the range is
//!   the whole file. A server that ignores ranges on a larger file is an error rather
//!   than a silent full download.
//! * File: `pread` on a file opened once, on tokio's blocking pool.
//!
//! Transient failures (connection refused/reset, timeouts, DNS failures, malformed or
//! cut-off responses, HTTP 408/429/5xx other than 501/505, a body that ends early) are retried with exponential backoff and jitter under a
//! [`RetryPolicy`]; everything else is a typed [`OriginError`] whose message says what
//! failed and what to do.
//!
//! **Consistency.** The first answer pins the file's [`Version`] (size, ETag,
//! Last-Modified or file mtime). Later ranges are sent with `If-Match` (strong ETag) or
//! `If-Unmodified-Since`, and every answer is compared with the pin, so a file replaced
//! mid-download yields [`OriginError::Changed`] instead of a mix of two versions (the
//! BLAKE3 check upstream would catch the mix too, but later and less clearly).
//!
//! # HTTP client choice
//!
//! The HTTP client is `ureq` 3 (blocking), run through `tokio::task::spawn_blocking`,
//! with rustls + ring and the webpki root store. It was chosen over hyper 1 +
//! hyper-util + tokio-rustls because it adds about six small crates (`ureq-proto`,
//! `http`, `httparse`, `base64`, `utf8-zero`, `webpki-roots`) to a workspace that
//! already has rustls and ring, against some twenty for hyper's stack, which matters on
//! a 2-core build machine. The price is one blocking-pool thread per request in flight;
//! the origin is read by one client per item with a handful of requests in flight, so
//! that is cheap, and ureq pools keep-alive connections across requests. ureq's default
//! features (gzip, which would break byte ranges) are off.
//!
//! # Testing aid
//!
//! `testserver::CountingServer` is a small HTTP/1.1 file server on tokio that counts
//! the body bytes it sends and can inject failures, for tests and benchmarks here and
//! in other crates. It is built only with the `test-util` feature, which the crates'
//! dev-dependencies turn on: it is not part of the library that clients ship.

mod error;
mod http;
mod location;
pub mod range;
mod retry;
#[cfg(feature = "test-util")]
pub mod testserver;
mod version;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;

pub use error::OriginError;
pub use location::{Location, parse_location};
pub use retry::RetryPolicy;
pub use version::Version;

/// Which certificates an HTTPS origin must chain to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TlsRoots {
    /// Mozilla's root store, built in (the `webpki-roots` crate). Needs no system files.
    #[default]
    WebPki,
    /// Only these DER-encoded certificates (an organisation's own CA, or a test CA).
    Der(Vec<Vec<u8>>),
}

/// Tuning for an [`Origin`]. `Default` suits a WAN origin.
#[derive(Debug, Clone)]
pub struct OriginConfig {
    /// Retries of transient failures, per request.
    pub retry: RetryPolicy,
    /// Limit for opening a TCP (and TLS) connection. Default 10 s.
    pub connect_timeout: Duration,
    /// Limit for one whole HTTP attempt, body included. Default 120 s, enough for a
    /// 16 MiB range at ~1 Mbit/s; raise it for bigger ranges on slow links.
    pub request_timeout: Duration,
    /// Pin the file's version and fail with [`OriginError::Changed`] when it changes.
    /// Default true.
    pub check_consistency: bool,
    /// Trust anchors for HTTPS.
    pub tls_roots: TlsRoots,
    /// Honour `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY`/`NO_PROXY` from the environment.
    /// Default true.
    pub use_env_proxy: bool,
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
            check_consistency: true,
            tls_roots: TlsRoots::WebPki,
            use_env_proxy: true,
        }
    }
}

/// A readable origin. Cheap to clone (clones share the connection pool and the pinned
/// version); safe to use from many tasks at once.
#[derive(Clone)]
pub struct Origin {
    inner: Arc<Inner>,
}

struct Inner {
    location: Location,
    name: String,
    config: OriginConfig,
    backend: Backend,
    pinned: Mutex<Option<Version>>,
}

enum Backend {
    Http {
        url: String,
        agent: ureq::Agent,
    },
    File {
        path: PathBuf,
        file: tokio::sync::OnceCell<Arc<std::fs::File>>,
    },
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin")
            .field("location", &self.inner.location)
            .field("pinned", &self.version())
            .finish()
    }
}

impl FromStr for Origin {
    type Err = OriginError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Origin::parse(s)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, OriginError> + Send + 'static,
) -> Result<T, OriginError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| OriginError::TaskFailed(e.to_string()))?
}

impl Origin {
    /// Parses `s` (see [`parse_location`]) with the default [`OriginConfig`].
    pub fn parse(s: &str) -> Result<Origin, OriginError> {
        Origin::with_config(s, OriginConfig::default())
    }

    /// Parses `s` (see [`parse_location`]) with the given configuration. Does no I/O.
    pub fn with_config(s: &str, config: OriginConfig) -> Result<Origin, OriginError> {
        let location = parse_location(s)?;
        Ok(Origin::from_location(location, config))
    }

    /// Builds an origin for an already parsed location. Does no I/O.
    pub fn from_location(location: Location, config: OriginConfig) -> Origin {
        let backend = match &location {
            Location::Http { url, .. } => Backend::Http {
                url: url.clone(),
                agent: http::build_agent(&config),
            },
            Location::File(path) => Backend::File {
                path: path.clone(),
                file: tokio::sync::OnceCell::new(),
            },
        };
        Origin {
            inner: Arc::new(Inner {
                name: location.to_string(),
                location,
                config,
                backend,
                pinned: Mutex::new(None),
            }),
        }
    }

    /// Where this origin points.
    pub fn location(&self) -> &Location {
        &self.inner.location
    }

    /// The version pinned by the reads so far (`None` before the first answer, or when
    /// consistency checks are off).
    pub fn version(&self) -> Option<Version> {
        self.inner
            .pinned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Size of the file in bytes. HTTP: `HEAD`, or `GET` of byte 0 when `HEAD` does not
    /// tell; retried on transient failures. File: its metadata.
    pub async fn size(&self) -> Result<u64, OriginError> {
        let seen = match &self.inner.backend {
            Backend::Http { url, agent } => {
                let (url, agent) = (url.clone(), agent.clone());
                self.with_retries(move || {
                    let (url, agent) = (url.clone(), agent.clone());
                    blocking(move || http::fetch_size(&agent, &url))
                })
                .await?
            }
            Backend::File { path, .. } => {
                let file = self.open_file().await?;
                let path = path.clone();
                blocking(move || file_version(&file, &path)).await?
            }
        };
        let size = seen.size.unwrap_or_default();
        self.observe(&seen)?;
        Ok(size)
    }

    /// Reads exactly `len` bytes starting at byte `offset`. `len == 0` returns an empty
    /// buffer without I/O. The whole range is held in memory, so ask for pieces (MiBs),
    /// not whole files. Retried on transient failures; a range past the end of the file
    /// is [`OriginError::OutOfRange`] (when the size is known) or
    /// [`OriginError::RangeNotSatisfiable`] (when the server says so).
    pub async fn read_range(&self, offset: u64, len: u64) -> Result<Bytes, OriginError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let Some(end) = offset.checked_add(len) else {
            return Err(self.out_of_range(offset, len, u64::MAX));
        };
        let pinned = self.pin_snapshot();
        if let Some(size) = pinned.as_ref().and_then(|v| v.size)
            && end > size
        {
            return Err(self.out_of_range(offset, len, size));
        }
        let (bytes, seen) = match &self.inner.backend {
            Backend::Http { url, agent } => {
                let (url, agent) = (url.clone(), agent.clone());
                self.with_retries(move || {
                    let (url, agent, pinned) = (url.clone(), agent.clone(), pinned.clone());
                    blocking(move || http::fetch_range(&agent, &url, offset, len, pinned.as_ref()))
                })
                .await?
            }
            Backend::File { path, .. } => {
                let file = self.open_file().await?;
                let (path, name) = (path.clone(), self.inner.name.clone());
                blocking(move || file_read(&file, &path, &name, offset, len, pinned.as_ref()))
                    .await?
            }
        };
        self.observe(&seen)?;
        Ok(bytes)
    }

    fn out_of_range(&self, offset: u64, len: u64, size: u64) -> OriginError {
        OriginError::OutOfRange {
            location: self.inner.name.clone(),
            offset,
            len,
            size,
        }
    }

    fn pin_snapshot(&self) -> Option<Version> {
        if self.inner.config.check_consistency {
            self.version()
        } else {
            None
        }
    }

    /// Merges what an answer said about the version into the pin.
    fn observe(&self, seen: &Version) -> Result<(), OriginError> {
        if !self.inner.config.check_consistency {
            return Ok(());
        }
        let mut pinned = self.inner.pinned.lock().unwrap_or_else(|p| p.into_inner());
        match pinned.as_mut() {
            None => {
                *pinned = Some(seen.clone());
                Ok(())
            }
            Some(pin) => pin
                .check_and_merge(seen)
                .map_err(|detail| OriginError::Changed {
                    location: self.inner.name.clone(),
                    detail,
                }),
        }
    }

    async fn open_file(&self) -> Result<Arc<std::fs::File>, OriginError> {
        let Backend::File { path, file } = &self.inner.backend else {
            unreachable!("open_file is only called for file origins");
        };
        let file = file
            .get_or_try_init(|| {
                let path = path.clone();
                blocking(move || {
                    std::fs::File::open(&path)
                        .map(Arc::new)
                        .map_err(|e| file_error("open", &path, e))
                })
            })
            .await?;
        Ok(Arc::clone(file))
    }

    async fn with_retries<T, F, Fut>(&self, mut attempt: F) -> Result<T, OriginError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OriginError>>,
    {
        let policy = &self.inner.config.retry;
        let start = tokio::time::Instant::now();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() => {
                    let elapsed = start.elapsed();
                    match policy.next_delay(attempts, elapsed, rand::random::<f64>()) {
                        Some(delay) => {
                            tracing::warn!(origin = %self.inner.name, attempts, ?delay, error = %e, "origin request failed, retrying");
                            tokio::time::sleep(delay).await;
                        }
                        None => {
                            return Err(OriginError::RetriesExhausted {
                                location: self.inner.name.clone(),
                                attempts,
                                elapsed,
                                last: Box::new(e),
                            });
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn file_error(action: &'static str, path: &Path, e: std::io::Error) -> OriginError {
    if e.kind() == std::io::ErrorKind::NotFound {
        OriginError::NotFound {
            location: path.display().to_string(),
            detail: e.to_string(),
        }
    } else {
        OriginError::File {
            action,
            path: path.to_path_buf(),
            source: e,
        }
    }
}

fn file_version(file: &std::fs::File, path: &Path) -> Result<Version, OriginError> {
    let meta = file.metadata().map_err(|e| file_error("stat", path, e))?;
    if !meta.is_file() {
        return Err(OriginError::File {
            action: "read",
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos().to_string());
    Ok(Version {
        size: Some(meta.len()),
        etag: None,
        last_modified: mtime,
    })
}

fn file_read(
    file: &std::fs::File,
    path: &Path,
    name: &str,
    offset: u64,
    len: u64,
    pinned: Option<&Version>,
) -> Result<(Bytes, Version), OriginError> {
    let seen = file_version(file, path)?;
    if let Some(p) = pinned {
        p.clone()
            .check_and_merge(&seen)
            .map_err(|detail| OriginError::Changed {
                location: name.to_string(),
                detail,
            })?;
    }
    let size = seen.size.unwrap_or_default();
    if offset.saturating_add(len) > size {
        return Err(OriginError::OutOfRange {
            location: name.to_string(),
            offset,
            len,
            size,
        });
    }
    let n = usize::try_from(len).map_err(|_| OriginError::OutOfRange {
        location: name.to_string(),
        offset,
        len,
        size,
    })?;
    let mut buf = vec![0u8; n];
    match file.read_exact_at(&mut buf, offset) {
        Ok(()) => Ok((Bytes::from(buf), seen)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(OriginError::Changed {
            location: name.to_string(),
            detail: "it became shorter while being read".to_string(),
        }),
        Err(e) => Err(file_error("read", path, e)),
    }
}
