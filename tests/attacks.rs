//! HQ's attacks on a franchisee (issue 6, A1–A4, A6, A7; threat-model claim 5), each run end to end over
//! real mutual TLS, with the coordinator deviating through its hooks and HQ's own
//! nodes colluding through theirs (feature `test-util`). Each test shows the
//! attacker gets nothing — no release, or a refusal logged with its reason on the
//! node — and, where it can, tries the reconstruction itself with everything HQ
//! holds, so a regression would be caught.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fedcrm::harness::{CDNOW, Cluster, ClusterOptions, NodeSpec, split_cdnow};
use fedcrm_analysis::rfm::{HistogramSpec, Layout, Metric, QuantileSearch};
use fedcrm_audit::Event;
use fedcrm_audit::log::read_records;
use fedcrm_coordinator::analyses::AnalysisError;
use fedcrm_coordinator::config::ReleaseRules;
use fedcrm_coordinator::round::Hooks;
use fedcrm_crypto::multiround::{self, PairSeed};
use fedcrm_crypto::secagg::{ClientAdvertised, PeerKeys, RoundParams, WordWidth, Words};
use fedcrm_crypto::shamir::{self, Share};
use fedcrm_crypto::{RoundId, SystemRandom};
use fedcrm_node::analyses::{Cache, LocalData, contribute};
use fedcrm_node::egress::read_log;
use fedcrm_node::session::{HeldSecrets, RoundTap};
use fedcrm_protocol::wire::{AnalysisKind, RevealedShare, Sealed, SignedKeys, ViewSignature};

/// Per-(node, round) records HQ collects.
type Shared<T> = Arc<Mutex<Vec<T>>>;

/// Everything HQ's colluding nodes and coordinator saw.
#[derive(Clone, Default)]
struct Loot {
    /// (HQ node, round) → what it holds once masked: its share of each U2 member's
    /// round self-mask seed, and its round pair seed with each neighbour in U2.
    held: Shared<(String, RoundId, HeldSecrets)>,
    /// U1's keys per round (every node sees them).
    roster: Arc<Mutex<BTreeMap<RoundId, Vec<SignedKeys>>>>,
    /// Every masked vector the coordinator received: (node, vector).
    masked: Shared<(String, Words)>,
    /// Every unmask answer the coordinator received: (round, node, reveals).
    revealed: Shared<(RoundId, String, Vec<RevealedShare>)>,
}

impl Loot {
    fn hooks(&self) -> Hooks {
        let (m, r) = (self.masked.clone(), self.revealed.clone());
        Hooks {
            on_masked: Some(Arc::new(move |n: &str, v: &Words| m.lock().unwrap().push((n.into(), v.clone())))),
            on_unmask_shares: Some(Arc::new(move |round, n: &str, s: &[RevealedShare]| {
                r.lock().unwrap().push((round, n.into(), s.to_vec()))
            })),
            ..Hooks::default()
        }
    }

    /// An HQ-owned channel that hands HQ everything it holds and signs any view.
    fn hq_node(&self, name: &str, data: String) -> NodeSpec {
        self.collude(NodeSpec::hq(name, data))
    }

    /// Any node made to collude with HQ: it hands over everything it holds and signs any view.
    fn collude(&self, mut s: NodeSpec) -> NodeSpec {
        let (held, roster, me) = (self.held.clone(), self.roster.clone(), s.name.clone());
        s.round_tap = Some(RoundTap {
            on_held_shares: Arc::new(move |round, secrets| held.lock().unwrap().push((me.clone(), round, secrets))),
            on_roster: Some(Arc::new(move |round, keys: &[SignedKeys]| {
                roster.lock().unwrap().insert(round, keys.to_vec());
            })),
            sign_any_view: true,
            fail_audit: None,
        });
        s
    }

    /// HQ's best attempt at `target`'s input in `round` (full SecAgg): Shamir-combine
    /// every share of its round self-mask seed that HQ's nodes hold or that reached the
    /// coordinator, gather its round pair seed with every other node of U2 (held by a
    /// colluding peer, or revealed to the coordinator as if the target had dropped),
    /// then strip its masked vector. `Err` says what was missing. (Keys serve a whole
    /// analysis and no share of one exists: there is no key to reconstruct.)
    fn strip(&self, round: RoundId, target: &str, t: usize) -> Result<Vec<u64>, String> {
        let roster = self.roster.lock().unwrap().get(&round).cloned().ok_or("HQ's nodes saw no roster")?;
        let u1: Vec<String> = roster.iter().map(|k| k.node.clone()).collect();
        let mut b: BTreeMap<u32, Share> = BTreeMap::new();
        let mut seeds: BTreeMap<String, PairSeed> = BTreeMap::new();
        let mut u2: BTreeSet<String> = BTreeSet::new();
        for (me, _, (shares, pair)) in self.held.lock().unwrap().iter().filter(|(_, r, _)| *r == round) {
            for (of, share) in shares {
                u2.insert(of.clone());
                if of == target {
                    b.insert(share.x, share.clone());
                }
            }
            if let Some((_, seed)) = pair.iter().find(|(p, _)| p == target) {
                seeds.insert(me.clone(), seed.clone());
            }
        }
        for (_, node, reveals) in self.revealed.lock().unwrap().iter().filter(|(r, ..)| *r == round) {
            let Ok(pos) = u1.binary_search(node) else { continue };
            for r in reveals.iter().filter(|r| r.of == target) {
                if r.self_mask {
                    if let Ok(share) = Share::from_parts(pos as u32 + 1, &r.y) {
                        b.insert(share.x, share);
                    }
                } else if let Ok(seed) = <[u8; 32]>::try_from(r.y.as_slice()) {
                    seeds.insert(node.clone(), PairSeed::from_bytes(seed));
                }
            }
        }
        let b: Vec<Share> = b.into_values().collect();
        let seed = shamir::combine(&b, t).map_err(|e| format!("self-mask seed: {} shares: {e}", b.len()))?;
        let missing: Vec<&String> = u2.iter().filter(|v| *v != target && !seeds.contains_key(*v)).collect();
        if !missing.is_empty() {
            return Err(format!("pair seeds: none with {missing:?}"));
        }
        let y = self.masked.lock().unwrap().iter().rev().find(|(n, _)| n == target).map(|x| x.1.clone());
        let y = y.ok_or("no masked vector of the target")?;
        let pairs: Vec<(String, PairSeed)> = seeds.into_iter().filter(|(v, _)| u2.contains(v)).collect();
        Ok(multiround::test_util_strip(&round, target, &seed, &pairs, &y))
    }
}

fn coarse() -> Vec<HistogramSpec> {
    Metric::ALL.iter().map(|&m| QuantileSearch::coarse_spec(m)).collect()
}

/// A node's true local histogram vector (what the attack tries to read).
fn truth(cluster: &Cluster, node: &str, specs: &[HistogramSpec]) -> Vec<u64> {
    let analysis = common::analysis(AnalysisKind::RfmHistograms(specs.to_vec()));
    let cfg = cluster.node_configs.iter().find(|c| c.name == node).unwrap();
    let ds = cfg.data.load().unwrap();
    contribute(&analysis, &mut LocalData::new(&std::sync::Arc::new(ds).into(), &mut Cache::default()), &cfg.policy)
        .unwrap()
        .vector
        .to_vec()
}

fn sent(cluster: &Cluster, node: &str) -> Vec<String> {
    let cfg = cluster.node_configs.iter().find(|c| c.name == node).unwrap();
    read_log(&cfg.audit_dir).unwrap().into_iter().map(|e| e.kind).collect()
}

fn opts(nodes: Vec<NodeSpec>) -> ClusterOptions {
    ClusterOptions {
        nodes,
        release: ReleaseRules { min_participants: 3, min_cohort: 0 },
        phase_timeout_seconds: 10,
        ..Default::default()
    }
}

/// `hq` HQ-owned colluding channels, then franchisees of distinct organisations.
fn roster(loot: &Loot, hq: usize, franchisees: &[&str]) -> Vec<NodeSpec> {
    let data = split_cdnow(CDNOW, &vec![1; hq + franchisees.len()], true);
    let mut out = Vec::new();
    for (i, d) in data.into_iter().enumerate() {
        if i < hq {
            out.push(loot.hq_node(&format!("hq-{}", i + 1), d));
        } else {
            out.push(NodeSpec::franchisee(franchisees[i - hq], d));
        }
    }
    out
}

/// The round ids of an analysis' rounds, from the coordinator's log.
fn rounds(cluster: &Cluster) -> Vec<RoundId> {
    read_records(&cluster.coordinator.config.audit_dir)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.event {
            Event::RoundStarted { round, .. } => {
                let b: Vec<u8> = (0..16).map(|i| u8::from_str_radix(&round[2 * i..2 * i + 2], 16).unwrap()).collect();
                Some(RoundId(b.try_into().unwrap()))
            }
            _ => None,
        })
        .collect()
}

/// A1: five HQ channels, the target and one other franchisee; HQ picks t = 5, which
/// its five nodes reach on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1_hq_nodes_reaching_the_threshold_get_no_share_of_the_target() {
    common::logs();
    // An honest coordinator says at once that no threshold works for this roster.
    let loot = Loot::default();
    let cluster =
        Cluster::start_with_hooks(opts(roster(&loot, 5, &["fr-target", "fr-other"])), loot.hooks()).await.unwrap();
    let err = cluster.coordinator.run_histograms(&common::request("A1 honest"), coarse()).await.unwrap_err();
    assert!(err.to_string().contains("would refuse"), "{err}");
    assert_eq!(sent(&cluster, "fr-target"), vec!["hello"]);
    cluster.stop().await;

    // HQ forces t = 5 anyway.
    let loot = Loot::default();
    let hooks = Hooks { force_threshold: Some(5), ..loot.hooks() };
    let cluster = Cluster::start_with_hooks(opts(roster(&loot, 5, &["fr-target", "fr-other"])), hooks).await.unwrap();
    let out = cluster.coordinator.run_histograms(&common::request("A1 forced"), coarse()).await;
    // Whatever HQ computed, the target is not in it.
    if let Ok(o) = &out {
        assert!(!o.release.contributors.iter().any(|c| c.starts_with("fr-")), "{:?}", o.release.contributors);
    }
    assert_eq!(sent(&cluster, "fr-target"), vec!["hello", "refusal"]);
    let why = common::refusals(&cluster, "fr-target");
    assert!(why.iter().any(|r| r.contains("2t > n + H + C") && r.contains("H = 5")), "{why:?}");
    assert_eq!(sent(&cluster, "fr-other"), vec!["hello", "refusal"]);
    // HQ tries: its nodes hold no share of the target's secrets, and it has no masked vector of it.
    let round = rounds(&cluster)[0];
    let attempt = loot.strip(round, "fr-target", 5);
    assert!(attempt.is_err(), "HQ read the target's histograms");
    assert!(!loot.masked.lock().unwrap().iter().any(|(n, _)| n == "fr-target"));
    cluster.stop().await;
}

/// A2: after the target masked its input, HQ declares two other franchisees dropped
/// to leave only itself and the target (plus one other) to unmask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a2_franchisees_made_to_look_dropped_expose_no_one() {
    common::logs();
    let names = ["fr-target", "fr-b", "fr-c", "fr-d", "fr-e"];
    // n = 7, H = 2, c = 1: t = 6, one dropout tolerated.
    let loot = Loot::default();
    let hide = |gone: &'static [&'static str]| -> fedcrm_coordinator::round::ViewTamper {
        Arc::new(move |_node: &str, s: &mut Vec<String>, d: &mut Vec<String>| {
            for g in gone {
                if let Some(i) = s.iter().position(|x| x == g) {
                    s.remove(i);
                    d.push(g.to_string());
                }
            }
            d.sort();
        })
    };
    let hooks = Hooks { tamper_view: Some(hide(&["fr-b", "fr-c"])), ..loot.hooks() };
    let cluster = Cluster::start_with_hooks(opts(roster(&loot, 2, &names)), hooks).await.unwrap();
    let err = cluster.coordinator.run_histograms(&common::request("A2"), coarse()).await.unwrap_err();
    assert!(matches!(err, AnalysisError::Round(_)), "{err}");
    // The target masked its input, then refused to sign a view with too few survivors.
    assert!(sent(&cluster, "fr-target").contains(&"masked-chunk".to_string()));
    assert!(!sent(&cluster, "fr-target").contains(&"unmask-shares".to_string()));
    let why = common::refusals_when(&cluster, "fr-target", |r| r.contains("fewer than t=6")).await;
    assert!(why.iter().any(|r| r.contains("fewer than t=6")), "{why:?}");
    // No honest franchisee revealed anything; HQ's own shares are two of six.
    assert!(loot.revealed.lock().unwrap().iter().all(|(_, n, _)| n.starts_with("hq-")));
    let round = rounds(&cluster)[0];
    let attempt = loot.strip(round, "fr-target", 6);
    assert!(attempt.as_ref().is_err_and(|e| e.contains("shares")), "{attempt:?}");
    cluster.stop().await;

    // One franchisee made to look dropped: the sum is released, but it holds three
    // other franchisees' inputs besides the target's; release − HQ's own data is not
    // the target's histogram.
    let loot = Loot::default();
    let hooks = Hooks { ignore_masked_from: vec!["fr-b".into()], ..loot.hooks() };
    let cluster = Cluster::start_with_hooks(opts(roster(&loot, 2, &names)), hooks).await.unwrap();
    let out = cluster.coordinator.run_histograms(&common::request("A2 one dropped"), coarse()).await.unwrap();
    let released: Vec<u64> = out.release.counts.iter().map(|c| c.unwrap()).collect();
    let hq: Vec<u64> = {
        let (a, b) = (truth(&cluster, "hq-1", &coarse()), truth(&cluster, "hq-2", &coarse()));
        a.iter().zip(&b).map(|(x, y)| x + y).collect()
    };
    let residual: Vec<u64> = released.iter().zip(&hq).map(|(r, h)| r - h).collect();
    let target = truth(&cluster, "fr-target", &coarse());
    assert_ne!(residual, target, "release minus HQ's data is the target's histogram");
    let others: Vec<u64> = ["fr-target", "fr-c", "fr-d", "fr-e"]
        .iter()
        .map(|n| truth(&cluster, n, &coarse()))
        .fold(vec![0; target.len()], |acc, v| acc.iter().zip(&v).map(|(a, b)| a + b).collect());
    assert_eq!(residual, others, "the residual is the target plus three honest franchisees");
    assert!(loot.strip(rounds(&cluster)[0], "fr-target", 6).is_err());
    cluster.stop().await;
}

/// A3: histograms at D over six nodes, then at D+1 with one node left out (HQ cuts
/// its session; a node can also leave itself out, e.g. by its monthly cap): A − B
/// would be that node's histograms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a3_differencing_across_analyses_is_refused_by_population_even_after_a_restart() {
    common::logs();
    let loot = Loot::default();
    // HQ forces the roster (all connected nodes) and t, skipping its own planner.
    let hooks = Hooks { force_threshold: Some(4), ..loot.hooks() };
    let mut cluster = Cluster::start_with_hooks(opts(common::cdnow_nodes(&[1; 6], true)), hooks).await.unwrap();
    let a = cluster.coordinator.run_histograms(&common::request("A3 day D"), coarse()).await.unwrap();
    assert_eq!(a.release.contributors.len(), 6);
    // node-0 restarts between the analyses: its guard is rebuilt from its audit log.
    cluster.restart_node("node-0").await.unwrap();
    disconnect(&mut cluster, "node-5").await;
    let masked_before = loot.masked.lock().unwrap().len();
    let mut next_day = common::request("A3 day D+1");
    next_day.reference_date = next_day.reference_date.next_day().unwrap();
    let err = cluster.coordinator.run_histograms(&next_day, coarse()).await.unwrap_err().to_string();
    assert!(err.contains("differencing") && err.contains("node-5") && err.contains("allowed again from"), "{err}");
    // Nothing was masked: every node refused over U2, before its vector left.
    assert_eq!(loot.masked.lock().unwrap().len(), masked_before);
    for n in ["node-0", "node-1", "node-2", "node-3", "node-4"] {
        let why = common::refusals(&cluster, n);
        assert!(why.iter().any(|r| r.contains("differencing") && r.contains("node-5")), "{n}: {why:?}");
    }
    // HQ holds one release; B, to subtract from A, does not exist.
    let releases = read_records(&cluster.coordinator.config.audit_dir)
        .unwrap()
        .into_iter()
        .filter(|r| matches!(r.event, Event::Release { .. }))
        .count();
    assert_eq!(releases, 1);
    cluster.stop().await;
}

/// A4: the policy follows the computation, not the coordinator's label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a4_a_label_approves_nothing_and_a_reused_id_dodges_no_cap() {
    common::logs();
    let with = |f: &dyn Fn(&mut NodeSpec)| {
        let mut nodes = common::cdnow_nodes(&[1; 5], true);
        nodes.iter_mut().for_each(f);
        nodes
    };
    // Franchisees allow only segment analyses; HQ labels histograms as one.
    let segments_only = |n: &mut NodeSpec| n.policy.allowed_analyses = vec!["rfm-segments".into()];
    let hooks = Hooks { relabel: Some("rfm-segments".into()), ..Hooks::default() };
    let cluster = Cluster::start_with_hooks(opts(with(&segments_only)), hooks).await.unwrap();
    let huge = HistogramSpec { metric: Metric::Monetary, layout: Layout::Linear { lo: 0, width: 1, bins: 1 << 20 } };
    let err = cluster.coordinator.run_histograms(&common::request("A4 huge"), vec![huge]).await.unwrap_err();
    assert!(err.to_string().contains("max_bins = 1024"), "{err}");
    let fine = HistogramSpec { metric: Metric::Monetary, layout: Layout::Linear { lo: 0, width: 1, bins: 1000 } };
    let err = cluster.coordinator.run_histograms(&common::request("A4 fine"), vec![fine]).await.unwrap_err();
    assert!(err.to_string().contains("\"rfm-histograms\" (as this node identifies the computation)"), "{err}");
    for n in common::node_names(5) {
        assert!(sent(&cluster, &n).iter().all(|k| k == "hello" || k == "refusal"), "{n}");
    }
    cluster.stop().await;

    // A monthly cap of one segment analysis: a second one under the first's id is refused.
    let capped = |n: &mut NodeSpec| {
        n.policy.monthly_analysis_caps.insert("rfm-segments".into(), 1);
    };
    let hooks = Hooks { reuse_analysis_id: Some("0123456789abcdef".into()), ..Hooks::default() };
    let cluster = Cluster::start_with_hooks(opts(with(&capped)), hooks).await.unwrap();
    cluster.segments(common::REFERENCE, "A4 first").await.unwrap();
    let err = cluster.segments(common::REFERENCE, "A4 again under the same id").await.unwrap_err();
    assert!(err.message().contains("already"), "{}", err.message());
    cluster.stop().await;
}

/// A6: the coordinator shows two honest franchisees different U3 sets, so one reveals
/// the target's self-mask share and the other its mask-key share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a6_split_views_cannot_strip_the_targets_masks() {
    common::logs();
    let names = ["fr-target", "fr-f1", "fr-f2", "fr-f3"];
    // With t = H + 1 = 3 the split would work; every honest franchisee refuses that t.
    let loot = Loot::default();
    let hooks = Hooks { force_threshold: Some(3), ..loot.hooks() };
    let cluster = Cluster::start_with_hooks(opts(roster(&loot, 2, &names)), hooks).await.unwrap();
    let _ = cluster.coordinator.run_histograms(&common::request("A6 t = H + 1"), coarse()).await;
    for n in names {
        assert!(common::refusals(&cluster, n).iter().any(|r| r.contains("2t > n + H + C")), "{n}");
        assert_eq!(sent(&cluster, n), vec!["hello", "refusal"], "{n}");
    }
    cluster.stop().await;

    // With t = 5 (n = 6, H = 2, c = 1), HQ shows fr-f2 a view where the target
    // dropped, and signs that view with its own nodes' keys.
    let loot = Loot::default();
    let keys: Arc<Mutex<Vec<(String, fedcrm_pki::SigningKey)>>> = Arc::default();
    let signer_keys = keys.clone();
    let hooks = Hooks {
        tamper_view: Some(Arc::new(|node: &str, s: &mut Vec<String>, d: &mut Vec<String>| {
            if node == "fr-f2" {
                s.retain(|x| x != "fr-target");
                d.push("fr-target".into());
                d.sort();
            }
        })),
        extra_view_signatures: Some(Arc::new(move |round: RoundId, u2: &[String], u3: &[String]| {
            let payload = fedcrm_crypto::secagg::consistency_payload(&round, None, u2, u3);
            signer_keys
                .lock()
                .unwrap()
                .iter()
                .map(|(n, k)| ViewSignature {
                    node: n.clone(),
                    signature: k.sign(&payload).unwrap(),
                    certificate: Vec::new(),
                })
                .collect()
        })),
        ..loot.hooks()
    };
    let cluster = Cluster::start_with_hooks(opts(roster(&loot, 2, &names)), hooks).await.unwrap();
    for n in ["hq-1", "hq-2"] {
        let pem = std::fs::read_to_string(cluster.pki.dir.join(format!("{n}.key"))).unwrap();
        let key = fedcrm_pki::PrivateKeyPem::new(pem);
        keys.lock().unwrap().push((n.into(), fedcrm_pki::SigningKey::from_pem(&key).unwrap()));
    }
    let _ = cluster.coordinator.run_histograms(&common::request("A6 split view"), coarse()).await;
    // fr-f2 signed its view but never got t signatures on it, so revealed nothing.
    assert!(!sent(&cluster, "fr-f2").contains(&"unmask-shares".to_string()));
    let why = common::refusals(&cluster, "fr-f2");
    assert!(why.iter().any(|r| r.contains("consistency check") && r.contains("fewer than t = 5")), "{why:?}");
    // HQ tries with everything it holds: enough shares of the target's self-mask
    // seed, two of its mask key.
    let round = rounds(&cluster)[0];
    let attempt = loot.strip(round, "fr-target", 5);
    assert!(attempt.as_ref().is_err_and(|e| e.contains("pair seed")), "{attempt:?}");
    // The auditor sees it: fr-f1 and fr-f2 logged different views of one round.
    let dirs: Vec<std::path::PathBuf> = ["fr-f1", "fr-f2"]
        .iter()
        .map(|n| cluster.node_configs.iter().find(|c| c.name == *n).unwrap().audit_dir.clone())
        .collect();
    let ca = fedcrm_pki::pem_to_der_certs(&std::fs::read_to_string(cluster.pki.ca_path()).unwrap()).unwrap().remove(0);
    let _dir = cluster.stop().await;
    // The verifier's clock: just after the last record (never the real calendar).
    let now = dirs.iter().flat_map(|d| read_records(d).unwrap()).map(|r| r.time_ms).max().unwrap() + 60_000;
    let failure = fedcrm_audit::verify::verify_paths_at(&dirs, &ca, now).unwrap_err();
    assert_eq!(failure.problem, fedcrm_audit::verify::Problem::SplitView, "{failure}");
}

/// A7: a local audit-log failure ends the session and is never blamed on the peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a7_local_audit_failures_are_not_blamed_on_the_peer() {
    common::logs();
    // The node's disk fails: its session ends (fail closed) with its own error, and
    // the coordinator sees a disconnect, not a malformed message.
    let fail = Arc::new(AtomicBool::new(false));
    let mut nodes = common::cdnow_nodes(&[1; 5], true);
    nodes[0].round_tap = Some(RoundTap {
        on_held_shares: Arc::new(|_, _| {}),
        on_roster: None,
        sign_any_view: false,
        fail_audit: Some(fail.clone()),
    });
    let mut cluster = Cluster::start(opts(nodes)).await.unwrap();
    fail.store(true, Ordering::SeqCst);
    let out = cluster.coordinator.run_histograms(&common::request("A7 node disk"), coarse()).await.unwrap();
    assert_eq!(out.exits.get("node-0").map(String::as_str), Some("disconnected"), "{:?}", out.exits);
    let end = cluster.node_result("node-0").await.unwrap();
    let e = end.unwrap_err().to_string();
    assert!(e.contains("this node's audit log failed"), "{e}");
    assert!(!sent(&cluster, "node-0").contains(&"refusal".to_string()));
    cluster.stop().await;

    // The coordinator's disk fails mid-round: the round stops as its own fault.
    let fail = Arc::new(AtomicBool::new(false));
    let flag = fail.clone();
    let hooks = Hooks {
        on_masked: Some(Arc::new(move |_: &str, _: &Words| flag.store(true, Ordering::SeqCst))),
        fail_audit: Some(fail.clone()),
        ..Hooks::default()
    };
    let cluster = Cluster::start_with_hooks(opts(common::cdnow_nodes(&[1; 5], true)), hooks).await.unwrap();
    let err = cluster.coordinator.run_histograms(&common::request("A7 coordinator disk"), coarse()).await.unwrap_err();
    let m = err.to_string();
    assert!(m.contains("the coordinator failed locally") && m.contains("no node is at fault"), "{m}");
    assert!(!m.contains("malformed"), "{m}");
    cluster.stop().await;
}

/// HQ chooses who is connected: a node it wants out of the next round has its
/// session cut (the node stays honest; its guard is rebuilt from its log on return).
async fn disconnect(cluster: &mut Cluster, name: &str) {
    let i = cluster.nodes.iter().position(|(n, _)| n == name).expect("node running");
    let (_, h) = cluster.nodes.remove(i);
    h.abort();
    let _ = h.await;
    for _ in 0..200 {
        if !cluster.coordinator.registry.connected().iter().any(|p| p.name == name) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{name} still connected 10 s after its session was cut");
}

/// R1 (found in review): three sums, each pair differing by three organisations —
/// S1 over {T, a, b}, S2 over {T, c, d}, S3 over {a, b, c, d} — give T = (S1 + S2 − S3)/2.
/// HQ forces t = 3 and the rosters; the nodes refuse S2 and S3 themselves, because
/// each shares fewer than three organisations with S1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_three_sums_that_would_isolate_a_franchisee_are_refused() {
    common::logs();
    let names = ["fr-target", "fr-a", "fr-b", "fr-c", "fr-d"];
    let data = split_cdnow(CDNOW, &[1; 5], true);
    let nodes: Vec<NodeSpec> = names.iter().zip(data).map(|(n, d)| NodeSpec::franchisee(n, d)).collect();
    let loot = Loot::default();
    let hooks = Hooks { force_threshold: Some(3), ..loot.hooks() };
    let mut cluster = Cluster::start_with_hooks(opts(nodes), hooks).await.unwrap();
    let c = cluster.coordinator.clone();
    disconnect(&mut cluster, "fr-c").await;
    disconnect(&mut cluster, "fr-d").await;
    let s1 = c.run_histograms(&common::request("R1 sum 1"), coarse()).await.expect("S1 over T, a, b");
    assert_eq!(s1.release.contributors.len(), 3);

    cluster.restart_node("fr-c").await.unwrap();
    cluster.restart_node("fr-d").await.unwrap();
    disconnect(&mut cluster, "fr-a").await;
    disconnect(&mut cluster, "fr-b").await;
    let s2 = c.run_histograms(&common::request("R1 sum 2"), coarse()).await;
    assert!(s2.is_err(), "S2 over T, c, d was released");
    let why = common::refusals(&cluster, "fr-target");
    assert!(why.iter().any(|r| r.contains("shares only fr-target")), "{why:?}");
    let masked_by_target = loot.masked.lock().unwrap().iter().filter(|(n, _)| n == "fr-target").count();
    assert_eq!(masked_by_target, 1, "the target masked its input for S2 too");

    cluster.restart_node("fr-a").await.unwrap();
    cluster.restart_node("fr-b").await.unwrap();
    disconnect(&mut cluster, "fr-target").await;
    let s3 = c.run_histograms(&common::request("R1 sum 3"), coarse()).await;
    assert!(s3.is_err(), "S3 over a, b, c, d was released");
    for n in ["fr-a", "fr-b"] {
        assert!(
            common::refusals(&cluster, n).iter().any(|r| r.contains("shares only")),
            "{n}: {:?}",
            common::refusals(&cluster, n)
        );
    }
    cluster.stop().await;
}

/// R3 (found in review): one franchisee organisation running five stores sides with
/// HQ. Counting colluders by node (c = 1), t = 5 passes and Y's five stores hold t
/// shares of the target's secrets; counted by organisation (all of Y's stores), the
/// target needs t = 7.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_a_colluding_organisation_brings_all_its_stores() {
    common::logs();
    let loot = Loot::default();
    let data = split_cdnow(CDNOW, &[1; 7], true);
    let mut nodes =
        vec![NodeSpec::franchisee("fr-target", data[0].clone()), NodeSpec::franchisee("fr-z", data[1].clone())];
    for (i, d) in data.into_iter().enumerate().skip(2) {
        let mut s = NodeSpec::franchisee(&format!("y-store-{}", i - 1), d);
        s.organisation = "Y Holdings Ltd".into();
        nodes.push(loot.collude(s));
    }
    // The coordinator plans t = 7 for this roster (no dropout tolerated).
    let cluster = Cluster::start_with_hooks(opts(nodes.clone()), loot.hooks()).await.unwrap();
    cluster.coordinator.run_histograms(&common::request("R3 planned"), coarse()).await.unwrap();
    let t = read_records(&cluster.coordinator.config.audit_dir)
        .unwrap()
        .into_iter()
        .find_map(|r| match r.event {
            Event::RoundStarted { threshold, .. } => Some(threshold as usize),
            _ => None,
        })
        .unwrap();
    assert_eq!(t, 7);
    // Y's five stores hold five shares of seven: HQ cannot strip the target's masks.
    let attempt = loot.strip(rounds(&cluster)[0], "fr-target", 5);
    assert!(attempt.is_err(), "five shares stripped the target");
    cluster.stop().await;

    // HQ forces t = 5: the target refuses before anything of it leaves.
    let loot = Loot::default();
    let hooks = Hooks { force_threshold: Some(5), ..loot.hooks() };
    let nodes: Vec<NodeSpec> =
        nodes.into_iter().map(|s| if s.name.starts_with("y-") { loot.collude(s) } else { s }).collect();
    let cluster = Cluster::start_with_hooks(opts(nodes), hooks).await.unwrap();
    let _ = cluster.coordinator.run_histograms(&common::request("R3 forced"), coarse()).await;
    assert_eq!(sent(&cluster, "fr-target"), vec!["hello", "refusal"]);
    assert!(
        common::refusals(&cluster, "fr-target").iter().any(|r| r.contains("C = 5")),
        "{:?}",
        common::refusals(&cluster, "fr-target")
    );
    assert!(loot.strip(rounds(&cluster)[0], "fr-target", 5).is_err());
    cluster.stop().await;
}

/// R5 (found in review): {a,b,c}, {d,e,f} and {T,a,…,f} — every pair passes every
/// node's rules (T is in one sum only; a sees S1 and S3, which differ and share by
/// at least three organisations), yet T = S3 − S1 − S2. No node sees all three; the
/// coordinator does, and refuses the sum that would complete the combination. (A
/// coordinator that deviates skips its own check: differential privacy is the
/// defence against that — docs/threat-model.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r5_the_coordinator_refuses_a_sum_that_completes_an_isolating_combination() {
    common::logs();
    let names = ["fr-target", "fr-a", "fr-b", "fr-c", "fr-d", "fr-e", "fr-f"];
    let data = split_cdnow(CDNOW, &[1; 7], true);
    let nodes: Vec<NodeSpec> = names.iter().zip(data).map(|(n, d)| NodeSpec::franchisee(n, d)).collect();
    let mut cluster = Cluster::start(opts(nodes)).await.unwrap();
    let c = cluster.coordinator.clone();
    for n in ["fr-target", "fr-d", "fr-e", "fr-f"] {
        disconnect(&mut cluster, n).await;
    }
    c.run_histograms(&common::request("R5 sum 1"), coarse()).await.expect("S1 over a, b, c");
    for n in ["fr-d", "fr-e", "fr-f"] {
        cluster.restart_node(n).await.unwrap();
    }
    for n in ["fr-a", "fr-b", "fr-c"] {
        disconnect(&mut cluster, n).await;
    }
    c.run_histograms(&common::request("R5 sum 2"), coarse()).await.expect("S2 over d, e, f");
    for n in ["fr-target", "fr-a", "fr-b", "fr-c"] {
        cluster.restart_node(n).await.unwrap();
    }
    // The coordinator will not run S3; it falls back to the latest population (S2's),
    // which reveals nothing new, and says why the others were left out.
    let out = c.run_histograms(&common::request("R5 sum 3"), coarse()).await.unwrap();
    assert_eq!(out.release.contributors, vec!["fr-d", "fr-e", "fr-f"]);
    let why = &out.exits["fr-target"];
    assert!(why.contains("combination of sums reveal the data of fr-target "), "{why}");
    // Nothing of the target left its machine but its hello.
    assert!(sent(&cluster, "fr-target").iter().all(|k| k == "hello"));
    cluster.stop().await;
}

/// R6 (found in review): a node kept out of the last phases must still remember the
/// sum its input is in. HQ shows the target a slightly different U3 in Round 3 (ConsistencyCheck): it
/// signs that view, then refuses to unmask for want of t signatures on it; the others
/// unmask a sum holding its input. Then S2 over
/// {T, d, e, f, hq} and S3 over {a, …, f} would give 2T = S1 + S2 − S3 − 2·hq. The
/// target recorded S1 (over U2) before its masked vector left, so it refuses S2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r6_a_target_kept_out_of_unmasking_still_remembers_the_sum() {
    common::logs();
    let names = ["fr-target", "fr-a", "fr-b", "fr-c", "fr-d", "fr-e", "fr-f"];
    let data = split_cdnow(CDNOW, &[1; 8], true);
    let loot = Loot::default();
    let mut nodes: Vec<NodeSpec> = names.iter().zip(data.clone()).map(|(n, d)| NodeSpec::franchisee(n, d)).collect();
    nodes.push(loot.collude(NodeSpec::hq("hq-shop", data[7].clone())));
    let tamper: fedcrm_coordinator::round::ViewTamper =
        Arc::new(|node: &str, survivors: &mut Vec<String>, dropped: &mut Vec<String>| {
            if node == "fr-target" && survivors.iter().any(|s| s == "hq-shop") {
                survivors.retain(|s| s != "hq-shop");
                dropped.push("hq-shop".into());
                dropped.sort();
            }
        });
    let hooks = Hooks { force_threshold: Some(4), tamper_view: Some(tamper), ..loot.hooks() };
    let mut cluster = Cluster::start_with_hooks(opts(nodes), hooks).await.unwrap();
    let c = cluster.coordinator.clone();
    for n in ["fr-d", "fr-e", "fr-f"] {
        disconnect(&mut cluster, n).await;
    }
    let s1 = c.run_histograms(&common::request("R6 sum 1"), coarse()).await.expect("S1 released");
    assert!(s1.release.contributors.contains(&"fr-target".to_string()));
    // The target never signed S1's view, but its log holds the sum it may be in.
    let cfg = cluster.node_configs.iter().find(|c| c.name == "fr-target").unwrap().clone();
    let remembered: Vec<Vec<String>> = read_records(&cfg.audit_dir)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.event {
            Event::Contributed { contributors, .. } => Some(contributors.into_iter().map(|m| m.name).collect()),
            _ => None,
        })
        .collect();
    // Over U2 before masking, then over the U3 it was shown (HQ's node aside, the same).
    assert!(remembered.last().is_some_and(|m| m.contains(&"fr-target".to_string()) && m.len() >= 4), "{remembered:?}");
    for n in ["fr-d", "fr-e", "fr-f"] {
        cluster.restart_node(n).await.unwrap();
    }
    for n in ["fr-a", "fr-b", "fr-c"] {
        disconnect(&mut cluster, n).await;
    }
    let masked_before = loot.masked.lock().unwrap().iter().filter(|(n, _)| n == "fr-target").count();
    let _ = c.run_histograms(&common::request("R6 sum 2"), coarse()).await;
    let why = common::refusals(&cluster, "fr-target");
    assert!(why.iter().any(|r| r.contains("shares only fr-target")), "{why:?}");
    let masked_after = loot.masked.lock().unwrap().iter().filter(|(n, _)| n == "fr-target").count();
    assert_eq!(masked_before, masked_after, "the target masked its input for S2");
    cluster.stop().await;
}

/// Claim 5: the coordinator substitutes the target's round keys with keys it made, so
/// that the other nodes seal the target's shares to HQ — keeping the target's
/// signature, stripping it, or replacing it with HQ's own node's certificate and
/// signature — or strips its own signature from the round's roster. Every honest node
/// refuses before any sealed share leaves it, and HQ, holding the secret of the keys
/// it substituted, has nothing to open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_substituting_round_keys_or_stripping_the_roster_signature_gets_no_share() {
    common::logs();
    type Substitution = fn(&mut SignedKeys, &SignedKeys);
    /// HQ's keys for the target, with their secrets, and U1 as shown to the nodes.
    type HqKeys = (ClientAdvertised, Vec<PeerKeys>);
    let keep: Substitution = |_, _| {};
    let strip: Substitution = |target, _| target.signature.clear();
    let hq_signs: Substitution = |target, hq| {
        target.certificate = hq.certificate.clone();
        target.signature = hq.signature.clone();
    };
    let names = ["fr-target", "fr-b", "fr-c", "fr-d", "fr-e"];
    let key_refusal = "signature on the keys of fr-target rejected";
    for (substitution, refusal) in [
        (keep, key_refusal),
        (strip, key_refusal),
        (hq_signs, "roster entry fr-target carries the certificate of hq-1"),
    ] {
        let loot = Loot::default();
        // HQ's own keys for the target, made in the round (they are bound to its id).
        let hq_target: Arc<Mutex<Option<HqKeys>>> = Arc::default();
        // Every sealed share the coordinator receives for the target.
        let to_target: Shared<(String, Vec<u8>)> = Arc::default();
        let (made, seen) = (hq_target.clone(), to_target.clone());
        let hooks = Hooks {
            tamper_roster: Some(Arc::new(move |round, keys: &mut Vec<SignedKeys>| {
                let params = RoundParams { round, t: keys.len(), d: 1, width: WordWidth::W32 };
                let (client, mine) = ClientAdvertised::new(params, "fr-target", &SystemRandom::new()).unwrap();
                let hq = keys.iter().find(|k| k.node == "hq-1").unwrap().clone();
                let target = keys.iter_mut().find(|k| k.node == "fr-target").unwrap();
                (target.enc, target.mask) = (mine.enc, mine.mask);
                substitution(target, &hq);
                let shown = keys.iter().map(|k| PeerKeys { name: k.node.clone(), enc: k.enc, mask: k.mask }).collect();
                *made.lock().unwrap() = Some((client, shown));
            })),
            on_sealed_shares: Some(Arc::new(move |from: &str, shares: &[Sealed]| {
                for s in shares.iter().filter(|s| s.peer == "fr-target") {
                    seen.lock().unwrap().push((from.into(), s.ciphertext.clone()));
                }
            })),
            ..loot.hooks()
        };
        let cluster = Cluster::start_with_hooks(opts(roster(&loot, 2, &names)), hooks).await.unwrap();
        let out = cluster.coordinator.run_histograms(&common::request("claim 5"), coarse()).await;
        // HQ tries: it opens the shares sealed to the target with the secret of the
        // keys it substituted. Nothing was sealed to them.
        let (client, shown) = hq_target.lock().unwrap().take().expect("the roster was substituted");
        let u1: Vec<String> = shown.iter().map(|k| k.name.clone()).collect();
        let incoming = to_target.lock().unwrap().clone();
        let (hq_shared, _) = client.share(shown, &SystemRandom::new()).unwrap();
        let opened = hq_shared.open(&u1, &incoming).map(|(opened, _)| opened.unopened());
        assert!(opened.is_err() && incoming.is_empty(), "HQ opened shares sealed to its keys: {opened:?}");
        assert!(out.is_err(), "a round over substituted keys released a result");
        for node in &names[1..] {
            assert_eq!(sent(&cluster, node), vec!["hello", "advertise-keys", "refusal"], "{node}");
            let why = common::refusals(&cluster, node);
            assert!(why.iter().any(|r| r.contains(refusal)), "{node}: {why:?}");
        }
        assert!(loot.strip(rounds(&cluster)[0], "fr-target", 6).is_err(), "HQ read the target's histograms");
        cluster.stop().await;
    }

    // The coordinator strips its signature from the round's roster: no node joins.
    let loot = Loot::default();
    let hooks =
        Hooks { tamper_roster_signature: Some(Arc::new(|signature: &mut Vec<u8>| signature.clear())), ..loot.hooks() };
    let cluster = Cluster::start_with_hooks(opts(roster(&loot, 2, &names)), hooks).await.unwrap();
    assert!(cluster.coordinator.run_histograms(&common::request("claim 5 unsigned"), coarse()).await.is_err());
    for node in names {
        assert_eq!(sent(&cluster, node), vec!["hello", "refusal"], "{node}");
        let why = common::refusals(&cluster, node);
        assert!(
            why.iter().any(|r| r.contains("the round's roster is not signed by the coordinator")),
            "{node}: {why:?}"
        );
    }
    cluster.stop().await;
}
