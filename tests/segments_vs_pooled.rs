//! The federated RFM segment analysis over real mTLS on loopback equals the pooled
//! computation (separate code in `fedcrm::pooled`) on CDNOW split across 5 nodes.

mod common;

use common::{cdnow_nodes, check};
use fedcrm::harness::ClusterOptions;
use fedcrm_node::session::DropAt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdnow_even_split_equals_pooled() {
    let v = check(cdnow_nodes(&[1; 5], true), ClusterOptions::default(), 5).await;
    assert_eq!(v.customers, 23_570, "every CDNOW customer bought before the reference date");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_dropping_before_unmask_restarts_analysis_on_survivors() {
    let mut nodes = cdnow_nodes(&[1; 5], true);
    nodes[4].faults.drop_at = Some(DropAt::AfterMasked);
    let v = check(nodes, ClusterOptions { phase_timeout_seconds: 10, ..Default::default() }, 4).await;
    assert!(v.dropped.iter().any(|d| d.starts_with("node-4")), "{:?}", v.dropped);
}
