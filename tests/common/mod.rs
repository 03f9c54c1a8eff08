//! Shared helpers for the cross-crate tests.
#![allow(dead_code)]

use fedcrm::harness::{CDNOW, Cluster, ClusterOptions, NodeSpec, split_cdnow};
use fedcrm::hq::SegmentsView;
use fedcrm::pooled;

/// The CDNOW reference date used by the tests (README: RFM definitions).
pub const REFERENCE: &str = "1997-09-30";

pub fn node_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("node-{i}")).collect()
}

/// CDNOW split by customer into nodes named node-0.. with the given weights.
pub fn cdnow_nodes(weights: &[u32], interleave: bool) -> Vec<NodeSpec> {
    split_cdnow(CDNOW, weights, interleave)
        .into_iter()
        .zip(node_names(weights.len()))
        .map(|(data, name)| NodeSpec::franchisee(&name, data))
        .collect()
}

/// The pooled answer over the named nodes' data.
pub fn pooled_over(specs: &[NodeSpec], names: &[String]) -> pooled::PooledSegments {
    let text: String = specs.iter().filter(|s| names.contains(&s.name)).map(|s| s.data.as_str()).collect();
    pooled::segments(&pooled::parse_cdnow(&text), REFERENCE.replace('-', "").parse().unwrap())
}

/// Run the federated segment analysis on `nodes` and check it equals the pooled
/// answer over the contributors' data: every cut point and every segment count.
/// Returns the federated view.
pub async fn check(nodes: Vec<NodeSpec>, opts: ClusterOptions, expected_contributors: usize) -> SegmentsView {
    let cluster = Cluster::start(ClusterOptions { nodes: nodes.clone(), ..opts }).await.unwrap();
    let reply = cluster.segments(REFERENCE, "test: segments equal pooled").await.expect("segments");
    let view = SegmentsView::new(&reply, REFERENCE);
    assert_eq!(view.participants.len(), expected_contributors, "contributors: {:?}", view.participants);
    assert_equals_pooled(&view, &nodes);
    cluster.stop().await;
    view
}

/// The federated view equals the pooled answer over its contributors' data: every cut
/// point and every segment count.
pub fn assert_equals_pooled(view: &SegmentsView, nodes: &[NodeSpec]) {
    let p = pooled_over(nodes, &view.participants);
    assert_eq!(view.customers, Some(p.customers), "customers");
    assert_eq!(view.recency_cuts, p.recency, "recency cut points");
    assert_eq!(view.frequency_cuts, p.frequency, "frequency cut points");
    assert_eq!(view.monetary_cuts_cents, p.monetary, "monetary cut points");
    let counts: Vec<u64> = view.segments.iter().map(|s| s.customers.expect("no cell suppressed")).collect();
    assert_eq!(counts, p.counts.to_vec(), "segment counts (high-value, potential, dormant, other)");
}

/// A test analyst's request for the reference date.
pub fn request(purpose: &str) -> fedcrm_coordinator::analyses::AnalysisRequest {
    fedcrm_coordinator::analyses::AnalysisRequest {
        reference_date: fedcrm_analysis::date::parse_date(REFERENCE).unwrap(),
        purpose: purpose.into(),
        requested_by: "analyst.test".into(),
        requested_by_organisation: "Demo Jewellery HQ".into(),
        dp: false,
    }
}

/// The analysis a node sees for `kind` at the reference date.
pub fn analysis(kind: fedcrm_protocol::wire::AnalysisKind) -> fedcrm_protocol::wire::Analysis {
    fedcrm_protocol::wire::Analysis {
        reference_date: fedcrm_analysis::date::parse_date(REFERENCE).unwrap(),
        purpose: "t".into(),
        requested_by: "analyst.test".into(),
        requested_by_organisation: "Demo Jewellery HQ".into(),
        analysis_id: "t".into(),
        analysis_kind: kind.name().into(),
        kind,
    }
}

/// Log to stderr when FEDCRM_TEST_LOG is set (e.g. `FEDCRM_TEST_LOG=info`).
pub fn logs() {
    if let Ok(filter) = std::env::var("FEDCRM_TEST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
}

/// The node's refusal reasons, from its own audit log.
pub fn refusals(cluster: &Cluster, node: &str) -> Vec<String> {
    let cfg = cluster.node_configs.iter().find(|c| c.name == node).unwrap();
    fedcrm_audit::log::read_records(&cfg.audit_dir)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.event {
            fedcrm_audit::Event::PolicyDecision { admitted: false, reason, .. } => Some(reason),
            _ => None,
        })
        .collect()
}

/// [`refusals`] once one matches `what`, or after 10 s: a node records its refusal just
/// after it decides, and an analysis can end (another node refused first) before it
/// has, so a test that reads at once would race the node.
pub async fn refusals_when(cluster: &Cluster, node: &str, what: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let found = refusals(cluster, node);
        if found.iter().any(|r| what(r)) || std::time::Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A clock fixed at one instant (ms since the epoch), so that no test outcome depends on
/// the real calendar (budget months, issue 10).
#[derive(Debug)]
pub struct Fixed(pub u64);

impl fedcrm_audit::log::Clock for Fixed {
    fn now_ms(&self) -> u64 {
        self.0
    }
}

/// The three power-of-two R/F/M histograms (the coarse pass).
pub fn coarse_specs() -> Vec<fedcrm_analysis::rfm::HistogramSpec> {
    fedcrm_analysis::rfm::Metric::ALL.iter().map(|&m| fedcrm_analysis::rfm::QuantileSearch::coarse_spec(m)).collect()
}

/// A second inside a certificate's validity (e.g. the model publisher's): its
/// `notBefore` plus a day, so no outcome depends on the real clock.
pub fn inside_validity(cert_pem: &str) -> u64 {
    use x509_parser::prelude::FromDer as _;
    let der = fedcrm_pki::pem_to_der_certs(cert_pem).unwrap().remove(0);
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
    cert.validity().not_before.timestamp() as u64 + 86_400
}

/// One pooled CDNOW churn example: raw features, label, and whether the keyed split
/// (the coordinator's default holdout key, 30 %) holds the customer out.
pub struct CdnowExample {
    pub raw: Vec<f64>,
    pub churned: bool,
    pub test: bool,
}

/// The pooled churn examples of every CDNOW customer, parsed here from the same text
/// the nodes were given — apart from the node's reader, so a federated result checked
/// against them is checked against a separate computation.
pub fn cdnow_examples(
    spec: &fedcrm_model::features::FeatureSpec,
    window: &fedcrm_model::features::Window,
) -> Vec<CdnowExample> {
    use fedcrm_model::features::{Customer, Txn, example};
    let mut by: std::collections::BTreeMap<String, Vec<Txn>> = Default::default();
    for line in CDNOW.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 4 || !f[1].bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let d = f[1];
        let day = time::Date::from_calendar_date(
            d[..4].parse().unwrap(),
            time::Month::try_from(d[4..6].parse::<u8>().unwrap()).unwrap(),
            d[6..].parse().unwrap(),
        )
        .unwrap();
        let cents = fedcrm_node::data::parse_cents(f[3]).unwrap();
        by.entry(f[0].to_string()).or_default().push(Txn {
            day,
            cents,
            quantity: f[2].parse().unwrap(),
            category: None,
        });
    }
    let key = fedcrm_coordinator::analyses::churn::default_holdout_key();
    let split = fedcrm_model::split::HoldoutSplit::new(&key, 0.3).unwrap();
    by.iter()
        .filter_map(|(id, txns)| {
            let e = example(spec, &Customer { txns, birthday: None, anniversary: None }, window)?;
            Some(CdnowExample { raw: e.features, churned: e.churned, test: split.is_test(id.as_bytes()) })
        })
        .collect()
}

/// Two of HQ's channels and three franchisees of a synthetic brand: (name, kind,
/// purchases CSV, consent withdrawals).
pub fn synthetic_channels(customers: usize, seed: u64) -> Vec<(String, fedcrm_pki::OrgKind, String, String)> {
    let data =
        fedcrm::demodata::generate(&fedcrm::demodata::Options { customers, ..fedcrm::demodata::Options::new(seed) })
            .unwrap();
    let file = |node: &str, name: &str| -> String {
        let path = std::path::Path::new(node).join(name);
        String::from_utf8(data.files.iter().find(|(p, _)| *p == path).unwrap().1.clone()).unwrap()
    };
    let hq = data.manifest.nodes.iter().filter(|e| e.kind == fedcrm_pki::OrgKind::Hq).take(2);
    let fr = data.manifest.nodes.iter().filter(|e| e.kind == fedcrm_pki::OrgKind::Franchisee).take(3);
    hq.chain(fr)
        .map(|e| (e.name.clone(), e.kind, file(&e.name, "purchases.csv"), file(&e.name, "consent-withdrawals.csv")))
        .collect()
}

/// The reference's own reading of a synthetic export ([`pooled::synthetic_phones`]).
pub fn plaintext_phones(csv: &str, withdrawn: &str) -> std::collections::BTreeSet<String> {
    pooled::synthetic_phones(csv, withdrawn)
}

/// [`synthetic_channels`] as the harness's node specs (CSV, phones, consent
/// withdrawals), with each channel's plaintext phones for the reference.
pub fn synthetic_specs(
    customers: usize,
    seed: u64,
) -> (Vec<NodeSpec>, Vec<(String, std::collections::BTreeSet<String>)>) {
    let (mut specs, mut plain) = (Vec::new(), Vec::new());
    for (name, kind, purchases, withdrawn) in synthetic_channels(customers, seed) {
        plain.push((name.clone(), plaintext_phones(&purchases, &withdrawn)));
        let mut spec = match kind {
            fedcrm_pki::OrgKind::Hq => NodeSpec::hq(&name, purchases),
            fedcrm_pki::OrgKind::Franchisee => NodeSpec::franchisee(&name, purchases),
        };
        spec.format = fedcrm_node::data::Format::Csv;
        spec.withdrawn = withdrawn
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect();
        specs.push(spec);
    }
    (specs, plain)
}

/// How many messages the nodes' transports took (of `node` alone, or of every node) whose
/// body `is` picks; the cluster must capture the wire (`capture_wire`).
pub fn sent(cluster: &Cluster, node: Option<&str>, is: fn(&fedcrm_protocol::pb::node_message::Body) -> bool) -> usize {
    use prost::Message;
    let captures = cluster.captures.lock().unwrap();
    captures
        .iter()
        .filter(|(name, _)| node.is_none_or(|n| n == name.as_str()))
        .flat_map(|(_, messages)| messages)
        .filter_map(|m| fedcrm_protocol::pb::NodeMessage::decode(m.as_slice()).ok()?.body)
        .filter(is)
        .count()
}

/// A deployment for a model analysis over `nodes`: at least 3 contributors, no
/// small-cell rule (a model's figures are not counts), 30-second phases.
pub fn model_options(nodes: Vec<fedcrm::harness::NodeSpec>) -> fedcrm::harness::ClusterOptions {
    fedcrm::harness::ClusterOptions {
        nodes,
        release: fedcrm_coordinator::config::ReleaseRules { min_participants: 3, min_cohort: 0 },
        phase_timeout_seconds: 30,
        ..Default::default()
    }
}
