//! Issue 11, "What it must show": the churn model trained across 5 nodes over mutual
//! TLS — CDNOW split evenly (round-robin) and skewed (nodes ordered by first purchase,
//! 1:2:3:4:5), DP off — equals an independent exact solver on the pooled data:
//! coefficients within 1e-3 and test ROC AUC within 0.002. The pooled side here shares
//! only the feature definitions with the nodes (`fedcrm_model::features`); its
//! standardisation, Newton/IRLS iterations, linear solve and AUC (Mann–Whitney over
//! sorted scores) are written in this file.
//!
//! Calibration: purchases up to 1997-09-30; churned = no purchase 1997-10-01..=1998-06-30.
//! `cargo test --test churn -- --nocapture` prints both models.

// Index loops: the pooled solver's linear algebra reads as the formulas do.
#![allow(clippy::needless_range_loop)]

mod common;

use fedcrm::harness::{CDNOW, Cluster, NodeSpec, split_cdnow};
use fedcrm_coordinator::analyses::AnalysisRequest;
use fedcrm_coordinator::analyses::churn::ChurnRequest;
use fedcrm_model::features::{FeatureSpec, Window};
use time::macros::date;

const REFERENCE: time::Date = date!(1997 - 09 - 30);
const HORIZON: u32 = 273;
const LAMBDA: f64 = 1e-4;

/// One pooled example (tests/common: parsed apart from the node's reader).
type Row = common::CdnowExample;

/// The pooled examples, from the same CDNOW text the nodes were given.
fn pooled(spec: &FeatureSpec) -> Vec<Row> {
    common::cdnow_examples(spec, &Window { reference: REFERENCE, horizon_days: HORIZON })
}

fn sigmoid(t: f64) -> f64 {
    1.0 / (1.0 + (-t).exp())
}

/// Solve A x = b by Gaussian elimination with partial pivoting (A small, dense).
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for c in 0..n {
        let p = (c..n).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs())).unwrap();
        a.swap(c, p);
        b.swap(c, p);
        for r in c + 1..n {
            let f = a[r][c] / a[c][c];
            for k in c..n {
                a[r][k] -= f * a[c][k];
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[r][k] * x[k]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    x
}

/// The pooled model: standardised by the training examples' population mean and sd
/// (constant features dropped), then IRLS on F(w) = mean log-loss + λ/2·‖w₁..‖² (the
/// intercept unpenalised) to a gradient below 1e-12. Returns the kept feature names'
/// indices, the weights, and the test examples' scores and labels.
fn pooled_model(rows: &[Row]) -> (Vec<usize>, Vec<f64>, Vec<(f64, bool)>) {
    let train: Vec<&Row> = rows.iter().filter(|r| !r.test).collect();
    let d = train[0].raw.len();
    let n = train.len() as f64;
    let mean: Vec<f64> = (0..d).map(|j| train.iter().map(|r| r.raw[j]).sum::<f64>() / n).collect();
    let sd: Vec<f64> =
        (0..d).map(|j| (train.iter().map(|r| (r.raw[j] - mean[j]).powi(2)).sum::<f64>() / n).sqrt()).collect();
    let keep: Vec<usize> = (0..d).filter(|&j| sd[j] > 1e-6 * mean[j].abs().max(1.0)).collect();
    let x = |r: &Row| -> Vec<f64> {
        std::iter::once(1.0).chain(keep.iter().map(|&j| ((r.raw[j] - mean[j]) / sd[j]).clamp(-16.0, 16.0))).collect()
    };
    let p = keep.len() + 1;
    let xs: Vec<(Vec<f64>, f64)> = train.iter().map(|r| (x(r), f64::from(u8::from(r.churned)))).collect();
    let mut w = vec![0.0; p];
    for _ in 0..50 {
        let mut g = vec![0.0; p];
        let mut h = vec![vec![0.0; p]; p];
        for (xi, y) in &xs {
            let mu = sigmoid(xi.iter().zip(&w).map(|(a, b)| a * b).sum());
            for a in 0..p {
                g[a] += (mu - y) * xi[a] / n;
                for b in 0..p {
                    h[a][b] += mu * (1.0 - mu) * xi[a] * xi[b] / n;
                }
            }
        }
        for a in 1..p {
            g[a] += LAMBDA * w[a];
            h[a][a] += LAMBDA;
        }
        let step = solve(h, g.clone());
        for a in 0..p {
            w[a] -= step[a];
        }
        if g.iter().all(|v| v.abs() < 1e-12) {
            break;
        }
    }
    let scored = rows
        .iter()
        .filter(|r| r.test)
        .map(|r| (sigmoid(x(r).iter().zip(&w).map(|(a, b)| a * b).sum()), r.churned))
        .collect();
    (keep, w, scored)
}

/// Exact ROC AUC (Mann–Whitney, ties counted one half) over sorted scores.
fn exact_auc(scored: &[(f64, bool)]) -> f64 {
    let mut s = scored.to_vec();
    s.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut below_neg, mut pairs, mut i) = (0.0, 0.0, 0);
    while i < s.len() {
        let mut j = i;
        while j < s.len() && s[j].0.to_bits() == s[i].0.to_bits() {
            j += 1;
        }
        let pos = s[i..j].iter().filter(|x| x.1).count() as f64;
        let neg = (j - i) as f64 - pos;
        pairs += pos * (below_neg + 0.5 * neg);
        below_neg += neg;
        i = j;
    }
    let p = s.iter().filter(|x| x.1).count() as f64;
    pairs / (p * (s.len() as f64 - p))
}

fn request(purpose: &str) -> AnalysisRequest {
    AnalysisRequest { reference_date: REFERENCE, ..common::request(purpose) }
}

async fn train(nodes: Vec<NodeSpec>, label: &str) -> fedcrm_coordinator::analyses::churn::ChurnRelease {
    let cluster = Cluster::start(common::model_options(nodes)).await.unwrap();
    let out = cluster.coordinator.run_churn(&request(label), ChurnRequest::newton(HORIZON), None).await.unwrap();
    assert_eq!(out.release.model.provenance.nodes.len(), 5, "{:?}", out.exits);
    // Registered, unpublished, under a versioned id.
    assert_eq!(out.release.model_id, "churn-v1");
    let listed = cluster.coordinator.models.list().unwrap();
    assert_eq!((listed.len(), listed[0].published), (1, false));
    out.release
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_newton_on_cdnow_equals_the_pooled_solver_for_even_and_skewed_splits() {
    common::logs();
    let spec = FeatureSpec::full();
    let rows = pooled(&spec);
    let (keep, w_pooled, scored) = pooled_model(&rows);
    let auc_pooled = exact_auc(&scored);
    let names: Vec<String> = spec.names();
    println!("pooled: {} examples, test AUC {auc_pooled:.6}", rows.len());
    for (label, weights, interleave) in [("even", vec![1; 5], true), ("skewed", vec![1, 2, 3, 4, 5], false)] {
        let nodes: Vec<NodeSpec> = split_cdnow(CDNOW, &weights, interleave)
            .into_iter()
            .enumerate()
            .map(|(i, data)| {
                let mut n = NodeSpec::franchisee(&format!("node-{i}"), data);
                n.policy.churn.min_examples = 1;
                n
            })
            .collect();
        let released = train(nodes, &format!("churn {label}")).await;
        let m = &released.model;
        assert_eq!(m.spec.names(), keep.iter().map(|&j| names[j].clone()).collect::<Vec<_>>(), "{label}: features");
        let w_fed = &m.model.weights;
        let max_diff = w_fed.iter().zip(&w_pooled).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        println!("{label}: federated Newton in {} rounds ({:?})", m.history.len(), m.stop_reason);
        println!("  {:<24} {:>14} {:>14}", "coefficient", "federated", "pooled");
        for (i, (a, b)) in w_fed.iter().zip(&w_pooled).enumerate() {
            let name = if i == 0 { "intercept".to_string() } else { m.spec.names()[i - 1].clone() };
            println!("  {name:<24} {a:>14.8} {b:>14.8}");
        }
        println!(
            "  test AUC federated {:.6} (binning bound {:.2e}) vs pooled exact {auc_pooled:.6}; max |Δcoef| {max_diff:.2e}",
            m.metrics.test_auc, m.metrics.test_auc_bound
        );
        assert!(max_diff < 1e-3, "{label}: coefficients differ by {max_diff}");
        assert!((m.metrics.test_auc - auc_pooled).abs() < 0.002, "{label}: AUC {} vs {auc_pooled}", m.metrics.test_auc);
        assert_eq!(m.metrics.test_examples, scored.len() as u64, "{label}: held-out customers");
        assert!(m.history.len() <= 10, "{label}: {} Newton rounds", m.history.len());
    }
}

/// `fedcrm hq train churn` over the analyst's mTLS API: a progress event per round
/// (moments, Newton rounds, evaluation), then the registered model with the federated
/// test AUC in the JSON view; FedAvg under `--dp on` is refused up front, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hq_train_churn_streams_its_rounds_and_registers_the_model() {
    common::logs();
    let nodes: Vec<NodeSpec> = split_cdnow(CDNOW, &[1; 4], true)
        .into_iter()
        .enumerate()
        .map(|(i, data)| NodeSpec::franchisee(&format!("node-{i}"), data))
        .collect();
    let cluster = Cluster::start(common::model_options(nodes)).await.unwrap();
    let mut hq = fedcrm::hq::AnalystClient::connect(&cluster.analyst).await.unwrap();
    let request = |dp_off: bool| fedcrm_protocol::pb::TrainChurnRequest {
        reference_date: "1997-09-30".into(),
        horizon_days: HORIZON,
        purpose: "win-back planning".into(),
        dp_off,
        mode: "newton".into(),
        max_rounds: 0,
        epsilon: 0.0,
    };
    // FedAvg under DP is refused up front, saying to train with Newton.
    let fedavg = fedcrm_protocol::pb::TrainChurnRequest { mode: "fedavg".into(), ..request(false) };
    let err = hq.train_churn(fedavg, |_| {}).await.unwrap_err().to_string();
    assert!(err.contains("not available in this version") && err.contains("--mode newton"), "{err}");

    let mut seen = Vec::new();
    let (trained, rounds) = hq.train_churn(request(true), |p| seen.push(p.phase.clone())).await.unwrap();
    let view = fedcrm::models::TrainView::new(&trained, &rounds);
    assert_eq!(seen.first().map(String::as_str), Some("moments"));
    assert_eq!(seen.last().map(String::as_str), Some("evaluate"));
    assert!(seen[1..seen.len() - 1].iter().all(|p| p == "newton") && seen.len() >= 4, "{seen:?}");
    assert_eq!(view.rounds as usize, seen.len());
    let json = serde_json::to_value(&view).unwrap();
    assert_eq!(json["model_id"], "churn-v1");
    let auc = json["test_auc"].as_f64().unwrap();
    assert!(auc > 0.7 && auc < 0.85, "{auc}");
    assert_eq!(view.nodes.len(), 4);
    let text = fedcrm::models::train_text(&view);
    assert!(text.contains("log1p_recency_days") && text.contains("fedcrm hq publish churn-v1"), "{text}");
    let listed = fedcrm::models::ModelsView::new(&hq.models().await.unwrap());
    assert_eq!(listed.models.len(), 1);
    assert_eq!(listed.models[0].metrics["test_auc"].as_f64(), Some(auc));
}
