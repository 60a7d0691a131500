//! Property tests: arbitrary event sequences never panic, and the window always stays within
//! the bounds the floor, the ceiling and the minimum window imply.

use std::sync::Arc;
use std::time::{Duration, Instant};

use branchline_ledbat::{Ledbat, LedbatConfig, LinkPolicy};
use proptest::prelude::*;
use quinn_proto::congestion::Controller;

#[derive(Debug, Clone)]
enum Op {
    /// An ACK frame `dt` µs after the last event, for `n` packets of `bytes`, sent `rtt` µs ago.
    Ack {
        dt: u64,
        rtt: u64,
        n: u8,
        bytes: u64,
        app_limited: bool,
    },
    /// A loss of a packet sent `age` µs ago.
    Loss {
        dt: u64,
        age: u64,
        persistent: bool,
        lost: u64,
    },
    Mtu(u16),
    Ceiling(Option<u64>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u64..200_000, 0u64..5_000_000, 0u8..8, 0u64..70_000, any::<bool>()).prop_map(
            |(dt, rtt, n, bytes, app_limited)| Op::Ack { dt, rtt, n, bytes, app_limited }
        ),
        2 => (0u64..200_000, 0u64..5_000_000, any::<bool>(), 0u64..100_000)
            .prop_map(|(dt, age, persistent, lost)| Op::Loss { dt, age, persistent, lost }),
        1 => any::<u16>().prop_map(Op::Mtu),
        1 => proptest::option::of(50_000u64..100_000_000).prop_map(Op::Ceiling),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn window_stays_within_bounds(
        ops in proptest::collection::vec(op(), 1..400),
        draft in any::<bool>(),
        ceiling in proptest::option::of(50_000u64..100_000_000),
        floor in 0u64..50_000,
    ) {
        let base = if draft { LedbatConfig::draft() } else { LedbatConfig::default() };
        let config = LedbatConfig { ceiling, floor, ..base };
        config.validate().unwrap();
        let link = Arc::new(LinkPolicy::new(ceiling, floor).unwrap());
        let start = Instant::now() + Duration::from_secs(10);
        let mut now = start;
        let mut mtu: u16 = 1200;
        let mut c = Ledbat::new(Arc::new(config), link.clone(), now, mtu);
        for op in ops {
            match op {
                Op::Ack { dt, rtt, n, bytes, app_limited } => {
                    now += Duration::from_micros(dt);
                    let sent = now.checked_sub(Duration::from_micros(rtt)).unwrap_or(start);
                    for _ in 0..n {
                        c.on_ack_sample(now, sent, bytes);
                    }
                    c.end_acks(now, app_limited);
                }
                Op::Loss { dt, age, persistent, lost } => {
                    now += Duration::from_micros(dt);
                    let sent = now.checked_sub(Duration::from_micros(age)).unwrap_or(start);
                    c.on_congestion_event(now, sent, persistent, lost);
                }
                Op::Mtu(m) => {
                    mtu = m;
                    c.on_mtu_update(m);
                }
                Op::Ceiling(ceil) => {
                    // Rejected when below the floor; then nothing changes.
                    let _ = link.set_ceiling(ceil);
                }
            }
            let w = c.window();
            let rtt = c.stats().smoothed_rtt.unwrap_or(Duration::from_millis(333)).as_secs_f64();
            let min = 2 * u64::from(mtu.max(1));
            let lo = min.max((floor as f64 * rtt) as u64);
            prop_assert!(w >= lo.min(1 << 30), "window {} below floor {}", w, lo);
            if let Some(share) = link.ceiling_share() {
                let hi = lo.max((share as f64 * rtt) as u64 + 1);
                prop_assert!(w <= hi, "window {} above ceiling window {}", w, hi);
            }
            prop_assert!(w <= 1 << 30);
            prop_assert_eq!(c.metrics().congestion_window, w);
        }
    }
}
