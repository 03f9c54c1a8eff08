//! The pooled (centralized) reference: what HQ would compute if it could see every
//! purchase. Deliberately separate and simple code — its own parsing, its own RFM,
//! quantiles by sorting — so that tests comparing it with the federated path check
//! two independent implementations, never the federated code run as one node.
//! Used only by tests and the demo, on data they generated or split themselves.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// One purchase as the reference sees it: (customer, day number, cents).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub customer: String,
    pub ymd: u32,
    pub cents: i64,
}

/// Parse CDNOW text (header line allowed).
pub fn parse_cdnow(text: &str) -> Vec<Row> {
    text.lines()
        .filter_map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            if c.len() != 4 || !c[1].bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let (d, cts) = c[3].split_once('.').unwrap_or((c[3], "0"));
            let cents = d.parse::<i64>().ok()? * 100 + format!("{cts:0<2}").parse::<i64>().ok()?;
            Some(Row { customer: c[0].to_string(), ymd: c[1].parse().ok()?, cents })
        })
        .collect()
}

/// Parse the CSV format (header line naming `customer_key`, `timestamp`, `amount`), as
/// the synthetic jewellery data writes it: the day is the timestamp's local date (its
/// first ten characters, `YYYY-MM-DD`), `amount` in yuan with two decimals. Rows of
/// customers in `withdrawn` are left out (they withdrew consent: no node uses them).
pub fn parse_csv(text: &str, withdrawn: &BTreeSet<String>) -> Vec<Row> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(k), Some(t), Some(a)) = (col("customer_key"), col("timestamp"), col("amount")) else {
        return Vec::new();
    };
    lines
        .filter_map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            let customer = c.get(k)?.to_string();
            if withdrawn.contains(&customer) {
                return None;
            }
            let ymd = c.get(t)?.get(..10)?.replace('-', "").parse().ok()?;
            let (y, f) = c.get(a)?.split_once('.').unwrap_or((c[a], "0"));
            let cents = y.parse::<i64>().ok()? * 100 + format!("{f:0<2}").parse::<i64>().ok()?;
            Some(Row { customer, ymd, cents })
        })
        .collect()
}

/// Days since 0000-03-01 (proleptic Gregorian), for differences of dates.
fn day_number(ymd: u32) -> i64 {
    let (y, m, d) = ((ymd / 10000) as i64, ((ymd / 100) % 100) as i64, (ymd % 100) as i64);
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    365 * y + y / 4 - y / 100 + y / 400 + (153 * m + 2) / 5 + d - 1
}

/// Pooled RFM cut points and segment counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PooledSegments {
    pub customers: u64,
    pub recency: [u64; 4],
    pub frequency: [u64; 4],
    pub monetary: [u64; 4],
    /// high-value, potential, dormant, other.
    pub counts: [u64; 4],
}

/// Each customer's (recency days, distinct purchase days, spend in cents) for purchases
/// on or before `reference` (YYYYMMDD), by customer key.
fn customer_rfm(rows: &[Row], reference: u32) -> BTreeMap<&str, (u64, u64, u64)> {
    let refn = day_number(reference);
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    let mut days: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
    let mut spend: BTreeMap<&str, i64> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.ymd <= reference) {
        let dn = day_number(r.ymd);
        let l = last.entry(&r.customer).or_insert(dn);
        *l = (*l).max(dn);
        days.entry(&r.customer).or_default().insert(r.ymd);
        *spend.entry(&r.customer).or_default() += r.cents;
    }
    last.iter().map(|(c, l)| (*c, ((refn - l) as u64, days[c].len() as u64, spend[c].max(0) as u64))).collect()
}

/// The segment (0 high-value, 1 potential, 2 dormant, 3 other) of (r, f, m) under the
/// cut points: scores 1–5 by how many cut points lie below the value.
fn classify(cuts: &([u64; 4], [u64; 4], [u64; 4]), (rv, fv, mv): (u64, u64, u64)) -> usize {
    let below = |c: &[u64; 4], x: u64| c.iter().filter(|&&k| k < x).count() as u8;
    let r = 5 - below(&cuts.0, rv);
    let f = 1 + below(&cuts.1, fv);
    let m = 1 + below(&cuts.2, mv);
    if r >= 4 && f >= 4 && m >= 4 {
        0
    } else if r >= 4 && (f <= 2 || m <= 2) {
        1
    } else if r <= 2 {
        2
    } else {
        3
    }
}

/// The pooled answer for purchases on or before `reference` (YYYYMMDD).
pub fn segments(rows: &[Row], reference: u32) -> PooledSegments {
    let rfm = customer_rfm(rows, reference);
    let rv: Vec<u64> = rfm.values().map(|v| v.0).collect();
    let fv: Vec<u64> = rfm.values().map(|v| v.1).collect();
    let mv: Vec<u64> = rfm.values().map(|v| v.2).collect();
    let quint = |v: &[u64]| -> [u64; 4] {
        let mut s = v.to_vec();
        s.sort_unstable();
        let n = s.len() as u64;
        // c_k = smallest v with #{x <= v} >= k n / 5, i.e. the ceil(k n / 5)-th smallest.
        [1u64, 2, 3, 4].map(|k| s[((k * n).div_ceil(5) - 1) as usize])
    };
    let (rc, fc, mc) = (quint(&rv), quint(&fv), quint(&mv));
    let mut counts = [0u64; 4];
    for v in rfm.values() {
        counts[classify(&(rc, fc, mc), *v)] += 1;
    }
    PooledSegments { customers: rv.len() as u64, recency: rc, frequency: fc, monetary: mc, counts }
}

/// Issue 12: each customer's segment (0 high-value … 3 other) at `reference` under the
/// given global cut points (recency, frequency, monetary in cents); customers without a
/// purchase by then are left out.
pub fn customer_segments(
    rows: &[Row],
    reference: u32,
    cuts: &([u64; 4], [u64; 4], [u64; 4]),
) -> BTreeMap<String, usize> {
    customer_rfm(rows, reference).into_iter().map(|(c, v)| (c.to_string(), classify(cuts, v))).collect()
}

/// Issue 12: the segment profile of two channels' shared customers — `table[i][j]`
/// identifiers whose customer is in segment i on the first channel and j on the
/// second. Each channel is (customer → identifier, customer → segment); an identifier
/// two customers share counts for the first of them by key that has a segment.
pub fn segment_pairs(
    a: (&BTreeMap<String, String>, &BTreeMap<String, usize>),
    b: (&BTreeMap<String, String>, &BTreeMap<String, usize>),
) -> [[u64; 4]; 4] {
    fn by_id<'a>((ids, segs): (&'a BTreeMap<String, String>, &BTreeMap<String, usize>)) -> BTreeMap<&'a str, usize> {
        let mut out: BTreeMap<&str, usize> = BTreeMap::new();
        for (customer, id) in ids {
            if let Some(&s) = segs.get(customer) {
                out.entry(id.as_str()).or_insert(s);
            }
        }
        out
    }
    let (ia, ib) = (by_id(a), by_id(b));
    let mut table = [[0u64; 4]; 4];
    for (id, &sa) in &ia {
        if let Some(&sb) = ib.get(id) {
            table[sa][sb] += 1;
        }
    }
    table
}

/// Issue 12: the reference's own reading of a synthetic jewellery export (`fedcrm
/// demo-data`): per customer who did not withdraw consent, the last 11 digits of its
/// phone when it has at least 11 digits (the generator writes one mainland mobile per
/// person, in several styles; of several rows, the last). Deliberately not the node's
/// normaliser, so the two are checked against each other.
pub fn synthetic_phone_by_customer(csv: &str, withdrawn: &str) -> BTreeMap<String, String> {
    let gone: BTreeSet<&str> =
        withdrawn.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let (Some(ck), Some(ph)) =
        (header.iter().position(|h| *h == "customer_key"), header.iter().position(|h| *h == "phone"))
    else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        let (Some(c), Some(p)) = (f.get(ck), f.get(ph)) else { continue };
        let digits: String = p.chars().filter(char::is_ascii_digit).collect();
        if !gone.contains(c) && digits.len() >= 11 {
            out.insert(c.to_string(), digits[digits.len() - 11..].to_string());
        }
    }
    out
}

/// Issue 12: the plaintext overlap of named customer sets — every pair's intersection
/// size, keyed by the two names in order. The reference the private set intersection
/// is checked against: plain set arithmetic on identifiers the test extracted itself.
pub fn overlap(sets: &[(String, BTreeSet<String>)]) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for (i, (a, sa)) in sets.iter().enumerate() {
        for (b, sb) in &sets[i + 1..] {
            let key = if a < b { (a.clone(), b.clone()) } else { (b.clone(), a.clone()) };
            out.insert(key, sa.intersection(sb).count() as u64);
        }
    }
    out
}

/// The set of phones of a synthetic export's customers ([`synthetic_phone_by_customer`]).
pub fn synthetic_phones(csv: &str, withdrawn: &str) -> BTreeSet<String> {
    synthetic_phone_by_customer(csv, withdrawn).into_values().collect()
}

/// The customer keys of CDNOW text.
pub fn cdnow_customers(text: &str) -> BTreeSet<String> {
    parse_cdnow(text).into_iter().map(|r| r.customer).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_numbers_difference() {
        assert_eq!(day_number(19970930) - day_number(19970101), 272);
        assert_eq!(day_number(20000301) - day_number(20000228), 2);
    }
}
