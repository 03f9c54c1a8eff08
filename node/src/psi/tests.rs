//! A PSI pair run in memory, its lists relayed through a "coordinator" that records
//! every byte and, in the attack tests, tampers.

use super::*;
use crate::identifiers::{MatchOn, Normalised};
use fedcrm_crypto::SystemRandom;
use ring::digest;

const LIMITS: ListLimits = ListLimits { min_points: 500, max_points: 1 << 20 };

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
    comparer: PairRun,
    responder: PairRun,
}

fn pair(run: RoundId) -> Pair {
    let rng = SystemRandom::new();
    let (c, r) = (RoundSecret::generate(&rng).unwrap(), RoundSecret::generate(&rng).unwrap());
    Pair {
        comparer: PairRun::new(run, "fr-a", "hq-tmall", &c, &r.public(), LIMITS, &rng).unwrap(),
        responder: PairRun::new(run, "hq-tmall", "fr-a", &r, &c.public(), LIMITS, &rng).unwrap(),
    }
}

/// Everything the relay carried, in order.
#[derive(Default)]
struct Relay {
    bytes: Vec<u8>,
}

impl Relay {
    fn carry(&mut self, chunks: &[SealedChunk]) -> Vec<SealedChunk> {
        for c in chunks {
            self.bytes.extend_from_slice(&c.index.to_be_bytes());
            self.bytes.extend_from_slice(&c.of.to_be_bytes());
            self.bytes.extend_from_slice(&c.ciphertext);
        }
        chunks.to_vec()
    }
}

/// Runs the pair honestly; the count, the relay's bytes and the lists each side opened.
fn run_pair(p: &mut Pair, a: &[String], b: &[String]) -> (u64, Relay) {
    let rng = SystemRandom::new();
    let mut relay = Relay::default();
    let from_c = relay.carry(&p.comparer.own_list(a, &rng).unwrap());
    let from_r = relay.carry(&p.responder.own_list(b, &rng).unwrap());
    let answer = relay.carry(&p.responder.answer(&from_c, &rng).unwrap());
    (p.comparer.compare(&from_r, &answer).unwrap(), relay)
}

#[test]
fn the_count_equals_the_plaintext_intersection_of_normalised_phones() {
    // 3,000 and 2,000 customers, 700 shared, written differently on each side.
    let a = normalised(&phones(0..3000));
    let b_raw: Vec<String> = phones(2300..4300).into_iter().map(|p| p.replace(' ', "")).collect();
    let b = normalised(&b_raw);
    let plain = a.iter().filter(|x| b.contains(x)).count() as u64;
    assert_eq!(plain, 700);
    let (count, relay) = run_pair(&mut pair(RoundId([1; 16])), &a, &b);
    assert_eq!(count, plain);
    // The relay saw sealed, padded lists: two own lists and one answer.
    let padded = psi::bucket(3000) * 2 + psi::bucket(2000);
    assert!(relay.bytes.len() >= padded * 32, "{} bytes for {padded} points", relay.bytes.len());
}

#[test]
fn no_hash_or_unblinded_point_of_an_identifier_crosses_even_to_the_peer() {
    let a = normalised(&phones(0..600));
    let b = normalised(&phones(300..900));
    let run = RoundId([2; 16]);
    let mut p = pair(run);
    let rng = SystemRandom::new();
    let mut relay = Relay::default();
    let from_c = relay.carry(&p.comparer.own_list(&a, &rng).unwrap());
    let from_r = relay.carry(&p.responder.own_list(&b, &rng).unwrap());
    let answer = relay.carry(&p.responder.answer(&from_c, &rng).unwrap());
    // What each side's peer could read: the opened lists.
    let mut seen = relay.bytes.clone();
    for (d, list, chunks) in [
        (&p.responder.from_peer, ListKind::Blinded { group: 0 }, &from_c),
        (&p.comparer.from_peer, ListKind::Blinded { group: 0 }, &from_r),
        (&p.comparer.from_peer, ListKind::Returned { group: 0 }, &answer),
    ] {
        seen.extend(d.open_list(list, chunks, 1 << 10).unwrap().into_iter().flatten());
    }
    let domain = Domain { version: psi::VERSION, run_id: run.0 };
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
}

#[test]
fn two_runs_on_the_same_data_share_no_blinded_point() {
    let a = normalised(&phones(0..800));
    let rng = SystemRandom::new();
    let lists: Vec<Vec<[u8; 32]>> = [RoundId([3; 16]), RoundId([4; 16])]
        .into_iter()
        .map(|run| {
            let mut p = pair(run);
            let chunks = p.comparer.own_list(&a, &rng).unwrap();
            p.responder.from_peer.open_list(ListKind::Blinded { group: 0 }, &chunks, 1 << 10).unwrap()
        })
        .collect();
    let first: HashSet<_> = lists[0].iter().collect();
    assert!(lists[1].iter().all(|x| !first.contains(x)));
}

#[test]
fn a_tiny_probe_is_refused_before_anything_is_blinded() {
    let rng = SystemRandom::new();
    let mut p = pair(RoundId([5; 16]));
    // HQ's side sends an unpadded list of three numbers (a probe): sealed properly, but
    // shorter than the comparer's minimum.
    let probe: Vec<[u8; 32]> = psi::blind(&p.responder.key, &normalised(&phones(0..3)));
    let chunks = p.responder.to_peer.seal_list(ListKind::Blinded { group: 0 }, &probe);
    let own = p.comparer.own_list(&normalised(&phones(0..600)), &rng).unwrap();
    let answer = p.responder.answer(&own, &rng).unwrap();
    let err = p.comparer.compare(&chunks, &answer).unwrap_err();
    assert!(matches!(err, PsiRunError::TooShort { points: 3, min: 500, .. }), "{err}");
    // The responder refuses a probe from the comparer's side the same way.
    let probe = p.comparer.to_peer.seal_list(ListKind::Blinded { group: 0 }, &probe);
    let err = p.responder.answer(&probe, &rng).unwrap_err();
    assert!(matches!(err, PsiRunError::TooShort { .. }), "{err}");
}

#[test]
fn a_responder_that_drops_or_duplicates_points_is_caught() {
    let rng = SystemRandom::new();
    let mut p = pair(RoundId([6; 16]));
    let own = p.comparer.own_list(&normalised(&phones(0..600)), &rng).unwrap();
    let theirs = p.responder.own_list(&normalised(&phones(0..600)), &rng).unwrap();
    let honest = p.responder.answer(&own, &rng).unwrap();
    let list = p.comparer.from_peer.open_list(ListKind::Returned { group: 0 }, &honest, 1 << 10).unwrap();
    let reseal = |l: &[[u8; 32]]| p.responder.to_peer.seal_list(ListKind::Returned { group: 0 }, l);
    let dropped = reseal(&list[1..]);
    assert!(matches!(p.comparer.compare(&theirs, &dropped), Err(PsiRunError::AnswerLength { .. })));
    let mut doubled = list.clone();
    doubled[1] = doubled[0];
    assert!(matches!(p.comparer.compare(&theirs, &reseal(&doubled)), Err(PsiRunError::AnswerDuplicate { .. })));
    assert_eq!(p.comparer.compare(&theirs, &honest).unwrap(), 600);
}

#[test]
fn a_relay_that_substitutes_or_replays_a_list_is_detected() {
    let rng = SystemRandom::new();
    let a = normalised(&phones(0..600));
    let mut p = pair(RoundId([7; 16]));
    let mut earlier = pair(RoundId([8; 16]));
    let own = p.comparer.own_list(&a, &rng).unwrap();
    let theirs = p.responder.own_list(&a, &rng).unwrap();
    let answer = p.responder.answer(&own, &rng).unwrap();
    // A list of an earlier run between the same names, replayed.
    let old = earlier.responder.own_list(&a, &rng).unwrap();
    let err = p.comparer.compare(&old, &answer).unwrap_err();
    assert!(matches!(err, PsiRunError::Channel(ChannelError::Sealed { .. })), "{err}");
    // The comparer's own list reflected back as the answer.
    let err = p.comparer.compare(&theirs, &own).unwrap_err();
    assert!(matches!(err, PsiRunError::Channel(ChannelError::Sealed { .. })), "{err}");
    // The relay's own list, made with keys it holds.
    let relay_list = earlier.comparer.own_list(&a, &rng).unwrap();
    assert!(p.responder.answer(&relay_list, &rng).is_err());
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

/// HQ probes a franchisee's list with one target number padded with random identifiers
/// up to the policy's minimum. The franchisee compares (the non-HQ side) and releases
/// only the noised count: the target's membership moves the exact count by exactly 1,
/// and the released count's distribution with and without the target differs within
/// the (ε, δ) the noise states — a test that fails when the noise is too small.
#[test]
fn a_padded_probe_learns_membership_only_within_the_stated_epsilon_delta() {
    let rng = SystemRandom::new();
    let target = "+8613912345678".to_string();
    let customers = random_phones(1500, 1);
    let probe: Vec<String> = std::iter::once(target.clone()).chain(random_phones(1199, 2)).collect();
    let exact = |with_target: bool| {
        let mut mine = customers.clone();
        if with_target {
            mine.push(target.clone());
        }
        // A fresh run each time: new keys, new padding, new shuffles.
        let mut p = pair(RoundId([9 + u8::from(with_target); 16]));
        let own = p.comparer.own_list(&mine, &rng).unwrap();
        let theirs = p.responder.own_list(&probe, &rng).unwrap();
        let answer = p.responder.answer(&own, &rng).unwrap();
        p.comparer.compare(&theirs, &answer).unwrap()
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
    let stated = variance(sigma2);
    let (r0, r1) = (released(&stated, c0, 10), released(&stated, c1, 11));
    within(&r0, &r1, epsilon, delta).unwrap();
    println!("probe: exact {c0} / {c1}; σ² = {sigma2:.2} for ε = {epsilon} at δ = {delta}: within");

    // The test has power: a hundredth of the variance is caught at the same ε.
    let weak = variance(sigma2 / 100.0);
    let (w0, w1) = (released(&weak, c0, 12), released(&weak, c1, 13));
    assert!(within(&w0, &w1, epsilon, delta).is_err(), "too little noise must fail the check");
}
