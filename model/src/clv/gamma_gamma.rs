//! The Gamma-Gamma model of spend per transaction (Fader & Hardie 2013, "The
//! Gamma-Gamma Model of Monetary Value"; Colombo & Jiang 1999): a transaction's value is
//! Gamma(p, ν), ν ~ Gamma(q, γ) across customers, independent of the purchase process.
//! Fitted on the customers with at least one repeat transaction, from (x, m̄) — m̄ the
//! mean of their x repeat transactions.
//!
//! **Likelihood** of one customer (the note's eq. 3):
//!
//! ```text
//! ln L = ln Γ(px+q) − ln Γ(px) − ln Γ(q) + q ln γ + (px−1) ln m̄ + px ln x − (px+q) ln(γ + m̄x)
//! ```
//!
//! and its gradient in (p, q, γ):
//!
//! ```text
//! ∂/∂p = x (ψ(px+q) − ψ(px) + ln m̄ + ln x − ln(γ + m̄x))
//! ∂/∂q = ψ(px+q) − ψ(q) + ln γ − ln(γ + m̄x)
//! ∂/∂γ = q/γ − (px+q)/(γ + m̄x)
//! ```
//!
//! returned, like BG/NBD's, in the log-parameters ln(p, q, γ).

use statrs::function::gamma::{digamma, ln_gamma};

use super::summary::Summary;

/// The Gamma-Gamma parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Params {
    /// Shape of a transaction's value.
    pub p: f64,
    /// Shape of the Gamma over customers' ν.
    pub q: f64,
    /// Scale of the Gamma over customers' ν (in the currency's main unit).
    pub gamma: f64,
}

impl Params {
    pub fn from_log(theta: &[f64; 3]) -> Self {
        Self { p: theta[0].exp(), q: theta[1].exp(), gamma: theta[2].exp() }
    }

    pub fn to_log(&self) -> [f64; 3] {
        [self.p.ln(), self.q.ln(), self.gamma.ln()]
    }
}

/// Whether the customer enters the spend model: at least one repeat transaction, with a
/// positive mean value.
pub fn fits(s: &Summary) -> bool {
    s.x > 0 && s.mean_repeat_value > 0.0 && s.mean_repeat_value.is_finite()
}

/// One customer's log-likelihood; `None` when it does not enter the model ([`fits`]).
pub fn log_likelihood(p: &Params, s: &Summary) -> Option<f64> {
    if !fits(s) {
        return None;
    }
    let (x, m) = (f64::from(s.x), s.mean_repeat_value);
    let px = p.p * x;
    Some(
        ln_gamma(px + p.q) - ln_gamma(px) - ln_gamma(p.q) + p.q * p.gamma.ln() + (px - 1.0) * m.ln() + px * x.ln()
            - (px + p.q) * (p.gamma + m * x).ln(),
    )
}

/// One customer's log-likelihood and its gradient in ln(p, q, γ); `None` as above.
pub fn log_likelihood_and_gradient(p: &Params, s: &Summary) -> Option<(f64, [f64; 3])> {
    let ll = log_likelihood(p, s)?;
    let (x, m) = (f64::from(s.x), s.mean_repeat_value);
    let px = p.p * x;
    let g = (p.gamma + m * x).ln();
    let dp = x * (digamma(px + p.q) - digamma(px) + m.ln() + x.ln() - g);
    let dq = digamma(px + p.q) - digamma(p.q) + p.gamma.ln() - g;
    let dgamma = p.q / p.gamma - (px + p.q) / (p.gamma + m * x);
    Some((ll, [dp * p.p, dq * p.q, dgamma * p.gamma]))
}

/// E[M | p, q, γ, m̄, x]: the expected value of this customer's transactions (the note's
/// eq. 5), p(γ + m̄x)/(px + q − 1), a weighted mean of the population mean pγ/(q − 1)
/// and the customer's own m̄. A customer with no repeat transaction gets the population
/// mean. `None` when q ≤ 1 (the population mean does not exist).
pub fn expected_spend(p: &Params, s: &Summary) -> Option<f64> {
    if p.q <= 1.0 {
        return None;
    }
    if !fits(s) {
        return Some(p.p * p.gamma / (p.q - 1.0));
    }
    let x = f64::from(s.x);
    Some(p.p * (p.gamma + s.mean_repeat_value * x) / (p.p * x + p.q - 1.0))
}

/// The log-parameters (ln p, ln q, ln γ) of the point (ln p, φ, ln γ) with q = 1 + e^φ:
/// a fit over φ keeps q > 1, so that the mean spend pγ/(q − 1) exists. ln q is kept
/// within the fit's box (`fit::FIT_BOUND`), which ln(1 + e^φ) passes by 3·10⁻⁷ at its
/// edge.
pub fn log_params_q_above_one(theta: &[f64]) -> [f64; 3] {
    let ln_q = if theta[1] > 35.0 { theta[1] } else { theta[1].exp().ln_1p() };
    [theta[0], ln_q.min(super::fit::FIT_BOUND), theta[2]]
}

/// A gradient over (ln p, ln q, ln γ) as one over (ln p, φ, ln γ) at `theta` (chain rule:
/// d ln q/dφ = e^φ/(1 + e^φ)).
pub fn gradient_q_above_one(theta: &[f64], mut gradient: Vec<f64>) -> Vec<f64> {
    gradient[1] /= 1.0 + (-theta[1]).exp();
    gradient
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fader & Hardie's CDNOW estimates (the 2013 note), dollars.
    const NOTE: Params = Params { p: 6.25, q: 3.74, gamma: 15.44 };

    fn s(x: u32, m: f64) -> Summary {
        Summary { x, t_x: 0.0, t: 0.0, mean_repeat_value: m }
    }

    #[test]
    fn the_log_likelihood_equals_the_density_written_out() {
        use statrs::function::gamma::gamma;
        for c in [s(1, 10.0), s(2, 35.5), s(5, 120.0)] {
            let (x, m) = (f64::from(c.x), c.mean_repeat_value);
            let px = NOTE.p * x;
            let density = gamma(px + NOTE.q) / (gamma(px) * gamma(NOTE.q))
                * NOTE.gamma.powf(NOTE.q)
                * m.powf(px - 1.0)
                * x.powf(px)
                / (NOTE.gamma + m * x).powf(px + NOTE.q);
            assert!((log_likelihood(&NOTE, &c).unwrap() - density.ln()).abs() < 1e-11, "{c:?}");
        }
        assert_eq!(log_likelihood(&NOTE, &s(0, 0.0)), None);
        assert_eq!(log_likelihood(&NOTE, &s(3, 0.0)), None, "a repeat buyer who spent nothing");
    }

    #[test]
    fn the_gradient_equals_central_finite_differences() {
        for p in [NOTE, Params { p: 0.8, q: 1.5, gamma: 200.0 }] {
            for c in [s(1, 10.0), s(2, 35.5), s(40, 17.25)] {
                let (ll, g) = log_likelihood_and_gradient(&p, &c).unwrap();
                assert!((ll - log_likelihood(&p, &c).unwrap()).abs() < 1e-15 * ll.abs().max(1.0));
                for k in 0..3 {
                    let h = 1e-5;
                    let at = |d: f64| {
                        let mut t = p.to_log();
                        t[k] += d;
                        log_likelihood(&Params::from_log(&t), &c).unwrap()
                    };
                    let fd = (at(h) - at(-h)) / (2.0 * h);
                    assert!((g[k] - fd).abs() < 1e-6 * fd.abs().max(1.0), "{p:?} {c:?} θ{k}: {} vs {fd}", g[k]);
                }
            }
        }
    }

    #[test]
    fn expected_spend_shrinks_a_customers_mean_towards_the_population_mean() {
        let population = NOTE.p * NOTE.gamma / (NOTE.q - 1.0);
        assert!((expected_spend(&NOTE, &s(0, 0.0)).unwrap() - population).abs() < 1e-12);
        let few = expected_spend(&NOTE, &s(1, 100.0)).unwrap();
        let many = expected_spend(&NOTE, &s(50, 100.0)).unwrap();
        assert!(population < few && few < many && many < 100.0, "{population} {few} {many}");
        assert_eq!(expected_spend(&Params { q: 0.9, ..NOTE }, &s(1, 100.0)), None);
    }

    /// The fit over φ = ln(q − 1): q > 1 everywhere, and the chain rule's gradient
    /// matches a finite difference of the log-likelihood.
    #[test]
    fn a_fit_over_ln_q_minus_one_keeps_q_above_one_and_its_gradient_is_the_chain_rules() {
        let s = Summary { x: 3, t_x: 20.0, t: 30.0, mean_repeat_value: 41.0 };
        // At the box's edge and beyond, ln q stays within it (a model the nodes accept).
        for phi in [15.0, 40.0] {
            assert!(log_params_q_above_one(&[0.0, phi, 0.0])[1] <= crate::clv::fit::FIT_BOUND);
        }
        for phi in [-14.0, -2.0, 0.0, 1.3, 14.0] {
            let theta = [1.8, phi, 2.7];
            let lp = log_params_q_above_one(&theta);
            let q = lp[1].exp();
            assert!(q > 1.0 && ((q - 1.0) / phi.exp() - 1.0).abs() < 1e-9, "φ = {phi}: q = {q}");
            if phi.abs() > 20.0 {
                continue;
            }
            let ll = |t: &[f64]| log_likelihood(&Params::from_log(&log_params_q_above_one(t)), &s).unwrap();
            let (_, g) = log_likelihood_and_gradient(&Params::from_log(&lp), &s).unwrap();
            let g = gradient_q_above_one(&theta, g.to_vec());
            let h = 1e-6;
            let fd = (ll(&[1.8, phi + h, 2.7]) - ll(&[1.8, phi - h, 2.7])) / (2.0 * h);
            assert!((g[1] - fd).abs() < 1e-6 * fd.abs().max(1.0), "φ = {phi}: {} vs {fd}", g[1]);
        }
    }
}
