//! Issue 9's scale run: one RFM segments analysis over many nodes in one process, on
//! loopback with real mutual TLS (the brand CA, one certificate per node), 5 % of the
//! nodes dropping during the first pass (after sharing their keys, before masking).
//! The result must equal the pooled answer over the survivors; wall time and the
//! process's peak memory are printed, never asserted.
//!
//! Ignored by default (minutes of CPU): run it with
//! `cargo test --release --test scale -- --ignored --nocapture`
//! and choose the size with `FEDCRM_SCALE_NODES` (default 1,000).

mod common;

use std::time::Instant;

use common::cdnow_nodes;
use fedcrm::harness::{Cluster, ClusterOptions};
use fedcrm::hq::SegmentsView;
use fedcrm_node::session::DropAt;

/// Peak resident set of this process (Linux VmHWM), in MiB.
fn peak_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "minutes of CPU: cargo test --release --test scale -- --ignored --nocapture"]
async fn segments_over_many_nodes_with_five_percent_dropping_equal_pooled() {
    common::logs();
    let n: usize = std::env::var("FEDCRM_SCALE_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let mut nodes = cdnow_nodes(&vec![1; n], true);
    let dropping = n.div_ceil(20);
    // Spread over the roster (names sort as strings, so this is not a contiguous block).
    for i in 0..dropping {
        nodes[i * n / dropping].faults.drop_at = Some(DropAt::AfterShares);
    }
    let started = Instant::now();
    let cluster =
        Cluster::start(ClusterOptions { nodes: nodes.clone(), phase_timeout_seconds: 600, ..Default::default() })
            .await
            .unwrap();
    let connected = started.elapsed();
    let analysis = Instant::now();
    let reply = cluster.segments(common::REFERENCE, "scale run").await.expect("segments");
    let took = analysis.elapsed();
    let view = SegmentsView::new(&reply, common::REFERENCE);
    eprintln!(
        "scale: {n} nodes ({dropping} dropping) connected in {:.1} s; the analysis took {:.1} s over {} contributors; \
         peak resident set of the whole process (coordinator and every node): {} MiB",
        connected.as_secs_f64(),
        took.as_secs_f64(),
        view.participants.len(),
        peak_mib().map_or("unknown".into(), |m| format!("{m:.0}")),
    );
    assert_eq!(view.participants.len(), n - dropping, "contributors: every node but the dropping ones");
    common::assert_equals_pooled(&view, &nodes);
    cluster.stop().await;
}
