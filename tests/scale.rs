//! Issue 9's scale run: one RFM segments analysis over many nodes on loopback with
//! real mutual TLS (the brand CA, one certificate per node), 5 % of the nodes dropping
//! during the first pass (after sharing their keys, before masking). The coordinator
//! is the real `fedcrm` binary in a process of its own, so its peak memory is its own;
//! the nodes are tasks in this process (they need the test hooks that make them drop).
//! The result must equal the pooled answer over the survivors. Wall times (start-up,
//! connection, the analysis and its phases as the coordinator's audit log dates them)
//! and both processes' peak memory are printed, never asserted.
//!
//! Ignored by default (minutes of CPU): run it with
//! `cargo test --release --test scale -- --ignored --nocapture`
//! and choose the size with `FEDCRM_SCALE_NODES` (default 1,000).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use common::cdnow_nodes;
use fedcrm::harness::process::ProcessMemory;
use fedcrm::harness::{Cluster, ClusterOptions};
use fedcrm::hq::SegmentsView;
use fedcrm_audit::{Event, Record};
use fedcrm_node::session::DropAt;

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

/// Seconds from `from` to `to` (audit times, in milliseconds).
fn secs(from: u64, to: u64) -> f64 {
    to.saturating_sub(from) as f64 / 1000.0
}

/// Node messages of one kind in one round, as the coordinator receipted them.
struct Kind {
    name: String,
    count: u64,
    bytes: u64,
    first: u64,
    last: u64,
}

/// The analysis as the coordinator's audit log dates it: per round, when it started
/// and, per kind of node message, how many were receipted, their bytes, and when the
/// first and the last came; the records written (each one `fsync`ed).
fn timeline(records: &[Record]) -> String {
    let Some(start) = records.iter().position(|r| matches!(r.event, Event::AnalysisRequested { .. })) else {
        return "  (no analysis in the coordinator's audit log)\n".into();
    };
    let records = &records[start..];
    let t0 = records[0].time_ms;
    let mut out = String::new();
    // Messages by kind within the current round, in order of first arrival.
    let mut kinds: BTreeMap<usize, Kind> = BTreeMap::new();
    let flush = |kinds: &mut BTreeMap<usize, Kind>, out: &mut String| {
        for k in std::mem::take(kinds).into_values() {
            out.push_str(&format!(
                "    {:>5} × {:<22} {:>9.1} KiB  first +{:>7.2} s, last +{:>7.2} s\n",
                k.count,
                k.name,
                k.bytes as f64 / 1024.0,
                secs(t0, k.first),
                secs(t0, k.last)
            ));
        }
    };
    for r in records {
        match &r.event {
            Event::RoundStarted { round, kind, invited, .. } => {
                flush(&mut kinds, &mut out);
                out.push_str(&format!(
                    "  +{:>7.2} s  round {round} ({kind}, {} invited)\n",
                    secs(t0, r.time_ms),
                    invited.len()
                ));
            }
            Event::Receipt { message, bytes, .. } if !message.is_empty() => {
                let next = kinds.len();
                match kinds.values_mut().find(|k| k.name == *message) {
                    Some(k) => {
                        k.count += 1;
                        k.bytes += bytes;
                        k.last = r.time_ms;
                    }
                    None => {
                        let k =
                            Kind { name: message.clone(), count: 1, bytes: *bytes, first: r.time_ms, last: r.time_ms };
                        kinds.insert(next, k);
                    }
                }
            }
            Event::Release { .. } => {
                flush(&mut kinds, &mut out);
                out.push_str(&format!("  +{:>7.2} s  released\n", secs(t0, r.time_ms)));
            }
            _ => {}
        }
    }
    flush(&mut kinds, &mut out);
    out.push_str(&format!("  {} coordinator audit records (each fsynced) from the request on\n", records.len()));
    out
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
    let opts = ClusterOptions {
        nodes: nodes.clone(),
        phase_timeout_seconds: 600,
        // A thousand nodes share this process's cores, running their round's crypto on
        // the async workers, so the connections' HTTP/2 PINGs are answered late: with
        // the default 10 s, at n = 1,000 the coordinator closed every session (and the
        // analyst's) about 20 s into round 1's share phase.
        keepalive_seconds: 120,
        ..Default::default()
    };
    let cluster = Cluster::start_process(opts, Path::new(env!("CARGO_BIN_EXE_fedcrm"))).await.unwrap();
    let up = started.elapsed();
    let idle = cluster.coordinator.memory().unwrap();
    let analysis = Instant::now();
    let reply = cluster.segments(common::REFERENCE, "scale run").await.expect("segments");
    let took = analysis.elapsed();
    let coordinator = cluster.coordinator.memory().unwrap();
    let here = ProcessMemory::own().unwrap();
    let view = SegmentsView::new(&reply, common::REFERENCE);

    let records = fedcrm_audit::log::read_records(&cluster.dir.path().join("coordinator-audit")).unwrap();
    let opened: Vec<u64> = records
        .iter()
        .filter(|r| matches!(&r.event, Event::SessionOpened { role, .. } if role.contains("node")))
        .map(|r| r.time_ms)
        .collect();
    let connect = opened.last().zip(opened.first()).map_or(0.0, |(l, f)| secs(*f, *l));
    let node_records =
        fedcrm_audit::log::read_records(&cluster.dir.path().join("nodes/node-1/audit")).map_or(0, |r| r.len());
    eprintln!(
        "scale: {n} nodes ({dropping} dropping), coordinator in its own process (pid {})\n\
         start-up {:.1} s (CA, {n} certificates and audit logs, then connecting: first to last session {connect:.1} s)\n\
         analysis {:.1} s over {} contributors\n{}\
         coordinator: peak resident set {} (idle after connecting: {}), now {}\n\
         test process ({n} nodes): peak resident set {}\n\
         node-1's audit log: {node_records} records (each fsynced)",
        cluster.coordinator.pid,
        up.as_secs_f64(),
        took.as_secs_f64(),
        view.participants.len(),
        timeline(&records),
        mib(coordinator.peak_kib),
        mib(idle.peak_kib),
        mib(coordinator.now_kib),
        mib(here.peak_kib),
    );
    assert_eq!(view.participants.len(), n - dropping, "contributors: every node but the dropping ones");
    common::assert_equals_pooled(&view, &nodes);
    cluster.stop().await.unwrap();
}
