//! What a node contributes to one evaluation of a CLV fit, as words secure aggregation
//! adds: its number of customers in the model, the sum of their log-likelihoods and the
//! sum of their gradients in the log-parameters, at the parameters the coordinator
//! signed for the round. The decoded sum over nodes is the pooled sum, within the
//! rounding [`crate::fixed::CLV`] states.
//!
//! Layout: `[customers (exact count), Σ ln L, Σ ∂ln L/∂θ₁, …]` — 6 words for BG/NBD
//! (θ = ln r, ln α, ln a, ln b), 5 for Gamma-Gamma (θ = ln p, ln q, ln γ). A customer's
//! term beyond the encoding's per-term bound ±2^20 is clipped to it and counted.
//!
//! Under differential privacy ([`node_terms`]) each customer's term is clamped to the
//! round's stated bounds ([`TermClips`]) and scaled to [−1, 1] per component, so one
//! customer's term has ℓ2 norm at most √(2 + d); the node's mechanism
//! (`fedcrm_dp::vector::CustomerSum`) sums, noises and rounds those, and
//! [`Evaluation::from_noised`] scales the decoded sum back.

use serde::{Deserialize, Serialize};

use super::summary::{Summary, TimeUnit};
use super::{bgnbd, gamma_gamma};
use crate::fixed::{CLV, COUNT, FixedError, Sections};

/// Which likelihood a round evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Likelihood {
    BgNbd,
    GammaGamma,
}

impl Likelihood {
    /// Log-parameters.
    pub fn dims(self) -> usize {
        match self {
            Likelihood::BgNbd => 4,
            Likelihood::GammaGamma => 3,
        }
    }

    /// Words of one contribution.
    pub fn words(self) -> usize {
        2 + self.dims()
    }
}

/// A node's sums at θ, as reals (before encoding), and how many terms were clipped.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSums {
    pub customers: u64,
    pub log_likelihood: f64,
    pub gradient: Vec<f64>,
    pub clipped: u64,
}

/// Calls `add(ln Lᵢ, ∇ ln Lᵢ)` for each customer in `which`'s likelihood at `theta`
/// (Gamma-Gamma: those with a repeat purchase).
fn each_term(which: Likelihood, theta: &[f64], customers: &[Summary], mut add: impl FnMut(f64, &[f64])) {
    match which {
        Likelihood::BgNbd => {
            let p = bgnbd::Params::from_log(&[theta[0], theta[1], theta[2], theta[3]]);
            for c in customers {
                let (ll, g) = bgnbd::log_likelihood_and_gradient(&p, c);
                add(ll, &g);
            }
        }
        Likelihood::GammaGamma => {
            let p = gamma_gamma::Params::from_log(&[theta[0], theta[1], theta[2]]);
            for c in customers {
                if let Some((ll, g)) = gamma_gamma::log_likelihood_and_gradient(&p, c) {
                    add(ll, &g);
                }
            }
        }
    }
}

/// A node's sums of `which` at log-parameters `theta` over its customers.
pub fn node_sums(which: Likelihood, theta: &[f64], customers: &[Summary]) -> NodeSums {
    let bound = CLV.bound();
    let mut out = NodeSums { customers: 0, log_likelihood: 0.0, gradient: vec![0.0; which.dims()], clipped: 0 };
    each_term(which, theta, customers, |ll, g| {
        let clip = |v: f64| v.clamp(-bound, bound);
        let clipped = !(ll.abs() <= bound && g.iter().all(|v| v.abs() <= bound));
        out.clipped += u64::from(clipped);
        out.customers += 1;
        out.log_likelihood += clip(ll);
        for (s, v) in out.gradient.iter_mut().zip(g) {
            *s += clip(*v);
        }
    });
    out
}

/// Issue 13 under differential privacy: the stated bounds on one customer's terms. Each
/// customer's ln Lᵢ is clamped to ±`log_likelihood` and its gradient component k to
/// ±`gradient[k]`; a term beyond them is biased, never dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TermClips {
    pub log_likelihood: f64,
    pub gradient: Vec<f64>,
}

impl TermClips {
    /// The bounds a DP fit uses: at about the 99.9th percentile of each term over CDNOW's
    /// customers at their fitted parameters, or above it (time in
    /// weeks; README, "CLV under differential privacy", gives the percentiles and what
    /// the clipping costs). The gradient in log-parameters does not depend on the time
    /// unit (α scales with it); ln Lᵢ is a density in the purchase times, lower by
    /// ln 7 per repeat purchase in days, hence the larger bound there. Gamma-Gamma's
    /// terms do not depend on the time unit, and hardly on the currency unit at the fit
    /// (γ scales with it); its ln Lᵢ, a density in spend, gets room for yuan amounts.
    pub fn default_for(which: Likelihood, unit: TimeUnit) -> Self {
        match (which, unit) {
            (Likelihood::BgNbd, TimeUnit::Weeks) => Self { log_likelihood: 50.0, gradient: vec![1.5, 3.0, 2.5, 0.75] },
            (Likelihood::BgNbd, TimeUnit::Days) => Self { log_likelihood: 100.0, gradient: vec![1.5, 3.0, 2.5, 0.75] },
            (Likelihood::GammaGamma, _) => Self { log_likelihood: 25.0, gradient: vec![8.0, 8.0, 5.0] },
        }
    }

    /// The ℓ2 norm bound of one customer's scaled term `[1, ln L/C, ∂₁/C₁, …]`: √(2 + d).
    pub fn term_norm(&self) -> f64 {
        ((2 + self.gradient.len()) as f64).sqrt()
    }
}

/// Under differential privacy: each customer's term of `which` at `theta`, clamped to
/// `clips` and scaled to [−1, 1] per component — `[1, ln Lᵢ/C_ℓ, ∂ₖ ln Lᵢ/Cₖ …]` — and how
/// many customers had a term clamped.
pub fn node_terms(which: Likelihood, theta: &[f64], customers: &[Summary], clips: &TermClips) -> (Vec<Vec<f64>>, u64) {
    let mut terms = Vec::with_capacity(customers.len());
    let mut clipped = 0;
    // ±∞ clamps to the bound; a NaN (never expected for finite data and log-parameters
    // within the wire's range) adds nothing, so one customer cannot void the node's sum.
    let scaled = |v: f64, c: f64| if v.is_nan() { 0.0 } else { v.clamp(-c, c) / c };
    each_term(which, theta, customers, |ll, g| {
        let mut t = Vec::with_capacity(which.words());
        t.push(1.0);
        t.push(scaled(ll, clips.log_likelihood));
        t.extend(g.iter().zip(&clips.gradient).map(|(v, c)| scaled(*v, *c)));
        // NaN counts as clamped.
        let within = ll.abs() <= clips.log_likelihood && g.iter().zip(&clips.gradient).all(|(v, c)| v.abs() <= *c);
        clipped += u64::from(!within);
        terms.push(t);
    });
    (terms, clipped)
}

impl NodeSums {
    /// The words this node masks and sends.
    pub fn to_words(&self) -> Result<Vec<u64>, FixedError> {
        let n = self.customers.max(1);
        let mut words = vec![COUNT.encode(self.customers as f64, n)?, CLV.encode(self.log_likelihood, n)?];
        for g in &self.gradient {
            words.push(CLV.encode(*g, n)?);
        }
        Ok(words)
    }
}

/// One evaluation of the fit, decoded from the sum over nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub customers: u64,
    pub log_likelihood: f64,
    pub gradient: Vec<f64>,
}

impl Evaluation {
    /// Decodes the summed words of `which`.
    pub fn decode(which: Likelihood, words: &[u64]) -> Result<Self, FixedError> {
        let mut s = Sections::new("clv sums", words, which.words())?;
        let customers = s.counts(1)[0];
        let log_likelihood = s.decode(CLV, 1)[0];
        Ok(Self { customers, log_likelihood, gradient: s.decode(CLV, which.dims()) })
    }

    /// A noised round's decoded reals (the sum of [`node_terms`] plus noise) scaled back by
    /// `clips`; the noised count rounded, and at least 0.
    pub fn from_noised(which: Likelihood, reals: &[f64], clips: &TermClips) -> Result<Self, FixedError> {
        if reals.len() != which.words() || clips.gradient.len() != which.dims() {
            return Err(FixedError::Length { what: "clv noised sums", got: reals.len(), expected: which.words() });
        }
        let customers = if reals[0].is_finite() { reals[0].round().max(0.0) as u64 } else { 0 };
        Ok(Self {
            customers,
            log_likelihood: reals[1] * clips.log_likelihood,
            gradient: reals[2..].iter().zip(&clips.gradient).map(|(v, c)| v * c).collect(),
        })
    }

    /// How far [`Evaluation::objective`] may be off by rounding, for `nodes` nodes' sums:
    /// their decode error over the customers ([`super::fit::Stopping::noise`]).
    pub fn rounding(&self, nodes: u64) -> f64 {
        CLV.max_decode_error(nodes) / (self.customers.max(1) as f64)
    }

    /// The optimiser's objective, the mean negative log-likelihood, and its gradient;
    /// infinite when no customer is in the model.
    pub fn objective(&self) -> (f64, Vec<f64>) {
        if self.customers == 0 {
            return (f64::INFINITY, vec![0.0; self.gradient.len()]);
        }
        let n = self.customers as f64;
        (-self.log_likelihood / n, self.gradient.iter().map(|g| -g / n).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::wrapping_sum;

    fn c(x: u32, t_x: f64, t: f64, m: f64) -> Summary {
        Summary { x, t_x, t, mean_repeat_value: m }
    }

    #[test]
    fn sums_over_nodes_decode_to_the_pooled_sums() {
        let all = [c(0, 0.0, 38.0, 0.0), c(2, 30.4, 38.9, 20.0), c(5, 12.0, 20.0, 15.5), c(1, 1.0, 2.0, 99.0)];
        let theta = [-1.4, 1.5, -0.2, 0.9];
        for which in [Likelihood::BgNbd, Likelihood::GammaGamma] {
            let theta = &theta[..which.dims()];
            let pooled = node_sums(which, theta, &all);
            let words: Vec<Vec<u64>> = [&all[..1], &all[1..3], &all[3..]]
                .iter()
                .map(|p| node_sums(which, theta, p).to_words().unwrap())
                .collect();
            let e = Evaluation::decode(which, &wrapping_sum(&words).unwrap()).unwrap();
            assert_eq!(e.customers, if which == Likelihood::BgNbd { 4 } else { 3 });
            let tol = CLV.max_decode_error(3);
            assert!((e.log_likelihood - pooled.log_likelihood).abs() <= tol, "{which:?}");
            for (a, b) in e.gradient.iter().zip(&pooled.gradient) {
                assert!((a - b).abs() <= tol, "{which:?}");
            }
            assert_eq!(pooled.clipped, 0);
        }
        // A node with no customer in the model sends zeros; the objective of nobody is ∞.
        let none = node_sums(Likelihood::GammaGamma, &theta[..3], &all[..1]);
        assert_eq!(none.to_words().unwrap(), vec![0; 5]);
        assert!(Evaluation::decode(Likelihood::GammaGamma, &[0; 5]).unwrap().objective().0.is_infinite());
        assert!(Evaluation::decode(Likelihood::BgNbd, &[0; 5]).is_err(), "a BG/NBD sum has 6 words");
    }

    /// Under DP each customer's term is clamped to the stated bounds and scaled into
    /// [−1, 1] per component (so its norm is at most √(2 + d)), a customer beyond them is
    /// counted, and the scaled sum decodes back to the sums of the clamped terms.
    #[test]
    fn dp_terms_are_clamped_to_the_stated_bounds_and_decode_to_the_clamped_sums() {
        // A heavy buyer at parameters far from any fit: terms far beyond tight bounds.
        let all = [c(0, 0.0, 38.0, 0.0), c(2, 30.4, 38.9, 20.0), c(60, 38.0, 39.0, 900.0)];
        let theta = [-1.4, 1.5, -0.2, 0.9];
        let clips = TermClips { log_likelihood: 10.0, gradient: vec![1.0, 1.0, 1.0, 0.5] };
        let (terms, clipped) = node_terms(Likelihood::BgNbd, &theta, &all, &clips);
        assert_eq!(terms.len(), 3);
        assert!(clipped >= 1, "the heavy buyer is clamped");
        for t in &terms {
            assert!((t[0] - 1.0).abs() < f64::EPSILON, "the count");
            assert!(t.iter().all(|v| v.abs() <= 1.0));
            assert!(t.iter().map(|v| v * v).sum::<f64>().sqrt() <= clips.term_norm() + 1e-12);
        }
        let sum: Vec<f64> = (0..6).map(|k| terms.iter().map(|t| t[k]).sum()).collect();
        let e = Evaluation::from_noised(Likelihood::BgNbd, &sum, &clips).unwrap();
        assert_eq!(e.customers, 3);
        let mut want = (0.0, [0.0; 4]);
        let p = bgnbd::Params::from_log(&theta);
        for s in &all {
            let (ll, g) = bgnbd::log_likelihood_and_gradient(&p, s);
            want.0 += ll.clamp(-10.0, 10.0);
            for ((w, v), c) in want.1.iter_mut().zip(g).zip(&clips.gradient) {
                *w += v.clamp(-c, *c);
            }
        }
        assert!((e.log_likelihood - want.0).abs() < 1e-9, "{} vs {}", e.log_likelihood, want.0);
        for k in 0..4 {
            assert!((e.gradient[k] - want.1[k]).abs() < 1e-9, "{k}");
        }
        // A noised count below zero reads as no customer; wrong lengths are refused.
        let mut noisy = sum.clone();
        noisy[0] = -2.4;
        assert_eq!(Evaluation::from_noised(Likelihood::BgNbd, &noisy, &clips).unwrap().customers, 0);
        assert!(Evaluation::from_noised(Likelihood::GammaGamma, &sum, &clips).is_err());
    }
}
