//! L2-regularised logistic regression and its federated Newton training. Pure: no I/O.
//!
//! **Model.** For standardised features `z ∈ R^d` and weights `w = (w_0, w_1 … w_d)`
//! (`w_0` the intercept), `p(z) = σ(w_0 + Σ_j w_j z_j)` is the probability of churn.
//!
//! **Objective** (mean over the `n` examples of all nodes, intercept not penalised):
//!
//! ```text
//! F(w) = (1/n) Σ_i ℓ_i(w) + (λ/2) Σ_{j≥1} w_j²,   ℓ_i = log(1 + e^η_i) − y_i η_i,  η_i = x_iᵀw,  x_i = (1, z_i)
//! ```
//!
//! **A node's Newton sums** at the current global `w`, over its own examples
//! ([`newton_contribution`]), as one word vector with `p = d + 1`:
//!
//! ```text
//! [ n | Σℓ_i | g_0 … g_d | H_00 H_01 … H_0d H_11 … H_dd ]     2 + p + p(p+1)/2 words
//!   g = Σ_i (p_i − y_i) x_i,   H = Σ_i p_i (1 − p_i) x_i x_iᵀ   (upper triangle, row by row)
//! ```
//!
//! `n` is a count; the rest use [`fixed::MODEL`] (`S = 32`, terms bounded by 64: with
//! `|z_j| ≤ 16` a gradient term is at most 16 and a Hessian term at most 64; a loss term
//! is clipped to 64, which only the stopping rule reads).
//!
//! **The coordinator's step** ([`newton_step`]) from the sums over all nodes, with
//! `P = diag(0, 1, …, 1)`:
//!
//! ```text
//! (H/n + λP) Δ = g/n + λPw,    w ← w − Δ
//! ```
//!
//! solved by Cholesky ([`crate::linalg`]). [`Stopping`] ends training when the
//! gradient's largest entry `‖g/n + λPw‖_∞` or the relative change of `F` falls below
//! its tolerance, or after `max_rounds`.

use ndarray::{Array1, Array2, ArrayView1};
use serde::{Deserialize, Serialize};

use crate::features::Example;
use crate::fixed::{self, COUNT, FixedError, MODEL, Sections};
use crate::linalg::{LinalgError, cholesky_solve};
use crate::standardise::Standardiser;

/// What can go wrong in training.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LogisticError {
    #[error(transparent)]
    Fixed(#[from] FixedError),
    #[error("newton step: {0}")]
    Solve(#[from] LinalgError),
    #[error("{what}: {got} values, expected {expected}")]
    Shape { what: &'static str, got: usize, expected: usize },
    #[error("newton step: no examples over all nodes")]
    NoExamples,
}

/// A churn model as the node applies it to one customer's standardised features.
pub trait Model {
    /// The number of parameters (weights, intercept included).
    fn n_parameters(&self) -> usize;
    /// The probability of churn.
    fn predict(&self, z: ArrayView1<'_, f64>) -> f64;
    /// Each feature's additive part of the log-odds (for "top reasons").
    fn contributions(&self, z: ArrayView1<'_, f64>) -> Vec<f64>;
}

/// Logistic regression weights: `[w_0 (intercept), w_1 … w_d]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logistic {
    pub weights: Vec<f64>,
}

impl Logistic {
    /// All-zero weights for `d` features (p = 0.5 everywhere): where training starts.
    pub fn zeros(d: usize) -> Self {
        Self { weights: vec![0.0; d + 1] }
    }

    /// The log-odds `w_0 + Σ w_j z_j`.
    pub fn log_odds(&self, z: ArrayView1<'_, f64>) -> f64 {
        self.weights[0] + self.weights[1..].iter().zip(z.iter()).map(|(w, x)| w * x).sum::<f64>()
    }
}

impl Model for Logistic {
    fn n_parameters(&self) -> usize {
        self.weights.len()
    }

    fn predict(&self, z: ArrayView1<'_, f64>) -> f64 {
        sigmoid(self.log_odds(z))
    }

    fn contributions(&self, z: ArrayView1<'_, f64>) -> Vec<f64> {
        self.weights[1..].iter().zip(z.iter()).map(|(w, x)| w * x).collect()
    }
}

/// The `k` features that push this customer's churn log-odds up the most, largest
/// first, with their contributions (only positive ones: reasons *for* churn).
pub fn top_reasons(model: &dyn Model, z: ArrayView1<'_, f64>, names: &[String], k: usize) -> Vec<(String, f64)> {
    let mut c: Vec<(String, f64)> =
        names.iter().cloned().zip(model.contributions(z)).filter(|(_, v)| *v > 0.0).collect();
    c.sort_by(|a, b| b.1.total_cmp(&a.1));
    c.truncate(k);
    c
}

/// `1 / (1 + e^−t)`, without overflow.
pub fn sigmoid(t: f64) -> f64 {
    if t >= 0.0 { 1.0 / (1.0 + (-t).exp()) } else { t.exp() / (1.0 + t.exp()) }
}

/// `log(1 + e^η) − y η`, without overflow.
pub fn log_loss_term(eta: f64, y: f64) -> f64 {
    eta.max(0.0) + (-eta.abs()).exp().ln_1p() - y * eta
}

/// A node's examples: standardised features (`n × d`, no intercept column) and labels
/// (1 = churned).
#[derive(Debug, Clone, PartialEq)]
pub struct Examples {
    pub z: Array2<f64>,
    pub y: Array1<f64>,
}

impl Examples {
    /// Standardises raw examples with the global constants.
    pub fn standardised(standardiser: &Standardiser, examples: &[Example]) -> Self {
        let rows: Vec<Vec<f64>> = examples.iter().map(|e| e.features.clone()).collect();
        let y = examples.iter().map(|e| f64::from(u8::from(e.churned))).collect();
        Self { z: standardiser.matrix(&rows), y }
    }

    /// The number of examples.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// The number of features `d`.
    pub fn dim(&self) -> usize {
        self.z.ncols()
    }

    /// The log-odds of every example under `weights`.
    pub fn log_odds(&self, weights: &[f64]) -> Result<Array1<f64>, LogisticError> {
        if weights.len() != self.dim() + 1 {
            return Err(LogisticError::Shape { what: "weights", got: weights.len(), expected: self.dim() + 1 });
        }
        let w = ArrayView1::from(&weights[1..]);
        Ok(self.z.dot(&w) + weights[0])
    }
}

/// The number of words of a Newton contribution for `d` features.
pub fn newton_len(d: usize) -> usize {
    let p = d + 1;
    2 + p + p * (p + 1) / 2
}

/// A node's Newton sums at the global `weights` over its examples, encoded (layout in
/// the module docs).
pub fn newton_contribution(weights: &[f64], examples: &Examples) -> Result<Vec<u64>, LogisticError> {
    let eta = examples.log_odds(weights)?;
    let n = examples.len();
    let p = examples.dim() + 1;
    let mut loss = 0.0;
    let mut g = Array1::<f64>::zeros(p);
    let mut h = Array2::<f64>::zeros((p, p));
    let mut x = Array1::<f64>::zeros(p);
    x[0] = 1.0;
    for i in 0..n {
        let (e, y) = (eta[i], examples.y[i]);
        let prob = sigmoid(e);
        loss += log_loss_term(e, y).min(MODEL.bound());
        for (j, v) in examples.z.row(i).iter().enumerate() {
            x[j + 1] = *v;
        }
        g.scaled_add(prob - y, &x);
        let s = prob * (1.0 - prob);
        for a in 0..p {
            let sa = s * x[a];
            for b in a..p {
                h[[a, b]] += sa * x[b];
            }
        }
    }
    let terms = n as u64;
    let mut words = Vec::with_capacity(newton_len(p - 1));
    words.push(COUNT.encode(n as f64, terms)?);
    words.push(MODEL.encode(loss, terms)?);
    for v in &g {
        words.push(MODEL.encode(*v, terms)?);
    }
    for a in 0..p {
        for b in a..p {
            words.push(MODEL.encode(h[[a, b]], terms)?);
        }
    }
    Ok(words)
}

/// Newton sums over all nodes, decoded; the Hessian filled in symmetrically.
#[derive(Debug, Clone, PartialEq)]
pub struct NewtonSums {
    pub n: u64,
    pub loss: f64,
    pub gradient: Array1<f64>,
    pub hessian: Array2<f64>,
}

/// Decodes the summed Newton vector for `d` features.
pub fn decode_newton(d: usize, words: &[u64]) -> Result<NewtonSums, LogisticError> {
    let p = d + 1;
    let mut s = Sections::new("newton sums", words, newton_len(d))?;
    let n = s.counts(1)[0];
    let loss = s.decode(MODEL, 1)[0];
    let gradient = Array1::from(s.decode(MODEL, p));
    let upper = s.decode(MODEL, p * (p + 1) / 2);
    let mut hessian = Array2::zeros((p, p));
    let mut k = 0;
    for a in 0..p {
        for b in a..p {
            hessian[[a, b]] = upper[k];
            hessian[[b, a]] = upper[k];
            k += 1;
        }
    }
    Ok(NewtonSums { n, loss, gradient, hessian })
}

/// One Newton step's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct NewtonStep {
    /// `w − Δ`.
    pub weights: Vec<f64>,
    /// `F` at the weights the sums were computed at.
    pub objective: f64,
    /// `‖g/n + λPw‖_∞` at those weights.
    pub gradient_norm: f64,
}

/// The coordinator's step: solves `(H/n + λP) Δ = g/n + λPw` and returns `w − Δ`.
pub fn newton_step(weights: &[f64], sums: &NewtonSums, lambda: f64) -> Result<NewtonStep, LogisticError> {
    let p = sums.gradient.len();
    if weights.len() != p {
        return Err(LogisticError::Shape { what: "weights", got: weights.len(), expected: p });
    }
    if sums.n == 0 {
        return Err(LogisticError::NoExamples);
    }
    let n = sums.n as f64;
    let w = Array1::from(weights.to_vec());
    let mut penalised = w.clone();
    penalised[0] = 0.0;
    let grad = &sums.gradient / n + lambda * &penalised;
    let mut a = &sums.hessian / n;
    for j in 1..p {
        a[[j, j]] += lambda;
    }
    let delta = cholesky_solve(&a, &grad)?;
    let objective = sums.loss / n + 0.5 * lambda * penalised.dot(&penalised);
    Ok(NewtonStep {
        weights: (w - delta).to_vec(),
        objective,
        gradient_norm: grad.iter().fold(0.0, |m: f64, v| m.max(v.abs())),
    })
}

/// When training stops.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stopping {
    /// At most this many rounds (default 20; Newton needs ~5–10 for a few dozen features).
    pub max_rounds: u32,
    /// Converged when `‖∇F‖_∞` at the round's weights is at most this (default 10^−6,
    /// far above the fixed-point error of `K·2^−33/n` per entry).
    pub gradient_tol: f64,
    /// Converged when `|F_t − F_{t−1}| ≤ tol · |F_t|` (default 10^−10).
    pub relative_loss_tol: f64,
}

impl Default for Stopping {
    fn default() -> Self {
        Self { max_rounds: 20, gradient_tol: 1e-6, relative_loss_tol: 1e-10 }
    }
}

/// Why training stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    GradientSmall,
    LossSettled,
    MaxRounds,
}

impl Stopping {
    /// Whether to stop after `rounds` rounds, the last one's step `step` and the round
    /// before's objective. The step's new weights are the result either way.
    pub fn check(&self, rounds: u32, step: &NewtonStep, previous_objective: Option<f64>) -> Option<StopReason> {
        if step.gradient_norm <= self.gradient_tol {
            return Some(StopReason::GradientSmall);
        }
        if let Some(prev) = previous_objective
            && (step.objective - prev).abs() <= self.relative_loss_tol * step.objective.abs()
        {
            return Some(StopReason::LossSettled);
        }
        (rounds >= self.max_rounds).then_some(StopReason::MaxRounds)
    }
}

/// Mean log-loss and gradient of `F` on examples held in one place (for FedAvg's local
/// steps): `(F(w), ∇F(w))` with the same `λ` and intercept rule.
pub(crate) fn objective_and_gradient(
    weights: &[f64],
    examples: &Examples,
    rows: Option<&[usize]>,
    lambda: f64,
) -> Result<(f64, Array1<f64>), LogisticError> {
    let all: Vec<usize>;
    let rows = match rows {
        Some(r) => r,
        None => {
            all = (0..examples.len()).collect();
            &all
        }
    };
    let p = examples.dim() + 1;
    let mut g = Array1::<f64>::zeros(p);
    let mut loss = 0.0;
    let w = ArrayView1::from(&weights[1..]);
    for &i in rows {
        let z = examples.z.row(i);
        let eta = weights[0] + z.dot(&w);
        let r = sigmoid(eta) - examples.y[i];
        loss += log_loss_term(eta, examples.y[i]);
        g[0] += r;
        for (j, v) in z.iter().enumerate() {
            g[j + 1] += r * v;
        }
    }
    let m = rows.len().max(1) as f64;
    g /= m;
    let mut reg = 0.0;
    for j in 1..p {
        g[j] += lambda * weights[j];
        reg += weights[j] * weights[j];
    }
    Ok((loss / m + 0.5 * lambda * reg, g))
}

/// The worst-case error of one decoded Newton entry summed over `nodes` nodes.
pub fn newton_decode_error(nodes: u64) -> f64 {
    fixed::MODEL.max_decode_error(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::wrapping_sum;
    use ndarray::{Axis, array};

    fn toy() -> Examples {
        let z = array![[0.5, -1.0], [1.5, 0.2], [-0.3, 0.8], [2.0, -0.5], [-1.2, -1.1], [0.1, 0.4], [0.9, 1.9]];
        Examples { z, y: array![1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0] }
    }

    /// The summed contributions of two halves equal the whole's, and the decoded
    /// gradient and Hessian equal the direct formulas.
    #[test]
    fn contributions_add_up() {
        let ex = toy();
        let w = [0.1, -0.2, 0.3];
        let part = |rows: &[usize]| Examples { z: ex.z.select(Axis(0), rows), y: ex.y.select(Axis(0), rows) };
        let (a, b) = (part(&[0, 1, 2]), part(&[3, 4, 5, 6]));
        let sum = wrapping_sum(&[newton_contribution(&w, &a).unwrap(), newton_contribution(&w, &b).unwrap()]).unwrap();
        let s = decode_newton(2, &sum).unwrap();
        assert_eq!(s.n, 7);
        let (f, g) = objective_and_gradient(&w, &ex, None, 0.0).unwrap();
        assert!((s.loss / 7.0 - f).abs() < 1e-9);
        assert!((&s.gradient / 7.0 - &g).iter().all(|e| e.abs() < 1e-9));
        let x1 = ndarray::concatenate![Axis(1), Array2::ones((7, 1)), ex.z];
        let eta = x1.dot(&Array1::from(w.to_vec()));
        let s_diag = eta.mapv(|e| sigmoid(e) * (1.0 - sigmoid(e)));
        let h = x1.t().dot(&(&x1 * &s_diag.insert_axis(Axis(1))));
        assert!((&s.hessian - &h).iter().all(|e| e.abs() < 1e-8));
    }

    #[test]
    fn newton_converges_on_a_toy_problem() {
        let ex = toy();
        let mut w = vec![0.0; 3];
        let stop = Stopping::default();
        let mut prev = None;
        for round in 1..=stop.max_rounds {
            let sums = decode_newton(2, &newton_contribution(&w, &ex).unwrap()).unwrap();
            let step = newton_step(&w, &sums, 0.1).unwrap();
            w = step.weights.clone();
            if let Some(reason) = stop.check(round, &step, prev) {
                assert_ne!(reason, StopReason::MaxRounds);
                break;
            }
            prev = Some(step.objective);
        }
        let (_, g) = objective_and_gradient(&w, &ex, None, 0.1).unwrap();
        assert!(g.iter().all(|e| e.abs() < 1e-9), "{g}");
    }

    #[test]
    fn model_predicts_and_explains() {
        let m = Logistic { weights: vec![-1.0, 2.0, -0.5, 0.0] };
        let z = array![1.0, 2.0, 3.0];
        assert!((m.predict(z.view()) - sigmoid(0.0)).abs() < 1e-15);
        assert_eq!(m.n_parameters(), 4);
        assert_eq!(m.contributions(z.view()), vec![2.0, -1.0, 0.0]);
        let names = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(top_reasons(&m, z.view(), &names, 2), vec![("a".to_string(), 2.0)]);
        assert!(sigmoid(-800.0) >= 0.0 && sigmoid(800.0) <= 1.0);
        assert!(log_loss_term(800.0, 1.0).abs() < 1e-12 && (log_loss_term(-800.0, 1.0) - 800.0).abs() < 1e-9);
    }
}
