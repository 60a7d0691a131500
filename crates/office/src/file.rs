//! The topology file (TOML): offices, their subnets, parents and WAN link policy.

use std::collections::HashMap;
use std::fmt::Write as _;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::hours::{HoursWindow, LinkPolicy};

/// Most offices one file (or one tree's declared part) may hold.
pub const MAX_OFFICES: usize = 10_000;
/// Most subnets one office may hold.
pub const MAX_SUBNETS_PER_OFFICE: usize = 1000;
/// Longest office name.
pub const MAX_NAME_LEN: usize = 64;

/// What an office's clients may do among themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OfficeKind {
    /// Peers share and find each other by broadcast.
    #[default]
    Default,
    /// Peers share, no broadcast.
    Wifi,
    /// No peer sharing: each client pulls from the parent office over Background.
    Vpn,
}

impl OfficeKind {
    /// The TOML spelling: `"default"`, `"wifi"` or `"vpn"`.
    pub fn as_str(self) -> &'static str {
        match self {
            OfficeKind::Default => "default",
            OfficeKind::Wifi => "wifi",
            OfficeKind::Vpn => "vpn",
        }
    }
}

/// One office as declared (or created automatically).
#[derive(Clone, Debug, PartialEq)]
pub struct OfficeSpec {
    /// 1..=64 of ASCII letters, digits, `-`, `_`, `.`; unique in a tree.
    pub name: String,
    /// Subnets, each in canonical form (no host bits set); no two overlap in a tree.
    pub subnets: Vec<IpNet>,
    /// None only for the root (the Central Office).
    pub parent: Option<String>,
    /// How its clients share content: default (broadcast), WiFi or VPN.
    pub kind: OfficeKind,
    /// Policy of this office's WAN link to its parent office.
    pub wan: LinkPolicy,
    /// Admin override: a client id (32 lowercase hex) preferred as RVP.
    pub rvp_override: Option<String>,
    /// Created automatically for an unknown subnet.
    pub auto: bool,
}

impl OfficeSpec {
    /// An office with no subnets, kind Default, default WAN policy, no override, not auto.
    pub fn new(name: impl Into<String>, parent: Option<String>) -> OfficeSpec {
        OfficeSpec {
            name: name.into(),
            subnets: Vec::new(),
            parent,
            kind: OfficeKind::Default,
            wan: LinkPolicy::default(),
            rvp_override: None,
            auto: false,
        }
    }

    /// The admin's RVP override as a client id, when it is set and well-formed.
    pub fn rvp_override_key(&self) -> Option<crate::ClientKey> {
        self.rvp_override.as_deref().and_then(parse_client_key)
    }
}

/// Parses a client id written as 32 lowercase hex digits.
pub fn parse_client_key(s: &str) -> Option<crate::ClientKey> {
    if !s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 16];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Writes a client id as 32 lowercase hex digits.
pub fn client_key_hex(k: &crate::ClientKey) -> String {
    hex::encode(k)
}

/// The topology file: what `connector topology apply/export` read and write.
///
/// ```toml
/// [[office]]
/// name = "central"
/// subnets = ["198.18.0.0/24"]
///
/// [[office]]
/// name = "west"
/// parent = "central"
/// type = "wifi"                   # optional: "default" (the default), "wifi" or "vpn"
/// subnets = ["198.18.20.0/24", "fd00:20::/64"]
/// rvp = "00112233445566778899aabbccddeeff"   # optional admin RVP override
/// auto = true                     # optional; only export writes it
///
/// [office.wan]                    # optional
/// ceiling_mbit = 2.0              # optional, Mbit/s (10^6 bit/s); or ceiling_bytes_per_s = N
/// hours = "22:00-06:00"           # optional, UTC
/// max_transfers = 1               # optional, default 1
/// ```
///
/// Unknown fields are an error naming the field.
#[derive(Clone, Debug, PartialEq)]
pub struct TopologyFile {
    /// Every office of the tree, the root (no parent) included, in file order.
    pub offices: Vec<OfficeSpec>,
}

/// A topology error. Names the office (when one is concerned) and the field, and the line
/// when the error was found in TOML text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.office, .field, .message, .line))]
pub struct TopologyError {
    /// The office concerned, when there is one.
    pub office: Option<String>,
    /// The field at fault (e.g. `subnets`), or what the error is about.
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
    /// The line of the TOML text, when the error was found in text.
    pub line: Option<usize>,
}

fn render(office: &Option<String>, field: &str, message: &str, line: &Option<usize>) -> String {
    let mut s = String::new();
    if let Some(l) = line {
        let _ = write!(s, "line {l}: ");
    }
    if let Some(o) = office {
        let _ = write!(s, "office {o:?}, ");
    }
    if !field.is_empty() {
        let _ = write!(s, "field {field:?}: ");
    }
    s.push_str(message);
    s
}

impl TopologyError {
    pub(crate) fn new(office: Option<&str>, field: &str, message: impl Into<String>) -> Self {
        TopologyError {
            office: office.map(str::to_owned),
            field: field.to_owned(),
            message: message.into(),
            line: None,
        }
    }
}

/// A validation error before its line is known: `pos` is the office's position in the file,
/// `item` the subnet's position in the office's list.
#[derive(Debug)]
pub(crate) struct Located {
    pub err: TopologyError,
    pub pos: Option<usize>,
    pub item: Option<usize>,
}

impl Located {
    pub fn new(
        pos: Option<usize>,
        office: Option<&str>,
        field: &str,
        message: impl Into<String>,
    ) -> Self {
        Located {
            err: TopologyError::new(office, field, message),
            pos,
            item: None,
        }
    }

    pub fn item(mut self, item: usize) -> Self {
        self.item = Some(item);
        self
    }

    /// The error, with its line when `map` knows where the office and field were.
    pub fn locate(self, map: Option<&SourceMap>) -> TopologyError {
        let mut err = self.err;
        if let (Some(map), Some(pos)) = (map, self.pos) {
            err.line = map.line(pos, &err.field, self.item);
        }
        err
    }
}

/// Where each office and field stood in the TOML text (1-based lines).
#[derive(Debug, Default)]
pub(crate) struct SourceMap {
    offices: Vec<OfficeLines>,
}

#[derive(Debug, Default)]
struct OfficeLines {
    header: usize,
    fields: HashMap<String, usize>,
    subnets: Vec<usize>,
}

impl SourceMap {
    fn line(&self, pos: usize, field: &str, item: Option<usize>) -> Option<usize> {
        let o = self.offices.get(pos)?;
        if let Some(i) = item
            && field == "subnets"
            && let Some(&l) = o.subnets.get(i)
        {
            return Some(l);
        }
        Some(o.fields.get(field).copied().unwrap_or(o.header))
    }
}

/// Whether `name` is a valid office name.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn name_problem(name: &str) -> String {
    format!(
        "{name:?} is not a valid office name (1 to {MAX_NAME_LEN} of ASCII letters, digits, '-', '_', '.')"
    )
}

/// Checks one office's own fields (not its relations to other offices).
pub(crate) fn check_office(o: &OfficeSpec, pos: usize) -> Result<(), Located> {
    let name = Some(o.name.as_str());
    let err = |field: &str, msg: String| Located::new(Some(pos), name, field, msg);
    if !valid_name(&o.name) {
        return Err(err("name", name_problem(&o.name)));
    }
    if o.subnets.len() > MAX_SUBNETS_PER_OFFICE {
        return Err(err(
            "subnets",
            format!(
                "{} subnets, at most {MAX_SUBNETS_PER_OFFICE} per office",
                o.subnets.len()
            ),
        ));
    }
    for (i, n) in o.subnets.iter().enumerate() {
        if n.trunc() != *n {
            return Err(err(
                "subnets",
                format!("{n} has host bits set (did you mean {}?)", n.trunc()),
            )
            .item(i));
        }
    }
    if let Some(r) = &o.rvp_override
        && parse_client_key(r).is_none()
    {
        return Err(err(
            "rvp",
            format!("{r:?} is not a client id (32 lowercase hex digits)"),
        ));
    }
    if o.wan.max_transfers == 0 {
        return Err(err("wan.max_transfers", "must be at least 1".into()));
    }
    if let Some(c) = o.wan.ceiling_bytes_per_s
        && (c == 0 || c > i64::MAX as u64)
    {
        return Err(err(
            "wan.ceiling_bytes_per_s",
            format!(
                "{c} is out of range (1 to {}; leave it out for no ceiling)",
                i64::MAX
            ),
        ));
    }
    Ok(())
}

const OFFICE_FIELDS: &str = "name, parent, type, subnets, rvp, auto, wan";
const WAN_FIELDS: &str = "ceiling_mbit, ceiling_bytes_per_s, hours, max_transfers";

struct Ctx<'t> {
    text: &'t str,
    /// Byte offset where each line starts.
    line_starts: Vec<usize>,
}

impl<'t> Ctx<'t> {
    fn src(&self, v: &Spanned<DeValue>) -> &str {
        self.text.get(v.span()).unwrap_or("value").trim()
    }

    fn new(text: &'t str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(
                text.bytes()
                    .enumerate()
                    .filter(|&(_, b)| b == b'\n')
                    .map(|(i, _)| i + 1),
            )
            .collect();
        Ctx { text, line_starts }
    }

    /// 1-based line of a byte offset.
    fn line(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= offset).max(1)
    }
}

fn type_err(
    ctx: &Ctx,
    office: Option<&str>,
    field: &str,
    v: &Spanned<DeValue>,
    want: &str,
) -> TopologyError {
    TopologyError {
        office: office.map(str::to_owned),
        field: field.to_owned(),
        message: format!("expected {want}, found {}", v.get_ref().type_str()),
        line: Some(ctx.line(v.span().start)),
    }
}

fn as_u64(v: &DeValue) -> Option<u64> {
    let i = v.as_integer()?;
    u64::from_str_radix(i.as_str(), i.radix()).ok()
}

impl TopologyFile {
    /// Parses the TOML text: syntax and each office's own fields. Relations between offices
    /// (one root, parents, cycles, duplicate names, overlapping subnets) are checked by
    /// [`crate::Tree::from_file`] / [`crate::Tree::apply`], or all at once with line numbers
    /// by [`crate::Tree::from_toml`].
    pub fn parse(text: &str) -> Result<TopologyFile, TopologyError> {
        parse_with_lines(text).map(|(f, _)| f)
    }

    /// The file as TOML; `TopologyFile::parse(&f.to_toml()) == Ok(f)` for every file that
    /// parses (the WAN ceiling is written exactly, as `ceiling_bytes_per_s`).
    pub fn to_toml(&self) -> String {
        let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let mut out = String::from("# Branchline office topology\n");
        for o in &self.offices {
            out.push_str("\n[[office]]\n");
            let _ = writeln!(out, "name = {}", q(&o.name));
            if let Some(p) = &o.parent {
                let _ = writeln!(out, "parent = {}", q(p));
            }
            if o.kind != OfficeKind::Default {
                let _ = writeln!(out, "type = {}", q(o.kind.as_str()));
            }
            let subnets: Vec<String> = o.subnets.iter().map(|n| q(&n.to_string())).collect();
            let _ = writeln!(out, "subnets = [{}]", subnets.join(", "));
            if let Some(r) = &o.rvp_override {
                let _ = writeln!(out, "rvp = {}", q(r));
            }
            if o.auto {
                out.push_str("auto = true\n");
            }
            if o.wan != LinkPolicy::default() {
                out.push_str("\n[office.wan]\n");
                if let Some(c) = o.wan.ceiling_bytes_per_s {
                    let _ = writeln!(
                        out,
                        "ceiling_bytes_per_s = {c}  # {} Mbit/s",
                        c as f64 * 8.0 / 1e6
                    );
                }
                if let Some(h) = &o.wan.allowed_hours {
                    let _ = writeln!(out, "hours = \"{h}\"");
                }
                let _ = writeln!(out, "max_transfers = {}", o.wan.max_transfers);
            }
        }
        out
    }
}

/// Parses the text and remembers where each office's fields were.
pub(crate) fn parse_with_lines(text: &str) -> Result<(TopologyFile, SourceMap), TopologyError> {
    let ctx = Ctx::new(text);
    let doc = DeTable::parse(text).map_err(|e| TopologyError {
        office: None,
        field: String::new(),
        message: format!("TOML syntax: {}", e.message().trim_end()),
        line: e.span().map(|s| ctx.line(s.start)),
    })?;
    let mut file = TopologyFile {
        offices: Vec::new(),
    };
    let mut map = SourceMap::default();
    for (k, v) in doc.get_ref() {
        if k.get_ref() != "office" {
            return Err(TopologyError {
                office: None,
                field: k.get_ref().to_string(),
                message: "unknown field (expected [[office]] tables)".into(),
                line: Some(ctx.line(k.span().start)),
            });
        }
        let Some(arr) = v.get_ref().as_array() else {
            return Err(type_err(
                &ctx,
                None,
                "office",
                v,
                "an array of [[office]] tables",
            ));
        };
        if arr.len() > MAX_OFFICES {
            return Err(TopologyError {
                office: None,
                field: "office".into(),
                message: format!("{} offices, at most {MAX_OFFICES}", arr.len()),
                line: Some(ctx.line(v.span().start)),
            });
        }
        for item in arr.iter() {
            let (o, lines) = parse_office(&ctx, item)?;
            check_office(&o, file.offices.len()).map_err(|e| {
                let mut err = e.err;
                err.line = Some(
                    e.item
                        .and_then(|i| lines.subnets.get(i).copied())
                        .or_else(|| lines.fields.get(&err.field).copied())
                        .unwrap_or(lines.header),
                );
                err
            })?;
            file.offices.push(o);
            map.offices.push(lines);
        }
    }
    Ok((file, map))
}

fn parse_office(
    ctx: &Ctx,
    item: &Spanned<DeValue>,
) -> Result<(OfficeSpec, OfficeLines), TopologyError> {
    let header = ctx.line(item.span().start);
    let Some(t) = item.get_ref().as_table() else {
        return Err(type_err(ctx, None, "office", item, "an [[office]] table"));
    };
    let name_v = t.get("name");
    let office_name = name_v.and_then(|v| v.get_ref().as_str()).map(str::to_owned);
    let on = office_name.as_deref();
    let at = |field: &str, span_start: usize, message: String| TopologyError {
        office: office_name.clone(),
        field: field.to_owned(),
        message,
        line: Some(ctx.line(span_start)),
    };
    let mut o = OfficeSpec::new(String::new(), None);
    let mut lines = OfficeLines {
        header,
        ..OfficeLines::default()
    };
    let Some(name_v) = name_v else {
        return Err(TopologyError {
            office: None,
            field: "name".into(),
            message: "missing: every [[office]] needs a name".into(),
            line: Some(header),
        });
    };
    for (k, v) in t {
        let key = k.get_ref().as_ref();
        let vl = ctx.line(v.span().start);
        match key {
            "name" => {
                let Some(s) = v.get_ref().as_str() else {
                    return Err(type_err(ctx, None, "name", name_v, "a string"));
                };
                o.name = s.to_owned();
            }
            "parent" => {
                let Some(s) = v.get_ref().as_str() else {
                    return Err(type_err(ctx, on, key, v, "an office name (string)"));
                };
                o.parent = Some(s.to_owned());
            }
            "type" => {
                o.kind = match v.get_ref().as_str() {
                    Some("default") => OfficeKind::Default,
                    Some("wifi") => OfficeKind::Wifi,
                    Some("vpn") => OfficeKind::Vpn,
                    Some(other) => {
                        return Err(at(
                            key,
                            v.span().start,
                            format!("{other:?} is not an office type (default, wifi, vpn)"),
                        ));
                    }
                    None => {
                        return Err(type_err(
                            ctx,
                            on,
                            key,
                            v,
                            "\"default\", \"wifi\" or \"vpn\"",
                        ));
                    }
                };
            }
            "subnets" => {
                let Some(arr) = v.get_ref().as_array() else {
                    return Err(type_err(ctx, on, key, v, "an array of subnets"));
                };
                if arr.len() > MAX_SUBNETS_PER_OFFICE {
                    return Err(at(
                        key,
                        v.span().start,
                        format!(
                            "{} subnets, at most {MAX_SUBNETS_PER_OFFICE} per office",
                            arr.len()
                        ),
                    ));
                }
                for s in arr.iter() {
                    let Some(text) = s.get_ref().as_str() else {
                        return Err(type_err(
                            ctx,
                            on,
                            key,
                            s,
                            "a subnet string like \"10.1.2.0/24\"",
                        ));
                    };
                    let net = parse_subnet(text).map_err(|m| at(key, s.span().start, m))?;
                    o.subnets.push(net);
                    lines.subnets.push(ctx.line(s.span().start));
                }
            }
            "rvp" => {
                let Some(s) = v.get_ref().as_str() else {
                    return Err(type_err(
                        ctx,
                        on,
                        key,
                        v,
                        "a client id (32 lowercase hex digits)",
                    ));
                };
                o.rvp_override = Some(s.to_owned());
            }
            "auto" => {
                let Some(b) = v.get_ref().as_bool() else {
                    return Err(type_err(ctx, on, key, v, "true or false"));
                };
                o.auto = b;
            }
            "wan" => {
                let Some(w) = v.get_ref().as_table() else {
                    return Err(type_err(ctx, on, key, v, "a table [office.wan]"));
                };
                o.wan = parse_wan(ctx, on, w, &mut lines)?;
            }
            other => {
                return Err(at(
                    other,
                    k.span().start,
                    format!("unknown field (expected one of {OFFICE_FIELDS})"),
                ));
            }
        }
        lines.fields.insert(key.to_owned(), vl);
    }
    Ok((o, lines))
}

fn parse_wan(
    ctx: &Ctx,
    on: Option<&str>,
    w: &DeTable,
    lines: &mut OfficeLines,
) -> Result<LinkPolicy, TopologyError> {
    let mut p = LinkPolicy::default();
    let mut ceiling_field: Option<&str> = None;
    for (k, v) in w {
        let key = k.get_ref().as_ref();
        let field = format!("wan.{key}");
        let at = |message: String, start: usize| TopologyError {
            office: on.map(str::to_owned),
            field: field.clone(),
            message,
            line: Some(ctx.line(start)),
        };
        match key {
            "ceiling_mbit" | "ceiling_bytes_per_s" => {
                if let Some(prev) = ceiling_field {
                    return Err(at(
                        format!("give either wan.{prev} or {field}, not both"),
                        k.span().start,
                    ));
                }
                ceiling_field = Some(if key == "ceiling_mbit" {
                    "ceiling_mbit"
                } else {
                    "ceiling_bytes_per_s"
                });
                let bytes = if key == "ceiling_mbit" {
                    let mbit = match v.get_ref() {
                        DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
                        DeValue::Integer(_) => as_u64(v.get_ref()).map(|u| u as f64),
                        _ => return Err(type_err(ctx, on, &field, v, "a number of Mbit/s")),
                    };
                    let bytes = mbit
                        .filter(|m| m.is_finite() && *m > 0.0)
                        .map(|m| (m * 1e6 / 8.0).round())
                        .filter(|b| *b >= 1.0 && *b <= i64::MAX as f64);
                    let Some(b) = bytes else {
                        return Err(at(
                            format!(
                                "{} is not a usable ceiling (more than 0.000004 Mbit/s; leave it out for no ceiling)",
                                ctx.src(v)
                            ),
                            v.span().start,
                        ));
                    };
                    b as u64
                } else {
                    if !v.get_ref().is_integer() {
                        return Err(type_err(ctx, on, &field, v, "a whole number of bytes/s"));
                    }
                    match as_u64(v.get_ref()) {
                        Some(b) if (1..=i64::MAX as u64).contains(&b) => b,
                        _ => {
                            return Err(at(
                                format!(
                                    "{} is out of range (1 to {}; leave it out for no ceiling)",
                                    ctx.src(v),
                                    i64::MAX
                                ),
                                v.span().start,
                            ));
                        }
                    }
                };
                p.ceiling_bytes_per_s = Some(bytes);
            }
            "hours" => {
                let Some(s) = v.get_ref().as_str() else {
                    return Err(type_err(ctx, on, &field, v, "a window \"HH:MM-HH:MM\""));
                };
                p.allowed_hours = Some(HoursWindow::parse(s).map_err(|m| at(m, v.span().start))?);
            }
            "max_transfers" => {
                if !v.get_ref().is_integer() {
                    return Err(type_err(ctx, on, &field, v, "a whole number"));
                }
                match as_u64(v.get_ref()).and_then(|n| u32::try_from(n).ok()) {
                    Some(n) if n >= 1 => p.max_transfers = n,
                    _ => {
                        return Err(at(
                            format!("{} is out of range (1 to {})", ctx.src(v), u32::MAX),
                            v.span().start,
                        ));
                    }
                }
            }
            _ => {
                return Err(at(
                    format!("unknown field (expected one of {WAN_FIELDS})"),
                    k.span().start,
                ));
            }
        }
        let l = ctx.line(v.span().start);
        lines.fields.insert(field, l);
        if key == "ceiling_mbit" {
            lines.fields.insert("wan.ceiling_bytes_per_s".into(), l);
        }
    }
    Ok(p)
}

/// Parses a subnet in CIDR form; a bare address is a host route (/32, /128). Host bits must
/// be clear.
pub fn parse_subnet(s: &str) -> Result<IpNet, String> {
    let t = s.trim();
    let net = match t.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => match t.parse::<std::net::IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => return Err(format!("{s:?} is not a subnet (like \"10.1.2.0/24\")")),
        },
    };
    if net.trunc() != net {
        return Err(format!(
            "{s:?} has host bits set (did you mean {}?)",
            net.trunc()
        ));
    }
    Ok(net)
}
