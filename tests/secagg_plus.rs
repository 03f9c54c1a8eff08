//! SecAgg+ (Bell et al. CCS 2020) on the wire, over real mutual TLS on loopback: each
//! node shares keys and masks only with its neighbours in a random graph that it draws
//! itself from nonces every node committed to; the segments analysis still equals the
//! pooled answer over its contributors, with a node dropping after its shares. A
//! coordinator that leaves out or alters a reveal, or shows one node a view that only
//! t_k signers (not a majority of U1) signed, is refused by the node it deceives.
//!
//! The graphs here are forced (`Hooks::force_graph`): `graph::parameters` chooses
//! SecAgg+ only from ~100 nodes (below that no graph sparser than the complete one
//! meets its bounds); `tests/scale.rs` runs it at 1,000 nodes as chosen.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::{REFERENCE, cdnow_nodes};
use fedcrm::harness::{Cluster, ClusterOptions, NodeSpec};
use fedcrm::hq::SegmentsView;
use fedcrm_coordinator::config::ReleaseRules;
use fedcrm_coordinator::round::Hooks;
use fedcrm_node::session::{DropAt, RoundTap};
use fedcrm_protocol::wire::Sealed;

/// Degree 6, neighbourhood threshold 4: each franchisee node (own organisation,
/// assume_colluding_nodes = 1) needs 2t > 6 + 0 + 1.
const GRAPH: (usize, usize) = (6, 4);

fn options(nodes: Vec<NodeSpec>) -> ClusterOptions {
    ClusterOptions {
        nodes,
        release: ReleaseRules { min_participants: 3, min_cohort: 0 },
        phase_timeout_seconds: 15,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn segments_over_a_secagg_plus_graph_equal_pooled_with_a_node_dropping_after_its_shares() {
    common::logs();
    let mut nodes = cdnow_nodes(&[1; 12], true);
    nodes[5].faults.drop_at = Some(DropAt::AfterShares);
    // Whom each node's sealed shares address, per round.
    let addressed: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
    let seen = addressed.clone();
    let hooks = Hooks {
        force_graph: Some(GRAPH),
        on_sealed_shares: Some(Arc::new(move |node: &str, shares: &[Sealed]| {
            seen.lock().unwrap().push((node.to_string(), shares.len()))
        })),
        ..Hooks::default()
    };
    let cluster = Cluster::start_with_hooks(options(nodes.clone()), hooks).await.unwrap();
    let reply = cluster.segments(REFERENCE, "test: SecAgg+ equals pooled").await.expect("segments");
    let view = SegmentsView::new(&reply, REFERENCE);
    assert_eq!(view.participants.len(), 11, "every node but node-5: {:?}", view.participants);
    assert!(!view.participants.contains(&"node-5".to_string()));
    common::assert_equals_pooled(&view, &nodes);
    // Sparse: in the analysis's first round every node sealed shares to its k = 6
    // neighbours only, never to all 11 others; in its later rounds (the same graph,
    // without node-5) to its neighbours among the contributors.
    let addressed = addressed.lock().unwrap().clone();
    let (first, later) = addressed.split_at(12);
    assert!(first.iter().all(|(_, n)| *n == GRAPH.0), "{first:?}");
    assert!(!later.is_empty() && later.iter().all(|(_, n)| *n == GRAPH.0 || *n == GRAPH.0 - 1), "{later:?}");
    assert!(later.iter().any(|(_, n)| *n == GRAPH.0 - 1), "node-5's neighbours: {later:?}");
    cluster.stop().await;
}

/// The coordinator leaves one committed node's reveal out of node-0's key roster (it
/// would choose among graphs by choosing whose reveals count), and alters one in
/// node-1's (a graph of its own making): each refuses before any share leaves, saying
/// why; the others finish the analysis without them, equal to the pooled answer.
#[tokio::test(flavor = "multi_thread")]
async fn a_reveal_left_out_or_altered_by_the_coordinator_is_refused_before_any_share_leaves() {
    common::logs();
    let nodes = cdnow_nodes(&[1; 12], true);
    let sealed_by: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let seen = sealed_by.clone();
    let hooks = Hooks {
        force_graph: Some(GRAPH),
        tamper_nonces: Some(Arc::new(|to: &str, nonces: &mut Vec<(String, [u8; 32])>| match to {
            "node-0" => nonces.retain(|(n, _)| n != "node-7"),
            "node-1" => {
                if let Some((_, nonce)) = nonces.iter_mut().find(|(n, _)| n == "node-2") {
                    nonce[0] ^= 1;
                }
            }
            _ => {}
        })),
        on_sealed_shares: Some(Arc::new(move |node: &str, _: &[Sealed]| {
            *seen.lock().unwrap().entry(node.to_string()).or_default() += 1;
        })),
        ..Hooks::default()
    };
    let cluster = Cluster::start_with_hooks(options(nodes.clone()), hooks).await.unwrap();
    let reply = cluster.segments(REFERENCE, "test: tampered reveals").await.expect("segments");
    let view = SegmentsView::new(&reply, REFERENCE);
    for deceived in ["node-0", "node-1"] {
        assert!(!view.participants.contains(&deceived.to_string()), "{deceived} in {:?}", view.participants);
        assert!(!sealed_by.lock().unwrap().contains_key(deceived), "{deceived} sealed shares");
    }
    let r0 = common::refusals_when(&cluster, "node-0", |r| r.contains("not exactly those")).await;
    assert!(r0.iter().any(|r| r.contains("not exactly those of the signed commitments")), "{r0:?}");
    let r1 = common::refusals_when(&cluster, "node-1", |r| r.contains("does not open")).await;
    assert!(r1.iter().any(|r| r.contains("node-2 revealed a nonce that does not open its commitment")), "{r1:?}");
    assert_eq!(view.participants.len(), 10, "{:?}", view.participants);
    common::assert_equals_pooled(&view, &nodes);
    cluster.stop().await;
}

/// Split view under SecAgg+: the coordinator shows node-0 a view in which node-6
/// dropped, and four colluding nodes sign that view too. Five valid signatures are
/// more than t_k = 4 (HQ's nodes alone can reach t_k in a large round), so full
/// SecAgg's check would pass; SecAgg+'s needs more than (|U1| + H + C)/2 = 6.5 of U1,
/// so node-0 refuses to reveal anything.
#[tokio::test(flavor = "multi_thread")]
async fn a_split_view_signed_by_t_k_nodes_but_not_a_majority_is_refused() {
    common::logs();
    let mut nodes = cdnow_nodes(&[1; 12], true);
    let colluders = ["node-8", "node-9", "node-10", "node-11"];
    for n in nodes.iter_mut().filter(|n| colluders.contains(&n.name.as_str())) {
        n.round_tap = Some(RoundTap {
            on_held_shares: Arc::new(|_, _| {}),
            on_roster: None,
            sign_any_view: true,
            fail_audit: None,
        });
    }
    let split = Arc::new(move |node: &str, survivors: &mut Vec<String>, dropped: &mut Vec<String>| {
        if node == "node-0" || colluders.contains(&node) {
            survivors.retain(|n| n != "node-6");
            dropped.push("node-6".into());
            dropped.sort();
        }
    });
    let hooks = Hooks { force_graph: Some(GRAPH), tamper_view: Some(split), ..Hooks::default() };
    let cluster = Cluster::start_with_hooks(options(nodes), hooks).await.unwrap();
    // Whatever the analysis ends with, node-0 must not have revealed on the split view.
    let _ = cluster.segments(REFERENCE, "test: split view").await;
    let r0 = common::refusals_when(&cluster, "node-0", |r| r.contains("valid signature(s)")).await;
    assert!(
        r0.iter()
            .any(|r| r.contains("5 valid signature(s)") && r.contains("fewer than the 7 this node needs in SecAgg+")),
        "{r0:?}"
    );
    cluster.stop().await;
}

/// The view quorum is one signed value for the whole round. A coordinator that signs
/// q = t_k (which HQ's own nodes can reach in a large round) with the commitments is
/// refused by every node before it reveals its nonce: each needs 2q > |U1| + H + C.
#[tokio::test(flavor = "multi_thread")]
async fn a_view_quorum_below_a_majority_of_u1_is_refused_before_any_nonce_is_revealed() {
    common::logs();
    let nodes = cdnow_nodes(&[1; 12], true);
    let hooks = Hooks { force_graph: Some(GRAPH), force_quorum: Some(GRAPH.1), ..Hooks::default() };
    let cluster = Cluster::start_with_hooks(options(nodes), hooks).await.unwrap();
    let err = cluster.segments(REFERENCE, "test: weak quorum").await.unwrap_err();
    assert!(err.message().contains("did not reveal"), "{}", err.message());
    for node in ["node-0", "node-5", "node-11"] {
        let why = common::refusals_when(&cluster, node, |r| r.contains("quorum")).await;
        assert!(why.iter().any(|r| r.contains("quorum q = 4 is unsafe") && r.contains("q >= 7")), "{node}: {why:?}");
    }
    cluster.stop().await;
}

/// A node that commits and then vanishes before revealing its nonce stops only that
/// attempt: the coordinator starts the round again without it (nothing but keys,
/// commitments and nonces had moved), and the analysis equals the pooled answer over
/// the others.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_commits_and_vanishes_before_revealing_costs_one_restart() {
    common::logs();
    let mut nodes = cdnow_nodes(&[1; 12], true);
    nodes[3].faults.drop_at = Some(DropAt::BeforeReveal);
    let hooks = Hooks { force_graph: Some(GRAPH), ..Hooks::default() };
    let cluster = Cluster::start_with_hooks(options(nodes.clone()), hooks).await.unwrap();
    let reply = cluster.segments(REFERENCE, "test: a missing reveal").await.expect("segments");
    let view = SegmentsView::new(&reply, REFERENCE);
    assert_eq!(view.participants.len(), 11, "{:?}", view.participants);
    assert!(!view.participants.contains(&"node-3".to_string()));
    common::assert_equals_pooled(&view, &nodes);
    cluster.stop().await;
}

/// A coordinator that keeps stopping rounds once every nonce is in (each stop gives it
/// another random graph to choose from) gets MAX_ABANDONED_GRAPHS graphs per analysis:
/// then every node refuses the analysis' further rounds.
#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_stopping_rounds_after_the_reveals_is_refused_after_three() {
    common::logs();
    let nodes = cdnow_nodes(&[1; 12], true);
    let hooks = Hooks { force_graph: Some(GRAPH), stop_graphs: 5, ..Hooks::default() };
    let cluster = Cluster::start_with_hooks(options(nodes), hooks).await.unwrap();
    assert!(cluster.segments(REFERENCE, "test: grinding").await.is_err());
    let max = fedcrm_node::session::MAX_ABANDONED_GRAPHS;
    for node in ["node-0", "node-7"] {
        let why = common::refusals_when(&cluster, node, |r| r.contains("after this node revealed")).await;
        assert!(why.iter().any(|r| r.contains(&format!("stopped {max} SecAgg+ rounds"))), "{node}: {why:?}");
    }
    cluster.stop().await;
}
