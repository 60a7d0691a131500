//! Scheduler benchmark: policy outcomes in the virtual-time simulator, and the CPU cost
//! of scheduling decisions.
//!
//! Run with `cargo bench -p branchline-sched --bench sched`. It prints two tables:
//!
//! 1. per scenario: simulated completion time, the ideal (all bytes at the sum of the
//!    source rates, or the scenario's own bound), their ratio, pieces per source, timeouts
//!    and endgame duplicates. Virtual time: the numbers are the same on every machine.
//! 2. per office: a whole office in virtual time (the RVP reads the origin, every
//!    client fetches from every other): the WAN copy time, when the last client
//!    finished, their ratio, pieces the origin served (must equal the piece count), copies
//!    of each piece the RVP uploaded, and wasted (duplicate) pieces.
//! 3. the west case: 8 MiB from six sources in other offices behind one 4 Mbit/s link
//!    (64 kB queue, 60 ms one way, 0.5 % loss, another client's six connections on the
//!    link), with and without the group and progress rules: completion, bytes that
//!    entered the office per content byte, timeouts, sources dropped.
//! 4. per content size: wall-clock nanoseconds per piece for the whole request/receive
//!    cycle (`next_request` + `on_piece_received`) with 8 peers holding everything, and
//!    for the slow path where the rarest pieces are held by other peers only.

use std::hint::black_box;
use std::time::{Duration, Instant};

use branchline_sched::sim::{self, Fault, SimConfig, SimHave, SimLink, SimSource};
use branchline_sched::{Have, PieceSet, SchedConfig, Scheduler, SourceId, SourceKind};

const PIECE: u64 = 1 << 20;
const MB: f64 = 1_000_000.0;
const LAN: Duration = Duration::from_millis(2);

fn cfg(pieces: u32) -> SimConfig {
    SimConfig {
        piece_count: pieces,
        sched: SchedConfig {
            seed: 1,
            ..SchedConfig::new(PIECE)
        },
        refresh: Duration::from_secs(1),
        limit: Duration::from_secs(24 * 3600),
    }
}

fn scenario(name: &str, pieces: u32, srcs: &[SimSource], ideal: Option<Duration>) {
    let c = cfg(pieces);
    let r = sim::run(&c, srcs);
    let ideal = ideal.unwrap_or_else(|| sim::ideal_time(pieces, PIECE, srcs));
    let per: Vec<String> = r.sources.iter().map(|s| s.pieces.to_string()).collect();
    match r.completed {
        Some(done) => println!(
            "{name:<44} {:>9.2} {:>9.2} {:>6.3} {:>5} {:>5}  {}{}",
            done.as_secs_f64(),
            ideal.as_secs_f64(),
            done.as_secs_f64() / ideal.as_secs_f64(),
            r.timeouts,
            r.duplicates,
            per.join("/"),
            if r.violations.is_empty() {
                String::new()
            } else {
                format!("  VIOLATIONS: {:?}", r.violations)
            }
        ),
        None => println!("{name:<44} did not complete: {r:?}"),
    }
}

fn simulations() {
    println!("simulated download (virtual time, 1 MiB pieces, LAN rtt 2 ms unless stated)");
    println!(
        "{:<44} {:>9} {:>9} {:>6} {:>5} {:>5}  pieces per source",
        "scenario", "done (s)", "ideal (s)", "ratio", "tmo", "dup"
    );
    let equal: Vec<SimSource> = (0..6).map(|_| SimSource::peer(20.0 * MB, LAN)).collect();
    scenario("6 equal peers, 20 MB/s each", 1000, &equal, None);

    let mut one_slow: Vec<SimSource> = (0..5).map(|_| SimSource::peer(20.0 * MB, LAN)).collect();
    one_slow.push(SimSource::peer(2.0 * MB, LAN));
    scenario("6 peers, one 10x slower", 1000, &one_slow, None);

    let mut one_dies: Vec<SimSource> = (0..5).map(|_| SimSource::peer(20.0 * MB, LAN)).collect();
    one_dies
        .push(SimSource::peer(20.0 * MB, LAN).with_fault(Fault::StopsAt(Duration::from_secs(5))));
    // Ideal: all six until 5 s, the other five after.
    let total = 1000.0 * PIECE as f64;
    let survivors = Duration::from_secs_f64(5.0 + (total - 5.0 * 120.0 * MB) / (100.0 * MB));
    scenario(
        "6 peers, one silent after 5 s",
        1000,
        &one_dies,
        Some(survivors),
    );

    let mut liar: Vec<SimSource> = (0..3).map(|_| SimSource::peer(20.0 * MB, LAN)).collect();
    liar.push(SimSource::peer(20.0 * MB, LAN).with_fault(Fault::BadPieceNth(10)));
    let honest = sim::ideal_time(1000, PIECE, &liar[..3]);
    scenario(
        "4 peers, one sends a bad 10th piece (ideal: 3)",
        1000,
        &liar,
        Some(honest),
    );

    let wan = [SimSource::peer(10.0 * MB, Duration::from_millis(100))];
    scenario("1 peer over WAN, 10 MB/s, rtt 100 ms", 300, &wan, None);

    let wan_slow = [SimSource::peer(1.0 * MB, Duration::from_millis(200))];
    scenario("1 peer over WAN, 1 MB/s, rtt 200 ms", 60, &wan_slow, None);

    // The office RVP reads the WAN at 10 MB/s; this client takes pieces from it and from
    // two other clients that are a little behind.
    let interval = Duration::from_secs_f64(PIECE as f64 / (10.0 * MB));
    let rvp = |lag: u64| {
        SimSource::peer(50.0 * MB, LAN).with_have(SimHave::Growing {
            start: Duration::from_millis(lag),
            interval,
        })
    };
    let office = [rvp(0), rvp(500), rvp(1500)];
    let wan_copy = interval * 500;
    scenario(
        "downstream of RVP at 10 MB/s (ideal: WAN copy)",
        500,
        &office,
        Some(wan_copy),
    );

    // Two peers hold parts; the origin is read only for the rest.
    let n = 1000;
    let a = PieceSet::from_ranges(n, [0..400, 700..800]).unwrap();
    let b = PieceSet::from_pieces(n, 300..600).unwrap();
    let unheld = (0..n).filter(|&p| !a.contains(p) && !b.contains(p)).count();
    let partial = [
        SimSource::peer(20.0 * MB, LAN).with_have(SimHave::Pieces(a)),
        SimSource::peer(20.0 * MB, LAN).with_have(SimHave::Pieces(b)),
        SimSource::origin(40.0 * MB, Duration::from_millis(30)),
    ];
    // Bound: the first peer alone holds 400 pieces nobody else has (the origin may not
    // take them), at 20 MB/s.
    let exclusive = Duration::from_secs_f64(400.0 * PIECE as f64 / (20.0 * MB));
    scenario(
        &format!("2 partial peers + origin ({unheld} unheld; ideal: A)"),
        n,
        &partial,
        Some(exclusive),
    );
}

fn office(clients: u32, pieces: u32, lan: f64, horizon: Duration) {
    let c = sim::OfficeConfig {
        clients,
        piece_count: pieces,
        sched: SchedConfig {
            seed: 1,
            queue_horizon: horizon,
            ..SchedConfig::new(PIECE)
        },
        origin_rate: 10.0 * MB,
        origin_rtt: Duration::from_millis(40),
        lan_rate: lan,
        lan_rtt: LAN,
        refresh: Duration::from_secs(1),
        limit: Duration::from_secs(24 * 3600),
    };
    let r = sim::run_office(&c);
    let wan = sim::wan_copy_time(&c);
    let last = r.last_completion();
    println!(
        "{clients:>7} {pieces:>6} {:>6.0} {:>7.1} {:>8.2} {:>8} {:>7.3} {:>6} {:>9.2} {:>6}{}",
        lan / MB,
        horizon.as_secs_f64(),
        wan.as_secs_f64(),
        last.map_or("never".into(), |l| format!("{:.2}", l.as_secs_f64())),
        last.map_or(f64::NAN, |l| l.as_secs_f64() / wan.as_secs_f64()),
        r.origin_pieces,
        r.uploaded[0] as f64 / f64::from(pieces),
        r.wasted_bytes / PIECE,
        if r.violations.is_empty() {
            String::new()
        } else {
            format!("  VIOLATIONS: {:?}", r.violations)
        }
    );
}

fn offices() {
    println!(
        "office: RVP reads the origin at 10 MB/s (rtt 40 ms); every client uploads at the LAN rate; have-sets refresh every 1 s"
    );
    println!(
        "{:>7} {:>6} {:>6} {:>7} {:>8} {:>8} {:>7} {:>6} {:>9} {:>6}",
        "clients",
        "pieces",
        "LAN",
        "horizon",
        "WAN (s)",
        "last (s)",
        "ratio",
        "origin",
        "RVP sends",
        "wasted"
    );
    let h = SchedConfig::new(PIECE).queue_horizon;
    for (clients, lan) in [(8, 50.0), (8, 20.0), (8, 12.0), (20, 20.0), (40, 20.0)] {
        office(clients, 1000, lan * MB, h);
    }
    for horizon in [1000, 2000] {
        office(8, 1000, 20.0 * MB, Duration::from_millis(horizon));
    }
}

fn west(piece: u64, tell: bool) {
    const CONTENT: u64 = 8 << 20;
    let c = SimConfig {
        piece_count: (CONTENT / piece) as u32,
        sched: SchedConfig {
            seed: 7,
            ..SchedConfig::new(piece)
        },
        refresh: Duration::from_secs(1),
        limit: Duration::from_secs(1800),
    };
    let link = SimLink {
        id: 1,
        rate: 500_000.0,
        queue: 64_000,
        loss: 0.005,
        cross_flows: 6,
        progress: tell.then_some(Duration::from_millis(100)),
        declare_group: tell,
    };
    let srcs: Vec<SimSource> = (0..6)
        .map(|_| SimSource::upstream(212_000.0, Duration::from_millis(120)).behind(1))
        .collect();
    let r = sim::run_linked(&c, &srcs, &[link]);
    let dropped = r.sources.iter().filter(|s| s.dropped.is_some()).count();
    println!(
        "{:>6} {:<22} {:>9} {:>7.2} {:>5} {:>7}  {}",
        format!("{}K", piece >> 10),
        if tell {
            "groups + progress"
        } else {
            "per source (before)"
        },
        r.completed
            .map_or("never".into(), |d| format!("{:.1}", d.as_secs_f64())),
        r.bytes_in as f64 / CONTENT as f64,
        r.timeouts,
        dropped,
        r.diagnosis
    );
}

fn wests() {
    println!(
        "west: 8 MiB from 6 upstream sources (1.7 Mbit/s each) behind a 4 Mbit/s link, 64 kB queue, 60 ms one way, 0.5 % loss, 6 cross connections"
    );
    println!(
        "{:>6} {:<22} {:>9} {:>7} {:>5} {:>7}  diagnosis at the end",
        "piece", "rules", "done (s)", "in/size", "tmo", "dropped"
    );
    for piece in [1 << 20, 256 << 10] {
        for tell in [false, true] {
            west(piece, tell);
        }
    }
}

fn cpu(pieces: u32) {
    let peers = 8;
    let mut s = Scheduler::new(
        pieces,
        [],
        SchedConfig {
            seed: 3,
            ..SchedConfig::new(PIECE)
        },
    )
    .expect("valid");
    for i in 0..peers {
        s.add_source(SourceId(i), SourceKind::Peer).expect("fresh");
        s.set_source_pieces(SourceId(i), Have::All).expect("sized");
    }
    let base = Instant::now();
    let mut t = base;
    let start = Instant::now();
    let mut outstanding = Vec::new();
    while !s.is_complete() {
        for i in 0..peers {
            while let Some(p) = s.next_request(SourceId(i), t) {
                outstanding.push((SourceId(i), p));
            }
        }
        t += Duration::from_millis(10);
        for (src, p) in outstanding.drain(..) {
            let _ = black_box(s.on_piece_received(src, p, PIECE, t).expect("in range"));
        }
    }
    let spent = start.elapsed();
    println!(
        "{pieces:>8} pieces, {peers} peers: {:>8.0} ns per piece ({:.1} ms total)",
        spent.as_nanos() as f64 / f64::from(pieces),
        spent.as_secs_f64() * 1e3
    );
}

/// The slow path: the rarest pieces are held by someone else, so every choice scans all
/// of the asking peer's candidates. Peer B holds the first half, as does C; A holds all,
/// so the second half is the rarest level and B never finds a piece of it.
fn cpu_worst(pieces: u32) {
    let mut s = Scheduler::new(
        pieces,
        [],
        SchedConfig {
            seed: 3,
            ..SchedConfig::new(PIECE)
        },
    )
    .expect("valid");
    let half = PieceSet::from_pieces(pieces, 0..pieces / 2).expect("in range");
    for (i, have) in [Have::All, Have::Some(half.clone()), Have::Some(half)]
        .into_iter()
        .enumerate()
    {
        s.add_source(SourceId(i as u64), SourceKind::Peer)
            .expect("fresh");
        s.set_source_pieces(SourceId(i as u64), have)
            .expect("sized");
    }
    let b = SourceId(1);
    let t = Instant::now();
    let start = Instant::now();
    let mut n = 0u32;
    while let Some(p) = s.next_request(b, t) {
        let _ = black_box(s.on_piece_received(b, p, PIECE, t).expect("in range"));
        n += 1;
    }
    let spent = start.elapsed();
    println!(
        "{pieces:>8} pieces, rarest held elsewhere: {:>8.0} ns per piece ({n} pieces)",
        spent.as_nanos() as f64 / f64::from(n.max(1)),
    );
}

fn main() {
    simulations();
    println!();
    offices();
    println!();
    wests();
    println!();
    println!("scheduling cost (wall clock; request + receive per piece, all peers hold all)");
    for n in [1_000, 10_000, 100_000] {
        cpu(n);
    }
    for n in [1_000, 10_000, 100_000] {
        cpu_worst(n);
    }
}
