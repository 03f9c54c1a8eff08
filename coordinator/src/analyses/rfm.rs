//! The RFM analyses' drivers: the segment analysis — global exact quintile cut points
//! from secure-aggregated histograms (one power-of-two pass, then refinement passes),
//! then one round of segment counts under those cuts — and a single round of
//! customer-count histograms. Definitions: `fedcrm_analysis::rfm`.

use fedcrm_analysis::rfm::{Cuts, HistogramSpec, Metric, QuantileSearch};
use fedcrm_dp::accounting::Charge;
use fedcrm_protocol::wire::{AnalysisKind, Noise};

use super::{AnalysisError, AnalysisRequest, Context, Driver, Finished, Step};
use crate::Coordinator;
use crate::release::{self, SegmentRelease};
use crate::round::RoundOutput;

/// Issue 10: refinement passes of the RFM segment analysis under differential privacy.
/// The pass plan is fixed up front — the coarse pass, at most this many refinement
/// passes, the segment count — so its total charge is known before it starts. Two
/// passes of [`DP_REFINE_BINS`] bins below a power-of-two bin resolve every cut of
/// values below 2^13 to one unit (days, purchase days, cents up to ¥81.92) and wider
/// values to 1/4,096 of their power-of-two range (e.g. ¥1.28 between ¥5,242.88 and
/// ¥10,485.76).
pub const DP_REFINEMENT_PASSES: usize = 2;

/// Issue 10: bins per refinement histogram under DP. The noise of a cumulative count
/// grows with √bins, and a quintile cut needs ranks, not fine bins: 64 bins keep the
/// cumulative noise within √64 = 8 bins' noise.
pub const DP_REFINE_BINS: u64 = 64;

/// The most the RFM segment analysis under DP costs each node with `noise` in every
/// round: the coarse pass (3 histograms, ℓ2² = 3), [`DP_REFINEMENT_PASSES`] refinements
/// (one histogram per metric and distinct bin: ℓ2² ≤ 3, at most 4 × [`DP_REFINE_BINS`]
/// bins per metric) and the segment count (ℓ2² = 1). The budget is split across the passes in
/// proportion to their sensitivity (one noise level for every round): 3 : 3 : 3 : 1.
pub fn dp_plan_charge(noise: &Noise) -> Charge {
    use fedcrm_dp::accounting::Sensitivity;
    let v = noise.variance.as_f64();
    let refinement = Charge::distributed(Sensitivity::counts(3), 3 * 4 * DP_REFINE_BINS as usize, noise.honest, v);
    AnalysisKind::RfmHistograms(coarse_specs())
        .charge(noise)
        .compose(refinement.times(DP_REFINEMENT_PASSES))
        .compose(AnalysisKind::RfmSegments(Cuts::default()).charge(noise))
}

fn coarse_specs() -> Vec<HistogramSpec> {
    Metric::ALL.iter().map(|&m| QuantileSearch::coarse_spec(m)).collect()
}

fn lens(specs: &[HistogramSpec]) -> Vec<usize> {
    specs.iter().map(HistogramSpec::len).collect()
}

/// Result of a segment analysis, as released.
pub type SegmentsOutcome = Finished<SegmentRelease>;

/// Result of a single-round histogram analysis, as released.
pub type HistogramOutcome = Finished<release::HistogramRelease>;

/// The segment analysis: a coarse pass, refinement passes until every cut is exact
/// (under differential privacy at most [`DP_REFINEMENT_PASSES`], the plan being fixed
/// up front, then the cuts as located), then the segment count.
#[derive(Debug, Default)]
pub struct SegmentsDriver {
    /// Per metric, once the coarse pass is in.
    searches: Vec<QuantileSearch>,
    /// The pass in flight: per histogram, its metric, the cut points it refines, its spec.
    pass: Vec<(usize, Vec<usize>, HistogramSpec)>,
    refinements: usize,
    counting: Option<Cuts>,
}

impl SegmentsDriver {
    /// The next refinement pass, or the segment count when every cut is exact (or the
    /// DP plan's passes are used up). Two cuts in the same bin share one histogram, so a
    /// customer is counted once per metric and pass (sensitivity:
    /// `fedcrm_analysis::rfm::max_counted`).
    fn after_pass(&mut self, dp: bool) -> AnalysisKind {
        if self.searches.iter().any(|s| s.finished().is_none()) && !(dp && self.refinements == DP_REFINEMENT_PASSES) {
            self.refinements += 1;
            let bins = if dp { DP_REFINE_BINS } else { fedcrm_analysis::rfm::REFINE_BINS };
            let mut pass: Vec<(usize, Vec<usize>, HistogramSpec)> = Vec::new();
            for (mi, s) in self.searches.iter().enumerate() {
                for (k, spec) in s.next_specs_with(bins) {
                    match pass.iter_mut().find(|p| p.0 == mi && p.2 == spec) {
                        Some(p) => p.1.push(k),
                        None => pass.push((mi, vec![k], spec)),
                    }
                }
            }
            let specs = pass.iter().map(|p| p.2).collect();
            self.pass = pass;
            return AnalysisKind::RfmHistograms(specs);
        }
        // Exact: passes end only when every search is finished, so the estimate is the
        // exact cut; under DP, the cuts as the fixed passes located them.
        let fin = |s: &QuantileSearch| s.finished().unwrap_or_else(|| s.estimate());
        let cuts = Cuts {
            recency: fin(&self.searches[0]),
            frequency: fin(&self.searches[1]),
            monetary: fin(&self.searches[2]),
        };
        self.counting = Some(cuts);
        AnalysisKind::RfmSegments(cuts)
    }
}

impl Driver for SegmentsDriver {
    type Outcome = SegmentRelease;

    fn kind(&self) -> &'static str {
        "rfm-segments"
    }

    /// Pass 1: power-of-two histograms of R, F, M.
    fn first(&mut self) -> AnalysisKind {
        AnalysisKind::RfmHistograms(coarse_specs())
    }

    fn plan_charge(&self, noise: &Noise) -> Option<(Charge, usize)> {
        Some((dp_plan_charge(noise), DP_REFINEMENT_PASSES + 2))
    }

    fn next(&mut self, out: &RoundOutput, cx: &Context<'_>) -> Result<Step<SegmentRelease>, AnalysisError> {
        if let Some(cuts) = self.counting {
            let privacy = release::NoiseReport::of(out, cx.charges);
            let rel = release::segments(out, &cx.rules, cuts, cx.audit, cx.analysis, cx.rounds.to_vec(), privacy)?;
            return Ok(Step::Done(rel));
        }
        if self.searches.is_empty() {
            let specs = coarse_specs();
            let sums = release::histograms_for_quantiles(out, &cx.rules, &lens(&specs))?;
            let mut base = 0;
            for s in &specs {
                self.searches.push(QuantileSearch::from_coarse(s.metric, &sums[base..base + s.len()])?);
                base += s.len();
            }
        } else {
            let specs: Vec<HistogramSpec> = self.pass.iter().map(|p| p.2).collect();
            let sums = release::histograms_for_quantiles(out, &cx.rules, &lens(&specs))?;
            let mut base = 0;
            for (mi, ks, spec) in &self.pass {
                for k in ks {
                    self.searches[*mi].refine(*k, spec, &sums[base..base + spec.len()])?;
                }
                base += spec.len();
            }
        }
        Ok(Step::Round(self.after_pass(cx.dp)))
    }
}

/// One secure round of customer-count histograms (e.g. the distribution of recency
/// for a chart), released with small cells suppressed.
#[derive(Debug)]
pub struct HistogramsDriver {
    specs: Vec<HistogramSpec>,
}

impl Driver for HistogramsDriver {
    type Outcome = release::HistogramRelease;

    fn kind(&self) -> &'static str {
        "rfm-histograms"
    }

    fn first(&mut self) -> AnalysisKind {
        AnalysisKind::RfmHistograms(self.specs.clone())
    }

    /// One round: the round checks its own charge against every invitee's budget.
    fn plan_charge(&self, _noise: &Noise) -> Option<(Charge, usize)> {
        None
    }

    fn next(&mut self, out: &RoundOutput, cx: &Context<'_>) -> Result<Step<Self::Outcome>, AnalysisError> {
        let lens = lens(&self.specs);
        Ok(Step::Done(release::histogram(out, &cx.rules, &lens, cx.audit, cx.analysis, cx.rounds.to_vec())?))
    }
}

impl Coordinator {
    /// One secure round of customer-count histograms over all connected nodes.
    pub async fn run_histograms(
        &self,
        request: &AnalysisRequest,
        specs: Vec<HistogramSpec>,
    ) -> Result<HistogramOutcome, AnalysisError> {
        self.run_analysis(request, HistogramsDriver { specs }).await
    }

    /// Run the segment analysis over all connected nodes.
    pub async fn run_segments(&self, request: &AnalysisRequest) -> Result<SegmentsOutcome, AnalysisError> {
        self.run_analysis(request, SegmentsDriver::default()).await
    }
}
