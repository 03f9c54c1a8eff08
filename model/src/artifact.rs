//! The churn model as HQ publishes it: the `body` of a `churn-logistic` model artifact
//! (`fedcrm_protocol::model::ModelHeader`). Everything a node needs to score its own
//! customers exactly as the model was trained — the feature spec, the global
//! standardisation constants, the weights, the training window — and what an analyst
//! and an auditor need to judge it: the federated test metrics, the training history,
//! and where it came from (analysis id, rounds, nodes, the privacy charge).

use ndarray::Array1;
use serde::{Deserialize, Serialize};
use time::Date;

use crate::eval::RateRow;
use crate::features::{Customer, FeatureSpec};
use crate::logistic::{Logistic, Model, RoundReport, StopReason, top_reasons};
use crate::standardise::Standardiser;

/// The artifact kind of this model.
pub const KIND: &str = "churn-logistic";

/// The registry name of churn models (`churn-v1`, `churn-v2`, …).
pub const NAME: &str = "churn";

/// How many reasons a scored customer carries.
pub const REASONS: usize = 3;

/// The federated evaluation on the nodes' held-out customers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// ROC AUC from the summed score histograms, and its binning error bound.
    pub test_auc: f64,
    pub test_auc_bound: f64,
    pub test_log_loss: f64,
    pub test_accuracy: f64,
    pub train_examples: u64,
    pub test_examples: u64,
    /// Churned share of the held-out customers.
    pub test_churn_rate: f64,
    /// Per decile of predicted probability: count, mean predicted, observed rate.
    pub calibration: Vec<RateRow>,
}

/// Where the model came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    pub analysis_id: String,
    /// Every secure round of the training, in order.
    pub rounds: Vec<String>,
    /// The contributing nodes (the analysis's population).
    pub nodes: Vec<String>,
    pub organisations: usize,
    pub trained_by: String,
    pub purpose: String,
    /// Under differential privacy: what the whole training cost each node (zCDP ρ, ξ,
    /// and ε at δ = 10⁻⁶); `None` for an exact training.
    pub dp: Option<DpCharge>,
}

/// A training's privacy cost per node.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpCharge {
    pub rho: f64,
    pub xi: f64,
    pub epsilon: f64,
    pub delta: f64,
}

/// The churn model: the artifact's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChurnModel {
    pub spec: FeatureSpec,
    pub standardiser: Standardiser,
    pub model: Logistic,
    /// Training window: features at `reference_date`, churned = no purchase in the
    /// `horizon_days` after it.
    pub reference_date: Date,
    pub horizon_days: u32,
    pub lambda: f64,
    pub stop_reason: StopReason,
    pub history: Vec<RoundReport>,
    pub metrics: Metrics,
    pub provenance: Provenance,
}

/// One customer scored.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// Probability of no purchase in the next `horizon_days`.
    pub probability: f64,
    /// The features that push the log-odds up the most, largest first, with their
    /// contribution to the log-odds.
    pub reasons: Vec<(String, f64)>,
}

impl ChurnModel {
    /// Check that the parts agree (dimensions, spec version) before use.
    pub fn check(&self) -> Result<(), String> {
        self.spec.check_version().map_err(|e| e.to_string())?;
        let d = self.spec.dim();
        if self.standardiser.mean.len() != d || self.standardiser.sd.len() != d || self.model.weights.len() != d + 1 {
            return Err(format!(
                "the model's parts disagree: {d} features, {} means, {} deviations, {} weights",
                self.standardiser.mean.len(),
                self.standardiser.sd.len(),
                self.model.weights.len()
            ));
        }
        if self.model.weights.iter().chain(&self.standardiser.mean).chain(&self.standardiser.sd).any(|x| !x.is_finite())
        {
            return Err("the model holds a non-finite number".into());
        }
        Ok(())
    }

    /// Score one customer from their purchases up to `as_of`; `None` for a customer
    /// with no purchase by then.
    pub fn score(&self, customer: &Customer<'_>, as_of: Date) -> Option<Scored> {
        let raw = self.spec.extract(customer, as_of)?;
        let z = Array1::from(self.standardiser.apply(&raw));
        let probability = self.model.predict(z.view());
        let reasons = top_reasons(&self.model, z.view(), &self.spec.names(), REASONS);
        Some(Scored { probability, reasons })
    }
}
