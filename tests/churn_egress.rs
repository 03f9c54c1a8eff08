//! Issue 11, "What it must show": churn training over mutual TLS between the
//! coordinator and 4 franchisee nodes of distinct organisations on the synthetic
//! jewellery data (`tests/data/jewellery`), with every byte each node sent captured on
//! the wire: no payload contains a customer key, a phone number (in any of the data's
//! formattings, or its digits alone) or a customer's score, and the payload sizes do not
//! grow with the number of customers — the same training over every node's data twice
//! over (each customer duplicated under a new key) sends exactly as many messages of
//! exactly the same sizes.
//!
//! And the fault the issue names: a node loses its connection in round 3 after its
//! masked vector left it (before it arrived), and comes back; round 3 is not unmasked
//! but retried over the whole population with fresh keys, the training completes with
//! exactly the no-drop run's model, which HQ publishes and the node then applies to its
//! own customers, writing the ranked list on the node.

mod common;

use std::collections::BTreeMap;

use std::sync::atomic::Ordering;

use fedcrm::harness::{Cluster, ClusterOptions, NodeSpec};
use fedcrm::hq::AnalystClient;
use fedcrm_coordinator::analyses::AnalysisRequest;
use fedcrm_coordinator::analyses::churn::ChurnRequest;
use fedcrm_coordinator::config::ReleaseRules;
use fedcrm_node::data::Format;
use fedcrm_node::egress::read_log;
use fedcrm_node::score::{self, ScoreRequest};
use fedcrm_node::session::{DropAt, Faults};
use fedcrm_protocol::pb;
use prost::Message;
use time::macros::date;

const NODES: [(&str, &str); 4] =
    [("fr-hangzhou", "杭州金悦珠宝有限公司"), ("fr-suzhou", "苏州"), ("fr-chengdu", "成都"), ("fr-wuhan", "武汉")];

fn csv(node: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/data/jewellery/{node}/purchases.csv", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
}

/// The same rows again under new customer keys (`X` + key), phones kept.
fn doubled(text: &str) -> String {
    let mut out = String::from(text);
    for line in text.lines().skip(1) {
        out.push('X');
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn nodes(double: bool) -> Vec<NodeSpec> {
    NODES
        .iter()
        .map(|(name, org)| {
            let data = if double { doubled(&csv(name)) } else { csv(name) };
            let mut n = NodeSpec::franchisee(name, data);
            n.organisation = format!("{org} ({name})");
            n.format = Format::Csv;
            n
        })
        .collect()
}

/// Per node: every message body it sent (receipt stripped), and what training made.
async fn train(double: bool) -> (BTreeMap<String, Vec<Vec<u8>>>, fedcrm_model::artifact::ChurnModel) {
    let opts = ClusterOptions {
        nodes: nodes(double),
        release: ReleaseRules { min_participants: 3, min_cohort: 0 },
        phase_timeout_seconds: 30,
        capture_wire: true,
        ..Default::default()
    };
    let cluster = Cluster::start(opts).await.unwrap();
    let request = AnalysisRequest { reference_date: date!(2025 - 03 - 31), ..common::request("churn egress") };
    let out = cluster.coordinator.run_churn(&request, ChurnRequest::newton(275), None).await.unwrap();
    assert_eq!(out.release.model.provenance.nodes.len(), 4, "{:?}", out.exits);
    let captures = cluster.captures.lock().unwrap().clone();
    let _dir = cluster.stop().await;
    let bodies = captures
        .into_iter()
        .map(|(node, msgs)| {
            let bodies = msgs
                .iter()
                .map(|b| {
                    let mut m = pb::NodeMessage::decode(b.as_slice()).unwrap();
                    m.receipt = None;
                    m.encode_to_vec()
                })
                .collect();
            (node, bodies)
        })
        .collect();
    (bodies, out.release.model)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_phone_or_score_leaves_a_node_and_sizes_do_not_grow_with_customers() {
    common::logs();
    let (sent, model) = train(false).await;
    let (sent_twice, _) = train(true).await;
    let m = &model.metrics;
    println!(
        "synthetic jewellery data, 4 franchisees: test AUC {:.4} (± {:.4}), log-loss {:.4}, accuracy {:.3}, {} train / {} held out, churn rate {:.3}",
        m.test_auc,
        m.test_auc_bound,
        m.test_log_loss,
        m.test_accuracy,
        m.train_examples,
        m.test_examples,
        m.test_churn_rate
    );
    assert_eq!(sent.len(), 4);
    for (node, _) in NODES {
        let wire: Vec<u8> = sent[node].concat();
        let text = csv(node);
        let rows: Vec<Vec<&str>> = text.lines().skip(1).map(|l| l.split(',').collect()).collect();
        let mut checked = (0, 0);
        for row in &rows {
            let (key, phone) = (row[0], row[1]);
            assert!(!contains(&wire, key.as_bytes()), "{node}: customer key {key} on the wire");
            checked.0 += 1;
            let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
            for form in [phone, digits.as_str(), digits.get(digits.len().saturating_sub(11)..).unwrap_or("")] {
                assert!(!contains(&wire, form.as_bytes()), "{node}: a phone number on the wire");
            }
            checked.1 += 1;
        }
        assert!(checked.0 > 100, "{node}: {checked:?}");
        // Each customer's score under the trained model, as f64 and f32 bytes.
        let ds = {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("p.csv");
            std::fs::write(&p, &text).unwrap();
            fedcrm_node::data::DataConfig::new(Format::Csv, p).load().unwrap()
        };
        let mut scores = 0;
        for h in fedcrm_node::features::histories(&ds.purchases) {
            if let Some(s) = model.score(&h.customer(), date!(2025 - 03 - 31)) {
                assert!(!contains(&wire, &s.probability.to_le_bytes()), "{node}: a score on the wire");
                assert!(!contains(&wire, &(s.probability as f32).to_le_bytes()), "{node}: a score on the wire");
                scores += 1;
            }
        }
        assert!(scores > 100, "{node}: {scores} scores checked");
        // Twice the customers: the same messages, of the same sizes.
        let sizes = |m: &Vec<Vec<u8>>| {
            let mut s: Vec<usize> = m.iter().map(Vec::len).collect();
            s.sort_unstable();
            s
        };
        let (a, b) = (sizes(&sent[node]), sizes(&sent_twice[node]));
        println!(
            "{node}: {} messages, {} bytes; with twice the customers {} bytes",
            a.len(),
            a.iter().sum::<usize>(),
            b.iter().sum::<usize>()
        );
        assert_eq!(a.len(), b.len(), "{node}: message count");
        let tolerance = |x: usize, y: usize| x.abs_diff(y) <= 16;
        assert!(a.iter().zip(&b).all(|(x, y)| tolerance(*x, *y)), "{node}: sizes {a:?} vs {b:?}");
    }
}

/// Issue 11: fr-suzhou loses its connection in the third round it joins, after its
/// masked vector left it and before it arrived (its pass counted on the node), and
/// reconnects. The coordinator does not unmask that round (the honest nodes would not
/// sign its view either: `node::computation::Tracker::same_population`), waits for the
/// node and runs the round again over the whole population with fresh keys and seeds;
/// the model is exactly the no-drop run's. HQ publishes it and the node scores its own
/// customers, the ranked list written on the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_lost_after_masking_in_round_3_comes_back_and_the_retried_round_gives_the_same_model() {
    common::logs();
    let request = AnalysisRequest { reference_date: date!(2025 - 03 - 31), ..common::request("churn retry") };
    let opts = |nodes| ClusterOptions {
        nodes,
        release: ReleaseRules { min_participants: 3, min_cohort: 0 },
        phase_timeout_seconds: 30,
        retry_wait_seconds: 30,
        ..Default::default()
    };
    let cluster = Cluster::start(opts(nodes(false))).await.unwrap();
    let plain = cluster.coordinator.run_churn(&request, ChurnRequest::newton(275), None).await.unwrap();
    let _dir = cluster.stop().await;

    let mut specs = nodes(false);
    let faults = Faults { lose_connection: Some((3, DropAt::MaskedLost)), ..Default::default() };
    let joined = faults.joined.clone();
    specs[1].faults = faults;
    let cluster = Cluster::start(opts(specs)).await.unwrap();
    let retried = cluster.coordinator.run_churn(&request, ChurnRequest::newton(275), None).await.unwrap();
    assert!(joined.load(Ordering::SeqCst) >= 1_000_000, "the fault never fired");
    println!(
        "no drop: {} rounds; fr-suzhou lost in round 3: {} rounds (one retried); test AUC {:.6} and {:.6}",
        plain.rounds, retried.rounds, plain.release.model.metrics.test_auc, retried.release.model.metrics.test_auc
    );
    assert_eq!(retried.rounds, plain.rounds + 1, "exactly one round retried");
    let (a, b) = (&plain.release.model, &retried.release.model);
    assert_eq!(b.provenance.nodes, a.provenance.nodes);
    assert_eq!(b.provenance.rounds.len(), a.provenance.rounds.len(), "the stopped round is no round of the model");
    assert_eq!(b.model.weights, a.model.weights, "the retried training's weights");
    assert_eq!((&b.standardiser, &b.history), (&a.standardiser, &a.history));
    assert_eq!(serde_json::to_value(&b.metrics).unwrap(), serde_json::to_value(&a.metrics).unwrap());
    // What each node sent: keys twice (the first round, and the retry after the lost
    // node came back), a masked vector in every round (the lost node's third never
    // arrived), and a view signature and unmask shares only for the rounds the model
    // used — the stopped round was never signed, so never unmasked.
    let used = plain.rounds as usize;
    for (node, _) in NODES {
        let cfg = cluster.node_configs.iter().find(|c| c.name == node).unwrap();
        let kinds: Vec<String> = read_log(&cfg.audit_dir).unwrap().into_iter().map(|e| e.kind).collect();
        let count = |kind: &str| kinds.iter().filter(|k| *k == kind).count();
        let masked_rounds = if node == "fr-suzhou" { used } else { used + 1 };
        assert_eq!(count("advertise-keys"), 2, "{node}: {kinds:?}");
        assert_eq!(count("masked-chunk"), masked_rounds, "{node}: {kinds:?}");
        assert_eq!((count("consistency-signature"), count("unmask-shares")), (used, used), "{node}: {kinds:?}");
    }

    // Published, then applied on the node that was lost (its daemon running: the
    // scoring record goes through its spool).
    let id = retried.release.model_id.clone();
    let publisher = cluster.analyst.publisher.clone().unwrap();
    let mut hq = AnalystClient::connect(&cluster.analyst).await.unwrap();
    hq.publish(&id, &publisher).await.unwrap();
    let now = common::inside_validity(&std::fs::read_to_string(&publisher.cert).unwrap());
    let node = cluster.node_configs.iter().find(|c| c.name == "fr-suzhou").unwrap().clone();
    let out = cluster.dir.path().join("nodes").join("fr-suzhou").join("win-back.csv");
    let score = ScoreRequest { model_id: id, out: out.clone(), as_of: None, top: None, now_unix: now };
    let summary = score::run(&node, &score).await.unwrap();
    let rows = std::fs::read_to_string(&out).unwrap().lines().count() - 1;
    println!(
        "fr-suzhou scored {} customers locally ({} above 0.5): {}",
        summary.customers,
        summary.above_half,
        out.display()
    );
    assert_eq!(rows as u64, summary.customers);
    assert!(summary.customers > 100 && 0 < summary.above_half && summary.above_half < summary.customers, "{summary:?}");
    let _dir = cluster.stop().await;
}
