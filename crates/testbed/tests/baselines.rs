//! The download baselines on a small topology (root only: ignored unless run with
//! `-- --include-ignored`; the BitTorrent one also needs aria2, which CI installs). They check real outcomes: every client gets the
//! whole package (checked byte for byte) and the WAN link carries what the
//! method implies.

use std::time::Duration;

use branchline_testbed::baseline::{DownloadOptions, bittorrent, http};
use branchline_testbed::{Direction, Testbed, Topology, WanLink};

fn topo() -> Topology {
    Topology::two_offices(
        &["origin"],
        &["c1", "c2", "c3"],
        WanLink {
            rate_mbit: Some(50.0),
            queue_ms: Some(50.0),
            delay_ms: 5.0,
            ..Default::default()
        },
    )
}

fn inbound(r: &branchline_testbed::baseline::DownloadReport) -> f64 {
    r.wan
        .iter()
        .find(|w| w.link == "branch" && w.dir == Direction::Inbound)
        .unwrap()
        .packages
}

#[test]
#[ignore = "needs root: network namespaces"]
fn http_baseline_sends_one_copy_per_client_over_the_wan() {
    let tb = Testbed::up(&topo()).unwrap();
    let opts = DownloadOptions {
        size: 2 << 20,
        timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let r = http::run(&tb, &opts).unwrap();
    eprintln!("{r}");
    assert_eq!(r.clients.len(), 3);
    // Three copies plus headers (about 5 %) cross the WAN link.
    let x = inbound(&r);
    assert!((3.0..3.3).contains(&x), "WAN carried {x:.2} packages");
    tb.down().unwrap();
}

#[test]
#[ignore = "needs root: network namespaces"]
fn bittorrent_baseline_completes_with_aria2() {
    assert!(
        bittorrent::aria2_available(),
        "aria2c is not installed: install the Debian package aria2 (.ci/apt-packages.txt)"
    );
    let tb = Testbed::up(&topo()).unwrap();
    let opts = DownloadOptions {
        size: 2 << 20,
        timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let r = bittorrent::run(&tb, &opts).unwrap();
    eprintln!("{r}");
    assert_eq!(r.clients.len(), 3);
    // At least one whole copy had to cross; the swarm shares the rest.
    let x = inbound(&r);
    assert!(x >= 1.0, "WAN carried {x:.2} packages");
    tb.down().unwrap();
}
