//! Issue 11, "What it must show": FedAvg with one local full-batch step per round and
//! size-weighted averaging equals centralized full-batch gradient descent after the
//! same number of steps, to 1e-6, for any split of the examples over nodes.
//!
//! Why (`fedcrm_model::fedavg` docs): `Σ_k n_k Δ_k / N = −η ∇F(w)` exactly; the only
//! difference is each node's one rounding of its word, `≤ 2^−33`, so after `T` rounds
//! with `K` nodes and `N` examples the weights differ by at most
//! `√(d+1) · T · K · 2^−33 / N` (gradient descent with `η ≤ 2/L` is non-expansive on
//! a convex objective). The test checks both 1e-6 and that bound.

use fedcrm_model::fedavg::{self, Batching, LocalTraining, Server, ServerOptimizer};
use fedcrm_model::fixed::wrapping_sum;
use fedcrm_model::logistic::Examples;
use ndarray::{Array1, Array2, Axis};
use proptest::prelude::*;

const N: usize = 240;
const D: usize = 4;
const STEPS: u64 = 50;
const LEARNING_RATE: f64 = 0.5;
const LAMBDA: f64 = 0.01;

/// A small synthetic dataset: Gaussian features (Box–Muller over xorshift64), labels
/// drawn from a logistic model.
fn synthetic(seed: u64) -> Examples {
    let mut state = seed | 1;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut gaussian = || (-2.0 * uniform().ln()).sqrt() * (std::f64::consts::TAU * uniform()).cos();
    let z = Array2::from_shape_fn((N, D), |_| gaussian());
    let truth = [-0.4, 1.2, -0.7, 0.3, 0.0];
    let y = (0..N)
        .map(|i| {
            let eta = truth[0] + (0..D).map(|j| truth[j + 1] * z[[i, j]]).sum::<f64>();
            if uniform() < 1.0 / (1.0 + (-eta).exp()) { 1.0 } else { 0.0 }
        })
        .collect();
    Examples { z, y }
}

/// Centralized full-batch gradient descent on `(1/N) Σ ℓ_i + (λ/2) Σ_{j≥1} w_j²`,
/// written here with plain loops (not the crate's code).
fn centralized(ex: &Examples, steps: u64) -> Vec<f64> {
    let mut w = vec![0.0; D + 1];
    for _ in 0..steps {
        let mut g = [0.0; D + 1];
        for i in 0..N {
            let eta = w[0] + (0..D).map(|j| w[j + 1] * ex.z[[i, j]]).sum::<f64>();
            let r = 1.0 / (1.0 + (-eta).exp()) - ex.y[i];
            g[0] += r / N as f64;
            for j in 0..D {
                g[j + 1] += r * ex.z[[i, j]] / N as f64;
            }
        }
        for j in 0..=D {
            let reg = if j == 0 { 0.0 } else { LAMBDA * w[j] };
            w[j] -= LEARNING_RATE * (g[j] + reg);
        }
    }
    w
}

/// FedAvg over the nodes `node[i]` assigns: one local full-batch step, plain averaging.
fn federated(ex: &Examples, node: &[usize], nodes: usize, steps: u64) -> Vec<f64> {
    let parts: Vec<Examples> = (0..nodes)
        .map(|k| {
            let rows: Vec<usize> = (0..N).filter(|i| node[*i] == k).collect();
            Examples { z: ex.z.select(Axis(0), &rows), y: ex.y.select(Axis(0), &rows) }
        })
        .collect();
    let cfg = LocalTraining {
        learning_rate: LEARNING_RATE,
        epochs: 1,
        batching: Batching::Full,
        lambda: LAMBDA,
        max_update: 64.0,
    };
    let mut server = Server::new(ServerOptimizer::Average { lr: 1.0 }, D + 1);
    let mut w = vec![0.0; D + 1];
    for round in 0..steps {
        let words: Vec<Vec<u64>> = parts.iter().map(|p| fedavg::local_update(&w, p, &cfg, round).unwrap()).collect();
        let sums = fedavg::decode_update(D, &wrapping_sum(&words).unwrap()).unwrap();
        assert_eq!(sums.n as usize, N);
        w = server.apply(&w, &sums).unwrap();
    }
    w
}

/// The stated bound: `√(d+1) · T · K · 2^−33 / N`.
fn bound(nodes: usize, steps: u64) -> f64 {
    ((D + 1) as f64).sqrt() * steps as f64 * nodes as f64 * 2f64.powi(-33) / N as f64
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn check(ex: &Examples, node: &[usize], nodes: usize) -> f64 {
    let central = centralized(ex, STEPS);
    let fed = federated(ex, node, nodes, STEPS);
    let diff = max_diff(&central, &fed);
    // 1e-13 of slack for f64 summation order, which differs between the two.
    assert!(diff < 1e-6 && diff <= bound(nodes, STEPS) + 1e-13, "{nodes} nodes: max |Δw| = {diff:e}");
    diff
}

#[test]
fn one_step_fedavg_equals_gradient_descent_even_and_skewed() {
    let ex = synthetic(42);
    let even: Vec<usize> = (0..N).map(|i| i % 5).collect();
    let cuts = [24, 60, 108, 168, 240]; // 10/15/20/25/30 %
    let skewed: Vec<usize> = (0..N).map(|i| cuts.iter().position(|c| i < *c).unwrap()).collect();
    let central = centralized(&ex, STEPS);
    let moved = Array1::from(central.clone()).mapv(f64::abs).sum();
    assert!(moved > 0.5, "gradient descent went somewhere: {central:?}");
    for (name, node) in [("even", &even), ("skewed", &skewed)] {
        let diff = check(&ex, node, 5);
        println!("{name}: after {STEPS} steps max |Δw| = {diff:.3e} (stated bound {:.3e})", bound(5, STEPS));
    }
    println!("centralized weights after {STEPS} steps: {central:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any assignment of examples to up to 8 nodes (some may be empty), any data seed.
    #[test]
    fn one_step_fedavg_equals_gradient_descent_for_any_split(
        seed in any::<u64>(),
        nodes in 1usize..=8,
        raw in proptest::collection::vec(any::<usize>(), N),
    ) {
        let ex = synthetic(seed);
        let node: Vec<usize> = raw.iter().map(|r| r % nodes).collect();
        check(&ex, &node, nodes);
    }
}
