//! Large-message handlers (QUIC, server 34333): content metadata and piece maps, "where
//! can I get X", and what clients hold. The requester is the client named by its verified
//! certificate; no field of the request says who is asking.

use std::sync::Arc;

use branchline_quic::{HandlerError, PeerIdentity, Role};
use branchline_store::{Bitfield, ContentId};
use branchline_transport::DropReason;
use branchline_wire::ClientId;
use branchline_wire::large::{
    ContentInfo, LargeError, LargeRequest, LargeResponse, Locations, PeerHolding, Request, Response,
};
use branchline_wire::msg::{Ack, ErrorCode};
use branchline_wire::validate::content_id;
use bytes::Bytes;
use prost::Message as _;

use crate::handler::ServerState;

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
    let request = LargeRequest::decode(request).map_err(|e| {
        state.counters.count(DropReason::Decode);
        HandlerError(format!("undecodable large request: {e}"))
    })?;
    let response = match request.request {
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
    let record = state
        .registry
        .lock()
        .expect("registry lock")
        .get(&client)
        .cloned();
    let Some(record) = record else {
        return error(ErrorCode::NotFound, "unknown client: register first");
    };
    if !content.serves(&record) {
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
            let cat = state.catalogue.lock().expect("catalogue lock");
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
            let origin = match state.catalogue.lock().expect("catalogue lock").get(&id) {
                Some(item) => item.meta.origin.clone(),
                None => return error(ErrorCode::NotFound, "no such content in the catalogue"),
            };
            let registry = state.registry.lock().expect("registry lock");
            let me = registry.get(&client).cloned();
            let online = |c: &ClientId| registry.get(c).is_some_and(|r| registry.is_online(r, now));
            let near = |c: &ClientId| match (&me, registry.get(c)) {
                (Some(me), Some(r)) if r.addresses.iter().any(|a| me.subnet.contains(*a)) => 0,
                _ => 1,
            };
            let server_sends = state
                .content
                .as_ref()
                .is_some_and(|c| c.holds(&id) && me.as_ref().is_some_and(|m| c.serves(m)));
            let located = state.locations.lock().expect("locations lock").locate(
                client,
                id,
                now,
                server_sends,
                online,
                near,
            );
            let peers = located
                .peers
                .iter()
                .filter_map(|p| {
                    let r = registry.get(&p.client)?;
                    let addr = r.content_addr()?;
                    Some(PeerHolding {
                        client_id: p.client.to_string(),
                        address: addr.ip().to_string(),
                        content_port: addr.port().into(),
                        complete: p.complete,
                        have: if p.complete {
                            Vec::new()
                        } else {
                            p.have.as_bytes().to_vec()
                        },
                        same_subnet: near(&p.client) == 0,
                    })
                })
                .collect();
            Response::Locations(Locations {
                peers,
                read_origin: located.read_origin,
                origin,
                server_sends,
            })
        }
        Request::ReportHave(h) => {
            let id = match id_of(&h.content_id) {
                Ok(id) => id,
                Err(e) => return error(ErrorCode::Invalid, e.to_string()),
            };
            let pieces = match state.catalogue.lock().expect("catalogue lock").get(&id) {
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
            state
                .locations
                .lock()
                .expect("locations lock")
                .report(client, id, have, now);
            Response::Ack(Ack {})
        }
        // Answered asynchronously by `send_content` before this function is called.
        Request::SendContent(_) => {
            error(ErrorCode::Unsupported, "SendContent is answered elsewhere")
        }
        Request::ReportBadPeer(b) => {
            let id = match id_of(&b.content_id) {
                Ok(id) => id,
                Err(e) => return error(ErrorCode::Invalid, e.to_string()),
            };
            let Ok(bad) = b.peer_id.parse::<ClientId>() else {
                return error(ErrorCode::Invalid, "peer_id: not a client id");
            };
            tracing::warn!(reporter = %client, peer = %bad, content = %id, reason = %b.reason, "peer sent a bad piece; no longer offered for this content");
            state
                .locations
                .lock()
                .expect("locations lock")
                .forget(&bad, &id);
            Response::Ack(Ack {})
        }
    }
}
