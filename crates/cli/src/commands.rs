//! `branchline connector ACTION`: opens the connector session and runs one action.

use crate::args::{Action, ContentCommand, TransferCommand};
use crate::connector::{Connector, default_name, health_json, health_table};
use crate::fail::{Fail, exit};
use crate::settings::ConnectorOptions;
use branchline_wire::connector::Token;

/// Runs `action` against the server that `opts` names.
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
        Action::Client { command } => crate::clients::run(&c, command).await?,
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
