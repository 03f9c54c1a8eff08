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

/// Refuses to help compute the same query over two sets of contributors that differ
/// by fewer than `min_participants` nodes: the difference of the two sums would be the
/// data of those few nodes. Keyed by the query (analysis parameters without the
/// purpose text); checked when the node is asked to unmask, when the contributors
/// (U3) are known.
///
/// Kept in memory for the node's lifetime; persisting it with the audit log is
/// future work (docs/threat-model.md).
#[derive(Debug, Default)]
pub struct DifferencingGuard {
    seen: std::sync::Mutex<std::collections::HashMap<Vec<u8>, Vec<std::collections::BTreeSet<String>>>>,
}

impl DifferencingGuard {
    /// May this node unmask `query` over `contributors`? Records them if so.
    pub fn admit(&self, query: &[u8], contributors: &[String], min_participants: usize) -> Result<(), String> {
        let now: std::collections::BTreeSet<String> = contributors.iter().cloned().collect();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let previous = seen.entry(query.to_vec()).or_default();
        for before in previous.iter() {
            let gone = before.difference(&now).count();
            let added = now.difference(before).count();
            if (gone > 0 && gone < min_participants) || (added > 0 && added < min_participants) {
                return Err(format!(
                    "policy: this query already ran over a set of nodes that differs from this one by {} node(s); \
                     the two results together would reveal the data of fewer than min_participants = {min_participants} nodes",
                    gone.max(added)
                ));
            }
        }
        if !previous.contains(&now) {
            previous.push(now);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::DifferencingGuard;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn differencing_by_fewer_than_min_participants_is_refused() {
        let g = DifferencingGuard::default();
        g.admit(b"q", &v(&["a", "b", "c", "d", "e"]), 3).unwrap();
        g.admit(b"q", &v(&["a", "b", "c", "d", "e"]), 3).unwrap();
        assert!(g.admit(b"q", &v(&["a", "b", "c", "d"]), 3).is_err());
        assert!(g.admit(b"q", &v(&["a", "b", "c", "d", "e", "f"]), 3).is_err());
        g.admit(b"q", &v(&["a", "b"]), 3).unwrap(); // differs by 3: an aggregate of 3 nodes
        g.admit(b"other", &v(&["a", "b", "c", "d"]), 3).unwrap();
    }
}
