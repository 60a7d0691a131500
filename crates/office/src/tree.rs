//! The office tree: validation, longest-prefix lookup, automatic offices, declarative apply.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::file::{
    Located, MAX_OFFICES, OfficeKind, OfficeSpec, SourceMap, TopologyError, TopologyFile,
    check_office, parse_with_lines,
};
use crate::hours::LinkPolicy;

/// Index of an office in a [`Tree`]. Indices are only stable until the next
/// [`Tree::apply`]: callers keep office *names* and re-resolve them with [`Tree::find`].
pub type OfficeIdx = usize;

/// Most automatic offices a tree creates; beyond that [`Tree::place`] returns the root.
pub const MAX_AUTO_OFFICES: usize = 10_000;

/// Name of the root office of [`Tree::with_central`].
pub const CENTRAL: &str = "central";

/// A validated office tree: exactly one root, every other office has a parent in the tree, no
/// cycles, unique names, no two subnets overlap.
///
/// Indices ([`OfficeIdx`]) run parents first (the root is 0) and may change on
/// [`Tree::apply`]; [`Tree::place`] only appends.
#[derive(Clone, Debug)]
pub struct Tree {
    offices: Vec<OfficeSpec>,
    parents: Vec<Option<OfficeIdx>>,
    children: Vec<Vec<OfficeIdx>>,
    depths: Vec<usize>,
    by_name: HashMap<String, OfficeIdx>,
    root: OfficeIdx,
    lpm: Lpm,
    autos: usize,
}

fn family_range(n: &IpNet) -> (bool, u128, u128) {
    match n {
        IpNet::V4(n) => (
            false,
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (true, u128::from(n.network()), u128::from(n.broadcast())),
    }
}

fn bits(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

fn mask(v6: bool, a: u128, len: u8) -> u128 {
    let width = if v6 { 128 } else { 32 };
    if len == 0 {
        0
    } else {
        a & (u128::MAX << (width - u32::from(len)))
    }
}

/// Longest-prefix match: one hash map per prefix length in use, longest first.
#[derive(Clone, Debug, Default)]
struct Lpm {
    by_len: [Vec<(u8, HashMap<u128, OfficeIdx>)>; 2],
    starts: [BTreeMap<u128, OfficeIdx>; 2],
}

impl Lpm {
    fn insert(&mut self, n: &IpNet, idx: OfficeIdx) {
        let (v6, start, _) = family_range(n);
        let f = usize::from(v6);
        let len = n.prefix_len();
        let lens = &mut self.by_len[f];
        let pos = match lens.iter().position(|(l, _)| *l <= len) {
            Some(p) if lens[p].0 == len => p,
            Some(p) => {
                lens.insert(p, (len, HashMap::new()));
                p
            }
            None => {
                lens.push((len, HashMap::new()));
                lens.len() - 1
            }
        };
        lens[pos].1.insert(start, idx);
        self.starts[f].insert(start, idx);
    }

    fn lookup(&self, ip: IpAddr) -> Option<OfficeIdx> {
        let (v6, a) = bits(ip);
        self.by_len[usize::from(v6)]
            .iter()
            .find_map(|(len, m)| m.get(&mask(v6, a, *len)).copied())
    }

    /// Whether `n` overlaps any subnet in the tree.
    fn overlaps(&self, n: &IpNet) -> bool {
        let (v6, start, end) = family_range(n);
        self.lookup(n.network()).is_some()
            || self.starts[usize::from(v6)]
                .range(start..=end)
                .next()
                .is_some()
    }
}

/// Checks a whole set of offices. Returns each office's parent position and a parents-first
/// order of positions (file order wherever the file already had parents first).
fn validate(offices: &[OfficeSpec]) -> Result<(Vec<Option<usize>>, Vec<usize>), Located> {
    if offices.is_empty() {
        return Err(Located::new(
            None,
            None,
            "office",
            "no offices: a topology needs one root office (an office without parent)",
        ));
    }
    for (pos, o) in offices.iter().enumerate() {
        check_office(o, pos)?;
    }
    let mut by_name: HashMap<&str, usize> = HashMap::with_capacity(offices.len());
    let mut root: Option<usize> = None;
    for (pos, o) in offices.iter().enumerate() {
        if by_name.insert(&o.name, pos).is_some() {
            return Err(Located::new(
                Some(pos),
                Some(&o.name),
                "name",
                "duplicate name: an earlier office has the same name",
            ));
        }
        if o.parent.is_none() {
            if let Some(r) = root {
                return Err(Located::new(
                    Some(pos),
                    Some(&o.name),
                    "parent",
                    format!(
                        "second root: office {:?} is already the root (the one office without parent); give this office a parent",
                        offices[r].name
                    ),
                ));
            }
            root = Some(pos);
        }
    }
    let mut parents = Vec::with_capacity(offices.len());
    for (pos, o) in offices.iter().enumerate() {
        parents.push(match &o.parent {
            None => None,
            Some(p) => match by_name.get(p.as_str()) {
                Some(&pp) => Some(pp),
                None => {
                    return Err(Located::new(
                        Some(pos),
                        Some(&o.name),
                        "parent",
                        format!("unknown office {p:?}"),
                    ));
                }
            },
        });
    }
    // Parents-first order; a walk that comes back to itself is a cycle.
    let mut state = vec![0u8; offices.len()]; // 0 new, 1 on the current walk, 2 placed
    let mut order = Vec::with_capacity(offices.len());
    let mut chain = Vec::new();
    for i in 0..offices.len() {
        chain.clear();
        let mut cur = Some(i);
        while let Some(c) = cur {
            match state[c] {
                2 => break,
                1 => {
                    let at = chain.iter().position(|&x| x == c).unwrap_or(0);
                    return Err(cycle_error(offices, &parents, &chain[at..]));
                }
                _ => {}
            }
            state[c] = 1;
            chain.push(c);
            cur = parents[c];
        }
        for &c in chain.iter().rev() {
            state[c] = 2;
            order.push(c);
        }
    }
    if root.is_none() {
        // Unreachable: with every parent known and no root there is a cycle.
        return Err(Located::new(
            None,
            None,
            "parent",
            "no root office (an office without parent)",
        ));
    }
    check_overlaps(offices)?;
    Ok((parents, order))
}

fn cycle_error(offices: &[OfficeSpec], parents: &[Option<usize>], members: &[usize]) -> Located {
    let first = members.iter().copied().min().unwrap_or(0);
    let mut names = vec![offices[first].name.as_str()];
    let mut cur = parents[first];
    while let Some(c) = cur {
        names.push(&offices[c].name);
        if c == first || names.len() > 12 {
            break;
        }
        cur = parents[c];
    }
    let mut path = names.join(" -> ");
    if names.last() != Some(&offices[first].name.as_str()) {
        path.push_str(" -> ...");
    }
    Located::new(
        Some(first),
        Some(&offices[first].name),
        "parent",
        format!("parent cycle: {path}"),
    )
}

fn check_overlaps(offices: &[OfficeSpec]) -> Result<(), Located> {
    // (family, start, end, office position, subnet position)
    let mut all: Vec<(bool, u128, u128, usize, usize)> = offices
        .iter()
        .enumerate()
        .flat_map(|(pos, o)| {
            o.subnets.iter().enumerate().map(move |(i, n)| {
                let (v6, s, e) = family_range(n);
                (v6, s, e, pos, i)
            })
        })
        .collect();
    // Subnets are nested or disjoint: sorted by start (widest first), one overlaps an
    // earlier one exactly when it starts before the widest reach so far ends.
    all.sort_unstable_by(|a, b| (a.0, a.1, b.2, a.3, a.4).cmp(&(b.0, b.1, a.2, b.3, b.4)));
    let mut reach: Option<(bool, u128, usize, usize)> = None;
    for &(v6, s, e, pos, i) in &all {
        if let Some((rv6, rend, rpos, ri)) = reach
            && rv6 == v6
            && s <= rend
        {
            let (late, early) = if (pos, i) > (rpos, ri) {
                ((pos, i), (rpos, ri))
            } else {
                ((rpos, ri), (pos, i))
            };
            let ln = offices[late.0].subnets[late.1];
            let en = offices[early.0].subnets[early.1];
            let msg = if late.0 == early.0 {
                format!("{ln} overlaps {en} of the same office")
            } else {
                format!("{ln} overlaps office {:?} ({en})", offices[early.0].name)
            };
            return Err(
                Located::new(Some(late.0), Some(&offices[late.0].name), "subnets", msg)
                    .item(late.1),
            );
        }
        if reach.is_none_or(|(rv6, rend, _, _)| rv6 != v6 || e > rend) {
            reach = Some((v6, e, pos, i));
        }
    }
    Ok(())
}

impl Tree {
    fn assemble(
        mut offices: Vec<OfficeSpec>,
        parents: Vec<Option<usize>>,
        order: Vec<usize>,
    ) -> Tree {
        let n = offices.len();
        let mut new_idx = vec![0; n];
        for (idx, &pos) in order.iter().enumerate() {
            new_idx[pos] = idx;
        }
        let mut slots: Vec<Option<OfficeSpec>> = offices.drain(..).map(Some).collect();
        let mut t = Tree {
            offices: Vec::with_capacity(n),
            parents: Vec::with_capacity(n),
            children: vec![Vec::new(); n],
            depths: Vec::with_capacity(n),
            by_name: HashMap::with_capacity(n),
            root: 0,
            lpm: Lpm::default(),
            autos: 0,
        };
        for (idx, &pos) in order.iter().enumerate() {
            let Some(o) = slots[pos].take() else { continue };
            let parent = parents[pos].map(|p| new_idx[p]);
            match parent {
                Some(p) => {
                    t.children[p].push(idx);
                    t.depths.push(t.depths[p] + 1);
                }
                None => {
                    t.root = idx;
                    t.depths.push(0);
                }
            }
            for s in &o.subnets {
                t.lpm.insert(s, idx);
            }
            t.autos += usize::from(o.auto);
            t.by_name.insert(o.name.clone(), idx);
            t.parents.push(parent);
            t.offices.push(o);
        }
        t
    }

    fn build(offices: Vec<OfficeSpec>) -> Result<Tree, Located> {
        let (parents, order) = validate(&offices)?;
        Ok(Tree::assemble(offices, parents, order))
    }

    /// A tree with one root office "central" holding `central_subnets` (may be empty). Host
    /// bits are cleared; a subnet that overlaps an earlier one is left out.
    pub fn with_central(central_subnets: Vec<IpNet>) -> Tree {
        let mut lpm = Lpm::default();
        let mut subnets = Vec::new();
        for n in central_subnets {
            let n = n.trunc();
            if !lpm.overlaps(&n) {
                lpm.insert(&n, 0);
                subnets.push(n);
            }
        }
        let mut central = OfficeSpec::new(CENTRAL, None);
        central.subnets = subnets;
        Tree::assemble(vec![central], vec![None], vec![0])
    }

    /// Validates a whole file into a tree: exactly one root (a second root is refused), known
    /// parents, no cycles, unique names, no overlapping subnets between or within offices,
    /// valid names, at most 10 000 offices and 1000 subnets per office. Errors carry no line
    /// (see [`Tree::from_toml`] for errors with lines).
    pub fn from_file(file: &TopologyFile) -> Result<Tree, TopologyError> {
        Tree::from_file_mapped(file, None)
    }

    /// [`TopologyFile::parse`] and [`Tree::from_file`] in one, every error with its line.
    pub fn from_toml(text: &str) -> Result<Tree, TopologyError> {
        let (file, map) = parse_with_lines(text)?;
        Tree::from_file_mapped(&file, Some(&map))
    }

    fn from_file_mapped(
        file: &TopologyFile,
        map: Option<&SourceMap>,
    ) -> Result<Tree, TopologyError> {
        if file.offices.len() > MAX_OFFICES {
            return Err(TopologyError::new(
                None,
                "office",
                format!("{} offices, at most {MAX_OFFICES}", file.offices.len()),
            ));
        }
        Tree::build(file.offices.clone()).map_err(|e| e.locate(map))
    }

    /// Declarative, idempotent apply: the file's offices replace all current declared ones
    /// (the file must hold the whole tree, root included). Automatic offices of the current
    /// tree are kept unless the file declares their name or a declared subnet covers or
    /// overlaps one of theirs; a kept one stays under its parent when the file declares that
    /// parent, else moves under the root. On error the tree is unchanged.
    ///
    /// Office indices may change: re-resolve names with [`Tree::find`].
    pub fn apply(&mut self, file: &TopologyFile) -> Result<(), TopologyError> {
        self.apply_mapped(file, None)
    }

    /// [`TopologyFile::parse`] and [`Tree::apply`] in one, every error with its line.
    pub fn apply_toml(&mut self, text: &str) -> Result<(), TopologyError> {
        let (file, map) = parse_with_lines(text)?;
        self.apply_mapped(&file, Some(&map))
    }

    fn apply_mapped(
        &mut self,
        file: &TopologyFile,
        map: Option<&SourceMap>,
    ) -> Result<(), TopologyError> {
        let declared = Tree::from_file_mapped(file, map)?;
        let mut all = file.offices.clone();
        let root_name = declared.offices[declared.root].name.clone();
        for o in &self.offices {
            if !o.auto
                || declared.by_name.contains_key(&o.name)
                || o.subnets.iter().any(|n| declared.lpm.overlaps(n))
            {
                continue;
            }
            let mut kept = o.clone();
            if !kept
                .parent
                .as_ref()
                .is_some_and(|p| declared.by_name.contains_key(p))
            {
                kept.parent = Some(root_name.clone());
            }
            all.push(kept);
        }
        *self = Tree::build(all).map_err(|e| e.locate(map))?;
        Ok(())
    }

    /// Today's tree, automatic offices included (`auto = true`), parents first: an order
    /// [`Tree::from_file`] accepts.
    pub fn export(&self) -> TopologyFile {
        TopologyFile {
            offices: self.offices.clone(),
        }
    }

    /// Longest-prefix match over all offices' subnets; None when nothing matches.
    /// IPv4-mapped IPv6 addresses (`::ffff:10.1.2.3`) are looked up as IPv4.
    pub fn lookup(&self, ip: IpAddr) -> Option<OfficeIdx> {
        self.lpm.lookup(ip.to_canonical())
    }

    /// [`Tree::lookup`], or else creates an automatic office under the root for the ip's /24
    /// (IPv6: /64), named `auto-<network>-<prefix>` (`auto-10.1.2.0-24`; in IPv6 names ':'
    /// becomes '_': `auto-fd00_1__-64`), and returns it. When that /24 (/64) would overlap a
    /// smaller declared subnet, the widest longer prefix holding the ip that overlaps nothing
    /// is used instead. At most [`MAX_AUTO_OFFICES`] automatic offices: beyond that, the root.
    pub fn place(&mut self, ip: IpAddr) -> OfficeIdx {
        let ip = ip.to_canonical();
        if let Some(i) = self.lookup(ip) {
            return i;
        }
        if self.autos >= MAX_AUTO_OFFICES {
            return self.root;
        }
        let (from, to) = if ip.is_ipv4() { (24, 32) } else { (64, 128) };
        let Some(net) = (from..=to)
            .filter_map(|len| IpNet::new(ip, len).ok().map(|n| n.trunc()))
            .find(|n| !self.lpm.overlaps(n))
        else {
            return self.root;
        };
        let base = format!("auto-{}-{}", net.network(), net.prefix_len()).replace(':', "_");
        let Some(name) = std::iter::once(base.clone())
            .chain((2..100).map(|k| format!("{base}-{k}")))
            .find(|n| !self.by_name.contains_key(n))
        else {
            return self.root;
        };
        let idx = self.offices.len();
        self.offices.push(OfficeSpec {
            name: name.clone(),
            subnets: vec![net],
            parent: Some(self.offices[self.root].name.clone()),
            kind: OfficeKind::Default,
            wan: LinkPolicy::default(),
            rvp_override: None,
            auto: true,
        });
        self.parents.push(Some(self.root));
        self.children.push(Vec::new());
        self.children[self.root].push(idx);
        self.depths.push(self.depths[self.root] + 1);
        self.by_name.insert(name, idx);
        self.lpm.insert(&net, idx);
        self.autos += 1;
        idx
    }

    /// The root office (the Central Office).
    pub fn root(&self) -> OfficeIdx {
        self.root
    }

    /// The office at `idx`. Panics when `idx` is out of range.
    pub fn office(&self, idx: OfficeIdx) -> &OfficeSpec {
        &self.offices[idx]
    }

    /// The office with this name.
    pub fn find(&self, name: &str) -> Option<OfficeIdx> {
        self.by_name.get(name).copied()
    }

    /// The parent office; None for the root.
    pub fn parent(&self, idx: OfficeIdx) -> Option<OfficeIdx> {
        self.parents[idx]
    }

    /// The child offices, in index order.
    pub fn children(&self, idx: OfficeIdx) -> Vec<OfficeIdx> {
        self.children[idx].clone()
    }

    /// `idx`, its parent, ..., the root.
    pub fn path_to_root(&self, idx: OfficeIdx) -> Vec<OfficeIdx> {
        let mut path = Vec::with_capacity(self.depths[idx] + 1);
        let mut cur = Some(idx);
        while let Some(c) = cur {
            path.push(c);
            cur = self.parents[c];
        }
        path
    }

    /// Number of links between `idx` and the root (the root's depth is 0).
    pub fn depth(&self, idx: OfficeIdx) -> usize {
        self.depths[idx]
    }

    /// Number of offices, automatic ones included.
    pub fn len(&self) -> usize {
        self.offices.len()
    }

    /// Always false: a tree has at least its root.
    pub fn is_empty(&self) -> bool {
        self.offices.is_empty()
    }

    /// Number of automatic offices.
    pub fn auto_count(&self) -> usize {
        self.autos
    }

    /// Every office with its index, in index order (parents first).
    pub fn iter(&self) -> impl Iterator<Item = (OfficeIdx, &OfficeSpec)> {
        self.offices.iter().enumerate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lpm_prefers_longest() {
        let mut l = Lpm::default();
        l.insert(&"10.0.0.0/8".parse().unwrap(), 1);
        l.insert(&"10.1.0.0/16".parse().unwrap(), 2);
        l.insert(&"0.0.0.0/0".parse().unwrap(), 3);
        l.insert(&"10.1.2.3/32".parse().unwrap(), 4);
        assert_eq!(l.lookup("10.1.2.3".parse().unwrap()), Some(4));
        assert_eq!(l.lookup("10.1.2.4".parse().unwrap()), Some(2));
        assert_eq!(l.lookup("10.2.0.0".parse().unwrap()), Some(1));
        assert_eq!(l.lookup("11.0.0.0".parse().unwrap()), Some(3));
        assert_eq!(l.lookup("::1".parse().unwrap()), None);
        assert!(l.overlaps(&"10.1.2.0/24".parse().unwrap()));
        let mut l = Lpm::default();
        l.insert(&"10.1.2.128/25".parse().unwrap(), 1);
        assert!(l.overlaps(&"10.1.2.0/24".parse().unwrap()));
        assert!(!l.overlaps(&"10.1.2.0/25".parse().unwrap()));
    }
}
