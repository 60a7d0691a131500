//! A small counting HTTP/1.1 file server for tests and benchmarks.
//!
//! [`CountingServer`] serves named files (from memory or a directory) with `GET` and
//! `HEAD`, one `Range: bytes=…` per request (206 with `Content-Range`, 416 when
//! unsatisfiable), strong `ETag`s with `If-Match` (412 on mismatch) and keep-alive. It
//! counts requests and the body bytes it sends (in total and per file), and can be told
//! to fail (503), to cut bodies short, or to ignore ranges, so tests can check retries,
//! resumption and the absence of over-reading. It is written to survive garbage: a
//! malformed request gets a 400 and the connection is closed; nothing panics. Requests
//! with a body are refused (400); idle connections close after 30 s.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::range::{RangeRequest, parse_range_header};

/// Longest request head accepted (request line plus headers), in bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// A keep-alive connection with no new request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bodies are written in chunks of at most this many bytes.
const CHUNK: u64 = 1024 * 1024;

/// A running counting HTTP server. Stops (and drops its connections) when dropped.
/// Must be created inside a tokio runtime.
pub struct CountingServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    files: Mutex<HashMap<String, Arc<Entry>>>,
    per_file: Mutex<HashMap<String, Arc<AtomicU64>>>,
    bytes_served: AtomicU64,
    requests: AtomicU64,
    fail_next: AtomicU64,
    truncate_next: AtomicU64,
    ignore_ranges: AtomicBool,
    generation: AtomicU64,
    /// Most body bytes served in all before further bodies wait ([`u64::MAX`]: no hold).
    hold_at: tokio::sync::watch::Sender<u64>,
}

struct Entry {
    source: Source,
    len: u64,
    etag: String,
    served: Arc<AtomicU64>,
}

enum Source {
    Memory(Bytes),
    Disk(Arc<std::fs::File>),
}

impl Shared {
    fn counter(&self, name: &str) -> Arc<AtomicU64> {
        let mut m = self.per_file.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(m.entry(name.to_string()).or_default())
    }

    fn insert(&self, name: &str, source: Source, len: u64, etag: String) {
        let entry = Arc::new(Entry {
            source,
            len,
            etag,
            served: self.counter(name),
        });
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), entry);
    }

    fn insert_memory(&self, name: &str, data: Bytes) {
        let g = self.generation.fetch_add(1, Ordering::Relaxed);
        let etag = format!("\"{:x}-m{g}\"", data.len());
        self.insert(name, Source::Memory(data.clone()), data.len() as u64, etag);
    }

    fn get(&self, name: &str) -> Option<Arc<Entry>> {
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Decrements `counter` if positive; true when it did.
    fn take_one(counter: &AtomicU64) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

impl CountingServer {
    /// Serves the given `(name, bytes)` files at `http://addr/name` (`addr` may have
    /// port 0; see [`CountingServer::local_addr`]).
    pub async fn start(
        addr: SocketAddr,
        files: impl IntoIterator<Item = (String, Bytes)>,
    ) -> io::Result<CountingServer> {
        let shared = Arc::new(Shared {
            files: Mutex::default(),
            per_file: Mutex::default(),
            bytes_served: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            fail_next: AtomicU64::new(0),
            truncate_next: AtomicU64::new(0),
            ignore_ranges: AtomicBool::new(false),
            generation: AtomicU64::new(1),
            hold_at: tokio::sync::watch::Sender::new(u64::MAX),
        });
        for (name, data) in files {
            shared.insert_memory(&name, data);
        }
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(CountingServer { addr, shared, task })
    }

    /// Serves every regular file directly inside `dir` (not recursive) at
    /// `http://addr/<file name>`, read from disk on each request. Files are opened at
    /// start; their ETag is derived from size and modification time.
    pub async fn start_dir(addr: SocketAddr, dir: &Path) -> io::Result<CountingServer> {
        let server = CountingServer::start(addr, []).await?;
        let dir = dir.to_path_buf();
        let found = tokio::task::spawn_blocking(
            move || -> io::Result<Vec<(String, std::fs::File, u64, String)>> {
                let mut out = Vec::new();
                for ent in std::fs::read_dir(&dir)? {
                    let ent = ent?;
                    let Ok(name) = ent.file_name().into_string() else {
                        continue;
                    };
                    let file = std::fs::File::open(ent.path())?;
                    let meta = file.metadata()?;
                    if !meta.is_file() {
                        continue;
                    }
                    let mtime = meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos());
                    let etag = format!("\"{:x}-{mtime:x}\"", meta.len());
                    out.push((name, file, meta.len(), etag));
                }
                Ok(out)
            },
        )
        .await
        .map_err(io::Error::other)??;
        for (name, file, len, etag) in found {
            server
                .shared
                .insert(&name, Source::Disk(Arc::new(file)), len, etag);
        }
        Ok(server)
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>/<name>`.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }

    /// Adds a file or replaces its content (it gets a new ETag, as a changed file would).
    pub fn set_file(&self, name: &str, data: Bytes) {
        self.shared.insert_memory(name, data);
    }

    /// Body bytes sent so far, all files together (headers and error bodies excluded).
    pub fn bytes_served(&self) -> u64 {
        self.shared.bytes_served.load(Ordering::SeqCst)
    }

    /// Body bytes of file `name` sent so far (0 for unknown names).
    pub fn bytes_served_for(&self, name: &str) -> u64 {
        self.shared
            .per_file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }

    /// Requests received so far (including failed and malformed ones).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Answer the next `n` well-formed requests with `503 Service Unavailable`.
    pub fn set_fail_next(&self, n: u64) {
        self.shared.fail_next.store(n, Ordering::SeqCst);
    }

    /// For the next `n` responses with a body, send only the first half of the body
    /// (after a full `Content-Length`) and close the connection.
    pub fn set_truncate_next(&self, n: u64) {
        self.shared.truncate_next.store(n, Ordering::SeqCst);
    }

    /// When on, `Range` headers are ignored and every `GET` gets `200` with the whole
    /// file, like a server without range support.
    pub fn set_ignore_ranges(&self, on: bool) {
        self.shared.ignore_ranges.store(on, Ordering::SeqCst);
    }

    /// Holds every body where it is, mid-response, once `bytes` body bytes have been
    /// served in all (as [`CountingServer::bytes_served`] counts them), until
    /// [`CountingServer::release`]: a download from this server stops at a known point,
    /// whatever the machine's speed. Each 1 MiB chunk is checked before it is sent, so
    /// with several connections at most one chunk per connection may pass the limit.
    pub fn hold_after(&self, bytes: u64) {
        self.shared.hold_at.send_replace(bytes);
    }

    /// Ends a [`CountingServer::hold_after`]: held bodies go on.
    pub fn release(&self) {
        self.shared.hold_at.send_replace(u64::MAX);
    }

    /// Sets the byte and request counters back to zero.
    pub fn reset_counters(&self) {
        self.shared.bytes_served.store(0, Ordering::SeqCst);
        self.shared.requests.store(0, Ordering::SeqCst);
        for c in self
            .shared
            .per_file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            c.store(0, Ordering::SeqCst);
        }
    }
}

impl Drop for CountingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve_conn(stream, Arc::clone(&shared)));
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::debug!(error = %e, "test server accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method, as sent (case-sensitive per HTTP).
    pub method: String,
    /// Request target, e.g. `/pkg.bin?x=1`.
    pub target: String,
    /// True for HTTP/1.1, false for HTTP/1.0.
    pub http11: bool,
    /// Header fields in order, names lower-cased, values trimmed.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn keep_alive(&self) -> bool {
        let conn = self.header("connection").map(str::to_ascii_lowercase);
        let has = |tok: &str| {
            conn.as_deref()
                .is_some_and(|c| c.split(',').any(|t| t.trim() == tok))
        };
        if self.http11 {
            !has("close")
        } else {
            has("keep-alive")
        }
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses a request head (request line and header lines, CRLF or LF separated, with or
/// without the final blank line). Returns a short reason on malformed input; never
/// panics.
pub fn parse_request(head: &[u8]) -> Result<Request, &'static str> {
    let text = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8")?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let first = lines.next().ok_or("empty request")?;
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("request line is not `METHOD TARGET VERSION`");
    };
    if !is_token(method) {
        return Err("bad method");
    }
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("bad request target");
    }
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err("unsupported HTTP version"),
    };
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').ok_or("header line without ':'")?;
        if !is_token(name) {
            return Err("bad header name");
        }
        if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return Err("control character in header value");
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Request {
        method: method.to_string(),
        target: target.to_string(),
        http11,
        headers,
    })
}

enum HeadError {
    TooLarge,
    Io,
}

/// Reads one request head; `Ok(None)` on a clean end of stream between requests.
async fn read_head<R: AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
) -> Result<Option<Vec<u8>>, HeadError> {
    let mut buf = Vec::new();
    let mut limited = (&mut *rd).take(MAX_HEAD_BYTES as u64);
    loop {
        let start = buf.len();
        let n = limited
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|_| HeadError::Io)?;
        if n == 0 {
            return if buf.len() >= MAX_HEAD_BYTES {
                Err(HeadError::TooLarge)
            } else if buf.is_empty() {
                Ok(None)
            } else {
                Err(HeadError::Io)
            };
        }
        let line = &buf[start..];
        if line == b"\r\n" || line == b"\n" {
            if start == 0 {
                // Stray empty line before a request: allowed and ignored.
                buf.clear();
                continue;
            }
            return Ok(Some(buf));
        }
        if !line.ends_with(b"\n") {
            // Limit reached in the middle of a line.
            return Err(HeadError::TooLarge);
        }
    }
}

async fn serve_conn(stream: TcpStream, shared: Arc<Shared>) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    loop {
        let head = match tokio::time::timeout(IDLE_TIMEOUT, read_head(&mut rd)).await {
            Ok(Ok(Some(h))) => h,
            Ok(Err(HeadError::TooLarge)) => {
                shared.requests.fetch_add(1, Ordering::SeqCst);
                let _ = write_head(&mut wr, 431, &[], 0, false).await;
                return;
            }
            Ok(Ok(None)) | Ok(Err(HeadError::Io)) | Err(_) => return,
        };
        shared.requests.fetch_add(1, Ordering::SeqCst);
        let req = match parse_request(&head) {
            Ok(r) => r,
            Err(reason) => {
                tracing::debug!(reason, "test server got a malformed request");
                let _ = write_head(&mut wr, 400, &[], 0, false).await;
                return;
            }
        };
        match respond(&shared, &req, &mut wr).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        412 => "Precondition Failed",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

async fn write_head<W: AsyncWrite + Unpin>(
    wr: &mut W,
    status: u16,
    extra: &[(&str, String)],
    content_length: u64,
    keep_alive: bool,
) -> io::Result<()> {
    let mut h = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {content_length}\r\nConnection: {}\r\n",
        reason(status),
        if keep_alive { "keep-alive" } else { "close" }
    );
    for (name, value) in extra {
        h.push_str(name);
        h.push_str(": ");
        h.push_str(value);
        h.push_str("\r\n");
    }
    h.push_str("\r\n");
    wr.write_all(h.as_bytes()).await
}

/// Answers one request; returns whether to keep the connection open.
async fn respond<W: AsyncWrite + Unpin>(
    shared: &Shared,
    req: &Request,
    wr: &mut W,
) -> io::Result<bool> {
    let keep = req.keep_alive();
    let has_body = req.header("transfer-encoding").is_some()
        || req.header("content-length").is_some_and(|v| v != "0");
    if has_body {
        write_head(wr, 400, &[], 0, false).await?;
        return Ok(false);
    }
    if Shared::take_one(&shared.fail_next) {
        write_head(wr, 503, &[("Retry-After", "0".to_string())], 0, keep).await?;
        return Ok(keep);
    }
    let is_head = match req.method.as_str() {
        "GET" => false,
        "HEAD" => true,
        _ => {
            write_head(wr, 405, &[("Allow", "GET, HEAD".to_string())], 0, keep).await?;
            return Ok(keep);
        }
    };
    let path = req.target.split(['?', '#']).next().unwrap_or_default();
    let name = path.strip_prefix('/').unwrap_or(path);
    let Some(entry) = shared.get(name) else {
        write_head(wr, 404, &[], 0, keep).await?;
        return Ok(keep);
    };
    let etag = ("ETag", entry.etag.clone());
    if let Some(cond) = req.header("if-match")
        && cond != "*"
        && !cond.split(',').any(|t| t.trim() == entry.etag)
    {
        write_head(wr, 412, &[etag], 0, keep).await?;
        return Ok(keep);
    }
    let ignore = shared.ignore_ranges.load(Ordering::SeqCst);
    let range = match req.header("range") {
        Some(r) if !ignore => parse_range_header(r, entry.len),
        _ => RangeRequest::Full,
    };
    let (status, start, count, mut extra) = match range {
        RangeRequest::Full => (200, 0, entry.len, vec![etag]),
        RangeRequest::Partial { start, end } => (
            206,
            start,
            end - start + 1,
            vec![
                etag,
                (
                    "Content-Range",
                    format!("bytes {start}-{end}/{}", entry.len),
                ),
            ],
        ),
        RangeRequest::Unsatisfiable => {
            let cr = ("Content-Range", format!("bytes */{}", entry.len));
            write_head(wr, 416, &[etag, cr], 0, keep).await?;
            return Ok(keep);
        }
    };
    if !ignore {
        extra.push(("Accept-Ranges", "bytes".to_string()));
    }
    let truncate = !is_head && count > 0 && Shared::take_one(&shared.truncate_next);
    write_head(wr, status, &extra, count, keep && !truncate).await?;
    if is_head {
        return Ok(keep);
    }
    let send = if truncate { count / 2 } else { count };
    write_body(shared, &entry, start, send, wr).await?;
    wr.flush().await?;
    Ok(keep && !truncate)
}

async fn write_body<W: AsyncWrite + Unpin>(
    shared: &Shared,
    entry: &Entry,
    start: u64,
    count: u64,
    wr: &mut W,
) -> io::Result<()> {
    let mut pos = start;
    let end = start + count;
    let mut hold = shared.hold_at.subscribe();
    while pos < end {
        let k = (end - pos).min(CHUNK);
        // Wait while this chunk would take the server past its hold.
        loop {
            let limit = *hold.borrow_and_update();
            if shared.bytes_served.load(Ordering::SeqCst).saturating_add(k) <= limit {
                break;
            }
            if hold.changed().await.is_err() {
                return Err(io::Error::other("the server stopped"));
            }
        }
        match &entry.source {
            Source::Memory(data) => {
                // pos and k lie within data: they come from a range checked against len.
                wr.write_all(&data[pos as usize..(pos + k) as usize])
                    .await?;
            }
            Source::Disk(file) => {
                let file = Arc::clone(file);
                let buf = tokio::task::spawn_blocking(move || {
                    let mut b = vec![0u8; k as usize];
                    file.read_exact_at(&mut b, pos).map(|()| b)
                })
                .await
                .map_err(io::Error::other)??;
                wr.write_all(&buf).await?;
            }
        }
        shared.bytes_served.fetch_add(k, Ordering::SeqCst);
        entry.served.fetch_add(k, Ordering::SeqCst);
        pos += k;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_a_request() {
        let r = parse_request(
            b"GET /a.bin?x HTTP/1.1\r\nHost: h\r\nRange:  bytes=0-9 \r\nConnection: Close\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.target, "/a.bin?x");
        assert!(r.http11);
        assert_eq!(r.header("range"), Some("bytes=0-9"));
        assert!(!r.keep_alive());
        let r = parse_request(b"HEAD / HTTP/1.0\nConnection: keep-alive\n\n").unwrap();
        assert!(!r.http11 && r.keep_alive());
        assert!(
            parse_request(b"GET / HTTP/1.1\r\n\r\n")
                .unwrap()
                .keep_alive()
        );
    }

    #[test]
    fn rejects_malformed_requests() {
        for bad in [
            &b""[..],
            b"GET\r\n\r\n",
            b"GET /x\r\n\r\n",
            b"GET x HTTP/1.1\r\n\r\n",
            b"GET /x HTTP/2\r\n\r\n",
            b"GET /x HTTP/1.1 extra\r\n\r\n",
            b"G(T /x HTTP/1.1\r\n\r\n",
            b"GET /x HTTP/1.1\r\nNoColon\r\n\r\n",
            b"GET /x HTTP/1.1\r\nBad Name: v\r\n\r\n",
            b"GET /x HTTP/1.1\r\nA: \x01\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                parse_request(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    proptest! {
        #[test]
        fn parse_request_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_request(&bytes);
        }

        #[test]
        fn parse_request_roundtrips(path in "/[a-zA-Z0-9._-]{0,20}", range in "bytes=[0-9]{1,5}-[0-9]{0,5}") {
            let raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\nRange: {range}\r\n\r\n");
            let r = parse_request(raw.as_bytes()).unwrap();
            prop_assert_eq!(&r.target, &path);
            prop_assert_eq!(r.header("range"), Some(range.as_str()));
        }
    }
}
