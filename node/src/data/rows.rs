//! Rows of the two purchase formats, read from decoded text: the CSV export (its
//! columns found by the names in `[data.columns]`) and CDNOW_master.txt. Every row is
//! numbered by the line it starts on in the file — the one line number all messages use.

use std::path::Path;

use serde::{Deserialize, Serialize};
use time::{Date, Month};

use super::decode::Decoded;
use super::{Contact, DataError, LoadReport, OnBadRow, Problem, Purchase};

/// `[data.columns]`: the header of each CSV column, for exports whose headers differ
/// from the documented ones (e.g. `customer_key = "会员编号"`). Matched after trimming,
/// ASCII letters case-insensitively. `phone`, `channel` and `category` may be `""`
/// when the export has no such column.
///
/// `birthday` and `anniversary` came later, so most exports lack them: unset (the
/// default), the columns named `birthday` and `anniversary` are read when the header has
/// them and ignored when it has not; set, the named column must exist (`""` ignores it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Columns {
    pub customer_key: String,
    pub timestamp: String,
    pub amount: String,
    pub phone: String,
    pub channel: String,
    pub category: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub birthday: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anniversary: Option<String>,
    /// Issue 12: the e-mail column, read like `birthday` (unset: `email` if present).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Issue 14, a database source: the items of a purchase (an integer column; unset:
    /// `quantity` if the source has it, else 1). A CSV row is one item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantity: Option<String>,
}

/// The column read for `birthday` when `[data.columns]` does not name one (if present).
pub const BIRTHDAY: &str = "birthday";
/// The column read for `anniversary` when `[data.columns]` does not name one (if present).
pub const ANNIVERSARY: &str = "anniversary";
/// The column read for `email` when `[data.columns]` does not name one (if present).
pub(super) const EMAIL: &str = "email";

impl Default for Columns {
    fn default() -> Self {
        Columns {
            customer_key: "customer_key".into(),
            timestamp: "timestamp".into(),
            amount: "amount".into(),
            phone: "phone".into(),
            channel: "channel".into(),
            category: "category".into(),
            birthday: None,
            anniversary: None,
            email: None,
            quantity: None,
        }
    }
}

impl Columns {
    /// Required columns may not be mapped to `""`.
    pub fn validate(&self) -> Result<(), String> {
        for (key, name) in
            [("customer_key", &self.customer_key), ("timestamp", &self.timestamp), ("amount", &self.amount)]
        {
            if name.trim().is_empty() {
                return Err(format!(
                    "data.columns.{key} is empty, but every row needs a {key}; name the export's column that holds it"
                ));
            }
        }
        Ok(())
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

pub(super) fn parse_ymd(s: &str) -> Result<Date, String> {
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

/// A date that is exactly `YYYY-MM-DD` (birthdays and anniversaries: no time part).
fn parse_iso_date(s: &str) -> Result<Date, String> {
    let b = s.as_bytes();
    let shape = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape {
        return Err(format!("date {s:?} is not YYYY-MM-DD"));
    }
    parse_ymd(s)
}

/// Rows of a CDNOW-format text.
pub(super) fn cdnow(
    path: &Path,
    decoded: &Decoded,
    on_bad: OnBadRow,
    report: &mut LoadReport,
) -> Result<Vec<Purchase>, DataError> {
    let mut out = Vec::new();
    for (i, line) in decoded.text.lines().enumerate() {
        let lineno = i as u64 + 1;
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.is_empty() {
            continue;
        }
        if lineno == 1 && !decoded.malformed_within(1, 1) && !cols[0].bytes().all(|b| b.is_ascii_digit()) {
            continue; // header
        }
        let parsed = if decoded.malformed_within(lineno, lineno) {
            Err(Problem::Undecodable)
        } else {
            (|| -> Result<Purchase, String> {
                if cols.len() != 4 {
                    return Err(format!("expected 4 columns, found {}", cols.len()));
                }
                let quantity: u32 =
                    cols[2].parse().map_err(|_| format!("quantity {:?} is not a whole number", cols[2]))?;
                Ok(Purchase {
                    customer: cols[0].to_string(),
                    day: parse_ymd(cols[1])?,
                    amount_cents: parse_cents(cols[3])?,
                    quantity,
                    channel: None,
                    category: None,
                    phone: None,
                    email: None,
                    birthday: None,
                    anniversary: None,
                })
            })()
            .map_err(Problem::Field)
        };
        report.take(parsed, &mut out, on_bad, path, lineno, decoded.used)?;
    }
    Ok(out)
}

/// Rows of a CSV export whose header names the columns in `columns`.
pub(super) fn csv(
    path: &Path,
    decoded: &Decoded,
    columns: &Columns,
    on_bad: OnBadRow,
    report: &mut LoadReport,
) -> Result<Vec<Purchase>, DataError> {
    // Fields are trimmed here, not by the reader, so that a record's newlines can be
    // counted to find the lines it spans.
    let mut rdr = ::csv::ReaderBuilder::new().flexible(true).has_headers(false).from_reader(decoded.text.as_bytes());
    let mut records = rdr.records();
    let header = match records.next() {
        None => ::csv::StringRecord::new(),
        Some(Ok(h)) => h,
        Some(Err(e)) => {
            return Err(DataError::Csv { path: path.into(), why: e.to_string() });
        }
    };
    let header_end = 1 + newlines(&header);
    if decoded.malformed_within(1, header_end) {
        return Err(DataError::Undecodable { path: path.into(), line: decoded.malformed_lines[0], used: decoded.used });
    }
    let found: Vec<String> = header.iter().map(|h| h.trim().to_string()).collect();
    let col = |key: &'static str, name: &str| -> Result<Option<usize>, DataError> {
        let name = name.trim();
        if name.is_empty() {
            return Ok(None);
        }
        match found.iter().position(|h| h.eq_ignore_ascii_case(name)) {
            Some(i) => Ok(Some(i)),
            None => Err(DataError::MissingColumn {
                path: path.into(),
                key,
                name: name.to_string(),
                found: found.clone(),
                used: decoded.used,
            }),
        }
    };
    let required = |key: &'static str, name: &str| -> Result<usize, DataError> {
        col(key, name)?.ok_or_else(|| DataError::Setting(columns.validate().err().unwrap_or_default()))
    };
    let ck = required("customer_key", &columns.customer_key)?;
    let ts = required("timestamp", &columns.timestamp)?;
    let am = required("amount", &columns.amount)?;
    let ph = col("phone", &columns.phone)?;
    let chn = col("channel", &columns.channel)?;
    let cat = col("category", &columns.category)?;
    // Unset: the documented name, if the header has it (exports older than the column).
    let dated = |key: &'static str, configured: &Option<String>, default: &str| match configured {
        Some(name) => col(key, name),
        None => Ok(found.iter().position(|h| h.eq_ignore_ascii_case(default))),
    };
    let bd = dated("birthday", &columns.birthday, BIRTHDAY)?;
    let an = dated("anniversary", &columns.anniversary, ANNIVERSARY)?;
    let em = dated("email", &columns.email, EMAIL)?;
    let mut out = Vec::new();
    let mut lines = LineCounter { text: decoded.text.as_bytes(), at: 0, line: 1 };
    for rec in records {
        let r = match rec {
            Ok(r) => r,
            // The reader reads a `&str`: no UTF-8 errors; only a broken reader could fail.
            Err(e) => return Err(DataError::Csv { path: path.into(), why: e.to_string() }),
        };
        let first = lines.record_start(r.position().map_or(0, |p| p.byte()));
        if r.iter().all(|f| f.trim().is_empty()) {
            continue; // an empty line, or a row of empty cells as spreadsheets write them
        }
        let parsed = if decoded.malformed_within(first, first + newlines(&r)) {
            Err(Problem::Undecodable)
        } else {
            (|| -> Result<Purchase, String> {
                let get = |i: Option<usize>| i.and_then(|i| r.get(i)).unwrap_or("").trim();
                let opt = |i: Option<usize>| Some(get(i)).filter(|s| !s.is_empty()).map(str::to_string);
                let customer = get(Some(ck));
                if customer.is_empty() {
                    return Err(match columns.customer_key.trim() {
                        "customer_key" => "customer_key is empty".to_string(),
                        name => format!("{name} (customer_key) is empty"),
                    });
                }
                // A personal date is a whole `YYYY-MM-DD`, named by its column (the
                // header as configured) so the message says which of the two is wrong.
                let personal = |key: &str, i: Option<usize>| -> Result<Option<Date>, String> {
                    let v = get(i);
                    if v.is_empty() {
                        return Ok(None);
                    }
                    let name = i.and_then(|i| found.get(i)).map_or(key, String::as_str);
                    let what = if name == key { key.to_string() } else { format!("{name} ({key})") };
                    parse_iso_date(v).map(Some).map_err(|why| format!("{what}: {why}"))
                };
                Ok(Purchase {
                    customer: customer.to_string(),
                    day: parse_ymd(get(Some(ts)))?,
                    amount_cents: parse_cents(get(Some(am)))?,
                    quantity: 1,
                    channel: opt(chn),
                    category: opt(cat),
                    phone: opt(ph).map(Contact),
                    email: opt(em).map(Contact),
                    birthday: personal("birthday", bd)?,
                    anniversary: personal("anniversary", an)?,
                })
            })()
            .map_err(Problem::Field)
        };
        report.take(parsed, &mut out, on_bad, path, first, decoded.used)?;
    }
    Ok(out)
}

/// The line a record starts on. The reader's own `Position::line` is one short after
/// a CRLF (it counts the record from the `\n` it has not consumed yet), so lines are
/// counted here from the record's byte offset, skipping line ends before its first field.
struct LineCounter<'a> {
    text: &'a [u8],
    at: usize,
    line: u64,
}

impl LineCounter<'_> {
    /// `byte` never decreases between calls (records come in file order).
    fn record_start(&mut self, byte: u64) -> u64 {
        let mut to = (byte as usize).clamp(self.at, self.text.len());
        while to < self.text.len() && matches!(self.text[to], b'\r' | b'\n') {
            to += 1;
        }
        self.line += self.text[self.at..to].iter().filter(|&&b| b == b'\n').count() as u64;
        self.at = to;
        self.line
    }
}

fn newlines(r: &::csv::StringRecord) -> u64 {
    r.iter().map(|f| f.bytes().filter(|&b| b == b'\n').count() as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_numbered_by_the_line_they_start_on_whatever_the_line_ends() {
        for text in ["h\na\n\nb\n\"c\nc\"\nd", "h\r\na\r\n\r\nb\r\n\"c\r\nc\"\r\nd\r\n"] {
            let mut rdr = ::csv::ReaderBuilder::new().has_headers(false).from_reader(text.as_bytes());
            let mut lines = LineCounter { text: text.as_bytes(), at: 0, line: 1 };
            let starts: Vec<u64> =
                rdr.records().map(|r| lines.record_start(r.unwrap().position().unwrap().byte())).collect();
            assert_eq!(starts, vec![1, 2, 4, 5, 7], "{text:?}");
        }
    }

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
}
