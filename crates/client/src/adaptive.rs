//! Adaptive Protocol control signals (34545 on the server, 34546 on clients).
//!
//! The RVP of an office that pulls a content item over the office's WAN link is the
//! receiving side of a *transfer*. It tells the server (34545) when the transfer starts,
//! how it progresses (bytes, rate, every [`PROGRESS_EVERY`]) and when it ends, so the
//! server can show what moves where and arbitrate the link; and it tells each sending
//! client (34546) when it starts, pauses, resumes or cancels pulling from it. The server
//! pauses and resumes a transfer on an admin's request with a `TransferControl` small
//! message to the RVP's 34325; the RVP then stops requesting pieces over the link and
//! resets the streams in flight, so the link goes quiet within about a round trip, and
//! later resumes without fetching a verified piece again.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use branchline_store::ContentId;
use branchline_transport::{Counters, DropReason, Handler, Requester, Response};
use branchline_wire::msg::{Ack, SignalKind, TransferControl, TransferSignal};
use branchline_wire::{Body, ClientId};
use tokio::sync::broadcast;
use tokio::task::AbortHandle;

/// How often the RVP reports a running transfer's progress to the server.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// A client's control-signal side.
pub struct Signals {
    requester: Arc<Requester>,
    counters: Arc<Counters>,
    client_id: ClientId,
    /// The server's IP and Adaptive Protocol port (34545).
    server: SocketAddr,
    controls: broadcast::Sender<TransferControl>,
    /// The WAN piece fetches running per content item, so that a pause stops them at
    /// once, even while the download's loop is busy writing pieces.
    wan_fetches: std::sync::Mutex<std::collections::HashMap<ContentId, Vec<AbortHandle>>>,
}

impl Signals {
    /// Signals sent with `requester` (the client's small-message reply port) as
    /// `client_id`, to the server's Adaptive Protocol address `server`.
    pub(crate) fn new(
        requester: Arc<Requester>,
        counters: Arc<Counters>,
        client_id: ClientId,
        server: SocketAddr,
    ) -> Arc<Signals> {
        Arc::new(Signals {
            requester,
            counters,
            client_id,
            server,
            controls: broadcast::channel(64).0,
            wan_fetches: Default::default(),
        })
    }

    /// Pauses and resumes the server asks for.
    pub fn subscribe(&self) -> broadcast::Receiver<TransferControl> {
        self.controls.subscribe()
    }

    /// A `TransferControl` from the server (checked to come from the server's address by
    /// the caller). A pause stops the content's WAN fetches here and now (the streams
    /// are reset, what arrived is kept by the download); the download then stops
    /// requesting.
    pub fn on_control(&self, c: TransferControl) -> Response {
        let Ok(id) = <[u8; 32]>::try_from(c.content_id.as_slice()) else {
            self.counters.count(DropReason::Invalid);
            return Response::Silent;
        };
        if c.pause {
            let fetches = self
                .wan_fetches
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&ContentId::from_bytes(id))
                .unwrap_or_default();
            for f in fetches {
                f.abort();
            }
        }
        let _ = self.controls.send(c);
        Response::Reply(Body::Ack(Ack {}))
    }

    /// Notes a running WAN fetch of `content` (a pause aborts it at once).
    pub fn track(&self, content: ContentId, fetch: AbortHandle) {
        let mut m = self.wan_fetches.lock().unwrap_or_else(|e| e.into_inner());
        let v = m.entry(content).or_default();
        v.retain(|f| !f.is_finished());
        v.push(fetch);
    }

    /// Forgets `content`'s fetches (its download ended).
    pub fn untrack(&self, content: ContentId) {
        self.wan_fetches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&content);
    }

    fn signal(
        &self,
        content: ContentId,
        kind: SignalKind,
        bytes: u64,
        rate: u64,
    ) -> TransferSignal {
        TransferSignal {
            content_id: content.as_bytes().to_vec(),
            kind: kind as i32,
            bytes,
            rate,
            senders: Vec::new(),
            client_id: self.client_id.to_string(),
        }
    }

    /// Tells the server (start, progress, end); never waits for the answer.
    pub fn to_server(
        &self,
        content: ContentId,
        kind: SignalKind,
        bytes: u64,
        rate: u64,
        senders: Vec<String>,
    ) {
        let mut s = self.signal(content, kind, bytes, rate);
        s.senders = senders;
        let (requester, to) = (self.requester.clone(), self.server);
        tokio::spawn(async move {
            if let Err(e) = requester.request(to, Body::TransferSignal(s)).await {
                tracing::debug!(%to, error = %e, "control signal to the server not delivered");
            }
        });
    }

    /// Tells the sending clients (start, pause, resume, cancel) at their 34546.
    pub fn to_senders(&self, content: ContentId, kind: SignalKind, senders: &[SocketAddr]) {
        for to in senders {
            let (requester, to, s) = (
                self.requester.clone(),
                *to,
                self.signal(content, kind, 0, 0),
            );
            tokio::spawn(async move {
                if let Err(e) = requester.request(to, Body::TransferSignal(s)).await {
                    tracing::debug!(%to, error = %e, "control signal to a sender not delivered");
                }
            });
        }
    }
}

/// Serves a client's Adaptive Protocol port (34546): signals from the clients that pull
/// from it.
pub struct PeerSignalHandler {
    /// Where malformed and unexpected signals are counted.
    pub(crate) counters: Arc<Counters>,
}

impl Handler for PeerSignalHandler {
    fn handle(&self, from: SocketAddr, body: Body) -> Response {
        match body {
            Body::TransferSignal(s) => {
                let kind = SignalKind::try_from(s.kind).unwrap_or(SignalKind::Unspecified);
                let (Ok(id), Ok(receiver)) = (
                    <[u8; 32]>::try_from(s.content_id.as_slice()),
                    s.client_id.parse::<ClientId>(),
                ) else {
                    self.counters.count(DropReason::Invalid);
                    return Response::Silent;
                };
                match kind {
                    SignalKind::Start
                    | SignalKind::Pause
                    | SignalKind::Resume
                    | SignalKind::Cancel => {
                        // Debug: any enrolled device may send these, so they must not
                        // fill the logs.
                        tracing::debug!(
                            content = %ContentId::from_bytes(id),
                            receiver = %receiver,
                            from = %from_ip(from),
                            signal = ?kind,
                            "transfer signal from a receiving client"
                        );
                        Response::Reply(Body::Ack(Ack {}))
                    }
                    _ => {
                        self.counters.count(DropReason::Invalid);
                        Response::Silent
                    }
                }
            }
            Body::Ping(_) => Response::Reply(Body::Ack(Ack {})),
            _ => {
                self.counters.count(DropReason::Unsupported);
                Response::Silent
            }
        }
    }
}

fn from_ip(a: SocketAddr) -> IpAddr {
    a.ip()
}
