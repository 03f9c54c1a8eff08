//! Issue 11: `fedcrm node score` — HQ's churn model applied to this node's own
//! customers, on this node. The model is fetched and verified by [`crate::models`];
//! each customer is scored from their purchases up to an as-of date
//! ([`fedcrm_model::artifact::ChurnModel::score`]), and the ranked at-risk list is
//! written to a CSV file readable only by its owner (mode 0600). Issue 13: a CLV model
//! instead gives each customer P(alive), the expected purchases in the next period, the
//! expected spend and the discounted value, dormant marked by `[scoring.clv]`
//! ([`fedcrm_model::clv::artifact::ClvModel::score`]), ranked by value.
//!
//! Never sends anything: the list, the scores and the customer keys stay on this
//! machine; they are never printed or logged. The node's audit log records that
//! scoring happened, with which model and over how many customers — not what it
//! found ([`spool::record`]; through the scoring spool while the node daemon holds
//! the log).

pub mod spool;

use std::io;
use std::path::{Path, PathBuf};

use fedcrm_analysis::date::format_date;
use fedcrm_audit::log::AuditError;
use fedcrm_model::artifact::{self, ChurnModel};
use fedcrm_model::clv::artifact::{ClvModel, ClvSettings};
use fedcrm_protocol::model::ModelHeader;
use serde::Serialize;
use time::Date;

use crate::config::NodeConfig;
use crate::data::{DataError, Dataset};
use crate::models::FetchError;

/// The CSV's header row.
pub const CSV_HEADER: [&str; 9] = [
    "rank",
    "customer_key",
    "churn_probability",
    "reason_1",
    "reason_2",
    "reason_3",
    "last_purchase",
    "purchase_days",
    "total_spend",
];

/// One customer of this node, scored. Personal data: its `Debug` omits the key.
#[derive(Clone, PartialEq)]
pub struct ScoredCustomer {
    pub customer: String,
    /// Probability of no purchase in the model's horizon after the as-of date.
    pub probability: f64,
    /// Up to three features that push the churn log-odds up the most, with their
    /// contributions, largest first.
    pub reasons: Vec<(String, f64)>,
    /// The customer's last purchase day on or before the as-of date.
    pub last_purchase: Date,
    /// Distinct purchase days on or before the as-of date.
    pub purchase_days: u64,
    /// Net spend on or before the as-of date, in cents.
    pub total_spend_cents: i64,
}

impl std::fmt::Debug for ScoredCustomer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScoredCustomer").field("probability", &self.probability).finish_non_exhaustive()
    }
}

/// Why scoring did not happen (or was not recorded, in which case no list is left).
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("model {id} is a {kind:?} model; `node score` applies {expected} models")]
    WrongKind { id: String, kind: String, expected: &'static str },
    #[error("refused model {id}: {why}")]
    BadModel { id: String, why: String },
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("this node's data holds no purchase, so there is no customer to score")]
    NoData,
    #[error("no customer of this node bought anything on or before {as_of}; choose a later --as-of")]
    NoCustomer { as_of: String },
    #[error("--top must be at least 1")]
    ZeroTop,
    #[error("cannot write the at-risk list {path}: {error}")]
    Write { path: PathBuf, error: String },
    #[error("{0}")]
    Identity(String),
    #[error("the at-risk list was not kept because this node's audit log could not record the scoring: {0}")]
    Audit(AuditError),
    #[error(
        "the at-risk list was not kept because the scoring could not be spooled for the running node: {path}: {error}"
    )]
    Spool { path: PathBuf, error: io::Error },
}

/// The model kinds `node score` applies, in words.
const EXPECTED_KINDS: &str = "\"churn-logistic\" and \"clv-bg-nbd-gamma-gamma\"";

/// The CSV header of a CLV model's list.
pub const CLV_CSV_HEADER: [&str; 10] = [
    "rank",
    "customer_key",
    "p_alive",
    "dormant",
    "expected_purchases",
    "expected_spend",
    "clv",
    "last_purchase",
    "purchase_days",
    "total_spend",
];

/// One customer of this node valued by the CLV model. Personal data: its `Debug` omits
/// the key.
#[derive(Clone, PartialEq)]
pub struct ValuedCustomer {
    pub customer: String,
    pub score: fedcrm_model::clv::artifact::ClvScore,
    pub last_purchase: Date,
    pub purchase_days: u64,
    pub total_spend_cents: i64,
}

impl std::fmt::Debug for ValuedCustomer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValuedCustomer").field("clv", &self.score.clv).finish_non_exhaustive()
    }
}

/// The CLV model in a verified artifact: refused unless its body parses and
/// [`ClvModel::check`] passes.
pub fn clv_model(header: &ModelHeader) -> Result<ClvModel, ScoreError> {
    let bad = |why: String| ScoreError::BadModel { id: header.id.clone(), why };
    let model: ClvModel =
        serde_json::from_value(header.body.clone()).map_err(|e| bad(format!("its body is not a CLV model: {e}")))?;
    model.check().map_err(bad)?;
    Ok(model)
}

/// A customer's purchase days and net spend up to `as_of`: (last day, days, cents).
fn history_upto(txns: &[fedcrm_model::features::Txn], as_of: Date) -> Option<(Date, u64, i64)> {
    let upto: Vec<_> = txns.iter().filter(|t| t.day <= as_of).collect();
    let mut days: Vec<Date> = upto.iter().map(|t| t.day).collect();
    days.dedup(); // the history is sorted by day
    Some((*days.last()?, days.len() as u64, upto.iter().map(|t| t.cents).sum()))
}

/// Every customer with a purchase on or before `as_of`, valued, ranked by CLV (highest
/// first; ties by customer key), and how many could not be valued (an expectation whose
/// series did not converge): they are left out and counted, never named — the error
/// would carry the customer's x and T (attack review of issue 13, L6).
pub fn score_clv(
    model: &ClvModel,
    dataset: &Dataset,
    as_of: Date,
    settings: &ClvSettings,
) -> (Vec<ValuedCustomer>, u64) {
    let (mut out, mut failed) = (Vec::new(), 0);
    for h in crate::features::histories(&dataset.purchases) {
        let Some(score) = model.score(&h.txns, as_of, settings) else { continue };
        let Ok(score) = score else {
            failed += 1;
            continue;
        };
        let Some((last_purchase, purchase_days, total_spend_cents)) = history_upto(&h.txns, as_of) else { continue };
        out.push(ValuedCustomer {
            customer: h.customer.clone(),
            score,
            last_purchase,
            purchase_days,
            total_spend_cents,
        });
    }
    out.sort_by(|a, b| b.score.clv.total_cmp(&a.score.clv).then_with(|| a.customer.cmp(&b.customer)));
    (out, failed)
}

/// The valued list as CSV ([`CLV_CSV_HEADER`]).
pub fn clv_csv_bytes(rows: &[ValuedCustomer]) -> Result<Vec<u8>, String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(CLV_CSV_HEADER).map_err(|e| e.to_string())?;
    for (i, r) in rows.iter().enumerate() {
        w.write_record([
            (i + 1).to_string(),
            r.customer.clone(),
            format!("{:.4}", r.score.p_alive),
            if r.score.dormant { "yes" } else { "no" }.to_string(),
            format!("{:.4}", r.score.expected_purchases),
            format!("{:.2}", r.score.expected_spend),
            format!("{:.2}", r.score.clv),
            format_date(r.last_purchase),
            r.purchase_days.to_string(),
            money(r.total_spend_cents),
        ])
        .map_err(|e| e.to_string())?;
    }
    w.into_inner().map_err(|e| e.to_string())
}

/// The churn model in a verified artifact: refused unless its kind is
/// [`artifact::KIND`], its body parses, and [`ChurnModel::check`] passes.
pub fn churn_model(header: &ModelHeader) -> Result<ChurnModel, ScoreError> {
    if header.kind != artifact::KIND {
        return Err(ScoreError::WrongKind {
            id: header.id.clone(),
            kind: header.kind.clone(),
            expected: EXPECTED_KINDS,
        });
    }
    let bad = |why: String| ScoreError::BadModel { id: header.id.clone(), why };
    let model: ChurnModel =
        serde_json::from_value(header.body.clone()).map_err(|e| bad(format!("its body is not a churn model: {e}")))?;
    model.check().map_err(bad)?;
    Ok(model)
}

/// The default as-of date: the latest purchase day in this node's data.
pub fn latest_purchase(dataset: &Dataset) -> Option<Date> {
    dataset.purchases.iter().map(|p| p.day).max()
}

/// Every customer with a purchase on or before `as_of`, scored, ranked by churn
/// probability (highest first; ties by customer key).
pub fn score_churn(model: &ChurnModel, dataset: &Dataset, as_of: Date) -> Vec<ScoredCustomer> {
    let mut out: Vec<ScoredCustomer> = crate::features::histories(&dataset.purchases)
        .iter()
        .filter_map(|h| {
            let scored = model.score(&h.customer(), as_of)?;
            let (last_purchase, purchase_days, total_spend_cents) = history_upto(&h.txns, as_of)?;
            Some(ScoredCustomer {
                customer: h.customer.clone(),
                probability: scored.probability,
                reasons: scored.reasons,
                last_purchase,
                purchase_days,
                total_spend_cents,
            })
        })
        .collect();
    out.sort_by(|a, b| b.probability.total_cmp(&a.probability).then_with(|| a.customer.cmp(&b.customer)));
    out
}

/// `cents` as a decimal in the currency's main unit: `129950` → `1299.50`.
fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", cents.unsigned_abs() / 100, cents.unsigned_abs() % 100)
}

/// The at-risk list as CSV ([`CSV_HEADER`]), reasons as `recency_days (+0.84)`.
pub fn csv_bytes(rows: &[ScoredCustomer]) -> Result<Vec<u8>, String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(CSV_HEADER).map_err(|e| e.to_string())?;
    for (i, r) in rows.iter().enumerate() {
        let reason = |k: usize| r.reasons.get(k).map(|(n, c)| format!("{n} ({c:+.2})")).unwrap_or_default();
        w.write_record([
            (i + 1).to_string(),
            r.customer.clone(),
            format!("{:.4}", r.probability),
            reason(0),
            reason(1),
            reason(2),
            format_date(r.last_purchase),
            r.purchase_days.to_string(),
            money(r.total_spend_cents),
        ])
        .map_err(|e| e.to_string())?;
    }
    w.into_inner().map_err(|e| e.to_string())
}

/// Write `rows` to `path` with mode 0600: to a temporary name beside it first, then
/// renamed, so no reader ever sees half a list (an earlier list there is replaced).
pub fn write_list(path: &Path, rows: &[ScoredCustomer]) -> Result<(), ScoreError> {
    write_bytes(path, csv_bytes(rows))
}

/// [`write_list`]'s writing: `bytes` to `path`, 0600, whole or not at all.
fn write_bytes(path: &Path, bytes: Result<Vec<u8>, String>) -> Result<(), ScoreError> {
    let failed = |error: String| ScoreError::Write { path: path.to_path_buf(), error };
    let bytes = bytes.map_err(failed)?;
    let name = path.file_name().ok_or_else(|| failed("the path names no file".into()))?;
    let tmp = path.with_file_name(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    fedcrm_pki::write_private_file(&tmp, &bytes).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        failed(e.to_string())
    })?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        failed(e.to_string())
    })
}

/// What `fedcrm node score` is asked to do.
#[derive(Debug, Clone)]
pub struct ScoreRequest {
    /// The model's registry id, e.g. `churn-v3`.
    pub model_id: String,
    /// Where the at-risk list goes.
    pub out: PathBuf,
    /// Score as of this day; default [`latest_purchase`].
    pub as_of: Option<Date>,
    /// Write only the first `top` rows (all customers are scored and counted).
    pub top: Option<usize>,
    /// The time the publisher's certificate must be valid at (seconds since the epoch).
    pub now_unix: u64,
}

/// What a scoring run did: printed by the CLI. Holds no customer key or score.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreSummary {
    pub model_id: String,
    pub publisher: String,
    /// The model's training window.
    pub reference_date: String,
    pub horizon_days: u32,
    pub as_of: String,
    /// Whether `as_of` was the default (the latest purchase in the node's data).
    pub as_of_default: bool,
    /// Customers scored (every customer with a purchase on or before `as_of`).
    pub customers: u64,
    /// Of them, with a churn probability above 0.5 (churn models; 0 for a CLV model).
    pub above_half: u64,
    /// Issue 13, a CLV model's totals (`None` for a churn model).
    pub clv: Option<ClvTotals>,
    /// Rows written (`--top` may limit them).
    pub rows: u64,
    pub out: PathBuf,
    /// How the audit log took the record.
    pub audit: spool::Recorded,
}

/// The model `node score` applies.
enum Loaded {
    Churn(ChurnModel),
    Clv(ClvModel),
}

/// What a CLV scoring found, in counts and sums only.
#[derive(Debug, Clone, Serialize)]
pub struct ClvTotals {
    /// Customers with P(alive) below `dormant_below`.
    pub dormant: u64,
    pub dormant_below: f64,
    /// Expected purchases of all customers in the next `period_days`.
    pub expected_purchases: f64,
    pub period_days: u32,
    /// Σ CLV over the customers, over `horizon_months`, discounted.
    pub total_clv: f64,
    pub horizon_months: u32,
    /// Customers left out because an expectation could not be computed for them.
    pub not_valued: u64,
}

/// `fedcrm node score`: fetch and verify the model, score this node's customers,
/// write the list, record the scoring in the audit log. If the record cannot be
/// made, the list is removed again: no scoring this node cannot account for.
pub async fn run(cfg: &NodeConfig, req: &ScoreRequest) -> Result<ScoreSummary, ScoreError> {
    if req.top == Some(0) {
        return Err(ScoreError::ZeroTop);
    }
    let (header, _) = crate::models::fetch(cfg, &req.model_id, req.now_unix).await?;
    let model = if header.kind == fedcrm_model::clv::artifact::KIND {
        Loaded::Clv(clv_model(&header)?)
    } else {
        Loaded::Churn(churn_model(&header)?)
    };
    let settings = cfg.scoring.as_ref().map(|s| s.clv).unwrap_or_default();
    settings.check().map_err(|why| ScoreError::BadModel { id: header.id.clone(), why })?;
    let dataset = cfg.data.open().await?.dataset().await?;
    let as_of = match req.as_of {
        Some(d) => d,
        None => latest_purchase(&dataset).ok_or(ScoreError::NoData)?,
    };
    let no_customer = || ScoreError::NoCustomer { as_of: format_date(as_of) };
    let take = |n: usize| req.top.unwrap_or(n).min(n);
    // (reference date, horizon or period, customers, above 0.5, rows written, CLV totals)
    let (reference_date, horizon_days, customers, above_half, rows, totals) = match &model {
        Loaded::Churn(model) => {
            let ranked = score_churn(model, &dataset, as_of);
            if ranked.is_empty() {
                return Err(no_customer());
            }
            let shown = &ranked[..take(ranked.len())];
            write_list(&req.out, shown)?;
            let above = ranked.iter().filter(|r| r.probability > 0.5).count() as u64;
            (model.reference_date, model.horizon_days, ranked.len(), above, shown.len(), None)
        }
        Loaded::Clv(model) => {
            let (ranked, not_valued) = score_clv(model, &dataset, as_of, &settings);
            if ranked.is_empty() {
                return Err(no_customer());
            }
            let shown = &ranked[..take(ranked.len())];
            write_bytes(&req.out, clv_csv_bytes(shown))?;
            let totals = ClvTotals {
                dormant: ranked.iter().filter(|r| r.score.dormant).count() as u64,
                dormant_below: settings.dormant_below,
                expected_purchases: ranked.iter().map(|r| r.score.expected_purchases).sum(),
                period_days: settings.period_days,
                total_clv: ranked.iter().map(|r| r.score.clv).sum(),
                horizon_months: settings.horizon_months,
                not_valued,
            };
            (model.calibration_end, settings.period_days, ranked.len(), 0, shown.len(), Some(totals))
        }
    };
    let audit = match spool::record(cfg, &header.id, customers as u64) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&req.out);
            return Err(e);
        }
    };
    Ok(ScoreSummary {
        model_id: header.id,
        // Verified by `fetch`: the artifact is signed by exactly this publisher.
        publisher: cfg.scoring.as_ref().map(|s| s.publisher.clone()).unwrap_or_default(),
        reference_date: format_date(reference_date),
        horizon_days,
        as_of: format_date(as_of),
        as_of_default: req.as_of.is_none(),
        customers: customers as u64,
        above_half,
        clv: totals,
        rows: rows as u64,
        out: req.out.clone(),
        audit,
    })
}

#[cfg(test)]
mod tests {
    use time::macros::date;

    use super::*;

    fn row(customer: &str, probability: f64, reasons: &[(&str, f64)], spend: i64) -> ScoredCustomer {
        ScoredCustomer {
            customer: customer.into(),
            probability,
            reasons: reasons.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
            last_purchase: date!(2026 - 05 - 20),
            purchase_days: 3,
            total_spend_cents: spend,
        }
    }

    #[test]
    fn the_list_is_plain_csv_with_signed_reasons_and_money_in_main_units() {
        let rows = [
            row("C-1", 0.93125, &[("recency_days", 0.8449), ("frequency", 0.125)], 129_950),
            row("Wang, Li", 0.5, &[], -1_205),
        ];
        let text = String::from_utf8(csv_bytes(&rows).unwrap()).unwrap();
        assert_eq!(
            text,
            "rank,customer_key,churn_probability,reason_1,reason_2,reason_3,last_purchase,purchase_days,total_spend\n\
             1,C-1,0.9313,recency_days (+0.84),frequency (+0.12),,2026-05-20,3,1299.50\n\
             2,\"Wang, Li\",0.5000,,,,2026-05-20,3,-12.05\n"
        );
        assert_eq!(format!("{:?}", rows[1]), "ScoredCustomer { probability: 0.5, .. }");
    }

    #[cfg(unix)]
    #[test]
    fn the_list_is_written_whole_and_readable_only_by_its_owner() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("at-risk.csv");
        std::fs::write(&path, "an older list").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_list(&path, &[row("C-1", 0.75, &[], 100)]).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("1,C-1,0.7500,,,,2026-05-20,3,1.00\n"));
        // Nothing else is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let err = write_list(&dir.path().join("missing").join("x.csv"), &[]).unwrap_err();
        assert!(err.to_string().contains("cannot write the at-risk list"), "{err}");
    }
}
