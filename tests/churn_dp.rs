//! Issue 11 under differential privacy, over mTLS: the churn model trained across 5
//! franchisees (CDNOW split evenly, round-robin) with every round noised by the
//! customer-level distributed discrete Gaussian (each customer's term clipped, the
//! node's sum rotated, rounded and noised before masking; `fedcrm_dp::vector`).
//!
//! - `dp_training_on_cdnow_trades_auc_for_epsilon_and_charges_each_node_its_plan`: the
//!   README's table — test ROC AUC at DP off and at ε = 1, 4 and 16 for the whole
//!   training (δ = 10⁻⁶, 5 Newton rounds): the federated AUC (from the noised score
//!   histograms) and the released model's exact AUC on the same held-out customers.
//!   Each node's own ledger holds one charge per round, within the plan's per-round
//!   cap, adding up to what the artifact's provenance states, within the target ε.
//! - `a_node_whose_budget_cannot_cover_the_plan_refuses_before_any_vector_leaves`: a
//!   coordinator that ignores budgets (a test hook) starts a training whose plan exceeds
//!   one node's monthly budget; that node refuses at the first round, naming the plan's
//!   charge and its remaining budget, sends nothing but the refusal, and is charged
//!   nothing; the others train without it.
//! - `under_dp_a_node_below_its_minimum_takes_part_noised_and_refuses_nothing`: no
//!   refusal and no rule on a count of its customers decides what a node sends under DP
//!   (attack reviews of issues 11 and 13).
//! - `hq_train_churn_under_dp_streams_its_rounds_and_records_the_charge`: the analyst's
//!   command (`--dp on --epsilon 8`, nodes requiring DP) end to end.
//!
//! Budget months are read from a fixed clock. `cargo test --test churn_dp -- --nocapture`
//! prints the table.

mod common;

use std::sync::Arc;

use fedcrm::harness::{CDNOW, Cluster, ClusterOptions, NodeSpec};
use fedcrm_audit::{Event, Record};
use fedcrm_coordinator::analyses::AnalysisRequest;
use fedcrm_coordinator::analyses::churn::ChurnRequest;
use fedcrm_coordinator::config::ReleaseRules;
use fedcrm_coordinator::round::Hooks;
use fedcrm_model::features::{FeatureSpec, Window};
use fedcrm_node::privacy::{DpMode, Privacy};
use time::macros::date;

use common::Fixed;

const REFERENCE: time::Date = date!(1997 - 09 - 30);
const HORIZON: u32 = 273;
/// 2026-11-15T12:00:00Z, by the injected clock.
const MID_NOVEMBER_MS: u64 = 1_794_744_000_000;

fn request(purpose: &str) -> AnalysisRequest {
    AnalysisRequest { reference_date: REFERENCE, dp: true, ..common::request(purpose) }
}

/// CDNOW has no categories or key dates: the six features it supports (under DP a
/// constant feature is not recognised as constant through the noise).
fn dp_request(epsilon: f64) -> ChurnRequest {
    ChurnRequest { spec: FeatureSpec::reduced(), ..ChurnRequest::newton_dp(HORIZON, epsilon) }
}

/// Five franchisees of five organisations; `dp` their policy's mode, `epsilon` their
/// monthly budget.
fn nodes(dp: DpMode, epsilon: f64) -> Vec<NodeSpec> {
    let mut nodes = common::cdnow_nodes(&[1; 5], true);
    for n in &mut nodes {
        n.policy.privacy = Privacy { dp, monthly_epsilon: Some(epsilon), ..Privacy::default() };
        n.policy.churn.min_examples = 1;
        n.policy.monthly_analysis_caps.insert("churn-model".into(), 10);
    }
    nodes
}

fn options(nodes: Vec<NodeSpec>) -> ClusterOptions {
    ClusterOptions {
        nodes,
        release: ReleaseRules { min_participants: 3, min_cohort: 0 },
        phase_timeout_seconds: 30,
        clock: Some(Arc::new(Fixed(MID_NOVEMBER_MS))),
        ..Default::default()
    }
}

fn node_records(cluster: &Cluster, node: &str) -> Vec<Record> {
    fedcrm_audit::log::read_records(&cluster.node_configs.iter().find(|c| c.name == node).unwrap().audit_dir).unwrap()
}

/// (analysis, ρ, ξ) of every charge in a node's own log.
fn own_charges(cluster: &Cluster, node: &str) -> Vec<(String, f64, f64)> {
    node_records(cluster, node)
        .into_iter()
        .filter_map(|r| match r.event {
            Event::PrivacyCharged { analysis, rho, xi, node, .. } if node.is_empty() => Some((analysis, rho, xi)),
            _ => None,
        })
        .collect()
}

/// The held-out customers' raw features and labels, pooled from the same CDNOW text.
fn held_out(spec: &FeatureSpec) -> Vec<(Vec<f64>, bool)> {
    common::cdnow_examples(spec, &Window { reference: REFERENCE, horizon_days: HORIZON })
        .into_iter()
        .filter(|e| e.test)
        .map(|e| (e.raw, e.churned))
        .collect()
}

/// The exact ROC AUC (Mann–Whitney, ties one half) of a released model on the pooled
/// held-out customers, scored with its own standardisation and weights.
fn exact_auc(m: &fedcrm_model::artifact::ChurnModel, rows: &[(Vec<f64>, bool)]) -> f64 {
    let names = FeatureSpec::reduced().names();
    let keep: Vec<usize> = m.spec.names().iter().map(|n| names.iter().position(|x| x == n).unwrap()).collect();
    let mut scored: Vec<(f64, bool)> = rows
        .iter()
        .map(|(raw, y)| {
            let x: Vec<f64> = keep.iter().map(|&j| raw[j]).collect();
            let z = m.standardiser.apply(&x);
            let eta = m.model.weights[0] + z.iter().zip(&m.model.weights[1..]).map(|(a, b)| a * b).sum::<f64>();
            (1.0 / (1.0 + (-eta).exp()), *y)
        })
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut below_neg, mut pairs, mut i) = (0.0, 0.0, 0);
    while i < scored.len() {
        let mut j = i;
        while j < scored.len() && scored[j].0.to_bits() == scored[i].0.to_bits() {
            j += 1;
        }
        let pos = scored[i..j].iter().filter(|x| x.1).count() as f64;
        pairs += pos * (below_neg + 0.5 * ((j - i) as f64 - pos));
        below_neg += (j - i) as f64 - pos;
        i = j;
    }
    let p = scored.iter().filter(|x| x.1).count() as f64;
    pairs / (p * (scored.len() as f64 - p))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dp_training_on_cdnow_trades_auc_for_epsilon_and_charges_each_node_its_plan() {
    common::logs();
    // Optional nodes take part in the exact training too; budgets far above the runs.
    let cluster = Cluster::start(options(nodes(DpMode::Optional, 1000.0))).await.unwrap();
    let rows = held_out(&FeatureSpec::reduced());
    let exact = ChurnRequest { spec: FeatureSpec::reduced(), ..ChurnRequest::newton(HORIZON) };
    let off = cluster
        .coordinator
        .run_churn(&AnalysisRequest { dp: false, ..request("churn, exact") }, exact, None)
        .await
        .unwrap()
        .release
        .model;
    assert!(off.provenance.dp.is_none());
    let mut table = vec![("off".to_string(), off.metrics.test_auc, exact_auc(&off, &rows), String::from("—"))];
    let mut charged_before = 0;
    for epsilon in [1.0, 4.0, 16.0] {
        let out =
            cluster.coordinator.run_churn(&request(&format!("churn, ε = {epsilon}")), dp_request(epsilon), None).await;
        let m = out.unwrap().release.model;
        let dp = m.provenance.dp.expect("a DP training records its charge");
        assert!(dp.epsilon <= epsilon && dp.epsilon > 0.5 * epsilon, "ε = {epsilon}: spent {dp:?}");
        // 1 moments + 5 Newton + 1 evaluation rounds ran, of a plan of 7 + 2 retries.
        assert_eq!(m.provenance.rounds.len(), 7, "ε = {epsilon}");
        let plan_rho = fedcrm_dp::accounting::rho_for_epsilon(epsilon, 1e-6).unwrap();
        for node in common::node_names(5) {
            let charges = own_charges(&cluster, &node);
            let this: Vec<&(String, f64, f64)> = charges[charged_before..].iter().collect();
            assert_eq!(this.len(), 7, "{node}: one charge per round");
            assert!(this.iter().all(|(a, _, _)| *a == m.provenance.analysis_id), "{node}");
            let rho: f64 = this.iter().map(|c| c.1).sum();
            assert!((rho - dp.rho).abs() <= 1e-9 * dp.rho, "{node}: ledger ρ = {rho}, provenance {}", dp.rho);
            // Each round at most its share of the plan, and (k as planned) about it.
            assert!(this.iter().all(|c| c.1 <= plan_rho / 9.0 * (1.0 + 1e-9) && c.1 > 0.9 * plan_rho / 9.0), "{node}");
        }
        charged_before += 7;
        table.push((format!("{epsilon}"), m.metrics.test_auc, exact_auc(&m, &rows), format!("{:.4}", dp.rho)));
    }
    println!("test ROC AUC on CDNOW, 5 nodes, Newton (5 rounds under DP), δ = 1e-6 per training");
    println!("  {:>8} {:>16} {:>16} {:>10}", "ε", "federated AUC", "exact AUC", "ρ spent");
    for (e, fed, ex, rho) in &table {
        println!("  {e:>8} {fed:>16.4} {ex:>16.4} {rho:>10}");
    }
    // DP off is the exact model (tests/churn.rs: within 0.002 of the pooled solver).
    assert!(table[0].2 > 0.76, "{table:?}");
    // At the largest ε the noised training keeps most of the model's skill.
    assert!(table[3].2 > 0.7 && table[3].1 > 0.65, "{table:?}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_budget_cannot_cover_the_plan_refuses_before_any_vector_leaves() {
    common::logs();
    let mut nodes = nodes(DpMode::Required, 100.0);
    nodes[1].policy.privacy.monthly_epsilon = Some(1.0);
    let hooks = Hooks { ignore_budgets: true, ..Hooks::default() };
    let cluster = Cluster::start_with_hooks(options(nodes), hooks).await.unwrap();
    // The others train without node-1: the analysis's population is its first round's.
    let out = cluster.coordinator.run_churn(&request("over node-1's budget"), dp_request(4.0), None).await.unwrap();
    let nodes = &out.release.model.provenance.nodes;
    assert!(nodes.len() == 4 && !nodes.contains(&"node-1".to_string()), "{nodes:?}");
    let why = common::refusals_when(&cluster, "node-1", |r| r.contains("whole churn-model analysis")).await;
    let refusal = why.iter().find(|r| r.contains("whole churn-model analysis")).unwrap_or_else(|| panic!("{why:?}"));
    assert!(
        refusal.contains("refuses before the analysis starts")
            && refusal.contains("privacy budget")
            && refusal.contains("of the 1 allowed"),
        "{refusal}"
    );
    assert!(out.exits.get("node-1").is_some_and(|e| e.contains("whole churn-model analysis")), "{:?}", out.exits);
    assert!(own_charges(&cluster, "node-1").is_empty(), "node-1 was charged nothing");
    // Nothing of any round but its refusal left node-1.
    let sent: Vec<String> = node_records(&cluster, "node-1")
        .into_iter()
        .filter_map(|r| match r.event {
            Event::Egress { round: Some(_), message, .. } => Some(message),
            _ => None,
        })
        .collect();
    assert!(!sent.is_empty() && sent.iter().all(|m| m == "refusal"), "{sent:?}");
    cluster.stop().await;
}

/// Attack review of issue 11: under DP a node's contribution is computed after its
/// charge, so a refusal there for too few customers would tell HQ, un-noised, whether
/// the node holds `min_examples` customers at a reference date HQ picks (a binary
/// search over dates finds one customer's first purchase). Attack review of issue 13
/// (M1): sending noised zeros instead would make the node's vector jump from nothing to
/// the sum over all its customers when one customer is added, far beyond the one
/// customer's term the round is charged for; so under DP the minimum does not apply at
/// all. node-1's minimum is above the customers it holds: it refuses nothing, is charged
/// every round like the others, and its customers are in the sums (noise aside).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_dp_a_node_below_its_minimum_takes_part_noised_and_refuses_nothing() {
    common::logs();
    let mut nodes = nodes(DpMode::Required, 100.0);
    nodes[1].policy.churn.min_examples = 1_000_000;
    let cluster = Cluster::start(options(nodes)).await.unwrap();
    let out =
        cluster.coordinator.run_churn(&request("node-1 below its minimum"), dp_request(16.0), None).await.unwrap();
    let names = &out.release.model.provenance.nodes;
    assert!(names.len() == 5 && names.contains(&"node-1".to_string()), "{names:?} {:?}", out.exits);
    assert!(common::refusals(&cluster, "node-1").is_empty(), "{:?}", common::refusals(&cluster, "node-1"));
    let (mine, other) = (own_charges(&cluster, "node-1"), own_charges(&cluster, "node-0"));
    assert_eq!(mine.len(), out.rounds as usize, "charged every round: {mine:?}");
    assert_eq!(mine.len(), other.len());
    // Every node's customers are in the sums, node-1's too: CDNOW's, noise aside.
    let all = cdnow_customers_at_reference();
    let trained = (out.release.model.metrics.train_examples + out.release.model.metrics.test_examples) as f64;
    println!("node-1 below its minimum under DP: {trained:.0} customers in the sums of {all} (noised counts)");
    assert!(trained > 0.97 * all as f64 && trained < 1.03 * all as f64, "{trained} of {all}");
    cluster.stop().await;
}

/// CDNOW's customers with a purchase on or before the reference date.
fn cdnow_customers_at_reference() -> usize {
    let limit: u32 = 19970930;
    let mut keys: Vec<&str> = CDNOW
        .lines()
        .filter_map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (c.len() == 4 && c[1].parse::<u32>().is_ok_and(|d| d <= limit)).then_some(c[0])
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys.len()
}

/// `fedcrm hq train churn --dp on --epsilon 8` over the analyst's mTLS API, nodes whose
/// policy requires DP (the default): the rounds stream as usual (moments, 5 Newton,
/// evaluation), and the registered model's provenance states the charge, within ε.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hq_train_churn_under_dp_streams_its_rounds_and_records_the_charge() {
    common::logs();
    let cluster = Cluster::start(options(nodes(DpMode::Required, 10.0))).await.unwrap();
    let mut hq = fedcrm::hq::AnalystClient::connect(&cluster.analyst).await.unwrap();
    let request = fedcrm_protocol::pb::TrainChurnRequest {
        reference_date: "1997-09-30".into(),
        horizon_days: HORIZON,
        purpose: "win-back planning under DP".into(),
        dp_off: false,
        mode: "newton".into(),
        max_rounds: 0,
        epsilon: 8.0,
    };
    let mut seen = Vec::new();
    let (trained, rounds) = hq.train_churn(request, |p| seen.push(p.phase.clone())).await.unwrap();
    assert_eq!(seen, ["moments", "newton", "newton", "newton", "newton", "newton", "evaluate"]);
    let view = fedcrm::models::TrainView::new(&trained, &rounds);
    let json = serde_json::to_value(&view).unwrap();
    let dp = &json["model"]["provenance"]["dp"];
    let epsilon = dp["epsilon"].as_f64().unwrap();
    assert!(epsilon > 4.0 && epsilon <= 8.0, "{dp}");
    assert_eq!(dp["delta"].as_f64(), Some(1e-6));
    println!("hq train churn --dp on --epsilon 8 (all 16 features): federated test AUC {:.4}", view.test_auc);
    assert!(view.test_auc > 0.6, "{}", view.test_auc);
    assert_eq!(view.nodes.len(), 5);
    cluster.stop().await;
}
