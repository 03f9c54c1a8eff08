//! Issue 11: the churn model's queries. One churn analysis is a chain of rounds over
//! one population: the training examples' moments (for the global standardisation),
//! federated Newton rounds (gradient and Hessian sums) or FedAvg rounds (local
//! updates), then one evaluation round on the held-out customers. Every round carries
//! the same [`ChurnSetup`] (feature spec, label horizon, holdout split), and the model
//! state the step needs (standardisation constants, weights) — all public; what a node
//! computes from them stays on the node except as the summed words.
//!
//! The words are fixed-point reals in two's complement (`fedcrm_model::fixed`): per
//! example at most 2^[`MODEL_TERM_BITS`] in magnitude (2^[`MOMENT_TERM_BITS`] for
//! moments), so a round's range is signed, and its per-node bound on examples is
//! lowered until the sum over the invited nodes fits 64-bit words
//! ([`Query::per_node_bound`]).

use fedcrm_analysis::rules::Coverage;
use fedcrm_analysis::width::SumRange;
use fedcrm_dp::accounting::{Charge, Sensitivity};
use fedcrm_dp::vector::{CustomerSum, RotationSeed, VectorError};
use fedcrm_model::eval::EvalLayout;
use fedcrm_model::features::FeatureSpec;
use fedcrm_model::fedavg::{Batching, LocalTraining, update_len};
use fedcrm_model::logistic::newton_len;
use fedcrm_model::standardise::Standardiser;

use super::Query;
use crate::pb;
use crate::wire::{WireError, field};

/// Most features a churn query may name.
pub const MAX_FEATURES: usize = 4096;
/// Most score bins of an evaluation round (each node also applies its
/// `[policy.histograms] max_bins`).
pub const MAX_BINS: u32 = 10_000;
/// Largest weight magnitude a round may carry: with |z| ≤ 16 and at most
/// [`MAX_FEATURES`] features the log-odds stay finite, so no round can make a node's
/// computation overflow on a value of its data (attack review of issue 11).
pub const MAX_WEIGHT: f64 = 1_000.0;
/// The smallest standard deviation a round may carry, relative to the feature's clip
/// bound 2^b: 2^(b − 24). Honest constants are far above it; a smaller one would make
/// the standardised feature a step function of the raw value.
pub const SD_FLOOR_LOG2: i32 = -24;
/// The held-out share must lie within 10 %..=50 %: a tiny held-out set would make the
/// evaluation sums a handful of customers'.
pub const TEST_FRACTION_BP: std::ops::RangeInclusive<u32> = 1000..=5000;
/// Most local epochs of a FedAvg round.
pub const MAX_EPOCHS: u32 = 100;
/// Bits of the largest magnitude one example adds to a model word (Newton, FedAvg,
/// evaluation): the per-term bound 2^6 at scale 2^32 (`fedcrm_model::fixed::MODEL`).
pub const MODEL_TERM_BITS: u32 = 38;
/// Bits of the largest magnitude one example adds to a moment word
/// (`fedcrm_model::standardise`: scale 2^(39 − b) for values up to 2^b).
pub const MOMENT_TERM_BITS: u32 = 39;

/// What every round of one churn analysis repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChurnSetup {
    pub spec: FeatureSpec,
    /// Churned = no purchase in the `horizon_days` after the reference date.
    pub horizon_days: u32,
    /// The holdout split's key (public: it decides which customers are held out, not
    /// anything about them).
    pub holdout_key: [u8; 32],
    /// The held-out share, in basis points.
    pub test_fraction_bp: u32,
}

impl ChurnSetup {
    pub fn test_fraction(&self) -> f64 {
        f64::from(self.test_fraction_bp) / 10_000.0
    }
}

/// A model analysis's round under differential privacy (issue 11's churn rounds, issue
/// 13's CLV rounds): the customer-level distributed discrete Gaussian ([`CustomerSum`])
/// and the plan's bounds every node checks. All public.
#[derive(Debug, Clone, Copy)]
pub struct ModelDp {
    /// Per-customer ℓ2 clip bound c, in the units of the round's terms
    /// (`fedcrm_model::terms`).
    pub clip: f64,
    /// The grid γ.
    pub gamma: f64,
    /// The rotation's seed, fresh per round.
    pub rotation_seed: [u8; 32],
    /// The most rounds the analysis may charge, retries included (the same in every
    /// round): a node refuses a round beyond it, and checks `max_rounds` × the round
    /// cap against its budget before the first round.
    pub max_rounds: u32,
    /// The most customers per node N; pinned as the round's per-node bound.
    pub max_customers: u64,
    /// The most one round may charge each node (ρ, ξ).
    pub round_rho: f64,
    pub round_xi: f64,
}

/// The most rounds a DP model analysis may plan.
pub const MAX_DP_ROUNDS: u32 = 200;

impl ModelDp {
    /// The round's mechanism for terms of `dimension` reals.
    pub fn mechanism(&self, dimension: usize) -> Result<CustomerSum, VectorError> {
        CustomerSum::new(dimension, self.clip, self.gamma, self.max_customers)
    }

    /// The rotation's seed.
    pub fn seed(&self) -> RotationSeed {
        RotationSeed(self.rotation_seed)
    }

    /// The plan's charge: `max_rounds` rounds at the cap.
    pub fn plan_charge(&self) -> Charge {
        Charge { rho: self.round_rho, xi: self.round_xi }.times(self.max_rounds as usize)
    }

    /// Bit-for-bit the same plan (every field but the per-round grid, clip and seed).
    pub fn same_plan(&self, other: &ModelDp) -> bool {
        self.max_rounds == other.max_rounds
            && self.max_customers == other.max_customers
            && self.round_rho.to_bits() == other.round_rho.to_bits()
            && self.round_xi.to_bits() == other.round_xi.to_bits()
    }
}

impl PartialEq for ModelDp {
    fn eq(&self, other: &Self) -> bool {
        self.same_plan(other)
            && self.clip.to_bits() == other.clip.to_bits()
            && self.gamma.to_bits() == other.gamma.to_bits()
            && self.rotation_seed == other.rotation_seed
    }
}

impl Eq for ModelDp {}

/// What one round computes.
#[derive(Debug, Clone)]
pub enum ChurnStep {
    /// Training examples' count, Σx and Σx² per feature.
    Moments,
    /// Gradient and Hessian sums of the training examples at `weights`.
    Newton { standardiser: Standardiser, weights: Vec<f64> },
    /// Evaluation sums of the held-out customers at `weights`, scores in `bins` bins.
    Evaluate { standardiser: Standardiser, weights: Vec<f64>, bins: u32 },
    /// A local update from `weights` (training round `round`).
    FedAvg { standardiser: Standardiser, weights: Vec<f64>, local: LocalTraining, round: u64 },
}

fn same(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn same_std(a: &Standardiser, b: &Standardiser) -> bool {
    same(&a.mean, &b.mean) && same(&a.sd, &b.sd)
}

/// Bit-for-bit equality (every real is finite, checked when parsed).
impl PartialEq for ChurnStep {
    fn eq(&self, other: &Self) -> bool {
        use ChurnStep as S;
        match (self, other) {
            (S::Moments, S::Moments) => true,
            (S::Newton { standardiser: a, weights: w }, S::Newton { standardiser: b, weights: v }) => {
                same_std(a, b) && same(w, v)
            }
            (
                S::Evaluate { standardiser: a, weights: w, bins: x },
                S::Evaluate { standardiser: b, weights: v, bins: y },
            ) => same_std(a, b) && same(w, v) && x == y,
            (
                S::FedAvg { standardiser: a, weights: w, local: l, round: r },
                S::FedAvg { standardiser: b, weights: v, local: m, round: q },
            ) => {
                same_std(a, b)
                    && same(w, v)
                    && r == q
                    && l.epochs == m.epochs
                    && l.batching == m.batching
                    && same(&[l.learning_rate, l.lambda, l.max_update], &[m.learning_rate, m.lambda, m.max_update])
            }
            _ => false,
        }
    }
}

impl Eq for ChurnStep {}

/// One churn round's query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChurnRound {
    pub setup: ChurnSetup,
    pub step: ChurnStep,
    /// Under differential privacy: the round's mechanism (`None`: an exact round).
    pub dp: Option<ModelDp>,
}

impl ChurnRound {
    fn d(&self) -> usize {
        self.setup.spec.dim()
    }

    /// The length of one customer's term (and of an exact round's vector).
    pub fn term_len(&self) -> usize {
        let d = self.d();
        match &self.step {
            ChurnStep::Moments => 1 + 2 * d,
            ChurnStep::Newton { .. } => newton_len(d),
            ChurnStep::Evaluate { bins, .. } => Self::eval_layout(*bins).len(),
            ChurnStep::FedAvg { .. } => update_len(d),
        }
    }

    /// Under differential privacy, the round's mechanism (checked when parsed, so it
    /// builds).
    pub fn mechanism(&self) -> Option<CustomerSum> {
        self.dp.as_ref().and_then(|dp| dp.mechanism(self.term_len()).ok())
    }

    fn term_bits(&self) -> u32 {
        match self.step {
            ChurnStep::Moments => MOMENT_TERM_BITS,
            _ => MODEL_TERM_BITS,
        }
    }

    /// The evaluation vector's shape.
    pub fn eval_layout(bins: u32) -> EvalLayout {
        EvalLayout { bins: bins as usize, segments: 0 }
    }
}

impl Query for ChurnRound {
    fn name(&self) -> &'static str {
        match self.step {
            ChurnStep::Moments => "churn-moments",
            ChurnStep::Newton { .. } => "churn-newton",
            ChurnStep::Evaluate { .. } => "churn-evaluate",
            ChurnStep::FedAvg { .. } => "churn-fedavg",
        }
    }

    /// An exact round's words, one per real; under DP the mechanism's padded d'.
    fn vector_len(&self) -> usize {
        match self.mechanism() {
            Some(m) => m.padded_dimension(),
            None => self.term_len(),
        }
    }

    /// Signed fixed-point words: one example adds at most 2^[`MODEL_TERM_BITS`] (moments: 2^[`MOMENT_TERM_BITS`])
    /// to a word, a node at most `max_per_node` examples. Under DP, a node's rounded
    /// coordinate is at most ⌈N·c/γ⌉ ([`CustomerSum::word_bound`], N = `max_per_node`).
    fn range(&self, max_per_node: u64) -> SumRange {
        if let Some(dp) = &self.dp {
            let bound = dp
                .mechanism(self.term_len())
                .and_then(|m| CustomerSum::new(m.dimension(), m.clip(), m.gamma(), max_per_node.max(1)))
                .map_or(u64::MAX, |m| m.word_bound());
            return SumRange { max_abs: bound, signed: true, noise_tail: 0 };
        }
        let max_abs = u64::try_from(u128::from(max_per_node) << self.term_bits()).unwrap_or(u64::MAX);
        SumRange { max_abs, signed: true, noise_tail: 0 }
    }

    /// The most examples per node such that the sum over `invited` nodes fits signed
    /// 64-bit words: (2^(63 − term bits) − 1) / invited — pinned by the query, whatever
    /// the coordinator's configured bound, so that a bound HQ chooses per round cannot
    /// make a node's refusal answer "more than B examples?" (attack review of issue 11).
    /// Under DP: the signed N (a node with more customers shrinks its sum, never refuses).
    fn per_node_bound(&self, _configured: u64, invited: usize) -> u64 {
        if let Some(dp) = &self.dp {
            return dp.max_customers;
        }
        ((1u64 << (63 - self.term_bits())) - 1) / invited.max(1) as u64
    }

    /// Under DP: one customer's largest move of a node's rounded vector, Δ₂ = c/γ + √d'
    /// ([`CustomerSum::sensitivity`]; the argument is in `fedcrm_dp::vector`'s module
    /// doc). Exact rounds are not charged; their figure is one example's largest move of
    /// the encoded words, for the record.
    fn sensitivity(&self) -> Sensitivity {
        if let Some(m) = self.mechanism() {
            return m.sensitivity();
        }
        let term = f64::from(1u32 << 16).powi(2) * f64::from(1u32 << (self.term_bits() - 32));
        let words = self.vector_len() as f64;
        Sensitivity { l1: words * term, l2: words.sqrt() * term }
    }

    /// Features read purchases up to the reference date, labels up to the horizon: the
    /// same customer base the RFM analyses read, so the same differencing family — a
    /// churn sum over one population and an RFM sum over another overlap (attack review
    /// of issue 11: separate families let HQ subtract one from the other).
    fn coverage(&self, reference: time::Date) -> Coverage {
        let to = reference.checked_add(time::Duration::days(i64::from(self.setup.horizon_days))).unwrap_or(reference);
        Coverage { family: "rfm".into(), from: None, to }
    }

    /// Only with the customer-level mechanism (Newton, moments and evaluation rounds):
    /// noise on fixed-point words without per-customer clipping would protect nobody.
    fn noise_supported(&self) -> bool {
        self.dp.is_some()
    }

    /// A round with the mechanism is a noised round, or none at all.
    fn noise_required(&self) -> bool {
        self.dp.is_some()
    }
}

fn reals(name: &'static str, v: &[f64], len: usize) -> Result<Vec<f64>, WireError> {
    if v.len() != len {
        return Err(field(name, format!("{} values where the spec needs {len}", v.len())));
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(field(name, "a value is not finite"));
    }
    Ok(v.to_vec())
}

/// The standardisation constants, each within its feature's range: |mean| ≤ 2^b and
/// 2^(b − 24) ≤ sd ≤ 2^(b + 1).
fn standardiser(s: Option<&pb::Standardisation>, spec: &FeatureSpec) -> Result<Standardiser, WireError> {
    let d = spec.dim();
    let s = s.ok_or_else(|| field("standardisation", "missing"))?;
    let sd = reals("standardisation.sd", &s.sd, d)?;
    let mean = reals("standardisation.mean", &s.mean, d)?;
    for (j, f) in spec.features.iter().enumerate() {
        let b = f.bound_log2 as i32;
        if mean[j].abs() > 2f64.powi(b) {
            return Err(field("standardisation.mean", format!("{} is outside its feature's range", f.name())));
        }
        if sd[j] < 2f64.powi(b + SD_FLOOR_LOG2) || sd[j] > 2f64.powi(b + 1) {
            return Err(field(
                "standardisation.sd",
                format!("{}'s standard deviation {} is outside 2^({b} − 24)..=2^({b} + 1)", f.name(), sd[j]),
            ));
        }
    }
    Ok(Standardiser { mean, sd })
}

fn standardiser_pb(s: &Standardiser) -> pb::Standardisation {
    pb::Standardisation { mean: s.mean.clone(), sd: s.sd.clone() }
}

pub(super) fn churn_from_pb(c: &pb::ChurnRound) -> Result<ChurnRound, WireError> {
    if c.spec_json.len() > 64 * 1024 {
        return Err(field("spec_json", "longer than 64 KiB"));
    }
    let spec: FeatureSpec =
        serde_json::from_str(&c.spec_json).map_err(|e| field("spec_json", format!("not a feature spec: {e}")))?;
    spec.check_version().map_err(|e| field("spec_json", e.to_string()))?;
    // Only this version's features, each at most once, with their own transforms and
    // bounds: no duplicated feature carries a threshold of its own.
    if !spec.narrows(&FeatureSpec::full()) {
        return Err(field("spec_json", "not a subset, in order and without repeats, of this version's features"));
    }
    let d = spec.dim();
    if d == 0 || d > MAX_FEATURES {
        return Err(field("spec_json", format!("needs 1..={MAX_FEATURES} features, has {d}")));
    }
    if c.horizon_days == 0 || c.horizon_days > 3660 {
        return Err(field("horizon_days", "must be 1..=3660 days"));
    }
    let holdout_key: [u8; 32] =
        c.holdout_key.as_slice().try_into().map_err(|_| field("holdout_key", "must be 32 bytes"))?;
    if !TEST_FRACTION_BP.contains(&c.test_fraction_bp) {
        return Err(field("test_fraction_bp", "must be 1000..=5000 basis points (10 % to 50 % held out)"));
    }
    let weights = |w: &[f64]| {
        let w = reals("weights", w, d + 1)?;
        if w.iter().any(|x| x.abs() > MAX_WEIGHT) {
            return Err(field("weights", format!("a weight exceeds {MAX_WEIGHT} in magnitude")));
        }
        Ok(w)
    };
    let step = match &c.step {
        Some(pb::churn_round::Step::Moments(_)) => ChurnStep::Moments,
        Some(pb::churn_round::Step::Newton(n)) => ChurnStep::Newton {
            standardiser: standardiser(n.standardisation.as_ref(), &spec)?,
            weights: weights(&n.weights)?,
        },
        Some(pb::churn_round::Step::Evaluate(e)) => {
            if e.bins == 0 || e.bins > MAX_BINS {
                return Err(field("bins", format!("must be 1..={MAX_BINS}")));
            }
            ChurnStep::Evaluate {
                standardiser: standardiser(e.standardisation.as_ref(), &spec)?,
                weights: weights(&e.weights)?,
                bins: e.bins,
            }
        }
        Some(pb::churn_round::Step::Fedavg(f)) => {
            let ok = |x: f64, lo: f64, hi: f64| x.is_finite() && x >= lo && x <= hi;
            if !ok(f.learning_rate, 0.0, 1e3) || !ok(f.lambda, 0.0, 1e3) || !ok(f.max_update, 1e-12, 64.0) {
                return Err(field("fedavg", "learning_rate, lambda and max_update must be finite and in range"));
            }
            if f.epochs == 0 || f.epochs > MAX_EPOCHS {
                return Err(field("fedavg.epochs", format!("must be 1..={MAX_EPOCHS}")));
            }
            // lr·λ ≥ 1 would reset the weights at every step, making an update the last
            // example's features.
            if f.learning_rate * f.lambda >= 1.0 || f.batch_size == 1 {
                return Err(field("fedavg", "needs learning_rate × lambda < 1 and mini-batches of 2 or more"));
            }
            let batching = match f.batch_size {
                0 => Batching::Full,
                size => Batching::MiniBatch { size: size as usize, seed: f.batch_seed },
            };
            ChurnStep::FedAvg {
                standardiser: standardiser(f.standardisation.as_ref(), &spec)?,
                weights: weights(&f.weights)?,
                local: LocalTraining {
                    learning_rate: f.learning_rate,
                    epochs: f.epochs,
                    batching,
                    lambda: f.lambda,
                    max_update: f.max_update,
                },
                round: f.round,
            }
        }
        None => return Err(field("churn.step", "missing")),
    };
    let mut round = ChurnRound {
        setup: ChurnSetup { spec, horizon_days: c.horizon_days, holdout_key, test_fraction_bp: c.test_fraction_bp },
        step,
        dp: None,
    };
    if let Some(dp) = &c.dp {
        round.dp = Some(churn_dp_from_pb(dp, &round)?);
    }
    Ok(round)
}

/// Every number finite and in range; the mechanism builds for the round's terms.
fn churn_dp_from_pb(dp: &pb::ModelDp, round: &ChurnRound) -> Result<ModelDp, WireError> {
    if matches!(round.step, ChurnStep::FedAvg { .. }) {
        return Err(field("dp", "FedAvg rounds are not noised in this version; train with Newton under DP"));
    }
    model_dp_from_pb(dp, round.term_len())
}

/// A model round's mechanism and plan: every number finite and in range, and the
/// mechanism builds for terms of `term_len` reals.
pub(super) fn model_dp_from_pb(dp: &pb::ModelDp, term_len: usize) -> Result<ModelDp, WireError> {
    let rotation_seed: [u8; 32] =
        dp.rotation_seed.as_slice().try_into().map_err(|_| field("dp.rotation_seed", "must be 32 bytes"))?;
    if dp.max_rounds == 0 || dp.max_rounds > MAX_DP_ROUNDS {
        return Err(field("dp.max_rounds", format!("must be 1..={MAX_DP_ROUNDS}")));
    }
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !(positive(dp.round_rho) && dp.round_xi.is_finite() && dp.round_xi >= 0.0) {
        return Err(field("dp.round_rho", "the per-round cap needs a finite ρ > 0 and ξ ≥ 0"));
    }
    if !positive(dp.clip) || dp.clip > 1e6 || !positive(dp.gamma) {
        return Err(field("dp.clip", "clip and gamma must be finite and positive (clip ≤ 10^6)"));
    }
    let parsed = ModelDp {
        clip: dp.clip,
        gamma: dp.gamma,
        rotation_seed,
        max_rounds: dp.max_rounds,
        max_customers: dp.max_customers,
        round_rho: dp.round_rho,
        round_xi: dp.round_xi,
    };
    parsed.mechanism(term_len).map_err(|e| field("dp", e.to_string()))?;
    Ok(parsed)
}

/// A model round's mechanism and plan on the wire.
pub(super) fn model_dp_pb(dp: &ModelDp) -> pb::ModelDp {
    pb::ModelDp {
        clip: dp.clip,
        gamma: dp.gamma,
        rotation_seed: dp.rotation_seed.to_vec(),
        max_rounds: dp.max_rounds,
        max_customers: dp.max_customers,
        round_rho: dp.round_rho,
        round_xi: dp.round_xi,
    }
}

pub(super) fn churn_pb(c: &ChurnRound) -> pb::ChurnRound {
    let step = match &c.step {
        ChurnStep::Moments => pb::churn_round::Step::Moments(pb::ChurnMoments {}),
        ChurnStep::Newton { standardiser, weights } => pb::churn_round::Step::Newton(pb::ChurnNewton {
            standardisation: Some(standardiser_pb(standardiser)),
            weights: weights.clone(),
        }),
        ChurnStep::Evaluate { standardiser, weights, bins } => pb::churn_round::Step::Evaluate(pb::ChurnEvaluate {
            standardisation: Some(standardiser_pb(standardiser)),
            weights: weights.clone(),
            bins: *bins,
        }),
        ChurnStep::FedAvg { standardiser, weights, local, round } => {
            let (batch_size, batch_seed) = match local.batching {
                Batching::Full => (0, 0),
                Batching::MiniBatch { size, seed } => (u32::try_from(size).unwrap_or(u32::MAX), seed),
            };
            pb::churn_round::Step::Fedavg(pb::ChurnFedAvg {
                standardisation: Some(standardiser_pb(standardiser)),
                weights: weights.clone(),
                learning_rate: local.learning_rate,
                epochs: local.epochs,
                batch_size,
                batch_seed,
                lambda: local.lambda,
                max_update: local.max_update,
                round: *round,
            })
        }
    };
    pb::ChurnRound {
        // Unwrap safety: a FeatureSpec always serialises (plain fields, no maps).
        spec_json: serde_json::to_string(&c.setup.spec).unwrap_or_default(),
        horizon_days: c.setup.horizon_days,
        holdout_key: c.setup.holdout_key.to_vec(),
        test_fraction_bp: c.setup.test_fraction_bp,
        dp: c.dp.as_ref().map(model_dp_pb),
        step: Some(step),
    }
}
