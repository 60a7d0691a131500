//! Piece scheduling for one Branchline download: which piece to ask which source for,
//! and what to do when a request succeeds, fails or runs late.
//!
//! # Model
//!
//! A content item is a file of `piece_count` fixed-size pieces, each verified against a
//! BLAKE3 piece map by the caller before it is reported here. A client downloads it from
//! several **sources** at once:
//!
//! * **peers** ([`SourceKind::Peer`]): other clients of the same office, which may hold
//!   only part of the content and whose holdings grow while they download it themselves
//!   (the office's RVP reading the origin or the parent office, and every client taking
//!   pieces from it);
//! * **upstream sources** ([`SourceKind::Upstream`]): clients outside the office, reached
//!   over the WAN (a parent office's peers), partial and growing like peers;
//! * **origins** ([`SourceKind::Origin`]): the HTTP(S) URL or file path, used only by the
//!   one client the server assigns to read it.
//!
//! The [`Scheduler`] is a pure state machine in the style of `quinn-proto`: it does no
//! I/O, never reads a clock and draws randomness only from [`SchedConfig::seed`]. The
//! caller passes `now` into every call that depends on time, sends the requests it is
//! handed, and reports every outcome:
//!
//! ```text
//! add_source / set_source_pieces / source_has_piece / remove_source   (who holds what)
//! set_source_group(source, Some(group))           sources behind one bottleneck
//! next_request(source, now) -> Some(piece)        loop per source until None
//! on_progress(source, bytes, now)                 bytes of a piece as they stream in
//! on_piece_received(source, piece, bytes, now)    -> Received { cancel, complete, .. }
//! on_piece_failed(source, piece, failure, now)    -> Verdict::{Continue, Drop(..)}
//! timeouts(now) / next_deadline()                 late requests, timer to arm
//! diagnose(now)                                   why it is stuck, printable
//! ```
//!
//! A whole download against two peers, answered at once:
//!
//! ```
//! use std::time::Instant;
//! use branchline_sched::{Have, PieceSet, SchedConfig, Scheduler, SourceId, SourceKind};
//!
//! let mut s = Scheduler::new(8, [0], SchedConfig::new(1 << 20))?;
//! let (a, b) = (SourceId(1), SourceId(2));
//! s.add_source(a, SourceKind::Peer)?;
//! s.add_source(b, SourceKind::Peer)?;
//! s.set_source_pieces(a, Have::All)?;
//! s.set_source_pieces(b, Have::Some(PieceSet::from_ranges(8, [0..4])?))?;
//! let now = Instant::now();
//! while !s.is_complete() {
//!     for id in [a, b] {
//!         while let Some(piece) = s.next_request(id, now) {
//!             // ... send the request, verify the answer against the piece map ...
//!             let done = s.on_piece_received(id, piece, 1 << 20, now)?;
//!             assert!(done.cancel.is_empty());
//!         }
//!     }
//! }
//! assert_eq!(s.source_stats(a).unwrap().pieces_received
//!     + s.source_stats(b).unwrap().pieces_received, 7);
//! # Ok::<(), branchline_sched::SchedError>(())
//! ```
//!
//! # Policy, and why
//!
//! **Only pieces a source holds.** A request goes to a source only for a piece in its
//! *effective* set: its last report ([`Have`]) minus pieces it recently answered "don't
//! have" ([`Failure::Unavailable`]). Those stay off it for [`SchedConfig::holdoff`]
//! (10 s): the server's view lags the peer's own, so the next one-second refresh would
//! otherwise hand the same wrong answer straight back.
//!
//! **Each missing piece is requested once.** Outside endgame a piece in flight is never
//! requested again, so no byte crosses the LAN twice (and in endgame a stuck piece is
//! moved before it is copied).
//!
//! **Peers: rarest first.** A peer gets the missing, unrequested piece that the fewest
//! active peers hold, ties broken at random (the scan starts at a random point). A piece only the RVP holds is fetched first,
//! so it spreads through the office before the RVP is asked for it again by everyone;
//! random tie-breaks (seeded differently per client) keep clients of one office from all
//! fetching the same piece at the same moment, so they can trade with each other.
//!
//! **The origin: in order, and only what no peer holds.** An origin is asked only for
//! pieces that no active peer holds, lowest index first. The first rule is what makes
//! the origin serve each package once: whatever a peer has never costs origin traffic.
//! The second gives the office a growing contiguous prefix, which downstream clients can
//! fetch while the origin read goes on, and which suits HTTP range reads and read-ahead.
//! The price is that an idle origin does not help a slow peer with pieces that peer
//! holds; the timeouts and strikes below bound how long a stuck peer can hold them.
//!
//! **Upstream sources: like the origin, but partial.** An upstream source is asked only
//! for pieces that no active peer holds, lowest index first, among the pieces it holds.
//! A client that takes over as its office's RVP thus takes what its office already has
//! from office peers, over the LAN, and only the rest over the WAN; several upstream
//! sources split the rest, each taking the lowest pieces not yet requested, which again
//! gives the office a growing prefix (rarest first would spread them, but the office
//! downstream of the RVP gains most from a prefix it can stream on). An upstream source
//! never duplicates in endgame a piece a peer holds. (The origin's rule is unchanged: it
//! skips only pieces office peers hold.)
//!
//! **Adaptive windows.** Each source may have at most its *window* of requests
//! outstanding. It starts at [`SchedConfig::initial_in_flight`] (2) and follows the
//! source's measured rate: `window = clamp(ceil(rate × queue_horizon / piece_size),
//! min_in_flight, max_in_flight)` (2..16, horizon 500 ms), growing at most twofold per
//! sample. So a source never holds more than about half a second of work (or two
//! requests): a slow peer gets two pieces at a time and a fast one a full pipe. Short
//! queues keep pieces from waiting at a busy RVP that other clients could serve by then
//! (see [`default_queue_horizon`] for the measured effect). Because the rate is
//! measured while the pipe is full, a window limited by the round trip measures a rate
//! that asks for a bigger window whenever the horizon exceeds one round trip plus one
//! piece time; the floor of two covers slower links.
//!
//! **Rates.** A source's rate (bytes/s) is an EWMA (weight 0.25) of samples taken while
//! it has requests outstanding: bytes delivered over the time since the previous sample
//! (or since its pipe became non-empty), pooled until a sample spans at least 20 ms.
//! Idle time never counts against a source.
//!
//! **Bytes as they arrive.** A 1 MiB piece over a shared 4 Mbit/s link takes seconds to
//! tens of seconds; judging it only when whole makes a flowing piece look dead. So the
//! caller may report bytes as they stream in ([`Scheduler::on_progress`]). They feed the
//! rates and count as a delivery for the deadlines, so a piece that is still flowing is
//! never late (the 120 s cap per request still holds). They are credited to the
//! source's outstanding requests oldest first, each up to a piece, and
//! [`Scheduler::on_piece_received`] (which still gets the whole piece's length) adds to
//! the rate only the part not credited yet: nothing is counted twice. Strikes are still
//! cleared only by whole, verified pieces.
//!
//! **Deadlines.** A request is late when the source has delivered nothing for
//! `k × piece_size × outstanding / rate` (k = 4), clamped to 2..120 s, counted from the
//! later of its sending and the source's last delivery, but at most 120 s after its
//! sending (so one stuck request cannot hide behind a source that keeps delivering
//! others); 30 s while the rate is unknown. Optionally, for an ungrouped source the
//! clamped budget doubles after each round of timeouts and halves back with each whole
//! piece it delivers ([`SchedConfig::max_backoff`] doublings at most; 0 by default, see
//! there why).
//! Counting from the last delivery means a deep pipe is not penalised for queueing, and
//! a source that stops entirely shows all its requests late together.
//! [`Scheduler::timeouts`] lists them; the caller cancels them and reports
//! [`Failure::Timeout`]. The piece returns to the pool and is kept away from that source
//! for the holdoff unless no one else holds it, so it moves to another source.
//!
//! **Slow is not bad.** A timeout says a source is slow, not that it is bad: an office
//! peer serving many clients at once, or writing a batch to a shared disk, goes quiet
//! for seconds and then delivers. (In `branchline demo --clients 24 --package-mib 64`
//! on a loaded 2-core machine, every-timeout-a-strike dropped 12 honest peers in one
//! run.) So a timeout of an ungrouped source earns no strike while the source's
//! *silence* (time with requests outstanding and nothing delivered; idle time never
//! counts) is under [`SchedConfig::silence_limit`] (30 s, the first deadline of an
//! unknown source): its window drops to the floor (once per round), and the piece goes
//! elsewhere first. From 30 s of silence on, timeouts are strikes as below (and any
//! back-off is reset so that the next rounds judge quickly): a source that answers
//! nothing is dropped about two deadlines after the silence limit.
//!
//! **Strikes.** A transport failure, or a timeout as above, is a strike; a delivery
//! clears them; at [`SchedConfig::max_strikes`] (3) the source is dropped
//! ([`DropReason::Strikes`]).
//! Only one strike is counted per round: a failure of a request sent before the
//! previous strike does not count, since a connection loss or stall fails every
//! outstanding request at once, and that is one event, not sixteen. A timeout strike
//! resets the window to its minimum and halves the rate estimate (like TCP after a
//! retransmission timeout); a transport strike halves the window. Either way the source
//! proves itself again on less work, and its window doubles back per good sample.
//!
//! **Probation.** A source dropped for strikes may be added again (the server lists
//! every holder at each locate, and an honest peer that was only overloaded should come
//! back). It returns on probation ([`SourceStats::probation`]): it is asked only for
//! pieces no other active source holds, never for an endgame copy, and what it claims
//! counts like an upstream source's, so it holds back no origin read and does not make
//! a piece look common to rarest-first. Its first whole verified piece ends the
//! probation. Without it, a peer that claims everything and serves nothing took every
//! missing piece away from the origin again each time it was listed, for another round
//! of deadlines (a download beside such a peer stalled at half its pieces for a minute).
//!
//! **Busy and local failures.** A source that holds a piece but cannot serve it now
//! ([`Failure::Busy`], e.g. an RVP limiting how many clients it serves at once) earns no
//! strike: its window halves and the piece goes to another holder first. A failure on
//! this side ([`Failure::Local`], e.g. our disk is full) only returns the piece to the
//! pool. Neither may cost a source its place in the download, since neither says
//! anything bad about it.
//!
//! **Bad pieces.** A piece that fails verification ([`Failure::BadPiece`]) bans the
//! source for this content at once: a peer that lies once cannot be trusted with
//! another piece. [`Verdict::Drop`] lists its requests to cancel and
//! [`DropReason::report_to_server`] says to report it. A banned source cannot be added
//! again.
//!
//! **Endgame.** Near the end (every missing piece is in flight, and no more pieces
//! are missing than there are active sources), a request of an ungrouped source that is
//! *stuck* (silent for half its deadline) while another source that would take the
//! piece is idle is listed by [`Scheduler::timeouts`] early: the caller cancels it, and
//! the piece moves to the idle source. It is moved, not copied, so no piece crosses
//! the network twice; the slow source earns no strike for it (see above). A merely
//! late copy (a busy peer, a noisy rate estimate) is left alone: in the 24-client demo,
//! copying those at once (the earlier rule) had clients receive up to 1.16× the package.
//!
//! Otherwise, once the end is near, an idle source may duplicate a request (up to
//! [`SchedConfig::endgame_max_copies`] = 2 copies of one piece), but only one that is
//! stuck as above and that it would likely deliver sooner (by its rate and queue; a
//! copy already overdue is presumed stuck until its deadline): in practice a piece
//! stuck behind a group, since ungrouped ones move first. When one copy arrives,
//! [`Received::cancel`] lists the others. An origin never duplicates a piece a peer
//! holds. Endgame waits for *every* missing piece to be in flight, not merely every
//! obtainable one: a client fed by a growing RVP has all obtainable pieces in flight
//! most of the time, and duplicating then doubled its LAN traffic in the simulator
//! (249 duplicates for 500 pieces).
//!
//! **Shared bottlenecks.** Sources behind one link (the office's WAN link, say) are one
//! bottleneck, whatever their count. With per-source rules, six sources behind a
//! 4 Mbit/s link each got a window of two; the streams split the link, queued behind
//! each other, missed their deadlines, were thrown away and refetched (7.2× the content
//! entered the office on the test bed), and strikes dropped every source. In the
//! simulator, with 1 MiB pieces, none of the twelve streams finished within its 30 s
//! first deadline. The caller declares such sources as a group
//! ([`Scheduler::set_source_group`]); then:
//!
//! * *one window per group*: the group's outstanding requests are limited to its
//!   measured aggregate rate × the queue horizon (at least 2 requests per group, at
//!   most 16 per active member), and each member to an equal share of that among the
//!   members holding something missing (so the first source asked does not take it
//!   all), besides its own rate-sized window, whose floor is 1 in a group;
//! * *deadlines follow the group*: a request's budget is `k × (bytes due in the group up
//!   to and including it) / group rate` (clamped to 2..120 s), and it is late when the
//!   whole group delivered nothing for one budget, or its own source delivered nothing
//!   for two while others did (each at most 120 s after sending);
//! * *slow is not bad*: a timeout while the group as a whole keeps delivering (something
//!   arrived since the request was sent and within its budget) earns no strike; the
//!   source's window drops to 1, its rate estimate halves and the piece goes elsewhere.
//!   When the whole group goes quiet, timeouts are strikes as usual and the group's
//!   window returns to 2, so a dead path still drops its sources;
//! * *no copies on the same link*: in endgame a member duplicates a piece in flight
//!   on its own group only once that copy is overdue, since a second copy would only
//!   split the same link;
//! * *group rates* are sampled like a source's, but over at least one piece time at the
//!   current estimate (at most 30 s): whole pieces of parallel streams land in bursts,
//!   and a sample between two of them read as ten times the link in the simulator.
//!
//! Ungrouped sources keep every rule above unchanged. In the simulator's west case
//! (8 MiB from six sources behind 4 Mbit/s, 60 ms one way, 0.5 % loss, another client's
//! six connections on the link) the per-source rules fail with 1 MiB pieces (every
//! source dropped, 3.49× the content in) and refetch 2.34× the content with 256 KiB
//! pieces (with timeouts that no longer strike a source that delivered within 30 s,
//! late pieces are refetched more often than dropped sources used to cause: 2.68× and
//! 1.66× before); with groups and progress both complete, no source dropped, 1.00× in.
//! The price: a group's floor of two requests is also its usual window on a slow link,
//! so against greedy cross traffic that opens many connections the group gets a share
//! for two.
//!
//! **Diagnosis.** [`Scheduler::diagnose`] says why a download is stuck: no source left
//! (with drops by reason and the best aggregate rate the path ever delivered), pieces
//! no active source holds (as ranges), or requests outstanding with nothing arriving.
//!
//! # Units
//!
//! Pieces are indices `0..piece_count`; sizes are bytes; rates bytes per second; time is
//! [`std::time::Instant`] supplied by the caller (tests and the `sim` module, built with
//! the `test-util` feature, use a fixed base plus virtual offsets).
//!
//! # Costs
//!
//! Memory is about 8 bytes per piece plus 2 bits per piece per source. Choosing a piece
//! for a peer scans the source's holdings against the pool a 64-bit word at a time:
//! O(pieces / 64 + candidates). Have-set refreshes touch only changed words. A request
//! to a grouped source also checks which members hold a missing piece (at worst
//! O(members × pieces / 64)), and a grouped deadline sums the group's outstanding
//! requests.

mod avail;
mod config;
mod diagnose;
mod error;
mod group;
mod pieceset;
mod rng;
mod scheduler;
#[cfg(feature = "test-util")]
pub mod sim;
mod source;

pub use config::{
    SchedConfig, default_endgame_max_copies, default_holdoff, default_initial_in_flight,
    default_initial_timeout, default_max_backoff, default_max_in_flight, default_max_strikes,
    default_max_timeout, default_min_in_flight, default_min_rate_sample, default_min_timeout,
    default_queue_horizon, default_rate_smoothing, default_silence_limit, default_timeout_factor,
};
pub use diagnose::{Diagnosis, StallCause};
pub use error::SchedError;
pub use group::{GroupId, GroupStats};
pub use pieceset::PieceSet;
pub use scheduler::{DropReason, Dropped, Failure, Progress, Received, Scheduler, Verdict};
pub use source::{Have, SourceId, SourceKind, SourceState, SourceStats};
