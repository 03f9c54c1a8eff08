//! Issue 10: `fedcrm hq budget` — every node's privacy budget as the coordinator knows
//! it, over the analyst's mTLS API: the same figures as the coordinator's own table
//! after a noised analysis, an enrolled node that never connected listed as unknown
//! (never as zero), and its JSON, table and CSV renderings. Budget months are read from
//! a fixed clock (no outcome depends on the real calendar).

mod common;

use std::sync::Arc;

use fedcrm::harness::{Cluster, ClusterOptions, NodeSpec};
use fedcrm::hq::{AnalystClient, BUDGET_UNKNOWN, BudgetView, HqConfig, budget_csv, budget_table};
use fedcrm_coordinator::analyses::AnalysisRequest;
use fedcrm_coordinator::config::ReleaseRules;
use fedcrm_node::privacy::{DpMode, Privacy};

/// 2026-11-15T12:00:00Z: the middle of a month, by the injected clock.
const FIXED_MS: u64 = 1_794_744_000_000;

/// Enrolled, never started.
const ABSENT: &str = "node-9";

use common::{Fixed, coarse_specs as specs};

/// Five franchisees, all `dp = "required"` with a ρ budget, except node-4 with an ε
/// budget (the default ε = 4 at δ = 1e-6) and node-3 with a higher noise floor. As in
/// tests/privacy.rs, one round of the three coarse histograms costs each ρ = 1/32.
fn nodes() -> Vec<NodeSpec> {
    let mut nodes = common::cdnow_nodes(&[1; 5], true);
    for n in &mut nodes {
        n.policy.privacy = Privacy { dp: DpMode::Required, monthly_rho: Some(10.0), ..Privacy::default() };
    }
    nodes[1].policy.privacy.monthly_rho = Some(0.07);
    nodes[3].policy.privacy.min_noise_variance = [9, 2];
    nodes[4].policy.privacy.monthly_rho = None;
    nodes
}

async fn cluster() -> Cluster {
    let opts = ClusterOptions {
        nodes: nodes(),
        extra_enrolled: vec![(ABSENT.to_string(), format!("{ABSENT} franchise ltd"))],
        release: ReleaseRules { min_participants: 3, min_cohort: 0 },
        phase_timeout_seconds: 10,
        clock: Some(Arc::new(Fixed(FIXED_MS))),
        ..Default::default()
    };
    Cluster::start(opts).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hq_budget_shows_the_coordinators_figures_and_unknown_nodes_as_unknown() {
    common::logs();
    let cluster = cluster().await;
    let request = AnalysisRequest { dp: true, ..common::request("hq budget test") };
    let out = cluster.coordinator.run_histograms(&request, specs()).await.unwrap();
    assert_eq!(out.release.contributors.len(), 5);
    let charge = 1.0 / 32.0;

    let mut hq = AnalystClient::connect(&cluster.analyst).await.unwrap();
    let reply = hq.budgets().await.unwrap();
    let view = BudgetView::new(&reply);
    assert_eq!(view.month, "2026-11");
    assert_eq!(view.coordinator, cluster.coordinator.config.name);

    // Every enrolled node, in enrolment order: the five connected, then the absent one.
    let names: Vec<&str> = view.nodes.iter().map(|r| r.node.as_str()).collect();
    let mut enrolled = common::node_names(5);
    enrolled.push(ABSENT.to_string());
    assert_eq!(names, enrolled);

    // Each connected node's row is the coordinator's own.
    let table = cluster.coordinator.budgets.table(FIXED_MS);
    assert_eq!(table.len(), 5);
    for want in &table {
        let got = view.nodes.iter().find(|r| r.node == want.node).unwrap();
        assert!(got.known, "{got:?}");
        assert_eq!(got.dp.as_deref(), Some(want.dp));
        assert_eq!(got.dp.as_deref(), Some("required"));
        assert_eq!(got.budget.as_deref(), Some(want.budget.as_str()));
        assert_eq!(got.charges, Some(1), "{}: one noised analysis", want.node);
        assert_eq!(got.charges.map(|c| c as usize), Some(want.charges));
        assert_eq!((got.spent_rho, got.spent_xi), (Some(want.rho), Some(want.xi)));
        assert!((want.rho - charge).abs() < 1e-12, "{want:?}");
        assert_eq!(got.unit.as_deref(), Some(want.unit));
        assert_eq!((got.used, got.limit, got.remaining), (Some(want.used), Some(want.limit), Some(want.remaining)));
        assert!((want.remaining - (want.limit - want.used)).abs() < 1e-12, "{want:?}");
        assert_eq!(got.min_noise_variance.as_deref(), Some(want.min_noise_variance.as_str()));
        assert_eq!(want.month, view.month);
    }
    let row = |n: &str| view.nodes.iter().find(|r| r.node == n).unwrap();
    // A ρ budget: used is the charge.
    assert_eq!((row("node-1").unit.as_deref(), row("node-1").limit), (Some("rho"), Some(0.07)));
    assert!((row("node-1").used.unwrap() - charge).abs() < 1e-12);
    assert!((row("node-1").remaining.unwrap() - (0.07 - charge)).abs() < 1e-12);
    // An ε budget: used is the charge in ε at its δ, somewhere within the limit.
    let e = row("node-4");
    assert_eq!((e.unit.as_deref(), e.limit), (Some("epsilon"), Some(4.0)));
    assert!(e.used.unwrap() > 0.0 && e.used.unwrap() < 4.0, "{e:?}");
    assert_eq!(
        (row("node-3").min_noise_variance.as_deref(), row("node-0").min_noise_variance.as_deref()),
        (Some("9/2"), Some("4"))
    );

    // The never-connected node: unknown, no figures.
    let absent = row(ABSENT);
    assert!(!absent.known, "{absent:?}");
    assert!(absent.dp.is_none() && absent.budget.is_none() && absent.charges.is_none(), "{absent:?}");
    assert!(absent.used.is_none() && absent.limit.is_none() && absent.remaining.is_none(), "{absent:?}");

    // JSON: the documented field names, nulls for the unknown node, and a round trip.
    let json = serde_json::to_string_pretty(&view).unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    let mut top = keys(&value);
    top.sort();
    assert_eq!(top, ["coordinator", "month", "nodes"]);
    let mut fields = keys(&value["nodes"][0]);
    fields.sort();
    assert_eq!(
        fields,
        [
            "budget",
            "charges",
            "dp",
            "known",
            "limit",
            "min_noise_variance",
            "node",
            "remaining",
            "spent_rho",
            "spent_xi",
            "unit",
            "used"
        ]
    );
    assert_eq!(value["nodes"][5]["known"], false);
    assert!(value["nodes"][5]["used"].is_null() && value["nodes"][5]["charges"].is_null(), "{json}");
    assert_eq!(value["nodes"][1]["unit"], "rho");
    assert_eq!(serde_json::from_str::<BudgetView>(&json).unwrap(), view);

    // The table: every node, the units, the unknown node said in words.
    let text = budget_table(&view);
    for n in &enrolled {
        assert!(text.contains(n.as_str()), "{n} missing from\n{text}");
    }
    assert!(text.contains("ρ 0.03875 of 0.07"), "{text}");
    assert!(text.contains("ε ") && text.contains("of 4"), "{text}");
    let absent_line = text.lines().find(|l| l.contains(ABSENT)).unwrap();
    assert!(absent_line.ends_with(BUDGET_UNKNOWN), "{text}");

    // The CSV: a header, then one line per enrolled node.
    let csv = budget_csv(&view);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + enrolled.len(), "{csv}");
    assert!(lines[0].starts_with("month,node,known,"), "{csv}");
    assert!(lines[2].starts_with("2026-11,node-1,true,required,"), "{csv}");
    // Every digit: the figures read back as the coordinator's.
    let cols: Vec<&str> = lines[2].split(',').collect();
    let n1 = row("node-1");
    let figures: Vec<f64> = cols[9..12].iter().map(|c| c.parse().unwrap()).collect();
    assert_eq!(figures, [n1.used.unwrap(), n1.limit.unwrap(), n1.remaining.unwrap()], "{csv}");
    assert_eq!(cols[7].parse::<f64>().unwrap().to_bits(), n1.spent_xi.unwrap().to_bits(), "{csv}");
    assert_eq!(lines[6], format!("2026-11,{ABSENT},false,,,,,,,,,,"));
    cluster.stop().await;
}

/// Like every analyst call, `Budgets` needs an analyst certificate: a node's own
/// certificate from the brand CA is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_cannot_read_the_budgets() {
    common::logs();
    let cluster = cluster().await;
    let as_node = HqConfig { tls: cluster.node_configs[0].tls.clone(), ..cluster.analyst.clone() };
    let mut client = AnalystClient::connect(&as_node).await.unwrap();
    let err = client.budgets().await.expect_err("a node certificate must not read the budgets");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(err.message().contains("analyst calls need an analyst certificate"), "{}", err.message());
    cluster.stop().await;
}
