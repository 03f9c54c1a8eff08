//! The franchisee's policy: which analyses it allows and under what conditions.
//! Checked by the node before anything of a round leaves it ([`crate::egress`]).

use serde::{Deserialize, Serialize};

use fedcrm_protocol::wire::RoundStart;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Analyses this node takes part in. Default: `["rfm-histograms", "rfm-segments"]`.
    #[serde(default = "default_allowed")]
    pub allowed_analyses: Vec<String>,
    /// Fewest nodes a round may have (including this one); also the lowest
    /// secure-aggregation threshold this node accepts. Default 3.
    #[serde(default = "default_min_participants")]
    pub min_participants: usize,
}

fn default_allowed() -> Vec<String> {
    vec!["rfm-histograms".into(), "rfm-segments".into()]
}

fn default_min_participants() -> usize {
    3
}

impl Default for Policy {
    fn default() -> Self {
        Self { allowed_analyses: default_allowed(), min_participants: default_min_participants() }
    }
}

impl Policy {
    /// May this node join the round? `Err` carries the reason sent to the coordinator.
    pub fn admit(&self, me: &str, r: &RoundStart) -> Result<(), String> {
        let kind = r.analysis.kind.name();
        if !self.allowed_analyses.iter().any(|a| a == kind) {
            return Err(format!("policy: analysis {kind:?} is not in allowed_analyses"));
        }
        if !r.invited.iter().any(|(n, _)| n == me) {
            return Err("policy: this node is not in the round's invitation list".into());
        }
        let n = r.invited.len();
        if n < self.min_participants {
            return Err(format!("policy: {n} nodes invited, fewer than min_participants = {}", self.min_participants));
        }
        if r.threshold < self.min_participants || 2 * r.threshold <= n || r.threshold > n {
            return Err(format!(
                "policy: threshold t = {} for {n} nodes is unsafe (need t > n/2 and t >= min_participants = {})",
                r.threshold, self.min_participants
            ));
        }
        Ok(())
    }
}
