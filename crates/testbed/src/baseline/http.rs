//! The naive way: every client downloads the package over HTTP from the
//! origin host, all at once.
//!
//! A small HTTP/1.1 server (one thread per connection, `Connection: close`)
//! runs in the origin host and serves the package from memory; each client
//! host runs a GET on its own thread and checks every byte. The same server
//! carries the BitTorrent baseline's tracker.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::baseline::{ClientResult, DownloadOptions, DownloadReport, Package};
use crate::error::{Error, Result};
use crate::testbed::Testbed;

/// Largest request head the server reads, in bytes.
pub const MAX_REQUEST_HEAD: usize = 16 << 10;
/// Port of the package server in the origin host.
pub const HTTP_PORT: u16 = 8080;

/// A parsed request line and the peer that sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string (after `?`), possibly empty.
    pub query: String,
    /// Client address.
    pub peer: SocketAddr,
}

/// A response: status code, content type and body.
#[derive(Clone, Debug)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Content-Type header.
    pub content_type: &'static str,
    /// Body.
    pub body: Arc<Vec<u8>>,
}

impl Response {
    /// A 404 with a short text body.
    pub fn not_found() -> Response {
        Response {
            status: 404,
            content_type: "text/plain",
            body: Arc::new(b"not found\n".to_vec()),
        }
    }
}

/// Request handler of [`HttpServer`].
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Parses the head of an HTTP/1.x request (`METHOD TARGET VERSION`).
pub fn parse_request_line(head: &[u8], peer: SocketAddr) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let line = text.lines().next()?;
    let mut parts = line.split(' ');
    let method = parts.next()?.to_string();
    let target = parts.next()?;
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") || parts.next().is_some() || !target.starts_with('/') {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Some(Request {
        method,
        path: path.to_string(),
        query: query.to_string(),
        peer,
    })
}

/// A tiny HTTP/1.1 server running inside a host until stopped or dropped.
pub struct HttpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Result<()>>>>,
}

impl HttpServer {
    /// Listens on `port` in `host` and answers every request with `handler`.
    pub fn start(tb: &Testbed, host: &str, port: u16, handler: Handler) -> Result<HttpServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let stop2 = stop.clone();
        let thread = tb.spawn_in(host, move || -> Result<()> {
            let l = match TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)) {
                Ok(l) => l,
                Err(e) => {
                    let err = Error::io(format!("HTTP server: listening on port {port}"), e);
                    let _ = ready_tx.send(Err(Error::Baseline(err.to_string())));
                    return Err(err);
                }
            };
            l.set_nonblocking(true)
                .map_err(|e| Error::io("HTTP server: set_nonblocking", e))?;
            let _ = ready_tx.send(Ok(()));
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, peer)) => {
                        let h = handler.clone();
                        std::thread::spawn(move || serve_one(s, peer, &h));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => return Err(Error::io("HTTP server: accept", e)),
                }
            }
            Ok(())
        })?;
        let server = HttpServer {
            stop,
            thread: Some(thread),
        };
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| Error::Baseline(format!("HTTP server in {host} did not start")))??;
        Ok(server)
    }

    /// Stops accepting connections (running transfers finish on their own).
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take() {
            Some(t) => match t.join() {
                Ok(r) => r?,
                Err(_) => Err(Error::Baseline("HTTP server thread panicked".into())),
            },
            None => Ok(()),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

fn serve_one(mut s: TcpStream, peer: SocketAddr, handler: &Handler) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(30)));
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_REQUEST_HEAD {
            let _ = s.write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
            return;
        }
    }
    let resp = match parse_request_line(&head, peer) {
        Some(req) if req.method == "GET" => handler(&req),
        Some(_) => Response {
            status: 405,
            content_type: "text/plain",
            body: Arc::new(b"only GET\n".to_vec()),
        },
        None => Response {
            status: 400,
            content_type: "text/plain",
            body: Arc::new(b"bad request\n".to_vec()),
        },
    };
    let reason = match resp.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Status",
    };
    let hdr = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        resp.status,
        resp.content_type,
        resp.body.len()
    );
    if s.write_all(hdr.as_bytes()).is_err() {
        return;
    }
    for chunk in resp.body.chunks(64 << 10) {
        if s.write_all(chunk).is_err() {
            return;
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    // Drain until the client closes, so the last bytes are not reset away.
    let _ = s.read(&mut buf);
}

/// GETs `path` from `addr` (HTTP/1.1, `Connection: close`); returns the
/// status and the body. Fails on malformed responses or a short body.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| Error::io(format!("HTTP client: connecting to {addr}"), e))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| Error::io("HTTP client: set_read_timeout", e))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| Error::io(format!("HTTP client: sending to {addr}"), e))?;
    let mut data = Vec::new();
    let mut buf = vec![0u8; 256 << 10];
    let head_end = loop {
        if let Some(p) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if data.len() > MAX_REQUEST_HEAD {
            return Err(Error::Baseline(format!(
                "HTTP response head from {addr} too long"
            )));
        }
        let n = s
            .read(&mut buf)
            .map_err(|e| Error::io(format!("HTTP client: reading from {addr}"), e))?;
        if n == 0 {
            return Err(Error::Baseline(format!(
                "{addr} closed before the response head ended"
            )));
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let status: u16 = head
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Error::Baseline(format!("bad HTTP status line from {addr}")))?;
    let len: Option<usize> = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    });
    let mut body = data.split_off(head_end);
    if let Some(l) = len {
        body.reserve(l.saturating_sub(body.len()));
    }
    loop {
        let n = s
            .read(&mut buf)
            .map_err(|e| Error::io(format!("HTTP client: reading body from {addr}"), e))?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    if let Some(l) = len
        && body.len() != l
    {
        return Err(Error::Baseline(format!(
            "HTTP body from {addr} has {} bytes, Content-Length said {l}",
            body.len()
        )));
    }
    Ok((status, body))
}

/// Runs the HTTP baseline: every client GETs the package from the origin
/// at the same moment.
pub fn run(tb: &Testbed, opts: &DownloadOptions) -> Result<DownloadReport> {
    let clients = opts.resolve_clients(tb)?;
    let pkg = Package::generate("package.bin", opts.size, 0x5eed);
    let body = pkg.bytes.clone();
    let path = format!("/{}", pkg.name);
    let path2 = path.clone();
    let handler: Handler = Arc::new(move |r: &Request| {
        if r.path == path2 {
            Response {
                status: 200,
                content_type: "application/octet-stream",
                body: body.clone(),
            }
        } else {
            Response::not_found()
        }
    });
    let server = HttpServer::start(tb, &opts.origin, HTTP_PORT, handler)?;
    let origin = SocketAddr::from((tb.host_addr(&opts.origin)?, HTTP_PORT));
    let before = tb.wan_counters()?;
    let origin_before = tb.host_if_stats(&opts.origin)?;
    let barrier = Arc::new(Barrier::new(clients.len() + 1));
    let mut handles = Vec::new();
    for c in &clients {
        let (b, p, want, timeout) = (
            barrier.clone(),
            path.clone(),
            pkg.bytes.clone(),
            opts.timeout,
        );
        handles.push(tb.spawn_in(c, move || -> Result<Instant> {
            b.wait();
            let (status, got) = http_get(origin, &p, timeout)?;
            if status != 200 || got != *want {
                return Err(Error::Baseline(format!(
                    "HTTP download: status {status}, {} bytes, content {}",
                    got.len(),
                    if got == *want { "intact" } else { "differs" }
                )));
            }
            Ok(Instant::now())
        })?);
    }
    barrier.wait();
    let start = Instant::now();
    let mut results = Vec::new();
    for (c, h) in clients.iter().zip(handles) {
        let done = match h.join() {
            Ok(r) => r??,
            Err(_) => return Err(Error::Baseline(format!("HTTP client {c} panicked"))),
        };
        results.push(ClientResult {
            host: c.clone(),
            office: tb.state().host(c)?.office.clone(),
            seconds: done.saturating_duration_since(start).as_secs_f64(),
        });
    }
    let makespan = start.elapsed().as_secs_f64();
    let after = tb.wan_counters()?;
    let origin_after = tb.host_if_stats(&opts.origin)?;
    server.stop()?;
    Ok(DownloadReport {
        method: "http".into(),
        package_bytes: pkg.len(),
        makespan_seconds: results
            .iter()
            .map(|r| r.seconds)
            .fold(0.0, f64::max)
            .min(makespan),
        clients: results,
        wan: DownloadReport::wan_use(&before, &after, pkg.len()),
        origin_tx_bytes: origin_after.tx_bytes - origin_before.tx_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn parses_request_lines() {
        let r = parse_request_line(
            b"GET /announce?a=1&b=%20 HTTP/1.1\r\nHost: x\r\n\r\n",
            peer(),
        )
        .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/announce");
        assert_eq!(r.query, "a=1&b=%20");
        assert!(parse_request_line(b"GET / HTTP/2\r\n", peer()).is_none());
        assert!(parse_request_line(b"GET x HTTP/1.1\r\n", peer()).is_none());
        assert!(parse_request_line(b"\xff\xfe", peer()).is_none());
        assert!(parse_request_line(b"", peer()).is_none());
    }

    proptest::proptest! {
        #[test]
        fn request_parser_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = parse_request_line(&b, peer());
        }
    }
}
