//! `branchline connector key rotate|status`: the deployment key's rotation (issue #10),
//! as connector-signed admin calls.

use branchline_server::admin::{AdminCall, KeyStatusView};
use clap::Subcommand;

use crate::connector::Connector;
use crate::fail::{Fail, exit};
use crate::offices::call;

#[derive(Subcommand, Debug, Clone)]
pub enum KeyCommand {
    /// Make a new deployment key. Online clients fetch it at their next heartbeat (over
    /// their authenticated QUIC channel); the old key stays accepted for the overlap,
    /// then it is refused.
    Rotate {
        /// How long the old key stays accepted, in seconds (default: the server's
        /// `server.key_overlap_s`, 3600).
        #[arg(long, value_name = "SECS")]
        overlap: Option<u64>,
        /// Print JSON (the same object as `key status --json`).
        #[arg(long)]
        json: bool,
    },
    /// The current and previous key fingerprints, the overlap's end, and which clients
    /// have moved to the current key.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn decode(v: serde_json::Value) -> Result<KeyStatusView, Fail> {
    serde_json::from_value(v).map_err(|e| {
        Fail::new(
            exit::FAILURE,
            format!("the server's key status does not decode ({e}); are the connector and server versions compatible?"),
        )
    })
}

fn until(at_ms: u64) -> String {
    let now = branchline_server::now_ms();
    if at_ms > now {
        format!("in {} s (Unix ms {at_ms})", (at_ms - now).div_ceil(1000))
    } else {
        format!("now (Unix ms {at_ms})")
    }
}

fn print_status(v: &KeyStatusView) {
    println!(
        "current key   {}  (id {}; on the server: {})",
        v.current.fingerprint, v.current.key_id, v.key_file
    );
    match (&v.previous, v.retire_at_ms) {
        (Some(p), Some(at)) => println!(
            "previous key  {}  (id {}; accepted until {})",
            p.fingerprint,
            p.key_id,
            until(at)
        ),
        _ => println!("previous key  none (no rotation under way)"),
    }
    println!(
        "clients       {} moved / {} online / {} enrolled",
        v.clients_moved, v.clients_online, v.clients_total
    );
    if v.clients.is_empty() {
        return;
    }
    println!();
    println!(
        "{:<16} {:<32} {:<8} {:<9} MOVED",
        "HOST", "CLIENT", "STATUS", "LAST KEY"
    );
    for c in &v.clients {
        println!(
            "{:<16} {:<32} {:<8} {:<9} {}",
            c.hostname,
            c.client_id,
            if c.online { "online" } else { "offline" },
            c.last_key_id.as_deref().unwrap_or("-"),
            if c.moved { "yes" } else { "no" }
        );
    }
}

pub async fn run(
    c: &Connector,
    command: KeyCommand,
    key_file: &std::path::Path,
) -> Result<(), Fail> {
    match command {
        KeyCommand::Rotate { overlap, json } => {
            let v = call(c, &AdminCall::KeyRotate { overlap_s: overlap }).await?;
            if json {
                println!("{v}");
                return Ok(());
            }
            let view = decode(v)?;
            println!(
                "rotated: the server seals with a new deployment key; online clients move to it at their next heartbeat"
            );
            print_status(&view);
            // This connector's own key file: the same file as the server's on the server
            // host (already the new key), else a copy that works only until the end of
            // the overlap.
            let here = branchline_transport::read_key_file(key_file)
                .map(|k| k.fingerprint())
                .unwrap_or_default();
            if here != view.current.fingerprint {
                println!();
                println!(
                    "This connector's key file {} holds the previous key: it works until the overlap ends. Copy {} from the server (fingerprint {}) over it before then.",
                    key_file.display(),
                    view.key_file,
                    view.current.fingerprint
                );
            }
        }
        KeyCommand::Status { json } => {
            let v = call(c, &AdminCall::KeyStatus).await?;
            if json {
                println!("{v}");
            } else {
                print_status(&decode(v)?);
            }
        }
    }
    Ok(())
}
