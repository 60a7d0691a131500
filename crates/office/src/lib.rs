//! Branchline's office model: the office tree, its topology file, WAN link policy and the
//! election of one rendezvous point (RVP) per office per content.
//!
//! This crate is pure: no sockets, no disk, no clocks. Time comes in as Unix milliseconds
//! (UTC), so every decision is deterministic and testable.
//!
//! # The model
//!
//! An organisation is a **tree of offices**. The root is the Central Office (where the
//! server and, usually, the origin are); every other office has exactly one parent, and its
//! WAN link is the link to that parent. Content crosses each such link once: in each office
//! one client, the **RVP**, fetches from outside (from a client of the parent office over
//! Background, or from the origin in the Central Office) and everyone else in the office
//! fetches from same-office peers.
//!
//! * An office ([`OfficeSpec`]) has a unique name, subnets (IPv4 and IPv6, canonical CIDR),
//!   a [`OfficeKind`] (Default: share and broadcast; WiFi: share, no broadcast; VPN: no peer
//!   sharing, each client pulls from the parent office), a [`LinkPolicy`] for its WAN link
//!   (Background rate ceiling, allowed UTC hours as a [`HoursWindow`], most concurrent
//!   transfers) and an optional admin RVP override.
//! * A client belongs to the office whose subnet matches its address most specifically
//!   ([`Tree::lookup`], longest-prefix match). A client in no known subnet gets an
//!   **automatic office** for its /24 (IPv6: /64) under the root ([`Tree::place`]); at most
//!   [`MAX_AUTO_OFFICES`] of them, after which such clients count as root clients.
//! * The admin declares the tree in a TOML **topology file** ([`TopologyFile`]); see its
//!   docs for the format. [`Tree::apply`] is declarative and idempotent: the file replaces
//!   the declared offices, automatic offices survive unless the file now covers them, and on
//!   error nothing changes. [`Tree::export`] writes today's tree, automatic offices included.
//! * Every error ([`TopologyError`]) names the office and the field, and the line when it
//!   came from TOML text ([`TopologyFile::parse`], [`Tree::from_toml`], [`Tree::apply_toml`]).
//!
//! **Indices are not names.** An [`OfficeIdx`] is valid for the tree it came from until the
//! next [`Tree::apply`], which may renumber every office. Keep office names, and re-resolve
//! them with [`Tree::find`] after an apply. ([`Tree::place`] only appends.)
//!
//! # The RVP score
//!
//! [`elect`] picks the RVP of one office for one content among that office's clients
//! ([`Candidate`]). A client that is offline or on a VPN is never eligible. The others score
//! ([`score`]):
//!
//! ```text
//! score = weight × 1000                            admin weight (i32) dominates
//!       + min(pieces, 100) × 10                    it already holds pieces of this content
//!       + wired 300 | unknown medium 150 | wifi 0
//!       + min(whole hours of uptime, 24) × 10
//!       + min(whole GiB of free cache, 100) × 2
//! ```
//!
//! The highest score wins; equal scores go to the lowest client id (byte order). An admin
//! override (the office's `rvp`) that is an eligible candidate always wins. A sitting RVP is
//! kept — no flapping when another client's score creeps past it — while it stays eligible
//! and shows progress ([`record_progress`]: its piece count grew) within the stall time;
//! while the link's window is closed (`paused`) it cannot stall. A stalled, offline or VPN
//! RVP is replaced by the best other candidate.

mod file;
mod hours;
mod rvp;
mod tree;

pub use file::{
    MAX_NAME_LEN, MAX_OFFICES, MAX_SUBNETS_PER_OFFICE, OfficeKind, OfficeSpec, TopologyError,
    TopologyFile, client_key_hex, parse_client_key, parse_subnet, valid_name,
};
pub use hours::{HoursWindow, LinkPolicy};
pub use rvp::{
    Candidate, Election, FREE_CAP_GIB, FREE_POINTS_PER_GIB, LinkMedium, PIECE_POINTS, PIECES_CAP,
    RvpState, UNKNOWN_MEDIUM_POINTS, UPTIME_CAP_H, UPTIME_POINTS_PER_H, WEIGHT_POINTS,
    WIRED_POINTS, elect, record_progress, score,
};
pub use tree::{CENTRAL, MAX_AUTO_OFFICES, OfficeIdx, Tree};

/// A client id.
pub type ClientKey = [u8; 16];
