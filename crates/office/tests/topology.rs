//! Topology file, tree validation, lookup, automatic offices and apply.

use std::net::IpAddr;

use branchline_office::{
    HoursWindow, LinkPolicy, MAX_AUTO_OFFICES, OfficeKind, OfficeSpec, TopologyError, TopologyFile,
    Tree,
};

const SAMPLE: &str = r#"
[[office]]
name = "central"
subnets = ["198.18.0.0/24"]

[[office]]
name = "west"
parent = "central"
type = "wifi"
subnets = ["198.18.20.0/24", "fd00:20::/64"]
rvp = "00112233445566778899aabbccddeeff"

[office.wan]
ceiling_mbit = 2.0
hours = "22:00-06:00"
max_transfers = 2

[[office]]
name = "west-lab"
parent = "west"
type = "vpn"
subnets = ["198.18.30.0/24"]
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn err_of(text: &str) -> TopologyError {
    match Tree::from_toml(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

#[test]
fn parse_sample() {
    let f = TopologyFile::parse(SAMPLE).unwrap();
    assert_eq!(f.offices.len(), 3);
    let w = &f.offices[1];
    assert_eq!(w.name, "west");
    assert_eq!(w.parent.as_deref(), Some("central"));
    assert_eq!(w.kind, OfficeKind::Wifi);
    assert_eq!(w.subnets.len(), 2);
    assert_eq!(w.wan.ceiling_bytes_per_s, Some(250_000));
    assert_eq!(
        w.wan.allowed_hours,
        Some(HoursWindow::parse("22:00-06:00").unwrap())
    );
    assert_eq!(w.wan.max_transfers, 2);
    assert_eq!(
        w.rvp_override_key(),
        Some([
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff
        ])
    );
    assert!(!w.auto);
    assert_eq!(f.offices[0].wan, LinkPolicy::default());
    assert_eq!(f.offices[2].kind, OfficeKind::Vpn);
}

#[test]
fn round_trip() {
    let f = TopologyFile::parse(SAMPLE).unwrap();
    let text = f.to_toml();
    assert_eq!(TopologyFile::parse(&text).unwrap(), f, "{text}");
    let t = Tree::from_file(&f).unwrap();
    assert_eq!(t.export(), f);
    // Bytes/s form, auto flag, empty subnets.
    let g = TopologyFile::parse(
        "[[office]]\nname = \"c\"\nsubnets = []\nauto = true\n[office.wan]\nceiling_bytes_per_s = 1_000\n",
    )
    .unwrap();
    assert_eq!(g.offices[0].wan.ceiling_bytes_per_s, Some(1000));
    assert!(g.offices[0].auto);
    assert_eq!(TopologyFile::parse(&g.to_toml()).unwrap(), g);
}

#[test]
fn tree_shape() {
    let t = Tree::from_toml(SAMPLE).unwrap();
    let c = t.find("central").unwrap();
    let w = t.find("west").unwrap();
    let l = t.find("west-lab").unwrap();
    assert_eq!(t.root(), c);
    assert_eq!(t.len(), 3);
    assert_eq!(t.parent(c), None);
    assert_eq!(t.parent(l), Some(w));
    assert_eq!(t.children(c), vec![w]);
    assert_eq!(t.children(w), vec![l]);
    assert_eq!(t.path_to_root(l), vec![l, w, c]);
    assert_eq!(t.depth(l), 2);
    assert_eq!(t.depth(c), 0);
    assert_eq!(t.office(w).name, "west");
    assert_eq!(t.iter().count(), 3);
}

#[test]
fn children_before_parents_are_accepted_and_exported_parents_first() {
    let text = r#"
[[office]]
name = "leaf"
parent = "mid"
[[office]]
name = "mid"
parent = "root"
[[office]]
name = "root"
"#;
    let t = Tree::from_toml(text).unwrap();
    let names: Vec<_> = t.export().offices.into_iter().map(|o| o.name).collect();
    assert_eq!(names, ["root", "mid", "leaf"]);
    Tree::from_file(&t.export()).unwrap();
}

#[test]
fn lookup_finds_the_containing_subnet_of_any_length() {
    // Nested subnets are refused (see error_overlap), so the longest-prefix match is the one
    // subnet holding the address; prefixes of every length mix in one tree.
    let t = Tree::from_toml(
        r#"
[[office]]
name = "hq"
subnets = ["10.0.0.0/8", "fd00::/16"]
[[office]]
name = "site"
parent = "hq"
subnets = ["11.1.0.0/16", "fd01:1::/48"]
[[office]]
name = "floor"
parent = "site"
subnets = ["11.2.2.0/24", "11.2.3.7/32", "0.0.0.0/8"]
"#,
    )
    .unwrap();
    let n = |name| t.find(name);
    assert_eq!(t.lookup(ip("11.2.2.9")), n("floor"));
    assert_eq!(t.lookup(ip("11.2.3.7")), n("floor"));
    assert_eq!(t.lookup(ip("0.1.2.3")), n("floor"));
    assert_eq!(t.lookup(ip("11.2.3.8")), None);
    assert_eq!(t.lookup(ip("11.1.3.8")), n("site"));
    assert_eq!(t.lookup(ip("10.9.9.9")), n("hq"));
    assert_eq!(t.lookup(ip("12.0.0.1")), None);
    assert_eq!(t.lookup(ip("fd01:1::5")), n("site"));
    assert_eq!(t.lookup(ip("fd00:2::5")), n("hq"));
    assert_eq!(t.lookup(ip("fe80::1")), None);
    // IPv4-mapped IPv6 is looked up as IPv4.
    assert_eq!(t.lookup(ip("::ffff:11.2.2.9")), n("floor"));
}

#[test]
fn lookup_picks_the_most_specific_auto_or_declared_office() {
    // A declared /28 inside what would be an auto /24: the auto office narrows around it and
    // each address lands in the most specific office that holds it.
    let mut t = Tree::from_toml(
        "[[office]]\nname = \"c\"\n[[office]]\nname = \"tiny\"\nparent = \"c\"\nsubnets = [\"10.1.2.0/28\"]\n",
    )
    .unwrap();
    let wide = t.place(ip("10.1.2.200"));
    assert_eq!(t.lookup(ip("10.1.2.3")), t.find("tiny"));
    assert_eq!(t.lookup(ip("10.1.2.129")), Some(wide));
    assert_eq!(t.lookup(ip("10.1.2.127")), None);
}

#[test]
fn auto_offices_v4_v6() {
    let mut t = Tree::with_central(vec!["198.18.0.0/24".parse().unwrap()]);
    assert_eq!(t.office(t.root()).name, "central");
    assert_eq!(t.place(ip("198.18.0.7")), t.root());
    let a = t.place(ip("10.1.2.3"));
    assert_eq!(t.office(a).name, "auto-10.1.2.0-24");
    assert!(t.office(a).auto);
    assert_eq!(t.office(a).parent.as_deref(), Some("central"));
    assert_eq!(t.parent(a), Some(t.root()));
    assert_eq!(t.place(ip("10.1.2.200")), a);
    assert_eq!(t.lookup(ip("10.1.2.200")), Some(a));
    let b = t.place(ip("2001:db8:1:2:3::4"));
    assert_eq!(t.office(b).name, "auto-2001_db8_1_2__-64");
    assert_eq!(
        t.office(b).subnets,
        vec!["2001:db8:1:2::/64".parse().unwrap()]
    );
    assert_eq!(t.place(ip("2001:db8:1:2::99")), b);
    assert_eq!(t.auto_count(), 2);
    // The export is a valid file.
    let e = t.export();
    assert_eq!(Tree::from_file(&e).unwrap().export(), e);
}

#[test]
fn auto_office_narrows_around_a_smaller_declared_subnet() {
    let mut t = Tree::from_toml(
        "[[office]]\nname = \"c\"\n[[office]]\nname = \"tiny\"\nparent = \"c\"\nsubnets = [\"10.1.2.0/28\"]\n",
    )
    .unwrap();
    let a = t.place(ip("10.1.2.200"));
    assert_eq!(t.office(a).name, "auto-10.1.2.128-25");
    let b = t.place(ip("10.1.2.20"));
    assert_eq!(t.office(b).name, "auto-10.1.2.16-28");
    assert_eq!(t.lookup(ip("10.1.2.3")), t.find("tiny"));
    Tree::from_file(&t.export()).unwrap();
}

#[test]
fn auto_office_bound() {
    let mut t = Tree::with_central(vec![]);
    for i in 0..MAX_AUTO_OFFICES as u32 {
        let a = std::net::Ipv4Addr::from(0x0a00_0000 + (i << 8) + 1);
        let idx = t.place(a.into());
        assert_ne!(idx, t.root());
    }
    assert_eq!(t.auto_count(), MAX_AUTO_OFFICES);
    assert_eq!(t.place(ip("192.0.2.1")), t.root());
    assert_eq!(t.len(), MAX_AUTO_OFFICES + 1);
    // Existing ones are still found.
    assert_ne!(t.place(ip("10.0.0.9")), t.root());
}

#[test]
fn apply_is_idempotent_and_keeps_uncovered_auto_offices() {
    let mut t = Tree::with_central(vec![]);
    let kept = t.place(ip("10.7.7.7"));
    let covered = t.place(ip("198.18.20.99"));
    let named = t.place(ip("172.16.0.1"));
    assert_eq!(t.office(kept).name, "auto-10.7.7.0-24");
    assert_eq!(t.office(covered).name, "auto-198.18.20.0-24");
    let mut file = TopologyFile::parse(SAMPLE).unwrap();
    // Declaring an auto office's name takes it over.
    let mut o = OfficeSpec::new("auto-172.16.0.0-24", Some("central".into()));
    o.subnets = vec!["172.16.0.0/16".parse().unwrap()];
    file.offices.push(o);

    t.apply(&file).unwrap();
    let first = t.export();
    t.apply(&file).unwrap();
    assert_eq!(t.export(), first);
    t.apply_toml(&file.to_toml()).unwrap();
    assert_eq!(t.export(), first);

    let k = t
        .find("auto-10.7.7.0-24")
        .expect("uncovered auto office kept");
    assert!(t.office(k).auto);
    assert_eq!(t.parent(k), Some(t.root()));
    assert_eq!(t.lookup(ip("10.7.7.1")), Some(k));
    assert_eq!(t.find("auto-198.18.20.0-24"), None);
    assert_eq!(t.lookup(ip("198.18.20.99")), t.find("west"));
    let d = t.find("auto-172.16.0.0-24").unwrap();
    assert!(!t.office(d).auto);
    assert_eq!(t.lookup(ip("172.16.9.9")), Some(d));
    assert_eq!(t.len(), 5);
    let _ = named;
    // Applying its own export changes nothing.
    t.apply(&first).unwrap();
    assert_eq!(t.export(), first);
}

#[test]
fn apply_error_leaves_tree_unchanged() {
    let mut t = Tree::from_toml(SAMPLE).unwrap();
    t.place(ip("10.0.0.1"));
    let before = t.export();
    let bad = format!("{SAMPLE}\n[[office]]\nname = \"x\"\nparent = \"nowhere\"\n");
    let e = t.apply_toml(&bad).unwrap_err();
    assert_eq!(e.field, "parent");
    assert_eq!(e.line, Some(bad.lines().count()));
    assert_eq!(t.export(), before);
    let mut f = TopologyFile::parse(SAMPLE).unwrap();
    f.offices[2].parent = Some("west-lab".into());
    assert!(t.apply(&f).is_err());
    assert_eq!(t.export(), before);
}

fn check(e: &TopologyError, office: Option<&str>, field: &str, line: usize, needle: &str) {
    assert_eq!(e.office.as_deref(), office, "{e}");
    assert_eq!(e.field, field, "{e}");
    assert_eq!(e.line, Some(line), "{e}");
    assert!(e.message.contains(needle), "{e:?} lacks {needle:?}");
    let shown = e.to_string();
    assert!(shown.starts_with(&format!("line {line}: ")), "{shown}");
    assert!(shown.contains(&format!("field \"{field}\"")), "{shown}");
    if let Some(o) = office {
        assert!(shown.contains(&format!("office \"{o}\"")), "{shown}");
    }
}

#[test]
fn error_unknown_parent() {
    let e = err_of(
        "[[office]]\nname = \"central\"\n[[office]]\nname = \"west\"\nparent = \"nowhere\"\n",
    );
    check(&e, Some("west"), "parent", 5, "unknown office \"nowhere\"");
    assert_eq!(
        e.to_string(),
        "line 5: office \"west\", field \"parent\": unknown office \"nowhere\""
    );
    let f = TopologyFile::parse(
        "[[office]]\nname = \"central\"\n[[office]]\nname = \"west\"\nparent = \"nowhere\"\n",
    )
    .unwrap();
    let e = Tree::from_file(&f).unwrap_err();
    assert_eq!(e.line, None);
    assert_eq!(
        e.to_string(),
        "office \"west\", field \"parent\": unknown office \"nowhere\""
    );
}

#[test]
fn error_cycle() {
    let e = err_of(
        "[[office]]\nname = \"c\"\n[[office]]\nname = \"a\"\nparent = \"b\"\n[[office]]\nname = \"b\"\nparent = \"a\"\n",
    );
    check(&e, Some("a"), "parent", 5, "cycle: a -> b -> a");
    let e = err_of("[[office]]\nname = \"c\"\n[[office]]\nname = \"me\"\nparent = \"me\"\n");
    check(&e, Some("me"), "parent", 5, "cycle: me -> me");
    // No root at all: the cycle is named.
    let e = err_of(
        "[[office]]\nname = \"a\"\nparent = \"b\"\n[[office]]\nname = \"b\"\nparent = \"a\"\n",
    );
    check(&e, Some("a"), "parent", 3, "cycle");
}

#[test]
fn error_second_root() {
    let e = err_of("[[office]]\nname = \"c\"\n\n[[office]]\nname = \"d\"\nsubnets = []\n");
    check(&e, Some("d"), "parent", 4, "second root");
}

#[test]
fn error_overlap() {
    let text = r#"[[office]]
name = "hq"
subnets = ["198.18.0.0/16"]

[[office]]
name = "east"
parent = "hq"
subnets = ["10.0.0.0/8",
  "198.18.10.0/24"]
"#;
    let e = err_of(text);
    check(
        &e,
        Some("east"),
        "subnets",
        9,
        "198.18.10.0/24 overlaps office \"hq\" (198.18.0.0/16)",
    );
    assert_eq!(
        e.to_string(),
        "line 9: office \"east\", field \"subnets\": 198.18.10.0/24 overlaps office \"hq\" (198.18.0.0/16)"
    );
    let e = err_of("[[office]]\nname = \"hq\"\nsubnets = [\"fd00::/64\", \"fd00::/48\"]\n");
    check(&e, Some("hq"), "subnets", 3, "of the same office");
    let e = err_of(
        "[[office]]\nname = \"hq\"\nsubnets = [\"10.0.0.0/24\"]\n[[office]]\nname = \"b\"\nparent = \"hq\"\nsubnets = [\"10.0.0.0/24\"]\n",
    );
    check(&e, Some("b"), "subnets", 7, "overlaps office \"hq\"");
}

#[test]
fn error_duplicate_and_bad_name() {
    let e = err_of("[[office]]\nname = \"c\"\n[[office]]\nname = \"c\"\nparent = \"c\"\n");
    check(&e, Some("c"), "name", 4, "duplicate");
    let e = err_of("[[office]]\nname = \"bad name\"\n");
    check(&e, Some("bad name"), "name", 2, "not a valid office name");
    let long = "x".repeat(65);
    let e = err_of(&format!("[[office]]\nname = \"{long}\"\n"));
    check(&e, Some(&long), "name", 2, "not a valid office name");
    let e = err_of("[[office]]\nsubnets = []\n");
    check(&e, None, "name", 1, "missing");
}

#[test]
fn error_bad_hours() {
    let e = err_of("[[office]]\nname = \"c\"\n[office.wan]\nhours = \"22:00-22:00\"\n");
    check(&e, Some("c"), "wan.hours", 4, "same minute");
    let e = err_of("[[office]]\nname = \"c\"\n[office.wan]\nhours = \"25:00-01:00\"\n");
    check(&e, Some("c"), "wan.hours", 4, "time of day");
    let e = err_of("[[office]]\nname = \"c\"\n[office.wan]\nhours = 7\n");
    check(&e, Some("c"), "wan.hours", 4, "expected");
}

#[test]
fn error_unknown_field() {
    let e = err_of("[[office]]\nname = \"c\"\ncolour = \"red\"\n");
    check(&e, Some("c"), "colour", 3, "unknown field");
    let e = err_of("[[office]]\nname = \"c\"\n[office.wan]\nburst = 3\n");
    check(&e, Some("c"), "wan.burst", 4, "unknown field");
    let e = err_of("title = \"x\"\n[[office]]\nname = \"c\"\n");
    check(&e, None, "title", 1, "unknown field");
}

#[test]
fn error_bad_subnet() {
    let e = err_of("[[office]]\nname = \"c\"\nsubnets = [\"10.0.0.0/33\"]\n");
    check(&e, Some("c"), "subnets", 3, "not a subnet");
    let e = err_of("[[office]]\nname = \"c\"\nsubnets = [\"10.0.0.1/24\"]\n");
    check(&e, Some("c"), "subnets", 3, "did you mean 10.0.0.0/24");
    let e = err_of("[[office]]\nname = \"c\"\nsubnets = \"10.0.0.0/24\"\n");
    check(&e, Some("c"), "subnets", 3, "expected an array");
    // A bare address is a host route.
    let f = TopologyFile::parse("[[office]]\nname = \"c\"\nsubnets = [\"10.0.0.1\"]\n").unwrap();
    assert_eq!(f.offices[0].subnets, vec!["10.0.0.1/32".parse().unwrap()]);
}

#[test]
fn error_other_fields() {
    let e = err_of("[[office]]\nname = \"c\"\ntype = \"lan\"\n");
    check(&e, Some("c"), "type", 3, "not an office type");
    let e = err_of("[[office]]\nname = \"c\"\nrvp = \"00112233445566778899AABBCCDDEEFF\"\n");
    check(&e, Some("c"), "rvp", 3, "32 lowercase hex");
    let e = err_of("[[office]]\nname = \"c\"\n[office.wan]\nmax_transfers = 0\n");
    check(&e, Some("c"), "wan.max_transfers", 4, "out of range");
    let e = err_of("[[office]]\nname = \"c\"\n[office.wan]\nceiling_mbit = -1.0\n");
    check(&e, Some("c"), "wan.ceiling_mbit", 4, "not a usable ceiling");
    let e = err_of(
        "[[office]]\nname = \"c\"\n[office.wan]\nceiling_mbit = 1\nceiling_bytes_per_s = 5\n",
    );
    assert_eq!(e.office.as_deref(), Some("c"));
    assert!(e.field.starts_with("wan.ceiling"), "{e}");
    assert!(e.message.contains("not both"), "{e}");
    let e = err_of("[[office]]\nname = \"c\"\n[office.wan]\nceiling_bytes_per_s = 0\n");
    check(&e, Some("c"), "wan.ceiling_bytes_per_s", 4, "out of range");
    let e = err_of("[[office]]\nname = \"c\"\nauto = \"yes\"\n");
    check(&e, Some("c"), "auto", 3, "true or false");
    let e = err_of("office = 3\n");
    check(&e, None, "office", 1, "expected");
    let e = err_of("");
    assert_eq!(e.field, "office");
    let e = err_of("[[office]\nname = 1\n");
    assert_eq!(e.line, Some(1), "{e}");
    assert!(e.message.contains("TOML syntax"), "{e}");
}

#[test]
fn errors_on_files_built_in_code() {
    let mut c = OfficeSpec::new("central", None);
    c.subnets = vec!["10.0.0.1/24".parse().unwrap()];
    let e = Tree::from_file(&TopologyFile { offices: vec![c] }).unwrap_err();
    assert_eq!(
        (e.office.as_deref(), e.field.as_str(), e.line),
        (Some("central"), "subnets", None)
    );
    let mut c = OfficeSpec::new("central", None);
    c.wan.max_transfers = 0;
    let e = Tree::from_file(&TopologyFile { offices: vec![c] }).unwrap_err();
    assert_eq!(e.field, "wan.max_transfers");
}

#[test]
fn with_central_cleans_its_subnets() {
    let t = Tree::with_central(vec![
        "10.0.0.1/8".parse().unwrap(),
        "10.1.0.0/16".parse().unwrap(),
        "fd00::/8".parse().unwrap(),
    ]);
    assert_eq!(
        t.office(t.root()).subnets,
        vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()]
    );
    assert_eq!(t.len(), 1);
    assert_eq!(t.export().offices[0].name, "central");
}

#[test]
fn hostile_text_is_refused_not_fatal() {
    let deep = format!("a = {}", "[".repeat(100_000));
    assert!(TopologyFile::parse(&deep).is_err());
    let deep = format!("a = {}", "{ b = ".repeat(100_000));
    assert!(TopologyFile::parse(&deep).is_err());
}

#[test]
fn ten_thousand_offices_and_not_one_more() {
    let mut offices = vec![OfficeSpec::new("central", None)];
    for i in 1..branchline_office::MAX_OFFICES as u32 {
        let mut o = OfficeSpec::new(format!("o{i}"), Some(format!("o{}", i / 2)));
        if i == 1 {
            o.parent = Some("central".into());
        }
        o.subnets = vec![IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + (i << 8))).into()];
        o.subnets[0] = ipnet::IpNet::new(o.subnets[0].addr(), 24).unwrap();
        offices.push(o);
    }
    let mut f = TopologyFile { offices };
    let t = Tree::from_toml(&f.to_toml()).unwrap();
    assert_eq!(t.len(), branchline_office::MAX_OFFICES);
    assert_eq!(t.depth(t.find("o9999").unwrap()), 14);
    f.offices
        .push(OfficeSpec::new("one-more", Some("central".into())));
    let e = Tree::from_toml(&f.to_toml()).unwrap_err();
    assert_eq!(e.field, "office");
    assert!(Tree::from_file(&f).is_err());
}
