//! Exact sampling of the discrete Gaussian N_Z(0, σ²) — P(x) ∝ exp(−x²/(2σ²)) on the
//! integers — after Canonne, Kamath & Steinke, "The Discrete Gaussian for Differential
//! Privacy" (NeurIPS 2020), Algorithms 1–3:
//!
//! 1. Bernoulli(exp(−γ)) for a rational γ ≥ 0 ([`bernoulli_exp_neg`]),
//! 2. the discrete Laplace with integer scale t ([`discrete_laplace`]),
//! 3. the discrete Gaussian by rejection from the discrete Laplace with
//!    t = ⌊σ⌋ + 1 ([`DiscreteGaussian::sample`]).
//!
//! σ² is an exact fraction ([`Variance`]); every step uses integers and fractions of
//! arbitrary size (`num-bigint`), never `f32`/`f64`, so the output distribution is the
//! discrete Gaussian exactly, not a floating-point approximation of it (whose
//! rounding errors are what Mironov's attack on the Laplace mechanism exploits). The
//! only randomness is uniform bytes from an [`Entropy`]: the OS CSPRNG on a node.
//!
//! **Timing.** The sampler is not constant-time: how many uniform draws and rejection
//! loops a sample takes depends on its value (a larger |x| takes more of the geometric
//! loop of the discrete Laplace) and on the rejections on the way. Someone who times
//! the node's sampling of one value learns something about |x|, not its sign; timing a
//! whole vector (d values, sampled before masking, in one batch) shows roughly the sum
//! of their magnitudes — at most a few bits about the noise, which is independent of
//! the data. A node samples its noise just before it masks, after its privacy charge is
//! recorded, so the coordinator can time the final U2 → masked input: that time holds
//! the sampling (roughly Σ|noise|) and the node's own computation (which depends on d
//! and its data size), in a round already paid for. A few bits about the
//! noise's magnitude, not its signs; fedcrm accepts this (the issue asks for exactness,
//! not constant time) and says so in docs/threat-model.md.

use num_bigint::BigUint;
use num_integer::Integer;
use num_traits::{One, ToPrimitive, Zero};

use crate::{DpError, Entropy};

/// σ² as an exact fraction num/den, in lowest terms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Variance {
    num: u64,
    den: u64,
}

/// Exact order of fractions (num/den in lowest terms, cross-multiplied in 128 bits).
impl Ord for Variance {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (u128::from(self.num) * u128::from(other.den)).cmp(&(u128::from(other.num) * u128::from(self.den)))
    }
}

impl PartialOrd for Variance {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Variance {
    /// σ² = num/den; both positive.
    pub fn new(num: u64, den: u64) -> Result<Self, DpError> {
        if num == 0 || den == 0 {
            return Err(DpError::Parameter(format!("σ² = {num}/{den}: both parts must be positive")));
        }
        let g = num.gcd(&den);
        Ok(Self { num: num / g, den: den / g })
    }

    /// σ² = v, a whole number.
    pub fn integer(v: u64) -> Result<Self, DpError> {
        Self::new(v, 1)
    }

    pub fn num(&self) -> u64 {
        self.num
    }

    pub fn den(&self) -> u64 {
        self.den
    }

    /// σ² as a float, for reports and accounting only (never on the sampling path).
    pub fn as_f64(&self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

impl std::fmt::Display for Variance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.den == 1 { write!(f, "{}", self.num) } else { write!(f, "{}/{}", self.num, self.den) }
    }
}

/// A uniform integer in [0, n), n ≥ 1, by rejection: draw ⌈bits(n − 1)/8⌉ bytes, keep
/// bits(n − 1) bits, retry while ≥ n (fewer than 2 draws on average).
fn uniform_below(n: &BigUint, e: &mut dyn Entropy) -> Result<BigUint, DpError> {
    if n.is_one() {
        return Ok(BigUint::zero());
    }
    let bits = (n - 1u32).bits();
    let bytes = bits.div_ceil(8) as usize;
    let excess = (bytes as u64 * 8 - bits) as u32;
    let mut buf = vec![0u8; bytes];
    loop {
        e.fill(&mut buf)?;
        buf[0] &= 0xff >> excess;
        let v = BigUint::from_bytes_be(&buf);
        if &v < n {
            return Ok(v);
        }
    }
}

/// Bernoulli(num/den), num ≤ den: one uniform draw below den.
fn bernoulli(num: &BigUint, den: &BigUint, e: &mut dyn Entropy) -> Result<bool, DpError> {
    Ok(&uniform_below(den, e)? < num)
}

/// CKS20 Algorithm 1: Bernoulli(exp(−γ)) for γ = num/den ≥ 0, exactly.
///
/// For γ ≤ 1: draw A_k ~ Bernoulli(γ/k) for k = 1, 2, … until one is 0; return whether
/// that k is odd. For γ > 1: ⌊γ⌋ independent Bernoulli(exp(−1)), all 1, and one
/// Bernoulli(exp(−(γ − ⌊γ⌋))).
pub fn bernoulli_exp_neg(num: &BigUint, den: &BigUint, e: &mut dyn Entropy) -> Result<bool, DpError> {
    if num <= den {
        let mut k = BigUint::one();
        loop {
            if !bernoulli(num, &(den * &k), e)? {
                return Ok(k.is_odd());
            }
            k += 1u32;
        }
    }
    let (whole, rest) = num.div_rem(den);
    let one = BigUint::one();
    let mut i = BigUint::zero();
    while i < whole {
        if !bernoulli_exp_neg(&one, &one, e)? {
            return Ok(false);
        }
        i += 1u32;
    }
    bernoulli_exp_neg(&rest, den, e)
}

/// CKS20 Algorithm 2 with integer scale t (s = 1): the discrete Laplace,
/// P(x) ∝ exp(−|x|/t). Returns (negative, |x|).
pub fn discrete_laplace(t: &BigUint, e: &mut dyn Entropy) -> Result<(bool, BigUint), DpError> {
    let one = BigUint::one();
    let two = BigUint::from(2u32);
    loop {
        let u = uniform_below(t, e)?;
        if !bernoulli_exp_neg(&u, t, e)? {
            continue;
        }
        let mut v = BigUint::zero();
        while bernoulli_exp_neg(&one, &one, e)? {
            v += 1u32;
        }
        let x = u + t * v;
        let negative = bernoulli(&one, &two, e)?;
        if negative && x.is_zero() {
            continue;
        }
        return Ok((negative, x));
    }
}

/// The discrete Gaussian N_Z(0, σ²), sampled exactly (CKS20 Algorithm 3).
#[derive(Debug, Clone)]
pub struct DiscreteGaussian {
    variance: Variance,
    /// σ² = a/b.
    a: BigUint,
    b: BigUint,
    /// The discrete Laplace scale t = ⌊σ⌋ + 1.
    t: BigUint,
    /// 2·a·b·t², the denominator of every rejection's γ.
    den: BigUint,
}

impl DiscreteGaussian {
    pub fn new(variance: Variance) -> Self {
        let a = BigUint::from(variance.num);
        let b = BigUint::from(variance.den);
        // ⌊σ⌋ = ⌊√⌊σ²⌋⌋: for a whole k, k ≤ √x ⇔ k² ≤ x ⇔ k² ≤ ⌊x⌋.
        let t = (&a / &b).sqrt() + 1u32;
        let den = BigUint::from(2u32) * &a * &b * &t * &t;
        Self { variance, a, b, t, den }
    }

    pub fn variance(&self) -> &Variance {
        &self.variance
    }

    /// One sample: Y ~ discrete Laplace(t), accepted with probability
    /// exp(−(|Y| − σ²/t)²/(2σ²)) = exp(−(|Y|·t·b − a)² / (2·a·b·t²)).
    pub fn sample(&self, e: &mut dyn Entropy) -> Result<i64, DpError> {
        loop {
            let (negative, y) = discrete_laplace(&self.t, e)?;
            let ytb = &y * &self.t * &self.b;
            let diff = if ytb >= self.a { &ytb - &self.a } else { &self.a - &ytb };
            if bernoulli_exp_neg(&(&diff * &diff), &self.den, e)? {
                let y = y.to_i64().ok_or(DpError::Overflow)?;
                return Ok(if negative { -y } else { y });
            }
        }
    }

    /// `n` independent samples.
    pub fn samples(&self, n: usize, e: &mut dyn Entropy) -> Result<Vec<i64>, DpError> {
        (0..n).map(|_| self.sample(e)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variances_order_exactly() {
        let v = |n, d| Variance::new(n, d).unwrap();
        assert!(v(4, 1) > v(39, 10) && v(4, 1) < v(41, 10));
        assert_eq!(v(8, 2).cmp(&v(4, 1)), std::cmp::Ordering::Equal);
        assert!(v(u64::MAX, u64::MAX - 1) > v(1, 1));
        assert_eq!(v(9, 4).max(v(2, 1)), v(9, 4));
    }

    /// Bytes from a fixed list, then an error (to see how many a draw takes).
    struct Script(Vec<u8>);

    impl Entropy for Script {
        fn fill(&mut self, dest: &mut [u8]) -> Result<(), DpError> {
            if self.0.len() < dest.len() {
                return Err(DpError::Random);
            }
            let rest = self.0.split_off(dest.len());
            dest.copy_from_slice(&self.0);
            self.0 = rest;
            Ok(())
        }
    }

    #[test]
    fn uniform_below_masks_excess_bits_and_rejects_out_of_range() {
        // n = 5: 3 bits of one byte. 0xff → 7 (rejected), 0x0c → 4 (kept).
        let got = uniform_below(&BigUint::from(5u32), &mut Script(vec![0xff, 0x0c])).unwrap();
        assert_eq!(got, BigUint::from(4u32));
        // n = 1 draws nothing.
        assert_eq!(uniform_below(&BigUint::one(), &mut Script(vec![])).unwrap(), BigUint::zero());
        // n = 256: one whole byte, no mask.
        assert_eq!(uniform_below(&BigUint::from(256u32), &mut Script(vec![0xff])).unwrap(), BigUint::from(255u32));
    }

    #[test]
    fn variance_is_kept_in_lowest_terms_and_zero_is_refused() {
        let v = Variance::new(18, 8).unwrap();
        assert_eq!((v.num(), v.den()), (9, 4));
        assert_eq!(v.to_string(), "9/4");
        assert!(Variance::new(0, 1).is_err());
        assert!(Variance::new(1, 0).is_err());
    }

    #[test]
    fn the_laplace_scale_is_floor_sigma_plus_one() {
        for (num, den, t) in
            [(1, 4, 1u32), (1, 1, 2), (9, 1, 4), (10, 1, 4), (100, 1, 11), (10_000, 1, 101), (99, 4, 5)]
        {
            let g = DiscreteGaussian::new(Variance::new(num, den).unwrap());
            assert_eq!(g.t, BigUint::from(t), "σ² = {num}/{den}");
        }
    }
}
