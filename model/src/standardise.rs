//! Global standardisation of features from securely summed moments. Pure: no I/O.
//!
//! Each node sends, for its examples, the word vector
//!
//! ```text
//! [ n | Σx_1 … Σx_d | Σx_1² … Σx_d² ]          (1 + 2d words)
//! ```
//!
//! `n` is a count (exact). Feature `j` is clipped to `|x_j| ≤ 2^b_j` by its
//! [`Feature`](crate::features::Feature), so `Σx_j` is encoded with scale
//! `2^(39 − b_j)` and bound `2^b_j`, and `Σx_j²` with scale `2^(39 − 2b_j)` and bound
//! `2^(2b_j)`: both sums decode for up to `2^24 − 1` examples over all nodes
//! ([`LOG2_MAX_EXAMPLES`]), with errors at most `K·2^−(40−b_j)` and `K·2^−(40−2b_j)` for
//! `K` nodes. (For the days-valued tenure, `b = 16`: 2^−24 and 2^−8 per node, against
//! sums of order n·10² and n·10⁴.)
//!
//! The coordinator decodes the **sum over all nodes** and computes the global
//!
//! ```text
//! mean_j = Σx_j / n,   sd_j = sqrt(max(Σx_j² / n − mean_j², 0))   (population sd)
//! ```
//!
//! — never per-node statistics, so every node standardises the same way. A feature is
//! treated as constant (its standardised value is 0) when `sd_j ≤ 10^−6 · max(1, |mean_j|)`:
//! the fixed-point error of a constant feature's variance is far below that. A
//! standardised value `z_j = (x_j − mean_j) / sd_j` is clipped to `|z_j| ≤` [`Z_CLIP`],
//! which bounds every term of the model's sums ([`crate::fixed`]).

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::features::FeatureSpec;
use crate::fixed::{COUNT, FixedError, FixedPoint, Sections};

/// Moments decode for up to `2^24 − 1` examples summed over all nodes (16.7 million).
pub const LOG2_MAX_EXAMPLES: u32 = 24;

/// Standardised values are clipped to `[−16, 16]`.
pub const Z_CLIP: f64 = 16.0;

/// What can go wrong with moments.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StandardiseError {
    #[error(transparent)]
    Fixed(#[from] FixedError),
    #[error("moments: feature {feature} has bound 2^{bound_log2}; its square needs at most 2^38")]
    Bound { feature: String, bound_log2: u32 },
    #[error("moments: example {index} has {got} features, the spec {expected}")]
    Width { index: usize, got: usize, expected: usize },
    #[error("moments: {n} examples over all nodes, at least 2 are needed")]
    TooFew { n: u64 },
}

/// The encodings of `Σx_j` and `Σx_j²` for each feature of `spec`.
pub fn encodings(spec: &FeatureSpec) -> Result<Vec<(FixedPoint, FixedPoint)>, StandardiseError> {
    let room = 63 - LOG2_MAX_EXAMPLES;
    spec.features
        .iter()
        .map(|f| {
            let b = f.bound_log2;
            if 2 * b > room - 1 {
                return Err(StandardiseError::Bound { feature: f.name(), bound_log2: b });
            }
            Ok((FixedPoint::new(room - b, b)?, FixedPoint::new(room - 2 * b, 2 * b)?))
        })
        .collect()
}

/// A node's moments contribution over its examples' feature rows (as
/// [`FeatureSpec::extract`] returns them).
pub fn moments_contribution(spec: &FeatureSpec, rows: &[Vec<f64>]) -> Result<Vec<u64>, StandardiseError> {
    let enc = encodings(spec)?;
    let d = spec.dim();
    let mut sum = vec![0.0; d];
    let mut sum_sq = vec![0.0; d];
    for (index, row) in rows.iter().enumerate() {
        if row.len() != d {
            return Err(StandardiseError::Width { index, got: row.len(), expected: d });
        }
        for j in 0..d {
            sum[j] += row[j];
            sum_sq[j] += row[j] * row[j];
        }
    }
    let n = rows.len() as u64;
    let mut words = Vec::with_capacity(1 + 2 * d);
    words.push(COUNT.encode(n as f64, n)?);
    for (j, (s, _)) in enc.iter().enumerate() {
        words.push(s.encode(sum[j], n)?);
    }
    for (j, (_, q)) in enc.iter().enumerate() {
        words.push(q.encode(sum_sq[j], n)?);
    }
    Ok(words)
}

/// Moments decoded from the sum over nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Moments {
    pub n: u64,
    pub sum: Vec<f64>,
    pub sum_sq: Vec<f64>,
}

/// Decodes the summed moments vector.
pub fn decode_moments(spec: &FeatureSpec, words: &[u64]) -> Result<Moments, StandardiseError> {
    let enc = encodings(spec)?;
    let d = spec.dim();
    let mut s = Sections::new("moments", words, 1 + 2 * d)?;
    let n = s.counts(1)[0];
    let sum = s.take(d).iter().zip(&enc).map(|(w, (e, _))| e.decode(*w)).collect();
    let sum_sq = s.take(d).iter().zip(&enc).map(|(w, (_, e))| e.decode(*w)).collect();
    Ok(Moments { n, sum, sum_sq })
}

/// The global means and standard deviations; part of a model artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Standardiser {
    pub mean: Vec<f64>,
    pub sd: Vec<f64>,
}

impl Standardiser {
    /// The global constants from the summed moments.
    pub fn from_moments(m: &Moments) -> Result<Self, StandardiseError> {
        if m.n < 2 {
            return Err(StandardiseError::TooFew { n: m.n });
        }
        let n = m.n as f64;
        let mean: Vec<f64> = m.sum.iter().map(|s| s / n).collect();
        let sd = m.sum_sq.iter().zip(&mean).map(|(q, mu)| (q / n - mu * mu).max(0.0).sqrt()).collect();
        Ok(Self { mean, sd })
    }

    /// Whether feature `j` is constant (standardises to 0); such features can be
    /// dropped from the spec with [`FeatureSpec::without`].
    pub fn is_constant(&self, j: usize) -> bool {
        self.sd[j] <= 1e-6 * self.mean[j].abs().max(1.0)
    }

    /// `z_j = clip((x_j − mean_j) / sd_j, ±Z_CLIP)`, 0 for a constant feature.
    pub fn apply(&self, raw: &[f64]) -> Vec<f64> {
        raw.iter()
            .enumerate()
            .map(
                |(j, x)| {
                    if self.is_constant(j) { 0.0 } else { ((x - self.mean[j]) / self.sd[j]).clamp(-Z_CLIP, Z_CLIP) }
                },
            )
            .collect()
    }

    /// The standardised design matrix (rows × features) of many rows.
    pub fn matrix(&self, rows: &[Vec<f64>]) -> Array2<f64> {
        let d = self.mean.len();
        let mut x = Array2::zeros((rows.len(), d));
        for (i, row) in rows.iter().enumerate() {
            for (j, z) in self.apply(row).into_iter().enumerate() {
                x[[i, j]] = z;
            }
        }
        x
    }
}

/// The spec and standardiser without the features that are constant over all nodes'
/// data (category shares and key dates in a source that has none, such as CDNOW). Nodes
/// extract with the returned spec from then on; the standardiser's constants for the
/// remaining features are unchanged.
pub fn without_constant(spec: &FeatureSpec, standardiser: &Standardiser) -> (FeatureSpec, Standardiser) {
    let (constant, keep): (Vec<usize>, Vec<usize>) = (0..spec.dim()).partition(|j| standardiser.is_constant(*j));
    let names: Vec<String> = constant.iter().map(|j| spec.features[*j].name()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let kept = Standardiser {
        mean: keep.iter().map(|j| standardiser.mean[*j]).collect(),
        sd: keep.iter().map(|j| standardiser.sd[*j]).collect(),
    };
    (spec.without(&names), kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::wrapping_sum;

    /// Three nodes' moments summed equal the pooled moments; the standardiser is the
    /// pooled one.
    #[test]
    fn summed_moments_give_the_pooled_mean_and_sd() {
        let spec = FeatureSpec::reduced();
        let rows: Vec<Vec<f64>> = (0..300)
            .map(|i| {
                let t = i as f64;
                vec![(t % 17.0).ln_1p(), (t % 5.0).ln_1p(), 3.0 + (t * 0.37).sin(), 2.0, 100.0 + (t * 1.3) % 250.0, 0.0]
            })
            .collect();
        let parts = [&rows[..50], &rows[50..51], &rows[51..]];
        let words: Vec<Vec<u64>> = parts.iter().map(|p| moments_contribution(&spec, p).unwrap()).collect();
        let m = decode_moments(&spec, &wrapping_sum(&words).unwrap()).unwrap();
        assert_eq!(m.n, 300);
        let s = Standardiser::from_moments(&m).unwrap();
        for j in 0..spec.dim() {
            let col: Vec<f64> = rows.iter().map(|r| r[j]).collect();
            let mean = col.iter().sum::<f64>() / 300.0;
            let sd = (col.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 300.0).sqrt();
            assert!((s.mean[j] - mean).abs() < 1e-9, "feature {j}: mean {} vs {mean}", s.mean[j]);
            assert!((s.sd[j] - sd).abs() < 1e-6, "feature {j}: sd {} vs {sd}", s.sd[j]);
        }
        assert!(s.is_constant(3) && s.is_constant(5) && !s.is_constant(0));
        assert_eq!(s.apply(&rows[7])[3].to_bits(), 0f64.to_bits());
        assert!(decode_moments(&spec, &[0; 3]).is_err());
        let (kept, st) = without_constant(&spec, &s);
        assert_eq!(kept.names(), ["log1p_recency_days", "log1p_frequency", "log1p_monetary_total", "tenure_days"]);
        assert_eq!((st.mean[3].to_bits(), st.sd.len()), (s.mean[4].to_bits(), 4));
    }
}
