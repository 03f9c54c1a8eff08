//! The franchisee's policy: which analyses it allows and under what conditions.
//! Checked by the node before anything of a round leaves it ([`crate::egress`]).

use std::collections::{BTreeMap, BTreeSet};

use fedcrm_protocol::pki::OrgKind;
use fedcrm_protocol::wire::{Invitee, RoundStart};
use serde::{Deserialize, Serialize};

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
    /// Fewest *franchisee organisations other than this node's own* among a round's
    /// nodes, checked when the round is offered and again before unmasking. Nodes of
    /// HQ-owned channels never count, so HQ's own stores plus this franchisee can
    /// never make a round that exposes it. Default 1.
    #[serde(default = "default_min_other_organisations")]
    pub min_other_organisations: usize,
    /// Most analyses per calendar month (UTC) per kind, e.g. `{ "rfm-segments" = 20 }`
    /// (an analysis counts once, whatever its number of rounds). Kinds not listed are
    /// not capped.
    #[serde(default)]
    pub monthly_analysis_caps: BTreeMap<String, u32>,
    /// Analyses that wait for a person's approval (`fedcrm node pending`,
    /// `fedcrm node approve ID`) before this node takes part. Default none.
    #[serde(default)]
    pub manual_approval: Vec<String>,
    /// Seconds a request waits for approval before it expires. Default 259200 (72 h).
    #[serde(default = "default_approval_expires")]
    pub approval_expires_seconds: u64,
    /// Seconds an approval stays valid once granted. Default 86400 (24 h).
    #[serde(default = "default_approval_valid")]
    pub approval_valid_seconds: u64,
}

fn default_allowed() -> Vec<String> {
    vec!["rfm-histograms".into(), "rfm-segments".into()]
}

fn default_min_participants() -> usize {
    3
}

fn default_min_other_organisations() -> usize {
    1
}

fn default_approval_expires() -> u64 {
    72 * 3600
}

fn default_approval_valid() -> u64 {
    24 * 3600
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allowed_analyses: default_allowed(),
            min_participants: default_min_participants(),
            min_other_organisations: default_min_other_organisations(),
            monthly_analysis_caps: BTreeMap::new(),
            manual_approval: vec![],
            approval_expires_seconds: default_approval_expires(),
            approval_valid_seconds: default_approval_valid(),
        }
    }
}

/// Where this node stands against its monthly cap for an analysis kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapState {
    /// Analyses of this kind joined this calendar month.
    pub analyses_this_month: u32,
    /// This analysis is one of them (a later round of it).
    pub already_counted: bool,
}

/// Distinct franchisee organisations among `members`, other than `own`.
pub fn other_organisations<'a>(own: &str, members: impl IntoIterator<Item = &'a Invitee>) -> usize {
    members
        .into_iter()
        .filter(|m| m.kind == OrgKind::Franchisee && m.organisation != own)
        .map(|m| m.organisation.as_str())
        .collect::<BTreeSet<_>>()
        .len()
}

impl Policy {
    /// May this node join the round? `Err` carries the reason sent to the coordinator.
    /// Policies name analyses (`analysis_kind`): every round of an admitted analysis
    /// is admitted under the same rules.
    pub fn admit(&self, me: &str, own_org: &str, r: &RoundStart, caps: CapState) -> Result<(), String> {
        let kind = r.analysis.analysis_kind.as_str();
        if !self.allowed_analyses.iter().any(|a| a == kind) {
            return Err(format!("policy: analysis {kind:?} is not in allowed_analyses"));
        }
        if !r.invited.iter().any(|i| i.name == me) {
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
        self.check_organisations(own_org, &r.invited, "invited")?;
        if let Some(&cap) = self.monthly_analysis_caps.get(kind) {
            if !caps.already_counted && caps.analyses_this_month >= cap {
                return Err(format!(
                    "policy: the monthly cap of {cap} {kind:?} analyses is reached; it resets on the 1st (UTC)"
                ));
            }
        }
        Ok(())
    }

    /// The participant rule over a set of members (the invited nodes, or the
    /// survivors about to be unmasked).
    pub fn check_organisations(&self, own_org: &str, members: &[Invitee], which: &str) -> Result<(), String> {
        let others = other_organisations(own_org, members);
        if others < self.min_other_organisations {
            return Err(format!(
                "policy: the {which} nodes include {others} franchisee organisation(s) other than this node's own, fewer \
                 than min_other_organisations = {}; HQ-owned channels do not count",
                self.min_other_organisations
            ));
        }
        Ok(())
    }

    /// Does this analysis wait for manual approval?
    pub fn needs_approval(&self, analysis: &str) -> bool {
        self.manual_approval.iter().any(|a| a == analysis)
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
    use super::{CapState, DifferencingGuard, Invitee, OrgKind, Policy, other_organisations};

    fn member(name: &str, org: &str, kind: OrgKind) -> Invitee {
        Invitee { name: name.into(), organisation: org.into(), kind }
    }

    #[test]
    fn monthly_caps_refuse_beyond_the_cap() {
        use fedcrm_protocol::rfm::Cuts;
        use fedcrm_protocol::wire::{Analysis, AnalysisKind, RoundStart, parse_date};
        let mut p = Policy::default();
        p.monthly_analysis_caps.insert("rfm-segments".into(), 2);
        let invited: Vec<Invitee> =
            ["a", "b", "c"].iter().map(|n| member(n, &format!("{n} Ltd"), OrgKind::Franchisee)).collect();
        let start = RoundStart {
            round: fedcrm_crypto::RoundId([1; 16]),
            threshold: 3,
            length: 4,
            analysis: Analysis {
                reference_date: parse_date("2026-10-31").unwrap(),
                purpose: "p".into(),
                requested_by: "x".into(),
                requested_by_organisation: "HQ".into(),
                analysis_id: "i".into(),
                analysis_kind: "rfm-segments".into(),
                kind: AnalysisKind::RfmSegments(Cuts { recency: [1; 4], frequency: [1; 4], monetary: [1; 4] }),
            },
            invited,
            chunk_elements: 10,
            roster_signature: vec![],
        };
        let caps = |n, counted| CapState { analyses_this_month: n, already_counted: counted };
        assert!(p.admit("a", "a Ltd", &start, caps(1, false)).is_ok());
        let err = p.admit("a", "a Ltd", &start, caps(2, false)).unwrap_err();
        assert!(err.contains("monthly cap of 2"), "{err}");
        // Later rounds of an analysis already admitted this month are not new analyses.
        assert!(p.admit("a", "a Ltd", &start, caps(2, true)).is_ok());
        p.allowed_analyses = vec!["rfm-histograms".into()];
        assert!(p.admit("a", "a Ltd", &start, caps(0, false)).unwrap_err().contains("allowed_analyses"));
    }

    #[test]
    fn hq_channels_never_count_as_other_organisations() {
        let hq = |n: &str| member(n, "Brand HQ", OrgKind::Hq);
        let me = member("fr-a", "A Ltd", OrgKind::Franchisee);
        let round = vec![hq("hq-1"), hq("hq-2"), hq("hq-3"), me.clone()];
        assert_eq!(other_organisations("A Ltd", &round), 0);
        let p = Policy::default();
        assert!(p.check_organisations("A Ltd", &round, "invited").is_err());
        let mut round = round;
        round.push(member("fr-b", "B Ltd", OrgKind::Franchisee));
        round.push(member("fr-a2", "A Ltd", OrgKind::Franchisee)); // my own organisation's second store
        assert_eq!(other_organisations("A Ltd", &round), 1);
        assert!(p.check_organisations("A Ltd", &round, "invited").is_ok());
    }

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
