//! Mask expansion: a 32-byte seed → a vector over Z_2^32 or Z_2^64 (the round's
//! [`WordWidth`]), added to or subtracted from an accumulator in place. Pure: no I/O.
//! Follows NIST SP 800-38A §6.5 (CTR mode) over FIPS 197 AES-128, keyed by RFC 5869
//! HKDF-SHA256.
//!
//! PRG choice: AES-128 in counter mode (RustCrypto `aes` + `ctr`), since protocol
//! version `fedcrm/v3`; `fedcrm/v1` and `v2` used ChaCha20, whose masks do not cancel
//! with these, so the wire version changed with it.
//!
//! **Word width** (issue 9, `fedcrm/v4`). A round masks in the narrowest words its sum
//! fits: 32 bits when n × the largest per-node contribution (doubled for signed values,
//! plus any DP noise tail) stays below 2^32, else 64 (`fedcrm_analysis::width`). Counts
//! of a node's customers fit 32 bits for up to 1,023 nodes at the default bound of
//! 2^22 customers per node. Narrow words halve everything the masks cost: keystream
//! bytes (AES blocks) per mask, bytes on the wire, the coordinator's running sum and the
//! memory traffic of adding. They are exactly as secure: a mask is a uniform element
//! of Z_2^w either way, and the sum is exact as long as it fits, which the range
//! guarantees. The width is in the HKDF `info` ([`WordWidth::prg_info`]:
//! `fedcrm/v4/prg-aes128/w32` or `/w64`), so the two widths never share a key and a
//! 32-bit mask is never the prefix of a 64-bit one read another way; it is also in the
//! signed round start, so all parties agree on it. The kernel is generic over
//! [`Word`] (u32, u64): the keystream is read as consecutive little-endian words of the
//! width.
//!
//! - **Speed.** Masking is the node's hot loop and the coordinator's unmasking cost
//!   (one expansion per seed, d words each). The `aes` crate picks AES-NI, or VAES
//!   (256- or 512-bit) where present, at run time through `cpufeatures` (ARMv8's AES
//!   instructions likewise). On the 2-core AMD EPYC (AES-NI + VAES) where we measured,
//!   one node's masking for n = 50, d = 10^6 went from 247 ms with ChaCha20 to 96–117
//!   ms (`fedcrm bench secagg`; figures in ARCHITECTURE.md), to 52–56 ms on both
//!   cores with [`expand_many_into`], and further with 32-bit words and the fused
//!   kernel (ARCHITECTURE.md, "Measured").
//! - **Timing.** Without AES instructions the crate falls back to a constant-time
//!   fixsliced (bitsliced) software AES: no table lookups and no secret-dependent
//!   branches, so timing shows only the vector's length and the number of seeds, both
//!   public. (The fallback is also what a build with
//!   `RUSTFLAGS='--cfg aes_backend="soft"'` uses; `aes` 0.9 replaced 0.8's
//!   `aes_force_soft` with that flag.) Such a CPU is slower with it than it was with
//!   ChaCha20 (not measured here: every machine we have has AES-NI), never leakier.
//! - **Why 128-bit keys suffice.** The seeds come from X25519 agreements (about 128
//!   bits of security) or are drawn fresh, and each AES key is a fresh HKDF output that
//!   expands exactly one mask, so AES-128 does not lower the protocol's security
//!   level, and no multi-key or related-key setting arises. One expansion is at most
//!   the wire's `MAX_LENGTH` = 2^26 words = 2^25 blocks; CTR's distance from a random
//!   stream (the PRP/PRF switching term, about q²/2^129 for q blocks) is then below
//!   2^-78.
//! - **Key and counter.** key = HKDF-SHA256(salt = [`crate::PROTOCOL_VERSION`],
//!   ikm = seed, info = [`PRG_LABEL`] ‖ `/w32` or `/w64`), 16 bytes; the initial counter block is zero
//!   and the whole 128-bit block counts up big-endian (SP 800-38A's standard
//!   incrementing function). A fixed counter start is safe: a key never masks two
//!   different vectors. Each seed is bound by [`crate::kdf`] to one round and one
//!   pair of nodes (or one node), so its keystream is one mask; the other side of the
//!   pair, or the coordinator removing it, recomputes the same mask on purpose.
//!
//! The keystream is read as consecutive little-endian words and added (wrapping) into
//! the accumulator one L1-sized tile at a time, so the keystream never travels through
//! memory as a second d-word vector.
//!
//! **All cores, fused.** [`expand_many_into`] adds many masks into one accumulator on
//! every core: it splits the *vector* into one contiguous range per thread (each a
//! whole number of 16-byte AES blocks). Each thread keys every seed's cipher once,
//! seeks it to its range's offset, then walks its range in 4 KiB tiles, applying every
//! cipher's next keystream to a tile before moving to the next: the tile stays in L1
//! across all seeds instead of the whole vector streaming through memory once per
//! seed. No thread holds a d-word buffer of its own, and the result is bit-identical
//! to the sequential one: each word receives the same keystream words, and wrapping
//! addition is commutative.

use aes::Aes128;
use ctr::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use ring::hkdf;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::PROTOCOL_VERSION;
pub use crate::word::{Word, WordWidth};

/// The prefix of the HKDF `info` that turns a mask seed into an AES-128 key; the
/// info itself is this followed by the word width, `/w32` or `/w64`
/// ([`WordWidth::prg_info`]). It names the wire version that introduced it, so no
/// earlier or later expansion, and no expansion of the other width, shares a key.
pub const PRG_LABEL: &str = "fedcrm/v4/prg-aes128";

type Aes128Ctr = ctr::Ctr128BE<Aes128>;

/// A seed that expands to one mask. Zeroized on drop; `Debug` prints `MaskSeed(..)`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MaskSeed(pub(crate) [u8; 32]);

impl std::fmt::Debug for MaskSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MaskSeed(..)")
    }
}

impl MaskSeed {
    /// For test vectors and benchmarks; protocol seeds come from [`crate::kdf`].
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }
}

/// Whether a mask is added to or subtracted from the accumulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sign {
    Add,
    Sub,
}

/// Bytes of accumulator per tile, and of keystream per inner step: the tile and one
/// keystream buffer (8 KiB together) stay in a 32 KiB L1 data cache while every seed's
/// keystream is applied to the tile.
const TILE_BYTES: usize = 4096;

struct Len16;
impl hkdf::KeyType for Len16 {
    fn len(&self) -> usize {
        16
    }
}

/// The AES-128 key of one expansion: HKDF-SHA256(salt = version, ikm = seed,
/// info = [`WordWidth::prg_info`]) → 16 bytes.
///
/// RFC 5869, §2.2 (Extract) and §2.3 (Expand).
fn prg_cipher(seed: &MaskSeed, width: WordWidth) -> Aes128Ctr {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, PROTOCOL_VERSION.as_bytes()).extract(&seed.0);
    let infos = [width.prg_info().as_bytes()];
    // Unwrap safety: HKDF-SHA256 can always expand 16 bytes (limit is 255 * 32).
    let okm = prk.expand(&infos, Len16).unwrap();
    let mut key = [0u8; 16];
    // Unwrap safety: the output buffer has exactly the length requested above.
    okm.fill(&mut key).unwrap();
    // NIST SP 800-38A, §6.5: the initial counter block is zero (each key expands once).
    let cipher = Aes128Ctr::new(&key.into(), &[0u8; 16].into());
    key.zeroize();
    cipher
}

/// `acc[i] ±= PRG(seed)[i]` (wrapping, little-endian words of `W`'s width; the key
/// depends on the width).
///
/// NIST SP 800-38A, §6.5 (CTR keystream) over FIPS 197 AES-128; key from RFC 5869.
/// Bonawitz et al. CCS 2017, Fig. 4, Round 2 (MaskedInputCollection), user, and Round 4 (Unmasking),
/// server: PRG.
pub fn expand_into<W: Word>(seed: &MaskSeed, acc: &mut [W], sign: Sign) {
    let mut cipher = prg_cipher(seed, W::WIDTH);
    let mut buf = [0u8; TILE_BYTES];
    for tile in acc.chunks_mut(TILE_BYTES / W::BYTES) {
        apply_keystream(&mut cipher, tile, sign, &mut buf);
    }
    buf.zeroize();
}

/// Adds (or subtracts) the cipher's next `tile.len()` words of keystream into `tile`,
/// through `buf` (at least `tile.len() * W::BYTES` bytes; the caller zeroizes it).
fn apply_keystream<W: Word>(cipher: &mut Aes128Ctr, tile: &mut [W], sign: Sign, buf: &mut [u8]) {
    let bytes = &mut buf[..tile.len() * W::BYTES];
    cipher.write_keystream(bytes);
    match sign {
        Sign::Add => {
            for (a, w) in tile.iter_mut().zip(bytes.chunks_exact(W::BYTES)) {
                *a = a.wrapping_add(W::from_le(w));
            }
        }
        Sign::Sub => {
            for (a, w) in tile.iter_mut().zip(bytes.chunks_exact(W::BYTES)) {
                *a = a.wrapping_sub(W::from_le(w));
            }
        }
    }
}

/// Bytes per AES block: a thread's range starts on a block boundary, so its seek lands
/// on a whole counter value.
const AES_BLOCK_BYTES: usize = 16;

/// Below this many words of work (seeds × words), [`expand_many_into`] stays on the
/// calling thread. Re-measured for the fused kernel on the 2-core EPYC (AES-NI + VAES,
/// shared with other builds, load average ~5), one thread against two, best–median of
/// 5, 32-bit / 64-bit words: 1 × 2^12: 10 / 13 µs vs 79–113 / 78–90 µs (starting the
/// scoped threads costs ~0.1 ms); 1 × 2^15: 68 / 94 vs 101–118 / 138–266 µs; 1 × 2^16:
/// 135 / 187–211 vs 151–211 / 185–235 µs (a tie); 50 × 2^11: 243 / 324 vs 229–258 /
/// 329–374 µs (a tie); 1 × 2^17: 268–394 / 374–655 vs 200–239 / 234–319 µs; 50 × 2^12:
/// 457–493 / 649–652 vs 255–324 / 338–469 µs. Two threads win from about 2^17 words
/// of work, lower than the 2^20 the per-seed kernel needed (keying each cipher once per
/// thread, and the tile staying in L1, make each thread's share cheaper to start).
const PARALLEL_MIN_WORDS: usize = 1 << 17;

/// `acc[i] ±= PRG(seed)[i]` for every `(seed, sign)`, on all the machine's cores
/// ([`std::thread::available_parallelism`]); the result is bit-identical to calling
/// [`expand_into`] for each pair in turn.
///
/// The vector, not the seed list, is split: each thread owns one contiguous range of
/// `acc` (whole AES blocks). Inside a thread the kernel is fused: every seed's cipher
/// is keyed once and sought to the range's byte offset (NIST SP 800-38A, §6.5: block j
/// of the keystream is AES_K(counter j)); then the range is walked in tiles of
/// `TILE_BYTES` (4 KiB) of accumulator, and every cipher's next keystream is applied
/// to the tile before moving on. So the tile stays in L1 across all seeds, instead of
/// the whole d-word vector streaming through memory once per seed; memory is the
/// accumulator, the keyed ciphers and one 4 KiB buffer per thread. Every word gets
/// exactly the keystream words it would get sequentially, and wrapping addition
/// commutes, so the order does not matter.
///
/// Bonawitz et al. CCS 2017, Fig. 4, Round 2 (MaskedInputCollection), user, and Round 4
/// (Unmasking), server: PRG, once per seed.
pub fn expand_many_into<W: Word>(seeds: &[(&MaskSeed, Sign)], acc: &mut [W]) {
    let threads = if seeds.len().saturating_mul(acc.len()) < PARALLEL_MIN_WORDS { 1 } else { parallelism() };
    expand_many_on(seeds, acc, threads);
}

/// The number of threads [`expand_many_into`] uses for large work: the machine's
/// available parallelism (1 if unknown).
pub fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// [`expand_many_into`] on at most `threads` threads (1 = the calling thread only),
/// whatever the size: for tests that the split is exact, and for measuring.
pub fn expand_many_on<W: Word>(seeds: &[(&MaskSeed, Sign)], acc: &mut [W], threads: usize) {
    let words_per_block = AES_BLOCK_BYTES / W::BYTES;
    let blocks = acc.len().div_ceil(words_per_block);
    let threads = threads.min(blocks).max(1);
    if threads == 1 {
        fused(seeds, acc, 0);
        return;
    }
    let range = blocks.div_ceil(threads) * words_per_block;
    std::thread::scope(|scope| {
        for (i, part) in acc.chunks_mut(range).enumerate() {
            scope.spawn(move || fused(seeds, part, (i * range * W::BYTES) as u64));
        }
    });
}

/// The fused kernel over one range starting `offset` bytes into every seed's
/// keystream: key each cipher once, then tile by tile apply every cipher.
fn fused<W: Word>(seeds: &[(&MaskSeed, Sign)], part: &mut [W], offset: u64) {
    let mut ciphers: Vec<(Aes128Ctr, Sign)> = seeds
        .iter()
        .map(|(seed, sign)| {
            let mut cipher = prg_cipher(seed, W::WIDTH);
            // The seek stays within one expansion's stream: at most MAX_LENGTH words,
            // far below the 2^128-block counter's end.
            cipher.seek(offset);
            (cipher, *sign)
        })
        .collect();
    let mut buf = [0u8; TILE_BYTES];
    for tile in part.chunks_mut(TILE_BYTES / W::BYTES) {
        for (cipher, sign) in &mut ciphers {
            apply_keystream(cipher, tile, *sign, &mut buf);
        }
    }
    buf.zeroize();
    // The ciphers' key schedules zeroize on drop (`aes`/`ctr` feature `zeroize`).
    drop(ciphers);
}

/// The expansion itself, for known-answer tests.
pub fn expand<W: Word>(seed: &MaskSeed, len: usize) -> Vec<W> {
    let mut v = vec![W::default(); len];
    expand_into(seed, &mut v, Sign::Add);
    v
}
