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
    pub audit_dir: String,
    pub egress: Vec<EgressLine>,
    pub never_leaves: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct EgressLine {
    pub message: &'static str,
    pub content: String,
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
    let egress = vec![
        EgressLine { message: "hello", content: "protocol version, software version, node name, and this policy's round rules (c, organisations, participants, differencing)".into() },
        EgressLine { message: "advertise-keys", content: "two fresh X25519 public keys per round, signed with this node's certificate key".into() },
        EgressLine { message: "sealed-shares", content: "Shamir shares of this round's mask secrets, encrypted to each peer node (HQ cannot open them), each signed with this node's certificate key".into() },
        EgressLine { message: "share-report", content: "the peers' shares that are signed but do not open, exactly as delivered (encrypted; evidence of who sent them), or nothing when all open".into() },
        EgressLine { message: "masked-chunk", content: "the round's contribution vector (customer counts per histogram bin or per segment) masked with one-time pads; uniformly random to the coordinator".into() },
        EgressLine { message: "consistency-signature", content: "this node's signature on who took part in the round (U2, U3), given only when its rules pass over them".into() },
        EgressLine { message: "unmask-shares", content: "for each peer exactly one share: of its self-mask if it survived, of its mask key if it dropped, never both".into() },
        EgressLine { message: "refusal", content: "the reason a round was refused".into() },
    ];
    CheckReport {
        node: config.name.clone(),
        data_path: config.data.path.display().to_string(),
        encoding: ds.report.encoding,
        rows_read: ds.report.read(),
        rows_loaded: ds.report.rows,
        rows_skipped: ds.report.skipped,
        rows_undecodable: ds.report.undecodable,
        skipped_examples: ds.report.skipped_examples.clone(),
        refused: config.data.admit(ds).err().map(|e| e.to_string()),
        consent: config.data.consent_withdrawals.is_some().then(|| ds.consent.clone()),
        withdrawn_customers: ds.withdrawn_customers,
        withdrawn_rows: ds.withdrawn_rows,
        customers,
        first_purchase: first.map(fedcrm_analysis::date::format_date),
        last_purchase: last.map(fedcrm_analysis::date::format_date),
        channels: channels.into_iter().collect(),
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
        audit_dir: config.audit_dir.display().to_string(),
        egress,
        never_leaves: vec![
            "purchase rows",
            "customer identifiers, phone numbers or their hashes",
            "per-customer RFM values, scores or segments",
            "this node's unmasked counts",
            "customers on the consent-withdrawal list (excluded from every computation)",
        ],
    }
}
