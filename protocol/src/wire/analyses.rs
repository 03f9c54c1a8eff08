//! Analyses on the wire: what a round computes ([`AnalysisKind`]), the [`Analysis`] it
//! belongs to, and their conversions.

use fedcrm_analysis::date::{format_date, parse_date};
use fedcrm_analysis::rfm::{Cuts, HistogramSpec, Layout, Metric};
use fedcrm_analysis::rules::Coverage;
use fedcrm_analysis::width::SumRange;

use super::*;

/// What a round computes on each node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnalysisKind {
    /// Concatenated customer-count histograms.
    RfmHistograms(Vec<HistogramSpec>),
    /// Customers per segment under the given global cut points.
    RfmSegments(Cuts),
}

impl AnalysisKind {
    /// Short name used in policies and logs.
    pub fn name(&self) -> &'static str {
        match self {
            AnalysisKind::RfmHistograms(_) => "rfm-histograms",
            AnalysisKind::RfmSegments(_) => "rfm-segments",
        }
    }

    /// What the analysis states about its sum, per word, given the coordinator's
    /// per-node bound on customers: both RFM analyses count a node's customers (a
    /// customer adds 1 to one bin per histogram, or to one segment), unsigned, without
    /// noise, so each word is at most the node's number of customers.
    pub fn range(&self, max_customers_per_node: u64) -> SumRange {
        match self {
            AnalysisKind::RfmHistograms(_) | AnalysisKind::RfmSegments(_) => SumRange::counts(max_customers_per_node),
        }
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

    /// Issue 10: how far one customer of one node can move this analysis's vector, from
    /// the computation itself. A customer is counted in at most one bin of each
    /// histogram whose range holds its value (`rfm::accumulate`), so adding or removing
    /// it changes at most [`fedcrm_analysis::rfm::max_counted`] words by one (per
    /// metric, the most histograms sharing a value); or exactly one segment count. The
    /// unit of privacy is one customer of one node.
    pub fn sensitivity(&self) -> fedcrm_dp::accounting::Sensitivity {
        match self {
            AnalysisKind::RfmHistograms(specs) => {
                fedcrm_dp::accounting::Sensitivity::counts(fedcrm_analysis::rfm::max_counted(specs))
            }
            AnalysisKind::RfmSegments(_) => fedcrm_dp::accounting::Sensitivity::counts(1),
        }
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

    /// Length of the round vector.
    pub fn vector_len(&self) -> usize {
        match self {
            AnalysisKind::RfmHistograms(h) => h.iter().map(HistogramSpec::len).sum(),
            AnalysisKind::RfmSegments(_) => 4,
        }
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
    /// What the analysis reads, for the differencing rule: every RFM analysis reads
    /// a customer's purchases from the first record to the reference date.
    pub fn coverage(&self) -> Coverage {
        match self.kind {
            AnalysisKind::RfmHistograms(_) | AnalysisKind::RfmSegments(_) => {
                Coverage { family: "rfm".into(), from: None, to: self.reference_date }
            }
        }
    }
}

/// Parse an analysis's reference date (YYYY-MM-DD).
pub fn parse_reference_date(s: &str) -> Result<time::Date, WireError> {
    parse_date(s).map_err(|e| field("reference_date", e.to_string()))
}

fn metric(m: i32) -> Result<Metric, WireError> {
    match pb::Metric::try_from(m) {
        Ok(pb::Metric::Recency) => Ok(Metric::Recency),
        Ok(pb::Metric::Frequency) => Ok(Metric::Frequency),
        Ok(pb::Metric::Monetary) => Ok(Metric::Monetary),
        _ => Err(field("metric", format!("unknown metric {m}"))),
    }
}

fn metric_pb(m: Metric) -> pb::Metric {
    match m {
        Metric::Recency => pb::Metric::Recency,
        Metric::Frequency => pb::Metric::Frequency,
        Metric::Monetary => pb::Metric::Monetary,
    }
}

fn cuts(name: &'static str, c: Option<&pb::CutPoints>) -> Result<[u64; 4], WireError> {
    let c = c.ok_or_else(|| field(name, "missing"))?;
    let a: [u64; 4] = c.cuts.as_slice().try_into().map_err(|_| field(name, "must hold exactly four cut points"))?;
    if a.windows(2).any(|w| w[0] > w[1]) {
        return Err(field(name, "cut points must ascend"));
    }
    Ok(a)
}

pub fn cuts_pb(c: &[u64; 4]) -> pb::CutPoints {
    pb::CutPoints { cuts: c.to_vec() }
}

impl TryFrom<&pb::Analysis> for Analysis {
    type Error = WireError;
    fn try_from(a: &pb::Analysis) -> Result<Self, WireError> {
        let reference_date = parse_reference_date(&a.reference_date)?;
        if a.purpose.trim().is_empty() || a.purpose.len() > 1000 {
            return Err(field("purpose", "HQ must state a purpose (1..=1000 characters)"));
        }
        let kind = match &a.kind {
            Some(pb::analysis::Kind::RfmHistograms(h)) => {
                if h.histograms.is_empty() || h.histograms.len() > 64 {
                    return Err(field("histograms", "need 1..=64 histograms"));
                }
                let mut specs = Vec::with_capacity(h.histograms.len());
                for x in &h.histograms {
                    let metric = metric(x.metric)?;
                    let layout = if x.log2 {
                        Layout::Log2
                    } else {
                        if x.bins == 0 || x.bins as usize > 1 << 20 || x.width == 0 {
                            return Err(field("histograms", "linear bins need 1..=2^20 bins of non-zero width"));
                        }
                        Layout::Linear { lo: x.lo, width: x.width, bins: x.bins }
                    };
                    specs.push(HistogramSpec { metric, layout });
                }
                AnalysisKind::RfmHistograms(specs)
            }
            Some(pb::analysis::Kind::RfmSegments(s)) => AnalysisKind::RfmSegments(Cuts {
                recency: cuts("recency", s.recency.as_ref())?,
                frequency: cuts("frequency", s.frequency.as_ref())?,
                monetary: cuts("monetary", s.monetary.as_ref())?,
            }),
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
            AnalysisKind::RfmHistograms(h) => pb::analysis::Kind::RfmHistograms(pb::RfmHistograms {
                histograms: h
                    .iter()
                    .map(|s| match s.layout {
                        Layout::Log2 => {
                            pb::Histogram { metric: metric_pb(s.metric) as i32, log2: true, ..Default::default() }
                        }
                        Layout::Linear { lo, width, bins } => {
                            pb::Histogram { metric: metric_pb(s.metric) as i32, log2: false, lo, width, bins }
                        }
                    })
                    .collect(),
            }),
            AnalysisKind::RfmSegments(c) => pb::analysis::Kind::RfmSegments(pb::RfmSegments {
                recency: Some(cuts_pb(&c.recency)),
                frequency: Some(cuts_pb(&c.frequency)),
                monetary: Some(cuts_pb(&c.monetary)),
            }),
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
