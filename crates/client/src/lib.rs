//! The Branchline client daemon.
//!
//! A client has a stable identity (a random id kept in its data directory), binds every
//! client port of the seed table, registers with the server and heartbeats at a fixed
//! interval. When the server stops answering it keeps trying with backoff and registers
//! again as soon as the server is back; when the server has forgotten it (a heartbeat is
//! answered "unknown"), it registers again at once. A key-mismatch notice from the server
//! is never fatal: the notice is unauthenticated, so anyone who can forge the server's
//! source address could otherwise stop the daemon. The daemon logs it as an error, shows
//! it in its status and keeps retrying with backoff (a rotated key may yet arrive).
//!
//! * [`identity`]: the client id file and the data-directory lock.
//! * [`netinfo`]: host name, address, subnet and free space reported to the server.
//! * [`services`]: once it holds a certificate (issued at registration, or left by an
//!   earlier one while the server is unreachable): the content cache served to peers over
//!   QUIC, and large messages to the server.
//! * [`download`]: fetching a content item from peers and (when assigned) the origin.
//! * [`jobs`]: content the server assigned (deployments, relaying for a child office),
//!   fetched with nobody calling `branchline get`.
//! * [`discovery`]: subnet discovery: `WhoHas` broadcasts on 34329 and `IHave` answers,
//!   to find office peers beside the server's answers and while it is unreachable.
//! * [`adaptive`]: Adaptive Protocol control signals about WAN transfers (to the server's
//!   34545 and the senders' 34546) and the server's pause and resume.
//! * [`local`]: the Unix-socket API `branchline get` talks to.
//! * [`platform`]: every operating-system call that portable `std` does not cover, and
//!   the list of the client's `cfg(unix)` boundaries.
//! * [`keyring`]: the deployment keys held across a rotation (`deployment.keys`).
//!
//! Trust (issue #10): the client pins the deployment CA at its first registration (or
//! from `deployment.ca` beside its key file) and refuses a server presenting another one;
//! it renews its certificate at two thirds of its lifetime by registering again, and the
//! QUIC endpoints present the new certificate from their next handshake on; when the
//! server announces a rotated deployment key, the client fetches it over QUIC, keeps it
//! in `deployment.keys` and seals with it.

pub mod adaptive;
pub mod discovery;
pub mod download;
pub mod identity;
pub mod jobs;
pub mod keyring;
pub mod local;
pub mod metrics;
pub mod netinfo;
pub mod platform;
pub mod services;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use branchline_config::{ClientPorts, ServerPorts};
use branchline_transport::{
    BindError, Context, Handler, ReplayConfig, RequestError, Requester, Responder, Response,
    RetryPolicy, Spawner, Supervisor, TaskDied, bind_small, bind_udp, serve_reserved,
};
use branchline_wire::msg::{
    Ack, Assign, ErrorCode, ErrorReply, Heartbeat, MAX_ASSIGNMENTS, Register, RegisterOk,
};
use branchline_wire::{Body, ClientId, DeploymentKey, SOFTWARE_VERSION};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

pub use identity::IdentityError;
pub use services::Services;

use branchline_quic::{
    CertificateDer, ClientIdentity, ClientName, DeploymentName, NodeIdentity, Role,
};
use branchline_store::{Cache, CacheCap, FsStorage};

/// Everything needed to start a client.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The server's IP address; only it may assign work or pause transfers.
    pub server: IpAddr,
    /// The server's ports (only its request port is used by clients).
    pub server_ports: ServerPorts,
    /// The deployment key the client starts with (`--key-file`); a newer key kept in
    /// `deployment.keys` after a rotation is used beside it.
    pub key: DeploymentKey,
    /// The data directory (created mode 0700, locked: one client per directory): client
    /// id, QUIC identity, cache, keys, office and the local socket.
    pub data_dir: PathBuf,
    /// The address every client port binds to; unspecified (`0.0.0.0`) for all.
    pub bind: IpAddr,
    /// The client's ports, reported to the server at registration.
    pub ports: ClientPorts,
    /// Time between heartbeats; the server refuses (fatally, `Invalid`) a registration
    /// outside 100 ms to 1 hour.
    pub heartbeat_interval: Duration,
    /// Cache cap (bytes or a share of the disk).
    pub cache_cap: CacheCap,
    /// LEDBAT++ settings of the Background ports (ceiling, floor).
    pub background: branchline_ledbat::LedbatConfig,
    /// Serve Prometheus metrics here (a loopback address only); `None`: off.
    pub metrics: Option<SocketAddr>,
    /// Reported name; the host's name when `None`.
    pub hostname: Option<String>,
    /// How small-message requests to the server and peers are retransmitted.
    pub retry: RetryPolicy,
    /// Limits of the replay guard on the client's small-message ports.
    pub replay: ReplayConfig,
    /// The deployment CA's fingerprint (`sha256:HEX`) to pin at the first registration,
    /// read from `deployment.ca` beside the key file; `None`: pin whatever CA the first
    /// registration brings.
    pub ca_pin: Option<String>,
}

/// Why the client stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The data directory or the client id file cannot be used.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A client port cannot be bound (in use, or `bind` is not a local address).
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The server refused the registration as `Invalid`: fatal, its detail names the field
    /// to fix.
    #[error("the server refused this client's registration: {0}")]
    Refused(RequestError),
    /// [`Client::wait`] was called again after it had returned: the client had stopped.
    #[error("the client had already stopped")]
    AlreadyStopped,
    /// The client's main task panicked or was cancelled (a bug: the log has the panic).
    #[error("the client's main task ended abnormally: {0}")]
    MainTask(#[source] tokio::task::JoinError),
    /// The client's QUIC key, certificate request or pinned CA cannot be read or written.
    #[error("client identity (QUIC key) in {dir}: {message}")]
    Quic {
        /// The QUIC identity directory (`DATA_DIR/identity`).
        dir: PathBuf,
        /// What failed.
        message: String,
    },
    /// The content cache cannot be opened.
    #[error("content cache in {dir}: {message}")]
    Cache {
        /// The cache directory (`DATA_DIR/cache`).
        dir: PathBuf,
        /// What failed.
        message: String,
    },
    /// The server's registration reply carries no certificate, or one that is not for
    /// this client's key and name or does not chain to the CA.
    #[error("the server issued a certificate this client cannot use: {0}")]
    Certificate(String),
    /// The QUIC services, the metrics endpoint or the local socket cannot start.
    #[error("cannot start the QUIC services: {0}")]
    Services(String),
    /// `deployment.keys` in the data directory cannot be read.
    #[error("deployment keys: {0}")]
    Keys(String),
    /// The server presented another deployment CA than the pinned one. Never fatal: the
    /// client logs it, shows it in [`Status::Unreachable`] and keeps trying.
    #[error(
        "the server at {server} presented a different certificate authority ({got}) than the one this client pinned ({pinned}, {source_of_pin}): it is not this deployment's server, or the deployment's CA was replaced; the client refuses it and keeps trying. If the CA was replaced on purpose, stop the client and delete {pin_files}"
    )]
    CaMismatch {
        /// The server address the client registers with.
        server: IpAddr,
        /// Fingerprint (`sha256:HEX`) of the CA the server presented.
        got: String,
        /// Fingerprint of the pinned CA.
        pinned: String,
        /// Where the pin comes from (the first registration, or `deployment.ca`).
        source_of_pin: String,
        /// The files to delete to accept a replaced CA.
        pin_files: String,
    },
    /// A supervised serving task stopped ([`Client::wait`]); the daemon is deaf on that
    /// port and should exit non-zero so the service manager restarts it.
    #[error(transparent)]
    TaskDied(TaskDied),
}

/// The client's view of its registration, for status displays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Started; no registration has been answered yet.
    Starting,
    /// Registered and heartbeating; the value is when the server last answered.
    Registered {
        /// When the server last answered a registration or heartbeat.
        last_answer: Instant,
    },
    /// Not registered now, retrying: the server does not answer, answered with a
    /// key-mismatch notice, presented another CA, or waits for the admin's approval.
    Unreachable {
        /// When the client last recorded this state; only repeated failures to reach the
        /// server for a registration keep the first time.
        since: Instant,
        /// Why, for people.
        error: String,
    },
    /// Stopped for good.
    Failed(String),
}

/// A running client.
pub struct Client {
    id: ClientId,
    hostname: String,
    status: watch::Receiver<Status>,
    services: watch::Receiver<Option<Arc<Services>>>,
    cache: Arc<Cache<FsStorage>>,
    /// The registration loop; `None` once it has ended and been awaited.
    main: Option<JoinHandle<ClientError>>,
    tasks: Vec<JoinHandle<()>>,
    /// Reports a serving task that stopped ([`Client::wait`]).
    supervisor: Supervisor,
    _lock: identity::DataDirLock,
}

/// Answers small messages on the client's request port (34325).
struct ClientHandler {
    /// The server's address: only it may assign work.
    server: IpAddr,
    assignments: tokio::sync::mpsc::Sender<Assign>,
    discovery: Arc<discovery::Discovery>,
    signals: Arc<adaptive::Signals>,
}

impl Handler for ClientHandler {
    fn handle(&self, from: SocketAddr, body: Body) -> Response {
        match body {
            Body::Ping(_) => Response::Reply(Body::Ack(Ack {})),
            Body::Assign(a) if from.ip() == self.server => {
                // Full queue: the next heartbeat reply repeats the assignment.
                let _ = self.assignments.try_send(a);
                Response::Reply(Body::Ack(Ack {}))
            }
            Body::IHave(h) => self.discovery.on_answer(from, h),
            Body::TransferControl(c) if from.ip() == self.server => self.signals.on_control(c),
            other => Response::Reply(Body::Error(ErrorReply {
                code: ErrorCode::Unsupported as i32,
                detail: format!("a client does not accept {} messages", other.kind()),
                receiver_time_ms: 0,
            })),
        }
    }
}

impl Client {
    /// Loads (or creates) the identity, binds every client port and starts registering.
    pub async fn start(opts: ClientOptions) -> Result<Client, ClientError> {
        let lock = identity::DataDirLock::acquire(&opts.data_dir)?;
        let id = identity::load_or_create(&opts.data_dir)?;
        let quic_dir = opts.data_dir.join("identity");
        let quic_identity =
            ClientIdentity::load_or_generate(&quic_dir).map_err(|e| ClientError::Quic {
                dir: quic_dir.clone(),
                message: e.to_string(),
            })?;
        let cache_dir = opts.data_dir.join("cache");
        let cache = {
            let dir = cache_dir.clone();
            let cap = opts.cache_cap;
            tokio::task::spawn_blocking(move || Cache::open(&dir, cap, services::now_ms()))
                .await
                .map_err(|e| ClientError::Cache {
                    dir: cache_dir.clone(),
                    message: e.to_string(),
                })?
                .map_err(|e| ClientError::Cache {
                    dir: cache_dir.clone(),
                    message: e.to_string(),
                })?
        };
        let cache = Arc::new(cache);

        let stored = keyring::Stored::load(&opts.data_dir).map_err(ClientError::Keys)?;
        let held = keyring::initial(&opts.key, stored.as_ref(), services::now_ms());
        let mut ctx = Context::new(held.iter().map(|k| k.derive()).collect());
        ctx.retry = opts.retry;
        ctx.replay = opts.replay;
        let keys = Arc::new(keyring::KeyHolder::new(
            opts.data_dir.clone(),
            held,
            ctx.keys.clone(),
        ));

        let (ip, p) = (opts.bind, opts.ports);
        let request = bind_small(ip, p.small_request, "client.small_request").await?;
        let reply = bind_small(ip, p.small_reply, "client.small_reply").await?;
        let broadcast_port = bind_udp(ip, p.broadcast, "client.broadcast").await?;
        let adaptive = bind_udp(ip, p.adaptive, "client.adaptive").await?;
        // Held until the first certificate arrives; then QUIC takes these ports over.
        let mut quic_ports = Vec::new();
        for (port, name) in [
            (p.large_fg_request, "client.large_fg_request"),
            (p.large_fg_reply, "client.large_fg_reply"),
            (p.content_fg, "client.content_fg"),
            (p.large_bg_request, "client.large_bg_request"),
            (p.large_bg_reply, "client.large_bg_reply"),
            (p.content_bg, "client.content_bg"),
        ] {
            quic_ports.push(bind_udp(ip, port, name).await?);
        }

        let requester = Arc::new(Requester::new(reply, ctx.clone()));
        let server_addr = SocketAddr::new(opts.server, opts.server_ports.small_request);
        let address = netinfo::local_address(opts.bind, server_addr);
        let discovery = discovery::Discovery::new(
            requester.clone(),
            ctx.counters.clone(),
            id,
            p.small_request,
            p.content_fg,
            netinfo::subnet_of(address),
            p.broadcast,
            cache.clone(),
            Some(opts.data_dir.join("office")),
        );
        let signals = adaptive::Signals::new(
            requester.clone(),
            ctx.counters.clone(),
            id,
            SocketAddr::new(opts.server, opts.server_ports.adaptive),
        );
        let mut tasks = Vec::new();
        // Every serving task is supervised: one that stops takes the daemon down
        // ([`Client::wait`]) so the service manager restarts it.
        let supervisor = Supervisor::default();
        let client_metrics = Arc::new(metrics::ClientMetrics::default());
        if let Some(addr) = opts.metrics {
            let task = metrics::serve(
                addr,
                client_metrics.clone(),
                cache.clone(),
                ctx.counters.clone(),
            )
            .await
            .map_err(|e| ClientError::Services(format!("client metrics on {addr}: {e}")))?;
            tasks.push(supervisor.watch("client.metrics", task));
        }
        let serve_ctx = ctx.clone();
        let (assign_tx, assign_rx) = tokio::sync::mpsc::channel(64);
        let handler = Arc::new(ClientHandler {
            server: opts.server,
            assignments: assign_tx.clone(),
            discovery: discovery.clone(),
            signals: signals.clone(),
        });
        tasks.push(supervisor.spawn("client.small_request", async move {
            if let Err(e) = Responder::serve(request, serve_ctx, handler).await {
                tracing::error!(error = %e, "client request port failed");
            }
        }));
        // Subnet discovery on 34329: the unicast port, and (for a node bound to one
        // address, which receives no broadcasts there) the subnet's broadcast address.
        let mut broadcast_sockets = vec![broadcast_port];
        if let Some(target) = discovery.target()
            && !ip.is_unspecified()
        {
            match discovery::bind_broadcast_listener(target) {
                Ok(s) => broadcast_sockets.push(s),
                Err(e) => {
                    tracing::warn!(%target, error = %e, "cannot listen for subnet broadcasts; discovery answers only unicast")
                }
            }
        }
        for socket in broadcast_sockets {
            let (ctx, handler) = (
                ctx.clone(),
                Arc::new(discovery::BroadcastHandler(discovery.clone())),
            );
            tasks.push(supervisor.spawn("client.broadcast", async move {
                if let Err(e) = Responder::serve(socket, ctx, handler).await {
                    tracing::error!(error = %e, "client broadcast port failed");
                }
            }));
        }
        let peer_signals = Arc::new(adaptive::PeerSignalHandler {
            counters: ctx.counters.clone(),
        });
        let signals_ctx = ctx.clone();
        tasks.push(supervisor.spawn("client.adaptive", async move {
            if let Err(e) = Responder::serve(adaptive, signals_ctx, peer_signals).await {
                tracing::error!(error = %e, "client adaptive port failed");
            }
        }));
        let held: Vec<JoinHandle<()>> = quic_ports
            .into_iter()
            .map(|s| tokio::spawn(serve_reserved(s, ctx.counters.clone())))
            .collect();
        let (status_tx, status) = watch::channel(Status::Starting);
        let (services_tx, services) = watch::channel(None);
        let quic = Quic {
            identity: quic_identity,
            held,
            services: services_tx,
            cache: cache.clone(),
            discovery: discovery.clone(),
            signals: signals.clone(),
            metrics: client_metrics.clone(),
            revocation_epoch: Arc::default(),
            revocation_fetch: None,
            keys,
            validity: None,
            renewing: false,
            spawner: supervisor.spawner(),
        };
        let listener = local::bind(&opts.data_dir).map_err(|e| {
            ClientError::Services(format!(
                "cannot create the local socket {}: {e}",
                opts.data_dir.join(local::SOCKET).display()
            ))
        })?;
        let seed = u64::from_le_bytes(id.0[..8].try_into().expect("8 bytes"));
        // Every line the daemon logs carries its client id (JSON logs: in the span list).
        let span = tracing::info_span!("client", client = %id);
        tasks.push(supervisor.spawn(
            "client.local_socket",
            local::serve(listener, services.clone(), seed).instrument(span.clone()),
        ));
        tasks.push(supervisor.spawn(
            "client.jobs",
            jobs::run(assign_rx, services.clone(), seed).instrument(span.clone()),
        ));
        let hostname = opts.hostname.clone().unwrap_or_else(netinfo::hostname);
        let main =
            tokio::spawn(run(opts, id, requester, status_tx, quic, assign_tx).instrument(span));
        Ok(Client {
            id,
            hostname,
            status,
            services,
            cache,
            main: Some(main),
            tasks,
            supervisor,
            _lock: lock,
        })
    }

    /// This client's id (kept in `DATA_DIR/client-id`).
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// The name this client reports.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The registration status now.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// The QUIC services, once the client holds a certificate.
    pub fn services(&self) -> Option<Arc<Services>> {
        self.services.borrow().clone()
    }

    /// Waits for the QUIC services (they start after the first registration).
    pub async fn wait_services(&mut self) -> Option<Arc<Services>> {
        loop {
            if let Some(s) = self.services.borrow_and_update().clone() {
                return Some(s);
            }
            if self.services.changed().await.is_err() {
                return None;
            }
        }
    }

    /// The content cache.
    pub fn cache(&self) -> &Arc<Cache<FsStorage>> {
        &self.cache
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

    /// Runs until a fatal error (the only way the client stops by itself), or until a
    /// serving task (a receive loop, a QUIC accept loop, the local socket, the job loop)
    /// stops, which leaves the daemon deaf: the caller should then exit non-zero so the
    /// service manager restarts it.
    pub async fn wait(&mut self) -> ClientError {
        let Some(main) = self.main.as_mut() else {
            return ClientError::AlreadyStopped;
        };
        let result = tokio::select! {
            result = main => result,
            died = self.supervisor.died() => return ClientError::TaskDied(died),
        };
        self.main = None;
        match result {
            Ok(e) => e,
            Err(e) => ClientError::MainTask(e),
        }
    }

    /// Stops every task and releases the ports and the data directory.
    pub async fn shutdown(self) {
        // The supervised tasks first: the jobs loop ends on its own once `main` (which
        // holds the assignment channel's sender) is gone, and its supervisor would report
        // that orderly end as a death.
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
        if let Some(main) = self.main {
            main.abort();
            let _ = main.await;
        }
    }
}

/// Backoff between registration attempts while the server is unreachable: 1 s doubling
/// to 30 s, ±25 % jitter.
fn registration_backoff(failures: u32) -> Duration {
    branchline_time::Backoff::doubling(Duration::from_secs(1), Duration::from_secs(30)).spread(
        failures.saturating_add(1),
        0.25,
        rand::random_range(0.0..1.0),
    )
}

/// The QUIC side's state inside the registration loop.
struct Quic {
    identity: ClientIdentity,
    /// Reserved listeners on the QUIC ports, stopped when the services take the ports.
    held: Vec<JoinHandle<()>>,
    services: watch::Sender<Option<Arc<Services>>>,
    cache: Arc<Cache<FsStorage>>,
    discovery: Arc<discovery::Discovery>,
    signals: Arc<adaptive::Signals>,
    metrics: Arc<metrics::ClientMetrics>,
    /// The epoch of the revocation list applied to the QUIC endpoints (0: none yet),
    /// and the fetch of a newer one under way.
    revocation_epoch: Arc<std::sync::atomic::AtomicU64>,
    revocation_fetch: Option<JoinHandle<()>>,
    /// The deployment keys (rotation).
    keys: Arc<keyring::KeyHolder>,
    /// Validity of the certificate in use, for its renewal.
    validity: Option<branchline_quic::Validity>,
    /// True while registering again to renew the certificate.
    renewing: bool,
    /// Supervises the QUIC services' accept loops.
    spawner: Spawner,
}

impl Quic {
    /// Fetches and applies the server's revocation list unless `epoch` is the one
    /// applied already (0: fetch anyway) or a fetch is under way.
    fn refresh_revocations(&mut self, epoch: u64) {
        use std::sync::atomic::Ordering;
        if epoch != 0 && epoch == self.revocation_epoch.load(Ordering::Relaxed) {
            return;
        }
        if self
            .revocation_fetch
            .as_ref()
            .is_some_and(|t| !t.is_finished())
        {
            return;
        }
        let Some(svc) = self.services.borrow().clone() else {
            return;
        };
        let applied = self.revocation_epoch.clone();
        self.revocation_fetch = Some(tokio::spawn(async move {
            match svc.refresh_revocations().await {
                Ok(e) => applied.store(e, Ordering::Relaxed),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot fetch the revocation list; asking again at the next heartbeat")
                }
            }
        }));
    }

    /// Acts on the server's key announcement (`RegisterOk` / `HeartbeatAck`): seals with
    /// a key already held, retires the previous one after the overlap, or fetches the
    /// announced key over QUIC (in the background; one fetch at a time).
    fn on_key_announcement(&self, key_id: u32, retire_ms: u64) {
        let decision = keyring::decide(&self.keys.ids(), key_id, retire_ms, services::now_ms());
        match decision {
            keyring::Decision::Keep => {}
            keyring::Decision::Seal(id) => self.keys.seal_with(id),
            keyring::Decision::Retire(id) => self.keys.retire(id),
            keyring::Decision::Fetch => {
                let Some(svc) = self.services.borrow().clone() else {
                    tracing::info!(key_id = %branchline_wire::KeyId(key_id), "the server has rotated the deployment key; fetching it once the QUIC services run");
                    return;
                };
                let keys = self.keys.clone();
                if keys.start_fetch() {
                    tokio::spawn(async move {
                        keys.fetch(&svc, key_id).await;
                    });
                }
            }
        }
    }

    /// How long to wait before the next heartbeat: the interval, or less when the
    /// certificate is due for renewal sooner (but at least a second).
    fn next_wait(&self, interval: Duration, now: std::time::SystemTime) -> Duration {
        self.validity
            .map_or(interval, |v| v.wait_before_renewal(interval, now))
    }

    /// Whether the certificate in use is due for renewal at `now`.
    fn renewal_due(&self, now: std::time::SystemTime) -> bool {
        self.validity.is_some_and(|v| v.renewal_due(now))
    }

    /// Refuses a CA other than the pinned one (stored at the first registration, or the
    /// fingerprint beside the key file).
    fn check_ca(
        &self,
        ca: &CertificateDer<'static>,
        opts: &ClientOptions,
    ) -> Result<(), ClientError> {
        let got = branchline_quic::ca::fingerprint(ca);
        let pin_file = opts
            .ca_pin
            .as_ref()
            .map(|_| "deployment.ca beside the key file".to_owned());
        let stored = self.identity.pinned_ca().map_err(|e| ClientError::Quic {
            dir: self.identity.dir().to_owned(),
            message: e.to_string(),
        })?;
        let pins = stored
            .map(|c| {
                (
                    branchline_quic::ca::fingerprint(&c),
                    format!(
                        "stored at the first registration in {}",
                        self.identity.dir().join("ca.crt").display()
                    ),
                )
            })
            .into_iter()
            .chain(
                opts.ca_pin
                    .clone()
                    .zip(pin_file)
                    .map(|(p, f)| (p.to_ascii_lowercase(), f)),
            );
        for (pinned, source_of_pin) in pins {
            if pinned != got {
                return Err(ClientError::CaMismatch {
                    server: opts.server,
                    got,
                    pinned,
                    source_of_pin,
                    pin_files: format!(
                        "{} (and deployment.ca beside the key file, if there is one)",
                        self.identity.dir().join("ca.crt").display()
                    ),
                });
            }
        }
        Ok(())
    }
    /// Starts the QUIC services with `node`'s certificate, once.
    async fn start_services(
        &mut self,
        node: &NodeIdentity,
        ca: CertificateDer<'static>,
        opts: &ClientOptions,
    ) -> Result<bool, ClientError> {
        if self.services.borrow().is_some() {
            return Ok(false);
        }
        for h in self.held.drain(..) {
            h.abort();
            let _ = h.await;
        }
        let trust = services::trust_of(node, ca);
        let mut svc = Services::start(
            opts,
            node,
            trust,
            self.cache.clone(),
            self.discovery.clone(),
            self.signals.clone(),
            self.metrics.clone(),
        )
        .map_err(ClientError::Services)?;
        svc.supervise(&self.spawner);
        tracing::info!(
            content_port = opts.ports.content_fg,
            "QUIC services started"
        );
        let _ = self.services.send(Some(Arc::new(svc)));
        Ok(true)
    }

    /// Starts the QUIC services with the certificate the server issued at an earlier
    /// registration, while it is still valid: a client restarted while the server is
    /// unreachable still serves its office and finishes what it had started, from
    /// peers found on the subnet.
    async fn start_from_stored(&mut self, opts: &ClientOptions) {
        if self.services.borrow().is_some() {
            return;
        }
        match self.identity.load_certificate(std::time::SystemTime::now()) {
            Ok(Some((node, ca))) => match self.start_services(&node, ca, opts).await {
                Ok(true) => {
                    self.validity = branchline_quic::Validity::of(&node.certificate);
                    tracing::info!("QUIC services started with the stored certificate")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start QUIC with the stored certificate; waiting for registration")
                }
            },
            Ok(None) => {}
            Err(e) => {
                tracing::info!(error = %e, "the stored certificate is not usable; waiting for registration")
            }
        }
    }

    /// Installs the certificate from a registration reply and, the first time, starts the
    /// QUIC services. Re-reports every cached content item to the server.
    async fn on_registered(
        &mut self,
        ok: &RegisterOk,
        id: ClientId,
        opts: &ClientOptions,
    ) -> Result<(), ClientError> {
        if ok.client_cert.is_empty() {
            return Err(ClientError::Certificate(
                "the server sent no certificate".into(),
            ));
        }
        let deployment = DeploymentName::new(ok.deployment.clone())
            .map_err(|e| ClientError::Certificate(e.to_string()))?;
        let name =
            ClientName::from_id(&id.0).map_err(|e| ClientError::Certificate(e.to_string()))?;
        let ca = CertificateDer::from(ok.ca_cert.clone());
        self.check_ca(&ca, opts)?;
        let node = self
            .identity
            .install_certificate(
                CertificateDer::from(ok.client_cert.clone()),
                &ca,
                &deployment,
                &Role::Client(name),
                std::time::SystemTime::now(),
            )
            .map_err(|e| ClientError::Certificate(e.to_string()))?;
        self.validity = branchline_quic::Validity::of(&node.certificate);
        let renewing = std::mem::take(&mut self.renewing);
        if !self
            .start_services(&node, ca.clone().into_owned(), opts)
            .await?
        {
            // Running already: new handshakes present the new certificate (hot swap).
            let svc = self.services.borrow().clone();
            if let Some(svc) = svc {
                svc.identity
                    .renew(&node)
                    .map_err(|e| ClientError::Certificate(e.to_string()))?;
                tracing::info!(
                    not_after = ?self.validity.map(|v| v.not_after),
                    renew_at = ?self.validity.map(|v| v.renew_at()),
                    "certificate renewed; QUIC endpoints present the new one"
                );
            }
        }
        if renewing {
            return Ok(());
        }
        let svc = self.services.borrow().clone();
        if let Some(svc) = svc {
            let cache = self.cache.clone();
            let ids: Vec<_> = cache.list().into_iter().map(|s| s.id).collect();
            tokio::spawn(async move { report(&svc, &cache, ids).await });
        }
        // The revoked clients, at once: a restarted client does not wait a heartbeat.
        self.refresh_revocations(0);
        Ok(())
    }
}

/// Tells the server what this client holds of the content items `ids`: all of them after a
/// (re-)registration, so a restarted server learns it again; those found corrupted while
/// serving, after a heartbeat, so the server stops offering what is gone.
async fn report(svc: &Services, cache: &Cache<FsStorage>, ids: Vec<branchline_store::ContentId>) {
    for id in ids {
        let (Some(status), Some(have)) = (cache.status(&id), cache.have(&id)) else {
            continue;
        };
        let req = branchline_wire::large::Request::ReportHave(branchline_wire::large::ReportHave {
            content_id: status.id.as_bytes().to_vec(),
            have: if status.complete {
                Vec::new()
            } else {
                have.as_bytes().to_vec()
            },
            complete: status.complete,
            content_port: svc.content_port.into(),
            // Counts belong to downloads; a re-report after registration carries none.
            sources: None,
            served_by: Vec::new(),
        });
        if let Err(e) = svc.call(req).await {
            tracing::debug!(content = %status.id, error = %e, "could not report cached content");
        }
    }
}

/// Shows a key-mismatch notice in the status (the daemon keeps running).
fn key_mismatch(status: &watch::Sender<Status>, e: &RequestError) {
    let _ = status.send(Status::Unreachable {
        since: Instant::now(),
        error: e.to_string(),
    });
}

async fn run(
    opts: ClientOptions,
    id: ClientId,
    req: Arc<Requester>,
    status: watch::Sender<Status>,
    mut quic: Quic,
    assignments: tokio::sync::mpsc::Sender<Assign>,
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
    // Room left under the cap, and never more than the disk has.
    let cache = quic.cache.clone();
    let cache_size = cache.usage().cap;
    let cache_free = || {
        let u = cache.usage();
        let room = u.cap.saturating_sub(u.used);
        netinfo::free_space(&opts.data_dir)
            .unwrap_or(room)
            .min(room)
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
            cache_size_bytes: cache_size,
            cache_free_bytes: cache_free(),
            version: SOFTWARE_VERSION.into(),
            heartbeat_interval_ms: interval.as_millis().min(u32::MAX as u128) as u32,
            ports: Some(branchline_wire::validate::ports_to_wire(&opts.ports)),
            cert_request: match quic.identity.cert_request() {
                Ok(r) => r.encode().to_vec(),
                Err(e) => {
                    return fail(ClientError::Quic {
                        dir: quic.identity.dir().to_owned(),
                        message: e.to_string(),
                    });
                }
            },
        });
        match req.request(server, register).await {
            Ok(Body::RegisterOk(ok)) if ok.pending => {
                // server.enrollment = "approve": no certificate until the admin approves.
                let wait = format!(
                    "waiting for the admin's approval: branchline connector client approve {id}"
                );
                if failures.is_multiple_of(10) {
                    tracing::warn!(client = %id, %server, "{wait}; registering again until then");
                } else {
                    tracing::debug!(client = %id, "still {wait}");
                }
                let _ = status.send(Status::Unreachable {
                    since: Instant::now(),
                    error: wait,
                });
                tokio::time::sleep(
                    registration_backoff(failures).min(interval.max(Duration::from_secs(1))),
                )
                .await;
                failures += 1;
                continue;
            }
            Ok(Body::RegisterOk(ok)) => {
                failures = 0;
                quic.discovery.set_office(&ok.office, &ok.office_kind);
                match quic.on_registered(&ok, id, &opts).await {
                    Ok(()) => {}
                    Err(e @ ClientError::CaMismatch { .. }) => {
                        // Never act on a server with another CA; keep trying (the right
                        // server may answer), saying why loudly.
                        tracing::error!(error = %e, "refused the server's certificate authority");
                        let _ = status.send(Status::Unreachable {
                            since: Instant::now(),
                            error: e.to_string(),
                        });
                        tokio::time::sleep(registration_backoff(failures)).await;
                        failures += 1;
                        continue;
                    }
                    Err(e) => return fail(e),
                }
                tracing::info!(client = %id, %server, new = ok.new_client, server_version = %ok.server_version, "registered");
                quic.on_key_announcement(ok.key_id, ok.key_retire_ms);
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
            Err(RequestError::KeyMismatch { theirs, .. })
                if theirs != req.context().keys.sealing_id() && quic.keys.holds(theirs) =>
            {
                // The server seals with another key this client holds (a rotation).
                quic.keys.seal_with(theirs);
                continue;
            }
            Err(e @ RequestError::KeyMismatch { .. }) => {
                // Unauthenticated, so never final: say so loudly and keep trying.
                tracing::error!(error = %e, "registration refused with a key-mismatch notice; retrying");
                key_mismatch(&status, &e);
                tokio::time::sleep(registration_backoff(failures)).await;
                failures += 1;
                continue;
            }
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
                // Serve the office and finish started items meanwhile, if an earlier
                // registration left a valid certificate.
                quic.start_from_stored(&opts).await;
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
        // Heartbeat until something says to register again (or the certificate is due
        // for renewal: then register at once, even between heartbeats, but at most once
        // a second).
        loop {
            tokio::time::sleep(quic.next_wait(interval, std::time::SystemTime::now())).await;
            if quic.renewal_due(std::time::SystemTime::now()) {
                tracing::info!("certificate renewal due; registering again for a new one");
                quic.renewing = true;
                break;
            }
            let beat = Body::Heartbeat(Heartbeat {
                client_id: id.to_string(),
                cache_free_bytes: cache_free(),
                uptime_s: started.elapsed().as_secs(),
                drops: req
                    .context()
                    .counters
                    .snapshot()
                    .into_iter()
                    .chain(
                        quic.services
                            .borrow()
                            .as_ref()
                            .map(|s| s.accept_stats.snapshot())
                            .unwrap_or_default(),
                    )
                    .filter(|(_, n)| *n > 0)
                    .map(|(reason, count)| branchline_wire::msg::DropCount {
                        reason: reason.into(),
                        count,
                    })
                    .collect(),
            });
            match req.request_with(server, beat, beat_policy).await {
                Ok(Body::HeartbeatAck(ack)) if ack.known => {
                    quic.discovery.set_office(&ack.office, &ack.office_kind);
                    // A new revocation list: refuse revoked peers from now on.
                    if ack.revocation_epoch != 0 {
                        quic.refresh_revocations(ack.revocation_epoch);
                    }
                    quic.on_key_announcement(ack.key_id, ack.key_retire_ms);
                    let _ = status.send(Status::Registered {
                        last_answer: Instant::now(),
                    });
                    for a in ack.assignments.into_iter().take(MAX_ASSIGNMENTS) {
                        let _ = assignments.try_send(a);
                    }
                    let svc = quic.services.borrow().clone();
                    if let Some(svc) = svc {
                        let ids: Vec<_> = std::mem::take(
                            &mut *svc.corrupted.lock().unwrap_or_else(PoisonError::into_inner),
                        )
                        .into_iter()
                        .collect();
                        if !ids.is_empty() {
                            let cache = quic.cache.clone();
                            tokio::spawn(async move { report(&svc, &cache, ids).await });
                        }
                    }
                }
                Ok(Body::HeartbeatAck(_)) => {
                    tracing::info!(
                        "the server does not know this client any more; registering again"
                    );
                    break;
                }
                Ok(other) => tracing::warn!(reply = other.kind(), "unexpected reply to Heartbeat"),
                Err(RequestError::KeyMismatch { theirs, .. }) if quic.keys.holds(theirs) => {
                    quic.keys.seal_with(theirs);
                    break;
                }
                Err(e @ RequestError::KeyMismatch { .. }) => {
                    tracing::error!(error = %e, "heartbeat refused with a key-mismatch notice; registering again");
                    key_mismatch(&status, &e);
                    break;
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
