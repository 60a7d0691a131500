//! `branchline connector ...`: requests to the server from the connector's reply port
//! (34320) to the server's request port (34323).

use branchline_transport::Clock;
use branchline_transport::{Context, Requester, bind_udp};
use branchline_wire::connector::{
    NONCE_LEN, SECRET_LEN, Token, credential, enroll_proof, hex, unhex,
};
use branchline_wire::msg::{Activate, ConnectorEnroll, Health, HealthRequest};
use branchline_wire::{Body, SOFTWARE_VERSION};
use clap::Subcommand;

use crate::settings::ConnectorOptions;
use crate::{Fail, exit};

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
    Publish(crate::publish::PublishArgs),
    /// The content catalogue.
    Content {
        #[command(subcommand)]
        command: ContentCommand,
    },
    /// The office tree: offices, subnets, parents, WAN link policy.
    Topology {
        #[command(subcommand)]
        command: crate::offices::TopologyCommand,
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

/// A connected connector: its requester on the reply port, and its credential.
pub struct Connector {
    req: Requester,
    server: std::net::SocketAddr,
    credential_path: std::path::PathBuf,
    credential: std::sync::Mutex<Option<(String, [u8; SECRET_LEN])>>,
}

/// Prefix of the connector credential file's single line: `blcc1 NAME HEX`.
const CREDENTIAL_PREFIX: &str = "blcc1";

/// Reads the credential file, if there is one; refuses one others can read.
fn read_credential(path: &std::path::Path) -> Result<Option<(String, [u8; SECRET_LEN])>, Fail> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Fail::new(
                exit::USAGE,
                format!(
                    "cannot read the connector credential {}: {e}",
                    path.display()
                ),
            ));
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Fail::new(
            exit::USAGE,
            format!(
                "the connector credential {} has mode {mode:o}, so other users can read it; run `chmod 600 {}`",
                path.display(),
                path.display()
            ),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        Fail::new(
            exit::USAGE,
            format!(
                "cannot read the connector credential {}: {e}",
                path.display()
            ),
        )
    })?;
    let mut parts = text.split_whitespace();
    match (parts.next(), parts.next(), parts.next().and_then(unhex)) {
        (Some(CREDENTIAL_PREFIX), Some(name), Some(c)) => Ok(Some((name.to_owned(), c))),
        _ => Err(Fail::new(
            exit::USAGE,
            format!(
                "{} does not hold a connector credential; run `branchline connector activate --token TOKEN` again",
                path.display()
            ),
        )),
    }
}

fn write_credential(path: &std::path::Path, name: &str, c: &[u8; SECRET_LEN]) -> Result<(), Fail> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let fail = |e: std::io::Error| {
        Fail::new(
            exit::FAILURE,
            format!(
                "cannot write the connector credential {}: {e}",
                path.display()
            ),
        )
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(fail)?;
    writeln!(f, "{CREDENTIAL_PREFIX} {name} {}", hex(c)).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// A default connector name from the host's name: letters, digits, '.', '-', '_'.
pub fn default_name() -> String {
    let n: String = branchline_client::netinfo::hostname()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(64)
        .collect();
    if n.is_empty() { "connector".into() } else { n }
}

impl Connector {
    pub async fn open(opts: &ConnectorOptions) -> Result<Connector, Fail> {
        let socket = bind_udp(opts.reply.ip(), opts.reply.port(), "connector.reply")
            .await
            .map_err(|e| Fail::new(exit::FAILURE, e.to_string()))?;
        let mut ctx = Context::new(vec![opts.key.derive()]);
        ctx.retry = opts.retry;
        ctx.replay = opts.replay;
        Ok(Connector {
            req: Requester::new(socket, ctx),
            server: opts.server,
            credential: std::sync::Mutex::new(read_credential(&opts.credential)?),
            credential_path: opts.credential.clone(),
        })
    }

    /// Sends one small message to the server and returns its answer. Admin requests
    /// travel signed with the connector's credential.
    pub async fn call(&self, body: Body) -> Result<Body, Fail> {
        let body = if body.needs_connector() {
            let cred = self.credential.lock().expect("credential lock").clone();
            let Some((name, cred)) = cred else {
                return Err(Fail::new(
                    exit::USAGE,
                    format!(
                        "{} needs this connector's credential ({} does not exist): run `branchline connector activate --token TOKEN` with the token the server printed",
                        body.kind(),
                        self.credential_path.display()
                    ),
                ));
            };
            let now = branchline_transport::SystemClock.now_ms();
            Body::ConnectorSigned(branchline_wire::connector::signed(
                &cred,
                &name,
                now,
                rand::random(),
                body,
            ))
        } else {
            body
        };
        Ok(self.req.request(self.server, body).await?)
    }

    /// Enrols this connector with a one-time token and stores its credential (0600).
    /// Returns whether the name was enrolled before.
    pub async fn enroll(&self, token: &Token, name: &str) -> Result<bool, Fail> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let body = Body::ConnectorEnroll(ConnectorEnroll {
            name: name.to_owned(),
            nonce: nonce.to_vec(),
            proof: enroll_proof(token, name, &nonce).to_vec(),
        });
        match self.req.request(self.server, body).await? {
            Body::ConnectorEnrolled(ok) => {
                let cred = credential(token, name);
                write_credential(&self.credential_path, name, &cred)?;
                *self.credential.lock().expect("credential lock") = Some((name.to_owned(), cred));
                Ok(ok.replaced)
            }
            other => Err(unexpected("ConnectorEnroll", &other)),
        }
    }

    pub async fn activate(&self) -> Result<(String, bool), Fail> {
        let body = Body::Activate(Activate {
            hostname: branchline_client::netinfo::hostname(),
            version: SOFTWARE_VERSION.into(),
        });
        match self.req.request(self.server, body).await? {
            Body::ActivateOk(ok) => Ok((ok.server_version, ok.first_activation)),
            other => Err(unexpected("Activate", &other)),
        }
    }

    pub async fn health(&self) -> Result<Health, Fail> {
        match self
            .req
            .request(self.server, Body::HealthRequest(HealthRequest {}))
            .await?
        {
            Body::Health(h) => Ok(h),
            other => Err(unexpected("HealthRequest", &other)),
        }
    }
}

pub fn unexpected(asked: &str, got: &Body) -> Fail {
    Fail::new(
        exit::FAILURE,
        format!(
            "the server answered {asked} with {}; are the connector and server versions compatible?",
            got.kind()
        ),
    )
}

/// The health report as one JSON object (the keys are a stable interface).
pub fn health_json(server: std::net::SocketAddr, h: &Health) -> serde_json::Value {
    let drops: serde_json::Map<String, serde_json::Value> = h
        .drops
        .iter()
        .map(|d| (d.reason.clone(), d.count.into()))
        .collect();
    serde_json::json!({
        "server": server.to_string(),
        "version": h.version,
        "uptime_s": h.uptime_s,
        "database": h.database,
        "schema_version": h.schema_version,
        "clients_total": h.clients_total,
        "clients_online": h.clients_online,
        "connectors_total": h.connectors_total,
        "large_requests": h.large_requests,
        "client_drops": h
            .client_drops
            .iter()
            .map(|d| (d.reason.clone(), serde_json::Value::from(d.count)))
            .collect::<serde_json::Map<String, serde_json::Value>>(),
        "dropped_datagrams": h.dropped_datagrams,
        "drops": drops,
    })
}

/// The health report as an aligned table.
pub fn health_table(server: std::net::SocketAddr, h: &Health) -> String {
    let mut out = String::new();
    let mut row = |k: &str, v: String| out.push_str(&format!("{k:<12}{v}\n"));
    row("server", server.to_string());
    row("version", h.version.clone());
    row("uptime", format!("{} s", h.uptime_s));
    row(
        "database",
        format!("{} (schema v{})", h.database, h.schema_version),
    );
    row(
        "clients",
        format!("{} online / {} enrolled", h.clients_online, h.clients_total),
    );
    row("connectors", h.connectors_total.to_string());
    let detail = if h.drops.is_empty() {
        String::new()
    } else {
        let parts: Vec<String> = h
            .drops
            .iter()
            .map(|d| format!("{} {}", d.reason, d.count))
            .collect();
        format!(" ({})", parts.join(", "))
    };
    row(
        "dropped",
        format!("{} datagrams{detail}", h.dropped_datagrams),
    );
    out
}

pub async fn run(opts: ConnectorOptions, action: Action) -> Result<(), Fail> {
    let c = Connector::open(&opts).await?;
    match action {
        Action::Activate {
            token,
            token_file,
            name,
        } => {
            let token = match (token, token_file) {
                (Some(t), _) => Some(t),
                (None, Some(f)) => Some(std::fs::read_to_string(&f).map_err(|e| {
                    Fail::new(exit::USAGE, format!("cannot read {}: {e}", f.display()))
                })?),
                (None, None) => None,
            };
            if let Some(text) = token {
                // A token file may hold several; the first line is the one to use.
                let first = text.lines().next().unwrap_or_default();
                let token = Token::parse(first).ok_or_else(|| {
                    Fail::new(
                        exit::USAGE,
                        "an activation token is `blct1_` followed by 64 hex digits",
                    )
                })?;
                let name = name.unwrap_or_else(default_name);
                let replaced = c.enroll(&token, &name).await?;
                println!(
                    "enrolled: connector {name:?}{}; its credential is in {} (mode 0600)",
                    if replaced {
                        " (replacing its earlier credential)"
                    } else {
                        ""
                    },
                    opts.credential.display()
                );
            }
            let (version, first) = c.activate().await?;
            println!(
                "activated: the server at {} (version {version}) accepted this connector's key{}",
                opts.server,
                if first { " (first activation)" } else { "" }
            );
        }
        Action::Publish(args) => crate::publish::publish(c, args).await?,
        Action::Content {
            command: ContentCommand::List { json },
        } => {
            let items = crate::publish::list(&c).await?;
            crate::publish::print_list(&items, json);
        }
        Action::Topology { command } => crate::offices::topology(&c, command).await?,
        Action::Deploy {
            content,
            to,
            prestage,
        } => crate::offices::deploy(&c, content, to, prestage).await?,
        Action::Status { content, json } => crate::offices::status(&c, content, json).await?,
        Action::Clients { json } => crate::offices::clients(&c, json).await?,
        Action::Deployments { json } => crate::offices::deployments(&c, json).await?,
        Action::Transfers { json } => crate::offices::transfers(&c, json).await?,
        Action::Transfer { command } => {
            let (call, verb) = match command {
                TransferCommand::Pause { id } => (
                    branchline_server::admin::AdminCall::TransferPause { id },
                    "paused",
                ),
                TransferCommand::Resume { id } => (
                    branchline_server::admin::AdminCall::TransferResume { id },
                    "resumed",
                ),
            };
            let v = crate::offices::call(&c, &call).await?;
            println!(
                "transfer {} {verb}: {} into office {}",
                v["transfer_id"],
                v["content_id"].as_str().unwrap_or("?"),
                v["office"].as_str().unwrap_or("?")
            );
        }
        Action::Key { command } => crate::keys::run(&c, command, &opts.key_file).await?,
        Action::Health { json } => {
            let h = c.health().await?;
            if json {
                println!("{}", health_json(opts.server, &h));
            } else {
                print!("{}", health_table(opts.server, &h));
            }
        }
    }
    Ok(())
}
