//! A BitTorrent swarm of the package with a real client: aria2 (Debian
//! package `aria2`).
//!
//! aria2 cannot create torrents and Debian's trackers need configuration, so
//! this module writes the `.torrent` itself (bencode, SHA-1 pieces via
//! ring) and runs a minimal HTTP tracker (BEP 3 announce, BEP 23 compact
//! peer lists) in the origin host on the crate's small HTTP server. aria2
//! seeds from the origin host and every client host runs aria2 as a
//! leecher that keeps seeding, with DHT, local peer discovery and IPv6 off
//! so peers are found only through the tracker. A client is done when aria2
//! runs its download-complete hook; every byte is checked at the end.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::baseline::http::{Handler, HttpServer, Request, Response};
use crate::baseline::{ClientResult, DownloadOptions, DownloadReport, Package};
use crate::error::{Error, Result};
use crate::testbed::Testbed;

/// Tracker port in the origin host.
pub const TRACKER_PORT: u16 = 6969;
/// Piece size of the torrents written here, in bytes.
pub const PIECE_LENGTH: usize = 256 << 10;
/// Announce interval the tracker asks for, in seconds.
pub const ANNOUNCE_INTERVAL_S: i64 = 2;

/// A bencoded value (BEP 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bencode {
    /// Integer.
    Int(i64),
    /// Byte string.
    Bytes(Vec<u8>),
    /// List.
    List(Vec<Bencode>),
    /// Dictionary; keys are kept sorted, as bencode requires.
    Dict(BTreeMap<Vec<u8>, Bencode>),
}

impl Bencode {
    /// Byte string from text.
    pub fn str(s: &str) -> Bencode {
        Bencode::Bytes(s.as_bytes().to_vec())
    }

    /// Appends the encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Bencode::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Bencode::Bytes(b) => {
                out.extend_from_slice(format!("{}:", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Bencode::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode_into(out);
                }
                out.push(b'e');
            }
            Bencode::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    Bencode::Bytes(k.clone()).encode_into(out);
                    v.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }

    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode_into(&mut v);
        v
    }

    /// Decodes one value that must span all of `data`. Nesting is limited
    /// to 64 levels; malformed input is an error, never a panic.
    pub fn decode(data: &[u8]) -> Result<Bencode> {
        let (v, rest) = decode_at(data, 0)?;
        if !rest.is_empty() {
            return Err(Error::Baseline(format!(
                "{} bytes after the bencoded value",
                rest.len()
            )));
        }
        Ok(v)
    }
}

fn bad(what: &str) -> Error {
    Error::Baseline(format!("malformed bencode: {what}"))
}

fn decode_at(data: &[u8], depth: usize) -> Result<(Bencode, &[u8])> {
    if depth > 64 {
        return Err(bad("nested too deeply"));
    }
    match data.first() {
        Some(b'i') => {
            let end = data
                .iter()
                .position(|&b| b == b'e')
                .ok_or_else(|| bad("unterminated int"))?;
            let s = std::str::from_utf8(&data[1..end]).map_err(|_| bad("int"))?;
            if s.is_empty()
                || s.starts_with('+')
                || s == "-0"
                || (s.len() > 1 && s.starts_with('0'))
            {
                return Err(bad("int form"));
            }
            let i = s.parse().map_err(|_| bad("int"))?;
            Ok((Bencode::Int(i), &data[end + 1..]))
        }
        Some(b'l') => {
            let mut rest = &data[1..];
            let mut l = Vec::new();
            loop {
                if rest.first() == Some(&b'e') {
                    return Ok((Bencode::List(l), &rest[1..]));
                }
                let (v, r) = decode_at(rest, depth + 1)?;
                l.push(v);
                rest = r;
            }
        }
        Some(b'd') => {
            let mut rest = &data[1..];
            let mut d = BTreeMap::new();
            loop {
                if rest.first() == Some(&b'e') {
                    return Ok((Bencode::Dict(d), &rest[1..]));
                }
                let (k, r) = decode_at(rest, depth + 1)?;
                let Bencode::Bytes(k) = k else {
                    return Err(bad("dictionary key is not a string"));
                };
                if d.keys().next_back().is_some_and(|last| *last >= k) {
                    return Err(bad("dictionary keys not sorted or repeated"));
                }
                let (v, r) = decode_at(r, depth + 1)?;
                d.insert(k, v);
                rest = r;
            }
        }
        Some(b'0'..=b'9') => {
            let colon = data
                .iter()
                .position(|&b| b == b':')
                .ok_or_else(|| bad("string length"))?;
            if colon > 1 && data[0] == b'0' {
                return Err(bad("string length with a leading zero"));
            }
            let len: usize = std::str::from_utf8(&data[..colon])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("string length"))?;
            let start = colon + 1;
            let end = start
                .checked_add(len)
                .filter(|&e| e <= data.len())
                .ok_or_else(|| bad("string past the end"))?;
            Ok((Bencode::Bytes(data[start..end].to_vec()), &data[end..]))
        }
        _ => Err(bad("unexpected byte or end")),
    }
}

/// Decodes `%XX` escapes (and `+` as space) of a URL query component.
/// Returns `None` for a truncated or non-hex escape.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let h = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

/// A single-file torrent: its encoding and info hash.
#[derive(Clone, Debug)]
pub struct Torrent {
    /// The `.torrent` file contents.
    pub bytes: Vec<u8>,
    /// SHA-1 of the bencoded info dictionary.
    pub info_hash: [u8; 20],
}

/// Builds a single-file torrent of `pkg` announcing to `announce`.
pub fn make_torrent(pkg: &Package, announce: &str, piece_length: usize) -> Torrent {
    let mut pieces = Vec::with_capacity(pkg.bytes.len() / piece_length * 20 + 20);
    for chunk in pkg.bytes.chunks(piece_length) {
        let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, chunk);
        pieces.extend_from_slice(d.as_ref());
    }
    let mut info = BTreeMap::new();
    info.insert(b"length".to_vec(), Bencode::Int(pkg.len() as i64));
    info.insert(b"name".to_vec(), Bencode::str(&pkg.name));
    info.insert(b"piece length".to_vec(), Bencode::Int(piece_length as i64));
    info.insert(b"pieces".to_vec(), Bencode::Bytes(pieces));
    let info = Bencode::Dict(info);
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &info.encode());
    let mut info_hash = [0u8; 20];
    info_hash.copy_from_slice(digest.as_ref());
    let mut top = BTreeMap::new();
    top.insert(b"announce".to_vec(), Bencode::str(announce));
    top.insert(b"created by".to_vec(), Bencode::str("branchline-testbed"));
    top.insert(b"info".to_vec(), info);
    Torrent {
        bytes: Bencode::Dict(top).encode(),
        info_hash,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct PeerEntry {
    id: Vec<u8>,
    addr: Ipv4Addr,
    port: u16,
    left: u64,
}

/// Swarm state of the tracker: peers per info hash.
#[derive(Debug, Default)]
pub struct Tracker {
    swarms: Mutex<HashMap<Vec<u8>, Vec<PeerEntry>>>,
}

impl Tracker {
    /// Answers one announce request (BEP 3 with compact peers, BEP 23).
    /// Malformed requests get a bencoded `failure reason`.
    pub fn announce(&self, req: &Request) -> Vec<u8> {
        let fail = |why: &str| {
            let mut d = BTreeMap::new();
            d.insert(b"failure reason".to_vec(), Bencode::str(why));
            Bencode::Dict(d).encode()
        };
        let mut params: HashMap<&str, Vec<u8>> = HashMap::new();
        for kv in req.query.split('&') {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match percent_decode(v) {
                Some(v) => {
                    params.insert(k, v);
                }
                None => return fail("bad percent-encoding"),
            }
        }
        let Some(hash) = params.get("info_hash").filter(|h| h.len() == 20) else {
            return fail("missing info_hash");
        };
        let Some(id) = params.get("peer_id").filter(|p| p.len() == 20) else {
            return fail("missing peer_id");
        };
        let num = |k: &str| {
            params
                .get(k)
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
        };
        let Some(port) = num("port")
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p != 0)
        else {
            return fail("missing port");
        };
        let left = num("left").unwrap_or(0);
        let addr = match req.peer.ip() {
            std::net::IpAddr::V4(a) => a,
            std::net::IpAddr::V6(_) => return fail("IPv4 only"),
        };
        let stopped = params.get("event").map(|e| e.as_slice()) == Some(b"stopped");
        let Ok(mut swarms) = self.swarms.lock() else {
            return fail("tracker state poisoned");
        };
        let peers = swarms.entry(hash.clone()).or_default();
        peers.retain(|p| &p.id != id);
        if !stopped {
            peers.push(PeerEntry {
                id: id.clone(),
                addr,
                port,
                left,
            });
        }
        let mut compact = Vec::new();
        for p in peers.iter().filter(|p| &p.id != id) {
            compact.extend_from_slice(&p.addr.octets());
            compact.extend_from_slice(&p.port.to_be_bytes());
        }
        let seeds = peers.iter().filter(|p| p.left == 0).count();
        let mut d = BTreeMap::new();
        d.insert(b"interval".to_vec(), Bencode::Int(ANNOUNCE_INTERVAL_S));
        d.insert(b"min interval".to_vec(), Bencode::Int(1));
        d.insert(b"complete".to_vec(), Bencode::Int(seeds as i64));
        d.insert(
            b"incomplete".to_vec(),
            Bencode::Int((peers.len() - seeds) as i64),
        );
        d.insert(b"peers".to_vec(), Bencode::Bytes(compact));
        Bencode::Dict(d).encode()
    }

    /// Peers known for an info hash, and how many of them are seeds.
    pub fn swarm_size(&self, info_hash: &[u8; 20]) -> (usize, usize) {
        let Ok(s) = self.swarms.lock() else {
            return (0, 0);
        };
        s.get(info_hash.as_slice()).map_or((0, 0), |p| {
            (p.len(), p.iter().filter(|p| p.left == 0).count())
        })
    }
}

/// Kills aria2 processes and removes the work directory however the run
/// ends.
struct Cleanup {
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Shell script aria2 runs when a download completes (arguments: GID,
/// number of files, first file's path): it marks the file as done.
const DONE_HOOK: &str = "#!/bin/sh\ntouch \"$3.done\"\n";

fn aria2(tb: &Testbed, host: &str, dir: &Path, torrent: &Path, seeder: bool) -> Result<Child> {
    let hook = dir.parent().unwrap_or(dir).join("done-hook.sh");
    let mut c = tb.command(host, "aria2c")?;
    c.arg("--no-conf=true")
        .arg(format!("--on-bt-download-complete={}", hook.display()))
        .arg(format!("--dir={}", dir.display()))
        .args([
            "--seed-ratio=0.0",
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
            "--disable-ipv6=true",
            "--file-allocation=none",
            "--summary-interval=0",
            "--console-log-level=error",
            "--quiet=true",
            "--listen-port=6881-6889",
            "--bt-tracker-interval=1",
            "--bt-tracker-connect-timeout=5",
            "--bt-tracker-timeout=5",
        ]);
    if seeder {
        c.args(["--bt-seed-unverified=true", "--check-integrity=false"]);
    }
    c.arg(torrent)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::MissingProgram {
                program: "aria2c".into(),
                package: "aria2".into(),
                source: e,
            }
        } else {
            Error::io(format!("starting aria2c in {host}"), e)
        }
    })
}

/// Whether aria2 reported the download complete (it keeps its `.aria2`
/// control file while it goes on seeding, so that cannot tell).
fn complete(dir: &Path, pkg: &Package) -> bool {
    dir.join(format!("{}.done", pkg.name)).exists()
}

/// Whether `aria2c` can be started.
pub fn aria2_available() -> bool {
    std::process::Command::new("aria2c")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs the BitTorrent baseline: the origin seeds, every client joins the
/// swarm at once; returns when all clients hold the verified package.
pub fn run(tb: &Testbed, opts: &DownloadOptions) -> Result<DownloadReport> {
    let clients = opts.resolve_clients(tb)?;
    if !aria2_available() {
        return Err(Error::Baseline(
            "aria2c is not installed; install the Debian package aria2".into(),
        ));
    }
    let pkg = Package::generate("package.bin", opts.size, 0x5eed);
    let origin_addr = tb.host_addr(&opts.origin)?;
    let announce = format!("http://{origin_addr}:{TRACKER_PORT}/announce");
    let torrent = make_torrent(&pkg, &announce, PIECE_LENGTH);

    let dir = std::env::temp_dir().join(format!("{}-bittorrent", tb.run_name()));
    let mut cleanup = Cleanup {
        children: Vec::new(),
        dir: dir.clone(),
    };
    let mkdir = |p: &Path| {
        std::fs::create_dir_all(p).map_err(|e| Error::io(format!("creating {}", p.display()), e))
    };
    mkdir(&dir)?;
    let hook = dir.join("done-hook.sh");
    std::fs::write(&hook, DONE_HOOK).map_err(|e| Error::io("writing the aria2 hook", e))?;
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| Error::io("making the aria2 hook executable", e))?;
    let tfile = dir.join("package.torrent");
    std::fs::write(&tfile, &torrent.bytes).map_err(|e| Error::io("writing the torrent", e))?;
    let odir = dir.join(&opts.origin);
    mkdir(&odir)?;
    pkg.write_to(&odir)?;

    let tracker = Arc::new(Tracker::default());
    let t2 = tracker.clone();
    let handler: Handler = Arc::new(move |r: &Request| {
        if r.path == "/announce" {
            Response {
                status: 200,
                content_type: "text/plain",
                body: Arc::new(t2.announce(r)),
            }
        } else {
            Response::not_found()
        }
    });
    let server = HttpServer::start(tb, &opts.origin, TRACKER_PORT, handler)?;

    let before = tb.wan_counters()?;
    let origin_before = tb.host_if_stats(&opts.origin)?;
    cleanup
        .children
        .push(aria2(tb, &opts.origin, &odir, &tfile, true)?);
    // Wait for the seed to announce itself.
    let deadline = Instant::now() + Duration::from_secs(15);
    while tracker.swarm_size(&torrent.info_hash).1 == 0 {
        if Instant::now() > deadline {
            return Err(Error::Baseline(seeder_problem(&mut cleanup.children[0])));
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let start = Instant::now();
    let mut dirs = Vec::new();
    for c in &clients {
        let cdir = dir.join(c);
        mkdir(&cdir)?;
        cleanup.children.push(aria2(tb, c, &cdir, &tfile, false)?);
        dirs.push(cdir);
    }
    let mut done: Vec<Option<f64>> = vec![None; clients.len()];
    let deadline = start + opts.timeout;
    while done.iter().any(Option::is_none) {
        if Instant::now() > deadline {
            let missing: Vec<&String> = clients
                .iter()
                .zip(&done)
                .filter(|(_, d)| d.is_none())
                .map(|(c, _)| c)
                .collect();
            return Err(Error::Baseline(format!(
                "BitTorrent: {missing:?} not complete after {:?}",
                opts.timeout
            )));
        }
        for (i, d) in dirs.iter().enumerate() {
            if done[i].is_none() && complete(d, &pkg) {
                done[i] = Some(start.elapsed().as_secs_f64());
            }
        }
        for (i, ch) in cleanup.children.iter_mut().enumerate() {
            if let Ok(Some(st)) = ch.try_wait() {
                return Err(Error::Baseline(format!("aria2c #{i} exited early ({st})")));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = tb.wan_counters()?;
    let origin_after = tb.host_if_stats(&opts.origin)?;
    for (c, d) in clients.iter().zip(&dirs) {
        let got = std::fs::read(d.join(&pkg.name))
            .map_err(|e| Error::io(format!("reading {c}'s download"), e))?;
        if got != *pkg.bytes {
            return Err(Error::Baseline(format!(
                "{c}'s BitTorrent download differs from the package"
            )));
        }
    }
    drop(cleanup);
    server.stop()?;
    let mut results = Vec::new();
    for (c, d) in clients.iter().zip(done) {
        results.push(ClientResult {
            host: c.clone(),
            office: tb.state().host(c)?.office.clone(),
            seconds: d.unwrap_or(f64::NAN),
        });
    }
    Ok(DownloadReport {
        method: "bittorrent (aria2)".into(),
        package_bytes: pkg.len(),
        makespan_seconds: results.iter().map(|r| r.seconds).fold(0.0, f64::max),
        clients: results,
        wan: DownloadReport::wan_use(&before, &after, pkg.len()),
        origin_tx_bytes: origin_after.tx_bytes - origin_before.tx_bytes,
    })
}

fn seeder_problem(child: &mut Child) -> String {
    let _ = child.kill();
    let out = child
        .stderr
        .take()
        .map(|mut e| {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
            s
        })
        .unwrap_or_default();
    format!(
        "the aria2 seeder did not announce to the tracker within 15 s: {}",
        out.trim()
    )
}

/// Socket address of the tracker for a run.
pub fn tracker_addr(tb: &Testbed, origin: &str) -> Result<SocketAddr> {
    Ok(SocketAddr::from((tb.host_addr(origin)?, TRACKER_PORT)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bencode_round_trips_and_sorts_keys() {
        let mut d = BTreeMap::new();
        d.insert(b"z".to_vec(), Bencode::Int(-3));
        d.insert(
            b"a".to_vec(),
            Bencode::List(vec![Bencode::str("xy"), Bencode::Int(0)]),
        );
        let v = Bencode::Dict(d);
        assert_eq!(v.encode(), b"d1:al2:xyi0ee1:zi-3ee".to_vec());
        assert_eq!(Bencode::decode(&v.encode()).unwrap(), v);
        for bad in [
            &b"i03e"[..],
            b"i-0e",
            b"ie",
            b"5:ab",
            b"l",
            b"di1e1:ae",
            b"1:ab",
            b"x",
        ] {
            assert!(
                Bencode::decode(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn torrent_has_info_hash_of_its_info_dict() {
        let pkg = Package::generate("p.bin", 600_000, 1);
        let t = make_torrent(&pkg, "http://198.18.1.2:6969/announce", PIECE_LENGTH);
        let Bencode::Dict(top) = Bencode::decode(&t.bytes).unwrap() else {
            panic!("not a dict")
        };
        let info = top.get(&b"info"[..]).unwrap();
        let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &info.encode());
        assert_eq!(d.as_ref(), &t.info_hash);
        let Bencode::Dict(info) = info else {
            panic!("info not a dict")
        };
        let Some(Bencode::Bytes(pieces)) = info.get(&b"pieces"[..]) else {
            panic!("no pieces")
        };
        assert_eq!(pieces.len(), 3 * 20, "600000 bytes in 256 KiB pieces");
    }

    #[test]
    fn tracker_lists_other_peers_compactly() {
        let t = Tracker::default();
        let hash = "%01".repeat(20);
        let req = |peer: &str, id: char, left: u64| Request {
            method: "GET".into(),
            path: "/announce".into(),
            query: format!(
                "info_hash={hash}&peer_id={}&port=6881&left={left}&compact=1",
                id.to_string().repeat(20)
            ),
            peer: peer.parse().unwrap(),
        };
        let first = t.announce(&req("198.18.1.3:40000", 'a', 0));
        let Bencode::Dict(d) = Bencode::decode(&first).unwrap() else {
            panic!()
        };
        assert_eq!(d.get(&b"peers"[..]), Some(&Bencode::Bytes(vec![])));
        let second = t.announce(&req("198.18.2.2:40001", 'b', 100));
        let Bencode::Dict(d) = Bencode::decode(&second).unwrap() else {
            panic!()
        };
        assert_eq!(
            d.get(&b"peers"[..]),
            Some(&Bencode::Bytes(vec![198, 18, 1, 3, 0x1a, 0xe1]))
        );
        assert_eq!(t.swarm_size(&[1u8; 20]), (2, 1));
        let bad = Request {
            query: "info_hash=%zz".into(),
            ..req("198.18.1.3:1", 'a', 0)
        };
        assert!(String::from_utf8_lossy(&t.announce(&bad)).contains("failure reason"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c").unwrap(), b"a b c".to_vec());
        assert_eq!(percent_decode("%ff%00").unwrap(), vec![0xff, 0]);
        assert!(percent_decode("%2").is_none());
        assert!(percent_decode("%g0").is_none());
    }

    proptest::proptest! {
        #[test]
        fn bencode_decoder_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = Bencode::decode(&b);
        }

        #[test]
        fn bencode_decoder_survives_text_like_input(s in "[ilde0-9:a-c-]{0,80}") {
            if let Ok(v) = Bencode::decode(s.as_bytes()) {
                proptest::prop_assert_eq!(v.encode(), s.as_bytes().to_vec());
            }
        }

        #[test]
        fn percent_decoder_never_panics(s in ".{0,100}") {
            let _ = percent_decode(&s);
        }
    }
}
