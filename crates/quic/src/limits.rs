//! Bounds an accepting endpoint puts on its peers (pure logic: no sockets, no clocks).
//!
//! A hostile enrolled device holds a valid certificate, so authentication alone does
//! not bound what it can make us hold. Every accepting endpoint (large messages,
//! content) therefore admits:
//!
//! - at most [`AcceptLimits::max_handshakes`] handshakes at once (before the peer's
//!   identity is known), and [`AcceptLimits::max_handshakes_per_source`] from one source
//!   address, so one flooding host cannot take every slot; more are refused at once,
//!   before any cryptography;
//! - handshakes that finish within [`AcceptLimits::handshake_timeout`];
//! - at most [`AcceptLimits::max_per_peer`] open connections per certificate identity
//!   and [`AcceptLimits::max_connections`] in all; a connection beyond either is
//!   closed right after its handshake with [`crate::endpoint::CLOSE_BUSY`];
//! - requests received whole within [`AcceptLimits::request_timeout`] of their stream
//!   opening, and no larger than their format allows (a piece request is 45 bytes,
//!   a large-message request at most [`crate::LargeConfig::max_request`], 64 KiB by
//!   default).
//!
//! Idle connections end after the transport's idle timeout, and quinn bounds the
//! streams per connection ([`crate::TransportSettings::max_concurrent_streams`]).
//! Every refusal is counted in [`AcceptStats`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::identity::Role;

/// Default open connections per peer identity on one endpoint (8). Honest peers
/// keep one (see [`crate::ConnectionPool`]), a few more while reconnecting.
pub const DEFAULT_MAX_PER_PEER: usize = 8;
/// Default open connections in all on one endpoint (1024).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default handshakes in progress at once on one endpoint (64).
pub const DEFAULT_MAX_HANDSHAKES: usize = 64;
/// Default handshakes in progress at once from one source address (16).
pub const DEFAULT_MAX_HANDSHAKES_PER_SOURCE: usize = 16;
/// Default bound on one handshake (10 s).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on receiving one whole request after its stream opened (10 s).
pub const DEFAULT_REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What an accepting endpoint admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptLimits {
    /// Open connections per certificate identity.
    pub max_per_peer: usize,
    /// Open connections in all.
    pub max_connections: usize,
    /// Handshakes in progress at once.
    pub max_handshakes: usize,
    /// Handshakes in progress at once from one source address.
    pub max_handshakes_per_source: usize,
    /// Bound on one handshake.
    pub handshake_timeout: Duration,
    /// Bound on receiving one whole request, from its stream opening.
    pub request_timeout: Duration,
}

impl Default for AcceptLimits {
    fn default() -> Self {
        Self {
            max_per_peer: DEFAULT_MAX_PER_PEER,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_handshakes_per_source: DEFAULT_MAX_HANDSHAKES_PER_SOURCE,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_READ_TIMEOUT,
        }
    }
}

/// Why an accepting endpoint refused or dropped something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Too many handshakes in progress (in all, or from the source address): refused
    /// before any cryptography.
    Handshakes,
    /// A handshake did not finish within its deadline.
    HandshakeTimeout,
    /// A handshake failed (certificate refused, peer gave up).
    HandshakeFailed,
    /// The peer identity already holds its whole quota of connections.
    PeerConnections,
    /// The endpoint already holds its whole quota of connections.
    TotalConnections,
    /// A request did not arrive whole within its deadline.
    RequestTimeout,
    /// A request was malformed or larger than its format allows.
    BadRequest,
}

impl Refusal {
    /// Every reason, in a fixed order.
    pub const ALL: [Refusal; 7] = [
        Refusal::Handshakes,
        Refusal::HandshakeTimeout,
        Refusal::HandshakeFailed,
        Refusal::PeerConnections,
        Refusal::TotalConnections,
        Refusal::RequestTimeout,
        Refusal::BadRequest,
    ];

    /// Stable snake_case name, used in health output and metrics (prefixed `quic_`).
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Handshakes => "quic_handshake_cap",
            Refusal::HandshakeTimeout => "quic_handshake_timeout",
            Refusal::HandshakeFailed => "quic_handshake_failed",
            Refusal::PeerConnections => "quic_peer_connection_cap",
            Refusal::TotalConnections => "quic_connection_cap",
            Refusal::RequestTimeout => "quic_request_timeout",
            Refusal::BadRequest => "quic_bad_request",
        }
    }

    fn index(self) -> usize {
        Refusal::ALL
            .iter()
            .position(|r| *r == self)
            .expect("every refusal is in ALL")
    }
}

/// Counters of an accepting endpoint: refusals per reason, connections admitted and
/// open now. Shared (`Arc`) so a node can show the counts of all its endpoints.
#[derive(Debug, Default)]
pub struct AcceptStats {
    refused: [AtomicU64; Refusal::ALL.len()],
    admitted: AtomicU64,
    open: AtomicU64,
    peak_open: AtomicU64,
}

impl AcceptStats {
    /// Counts one refusal.
    pub fn count(&self, reason: Refusal) {
        self.refused[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals for `reason` so far.
    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refused[reason.index()].load(Ordering::Relaxed)
    }

    /// All refusals so far.
    pub fn refused_total(&self) -> u64 {
        self.refused.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Connections admitted so far.
    pub fn admitted(&self) -> u64 {
        self.admitted.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// The most connections that were open at once.
    pub fn peak_open(&self) -> u64 {
        self.peak_open.load(Ordering::Relaxed)
    }

    /// Every reason with its count, in [`Refusal::ALL`] order.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        Refusal::ALL
            .iter()
            .map(|r| (r.name(), self.refused(*r)))
            .collect()
    }
}

#[derive(Debug, Default)]
struct Held {
    handshakes: usize,
    handshakes_by_source: HashMap<IpAddr, usize>,
    total: usize,
    per_peer: HashMap<Role, usize>,
}

/// Admission control of one accepting endpoint.
#[derive(Debug)]
pub struct Limiter {
    limits: AcceptLimits,
    stats: Arc<AcceptStats>,
    held: Mutex<Held>,
}

impl Limiter {
    /// A limiter with `limits`, counting into `stats`.
    pub fn new(limits: AcceptLimits, stats: Arc<AcceptStats>) -> Arc<Self> {
        Arc::new(Self {
            limits,
            stats,
            held: Mutex::new(Held::default()),
        })
    }

    /// The limits.
    pub fn limits(&self) -> &AcceptLimits {
        &self.limits
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<AcceptStats> {
        &self.stats
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for one handshake from `source`, or `None` (counted) when all are taken
    /// or `source` holds its share.
    pub fn handshake(self: &Arc<Self>, source: IpAddr) -> Option<HandshakePermit> {
        let mut held = self.held();
        let from_source = held.handshakes_by_source.get(&source).copied().unwrap_or(0);
        if held.handshakes >= self.limits.max_handshakes
            || from_source >= self.limits.max_handshakes_per_source
        {
            drop(held);
            self.stats.count(Refusal::Handshakes);
            return None;
        }
        held.handshakes += 1;
        *held.handshakes_by_source.entry(source).or_default() += 1;
        Some(HandshakePermit {
            limiter: self.clone(),
            source,
        })
    }

    /// Admits one authenticated connection of `peer`, or says why not (counted).
    pub fn admit(self: &Arc<Self>, peer: &Role) -> Result<ConnectionPermit, Refusal> {
        let mut held = self.held();
        let refusal = if held.total >= self.limits.max_connections {
            Some(Refusal::TotalConnections)
        } else if held.per_peer.get(peer).copied().unwrap_or(0) >= self.limits.max_per_peer {
            Some(Refusal::PeerConnections)
        } else {
            None
        };
        if let Some(r) = refusal {
            drop(held);
            self.stats.count(r);
            return Err(r);
        }
        held.total += 1;
        *held.per_peer.entry(peer.clone()).or_default() += 1;
        let open = held.total as u64;
        drop(held);
        self.stats.admitted.fetch_add(1, Ordering::Relaxed);
        self.stats.open.store(open, Ordering::Relaxed);
        self.stats.peak_open.fetch_max(open, Ordering::Relaxed);
        Ok(ConnectionPermit {
            limiter: self.clone(),
            peer: peer.clone(),
        })
    }
}

/// One handshake in progress; its slot is released when dropped.
#[derive(Debug)]
pub struct HandshakePermit {
    limiter: Arc<Limiter>,
    source: IpAddr,
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        let mut held = self.limiter.held();
        held.handshakes -= 1;
        if let Some(n) = held.handshakes_by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                held.handshakes_by_source.remove(&self.source);
            }
        }
    }
}

/// One admitted connection; its slots are released when dropped.
#[derive(Debug)]
pub struct ConnectionPermit {
    limiter: Arc<Limiter>,
    peer: Role,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut held = self.limiter.held();
        held.total -= 1;
        if let Some(n) = held.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                held.per_peer.remove(&self.peer);
            }
        }
        let open = held.total as u64;
        drop(held);
        self.limiter.stats.open.store(open, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ClientName;

    fn client(name: &str) -> Role {
        Role::Client(ClientName::new(name).unwrap())
    }

    fn limiter(per_peer: usize, total: usize, handshakes: usize) -> Arc<Limiter> {
        Limiter::new(
            AcceptLimits {
                max_per_peer: per_peer,
                max_connections: total,
                max_handshakes: handshakes,
                max_handshakes_per_source: 2,
                ..AcceptLimits::default()
            },
            Arc::default(),
        )
    }

    #[test]
    fn connections_are_capped_per_peer_and_in_all_and_released_when_dropped() {
        let l = limiter(2, 3, 10);
        let a1 = l.admit(&client("aa01")).unwrap();
        let _a2 = l.admit(&client("aa01")).unwrap();
        assert_eq!(
            l.admit(&client("aa01")).unwrap_err(),
            Refusal::PeerConnections
        );
        let _b1 = l.admit(&client("bb02")).unwrap();
        assert_eq!(
            l.admit(&client("cc03")).unwrap_err(),
            Refusal::TotalConnections
        );
        assert_eq!(l.stats().open(), 3);
        drop(a1);
        assert_eq!(l.stats().open(), 2);
        let _a3 = l.admit(&client("aa01")).unwrap();
        assert_eq!(l.stats().refused(Refusal::PeerConnections), 1);
        assert_eq!(l.stats().refused(Refusal::TotalConnections), 1);
        assert_eq!(l.stats().admitted(), 4);
        assert_eq!(l.stats().peak_open(), 3);
    }

    #[test]
    fn handshakes_are_capped_in_all_and_per_source_and_released() {
        let (a, b, c) = (
            IpAddr::from([10, 0, 0, 1]),
            IpAddr::from([10, 0, 0, 2]),
            IpAddr::from([10, 0, 0, 3]),
        );
        let l = limiter(2, 3, 3);
        let h1 = l.handshake(a).unwrap();
        let _h2 = l.handshake(a).unwrap();
        // Source a holds its share; b still gets one, then the total is reached.
        assert!(l.handshake(a).is_none());
        let _h3 = l.handshake(b).unwrap();
        assert!(l.handshake(c).is_none());
        drop(h1);
        assert!(l.handshake(c).is_some());
        assert_eq!(l.stats().refused(Refusal::Handshakes), 2);
        assert_eq!(l.stats().refused_total(), 2);
        let names: std::collections::HashSet<_> =
            l.stats().snapshot().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), Refusal::ALL.len());
    }
}
