//! The node's face of the customer-lifetime-value fit (issue 13): every round of a
//! `clv-model` analysis evaluates one likelihood — BG/NBD, then Gamma-Gamma — at the
//! log-parameters the coordinator's optimiser chose, over this node's customers'
//! calibration summaries (`fedcrm_model::clv::summary`: the calibration ends at the
//! analysis's reference date; same-day purchases are one transaction). What leaves is
//! the sums as words: how many customers, Σ ln L and the gradient's sum.
//!
//! Classification: a BG/NBD round starts a `clv-model` analysis; later rounds continue
//! it only with the same time unit and cohort, BG/NBD rounds until the first
//! Gamma-Gamma round and Gamma-Gamma rounds after it, at most `[policy.clv] max_rounds`
//! rounds in all.

use fedcrm_model::clv::summary::{Calibration, Summary};
use fedcrm_model::clv::sums::{Likelihood, node_sums};
use fedcrm_protocol::wire::AnalysisKind;
use fedcrm_protocol::wire::clv::ClvRound;
use serde::{Deserialize, Serialize};
use time::Date;
use zeroize::Zeroizing;

use super::{Contribution, LocalData, NodeQuery};
use crate::policy::Policy;

/// A CLV analysis: BG/NBD evaluations, then Gamma-Gamma evaluations.
pub const CLV_MODEL: &str = "clv-model";

/// `[policy.clv]`: what this node accepts of CLV fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClvLimits {
    /// A node with fewer customers in the calibration window (in the cohort) does not
    /// take part (its refusal says so). Default 50.
    pub min_customers: u64,
    /// Most rounds of one CLV analysis: each is another sum over this node's customers
    /// at parameters HQ chooses. An honest fit of both models takes 40 to 80. Default 200.
    pub max_rounds: u32,
}

impl Default for ClvLimits {
    fn default() -> Self {
        Self { min_customers: 50, max_rounds: 200 }
    }
}

/// The round's calibration window: it ends at the analysis's reference date.
fn calibration(round: &ClvRound, reference: Date) -> Calibration {
    Calibration { end: reference, unit: round.setup.unit, first_purchase: round.setup.first_purchase }
}

impl NodeQuery for ClvRound {
    fn starts(&self) -> &'static str {
        CLV_MODEL
    }

    fn check_limits(&self, _policy: &Policy) -> Result<(), String> {
        Ok(())
    }

    fn first_round(&self) -> Result<(), String> {
        match self.likelihood {
            Likelihood::BgNbd => Ok(()),
            Likelihood::GammaGamma => Err("a CLV analysis starts with its BG/NBD rounds".into()),
        }
    }

    fn continues(
        &self,
        kind: &'static str,
        previous: &AnalysisKind,
        rounds: u32,
        policy: &Policy,
    ) -> Result<(), String> {
        let AnalysisKind::Clv(prev) = previous else {
            return Err(format!("a CLV round does not follow an {kind} analysis"));
        };
        if prev.setup != self.setup {
            return Err("its time unit or cohort differs from the analysis's first round".into());
        }
        if prev.likelihood == Likelihood::GammaGamma && self.likelihood == Likelihood::BgNbd {
            return Err("the BG/NBD rounds are over once the Gamma-Gamma rounds began".into());
        }
        self.within_rounds(rounds, policy)
    }

    fn within_rounds(&self, rounds: u32, policy: &Policy) -> Result<(), String> {
        let max = policy.clv.max_rounds;
        if rounds >= max {
            return Err(format!(
                "this node takes part in at most {max} rounds of one CLV analysis ([policy.clv] max_rounds)"
            ));
        }
        Ok(())
    }

    fn describe(&self, at: &str) -> String {
        let model = match self.likelihood {
            Likelihood::BgNbd => "BG/NBD purchase-and-dropout",
            Likelihood::GammaGamma => "Gamma-Gamma spend",
        };
        let cohort = self.setup.first_purchase.map_or(String::new(), |(from, to)| {
            format!(
                ", first purchase {}..{}",
                fedcrm_analysis::date::format_date(from),
                fedcrm_analysis::date::format_date(to)
            )
        });
        format!(
            "customer lifetime value: the {model} model's log-likelihood and gradient sums at HQ's trial parameters, \
             over customers with purchases up to {at} (time in {}{cohort})",
            self.setup.unit.as_str()
        )
    }

    fn contribute(&self, data: &mut LocalData<'_>, reference: Date) -> Result<Contribution, String> {
        let cal = calibration(self, reference);
        let summaries: Vec<Summary> = data.histories().iter().filter_map(|h| cal.summary(&h.txns)).collect();
        let eligible = summaries.len();
        let sums = node_sums(self.likelihood, &self.log_params, &summaries);
        // A failure names no value of this node's data.
        let vector = sums.to_words().map_err(|_| {
            "the CLV computation failed on this node's data (a value out of the encoding's range); refusing".to_string()
        })?;
        if sums.clipped > 0 {
            tracing::warn!(clipped = sums.clipped, "clv: customers' terms clipped to the encoding's bound");
        }
        Ok(Contribution { vector: Zeroizing::new(vector), customers: eligible, eligible })
    }

    /// Fewer customers in the calibration window than `[policy.clv] min_customers`: this
    /// node does not take part.
    fn check_contribution(&self, c: &Contribution, policy: &Policy) -> Result<(), String> {
        let min = policy.clv.min_customers;
        if (c.eligible as u64) < min {
            return Err(format!(
                "policy: this node has fewer customers than [policy.clv] min_customers = {min} in the calibration \
                 window, so it does not take part in the CLV fit"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedcrm_model::clv::summary::TimeUnit;
    use fedcrm_protocol::wire::clv::ClvSetup;
    use time::macros::date;

    fn round(likelihood: Likelihood, unit: TimeUnit) -> ClvRound {
        ClvRound {
            setup: ClvSetup { unit, first_purchase: None },
            likelihood,
            log_params: vec![0.0; likelihood.dims()],
        }
    }

    /// BG/NBD starts the analysis, Gamma-Gamma follows, never the other way round; the
    /// setup holds for every round and `[policy.clv] max_rounds` bounds them.
    #[test]
    fn a_clv_analysis_runs_bg_nbd_then_gamma_gamma_over_one_setup_within_its_rounds() {
        let policy = Policy::default();
        let (bg, gg) = (round(Likelihood::BgNbd, TimeUnit::Weeks), round(Likelihood::GammaGamma, TimeUnit::Weeks));
        assert_eq!(bg.first_round(), Ok(()));
        assert!(gg.first_round().unwrap_err().contains("starts with its BG/NBD rounds"));
        let after_bg = AnalysisKind::Clv(Box::new(bg.clone()));
        let after_gg = AnalysisKind::Clv(Box::new(gg.clone()));
        assert_eq!(bg.continues(CLV_MODEL, &after_bg, 5, &policy), Ok(()));
        assert_eq!(gg.continues(CLV_MODEL, &after_bg, 5, &policy), Ok(()));
        assert_eq!(gg.continues(CLV_MODEL, &after_gg, 5, &policy), Ok(()));
        assert!(bg.continues(CLV_MODEL, &after_gg, 5, &policy).unwrap_err().contains("are over"));
        let days = round(Likelihood::BgNbd, TimeUnit::Days);
        assert!(days.continues(CLV_MODEL, &after_bg, 5, &policy).unwrap_err().contains("time unit or cohort"));
        let cohort = ClvRound {
            setup: ClvSetup {
                unit: TimeUnit::Weeks,
                first_purchase: Some((date!(1997 - 01 - 01), date!(1997 - 01 - 31))),
            },
            ..bg.clone()
        };
        assert!(cohort.continues(CLV_MODEL, &after_bg, 5, &policy).unwrap_err().contains("time unit or cohort"));
        let e = gg.continues(CLV_MODEL, &after_gg, 200, &policy).unwrap_err();
        assert!(e.contains("at most 200 rounds"), "{e}");
        let segments = AnalysisKind::RfmSegments(fedcrm_analysis::rfm::Cuts {
            recency: [1, 2, 3, 4],
            frequency: [1, 1, 2, 3],
            monetary: [5, 6, 7, 8],
        });
        assert!(bg.continues(CLV_MODEL, &segments, 1, &policy).unwrap_err().contains("does not follow"));
    }
}
