//! The command line's argument types (clap), below every module that acts on them.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Data directory (created on first start: database and deployment key).
    #[arg(long, env = "BRANCHLINE_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Address to bind every server port on.
    #[arg(long, env = "BRANCHLINE_BIND", value_name = "IP")]
    pub(crate) bind: Option<IpAddr>,
    /// Heartbeat intervals a client may miss before it is shown offline.
    #[arg(long, value_name = "N")]
    pub(crate) offline_after: Option<u32>,
    /// Address of the admin endpoint (metrics, JSON, dashboard); default 127.0.0.1, or
    /// the bind address when that is a loopback address.
    #[arg(long, env = "BRANCHLINE_ADMIN_ADDRESS", value_name = "IP")]
    pub(crate) admin_address: Option<IpAddr>,
    /// Port of the admin endpoint (default 34800).
    #[arg(long, value_name = "PORT")]
    pub(crate) admin_port: Option<u16>,
    /// Turn the admin endpoint off.
    #[arg(long)]
    pub(crate) no_admin: bool,
}

#[derive(Args, Debug)]
pub struct ClientArgs {
    /// The server's address.
    #[arg(long, env = "BRANCHLINE_SERVER", value_name = "IP")]
    pub(crate) server: Option<IpAddr>,
    /// File holding the deployment key (copy of the server's deployment.key).
    #[arg(long, env = "BRANCHLINE_KEY_FILE", value_name = "FILE")]
    pub(crate) key_file: Option<PathBuf>,
    /// Data directory (client id, cache).
    #[arg(long, env = "BRANCHLINE_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Address to bind every client port on.
    #[arg(long, env = "BRANCHLINE_BIND", value_name = "IP")]
    pub(crate) bind: Option<IpAddr>,
    /// Seconds between heartbeats.
    #[arg(long, value_name = "SECS")]
    pub(crate) heartbeat_interval: Option<f64>,
    /// Name to report instead of the host's name.
    #[arg(long, value_name = "NAME")]
    pub(crate) hostname: Option<String>,
    /// Cache cap: bytes ("20GiB") or a share of the disk ("25%").
    #[arg(long, value_name = "SIZE")]
    pub(crate) cache_size: Option<String>,
    /// Serve Prometheus metrics on this loopback port (0: off).
    #[arg(long, value_name = "PORT")]
    pub(crate) metrics_port: Option<u16>,
}

#[derive(Args, Debug)]
pub struct ConnectorArgs {
    /// The server's address.
    #[arg(long, env = "BRANCHLINE_SERVER", value_name = "IP")]
    pub(crate) server: Option<IpAddr>,
    /// File holding the deployment key.
    #[arg(long, env = "BRANCHLINE_KEY_FILE", value_name = "FILE")]
    pub(crate) key_file: Option<PathBuf>,
    /// Address to bind the connector's reply port (34320) on.
    #[arg(long, env = "BRANCHLINE_BIND", value_name = "IP")]
    pub(crate) bind: Option<IpAddr>,
    /// The connector credential file. Default: `connector.credential` beside the key file.
    #[arg(long, env = "BRANCHLINE_CONNECTOR_CREDENTIAL", value_name = "FILE")]
    pub(crate) credential: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) action: Action,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Action {
    /// Prove the deployment key to the server and record this connector; with a token,
    /// enrol it: admin commands (publish, topology apply, deploy, status) need the
    /// connector credential this stores (mode 0600), never the deployment key alone.
    Activate {
        /// The one-time token the server printed at start (also in its data directory,
        /// `connector.tokens`).
        #[arg(long, env = "BRANCHLINE_CONNECTOR_TOKEN", value_name = "TOKEN")]
        token: Option<String>,
        /// Read the token from this file instead.
        #[arg(long, value_name = "FILE", conflicts_with = "token")]
        token_file: Option<std::path::PathBuf>,
        /// This connector's name on the server. Default: the host's name.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// Show the server's version, uptime, database state, clients and dropped datagrams.
    Health {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Hash a package locally and publish its metadata and piece map to the catalogue.
    Publish(PublishArgs),
    /// The content catalogue.
    Content {
        #[command(subcommand)]
        command: ContentCommand,
    },
    /// The office tree: offices, subnets, parents, WAN link policy.
    Topology {
        #[command(subcommand)]
        command: TopologyCommand,
    },
    /// Make clients fetch a content item with nobody calling `get`.
    Deploy {
        /// Content id or name[@version].
        content: String,
        /// all, office:NAME or client:ID.
        #[arg(long = "to", value_name = "TARGET")]
        to: String,
        /// Fill the caches only.
        #[arg(long)]
        prestage: bool,
    },
    /// Per office: clients done, the RVP, and where the bytes came from.
    Status {
        /// Content id or name[@version].
        content: String,
        #[arg(long)]
        json: bool,
    },
    /// Every client: office, online, cache, RVP roles.
    Clients {
        #[arg(long)]
        json: bool,
    },
    /// Every deployment with its progress per office, and the bytes saved.
    Deployments {
        #[arg(long)]
        json: bool,
    },
    /// The content crossing each office's WAN link now.
    Transfers {
        #[arg(long)]
        json: bool,
    },
    /// Pause or resume one live WAN transfer (its id from `transfers`).
    Transfer {
        #[command(subcommand)]
        command: TransferCommand,
    },
    /// Client identities: list, approve, reset or revoke (each id is bound to its key).
    Client {
        #[command(subcommand)]
        command: crate::clients::ClientCommand,
    },
    /// The deployment key: rotate it, or see who has moved to the current one.
    Key {
        #[command(subcommand)]
        command: crate::keys::KeyCommand,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum TransferCommand {
    /// Stop the transfer: its link carries none of it until it is resumed.
    Pause { id: u64 },
    /// Go on from where it stopped (no verified piece is fetched again).
    Resume { id: u64 },
}

#[derive(Subcommand, Debug, Clone)]
pub enum ContentCommand {
    /// List every published content item.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// What to publish.
#[derive(clap::Args, Debug, Clone)]
pub struct PublishArgs {
    /// The package: a file path or an HTTP(S) URL.
    pub source: String,
    /// Name in the catalogue (default: the file name).
    #[arg(long)]
    pub name: Option<String>,
    /// Version in the catalogue.
    #[arg(long, default_value = "1")]
    pub version: String,
    /// Where clients read the bytes when no peer has them (default: the URL, or the
    /// file's absolute path).
    #[arg(long, value_name = "URL|PATH")]
    pub origin: Option<String>,
    /// Piece size in bytes (a power of two, 16 KiB to 16 MiB).
    #[arg(long, default_value_t = 1 << 20)]
    pub piece_size: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug, Clone)]
pub enum TopologyCommand {
    /// Replace the declared offices with FILE (declarative and idempotent).
    Apply {
        /// TOML file: [[office]] name, subnets, parent, type, [office.wan] (docs/offices.md).
        file: PathBuf,
    },
    /// The office tree with clients online and current RVPs.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Today's tree, automatic offices included, as TOML that `apply` accepts.
    Export,
}
