//! Issue 10: every node's privacy budget as the coordinator knows it — what the node
//! announced in its last Hello (its policy, its budget, what it had spent this month),
//! plus the charges the coordinator has seen leave it since (a noised masked vector
//! arriving costs the node [`fedcrm_protocol::wire::AnalysisKind::charge`], the same
//! function the node charges itself with). The nodes enforce their budgets themselves;
//! this lets HQ refuse up front an analysis that would exceed one, naming the node,
//! instead of starting rounds a node will refuse.

use std::collections::BTreeMap;
use std::sync::Mutex;

use fedcrm_dp::accounting::Charge;
use fedcrm_dp::budget::{Budget, Month};
use fedcrm_protocol::wire::PrivacyStatus;
use serde::Serialize;

#[derive(Debug, Clone)]
struct Tracked {
    announced: PrivacyStatus,
    /// Charges seen since the announcement: (time ms, charge).
    since: Vec<(u64, Charge)>,
}

/// The budgets of every node that has connected since the coordinator started.
#[derive(Debug, Default)]
pub struct Budgets {
    nodes: Mutex<BTreeMap<String, Tracked>>,
}

/// One node's budget for a month, as the coordinator knows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BudgetRow {
    pub node: String,
    /// "required" or "optional".
    pub dp: &'static str,
    /// The budget in words, e.g. "ε = 4 at δ = 1e-6 per calendar month (UTC)".
    pub budget: String,
    /// The month (UTC), YYYY-MM.
    pub month: String,
    /// Charges this month and their composition.
    pub charges: usize,
    pub rho: f64,
    pub xi: f64,
    /// Used and allowed, in the budget's unit (ε or ρ); remaining = limit − used.
    pub unit: &'static str,
    pub used: f64,
    pub limit: f64,
    pub remaining: f64,
    /// The smallest per-node noise variance the node accepts.
    pub min_noise_variance: String,
}

impl Budgets {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Tracked>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A node's Hello: its announcement replaces what the coordinator knew.
    pub fn announce(&self, node: &str, status: PrivacyStatus) {
        self.lock().insert(node.to_string(), Tracked { announced: status, since: Vec::new() });
    }

    /// A node's noised masked vector arrived at `time_ms`: it charged `charge`.
    pub fn observe(&self, node: &str, time_ms: u64, charge: Charge) {
        if let Some(t) = self.lock().get_mut(node) {
            t.since.push((time_ms, charge));
        }
    }

    /// What `node` announced, if it has connected.
    pub fn announced(&self, node: &str) -> Option<PrivacyStatus> {
        self.lock().get(node).map(|t| t.announced.clone())
    }

    fn spent(t: &Tracked, month: Month) -> (Charge, usize) {
        let base =
            if t.announced.month == month { (t.announced.spent, t.announced.charges) } else { Default::default() };
        t.since.iter().filter(|(ms, _)| Month::of(*ms) == month).fold(base, |(c, n), (_, x)| (c.compose(*x), n + 1))
    }

    /// Whether `planned` more this month stays within `node`'s budget; `Err` names the
    /// node, its budget and what the analysis would use.
    pub fn check(&self, node: &str, now_ms: u64, planned: Charge) -> Result<(), String> {
        let nodes = self.lock();
        let Some(t) = nodes.get(node) else { return Ok(()) };
        let month = Month::of(now_ms);
        let (spent, n) = Self::spent(t, month);
        let budget = t.announced.budget;
        if budget.allows(spent.compose(planned)) {
            return Ok(());
        }
        let (before, limit) = budget.used(spent);
        let after = budget.used(spent.compose(planned)).0;
        Err(format!(
            "{node}: its privacy budget ({}) would be exceeded — {n} charge(s) in {month} use {before:.4} of \
             {limit}, this analysis would bring it to {after:.4}; it renews on the 1st of next month (UTC), or the \
             franchisee may raise it in [policy.privacy]",
            budget.describe()
        ))
    }

    /// Every known node's budget in the month of `now_ms`.
    pub fn table(&self, now_ms: u64) -> Vec<BudgetRow> {
        let month = Month::of(now_ms);
        self.lock()
            .iter()
            .map(|(node, t)| {
                let (spent, charges) = Self::spent(t, month);
                let budget = t.announced.budget;
                let (used, limit) = budget.used(spent);
                BudgetRow {
                    node: node.clone(),
                    dp: if t.announced.dp_required { "required" } else { "optional" },
                    budget: budget.describe(),
                    month: month.to_string(),
                    charges,
                    rho: spent.rho,
                    xi: spent.xi,
                    unit: match budget {
                        Budget::Epsilon { .. } => "epsilon",
                        Budget::Rho { .. } => "rho",
                    },
                    used,
                    limit,
                    remaining: (limit - used).max(0.0),
                    min_noise_variance: t.announced.min_noise.to_string(),
                }
            })
            .collect()
    }

    /// `hq budget`: every name in `enrolled`, in that order, with its row for the month
    /// of `now_ms` (`None`: it has not connected since the coordinator started, so its
    /// budget is unknown), then the rows of nodes no longer enrolled.
    pub fn for_enrolled(&self, now_ms: u64, enrolled: &[String]) -> Vec<(String, Option<BudgetRow>)> {
        let mut rows: BTreeMap<String, BudgetRow> =
            self.table(now_ms).into_iter().map(|r| (r.node.clone(), r)).collect();
        let mut out: Vec<(String, Option<BudgetRow>)> =
            enrolled.iter().map(|name| (name.clone(), rows.remove(name))).collect();
        out.extend(rows.into_iter().map(|(name, row)| (name, Some(row))));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedcrm_dp::sampler::Variance;

    /// 2026-11-30T23:59:59.999Z and the next millisecond.
    const NOV_END: u64 = 1_796_083_199_999;

    fn status(month: &str, rho: f64) -> PrivacyStatus {
        PrivacyStatus {
            dp_required: true,
            budget: Budget::Rho { rho: 0.5, xi: 1e-6 },
            min_noise: Variance::integer(4).unwrap(),
            month: month.parse().unwrap(),
            spent: Charge { rho, xi: 0.0 },
            charges: 1,
        }
    }

    #[test]
    fn announced_spending_plus_observed_charges_decide_and_a_new_month_renews() {
        let b = Budgets::default();
        b.announce("a", status("2026-11", 0.3));
        let c = Charge { rho: 0.1, xi: 0.0 };
        assert_eq!(b.check("a", NOV_END, c), Ok(()));
        b.observe("a", NOV_END - 1, c);
        let e = b.check("a", NOV_END, Charge { rho: 0.15, xi: 0.0 }).unwrap_err();
        assert!(e.starts_with("a: its privacy budget") && e.contains("2 charge(s) in 2026-11"), "{e}");
        let row = &b.table(NOV_END)[0];
        assert_eq!((row.charges, row.unit), (2, "rho"));
        assert!((row.remaining - 0.1).abs() < 1e-12, "{row:?}");
        // December: the November spending no longer counts.
        assert_eq!(b.check("a", NOV_END + 1, Charge { rho: 0.45, xi: 0.0 }), Ok(()));
        // An announcement from an earlier month counts nothing in this one.
        b.announce("a", status("2026-10", 0.49));
        assert_eq!(b.check("a", NOV_END, Charge { rho: 0.45, xi: 0.0 }), Ok(()));
        // An unknown node is the node's own business (it refuses if it must).
        assert_eq!(b.check("zz", NOV_END, Charge { rho: 9.0, xi: 0.0 }), Ok(()));
    }

    #[test]
    fn enrolled_nodes_come_first_and_unknown_ones_have_no_row() {
        let b = Budgets::default();
        b.announce("a", status("2026-11", 0.3));
        b.announce("gone", status("2026-11", 0.1));
        let enrolled = ["never".to_string(), "a".to_string()];
        let rows = b.for_enrolled(NOV_END, &enrolled);
        let names: Vec<&str> = rows.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["never", "a", "gone"]);
        assert!(rows[0].1.is_none(), "never connected: unknown, not zero");
        let table = b.table(NOV_END);
        assert_eq!(rows[1].1.as_ref(), table.iter().find(|r| r.node == "a"));
        assert_eq!(rows[2].1.as_ref(), table.iter().find(|r| r.node == "gone"));
    }
}
