//! The HTTP(S) origin: response checks (pure, on a [`Head`]) and the blocking ureq calls
//! that the async [`crate::Origin`] runs on tokio's blocking pool.

use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use ureq::http::{HeaderMap, Response};

use crate::range::{ContentRange, parse_content_range};
use crate::{OriginConfig, OriginError, TlsRoots, Version};

/// The parts of a response head that the checks look at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Head {
    pub status: u16,
    pub content_length: Option<u64>,
    pub content_range: Option<String>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Head {
    fn from_headers(status: u16, h: &HeaderMap) -> Head {
        let get = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().to_string())
        };
        Head {
            status,
            content_length: get("content-length").and_then(|s| s.parse().ok()),
            content_range: get("content-range"),
            etag: get("etag"),
            last_modified: get("last-modified"),
        }
    }

    fn version(&self, size: Option<u64>) -> Version {
        Version {
            size,
            etag: self.etag.clone(),
            last_modified: self.last_modified.clone(),
        }
    }
}

/// The error for a status that is not the success the request expected.
pub(crate) fn status_error(
    url: &str,
    head: &Head,
    request: &str,
    offset: u64,
    len: u64,
) -> OriginError {
    let status = head.status;
    match status {
        404 | 410 => OriginError::NotFound {
            location: url.to_string(),
            detail: format!("HTTP {status}"),
        },
        412 => OriginError::Changed {
            location: url.to_string(),
            detail: "the server answered 412 Precondition Failed to If-Match/If-Unmodified-Since"
                .to_string(),
        },
        416 => OriginError::RangeNotSatisfiable {
            url: url.to_string(),
            offset,
            len,
            size: match head.content_range.as_deref().and_then(parse_content_range) {
                Some(ContentRange::Unsatisfied { total }) => Some(total),
                _ => None,
            },
        },
        408 | 429 => OriginError::ServerBusy {
            url: url.to_string(),
            status,
        },
        500..=599 if status != 501 && status != 505 => OriginError::ServerBusy {
            url: url.to_string(),
            status,
        },
        _ => OriginError::HttpStatus {
            url: url.to_string(),
            status,
            request: request.to_string(),
        },
    }
}

/// Checks the head of the answer to `GET` with `Range: bytes=offset-(offset+len-1)`
/// (`len` ≥ 1). On success the body to read is exactly `len` bytes; returns what the
/// response says about the file's version.
pub(crate) fn check_range_head(
    url: &str,
    head: &Head,
    offset: u64,
    len: u64,
) -> Result<Version, OriginError> {
    let end = offset + len - 1;
    match head.status {
        206 => {
            let cr = head
                .content_range
                .as_deref()
                .ok_or_else(|| OriginError::Protocol {
                    url: url.to_string(),
                    detail: "206 Partial Content without a Content-Range header".to_string(),
                })?;
            match parse_content_range(cr) {
                Some(ContentRange::Bytes {
                    start,
                    end: e,
                    total,
                }) if start == offset && e == end => {
                    if let Some(cl) = head.content_length
                        && cl != len
                    {
                        return Err(OriginError::Protocol {
                            url: url.to_string(),
                            detail: format!("Content-Range {cr:?} but Content-Length {cl}"),
                        });
                    }
                    Ok(head.version(total))
                }
                _ => Err(OriginError::Protocol {
                    url: url.to_string(),
                    detail: format!("asked for bytes {offset}-{end}, got Content-Range {cr:?}"),
                }),
            }
        }
        200 => {
            if offset == 0 && head.content_length == Some(len) {
                Ok(head.version(Some(len)))
            } else {
                Err(OriginError::RangesIgnored {
                    url: url.to_string(),
                    offset,
                    len,
                    body_len: head.content_length,
                })
            }
        }
        _ => Err(status_error(
            url,
            head,
            &format!("GET bytes={offset}-{end}"),
            offset,
            len,
        )),
    }
}

/// What a `HEAD` answer says about the size.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeadSize {
    Known(Version),
    /// HEAD is not usable (not allowed, or no Content-Length): ask with `GET bytes=0-0`.
    AskWithGet,
}

pub(crate) fn check_head_for_size(url: &str, head: &Head) -> Result<HeadSize, OriginError> {
    match head.status {
        200 => Ok(match head.content_length {
            Some(n) => HeadSize::Known(head.version(Some(n))),
            None => HeadSize::AskWithGet,
        }),
        405 | 501 => Ok(HeadSize::AskWithGet),
        _ => Err(status_error(url, head, "HEAD", 0, 0)),
    }
}

/// Checks the answer to `GET` with `Range: bytes=0-0`. Returns the version (with its
/// size) and how many body bytes must be read and discarded to keep the connection.
pub(crate) fn check_probe_for_size(url: &str, head: &Head) -> Result<(Version, u64), OriginError> {
    match head.status {
        206 => match head.content_range.as_deref().and_then(parse_content_range) {
            Some(ContentRange::Bytes { start: 0, end: 0, total: Some(t) }) => Ok((head.version(Some(t)), 1)),
            _ => Err(OriginError::Protocol {
                url: url.to_string(),
                detail: format!(
                    "asked for bytes 0-0 to learn the size, got Content-Range {:?}",
                    head.content_range
                ),
            }),
        },
        // An empty file: nothing is satisfiable.
        416 => match head.content_range.as_deref().and_then(parse_content_range) {
            Some(ContentRange::Unsatisfied { total: 0 }) => Ok((head.version(Some(0)), 0)),
            _ => Err(status_error(url, head, "GET bytes=0-0", 0, 1)),
        },
        200 => match head.content_length {
            // Ranges are ignored here; size() still answers, read_range() will report it.
            Some(n) => Ok((head.version(Some(n)), u64::MAX)),
            None => Err(OriginError::Protocol {
                url: url.to_string(),
                detail: "neither HEAD nor a ranged GET told the file size (no Content-Length, no Content-Range)"
                    .to_string(),
            }),
        },
        _ => Err(status_error(url, head, "GET bytes=0-0", 0, 1)),
    }
}

/// Builds the ureq agent: no gzip, HTTP errors returned as responses, rustls with ring.
pub(crate) fn build_agent(cfg: &OriginConfig) -> ureq::Agent {
    use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
    let roots = match &cfg.tls_roots {
        TlsRoots::WebPki => RootCerts::WebPki,
        TlsRoots::Der(certs) => RootCerts::Specific(Arc::new(
            certs
                .iter()
                .map(|der| Certificate::from_der(der).to_owned())
                .collect(),
        )),
    };
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(roots)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build();
    let mut builder = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(cfg.connect_timeout))
        .timeout_global(Some(cfg.request_timeout))
        .user_agent(format!("branchline-origin/{}", env!("CARGO_PKG_VERSION")))
        .tls_config(tls);
    if !cfg.use_env_proxy {
        builder = builder.proxy(None);
    }
    builder.build().into()
}

fn map_ureq_error(url: &str, e: ureq::Error) -> OriginError {
    use ureq::Error as E;
    let tls = |detail: String| OriginError::Tls {
        url: url.to_string(),
        detail,
    };
    let transport = |detail: String| OriginError::Transport {
        url: url.to_string(),
        detail,
    };
    match e {
        E::Io(io) => match io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(r) => tls(r.to_string()),
            None => transport(io.to_string()),
        },
        E::Timeout(t) => transport(format!("timed out ({t})")),
        E::HostNotFound => transport("host name not found (DNS)".to_string()),
        E::ConnectionFailed => transport("connection failed".to_string()),
        E::Protocol(p) => transport(format!("malformed or cut-off response ({p})")),
        E::BodyStalled => transport("the response body stalled".to_string()),
        E::Rustls(r) => tls(r.to_string()),
        E::Tls(s) => tls(s.to_string()),
        E::Pem(p) => tls(p.to_string()),
        E::TlsRequired => tls("the server requires TLS".to_string()),
        other => OriginError::Protocol {
            url: url.to_string(),
            detail: other.to_string(),
        },
    }
}

fn conditional(
    req: ureq::RequestBuilder<ureq::typestate::WithoutBody>,
    pinned: Option<&Version>,
) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
    match pinned {
        Some(v) => match (v.strong_etag(), v.last_modified.as_deref()) {
            (Some(etag), _) => req.header("If-Match", etag),
            (None, Some(lm)) => req.header("If-Unmodified-Since", lm),
            (None, None) => req,
        },
        None => req,
    }
}

fn head_of(resp: &Response<ureq::Body>) -> Head {
    Head::from_headers(resp.status().as_u16(), resp.headers())
}

/// Reads exactly `len` bytes, then makes sure the body ends there (which also lets ureq
/// reuse the connection).
fn read_exact_body(
    url: &str,
    resp: &mut Response<ureq::Body>,
    len: u64,
) -> Result<Bytes, OriginError> {
    let n = usize::try_from(len).map_err(|_| OriginError::Protocol {
        url: url.to_string(),
        detail: format!("a {len}-byte range does not fit in memory"),
    })?;
    let mut buf = vec![0u8; n];
    let mut filled = 0usize;
    let mut reader = resp.body_mut().as_reader();
    let short = |got: usize| OriginError::ShortBody {
        url: url.to_string(),
        expected: len,
        got: got as u64,
    };
    while filled < n {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => return Err(short(filled)),
            Ok(k) => filled += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(url, error = %e, got = filled, "origin body read failed");
                return Err(short(filled));
            }
        }
    }
    let mut extra = [0u8; 1];
    match reader.read(&mut extra) {
        Ok(0) => Ok(Bytes::from(buf)),
        Ok(_) => Err(OriginError::Protocol {
            url: url.to_string(),
            detail: format!("the body is longer than the {len} bytes asked for"),
        }),
        // All asked-for bytes arrived; a failure afterwards only costs the connection.
        Err(_) => Ok(Bytes::from(buf)),
    }
}

/// One attempt at `GET` of bytes `offset..offset+len` (`len` ≥ 1). Checks the answer
/// against the `pinned` version before reading the body.
pub(crate) fn fetch_range(
    agent: &ureq::Agent,
    url: &str,
    offset: u64,
    len: u64,
    pinned: Option<&Version>,
) -> Result<(Bytes, Version), OriginError> {
    let end = offset + len - 1;
    let req = conditional(
        agent
            .get(url)
            .header("Range", format!("bytes={offset}-{end}")),
        pinned,
    );
    let mut resp = req.call().map_err(|e| map_ureq_error(url, e))?;
    let head = head_of(&resp);
    let seen = check_range_head(url, &head, offset, len)?;
    if let Some(p) = pinned {
        p.clone()
            .check_and_merge(&seen)
            .map_err(|detail| OriginError::Changed {
                location: url.to_string(),
                detail,
            })?;
    }
    let body = read_exact_body(url, &mut resp, len)?;
    Ok((body, seen))
}

/// One attempt at learning the size: `HEAD`, falling back to `GET bytes=0-0`.
pub(crate) fn fetch_size(agent: &ureq::Agent, url: &str) -> Result<Version, OriginError> {
    let resp = agent.head(url).call().map_err(|e| map_ureq_error(url, e))?;
    if let HeadSize::Known(v) = check_head_for_size(url, &head_of(&resp))? {
        return Ok(v);
    }
    drop(resp);
    let mut resp = agent
        .get(url)
        .header("Range", "bytes=0-0")
        .call()
        .map_err(|e| map_ureq_error(url, e))?;
    let (v, discard) = check_probe_for_size(url, &head_of(&resp))?;
    if discard == 1 {
        read_exact_body(url, &mut resp, 1)?;
    }
    // discard == u64::MAX: a full body we do not want; dropping the response closes
    // the connection instead of downloading it.
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "http://o/x";

    fn head(status: u16, cl: Option<u64>, cr: Option<&str>) -> Head {
        Head {
            status,
            content_length: cl,
            content_range: cr.map(str::to_string),
            etag: Some("\"e\"".into()),
            last_modified: None,
        }
    }

    #[test]
    fn partial_content_must_match_the_request() {
        let v =
            check_range_head(U, &head(206, Some(10), Some("bytes 100-109/1000")), 100, 10).unwrap();
        assert_eq!(v.size, Some(1000));
        assert_eq!(v.etag.as_deref(), Some("\"e\""));
        let wrong = check_range_head(U, &head(206, Some(10), Some("bytes 0-9/1000")), 100, 10);
        assert!(
            matches!(wrong, Err(OriginError::Protocol { .. })),
            "{wrong:?}"
        );
        let missing = check_range_head(U, &head(206, Some(10), None), 100, 10);
        assert!(matches!(missing, Err(OriginError::Protocol { .. })));
        let bad_len =
            check_range_head(U, &head(206, Some(11), Some("bytes 100-109/1000")), 100, 10);
        assert!(matches!(bad_len, Err(OriginError::Protocol { .. })));
    }

    #[test]
    fn full_body_is_accepted_only_for_the_whole_file() {
        assert_eq!(
            check_range_head(U, &head(200, Some(10), None), 0, 10)
                .unwrap()
                .size,
            Some(10)
        );
        let e = check_range_head(U, &head(200, Some(1000), None), 0, 10).unwrap_err();
        assert!(matches!(
            e,
            OriginError::RangesIgnored {
                body_len: Some(1000),
                ..
            }
        ));
        assert!(e.to_string().contains("supports Range requests"), "{e}");
        assert!(!e.is_transient());
    }

    #[test]
    fn statuses_map_to_typed_errors() {
        let e =
            |s: u16, cr: Option<&str>| check_range_head(U, &head(s, None, cr), 5, 5).unwrap_err();
        assert!(matches!(e(404, None), OriginError::NotFound { .. }));
        assert!(matches!(e(410, None), OriginError::NotFound { .. }));
        assert!(matches!(e(412, None), OriginError::Changed { .. }));
        assert!(matches!(
            e(416, Some("bytes */7")),
            OriginError::RangeNotSatisfiable {
                size: Some(7),
                offset: 5,
                len: 5,
                ..
            }
        ));
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(e(s, None).is_transient(), "{s}");
        }
        for s in [400, 401, 403, 501, 505, 302] {
            let err = e(s, None);
            assert!(
                matches!(err, OriginError::HttpStatus { status, .. } if status == s),
                "{s}"
            );
            assert!(err.to_string().contains("GET bytes=5-9"));
        }
    }

    #[test]
    fn size_from_head_or_probe() {
        assert_eq!(
            check_head_for_size(U, &head(200, Some(42), None)).unwrap(),
            HeadSize::Known(Version {
                size: Some(42),
                etag: Some("\"e\"".into()),
                last_modified: None
            })
        );
        assert_eq!(
            check_head_for_size(U, &head(200, None, None)).unwrap(),
            HeadSize::AskWithGet
        );
        assert_eq!(
            check_head_for_size(U, &head(405, None, None)).unwrap(),
            HeadSize::AskWithGet
        );
        assert!(matches!(
            check_head_for_size(U, &head(404, None, None)),
            Err(OriginError::NotFound { .. })
        ));
        let (v, d) = check_probe_for_size(U, &head(206, Some(1), Some("bytes 0-0/99"))).unwrap();
        assert_eq!((v.size, d), (Some(99), 1));
        let (v, d) = check_probe_for_size(U, &head(416, None, Some("bytes */0"))).unwrap();
        assert_eq!((v.size, d), (Some(0), 0));
        assert!(check_probe_for_size(U, &head(416, None, Some("bytes */5"))).is_err());
        assert!(check_probe_for_size(U, &head(206, Some(1), Some("bytes 0-0/*"))).is_err());
    }
}
