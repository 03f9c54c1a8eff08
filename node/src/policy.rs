//! The franchisee's policy: which analyses it allows and under what conditions.
//! Checked by the node before anything of a round leaves it ([`crate::egress`]).

use std::collections::BTreeMap;

use fedcrm_analysis::rules::{Invitee, NodeRules};
use fedcrm_analysis::{neighbourhood, rules};
use fedcrm_protocol::wire::RoundStart;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Analyses this node takes part in, as the node identifies them from the
    /// computation asked (never from the coordinator's label). Default:
    /// `["rfm-histograms", "rfm-segments", "churn-model", "channel-overlap", "clv-model"]`.
    #[serde(default = "default_allowed")]
    pub allowed_analyses: Vec<String>,
    /// Fewest nodes a round may have (including this one); also the lowest
    /// secure-aggregation threshold this node accepts. Default 3.
    #[serde(default = "default_min_participants")]
    pub min_participants: usize,
    /// Fewest *franchisee organisations other than this node's own* among the nodes
    /// whose inputs can end up in a sum, on top of `assume_colluding_nodes`: a round
    /// needs `min_other_organisations + assume_colluding_nodes` of them (default 1 + 1
    /// = 2). Checked on the invitation, on U1, on U2 before masking and on U3 before
    /// signing and unmasking. HQ-owned channels never count.
    #[serde(default = "default_min_other_organisations")]
    pub min_other_organisations: usize,
    /// Franchisee organisations (other than HQ's own channels, which always count as
    /// HQ's) that may collude with HQ, with all their stores: c. The threshold rule is
    /// 2t > n + H + C, with H the HQ-owned nodes in the round and C the nodes of the c
    /// largest other franchisee organisations in it. Default 1.
    #[serde(default = "default_assume_colluding_nodes")]
    pub assume_colluding_nodes: usize,
    /// Differencing rule: two overlapping sums this node helps unmask within
    /// `differencing_window_days` must not differ by non-HQ nodes spanning fewer than
    /// max(this, assume_colluding_nodes + 2) organisations. Default 3.
    #[serde(default = "default_min_population_difference")]
    pub min_population_difference: usize,
    /// Days a sum this node helped unmask counts for the differencing rule. Default 30.
    #[serde(default = "default_differencing_window_days")]
    pub differencing_window_days: u32,
    /// Limits on every histogram this node computes.
    #[serde(default)]
    pub histograms: HistogramLimits,
    /// Most analyses per calendar month (UTC) per kind, e.g. `{ "rfm-segments" = 20 }`
    /// (an analysis counts once, whatever its number of rounds). Kinds not listed are
    /// not capped. Default `{ "churn-model" = 4, "channel-overlap" = 4 }`: each churn
    /// training is up to `[policy.churn] max_rounds` sums over this node's customers,
    /// and each PSI run tests this node's list against each peer's.
    #[serde(default = "default_caps")]
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
    /// Issue 10: differential privacy — required or optional, the monthly budget, the
    /// noise this node accepts. TOML `[policy.privacy]`.
    #[serde(default)]
    pub privacy: crate::privacy::Privacy,
    /// Issue 11: churn-model training. TOML `[policy.churn]`.
    #[serde(default)]
    pub churn: crate::analyses::churn::ChurnLimits,
    /// Issue 13: customer-lifetime-value fits. TOML `[policy.clv]`.
    #[serde(default)]
    pub clv: crate::analyses::clv::ClvLimits,
    /// Issue 12: the peer lists this node blinds in private set intersection. TOML
    /// `[policy.psi]`.
    #[serde(default)]
    pub psi: crate::psi::PsiLimits,
}

/// Resolution limits on histograms. TOML `[policy.histograms]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistogramLimits {
    /// Most bins in one histogram. Default 1024 (the exact quantile search's refinement passes).
    #[serde(default = "default_max_bins")]
    pub max_bins: u32,
    /// Narrowest bin for recency, in days. Default 1.
    #[serde(default = "one")]
    pub min_width_recency_days: u64,
    /// Narrowest bin for frequency, in purchase days. Default 1.
    #[serde(default = "one")]
    pub min_width_frequency: u64,
    /// Narrowest bin for monetary value, in cents. Default 1.
    #[serde(default = "one")]
    pub min_width_monetary_cents: u64,
}

fn default_max_bins() -> u32 {
    1024
}
fn one() -> u64 {
    1
}

impl Default for HistogramLimits {
    fn default() -> Self {
        Self {
            max_bins: default_max_bins(),
            min_width_recency_days: 1,
            min_width_frequency: 1,
            min_width_monetary_cents: 1,
        }
    }
}

impl HistogramLimits {
    /// The narrowest bin allowed for `metric`.
    pub fn min_width(&self, metric: fedcrm_analysis::rfm::Metric) -> u64 {
        use fedcrm_analysis::rfm::Metric;
        match metric {
            Metric::Recency => self.min_width_recency_days,
            Metric::Frequency => self.min_width_frequency,
            Metric::Monetary => self.min_width_monetary_cents,
        }
        .max(1)
    }
}

fn default_allowed() -> Vec<String> {
    vec![
        "rfm-histograms".into(),
        "rfm-segments".into(),
        "churn-model".into(),
        "channel-overlap".into(),
        "clv-model".into(),
    ]
}

fn default_min_participants() -> usize {
    3
}

fn default_min_other_organisations() -> usize {
    1
}

fn default_assume_colluding_nodes() -> usize {
    1
}

fn default_min_population_difference() -> usize {
    3
}

fn default_differencing_window_days() -> u32 {
    30
}

fn default_caps() -> BTreeMap<String, u32> {
    BTreeMap::from([
        (crate::analyses::churn::CHURN_MODEL.to_string(), 4),
        (crate::analyses::clv::CLV_MODEL.to_string(), 4),
        (fedcrm_protocol::wire::CHANNEL_OVERLAP.to_string(), 4),
    ])
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
            assume_colluding_nodes: default_assume_colluding_nodes(),
            min_population_difference: default_min_population_difference(),
            differencing_window_days: default_differencing_window_days(),
            histograms: HistogramLimits::default(),
            monthly_analysis_caps: default_caps(),
            manual_approval: vec![],
            approval_expires_seconds: default_approval_expires(),
            approval_valid_seconds: default_approval_valid(),
            privacy: crate::privacy::Privacy::default(),
            churn: Default::default(),
            clv: Default::default(),
            psi: Default::default(),
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

pub use fedcrm_analysis::rules::{Stage, other_organisations};

/// Analysis kinds a policy may name (as the node identifies them from the computation).
pub const KNOWN_ANALYSES: [&str; 5] = [
    crate::analyses::rfm::RFM_HISTOGRAMS,
    crate::analyses::rfm::RFM_SEGMENTS,
    crate::analyses::churn::CHURN_MODEL,
    crate::analyses::clv::CLV_MODEL,
    fedcrm_protocol::wire::CHANNEL_OVERLAP,
];

impl Policy {
    /// Refuse values that would silently weaken the policy: an analysis name that is
    /// not one (a typo would drop a cap or an approval), fewer than 3 participants,
    /// and counts beyond what a node may announce.
    pub fn validate(&self) -> Result<(), String> {
        let known = |list: &str, name: &str| -> Result<(), String> {
            if KNOWN_ANALYSES.contains(&name) {
                Ok(())
            } else {
                Err(format!(
                    "policy.{list} names {name:?}, which is not an analysis; use one of {}",
                    KNOWN_ANALYSES.map(|a| format!("{a:?}")).join(", ")
                ))
            }
        };
        for a in &self.allowed_analyses {
            known("allowed_analyses", a)?;
        }
        for a in &self.manual_approval {
            known("manual_approval", a)?;
        }
        for a in self.monthly_analysis_caps.keys() {
            known("monthly_analysis_caps", a)?;
        }
        if self.min_participants < 3 {
            return Err(format!(
                "policy.min_participants = {} is unsafe: with fewer than 3 nodes a sum is one other node's data away \
                 from yours; use 3 or more",
                self.min_participants
            ));
        }
        let max = fedcrm_protocol::wire::MAX_RULE as usize;
        for (name, v) in [
            ("assume_colluding_nodes", self.assume_colluding_nodes),
            ("min_other_organisations", self.min_other_organisations),
            ("min_participants", self.min_participants),
            ("min_population_difference", self.min_population_difference),
        ] {
            if v > max {
                return Err(format!("policy.{name} = {v} is larger than {max}, the most a node may announce"));
            }
        }
        if self.histograms.max_bins == 0 {
            return Err("policy.histograms.max_bins is 0; use 1 or more (default 1024)".into());
        }
        self.psi.validate()?;
        self.privacy.validate()
    }

    /// The rules this node announces in `Hello`.
    pub fn rules(&self) -> NodeRules {
        NodeRules {
            assume_colluding_nodes: self.assume_colluding_nodes,
            min_other_organisations: self.min_other_organisations,
            min_participants: self.min_participants,
            min_population_difference: self.min_population_difference,
            differencing_window_days: self.differencing_window_days,
        }
    }

    /// Organisations a differencing set must span: max(min_population_difference, c + 2).
    pub fn required_difference(&self) -> usize {
        rules::required_difference(&self.rules())
    }

    /// May this node join the round? `Err` carries the reason sent to the coordinator.
    /// `kind` is the analysis as this node identified it from the computation.
    pub fn admit(&self, me: &str, own_org: &str, r: &RoundStart, kind: &str, caps: CapState) -> Result<(), String> {
        if !self.allowed_analyses.iter().any(|a| a == kind) {
            return Err(format!(
                "policy: analysis {kind:?} (as this node identifies the computation) is not in allowed_analyses"
            ));
        }
        if !r.invited.iter().any(|i| i.name == me) {
            return Err("policy: this node is not in the round's invitation list".into());
        }
        let n = r.invited.len();
        if n < self.min_participants {
            return Err(format!("policy: {n} nodes invited, fewer than min_participants = {}", self.min_participants));
        }
        if r.degree == 0 {
            self.check_set(own_org, &r.invited, r.threshold, Stage::Invited)?;
        } else {
            neighbourhood::check_invitation(&self.rules(), own_org, &r.invited, r.degree, r.threshold)?;
        }
        if let Some(&cap) = self.monthly_analysis_caps.get(kind)
            && !caps.already_counted
            && caps.analyses_this_month >= cap
        {
            return Err(format!(
                "policy: the monthly cap of {cap} {kind:?} analyses is reached; it resets on the 1st (UTC)"
            ));
        }
        Ok(())
    }

    /// The threshold and organisation rules over one set of a round
    /// ([`fedcrm_analysis::rules`]).
    pub fn check_set(&self, own_org: &str, members: &[Invitee], t: usize, stage: Stage) -> Result<(), String> {
        rules::check_set(&self.rules(), own_org, members, t, stage)
    }

    /// Does this analysis wait for manual approval?
    pub fn needs_approval(&self, analysis: &str) -> bool {
        self.manual_approval.iter().any(|a| a == analysis)
    }
}

#[cfg(test)]
mod tests {
    use super::{CapState, Invitee, Policy};
    use fedcrm_analysis::date::parse_date;
    use fedcrm_analysis::rfm::Cuts;
    use fedcrm_pki::OrgKind;
    use fedcrm_protocol::wire::{Analysis, AnalysisKind, RoundStart};

    fn member(name: &str, org: &str, kind: OrgKind) -> Invitee {
        Invitee { name: name.into(), organisation: org.into(), kind }
    }

    fn start(invited: Vec<Invitee>, threshold: usize) -> RoundStart {
        RoundStart {
            round: fedcrm_crypto::RoundId([1; 16]),
            threshold,
            length: 4,
            width: fedcrm_crypto::word::WordWidth::W32,
            max_per_node: 1 << 22,
            degree: 0,
            setup: None,
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
            noise: None,
        }
    }

    #[test]
    fn manual_approval_may_name_psi_runs_but_not_an_unknown_analysis() {
        let p = Policy { manual_approval: vec!["channel-overlap".into()], ..Policy::default() };
        assert_eq!(p.validate(), Ok(()));
        assert!(p.needs_approval("channel-overlap") && !p.needs_approval("rfm-segments"));
        let p = Policy { manual_approval: vec!["channel-overlaps".into()], ..Policy::default() };
        assert!(p.validate().unwrap_err().contains("not an analysis"));
        assert_eq!(Policy::default().validate(), Ok(()));
    }

    #[test]
    fn psi_limits_that_protect_nothing_or_admit_no_list_are_refused() {
        let with = |f: &dyn Fn(&mut crate::psi::PsiLimits)| {
            let mut p = Policy::default();
            f(&mut p.psi);
            p.validate()
        };
        let err = with(&|l| l.max_traps = 100).unwrap_err();
        assert!(err.contains("max_traps = 100 is too few") && err.contains("use 1024 or more"), "{err}");
        assert_eq!(with(&|l| l.max_traps = crate::psi::MIN_TRAPS), Ok(()));
        let err = with(&|l| l.min_list_points = l.max_list_points + 1).unwrap_err();
        assert!(err.contains("no peer list would be accepted"), "{err}");
        let err = with(&|l| l.max_traps = l.max_list_points).unwrap_err();
        assert!(err.contains("leaves no room for identifiers"), "{err}");
        let err = with(&|l| l.min_exact_count = 1).unwrap_err();
        assert!(err.contains("min_exact_count = 1 withholds nothing"), "{err}");
        assert_eq!(with(&|l| l.min_exact_count = 2), Ok(()));
    }

    #[test]
    fn monthly_caps_refuse_beyond_the_cap() {
        let mut p = Policy::default();
        p.monthly_analysis_caps.insert("rfm-segments".into(), 2);
        let invited: Vec<Invitee> =
            ["a", "b", "c"].iter().map(|n| member(n, &format!("{n} Ltd"), OrgKind::Franchisee)).collect();
        let start = start(invited, 3);
        let caps = |n, counted| CapState { analyses_this_month: n, already_counted: counted };
        assert!(p.admit("a", "a Ltd", &start, "rfm-segments", caps(1, false)).is_ok());
        let err = p.admit("a", "a Ltd", &start, "rfm-segments", caps(2, false)).unwrap_err();
        assert!(err.contains("monthly cap of 2"), "{err}");
        // Later rounds of an analysis already admitted this month are not new analyses.
        assert!(p.admit("a", "a Ltd", &start, "rfm-segments", caps(2, true)).is_ok());
        p.allowed_analyses = vec!["rfm-histograms".into()];
        assert!(
            p.admit("a", "a Ltd", &start, "rfm-segments", caps(0, false)).unwrap_err().contains("allowed_analyses")
        );
    }

    #[test]
    fn a_round_failing_the_threshold_or_organisation_rule_is_refused_at_the_invitation() {
        let p = Policy::default();
        let mut invited: Vec<Invitee> = (1..=5).map(|i| member(&format!("hq-{i}"), "HQ", OrgKind::Hq)).collect();
        invited.push(member("me", "Me Ltd", OrgKind::Franchisee));
        invited.push(member("other", "Other Ltd", OrgKind::Franchisee));
        let err = p.admit("me", "Me Ltd", &start(invited.clone(), 5), "rfm-segments", CapState::default()).unwrap_err();
        assert!(err.contains("2t > n + H + C"), "{err}");
        let err = p.admit("me", "Me Ltd", &start(invited, 7), "rfm-segments", CapState::default()).unwrap_err();
        assert!(err.contains("HQ-owned channels do not count"), "{err}");
    }
}
