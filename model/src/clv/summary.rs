//! One customer's purchase history as the buy-till-you-die models see it: (x, t_x, T)
//! for BG/NBD and (x, m̄) for Gamma-Gamma, over a calibration window, and the repeat
//! purchases of a holdout period after it.
//!
//! **Conventions** (those of Fader, Hardie & Lee 2005 on CDNOW):
//! - Purchases on the same day are one transaction (CDNOW records several rows a day
//!   for some customers); its value is their sum.
//! - The first transaction starts the customer's clock: x counts the *repeat*
//!   transactions, on days after the first, up to and including the calibration end;
//!   t_x is the time from the first transaction to the last (0 when x = 0); T is the
//!   time from the first transaction to the calibration end, (end − first) days — so a
//!   customer who first bought on 1997-01-01 has T = 272 days = 38.86 weeks at
//!   1997-09-30, as in the paper (one who first bought on the last day has T = 0 and
//!   adds nothing to the likelihood).
//! - Time is counted in days or in weeks of 7 days ([`TimeUnit`]).
//! - m̄ is the mean value of the x repeat transactions (the first is left out, as in
//!   Fader & Hardie's Gamma-Gamma note), in the currency's main unit (yuan, dollars),
//!   not cents.
//! - A customer whose first purchase is after the calibration end is not in the
//!   calibration data at all.

use serde::{Deserialize, Serialize};
use time::Date;

use crate::features::Txn;

/// The time unit of t_x, T and forecast horizons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeUnit {
    Days,
    Weeks,
}

impl TimeUnit {
    /// Days per unit.
    pub fn days(self) -> f64 {
        match self {
            TimeUnit::Days => 1.0,
            TimeUnit::Weeks => 7.0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TimeUnit::Days => "days",
            TimeUnit::Weeks => "weeks",
        }
    }
}

impl std::str::FromStr for TimeUnit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "days" => Ok(TimeUnit::Days),
            "weeks" => Ok(TimeUnit::Weeks),
            other => Err(format!("time unit {other:?}: use days or weeks")),
        }
    }
}

/// One customer in the calibration window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Repeat transactions in the calibration window.
    pub x: u32,
    /// Time of the last transaction, from the first (0 when x = 0).
    pub t_x: f64,
    /// Time from the first transaction to the end of the calibration window.
    pub t: f64,
    /// Mean value of the repeat transactions, in the currency's main unit; 0 when x = 0.
    pub mean_repeat_value: f64,
}

/// The calibration window and the holdout period after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calibration {
    /// The last day of the calibration window (inclusive).
    pub end: Date,
    pub unit: TimeUnit,
    /// Only customers whose first purchase falls in this range (inclusive) — one cohort;
    /// `None`: every customer who bought by `end`.
    pub first_purchase: Option<(Date, Date)>,
}

/// One day's purchases merged into one transaction: (day, value in cents).
fn transactions(txns: &[Txn]) -> Vec<(Date, i64)> {
    let mut days: Vec<(Date, i64)> = txns.iter().map(|t| (t.day, t.cents)).collect();
    days.sort_unstable_by_key(|d| d.0);
    let mut merged: Vec<(Date, i64)> = Vec::with_capacity(days.len());
    for (day, cents) in days {
        match merged.last_mut() {
            Some(last) if last.0 == day => last.1 = last.1.saturating_add(cents),
            _ => merged.push((day, cents)),
        }
    }
    merged
}

impl Calibration {
    /// The customer's summary, or `None` when it is not in the calibration data (no
    /// purchase by the end, or a first purchase outside the cohort).
    pub fn summary(&self, txns: &[Txn]) -> Option<Summary> {
        let all = transactions(txns);
        let first = all.first()?.0;
        let (mut x, mut last, mut cents) = (0u32, None, 0i64);
        for (d, c) in all[1..].iter().take_while(|(d, _)| *d <= self.end) {
            x += 1;
            last = Some(*d);
            cents = cents.saturating_add(*c);
        }
        self.summary_of(first, x, last, cents)
    }

    /// The summary of a customer from the aggregates of its transactions (same-day
    /// purchases merged): the first day, and of the repeat transactions up to the end
    /// their count, the last day and their value in cents — what a database computes
    /// with `GROUP BY` (issue 14); [`summary`](Self::summary) computes them from the
    /// purchases. `None` as there.
    pub fn summary_of(&self, first: Date, x: u32, last_repeat: Option<Date>, repeat_cents: i64) -> Option<Summary> {
        if first > self.end || self.first_purchase.is_some_and(|(from, to)| first < from || first > to) {
            return None;
        }
        let unit = self.unit.days();
        let days = |d: Date| (d - first).whole_days() as f64;
        let t_x = last_repeat.filter(|_| x > 0).map_or(0.0, |d| days(d) / unit);
        let t = days(self.end) / unit;
        // Whole cents below 2^53 sum exactly, in any order, as integers or as f64.
        let mean_repeat_value = if x == 0 { 0.0 } else { repeat_cents as f64 / 100.0 / f64::from(x) };
        Some(Summary { x, t_x, t, mean_repeat_value })
    }

    /// Transactions (same-day purchases merged) after the calibration end up to and
    /// including `holdout_end`: what the model's forecast for that period is compared with.
    pub fn holdout_transactions(&self, txns: &[Txn], holdout_end: Date) -> u32 {
        transactions(txns).iter().filter(|(d, _)| *d > self.end && *d <= holdout_end).count() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    fn txn(day: Date, cents: i64) -> Txn {
        Txn { day, cents, quantity: 1, category: None }
    }

    #[test]
    #[allow(clippy::float_cmp)] // whole days over 1 or 7: exact in binary
    fn same_day_purchases_are_one_transaction_and_the_clock_starts_at_the_first() {
        let cal = Calibration { end: date!(1997 - 09 - 30), unit: TimeUnit::Weeks, first_purchase: None };
        let txns = [
            txn(date!(1997 - 01 - 01), 1000),
            txn(date!(1997 - 01 - 01), 500),
            txn(date!(1997 - 01 - 15), 2000),
            txn(date!(1997 - 01 - 15), 1000),
            txn(date!(1997 - 03 - 12), 4000),
            txn(date!(1997 - 10 - 02), 999),
            txn(date!(1997 - 10 - 02), 1),
            txn(date!(1998 - 07 - 01), 1),
        ];
        let s = cal.summary(&txns).unwrap();
        // Two repeat days (Jan 15, Mar 12); Mar 12 is 70 days = 10 weeks after Jan 1;
        // Sep 30 is 272 days after Jan 1: T = 272/7 weeks.
        assert_eq!(s, Summary { x: 2, t_x: 10.0, t: 272.0 / 7.0, mean_repeat_value: 35.0 });
        assert_eq!(cal.holdout_transactions(&txns, date!(1998 - 06 - 30)), 1);
        let days = Calibration { unit: TimeUnit::Days, ..cal };
        assert_eq!(days.summary(&txns).unwrap().t, 272.0);
        // One purchase only: x = 0, t_x = 0.
        let once = days.summary(&txns[..2]).unwrap();
        assert_eq!((once.x, once.t_x, once.mean_repeat_value), (0, 0.0, 0.0));
        // First bought on the calibration end: T = 0.
        assert_eq!(days.summary(&[txn(date!(1997 - 09 - 30), 1)]).unwrap().t, 0.0);
        // First bought after it, or outside the cohort: not in the calibration data.
        assert_eq!(cal.summary(&[txn(date!(1997 - 10 - 01), 1)]), None);
        let cohort = Calibration { first_purchase: Some((date!(1997 - 02 - 01), date!(1997 - 03 - 31))), ..cal };
        assert_eq!(cohort.summary(&txns), None);
        assert!(cohort.summary(&txns[4..]).is_some());
    }
}
