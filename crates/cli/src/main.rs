//! `branchline`: the single binary. It only orchestrates: parse flags, merge them over the
//! config file, start the library that does the work, and turn its errors into messages
//! and exit codes.

mod args;
mod clients;
mod commands;
mod connector;
mod demo;
mod fail;
mod get;
mod keys;
mod offices;
mod publish;
mod settings;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::args::{ClientArgs, ConnectorArgs, LogFormat, ServerArgs};
use crate::fail::{Fail, exit};

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
                runtime(1)?.block_on(commands::run(opts, action))
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
