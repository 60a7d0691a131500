//! LEDBAT++ congestion control for Branchline's Background QUIC connections.
//!
//! Branchline promises network admins that WAN transfers never hurt business traffic and still
//! use every idle bit. This crate is that promise: a less-than-best-effort controller that
//! plugs into quinn through [`quinn_proto::congestion::Controller`] and
//! [`quinn_proto::congestion::ControllerFactory`].
//!
//! # The model
//!
//! The controller follows draft-irtf-iccrg-ledbat-plus-plus (LEDBAT++):
//!
//! * **Queueing delay from round-trip times.** Each ACK frame gives one RTT sample; the
//!   *current delay* is the minimum of the last few samples, the *base delay* the minimum over
//!   a windowed history (ten one-minute buckets by default, RFC 6817 §4.2; quinn's own minimum
//!   RTT never expires, so it is not used). Queueing delay = current − base ([`delay`]).
//! * **Target 30 ms** (the draft says 60 ms; see [`config::default_target`] for why Branchline
//!   halves it: alone, the controller holds about its target in the bottleneck queue). Below
//!   the target the window grows by `GAIN` packets per round trip,
//!   `GAIN = 1 / min(16, ceil(2·target / base delay))`; above it the window shrinks by
//!   `W·(delay/target − 1)` per round trip, capped at half the window per round trip.
//! * **Slow start** grows by `GAIN` × acknowledged bytes and ends when the queueing delay passes
//!   ¾ of the target, or on loss.
//! * **Periodic slowdowns.** Two round trips after slow start, and then 9 slowdown-durations
//!   after each slowdown, the window drops to 2 packets for 2 round trips, then slow-starts back
//!   to where it was. The queue drains, so the base delay stays honest and a late-coming LEDBAT
//!   flow gets its share.
//! * **Loss** halves the window, at most once per round trip.
//!
//! # Beyond the draft
//!
//! Published experience with LEDBAT++ (e.g. Bagnulo & García-Martínez, *An experimental
//! evaluation of LEDBAT++*, Computer Networks 2022) shows it cannot fill an idle link on its
//! own and recovers slowly once competing traffic stops: with a 40 ms base delay the gain is ⅓,
//! so regaining a 20 Mbit/s link after yielding takes ~200 round trips (~9 s). Four
//! extensions, all on by default and all off in [`LedbatConfig::draft`] (which also keeps the
//! draft's 60 ms target):
//!
//! * **Idle-link ramp.** When the queueing delay has stayed under `idle_delay` (6 ms) for
//!   `idle_hold_rtts` (2) round trips (counted at the latest RTT when the smoothed one still
//!   remembers a competitor's queue), nobody else is queueing at the bottleneck, so
//!   the window grows multiplicatively (× 1.5 per round trip; × 2 would overshoot past the
//!   target and start a cut-and-ramp cycle, see [`config::default_idle_growth`]). The ramp back after a slowdown
//!   runs at full slow-start speed (× 2 per round trip): it cannot overshoot the window held
//!   before the slowdown, and the ¾-target exit still stops it at the first queue. The first sample with a
//!   queue above `idle_delay` stops the ramp, and the ordinary LEDBAT++ decrease applies. The
//!   yield is untouched: competing TCP always builds a queue, and a queue switches the ramp
//!   off. The same idea shortens a slowdown's frozen phase: it ends as soon as a sample shows
//!   the queue drained (after at least one base RTT) instead of idling the link for the rest
//!   of its two round trips. The ramp does not carry on from the queue a slowdown drained.
//! * **Gentle slowdown.** Once a slowdown has drained the queue (the base delay is measured,
//!   nobody else queues), the window goes straight back to the estimated bandwidth-delay
//!   product without a queue (capacity × base delay, never above the window held before) and
//!   slow-starts only the rest of the way, instead of from 2 packets: the link is idle for
//!   about one round trip per slowdown instead of several. The next slowdown is scheduled from
//!   the duration the draft's slowdown would have taken (2 frozen round trips, then slow start
//!   at the draft's gain), so slowdowns come as often as in the draft, not more often because
//!   they got shorter. While the queue has stayed empty for the idle hold (the base delay is
//!   being measured anyway) the controller counts a slowdown as done and schedules the next
//!   from there: none falls due while the link is idle, nor just after the ramp back from a
//!   competitor's queue (where one would empty the link again; the `wan` bench saw its
//!   recovery take 1.0 s instead of 0.8 s when it did).
//! * **Competition-aware yield.** A flow that keeps the queue below the target (BBR does) never
//!   pushes the draft over its target, so the draft keeps a share next to it. The controller
//!   estimates the path capacity `C` as its largest delivery rate (measured over two round
//!   trips, at least 250 ms) in the last 10 s, attributes `(W − C·base)/C` of the queue to its
//!   own window `W` (the largest of the last smoothed RTT, whose packets may still be queued),
//!   and steers by `max(queueing delay, 2 × the rest)`, the rest taken as its minimum over the
//!   last smoothed RTT so that a burst of its own is not mistaken for a competitor: a queue
//!   built by others counts double, so it backs off once others hold 15 ms. While others hold
//!   a queue, the decrease is capped at halving once per *base* round trip rather than once per
//!   (queue-lengthened) round trip, so a TCP flow in slow start gets the link back as fast as
//!   on an empty path. *Arrival yield:* that estimate lags a starting competitor by a
//!   round trip (it is a minimum over one), and a flow in slow start queues in flights that
//!   come and go; so when the minimum over the last half base round trip is `arrival_rise`
//!   (4 ms) above the minimum over the smoothed RTT, a competitor is arriving, and the
//!   window shrinks at that capped pace at once, for one smoothed RTT after the last such
//!   rise, instead of in proportion to a queue just above the target (the
//!   first 250 ms of a TCP flow next to Background took a quarter of its window without it).
//!   Our own growth does not count (its queue is explained by the window), only congestion
//!   avoidance is watched, and for a round trip after a gap in our ACK clock (a stalled
//!   sender: the waiting ACKs' samples are inflated and the window leaves as one burst) no
//!   rise counts. Another Background flow's return from a slowdown
//!   also looks like an arrival; on the link model that moves the share between the two,
//!   not the link's use. Slow start and the ramp after a
//!   slowdown still end on the plain queueing delay. Alone, its window explains the whole queue and nothing
//!   changes. An underestimated capacity (a link that got faster) makes it yield less, never
//!   more, than the draft; an overestimated one (a link that got slower) makes it hold a
//!   shorter queue until the 10 s estimate ages out.
//! * **Random-loss tolerance.** A loss seen while the queueing delay is under
//!   `random_loss_delay` (15 ms) cannot be a queue overflow at a bottleneck we are filling; it is
//!   taken for random loss and costs 20 % of the window (as TCP Veno does) instead of half.
//!   Losses with a queue still halve, and so does an ECN congestion mark. On a lossy WAN, halving at every loss collapses the window
//!   to a few packets; with the idle ramp, the tolerant controller keeps the link full.
//!   Limitation: on a bottleneck whose buffer holds less than 15 ms, overflow losses look
//!   random too, and the controller then competes about like Reno (AIMD with gain ≤ ⅓ and
//!   decrease 0.8), rather than yielding; a policer that drops without queueing looks the same.
//!   Use the link's rate ceiling ([`LinkPolicy`]) on such links.
//!
//! # Ceiling and floor
//!
//! A [`LinkPolicy`] per WAN link holds the server's rate ceiling (bytes/s, shared evenly by the
//! connections on the link) and a per-connection floor (bytes/s, default 8000), both turned
//! into windows with the smoothed RTT (`rate × RTT`). The floor guarantees a transfer is never
//! starved for ever; the ceiling holds on average, since quinn paces a window over one RTT.
//! A window cannot go below 2 packets, so a ceiling below `2 × MTU / RTT` is not enforceable.
//!
//! # Use
//!
//! [`background_transport_config`] (or [`configure_background`] on an existing
//! `TransportConfig`) gives the settings for Background connections: LEDBAT++ and prompt
//! ACKs, see [`transport`] for why. Foreground connections keep quinn's default controller.
//! Time is never read here: quinn passes `Instant`s into every call, and the tests pass
//! synthetic ones.

pub mod config;
pub mod controller;
pub mod delay;
pub mod policy;
pub mod transport;

pub use config::LedbatConfig;
pub use controller::{Ledbat, LedbatFactory, LedbatStats, Phase};
pub use policy::LinkPolicy;
pub use transport::{background_transport_config, configure_background, prompt_ack_frequency};

/// A LEDBAT++ configuration or policy value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// One field is out of range.
    #[error("LEDBAT++ setting `{field}` {reason}; fix it in the Background transfer settings")]
    Invalid {
        /// The field's name in [`LedbatConfig`].
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The rate ceiling is below the rate floor.
    #[error(
        "LEDBAT++ rate ceiling {ceiling} bytes/s is below the floor {floor} bytes/s; \
         raise the ceiling or lower the floor"
    )]
    CeilingBelowFloor {
        /// Ceiling (bytes/s).
        ceiling: u64,
        /// Floor (bytes/s).
        floor: u64,
    },
}
