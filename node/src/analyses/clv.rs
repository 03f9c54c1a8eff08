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
//!
//! Under differential privacy each customer's ln L and gradient are clamped to the
//! round's stated bounds and scaled (`fedcrm_model::clv::sums::node_terms`), then summed,
//! projected, rotated, scaled and rounded by the customer-level mechanism
//! (`fedcrm_dp::vector::CustomerSum`); the round's noise is added afterwards, as for
//! every noised round. The plan signed in the first round (most rounds, per-round cap)
//! holds for every round, and the whole plan is checked against the budget before the
//! first one (each round is charged as its vector leaves).

use fedcrm_dp::OsEntropy;
use fedcrm_dp::accounting::Charge;
use fedcrm_model::clv::summary::{Calibration, Summary};
use fedcrm_model::clv::sums::{Likelihood, node_sums, node_terms};
use fedcrm_protocol::wire::AnalysisKind;
use fedcrm_protocol::wire::clv::{ClvDp, ClvRound};
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
    /// at parameters HQ chooses. An honest fit of both models takes 50 to 90. Default 120.
    pub max_rounds: u32,
    /// A fit of one cohort (first purchases in whole calendar months) runs only if every
    /// calendar month up to the calibration end holds none or at least this many of this
    /// node's first purchases: any two cohorts HQ can ask for then differ by none or at
    /// least this many of its customers. Default 10.
    pub min_month_customers: u64,
}

impl Default for ClvLimits {
    fn default() -> Self {
        Self { min_customers: 50, max_rounds: 120, min_month_customers: 10 }
    }
}

/// The fewest of these first-purchase days in a calendar month that has any (`None`:
/// none at all) — what [`ClvLimits::min_month_customers`] is checked against.
pub fn fewest_in_a_month(first_purchases: &[Date]) -> Option<u64> {
    let mut per_month: std::collections::BTreeMap<(i32, time::Month), u64> = std::collections::BTreeMap::new();
    for d in first_purchases {
        *per_month.entry((d.year(), d.month())).or_default() += 1;
    }
    per_month.values().copied().min()
}

/// A CLV computation failed on this node's data; the reason names no value of it.
fn failed() -> String {
    "the CLV computation failed on this node's data (a value out of the encoding's range); refusing".to_string()
}

/// Under DP: each customer's clamped, scaled term, summed, projected, rotated, scaled and
/// rounded by the round's mechanism; the round's noise is added to these words
/// afterwards, like every noised round's.
fn contribute_noised(
    round: &ClvRound,
    dp: &ClvDp,
    summaries: &[Summary],
    fewest: Option<u64>,
) -> Result<Contribution, String> {
    let mechanism = round.mechanism().ok_or_else(failed)?;
    let (terms, clipped) = node_terms(round.likelihood, &round.log_params, summaries, &dp.clips);
    let terms = Zeroizing::new(terms);
    let rounded =
        Zeroizing::new(mechanism.quantize(&dp.mechanism.seed(), &terms, &mut OsEntropy::new()).map_err(|_| failed())?);
    if clipped > 0 {
        tracing::debug!(clipped, "clv: customers' terms clamped to the round's stated bounds");
    }
    // Two's complement: the secure sum adds the words mod 2^64.
    let vector = rounded.iter().map(|&v| v as u64).collect();
    Ok(Contribution {
        vector: Zeroizing::new(vector),
        customers: terms.len(),
        eligible: terms.len(),
        fewest_in_a_month: fewest,
    })
}

/// The round's calibration window: it ends at the analysis's reference date.
pub(crate) fn calibration(round: &ClvRound, reference: Date) -> Calibration {
    Calibration { end: reference, unit: round.setup.unit, first_purchase: round.setup.first_purchase }
}

impl NodeQuery for ClvRound {
    fn starts(&self) -> &'static str {
        CLV_MODEL
    }

    /// Under DP, a plan of more rounds than `[policy.clv] max_rounds` is refused at once:
    /// the node would be charged for rounds it then refuses (public figures only).
    fn check_limits(&self, policy: &Policy) -> Result<(), String> {
        if let Some(dp) = &self.dp
            && dp.mechanism.max_rounds > policy.clv.max_rounds
        {
            return Err(format!(
                "policy: the fit's differential-privacy plan has {} rounds, more than [policy.clv] max_rounds = {}; \
                 this node does not take part (the analyst can plan fewer rounds: --max-rounds)",
                dp.mechanism.max_rounds, policy.clv.max_rounds
            ));
        }
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
        super::same_dp_plan(prev.dp.as_ref().map(|d| &d.mechanism), self.dp.as_ref().map(|d| &d.mechanism))?;
        self.within_rounds(rounds, policy)
    }

    fn within_rounds(&self, rounds: u32, policy: &Policy) -> Result<(), String> {
        if let Some(dp) = &self.dp {
            super::within_dp_plan(&dp.mechanism, rounds)?;
        }
        super::within_max_rounds(rounds, policy.clv.max_rounds, "CLV", "[policy.clv] max_rounds")
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
        let read = data.clv(calibration(self, reference));
        let fewest = self.setup.first_purchase.and_then(|_| fewest_in_a_month(&read.firsts));
        let summaries: &[Summary] = &read.summaries;
        if let Some(dp) = &self.dp {
            return contribute_noised(self, dp, summaries, fewest);
        }
        let sums = node_sums(self.likelihood, &self.log_params, summaries);
        // The minimum applies to the customers the round's likelihood sums: for
        // Gamma-Gamma only those with a repeat purchase (attack review of issue 13, H1: a
        // cohort of one-time buyers would otherwise make its sums one customer's).
        let eligible = sums.customers as usize;
        // A failure names no value of this node's data.
        let vector = sums.to_words().map_err(|_| failed())?;
        if sums.clipped > 0 {
            tracing::warn!(clipped = sums.clipped, "clv: customers' terms clipped to the encoding's bound");
        }
        Ok(Contribution { vector: Zeroizing::new(vector), customers: eligible, eligible, fewest_in_a_month: fewest })
    }

    /// Under DP the whole plan (every round at the signed cap) must fit the budget before
    /// the first round.
    fn plan_charge(&self) -> Option<Charge> {
        self.dp.as_ref().map(|dp| dp.mechanism.plan_charge())
    }

    /// Under DP, what the round costs must stay within the plan's per-round cap.
    fn check_charge(&self, charge: &Charge) -> Result<(), String> {
        self.dp.as_ref().map_or(Ok(()), |dp| super::within_round_cap(&dp.mechanism, charge))
    }

    /// Fewer customers in a BG/NBD round's likelihood (the calibration window and cohort)
    /// than `[policy.clv] min_customers`: this node does not take part. A cohort fit also
    /// needs every month to hold none or `min_month_customers` first purchases.
    /// A Gamma-Gamma round with fewer of this node's customers in its likelihood (those
    /// with a repeat purchase) than `[policy.clv] min_customers`: the node, already part
    /// of the analysis's population, sends zeros, so its few customers' spend enters no
    /// sum (attack review of issue 13, H1) and the fit goes on over the others.
    /// Under DP nothing is withheld: the noise protects the few customers, and sending
    /// zeros or not by a count of this node's customers would move the vector by far more
    /// than one customer's bounded term.
    fn withheld(&self, c: &Contribution, policy: &Policy) -> bool {
        self.dp.is_none() && self.likelihood == Likelihood::GammaGamma && (c.eligible as u64) < policy.clv.min_customers
    }

    /// Under DP neither rule applies: the noise protects each customer whatever their
    /// number, and a rule on a count of this node's customers would make its vector jump
    /// from zeros (a noised round never refuses on data) to the sum of them all when one
    /// customer is added — far beyond one customer's bounded term.
    fn check_contribution(&self, c: &Contribution, policy: &Policy) -> Result<(), String> {
        if self.dp.is_some() {
            return Ok(());
        }
        let month = policy.clv.min_month_customers;
        if c.fewest_in_a_month.is_some_and(|n| n < month) {
            // Names no month: which one would say when this node's few customers came.
            return Err(format!(
                "policy: a cohort fit needs every calendar month up to the calibration end to hold none or at least \
                 {month} of this node's first purchases ([policy.clv] min_month_customers), and one holds fewer; \
                 this node takes part in fits of all its customers only"
            ));
        }
        let min = policy.clv.min_customers;
        if self.likelihood == Likelihood::BgNbd && (c.eligible as u64) < min {
            return Err(format!(
                "policy: this node has fewer customers than [policy.clv] min_customers = {min} in the round's \
                 likelihood, which counts the customers of the calibration window and cohort and, for Gamma-Gamma, \
                 only those with a repeat purchase; it does not take part in the CLV fit"
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
            dp: None,
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
        let e = gg.continues(CLV_MODEL, &after_gg, 120, &policy).unwrap_err();
        assert!(e.contains("at most 120 rounds"), "{e}");
        let segments = AnalysisKind::RfmSegments(fedcrm_analysis::rfm::Cuts {
            recency: [1, 2, 3, 4],
            frequency: [1, 1, 2, 3],
            monetary: [5, 6, 7, 8],
        });
        assert!(bg.continues(CLV_MODEL, &segments, 1, &policy).unwrap_err().contains("does not follow"));
    }

    /// A cohort fit runs only where every month holds none or at least
    /// `min_month_customers` first purchases (so two cohorts differ by none or that many),
    /// and the minimum counts the customers the round's likelihood sums.
    #[test]
    fn a_cohort_fit_needs_full_months_and_the_minimum_counts_the_likelihoods_customers() {
        let days = |v: &[(u8, u8)]| -> Vec<Date> {
            v.iter()
                .map(|&(m, d)| Date::from_calendar_date(1997, time::Month::try_from(m).unwrap(), d).unwrap())
                .collect()
        };
        assert_eq!(fewest_in_a_month(&days(&[(1, 1), (1, 9), (3, 2)])), Some(1));
        assert_eq!(fewest_in_a_month(&[]), None);
        let policy = Policy::default();
        let c = |eligible: usize, fewest: Option<u64>| Contribution {
            vector: Zeroizing::new(vec![]),
            customers: eligible,
            eligible,
            fewest_in_a_month: fewest,
        };
        let (bg, gg) = (round(Likelihood::BgNbd, TimeUnit::Weeks), round(Likelihood::GammaGamma, TimeUnit::Weeks));
        assert_eq!(gg.check_contribution(&c(50, Some(10)), &policy), Ok(()));
        let e = gg.check_contribution(&c(50, Some(9)), &policy).unwrap_err();
        assert!(e.contains("min_month_customers") && !e.contains("1997"), "{e}");
        // BG/NBD below the minimum: the node does not take part.
        let e = bg.check_contribution(&c(49, None), &policy).unwrap_err();
        assert!(e.contains("min_customers = 50 in the round's likelihood"), "{e}");
        // Gamma-Gamma below it (a node of one-time buyers): zeros leave, the fit goes on.
        assert_eq!(gg.check_contribution(&c(49, None), &policy), Ok(()));
        assert!(gg.withheld(&c(49, None), &policy) && !gg.withheld(&c(50, None), &policy));
        assert!(!bg.withheld(&c(0, None), &policy));
    }

    fn dp(max_rounds: u32) -> ClvDp {
        let mechanism = fedcrm_protocol::wire::churn::ModelDp {
            clip: 6f64.sqrt(),
            gamma: 1e-3,
            rotation_seed: [7; 32],
            max_rounds,
            max_customers: 1 << 20,
            round_rho: 0.01,
            round_xi: 0.0,
        };
        let clips = fedcrm_model::clv::sums::TermClips::default_for(Likelihood::BgNbd, TimeUnit::Weeks);
        ClvDp { mechanism, clips }
    }

    /// Under DP every round keeps the first round's plan and stays within its T rounds;
    /// the whole plan is what the first round checks against the budget, each round's
    /// charge must stay within the cap; and no rule on a count of this node's customers
    /// applies (a noised round never refuses on data, and a jump from zeros to the sum of
    /// all would be far beyond one customer's bounded term).
    #[test]
    fn under_dp_a_clv_round_keeps_its_plan_and_no_count_of_customers_decides_what_leaves() {
        let policy = Policy::default();
        let with = |likelihood, dp: Option<ClvDp>| ClvRound { dp, ..round(likelihood, TimeUnit::Weeks) };
        let first = AnalysisKind::Clv(Box::new(with(Likelihood::BgNbd, Some(dp(4)))));
        assert_eq!(with(Likelihood::BgNbd, Some(dp(4))).continues(CLV_MODEL, &first, 3, &policy), Ok(()));
        let e = with(Likelihood::GammaGamma, Some(dp(4))).continues(CLV_MODEL, &first, 4, &policy).unwrap_err();
        assert!(e.contains("allows 4 charged rounds"), "{e}");
        let e = with(Likelihood::BgNbd, Some(dp(5))).continues(CLV_MODEL, &first, 1, &policy).unwrap_err();
        assert!(e.contains("plan differs"), "{e}");
        let e = with(Likelihood::BgNbd, None).continues(CLV_MODEL, &first, 1, &policy).unwrap_err();
        assert!(e.contains("plan differs"), "{e}");
        let r = with(Likelihood::BgNbd, Some(dp(9)));
        let plan = r.plan_charge().unwrap();
        assert!((plan.rho - 0.09).abs() < 1e-12, "{plan:?}");
        assert_eq!(r.check_charge(&Charge { rho: 0.0099, xi: 0.0 }), Ok(()));
        let e = r.check_charge(&Charge { rho: 0.02, xi: 0.0 }).unwrap_err();
        assert!(e.contains("more than its plan's per-round cap"), "{e}");
        assert!(with(Likelihood::BgNbd, None).plan_charge().is_none());
        let tiny =
            Contribution { vector: Zeroizing::new(vec![]), customers: 3, eligible: 3, fewest_in_a_month: Some(1) };
        for likelihood in [Likelihood::BgNbd, Likelihood::GammaGamma] {
            let noised = with(likelihood, Some(dp(4)));
            assert_eq!(noised.check_contribution(&tiny, &policy), Ok(()));
            assert!(!noised.withheld(&tiny, &policy));
        }
        assert!(with(Likelihood::BgNbd, None).check_contribution(&tiny, &policy).is_err(), "exact: refused");
        // A plan of more rounds than the policy allows is refused before anything is read.
        assert_eq!(with(Likelihood::BgNbd, Some(dp(120))).check_limits(&policy), Ok(()));
        let e = with(Likelihood::BgNbd, Some(dp(121))).check_limits(&policy).unwrap_err();
        assert!(e.contains("plan has 121 rounds, more than [policy.clv] max_rounds = 120"), "{e}");
    }
}
