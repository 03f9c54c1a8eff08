//! Federated Newton training of [`Logistic`] regression. Pure: no I/O.
//!
//! **A node's Newton sums** at the current global `w`, over its own examples
//! ([`newton_contribution`]), as one word vector with `p = d + 1`:
//!
//! ```text
//! [ n | Σℓ_i | g_0 … g_d | H_00 H_01 … H_0d H_11 … H_dd ]     2 + p + p(p+1)/2 words
//!   g = Σ_i (p_i − y_i) x_i,   H = Σ_i p_i (1 − p_i) x_i x_iᵀ   (upper triangle, row by row)
//! ```
//!
//! `n` is a count; the rest use [`MODEL`] (`S = 32`, terms bounded by 64: with
//! `|z_j| ≤ 16` a gradient term is at most 16 and a Hessian term at most 64; a loss term
//! is clipped to 64, which only the stopping rule reads). The sum over `K` nodes decodes
//! to the pooled sums within `K · 2^−33` per entry ([`newton_decode_error`]).
//!
//! **The coordinator's step** ([`newton_step`]) from the sums over all nodes, with
//! `P = diag(0, 1, …, 1)` (the intercept is not penalised) and the objective `F` of
//! [`super`]:
//!
//! ```text
//! ∇F = g/n + λPw,   ∇²F = H/n + λP,   solve ∇²F Δ = ∇F,   w ← w − Δ
//! ```
//!
//! by Cholesky ([`crate::linalg`]). [`Stopping`] ends training when `‖∇F‖_∞` or the
//! relative change of `F` falls below its tolerance, or after `max_rounds`.
//! [`NewtonTraining`] is the whole loop as the coordinator runs it: one value per
//! state, consumed by each round's summed words.

use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use super::{Examples, Logistic, LogisticError, log_loss_term, sigmoid};
use crate::fixed::{self, COUNT, MODEL, Sections};
use crate::linalg::cholesky_solve;

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

/// The worst-case error of one decoded Newton entry summed over `nodes` nodes:
/// `nodes · 2^−33`.
pub fn newton_decode_error(nodes: u64) -> f64 {
    fixed::MODEL.max_decode_error(nodes)
}

/// One round's figures, for the analyst's per-round metrics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RoundReport {
    /// 1 for the first round.
    pub round: u32,
    /// Examples over all nodes.
    pub examples: u64,
    /// `F` at the round's weights.
    pub objective: f64,
    /// `‖∇F‖_∞` at the round's weights.
    pub gradient_norm: f64,
}

/// Federated Newton training in progress: the weights the next round's query carries.
#[derive(Debug, Clone, PartialEq)]
pub struct NewtonTraining {
    d: usize,
    lambda: f64,
    stopping: Stopping,
    weights: Vec<f64>,
    history: Vec<RoundReport>,
}

/// What a round's sum leads to.
#[derive(Debug, Clone, PartialEq)]
pub enum NewtonNext {
    /// Another round, from the new weights.
    Round(NewtonTraining),
    /// Training is over.
    Done(Trained),
}

/// A trained model with how it got there.
#[derive(Debug, Clone, PartialEq)]
pub struct Trained {
    pub model: Logistic,
    pub reason: StopReason,
    pub history: Vec<RoundReport>,
}

impl NewtonTraining {
    /// Training for `d` features from all-zero weights.
    pub fn new(d: usize, lambda: f64, stopping: Stopping) -> Self {
        Self { d, lambda, stopping, weights: vec![0.0; d + 1], history: vec![] }
    }

    /// The weights every node computes its sums at in the next round.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// The rounds so far, oldest first.
    pub fn history(&self) -> &[RoundReport] {
        &self.history
    }

    /// The number of words the next round's sum must have.
    pub fn sum_len(&self) -> usize {
        newton_len(self.d)
    }

    /// Consumes the round's summed words: one Newton step, then another round or the end.
    pub fn consume(self, summed: &[u64]) -> Result<NewtonNext, LogisticError> {
        let sums = decode_newton(self.d, summed)?;
        self.consume_sums(sums)
    }

    /// [`NewtonTraining::consume`] from sums already decoded (issue 11 under
    /// differential privacy: [`crate::terms::newton_from_sum`], its Hessian made positive
    /// definite by [`crate::terms::positive_definite`]).
    pub fn consume_sums(mut self, sums: NewtonSums) -> Result<NewtonNext, LogisticError> {
        let step = newton_step(&self.weights, &sums, self.lambda)?;
        let previous = self.history.last().map(|r| r.objective);
        let round = self.history.len() as u32 + 1;
        self.history.push(RoundReport {
            round,
            examples: sums.n,
            objective: step.objective,
            gradient_norm: step.gradient_norm,
        });
        self.weights = step.weights.clone();
        Ok(match self.stopping.check(round, &step, previous) {
            Some(reason) => {
                NewtonNext::Done(Trained { model: Logistic { weights: self.weights }, reason, history: self.history })
            }
            None => NewtonNext::Round(self),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::wrapping_sum;
    use crate::logistic::objective_and_gradient;
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
        let mut training = NewtonTraining::new(2, 0.1, Stopping::default());
        let trained = loop {
            let sum = newton_contribution(training.weights(), &ex).unwrap();
            assert_eq!(sum.len(), training.sum_len());
            match training.consume(&sum).unwrap() {
                NewtonNext::Round(next) => training = next,
                NewtonNext::Done(trained) => break trained,
            }
        };
        assert_ne!(trained.reason, StopReason::MaxRounds);
        assert!(trained.history.len() <= 8, "{:?}", trained.history);
        let w = trained.model.weights;
        let (_, g) = objective_and_gradient(&w, &ex, None, 0.1).unwrap();
        assert!(g.iter().all(|e| e.abs() < 1e-9), "{g}");
    }
}
