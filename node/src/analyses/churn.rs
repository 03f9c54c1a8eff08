//! The node's face of the churn model (issue 11): every round of a `churn-model`
//! analysis computes, from this node's own purchase histories, one of the model's
//! sums (`fedcrm_model`) — the training examples' moments, Newton's gradient and
//! Hessian sums, a FedAvg update, or the held-out customers' evaluation sums. The
//! examples: every customer with a purchase up to the reference date; the label: no
//! purchase in the horizon after it; train or held out by the keyed split.
//!
//! Classification: a moments round starts a `churn-model` analysis; any later churn
//! round continues it only with the same setup (spec, horizon, split), at most
//! `[policy.churn] max_rounds` rounds in all, and nothing follows the evaluation.

use fedcrm_dp::OsEntropy;
use fedcrm_dp::accounting::Charge;
use fedcrm_model::eval::eval_contribution;
use fedcrm_model::features::{Example, Window, example};
use fedcrm_model::fedavg::{Batching, local_update};
use fedcrm_model::logistic::{Examples, Logistic, Model, newton_contribution};
use fedcrm_model::split::HoldoutSplit;
use fedcrm_model::standardise::moments_contribution;
use fedcrm_model::terms::{eval_terms, moment_scales, moment_terms, newton_terms};
use fedcrm_protocol::wire::AnalysisKind;
use fedcrm_protocol::wire::churn::{ChurnRound, ChurnStep, ModelDp};
use serde::{Deserialize, Serialize};
use time::Date;
use zeroize::Zeroizing;

use super::{Contribution, LocalData, NodeQuery};
use crate::policy::Policy;

/// A churn-model analysis: moments, training rounds, evaluation.
pub const CHURN_MODEL: &str = "churn-model";

/// `[policy.churn]`: what this node accepts of churn-model training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChurnLimits {
    /// A node with fewer training examples does not take part (its refusal says
    /// so, and so reveals that it holds fewer). Default 50.
    pub min_examples: u64,
    /// Most rounds of one churn analysis (moments, training, evaluation): every round
    /// is another sum over this node's customers. Default 40.
    pub max_rounds: u32,
}

impl Default for ChurnLimits {
    fn default() -> Self {
        Self { min_examples: 50, max_rounds: 40 }
    }
}

/// Issue 11 under DP: each customer's term of the round (`fedcrm_model::terms`), clipped,
/// summed, projected, rotated, scaled and rounded (`fedcrm_dp::vector::CustomerSum`); the
/// round's noise is added to these words afterwards, like every noised round's.
trait Noised {
    fn contribute_noised(&self, dp: &ModelDp, examples: &[Example], eligible: usize) -> Result<Contribution, String>;
}

impl Noised for ChurnRound {
    fn contribute_noised(&self, dp: &ModelDp, examples: &[Example], eligible: usize) -> Result<Contribution, String> {
        let failed = |_| {
            "the churn computation failed on this node's data (a value out of the model's range); refusing".to_string()
        };
        let mechanism = dp.mechanism(self.term_len()).map_err(|e| failed(e.to_string()))?;
        let terms: Zeroizing<Vec<Vec<f64>>> = Zeroizing::new(match &self.step {
            ChurnStep::Moments => {
                let scales = moment_scales(&self.setup.spec);
                examples.iter().map(|e| moment_terms(&scales, &e.features)).collect()
            }
            ChurnStep::Newton { standardiser, weights } => {
                let ex = Examples::standardised(standardiser, examples);
                ex.z.rows().into_iter().zip(ex.y.iter()).map(|(z, y)| newton_terms(weights, z, *y)).collect()
            }
            ChurnStep::Evaluate { standardiser, weights, bins } => {
                let model = Logistic { weights: weights.clone() };
                let ex = Examples::standardised(standardiser, examples);
                let layout = ChurnRound::eval_layout(*bins);
                ex.z.rows()
                    .into_iter()
                    .zip(examples)
                    .map(|(z, e)| eval_terms(layout, model.predict(z), e.churned))
                    .collect()
            }
            ChurnStep::FedAvg { .. } => {
                return Err("FedAvg rounds are not noised in this version; train with Newton under DP".into());
            }
        });
        let rounded = Zeroizing::new(
            mechanism.quantize(&dp.seed(), &terms, &mut OsEntropy::new()).map_err(|e| failed(e.to_string()))?,
        );
        // Two's complement: the secure sum adds the words mod 2^64.
        let vector = rounded.iter().map(|&v| v as u64).collect();
        Ok(Contribution {
            vector: Zeroizing::new(vector),
            customers: examples.len(),
            eligible,
            fewest_in_a_month: None,
        })
    }
}

impl NodeQuery for ChurnRound {
    fn starts(&self) -> &'static str {
        CHURN_MODEL
    }

    /// Every round: an evaluation's score histograms within `[policy.histograms]
    /// max_bins`; FedAvg mini-batches of at least `[policy.churn] min_examples` (a
    /// batch of one would make an update one customer's features).
    fn check_limits(&self, policy: &Policy) -> Result<(), String> {
        match &self.step {
            ChurnStep::Evaluate { bins, .. } if *bins > policy.histograms.max_bins => Err(format!(
                "policy: an evaluation with {bins} score bins exceeds [policy.histograms] max_bins = {}",
                policy.histograms.max_bins
            )),
            ChurnStep::FedAvg { local, .. } => match local.batching {
                Batching::MiniBatch { size, .. } if (size as u64) < policy.churn.min_examples => Err(format!(
                    "policy: FedAvg mini-batches of {size} are smaller than [policy.churn] min_examples = {}",
                    policy.churn.min_examples
                )),
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    fn first_round(&self) -> Result<(), String> {
        match self.step {
            ChurnStep::Moments => Ok(()),
            _ => Err("a churn analysis starts with its moments round".into()),
        }
    }

    fn continues(
        &self,
        kind: &'static str,
        previous: &AnalysisKind,
        rounds: u32,
        policy: &Policy,
    ) -> Result<(), String> {
        let AnalysisKind::Churn(prev) = previous else {
            return Err(format!("a churn round does not follow an {kind} analysis"));
        };
        let (a, b) = (&prev.setup, &self.setup);
        if a.horizon_days != b.horizon_days
            || a.holdout_key != b.holdout_key
            || a.test_fraction_bp != b.test_fraction_bp
        {
            return Err("its horizon or holdout split differs from the analysis's first round".into());
        }
        if !b.spec.narrows(&a.spec) {
            return Err(
                "its feature spec is not the previous round's (features constant over all nodes may only be dropped)"
                    .into(),
            );
        }
        if matches!(prev.step, ChurnStep::Evaluate { .. }) {
            return Err("the analysis already ended with its evaluation".into());
        }
        if matches!(self.step, ChurnStep::Moments) {
            return Err("the moments round runs once, first".into());
        }
        super::same_dp_plan(prev.dp.as_ref(), self.dp.as_ref())?;
        self.within_rounds(rounds, policy)
    }

    fn within_rounds(&self, rounds: u32, policy: &Policy) -> Result<(), String> {
        if let Some(dp) = &self.dp {
            super::within_dp_plan(dp, rounds)?;
        }
        super::within_max_rounds(rounds, policy.churn.max_rounds, "churn", "[policy.churn] max_rounds")
    }

    fn describe(&self, at: &str) -> String {
        let d = self.setup.spec.dim();
        let what = match &self.step {
            ChurnStep::Moments => format!("per-feature counts, sums and sums of squares of {d} features"),
            ChurnStep::Newton { .. } => format!("logistic-regression gradient and Hessian sums over {d} features"),
            ChurnStep::Evaluate { bins, .. } => {
                format!("held-out log-loss, accuracy, calibration and {bins}-bin score histograms")
            }
            ChurnStep::FedAvg { local, .. } => {
                format!("a local model update ({} epoch(s)) over {d} features", local.epochs)
            }
        };
        format!(
            "churn model: {what} of customers with purchases up to {at}, churned = none in the next {} days",
            self.setup.horizon_days
        )
    }

    fn contribute(&self, data: &mut LocalData<'_>, reference: Date) -> Result<Contribution, String> {
        let window = Window { reference, horizon_days: self.setup.horizon_days };
        let split = HoldoutSplit::new(&self.setup.holdout_key, self.setup.test_fraction())
            .map_err(|e| format!("holdout split: {e}"))?;
        let held_out = matches!(self.step, ChurnStep::Evaluate { .. });
        // Every customer with a purchase by the reference date is an example, train or
        // held out; the policy's minimum applies to them all, whatever the split.
        let all: Vec<(bool, Example)> = data
            .histories()
            .iter()
            .filter_map(|h| {
                example(&self.setup.spec, &h.customer(), &window).map(|e| (split.is_test(h.customer.as_bytes()), e))
            })
            .collect();
        let eligible = all.len();
        let examples: Vec<Example> = all.into_iter().filter(|(t, _)| *t == held_out).map(|(_, e)| e).collect();
        // A failure names no value of this node's data (attack review of issue 11: an
        // error naming an example's index was an oracle).
        let failed = |_| {
            "the churn computation failed on this node's data (a value out of the model's range); refusing".to_string()
        };
        let n = examples.len();
        if let Some(dp) = &self.dp {
            return self.contribute_noised(dp, &examples, eligible);
        }
        let vector = match &self.step {
            ChurnStep::Moments => {
                let rows: Vec<Vec<f64>> = examples.iter().map(|e| e.features.clone()).collect();
                moments_contribution(&self.setup.spec, &rows).map_err(|e| failed(e.to_string()))?
            }
            ChurnStep::Newton { standardiser, weights } => {
                newton_contribution(weights, &Examples::standardised(standardiser, &examples))
                    .map_err(|e| failed(e.to_string()))?
            }
            ChurnStep::FedAvg { standardiser, weights, local, round } => {
                local_update(weights, &Examples::standardised(standardiser, &examples), local, *round)
                    .map_err(|e| failed(e.to_string()))?
            }
            ChurnStep::Evaluate { standardiser, weights, bins } => {
                let model = Logistic { weights: weights.clone() };
                let ex = Examples::standardised(standardiser, &examples);
                let scores: Vec<f64> = ex.z.rows().into_iter().map(|z| model.predict(z)).collect();
                let churned: Vec<bool> = examples.iter().map(|e| e.churned).collect();
                eval_contribution(ChurnRound::eval_layout(*bins), &scores, &churned, &[])
                    .map_err(|e| failed(e.to_string()))?
            }
        };
        Ok(Contribution { vector: Zeroizing::new(vector), customers: n, eligible, fewest_in_a_month: None })
    }

    /// Under DP the whole plan (every round at the signed cap) must fit the budget before
    /// the first round.
    fn plan_charge(&self) -> Option<Charge> {
        self.dp.as_ref().map(|dp| dp.plan_charge())
    }

    /// Under DP, what the round costs must stay within the plan's per-round cap.
    fn check_charge(&self, charge: &Charge) -> Result<(), String> {
        self.dp.as_ref().map_or(Ok(()), |dp| super::within_round_cap(dp, charge))
    }

    /// Fewer customers with a purchase by the reference date than `[policy.churn]
    /// min_examples`: this node does not take part. Counted over all of them, train and
    /// held out, so the answer depends on the reference date only — never on the split
    /// key or fraction HQ chooses (attack review of issue 11). Under DP the rule does not
    /// apply: the noise protects each customer whatever their number, and a rule on the
    /// count would make the node's vector jump from noised zeros (a noised round never
    /// refuses on data) to the sum over all its customers when one customer is added —
    /// far beyond the one customer's bounded term the round is charged for (attack
    /// review of issue 13, M1).
    fn check_contribution(&self, c: &Contribution, policy: &Policy) -> Result<(), String> {
        if self.dp.is_some() {
            return Ok(());
        }
        let min = policy.churn.min_examples;
        if (c.eligible as u64) < min {
            return Err(format!(
                "policy: this node has fewer customers than [policy.churn] min_examples = {min}, so it does not take \
                 part in churn-model training"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedcrm_analysis::date::parse_date;
    use fedcrm_model::features::FeatureSpec;
    use fedcrm_model::standardise::Standardiser;
    use fedcrm_protocol::wire::Analysis;
    use fedcrm_protocol::wire::churn::ChurnSetup;

    use crate::analyses::check_plan;

    fn dp(max_rounds: u32) -> ModelDp {
        ModelDp {
            clip: 5.5,
            gamma: 0.01,
            rotation_seed: [1; 32],
            max_rounds,
            max_customers: 1 << 20,
            round_rho: 0.01,
            round_xi: 0.0,
        }
    }

    fn round(step: ChurnStep, dp: Option<ModelDp>) -> ChurnRound {
        ChurnRound {
            setup: ChurnSetup {
                spec: FeatureSpec::reduced(),
                horizon_days: 273,
                holdout_key: [2; 32],
                test_fraction_bp: 3000,
            },
            step,
            dp,
        }
    }

    fn newton() -> ChurnStep {
        ChurnStep::Newton {
            standardiser: Standardiser { mean: vec![4.0, 0.7, 3.5, 3.0, 20.0, 0.9], sd: vec![1.0; 6] },
            weights: vec![0.0; 7],
        }
    }

    fn analysis(r: &ChurnRound) -> Analysis {
        Analysis {
            reference_date: parse_date("1997-09-30").unwrap(),
            purpose: "p".into(),
            requested_by: "a".into(),
            requested_by_organisation: "HQ".into(),
            analysis_id: "id".into(),
            analysis_kind: CHURN_MODEL.into(),
            kind: AnalysisKind::Churn(Box::new(r.clone())),
        }
    }

    /// Under DP every round must carry the first round's plan, and a node takes part in
    /// at most its T rounds (retries included): what bounds the analysis's whole charge.
    #[test]
    fn a_dp_round_must_keep_the_plan_and_stay_within_its_rounds() {
        let policy = Policy::default();
        let first = AnalysisKind::Churn(Box::new(round(ChurnStep::Moments, Some(dp(4)))));
        assert_eq!(round(newton(), Some(dp(4))).continues(CHURN_MODEL, &first, 3, &policy), Ok(()));
        let e = round(newton(), Some(dp(4))).continues(CHURN_MODEL, &first, 4, &policy).unwrap_err();
        assert!(e.contains("allows 4 charged rounds"), "{e}");
        let e = round(newton(), Some(dp(5))).continues(CHURN_MODEL, &first, 1, &policy).unwrap_err();
        assert!(e.contains("plan differs"), "{e}");
        let e = round(newton(), None).continues(CHURN_MODEL, &first, 1, &policy).unwrap_err();
        assert!(e.contains("plan differs"), "{e}");
        // A fresh seed and another grid per round are the plan's own.
        let other = ModelDp { rotation_seed: [9; 32], gamma: 0.02, ..dp(4) };
        assert_eq!(round(newton(), Some(other)).continues(CHURN_MODEL, &first, 1, &policy), Ok(()));
    }

    /// A retry repeats the previous computation and so skips `continues`, but not the
    /// plan's T (attack review of issue 11: each retry is charged again).
    #[test]
    fn a_retry_counts_against_the_plans_rounds() {
        let policy = Policy::default();
        let t = crate::computation::Tracker::default();
        let moments = analysis(&round(ChurnStep::Moments, Some(dp(3))));
        let id = t.identify(&moments, &policy).unwrap();
        t.admitted(&moments, &id);
        t.signed("id", &["a".to_string()]);
        let n = analysis(&round(newton(), Some(dp(3))));
        for _ in 0..2 {
            // Round 2, then its retry (round 3): this node signed no view of either.
            let id = t.identify(&n, &policy).unwrap();
            t.admitted(&n, &id);
        }
        let e = t.identify(&n, &policy).unwrap_err();
        assert!(e.contains("allows 3 charged rounds"), "{e}");
    }

    /// The first round checks T × the cap against the budget before anything leaves;
    /// every round's charge must stay within the cap.
    #[test]
    fn the_whole_plan_is_checked_at_the_first_round_and_each_charge_against_the_cap() {
        let r = round(ChurnStep::Moments, Some(dp(9)));
        let a = analysis(&r);
        let within = Charge { rho: 0.0099, xi: 0.0 };
        let asked = std::cell::Cell::new(None);
        let ok = check_plan(&a, Some(within), true, |plan| {
            asked.set(Some(plan));
            Ok(())
        });
        assert_eq!(ok, Ok(Some(within)));
        let plan = asked.get().unwrap();
        assert!((plan.rho - 0.09).abs() < 1e-12, "{plan:?}");
        let e = check_plan(&a, Some(within), true, |_| Err("policy: privacy budget: over".into())).unwrap_err();
        assert!(e.contains("may charge ρ = 0.090000") && e.contains("refuses before the analysis starts"), "{e}");
        // A later round is not checked against the whole plan again.
        assert_eq!(check_plan(&a, Some(within), false, |_| Err("no".into())), Ok(Some(within)));
        let e = check_plan(&a, Some(Charge { rho: 0.02, xi: 0.0 }), false, |_| Ok(())).unwrap_err();
        assert!(e.contains("more than its plan's per-round cap"), "{e}");
        // Exact rounds (no charge) have no plan.
        assert_eq!(check_plan(&a, None, true, |_| Err("no".into())), Ok(None));
    }
}
