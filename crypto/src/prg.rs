//! Mask expansion: a 32-byte seed → a vector over Z_2^64, added to or subtracted
//! from an accumulator in place. Pure: no I/O. Follows NIST SP 800-38A §6.5 (CTR
//! mode) over FIPS 197 AES-128, keyed by RFC 5869 HKDF-SHA256.
//!
//! PRG choice: AES-128 in counter mode (RustCrypto `aes` + `ctr`), since protocol
//! version `fedcrm/v3`; `fedcrm/v1` and `v2` used ChaCha20, whose masks do not cancel
//! with these, so the wire version changed with it.
//!
//! - **Speed.** Masking is the node's hot loop and the coordinator's unmasking cost
//!   (one expansion per seed, d words each). The `aes` crate picks AES-NI, or VAES
//!   (256- or 512-bit) where present, at run time through `cpufeatures` (ARMv8's AES
//!   instructions likewise). On the 2-core AMD EPYC (AES-NI + VAES) where we measured,
//!   one node's masking for n = 50, d = 10^6 went from 247 ms with ChaCha20 to 96–117
//!   ms (`fedcrm bench secagg`; figures in ARCHITECTURE.md), and to 52–56 ms on both
//!   cores with [`expand_many_into`].
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
//!   ikm = seed, info = [`PRG_LABEL`]), 16 bytes; the initial counter block is zero
//!   and the whole 128-bit block counts up big-endian (SP 800-38A's standard
//!   incrementing function). A fixed counter start is safe: a key never masks two
//!   different vectors. Each seed is bound by [`crate::kdf`] to one round and one
//!   pair of nodes (or one node), so its keystream is one mask; the other side of the
//!   pair, or the coordinator removing it, recomputes the same mask on purpose.
//!
//! The keystream is read as consecutive little-endian u64 words and added (wrapping)
//! into the accumulator one L1-sized block at a time, so the keystream never travels
//! through memory as a second d-word vector.
//!
//! **All cores.** [`expand_many_into`] adds many masks into one accumulator on every
//! core: it splits the *vector* into one contiguous range per thread (each a whole
//! number of 16-byte AES blocks) and each thread seeks every seed's CTR stream to its
//! range's offset. No thread holds a d-word buffer of its own, and the result is
//! bit-identical to the sequential one: each word receives the same keystream words,
//! and wrapping addition is commutative.

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
/// calling thread. Measured on the 2-core EPYC (AES-NI + VAES) for the per-seed
/// kernel before the fused one, one thread against two, seeds × words: 1 × 2^12: 10 µs
/// vs 246 µs (starting the scoped threads costs ~0.2 ms there); 1 × 2^18: 446–554 vs
/// 642–996 µs; 50 × 2^13: 808–831 vs 886–1063 µs; 50 × 2^14: 1646–1705 vs 1232–1349 µs;
/// 1 × 2^20: 1796–2275 vs 1547–1841 µs. Two threads won from about 2^19.5 words.
const PARALLEL_MIN_WORDS: usize = 1 << 20;

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
