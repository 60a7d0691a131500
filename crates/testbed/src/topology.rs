//! The topology file: offices, their subnets and hosts, and the WAN link of
//! each branch office.
//!
//! The model is a tree of offices; without `parent` it is a hub and
//! spokes. One router namespace is the hub. Every office is one broadcast
//! domain (a Linux bridge) joined to a router: offices without a `wan` table
//! join it over a plain, unshaped LAN link (typically the Central Office);
//! offices with a `wan` table join it over a WAN link with a rate, a queue,
//! optional random loss and optional propagation delay. Traffic between two
//! branch offices therefore crosses both of their WAN links, as it does
//! through a head office.
//!
//! An office with `parent = "NAME"` joins a router of its parent office
//! instead of the hub (a regional office's branches, say). Traffic then
//! crosses exactly the links between two offices in the tree
//! ([`Topology::links_between`]): between a child and its parent only the
//! child's link, between siblings both of theirs, between a grandchild and
//! the Central Office the grandchild's and its parent's. The parent's
//! router takes the last address of the parent's subnet.
//!
//! ```toml
//! [[office]]
//! name = "central"
//! subnet = "198.18.1.0/24"
//! hosts = ["server", "origin", "c1"]
//!
//! [[office]]
//! name = "branch"
//! subnet = "198.18.2.0/24"
//! hosts = ["c2", "c3"]
//! wan = { rate_mbit = 20, queue_ms = 100, delay_ms = 20, loss_percent = 0.0 }
//!
//! [[office]]
//! name = "shop"
//! parent = "branch"
//! subnet = "198.18.3.0/24"
//! hosts = ["c4"]
//! wan = { rate_mbit = 4, delay_ms = 5 }
//! ```
//!
//! Addresses: the router takes the first address of each subnet (`.1` in a
//! /24); hosts take the following ones in the order they are listed. Every
//! subnet must lie inside the benchmark range 198.18.0.0/15 (RFC 2544), so
//! nothing the test bed does can reach a real network.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The only address range the test bed hands out: 198.18.0.0/15.
pub const BENCHMARK_RANGE: Subnet = Subnet {
    addr: Ipv4Addr::new(198, 18, 0, 0),
    prefix: 15,
};

/// Most offices a topology may have (interface names carry the index).
pub const MAX_OFFICES: usize = 64;
/// Most hosts a topology may have in total.
pub const MAX_HOSTS: usize = 512;
/// Longest host or office name, in characters.
pub const MAX_NAME_LEN: usize = 24;

/// A whole test-bed topology, as read from a TOML file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// The offices, in order; the order fixes interface indices.
    #[serde(rename = "office")]
    pub offices: Vec<Office>,
}

/// One office: one subnet, one broadcast domain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Office {
    /// Office name (letters, digits, `-`, `_`; at most [`MAX_NAME_LEN`]).
    pub name: String,
    /// The office subnet, inside 198.18.0.0/15, prefix length 16 to 30.
    pub subnet: Subnet,
    /// Host names; each becomes a network namespace with one address in
    /// the subnet. Names are unique across the whole topology.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The office's WAN link to its router (the hub's, or its parent
    /// office's); `None` means a plain LAN link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wan: Option<WanLink>,
    /// The office this one sits behind (a regional office, say): its link
    /// (`wan`, or a LAN link without it) ends at a router inside the parent
    /// office instead of at the hub. `None`: a child of the hub, as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// Properties of a WAN link, applied on the router side in both directions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WanLink {
    /// Rate in megabits per second (10^6 bit/s) of Ethernet frames, each
    /// direction (inbound only when `rate_out_mbit` is set). `None` leaves
    /// the link unshaped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_mbit: Option<f64>,
    /// Rate of the outbound direction (office to router) in Mbit/s, for an
    /// asymmetric link such as 100 down / 20 up. Default: `rate_mbit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_out_mbit: Option<f64>,
    /// Queue size in milliseconds of transmission at the direction's rate;
    /// each bottleneck queue holds `rate * queue_ms` bytes. Default 100 ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_ms: Option<f64>,
    /// Queue size in bytes; overrides `queue_ms` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_bytes: Option<u64>,
    /// One-way propagation delay in milliseconds, each direction, added by
    /// the userspace relay. 0 (the default) means no relay.
    #[serde(default)]
    pub delay_ms: f64,
    /// Random loss in percent (0 to 100) of frames, each direction.
    #[serde(default)]
    pub loss_percent: f64,
}

/// Default bottleneck queue, in milliseconds at the link rate.
pub const DEFAULT_QUEUE_MS: f64 = 100.0;

impl WanLink {
    /// Inbound rate in bits per second, if shaped.
    pub fn rate_bps(&self) -> Option<u64> {
        self.rate_bps_dir(Direction::Inbound)
    }

    /// Rate in bits per second of one direction, if shaped.
    pub fn rate_bps_dir(&self, dir: Direction) -> Option<u64> {
        let mbit = match dir {
            Direction::Inbound => self.rate_mbit,
            Direction::Outbound => self.rate_out_mbit.or(self.rate_mbit),
        };
        mbit.map(|m| (m * 1_000_000.0).round() as u64)
    }

    /// Inbound bottleneck queue size in bytes, if shaped.
    pub fn queue_limit_bytes(&self) -> Option<u64> {
        self.queue_limit_bytes_dir(Direction::Inbound)
    }

    /// Bottleneck queue size in bytes of one direction, if shaped (never
    /// below two frames).
    pub fn queue_limit_bytes_dir(&self, dir: Direction) -> Option<u64> {
        let rate = self.rate_bps_dir(dir)?;
        let bytes = match self.queue_bytes {
            Some(b) => b,
            None => {
                let ms = self.queue_ms.unwrap_or(DEFAULT_QUEUE_MS);
                ((rate as f64 / 8.0) * ms / 1000.0).round() as u64
            }
        };
        Some(bytes.max(2 * 1514))
    }

    /// Token-bucket burst in bytes for a direction's rate: 2 ms worth, at
    /// least two full frames, so that the shaper is smooth at low rates and
    /// does not starve at high ones.
    pub fn burst_bytes_dir(&self, dir: Direction) -> Option<u64> {
        let rate = self.rate_bps_dir(dir)?;
        Some(((rate / 8) / 500).max(2 * 1514))
    }

    /// Propagation delay, one way.
    pub fn delay(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.delay_ms.max(0.0) / 1000.0)
    }

    fn validate(&self, office: &str) -> Result<()> {
        let bad = |what: String| Err(Error::Topology(format!("office {office:?}: wan: {what}")));
        for (name, rate) in [
            ("rate_mbit", self.rate_mbit),
            ("rate_out_mbit", self.rate_out_mbit),
        ] {
            if let Some(r) = rate
                && !(r.is_finite() && (0.01..=10_000.0).contains(&r))
            {
                return bad(format!("{name} = {r} is out of range; use 0.01 to 10000"));
            }
        }
        if let Some(q) = self.queue_ms
            && !(q.is_finite() && (0.0..=10_000.0).contains(&q))
        {
            return bad(format!("queue_ms = {q} is out of range; use 0 to 10000"));
        }
        if let Some(q) = self.queue_bytes
            && q > 1 << 30
        {
            return bad(format!("queue_bytes = {q} is above 1 GiB"));
        }
        if (self.queue_ms.is_some() || self.queue_bytes.is_some())
            && self.rate_mbit.is_none()
            && self.rate_out_mbit.is_none()
        {
            return bad("a queue size needs rate_mbit (the queue is the shaper's)".into());
        }
        if !(self.delay_ms.is_finite() && (0.0..=10_000.0).contains(&self.delay_ms)) {
            return bad(format!(
                "delay_ms = {} is out of range; use 0 to 10000",
                self.delay_ms
            ));
        }
        if !(self.loss_percent.is_finite() && (0.0..=100.0).contains(&self.loss_percent)) {
            return bad(format!(
                "loss_percent = {} is out of range; use 0 to 100",
                self.loss_percent
            ));
        }
        Ok(())
    }
}

/// An IPv4 subnet such as `198.18.1.0/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet {
    /// Network address (host bits zero).
    pub addr: Ipv4Addr,
    /// Prefix length in bits.
    pub prefix: u8,
}

impl Subnet {
    /// The same subnet as an `ipnet::Ipv4Net`, which does the arithmetic (a prefix over
    /// 32, which parsing never yields, counts as 32).
    pub fn net(&self) -> Ipv4Net {
        Ipv4Net::new_assert(self.addr, self.prefix.min(32))
    }

    /// Netmask as a number.
    pub fn mask(&self) -> u32 {
        u32::from(self.net().netmask())
    }

    /// Whether `ip` lies in this subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.net().contains(&ip)
    }

    /// Whether the two subnets share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let (a, b) = (self.net(), other.net());
        a.contains(&b) || b.contains(&a)
    }

    /// The `n`th address of the subnet (0 is the network address).
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        // Exclude the network (0) and broadcast (size-1) addresses.
        if n == 0 || u64::from(n) > self.host_capacity() {
            return None;
        }
        Some(Ipv4Addr::from(u32::from(self.addr) + n))
    }

    /// The directed broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        self.net().broadcast()
    }

    /// How many host addresses the subnet has.
    pub fn host_capacity(&self) -> u64 {
        (1u64 << (32 - self.prefix.min(32))).saturating_sub(2)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let net: Ipv4Net = s.trim().parse().map_err(|_| {
            Error::Topology(format!(
                "{s:?} is not a subnet; write it like 198.18.1.0/24"
            ))
        })?;
        if net.trunc() != net {
            return Err(Error::Topology(format!(
                "{s:?} has host bits set; the network address is {}",
                net.network()
            )));
        }
        Ok(Subnet {
            addr: net.addr(),
            prefix: net.prefix_len(),
        })
    }
}

impl Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which way frames cross a WAN link, seen from the office (a link's rate and queue
/// may differ per direction).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// From the router into the office (downloads into a branch).
    Inbound,
    /// From the office to the router (uploads out of a branch).
    Outbound,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        })
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_NAME_LEN
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && n.as_bytes()[0].is_ascii_alphanumeric()
}

impl Topology {
    /// Parses and validates a topology from TOML text.
    pub fn from_toml(text: &str) -> Result<Topology> {
        let t: Topology = toml::from_str(text).map_err(|e| Error::Topology(e.to_string()))?;
        t.validate()?;
        Ok(t)
    }

    /// Reads, parses and validates a topology file.
    pub fn from_file(path: &std::path::Path) -> Result<Topology> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            what: format!("reading topology file {}", path.display()),
            source: e,
        })?;
        Self::from_toml(&text)
    }

    /// Two offices joined by one WAN link: `central` (198.18.1.0/24, LAN to
    /// the router) with `central_hosts`, and `branch` (198.18.2.0/24) with
    /// `branch_hosts` behind `wan`.
    pub fn two_offices(central_hosts: &[&str], branch_hosts: &[&str], wan: WanLink) -> Topology {
        Topology {
            offices: vec![
                Office {
                    name: "central".into(),
                    subnet: "198.18.1.0/24".parse().expect("valid literal"),
                    hosts: central_hosts.iter().map(|s| s.to_string()).collect(),
                    wan: None,
                    parent: None,
                },
                Office {
                    name: "branch".into(),
                    subnet: "198.18.2.0/24".parse().expect("valid literal"),
                    hosts: branch_hosts.iter().map(|s| s.to_string()).collect(),
                    wan: Some(wan),
                    parent: None,
                },
            ],
        }
    }

    /// Checks names, address ranges, sizes and link parameters.
    pub fn validate(&self) -> Result<()> {
        if self.offices.is_empty() {
            return Err(Error::Topology(
                "no [[office]] tables; add at least one".into(),
            ));
        }
        if self.offices.len() > MAX_OFFICES {
            return Err(Error::Topology(format!(
                "{} offices; at most {MAX_OFFICES} are supported",
                self.offices.len()
            )));
        }
        let mut office_names = BTreeSet::new();
        let mut host_names = BTreeSet::new();
        for (i, o) in self.offices.iter().enumerate() {
            if !valid_name(&o.name) {
                return Err(Error::Topology(format!(
                    "office name {:?} is invalid; use 1 to {MAX_NAME_LEN} letters, digits, '-' or '_'",
                    o.name
                )));
            }
            if !office_names.insert(o.name.as_str()) {
                return Err(Error::Topology(format!(
                    "office {:?} appears twice",
                    o.name
                )));
            }
            if !BENCHMARK_RANGE.contains(o.subnet.addr) || o.subnet.prefix < 16 {
                return Err(Error::Topology(format!(
                    "office {:?}: subnet {} is outside 198.18.0.0/15 or larger than a /16; \
                     the test bed only uses the benchmark range",
                    o.name, o.subnet
                )));
            }
            if o.subnet.prefix > 30 {
                return Err(Error::Topology(format!(
                    "office {:?}: subnet {} is too small; use a /30 or larger",
                    o.name, o.subnet
                )));
            }
            for other in &self.offices[..i] {
                if other.subnet.overlaps(&o.subnet) {
                    return Err(Error::Topology(format!(
                        "office {:?}: subnet {} overlaps office {:?} ({})",
                        o.name, o.subnet, other.name, other.subnet
                    )));
                }
            }
            // The router takes one address; an office with child offices
            // also has a router of its own, which takes another.
            let routers = if self.has_children(i) { 2 } else { 1 };
            if o.hosts.len() as u64 + routers > o.subnet.host_capacity() {
                return Err(Error::Topology(format!(
                    "office {:?}: {} hosts do not fit in {} ({})",
                    o.name,
                    o.hosts.len(),
                    o.subnet,
                    if routers == 2 {
                        "the router takes one address, the router to its child offices another"
                    } else {
                        "the router takes one address"
                    }
                )));
            }
            for h in &o.hosts {
                if !valid_name(h) {
                    return Err(Error::Topology(format!(
                        "host name {h:?} is invalid; use 1 to {MAX_NAME_LEN} letters, digits, '-' or '_'"
                    )));
                }
                if !host_names.insert(h.as_str()) {
                    return Err(Error::Topology(format!("host {h:?} appears twice")));
                }
            }
            if let Some(w) = &o.wan {
                w.validate(&o.name)?;
            }
        }
        if host_names.len() > MAX_HOSTS {
            return Err(Error::Topology(format!(
                "{} hosts; at most {MAX_HOSTS} are supported",
                host_names.len()
            )));
        }
        self.validate_parents(&office_names)
    }

    /// Every `parent` names another office, and following parents always
    /// ends at an office without one (a child of the hub).
    fn validate_parents(&self, office_names: &BTreeSet<&str>) -> Result<()> {
        for o in &self.offices {
            let Some(p) = &o.parent else { continue };
            if *p == o.name {
                return Err(Error::Topology(format!(
                    "office {:?}: parent = {p:?} is the office itself; \
                     name another office, or leave parent out to sit behind the hub",
                    o.name
                )));
            }
            if !office_names.contains(p.as_str()) {
                return Err(Error::Topology(format!(
                    "office {:?}: parent = {p:?} is not an office of this topology \
                     (offices: {})",
                    o.name,
                    office_names.iter().copied().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        for (i, o) in self.offices.iter().enumerate() {
            let mut chain = vec![i];
            let mut cur = i;
            while let Some(p) = self.parent_of(cur) {
                if p == i {
                    let names: Vec<&str> = chain
                        .iter()
                        .chain([&i])
                        .map(|&k| self.offices[k].name.as_str())
                        .collect();
                    return Err(Error::Topology(format!(
                        "office {:?}: parent chain {} is a cycle; \
                         one of these offices must have no parent (sit behind the hub)",
                        o.name,
                        names.join(" -> ")
                    )));
                }
                if chain.contains(&p) {
                    // A cycle further up, reported for one of its members.
                    break;
                }
                chain.push(p);
                cur = p;
            }
        }
        Ok(())
    }

    /// Index of the office named `name`.
    pub fn office_index(&self, name: &str) -> Option<usize> {
        self.offices.iter().position(|o| o.name == name)
    }

    /// Index of office `oi`'s parent office; `None` for a child of the hub
    /// (or an unknown parent, which validation refuses).
    pub fn parent_of(&self, oi: usize) -> Option<usize> {
        self.office_index(self.offices.get(oi)?.parent.as_deref()?)
    }

    /// Indices of the offices whose parent is office `oi`, in topology order.
    pub fn children_of(&self, oi: usize) -> Vec<usize> {
        (0..self.offices.len())
            .filter(|&c| c != oi && self.parent_of(c) == Some(oi))
            .collect()
    }

    /// Whether any office sits behind office `oi` (then `oi` has a router
    /// of its own).
    pub fn has_children(&self, oi: usize) -> bool {
        !self.children_of(oi).is_empty()
    }

    /// Indices of every office behind office `oi` (children, their
    /// children, ...), in topology order; `oi` itself is not included.
    pub fn descendants_of(&self, oi: usize) -> Vec<usize> {
        (0..self.offices.len())
            .filter(|&d| d != oi && self.chain_to_hub(d).contains(&oi))
            .collect()
    }

    /// Office `oi`, its parent, the parent's parent, ... up to a child of
    /// the hub.
    pub fn chain_to_hub(&self, oi: usize) -> Vec<usize> {
        let mut chain = vec![oi];
        let mut cur = oi;
        while let Some(p) = self.parent_of(cur) {
            // Bounded even for an unvalidated topology with a cycle.
            if chain.contains(&p) {
                break;
            }
            chain.push(p);
            cur = p;
        }
        chain
    }

    /// The offices whose links (WAN or LAN) traffic between offices `a` and
    /// `b` crosses, from `a` up towards the hub and down to `b`: the links
    /// of every office on one office's chain to the hub and not on the
    /// other's. Between a child and its parent that is the child's link
    /// only; between siblings, both of theirs; empty when `a == b`.
    pub fn links_between(&self, a: usize, b: usize) -> Vec<usize> {
        let (ca, cb) = (self.chain_to_hub(a), self.chain_to_hub(b));
        let up = ca.iter().copied().filter(|x| !cb.contains(x));
        let down: Vec<usize> = cb.iter().copied().filter(|x| !ca.contains(x)).collect();
        up.chain(down.into_iter().rev()).collect()
    }

    /// Address, in office `oi`'s subnet, of the office's own router (the
    /// one its child offices' links end at): the subnet's last host
    /// address. `None` when no office sits behind `oi`.
    pub fn office_router_addr(&self, oi: usize) -> Option<Ipv4Addr> {
        if !self.has_children(oi) {
            return None;
        }
        let s = self.offices.get(oi)?.subnet;
        s.nth(u32::try_from(s.host_capacity()).ok()?)
    }

    /// The office a host belongs to, with the host's index inside it.
    pub fn find_host(&self, host: &str) -> Option<(usize, usize)> {
        self.offices
            .iter()
            .enumerate()
            .find_map(|(oi, o)| o.hosts.iter().position(|h| h == host).map(|hi| (oi, hi)))
    }

    /// Address of a host: the subnet's `index + 2`th address.
    pub fn host_addr(&self, host: &str) -> Option<Ipv4Addr> {
        let (oi, hi) = self.find_host(host)?;
        self.offices[oi].subnet.nth(hi as u32 + 2)
    }

    /// The router's address in office `oi`'s subnet.
    pub fn router_addr(&self, oi: usize) -> Option<Ipv4Addr> {
        self.offices.get(oi)?.subnet.nth(1)
    }

    /// All host names in topology order.
    pub fn host_names(&self) -> impl Iterator<Item = &str> {
        self.offices
            .iter()
            .flat_map(|o| o.hosts.iter().map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[[office]]
name = "central"
subnet = "198.18.1.0/24"
hosts = ["server", "origin", "c1"]

[[office]]
name = "branch"
subnet = "198.18.2.0/24"
hosts = ["c2", "c3"]
wan = { rate_mbit = 20, queue_ms = 100, delay_ms = 20, loss_percent = 0.5 }
"#;

    #[test]
    fn parses_example_and_assigns_addresses() {
        let t = Topology::from_toml(EXAMPLE).unwrap();
        assert_eq!(t.offices.len(), 2);
        assert_eq!(t.host_addr("server"), Some(Ipv4Addr::new(198, 18, 1, 2)));
        assert_eq!(t.host_addr("c1"), Some(Ipv4Addr::new(198, 18, 1, 4)));
        assert_eq!(t.host_addr("c3"), Some(Ipv4Addr::new(198, 18, 2, 3)));
        assert_eq!(t.router_addr(1), Some(Ipv4Addr::new(198, 18, 2, 1)));
        let w = t.offices[1].wan.as_ref().unwrap();
        assert_eq!(w.rate_bps(), Some(20_000_000));
        assert_eq!(w.queue_limit_bytes(), Some(250_000));
        assert_eq!(w.rate_bps_dir(Direction::Outbound), Some(20_000_000));
        let asym = Topology::from_toml(
            &EXAMPLE.replace("rate_mbit = 20,", "rate_mbit = 20, rate_out_mbit = 4,"),
        )
        .unwrap();
        let a = asym.offices[1].wan.as_ref().unwrap();
        assert_eq!(a.rate_bps_dir(Direction::Inbound), Some(20_000_000));
        assert_eq!(a.rate_bps_dir(Direction::Outbound), Some(4_000_000));
        assert_eq!(a.queue_limit_bytes_dir(Direction::Outbound), Some(50_000));
        assert_eq!(a.burst_bytes_dir(Direction::Outbound), Some(3028));
        assert!(
            Topology::from_toml(
                &EXAMPLE.replace("rate_mbit = 20,", "rate_mbit = 20, rate_out_mbit = 0,")
            )
            .is_err()
        );
        assert_eq!(w.delay(), std::time::Duration::from_millis(20));
        assert_eq!(t.host_addr("nobody"), None);
    }

    #[test]
    fn rejects_addresses_outside_benchmark_range() {
        let e = Topology::from_toml(&EXAMPLE.replace("198.18.2.0/24", "10.0.0.0/24")).unwrap_err();
        assert!(e.to_string().contains("198.18.0.0/15"), "{e}");
        assert!(Topology::from_toml(&EXAMPLE.replace("198.18.2.0/24", "198.20.0.0/24")).is_err());
        assert!(Topology::from_toml(&EXAMPLE.replace("198.18.2.0/24", "198.19.255.0/24")).is_ok());
    }

    #[test]
    fn rejects_overlaps_duplicates_and_bad_links() {
        assert!(Topology::from_toml(&EXAMPLE.replace("198.18.2.0/24", "198.18.1.128/25")).is_err());
        assert!(Topology::from_toml(&EXAMPLE.replace("\"c3\"", "\"c1\"")).is_err());
        assert!(Topology::from_toml(&EXAMPLE.replace("\"branch\"", "\"central\"")).is_err());
        assert!(
            Topology::from_toml(&EXAMPLE.replace("loss_percent = 0.5", "loss_percent = 101"))
                .is_err()
        );
        assert!(Topology::from_toml(&EXAMPLE.replace("rate_mbit = 20", "rate_mbit = -1")).is_err());
        assert!(Topology::from_toml(&EXAMPLE.replace("198.18.2.0/24", "198.18.2.1/24")).is_err());
        assert!(Topology::from_toml(&EXAMPLE.replace("\"c2\"", "\"bad name\"")).is_err());
        assert!(
            Topology::from_toml(
                &EXAMPLE
                    .replace("hosts = [\"c2\", \"c3\"]", "hosts = [\"a\",\"b\",\"c\"]")
                    .replace("198.18.2.0/24", "198.18.2.0/30")
            )
            .is_err()
        );
        assert!(Topology::from_toml("").is_err());
        assert!(
            Topology::from_toml("[[office]]\nname='x'\nsubnet='198.18.0.0/24'\nbogus=1").is_err()
        );
    }

    #[test]
    fn shipped_topologies_parse() {
        let two = Topology::from_toml(include_str!("../topologies/two-offices.toml")).unwrap();
        assert_eq!(two.host_names().count(), 5);
        let three = Topology::from_toml(include_str!("../topologies/three-offices.toml")).unwrap();
        let west = three.offices[2].wan.as_ref().unwrap();
        assert_eq!(west.queue_limit_bytes(), Some(64_000));
        assert_eq!(west.loss_percent, 0.5);
        assert!(three.offices.iter().all(|o| o.parent.is_none()));
        let four = Topology::from_toml(include_str!("../topologies/four-offices.toml")).unwrap();
        assert_eq!(four.host_names().count(), 14);
    }

    #[test]
    fn nested_offices_links_and_addresses() {
        let t = Topology::from_toml(include_str!("../topologies/four-offices.toml")).unwrap();
        let i = |n: &str| t.office_index(n).unwrap();
        let (c, n, s, d) = (i("central"), i("north"), i("south"), i("deep"));
        assert_eq!(t.parent_of(c), None);
        assert_eq!(t.parent_of(d), Some(n));
        assert_eq!(t.children_of(c), vec![n, s]);
        assert_eq!(t.descendants_of(c), vec![n, s, d]);
        assert_eq!(t.descendants_of(n), vec![d]);
        assert!(t.descendants_of(d).is_empty());
        assert_eq!(t.chain_to_hub(d), vec![d, n, c]);
        // Child and parent: the child's link only.
        assert_eq!(t.links_between(d, n), vec![d]);
        assert_eq!(t.links_between(n, d), vec![d]);
        // Siblings: both links; grandchild to central: its own and north's.
        assert_eq!(t.links_between(n, s), vec![n, s]);
        assert_eq!(t.links_between(d, c), vec![d, n]);
        assert_eq!(t.links_between(d, s), vec![d, n, s]);
        assert!(t.links_between(s, s).is_empty());
        // Offices with children have a router of their own at .254.
        assert_eq!(
            t.office_router_addr(c),
            Some(Ipv4Addr::new(198, 18, 1, 254))
        );
        assert_eq!(
            t.office_router_addr(n),
            Some(Ipv4Addr::new(198, 18, 2, 254))
        );
        assert_eq!(t.office_router_addr(s), None);
        assert_eq!(t.router_addr(d), Some(Ipv4Addr::new(198, 18, 4, 1)));
        // Without parents: hub and spokes, as before.
        let two = Topology::from_toml(EXAMPLE).unwrap();
        assert_eq!(two.links_between(0, 1), vec![0, 1]);
        assert_eq!(two.office_router_addr(0), None);
        // Parents may come after their children in the file.
        let rev = Topology {
            offices: t.offices.iter().rev().cloned().collect(),
        };
        rev.validate().unwrap();
        assert_eq!(rev.links_between(0, 3), vec![0, 2], "deep, north");
        // Round trip through TOML keeps the parents.
        let back = Topology::from_toml(&toml::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn an_office_with_children_needs_an_address_for_its_router() {
        let small = EXAMPLE.replace("198.18.1.0/24", "198.18.1.0/30").replace(
            "hosts = [\"server\", \"origin\", \"c1\"]",
            "hosts = [\"server\"]",
        );
        Topology::from_toml(&small).unwrap();
        let nested = small.replace(
            "[[office]]\nname = \"branch\"",
            "[[office]]\nname = \"branch\"\nparent = \"central\"",
        );
        assert_ne!(nested, small);
        let e = Topology::from_toml(&nested).unwrap_err().to_string();
        assert!(
            e.contains("\"central\"") && e.contains("child offices"),
            "{e}"
        );
    }

    #[test]
    fn subnet_arithmetic() {
        let s: Subnet = "198.18.4.0/22".parse().unwrap();
        assert_eq!(s.broadcast(), Ipv4Addr::new(198, 18, 7, 255));
        assert_eq!(s.nth(1), Some(Ipv4Addr::new(198, 18, 4, 1)));
        assert_eq!(s.nth(1022), Some(Ipv4Addr::new(198, 18, 7, 254)));
        assert_eq!(s.nth(1023), None);
        assert_eq!(s.nth(0), None);
        assert!(s.contains(Ipv4Addr::new(198, 18, 6, 9)));
        assert!(!s.contains(Ipv4Addr::new(198, 18, 8, 0)));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".{0,300}") {
            let _ = Topology::from_toml(&s);
            let _ = s.parse::<Subnet>();
        }

        #[test]
        fn subnet_round_trips(a in proptest::prelude::any::<u32>(), p in 0u8..=32) {
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            let s = Subnet { addr: Ipv4Addr::from(a & mask), prefix: p };
            let back: Subnet = s.to_string().parse().unwrap();
            proptest::prop_assert_eq!(back, s);
        }
    }
}
