//! End-to-end secure-aggregation rounds over real mutual TLS on loopback, 5 nodes:
//! dropouts at each phase give the exact sum of the survivors' inputs, masked
//! vectors look uniform to the coordinator, deviating unmask requests are refused,
//! and bad input from one node does not take the round down for the others.

mod common;

use std::sync::{Arc, Mutex};

use common::{REFERENCE, cdnow_nodes};
use fedcrm::harness::{Cluster, ClusterOptions, NodeSpec};
use fedcrm_analysis::rfm::{HistogramSpec, Metric, QuantileSearch};
use fedcrm_audit::Event;
use fedcrm_audit::log::read_records;
use fedcrm_coordinator::analyses::{AnalysisError, rfm::HistogramOutcome};
use fedcrm_coordinator::config::ReleaseRules;
use fedcrm_coordinator::round::Hooks;
use fedcrm_crypto::RoundId;
use fedcrm_crypto::secagg::{self, WordWidth, Words};
use fedcrm_node::analyses::{Cache, LocalData, contribute};
use fedcrm_node::egress::read_log;
use fedcrm_node::session::{DropAt, FalseReport};
use fedcrm_pki as pki;
use fedcrm_protocol::wire::AnalysisKind;

fn specs() -> Vec<HistogramSpec> {
    Metric::ALL.iter().map(|&m| QuantileSearch::coarse_spec(m)).collect()
}

/// Σ of the named nodes' local contributions (what the round must return exactly).
fn expected_sum(cluster: &Cluster, names: &[String]) -> Vec<u64> {
    let analysis = common::analysis(AnalysisKind::RfmHistograms(specs()));
    let mut sum = vec![0u64; analysis.kind.vector_len()];
    for cfg in cluster.node_configs.iter().filter(|c| names.contains(&c.name)) {
        let ds = cfg.data.load().unwrap();
        let local = contribute(
            &analysis,
            &mut LocalData::new(&std::sync::Arc::new(ds).into(), &mut Cache::default()),
            &cfg.policy,
        )
        .unwrap();
        for (s, v) in sum.iter_mut().zip(local.vector.iter()) {
            *s += v;
        }
    }
    sum
}

fn exact() -> ClusterOptions {
    ClusterOptions {
        release: ReleaseRules { min_participants: 3, min_cohort: 0 },
        phase_timeout_seconds: 10,
        ..Default::default()
    }
}

async fn histogram_round(
    nodes: Vec<NodeSpec>,
    opts: ClusterOptions,
    hooks: Hooks,
) -> (Cluster, Result<HistogramOutcome, AnalysisError>) {
    let cluster = Cluster::start_with_hooks(ClusterOptions { nodes, ..opts }, hooks).await.unwrap();
    let out = cluster.coordinator.run_histograms(&common::request("test round"), specs()).await;
    (cluster, out)
}

fn counts(o: &HistogramOutcome) -> Vec<u64> {
    o.release.counts.iter().map(|c| c.unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_after_sharing_keys_gives_exact_sum_of_survivors() {
    let mut nodes = cdnow_nodes(&[1; 5], true);
    nodes[1].faults.drop_at = Some(DropAt::AfterShares);
    let (cluster, out) = histogram_round(nodes, exact(), Hooks::default()).await;
    let out = out.unwrap();
    assert_eq!(out.release.contributors, vec!["node-0", "node-2", "node-3", "node-4"]);
    assert_eq!(counts(&out), expected_sum(&cluster, &out.release.contributors));
    assert_eq!(out.exits.get("node-1").map(String::as_str), Some("disconnected"));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_after_masked_input_before_unmask_gives_exact_sum_including_it() {
    let mut nodes = cdnow_nodes(&[1; 5], true);
    nodes[3].faults.drop_at = Some(DropAt::AfterMasked);
    let (cluster, out) = histogram_round(nodes, exact(), Hooks::default()).await;
    let out = out.unwrap();
    // Its masked input arrived, so it is a survivor: the others reveal its self-mask share.
    assert_eq!(out.release.contributors.len(), 5);
    assert_eq!(counts(&out), expected_sum(&cluster, &out.release.contributors));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_after_advertising_keys_gives_exact_sum_of_survivors() {
    let mut nodes = cdnow_nodes(&[1; 5], true);
    nodes[0].faults.drop_at = Some(DropAt::AfterKeys);
    let (cluster, out) = histogram_round(nodes, exact(), Hooks::default()).await;
    let out = out.unwrap();
    assert_eq!(out.release.contributors, vec!["node-1", "node-2", "node-3", "node-4"]);
    assert_eq!(counts(&out), expected_sum(&cluster, &out.release.contributors));
    cluster.stop().await;
}

/// χ² statistic of the bytes of `v`, with 2^k bins on the top k bits of each byte,
/// k chosen so that every bin expects at least 5 observations.
fn chi_square(v: &Words) -> (f64, usize) {
    let bytes: Vec<u8> = v.to_le_bytes();
    let mut k = 8;
    while k > 1 && bytes.len() < 5 << k {
        k -= 1;
    }
    let bins = 1usize << k;
    let mut h = vec![0f64; bins];
    for b in &bytes {
        h[(*b >> (8 - k)) as usize] += 1.0;
    }
    let e = bytes.len() as f64 / bins as f64;
    (h.iter().map(|o| (o - e) * (o - e) / e).sum(), bins - 1)
}

/// Upper critical value for χ² with `dof` degrees of freedom at about p = 1e-9
/// (Wilson–Hilferty approximation with z = 6).
fn chi_critical(dof: usize) -> f64 {
    let k = dof as f64;
    let z = 6.0;
    k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

/// (node, masked vector) as the coordinator received it.
type Seen = (String, Words);

/// Every masked vector the coordinator receives passes the χ² test, in 32-bit words
/// (the default bound: 5 nodes × 2^22 customers < 2^32) and in 64-bit words (a bound
/// of 2^40 customers per node makes the round pick them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_masked_vector_passes_uniformity_test() {
    for (max_customers_per_node, width) in [(1u64 << 22, WordWidth::W32), (1 << 40, WordWidth::W64)] {
        every_masked_vector_passes_uniformity_test_at(max_customers_per_node, width).await;
    }
}

async fn every_masked_vector_passes_uniformity_test_at(max_customers_per_node: u64, width: WordWidth) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let s2 = seen.clone();
    let hooks = Hooks {
        on_masked: Some(Arc::new(move |n: &str, v: &Words| s2.lock().unwrap().push((n.to_string(), v.clone())))),
        ..Default::default()
    };
    let nodes = cdnow_nodes(&[1; 5], true);
    let opts = ClusterOptions { nodes, max_customers_per_node, ..Default::default() };
    let cluster = Cluster::start_with_hooks(opts, hooks).await.unwrap();
    cluster.segments(REFERENCE, "uniformity test").await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 15, "expected several rounds × 5 nodes, saw {}", seen.len());
    for (node, v) in &seen {
        assert_eq!(v.width(), width, "masked vector from {node}");
        let (chi, dof) = chi_square(v);
        assert!(
            chi < chi_critical(dof),
            "masked vector from {node} (len {}) fails χ²: {chi:.1} with {dof} dof",
            v.len()
        );
    }
    // The test can fail: a node's unmasked contribution is far from uniform.
    let plain = expected_sum(&cluster, &["node-0".to_string()]);
    let (chi, dof) = chi_square(&Words::W64(plain));
    assert!(chi > chi_critical(dof), "unmasked counts should fail the test (χ² {chi:.1})");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmask_request_for_both_shares_of_a_peer_is_refused() {
    // A deviating coordinator lists node-4 as dropped although it survived, hoping
    // to get both its self-mask share and its mask-key share.
    let hooks = Hooks {
        tamper_unmask: Some(Arc::new(|_s: &mut Vec<String>, d: &mut Vec<String>| d.push("node-4".into()))),
        ..Default::default()
    };
    let (cluster, out) = histogram_round(cdnow_nodes(&[1; 5], true), exact(), hooks).await;
    let err = out.unwrap_err().to_string();
    assert!(err.contains("unmask") && err.contains("fewer than"), "{err}");
    for cfg in &cluster.node_configs {
        let log = read_log(&cfg.audit_dir).unwrap();
        assert!(!log.iter().any(|r| r.kind == "unmask-shares"), "{} revealed shares", cfg.name);
        assert!(log.iter().any(|r| r.kind == "refusal"), "{} did not refuse", cfg.name);
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_length_vector_is_rejected_and_round_completes_for_others() {
    let mut nodes = cdnow_nodes(&[1; 5], true);
    nodes[2].faults.wrong_length = true;
    let (cluster, out) = histogram_round(nodes, exact(), Hooks::default()).await;
    let out = out.unwrap();
    assert_eq!(out.release.contributors, vec!["node-0", "node-1", "node-3", "node-4"]);
    assert_eq!(counts(&out), expected_sum(&cluster, &out.release.contributors));
    let why = &out.exits["node-2"];
    assert!(why.contains("196 elements in chunk 0, expected 195"), "{why}");
    cluster.stop().await;
}

/// Issue 9: a node that sends 64-bit words in a round of 32-bit words is refused by
/// name, and the round completes for the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_of_the_wrong_width_names_its_node_and_the_round_completes_for_others() {
    let mut nodes = cdnow_nodes(&[1; 5], true);
    nodes[3].faults.wrong_width = true;
    let (cluster, out) = histogram_round(nodes, exact(), Hooks::default()).await;
    let out = out.unwrap();
    assert_eq!(out.release.contributors, vec!["node-0", "node-1", "node-2", "node-4"]);
    assert_eq!(counts(&out), expected_sum(&cluster, &out.release.contributors));
    let why = &out.exits["node-3"];
    assert!(why.contains("sent a masked chunk of 64-bit words") && why.contains("uses 32-bit words"), "{why}");
    cluster.stop().await;
}

/// Issue 9: a node holding more customers than the signed per-node bound refuses the
/// round before any key leaves, and its reason says what HQ must change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_above_the_signed_customer_bound_refuses_and_names_the_setting() {
    let nodes = cdnow_nodes(&[1; 5], true);
    let opts = ClusterOptions { max_customers_per_node: 3, ..exact() };
    let (cluster, out) = histogram_round(nodes, opts, Hooks::default()).await;
    let err = out.unwrap_err().to_string();
    assert!(err.contains("raise [rounds] max_customers_per_node"), "{err}");
    assert!(err.contains("holds more customers than the round's max_customers_per_node = 3"), "{err}");
    for cfg in &cluster.node_configs {
        let log = read_log(&cfg.audit_dir).unwrap();
        assert!(!log.iter().any(|r| r.kind == "advertise-keys"), "{} advertised keys", cfg.name);
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunk_is_rejected_and_round_completes_for_others() {
    let mut nodes = cdnow_nodes(&[1; 5], true);
    nodes[0].faults.malformed_chunk = true;
    let (cluster, out) = histogram_round(nodes, exact(), Hooks::default()).await;
    let out = out.unwrap();
    assert_eq!(out.release.contributors.len(), 4);
    assert_eq!(counts(&out), expected_sum(&cluster, &out.release.contributors));
    assert!(out.exits["node-0"].contains("malformed message"), "{}", out.exits["node-0"]);
    cluster.stop().await;
}

/// Hex to bytes (audit records store evidence as hex).
fn unhex(h: &str) -> Vec<u8> {
    (0..h.len() / 2).map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap()).collect()
}

/// The certificate a party's own audit log opened with.
fn certificate_of(cluster: &Cluster, node: &str) -> Vec<u8> {
    let cfg = cluster.node_configs.iter().find(|c| c.name == node).unwrap();
    read_records(&cfg.audit_dir)
        .unwrap()
        .into_iter()
        .find_map(|r| match r.event {
            Event::LogOpened { certificate_der_hex, .. } => Some(unhex(&certificate_der_hex)),
            _ => None,
        })
        .unwrap()
}

/// Issue 7, point 11: node-1 seals node-3 a share that does not open and signs it.
/// node-3 reports it with node-1's signature; the coordinator leaves node-1 out of
/// the final U2 before anyone masks, and the round completes over the other four.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_share_names_its_sender_and_the_round_completes_over_the_others() {
    let mut nodes = cdnow_nodes(&[1; 5], true);
    nodes[1].faults.corrupt_share_to = Some("node-3".into());
    let (cluster, out) = histogram_round(nodes, exact(), Hooks::default()).await;
    let out = out.expect("the round goes on without the sender");
    assert_eq!(out.release.contributors, vec!["node-0", "node-2", "node-3", "node-4"]);
    assert_eq!(counts(&out), expected_sum(&cluster, &out.release.contributors));
    // The analyst's exits name the sender, and only the sender.
    let why = &out.exits["node-1"];
    assert!(why.starts_with("excluded: node-1 sent a share to node-3 that fails to open"), "{why}");
    assert_eq!(out.exits.keys().collect::<Vec<_>>(), vec!["node-1"], "{:?}", out.exits);

    // The coordinator's log holds the evidence and the exit; an auditor can check
    // that node-1 signed exactly the bytes node-3 could not open.
    let records = read_records(&cluster.coordinator.config.audit_dir).unwrap();
    let (round, ct, sig) = records
        .iter()
        .find_map(|r| match &r.event {
            Event::ShareReported { round, sender, receiver, ciphertext_hex, signature_hex, outcome, .. } => {
                assert_eq!((sender.as_str(), receiver.as_str()), ("node-1", "node-3"));
                assert!(outcome.contains("node-1 excluded"), "{outcome}");
                Some((round.clone(), unhex(ciphertext_hex), unhex(signature_hex)))
            }
            _ => None,
        })
        .expect("a share-reported record in the coordinator's log");
    // The round start node-3 was shown (its log keeps the digest of the signed payload).
    let node3_cfg = cluster.node_configs.iter().find(|c| c.name == "node-3").unwrap();
    let roster: [u8; 32] = read_records(&node3_cfg.audit_dir)
        .unwrap()
        .into_iter()
        .find_map(|r| match r.event {
            Event::RosterSigned { round: x, payload_sha256, .. } if x == round => Some(unhex(&payload_sha256)),
            _ => None,
        })
        .expect("node-3 logged the round start it was shown")
        .try_into()
        .unwrap();
    let round = RoundId(unhex(&round).try_into().unwrap());
    let payload = secagg::share_signing_payload(&round, "node-1", "node-3", &roster, &ct);
    pki::verify_signature(&certificate_of(&cluster, "node-1"), &payload, &sig).expect("node-1 signed it");
    assert!(records.iter().any(|r| matches!(&r.event,
        Event::NodeExit { node, reason, .. } if node == "node-1" && reason.contains("fails to open"))));
    // node-3 reported, it did not refuse; and it logged what it reported.
    let node3 = cluster.node_configs.iter().find(|c| c.name == "node-3").unwrap();
    let node3_log = read_records(&node3.audit_dir).unwrap();
    assert!(node3_log.iter().any(|r| matches!(&r.event, Event::ShareReported { sender, .. } if sender == "node-1")));
    assert!(!node3_log.iter().any(|r| matches!(&r.event, Event::PolicyDecision { admitted: false, .. })));
    cluster.stop().await;
}

/// The coordinator alters a share it relays (after checking its signature): the
/// signature no longer verifies, so the receiver refuses the round naming the
/// coordinator, and the sender, who signed what it sent, is not blamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_altered_in_relay_is_blamed_on_the_coordinator_not_its_sender() {
    let hooks = Hooks {
        tamper_share: Some(Arc::new(|from: &str, to: &str, ct: &mut Vec<u8>| {
            if (from, to) == ("node-1", "node-3") {
                ct[0] ^= 0x01;
            }
        })),
        ..Default::default()
    };
    let (cluster, out) = histogram_round(cdnow_nodes(&[1; 5], true), exact(), hooks).await;
    let out = out.expect("the round goes on without the refusing receiver");
    assert_eq!(out.release.contributors, vec!["node-0", "node-1", "node-2", "node-4"]);
    assert_eq!(counts(&out), expected_sum(&cluster, &out.release.contributors));
    let why = &out.exits["node-3"];
    assert!(why.starts_with("refused: the coordinator relayed a share from node-1"), "{why}");
    assert!(why.contains("the coordinator is at fault, not node-1"), "{why}");
    assert!(!out.exits.contains_key("node-1"), "{:?}", out.exits);
    let records = read_records(&cluster.coordinator.config.audit_dir).unwrap();
    assert!(!records.iter().any(|r| matches!(&r.event, Event::ShareReported { .. })));
    cluster.stop().await;
}

/// A coordinator that keeps a reported sender in the final U2 gets no masked input
/// from the reporter: it refuses, naming the coordinator, before it masks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_u2_that_keeps_a_reported_sender_is_refused_by_the_reporter() {
    let mut nodes = cdnow_nodes(&[1; 5], true);
    nodes[1].faults.corrupt_share_to = Some("node-3".into());
    let hooks = Hooks {
        tamper_final_u2: Some(Arc::new(|u2: &mut Vec<String>| u2.push("node-1".into()))),
        ..Default::default()
    };
    let (cluster, out) = histogram_round(nodes, exact(), hooks).await;
    assert!(out.is_err(), "no result: node-1 never masks and node-3 refuses, leaving 3 < t = 4");
    let node3 = cluster.node_configs.iter().find(|c| c.name == "node-3").unwrap();
    let refusals: Vec<String> = read_records(&node3.audit_dir)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.event {
            Event::PolicyDecision { admitted: false, reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert!(
        refusals.iter().any(|r| r.starts_with("the coordinator's final U2 is wrong") && r.contains("keeps node-1")),
        "{refusals:?}"
    );
    // node-3 sent no masked input.
    assert!(!read_log(&node3.audit_dir).unwrap().iter().any(|e| e.kind == "masked-chunk"));
    cluster.stop().await;
}

/// The policy on false reports (docs/threat-model.md): the coordinator cannot open a
/// share, so a report carrying the share exactly as relayed, with its sender's valid
/// signature, removes the accused sender — and names the accuser in the exit and the
/// log — while the round completes over the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_report_removes_only_the_accused_and_names_the_accuser() {
    let mut nodes = cdnow_nodes(&[1; 5], true);
    nodes[4].faults.false_report = Some(FalseReport { sender: "node-2".into(), more: vec![], forge_evidence: false });
    let (cluster, out) = histogram_round(nodes, exact(), Hooks::default()).await;
    let out = out.unwrap();
    assert_eq!(out.release.contributors, vec!["node-0", "node-1", "node-3", "node-4"]);
    assert_eq!(counts(&out), expected_sum(&cluster, &out.release.contributors));
    let why = &out.exits["node-2"];
    assert!(why.starts_with("excluded: node-2 sent a share to node-4 that fails to open"), "{why}");
    let records = read_records(&cluster.coordinator.config.audit_dir).unwrap();
    assert!(records.iter().any(|r| matches!(&r.event,
        Event::ShareReported { sender, receiver, .. } if sender == "node-2" && receiver == "node-4")));
    cluster.stop().await;
}

/// A node accusing several peers at once is dropped itself; none of the accused is:
/// one malicious node cannot empty a round by accusing everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_accusing_several_peers_at_once_is_dropped_instead_of_them() {
    let mut nodes = cdnow_nodes(&[1; 5], true);
    let more = vec!["node-1".to_string(), "node-3".to_string()];
    nodes[4].faults.false_report = Some(FalseReport { sender: "node-2".into(), more, forge_evidence: false });
    let (cluster, out) = histogram_round(nodes, exact(), Hooks::default()).await;
    let out = out.unwrap();
    assert_eq!(out.release.contributors, vec!["node-0", "node-1", "node-2", "node-3"]);
    assert_eq!(counts(&out), expected_sum(&cluster, &out.release.contributors));
    let why = &out.exits["node-4"];
    assert!(why.starts_with("rejected: accused 3 peers in one round"), "{why}");
    assert_eq!(out.exits.len(), 1, "{:?}", out.exits);
    cluster.stop().await;
}

/// A report whose evidence is not the share the accused signed and the coordinator
/// relayed drops the reporter, never the accused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_with_evidence_the_sender_never_signed_drops_the_reporter() {
    let mut nodes = cdnow_nodes(&[1; 5], true);
    nodes[4].faults.false_report = Some(FalseReport { sender: "node-2".into(), more: vec![], forge_evidence: true });
    let (cluster, out) = histogram_round(nodes, exact(), Hooks::default()).await;
    let out = out.unwrap();
    assert_eq!(out.release.contributors, vec!["node-0", "node-1", "node-2", "node-3"]);
    assert_eq!(counts(&out), expected_sum(&cluster, &out.release.contributors));
    let why = &out.exits["node-4"];
    assert!(why.starts_with("rejected: reported a share from node-2 that is not one node-2 signed"), "{why}");
    assert!(!out.exits.contains_key("node-2"), "{:?}", out.exits);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_participants_means_no_release_and_a_clear_message() {
    // 5 nodes, t = 4; two drop: 3 remain, fewer than t.
    let mut nodes = cdnow_nodes(&[1; 5], true);
    nodes[0].faults.drop_at = Some(DropAt::AfterKeys);
    nodes[1].faults.drop_at = Some(DropAt::AfterShares);
    let cluster = Cluster::start(ClusterOptions {
        nodes,
        release: ReleaseRules { min_participants: 4, min_cohort: 0 },
        phase_timeout_seconds: 10,
        ..Default::default()
    })
    .await
    .unwrap();
    let err = cluster.segments(REFERENCE, "too few").await.unwrap_err();
    assert!(
        err.message().contains("fewer than the threshold t=4") || err.message().contains("fewer than"),
        "{}",
        err.message()
    );
    cluster.stop().await;

    // Release rule alone: 3 nodes connected but the release minimum is 4.
    let nodes = cdnow_nodes(&[1; 3], true);
    let cluster = Cluster::start(ClusterOptions {
        nodes,
        release: ReleaseRules { min_participants: 4, min_cohort: 0 },
        ..Default::default()
    })
    .await
    .unwrap();
    let err = cluster.segments(REFERENCE, "too few").await.unwrap_err();
    assert!(
        err.message().contains("only 3 nodes connected") && err.message().contains("at least 4"),
        "{}",
        err.message()
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_cells_of_the_global_result_are_suppressed() {
    let nodes = cdnow_nodes(&[1; 3], true);
    let opts = ClusterOptions { release: ReleaseRules { min_participants: 3, min_cohort: 50 }, ..Default::default() };
    let (cluster, out) = histogram_round(nodes, opts, Hooks::default()).await;
    let out = out.unwrap();
    let sums = expected_sum(&cluster, &out.release.contributors);
    for (c, s) in out.release.counts.iter().zip(&sums) {
        if let Some(v) = c {
            assert!(*v == *s && *s >= 50, "cell shown wrongly: {v} vs {s}");
        }
        if *s < 50 {
            assert!(c.is_none(), "a cell of {s} < 50 was released");
        }
    }
    // Each histogram's bins add up to the customer count: within each, the hidden cells
    // hold none or at least 50 (so neither a lone cell nor a small sum follows from it).
    let (mut at, mut hidden_anywhere) = (0, false);
    for spec in specs() {
        let (shown, truth) = (&out.release.counts[at..at + spec.len()], &sums[at..at + spec.len()]);
        let hidden: u64 = shown.iter().zip(truth).filter(|(c, _)| c.is_none()).map(|(_, s)| s).sum();
        assert!(shown.iter().all(Option::is_some) || hidden >= 50, "{spec:?}: hidden cells hold {hidden} < 50");
        hidden_anywhere |= shown.iter().any(Option::is_none);
        at += spec.len();
    }
    assert!(hidden_anywhere && out.release.counts.iter().any(Option::is_some));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_node_is_dropped_at_the_phase_deadline() {
    // node-1 keeps its connection open but never sends its shares.
    let mut nodes = cdnow_nodes(&[1; 5], true);
    nodes[1].faults.stall_at = Some(DropAt::AfterKeys);
    let opts = ClusterOptions { phase_timeout_seconds: 2, ..exact() };
    let (cluster, out) = histogram_round(nodes, opts, Hooks::default()).await;
    let out = out.unwrap();
    assert_eq!(out.release.contributors, vec!["node-0", "node-2", "node-3", "node-4"]);
    assert_eq!(counts(&out), expected_sum(&cluster, &out.release.contributors));
    assert_eq!(out.exits["node-1"], "timed out during round 1 (share keys)");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_vectors_travel_in_chunks_below_the_grpc_limit() {
    use fedcrm_analysis::rfm::Layout;
    // 2^20 one-cent bins of spend: d = 1,048,576 words = 8 MiB per node, twice
    // tonic's default 4 MiB message limit, sent as 16 chunks of 512 KiB.
    let spec = HistogramSpec { metric: Metric::Monetary, layout: Layout::Linear { lo: 0, width: 1, bins: 1 << 20 } };
    let mut nodes = cdnow_nodes(&[1; 3], true);
    for n in &mut nodes {
        // Far beyond the default policy's 1,024 bins: these franchisees allow it.
        n.policy.histograms.max_bins = 1 << 20;
    }
    let cluster = Cluster::start(ClusterOptions { nodes, ..exact() }).await.unwrap();
    let out = cluster.coordinator.run_histograms(&common::request("chunking"), vec![spec]).await.unwrap();
    let analysis = common::analysis(AnalysisKind::RfmHistograms(vec![spec]));
    let mut expected = vec![0u64; 1 << 20];
    for cfg in &cluster.node_configs {
        let ds = cfg.data.load().unwrap();
        let local = contribute(
            &analysis,
            &mut LocalData::new(&std::sync::Arc::new(ds).into(), &mut Cache::default()),
            &cfg.policy,
        )
        .unwrap();
        for (e, v) in expected.iter_mut().zip(local.vector.iter()) {
            *e += v;
        }
    }
    assert_eq!(out.release.contributors.len(), 3);
    assert_eq!(counts(&out), expected);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_chunks_reassemble_exactly() {
    let opts = ClusterOptions { chunk_elements: 7, ..exact() };
    let (cluster, out) = histogram_round(cdnow_nodes(&[1; 4], true), opts, Hooks::default()).await;
    let out = out.unwrap();
    assert_eq!(counts(&out), expected_sum(&cluster, &out.release.contributors));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contributor_refusing_to_sign_stops_the_round_so_its_data_is_not_released() {
    // node-0 wants four other organisations beside its own in every sum: U2 has them,
    // but node-4's masked input is lost (here: the coordinator ignores it), so U3 has
    // three. node-0's masked input is already in the sum; it refuses to sign, and the
    // round stops rather than unmask the others (which would release node-0's data
    // against its refusal).
    let mut nodes = cdnow_nodes(&[1; 5], true);
    nodes[0].policy.min_other_organisations = 3;
    let hooks = Hooks { ignore_masked_from: vec!["node-4".into()], ..Hooks::default() };
    let (cluster, out) = histogram_round(nodes, exact(), hooks).await;
    let err = out.unwrap_err().to_string();
    assert!(err.contains("node-0 refused after its masked input was in the sum"), "{err}");
    let node0 = read_log(&cluster.node_configs[0].audit_dir).unwrap();
    assert!(node0.iter().any(|r| r.kind == "masked-chunk"));
    assert!(!node0.iter().any(|r| r.kind == "consistency-signature" || r.kind == "unmask-shares"));
    let released = fedcrm_audit::log::read_records(&cluster.coordinator.config.audit_dir)
        .unwrap()
        .into_iter()
        .filter(|r| matches!(r.event, fedcrm_audit::Event::Release { .. }))
        .count();
    assert_eq!(released, 0);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_stopping_mid_round_ends_it_without_a_release() {
    // node-1 stalls, so the round would wait a minute for its shares.
    let mut nodes = cdnow_nodes(&[1; 5], true);
    nodes[1].faults.stall_at = Some(DropAt::AfterKeys);
    let cluster = Cluster::start(ClusterOptions { nodes, phase_timeout_seconds: 600, ..exact() }).await.unwrap();
    let coordinator = cluster.coordinator.clone();
    let analysis =
        tokio::spawn(async move { coordinator.run_histograms(&common::request("stopped midway"), specs()).await });
    let audit = cluster.coordinator.config.audit_dir.clone();
    let started = || {
        fedcrm_audit::log::read_records(&audit)
            .unwrap()
            .iter()
            .any(|r| matches!(r.event, fedcrm_audit::Event::RoundStarted { .. }))
    };
    for _ in 0..3000 {
        if started() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(started(), "the round never started");
    // SIGTERM reaches the coordinator mid-round.
    cluster.coordinator.stop();
    let err = analysis.await.unwrap().expect_err("a stopping coordinator releases nothing");
    assert!(
        matches!(err, AnalysisError::Round(fedcrm_coordinator::round::RoundError::ShuttingDown)),
        "ended by the shutdown, not by the phase deadline: {err}"
    );
    // No new analysis starts either.
    let again = cluster.coordinator.run_histograms(&common::request("after stop"), specs()).await.unwrap_err();
    assert!(again.to_string().contains("shutting down"), "{again}");
    let records = fedcrm_audit::log::read_records(&audit).unwrap();
    assert!(!records.iter().any(|r| matches!(r.event, fedcrm_audit::Event::Release { .. })));
    assert!(records.iter().any(
        |r| matches!(&r.event, fedcrm_audit::Event::AnalysisFailed { reason, .. } if reason.contains("shutting down"))
    ));
    cluster.stop().await;
}

/// Var(N_Z(0, σ²)) and its fourth moment, from the probability mass (|x| ≤ 200 holds
/// all of it to f64 precision for σ² ≤ 100).
fn discrete_gaussian_moments(variance: f64) -> (f64, f64) {
    let w: Vec<(f64, f64)> =
        (-200i32..=200).map(|x| (x as f64, (-(x as f64).powi(2) / (2.0 * variance)).exp())).collect();
    let z: f64 = w.iter().map(|(_, p)| p).sum();
    let m2 = w.iter().map(|(x, p)| x * x * p).sum::<f64>() / z;
    let m4 = w.iter().map(|(x, p)| x.powi(4) * p).sum::<f64>() / z;
    (m2, m4)
}

/// Issue 10: run with DP and `[rounds] noise_variance = [4, 1]`, every node adds
/// N_Z(0, 4) to each word before masking; over repeated single-round histogram
/// analyses, release − exact sum has mean 0 and variance n·Var(N_Z(0, 4)) (n = 5
/// contributors), each within 5 standard errors computed from the exact moments of
/// the discrete Gaussian. Only cells whose exact sum is at least 40 are used (chosen
/// from the exact sums, so independent of the noise): the release door clamps
/// negative noisy counts to 0, which at 40 ≈ 9σ of the summed noise never happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noised_rounds_release_the_sum_plus_noise_of_the_stated_variance() {
    let mut nodes = cdnow_nodes(&[1; 5], true);
    // Ten noised analyses at σ² = 4: a budget that holds them (this test is about the
    // noise, tests/privacy.rs about budgets).
    for n in &mut nodes {
        n.policy.privacy.monthly_rho = Some(100.0);
    }
    let opts = ClusterOptions { nodes, noise_variance: Some([4, 1]), ..exact() };
    let cluster = Cluster::start(opts).await.unwrap();
    let mut diffs: Vec<f64> = Vec::new();
    let mut differs = 0usize;
    for run in 0..10 {
        let request =
            fedcrm_coordinator::analyses::AnalysisRequest { dp: true, ..common::request(&format!("noise run {run}")) };
        let out = cluster.coordinator.run_histograms(&request, specs()).await;
        let out = out.unwrap_or_else(|e| panic!("run {run}: {e}"));
        assert_eq!(out.release.contributors.len(), 5, "run {run}: every node's noise is in the sum");
        let exact = expected_sum(&cluster, &out.release.contributors);
        for (c, s) in counts(&out).iter().zip(&exact) {
            differs += usize::from(c != s);
            if *s >= 40 {
                diffs.push(*c as f64 - *s as f64);
            }
        }
    }
    assert!(differs > 0, "noise was added: some released cell differs from the exact sum");
    let n = 5.0;
    let (v, m4) = discrete_gaussian_moments(4.0);
    let (var_sum, m4_sum) = (n * v, n * m4 + 3.0 * n * (n - 1.0) * v * v);
    let k = diffs.len() as f64;
    assert!(k >= 200.0, "enough cells: {k}");
    let mean = diffs.iter().sum::<f64>() / k;
    // The mean of k independent sums: standard error √(nσ²/k).
    let mean_se = (var_sum / k).sqrt();
    assert!(mean.abs() < 5.0 * mean_se, "mean {mean} vs 0 ± 5 × {mean_se}");
    // The mean square (the mean is known to be 0): standard error √(Var(S²)/k), with
    // Var(S²) = E[S⁴] − (E[S²])² and E[S⁴] = n·m4 + 3n(n − 1)·v² for n iid zero-mean terms.
    let ms = diffs.iter().map(|d| d * d).sum::<f64>() / k;
    let ms_se = ((m4_sum - var_sum * var_sum) / k).sqrt();
    assert!((ms - var_sum).abs() < 5.0 * ms_se, "variance {ms} vs {var_sum} ± 5 × {ms_se} over {k} cells");
    cluster.stop().await;
}

/// Issue 10: HQ signing noise calibrated for more honest nodes than the invitees' rules
/// allow (k = 4 where 5 franchisees of 5 organisations, t = 4 and one assumed
/// colluding organisation leave t − H − C = 3) is refused by every node, naming the
/// rule, before anything is masked: no analysis result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_refuse_noise_calibrated_for_more_honest_nodes_than_their_rules_allow() {
    let noise = fedcrm_protocol::wire::Noise { variance: fedcrm_dp::sampler::Variance::integer(4).unwrap(), honest: 4 };
    let hooks = Hooks { force_noise: Some(noise), ..Hooks::default() };
    let (cluster, out) = histogram_round(cdnow_nodes(&[1; 5], true), exact(), hooks).await;
    assert!(out.is_err(), "a round every node refuses releases nothing");
    for node in common::node_names(5) {
        let why = common::refusals_when(&cluster, &node, |r| r.contains("t − H − C")).await;
        assert!(
            why.iter().any(|r| r.contains("k = 4") && r.contains("t − H − C = 3") && r.contains("1 ≤ k ≤ t − H − C")),
            "{node}: {why:?}"
        );
    }
    cluster.stop().await;
}
