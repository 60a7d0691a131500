//! Real-namespace tests of the test bed (root only: ignored unless run as root
//! with `-- --include-ignored`). Each test builds its own run with unique names, so
//! they run in parallel, and every run is torn down even when a test fails.

use std::time::Duration;

use branchline_testbed::baseline::tcp::{TcpOptions, Until, tcp_bulk};
use branchline_testbed::probe::{broadcast_reach, icmp_rtt, udp_rtt};
use branchline_testbed::{Direction, LinkCounters, Testbed, Topology, WanLink, netns};

fn wan(rate_mbit: Option<f64>, delay_ms: f64) -> WanLink {
    WanLink {
        rate_mbit,
        queue_ms: rate_mbit.map(|_| 100.0),
        delay_ms,
        ..Default::default()
    }
}

fn run_netns(tb: &Testbed) -> Vec<String> {
    let prefix = format!("{}-", tb.run_name());
    netns::list_netns()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

#[test]
#[ignore = "needs root: network namespaces"]
fn two_offices_come_up_and_broadcast_stays_in_office() {
    let topo = Topology::two_offices(&["server", "c1", "c2"], &["c3", "c4"], wan(Some(50.0), 0.0));
    let tb = Testbed::up(&topo).unwrap();
    assert_eq!(run_netns(&tb).len(), 7, "router, switch and five hosts");

    // Every host has its address and reaches a host in the other office.
    let out = tb
        .exec("c3", &["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("198.18.2.2/24"), "c3 address: {text}");
    let rtt = udp_rtt(&tb, "c3", "server", 7001, 3, Duration::from_secs(1)).unwrap();
    assert_eq!(rtt.answered, 3);

    let everyone: Vec<String> = ["c1", "c2", "c3", "c4"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    // Directed subnet broadcast from the server's office.
    let bcast = tb.host_broadcast("server").unwrap();
    let got = broadcast_reach(
        &tb,
        "server",
        bcast,
        34329,
        &everyone,
        Duration::from_millis(500),
    )
    .unwrap();
    assert_eq!(got, vec!["c1".to_string(), "c2".to_string()]);
    // Limited broadcast from the branch office (to the other hosts: the
    // sender's own host hears its broadcast too).
    let others: Vec<String> = ["server", "c1", "c2", "c3"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let got = broadcast_reach(
        &tb,
        "c4",
        "255.255.255.255".parse().unwrap(),
        34330,
        &others,
        Duration::from_millis(500),
    )
    .unwrap();
    assert_eq!(got, vec!["c3".to_string()]);
    tb.down().unwrap();
}

#[test]
#[ignore = "needs root: network namespaces"]
fn tcp_over_20mbit_link_and_counters_agree() {
    let topo = Topology::two_offices(&["server"], &["c1"], wan(Some(20.0), 0.0));
    let tb = Testbed::up(&topo).unwrap();
    let before = tb.wan_counters().unwrap();
    let q_before = tb.queue_stats().unwrap();
    let opts = TcpOptions {
        until: Until::Bytes(6 << 20),
        warmup: Duration::from_millis(600),
        congestion: Some("cubic".into()),
        ..Default::default()
    };
    let r = tcp_bulk(&tb, "server", "c1", &opts).unwrap();
    let after = tb.wan_counters().unwrap();
    let q_after = tb.queue_stats().unwrap();
    assert_eq!(r.congestion, "cubic");
    let delta = |dir| {
        LinkCounters::find(&after, "branch", dir).unwrap().bytes
            - LinkCounters::find(&before, "branch", dir).unwrap().bytes
    };
    assert_eq!(r.bytes, 6 << 20);
    eprintln!(
        "20 Mbit/s link: goodput {:.2} Mbit/s overall, {:.2} steady; {:?}",
        r.goodput_mbit, r.steady_mbit, r.elapsed
    );
    // The kernel's shaper guarantees the ceiling: goodput never exceeds the
    // link's rate (a 2 % margin covers the sampling of the steady window).
    // How close TCP gets to it depends on the machine's load, so that
    // figure is printed by `cargo bench -p branchline-testbed`, not asserted.
    assert!(
        r.steady_mbit <= 20.0 * 1.02,
        "steady goodput {:.2} Mbit/s above the 20 Mbit/s shaper",
        r.steady_mbit
    );
    let rates: Vec<u64> = q_after.iter().map(|q| q.rate_bps).collect();
    assert_eq!(rates, vec![20_000_000, 20_000_000], "{q_after:?}");
    let inbound = delta(Direction::Inbound);
    let expected = r.wire_bytes_data_direction();
    let err = (inbound as f64 - expected as f64).abs() / expected as f64;
    eprintln!(
        "inbound counter {inbound} B, expected {expected} B on the wire ({:.3} %)",
        err * 100.0
    );
    assert!(err < 0.02, "counter {inbound} vs {expected}");
    // The bottleneck queue into the branch sent what the counter saw.
    let q = |l: &[branchline_testbed::QueueStats]| {
        l.iter()
            .find(|q| q.dir == Direction::Inbound)
            .unwrap()
            .sent_bytes
    };
    let shaped = q(&q_after) - q(&q_before);
    assert!(
        shaped.abs_diff(inbound) < 20_000,
        "qdisc sent {shaped}, counter {inbound}"
    );
    // The ACK direction carries the sender's received segments.
    let outbound = delta(Direction::Outbound);
    let acks = u64::from(r.sender.segs_in) * r.sender.wire_header_bytes();
    let err = (outbound as f64 - acks as f64).abs() / acks as f64;
    assert!(err < 0.05, "outbound counter {outbound} vs {acks}");
    tb.down().unwrap();
}

#[test]
#[ignore = "needs root: network namespaces"]
fn relay_adds_configured_delay() {
    let topo = Topology::two_offices(&["server"], &["c1", "c2"], wan(Some(100.0), 25.0));
    let tb = Testbed::up(&topo).unwrap();
    // Same office: no relay on the path.
    let lan = udp_rtt(&tb, "c1", "c2", 7002, 5, Duration::from_secs(1)).unwrap();
    // ICMP echo: the kernels answer and stamp the replies, so thread
    // scheduling on a busy machine stays out of the figures. One exchange
    // first: ARP crosses the relay too.
    icmp_rtt(&tb, "c1", "server", 1, Duration::from_secs(1)).unwrap();
    let wan = icmp_rtt(&tb, "c1", "server", 20, Duration::from_secs(1)).unwrap();
    let udp = udp_rtt(&tb, "c1", "server", 7003, 5, Duration::from_secs(1)).unwrap();
    eprintln!(
        "rtt lan {:?}, wan icmp min {:?} median {:?} max {:?}, wan udp median {:?}",
        lan.min, wan.min, wan.median, wan.max, udp.median
    );
    assert!(
        udp.min >= Duration::from_millis(50),
        "UDP too: {:?}",
        udp.min
    );
    // The relay never forwards a frame early: no round trip is shorter than
    // the configured delay. How close the median comes to it depends on the
    // machine's load; `cargo bench -p branchline-testbed` prints it.
    let want = Duration::from_millis(50);
    assert_eq!(wan.answered, 20, "{wan:?}");
    assert!(
        wan.min >= want,
        "a frame left the relay early: {:?}",
        wan.min
    );
    assert!(tb.relays_running());
    let stats = tb.relay_stats();
    assert_eq!(stats.len(), 1);
    assert!(stats[0].1.frames_a_to_b >= 26 && stats[0].1.frames_b_to_a >= 26);
    assert_eq!(stats[0].1.dropped_oversize, 0);
    tb.down().unwrap();
}

#[test]
#[ignore = "needs root: network namespaces"]
fn nothing_left_behind_after_a_failed_test() {
    let topo = Topology::two_offices(&["server"], &["c1"], wan(Some(10.0), 5.0));
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let tb = Testbed::up(&topo).unwrap();
        let child = tb.spawn("c1", &["sleep", "30"]).unwrap();
        tx.send((tb.run_name().to_string(), run_netns(&tb), child))
            .unwrap();
        assert!(tb.relays_running());
        let prefix = format!("{}-", tb.run_name());
        assert!(
            branchline_testbed::relay::live_relays()
                .iter()
                .any(|r| r.starts_with(&prefix))
        );
        panic!("deliberate failure with a test bed up");
    })
    .join();
    assert!(result.is_err(), "the thread should have panicked");
    let (run, names, mut child) = rx.recv().unwrap();
    assert_eq!(names.len(), 4);
    let prefix = format!("{run}-");
    let left: Vec<String> = netns::list_netns()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // The process started in a host was killed by teardown: it has
    // already ended (try_wait), by SIGKILL.
    use std::os::unix::process::ExitStatusExt;
    let status = child
        .try_wait()
        .unwrap()
        .expect("sleep 30 still runs after teardown");
    assert_eq!(status.signal(), Some(9), "{status:?}");
    // No relay thread of that run survives.
    let relays = branchline_testbed::relay::live_relays();
    assert!(
        !relays.iter().any(|r| r.starts_with(&prefix)),
        "relay left: {relays:?}"
    );
}

#[test]
#[ignore = "needs root: network namespaces"]
fn random_loss_drops_about_the_configured_share() {
    let mut link = wan(Some(100.0), 0.0);
    link.loss_percent = 10.0;
    let topo = Topology::two_offices(&["server"], &["c1"], link);
    let tb = Testbed::up(&topo).unwrap();
    // Resolve addresses (ARP) first: its frames cross the lossy link too,
    // and a lost ARP request is only retried after a second, so give it
    // several seconds (a loaded machine slows the retries further).
    let warm = icmp_rtt(&tb, "c1", "server", 40, Duration::from_millis(300)).unwrap();
    assert!(warm.answered >= 1);
    let dst = std::net::SocketAddr::from((tb.host_addr("server").unwrap(), 7004));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = tb
        .spawn_in("server", move || {
            let s = std::net::UdpSocket::bind(("0.0.0.0", 7004)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 64];
            let mut got = 0u32;
            while s.recv_from(&mut buf).is_ok() {
                got += 1;
                s.set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
            }
            got
        })
        .unwrap();
    ready_rx.recv().unwrap();
    // Counted from here: the warm-up's echo requests and ARP crossed the link too.
    let before = tb.wan_counters().unwrap();
    const N: u32 = 4000;
    tb.run_in("c1", move || {
        let s = std::net::UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        for i in 0..N {
            s.send_to(&i.to_be_bytes(), dst).unwrap();
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    })
    .unwrap();
    let got = receiver.join().unwrap().unwrap();
    let lost = f64::from(N - got) / f64::from(N);
    eprintln!(
        "10 % loss configured: {got} of {N} arrived ({:.1} % lost)",
        lost * 100.0
    );
    // Binomial(4000, 0.1): the standard deviation is 0.47 %; allow 5 of them.
    assert!(
        (0.075..=0.125).contains(&lost),
        "lost {:.2} %",
        lost * 100.0
    );
    let c = tb.wan_counters().unwrap();
    let out = LinkCounters::find(&c, "branch", Direction::Outbound)
        .unwrap()
        .packets
        - LinkCounters::find(&before, "branch", Direction::Outbound)
            .unwrap()
            .packets;
    // Lost frames are dropped before the counted interface; a few others (ARP, the
    // receiver's answers are inbound) may cross beside the burst.
    assert!(
        out >= u64::from(got) && out < u64::from(got) + 50,
        "{out} frames counted, {got} arrived"
    );
    tb.down().unwrap();
}

#[test]
#[ignore = "needs root: network namespaces"]
fn leftovers_of_a_killed_process_are_reaped() {
    // A process that has exited stands for a test killed with SIGKILL,
    // whose Drop never ran: its namespaces are still there.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    let dead = child.id();
    let names = [format!("bl{dead}x0-router"), format!("bl{dead}x0-h-c1")];
    for n in &names {
        // Another test process's Testbed::up may reap the fake leftover
        // while `ip netns add` is still creating it; try again then.
        let made = (0..5).any(|_| {
            std::process::Command::new("ip")
                .args(["netns", "add", n])
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap()
                .success()
        });
        assert!(made, "could not create {n}");
    }
    // Any new run (or `branchline-testbed down --stale`) removes them; a
    // test running beside this one may get there first, which is fine.
    branchline_testbed::reap_stale().unwrap();
    for n in &names {
        assert!(!netns::netns_exists(n), "{n} is still there");
    }
}

#[test]
#[ignore = "needs root: network namespaces"]
fn asymmetric_link_shapes_each_direction_at_its_rate() {
    let mut link = wan(Some(40.0), 0.0);
    link.rate_out_mbit = Some(8.0);
    let topo = Topology::two_offices(&["server"], &["c1"], link);
    let tb = Testbed::up(&topo).unwrap();
    let opts = |port| TcpOptions {
        until: Until::Bytes(2 << 20),
        warmup: Duration::from_millis(500),
        congestion: Some("cubic".into()),
        port,
    };
    let up = tcp_bulk(&tb, "c1", "server", &opts(5002)).unwrap();
    let down = tcp_bulk(&tb, "server", "c1", &opts(5003)).unwrap();
    eprintln!(
        "asymmetric 40/8 Mbit/s: out {:.2}, in {:.2} Mbit/s",
        up.steady_mbit, down.steady_mbit
    );
    // Each direction has its own shaper at its own rate, as the kernel
    // reports them; the kernel guarantees neither transfer exceeds its
    // direction's rate (2 % covers the sampling of the steady window). How
    // close each gets to its rate depends on the machine's load, so those
    // figures are printed by `cargo bench -p branchline-testbed`.
    let q = tb.queue_stats().unwrap();
    assert_eq!(q.len(), 2);
    let rate = |dir| q.iter().find(|q| q.dir == dir).unwrap().rate_bps;
    assert_eq!(rate(Direction::Outbound), 8_000_000, "{q:?}");
    assert_eq!(rate(Direction::Inbound), 40_000_000, "{q:?}");
    assert!(
        up.steady_mbit <= 8.0 * 1.02,
        "outbound {:.2}",
        up.steady_mbit
    );
    assert!(
        down.steady_mbit <= 40.0 * 1.02,
        "inbound {:.2}",
        down.steady_mbit
    );
    // Both directions carried their bytes through their own shaper.
    let sent = |dir| q.iter().find(|q| q.dir == dir).unwrap().sent_bytes;
    assert!(sent(Direction::Outbound) >= 2 << 20, "{q:?}");
    assert!(sent(Direction::Inbound) >= 2 << 20, "{q:?}");
    tb.down().unwrap();
}
