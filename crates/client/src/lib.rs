//! The Branchline client daemon.
//!
//! A client has a stable identity (a random id kept in its data directory), binds every
//! client port of the seed table, registers with the server and heartbeats at a fixed
//! interval. When the server stops answering it keeps trying with backoff and registers
//! again as soon as the server is back; when the server has forgotten it (a heartbeat is
//! answered "unknown"), it registers again at once. A deployment key that does not match
//! the server's is fatal: nothing will ever work, so the daemon stops with that message.
//!
//! * [`identity`]: the client id file and the data-directory lock.
//! * [`netinfo`]: host name, address, subnet and free space reported to the server.

pub mod identity;
pub mod netinfo;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use branchline_config::{ClientPorts, ServerPorts};
use branchline_transport::{
    BindError, Context, Handler, ReplayConfig, RequestError, Requester, Responder, Response,
    RetryPolicy, bind_udp, serve_reserved,
};
use branchline_wire::msg::{Ack, ErrorCode, ErrorReply, Heartbeat, Register};
use branchline_wire::validate::Ports;
use branchline_wire::{Body, ClientId, DeploymentKey, SOFTWARE_VERSION};
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use identity::IdentityError;

/// Everything needed to start a client.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub server: IpAddr,
    /// The server's ports (only its request port is used by clients).
    pub server_ports: ServerPorts,
    pub key: DeploymentKey,
    pub data_dir: PathBuf,
    pub bind: IpAddr,
    pub ports: ClientPorts,
    pub heartbeat_interval: Duration,
    pub cache_size_bytes: u64,
    /// Reported name; the host's name when `None`.
    pub hostname: Option<String>,
    pub retry: RetryPolicy,
    pub replay: ReplayConfig,
}

/// Why the client stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("{0}")]
    KeyMismatch(RequestError),
    #[error("the server refused this client's registration: {0}")]
    Refused(RequestError),
}

/// The client's view of its registration, for status displays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Starting,
    /// Registered and heartbeating; the value is when the server last answered.
    Registered {
        last_answer: Instant,
    },
    /// The server does not answer; retrying.
    Unreachable {
        since: Instant,
        error: String,
    },
    /// Stopped for good.
    Failed(String),
}

/// A running client.
pub struct Client {
    id: ClientId,
    status: watch::Receiver<Status>,
    /// The registration loop; `None` once it has ended and been awaited.
    main: Option<JoinHandle<ClientError>>,
    tasks: Vec<JoinHandle<()>>,
    _lock: identity::DataDirLock,
}

/// Answers small messages on the client's request port (34325).
struct ClientHandler;

impl Handler for ClientHandler {
    fn handle(&self, _from: SocketAddr, body: Body) -> Response {
        match body {
            Body::Ping(_) => Response::Reply(Body::Ack(Ack {})),
            other => Response::Reply(Body::Error(ErrorReply {
                code: ErrorCode::Unsupported as i32,
                detail: format!("a client does not accept {} messages", other.kind()),
                receiver_time_ms: 0,
            })),
        }
    }
}

fn wire_ports(p: &ClientPorts) -> Ports {
    Ports {
        small_request: p.small_request,
        small_reply: p.small_reply,
        large_fg_request: p.large_fg_request,
        large_fg_reply: p.large_fg_reply,
        large_bg_request: p.large_bg_request,
        large_bg_reply: p.large_bg_reply,
        broadcast: p.broadcast,
        content_fg: p.content_fg,
        content_bg: p.content_bg,
        adaptive: p.adaptive,
    }
}

impl Client {
    /// Loads (or creates) the identity, binds every client port and starts registering.
    pub async fn start(opts: ClientOptions) -> Result<Client, ClientError> {
        let lock = identity::DataDirLock::acquire(&opts.data_dir)?;
        let id = identity::load_or_create(&opts.data_dir)?;

        let mut ctx = Context::new(vec![opts.key.derive()]);
        ctx.retry = opts.retry;
        ctx.replay = opts.replay;

        let (ip, p) = (opts.bind, opts.ports);
        let request = bind_udp(ip, p.small_request, "client.small_request").await?;
        let reply = bind_udp(ip, p.small_reply, "client.small_reply").await?;
        let mut reserved = Vec::new();
        for (port, name) in [
            (p.large_fg_request, "client.large_fg_request"),
            (p.large_fg_reply, "client.large_fg_reply"),
            (p.large_bg_request, "client.large_bg_request"),
            (p.large_bg_reply, "client.large_bg_reply"),
            (p.broadcast, "client.broadcast"),
            (p.content_fg, "client.content_fg"),
            (p.content_bg, "client.content_bg"),
            (p.adaptive, "client.adaptive"),
        ] {
            reserved.push(bind_udp(ip, port, name).await?);
        }

        let mut tasks = Vec::new();
        let serve_ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = Responder::serve(request, serve_ctx, Arc::new(ClientHandler)).await {
                tracing::error!(error = %e, "client request port failed");
            }
        }));
        for s in reserved {
            tasks.push(tokio::spawn(serve_reserved(s, ctx.counters.clone())));
        }
        let requester = Requester::new(reply, ctx);
        let (status_tx, status) = watch::channel(Status::Starting);
        let main = tokio::spawn(run(opts, id, requester, status_tx));
        Ok(Client {
            id,
            status,
            main: Some(main),
            tasks,
            _lock: lock,
        })
    }

    pub fn id(&self) -> ClientId {
        self.id
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Waits until the client is registered, or returns its fatal error.
    pub async fn wait_registered(&mut self) -> Result<(), String> {
        loop {
            match &*self.status.borrow_and_update() {
                Status::Registered { .. } => return Ok(()),
                Status::Failed(e) => return Err(e.clone()),
                _ => {}
            }
            if self.status.changed().await.is_err() {
                return Err("the client stopped".into());
            }
        }
    }

    /// Runs until a fatal error (the only way the client stops by itself).
    pub async fn wait(&mut self) -> ClientError {
        let Some(main) = self.main.as_mut() else {
            return ClientError::Refused(RequestError::Closed("the client already stopped".into()));
        };
        let result = main.await;
        self.main = None;
        match result {
            Ok(e) => e,
            Err(e) => ClientError::Refused(RequestError::Closed(format!("client task ended: {e}"))),
        }
    }

    /// Stops every task and releases the ports and the data directory.
    pub async fn shutdown(self) {
        if let Some(main) = self.main {
            main.abort();
            let _ = main.await;
        }
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Backoff between registration attempts while the server is unreachable: 1 s doubling
/// to 30 s, ±25 % jitter.
fn registration_backoff(failures: u32) -> Duration {
    let base = (1u64 << failures.min(5)).min(30) as f64;
    let jitter: f64 = rand::rng().random_range(0.75..1.25);
    Duration::from_secs_f64(base * jitter)
}

async fn run(
    opts: ClientOptions,
    id: ClientId,
    req: Requester,
    status: watch::Sender<Status>,
) -> ClientError {
    let server = SocketAddr::new(opts.server, opts.server_ports.small_request);
    let started = Instant::now();
    let hostname = opts.hostname.clone().unwrap_or_else(netinfo::hostname);
    let address = netinfo::local_address(opts.bind, server);
    let subnet = netinfo::subnet_of(address);
    let interval = opts.heartbeat_interval;
    // A heartbeat must not outlive the next one.
    let beat_policy = RetryPolicy {
        deadline: opts
            .retry
            .deadline
            .min(interval.max(Duration::from_secs(1))),
        ..opts.retry
    };
    let cache_free = || {
        netinfo::free_space(&opts.data_dir)
            .unwrap_or(opts.cache_size_bytes)
            .min(opts.cache_size_bytes)
    };
    let fail = |e: ClientError| {
        let _ = status.send(Status::Failed(e.to_string()));
        e
    };
    let mut failures = 0u32;
    loop {
        // Register (again).
        let register = Body::Register(Register {
            client_id: id.to_string(),
            hostname: hostname.clone(),
            addresses: vec![address.to_string()],
            subnet: subnet.to_string(),
            cache_size_bytes: opts.cache_size_bytes,
            cache_free_bytes: cache_free(),
            version: SOFTWARE_VERSION.into(),
            heartbeat_interval_ms: interval.as_millis().min(u32::MAX as u128) as u32,
            ports: Some(wire_ports(&opts.ports).to_wire()),
        });
        match req.request(server, register).await {
            Ok(Body::RegisterOk(ok)) => {
                failures = 0;
                tracing::info!(client = %id, %server, new = ok.new_client, server_version = %ok.server_version, "registered");
                let _ = status.send(Status::Registered {
                    last_answer: Instant::now(),
                });
            }
            Ok(other) => {
                tracing::warn!(
                    reply = other.kind(),
                    "unexpected reply to Register; retrying"
                );
                tokio::time::sleep(registration_backoff(failures)).await;
                failures += 1;
                continue;
            }
            Err(e @ RequestError::KeyMismatch { .. }) => return fail(ClientError::KeyMismatch(e)),
            Err(
                e @ RequestError::Refused {
                    code: ErrorCode::Invalid,
                    ..
                },
            ) => {
                return fail(ClientError::Refused(e));
            }
            Err(e) => {
                tracing::warn!(error = %e, "registration failed; retrying");
                if !matches!(status.borrow().clone(), Status::Unreachable { .. }) {
                    let _ = status.send(Status::Unreachable {
                        since: Instant::now(),
                        error: e.to_string(),
                    });
                }
                tokio::time::sleep(registration_backoff(failures)).await;
                failures += 1;
                continue;
            }
        }
        // Heartbeat until something says to register again.
        loop {
            tokio::time::sleep(interval).await;
            let beat = Body::Heartbeat(Heartbeat {
                client_id: id.to_string(),
                cache_free_bytes: cache_free(),
                uptime_s: started.elapsed().as_secs(),
            });
            match req.request_with(server, beat, beat_policy).await {
                Ok(Body::HeartbeatAck(ack)) if ack.known => {
                    let _ = status.send(Status::Registered {
                        last_answer: Instant::now(),
                    });
                }
                Ok(Body::HeartbeatAck(_)) => {
                    tracing::info!(
                        "the server does not know this client any more; registering again"
                    );
                    break;
                }
                Ok(other) => tracing::warn!(reply = other.kind(), "unexpected reply to Heartbeat"),
                Err(e @ RequestError::KeyMismatch { .. }) => {
                    return fail(ClientError::KeyMismatch(e));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "heartbeat failed; registering again when the server answers");
                    let _ = status.send(Status::Unreachable {
                        since: Instant::now(),
                        error: e.to_string(),
                    });
                    break;
                }
            }
        }
    }
}
