//! Issue 13, "What it must show", over mutual TLS: the CLV model fitted across 5 nodes by
//! secure aggregation — CDNOW split evenly (round-robin), and skewed so that one node
//! holds only one-time buyers (whose own maximum-likelihood estimate does not exist) —
//! equals the fit of the same likelihood on the pooled data (summed in plain f64 here,
//! from the file parsed apart from the nodes' reader) to at least 4 significant digits in
//! every BG/NBD and Gamma-Gamma parameter and log-likelihood. (The pooled fit by another
//! optimiser, Nelder-Mead, is `model/tests/clv.rs`.) Calibration end 1997-09-30, weeks.
//! The even split runs through the analyst's door (`hq train clv`); its model, published,
//! is applied by node-0 to its own customers (`node score`).
//! Under differential privacy (`hq train clv --dp on`, nodes requiring it), the fit
//! charges each node its plan, every round within its share, and lands near the exact
//! fit within what the noise allows.
//! `cargo test --test clv -- --nocapture` prints the fits and the 39-week forecast.

mod common;

use std::collections::BTreeMap;

use fedcrm::harness::{CDNOW, Cluster, NodeSpec};
use fedcrm_coordinator::analyses::AnalysisRequest;
use fedcrm_coordinator::analyses::clv::ClvRequest;
use fedcrm_model::clv::artifact::ClvModel;
use fedcrm_model::clv::fit::{Bfgs, Next, Stopping};
use fedcrm_model::clv::summary::{Summary, TimeUnit};
use fedcrm_model::clv::sums::{Likelihood, node_sums};
use fedcrm_model::clv::{bgnbd, gamma_gamma};
use time::macros::date;

/// CDNOW's rows by customer, in file order (the header dropped).
fn by_customer() -> BTreeMap<u32, Vec<&'static str>> {
    let mut m: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
    for line in CDNOW.lines() {
        if let Some(id) = line.split_whitespace().next().and_then(|f| f.parse().ok()) {
            m.entry(id).or_default().push(line);
        }
    }
    m
}

/// Each customer's calibration summary, computed here from the raw rows: distinct purchase
/// days up to 1997-09-30, same-day values summed; weeks from the first purchase.
fn summaries(customers: &BTreeMap<u32, Vec<&str>>) -> Vec<Summary> {
    let day = |s: &str| {
        let n: i32 = s.parse().unwrap();
        time::Date::from_calendar_date(
            n / 10_000,
            time::Month::try_from((n / 100 % 100) as u8).unwrap(),
            (n % 100) as u8,
        )
        .unwrap()
    };
    customers
        .values()
        .filter_map(|rows| {
            let mut days: BTreeMap<time::Date, f64> = BTreeMap::new();
            for r in rows {
                let f: Vec<&str> = r.split_whitespace().collect();
                *days.entry(day(f[1])).or_default() += f[3].parse::<f64>().unwrap();
            }
            let first = *days.keys().next()?;
            let cal: Vec<(&time::Date, &f64)> = days.iter().filter(|(d, _)| **d <= date!(1997 - 09 - 30)).collect();
            let weeks = |d: &time::Date| (*d - first).whole_days() as f64 / 7.0;
            let repeat = &cal[1..];
            Some(Summary {
                x: repeat.len() as u32,
                t_x: repeat.last().map_or(0.0, |(d, _)| weeks(d)),
                t: weeks(&date!(1997 - 09 - 30)),
                mean_repeat_value: if repeat.is_empty() {
                    0.0
                } else {
                    repeat.iter().map(|(_, v)| **v).sum::<f64>() / repeat.len() as f64
                },
            })
        })
        .collect()
}

/// The pooled fit: BFGS on the plain f64 sums over every customer.
fn pooled(which: Likelihood, all: &[Summary]) -> (Vec<f64>, f64) {
    let mut opt = Bfgs::new(vec![0.0; which.dims()], Stopping::default());
    loop {
        match opt.next() {
            Next::Evaluate(theta) => {
                let s = node_sums(which, &theta, all);
                let n = s.customers as f64;
                opt.tell(-s.log_likelihood / n, s.gradient.iter().map(|g| -g / n).collect()).unwrap();
            }
            Next::Done(o) => {
                assert!(o.reason.converged(), "{o:?}");
                let ll = node_sums(which, &o.theta, all).log_likelihood;
                return (o.theta.iter().map(|t| t.exp()).collect(), ll);
            }
        }
    }
}

/// Node texts: round robin, or node-0 with every one-time buyer and the others the rest.
fn nodes(customers: &BTreeMap<u32, Vec<&str>>, all: &[Summary], skewed: bool) -> Vec<NodeSpec> {
    let mut texts = vec![String::new(); 5];
    let mut repeat = 0;
    for (i, (rows, s)) in customers.values().zip(all).enumerate() {
        let k = match (skewed, s.x) {
            (false, _) => i % 5,
            (true, 0) => 0,
            (true, _) => {
                repeat += 1;
                1 + repeat % 4
            }
        };
        for r in rows {
            texts[k].push_str(r);
            texts[k].push('\n');
        }
    }
    texts.into_iter().enumerate().map(|(i, t)| NodeSpec::franchisee(&format!("node-{i}"), t)).collect()
}

/// The fit over `nodes`: through the analyst's door (`hq train clv`'s request and view,
/// whose JSON carries the parameters at the top level), or the coordinator's call.
async fn fit(nodes: Vec<NodeSpec>, label: &str, analyst: bool) -> (String, ClvModel) {
    let cluster = Cluster::start(common::model_options(nodes)).await.unwrap();
    let out = if analyst {
        let mut hq = fedcrm::hq::AnalystClient::connect(&cluster.analyst).await.unwrap();
        let (trained, rounds) = hq.train_clv(request_of(label), |_| {}).await.unwrap();
        let view = fedcrm::clv::ClvTrainView::new(&trained, &rounds).unwrap();
        print!("{}", fedcrm::clv::clv_train_text(&view));
        let json = serde_json::to_value(&view).unwrap();
        for (key, want) in [("r", view.model.bg_nbd.params.r), ("gamma", view.model.gamma_gamma.params.gamma)] {
            assert_eq!(json[key].as_f64(), Some(want), "--json {key}");
        }
        assert_eq!(json["log_likelihood"].as_f64(), Some(view.model.bg_nbd.log_likelihood));
        assert_eq!(rounds.len() as u32, trained.rounds, "a progress event per round");
        // Published, a node applies it to its own customers.
        let publisher = cluster.analyst.publisher.clone().unwrap();
        hq.publish(&view.model_id, &publisher).await.unwrap();
        let now = common::inside_validity(&std::fs::read_to_string(&publisher.cert).unwrap());
        node_scores_its_customers(&cluster, &view.model_id, &view.model, now).await;
        (view.model_id, view.model)
    } else {
        let request = AnalysisRequest { reference_date: date!(1997 - 09 - 30), ..common::request(label) };
        let out = cluster.coordinator.run_clv(&request, ClvRequest::new(TimeUnit::Weeks), None).await.unwrap();
        (out.release.model_id, out.release.model)
    };
    cluster.stop().await;
    out
}

/// `node score` with the CLV model on node-0, as of the calibration end: one row per
/// customer of node-0, each as `ClvModel::score` gives it from the customer's rows
/// (grouped here, not by the node's reader), most valuable first, in a 0600 file; the
/// summary's dormant count and the audit log's record (the model and the count only).
async fn node_scores_its_customers(cluster: &Cluster, id: &str, model: &ClvModel, now_unix: u64) {
    use fedcrm_node::score::{self, ScoreRequest};
    use std::os::unix::fs::PermissionsExt as _;
    let cfg = cluster.node_configs.iter().find(|c| c.name == "node-0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("value.csv");
    let as_of = date!(1997 - 09 - 30);
    let request = ScoreRequest { model_id: id.into(), out: out.clone(), as_of: Some(as_of), top: None, now_unix };
    let summary = score::run(cfg, &request).await.unwrap();
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    let mut by: BTreeMap<String, Vec<fedcrm_model::features::Txn>> = BTreeMap::new();
    for p in cfg.data.load().unwrap().purchases {
        let t = fedcrm_model::features::Txn { day: p.day, cents: p.amount_cents, quantity: p.quantity, category: None };
        by.entry(p.customer.clone()).or_default().push(t);
    }
    let settings = fedcrm_model::clv::artifact::ClvSettings::default();
    let want: BTreeMap<String, fedcrm_model::clv::artifact::ClvScore> =
        by.iter().filter_map(|(k, t)| Some((k.clone(), model.score(t, as_of, &settings)?.unwrap()))).collect();
    let mut reader = csv::Reader::from_path(&out).unwrap();
    assert_eq!(reader.headers().unwrap().iter().collect::<Vec<_>>(), score::CLV_CSV_HEADER);
    let rows: Vec<Vec<String>> = reader.records().map(|r| r.unwrap().iter().map(str::to_string).collect()).collect();
    assert_eq!(rows.len(), want.len());
    let mut last = f64::INFINITY;
    for row in &rows {
        let w = &want[&row[1]];
        let clv: f64 = row[6].parse().unwrap();
        assert!(clv <= last, "ranked by value");
        last = clv;
        assert_eq!(row[2], format!("{:.4}", w.p_alive));
        assert_eq!(row[3], if w.dormant { "yes" } else { "no" });
        assert_eq!(row[6], format!("{:.2}", w.clv));
    }
    let totals = summary.clv.clone().unwrap();
    assert_eq!(totals.dormant, want.values().filter(|w| w.dormant).count() as u64);
    assert!(totals.dormant > 0 && totals.dormant < want.len() as u64, "{totals:?}");
    println!(
        "node-0 scored {} customers as of 1997-09-30: {} dormant, {:.0} purchases expected in 90 days, value {:.0}",
        summary.customers, totals.dormant, totals.expected_purchases, totals.total_clv
    );
}

fn request_of(label: &str) -> fedcrm_protocol::pb::TrainClvRequest {
    fedcrm_protocol::pb::TrainClvRequest {
        calibration_end: "1997-09-30".into(),
        time_unit: "weeks".into(),
        purpose: label.into(),
        dp_off: true,
        ..Default::default()
    }
}

fn same(a: f64, b: f64) -> bool {
    (a - b).abs() <= 5e-5 * b.abs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clv_model_fitted_across_nodes_equals_the_pooled_fit_and_each_node_values_its_own_customers_with_it() {
    let customers = by_customer();
    let all = summaries(&customers);
    assert_eq!(all.len(), 23_570);
    let (bg, bg_ll) = pooled(Likelihood::BgNbd, &all);
    let (gg, gg_ll) = pooled(Likelihood::GammaGamma, &all);
    println!("pooled: BG/NBD {bg:.6?} (ln L {bg_ll:.4}), Gamma-Gamma {gg:.6?} (ln L {gg_ll:.4})");
    for skewed in [false, true] {
        let specs = nodes(&customers, &all, skewed);
        let label = if skewed { "CLV, skewed: node-0 holds the one-time buyers" } else { "CLV, even split" };
        let (model_id, model) = fit(specs, label, !skewed).await;
        let (b, g) = (&model.bg_nbd, &model.gamma_gamma);
        println!(
            "{label}: {} BG/NBD r {:.6} alpha {:.6} a {:.6} b {:.6} (ln L {:.4}, {} rounds); Gamma-Gamma p {:.6} q \
             {:.6} gamma {:.6} (ln L {:.4}, {} rounds)",
            model_id,
            b.params.r,
            b.params.alpha,
            b.params.a,
            b.params.b,
            b.log_likelihood,
            b.evaluations,
            g.params.p,
            g.params.q,
            g.params.gamma,
            g.log_likelihood,
            g.evaluations
        );
        assert_eq!(model_id, "clv-v1");
        for (got, want) in [b.params.r, b.params.alpha, b.params.a, b.params.b].iter().zip(&bg) {
            assert!(same(*got, *want), "BG/NBD {got} vs pooled {want}");
        }
        for (got, want) in [g.params.p, g.params.q, g.params.gamma].iter().zip(&gg) {
            assert!(same(*got, *want), "Gamma-Gamma {got} vs pooled {want}");
        }
        assert!(same(b.log_likelihood, bg_ll) && same(g.log_likelihood, gg_ll), "{b:?} {g:?}");
        assert_eq!((b.customers, g.customers), (23_570, 9_450));
        assert_eq!(model.provenance.nodes.len(), 5);
        // The 39 weeks after calibration: expected repeat purchases beside the observed.
        let p = &b.params;
        let expected: f64 = all.iter().map(|c| bgnbd::expected_purchases(p, c, 39.0).unwrap()).sum();
        let spend: f64 =
            all.iter().filter(|c| c.x > 0).map(|c| gamma_gamma::expected_spend(&g.params, c).unwrap()).sum::<f64>()
                / 9_450.0;
        println!("  expected repeat purchases 1997-10-01..=1998-06-30: {expected:.0}; mean expected spend {spend:.2}");
    }
}

/// Attack review of issue 13, H1: HQ asks for a cohort (first purchases in March 1997) in
/// which every node has enough customers for BG/NBD but few with a repeat purchase, so
/// that the Gamma-Gamma rounds would sum a handful of customers' spend. Each node counts
/// its minimum over the customers the round's likelihood sums and, below it, sends zeros
/// in those rounds: no customer's spend enters a sum, the coordinator finds nobody in
/// the likelihood, and no model is registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cohort_whose_spend_model_would_sum_a_few_customers_is_refused_by_every_node() {
    let customers = by_customer();
    let all = summaries(&customers);
    let mut specs = nodes(&customers, &all, false);
    // Per node (round robin), March's first-time customers and those of them who came back.
    let (mut cohort, mut repeat) = ([0u64; 5], [0u64; 5]);
    for (i, (rows, s)) in customers.values().zip(&all).enumerate() {
        let first = rows.iter().filter_map(|r| r.split_whitespace().nth(1)).min().unwrap();
        if first.starts_with("199703") {
            cohort[i % 5] += 1;
            repeat[i % 5] += u64::from(s.x > 0 && s.mean_repeat_value > 0.0);
        }
    }
    let min = repeat.iter().max().unwrap() + 1;
    assert!(cohort.iter().all(|&c| c >= min), "March {cohort:?}, repeat {repeat:?}");
    println!("March 1997 per node: {cohort:?} customers, {repeat:?} repeat; min_customers = {min}");
    for s in &mut specs {
        s.policy.clv.min_customers = min;
    }
    let cluster = Cluster::start(common::model_options(specs)).await.unwrap();
    let mut hq = fedcrm::hq::AnalystClient::connect(&cluster.analyst).await.unwrap();
    let request = fedcrm_protocol::pb::TrainClvRequest {
        first_purchase_from: "1997-03-01".into(),
        first_purchase_to: "1997-03-31".into(),
        ..request_of("CLV of the March cohort")
    };
    let e = hq.train_clv(request, |_| {}).await.unwrap_err().to_string();
    assert!(e.contains("no customer of any node is in the gamma-gamma likelihood"), "{e}");
    assert!(cluster.coordinator.models.list().unwrap().is_empty(), "no model was registered");
    cluster.stop().await;
}

/// CDNOW's exact fit (this file's first test checks the federated fit equals it): r, α,
/// a, b and p, q, γ.
const EXACT_BG_NBD: [f64; 4] = [0.251624, 4.788943, 0.723434, 2.161088];
const EXACT_GAMMA_GAMMA: [f64; 3] = [6.275359, 3.624450, 14.983687];

/// `fedcrm hq train clv --dp on --epsilon 4` over 5 franchisees of CDNOW (even split)
/// whose policy requires DP: every round is noised, each customer's terms clamped to the
/// stated bounds on the node; each node's own ledger holds one charge per round run, each
/// within the plan's share (ε = 4 over 20 + 12 + 2 rounds), adding up to what the
/// artifact's provenance states. The noised fit lands near the exact one: its BG/NBD
/// log-parameters within 1 of the exact, its customer count within 1 % of 23,570, and
/// where it matters — the 39-week forecast within 30 %, each customer's P(alive) within
/// 0.08 on average, each repeat customer's expected spend within 30 % on average (about
/// 3× the worst of the runs of `fedcrm bench clv --dp` recorded in the README, "CLV under
/// differential privacy").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_dp_the_clv_fit_charges_each_node_its_plan_and_lands_near_the_exact_fit() {
    use fedcrm_audit::Event;
    use fedcrm_node::privacy::{DpMode, Privacy};
    let customers = by_customer();
    let all = summaries(&customers);
    let mut specs = nodes(&customers, &all, false);
    for s in &mut specs {
        s.policy.privacy = Privacy { dp: DpMode::Required, monthly_epsilon: Some(8.0), ..Privacy::default() };
    }
    // 2026-11-15T12:00:00Z, by the injected clock: budget months never read the calendar.
    let clock = std::sync::Arc::new(common::Fixed(1_794_744_000_000));
    let cluster =
        Cluster::start(fedcrm::harness::ClusterOptions { clock: Some(clock), ..common::model_options(specs) })
            .await
            .unwrap();
    let mut hq = fedcrm::hq::AnalystClient::connect(&cluster.analyst).await.unwrap();
    let request = fedcrm_protocol::pb::TrainClvRequest {
        dp_off: false,
        epsilon: 4.0,
        ..request_of("CLV under differential privacy")
    };
    let (trained, rounds) = hq.train_clv(request, |_| {}).await.unwrap();
    let view = fedcrm::clv::ClvTrainView::new(&trained, &rounds).unwrap();
    let text = fedcrm::clv::clv_train_text(&view);
    print!("{text}");
    assert!(text.contains("differential privacy: every round noised"), "{text}");
    let (b, g) = (&view.model.bg_nbd, &view.model.gamma_gamma);
    let dp = view.model.provenance.dp.expect("a DP fit records its charge");
    assert!(dp.epsilon <= 4.0 && dp.epsilon > 3.0, "{dp:?}");
    // 20 BG/NBD and 12 Gamma-Gamma rounds at most, of a plan of 34 with the retries.
    let run = b.evaluations + g.evaluations;
    assert!(run <= 32 && trained.rounds == run, "{run} {}", trained.rounds);
    let share = fedcrm_dp::accounting::rho_for_epsilon(4.0, 1e-6).unwrap() / 34.0;
    for node in common::node_names(5) {
        let dir = &cluster.node_configs.iter().find(|c| c.name == node).unwrap().audit_dir;
        let charges: Vec<f64> = fedcrm_audit::log::read_records(dir)
            .unwrap()
            .into_iter()
            .filter_map(|r| match r.event {
                Event::PrivacyCharged { rho, node, .. } if node.is_empty() => Some(rho),
                _ => None,
            })
            .collect();
        assert_eq!(charges.len() as u32, run, "{node}: one charge per round");
        assert!(charges.iter().all(|c| *c <= share * (1.0 + 1e-9) && *c > 0.9 * share), "{node}: {charges:?}");
        let rho: f64 = charges.iter().sum();
        assert!((rho - dp.rho).abs() <= 1e-9 * dp.rho, "{node}: ledger ρ = {rho}, provenance {}", dp.rho);
    }
    let got = [b.params.r, b.params.alpha, b.params.a, b.params.b];
    let errors: Vec<f64> = got.iter().zip(EXACT_BG_NBD).map(|(x, e)| (x / e).ln()).collect();
    let gg = [g.params.p, g.params.q, g.params.gamma];
    let gg_errors: Vec<f64> = gg.iter().zip(EXACT_GAMMA_GAMMA).map(|(x, e)| (x / e).ln()).collect();
    println!("ln(DP / exact): BG/NBD {errors:+.3?}, Gamma-Gamma {gg_errors:+.3?}; ε spent {:.3}", dp.epsilon);
    assert!(errors.iter().all(|e| e.abs() < 1.0), "{errors:?}");
    // Where it matters, against the exact model on the same customers: the 39-week
    // forecast, each customer's P(alive), each repeat customer's expected spend (the
    // spend model is fitted with q > 1 under DP, so it always values spend).
    let exact_bg = bgnbd::Params { r: EXACT_BG_NBD[0], alpha: EXACT_BG_NBD[1], a: EXACT_BG_NBD[2], b: EXACT_BG_NBD[3] };
    let exact_gg =
        gamma_gamma::Params { p: EXACT_GAMMA_GAMMA[0], q: EXACT_GAMMA_GAMMA[1], gamma: EXACT_GAMMA_GAMMA[2] };
    let forecast =
        |p: &bgnbd::Params| -> f64 { all.iter().map(|c| bgnbd::expected_purchases(p, c, 39.0).unwrap()).sum() };
    let forecast_error = forecast(&b.params) / forecast(&exact_bg) - 1.0;
    let p_alive_mae =
        all.iter().map(|c| (bgnbd::p_alive(&b.params, c) - bgnbd::p_alive(&exact_bg, c)).abs()).sum::<f64>()
            / all.len() as f64;
    assert!(g.params.q > 1.0, "{:?}", g.params);
    let repeat: Vec<&Summary> = all.iter().filter(|c| c.x > 0).collect();
    let spend_mre = repeat
        .iter()
        .map(|c| {
            (gamma_gamma::expected_spend(&g.params, c).unwrap() / gamma_gamma::expected_spend(&exact_gg, c).unwrap()
                - 1.0)
                .abs()
        })
        .sum::<f64>()
        / repeat.len() as f64;
    println!(
        "39-week forecast {:+.1} % off the exact model's, P(alive) off by {p_alive_mae:.4} on average, expected spend \
         by {:.1} %",
        100.0 * forecast_error,
        100.0 * spend_mre
    );
    assert!(
        forecast_error.abs() < 0.3 && p_alive_mae < 0.08 && spend_mre < 0.3,
        "{forecast_error} {p_alive_mae} {spend_mre}"
    );
    assert!(b.customers.abs_diff(23_570) < 236, "noised count {}", b.customers);
    cluster.stop().await;
}
