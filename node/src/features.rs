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

/// Issue 11: one customer's purchase history as the churn model reads it
/// (`fedcrm_model::features`): every purchase (the model's window decides which count),
/// with the birthday and anniversary the rows state (the latest row that states one).
#[derive(Clone)]
pub struct History {
    pub customer: String,
    pub txns: Vec<fedcrm_model::features::Txn>,
    pub birthday: Option<Date>,
    pub anniversary: Option<Date>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").field("txns", &self.txns.len()).finish_non_exhaustive()
    }
}

impl History {
    /// The model's view of this customer.
    pub fn customer(&self) -> fedcrm_model::features::Customer<'_> {
        fedcrm_model::features::Customer { txns: &self.txns, birthday: self.birthday, anniversary: self.anniversary }
    }
}

/// A category label as the model knows it: `gold`, `diamond`, `jade`, `platinum`
/// (ASCII case and surrounding spaces ignored); any other label is `other`, none is none.
pub(crate) fn category(label: Option<&str>) -> Option<fedcrm_model::features::Category> {
    use fedcrm_model::features::Category;
    let l = label?.trim().to_ascii_lowercase();
    if l.is_empty() {
        return None;
    }
    Some(l.parse().unwrap_or(Category::Other))
}

/// Every customer's history, in ascending customer-key order, purchases by day.
pub fn histories(purchases: &[Purchase]) -> Vec<History> {
    let mut by: HashMap<&str, History> = HashMap::new();
    for p in purchases {
        let h = by.entry(p.customer.as_str()).or_insert_with(|| History {
            customer: p.customer.clone(),
            txns: Vec::new(),
            birthday: None,
            anniversary: None,
        });
        h.txns.push(fedcrm_model::features::Txn {
            day: p.day,
            cents: p.amount_cents,
            quantity: p.quantity,
            category: category(p.category.as_deref()),
        });
        if let Some(d) = p.birthday {
            h.birthday = Some(d);
        }
        if let Some(d) = p.anniversary {
            h.anniversary = Some(d);
        }
    }
    let mut out: Vec<History> = by.into_values().collect();
    out.sort_by(|a, b| a.customer.cmp(&b.customer));
    for h in &mut out {
        h.txns.sort_by_key(|t| t.day);
    }
    out
}
