//! `fedcrm node check`: what the franchisee's data looks like and exactly what would
//! leave the machine, before the node ever connects. Reads only local files.

use serde::Serialize;

use crate::config::NodeConfig;
use crate::data::{ConsentReport, Dataset, EncodingUsed};
use crate::features;

#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub node: String,
    pub data_path: String,
    /// The encoding the purchase file was read in, and why.
    pub encoding: Option<EncodingUsed>,
    /// Data rows in the file (header and empty lines not counted).
    pub rows_read: u64,
    pub rows_loaded: u64,
    pub rows_skipped: u64,
    /// Skipped rows holding bytes not valid in `encoding`.
    pub rows_undecodable: u64,
    /// The first skipped rows: (line, reason).
    pub skipped_examples: Vec<(u64, String)>,
    /// Issue 14, a database source: the first skipped rows by row key, with the reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped_keys: Vec<(String, String)>,
    /// Issue 14: the database, its server version and the query the node runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<crate::data::postgres::DatabaseReport>,
    /// Why `node run` would refuse this data (too many rows skipped), if it would.
    pub refused: Option<String>,
    /// The consent-withdrawal file, when one is configured.
    pub consent: Option<ConsentReport>,
    pub withdrawn_customers: u64,
    pub withdrawn_rows: u64,
    pub customers: u64,
    pub first_purchase: Option<String>,
    pub last_purchase: Option<String>,
    pub channels: Vec<(String, u64)>,
    pub allowed_analyses: Vec<String>,
    pub min_participants: usize,
    pub min_other_organisations: usize,
    pub assume_colluding_nodes: usize,
    pub min_population_difference: usize,
    pub differencing_window_days: u32,
    pub max_bins: u32,
    /// Narrowest bins: recency (days), frequency (purchase days), monetary (cents).
    pub min_bin_widths: [u64; 3],
    pub manual_approval: Vec<String>,
    pub monthly_analysis_caps: Vec<(String, u32)>,
    /// Issue 10: the differential-privacy policy and this month's budget.
    pub privacy: PrivacyCheck,
    /// Issue 12: the identifiers this node would match on, and those it cannot use.
    pub psi: PsiCheck,
    pub audit_dir: String,
    pub egress: Vec<EgressLine>,
    pub never_leaves: Vec<&'static str>,
}

/// Issue 12: `[psi] match_on` over this node's customers — counts only, never a value.
#[derive(Debug, Serialize)]
pub struct PsiCheck {
    /// `phone`, `email` or `customer_key`.
    pub match_on: &'static str,
    /// Distinct identifiers this node's list would hold (before padding).
    pub identifiers: u64,
    /// Customers with no value to match on.
    pub customers_without: u64,
    /// Customers whose value is not an identifier, by reason (left out of the list).
    pub bad: Vec<(String, u64)>,
    /// Customers whose identifier another customer has too (held once).
    pub shared_by_customers: u64,
    /// `[policy.psi] respond_to`: the organisations of the peers this node answers.
    pub answers: Vec<String>,
    /// `[policy.psi]`: the shortest and longest peer list this node blinds.
    pub min_list_points: usize,
    pub max_list_points: usize,
    /// `[policy.psi] max_runs_per_peer_organisation`.
    pub max_runs_per_peer_organisation: u32,
    /// `[policy.psi] min_exact_count`: the smallest exact count this node releases.
    pub min_exact_count: u64,
    /// `[policy.psi] max_traps`; the traps this node mixes into its list of these
    /// identifiers when it compares (its bucket's padding included), and the bound they
    /// give on an answer altered to count a customer twice
    /// ([`fedcrm_crypto::psi::amplification_bound`]).
    pub max_traps: usize,
    pub traps: usize,
    pub altered_answer_bound: f64,
}

/// Issue 10: `[policy.privacy]` and what the audit log says of this month's charges.
#[derive(Debug, Serialize)]
pub struct PrivacyCheck {
    /// "required" or "optional".
    pub dp: &'static str,
    /// The monthly budget in words.
    pub budget: String,
    /// The least noise variance per count this node adds.
    pub min_noise_variance: String,
    /// The calendar month (UTC) of the figures below, YYYY-MM.
    pub month: String,
    /// Charges recorded this month, and how much of the budget they use (in its unit).
    pub charges: usize,
    pub used: f64,
    pub limit: f64,
    /// Why the charges could not be read (no audit log yet reads as none).
    pub unreadable: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct EgressLine {
    pub message: &'static str,
    pub content: String,
}

/// This month's privacy budget as the audit log in `config.audit_dir` records it, at
/// `now_ms` (the caller's clock).
pub fn privacy_check(config: &NodeConfig, now_ms: u64) -> PrivacyCheck {
    let p = &config.policy.privacy;
    let (records, unreadable) = if config.audit_dir.exists() {
        match fedcrm_audit::log::read_records(&config.audit_dir) {
            Ok(r) => (r, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        }
    } else {
        (Vec::new(), None)
    };
    let ledger = crate::privacy::ledger_from(&records);
    let month = fedcrm_dp::budget::Month::of(now_ms);
    let (spent, charges) = ledger.month(month);
    let budget = p.budget();
    let (used, limit) = budget.used(spent);
    PrivacyCheck {
        dp: match p.dp {
            crate::privacy::DpMode::Required => "required",
            crate::privacy::DpMode::Optional => "optional",
        },
        budget: budget.describe(),
        min_noise_variance: p.min_noise().map(|v| v.to_string()).unwrap_or_else(|e| e),
        month: month.to_string(),
        charges,
        used,
        limit,
        unreadable,
    }
}

/// What `[psi] match_on` finds in the data: counts by reason, never a value.
pub fn psi_check(config: &NodeConfig, purchases: &[crate::data::Purchase]) -> PsiCheck {
    let on = config.psi.match_on;
    let ids = crate::identifiers::customer_identifiers(purchases, on);
    let n = ids.ids.len();
    let traps = config.policy.psi.list_limits().comparer_length(n) - n;
    PsiCheck {
        match_on: on.as_str(),
        identifiers: ids.ids.len() as u64,
        customers_without: ids.empty,
        bad: ids.bad.iter().map(|(reason, n)| (reason.to_string(), *n)).collect(),
        shared_by_customers: ids.duplicates,
        answers: config.policy.psi.respond_to.iter().map(|r| r.organisation.clone()).collect(),
        min_list_points: config.policy.psi.min_list_points,
        max_list_points: config.policy.psi.max_list_points,
        max_runs_per_peer_organisation: config.policy.psi.max_runs_per_peer_organisation,
        min_exact_count: config.policy.psi.min_exact_count,
        max_traps: config.policy.psi.max_traps,
        traps,
        altered_answer_bound: fedcrm_crypto::psi::amplification_bound(2, traps),
    }
}

/// Build the report from a dataset read by [`crate::data::DataConfig::read`]; says
/// whether [`crate::data::DataConfig::load`] (what `node run` uses) would refuse it.
pub fn check(config: &NodeConfig, ds: &Dataset) -> CheckReport {
    let first = ds.purchases.iter().map(|p| p.day).min();
    let last = ds.purchases.iter().map(|p| p.day).max();
    let customers = last.map(|d| features::rfm(&ds.purchases, d).len() as u64).unwrap_or(0);
    let mut channels = std::collections::BTreeMap::<String, u64>::new();
    for p in &ds.purchases {
        *channels.entry(p.channel.clone().unwrap_or_else(|| "(none)".into())).or_default() += 1;
    }
    let facts = Facts {
        report: ds.report.clone(),
        refused: config.data.admit(ds).err().map(|e| e.to_string()),
        consent: config.data.consent_withdrawals.is_some().then(|| ds.consent.clone()),
        withdrawn_customers: ds.withdrawn_customers,
        withdrawn_rows: ds.withdrawn_rows,
        customers,
        first,
        last,
        channels: channels.into_iter().collect(),
        database: None,
    };
    report(config, facts, psi_check(config, &ds.purchases))
}

/// Issue 14: the report of a database source, from counts the database computes; the
/// identifiers are read one customer at a time (the node never holds the rows). `Err`
/// if the database cannot be read at all; a role that can write, or too many bad rows,
/// are in `refused`.
pub async fn check_database(config: &NodeConfig) -> Result<CheckReport, crate::data::DataError> {
    let db = crate::data::postgres::Database::new(&config.data)?;
    let described = db.describe_source().await?;
    let (counts, consent) = db.check_counts().await?;
    let refused = match db.check_read_only().await {
        Err(e) => Some(e.to_string()),
        Ok(()) => db.admitted(&counts).err().map(|e| e.to_string()),
    };
    let contacts = db.contacts(config.psi.match_on).await?;
    let facts = Facts {
        report: counts.report,
        refused,
        consent: (config.data.consent_withdrawals.is_some()
            || config.data.consent_table.is_some()
            || config.data.consent_query.is_some())
        .then_some(consent.clone()),
        withdrawn_customers: consent.matched + consent.junk_matched,
        withdrawn_rows: counts.withdrawn_rows,
        customers: counts.customers,
        first: counts.first,
        last: counts.last,
        channels: counts.channels,
        database: Some(described),
    };
    Ok(report(config, facts, psi_check(config, &contacts)))
}

/// What a source's read found, however it was read.
struct Facts {
    report: crate::data::LoadReport,
    refused: Option<String>,
    consent: Option<ConsentReport>,
    withdrawn_customers: u64,
    withdrawn_rows: u64,
    customers: u64,
    first: Option<time::Date>,
    last: Option<time::Date>,
    channels: Vec<(String, u64)>,
    database: Option<crate::data::postgres::DatabaseReport>,
}

fn report(config: &NodeConfig, facts: Facts, psi: PsiCheck) -> CheckReport {
    let Facts {
        report: r,
        refused,
        consent,
        withdrawn_customers,
        withdrawn_rows,
        customers,
        first,
        last,
        channels,
        database,
    } = facts;
    let egress = vec![
        EgressLine { message: "hello", content: "protocol version, software version, node name, this policy's round rules (c, organisations, participants, differencing) and its privacy budget with this month's spending".into() },
        EgressLine { message: "advertise-keys", content: "two fresh X25519 public keys per round, signed with this node's certificate key".into() },
        EgressLine { message: "sealed-shares", content: "Shamir shares of this round's mask secrets, encrypted to each peer node (HQ cannot open them), each signed with this node's certificate key".into() },
        EgressLine { message: "share-report", content: "the peers' shares that are signed but do not open, exactly as delivered (encrypted; evidence of who sent them), or nothing when all open".into() },
        EgressLine { message: "masked-chunk", content: "the round's contribution vector (customer counts per histogram bin or per segment), with discrete Gaussian noise added first in analyses run with differential privacy, masked with one-time pads; uniformly random to the coordinator".into() },
        EgressLine { message: "consistency-signature", content: "this node's signature on who took part in the round (U2, U3), given only when its rules pass over them".into() },
        EgressLine { message: "unmask-shares", content: "for each peer exactly one thing: a share of its round self-mask seed if it survived, this node's round pair seed with it if it dropped, never both".into() },
        EgressLine { message: "refusal", content: "the reason a round was refused".into() },
    ];
    CheckReport {
        node: config.name.clone(),
        data_path: match &database {
            Some(d) => d.url.clone(),
            None => config.data.path.display().to_string(),
        },
        encoding: r.encoding,
        rows_read: r.read(),
        rows_loaded: r.rows,
        rows_skipped: r.skipped,
        rows_undecodable: r.undecodable,
        skipped_examples: r.skipped_examples,
        skipped_keys: r.skipped_keys,
        database,
        refused,
        consent,
        withdrawn_customers,
        withdrawn_rows,
        customers,
        first_purchase: first.map(fedcrm_analysis::date::format_date),
        last_purchase: last.map(fedcrm_analysis::date::format_date),
        channels,
        allowed_analyses: config.policy.allowed_analyses.clone(),
        min_participants: config.policy.min_participants,
        min_other_organisations: config.policy.min_other_organisations,
        assume_colluding_nodes: config.policy.assume_colluding_nodes,
        min_population_difference: config.policy.required_difference(),
        differencing_window_days: config.policy.differencing_window_days,
        max_bins: config.policy.histograms.max_bins,
        min_bin_widths: [
            config.policy.histograms.min_width_recency_days,
            config.policy.histograms.min_width_frequency,
            config.policy.histograms.min_width_monetary_cents,
        ],
        manual_approval: config.policy.manual_approval.clone(),
        monthly_analysis_caps: config.policy.monthly_analysis_caps.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        privacy: privacy_check(config, crate::session::unix_now_ms()),
        psi,
        audit_dir: config.audit_dir.display().to_string(),
        egress,
        never_leaves: vec![
            "purchase rows",
            "customer identifiers, phone numbers or their hashes, birthdays and wedding anniversaries",
            "per-customer RFM values, scores or segments",
            "this node's unmasked counts, and in analyses run with differential privacy its un-noised counts",
            "customers on the consent-withdrawal list (excluded from every computation)",
        ],
    }
}
