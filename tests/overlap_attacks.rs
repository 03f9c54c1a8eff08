//! Issue 12, attack tests over the network: HQ's coordinator relays every PSI list, so
//! it tries to change them — substitute a chunk, replay one (within the run, or from an
//! earlier run of the same pair), drop one — and to replay a run's start. Each attack
//! is run through the coordinator's test hooks against real nodes over mutual TLS, and
//! each is detected by the node that receives it: the run stops without a release, and
//! no node releases anything of it.

mod common;

use std::sync::{Arc, Mutex};

use fedcrm::harness::{Cluster, ClusterOptions};
use fedcrm::hq::AnalystClient;
use fedcrm_coordinator::round::Hooks;
use fedcrm_crypto::RoundId;
use fedcrm_protocol::pb;
use fedcrm_protocol::wire::PsiChunk;

fn request() -> pb::OverlapRequest {
    pb::OverlapRequest { purpose: "channel overlap (attack test)".into(), dp_off: true, ..Default::default() }
}

async fn cluster(hooks: Hooks) -> Cluster {
    let (mut specs, _) = common::synthetic_specs(1200, 5);
    specs.truncate(3);
    let opts = ClusterOptions { nodes: specs, capture_wire: true, phase_timeout_seconds: 10, ..Default::default() };
    Cluster::start_with_hooks(opts, hooks).await.unwrap()
}

/// How many PSI releases the nodes' transports took.
fn releases(cluster: &Cluster) -> usize {
    common::sent(cluster, None, |b| matches!(b, pb::node_message::Body::PsiRelease(_)))
}

/// Runs the overlap and expects it to stop without a result; returns the error text.
async fn refused(cluster: &Cluster) -> String {
    let mut client = AnalystClient::connect(&cluster.analyst).await.unwrap();
    let err = client.overlap(request(), |_| {}).await.unwrap_err().to_string();
    assert!(err.contains("stopped without a result"), "{err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_alters_a_list_chunk_is_caught_and_the_run_stops() {
    let hooks = Hooks {
        tamper_psi_relay: Some(Arc::new(|_: &str, chunks: &mut Vec<PsiChunk>| {
            for c in chunks.iter_mut().filter(|c| c.chunk.index == 0) {
                c.chunk.ciphertext[5] ^= 1;
            }
        })),
        ..Default::default()
    };
    let cluster = cluster(hooks).await;
    let err = refused(&cluster).await;
    assert!(err.contains("did not open"), "the receiver names the altered chunk: {err}");
    assert_eq!(releases(&cluster), 0, "nothing of the run was released");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_replays_a_chunk_within_the_run_is_caught() {
    let hooks = Hooks {
        tamper_psi_relay: Some(Arc::new(|_: &str, chunks: &mut Vec<PsiChunk>| {
            let again = chunks[0].clone();
            chunks.push(again);
        })),
        ..Default::default()
    };
    let cluster = cluster(hooks).await;
    let err = refused(&cluster).await;
    // Caught wherever the repeat lands: while the list is still coming (more chunks than
    // announced, out of order) or after it was used (a chunk at this stage of the pair).
    assert!(
        ["more chunks", "arrived where chunk", "at this stage of the pair"].iter().any(|m| err.contains(m)),
        "{err}"
    );
    assert_eq!(releases(&cluster), 0);
    cluster.stop().await;
}

/// The relay keeps every chunk of a first, honest run, and in a second run of the same
/// nodes swaps each pair's first chunk for the first run's: the chunk keys are bound to
/// the run (and the per-run X25519 keys are fresh), so it does not open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_replays_a_list_from_an_earlier_run_is_caught() {
    type Kept = Arc<Mutex<Vec<(String, PsiChunk)>>>;
    let kept: Kept = Arc::default();
    let replay = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (k, r) = (kept.clone(), replay.clone());
    let hooks = Hooks {
        tamper_psi_relay: Some(Arc::new(move |to: &str, chunks: &mut Vec<PsiChunk>| {
            let mut kept = k.lock().unwrap();
            if !r.load(std::sync::atomic::Ordering::SeqCst) {
                kept.extend(chunks.iter().map(|c| (to.to_string(), c.clone())));
                return;
            }
            for c in chunks.iter_mut() {
                if let Some((_, old)) = kept
                    .iter()
                    .find(|(t, o)| t == to && o.peer == c.peer && o.list == c.list && o.chunk.index == c.chunk.index)
                {
                    *c = PsiChunk { run: c.run, ..old.clone() };
                }
            }
        })),
        ..Default::default()
    };
    let cluster = cluster(hooks).await;
    let mut client = AnalystClient::connect(&cluster.analyst).await.unwrap();
    let first = client.overlap(request(), |_| {}).await.unwrap();
    assert_eq!(first.pairs.len(), 3);
    assert!(!kept.lock().unwrap().is_empty());
    replay.store(true, std::sync::atomic::Ordering::SeqCst);
    let before = releases(&cluster);
    let err = refused(&cluster).await;
    assert!(err.contains("did not open"), "{err}");
    assert_eq!(releases(&cluster), before, "the second run released nothing");
    cluster.stop().await;
}

/// HQ starts a second run under the first run's id (same domain for hash-to-group, so
/// it could link the two runs' points): every node refuses it before any key leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_run_start_is_refused_by_every_node() {
    let hooks = Hooks { force_psi_run: Some(RoundId([7; 16])), ..Default::default() };
    let cluster = cluster(hooks).await;
    let mut client = AnalystClient::connect(&cluster.analyst).await.unwrap();
    client.overlap(request(), |_| {}).await.unwrap();
    let err = refused(&cluster).await;
    assert!(err.contains("was started before"), "{err}");
    // After the refusal no node sent keys for the replayed run.
    let keys = common::sent(&cluster, None, |b| matches!(b, pb::node_message::Body::PsiKeys(_)));
    assert_eq!(keys, 3, "keys only for the first run");
    cluster.stop().await;
}

/// HQ shows one node the run with exact counts and its peers the run with noise (each
/// start signed): the run keys are bound to the whole start, so the peers' keys do not
/// verify on the odd node, nor its key on theirs, and the run stops before any list
/// leaves — a responder that requires noise is never compared without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_that_shows_two_nodes_different_terms_is_caught_before_any_list_moves() {
    let (mut specs, _) = common::synthetic_specs(1200, 6);
    specs.truncate(3);
    let odd = specs[0].name.clone();
    let hooks = Hooks { psi_noise_for_node: Some((odd.clone(), None)), ..Default::default() };
    let opts = ClusterOptions { nodes: specs, capture_wire: true, ..Default::default() };
    let cluster = Cluster::start_with_hooks(opts, hooks).await.unwrap();
    let mut client = AnalystClient::connect(&cluster.analyst).await.unwrap();
    let with_dp = pb::OverlapRequest { dp_off: false, ..request() };
    let err = client.overlap(with_dp, |_| {}).await.unwrap_err().to_string();
    assert!(err.contains("another start"), "{err}");
    let chunks = common::sent(&cluster, None, |b| matches!(b, pb::node_message::Body::PsiChunk(_)));
    assert_eq!(chunks, 0, "no list left any node");
    cluster.stop().await;
}

/// The monthly cap counts runs, not analysis ids: HQ reusing one analysis id for every
/// run still meets the cap (4 by default) at the fifth run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monthly_cap_counts_every_run_whatever_its_analysis_id() {
    let hooks = Hooks { reuse_analysis_id: Some("0123456789abcdef".into()), ..Default::default() };
    let cluster = cluster(hooks).await;
    let mut client = AnalystClient::connect(&cluster.analyst).await.unwrap();
    for _ in 0..4 {
        client.overlap(request(), |_| {}).await.unwrap();
    }
    let err = refused(&cluster).await;
    assert!(err.contains("monthly cap of 4"), "{err}");
    cluster.stop().await;
}

/// Probe resistance across runs: a node pairs with one peer organisation (all of HQ's
/// channels counting as one) in at most `max_runs_per_peer_organisation` runs a month;
/// beyond it, it declines the pair itself, and the run's release shows why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_declines_a_peer_organisation_beyond_its_monthly_psi_runs() {
    let (mut specs, _) = common::synthetic_specs(1200, 8);
    specs.truncate(3);
    for s in &mut specs {
        s.policy.psi.max_runs_per_peer_organisation = 1;
    }
    let opts = ClusterOptions { nodes: specs, ..Default::default() };
    let cluster = Cluster::start(opts).await.unwrap();
    let mut client = AnalystClient::connect(&cluster.analyst).await.unwrap();
    let first = client.overlap(request(), |_| {}).await.unwrap();
    assert_eq!(first.pairs.len(), 3, "{:?}", first.exits);
    let second = client.overlap(request(), |_| {}).await.unwrap();
    assert!(second.pairs.is_empty(), "{:?}", second.pairs);
    assert_eq!(second.exits.len(), 3, "{:?}", second.exits);
    assert!(second.exits.iter().all(|e| e.contains("max_runs_per_peer_organisation")), "{:?}", second.exits);
    // Sizes are still released: each node's own count, once per run.
    assert_eq!(second.channels.len(), 3);
    cluster.stop().await;
}

/// HQ keeps a node whose certificate the brand CA revoked connected (its coordinator
/// does not load the list) and invites it: a node that has the revocation list declines
/// to pair with it; the run's other pairs go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_declines_a_peer_whose_certificate_is_revoked() {
    let (mut specs, _) = common::synthetic_specs(1200, 9);
    specs.truncate(3);
    let mut cluster = Cluster::start(ClusterOptions { nodes: specs, ..Default::default() }).await.unwrap();
    let (careful, revoked) = (cluster.node_configs[0].name.clone(), cluster.node_configs[2].clone());
    fedcrm::auditcli::revoke(&cluster.pki.dir, &revoked.tls.cert, fedcrm_pki::crl::Reason::KeyCompromise).unwrap();
    cluster.node_configs[0].tls.crl = Some(cluster.pki.dir.join("crl.pem"));
    cluster.restart_node(&careful).await.unwrap();
    let mut client = AnalystClient::connect(&cluster.analyst).await.unwrap();
    let released = client.overlap(request(), |_| {}).await.unwrap();
    assert_eq!(released.pairs.len(), 2, "{:?}", released.exits);
    assert!(
        released.exits.iter().any(|e| e.contains(&careful) && e.contains(&revoked.name) && e.contains("revoked")),
        "{:?}",
        released.exits
    );
    cluster.stop().await;
}

/// Faults: a node that vanishes once its lists are moving (its process killed, as it
/// were) does not take the run down for the others: its peers drop their pairs with it
/// when the coordinator says it left, every other pair is released, and the release
/// names the lost node's pairs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_lost_mid_run_leaves_the_other_pairs_released() {
    let (mut specs, plain) = common::synthetic_specs(2500, 10);
    specs.truncate(4);
    let lost_name = specs[2].name.clone();
    let victim: Arc<Mutex<Option<tokio::task::AbortHandle>>> = Arc::default();
    let (gone, who) = (victim.clone(), lost_name.clone());
    let hooks = Hooks {
        tamper_psi_relay: Some(Arc::new(move |_: &str, chunks: &mut Vec<PsiChunk>| {
            // The victim's first chunk is relayed; then its process is gone.
            if chunks.iter().any(|c| c.peer == who)
                && let Some(h) = gone.lock().unwrap().take()
            {
                h.abort();
            }
        })),
        ..Default::default()
    };
    let opts = ClusterOptions { nodes: specs, ..Default::default() };
    let cluster = Cluster::start_with_hooks(opts, hooks).await.unwrap();
    let i = cluster.nodes.iter().position(|(n, _)| *n == lost_name).unwrap();
    *victim.lock().unwrap() = Some(cluster.nodes[i].1.abort_handle());
    let mut client = AnalystClient::connect(&cluster.analyst).await.unwrap();
    let released = client.overlap(request(), |_| {}).await.unwrap();
    let reference = fedcrm::pooled::overlap(&plain[..4]);
    assert_eq!(released.pairs.len(), 3, "the three pairs without the lost node: {:?}", released.exits);
    for p in &released.pairs {
        assert!(p.a != lost_name && p.b != lost_name, "{p:?}");
        let want = reference[&(p.a.clone(), p.b.clone())] as i64;
        assert!(p.withheld || p.shared == want, "{p:?} vs {want}");
    }
    let lost: Vec<&String> =
        released.exits.iter().filter(|e| e.contains(&format!("{lost_name} disconnected"))).collect();
    assert_eq!(lost.len(), 3, "{:?}", released.exits);
    assert!(!released.channels.iter().any(|c| c.node == lost_name));
    cluster.stop().await;
}

/// Memory: a node keeps at most twice its `max_list_points` of its peers' points in one
/// run (every chunk it keeps opened on arrival): peers whose lists add up to more make
/// it refuse the run rather than buffer without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_buffers_at_most_twice_its_longest_list_in_a_run() {
    let (mut specs, _) = common::synthetic_specs(4000, 12);
    specs.truncate(4);
    let small = specs[2].name.clone();
    specs[2].policy.psi.max_list_points = 2048;
    let cluster = Cluster::start(ClusterOptions { nodes: specs, ..Default::default() }).await.unwrap();
    let mut client = AnalystClient::connect(&cluster.analyst).await.unwrap();
    let err = client.overlap(request(), |_| {}).await.unwrap_err().to_string();
    assert!(err.contains(&small) && err.contains("points in all"), "{err}");
    cluster.stop().await;
}
