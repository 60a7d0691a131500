//! Validation: wire messages become typed values before anything acts on them.
//!
//! Authentication proves a message came from a holder of the deployment key; it does not
//! prove the fields are sane (a buggy or compromised client holds the key too). Handlers
//! therefore take the typed values below, never the raw protobuf structs.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;

use crate::msg::{ClientPorts, ContentMeta, Heartbeat, Register};

/// Longest hostname accepted (bytes), as in DNS.
pub const MAX_HOSTNAME: usize = 253;
/// Most addresses a client may report.
pub const MAX_ADDRESSES: usize = 16;
/// Longest version string accepted (bytes).
pub const MAX_VERSION: usize = 64;
/// Accepted heartbeat intervals.
pub const HEARTBEAT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);

/// A field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct Invalid {
    /// The field's wire name, dotted when nested (`meta.name`, `ports.small_request`).
    pub field: &'static str,
    /// What is wrong with it, in words for the sender (sent in `ErrorReply.detail`).
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Invalid {
    Invalid {
        field,
        reason: reason.into(),
    }
}

/// A client's identity: 128 random bits, written as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub [u8; 16]);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({self})")
    }
}

impl FromStr for ClientId {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        let b = s.as_bytes();
        if b.len() != 32 {
            return Err(invalid(
                "client_id",
                format!(
                    "must be 32 hex digits, has {} characters",
                    s.chars().count()
                ),
            ));
        }
        let mut out = [0u8; 16];
        for (i, pair) in b.chunks(2).enumerate() {
            let d = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            };
            match (d(pair[0]), d(pair[1])) {
                (Some(h), Some(l)) => out[i] = h * 16 + l,
                _ => return Err(invalid("client_id", "must be lowercase hex digits")),
            }
        }
        Ok(ClientId(out))
    }
}

/// An IP subnet in CIDR form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Subnet {
    /// The network address: host bits cleared.
    pub network: IpAddr,
    /// Prefix length in bits; text forms are refused above 32 (IPv4) or 128 (IPv6).
    pub prefix: u8,
}

impl Subnet {
    /// The subnet of `addr` with the given prefix length (host bits cleared).
    /// A prefix longer than the address family allows counts as the whole address.
    pub fn of(addr: IpAddr, prefix: u8) -> Subnet {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let network = IpNet::new_assert(addr, prefix.min(max)).network();
        Subnet { network, prefix }
    }

    /// Whether `addr` lies in this subnet (an address of the other family never does).
    pub fn contains(&self, addr: IpAddr) -> bool {
        Subnet::of(addr, self.prefix) == *self
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| invalid("subnet", format!("{s:?} is not in CIDR form (a.b.c.d/n)")))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| invalid("subnet", format!("{addr:?} is not an IP address")))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| invalid("subnet", format!("{prefix:?} is not a prefix length")))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(invalid(
                "subnet",
                format!("prefix /{prefix} is longer than {max}"),
            ));
        }
        let subnet = Subnet::of(addr, prefix);
        if subnet.network != addr {
            return Err(invalid("subnet", format!("{s} has host bits set")));
        }
        Ok(subnet)
    }
}

/// A client's listening ports, each in 1..=65535: the client half of the port table,
/// one type for the configuration and the wire.
pub use branchline_config::ClientPorts as Ports;

/// A client's ports as the wire carries them.
pub fn ports_to_wire(p: &Ports) -> ClientPorts {
    ClientPorts {
        small_request: p.small_request.into(),
        small_reply: p.small_reply.into(),
        large_fg_request: p.large_fg_request.into(),
        large_fg_reply: p.large_fg_reply.into(),
        large_bg_request: p.large_bg_request.into(),
        large_bg_reply: p.large_bg_reply.into(),
        broadcast: p.broadcast.into(),
        content_fg: p.content_fg.into(),
        content_bg: p.content_bg.into(),
        adaptive: p.adaptive.into(),
    }
}

/// Checks the ports a client reported: every one must be in 1..=65535.
pub fn ports_from_wire(p: &ClientPorts) -> Result<Ports, Invalid> {
    let port = |v: u32, name: &'static str| -> Result<u16, Invalid> {
        u16::try_from(v)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid(name, format!("{v} is not a port (1-65535)")))
    };
    Ok(Ports {
        small_request: port(p.small_request, "ports.small_request")?,
        small_reply: port(p.small_reply, "ports.small_reply")?,
        large_fg_request: port(p.large_fg_request, "ports.large_fg_request")?,
        large_fg_reply: port(p.large_fg_reply, "ports.large_fg_reply")?,
        large_bg_request: port(p.large_bg_request, "ports.large_bg_request")?,
        large_bg_reply: port(p.large_bg_reply, "ports.large_bg_reply")?,
        broadcast: port(p.broadcast, "ports.broadcast")?,
        content_fg: port(p.content_fg, "ports.content_fg")?,
        content_bg: port(p.content_bg, "ports.content_bg")?,
        adaptive: port(p.adaptive, "ports.adaptive")?,
    })
}

/// A validated [`Register`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The client's id.
    pub client_id: ClientId,
    /// The host's name: 1 to [`MAX_HOSTNAME`] bytes, no control characters.
    pub hostname: String,
    /// The addresses the client claims, 1 to [`MAX_ADDRESSES`] (informational: the server
    /// uses the registration's source address).
    pub addresses: Vec<IpAddr>,
    /// The client's subnet, without host bits.
    pub subnet: Subnet,
    /// Cache cap (bytes).
    pub cache_size_bytes: u64,
    /// Free cache space (bytes), at most `cache_size_bytes`.
    pub cache_free_bytes: u64,
    /// Client software version: 1 to [`MAX_VERSION`] bytes, no control characters.
    pub version: String,
    /// Interval between the client's heartbeats, within [`HEARTBEAT_RANGE`].
    pub heartbeat_interval: Duration,
    /// `None` when the client did not report ports (it uses the defaults).
    pub ports: Option<Ports>,
    /// The QUIC certificate request, if the client sent one (checked by the CA).
    pub cert_request: Option<Vec<u8>>,
}

fn check_text(field: &'static str, s: &str, max: usize) -> Result<String, Invalid> {
    if s.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if s.len() > max {
        return Err(invalid(
            field,
            format!("{} bytes is longer than {max}", s.len()),
        ));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(s.to_owned())
}

impl Register {
    /// Checks every field against the bounds documented on [`Registration`]; ports must
    /// be 1-65535 and `cert_request` at most 256 bytes (its contents are the CA's to
    /// check). The error names the first bad field.
    pub fn validate(&self) -> Result<Registration, Invalid> {
        let client_id: ClientId = self.client_id.parse()?;
        let hostname = check_text("hostname", &self.hostname, MAX_HOSTNAME)?;
        if self.addresses.is_empty() {
            return Err(invalid("addresses", "at least one address is required"));
        }
        if self.addresses.len() > MAX_ADDRESSES {
            return Err(invalid(
                "addresses",
                format!(
                    "{} addresses, at most {MAX_ADDRESSES}",
                    self.addresses.len()
                ),
            ));
        }
        let addresses = self
            .addresses
            .iter()
            .map(|a| {
                a.parse::<IpAddr>()
                    .map_err(|_| invalid("addresses", format!("{a:?} is not an IP address")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let subnet: Subnet = self.subnet.parse()?;
        if self.cache_free_bytes > self.cache_size_bytes {
            return Err(invalid(
                "cache_free_bytes",
                "free space is larger than the cache size",
            ));
        }
        let version = check_text("version", &self.version, MAX_VERSION)?;
        let heartbeat_interval = Duration::from_millis(self.heartbeat_interval_ms.into());
        if !HEARTBEAT_RANGE.contains(&heartbeat_interval) {
            return Err(invalid(
                "heartbeat_interval_ms",
                format!(
                    "{} ms is outside {}..={} ms",
                    self.heartbeat_interval_ms,
                    HEARTBEAT_RANGE.start().as_millis(),
                    HEARTBEAT_RANGE.end().as_millis()
                ),
            ));
        }
        let ports = self.ports.as_ref().map(ports_from_wire).transpose()?;
        if self.cert_request.len() > 256 {
            return Err(invalid("cert_request", "longer than 256 bytes"));
        }
        let cert_request = (!self.cert_request.is_empty()).then(|| self.cert_request.clone());
        Ok(Registration {
            client_id,
            hostname,
            addresses,
            subnet,
            cache_size_bytes: self.cache_size_bytes,
            cache_free_bytes: self.cache_free_bytes,
            version,
            heartbeat_interval,
            ports,
            cert_request,
        })
    }
}

/// A validated [`Heartbeat`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Beat {
    /// The sender's client id.
    pub client_id: ClientId,
    /// Free cache space (bytes), as reported (not checked against the cache size).
    pub cache_free_bytes: u64,
    /// Seconds since the client process started.
    pub uptime_s: u64,
}

impl Heartbeat {
    /// Checks the client id; the drop counters are checked apart, by [`drop_counts`].
    pub fn validate(&self) -> Result<Beat, Invalid> {
        Ok(Beat {
            client_id: self.client_id.parse()?,
            cache_free_bytes: self.cache_free_bytes,
            uptime_s: self.uptime_s,
        })
    }
}

/// Longest content name accepted (bytes).
pub const MAX_CONTENT_NAME: usize = 128;
/// Longest origin accepted (bytes).
pub const MAX_ORIGIN: usize = 512;

/// A 32-byte content id from a bytes field.
pub fn content_id(field: &'static str, bytes: &[u8]) -> Result<[u8; 32], Invalid> {
    bytes.try_into().map_err(|_| {
        invalid(
            field,
            format!("a content id is 32 bytes, got {}", bytes.len()),
        )
    })
}

/// A validated [`ContentMeta`] from a publisher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// The content id (BLAKE3 of the whole file).
    pub content_id: [u8; 32],
    /// 1 to [`MAX_CONTENT_NAME`] bytes, no `@` and no control characters.
    pub name: String,
    /// 1 to [`MAX_VERSION`] bytes, no control characters.
    pub version: String,
    /// File size (bytes), never 0.
    pub size: u64,
    /// HTTP(S) URL or file path, 1 to [`MAX_ORIGIN`] bytes, no control characters.
    pub origin: String,
    /// Piece size (bytes): a power of two from 16 KiB to 16 MiB.
    pub piece_size: u32,
}

impl ContentMeta {
    /// Checks what a publisher sends, against the bounds documented on [`Meta`]; the
    /// server-filled fields (`published_ms`, `complete_holders`, `server_holds`) are
    /// ignored. Field names in errors are prefixed `meta.`.
    pub fn validate(&self) -> Result<Meta, Invalid> {
        let content_id = content_id("meta.content_id", &self.content_id)?;
        let name = check_text("meta.name", &self.name, MAX_CONTENT_NAME)?;
        if name.contains('@') {
            return Err(invalid(
                "meta.name",
                "must not contain '@' (used for name@version)",
            ));
        }
        let version = check_text("meta.version", &self.version, MAX_VERSION)?;
        let origin = check_text("meta.origin", &self.origin, MAX_ORIGIN)?;
        if self.size == 0 {
            return Err(invalid("meta.size", "empty content cannot be published"));
        }
        if !self.piece_size.is_power_of_two()
            || !(16 * 1024..=16 * 1024 * 1024).contains(&self.piece_size)
        {
            return Err(invalid(
                "meta.piece_size",
                format!(
                    "{} is not a power of two from 16 KiB to 16 MiB",
                    self.piece_size
                ),
            ));
        }
        Ok(Meta {
            content_id,
            name,
            version,
            size: self.size,
            origin,
            piece_size: self.piece_size,
        })
    }
}

/// Validates free text sent by a connector (hostname or version).
pub fn text_field(field: &'static str, s: &str, max: usize) -> Result<String, Invalid> {
    check_text(field, s, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Register {
        Register {
            client_id: "00112233445566778899aabbccddeeff".into(),
            hostname: "pc-1".into(),
            addresses: vec!["10.1.2.3".into()],
            subnet: "10.1.2.0/24".into(),
            cache_size_bytes: 100,
            cache_free_bytes: 50,
            version: "0.1.0".into(),
            heartbeat_interval_ms: 30_000,
            ports: None,
            cert_request: vec![],
        }
    }

    #[test]
    fn discovery_office_names_are_bounded() {
        let ask = |office: String| crate::msg::WhoHas {
            content_id: vec![1; 32],
            client_id: "00112233445566778899aabbccddeeff".into(),
            reply_port: 34761,
            office,
        };
        assert!(ask("o".repeat(MAX_OFFICE_NAME)).validate().is_ok());
        let e = ask("o".repeat(MAX_OFFICE_NAME + 1)).validate().unwrap_err();
        assert_eq!(e.field, "office");
        let holding = |office: String| crate::msg::IHave {
            content_id: vec![1; 32],
            client_id: "00112233445566778899aabbccddeeff".into(),
            content_port: 34760,
            complete: true,
            have: vec![],
            office,
        };
        assert!(holding(String::new()).validate().is_ok());
        let e = holding("o".repeat(1000)).validate().unwrap_err();
        assert_eq!(e.field, "office");
    }

    #[test]
    fn accepts_good_registration() {
        let r = good().validate().unwrap();
        assert_eq!(r.client_id.to_string(), "00112233445566778899aabbccddeeff");
        assert!(r.subnet.contains("10.1.2.200".parse().unwrap()));
        assert!(!r.subnet.contains("10.1.3.1".parse().unwrap()));
    }

    #[test]
    fn rejects_each_bad_field_by_name() {
        type Mutation = Box<dyn Fn(&mut Register)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("client_id", Box::new(|r| r.client_id = "xyz".into())),
            ("client_id", Box::new(|r| r.client_id = "G".repeat(32))),
            ("hostname", Box::new(|r| r.hostname = String::new())),
            ("hostname", Box::new(|r| r.hostname = "a\nb".into())),
            ("hostname", Box::new(|r| r.hostname = "a".repeat(300))),
            ("addresses", Box::new(|r| r.addresses.clear())),
            ("addresses", Box::new(|r| r.addresses = vec!["nope".into()])),
            ("subnet", Box::new(|r| r.subnet = "10.1.2.3/24".into())),
            ("subnet", Box::new(|r| r.subnet = "10.1.2.0/33".into())),
            ("cache_free_bytes", Box::new(|r| r.cache_free_bytes = 101)),
            (
                "heartbeat_interval_ms",
                Box::new(|r| r.heartbeat_interval_ms = 5),
            ),
            (
                "ports.small_request",
                Box::new(|r| {
                    r.ports = Some(ClientPorts {
                        small_request: 70000,
                        ..Default::default()
                    })
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut r = good();
            mutate(&mut r);
            let err = r.validate().unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }
}

/// A validated [`crate::msg::WhoHas`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ask {
    /// The content id asked about.
    pub content_id: [u8; 32],
    /// The asker's client id.
    pub client_id: ClientId,
    /// The asker's port for [`crate::msg::IHave`] answers, 1-65535.
    pub reply_port: u16,
}

/// Longest office name in discovery messages (bytes).
pub const MAX_OFFICE_NAME: usize = 64;

impl crate::msg::WhoHas {
    /// Checks the content id (32 bytes), the client id, the reply port, and that `office`
    /// is at most [`MAX_OFFICE_NAME`] bytes (the holder compares it with its own).
    pub fn validate(&self) -> Result<Ask, Invalid> {
        office_field("office", &self.office)?;
        Ok(Ask {
            content_id: content_id("content_id", &self.content_id)?,
            client_id: self.client_id.parse()?,
            reply_port: port("reply_port", self.reply_port)?,
        })
    }
}

/// A validated [`crate::msg::IHave`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holding {
    /// The content id the holder answers about.
    pub content_id: [u8; 32],
    /// The holder's client id, which its certificate must name.
    pub client_id: ClientId,
    /// The holder's Foreground content port, 1-65535.
    pub content_port: u16,
    /// The holder has every piece.
    pub complete: bool,
    /// Empty when complete or not sent.
    pub have: Vec<u8>,
}

impl crate::msg::IHave {
    /// Checks the content id (32 bytes), the client id, the content port, and that
    /// `office` is at most [`MAX_OFFICE_NAME`] bytes; `have` is copied
    /// unchecked (the asker checks its length against the piece count before use) and the
    /// office's value is left to the asker.
    pub fn validate(&self) -> Result<Holding, Invalid> {
        office_field("office", &self.office)?;
        Ok(Holding {
            content_id: content_id("content_id", &self.content_id)?,
            client_id: self.client_id.parse()?,
            content_port: port("content_port", self.content_port)?,
            complete: self.complete,
            have: self.have.clone(),
        })
    }
}

fn office_field(field: &'static str, v: &str) -> Result<(), Invalid> {
    if v.len() > MAX_OFFICE_NAME {
        return Err(invalid(
            field,
            format!("{} bytes; at most {MAX_OFFICE_NAME}", v.len()),
        ));
    }
    Ok(())
}

fn port(field: &'static str, p: u32) -> Result<u16, Invalid> {
    match u16::try_from(p) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(invalid(field, format!("{p} is not a port (1-65535)"))),
    }
}

/// Most drop reasons a heartbeat may carry.
pub const MAX_DROP_REASONS: usize = 32;

/// Drop counters reported with a heartbeat: at most [`MAX_DROP_REASONS`] reasons of
/// at most 32 bytes of `[a-z_]` each.
pub fn drop_counts(drops: &[crate::msg::DropCount]) -> Result<Vec<(String, u64)>, Invalid> {
    if drops.len() > MAX_DROP_REASONS {
        return Err(invalid(
            "drops",
            format!("{} reasons; at most {MAX_DROP_REASONS}", drops.len()),
        ));
    }
    drops
        .iter()
        .map(|d| {
            if d.reason.is_empty()
                || d.reason.len() > 32
                || !d
                    .reason
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            {
                return Err(invalid("drops", format!("bad reason {:?}", d.reason)));
            }
            Ok((d.reason.clone(), d.count))
        })
        .collect()
}
