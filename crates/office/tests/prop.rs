//! Property tests: the file round trip, and parse never panics.

use std::net::{Ipv4Addr, Ipv6Addr};

use branchline_office::{HoursWindow, LinkPolicy, OfficeKind, OfficeSpec, TopologyFile, Tree};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;

fn hours() -> impl Strategy<Value = HoursWindow> {
    (0u16..1440, 1u16..1440).prop_map(|(s, d)| HoursWindow {
        start_min: s,
        end_min: (s + d) % 1440,
    })
}

fn wan() -> impl Strategy<Value = LinkPolicy> {
    (
        proptest::option::of(1u64..=i64::MAX as u64),
        proptest::option::of(hours()),
        1u32..=u32::MAX,
    )
        .prop_map(|(c, h, m)| LinkPolicy {
            ceiling_bytes_per_s: c,
            allowed_hours: h,
            max_transfers: m,
        })
}

fn office() -> impl Strategy<Value = OfficeSpec> {
    (
        "[A-Za-z0-9_.-]{1,20}",
        prop_oneof![
            Just(OfficeKind::Default),
            Just(OfficeKind::Wifi),
            Just(OfficeKind::Vpn)
        ],
        prop_oneof![Just(LinkPolicy::default()), wan()],
        proptest::option::of("[0-9a-f]{32}"),
        any::<bool>(),
        0usize..4,
        any::<usize>(),
    )
        .prop_map(|(name, kind, wan, rvp, auto, nsub, parent_seed)| {
            let mut o = OfficeSpec::new(name, None);
            o.kind = kind;
            o.wan = wan;
            o.rvp_override = rvp;
            o.auto = auto;
            // Subnets and parents are filled in per position below.
            o.subnets = vec![IpNet::V4(Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).unwrap()); nsub];
            o.parent = Some(parent_seed.to_string());
            o
        })
}

/// Valid files: unique names, a tree (parents before children), disjoint subnets.
fn file() -> impl Strategy<Value = TopologyFile> {
    proptest::collection::vec(office(), 1..12).prop_map(|mut offices| {
        for (i, o) in offices.iter_mut().enumerate() {
            o.name = format!("{}-{i}", o.name.chars().take(40).collect::<String>());
        }
        let names: Vec<String> = offices.iter().map(|o| o.name.clone()).collect();
        for (i, o) in offices.iter_mut().enumerate() {
            let seed: usize = o.parent.as_deref().unwrap_or("0").parse().unwrap_or(0);
            o.parent = (i > 0).then(|| names[seed % i].clone());
            let n = o.subnets.len();
            o.subnets = (0..n)
                .map(|j| {
                    let k = (i * 4 + j) as u32;
                    if j % 2 == 0 {
                        IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (k << 8)), 24).unwrap())
                    } else {
                        IpNet::V6(
                            Ipv6Net::new(
                                Ipv6Addr::from(0xfd00u128 << 112 | u128::from(k) << 64),
                                64,
                            )
                            .unwrap(),
                        )
                    }
                })
                .collect();
        }
        TopologyFile { offices }
    })
}

proptest! {
    #[test]
    fn round_trip(f in file()) {
        let text = f.to_toml();
        prop_assert_eq!(TopologyFile::parse(&text), Ok(f.clone()), "{}", text);
        let t = Tree::from_file(&f).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(t.export(), f);
    }

    #[test]
    fn parse_never_panics(s in any::<String>()) {
        let _ = TopologyFile::parse(&s);
        let _ = Tree::from_toml(&s);
    }

    #[test]
    fn parse_never_panics_on_near_valid_text(f in file(), cut in any::<usize>(), junk in "[\\[\\]=\"a-z0-9:./ \n-]{0,12}") {
        let text = f.to_toml();
        let mut at = cut % (text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let mangled = format!("{}{}{}", &text[..at], junk, &text[at..]);
        let _ = TopologyFile::parse(&mangled);
        let mut t = Tree::with_central(vec![]);
        let _ = t.apply_toml(&mangled);
    }
}
