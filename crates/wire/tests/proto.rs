//! `proto/branchline.proto` must describe exactly the messages the Rust code puts on the
//! wire.
//!
//! The Rust side is not read from a hand-kept table: the test learns each message's shape
//! from the prost types themselves, by encoding probes. prost keeps the fields it knows
//! and drops unknown ones when a message is decoded and encoded again, so for every tag
//! (1 to [`MAX_TAG`]) and wire type a probe tells whether the type has such a field; a
//! few more probes tell its type (bool, 32- or 64-bit, signed, string, bytes, message),
//! whether it repeats, and which fields share a oneof. Nested messages are probed the same
//! way through their parent. The `.proto` side is read with a small parser. The two
//! shapes must be equal, from the three roots (`Envelope`, `LargeRequest`,
//! `LargeResponse`) down, and both enums must list the same values. So a changed tag, a
//! changed type, a field or message added on one side only, all fail here.
//!
//! Field *names* are not compared (they never travel).

use std::collections::{BTreeMap, BTreeSet};

use branchline_wire::Envelope;
use branchline_wire::large::{LargeRequest, LargeResponse};
use branchline_wire::msg::{ErrorCode, SignalKind};
use prost::Message;

/// Highest tag probed; far above any tag in use (42).
const MAX_TAG: u32 = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Bool,
    /// uint32
    Uint32,
    /// int32 or an enum (the same on the wire)
    Int32,
    /// uint64 or int64
    Varint64,
    Fixed64,
    Fixed32,
    String,
    Bytes,
    Message(Shape),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    kind: Kind,
    repeated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Shape {
    fields: BTreeMap<u32, Field>,
    /// Groups of two or more tags that form one oneof.
    oneofs: BTreeSet<BTreeSet<u32>>,
}

// ---------------------------------------------------------------------------------------
// Protobuf wire helpers

fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

fn key(tag: u32, wire: u8) -> Vec<u8> {
    varint(u64::from(tag) << 3 | u64::from(wire))
}

fn f_varint(tag: u32, v: u64) -> Vec<u8> {
    [key(tag, 0), varint(v)].concat()
}

fn f_len(tag: u32, payload: &[u8]) -> Vec<u8> {
    [key(tag, 2), varint(payload.len() as u64), payload.to_vec()].concat()
}

enum Value<'a> {
    Varint(u64),
    Len(&'a [u8]),
    Fixed,
}

/// The fields of an encoding prost produced (so it is well-formed).
fn fields(mut b: &[u8]) -> Vec<(u32, Value<'_>)> {
    fn read_varint(b: &mut &[u8]) -> u64 {
        let mut n = 0u64;
        for shift in (0..).step_by(7) {
            let byte = b[0];
            *b = &b[1..];
            n |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        n
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let k = read_varint(&mut b);
        let tag = (k >> 3) as u32;
        let value = match k & 7 {
            0 => Value::Varint(read_varint(&mut b)),
            2 => {
                let len = read_varint(&mut b) as usize;
                let (p, rest) = b.split_at(len);
                b = rest;
                Value::Len(p)
            }
            1 => {
                b = &b[8..];
                Value::Fixed
            }
            5 => {
                b = &b[4..];
                Value::Fixed
            }
            w => panic!("prost wrote wire type {w}"),
        };
        out.push((tag, value));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Learning a shape from the Rust types

/// Decodes and re-encodes a root message; `None` if the bytes do not decode.
type RoundTrip = fn(&[u8]) -> Option<Vec<u8>>;

fn round_trip<M: Message + Default>(b: &[u8]) -> Option<Vec<u8>> {
    M::decode(b).ok().map(|m| m.encode_to_vec())
}

struct Prober {
    root: RoundTrip,
}

impl Prober {
    /// Puts `leaf` (the fields of the message at `path`) inside its parents, round-trips
    /// the root, and returns what the message at `path` encodes to afterwards.
    fn run(&self, path: &[u32], leaf: &[u8]) -> Option<Vec<u8>> {
        let mut bytes = leaf.to_vec();
        for &tag in path.iter().rev() {
            bytes = f_len(tag, &bytes);
        }
        let mut out = (self.root)(&bytes)?;
        for &tag in path {
            let inner = fields(&out)
                .into_iter()
                .filter_map(|(t, v)| match (t == tag, v) {
                    (true, Value::Len(p)) => Some(p.to_vec()),
                    _ => None,
                })
                .next_back()?;
            out = inner;
        }
        Some(out)
    }

    /// The values of field `tag` after a round trip of `leaf` at `path`.
    fn kept<'a>(&self, path: &[u32], leaf: &[u8], out: &'a mut Vec<u8>) -> Vec<Value<'a>> {
        *out = self.run(path, leaf).unwrap_or_default();
        let tag = fields(leaf)[0].0;
        fields(out)
            .into_iter()
            .filter(|(t, _)| *t == tag)
            .map(|(_, v)| v)
            .collect()
    }

    fn shape(&self, path: &[u32]) -> Shape {
        assert!(
            path.len() < 8,
            "messages nest deeper than expected: {path:?}"
        );
        let mut shape = Shape::default();
        let mut buf = Vec::new();
        for tag in 1..=MAX_TAG {
            let field = if !self.kept(path, &f_varint(tag, 2), &mut buf).is_empty() {
                let first = |p: &Prober, v: u64| match p
                    .kept(path, &f_varint(tag, v), &mut Vec::new())
                    .first()
                {
                    Some(Value::Varint(n)) => *n,
                    _ => panic!("field {tag} at {path:?} vanished"),
                };
                let kind = if first(self, 2) == 1 {
                    Kind::Bool
                } else if first(self, (1 << 32) + 5) == 5 {
                    if first(self, u64::MAX) == u64::MAX {
                        Kind::Int32
                    } else {
                        Kind::Uint32
                    }
                } else {
                    Kind::Varint64
                };
                let twice = [f_varint(tag, 3), f_varint(tag, 3)].concat();
                let n = self.kept(path, &twice, &mut buf).len();
                let packed = matches!(
                    self.kept(path, &twice, &mut buf).first(),
                    Some(Value::Len(_))
                );
                Some((kind, n == 2 || packed, twice))
            } else if !self.kept(path, &f_len(tag, b"a"), &mut buf).is_empty() {
                let kind = if self.kept(path, &f_len(tag, &[0xff]), &mut buf).is_empty() {
                    Kind::String
                } else {
                    Kind::Bytes
                };
                let twice = [f_len(tag, b"a"), f_len(tag, b"a")].concat();
                Some((kind, self.kept(path, &twice, &mut buf).len() == 2, twice))
            } else if !self.kept(path, &f_len(tag, b""), &mut buf).is_empty() {
                let nested = self.shape(&[path, &[tag]].concat());
                let twice = [f_len(tag, b""), f_len(tag, b"")].concat();
                let n = self.kept(path, &twice, &mut buf).len();
                Some((Kind::Message(nested), n == 2, twice))
            } else if !self
                .kept(path, &[key(tag, 1), vec![1; 8]].concat(), &mut buf)
                .is_empty()
            {
                let one = [key(tag, 1), vec![1; 8]].concat();
                let twice = [one.clone(), one].concat();
                Some((
                    Kind::Fixed64,
                    self.kept(path, &twice, &mut buf).len() == 2,
                    twice,
                ))
            } else if !self
                .kept(path, &[key(tag, 5), vec![1; 4]].concat(), &mut buf)
                .is_empty()
            {
                let one = [key(tag, 5), vec![1; 4]].concat();
                let twice = [one.clone(), one].concat();
                Some((
                    Kind::Fixed32,
                    self.kept(path, &twice, &mut buf).len() == 2,
                    twice,
                ))
            } else {
                None
            };
            if let Some((kind, repeated, _)) = field {
                shape.fields.insert(tag, Field { kind, repeated });
            }
        }
        // Oneofs: of two fields of one oneof, the later one alone survives.
        let sample = |tag: u32, f: &Field| match f.kind {
            Kind::Bool | Kind::Uint32 | Kind::Int32 | Kind::Varint64 => f_varint(tag, 1),
            Kind::String | Kind::Bytes => f_len(tag, b"a"),
            Kind::Message(_) => f_len(tag, b""),
            Kind::Fixed64 => [key(tag, 1), vec![1; 8]].concat(),
            Kind::Fixed32 => [key(tag, 5), vec![1; 4]].concat(),
        };
        let mut group_of: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        for (&a, fa) in &shape.fields {
            for (&b, fb) in shape.fields.range(a + 1..) {
                let both = [sample(a, fa), sample(b, fb)].concat();
                let out = self.run(path, &both).expect("valid probes decode");
                if !fields(&out).iter().any(|(t, _)| *t == a) {
                    let mut g = group_of.get(&a).cloned().unwrap_or_default();
                    g.extend(group_of.get(&b).cloned().unwrap_or_default());
                    g.extend([a, b]);
                    for t in &g {
                        group_of.insert(*t, g.clone());
                    }
                }
            }
        }
        shape.oneofs = group_of.into_values().collect();
        shape
    }
}

// ---------------------------------------------------------------------------------------
// Reading the .proto file

/// One field line of the .proto: tag, type name, `repeated`, and its oneof if any.
type ProtoField = (u32, String, bool, Option<String>);

#[derive(Debug, Default)]
struct Proto {
    messages: BTreeMap<String, Vec<ProtoField>>,
    enums: BTreeMap<String, BTreeMap<i32, String>>,
}

fn parse_proto(text: &str) -> Proto {
    let mut proto = Proto::default();
    let mut message: Option<String> = None;
    let mut enumeration: Option<String> = None;
    let mut oneof: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split("//").next().unwrap().trim();
        let words: Vec<&str> = line
            .trim_end_matches(';')
            .split_whitespace()
            .filter(|w| *w != "=")
            .collect();
        let at = || format!("branchline.proto line {}: {raw:?}", n + 1);
        match words.as_slice() {
            [] | ["syntax", ..] | ["package", ..] | ["reserved", ..] => {}
            ["message", name, "{}"] => {
                proto.messages.insert(name.to_string(), Vec::new());
            }
            ["message", name, "{"] => {
                proto.messages.insert(name.to_string(), Vec::new());
                message = Some(name.to_string());
            }
            ["enum", name, "{"] => {
                proto.enums.insert(name.to_string(), BTreeMap::new());
                enumeration = Some(name.to_string());
            }
            ["oneof", name, "{"] => oneof = Some(name.to_string()),
            ["}"] => {
                if oneof.take().is_none() && message.take().is_none() {
                    enumeration.take().unwrap_or_else(|| panic!("{}", at()));
                }
            }
            [name, value] if enumeration.is_some() => {
                let e = proto.enums.get_mut(enumeration.as_ref().unwrap()).unwrap();
                e.insert(
                    value.parse().unwrap_or_else(|_| panic!("{}", at())),
                    name.to_string(),
                );
            }
            [rest @ .., _name, tag] if message.is_some() => {
                let (repeated, ty) = match rest {
                    ["repeated", ty] => (true, ty),
                    [ty] => (false, ty),
                    _ => panic!("{}", at()),
                };
                let tag: u32 = tag.parse().unwrap_or_else(|_| panic!("{}", at()));
                assert!(
                    !(repeated && oneof.is_some()),
                    "{}: a oneof field cannot repeat",
                    at()
                );
                proto
                    .messages
                    .get_mut(message.as_ref().unwrap())
                    .unwrap()
                    .push((tag, ty.to_string(), repeated, oneof.clone()));
            }
            _ => panic!("{}: not understood by this test's parser", at()),
        }
    }
    proto
}

impl Proto {
    fn shape(&self, name: &str, seen: &mut BTreeSet<String>) -> Shape {
        seen.insert(name.to_owned());
        let fields = self
            .messages
            .get(name)
            .unwrap_or_else(|| panic!("branchline.proto has no message {name}"));
        let mut shape = Shape::default();
        let mut groups: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
        for (tag, ty, repeated, oneof) in fields {
            let kind = match ty.as_str() {
                "bool" => Kind::Bool,
                "uint32" => Kind::Uint32,
                "int32" => Kind::Int32,
                "uint64" | "int64" => Kind::Varint64,
                "fixed64" | "sfixed64" | "double" => Kind::Fixed64,
                "fixed32" | "sfixed32" | "float" => Kind::Fixed32,
                "string" => Kind::String,
                "bytes" => Kind::Bytes,
                e if self.enums.contains_key(e) => {
                    seen.insert(e.to_owned());
                    Kind::Int32
                }
                m => Kind::Message(self.shape(m, seen)),
            };
            let dup = shape.fields.insert(
                *tag,
                Field {
                    kind,
                    repeated: *repeated,
                },
            );
            assert!(dup.is_none(), "{name}: tag {tag} used twice");
            if let Some(o) = oneof {
                groups.entry(o).or_default().insert(*tag);
            }
        }
        shape.oneofs = groups.into_values().filter(|g| g.len() >= 2).collect();
        shape
    }
}

// ---------------------------------------------------------------------------------------
// Comparing

fn describe(f: &Field) -> String {
    let kind = match &f.kind {
        Kind::Message(s) => format!(
            "message with tags {:?}",
            s.fields.keys().collect::<Vec<_>>()
        ),
        k => format!("{k:?}"),
    };
    if f.repeated {
        format!("repeated {kind}")
    } else {
        kind
    }
}

fn diff(at: &str, proto: &Shape, rust: &Shape, out: &mut Vec<String>) {
    let tags: BTreeSet<u32> = proto
        .fields
        .keys()
        .chain(rust.fields.keys())
        .copied()
        .collect();
    for tag in tags {
        match (proto.fields.get(&tag), rust.fields.get(&tag)) {
            (Some(p), None) => out.push(format!(
                "{at} tag {tag}: in the .proto ({}) but not in Rust",
                describe(p)
            )),
            (None, Some(r)) => out.push(format!(
                "{at} tag {tag}: in Rust ({}) but not in the .proto",
                describe(r)
            )),
            (Some(p), Some(r)) => match (&p.kind, &r.kind) {
                (Kind::Message(ps), Kind::Message(rs)) => {
                    if p.repeated != r.repeated {
                        out.push(format!(
                            "{at} tag {tag}: .proto says {}, Rust {}",
                            describe(p),
                            describe(r)
                        ));
                    }
                    diff(&format!("{at}.{tag}"), ps, rs, out);
                }
                _ if p != r => out.push(format!(
                    "{at} tag {tag}: .proto says {}, Rust {}",
                    describe(p),
                    describe(r)
                )),
                _ => {}
            },
            (None, None) => unreachable!(),
        }
    }
    if proto.oneofs != rust.oneofs {
        out.push(format!(
            "{at}: oneofs differ: .proto {:?}, Rust {:?}",
            proto.oneofs, rust.oneofs
        ));
    }
}

fn proto() -> Proto {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/proto/branchline.proto");
    parse_proto(&std::fs::read_to_string(path).expect("proto/branchline.proto"))
}

#[test]
fn proto_file_matches_the_rust_messages() {
    let proto = proto();
    let mut seen = BTreeSet::new();
    let mut problems = Vec::new();
    let roots: [(&str, RoundTrip); 3] = [
        ("Envelope", round_trip::<Envelope>),
        ("LargeRequest", round_trip::<LargeRequest>),
        ("LargeResponse", round_trip::<LargeResponse>),
    ];
    for (name, root) in roots {
        let rust = Prober { root }.shape(&[]);
        assert!(
            rust.fields.len() > 2,
            "{name}: probing found almost nothing"
        );
        diff(name, &proto.shape(name, &mut seen), &rust, &mut problems);
    }
    let all: BTreeSet<String> = proto
        .messages
        .keys()
        .chain(proto.enums.keys())
        .cloned()
        .collect();
    let unreached: Vec<_> = all.difference(&seen).collect();
    assert!(
        unreached.is_empty(),
        "branchline.proto defines {unreached:?}, which no message on the wire uses"
    );
    assert!(
        problems.is_empty(),
        "proto/branchline.proto and the Rust messages disagree:\n  {}",
        problems.join("\n  ")
    );
}

fn screaming(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[test]
fn proto_enums_match_the_rust_enums() {
    let proto = proto();
    let rust = |name: &str| -> BTreeMap<i32, String> {
        (-8..=256)
            .filter_map(|v| {
                let debug = match name {
                    "ErrorCode" => ErrorCode::try_from(v).ok().map(|e| format!("{e:?}")),
                    "SignalKind" => SignalKind::try_from(v).ok().map(|e| format!("{e:?}")),
                    other => panic!("no Rust enum {other} is known to this test"),
                };
                debug.map(|d| (v, format!("{}_{}", screaming(name), screaming(&d))))
            })
            .collect()
    };
    assert_eq!(
        proto.enums.keys().collect::<Vec<_>>(),
        ["ErrorCode", "SignalKind"],
        "enums in branchline.proto"
    );
    for (name, values) in &proto.enums {
        assert_eq!(
            values,
            &rust(name),
            "enum {name}: .proto (left) and Rust (right)"
        );
    }
}

/// The probe finds what it should: a field added to the Rust side but not to the .proto
/// (simulated by comparing against a copy of the .proto without one line) is reported.
#[test]
fn a_missing_or_changed_field_is_reported() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/proto/branchline.proto"
    ))
    .unwrap();
    let rust = Prober {
        root: round_trip::<Envelope>,
    }
    .shape(&[]);
    let check = |edited: String| {
        let mut problems = Vec::new();
        diff(
            "Envelope",
            &parse_proto(&edited).shape("Envelope", &mut BTreeSet::new()),
            &rust,
            &mut problems,
        );
        problems
    };
    assert!(check(text.clone()).is_empty());
    let dropped = check(text.replace("  repeated DropCount drops = 4;\n", ""));
    assert_eq!(
        dropped,
        ["Envelope.14 tag 4: in Rust (repeated message with tags [1, 2]) but not in the .proto"]
    );
    let retagged = check(text.replace("uint64 uptime_s = 3;", "uint64 uptime_s = 5;"));
    assert_eq!(retagged.len(), 2, "{retagged:?}");
    let retyped = check(text.replace("uint64 uptime_s = 3;", "uint32 uptime_s = 3;"));
    assert_eq!(
        retyped,
        ["Envelope.14 tag 3: .proto says Uint32, Rust Varint64"]
    );
    let body = check(text.replace("    Ping ping = 20;\n", ""));
    assert!(
        body.iter()
            .any(|p| p.starts_with("Envelope tag 20: in Rust")),
        "{body:?}"
    );
}

/// `docs/wire.md`'s register of body tags names the same tags and messages as the .proto
/// (which the test above holds to the Rust code).
#[test]
fn wire_spec_body_register_matches_the_proto() {
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/wire.md"))
        .expect("docs/wire.md");
    let section = spec
        .split("### 4.2 Body tag register")
        .nth(1)
        .and_then(|s| s.split("\n### ").next())
        .expect("docs/wire.md has a section 4.2 Body tag register");
    let documented: BTreeMap<u32, String> = section
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let tag = cells.get(1)?.parse().ok()?;
            Some((tag, cells.get(2)?.trim_matches('`').to_owned()))
        })
        .collect();
    let proto = proto();
    let body: BTreeMap<u32, String> = proto.messages["Envelope"]
        .iter()
        .filter(|(_, _, _, oneof)| oneof.as_deref() == Some("body"))
        .map(|(tag, ty, _, _)| (*tag, ty.clone()))
        .collect();
    assert_eq!(
        documented, body,
        "docs/wire.md section 4.2 (left) and the .proto (right)"
    );
}
