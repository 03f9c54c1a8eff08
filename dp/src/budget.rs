//! A node's privacy budget per calendar month (UTC), as its own policy states it, and
//! the ledger of what it has spent — rebuilt by the node from its audit log, so it
//! survives restarts and HQ cannot spend it behind the node's back. Pure: the caller
//! passes the time (no clock here) and the charges.
//!
//! A charge is recorded when the noised vector *leaves* the node, whatever happens to the
//! round afterwards: a round that is aborted and retried costs twice (otherwise averaging
//! retries would remove the noise).

use crate::accounting::Charge;

/// What a node allows per calendar month: ε at a stated δ, or ρ (zCDP).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// The month's charges, composed and converted ([`Charge::epsilon`]), must stay at or
    /// below ε at this δ.
    Epsilon { epsilon: f64, delta: f64 },
    /// The month's ρ must stay at or below this, and its additive term ξ (the τ·d of
    /// distributed noise) at or below `xi`.
    Rho { rho: f64, xi: f64 },
}

impl Budget {
    /// A budget from its policy or wire fields: ε > 0 at 0 < δ < 1, or ρ > 0 with ξ ≥ 0;
    /// every number finite. `Err` says which is wrong.
    pub fn checked(self) -> Result<Self, String> {
        let ok = match self {
            Budget::Epsilon { epsilon, delta } => {
                epsilon.is_finite() && epsilon > 0.0 && delta.is_finite() && delta > 0.0 && delta < 1.0
            }
            Budget::Rho { rho, xi } => rho.is_finite() && rho > 0.0 && xi.is_finite() && xi >= 0.0,
        };
        if ok {
            Ok(self)
        } else {
            Err(format!("invalid privacy budget {self:?}: need ε > 0 at 0 < δ < 1, or ρ > 0 with ξ ≥ 0"))
        }
    }

    /// Whether `spent` is within the budget.
    pub fn allows(&self, spent: Charge) -> bool {
        match *self {
            Budget::Epsilon { epsilon, delta } => spent.epsilon(delta).0 <= epsilon,
            Budget::Rho { rho, xi } => spent.rho <= rho && spent.xi <= xi,
        }
    }

    /// How much of the budget `spent` uses, in the budget's own terms: (used, limit).
    pub fn used(&self, spent: Charge) -> (f64, f64) {
        match *self {
            Budget::Epsilon { epsilon, delta } => (spent.epsilon(delta).0, epsilon),
            Budget::Rho { rho, .. } => (spent.rho, rho),
        }
    }

    /// The budget in words, e.g. "ε = 2 at δ = 1e-6 per month".
    pub fn describe(&self) -> String {
        match *self {
            Budget::Epsilon { epsilon, delta } => format!("ε = {epsilon} at δ = {delta:e} per calendar month (UTC)"),
            Budget::Rho { rho, xi } => format!("ρ = {rho} (ξ ≤ {xi:e}) per calendar month (UTC)"),
        }
    }
}

/// A calendar month, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i32,
    pub month: u8,
}

impl Month {
    /// The UTC calendar month of `time_ms` (milliseconds since the Unix epoch).
    pub fn of(time_ms: u64) -> Self {
        let days = (time_ms / 86_400_000) as i64;
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        Self { year, month }
    }
}

impl std::str::FromStr for Month {
    type Err = String;
    /// "YYYY-MM", as [`Month`] displays.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a month (YYYY-MM)");
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        let (year, month): (i32, u8) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if y.len() != 4 || m.len() != 2 || !(1..=12).contains(&month) {
            return Err(bad());
        }
        Ok(Self { year, month })
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// One recorded charge.
#[derive(Debug, Clone, PartialEq)]
pub struct Spent {
    pub time_ms: u64,
    pub analysis: String,
    pub round: String,
    pub charge: Charge,
}

/// Every charge a node has recorded, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ledger {
    spent: Vec<Spent>,
}

/// Why a contribution was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "privacy budget: this contribution costs ρ = {charge_rho:.6} (ξ = {charge_xi:.3e}); with the {spent_count} \
     charge(s) of {month} it would use {after:.4} of the {limit} allowed ({budget}), already {before:.4} used; \
     refusing — the budget renews on the 1st of next month (UTC)"
)]
pub struct OverBudget {
    pub month: Month,
    pub charge_rho: f64,
    pub charge_xi: f64,
    pub spent_count: usize,
    pub before: f64,
    pub after: f64,
    pub limit: f64,
    pub budget: String,
}

impl Ledger {
    /// A ledger of `spent` (in the order recorded).
    pub fn new(spent: Vec<Spent>) -> Self {
        Self { spent }
    }

    /// Every charge recorded.
    pub fn spent(&self) -> &[Spent] {
        &self.spent
    }

    /// The charges of `month`, composed.
    pub fn month(&self, month: Month) -> (Charge, usize) {
        self.spent
            .iter()
            .filter(|s| Month::of(s.time_ms) == month)
            .fold((Charge::default(), 0), |(c, n), s| (c.compose(s.charge), n + 1))
    }

    /// Whether `charge`, made at `now_ms`, stays within `budget` for its month.
    pub fn check(&self, budget: &Budget, now_ms: u64, charge: Charge) -> Result<(), OverBudget> {
        let month = Month::of(now_ms);
        let (spent, count) = self.month(month);
        let after = spent.compose(charge);
        if budget.allows(after) {
            return Ok(());
        }
        let (before, limit) = budget.used(spent);
        Err(OverBudget {
            month,
            charge_rho: charge.rho,
            charge_xi: charge.xi,
            spent_count: count,
            before,
            after: budget.used(after).0,
            limit,
            budget: budget.describe(),
        })
    }

    /// The time of the latest charge recorded, if any. A node whose clock reads earlier
    /// refuses to charge (a clock stepped back could reopen a spent month).
    pub fn latest(&self) -> Option<u64> {
        self.spent.iter().map(|s| s.time_ms).max()
    }

    /// Record a charge (when the noised vector leaves).
    pub fn record(&mut self, spent: Spent) {
        self.spent.push(spent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-30T23:59:59.999Z and the next millisecond, 2026-12-01T00:00:00Z.
    const NOV_END: u64 = 1_796_083_199_999;
    const DEC_START: u64 = NOV_END + 1;

    #[test]
    fn months_are_utc_calendar_months() {
        assert_eq!(Month::of(0), Month { year: 1970, month: 1 });
        assert_eq!(Month::of(NOV_END), Month { year: 2026, month: 11 });
        assert_eq!(Month::of(DEC_START), Month { year: 2026, month: 12 });
        // 2024-02-29T12:00:00Z (a leap day) and 2100-03-01T00:00:00Z (2100 is not a leap year).
        assert_eq!(Month::of(1_709_208_000_000), Month { year: 2024, month: 2 });
        assert_eq!(Month::of(4_107_542_400_000), Month { year: 2100, month: 3 });
        assert_eq!(Month::of(NOV_END).to_string(), "2026-11");
        assert_eq!("2026-11".parse::<Month>(), Ok(Month { year: 2026, month: 11 }));
        for bad in ["2026-13", "2026-1", "26-11", "2026/11", ""] {
            assert!(bad.parse::<Month>().is_err(), "{bad}");
        }
    }

    fn spent(time_ms: u64, rho: f64) -> Spent {
        Spent { time_ms, analysis: "a".into(), round: "r".into(), charge: Charge { rho, xi: 0.0 } }
    }

    #[test]
    fn a_charge_over_the_months_budget_is_refused_and_the_next_month_renews_it() {
        let budget = Budget::Rho { rho: 0.5, xi: 1e-6 };
        let mut ledger = Ledger::default();
        let c = Charge { rho: 0.2, xi: 0.0 };
        ledger.check(&budget, NOV_END - 10, c).unwrap();
        ledger.record(spent(NOV_END - 10, 0.2));
        ledger.check(&budget, NOV_END - 5, c).unwrap();
        ledger.record(spent(NOV_END - 5, 0.2));
        let e = ledger.check(&budget, NOV_END, c).unwrap_err();
        assert_eq!((e.month, e.spent_count), (Month { year: 2026, month: 11 }, 2));
        assert!((e.before - 0.4).abs() < 1e-12 && (e.after - 0.6).abs() < 1e-12, "{e}");
        assert!(e.to_string().contains("renews on the 1st of next month"), "{e}");
        // One millisecond later it is December: the budget is whole again.
        ledger.check(&budget, DEC_START, c).unwrap();
    }

    #[test]
    fn an_epsilon_budget_composes_the_months_charges_before_converting() {
        // ρ = 0.03 four times: ε(1e-6) = 2.366 (dp/tests/accounting.rs); five times exceeds 2.5.
        let budget = Budget::Epsilon { epsilon: 2.5, delta: 1e-6 };
        let ledger = Ledger::new((0..4).map(|i| spent(NOV_END - 100 + i, 0.03)).collect());
        let c = Charge { rho: 0.03, xi: 0.0 };
        let (used, limit) = budget.used(ledger.month(Month::of(NOV_END)).0);
        assert!((used - 2.3664513487122654).abs() < 1e-9 && (limit - 2.5).abs() < 1e-12);
        assert!(ledger.check(&budget, NOV_END, c).is_err());
        assert!(ledger.check(&budget, NOV_END, Charge { rho: 0.001, xi: 0.0 }).is_ok());
    }

    #[test]
    fn a_retried_round_is_charged_twice() {
        let budget = Budget::Rho { rho: 0.3, xi: 1e-6 };
        let mut ledger = Ledger::default();
        // The same round's contribution left twice (aborted, then retried): two charges.
        for _ in 0..2 {
            ledger.record(Spent { round: "r1".into(), ..spent(NOV_END - 1, 0.15) });
        }
        let (c, n) = ledger.month(Month::of(NOV_END));
        assert_eq!(n, 2);
        assert!((c.rho - 0.3).abs() < 1e-12);
        assert!(ledger.check(&budget, NOV_END, Charge { rho: 0.01, xi: 0.0 }).is_err());
    }
}
