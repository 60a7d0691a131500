//! Offices on the server: the office tree, where each client sits, one rendezvous point
//! (RVP) per office and content, and who pulls from where. Pure: time is passed in, and
//! the caller hands in what the registry and the locations know.
//!
//! The rules (`docs/offices.md` has the whole story):
//!
//! * A client sits in the office whose subnet is the longest prefix of the **source
//!   address the server sees** (never what it reports). An unknown subnet gets an
//!   automatic office for its /24 (IPv6: /64) under the Central Office.
//! * Per office and content the server elects one RVP (`branchline_office::elect`): the
//!   only client of the office that fetches from outside it. Everyone else in the office
//!   takes pieces from office peers (Foreground, 34760), the RVP included while it fills.
//! * The RVP of the Central Office (the root) reads the origin, or takes the server's own
//!   copy. The RVP of any other office pulls from the peers of the nearest ancestor
//!   office that has clients online, over Background (34750, LEDBAT++). When that office
//!   holds nothing of the content yet, its own RVP is elected and asked to fetch it
//!   (relaying), so the content flows down the tree one WAN copy per link, each level
//!   starting as soon as the one above has pieces. An office with no ancestor that has
//!   clients online reads the origin through its RVP.
//! * VPN offices share nothing: each of their clients is its own RVP and pulls from the
//!   parent office over Background.

use std::collections::HashMap;
use std::net::IpAddr;

use branchline_office::{Candidate, Election, OfficeIdx, OfficeKind, RvpState, Tree};
use branchline_store::ContentId;
use branchline_wire::ClientId;

/// An RVP that shows no progress for this long (while it is missing pieces and its link
/// is open) is replaced (ms).
pub const RVP_STALL_MS: u64 = 20_000;
/// A client that asked for a content item counts as interested for this long (ms).
pub const INTEREST_TTL_MS: u64 = 10 * 60_000;
/// Most (office, content) RVP entries kept; the oldest are forgotten beyond it.
pub const MAX_RVP_ENTRIES: usize = 100_000;

/// What the caller knows about one client, for planning.
#[derive(Clone, Debug)]
pub struct Member {
    /// The client.
    pub id: ClientId,
    /// Whether its heartbeats arrive in time.
    pub online: bool,
    /// Seconds since its first registration.
    pub uptime_s: u64,
    /// Free space in its content cache (bytes), as last reported.
    pub cache_free_bytes: u64,
    /// Pieces of the content it holds.
    pub pieces: u32,
    /// Whether it reported the content complete and that claim still counts
    /// ([`crate::reports::Reports::complete_counts`]: it has served, or its proving
    /// window is not over).
    pub complete: bool,
}

/// Where the requester's office gets the content from outside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// The Central Office (or an office with no ancestor that has clients online): the
    /// origin, or the server's copy.
    Origin,
    /// The peers of this (ancestor) office, over Background.
    Office(OfficeIdx),
}

/// The answer for one requester and content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The requester's office.
    pub office: OfficeIdx,
    /// Same-office peers to take pieces from (Foreground).
    pub lan_peers: Vec<ClientId>,
    /// The office's RVP for the content, if one is elected.
    pub rvp: Option<ClientId>,
    /// True when the requester is that RVP: it alone pulls from upstream.
    pub am_rvp: bool,
    /// Set for the RVP only.
    pub upstream: Option<Upstream>,
    /// The office's link carries its maximum of other transfers: the RVP waits.
    pub queued: bool,
    /// An ancestor office's client newly asked to fetch the content (relay): the caller
    /// pushes it an assignment.
    pub relay: Option<ClientId>,
}

/// A WAN transfer holding a slot of its office's link.
#[derive(Debug)]
struct LinkUse {
    content: ContentId,
    /// Last time the office's RVP asked for it.
    last_ms: u64,
}

/// A link slot whose RVP stopped asking for this long is freed (ms).
pub const TRANSFER_IDLE_MS: u64 = 30_000;

#[derive(Debug, Default)]
struct ContentOffices {
    rvps: HashMap<String, RvpState>,
    /// Clients that asked for the content, and when.
    interest: HashMap<ClientId, u64>,
}

/// The server's office state.
#[derive(Debug)]
pub struct Offices {
    tree: Tree,
    /// Client -> office name (by the source address the server saw).
    placed: HashMap<ClientId, String>,
    contents: HashMap<ContentId, ContentOffices>,
    /// Per office: the WAN transfers admitted to its link.
    links: HashMap<String, Vec<LinkUse>>,
    /// RVP elections held (for metrics and status).
    pub elections: u64,
    /// Until then (a restart's grace), no new RVP is elected unless a client says it was
    /// the RVP: the RVPs of before the restart keep their roles.
    grace_until_ms: u64,
}

/// The RVP election's view of a member.
fn candidate(m: &Member, vpn: bool) -> Candidate {
    Candidate {
        client: m.id.0,
        online: m.online,
        uptime_s: m.uptime_s,
        cache_free_bytes: m.cache_free_bytes,
        medium: branchline_office::LinkMedium::Unknown,
        vpn,
        weight: 0,
        pieces: m.pieces,
    }
}

impl Offices {
    /// Offices laid out by `tree`, with no client placed and no RVP yet.
    pub fn new(tree: Tree) -> Offices {
        Offices {
            tree,
            placed: HashMap::new(),
            contents: HashMap::new(),
            links: HashMap::new(),
            elections: 0,
            grace_until_ms: 0,
        }
    }

    /// The office tree (declared and automatic offices).
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// After a restart, holds elections back until `until_ms` except for claimants.
    pub fn set_grace(&mut self, until_ms: u64) {
        self.grace_until_ms = until_ms;
    }

    /// True during a restart's grace period.
    pub fn in_grace(&self, now_ms: u64) -> bool {
        now_ms < self.grace_until_ms
    }

    /// Replaces the declared offices (see `Tree::apply`) and places every client again.
    pub fn apply(
        &mut self,
        file: &branchline_office::TopologyFile,
        clients: impl IntoIterator<Item = (ClientId, IpAddr)>,
    ) -> Result<(), branchline_office::TopologyError> {
        self.tree.apply(file)?;
        self.placed.clear();
        for (id, ip) in clients {
            self.place(id, ip);
        }
        // RVPs of offices that no longer exist are forgotten.
        let tree = &self.tree;
        for c in self.contents.values_mut() {
            c.rvps.retain(|name, _| tree.find(name).is_some());
        }
        Ok(())
    }

    /// Places a client by the source address the server saw.
    pub fn place(&mut self, client: ClientId, ip: IpAddr) -> OfficeIdx {
        let idx = self.tree.place(ip);
        self.placed
            .insert(client, self.tree.office(idx).name.clone());
        idx
    }

    /// The office a client was placed in.
    pub fn office_of(&self, client: &ClientId) -> Option<OfficeIdx> {
        self.placed.get(client).and_then(|n| self.tree.find(n))
    }

    /// Clients placed in `office`.
    pub fn members(&self, office: OfficeIdx) -> Vec<ClientId> {
        let name = &self.tree.office(office).name;
        self.placed
            .iter()
            .filter(|(_, n)| *n == name)
            .map(|(c, _)| *c)
            .collect()
    }

    /// Client counts per office name (placed clients).
    pub fn placed(&self) -> &HashMap<ClientId, String> {
        &self.placed
    }

    /// The RVP of `office` for `content`, if one is elected.
    pub fn rvp(&self, office: OfficeIdx, content: &ContentId) -> Option<ClientId> {
        let name = &self.tree.office(office).name;
        self.contents
            .get(content)
            .and_then(|c| c.rvps.get(name))
            .map(|r| ClientId(r.client))
    }

    /// Every elected RVP: (office name, content, client).
    pub fn rvps(&self) -> Vec<(String, ContentId, ClientId)> {
        let mut v: Vec<_> = self
            .contents
            .iter()
            .flat_map(|(id, c)| {
                c.rvps
                    .iter()
                    .map(move |(o, r)| (o.clone(), *id, ClientId(r.client)))
            })
            .collect();
        v.sort();
        v
    }

    /// Notes that `client` holds `pieces` of `content` (progress for its RVP role).
    pub fn progress(
        &mut self,
        client: ClientId,
        content: ContentId,
        pieces: u32,
        complete: bool,
        now_ms: u64,
    ) {
        let Some(office) = self.placed.get(&client).cloned() else {
            return;
        };
        if complete && self.rvp_name(&office, &content) == Some(client) {
            // The office's WAN transfer of this content is over: its link slot frees.
            if let Some(v) = self.links.get_mut(&office) {
                v.retain(|u| u.content != content);
            }
        }
        if let Some(c) = self.contents.get_mut(&content) {
            let mut slot = c.rvps.remove(&office);
            branchline_office::record_progress(&mut slot, client.0, pieces, now_ms);
            if let Some(s) = slot {
                c.rvps.insert(office, s);
            }
        }
    }

    fn rvp_name(&self, office: &str, content: &ContentId) -> Option<ClientId> {
        self.contents
            .get(content)
            .and_then(|c| c.rvps.get(office))
            .map(|r| ClientId(r.client))
    }

    /// Admits `content` to `office`'s WAN link: at most the link's `max_transfers`
    /// contents cross it at once, first come first served (deployments pushed in order
    /// arrive in order). A transfer holds its slot until its RVP reports it complete or
    /// stops asking for [`TRANSFER_IDLE_MS`].
    fn admit(&mut self, office: OfficeIdx, content: ContentId, now_ms: u64) -> bool {
        let spec = self.tree.office(office);
        let max = spec.wan.max_transfers.max(1) as usize;
        let v = self.links.entry(spec.name.clone()).or_default();
        v.retain(|u| now_ms.saturating_sub(u.last_ms) < TRANSFER_IDLE_MS);
        if let Some(u) = v.iter_mut().find(|u| u.content == content) {
            u.last_ms = now_ms;
            return true;
        }
        if v.len() < max {
            v.push(LinkUse {
                content,
                last_ms: now_ms,
            });
            return true;
        }
        false
    }

    /// The contents crossing each office's WAN link now: (office, contents in
    /// admission order).
    pub fn transfers(&self) -> Vec<(String, Vec<ContentId>)> {
        let mut v: Vec<_> = self
            .links
            .iter()
            .filter(|(_, l)| !l.is_empty())
            .map(|(o, l)| (o.clone(), l.iter().map(|u| u.content).collect()))
            .collect();
        v.sort();
        v
    }

    /// Marks `client` as wanting `content`.
    pub fn interested(&mut self, client: ClientId, content: ContentId, now_ms: u64) {
        let c = self.contents.entry(content).or_default();
        c.interest.insert(client, now_ms);
        c.interest
            .retain(|_, t| now_ms.saturating_sub(*t) < INTEREST_TTL_MS);
    }

    /// Clients that asked for `content` recently (downloading it, or relaying it).
    pub fn fetching(&self, content: &ContentId) -> Vec<ClientId> {
        self.contents
            .get(content)
            .map(|c| c.interest.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Plans `requester`'s fetch of `content`. `member` describes any client (online or
    /// not, what it holds); `link_open` tells whether an office's WAN link may carry
    /// transfers now.
    pub fn plan(
        &mut self,
        requester: ClientId,
        content: ContentId,
        now_ms: u64,
        member: impl Fn(&ClientId) -> Option<Member>,
        link_open: impl Fn(OfficeIdx) -> bool,
    ) -> Option<Plan> {
        self.plan_claiming(requester, content, now_ms, false, member, link_open)
    }

    /// [`Offices::plan`] for a requester that may say it was the office's RVP before
    /// (`claims_rvp`): after a server restart it gets its role back.
    pub fn plan_claiming(
        &mut self,
        requester: ClientId,
        content: ContentId,
        now_ms: u64,
        claims_rvp: bool,
        member: impl Fn(&ClientId) -> Option<Member>,
        link_open: impl Fn(OfficeIdx) -> bool,
    ) -> Option<Plan> {
        let office = self.office_of(&requester)?;
        self.interested(requester, content, now_ms);
        let kind = self.tree.office(office).kind;
        let root = self.tree.root();
        // Same-office peers that hold pieces or are fetching the content too (members
        // ask those directly what they hold as it grows).
        let fetching = self.fetching(&content);
        let lan_peers: Vec<ClientId> = if kind == OfficeKind::Vpn {
            Vec::new()
        } else {
            self.members(office)
                .into_iter()
                .filter(|c| *c != requester)
                .filter(|c| {
                    member(c).is_some_and(|m| m.online && (m.pieces > 0 || fetching.contains(c)))
                })
                .collect()
        };
        // The RVP: in a VPN office every client is its own.
        let rvp = if kind == OfficeKind::Vpn {
            Some(requester)
        } else {
            let interest: Vec<ClientId> = self
                .contents
                .get(&content)
                .map(|c| c.interest.keys().copied().collect())
                .unwrap_or_default();
            let candidates: Vec<Candidate> = self
                .members(office)
                .into_iter()
                .filter(|c| interest.contains(c))
                .filter_map(|c| member(&c))
                .map(|m| candidate(&m, false))
                .collect();
            let claimant = claims_rvp.then_some(requester);
            self.elect(
                office,
                content,
                &candidates,
                now_ms,
                !link_open(office),
                claimant,
            )
        };
        let am_rvp = rvp == Some(requester);
        let mut upstream = None;
        let mut relay = None;
        let mut queued = false;
        if am_rvp {
            if office == root {
                upstream = Some(Upstream::Origin);
            } else if !self.admit(office, content, now_ms) {
                queued = true;
            } else {
                // The nearest ancestor office with clients online.
                let path = self.tree.path_to_root(office);
                // VPN offices share nothing, so they are never anyone's upstream.
                let ancestor = path.iter().skip(1).copied().find(|a| {
                    self.tree.office(*a).kind != OfficeKind::Vpn
                        && self
                            .members(*a)
                            .iter()
                            .any(|c| member(c).is_some_and(|m| m.online))
                });
                match ancestor {
                    None => upstream = Some(Upstream::Origin),
                    Some(a) => {
                        upstream = Some(Upstream::Office(a));
                        relay = self.ensure_relay(a, content, now_ms, &member, &link_open);
                    }
                }
            }
        }
        Some(Plan {
            office,
            lan_peers,
            rvp,
            am_rvp,
            upstream,
            queued,
            relay,
        })
    }

    /// Makes sure `office` fetches `content` for a child: unless one of its clients holds
    /// it complete or its RVP is alive, elects one among its online clients and returns it
    /// when it is newly chosen (the caller asks it to fetch).
    fn ensure_relay(
        &mut self,
        office: OfficeIdx,
        content: ContentId,
        now_ms: u64,
        member: &impl Fn(&ClientId) -> Option<Member>,
        link_open: &impl Fn(OfficeIdx) -> bool,
    ) -> Option<ClientId> {
        let members: Vec<Member> = self
            .members(office)
            .iter()
            .filter_map(member)
            .filter(|m| m.online)
            .collect();
        if members.iter().any(|m| m.complete) {
            return None;
        }
        let vpn = self.tree.office(office).kind == OfficeKind::Vpn;
        if vpn {
            return None;
        }
        let before = self.rvp(office, &content);
        let candidates: Vec<Candidate> = members.iter().map(|m| candidate(m, false)).collect();
        let now_rvp = self.elect(
            office,
            content,
            &candidates,
            now_ms,
            !link_open(office),
            None,
        );
        match now_rvp {
            Some(c) if Some(c) != before => {
                self.interested(c, content, now_ms);
                Some(c)
            }
            _ => None,
        }
    }

    fn elect(
        &mut self,
        office: OfficeIdx,
        content: ContentId,
        candidates: &[Candidate],
        now_ms: u64,
        paused: bool,
        claimant: Option<ClientId>,
    ) -> Option<ClientId> {
        let grace = self.in_grace(now_ms);
        let spec = self.tree.office(office);
        let name = spec.name.clone();
        let override_client = spec
            .rvp_override
            .as_deref()
            .and_then(|s| s.parse::<ClientId>().ok())
            .map(|c| c.0);
        if !self.contents.contains_key(&content) && self.rvp_entries() >= MAX_RVP_ENTRIES {
            return None;
        }
        let c = self.contents.entry(content).or_default();
        let mut slot = c.rvps.remove(&name);
        if slot.is_none()
            && let Some(claimant) = claimant
            && let Some(cand) = candidates.iter().find(|c| c.client == claimant.0)
            && branchline_office::score(cand).is_some()
        {
            // The RVP of before a server restart keeps its role.
            tracing::info!(office = %name, content = %content, rvp = %claimant, "rendezvous point kept across a server restart");
            slot = Some(RvpState {
                client: claimant.0,
                elected_ms: now_ms,
                progress_ms: now_ms,
                pieces: cand.pieces,
            });
        }
        if slot.is_none() && grace {
            // Wait for the RVP of before the restart to say so.
            return None;
        }
        let election = branchline_office::elect(
            &mut slot,
            candidates,
            override_client,
            now_ms,
            RVP_STALL_MS,
            paused,
        );
        if let Election::Elected { client, replaced } = &election {
            self.elections += 1;
            tracing::info!(
                office = %name,
                content = %content,
                rvp = %ClientId(*client),
                replaced = ?replaced.map(ClientId),
                "rendezvous point elected"
            );
        }
        let out = slot.as_ref().map(|s| ClientId(s.client));
        if let Some(s) = slot {
            c.rvps.insert(name, s);
        }
        out
    }

    fn rvp_entries(&self) -> usize {
        self.contents.values().map(|c| c.rvps.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use branchline_office::TopologyFile;

    fn c(n: u8) -> ClientId {
        ClientId([n; 16])
    }
    const X: ContentId = ContentId::from_bytes([7; 32]);

    fn tree() -> Tree {
        let file = TopologyFile::parse(
            r#"
[[office]]
name = "central"
subnets = ["10.0.0.0/24"]

[[office]]
name = "north"
parent = "central"
subnets = ["10.1.0.0/24"]

[[office]]
name = "deep"
parent = "north"
subnets = ["10.2.0.0/24"]

[[office]]
name = "vpn"
parent = "central"
type = "vpn"
subnets = ["10.9.0.0/24"]
"#,
        )
        .unwrap();
        Tree::from_file(&file).unwrap()
    }

    fn member(id: ClientId, pieces: u32) -> Member {
        Member {
            id,
            online: true,
            uptime_s: 100,
            cache_free_bytes: 1 << 30,
            pieces,
            complete: false,
        }
    }

    fn setup() -> Offices {
        let mut o = Offices::new(tree());
        o.place(c(1), "10.0.0.5".parse().unwrap());
        o.place(c(2), "10.0.0.6".parse().unwrap());
        o.place(c(11), "10.1.0.5".parse().unwrap());
        o.place(c(12), "10.1.0.6".parse().unwrap());
        o.place(c(21), "10.2.0.5".parse().unwrap());
        o.place(c(91), "10.9.0.5".parse().unwrap());
        o
    }

    #[test]
    fn one_rvp_per_office_and_only_it_looks_outside() {
        let mut o = setup();
        let all = |id: &ClientId| Some(member(*id, 0));
        let p = o.plan(c(11), X, 0, all, |_| true).unwrap();
        assert!(p.am_rvp);
        assert_eq!(
            p.upstream,
            Some(Upstream::Office(o.tree().find("central").unwrap()))
        );
        assert!(
            p.relay.is_some(),
            "central holds nothing: a relay is elected"
        );
        let q = o.plan(c(12), X, 1, all, |_| true).unwrap();
        assert!(!q.am_rvp);
        assert_eq!(q.rvp, Some(c(11)));
        assert_eq!(q.upstream, None, "only the RVP fetches from outside");
        // Central's RVP reads the origin.
        let relay = p.relay.unwrap();
        let r = o.plan(relay, X, 2, all, |_| true).unwrap();
        assert!(r.am_rvp);
        assert_eq!(r.upstream, Some(Upstream::Origin));
    }

    #[test]
    fn grandchild_pulls_from_its_parent_office_while_it_fills() {
        let mut o = setup();
        let all = |id: &ClientId| Some(member(*id, 0));
        let p = o.plan(c(21), X, 0, all, |_| true).unwrap();
        assert_eq!(
            p.upstream,
            Some(Upstream::Office(o.tree().find("north").unwrap()))
        );
        let relay = p.relay.expect("north is asked to fetch");
        assert!(relay == c(11) || relay == c(12));
        // North's relay pulls from central.
        let q = o.plan(relay, X, 1, all, |_| true).unwrap();
        assert!(q.am_rvp);
        assert_eq!(
            q.upstream,
            Some(Upstream::Office(o.tree().find("central").unwrap()))
        );
    }

    #[test]
    fn offline_ancestors_are_skipped() {
        let mut o = setup();
        let north_off = |id: &ClientId| {
            let mut m = member(*id, 0);
            m.online = !(*id == c(11) || *id == c(12));
            Some(m)
        };
        let p = o.plan(c(21), X, 0, north_off, |_| true).unwrap();
        assert_eq!(
            p.upstream,
            Some(Upstream::Office(o.tree().find("central").unwrap()))
        );
    }

    #[test]
    fn stalled_rvp_is_replaced_but_not_while_its_link_is_closed() {
        let mut o = setup();
        let all = |id: &ClientId| Some(member(*id, 0));
        o.plan(c(11), X, 0, all, |_| true).unwrap();
        o.plan(c(12), X, 1, all, |_| true).unwrap();
        assert_eq!(o.rvp(o.office_of(&c(11)).unwrap(), &X), Some(c(11)));
        let late = RVP_STALL_MS + 10;
        let closed = o.plan(c(12), X, late, all, |_| false).unwrap();
        assert_eq!(closed.rvp, Some(c(11)), "closed link: no progress expected");
        // The closed window restarted its clock: a full stall span after it reopens.
        let later = late + RVP_STALL_MS + 10;
        let open = o.plan(c(12), X, later, all, |_| true).unwrap();
        assert_eq!(open.rvp, Some(c(12)), "stalled RVP replaced");
        assert!(open.am_rvp);
    }

    #[test]
    fn vpn_clients_share_nothing_and_pull_from_the_parent() {
        let mut o = setup();
        o.place(c(92), "10.9.0.6".parse().unwrap());
        let all = |id: &ClientId| Some(member(*id, 3));
        let p = o.plan(c(91), X, 0, all, |_| true).unwrap();
        assert!(p.lan_peers.is_empty());
        assert!(p.am_rvp);
        assert_eq!(
            p.upstream,
            Some(Upstream::Office(o.tree().find("central").unwrap()))
        );
    }

    #[test]
    fn lan_peers_are_same_office_holders_only() {
        let mut o = setup();
        let some = |id: &ClientId| Some(member(*id, if *id == c(2) { 0 } else { 5 }));
        let p = o.plan(c(12), X, 0, some, |_| true).unwrap();
        assert_eq!(p.lan_peers, vec![c(11)]);
        let q = o.plan(c(1), X, 0, some, |_| true).unwrap();
        assert!(
            q.lan_peers.is_empty(),
            "c2 holds nothing; c11 is in another office"
        );
    }

    #[test]
    fn one_transfer_per_link_at_a_time_by_default() {
        const Y: ContentId = ContentId::from_bytes([8; 32]);
        let mut o = setup();
        let all = |id: &ClientId| Some(member(*id, 0));
        let x = o.plan(c(11), X, 0, all, |_| true).unwrap();
        assert!(!x.queued && x.upstream.is_some());
        let y = o.plan(c(11), Y, 1, all, |_| true).unwrap();
        assert!(
            y.am_rvp && y.queued && y.upstream.is_none(),
            "north's link is busy"
        );
        // Another office's link is free.
        let z = o.plan(c(21), Y, 2, all, |_| true).unwrap();
        assert!(!z.queued);
        // X completes: Y may go.
        o.progress(c(11), X, 4, true, 3);
        let y = o.plan(c(11), Y, 4, all, |_| true).unwrap();
        assert!(!y.queued && y.upstream.is_some());
        assert_eq!(
            o.transfers().iter().find(|(n, _)| n == "north").unwrap().1,
            vec![Y]
        );
        // A transfer whose RVP stops asking frees the link.
        let x = o
            .plan(c(11), X, 5 + TRANSFER_IDLE_MS, all, |_| true)
            .unwrap();
        assert!(!x.queued);
    }

    #[test]
    fn after_a_restart_the_rvp_of_before_keeps_its_role() {
        let mut o = setup();
        o.set_grace(1000);
        let all = |id: &ClientId| Some(member(*id, 0));
        let p = o.plan(c(12), X, 10, all, |_| true).unwrap();
        assert_eq!(p.rvp, None, "no new election during the grace period");
        let q = o.plan_claiming(c(11), X, 20, true, all, |_| true).unwrap();
        assert!(q.am_rvp, "the claimant gets its role back");
        let r = o.plan(c(12), X, 30, all, |_| true).unwrap();
        assert_eq!(r.rvp, Some(c(11)));
        // After the grace period, offices with no claimant elect as usual.
        let s = o.plan(c(1), X, 1000, all, |_| true).unwrap();
        assert!(s.am_rvp);
    }

    #[test]
    fn unknown_subnet_gets_an_auto_office_under_central() {
        let mut o = setup();
        let idx = o.place(c(50), "192.0.2.7".parse().unwrap());
        assert!(o.tree().office(idx).auto);
        assert_eq!(o.tree().parent(idx), Some(o.tree().root()));
    }
}
