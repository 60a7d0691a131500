//! Running admin calls (`crate::admin`) against the server's state.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use branchline_office::{OfficeKind, TopologyFile};
use branchline_store::ContentId;
use branchline_wire::ClientId;
use branchline_wire::msg::Assign;

use crate::admin::{
    AdminCall, AdminResult, CatalogueItem, CatalogueView, ClientView, ClientsView, DeployView,
    DeploymentStatus, DeploymentsView, OfficeStatus, OfficeView, RvpView, Savings, StatusView,
    TopologyView, TransferView, TransfersView,
};
use crate::deploy::{Deployment, SourceBytes, Target};
use crate::handler::ServerState;
use crate::lock;
use crate::registry::ClientRecord;

/// The address the server saw a client at (placement uses it, never what it reports).
pub fn seen_ip(r: &ClientRecord) -> Option<IpAddr> {
    r.source
        .map(|s| s.ip())
        .or_else(|| r.addresses.first().copied())
}

/// Where a server-initiated small message reaches the client (its request port, 34325).
pub fn small_addr(r: &ClientRecord) -> Option<SocketAddr> {
    let port = r
        .ports
        .map(|p| p.small_request)
        .unwrap_or(branchline_config::ClientPorts::default().small_request);
    seen_ip(r).map(|ip| SocketAddr::new(ip, port))
}

fn kind_name(k: OfficeKind) -> &'static str {
    match k {
        OfficeKind::Default => "default",
        OfficeKind::Wifi => "wifi",
        OfficeKind::Vpn => "vpn",
    }
}

/// Runs one admin call.
pub async fn execute(state: Arc<ServerState>, call: AdminCall) -> AdminResult {
    match call {
        AdminCall::TopologyApply { toml } => apply(&state, toml).await,
        AdminCall::TopologyShow => AdminResult::ok(topology_view(&state)),
        AdminCall::TopologyExport => {
            let toml = lock(&state.offices).tree().export().to_toml();
            AdminResult::ok(serde_json::json!({ "toml": toml }))
        }
        AdminCall::Deploy {
            content,
            target,
            prestage,
        } => deploy(&state, &content, &target, prestage).await,
        AdminCall::Status { content } => match resolve(&state, &content) {
            Ok((id, name)) => AdminResult::ok(status(&state, id, name)),
            Err(e) => e,
        },
        AdminCall::Clients => AdminResult::ok(clients_view(&state)),
        AdminCall::Catalogue => AdminResult::ok(catalogue_view(&state)),
        AdminCall::Deployments => AdminResult::ok(deployments_view(&state)),
        AdminCall::Transfers => AdminResult::ok(transfers_view(&state)),
        AdminCall::TransferPause { id } => pause(&state, id, true),
        AdminCall::TransferResume { id } => pause(&state, id, false),
        AdminCall::ClientList
        | AdminCall::ClientApprove { .. }
        | AdminCall::ClientReset { .. }
        | AdminCall::ClientRevoke { .. } => crate::enroll::execute(&state, call).await,
        AdminCall::KeyRotate { overlap_s } => rotate_key(&state, overlap_s),
        AdminCall::KeyStatus => AdminResult::ok(key_status(&state)),
    }
}

/// Makes a new deployment key. Files first (the previous key beside the new one, then the
/// new `deployment.key`, each written atomically), then the endpoints: a crash leaves the
/// old key current, or both keys in place.
fn rotate_key(state: &ServerState, overlap_s: Option<u64>) -> AdminResult {
    let overlap = overlap_s
        .map(std::time::Duration::from_secs)
        .unwrap_or(state.key_overlap);
    let now = state.clock.now_ms();
    let new = branchline_wire::DeploymentKey::from_bytes(rand::random());
    {
        let mut keys = lock(&state.keys);
        if let Err(e) = keys.rotate(new.clone(), now, overlap) {
            return AdminResult::invalid(e.to_string());
        }
        let written = keys
            .save_previous(&state.data_dir)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                branchline_transport::write_key_file(&state.data_dir.join(crate::KEY_FILE), &new)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            // Nothing changed on the wire; undo in memory too.
            let (old, _) = keys.previous().expect("just rotated");
            *keys = crate::keys::KeyState::new(old.clone());
            let _ = keys.save_previous(&state.data_dir);
            return AdminResult::failed(format!("cannot write the new key: {e}"));
        }
        state.keyset.replace(keys.accepted());
        tracing::info!(
            current = %new.fingerprint(),
            retire_at_ms = keys.retire_ms(),
            "deployment key rotated: clients move to the new key at their next heartbeat"
        );
    }
    AdminResult::ok(key_status(state))
}

/// The keys and, per client, which key it used last.
pub fn key_status(state: &ServerState) -> crate::admin::KeyStatusView {
    let now = state.clock.now_ms();
    let keys = lock(&state.keys);
    let current = keys.current().derive().id();
    let registry = lock(&state.registry);
    let mut clients: Vec<crate::admin::ClientKeyView> = registry
        .snapshot()
        .into_iter()
        .map(|r| {
            let last = keys.last_key_of(&r.id);
            crate::admin::ClientKeyView {
                client_id: r.id.to_string(),
                hostname: r.hostname.clone(),
                online: registry.is_online(&r, now),
                last_key_id: last.map(|k| k.to_string()),
                moved: last == Some(current),
            }
        })
        .collect();
    clients.sort_by(|a, b| {
        a.hostname
            .cmp(&b.hostname)
            .then(a.client_id.cmp(&b.client_id))
    });
    crate::admin::KeyStatusView {
        current: keys.current_view(),
        previous: keys.previous_view(),
        retire_at_ms: keys.previous().map(|(_, at)| at),
        key_file: state.data_dir.join(crate::KEY_FILE).display().to_string(),
        clients_total: clients.len() as u64,
        clients_online: clients.iter().filter(|c| c.online).count() as u64,
        clients_moved: clients.iter().filter(|c| c.moved).count() as u64,
        clients,
    }
}

async fn apply(state: &Arc<ServerState>, toml: String) -> AdminResult {
    let file = match TopologyFile::parse(&toml) {
        Ok(f) => f,
        Err(e) => return AdminResult::invalid(e.to_string()),
    };
    // Tree-level errors (cycles, overlaps, unknown parents) with their line.
    if let Err(e) = branchline_office::Tree::from_toml(&toml) {
        return AdminResult::invalid(e.to_string());
    }
    let clients: Vec<(ClientId, IpAddr)> = {
        let registry = lock(&state.registry);
        registry
            .snapshot()
            .iter()
            .filter_map(|r| Some((r.id, seen_ip(r)?)))
            .collect()
    };
    // Check first on a copy, so that a refused file leaves nothing half-applied and the
    // database write happens before the change takes effect.
    {
        let offices = lock(&state.offices);
        let mut probe = offices.tree().clone();
        if let Err(e) = probe.apply(&file) {
            return AdminResult::invalid(e.to_string());
        }
    }
    if let Err(e) = state.writer.save_topology(toml, state.clock.now_ms()).await {
        return AdminResult::failed(format!("the server could not store the topology: {e}"));
    }
    let applied = lock(&state.offices).apply(&file, clients);
    match applied {
        Ok(()) => {
            tracing::info!(offices = file.offices.len(), "topology applied");
            AdminResult::ok(topology_view(state))
        }
        Err(e) => AdminResult::invalid(e.to_string()),
    }
}

/// The tree with clients per office and current RVPs.
pub fn topology_view(state: &ServerState) -> TopologyView {
    let now = state.clock.now_ms();
    let registry = lock(&state.registry);
    let offices = lock(&state.offices);
    let catalogue = lock(&state.catalogue);
    let tree = offices.tree();
    let rvps = offices.rvps();
    let mut out = Vec::new();
    for (idx, o) in tree.iter() {
        let members = offices.members(idx);
        let online = members
            .iter()
            .filter(|c| registry.get(c).is_some_and(|r| registry.is_online(r, now)))
            .count() as u64;
        out.push(OfficeView {
            name: o.name.clone(),
            parent: tree.parent(idx).map(|p| tree.office(p).name.clone()),
            kind: kind_name(o.kind).into(),
            subnets: o.subnets.iter().map(|s| s.to_string()).collect(),
            auto: o.auto,
            clients_total: members.len() as u64,
            clients_online: online,
            ceiling_bytes_per_s: o.wan.ceiling_bytes_per_s,
            allowed_hours: o.wan.allowed_hours.map(|h| h.to_string()),
            max_transfers: o.wan.max_transfers,
            rvps: rvps
                .iter()
                .filter(|(n, _, _)| *n == o.name)
                .map(|(_, content, client)| RvpView {
                    content_id: content.to_hex(),
                    content: catalogue
                        .get(content)
                        .map(|i| format!("{}@{}", i.meta.name, i.meta.version))
                        .unwrap_or_default(),
                    client_id: client.to_string(),
                    hostname: registry
                        .get(client)
                        .map(|r| r.hostname.clone())
                        .unwrap_or_default(),
                })
                .collect(),
        });
    }
    TopologyView { offices: out }
}

/// A content id or name[@version] from the catalogue.
fn resolve(state: &ServerState, text: &str) -> Result<(ContentId, String), AdminResult> {
    let cat = lock(&state.catalogue);
    let item = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        text.parse::<ContentId>().ok().and_then(|id| cat.get(&id))
    } else {
        let (name, version) = match text.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (text, None),
        };
        cat.find(name, version)
    };
    match item {
        Some(i) => Ok((
            ContentId::from_bytes(i.meta.content_id),
            format!("{}@{}", i.meta.name, i.meta.version),
        )),
        None => Err(AdminResult::not_found(format!(
            "no content {text:?} in the catalogue (publish it first; `connector content list` shows what is there)"
        ))),
    }
}

async fn deploy(
    state: &Arc<ServerState>,
    content: &str,
    target: &str,
    prestage: bool,
) -> AdminResult {
    let (id, name) = match resolve(state, content) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let target: Target = match target.parse() {
        Ok(t) => t,
        Err(e) => return AdminResult::invalid(format!("--to {e}")),
    };
    if let Target::Office(n) = &target
        && lock(&state.offices).tree().find(n).is_none()
    {
        return AdminResult::invalid(format!(
            "--to office:{n}: no such office (`connector topology show` lists them)"
        ));
    }
    let now = state.clock.now_ms();
    let (deployment, new) = {
        let mut d = lock(&state.deployments);
        let next = d.next_id();
        match d.add(Deployment {
            id: next,
            content: id,
            target: target.clone(),
            prestage,
            created_ms: now,
        }) {
            Ok(r) => r,
            Err(e) => return AdminResult::failed(e),
        }
    };
    if new && let Err(e) = state.writer.save_deployment(deployment.clone()).await {
        return AdminResult::failed(format!("the server could not store the deployment: {e}"));
    }
    // Push to the targeted clients that are online now; the rest learn it from their
    // heartbeat replies.
    let targets: Vec<SocketAddr> = {
        let registry = lock(&state.registry);
        let offices = lock(&state.offices);
        let locations = lock(&state.locations);
        registry
            .snapshot()
            .iter()
            .filter(|r| {
                let office = offices
                    .office_of(&r.id)
                    .map(|o| offices.tree().office(o).name.clone());
                crate::deploy::targets(&target, r.id, office.as_deref())
                    && registry.is_online(r, now)
                    && !locations.have(&r.id, &id).is_some_and(|h| h.is_complete())
            })
            .filter_map(small_addr)
            .collect()
    };
    let clients = targets.len() as u64;
    for addr in targets {
        state.push(
            addr,
            Assign {
                content_id: id.as_bytes().to_vec(),
                deployment: deployment.id,
            },
        );
    }
    tracing::info!(deployment = deployment.id, content = %id, target = %target, new, "deployed");
    AdminResult::ok(DeployView {
        deployment: deployment.id,
        content_id: id.to_hex(),
        content: name,
        target: target.to_string(),
        prestage,
        new,
        clients,
    })
}

/// Per office: who is done, the RVP, and where the bytes came from.
pub fn status(state: &ServerState, id: ContentId, name: String) -> StatusView {
    let registry = lock(&state.registry);
    let offices = lock(&state.offices);
    let locations = lock(&state.locations);
    let deployments = lock(&state.deployments);
    let tree = offices.tree();
    let size = lock(&state.catalogue)
        .get(&id)
        .map(|i| i.meta.size)
        .unwrap_or(0);
    let stats: BTreeMap<ClientId, SourceBytes> = deployments.stats(&id).into_iter().collect();
    let deps: Vec<&Deployment> = deployments
        .list()
        .iter()
        .filter(|d| d.content == id)
        .collect();
    // Bytes into each office over its WAN link.
    let mut per_office: Vec<(OfficeStatus, usize)> = Vec::new();
    for (idx, o) in tree.iter() {
        let members = offices.members(idx);
        let mut bytes = SourceBytes::default();
        let (mut total, mut done) = (0u64, 0u64);
        for m in &members {
            let complete = locations.have(m, &id).is_some_and(|h| h.is_complete());
            let targeted = deps
                .iter()
                .any(|d| crate::deploy::targets(&d.target, *m, Some(o.name.as_str())));
            if targeted || complete || stats.contains_key(m) {
                total += 1;
                done += u64::from(complete);
            }
            if let Some(b) = stats.get(m) {
                bytes.add(b);
            }
        }
        if total == 0 && bytes == SourceBytes::default() {
            continue;
        }
        per_office.push((
            OfficeStatus {
                office: o.name.clone(),
                parent: tree.parent(idx).map(|p| tree.office(p).name.clone()),
                clients_done: done,
                clients_total: total,
                rvp: offices.rvp(idx, &id).map(|c| {
                    registry
                        .get(&c)
                        .map(|r| format!("{} ({c})", r.hostname))
                        .unwrap_or_else(|| c.to_string())
                }),
                bytes_origin: bytes.origin,
                bytes_server: bytes.server,
                bytes_wan_in: bytes.wan,
                bytes_wan_out: 0,
                bytes_lan: bytes.lan,
            },
            idx,
        ));
    }
    // What left an office over its children's links: what the children took over WAN.
    let wan_in: Vec<(Option<String>, u64)> = per_office
        .iter()
        .map(|(s, _)| (s.parent.clone(), s.bytes_wan_in))
        .collect();
    for (s, _) in &mut per_office {
        s.bytes_wan_out = wan_in
            .iter()
            .filter(|(p, _)| p.as_deref() == Some(s.office.as_str()))
            .map(|(_, b)| b)
            .sum();
    }
    StatusView {
        content_id: id.to_hex(),
        content: name,
        size,
        offices: per_office.into_iter().map(|(s, _)| s).collect(),
    }
}

fn content_name(state: &ServerState, id: &ContentId) -> String {
    lock(&state.catalogue)
        .get(id)
        .map(|i| format!("{}@{}", i.meta.name, i.meta.version))
        .unwrap_or_else(|| id.to_hex())
}

/// Every content id in the catalogue.
fn content_ids(state: &ServerState) -> Vec<ContentId> {
    lock(&state.catalogue)
        .list()
        .iter()
        .map(|i| ContentId::from_bytes(i.meta.content_id))
        .collect()
}

/// Every client with its office, whether it is online, and its RVP roles.
pub fn clients_view(state: &ServerState) -> ClientsView {
    let ids = content_ids(state);
    let now = state.clock.now_ms();
    let registry = lock(&state.registry);
    let offices = lock(&state.offices);
    let locations = lock(&state.locations);
    let catalogue = lock(&state.catalogue);
    let rvps = offices.rvps();
    let clients = registry
        .snapshot()
        .into_iter()
        .map(|r| ClientView {
            client_id: r.id.to_string(),
            hostname: r.hostname.clone(),
            address: seen_ip(&r).map(|ip| ip.to_string()),
            office: offices
                .office_of(&r.id)
                .map(|o| offices.tree().office(o).name.clone()),
            online: registry.is_online(&r, now),
            last_seen_ms: r.last_seen_ms,
            first_seen_ms: r.first_seen_ms,
            cache_size_bytes: r.cache_size_bytes,
            cache_free_bytes: r.cache_free_bytes,
            version: r.version.clone(),
            rvp_for: rvps
                .iter()
                .filter(|(_, _, c)| *c == r.id)
                .map(|(_, content, _)| {
                    catalogue
                        .get(content)
                        .map(|i| format!("{}@{}", i.meta.name, i.meta.version))
                        .unwrap_or_else(|| content.to_hex())
                })
                .collect(),
            complete: ids
                .iter()
                .filter(|id| locations.have(&r.id, id).is_some_and(|h| h.is_complete()))
                .count() as u64,
        })
        .collect();
    ClientsView { clients }
}

/// The catalogue, as `content list` shows it.
pub fn catalogue_view(state: &ServerState) -> CatalogueView {
    let cat = lock(&state.catalogue);
    let items = cat
        .list()
        .into_iter()
        .map(|i| {
            let m = state.meta_of(i);
            CatalogueItem {
                content_id: ContentId::from_bytes(i.meta.content_id).to_hex(),
                name: m.name,
                version: m.version,
                size: m.size,
                origin: m.origin,
                piece_size: m.piece_size,
                published_ms: m.published_ms,
                complete_holders: u64::from(m.complete_holders),
                server_holds: m.server_holds,
            }
        })
        .collect();
    CatalogueView { items }
}

/// Adds up `offices` into what was delivered and saved.
pub fn savings_of(offices: &[OfficeStatus], acc: &mut Savings) {
    for o in offices {
        let delivered = o.bytes_origin + o.bytes_server + o.bytes_wan_in + o.bytes_lan;
        acc.delivered_bytes += delivered;
        acc.origin_bytes += o.bytes_origin;
        acc.server_bytes += o.bytes_server;
        acc.wan_bytes += o.bytes_wan_in;
        acc.lan_bytes += o.bytes_lan;
        acc.origin_saved_bytes += delivered.saturating_sub(o.bytes_origin);
        if o.parent.is_some() {
            acc.wan_saved_bytes += delivered.saturating_sub(o.bytes_wan_in + o.bytes_origin);
        }
    }
}

/// Every deployment with its progress, and the bytes saved over every content item.
pub fn deployments_view(state: &ServerState) -> DeploymentsView {
    let list: Vec<Deployment> = lock(&state.deployments).list().to_vec();
    let mut savings = Savings::default();
    for id in content_ids(state) {
        let s = status(state, id, String::new());
        savings_of(&s.offices, &mut savings);
    }
    let mut out = Vec::new();
    for d in list {
        let (done, total) = {
            let registry = lock(&state.registry);
            let offices = lock(&state.offices);
            let locations = lock(&state.locations);
            let mut done = 0u64;
            let mut total = 0u64;
            for r in registry.snapshot() {
                let office = offices
                    .office_of(&r.id)
                    .map(|o| offices.tree().office(o).name.clone());
                if crate::deploy::targets(&d.target, r.id, office.as_deref()) {
                    total += 1;
                    done += u64::from(
                        locations
                            .have(&r.id, &d.content)
                            .is_some_and(|h| h.is_complete()),
                    );
                }
            }
            (done, total)
        };
        let s = status(state, d.content, content_name(state, &d.content));
        out.push(DeploymentStatus {
            deployment: d.id,
            target: d.target.to_string(),
            prestage: d.prestage,
            created_ms: d.created_ms,
            clients_done: done,
            clients_total: total,
            status: s,
        });
    }
    DeploymentsView {
        deployments: out,
        savings,
    }
}

/// Pauses or resumes transfer `id` and tells its RVP at once (its next locate says so
/// too, should the message be lost).
fn pause(state: &ServerState, id: u64, paused: bool) -> AdminResult {
    let Some(t) = lock(&state.transfers).set_paused(id, paused) else {
        return AdminResult::not_found(format!(
            "no live transfer {id} (`connector transfers` lists them)"
        ));
    };
    let to = lock(&state.registry).get(&t.receiver).and_then(small_addr);
    if let Some(to) = to {
        state.push_control(
            to,
            branchline_wire::msg::TransferControl {
                content_id: t.content.as_bytes().to_vec(),
                pause: paused,
                transfer_id: id,
            },
        );
    }
    tracing::info!(transfer = id, office = %t.office, content = %t.content, paused, "WAN transfer paused or resumed by an admin");
    AdminResult::ok(serde_json::json!({
        "transfer_id": id,
        "office": t.office,
        "content_id": t.content.to_hex(),
        "paused": paused,
    }))
}

/// The contents each office's WAN link carries now, with the bytes taken so far.
pub fn transfers_view(state: &ServerState) -> TransfersView {
    let links = lock(&state.offices).transfers();
    let live = lock(&state.transfers).list(state.clock.now_ms());
    let mut transfers = Vec::new();
    for (office, contents) in links {
        for content in contents {
            let signalled = live
                .iter()
                .find(|t| t.office == office && t.content == content)
                .cloned();
            let name = content_name(state, &content);
            let size = lock(&state.catalogue)
                .get(&content)
                .map(|i| i.meta.size)
                .unwrap_or(0);
            let s = status(state, content, name.clone());
            let row = s.offices.iter().find(|o| o.office == office);
            let parent = {
                let offices = lock(&state.offices);
                let tree = offices.tree();
                tree.find(&office)
                    .and_then(|i| tree.parent(i))
                    .map(|p| tree.office(p).name.clone())
            };
            transfers.push(TransferView {
                office: office.clone(),
                parent,
                content_id: content.to_hex(),
                content: name,
                size,
                rvp: row.and_then(|r| r.rvp.clone()),
                bytes_wan_in: row
                    .map(|r| r.bytes_wan_in)
                    .unwrap_or(0)
                    .max(signalled.as_ref().map_or(0, |t| t.bytes)),
                transfer_id: signalled.as_ref().map(|t| t.id),
                state: if signalled.as_ref().is_some_and(|t| t.paused) {
                    "paused".into()
                } else {
                    "running".into()
                },
                signalled_rate_bytes_per_s: signalled.as_ref().map_or(0, |t| t.rate),
                senders: signalled
                    .as_ref()
                    .map(|t| t.senders.iter().map(|c| c.to_string()).collect())
                    .unwrap_or_default(),
            });
        }
    }
    TransfersView { transfers }
}
