//! Mask expansion: a 32-byte seed → a vector over Z_2^64, added to or subtracted
//! from an accumulator in place. Pure: no I/O.
//!
//! PRG choice: ChaCha20 (RFC 8439 keystream, RustCrypto `chacha20`). It is constant
//! time on every CPU (no table lookups, unlike software AES), its SIMD backends
//! (AVX2/SSE2/NEON) are picked at run time, and it needs no AES-NI to be fast on the
//! small boxes franchisees run. The seed is always a fresh HKDF output bound to the
//! round and parties, used for exactly one expansion, so a zero nonce is safe.

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use zeroize::{Zeroize, ZeroizeOnDrop};

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

/// Bytes of keystream produced per inner step (fits in L1, amortises the call).
const BLOCK_BYTES: usize = 4096;

/// `acc[i] ±= PRG(seed)[i]` (wrapping, little-endian 64-bit words).
///
/// RFC 8439, §2.4 (the ChaCha20 keystream).
/// Bonawitz et al. CCS 2017, Fig. 4, Round 2 (MaskedInputCollection), user, and Round 4 (Unmasking),
/// server: PRG.
pub fn expand_into(seed: &MaskSeed, acc: &mut [u64], sign: Sign) {
    let mut cipher = ChaCha20::new(&seed.0.into(), &[0u8; 12].into());
    let mut buf = [0u8; BLOCK_BYTES];
    for chunk in acc.chunks_mut(BLOCK_BYTES / 8) {
        let bytes = &mut buf[..chunk.len() * 8];
        bytes.fill(0);
        cipher.apply_keystream(bytes);
        match sign {
            Sign::Add => {
                for (a, w) in chunk.iter_mut().zip(bytes.chunks_exact(8)) {
                    // Unwrap safety: chunks_exact(8) yields 8-byte slices.
                    *a = a.wrapping_add(u64::from_le_bytes(w.try_into().unwrap()));
                }
            }
            Sign::Sub => {
                for (a, w) in chunk.iter_mut().zip(bytes.chunks_exact(8)) {
                    // Unwrap safety: chunks_exact(8) yields 8-byte slices.
                    *a = a.wrapping_sub(u64::from_le_bytes(w.try_into().unwrap()));
                }
            }
        }
    }
    buf.zeroize();
}

/// The expansion itself, for known-answer tests.
pub fn expand(seed: &MaskSeed, len: usize) -> Vec<u64> {
    let mut v = vec![0u64; len];
    expand_into(seed, &mut v, Sign::Add);
    v
}
