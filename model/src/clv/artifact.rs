//! The CLV model as published (issue 13): the fitted BG/NBD and Gamma-Gamma parameters,
//! how they were fitted, and where from — the artifact's body, registered, signed by
//! HQ's model publisher and served to nodes like the churn model's.

use serde::{Deserialize, Serialize};
use time::Date;

use super::fit::Reason;
use super::summary::TimeUnit;
use super::{bgnbd, gamma_gamma};
use crate::artifact::Provenance;

/// The artifact kind of this model.
pub const KIND: &str = "clv-bg-nbd-gamma-gamma";

/// The registry name of CLV models (`clv-v1`, `clv-v2`, …).
pub const NAME: &str = "clv";

/// One likelihood's fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fit<P> {
    pub params: P,
    /// Σ ln L over the customers at the fitted parameters (securely summed).
    pub log_likelihood: f64,
    /// Customers in the likelihood (securely summed): every customer of the calibration
    /// window for BG/NBD, those with a repeat purchase of positive value for Gamma-Gamma.
    pub customers: u64,
    /// Evaluations (secure rounds) the optimiser used.
    pub evaluations: u32,
    pub stop_reason: Reason,
    /// The largest gradient component of the mean log-likelihood at the fit.
    pub gradient_max: f64,
}

/// The CLV model: the artifact's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClvModel {
    pub bg_nbd: Fit<bgnbd::Params>,
    pub gamma_gamma: Fit<gamma_gamma::Params>,
    /// The calibration window's last day (the analysis's reference date).
    pub calibration_end: Date,
    pub time_unit: TimeUnit,
    /// The cohort fitted: first purchases in this range; `None`: every customer.
    pub first_purchase: Option<(Date, Date)>,
    pub provenance: Provenance,
}

impl ClvModel {
    /// Check that the parameters are usable before scoring with them.
    pub fn check(&self) -> Result<(), String> {
        let b = &self.bg_nbd.params;
        let g = &self.gamma_gamma.params;
        if [b.r, b.alpha, b.a, b.b, g.p, g.q, g.gamma].iter().any(|v| !v.is_finite() || *v <= 0.0) {
            return Err("the model holds a parameter that is not a positive finite number".into());
        }
        Ok(())
    }
}
