//! What a node contributes to one evaluation of a CLV fit, as words secure aggregation
//! adds: its number of customers in the model, the sum of their log-likelihoods and the
//! sum of their gradients in the log-parameters, at the parameters the coordinator
//! signed for the round. The decoded sum over nodes is the pooled sum, within the
//! rounding [`crate::fixed::CLV`] states.
//!
//! Layout: `[customers (exact count), Σ ln L, Σ ∂ln L/∂θ₁, …]` — 6 words for BG/NBD
//! (θ = ln r, ln α, ln a, ln b), 5 for Gamma-Gamma (θ = ln p, ln q, ln γ). A customer's
//! term beyond the encoding's per-term bound ±2^20 is clipped to it and counted.

use serde::{Deserialize, Serialize};

use super::summary::Summary;
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

/// A node's sums of `which` at log-parameters `theta` over its customers.
pub fn node_sums(which: Likelihood, theta: &[f64], customers: &[Summary]) -> NodeSums {
    let bound = CLV.bound();
    let mut out = NodeSums { customers: 0, log_likelihood: 0.0, gradient: vec![0.0; which.dims()], clipped: 0 };
    let mut add = |ll: f64, g: &[f64]| {
        let clip = |v: f64| v.clamp(-bound, bound);
        let clipped = !(ll.abs() <= bound && g.iter().all(|v| v.abs() <= bound));
        out.clipped += u64::from(clipped);
        out.customers += 1;
        out.log_likelihood += clip(ll);
        for (s, v) in out.gradient.iter_mut().zip(g) {
            *s += clip(*v);
        }
    };
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
    out
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
}
