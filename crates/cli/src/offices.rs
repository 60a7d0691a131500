//! `branchline connector topology|deploy|status`: admin calls (JSON in chunked small
//! messages, `branchline_server::admin`).

use branchline_server::admin::{
    AdminCall, AdminResult, CHUNK, ClientsView, DeployView, DeploymentsView, FailKind, StatusView,
    TopologyView, TransfersView,
};
use branchline_wire::Body;
use branchline_wire::msg::{AdminChunk, AdminRun};

use crate::args::TopologyCommand;
use crate::connector::{Connector, unexpected};
use crate::fail::{Fail, exit};

/// Sends an admin call and returns its result.
pub async fn call(c: &Connector, request: &AdminCall) -> Result<serde_json::Value, Fail> {
    let body = serde_json::to_vec(request)
        .map_err(|e| Fail::new(exit::FAILURE, format!("cannot encode the request: {e}")))?;
    let call_id: u64 = rand::random();
    let total_len = u32::try_from(body.len())
        .map_err(|_| Fail::new(exit::USAGE, "the request is too large"))?;
    for (i, chunk) in body.chunks(CHUNK).enumerate() {
        match c
            .call(Body::AdminChunk(AdminChunk {
                call_id,
                total_len,
                offset: (i * CHUNK) as u32,
                data: chunk.to_vec(),
            }))
            .await?
        {
            Body::Ack(_) => {}
            Body::Error(e) => {
                return Err(Fail::new(
                    exit::FAILURE,
                    format!("the server refused the request: {}", e.detail),
                ));
            }
            other => return Err(unexpected("AdminChunk", &other)),
        }
    }
    let mut result = Vec::new();
    loop {
        match c
            .call(Body::AdminRun(AdminRun {
                call_id,
                offset: result.len() as u32,
            }))
            .await?
        {
            Body::AdminPage(p) => {
                if p.offset as usize != result.len() {
                    return Err(Fail::new(
                        exit::FAILURE,
                        "the server sent a page out of order",
                    ));
                }
                let empty = p.data.is_empty();
                result.extend_from_slice(&p.data);
                if result.len() >= p.total_len as usize {
                    break;
                }
                if empty {
                    return Err(Fail::new(exit::FAILURE, "the server's result ended early"));
                }
            }
            Body::Error(e) => {
                return Err(Fail::new(
                    exit::FAILURE,
                    format!("the server refused the call: {}", e.detail),
                ));
            }
            other => return Err(unexpected("AdminRun", &other)),
        }
    }
    let result: AdminResult = serde_json::from_slice(&result).map_err(|e| {
        Fail::new(
            exit::FAILURE,
            format!("the server's answer does not decode: {e}"),
        )
    })?;
    match result {
        AdminResult::Ok(v) => Ok(v),
        AdminResult::Error { kind, message } => Err(Fail::new(
            match kind {
                FailKind::Invalid => exit::USAGE,
                FailKind::NotFound | FailKind::Failed => exit::FAILURE,
            },
            message,
        )),
    }
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, Fail> {
    serde_json::from_value(v).map_err(|e| {
        Fail::new(
            exit::FAILURE,
            format!("the server's answer does not decode: {e}; are the connector and server versions compatible?"),
        )
    })
}

pub async fn topology(c: &Connector, command: TopologyCommand) -> Result<(), Fail> {
    match command {
        TopologyCommand::Apply { file } => {
            let toml = std::fs::read_to_string(&file).map_err(|e| {
                Fail::new(exit::USAGE, format!("cannot read {}: {e}", file.display()))
            })?;
            // Checked here first, so a broken file names its line without a round trip.
            let tree = branchline_office::Tree::from_toml(&toml)
                .map_err(|e| Fail::new(exit::USAGE, format!("{}: {e}", file.display())))?;
            let view: TopologyView = decode(call(c, &AdminCall::TopologyApply { toml }).await?)?;
            println!("applied {} offices from {}", tree.len(), file.display());
            print!("{}", tree_text(&view));
        }
        TopologyCommand::Show { json } => {
            let v = call(c, &AdminCall::TopologyShow).await?;
            if json {
                println!("{v}");
            } else {
                print!("{}", tree_text(&decode(v)?));
            }
        }
        TopologyCommand::Export => {
            let v = call(c, &AdminCall::TopologyExport).await?;
            let toml = v
                .get("toml")
                .and_then(|t| t.as_str())
                .ok_or_else(|| Fail::new(exit::FAILURE, "the server's export carries no TOML"))?;
            print!("{toml}");
        }
    }
    Ok(())
}

/// The tree as indented text.
pub fn tree_text(view: &TopologyView) -> String {
    fn walk(view: &TopologyView, parent: Option<&str>, depth: usize, out: &mut String) {
        for o in view
            .offices
            .iter()
            .filter(|o| o.parent.as_deref() == parent)
        {
            let mut extras = Vec::new();
            if o.kind != "default" {
                extras.push(o.kind.clone());
            }
            if o.auto {
                extras.push("auto".into());
            }
            if let Some(c) = o.ceiling_bytes_per_s {
                extras.push(format!("ceiling {:.1} Mbit/s", c as f64 * 8.0 / 1e6));
            }
            if let Some(h) = &o.allowed_hours {
                extras.push(format!("hours {h} UTC"));
            }
            out.push_str(&format!(
                "{:indent$}{}  [{}]  {}/{} clients online{}\n",
                "",
                o.name,
                o.subnets.join(", "),
                o.clients_online,
                o.clients_total,
                if extras.is_empty() {
                    String::new()
                } else {
                    format!("  ({})", extras.join(", "))
                },
                indent = depth * 2
            ));
            for r in &o.rvps {
                out.push_str(&format!(
                    "{:indent$}  RVP for {}: {} ({})\n",
                    "",
                    if r.content.is_empty() {
                        &r.content_id
                    } else {
                        &r.content
                    },
                    r.hostname,
                    r.client_id,
                    indent = depth * 2
                ));
            }
            walk(view, Some(&o.name), depth + 1, out);
        }
    }
    let mut out = String::new();
    walk(view, None, 0, &mut out);
    out
}

pub async fn deploy(
    c: &Connector,
    content: String,
    target: String,
    prestage: bool,
) -> Result<(), Fail> {
    let v: DeployView = decode(
        call(
            c,
            &AdminCall::Deploy {
                content,
                target,
                prestage,
            },
        )
        .await?,
    )?;
    println!(
        "deployment {}{}: {} ({}) to {}{}; {} client(s) online told now, the rest at their next heartbeat",
        v.deployment,
        if v.new { "" } else { " (already deployed)" },
        v.content,
        v.content_id,
        v.target,
        if v.prestage { ", prestage" } else { "" },
        v.clients
    );
    Ok(())
}

pub async fn status(c: &Connector, content: String, json: bool) -> Result<(), Fail> {
    let v = call(c, &AdminCall::Status { content }).await?;
    if json {
        println!("{v}");
        return Ok(());
    }
    let s: StatusView = decode(v)?;
    print!("{}", status_text(&s));
    Ok(())
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1 << 20) as f64)
}

/// The status as a table.
pub fn status_text(s: &StatusView) -> String {
    let mut out = format!(
        "{} ({}), {} MiB\n{:<16} {:<12} {:>6}  {:>8} {:>8} {:>8} {:>8} {:>8}  RVP\n",
        s.content,
        s.content_id,
        mib(s.size),
        "OFFICE",
        "PARENT",
        "DONE",
        "ORIGIN",
        "SERVER",
        "WAN IN",
        "WAN OUT",
        "LAN",
    );
    for o in &s.offices {
        out.push_str(&format!(
            "{:<16} {:<12} {:>6}  {:>8} {:>8} {:>8} {:>8} {:>8}  {}\n",
            o.office,
            o.parent.as_deref().unwrap_or("-"),
            format!("{}/{}", o.clients_done, o.clients_total),
            mib(o.bytes_origin),
            mib(o.bytes_server),
            mib(o.bytes_wan_in),
            mib(o.bytes_wan_out),
            mib(o.bytes_lan),
            o.rvp.as_deref().unwrap_or("-"),
        ));
    }
    out.push_str("(MiB; WAN IN: over the office's link from its parent office)\n");
    out
}

/// `connector clients`: the same data as the dashboard's client list (`/api/clients`).
pub async fn clients(c: &Connector, json: bool) -> Result<(), Fail> {
    let v = call(c, &AdminCall::Clients).await?;
    if json {
        println!("{v}");
        return Ok(());
    }
    let view: ClientsView = decode(v)?;
    println!(
        "{:<16} {:<12} {:<8} {:<16} {:>9}  RVP FOR",
        "HOST", "OFFICE", "STATUS", "ADDRESS", "COMPLETE"
    );
    for cl in &view.clients {
        println!(
            "{:<16} {:<12} {:<8} {:<16} {:>9}  {}",
            cl.hostname,
            cl.office.as_deref().unwrap_or("-"),
            if cl.online { "online" } else { "offline" },
            cl.address.as_deref().unwrap_or("-"),
            cl.complete,
            cl.rvp_for.join(", ")
        );
    }
    Ok(())
}

/// `connector deployments`: progress per deployment (`/api/deployments`).
pub async fn deployments(c: &Connector, json: bool) -> Result<(), Fail> {
    let v = call(c, &AdminCall::Deployments).await?;
    if json {
        println!("{v}");
        return Ok(());
    }
    let view: DeploymentsView = decode(v)?;
    for d in &view.deployments {
        println!(
            "deployment {}: {} to {}: {}/{} clients done",
            d.deployment, d.status.content, d.target, d.clients_done, d.clients_total
        );
        print!("{}", status_text(&d.status));
        println!();
    }
    let s = &view.savings;
    println!(
        "delivered {} MiB; origin read {} MiB (saved {} MiB); WAN saved {} MiB",
        mib(s.delivered_bytes),
        mib(s.origin_bytes),
        mib(s.origin_saved_bytes),
        mib(s.wan_saved_bytes)
    );
    Ok(())
}

/// `connector transfers`: what crosses each WAN link now (`/api/transfers`, less rates).
pub async fn transfers(c: &Connector, json: bool) -> Result<(), Fail> {
    let v = call(c, &AdminCall::Transfers).await?;
    if json {
        println!("{v}");
        return Ok(());
    }
    let view: TransfersView = decode(v)?;
    if view.transfers.is_empty() {
        println!("no content is crossing a WAN link now");
    }
    for t in &view.transfers {
        println!(
            "{:>4} {:<8} {} -> {}: {} {}/{} MiB at {:.1} Mbit/s, RVP {}, {} sender(s)",
            t.transfer_id
                .map(|i| i.to_string())
                .unwrap_or_else(|| "-".into()),
            t.state,
            t.parent.as_deref().unwrap_or("origin"),
            t.office,
            t.content,
            mib(t.bytes_wan_in),
            mib(t.size),
            t.signalled_rate_bytes_per_s as f64 * 8.0 / 1e6,
            t.rvp.as_deref().unwrap_or("-"),
            t.senders.len()
        );
    }
    Ok(())
}
