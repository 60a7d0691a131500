//! Nested offices (`parent`): which links traffic between offices crosses,
//! seen in the link counters of `topologies/four-offices.toml`, and the
//! validation of `parent`.
//!
//! The namespace test needs root; it is `#[ignore]`d so that ordinary users
//! see it as ignored. As root: `cargo test -p branchline-testbed --
//! --include-ignored`.

use std::path::Path;
use std::time::Duration;

use branchline_testbed::baseline::tcp::{TcpOptions, Until, tcp_bulk};
use branchline_testbed::probe::icmp_rtt;
use branchline_testbed::{Direction, LinkCounters, Testbed, Topology, netns};

fn four_offices() -> Topology {
    Topology::from_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/four-offices.toml"))
        .unwrap()
}

/// Error text of a topology that must be refused.
fn refused(text: &str) -> String {
    match Topology::from_toml(text) {
        Ok(_) => panic!("accepted a topology it should refuse:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn office(name: &str, net: u8, parent: Option<&str>) -> String {
    let parent = parent.map_or(String::new(), |p| format!("parent = \"{p}\"\n"));
    format!(
        "[[office]]\nname = \"{name}\"\n{parent}subnet = \"198.18.{net}.0/24\"\nhosts = [\"{name}1\"]\nwan = {{ rate_mbit = 10 }}\n\n"
    )
}

#[test]
fn parent_validation_names_the_office_and_the_field() {
    // Accepted: a chain, in any order in the file.
    let ok =
        office("deep", 3, Some("north")) + &office("north", 2, Some("hq")) + &office("hq", 1, None);
    let t = Topology::from_toml(&ok).unwrap();
    assert_eq!(t.offices[0].parent.as_deref(), Some("north"));

    // Unknown parent.
    let e = refused(&(office("hq", 1, None) + &office("north", 2, Some("nowhere"))));
    assert!(
        e.contains("office \"north\"")
            && e.contains("parent = \"nowhere\"")
            && e.contains("not an office"),
        "{e}"
    );
    assert!(e.contains("hq, north"), "lists the offices there are: {e}");

    // An office that is its own parent.
    let e = refused(&(office("hq", 1, None) + &office("loop", 2, Some("loop"))));
    assert!(
        e.contains("office \"loop\"") && e.contains("parent = \"loop\"") && e.contains("itself"),
        "{e}"
    );

    // A cycle of two and one of three (nothing in either reaches the hub).
    let e =
        refused(&(office("hq", 1, None) + &office("a", 2, Some("b")) + &office("b", 3, Some("a"))));
    assert!(
        e.contains("office \"a\"") && e.contains("parent chain a -> b -> a") && e.contains("cycle"),
        "{e}"
    );
    let e = refused(
        &(office("x", 1, Some("z")) + &office("y", 2, Some("x")) + &office("z", 3, Some("y"))),
    );
    assert!(
        e.contains("parent chain x -> z -> y -> x is a cycle"),
        "{e}"
    );
    // An office hanging below a cycle: the cycle is reported.
    let e = refused(
        &(office("leaf", 4, Some("a")) + &office("a", 2, Some("b")) + &office("b", 3, Some("a"))),
    );
    assert!(e.contains("parent chain a -> b -> a is a cycle"), "{e}");

    // Wrong type: parent is a name, not a table or a number.
    let e = refused(&office("hq", 1, None).replace("name = \"hq\"", "name = \"hq\"\nparent = 3"));
    assert!(e.contains("parent"), "{e}");

    // An office with children needs an address for its own router: a /30
    // has two, for the hub's router and one host ...
    let small = office("hq", 1, None).replace("198.18.1.0/24", "198.18.1.0/30");
    Topology::from_toml(&(small.clone() + &office("north", 2, None))).unwrap();
    // ... and none left for a router to the offices behind it.
    let e = refused(&(small + &office("north", 2, Some("hq"))));
    assert!(
        e.contains("office \"hq\"") && e.contains("child offices"),
        "{e}"
    );
}

/// Bytes that crossed `link` in `dir` between two readings.
fn delta(before: &[LinkCounters], after: &[LinkCounters], link: &str, dir: Direction) -> u64 {
    LinkCounters::find(after, link, dir).unwrap().bytes
        - LinkCounters::find(before, link, dir).unwrap().bytes
}

/// What each link carried, each direction, while `f` ran.
fn measure(tb: &Testbed, f: impl FnOnce()) -> Vec<(String, Direction, u64)> {
    let before = tb.wan_counters().unwrap();
    f();
    let after = tb.wan_counters().unwrap();
    let mut v = Vec::new();
    for link in ["north", "south", "deep"] {
        for dir in [Direction::Inbound, Direction::Outbound] {
            v.push((link.to_string(), dir, delta(&before, &after, link, dir)));
        }
    }
    v
}

const PAYLOAD: u64 = 1 << 20;
/// A link the traffic does not cross may still see a few stray frames
/// (an ARP broadcast floods its office's bridge, a frame or two of 42
/// bytes); a megabyte of TCP is some 1.05 MB of frames.
const STRAY: u64 = 2_000;

/// Pings (also warming the routers' ARP caches), then 1 MiB of TCP from
/// `from` to `to`; returns what each link carried during both.
fn traffic(tb: &Testbed, from: &str, to: &str) -> Vec<(String, Direction, u64)> {
    let warm = icmp_rtt(tb, from, to, 3, Duration::from_secs(2)).unwrap();
    assert_eq!(warm.answered, 3, "{from} reaches {to}");
    measure(tb, || {
        let rtt = icmp_rtt(tb, from, to, 10, Duration::from_secs(2)).unwrap();
        assert_eq!(rtt.answered, 10, "pings from {from} to {to}");
        let opts = TcpOptions {
            until: Until::Bytes(PAYLOAD),
            warmup: Duration::ZERO,
            congestion: Some("cubic".into()),
            ..Default::default()
        };
        let r = tcp_bulk(tb, from, to, &opts).unwrap();
        assert_eq!(r.bytes, PAYLOAD);
    })
}

/// Asserts that `crossed` links carried the data out of the sender's side
/// (`data_dir` per link) and the ACKs back, and that the other links
/// carried next to nothing.
fn assert_links(what: &str, m: &[(String, Direction, u64)], crossed: &[(&str, Direction)]) {
    eprintln!("{what}: {m:?}");
    for (link, dir, b) in m {
        match crossed.iter().find(|(l, _)| l == link) {
            Some((_, data_dir)) => {
                let acks = if data_dir == dir { 0 } else { 1 };
                if acks == 0 {
                    assert!(
                        (PAYLOAD..PAYLOAD * 12 / 10).contains(b),
                        "{what}: {link} {dir} carried {b} bytes, want the payload plus headers"
                    );
                } else {
                    assert!(
                        (5_000..PAYLOAD / 5).contains(b),
                        "{what}: {link} {dir} carried {b} bytes, want ACKs and echo replies"
                    );
                }
            }
            None => assert!(
                *b < STRAY,
                "{what}: {link} {dir} carried {b} bytes, but the traffic does not cross it"
            ),
        }
    }
}

#[test]
#[ignore = "needs root: network namespaces"]
fn nested_offices_cross_only_the_links_between_them() {
    use Direction::{Inbound, Outbound};
    let tb = Testbed::up(&four_offices()).unwrap();
    let prefix = format!("{}-", tb.run_name());
    let ours = || -> Vec<String> {
        netns::list_netns()
            .unwrap()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect()
    };
    let names = ours();
    assert_eq!(
        names.len(),
        14 + 4,
        "14 hosts, hub, switch, central's and north's routers: {names:?}"
    );
    assert!(
        names.contains(&format!("{prefix}r-central"))
            && names.contains(&format!("{prefix}r-north"))
    );

    // Child and parent: the child's link only.
    let m = traffic(&tb, "d1", "n1");
    assert_links("d1 to n1", &m, &[("deep", Outbound)]);
    // Grandchild and the Central Office: its own link and its parent's.
    let m = traffic(&tb, "d1", "hq1");
    assert_links("d1 to hq1", &m, &[("deep", Outbound), ("north", Outbound)]);
    // The other way: inbound, into each office behind the links.
    let m = traffic(&tb, "hq2", "d2");
    assert_links("hq2 to d2", &m, &[("deep", Inbound), ("north", Inbound)]);
    // Siblings: both of their links.
    let m = traffic(&tb, "n1", "s1");
    assert_links("n1 to s1", &m, &[("north", Outbound), ("south", Inbound)]);
    // Parent to child: again the child's link only.
    let m = traffic(&tb, "n2", "d3");
    assert_links("n2 to d3", &m, &[("deep", Inbound)]);
    // Inside one office: no link at all.
    let m = traffic(&tb, "d1", "d2");
    assert_links("d1 to d2", &m, &[]);

    assert!(tb.relays_running());
    tb.down().unwrap();
    assert!(ours().is_empty(), "every namespace is gone: {:?}", ours());
}
