//! `branchline`: the single binary. It only orchestrates: parse flags, merge them over the
//! config file, start the library that does the work, and turn its errors into messages
//! and exit codes.

mod connector;
mod demo;
mod get;
mod keys;
mod offices;
mod publish;
mod settings;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Exit codes, documented in README.md.
pub mod exit {
    /// Something failed (the message says what).
    pub const FAILURE: u8 = 1;
    /// Bad command line or configuration.
    pub const USAGE: u8 = 2;
    /// The deployment key does not match the server's.
    pub const KEY_MISMATCH: u8 = 3;
    /// The server did not answer before the deadline.
    pub const UNREACHABLE: u8 = 4;
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Fail {
    pub code: u8,
    pub message: String,
}

impl Fail {
    pub fn new(code: u8, message: impl Into<String>) -> Fail {
        Fail {
            code,
            message: message.into(),
        }
    }
}

impl From<branchline_transport::RequestError> for Fail {
    fn from(e: branchline_transport::RequestError) -> Fail {
        use branchline_transport::RequestError as E;
        let code = match &e {
            E::KeyMismatch { .. } => exit::KEY_MISMATCH,
            E::Timeout { .. } => exit::UNREACHABLE,
            _ => exit::FAILURE,
        };
        Fail::new(code, e.to_string())
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "branchline",
    version,
    about = "Peer-to-peer content distribution for many offices"
)]
struct Cli {
    /// TOML configuration file (see docs/configuration.md).
    #[arg(long, global = true, env = "BRANCHLINE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Move a port: NAME=VALUE, e.g. server.small_request=44323 (repeatable).
    #[arg(long = "port", global = true, value_name = "NAME=VALUE")]
    ports: Vec<String>,
    /// Log filter (e.g. info, debug, branchline_transport=debug).
    #[arg(long, global = true, env = "BRANCHLINE_LOG", value_name = "FILTER")]
    log: Option<String>,
    /// Log lines as text, or as one JSON object per line (with the fields and spans).
    #[arg(
        long,
        global = true,
        env = "BRANCHLINE_LOG_FORMAT",
        value_name = "FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (metadata, registration, health).
    Server(ServerArgs),
    /// Run the client daemon on this device.
    Client(ClientArgs),
    /// Talk to the server as the connector (the admin's command line).
    Connector(ConnectorArgs),
    /// Get a content item through the local client daemon and print its path.
    Get(get::GetArgs),
    /// Run a server and a few clients on loopback addresses and show them registered.
    Demo(demo::DemoArgs),
}

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Data directory (created on first start: database and deployment key).
    #[arg(long, env = "BRANCHLINE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address to bind every server port on.
    #[arg(long, env = "BRANCHLINE_BIND", value_name = "IP")]
    bind: Option<IpAddr>,
    /// Heartbeat intervals a client may miss before it is shown offline.
    #[arg(long, value_name = "N")]
    offline_after: Option<u32>,
    /// Address of the admin endpoint (metrics, JSON, dashboard); default 127.0.0.1, or
    /// the bind address when that is a loopback address.
    #[arg(long, env = "BRANCHLINE_ADMIN_ADDRESS", value_name = "IP")]
    admin_address: Option<IpAddr>,
    /// Port of the admin endpoint (default 34800).
    #[arg(long, value_name = "PORT")]
    admin_port: Option<u16>,
    /// Turn the admin endpoint off.
    #[arg(long)]
    no_admin: bool,
}

#[derive(Args, Debug)]
pub struct ClientArgs {
    /// The server's address.
    #[arg(long, env = "BRANCHLINE_SERVER", value_name = "IP")]
    server: Option<IpAddr>,
    /// File holding the deployment key (copy of the server's deployment.key).
    #[arg(long, env = "BRANCHLINE_KEY_FILE", value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Data directory (client id, cache).
    #[arg(long, env = "BRANCHLINE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address to bind every client port on.
    #[arg(long, env = "BRANCHLINE_BIND", value_name = "IP")]
    bind: Option<IpAddr>,
    /// Seconds between heartbeats.
    #[arg(long, value_name = "SECS")]
    heartbeat_interval: Option<f64>,
    /// Name to report instead of the host's name.
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
    /// Cache cap: bytes ("20GiB") or a share of the disk ("25%").
    #[arg(long, value_name = "SIZE")]
    cache_size: Option<String>,
    /// Serve Prometheus metrics on this loopback port (0: off).
    #[arg(long, value_name = "PORT")]
    metrics_port: Option<u16>,
}

#[derive(Args, Debug)]
pub struct ConnectorArgs {
    /// The server's address.
    #[arg(long, env = "BRANCHLINE_SERVER", value_name = "IP")]
    server: Option<IpAddr>,
    /// File holding the deployment key.
    #[arg(long, env = "BRANCHLINE_KEY_FILE", value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Address to bind the connector's reply port (34320) on.
    #[arg(long, env = "BRANCHLINE_BIND", value_name = "IP")]
    bind: Option<IpAddr>,
    /// The connector credential file. Default: `connector.credential` beside the key file.
    #[arg(long, env = "BRANCHLINE_CONNECTOR_CREDENTIAL", value_name = "FILE")]
    credential: Option<PathBuf>,
    #[command(subcommand)]
    action: connector::Action,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn init_logging(filter: Option<&str>, default: &str, format: LogFormat) {
    let filter = filter
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default.to_owned());
    let env = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        // One object per line: the event's fields at the top level, with the fields of
        // the spans it happened in (client, content, office where known).
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, Fail> {
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if threads > 1 {
            b.worker_threads(threads);
        }
        b.enable_all().build()
    };
    rt.map_err(|e| {
        Fail::new(
            exit::FAILURE,
            format!("cannot start the async runtime: {e}"),
        )
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = match cli.command {
        Command::Server(_) | Command::Client(_) => "info",
        Command::Connector(_) | Command::Demo(_) | Command::Get(_) => "warn",
    };
    init_logging(cli.log.as_deref(), default_log, cli.log_format);
    let result = (|| -> Result<(), Fail> {
        let config = settings::load(cli.config.as_deref(), &cli.ports)?;
        match cli.command {
            Command::Server(args) => {
                let (opts, threads) = settings::server(&config, args)?;
                runtime(threads)?.block_on(settings::run_server(opts))
            }
            Command::Client(args) => {
                let opts = settings::client(&config, args)?;
                runtime(0)?.block_on(settings::run_client(opts))
            }
            Command::Connector(args) => {
                let (opts, action) = settings::connector(&config, args)?;
                runtime(1)?.block_on(connector::run(opts, action))
            }
            Command::Get(args) => {
                runtime(1)?.block_on(get::run(args, config.client.data_dir.clone()))
            }
            Command::Demo(args) => runtime(0)?.block_on(demo::run(&config, args)),
        }
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
