//! Fixed-point words: how a real number becomes a `u64` that secure aggregation can add.
//! Pure: no I/O.
//!
//! A [`FixedPoint`] has a scale `2^S` and a per-term bound `B = 2^b`. A node's value
//! `x`, itself a sum of `t` terms each of magnitude at most `B` (one term per
//! example), becomes the word
//!
//! ```text
//! w = round(clip(x, −t·B, t·B) · 2^S)   as i64 two's complement, stored in a u64
//! ```
//!
//! Secure aggregation adds words with `wrapping_add` (mod 2^64). The sum over nodes,
//! read back as an `i64`, is exactly `Σ_k round(x_k · 2^S)` whenever that integer fits
//! in 63 bits, which holds when the total number of terms `N` satisfies
//! `N · 2^b · 2^S ≤ 2^63 − 1`, i.e. `N ≤ 2^(63−S−b) − 1` ([`FixedPoint::max_terms`]).
//! Intermediate wrapped partial sums may overflow freely: only the final sum must fit.
//!
//! **Decode error.** Each node rounds once, by at most `2^−(S+1)`, so the decoded sum
//! over `K` nodes is within `K · 2^−(S+1)` of the true sum; in the worst case every
//! example sits on its own node and the error of a sum over `N` examples is at most
//! `N · 2^−(S+1)` ([`FixedPoint::max_decode_error`]).
//!
//! **The encodings the model uses.**
//!
//! | what | S | B | max terms N | worst-case error of a sum over N terms |
//! | --- | --- | --- | --- | --- |
//! | Newton, FedAvg and evaluation sums ([`MODEL`]) | 32 | 2^6 = 64 | 2^25 − 1 ≈ 3.4·10^7 | N · 2^−33 (2.7·10^−6 at N = 23,570) |
//! | counts ([`COUNT`]) | 0 | 1 | 2^63 − 1 | 0 (exact) |
//! | CLV likelihood sums ([`CLV`], issue 13) | 20 | 2^20 | 2^23 − 1 ≈ 8.4·10^6 | N · 2^−21 |
//! | feature moments (`standardise`) | 63 − 24 − b (Σx), 63 − 24 − 2b (Σx²) | 2^b, 2^2b | 2^24 − 1 | N · 2^−(S+1) |
//!
//! `B = 64` for the model's sums because a standardised feature is clipped to
//! `|z| ≤ 16` ([`crate::standardise::Z_CLIP`]): a gradient term `(p − y)·z_j` is at
//! most 16, a Hessian term `p(1 − p)·z_i·z_j` at most 64, a log-loss term is clipped to
//! 64 (the loss is only monitored), and a FedAvg update coordinate is clipped to
//! `max_update ≤ 64`.

use serde::{Deserialize, Serialize};

/// What can go wrong encoding or decoding words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FixedError {
    #[error("fixed point: {what} is not a finite number")]
    NotFinite { what: &'static str },
    #[error("fixed point: {terms} terms exceed the {max} a sum can hold at scale 2^{scale_bits}")]
    TooManyTerms { terms: u64, max: u64, scale_bits: u32 },
    #[error("fixed point: scale 2^{scale_bits} with bound 2^{bound_log2} leaves no room in 63 bits")]
    NoRoom { scale_bits: u32, bound_log2: u32 },
    #[error("decoding {what}: got {got} words, expected {expected}")]
    Length { what: &'static str, got: usize, expected: usize },
    #[error("adding vectors: vector {index} has {got} words, expected {expected}")]
    Mismatch { index: usize, got: usize, expected: usize },
}

/// A fixed-point encoding: scale `2^scale_bits`, per-term bound `2^bound_log2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedPoint {
    scale_bits: u32,
    bound_log2: u32,
}

/// The model's sums (Newton, FedAvg, evaluation): `S = 32`, `B = 64`.
pub const MODEL: FixedPoint = FixedPoint { scale_bits: 32, bound_log2: 6 };

/// Issue 13, the CLV fits' likelihood and gradient sums: `S = 20`, `B = 2^20`. One
/// customer's log-likelihood or gradient term in the log-parameters stays far below 2^20
/// for any real purchase history (it grows with ln Γ of the repeat purchases), and a sum
/// holds up to 2^23 − 1 ≈ 8.4 million customers; each node's sum is rounded once, within
/// 2^−21 ≈ 4.8·10^−7.
pub const CLV: FixedPoint = FixedPoint { scale_bits: 20, bound_log2: 20 };

/// Counts: integers, exact.
pub const COUNT: FixedPoint = FixedPoint { scale_bits: 0, bound_log2: 0 };

impl FixedPoint {
    /// An encoding with scale `2^scale_bits` and per-term bound `2^bound_log2`; refused
    /// when not even one term fits in 63 bits.
    pub fn new(scale_bits: u32, bound_log2: u32) -> Result<Self, FixedError> {
        if scale_bits + bound_log2 > 62 {
            return Err(FixedError::NoRoom { scale_bits, bound_log2 });
        }
        Ok(Self { scale_bits, bound_log2 })
    }

    /// `S`: the scale is `2^S`.
    pub fn scale_bits(&self) -> u32 {
        self.scale_bits
    }

    /// `B`: the bound on one term's magnitude.
    pub fn bound(&self) -> f64 {
        pow2(self.bound_log2 as i32)
    }

    /// The largest number of terms whose sum is guaranteed to decode:
    /// `⌊(2^63 − 1) / 2^(S+b)⌋ = 2^(63−S−b) − 1`.
    pub fn max_terms(&self) -> u64 {
        (1u64 << (63 - self.scale_bits - self.bound_log2)) - 1
    }

    /// The worst-case error of a decoded sum of `words` words (one rounding each):
    /// `words · 2^−(S+1)`.
    pub fn max_decode_error(&self, words: u64) -> f64 {
        words as f64 * pow2(-(self.scale_bits as i32) - 1)
    }

    /// Encodes `x`, a sum of `terms` terms each bounded by `B`: clipped to `±terms·B`
    /// (a guard: terms that respect `B` never reach it), scaled by `2^S` and rounded.
    pub fn encode(&self, x: f64, terms: u64) -> Result<u64, FixedError> {
        if !x.is_finite() {
            return Err(FixedError::NotFinite { what: "a value" });
        }
        if terms > self.max_terms() {
            return Err(FixedError::TooManyTerms { terms, max: self.max_terms(), scale_bits: self.scale_bits });
        }
        let limit = terms as f64 * self.bound();
        let scaled = (x.clamp(-limit, limit) * pow2(self.scale_bits as i32)).round();
        // |scaled| ≤ max_terms·2^(S+b) < 2^63, so the cast neither saturates nor wraps.
        Ok((scaled as i64) as u64)
    }

    /// Reads a (summed) word as a signed integer and removes the scale.
    pub fn decode(&self, word: u64) -> f64 {
        (word as i64) as f64 * pow2(-(self.scale_bits as i32))
    }
}

/// `2^e` for small `e`, exactly.
pub(crate) fn pow2(e: i32) -> f64 {
    2f64.powi(e)
}

/// Adds word vectors modulo 2^64, word by word: what secure aggregation hands the
/// coordinator after unmasking.
pub fn wrapping_sum<V: AsRef<[u64]>>(vectors: &[V]) -> Result<Vec<u64>, FixedError> {
    let Some(first) = vectors.first() else { return Ok(vec![]) };
    let mut sum = vec![0u64; first.as_ref().len()];
    for (index, v) in vectors.iter().enumerate() {
        let v = v.as_ref();
        if v.len() != sum.len() {
            return Err(FixedError::Mismatch { index, got: v.len(), expected: sum.len() });
        }
        for (s, w) in sum.iter_mut().zip(v) {
            *s = s.wrapping_add(*w);
        }
    }
    Ok(sum)
}

/// Reads consecutive sections of a word vector; decoders check the whole length first.
#[derive(Debug)]
pub(crate) struct Sections<'a> {
    words: &'a [u64],
}

impl<'a> Sections<'a> {
    /// Checks that `words` has exactly `expected` words.
    pub(crate) fn new(what: &'static str, words: &'a [u64], expected: usize) -> Result<Self, FixedError> {
        if words.len() != expected {
            return Err(FixedError::Length { what, got: words.len(), expected });
        }
        Ok(Self { words })
    }

    /// The next `n` words (the length was checked by `new`).
    pub(crate) fn take(&mut self, n: usize) -> &'a [u64] {
        let (head, rest) = self.words.split_at(n);
        self.words = rest;
        head
    }

    /// The next `n` words decoded with `fp`.
    pub(crate) fn decode(&mut self, fp: FixedPoint, n: usize) -> Vec<f64> {
        self.take(n).iter().map(|w| fp.decode(*w)).collect()
    }

    /// The next `n` words as counts.
    pub(crate) fn counts(&mut self, n: usize) -> Vec<u64> {
        self.take(n).to_vec()
    }
}

#[cfg(test)]
// Exact comparisons on purpose: the values are dyadic and must decode exactly.
#[allow(clippy::float_cmp)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_within_half_a_step() {
        for x in [0.0, 1.0, -1.0, 0.1, -63.999, 64.0, -64.0, 1e-12, -3.25e-7, 17.5] {
            let back = MODEL.decode(MODEL.encode(x, 1).unwrap());
            assert!((back - x).abs() <= MODEL.max_decode_error(1), "{x} → {back}");
        }
    }

    #[test]
    fn clipping_at_terms_times_bound() {
        assert_eq!(MODEL.decode(MODEL.encode(1000.0, 1).unwrap()), 64.0);
        assert_eq!(MODEL.decode(MODEL.encode(-1000.0, 2).unwrap()), -128.0);
        assert!(MODEL.encode(f64::NAN, 1).is_err());
        assert!(MODEL.encode(f64::INFINITY, 1).is_err());
        assert!(MODEL.encode(1.0, MODEL.max_terms() + 1).is_err());
    }

    #[test]
    fn the_stated_parameters() {
        assert_eq!(MODEL.scale_bits(), 32);
        assert_eq!(MODEL.bound(), 64.0);
        assert_eq!(MODEL.max_terms(), (1 << 25) - 1);
        assert_eq!(COUNT.max_terms(), i64::MAX as u64);
        assert!((MODEL.max_decode_error(23_570) - 23_570.0 / 2f64.powi(33)).abs() < 1e-18);
        assert!(FixedPoint::new(40, 23).is_err());
    }

    /// Negative values, sums whose partial sums wrap past 2^63 on the way, and the stated
    /// error bound for a sum over N one-term words.
    #[test]
    fn wrapping_sums_with_negatives_decode() {
        let xs: Vec<f64> = (0..2000).map(|i| ((i * 7919) % 1000) as f64 / 7.0 - 75.0).collect();
        let xs: Vec<f64> = xs.iter().map(|x| x.clamp(-64.0, 64.0)).collect();
        let words: Vec<Vec<u64>> = xs.iter().map(|x| vec![MODEL.encode(*x, 1).unwrap()]).collect();
        let sum = wrapping_sum(&words).unwrap();
        let exact: f64 = xs.iter().sum();
        let err = (MODEL.decode(sum[0]) - exact).abs();
        assert!(err <= MODEL.max_decode_error(xs.len() as u64), "error {err}");
        assert!(exact < 0.0, "the test sums to a negative number: {exact}");

        // Two nodes at the edge of the budget: each word alone is a large magnitude, and
        // the wrapped sum still decodes.
        let t = MODEL.max_terms() / 2;
        let a = MODEL.encode(t as f64 * 64.0, t).unwrap();
        let b = MODEL.encode(-(t as f64) * 64.0 + 0.5, t).unwrap();
        let c = MODEL.encode(t as f64 * 63.0, t).unwrap();
        assert_eq!(MODEL.decode(wrapping_sum(&[[a], [b]]).unwrap()[0]), 0.5);
        assert_eq!(MODEL.decode(wrapping_sum(&[[a], [c], [b]]).unwrap()[0]), t as f64 * 63.0 + 0.5);
        assert!(wrapping_sum(&[vec![1, 2], vec![3]]).is_err());
    }
}
