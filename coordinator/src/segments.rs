//! The RFM segment analysis across all nodes: global exact quintile cut points from
//! secure-aggregated histograms (one power-of-two pass, then refinement passes), then
//! one round of segment counts under those cuts. Definitions: `fedcrm_protocol::rfm`.
//!
//! Every round of one analysis must have the same contributors, or the cuts would
//! mix different populations. If a node drops *between* rounds the analysis stops
//! without a result: re-running the same histograms over the remaining nodes would
//! hand the coordinator two sums whose difference is the dropped node's histogram.

use std::collections::BTreeMap;

use fedcrm_protocol::rfm::{Cuts, HistogramSpec, Metric, QuantileSearch};
use fedcrm_protocol::wire::{Analysis, AnalysisKind};
use serde::Serialize;

use crate::Coordinator;
use crate::registry::Participant;
use crate::release::{self, SegmentRelease};
use crate::round::{RoundError, describe};

#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error(transparent)]
    Round(#[from] RoundError),
    #[error(transparent)]
    Release(#[from] release::ReleaseError),
    #[error("quantile search: {0}")]
    Quantile(#[from] fedcrm_protocol::rfm::QuantileError),
    #[error(
        "a node left between rounds of the analysis ({exits}); it stops without a result, because re-running it \
         over the remaining nodes would let the coordinator subtract one node's data; run it again later"
    )]
    ContributorsChanged { exits: String },
    #[error("another analysis is running; try again when it finishes")]
    Busy,
}

/// Result of a segment analysis, as released.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentsOutcome {
    pub release: SegmentRelease,
    pub rounds: u32,
    /// Nodes that left and why (across all attempts).
    pub exits: BTreeMap<String, String>,
}

/// Result of a single-round histogram analysis, as released.
#[derive(Debug, Clone, Serialize)]
pub struct HistogramOutcome {
    pub release: release::HistogramRelease,
    pub exits: BTreeMap<String, String>,
}

impl Coordinator {
    /// One secure round of customer-count histograms over all connected nodes
    /// (e.g. the distribution of recency for a chart), released with small cells
    /// suppressed.
    pub async fn run_histograms(
        &self,
        reference_date: time::Date,
        purpose: &str,
        specs: Vec<HistogramSpec>,
    ) -> Result<HistogramOutcome, AnalysisError> {
        let mut events = self.events.try_lock().map_err(|_| AnalysisError::Busy)?;
        let mut runner = self.runner(&mut events);
        let rules = self.config.release;
        let invited = self.registry.connected();
        if invited.len() < rules.min_participants {
            return Err(RoundError::NotEnoughNodes { have: invited.len(), need: rules.min_participants }.into());
        }
        let t = fedcrm_crypto::secagg::default_threshold(invited.len()).max(rules.min_participants);
        let len = specs.iter().map(HistogramSpec::len).sum();
        let analysis =
            Analysis { reference_date, purpose: purpose.to_string(), kind: AnalysisKind::RfmHistograms(specs) };
        let out = runner.run(&analysis, &invited, t).await?;
        let exits = out.exits.iter().map(|(n, e)| (n.clone(), e.to_string())).collect();
        Ok(HistogramOutcome { release: release::histogram(&out, &rules, len)?, exits })
    }

    /// Run the segment analysis over all connected nodes.
    pub async fn run_segments(
        &self,
        reference_date: time::Date,
        purpose: &str,
    ) -> Result<SegmentsOutcome, AnalysisError> {
        let mut events = self.events.try_lock().map_err(|_| AnalysisError::Busy)?;
        let mut runner = self.runner(&mut events);
        let rules = self.config.release;
        let mut exits: BTreeMap<String, String> = BTreeMap::new();
        let mut rounds = 0u32;
        let invited = self.registry.connected();
        if invited.len() < rules.min_participants {
            return Err(RoundError::NotEnoughNodes { have: invited.len(), need: rules.min_participants }.into());
        }
        let t = fedcrm_crypto::secagg::default_threshold(invited.len()).max(rules.min_participants);
        let mut run = async |kind: AnalysisKind, invited: &[Participant]| {
            rounds += 1;
            let analysis = Analysis { reference_date, purpose: purpose.to_string(), kind };
            let out = runner.run(&analysis, invited, t).await;
            if let Ok(o) = &out {
                for (n, e) in &o.exits {
                    exits.insert(n.clone(), e.to_string());
                }
            }
            out
        };
        // Pass 1: power-of-two histograms of R, F, M. Its contributors are the
        // analysis' population; later rounds invite only them.
        let specs: Vec<HistogramSpec> = Metric::ALL.iter().map(|&m| QuantileSearch::coarse_spec(m)).collect();
        let out = run(AnalysisKind::RfmHistograms(specs.clone()), &invited).await?;
        let contributors = out.contributors.clone();
        let invited: Vec<Participant> = invited.into_iter().filter(|p| contributors.contains(&p.name)).collect();
        let sums = release::histograms_for_quantiles(&out, &rules, specs.iter().map(HistogramSpec::len).sum())?;
        let mut searches = Vec::new();
        let mut base = 0;
        for s in &specs {
            searches.push(QuantileSearch::from_coarse(s.metric, &sums[base..base + s.len()])?);
            base += s.len();
        }
        let same = |out: &crate::round::RoundOutput| -> Result<(), AnalysisError> {
            if out.contributors == contributors {
                Ok(())
            } else {
                Err(AnalysisError::ContributorsChanged { exits: describe(&out.exits) })
            }
        };
        // Refinement passes until every cut is exact.
        while searches.iter().any(|s| s.finished().is_none()) {
            let mut plan: Vec<(usize, usize, HistogramSpec)> = Vec::new();
            for (mi, s) in searches.iter().enumerate() {
                for (k, spec) in s.next_specs() {
                    plan.push((mi, k, spec));
                }
            }
            let specs: Vec<HistogramSpec> = plan.iter().map(|p| p.2).collect();
            let out = run(AnalysisKind::RfmHistograms(specs.clone()), &invited).await?;
            same(&out)?;
            let sums = release::histograms_for_quantiles(&out, &rules, specs.iter().map(HistogramSpec::len).sum())?;
            let mut base = 0;
            for (mi, k, spec) in &plan {
                searches[*mi].refine(*k, spec, &sums[base..base + spec.len()])?;
                base += spec.len();
            }
        }
        // Unwrap safety: the loop above ends only when every search is finished.
        let fin = |i: usize| searches[i].finished().unwrap();
        let cuts = Cuts { recency: fin(0), frequency: fin(1), monetary: fin(2) };
        let out = run(AnalysisKind::RfmSegments(cuts), &invited).await?;
        same(&out)?;
        let release = release::segments(&out, &rules, cuts)?;
        Ok(SegmentsOutcome { release, rounds, exits })
    }
}
