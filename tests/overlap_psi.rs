//! Issue 12: the channel-overlap matrix by private set intersection, pair by pair with
//! the real protocol pieces — each node's identifiers read by its own data loader and
//! normaliser (`fedcrm_node::identifiers`), its run key signed with its certified key
//! with its role and checked by the peer (`fedcrm_protocol::psi::SignedRunKey`), its
//! lists blinded, padded (the comparer's with trap points), shuffled and sealed node to
//! node (`fedcrm_node::psi::{Comparer, Responder}`), the side that compares chosen by
//! the rule both compute — equals the plaintext intersections
//! computed apart (`fedcrm::pooled::overlap`), on CDNOW customers assigned to
//! overlapping channels and on the synthetic jewellery channels (DP off: exact counts),
//! first in memory, then over mutual TLS through the coordinator.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use fedcrm::harness::{BrandPki, CDNOW, overlap_cdnow};
use fedcrm::pooled;
use fedcrm_crypto::keys::RoundSecret;
use fedcrm_crypto::psi::{self, BlindingKey, Domain};
use fedcrm_crypto::{RoundId, SystemRandom};
use fedcrm_node::data::{DataConfig, Format};
use fedcrm_node::identifiers::{MatchOn, customer_identifiers};
use fedcrm_node::psi::{Comparer, DEFAULT_MAX_TRAPS, ListLimits, PairKeys, Responder};
use fedcrm_pki::{Identity, OrgKind, Role, SigningKey, Validity};
use fedcrm_protocol::psi::{PairRole, Side, SignedRunKey, comparer};

const LIMITS: ListLimits = ListLimits { min_points: 256, max_points: 1 << 20, max_traps: DEFAULT_MAX_TRAPS };

/// One channel's node: its certified key, kind, and identifiers as its loader reads them.
struct Channel {
    name: String,
    kind: OrgKind,
    key: SigningKey,
    cert: Vec<u8>,
    /// A time inside its certificate's validity (no test reads the clock to decide).
    inside: u64,
    ids: Vec<String>,
}

fn load(dir: &Path, name: &str, format: Format, data: &str, withdrawn: Option<&str>, on: MatchOn) -> Vec<String> {
    let path = dir.join(format!("{name}.data"));
    std::fs::write(&path, data).unwrap();
    let mut cfg = DataConfig::new(format, path);
    if let Some(w) = withdrawn {
        let wp = dir.join(format!("{name}.withdrawn"));
        std::fs::write(&wp, w).unwrap();
        cfg.consent_withdrawals = Some(wp);
    }
    let ds = cfg.load().unwrap();
    customer_identifiers(&ds.purchases, on).ids.clone()
}

fn channel(pki: &BrandPki, name: &str, kind: OrgKind, ids: Vec<String>) -> Channel {
    let files = pki
        .issue(
            &Identity { name: name.into(), organisation: format!("{name} ltd"), role: Role::Node(kind) },
            Validity::days_from_now(2),
        )
        .unwrap();
    let key =
        SigningKey::from_pem(&fedcrm_pki::PrivateKeyPem::new(std::fs::read_to_string(&files.key).unwrap())).unwrap();
    let pem = std::fs::read_to_string(&files.cert).unwrap();
    let cert = fedcrm_pki::pem_to_der_certs(&pem).unwrap().remove(0);
    Channel { name: name.into(), kind, key, cert, inside: common::inside_validity(&pem), ids }
}

/// Every pair of channels through the PSI pieces; the exact count of each, keyed by
/// the two names in order, and who compared.
fn psi_matrix(pki: &BrandPki, channels: &[Channel]) -> BTreeMap<(String, String), (u64, String)> {
    let rng = SystemRandom::new();
    let ca = fedcrm_pki::pem_to_der_certs(&std::fs::read_to_string(pki.ca_path()).unwrap()).unwrap().remove(0);
    let run = RoundId::random(&rng).unwrap();
    let now = channels[0].inside;
    let mut out = BTreeMap::new();
    for (i, a) in channels.iter().enumerate() {
        for b in &channels[i + 1..] {
            let who = comparer(Side { name: &a.name, kind: a.kind }, Side { name: &b.name, kind: b.kind });
            let (c, r) = if who == a.name { (a, b) } else { (b, a) };
            // Each draws its blinding key, signs a run key with its role for the other (the
            // responder's with its key's commitment), and checks the other's before use.
            let (cs, rs) = (RoundSecret::generate(&rng).unwrap(), RoundSecret::generate(&rng).unwrap());
            let domain = Domain { version: psi::VERSION, run_id: run.0 };
            let (kc, kr) = (BlindingKey::generate(domain, &rng).unwrap(), BlindingKey::generate(domain, &rng).unwrap());
            let respond = PairRole::Respond { commitment: kr.public() };
            let c_key =
                SignedRunKey::sign(&run, &c.name, &r.name, &cs, PairRole::Compare, c.cert.clone(), &c.key).unwrap();
            let r_key = SignedRunKey::sign(&run, &r.name, &c.name, &rs, respond, r.cert.clone(), &r.key).unwrap();
            let (r_pub, r_id) = r_key.verify(&ca, &run, &r.name, &c.name, now).unwrap();
            let (c_pub, c_id) = c_key.verify(&ca, &run, &c.name, &r.name, now).unwrap();
            assert!(c_key.role.complements(&r_key.role));
            // Both sides recompute the rule from the certificates.
            let kind = |id: &Identity| match id.role {
                Role::Node(k) => k,
                _ => unreachable!("verify admits only node certificates"),
            };
            let sides = (Side { name: &c.name, kind: kind(&c_id) }, Side { name: &r.name, kind: kind(&r_id) });
            assert_eq!(comparer(sides.0, sides.1), c.name);
            let PairRole::Respond { commitment } = r_key.role else { unreachable!() };
            let on_c = PairKeys { run, me: &c.name, peer: &r.name, secret: &cs, peer_key: &r_pub };
            let on_r = PairKeys { run, me: &r.name, peer: &c.name, secret: &rs, peer_key: &c_pub };
            let cmp = Comparer::new(&on_c, commitment, kc, LIMITS).unwrap();
            let rsp = Responder::new(&on_r, kr, LIMITS).unwrap();
            let (from_c, cmp) = cmp.own_list(&c.ids, &rng).unwrap();
            let (from_r, rsp) = rsp.own_list(&r.ids, &rng).unwrap();
            let answer = rsp.answer(&from_c, &rng).unwrap();
            let count = cmp.compare(&from_r, &answer).unwrap();
            let key = if a.name < b.name { (a.name.clone(), b.name.clone()) } else { (b.name.clone(), a.name.clone()) };
            out.insert(key, (count, c.name.clone()));
        }
    }
    out
}

#[test]
fn cdnow_customers_in_overlapping_channels_overlap_exactly_as_in_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let pki = BrandPki::create(dir.path(), "CDNOW Records").unwrap();
    let texts = overlap_cdnow(CDNOW, 4, 5);
    let names: Vec<String> = (0..texts.len()).map(|i| format!("ch-{i}")).collect();
    let channels: Vec<Channel> = names
        .iter()
        .zip(&texts)
        .map(|(n, t)| {
            let ids = load(dir.path(), n, Format::Cdnow, t, None, MatchOn::CustomerKey);
            channel(&pki, n, OrgKind::Franchisee, ids)
        })
        .collect();
    let reference = pooled::overlap(
        &names.iter().zip(&texts).map(|(n, t)| (n.clone(), pooled::cdnow_customers(t))).collect::<Vec<_>>(),
    );
    let matrix = psi_matrix(&pki, &channels);
    for (pair, want) in &reference {
        let (got, by) = &matrix[pair];
        println!("{} ∩ {}: PSI {got} (compared by {by}), plaintext {want}", pair.0, pair.1);
        assert_eq!(got, want, "{pair:?}");
    }
    // Neighbouring channels share members, and the lower name compares between franchisees.
    assert!(reference[&("ch-0".to_string(), "ch-1".to_string())] > 100);
    assert!(matrix.iter().all(|((a, _), (_, by))| by == a));
}

#[test]
fn the_synthetic_channels_overlap_exactly_as_their_phones_do_and_hq_never_compares() {
    let dir = tempfile::tempdir().unwrap();
    let pki = BrandPki::create(dir.path(), "Jinyu Jewellery").unwrap();
    let mut channels = Vec::new();
    let mut plain = Vec::new();
    for (name, kind, purchases, withdrawn) in common::synthetic_channels(4000, 12) {
        let ids = load(dir.path(), &name, Format::Csv, &purchases, Some(&withdrawn), MatchOn::Phone);
        plain.push((name.clone(), common::plaintext_phones(&purchases, &withdrawn)));
        channels.push(channel(&pki, &name, kind, ids));
    }
    let reference = pooled::overlap(&plain);
    let matrix = psi_matrix(&pki, &channels);
    let kinds: BTreeMap<&str, OrgKind> = channels.iter().map(|c| (c.name.as_str(), c.kind)).collect();
    for (pair, want) in &reference {
        let (got, by) = &matrix[pair];
        println!("{} ∩ {}: PSI {got} (compared by {by}), plaintext {want}", pair.0, pair.1);
        assert_eq!(got, want, "{pair:?}");
        if kinds[pair.0.as_str()] != kinds[pair.1.as_str()] {
            assert_eq!(kinds[by.as_str()], OrgKind::Franchisee, "{pair:?}: HQ's side compared");
        }
    }
    assert!(reference.values().any(|&n| n > 0), "the synthetic channels share customers");
}

/// Over the network: the synthetic channels' overlap matrix through `fedcrm hq
/// overlap`'s client — each node's session, the coordinator's relay over mutual TLS
/// and the analyst API — equals the plaintext intersections (DP off), every count is
/// released by the franchisee's side when HQ takes part, each node's released size is
/// its count of usable phones; and nothing any node sent carries an identifier's SHA-256
/// or SHA-512, or an unblinded point H(x) of the run (each recomputed and searched for
/// in every byte each node's transport took).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mtls_the_matrix_equals_plaintext_and_no_node_sends_a_hash_or_an_unblinded_point() {
    use fedcrm::harness::{Cluster, ClusterOptions};
    let (specs, plain) = common::synthetic_specs(2500, 21);
    let reference = pooled::overlap(&plain);
    // HQ's own threshold at 1: a count below 10 is withheld by its comparing node.
    let min = specs[0].policy.psi.min_exact_count;
    let release = fedcrm_coordinator::config::ReleaseRules { min_cohort: 1, ..Default::default() };
    let options = ClusterOptions { nodes: specs, release, capture_wire: true, ..Default::default() };
    let cluster = Cluster::start(options).await.unwrap();
    let mut client = fedcrm::hq::AnalystClient::connect(&cluster.analyst).await.unwrap();
    let mut stages = Vec::new();
    let request = fedcrm_protocol::pb::OverlapRequest {
        purpose: "how many customers the channels share".into(),
        dp_off: true,
        nodes: vec![],
        ..Default::default()
    };
    let released = client.overlap(request, |p| stages.push(p.stage.clone())).await.unwrap();
    assert!(stages.iter().any(|s| s == "lists") && stages.last().map(String::as_str) == Some("released"), "{stages:?}");
    let kinds: BTreeMap<String, String> = released.channels.iter().map(|c| (c.node.clone(), c.kind.clone())).collect();
    for (name, set) in &plain {
        let c = released.channels.iter().find(|c| &c.node == name).unwrap();
        assert_eq!((c.customers as u64, c.withheld), (set.len() as u64, false), "{name}'s size");
    }
    assert_eq!(released.pairs.len(), reference.len(), "every pair compared: {:?}", released.exits);
    for p in &released.pairs {
        let want = reference[&(p.a.clone(), p.b.clone())];
        println!("{} ∩ {}: {} (compared by {}), plaintext {want}", p.a, p.b, p.shared, p.comparer);
        if want < min {
            assert!(p.withheld, "{p:?}: below the node's minimum for exact counts");
        } else {
            assert_eq!((p.shared as u64, p.withheld), (want, false), "{p:?}");
        }
        if kinds[&p.a] != kinds[&p.b] {
            assert_eq!(kinds[&p.comparer], "franchisee", "{p:?}: HQ's side compared");
        }
    }
    assert!(released.pairs.iter().any(|p| !p.withheld && p.shared > 0), "the channels share customers");
    assert!(released.pairs.iter().any(|p| p.withheld), "some pair shares fewer than {min}: withheld on its node");
    let leaked = |b: &fedcrm_protocol::pb::node_message::Body| matches!(b, fedcrm_protocol::pb::node_message::Body::PsiRelease(r) if r.counts.iter().any(|c| c.withheld && c.count != 0));
    assert_eq!(common::sent(&cluster, None, leaked), 0, "a withheld count went with its value");
    // The egress: no hash of any identifier and no unblinded point of this run.
    let run: [u8; 16] = hex::decode(&released.run_id).unwrap().try_into().unwrap();
    let domain = Domain { version: psi::VERSION, run_id: run };
    let captures = cluster.captures.lock().unwrap().clone();
    for (name, _) in &plain {
        let cfg = cluster.node_configs.iter().find(|c| &c.name == name).unwrap();
        let ds = cfg.data.load().unwrap();
        let ids = customer_identifiers(&ds.purchases, MatchOn::Phone).ids.clone();
        assert!(!ids.is_empty());
        let mut needles = std::collections::HashSet::new();
        for id in &ids {
            let sha256 = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
            let sha512 = ring::digest::digest(&ring::digest::SHA512, id.as_bytes());
            needles.insert(<[u8; 32]>::try_from(sha256.as_ref()).unwrap());
            needles.insert(<[u8; 32]>::try_from(&sha512.as_ref()[..32]).unwrap());
            needles.insert(psi::hash_to_group(&domain, id.as_bytes()).compress().to_bytes());
        }
        let sent = &captures[name];
        let bytes: usize = sent.iter().map(Vec::len).sum();
        assert!(bytes > ids.len() * 32, "{name} sent its list ({bytes} bytes)");
        for m in sent {
            assert!(!m.windows(32).any(|w| needles.contains(w)), "{name} sent a hash or an unblinded point");
        }
    }
    cluster.stop().await;
}

/// Under differential privacy (the default): every released count carries the node's
/// discrete Gaussian noise (σ² = 16 by default), so the counts move off the plaintext
/// but stay within a few σ; each node records in its own audit log, before its list
/// left, the charge ρ = (1 + its pairs) / (2σ²) — its size and each count its customers
/// are in. A node whose remaining budget is below that refuses before any key leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_dp_the_counts_are_noised_on_the_nodes_and_each_node_charges_its_budget() {
    use fedcrm::harness::{Cluster, ClusterOptions};
    let (specs, plain) = common::synthetic_specs(2500, 33);
    let reference = pooled::overlap(&plain);
    let cluster = Cluster::start(ClusterOptions { nodes: specs, ..Default::default() }).await.unwrap();
    let mut client = fedcrm::hq::AnalystClient::connect(&cluster.analyst).await.unwrap();
    let request = fedcrm_protocol::pb::OverlapRequest {
        purpose: "how many customers the channels share".into(),
        dp_off: false,
        nodes: vec![],
        ..Default::default()
    };
    let released = client.overlap(request, |_| {}).await.unwrap();
    let variance = released.noise_variance_num as f64 / released.noise_variance_den as f64;
    assert_eq!((released.noise_variance_num, released.noise_variance_den), (16, 1));
    assert!(released.epsilon > 0.0 && released.delta > 0.0);
    let sd = variance.sqrt();
    let mut moved = 0;
    for c in &released.channels {
        let exact = plain.iter().find(|(n, _)| *n == c.node).unwrap().1.len() as i64;
        assert!((c.customers - exact).abs() as f64 <= 6.0 * sd, "{c:?} vs {exact}");
        moved += usize::from(c.customers != exact);
    }
    for p in released.pairs.iter().filter(|p| !p.withheld) {
        let exact = reference[&(p.a.clone(), p.b.clone())] as i64;
        assert!((p.shared - exact).abs() as f64 <= 6.0 * sd, "{p:?} vs {exact}");
        moved += usize::from(p.shared != exact);
    }
    assert!(moved > 0, "noise moved the counts");
    let pairs = plain.len() - 1;
    for cfg in &cluster.node_configs {
        let records = fedcrm_audit::log::read_records(&cfg.audit_dir).unwrap();
        let charged: Vec<f64> = records
            .iter()
            .filter_map(|r| match &r.event {
                fedcrm_audit::Event::PrivacyCharged { rho, node, .. } if node.is_empty() => Some(*rho),
                _ => None,
            })
            .collect();
        let want = (1 + pairs) as f64 / (2.0 * variance);
        assert_eq!(charged.len(), 1, "{}: one charge", cfg.name);
        assert!((charged[0] - want).abs() < 1e-12, "{}: ρ {} vs {want}", cfg.name, charged[0]);
    }
    cluster.stop().await;
}

/// A node whose month's budget cannot pay for the run refuses it before any of its keys
/// leave — also when the coordinator does not check the budgets it was told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_budget_for_the_run_refuses_it_itself() {
    use fedcrm::harness::{Cluster, ClusterOptions};
    let (mut specs, _) = common::synthetic_specs(1200, 34);
    specs.truncate(3);
    specs[2].policy.privacy = fedcrm_node::privacy::Privacy {
        monthly_epsilon: None,
        monthly_rho: Some(0.05),
        ..fedcrm_node::privacy::Privacy::optional()
    };
    let poor = specs[2].name.clone();
    let hooks = fedcrm_coordinator::round::Hooks { ignore_budgets: true, ..Default::default() };
    let opts = ClusterOptions { nodes: specs, capture_wire: true, ..Default::default() };
    let cluster = Cluster::start_with_hooks(opts, hooks).await.unwrap();
    let mut client = fedcrm::hq::AnalystClient::connect(&cluster.analyst).await.unwrap();
    let request =
        fedcrm_protocol::pb::OverlapRequest { purpose: "overlap".into(), dp_off: false, ..Default::default() };
    let err = client.overlap(request, |_| {}).await.unwrap_err().to_string();
    assert!(err.contains(&poor) && err.contains("budget"), "{err}");
    use fedcrm_protocol::pb::node_message::Body;
    assert!(common::sent(&cluster, Some(&poor), |_| true) > 0, "{poor}'s wire was captured");
    let sent = common::sent(&cluster, Some(&poor), |b| matches!(b, Body::PsiKeys(_) | Body::PsiChunk(_)));
    assert_eq!(sent, 0, "{poor} sent run keys or list chunks");
    cluster.stop().await;
}

/// The segment profile over mutual TLS: HQ first runs the segment analysis (exact) for
/// the global cut points, then the overlap with them; every pair's 4 × 4 table of
/// shared customers by (segment on A, segment on B) equals the pooled reference —
/// each channel's customers segmented by the reference's own RFM under the same cut
/// points, matched by phone — and each pair's shared count is the sum of its cells.
/// The coordinator's `min_cohort` is 1 here, so what is withheld is withheld by the
/// comparing nodes (`[policy.psi] min_exact_count` = 10): every cell below 10, and with
/// them shown cells until the withheld ones of a pair hold at least 10 customers; on
/// the wire a withheld cell carries no value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_segment_profile_equals_the_pooled_reference_with_small_cells_withheld_on_the_comparing_node() {
    use fedcrm::harness::{Cluster, ClusterOptions};
    const REFERENCE: &str = "2025-12-31";
    let data = common::synthetic_channels(12000, 44);
    let (specs, _) = common::synthetic_specs(12000, 44);
    let min = specs[0].policy.psi.min_exact_count as i64;
    let release = fedcrm_coordinator::config::ReleaseRules { min_cohort: 1, ..Default::default() };
    let options = ClusterOptions { nodes: specs, release, capture_wire: true, ..Default::default() };
    let cluster = Cluster::start(options).await.unwrap();
    let seg = cluster.segments(REFERENCE, "cut points for the overlap's segment profile").await.unwrap();
    let view = fedcrm::hq::SegmentsView::new(&seg, REFERENCE);
    let json = serde_json::to_string(&view).unwrap();
    let (reference_date, cuts) = fedcrm::hq::AnalystClient::segment_profile(&json).unwrap();
    let mut client = fedcrm::hq::AnalystClient::connect(&cluster.analyst).await.unwrap();
    let request = fedcrm_protocol::pb::OverlapRequest {
        purpose: "segment profile of the shared customers".into(),
        dp_off: true,
        segment_cuts: Some(cuts),
        reference_date,
        ..Default::default()
    };
    let released = client.overlap(request, |_| {}).await.unwrap();
    // The reference: its own parsing, RFM and classification.
    let c = |v: &[u64]| -> [u64; 4] { v.try_into().unwrap() };
    let cuts = (c(&view.recency_cuts), c(&view.frequency_cuts), c(&view.monetary_cuts_cents));
    type Channel = (BTreeMap<String, String>, BTreeMap<String, usize>);
    let channels: BTreeMap<String, Channel> = data
        .iter()
        .map(|(name, _, purchases, withdrawn)| {
            let gone = withdrawn.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
            let rows = pooled::parse_csv(purchases, &gone.map(String::from).collect());
            (
                name.clone(),
                (
                    pooled::synthetic_phone_by_customer(purchases, withdrawn),
                    pooled::customer_segments(&rows, 20251231, &cuts),
                ),
            )
        })
        .collect();
    assert_eq!(released.min_cohort, 1);
    let mut shown = 0;
    assert_eq!(released.pairs.len(), 10, "{:?}", released.exits);
    for p in &released.pairs {
        let (a, b) = (&channels[&p.a], &channels[&p.b]);
        let want = pooled::segment_pairs((&a.0, &a.1), (&b.0, &b.1));
        let total = want.iter().flatten().sum::<u64>() as i64;
        println!("{} ∩ {}: {:?} withheld {:?} (reference {want:?})", p.a, p.b, p.segments, p.segments_withheld);
        assert_eq!(p.segments.len(), 16, "{p:?}");
        let mut hidden = 0;
        for (k, (&got, &withheld)) in p.segments.iter().zip(&p.segments_withheld).enumerate() {
            let w = want[k / 4][k % 4] as i64;
            if withheld {
                hidden += w;
            } else {
                assert!(w >= min, "{} {} cell {k}: {w} below the node's minimum {min} shown", p.a, p.b);
                assert_eq!(got, w, "{} {} cell {k}", p.a, p.b);
                shown += 1;
            }
        }
        if total >= min {
            assert!(hidden == 0 || hidden >= min, "{} {}: the withheld cells hold {hidden} < {min}", p.a, p.b);
            assert_eq!((p.shared, p.withheld), (total, false), "{p:?}");
        } else {
            assert!(p.withheld && p.segments_withheld.iter().all(|&w| w), "{p:?}");
        }
    }
    assert!(shown > 0, "some cell was released");
    // On the wire: no value with a withheld flag, and as many withheld cells as the
    // analyst sees (the coordinator withheld nothing more).
    let mut on_wire = 0;
    for (node, messages) in cluster.captures.lock().unwrap().iter() {
        for m in messages {
            use fedcrm_protocol::pb::node_message::Body;
            use prost::Message;
            let Ok(fedcrm_protocol::pb::NodeMessage { body: Some(Body::PsiRelease(r)), .. }) =
                fedcrm_protocol::pb::NodeMessage::decode(m.as_slice())
            else {
                continue;
            };
            for t in &r.tables {
                assert!(!t.total_withheld || t.total == 0, "{node}: {t:?}");
                for (&v, &w) in t.cells.iter().zip(&t.withheld) {
                    assert!(!w || v == 0, "{node} sent the value {v} of a withheld cell");
                    on_wire += usize::from(w);
                }
            }
        }
    }
    let seen: usize = released.pairs.iter().map(|p| p.segments_withheld.iter().filter(|&&w| w).count()).sum();
    assert!(seen > 0, "some cell was withheld");
    assert_eq!(on_wire, seen, "the nodes withheld what the analyst sees withheld");
    cluster.stop().await;
}

/// `manual_approval = ["channel-overlap"]`: the node sends nothing of a PSI run but its
/// refusal until a person approves the request — bound to the participants, its role
/// with each, the counts' noise, the analyst and the purpose — and the analyst is told
/// which request waits; once approved, HQ runs it again and the node takes part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_needs_approval_sends_nothing_of_a_psi_run_until_its_franchisee_approves() {
    use fedcrm::harness::{Cluster, ClusterOptions};
    use fedcrm_audit::{Event, log::read_records};
    use fedcrm_node::approvals::Approvals;
    let (mut specs, _) = common::synthetic_specs(1200, 35);
    specs.truncate(3);
    // Six runs: above the default monthly caps (4), which are not what this test is about.
    for s in &mut specs {
        s.policy.monthly_analysis_caps.insert("channel-overlap".into(), 10);
        s.policy.psi.max_runs_per_peer_organisation = 10;
    }
    specs[1].policy.manual_approval = vec!["channel-overlap".into()];
    // Long enough that a loaded machine never expires the request by accident.
    specs[1].policy.approval_expires_seconds = 3600;
    let careful = specs[1].name.clone();
    let cluster =
        Cluster::start(ClusterOptions { nodes: specs, capture_wire: true, ..Default::default() }).await.unwrap();
    let cfg = cluster.node_configs[1].clone();
    let mut client = fedcrm::hq::AnalystClient::connect(&cluster.analyst).await.unwrap();
    let request = || fedcrm_protocol::pb::OverlapRequest {
        purpose: "membership overlap".into(),
        dp_off: true,
        ..Default::default()
    };
    let err = client.overlap(request(), |_| {}).await.unwrap_err().to_string();
    assert!(err.contains(&careful) && err.contains("needs manual approval"), "{err}");
    let sent: Vec<String> =
        fedcrm_node::egress::read_log(&cfg.audit_dir).unwrap().into_iter().map(|e| e.kind).collect();
    assert!(sent.iter().all(|k| k == "hello" || k == "refusal"), "nothing leaves before approval: {sent:?}");
    use fedcrm_protocol::pb::node_message::Body;
    let on_wire = |is: fn(&Body) -> bool| common::sent(&cluster, Some(&careful), is);
    assert!(on_wire(|b| matches!(b, Body::Refusal(_))) > 0, "its refusal was captured");
    assert_eq!(on_wire(|b| matches!(b, Body::PsiKeys(_) | Body::PsiChunk(_) | Body::PsiRelease(_))), 0);
    let approvals = Approvals::new(&cfg.approvals_dir);
    // The request's clock is the node's; approving uses the same (real) clock, as
    // `fedcrm node approve` does. The outcome does not depend on the date.
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let pending = approvals.pending(now()).unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    let p = &pending[0];
    assert_eq!((p.analysis.as_str(), p.purpose.as_str()), ("channel-overlap", "membership overlap"));
    assert!(err.contains(&p.id), "the analyst is told which request waits: {err}");
    for name in &cluster.node_configs.iter().map(|c| c.name.clone()).collect::<Vec<_>>() {
        assert!(p.computation.contains(name.as_str()), "{}", p.computation);
    }
    assert!(p.computation.contains("exact counts"), "{}", p.computation);
    approvals.approve(&p.id, "store owner", now(), 3600).unwrap();
    // The same run asked again (a fresh run id): approved, the node takes part.
    let released = client.overlap(request(), |_| {}).await.unwrap();
    let pairs = released.pairs.iter().filter(|q| q.a == careful || q.b == careful).count();
    assert_eq!(pairs, 2, "{released:?}");
    let recs = read_records(&cfg.audit_dir).unwrap();
    assert!(recs.iter().any(|r| matches!(&r.event, Event::ApprovalGranted { by, .. } if by == "store owner")));
    // Another purpose, noised counts, or fewer participants is another request.
    let others = [
        fedcrm_protocol::pb::OverlapRequest { purpose: "a different purpose".into(), ..request() },
        fedcrm_protocol::pb::OverlapRequest { dp_off: false, ..request() },
        fedcrm_protocol::pb::OverlapRequest {
            nodes: vec![cluster.node_configs[0].name.clone(), careful.clone()],
            ..request()
        },
    ];
    for (i, other) in others.into_iter().enumerate() {
        let err = client.overlap(other, |_| {}).await.unwrap_err().to_string();
        assert!(err.contains("needs manual approval"), "{err}");
        assert_eq!(approvals.pending(now()).unwrap().len(), i + 1, "a new request each time");
    }
    cluster.stop().await;
}
