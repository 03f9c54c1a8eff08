//! Issue 10: the node's differential-privacy policy (`[policy.privacy]`) and its
//! budget ledger. The node decides, from the computation it is asked to do and the
//! noise signed in the round start, what a contribution costs; refuses one its policy
//! or its remaining monthly budget does not allow, before anything of the round
//! leaves; and charges the budget (an fsynced `privacy-charged` audit record) just
//! before its noised, masked vector leaves. The ledger is rebuilt from those records
//! at start-up, so a restart never renews a budget.

use fedcrm_audit::{Event, Record};
use fedcrm_dp::accounting::Charge;
use fedcrm_dp::budget::{Budget, Ledger, Month, Spent};
use fedcrm_dp::sampler::Variance;
use fedcrm_protocol::wire::{PrivacyStatus, RoundStart};
use serde::{Deserialize, Serialize};

/// Whether this node takes part in exact (un-noised) rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DpMode {
    /// Only noised rounds (the default): an exact round is refused.
    #[default]
    Required,
    /// Exact rounds too (they cost no budget: nothing is noised, nothing is charged).
    /// For tests, demos and franchisees who accept the secure-aggregation guarantee
    /// alone.
    Optional,
}

/// The default monthly budget: ε = 4 at δ = 10⁻⁶.
pub const DEFAULT_EPSILON: f64 = 4.0;
/// The default δ of an ε budget.
pub const DEFAULT_DELTA: f64 = 1e-6;

/// `[policy.privacy]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Privacy {
    /// `"required"` (default) or `"optional"`.
    #[serde(default)]
    pub dp: DpMode,
    /// The monthly budget as ε at `delta` (default ε = 4 when neither this nor
    /// `monthly_rho` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_epsilon: Option<f64>,
    /// δ of `monthly_epsilon`. Default 1e-6.
    #[serde(default = "default_delta")]
    pub delta: f64,
    /// The monthly budget as ρ (zCDP) instead of ε.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_rho: Option<f64>,
    /// With `monthly_rho`: the most additive ξ (the distributed noise's τ·d terms) a
    /// month may add up. Default 1e-6.
    #[serde(default = "default_delta")]
    pub max_xi: f64,
    /// The smallest per-node noise variance σ² this node adds, `[num, den]`. Default
    /// `[4, 1]` (σ = 2), which keeps the τ term of the distributed discrete Gaussian
    /// far below 10⁻⁶ for every vector length used.
    #[serde(default = "default_min_noise")]
    pub min_noise_variance: [u64; 2],
}

fn default_delta() -> f64 {
    DEFAULT_DELTA
}

fn default_min_noise() -> [u64; 2] {
    [4, 1]
}

impl Default for Privacy {
    fn default() -> Self {
        Self {
            dp: DpMode::Required,
            monthly_epsilon: None,
            delta: DEFAULT_DELTA,
            monthly_rho: None,
            max_xi: DEFAULT_DELTA,
            min_noise_variance: default_min_noise(),
        }
    }
}

impl Privacy {
    /// The privacy settings of a node that also takes part in exact rounds.
    pub fn optional() -> Self {
        Self { dp: DpMode::Optional, ..Self::default() }
    }

    /// The monthly budget.
    pub fn budget(&self) -> Budget {
        match (self.monthly_epsilon, self.monthly_rho) {
            (_, Some(rho)) => Budget::Rho { rho, xi: self.max_xi },
            (epsilon, None) => Budget::Epsilon { epsilon: epsilon.unwrap_or(DEFAULT_EPSILON), delta: self.delta },
        }
    }

    /// The per-node noise floor.
    pub fn min_noise(&self) -> Result<Variance, String> {
        let [num, den] = self.min_noise_variance;
        Variance::new(num, den).map_err(|e| format!("policy.privacy.min_noise_variance = [{num}, {den}]: {e}"))
    }

    /// Refuse settings that do not make a budget.
    pub fn validate(&self) -> Result<(), String> {
        if self.monthly_epsilon.is_some() && self.monthly_rho.is_some() {
            return Err("policy.privacy sets both monthly_epsilon and monthly_rho; keep one".into());
        }
        if self.delta >= 1e-3 {
            return Err(format!(
                "policy.privacy.delta = {:e} is too large to protect anyone (a δ of 1/n can leak a customer in n); \
                 use 1e-6 or smaller",
                self.delta
            ));
        }
        self.budget().checked().map_err(|e| format!("policy.privacy: {e}"))?;
        self.min_noise()?;
        Ok(())
    }

    /// What taking part in the round `start` costs, from the computation and the signed
    /// noise, if this policy allows it: `None` for an exact round of an optional node.
    /// `Err` is the refusal's reason. (k, the nodes the noise is calibrated for, is
    /// checked against this node's own rules by `crate::analysis::check_noise`.)
    pub fn charge_of(&self, start: &RoundStart) -> Result<Option<Charge>, String> {
        let Some(noise) = &start.noise else {
            return match self.dp {
                DpMode::Optional => Ok(None),
                DpMode::Required => Err("policy: this node's policy requires differential privacy \
                     ([policy.privacy] dp = \"required\"), and the round adds no noise; run the analysis with \
                     --dp on"
                    .into()),
            };
        };
        let floor = self.min_noise()?;
        if noise.variance < floor {
            return Err(format!(
                "policy: the round's noise σ² = {} per node is below this node's floor \
                 ([policy.privacy] min_noise_variance = {floor}); refusing",
                noise.variance
            ));
        }
        Ok(Some(start.analysis.kind.charge(noise)))
    }
}

/// The ledger of a node's charges, from its audit log's `privacy-charged` records
/// (a node's own records carry no `node`).
pub fn ledger_from(records: &[Record]) -> Ledger {
    Ledger::new(
        records
            .iter()
            .filter_map(|r| match &r.event {
                Event::PrivacyCharged { round, analysis, node, charged_ms, rho, xi, .. } if node.is_empty() => {
                    Some(Spent {
                        time_ms: *charged_ms,
                        analysis: analysis.clone(),
                        round: round.clone(),
                        charge: Charge { rho: *rho, xi: *xi },
                    })
                }
                _ => None,
            })
            .collect(),
    )
}

/// What the node announces in its Hello.
pub fn status(privacy: &Privacy, ledger: &Ledger, now_ms: u64) -> Result<PrivacyStatus, String> {
    let month = Month::of(now_ms);
    let (spent, charges) = ledger.month(month);
    Ok(PrivacyStatus {
        dp_required: privacy.dp == DpMode::Required,
        budget: privacy.budget(),
        min_noise: privacy.min_noise()?,
        month,
        spent,
        charges,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_privacy_parses_defaults_and_refuses_nonsense() {
        let p: Privacy = toml::from_str("").unwrap();
        assert_eq!(p, Privacy::default());
        assert_eq!(p.budget(), Budget::Epsilon { epsilon: 4.0, delta: 1e-6 });
        assert_eq!(p.validate(), Ok(()));
        let p: Privacy = toml::from_str("dp = \"optional\"\nmonthly_rho = 0.5").unwrap();
        assert_eq!((p.dp, p.budget()), (DpMode::Optional, Budget::Rho { rho: 0.5, xi: 1e-6 }));
        let both: Privacy = toml::from_str("monthly_rho = 0.5\nmonthly_epsilon = 1.0").unwrap();
        assert!(both.validate().unwrap_err().contains("keep one"));
        let neg: Privacy = toml::from_str("monthly_epsilon = -1.0").unwrap();
        assert!(neg.validate().is_err());
        let big: Privacy = toml::from_str("delta = 0.01").unwrap();
        assert!(big.validate().unwrap_err().contains("too large"));
        let zero: Privacy = toml::from_str("min_noise_variance = [0, 1]").unwrap();
        assert!(zero.validate().unwrap_err().contains("min_noise_variance"));
        assert!(toml::from_str::<Privacy>("dp = \"sometimes\"").is_err());
        assert!(toml::from_str::<Privacy>("epsilon = 1.0").is_err(), "unknown keys are refused");
    }
}
