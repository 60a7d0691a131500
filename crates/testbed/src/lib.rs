//! Branchline's test bed: offices, subnets and WAN links on one machine.
//!
//! Office and WAN behaviour can only be trusted when it is tested across
//! real interfaces, broadcast domains and rate-limited links. This crate
//! builds them from a [`Topology`] with Linux network namespaces:
//!
//! - every **office** is one Linux bridge, one broadcast domain, with its
//!   own subnet inside the benchmark range 198.18.0.0/15;
//! - every **host** (server, clients, origin) is a network namespace with
//!   one veth into its office bridge, its own address and a default route
//!   via the router; any command ([`Testbed::exec`], [`Testbed::spawn`]) or
//!   Rust closure ([`Testbed::run_in`]) can run inside it;
//! - one **router** namespace joins the offices; a branch office's link to
//!   it is a **WAN link** with a token-bucket rate and queue (tbf) on the
//!   router side in both directions, optional random loss (nftables
//!   `numgen`) and optional propagation delay, added by a userspace
//!   layer-2 [`relay`] because the kernel has no netem;
//! - offices may be **nested** ([`Office::parent`]): a child office's link
//!   ends at a router of its parent office (a namespace of its own on the
//!   parent's bridge) instead of at the hub, so traffic between two
//!   offices crosses exactly the links between them in the tree
//!   ([`Topology::links_between`]);
//! - **counters** of what crossed each WAN link in each direction are the
//!   link's interface statistics ([`Testbed::wan_counters`]), keyed by the
//!   office behind the link (for a nested link: into and out of the child
//!   office and everything behind it);
//! - **teardown** always happens: [`Testbed::down`], `Drop` (also during a
//!   panic), [`teardown_all_live`] for signal handlers, and
//!   [`reap_stale`] (run by every [`Testbed::up`]) for runs whose process
//!   died. Names are unique per run (`bl<pid>x<n>-...`) so tests run side
//!   by side.
//!
//! [`baseline`] holds the figures Branchline is compared with, measured on
//! the same test bed: a TCP bulk transfer (also usable as a competing flow
//! with a chosen congestion control), every client downloading over HTTP
//! from the origin, and a BitTorrent swarm. [`probe`] measures round trips
//! (kernel-stamped ICMP, or UDP between threads) and broadcast reach.
//!
//! Offloads (TSO, GSO, checksum) are off on the hosts and where frames
//! head for a WAN link, so every interface counter counts real frames with
//! their own headers and the relay only sees frames it can put back on a
//! wire.
//!
//! Everything here needs root. The tests that build namespaces are
//! `#[ignore = "needs root: network namespaces"]`, so a normal user's `cargo test`
//! lists them as ignored (never as passed); CI runs them as root with
//! `-- --include-ignored`. Benchmarks call [`require_root`] and skip with a clear
//! message without it.
//!
//! ```no_run
//! use branchline_testbed::{Testbed, Topology, WanLink};
//! let topo = Topology::two_offices(&["server", "origin"], &["c1", "c2"], WanLink {
//!     rate_mbit: Some(20.0), queue_ms: Some(100.0), delay_ms: 20.0, ..Default::default()
//! });
//! let tb = Testbed::up(&topo)?;
//! let server = tb.host_addr("server")?;
//! let out = tb.exec("c1", &["ip", "route"])?;
//! let n = tb.run_in("c1", || std::net::UdpSocket::bind("0.0.0.0:0").is_ok())?;
//! for c in tb.wan_counters()? { println!("{} {} {} bytes", c.link, c.dir, c.bytes); }
//! tb.down()?;
//! # let _ = (server, out, n);
//! # Ok::<(), branchline_testbed::Error>(())
//! ```

pub mod baseline;
pub mod error;
pub mod netns;
pub mod offload;
pub mod probe;
pub mod relay;
pub mod testbed;
pub mod topology;

pub use error::{Error, Result};
pub use netns::{is_root, require_root};
pub use relay::{DelayLine, Relay, RelayStats};
pub use testbed::{
    FinalRun, HostState, IfStats, LinkCounters, QueueStats, RunState, Testbed, reap_stale,
    remove_run, teardown_all_live,
};
pub use topology::{Direction, Office, Subnet, Topology, WanLink};
