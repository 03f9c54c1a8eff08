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

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fedcrm_coordinator::analyses::AnalysisRequest;
use fedcrm_coordinator::analyses::clv::ClvRequest;
use fedcrm_coordinator::config::ReleaseRules;
use fedcrm_model::clv::fit::{Bfgs, Next};
use fedcrm_model::clv::summary::{Calibration, Summary, TimeUnit};
use fedcrm_model::clv::sums::{Evaluation, Likelihood, node_sums};
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

async fn row(n: usize) -> Result<Row> {
    let specs: Vec<NodeSpec> = split_cdnow(CDNOW, &vec![1; n], true)
        .into_iter()
        .enumerate()
        .map(|(i, data)| NodeSpec::franchisee(&format!("node-{i:02}"), data))
        .collect();
    let started = Instant::now();
    let cluster = Cluster::start(ClusterOptions {
        nodes: specs.clone(),
        release: ReleaseRules { min_participants: 3, min_cohort: 0 },
        phase_timeout_seconds: 60,
        ..Default::default()
    })
    .await?;
    let cluster_start_ms = ms(started.elapsed());
    let analysis = AnalysisRequest {
        reference_date: CALIBRATION_END,
        purpose: "bench: CLV fit".into(),
        requested_by: "bench".into(),
        requested_by_organisation: "HQ".into(),
        dp: false,
    };
    let request = ClvRequest::new(TimeUnit::Weeks);
    let t = Instant::now();
    let done = cluster.coordinator.run_clv(&analysis, request, None).await;
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
}
