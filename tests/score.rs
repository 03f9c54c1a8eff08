//! Issue 11: `fedcrm node score` end to end over the loopback cluster on CDNOW. A churn
//! model published by HQ's publisher is fetched and verified by a node, applied to
//! that node's own customers, and the ranked at-risk list is written on the node (mode
//! 0600) — one row per customer, probabilities as `ChurnModel::score` gives them. The
//! node's audit log records the scoring (model, version, count) and no customer key;
//! while the node daemon holds its log, the record goes through the scoring spool and
//! the daemon appends it. A changed weight is refused and no list is written.
//!
//! No outcome depends on the real clock: as-of dates are fixed, the publisher's
//! certificate is checked at its own `notBefore` plus a day (the CLI run, like any
//! real run, checks it at the real time inside its 30-day validity).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fedcrm::harness::{Cluster, ClusterOptions, PUBLISHER_NAME};
use fedcrm::hq::AnalystClient;
use fedcrm_audit::Event;
use fedcrm_coordinator::config::ReleaseRules;
use fedcrm_model::artifact::{self, ChurnModel, DpCharge, Metrics, Provenance};
use fedcrm_model::features::{Customer, FeatureSpec, Txn};
use fedcrm_model::logistic::{Logistic, StopReason};
use fedcrm_model::standardise::Standardiser;
use fedcrm_node::config::NodeConfig;
use fedcrm_node::score::{self, ScoreError, ScoreRequest, spool};
use fedcrm_protocol::model::{FORMAT, ModelHeader};
use time::Date;
use time::macros::date;

/// The end of the CDNOW data: the as-of date of the runs below.
const AS_OF: Date = date!(1998 - 06 - 30);

/// A hand-made churn model on the reduced features (CDNOW has no categories or key
/// dates): plausible global constants, small weights (binary fractions, so their JSON
/// text is exact and one can be changed by text).
fn model() -> ChurnModel {
    ChurnModel {
        spec: FeatureSpec::reduced(),
        standardiser: Standardiser {
            mean: vec![4.5, 0.875, 3.75, 3.375, 150.0, 1.0],
            sd: vec![0.75, 0.5, 1.0, 0.75, 70.0, 0.625],
        },
        model: Logistic { weights: vec![0.4375, 0.84375, -0.59375, -0.125, 0.0625, -0.21875, -0.15625] },
        reference_date: date!(1997 - 09 - 30),
        horizon_days: 273,
        lambda: 1.0,
        stop_reason: StopReason::GradientSmall,
        history: vec![],
        metrics: Metrics {
            test_auc: 0.78125,
            test_auc_bound: 0.001,
            test_log_loss: 0.46875,
            test_accuracy: 0.765625,
            train_examples: 2_000,
            test_examples: 500,
            test_churn_rate: 0.6875,
            calibration: vec![],
        },
        provenance: Provenance {
            analysis_id: "churn-test".into(),
            rounds: vec!["round-1".into(), "round-2".into()],
            nodes: common::node_names(4),
            organisations: 4,
            trained_by: "analyst.hq".into(),
            purpose: "test".into(),
            dp: None::<DpCharge>,
        },
    }
}

fn header(id: &str, model: &ChurnModel) -> ModelHeader {
    ModelHeader {
        format: FORMAT.into(),
        id: id.into(),
        kind: artifact::KIND.into(),
        created_ms: 1_790_000_000_000,
        body: serde_json::to_value(model).unwrap(),
    }
}

/// Customers of node-1 who withdrew consent: never scored.
fn withdrawn(nodes: &[fedcrm::harness::NodeSpec]) -> Vec<String> {
    let mut keys: Vec<String> =
        nodes[1].data.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect();
    keys.dedup();
    keys.truncate(2);
    keys
}

async fn cluster() -> Cluster {
    common::logs();
    let mut nodes = common::cdnow_nodes(&[1; 4], true);
    nodes[1].withdrawn = withdrawn(&nodes);
    let opts =
        ClusterOptions { nodes, release: ReleaseRules { min_participants: 3, min_cohort: 0 }, ..Default::default() };
    Cluster::start(opts).await.unwrap()
}

/// Register `model` under the next churn id and publish it; returns the id and a
/// time inside the publisher certificate's validity.
async fn publish(cluster: &Cluster, model: &ChurnModel) -> (String, u64) {
    let registry = &cluster.coordinator.models;
    let id = registry.next_id(artifact::NAME).unwrap();
    registry.register(&header(&id, model)).unwrap();
    let publisher = cluster.analyst.publisher.clone().unwrap();
    let mut hq = AnalystClient::connect(&cluster.analyst).await.unwrap();
    hq.publish(&id, &publisher).await.unwrap();
    (id, common::inside_validity(&std::fs::read_to_string(&publisher.cert).unwrap()))
}

/// End a node's daemon (its task), which releases its audit log.
async fn stop_node(cluster: &mut Cluster, name: &str) {
    let i = cluster.nodes.iter().position(|(n, _)| n == name).unwrap();
    let (_, task) = cluster.nodes.remove(i);
    task.abort();
    let _ = task.await;
}

fn request(id: &str, out: &Path, now_unix: u64) -> ScoreRequest {
    ScoreRequest { model_id: id.into(), out: out.to_path_buf(), as_of: Some(AS_OF), top: None, now_unix }
}

/// Each customer's purchases up to `as_of` as the model reads them, built here from
/// the rows (not through the node's `features::histories`).
fn purchases_by_customer(cfg: &NodeConfig, as_of: Date) -> BTreeMap<String, Vec<Txn>> {
    let mut by: BTreeMap<String, Vec<Txn>> = BTreeMap::new();
    for p in cfg.data.load().unwrap().purchases {
        if p.day <= as_of {
            by.entry(p.customer.clone()).or_default().push(Txn {
                day: p.day,
                cents: p.amount_cents,
                quantity: p.quantity,
                category: None,
            });
        }
    }
    for t in by.values_mut() {
        t.sort_by_key(|t| t.day);
    }
    by
}

fn read_csv(path: &Path) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    assert_eq!(r.headers().unwrap().iter().collect::<Vec<_>>(), score::CSV_HEADER);
    r.records().map(|r| r.unwrap().iter().map(str::to_string).collect()).collect()
}

fn local_scorings(audit_dir: &Path) -> Vec<(String, String, u64)> {
    fedcrm_audit::log::read_records(audit_dir)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.event {
            Event::LocalScoring { model, version, customers } => Some((model, version, customers)),
            _ => None,
        })
        .collect()
}

/// Every token (run of letters and digits) in every file of `dir`. A CDNOW key is a
/// zero-padded number (`00042`); no number the logs write is zero-padded, so a key
/// below 10000 found as a token would be that key.
fn tokens(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_file() {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            out.extend(text.split(|c: char| !c.is_ascii_alphanumeric()).map(str::to_string));
        }
    }
    out
}

/// Run `fedcrm` with `args` (off the async workers: the coordinator runs on them).
async fn fedcrm(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_fedcrm")).args(&args).output().unwrap()
    })
    .await
    .unwrap()
}

/// `node score` arguments for `node`'s node.toml as `write_configs` wrote it.
fn score_args(cluster: &Cluster, node: &str, id: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let written = cluster.write_configs().unwrap();
    let toml = written.iter().find(|p| p.ends_with(Path::new(node).join("node.toml"))).unwrap();
    let mut args: Vec<String> = ["node", "score", "--config"].map(String::from).to_vec();
    args.extend([toml.display().to_string(), "--model".into(), id.into(), "--out".into(), out.display().to_string()]);
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_scores_its_own_customers_ranks_them_and_logs_only_the_count() {
    let mut cluster = cluster().await;
    let (id, now) = publish(&cluster, &model()).await;
    assert_eq!(id, "churn-v1");
    let node = cluster.node_configs[1].clone();
    // The daemon is stopped: `node score` appends to the log itself.
    stop_node(&mut cluster, &node.name).await;
    let out = cluster.dir.path().join("nodes").join(&node.name).join("at-risk.csv");

    let summary = score::run(&node, &request(&id, &out, now)).await.unwrap();
    assert!(matches!(summary.audit, spool::Recorded::Appended { .. }), "{:?}", summary.audit);
    assert_eq!((summary.publisher.as_str(), summary.as_of.as_str()), (PUBLISHER_NAME, "1998-06-30"));

    // The list: 0600, one row per customer with a purchase by the as-of date, ranked.
    assert_eq!(mode(&out), 0o600);
    let rows = read_csv(&out);
    let expected = purchases_by_customer(&node, AS_OF);
    assert_eq!(rows.len(), expected.len());
    assert_eq!(summary.customers, expected.len() as u64);
    let keys: BTreeSet<&str> = rows.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(keys, expected.keys().map(String::as_str).collect());
    // Customers who withdrew consent are not scored.
    let gone = withdrawn(&common::cdnow_nodes(&[1; 4], true));
    assert_eq!(gone.len(), 2);
    assert!(gone.iter().all(|k| !keys.contains(k.as_str())), "{gone:?}");
    let probability = |r: &Vec<String>| r[2].parse::<f64>().unwrap();
    for (i, pair) in rows.windows(2).enumerate() {
        assert_eq!(pair[0][0], (i + 1).to_string());
        assert!(probability(&pair[0]) >= probability(&pair[1]), "rows {} and {} out of order", i + 1, i + 2);
    }
    let above = rows.iter().filter(|r| probability(r) > 0.5).count() as u64;
    // Rounded to 4 places in the file; the summary counts the exact values.
    assert!(summary.above_half.abs_diff(above) <= 2, "{} vs {above}", summary.above_half);
    assert!(0 < summary.above_half && summary.above_half < summary.customers, "a useless model: {summary:?}");

    // The first rows, the last and one in the middle, recomputed here.
    let m = model();
    for r in [&rows[0], &rows[1], &rows[rows.len() / 2], &rows[rows.len() - 1]] {
        let txns = &expected[&r[1]];
        let scored =
            m.score(&Customer { txns, birthday: None, anniversary: None }, AS_OF).expect("a customer with purchases");
        assert_eq!(r[2], format!("{:.4}", scored.probability), "customer row {}", r[0]);
        let reasons: Vec<String> = scored.reasons.iter().map(|(n, c)| format!("{n} ({c:+.2})")).collect();
        assert_eq!(r[3..3 + reasons.len()], reasons[..], "customer row {}", r[0]);
        assert!(r[3 + reasons.len()..6].iter().all(String::is_empty));
        let mut days: Vec<Date> = txns.iter().map(|t| t.day).collect();
        days.dedup();
        assert_eq!(r[6], days.last().unwrap().to_string());
        assert_eq!(r[7], days.len().to_string());
        let cents: i64 = txns.iter().map(|t| t.cents).sum();
        assert_eq!(r[8], format!("{}.{:02}", cents / 100, cents % 100));
    }

    // The audit log: exactly one scoring record, the model and the count.
    assert_eq!(local_scorings(&node.audit_dir), vec![("churn".to_string(), "1".to_string(), summary.customers)]);

    // The CLI, as a franchisee runs it: the default as-of is the latest purchase
    // (the end of CDNOW), `--top` limits the rows, `--json` the summary.
    let top_out = out.with_file_name("top.csv");
    let run = fedcrm(score_args(&cluster, &node.name, &id, &top_out, &["--top", "5", "--json"])).await;
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(run.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["model_id"], id.as_str());
    assert_eq!(json["customers"], summary.customers);
    assert_eq!(json["above_half"], summary.above_half);
    assert_eq!(json["as_of"], "1998-06-30");
    assert_eq!(json["as_of_default"], true);
    assert_eq!(json["out"], top_out.display().to_string());
    assert_eq!(read_csv(&top_out), rows[..5].to_vec());
    assert_eq!(mode(&top_out), 0o600);
    // As text, as of the model's reference date: a summary, nothing of the list.
    let early = out.with_file_name("early.csv");
    let text = fedcrm(score_args(&cluster, &node.name, &id, &early, &["--as-of", "1997-09-30"])).await;
    let text_out = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.status.success(), "{text_out}\n{}", String::from_utf8_lossy(&text.stderr));
    let early_rows = read_csv(&early);
    // The CDNOW cohort all bought first in early 1997, so everyone is scored; only
    // purchases up to the as-of date count.
    assert_eq!(early_rows.len(), rows.len());
    assert!(early_rows.iter().all(|r| r[6].as_str() <= "1997-09-30"));
    assert_ne!(early_rows, rows);
    for want in [
        "as of:              1997-09-30\n".to_string(),
        format!("customers scored:   {}\n", early_rows.len()),
        format!("signed by {PUBLISHER_NAME}"),
        "the list stays on this machine".to_string(),
    ] {
        assert!(text_out.contains(&want), "{want:?} not in\n{text_out}");
    }
    assert_eq!(local_scorings(&node.audit_dir).len(), 3);
    // Nothing of the lists on standard output or error.
    for r in rows[..5].iter().chain(&early_rows[..5]) {
        for o in [&run, &text] {
            let shown = [&o.stdout, &o.stderr].map(|b| String::from_utf8_lossy(b).into_owned());
            assert!(shown.iter().all(|t| !t.contains(&format!(",{},", r[1])) && !t.contains(&r[2])), "{shown:?}");
        }
    }

    // The node's log still verifies (scoring appended under the node's own key), and
    // the auditor's report lists the three runs: model, version, count.
    let ca_der = fedcrm_pki::pem_to_der_certs(&cluster.pki.ca.cert_pem).unwrap().remove(0);
    let node_cert_valid_ms = common::inside_validity(&std::fs::read_to_string(&node.tls.cert).unwrap()) * 1000;
    fedcrm_audit::verify::verify_paths_at(std::slice::from_ref(&node.audit_dir), &ca_der, node_cert_valid_ms).unwrap();
    let records = fedcrm_audit::log::read_records(&node.audit_dir).unwrap();
    let report = fedcrm_audit::report::build(&[records], date!(2000 - 01 - 01), date!(2999 - 12 - 31), None);
    let runs: Vec<_> = report.scoring.iter().map(|r| (r.node.as_str(), r.model.as_str(), r.version.as_str())).collect();
    assert_eq!(runs, vec![(node.name.as_str(), "churn", "1"); 3]);

    // No customer key anywhere in the node's or the coordinator's audit log.
    let node_tokens = tokens(&node.audit_dir);
    let coordinator_tokens = tokens(&cluster.coordinator.config.audit_dir);
    let padded: Vec<&String> = expected.keys().filter(|k| k.starts_with('0')).collect();
    assert!(padded.len() > 100, "the check needs zero-padded keys");
    for k in padded {
        assert!(!node_tokens.contains(k), "customer key {k} in the node's audit log");
        assert!(!coordinator_tokens.contains(k), "customer key {k} in the coordinator's audit log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_weight_is_refused_and_no_list_is_written() {
    let cluster = cluster().await;
    let (id, now) = publish(&cluster, &model()).await;
    let signed = cluster.coordinator.config.models_dir.join(format!("{id}.signed.json"));
    let text = std::fs::read_to_string(&signed).unwrap();
    let tampered = text.replacen("0.84375", "0.96875", 1);
    assert_ne!(tampered, text);
    std::fs::write(&signed, tampered).unwrap();

    let node = &cluster.node_configs[0];
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("at-risk.csv");
    let err = score::run(node, &request(&id, &out, now)).await.unwrap_err();
    assert!(matches!(err, ScoreError::Fetch(_)), "{err}");
    assert!(err.to_string().contains("changed after signing"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "a file was written");
    // The command fails the same way, with the reason.
    let run = fedcrm(score_args(&cluster, &node.name, &id, &out, &[])).await;
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(stderr.contains("refused model churn-v1") && stderr.contains("changed after signing"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "a file was written");
    assert!(local_scorings(&node.audit_dir).is_empty());
    assert!(!spool::dir(&node.audit_dir).exists());
}

#[test]
fn only_a_sound_churn_model_is_used() {
    let good = header("churn-v1", &model());
    assert!(score::churn_model(&good).is_ok());

    let other_kind = ModelHeader { kind: "clv-gamma-gamma".into(), ..good.clone() };
    let err = score::churn_model(&other_kind).unwrap_err();
    assert!(matches!(err, ScoreError::WrongKind { .. }), "{err}");
    assert!(err.to_string().contains("\"clv-gamma-gamma\"") && err.to_string().contains(artifact::KIND), "{err}");

    let mut short = model();
    short.model.weights.pop();
    let err = score::churn_model(&header("churn-v2", &short)).unwrap_err();
    assert!(matches!(err, ScoreError::BadModel { .. }), "{err}");
    assert!(err.to_string().contains("disagree"), "{err}");

    let mut body = good.body.clone();
    body["weights"] = serde_json::json!([1.0]);
    let err = score::churn_model(&ModelHeader { body, ..good }).unwrap_err();
    assert!(err.to_string().contains("not a churn model"), "{err}");
}

/// Wait until `f` holds, checking every 100 ms for at most `limit`.
async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f()
}

fn spool_files(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(d) => d.map(|e| e.unwrap().path()).collect(),
        Err(_) => vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_node_runs_scoring_is_spooled_and_the_node_logs_it() {
    let mut cluster = cluster().await;
    let (id, now) = publish(&cluster, &model()).await;
    let node = cluster.node_configs[2].clone();
    let spool_dir = spool::dir(&node.audit_dir);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("at-risk.csv");

    // The daemon holds the log: the record is spooled, the list written.
    let summary = score::run(&node, &request(&id, &out, now)).await.unwrap();
    let spool::Recorded::Spooled { path } = &summary.audit else { panic!("not spooled: {:?}", summary.audit) };
    assert!(path.starts_with(&spool_dir), "{}", path.display());
    assert_eq!(mode(path), 0o600);
    assert_eq!(read_csv(&out).len() as u64, summary.customers);

    // The daemon takes it in at its next seal tick (every audit.seal_every_seconds)
    // and deletes the file.
    let want = vec![("churn".to_string(), "1".to_string(), summary.customers)];
    let audit_dir = node.audit_dir.clone();
    // The daemon appends, then deletes: wait for both, or a check between the two
    // sees the record logged and its file still there.
    let taken_in = eventually(Duration::from_secs(30), || {
        local_scorings(&audit_dir) == want && spool_files(&spool_dir).is_empty()
    })
    .await;
    assert!(taken_in, "log {:?}, spool {:?}", local_scorings(&audit_dir), spool_files(&spool_dir));

    // A record spooled while no daemon ran is taken in at start-up; one for another
    // node is left alone.
    stop_node(&mut cluster, &node.name).await;
    spool::write(&spool_dir, &spool::scoring(&node.name, "churn-v1", 7, 1_790_000_000_000)).unwrap();
    let foreign = spool::write(&spool_dir, &spool::scoring("node-0", "churn-v1", 9, 1_790_000_000_001)).unwrap();
    // Not a scoring record (an egress, say): set aside, never appended.
    let forged = spool_dir.join("1790000000002-1-churn-v1.json");
    std::fs::write(&forged, r#"{"event":"egress","message":"masked-input","bytes":1}"#).unwrap();
    cluster.restart_node(&node.name).await.unwrap();
    let mut want = want;
    want.push(("churn".to_string(), "1".to_string(), 7));
    assert_eq!(local_scorings(&node.audit_dir), want);
    let mut left = spool_files(&spool_dir);
    left.sort();
    assert_eq!(left, vec![foreign, forged.with_extension("rejected")]);
}
