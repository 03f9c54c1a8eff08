//! Property tests of key agreement once per analysis (`multiround`): several rounds of
//! one analysis on one X25519 agreement per pair of neighbours, in full SecAgg and over
//! SecAgg+ Harary graphs, at both word widths.
//!
//! The oracle is exact: after random dropouts in every round (a node absent from a
//! round, one that drops after sharing, one that drops after masking), the server's
//! result is `Ok` exactly when every survivor's round self-mask seed has t responding
//! holders and every survivor adjacent to a dropped node answered (it alone can reveal
//! its round pair seed with it); and an `Ok` result is exactly Σ_{u∈U3} x_u of that
//! round. A node declared dropped takes no further part: the coordinator's contributor
//! sets leave it out, and the members refuse a set that names it.

use std::collections::{BTreeMap, BTreeSet};

use fedcrm_crypto::graph::{self, Graph};
use fedcrm_crypto::multiround::{self, Analysis, Member, PairSeed, Reveal, RoundUnmasking, Setup, ViewCheck};
use fedcrm_crypto::secagg::{PeerKeys, RoundParams, Topology};
use fedcrm_crypto::shamir;
use fedcrm_crypto::word::{WordWidth, Words};
use fedcrm_crypto::{RoundId, SystemRandom};
use proptest::collection::vec;
use proptest::prelude::*;

const CASES: u32 = 32;

fn name(i: usize) -> String {
    format!("node-{i:02}")
}

fn index(node: &str) -> usize {
    node["node-".len()..].parse().unwrap()
}

/// One analysis: every node's [`Member`] and the server's [`Analysis`], which keeps
/// the coordinator's ledger of the nodes declared dropped.
struct Sim {
    members: BTreeMap<String, Member>,
    server: Analysis,
    topology: Topology,
    /// The corrupt holders every member assumes when it answers an unmask request;
    /// `None`: none.
    corrupt: Option<usize>,
}

impl Sim {
    /// The nodes the server has declared dropped.
    fn gone(&self) -> BTreeSet<String> {
        self.server.dropped().into_iter().map(|(v, _)| v).collect()
    }
}

fn analysis(n: usize, topology: Topology) -> Sim {
    let rng = SystemRandom::new();
    let setup = RoundId::random(&rng).unwrap();
    let (setups, keys): (Vec<Setup>, Vec<PeerKeys>) =
        (0..n).map(|i| Setup::new(setup, "quantiles/2026-11", &name(i), &rng).unwrap()).unzip();
    let members = setups
        .into_iter()
        .enumerate()
        .map(|(i, s)| (name(i), s.join(keys.clone(), topology.clone()).unwrap()))
        .collect();
    Sim { members, server: Analysis::new(setup, keys, topology.clone()).unwrap(), topology, corrupt: None }
}

/// SecAgg+'s random Harary graph H(n, k) over node-00.. ([`Graph::harary`]).
fn harary(n: usize, k: usize, seed: [u8; 32]) -> Topology {
    let roster: Vec<String> = (0..n).map(name).collect();
    let seed = graph::graph_seed(&RoundId([9; 16]), b"signed roster", &[(name(0), seed)]);
    Graph::harary(&roster, k, &seed).unwrap().topology()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Not a contributor of this round (offline); not declared dropped.
    Absent,
    /// Shares, then drops before masking: declared dropped.
    DropAfterShare,
    /// Masks, then does not answer the unmask request: a survivor that is silent.
    DropAfterMask,
    Complete,
}

/// A node's fate in one round: `complete` in `complete + 3` complete the round.
fn fate(complete: u32) -> impl Strategy<Value = Fate> + Clone {
    prop_oneof![
        1 => Just(Fate::Absent),
        1 => Just(Fate::DropAfterShare),
        1 => Just(Fate::DropAfterMask),
        complete => Just(Fate::Complete),
    ]
}

/// The survivors' answers to the unmask request.
type Responses = Vec<(String, Vec<Reveal>)>;

/// A change a dishonest responder makes to the answers.
type Tamper<'a> = Box<dyn Fn(&mut Responses) + 'a>;

/// A round played up to the server's unmasking, with the answers it got.
struct Played {
    params: RoundParams,
    unmasking: RoundUnmasking,
    responses: Responses,
    ys: BTreeMap<String, Words>,
}

/// Plays one round at `width`; `inputs[i]` is node i's input. Checks every member's
/// refusals against its holders. `None` when no contributor shared.
fn play(a: &mut Sim, t: usize, width: WordWidth, fates: &[Fate], inputs: &[Vec<u64>]) -> Option<Played> {
    let rng = SystemRandom::new();
    let params = RoundParams { round: RoundId::random(&rng).unwrap(), t, d: inputs[0].len(), width };
    let gone = a.gone();
    let contributors: Vec<String> =
        (0..fates.len()).map(name).filter(|v| !gone.contains(v) && fates[index(v)] != Fate::Absent).collect();
    let topology = a.topology.clone();
    let holders = |of: &str, among: &[String]| among.iter().filter(|h| topology.holds(h, of)).count();

    // Round 1: each contributor shares its fresh b_r with its holders.
    let mut inbox: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    let mut shared = BTreeMap::new();
    for (me, member) in a.members.iter_mut().filter(|(v, _)| contributors.contains(*v)) {
        let h = holders(me, &contributors);
        match member.round(params.clone(), &contributors, &rng) {
            Ok((state, out)) => {
                assert!(h >= t && 2 * t > h, "{me} shared with {h} holders, t = {t}");
                for (to, ct) in out {
                    assert!(topology.adjacent(me, &to), "{me} sealed a share to {to}, not its neighbour");
                    inbox.entry(to).or_default().push((me.clone(), ct));
                }
                shared.insert(me.clone(), state);
            }
            Err(e) => assert!(h < t || 2 * t <= h, "{me} refused with {h} holders, t = {t}: {e}"),
        }
    }
    let u2: Vec<String> = shared.keys().cloned().collect();
    if u2.is_empty() {
        return None;
    }
    let mut agg = a.server.round(params.clone(), &contributors, &u2).unwrap();

    // Round 2: receive and mask.
    let mut masked = BTreeMap::new();
    let mut ys = BTreeMap::new();
    for (me, state) in shared {
        if fates[index(&me)] == Fate::DropAfterShare {
            continue;
        }
        let h = holders(&me, &u2);
        let member = &a.members[&me];
        match state.receive(member, &u2, &inbox.remove(&me).unwrap_or_default()) {
            Ok(ready) => {
                assert!(h >= t, "{me} masked with {h} holders in U2 < t = {t}");
                let (m, y) = ready.mask(member, &inputs[index(&me)]).unwrap();
                agg.add_masked(&me, &y).unwrap();
                ys.insert(me.clone(), y);
                masked.insert(me, m);
            }
            Err(e) => assert!(h < t, "{me} refused to mask with {h} holders in U2 ≥ t = {t}: {e}"),
        }
    }
    let unmasking = agg.close(&mut a.server).unwrap();
    let (survivors, dropped) = (unmasking.survivors(), unmasking.dropped());

    // Round 3: survivors answer; an honest answer reveals b shares of survivors and
    // pair seeds of dropped neighbours only — there is nothing else it could reveal.
    let mut responses = Vec::new();
    for (me, m) in masked {
        if fates[index(&me)] == Fate::DropAfterMask {
            continue;
        }
        // Full SecAgg (a share of its own): t holders besides itself in U3, or so few
        // holders outside U3 that with the corrupt ones and its own share they cannot
        // make t. SecAgg+: t holders in U3.
        let own = topology.holds(&me, &me);
        let besides: Vec<String> = survivors.iter().filter(|v| !own || **v != me).cloned().collect();
        let h = holders(&me, &besides);
        let corrupt = a.corrupt.unwrap_or(0);
        let outside: Vec<String> = contributors.iter().filter(|v| !survivors.contains(*v)).cloned().collect();
        let fallback = own && holders(&me, &outside) + corrupt + 1 < t && holders(&me, &survivors) >= t;
        match m.unmask(a.members.get_mut(&me).unwrap(), &survivors, &dropped, ViewCheck::Unconfirmed { corrupt }) {
            Ok(reveals) => {
                assert!(h >= t || fallback, "{me} answered with {h} holders in U3 < t = {t}");
                for r in &reveals {
                    match r {
                        Reveal::SelfMask { of, .. } => {
                            assert!(survivors.contains(of) && topology.holds(&me, of), "{me}: share of {of}")
                        }
                        Reveal::PairSeed { of, .. } => {
                            assert!(dropped.contains(of) && topology.adjacent(&me, of), "{me}: pair seed with {of}")
                        }
                    }
                }
                let seeds = reveals.iter().filter(|r| matches!(r, Reveal::PairSeed { .. })).count();
                assert_eq!(seeds, dropped.iter().filter(|v| topology.adjacent(&me, v)).count());
                responses.push((me, reveals));
            }
            Err(e) => assert!(h < t && !fallback, "{me} refused to unmask with {h} holders in U3 ≥ t = {t}: {e}"),
        }
    }
    Some(Played { params, unmasking, responses, ys })
}

/// Σ of `who`'s inputs, wrapping in the round's width.
fn plain_sum<'a>(inputs: &[Vec<u64>], who: impl IntoIterator<Item = &'a String>, width: WordWidth) -> Vec<u64> {
    let mut s = vec![0u64; inputs[0].len()];
    for v in who {
        s.iter_mut().zip(&inputs[index(v)]).for_each(|(a, b)| *a = a.wrapping_add(*b) & width.max_word());
    }
    s
}

/// Plays a round and checks the oracle. Returns whether it released.
fn round(a: &mut Sim, t: usize, width: WordWidth, fates: &[Fate], inputs: &[Vec<u64>]) -> bool {
    let Some(Played { unmasking, responses, .. }) = play(a, t, width, fates, inputs) else {
        return false;
    };
    let (survivors, dropped) = (unmasking.survivors(), unmasking.dropped());
    let responders: BTreeSet<&String> = responses.iter().map(|(v, _)| v).collect();
    let top = &a.topology;
    let expect_ok = survivors.len() >= t
        && survivors.iter().all(|s| responders.iter().filter(|r| top.holds(r, s)).count() >= t)
        && dropped.iter().all(|v| survivors.iter().filter(|w| top.adjacent(w, v)).all(|w| responders.contains(w)));
    let result = unmasking.finish(&responses);
    assert_eq!(result.is_ok(), expect_ok, "finish: {result:?}");
    if let Ok(sum) = result {
        assert_eq!(sum, plain_sum(inputs, &survivors, width), "the round's survivors' sum, exactly");
        return true;
    }
    false
}

/// Each round's inputs, plain values of the round's width: node i's word j in round r.
fn inputs(n: usize, d: usize, r: usize, seed: u64, width: WordWidth) -> Vec<Vec<u64>> {
    let word = |i: usize, j: usize| seed.wrapping_mul(2 * (i + 7 * r) as u64 + 1).rotate_left(j as u32);
    (0..n).map(|i| (0..d).map(|j| word(i, j) & width.max_word()).collect()).collect()
}

fn width() -> impl Strategy<Value = WordWidth> + Clone {
    prop_oneof![Just(WordWidth::W32), Just(WordWidth::W64)]
}

/// Checks that every member that saw a node declared dropped refuses a later round
/// whose contributors name it.
fn gone_are_refused(a: &mut Sim, t: usize) {
    let rng = SystemRandom::new();
    let all: Vec<String> = a.members.keys().cloned().collect();
    let gone = a.gone();
    for (me, m) in a.members.iter_mut() {
        let Some((v, r)) = m.dropped().into_iter().next() else { continue };
        assert!(gone.contains(&v), "{me} saw {v} declared dropped");
        let params = RoundParams { round: RoundId::random(&rng).unwrap(), t, d: 1, width: WordWidth::W32 };
        let e = m.round(params, &all, &rng).unwrap_err().to_string();
        assert!(e.contains(&format!("{v}, declared dropped in round {r}")), "{me}: {e}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Full SecAgg, 3–4 rounds of one analysis with dropouts in each: every round
    /// releases exactly its survivors' sum, or nothing, as the oracle says.
    #[test]
    fn complete_analysis_rounds_sum_exactly_or_refuse(
        (n, t) in (3usize..=7).prop_flat_map(|n| (Just(n), (n / 2 + 1).max(2)..=n)),
        rounds in 3usize..=4,
        width in width(),
        fates in vec(vec(fate(12), 7), 4),
        d in 1usize..=12,
        seed in any::<u64>(),
    ) {
        let mut a = analysis(n, Topology::Complete);
        for (r, f) in fates.iter().take(rounds).enumerate() {
            round(&mut a, t, width, &f[..n], &inputs(n, d, r, seed, width));
        }
        gone_are_refused(&mut a, t);
    }

    /// SecAgg+ over H(12, k), 3–4 rounds: the same oracle, neighbourhood thresholds.
    #[test]
    fn harary_analysis_rounds_sum_exactly_or_refuse(
        (k, t) in prop_oneof![Just(4usize), Just(6)].prop_flat_map(|k| (Just(k), k / 2 + 1..=k / 2 + 2)),
        graph_seed in any::<[u8; 32]>(),
        rounds in 3usize..=4,
        width in width(),
        fates in vec(vec(fate(40), 12), 4),
        d in 1usize..=12,
        seed in any::<u64>(),
    ) {
        let n = 12;
        let mut a = analysis(n, harary(n, k, graph_seed));
        for (r, f) in fates.iter().take(rounds).enumerate() {
            round(&mut a, t, width, f, &inputs(n, d, r, seed, width));
        }
        gone_are_refused(&mut a, t);
    }
}

/// Without dropouts every round of an analysis releases the sum of every input, in
/// full SecAgg and SecAgg+, at both widths; each round's pair seeds are its own.
#[test]
fn rounds_without_dropouts_release_every_sum() {
    for (n, top, t) in [(5, Topology::Complete, 3), (12, harary(12, 6, [1; 32]), 4), (12, harary(12, 4, [2; 32]), 3)] {
        for width in [WordWidth::W32, WordWidth::W64] {
            let mut a = analysis(n, top.clone());
            for r in 0..4 {
                assert!(
                    round(&mut a, t, width, &vec![Fate::Complete; n], &inputs(n, 300, r, 0x9e37_79b9, width)),
                    "round {r}"
                );
            }
        }
    }
}

/// Dropouts in each round that leave every node t holders: every round releases,
/// and a node dropped in one round is out of the later ones.
#[test]
fn rounds_with_dropouts_release_the_survivors_sums() {
    use Fate::*;
    let n = 12;
    for width in [WordWidth::W32, WordWidth::W64] {
        let mut a = analysis(n, harary(n, 6, [5; 32]));
        let mut plan = vec![vec![Complete; n]; 4];
        plan[0][3] = DropAfterShare;
        plan[1][7] = Absent;
        plan[2][9] = DropAfterShare;
        for (r, fates) in plan.iter().enumerate() {
            assert!(round(&mut a, 4, width, fates, &inputs(n, 64, r, 77, width)), "round {r}");
        }
        assert_eq!(a.gone(), [name(3), name(9)].into());
        gone_are_refused(&mut a, 4);
    }
}

/// In full SecAgg with t = n − 1, one dropout leaves each survivor t − 1 holders
/// besides itself. It still answers when the dropped holders, the corrupt ones it
/// assumes and its own share cannot make t — so one dropout costs no more than in
/// SecAgg — and the round releases the survivors' exact sum; assuming one more corrupt
/// holder, each survivor refuses and nothing is released.
#[test]
fn one_dropout_in_full_secagg_is_answered_when_the_dropped_cannot_make_t() {
    use Fate::*;
    let (n, t) = (5, 4);
    let mut fates = vec![Complete; n];
    fates[2] = DropAfterShare;
    let x = inputs(n, 4, 0, 3, WordWidth::W32);
    let mut a = analysis(n, Topology::Complete);
    a.corrupt = Some(1);
    assert!(round(&mut a, t, WordWidth::W32, &fates, &x), "1 dropped + 1 corrupt + own share < t = 4");
    let mut a = analysis(n, Topology::Complete);
    a.corrupt = Some(2);
    assert!(!round(&mut a, t, WordWidth::W32, &fates, &x), "1 dropped + 2 corrupt + own share = t");
}

/// A node declared dropped in round r is refused in a later round by every member and
/// by the server's ledger, however the caller tries to bring it back: in the
/// contributors, in U2, or by the node itself once told that it dropped.
#[test]
fn a_dropped_node_takes_no_further_part() {
    use Fate::*;
    let (n, t) = (5, 3);
    let rng = SystemRandom::new();
    let mut a = analysis(n, Topology::Complete);
    let mut fates = vec![Complete; n];
    fates[2] = DropAfterShare;
    assert!(round(&mut a, t, WordWidth::W64, &fates, &inputs(n, 4, 0, 1, WordWidth::W64)));
    let all: Vec<String> = (0..n).map(name).collect();
    let params = |d| RoundParams { round: RoundId::random(&rng).unwrap(), t, d, width: WordWidth::W64 };

    // In the contributors: refused, naming the node and its round.
    let m0 = a.members.get_mut(&name(0)).unwrap();
    let e = m0.round(params(4), &all, &rng).unwrap_err().to_string();
    assert!(e.contains("node-02, declared dropped in round"), "{e}");

    // The server's ledger refuses it too, and a repeated round id.
    let p = params(4);
    let e = a.server.round(p.clone(), &all, &all).unwrap_err().to_string();
    assert!(e.contains("node-02 was declared dropped in round"), "{e}");
    let others: Vec<String> = all.iter().filter(|v| *v != &name(2)).cloned().collect();
    drop(a.server.round(p.clone(), &others, &others).unwrap());
    let e = a.server.round(p, &others, &others).unwrap_err().to_string();
    assert!(e.contains("already used"), "{e}");
    let m0 = a.members.get_mut(&name(0)).unwrap();

    // In U2 but not in the contributors: refused at open.
    let (state, _) = m0.round(params(4), &others, &rng).unwrap();
    let e = state.open(&a.members[&name(0)], &all, &[]).unwrap_err().to_string();
    assert!(e.contains("U2 names node-02, who is not a contributor"), "{e}");

    // A request that declares node-03 dropped ends node-03's part in the analysis.
    let p = params(1);
    let mut states = BTreeMap::new();
    let mut inbox: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    for (me, m) in a.members.iter_mut().filter(|(v, _)| others.contains(*v)) {
        let (s, out) = m.round(p.clone(), &others, &rng).unwrap();
        for (to, ct) in out {
            inbox.entry(to).or_default().push((me.clone(), ct));
        }
        states.insert(me.clone(), s);
    }
    let s3 = states.remove(&name(3)).unwrap();
    drop(states);
    let member3 = a.members.get_mut(&name(3)).unwrap();
    let (m3, _) = s3.receive(member3, &others, &inbox[&name(3)]).unwrap().mask(member3, &[5]).unwrap();
    let survivors: Vec<String> = others.iter().filter(|v| *v != &name(3)).cloned().collect();
    let e = m3.unmask(member3, &survivors, &[name(3)], ViewCheck::Confirmed).unwrap_err().to_string();
    assert!(e.contains("says this node dropped"), "{e}");
    let e = a.members.get_mut(&name(3)).unwrap().round(params(1), &others, &rng).unwrap_err().to_string();
    assert!(e.contains("this node was declared dropped in round") && e.contains("no further part"), "{e}");
}

/// A round id is used once per analysis: a repeat would repeat the round's pair seeds
/// and sealing keys, and is refused. The setup's id may serve once, as the analysis's
/// first round (as on the wire).
#[test]
fn a_round_id_is_never_reused() {
    let rng = SystemRandom::new();
    let setup = RoundId::random(&rng).unwrap();
    let (s0, k0) = Setup::new(setup, "a", &name(0), &rng).unwrap();
    let (s1, k1) = Setup::new(setup, "a", &name(1), &rng).unwrap();
    let (s2, k2) = Setup::new(setup, "a", &name(2), &rng).unwrap();
    let keys = vec![k0, k1, k2];
    let mut m = s0.join(keys.clone(), Topology::Complete).unwrap();
    let _ = (s1, s2);
    let all: Vec<String> = (0..3).map(name).collect();
    let first = RoundParams { round: setup, t: 2, d: 1, width: WordWidth::W32 };
    drop(m.round(first.clone(), &all, &rng).unwrap());
    let e = m.round(first.clone(), &all, &rng).unwrap_err().to_string();
    assert!(e.contains("already used"), "{e}");
    let params = RoundParams { round: RoundId::random(&rng).unwrap(), ..first };
    drop(m.round(params.clone(), &all, &rng).unwrap());
    let e = m.round(params, &all, &rng).unwrap_err().to_string();
    assert!(e.contains("already used"), "{e}");
}

/// A roster that alters this node's keys, or a graph naming a neighbour outside the
/// roster, is refused at setup.
#[test]
fn setup_checks_the_roster() {
    let rng = SystemRandom::new();
    let setup = RoundId::random(&rng).unwrap();
    let (s0, mut k0) = Setup::new(setup, "a", &name(0), &rng).unwrap();
    let (_, k1) = Setup::new(setup, "a", &name(1), &rng).unwrap();
    let (_, k2) = Setup::new(setup, "a", &name(2), &rng).unwrap();
    k0.mask = k1.mask;
    let e = s0.join(vec![k0, k1.clone(), k2.clone()], Topology::Complete).unwrap_err().to_string();
    assert!(e.contains("did not advertise"), "{e}");

    let (s0, k0) = Setup::new(setup, "a", &name(0), &rng).unwrap();
    let four: Vec<String> = (0..4).map(name).collect();
    let ring: BTreeMap<String, BTreeSet<String>> =
        (0..4).map(|i| (name(i), [name((i + 1) % 4), name((i + 3) % 4)].into())).collect();
    let top = Topology::graph(&four, ring).unwrap();
    let e = s0.join(vec![k0, k1, k2], top).unwrap_err().to_string();
    assert!(e.contains("node-03 a neighbour of this node, but the roster has no keys of node-03"), "{e}");
}

/// No reveal is, or can be, a share of a mask secret: the only kinds are a share of a
/// survivor's round self-mask seed and a round pair seed. (An exhaustive match: a new
/// kind would not compile here.) Neither `Debug` shows secret bytes.
#[test]
fn reveals_never_carry_a_mask_secret() {
    fn kind(r: &Reveal) -> &'static str {
        match r {
            Reveal::SelfMask { .. } => "share of b_r",
            Reveal::PairSeed { .. } => "round pair seed",
        }
    }
    let seed = PairSeed::from_bytes([0xab; 32]);
    assert_eq!(format!("{seed:?}"), "PairSeed(..)");
    let r = Reveal::PairSeed { of: name(1), seed };
    assert_eq!(kind(&r), "round pair seed");
    assert!(!format!("{r:?}").contains("ab, ") && !format!("{r:?}").contains("171"));
    let a = analysis(3, Topology::Complete);
    let shown = format!("{:?}", a.members[&name(0)]);
    assert!(shown.starts_with("Member {") && !shown.contains("SharedSecret"), "{shown}");
}

/// Every round pair seed with `v` in the answers, with the survivor that revealed it.
fn collect_pair_seeds(responses: &[(String, Vec<Reveal>)], v: &str) -> Vec<(String, PairSeed)> {
    let mut out = Vec::new();
    for (from, reveals) in responses {
        for r in reveals {
            if let Reveal::PairSeed { of, seed } = r
                && of == v
            {
                out.push((from.clone(), seed.clone()));
            }
        }
    }
    out
}

/// The cross-round attack that reconstructing s_v^SK would allow: v survives round A
/// (the server reconstructs b_v,A) and is declared dropped in round B (the server gets
/// every neighbour's s_uv,B). The round-B seeds do not strip v's round-A vector; the
/// round-A seeds would (the control: the attack code works).
#[test]
fn one_rounds_pair_seeds_do_not_strip_another_rounds_vector() {
    use Fate::*;
    let (n, k, t) = (12, 6, 4);
    for width in [WordWidth::W32, WordWidth::W64] {
        let mut a = analysis(n, harary(n, k, [4; 32]));
        let x = inputs(n, 200, 0, 0xdead_beef, width);
        let v = name(5);
        let played_a = play(&mut a, t, width, &vec![Complete; n], &x).unwrap();
        let b_shares: Vec<_> = played_a
            .responses
            .iter()
            .flat_map(|(_, rs)| rs.iter())
            .filter_map(|r| match r {
                Reveal::SelfMask { of, share } if *of == v => Some(share.clone()),
                _ => None,
            })
            .collect();
        let b_a = shamir::combine(&b_shares, t).unwrap();
        assert!(played_a.unmasking.finish(&played_a.responses).is_ok());

        let mut fates = vec![Complete; n];
        fates[5] = DropAfterShare;
        let played_b = play(&mut a, t, width, &fates, &inputs(n, 200, 1, 3, width)).unwrap();
        let seeds_b = collect_pair_seeds(&played_b.responses, &v);
        let neighbours = (0..n).map(name).filter(|u| a.topology.adjacent(&v, u)).count();
        assert_eq!(seeds_b.len(), neighbours, "every surviving neighbour revealed its round-B seed with v");
        assert!(played_b.unmasking.finish(&played_b.responses).is_ok());

        // Same seeds, relabelled as v's own (a pair seed is symmetric).
        let y_a = &played_a.ys[&v];
        let stripped = multiround::test_util_strip(&played_a.params.round, &v, &b_a, &seeds_b, y_a);
        assert_ne!(stripped, x[5], "round B's seeds must not unmask v's round-A vector");

        // Control: round A's own seeds (which no honest node reveals) would.
        let m = &a.members[&v];
        let seeds_a: Vec<(String, PairSeed)> = seeds_b
            .iter()
            .map(|(u, _)| (u.clone(), m.test_util_pair_seed(u, &played_a.params.round).unwrap()))
            .collect();
        let stripped = multiround::test_util_strip(&played_a.params.round, &v, &b_a, &seeds_a, y_a);
        assert_eq!(stripped, x[5], "the attack code strips a vector given the right round's seeds");
    }
}

/// A round in which `dropped` drop after sharing; everyone else answers. Returns the
/// server state and the honest answers, for a test to tamper with.
fn answered(a: &mut Sim, t: usize, dropped: &[usize]) -> (RoundUnmasking, Responses) {
    let n = a.members.len();
    let mut fates = vec![Fate::Complete; n];
    for &i in dropped {
        fates[i] = Fate::DropAfterShare;
    }
    let p = play(a, t, WordWidth::W64, &fates, &inputs(n, 8, 0, 11, WordWidth::W64)).unwrap();
    (p.unmasking, p.responses)
}

fn response<'a>(responses: &'a mut [(String, Vec<Reveal>)], who: &str) -> &'a mut Vec<Reveal> {
    &mut responses.iter_mut().find(|(v, _)| v == who).unwrap().1
}

/// Crafted reveals are refused, naming the responder: a pair seed with a dropped node
/// that is not its neighbour, a pair seed for a survivor, a share of a dropped node,
/// two reveals of one peer.
#[test]
fn crafted_reveals_are_refused_naming_the_responder() {
    let (n, k, t) = (12, 4, 3);
    let top = harary(n, k, [6; 32]);
    let v = name(4);
    let far = (0..n).map(name).find(|u| *u != v && !top.adjacent(u, &v)).unwrap();
    let near = (0..n).map(name).find(|u| top.adjacent(u, &v)).unwrap();
    let survivor = (0..n).map(name).find(|u| top.adjacent(u, &far)).unwrap();
    let seed = || PairSeed::from_bytes([7; 32]);

    // Honest answers release.
    let (unmasking, responses) = answered(&mut analysis(n, top.clone()), t, &[4]);
    assert!(unmasking.finish(&responses).is_ok());

    let cases: Vec<(Tamper, String)> = vec![
        (
            Box::new(|rs| response(rs, &far).push(Reveal::PairSeed { of: v.clone(), seed: seed() })),
            format!("{far} revealed a pair seed with {v}, who is not a dropped neighbour"),
        ),
        (
            Box::new(|rs| {
                let rs = response(rs, &far);
                rs.retain(|r| r.of() != survivor);
                rs.push(Reveal::PairSeed { of: survivor.clone(), seed: seed() })
            }),
            format!("{far} revealed a pair seed with {survivor}, who is not a dropped neighbour"),
        ),
        (
            Box::new(|rs| {
                let share = match &response(rs, &near)[0] {
                    Reveal::SelfMask { share, .. } => share.clone(),
                    Reveal::PairSeed { .. } => unreachable!("shares come first"),
                };
                response(rs, &near).push(Reveal::SelfMask { of: v.clone(), share });
            }),
            format!("{near} revealed twice for {v}"),
        ),
        (
            Box::new(|rs| {
                let again = response(rs, &near)[0].clone();
                response(rs, &near).push(again);
            }),
            format!("{near} revealed twice for"),
        ),
    ];
    for (tamper, want) in cases {
        let (unmasking, mut responses) = answered(&mut analysis(n, top.clone()), t, &[4]);
        tamper(&mut responses);
        let e = unmasking.finish(&responses).unwrap_err().to_string();
        assert!(e.contains(&want), "{e}\nwant: {want}");
    }

    // A share of the dropped node, from a neighbour that did not reveal its seed.
    let (unmasking, mut responses) = answered(&mut analysis(n, top.clone()), t, &[4]);
    let rs = response(&mut responses, &near);
    let share = match &rs[0] {
        Reveal::SelfMask { share, .. } => share.clone(),
        Reveal::PairSeed { .. } => unreachable!(),
    };
    rs.retain(|r| r.of() != v);
    rs.push(Reveal::SelfMask { of: v.clone(), share });
    let e = unmasking.finish(&responses).unwrap_err().to_string();
    assert!(e.contains(&format!("{near} revealed a self-mask share of {v}, who is not a survivor")), "{e}");
}

/// One surviving neighbour of a dropped node that withholds its pair seed — or does not
/// answer at all — means no release for the round, and the error names it.
#[test]
fn a_missing_pair_seed_means_no_release() {
    let (n, k, t) = (12, 6, 4);
    let top = harary(n, k, [8; 32]);
    let v = name(4);
    let near = (0..n).map(name).find(|u| top.adjacent(u, &v)).unwrap();
    let want = format!("{near} did not reveal its round pair seed with {v}, who dropped; no release");

    let (unmasking, mut responses) = answered(&mut analysis(n, top.clone()), t, &[4]);
    response(&mut responses, &near).retain(|r| r.of() != v);
    let e = unmasking.finish(&responses).unwrap_err().to_string();
    assert!(e.contains(&want), "{e}");

    let (unmasking, mut responses) = answered(&mut analysis(n, top.clone()), t, &[4]);
    responses.retain(|(u, _)| *u != near);
    let e = unmasking.finish(&responses).unwrap_err().to_string();
    assert!(e.contains(&want), "{e}");

    // A silent survivor with no dropped neighbour costs nothing: t others hold its share.
    let (unmasking, mut responses) = answered(&mut analysis(n, top.clone()), t, &[]);
    responses.retain(|(u, _)| *u != near);
    assert!(unmasking.finish(&responses).is_ok());
}

/// The split-view attack on one round, node-05 the target v: its `corrupt` first
/// neighbours hand over their b share and pair seed; of the honest ones, the first
/// `shown_alive` are told "everyone survived" (they reveal their b share of v) and the
/// rest "v dropped" (they reveal their pair seed with v); v itself is told that those
/// first ones dropped, so that it reveals its pair seeds with them. Returns v's input
/// if the server could strip its masked vector.
fn split_view(n: usize, top: Topology, t: usize, corrupt: usize, shown_alive: usize) -> Option<Vec<u64>> {
    let rng = SystemRandom::new();
    let mut a = analysis(n, top);
    let x = inputs(n, 16, 0, 5, WordWidth::W64);
    let params = RoundParams { round: RoundId::random(&rng).unwrap(), t, d: 16, width: WordWidth::W64 };
    let all: Vec<String> = (0..n).map(name).collect();
    let v = name(5);
    let neighbours: Vec<String> = all.iter().filter(|u| a.topology.adjacent(&v, u)).cloned().collect();
    let (bad, honest) = neighbours.split_at(corrupt);
    let (alive, dead) = honest.split_at(shown_alive);
    let mut seeds: Vec<(String, PairSeed)> =
        bad.iter().map(|u| (u.clone(), a.members[u].test_util_pair_seed(&v, &params.round).unwrap())).collect();

    let mut inbox: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    let mut shared = BTreeMap::new();
    for (me, m) in a.members.iter_mut() {
        let (s, out) = m.round(params.clone(), &all, &rng).unwrap();
        for (to, ct) in out {
            inbox.entry(to).or_default().push((me.clone(), ct));
        }
        shared.insert(me.clone(), s);
    }
    let mut masked = BTreeMap::new();
    let mut y_v = None;
    for (me, s) in shared {
        let member = &a.members[&me];
        let (m, y) = s.receive(member, &all, &inbox[&me]).unwrap().mask(member, &x[index(&me)]).unwrap();
        if me == v {
            y_v = Some(y);
        }
        masked.insert(me, m);
    }
    let without = |out: &[String]| -> Vec<String> { all.iter().filter(|u| !out.contains(u)).cloned().collect() };
    let mut b_shares = Vec::new();
    for (u, m) in masked {
        let request = if u == v {
            (without(alive), alive.to_vec())
        } else if dead.contains(&u) {
            (without(std::slice::from_ref(&v)), vec![v.clone()])
        } else {
            (all.clone(), vec![])
        };
        // An honest node answers any request its own checks accept.
        let Ok(reveals) =
            m.unmask(a.members.get_mut(&u).unwrap(), &request.0, &request.1, ViewCheck::Unconfirmed { corrupt })
        else {
            continue;
        };
        for r in reveals {
            match r {
                Reveal::SelfMask { of, share } if of == v => b_shares.push(share),
                Reveal::PairSeed { of, seed } if of == v => seeds.push((u.clone(), seed)),
                Reveal::PairSeed { of, seed } if u == v => seeds.push((of, seed)),
                _ => {}
            }
        }
    }
    let b = shamir::combine(&b_shares, t).ok()?;
    if seeds.len() < neighbours.len() {
        return None;
    }
    Some(multiround::test_util_strip(&params.round, &v, &b, &seeds, &y_v.unwrap()))
}

/// The split view uses the target's own reveals too: telling the target that the
/// neighbours shown "it survived" dropped gets their pair seeds from the target itself.
/// In SecAgg+ over H(14, 6) it strips the input when 2t ≤ k + corrupt, as SecAgg+'s
/// split view does (`secagg_plus_attack.rs`); in full SecAgg (n = 8) when
/// 2t ≤ n + corrupt, as full SecAgg's. The bound is the threshold rule, not t > corrupt.
#[test]
fn the_split_view_attack_recovers_an_input_when_the_threshold_rule_is_violated() {
    let x = inputs(14, 16, 0, 5, WordWidth::W64);
    for (t, corrupt) in [(4, 2), (4, 3), (5, 4)] {
        let got = split_view(14, harary(14, 6, [3; 32]), t, corrupt, t - corrupt).expect("the attack strips v");
        assert_eq!(got, x[5], "H(14, 6), t = {t}, {corrupt} corrupt");
    }
    let x = inputs(8, 16, 0, 5, WordWidth::W64);
    for (t, corrupt) in [(5, 2), (6, 4)] {
        // v's own b share counts: the server needs t − 1 − corrupt honest ones.
        let got = split_view(8, Topology::Complete, t, corrupt, t - 1 - corrupt).expect("the attack strips v");
        assert_eq!(got, x[5], "n = 8, t = {t}, {corrupt} corrupt");
    }
}

/// With the rule holding — 2t > k + corrupt in SecAgg+, 2t > n + corrupt in full SecAgg
/// (where a node revealing a pair seed counts its holders besides itself; counting
/// itself, (n, t, corrupt) = (8, 5, 1) would fall) — no split strips the target.
#[test]
fn the_split_view_attack_fails_when_the_threshold_rule_holds() {
    for (t, corrupt) in [(4, 0), (4, 1), (5, 2), (5, 3), (6, 4)] {
        for shown_alive in 0..=6 - corrupt {
            let got = split_view(14, harary(14, 6, [3; 32]), t, corrupt, shown_alive);
            assert_eq!(got, None, "H(14, 6), t = {t}, {corrupt} corrupt, {shown_alive} shown alive");
        }
    }
    for (t, corrupt) in [(5, 0), (5, 1), (6, 2), (6, 3)] {
        for shown_alive in 0..=7 - corrupt {
            let got = split_view(8, Topology::Complete, t, corrupt, shown_alive);
            assert_eq!(got, None, "n = 8, t = {t}, {corrupt} corrupt, {shown_alive} shown alive");
        }
    }
}
