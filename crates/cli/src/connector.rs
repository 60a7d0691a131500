//! `branchline connector ...`: requests to the server from the connector's reply port
//! (34320) to the server's request port (34323).

use branchline_transport::{Context, Requester, bind_udp};
use branchline_wire::msg::{Activate, Health, HealthRequest};
use branchline_wire::{Body, SOFTWARE_VERSION};
use clap::Subcommand;

use crate::settings::ConnectorOptions;
use crate::{Fail, exit};

#[derive(Subcommand, Debug, Clone)]
pub enum Action {
    /// Prove the deployment key to the server and record this connector.
    Activate,
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

/// A connected connector: its requester on the reply port.
pub struct Connector {
    req: Requester,
    server: std::net::SocketAddr,
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
        })
    }

    /// Sends one small message to the server and returns its answer.
    pub async fn call(&self, body: Body) -> Result<Body, Fail> {
        Ok(self.req.request(self.server, body).await?)
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
        Action::Activate => {
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
