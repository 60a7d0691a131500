//! The client registry: who is enrolled and who is online. Pure: time is passed in.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use branchline_wire::ClientId;
use branchline_wire::validate::{Beat, Ports, Registration, Subnet};

/// Everything the server keeps about one client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRecord {
    /// The client's id (from `Register.client_id`).
    pub id: ClientId,
    /// The host name the client reported (at most 253 bytes, no control characters).
    pub hostname: String,
    /// The addresses it is listed at: only the source address the server saw
    /// ([`observed_addresses`]), never a claimed one.
    pub addresses: Vec<IpAddr>,
    /// Where the last registration came from (may differ from `addresses` behind NAT).
    pub source: Option<SocketAddr>,
    /// The subnet the client reported, shown to admins. Nothing the server decides reads
    /// it: offices, and whom the server sends content, go by the source address.
    pub subnet: Subnet,
    /// Size of the client's content cache (bytes), as it reported at registration.
    pub cache_size_bytes: u64,
    /// Free space in its content cache (bytes), from its last heartbeat, never above the
    /// size.
    pub cache_free_bytes: u64,
    /// The Branchline version the client reported (at most 64 bytes).
    pub version: String,
    /// The client's heartbeat interval (100 ms to 1 h); it is offline once
    /// [`Registry::new`]'s `offline_after_missed` intervals pass without one.
    pub heartbeat_interval: Duration,
    /// The ports it reported; `None`: it uses the seed's defaults.
    pub ports: Option<Ports>,
    /// When it first registered (Unix ms); kept across later registrations.
    pub first_seen_ms: u64,
    /// When it was last heard from: registration, heartbeat or an authenticated large
    /// message (Unix ms).
    pub last_seen_ms: u64,
}

impl ClientRecord {
    /// Where the client serves content (Foreground): its first address and its reported
    /// content port, or the seed's default when it reported none.
    pub fn content_addr(&self) -> Option<SocketAddr> {
        let ip = *self.addresses.first()?;
        let port = self
            .ports
            .map(|p| p.content_fg)
            .unwrap_or(branchline_config::ClientPorts::default().content_fg);
        Some(SocketAddr::new(ip, port))
    }
}

impl ClientRecord {
    /// Where the client serves content over Background (34750, to child offices).
    pub fn background_content_addr(&self) -> Option<SocketAddr> {
        let ip = *self.addresses.first()?;
        let port = self
            .ports
            .map(|p| p.content_bg)
            .unwrap_or(branchline_config::ClientPorts::default().content_bg);
        Some(SocketAddr::new(ip, port))
    }
}

/// The addresses a client is listed at: the source address the server saw. The claimed
/// addresses count only where they equal it (they are informational otherwise).
pub fn observed_addresses(claimed: &[IpAddr], source: SocketAddr) -> Vec<IpAddr> {
    let seen = source.ip().to_canonical();
    if !claimed.iter().any(|a| a.to_canonical() == seen) {
        tracing::debug!(%source, ?claimed, "claimed addresses differ from the source address; listing the source");
    }
    vec![seen]
}

/// What a registration did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registered {
    /// The client id was not in the registry.
    New,
    /// The client id was known: its record was replaced, keeping `first_seen_ms`.
    Refreshed,
}

/// The in-memory registry. The database is its durable copy (see `db`).
#[derive(Debug)]
pub struct Registry {
    clients: HashMap<ClientId, ClientRecord>,
    offline_after_missed: u32,
}

impl Registry {
    /// `offline_after_missed`: a client is offline once this many of its heartbeat
    /// intervals have passed since it was last heard from.
    pub fn new(offline_after_missed: u32) -> Self {
        Registry {
            clients: HashMap::new(),
            offline_after_missed: offline_after_missed.max(1),
        }
    }

    /// Loads records read back from the database.
    pub fn load(&mut self, records: impl IntoIterator<Item = ClientRecord>) {
        for r in records {
            self.clients.insert(r.id, r);
        }
    }

    /// Creates or refreshes a client's record.
    ///
    /// The client is listed at the address the server sees (`source`), never at one it
    /// claims: a claimed address that differs from the source is dropped, so no client
    /// can make the server send peers to someone else's address (issue #10).
    pub fn register(
        &mut self,
        reg: Registration,
        source: SocketAddr,
        now_ms: u64,
    ) -> (Registered, &ClientRecord) {
        let first_seen_ms = self.clients.get(&reg.client_id).map(|r| r.first_seen_ms);
        let record = ClientRecord {
            id: reg.client_id,
            hostname: reg.hostname,
            addresses: observed_addresses(&reg.addresses, source),
            source: Some(source),
            subnet: reg.subnet,
            cache_size_bytes: reg.cache_size_bytes,
            cache_free_bytes: reg.cache_free_bytes,
            version: reg.version,
            heartbeat_interval: reg.heartbeat_interval,
            ports: reg.ports,
            first_seen_ms: first_seen_ms.unwrap_or(now_ms),
            last_seen_ms: now_ms,
        };
        let what = if first_seen_ms.is_some() {
            Registered::Refreshed
        } else {
            Registered::New
        };
        let id = record.id;
        self.clients.insert(id, record);
        (what, &self.clients[&id])
    }

    /// Forgets a client's record (its identity was reset or revoked): a heartbeat gets
    /// "unknown" and the client must register again.
    pub fn remove(&mut self, id: &ClientId) -> Option<ClientRecord> {
        self.clients.remove(id)
    }

    /// Records a heartbeat. `None` when the client is unknown (it must register again).
    pub fn heartbeat(&mut self, beat: &Beat, now_ms: u64) -> Option<&ClientRecord> {
        let r = self.clients.get_mut(&beat.client_id)?;
        r.last_seen_ms = r.last_seen_ms.max(now_ms);
        r.cache_free_bytes = beat.cache_free_bytes.min(r.cache_size_bytes);
        Some(r)
    }

    /// Notes that an enrolled client was heard from (an authenticated large message):
    /// it is online, e.g. right after a server restart, before its next heartbeat.
    pub fn seen(&mut self, id: &ClientId, now_ms: u64) {
        if let Some(r) = self.clients.get_mut(id) {
            r.last_seen_ms = r.last_seen_ms.max(now_ms);
        }
    }

    /// The record of `id`, if it is in the registry.
    pub fn get(&self, id: &ClientId) -> Option<&ClientRecord> {
        self.clients.get(id)
    }

    /// True while fewer than `offline_after_missed` heartbeat intervals have passed since
    /// the client was last heard from.
    pub fn is_online(&self, r: &ClientRecord, now_ms: u64) -> bool {
        let limit = r.heartbeat_interval.as_millis() as u64 * u64::from(self.offline_after_missed);
        now_ms.saturating_sub(r.last_seen_ms) <= limit
    }

    /// (clients enrolled, clients online).
    pub fn counts(&self, now_ms: u64) -> (u64, u64) {
        let online = self
            .clients
            .values()
            .filter(|r| self.is_online(r, now_ms))
            .count();
        (self.clients.len() as u64, online as u64)
    }

    /// All records, sorted by hostname then id.
    pub fn snapshot(&self) -> Vec<ClientRecord> {
        let mut v: Vec<_> = self.clients.values().cloned().collect();
        v.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
        v
    }

    /// Number of clients in the registry, online or not.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// True when no client is registered.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: u8, interval_ms: u64) -> Registration {
        Registration {
            client_id: ClientId([id; 16]),
            hostname: format!("pc-{id}"),
            addresses: vec!["10.0.0.1".parse().unwrap()],
            subnet: "10.0.0.0/24".parse().unwrap(),
            cache_size_bytes: 100,
            cache_free_bytes: 100,
            version: "0.1.0".into(),
            heartbeat_interval: Duration::from_millis(interval_ms),
            ports: None,
            cert_request: None,
        }
    }

    fn src() -> SocketAddr {
        "10.0.0.1:34324".parse().unwrap()
    }

    #[test]
    fn register_then_refresh_keeps_first_seen() {
        let mut r = Registry::new(3);
        let (what, rec) = r.register(reg(1, 1000), src(), 10);
        assert_eq!(
            (what, rec.first_seen_ms, rec.last_seen_ms),
            (Registered::New, 10, 10)
        );
        let (what, rec) = r.register(reg(1, 1000), src(), 50);
        assert_eq!(
            (what, rec.first_seen_ms, rec.last_seen_ms),
            (Registered::Refreshed, 10, 50)
        );
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn offline_after_missed_heartbeats() {
        let mut r = Registry::new(3);
        r.register(reg(1, 1000), src(), 0);
        r.register(reg(2, 5000), src(), 0);
        assert_eq!(r.counts(3000), (2, 2));
        assert_eq!(r.counts(3001), (2, 1), "client 1 missed 3 one-second beats");
        let beat = Beat {
            client_id: ClientId([1; 16]),
            cache_free_bytes: 7,
            uptime_s: 1,
        };
        assert!(r.heartbeat(&beat, 4000).is_some());
        assert_eq!(r.counts(4000), (2, 2));
        assert_eq!(r.get(&ClientId([1; 16])).unwrap().cache_free_bytes, 7);
        assert_eq!(r.counts(15_001), (2, 0));
    }

    #[test]
    fn unknown_heartbeat_asks_for_registration() {
        let mut r = Registry::new(3);
        let beat = Beat {
            client_id: ClientId([9; 16]),
            cache_free_bytes: 0,
            uptime_s: 0,
        };
        assert!(r.heartbeat(&beat, 1).is_none());
        assert!(r.is_empty());
    }

    #[test]
    fn clients_are_listed_at_the_address_the_server_sees() {
        let mut r = Registry::new(3);
        let mut claim = reg(1, 1000);
        claim.addresses = vec!["10.9.9.9".parse().unwrap()];
        let (_, rec) = r.register(claim, "10.0.0.5:34324".parse().unwrap(), 0);
        assert_eq!(rec.addresses, vec!["10.0.0.5".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            rec.content_addr().unwrap(),
            "10.0.0.5:34760".parse().unwrap()
        );
        // IPv4-mapped sources are listed as IPv4.
        let (_, rec) = r.register(reg(2, 1000), "[::ffff:10.0.0.1]:34324".parse().unwrap(), 0);
        assert_eq!(rec.addresses, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert!(r.remove(&ClientId([2; 16])).is_some());
        assert!(r.get(&ClientId([2; 16])).is_none());
    }

    #[test]
    fn heartbeat_never_moves_last_seen_back() {
        let mut r = Registry::new(3);
        r.register(reg(1, 1000), src(), 100);
        let beat = Beat {
            client_id: ClientId([1; 16]),
            cache_free_bytes: 500,
            uptime_s: 1,
        };
        let rec = r.heartbeat(&beat, 50).unwrap();
        assert_eq!(rec.last_seen_ms, 100);
        assert_eq!(
            rec.cache_free_bytes, 100,
            "free space capped at the cache size"
        );
    }
}
