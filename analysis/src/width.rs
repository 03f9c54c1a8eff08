//! A round's word width from the analysis's range (issue 9): 32-bit words whenever
//! the sum fits, 64-bit otherwise. Pure: no I/O.
//!
//! The analysis states its range ([`SumRange`]); the coordinator picks the width with
//! [`pick_width`] and signs it in the round start; each node recomputes it from the
//! same signed inputs (never trusting the label) and refuses a round whose width
//! differs, or whose bound its own contribution exceeds.
//!
//! A sum of n contributions, each word at most `max_abs` in magnitude, plus DP noise
//! whose magnitude exceeds `noise_tail` with probability at most 2^−40, is decoded
//! exactly from words of b bits when its largest magnitude fits:
//! - unsigned: n·max_abs + noise_tail ≤ 2^b − 1;
//! - signed (two's complement): n·max_abs + noise_tail ≤ 2^(b−1) − 1, i.e. the range
//!   doubled, 2·(n·max_abs + noise_tail) < 2^b, so the decoded sum fits i32 (or i64).

use fedcrm_crypto::word::WordWidth;

/// Per-node customer bound of count analyses unless the coordinator's
/// `[rounds] max_customers_per_node` says otherwise: 2^22 = 4,194,304, so rounds of up
/// to 1,023 nodes use 32-bit words.
pub const DEFAULT_MAX_CUSTOMERS_PER_NODE: u64 = 1 << 22;

/// What an analysis states about its sum, per word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SumRange {
    /// The largest magnitude of one node's contribution to one word.
    pub max_abs: u64,
    /// Whether contributions (and so the sum) may be negative.
    pub signed: bool,
    /// The magnitude DP noise added to the sum exceeds with probability at most 2^−40
    /// (0 without noise).
    pub noise_tail: u64,
}

impl SumRange {
    /// Counts of a node's customers (RFM histograms, segment counts), without noise:
    /// each word is at most the node's number of customers, `max_per_node`.
    pub fn counts(max_per_node: u64) -> Self {
        Self { max_abs: max_per_node, signed: false, noise_tail: 0 }
    }

    /// The largest magnitude of the sum of `n` contributions, noise included
    /// (exact: u128 cannot overflow for u64 inputs and n ≤ 2^63).
    pub fn sum_bound(&self, n: usize) -> u128 {
        n as u128 * self.max_abs as u128 + self.noise_tail as u128
    }

    /// Whether the sum of `n` contributions decodes exactly from words of `width`.
    pub fn fits(&self, n: usize, width: WordWidth) -> bool {
        let bits = width.bits() - u32::from(self.signed);
        self.sum_bound(n) < 1u128 << bits
    }
}

/// The range does not fit even 64-bit words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a sum over {n} nodes of {} values up to {max_abs} per node (noise tail {noise_tail}) does not fit 64-bit words; \
     lower the per-node bound or invite fewer nodes",
    if *signed { "signed" } else { "unsigned" }
)]
pub struct WidthError {
    pub n: usize,
    pub max_abs: u64,
    pub signed: bool,
    pub noise_tail: u64,
}

/// The narrowest word width the sum of `n` contributions in `range` decodes exactly
/// from: 32 bits if it fits, else 64, else an error.
pub fn pick_width(n: usize, range: &SumRange) -> Result<WordWidth, WidthError> {
    [WordWidth::W32, WordWidth::W64].into_iter().find(|w| range.fits(n, *w)).ok_or(WidthError {
        n,
        max_abs: range.max_abs,
        signed: range.signed,
        noise_tail: range.noise_tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const W32: Result<WordWidth, WidthError> = Ok(WordWidth::W32);
    const W64: Result<WordWidth, WidthError> = Ok(WordWidth::W64);

    #[test]
    fn unsigned_boundaries() {
        // n·max = 2^32 − 1 is the largest sum 32 bits hold.
        assert_eq!(pick_width(1, &SumRange::counts(u32::MAX as u64)), W32);
        assert_eq!(pick_width(1, &SumRange::counts(1 << 32)), W64);
        assert_eq!(pick_width(3, &SumRange::counts(1_431_655_765)), W32); // 3 × (2^32−1)/3
        assert_eq!(pick_width(3, &SumRange::counts(1_431_655_766)), W64);
        // The default bound: up to 1,023 nodes in 32 bits, 1,024 need 64.
        let d = SumRange::counts(DEFAULT_MAX_CUSTOMERS_PER_NODE);
        assert_eq!(pick_width(1023, &d), W32);
        assert_eq!(pick_width(1024, &d), W64);
        assert_eq!(pick_width(50, &d), W32);
        // 64 bits: n·max ≤ 2^64 − 1.
        assert_eq!(pick_width(1, &SumRange::counts(u64::MAX)), W64);
        assert!(pick_width(2, &SumRange::counts(u64::MAX)).is_err());
        assert_eq!(pick_width(0, &SumRange::counts(u64::MAX)), W32);
    }

    #[test]
    fn noise_tail_counts() {
        let r = SumRange { max_abs: 1000, signed: false, noise_tail: (1 << 32) - 1 - 4000 };
        assert_eq!(pick_width(4, &r), W32);
        assert_eq!(pick_width(4, &SumRange { noise_tail: r.noise_tail + 1, ..r }), W64);
        let big = SumRange { max_abs: 0, signed: false, noise_tail: u64::MAX };
        assert_eq!(pick_width(7, &big), W64);
        assert!(pick_width(1, &SumRange { max_abs: 1, ..big }).is_err());
    }

    #[test]
    fn signed_sums_must_fit_the_signed_word() {
        // |sum| ≤ 2^31 − 1 fits i32; 2^31 does not.
        let r = |max_abs, noise_tail| SumRange { max_abs, signed: true, noise_tail };
        assert_eq!(pick_width(1, &r((1 << 31) - 1, 0)), W32);
        assert_eq!(pick_width(1, &r(1 << 31, 0)), W64);
        assert_eq!(pick_width(2, &r((1 << 30) - 1, 1)), W32);
        assert_eq!(pick_width(2, &r((1 << 30) - 1, 2)), W64);
        assert_eq!(pick_width(1, &r(i64::MAX as u64, 0)), W64);
        let e = pick_width(1, &r(1 << 63, 0)).unwrap_err();
        assert!(e.to_string().contains("signed values up to 9223372036854775808"), "{e}");
    }
}
