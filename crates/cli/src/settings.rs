//! Merging flags over the config file, and running the server and client daemons.

use std::path::{Path, PathBuf};
use std::time::Duration;

use branchline_client::{Client, ClientOptions};
use branchline_config::Config;
use branchline_server::{Server, ServerOptions};
use branchline_transport::{ReplayConfig, RetryPolicy, read_key_file};

use crate::args::{Action, ClientArgs, ConnectorArgs, ServerArgs};
use crate::fail::{Fail, exit};

/// Reads the config file (or the defaults) and applies `--port` overrides.
pub fn load(path: Option<&Path>, ports: &[String]) -> Result<Config, Fail> {
    let mut config = Config::load(path).map_err(|e| Fail::new(exit::USAGE, e.to_string()))?;
    for spec in ports {
        config
            .ports
            .apply_override(spec)
            .map_err(|e| Fail::new(exit::USAGE, e.to_string()))?;
    }
    config
        .validate()
        .map_err(|e| Fail::new(exit::USAGE, e.to_string()))?;
    Ok(config)
}

/// LEDBAT++ settings from `[background]`.
pub fn background(config: &Config) -> branchline_ledbat::LedbatConfig {
    let b = &config.background;
    branchline_ledbat::LedbatConfig {
        ceiling: (b.ceiling_bytes_per_s != 0).then_some(b.ceiling_bytes_per_s),
        floor: b.floor_bytes_per_s,
        ..branchline_ledbat::LedbatConfig::default()
    }
}

/// The client cache cap from `client.cache_size`.
pub fn cache_cap(config: &Config) -> Result<branchline_store::CacheCap, Fail> {
    config.client.cache_size.parse().map_err(|e| {
        Fail::new(
            exit::USAGE,
            format!("invalid setting client.cache_size: {e}"),
        )
    })
}

/// Retry and replay policies from `[transport]`.
pub fn policies(config: &Config) -> (RetryPolicy, ReplayConfig) {
    let t = &config.transport;
    let retry = RetryPolicy {
        initial_timeout: Duration::from_secs_f64(t.initial_retry_s),
        max_timeout: Duration::from_secs_f64(t.max_retry_s),
        deadline: Duration::from_secs_f64(t.request_deadline_s),
        ..RetryPolicy::default()
    };
    let replay = ReplayConfig {
        window: Duration::from_secs_f64(t.replay_window_s),
        future_skew: Duration::from_secs_f64(t.replay_future_skew_s),
        ..ReplayConfig::default()
    };
    (retry, replay)
}

fn required<T>(v: Option<T>, flag: &str, key: &str) -> Result<T, Fail> {
    v.ok_or_else(|| {
        Fail::new(
            exit::USAGE,
            format!("{flag} is required (or set {key} in the config file)"),
        )
    })
}

pub fn server(config: &Config, args: ServerArgs) -> Result<(ServerOptions, usize), Fail> {
    let c = &config.server;
    let (retry, replay) = policies(config);
    let admin = admin_options(config, &args)?;
    let opts = ServerOptions {
        data_dir: required(
            args.data_dir.or(c.data_dir.clone()),
            "--data-dir",
            "server.data_dir",
        )?,
        bind: args.bind.unwrap_or(c.bind),
        ports: config.ports.server,
        offline_after_missed: args
            .offline_after
            .unwrap_or(c.offline_after_missed_heartbeats)
            .max(1),
        retry,
        replay,
        background: background(config),
        admin,
        enrollment: c
            .enrollment
            .parse()
            .map_err(|e: String| Fail::new(exit::USAGE, e))?,
        registration_quota: registration_quota(config),
        content_cache: match c.content_cache_size.trim() {
            "0" | "" => None,
            s => Some(s.parse().map_err(|e| {
                Fail::new(
                    exit::USAGE,
                    format!("invalid setting server.content_cache_size: {e}"),
                )
            })?),
        },
        key_overlap: std::time::Duration::from_secs_f64(c.key_overlap_s),
        client_cert_lifetime: std::time::Duration::from_secs_f64(c.client_cert_lifetime_s),
    };
    Ok((opts, c.threads))
}

/// Registration quotas from `[server]`.
pub fn registration_quota(config: &Config) -> branchline_server::quota::QuotaConfig {
    branchline_server::quota::QuotaConfig {
        new_clients_per_source_per_minute: config.server.new_clients_per_source_per_minute,
        max_clients: config.server.max_clients,
    }
}

/// The admin endpoint from `[admin]` and the flags; `None` when it is turned off.
fn admin_options(
    config: &Config,
    args: &ServerArgs,
) -> Result<Option<branchline_server::web::AdminOptions>, Fail> {
    let a = &config.admin;
    if args.no_admin || !a.enabled {
        return Ok(None);
    }
    let bind = args.bind.unwrap_or(config.server.bind);
    let ip = args.admin_address.unwrap_or_else(|| a.address_for(bind));
    Ok(Some(branchline_server::web::AdminOptions {
        addr: (ip, args.admin_port.unwrap_or(a.port)).into(),
        tls: match a.tls.as_str() {
            "always" => branchline_server::web::TlsMode::Always,
            _ => branchline_server::web::TlsMode::Auto,
        },
    }))
}

/// The CA fingerprint in `deployment.ca` beside the key file, if there is one (the
/// server writes it beside its own `deployment.key`).
fn read_ca_pin(key_file: &std::path::Path) -> Result<Option<String>, Fail> {
    let path = key_file
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join(branchline_server::CA_PIN_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Fail::new(
                exit::USAGE,
                format!("cannot read the CA fingerprint {}: {e}", path.display()),
            ));
        }
    };
    let pin = text.trim().to_ascii_lowercase();
    let ok = pin
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(Fail::new(
            exit::USAGE,
            format!(
                "{} does not hold a CA fingerprint (`sha256:` and 64 hex digits); copy it from the server's data directory, or delete it",
                path.display()
            ),
        ));
    }
    Ok(Some(pin))
}

pub fn client(config: &Config, args: ClientArgs) -> Result<ClientOptions, Fail> {
    let c = &config.client;
    let (retry, replay) = policies(config);
    let key_file: PathBuf = required(
        args.key_file.or(c.key_file.clone()),
        "--key-file",
        "client.key_file",
    )?;
    let key = read_key_file(&key_file).map_err(|e| Fail::new(exit::USAGE, e.to_string()))?;
    let ca_pin = read_ca_pin(&key_file)?;
    let interval = args.heartbeat_interval.unwrap_or(c.heartbeat_interval_s);
    if !(0.1..=3600.0).contains(&interval) {
        return Err(Fail::new(
            exit::USAGE,
            format!("--heartbeat-interval {interval} is outside 0.1..=3600 seconds"),
        ));
    }
    Ok(ClientOptions {
        server: required(args.server.or(c.server), "--server", "client.server")?,
        server_ports: config.ports.server,
        key,
        data_dir: required(
            args.data_dir.or(c.data_dir.clone()),
            "--data-dir",
            "client.data_dir",
        )?,
        bind: args.bind.unwrap_or(c.bind),
        ports: config.ports.client,
        heartbeat_interval: Duration::from_secs_f64(interval),
        cache_cap: match args.cache_size {
            Some(s) => s
                .parse()
                .map_err(|e| Fail::new(exit::USAGE, format!("--cache-size: {e}")))?,
            None => cache_cap(config)?,
        },
        hostname: args.hostname.or(c.hostname.clone()),
        retry,
        replay,
        ca_pin,
        background: background(config),
        metrics: match args.metrics_port.unwrap_or(c.metrics_port) {
            0 => None,
            port => {
                let bind = args.bind.unwrap_or(c.bind);
                let ip = if bind.is_loopback() {
                    bind
                } else {
                    std::net::Ipv4Addr::LOCALHOST.into()
                };
                Some(std::net::SocketAddr::new(ip, port))
            }
        },
    })
}

/// What the connector needs.
pub struct ConnectorOptions {
    pub server: std::net::SocketAddr,
    pub reply: std::net::SocketAddr,
    pub key: branchline_wire::DeploymentKey,
    /// Where the key was read from.
    pub key_file: PathBuf,
    /// The connector credential file (written by `activate --token`).
    pub credential: PathBuf,
    pub retry: RetryPolicy,
    pub replay: ReplayConfig,
}

pub fn connector(config: &Config, args: ConnectorArgs) -> Result<(ConnectorOptions, Action), Fail> {
    let c = &config.connector;
    let (retry, replay) = policies(config);
    let key_file: PathBuf = required(
        args.key_file.or(c.key_file.clone()),
        "--key-file",
        "connector.key_file",
    )?;
    let key = read_key_file(&key_file).map_err(|e| Fail::new(exit::USAGE, e.to_string()))?;
    let server = required(args.server.or(c.server), "--server", "connector.server")?;
    let bind = args.bind.unwrap_or(c.bind);
    // Beside the key file unless set.
    let credential = args
        .credential
        .or(c.credential_file.clone())
        .unwrap_or_else(|| {
            key_file
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join("connector.credential")
        });
    Ok((
        ConnectorOptions {
            server: (server, config.ports.server.small_request).into(),
            reply: (bind, config.ports.connector.reply).into(),
            key,
            key_file: key_file.clone(),
            credential,
            retry,
            replay,
        },
        args.action,
    ))
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

pub async fn run_server(opts: ServerOptions) -> Result<(), Fail> {
    let bind = opts.bind;
    let ports = opts.ports;
    let data_dir = opts.data_dir.clone();
    let mut server = Server::start(opts)
        .await
        .map_err(|e| Fail::new(exit::FAILURE, e.to_string()))?;
    let s = &server.setup;
    if s.created_key {
        println!("Branchline server: first start in {}", data_dir.display());
        println!("  database: {}", s.db_path.display());
        println!();
        println!(
            "Deployment key: {} (mode 0600; never printed)",
            s.key_path.display()
        );
        println!("  fingerprint: {}", s.key.fingerprint());
        println!(
            "Deployment CA: {} (in {}; copy it beside the clients' key file so they pin this CA)",
            s.ca_fingerprint,
            data_dir.join(branchline_server::CA_PIN_FILE).display()
        );
        println!();
        println!(
            "Give clients and the connector a copy of that file (keep it secret, mode 0600), e.g.:"
        );
        println!(
            "  branchline client --server <this host's IP> --key-file deployment.key --data-dir /var/lib/branchline"
        );
        println!(
            "  branchline connector --server <this host's IP> --key-file deployment.key health"
        );
        println!();
    }
    if let Some(a) = &s.admin {
        let scheme = if a.tls { "https" } else { "http" };
        println!(
            "Admin endpoint: {scheme}://{}/ (dashboard, /metrics, /api); token in {}{}",
            a.addr,
            a.token_path.display(),
            if a.created_token {
                " (just created)"
            } else {
                ""
            }
        );
        if a.tls {
            println!(
                "  TLS with the deployment CA ({}): connect by the name {}",
                data_dir.join("ca").join("ca.crt").display(),
                branchline_server::web::tls_name()
            );
        }
        tracing::info!(admin = %a.addr, tls = a.tls, "admin endpoint ready");
    }
    println!(
        "Connector activation token (one use; kept in {}):",
        s.tokens_path.display()
    );
    println!("  {}", s.connector_token.to_text());
    println!(
        "  branchline connector --server <this host's IP> --key-file deployment.key activate --token <token>"
    );
    println!();
    tracing::info!(
        %bind,
        small_request = ports.small_request,
        small_reply = ports.small_reply,
        clients = s.clients_loaded,
        db = %s.db_path.display(),
        key_file = %s.key_path.display(),
        key_fingerprint = %s.key.fingerprint(),
        ca_fingerprint = %s.ca_fingerprint,
        "server ready"
    );
    // A serving task that stops by itself leaves the server deaf: exit non-zero so the
    // service manager (packaging/systemd, Restart=on-failure) starts it again.
    let died = tokio::select! {
        _ = shutdown_signal() => None,
        died = server.died() => Some(died),
    };
    tracing::info!("shutting down: writing pending state");
    server.shutdown().await;
    match died {
        None => Ok(()),
        Some(died) => Err(Fail::new(exit::FAILURE, died.to_string())),
    }
}

pub async fn run_client(opts: ClientOptions) -> Result<(), Fail> {
    let data_dir = opts.data_dir.clone();
    let server = opts.server;
    let mut client = Client::start(opts)
        .await
        .map_err(|e| Fail::new(exit::FAILURE, e.to_string()))?;
    tracing::info!(client = %client.id(), %server, data_dir = %data_dir.display(), "client started");
    let outcome = tokio::select! {
        e = client.wait() => Some(e),
        _ = shutdown_signal() => None,
    };
    client.shutdown().await;
    match outcome {
        None => Ok(()),
        Some(e) => Err(Fail::new(exit::FAILURE, e.to_string())),
    }
}
