//! Property tests of SecAgg+ rounds (`secagg` over a [`Topology::Graph`]; Bell et al.
//! CCS 2020, Fig. 2): each node shares its secrets with, and masks against, only its
//! neighbours, and the threshold t is a neighbourhood threshold.
//!
//! The oracle is exact: after random dropouts at every phase (a node that refuses a
//! step counts as dropping there; a node refuses to share unless t of its holders,
//! and no two disjoint sets of them, can reconstruct its secrets), the server's result is `Ok` exactly when at least
//! t survivors answered and every secret the server needs — each survivor's self-mask
//! seed, each dropped node's mask key — has at least t holders among the responders;
//! and an `Ok` result is exactly Σ_{u∈U3} x_u (modulo 2^32 or 2^64: both word widths).

use std::collections::{BTreeMap, BTreeSet};

use fedcrm_crypto::graph;
use fedcrm_crypto::secagg::{self, Aggregator, ClientAdvertised, PeerKeys, RoundParams, Topology};
use fedcrm_crypto::word::WordWidth;
use fedcrm_crypto::{RoundId, SystemRandom};
use proptest::collection::vec;
use proptest::prelude::*;

const CASES: u32 = 48;

fn name(i: usize) -> String {
    format!("node-{i:02}")
}

/// SecAgg+'s random Harary graph H(n, k) over node-00.., from a seed ([`graph::Graph::harary`]).
fn harary(n: usize, k: usize, seed: [u8; 32]) -> BTreeMap<String, BTreeSet<String>> {
    let roster: Vec<String> = (0..n).map(name).collect();
    let round = RoundId([7; 16]);
    let seed = graph::graph_seed(&round, b"signed roster", &[(name(0), seed)]);
    let g = graph::Graph::harary(&roster, k, &seed).unwrap();
    g.adjacency().iter().map(|(u, ns)| (u.clone(), ns.iter().cloned().collect())).collect()
}

/// A random symmetric graph from a list of coin flips, one per pair.
fn random_graph(n: usize, coins: &[bool]) -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = (0..n).map(|i| (name(i), BTreeSet::new())).collect();
    let mut c = coins.iter().cycle();
    for a in 0..n {
        for b in a + 1..n {
            if *c.next().unwrap() {
                g.get_mut(&name(a)).unwrap().insert(name(b));
                g.get_mut(&name(b)).unwrap().insert(name(a));
            }
        }
    }
    g
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    DropAfterAdvertise,
    DropAfterShare,
    DropAfterMask,
    Complete,
}

fn fate() -> impl Strategy<Value = Fate> + Clone {
    prop_oneof![
        1 => Just(Fate::DropAfterAdvertise),
        1 => Just(Fate::DropAfterShare),
        1 => Just(Fate::DropAfterMask),
        10 => Just(Fate::Complete),
    ]
}

/// Runs one round over `graph` at `width` and checks the oracle. Returns whether it released.
fn simulate(
    graph: BTreeMap<String, BTreeSet<String>>,
    t: usize,
    width: WordWidth,
    fates: &[Fate],
    inputs: &[Vec<u64>],
) -> bool {
    let inputs: Vec<Vec<u64>> = inputs.iter().map(|x| x.iter().map(|w| w & width.max_word()).collect()).collect();
    let n = fates.len();
    let d = inputs[0].len();
    let rng = SystemRandom::new();
    let params = RoundParams { round: RoundId::random(&rng).unwrap(), t, d, width };
    let roster: Vec<String> = (0..n).map(name).collect();
    let topology = Topology::graph(&roster, graph).unwrap();
    let holds = |holder: &str, of: &str| topology.holds(holder, of);

    let (clients, u1): (Vec<_>, Vec<PeerKeys>) =
        (0..n).map(|i| ClientAdvertised::new(params.clone(), &name(i), &rng).unwrap()).unzip();

    // Round 1: each node shares with its neighbours only; one that refuses drops here.
    let mut inbox: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    let mut shared = BTreeMap::new();
    for (i, c) in clients.into_iter().enumerate() {
        if fates[i] == Fate::DropAfterAdvertise {
            continue;
        }
        // A node shares only when t of its holders, and no two disjoint sets of them
        // (2t > holders), can reconstruct its secrets.
        let holders = roster.iter().filter(|v| holds(v, &name(i))).count();
        let can_share = holders >= t && 2 * t > holders;
        match c.share_with(u1.clone(), topology.clone(), &rng) {
            Ok((state, out)) => {
                assert!(can_share, "shared with {holders} holders, t = {t}");
                let to: BTreeSet<String> = out.iter().map(|(to, _)| to.clone()).collect();
                let neighbours: BTreeSet<String> =
                    roster.iter().filter(|v| topology.adjacent(&name(i), v)).cloned().collect();
                assert_eq!(to, neighbours, "one ciphertext per neighbour, none to anyone else");
                assert!(!to.contains(&name(i)));
                for (to, ct) in out {
                    inbox.entry(to).or_default().push((name(i), ct));
                }
                shared.insert(i, state);
            }
            Err(e) => assert!(!can_share, "share refused with {holders} holders, t = {t}: {e}"),
        }
    }
    let u2: Vec<String> = shared.keys().map(|&i| name(i)).collect();

    // Round 2: receive and mask; a node with fewer than t holders in U2 refuses.
    let mut agg = Aggregator::with_topology(params.clone(), u1.clone(), &u2, topology.clone()).unwrap();
    let mut waiting = BTreeMap::new();
    for (i, state) in shared {
        if fates[i] == Fate::DropAfterShare {
            continue;
        }
        let holders = u2.iter().filter(|v| holds(v, &name(i))).count();
        match state.receive(&u2, &inbox.remove(&name(i)).unwrap_or_default()) {
            Ok(ready) => {
                assert!(holders >= t, "masked with {holders} holders in U2 < t = {t}");
                let (m, y) = ready.mask(&inputs[i]).unwrap();
                agg.add_masked(&name(i), &y).unwrap();
                waiting.insert(i, m);
            }
            Err(e) => assert!(holders < t, "receive refused with {holders} holders in U2 ≥ t = {t}: {e}"),
        }
    }
    let unmasking = agg.close();
    let (survivors, dropped) = (unmasking.survivors(), unmasking.dropped());

    // Round 3: survivors answer, each revealing shares of itself and its neighbours only.
    let mut responses = Vec::new();
    for (i, m) in waiting {
        if fates[i] == Fate::DropAfterMask {
            continue;
        }
        let holders = survivors.iter().filter(|v| holds(v, &name(i))).count();
        match m.unmask(&survivors, &dropped) {
            Ok(r) => {
                assert!(holders >= t, "answered with {holders} holders in U3 < t = {t}");
                assert!(r.iter().all(|x| holds(&name(i), x.of())), "revealed a share of a non-neighbour");
                responses.push((name(i), r));
            }
            Err(e) => assert!(holders < t, "unmask refused with {holders} holders in U3 ≥ t = {t}: {e}"),
        }
    }

    // The oracle: every needed secret has t responding holders.
    let responders: Vec<&String> = responses.iter().map(|(n, _)| n).collect();
    let recoverable = |of: &String| responders.iter().filter(|r| holds(r, of)).count() >= t;
    let expect_ok = survivors.len() >= t
        && responders.len() >= t
        && survivors.iter().all(recoverable)
        && dropped.iter().all(recoverable);
    let result = unmasking.finish(&responses);
    assert_eq!(result.is_ok(), expect_ok, "finish: {result:?}");
    if let Ok(sum) = result {
        let mut want = vec![0u64; d];
        for s in &survivors {
            let i: usize = s["node-".len()..].parse().unwrap();
            want.iter_mut().zip(&inputs[i]).for_each(|(a, b)| *a = a.wrapping_add(*b) & width.max_word());
        }
        assert_eq!(sum, want, "the result must be exactly the survivors' sum");
        return true;
    }
    false
}

/// (n, k even, t) with 2t > k and t ≤ k: a neighbourhood threshold every node can meet.
fn harary_shape() -> impl Strategy<Value = (usize, usize, usize)> {
    (5usize..=14).prop_flat_map(|n| {
        (Just(n), (1usize..=(n - 1) / 2).prop_map(|h| 2 * h))
            .prop_flat_map(|(n, k)| (Just(n), Just(k), (k / 2 + 1).max(2)..=k))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Harary graphs with random dropouts: the exact survivors' sum exactly when the oracle says so.
    #[test]
    fn harary_rounds_sum_exactly_or_refuse(
        (n, k, t) in harary_shape(),
        graph_seed in any::<[u8; 32]>(),
        width in prop_oneof![Just(WordWidth::W32), Just(WordWidth::W64)],
        fates in vec(fate(), 14),
        d in 1usize..=16,
        seed in any::<u64>(),
    ) {
        let inputs: Vec<Vec<u64>> =
            (0..n).map(|i| (0..d).map(|j| seed.wrapping_mul(2 * i as u64 + 1).rotate_left(j as u32)).collect()).collect();
        simulate(harary(n, k, graph_seed), t, width, &fates[..n], &inputs);
    }

    /// Arbitrary symmetric graphs (some nodes with too few neighbours, who refuse):
    /// the oracle holds whatever the topology.
    #[test]
    fn any_graph_sums_exactly_or_refuses(
        n in 3usize..=9,
        t in 2usize..=4,
        coins in vec(any::<bool>(), 36),
        width in prop_oneof![Just(WordWidth::W32), Just(WordWidth::W64)],
        fates in vec(fate(), 9),
        seed in any::<u64>(),
    ) {
        let inputs: Vec<Vec<u64>> = (0..n).map(|i| vec![seed ^ i as u64, !seed, i as u64]).collect();
        simulate(random_graph(n, &coins), t, width, &fates[..n], &inputs);
    }
}

/// Without dropouts a Harary round always releases the exact sum of every input.
#[test]
fn harary_round_without_dropouts_releases_the_sum() {
    for (n, k) in [(8, 4), (11, 6), (20, 6)] {
        let t = k / 2 + 1;
        let inputs: Vec<Vec<u64>> = (0..n).map(|i| vec![i as u64, u64::MAX - i as u64, 7]).collect();
        for width in [WordWidth::W32, WordWidth::W64] {
            assert!(
                simulate(harary(n, k, [n as u8; 32]), t, width, &vec![Fate::Complete; n], &inputs),
                "n = {n}, k = {k}"
            );
        }
    }
}

/// The complete graph given as a graph is SecAgg+ with k = n − 1: no node keeps a
/// share of its own, so t counts neighbours only.
#[test]
fn the_complete_graph_as_a_graph_counts_neighbours_only() {
    let n = 6;
    let all: BTreeMap<String, BTreeSet<String>> =
        (0..n).map(|i| (name(i), (0..n).filter(|&j| j != i).map(name).collect())).collect();
    let inputs: Vec<Vec<u64>> = (0..n).map(|i| vec![i as u64 + 1]).collect();
    let fates = [Fate::Complete, Fate::DropAfterShare, Fate::Complete, Fate::Complete, Fate::Complete, Fate::Complete];
    // t = 4 of 5 neighbours: every survivor keeps 4 surviving neighbours.
    assert!(simulate(all.clone(), 4, WordWidth::W32, &fates, &inputs));
    // t = 5 of 5: node-01 dropped, so no survivor keeps 5 holders; the round refuses.
    assert!(!simulate(all, 5, WordWidth::W64, &fates, &inputs));
    assert_eq!(secagg::default_threshold(n), 5);
}

/// A graph that is not symmetric, loops on a node or names a stranger is refused.
#[test]
fn malformed_graphs_are_refused() {
    let roster: Vec<String> = (0..3).map(name).collect();
    let one_way: BTreeMap<String, BTreeSet<String>> = [(name(0), [name(1)].into())].into();
    let self_loop: BTreeMap<String, BTreeSet<String>> = [(name(0), [name(0)].into())].into();
    let stranger: BTreeMap<String, BTreeSet<String>> =
        [(name(0), ["node-99".to_string()].into()), ("node-99".to_string(), [name(0)].into())].into();
    for (g, why) in [(one_way, "symmetric"), (self_loop, "its own neighbour"), (stranger, "not in the roster")] {
        let e = Topology::graph(&roster, g).unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
    }
}
