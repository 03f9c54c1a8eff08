//! The CDNOW file (`tests/data/cdnow/CDNOW_master.txt` at the workspace root) as
//! customers with their transactions: `customer_id YYYYMMDD quantity dollars`,
//! whitespace-separated, a header line first.

use std::collections::BTreeMap;
use std::path::PathBuf;

use fedcrm_model::features::Txn;
use time::{Date, Month};

/// One CDNOW customer: its id and its purchases in file order.
pub struct CdnowCustomer {
    pub id: u32,
    pub txns: Vec<Txn>,
}

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/cdnow/CDNOW_master.txt")
}

fn date(s: &str) -> Date {
    let n: u32 = s.parse().unwrap_or_else(|_| panic!("bad date {s}"));
    let month = Month::try_from((n / 100 % 100) as u8).unwrap();
    Date::from_calendar_date((n / 10_000) as i32, month, (n % 100) as u8).unwrap()
}

/// Every customer, ordered by id.
pub fn load() -> Vec<CdnowCustomer> {
    let text = std::fs::read_to_string(path()).expect("tests/data/cdnow/CDNOW_master.txt is readable");
    let mut by_id: BTreeMap<u32, Vec<Txn>> = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 4 || f[0].parse::<u32>().is_err() {
            continue; // the header
        }
        let dollars: f64 = f[3].parse().unwrap();
        by_id.entry(f[0].parse().unwrap()).or_default().push(Txn {
            day: date(f[1]),
            cents: (dollars * 100.0).round() as i64,
            quantity: f[2].parse().unwrap(),
            category: None,
        });
    }
    by_id.into_iter().map(|(id, txns)| CdnowCustomer { id, txns }).collect()
}
