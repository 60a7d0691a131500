//! Subnet discovery: who on this LAN holds pieces of a content item, without the server.
//!
//! A downloading client asks its subnet in one sealed `WhoHas` datagram sent from its
//! reply port (34324) to the subnet's broadcast address, port 34329. Holders never answer
//! on the broadcast port: after a random delay (so a large subnet does not answer all at
//! once) each sends an `IHave` request to the asker's request port (34325), and the asker
//! acknowledges it. Answers are rate-limited, datagrams from outside the subnet are
//! dropped and counted, and the usual sealing and replay rules apply, so someone on the
//! LAN without the deployment key learns and triggers nothing.
//!
//! Discovery is used beside the server's answers, and alone while the server is
//! unreachable, so an office keeps sharing when its server is down. Offices of type WiFi
//! do not broadcast; VPN clients neither broadcast nor answer (they never serve other
//! clients). Until the server has said which office a client is in, it does not
//! broadcast.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use branchline_store::{Cache, ContentId, FsStorage};
use branchline_transport::{Counters, DropReason, Handler, Requester, Response};
use branchline_wire::msg::{Ack, IHave, WhoHas};
use branchline_wire::validate::{Holding, Subnet};
use branchline_wire::{Body, ClientId};
use tokio::sync::broadcast;

/// A client asks its subnet about one content item at most this often.
pub const ASK_EVERY: Duration = Duration::from_secs(2);
/// Longest random delay before a holder answers.
pub const ANSWER_DELAY_MAX: Duration = Duration::from_millis(250);
/// Most answers a client sends per second (bursts of the same size allowed).
pub const ANSWERS_PER_S: f64 = 50.0;
/// One answer per asker and content item at most this often.
pub const ANSWER_SAME_EVERY: Duration = Duration::from_secs(2);
/// Most askers remembered for the per-asker limit.
const MAX_ASKERS: usize = 4096;
/// Largest have bitfield carried in an answer (bytes); larger ones are asked directly.
pub const MAX_HAVE_IN_ANSWER: usize = 900;

/// A holder found on the subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The content it holds pieces of.
    pub content: ContentId,
    /// The holder's client id, which its certificate must name.
    pub client: ClientId,
    /// Its Foreground content address.
    pub addr: SocketAddr,
    /// It holds every piece.
    pub complete: bool,
    /// Bitfield of verified pieces (empty when complete or not sent).
    pub have: Vec<u8>,
}

/// The subnet's broadcast address for IPv4 subnets of /30 and wider.
pub fn broadcast_address(subnet: &Subnet) -> Option<IpAddr> {
    match subnet.network {
        IpAddr::V4(n) if subnet.prefix <= 30 => {
            let host_bits = 32 - u32::from(subnet.prefix);
            let mask = if host_bits == 32 {
                u32::MAX
            } else {
                (1u32 << host_bits) - 1
            };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from(n) | mask)))
        }
        _ => None,
    }
}

struct Limits {
    tokens: f64,
    last: Option<Instant>,
    askers: HashMap<(IpAddr, ContentId), Instant>,
}

/// A client's discovery state.
pub struct Discovery {
    requester: Arc<Requester>,
    counters: Arc<Counters>,
    client_id: ClientId,
    /// Our request port (answers come here) and Foreground content port.
    reply_port: u16,
    content_port: u16,
    subnet: Subnet,
    /// Where `WhoHas` goes: the subnet's broadcast address and the broadcast port.
    target: Option<SocketAddr>,
    office: Mutex<(String, String)>,
    /// Where the last office and type the server told are kept, so a client restarted
    /// while the server is down still knows whether it may broadcast.
    office_file: Option<std::path::PathBuf>,
    cache: Arc<Cache<FsStorage>>,
    found: broadcast::Sender<Found>,
    asked: Mutex<HashMap<ContentId, Instant>>,
    limits: Mutex<Limits>,
}

impl Discovery {
    /// Discovery for this client: asks from `requester`'s port (broadcast is enabled on
    /// it) to `subnet`'s broadcast address and `broadcast_port`, names `reply_port` and
    /// `content_port` in its messages, and keeps the office the server names in
    /// `office_file`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        requester: Arc<Requester>,
        counters: Arc<Counters>,
        client_id: ClientId,
        reply_port: u16,
        content_port: u16,
        subnet: Subnet,
        broadcast_port: u16,
        cache: Arc<Cache<FsStorage>>,
        office_file: Option<std::path::PathBuf>,
    ) -> Arc<Discovery> {
        let target = broadcast_address(&subnet).map(|ip| SocketAddr::new(ip, broadcast_port));
        if target.is_some()
            && let Err(e) = requester.set_broadcast(true)
        {
            tracing::warn!(error = %e, "cannot enable broadcast on the reply port; subnet discovery is off");
        }
        Arc::new(Discovery {
            requester,
            counters,
            client_id,
            reply_port,
            content_port,
            subnet,
            target,
            office: Mutex::new(
                office_file
                    .as_deref()
                    .and_then(load_office)
                    .unwrap_or_default(),
            ),
            office_file,
            cache,
            found: broadcast::channel(256).0,
            asked: Mutex::new(HashMap::new()),
            limits: Mutex::new(Limits {
                tokens: ANSWERS_PER_S,
                last: None,
                askers: HashMap::new(),
            }),
        })
    }

    /// Where broadcasts go, if this subnet has a broadcast address.
    pub fn target(&self) -> Option<SocketAddr> {
        self.target
    }

    /// Records the office the server placed us in (from registration and heartbeats).
    pub fn set_office(&self, name: &str, kind: &str) {
        if name.is_empty() {
            return;
        }
        let mut o = self.office.lock().unwrap_or_else(|e| e.into_inner());
        if o.0 != name || o.1 != kind {
            tracing::info!(office = name, kind, "office");
            *o = (name.to_owned(), kind.to_owned());
            if let Some(path) = &self.office_file
                && let Err(e) = save_office(path, name, kind)
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot keep the office on disk");
            }
        }
    }

    /// The office's name ("" until the server has told).
    pub fn office_name(&self) -> String {
        self.office
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// The office type ("" until the server has told).
    pub fn office_kind(&self) -> String {
        self.office
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// True when this client may broadcast: a Default office (not WiFi, not VPN).
    pub fn may_broadcast(&self) -> bool {
        self.target.is_some() && self.office_kind() == "default"
    }

    /// Holders found from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Found> {
        self.found.subscribe()
    }

    /// Asks the subnet who holds `content` (at most every [`ASK_EVERY`] per item).
    /// Returns whether a datagram was sent.
    pub async fn ask(&self, content: ContentId) -> bool {
        let Some(target) = self.target else {
            return false;
        };
        if !self.may_broadcast() {
            return false;
        }
        {
            let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if asked
                .get(&content)
                .is_some_and(|t| now.duration_since(*t) < ASK_EVERY)
            {
                return false;
            }
            asked.retain(|_, t| now.duration_since(*t) < ASK_EVERY);
            asked.insert(content, now);
        }
        let ask = Body::WhoHas(WhoHas {
            content_id: content.as_bytes().to_vec(),
            client_id: self.client_id.to_string(),
            reply_port: self.reply_port.into(),
            office: self.office_name(),
        });
        match self.requester.send_oneway(target, ask).await {
            Ok(()) => {
                tracing::debug!(content = %content, %target, "asked the subnet");
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "subnet broadcast failed");
                false
            }
        }
    }

    /// True when the datagram comes from our own subnet; counts it otherwise.
    fn in_subnet(&self, from: SocketAddr) -> bool {
        let ok = self.subnet.contains(from.ip());
        if !ok {
            self.counters.count(DropReason::OutOfSubnet);
        }
        ok
    }

    /// Takes a token for answering `from` about `content`.
    fn may_answer(&self, from: IpAddr, content: ContentId) -> bool {
        let now = Instant::now();
        let mut l = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(last) = l.last {
            l.tokens = (l.tokens + ANSWERS_PER_S * now.duration_since(last).as_secs_f64())
                .min(ANSWERS_PER_S);
        }
        l.last = Some(now);
        if l.askers
            .get(&(from, content))
            .is_some_and(|t| now.duration_since(*t) < ANSWER_SAME_EVERY)
            || l.tokens < 1.0
        {
            return false;
        }
        if l.askers.len() >= MAX_ASKERS {
            l.askers
                .retain(|_, t| now.duration_since(*t) < ANSWER_SAME_EVERY);
            if l.askers.len() >= MAX_ASKERS {
                return false;
            }
        }
        l.tokens -= 1.0;
        l.askers.insert((from, content), now);
        true
    }

    /// A `WhoHas` arrived on the broadcast port: answer later, never on that port.
    fn on_ask(self: &Arc<Self>, from: SocketAddr, ask: WhoHas) {
        let office = ask.office.clone();
        let Ok(ask) = ask.validate() else {
            self.counters.count(DropReason::Invalid);
            return;
        };
        if !self.in_subnet(from) || ask.client_id == self.client_id {
            return;
        }
        // Only the asker's own office answers: one subnet (one broadcast domain) may hold
        // several offices, and peers of another office are not served over the LAN.
        let mine = self.office_name();
        if mine.is_empty() || office != mine {
            return;
        }
        if self.office_kind() == "vpn" {
            return;
        }
        let content = ContentId::from_bytes(ask.content_id);
        let Some(have) = self.cache.have(&content) else {
            return;
        };
        if have.count_ones() == 0 {
            return;
        }
        if !self.may_answer(from.ip(), content) {
            self.counters.count(DropReason::RateLimited);
            return;
        }
        let complete = have.is_complete();
        let bits = have.as_bytes();
        let answer = IHave {
            content_id: content.as_bytes().to_vec(),
            client_id: self.client_id.to_string(),
            content_port: self.content_port.into(),
            office: self.office_name(),
            complete,
            have: if complete || bits.len() > MAX_HAVE_IN_ANSWER {
                Vec::new()
            } else {
                bits.to_vec()
            },
        };
        let to = SocketAddr::new(from.ip(), ask.reply_port);
        let delay = rand::random_range(Duration::ZERO..=ANSWER_DELAY_MAX);
        let requester = self.requester.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(e) = requester.request(to, Body::IHave(answer)).await {
                tracing::debug!(%to, error = %e, "discovery answer not delivered");
            }
        });
    }

    /// An `IHave` arrived on our request port.
    pub fn on_answer(&self, from: SocketAddr, answer: IHave) -> Response {
        let same_office = answer.office == self.office_name() && !answer.office.is_empty();
        let h: Holding = match answer.validate() {
            Ok(h) => h,
            Err(e) => {
                self.counters.count(DropReason::Invalid);
                return Response::Reply(Body::Error(branchline_wire::msg::ErrorReply {
                    code: branchline_wire::msg::ErrorCode::Invalid as i32,
                    detail: e.to_string(),
                    receiver_time_ms: 0,
                }));
            }
        };
        if !self.in_subnet(from) {
            return Response::Silent;
        }
        if !same_office {
            // Acknowledged (it was a valid answer) but not used.
            return Response::Reply(Body::Ack(Ack {}));
        }
        let _ = self.found.send(Found {
            content: ContentId::from_bytes(h.content_id),
            client: h.client_id,
            addr: SocketAddr::new(from.ip(), h.content_port),
            complete: h.complete,
            have: h.have,
        });
        Response::Reply(Body::Ack(Ack {}))
    }
}

/// Reads "NAME\nKIND\n" written by [`save_office`].
fn load_office(path: &std::path::Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let (name, kind) = (lines.next()?.trim(), lines.next()?.trim());
    let known = ["default", "wifi", "vpn"];
    (!name.is_empty() && known.contains(&kind)).then(|| (name.to_owned(), kind.to_owned()))
}

/// Keeps the office and its type (temporary file, then rename).
fn save_office(path: &std::path::Path, name: &str, kind: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{name}\n{kind}\n"))?;
    std::fs::rename(&tmp, path)
}

/// Serves the broadcast port (34329): `WhoHas` only, never answered there.
pub struct BroadcastHandler(pub Arc<Discovery>);

impl Handler for BroadcastHandler {
    fn handle(&self, from: SocketAddr, body: Body) -> Response {
        match body {
            Body::WhoHas(ask) => self.0.on_ask(from, ask),
            _ => self.0.counters.count(DropReason::Unsupported),
        }
        Response::Silent
    }
}

/// A socket bound to the subnet's broadcast address (SO_REUSEADDR, so every client of a
/// subnet on one host receives each broadcast), for a node bound to a unicast address:
/// such a socket does not receive broadcasts itself.
pub fn bind_broadcast_listener(addr: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_office_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("office");
        assert_eq!(load_office(&path), None);
        save_office(&path, "north", "wifi").unwrap();
        assert_eq!(load_office(&path), Some(("north".into(), "wifi".into())));
        std::fs::write(&path, "north\nsomething\n").unwrap();
        assert_eq!(load_office(&path), None, "an unknown type is not trusted");
    }

    #[test]
    fn broadcast_addresses() {
        let s = |t: &str| {
            let (a, p) = t.split_once('/').unwrap();
            Subnet::of(a.parse().unwrap(), p.parse().unwrap())
        };
        assert_eq!(
            broadcast_address(&s("198.18.2.0/24")),
            Some("198.18.2.255".parse().unwrap())
        );
        assert_eq!(
            broadcast_address(&s("10.0.0.0/8")),
            Some("10.255.255.255".parse().unwrap())
        );
        assert_eq!(
            broadcast_address(&s("192.168.1.4/30")),
            Some("192.168.1.7".parse().unwrap())
        );
        assert_eq!(broadcast_address(&s("192.168.1.4/31")), None);
        assert_eq!(broadcast_address(&s("192.168.1.4/32")), None);
        assert_eq!(broadcast_address(&s("fd00::/64")), None);
    }
}
