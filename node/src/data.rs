//! Data sources on the node: the CDNOW purchase file and the documented CSV export
//! format, plus the consent-withdrawal list. Rows never leave this module's callers
//! except as the local features of [`crate::features`].
//!
//! CSV format (UTF-8, header row required, columns in any order):
//! `customer_key,phone,channel,timestamp,amount,category` where `timestamp` is
//! `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SS` (anything after the date is ignored),
//! `amount` is a decimal in the currency's main unit with at most two decimals
//! (`1299.50`), and `phone`, `channel`, `category` may be empty.
//!
//! CDNOW format: whitespace-separated `customer_id YYYYMMDD quantity amount`, an
//! optional header line.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::{Date, Month};
use zeroize::Zeroize;

/// One purchase row.
#[derive(Clone)]
pub struct Purchase {
    pub customer: String,
    pub day: Date,
    pub amount_cents: i64,
    pub quantity: u32,
    pub channel: Option<String>,
    pub category: Option<String>,
    /// Kept only on the node, for private set intersection; zeroized on drop.
    pub phone: Option<Phone>,
}

impl std::fmt::Debug for Purchase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Purchase")
            .field("day", &self.day)
            .field("amount_cents", &self.amount_cents)
            .finish_non_exhaustive()
    }
}

/// A customer's phone number: personal data, never printed.
#[derive(Clone, Zeroize)]
#[zeroize(drop)]
pub struct Phone(String);

impl std::fmt::Debug for Phone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Phone(..)")
    }
}

/// Which file format a source uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// CDNOW_master.txt layout.
    Cdnow,
    /// The documented CSV export.
    #[default]
    Csv,
}

/// What to do with a row that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnBadRow {
    /// Stop and report (default): nothing is silently lost.
    #[default]
    Fail,
    /// Skip the row, count it, and show it in `fedcrm node check`.
    Skip,
}

/// Errors loading data. Messages name the file and line, never row content beyond the bad field.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {why} (fix the export, or set data.on_bad_row = \"skip\" to skip such rows)")]
    BadRow { path: PathBuf, line: u64, why: String },
    #[error(
        "{path}: missing CSV column {column:?}; expected columns customer_key,phone,channel,timestamp,amount,category"
    )]
    MissingColumn { path: PathBuf, column: &'static str },
}

/// What a load saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub rows: u64,
    pub skipped: u64,
    /// First few skipped rows: (line, reason).
    pub skipped_examples: Vec<(u64, String)>,
}

impl LoadReport {
    /// Keep a parsed row, or fail / skip a bad one as configured.
    fn take(
        &mut self,
        parsed: Result<Purchase, String>,
        out: &mut Vec<Purchase>,
        on_bad: OnBadRow,
        path: &Path,
        line: u64,
    ) -> Result<(), DataError> {
        match parsed {
            Ok(p) => {
                self.rows += 1;
                out.push(p);
            }
            Err(why) => match on_bad {
                OnBadRow::Fail => return Err(DataError::BadRow { path: path.into(), line, why }),
                OnBadRow::Skip => self.skip(line, why),
            },
        }
        Ok(())
    }

    fn skip(&mut self, line: u64, why: String) {
        self.skipped += 1;
        if self.skipped_examples.len() < 10 {
            self.skipped_examples.push((line, why));
        }
    }
}

/// Parse a decimal amount with at most two decimals into cents, exactly.
pub fn parse_cents(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let ok = !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.len() <= 2
        && frac.bytes().all(|b| b.is_ascii_digit());
    if !ok || int.len() > 15 {
        return Err(format!("amount {s:?} is not a decimal with at most two decimals"));
    }
    let int: i64 = int.parse().map_err(|_| format!("amount {s:?} is out of range"))?;
    let frac: i64 =
        if frac.is_empty() { 0 } else { format!("{frac:0<2}").parse().map_err(|_| format!("amount {s:?}"))? };
    let v = int * 100 + frac;
    Ok(if neg { -v } else { v })
}

fn parse_ymd(s: &str) -> Result<Date, String> {
    let digits: String = s.chars().filter(|c| c.is_ascii_digit()).take(8).collect();
    let compact = s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit());
    let dashed = s.len() >= 10 && s.as_bytes()[4] == b'-' && s.as_bytes()[7] == b'-';
    if digits.len() != 8 || !(compact || dashed) {
        return Err(format!("date {s:?} is not YYYYMMDD or YYYY-MM-DD"));
    }
    let y: i32 = digits[..4].parse().map_err(|_| format!("date {s:?}"))?;
    let m: u8 = digits[4..6].parse().map_err(|_| format!("date {s:?}"))?;
    let d: u8 = digits[6..8].parse().map_err(|_| format!("date {s:?}"))?;
    let month = Month::try_from(m).map_err(|_| format!("date {s:?} has month {m}"))?;
    Date::from_calendar_date(y, month, d).map_err(|_| format!("date {s:?} does not exist"))
}

fn read(path: &Path) -> Result<String, DataError> {
    std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.into(), source })
}

/// Load a CDNOW-format file.
pub fn read_cdnow(path: &Path, on_bad: OnBadRow) -> Result<(Vec<Purchase>, LoadReport), DataError> {
    let text = read(path)?;
    let mut out = Vec::new();
    let mut report = LoadReport::default();
    for (i, line) in text.lines().enumerate() {
        let lineno = i as u64 + 1;
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.is_empty() {
            continue;
        }
        if lineno == 1 && !cols[0].bytes().all(|b| b.is_ascii_digit()) {
            continue; // header
        }
        let parsed = (|| -> Result<Purchase, String> {
            if cols.len() != 4 {
                return Err(format!("expected 4 columns, found {}", cols.len()));
            }
            let quantity: u32 = cols[2].parse().map_err(|_| format!("quantity {:?} is not a whole number", cols[2]))?;
            Ok(Purchase {
                customer: cols[0].to_string(),
                day: parse_ymd(cols[1])?,
                amount_cents: parse_cents(cols[3])?,
                quantity,
                channel: None,
                category: None,
                phone: None,
            })
        })();
        report.take(parsed, &mut out, on_bad, path, lineno)?;
    }
    Ok((out, report))
}

/// Load a CSV export in the documented format.
pub fn read_csv(path: &Path, on_bad: OnBadRow) -> Result<(Vec<Purchase>, LoadReport), DataError> {
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| DataError::Io { path: path.into(), source: std::io::Error::other(e.to_string()) })?;
    let headers = rdr
        .headers()
        .map_err(|e| DataError::Io { path: path.into(), source: std::io::Error::other(e.to_string()) })?
        .clone();
    let col = |name: &'static str| -> Result<usize, DataError> {
        headers
            .iter()
            .position(|h| h.eq_ignore_ascii_case(name))
            .ok_or(DataError::MissingColumn { path: path.into(), column: name })
    };
    let (ck, ph, chn, ts, am, cat) =
        (col("customer_key")?, col("phone")?, col("channel")?, col("timestamp")?, col("amount")?, col("category")?);
    let mut out = Vec::new();
    let mut report = LoadReport::default();
    for (i, rec) in rdr.records().enumerate() {
        let lineno = i as u64 + 2;
        let parsed = match rec {
            Err(e) => Err(format!("unreadable CSV record: {e}")),
            Ok(r) => (|| -> Result<Purchase, String> {
                let get = |i: usize| r.get(i).unwrap_or("");
                let customer = get(ck);
                if customer.is_empty() {
                    return Err("customer_key is empty".into());
                }
                let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
                Ok(Purchase {
                    customer: customer.to_string(),
                    day: parse_ymd(get(ts))?,
                    amount_cents: parse_cents(get(am))?,
                    quantity: 1,
                    channel: opt(get(chn)),
                    category: opt(get(cat)),
                    phone: opt(get(ph)).map(Phone),
                })
            })(),
        };
        report.take(parsed, &mut out, on_bad, path, lineno)?;
    }
    Ok((out, report))
}

/// Load a consent-withdrawal list: one customer key per line; `#` comments and blank lines ignored.
pub fn read_withdrawals(path: &Path) -> Result<HashSet<String>, DataError> {
    Ok(read(path)?
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// A data source as configured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `csv` (default) or `cdnow`.
    #[serde(default)]
    pub format: Format,
    /// The purchase file.
    pub path: PathBuf,
    /// Customers who withdrew consent; excluded from every analysis.
    #[serde(default)]
    pub consent_withdrawals: Option<PathBuf>,
    /// `fail` (default) or `skip`.
    #[serde(default)]
    pub on_bad_row: OnBadRow,
}

/// Loaded, consent-filtered data.
#[derive(Debug)]
pub struct Dataset {
    pub purchases: Vec<Purchase>,
    pub report: LoadReport,
    /// Rows dropped because their customer withdrew consent.
    pub withdrawn_rows: u64,
    pub withdrawn_customers: u64,
}

impl DataConfig {
    /// Load the source and drop every row of a customer who withdrew consent.
    pub fn load(&self) -> Result<Dataset, DataError> {
        let (rows, report) = match self.format {
            Format::Cdnow => read_cdnow(&self.path, self.on_bad_row)?,
            Format::Csv => read_csv(&self.path, self.on_bad_row)?,
        };
        let withdrawn = match &self.consent_withdrawals {
            Some(p) => read_withdrawals(p)?,
            None => HashSet::new(),
        };
        let before = rows.len();
        let mut seen = HashSet::new();
        let purchases: Vec<Purchase> = rows
            .into_iter()
            .filter(|p| {
                let out = withdrawn.contains(&p.customer);
                if out {
                    seen.insert(p.customer.clone());
                }
                !out
            })
            .collect();
        Ok(Dataset {
            withdrawn_rows: (before - purchases.len()) as u64,
            withdrawn_customers: seen.len() as u64,
            purchases,
            report,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cents_are_exact() {
        assert_eq!(parse_cents("11.77"), Ok(1177));
        assert_eq!(parse_cents("12"), Ok(1200));
        assert_eq!(parse_cents("0.5"), Ok(50));
        assert_eq!(parse_cents("-3.05"), Ok(-305));
        assert!(parse_cents("1.234").is_err());
        assert!(parse_cents("12,5").is_err());
        assert!(parse_cents("").is_err());
        assert!(parse_cents("abc").is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(parse_ymd("19970101").unwrap(), Date::from_calendar_date(1997, Month::January, 1).unwrap());
        assert_eq!(
            parse_ymd("2024-02-29T10:00:00Z").unwrap(),
            Date::from_calendar_date(2024, Month::February, 29).unwrap()
        );
        assert!(parse_ymd("2023-02-29").is_err());
        assert!(parse_ymd("1997011").is_err());
    }

    #[test]
    fn csv_bad_row_is_reported_with_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.csv");
        std::fs::write(&p, "customer_key,phone,channel,timestamp,amount,category\nc1,13800000000,store,2024-01-02,100.00,ring\nc2,,online,2024-13-01,5,\n").unwrap();
        let err = read_csv(&p, OnBadRow::Fail).unwrap_err().to_string();
        assert!(err.contains(":3:") && err.contains("2024-13-01"), "{err}");
        let (rows, rep) = read_csv(&p, OnBadRow::Skip).unwrap();
        assert_eq!((rows.len(), rep.skipped), (1, 1));
        assert!(!format!("{:?}", rows[0]).contains("138000"));
    }
}
