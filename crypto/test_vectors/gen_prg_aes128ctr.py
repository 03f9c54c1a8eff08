#!/usr/bin/env python3
"""Writes v3/prg_aes128ctr.json: known answers for fedcrm_crypto::prg, computed
without the crate (Python's `cryptography` package, i.e. OpenSSL).

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install cryptography
    /tmp/venv/bin/python crypto/test_vectors/gen_prg_aes128ctr.py

The PRG (crypto/src/prg.rs, protocol fedcrm/v4): key = HKDF-SHA256(salt =
PROTOCOL_VERSION, ikm = seed, info = PRG_LABEL + "/w32" or "/w64"), 16 bytes;
keystream = AES-128-CTR (NIST SP 800-38A, initial counter block zero, 128-bit
big-endian increment) over zero bytes; words = consecutive little-endian u32 or u64
(the round's word width); Add adds them to a zero accumulator, Sub subtracts them
(mod 2^32 or 2^64). The output is deterministic: running the
script again must leave the file unchanged.
"""

import json
import os
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PROTOCOL_VERSION = b"fedcrm/v1"  # crypto/src/lib.rs: the KDFs' salt (unchanged)
PRG_LABEL = b"fedcrm/v4/prg-aes128"  # crypto/src/prg.rs; the info appends /w32 or /w64
WIDTHS = (32, 64)

# NIST SP 800-38A, Appendix F.5.1 (CTR-AES128.Encrypt): checks the AES-CTR below.
SP800_38A = {
    "key": "2b7e151628aed2a6abf7158809cf4f3c",
    "counter": "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
    "plaintext": "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710",
    "ciphertext": "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff"
    "5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee",
}


def hkdf(salt, ikm, info, length):
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def aes128_ctr(key, counter, data):
    enc = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()
    return enc.update(data) + enc.finalize()


def le_words(b, width=64):
    n, fmt = width // 8, "<Q" if width == 64 else "<I"
    return [struct.unpack(fmt, b[i : i + n])[0] for i in range(0, len(b) - len(b) % n, n)]


def info(width):
    return PRG_LABEL + b"/w%d" % width


def prg_key(seed, width):
    return hkdf(PROTOCOL_VERSION, seed, info(width), 16)


def expand(seed, length, sign, width):
    mask = (1 << width) - 1
    words = le_words(aes128_ctr(prg_key(seed, width), bytes(16), bytes(width // 8 * length)), width)
    return words if sign == "add" else [(-w) & mask for w in words]


def summary(out, width):
    return {
        "first8": [str(w) for w in out[:8]],
        "last": str(out[-1]),
        "wrapping_sum": str(sum(out) & ((1 << width) - 1)),
    }


def chacha20_v2(seed, length):
    """The retired fedcrm/v1–v2 PRG: ChaCha20 (RFC 8439), key = seed, nonce = 0,
    block counter from 0 (`cryptography` takes counter ‖ nonce as 16 bytes)."""
    enc = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    return le_words(enc.update(bytes(8 * length)))


def main():
    key, ctr = bytes.fromhex(SP800_38A["key"]), bytes.fromhex(SP800_38A["counter"])
    assert aes128_ctr(key, ctr, bytes.fromhex(SP800_38A["plaintext"])).hex() == SP800_38A["ciphertext"]
    # RFC 8439 Appendix A.1 test vector #1: checks the ChaCha20 used for the negatives.
    assert chacha20_v2(bytes(32), 2) == le_words(bytes.fromhex("76b8e0ada0f13d90405d6ae55386bd28"))

    seeds = [
        bytes(32),
        bytes(range(1, 33)),
        b"\xff" * 32,
        bytes.fromhex("a96e0b3287ffb0a5151907e37ce3307f26dc9b554c05ec295de13cadb35e9004"),
        bytes.fromhex("c97f7dbb06b75a72295b290949a6bae371a5aea4d8ff4116f1137f2607df2c4a"),
    ]
    # 64-bit words: 1 word is half an AES block; 7 and 513 are odd, so the last AES
    # block is cut in half; 513 and 1000 cross the PRG's 4096-byte (512-word) tile.
    # 32-bit words: 1, 3 and 7 end inside an AES block (4 words); 1025 and 2000 cross
    # the 4096-byte (1024-word) tile.
    cases = [
        (seeds[0], 1, "add", 64),
        (seeds[0], 1000, "add", 64),
        (seeds[1], 7, "add", 64),
        (seeds[1], 1000, "sub", 64),
        (seeds[2], 513, "add", 64),
        (seeds[3], 1000, "add", 64),
        (seeds[3], 513, "sub", 64),
        (seeds[4], 1000, "add", 64),
        (seeds[0], 1, "add", 32),
        (seeds[0], 2000, "add", 32),
        (seeds[1], 7, "add", 32),
        (seeds[1], 2000, "sub", 32),
        (seeds[2], 1025, "add", 32),
        (seeds[3], 3, "sub", 32),
        (seeds[3], 1025, "sub", 32),
        (seeds[4], 2000, "add", 32),
    ]
    vectors = []
    for seed, length, sign, width in cases:
        v = {"seed": seed.hex(), "width": width, "length": length, "sign": sign, "aes_key": prg_key(seed, width).hex()}
        v.update(summary(expand(seed, length, sign, width), width))
        vectors.append(v)

    s = seeds[1]
    ks = aes128_ctr(prg_key(s, 64), bytes(16), bytes(64))
    bad = [
        {
            "name": "bad_other_width",
            "why": "the 32-bit key's keystream read as 64-bit words: a mask of one width must not be one of the other",
            "width": 64,
            "seed": s.hex(),
            "first8": [str(w) for w in le_words(aes128_ctr(prg_key(s, 32), bytes(16), bytes(64)))],
        },
        {
            "name": "bad_other_width_32",
            "why": "the 64-bit key's keystream read as 32-bit words",
            "width": 32,
            "seed": s.hex(),
            "first8": [str(w) for w in le_words(aes128_ctr(prg_key(s, 64), bytes(16), bytes(32)), 32)],
        },
        {
            "name": "bad_v3_label",
            "why": "the fedcrm/v3 PRG (HKDF info fedcrm/v3/prg-aes128, no width): a v3 peer's mask, which must not cancel",
            "width": 64,
            "seed": s.hex(),
            "first8": [
                str(w)
                for w in le_words(aes128_ctr(hkdf(PROTOCOL_VERSION, s, b"fedcrm/v3/prg-aes128", 16), bytes(16), bytes(64)))
            ],
        },
        {
            "name": "bad_chacha20_v2",
            "width": 64,
            "why": "the fedcrm/v1-v2 PRG (ChaCha20, key = seed): an old peer's mask, which must not cancel",
            "seed": s.hex(),
            "first8": [str(w) for w in chacha20_v2(s, 8)],
        },
        {
            "name": "bad_seed_as_key",
            "width": 64,
            "why": "AES-128-CTR keyed with the seed's first 16 bytes, skipping HKDF",
            "seed": s.hex(),
            "first8": [str(w) for w in le_words(aes128_ctr(s[:16], bytes(16), bytes(64)))],
        },
        {
            "name": "bad_other_label",
            "width": 64,
            "why": "HKDF info fedcrm/v1/prg-aes128: a key not bound to this PRG's version",
            "seed": s.hex(),
            "first8": [
                str(w)
                for w in le_words(aes128_ctr(hkdf(PROTOCOL_VERSION, s, b"fedcrm/v1/prg-aes128", 16), bytes(16), bytes(64)))
            ],
        },
        {
            "name": "bad_counter_one",
            "width": 64,
            "why": "the same key with the counter starting at 1 (the keystream shifted by one block)",
            "seed": s.hex(),
            "first8": [str(w) for w in le_words(aes128_ctr(prg_key(s, 64), (1).to_bytes(16, "big"), bytes(64)))],
        },
        {
            "name": "bad_big_endian_words",
            "width": 64,
            "why": "the right keystream read as big-endian words",
            "seed": s.hex(),
            "first8": [str(struct.unpack(">Q", ks[i : i + 8])[0]) for i in range(0, 64, 8)],
        },
    ]

    out = {
        "description": (
            "prg::expand_into(seed, acc = zeros(length), sign) with words of `width` bits, protocol fedcrm/v4: "
            "key = HKDF-SHA256(salt = \"fedcrm/v1\" (PROTOCOL_VERSION), ikm = seed, info = "
            "\"fedcrm/v4/prg-aes128/w32\" or \"/w64\" (WordWidth::prg_info)), 16 bytes (aes_key); keystream = "
            "AES-128-CTR (NIST SP 800-38A, initial counter block 0, 128-bit big-endian increment) over zero bytes, "
            "read as consecutive little-endian words of `width` bits, added (sign add) or subtracted (sign sub) "
            "mod 2^width. Each vector: words 0..8 of the output (fewer if length < 8), the last word and the "
            "wrapping sum of all `length` words. sp800_38a: the published CTR-AES128 example, which checks the "
            "test's own AES-CTR. bad: outputs a wrong PRG would give for `seed` (first 8 words of `width` bits); "
            "prg::expand at that width must differ from each. Generated by gen_prg_aes128ctr.py with Python's "
            "`cryptography` (OpenSSL), independently of the crate. Word values are decimal strings."
        ),
        "sp800_38a": SP800_38A,
        "vectors": vectors,
        "bad": bad,
    }
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "v3", "prg_aes128ctr.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
