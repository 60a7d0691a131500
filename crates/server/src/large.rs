//! Large-message handlers (QUIC, server 34333 and Background 34341): content metadata and
//! piece maps, "where can I get X", and what clients hold. The requester is the client
//! named by its verified certificate; no field of the request says who is asking.

use std::sync::Arc;

use branchline_quic::{HandlerError, PeerIdentity, Role};
use branchline_store::{Bitfield, ContentId};
use branchline_transport::DropReason;
use branchline_wire::ClientId;
use std::net::SocketAddr;

use branchline_wire::large::{
    ContentInfo, LargeError, LargeRequest, LargeResponse, LinkPolicy, Locations, MAX_SERVED_BY,
    PeerHolding, Request, Response, Revocations,
};
use branchline_wire::msg::{Ack, ErrorCode};
use branchline_wire::validate::content_id;
use bytes::Bytes;
use prost::Message as _;

use crate::deploy::SourceBytes;
use crate::handler::ServerState;
use crate::offices::{Member, Upstream};
use crate::registry::ClientRecord;
use crate::reports::BadVerdict;

fn error(code: ErrorCode, detail: impl Into<String>) -> Response {
    Response::Error(LargeError {
        code: code as i32,
        detail: detail.into(),
    })
}

/// Answers one large request from `peer`.
pub async fn handle(
    state: Arc<ServerState>,
    peer: PeerIdentity,
    request: Bytes,
) -> Result<Bytes, HandlerError> {
    let Role::Client(name) = &peer.role else {
        return Err(HandlerError(
            "only clients send large messages to the server".into(),
        ));
    };
    let client: ClientId = name
        .as_str()
        .parse()
        .map_err(|e| HandlerError(format!("certificate names no client id: {e}")))?;
    state
        .large_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Its certificate proves who it is: it is alive.
    crate::lock(&state.registry).seen(&client, state.clock.now_ms());
    let request = LargeRequest::decode(request).map_err(|e| {
        state.counters.count(DropReason::Decode);
        HandlerError(format!("undecodable large request: {e}"))
    })?;
    // A revoked (or not yet approved) client gets nothing, even on a connection it
    // opened before the revocation.
    let may = crate::lock(&state.identities).may_serve(&client);
    let response = match request.request {
        _ if !may => error(
            ErrorCode::Unauthorized,
            "this client is revoked or not approved by the admin",
        ),
        Some(Request::GetRevocations(_)) => {
            let ids = crate::lock(&state.identities);
            Response::Revocations(Revocations {
                epoch: ids.epoch(),
                clients: ids.revoked().iter().map(|c| c.to_string()).collect(),
            })
        }
        None => {
            state.counters.count(DropReason::Unsupported);
            error(ErrorCode::Unsupported, "unknown large request kind")
        }
        Some(Request::SendContent(s)) => send_content(&state, client, &s.content_id).await,
        Some(r) => answer(&state, client, r),
    };
    Ok(LargeResponse {
        response: Some(response),
    }
    .encode_to_vec()
    .into())
}

/// A Central Office client asks the server to send it content the server holds.
async fn send_content(state: &ServerState, client: ClientId, content_id: &[u8]) -> Response {
    let id = match content_id_of(content_id) {
        Ok(id) => id,
        Err(e) => return error(ErrorCode::Invalid, e.to_string()),
    };
    let Some(content) = state.content.clone() else {
        return error(ErrorCode::NotFound, "this server holds no content");
    };
    if !content.holds(&id) {
        return error(ErrorCode::NotFound, "the server does not hold this content");
    }
    let record = crate::lock(&state.registry).get(&client).cloned();
    let Some(record) = record else {
        return error(ErrorCode::NotFound, "unknown client: register first");
    };
    // Placed by the address the server saw, never by the subnet the client claims: a
    // client elsewhere cannot talk the server into sending it content directly.
    let central = {
        let offices = crate::lock(&state.offices);
        offices.office_of(&client) == Some(offices.tree().root())
    };
    if !central {
        return error(
            ErrorCode::Invalid,
            "the server sends content only to Central Office clients",
        );
    }
    match content.send_to(&record).await {
        Ok(()) => Response::Ack(Ack {}),
        Err(e) => error(ErrorCode::Unavailable, e),
    }
}

fn content_id_of(bytes: &[u8]) -> Result<ContentId, branchline_wire::Invalid> {
    content_id("content_id", bytes).map(ContentId::from_bytes)
}

fn answer(state: &ServerState, client: ClientId, request: Request) -> Response {
    let now = state.clock.now_ms();
    let id_of = content_id_of;
    match request {
        Request::GetContent(g) => {
            let cat = crate::lock(&state.catalogue);
            let item = if !g.content_id.is_empty() {
                match id_of(&g.content_id) {
                    Ok(id) => cat.get(&id),
                    Err(e) => return error(ErrorCode::Invalid, e.to_string()),
                }
            } else {
                cat.find(
                    &g.name,
                    (!g.version.is_empty()).then_some(g.version.as_str()),
                )
            };
            match item {
                Some(item) => Response::Content(ContentInfo {
                    meta: Some(state.meta_of(item)),
                    piece_map: item.encoded_map.as_ref().clone(),
                }),
                None => error(ErrorCode::NotFound, "no such content in the catalogue"),
            }
        }
        Request::Locate(l) => {
            let id = match id_of(&l.content_id) {
                Ok(id) => id,
                Err(e) => return error(ErrorCode::Invalid, e.to_string()),
            };
            let (origin, pieces) = match crate::lock(&state.catalogue).get(&id) {
                Some(item) => (item.meta.origin.clone(), item.map.piece_count()),
                None => return error(ErrorCode::NotFound, "no such content in the catalogue"),
            };
            locate(state, client, &l, id, origin, pieces, now)
        }
        Request::ReportHave(h) => {
            let id = match id_of(&h.content_id) {
                Ok(id) => id,
                Err(e) => return error(ErrorCode::Invalid, e.to_string()),
            };
            let pieces = match crate::lock(&state.catalogue).get(&id) {
                Some(item) => item.map.piece_count(),
                None => return error(ErrorCode::NotFound, "no such content in the catalogue"),
            };
            let have = if h.complete {
                let mut b = Bitfield::new(pieces);
                (0..pieces).for_each(|i| {
                    b.set(i);
                });
                b
            } else {
                match Bitfield::from_bytes(pieces, &h.have) {
                    Some(b) => b,
                    None => {
                        return error(
                            ErrorCode::Invalid,
                            format!("have: not a bitfield of {pieces} pieces"),
                        );
                    }
                }
            };
            let (pieces, complete) = (have.count_ones(), have.is_complete());
            // Evidence that peers serve: counted only for peers named to this client.
            let served: Vec<ClientId> = h
                .served_by
                .iter()
                .take(MAX_SERVED_BY)
                .filter_map(|p| p.parse().ok())
                .collect();
            if !served.is_empty() {
                crate::lock(&state.reports).served_by(client, id, served);
            }
            crate::lock(&state.locations).report(client, id, have, now);
            crate::lock(&state.offices).progress(client, id, pieces, complete, now);
            if let Some(b) = h.sources {
                crate::lock(&state.deployments).record(
                    id,
                    client,
                    SourceBytes {
                        origin: b.origin,
                        server: b.server,
                        wan: b.wan,
                        lan: b.lan,
                    },
                );
            }
            Response::Ack(Ack {})
        }
        Request::GetDeploymentKey(_) => {
            // The certificate says who asks; only a client the server knows gets the key.
            if crate::lock(&state.registry).get(&client).is_none() {
                return error(
                    ErrorCode::NotFound,
                    "this client is not registered; register first",
                );
            }
            let (key, retire_ms) = {
                let keys = crate::lock(&state.keys);
                (keys.current().clone(), keys.retire_ms())
            };
            tracing::info!(%client, key_id = %key.derive().id(), "gave the current deployment key to a client");
            Response::DeploymentKey(branchline_wire::large::DeploymentKeyGrant {
                key: key.as_bytes().to_vec(),
                key_id: key.derive().id().0,
                retire_ms,
            })
        }
        // Answered asynchronously by `send_content` before this function is called.
        Request::SendContent(_) | Request::GetRevocations(_) => {
            error(ErrorCode::Unsupported, "answered elsewhere")
        }
        Request::ReportBadPeer(b) => {
            let id = match id_of(&b.content_id) {
                Ok(id) => id,
                Err(e) => return error(ErrorCode::Invalid, e.to_string()),
            };
            let Ok(bad) = b.peer_id.parse::<ClientId>() else {
                return error(ErrorCode::Invalid, "peer_id: not a client id");
            };
            // The address the server sees the reporter at: one device with several ids
            // counts once.
            let ip = crate::lock(&state.registry)
                .get(&client)
                .and_then(crate::calls::seen_ip);
            let Some(ip) = ip else {
                return error(ErrorCode::NotFound, "unknown client: register first");
            };
            let verdict = crate::lock(&state.reports).bad_peer(client, ip, id, bad, now);
            match verdict {
                BadVerdict::Drop => {
                    tracing::warn!(reporter = %client, peer = %bad, content = %id, reason = %b.reason, "peer reported bad by several clients; no longer offered for this content");
                    crate::lock(&state.locations).forget(&bad, &id);
                }
                BadVerdict::Counted { reporters } => {
                    tracing::info!(reporter = %client, peer = %bad, content = %id, reason = %b.reason, reporters, "bad-peer report counted; more reporters are needed to drop the peer");
                }
                BadVerdict::NotNamed | BadVerdict::Full => {
                    state.counters.count(DropReason::Invalid);
                    tracing::info!(reporter = %client, peer = %bad, content = %id, ?verdict, "ignored a bad-peer report about a peer the server did not name to the reporter");
                }
            }
            Response::Ack(Ack {})
        }
    }
}

/// "Where can I get X": same-office peers for everyone; for the office's RVP also the
/// way out of the office (parent-office peers over Background, or the origin or the
/// server's copy in the Central Office). See `crate::offices`.
fn locate(
    state: &ServerState,
    client: ClientId,
    request: &branchline_wire::large::Locate,
    id: ContentId,
    origin: String,
    pieces: u32,
    now: u64,
) -> Response {
    let wall = crate::now_ms();
    let registry = crate::lock(&state.registry);
    let Some(me) = registry.get(&client).cloned() else {
        return error(ErrorCode::NotFound, "unknown client: register first");
    };
    let mut offices = crate::lock(&state.offices);
    if offices.office_of(&client).is_none()
        && let Some(ip) = crate::calls::seen_ip(&me)
    {
        offices.place(client, ip);
    }
    let identities = crate::lock(&state.identities);
    let mut locations = crate::lock(&state.locations);
    let mut reports = crate::lock(&state.reports);
    let open: Vec<bool> = offices
        .tree()
        .iter()
        .map(|(_, o)| o.wan.is_open(wall))
        .collect();
    let plan = {
        let loc = &*locations;
        let proven = &*reports;
        let member = |c: &ClientId| {
            if !identities.may_serve(c) {
                return None;
            }
            let r = registry.get(c)?;
            let have = loc.have(c, &id);
            Some(Member {
                id: *c,
                online: registry.is_online(r, now),
                uptime_s: now.saturating_sub(r.first_seen_ms) / 1000,
                cache_free_bytes: r.cache_free_bytes,
                pieces: have.map(|h| h.count_ones()).unwrap_or(0),
                // A bare claim stops nobody fetching for good (see `crate::reports`).
                complete: have.is_some_and(|h| h.is_complete())
                    && proven.complete_counts(&id, c, now),
            })
        };
        offices.plan_claiming(client, id, now, request.was_rvp, member, |o| {
            open.get(o).copied().unwrap_or(true)
        })
    };
    let Some(plan) = plan else {
        return error(ErrorCode::Unavailable, "this client has no office yet");
    };
    let empty = Bitfield::new(pieces);
    let holding = |c: &ClientId, port_of: &dyn Fn(&ClientRecord) -> Option<SocketAddr>| {
        // Revoked clients are never named to peers.
        if !identities.may_serve(c) {
            return None;
        }
        let r = registry.get(c)?;
        // A peer that holds nothing yet (it is fetching too) is listed with an empty set.
        let have = locations.have(c, &id).unwrap_or(&empty);
        let addr = port_of(r)?;
        let complete = have.is_complete();
        Some(PeerHolding {
            client_id: c.to_string(),
            address: addr.ip().to_string(),
            content_port: addr.port().into(),
            complete,
            have: if complete {
                Vec::new()
            } else {
                have.as_bytes().to_vec()
            },
            same_subnet: true,
            adaptive_port: r
                .ports
                .map(|p| p.adaptive)
                .unwrap_or(branchline_config::ClientPorts::default().adaptive)
                .into(),
        })
    };
    let mut peers: Vec<PeerHolding> = plan
        .lan_peers
        .iter()
        .filter_map(|c| holding(c, &|r| r.content_addr()))
        .collect();
    peers.sort_by_key(|p| {
        (
            !p.complete,
            std::cmp::Reverse(p.have.iter().map(|b| b.count_ones()).sum::<u32>()),
        )
    });
    peers.truncate(crate::locations::MAX_PEERS);
    let root = offices.tree().root();
    let mut upstream = Vec::new();
    let (mut read_origin, mut server_sends) = (false, false);
    match plan.upstream {
        Some(Upstream::Office(a)) => {
            let fetching = offices.fetching(&id);
            upstream = offices
                .members(a)
                .iter()
                .filter(|c| registry.get(c).is_some_and(|r| registry.is_online(r, now)))
                .filter(|c| fetching.contains(c) || locations.have(c, &id).is_some())
                .filter_map(|c| holding(c, &|r| r.background_content_addr()))
                .collect();
            upstream.sort_by_key(|p| !p.complete);
            upstream.truncate(crate::locations::MAX_PEERS);
        }
        Some(Upstream::Origin) => {
            server_sends =
                plan.office == root && state.content.as_ref().is_some_and(|c| c.holds(&id));
            // A complete copy in the office covers it once its holder has shown it
            // serves (another client received bytes from it), or while its claim is
            // new (see `crate::reports`): a bare `complete` claim never stops origin
            // reads for good. Otherwise one origin reader.
            let mut covered = false;
            for p in peers.iter().filter(|p| p.complete) {
                if let Ok(c) = p.client_id.parse::<ClientId>() {
                    covered |= reports.complete_covers(id, c, now);
                }
            }
            let online = |c: &ClientId| registry.get(c).is_some_and(|r| registry.is_online(r, now));
            // After a restart, the reader of before says so and keeps reading; nobody
            // else becomes one during the grace period.
            let wait =
                offices.in_grace(now) && !request.reading_origin && !locations.has_reader(&id);
            read_origin =
                !wait && locations.read_origin(client, id, now, covered || server_sends, online);
        }
        None => {}
    }
    drop(reports);
    drop(locations);
    drop(identities);
    // Remember whom this client was given: its reports count only about them.
    let named: Vec<ClientId> = peers
        .iter()
        .chain(upstream.iter())
        .filter_map(|p| p.client_id.parse().ok())
        .collect();
    crate::lock(&state.reports).named(client, id, &named);
    if let Some(relay) = plan.relay {
        crate::lock(&state.deployments).relay(relay, id);
        if let Some(addr) = registry.get(&relay).and_then(crate::calls::small_addr) {
            tracing::info!(relay = %relay, content = %id, "asked to fetch for a child office");
            state.push(
                addr,
                branchline_wire::msg::Assign {
                    content_id: id.as_bytes().to_vec(),
                    deployment: 0,
                },
            );
        }
    }
    let spec = offices.tree().office(plan.office);
    let paused = crate::lock(&state.transfers).is_paused(&spec.name, &id);
    let link = plan.am_rvp.then(|| {
        let wan = &spec.wan;
        LinkPolicy {
            ceiling_bytes_per_s: wan.ceiling_bytes_per_s.unwrap_or(0),
            open: wan.is_open(wall),
            queued: plan.queued,
            paused,
            change_in_ms: wan
                .allowed_hours
                .map(|h| h.next_change(wall).saturating_sub(wall))
                .unwrap_or(0),
        }
    });
    Response::Locations(Locations {
        peers,
        read_origin,
        origin,
        server_sends,
        upstream,
        office: spec.name.clone(),
        office_kind: spec.kind.as_str().to_owned(),
        rvp: plan.rvp.map(|c| c.to_string()).unwrap_or_default(),
        am_rvp: plan.am_rvp,
        link,
    })
}
