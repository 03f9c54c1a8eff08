//! What a noised release costs, in zero-concentrated differential privacy (zCDP), and
//! its conversion to (ε, δ). Floating point is fine here: these numbers describe the
//! noise, they do not draw it.
//!
//! **The unit of privacy** is one customer of one node: two datasets are neighbours
//! when one node's data differ by one customer. Each analysis states the ℓ1 and ℓ2
//! sensitivity of its vector under that change ([`Sensitivity`]).
//!
//! **One release.** Every node adds discrete Gaussian noise of variance σ² to each word
//! of its vector before masking ([`crate::sampler`]). Noise from only `k` nodes can be
//! counted on (colluders subtract their own): the sum of k independent N_Z(0, σ²) is
//! *not* a discrete Gaussian, and Kairouz, Liu & Steinke ("The Distributed Discrete
//! Gaussian Mechanism for Federated Learning with Secure Aggregation", ICML 2021,
//! Proposition 14) bound its Rényi divergence at every order α > 1 by
//!
//! > D_α ≤ α·Δ₂²/(2kσ²) + τ·d, with τ = 10·Σ_{j=1}^{k−1} exp(−2π²σ²·j/(j+1)),
//!
//! d the vector length. That is (ξ, ρ)-approximate zCDP with ρ = Δ₂²/(2kσ²) and
//! ξ = τ·d ([`Charge`]); with one node's noise (k = 1) τ = 0 and it is exactly the
//! discrete Gaussian's ρ-zCDP (Canonne, Kamath & Steinke 2020, Theorem 4). With σ ≥ 2
//! per node τ < 10·(k−1)·e^{−4π²} ≈ 7·10⁻¹⁷·(k−1), so τ·d stays far below 10⁻⁶ for any
//! vector fedcrm sends.
//!
//! **Composition.** Passes of an analysis and analyses in a month compose by adding ρ
//! and ξ ([`Charge::compose`]), which is exact for zCDP (Bun & Steinke 2016, Lemma 2.3)
//! and for the additive term.
//!
//! **Conversion** to (ε, δ) ([`Charge::epsilon`]): the Rényi bound D_α ≤ ξ + ρα at the
//! orders α ∈ {2, 3, …, 128, 256} (those of the reference implementation,
//! google-research/federated `distributed_dp/accounting_utils.py`, `RDP_ORDERS`), each
//! converted by ε = D_α + ln(1 − 1/α) − (ln δ + ln α)/(α − 1) (Canonne, Kamath & Steinke
//! 2020, Proposition 12; Balle et al. 2020), and the smallest kept — the conversion
//! `dp_accounting` and TensorFlow Privacy use. It is never worse than the textbook
//! ρ + 2√(ρ ln(1/δ)) at the same orders.

/// The Rényi orders the conversion tries: 2, 3, …, 128 and 256.
pub fn orders() -> Vec<f64> {
    (2..=128).map(f64::from).chain(std::iter::once(256.0)).collect()
}

/// How much one customer of one node can move the vector an analysis contributes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sensitivity {
    /// Σ |change| over the words.
    pub l1: f64,
    /// √(Σ change²) over the words.
    pub l2: f64,
}

impl Sensitivity {
    /// A customer counted in one bin of each of `histograms` histograms: adding or
    /// removing it changes one count by one per histogram, ℓ1 = h, ℓ2 = √h. This is the
    /// add/remove neighbouring relation (one customer present or absent), which fedcrm
    /// states as its unit; *replacing* one customer by another can move two counts per
    /// histogram (ℓ2 = √(2h)), a guarantee twice as weak in ρ (docs/threat-model.md).
    pub fn counts(histograms: usize) -> Self {
        let h = histograms as f64;
        Self { l1: h, l2: h.sqrt() }
    }
}

/// τ of the distributed discrete Gaussian for the noise of `k` nodes, each of variance
/// `local_variance` (Kairouz, Liu & Steinke 2021, Theorem 1 and Proposition 14).
pub fn tau(k: usize, local_variance: f64) -> f64 {
    let pi2 = std::f64::consts::PI * std::f64::consts::PI;
    10.0 * (1..k).map(|j| (-2.0 * pi2 * local_variance * j as f64 / (j as f64 + 1.0)).exp()).sum::<f64>()
}

/// The magnitude the sum of `nodes` independent N_Z(0, σ²) (σ² = `local_variance`)
/// exceeds with probability at most 2^−40, per word: what a round's word width must
/// leave room for (`fedcrm_analysis::width::SumRange::noise_tail`). The discrete
/// Gaussian is σ²-subgaussian (Canonne, Kamath & Steinke 2020, Corollary 9), so the sum
/// is nσ²-subgaussian and P(|X| ≥ x) ≤ 2·exp(−x²/(2nσ²)) ≤ 2^−40 for
/// x = √(2nσ²·41·ln 2), rounded up.
pub fn noise_tail(nodes: usize, local_variance: f64) -> u64 {
    (2.0 * nodes as f64 * local_variance * 41.0 * std::f64::consts::LN_2).sqrt().ceil() as u64
}

/// A privacy charge: (ξ, ρ)-approximate zCDP — D_α ≤ ξ + ρ·α for every α > 1.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Charge {
    pub rho: f64,
    pub xi: f64,
}

impl Charge {
    /// One release of a vector of `d` words with sensitivity `s`, each word noised by
    /// `k` nodes with variance `local_variance` each: ρ = Δ₂²/(2kσ²), ξ = τ·d.
    pub fn distributed(s: Sensitivity, d: usize, k: usize, local_variance: f64) -> Self {
        let k = k.max(1);
        Self { rho: s.l2 * s.l2 / (2.0 * k as f64 * local_variance), xi: tau(k, local_variance) * d as f64 }
    }

    /// Both charges, one after the other (zCDP composes additively).
    pub fn compose(self, other: Charge) -> Self {
        Self { rho: self.rho + other.rho, xi: self.xi + other.xi }
    }

    /// `times` repetitions of this charge.
    pub fn times(self, times: usize) -> Self {
        Self { rho: self.rho * times as f64, xi: self.xi * times as f64 }
    }

    /// The Rényi divergence bound at order α.
    pub fn rdp(&self, alpha: f64) -> f64 {
        self.xi + self.rho * alpha
    }

    /// (ε, δ)-DP: the smallest ε over [`orders`] (module doc, "Conversion"), with the
    /// order that gave it. ε is 0 when the bound already gives δ (δ² > 1 − e^{−D_α}).
    pub fn epsilon(&self, delta: f64) -> (f64, f64) {
        let mut best = (f64::INFINITY, 0.0);
        for a in orders() {
            let r = self.rdp(a);
            let eps = if delta * delta + (-r).exp_m1() > 0.0 {
                0.0
            } else {
                r + (-1.0 / a).ln_1p() - (delta * a).ln() / (a - 1.0)
            };
            if eps < best.0 {
                best = (eps, a);
            }
        }
        (best.0.max(0.0), best.1)
    }
}

/// The largest ρ (with ξ = 0) whose (ε, δ) conversion ([`Charge::epsilon`]) stays at
/// or below `epsilon`: how an analyst's target ε for a whole analysis becomes the ρ its
/// rounds share. Bisection over ρ (the conversion is increasing in ρ), to a relative
/// 10⁻¹², always from below.
pub fn rho_for_epsilon(epsilon: f64, delta: f64) -> Option<f64> {
    if !(epsilon.is_finite() && epsilon > 0.0 && delta > 0.0 && delta < 1.0) {
        return None;
    }
    let eps = |rho: f64| Charge { rho, xi: 0.0 }.epsilon(delta).0;
    let (mut lo, mut hi) = (0.0f64, epsilon.max(1.0));
    while eps(hi) <= epsilon {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if eps(mid) <= epsilon {
            lo = mid
        } else {
            hi = mid
        }
        if hi - lo <= 1e-12 * hi {
            break;
        }
    }
    (lo > 0.0).then_some(lo)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rho_for_epsilon_inverts_the_conversion_from_below() {
        for (eps, delta) in [(1.0, 1e-6), (4.0, 1e-6), (16.0, 1e-8), (0.1, 1e-5)] {
            let rho = rho_for_epsilon(eps, delta).unwrap();
            let back = Charge { rho, xi: 0.0 }.epsilon(delta).0;
            assert!(back <= eps && back > eps * (1.0 - 1e-6), "ε = {eps}: ρ = {rho} gives {back}");
        }
        assert_eq!(rho_for_epsilon(-1.0, 1e-6), None);
    }

    use super::*;

    #[test]
    fn tau_vanishes_for_one_node_and_is_negligible_from_sigma_two() {
        assert!(tau(1, 4.0).abs() < f64::MIN_POSITIVE, "one node: an empty sum");
        let t = tau(50, 4.0);
        assert!(t > 0.0 && t < 49.0 * 10.0 * (-4.0 * std::f64::consts::PI.powi(2)).exp(), "{t}");
        assert!(t * 10_000.0 < 1e-6);
    }

    /// The exact mass of the sum of `nodes` discrete Gaussians beyond `noise_tail` is at
    /// most 2^−40 (convolving the exact mass functions), and one less would not always do.
    #[test]
    fn the_noise_tail_bounds_the_sum_at_two_to_the_minus_forty() {
        for (nodes, var) in [(1usize, 1.0f64), (1, 100.0), (5, 4.0), (12, 0.25)] {
            let reach = (60.0 * (nodes as f64 * var).sqrt()) as i64 + 40;
            let single: Vec<f64> = {
                let w: Vec<f64> = (-reach..=reach).map(|x| (-((x * x) as f64) / (2.0 * var)).exp()).collect();
                let z: f64 = w.iter().sum();
                w.into_iter().map(|p| p / z).collect()
            };
            let mut sum = vec![1.0f64];
            for _ in 0..nodes {
                let mut next = vec![0.0; sum.len() + single.len() - 1];
                for (i, a) in sum.iter().enumerate() {
                    for (j, b) in single.iter().enumerate() {
                        next[i + j] += a * b;
                    }
                }
                sum = next;
            }
            let centre = (sum.len() / 2) as i64;
            let tail = |x: u64| -> f64 {
                sum.iter().enumerate().filter(|(i, _)| (*i as i64 - centre).unsigned_abs() > x).map(|(_, p)| p).sum()
            };
            let x = noise_tail(nodes, var);
            assert!(tail(x) <= 2f64.powi(-40), "{nodes} × σ² = {var}: P(|X| > {x}) = {:e}", tail(x));
            assert!(tail(x / 2) > 2f64.powi(-40), "{nodes} × σ² = {var}: the bound is not loose by half");
        }
    }

    #[test]
    fn the_conversion_is_never_worse_than_the_textbook_one() {
        for rho in [0.001, 0.01, 0.1, 0.5, 1.0, 5.0] {
            let c = Charge { rho, xi: 0.0 };
            let (eps, _) = c.epsilon(1e-6);
            let textbook = rho + 2.0 * (rho * (1e6f64).ln()).sqrt();
            assert!(eps <= textbook + 1e-9, "ρ = {rho}: {eps} > {textbook}");
        }
    }

    #[test]
    fn composition_adds_rho_and_xi() {
        let a = Charge { rho: 0.1, xi: 1e-9 };
        let b = Charge { rho: 0.25, xi: 2e-9 };
        let c = a.compose(b);
        assert!((c.rho - 0.35).abs() < 1e-15 && (c.xi - 3e-9).abs() < 1e-20);
        assert_eq!(a.times(4), a.compose(a).compose(a).compose(a));
    }
}
