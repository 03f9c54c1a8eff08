//! Local features: each customer's RFM values at a reference date, computed on the
//! node from its own purchases. Never leaves the node; only aggregates of it do.
//!
//! R = days from the last purchase to the reference date; F = distinct purchase
//! days in the window; M = total spend in the window in cents (a customer whose
//! refunds exceed purchases counts as 0). The window runs from the first record to
//! the reference date inclusive; later purchases are ignored, and a customer with
//! no purchase in the window is not counted.

use std::collections::HashMap;

use fedcrm_analysis::rfm::CustomerRfm;
use time::Date;

use crate::data::Purchase;

/// RFM per customer, in ascending customer-key order.
pub fn rfm(purchases: &[Purchase], reference: Date) -> Vec<(String, CustomerRfm)> {
    struct Acc {
        last: Date,
        days: Vec<Date>,
        cents: i64,
    }
    let mut by: HashMap<&str, Acc> = HashMap::new();
    for p in purchases.iter().filter(|p| p.day <= reference) {
        let a = by.entry(p.customer.as_str()).or_insert(Acc { last: p.day, days: Vec::new(), cents: 0 });
        a.last = a.last.max(p.day);
        a.days.push(p.day);
        a.cents += p.amount_cents;
    }
    let mut out: Vec<(String, CustomerRfm)> = by
        .into_iter()
        .map(|(k, mut a)| {
            a.days.sort_unstable();
            a.days.dedup();
            let rfm = CustomerRfm {
                recency_days: (reference - a.last).whole_days() as u64,
                frequency: a.days.len() as u64,
                monetary_cents: a.cents.max(0) as u64,
            };
            (k.to_string(), rfm)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
