//! The RFM segment analysis across all nodes: global exact quintile cut points from
//! secure-aggregated histograms (one power-of-two pass, then refinement passes), then
//! one round of segment counts under those cuts. Definitions: `fedcrm_analysis::rfm`.
//!
//! Every round of one analysis must have the same contributors, or the cuts would
//! mix different populations. If a node drops *between* rounds the analysis stops
//! without a result: re-running the same histograms over the remaining nodes would
//! hand the coordinator two sums whose difference is the dropped node's histogram.

use std::collections::BTreeMap;

use fedcrm_analysis::rfm::{Cuts, HistogramSpec, Metric, QuantileSearch};
use fedcrm_protocol::wire::{Analysis, AnalysisKind};
use serde::Serialize;

use crate::Coordinator;
use crate::registry::ConnectedNode;
use crate::release::{self, SegmentRelease};
use crate::round::{Exit, RoundError, RoundOutput, describe};

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
pub fn dp_plan_charge(noise: &fedcrm_protocol::wire::Noise) -> fedcrm_dp::accounting::Charge {
    use fedcrm_dp::accounting::{Charge, Sensitivity};
    let coarse: Vec<HistogramSpec> = Metric::ALL.iter().map(|&m| QuantileSearch::coarse_spec(m)).collect();
    let v = noise.variance.as_f64();
    let refinement = Charge::distributed(Sensitivity::counts(3), 3 * 4 * DP_REFINE_BINS as usize, noise.honest, v);
    AnalysisKind::RfmHistograms(coarse)
        .charge(noise)
        .compose(refinement.times(DP_REFINEMENT_PASSES))
        .compose(AnalysisKind::RfmSegments(Cuts::default()).charge(noise))
}

/// What an analyst asked for, and who they are (from their certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalysisRequest {
    pub reference_date: time::Date,
    pub purpose: String,
    pub requested_by: String,
    pub requested_by_organisation: String,
    /// Issue 10: with differential privacy (`--dp on`, the default for analysts); an
    /// exact analysis is refused unless every participant's policy is optional.
    pub dp: bool,
}

impl AnalysisRequest {
    fn analysis(&self, id: &str, analysis_kind: &str, kind: AnalysisKind) -> Analysis {
        Analysis {
            reference_date: self.reference_date,
            purpose: self.purpose.clone(),
            requested_by: self.requested_by.clone(),
            requested_by_organisation: self.requested_by_organisation.clone(),
            analysis_id: id.to_string(),
            analysis_kind: analysis_kind.to_string(),
            kind,
        }
    }
}

/// A node whose franchisee has not approved the analysis stops it: running it now
/// without that node, and later again with it, would let the two results be
/// subtracted. The analysis runs once every node has approved.
fn stop_if_awaiting(out: &RoundOutput) -> Result<(), AnalysisError> {
    let waiting: Vec<String> = out
        .exits
        .iter()
        .filter(|(_, e)| matches!(e, Exit::AwaitingApproval(_)))
        .map(|(n, e)| format!("{n} ({e})"))
        .collect();
    if waiting.is_empty() { Ok(()) } else { Err(AnalysisError::AwaitingApproval { nodes: waiting.join("; ") }) }
}

#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error("the analysis waits for manual approval by {nodes}; it stops without a result and can run once approved")]
    AwaitingApproval { nodes: String },
    #[error("audit log: {0}; nothing was run")]
    Audit(String),
    #[error(transparent)]
    Round(#[from] RoundError),
    #[error(transparent)]
    Release(#[from] release::ReleaseError),
    #[error("quantile search: {0}")]
    Quantile(#[from] fedcrm_analysis::rfm::QuantileError),
    #[error(
        "a node left between rounds of the analysis, so it stops without a result (re-running it over the \
         remaining nodes would let the coordinator subtract one node's data); run it again later. Left:{exits}"
    )]
    ContributorsChanged { exits: String },
    #[error("another analysis is running; try again when it finishes")]
    Busy,
    /// Issue 10: refused up front by the participants' privacy policies.
    #[error("{0}")]
    Privacy(String),
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
        request: &AnalysisRequest,
        specs: Vec<HistogramSpec>,
    ) -> Result<HistogramOutcome, AnalysisError> {
        let mut events = self.events.try_lock().map_err(|_| AnalysisError::Busy)?;
        let id = self.requested(request, "rfm-histograms")?;
        let out = self.histograms_inner(&mut events, request, &id, specs).await;
        self.concluded(&id, &out);
        out
    }

    async fn histograms_inner(
        &self,
        events: &mut tokio::sync::mpsc::UnboundedReceiver<crate::registry::SessionEvent>,
        request: &AnalysisRequest,
        id: &str,
        specs: Vec<HistogramSpec>,
    ) -> Result<HistogramOutcome, AnalysisError> {
        let rules = self.config.release;
        let len = specs.iter().map(HistogramSpec::len).sum();
        let analysis = request.analysis(id, "rfm-histograms", AnalysisKind::RfmHistograms(specs));
        let plan = self.plan(&analysis.coverage())?;
        // Issue 10: exact only if no invitee requires DP; with DP the one round checks
        // every invitee's announced budget before it starts.
        if !request.dp {
            self.exact_allowed(&plan.invited).map_err(AnalysisError::Privacy)?;
        }
        let variance = request.dp.then(|| self.analysis_variance(&plan.invited));
        let mut runner = self.runner(events, variance);
        let out = runner.run(&analysis, &plan.invited, plan.t, plan.degree).await?;
        stop_if_awaiting(&out)?;
        let mut exits: BTreeMap<String, String> = plan.excluded.clone();
        exits.extend(out.exits.iter().map(|(n, e)| (n.clone(), e.to_string())));
        let rounds = vec![out.round.to_hex()];
        Ok(HistogramOutcome { release: release::histogram(&out, &rules, len, &self.audit, id, rounds)?, exits })
    }

    /// Run the segment analysis over all connected nodes.
    pub async fn run_segments(&self, request: &AnalysisRequest) -> Result<SegmentsOutcome, AnalysisError> {
        let mut events = self.events.try_lock().map_err(|_| AnalysisError::Busy)?;
        let id = self.requested(request, "rfm-segments")?;
        let out = self.segments_inner(&mut events, request, &id).await;
        self.concluded(&id, &out);
        out
    }

    /// Every contributor of the analysis' first round must still be connected for
    /// the next: otherwise stop now (the nodes would refuse anyway, since the sums
    /// could be subtracted).
    fn still_connected(&self, invited: &[ConnectedNode]) -> Result<(), AnalysisError> {
        let connected = self.registry.connected();
        let gone: Vec<String> = invited
            .iter()
            .filter(|p| !connected.iter().any(|c| c.name == p.name && c.session == p.session))
            .map(|p| format!("\n  {}: disconnected", p.name))
            .collect();
        if gone.is_empty() { Ok(()) } else { Err(AnalysisError::ContributorsChanged { exits: gone.concat() }) }
    }

    /// Record an analyst's request; returns the new analysis id.
    fn requested(&self, r: &AnalysisRequest, kind: &str) -> Result<String, AnalysisError> {
        let mut b = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
            .map_err(|_| AnalysisError::Audit("system random number generator failed".into()))?;
        let id = hex::encode(b);
        crate::audit::record(&self.audit, fedcrm_audit::Event::AnalysisRequested {
            analysis: id.clone(),
            kind: kind.to_string(),
            analyst: r.requested_by.clone(),
            organisation: r.requested_by_organisation.clone(),
            purpose: r.purpose.clone(),
            parameters: serde_json::json!({ "reference_date": fedcrm_analysis::date::format_date(r.reference_date) }),
        })
        .map_err(|e| AnalysisError::Audit(e.to_string()))?;
        Ok(id)
    }

    /// Record a failed analysis (a released one was recorded by the release door).
    fn concluded<T>(&self, id: &str, out: &Result<T, AnalysisError>) {
        if let Err(e) = out {
            let _ = crate::audit::record(
                &self.audit,
                fedcrm_audit::Event::AnalysisFailed { analysis: id.to_string(), reason: e.to_string() },
            );
        }
        let _ = crate::audit::lock(&self.audit).seal();
    }

    async fn segments_inner(
        &self,
        events: &mut tokio::sync::mpsc::UnboundedReceiver<crate::registry::SessionEvent>,
        request: &AnalysisRequest,
        id: &str,
    ) -> Result<SegmentsOutcome, AnalysisError> {
        let mut round_ids: Vec<String> = Vec::new();
        let rules = self.config.release;
        let coverage = request.analysis(id, "rfm-segments", AnalysisKind::RfmSegments(Cuts::default())).coverage();
        let plan = self.plan(&coverage)?;
        if request.dp {
            // Issue 10: the whole pass plan's cost, checked against every invitee's
            // announced budget before anything starts (each round checks again).
            let noise = self.noise_for(&plan.invited, plan.t).map_err(AnalysisError::Privacy)?;
            let planned = dp_plan_charge(&noise);
            self.within_budgets(&plan.invited, &planned).map_err(|e| {
                AnalysisError::Privacy(format!(
                    "refused before it started: the RFM segment analysis under differential privacy ({} rounds at \
                     most, ρ = {:.4} per node) would exceed a budget: {e}",
                    DP_REFINEMENT_PASSES + 2,
                    planned.rho
                ))
            })?;
        } else {
            self.exact_allowed(&plan.invited).map_err(AnalysisError::Privacy)?;
        }
        let variance = request.dp.then(|| self.analysis_variance(&plan.invited));
        let mut runner = self.runner(events, variance);
        let mut exits: BTreeMap<String, String> = plan.excluded.clone();
        let mut rounds = 0u32;
        let mut charges: Vec<fedcrm_dp::accounting::Charge> = Vec::new();
        let (invited, t, degree) = (plan.invited, plan.t, plan.degree);
        let mut run = async |kind: AnalysisKind, invited: &[ConnectedNode]| {
            rounds += 1;
            let analysis = request.analysis(id, "rfm-segments", kind);
            let out = runner.run(&analysis, invited, t, degree).await;
            if let Ok(o) = &out {
                round_ids.push(o.round.to_hex());
                charges.extend(o.charge);
            }
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
        stop_if_awaiting(&out)?;
        let contributors = out.contributors.clone();
        let invited: Vec<ConnectedNode> = invited.into_iter().filter(|p| contributors.contains(&p.name)).collect();
        let sums =
            release::histograms_for_quantiles(&out, &rules, &specs.iter().map(HistogramSpec::len).collect::<Vec<_>>())?;
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
        // Refinement passes until every cut is exact; under differential privacy at most
        // DP_REFINEMENT_PASSES (the plan is fixed up front), then the cuts as located.
        // Two cuts in the same bin share one histogram, so a customer is counted once
        // per metric and pass (sensitivity: `fedcrm_analysis::rfm::max_counted`).
        let mut passes = 0;
        while searches.iter().any(|s| s.finished().is_none()) && !(request.dp && passes == DP_REFINEMENT_PASSES) {
            passes += 1;
            let mut plan: Vec<(usize, Vec<usize>, HistogramSpec)> = Vec::new();
            for (mi, s) in searches.iter().enumerate() {
                let bins = if request.dp { DP_REFINE_BINS } else { fedcrm_analysis::rfm::REFINE_BINS };
                for (k, spec) in s.next_specs_with(bins) {
                    match plan.iter_mut().find(|p| p.0 == mi && p.2 == spec) {
                        Some(p) => p.1.push(k),
                        None => plan.push((mi, vec![k], spec)),
                    }
                }
            }
            let specs: Vec<HistogramSpec> = plan.iter().map(|p| p.2).collect();
            self.still_connected(&invited)?;
            let out = run(AnalysisKind::RfmHistograms(specs.clone()), &invited).await?;
            stop_if_awaiting(&out)?;
            same(&out)?;
            let sums = release::histograms_for_quantiles(
                &out,
                &rules,
                &specs.iter().map(HistogramSpec::len).collect::<Vec<_>>(),
            )?;
            let mut base = 0;
            for (mi, ks, spec) in &plan {
                for k in ks {
                    searches[*mi].refine(*k, spec, &sums[base..base + spec.len()])?;
                }
                base += spec.len();
            }
        }
        // Exact: the loop above ends only when every search is finished, so the
        // estimate is the exact cut; under DP, the cuts as the fixed passes located them.
        let fin = |i: usize| searches[i].finished().unwrap_or_else(|| searches[i].estimate());
        let cuts = Cuts { recency: fin(0), frequency: fin(1), monetary: fin(2) };
        self.still_connected(&invited)?;
        let out = run(AnalysisKind::RfmSegments(cuts), &invited).await?;
        stop_if_awaiting(&out)?;
        same(&out)?;
        let privacy = release::NoiseReport::of(&out, &charges);
        let release = release::segments(&out, &rules, cuts, &self.audit, id, round_ids, privacy)?;
        Ok(SegmentsOutcome { release, rounds, exits })
    }
}
