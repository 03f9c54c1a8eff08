//! Each customer's own term of a round's sum, as reals (issue 11 under differential
//! privacy): the node clips every customer's term to ℓ2 ≤ c before summing
//! (`fedcrm_dp::vector::CustomerSum`), so one customer's influence on a node's vector is
//! bounded whatever its data. The layouts are those of the exact rounds' words
//! ([`crate::standardise`], [`crate::logistic::newton`], [`crate::eval`]); the decoders
//! read the noised real sums over all nodes. Pure: no I/O.
//!
//! Each term is built so that an honest customer's never needs clipping, given the bound
//! [`moments_clip`], [`newton_clip`] or [`eval_clip`] states:
//!
//! - **Moments**: `[1 | x_j/S_j | (x_j/S_j)²]` with `x_j` clamped to `±S_j`,
//!   `S_j = 2^min(b_j, 10)` ([`MOMENT_SCALE_LOG2`]): a public scale nearer the feature's
//!   values than its clip bound 2^b (tenure in days is bounded by 2^16 but rarely above
//!   2^10), so the noise is not spread over a range no customer uses. A value beyond S_j
//!   (tenure above 1,024 days) is clamped in the moments only: the standardisation is
//!   then slightly off, never the features. Every entry is in [−1, 1], so ‖term‖₂ ≤
//!   √(1 + 2d) = [`moments_clip`].
//! - **Newton**: `[1 | min(ℓ, 8) | (p − y)·x | p(1 − p)·x xᵀ (upper)]` with x = (1, z),
//!   |z_j| ≤ 16. Typical customers have ‖x‖² ≈ 1 + d; [`newton_clip`] is
//!   2 + (d + 1)/2 (about three times a typical term's norm), so only outliers are
//!   shortened, which down-weights them (a bias the analyst accepts with DP).
//! - **Evaluation**: `[1 | min(ℓ, 16)/8 | correct | pos one-hot | neg one-hot |
//!   calibration: count one-hot, p, churned]`: norm² ≤ 1 + 4 + 1 + 1 + 1 + 1 + 1 = 10, so
//!   [`eval_clip`] = √10 never clips.

use ndarray::{Array1, Array2, ArrayView1};

use crate::eval::{CALIBRATION_BINS, EvalLayout, EvalSums, RateRow, THRESHOLD, bin_of};
use crate::features::FeatureSpec;
use crate::logistic::newton::NewtonSums;
use crate::logistic::{log_loss_term, sigmoid};
use crate::standardise::Moments;

/// The moments' public scale is 2^min(b, this).
pub const MOMENT_SCALE_LOG2: u32 = 10;

/// The loss term's cap in a Newton term (the loss only feeds the stopping rule).
pub const NEWTON_LOSS_CAP: f64 = 8.0;

/// The loss cap of an evaluation term, and its divisor (so it is at most 2).
pub const EVAL_LOSS_CAP: f64 = 16.0;
const EVAL_LOSS_DIVISOR: f64 = 8.0;

/// `S_j` for each feature of `spec`.
pub fn moment_scales(spec: &FeatureSpec) -> Vec<f64> {
    spec.features.iter().map(|f| crate::fixed::pow2(f.bound_log2.min(MOMENT_SCALE_LOG2) as i32)).collect()
}

/// The ℓ2 bound of a moments term for `d` features: √(1 + 2d).
pub fn moments_clip(d: usize) -> f64 {
    ((1 + 2 * d) as f64).sqrt()
}

/// One customer's moments term (module doc).
pub fn moment_terms(scales: &[f64], row: &[f64]) -> Vec<f64> {
    let d = scales.len();
    let mut t = vec![0.0; 1 + 2 * d];
    t[0] = 1.0;
    for (j, (x, s)) in row.iter().zip(scales).enumerate() {
        let u = (x / s).clamp(-1.0, 1.0);
        t[1 + j] = u;
        t[1 + d + j] = u * u;
    }
    t
}

/// The smallest standard deviation a noised moments round gives a feature: S_j/32.
pub const DP_SD_FLOOR: f64 = 1.0 / 32.0;

/// The moments from the noised real sum over all nodes: n rounded (at least 2), the
/// sums rescaled, the mean clamped to ±S_j and the variance to
/// (S_j·[`DP_SD_FLOOR`])² ..= S_j². The variance is a difference of two noised
/// figures, so noise can make it tiny or negative; a standard deviation far below the
/// feature's spread would standardise it into values clipped at ±16 whose Newton terms
/// are then clipped too. A floor at S_j/32 costs nothing of the model's expressiveness
/// (Newton's step is invariant to the scale of a feature, up to the tiny L2 penalty).
pub fn moments_from_sum(spec: &FeatureSpec, sum: &[f64]) -> Moments {
    let scales = moment_scales(spec);
    let d = scales.len();
    let n = sum.first().copied().unwrap_or(0.0).round().max(2.0);
    let mut m = Moments { n: n as u64, sum: vec![0.0; d], sum_sq: vec![0.0; d] };
    for (j, s) in scales.iter().enumerate() {
        let mean = (sum[1 + j] * s / n).clamp(-s, *s);
        let floor = (s * DP_SD_FLOOR).powi(2);
        let var = (sum[1 + d + j] * s * s / n - mean * mean).clamp(floor, s * s);
        m.sum[j] = mean * n;
        m.sum_sq[j] = (var + mean * mean) * n;
    }
    m
}

/// The ℓ2 bound of a Newton term for `d` features (module doc).
pub fn newton_clip(d: usize) -> f64 {
    2.0 + (d + 1) as f64 / 2.0
}

/// One customer's Newton term at `weights`, from its standardised features `z` and label.
pub fn newton_terms(weights: &[f64], z: ArrayView1<'_, f64>, y: f64) -> Vec<f64> {
    let p = z.len() + 1;
    let mut x = Vec::with_capacity(p);
    x.push(1.0);
    x.extend(z.iter().copied());
    let eta: f64 = x.iter().zip(weights).map(|(a, b)| a * b).sum();
    let prob = sigmoid(eta);
    let s = prob * (1.0 - prob);
    let mut t = Vec::with_capacity(crate::logistic::newton_len(p - 1));
    t.push(1.0);
    t.push(log_loss_term(eta, y).min(NEWTON_LOSS_CAP));
    t.extend(x.iter().map(|v| (prob - y) * v));
    for a in 0..p {
        for b in a..p {
            t.push(s * x[a] * x[b]);
        }
    }
    t
}

/// Newton sums from the noised real sum over all nodes, for `d` features: n rounded
/// (at least 1), the Hessian filled in symmetrically. The Newton step still needs a
/// positive-definite matrix: [`positive_definite`].
pub fn newton_from_sum(d: usize, sum: &[f64]) -> NewtonSums {
    let p = d + 1;
    let n = sum[0].round().max(1.0) as u64;
    let gradient = Array1::from(sum[2..2 + p].to_vec());
    let mut hessian = Array2::zeros((p, p));
    let mut k = 2 + p;
    for a in 0..p {
        for b in a..p {
            hessian[[a, b]] = sum[k];
            hessian[[b, a]] = sum[k];
            k += 1;
        }
    }
    NewtonSums { n, loss: sum[1].max(0.0), gradient, hessian }
}

/// A noised Hessian made positive definite for the Newton step: its eigenvalues are
/// raised to at least `floor` (Jacobi eigenvalue iteration on the symmetric matrix;
/// Golub & Van Loan, 4th ed., §8.5). The logistic Hessian's are ≥ 0 before noise, and
/// `floor` = n·max(λ, 10⁻³)·… is the caller's choice.
pub fn positive_definite(h: &Array2<f64>, floor: f64) -> Array2<f64> {
    let n = h.nrows();
    let mut a = h.clone();
    let mut v = Array2::<f64>::eye(n);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[[i, j]].powi(2))
            .sum();
        if off < 1e-22 * a.iter().map(|x| x * x).sum::<f64>().max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                if a[[p, q]].abs() < f64::MIN_POSITIVE {
                    continue;
                }
                // Golub & Van Loan Alg. 8.5.1 (symmetric Schur decomposition).
                let tau = (a[[q, q]] - a[[p, p]]) / (2.0 * a[[p, q]]);
                let t = tau.signum() / (tau.abs() + (1.0 + tau * tau).sqrt());
                let t = if tau == 0.0 { 1.0 } else { t };
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[[k, p]], a[[k, q]]);
                    a[[k, p]] = c * akp - s * akq;
                    a[[k, q]] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[[p, k]], a[[q, k]]);
                    a[[p, k]] = c * apk - s * aqk;
                    a[[q, k]] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[[k, p]], v[[k, q]]);
                    v[[k, p]] = c * vkp - s * vkq;
                    v[[k, q]] = s * vkp + c * vkq;
                }
            }
        }
    }
    let eig: Vec<f64> = (0..n).map(|i| a[[i, i]].max(floor)).collect();
    let mut out = Array2::zeros((n, n));
    for i in 0..n {
        for j in 0..n {
            out[[i, j]] = (0..n).map(|k| v[[i, k]] * eig[k] * v[[j, k]]).sum();
        }
    }
    out
}

/// The ℓ2 bound of an evaluation term (module doc): √10.
pub fn eval_clip() -> f64 {
    10f64.sqrt()
}

/// One held-out customer's evaluation term for score `p` and label `churned`.
pub fn eval_terms(layout: EvalLayout, p: f64, churned: bool) -> Vec<f64> {
    let b = layout.bins;
    let mut t = vec![0.0; layout.len()];
    let q = p.clamp(1e-15, 1.0 - 1e-15);
    let loss = if churned { -q.ln() } else { -(1.0 - q).ln() };
    t[0] = 1.0;
    t[1] = loss.min(EVAL_LOSS_CAP) / EVAL_LOSS_DIVISOR;
    t[2] = f64::from(u8::from((p >= THRESHOLD) == churned));
    let bin = bin_of(p.clamp(0.0, 1.0), b);
    t[3 + if churned { bin } else { b + bin }] = 1.0;
    let cal = 3 + 2 * b;
    let c = bin_of(p.clamp(0.0, 1.0), CALIBRATION_BINS);
    t[cal + c] = 1.0;
    t[cal + CALIBRATION_BINS + c] = p;
    t[cal + 2 * CALIBRATION_BINS + c] = f64::from(u8::from(churned));
    t
}

/// Evaluation sums from the noised real sum over all nodes: counts rounded and clamped
/// at 0 (a noised count can come out negative), the loss sum rescaled.
pub fn eval_from_sum(layout: EvalLayout, sum: &[f64]) -> EvalSums {
    let count = |x: f64| x.round().max(0.0) as u64;
    let b = layout.bins;
    let cal = 3 + 2 * b;
    let calibration = (0..CALIBRATION_BINS)
        .map(|c| {
            let n = count(sum[cal + c]);
            let predicted = sum[cal + CALIBRATION_BINS + c].clamp(0.0, n as f64);
            RateRow::new(n, predicted, count(sum[cal + 2 * CALIBRATION_BINS + c]).min(n))
        })
        .collect();
    let n = count(sum[0]);
    EvalSums {
        n,
        log_loss_sum: sum[1].max(0.0) * EVAL_LOSS_DIVISOR,
        correct: count(sum[2]).min(n),
        pos: sum[3..3 + b].iter().map(|x| count(*x)).collect(),
        neg: sum[3 + b..3 + 2 * b].iter().map(|x| count(*x)).collect(),
        calibration,
        segments: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{decode_eval, eval_contribution};
    use crate::fixed::wrapping_sum;
    use crate::logistic::Examples;
    use crate::logistic::newton::{decode_newton, newton_contribution};
    use ndarray::array;

    #[test]
    fn newton_terms_sum_to_the_exact_newton_sums_and_stay_within_the_clip() {
        let z = array![[0.5, -1.0], [1.5, 0.2], [-0.3, 0.8], [2.0, -0.5]];
        let y = array![1.0, 1.0, 0.0, 0.0];
        let w = [0.1, -0.2, 0.3];
        let exact = decode_newton(
            2,
            &wrapping_sum(&[newton_contribution(&w, &Examples { z: z.clone(), y: y.clone() }).unwrap()]).unwrap(),
        )
        .unwrap();
        let mut sum = vec![0.0; crate::logistic::newton_len(2)];
        for i in 0..4 {
            let t = newton_terms(&w, z.row(i), y[i]);
            assert!(t.iter().map(|v| v * v).sum::<f64>().sqrt() <= newton_clip(2));
            sum.iter_mut().zip(&t).for_each(|(s, v)| *s += v);
        }
        let got = newton_from_sum(2, &sum);
        assert_eq!(got.n, 4);
        assert!((got.loss - exact.loss).abs() < 1e-6);
        assert!((&got.gradient - &exact.gradient).iter().all(|e| e.abs() < 1e-6));
        assert!((&got.hessian - &exact.hessian).iter().all(|e| e.abs() < 1e-6));
    }

    #[test]
    fn eval_terms_sum_to_the_exact_evaluation_within_their_clip() {
        let layout = EvalLayout { bins: 5, segments: 0 };
        let scores = [0.1, 0.4, 0.55, 0.9, 0.99];
        let churned = [false, true, false, true, true];
        let exact = decode_eval(layout, &eval_contribution(layout, &scores, &churned, &[]).unwrap()).unwrap();
        let mut sum = vec![0.0; layout.len()];
        for (p, y) in scores.iter().zip(churned) {
            let t = eval_terms(layout, *p, y);
            assert!(t.iter().map(|v| v * v).sum::<f64>().sqrt() <= eval_clip() + 1e-12);
            sum.iter_mut().zip(&t).for_each(|(s, v)| *s += v);
        }
        let got = eval_from_sum(layout, &sum);
        assert_eq!((got.n, got.correct, &got.pos, &got.neg), (exact.n, exact.correct, &exact.pos, &exact.neg));
        assert!((got.log_loss_sum - exact.log_loss_sum).abs() < 1e-6);
        assert_eq!(
            got.calibration.iter().map(|r| r.count).collect::<Vec<_>>(),
            exact.calibration.iter().map(|r| r.count).collect::<Vec<_>>()
        );
        // A noised negative count is clamped at 0.
        sum[3] = -4.0;
        assert_eq!(eval_from_sum(layout, &sum).pos[0], 0);
    }

    #[test]
    fn moments_terms_give_the_moments_and_a_floor_on_the_variance() {
        let spec = FeatureSpec::reduced();
        let scales = moment_scales(&spec);
        assert_eq!(scales[4].to_bits(), 1024f64.to_bits(), "tenure days: 2^10, not its clip bound 2^16");
        let rows = [vec![1.0, 0.5, 3.0, 2.0, 100.0, 1.0], vec![2.0, 1.5, 4.0, 3.0, 300.0, 2.0]];
        let mut sum = vec![0.0; 13];
        for r in &rows {
            let t = moment_terms(&scales, r);
            assert!(t.iter().map(|v| v * v).sum::<f64>().sqrt() <= moments_clip(6) + 1e-12);
            sum.iter_mut().zip(&t).for_each(|(s, v)| *s += v);
        }
        let m = moments_from_sum(&spec, &sum);
        assert_eq!(m.n, 2);
        assert!((m.sum[4] - 400.0).abs() < 1e-9 && (m.sum_sq[4] - 100_000.0).abs() < 1e-6, "{m:?}");
        // A noised variance below zero is raised to the floor, (32/32)² for a log feature.
        sum[1 + 6] = 0.0;
        let m = moments_from_sum(&spec, &sum);
        assert!((m.sum_sq[0] / 2.0 - (m.sum[0] / 2.0).powi(2) - 1.0).abs() < 1e-9, "{m:?}");
    }

    #[test]
    fn a_noised_hessian_is_made_positive_definite_keeping_its_eigenvectors() {
        let h = array![[2.0, 1.0, 0.0], [1.0, -1.0, 0.5], [0.0, 0.5, 3.0]];
        let pd = positive_definite(&h, 0.1);
        assert!(crate::linalg::cholesky(&pd).is_ok());
        // A matrix already positive definite is unchanged.
        let ok = array![[4.0, 1.0], [1.0, 3.0]];
        let same = positive_definite(&ok, 0.1);
        assert!((&same - &ok).iter().all(|e| e.abs() < 1e-9), "{same}");
    }
}
