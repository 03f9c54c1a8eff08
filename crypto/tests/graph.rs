//! SecAgg+ graph (`crypto/src/graph.rs`): commitments bind, every node computes the
//! same graph, the graph is k-regular and symmetric, the permutation is unbiased, the
//! parameters reproduce the authors' reference table, and the chosen parameters keep
//! the graph connected and every neighbourhood safe under random corruption and
//! dropouts (Monte Carlo, fixed seeds).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ctr::cipher::{KeyIvInit, StreamCipher};
use fedcrm_crypto::graph::{
    self, Graph, GraphConfig, GraphError, GraphSeed, Mode, check_nonce, check_reveals, graph_seed, nonce_commitment,
};
use fedcrm_crypto::prg::{self, MaskSeed};
use fedcrm_crypto::{PROTOCOL_VERSION, RoundId};
use proptest::prelude::*;
use ring::{digest, hkdf};

fn roster(n: usize) -> Vec<String> {
    let mut r: Vec<String> = (0..n).map(|i| format!("node-{i:05}")).collect();
    r.sort();
    r
}

fn seed(i: u64) -> GraphSeed {
    graph_seed(&RoundId([7; 16]), &i.to_be_bytes(), &[])
}

/// A fixed-seed stream of test randomness (the crate's own PRG; no new dependency).
struct TestRng {
    words: Vec<u64>,
    next: usize,
}

impl TestRng {
    fn new(tag: u8, len: usize) -> Self {
        Self { words: prg::expand(&MaskSeed::from_bytes([tag; 32]), len), next: 0 }
    }
    fn below(&mut self, m: usize) -> usize {
        self.next += 1;
        // Modulo bias below m / 2^64: irrelevant for a test's sampling.
        (self.words[self.next - 1] % m as u64) as usize
    }
    /// A uniformly random subset of `size` of 0..n (partial Fisher–Yates).
    fn subset(&mut self, n: usize, size: usize) -> BTreeSet<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        for i in 0..size {
            let j = i + self.below(n - i);
            v.swap(i, j);
        }
        v[..size].iter().copied().collect()
    }
}

#[test]
fn a_changed_nonce_or_name_or_round_does_not_open_the_commitment() {
    let round = RoundId([1; 16]);
    let nonce = [9u8; 32];
    let c = nonce_commitment(&round, "a", &nonce);
    check_nonce(&round, "a", &nonce, &c).unwrap();
    let mut other = nonce;
    other[31] ^= 1;
    assert_eq!(check_nonce(&round, "a", &other, &c), Err(GraphError::NonceMismatch { round, node: "a".into() }));
    assert!(check_nonce(&round, "b", &nonce, &c).is_err());
    assert!(check_nonce(&RoundId([2; 16]), "a", &nonce, &c).is_err());
}

#[test]
fn reveals_are_checked_against_the_signed_roster_in_order() {
    let round = RoundId([1; 16]);
    let nonces: Vec<(String, [u8; 32])> =
        ["a", "b", "c"].iter().map(|n| (n.to_string(), [n.as_bytes()[0]; 32])).collect();
    let committed: Vec<(String, [u8; 32])> =
        nonces.iter().map(|(n, x)| (n.clone(), nonce_commitment(&round, n, x))).collect();
    assert_eq!(check_reveals(&round, &committed, &nonces).unwrap(), vec!["a", "b", "c"]);
    // A node left out (it did not reveal, or the coordinator dropped it) is out of the graph.
    let without_b = vec![nonces[0].clone(), nonces[2].clone()];
    assert_eq!(check_reveals(&round, &committed, &without_b).unwrap(), vec!["a", "c"]);
    // Out of order, twice, not committed, or a changed nonce: refused, naming the node.
    let swapped = vec![nonces[1].clone(), nonces[0].clone()];
    assert_eq!(
        check_reveals(&round, &committed, &swapped),
        Err(GraphError::RevealNotCommitted { round, node: "a".into() })
    );
    assert!(check_reveals(&round, &committed, &[nonces[0].clone(), nonces[0].clone()]).is_err());
    assert!(check_reveals(&round, &committed, &[("d".into(), [0; 32])]).is_err());
    let mut forged = nonces.clone();
    forged[2].1[0] ^= 1;
    assert_eq!(check_reveals(&round, &committed, &forged), Err(GraphError::NonceMismatch { round, node: "c".into() }));
}

#[test]
fn the_seed_depends_on_the_signed_roster_every_reveal_and_the_round() {
    let round = RoundId([1; 16]);
    let reveals = vec![("a".to_string(), [1u8; 32]), ("b".to_string(), [2u8; 32])];
    let s = graph_seed(&round, b"roster", &reveals);
    assert_eq!(s, graph_seed(&round, b"roster", &reveals));
    assert_ne!(s, graph_seed(&round, b"roster'", &reveals));
    assert_ne!(s, graph_seed(&RoundId([2; 16]), b"roster", &reveals));
    assert_ne!(s, graph_seed(&round, b"roster", &reveals[..1]));
    let mut changed = reveals.clone();
    changed[1].1[5] ^= 1;
    assert_ne!(s, graph_seed(&round, b"roster", &changed));
    // Length prefixes: moving bytes between the roster and a name changes the seed.
    let shifted = vec![("".to_string(), [1u8; 32]), ("b".to_string(), [2u8; 32])];
    assert_ne!(graph_seed(&round, b"rostera", &shifted), s);
}

#[test]
fn every_node_computes_the_same_graph() {
    let r = roster(300);
    let s = graph_seed(&RoundId([3; 16]), b"signed roster", &[("node-00000".into(), [5; 32])]);
    // Each "node" starts from its own copy of the inputs.
    let graphs: Vec<Graph> = (0..5).map(|_| Graph::harary(&r.clone(), 12, &s.clone()).unwrap()).collect();
    assert!(graphs.windows(2).all(|w| w[0] == w[1]));
    // Another seed gives another graph.
    assert_ne!(graphs[0], Graph::harary(&r, 12, &seed(1)).unwrap());
}

#[test]
fn the_graph_is_k_regular_symmetric_and_circulant_over_the_permutation() {
    let r = roster(101);
    let g = Graph::harary(&r, 10, &seed(2)).unwrap();
    g.check_regular().unwrap();
    assert_eq!(g.degree(), 10);
    let order = g.order();
    for (i, node) in order.iter().enumerate() {
        for j in 1..=5 {
            assert!(g.is_neighbour(node, &order[(i + j) % 101]));
            assert!(g.is_neighbour(node, &order[(i + 101 - j) % 101]));
        }
        assert!(!g.is_neighbour(node, &order[(i + 6) % 101]));
        assert!(!g.is_neighbour(node, node));
    }
    assert!(g.neighbours("not-in-the-roster").is_none());
    // k ≥ n − 1 is the complete graph; bad k or roster are refused.
    let small = roster(8);
    assert!(Graph::harary(&small, 7, &seed(2)).unwrap().is_complete());
    assert!(Graph::harary(&small, 100, &seed(2)).unwrap().is_complete());
    assert_eq!(Graph::harary(&small, 7, &seed(2)).unwrap().adjacency(), Graph::complete(&small).unwrap().adjacency());
    assert_eq!(Graph::harary(&small, 3, &seed(2)), Err(GraphError::Degree { k: 3, n: 8 }));
    assert_eq!(Graph::harary(&small, 0, &seed(2)), Err(GraphError::Degree { k: 0, n: 8 }));
    let unsorted = vec!["b".to_string(), "a".to_string()];
    assert_eq!(Graph::harary(&unsorted, 2, &seed(2)), Err(GraphError::Roster));
    assert_eq!(Graph::harary(&[], 2, &seed(2)), Err(GraphError::Roster));
}

/// The permutation is uniform: over n = 4 nodes, 24,000 seeds, each of the 24 orders is
/// expected 1,000 times; Pearson's χ² with 23 degrees of freedom exceeds 70.55 with
/// probability 10^-6 for a uniform permutation, so with these fixed seeds a false
/// failure had probability 10^-6 (the test is deterministic: it passed once, it passes).
/// The same for node-00000's position among n = 8 (7 degrees of freedom, 40.52).
#[test]
fn the_permutation_is_unbiased() {
    let r = roster(4);
    let mut counts: BTreeMap<Vec<String>, u64> = BTreeMap::new();
    let trials = 24_000u64;
    for i in 0..trials {
        *counts.entry(graph::permutation(&r, &seed(i)).unwrap()).or_default() += 1;
    }
    assert_eq!(counts.len(), 24);
    let expected = trials as f64 / 24.0;
    let chi2: f64 = counts.values().map(|&c| (c as f64 - expected).powi(2) / expected).sum();
    assert!(chi2 < 70.55, "χ² = {chi2} over 24 orders");

    let r = roster(8);
    let mut at = [0u64; 8];
    let trials = 16_000u64;
    for i in 0..trials {
        let order = graph::permutation(&r, &seed(1_000_000 + i)).unwrap();
        at[order.iter().position(|n| n == "node-00000").unwrap()] += 1;
    }
    let expected = trials as f64 / 8.0;
    let chi2: f64 = at.iter().map(|&c| (c as f64 - expected).powi(2) / expected).sum();
    assert!(chi2 < 40.52, "χ² = {chi2} over 8 positions: {at:?}");
}

/// Rows of the precomputed table in Bell et al.'s reference implementation
/// (google-parfait/federated-compute, `fcp/secagg/server/graph_parameter_finder_test.cc`,
/// semi-malicious server, σ = 40, η = 20): (n, γ, δ) → (k, t). That table asserts k
/// exactly and t as an upper bound; ours gives both exactly.
#[test]
fn parameters_reproduce_the_reference_table() {
    let rows: [(usize, f64, f64, usize, usize); 14] = [
        (100, 0.05, 0.05, 16, 11),
        (1_000, 0.05, 0.05, 52, 37),
        (10_000, 0.05, 0.05, 62, 44),
        (100, 0.33, 0.05, 42, 37),
        (1_000, 0.33, 0.05, 132, 109),
        (10_000, 0.33, 0.05, 178, 146),
        (100, 0.0, 0.33, 68, 35),
        (1_000, 0.0, 0.33, 228, 115),
        (100, 0.05, 0.33, 72, 39),
        (1_000, 0.05, 0.33, 398, 223),
        (100, 0.3, 0.3, 92, 62),
        (1_000, 0.3, 0.3, 872, 584),
        (100, 0.33, 0.0, 26, 26),
        (1_000, 0.33, 0.0, 38, 37),
    ];
    for (n, gamma, delta, k, t) in rows {
        assert_eq!(
            graph::parameters(n, gamma, delta, 40, 20).unwrap(),
            Some(Mode::Plus { k, t }),
            "n = {n}, γ = {gamma}, δ = {delta}"
        );
    }
    // Near γ + 2δ = 1 the bounds need almost every node as a neighbour (the reference
    // refuses γ + 2δ > 0.9 outright): SecAgg+ would save nothing there.
    assert_eq!(graph::parameters(1_000, 0.33, 0.33, 40, 20).unwrap(), Some(Mode::Plus { k: 992, t: 662 }));
    assert_eq!(graph::parameters(100, 0.33, 0.33, 40, 20).unwrap(), None);
    // γ + 2δ ≥ 1 is refused; so are fractions outside [0, 1).
    assert!(graph::parameters(1_000, 0.5, 0.25, 40, 20).is_err());
    assert!(graph::parameters(1_000, -0.1, 0.1, 40, 20).is_err());
    assert!(graph::parameters(1_000, 0.1, 1.0, 40, 20).is_err());
}

#[test]
fn choose_uses_full_secagg_for_small_rounds_and_when_k_would_reach_n() {
    let config = GraphConfig::default();
    assert_eq!(graph::choose(10, &config).unwrap(), Mode::Full);
    assert_eq!(graph::choose(99, &config).unwrap(), Mode::Full);
    let Mode::Plus { k, t } = graph::choose(1_000, &config).unwrap() else { panic!("n = 1000 is SecAgg+") };
    assert!(k < 999 && 2 * t > k && t <= k, "k = {k}, t = {t}");
    // Forcing SecAgg+ at n = 100 with γ = δ = 0.3 needs k = 92 < 99; at n = 20, none fits.
    let forced = GraphConfig { full_below: 0, corrupt_fraction: 0.3, dropout_fraction: 0.3, ..config };
    assert_eq!(graph::choose(100, &forced).unwrap(), Mode::Plus { k: 92, t: 62 });
    assert_eq!(graph::choose(20, &forced).unwrap(), Mode::Full);
    let bad = GraphConfig { corrupt_fraction: 0.5, dropout_fraction: 0.3, ..config };
    assert!(graph::choose(10, &bad).is_err());
}

/// Breadth-first search over the nodes `alive` keeps: is the graph restricted to them
/// connected?
fn connected(g: &Graph, alive: &BTreeSet<&str>) -> bool {
    let Some(start) = alive.iter().next() else { return true };
    let mut seen: BTreeSet<&str> = BTreeSet::from([*start]);
    let mut queue = VecDeque::from([*start]);
    while let Some(u) = queue.pop_front() {
        for v in g.neighbours(u).unwrap() {
            if alive.contains(v.as_str()) && seen.insert(v.as_str()) {
                queue.push_back(v.as_str());
            }
        }
    }
    seen.len() == alive.len()
}

/// The default parameters at n = 200, 500 and 1,000 under the fractions they are meant
/// to tolerate (γ = δ = 0.10, corrupt and dropped nodes drawn uniformly, independently
/// of the seed, as the bound assumes): in every one of 25 graphs per n (250 with
/// `FEDCRM_SLOW_TESTS=1`; fixed seeds), the surviving honest nodes stay connected,
/// every node has fewer than 2t − k corrupt neighbours (so 2t > k + corrupt
/// neighbours) and at least t answering ones. The bounds allow a failure per graph with
/// probability below 2^-40 + 2^-20, so a false failure of this test had probability
/// below 750 · 2^-20 < 10^-3.
#[test]
fn chosen_parameters_keep_the_graph_connected_under_dropouts() {
    let config = GraphConfig::default();
    for (tag, n) in [(1u8, 200usize), (2, 500), (3, 1_000)] {
        let Mode::Plus { k, t } = graph::choose(n, &config).unwrap() else { panic!("n = {n} is SecAgg+") };
        let r = roster(n);
        let corrupt = (config.corrupt_fraction * n as f64) as usize;
        let dropped = (config.dropout_fraction * n as f64) as usize;
        let trials = if std::env::var_os("FEDCRM_SLOW_TESTS").is_some() { 250 } else { 25 };
        let mut rng = TestRng::new(tag, trials as usize * (corrupt + dropped) + 16);
        for trial in 0..trials {
            let g = Graph::harary(&r, k, &seed(u64::from(tag) << 32 | trial)).unwrap();
            let picked: Vec<usize> = rng.subset(n, corrupt + dropped).into_iter().collect();
            let bad: BTreeSet<&str> = picked.iter().map(|&i| r[i].as_str()).collect();
            let corrupt_set: BTreeSet<&str> = picked[..corrupt].iter().map(|&i| r[i].as_str()).collect();
            let alive: BTreeSet<&str> = r.iter().map(String::as_str).filter(|v| !bad.contains(v)).collect();
            assert!(connected(&g, &alive), "n = {n}, k = {k}, trial {trial}: disconnected");
            for node in &r {
                let near = g.neighbours(node).unwrap();
                let c = near.iter().filter(|v| corrupt_set.contains(v.as_str())).count();
                let up = near.iter().filter(|v| !bad.contains(v.as_str())).count()
                    + near.iter().filter(|v| corrupt_set.contains(v.as_str())).count();
                assert!(2 * t > k + c, "n = {n}, trial {trial}: {node} has {c} corrupt neighbours, t = {t}, k = {k}");
                // Corrupt nodes answer (they do not drop); only the dropped are missing.
                assert!(up >= t, "n = {n}, trial {trial}: {node} keeps {up} neighbours, t = {t}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// For any n and even k, the graph is k-regular (complete for k ≥ n − 1), symmetric,
    /// and the same when recomputed.
    #[test]
    fn random_graphs_are_regular_and_symmetric(n in 1usize..120, half in 1usize..40, s in any::<u64>()) {
        let k = 2 * half;
        let r = roster(n);
        let g = Graph::harary(&r, k, &seed(s)).unwrap();
        g.check_regular().unwrap();
        prop_assert_eq!(g.degree(), k.min(n - 1));
        prop_assert_eq!(g.adjacency().len(), n);
        for a in &r {
            for b in g.neighbours(a).unwrap() {
                prop_assert!(g.is_neighbour(b, a));
            }
        }
        prop_assert_eq!(g, Graph::harary(&r, k, &seed(s)).unwrap());
    }
}

/// The defaults' parameters, as the module doc and docs/threat-model.md state them.
#[test]
fn the_defaults_are_the_documented_ones() {
    let config = GraphConfig::default();
    assert_eq!(
        (config.corrupt_fraction, config.dropout_fraction, config.security_bits, config.correctness_bits),
        (0.10, 0.10, 40, 20)
    );
    assert_eq!(graph::choose(99, &config).unwrap(), Mode::Full);
    for (n, k, t) in [(100, 32, 22), (200, 56, 39), (500, 82, 57), (1_000, 96, 67), (10_000, 122, 85)] {
        assert_eq!(graph::choose(n, &config).unwrap(), Mode::Plus { k, t }, "n = {n}");
    }
}

/// Length-prefixed (u32 big-endian) concatenation: `kdf::context`'s layout, rebuilt here
/// from its documentation.
fn context(label: &str, round: &RoundId, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![];
    for b in [PROTOCOL_VERSION.as_bytes(), label.as_bytes(), &round.0].into_iter().chain(parts.iter().copied()) {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    }
    out
}

/// HKDF-SHA256(salt = version, ikm, info) → `len` bytes, straight from ring.
fn hkdf_bytes(ikm: &[u8], info: &[u8], len: usize) -> Vec<u8> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, PROTOCOL_VERSION.as_bytes()).extract(ikm);
    let infos = [info];
    let okm = prk.expand(&infos, Len(len)).unwrap();
    let mut out = vec![0u8; len];
    okm.fill(&mut out).unwrap();
    out
}

/// Known answers, recomputed here from the module doc's description with ring's SHA-256
/// and HKDF and the `aes`/`ctr` crates, not through the module: any change to a label,
/// a layout or the sampling shows up as a mismatch (and changes which graph every node
/// computes, so it is a wire change).
#[test]
fn commitment_seed_and_permutation_known_answers() {
    let round = RoundId([0x42; 16]);
    // Commitment: SHA-256(context("graph-nonce-commitment", round, [node, nonce])).
    let c = nonce_commitment(&round, "store-7", &[0x11; 32]);
    let independent =
        digest::digest(&digest::SHA256, &context("graph-nonce-commitment", &round, &[b"store-7", &[0x11; 32]]));
    assert_eq!(c.as_slice(), independent.as_ref());
    assert_eq!(hex::encode(c), "7fb87c78e6cb50b3f4b6c764fd624ab000bb24ae6fb3bc5145de5737ba2e1cec");

    // Seed: HKDF(ikm = u64-length-prefixed roster ‖ count ‖ (name, nonce)…, info = context("graph-seed", round)).
    let reveals = vec![("a".to_string(), [1u8; 32]), ("b".to_string(), [2u8; 32])];
    let s = graph_seed(&round, b"signed roster payload", &reveals);
    let mut ikm = vec![];
    let mut push = |b: &[u8]| {
        ikm.extend_from_slice(&(b.len() as u64).to_be_bytes());
        ikm.extend_from_slice(b);
    };
    push(b"signed roster payload");
    push(&2u64.to_be_bytes());
    for (name, nonce) in &reveals {
        push(name.as_bytes());
        push(nonce);
    }
    assert_eq!(s.bytes().as_slice(), hkdf_bytes(&ikm, &context("graph-seed", &round, &[]), 32));
    assert_eq!(hex::encode(s.bytes()), "ef6ce87a59af8c065bdf53b4c2c79652f2a8d1e556f5364bde8201c9c1c2d0b1");

    // Permutation: PRG seed = HKDF(seed, context("graph-permutation", round)); AES-128 key
    // = HKDF(that, PRG_LABEL ‖ "/w64"); CTR from a zero counter; little-endian u64 words;
    // Fisher–Yates from the last index down, j uniform in [0, i] by rejection.
    let prg_seed = hkdf_bytes(s.bytes(), &context("graph-permutation", &round, &[]), 32);
    let key: [u8; 16] =
        hkdf_bytes(&prg_seed, fedcrm_crypto::word::WordWidth::W64.prg_info().as_bytes(), 16).try_into().unwrap();
    let mut stream = vec![0u8; 8 * 64];
    ctr::Ctr128BE::<aes::Aes128>::new(&key.into(), &[0u8; 16].into()).apply_keystream(&mut stream);
    let mut words = stream.chunks_exact(8).map(|w| u64::from_le_bytes(w.try_into().unwrap()));
    let mut order: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
    let r = order.clone();
    for i in (1..order.len()).rev() {
        let m = i as u128 + 1;
        let j = loop {
            let w = u128::from(words.next().unwrap());
            if w < (1u128 << 64) / m * m {
                break (w % m) as usize;
            }
        };
        order.swap(i, j);
    }
    assert_eq!(graph::permutation(&r, &s).unwrap(), order);
    assert_eq!(order, ["n6", "n4", "n9", "n8", "n7", "n0", "n3", "n5", "n1", "n2"]);
}
