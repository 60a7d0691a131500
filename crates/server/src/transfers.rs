//! Live WAN transfers, from the Adaptive Protocol control signals the RVPs send to the
//! server's 34545 (start, progress, end), and the admin's pause and resume. Pure: time is
//! passed in.
//!
//! A transfer is one content item crossing one office's WAN link into the office, pulled
//! by the office's RVP from peers of its parent office. The link's admission (at most
//! `max_transfers` at once) is `crate::offices`'s; this table adds what moves (bytes,
//! rate, senders) and the admin's pauses. A paused transfer stays paused until resumed,
//! also when its RVP changes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use branchline_store::ContentId;
use branchline_transport::{DropReason, Handler, Response};
use branchline_wire::msg::{Ack, ErrorCode, ErrorReply, SignalKind, TransferSignal};
use branchline_wire::{Body, ClientId};

use crate::handler::ServerState;

/// Serves the server's Adaptive Protocol port (34545): control signals from RVPs. A
/// signal names its sender, and the server acts on it only when it comes from the
/// address the server sees that client at.
pub struct SignalHandler(pub Arc<ServerState>);

impl SignalHandler {
    fn refuse(&self, detail: String) -> Response {
        self.0.counters.count(DropReason::Invalid);
        Response::Reply(Body::Error(ErrorReply {
            code: ErrorCode::Invalid as i32,
            detail,
            receiver_time_ms: self.0.clock.now_ms(),
        }))
    }

    fn on_signal(&self, from: SocketAddr, s: TransferSignal) -> Response {
        let state = &self.0;
        let now = state.clock.now_ms();
        let Ok(content) = <[u8; 32]>::try_from(s.content_id.as_slice()) else {
            return self.refuse("content_id: a content id is 32 bytes".into());
        };
        let content = ContentId::from_bytes(content);
        let Ok(client) = s.client_id.parse::<ClientId>() else {
            return self.refuse("client_id: not a client id".into());
        };
        let seen = crate::lock(&state.registry)
            .get(&client)
            .and_then(crate::calls::seen_ip);
        if seen != Some(from.ip()) {
            return self.refuse(format!(
                "client {client} is not at {}: signals come from the client itself",
                from.ip()
            ));
        }
        let what = match SignalKind::try_from(s.kind) {
            Ok(SignalKind::Start) => Signal::Start,
            Ok(SignalKind::Progress) => Signal::Progress,
            Ok(SignalKind::End) => Signal::End,
            _ => return self.refuse(format!("signal kind {} is not for the server", s.kind)),
        };
        let Some(office) = ({
            let offices = crate::lock(&state.offices);
            offices
                .office_of(&client)
                .map(|o| offices.tree().office(o).name.clone())
        }) else {
            return self.refuse("this client has no office".into());
        };
        let senders: Vec<ClientId> = s
            .senders
            .iter()
            .take(MAX_SENDERS)
            .filter_map(|c| c.parse().ok())
            .collect();
        let mut transfers = crate::lock(&state.transfers);
        if let Some(t) = transfers.signal(
            &office, content, client, senders, what, s.bytes, s.rate, now,
        ) {
            match what {
                Signal::Start => tracing::info!(
                    transfer = t.id, office = %office, content = %content, receiver = %client,
                    senders = t.senders.len(), "WAN transfer started"
                ),
                Signal::End => tracing::info!(
                    transfer = t.id, office = %office, content = %content, bytes = s.bytes,
                    "WAN transfer ended"
                ),
                Signal::Progress => {}
            }
        }
        Response::Reply(Body::Ack(Ack {}))
    }
}

impl Handler for SignalHandler {
    fn handle(&self, from: SocketAddr, body: Body) -> Response {
        match body {
            Body::TransferSignal(s) => self.on_signal(from, s),
            Body::Ping(_) => Response::Reply(Body::Ack(Ack {})),
            other => {
                self.0.counters.count(DropReason::Unsupported);
                Response::Reply(Body::Error(ErrorReply {
                    code: ErrorCode::Unsupported as i32,
                    detail: format!("the adaptive port does not accept {}", other.kind()),
                    receiver_time_ms: self.0.clock.now_ms(),
                }))
            }
        }
    }
}

/// A transfer with no signal for this long is no longer listed (ms).
pub const TRANSFER_STALE_MS: u64 = 30_000;
/// Most transfers tracked.
pub const MAX_TRANSFERS: usize = 100_000;
/// Most senders listed per transfer.
pub const MAX_SENDERS: usize = 32;

/// What a control signal says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// `SignalKind::Start`: the RVP starts pulling the content over its office's link.
    Start,
    /// `SignalKind::Progress`: bytes and rate so far.
    Progress,
    /// `SignalKind::End`: the transfer is over; it is no longer listed.
    End,
}

/// One transfer.
#[derive(Clone, Debug, PartialEq)]
pub struct Transfer {
    /// The server's id for it (`transfer_id` in `TransferControl` and the admin's `transfer
    /// pause|resume ID`): 1 and up, counted again from 1 after a restart.
    pub id: u64,
    /// The office whose WAN link it crosses, into the office.
    pub office: String,
    /// The content crossing.
    pub content: ContentId,
    /// The RVP pulling it: the client whose signal came last.
    pub receiver: ClientId,
    /// The parent office's clients it pulls from, as the RVP last named them (at most
    /// [`MAX_SENDERS`]).
    pub senders: Vec<ClientId>,
    /// Bytes received so far, as the RVP signalled (never goes down).
    pub bytes: u64,
    /// Bytes/s as the receiver measured it.
    pub rate: u64,
    /// True while an admin has it paused.
    pub paused: bool,
    /// When its first signal arrived (Unix ms).
    pub started_ms: u64,
    /// When its last signal arrived (Unix ms); without one for [`TRANSFER_STALE_MS`] an
    /// unpaused transfer is dropped.
    pub updated_ms: u64,
    /// An `End` signal arrived: it is dropped at the next look.
    pub ended: bool,
}

/// The table.
#[derive(Debug, Default)]
pub struct Transfers {
    by_key: BTreeMap<(String, ContentId), Transfer>,
    next_id: u64,
}

impl Transfers {
    /// Records a signal from `receiver`, the RVP of `office`.
    #[allow(clippy::too_many_arguments)]
    pub fn signal(
        &mut self,
        office: &str,
        content: ContentId,
        receiver: ClientId,
        senders: Vec<ClientId>,
        what: Signal,
        bytes: u64,
        rate: u64,
        now_ms: u64,
    ) -> Option<&Transfer> {
        self.expire(now_ms);
        let key = (office.to_owned(), content);
        if !self.by_key.contains_key(&key) {
            if what == Signal::End || self.by_key.len() >= MAX_TRANSFERS {
                return None;
            }
            self.next_id += 1;
            self.by_key.insert(
                key.clone(),
                Transfer {
                    id: self.next_id,
                    office: office.to_owned(),
                    content,
                    receiver,
                    senders: Vec::new(),
                    bytes: 0,
                    rate: 0,
                    paused: false,
                    started_ms: now_ms,
                    updated_ms: now_ms,
                    ended: false,
                },
            );
        }
        let t = self.by_key.get_mut(&key)?;
        t.receiver = receiver;
        if !senders.is_empty() {
            t.senders = senders;
            t.senders.truncate(MAX_SENDERS);
        }
        t.bytes = t.bytes.max(bytes);
        t.rate = rate;
        t.updated_ms = now_ms;
        t.ended = what == Signal::End;
        Some(t)
    }

    fn expire(&mut self, now_ms: u64) {
        self.by_key.retain(|_, t| {
            !t.ended && (t.paused || now_ms.saturating_sub(t.updated_ms) < TRANSFER_STALE_MS)
        });
    }

    /// Live transfers, oldest first.
    pub fn list(&mut self, now_ms: u64) -> Vec<Transfer> {
        self.expire(now_ms);
        let mut v: Vec<Transfer> = self.by_key.values().cloned().collect();
        v.sort_by_key(|t| t.id);
        v
    }

    /// Pauses or resumes transfer `id`; the transfer, if it exists.
    pub fn set_paused(&mut self, id: u64, paused: bool) -> Option<Transfer> {
        let t = self.by_key.values_mut().find(|t| t.id == id)?;
        t.paused = paused;
        Some(t.clone())
    }

    /// True when the admin paused `content`'s transfer into `office`.
    pub fn is_paused(&self, office: &str, content: &ContentId) -> bool {
        self.by_key
            .get(&(office.to_owned(), *content))
            .is_some_and(|t| t.paused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const X: ContentId = ContentId::from_bytes([7; 32]);
    fn c(n: u8) -> ClientId {
        ClientId([n; 16])
    }

    #[test]
    fn signals_make_a_live_transfer_and_end_it() {
        let mut t = Transfers::default();
        let id = t
            .signal("north", X, c(1), vec![c(9)], Signal::Start, 0, 0, 0)
            .unwrap()
            .id;
        t.signal("north", X, c(1), vec![], Signal::Progress, 500, 100, 10);
        let l = t.list(20);
        assert_eq!(l.len(), 1);
        assert_eq!((l[0].id, l[0].bytes, l[0].rate), (id, 500, 100));
        assert_eq!(l[0].senders, vec![c(9)]);
        t.signal("north", X, c(1), vec![], Signal::End, 1000, 0, 30);
        assert!(t.list(31).is_empty());
        // A late End for an unknown transfer creates nothing.
        assert!(
            t.signal("south", X, c(2), vec![], Signal::End, 1, 0, 40)
                .is_none()
        );
    }

    #[test]
    fn pauses_hold_until_resumed_and_silent_transfers_expire() {
        let mut t = Transfers::default();
        let id = t
            .signal("north", X, c(1), vec![], Signal::Start, 0, 0, 0)
            .unwrap()
            .id;
        assert!(t.set_paused(id, true).is_some());
        assert!(t.is_paused("north", &X));
        assert_eq!(
            t.list(TRANSFER_STALE_MS * 2).len(),
            1,
            "a paused transfer stays"
        );
        t.set_paused(id, false);
        assert!(!t.is_paused("north", &X));
        assert!(t.list(TRANSFER_STALE_MS * 3).is_empty(), "silent: gone");
        assert!(t.set_paused(999, true).is_none());
    }
}
