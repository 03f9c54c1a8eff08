//! The attack SecAgg+'s neighbourhood threshold exists to stop (Bell et al. CCS 2020,
//! the semi-malicious server): the server tells some of a target's honest neighbours
//! that the target survived (they reveal their share of its self-mask seed b) and the
//! others that it dropped (they reveal their share of its mask key s_sk), while its
//! corrupt neighbours — HQ's nodes and colluders — hand over both. With t shares of
//! each it strips the target's masked vector down to its input.
//!
//! Each node refuses a neighbourhood where 2t ≤ k + (corrupt neighbours)
//! (`fedcrm_analysis::neighbourhood::check_neighbourhood`). These tests run the attack
//! with the best split of the honest neighbours: it recovers the input exactly when the
//! rule is violated (so the attack code works), and cannot reconstruct both secrets
//! when the rule holds.

use std::collections::{BTreeMap, BTreeSet};

use fedcrm_crypto::graph::{self, Graph};
use fedcrm_crypto::secagg::{self, ClientAdvertised, ClientMasked, PeerKeys, Revealed, RoundParams, Topology};
use fedcrm_crypto::shamir::{self, Share};
use fedcrm_crypto::word::{WordWidth, Words};
use fedcrm_crypto::{RoundId, SystemRandom};

fn name(i: usize) -> String {
    format!("node-{i:02}")
}

struct Round {
    params: RoundParams,
    u1: Vec<PeerKeys>,
    topology: Topology,
    masked: BTreeMap<String, ClientMasked>,
    ys: BTreeMap<String, Words>,
}

/// A SecAgg+ round over H(n, k) in which every node masks its input.
fn masked_round(n: usize, k: usize, t: usize, inputs: &[Vec<u64>]) -> Round {
    let rng = SystemRandom::new();
    let params = RoundParams { round: RoundId::random(&rng).unwrap(), t, d: inputs[0].len(), width: WordWidth::W64 };
    let roster: Vec<String> = (0..n).map(name).collect();
    let seed = graph::graph_seed(&params.round, b"signed roster", &[(name(0), [3; 32])]);
    let topology = Graph::harary(&roster, k, &seed).unwrap().topology();
    let (clients, u1): (Vec<_>, Vec<PeerKeys>) =
        (0..n).map(|i| ClientAdvertised::new(params.clone(), &name(i), &rng).unwrap()).unzip();
    let mut inbox: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    let mut shared = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let (s, out) = c.share_with(u1.clone(), topology.clone(), &rng).unwrap();
        for (to, ct) in out {
            inbox.entry(to).or_default().push((name(i), ct));
        }
        shared.push(s);
    }
    let (mut masked, mut ys) = (BTreeMap::new(), BTreeMap::new());
    for (i, s) in shared.into_iter().enumerate() {
        let (m, y) = s.receive(&roster, &inbox.remove(&name(i)).unwrap_or_default()).unwrap().mask(&inputs[i]).unwrap();
        masked.insert(name(i), m);
        ys.insert(name(i), y);
    }
    Round { params, u1, topology, masked, ys }
}

/// The attack on `target` with `corrupt` of its neighbours colluding. Returns the
/// target's input if the server could strip its masks, `None` if it could not gather t
/// shares of both secrets.
fn attack(round: Round, target: &str, corrupt: usize) -> Option<Vec<u64>> {
    let Round { params, u1, topology, mut masked, ys } = round;
    let t = params.t;
    let roster: Vec<String> = u1.iter().map(|p| p.name.clone()).collect();
    let neighbours: Vec<String> = roster.iter().filter(|v| topology.adjacent(target, v)).cloned().collect();
    let (bad, honest) = neighbours.split_at(corrupt);
    let (mut b_shares, mut s_shares): (Vec<Share>, Vec<Share>) = (vec![], vec![]);
    // Corrupt neighbours hand over both of their shares of the target's secrets.
    for v in bad {
        let held = masked[v].test_util_held_shares();
        let (_, b, s) = held.iter().find(|(of, _, _)| of == target).expect("a neighbour holds the target's shares");
        b_shares.push(b.clone());
        s_shares.push(s.clone());
    }
    // The best split of the honest ones: as even as t allows, b first.
    let to_b = honest.len().div_ceil(2);
    let everyone: Vec<String> = roster.clone();
    let without_target: Vec<String> = roster.iter().filter(|v| v.as_str() != target).cloned().collect();
    for (j, v) in honest.iter().enumerate() {
        let m = masked.remove(v).unwrap();
        let (survivors, dropped) =
            if j < to_b { (everyone.clone(), vec![]) } else { (without_target.clone(), vec![target.to_string()]) };
        // An honest node answers any request consistent with its own checks.
        let Ok(reveals) = m.unmask(&survivors, &dropped) else { continue };
        for r in reveals {
            match r {
                Revealed::SelfMask { of, share } if of == target => b_shares.push(share),
                Revealed::MaskKey { of, share } if of == target => s_shares.push(share),
                _ => {}
            }
        }
    }
    let b = shamir::combine(&b_shares, t).ok()?;
    let s_sk = shamir::combine(&s_shares, t).ok()?;
    let peers: Vec<PeerKeys> = u1.iter().filter(|p| neighbours.contains(&p.name)).cloned().collect();
    Some(secagg::test_util_strip(&params.round, target, &b, s_sk, &peers, &roster, &ys[target]).unwrap())
}

fn inputs(n: usize) -> Vec<Vec<u64>> {
    (0..n).map(|i| vec![1000 + i as u64, 7 * i as u64, u64::MAX - i as u64]).collect()
}

/// With the rule violated (2t ≤ k + corrupt), the attack recovers the target's input
/// exactly: the attack is real, and a node that skipped its check would be exposed.
#[test]
fn the_split_view_attack_recovers_an_input_when_the_neighbourhood_rule_is_violated() {
    let (n, k) = (14, 6);
    let x = inputs(n);
    for (t, corrupt) in [(4, 2), (4, 3), (5, 4)] {
        assert!(2 * t <= k + corrupt, "the case must violate the rule");
        let round = masked_round(n, k, t, &x);
        let got = attack(round, &name(5), corrupt).expect("the attack gathers t shares of both secrets");
        assert_eq!(got, x[5], "t = {t}, {corrupt} corrupt of k = {k}: the target's input, exactly");
    }
}

/// With the rule holding (2t > k + corrupt), the same attack cannot reconstruct both
/// secrets, whatever the split.
#[test]
fn the_split_view_attack_fails_when_the_neighbourhood_rule_holds() {
    let (n, k) = (14, 6);
    let x = inputs(n);
    for (t, corrupt) in [(4, 0), (4, 1), (5, 2), (5, 3), (6, 4)] {
        assert!(2 * t > k + corrupt, "the case must satisfy the rule");
        let round = masked_round(n, k, t, &x);
        assert_eq!(attack(round, &name(5), corrupt), None, "t = {t}, {corrupt} corrupt of k = {k}");
    }
}

/// No node shares with a non-neighbour: a corrupt node that is not the target's
/// neighbour holds nothing of the target's secrets.
#[test]
fn non_neighbours_hold_no_share_of_a_node() {
    let (n, k, t) = (14, 4, 3);
    let round = masked_round(n, k, t, &inputs(n));
    let target = name(5);
    for (v, m) in &round.masked {
        let holds: BTreeSet<String> = m.test_util_held_shares().into_iter().map(|(of, _, _)| of).collect();
        assert_eq!(holds.contains(&target), round.topology.adjacent(v, &target), "{v}");
    }
}

/// Crafted unmask answers are refused with the responder named: a share of a
/// non-neighbour, two shares of one node, a share at another holder's index.
#[test]
fn crafted_reveals_are_refused_naming_the_responder() {
    let (n, k, t) = (10, 4, 3);
    let x = inputs(n);
    let answers = |round: Round| {
        let Round { params, u1, topology, masked, ys } = round;
        let mut agg = secagg::Aggregator::with_topology(
            params.clone(),
            u1.clone(),
            &u1.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
            topology.clone(),
        )
        .unwrap();
        for (v, y) in &ys {
            agg.add_masked(v, y).unwrap();
        }
        let unmasking = agg.close();
        let (s, d) = (unmasking.survivors(), unmasking.dropped());
        let responses: Vec<(String, Vec<Revealed>)> =
            masked.into_iter().map(|(v, m)| (v, m.unmask(&s, &d).unwrap())).collect();
        (unmasking, responses, topology)
    };
    // Honest answers release the exact sum.
    let (unmasking, responses, _) = answers(masked_round(n, k, t, &x));
    let mut want = vec![0u64; 3];
    for xi in &x {
        want.iter_mut().zip(xi).for_each(|(a, b)| *a = a.wrapping_add(*b));
    }
    assert_eq!(unmasking.finish(&responses).unwrap(), want);

    // node-00 adds a share "of" a node that is not its neighbour.
    let (unmasking, mut responses, topology) = answers(masked_round(n, k, t, &x));
    let stranger = (1..n).map(name).find(|v| !topology.adjacent(&name(0), v)).unwrap();
    let share = match &responses[0].1[0] {
        Revealed::SelfMask { share, .. } | Revealed::MaskKey { share, .. } => share.clone(),
    };
    responses[0].1.push(Revealed::SelfMask { of: stranger.clone(), share });
    let e = unmasking.finish(&responses).unwrap_err().to_string();
    assert!(e.contains("node-00 revealed a share of") && e.contains("not its neighbour"), "{e}");

    // node-00 repeats one of its shares.
    let (unmasking, mut responses, _) = answers(masked_round(n, k, t, &x));
    let again = responses[0].1[0].clone();
    responses[0].1.push(again);
    let e = unmasking.finish(&responses).unwrap_err().to_string();
    assert!(e.contains("node-00 revealed two shares of"), "{e}");

    // node-01 answers with node-00's shares (another holder's index).
    let (unmasking, mut responses, _) = answers(masked_round(n, k, t, &x));
    responses[1].1 = responses[0].1.clone();
    let e = unmasking.finish(&responses).unwrap_err().to_string();
    assert!(e.contains("node-01"), "{e}");
}

/// A complete Harary graph (k = n − 1) is still SecAgg+: no node keeps a share of its own.
#[test]
fn a_complete_harary_graph_stays_a_graph() {
    let roster: Vec<String> = (0..5).map(name).collect();
    let seed = graph::graph_seed(&RoundId([1; 16]), b"r", &[]);
    let top = Graph::harary(&roster, 4, &seed).unwrap().topology();
    assert!(matches!(top, Topology::Graph(_)));
    assert!(!top.holds(&name(0), &name(0)) && top.holds(&name(1), &name(0)));
    assert!(Topology::Complete.holds(&name(0), &name(0)));
}
