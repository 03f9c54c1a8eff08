//! The node's face of the RFM analyses: customer-count histograms and segment
//! counts (definitions: `fedcrm_analysis::rfm`).
//!
//! Classification: the three power-of-two R/F/M histograms or a segment count start
//! an [`RFM_SEGMENTS`] analysis; any other histograms an [`RFM_HISTOGRAMS`] one. A
//! later round continues an analysis only if it is a refinement whose every histogram
//! lies inside one bin of the previous pass's histogram of the same metric, with
//! narrower bins, or the final segment count. Every histogram respects the policy's
//! `max_bins` and minimum bin width per metric.

use fedcrm_analysis::rfm::{self, Cuts, HistogramSpec, Layout, Metric, QuantileSearch};
use fedcrm_protocol::wire::AnalysisKind;
use time::Date;
use zeroize::Zeroizing;

use super::{Contribution, LocalData, NodeQuery};
use crate::policy::Policy;

/// An `rfm-segments` analysis (coarse pass, nested refinements, segment counts).
pub const RFM_SEGMENTS: &str = "rfm-segments";
/// Any other customer-count histograms.
pub const RFM_HISTOGRAMS: &str = "rfm-histograms";

/// Most histograms of one metric in a round: one per quintile cut point,
/// as the exact quantile search asks (`fedcrm_analysis::rfm::QuantileSearch::next_specs`).
pub const MAX_REFINEMENTS_PER_METRIC: usize = 4;

impl NodeQuery for Vec<HistogramSpec> {
    fn starts(&self) -> &'static str {
        if is_coarse_pass(self) { RFM_SEGMENTS } else { RFM_HISTOGRAMS }
    }

    /// At most `max_bins` bins per histogram, no bin narrower than the metric's
    /// minimum, and at most [`MAX_REFINEMENTS_PER_METRIC`] histograms per metric — so
    /// adjacent histograms cannot add up to one finer than `max_bins` allows.
    fn check_limits(&self, policy: &Policy) -> Result<(), String> {
        let limits = &policy.histograms;
        for m in Metric::ALL {
            let n = self.iter().filter(|s| s.metric == m).count();
            if n > MAX_REFINEMENTS_PER_METRIC {
                return Err(format!(
                    "policy: {n} {} histograms in one round; at most {MAX_REFINEMENTS_PER_METRIC} per metric (one per cut point)",
                    m.name()
                ));
            }
        }
        for s in self {
            if s.len() > limits.max_bins as usize {
                return Err(format!(
                    "policy: a {} histogram of {} bins exceeds max_bins = {}",
                    s.metric.name(),
                    s.len(),
                    limits.max_bins
                ));
            }
            if let Layout::Linear { width, .. } = s.layout {
                let min = limits.min_width(s.metric);
                if width < min {
                    return Err(format!(
                        "policy: a {} histogram with bins {width} {} wide is finer than the minimum of {min}",
                        s.metric.name(),
                        unit(s.metric)
                    ));
                }
            }
        }
        Ok(())
    }

    fn continues(&self, _kind: &'static str, previous: &AnalysisKind, _: u32, _: &Policy) -> Result<(), String> {
        let previous = match previous {
            AnalysisKind::RfmHistograms(p) => p,
            AnalysisKind::RfmSegments(_) => return Err(ended()),
            AnalysisKind::Churn(_) => return Err("histograms do not follow a churn round".into()),
            AnalysisKind::Clv(_) => return Err("histograms do not follow a CLV round".into()),
        };
        for s in self {
            nests(s, previous)?;
        }
        Ok(())
    }

    /// "3 customer-count histogram(s) at 2026-10-31: recency 65 power-of-two bins; …"
    fn describe(&self, at: &str) -> String {
        let parts: Vec<String> = self
            .iter()
            .map(|s| match s.layout {
                Layout::Log2 => format!("{} {} power-of-two bins", s.metric.name(), s.len()),
                Layout::Linear { lo, width, bins } => {
                    format!("{} {bins} bins of {width} {} from {lo}", s.metric.name(), unit(s.metric))
                }
            })
            .collect();
        format!("{} customer-count histogram(s) at {at}: {}", self.len(), parts.join("; "))
    }

    fn contribute(&self, data: &mut LocalData<'_>, reference: Date) -> Result<Contribution, String> {
        let customers = data.rfm_at(reference);
        let mut v = Zeroizing::new(vec![0u64; self.iter().map(HistogramSpec::len).sum()]);
        for c in customers {
            rfm::accumulate(self, c, &mut v);
        }
        Ok(Contribution { vector: v, customers: customers.len(), eligible: customers.len(), fewest_in_a_month: None })
    }
}

impl NodeQuery for Cuts {
    fn starts(&self) -> &'static str {
        RFM_SEGMENTS
    }

    fn check_limits(&self, _policy: &Policy) -> Result<(), String> {
        Ok(())
    }

    fn continues(&self, kind: &'static str, previous: &AnalysisKind, _: u32, _: &Policy) -> Result<(), String> {
        match previous {
            AnalysisKind::RfmSegments(_) => return Err(ended()),
            AnalysisKind::Churn(_) => return Err("a segment count does not follow a churn round".into()),
            AnalysisKind::Clv(_) => return Err("a segment count does not follow a CLV round".into()),
            AnalysisKind::RfmHistograms(_) => {}
        }
        if kind == RFM_SEGMENTS {
            Ok(())
        } else {
            Err("a segment count does not follow an rfm-histograms analysis".into())
        }
    }

    fn describe(&self, at: &str) -> String {
        format!(
            "4 segment counts (high-value, potential, dormant, other) at {at} under cut points R {:?}, F {:?}, M {:?}",
            self.recency, self.frequency, self.monetary
        )
    }

    fn contribute(&self, data: &mut LocalData<'_>, reference: Date) -> Result<Contribution, String> {
        let customers = data.rfm_at(reference);
        let mut v = Zeroizing::new(vec![0u64; 4]);
        for c in customers {
            v[self.segment_of(c).index()] += 1;
        }
        Ok(Contribution { vector: v, customers: customers.len(), eligible: customers.len(), fewest_in_a_month: None })
    }
}

fn ended() -> String {
    "the analysis already ended with its segment count".into()
}

/// The three power-of-two histograms of R, F and M: the first pass of the exact
/// quantile search.
fn is_coarse_pass(specs: &[HistogramSpec]) -> bool {
    specs.len() == Metric::ALL.len()
        && Metric::ALL.iter().zip(specs).all(|(m, s)| *s == QuantileSearch::coarse_spec(*m))
}

/// A refinement must be linear, and lie inside one bin of a previous histogram of
/// the same metric, with bins narrower than that bin.
fn nests(s: &HistogramSpec, previous: &[HistogramSpec]) -> Result<(), String> {
    let Layout::Linear { lo, width, bins } = s.layout else {
        return Err(format!("a {} histogram repeats a power-of-two pass", s.metric.name()));
    };
    let (a, b) = (lo as u128, lo as u128 + width as u128 * bins as u128);
    let inside = previous.iter().filter(|p| p.metric == s.metric).any(|p| {
        (0..p.len()).any(|i| {
            let (pa, pb) = p.bin_range(i);
            pa <= a && b <= pb && (width as u128) < pb - pa
        })
    });
    if inside {
        Ok(())
    } else {
        Err(format!(
            "its {} bins [{a}, {b}) do not lie inside one bin of the previous pass with narrower bins",
            s.metric.name()
        ))
    }
}

fn unit(m: Metric) -> &'static str {
    match m {
        Metric::Recency => "day(s)",
        Metric::Frequency => "purchase day(s)",
        Metric::Monetary => "cent(s)",
    }
}
