//! Issue 11, "What it must show" (the model's mathematics): on CDNOW split across 5
//! nodes, evenly and skewed, the federated Newton model — standardisation from summed
//! moments, Newton sums added with wrapping words exactly as secure aggregation adds
//! them, test AUC from summed score histograms — equals an independent exact solver on
//! the pooled data: coefficients within 1e-3, test AUC within 0.002.
//!
//! Calibration: purchases up to 1997-09-30 (the data starts 1997-01-01); churned = no
//! purchase 1997-10-01..=1998-06-30 (273 days). Train/test by the keyed hash split.
//! `cargo test -p fedcrm-model --test cdnow -- --nocapture` prints both models.

mod cdnow_data;

use std::time::Instant;

use fedcrm_model::eval::{self, EvalLayout};
use fedcrm_model::features::{Customer, FeatureSpec, Window, example};
use fedcrm_model::fedavg::{self, Batching, LocalTraining, Server, ServerOptimizer};
use fedcrm_model::fixed::wrapping_sum;
use fedcrm_model::logistic::{self, Examples, Logistic, Model, NewtonNext, NewtonTraining, Stopping};
use fedcrm_model::split::HoldoutSplit;
use fedcrm_model::standardise::{self, Standardiser, Z_CLIP};
use ndarray::{Array1, Array2};
use time::Date;
use time::macros::date;

const NODES: usize = 5;
const LAMBDA: f64 = 1e-4;
const BINS: usize = 1000;
const HOLDOUT_KEY: &[u8] = b"fedcrm/test/cdnow-holdout";
const TEST_FRACTION: f64 = 0.3;

/// One CDNOW customer as an example.
struct Row {
    first: Date,
    raw: Vec<f64>,
    churned: bool,
    test: bool,
}

fn rows(spec: &FeatureSpec) -> Vec<Row> {
    let window = Window { reference: date!(1997 - 09 - 30), horizon_days: 273 };
    let split = HoldoutSplit::new(HOLDOUT_KEY, TEST_FRACTION).unwrap();
    cdnow_data::load()
        .iter()
        .filter_map(|c| {
            let customer = Customer { txns: &c.txns, birthday: None, anniversary: None };
            let e = example(spec, &customer, &window)?;
            Some(Row {
                first: c.txns.iter().map(|t| t.day).min()?,
                raw: e.features,
                churned: e.churned,
                test: split.is_test(c.id.to_string().as_bytes()),
            })
        })
        .collect()
}

/// How customers are spread over the nodes: each row's node.
#[derive(Debug, Clone, Copy)]
enum Split {
    /// Round-robin by customer id.
    Even,
    /// Sorted by first purchase and cut into 10/15/20/25/30 % blocks.
    Skewed,
}

fn node_of(rows: &[Row], split: Split) -> Vec<usize> {
    match split {
        Split::Even => (0..rows.len()).map(|i| i % NODES).collect(),
        Split::Skewed => {
            let mut order: Vec<usize> = (0..rows.len()).collect();
            order.sort_by_key(|i| (rows[*i].first, *i)); // rows are in id order
            let cuts = [0.10, 0.25, 0.45, 0.70, 1.0].map(|c| (c * rows.len() as f64).round() as usize);
            let mut node = vec![0; rows.len()];
            for (rank, i) in order.into_iter().enumerate() {
                node[i] = cuts.iter().position(|c| rank < *c).unwrap();
            }
            node
        }
    }
}

/// The federated run's results.
struct Federated {
    weights: Vec<f64>,
    rounds: u32,
    auc: eval::Auc,
    sums: eval::EvalSums,
    node_sizes: Vec<usize>,
}

/// Each node's training and test examples, standardised with the global constants from
/// the sum of the nodes' moments (over their training customers).
struct Nodes {
    train: Vec<Examples>,
    test: Vec<Examples>,
    sizes: Vec<usize>,
}

fn nodes(spec: &FeatureSpec, rows: &[Row], split: Split) -> Nodes {
    let node = node_of(rows, split);
    let part = |k: usize, test: bool| -> Vec<&Row> {
        rows.iter().zip(&node).filter(|(r, n)| **n == k && r.test == test).map(|(r, _)| r).collect()
    };
    let moments: Vec<Vec<u64>> = (0..NODES)
        .map(|k| {
            let raw: Vec<Vec<f64>> = part(k, false).iter().map(|r| r.raw.clone()).collect();
            standardise::moments_contribution(spec, &raw).unwrap()
        })
        .collect();
    let m = standardise::decode_moments(spec, &wrapping_sum(&moments).unwrap()).unwrap();
    let st = Standardiser::from_moments(&m).unwrap();
    let examples = |k: usize, test: bool| -> Examples {
        let rs = part(k, test);
        let raw: Vec<Vec<f64>> = rs.iter().map(|r| r.raw.clone()).collect();
        Examples { z: st.matrix(&raw), y: rs.iter().map(|r| f64::from(u8::from(r.churned))).collect() }
    };
    Nodes {
        train: (0..NODES).map(|k| examples(k, false)).collect(),
        test: (0..NODES).map(|k| examples(k, true)).collect(),
        sizes: (0..NODES).map(|k| node.iter().filter(|n| **n == k).count()).collect(),
    }
}

/// Each node scores its held-out customers; the histograms and sums are added as words.
fn evaluate(model: &Logistic, test: &[Examples]) -> eval::EvalSums {
    let layout = EvalLayout { bins: BINS, segments: 0 };
    let words: Vec<Vec<u64>> = test
        .iter()
        .map(|ex| {
            let scores: Vec<f64> = ex.z.rows().into_iter().map(|z| model.predict(z)).collect();
            let churned: Vec<bool> = ex.y.iter().map(|y| *y > 0.5).collect();
            eval::eval_contribution(layout, &scores, &churned, &[]).unwrap()
        })
        .collect();
    eval::decode_eval(layout, &wrapping_sum(&words).unwrap()).unwrap()
}

/// What nodes and coordinator compute, with the sum over nodes as the only thing that
/// crosses between them.
fn federated(spec: &FeatureSpec, rows: &[Row], split: Split) -> Federated {
    let nodes = nodes(spec, rows, split);
    // Newton rounds: each node's sums at the round's weights, added as words.
    let mut training = NewtonTraining::new(spec.dim(), LAMBDA, Stopping::default());
    let trained = loop {
        let words: Vec<Vec<u64>> =
            nodes.train.iter().map(|ex| logistic::newton_contribution(training.weights(), ex).unwrap()).collect();
        match training.consume(&wrapping_sum(&words).unwrap()).unwrap() {
            NewtonNext::Round(next) => training = next,
            NewtonNext::Done(trained) => break trained,
        }
    };
    for r in &trained.history {
        println!("  {split:?} round {}: objective {:.10}, ‖∇F‖∞ {:.3e}", r.round, r.objective, r.gradient_norm);
    }
    println!("  {split:?} stopped: {:?}", trained.reason);
    let sums = evaluate(&trained.model, &nodes.test);
    Federated {
        weights: trained.model.weights,
        rounds: trained.history.len() as u32,
        auc: sums.auc().unwrap(),
        sums,
        node_sizes: nodes.sizes,
    }
}

/// The independent pooled solver: plain f64 over all training customers at once, its
/// own standardisation, IRLS with Gaussian elimination, the exact AUC by ranks. Nothing
/// from the crate but the feature values and the model's definition (λ, intercept
/// unpenalised, |z| ≤ 16).
struct Pooled {
    weights: Vec<f64>,
    test_auc: f64,
    iterations: usize,
}

fn pooled_design(rows: &[&Row], mean: &[f64], sd: &[f64]) -> (Array2<f64>, Array1<f64>) {
    let d = mean.len();
    let mut x = Array2::zeros((rows.len(), d + 1));
    for (i, r) in rows.iter().enumerate() {
        x[[i, 0]] = 1.0;
        for j in 0..d {
            x[[i, j + 1]] = ((r.raw[j] - mean[j]) / sd[j]).clamp(-Z_CLIP, Z_CLIP);
        }
    }
    (x, rows.iter().map(|r| if r.churned { 1.0 } else { 0.0 }).collect())
}

/// Solves `A x = b` by Gaussian elimination with partial pivoting.
fn gauss_solve(mut a: Array2<f64>, mut b: Array1<f64>) -> Array1<f64> {
    let n = b.len();
    for c in 0..n {
        let pivot = (c..n).max_by(|i, j| a[[*i, c]].abs().total_cmp(&a[[*j, c]].abs())).unwrap();
        for k in 0..n {
            a.swap([c, k], [pivot, k]);
        }
        b.swap(c, pivot);
        for r in c + 1..n {
            let f = a[[r, c]] / a[[c, c]];
            for k in c..n {
                a[[r, k]] -= f * a[[c, k]];
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = Array1::zeros(n);
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[[r, k]] * x[k]).sum();
        x[r] = (b[r] - s) / a[[r, r]];
    }
    x
}

fn pooled(rows: &[Row]) -> Pooled {
    let train: Vec<&Row> = rows.iter().filter(|r| !r.test).collect();
    let test: Vec<&Row> = rows.iter().filter(|r| r.test).collect();
    let d = train[0].raw.len();
    let n = train.len() as f64;
    let mean: Vec<f64> = (0..d).map(|j| train.iter().map(|r| r.raw[j]).sum::<f64>() / n).collect();
    let sd: Vec<f64> =
        (0..d).map(|j| (train.iter().map(|r| (r.raw[j] - mean[j]).powi(2)).sum::<f64>() / n).sqrt()).collect();
    let (x, y) = pooled_design(&train, &mean, &sd);
    let mut w = Array1::<f64>::zeros(d + 1);
    let mut iterations = 0;
    // IRLS, as the Newton correction: (XᵀSX/n + λP) δ = Xᵀ(p − y)/n + λPw, w ← w − δ.
    loop {
        iterations += 1;
        let eta = x.dot(&w);
        let p = eta.mapv(|e| 1.0 / (1.0 + (-e).exp()));
        let s = p.mapv(|q| q * (1.0 - q));
        let mut g = x.t().dot(&(&p - &y)) / n;
        let xs = &x * &s.view().insert_axis(ndarray::Axis(1));
        let mut h = x.t().dot(&xs) / n;
        for j in 1..=d {
            g[j] += LAMBDA * w[j];
            h[[j, j]] += LAMBDA;
        }
        let delta = gauss_solve(h, g);
        w -= &delta;
        if delta.iter().all(|v| v.abs() < 1e-13) || iterations == 100 {
            break;
        }
    }
    let (xt, yt) = pooled_design(&test, &mean, &sd);
    let scores: Vec<f64> = xt.dot(&w).iter().map(|e| 1.0 / (1.0 + (-e).exp())).collect();
    let labels: Vec<bool> = yt.iter().map(|v| *v > 0.5).collect();
    Pooled { weights: w.to_vec(), test_auc: mann_whitney_auc(&scores, &labels), iterations }
}

/// Exact AUC: the Mann–Whitney U over ranks, ties given their average rank.
fn mann_whitney_auc(scores: &[f64], positive: &[bool]) -> f64 {
    let mut v: Vec<(f64, bool)> = scores.iter().copied().zip(positive.iter().copied()).collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < v.len() {
        let j = i + v[i..].iter().take_while(|x| x.0.total_cmp(&v[i].0).is_eq()).count();
        rank_sum += (i + j + 1) as f64 / 2.0 * v[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    let p = positive.iter().filter(|x| **x).count() as f64;
    let q = positive.len() as f64 - p;
    (rank_sum - p * (p + 1.0) / 2.0) / (p * q)
}

/// The one comparison of a federated run with the pooled answer.
fn check(spec: &FeatureSpec, rows: &[Row], split: Split, expected: &Pooled) {
    let started = Instant::now();
    let fed = federated(spec, rows, split);
    let took = started.elapsed();
    let diff = fed.weights.iter().zip(&expected.weights).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    println!("{split:?} split, node sizes {:?}:", fed.node_sizes);
    println!("  {:<22} {:>14} {:>14}", "coefficient", "federated", "pooled");
    let names: Vec<String> = std::iter::once("intercept".to_string()).chain(spec.names()).collect();
    for ((name, f), p) in names.iter().zip(&fed.weights).zip(&expected.weights) {
        println!("  {name:<22} {f:>14.8} {p:>14.8}");
    }
    println!(
        "  max |Δcoef| = {diff:.3e}; Newton rounds = {}; test AUC federated {:.6} (binning bound {:.2e}) vs pooled exact {:.6}; \
         log-loss {:.4}, accuracy {:.4}; {:.0} ms",
        fed.rounds,
        fed.auc.auc,
        fed.auc.bin_error_bound,
        expected.test_auc,
        fed.sums.log_loss().unwrap(),
        fed.sums.accuracy().unwrap(),
        took.as_secs_f64() * 1e3
    );
    println!("  calibration (predicted decile: n, mean predicted, observed):");
    for (k, row) in fed.sums.calibration.iter().enumerate().filter(|(_, r)| r.count > 0) {
        println!(
            "    [{:.1}, {:.1}): {:>5} {:.3} {:.3}",
            k as f64 / 10.0,
            (k + 1) as f64 / 10.0,
            row.count,
            row.mean_predicted.unwrap(),
            row.observed_rate.unwrap()
        );
    }
    assert!(diff < 1e-3, "{split:?}: coefficients differ by {diff}");
    assert!(
        (fed.auc.auc - expected.test_auc).abs() < 0.002,
        "{split:?}: test AUC {} vs pooled {}",
        fed.auc.auc,
        expected.test_auc
    );
    // The binning bound holds against the pooled model's exact AUC too (the two models'
    // scores agree to ~1e-11, far inside a bin). It is loose here: most of CDNOW's
    // one-time buyers share one score, true ties the trapezoid rule counts exactly.
    assert!((fed.auc.auc - expected.test_auc).abs() <= fed.auc.bin_error_bound);
    assert!(fed.rounds <= 10, "{split:?}: {} Newton rounds", fed.rounds);
    assert_eq!(fed.sums.n as usize, rows.iter().filter(|r| r.test).count());
}

/// The full spec on CDNOW (no categories, no key dates): the summed moments show the
/// category shares and key-date features constant zero over all nodes, and dropping
/// them leaves exactly the reduced spec.
#[test]
fn the_full_spec_on_cdnow_drops_to_the_reduced_one() {
    let full = FeatureSpec::full();
    let rows = rows(&full);
    let words: Vec<Vec<u64>> = (0..NODES)
        .map(|k| {
            let raw: Vec<Vec<f64>> = rows.iter().skip(k).step_by(NODES).map(|r| r.raw.clone()).collect();
            standardise::moments_contribution(&full, &raw).unwrap()
        })
        .collect();
    let m = standardise::decode_moments(&full, &wrapping_sum(&words).unwrap()).unwrap();
    let (kept, st) = standardise::without_constant(&full, &Standardiser::from_moments(&m).unwrap());
    assert_eq!(kept, FeatureSpec::reduced());
    assert_eq!(st.mean.len(), 6);
}

#[test]
fn federated_newton_on_cdnow_equals_pooled_irls() {
    let started = Instant::now();
    let spec = FeatureSpec::reduced();
    let rows = rows(&spec);
    let test = rows.iter().filter(|r| r.test).count();
    let churned = rows.iter().filter(|r| r.churned).count();
    println!(
        "CDNOW: {} customers ({} train, {test} test), churn rate {:.3}; loaded in {:.0} ms",
        rows.len(),
        rows.len() - test,
        churned as f64 / rows.len() as f64,
        started.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(rows.len(), 23_570, "every CDNOW customer first bought in Q1 1997");
    let started = Instant::now();
    let expected = pooled(&rows);
    println!(
        "pooled IRLS: {} iterations, test AUC (Mann–Whitney) {:.6}, {:.0} ms",
        expected.iterations,
        expected.test_auc,
        started.elapsed().as_secs_f64() * 1e3
    );
    for split in [Split::Even, Split::Skewed] {
        check(&spec, &rows, split, &expected);
    }
}

/// FedAvg (mini-batches, two local epochs, FedAdam on the server) on the skewed split
/// gets close to the Newton optimum: its objective and test AUC are printed beside
/// Newton's. A sanity check of the optimizer path on real data, not an equality: FedAvg
/// with several local steps on skewed nodes is not centralized gradient descent.
#[test]
fn fedavg_on_cdnow_approaches_the_newton_optimum() {
    let started = Instant::now();
    let spec = FeatureSpec::reduced();
    let rows = rows(&spec);
    let nodes = nodes(&spec, &rows, Split::Skewed);
    let objective = |w: &[f64]| {
        let words: Vec<Vec<u64>> = nodes.train.iter().map(|ex| logistic::newton_contribution(w, ex).unwrap()).collect();
        let sums = logistic::decode_newton(spec.dim(), &wrapping_sum(&words).unwrap()).unwrap();
        logistic::newton_step(w, &sums, LAMBDA).unwrap().objective
    };
    let newton = federated(&spec, &rows, Split::Skewed);
    let cfg = LocalTraining {
        learning_rate: 0.5,
        epochs: 2,
        batching: Batching::MiniBatch { size: 256, seed: 7 },
        lambda: LAMBDA,
        max_update: 8.0,
    };
    let mut server =
        Server::new(ServerOptimizer::Adam { lr: 0.05, beta1: 0.9, beta2: 0.99, tau: 1e-3 }, spec.dim() + 1);
    let mut w = Logistic::zeros(spec.dim()).weights;
    let rounds = 60;
    for round in 0..rounds {
        let words: Vec<Vec<u64>> =
            nodes.train.iter().map(|ex| fedavg::local_update(&w, ex, &cfg, round).unwrap()).collect();
        w = server.apply(&w, &fedavg::decode_update(spec.dim(), &wrapping_sum(&words).unwrap()).unwrap()).unwrap();
    }
    let auc = evaluate(&Logistic { weights: w.clone() }, &nodes.test).auc().unwrap();
    let (f_avg, f_newton) = (objective(&w), objective(&newton.weights));
    println!(
        "FedAvg+FedAdam, {rounds} rounds: objective {f_avg:.6} (Newton {f_newton:.6}), test AUC {:.6} (Newton {:.6}); {:.0} ms",
        auc.auc,
        newton.auc.auc,
        started.elapsed().as_secs_f64() * 1e3
    );
    println!("  weights {w:.5?}");
    assert!(f_avg - f_newton < 2e-3, "FedAvg objective {f_avg} vs Newton {f_newton}");
    assert!((auc.auc - newton.auc.auc).abs() < 0.01);
}
