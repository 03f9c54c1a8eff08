//! The node's differencing guard, by population: it refuses to help unmask a sum
//! whose contributors differ, by too few organisations, from those of a sum it
//! already helped unmask over overlapping data (the rule is
//! [`fedcrm_protocol::rules::check_differencing`]). Keyed on what is computed
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

use fedcrm_audit::{Event, Member};
use fedcrm_protocol::pki::OrgKind;
use fedcrm_protocol::rules::{self, Coverage, Unmasked};
use fedcrm_protocol::wire::{self, Invitee, NodeRules};

/// The sums this node helped unmask.
#[derive(Debug, Default)]
pub struct DifferencingGuard {
    history: Mutex<Vec<Unmasked>>,
}

impl DifferencingGuard {
    /// Rebuild from the node's audit records (oldest first); the last record of a
    /// round counts.
    pub fn from_records(records: &[fedcrm_audit::Record]) -> Self {
        let guard = Self::default();
        let all: Vec<Unmasked> = records
            .iter()
            .filter_map(|r| match &r.event {
                Event::Contributed { round, family, window_from, window_to, contributors, .. } => Some(Unmasked {
                    round: round.clone(),
                    time_ms: r.time_ms,
                    coverage: Coverage {
                        family: family.clone(),
                        from: wire::parse_date(window_from).ok(),
                        to: wire::parse_date(window_to).ok()?,
                    },
                    contributors: contributors.iter().map(invitee).collect(),
                }),
                _ => None,
            })
            .collect();
        for u in all {
            guard.remember(u);
        }
        guard
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
    /// caller); a later record of the same round (U3 once known) replaces the earlier (U2).
    pub fn remember(&self, unmasked: Unmasked) {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        history.retain(|u| u.round != unmasked.round);
        history.push(unmasked);
    }
}

/// The audit record of a sum helped unmask.
pub fn record(u: &Unmasked, analysis: &str) -> Event {
    Event::Contributed {
        round: u.round.clone(),
        analysis: analysis.to_string(),
        family: u.coverage.family.clone(),
        window_from: u.coverage.from.map(wire::format_date).unwrap_or_default(),
        window_to: wire::format_date(u.coverage.to),
        contributors: u
            .contributors
            .iter()
            .map(|i| Member {
                name: i.name.clone(),
                organisation: i.organisation.clone(),
                kind: wire::kind_str(i.kind).to_string(),
            })
            .collect(),
    }
}

fn invitee(m: &Member) -> Invitee {
    let kind = if m.kind == "hq" { OrgKind::Hq } else { OrgKind::Franchisee };
    Invitee { name: m.name.clone(), organisation: m.organisation.clone(), kind }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fr(n: &str) -> Invitee {
        Invitee { name: n.into(), organisation: format!("{n} ltd"), kind: OrgKind::Franchisee }
    }

    #[test]
    fn the_guard_is_rebuilt_from_the_audit_records() {
        let day = |d| wire::parse_date(&format!("2026-10-{d:02}")).unwrap();
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
            event: super::record(&sum, "analysis-1"),
        };
        // A restarted node reads its log: the sum over six is remembered.
        let guard = DifferencingGuard::from_records(&[record]);
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
