//! The RFM analyses' queries: customer-count histograms of recency, frequency and
//! monetary value ([`HistogramSpec`]s, the passes of the exact quantile search) and
//! customer counts per segment under global cut points ([`Cuts`]). Definitions:
//! `fedcrm_analysis::rfm`.

use fedcrm_analysis::rfm::{Cuts, HistogramSpec, Layout, Metric};
use fedcrm_analysis::rules::Coverage;
use fedcrm_analysis::width::SumRange;
use fedcrm_dp::accounting::Sensitivity;

use super::Query;
use crate::pb;
use crate::wire::{WireError, field};

/// Every RFM analysis reads a customer's purchases from the first record to the
/// reference date.
fn rfm_coverage(reference: time::Date) -> Coverage {
    Coverage { family: "rfm".into(), from: None, to: reference }
}

impl Query for Vec<HistogramSpec> {
    fn name(&self) -> &'static str {
        "rfm-histograms"
    }

    fn vector_len(&self) -> usize {
        self.iter().map(HistogramSpec::len).sum()
    }

    /// A customer adds 1 to one bin per histogram, unsigned, so each word is at most
    /// the node's number of customers.
    fn range(&self, max_customers_per_node: u64) -> SumRange {
        SumRange::counts(max_customers_per_node)
    }

    /// A customer is counted in at most one bin of each histogram whose range holds
    /// its value (`rfm::accumulate`), so adding or removing it changes at most
    /// [`fedcrm_analysis::rfm::max_counted`] words by one (per metric, the most
    /// histograms sharing a value).
    fn sensitivity(&self) -> Sensitivity {
        Sensitivity::counts(fedcrm_analysis::rfm::max_counted(self))
    }

    fn coverage(&self, reference: time::Date) -> Coverage {
        rfm_coverage(reference)
    }
}

impl Query for Cuts {
    fn name(&self) -> &'static str {
        "rfm-segments"
    }

    fn vector_len(&self) -> usize {
        4
    }

    /// A customer adds 1 to exactly one segment.
    fn range(&self, max_customers_per_node: u64) -> SumRange {
        SumRange::counts(max_customers_per_node)
    }

    fn sensitivity(&self) -> Sensitivity {
        Sensitivity::counts(1)
    }

    fn coverage(&self, reference: time::Date) -> Coverage {
        rfm_coverage(reference)
    }
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

/// One metric's four cut points on the wire.
pub fn cuts_pb(c: &[u64; 4]) -> pb::CutPoints {
    pb::CutPoints { cuts: c.to_vec() }
}

pub(crate) fn cuts_pb_all(c: &Cuts) -> pb::RfmSegments {
    pb::RfmSegments {
        recency: Some(cuts_pb(&c.recency)),
        frequency: Some(cuts_pb(&c.frequency)),
        monetary: Some(cuts_pb(&c.monetary)),
    }
}

pub(crate) fn cuts_from_pb(s: &pb::RfmSegments) -> Result<Cuts, WireError> {
    Ok(Cuts {
        recency: cuts("recency", s.recency.as_ref())?,
        frequency: cuts("frequency", s.frequency.as_ref())?,
        monetary: cuts("monetary", s.monetary.as_ref())?,
    })
}

pub(super) fn histograms_from_pb(h: &pb::RfmHistograms) -> Result<Vec<HistogramSpec>, WireError> {
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
    Ok(specs)
}

pub(super) fn histograms_pb(h: &[HistogramSpec]) -> pb::RfmHistograms {
    pb::RfmHistograms {
        histograms: h
            .iter()
            .map(|s| match s.layout {
                Layout::Log2 => pb::Histogram { metric: metric_pb(s.metric) as i32, log2: true, ..Default::default() },
                Layout::Linear { lo, width, bins } => {
                    pb::Histogram { metric: metric_pb(s.metric) as i32, log2: false, lo, width, bins }
                }
            })
            .collect(),
    }
}
