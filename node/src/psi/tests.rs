//! A PSI pair run in memory, its lists relayed through a "coordinator" that records
//! every byte and, in the attack tests, tampers.

use super::*;
use crate::identifiers::{MatchOn, Normalised};
use fedcrm_crypto::SystemRandom;
use ring::digest;

const LIMITS: ListLimits = ListLimits { min_points: 500, max_points: 1 << 20, max_traps: DEFAULT_MAX_TRAPS };

/// Mainland mobile numbers 139 0000 0000 + i, written as exports write them.
fn phones(range: std::ops::Range<u32>) -> Vec<String> {
    range
        .map(|i| {
            let n = format!("139{i:08}");
            match i % 3 {
                0 => n,
                1 => format!("+86 {} {} {}", &n[..3], &n[3..7], &n[7..]),
                _ => format!("0086-{n}"),
            }
        })
        .collect()
}

fn normalised(raw: &[String]) -> Vec<String> {
    Normalised::new(MatchOn::Phone, raw.iter().map(String::as_str)).ids.clone()
}

struct Pair {
    comparer: Comparer,
    responder: Responder,
}

fn pair(run: RoundId) -> Pair {
    let (comparer, responder) = pair_in_process(run, ("fr-a", "hq-tmall"), LIMITS, &SystemRandom::new()).unwrap();
    Pair { comparer, responder }
}

/// Everything the relay carried, in order.
#[derive(Default)]
struct Relay {
    bytes: Vec<u8>,
}

impl Relay {
    fn carry(&mut self, chunks: &[SealedChunk]) -> Vec<SealedChunk> {
        for c in chunks {
            self.bytes.extend_from_slice(&c.salt);
            self.bytes.extend_from_slice(&c.index.to_be_bytes());
            self.bytes.extend_from_slice(&c.of.to_be_bytes());
            self.bytes.extend_from_slice(&c.ciphertext);
        }
        chunks.to_vec()
    }
}

/// One honest run, step by step, with what each side holds after it.
struct Run {
    from_c: Vec<SealedChunk>,
    from_r: Vec<SealedChunk>,
    answer: Vec<SealedChunk>,
    comparer: AwaitingAnswer,
}

fn run_pair(p: Pair, a: &[String], b: &[String], relay: &mut Relay) -> Run {
    let rng = SystemRandom::new();
    let (from_c, comparer) = p.comparer.own_list(a, &rng).unwrap();
    let (from_r, responder) = p.responder.own_list(b, &rng).unwrap();
    let (from_c, from_r) = (relay.carry(&from_c), relay.carry(&from_r));
    let answer = relay.carry(&responder.answer(&from_c, &rng).unwrap());
    Run { from_c, from_r, answer, comparer }
}

#[test]
fn the_count_equals_the_plaintext_intersection_of_normalised_phones() {
    // 3,000 and 2,000 customers, 700 shared, written differently on each side.
    let a = normalised(&phones(0..3000));
    let b_raw: Vec<String> = phones(2300..4300).into_iter().map(|p| p.replace(' ', "")).collect();
    let b = normalised(&b_raw);
    let plain = a.iter().filter(|x| b.contains(x)).count() as u64;
    assert_eq!(plain, 700);
    let mut relay = Relay::default();
    let run = run_pair(pair(RoundId([1; 16])), &a, &b, &mut relay);
    assert_eq!(run.comparer.compare(&run.from_r, &run.answer).unwrap(), plain);
    // The relay saw sealed lists: the comparer's with at least one trap per identifier
    // (3,000 is below `max_traps`), twice (out and back), and the responder's padded one.
    let padded = psi::bucket(6000) * 2 + psi::bucket(2000);
    assert!(relay.bytes.len() >= padded * 32, "{} bytes for {padded} points", relay.bytes.len());
}

#[test]
fn a_comparer_mixes_one_trap_per_identifier_up_to_its_policy_cap() {
    let l = ListLimits { max_traps: 4096, ..LIMITS };
    assert_eq!((l.traps_for(0), l.traps_for(10), l.traps_for(MIN_TRAPS)), (MIN_TRAPS, MIN_TRAPS, MIN_TRAPS));
    assert_eq!((l.traps_for(3000), l.traps_for(4096), l.traps_for(1_000_000)), (3000, 4096, 4096));
    // A cap below the floor still gives the floor.
    assert_eq!(ListLimits { max_traps: 10, ..LIMITS }.traps_for(5000), MIN_TRAPS);
    // The list that leaves holds them: 6,000 customers and 4,096 traps, up the ladder,
    // every point a trap but the 6,000 (an honest answer holds each r·K).
    let rng = SystemRandom::new();
    let a = normalised(&phones(0..6000));
    let mut p = pair(RoundId([12; 16]));
    p.comparer.link.limits = l;
    let (chunks, awaiting) = p.comparer.own_list(&a, &rng).unwrap();
    assert_eq!(awaiting.sent(), psi::bucket(6000 + 4096));
    assert_eq!(awaiting.groups[0].expected.len(), psi::bucket(6000 + 4096) - 6000);
    let list = p.responder.link.from_peer.open_list(ListKind::Blinded { group: 0 }, &chunks, 1 << 10).unwrap();
    let answer: HashSet<[u8; 32]> = psi::reblind(&p.responder.key, &list).unwrap().into_iter().collect();
    assert!(awaiting.groups[0].expected.iter().all(|t| answer.contains(t)));
}

#[test]
fn no_hash_or_unblinded_point_of_an_identifier_crosses_even_to_the_peer() {
    let a = normalised(&phones(0..600));
    let b = normalised(&phones(300..900));
    let id = RoundId([2; 16]);
    let rng = SystemRandom::new();
    let mut relay = Relay::default();
    let p = pair(id);
    // Every list as the relay carried it and as its receiver opened it: the comparer's
    // (identifiers and traps) by the responder, the responder's and the answer by the
    // comparer.
    let (from_c, comparer) = p.comparer.own_list(&a, &rng).unwrap();
    let from_c = relay.carry(&from_c);
    let mut seen: Vec<u8> = p
        .responder
        .link
        .from_peer
        .open_list(ListKind::Blinded { group: 0 }, &from_c, 1 << 10)
        .unwrap()
        .into_iter()
        .flatten()
        .collect();
    let (from_r, responder) = p.responder.own_list(&b, &rng).unwrap();
    let from_r = relay.carry(&from_r);
    let answer = relay.carry(&responder.answer(&from_c, &rng).unwrap());
    for (list, chunks) in [(ListKind::Blinded { group: 0 }, &from_r), (ListKind::Returned { group: 0 }, &answer)] {
        seen.extend(comparer.link.from_peer.open_list(list, chunks, 1 << 10).unwrap().into_iter().flatten());
    }
    seen.extend(&relay.bytes);
    let domain = fedcrm_crypto::psi::Domain { version: psi::VERSION, run_id: id.0 };
    for id in a.iter().chain(&b) {
        let forbidden = [
            digest::digest(&digest::SHA256, id.as_bytes()).as_ref().to_vec(),
            digest::digest(&digest::SHA512, id.as_bytes()).as_ref().to_vec(),
            psi::hash_to_group(&domain, id.as_bytes()).compress().to_bytes().to_vec(),
        ];
        for f in &forbidden {
            assert!(!seen.windows(32).any(|w| w == &f[..32]), "{id}: a hash or H(x) crossed");
        }
    }
    // And the pair still counts right after all that was read.
    assert_eq!(comparer.compare(&from_r, &answer).unwrap(), 300);
}

#[test]
fn two_runs_on_the_same_data_share_no_blinded_point() {
    let a = normalised(&phones(0..800));
    let lists: Vec<Vec<[u8; 32]>> = [RoundId([3; 16]), RoundId([4; 16])]
        .into_iter()
        .map(|id| {
            let run = run_pair(pair(id), &a, &a, &mut Relay::default());
            run.comparer.link.from_peer.open_list(ListKind::Blinded { group: 0 }, &run.from_r, 1 << 10).unwrap()
        })
        .collect();
    let first: HashSet<_> = lists[0].iter().collect();
    assert!(lists[1].iter().all(|x| !first.contains(x)));
}

#[test]
fn a_tiny_probe_is_refused_before_anything_is_blinded() {
    let rng = SystemRandom::new();
    let p = pair(RoundId([5; 16]));
    // HQ's side sends an unpadded list of three numbers (a probe): sealed properly, but
    // shorter than the comparer's minimum.
    let probe: Vec<[u8; 32]> = psi::blind(&p.responder.key, &normalised(&phones(0..3)));
    let to_comparer = p.responder.link.to_peer.seal_list(ListKind::Blinded { group: 0 }, &probe, &rng).unwrap();
    let to_responder = p.comparer.link.to_peer.seal_list(ListKind::Blinded { group: 0 }, &probe, &rng).unwrap();
    let (own, comparer) = p.comparer.own_list(&normalised(&phones(0..600)), &rng).unwrap();
    let (_, responder) = p.responder.own_list(&normalised(&phones(0..600)), &rng).unwrap();
    let err = responder.answer(&to_responder, &rng).unwrap_err();
    assert!(matches!(err, PsiRunError::TooShort { points: 3, min: 500, .. }), "{err}");
    let _ = own;
    let err = comparer.compare(&to_comparer, &[]).unwrap_err();
    assert!(matches!(err, PsiRunError::TooShort { points: 3, min: 500, .. }), "{err}");
}

/// How a cheating responder makes its answer from the comparer's list.
type Tamper<'a> = dyn Fn(&[[u8; 32]], &Responder) -> Vec<[u8; 32]> + 'a;

/// The attack review's scaled-copy answer (F1): HQ, responding, returns a·L_j for
/// a = 1..32 over 32 positions of the comparer's list L (all distinct, the right
/// length) and sends {a·H(t)} for a target t as its own list, so that the count is 32
/// if t is among those positions. The traps catch it; so do a dropped or a duplicated
/// point, and an answer made with another key than the committed one.
#[test]
fn a_responder_that_alters_its_answer_is_caught_by_the_traps() {
    let rng = SystemRandom::new();
    let mine = normalised(&phones(0..600));
    let attempt = |tamper: &Tamper<'_>| -> Result<u64, PsiRunError> {
        let p = pair(RoundId([6; 16]));
        let responder = p.responder;
        let (from_c, comparer) = p.comparer.own_list(&mine, &rng).unwrap();
        // The comparer's list as the responder opens it.
        let l = responder.link.from_peer.open_list(ListKind::Blinded { group: 0 }, &from_c, 1 << 10).unwrap();
        let forged = tamper(&l, &responder);
        let answer = responder.link.to_peer.seal_list(ListKind::Returned { group: 0 }, &forged, &rng).unwrap();
        let theirs = psi::pad_and_shuffle(psi::blind(&responder.key, &mine[..520]), psi::bucket, &rng).unwrap();
        let theirs = responder.link.to_peer.seal_list(ListKind::Blinded { group: 0 }, &theirs, &rng).unwrap();
        comparer.compare(&theirs, &answer)
    };
    use curve25519_dalek::ristretto::CompressedRistretto;
    use curve25519_dalek::scalar::Scalar;
    let times =
        |p: &[u8; 32], a: u64| (CompressedRistretto(*p).decompress().unwrap() * Scalar::from(a)).compress().to_bytes();
    // Honest: the count (520 of the responder's identifiers are the comparer's).
    assert_eq!(attempt(&|l, r| psi::reblind(&r.key, l).unwrap()).unwrap(), 520);
    // Scaled copies of 32 positions, filling the answer's length.
    let scaled = attempt(&|l, _| (0..l.len()).map(|i| times(&l[i % 32], (i / 32 + 1) as u64)).collect());
    assert!(matches!(scaled, Err(PsiRunError::AnswerTraps { .. })), "{scaled:?}");
    // Honest but for one point twice, or one point short.
    let twice = attempt(&|l, r| {
        let mut a = psi::reblind(&r.key, l).unwrap();
        a[1] = a[0];
        a
    });
    assert!(matches!(twice, Err(PsiRunError::AnswerDuplicate { .. })), "{twice:?}");
    let short = attempt(&|l, r| psi::reblind(&r.key, &l[1..]).unwrap());
    assert!(matches!(short, Err(PsiRunError::AnswerLength { .. })), "{short:?}");
    // Another key than the one committed in the signed run key: no trap answered.
    let other = attempt(&|l, _| {
        let k =
            BlindingKey::generate(fedcrm_crypto::psi::Domain { version: psi::VERSION, run_id: [6; 16] }, &rng).unwrap();
        psi::reblind(&k, l).unwrap()
    });
    assert!(matches!(other, Err(PsiRunError::AnswerTraps { .. })), "{other:?}");
}

#[test]
fn a_relay_that_substitutes_or_replays_a_list_is_detected() {
    let a = normalised(&phones(0..600));
    let now = run_pair(pair(RoundId([7; 16])), &a, &a, &mut Relay::default());
    let earlier = run_pair(pair(RoundId([8; 16])), &a, &a, &mut Relay::default());
    // A list of an earlier run between the same names, replayed.
    let err = now.comparer.compare(&earlier.from_r, &now.answer).unwrap_err();
    assert!(matches!(err, PsiRunError::Channel(ChannelError::Sealed { .. })), "{err}");
    // The comparer's own list reflected back as the answer.
    let again = run_pair(pair(RoundId([7; 16])), &a, &a, &mut Relay::default());
    let err = again.comparer.compare(&again.from_r, &again.from_c).unwrap_err();
    assert!(matches!(err, PsiRunError::Channel(ChannelError::Sealed { .. })), "{err}");
    let _ = earlier.comparer;
}

/// A seeded ChaCha20 stream: reproducible noise for the statistical test.
struct Seeded(rand_chacha::ChaCha20Rng);

impl Entropy for Seeded {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), DpError> {
        rand::RngCore::fill_bytes(&mut self.0, dest);
        Ok(())
    }
}

/// Deterministic pseudo-random mainland mobiles ("random identifiers").
fn random_phones(n: usize, seed: u64) -> Vec<String> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    (0..n).map(|_| format!("+861{}{:09}", rng.random_range(3..=9), rng.random_range(0..1_000_000_000u64))).collect()
}

/// Whether `released` (world without / with the target) satisfy P[S] ≤ e^ε P'[S] + δ both
/// ways for every threshold set S = {r ≥ t} and {r ≤ t} (a shift mechanism's worst
/// sets), up to sampling error: Hoeffding's bound, union over the sets, at
/// 10⁻⁹ overall.
fn within(without: &[i64], with: &[i64], epsilon: f64, delta: f64) -> Result<(), String> {
    let n = without.len().min(with.len()) as f64;
    let (lo, hi) = (*without.iter().chain(with).min().unwrap(), *without.iter().chain(with).max().unwrap());
    let sets = 2.0 * (hi - lo + 1) as f64;
    let slack = ((2.0 * sets / 1e-9).ln() / (2.0 * n)).sqrt();
    let p = |xs: &[i64], f: &dyn Fn(i64) -> bool| xs.iter().filter(|x| f(**x)).count() as f64 / xs.len() as f64;
    for t in lo..=hi {
        let above = move |x: i64| x >= t;
        let below = move |x: i64| x <= t;
        for (name, s) in [("≥", &above as &dyn Fn(i64) -> bool), ("≤", &below)] {
            let (a, b) = (p(without, s), p(with, s));
            for (x, y) in [(a, b), (b, a)] {
                if x > epsilon.exp() * y + delta + (1.0 + epsilon.exp()) * slack {
                    return Err(format!("S = r {name} {t}: {x:.4} > e^{epsilon}·{y:.4} + δ + slack {slack:.4}"));
                }
            }
        }
    }
    Ok(())
}

/// δ(ε) between N_Z(0, σ²) and N_Z(1, σ²) — Σ_k max(0, P(k) − e^ε·Q(k)), both ways
/// (the larger) — summed over ±60σ, where the rest is below f64's resolution.
fn hockey_stick(sigma2: f64, epsilon: f64) -> f64 {
    let reach = (60.0 * sigma2.sqrt()).ceil() as i64 + 2;
    let w = |k: i64, mu: i64| (-((k - mu) as f64).powi(2) / (2.0 * sigma2)).exp();
    let z: f64 = (-reach..=reach).map(|k| w(k, 0)).sum();
    let one_way = |mu_p: i64, mu_q: i64| -> f64 {
        (-reach..=reach + 1).map(|k| (w(k, mu_p) / z - epsilon.exp() * w(k, mu_q) / z).max(0.0)).sum()
    };
    one_way(0, 1).max(one_way(1, 0))
}

/// HQ probes a franchisee's list with one target number padded with random identifiers
/// up to the policy's minimum. The franchisee compares (the non-HQ side) and releases
/// only the noised count: the target's membership moves the exact count by exactly 1,
/// and the released count's distribution with and without the target differs within
/// the (ε, δ) the noise states: exactly (the hockey-stick divergence of the two discrete
/// Gaussians), and empirically for 40,000 releases drawn by the node's sampler — a check
/// whose resolution is coarser (a tenth of the noise still passes it; a hundredth fails).
#[test]
fn a_padded_probe_learns_membership_only_within_the_stated_epsilon_delta() {
    let target = "+8613912345678".to_string();
    let customers = random_phones(1500, 1);
    let probe: Vec<String> = std::iter::once(target.clone()).chain(random_phones(1199, 2)).collect();
    let exact = |with_target: bool| {
        let mut mine = customers.clone();
        if with_target {
            mine.push(target.clone());
        }
        // A fresh run each time: new keys, new padding, new shuffles.
        let run = run_pair(pair(RoundId([9 + u8::from(with_target); 16])), &mine, &probe, &mut Relay::default());
        run.comparer.compare(&run.from_r, &run.answer).unwrap()
    };
    let (c0, c1) = (exact(false), exact(true));
    assert_eq!(c1, c0 + 1, "the target moves the exact count by one");

    // σ² for ε = 1 at δ = 10⁻⁶ (sensitivity 1: ρ = 1/(2σ²)).
    let (epsilon, delta) = (1.0, 1e-6);
    let rho = fedcrm_dp::accounting::rho_for_epsilon(epsilon, delta).unwrap();
    let sigma2 = 1.0 / (2.0 * rho);
    let variance =
        |s2: f64| DiscreteGaussian::new(fedcrm_dp::sampler::Variance::new((s2 * 1000.0).ceil() as u64, 1000).unwrap());
    let released = |noise: &DiscreteGaussian, exact: u64, seed: u64| -> Vec<i64> {
        use rand::SeedableRng;
        let mut e = Seeded(rand_chacha::ChaCha20Rng::seed_from_u64(seed));
        (0..40_000).map(|_| noised(exact, noise, &mut e).unwrap()).collect()
    };
    // Exactly: the released count is exact + N_Z(0, σ²), and the target shifts it by
    // one; the hockey-stick divergence of the two discrete Gaussians at ε is their δ.
    assert!(hockey_stick(sigma2, epsilon) <= delta, "δ = {:e}", hockey_stick(sigma2, epsilon));
    assert!(hockey_stick(sigma2 / 100.0, epsilon) > delta);
    let stated = variance(sigma2);
    let (r0, r1) = (released(&stated, c0, 10), released(&stated, c1, 11));
    within(&r0, &r1, epsilon, delta).unwrap();
    println!("probe: exact {c0} / {c1}; σ² = {sigma2:.2} for ε = {epsilon} at δ = {delta}: within");

    // The test has power: a hundredth of the variance is caught at the same ε.
    let weak = variance(sigma2 / 100.0);
    let (w0, w1) = (released(&weak, c0, 12), released(&weak, c1, 13));
    assert!(within(&w0, &w1, epsilon, delta).is_err(), "too little noise must fail the check");
}

#[test]
fn a_node_answers_only_a_peer_its_franchisee_pinned() {
    let peer = |org: &str| fedcrm_pki::Identity {
        name: "fr-suzhou".into(),
        organisation: org.into(),
        role: fedcrm_pki::Role::Node(fedcrm_pki::OrgKind::Franchisee),
    };
    let cert = b"the peer's certificate, DER".to_vec();
    let fingerprint = hex::encode(digest::digest(&digest::SHA256, &cert));
    // Default: nobody — the node only compares.
    let none = PsiLimits::default();
    let err = none.may_respond(&peer("苏州金玉珠宝有限公司"), &cert).unwrap_err();
    assert!(err.contains("respond_to") && err.contains(&fingerprint), "{err}");
    // Pinned as openssl prints it (upper case, colons).
    let printed: Vec<String> =
        fingerprint.as_bytes().chunks(2).map(|c| String::from_utf8_lossy(c).to_uppercase()).collect();
    let pinned = PsiLimits {
        respond_to: vec![RespondTo {
            organisation: "苏州金玉珠宝有限公司".into(),
            certificate_sha256: printed.join(":"),
        }],
        ..PsiLimits::default()
    };
    assert!(pinned.may_respond(&peer("苏州金玉珠宝有限公司"), &cert).is_ok());
    // Another certificate in the same name and organisation (HQ's CA can issue one).
    assert!(pinned.may_respond(&peer("苏州金玉珠宝有限公司"), b"another certificate").is_err());
    // The same certificate bytes claimed for another organisation.
    assert!(pinned.may_respond(&peer("Jinyu HQ"), &cert).is_err());
}

#[test]
fn what_the_coordinator_is_told_of_a_failed_answer_holds_no_figure() {
    let errors = [
        PsiRunError::AnswerTraps { peer: "hq-stores".into(), missing: 1234, traps: 1234 },
        PsiRunError::AnswerLength { peer: "hq-stores".into(), got: 4096, sent: 4352 },
        PsiRunError::TooShort { peer: "hq-stores".into(), points: 17, min: 256 },
        PsiRunError::TooLong { peer: "hq-stores".into(), points: 1 << 24, max: 1 << 23 },
    ];
    for e in errors {
        let public = e.public_reason();
        assert!(!public.chars().any(|c| c.is_ascii_digit()), "{public}");
        assert!(public.contains("hq-stores"), "names who is at fault: {public}");
        assert!(e.to_string().chars().any(|c| c.is_ascii_digit()), "the local error keeps the figures");
    }
    let overlap = PsiRunError::GroupsOverlap { peer: "hq-stores".into(), what: "answer" }.public_reason();
    assert!(!overlap.chars().any(|c| c.is_ascii_digit()) && overlap.contains("hq-stores"), "{overlap}");
}

/// The attack review's segment-profile amplification: a responder that puts one
/// identifier in every group of its list would count that customer in every cell of
/// the comparer's row (sensitivity 4, not 1), and an answer that repeats a point across
/// groups would count one of the comparer's customers twice — without touching a trap.
/// The comparer refuses groups that share a point, in the list and in the answer.
#[test]
fn a_responder_that_repeats_a_point_across_segment_groups_is_refused() {
    let rng = SystemRandom::new();
    let mine = normalised(&phones(0..600));
    let (g0, g1): (&[String], &[String]) = (&mine[..300], &mine[300..]);
    let theirs = normalised(&phones(350..950));
    let sealed = |lists: Vec<SealedList>| lists.into_iter().map(|l| l.1).collect::<Vec<_>>();
    let run = |r0: &[String], r1: &[String]| {
        let p = pair(RoundId([13; 16]));
        let (from_c, comparer) = p.comparer.own_groups(&[g0, g1], &rng).unwrap();
        let (from_r, responder) = p.responder.own_groups(&[r0, r1], &rng).unwrap();
        let answers = sealed(responder.answer_groups(&sealed(from_c), &rng).unwrap());
        comparer.compare_groups(&sealed(from_r), &answers)
    };
    // Honest: table[i][j] = the comparer's group i against the responder's group j.
    assert_eq!(run(&theirs[..200], &theirs[200..]).unwrap(), vec![vec![0, 0], vec![200, 50]]);
    // The comparer's customer 10 in both of the responder's groups.
    let (mut r0, mut r1) = (theirs[..200].to_vec(), theirs[200..].to_vec());
    r0.push(mine[10].clone());
    r1.push(mine[10].clone());
    let err = run(&r0, &r1).unwrap_err();
    assert!(matches!(err, PsiRunError::GroupsOverlap { what: "list", .. }), "{err}");
    // An answer with a point of group 0 (not a trap) in place of one of group 1 (not a
    // trap either), so that no trap check fails.
    let p = pair(RoundId([14; 16]));
    let (from_c, comparer) = p.comparer.own_groups(&[g0, g1], &rng).unwrap();
    let (from_r, responder) = p.responder.own_groups(&[&theirs[..200], &theirs[200..]], &rng).unwrap();
    let mut answers: Vec<Vec<[u8; 32]>> = from_c
        .iter()
        .enumerate()
        .map(|(g, (_, chunks))| {
            psi::reblind(&responder.key, &responder.link.peer_list(g as u8, chunks).unwrap()).unwrap()
        })
        .collect();
    let identifier =
        |g: usize, a: &[[u8; 32]]| a.iter().position(|x| !comparer.groups[g].expected.contains(x)).unwrap();
    let (from, to) = (identifier(0, &answers[0]), identifier(1, &answers[1]));
    answers[1][to] = answers[0][from];
    let answers: Vec<Vec<SealedChunk>> = answers
        .iter()
        .enumerate()
        .map(|(g, a)| responder.link.to_peer.seal_list(ListKind::Returned { group: g as u8 }, a, &rng).unwrap())
        .collect();
    let err = comparer.compare_groups(&sealed(from_r), &answers).unwrap_err();
    assert!(matches!(err, PsiRunError::GroupsOverlap { what: "answer", .. }), "{err}");
}

/// `--dp off`: the node's own release withholds every figure below its
/// `min_exact_count` — its size, a plain count, a profile's small cells and, with them,
/// the smallest cells that would otherwise give one away by the pair's total — and sends
/// no value for them; noised figures leave whole, a table with its noised cells' sum.
#[test]
fn exact_counts_below_the_nodes_minimum_are_withheld_before_they_leave() {
    use rand::SeedableRng;
    let run = RoundId([8; 16]);
    let mut e = Seeded(rand_chacha::ChaCha20Rng::seed_from_u64(8));
    let plain = vec![("node-b".to_string(), vec![9]), ("node-c".to_string(), vec![10])];
    let r = release(run, 7, plain.clone(), false, None, 10, &mut e).unwrap();
    assert_eq!(r.customers, None);
    assert_eq!(r.counts, vec![("node-b".into(), None), ("node-c".into(), Some(10))]);
    // A profile: cell 5 (3 customers) is below 10, and alone it would follow from the
    // total 603 less the shown cells, so the smallest shown cell (40, cell 9) goes too.
    let mut cells = vec![0u64; 16];
    (cells[0], cells[5], cells[9], cells[10], cells[15]) = (200, 3, 40, 110, 250);
    let table = vec![
        ("node-b".to_string(), cells.clone()),
        ("node-c".to_string(), vec![0, 2, 1, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 1]),
    ];
    let r = release(run, 5000, table.clone(), true, None, 10, &mut e).unwrap();
    assert_eq!(r.customers, Some(5000));
    let t = &r.tables[0];
    assert_eq!(t.total, Some(603));
    let shown: Vec<(usize, i64)> = t.cells.iter().enumerate().filter_map(|(i, c)| c.map(|v| (i, v))).collect();
    assert_eq!(shown, vec![(0, 200), (10, 110), (15, 250)]);
    // A pair sharing 8 customers: nothing of it leaves. (On the wire a withheld figure
    // is a flag and 0: protocol/src/wire/tests.rs, and the captured egress of
    // tests/overlap_psi.rs.)
    assert_eq!((r.tables[1].total, r.tables[1].cells.iter().flatten().count()), (None, 0));
    // Noised: every figure leaves, none withheld, and a table's total is its cells' sum.
    let noise = DiscreteGaussian::new(fedcrm_dp::sampler::Variance::new(16, 1).unwrap());
    let r = release(run, 7, table, true, Some(&noise), 10, &mut e).unwrap();
    assert!(r.customers.is_some());
    for t in &r.tables {
        let cells: Vec<i64> = t.cells.iter().map(|c| c.unwrap()).collect();
        assert_eq!(t.total, Some(cells.iter().sum()));
    }
    let r = release(run, 7, plain, false, Some(&noise), 10, &mut e).unwrap();
    assert!(r.counts.iter().all(|c| c.1.is_some()));
}
