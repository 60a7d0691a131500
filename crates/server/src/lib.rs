//! The Branchline server: registry, catalogue, offices and deployments. It holds content
//! only when `server.content_cache_size` gives it a cache ([`content`]).
//!
//! It keeps the client registry (in memory, with SQLite as its durable copy), answers
//! small messages on its request port (34323), sends server-initiated messages
//! (assignments) from its reply port (34322), and serves large messages over QUIC
//! (Foreground 34333, Background 34341). On the Adaptive Protocol port (34545) it takes
//! the RVPs' transfer signals (`transfers`), which the admin's pause and resume act on.
//!
//! * [`registry`]: pure client bookkeeping (online/offline from missed heartbeats).
//! * [`db`]: SQLite with embedded, versioned migrations and a batching writer.
//! * [`handler`]: the request-port handlers (small messages).
//! * [`catalogue`]: published content and piece-map uploads (pure).
//! * [`locations`]: who holds what, who reads the origin (pure).
//! * [`large`]: large-message handlers (QUIC on 34333, and 34341 for Background): content,
//!   locate, have reports.
//! * [`content`]: the server's own content copy, sent to Central Office clients.
//! * [`offices`]: the office tree, placement by source address, one RVP per office and
//!   content, who pulls from where (pure; `docs/offices.md`).
//! * [`deploy`]: deployments, assignments and bytes per source kind (pure).
//! * [`keys`]: the deployment key's rotation (overlap, retirement, who moved).
//! * [`identities`]: each client id bound to one public key; pending, active, revoked
//!   (pure). [`enroll`] runs the admin's calls on them.
//! * [`quota`]: limits on new registrations per source address and in all (pure).
//! * [`reports`]: checks on what clients report about their peers (pure).
//! * [`transfers`]: live WAN transfers from the RVPs' signals; pause and resume (pure).
//! * [`trust`]: the connector's credential: activation tokens and signed admin requests.
//! * [`admin`]: admin-call transport (chunked JSON) and the request/result types.
//! * [`calls`]: running admin calls (topology, deploy, status) against the server state.
//! * [`web`]: the admin endpoint (HTTP, 34800 by default): metrics, JSON, dashboard.
//!
//! The server is its deployment's certificate authority (`DATA_DIR/ca`): it issues each
//! client a certificate at registration, which QUIC connections between peers require.

pub mod admin;
pub mod calls;
pub mod catalogue;
pub mod content;
pub mod db;
pub mod deploy;
pub mod enroll;
pub mod handler;
pub mod identities;
pub mod keys;
pub mod large;
pub mod locations;
pub mod offices;
pub mod quota;
pub mod registry;
pub mod reports;
pub mod transfers;
pub mod trust;
pub mod web;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use branchline_config::ServerPorts;
use branchline_quic::{
    Congestion, DeploymentCa, DeploymentName, DeploymentTrust, LargeConfig, LargeMessaging,
    TransportSettings, transport_config,
};
use branchline_transport::{
    BindError, Clock, Context, KeyFileError, ReplayConfig, Requester, Responder, RetryPolicy,
    Supervisor, SystemClock, TaskDied, bind_small, bind_udp, create_key_file, ensure_private_dir,
    read_key_file, restrict_file,
};
use branchline_wire::DeploymentKey;
use tokio::task::JoinHandle;

pub use db::{Db, DbError, SCHEMA_VERSION};
pub use handler::ServerState;
pub use registry::{ClientRecord, Registry};

/// File name of the deployment key inside the data directory.
pub const KEY_FILE: &str = "deployment.key";
/// File name, beside the deployment key, of the deployment CA's fingerprint
/// (`sha256:HEX`): a client whose key file has this file beside it pins that CA from its
/// first registration.
pub const CA_PIN_FILE: &str = "deployment.ca";
/// File name of the SQLite database inside the data directory.
pub const DB_FILE: &str = "branchline.db";

/// Everything needed to start a server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Where the server keeps its key, database, CA, tokens and content cache; created
    /// (mode 0700) at the first start.
    pub data_dir: PathBuf,
    /// The address every server port binds to (`server.bind`; `0.0.0.0` = every interface).
    pub bind: IpAddr,
    /// The server's ports (`[ports.server]`; small messages 34323/34322, QUIC 34333/34341,
    /// adaptive 34545 by default).
    pub ports: ServerPorts,
    /// A client is offline once this many of its heartbeat intervals pass unheard
    /// (`server.offline_after_missed_heartbeats`, default 3; at least 1).
    pub offline_after_missed: u32,
    /// Retries of the server-initiated small messages (`[transport]`).
    pub retry: RetryPolicy,
    /// The replay window for incoming small messages (`[transport]`).
    pub replay: ReplayConfig,
    /// LEDBAT++ settings of the Background ports (ceiling, floor).
    pub background: branchline_ledbat::LedbatConfig,
    /// Cap of the server's own content cache; `None`: the server holds no content.
    pub content_cache: Option<branchline_store::CacheCap>,
    /// The admin endpoint (metrics, JSON, dashboard); `None`: turned off.
    pub admin: Option<web::AdminOptions>,
    /// How new clients enroll (`server.enrollment`).
    pub enrollment: identities::Enrollment,
    /// How long a rotated-out deployment key stays accepted (`server.key_overlap_s`).
    pub key_overlap: std::time::Duration,
    /// Validity of the client certificates issued (`server.client_cert_lifetime_s`);
    /// clients renew at two thirds of it.
    pub client_cert_lifetime: std::time::Duration,
    /// Quotas on registrations (new ids per source address, clients in all).
    pub registration_quota: quota::QuotaConfig,
}

/// Makes the QUIC endpoints' revocation list match the revoked identities.
pub fn apply_revocations(ids: &identities::Identities, list: &branchline_quic::RevocationList) {
    let names = ids
        .revoked()
        .iter()
        .filter_map(|c| branchline_quic::ClientName::from_id(&c.0).ok())
        .collect::<Vec<_>>();
    list.replace_clients(names);
}

/// Locks one part of the server's state. A panic while it was held does not stop the
/// server: the state is used as it was left.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Unix milliseconds now (one clock for the whole workspace).
pub use branchline_time::now_ms;

/// After a restart, no new RVP or origin reader is chosen for this long unless a client
/// says it held the role: the downloads under way keep their roles. Clients say so in
/// their next locate, which may come up to 10 s (the client's longest gap between
/// locates) after the last one before the restart, plus the locate's own retries on a
/// busy machine: 5 s let a second origin reader start on a loaded machine.
pub const RESTART_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

/// Most server-initiated assignments queued for sending.
const PUSH_QUEUE: usize = 4096;

/// The tree before any topology is applied: one Central Office holding the /24 (IPv6:
/// /64) of the server's bind address, or no subnet when it binds every interface (then
/// every client lands in an automatic office until a topology is applied).
pub fn default_tree(bind: IpAddr) -> branchline_office::Tree {
    let subnets = if bind.is_unspecified() {
        Vec::new()
    } else {
        let prefix = if bind.is_ipv4() { 24 } else { 64 };
        ipnet::IpNet::new(bind, prefix)
            .map(|n| vec![n.trunc()])
            .unwrap_or_default()
    };
    branchline_office::Tree::with_central(subnets)
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory, or a file the server writes in it, cannot be made or read.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The deployment key file cannot be read or created.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// The database cannot be opened, migrated or read.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A UDP port cannot be bound (in use, or an address this host lacks).
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The deployment CA (`DATA_DIR/ca`) cannot be loaded, made or used to issue the
    /// server's certificate.
    #[error("certificate authority in {dir}: {message}")]
    Ca {
        /// The CA's directory.
        dir: PathBuf,
        /// Why.
        message: String,
    },
    /// The server's content cache (`DATA_DIR/content`) cannot be opened.
    #[error("the server's content cache in {dir}: {message}")]
    ContentCache {
        /// The cache's directory.
        dir: PathBuf,
        /// Why.
        message: String,
    },
    /// The admin endpoint cannot start (its token, TLS or its port).
    #[error("admin endpoint: {0}")]
    Admin(String),
    /// The topology stored by `connector topology apply` no longer parses or applies.
    #[error("the stored office topology cannot be loaded: {0}")]
    Topology(String),
    /// A QUIC endpoint cannot be bound or configured.
    #[error("cannot start QUIC on {addr} ({name}): {message}")]
    Quic {
        /// The address it was to bind.
        addr: SocketAddr,
        /// Which port (its configuration key) or setting.
        name: &'static str,
        /// Why.
        message: String,
    },
}

/// Name of every deployment's certificates (each deployment has its own CA; the name only
/// scopes the certificates' DNS names).
pub const DEPLOYMENT_NAME: &str = "branchline";
/// Validity of the deployment CA.
const CA_VALIDITY: std::time::Duration = std::time::Duration::from_secs(20 * 365 * 24 * 3600);
/// Validity of the server's own certificate (a new one at every start).
const SERVER_CERT_VALIDITY: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// What start-up found or created in the data directory.
#[derive(Debug)]
pub struct Setup {
    /// True on the first start: there was no deployment key, and one was just made.
    pub created_key: bool,
    /// The deployment key (the same as in `key_path`).
    pub key: DeploymentKey,
    /// `DATA_DIR/deployment.key`.
    pub key_path: PathBuf,
    /// `DATA_DIR/branchline.db`.
    pub db_path: PathBuf,
    /// Client records read back from the database (revoked clients included).
    pub clients_loaded: usize,
    /// The admin endpoint, when it is on.
    pub admin: Option<web::AdminInfo>,
    /// The pending one-time token for `connector activate` (printed at start).
    pub connector_token: branchline_wire::connector::Token,
    /// Where pending tokens are kept.
    pub tokens_path: PathBuf,
    /// The deployment CA's fingerprint (`sha256:HEX`), also in `DATA_DIR/deployment.ca`.
    pub ca_fingerprint: String,
}

/// A running server.
pub struct Server {
    /// What start-up found or created.
    pub setup: Setup,
    state: Arc<ServerState>,
    /// Sends server-initiated small messages from the reply port (34322).
    pub requester: Arc<Requester>,
    request_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    writer_task: JoinHandle<()>,
    /// Reports a serving task that stopped ([`Server::died`]).
    supervisor: Supervisor,
    db: Db,
    large: LargeMessaging,
    large_bg: LargeMessaging,
}

fn prepare_data_dir(dir: &Path) -> Result<(DeploymentKey, bool), ServerError> {
    ensure_private_dir(dir).map_err(|source| ServerError::DataDir {
        path: dir.to_owned(),
        source,
    })?;
    let key_path = dir.join(KEY_FILE);
    if key_path.exists() {
        return Ok((read_key_file(&key_path)?, false));
    }
    let key = DeploymentKey::from_bytes(rand::random());
    create_key_file(&key_path, &key)?;
    Ok((key, true))
}

impl Server {
    /// Prepares the data directory (first start: creates it, the deployment key and the
    /// database), loads the registry and binds every server port.
    pub async fn start(opts: ServerOptions) -> Result<Server, ServerError> {
        let (key, created_key) = prepare_data_dir(&opts.data_dir)?;
        let db_path = opts.data_dir.join(DB_FILE);
        let db = Db::open(&db_path).await?;
        // Not readable by others, whatever the umask made of them.
        for suffix in ["", "-wal", "-shm"] {
            let mut p = db_path.clone().into_os_string();
            p.push(suffix);
            restrict_file(Path::new(&p)).map_err(|source| ServerError::DataDir {
                path: PathBuf::from(p.clone()),
                source,
            })?;
        }
        let records = db.load_clients().await?;
        let bindings = db.load_identities().await?;
        let connectors = db.count_connectors().await?;
        let contents = db.load_contents().await?;
        let topology = db.load_topology().await?;
        let deployments = db.load_deployments().await?;
        let ca_dir = opts.data_dir.join("ca");
        let ca_err = |e: &dyn std::fmt::Display| ServerError::Ca {
            dir: ca_dir.clone(),
            message: e.to_string(),
        };
        let deployment = DeploymentName::new(DEPLOYMENT_NAME).map_err(|e| ca_err(&e))?;
        let now = std::time::SystemTime::now();
        let ca = DeploymentCa::load_or_generate(&ca_dir, deployment, now, CA_VALIDITY)
            .map_err(|e| ca_err(&e))?;
        let identity = ca
            .server_identity(now, SERVER_CERT_VALIDITY)
            .map_err(|e| ca_err(&e))?;
        // One revocation list for every QUIC endpoint of the server.
        let mut identities = identities::Identities::new(opts.enrollment, now_ms());
        identities.load(bindings);
        let revoked = branchline_quic::RevocationList::new();
        apply_revocations(&identities, &revoked);
        let trust_of = |ca: &DeploymentCa| {
            let mut t = DeploymentTrust::new(ca.deployment().clone(), ca.certificate().clone());
            t.revoked = revoked.clone();
            t
        };
        let trust = trust_of(&ca);
        let ca_fingerprint = branchline_quic::ca::fingerprint(ca.certificate());
        let pin_path = opts.data_dir.join(CA_PIN_FILE);
        if std::fs::read_to_string(&pin_path)
            .ok()
            .as_deref()
            .map(str::trim)
            != Some(&ca_fingerprint)
        {
            std::fs::write(&pin_path, format!("{ca_fingerprint}\n")).map_err(|source| {
                ServerError::DataDir {
                    path: pin_path.clone(),
                    source,
                }
            })?;
        }
        let mut catalogue = catalogue::Catalogue::new();
        for item in contents {
            catalogue.load(item);
        }
        let clients_loaded = records.len();
        let mut offices = offices::Offices::new(default_tree(opts.bind));
        if let Some(toml) = &topology {
            let file = branchline_office::TopologyFile::parse(toml)
                .map_err(|e| ServerError::Topology(e.to_string()))?;
            let ips = records
                .iter()
                .filter_map(|r| Some((r.id, calls::seen_ip(r)?)));
            offices
                .apply(&file, ips)
                .map_err(|e| ServerError::Topology(e.to_string()))?;
        } else {
            for r in &records {
                if let Some(ip) = calls::seen_ip(r) {
                    offices.place(r.id, ip);
                }
            }
        }
        if clients_loaded > 0 {
            // A restart: the RVPs and origin readers of before get RESTART_GRACE to say so.
            offices.set_grace(SystemClock.now_ms() + RESTART_GRACE.as_millis() as u64);
        }
        let mut registry = Registry::new(opts.offline_after_missed);
        // Revoked clients stay out of the registry (their heartbeats are refused anyway).
        registry.load(
            records
                .into_iter()
                .filter(|r| identities.state(&r.id) != Some(identities::IdState::Revoked)),
        );

        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        // A rotation's overlap survives a restart: both keys stay accepted until its end.
        let key_state = keys::KeyState::load(&opts.data_dir, key.clone(), clock.now_ms()).map_err(
            |source| ServerError::DataDir {
                path: opts.data_dir.join(keys::PREVIOUS_KEY_FILE),
                source,
            },
        )?;
        if let Some((previous, retire_at_ms)) = key_state.previous() {
            tracing::info!(
                previous = %previous.fingerprint(),
                retire_at_ms,
                "a key rotation is under way: the previous deployment key is accepted until its overlap ends"
            );
        }
        let mut ctx = Context::new(key_state.accepted());
        ctx.clock = clock.clone();
        ctx.retry = opts.retry;
        ctx.replay = opts.replay;

        // Bind everything before spawning anything, so a port conflict leaves nothing behind.
        let p = opts.ports;
        let ip = opts.bind;
        let request = bind_small(ip, p.small_request, "server.small_request").await?;
        let reply = bind_small(ip, p.small_reply, "server.small_reply").await?;
        let large_request = SocketAddr::new(ip, p.large_fg_request);
        let mut large = LargeMessaging::bind(
            large_request,
            SocketAddr::new(ip, p.large_fg_reply),
            &identity,
            trust,
            Arc::new(transport_config(
                &TransportSettings::default(),
                &Congestion::Foreground,
            )),
            LargeConfig {
                // Requests are small (a locate, a have-set); replies carry piece maps.
                max_payload: 16 << 20,
                ..LargeConfig::default()
            },
        )
        .map_err(|e| ServerError::Quic {
            addr: large_request,
            name: "server.large_fg_request / large_fg_reply",
            message: e.to_string(),
        })?;
        // Background (LEDBAT++) large messages, for clients in child offices.
        let large_bg_request = SocketAddr::new(ip, p.large_bg_request);
        let ledbat = Arc::new(
            branchline_ledbat::LedbatFactory::new(opts.background.clone()).map_err(|e| {
                ServerError::Quic {
                    addr: large_bg_request,
                    name: "background (LEDBAT++) settings",
                    message: e.to_string(),
                }
            })?,
        );
        let mut large_bg = LargeMessaging::bind(
            large_bg_request,
            SocketAddr::new(ip, p.large_bg_reply),
            &identity,
            trust_of(&ca),
            Arc::new(branchline_quic::background_transport(
                &TransportSettings::default(),
                ledbat,
            )),
            LargeConfig {
                max_payload: 16 << 20,
                ..LargeConfig::default()
            },
        )
        .map_err(|e| ServerError::Quic {
            addr: large_bg_request,
            name: "server.large_bg_request / large_bg_reply",
            message: e.to_string(),
        })?;
        let content = match opts.content_cache {
            None => None,
            Some(cap) => {
                let dir = opts.data_dir.join("content");
                let cache = {
                    let open_dir = dir.clone();
                    tokio::task::spawn_blocking(move || {
                        branchline_store::Cache::open(&open_dir, cap, now_ms())
                    })
                    .await
                    .map_err(|e| ServerError::ContentCache {
                        dir: dir.clone(),
                        message: e.to_string(),
                    })?
                    .map_err(|e| ServerError::ContentCache {
                        dir: dir.clone(),
                        message: e.to_string(),
                    })?
                };
                // Sends from an ephemeral port to the clients' 34760 (the seed's row).
                let node = branchline_quic::ContentNode::bind(
                    SocketAddr::new(ip, 0),
                    &identity,
                    trust_of(&ca),
                    Arc::new(transport_config(
                        &TransportSettings::default(),
                        &Congestion::Foreground,
                    )),
                    branchline_quic::ContentConfig::default(),
                )
                .map_err(|e| ServerError::Quic {
                    addr: SocketAddr::new(ip, 0),
                    name: "server content sender",
                    message: e.to_string(),
                })?;
                Some(Arc::new(content::ServerContent::new(Arc::new(cache), node)))
            }
        };
        let admin = match &opts.admin {
            Some(a) => Some(
                web::bind(a, &opts.data_dir)
                    .await
                    .map_err(ServerError::Admin)?,
            ),
            None => None,
        };
        let adaptive = bind_udp(ip, p.adaptive, "server.adaptive").await?;
        let request_addr = request.local_addr().map_err(|source| BindError {
            addr: SocketAddr::new(ip, p.small_request),
            name: "server.small_request".into(),
            source,
        })?;

        let mut connectors_auth =
            trust::ConnectorAuth::load(&opts.data_dir).map_err(|source| ServerError::DataDir {
                path: opts.data_dir.join(trust::CREDENTIALS_FILE),
                source,
            })?;
        let connector_token =
            connectors_auth
                .pending_token()
                .map_err(|source| ServerError::DataDir {
                    path: opts.data_dir.join(trust::TOKENS_FILE),
                    source,
                })?;
        // Bounds on what clients may hold on the large-message ports, counted in health.
        let quic_refusals = Arc::new(branchline_quic::AcceptStats::default());
        large.set_accept_limits(
            branchline_quic::AcceptLimits::default(),
            quic_refusals.clone(),
        );
        large_bg.set_accept_limits(
            branchline_quic::AcceptLimits::default(),
            quic_refusals.clone(),
        );
        let supervisor = Supervisor::default();
        let (writer, writer_task) = db::Writer::spawn(db.clone());
        let writer_task = supervisor.watch("server.database_writer", writer_task);
        let (push_tx, mut push_rx) = tokio::sync::mpsc::channel(PUSH_QUEUE);
        let state = Arc::new(ServerState {
            registry: Mutex::new(registry),
            writer,
            counters: ctx.counters.clone(),
            clock,
            started: Instant::now(),
            connectors_total: AtomicU64::new(connectors),
            large_requests: AtomicU64::new(0),
            quic_refusals,
            quota: Mutex::new(quota::RegistrationQuota::new(opts.registration_quota)),
            ca,
            catalogue: Mutex::new(catalogue),
            locations: Mutex::new(locations::Locations::new()),
            content,
            offices: Mutex::new(offices),
            deployments: Mutex::new(deploy::Deployments::load(deployments)),
            calls: Mutex::new(admin::Calls::default()),
            client_drops: Mutex::new(handler::ClientDrops::default()),
            transfers: Mutex::new(transfers::Transfers::default()),
            connector_auth: Mutex::new(connectors_auth),
            identities: Mutex::new(identities),
            reports: Mutex::new(reports::Reports::new()),
            revoked,
            push_tx,
            keys: Mutex::new(key_state),
            keyset: ctx.keys.clone(),
            data_dir: opts.data_dir.clone(),
            key_overlap: opts.key_overlap,
            client_cert_lifetime: opts.client_cert_lifetime,
        });
        // Retires the previous key when its overlap ends.
        let retiring = state.clone();
        let mut tasks_keys = vec![tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
            loop {
                tick.tick().await;
                retiring.retire_keys();
            }
        })];
        let large_state = state.clone();
        let large_task =
            large.serve(move |peer, bytes| large::handle(large_state.clone(), peer, bytes));
        let large_state = state.clone();
        let large_bg_task =
            large_bg.serve(move |peer, bytes| large::handle(large_state.clone(), peer, bytes));
        let mut tasks = vec![
            supervisor.watch("server.large_fg_request (QUIC accept)", large_task),
            supervisor.watch("server.large_bg_request (QUIC accept)", large_bg_task),
        ];
        tasks.extend(
            tasks_keys
                .drain(..)
                .map(|k| supervisor.watch("server.key_retirement", k)),
        );
        let metrics = Arc::new(web::metrics::Metrics::default());
        let handler = Arc::new(web::metrics::Metered::new(
            handler::ServerHandler(state.clone()),
            metrics.clone(),
        ));
        let admin_info = admin.as_ref().map(|a| a.info.clone());
        if let Some(bound) = admin {
            tasks.push(supervisor.watch(
                "server.admin",
                web::spawn(bound, state.clone(), metrics, &identity).map_err(ServerError::Admin)?,
            ));
        }
        let serve_ctx = ctx.clone();
        tasks.push(supervisor.spawn("server.small_request", async move {
            if let Err(e) = Responder::serve(request, serve_ctx, handler).await {
                tracing::error!(error = %e, "server request port failed");
            }
        }));
        // Adaptive Protocol control signals from the RVPs (34545).
        let signals = Arc::new(transfers::SignalHandler(state.clone()));
        let signals_ctx = ctx.clone();
        tasks.push(supervisor.spawn("server.adaptive", async move {
            if let Err(e) = Responder::serve(adaptive, signals_ctx, signals).await {
                tracing::error!(error = %e, "server adaptive port failed");
            }
        }));
        let requester = Arc::new(Requester::new(reply, ctx));
        // Assignments pushed to clients, from the reply port (34322) to their 34325; a
        // few at a time, each retried by the requester until acknowledged.
        let pusher = requester.clone();
        tasks.push(supervisor.spawn("server.push", async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(64));
            while let Some((to, body)) = push_rx.recv().await {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let pusher = pusher.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(e) = pusher.request(to, body).await
                    {
                        tracing::debug!(%to, error = %e, "assignment push failed; the heartbeat reply carries it");
                    }
                });
            }
        }));
        Ok(Server {
            setup: Setup {
                created_key,
                key,
                key_path: opts.data_dir.join(KEY_FILE),
                db_path,
                clients_loaded,
                admin: admin_info,
                connector_token,
                tokens_path: opts.data_dir.join(trust::TOKENS_FILE),
                ca_fingerprint,
            },
            state,
            requester,
            request_addr,
            tasks,
            writer_task,
            supervisor,
            db,
            large,
            large_bg,
        })
    }

    /// Shared state (registry, counters), e.g. for the demo's table.
    pub fn state(&self) -> &Arc<ServerState> {
        &self.state
    }

    /// The bound request-port address.
    pub fn request_addr(&self) -> SocketAddr {
        self.request_addr
    }

    /// Waits until a serving task (a receive loop, a QUIC accept loop, the database
    /// writer, the admin endpoint) stops by itself, which it should never do: the
    /// caller should then shut down and exit non-zero so a service manager restarts
    /// the process, rather than run on deaf.
    pub async fn died(&mut self) -> TaskDied {
        self.supervisor.died().await
    }

    /// Stops serving, writes every pending heartbeat and closes the database.
    pub async fn shutdown(self) {
        self.large.close();
        self.large_bg.close();
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        drop(self.requester);
        // Nothing serves any more: after this flush the writer has nothing left to write.
        self.state.writer.flush().await;
        self.writer_task.abort();
        let _ = self.writer_task.await;
        self.db.close().await;
    }
}
