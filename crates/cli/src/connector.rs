//! `branchline connector ...`: requests to the server from the connector's reply port
//! (34320) to the server's request port (34323).

use std::sync::PoisonError;

use branchline_transport::Clock;
use branchline_transport::{Context, Requester, bind_udp};
use branchline_wire::connector::{
    NONCE_LEN, SECRET_LEN, Token, credential, enroll_proof, hex, unhex,
};
use branchline_wire::msg::{Activate, ConnectorEnroll, Health, HealthRequest};
use branchline_wire::{Body, SOFTWARE_VERSION};

use crate::fail::{Fail, exit};
use crate::settings::ConnectorOptions;

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
            let cred = self
                .credential
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
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
                *self
                    .credential
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some((name.to_owned(), cred));
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

/// The health report as one JSON object (the keys are a stable interface): the fields of
/// the admin endpoint's `/api/health`, and the server's address.
pub fn health_json(server: std::net::SocketAddr, h: &Health) -> serde_json::Value {
    let mut v = branchline_server::web::health_json(h);
    v["server"] = server.to_string().into();
    v
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
