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
//! Exact only in this version (no noise): [`Query::noise_supported`] says no.

use fedcrm_analysis::date::{format_date, parse_date};
use fedcrm_analysis::rules::Coverage;
use fedcrm_analysis::width::SumRange;
use fedcrm_dp::accounting::Sensitivity;
use fedcrm_model::clv::summary::TimeUnit;
use fedcrm_model::clv::sums::Likelihood;
use time::Date;

use super::Query;
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

/// One CLV round's query: which likelihood, at which log-parameters.
#[derive(Debug, Clone)]
pub struct ClvRound {
    pub setup: ClvSetup,
    pub likelihood: Likelihood,
    pub log_params: Vec<f64>,
}

/// Bit-for-bit (every parameter is finite, checked when parsed).
impl PartialEq for ClvRound {
    fn eq(&self, other: &Self) -> bool {
        self.setup == other.setup
            && self.likelihood == other.likelihood
            && self.log_params.len() == other.log_params.len()
            && self.log_params.iter().zip(&other.log_params).all(|(a, b)| a.to_bits() == b.to_bits())
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

    fn vector_len(&self) -> usize {
        self.likelihood.words()
    }

    fn range(&self, max_per_node: u64) -> SumRange {
        let max_abs = u64::try_from(u128::from(max_per_node) << CLV_TERM_BITS).unwrap_or(u64::MAX);
        SumRange { max_abs, signed: true, noise_tail: 0 }
    }

    /// The most customers per node such that the sum over `invited` nodes fits signed
    /// 64-bit words, pinned by the query (as churn's, so HQ cannot probe a node's size
    /// with a bound of its choosing).
    fn per_node_bound(&self, _configured: u64, invited: usize) -> u64 {
        ((1u64 << (63 - CLV_TERM_BITS)) - 1) / invited.max(1) as u64
    }

    /// Exact rounds are not charged; the figure is one customer's largest move of the
    /// encoded words, for the record.
    fn sensitivity(&self) -> Sensitivity {
        let term = 2f64.powi(CLV_TERM_BITS as i32);
        let words = self.vector_len() as f64;
        Sensitivity { l1: words * term, l2: words.sqrt() * term }
    }

    /// Purchases up to the calibration end (the reference date): the customer base the
    /// RFM and churn analyses read, so the same differencing family.
    fn coverage(&self, reference: Date) -> Coverage {
        Coverage { family: "rfm".into(), from: None, to: reference }
    }

    /// Not in this version: a noised likelihood sum needs per-customer clipping.
    fn noise_supported(&self) -> bool {
        false
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
    Ok(ClvRound { setup: ClvSetup { unit, first_purchase }, likelihood, log_params: c.log_params.clone() })
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
}
