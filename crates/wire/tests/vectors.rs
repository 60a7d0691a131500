//! Known-answer test vectors for every byte layout in `docs/wire.md`.
//!
//! The vectors are hex in `tests/vectors/*.txt` (`name: hex` lines, `#` comments), so a
//! second implementation can check itself against the same files. Each test here
//! recomputes the values from the inputs written in the file with this workspace's
//! code and fails if any byte differs: a change to a layout, a derivation or an encoding
//! shows up as a failing vector, never silently.
//!
//! To write the files afresh after an intended change of the wire format (then review
//! the diff, and bump the version the change needs): `BRANCHLINE_WRITE_VECTORS=1 cargo
//! test -p branchline-wire --test vectors`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use blake3::hazmat::HasherExt as _;
use branchline_quic::piece_wire::{
    HaveQuery, PieceRequest, PieceStatus, RESPONSE_HEADER_LEN, Request, ResponseHeader,
};
use branchline_quic::{CertRequest, ClientIdentity};
use branchline_store::{Bitfield, ContentId, PieceMap, PieceSize};
use branchline_wire::frame::{self, Header, Incoming};
use branchline_wire::large::{LargeRequest, Locate};
use branchline_wire::msg::{DropCount, Heartbeat};
use branchline_wire::{Body, DeploymentKey, Envelope};
use prost::Message as _;
use ring::hkdf;

// ---------------------------------------------------------------------------------------
// Vector files

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name)
}

fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text).expect("hex digits")
}

/// One vector file: its values by name, in file order for writing.
struct Vectors {
    file: &'static str,
    header: &'static str,
    stored: BTreeMap<String, String>,
    computed: Vec<(String, String)>,
}

impl Vectors {
    fn open(file: &'static str, header: &'static str) -> Self {
        let stored = std::fs::read_to_string(path(file))
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.split_once(':').expect("`name: hex` lines");
                (k.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        Self {
            file,
            header,
            stored,
            computed: Vec::new(),
        }
    }

    /// An input of the vector, as stored (or `default` when writing the file afresh).
    fn input(&mut self, name: &str, default: &[u8]) -> Vec<u8> {
        let value = if writing() {
            default.to_vec()
        } else {
            unhex(self.stored.get(name).unwrap_or_else(|| {
                panic!("{}: input `{name}` is missing", self.file);
            }))
        };
        self.computed.push((name.to_owned(), hex(&value)));
        value
    }

    /// A value recomputed from the inputs: must equal the stored one.
    fn check(&mut self, name: &str, value: &[u8]) {
        let value = hex(value);
        if !writing() {
            let stored = self.stored.get(name).unwrap_or_else(|| {
                panic!("{}: vector `{name}` is missing", self.file);
            });
            assert_eq!(
                stored, &value,
                "{}: `{name}` differs from the known answer (stored first)",
                self.file
            );
        }
        self.computed.push((name.to_owned(), value));
    }

    fn finish(self) {
        if writing() {
            let mut out = String::from(self.header);
            for (k, v) in &self.computed {
                out.push_str(&format!("{k}: {v}\n"));
            }
            std::fs::write(path(self.file), out).expect("write vector file");
        } else {
            for name in self.stored.keys() {
                assert!(
                    self.computed.iter().any(|(k, _)| k == name),
                    "{}: `{name}` is in the file but no test checks it",
                    self.file
                );
            }
        }
    }
}

fn writing() -> bool {
    std::env::var_os("BRANCHLINE_WRITE_VECTORS").is_some()
}

fn seq(start: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| start.wrapping_add(i as u8)).collect()
}

fn hkdf_expand(secret: &[u8], salt: &[u8], info: &[u8], len: usize) -> Vec<u8> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(secret);
    let mut out = vec![0u8; len];
    prk.expand(&[info], Len(len))
        .and_then(|okm| okm.fill(&mut out))
        .expect("HKDF output");
    out
}

// ---------------------------------------------------------------------------------------
// Small messages

const SMALL_HEADER: &str = "\
# Small messages (docs/wire.md, \"Datagram\" and \"Keys\").
# Inputs: deployment_key, nonce, msg_id (u64 BE), sent_at_ms (u64 BE), and the Heartbeat
# body: client_id (ASCII), cache_free_bytes (u64 BE), uptime_s (u64 BE), one DropCount
# (drop_reason ASCII, drop_count u64 BE).
# aead_key = HKDF-SHA256(salt \"branchline deployment key v1\", ikm deployment_key,
#            info \"small-messages aead\", 32 bytes)
# key_id   = HKDF-SHA256(same salt and ikm, info \"key id\", 4 bytes), big-endian u32
# fingerprint = HKDF-SHA256(same, info \"fingerprint\", 16 bytes)
# envelope = the protobuf encoding of the Envelope (deterministic: fields in tag order)
# datagram = \"BL\" 01 01 key_id nonce || ChaCha20-Poly1305(aead_key, nonce,
#            aad = the 20 header bytes, envelope)
# key_mismatch_notice = \"BL\" 01 02 || responder key id || echoed nonce (the responder
#            here holds the key 0xff repeated 32 times)
";

#[test]
fn sealed_heartbeat() {
    let mut v = Vectors::open("small_message.txt", SMALL_HEADER);
    let key_bytes: [u8; 32] = v.input("deployment_key", &seq(0, 32)).try_into().unwrap();
    let nonce: [u8; 12] = v.input("nonce", &seq(0xa0, 12)).try_into().unwrap();
    let msg_id = v.input("msg_id", &0x0123_4567_89ab_cdef_u64.to_be_bytes());
    let sent_at = v.input("sent_at_ms", &1_700_000_000_000_u64.to_be_bytes());
    let client_id = v.input("client_id", b"00112233445566778899aabbccddeeff");
    let free = v.input("cache_free_bytes", &1_000_000_u64.to_be_bytes());
    let uptime = v.input("uptime_s", &3600_u64.to_be_bytes());
    let reason = v.input("drop_reason", b"auth_failed");
    let count = v.input("drop_count", &2_u64.to_be_bytes());
    let u64_of = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));

    const SALT: &[u8] = b"branchline deployment key v1";
    let aead_key = hkdf_expand(&key_bytes, SALT, b"small-messages aead", 32);
    v.check("aead_key", &aead_key);
    let key_id = hkdf_expand(&key_bytes, SALT, b"key id", 4);
    v.check("key_id", &key_id);
    let fingerprint = hkdf_expand(&key_bytes, SALT, b"fingerprint", 16);
    v.check("fingerprint", &fingerprint);

    let key = DeploymentKey::from_bytes(key_bytes);
    let sealing = key.derive();
    assert_eq!(sealing.id().0.to_be_bytes().to_vec(), key_id);
    assert_eq!(key.fingerprint().replace(':', ""), hex(&fingerprint));

    let envelope = Envelope {
        msg_id: u64_of(&msg_id),
        sent_at_ms: u64_of(&sent_at),
        in_reply_to: 0,
        body: Some(Body::Heartbeat(Heartbeat {
            client_id: String::from_utf8(client_id).unwrap(),
            cache_free_bytes: u64_of(&free),
            uptime_s: u64_of(&uptime),
            drops: vec![DropCount {
                reason: String::from_utf8(reason).unwrap(),
                count: u64_of(&count),
            }],
        })),
    };
    v.check("envelope", &envelope.encode_to_vec());
    let datagram = frame::seal(&sealing, nonce, &envelope).unwrap();
    v.check("datagram", &datagram);
    match frame::open(std::slice::from_ref(&sealing), &datagram).unwrap() {
        Incoming::Message { envelope: e, .. } => assert_eq!(*e, envelope),
        other => panic!("{other:?}"),
    }

    let other = DeploymentKey::from_bytes([0xff; 32]).derive();
    let notice = frame::key_mismatch_notice(other.id(), &Header::parse(&datagram).unwrap());
    v.check("key_mismatch_notice", &notice);
    v.finish();
}

// ---------------------------------------------------------------------------------------
// Piece map

const MAP_HEADER: &str = "\
# A three-piece item (docs/wire.md, \"Piece map\").
# Inputs: piece_size (u32 BE) and size (u64 BE); byte i of the content is i mod 251.
# cv_N = BLAKE3 chaining value of piece N: the non-root output of a hasher started at
#        input offset N * piece_size (BLAKE3 \"hazmat\" API), 32 bytes
# content_id = BLAKE3(content), which equals the root merge of cv_0..cv_2
# piece_map = \"BLPM\" 01 log2(piece_size) 00 00 || size (u64 LITTLE-endian) ||
#             content_id || cv_0 || cv_1 || cv_2
";

fn content_bytes(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

#[test]
fn three_piece_map() {
    let mut v = Vectors::open("piece_map.txt", MAP_HEADER);
    let piece_size = v.input("piece_size", &16_384_u32.to_be_bytes());
    let size = v.input("size", &(2 * 16_384 + 1000_u64).to_be_bytes());
    let piece_size = u32::from_be_bytes(piece_size.try_into().unwrap());
    let size = u64::from_be_bytes(size.try_into().unwrap());
    let data = content_bytes(size as usize);
    let map = PieceMap::from_bytes(&data, PieceSize::new(piece_size).unwrap()).unwrap();
    assert_eq!(
        map.piece_count(),
        3,
        "the vector is about a three-piece item"
    );

    let encoded = map.encode();
    for (i, piece) in data.chunks(piece_size as usize).enumerate() {
        let mut h = blake3::Hasher::new();
        h.set_input_offset(i as u64 * u64::from(piece_size));
        h.update(piece);
        let cv = h.finalize_non_root();
        v.check(&format!("cv_{i}"), &cv);
        let at = 48 + 32 * i;
        assert_eq!(&encoded[at..at + 32], &cv[..], "piece {i} in the map");
        map.verify_piece(i as u32, piece).unwrap();
    }
    v.check("content_id", map.id().as_bytes());
    assert_eq!(map.id(), ContentId::of_bytes(&data));
    v.check("piece_map", &encoded);
    assert_eq!(
        PieceMap::decode(&encoded, &map.id(), size).unwrap(),
        map,
        "the encoded map decodes and verifies"
    );
    v.finish();
}

// ---------------------------------------------------------------------------------------
// Certificate request

const CERT_HEADER: &str = "\
# Certificate request (docs/wire.md, \"Certificate request\"), 97 bytes.
# Input: seed, the 32-byte Ed25519 private key (RFC 8032).
# public_key = the Ed25519 public key of seed
# signed_message = \"branchline/cert-request/1\" 00 || public_key
# cert_request = 01 || public_key || Ed25519 signature of signed_message (64 bytes)
";

/// Base64 (standard alphabet, padded), for the PEM file the client reads its key from.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

#[test]
fn certificate_request_from_a_fixed_seed() {
    let mut v = Vectors::open("cert_request.txt", CERT_HEADER);
    let seed = v.input("seed", &seq(0x40, 32));
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
    let public_key: [u8; 32] = ring::signature::KeyPair::public_key(&pair)
        .as_ref()
        .try_into()
        .unwrap();
    v.check("public_key", &public_key);
    let mut signed = b"branchline/cert-request/1\0".to_vec();
    signed.extend_from_slice(&public_key);
    v.check("signed_message", &signed);
    let mut request = vec![1u8];
    request.extend_from_slice(&public_key);
    request.extend_from_slice(pair.sign(&signed).as_ref());
    v.check("cert_request", &request);

    // The node code decodes and verifies it ...
    let decoded = CertRequest::decode(&request).unwrap();
    decoded.verify().unwrap();
    assert_eq!(decoded.encode().to_vec(), request);
    // ... and builds the same bytes from the same key (PKCS#8 v1 of the seed, RFC 8410).
    let mut pkcs8 = unhex("302e020100300506032b657004220420");
    pkcs8.extend_from_slice(&seed);
    let dir = tempfile::tempdir().unwrap();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64(&pkcs8)
    );
    let key_path = dir.path().join("identity.key");
    std::fs::write(&key_path, pem).unwrap();
    std::fs::set_permissions(
        &key_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let client = ClientIdentity::load_or_generate(dir.path()).unwrap();
    assert_eq!(
        client.cert_request().unwrap().encode().to_vec(),
        request,
        "the client builds the vector's request from the vector's key"
    );
    v.finish();
}

// ---------------------------------------------------------------------------------------
// Content port, large-message frames, bitfields

const CONTENT_HEADER: &str = "\
# Content port and large-message frames (docs/wire.md, \"Content port\", \"Large
# messages\", \"Bitfields\"). All integers big-endian.
# Inputs: content_id (32 bytes), piece (u32), offset (u32), length (u32), piece_data
# (the bytes the responder returns for that request), reason (UTF-8).
# piece_request = 01 || content_id || piece || offset || length          (45 bytes)
# piece_response = status 00 || length (u32) || piece_data
# not_found_response = 01 00000000
# bad_request_response = 04 || length of reason (u32) || reason
# have_query = 02 || content_id                                          (33 bytes)
# have_bits_3 = the bitfield of pieces {0, 2} of 3: bit i in byte i/8, mask 1 << (i%8)
# have_bits_20 = the bitfield of pieces {0, 7, 8, 19} of 20
# have_response = 00 || length (u32) || have_bits_3
# large_request_frame = kind 01 || length (u32) || LargeRequest{Locate{content_id,
#                       reading_origin: true}} (protobuf)
# large_error_frame = kind 03 || length (u32) || reason
";

#[test]
fn content_port_and_large_frames() {
    let mut v = Vectors::open("content_port.txt", CONTENT_HEADER);
    let content: [u8; 32] = v.input("content_id", &seq(0xc0, 32)).try_into().unwrap();
    let u32_of = |b: Vec<u8>| u32::from_be_bytes(b.try_into().expect("4 bytes"));
    let piece = u32_of(v.input("piece", &2u32.to_be_bytes()));
    let offset = u32_of(v.input("offset", &16u32.to_be_bytes()));
    let len = u32_of(v.input("length", &8u32.to_be_bytes()));
    let data = v.input("piece_data", &seq(0x30, 8));
    let reason = v.input("reason", b"unknown request kind 0x07");

    let request = PieceRequest {
        content,
        piece,
        offset,
        len,
    };
    v.check("piece_request", &request.encode());
    assert_eq!(
        Request::decode(&request.encode()),
        Ok(Request::Piece(request))
    );
    let response = |status, body: &[u8]| {
        let mut out = ResponseHeader {
            status,
            len: body.len() as u32,
        }
        .encode()
        .to_vec();
        out.extend_from_slice(body);
        out
    };
    let ok = response(PieceStatus::Ok, &data);
    let header: [u8; RESPONSE_HEADER_LEN] = ok[..RESPONSE_HEADER_LEN].try_into().unwrap();
    assert_eq!(ResponseHeader::decode(header).unwrap().len, len);
    v.check("piece_response", &ok);
    v.check("not_found_response", &response(PieceStatus::NotFound, b""));
    v.check(
        "bad_request_response",
        &response(PieceStatus::BadRequest, &reason),
    );

    let query = HaveQuery { content };
    v.check("have_query", &query.encode());
    let mut three = Bitfield::new(3);
    three.set(0);
    three.set(2);
    v.check("have_bits_3", three.as_bytes());
    let mut twenty = Bitfield::new(20);
    for i in [0, 7, 8, 19] {
        twenty.set(i);
    }
    v.check("have_bits_20", twenty.as_bytes());
    assert_eq!(
        Bitfield::from_bytes(20, twenty.as_bytes()).unwrap(),
        twenty,
        "the bitfield reads back"
    );
    v.check(
        "have_response",
        &response(PieceStatus::Ok, three.as_bytes()),
    );

    use branchline_quic::frame::{FrameKind, encode_frame};
    let locate = LargeRequest {
        request: Some(branchline_wire::large::Request::Locate(Locate {
            content_id: content.to_vec(),
            reading_origin: true,
            was_rvp: false,
        })),
    }
    .encode_to_vec();
    v.check(
        "large_request_frame",
        &encode_frame(FrameKind::Request, &locate, 1 << 20).unwrap(),
    );
    v.check(
        "large_error_frame",
        &encode_frame(FrameKind::Error, &reason, 1 << 20).unwrap(),
    );
    v.finish();
}
