//! A fuzz runner for every decoder that reads bytes from a peer or a file (stable Rust:
//! no libFuzzer). For each decoder it feeds `--inputs` inputs (default 1,000,000): 1 in
//! 10 random bytes, the rest mutations of a corpus of valid encodings (bit flips,
//! random and boundary bytes, inserted, deleted, duplicated and spliced ranges, token
//! insertions for text formats), from a deterministic seed. Inputs a decoder accepts
//! join its corpus (up to 1,024), a crude feedback that reaches deeper fields. Each
//! input runs under `catch_unwind`; a panic is a crash, counted and saved to
//! `target/fuzz-crashes/`.
//!
//! ```sh
//! cargo run --release -p branchline --example fuzz -- [--inputs N] [--seed S] [--only NAME]
//! ```
//!
//! Prints one line per decoder (inputs, accepted, crashes, seconds) and exits 1 if any
//! decoder crashed. See `bench/README.md`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

use branchline_config::Config;
use branchline_office::{TopologyFile, Tree};
use branchline_quic::frame::{FrameHeader, HEADER_LEN as LARGE_HEADER_LEN, decode_frame};
use branchline_quic::piece_wire::{
    HaveQuery, PieceRequest, RESPONSE_HEADER_LEN, Request, ResponseHeader,
};
use branchline_store::{Bitfield, ContentId, PieceMap, PieceSize};
use branchline_wire::large::{LargeRequest, LargeResponse};
use branchline_wire::msg::{
    Ack, AdminChunk, Assign, ClientPorts, ConnectorSigned, ContentMeta, DropCount, Heartbeat,
    IHave, PublishBegin, PublishChunk, Register, TransferSignal, WhoHas,
};
use branchline_wire::validate::{content_id, drop_counts};
use branchline_wire::{Body, DeploymentKey, Envelope, SealingKey, frame};
use prost::Message as _;

/// Deterministic xorshift64* generator (no crate: the runner must reproduce a run from
/// its seed alone).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Runs one input through a decoder; returns whether the input was accepted.
type Decoder = Box<dyn Fn(&[u8]) -> bool>;

/// One decoder under test.
struct Target {
    name: &'static str,
    corpus: Vec<Vec<u8>>,
    /// Text format: mutations also insert tokens of the format.
    tokens: &'static [&'static str],
    /// Longest random input.
    max_len: usize,
    run: Decoder,
}

const INTERESTING: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, 0xfe, 0x40, 0x20];
const CORPUS_CAP: usize = 1024;

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], tokens: &[&str], max_len: usize) -> Vec<u8> {
    if corpus.is_empty() || rng.below(10) == 0 {
        let len = rng.below(max_len + 1);
        return (0..len).map(|_| rng.byte()).collect();
    }
    let mut data = corpus[rng.below(corpus.len())].clone();
    for _ in 0..1 + rng.below(4) {
        match rng.below(if tokens.is_empty() { 9 } else { 11 }) {
            0 | 1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            2 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = rng.byte();
            }
            3 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            4 => {
                let at = rng.below(data.len() + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
                data.splice(at..at, bytes);
            }
            5 if !data.is_empty() => {
                let at = rng.below(data.len());
                let n = 1 + rng.below((data.len() - at).min(32));
                data.drain(at..at + n);
            }
            6 if !data.is_empty() => {
                let at = rng.below(data.len());
                let n = 1 + rng.below((data.len() - at).min(64));
                let copy = data[at..at + n].to_vec();
                let to = rng.below(data.len() + 1);
                data.splice(to..to, copy);
            }
            7 => {
                // Splice with another corpus item.
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let n = 1 + rng.below(other.len() - from);
                    let at = rng.below(data.len() + 1);
                    let cut = (at + n).min(data.len());
                    data.splice(at..cut, other[from..from + n].iter().copied());
                }
            }
            8 => {
                data.truncate(rng.below(data.len() + 1));
            }
            _ if !tokens.is_empty() => {
                let token = tokens[rng.below(tokens.len())];
                let at = rng.below(data.len() + 1);
                data.splice(at..at, token.bytes());
            }
            _ => {}
        }
    }
    data.truncate(max_len.max(64) * 4);
    data
}

struct Outcome {
    inputs: u64,
    accepted: u64,
    crashes: u64,
    secs: f64,
}

fn fuzz(target: &mut Target, inputs: u64, seed: u64, crash_dir: &Path) -> Outcome {
    let name_hash = target.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = Rng::new(seed ^ name_hash);
    let (mut accepted, mut crashes) = (0, 0);
    let start = Instant::now();
    for i in 0..inputs {
        let input = mutate(&mut rng, &target.corpus, target.tokens, target.max_len);
        match catch_unwind(AssertUnwindSafe(|| (target.run)(&input))) {
            Ok(true) => {
                accepted += 1;
                if target.corpus.len() < CORPUS_CAP {
                    target.corpus.push(input);
                } else if rng.below(64) == 0 {
                    let at = rng.below(CORPUS_CAP);
                    target.corpus[at] = input;
                }
            }
            Ok(false) => {}
            Err(_) => {
                crashes += 1;
                if crashes <= 20 {
                    let _ = std::fs::create_dir_all(crash_dir);
                    let path = crash_dir.join(format!("{}-{i}.bin", target.name));
                    let _ = std::fs::write(&path, &input);
                    eprintln!(
                        "crash in {} on input {i}, saved to {}",
                        target.name,
                        path.display()
                    );
                }
            }
        }
    }
    Outcome {
        inputs,
        accepted,
        crashes,
        secs: start.elapsed().as_secs_f64(),
    }
}

fn sealing_key() -> SealingKey {
    DeploymentKey::from_bytes([0x42; 32]).derive()
}

const CLIENT: &str = "00112233445566778899aabbccddeeff";

// `..Default::default()` everywhere: messages gain fields as the protocol evolves.
#[allow(clippy::needless_update)]
fn sample_bodies() -> Vec<Body> {
    let ports = ClientPorts {
        small_request: 34325,
        small_reply: 34324,
        ..ClientPorts::default()
    };
    let meta = ContentMeta {
        content_id: vec![7; 32],
        name: "app".into(),
        version: "2.1".into(),
        size: 5 << 20,
        origin: "https://files.example.com/app-2.1.msi".into(),
        piece_size: 1 << 20,
        ..ContentMeta::default()
    };
    vec![
        Body::Ack(Ack {}),
        Body::Register(Register {
            client_id: CLIENT.into(),
            hostname: "laptop-7".into(),
            addresses: vec!["10.0.0.7".into(), "fd00::7".into()],
            subnet: "10.0.0.0/24".into(),
            cache_size_bytes: 1 << 30,
            cache_free_bytes: 1 << 29,
            version: "0.1.0".into(),
            heartbeat_interval_ms: 30_000,
            ports: Some(ports),
            cert_request: vec![1; 97],
            ..Register::default()
        }),
        Body::Heartbeat(Heartbeat {
            client_id: CLIENT.into(),
            cache_free_bytes: 42,
            uptime_s: 7,
            drops: vec![DropCount {
                reason: "auth_failed".into(),
                count: 3,
            }],
            ..Heartbeat::default()
        }),
        Body::PublishBegin(PublishBegin {
            meta: Some(meta),
            map_len: 5 * 32,
            ..PublishBegin::default()
        }),
        Body::PublishChunk(PublishChunk {
            content_id: vec![7; 32],
            ..PublishChunk::default()
        }),
        Body::AdminChunk(AdminChunk::default()),
        Body::Assign(Assign {
            content_id: vec![7; 32],
            ..Assign::default()
        }),
        Body::WhoHas(WhoHas {
            content_id: vec![7; 32],
            client_id: CLIENT.into(),
            reply_port: 34325,
            ..WhoHas::default()
        }),
        Body::IHave(IHave {
            content_id: vec![7; 32],
            client_id: CLIENT.into(),
            content_port: 34760,
            complete: true,
            ..IHave::default()
        }),
        Body::TransferSignal(TransferSignal {
            content_id: vec![7; 32],
            kind: 1,
            bytes: 1000,
            rate: 100,
            ..TransferSignal::default()
        }),
        Body::ConnectorSigned(ConnectorSigned {
            connector: "admin".into(),
            issued_ms: 1_700_000_000_000,
            nonce: vec![3; 16],
            ..ConnectorSigned::default()
        }),
    ]
}

fn envelopes() -> Vec<Envelope> {
    sample_bodies()
        .into_iter()
        .enumerate()
        .map(|(i, body)| Envelope {
            msg_id: i as u64 + 1,
            sent_at_ms: 1_700_000_000_000,
            in_reply_to: 0,
            body: Some(body),
        })
        .collect()
}

/// What a receiver does with a decoded envelope before acting on it: name it and
/// validate its fields.
fn validate_envelope(env: &Envelope) -> bool {
    let Some(body) = &env.body else {
        return false;
    };
    let _ = body.kind();
    let _ = body.needs_connector();
    match body {
        Body::Register(r) => {
            let ok = r.validate().is_ok();
            if let Some(p) = &r.ports {
                let _ = branchline_wire::validate::ports_from_wire(p);
            }
            ok
        }
        Body::Heartbeat(h) => h.validate().is_ok() && drop_counts(&h.drops).is_ok(),
        Body::PublishBegin(p) => p.meta.as_ref().is_some_and(|m| m.validate().is_ok()),
        Body::PublishChunk(c) => content_id("content_id", &c.content_id).is_ok(),
        Body::WhoHas(w) => w.validate().is_ok(),
        Body::IHave(i) => i.validate().is_ok(),
        Body::ConnectorSigned(s) => {
            let _ = branchline_wire::connector::inner(s);
            true
        }
        _ => true,
    }
}

#[allow(clippy::needless_update)]
fn large_samples() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    use branchline_wire::large::{
        ContentInfo, GetContent, Locate, Locations, PeerHolding, ReportBadPeer, ReportHave,
        Request as Rq, Response as Rs, SendContent,
    };
    let requests = vec![
        Rq::GetContent(GetContent {
            content_id: vec![7; 32],
            name: "app".into(),
            version: "2.1".into(),
        }),
        Rq::Locate(Locate {
            content_id: vec![7; 32],
            reading_origin: true,
            was_rvp: false,
        }),
        Rq::ReportHave(ReportHave {
            content_id: vec![7; 32],
            have: vec![0xff, 0x0f],
            complete: false,
            ..ReportHave::default()
        }),
        Rq::ReportBadPeer(ReportBadPeer {
            content_id: vec![7; 32],
            peer_id: CLIENT.into(),
            reason: "bad piece 3".into(),
        }),
        Rq::SendContent(SendContent {
            content_id: vec![7; 32],
        }),
    ]
    .into_iter()
    .map(|r| LargeRequest { request: Some(r) }.encode_to_vec())
    .collect();
    let responses = vec![
        Rs::Content(ContentInfo {
            meta: Some(ContentMeta {
                content_id: vec![7; 32],
                name: "app".into(),
                version: "2.1".into(),
                size: 3 << 20,
                piece_size: 1 << 20,
                ..ContentMeta::default()
            }),
            piece_map: vec![9; 3 * 32],
        }),
        Rs::Locations(Locations {
            peers: vec![PeerHolding {
                client_id: CLIENT.into(),
                address: "10.0.0.7".into(),
                content_port: 34760,
                complete: true,
                have: vec![0xff],
                ..PeerHolding::default()
            }],
            read_origin: true,
            origin: "https://files.example.com/a".into(),
            office: "east".into(),
            ..Locations::default()
        }),
        Rs::Ack(Ack {}),
    ]
    .into_iter()
    .map(|r| LargeResponse { response: Some(r) }.encode_to_vec())
    .collect();
    (requests, responses)
}

fn targets() -> Vec<Target> {
    let key = sealing_key();
    let datagrams: Vec<Vec<u8>> = envelopes()
        .iter()
        .enumerate()
        .map(|(i, e)| frame::seal(&key, [i as u8; 12], e).expect("sample seals"))
        .chain(std::iter::once({
            let header = frame::Header::parse(
                &frame::seal(&key, [0; 12], &envelopes()[0]).expect("sample seals"),
            )
            .expect("own header parses");
            frame::key_mismatch_notice(branchline_wire::KeyId(9), &header).to_vec()
        }))
        .collect();
    let plaintexts: Vec<Vec<u8>> = envelopes().iter().map(|e| e.encode_to_vec()).collect();
    let (large_requests, large_responses) = large_samples();
    let mut large_messages = large_requests.clone();
    large_messages.extend(large_responses);
    let large_frames: Vec<Vec<u8>> = large_messages
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let kind = [
                branchline_quic::frame::FrameKind::Request,
                branchline_quic::frame::FrameKind::Response,
                branchline_quic::frame::FrameKind::Error,
            ][i % 3];
            branchline_quic::frame::encode_frame(kind, p, 1 << 20).expect("sample frames")
        })
        .collect();
    let piece_requests: Vec<Vec<u8>> = vec![
        PieceRequest {
            content: [7; 32],
            piece: 3,
            offset: 0,
            len: 0,
        }
        .encode()
        .to_vec(),
        PieceRequest {
            content: [1; 32],
            piece: u32::MAX,
            offset: 4096,
            len: 65536,
        }
        .encode()
        .to_vec(),
        HaveQuery { content: [7; 32] }.encode().to_vec(),
        ResponseHeader {
            status: branchline_quic::piece_wire::PieceStatus::Ok,
            len: 1 << 20,
        }
        .encode()
        .to_vec(),
    ];
    // Piece maps of three sizes with their ids and sizes (the decoder checks the map
    // against both).
    let maps: Vec<(PieceMap, u64)> = [(0usize, 14u32), (100_000, 14), (3 << 20, 20)]
        .into_iter()
        .map(|(len, log2)| {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let map =
                PieceMap::from_bytes(&data, PieceSize::new(1 << log2).expect("size")).expect("map");
            (map, len as u64)
        })
        .collect();
    let map_corpus: Vec<Vec<u8>> = maps.iter().map(|(m, _)| m.encode()).collect();
    let map_keys: Vec<(ContentId, u64)> = maps.iter().map(|(m, s)| (m.id(), *s)).collect();
    let topology = include_str!("fuzz/offices.toml");
    let config = include_str!("../../../packaging/branchline.toml");

    vec![
        Target {
            name: "small_frame_open",
            corpus: datagrams,
            tokens: &[],
            max_len: 1300,
            run: Box::new(move |b| match frame::open(std::slice::from_ref(&key), b) {
                Ok(branchline_wire::Incoming::Message { envelope, .. }) => {
                    validate_envelope(&envelope)
                }
                Ok(_) => true,
                Err(e) => {
                    let _ = branchline_transport::DropReason::from(e);
                    false
                }
            }),
        },
        Target {
            name: "small_payload_decode",
            corpus: plaintexts,
            tokens: &[],
            max_len: 1200,
            run: Box::new(|b| match Envelope::decode(b) {
                Ok(env) => validate_envelope(&env),
                Err(_) => false,
            }),
        },
        Target {
            name: "large_message_decode",
            corpus: large_messages,
            tokens: &[],
            max_len: 4096,
            run: Box::new(|b| {
                let request = LargeRequest::decode(b).is_ok_and(|r| r.request.is_some());
                let response = LargeResponse::decode(b).is_ok_and(|r| r.response.is_some());
                request || response
            }),
        },
        Target {
            name: "large_frame_decode",
            corpus: large_frames,
            tokens: &[],
            max_len: 4096,
            run: Box::new(|b| {
                if b.len() >= LARGE_HEADER_LEN {
                    let header: [u8; LARGE_HEADER_LEN] =
                        b[..LARGE_HEADER_LEN].try_into().expect("header length");
                    let _ = FrameHeader::decode(header, 1 << 20);
                }
                matches!(decode_frame(b, 1 << 20), Ok(Some(_)))
            }),
        },
        Target {
            name: "piece_wire_decode",
            corpus: piece_requests,
            tokens: &[],
            max_len: 96,
            run: Box::new(|b| {
                if let Some(&first) = b.first() {
                    let _ = Request::len_for_first_byte(first);
                }
                let _ = HaveQuery::decode(b);
                if b.len() >= RESPONSE_HEADER_LEN {
                    let header: [u8; RESPONSE_HEADER_LEN] =
                        b[..RESPONSE_HEADER_LEN].try_into().expect("header length");
                    let _ = ResponseHeader::decode(header);
                }
                match PieceRequest::decode(b) {
                    Ok(r) => {
                        let _ = r.range_in(1 << 20);
                        let _ = r.range_in(0);
                    }
                    Err(_) => {
                        let _ = Request::decode(b);
                    }
                }
                Request::decode(b).is_ok()
            }),
        },
        Target {
            name: "piece_map_decode",
            corpus: map_corpus,
            tokens: &[],
            max_len: 512,
            run: Box::new(move |b| {
                let mut ok = false;
                for (id, size) in &map_keys {
                    ok |= PieceMap::decode(b, id, *size).is_ok();
                }
                // A peer's have bitfield, as the client checks it.
                for pieces in [0u32, 1, 7, 8, 9, 1000] {
                    let _ = Bitfield::from_bytes(pieces, b);
                }
                ok
            }),
        },
        Target {
            name: "topology_file",
            corpus: vec![topology.as_bytes().to_vec()],
            tokens: &[
                "[[office]]\n",
                "[office.wan]\n",
                "name = \"x\"\n",
                "parent = \"central\"\n",
                "subnets = [\"10.2.0.0/24\"]\n",
                "type = \"vpn\"\n",
                "hours = \"22:00-06:00\"\n",
                "ceiling_mbit = 1e308\n",
                "rvp = \"",
                "auto = true\n",
                "\"",
                "=",
                "[",
                "]",
                ",",
                "\n",
                "::/0",
                "-1",
                "255.255.255.255/33",
            ],
            max_len: 2048,
            run: Box::new(|b| {
                let text = String::from_utf8_lossy(b);
                let parsed = TopologyFile::parse(&text).is_ok();
                match Tree::from_toml(&text) {
                    Ok(tree) => {
                        let _ = tree.export();
                        true
                    }
                    Err(_) => parsed,
                }
            }),
        },
        Target {
            name: "config_file",
            corpus: vec![config.as_bytes().to_vec()],
            tokens: &[
                "[server]\n",
                "[client]\n",
                "[ports]\n",
                "= 0\n",
                "= 65535\n",
                "= 70000\n",
                "= -1\n",
                "= \"\"\n",
                "= true\n",
                "= 1e400\n",
                "\"",
                "=",
                "[",
                "]",
                "\n",
                "#",
            ],
            max_len: 4096,
            run: Box::new(|b| {
                let text = String::from_utf8_lossy(b);
                match Config::parse(&text, Path::new("fuzz.toml")) {
                    Ok(c) => {
                        let _ = c.client.heartbeat_interval();
                        c.validate().is_ok()
                    }
                    Err(_) => false,
                }
            }),
        },
        Target {
            name: "connector_token",
            corpus: vec![
                branchline_wire::connector::Token([5; 32])
                    .to_text()
                    .into_bytes(),
                branchline_wire::connector::hex(&[0xab; 32]).into_bytes(),
            ],
            tokens: &["blct1_", "0", "f", "G"],
            max_len: 128,
            run: Box::new(|b| {
                let text = String::from_utf8_lossy(b);
                let _ = branchline_wire::connector::unhex(&text);
                branchline_wire::connector::Token::parse(&text).is_some()
            }),
        },
    ]
}

fn main() {
    let mut inputs: u64 = 1_000_000;
    let mut seed: u64 = 0x00b1_a4c4_11e5;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = |args: &mut dyn Iterator<Item = String>| {
            args.next().unwrap_or_else(|| {
                eprintln!("{a} needs a value");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--inputs" => inputs = value(&mut args).parse().expect("--inputs N"),
            "--seed" => seed = value(&mut args).parse().expect("--seed S"),
            "--only" => only = Some(value(&mut args)),
            "--bench" => {}
            other => {
                eprintln!("unknown argument {other}; use --inputs N, --seed S, --only NAME");
                std::process::exit(2);
            }
        }
    }
    // Panics are counted, not printed once per input.
    std::panic::set_hook(Box::new(|_| {}));
    let crash_dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/fuzz-crashes")
        .to_path_buf();
    println!("fuzz: {inputs} inputs per decoder, seed {seed}");
    let mut total_crashes = 0;
    let mut ran = 0;
    for mut target in targets() {
        if only.as_deref().is_some_and(|o| o != target.name) {
            continue;
        }
        ran += 1;
        let o = fuzz(&mut target, inputs, seed, &crash_dir);
        total_crashes += o.crashes;
        println!(
            "{:<22} inputs {:>9}  accepted {:>9}  crashes {}  ({:.1} s)",
            target.name, o.inputs, o.accepted, o.crashes, o.secs
        );
    }
    if ran == 0 {
        eprintln!("no decoder named {only:?}");
        std::process::exit(2);
    }
    if total_crashes > 0 {
        println!("{total_crashes} crashes; inputs in {}", crash_dir.display());
        std::process::exit(1);
    }
}
