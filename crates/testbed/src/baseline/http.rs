//! The naive way: every client downloads the package over HTTP from the
//! origin host, all at once.
//!
//! A small HTTP/1.1 server (`axum` on a tokio runtime of its own) runs in the
//! origin host and serves the package from memory; each client host runs a GET
//! (`ureq`) on its own thread and checks every byte. The same server carries the
//! BitTorrent baseline's tracker. Neither side is hand-written HTTP.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use tokio::sync::oneshot;

use crate::baseline::{ClientResult, DownloadOptions, DownloadReport, Package};
use crate::error::{Error, Result};
use crate::testbed::Testbed;

/// Port of the package server in the origin host.
pub const HTTP_PORT: u16 = 8080;

/// A request's method, path, query and the peer that sent it.
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

/// A tiny HTTP/1.1 server running inside a host until stopped or dropped.
pub struct HttpServer {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<Result<()>>>>,
}

impl HttpServer {
    /// Listens on `port` in `host` and answers every `GET` with `handler` (other
    /// methods get a 405).
    pub fn start(tb: &Testbed, host: &str, port: u16, handler: Handler) -> Result<HttpServer> {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let thread = tb.spawn_in(host, move || -> Result<()> {
            let started = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(|l| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_io()
                        .build()?;
                    let l = rt.block_on(async { tokio::net::TcpListener::from_std(l) })?;
                    Ok((rt, l))
                });
            let (rt, listener) = match started {
                Ok(v) => v,
                Err(e) => {
                    let err = Error::io(format!("HTTP server: listening on port {port}"), e);
                    let _ = ready_tx.send(Err(Error::Baseline(err.to_string())));
                    return Err(err);
                }
            };
            let _ = ready_tx.send(Ok(()));
            let app = axum::Router::new().fallback(
                move |ConnectInfo(peer): ConnectInfo<SocketAddr>, req: axum::extract::Request| {
                    let handler = handler.clone();
                    async move { answer(&handler, peer, &req) }
                },
            );
            rt.block_on(async move {
                axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await
            })
            .map_err(|e| Error::io("HTTP server", e))
        })?;
        let server = HttpServer {
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| Error::Baseline(format!("HTTP server in {host} did not start")))??;
        Ok(server)
    }

    /// Stops accepting connections and waits for the running transfers to finish.
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            // The server is gone already when the receiver is dropped; its result
            // comes from the join below.
            let _ = stop.send(());
        }
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
        // A failure here was already reported by `stop`, or nobody is left to tell.
        let _ = self.stop_inner();
    }
}

fn answer(
    handler: &Handler,
    peer: SocketAddr,
    req: &axum::extract::Request,
) -> axum::response::Response {
    let resp = if req.method() == axum::http::Method::GET {
        handler(&Request {
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            query: req.uri().query().unwrap_or("").to_string(),
            peer,
        })
    } else {
        Response {
            status: 405,
            content_type: "text/plain",
            body: Arc::new(b"only GET\n".to_vec()),
        }
    };
    let status = axum::http::StatusCode::from_u16(resp.status)
        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    let body = axum::body::Body::from(bytes::Bytes::from_owner(ArcBody(resp.body)));
    (
        status,
        [(axum::http::header::CONTENT_TYPE, resp.content_type)],
        body,
    )
        .into_response()
}

/// Lets a shared body go out without a copy.
struct ArcBody(Arc<Vec<u8>>);

impl AsRef<[u8]> for ArcBody {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// GETs `path` from `addr`; returns the status and the body. Fails on a
/// malformed response, a short body or when `timeout` passes.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, Vec<u8>)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .get(&format!("http://{addr}{path}"))
        .call()
        .map_err(|e| Error::Baseline(format!("HTTP GET {path} from {addr}: {e}")))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .map_err(|e| Error::Baseline(format!("HTTP body from {addr}: {e}")))?;
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
