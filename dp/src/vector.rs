//! The distributed discrete Gaussian mechanism for real vectors (issue 11): what a node
//! does to a real vector (a gradient, a model delta) before it masks it, and what the
//! coordinator does to the unmasked sum. Follows Kairouz, Liu & Steinke, "The
//! Distributed Discrete Gaussian Mechanism for Federated Learning with Secure
//! Aggregation" (ICML 2021, arXiv 2102.06387; "KLS21" below): the client procedure of
//! Algorithm 1 and the server's decoding that follows it, with the privacy of Theorem 1.
//! Where the paper's text was not at hand, the formulas were checked against the
//! authors' code (google-research/federated `distributed_dp/compression_utils.py` and
//! `accounting_utils.py`, which cite the same numbers). Pure: no I/O, no clock; the
//! only randomness is an [`Entropy`] (the OS CSPRNG on a node).
//!
//! # The algorithm, step by step
//!
//! A node holding x ∈ ℝ^d, with the round's [`Params`] and public [`RotationSeed`]
//! ([`encode`]):
//!
//! 1. **Clip** to ℓ2 norm c: x ← min(1, c/‖x‖₂)·x. Every later bound rests on this.
//! 2. **Pad** with zeros to d' = the next power of two ≥ d.
//! 3. **Rotate** (KLS21's "flattening"): x ← (1/√d')·H·D·x, H the d'×d' Walsh–Hadamard
//!    matrix (entries ±1, applied by the fast transform in d'·log₂d' additions), D a
//!    diagonal of random signs drawn from the round's public seed ([`Rotation`]). The
//!    rotation is orthonormal, so ‖x‖₂ is unchanged, but the mass of any one
//!    coordinate is spread over all d': afterwards each coordinate is about c/√d', which
//!    is what keeps the rounding and the modular range small.
//! 4. **Scale** to the grid: x ← x/γ. The real grid is γ·ℤ.
//! 5. **Round conditionally** (KLS21 Alg. 1, "randomized rounding"; the bound is Thm 1's
//!    Δ₂): round each coordinate to ⌊x_j⌋ or ⌈x_j⌉ at random, unbiased (up with
//!    probability x_j − ⌊x_j⌋), and repeat the whole vector's rounding until
//!    ‖x̃‖₂² ≤ Δ₂² ([`Params::norm_bound_sq`]). With β > 0 one try succeeds with probability
//!    at least 1 − β (KLS21 Prop. 22), about 2.5 tries at most on average at β = e^{−1/2}.
//! 6. **Perturb**: add N_ℤ(0, σ²) to each of the d' integer coordinates, sampled exactly
//!    ([`crate::sampler`]); σ² is the per-node variance *on the integer grid* (KLS21
//!    write the noise as N_ℤ(0, σ²/γ²) with their σ in real units: our σ² is their
//!    σ²/γ²).
//! 7. **Words**: each i64 coordinate as a u64 word in two's complement. Secure
//!    aggregation then adds the nodes' words mod m = 2^64 (KLS21's modular clipping with
//!    m = 2^64: [`Params::required_bits`] says how many of the 64 bits the sum needs so
//!    it never wraps, except with probability 2^−40 per word).
//!
//! The coordinator, holding the wrapping sum of the n nodes' words ([`decode`]):
//! reads each word as i64, multiplies by γ, applies the inverse rotation
//! D·(1/√d')·H (H/√d' is its own inverse), and drops the d' − d padding coordinates. The
//! result is Σᵢ clip(xᵢ) plus the error below.
//!
//! # What each parameter costs
//!
//! Let s = c/γ, the clip bound in grid units. Per round and per coordinate of the
//! decoded sum (real units):
//!
//! - **Noise**: the n nodes' noise, variance n·σ²·γ² (rotation keeps it isotropic), of
//!   which only the honest k's count for privacy.
//! - **Rounding**: rounding moves each grid coordinate of a node's vector by less than
//!   1 (variance at most 1/4 unconditioned), so without noise the decoded sum is within
//!   γ·n·√d' of Σᵢ clip(xᵢ) in ℓ2 norm, always (the rotation keeps norms), and typically
//!   within about γ·√(n·d'/6); per decoded coordinate that is a variance of at most
//!   about n·γ²/4. Smaller γ, smaller error, more bits.
//! - **Clipping**: vectors longer than c are shortened: bias, which a larger c avoids at
//!   the price of more noise for the same privacy (ρ grows as c²).
//! - **Privacy** (KLS21 Thm 1 with Prop. 14): one release is (ξ, ρ)-approximate zCDP with
//!   ρ = Δ₂²/(2·k·σ²) and ξ = τ·d', k the nodes whose noise is counted on and
//!   τ = 10·Σ_{j=1}^{k−1} exp(−2π²σ²·j/(j+1)) ([`crate::accounting::tau`]). Δ₂ is the
//!   *inflated* sensitivity: rounding can lengthen a vector, so Δ₂ > s:
//!
//!   > Δ₂² = min{ s² + d'/4 + √(2·ln(1/β))·(s + √d'/2),  (s + √d')² }   (KLS21 Thm 1, Eq. 2)
//!
//!   The second term holds for any rounding (each coordinate moves less than 1); the
//!   first is what the conditional rounding adds, and is the smaller one unless β is
//!   tiny (its s-coefficient √(2 ln(1/β)) against the second's 2√d'): at β = e^{−1/2}
//!   (√(2 ln(1/β)) = 1) it always is, and it gives s² + d'/4 + s + √d'/2 against
//!   s² + 2s√d' + d'. At β = 0 (no conditioning) only the second applies. The
//!   inflation Δ₂²/s² − 1 is the privacy price of the grid: about
//!   d'/(4s²) + √(2 ln(1/β))/s, so a fine grid (small γ, large s) makes it negligible
//!   ([`Params::calibrate`] keeps it ≤ 1 %).
//!   The ℓ1 bound, for accountants that want it, is Δ₁ = Δ₂·min(√d', Δ₂) (an integer
//!   vector's ℓ1 is at most its ℓ2 squared; as google-research/federated
//!   `distributed_dp/accounting_utils.py`, `rounded_l1_norm_bound`).
//! - **T rounds** compose: ρ·T and ξ·T ([`Params::charge`]); a node computes the charge
//!   of the maximum number of rounds before the first one and refuses if its budget
//!   cannot cover it.
//! - **Bits**: the sum's words are at most n·⌊Δ₂⌋ + the noise tail of n nodes
//!   ([`crate::accounting::noise_tail`], exceeded with probability ≤ 2^−40) in
//!   magnitude; [`Params::new`] refuses parameters whose range does not fit i64.
//!
//! **Unit of privacy.** KLS21's neighbouring relation is one client's whole vector
//! present or absent, sensitivity Δ₂ ([`Neighbours::Contribution`]). When a node's
//! vector is computed from its customers and one customer's change may move it anywhere
//! in the c-ball, the two rounded vectors can differ by up to 2·Δ₂
//! ([`Neighbours::Replacement`]: four times ρ). The caller says which holds.
//!
//! **One customer inside a node's sum** ([`CustomerSum`], issue 11's model rounds).
//! fedcrm's unit of privacy is one customer of one node (add/remove), and a node's
//! vector is a sum over its customers, so neither relation above is the right one:
//! one customer moves a node's *real* sum by at most its own clipped term, but the
//! conditional rounding of the whole vector (step 5) bounds the rounded vector's norm,
//! not the difference between the roundings of two neighbouring sums. So the
//! customer-level mode clips **each customer's term** to ℓ2 ≤ c, sums over the node's
//! customers, projects the sum onto the ball of radius N·c (N the signed most customers
//! per node), rotates, scales and rounds every coordinate independently (unbiased, no
//! conditioning). The sensitivity is KLS21 Thm 1's second branch, Δ₂ = s + √d':
//!
//! - neighbouring datasets D and D ∪ {u} give real sums S and S + clip(x_u), at
//!   distance ≤ c; the projection onto a ball is 1-Lipschitz and the rotation is an
//!   isometry, so the scaled vectors y, y' are at distance ≤ s = c/γ;
//! - randomized rounding has the law of ⌊y_j + U_j⌋ with U_j uniform on [0, 1). The
//!   output (rounded vector plus noise) is a mixture over U of the same mechanism at
//!   fixed roundings, with the same mixture weights for D and D'; Rényi divergence is
//!   jointly quasi-convex (van Erven & Harremoës 2014, Thm. 13), so it is at most its
//!   value for the worst U. For a fixed U, ⌊y_j + U_j⌋ − ⌊y'_j + U_j⌋ is ⌊y_j − y'_j⌋ or
//!   ⌈y_j − y'_j⌉, less than |y_j − y'_j| + 1 in magnitude; so the two integer vectors
//!   differ by at most ‖y − y'‖₂ + ‖(1, …, 1)‖₂ ≤ s + √d' (triangle inequality);
//! - the noise of the k honest nodes then gives KLS21 Prop. 14's bound with that Δ₂
//!   ([`CustomerSum::sensitivity`]). Clipping, projection and rounding happen on the
//!   node, so the bound holds whatever the coordinator chose.
//!
//! The projection replaces a refusal: a node with more than N customers shrinks its sum
//! instead of refusing, because in a noised round a refusal after the charge would
//! depend on its data. Each rounded coordinate is then at most ⌈N·s⌉ in magnitude
//! ([`CustomerSum::word_bound`]), the per-node bound the round's word width is picked
//! from (checked by every node, like every signed range).
//!
//! **The seed.** The rotation is public and may even be chosen by the coordinator:
//! privacy does not rest on it (the norm bound is enforced on the integer vector after
//! the rotation, and the noise is exact whatever the rotation), and neither does the
//! word range (n·⌊Δ₂⌋ bounds a coordinate whatever the rotation). A bad rotation can
//! only cost accuracy; a fresh seed per round, unknown when the data were fixed, makes
//! it spread the vector as intended.
//!
//! **Timing.** How many rounding tries a vector takes depends on its data (a vector at
//! the clip bound with fractions near ½ retries most), at most 1/(1 − β) ≈ 2.5 on
//! average at β = e^{−1/2}. Someone timing the node's encoding learns about that
//! number, a few bits about how close to the bound the vector was, in a round already
//! charged; like the sampler's timing (module [`crate::sampler`]), fedcrm accepts it.
//!
//! **Floating point.** Clipping, rotation and the rounding probabilities use f64; the
//! privacy guarantee does not depend on them: it needs only that the rounded integer
//! vector satisfies ‖x̃‖₂² ≤ Δ₂², which is checked exactly in integers, and that the
//! noise is exactly discrete Gaussian, which the sampler guarantees.

use ring::hmac;

use crate::accounting::{self, Charge, Sensitivity};
use crate::sampler::{DiscreteGaussian, Variance};
use crate::{DpError, Entropy};

/// β of KLS21's experiments and reference code (`DEFAULT_BETA = exp(−0.5)`): one
/// rounding try fails the norm check with probability at most e^{−1/2} ≈ 0.61.
pub const DEFAULT_BETA: f64 = 0.606_530_659_712_633_4;

/// The largest β accepted: a try succeeds with probability ≥ 1 − β ≥ 0.1, so
/// [`MAX_ROUNDING_TRIES`] tries fail with probability below 10^−45.
pub const MAX_BETA: f64 = 0.9;

/// Rounding tries before [`encode`] gives up (a bug or a bad β, never expected).
pub const MAX_ROUNDING_TRIES: usize = 1_000;

/// The largest padded dimension: 2^26 words, the wire's longest vector
/// (`fedcrm_protocol`'s `MAX_LENGTH`).
pub const MAX_PADDED_DIMENSION: usize = 1 << 26;

/// The HMAC label of the rotation's sign stream, version and purpose bound in.
const ROTATION_LABEL: &[u8] = b"fedcrm/dp/v1/ddg-rotation-signs";

/// What can go wrong encoding or decoding a vector.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VectorError {
    #[error("vector of {got} values, expected {expected} (the round's dimension)")]
    Dimension { expected: usize, got: usize },
    #[error("sum of {got} words, expected {expected} (the round's padded dimension)")]
    Words { expected: usize, got: usize },
    #[error("value {index} of the vector is {value}, not a finite number")]
    NonFinite { index: usize, value: f64 },
    #[error("invalid vector mechanism parameter: {0}")]
    Parameter(String),
    #[error(
        "the sum of {nodes} nodes' words may reach {range} in magnitude, more than 64-bit words hold \
         (2^63 − 1); use a coarser grid γ, less noise or fewer nodes"
    )]
    WordOverflow { nodes: usize, range: u128 },
    #[error("conditional rounding found no vector within the norm bound in {0} tries (β too close to 1?)")]
    Rounding(usize),
    #[error("noise: {0}")]
    Noise(#[from] DpError),
}

/// The round's public rotation seed: every node and the coordinator derive the same
/// random signs D from it. Not secret (KLS21 share the rotation with the server), but
/// fresh per round, so the rotation is independent of the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RotationSeed(pub [u8; 32]);

/// Which datasets the privacy guarantee calls neighbours (module doc, "Unit of privacy").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Neighbours {
    /// One node's whole vector present or absent (KLS21's relation): sensitivity Δ₂.
    Contribution,
    /// One node's vector replaced by any other within the clip bound: sensitivity 2·Δ₂.
    Replacement,
}

/// The mechanism's parameters, agreed by the nodes and the coordinator for a round.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    dimension: usize,
    padded: usize,
    clip: f64,
    gamma: f64,
    beta: f64,
    /// Per-node σ² on the integer grid; `None` only for the noiseless test path.
    variance: Option<Variance>,
    nodes: usize,
}

/// What [`Params::calibrate`] aims at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// ρ (zCDP) per round.
    pub rho: f64,
    /// The nodes whose noise is counted on (k ≤ n).
    pub honest: usize,
    pub neighbours: Neighbours,
    /// The largest inflation Δ₂²/s² − 1 the grid may add to ρ; [`DEFAULT_INFLATION`].
    pub inflation: f64,
}

/// The inflation [`Params::calibrate`] allows by default: the grid costs at most 1 % of ρ.
pub const DEFAULT_INFLATION: f64 = 0.01;

impl Params {
    /// Parameters for vectors of `dimension` values clipped to ℓ2 norm `clip`, on the grid
    /// γ·ℤ (`gamma`), conditional rounding with `beta` ∈ [0, [`MAX_BETA`]] (0: none), each of
    /// `nodes` nodes adding N_ℤ(0, `variance`) per word. Refused when a number is out of
    /// range or the sum's range does not fit 64-bit words.
    pub fn new(
        dimension: usize,
        clip: f64,
        gamma: f64,
        beta: f64,
        variance: Variance,
        nodes: usize,
    ) -> Result<Self, VectorError> {
        Self::build(dimension, clip, gamma, beta, Some(variance), nodes)
    }

    /// Parameters without noise: **no privacy at all**. For tests and accuracy checks
    /// of the rotation and rounding only (built with the `test-util` feature);
    /// [`Params::charge`] refuses them.
    #[cfg(any(test, feature = "test-util"))]
    pub fn noiseless_for_testing(
        dimension: usize,
        clip: f64,
        gamma: f64,
        beta: f64,
        nodes: usize,
    ) -> Result<Self, VectorError> {
        Self::build(dimension, clip, gamma, beta, None, nodes)
    }

    fn build(
        dimension: usize,
        clip: f64,
        gamma: f64,
        beta: f64,
        variance: Option<Variance>,
        nodes: usize,
    ) -> Result<Self, VectorError> {
        let bad = |what: String| Err(VectorError::Parameter(what));
        if dimension == 0 || dimension > MAX_PADDED_DIMENSION {
            return bad(format!("dimension {dimension}: need 1 ≤ d ≤ 2^26"));
        }
        if !(clip.is_finite() && clip > 0.0) {
            return bad(format!("clip bound c = {clip}: need a finite c > 0"));
        }
        if !(gamma.is_finite() && gamma > 0.0) {
            return bad(format!("grid γ = {gamma}: need a finite γ > 0"));
        }
        if !(0.0..=MAX_BETA).contains(&beta) {
            return bad(format!("β = {beta}: need 0 ≤ β ≤ {MAX_BETA}"));
        }
        if nodes == 0 {
            return bad("0 nodes: need at least one".into());
        }
        let params = Self { dimension, padded: dimension.next_power_of_two(), clip, gamma, beta, variance, nodes };
        let bound = params.norm_bound_sq();
        // ⌊Δ₂⌋ must fit an i64 coordinate with room for the sum: 2^62 is far beyond
        // any grid a real analysis uses.
        if !(bound.is_finite() && bound < 2f64.powi(124)) {
            return bad(format!("c/γ = {}: the grid is too fine for 64-bit words", clip / gamma));
        }
        let range = params.word_range();
        if range > i64::MAX as u128 {
            return Err(VectorError::WordOverflow { nodes, range });
        }
        Ok(params)
    }

    /// Picks γ and σ² for a target ρ per round (module doc, "What each parameter costs").
    ///
    /// - **γ**: the coarsest grid whose inflation Δ₂²/s² − 1 stays at most
    ///   `target.inflation`, with s = c/γ. With β > 0 the first term of Δ₂² gives the
    ///   inflation d'/(4s²) + b·(1/s + √d'/(2s²)), b = √(2 ln(1/β)): a quadratic in 1/s,
    ///   solved exactly. KLS21 pick γ instead from the bits a word has (their §4.4 and
    ///   `heuristic_scale_factor` in their code), because their words are 16–20 bits;
    ///   ours are 64, so the word never binds and the grid is chosen to cost (almost)
    ///   no privacy. Its accuracy cost, rounding variance ≤ γ²/4 per node and
    ///   coordinate against the noise's γ²σ², is then 1/(4σ²) of the noise, negligible
    ///   at the σ² this gives.
    /// - **σ²**: the smallest with Δ₂²/(2kσ²) ≤ ρ (Δ₂ doubled for
    ///   [`Neighbours::Replacement`]), rounded up to a whole number (or to a multiple of
    ///   2^−20 below 1), so the charge never exceeds the target.
    ///
    /// β is [`DEFAULT_BETA`]. Calibrate once (on the coordinator) and send γ as its f64
    /// bits with σ² as its fraction: `ln` is not bit-identical across platforms, so a
    /// node should check the charge of the parameters it is given, not recompute γ.
    pub fn calibrate(dimension: usize, clip: f64, nodes: usize, target: Target) -> Result<Self, VectorError> {
        let bad = |what: String| Err(VectorError::Parameter(what));
        if !(target.rho.is_finite() && target.rho > 0.0) {
            return bad(format!("target ρ = {}: need a finite ρ > 0", target.rho));
        }
        if !(target.inflation.is_finite() && target.inflation > 0.0) {
            return bad(format!("inflation {}: need a finite value > 0", target.inflation));
        }
        if target.honest == 0 || target.honest > nodes {
            return bad(format!("{} honest nodes of {nodes}: need 1 ≤ k ≤ n", target.honest));
        }
        if dimension == 0 || dimension > MAX_PADDED_DIMENSION {
            return bad(format!("dimension {dimension}: need 1 ≤ d ≤ 2^26"));
        }
        let beta = DEFAULT_BETA;
        let dp = dimension.next_power_of_two() as f64;
        let b = (2.0 * (1.0 / beta).ln()).sqrt();
        // A·u² + b·u − η = 0 for u = 1/s.
        let a = dp / 4.0 + b * dp.sqrt() / 2.0;
        let u = (-b + (b * b + 4.0 * a * target.inflation).sqrt()) / (2.0 * a);
        let gamma = clip * u;
        let noiseless = Self::build(dimension, clip, gamma, beta, None, nodes)?;
        let l2 = noiseless.sensitivity(target.neighbours).l2;
        let needed = l2 * l2 / (2.0 * target.honest as f64 * target.rho);
        let variance = if needed >= 1.0 {
            if needed > 2f64.powi(53) {
                return bad(format!("σ² = {needed:e} needed for ρ = {}: too large", target.rho));
            }
            Variance::integer(needed.ceil() as u64)?
        } else {
            Variance::new(((needed * 2f64.powi(20)).ceil() as u64).max(1), 1 << 20)?
        };
        Self::new(dimension, clip, gamma, beta, variance, nodes)
    }

    /// d, the length of the vectors nodes hold.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// d', the next power of two ≥ d: the length of the words nodes send.
    pub fn padded_dimension(&self) -> usize {
        self.padded
    }

    /// c, the ℓ2 clip bound (real units).
    pub fn clip(&self) -> f64 {
        self.clip
    }

    /// γ: the real grid is γ·ℤ.
    pub fn gamma(&self) -> f64 {
        self.gamma
    }

    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// Per-node σ² on the integer grid (`None` for noiseless test parameters).
    pub fn variance(&self) -> Option<&Variance> {
        self.variance.as_ref()
    }

    /// n, the nodes whose words are summed.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// s = c/γ, the clip bound on the grid.
    pub fn scaled_clip(&self) -> f64 {
        self.clip / self.gamma
    }

    /// Δ₂² (grid units), the bound conditional rounding enforces and the sensitivity
    /// Theorem 1 charges: min{s² + d'/4 + √(2 ln(1/β))·(s + √d'/2), (s + √d')²}, the
    /// first term only when β > 0.
    pub fn norm_bound_sq(&self) -> f64 {
        let s = self.scaled_clip();
        let root_d = (self.padded as f64).sqrt();
        let any_rounding = (s + root_d) * (s + root_d);
        if self.beta > 0.0 {
            let conditioned =
                s * s + self.padded as f64 / 4.0 + (2.0 * (1.0 / self.beta).ln()).sqrt() * (s + root_d / 2.0);
            conditioned.min(any_rounding)
        } else {
            any_rounding
        }
    }

    /// The largest ‖x̃‖₂² a rounded vector may have: ⌊Δ₂²⌋ (x̃ is an integer vector).
    fn norm_bound_floor(&self) -> u128 {
        self.norm_bound_sq().floor() as u128
    }

    /// The ℓ2 and ℓ1 sensitivity of one node's rounded vector on the grid: Δ₂ and
    /// Δ₁ = Δ₂·min(√d', Δ₂), both doubled for [`Neighbours::Replacement`].
    pub fn sensitivity(&self, neighbours: Neighbours) -> Sensitivity {
        let l2 = self.norm_bound_sq().sqrt();
        let l1 = l2 * (self.padded as f64).sqrt().min(l2);
        let factor = match neighbours {
            Neighbours::Contribution => 1.0,
            Neighbours::Replacement => 2.0,
        };
        Sensitivity { l1: factor * l1, l2: factor * l2 }
    }

    /// The largest magnitude of a word of the n nodes' sum, except with probability
    /// 2^−40 per word: n·⌊Δ₂⌋ (a rounded coordinate is at most the vector's norm) plus
    /// the noise tail of n nodes ([`accounting::noise_tail`]).
    pub fn word_range(&self) -> u128 {
        let per_node = self.norm_bound_sq().sqrt().floor() as u128;
        let tail = self.variance.as_ref().map_or(0, |v| accounting::noise_tail(self.nodes, v.as_f64()));
        self.nodes as u128 * per_node + u128::from(tail)
    }

    /// The bits a signed word needs so the sum never wraps (except with probability
    /// 2^−40 per word): the smallest b with 2·[`Params::word_range`] < 2^b. At most 64
    /// (the modulus m = 2^64), which [`Params::new`] checks.
    pub fn required_bits(&self) -> u32 {
        let r = self.word_range();
        128 - (2 * r).leading_zeros()
    }

    /// The charge of `rounds` releases with the noise of `honest` nodes counted on
    /// (KLS21 Thm 1 with Prop. 14, composed): ρ = T·Δ₂²/(2kσ²), ξ = T·τ·d'. A node
    /// computes it for the maximum number of rounds before the first.
    pub fn charge(&self, rounds: usize, honest: usize, neighbours: Neighbours) -> Result<Charge, VectorError> {
        let Some(variance) = &self.variance else {
            return Err(VectorError::Parameter("noiseless parameters give no privacy: nothing to charge".into()));
        };
        if honest == 0 || honest > self.nodes {
            return Err(VectorError::Parameter(format!("{honest} honest nodes of {}: need 1 ≤ k ≤ n", self.nodes)));
        }
        if rounds == 0 {
            return Err(VectorError::Parameter("0 rounds: need at least one".into()));
        }
        let one = Charge::distributed(self.sensitivity(neighbours), self.padded, honest, variance.as_f64());
        Ok(one.times(rounds))
    }

    fn check_dimension(&self, x: &[f64]) -> Result<(), VectorError> {
        if x.len() != self.dimension {
            return Err(VectorError::Dimension { expected: self.dimension, got: x.len() });
        }
        if let Some((index, &value)) = x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(VectorError::NonFinite { index, value });
        }
        Ok(())
    }
}

/// The randomized Hadamard rotation U = (1/√d')·H·D for one round: D's signs from the
/// round's seed by HMAC-SHA256 in counter mode (NIST SP 800-108r1 §4.1; ring): block j
/// is HMAC(seed, label ‖ d' ‖ j), 64-bit big-endian integers, 256 signs a block, bit i
/// of the stream (byte i/8, least significant bit first) set meaning −1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// true: −1.
    negative: Vec<bool>,
}

impl Rotation {
    /// The rotation of length `padded` (a power of two) for `seed`.
    pub fn new(seed: &RotationSeed, padded: usize) -> Result<Self, VectorError> {
        if !padded.is_power_of_two() || padded > MAX_PADDED_DIMENSION {
            return Err(VectorError::Parameter(format!("rotation length {padded}: need a power of two ≤ 2^26")));
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, &seed.0);
        let mut negative = Vec::with_capacity(padded);
        let mut block = 0u64;
        while negative.len() < padded {
            let mut ctx = hmac::Context::with_key(&key);
            ctx.update(ROTATION_LABEL);
            ctx.update(&(padded as u64).to_be_bytes());
            ctx.update(&block.to_be_bytes());
            let tag = ctx.sign();
            for byte in tag.as_ref() {
                for bit in 0..8 {
                    if negative.len() < padded {
                        negative.push(byte >> bit & 1 == 1);
                    }
                }
            }
            block += 1;
        }
        Ok(Self { negative })
    }

    pub fn len(&self) -> usize {
        self.negative.len()
    }

    pub fn is_empty(&self) -> bool {
        self.negative.is_empty()
    }

    /// v ← (1/√d')·H·D·v.
    pub fn apply(&self, v: &mut [f64]) {
        assert_eq!(v.len(), self.len(), "rotation of the wrong length (our bug)");
        for (x, &neg) in v.iter_mut().zip(&self.negative) {
            if neg {
                *x = -*x;
            }
        }
        normalised_hadamard(v);
    }

    /// v ← D·(1/√d')·H·v, the inverse (and transpose) of [`Rotation::apply`].
    pub fn invert(&self, v: &mut [f64]) {
        assert_eq!(v.len(), self.len(), "rotation of the wrong length (our bug)");
        normalised_hadamard(v);
        for (x, &neg) in v.iter_mut().zip(&self.negative) {
            if neg {
                *x = -*x;
            }
        }
    }
}

/// The fast Walsh–Hadamard transform in place, divided by √len (orthonormal and its
/// own inverse). `v.len()` is a power of two.
pub fn normalised_hadamard(v: &mut [f64]) {
    let n = v.len();
    let mut h = 1;
    while h < n {
        for chunk in v.chunks_exact_mut(2 * h) {
            let (lo, hi) = chunk.split_at_mut(h);
            for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
                let (x, y) = (*a, *b);
                *a = x + y;
                *b = x - y;
            }
        }
        h *= 2;
    }
    let scale = 1.0 / (n as f64).sqrt();
    v.iter_mut().for_each(|x| *x *= scale);
}

/// x clipped to ℓ2 norm `clip` (step 1), the norm computed without overflow.
pub fn clip_l2(x: &[f64], clip: f64) -> Vec<f64> {
    let largest = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if largest == 0.0 {
        return x.to_vec();
    }
    let norm = largest * x.iter().map(|v| (v / largest) * (v / largest)).sum::<f64>().sqrt();
    if norm <= clip { x.to_vec() } else { x.iter().map(|v| v * (clip / norm)).collect() }
}

/// ‖v‖₂² of an integer vector, exactly (saturating far beyond any bound in use).
pub fn norm_sq(v: &[i64]) -> u128 {
    v.iter().fold(0u128, |acc, &x| acc.saturating_add(u128::from(x.unsigned_abs()).pow(2)))
}

/// Steps 1–5: x clipped, padded, rotated, scaled and conditionally rounded — the node's
/// integer vector before noise, ‖x̃‖₂² ≤ ⌊Δ₂²⌋ always.
pub fn quantize(
    params: &Params,
    rotation: &Rotation,
    x: &[f64],
    entropy: &mut dyn Entropy,
) -> Result<Vec<i64>, VectorError> {
    params.check_dimension(x)?;
    if rotation.len() != params.padded {
        return Err(VectorError::Parameter(format!(
            "rotation of length {}, expected {}",
            rotation.len(),
            params.padded
        )));
    }
    let mut y = clip_l2(x, params.clip);
    y.resize(params.padded, 0.0);
    rotation.apply(&mut y);
    let scale = 1.0 / params.gamma;
    y.iter_mut().for_each(|v| *v *= scale);
    round_conditionally(&y, params.norm_bound_floor(), entropy)
}

/// Randomized rounding of every coordinate (up with probability equal to its fractional
/// part, from 53 uniform bits), repeated until ‖x̃‖₂² ≤ `bound` (step 5).
pub fn round_conditionally(y: &[f64], bound: u128, entropy: &mut dyn Entropy) -> Result<Vec<i64>, VectorError> {
    let floors: Vec<(i64, f64)> = y
        .iter()
        .map(|&v| {
            let f = v.floor();
            (f as i64, v - f)
        })
        .collect();
    let mut bytes = vec![0u8; 8 * y.len()];
    for _ in 0..MAX_ROUNDING_TRIES {
        entropy.fill(&mut bytes)?;
        let rounded: Vec<i64> = floors
            .iter()
            .zip(bytes.chunks_exact(8))
            .map(|(&(f, frac), b)| {
                // Unwrap safety: chunks_exact(8) yields 8-byte slices.
                let u = u64::from_le_bytes(b.try_into().unwrap()) >> 11;
                let uniform = u as f64 * (1.0 / (1u64 << 53) as f64);
                f + i64::from(uniform < frac)
            })
            .collect();
        if norm_sq(&rounded) <= bound {
            return Ok(rounded);
        }
    }
    Err(VectorError::Rounding(MAX_ROUNDING_TRIES))
}

/// The customer-level mechanism of one round (module doc, "One customer inside a
/// node's sum"): each customer's term clipped to ℓ2 ≤ c, summed, the sum projected onto
/// the ball of radius N·c, rotated, scaled by 1/γ and rounded without conditioning. The
/// node adds N_ℤ(0, σ²) to every word afterwards (the round's noise); the charge of a
/// round is `Charge::distributed(self.sensitivity(), d', k, σ²)`.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerSum {
    dimension: usize,
    padded: usize,
    clip: f64,
    gamma: f64,
    max_customers: u64,
}

/// The most customers per node a [`CustomerSum`] accepts: 2^24, as the exact moments
/// round (`fedcrm_model::standardise::LOG2_MAX_EXAMPLES`).
pub const MAX_CUSTOMERS: u64 = 1 << 24;

impl CustomerSum {
    /// Terms of `dimension` values, each customer's clipped to ℓ2 norm `clip`, on the grid
    /// γ·ℤ, at most `max_customers` customers per node. Refused when a number is out of
    /// range or one node's word bound ⌈N·c/γ⌉ reaches 2^62.
    pub fn new(dimension: usize, clip: f64, gamma: f64, max_customers: u64) -> Result<Self, VectorError> {
        let bad = |what: String| Err(VectorError::Parameter(what));
        if dimension == 0 || dimension > MAX_PADDED_DIMENSION {
            return bad(format!("dimension {dimension}: need 1 ≤ d ≤ 2^26"));
        }
        if !(clip.is_finite() && clip > 0.0) {
            return bad(format!("clip bound c = {clip}: need a finite c > 0"));
        }
        if !(gamma.is_finite() && gamma > 0.0) {
            return bad(format!("grid γ = {gamma}: need a finite γ > 0"));
        }
        if max_customers == 0 || max_customers > MAX_CUSTOMERS {
            return bad(format!("{max_customers} customers per node: need 1 ≤ N ≤ 2^24"));
        }
        let s = Self { dimension, padded: dimension.next_power_of_two(), clip, gamma, max_customers };
        let bound = max_customers as f64 * clip / gamma;
        if !(bound.is_finite() && bound < 2f64.powi(62)) {
            return bad(format!("N·c/γ = {bound:e}: the grid is too fine for 64-bit words"));
        }
        Ok(s)
    }

    /// The grid γ that makes one round cost at most `rho` with the noise of `honest`
    /// nodes of variance `variance` each: Δ₂ = s + √d' = √(2kσ²ρ) (a hair less, so
    /// floating point never rounds the charge above ρ), γ = c/s. Refused when σ² is too
    /// small for ρ to leave any room for the data (s ≤ √d').
    pub fn grid_for(dimension: usize, clip: f64, variance: f64, honest: usize, rho: f64) -> Result<f64, VectorError> {
        let root_d = (dimension.max(1).next_power_of_two() as f64).sqrt();
        let delta = (2.0 * honest.max(1) as f64 * variance * rho).sqrt() * (1.0 - 1e-9);
        let s = delta - root_d;
        if !(s.is_finite() && s > root_d) {
            return Err(VectorError::Parameter(format!(
                "σ² = {variance} per node with k = {honest} gives Δ₂ = {delta:.3} for ρ = {rho}, not above 2√d' = \
                 {}: more noise is needed",
                2.0 * root_d
            )));
        }
        Ok(clip / s)
    }

    /// d, the length of a customer's term.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// d', the words a node sends.
    pub fn padded_dimension(&self) -> usize {
        self.padded
    }

    pub fn clip(&self) -> f64 {
        self.clip
    }

    pub fn gamma(&self) -> f64 {
        self.gamma
    }

    pub fn max_customers(&self) -> u64 {
        self.max_customers
    }

    /// s = c/γ.
    pub fn scaled_clip(&self) -> f64 {
        self.clip / self.gamma
    }

    /// One customer's largest move of a node's rounded vector: Δ₂ = s + √d' (KLS21 Thm 1,
    /// second branch; module doc), Δ₁ = Δ₂·min(√d', Δ₂).
    pub fn sensitivity(&self) -> Sensitivity {
        let root_d = (self.padded as f64).sqrt();
        let l2 = self.scaled_clip() + root_d;
        Sensitivity { l1: l2 * root_d.min(l2), l2 }
    }

    /// The largest magnitude of one node's rounded coordinate: ⌈N·s⌉ (the projected sum
    /// has norm ≤ N·c, a rotated coordinate at most the norm, and rounding moves to the
    /// next integer at most).
    pub fn word_bound(&self) -> u64 {
        (self.max_customers as f64 * self.scaled_clip()).ceil() as u64
    }

    /// The node's side, before noise: each of `terms` clipped to ℓ2 ≤ c, summed, the sum
    /// projected onto the ball of radius N·c, padded, rotated, scaled and rounded.
    pub fn quantize(
        &self,
        seed: &RotationSeed,
        terms: &[Vec<f64>],
        entropy: &mut dyn Entropy,
    ) -> Result<Vec<i64>, VectorError> {
        let mut sum = vec![0.0f64; self.dimension];
        for term in terms {
            if term.len() != self.dimension {
                return Err(VectorError::Dimension { expected: self.dimension, got: term.len() });
            }
            if let Some((index, &value)) = term.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(VectorError::NonFinite { index, value });
            }
            for (s, v) in sum.iter_mut().zip(clip_l2(term, self.clip)) {
                *s += v;
            }
        }
        let mut y = clip_l2(&sum, self.max_customers as f64 * self.clip);
        y.resize(self.padded, 0.0);
        Rotation::new(seed, self.padded)?.apply(&mut y);
        let scale = 1.0 / self.gamma;
        y.iter_mut().for_each(|v| *v *= scale);
        // No conditioning: every rounding is accepted (the bound is the second branch).
        round_conditionally(&y, u128::MAX, entropy)
    }

    /// The coordinator's side: the wrapping sum of the nodes' noised words → the real
    /// sum of the clipped terms plus noise and rounding error, of length d.
    pub fn decode(&self, seed: &RotationSeed, sum: &[u64]) -> Result<Vec<f64>, VectorError> {
        decode_words(self.dimension, self.padded, self.gamma, seed, sum)
    }
}

/// The node's side (steps 1–7): the d' words it masks and sends.
pub fn encode(
    params: &Params,
    seed: &RotationSeed,
    x: &[f64],
    entropy: &mut dyn Entropy,
) -> Result<Vec<u64>, VectorError> {
    params.check_dimension(x)?;
    let rotation = Rotation::new(seed, params.padded)?;
    let rounded = quantize(params, &rotation, x, entropy)?;
    let Some(variance) = &params.variance else {
        return Ok(rounded.into_iter().map(|v| v as u64).collect());
    };
    let gaussian = DiscreteGaussian::new(variance.clone());
    rounded
        .into_iter()
        .map(|v| {
            let noised = v.checked_add(gaussian.sample(entropy)?).ok_or(DpError::Overflow)?;
            // Two's complement: the word the secure sum adds mod 2^64.
            Ok(noised as u64)
        })
        .collect()
}

/// The coordinator's side: the unmasked wrapping sum of the nodes' words → the real
/// vector Σᵢ clip(xᵢ) + noise + rounding error, of length d.
pub fn decode(params: &Params, seed: &RotationSeed, sum: &[u64]) -> Result<Vec<f64>, VectorError> {
    decode_words(params.dimension, params.padded, params.gamma, seed, sum)
}

/// Words as i64 × γ, the inverse rotation, the padding dropped.
fn decode_words(
    dimension: usize,
    padded: usize,
    gamma: f64,
    seed: &RotationSeed,
    sum: &[u64],
) -> Result<Vec<f64>, VectorError> {
    if sum.len() != padded {
        return Err(VectorError::Words { expected: padded, got: sum.len() });
    }
    let rotation = Rotation::new(seed, padded)?;
    let mut v: Vec<f64> = sum.iter().map(|&w| (w as i64) as f64 * gamma).collect();
    rotation.invert(&mut v);
    v.truncate(dimension);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hadamard_matrix_of_four() {
        // Columns of H₄/2 applied to the basis vectors.
        let want = [[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0], [1.0, -1.0, -1.0, 1.0]];
        for (i, col) in want.iter().enumerate() {
            let mut e = [0.0; 4];
            e[i] = 1.0;
            normalised_hadamard(&mut e);
            for (got, w) in e.iter().zip(col) {
                assert!((got - w / 2.0).abs() < 1e-15, "column {i}: {e:?}");
            }
        }
    }

    #[test]
    fn the_bound_takes_the_smaller_term_and_only_the_second_without_conditioning() {
        let p = Params::noiseless_for_testing(1000, 10.0, 0.01, DEFAULT_BETA, 3).unwrap();
        let (s, dp) = (1000.0f64, 1024.0f64);
        let first = s * s + dp / 4.0 + (s + dp.sqrt() / 2.0); // √(2 ln e^{1/2}) = 1
        assert!((p.norm_bound_sq() - first).abs() < 1e-6 * first);
        assert!(first < (s + dp.sqrt()).powi(2));
        let p0 = Params::noiseless_for_testing(1000, 10.0, 0.01, 0.0, 3).unwrap();
        assert!((p0.norm_bound_sq() - (s + 32.0).powi(2)).abs() < 1e-6);
        // A small β (b = √(2 ln 10^10) ≈ 6.8) and d' = 4: the second term is smaller.
        let strict = Params::noiseless_for_testing(4, 1.0, 1.0, 1e-10, 3).unwrap();
        assert!((strict.norm_bound_sq() - 9.0).abs() < 1e-9, "{}", strict.norm_bound_sq());
    }

    #[test]
    fn required_bits_cover_the_range_doubled() {
        let p = Params::noiseless_for_testing(4, 1.0, 1.0, 0.0, 1).unwrap();
        // Δ₂ = 1 + 2 = 3; range 3; 2·3 = 6 < 2^3.
        assert_eq!((p.word_range(), p.required_bits()), (3, 3));
    }

    /// Known answer, computed independently with Python's `hmac` (key 0^32, message
    /// label ‖ be64(16) ‖ be64(0), tag 2a7cc169…): the signs of d' = 16, bit i of the tag
    /// least significant first, 1 meaning −1. Nodes and coordinators of any build agree.
    #[test]
    fn the_rotation_signs_match_an_independent_hmac() {
        let r = Rotation::new(&RotationSeed([0; 32]), 16).unwrap();
        let got: String = r.negative.iter().map(|&n| if n { '-' } else { '+' }).collect();
        assert_eq!(got, "+-+-+-++++-----+");
    }

    /// Entropy from a counter through SHA-256: deterministic, uniform enough for tests.
    struct Counter(u64);
    impl Entropy for Counter {
        fn fill(&mut self, dest: &mut [u8]) -> Result<(), DpError> {
            for chunk in dest.chunks_mut(32) {
                self.0 += 1;
                let d = ring::digest::digest(&ring::digest::SHA256, &self.0.to_le_bytes());
                chunk.copy_from_slice(&d.as_ref()[..chunk.len()]);
            }
            Ok(())
        }
    }

    #[test]
    fn a_customer_sum_decodes_to_the_sum_of_clipped_terms_and_charges_s_plus_root_d() {
        let m = CustomerSum::new(5, 2.0, 0.01, 1000).unwrap();
        assert_eq!(m.padded_dimension(), 8);
        let s = m.sensitivity();
        assert!((s.l2 - (200.0 + 8f64.sqrt())).abs() < 1e-9, "{s:?}");
        assert_eq!(m.word_bound(), 200_000);
        // One term longer than c (clipped to norm 2), one inside.
        let terms = vec![vec![3.0, 4.0, 0.0, 0.0, 0.0], vec![0.5, 0.0, -0.5, 1.0, 0.25]];
        let want = [1.2 + 0.5, 1.6, -0.5, 1.0, 0.25];
        let seed = RotationSeed([7; 32]);
        let q = m.quantize(&seed, &terms, &mut Counter(0)).unwrap();
        assert_eq!(q.len(), 8);
        assert!(q.iter().all(|v| v.unsigned_abs() <= m.word_bound()));
        let words: Vec<u64> = q.iter().map(|&v| v as u64).collect();
        let got = m.decode(&seed, &words).unwrap();
        for (g, w) in got.iter().zip(want) {
            // Rounding: < 1 grid step per coordinate, ≤ γ·√d' in norm.
            assert!((g - w).abs() < 0.01 * 8f64.sqrt(), "{got:?}");
        }
    }

    #[test]
    fn a_node_with_more_customers_than_the_bound_shrinks_its_sum_into_the_ball() {
        let m = CustomerSum::new(2, 1.0, 0.5, 3).unwrap();
        let terms = vec![vec![1.0, 0.0]; 10];
        let q = m.quantize(&RotationSeed([1; 32]), &terms, &mut Counter(9)).unwrap();
        // ‖sum‖ = 10 > N·c = 3: projected to norm 3, s = 2, so each coordinate ≤ ⌈6⌉.
        assert!(q.iter().all(|v| v.unsigned_abs() <= 6), "{q:?}");
        let n = norm_sq(&q) as f64;
        assert!((n.sqrt() - 6.0).abs() <= 2f64.sqrt() + 1e-9, "{q:?}");
    }

    /// The sensitivity argument's core, exhaustively on a grid of values: with a shared
    /// uniform U, ⌊y + U⌋ − ⌊y' + U⌋ is less than |y − y'| + 1 in magnitude.
    #[test]
    fn shared_uniform_roundings_of_neighbours_differ_by_less_than_the_gap_plus_one() {
        for i in -40..40 {
            for j in -40..40 {
                let (y, z) = (f64::from(i) * 0.173, f64::from(j) * 0.131);
                for k in 0..50 {
                    let u = f64::from(k) / 50.0;
                    let d = (y + u).floor() - (z + u).floor();
                    assert!(d.abs() < (y - z).abs() + 1.0, "{y} {z} {u}");
                }
            }
        }
    }

    #[test]
    fn the_grid_for_a_target_rho_charges_at_most_rho() {
        let (var, k, rho) = (1e6, 2, 0.01);
        let gamma = CustomerSum::grid_for(137, 5.0, var, k, rho).unwrap();
        let m = CustomerSum::new(137, 5.0, gamma, 1 << 20).unwrap();
        let c = Charge::distributed(m.sensitivity(), m.padded_dimension(), k, var);
        assert!(c.rho <= rho && c.rho > 0.999 * rho, "{c:?}");
        let e = CustomerSum::grid_for(137, 5.0, 16.0, 1, 0.01).unwrap_err();
        assert!(e.to_string().contains("more noise"), "{e}");
        assert!(CustomerSum::new(4, 1.0, 1e-30, 1 << 24).is_err());
        assert!(CustomerSum::new(4, 1.0, 1.0, 0).is_err());
    }

    #[test]
    fn the_default_beta_is_exp_minus_one_half() {
        assert!((DEFAULT_BETA - (-0.5f64).exp()).abs() < 1e-16);
    }
}
