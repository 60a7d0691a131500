#!/usr/bin/env python3
"""Checks the vectors in this directory with an implementation independent of the Rust
code: Python's `cryptography` package and protobuf/bit layouts written out by hand from
docs/wire.md. Not run by `cargo test` (it needs python3-cryptography); run it by hand
after regenerating the vectors: `python3 crates/wire/tests/vectors/check_independent.py`.
BLAKE3 is not in the standard library, so the piece map is checked for layout only."""
import os
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HERE = os.path.dirname(os.path.abspath(__file__))
SALT = b"branchline deployment key v1"


def load(name):
    d = {}
    with open(os.path.join(HERE, name)) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                k, v = line.split(":", 1)
                d[k.strip()] = bytes.fromhex(v.strip())
    return d


def varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def f_varint(tag, n):
    return varint(tag << 3) + varint(n)


def f_len(tag, b):
    return varint(tag << 3 | 2) + varint(len(b)) + b


def be(b):
    return int.from_bytes(b, "big")


def bitfield(n, present):
    out = bytearray((n + 7) // 8)
    for i in present:
        out[i // 8] |= 1 << (i % 8)
    return bytes(out)


s = load("small_message.txt")


def hkdf(ikm, info, n):
    return HKDF(hashes.SHA256(), n, SALT, info).derive(ikm)


assert hkdf(s["deployment_key"], b"small-messages aead", 32) == s["aead_key"]
assert hkdf(s["deployment_key"], b"key id", 4) == s["key_id"]
assert hkdf(s["deployment_key"], b"fingerprint", 16) == s["fingerprint"]
drop = f_len(1, s["drop_reason"]) + f_varint(2, be(s["drop_count"]))
heartbeat = (
    f_len(1, s["client_id"])
    + f_varint(2, be(s["cache_free_bytes"]))
    + f_varint(3, be(s["uptime_s"]))
    + f_len(4, drop)
)
envelope = f_varint(1, be(s["msg_id"])) + f_varint(2, be(s["sent_at_ms"])) + f_len(14, heartbeat)
assert envelope == s["envelope"]
header = b"BL\x01\x01" + s["key_id"] + s["nonce"]
sealed = ChaCha20Poly1305(s["aead_key"]).encrypt(s["nonce"], envelope, header)
assert header + sealed == s["datagram"]
other = hkdf(b"\xff" * 32, b"key id", 4)
assert s["key_mismatch_notice"] == b"BL\x01\x02" + other + s["nonce"]

c = load("cert_request.txt")
key = Ed25519PrivateKey.from_private_bytes(c["seed"])
pk = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
assert pk == c["public_key"]
message = b"branchline/cert-request/1\x00" + pk
assert message == c["signed_message"]
assert c["cert_request"] == b"\x01" + pk + key.sign(message)
assert len(c["cert_request"]) == 97

p = load("content_port.txt")
cid = p["content_id"]
assert p["piece_request"] == b"\x01" + cid + p["piece"] + p["offset"] + p["length"]
assert p["piece_response"] == b"\x00" + len(p["piece_data"]).to_bytes(4, "big") + p["piece_data"]
assert p["not_found_response"] == b"\x01\x00\x00\x00\x00"
assert p["bad_request_response"] == b"\x04" + len(p["reason"]).to_bytes(4, "big") + p["reason"]
assert p["have_query"] == b"\x02" + cid
assert p["have_bits_3"] == bitfield(3, [0, 2])
assert p["have_bits_20"] == bitfield(20, [0, 7, 8, 19])
assert p["have_response"] == b"\x00\x00\x00\x00\x01" + p["have_bits_3"]
locate = f_len(2, f_len(1, cid) + f_varint(2, 1))
assert p["large_request_frame"] == b"\x01" + len(locate).to_bytes(4, "big") + locate
assert p["large_error_frame"] == b"\x03" + len(p["reason"]).to_bytes(4, "big") + p["reason"]

m = load("piece_map.txt")
size, piece_size = be(m["size"]), be(m["piece_size"])
assert m["piece_map"] == (
    b"BLPM\x01"
    + bytes([piece_size.bit_length() - 1])
    + b"\x00\x00"
    + size.to_bytes(8, "little")
    + m["content_id"]
    + m["cv_0"]
    + m["cv_1"]
    + m["cv_2"]
)
print("every vector agrees with the independent implementation")
