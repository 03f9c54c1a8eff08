//! Compliance end to end: what the auditor's report says each node sent equals the
//! bytes captured at each node's transport; HQ's own channels cannot form a quorum
//! that exposes a franchisee; manual approval holds everything back until granted;
//! all parties' audit logs verify together, and cutting one is detected.

mod common;

use std::path::PathBuf;

use common::{REFERENCE, cdnow_nodes};
use fedcrm::harness::{Cluster, ClusterOptions, NodeSpec};
use fedcrm_audit::report::{self, Report};
use fedcrm_audit::verify::{Problem, verify_paths};
use fedcrm_audit::{Event, log::read_records};
use fedcrm_node::approvals::Approvals;
use fedcrm_node::egress::read_log;
use fedcrm_pki::OrgKind;
use fedcrm_protocol::pb;
use prost::Message;

fn ca_der(cluster: &Cluster) -> Vec<u8> {
    let pem = std::fs::read_to_string(cluster.pki.ca_path()).unwrap();
    fedcrm_pki::pem_to_der_certs(&pem).unwrap().remove(0)
}

fn log_paths(cluster: &Cluster) -> Vec<PathBuf> {
    let mut v = vec![cluster.coordinator.config.audit_dir.clone()];
    v.extend(cluster.node_configs.iter().map(|c| c.audit_dir.clone()));
    v
}

fn todays_report(cluster: &Cluster) -> Report {
    let paths = log_paths(cluster);
    verify_paths(&paths, &ca_der(cluster)).expect("all logs verify");
    let logs: Vec<_> = paths.iter().map(|p| read_records(p).unwrap()).collect();
    let (from, to) = span(&logs);
    report::build(&logs, from, to, None)
}

/// The days the logs cover, one either side — taken from the records, never from the
/// real calendar.
fn span(logs: &[Vec<fedcrm_audit::Record>]) -> (time::Date, time::Date) {
    let day = |ms: u64| time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64).unwrap().date();
    let times = logs.iter().flatten().map(|r| r.time_ms);
    let (lo, hi) = (times.clone().min().unwrap(), times.max().unwrap());
    (day(lo).previous_day().unwrap(), day(hi).next_day().unwrap())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditors_report_matches_the_bytes_on_the_wire_and_the_policies() {
    let mut nodes = cdnow_nodes(&[1; 4], true);
    // node-3's policy allows only stand-alone histogram analyses: it refuses every
    // round of a segment analysis.
    nodes[3].policy.allowed_analyses = vec!["rfm-histograms".into()];
    let opts = ClusterOptions { nodes, capture_wire: true, ..Default::default() };
    let cluster = Cluster::start(opts).await.unwrap();
    let a = cluster.segments(REFERENCE, "Q3 CRM review").await.unwrap();
    let b = cluster.segments("1997-12-31", "year-end win-back planning").await.unwrap();
    assert_eq!(a.participants, vec!["node-0", "node-1", "node-2"]);
    assert_eq!(b.participants, a.participants);
    let captures = cluster.captures.lock().unwrap().clone();
    let ca = ca_der(&cluster);
    let paths = log_paths(&cluster);
    let node_configs = cluster.node_configs.clone();
    let _dir = cluster.stop().await;

    let logs: Vec<_> = paths.iter().map(|p| read_records(p).unwrap()).collect();
    let verified = verify_paths(&paths, &ca).expect("all logs verify");
    assert!(verified.receipts_checked > 50, "receipts checked: {}", verified.receipts_checked);
    let (from, to) = span(&logs);
    let r = report::build(&logs, from, to, None);

    for cfg in &node_configs {
        // What the transport took, with the receipt stripped (the log records the
        // message it signs a head for; see node/src/egress.rs).
        let wire = &captures[&cfg.name];
        let mut sizes = 0u64;
        let mut hashes: Vec<String> = wire
            .iter()
            .map(|bytes| {
                let mut m = pb::NodeMessage::decode(bytes.as_slice()).unwrap();
                assert!(m.receipt.is_some(), "every message carries the node's signed log head");
                m.receipt = None;
                let body = m.encode_to_vec();
                sizes += body.len() as u64;
                hex(ring::digest::digest(&ring::digest::SHA256, &body).as_ref())
            })
            .collect();
        let mut logged: Vec<String> = read_log(&cfg.audit_dir).unwrap().into_iter().map(|e| e.sha256).collect();
        hashes.sort();
        logged.sort();
        assert_eq!(hashes, logged, "{}: the log names exactly the messages on the wire", cfg.name);
        // What the coordinator logged as received from this node is the same set.
        let mut received: Vec<String> = logs[0]
            .iter()
            .filter_map(|rec| match &rec.event {
                Event::Receipt { peer, sha256, .. } if *peer == cfg.name => Some(sha256.clone()),
                _ => None,
            })
            .collect();
        received.sort();
        assert_eq!(received, logged, "{}: coordinator's receipts vs node's egress", cfg.name);
        let row = r.egress.iter().find(|e| e.node == cfg.name).expect("node in report");
        assert_eq!(row.bytes, sizes, "{}: report bytes vs wire", cfg.name);
        assert_eq!(row.messages, wire.len() as u64, "{}: report messages vs wire", cfg.name);
    }
    assert_eq!(r.egress_total.bytes, r.egress.iter().map(|e| e.bytes).sum::<u64>());
    for e in &r.egress {
        assert!(e.by_kind.iter().all(|k| k.name != report::UNKNOWN_KIND), "{}: {:?}", e.node, e.by_kind);
    }
    // node-3 sent only its hello and its refusals.
    let kinds: Vec<String> = read_log(&node_configs[3].audit_dir).unwrap().into_iter().map(|e| e.kind).collect();
    assert!(kinds.iter().all(|k| k == "hello" || k == "refusal"), "{kinds:?}");
    // Refusals and why, on both sides.
    let refusals: Vec<_> = r.refusals.iter().filter(|f| f.node == "node-3").collect();
    assert!(refusals.iter().any(|f| f.reason.contains("not in allowed_analyses")), "{refusals:?}");
    assert!(refusals.iter().any(|f| f.recorded_by == "node-3") && refusals.iter().any(|f| f.recorded_by != "node-3"));
    // Analyses, who asked and why, participants, thresholds.
    assert_eq!(r.analyses.len(), 2);
    let purposes: Vec<&str> = r.analyses.iter().map(|x| x.purpose.as_str()).collect();
    assert!(purposes.contains(&"Q3 CRM review") && purposes.contains(&"year-end win-back planning"));
    for x in &r.analyses {
        assert_eq!(x.analyst, "analyst.hq");
        let names: Vec<&str> = x.participants.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["node-0", "node-1", "node-2"]);
    }
    assert!(!r.thresholds.is_empty());
    for t in &r.thresholds {
        assert_eq!((t.min_participants, t.min_cohort, t.contributors), (3, 10, 3));
    }
    let md = report::markdown(&r);
    assert!(md.contains("Q3 CRM review") && md.contains("node-3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hq_channels_and_one_franchisee_cannot_form_a_round_that_exposes_it() {
    common::logs();
    let data = fedcrm::harness::split_cdnow(fedcrm::harness::CDNOW, &[1; 4], true);
    let mut nodes: Vec<NodeSpec> = Vec::new();
    for (i, d) in data.into_iter().enumerate() {
        let mut s = NodeSpec::franchisee(&format!("hq-{i}"), d);
        s.kind = OrgKind::Hq;
        s.organisation = "Demo Jewellery HQ".into();
        // HQ's own channels need no protection from HQ.
        s.policy.min_other_organisations = 0;
        s.policy.assume_colluding_nodes = 0;
        nodes.push(s);
    }
    let mut fr = nodes.pop().unwrap();
    fr.name = "fr-alone".into();
    fr.kind = OrgKind::Franchisee;
    fr.organisation = "Alone Franchise Ltd".into();
    fr.policy.min_other_organisations = 1;
    nodes.push(fr);
    let cluster = Cluster::start(ClusterOptions { nodes, ..Default::default() }).await.unwrap();
    // The coordinator evaluates every invitee's announced rules first and says which
    // fails for whom, before any round starts.
    let err = cluster.segments(REFERENCE, "HQ-only quorum").await.unwrap_err();
    let m = err.message().to_string();
    // One short line for the analyst; the full reason is in the coordinator's log (below).
    assert!(m.contains("fr-alone would refuse") && m.contains("fewer than min_other_organisations"), "{m}");
    let fr_cfg = cluster.node_configs.iter().find(|c| c.name == "fr-alone").unwrap().clone();
    let coord_dir = cluster.coordinator.config.audit_dir.clone();
    let _dir = cluster.stop().await;
    // Nothing but its hello left the franchisee.
    let sent: Vec<String> = read_log(&fr_cfg.audit_dir).unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(sent, vec!["hello"]);
    // The coordinator's log says why the analysis did not run.
    let failed: Vec<String> = read_records(&coord_dir)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.event {
            Event::AnalysisFailed { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert!(
        failed.iter().any(|r| r.contains("fr-alone would refuse") && r.contains("HQ-owned channels do not count")),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_approval_holds_everything_back_and_expired_requests_are_refused() {
    // Four nodes: without node-0 the others could complete a round on their own.
    let mut nodes = cdnow_nodes(&[1; 4], true);
    // Only the segment analysis needs approval; its histogram passes are part of it.
    nodes[0].policy.manual_approval = vec!["rfm-segments".into()];
    // Long enough that a loaded CI machine never expires a request by accident; the
    // test makes one expire by moving its deadline into the past (below).
    nodes[0].policy.approval_expires_seconds = 3600;
    let cluster = Cluster::start(ClusterOptions { nodes, ..Default::default() }).await.unwrap();
    let cfg = cluster.node_configs[0].clone();
    let approvals = Approvals::new(&cfg.approvals_dir);
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;

    // 1. Without approval node-0 refuses, and the analysis stops without a result
    //    (it must not run without node-0 now and with it later).
    let err = cluster.segments(REFERENCE, "birthday campaign").await.unwrap_err();
    assert!(
        err.message().contains("manual approval") || err.message().contains("approved by its franchisee"),
        "{}",
        err.message()
    );
    // No round of it got past the keys: nothing was unmasked for anybody.
    let coord = read_records(&cluster.coordinator.config.audit_dir).unwrap();
    assert!(!coord.iter().any(|r| matches!(r.event, Event::Release { .. })));
    let sent: Vec<String> = read_log(&cfg.audit_dir).unwrap().into_iter().map(|e| e.kind).collect();
    assert!(sent.iter().all(|k| k == "hello" || k == "refusal"), "nothing leaves before approval: {sent:?}");
    let pending = approvals.pending(now()).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!((pending[0].purpose.as_str(), pending[0].requested_by.as_str()), ("birthday campaign", "analyst.hq"));

    // 2. The request expires unapproved: approving it now is refused, and so is the round.
    //    Time passes: the request's deadline is now behind us.
    let file = std::fs::read_dir(cfg.approvals_dir.join("pending")).unwrap().next().unwrap().unwrap().path();
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    json["expires_ms"] = serde_json::json!(now() - 5_000);
    std::fs::write(&file, serde_json::to_vec(&json).unwrap()).unwrap();
    let expired = approvals.approve(&pending[0].id, "store owner", now(), 3600).unwrap_err().to_string();
    assert!(expired.contains("expired"), "{expired}");
    let second = cluster.segments(REFERENCE, "birthday campaign").await.unwrap_err();
    let recs = read_records(&cfg.audit_dir).unwrap();
    assert!(second.message().contains("expired"), "{}", second.message());
    assert!(recs.iter().any(|r| matches!(&r.event, Event::ApprovalExpired { id } if *id == pending[0].id)));

    // 3. The renewed request is approved in time: node-0 takes part.
    let renewed = approvals.pending(now()).unwrap();
    assert_eq!(renewed.len(), 1);
    approvals.approve(&renewed[0].id, "store owner", now(), 3600).unwrap();
    let v = cluster.segments(REFERENCE, "birthday campaign").await.unwrap();
    assert_eq!(v.participants, vec!["node-0", "node-1", "node-2", "node-3"]);
    let report = todays_report(&cluster);
    let a = report.approvals.iter().filter(|a| a.node == "node-0").count();
    assert!(a >= 2, "{:?}", report.approvals);
    let recs = read_records(&cfg.audit_dir).unwrap();
    assert!(recs.iter().any(|r| matches!(&r.event, Event::ApprovalGranted { by, .. } if by == "store owner")));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_log_cut_short_is_caught_by_the_coordinators_receipts() {
    let cluster =
        Cluster::start(ClusterOptions { nodes: cdnow_nodes(&[1; 3], true), ..Default::default() }).await.unwrap();
    cluster.segments(REFERENCE, "receipts").await.unwrap();
    let ca = ca_der(&cluster);
    let paths = log_paths(&cluster);
    let victim = cluster.node_configs[1].audit_dir.clone();
    let _dir = cluster.stop().await;
    verify_paths(&paths, &ca).expect("intact logs verify");
    // Cut node-1's log back by its last 10 records (the node "forgets" what it sent).
    let file = std::fs::read_dir(&victim).unwrap().map(|e| e.unwrap().path()).max().unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&file, lines[..lines.len() - 10].join("\n") + "\n").unwrap();
    verify_paths(std::slice::from_ref(&victim), &ca).expect("alone, a cut log still chains");
    let err = verify_paths(&paths, &ca).expect_err("the coordinator's receipts show the cut");
    assert_eq!(err.problem, Problem::Truncated, "{err}");
}
