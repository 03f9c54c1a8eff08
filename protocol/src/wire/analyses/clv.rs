//! Issue 13: the customer-lifetime-value fit's query. One CLV analysis is a chain of
//! rounds over one population, each one evaluation of a likelihood for the coordinator's
//! optimiser: every node's sums of the BG/NBD (then Gamma-Gamma) log-likelihood and its
//! gradient at the log-parameters the round carries, over its customers' calibration
//! summaries (`fedcrm_model::clv`). The calibration ends at the analysis's reference
//! date; every round repeats the time unit and the cohort.
//!
//! The words are fixed-point reals (`fedcrm_model::fixed::CLV`, scale 2^20, per-term
//! bound 2^20) in two's complement, and the customer count: a round's range is signed,
//! one customer adds at most 2^[`CLV_TERM_BITS`] to a word, and the per-node bound on
//! customers is lowered until the sum over the invited nodes fits 64-bit words.
//!
//! Under differential privacy ([`ClvDp`]) each customer's ln L and gradient are clamped to
//! the round's stated bounds and scaled to [−1, 1] (`fedcrm_model::clv::sums::node_terms`),
//! then summed, noised and rounded by the customer-level mechanism churn's Newton rounds
//! use ([`ModelDp`], `fedcrm_dp::vector::CustomerSum`): the same plan (most rounds, per-round
//! cap, the whole checked against the budget before the first round) and the same
//! per-node bound N.

use fedcrm_analysis::date::{format_date, parse_date};
use fedcrm_analysis::rules::Coverage;
use fedcrm_analysis::width::SumRange;
use fedcrm_dp::accounting::Sensitivity;
use fedcrm_dp::vector::CustomerSum;
use fedcrm_model::clv::summary::TimeUnit;
use fedcrm_model::clv::sums::{Likelihood, TermClips};
use time::Date;

use super::Query;
use super::churn::{ModelDp, model_dp_from_pb, model_dp_pb};
use crate::pb;
use crate::wire::{WireError, field};

/// Bits of the largest magnitude one customer adds to a word: 2^20 at scale 2^20.
pub const CLV_TERM_BITS: u32 = 40;

/// The largest |log-parameter| a round may carry: e^±25 spans every plausible rate,
/// shape and spend scale, and keeps every node's ln Γ and ψ finite.
pub const MAX_LOG_PARAM: f64 = 25.0;

/// What every round of one CLV analysis repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClvSetup {
    pub unit: TimeUnit,
    /// Customers whose first purchase falls in this range (inclusive); `None`: all.
    pub first_purchase: Option<(Date, Date)>,
}

/// The largest per-customer bound a DP round may state: far above any term at
/// log-parameters within ±[`MAX_LOG_PARAM`] that matters, and small enough that a node's
/// scaled terms stay meaningful.
pub const MAX_TERM_CLIP: f64 = 1e6;

/// A CLV round under differential privacy: the mechanism and plan (as a churn Newton
/// round's), and the stated bounds on each customer's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct ClvDp {
    pub mechanism: ModelDp,
    pub clips: TermClips,
}

/// One CLV round's query: which likelihood, at which log-parameters.
#[derive(Debug, Clone)]
pub struct ClvRound {
    pub setup: ClvSetup,
    pub likelihood: Likelihood,
    pub log_params: Vec<f64>,
    /// Under differential privacy (`None`: an exact round).
    pub dp: Option<ClvDp>,
}

impl ClvRound {
    /// Under differential privacy, the round's mechanism (checked when parsed, so it
    /// builds): terms of 2 + d reals.
    pub fn mechanism(&self) -> Option<CustomerSum> {
        self.dp.as_ref().and_then(|dp| dp.mechanism.mechanism(self.likelihood.words()).ok())
    }
}

/// Bit-for-bit (every parameter is finite, checked when parsed; the DP plan's reals too).
impl PartialEq for ClvRound {
    fn eq(&self, other: &Self) -> bool {
        self.setup == other.setup
            && self.likelihood == other.likelihood
            && self.log_params.len() == other.log_params.len()
            && self.log_params.iter().zip(&other.log_params).all(|(a, b)| a.to_bits() == b.to_bits())
            && self.dp == other.dp
    }
}

impl Eq for ClvRound {}

impl Query for ClvRound {
    fn name(&self) -> &'static str {
        match self.likelihood {
            Likelihood::BgNbd => "clv-bg-nbd",
            Likelihood::GammaGamma => "clv-gamma-gamma",
        }
    }

    /// An exact round's words, one per real; under DP the mechanism's padded d'.
    fn vector_len(&self) -> usize {
        match self.mechanism() {
            Some(m) => m.padded_dimension(),
            None => self.likelihood.words(),
        }
    }

    /// Exact: one customer adds at most 2^[`CLV_TERM_BITS`] to a word. Under DP a node's
    /// rounded coordinate is at most ⌈N·c/γ⌉ ([`CustomerSum::word_bound`]).
    fn range(&self, max_per_node: u64) -> SumRange {
        if let Some(m) = self.mechanism() {
            let bound = CustomerSum::new(m.dimension(), m.clip(), m.gamma(), max_per_node.max(1))
                .map_or(u64::MAX, |m| m.word_bound());
            return SumRange { max_abs: bound, signed: true, noise_tail: 0 };
        }
        let max_abs = u64::try_from(u128::from(max_per_node) << CLV_TERM_BITS).unwrap_or(u64::MAX);
        SumRange { max_abs, signed: true, noise_tail: 0 }
    }

    /// The most customers per node such that the sum over `invited` nodes fits signed
    /// 64-bit words, pinned by the query (as churn's, so HQ cannot probe a node's size
    /// with a bound of its choosing).
    /// Under DP: the signed N (a node with more customers shrinks its sum, never refuses).
    fn per_node_bound(&self, _configured: u64, invited: usize) -> u64 {
        if let Some(dp) = &self.dp {
            return dp.mechanism.max_customers;
        }
        ((1u64 << (63 - CLV_TERM_BITS)) - 1) / invited.max(1) as u64
    }

    /// Under DP: one customer's largest move of a node's rounded vector, Δ₂ = c/γ + √d'
    /// ([`CustomerSum::sensitivity`]). Exact rounds are not charged; their figure is one
    /// customer's largest move of the encoded words, for the record.
    fn sensitivity(&self) -> Sensitivity {
        if let Some(m) = self.mechanism() {
            return m.sensitivity();
        }
        let term = 2f64.powi(CLV_TERM_BITS as i32);
        let words = self.vector_len() as f64;
        Sensitivity { l1: words * term, l2: words.sqrt() * term }
    }

    /// Purchases up to the calibration end (the reference date): the customer base the
    /// RFM and churn analyses read, so the same differencing family.
    fn coverage(&self, reference: Date) -> Coverage {
        Coverage { family: "rfm".into(), from: None, to: reference }
    }

    /// Only with the customer-level mechanism: noise on fixed-point words without
    /// per-customer clipping would protect nobody.
    fn noise_supported(&self) -> bool {
        self.dp.is_some()
    }

    /// A round with the mechanism is a noised round, or none at all.
    fn noise_required(&self) -> bool {
        self.dp.is_some()
    }
}

/// The cohort a round names: both ends or neither, in order, whole calendar months.
pub fn cohort(c: &pb::ClvRound) -> Result<Option<(Date, Date)>, WireError> {
    Ok(match (c.first_purchase_from.is_empty(), c.first_purchase_to.is_empty()) {
        (true, true) => None,
        (false, false) => {
            let from =
                parse_date(&c.first_purchase_from).map_err(|e| field("clv.first_purchase_from", e.to_string()))?;
            let to = parse_date(&c.first_purchase_to).map_err(|e| field("clv.first_purchase_to", e.to_string()))?;
            if from > to {
                return Err(field("clv.first_purchase_from", "is after first_purchase_to"));
            }
            // Whole calendar months only, so that two cohorts HQ can ask for differ by whole
            // months of first purchases, never by a day's (attack review of issue 13, H2).
            let last_of_month = to.month().length(to.year()) == to.day();
            if from.day() != 1 || !last_of_month {
                return Err(field(
                    "clv.first_purchase_from",
                    "the cohort must be whole calendar months: from the 1st of a month to the last day of a month",
                ));
            }
            Some((from, to))
        }
        _ => return Err(field("clv.first_purchase_from", "the cohort needs both ends or neither")),
    })
}

pub(super) fn clv_from_pb(c: &pb::ClvRound) -> Result<ClvRound, WireError> {
    let unit: TimeUnit = c.time_unit.parse().map_err(|e: String| field("clv.time_unit", e))?;
    let first_purchase = cohort(c)?;
    let likelihood = match c.likelihood.as_str() {
        "bg-nbd" => Likelihood::BgNbd,
        "gamma-gamma" => Likelihood::GammaGamma,
        other => return Err(field("clv.likelihood", format!("{other:?}: use bg-nbd or gamma-gamma"))),
    };
    if c.log_params.len() != likelihood.dims() {
        return Err(field(
            "clv.log_params",
            format!("{} values, the model has {}", c.log_params.len(), likelihood.dims()),
        ));
    }
    if c.log_params.iter().any(|v| !v.is_finite() || v.abs() > MAX_LOG_PARAM) {
        return Err(field("clv.log_params", format!("every log-parameter must be finite and within ±{MAX_LOG_PARAM}")));
    }
    let dp = match &c.dp {
        None => None,
        Some(dp) => Some(ClvDp { mechanism: model_dp_from_pb(dp, likelihood.words())?, clips: clips(c, likelihood)? }),
    };
    Ok(ClvRound { setup: ClvSetup { unit, first_purchase }, likelihood, log_params: c.log_params.clone(), dp })
}

/// A DP round's stated bounds: one per gradient component, each finite, positive and at
/// most [`MAX_TERM_CLIP`].
fn clips(c: &pb::ClvRound, likelihood: Likelihood) -> Result<TermClips, WireError> {
    let ok = |v: f64| v.is_finite() && v > 0.0 && v <= MAX_TERM_CLIP;
    if !ok(c.log_likelihood_clip) {
        return Err(field("clv.log_likelihood_clip", format!("must be finite, positive and at most {MAX_TERM_CLIP}")));
    }
    if c.gradient_clip.len() != likelihood.dims() || !c.gradient_clip.iter().all(|v| ok(*v)) {
        return Err(field(
            "clv.gradient_clip",
            format!("needs {} bounds, each finite, positive and at most {MAX_TERM_CLIP}", likelihood.dims()),
        ));
    }
    Ok(TermClips { log_likelihood: c.log_likelihood_clip, gradient: c.gradient_clip.clone() })
}

pub(super) fn clv_pb(c: &ClvRound) -> pb::ClvRound {
    let (from, to) =
        c.setup.first_purchase.map_or((String::new(), String::new()), |(f, t)| (format_date(f), format_date(t)));
    pb::ClvRound {
        time_unit: c.setup.unit.as_str().into(),
        first_purchase_from: from,
        first_purchase_to: to,
        likelihood: match c.likelihood {
            Likelihood::BgNbd => "bg-nbd".into(),
            Likelihood::GammaGamma => "gamma-gamma".into(),
        },
        log_params: c.log_params.clone(),
        dp: c.dp.as_ref().map(|dp| model_dp_pb(&dp.mechanism)),
        log_likelihood_clip: c.dp.as_ref().map_or(0.0, |dp| dp.clips.log_likelihood),
        gradient_clip: c.dp.as_ref().map_or(vec![], |dp| dp.clips.gradient.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn a_round_round_trips_and_out_of_range_parameters_are_refused() {
        let round = ClvRound {
            setup: ClvSetup {
                unit: TimeUnit::Weeks,
                first_purchase: Some((date!(1997 - 01 - 01), date!(1997 - 03 - 31))),
            },
            likelihood: Likelihood::BgNbd,
            log_params: vec![-1.4, 1.5, -0.3, 0.8],
            dp: None,
        };
        assert_eq!(clv_from_pb(&clv_pb(&round)).unwrap(), round);
        let mut pb = clv_pb(&round);
        pb.log_params[2] = 26.0;
        assert!(matches!(clv_from_pb(&pb), Err(WireError::Field { field: "clv.log_params", .. })));
        pb.log_params = vec![0.0; 3];
        assert!(matches!(clv_from_pb(&pb), Err(WireError::Field { field: "clv.log_params", .. })));
        let mut pb = clv_pb(&round);
        pb.first_purchase_to = "1997-03-30".into();
        let e = clv_from_pb(&pb).unwrap_err().to_string();
        assert!(e.contains("whole calendar months"), "{e}");
        pb.first_purchase_to = "1997-02-28".into();
        pb.first_purchase_from = "1997-01-02".into();
        assert!(clv_from_pb(&pb).unwrap_err().to_string().contains("whole calendar months"));
        let mut pb = clv_pb(&round);
        pb.first_purchase_to.clear();
        assert!(matches!(clv_from_pb(&pb), Err(WireError::Field { field: "clv.first_purchase_from", .. })));
        let mut pb = clv_pb(&round);
        pb.time_unit = "months".into();
        assert!(matches!(clv_from_pb(&pb), Err(WireError::Field { field: "clv.time_unit", .. })));
        assert_eq!(round.vector_len(), 6);
        assert!(!round.noise_supported());
        // Five nodes: each may hold up to (2^23 − 1)/5 customers.
        assert_eq!(round.per_node_bound(0, 5), ((1 << 23) - 1) / 5);
    }

    /// Under DP a round carries the mechanism, the plan and the stated bounds; it takes
    /// noise, its vector is the mechanism's padded 8 words, its per-node bound the
    /// signed N and its sensitivity the mechanism's; a bound that is not finite and
    /// positive, or one per parameter, is refused.
    #[test]
    fn a_dp_round_carries_its_mechanism_and_stated_bounds_and_bad_bounds_are_refused() {
        let mechanism = ModelDp {
            clip: 6f64.sqrt(),
            gamma: 1e-3,
            rotation_seed: [7; 32],
            max_rounds: 34,
            max_customers: 1 << 20,
            round_rho: 0.01,
            round_xi: 0.0,
        };
        let clips = TermClips { log_likelihood: 50.0, gradient: vec![1.5, 3.0, 2.5, 0.75] };
        let round = ClvRound {
            setup: ClvSetup { unit: TimeUnit::Weeks, first_purchase: None },
            likelihood: Likelihood::BgNbd,
            log_params: vec![0.0; 4],
            dp: Some(ClvDp { mechanism, clips }),
        };
        assert_eq!(clv_from_pb(&clv_pb(&round)).unwrap(), round);
        assert!(round.noise_supported());
        assert_eq!(round.vector_len(), 8);
        assert_eq!(round.per_node_bound(1_000, 5), 1 << 20);
        let m = round.mechanism().unwrap();
        assert_eq!(round.sensitivity().l2.to_bits(), m.sensitivity().l2.to_bits());
        assert!(round.range(1 << 20).signed);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 2e6] {
            let mut pb = clv_pb(&round);
            pb.log_likelihood_clip = bad;
            assert!(matches!(clv_from_pb(&pb), Err(WireError::Field { field: "clv.log_likelihood_clip", .. })));
            let mut pb = clv_pb(&round);
            pb.gradient_clip[1] = bad;
            assert!(matches!(clv_from_pb(&pb), Err(WireError::Field { field: "clv.gradient_clip", .. })));
        }
        let mut pb = clv_pb(&round);
        pb.gradient_clip.pop();
        assert!(matches!(clv_from_pb(&pb), Err(WireError::Field { field: "clv.gradient_clip", .. })));
        let mut pb = clv_pb(&round);
        pb.dp.as_mut().unwrap().max_rounds = 0;
        assert!(matches!(clv_from_pb(&pb), Err(WireError::Field { field: "dp.max_rounds", .. })));
    }
}
