//! A running test bed: the namespaces, links, shapers and relays built from
//! a [`Topology`], and the ways to use them (run commands or closures in a
//! host, read WAN counters) and to remove them again.
//!
//! Layout for a run named `bl<pid>x<n>` (all names are per run, so runs can
//! go on side by side):
//!
//! ```text
//!  host ns  bl..-h-NAME      eth0 (office address, default route via .1)
//!                              │ veth
//!  switch ns bl..-switch     hK ── bridge bI (one per office: the broadcast domain)
//!                                     │
//!            LAN office:              pI ───────────────── veth ──┐
//!            WAN office:   wbI ─veth─ woI ⇄ relay ⇄ wrI ── veth ──┤
//!                          (offloads off)  (delay)  (tbf, loss)   │
//!  router ns bl..-router                                  oI (.1, tbf, loss)
//! ```
//!
//! Nested offices: an office with children (say central, with north behind
//! it) also gets a router namespace of its own, `bl..-r-central`, on its
//! bridge: `uI` (the subnet's last address, default route up the office's
//! own link) with peer `qI` in bridge `bI`. A child's link is built as above
//! but its `oJ` lives in that namespace instead of the hub's router. The
//! office's hosts and the router its own link ends at route the subnets
//! behind the office via `uI`'s address.
//!
//! Without delay the relay is left out and `wrI` joins the bridge directly.
//! Shaping sits on the router side in both directions: on `oI` for frames
//! going into the office and on `wrI` for frames coming out of it; random
//! loss is an nftables `numgen` rule on the egress hook of the same two
//! interfaces, before the shaper. The WAN counters are the interface
//! statistics of `wrI`: what actually crossed the link, after loss and
//! shaping.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::netns::{self, ip_batch, tc_batch};
use crate::relay::{Relay, RelayStats};
use crate::topology::{Direction, Topology};

/// Prefix of every namespace the test bed creates.
pub const PREFIX: &str = "bl";

static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs of this process that are up, for [`teardown_all_live`].
static LIVE: Mutex<Vec<RunState>> = Mutex::new(Vec::new());

/// Traffic that crossed one WAN link in one direction (interface
/// statistics: whole Ethernet frames, counted since the link came up).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkCounters {
    /// The office whose WAN link this is.
    pub link: String,
    /// Direction, seen from the office.
    pub dir: Direction,
    /// Bytes of Ethernet frames (headers included, no FCS).
    pub bytes: u64,
    /// Frames.
    pub packets: u64,
}

impl LinkCounters {
    /// Finds the entry for `link` and `dir` in a list.
    pub fn find<'a>(
        list: &'a [LinkCounters],
        link: &str,
        dir: Direction,
    ) -> Option<&'a LinkCounters> {
        list.iter().find(|c| c.link == link && c.dir == dir)
    }
}

/// State of a WAN link's bottleneck queue (the tbf qdisc) in one
/// direction, as `tc -s qdisc` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// The office whose WAN link this is.
    pub link: String,
    /// Direction, seen from the office.
    pub dir: Direction,
    /// Bytes the shaper sent (frames, as the qdisc counts them).
    pub sent_bytes: u64,
    /// Frames dropped because the queue was full.
    pub drops: u64,
    /// Bytes waiting in the queue now.
    pub backlog_bytes: u64,
    /// Frames waiting in the queue now.
    pub backlog_packets: u64,
    /// The shaper's configured rate (bits per second), as the kernel reports it.
    pub rate_bps: u64,
}

/// Parses `tc -s -j qdisc show dev X` output: the root qdisc's counters
/// (sent bytes, drops, backlog bytes, backlog frames) and its configured rate
/// in bits per second (tc reports bytes per second; 0 when it has none).
pub fn parse_tc_json(text: &str) -> Option<(u64, u64, u64, u64, u64)> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let q = v
        .as_array()?
        .iter()
        .find(|q| q.get("root").and_then(|r| r.as_bool()) == Some(true))?;
    let n = |k: &str| q.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    let rate = q
        .get("options")
        .and_then(|o| o.get("rate"))
        .and_then(|r| r.as_u64())
        .unwrap_or(0);
    Some((
        n("bytes"),
        n("drops"),
        n("backlog"),
        n("qlen"),
        rate.saturating_mul(8),
    ))
}

/// One host of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    /// Host name from the topology.
    pub name: String,
    /// Office it belongs to.
    pub office: String,
    /// Its network namespace.
    pub netns: String,
    /// Its address.
    pub addr: Ipv4Addr,
    /// Its office subnet's broadcast address.
    pub broadcast: Ipv4Addr,
}

/// One WAN link of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkState {
    /// The office behind the link (the child office, for a nested one).
    pub office: String,
    /// The router's interface towards the office (in `router_netns`).
    pub router_if: String,
    /// The counted interface (in the switch namespace).
    pub counter_if: String,
    /// Whether a delay relay runs on the link.
    pub relayed: bool,
    /// The office whose router the link ends at; `None`: the hub's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Namespace of the router at the far end of the link (the run's
    /// router, or the parent office's router). Empty in states saved
    /// before nested offices existed: the run's router.
    #[serde(default)]
    pub router_netns: String,
}

/// Everything needed to find a run's parts again, also from another
/// process (the CLI saves it as JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Run name, `bl<pid>x<n>`; every namespace name starts with it.
    pub run: String,
    /// Process that owns the run.
    pub pid: u32,
    /// The topology it was built from.
    pub topology: Topology,
    /// Router namespace of the hub, which joins the offices without a
    /// parent.
    pub router_netns: String,
    /// Router namespaces of offices that have child offices, by office
    /// name: each sits on its office's bridge and is the far end of its
    /// children's links.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub office_routers: BTreeMap<String, String>,
    /// Switch namespace (bridges, relays, counters).
    pub switch_netns: String,
    /// Hosts by name.
    pub hosts: BTreeMap<String, HostState>,
    /// WAN links in office order.
    pub links: Vec<LinkState>,
}

impl RunState {
    fn new(run: String, topo: &Topology) -> RunState {
        let mut hosts = BTreeMap::new();
        let mut links = Vec::new();
        let router_netns = format!("{run}-router");
        let office_routers: BTreeMap<String, String> = (0..topo.offices.len())
            .filter(|&oi| topo.has_children(oi))
            .map(|oi| {
                let name = &topo.offices[oi].name;
                (name.clone(), format!("{run}-r-{name}"))
            })
            .collect();
        for (oi, o) in topo.offices.iter().enumerate() {
            for h in &o.hosts {
                hosts.insert(
                    h.clone(),
                    HostState {
                        name: h.clone(),
                        office: o.name.clone(),
                        netns: format!("{run}-h-{h}"),
                        addr: topo.host_addr(h).expect("validated topology"),
                        broadcast: o.subnet.broadcast(),
                    },
                );
            }
            if let Some(w) = &o.wan {
                links.push(LinkState {
                    office: o.name.clone(),
                    router_if: format!("o{oi}"),
                    counter_if: format!("wr{oi}"),
                    relayed: w.delay_ms > 0.0,
                    parent: o.parent.clone(),
                    router_netns: match &o.parent {
                        Some(p) => office_routers[p].clone(),
                        None => router_netns.clone(),
                    },
                });
            }
        }
        RunState {
            router_netns,
            office_routers,
            switch_netns: format!("{run}-switch"),
            run,
            pid: std::process::id(),
            topology: topo.clone(),
            hosts,
            links,
        }
    }

    /// All namespaces of the run.
    pub fn all_netns(&self) -> Vec<String> {
        let mut v = vec![self.router_netns.clone(), self.switch_netns.clone()];
        v.extend(self.office_routers.values().cloned());
        v.extend(self.hosts.values().map(|h| h.netns.clone()));
        v
    }

    /// Namespace of the router at the far end of office `oi`'s link: the
    /// parent office's router, or the hub.
    fn uplink_router(&self, oi: usize) -> &str {
        match &self.topology.offices[oi].parent {
            Some(p) => &self.office_routers[p],
            None => &self.router_netns,
        }
    }

    /// Namespace of the router at the far end of a WAN link.
    pub fn link_router_netns<'a>(&'a self, l: &'a LinkState) -> &'a str {
        if l.router_netns.is_empty() {
            &self.router_netns
        } else {
            &l.router_netns
        }
    }

    /// A host's details.
    pub fn host(&self, name: &str) -> Result<&HostState> {
        self.hosts
            .get(name)
            .ok_or_else(|| Error::UnknownHost(name.to_string()))
    }

    /// A `Command` that runs `program` inside `host`
    /// (`ip netns exec NS program`); add arguments and spawn it yourself.
    pub fn command(&self, host: &str, program: &str) -> Result<Command> {
        let h = self.host(host)?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &h.netns, program]);
        Ok(c)
    }

    /// Runs `argv` inside `host` to completion and returns its output
    /// (whatever its exit status; check `status` yourself).
    pub fn exec(&self, host: &str, argv: &[&str]) -> Result<Output> {
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| Error::Topology("exec needs a command".into()))?;
        let mut c = self.command(host, prog)?;
        c.args(args).stdin(Stdio::null());
        c.output()
            .map_err(|e| Error::io(format!("running {argv:?} in host {host}"), e))
    }

    /// Interface statistics of a host's `eth0` (what it sent and received).
    pub fn host_if_stats(&self, host: &str) -> Result<IfStats> {
        let ns = &self.host(host)?.netns;
        let stats = netns::in_netns(ns, read_net_dev)??;
        stats
            .get("eth0")
            .copied()
            .ok_or_else(|| Error::Teardown(format!("eth0 of host {host} is gone")))
    }

    /// Reads the bottleneck queues of every shaped WAN link, both
    /// directions (drops and backlog show how full the queue runs).
    pub fn queue_stats(&self) -> Result<Vec<QueueStats>> {
        let mut out = Vec::new();
        for (l, w) in self.links.iter().filter_map(|l| {
            let o = self.topology.offices.iter().find(|o| o.name == l.office)?;
            Some((l, o.wan.as_ref()?))
        }) {
            for (ns, dev, dir) in [
                (self.link_router_netns(l), &l.router_if, Direction::Inbound),
                (
                    self.switch_netns.as_str(),
                    &l.counter_if,
                    Direction::Outbound,
                ),
            ] {
                if w.rate_bps_dir(dir).is_none() {
                    continue;
                }
                let out_ = netns::run(
                    std::process::Command::new("tc")
                        .args(["-n", ns, "-s", "-j", "qdisc", "show", "dev", dev]),
                )?;
                let text = String::from_utf8_lossy(&out_.stdout);
                let (sent_bytes, drops, backlog_bytes, backlog_packets, rate_bps) =
                    parse_tc_json(&text).ok_or_else(|| {
                        Error::Teardown(format!("no root qdisc on {dev} in {ns}: {text}"))
                    })?;
                out.push(QueueStats {
                    link: l.office.clone(),
                    dir,
                    sent_bytes,
                    drops,
                    backlog_bytes,
                    backlog_packets,
                    rate_bps,
                });
            }
        }
        Ok(out)
    }

    /// Reads the WAN counters of every link, both directions.
    pub fn wan_counters(&self) -> Result<Vec<LinkCounters>> {
        let stats = netns::in_netns(&self.switch_netns, read_net_dev)??;
        let mut out = Vec::new();
        for l in &self.links {
            let s = stats.get(&l.counter_if).ok_or_else(|| {
                Error::Teardown(format!(
                    "interface {} of link {} is gone from {}",
                    l.counter_if, l.office, self.switch_netns
                ))
            })?;
            // The counted interface faces the router: what it receives went
            // into the office, what it transmits came out of it.
            out.push(LinkCounters {
                link: l.office.clone(),
                dir: Direction::Inbound,
                bytes: s.rx_bytes,
                packets: s.rx_packets,
            });
            out.push(LinkCounters {
                link: l.office.clone(),
                dir: Direction::Outbound,
                bytes: s.tx_bytes,
                packets: s.tx_packets,
            });
        }
        Ok(out)
    }
}

/// Interface statistics from `/proc/net/dev`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfStats {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes transmitted.
    pub tx_bytes: u64,
    /// Frames transmitted.
    pub tx_packets: u64,
}

/// Parses the text of `/proc/net/dev`.
pub fn parse_net_dev(text: &str) -> BTreeMap<String, IfStats> {
    let mut m = BTreeMap::new();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        if f.len() < 10 {
            continue;
        }
        m.insert(
            name.trim().to_string(),
            IfStats {
                rx_bytes: f[0],
                rx_packets: f[1],
                tx_bytes: f[8],
                tx_packets: f[9],
            },
        );
    }
    m
}

/// Reads the calling thread's namespace's interface statistics.
fn read_net_dev() -> Result<BTreeMap<String, IfStats>> {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev")
        .map_err(|e| Error::io("reading /proc/thread-self/net/dev", e))?;
    Ok(parse_net_dev(&text))
}

/// A test bed that is up. Dropping it tears everything down (also while a
/// test panics); [`Testbed::down`] does the same and reports problems.
#[derive(Debug)]
pub struct Testbed {
    state: RunState,
    relays: Vec<Relay>,
    torn_down: bool,
}

fn new_run_name() -> String {
    let pid = std::process::id();
    loop {
        let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
        let run = format!("{PREFIX}{pid}x{n}");
        // A leftover of an earlier process with the same pid would clash.
        let prefix = format!("{run}-");
        let clash = netns::list_netns()
            .map(|l| l.iter().any(|n| n.starts_with(&prefix)))
            .unwrap_or(false);
        if !clash {
            return run;
        }
    }
}

/// Splits a namespace name `bl<pid>x<n>-...` into its run and pid.
pub fn parse_run_name(ns: &str) -> Option<(&str, i32)> {
    let (run, _) = ns.split_once('-')?;
    let rest = run.strip_prefix(PREFIX)?;
    let (pid, n) = rest.split_once('x')?;
    if pid.is_empty() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((run, pid.parse().ok()?))
}

/// Removes namespaces left by test-bed runs whose process is gone (killed
/// tests, crashed benchmarks). Runs of live processes are never touched.
/// Returns the runs removed.
pub fn reap_stale() -> Result<Vec<String>> {
    let mut by_run: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ns in netns::list_netns()? {
        if let Some((run, pid)) = parse_run_name(&ns)
            && !netns::pid_alive(pid)
        {
            by_run.entry(run.to_string()).or_default().push(ns.clone());
        }
    }
    for names in by_run.values() {
        netns::delete_netns(names)?;
    }
    Ok(by_run.into_keys().collect())
}

/// Removes every namespace of the named run (any owner), killing its
/// processes. For the CLI's `down RUN`.
pub fn remove_run(run: &str) -> Result<usize> {
    let prefix = format!("{run}-");
    let names: Vec<String> = netns::list_netns()?
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    netns::delete_netns(&names)?;
    Ok(names.len())
}

/// A run torn down by [`teardown_all_live`], with its last counters.
#[derive(Clone, Debug)]
pub struct FinalRun {
    /// The run's state (names, topology).
    pub state: RunState,
    /// WAN counters read just before teardown (empty if unreadable).
    pub counters: Vec<LinkCounters>,
}

/// Tears down every run of this process that is still up, as fast as
/// possible: for signal handlers of programs that then exit (relay sockets
/// close at exit). Returns the runs removed, with their final counters.
pub fn teardown_all_live() -> Vec<FinalRun> {
    let runs: Vec<RunState> = LIVE
        .lock()
        .map(|mut l| std::mem::take(&mut *l))
        .unwrap_or_default();
    runs.into_iter()
        .map(|state| {
            let counters = state.wan_counters().unwrap_or_default();
            let _ = remove_run(&state.run);
            FinalRun { state, counters }
        })
        .collect()
}

impl Testbed {
    /// Builds the topology: namespaces, bridges, veths, shapers, loss rules
    /// and relays. Stale runs of dead processes are reaped first. On any
    /// error, whatever was built is removed again.
    pub fn up(topo: &Topology) -> Result<Testbed> {
        if !netns::is_root() {
            return Err(Error::NotRoot);
        }
        topo.validate()?;
        let _ = reap_stale();
        let run = new_run_name();
        let state = RunState::new(run, topo);
        LIVE.lock().map(|mut l| l.push(state.clone())).ok();
        let mut tb = Testbed {
            state,
            relays: Vec::new(),
            torn_down: false,
        };
        // On error, `tb` is dropped here and tears down what exists.
        tb.build()?;
        Ok(tb)
    }

    fn build(&mut self) -> Result<()> {
        let st = &self.state;
        let topo = &st.topology;
        let s = &st.switch_netns;
        // The hub's router first, then the offices' own routers.
        let routers: Vec<&str> = std::iter::once(st.router_netns.as_str())
            .chain(st.office_routers.values().map(String::as_str))
            .collect();

        // Namespaces.
        let lines: Vec<String> = st
            .all_netns()
            .iter()
            .map(|n| format!("netns add {n}"))
            .collect();
        ip_batch(None, &lines)?;
        // No IPv6 anywhere (no stray router solicitations or MLD on the
        // WAN counters); the routers forward IPv4.
        for ns in st.all_netns() {
            let mut sys = vec![
                ("net/ipv6/conf/all/disable_ipv6", "1"),
                ("net/ipv6/conf/default/disable_ipv6", "1"),
            ];
            if routers.contains(&ns.as_str()) {
                sys.push(("net/ipv4/ip_forward", "1"));
            } else {
                // ICMP datagram ("ping") sockets for every group, as on
                // most distributions: probe::icmp_rtt uses them.
                sys.push(("net/ipv4/ping_group_range", "0 2147483647"));
            }
            netns::write_sysctls(&ns, &sys)?;
        }

        // Veth pairs, created directly inside their namespaces. Office oI's
        // link ends at `uplink_router(I)` (the hub, or the parent office's
        // router); an office with children also has a router of its own,
        // on its bridge (uI, at the subnet's last address, peer qI).
        let mut veths = Vec::new();
        let mut sw = Vec::new();
        let mut rt: BTreeMap<&str, Vec<String>> = routers
            .iter()
            .map(|&ns| (ns, vec!["link set lo up".to_string()]))
            .collect();
        // Routes go in after every router's addresses.
        let mut routes: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        let mut host_lines: Vec<(String, Vec<String>)> = Vec::new();
        let mut k = 0;
        for (oi, o) in topo.offices.iter().enumerate() {
            let br = format!("b{oi}");
            let r = st.uplink_router(oi);
            sw.push(format!(
                "link add {br} type bridge stp_state 0 forward_delay 0 mcast_snooping 0"
            ));
            sw.push(format!("link set {br} up"));
            let raddr = topo.router_addr(oi).expect("validated");
            let rt_r = rt.get_mut(r).expect("every router has lines");
            rt_r.push(format!(
                "addr add {raddr}/{} brd + dev o{oi}",
                o.subnet.prefix
            ));
            rt_r.push(format!("link set o{oi} up"));
            match &o.wan {
                None => {
                    veths.push(format!(
                        "link add name o{oi} netns {r} type veth peer name p{oi} netns {s}"
                    ));
                    sw.push(format!("link set p{oi} master {br}"));
                    sw.push(format!("link set p{oi} up"));
                }
                Some(w) => {
                    veths.push(format!(
                        "link add name o{oi} netns {r} type veth peer name wr{oi} netns {s}"
                    ));
                    if w.delay_ms > 0.0 {
                        veths.push(format!(
                            "link add name wo{oi} netns {s} type veth peer name wb{oi} netns {s}"
                        ));
                        sw.push(format!("link set wb{oi} master {br}"));
                        sw.push(format!("link set wb{oi} up"));
                        sw.push(format!("link set wo{oi} up"));
                    } else {
                        sw.push(format!("link set wr{oi} master {br}"));
                    }
                    sw.push(format!("link set wr{oi} up"));
                }
            }
            // Subnets behind this office, reached through its own router.
            let behind: Vec<String> = topo
                .descendants_of(oi)
                .into_iter()
                .map(|d| topo.offices[d].subnet.to_string())
                .collect();
            let own_addr = topo.office_router_addr(oi);
            if let Some(own_addr) = own_addr {
                let own = st.office_routers[&o.name].as_str();
                veths.push(format!(
                    "link add name u{oi} netns {own} type veth peer name q{oi} netns {s}"
                ));
                sw.push(format!("link set q{oi} master {br}"));
                sw.push(format!("link set q{oi} up"));
                let rt_own = rt.get_mut(own).expect("every router has lines");
                rt_own.push(format!(
                    "addr add {own_addr}/{} brd + dev u{oi}",
                    o.subnet.prefix
                ));
                rt_own.push(format!("link set u{oi} up"));
                // Everything not behind it: up this office's own link.
                routes
                    .entry(own)
                    .or_default()
                    .push(format!("route add default via {raddr} dev u{oi}"));
                // The router this office's link ends at reaches the
                // subnets behind the office through the office's router.
                routes.entry(r).or_default().extend(
                    behind
                        .iter()
                        .map(|net| format!("route add {net} via {own_addr} dev o{oi}")),
                );
            }
            for h in &o.hosts {
                let hs = st.host(h)?;
                veths.push(format!(
                    "link add name eth0 netns {} type veth peer name h{k} netns {s}",
                    hs.netns
                ));
                sw.push(format!("link set h{k} master {br}"));
                sw.push(format!("link set h{k} up"));
                let mut lines = vec![
                    "link set lo up".into(),
                    format!("addr add {}/{} brd + dev eth0", hs.addr, o.subnet.prefix),
                    "link set eth0 up".into(),
                    format!("route add default via {raddr} dev eth0"),
                ];
                // Straight to the office's own router, so that traffic to
                // the offices behind it does not go up this office's link
                // and back.
                if let Some(own_addr) = own_addr {
                    lines.extend(
                        behind
                            .iter()
                            .map(|net| format!("route add {net} via {own_addr} dev eth0")),
                    );
                }
                host_lines.push((hs.netns.clone(), lines));
                k += 1;
            }
        }
        ip_batch(None, &veths)?;
        ip_batch(Some(s), &sw)?;
        for (ns, mut lines) in rt {
            lines.extend(routes.remove(ns).unwrap_or_default());
            ip_batch(Some(ns), &lines)?;
        }
        for (ns, lines) in &host_lines {
            ip_batch(Some(ns), lines)?;
        }

        // Hosts send real frames, so their interface counters (e.g. what
        // the origin sent) count every frame's headers, like the WAN
        // counters do.
        for hs in st.hosts.values() {
            netns::in_netns(&hs.netns, || crate::offload::disable_offloads("eth0"))??;
        }
        // An office's own router sends towards the office's link too.
        for (oi, o) in topo.offices.iter().enumerate() {
            if let Some(own) = st.office_routers.get(&o.name) {
                let (u, q) = (format!("u{oi}"), format!("q{oi}"));
                netns::in_netns(own, || crate::offload::disable_offloads(&u))??;
                netns::in_netns(s, || crate::offload::disable_offloads(&q))??;
            }
        }

        // Offloads, shapers and loss on the router side of each WAN link.
        let mut rtc: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        let mut stc = Vec::new();
        let mut rnft: BTreeMap<&str, String> = BTreeMap::new();
        let mut snft = String::new();
        for (oi, o) in topo.offices.iter().enumerate() {
            let Some(w) = &o.wan else { continue };
            let r = st.uplink_router(oi);
            // Offloads off where frames leave towards the WAN link: the
            // shapers' interfaces then count every frame with its own headers
            // (a 64 KiB GSO super-frame would count its headers once), and
            // the relay gets wire-ready frames.
            let (a, b) = (format!("o{oi}"), format!("wr{oi}"));
            netns::in_netns(r, || crate::offload::disable_offloads(&a))??;
            netns::in_netns(s, || crate::offload::disable_offloads(&b))??;
            if w.delay_ms > 0.0 {
                let c = format!("wb{oi}");
                netns::in_netns(s, || crate::offload::disable_offloads(&c))??;
            }
            let tbf = |dev: String, dir: Direction| {
                let rate = w.rate_bps_dir(dir)?;
                let limit = w.queue_limit_bytes_dir(dir)?;
                let burst = w.burst_bytes_dir(dir)?;
                Some(format!(
                    "qdisc add dev {dev} root tbf rate {rate}bit burst {burst} limit {limit}"
                ))
            };
            rtc.entry(r)
                .or_default()
                .extend(tbf(format!("o{oi}"), Direction::Inbound));
            stc.extend(tbf(format!("wr{oi}"), Direction::Outbound));
            if w.loss_percent > 0.0 {
                // numgen over 1,000,000 gives loss in steps of 0.0001 %.
                let thresh = (w.loss_percent * 10_000.0).round() as u64;
                let rule = |dev: String| {
                    format!(
                        "table netdev bl_loss_{dev} {{\n chain egress {{\n  type filter hook egress device \"{dev}\" priority 0;\n  numgen random mod 1000000 < {thresh} counter drop\n }}\n}}\n"
                    )
                };
                rnft.entry(r).or_default().push_str(&rule(format!("o{oi}")));
                snft.push_str(&rule(format!("wr{oi}")));
            }
        }
        for (ns, lines) in &rtc {
            tc_batch(ns, lines)?;
        }
        tc_batch(s, &stc)?;
        for (ns, rules) in &rnft {
            netns::nft_load(ns, rules)?;
        }
        if !snft.is_empty() {
            netns::nft_load(s, &snft)?;
        }

        // Relays last, once every interface is up.
        let mut relays = Vec::new();
        for (oi, o) in topo.offices.iter().enumerate() {
            if let Some(w) = &o.wan
                && w.delay_ms > 0.0
            {
                relays.push(Relay::start(
                    Some(s),
                    &format!("wr{oi}"),
                    &format!("wo{oi}"),
                    w.delay(),
                )?);
            }
        }
        self.relays = relays;
        Ok(())
    }

    /// The run's state (names of everything).
    pub fn state(&self) -> &RunState {
        &self.state
    }

    /// Run name, `bl<pid>x<n>`.
    pub fn run_name(&self) -> &str {
        &self.state.run
    }

    /// The topology this run was built from.
    pub fn topology(&self) -> &Topology {
        &self.state.topology
    }

    /// Address of a host.
    pub fn host_addr(&self, host: &str) -> Result<Ipv4Addr> {
        Ok(self.state.host(host)?.addr)
    }

    /// Broadcast address of a host's office subnet.
    pub fn host_broadcast(&self, host: &str) -> Result<Ipv4Addr> {
        Ok(self.state.host(host)?.broadcast)
    }

    /// Network namespace name of a host (for `ip netns exec`).
    pub fn host_netns(&self, host: &str) -> Result<&str> {
        Ok(&self.state.host(host)?.netns)
    }

    /// Host names of an office, in topology order.
    pub fn office_hosts(&self, office: &str) -> Result<Vec<String>> {
        self.state
            .topology
            .offices
            .iter()
            .find(|o| o.name == office)
            .map(|o| o.hosts.clone())
            .ok_or_else(|| Error::UnknownOffice(office.to_string()))
    }

    /// See [`RunState::command`].
    pub fn command(&self, host: &str, program: &str) -> Result<Command> {
        self.state.command(host, program)
    }

    /// See [`RunState::exec`].
    pub fn exec(&self, host: &str, argv: &[&str]) -> Result<Output> {
        self.state.exec(host, argv)
    }

    /// Starts `argv` inside `host` (stdin closed, stdout and stderr
    /// inherited). Teardown kills it if it is still running.
    pub fn spawn(&self, host: &str, argv: &[&str]) -> Result<Child> {
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| Error::Topology("spawn needs a command".into()))?;
        let mut c = self.command(host, prog)?;
        c.args(args).stdin(Stdio::null());
        c.spawn()
            .map_err(|e| Error::io(format!("starting {argv:?} in host {host}"), e))
    }

    /// Runs `f` on a fresh OS thread inside `host`'s network namespace and
    /// returns its result; sockets it creates (a tokio runtime, a quinn
    /// endpoint) live in the host. Panics in `f` propagate.
    pub fn run_in<T: Send, F: FnOnce() -> T + Send>(&self, host: &str, f: F) -> Result<T> {
        netns::in_netns(&self.state.host(host)?.netns, f)
    }

    /// Like [`Testbed::run_in`] but returns at once with the thread's handle.
    /// The thread's sockets keep its namespace alive; end it before
    /// teardown.
    pub fn spawn_in<T, F>(&self, host: &str, f: F) -> Result<std::thread::JoinHandle<Result<T>>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        netns::spawn_in_netns(&self.state.host(host)?.netns, f)
    }

    /// See [`RunState::host_if_stats`].
    pub fn host_if_stats(&self, host: &str) -> Result<IfStats> {
        self.state.host_if_stats(host)
    }

    /// Bytes and frames that crossed each WAN link, each direction.
    pub fn wan_counters(&self) -> Result<Vec<LinkCounters>> {
        self.state.wan_counters()
    }

    /// See [`RunState::queue_stats`].
    pub fn queue_stats(&self) -> Result<Vec<QueueStats>> {
        self.state.queue_stats()
    }

    /// Counters of the delay relays, by office.
    pub fn relay_stats(&self) -> Vec<(String, RelayStats)> {
        let relayed = self.state.links.iter().filter(|l| l.relayed);
        relayed
            .zip(&self.relays)
            .map(|(l, r)| (l.office.clone(), r.stats()))
            .collect()
    }

    /// Whether every relay thread is still running.
    pub fn relays_running(&self) -> bool {
        self.relays.iter().all(Relay::is_running)
    }

    /// Tears everything down and reports anything that could not be removed
    /// or any relay that had failed.
    pub fn down(mut self) -> Result<()> {
        self.teardown()
    }

    /// Reads the WAN counters one last time, then tears down like
    /// [`Testbed::down`]; returns the counters.
    pub fn finish(mut self) -> Result<Vec<LinkCounters>> {
        let counters = self.wan_counters();
        self.teardown()?;
        counters
    }

    fn teardown(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut problems = Vec::new();
        for r in self.relays.drain(..) {
            let label = r.label().to_string();
            if let Err(e) = r.stop() {
                problems.push(format!("relay {label}: {e}"));
            }
        }
        if let Err(e) = netns::delete_netns(&self.state.all_netns()) {
            problems.push(e.to_string());
        }
        if let Ok(mut l) = LIVE.lock() {
            l.retain(|r| r.run != self.state.run);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Teardown(problems.join("; ")))
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("branchline-testbed: teardown of {}: {e}", self.state.run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
   wr1: 123456789012     987    0    0    0     0          0         0     4242      17    0    0    0     0       0          0
";
        let m = parse_net_dev(text);
        assert_eq!(
            m["wr1"],
            IfStats {
                rx_bytes: 123456789012,
                rx_packets: 987,
                tx_bytes: 4242,
                tx_packets: 17
            }
        );
        assert_eq!(m["lo"], IfStats::default());
        assert!(parse_net_dev("garbage\n\nx: 1 2").is_empty());
    }

    #[test]
    fn testbed_can_be_shared_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Testbed>();
        send_sync::<RunState>();
    }

    #[test]
    fn zombies_and_bad_pids_are_not_alive() {
        assert!(netns::pid_alive(std::process::id() as i32));
        assert!(!netns::pid_alive(0));
        assert!(!netns::pid_alive(-5));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        // Wait until it has exited but is not yet reaped.
        for _ in 0..200 {
            if !netns::pid_alive(pid) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(
            !netns::pid_alive(pid),
            "an exited, unreaped child is not alive"
        );
        child.wait().unwrap();
    }

    #[test]
    fn finds_programs_on_path() {
        assert!(netns::find_program("sh").is_some());
        assert!(netns::find_program("no-such-program-here").is_none());
    }

    #[test]
    fn parses_tc_json() {
        let t = r#"[{"kind":"tbf","handle":"8025:","root":true,"refcnt":3,"options":{"rate":2500000},"bytes":1234,"packets":3,"drops":7,"overlimits":0,"requeues":0,"backlog":3028,"qlen":2}]"#;
        assert_eq!(parse_tc_json(t), Some((1234, 7, 3028, 2, 20_000_000)));
        assert_eq!(parse_tc_json("[]"), None);
        assert_eq!(parse_tc_json("not json"), None);
    }

    #[test]
    fn run_names_round_trip() {
        assert_eq!(parse_run_name("bl1234x0-router"), Some(("bl1234x0", 1234)));
        assert_eq!(parse_run_name("bl99x12-h-c1"), Some(("bl99x12", 99)));
        assert_eq!(parse_run_name("blah-x"), None);
        assert_eq!(parse_run_name("other"), None);
        assert_eq!(parse_run_name("bl12x-router"), None);
    }

    #[test]
    fn state_names_fit_interface_limits() {
        let topo = Topology::two_offices(&["a"], &["b"], Default::default());
        let st = RunState::new("bl4194304x99".into(), &topo);
        assert_eq!(st.links.len(), 1);
        assert!(!st.links[0].relayed);
        assert_eq!(st.all_netns().len(), 4);
        assert_eq!(st.host("b").unwrap().addr, Ipv4Addr::new(198, 18, 2, 2));
        assert!(matches!(st.host("zz"), Err(Error::UnknownHost(_))));
        assert!(st.office_routers.is_empty());
        assert_eq!(st.links[0].router_netns, st.router_netns);
    }

    #[test]
    fn nested_offices_have_their_own_routers_in_the_state() {
        let topo = Topology::from_toml(include_str!("../topologies/four-offices.toml")).unwrap();
        let st = RunState::new("bl7x3".into(), &topo);
        assert_eq!(
            st.office_routers.values().collect::<Vec<_>>(),
            ["bl7x3-r-central", "bl7x3-r-north"]
        );
        // Teardown and reap_stale find them like every other namespace.
        let all = st.all_netns();
        assert_eq!(all.len(), 14 + 4);
        assert!(all.iter().all(|n| parse_run_name(n) == Some(("bl7x3", 7))));
        let link = |o: &str| st.links.iter().find(|l| l.office == o).unwrap();
        assert_eq!(link("north").router_netns, "bl7x3-r-central");
        assert_eq!(link("deep").router_netns, "bl7x3-r-north");
        assert_eq!(link("deep").parent.as_deref(), Some("north"));
        assert_eq!(st.link_router_netns(link("deep")), "bl7x3-r-north");
        // A state saved before nested offices existed still reads.
        let mut v = serde_json::to_value(&st).unwrap();
        v.as_object_mut().unwrap().remove("office_routers");
        for l in v["links"].as_array_mut().unwrap() {
            l.as_object_mut().unwrap().remove("router_netns");
            l.as_object_mut().unwrap().remove("parent");
        }
        let old: RunState = serde_json::from_value(v).unwrap();
        assert_eq!(old.link_router_netns(&old.links[0]), "bl7x3-router");
    }
}
