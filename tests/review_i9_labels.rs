//! Review of issue 9 (keys once per analysis, `fedcrm/v6`): a later round of an
//! analysis skips AdvertiseKeys and the key roster, and the key roster was the only
//! place a node checked the invitation's labels (organisation, kind) against the
//! certificates. So in a later round HQ can describe its own nodes as independent
//! franchisees in the signed invitation and every rule that counts organisations or
//! HQ-owned nodes — the organisation rule, H in the threshold rule, and the
//! differencing guard — is evaluated on labels HQ chose.
//!
//! The attack: seven nodes, node-0..node-3 franchisees (one organisation each),
//! node-4..node-6 HQ-owned. The first round of a segment analysis is over all seven
//! (labels checked against certificates). HQ then leaves node-1 out of the later
//! rounds. Two sums over the same population that differ by node-1 alone give
//! node-1's data, so the differencing guard of node-0, node-2 and node-3 must refuse
//! (it does: `control_leaving_one_franchisee_out_is_refused_by_the_differencing_guard`).
//! With HQ's three nodes relabelled as three franchisee organisations in the later
//! rounds, the symmetric difference of the two sums counts them (`Invitee` compares
//! labels too) and passes the guard: node-0, node-2 and node-3 mask and answer.

mod common;

use std::sync::Arc;

use common::{REFERENCE, cdnow_nodes};
use fedcrm::harness::{Cluster, ClusterOptions, NodeSpec};
use fedcrm_analysis::rules::Invitee;
use fedcrm_coordinator::config::ReleaseRules;
use fedcrm_coordinator::round::Hooks;
use fedcrm_node::egress::read_log;
use fedcrm_node::session::RoundTap;
use fedcrm_pki::OrgKind;

const HONEST: [&str; 3] = ["node-0", "node-2", "node-3"];

fn nodes() -> Vec<NodeSpec> {
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

fn options() -> ClusterOptions {
    ClusterOptions {
        nodes: nodes(),
        release: ReleaseRules { min_participants: 3, min_cohort: 0 },
        phase_timeout_seconds: 10,
        ..Default::default()
    }
}

fn sent(cluster: &Cluster, node: &str) -> Vec<String> {
    let cfg = cluster.node_configs.iter().find(|c| c.name == node).unwrap();
    read_log(&cfg.audit_dir).unwrap().into_iter().map(|e| e.kind).collect()
}

fn count(kinds: &[String], kind: &str) -> usize {
    kinds.iter().filter(|k| *k == kind).count()
}

/// Control: HQ leaves node-1 out of the later rounds, labels true. Every honest node's
/// differencing guard refuses before its masked input of a later round leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_leaving_one_franchisee_out_is_refused_by_the_differencing_guard() {
    common::logs();
    let hooks = Hooks { exclude_later: vec!["node-1".into()], ..Hooks::default() };
    let cluster = Cluster::start_with_hooks(options(), hooks).await.unwrap();
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
/// three nodes as three franchisee organisations. Nothing checks those labels against
/// the certificates the setup verified, so the differencing guard counts them and
/// passes. This test asserts what should happen (the honest nodes refuse the later
/// rounds) and FAILS on `a3cb366`: they answer every later round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relabelled_hq_nodes_in_a_later_round_pass_the_differencing_guard() {
    common::logs();
    let relabel = (4..7)
        .map(|i| Invitee {
            name: format!("node-{i}"),
            organisation: format!("node-{i} franchise ltd"),
            kind: OrgKind::Franchisee,
        })
        .collect();
    let hooks = Hooks { exclude_later: vec!["node-1".into()], relabel_later: relabel, ..Hooks::default() };
    let cluster = Cluster::start_with_hooks(options(), hooks).await.unwrap();
    let out = cluster.segments(REFERENCE, "review i9: relabelled HQ nodes").await;
    let mut answered = Vec::new();
    for n in HONEST {
        let kinds = sent(&cluster, n);
        let refusals = common::refusals(&cluster, n);
        eprintln!("{n}: sent {kinds:?}\n{n}: refusals {refusals:?}");
        if count(&kinds, "unmask-shares") > 1 {
            answered.push(n);
        }
    }
    cluster.stop().await;
    assert!(
        answered.is_empty(),
        "{answered:?} helped unmask later rounds over the first round's population minus node-1 alone (HQ's \
         nodes relabelled as franchisees in the later rounds' invitation); analysis: {:?}",
        out.map(|r| r.rounds)
    );
}
