//! Document model shared by the Markdown and HTML renderers: a title, metadata, an
//! "at a glance" list and sections of paragraphs, tables and items.

use super::*;

pub(super) const NONE: &str = "None in this period.";

pub(super) enum Block {
    Para(String),
    Sub(String),
    Table { head: Vec<&'static str>, rows: Vec<Vec<String>> },
    Item { title: String, fields: Vec<(&'static str, String)> },
}

pub(super) struct Section {
    pub(super) title: &'static str,
    pub(super) explain: &'static str,
    pub(super) blocks: Vec<Block>,
}

pub(super) struct Doc {
    pub(super) title: String,
    pub(super) meta: Vec<(&'static str, String)>,
    pub(super) glance: Vec<String>,
    pub(super) sections: Vec<Section>,
}

/// A table, or "None in this period." when it has no rows.
pub(super) fn table(head: Vec<&'static str>, rows: Vec<Vec<String>>) -> Block {
    if rows.is_empty() { Block::Para(NONE.to_string()) } else { Block::Table { head, rows } }
}

pub(super) fn doc(r: &Report) -> Doc {
    let released = r.analyses.iter().filter(|a| a.outcome == Outcome::Released).count();
    let failed = r.analyses.iter().filter(|a| a.outcome == Outcome::Failed).count();
    let open = r.analyses.len() - released - failed;
    let refusals: u64 = r.refusals.iter().map(|x| x.count).sum();
    let glance = vec![
        format!(
            "{}: {released} released, {failed} failed, {open} without a recorded outcome.",
            count(r.analyses.len() as u64, "analysis", "analyses")
        ),
        format!(
            "{} left {} in {}.",
            human_bytes(r.egress_total.bytes),
            count(r.egress_total.nodes, "node", "nodes"),
            count(r.egress_total.messages, "message", "messages")
        ),
        format!("{} of a node refusing or leaving an analysis.", count(refusals, "record", "records")),
        format!(
            "{} of {} result cells suppressed because they described too few customers.",
            thousands(r.suppressed.total_suppressed),
            thousands(r.suppressed.total_cells)
        ),
        format!(
            "{} of a node's privacy budget in the nodes' logs; {} between a node's log and the coordinator's.",
            count(
                r.privacy.months.iter().filter_map(|m| m.node_log.as_ref()).map(|o| o.charges).sum(),
                "charge",
                "charges"
            ),
            count(r.privacy.mismatches.len() as u64, "mismatch", "mismatches")
        ),
        format!("{} issued.", count(r.certificates.len() as u64, "certificate", "certificates")),
    ];
    let meta = vec![
        ("Period", format!("{} to {} (whole days, UTC; all times in this report are UTC)", r.from, r.to)),
        (
            "Logs read up to",
            match &r.generated_at {
                Some(t) => format!("{t} (the latest record in the logs read)"),
                None => "the logs read contain no records".to_string(),
            },
        ),
        (
            "Verification",
            r.verification.clone().unwrap_or_else(|| {
                "not stated — this report was built without a verification result; run `fedcrm audit verify`"
                    .to_string()
            }),
        ),
    ];
    let sections = vec![
        section_parties(r),
        section_analyses(r),
        section_egress(r),
        section_refusals(r),
        section_thresholds(r),
        section_suppressed(r),
        section_privacy(r),
        section_approvals(r),
        section_models(r),
        section_certificates(r),
        section_integrity(r),
    ];
    Doc { title: format!("Audit report: federated analytics, {} to {}", r.from, r.to), meta, glance, sections }
}
