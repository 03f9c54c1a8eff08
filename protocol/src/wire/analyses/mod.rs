//! Analyses on the wire: what a round computes ([`AnalysisKind`], each variant a typed
//! [`Query`] defined in its analysis's module), the [`Analysis`] it belongs to, and
//! their conversions.

use fedcrm_analysis::date::{format_date, parse_date};
use fedcrm_analysis::rfm::{Cuts, HistogramSpec};
use fedcrm_analysis::rules::Coverage;
use fedcrm_analysis::width::SumRange;

use super::*;

pub mod churn;
pub mod clv;
pub mod rfm;

pub use rfm::cuts_pb;

/// What a round computes on each node: the typed query. Each variant's type
/// implements [`Query`] in its analysis's module ([`rfm`]); this enum only dispatches,
/// so adding an analysis adds a variant here and a module beside [`rfm`] (the list of
/// files is in ARCHITECTURE.md, "Adding an analysis").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnalysisKind {
    /// Concatenated customer-count histograms.
    RfmHistograms(Vec<HistogramSpec>),
    /// Customers per segment under the given global cut points.
    RfmSegments(Cuts),
    /// Issue 11: one round of churn-model training or evaluation.
    Churn(Box<churn::ChurnRound>),
    /// Issue 13: one evaluation of a CLV likelihood.
    Clv(Box<clv::ClvRound>),
}

/// The query face of an analysis: what one round computes, described by the
/// computation itself, so that node and coordinator derive the same width, sensitivity
/// and charge from the signed round start with one function each.
pub trait Query {
    /// Short name of the computation, used in logs and refusals.
    fn name(&self) -> &'static str;
    /// Length of the round vector, in words.
    fn vector_len(&self) -> usize;
    /// What the query states about its sum, per word, given the coordinator's
    /// per-node bound on customers (un-noised).
    fn range(&self, max_customers_per_node: u64) -> SumRange;
    /// Issue 10: how far one customer of one node can move the vector.
    fn sensitivity(&self) -> fedcrm_dp::accounting::Sensitivity;
    /// What the query reads of a node's data at `reference`, for the differencing rule.
    fn coverage(&self, reference: time::Date) -> Coverage;
    /// The per-node bound on customers a round of this query uses, given the
    /// coordinator's configured one and the number of invited nodes (signed in the
    /// round start; the width is picked from it, and each node checks the signed bound
    /// is this one).
    fn per_node_bound(&self, configured: u64, _invited: usize) -> u64 {
        configured
    }
    /// Whether a round of this query may carry distributed discrete Gaussian noise on
    /// its words (counts); a query whose words are not counts says no, and a node
    /// refuses such a round with noise.
    fn noise_supported(&self) -> bool {
        true
    }
    /// Whether a round of this query must carry noise: a model round with its
    /// per-customer mechanism is one its nodes compute for a noised sum (no minimum on
    /// their customers, no withholding, the coordinator's per-node bound), so without
    /// noise it would be an exact round without the exact round's rules (attack review
    /// of issue 13, H1).
    fn noise_required(&self) -> bool {
        false
    }
}

impl AnalysisKind {
    /// The typed query behind the variant.
    pub fn query(&self) -> &dyn Query {
        match self {
            AnalysisKind::RfmHistograms(specs) => specs,
            AnalysisKind::RfmSegments(cuts) => cuts,
            AnalysisKind::Churn(c) => c.as_ref(),
            AnalysisKind::Clv(c) => c.as_ref(),
        }
    }

    /// Short name used in policies and logs.
    pub fn name(&self) -> &'static str {
        self.query().name()
    }

    /// [`Query::range`].
    pub fn range(&self, max_customers_per_node: u64) -> SumRange {
        self.query().range(max_customers_per_node)
    }

    /// The range of a round's sum over `invited` nodes: [`AnalysisKind::range`], and
    /// with noise (issue 10) signed, leaving room for the sum of every invitee's noise
    /// ([`fedcrm_dp::accounting::noise_tail`]). The coordinator picks the width from it
    /// and each node recomputes it from the signed round start: one function, so both
    /// agree.
    pub fn range_with(&self, max_customers_per_node: u64, noise: Option<&Noise>, invited: usize) -> SumRange {
        let exact = self.range(max_customers_per_node);
        match noise {
            None => exact,
            Some(n) => SumRange {
                signed: true,
                noise_tail: fedcrm_dp::accounting::noise_tail(invited, n.variance.as_f64()),
                ..exact
            },
        }
    }

    /// [`Query::sensitivity`]. The unit of privacy is one customer of one node.
    pub fn sensitivity(&self) -> fedcrm_dp::accounting::Sensitivity {
        self.query().sensitivity()
    }

    /// Issue 10: what one noised round of this analysis costs each contributor, from the
    /// computation itself and the signed noise: ρ = Δ₂²/(2kσ²), ξ = τ·d (Kairouz, Liu &
    /// Steinke 2021, Proposition 14). Node and coordinator compute it with this one
    /// function.
    pub fn charge(&self, noise: &Noise) -> fedcrm_dp::accounting::Charge {
        fedcrm_dp::accounting::Charge::distributed(
            self.sensitivity(),
            self.vector_len(),
            noise.honest,
            noise.variance.as_f64(),
        )
    }

    /// [`Query::vector_len`].
    pub fn vector_len(&self) -> usize {
        self.query().vector_len()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub reference_date: time::Date,
    pub purpose: String,
    /// The analyst who asked, from their certificate.
    pub requested_by: String,
    pub requested_by_organisation: String,
    /// Identifies the analysis (all its rounds) in audit logs.
    pub analysis_id: String,
    /// The analysis the round belongs to (e.g. `rfm-segments` for all its rounds);
    /// node policies apply to it.
    pub analysis_kind: String,
    pub kind: AnalysisKind,
}

impl Analysis {
    /// What the analysis reads, for the differencing rule ([`Query::coverage`]).
    pub fn coverage(&self) -> Coverage {
        self.kind.query().coverage(self.reference_date)
    }
}

/// Parse an analysis's reference date (YYYY-MM-DD).
pub fn parse_reference_date(s: &str) -> Result<time::Date, WireError> {
    parse_date(s).map_err(|e| field("reference_date", e.to_string()))
}

impl TryFrom<&pb::Analysis> for Analysis {
    type Error = WireError;
    fn try_from(a: &pb::Analysis) -> Result<Self, WireError> {
        let reference_date = parse_reference_date(&a.reference_date)?;
        if a.purpose.trim().is_empty() || a.purpose.len() > 1000 {
            return Err(field("purpose", "HQ must state a purpose (1..=1000 characters)"));
        }
        let kind = match &a.kind {
            Some(pb::analysis::Kind::RfmHistograms(h)) => AnalysisKind::RfmHistograms(rfm::histograms_from_pb(h)?),
            Some(pb::analysis::Kind::RfmSegments(s)) => AnalysisKind::RfmSegments(rfm::cuts_from_pb(s)?),
            Some(pb::analysis::Kind::Churn(c)) => AnalysisKind::Churn(Box::new(churn::churn_from_pb(c)?)),
            Some(pb::analysis::Kind::Clv(c)) => AnalysisKind::Clv(Box::new(clv::clv_from_pb(c)?)),
            None => return Err(field("analysis.kind", "missing")),
        };
        if a.purpose.chars().any(char::is_control) {
            return Err(field("purpose", "must not contain control characters (newlines, escapes)"));
        }
        let text = |field_name: &'static str, v: &str| -> Result<String, WireError> {
            if v.len() > 200 || v.chars().any(char::is_control) {
                return Err(field(field_name, "must be at most 200 characters without control characters"));
            }
            Ok(v.to_string())
        };
        Ok(Analysis {
            reference_date,
            purpose: a.purpose.clone(),
            requested_by: text("requested_by", &a.requested_by)?,
            requested_by_organisation: text("requested_by_organisation", &a.requested_by_organisation)?,
            analysis_id: text("analysis_id", &a.analysis_id)?,
            analysis_kind: if a.analysis_kind.is_empty() {
                kind.name().to_string()
            } else {
                text("analysis_kind", &a.analysis_kind)?
            },
            kind,
        })
    }
}

impl From<&Analysis> for pb::Analysis {
    fn from(a: &Analysis) -> Self {
        let kind = match &a.kind {
            AnalysisKind::RfmHistograms(h) => pb::analysis::Kind::RfmHistograms(rfm::histograms_pb(h)),
            AnalysisKind::RfmSegments(c) => pb::analysis::Kind::RfmSegments(rfm::cuts_pb_all(c)),
            AnalysisKind::Churn(c) => pb::analysis::Kind::Churn(churn::churn_pb(c)),
            AnalysisKind::Clv(c) => pb::analysis::Kind::Clv(clv::clv_pb(c)),
        };
        pb::Analysis {
            reference_date: format_date(a.reference_date),
            purpose: a.purpose.clone(),
            requested_by: a.requested_by.clone(),
            requested_by_organisation: a.requested_by_organisation.clone(),
            analysis_id: a.analysis_id.clone(),
            analysis_kind: a.analysis_kind.clone(),
            kind: Some(kind),
        }
    }
}
