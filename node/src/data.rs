//! Data sources on the node: the CDNOW purchase file and the documented CSV export
//! format, plus the consent-withdrawal list. Rows never leave this module's callers
//! except as the local features of [`crate::features`].
//!
//! CSV format (header row required, columns in any order, renamed by `[data.columns]`):
//! `customer_key,phone,channel,timestamp,amount,category[,birthday][,anniversary]` where
//! `timestamp` is `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SS` (anything after the date is
//! ignored; the synthetic data writes `2024-05-20T14:03:00+08:00`, Asia/Shanghai),
//! `amount` is a decimal in the currency's main unit with at most two decimals
//! (`1299.50`), and `phone`, `channel`, `category` may be empty. The optional
//! `birthday` and `anniversary` (wedding) columns hold `YYYY-MM-DD` or nothing; a file
//! without them is read as before, and a date that does not parse is a bad row like any
//! other (`file:line: birthday: date "1990-02-30" does not exist`). Both are personal
//! data: kept on the node, never printed.
//!
//! CDNOW format: whitespace-separated `customer_id YYYYMMDD quantity amount`, an
//! optional header line.
//!
//! Files are UTF-8 (a byte-order mark is stripped) or GB18030, see [`decode`]. A load
//! that had to skip more than `max_skipped_fraction` of the rows is refused: a node
//! must not take part in analyses over a fraction of its data without anyone noticing.

pub mod consent;
pub mod decode;
pub mod postgres;
mod rows;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::Date;
use zeroize::Zeroize;

pub use consent::{ConsentError, ConsentReport, Withdrawals};
pub use decode::{Charset, Detection, EncodingUsed, TextEncoding};
pub use rows::{ANNIVERSARY, BIRTHDAY, Columns, parse_cents};

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
    pub phone: Option<Contact>,
    /// Issue 12: the customer's e-mail address, as the row states it (an optional
    /// column, for nodes that match on e-mail); personal data, zeroized on drop.
    pub email: Option<Contact>,
    /// The customer's birthday (personal data: never printed), as the row states it.
    pub birthday: Option<Date>,
    /// The customer's wedding anniversary (personal data: never printed).
    pub anniversary: Option<Date>,
}

impl std::fmt::Debug for Purchase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Purchase")
            .field("day", &self.day)
            .field("amount_cents", &self.amount_cents)
            .finish_non_exhaustive()
    }
}

/// A customer's phone number or e-mail address as the row states it: personal data,
/// never printed, zeroized on drop.
#[derive(Clone, Zeroize)]
#[zeroize(drop)]
pub struct Contact(String);

impl Contact {
    /// A value read from a row.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The value as the row states it, for normalisation on this node
    /// ([`crate::identifiers`]); never for a message, log or file.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Contact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Contact(..)")
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
    /// Issue 14: a PostgreSQL table or query ([`postgres`]).
    Postgres,
}

/// What to do with a row that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnBadRow {
    /// Stop and report (default): nothing is silently lost.
    #[default]
    Fail,
    /// Skip the row, count it, and show it in `fedcrm node check`; refused above
    /// `max_skipped_fraction`.
    Skip,
}

/// What to tell someone whose file holds bytes that are not valid in `used`.
fn encoding_advice(used: EncodingUsed) -> &'static str {
    if let Detection::MostlyUtf8 { .. } = used.detection {
        return "the rest of the file is UTF-8, so these rows were damaged on the way: fix them in the export, or set data.on_bad_row = \"skip\"";
    }
    match used.charset {
        Charset::Utf8 => {
            "the file is probably not UTF-8 (Chinese POS systems and Excel often write GB18030/GBK): set data.encoding = \"gb18030\" (or \"auto\") in node.toml, or save the export as UTF-8"
        }
        Charset::Gb18030 => {
            "the file is not valid GB18030 either: save the export as UTF-8 (Excel: Save As, \"CSV UTF-8\") and set data.encoding = \"auto\""
        }
        Charset::Utf16Le | Charset::Utf16Be => "save the export as UTF-8 (Excel: Save As, \"CSV UTF-8\")",
    }
}

/// Errors loading data. Messages name the file and line, never row content beyond the bad field.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Decode { path: PathBuf, source: decode::DecodeError },
    #[error("{path}:{line}: {why} (fix the export, or set data.on_bad_row = \"skip\" to skip such rows)")]
    BadRow { path: PathBuf, line: u64, why: String },
    #[error("{path}:{line}: bytes that are not valid {}; {}", used.charset, encoding_advice(*used))]
    Undecodable { path: PathBuf, line: u64, used: EncodingUsed },
    #[error("{path}: cannot read as CSV: {why}")]
    Csv { path: PathBuf, why: String },
    #[error(
        "{path}: no column {name:?} (data.columns.{key}); the header row has {found:?}, read as {used}. Name the export's column in node.toml, e.g. [data.columns] {key} = \"{}\"{}",
        found.first().map(String::as_str).unwrap_or("..."),
        if found.iter().any(|h| h.contains(char::REPLACEMENT_CHARACTER) || !h.is_ascii()) { "; if these headers look garbled, set data.encoding to the file's encoding" } else { "" }
    )]
    MissingColumn { path: PathBuf, key: &'static str, name: String, found: Vec<String>, used: EncodingUsed },
    #[error(
        "{path}: {skipped} of {read} rows could not be read ({:.1} %), more than data.max_skipped_fraction = {max} allows, so the node does not start; the first is line {}: {}{}",
        100.0 * *skipped as f64 / (*read).max(1) as f64,
        first.0, first.1,
        if *undecodable > 0 { format!("; {} of them hold undecodable bytes: {}", undecodable, encoding_advice(*used)) } else { String::new() }
    )]
    TooManySkipped {
        path: PathBuf,
        skipped: u64,
        read: u64,
        max: f64,
        first: (u64, String),
        undecodable: u64,
        used: EncodingUsed,
    },
    #[error(transparent)]
    Consent(#[from] ConsentError),
    /// Issue 14: the database source (its URL without password, and what went wrong).
    #[error("database {url}: {why}")]
    Database { url: String, why: String },
    #[error("{0}")]
    Setting(String),
}

/// Why a row could not be used.
#[derive(Debug)]
enum Problem {
    /// A field does not parse: what is wrong with it.
    Field(String),
    /// The row holds bytes that are not valid in the file's encoding.
    Undecodable,
}

/// Skipped rows kept as examples for `node check`.
const EXAMPLES: usize = 10;

/// What reading the purchase file saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    /// Rows loaded.
    pub rows: u64,
    pub skipped: u64,
    /// Skipped rows that hold bytes not valid in the file's encoding.
    pub undecodable: u64,
    /// First few skipped rows: (line, reason).
    pub skipped_examples: Vec<(u64, String)>,
    /// Issue 14, a database source: the first few skipped rows by their row key
    /// (`order_id=17`), with the reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped_keys: Vec<(String, String)>,
    pub encoding: Option<EncodingUsed>,
}

impl LoadReport {
    /// Data rows read: loaded plus skipped (header and empty lines are not rows).
    pub fn read(&self) -> u64 {
        self.rows + self.skipped
    }

    /// Keep a parsed row, or fail / skip a bad one as configured.
    fn take(
        &mut self,
        parsed: Result<Purchase, Problem>,
        out: &mut Vec<Purchase>,
        on_bad: OnBadRow,
        path: &Path,
        line: u64,
        used: EncodingUsed,
    ) -> Result<(), DataError> {
        match (parsed, on_bad) {
            (Ok(p), _) => {
                self.rows += 1;
                out.push(p);
            }
            (Err(Problem::Field(why)), OnBadRow::Fail) => {
                return Err(DataError::BadRow { path: path.into(), line, why });
            }
            (Err(Problem::Undecodable), OnBadRow::Fail) => {
                return Err(DataError::Undecodable { path: path.into(), line, used });
            }
            (Err(problem), OnBadRow::Skip) => {
                self.skipped += 1;
                let why = match problem {
                    Problem::Field(why) => why,
                    Problem::Undecodable => {
                        self.undecodable += 1;
                        format!("bytes that are not valid {}", used.charset)
                    }
                };
                if self.skipped_examples.len() < EXAMPLES {
                    self.skipped_examples.push((line, why));
                }
            }
        }
        Ok(())
    }
}

fn default_max_skipped_fraction() -> f64 {
    0.01
}

/// A data source as configured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `csv` (default), `cdnow` or `postgres`.
    #[serde(default)]
    pub format: Format,
    /// The purchase file (formats `csv` and `cdnow`).
    #[serde(default, skip_serializing_if = "is_empty_path")]
    pub path: PathBuf,
    /// `auto` (default), `utf-8` or `gb18030`; for the purchase file and the consent file.
    #[serde(default)]
    pub encoding: TextEncoding,
    /// The CSV export's header for each column (default: the documented names).
    #[serde(default)]
    pub columns: Columns,
    /// Customers who withdrew consent; excluded from every analysis. A file named
    /// here must exist.
    #[serde(default)]
    pub consent_withdrawals: Option<PathBuf>,
    /// `fail` (default) or `skip`.
    #[serde(default)]
    pub on_bad_row: OnBadRow,
    /// With `on_bad_row = "skip"`: the largest fraction of rows that may be skipped
    /// before the load is refused (default 0.01).
    #[serde(default = "default_max_skipped_fraction")]
    pub max_skipped_fraction: f64,
    /// Issue 14, `format = "postgres"`: `postgres://USER@HOST:PORT/DB`, no password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The database role's password: a file (mode 0600) holding it ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// ... or an environment variable holding it (never inline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// TLS to the database: `verify-full` (default) or `disable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslmode: Option<postgres::SslMode>,
    /// The CA certificate (PEM) of the database server, for `verify-full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslrootcert: Option<PathBuf>,
    /// The purchase table, read with `[data.columns]` ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// ... or a query returning the columns `[data.columns]` names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Columns that name a row in reports of bad rows (default: the primary key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub row_key: Vec<String>,
    /// Withdrawn customers' keys from a table (its `customer_key` column) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_table: Option<String>,
    /// ... or a query returning them as its first column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_query: Option<String>,
    /// The node's time zone: purchase times are converted to it before their date is
    /// taken (default `Asia/Shanghai`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// The longest one database query may run, in seconds (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_timeout_seconds: Option<u64>,
    /// The longest a database connection attempt may take, in seconds (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_seconds: Option<u64>,
}

fn is_empty_path(p: &Path) -> bool {
    p.as_os_str().is_empty()
}

impl DataConfig {
    /// A source with every optional setting at its default.
    pub fn new(format: Format, path: PathBuf) -> Self {
        DataConfig {
            format,
            path,
            encoding: TextEncoding::Auto,
            columns: Columns::default(),
            consent_withdrawals: None,
            on_bad_row: OnBadRow::Fail,
            max_skipped_fraction: default_max_skipped_fraction(),
            url: None,
            password_file: None,
            password_env: None,
            sslmode: None,
            sslrootcert: None,
            table: None,
            query: None,
            row_key: Vec::new(),
            consent_table: None,
            consent_query: None,
            time_zone: None,
            query_timeout_seconds: None,
            connect_timeout_seconds: None,
        }
    }

    /// Issue 14: a database source's settings (`format = "postgres"`), validated.
    pub fn postgres(&self) -> Result<postgres::PgSettings, String> {
        let url = self.url.clone().ok_or_else(|| {
            "format = \"postgres\" needs data.url = \"postgres://USER@HOST:PORT/DB\" (the node's read-only role)"
                .to_string()
        })?;
        let s = postgres::PgSettings {
            url,
            password_file: self.password_file.clone(),
            password_env: self.password_env.clone(),
            sslmode: self.sslmode.unwrap_or_default(),
            sslrootcert: self.sslrootcert.clone(),
            table: self.table.clone(),
            query: self.query.clone(),
            row_key: self.row_key.clone(),
            consent_table: self.consent_table.clone(),
            consent_query: self.consent_query.clone(),
            time_zone: self.time_zone.clone().unwrap_or_else(|| "Asia/Shanghai".into()),
            query_timeout_seconds: self.query_timeout_seconds.unwrap_or(600),
            connect_timeout_seconds: self.connect_timeout_seconds.unwrap_or(10),
        };
        s.validate()?;
        Ok(s)
    }

    /// Settings of a database source given for a file format, named.
    fn database_settings_set(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut set = |name, on: bool| {
            if on {
                out.push(name)
            }
        };
        set("url", self.url.is_some());
        set("password_file", self.password_file.is_some());
        set("password_env", self.password_env.is_some());
        set("sslmode", self.sslmode.is_some());
        set("sslrootcert", self.sslrootcert.is_some());
        set("table", self.table.is_some());
        set("query", self.query.is_some());
        set("row_key", !self.row_key.is_empty());
        set("consent_table", self.consent_table.is_some());
        set("consent_query", self.consent_query.is_some());
        set("time_zone", self.time_zone.is_some());
        set("query_timeout_seconds", self.query_timeout_seconds.is_some());
        set("connect_timeout_seconds", self.connect_timeout_seconds.is_some());
        out
    }

    /// Settings that parse but cannot be right.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.max_skipped_fraction) {
            return Err(format!(
                "data.max_skipped_fraction = {} is not a fraction between 0 and 1 (0.01 = 1 % of rows)",
                self.max_skipped_fraction
            ));
        }
        if self.format == Format::Cdnow && self.columns != Columns::default() {
            return Err(
                "[data.columns] applies to formats \"csv\" and \"postgres\"; remove it for format = \"cdnow\"".into()
            );
        }
        if self.format == Format::Postgres {
            if !is_empty_path(&self.path) {
                return Err("data.path is for files; format = \"postgres\" reads data.table or data.query".into());
            }
            self.postgres()?;
        } else {
            if is_empty_path(&self.path) {
                return Err(
                    "data.path names no purchase file; set it to the export (or use format = \"postgres\")".into()
                );
            }
            let set = self.database_settings_set();
            if !set.is_empty() {
                return Err(format!("data.{} apply to format = \"postgres\" only", set.join(", data.")));
            }
            if self.columns.quantity.is_some() {
                return Err(
                    "data.columns.quantity applies to format = \"postgres\" only (a CSV row is one item)".into()
                );
            }
        }
        self.columns.validate()
    }

    /// Load the source, refuse it if too many rows were skipped, and drop every row
    /// of a customer who withdrew consent. What `node run` uses.
    pub fn load(&self) -> Result<Dataset, DataError> {
        let ds = self.read()?;
        self.admit(&ds)?;
        Ok(ds)
    }

    /// Issue 14: the source `node run` reads — a file loaded now (as [`load`](Self::load)),
    /// or a database, checked now: the role cannot write to what it reads, and the rows
    /// are admitted as a file's would be. The database is read again for each analysis.
    pub async fn open(&self) -> Result<Source, DataError> {
        if self.format != Format::Postgres {
            return Ok(Source::Rows(std::sync::Arc::new(self.load()?)));
        }
        self.validate().map_err(DataError::Setting)?;
        let db = postgres::Database::new(self)?;
        db.check_read_only().await?;
        let (counts, _) = db.check_counts().await?;
        db.admitted(&counts)?;
        Ok(Source::Database(std::sync::Arc::new(db)))
    }

    /// Like [`load`](Self::load) without the skipped-rows limit, so `node check`
    /// can show what was read before saying why the node would not start.
    pub fn read(&self) -> Result<Dataset, DataError> {
        self.validate().map_err(DataError::Setting)?;
        let bytes = std::fs::read(&self.path).map_err(|source| DataError::Io { path: self.path.clone(), source })?;
        let decoded = decode::decode(&bytes, self.encoding)
            .map_err(|source| DataError::Decode { path: self.path.clone(), source })?;
        drop(bytes);
        let mut report = LoadReport { encoding: Some(decoded.used), ..Default::default() };
        let rows = match self.format {
            Format::Cdnow => rows::cdnow(&self.path, &decoded, self.on_bad_row, &mut report)?,
            Format::Csv => rows::csv(&self.path, &decoded, &self.columns, self.on_bad_row, &mut report)?,
            Format::Postgres => unreachable!("read_file is for files; a database is read by postgres::Database"),
        };
        drop(decoded);
        let mut withdrawn = match &self.consent_withdrawals {
            Some(p) => Withdrawals::read(p, self.encoding)?,
            None => Withdrawals::none(),
        };
        let customers: HashSet<&str> = rows.iter().map(|p| p.customer.as_str()).collect();
        withdrawn.matched_against(|k| customers.contains(k));
        drop(customers);
        let before = rows.len();
        let purchases: Vec<Purchase> = rows.into_iter().filter(|p| !withdrawn.contains(&p.customer)).collect();
        let customers = purchases.iter().map(|p| p.customer.as_str()).collect::<HashSet<_>>().len() as u64;
        Ok(Dataset {
            withdrawn_rows: (before - purchases.len()) as u64,
            withdrawn_customers: withdrawn.report.matched + withdrawn.report.junk_matched,
            customers,
            consent: withdrawn.report,
            purchases,
            report,
        })
    }

    /// Refuse a dataset that lost more than `max_skipped_fraction` of its rows.
    pub fn admit(&self, ds: &Dataset) -> Result<(), DataError> {
        let r = &ds.report;
        if r.skipped as f64 <= self.max_skipped_fraction * r.read() as f64 {
            return Ok(());
        }
        Err(DataError::TooManySkipped {
            path: self.path.clone(),
            skipped: r.skipped,
            read: r.read(),
            max: self.max_skipped_fraction,
            first: r.skipped_examples.first().cloned().unwrap_or_default(),
            undecodable: r.undecodable,
            // Unwrap safety: `read` always records the encoding.
            used: r.encoding.unwrap(),
        })
    }
}

/// Issue 14: where a node's purchases are — rows loaded from a file at start-up, or a
/// database read for each analysis.
#[derive(Debug, Clone)]
pub enum Source {
    Rows(std::sync::Arc<Dataset>),
    Database(std::sync::Arc<postgres::Database>),
}

impl From<std::sync::Arc<Dataset>> for Source {
    fn from(ds: std::sync::Arc<Dataset>) -> Self {
        Source::Rows(ds)
    }
}

impl Source {
    /// The rows themselves (a database's, streamed in customer order): for what reads
    /// rows rather than per-customer features (private set intersection).
    pub async fn dataset(&self) -> Result<std::sync::Arc<Dataset>, DataError> {
        match self {
            Source::Rows(ds) => Ok(ds.clone()),
            Source::Database(db) => Ok(std::sync::Arc::new(db.dataset().await?)),
        }
    }
}

/// Loaded, consent-filtered data.
#[derive(Debug)]
pub struct Dataset {
    pub purchases: Vec<Purchase>,
    pub report: LoadReport,
    /// Distinct customers left after consent filtering.
    pub customers: u64,
    /// Rows dropped because their customer withdrew consent.
    pub withdrawn_rows: u64,
    pub withdrawn_customers: u64,
    pub consent: ConsentReport,
}

impl Dataset {
    /// What the node logs at start-up.
    pub fn summary(&self) -> LoadSummary {
        LoadSummary {
            rows_read: self.report.read(),
            rows_loaded: self.report.rows,
            rows_skipped: self.report.skipped,
            rows_withdrawn: self.withdrawn_rows,
            customers: self.customers,
            withdrawal_entries: self.consent.distinct,
            withdrawals_matched: self.consent.matched,
            withdrawals_unmatched: self.consent.unmatched,
            withdrawal_junk_lines: self.consent.junk_lines,
            withdrawal_junk_matched: self.consent.junk_matched,
            encoding: self.report.encoding,
        }
    }
}

/// A load in one line: `node run` logs it at start-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadSummary {
    pub rows_read: u64,
    pub rows_loaded: u64,
    pub rows_skipped: u64,
    /// Loaded rows of customers who withdrew consent, excluded from everything.
    pub rows_withdrawn: u64,
    /// Customers left after consent filtering.
    pub customers: u64,
    /// Distinct keys in the consent-withdrawal file.
    pub withdrawal_entries: u64,
    /// Keys that match a customer.
    pub withdrawals_matched: u64,
    pub withdrawals_unmatched: u64,
    /// Lines that are not one key, and the customers they name (excluded as a precaution).
    pub withdrawal_junk_lines: u64,
    pub withdrawal_junk_matched: u64,
    pub encoding: Option<EncodingUsed>,
}

impl std::fmt::Display for LoadSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "loaded {} rows ({} skipped) for {} customers; {} withdrawals ({} matched, {} rows excluded)",
            self.rows_loaded - self.rows_withdrawn,
            self.rows_skipped,
            self.customers,
            self.withdrawal_entries,
            self.withdrawals_matched,
            self.rows_withdrawn
        )?;
        if self.withdrawal_junk_lines > 0 {
            write!(
                f,
                "; {} withdrawal lines are not one key each, {} more customers named on them excluded (see fedcrm node check)",
                self.withdrawal_junk_lines, self.withdrawal_junk_matched
            )?;
        }
        if let Some(e) = self.encoding {
            write!(f, "; read as {e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
