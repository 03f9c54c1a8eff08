//! A split of U2 against a view nobody confirmed (`ViewCheck::Unconfirmed`), found in
//! review: in full SecAgg every contributor holds a share of the target v's b_r, and
//! the server chooses each node's U2. It delivers v's sealed share to honest nodes W
//! but leaves W out of v's U2, so v never masks with them: W give shares of b_v (shown
//! "everyone survived") and no pair seed with them is needed; v's U2 neighbours A are
//! shown "v dropped" and reveal their pair seeds with v; v itself is shown "nobody
//! dropped" and gives its own share of b_v. That needs only 2t ≤ n + C + 1, one more
//! than the threshold rule allows — so v counts its holders *outside U3*, in its U2 or
//! not, and checks them whether or not it reveals a pair seed
//! (`multiround::RoundMasked::check_request`). On the wire views are confirmed by
//! signatures and no split is possible (`multiround` module doc).

use std::collections::BTreeMap;

use fedcrm_crypto::multiround::{self, Member, PairSeed, Reveal, Setup, ViewCheck};
use fedcrm_crypto::secagg::{PeerKeys, RoundParams, Topology};
use fedcrm_crypto::shamir;
use fedcrm_crypto::word::WordWidth;
use fedcrm_crypto::{RoundId, SystemRandom};

fn name(i: usize) -> String {
    format!("node-{i:02}")
}

/// Full SecAgg over `n` nodes: node-00.. are the `corrupt` ones, then |A| honest
/// nodes in v's U2, then the rest W (out of v's U2), and v = the last node. Returns
/// v's input if the server strips it, and the input.
fn split_u2(n: usize, t: usize, corrupt: usize, a_count: usize) -> (Option<Vec<u64>>, Vec<u64>) {
    let rng = SystemRandom::new();
    let setup = RoundId::random(&rng).unwrap();
    let (setups, keys): (Vec<Setup>, Vec<PeerKeys>) =
        (0..n).map(|i| Setup::new(setup, "review/i9", &name(i), &rng).unwrap()).unzip();
    let mut members: BTreeMap<String, Member> = setups
        .into_iter()
        .enumerate()
        .map(|(i, s)| (name(i), s.join(keys.clone(), Topology::Complete).unwrap()))
        .collect();
    let all: Vec<String> = (0..n).map(name).collect();
    let v = name(n - 1);
    let bad: Vec<String> = all[..corrupt].to_vec();
    let a: Vec<String> = all[corrupt..corrupt + a_count].to_vec();
    let mut u2_v: Vec<String> = bad.iter().chain(a.iter()).cloned().collect();
    u2_v.push(v.clone());
    u2_v.sort();
    let x: Vec<Vec<u64>> = (0..n).map(|i| (0..16).map(|j| ((i * 1000 + j) as u64) << 20).collect()).collect();
    let params = RoundParams { round: RoundId::random(&rng).unwrap(), t, d: 16, width: WordWidth::W64 };

    let mut inbox: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    let mut shared = BTreeMap::new();
    for (me, m) in members.iter_mut() {
        let (s, out) = m.round(params.clone(), &all, &rng).unwrap();
        for (to, ct) in out {
            inbox.entry(to).or_default().push((me.clone(), ct));
        }
        shared.insert(me.clone(), s);
    }
    let mut masked = BTreeMap::new();
    let mut y_v = None;
    for (me, s) in shared {
        let member = &members[&me];
        // The server delivers v only the shares of U2_v; everyone else gets all.
        let u2 = if me == v { u2_v.clone() } else { all.clone() };
        let incoming: Vec<(String, Vec<u8>)> =
            inbox[&me].iter().filter(|(from, _)| u2.contains(from)).cloned().collect();
        let (m, y) = s
            .receive(member, &u2, &incoming)
            .unwrap()
            .mask(member, &x[all.iter().position(|u| *u == me).unwrap()])
            .unwrap();
        if me == v {
            y_v = Some(y);
        }
        masked.insert(me, (m, u2));
    }
    // HQ's own nodes hand over their pair seeds with v.
    let mut seeds: Vec<(String, PairSeed)> =
        bad.iter().map(|u| (u.clone(), members[u].test_util_pair_seed(&v, &params.round).unwrap())).collect();
    let mut b_shares = Vec::new();
    for (u, (m, u2)) in masked {
        let request: (Vec<String>, Vec<String>) = if a.contains(&u) {
            (u2.iter().filter(|w| **w != v).cloned().collect(), vec![v.clone()])
        } else {
            (u2.clone(), vec![])
        };
        let Ok(reveals) =
            m.unmask(members.get_mut(&u).unwrap(), &request.0, &request.1, ViewCheck::Unconfirmed { corrupt })
        else {
            continue;
        };
        for r in reveals {
            match r {
                Reveal::SelfMask { of, share } if of == v => b_shares.push(share),
                Reveal::PairSeed { of, seed } if of == v => seeds.push((u.clone(), seed)),
                _ => {}
            }
        }
    }
    let Ok(b) = shamir::combine(&b_shares, t) else { return (None, x[n - 1].clone()) };
    if seeds.len() < u2_v.len() - 1 {
        return (None, x[n - 1].clone());
    }
    (Some(multiround::test_util_strip(&params.round, &v, &b, &seeds, &y_v.unwrap())), x[n - 1].clone())
}

/// n = 8, t = 5, one corrupt node (2t = 10 > n + C = 9) and n = 9, t = 6, two corrupt:
/// the threshold rule holds, and the split of U2 (|A| = |W| = 3) gets nothing.
#[test]
fn a_split_of_u2_does_not_strip_the_target_when_the_threshold_rule_holds() {
    let (got, x) = split_u2(8, 5, 1, 3);
    assert_ne!(got, Some(x), "n = 8, t = 5, 1 corrupt (2t > n + C): HQ stripped v's masked vector to its input");
    let (got, x) = split_u2(9, 6, 2, 3);
    assert_ne!(got, Some(x), "n = 9, t = 6, 2 corrupt (2t > n + C): HQ stripped v's masked vector to its input");
}
