//! `fedcrm bench clv` (issue 13): rounds and wall time of a CLV fit to convergence for
//! n nodes on loopback (default 5 and 50), each beside an honest floor measured in the
//! same run on the same cores. Measured, never asserted.
//!
//! **End to end.** The harness ([`crate::harness`], no test hooks) starts a coordinator
//! and n franchisee nodes with mutual TLS and certificates issued from CSRs; CDNOW's
//! 23,570 customers are dealt round-robin over the nodes; `Coordinator::run_clv` fits
//! BG/NBD then Gamma-Gamma (calibration end 1997-09-30, weeks), every evaluation one
//! secure-aggregation round over gRPC, and registers the model. The time is from the
//! request to the registered model; starting the deployment is reported apart.
//!
//! **The floor**: the same fit with every part but the network and secure aggregation —
//! each node's sums from its own customers' summaries (`node_sums` and its words, the
//! nodes in parallel on all cores), a plain wrapping sum, and the same BFGS to the same
//! stop. Its parameters must equal the federated fit's bit for bit and its evaluations
//! the federated rounds, or the bench fails: equal parameters need equal sums every
//! round.
//!
//! **Under differential privacy** (`--dp`): at each size, `--runs` fits with `--dp on`
//! (nodes allowing both, budgets above the runs), each beside the exact fit of the same
//! run: rounds, time, the ε each node was charged, the parameters, and what the noise
//! and the clamping cost where it matters — the 39-week forecast of repeat purchases
//! summed over the customers, each customer's P(alive), and each repeat customer's
//! expected spend, against the exact model's. Its floor: the same noised fit without
//! network or secure aggregation — each node's clamped terms through the same
//! mechanism (rounding and discrete Gaussian noise, the nodes in parallel), a wrapping
//! sum, the same decoding and optimiser (its noise is its own, so its parameters differ).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fedcrm_coordinator::analyses::AnalysisRequest;
use fedcrm_coordinator::analyses::churn::{DP_RETRIES, DpPlan, DpTarget};
use fedcrm_coordinator::analyses::clv::ClvRequest;
use fedcrm_coordinator::analyses::clv::{DP_BG_NBD_ROUNDS, DP_GAMMA_GAMMA_ROUNDS};
use fedcrm_coordinator::config::ReleaseRules;
use fedcrm_dp::sampler::{DiscreteGaussian, Variance};
use fedcrm_dp::vector::CustomerSum;
use fedcrm_model::clv::artifact::ClvModel;
use fedcrm_model::clv::fit::{Bfgs, Next};
use fedcrm_model::clv::summary::{Calibration, Summary, TimeUnit};
use fedcrm_model::clv::sums::{Evaluation, Likelihood, TermClips, node_sums, node_terms};
use fedcrm_model::clv::{bgnbd, gamma_gamma};
use fedcrm_model::fixed::wrapping_sum;
use rayon::prelude::*;
use serde::Serialize;

use crate::harness::{CDNOW, Cluster, ClusterOptions, NodeSpec, split_cdnow};

const CALIBRATION_END: time::Date = time::macros::date!(1997 - 09 - 30);

/// One deployment size's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub nodes: usize,
    pub customers: u64,
    /// Secure rounds of the BG/NBD and the Gamma-Gamma fits.
    pub rounds_bg_nbd: u32,
    pub rounds_gamma_gamma: u32,
    /// From the request to the registered model.
    pub total_ms: f64,
    pub ms_per_round: f64,
    /// The same fit without network or secure aggregation (see the module doc).
    pub floor_ms: f64,
    /// `total_ms / floor_ms`.
    pub ratio: f64,
    /// Starting the deployment (certificates, coordinator, nodes), apart.
    pub cluster_start_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Each node's CDNOW customers' calibration summaries, as its session computes them.
fn summaries(specs: &[NodeSpec]) -> Result<Vec<Vec<Summary>>> {
    let cal = Calibration { end: CALIBRATION_END, unit: TimeUnit::Weeks, first_purchase: None };
    specs
        .iter()
        .map(|s| {
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("data.txt");
            std::fs::write(&path, &s.data)?;
            let ds = fedcrm_node::data::DataConfig::new(fedcrm_node::data::Format::Cdnow, path).load()?;
            Ok(fedcrm_node::features::histories(&ds.purchases).iter().filter_map(|h| cal.summary(&h.txns)).collect())
        })
        .collect()
}

/// The floor's fit of one likelihood: its evaluations and the parameters it ends at.
fn floor_fit(which: Likelihood, nodes: &[Vec<Summary>], request: &ClvRequest) -> Result<(u32, Vec<f64>)> {
    let mut opt = Bfgs::new(vec![0.0; which.dims()], request.stopping);
    loop {
        match opt.next() {
            Next::Evaluate(theta) => {
                let words: Vec<Vec<u64>> =
                    nodes.par_iter().map(|n| node_sums(which, &theta, n).to_words()).collect::<Result<_, _>>()?;
                let e = Evaluation::decode(which, &wrapping_sum(&words)?)?;
                opt.set_noise(e.rounding(nodes.len() as u64));
                let (f, g) = e.objective();
                opt.tell(f, g)?;
            }
            Next::Done(o) => return Ok((o.evaluations, o.theta)),
        }
    }
}

/// One noised fit's figures beside the exact fit of the same run.
#[derive(Debug, Clone, Serialize)]
pub struct DpRun {
    pub nodes: usize,
    pub run: usize,
    pub rounds_bg_nbd: u32,
    pub rounds_gamma_gamma: u32,
    pub total_ms: f64,
    /// The same noised fit without network or secure aggregation (module doc).
    pub floor_ms: f64,
    pub ratio: f64,
    /// What the fit cost each node (δ = 10⁻⁶).
    pub epsilon_spent: f64,
    pub r: f64,
    pub alpha: f64,
    pub a: f64,
    pub b: f64,
    pub p: f64,
    pub q: f64,
    pub gamma: f64,
    /// Expected repeat purchases in the 39 weeks after calibration, summed over the
    /// customers, by this model; and its relative difference from the exact model's.
    pub forecast_39_weeks: f64,
    pub forecast_error: f64,
    /// Mean |P(alive) − exact P(alive)| over the customers.
    pub p_alive_mae: f64,
    /// Mean |expected spend / exact expected spend − 1| over the repeat customers.
    pub spend_mre: f64,
}

/// What the DP runs compare against: the exact fit's forecast.
#[derive(Debug, Clone, Serialize)]
pub struct DpReport {
    pub epsilon: f64,
    pub exact_forecast_39_weeks: Vec<f64>,
    pub runs: Vec<DpRun>,
}

/// A deployment of `n` franchisees of CDNOW dealt round-robin; under DP each allows both
/// exact and noised rounds (the exact fit is the reference) and has a budget far above
/// the runs.
async fn deployment(n: usize, dp: bool) -> Result<(Vec<NodeSpec>, Cluster, f64)> {
    let specs: Vec<NodeSpec> = split_cdnow(CDNOW, &vec![1; n], true)
        .into_iter()
        .enumerate()
        .map(|(i, data)| {
            let mut spec = NodeSpec::franchisee(&format!("node-{i:02}"), data);
            if dp {
                spec.policy.privacy.dp = fedcrm_node::privacy::DpMode::Optional;
                spec.policy.privacy.monthly_epsilon = Some(1e6);
                spec.policy.monthly_analysis_caps.insert("clv-model".into(), 1_000);
            }
            spec
        })
        .collect();
    let started = Instant::now();
    let cluster = Cluster::start(ClusterOptions {
        nodes: specs.clone(),
        release: ReleaseRules { min_participants: 3, min_cohort: 0 },
        phase_timeout_seconds: 60,
        ..Default::default()
    })
    .await?;
    Ok((specs, cluster, ms(started.elapsed())))
}

fn analysis(dp: bool) -> AnalysisRequest {
    AnalysisRequest {
        reference_date: CALIBRATION_END,
        purpose: "bench: CLV fit".into(),
        requested_by: "bench".into(),
        requested_by_organisation: "HQ".into(),
        dp,
    }
}

async fn row(n: usize) -> Result<Row> {
    let (specs, cluster, cluster_start_ms) = deployment(n, false).await?;
    let request = ClvRequest::new(TimeUnit::Weeks);
    let t = Instant::now();
    let done = cluster.coordinator.run_clv(&analysis(false), request, None).await;
    let total = t.elapsed();
    cluster.stop().await;
    let done = done.map_err(|e| anyhow::anyhow!("the CLV fit over {n} nodes failed: {e}"))?;
    let model = &done.release.model;
    // The floor, after the deployment has stopped.
    let nodes = summaries(&specs)?;
    let t = Instant::now();
    let (bg_rounds, bg) = floor_fit(Likelihood::BgNbd, &nodes, &request)?;
    let (gg_rounds, gg) = floor_fit(Likelihood::GammaGamma, &nodes, &request)?;
    let floor = t.elapsed();
    let same = |theta: &[f64], fitted: &[f64]| theta.iter().zip(fitted).all(|(t, f)| t.exp().to_bits() == f.to_bits());
    let b = &model.bg_nbd.params;
    let g = &model.gamma_gamma.params;
    ensure!(
        same(&bg, &[b.r, b.alpha, b.a, b.b]) && same(&gg, &[g.p, g.q, g.gamma]),
        "the floor's fit differs from the federated one: {bg:?} {gg:?} vs {model:?}"
    );
    ensure!(
        (bg_rounds, gg_rounds) == (model.bg_nbd.evaluations, model.gamma_gamma.evaluations),
        "the floor took another number of evaluations"
    );
    let rounds = done.rounds;
    Ok(Row {
        nodes: n,
        customers: model.bg_nbd.customers,
        rounds_bg_nbd: model.bg_nbd.evaluations,
        rounds_gamma_gamma: model.gamma_gamma.evaluations,
        total_ms: ms(total),
        ms_per_round: ms(total) / f64::from(rounds.max(1)),
        floor_ms: ms(floor),
        ratio: ms(total) / ms(floor),
        cluster_start_ms,
    })
}

/// The floor of one noised fit: each node's clamped terms through the mechanism a plan
/// for `n` nodes gives (rounding and discrete Gaussian noise), a wrapping sum, decoding
/// and the same optimiser; its evaluations.
fn dp_floor_fit(which: Likelihood, nodes: &[Vec<Summary>], plan: &DpPlan, max: u32) -> Result<u32> {
    let request = ClvRequest::new(TimeUnit::Weeks);
    let stopping = fedcrm_model::clv::fit::Stopping { max_evaluations: max, noised: true, ..request.stopping };
    let clips = TermClips::default_for(which, TimeUnit::Weeks);
    let noise = DiscreteGaussian::new(Variance::integer(plan.variance().ceil() as u64)?);
    let mut opt = Bfgs::new(vec![0.0; which.dims()], stopping);
    loop {
        match opt.next() {
            Next::Evaluate(theta) => {
                let dp = plan.round(which.words(), clips.term_norm()).map_err(anyhow::Error::msg)?;
                let m = CustomerSum::new(which.words(), dp.clip, dp.gamma, dp.max_customers)?;
                // The spend model over (ln p, ln(q − 1), ln γ), as the coordinator fits it.
                let spend = which == Likelihood::GammaGamma;
                let params = if spend { gamma_gamma::log_params_q_above_one(&theta).to_vec() } else { theta.clone() };
                let words: Vec<Vec<u64>> = nodes
                    .par_iter()
                    .map(|n| -> Result<Vec<u64>> {
                        let mut entropy = fedcrm_dp::OsEntropy::new();
                        let (terms, _) = node_terms(which, &params, n, &clips);
                        let rounded = m.quantize(&dp.seed(), &terms, &mut entropy)?;
                        let noise = noise.samples(rounded.len(), &mut entropy)?;
                        Ok(rounded.iter().zip(noise).map(|(v, e)| v.wrapping_add(e) as u64).collect())
                    })
                    .collect::<Result<_>>()?;
                let reals = m.decode(&dp.seed(), &wrapping_sum(&words)?)?;
                let e = Evaluation::from_noised(which, &reals, &clips)?;
                let (f, g) = e.objective();
                opt.tell(f, if spend { gamma_gamma::gradient_q_above_one(&theta, g) } else { g })?;
            }
            Next::Done(o) => return Ok(o.evaluations),
        }
    }
}

/// Expected repeat purchases in the 39 weeks after calibration, summed; each customer's
/// P(alive); each repeat customer's expected spend.
fn predictions(m: &ClvModel, all: &[Summary]) -> Result<(f64, Vec<f64>, Vec<f64>)> {
    let (b, g) = (&m.bg_nbd.params, &m.gamma_gamma.params);
    let mut forecast = 0.0;
    for c in all {
        forecast += bgnbd::expected_purchases(b, c, 39.0)?;
    }
    let alive = all.iter().map(|c| bgnbd::p_alive(b, c)).collect();
    let spend = all.iter().filter(|c| c.x > 0).map(|c| gamma_gamma::expected_spend(g, c).unwrap_or(f64::NAN)).collect();
    Ok((forecast, alive, spend))
}

/// `runs` noised fits over `n` nodes (ε = `epsilon` each), each beside the exact fit.
async fn dp_runs(n: usize, runs: usize, epsilon: f64) -> Result<(f64, Vec<DpRun>)> {
    let (specs, cluster, _) = deployment(n, true).await?;
    let exact = cluster.coordinator.run_clv(&analysis(false), ClvRequest::new(TimeUnit::Weeks), None).await;
    let exact = exact.map_err(|e| anyhow::anyhow!("the exact CLV fit over {n} nodes failed: {e}"))?.release.model;
    let mut request = ClvRequest::new(TimeUnit::Weeks);
    request.privacy = DpTarget { epsilon, ..DpTarget::default() };
    let mut fits = Vec::new();
    for run in 0..runs {
        let t = Instant::now();
        let done = cluster.coordinator.run_clv(&analysis(true), request, None).await;
        let total = t.elapsed();
        let done = done.map_err(|e| anyhow::anyhow!("noised CLV fit {run} over {n} nodes failed: {e}"))?;
        fits.push((done.release.model, total));
    }
    cluster.stop().await;
    let nodes = summaries(&specs)?;
    let all: Vec<Summary> = nodes.concat();
    let (forecast0, alive0, spend0) = predictions(&exact, &all)?;
    // The floor's plan: the same target and rounds, every node's noise counted.
    let clips = [Likelihood::BgNbd, Likelihood::GammaGamma]
        .map(|l| (l.words(), TermClips::default_for(l, TimeUnit::Weeks).term_norm()));
    let rounds = DP_BG_NBD_ROUNDS + DP_GAMMA_GAMMA_ROUNDS + DP_RETRIES;
    let (plan, _) =
        DpPlan::new(request.privacy, rounds, 8, n, Variance::integer(1)?, &clips).map_err(anyhow::Error::msg)?;
    let mut out = Vec::new();
    for (run, (m, total)) in fits.into_iter().enumerate() {
        let t = Instant::now();
        dp_floor_fit(Likelihood::BgNbd, &nodes, &plan, m.bg_nbd.evaluations)?;
        dp_floor_fit(Likelihood::GammaGamma, &nodes, &plan, m.gamma_gamma.evaluations)?;
        let floor = t.elapsed();
        let (forecast, alive, spend) = predictions(&m, &all)?;
        let (b, g) = (&m.bg_nbd.params, &m.gamma_gamma.params);
        out.push(DpRun {
            nodes: n,
            run,
            rounds_bg_nbd: m.bg_nbd.evaluations,
            rounds_gamma_gamma: m.gamma_gamma.evaluations,
            total_ms: ms(total),
            floor_ms: ms(floor),
            ratio: ms(total) / ms(floor),
            epsilon_spent: m.provenance.dp.map_or(f64::NAN, |d| d.epsilon),
            r: b.r,
            alpha: b.alpha,
            a: b.a,
            b: b.b,
            p: g.p,
            q: g.q,
            gamma: g.gamma,
            forecast_39_weeks: forecast,
            forecast_error: forecast / forecast0 - 1.0,
            p_alive_mae: alive.iter().zip(&alive0).map(|(x, y)| (x - y).abs()).sum::<f64>() / all.len() as f64,
            spend_mre: spend.iter().zip(&spend0).map(|(x, y)| (x / y - 1.0).abs()).sum::<f64>() / spend.len() as f64,
        });
    }
    Ok((forecast0, out))
}

/// Under DP: `runs` noised fits at each deployment size.
pub async fn run_dp(sizes: &[usize], runs: usize, epsilon: f64) -> Result<DpReport> {
    ensure!((1..=100).contains(&runs), "--runs {runs}: use 1 to 100");
    ensure!(epsilon.is_finite() && epsilon > 0.0, "--epsilon {epsilon}: use a finite ε above 0");
    let mut report = DpReport { epsilon, exact_forecast_39_weeks: Vec::new(), runs: Vec::new() };
    for &n in sizes {
        ensure!((3..=200).contains(&n), "--nodes {n}: use 3 to 200 nodes");
        let (forecast, runs) = dp_runs(n, runs, epsilon).await.with_context(|| format!("{n} nodes, under DP"))?;
        report.exact_forecast_39_weeks.push(forecast);
        report.runs.extend(runs);
    }
    Ok(report)
}

/// The DP report as text.
pub fn dp_table(r: &DpReport) -> String {
    let mut s = format!(
        "CLV fit under differential privacy on loopback (CDNOW; ε = {} per node for the whole fit, δ = 1e-6; {} \
         BG/NBD + {} Gamma-Gamma rounds planned, {} spare)\n",
        r.epsilon, DP_BG_NBD_ROUNDS, DP_GAMMA_GAMMA_ROUNDS, DP_RETRIES
    );
    s.push_str(&format!(
        "  {:>5} {:>3} {:>6} {:>9} {:>9} {:>6} {:>6} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8} {:>9} {:>8} {:>7}\n",
        "nodes",
        "run",
        "rounds",
        "total",
        "floor",
        "ratio",
        "ε",
        "r",
        "alpha",
        "a",
        "b",
        "p",
        "q",
        "gamma",
        "39-wk",
        "Δforecast",
        "P(alive)",
        "spend"
    ));
    for x in &r.runs {
        s.push_str(&format!(
            "  {:>5} {:>3} {:>6} {:>7.0}ms {:>7.0}ms {:>5.1}× {:>6.3} {:>8.4} {:>8.4} {:>7.4} {:>7.4} {:>7.3} {:>7.3} {:>8.3} \
             {:>8.0} {:>+8.1}% {:>8.4} {:>6.1}%\n",
            x.nodes,
            x.run,
            x.rounds_bg_nbd + x.rounds_gamma_gamma,
            x.total_ms,
            x.floor_ms,
            x.ratio,
            x.epsilon_spent,
            x.r,
            x.alpha,
            x.a,
            x.b,
            x.p,
            x.q,
            x.gamma,
            x.forecast_39_weeks,
            100.0 * x.forecast_error,
            x.p_alive_mae,
            100.0 * x.spend_mre
        ));
    }
    let exact: Vec<String> = r.exact_forecast_39_weeks.iter().map(|f| format!("{f:.0}")).collect();
    s.push_str(&format!(
        "  39-wk: expected repeat purchases in the 39 weeks after calibration (exact fit: {}); Δforecast: against \
         it; P(alive): mean |P(alive) − exact| per customer; spend: mean |expected spend / exact − 1| per repeat \
         customer; floor: the same noised fit without network or secure aggregation\n",
        exact.join(", ")
    ));
    s
}

/// Run the bench for each deployment size.
pub async fn run(sizes: &[usize]) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &n in sizes {
        ensure!((3..=200).contains(&n), "--nodes {n}: use 3 to 200 nodes");
        rows.push(row(n).await.with_context(|| format!("{n} nodes"))?);
    }
    Ok(rows)
}

/// The report as text.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "CLV fit to convergence on loopback (CDNOW, 23,570 customers dealt over the nodes; BG/NBD then Gamma-Gamma)\n",
    );
    s.push_str(&format!(
        "  {:>5}  {:>6}  {:>6}  {:>10}  {:>9}  {:>10}  {:>6}  {:>10}\n",
        "nodes", "BG/NBD", "GG", "total", "per round", "floor", "ratio", "start"
    ));
    for r in rows {
        s.push_str(&format!(
            "  {:>5}  {:>6}  {:>6}  {:>8.0}ms  {:>7.0}ms  {:>8.0}ms  {:>5.1}×  {:>8.0}ms\n",
            r.nodes,
            r.rounds_bg_nbd,
            r.rounds_gamma_gamma,
            r.total_ms,
            r.ms_per_round,
            r.floor_ms,
            r.ratio,
            r.cluster_start_ms
        ));
    }
    s.push_str(
        "  rounds: secure rounds per model; floor: the same fit with every node's sums and the same optimiser, no \
         network or secure aggregation, all cores (equal parameters bit for bit)\n",
    );
    s
}

#[cfg(test)]
mod tests {
    /// Three nodes: the fit converges over the wire, and the floor reproduces it bit for
    /// bit (the row is only made when it does).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_fit_over_three_nodes_converges_and_its_floor_agrees_bit_for_bit() {
        let rows = super::run(&[3]).await.unwrap();
        let r = &rows[0];
        assert_eq!((r.nodes, r.customers), (3, 23_570));
        assert!(r.rounds_bg_nbd > 5 && r.rounds_gamma_gamma > 5, "{r:?}");
        assert!(r.total_ms > 0.0 && r.floor_ms > 0.0 && (r.ratio - r.total_ms / r.floor_ms).abs() < 1e-9 * r.ratio);
        assert!(super::table(&rows).contains("floor"));
    }

    /// Under DP, one noised fit over three nodes beside the exact one: its rounds are the
    /// plan's, its charge within ε, its spend model values spend (q > 1), and its
    /// figures against the exact fit are finite.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_noised_fit_over_three_nodes_is_reported_beside_the_exact_fit() {
        let report = super::run_dp(&[3], 1, 4.0).await.unwrap();
        let r = &report.runs[0];
        assert_eq!(r.rounds_bg_nbd + r.rounds_gamma_gamma, 32, "{r:?}");
        assert!(r.epsilon_spent > 3.0 && r.epsilon_spent <= 4.0, "{r:?}");
        assert!(r.q > 1.0 && r.spend_mre.is_finite() && r.forecast_error.is_finite(), "{r:?}");
        assert!(report.exact_forecast_39_weeks[0] > 10_000.0, "{report:?}");
        assert!(super::dp_table(&report).contains("Δforecast"));
    }
}
