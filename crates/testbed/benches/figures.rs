//! Figures of the test bed and the baselines, printed (not asserted):
//!
//! ```sh
//! CARGO_TARGET_DIR=/work/targets/testbed cargo bench -p branchline-testbed   # as root
//! ```
//!
//! 1. relay accuracy: UDP round trips over a link with 25 ms each way;
//! 2. relay capacity: TCP over a 1000 Mbit/s link with 10 ms each way;
//! 3. TCP bulk over the default 20 Mbit/s link, cubic and bbr, and over an
//!    asymmetric 40/8 Mbit/s link;
//! 4. the HTTP and BitTorrent baselines of an 8 MiB package to three
//!    branch clients (`topologies/two-offices.toml`).

use std::time::Duration;

use branchline_testbed::baseline::tcp::{TcpOptions, Until, tcp_bulk};
use branchline_testbed::baseline::{DownloadOptions, bittorrent, http};
use branchline_testbed::probe::{icmp_rtt, udp_rtt};
use branchline_testbed::{Testbed, Topology, WanLink, require_root};

fn link(rate: f64, queue_ms: f64, delay_ms: f64) -> WanLink {
    WanLink {
        rate_mbit: Some(rate),
        queue_ms: Some(queue_ms),
        delay_ms,
        ..Default::default()
    }
}

fn main() -> Result<(), branchline_testbed::Error> {
    if !require_root("testbed benchmarks") {
        return Ok(());
    }

    let tb = Testbed::up(&Topology::two_offices(
        &["server"],
        &["c1"],
        link(100.0, 100.0, 25.0),
    ))?;
    // One exchange first: ARP crosses the relay too and would add a round trip.
    icmp_rtt(&tb, "c1", "server", 2, Duration::from_secs(1))?;
    let icmp = icmp_rtt(&tb, "c1", "server", 200, Duration::from_secs(1))?;
    let udp = udp_rtt(&tb, "c1", "server", 7100, 200, Duration::from_secs(1))?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "relay accuracy (25 ms each way, want 50 ms round trip): ICMP (kernel-stamped) min {:.2} median {:.2} max {:.2} ms; \
         UDP echo between threads min {:.2} median {:.2} max {:.2} ms",
        ms(icmp.min),
        ms(icmp.median),
        ms(icmp.max),
        ms(udp.min),
        ms(udp.median),
        ms(udp.max)
    );
    tb.down()?;

    let tb = Testbed::up(&Topology::two_offices(
        &["server"],
        &["c1"],
        link(1000.0, 20.0, 10.0),
    ))?;
    let opts = TcpOptions {
        until: Until::Bytes(256 << 20),
        congestion: Some("cubic".into()),
        ..Default::default()
    };
    let r = tcp_bulk(&tb, "server", "c1", &opts)?;
    let relay = tb.relay_stats();
    println!(
        "relay capacity (1000 Mbit/s, 10 ms each way, cubic): {:.1} Mbit/s after warm-up; relay drops {:?}",
        r.steady_mbit,
        relay
            .first()
            .map(|(_, s)| (s.dropped_full, s.dropped_send, s.dropped_oversize))
    );
    tb.down()?;

    let default = Topology::from_toml(include_str!("../topologies/two-offices.toml"))?;
    for cc in ["cubic", "bbr"] {
        let tb = Testbed::up(&default)?;
        let opts = TcpOptions {
            until: Until::Bytes(8 << 20),
            congestion: Some(cc.into()),
            ..Default::default()
        };
        let r = tcp_bulk(&tb, "origin", "c1", &opts)?;
        let q = tb.queue_stats()?;
        println!(
            "tcp 20 Mbit/s, 100 ms queue, 20 ms each way, {cc}: {:.2} Mbit/s after warm-up ({:.2} overall), \
             min RTT {:.1} ms, smoothed RTT {:.1} ms, {} retransmitted segments, bottleneck drops {}",
            r.steady_mbit,
            r.goodput_mbit,
            r.sender.min_rtt as f64 / 1e3,
            r.sender.rtt as f64 / 1e3,
            r.sender.total_retrans,
            q.iter().map(|q| q.drops).sum::<u64>()
        );
        tb.down()?;
    }

    // An asymmetric link: 40 Mbit/s into the office, 8 Mbit/s out of it.
    let mut asym = link(40.0, 50.0, 10.0);
    asym.rate_out_mbit = Some(8.0);
    let tb = Testbed::up(&Topology::two_offices(&["server"], &["c1"], asym))?;
    let opts = |port| TcpOptions {
        until: Until::Bytes(8 << 20),
        congestion: Some("cubic".into()),
        port,
        ..Default::default()
    };
    let up = tcp_bulk(&tb, "c1", "server", &opts(5102))?;
    let down = tcp_bulk(&tb, "server", "c1", &opts(5103))?;
    println!(
        "asymmetric link 40 Mbit/s in, 8 Mbit/s out, 10 ms each way, cubic: out {:.2} Mbit/s, in {:.2} Mbit/s after warm-up",
        up.steady_mbit, down.steady_mbit
    );
    tb.down()?;

    let opts = DownloadOptions::default();
    let tb = Testbed::up(&default)?;
    println!("{}", http::run(&tb, &opts)?);
    tb.down()?;
    if bittorrent::aria2_available() {
        let tb = Testbed::up(&default)?;
        println!("{}", bittorrent::run(&tb, &opts)?);
        tb.down()?;
    } else {
        println!("bittorrent: skipped, aria2c is not installed (Debian package aria2)");
    }
    Ok(())
}
