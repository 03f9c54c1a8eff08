//! The node's differencing guard, by population: it refuses to help unmask a sum
//! whose contributors differ, by too few organisations, from those of a sum it
//! already helped unmask over overlapping data (the rule is
//! [`fedcrm_analysis::rules::check_differencing`]). Keyed on what is computed
//! (analysis family and data window) and who contributes, never on the exact query
//! bytes, and persisted: every sum its input may be in is an [`Event::Contributed`]
//! record in the node's audit log — over U2 before it masks, replaced by U3 before it
//! signs the round's view (the coordinator need not ask it anything after its masked
//! input, so recording only at unmasking would miss sums) — from which the guard is
//! rebuilt at start-up.
//!
//! A speed bump, not the defence: differences spanning enough organisations, or
//! sums further apart than the window, are allowed. Differential privacy (a later
//! analysis layer) is what bounds what any set of releases reveals.

use std::sync::Mutex;

use fedcrm_analysis::rules::{self, Coverage, Unmasked};
use fedcrm_analysis::rules::{Invitee, NodeRules};
use fedcrm_audit::{Event, Member};

/// When a sum was recorded, which decides how a record replaces earlier ones of its round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Over U2, before the masked vector left: the sum is over some part of it.
    Masked,
    /// Over a U3 this node was shown in the consistency check (kept beside U2: the
    /// coordinator might show other nodes another view).
    Shown,
    /// Over the U3 that t signatures confirmed: replaces every earlier set of the round.
    Unmasked,
}

impl Recorded {
    fn as_str(self) -> &'static str {
        match self {
            Recorded::Masked => "masked",
            Recorded::Shown => "shown",
            Recorded::Unmasked => "unmasked",
        }
    }
}

/// The sums this node's input may be in.
#[derive(Debug, Default)]
pub struct DifferencingGuard {
    history: Mutex<Vec<Unmasked>>,
}

impl DifferencingGuard {
    /// Rebuild from the node's audit records (oldest first): a confirmed U3 replaces
    /// its round's earlier sets. `Err` for a record that does not parse — the node
    /// does not start with a guard it cannot trust.
    pub fn from_records(records: &[fedcrm_audit::Record]) -> Result<Self, String> {
        let guard = Self::default();
        for r in records {
            if let Some(sum) = r.contributed_sum() {
                let (sum, replaces) = sum?;
                guard.remember(sum, if replaces { Recorded::Unmasked } else { Recorded::Masked });
            }
        }
        Ok(guard)
    }

    /// May this node help compute a sum covering `coverage` over `contributors` in
    /// `round` now? The round's own earlier record (U2, before U3 was known) is not
    /// compared with itself.
    pub fn check(
        &self,
        rules: &NodeRules,
        me: &str,
        round: fedcrm_crypto::RoundId,
        now_ms: u64,
        coverage: &Coverage,
        contributors: &[Invitee],
    ) -> Result<(), String> {
        let round = round.to_hex();
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let others: Vec<Unmasked> = history.iter().filter(|u| u.round != round).cloned().collect();
        rules::check_differencing(rules, me, &others, now_ms, coverage, contributors)
    }

    /// Remember a sum this node's input may be in (its audit record is written by the
    /// caller). A confirmed U3 replaces every earlier set of its round; the others add.
    pub fn remember(&self, unmasked: Unmasked, stage: Recorded) {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if stage == Recorded::Unmasked {
            history.retain(|u| u.round != unmasked.round);
        }
        history.push(unmasked);
    }
}

/// The audit record of a sum this node's input may be in.
pub fn record(u: &Unmasked, analysis: &str, stage: Recorded) -> Event {
    Event::Contributed {
        stage: stage.as_str().to_string(),
        round: u.round.clone(),
        analysis: analysis.to_string(),
        family: u.coverage.family.clone(),
        window_from: u.coverage.from.map(fedcrm_analysis::date::format_date).unwrap_or_default(),
        window_to: fedcrm_analysis::date::format_date(u.coverage.to),
        contributors: u
            .contributors
            .iter()
            .map(|i| Member {
                name: i.name.clone(),
                organisation: i.organisation.clone(),
                kind: i.kind.as_str().to_string(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedcrm_pki::OrgKind;

    fn fr(n: &str) -> Invitee {
        Invitee { name: n.into(), organisation: format!("{n} ltd"), kind: OrgKind::Franchisee }
    }

    #[test]
    fn the_guard_is_rebuilt_from_the_audit_records() {
        let day = |d| fedcrm_analysis::date::parse_date(&format!("2026-10-{d:02}")).unwrap();
        let six: Vec<Invitee> = ["a", "b", "c", "d", "e", "f"].iter().map(|n| fr(n)).collect();
        let sum = Unmasked {
            round: "r1".into(),
            time_ms: 1_000_000,
            coverage: Coverage { family: "rfm".into(), from: None, to: day(1) },
            contributors: six.clone(),
        };
        let record = fedcrm_audit::Record {
            seq: 7,
            prev: fedcrm_audit::GENESIS.into(),
            time_ms: sum.time_ms,
            party: "a".into(),
            event: super::record(&sum, "analysis-1", Recorded::Unmasked),
        };
        // A restarted node reads its log: the sum over six is remembered.
        let guard = DifferencingGuard::from_records(&[record]).unwrap();
        let rules = NodeRules {
            assume_colluding_nodes: 1,
            min_other_organisations: 1,
            min_participants: 3,
            min_population_difference: 3,
            differencing_window_days: 30,
        };
        let next = Coverage { family: "rfm".into(), from: None, to: day(2) };
        let err = guard.check(&rules, "a", fedcrm_crypto::RoundId([9; 16]), 2_000_000, &next, &six[..5]).unwrap_err();
        assert!(err.contains("round r1") && err.contains("by f"), "{err}");
        guard.check(&rules, "a", fedcrm_crypto::RoundId([9; 16]), 2_000_000, &next, &six).unwrap();
    }
}
