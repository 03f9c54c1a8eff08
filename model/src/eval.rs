//! Federated evaluation on held-out customers, from sums only. Pure: no I/O.
//!
//! Each node scores its own test customers locally (`p_i`, the predicted probability
//! of churn; `y_i = 1` when churned) and sends one word vector ([`eval_contribution`]):
//!
//! ```text
//! [ n | Σ logloss_i | #correct | pos_0 … pos_{B−1} | neg_0 … neg_{B−1}
//!     | count_0 … count_9 | Σp_0 … Σp_9 | churned_0 … churned_9
//!     | seg_count_0 … seg_count_{S−1} | seg_Σp_0 … | seg_churned_0 … ]
//! ```
//!
//! - `logloss_i = −[y_i ln p_i + (1 − y_i) ln(1 − p_i)]` with `p_i` clipped to
//!   `[10^−15, 1 − 10^−15]` (so a term is at most 34.6 < 64, the bound of
//!   [`crate::fixed::MODEL`]); `Σ logloss` and the `Σp` words use that encoding, every
//!   other word is a count (exact).
//! - A prediction is correct when `(p_i ≥ 0.5) = y_i`.
//! - **Score histograms**: `B` bins of equal width on `[0, 1]`; score `p` falls in bin
//!   `min(⌊p·B⌋, B − 1)`; `pos_b` counts churned customers in bin `b`, `neg_b` the others.
//! - **Calibration**: ten bins of predicted probability `[k/10, (k+1)/10)` (the last
//!   closed), each with its count, sum of predictions and number churned.
//! - **Segments**: the same per RFM segment id `0 … S−1` (the node's own RFM segments
//!   under the global cut points).
//!
//! **ROC AUC from the histograms** ([`auc_from_histograms`]). With `P = Σ pos_b`,
//! `N = Σ neg_b`, the exact AUC (Mann–Whitney, ties counted ½) is
//! `(1/PN) Σ_{i pos, j neg} [1(p_i > p_j) + ½·1(p_i = p_j)]`. Bins are ordered intervals,
//! so a pair in bins `b_i > b_j` has `p_i > p_j` (counts 1) and a pair in `b_i < b_j`
//! counts 0, exactly. Only pairs in the *same* bin are unknown; the trapezoid rule over
//! the binned ROC curve counts each of them ½:
//!
//! ```text
//! AUC_bins = (1/PN) Σ_b pos_b · (Σ_{c<b} neg_c + ½ neg_b)
//! ```
//!
//! Each same-bin pair's true value is in `[0, 1]`, so it is off by at most ½, and
//!
//! ```text
//! |AUC_bins − AUC| ≤ Σ_b pos_b · neg_b / (2 P N)
//! ```
//!
//! — computable from the released histograms themselves ([`Auc::bin_error_bound`]).

use serde::{Deserialize, Serialize};

use crate::fixed::{COUNT, FixedError, MODEL, Sections};

/// What can go wrong in evaluation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Fixed(#[from] FixedError),
    #[error("evaluation: {scores} scores, {labels} labels, {segments} segment ids")]
    Lengths { scores: usize, labels: usize, segments: usize },
    #[error("evaluation: score {index} is {score}, not a probability")]
    Score { index: usize, score: f64 },
    #[error("evaluation: segment id {id} is not below the {segments} segments")]
    Segment { id: usize, segments: usize },
    #[error("evaluation: {bins} score bins (need at least 1)")]
    Bins { bins: usize },
}

/// The number of calibration bins (deciles of predicted probability).
pub const CALIBRATION_BINS: usize = 10;

/// Predictions at or above this count as "will churn" for accuracy.
pub const THRESHOLD: f64 = 0.5;

/// The shape of an evaluation vector: score bins `B` and RFM segments `S` (0 for none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalLayout {
    pub bins: usize,
    pub segments: usize,
}

impl EvalLayout {
    /// The number of words.
    pub fn len(&self) -> usize {
        3 + 2 * self.bins + 3 * CALIBRATION_BINS + 3 * self.segments
    }

    /// Never: there are always the three leading words.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn check(&self) -> Result<(), EvalError> {
        if self.bins == 0 {
            return Err(EvalError::Bins { bins: 0 });
        }
        Ok(())
    }
}

/// The bin of score `p` among `bins` equal bins of `[0, 1]`.
pub fn bin_of(p: f64, bins: usize) -> usize {
    ((p * bins as f64).floor() as usize).min(bins - 1)
}

/// A node's evaluation vector over its test customers' scores and labels (and their
/// RFM segment ids when `layout.segments > 0`).
pub fn eval_contribution(
    layout: EvalLayout,
    scores: &[f64],
    churned: &[bool],
    segments: &[usize],
) -> Result<Vec<u64>, EvalError> {
    layout.check()?;
    let n = scores.len();
    if churned.len() != n || (layout.segments > 0 && segments.len() != n) {
        return Err(EvalError::Lengths { scores: n, labels: churned.len(), segments: segments.len() });
    }
    let (b, s) = (layout.bins, layout.segments);
    let mut loss = 0.0;
    let mut correct = 0u64;
    let mut pos = vec![0u64; b];
    let mut neg = vec![0u64; b];
    let mut cal_n = [0u64; CALIBRATION_BINS];
    let mut cal_p = [0f64; CALIBRATION_BINS];
    let mut cal_y = [0u64; CALIBRATION_BINS];
    let mut seg_n = vec![0u64; s];
    let mut seg_p = vec![0f64; s];
    let mut seg_y = vec![0u64; s];
    for (i, (&p, &y)) in scores.iter().zip(churned).enumerate() {
        if !(0.0..=1.0).contains(&p) {
            return Err(EvalError::Score { index: i, score: p });
        }
        let q = p.clamp(1e-15, 1.0 - 1e-15);
        loss -= if y { q.ln() } else { (1.0 - q).ln() };
        correct += u64::from((p >= THRESHOLD) == y);
        if y {
            pos[bin_of(p, b)] += 1;
        } else {
            neg[bin_of(p, b)] += 1;
        }
        let c = bin_of(p, CALIBRATION_BINS);
        cal_n[c] += 1;
        cal_p[c] += p;
        cal_y[c] += u64::from(y);
        if s > 0 {
            let id = segments[i];
            if id >= s {
                return Err(EvalError::Segment { id, segments: s });
            }
            seg_n[id] += 1;
            seg_p[id] += p;
            seg_y[id] += u64::from(y);
        }
    }
    let terms = n as u64;
    let count = |c: u64| COUNT.encode(c as f64, c);
    let mut w = Vec::with_capacity(layout.len());
    w.push(count(terms)?);
    w.push(MODEL.encode(loss, terms)?);
    w.push(count(correct)?);
    for c in pos.iter().chain(&neg).chain(&cal_n) {
        w.push(count(*c)?);
    }
    for (sum, c) in cal_p.iter().zip(&cal_n) {
        w.push(MODEL.encode(*sum, *c)?);
    }
    for c in cal_y.iter().chain(&seg_n) {
        w.push(count(*c)?);
    }
    for (sum, c) in seg_p.iter().zip(&seg_n) {
        w.push(MODEL.encode(*sum, *c)?);
    }
    for c in &seg_y {
        w.push(count(*c)?);
    }
    Ok(w)
}

/// One row of the calibration table or of the churn-by-segment table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateRow {
    /// Customers in the row.
    pub count: u64,
    /// Of them, churned.
    pub churned: u64,
    /// Mean predicted probability (`None` for an empty row).
    pub mean_predicted: Option<f64>,
    /// Observed churn rate (`None` for an empty row).
    pub observed_rate: Option<f64>,
    /// Withheld by the release rules (fewer customers than the smallest cohort shown):
    /// every figure of the row is then 0 or `None`.
    #[serde(default)]
    pub withheld: bool,
}

impl RateRow {
    pub(crate) fn new(count: u64, sum_predicted: f64, churned: u64) -> Self {
        let of = |x: f64| (count > 0).then(|| x / count as f64);
        Self { count, churned, mean_predicted: of(sum_predicted), observed_rate: of(churned as f64), withheld: false }
    }

    /// The row as released: withheld when it counts between 1 and `min_cohort − 1`
    /// customers.
    pub fn released(self, min_cohort: u64) -> Self {
        if self.count > 0 && self.count < min_cohort {
            Self { count: 0, churned: 0, mean_predicted: None, observed_rate: None, withheld: true }
        } else {
            self
        }
    }
}

/// ROC AUC from score histograms with its binning error bound.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Auc {
    /// The trapezoid-rule AUC over the bins.
    pub auc: f64,
    /// `Σ_b pos_b · neg_b / (2PN)`: the exact AUC is within this of `auc`.
    pub bin_error_bound: f64,
}

/// The AUC of the binned scores (module docs), or `None` without both classes.
pub fn auc_from_histograms(pos: &[u64], neg: &[u64]) -> Option<Auc> {
    let p: f64 = pos.iter().map(|c| *c as f64).sum();
    let n: f64 = neg.iter().map(|c| *c as f64).sum();
    if p == 0.0 || n == 0.0 || pos.len() != neg.len() {
        return None;
    }
    let mut below = 0.0;
    let mut pairs = 0.0;
    let mut same = 0.0;
    for (pb, nb) in pos.iter().zip(neg) {
        let (pb, nb) = (*pb as f64, *nb as f64);
        pairs += pb * (below + 0.5 * nb);
        same += pb * nb;
        below += nb;
    }
    Some(Auc { auc: pairs / (p * n), bin_error_bound: same / (2.0 * p * n) })
}

/// The evaluation sums over all nodes, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSums {
    pub n: u64,
    pub log_loss_sum: f64,
    pub correct: u64,
    pub pos: Vec<u64>,
    pub neg: Vec<u64>,
    /// Ten rows, predicted probability `[k/10, (k+1)/10)`.
    pub calibration: Vec<RateRow>,
    /// One row per RFM segment id.
    pub segments: Vec<RateRow>,
}

/// Decodes the summed evaluation vector.
pub fn decode_eval(layout: EvalLayout, words: &[u64]) -> Result<EvalSums, EvalError> {
    layout.check()?;
    let mut s = Sections::new("evaluation sums", words, layout.len())?;
    let n = s.counts(1)[0];
    let log_loss_sum = s.decode(MODEL, 1)[0];
    let correct = s.counts(1)[0];
    let pos = s.counts(layout.bins);
    let neg = s.counts(layout.bins);
    let rows = |s: &mut Sections<'_>, k: usize| {
        let count = s.counts(k);
        let sum = s.decode(MODEL, k);
        let churned = s.counts(k);
        (0..k).map(|i| RateRow::new(count[i], sum[i], churned[i])).collect::<Vec<_>>()
    };
    let calibration = rows(&mut s, CALIBRATION_BINS);
    let segments = rows(&mut s, layout.segments);
    Ok(EvalSums { n, log_loss_sum, correct, pos, neg, calibration, segments })
}

impl EvalSums {
    /// Mean log-loss over all test customers.
    pub fn log_loss(&self) -> Option<f64> {
        (self.n > 0).then(|| self.log_loss_sum / self.n as f64)
    }

    /// Share of correct predictions at threshold 0.5.
    pub fn accuracy(&self) -> Option<f64> {
        (self.n > 0).then(|| self.correct as f64 / self.n as f64)
    }

    /// ROC AUC from the summed histograms.
    pub fn auc(&self) -> Option<Auc> {
        auc_from_histograms(&self.pos, &self.neg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_rate_rows_are_withheld_when_released() {
        let small = RateRow::new(3, 1.5, 2).released(10);
        assert!(small.withheld && small.count == 0 && small.mean_predicted.is_none() && small.observed_rate.is_none());
        let empty = RateRow::new(0, 0.0, 0).released(10);
        assert!(!empty.withheld);
        let shown = RateRow::new(10, 4.0, 5).released(10);
        assert_eq!((shown.count, shown.observed_rate, shown.withheld), (10, Some(0.5), false));
    }
    use crate::fixed::wrapping_sum;

    /// Exact AUC by Mann–Whitney: sort, rank with ties averaged.
    fn exact_auc(scores: &[f64], churned: &[bool]) -> f64 {
        let mut v: Vec<(f64, bool)> = scores.iter().copied().zip(churned.iter().copied()).collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut rank_sum = 0.0;
        let mut i = 0;
        while i < v.len() {
            let mut j = i;
            while j < v.len() && v[j].0.total_cmp(&v[i].0).is_eq() {
                j += 1;
            }
            let rank = (i + j + 1) as f64 / 2.0; // ranks i+1 … j, averaged
            rank_sum += rank * v[i..j].iter().filter(|x| x.1).count() as f64;
            i = j;
        }
        let p = churned.iter().filter(|c| **c).count() as f64;
        let n = churned.len() as f64 - p;
        (rank_sum - p * (p + 1.0) / 2.0) / (p * n)
    }

    fn data(n: usize) -> (Vec<f64>, Vec<bool>) {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let y = next() < 0.3;
                let s = if y { next().powf(0.6) } else { next().powf(1.4) };
                (s, y)
            })
            .unzip()
    }

    /// The histogram AUC is within its stated bound of the exact one, for coarse and
    /// fine bins; ties at bin edges and scores of exactly 0 and 1 included.
    #[test]
    fn histogram_auc_within_the_stated_bound() {
        let (mut scores, mut churned) = data(3000);
        scores.extend([0.0, 1.0, 0.5, 0.5, 0.25]);
        churned.extend([true, false, true, false, true]);
        let exact = exact_auc(&scores, &churned);
        for bins in [1, 2, 10, 100, 1000] {
            let layout = EvalLayout { bins, segments: 0 };
            let words = eval_contribution(layout, &scores, &churned, &[]).unwrap();
            let auc = decode_eval(layout, &words).unwrap().auc().unwrap();
            assert!(
                (auc.auc - exact).abs() <= auc.bin_error_bound + 1e-12,
                "{bins} bins: {} vs exact {exact}, bound {}",
                auc.auc,
                auc.bin_error_bound
            );
            if bins == 1 {
                assert!((auc.auc - 0.5).abs() < 1e-12);
            }
        }
    }

    /// Two nodes' vectors summed give the pooled metrics and tables.
    #[test]
    fn sums_over_nodes_equal_the_pooled_metrics() {
        let (scores, churned) = data(1000);
        let segments: Vec<usize> = (0..1000).map(|i| i % 4).collect();
        let layout = EvalLayout { bins: 1000, segments: 4 };
        let all = decode_eval(layout, &eval_contribution(layout, &scores, &churned, &segments).unwrap()).unwrap();
        let parts = [0..300, 300..1000];
        let words: Vec<Vec<u64>> = parts
            .iter()
            .map(|r| eval_contribution(layout, &scores[r.clone()], &churned[r.clone()], &segments[r.clone()]).unwrap())
            .collect();
        let sum = decode_eval(layout, &wrapping_sum(&words).unwrap()).unwrap();
        assert_eq!(sum.pos, all.pos);
        assert_eq!(sum.correct, all.correct);
        assert!((sum.log_loss().unwrap() - all.log_loss().unwrap()).abs() < 1e-9);
        let pooled_loss: f64 = scores
            .iter()
            .zip(&churned)
            .map(|(p, y)| {
                let q = p.clamp(1e-15, 1.0 - 1e-15);
                -(if *y { q.ln() } else { (1.0 - q).ln() })
            })
            .sum::<f64>()
            / 1000.0;
        assert!((sum.log_loss().unwrap() - pooled_loss).abs() < 1e-9);
        let acc = scores.iter().zip(&churned).filter(|(p, y)| (**p >= 0.5) == **y).count() as f64 / 1000.0;
        assert!((sum.accuracy().unwrap() - acc).abs() < 1e-15);
        assert_eq!(sum.calibration.iter().map(|r| r.count).sum::<u64>(), 1000);
        for (k, row) in sum.calibration.iter().enumerate() {
            let in_bin: Vec<usize> = (0..1000).filter(|i| bin_of(scores[*i], 10) == k).collect();
            assert_eq!(row.count, in_bin.len() as u64);
            if let Some(m) = row.mean_predicted {
                let mean = in_bin.iter().map(|i| scores[*i]).sum::<f64>() / in_bin.len() as f64;
                assert!((m - mean).abs() < 1e-9 && (k as f64 / 10.0..=(k + 1) as f64 / 10.0).contains(&m));
            }
        }
        for (id, row) in sum.segments.iter().enumerate() {
            let churned_here = (0..1000).filter(|i| i % 4 == id && churned[*i]).count() as u64;
            assert_eq!((row.count, row.churned), (250, churned_here));
            assert!((row.observed_rate.unwrap() - churned_here as f64 / 250.0).abs() < 1e-15);
        }
    }

    #[test]
    fn refuses_bad_input() {
        let layout = EvalLayout { bins: 10, segments: 2 };
        assert!(eval_contribution(layout, &[0.5], &[true], &[2]).is_err());
        assert!(eval_contribution(layout, &[1.5], &[true], &[0]).is_err());
        assert!(eval_contribution(layout, &[0.5], &[], &[0]).is_err());
        assert!(decode_eval(layout, &[0; 5]).is_err());
        assert!(auc_from_histograms(&[1, 2], &[0, 0]).is_none());
    }
}
