//! Keys once per analysis (issue 9; `fedcrm_crypto::multiround`) end to end over real
//! mutual TLS on loopback: an analysis's first round sets up its keys and every later
//! round reuses them — no node advertises keys twice — and the result still equals the
//! pooled answer; a node declared dropped takes no further part (a coordinator that
//! invites it back is refused by every node that saw it dropped); a round naming keys
//! a node does not hold is refused before anything leaves; and a later round must label
//! every node as the first round did, where the certificates were checked (found in
//! review: HQ relabelling its own nodes as franchisees to pass the differencing guard).

mod common;

use std::sync::Arc;

use common::{REFERENCE, cdnow_nodes};
use fedcrm::harness::{Cluster, ClusterOptions, NodeSpec};
use fedcrm::hq::SegmentsView;
use fedcrm_analysis::rules::Invitee;
use fedcrm_coordinator::config::ReleaseRules;
use fedcrm_coordinator::round::Hooks;
use fedcrm_node::egress::read_log;
use fedcrm_node::session::RoundTap;
use fedcrm_pki::OrgKind;

fn options(nodes: Vec<NodeSpec>) -> ClusterOptions {
    ClusterOptions {
        nodes,
        release: ReleaseRules { min_participants: 3, min_cohort: 0 },
        phase_timeout_seconds: 10,
        ..Default::default()
    }
}

/// The kinds of message `node` sent, in order (its egress log).
fn sent(cluster: &Cluster, node: &str) -> Vec<String> {
    let cfg = cluster.node_configs.iter().find(|c| c.name == node).unwrap();
    read_log(&cfg.audit_dir).unwrap().into_iter().map(|e| e.kind).collect()
}

fn count(kinds: &[String], kind: &str) -> usize {
    kinds.iter().filter(|k| *k == kind).count()
}

/// Full SecAgg over six nodes, the segment analysis (a histogram pass, refinement
/// passes, the segment counts): each node advertises keys once, in the first round,
/// and seals fresh shares in every round; the segments equal the pooled answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analysis_advertises_keys_once_and_still_equals_pooled() {
    common::logs();
    let nodes = cdnow_nodes(&[1; 6], true);
    let cluster = Cluster::start(options(nodes.clone())).await.unwrap();
    let reply = cluster.segments(REFERENCE, "test: keys once per analysis").await.expect("segments");
    let view = SegmentsView::new(&reply, REFERENCE);
    assert_eq!(view.participants.len(), 6);
    common::assert_equals_pooled(&view, &nodes);
    assert!(reply.rounds >= 3, "a segment analysis takes several rounds: {}", reply.rounds);
    for n in &view.participants {
        let kinds = sent(&cluster, n);
        assert_eq!(count(&kinds, "advertise-keys"), 1, "{n}: {kinds:?}");
        assert_eq!(count(&kinds, "sealed-shares"), reply.rounds as usize, "{n}: {kinds:?}");
        assert_eq!(count(&kinds, "unmask-shares"), reply.rounds as usize, "{n}: {kinds:?}");
    }
    cluster.stop().await;
}

/// The coordinator ignores node-2's masked vector in the first round, so node-2 is
/// declared dropped and its neighbours reveal their round pair seeds with it; the round
/// releases the others' sum. Then HQ invites node-2 back into the next round: every
/// node that saw it dropped refuses before sealing a share, naming it, and the
/// analysis stops without a result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_declared_dropped_is_refused_when_invited_back() {
    common::logs();
    let nodes = cdnow_nodes(&[1; 6], true);
    let hooks = Hooks { ignore_masked_from: vec!["node-2".into()], reinvite_dropped: true, ..Hooks::default() };
    let cluster = Cluster::start_with_hooks(options(nodes), hooks).await.unwrap();
    let out = cluster.segments(REFERENCE, "test: a dropped node comes back").await;
    assert!(out.is_err(), "the analysis stops: {out:?}");
    for n in ["node-0", "node-1", "node-3", "node-4", "node-5"] {
        let why = common::refusals_when(&cluster, n, |r| r.contains("declared dropped")).await;
        assert!(
            why.iter().any(|r| r.contains("the contributors name node-2, declared dropped in round")),
            "{n}: {why:?}"
        );
        // The first round's shares and answer, and nothing of the second round.
        let kinds = sent(&cluster, n);
        assert_eq!(count(&kinds, "sealed-shares"), 1, "{n}: {kinds:?}");
        assert_eq!(count(&kinds, "unmask-shares"), 1, "{n}: {kinds:?}");
    }
    cluster.stop().await;
}

/// Later rounds name a setup round that never was: no node holds its keys, so every
/// node refuses the round before anything of it leaves, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_naming_keys_a_node_does_not_hold_is_refused() {
    common::logs();
    let nodes = cdnow_nodes(&[1; 5], true);
    let hooks = Hooks { stale_setup: true, ..Hooks::default() };
    let cluster = Cluster::start_with_hooks(options(nodes), hooks).await.unwrap();
    let out = cluster.segments(REFERENCE, "test: a stale setup").await;
    assert!(out.is_err(), "the analysis stops: {out:?}");
    for n in common::node_names(5) {
        let why = common::refusals_when(&cluster, &n, |r| r.contains("which this node does not hold")).await;
        assert!(why.iter().any(|r| r.contains("with the keys set up in round 5e5e5e5e")), "{n}: {why:?}");
        assert_eq!(count(&sent(&cluster, &n), "sealed-shares"), 1, "{n}");
    }
    cluster.stop().await;
}

const HONEST: [&str; 3] = ["node-0", "node-2", "node-3"];

/// node-0..node-3 franchisees of four organisations; node-4..node-6 HQ's own channels,
/// colluding (they skip their rules and sign any view).
fn with_hq_channels() -> Vec<NodeSpec> {
    cdnow_nodes(&[1; 7], true)
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            if i < 4 {
                return s;
            }
            // HQ's own channels: they skip their rules and sign any view.
            let mut h = NodeSpec::hq(&s.name, s.data.clone());
            h.round_tap = Some(RoundTap {
                on_held_shares: Arc::new(|_, _| {}),
                on_roster: None,
                sign_any_view: true,
                fail_audit: None,
            });
            h
        })
        .collect()
}

/// Control: HQ leaves node-1 out of the later rounds, labels true. Every honest node's
/// differencing guard refuses before its masked input of a later round leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_leaving_one_franchisee_out_is_refused_by_the_differencing_guard() {
    common::logs();
    let hooks = Hooks { exclude_later: vec!["node-1".into()], ..Hooks::default() };
    let cluster = Cluster::start_with_hooks(options(with_hq_channels()), hooks).await.unwrap();
    let out = cluster.segments(REFERENCE, "review i9: one franchisee left out").await;
    assert!(out.is_err(), "the analysis stops: {out:?}");
    for n in HONEST {
        let why = common::refusals_when(&cluster, n, |r| r.contains("differencing")).await;
        assert!(why.iter().any(|r| r.contains("differencing") && r.contains("node-1")), "{n}: {why:?}");
        let kinds = sent(&cluster, n);
        assert_eq!(count(&kinds, "unmask-shares"), 1, "{n}: only the first round is answered: {kinds:?}");
    }
    cluster.stop().await;
}

/// The attack: as the control, but the later rounds' signed invitation describes HQ's
/// three nodes as three franchisee organisations, so that the two sums would differ by
/// four "organisations" and pass the differencing guard. Every honest node refuses the
/// later round before sealing a share, naming the relabelled node and the label its
/// certificate gave it in the first round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_round_relabelling_hq_nodes_as_franchisees_is_refused() {
    common::logs();
    let relabel = (4..7)
        .map(|i| Invitee {
            name: format!("node-{i}"),
            organisation: format!("node-{i} franchise ltd"),
            kind: OrgKind::Franchisee,
        })
        .collect();
    let hooks = Hooks { exclude_later: vec!["node-1".into()], relabel_later: relabel, ..Hooks::default() };
    let cluster = Cluster::start_with_hooks(options(with_hq_channels()), hooks).await.unwrap();
    let out = cluster.segments(REFERENCE, "review i9: relabelled HQ nodes").await;
    assert!(out.is_err(), "the analysis stops: {out:?}");
    for n in HONEST {
        let why = common::refusals_when(&cluster, n, |r| r.contains("as its certificate was checked then")).await;
        assert!(
            why.iter().any(|r| r.contains("describes node-4 as (node-4 franchise ltd, franchisee)")),
            "{n}: {why:?}"
        );
        let kinds = sent(&cluster, n);
        assert_eq!(count(&kinds, "sealed-shares"), 1, "{n}: nothing of a later round leaves: {kinds:?}");
    }
    cluster.stop().await;
}

/// Issue 11, the population pin: HQ's coordinator leaves three franchisees of three
/// organisations out of the later rounds. The differencing guard allows that pair of
/// sums (they differ by three organisations and share four), but every node that
/// signed the first round's view holds the analysis to that round's contributors and
/// refuses the later round over the final U2 — before its masked vector, or any charge,
/// leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_round_without_part_of_the_population_is_refused_by_the_pin() {
    common::logs();
    // Eight franchisees of eight organisations (t = 5); the later rounds invite five.
    let left_out: Vec<String> = (5..8).map(|i| format!("node-{i}")).collect();
    let hooks = Hooks { exclude_later: left_out, ..Hooks::default() };
    let cluster = Cluster::start_with_hooks(options(cdnow_nodes(&[1; 8], true)), hooks).await.unwrap();
    let out = cluster.segments(REFERENCE, "issue 11: three franchisees left out of later rounds").await;
    assert!(out.is_err(), "the analysis stops: {out:?}");
    for n in ["node-0", "node-1", "node-2", "node-3", "node-4"] {
        let why = common::refusals_when(&cluster, n, |r| r.contains("must sum exactly its population")).await;
        assert!(
            why.iter().any(|r| r.contains("lacks node-5, node-6, node-7") && !r.contains("differencing")),
            "{n}: {why:?}"
        );
        let kinds = sent(&cluster, n);
        assert_eq!(count(&kinds, "masked-chunk"), 1, "{n}: only the first round's vector left: {kinds:?}");
        assert_eq!(count(&kinds, "unmask-shares"), 1, "{n}: {kinds:?}");
    }
    cluster.stop().await;
}
