//! The word a round masks and sums in: Z_2^32 or Z_2^64 (issue 9). Pure: no I/O.
//!
//! A round picks the narrowest width its sum fits (`fedcrm_analysis::width::pick_width`):
//! 32-bit words halve the PRG's keystream, the masked vectors on the wire and the
//! coordinator's running sum. The width is part of the signed round start and of the
//! PRG's HKDF `info` ([`WordWidth::prg_info`]), so a mask of one width never shares a
//! key with a mask of the other.
//!
//! [`Word`] is what the PRG kernel is generic over (u32 and u64); [`Words`] is a vector
//! of either, at the secure-aggregation API boundary (masked vectors, the running sum).

use crate::CryptoError;

/// The width of a round's words. Bonawitz et al. CCS 2017 work in Z_R for any R; we
/// use R = 2^32 or 2^64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WordWidth {
    W32,
    W64,
}

impl WordWidth {
    /// 32 or 64.
    pub fn bits(self) -> u32 {
        match self {
            WordWidth::W32 => 32,
            WordWidth::W64 => 64,
        }
    }

    /// The width with `bits` bits, if it is 32 or 64.
    pub fn from_bits(bits: u32) -> Option<Self> {
        match bits {
            32 => Some(WordWidth::W32),
            64 => Some(WordWidth::W64),
            _ => None,
        }
    }

    /// Bytes per word: 4 or 8.
    pub fn bytes(self) -> usize {
        self.bits() as usize / 8
    }

    /// The largest value a word holds: 2^bits − 1.
    pub fn max_word(self) -> u64 {
        match self {
            WordWidth::W32 => u32::MAX as u64,
            WordWidth::W64 => u64::MAX,
        }
    }

    /// `32-bit words`, for logs and errors.
    pub fn name(self) -> &'static str {
        match self {
            WordWidth::W32 => "32-bit words",
            WordWidth::W64 => "64-bit words",
        }
    }

    /// The HKDF `info` of the PRG key for masks of this width: [`crate::prg::PRG_LABEL`]
    /// followed by `/w32` or `/w64`.
    pub fn prg_info(self) -> &'static str {
        match self {
            WordWidth::W32 => "fedcrm/v4/prg-aes128/w32",
            WordWidth::W64 => "fedcrm/v4/prg-aes128/w64",
        }
    }
}

impl std::fmt::Display for WordWidth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A machine word the PRG can mask: u32 or u64. Arithmetic wraps (Z_2^32, Z_2^64).
pub trait Word: Copy + Default + Send + Sync + PartialEq + std::fmt::Debug + 'static {
    /// Which [`WordWidth`] this is.
    const WIDTH: WordWidth;
    /// Bytes per word.
    const BYTES: usize;
    fn wrapping_add(self, other: Self) -> Self;
    fn wrapping_sub(self, other: Self) -> Self;
    /// From [`Self::BYTES`] little-endian keystream bytes.
    fn from_le(bytes: &[u8]) -> Self;
    /// Zero-extended.
    fn to_u64(self) -> u64;
    /// `None` if `v` does not fit.
    fn from_u64(v: u64) -> Option<Self>;
}

impl Word for u32 {
    const WIDTH: WordWidth = WordWidth::W32;
    const BYTES: usize = 4;
    fn wrapping_add(self, other: Self) -> Self {
        u32::wrapping_add(self, other)
    }
    fn wrapping_sub(self, other: Self) -> Self {
        u32::wrapping_sub(self, other)
    }
    fn from_le(bytes: &[u8]) -> Self {
        // Unwrap safety: callers pass exactly BYTES bytes (chunks_exact).
        u32::from_le_bytes(bytes.try_into().unwrap())
    }
    fn to_u64(self) -> u64 {
        self as u64
    }
    fn from_u64(v: u64) -> Option<Self> {
        u32::try_from(v).ok()
    }
}

impl Word for u64 {
    const WIDTH: WordWidth = WordWidth::W64;
    const BYTES: usize = 8;
    fn wrapping_add(self, other: Self) -> Self {
        u64::wrapping_add(self, other)
    }
    fn wrapping_sub(self, other: Self) -> Self {
        u64::wrapping_sub(self, other)
    }
    fn from_le(bytes: &[u8]) -> Self {
        // Unwrap safety: callers pass exactly BYTES bytes (chunks_exact).
        u64::from_le_bytes(bytes.try_into().unwrap())
    }
    fn to_u64(self) -> u64 {
        self
    }
    fn from_u64(v: u64) -> Option<Self> {
        Some(v)
    }
}

/// A vector of words of one width: a masked vector, or the coordinator's running sum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Words {
    W32(Vec<u32>),
    W64(Vec<u64>),
}

/// Below this many words, [`Words::add_assign`] stays on the calling thread. Adding is
/// memory-bound (two loads and a store per word), and on the 2-core EPYC where we
/// measured (shared with other builds, load average ~5; ms per addition, best–worst of
/// 3 × 50, one thread vs two, 32-bit / 64-bit words) two threads never won: 2^16:
/// 0.011–0.023 / 0.020–0.025 vs 0.16–0.47 / 0.11–1.1; 2^18: 0.039–0.083 / 0.13–0.23 vs
/// 0.36–1.3 / 0.36–0.80; 10^6: 0.56–0.69 / 1.1–1.7 vs 0.70–1.9 / 1.7–2.0; 2^22:
/// 2.4–3.0 / 4.5–5.2 vs 3.1–3.4 / 4.8–5.2; 2^24: 9.1–11.5 / 17.6–25.3 vs 10.1–11.6 /
/// 19.5–21.8 (a tie). One core already takes the memory bandwidth this machine gives
/// it, so the split starts only at 2^24 words (a vector of 64 or 128 MiB), where it
/// ties here and a machine with more memory channels per core gains.
const ADD_PARALLEL_MIN_WORDS: usize = 1 << 24;

impl Words {
    /// d zero words of `width`.
    pub fn zeros(width: WordWidth, d: usize) -> Self {
        match width {
            WordWidth::W32 => Words::W32(vec![0; d]),
            WordWidth::W64 => Words::W64(vec![0; d]),
        }
    }

    /// Narrow plain values to `width`, refusing (naming the value, its index and the
    /// width) any that does not fit.
    pub fn from_plain(width: WordWidth, values: &[u64]) -> Result<Self, CryptoError> {
        fn narrow<W: Word>(values: &[u64]) -> Result<Vec<W>, CryptoError> {
            values
                .iter()
                .enumerate()
                .map(|(index, &value)| {
                    W::from_u64(value).ok_or(CryptoError::WordTooNarrow { index, value, bits: W::WIDTH.bits() })
                })
                .collect()
        }
        Ok(match width {
            WordWidth::W32 => Words::W32(narrow(values)?),
            WordWidth::W64 => Words::W64(values.to_vec()),
        })
    }

    pub fn width(&self) -> WordWidth {
        match self {
            Words::W32(_) => WordWidth::W32,
            Words::W64(_) => WordWidth::W64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Words::W32(v) => v.len(),
            Words::W64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every word zero-extended to 64 bits.
    pub fn to_u64(&self) -> Vec<u64> {
        match self {
            Words::W32(v) => v.iter().map(|&w| w as u64).collect(),
            Words::W64(v) => v.clone(),
        }
    }

    /// Every word zero-extended to 64 bits, reusing the vector when it already is.
    pub fn into_u64(self) -> Vec<u64> {
        match self {
            Words::W32(v) => v.into_iter().map(|w| w as u64).collect(),
            Words::W64(v) => v,
        }
    }

    /// The words as little-endian bytes of their width (what the wire hashes).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            Words::W32(v) => v.iter().flat_map(|w| w.to_le_bytes()).collect(),
            Words::W64(v) => v.iter().flat_map(|w| w.to_le_bytes()).collect(),
        }
    }

    /// Words `range` as a new vector of the same width.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Words {
        match self {
            Words::W32(v) => Words::W32(v[range].to_vec()),
            Words::W64(v) => Words::W64(v[range].to_vec()),
        }
    }

    /// Append `other`, which must have the same width.
    pub fn extend(&mut self, other: &Words) -> Result<(), CryptoError> {
        match (self, other) {
            (Words::W32(a), Words::W32(b)) => a.extend_from_slice(b),
            (Words::W64(a), Words::W64(b)) => a.extend_from_slice(b),
            (a, b) => return Err(CryptoError::Width { got: b.width().bits(), expected: a.width().bits() }),
        }
        Ok(())
    }

    /// `self[i] += other[i]` (wrapping) for every i; both must have the same width and
    /// length. Split over the machine's cores (`std::thread::scope`, one contiguous range
    /// per thread; wrapping addition is exact, so the result does not depend on the
    /// split) from `ADD_PARALLEL_MIN_WORDS` = 2^24 words, the measured crossover (see
    /// there); below it, one thread.
    pub fn add_assign(&mut self, other: &Words) -> Result<(), CryptoError> {
        if self.len() != other.len() {
            return Err(CryptoError::Length { got: other.len(), expected: self.len() });
        }
        let threads = if self.len() < ADD_PARALLEL_MIN_WORDS { 1 } else { crate::prg::parallelism() };
        match (self, other) {
            (Words::W32(a), Words::W32(b)) => add_on(a, b, threads),
            (Words::W64(a), Words::W64(b)) => add_on(a, b, threads),
            (a, b) => return Err(CryptoError::Width { got: b.width().bits(), expected: a.width().bits() }),
        }
        Ok(())
    }
}

/// `a[i] += b[i]` on at most `threads` threads, one contiguous range each.
fn add_on<W: Word>(a: &mut [W], b: &[W], threads: usize) {
    fn add<W: Word>(a: &mut [W], b: &[W]) {
        for (x, y) in a.iter_mut().zip(b) {
            *x = x.wrapping_add(*y);
        }
    }
    let threads = threads.min(a.len()).max(1);
    if threads == 1 {
        add(a, b);
        return;
    }
    let range = a.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for (x, y) in a.chunks_mut(range).zip(b.chunks(range)) {
            scope.spawn(move || add(x, y));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The split add is the single-threaded add, whatever the thread count and length.
    #[test]
    fn split_add_equals_one_thread() {
        for len in [0usize, 1, 2, 3, 7, 1000, 4097] {
            let a32: Vec<u32> = (0..len as u32).map(|i| i.wrapping_mul(0x9E37_79B9)).collect();
            let b32: Vec<u32> = (0..len as u32).map(|i| u32::MAX - i).collect();
            let a64: Vec<u64> = (0..len as u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
            let b64: Vec<u64> = (0..len as u64).map(|i| u64::MAX - i).collect();
            let (mut one32, mut one64) = (a32.clone(), a64.clone());
            add_on(&mut one32, &b32, 1);
            add_on(&mut one64, &b64, 1);
            for threads in [2, 3, 8] {
                let (mut x32, mut x64) = (a32.clone(), a64.clone());
                add_on(&mut x32, &b32, threads);
                add_on(&mut x64, &b64, threads);
                assert_eq!((x32, x64), (one32.clone(), one64.clone()), "len {len}, {threads} threads");
            }
        }
    }

    #[test]
    fn words_refuse_the_other_width_and_length() {
        let mut s = Words::zeros(WordWidth::W32, 3);
        assert_eq!(s.add_assign(&Words::zeros(WordWidth::W64, 3)), Err(CryptoError::Width { got: 64, expected: 32 }));
        assert_eq!(s.add_assign(&Words::zeros(WordWidth::W32, 2)), Err(CryptoError::Length { got: 2, expected: 3 }));
        s.add_assign(&Words::W32(vec![u32::MAX, 1, 2])).unwrap();
        s.add_assign(&Words::W32(vec![2, 1, 0])).unwrap();
        assert_eq!(s.into_u64(), vec![1, 2, 2]);
        assert_eq!(
            Words::from_plain(WordWidth::W32, &[0, u32::MAX as u64 + 1]),
            Err(CryptoError::WordTooNarrow { index: 1, value: 1 << 32, bits: 32 })
        );
    }
}
