//! `branchline connector client ...`: the admin's view of client identities, and
//! approving, resetting and revoking them (connector-signed admin calls).

use branchline_server::admin::AdminCall;
use branchline_server::enroll::{IdentitiesView, IdentityChange};
use clap::Subcommand;

use crate::connector::Connector;
use crate::fail::Fail;
use crate::offices::{call, decode};

#[derive(Subcommand, Debug, Clone)]
pub enum ClientCommand {
    /// Every client identity: id, hostname, office, state (pending, active, revoked),
    /// key fingerprint and when it was last heard from.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Let a pending client enroll (server.enrollment = "approve"): it gets its
    /// certificate at its next registration.
    Approve {
        /// The client id (32 hex digits, from `client list`).
        id: String,
    },
    /// Forget a client's key binding, e.g. after the device was reinstalled: its next
    /// registration binds the key it brings. Also lifts a revocation.
    Reset { id: String },
    /// Refuse a client: the server at once, every peer within one heartbeat interval.
    Revoke { id: String },
}

pub async fn run(c: &Connector, command: ClientCommand) -> Result<(), Fail> {
    let (request, verb) = match command {
        ClientCommand::List { json } => return list(c, json).await,
        ClientCommand::Approve { id } => (AdminCall::ClientApprove { id }, "approved"),
        ClientCommand::Reset { id } => (AdminCall::ClientReset { id }, "reset"),
        ClientCommand::Revoke { id } => (AdminCall::ClientRevoke { id }, "revoked"),
    };
    let change: IdentityChange = decode(call(c, &request).await?)?;
    println!(
        "client {} {verb}: now {} (key {}, revocation list epoch {})",
        change.client_id, change.state, change.key_fingerprint, change.revocation_epoch
    );
    Ok(())
}

async fn list(c: &Connector, json: bool) -> Result<(), Fail> {
    let v = call(c, &AdminCall::ClientList).await?;
    if json {
        println!("{v}");
        return Ok(());
    }
    let view: IdentitiesView = decode(v)?;
    println!("enrollment: {}", view.enrollment);
    println!(
        "{:<32} {:<16} {:<12} {:<8} {:<16} LAST SEEN",
        "ID", "HOST", "OFFICE", "STATE", "KEY"
    );
    let now = branchline_server::now_ms();
    for i in &view.clients {
        println!(
            "{:<32} {:<16} {:<12} {:<8} {:<16} {}",
            i.client_id,
            i.hostname,
            i.office.as_deref().unwrap_or("-"),
            i.state,
            i.key_fingerprint,
            i.last_seen_ms
                .map(|t| format!("{} s ago", now.saturating_sub(t) / 1000))
                .unwrap_or_else(|| "-".into())
        );
    }
    Ok(())
}
