//! The federated RFM segment analysis over real mTLS on loopback equals the pooled
//! computation (separate code in `fedcrm::pooled`) on CDNOW split across 5 nodes.

mod common;

use common::{cdnow_nodes, check};
use fedcrm::harness::ClusterOptions;
use fedcrm_node::session::DropAt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdnow_even_split_equals_pooled() {
    let v = check(cdnow_nodes(&[1; 5], true), ClusterOptions::default(), 5).await;
    assert_eq!(v.customers, Some(23_570), "every CDNOW customer bought before the reference date");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdnow_skewed_split_equals_pooled() {
    // Contiguous customer-id blocks of 40/25/15/12/8 %: the nodes' own quintiles
    // differ from the global ones, so per-node cut points would give other segments.
    check(cdnow_nodes(&[40, 25, 15, 12, 8], false), ClusterOptions::default(), 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_dropping_after_sharing_keys_is_excluded_and_result_is_exact() {
    let mut nodes = cdnow_nodes(&[1; 5], true);
    nodes[2].faults.drop_at = Some(DropAt::AfterShares);
    let v = check(nodes, ClusterOptions { phase_timeout_seconds: 10, ..Default::default() }, 4).await;
    assert!(!v.participants.contains(&"node-2".to_string()));
}

/// Issue 7, point 11, through the analyst's door: a node whose sealed share does not
/// open is left out before anyone masks, the analysis equals the pooled answer over
/// the other four, and the analyst's exits name the sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_sending_a_share_that_does_not_open_is_named_and_the_result_is_exact() {
    let mut nodes = cdnow_nodes(&[1; 5], true);
    nodes[2].faults.corrupt_share_to = Some("node-0".into());
    let v = check(nodes, ClusterOptions { phase_timeout_seconds: 10, ..Default::default() }, 4).await;
    assert!(!v.participants.contains(&"node-2".to_string()));
    assert!(
        v.dropped.iter().any(|d| d.starts_with("node-2: excluded: node-2 sent a share to node-0 that fails to open")),
        "{:?}",
        v.dropped
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_leaving_between_rounds_stops_the_analysis_and_a_rerun_is_refused() {
    use fedcrm::harness::Cluster;
    // node-4's masked input is in the first round's sum (it vanishes at the
    // consistency check), so it is a contributor of pass 1 but gone for pass 2.
    let mut nodes = cdnow_nodes(&[1; 5], true);
    nodes[4].faults.drop_at = Some(DropAt::AfterMasked);
    let mut cluster = Cluster::start_with_hooks(
        ClusterOptions { nodes, phase_timeout_seconds: 10, ..Default::default() },
        Default::default(),
    )
    .await
    .unwrap();
    let err = cluster.segments(common::REFERENCE, "first try").await.unwrap_err();
    assert!(err.message().contains("left between rounds") && err.message().contains("node-4"), "{}", err.message());
    // Any RFM analysis over the four that remain — this reference date or another —
    // would let the coordinator subtract node-4's data from the first sum: the
    // coordinator says so at once, naming the node and when it will be allowed.
    for date in [common::REFERENCE, "1997-10-31"] {
        let err = cluster.segments(date, "second try").await.unwrap_err();
        let m = err.message();
        assert!(m.contains("differencing") && m.contains("node-4") && m.contains("allowed again from"), "{m}");
    }
    // node-4 is back: the population is the first sum's again, and the analysis runs.
    cluster.restart_node("node-4").await.unwrap();
    let v = fedcrm::hq::SegmentsView::new(
        &cluster.segments(common::REFERENCE, "all five again").await.unwrap(),
        common::REFERENCE,
    );
    assert_eq!(v.participants.len(), 5);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawn_customers_take_part_in_nothing() {
    let mut nodes = cdnow_nodes(&[1; 5], true);
    // node-0 withdraws its first 500 customers' consent.
    let withdrawn: Vec<String> = {
        let mut ids: Vec<String> =
            nodes[0].data.lines().skip(1).filter_map(|l| l.split_whitespace().next().map(str::to_string)).collect();
        ids.dedup();
        ids.truncate(500);
        ids
    };
    nodes[0].withdrawn = withdrawn.clone();
    let federated = nodes.clone();
    // The pooled reference sees node-0's data without those customers.
    nodes[0].data = nodes[0]
        .data
        .lines()
        .filter(|l| !l.split_whitespace().next().is_some_and(|c| withdrawn.iter().any(|w| w == c)))
        .map(|l| format!("{l}\n"))
        .collect();
    let expected = common::pooled_over(&nodes, &common::node_names(5));
    let v = check_against(federated, nodes).await;
    assert_eq!(v.customers, Some(23_570 - 500));
    assert_eq!(v.customers, Some(expected.customers));
}

/// Run federated on `federated`, compare with pooled over `reference`.
async fn check_against(
    federated: Vec<fedcrm::harness::NodeSpec>,
    reference: Vec<fedcrm::harness::NodeSpec>,
) -> fedcrm::hq::SegmentsView {
    use fedcrm::harness::Cluster;
    let cluster =
        Cluster::start_with_hooks(ClusterOptions { nodes: federated, ..Default::default() }, Default::default())
            .await
            .unwrap();
    let v = fedcrm::hq::SegmentsView::new(
        &cluster.segments(common::REFERENCE, "consent test").await.unwrap(),
        common::REFERENCE,
    );
    let p = common::pooled_over(&reference, &v.participants);
    assert_eq!(
        (v.recency_cuts.clone(), v.frequency_cuts.clone(), v.monetary_cuts_cents.clone()),
        (p.recency.to_vec(), p.frequency.to_vec(), p.monetary.to_vec())
    );
    assert_eq!(v.segments.iter().map(|s| s.customers.unwrap()).collect::<Vec<_>>(), p.counts.to_vec());
    cluster.stop().await;
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_after_missing_an_analysis_waits_while_the_others_get_a_result() {
    use fedcrm::harness::Cluster;
    // node-5 vanishes after advertising its keys: the first analysis runs over five.
    let mut nodes = cdnow_nodes(&[1; 6], true);
    nodes[5].faults.drop_at = Some(DropAt::AfterKeys);
    let mut cluster = Cluster::start_with_hooks(
        ClusterOptions { nodes: nodes.clone(), phase_timeout_seconds: 10, ..Default::default() },
        Default::default(),
    )
    .await
    .unwrap();
    let first =
        fedcrm::hq::SegmentsView::new(&cluster.segments(common::REFERENCE, "first").await.unwrap(), common::REFERENCE);
    assert_eq!(first.participants.len(), 5);
    // node-5 is back. With it, the next sum would differ from the first by node-5
    // alone; the coordinator runs the next analysis over the first's five instead,
    // and says why node-5 waits and until when.
    cluster.restart_node("node-5").await.unwrap();
    let next =
        fedcrm::hq::SegmentsView::new(&cluster.segments(common::REFERENCE, "next").await.unwrap(), common::REFERENCE);
    assert_eq!(next.participants, first.participants);
    let why = next.dropped.iter().find(|d| d.starts_with("node-5")).expect("node-5 is told why");
    assert!(why.contains("not invited") && why.contains("differencing") && why.contains("allowed again from"), "{why}");
    // The result is still exactly the pooled answer over the five.
    let p = common::pooled_over(&nodes, &next.participants);
    assert_eq!(next.customers, Some(p.customers));
    cluster.stop().await;
}
