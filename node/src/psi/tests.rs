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
