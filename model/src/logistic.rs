//! L2-regularised logistic regression: the churn model a node applies, and its
//! objective. Pure: no I/O. Federated training by Newton's method is in [`newton`]
//! (re-exported here); by FedAvg in [`crate::fedavg`].
//!
//! **Model.** For standardised features `z ∈ R^d` and weights `w = (w_0, w_1 … w_d)`
//! (`w_0` the intercept), `p(z) = σ(w_0 + Σ_j w_j z_j)` is the probability of churn;
//! feature `j` adds `w_j z_j` to the log-odds ([`Model::contributions`], the "top
//! reasons" of a ranked win-back list).
//!
//! **Objective** (mean over the `n` examples of all nodes, intercept not penalised):
//!
//! ```text
//! F(w) = (1/n) Σ_i ℓ_i(w) + (λ/2) Σ_{j≥1} w_j²,   ℓ_i = log(1 + e^η_i) − y_i η_i,  η_i = x_iᵀw,  x_i = (1, z_i)
//! ```

pub mod newton;

pub use newton::{
    NewtonNext, NewtonStep, NewtonSums, NewtonTraining, RoundReport, StopReason, Stopping, Trained, decode_newton,
    newton_contribution, newton_decode_error, newton_len, newton_step,
};

use ndarray::{Array1, Array2, ArrayView1};
use serde::{Deserialize, Serialize};

use crate::features::Example;
use crate::fixed::FixedError;
use crate::linalg::LinalgError;
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

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

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
