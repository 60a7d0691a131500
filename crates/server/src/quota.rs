//! Quotas on registrations (pure: no sockets, no clocks; time is passed in).
//!
//! Every enrolled device holds the deployment key, so a hostile one can register as many
//! new client ids as it likes, each a row in memory and in the database. The server
//! therefore admits:
//!
//! - at most [`QuotaConfig::new_clients_per_source_per_minute`] *new* client ids per
//!   source address per minute (re-registering a known id is not limited: every client
//!   does it after a server restart, several behind one NAT address);
//! - at most [`QuotaConfig::max_clients`] clients in all;
//! - nothing while the database writer is backed up ([`crate::db::Writer::is_busy`]).
//!
//! A refused registration is answered with `UNAVAILABLE` and a reason saying to retry
//! (the client retries with backoff), and counted: `registration_source_quota`,
//! `registration_client_cap` and `registration_busy` in health's `drops`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Default new client ids per source address per minute (600).
pub const DEFAULT_NEW_CLIENTS_PER_SOURCE_PER_MINUTE: u32 = 600;
/// Default clients in all (500,000).
pub const DEFAULT_MAX_CLIENTS: u64 = 500_000;
/// The quota window.
const WINDOW_MS: u64 = 60_000;
/// Source addresses remembered at most; beyond this, expired ones are forgotten first,
/// and a new source is refused until some expire.
const MAX_SOURCES: usize = 65_536;

/// The limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaConfig {
    /// New client ids one source address may register per minute; 0 = no limit.
    pub new_clients_per_source_per_minute: u32,
    /// Clients in all; 0 = no limit.
    pub max_clients: u64,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            new_clients_per_source_per_minute: DEFAULT_NEW_CLIENTS_PER_SOURCE_PER_MINUTE,
            max_clients: DEFAULT_MAX_CLIENTS,
        }
    }
}

/// Why a registration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The source address registered its whole quota of new ids this minute.
    SourceQuota,
    /// The server holds its maximum of clients.
    ClientCap,
    /// The database writer is backed up.
    Busy,
}

impl Refused {
    /// Name of the counter (health's `drops`).
    pub fn name(self) -> &'static str {
        match self {
            Refused::SourceQuota => "registration_source_quota",
            Refused::ClientCap => "registration_client_cap",
            Refused::Busy => "registration_busy",
        }
    }

    /// The reason sent to the client.
    pub fn reason(self, config: &QuotaConfig) -> String {
        match self {
            Refused::SourceQuota => format!(
                "too many new clients registered from this address ({} a minute at most); retry later",
                config.new_clients_per_source_per_minute
            ),
            Refused::ClientCap => format!(
                "the server holds its maximum of {} clients; an admin must raise server.max_clients",
                config.max_clients
            ),
            Refused::Busy => crate::db::BUSY.into(),
        }
    }
}

/// Registration quota state and counters.
#[derive(Debug, Default)]
pub struct RegistrationQuota {
    config: QuotaConfig,
    /// Per source: (window start, new ids in it).
    sources: HashMap<IpAddr, (u64, u32)>,
    refused: [AtomicU64; 3],
}

impl RegistrationQuota {
    /// A quota with `config`.
    pub fn new(config: QuotaConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// The limits.
    pub fn config(&self) -> &QuotaConfig {
        &self.config
    }

    /// Decides one registration from `source` at `now_ms`. `known` says whether its id
    /// is already registered, `clients` how many are, `busy` whether the database writer
    /// is backed up. A refusal is counted.
    pub fn admit(
        &mut self,
        source: IpAddr,
        known: bool,
        clients: u64,
        busy: bool,
        now_ms: u64,
    ) -> Result<(), Refused> {
        let r = self.decide(source, known, clients, busy, now_ms);
        if let Err(reason) = r {
            self.refused[reason as usize].fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn decide(
        &mut self,
        source: IpAddr,
        known: bool,
        clients: u64,
        busy: bool,
        now_ms: u64,
    ) -> Result<(), Refused> {
        if busy {
            return Err(Refused::Busy);
        }
        if known {
            return Ok(());
        }
        if self.config.max_clients > 0 && clients >= self.config.max_clients {
            return Err(Refused::ClientCap);
        }
        let per_source = self.config.new_clients_per_source_per_minute;
        if per_source == 0 {
            return Ok(());
        }
        if !self.sources.contains_key(&source) && self.sources.len() >= MAX_SOURCES {
            self.sources
                .retain(|_, (start, _)| now_ms.saturating_sub(*start) < WINDOW_MS);
            if self.sources.len() >= MAX_SOURCES {
                return Err(Refused::SourceQuota);
            }
        }
        let (start, count) = self.sources.entry(source).or_insert((now_ms, 0));
        if now_ms.saturating_sub(*start) >= WINDOW_MS {
            *start = now_ms;
            *count = 0;
        }
        if *count >= per_source {
            return Err(Refused::SourceQuota);
        }
        *count += 1;
        Ok(())
    }

    /// Refusals so far, by counter name.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        [Refused::SourceQuota, Refused::ClientCap, Refused::Busy]
            .into_iter()
            .map(|r| (r.name(), self.refused[r as usize].load(Ordering::Relaxed)))
            .collect()
    }
}

impl crate::handler::ServerState {
    /// Applies the registration quota to a registration of `client` from `from`: `Err`
    /// holds the refusal to send (`UNAVAILABLE`, saying to retry), already counted.
    pub fn admit_registration(
        &self,
        client: &branchline_wire::ClientId,
        from: std::net::SocketAddr,
        now_ms: u64,
    ) -> Result<(), Box<branchline_wire::Body>> {
        let (known, clients) = {
            let registry = crate::lock(&self.registry);
            (registry.get(client).is_some(), registry.len() as u64)
        };
        let busy = self.writer.is_busy();
        let mut quota = crate::lock(&self.quota);
        quota
            .admit(from.ip(), known, clients, busy, now_ms)
            .map_err(|refused| {
                tracing::debug!(%client, %from, reason = refused.name(), "registration refused");
                Box::new(crate::handler::error(
                    branchline_wire::msg::ErrorCode::Unavailable,
                    refused.reason(quota.config()),
                    now_ms,
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn new_ids_are_limited_per_source_and_window_known_ids_are_not() {
        let mut q = RegistrationQuota::new(QuotaConfig {
            new_clients_per_source_per_minute: 3,
            max_clients: 0,
        });
        let a = ip("10.0.0.1");
        for _ in 0..3 {
            q.admit(a, false, 0, false, 1_000).unwrap();
        }
        assert_eq!(
            q.admit(a, false, 0, false, 2_000),
            Err(Refused::SourceQuota)
        );
        // Known ids re-register freely; another source has its own quota.
        q.admit(a, true, 0, false, 2_000).unwrap();
        q.admit(ip("10.0.0.2"), false, 0, false, 2_000).unwrap();
        // A minute later the source may register again.
        q.admit(a, false, 0, false, 61_000).unwrap();
        let counts: HashMap<_, _> = q.snapshot().into_iter().collect();
        assert_eq!(counts["registration_source_quota"], 1);
        assert_eq!(counts["registration_client_cap"], 0);
    }

    #[test]
    fn the_total_and_a_busy_writer_refuse_with_counts() {
        let mut q = RegistrationQuota::new(QuotaConfig {
            new_clients_per_source_per_minute: 0,
            max_clients: 10,
        });
        let a = ip("fd00::1");
        q.admit(a, false, 9, false, 0).unwrap();
        assert_eq!(q.admit(a, false, 10, false, 0), Err(Refused::ClientCap));
        // A known client still gets in at the cap; nobody while the writer is busy.
        q.admit(a, true, 10, false, 0).unwrap();
        assert_eq!(q.admit(a, true, 1, true, 0), Err(Refused::Busy));
        let counts: HashMap<_, _> = q.snapshot().into_iter().collect();
        assert_eq!(counts["registration_client_cap"], 1);
        assert_eq!(counts["registration_busy"], 1);
        assert!(Refused::Busy.reason(q.config()).contains("retry"));
        assert!(
            Refused::ClientCap
                .reason(q.config())
                .contains("server.max_clients")
        );
    }

    #[test]
    fn remembered_sources_are_bounded() {
        let mut q = RegistrationQuota::new(QuotaConfig {
            new_clients_per_source_per_minute: 1,
            max_clients: 0,
        });
        for n in 0..MAX_SOURCES as u32 {
            q.admit(IpAddr::from(n.to_be_bytes()), false, 0, false, 0)
                .unwrap();
        }
        let extra = ip("255.255.255.255");
        assert_eq!(
            q.admit(extra, false, 0, false, 1),
            Err(Refused::SourceQuota)
        );
        // Once the window has passed, old sources are forgotten to make room.
        q.admit(extra, false, 0, false, WINDOW_MS + 1).unwrap();
        assert!(q.sources.len() <= MAX_SOURCES);
    }
}
