//! Issue 10: privacy budgets each node enforces itself, over mTLS. A node charges its
//! monthly budget just before its noised, masked vector leaves it (an fsynced
//! `privacy-charged` audit record), refuses a round its remaining budget does not
//! allow before anything of it leaves, and announces what it has spent in its Hello,
//! so the coordinator refuses such an analysis up front, naming the node. A round
//! aborted after the noised vectors left costs again when retried. Budget months are
//! read from a fixed clock (no outcome depends on the real calendar).

mod common;

use std::sync::Arc;

use fedcrm::harness::{Cluster, ClusterOptions, NodeSpec};
use fedcrm_audit::{Event, Record};
use fedcrm_coordinator::analyses::{AnalysisError, AnalysisRequest};
use fedcrm_coordinator::config::ReleaseRules;
use fedcrm_coordinator::round::{Hooks, RoundError};
use fedcrm_node::privacy::{DpMode, Privacy};
use fedcrm_node::session::DropAt;

/// 2026-11-15T12:00:00Z: the middle of a month, by the injected clock.
const MID_NOVEMBER_MS: u64 = 1_794_744_000_000;

use common::{Fixed, coarse_specs as specs};

/// With differential privacy, the analyst's default.
fn dp_request(purpose: &str) -> AnalysisRequest {
    AnalysisRequest { dp: true, ..common::request(purpose) }
}

/// Five franchisees of five organisations, all `dp = "required"`: t = 4, H = 0, C = 1,
/// so k = 3 and, at the default σ² = 16 per node, one round of the three coarse
/// histograms (Δ₂² = 3) costs ρ = 3 / (2 · 3 · 16) = 1/32. node-1's budget (ρ = 0.07)
/// holds two such rounds, not three.
fn nodes() -> Vec<NodeSpec> {
    let mut nodes = common::cdnow_nodes(&[1; 5], true);
    for n in &mut nodes {
        n.policy.privacy = Privacy { dp: DpMode::Required, monthly_rho: Some(10.0), ..Privacy::default() };
    }
    nodes[1].policy.privacy.monthly_rho = Some(0.07);
    nodes
}

fn options(nodes: Vec<NodeSpec>) -> ClusterOptions {
    ClusterOptions {
        nodes,
        release: ReleaseRules { min_participants: 3, min_cohort: 0 },
        phase_timeout_seconds: 10,
        clock: Some(Arc::new(Fixed(MID_NOVEMBER_MS))),
        ..Default::default()
    }
}

fn records(dir: &std::path::Path) -> Vec<Record> {
    fedcrm_audit::log::read_records(dir).unwrap()
}

fn node_records(cluster: &Cluster, node: &str) -> Vec<Record> {
    records(&cluster.node_configs.iter().find(|c| c.name == node).unwrap().audit_dir)
}

/// (round, ρ) of every charge in a node's own log.
fn own_charges(cluster: &Cluster, node: &str) -> Vec<(String, f64)> {
    node_records(cluster, node)
        .into_iter()
        .filter_map(|r| match r.event {
            Event::PrivacyCharged { round, rho, node, .. } if node.is_empty() => Some((round, rho)),
            _ => None,
        })
        .collect()
}

/// The rounds the coordinator's log records `node` as charged for.
fn coordinator_charges(cluster: &Cluster, node: &str) -> Vec<String> {
    records(&cluster.coordinator.config.audit_dir)
        .into_iter()
        .filter_map(|r| match r.event {
            Event::PrivacyCharged { round, node: n, .. } if n == node => Some(round),
            _ => None,
        })
        .collect()
}

/// The latest round `node` was invited to, by its own log.
fn last_round(cluster: &Cluster, node: &str) -> String {
    node_records(cluster, node)
        .into_iter()
        .rev()
        .find_map(|r| match r.event {
            Event::RoundStarted { round, .. } => Some(round),
            _ => None,
        })
        .expect("the node logged a round start")
}

/// Every message `node` sent in `round`, by its own log.
fn egress_in(cluster: &Cluster, node: &str, round: &str) -> Vec<String> {
    node_records(cluster, node)
        .into_iter()
        .filter_map(|r| match r.event {
            Event::Egress { round: Some(x), message, .. } if x == round => Some(message),
            _ => None,
        })
        .collect()
}

/// The auditor's report on the coordinator's and every node's log, over the days the
/// records cover (taken from the records, not the real calendar).
fn audit_report(cluster: &Cluster) -> fedcrm_audit::report::Report {
    let mut logs = vec![records(&cluster.coordinator.config.audit_dir)];
    logs.extend(cluster.node_configs.iter().map(|c| records(&c.audit_dir)));
    let day = |ms: u64| time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64).unwrap().date();
    let times = logs.iter().flatten().map(|r| r.time_ms);
    let (from, to) = (day(times.clone().min().unwrap()), day(times.max().unwrap()));
    fedcrm_audit::report::build(&logs, from, to, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_over_its_budget_refuses_before_anything_leaves_and_hq_refuses_up_front() {
    common::logs();
    let cluster = Cluster::start(options(nodes())).await.unwrap();
    let charge = 1.0 / 32.0;
    for i in 0..2 {
        let out = cluster.coordinator.run_histograms(&dp_request(&format!("spend {i}")), specs()).await;
        let out = out.unwrap_or_else(|e| panic!("analysis {i}: {e}"));
        assert_eq!(out.release.contributors.len(), 5, "analysis {i}: all five within budget");
    }
    // Each node charged itself once per analysis, as the coordinator recorded it.
    for node in common::node_names(5) {
        let own = own_charges(&cluster, &node);
        assert_eq!(own.len(), 2, "{node}: {own:?}");
        assert!(own.iter().all(|(_, rho)| (rho - charge).abs() < 1e-12), "{node}: {own:?}");
        let rounds: Vec<String> = own.into_iter().map(|(r, _)| r).collect();
        assert_eq!(coordinator_charges(&cluster, &node), rounds, "{node}: both logs record the same charges");
    }
    // HQ's view of node-1: 2 charges, 0.0625 of 0.07 used.
    let row = cluster.coordinator.budgets.table(MID_NOVEMBER_MS).into_iter().find(|r| r.node == "node-1").unwrap();
    assert_eq!((row.charges, row.unit, row.month.as_str()), (2, "rho", "2026-11"));
    assert!((row.used - 2.0 * charge).abs() < 1e-12 && (row.remaining - (0.07 - 2.0 * charge)).abs() < 1e-12);

    // A third analysis: the coordinator refuses it up front, naming node-1; no round starts.
    let started = |c: &Cluster| {
        records(&c.coordinator.config.audit_dir)
            .iter()
            .filter(|r| matches!(r.event, Event::RoundStarted { .. }))
            .count()
    };
    let before = started(&cluster);
    let err = cluster.coordinator.run_histograms(&dp_request("one too many"), specs()).await.unwrap_err();
    let AnalysisError::Round(RoundError::OverBudget(why)) = &err else { panic!("{err}") };
    assert!(why.starts_with("node-1: its privacy budget") && !why.contains("node-0"), "{why}");
    assert!(err.to_string().contains("refused before it started"), "{err}");
    assert_eq!(started(&cluster), before, "no round started");

    // The auditor's report: per node, the month's two charges in both logs, none
    // flagged, and node-1's spending as node-1 itself recorded it.
    let report = audit_report(&cluster);
    let privacy = &report.privacy;
    assert!(privacy.coordinator_log_read);
    assert!(privacy.mismatches.is_empty(), "{:?}", privacy.mismatches);
    let nodes: Vec<&str> = privacy.months.iter().map(|m| m.node.as_str()).collect();
    assert_eq!(nodes, common::node_names(5));
    for m in &privacy.months {
        let (own, seen) = (m.node_log.as_ref().unwrap(), m.coordinator_log.as_ref().unwrap());
        assert_eq!((m.month.as_str(), own.charges, seen.charges), ("2026-11", 2, 2), "{}", m.node);
        assert!((own.rho - 2.0 * charge).abs() < 1e-12 && (seen.rho - own.rho).abs() < 1e-12, "{m:?}");
        assert_eq!(m.per_analysis.len(), 2, "{}: one charge per analysis", m.node);
        assert!(m.per_analysis.iter().all(|a| a.node_log.as_ref().unwrap().charges == 1), "{m:?}");
    }
    let node1 = privacy.months.iter().find(|m| m.node == "node-1").unwrap().node_log.clone().unwrap();
    assert!(node1.budget.starts_with("ρ = 0.07"), "{}", node1.budget);
    assert!((node1.used.unwrap() - 2.0 * charge).abs() < 1e-12 && node1.limit == Some(0.07), "{node1:?}");
    let md = fedcrm_audit::report::markdown(&report);
    assert!(md.contains("## 7. Privacy budget") && md.contains("0.0625 of 0.07 (ρ)"), "{md}");
    cluster.stop().await;
}

/// The same budgets under a coordinator that does not check them (HQ starting the round
/// anyway): node-1 refuses itself at the round start, naming its budget; nothing of the
/// round but its refusal leaves it; its log and the coordinator's both say why, and its
/// ledger is unchanged. (The others then refuse too, before masking: a sum without
/// node-1 would differ from the earlier ones by node-1 alone — the differencing guard.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_itself_when_hq_ignores_its_budget() {
    common::logs();
    let hooks = Hooks { ignore_budgets: true, ..Hooks::default() };
    let cluster = Cluster::start_with_hooks(options(nodes()), hooks).await.unwrap();
    for i in 0..2 {
        cluster.coordinator.run_histograms(&dp_request(&format!("spend {i}")), specs()).await.unwrap();
    }
    let err = cluster.coordinator.run_histograms(&dp_request("over node-1's budget"), specs()).await.unwrap_err();
    let exit = err.to_string();
    assert!(exit.contains("node-1: refused: policy: privacy budget") && exit.contains("renews on the 1st"), "{exit}");
    let round = last_round(&cluster, "node-1");
    let why = common::refusals_when(&cluster, "node-1", |r| r.contains("privacy budget")).await;
    assert!(why.iter().any(|r| r.contains("2 charge(s) of 2026-11") && r.contains("of the 0.07 allowed")), "{why:?}");
    assert_eq!(egress_in(&cluster, "node-1", &round), vec!["refusal"], "only the refusal left node-1");
    assert_eq!(own_charges(&cluster, "node-1").len(), 2, "the refused round cost nothing");
    assert_eq!(own_charges(&cluster, "node-0").len(), 2, "node-0 refused before masking: no charge either");
    let coordinator_says = records(&cluster.coordinator.config.audit_dir).into_iter().any(|r| {
        matches!(&r.event, Event::NodeExit { round: x, node, reason }
            if *x == round && node == "node-1" && reason.contains("privacy budget"))
    });
    assert!(coordinator_says, "the coordinator's log records node-1's reason");
    cluster.stop().await;
}

/// A round aborted after the noised vectors left (two nodes vanish when asked to
/// unmask, leaving 3 < t = 4) releases nothing, but every node whose vector left was
/// charged; the analysis run again charges them again: a retried round costs twice
/// (otherwise averaging retries would remove the noise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_round_is_charged_twice() {
    common::logs();
    let mut nodes = nodes();
    nodes[3].faults.drop_at = Some(DropAt::AfterMasked);
    nodes[4].faults.drop_at = Some(DropAt::AfterMasked);
    let mut cluster = Cluster::start(options(nodes)).await.unwrap();
    let err = cluster.coordinator.run_histograms(&dp_request("aborted"), specs()).await.unwrap_err();
    assert!(err.to_string().contains("fewer than the threshold"), "{err}");
    for node in common::node_names(5) {
        assert_eq!(own_charges(&cluster, &node).len(), 1, "{node}: its noised vector left, so it paid");
    }
    for node in ["node-3", "node-4"] {
        cluster.restart_node(node).await.unwrap();
        // Its ledger survived the restart (rebuilt from its audit log): its Hello says so.
        let announced = cluster.coordinator.budgets.announced(node).unwrap();
        assert_eq!((announced.charges, announced.month.to_string().as_str()), (1, "2026-11"), "{node}");
        assert!((announced.spent.rho - 1.0 / 32.0).abs() < 1e-12, "{node}: {announced:?}");
    }
    let out = cluster.coordinator.run_histograms(&dp_request("retried"), specs()).await.unwrap();
    assert_eq!(out.release.contributors.len(), 5);
    for node in common::node_names(5) {
        let own = own_charges(&cluster, &node);
        assert_eq!(own.len(), 2, "{node}: charged for the aborted round and again for the retry: {own:?}");
        assert_ne!(own[0].0, own[1].0);
    }
    // Every vector that left arrived: the auditor's report finds both logs agree.
    let privacy = audit_report(&cluster).privacy;
    assert!(privacy.mismatches.is_empty(), "{:?}", privacy.mismatches);
    assert!(privacy.months.iter().all(|m| m.coordinator_log.as_ref().unwrap().charges == 2), "{:?}", privacy.months);
    // node-1 (ρ = 0.07) has room for no third round: HQ knows it from the restarted
    // nodes' Hellos and its own records.
    let err = cluster.coordinator.run_histograms(&dp_request("third"), specs()).await.unwrap_err();
    assert!(err.to_string().contains("node-1: its privacy budget"), "{err}");
    cluster.stop().await;
}

/// Attack review of issue 10: HQ shows node-0 a round start with far more noise than
/// the others add (σ² = 400 against 16), so that node-0 would charge its budget for
/// noise that is not in the sum. Each share is signed over the round start its sender
/// was shown, so the shares between node-0 and the others do not verify: node-0
/// refuses before masking, naming the coordinator, charges nothing and sends no masked
/// input; nothing is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shown_other_noise_than_the_others_refuses_before_masking() {
    common::logs();
    let noise =
        fedcrm_protocol::wire::Noise { variance: fedcrm_dp::sampler::Variance::integer(400).unwrap(), honest: 3 };
    let hooks = Hooks { noise_for_node: Some(("node-0".into(), noise)), ..Hooks::default() };
    let cluster = Cluster::start_with_hooks(options(nodes()), hooks).await.unwrap();
    let err = cluster.coordinator.run_histograms(&dp_request("split noise"), specs()).await.unwrap_err();
    assert!(!matches!(err, AnalysisError::Round(RoundError::OverBudget(_))), "{err}");
    let why = common::refusals_when(&cluster, "node-0", |r| r.contains("another round start")).await;
    assert!(why.iter().any(|r| r.contains("the coordinator is at fault")), "{why:?}");
    let round = last_round(&cluster, "node-0");
    let sent = egress_in(&cluster, "node-0", &round);
    assert!(!sent.iter().any(|m| m.contains("masked")), "node-0 sent no masked input: {sent:?}");
    for node in common::node_names(5) {
        assert!(own_charges(&cluster, &node).is_empty(), "{node} charged nothing: nobody masked");
    }
    cluster.stop().await;
}

/// Issue 10: the RFM segment analysis under differential privacy, through the analyst
/// API over mTLS. It runs the fixed pass plan (coarse, at most two refinements, the
/// segment count); the release states its noise and cost, and the cost equals the
/// charges every node recorded, within the plan's up-front bound. Every segment count
/// is within 5 standard deviations of the noise of the exact count under the released
/// cut points, and every cut point splits the pooled customers near its quintile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfm_segments_under_dp_state_their_noise_and_cost_and_stay_within_it() {
    common::logs();
    let mut nodes = nodes();
    nodes[1].policy.privacy.monthly_rho = Some(10.0);
    let cluster = Cluster::start(options(nodes)).await.unwrap();
    let reply = cluster.segments_with(common::REFERENCE, "segments under DP", true).await.unwrap();
    let p = reply.privacy.clone().expect("a noised release states its noise");
    assert_eq!((p.per_node_variance.as_str(), p.honest_nodes), ("16", 3));
    assert!((p.noise_sd - (5.0f64 * 16.0).sqrt()).abs() < 1e-9, "{p:?}");
    assert!((2..=4).contains(&p.rounds) && p.rounds == reply.rounds, "{p:?} vs {} rounds", reply.rounds);
    // The stated cost is what each node charged itself, and within the plan's bound.
    for node in common::node_names(5) {
        let own: f64 = own_charges(&cluster, &node).iter().map(|(_, rho)| rho).sum();
        assert!((own - p.rho).abs() < 1e-9 * p.rho, "{node}: charged {own}, release says {}", p.rho);
    }
    let noise =
        fedcrm_protocol::wire::Noise { variance: fedcrm_dp::sampler::Variance::integer(16).unwrap(), honest: 3 };
    assert!(p.rho <= fedcrm_coordinator::analyses::rfm::dp_plan_charge(&noise).rho + 1e-12);
    assert!(p.epsilon > 0.0 && (p.delta - 1e-6).abs() < 1e-18);

    // The exact counts under the released cuts, from every node's data.
    let view = fedcrm::hq::SegmentsView::new(&reply, common::REFERENCE);
    let cut = |v: &[u64]| -> [u64; 4] { v.try_into().unwrap() };
    let cuts = fedcrm_analysis::rfm::Cuts {
        recency: cut(&view.recency_cuts),
        frequency: cut(&view.frequency_cuts),
        monetary: cut(&view.monetary_cuts_cents),
    };
    let reference = fedcrm_analysis::date::parse_date(common::REFERENCE).unwrap();
    let mut customers = Vec::new();
    for cfg in &cluster.node_configs {
        let ds = cfg.data.load().unwrap();
        customers.extend(fedcrm_node::features::rfm(&ds.purchases, reference).into_iter().map(|(_, r)| r));
    }
    let mut exact = [0u64; 4];
    for c in &customers {
        exact[cuts.segment_of(c).index()] += 1;
    }
    for (row, e) in view.segments.iter().zip(exact) {
        let got = row.customers.expect("min_cohort 0: nothing withheld") as f64;
        assert!((got - e as f64).abs() <= 5.0 * p.noise_sd, "{}: {got} vs exact {e} (sd {})", row.segment, p.noise_sd);
    }
    // Each cut point sits near its quintile of the pooled customers: at most 2 % of
    // them off (ties aside: customers strictly below ≤ k/5 + 2 %, at or below ≥ k/5 − 2 %).
    for m in fedcrm_analysis::rfm::Metric::ALL {
        let values: Vec<u64> = customers.iter().map(|c| c.value(m)).collect();
        let n = values.len() as f64;
        for (k, &c) in cuts.of(m).iter().enumerate() {
            let q = (k + 1) as f64 / 5.0;
            let below = values.iter().filter(|&&v| v < c).count() as f64 / n;
            let at_or_below = values.iter().filter(|&&v| v <= c).count() as f64 / n;
            assert!(below <= q + 0.02 && at_or_below >= q - 0.02, "{m:?} cut {k} = {c}: {below}..{at_or_below} vs {q}");
        }
    }
    cluster.stop().await;
}

/// The split-noise attack on a later round of an analysis (keys set up once, reused):
/// the RFM segment analysis under DP runs its first round with the same start for all,
/// then shows node-0 other noise in the second. Its later-round shares are signed over
/// that round's own start, so node-0 refuses before masking again: every node paid for
/// the first round only, and nothing is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_round_showing_one_node_other_noise_is_refused_before_masking() {
    common::logs();
    let noise =
        fedcrm_protocol::wire::Noise { variance: fedcrm_dp::sampler::Variance::integer(400).unwrap(), honest: 3 };
    let hooks = Hooks {
        noise_for_node: Some(("node-0".into(), noise)),
        noise_for_node_in_later_rounds_only: true,
        ..Hooks::default()
    };
    let mut nodes = nodes();
    nodes[1].policy.privacy.monthly_rho = Some(10.0);
    let cluster = Cluster::start_with_hooks(options(nodes), hooks).await.unwrap();
    let request = AnalysisRequest { dp: true, ..common::request("split noise in a later round") };
    let err = cluster.coordinator.run_segments(&request).await.unwrap_err();
    assert!(!matches!(err, AnalysisError::Privacy(_)), "{err}");
    let why = common::refusals_when(&cluster, "node-0", |r| r.contains("another round start")).await;
    assert!(why.iter().any(|r| r.contains("the coordinator is at fault")), "{why:?}");
    for node in common::node_names(5) {
        assert_eq!(own_charges(&cluster, &node).len(), 1, "{node} paid for the first round only");
    }
    cluster.stop().await;
}
