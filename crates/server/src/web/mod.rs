//! The admin endpoint (HTTP, axum): Prometheus metrics, JSON for everything the
//! dashboard shows, and the dashboard itself. Not part of the seed's port table: it
//! listens on `127.0.0.1:34800` by default (on the server's own address when that is a
//! loopback address, so several servers on one machine each have theirs), and can be
//! moved or turned off (`[admin]` in the config).
//!
//! * Every request needs the admin token, created at first start beside the database
//!   (`DATA_DIR/admin.token`, mode 0600): `Authorization: Bearer TOKEN`, the
//!   `branchline_admin` cookie, or `?token=TOKEN` (which also sets the cookie, so a
//!   browser opened on `http://127.0.0.1:34800/?token=TOKEN` keeps working). Anything
//!   else is refused with 401.
//! * On an address other than loopback it serves TLS only (rustls, TLS 1.3), with a
//!   certificate from the deployment CA naming the server's role ([`tls_name`]:
//!   `s.branchline`): trust `DATA_DIR/ca/ca.crt` and connect by that name.
//! * `/api/...` answers with exactly what the connector's `--json` prints: both run the
//!   same admin call (`crate::calls::execute`).
//!
//! [`metrics`] holds the counters; [`pages`] renders the dashboard.

pub mod metrics;
pub mod pages;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::admin::{AdminCall, AdminResult, FailKind};
use crate::handler::ServerState;

/// File name of the admin token inside the data directory.
pub const TOKEN_FILE: &str = "admin.token";
/// The admin endpoint's default port (not in the seed's table).
pub const DEFAULT_PORT: u16 = 34800;
/// Name of the cookie that carries the token for a browser.
pub const COOKIE: &str = "branchline_admin";
/// Most TLS handshakes in progress at once.
const MAX_HANDSHAKES: usize = 64;
/// Transfer rates are measured over at least this long (ms).
pub const RATE_WINDOW_MS: u64 = 3000;
/// A TLS handshake that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// When the endpoint serves TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// TLS unless the address is a loopback address.
    Auto,
    /// Always TLS.
    Always,
}

/// Where the admin endpoint listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminOptions {
    /// The address and port to listen on (`[admin] address` / `port`; the command line
    /// defaults it to `127.0.0.1:34800`, or the server's own address when that is a
    /// loopback one).
    pub addr: SocketAddr,
    /// When to serve TLS (`[admin] tls`).
    pub tls: TlsMode,
}

/// The name the endpoint's TLS certificate carries (the server's role in the deployment).
pub fn tls_name() -> String {
    branchline_quic::DeploymentName::new(crate::DEPLOYMENT_NAME)
        .map(|d| branchline_quic::Role::Server.dns_name(&d))
        .unwrap_or_default()
}

/// What start-up set up for the admin endpoint.
#[derive(Clone, Debug)]
pub struct AdminInfo {
    /// The address it listens on (the port chosen, when 0 was asked for).
    pub addr: SocketAddr,
    /// True when it serves TLS only.
    pub tls: bool,
    /// The admin token's file (`DATA_DIR/admin.token`).
    pub token_path: PathBuf,
    /// True when the token was created by this start.
    pub created_token: bool,
}

/// The bound (not yet serving) endpoint.
pub struct Bound {
    listener: TcpListener,
    token: String,
    /// The endpoint's address, TLS and token file, for the start-up banner.
    pub info: AdminInfo,
}

/// Reads the admin token, creating it (32 random bytes, hex, mode 0600) on first start.
pub fn load_or_create_token(dir: &Path) -> std::io::Result<(String, PathBuf, bool)> {
    let path = dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok((t.trim().to_owned(), path, false)),
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} is empty; delete it and restart the server to create a new token",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let bytes: [u8; 32] = rand::random();
    let token = hex::encode(bytes);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(format!("{token}\n").as_bytes())?;
    f.sync_all()?;
    Ok((token, path, true))
}

/// Binds the endpoint and prepares its token (before anything is spawned).
pub async fn bind(opts: &AdminOptions, data_dir: &Path) -> Result<Bound, String> {
    let (token, token_path, created_token) = load_or_create_token(data_dir)
        .map_err(|e| format!("admin token in {}: {e}", data_dir.display()))?;
    let listener = TcpListener::bind(opts.addr).await.map_err(|e| {
        format!(
            "cannot listen on {} (admin.address / admin.port): {e}",
            opts.addr
        )
    })?;
    let addr = listener.local_addr().unwrap_or(opts.addr);
    let tls = opts.tls == TlsMode::Always || !addr.ip().is_loopback();
    Ok(Bound {
        listener,
        token,
        info: AdminInfo {
            addr,
            tls,
            token_path,
            created_token,
        },
    })
}

/// One byte-counter sample, for rates.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at_ms: u64,
    bytes: u64,
    rate: f64,
}

/// What the handlers share.
pub struct App {
    /// The server state the pages and `/api` read.
    pub state: Arc<ServerState>,
    /// The counters behind `/metrics` that the server updates as it runs.
    pub metrics: Arc<metrics::Metrics>,
    token: String,
    tls: bool,
    registry: prometheus_client::registry::Registry,
    /// Per (office, content): the last WAN byte count seen, for transfer rates.
    samples: Mutex<HashMap<(String, String), Sample>>,
}

impl App {
    /// Bytes per second over the last [`RATE_WINDOW_MS`] or more, for a transfer's byte
    /// counter.
    pub fn rate(&self, office: &str, content: &str, bytes: u64) -> f64 {
        let now = self.state.clock.now_ms();
        let mut samples = crate::lock(&self.samples);
        let key = (office.to_owned(), content.to_owned());
        match samples.get_mut(&key) {
            None => {
                if samples.len() >= 4096 {
                    samples.clear();
                }
                samples.insert(
                    key,
                    Sample {
                        at_ms: now,
                        bytes,
                        rate: 0.0,
                    },
                );
                0.0
            }
            Some(s) => {
                // Clients report progress every few seconds: a window shorter than
                // that would show bursts, not the link's rate.
                let dt = now.saturating_sub(s.at_ms);
                if dt >= RATE_WINDOW_MS {
                    s.rate = bytes.saturating_sub(s.bytes) as f64 * 1000.0 / dt as f64;
                    s.at_ms = now;
                    s.bytes = bytes;
                }
                s.rate
            }
        }
    }

    /// The transfers with their rates (the `transfers` admin call plus
    /// `rate_bytes_per_s`).
    pub fn transfers(&self) -> Vec<(crate::admin::TransferView, f64)> {
        crate::calls::transfers_view(&self.state)
            .transfers
            .into_iter()
            .map(|t| {
                let r = self.rate(&t.office, &t.content_id, t.bytes_wan_in);
                (t, r)
            })
            .collect()
    }
}

/// Starts serving on a bound endpoint.
pub fn spawn(
    bound: Bound,
    state: Arc<ServerState>,
    metrics: Arc<metrics::Metrics>,
    identity: &branchline_quic::NodeIdentity,
) -> Result<JoinHandle<()>, String> {
    let registry = metrics::registry(metrics.clone(), state.clone());
    let app = Arc::new(App {
        state,
        metrics,
        token: bound.token,
        tls: bound.info.tls,
        registry,
        samples: Mutex::new(HashMap::new()),
    });
    let router = router(app);
    let addr = bound.info.addr;
    if bound.info.tls {
        let config = tls_config(identity)?;
        let listener = TlsListener::start(bound.listener, config);
        Ok(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(%addr, error = %e, "admin endpoint failed");
            }
        }))
    } else {
        let listener = bound.listener;
        Ok(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(%addr, error = %e, "admin endpoint failed");
            }
        }))
    }
}

/// Every route, behind the token check.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/deployments", get(pages::deployments))
        .route("/clients", get(pages::clients))
        .route("/catalogue", get(pages::catalogue))
        .route("/part/{name}", get(pages::part))
        .route("/metrics", get(metrics_text))
        .route("/api/topology", get(api_topology))
        .route("/api/clients", get(api_clients))
        .route("/api/catalogue", get(api_catalogue))
        .route("/api/deployments", get(api_deployments))
        .route("/api/transfers", get(api_transfers))
        .route("/api/status/{content}", get(api_status))
        .route("/api/health", get(api_health))
        .layer(axum::middleware::from_fn_with_state(app.clone(), auth))
        .with_state(app)
}

/// Equal, in time that depends only on the lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token a request carries: (token, came in the query string).
fn presented(req: &Request) -> Option<(String, bool)> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION)
        && let Ok(v) = v.to_str()
        && let Some(t) = v.strip_prefix("Bearer ")
    {
        return Some((t.trim().to_owned(), false));
    }
    for v in req.headers().get_all(header::COOKIE) {
        if let Ok(v) = v.to_str() {
            for part in v.split(';') {
                if let Some(t) = part.trim().strip_prefix(&format!("{COOKIE}=")) {
                    return Some((t.to_owned(), false));
                }
            }
        }
    }
    let query = req.uri().query()?;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(|t| (t.to_owned(), true))
}

async fn auth(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    match presented(&req) {
        Some((t, from_query)) if same(t.as_bytes(), app.token.as_bytes()) => {
            let mut resp = next.run(req).await;
            if from_query {
                let cookie = format!(
                    "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict{}",
                    app.token,
                    if app.tls { "; Secure" } else { "" }
                );
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    resp.headers_mut().insert(header::SET_COOKIE, v);
                }
            }
            resp
        }
        _ => {
            app.metrics.admin_refused.inc();
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"branchline\"")],
                "401: the admin endpoint needs its token (the file admin.token in the server's data directory): send `Authorization: Bearer TOKEN`, or open /?token=TOKEN in a browser\n",
            )
                .into_response()
        }
    }
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    let mut out = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut out, &app.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            out,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response(),
    }
}

/// Runs an admin call and answers with its JSON, as the connector prints it.
async fn call(app: &App, call: AdminCall) -> Response {
    match crate::calls::execute(app.state.clone(), call).await {
        AdminResult::Ok(v) => axum::Json(v).into_response(),
        AdminResult::Error { kind, message } => {
            let code = match kind {
                FailKind::Invalid => StatusCode::BAD_REQUEST,
                FailKind::NotFound => StatusCode::NOT_FOUND,
                FailKind::Failed => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (code, axum::Json(serde_json::json!({ "error": message }))).into_response()
        }
    }
}

async fn api_topology(State(app): State<Arc<App>>) -> Response {
    call(&app, AdminCall::TopologyShow).await
}

async fn api_clients(State(app): State<Arc<App>>) -> Response {
    call(&app, AdminCall::Clients).await
}

async fn api_catalogue(State(app): State<Arc<App>>) -> Response {
    call(&app, AdminCall::Catalogue).await
}

async fn api_deployments(State(app): State<Arc<App>>) -> Response {
    call(&app, AdminCall::Deployments).await
}

async fn api_status(State(app): State<Arc<App>>, UrlPath(content): UrlPath<String>) -> Response {
    call(&app, AdminCall::Status { content }).await
}

/// The `transfers` call, each transfer with `rate_bytes_per_s` added.
async fn api_transfers(State(app): State<Arc<App>>) -> Response {
    let transfers: Vec<serde_json::Value> = app
        .transfers()
        .into_iter()
        .map(|(t, rate)| {
            let mut v = serde_json::to_value(t).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("rate_bytes_per_s".into(), rate.round().into());
            }
            v
        })
        .collect();
    axum::Json(serde_json::json!({ "transfers": transfers })).into_response()
}

/// The health report (the fields of `connector health --json`).
async fn api_health(State(app): State<Arc<App>>) -> Response {
    axum::Json(health_json(&app.state.health())).into_response()
}

/// The health report as one JSON object (the keys are a stable interface): what
/// `/api/health` serves, and `connector health --json` with the server's address added.
pub fn health_json(h: &branchline_wire::msg::Health) -> serde_json::Value {
    let by_reason = |drops: &[branchline_wire::msg::DropCount]| {
        drops
            .iter()
            .map(|d| (d.reason.clone(), serde_json::Value::from(d.count)))
            .collect::<serde_json::Map<String, serde_json::Value>>()
    };
    serde_json::json!({
        "version": h.version,
        "uptime_s": h.uptime_s,
        "database": h.database,
        "schema_version": h.schema_version,
        "clients_total": h.clients_total,
        "clients_online": h.clients_online,
        "connectors_total": h.connectors_total,
        "large_requests": h.large_requests,
        "client_drops": by_reason(&h.client_drops),
        "dropped_datagrams": h.dropped_datagrams,
        "drops": by_reason(&h.drops),
    })
}

/// Serves HTML with the usual headers.
pub fn html(body: String) -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'",
            ),
        ],
        Html(body),
    )
        .into_response()
}

fn tls_config(
    identity: &branchline_quic::NodeIdentity,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![identity.certificate.clone()], identity.private_key())
        .map_err(|e| format!("admin TLS certificate: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TCP connections and hands on those that complete a TLS handshake; the
/// handshakes run apart from the accept loop, a bounded number at a time.
struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    _task: AbortOnDrop,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl TlsListener {
    fn start(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> TlsListener {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, rx) = tokio::sync::mpsc::channel(MAX_HANDSHAKES);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let task = tokio::spawn(async move {
            loop {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "admin endpoint accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "admin TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "admin TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener {
            rx,
            local,
            _task: AbortOnDrop(task),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task is gone: serve nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (t1, path, created) = load_or_create_token(dir.path()).unwrap();
        assert!(created);
        assert_eq!(t1.len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (t2, _, created) = load_or_create_token(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(t1, t2);
    }

    /// Off loopback the endpoint speaks TLS with a certificate from the deployment CA:
    /// a client that trusts `ca.crt` and connects by [`tls_name`] gets its answer.
    #[tokio::test]
    async fn tls_listener_serves_with_the_deployment_ca() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let now = std::time::SystemTime::now();
        let deployment = branchline_quic::DeploymentName::new(crate::DEPLOYMENT_NAME).unwrap();
        let ca = branchline_quic::DeploymentCa::generate(
            deployment,
            now,
            Duration::from_secs(3600 * 24),
        )
        .unwrap();
        let identity = ca.server_identity(now, Duration::from_secs(3600)).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = TlsListener::start(tcp, tls_config(&identity).unwrap());
        let router = Router::new().route("/", get(|| async { "over tls" }));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.certificate().clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::try_from(tls_name()).unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"GET / HTTP/1.1\r\nHost: s.branchline\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tls.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("over tls"), "{answer}");
        // Plain HTTP gets no answer.
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
        assert!(!String::from_utf8_lossy(&buf).contains("over tls"));
        server.abort();
    }

    #[test]
    fn constant_time_compare() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
