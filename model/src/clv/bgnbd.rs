//! The BG/NBD model (Fader, Hardie & Lee 2005, "Counting Your Customers the Easy Way",
//! Marketing Science 24(2)): while alive, a customer buys at a Poisson rate λ ~ Gamma(r, α);
//! after each purchase it drops out with probability p ~ Beta(a, b).
//!
//! **Likelihood** of one customer (x, t_x, T) (the paper's eq. 6, in closed form, without
//! the hypergeometric function):
//!
//! ```text
//! L = Γ(r+x) α^r / Γ(r) · B(a, b+x)/B(a, b) · [ (α+T)^−(r+x) + δ_{x>0} · a/(b+x−1) · (α+t_x)^−(r+x) ]
//! ```
//!
//! using B(a+1, b+x−1)/B(a, b+x) = a/(b+x−1). Evaluated in log space — ln Γ for the
//! Gamma and Beta functions, a log-sum-exp for the bracket — so customers with hundreds of
//! transactions or long ages neither overflow nor lose digits. The gradient in
//! (r, α, a, b) is analytic (digamma ψ for the Γ terms; the bracket's two parts weighted
//! by their shares w₁, w₂ of it):
//!
//! ```text
//! ∂/∂r = ψ(r+x) − ψ(r) + ln α − w₁ ln(α+T) − w₂ ln(α+t_x)
//! ∂/∂α = r/α − (r+x) (w₁/(α+T) + w₂/(α+t_x))
//! ∂/∂a = ψ(a+b) − ψ(a+b+x) + w₂/a
//! ∂/∂b = ψ(a+b) + ψ(b+x) − ψ(b) − ψ(a+b+x) − w₂/(b+x−1)
//! ```
//!
//! The federated fit optimises over log-parameters θ = ln(r, α, a, b) (all four are
//! positive), so [`log_likelihood_and_gradient`] returns ∂/∂θ = (∂/∂r)·r, …

use statrs::function::gamma::{digamma, ln_gamma};

use super::hyp2f1::{Hyp2f1Error, hyp2f1};
use super::summary::Summary;

/// The BG/NBD parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Params {
    /// Shape of the purchase-rate Gamma.
    pub r: f64,
    /// Scale of the purchase-rate Gamma (in the time unit: the mean rate is r/α).
    pub alpha: f64,
    /// The dropout-probability Beta's a.
    pub a: f64,
    /// The dropout-probability Beta's b (the mean dropout probability is a/(a+b)).
    pub b: f64,
}

impl Params {
    /// From log-parameters θ = ln(r, α, a, b).
    pub fn from_log(theta: &[f64; 4]) -> Self {
        Self { r: theta[0].exp(), alpha: theta[1].exp(), a: theta[2].exp(), b: theta[3].exp() }
    }

    pub fn to_log(&self) -> [f64; 4] {
        [self.r.ln(), self.alpha.ln(), self.a.ln(), self.b.ln()]
    }
}

/// The bracket's log and its two parts' shares: (ln S, w₁, w₂).
fn bracket(p: &Params, s: &Summary) -> (f64, f64, f64) {
    let x = f64::from(s.x);
    let u1 = -(p.r + x) * (p.alpha + s.t).ln();
    if s.x == 0 {
        return (u1, 1.0, 0.0);
    }
    let u2 = p.a.ln() - (p.b + x - 1.0).ln() - (p.r + x) * (p.alpha + s.t_x).ln();
    let m = u1.max(u2);
    let lse = m + ((u1 - m).exp() + (u2 - m).exp()).ln();
    (lse, (u1 - lse).exp(), (u2 - lse).exp())
}

/// One customer's log-likelihood.
pub fn log_likelihood(p: &Params, s: &Summary) -> f64 {
    let x = f64::from(s.x);
    let (lse, _, _) = bracket(p, s);
    ln_gamma(p.r + x) - ln_gamma(p.r) + p.r * p.alpha.ln() + ln_gamma(p.a + p.b) + ln_gamma(p.b + x)
        - ln_gamma(p.b)
        - ln_gamma(p.a + p.b + x)
        + lse
}

/// One customer's log-likelihood and its gradient in the log-parameters ln(r, α, a, b).
pub fn log_likelihood_and_gradient(p: &Params, s: &Summary) -> (f64, [f64; 4]) {
    let x = f64::from(s.x);
    let (_, w1, w2) = bracket(p, s);
    let ll = log_likelihood(p, s);
    let (at, atx) = (p.alpha + s.t, p.alpha + s.t_x);
    let dr = digamma(p.r + x) - digamma(p.r) + p.alpha.ln() - w1 * at.ln() - if s.x > 0 { w2 * atx.ln() } else { 0.0 };
    let dalpha = p.r / p.alpha - (p.r + x) * (w1 / at + if s.x > 0 { w2 / atx } else { 0.0 });
    let ab = digamma(p.a + p.b) - digamma(p.a + p.b + x);
    let da = ab + w2 / p.a;
    let db = ab + digamma(p.b + x) - digamma(p.b) - if s.x > 0 { w2 / (p.b + x - 1.0) } else { 0.0 };
    (ll, [dr * p.r, dalpha * p.alpha, da * p.a, db * p.b])
}

/// P(alive | x, t_x, T) (Fader, Hardie & Lee 2008 note, "Computing P(alive)"):
/// 1 / (1 + δ_{x>0} · a/(b+x−1) · ((α+T)/(α+t_x))^(r+x)).
pub fn p_alive(p: &Params, s: &Summary) -> f64 {
    if s.x == 0 {
        return 1.0;
    }
    let x = f64::from(s.x);
    let log_odds = p.a.ln() - (p.b + x - 1.0).ln() + (p.r + x) * ((p.alpha + s.t).ln() - (p.alpha + s.t_x).ln());
    1.0 / (1.0 + log_odds.exp())
}

/// E[Y(t) | x, t_x, T]: the expected transactions in the `t` time units after the
/// calibration end (the paper's eq. 10):
///
/// ```text
/// (a+b+x−1)/(a−1) · [1 − ((α+T)/(α+T+t))^(r+x) · ₂F₁(r+x, b+x; a+b+x−1; t/(α+T+t))] · P(alive)
/// ```
///
/// The formula divides by a − 1 (both factors change sign there, the product does not);
/// at a within 10⁻⁹ of 1 it is evaluated at a nudged away from 1.
pub fn expected_purchases(p: &Params, s: &Summary, t: f64) -> Result<f64, Hyp2f1Error> {
    if t <= 0.0 {
        return Ok(0.0);
    }
    let x = f64::from(s.x);
    let a = if (p.a - 1.0).abs() < 1e-9 { 1.0 + 1e-9 } else { p.a };
    let z = t / (p.alpha + s.t + t);
    let f = hyp2f1(p.r + x, p.b + x, a + p.b + x - 1.0, z)?;
    let lead = ((p.alpha + s.t) / (p.alpha + s.t + t)).powf(p.r + x);
    Ok((a + p.b + x - 1.0) / (a - 1.0) * (1.0 - lead * f) * p_alive(&Params { a, ..*p }, s))
}

/// E[X(t)]: the expected transactions of a new customer in its first `t` time units
/// (the paper's eq. 9): (a+b−1)/(a−1) · [1 − (α/(α+t))^r · ₂F₁(r, b; a+b−1; t/(α+t))].
pub fn expected_purchases_new(p: &Params, t: f64) -> Result<f64, Hyp2f1Error> {
    let a = if (p.a - 1.0).abs() < 1e-9 { 1.0 + 1e-9 } else { p.a };
    let f = hyp2f1(p.r, p.b, a + p.b - 1.0, t / (p.alpha + t))?;
    Ok((a + p.b - 1.0) / (a - 1.0) * (1.0 - (p.alpha / (p.alpha + t)).powf(p.r) * f))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paper's CDNOW estimates (Fader, Hardie & Lee 2005, section 5), weeks.
    const PAPER: Params = Params { r: 0.243, alpha: 4.414, a: 0.793, b: 2.426 };

    fn s(x: u32, t_x: f64, t: f64) -> Summary {
        Summary { x, t_x, t, mean_repeat_value: 0.0 }
    }

    /// The likelihood written out directly (Γ and B, no logs), for small x.
    fn direct(p: &Params, c: &Summary) -> f64 {
        use statrs::function::beta::beta;
        use statrs::function::gamma::gamma;
        let x = f64::from(c.x);
        let common = gamma(p.r + x) * p.alpha.powf(p.r) / gamma(p.r);
        let first = beta(p.a, p.b + x) / beta(p.a, p.b) * (p.alpha + c.t).powf(-(p.r + x));
        let second = if c.x > 0 {
            beta(p.a + 1.0, p.b + x - 1.0) / beta(p.a, p.b) * (p.alpha + c.t_x).powf(-(p.r + x))
        } else {
            0.0
        };
        common * (first + second)
    }

    #[test]
    fn the_log_likelihood_equals_the_papers_formula_written_out() {
        // x = 0: L = (α/(α+T))^r by hand.
        let zero = s(0, 0.0, 38.86);
        let by_hand = PAPER.r * (PAPER.alpha / (PAPER.alpha + 38.86)).ln();
        assert!((log_likelihood(&PAPER, &zero) - by_hand).abs() < 1e-13);
        // x = 1: L = r α^r [b/(a+b) (α+T)^−(r+1) + a/(a+b) (α+t_x)^−(r+1)] by hand.
        let one = s(1, 12.0, 30.0);
        let (p, q) = (PAPER, one);
        let by_hand = (p.r
            * p.alpha.powf(p.r)
            * (p.b / (p.a + p.b) * (p.alpha + q.t).powf(-(p.r + 1.0))
                + p.a / (p.a + p.b) * (p.alpha + q.t_x).powf(-(p.r + 1.0))))
        .ln();
        assert!((log_likelihood(&PAPER, &one) - by_hand).abs() < 1e-13);
        for c in [s(2, 30.43, 38.86), s(5, 20.0, 38.0), s(14, 37.1, 38.86), s(0, 0.0, 1.0)] {
            let want = direct(&PAPER, &c).ln();
            assert!((log_likelihood(&PAPER, &c) - want).abs() < 1e-11, "{c:?}");
        }
        // Far beyond what the direct form can hold, the log form stays finite.
        let heavy = s(400, 270.0, 272.0);
        assert!(!direct(&PAPER, &heavy).is_normal());
        assert!(log_likelihood(&PAPER, &heavy).is_finite());
    }

    #[test]
    fn the_gradient_equals_central_finite_differences() {
        let params =
            [PAPER, Params { r: 2.5, alpha: 0.3, a: 3.0, b: 0.7 }, Params { r: 0.05, alpha: 40.0, a: 0.2, b: 9.0 }];
        for p in params {
            for c in [s(0, 0.0, 38.86), s(1, 3.0, 20.0), s(2, 30.43, 38.86), s(9, 37.0, 38.0), s(150, 250.0, 272.0)] {
                let (ll, g) = log_likelihood_and_gradient(&p, &c);
                assert!((ll - log_likelihood(&p, &c)).abs() < 1e-15 * ll.abs().max(1.0));
                let theta = p.to_log();
                for k in 0..4 {
                    let h = 1e-5;
                    let at = |d: f64| {
                        let mut t = theta;
                        t[k] += d;
                        log_likelihood(&Params::from_log(&t), &c)
                    };
                    let fd = (at(h) - at(-h)) / (2.0 * h);
                    assert!((g[k] - fd).abs() < 1e-6 * fd.abs().max(1.0), "{p:?} {c:?} θ{k}: {} vs {fd}", g[k]);
                }
            }
        }
    }

    /// The paper's worked example (section 5): a customer with x = 2, t_x = 30.43,
    /// T = 38.86 weeks is expected to make 1.226 transactions in the next 39 weeks.
    #[test]
    #[allow(clippy::float_cmp)] // 0 and 1 are returned as such, not computed
    fn the_papers_conditional_expectation_is_reproduced() {
        let e = expected_purchases(&PAPER, &s(2, 30.43, 38.86), 39.0).unwrap();
        assert!((e - 1.226).abs() < 5e-4, "{e}");
        // Monotone in the horizon, 0 at 0; a customer not seen for long is less alive.
        assert_eq!(expected_purchases(&PAPER, &s(2, 30.43, 38.86), 0.0).unwrap(), 0.0);
        assert!(expected_purchases(&PAPER, &s(2, 30.43, 38.86), 52.0).unwrap() > e);
        assert!(p_alive(&PAPER, &s(2, 5.0, 38.86)) < p_alive(&PAPER, &s(2, 30.43, 38.86)));
        assert_eq!(p_alive(&PAPER, &s(0, 0.0, 38.86)), 1.0);
        // A new customer's expectation is the x = 0, T = 0 case of the conditional one.
        let new = expected_purchases_new(&PAPER, 39.0).unwrap();
        let conditional = expected_purchases(&PAPER, &s(0, 0.0, 0.0), 39.0).unwrap();
        assert!((new - conditional).abs() < 1e-12, "{new} vs {conditional}");
        // a = 1 exactly is evaluated next to it, not divided by zero.
        let one = Params { a: 1.0, ..PAPER };
        let e1 = expected_purchases(&one, &s(2, 30.43, 38.86), 39.0).unwrap();
        let e2 = expected_purchases(&Params { a: 1.0 + 1e-6, ..PAPER }, &s(2, 30.43, 38.86), 39.0).unwrap();
        assert!(e1.is_finite() && (e1 - e2).abs() < 1e-4, "{e1} {e2}");
    }
}
