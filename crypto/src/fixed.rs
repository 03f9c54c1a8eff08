//! Fixed-point encoding into Z_2^64 with clipping and an explicit overflow budget.
//! Pure: no I/O.
//!
//! A real value `x` becomes `round(clip(x, -max, max) * scale)` as a two's-complement
//! 64-bit word. Sums wrap modulo 2^64, so a sum of `n` encoded values decodes
//! correctly exactly when `n * max * scale < 2^63`; [`Encoding::new`] refuses any
//! configuration that could break that, before a single value is sent.

use crate::CryptoError;

/// How one round's values are encoded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Encoding {
    /// Multiplier applied before rounding (1 for counts, 100 for cents, 2^20 for gradients).
    pub scale: f64,
    /// Clipping bound on |x| before scaling.
    pub max_abs: f64,
}

/// The largest magnitude of a decodable sum: 2^63 − 1.
pub const SUM_LIMIT: u64 = i64::MAX as u64;

impl Encoding {
    /// Checks that `n_max` contributions of magnitude up to `max_abs * scale` sum
    /// without overflow.
    pub fn new(scale: f64, max_abs: f64, n_max: u64) -> Result<Self, CryptoError> {
        let per = (max_abs * scale).ceil();
        if !(per.is_finite() && per >= 0.0 && scale > 0.0) {
            return Err(CryptoError::Overflow { n: n_max, max: u64::MAX });
        }
        check_budget(n_max, per as u64)?;
        Ok(Self { scale, max_abs })
    }

    /// Clip, scale, round, wrap into a word.
    pub fn encode(&self, x: f64) -> u64 {
        let c = if x.is_nan() { 0.0 } else { x.clamp(-self.max_abs, self.max_abs) };
        ((c * self.scale).round() as i64) as u64
    }

    /// Interpret a summed word as a signed value and unscale it.
    pub fn decode_sum(&self, w: u64) -> f64 {
        (w as i64) as f64 / self.scale
    }
}

/// `n` contributions each at most `max` (as unsigned magnitudes) fit in 63 bits.
pub fn check_budget(n: u64, max: u64) -> Result<(), CryptoError> {
    match n.checked_mul(max) {
        Some(total) if total <= SUM_LIMIT => Ok(()),
        _ => Err(CryptoError::Overflow { n, max }),
    }
}
