//! Federated averaging (McMahan et al. 2017) with server optimizers (Reddi et al. 2021,
//! "Adaptive Federated Optimization", Alg. 2). Pure: no I/O.
//!
//! For models too large for Newton's `d²` Hessian words. Each round:
//!
//! 1. **On each node** ([`local_update`]): start from the global weights `w`, run
//!    `epochs` passes of gradient descent with learning rate `η` on the node's objective
//!    `F_k(w) = (1/n_k) Σ_{i∈k} ℓ_i(w) + (λ/2) Σ_{j≥1} w_j²` (as in
//!    [`crate::logistic`]), over the full batch or over mini-batches in an order shuffled
//!    by a seeded generator (the seed, the round and the epoch fix it, so a rerun is
//!    identical). The update `Δ_k = w_k − w` has each coordinate clipped to
//!    `±max_update ≤ 64`. The node sends
//!
//!    ```text
//!    [ n_k | n_k·Δ_k,0 … n_k·Δ_k,d ]        d + 2 words
//!    ```
//!
//!    `n_k` is a count; `n_k·Δ_k` is a sum of `n_k` terms bounded by `max_update` and uses
//!    [`crate::fixed::MODEL`] (`S = 32`).
//! 2. **On the coordinator**: the size-weighted average `Δ = Σ_k n_k Δ_k / Σ_k n_k` from
//!    the sum over nodes, then a [`ServerOptimizer`]: plain averaging `w ← w + η_s Δ`,
//!    server momentum `v ← βv + Δ, w ← w + η_s v` (Hsu et al. 2019), or FedAdam
//!    `m ← β₁m + (1−β₁)Δ, v ← β₂v + (1−β₂)Δ², w ← w + η_s m / (√v + τ)`.
//!
//! **Equality with centralized gradient descent.** With one full-batch local step and
//! plain averaging at `η_s = 1`, `Σ_k n_k Δ_k / N = −η Σ_k (g_k + n_k λPw) / N = −η ∇F(w)`:
//! exactly one step of gradient descent on the pooled objective, for any split. The
//! only difference is rounding: each node's word is off by at most `2^−33`, so the
//! averaged update is off by at most `K·2^−33/N` per coordinate for `K` nodes and `N`
//! examples (`√(d+1)` times that in the Euclidean norm). A gradient step with `η ≤ 2/L`
//! (`L ≤ λ + λ_max(XᵀX)/(4N)` the smoothness constant, `X` with its intercept column)
//! is non-expansive on this convex objective (its Jacobian `I − η∇²F` has norm ≤ 1), so
//! earlier errors do not grow: after `T` rounds
//! `‖w_fed − w_central‖_∞ ≤ √(d+1) · T · K · 2^−33 / N` (`model/tests/fedavg.rs` checks
//! it and 10^−6, far above it).

use ndarray::Array1;
use serde::{Deserialize, Serialize};

use crate::fixed::{COUNT, FixedError, MODEL, Sections};
use crate::logistic::{Examples, LogisticError, objective_and_gradient};

/// What can go wrong in FedAvg.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FedAvgError {
    #[error(transparent)]
    Fixed(#[from] FixedError),
    #[error(transparent)]
    Logistic(#[from] LogisticError),
    #[error("fedavg: max_update {0} must be in (0, 64]")]
    MaxUpdate(f64),
    #[error("fedavg: mini-batch size 0")]
    BatchSize,
    #[error("fedavg: {got} weights, expected {expected}")]
    Shape { got: usize, expected: usize },
    #[error("fedavg: no examples over all nodes")]
    NoExamples,
}

/// How a node walks its examples in one epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Batching {
    /// One gradient step per epoch over all local examples.
    Full,
    /// Steps over consecutive batches of `size` in an order shuffled from `seed`.
    MiniBatch { size: usize, seed: u64 },
}

/// A node's local training settings (sent with the round's query).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalTraining {
    pub learning_rate: f64,
    pub epochs: u32,
    pub batching: Batching,
    pub lambda: f64,
    /// Each coordinate of the update is clipped to `±max_update` (at most 64).
    pub max_update: f64,
}

/// The number of words of an update for `d` features.
pub fn update_len(d: usize) -> usize {
    d + 2
}

/// A node's update from the global `weights` in round `round`, encoded.
pub fn local_update(
    weights: &[f64],
    examples: &Examples,
    cfg: &LocalTraining,
    round: u64,
) -> Result<Vec<u64>, FedAvgError> {
    let p = examples.dim() + 1;
    if weights.len() != p {
        return Err(FedAvgError::Shape { got: weights.len(), expected: p });
    }
    if !(cfg.max_update > 0.0 && cfg.max_update <= MODEL.bound()) {
        return Err(FedAvgError::MaxUpdate(cfg.max_update));
    }
    let n = examples.len();
    let mut w = weights.to_vec();
    if n > 0 {
        for epoch in 0..cfg.epochs {
            match cfg.batching {
                Batching::Full => step(&mut w, examples, None, cfg)?,
                Batching::MiniBatch { size, seed } => {
                    if size == 0 {
                        return Err(FedAvgError::BatchSize);
                    }
                    let order = shuffled(n, seed, round, epoch);
                    for batch in order.chunks(size) {
                        step(&mut w, examples, Some(batch), cfg)?;
                    }
                }
            }
        }
    }
    let terms = n as u64;
    let mut words = Vec::with_capacity(update_len(p - 1));
    words.push(COUNT.encode(n as f64, terms)?);
    for (new, old) in w.iter().zip(weights) {
        let delta = (new - old).clamp(-cfg.max_update, cfg.max_update);
        words.push(MODEL.encode(n as f64 * delta, terms)?);
    }
    Ok(words)
}

fn step(w: &mut [f64], examples: &Examples, rows: Option<&[usize]>, cfg: &LocalTraining) -> Result<(), FedAvgError> {
    let (_, g) = objective_and_gradient(w, examples, rows, cfg.lambda)?;
    for (wj, gj) in w.iter_mut().zip(&g) {
        *wj -= cfg.learning_rate * gj;
    }
    Ok(())
}

/// `0 … n−1` in the order of a Fisher–Yates shuffle driven by SplitMix64 (Steele et al.
/// 2014) seeded with `seed`, `round` and `epoch`. Not cryptographic: it only orders
/// mini-batches.
fn shuffled(n: usize, seed: u64, round: u64, epoch: u32) -> Vec<usize> {
    let mut state =
        seed ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(epoch).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        // The modulo's bias (< n/2^64) is irrelevant for an ordering.
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// The update sums over all nodes, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateSums {
    pub n: u64,
    /// `Σ_k n_k Δ_k`.
    pub weighted_delta: Array1<f64>,
}

impl UpdateSums {
    /// The size-weighted average update `Σ_k n_k Δ_k / Σ_k n_k`.
    pub fn average(&self) -> Result<Array1<f64>, FedAvgError> {
        if self.n == 0 {
            return Err(FedAvgError::NoExamples);
        }
        Ok(&self.weighted_delta / self.n as f64)
    }
}

/// Decodes the summed update vector for `d` features.
pub fn decode_update(d: usize, words: &[u64]) -> Result<UpdateSums, FedAvgError> {
    let mut s = Sections::new("fedavg update", words, update_len(d))?;
    let n = s.counts(1)[0];
    Ok(UpdateSums { n, weighted_delta: Array1::from(s.decode(MODEL, d + 1)) })
}

/// How the coordinator turns the average update into new weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerOptimizer {
    /// `w ← w + lr·Δ` (FedAvg itself at `lr = 1`).
    Average { lr: f64 },
    /// `v ← βv + Δ, w ← w + lr·v`.
    Momentum { lr: f64, beta: f64 },
    /// FedAdam: `m ← β₁m + (1−β₁)Δ, v ← β₂v + (1−β₂)Δ², w ← w + lr·m/(√v + τ)`.
    Adam { lr: f64, beta1: f64, beta2: f64, tau: f64 },
}

/// The coordinator's optimizer with its state across rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    optimizer: ServerOptimizer,
    m: Array1<f64>,
    v: Array1<f64>,
}

impl Server {
    /// A fresh optimizer for `p` parameters.
    pub fn new(optimizer: ServerOptimizer, p: usize) -> Self {
        Self { optimizer, m: Array1::zeros(p), v: Array1::zeros(p) }
    }

    /// The new global weights from the current ones and the round's summed updates.
    pub fn apply(&mut self, weights: &[f64], sums: &UpdateSums) -> Result<Vec<f64>, FedAvgError> {
        if weights.len() != self.m.len() || sums.weighted_delta.len() != self.m.len() {
            return Err(FedAvgError::Shape { got: weights.len(), expected: self.m.len() });
        }
        let delta = sums.average()?;
        let w = Array1::from(weights.to_vec());
        let new = match self.optimizer {
            ServerOptimizer::Average { lr } => w + lr * &delta,
            ServerOptimizer::Momentum { lr, beta } => {
                self.v = beta * &self.v + &delta;
                w + lr * &self.v
            }
            ServerOptimizer::Adam { lr, beta1, beta2, tau } => {
                self.m = beta1 * &self.m + (1.0 - beta1) * &delta;
                self.v = beta2 * &self.v + (1.0 - beta2) * &delta.mapv(|x| x * x);
                let step = &self.m / &self.v.mapv(|x| x.sqrt() + tau);
                w + lr * &step
            }
        };
        Ok(new.to_vec())
    }
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

    #[test]
    fn shuffles_are_permutations_and_seeded() {
        let a = shuffled(100, 7, 3, 1);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, shuffled(100, 7, 3, 1));
        assert_ne!(a, shuffled(100, 7, 3, 2));
        assert_ne!(a, shuffled(100, 8, 3, 1));
    }

    /// Every optimizer lowers the pooled objective over a few rounds of mini-batch
    /// FedAvg with several local epochs.
    #[test]
    fn every_server_optimizer_descends() {
        let ex = toy();
        let part = |rows: &[usize]| Examples { z: ex.z.select(Axis(0), rows), y: ex.y.select(Axis(0), rows) };
        let nodes = [part(&[0, 1, 2]), part(&[3, 4]), part(&[5, 6]), part(&[])];
        let cfg = LocalTraining {
            learning_rate: 0.3,
            epochs: 3,
            batching: Batching::MiniBatch { size: 2, seed: 11 },
            lambda: 0.01,
            max_update: 4.0,
        };
        for opt in [
            ServerOptimizer::Average { lr: 1.0 },
            ServerOptimizer::Momentum { lr: 0.5, beta: 0.9 },
            ServerOptimizer::Adam { lr: 0.1, beta1: 0.9, beta2: 0.99, tau: 1e-3 },
        ] {
            let mut server = Server::new(opt, 3);
            let mut w = vec![0.0; 3];
            let start = objective_and_gradient(&w, &ex, None, 0.01).unwrap().0;
            for round in 0..10 {
                let words: Vec<Vec<u64>> = nodes.iter().map(|n| local_update(&w, n, &cfg, round).unwrap()).collect();
                let sums = decode_update(2, &wrapping_sum(&words).unwrap()).unwrap();
                assert_eq!(sums.n, 7);
                w = server.apply(&w, &sums).unwrap();
            }
            let end = objective_and_gradient(&w, &ex, None, 0.01).unwrap().0;
            assert!(end < start - 0.05, "{opt:?}: {start} → {end}");
        }
    }

    #[test]
    fn refuses_bad_settings() {
        let ex = toy();
        let mut cfg =
            LocalTraining { learning_rate: 0.1, epochs: 1, batching: Batching::Full, lambda: 0.0, max_update: 65.0 };
        assert!(local_update(&[0.0; 3], &ex, &cfg, 0).is_err());
        cfg.max_update = 1.0;
        assert!(local_update(&[0.0; 2], &ex, &cfg, 0).is_err());
        cfg.batching = Batching::MiniBatch { size: 0, seed: 0 };
        assert!(local_update(&[0.0; 3], &ex, &cfg, 0).is_err());
        assert!(decode_update(2, &[0; 4]).unwrap().average().is_err());
    }
}
