//! The CLV model as published (issue 13): the fitted BG/NBD and Gamma-Gamma parameters,
//! how they were fitted, and where from — the artifact's body, registered, signed by
//! HQ's model publisher and served to nodes like the churn model's.

use serde::{Deserialize, Serialize};
use time::Date;

use super::fit::Reason;
use super::hyp2f1::Hyp2f1Error;
use super::summary::{Calibration, TimeUnit};
use super::{bgnbd, gamma_gamma};
use crate::artifact::Provenance;
use crate::features::Txn;

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
        let bound = super::fit::FIT_BOUND + 1e-9;
        if [b.r, b.alpha, b.a, b.b, g.p, g.q, g.gamma]
            .iter()
            .any(|v| !(v.is_finite() && *v > 0.0 && v.ln().abs() <= bound))
        {
            return Err(format!(
                "the model holds a parameter that is not a positive number within e^±{}",
                super::fit::FIT_BOUND
            ));
        }
        Ok(())
    }
}

/// How a node turns the model into each customer's value (`[scoring.clv]` in node.toml).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClvSettings {
    /// A customer with P(alive) below this is marked dormant. Default 0.5.
    pub dormant_below: f64,
    /// The "next period" of the expected-purchases column, in days. Default 90.
    pub period_days: u32,
    /// The CLV's horizon in months of 30.4375 days. Default 12.
    pub horizon_months: u32,
    /// The yearly discount rate applied month by month: a month's value is divided by
    /// (1 + rate)^(m/12) at the end of month m. Default 0.10.
    pub annual_discount_rate: f64,
}

impl Default for ClvSettings {
    fn default() -> Self {
        Self { dormant_below: 0.5, period_days: 90, horizon_months: 12, annual_discount_rate: 0.10 }
    }
}

impl ClvSettings {
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.dormant_below) {
            return Err(format!("[scoring.clv] dormant_below = {} must be within 0..=1", self.dormant_below));
        }
        if self.period_days == 0 || self.horizon_months == 0 || self.horizon_months > 120 {
            return Err("[scoring.clv] period_days must be at least 1 and horizon_months 1..=120".into());
        }
        if !(self.annual_discount_rate.is_finite() && (0.0..=1.0).contains(&self.annual_discount_rate)) {
            return Err(format!(
                "[scoring.clv] annual_discount_rate = {} must be within 0..=1",
                self.annual_discount_rate
            ));
        }
        Ok(())
    }
}

/// Days in the CLV's month.
pub const MONTH_DAYS: f64 = 30.4375;

/// One customer's value under the model, as of a day.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClvScore {
    pub p_alive: f64,
    pub dormant: bool,
    /// Expected transactions in the next `period_days`.
    pub expected_purchases: f64,
    /// Expected value of one transaction (Gamma-Gamma; the population mean for a
    /// customer without a repeat purchase).
    pub expected_spend: f64,
    /// Σ over the horizon's months m of (E\[Y(m)\] − E\[Y(m − 1)\]) · E\[M\] / (1 + rate)^(m/12).
    pub clv: f64,
}

impl ClvModel {
    /// This customer's value from their purchases up to `as_of` (their summary with the
    /// calibration ending there); `None` for a customer with no purchase by then.
    pub fn score(&self, txns: &[Txn], as_of: Date, settings: &ClvSettings) -> Option<Result<ClvScore, Hyp2f1Error>> {
        let cal = Calibration { end: as_of, unit: self.time_unit, first_purchase: None };
        let s = cal.summary(txns)?;
        let days = self.time_unit.days();
        let b = &self.bg_nbd.params;
        let score = || -> Result<ClvScore, Hyp2f1Error> {
            let p_alive = bgnbd::p_alive(b, &s);
            let expected_purchases = bgnbd::expected_purchases(b, &s, f64::from(settings.period_days) / days)?;
            let expected_spend = gamma_gamma::expected_spend(&self.gamma_gamma.params, &s).unwrap_or(0.0);
            let (mut clv, mut before) = (0.0, 0.0);
            for m in 1..=settings.horizon_months {
                let upto = bgnbd::expected_purchases(b, &s, f64::from(m) * MONTH_DAYS / days)?;
                let discount = (1.0 + settings.annual_discount_rate).powf(f64::from(m) / 12.0);
                clv += (upto - before) * expected_spend / discount;
                before = upto;
            }
            Ok(ClvScore { p_alive, dormant: p_alive < settings.dormant_below, expected_purchases, expected_spend, clv })
        };
        Some(score())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::Provenance;
    use time::macros::date;

    fn model() -> ClvModel {
        let fit = |params| Fit {
            params,
            log_likelihood: 0.0,
            customers: 1,
            evaluations: 1,
            stop_reason: Reason::Gradient,
            gradient_max: 0.0,
        };
        ClvModel {
            bg_nbd: fit(bgnbd::Params { r: 0.243, alpha: 4.414, a: 0.793, b: 2.426 }),
            gamma_gamma: Fit {
                params: gamma_gamma::Params { p: 6.25, q: 3.74, gamma: 15.44 },
                log_likelihood: 0.0,
                customers: 1,
                evaluations: 1,
                stop_reason: Reason::Gradient,
                gradient_max: 0.0,
            },
            calibration_end: date!(1997 - 09 - 30),
            time_unit: TimeUnit::Weeks,
            first_purchase: None,
            provenance: Provenance {
                analysis_id: "a".into(),
                rounds: vec![],
                nodes: vec![],
                organisations: 0,
                trained_by: "analyst".into(),
                purpose: "test".into(),
                dp: None,
            },
        }
    }

    fn txn(day: Date, cents: i64) -> Txn {
        Txn { day, cents, quantity: 1, category: None }
    }

    /// The paper's customer (x = 2, t_x = 30.43, T = 38.86 weeks — here 213 and 272 days
    /// after a first purchase on 1997-01-01), scored with the paper's parameters: the
    /// next 39 weeks as the period give the paper's 1.226; the CLV adds up the horizon's
    /// months; a customer silent for long is dormant, and a more valuable customer is
    /// worth more.
    #[test]
    fn a_customer_is_scored_with_p_alive_expected_purchases_and_a_discounted_value() {
        let m = model();
        let txns =
            [txn(date!(1997 - 01 - 01), 2000), txn(date!(1997 - 03 - 15), 3000), txn(date!(1997 - 08 - 02), 5000)];
        let settings = ClvSettings { period_days: 273, ..ClvSettings::default() };
        let s = m.score(&txns, date!(1997 - 09 - 30), &settings).unwrap().unwrap();
        assert!((s.expected_purchases - 1.226).abs() < 2e-3, "{s:?}");
        assert!(!s.dormant && s.p_alive > 0.5, "{s:?}");
        // Spend: p(γ + m̄x)/(px + q − 1) with m̄ = 40 dollars, x = 2.
        let want = 6.25 * (15.44 + 40.0 * 2.0) / (6.25 * 2.0 + 3.74 - 1.0);
        assert!((s.expected_spend - want).abs() < 1e-9, "{s:?}");
        // Twelve months, undiscounted, is E[Y(12 months)] · spend.
        let flat = ClvSettings { annual_discount_rate: 0.0, ..settings };
        let undiscounted = m.score(&txns, date!(1997 - 09 - 30), &flat).unwrap().unwrap();
        let year = bgnbd::expected_purchases(
            &m.bg_nbd.params,
            &Calibration { end: date!(1997 - 09 - 30), unit: TimeUnit::Weeks, first_purchase: None }
                .summary(&txns)
                .unwrap(),
            12.0 * MONTH_DAYS / 7.0,
        )
        .unwrap();
        assert!((undiscounted.clv - year * want).abs() < 1e-9 * undiscounted.clv, "{undiscounted:?}");
        assert!(s.clv < undiscounted.clv);
        // The same customer two years on, with no purchase since: dormant, worth less.
        let later = m.score(&txns, date!(1999 - 09 - 30), &settings).unwrap().unwrap();
        assert!(later.dormant && later.clv < s.clv, "{later:?}");
        // No purchase by the day: not scored.
        assert!(m.score(&txns, date!(1996 - 12 - 31), &settings).is_none());
        assert!(ClvSettings { dormant_below: 1.5, ..ClvSettings::default() }.check().is_err());
    }
}
