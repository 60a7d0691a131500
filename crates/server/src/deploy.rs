//! Deployments, assignments and where each client's bytes came from. Pure: time is
//! passed in.
//!
//! A deployment names a content item and a target (every client, the clients of one
//! office, or one client). A targeted client that does not hold the content complete is
//! *assigned* it: the server pushes an `Assign` small message when the deployment is made
//! and repeats the list in every heartbeat reply until the client reports the content
//! complete, so a client that was offline starts when it comes back. Relaying (an
//! ancestor office fetching for a child office) uses the same assignments, with
//! deployment id 0.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use branchline_store::ContentId;
use branchline_wire::ClientId;
use serde::{Deserialize, Serialize};

/// Most deployments kept.
pub const MAX_DEPLOYMENTS: usize = 10_000;
/// Most relay assignments kept per client.
pub const MAX_RELAYS_PER_CLIENT: usize = 16;
/// Most (client, content) byte-count rows kept.
pub const MAX_STATS: usize = 1_000_000;

/// Who a deployment is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every client.
    All,
    /// The clients placed in the named office (`office:NAME`).
    Office(String),
    /// One client (`client:ID`).
    Client(ClientId),
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Target, String> {
        match s.split_once(':') {
            None if s == "all" => Ok(Target::All),
            Some(("office", name)) if !name.is_empty() => Ok(Target::Office(name.to_owned())),
            Some(("client", id)) => id
                .parse::<ClientId>()
                .map(Target::Client)
                .map_err(|e| format!("client:{id}: {e}")),
            _ => Err(format!(
                "{s:?}: expected all, office:NAME or client:ID (32 hex digits)"
            )),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::All => write!(f, "all"),
            Target::Office(n) => write!(f, "office:{n}"),
            Target::Client(c) => write!(f, "client:{c}"),
        }
    }
}

/// One deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    /// The deployment's id: 1 and up, never reused (0 marks relay assignments).
    pub id: u64,
    /// The content to fetch.
    pub content: ContentId,
    /// Who fetches it.
    pub target: Target,
    /// `--prestage`: recorded and shown only. Branchline runs no installer, so every
    /// deployment does the same thing: it fills the targeted clients' caches.
    pub prestage: bool,
    /// When the admin made it (Unix ms).
    pub created_ms: u64,
}

/// Verified bytes by source kind, cumulative per (content, client), as the client last
/// reported them in `ReportHave.sources` (`docs/wire.md` §5.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceBytes {
    /// Read from the origin.
    pub origin: u64,
    /// From the server's own content cache.
    pub server: u64,
    /// Over the office's WAN link, from a peer in an ancestor office.
    pub wan: u64,
    /// From peers in the same office.
    pub lan: u64,
}

impl SourceBytes {
    /// Adds `o`'s counts to these.
    pub fn add(&mut self, o: &SourceBytes) {
        self.origin += o.origin;
        self.server += o.server;
        self.wan += o.wan;
        self.lan += o.lan;
    }
}

/// Deployments, relay assignments and byte counts.
#[derive(Debug, Default)]
pub struct Deployments {
    list: Vec<Deployment>,
    relays: HashMap<ClientId, Vec<ContentId>>,
    stats: HashMap<(ContentId, ClientId), SourceBytes>,
}

impl Deployments {
    /// Deployments read back from the database; relays and byte counts start empty (they
    /// are kept in memory only).
    pub fn load(list: Vec<Deployment>) -> Deployments {
        Deployments {
            list,
            ..Default::default()
        }
    }

    /// Every deployment, in the order they were made.
    pub fn list(&self) -> &[Deployment] {
        &self.list
    }

    /// The next deployment id.
    pub fn next_id(&self) -> u64 {
        self.list.iter().map(|d| d.id).max().unwrap_or(0) + 1
    }

    /// Adds a deployment; an identical one (content, target) already there is returned
    /// instead (deploying is idempotent).
    pub fn add(&mut self, d: Deployment) -> Result<(Deployment, bool), String> {
        if let Some(old) = self
            .list
            .iter()
            .find(|o| o.content == d.content && o.target == d.target)
        {
            return Ok((old.clone(), false));
        }
        if self.list.len() >= MAX_DEPLOYMENTS {
            return Err(format!("at most {MAX_DEPLOYMENTS} deployments"));
        }
        self.list.push(d.clone());
        Ok((d, true))
    }

    /// Asks `client` to fetch `content` on behalf of a child office.
    pub fn relay(&mut self, client: ClientId, content: ContentId) {
        let v = self.relays.entry(client).or_default();
        if !v.contains(&content) && v.len() < MAX_RELAYS_PER_CLIENT {
            v.push(content);
        }
    }

    /// What `client` (in office `office`) should fetch: (content, deployment id, 0 for a
    /// relay), minus what `complete` says it holds.
    pub fn assignments(
        &mut self,
        client: ClientId,
        office: Option<&str>,
        complete: impl Fn(&ContentId) -> bool,
        max: usize,
    ) -> Vec<(ContentId, u64)> {
        let mut out = Vec::new();
        if let Some(r) = self.relays.get_mut(&client) {
            r.retain(|c| !complete(c));
            out.extend(r.iter().map(|c| (*c, 0)));
        }
        for d in &self.list {
            if out.len() >= max {
                break;
            }
            if targets(&d.target, client, office)
                && !complete(&d.content)
                && !out.iter().any(|(c, _)| *c == d.content)
            {
                out.push((d.content, d.id));
            }
        }
        out.truncate(max);
        out
    }

    /// Records a client's byte counts for a content item (cumulative, as reported).
    pub fn record(&mut self, content: ContentId, client: ClientId, bytes: SourceBytes) {
        if self.stats.len() >= MAX_STATS && !self.stats.contains_key(&(content, client)) {
            return;
        }
        self.stats.insert((content, client), bytes);
    }

    /// Every client's byte counts for `content`.
    pub fn stats(&self, content: &ContentId) -> Vec<(ClientId, SourceBytes)> {
        self.stats
            .iter()
            .filter(|((c, _), _)| c == content)
            .map(|((_, id), b)| (*id, *b))
            .collect()
    }
}

/// True when `target` covers `client` in `office`.
pub fn targets(target: &Target, client: ClientId, office: Option<&str>) -> bool {
    match target {
        Target::All => true,
        Target::Office(n) => office == Some(n.as_str()),
        Target::Client(c) => *c == client,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: u8) -> ClientId {
        ClientId([n; 16])
    }
    const X: ContentId = ContentId::from_bytes([7; 32]);
    const Y: ContentId = ContentId::from_bytes([8; 32]);

    #[test]
    fn targets_parse_and_print() {
        for t in ["all", "office:west", &format!("client:{}", c(3))] {
            assert_eq!(t.parse::<Target>().unwrap().to_string(), t);
        }
        assert!("office:".parse::<Target>().is_err());
        assert!("client:xyz".parse::<Target>().is_err());
        assert!("everyone".parse::<Target>().is_err());
    }

    #[test]
    fn assignments_follow_targets_until_complete() {
        let mut d = Deployments::default();
        let dep = |id, content, target| Deployment {
            id,
            content,
            target,
            prestage: false,
            created_ms: 0,
        };
        assert!(d.add(dep(1, X, Target::Office("west".into()))).unwrap().1);
        assert!(
            !d.add(dep(2, X, Target::Office("west".into()))).unwrap().1,
            "idempotent"
        );
        d.add(dep(3, Y, Target::Client(c(2)))).unwrap();
        assert_eq!(
            d.assignments(c(1), Some("west"), |_| false, 16),
            vec![(X, 1)]
        );
        assert!(d.assignments(c(1), Some("east"), |_| false, 16).is_empty());
        assert_eq!(
            d.assignments(c(2), Some("west"), |_| false, 16),
            vec![(X, 1), (Y, 3)]
        );
        assert!(
            d.assignments(c(1), Some("west"), |id| *id == X, 16)
                .is_empty()
        );
        d.relay(c(5), Y);
        assert_eq!(d.assignments(c(5), None, |_| false, 16), vec![(Y, 0)]);
        assert!(d.assignments(c(5), None, |_| true, 16).is_empty());
        assert!(
            d.assignments(c(5), None, |_| false, 16).is_empty(),
            "relay done"
        );
    }
}
