//! Unit tests of the PSI building blocks: the protocol's algebra (commutativity,
//! domain separation, unlinkability), the decoder's refusals, padding and shuffling,
//! and that no bare hash of an identifier and no unblinded point appears in a list.

use std::collections::BTreeSet;

use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::traits::Identity;
use proptest::prelude::*;
use ring::rand::SystemRandom;

use super::*;

const RUN: Domain = Domain { version: VERSION, run_id: [0x5a; 16] };

fn key(domain: Domain) -> BlindingKey {
    BlindingKey::generate(domain, &SystemRandom::new()).unwrap()
}

/// Phone numbers in E.164, as the node's normalisation writes them.
fn phones(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("+86138{i:08}")).collect()
}

fn contains_subslice(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn distinct(points: &[[u8; 32]]) -> BTreeSet<[u8; 32]> {
    points.iter().copied().collect()
}

#[test]
fn blinding_commutes() {
    let ids = phones(0..3000); // more than two chunks
    let (k1, k2) = (key(RUN), key(RUN));
    let one_then_two = reblind(&k2, &blind(&k1, &ids)).unwrap();
    let two_then_one = reblind(&k1, &blind(&k2, &ids)).unwrap();
    assert_eq!(one_then_two, two_then_one);
    assert_eq!(distinct(&one_then_two).len(), ids.len());
}

#[test]
fn batch_compression_equals_compress() {
    let ids = phones(0..2500);
    let k = key(RUN);
    let expected: Vec<[u8; 32]> =
        ids.iter().map(|id| (hash_to_group(&RUN, id.as_bytes()) * k.scalar).compress().to_bytes()).collect();
    assert_eq!(blind(&k, &ids), expected);
    let again: Vec<[u8; 32]> = expected
        .iter()
        .map(|b| (CompressedRistretto(*b).decompress().unwrap() * k.scalar).compress().to_bytes())
        .collect();
    assert_eq!(reblind(&k, &expected).unwrap(), again);
    // An identity inside a batch encodes as zeros and leaves its neighbours exact.
    let points = [hash_to_group(&RUN, b"a"), RistrettoPoint::identity(), hash_to_group(&RUN, b"b")];
    let encoded = multiply_and_compress(&k.half(), &points);
    let one_by_one: Vec<[u8; 32]> = points.iter().map(|p| (p * k.scalar).compress().to_bytes()).collect();
    assert_eq!(encoded, one_by_one);
    assert_eq!(encoded[1], [0; 32]);
}

#[test]
fn hash_to_group_follows_the_documented_encoding() {
    let id = b"+8613800138000";
    let mut input = Vec::new();
    input.extend_from_slice(&10u64.to_be_bytes());
    input.extend_from_slice(b"fedcrm-psi");
    input.extend_from_slice(&1u32.to_be_bytes());
    input.extend_from_slice(&[0x5a; 16]);
    input.extend_from_slice(&(id.len() as u64).to_be_bytes());
    input.extend_from_slice(id);
    let d = digest::digest(&digest::SHA512, &input);
    let wide: [u8; 64] = d.as_ref().try_into().unwrap();
    assert_eq!(hash_to_group(&RUN, id), RistrettoPoint::from_uniform_bytes(&wide));
}

#[test]
fn runs_and_versions_give_disjoint_points() {
    let ids = phones(0..500);
    let other_run = Domain { run_id: [0x5b; 16], ..RUN };
    let other_version = Domain { version: VERSION + 1, ..RUN };
    let hashed = |d: &Domain| -> BTreeSet<[u8; 32]> {
        ids.iter().map(|id| hash_to_group(d, id.as_bytes()).compress().to_bytes()).collect()
    };
    let (a, b, c) = (hashed(&RUN), hashed(&other_run), hashed(&other_version));
    assert_eq!(a.len(), ids.len());
    assert!(a.is_disjoint(&b) && a.is_disjoint(&c) && b.is_disjoint(&c));
    // And through blinding: the same key's scalar over another run's domain.
    let k = key(RUN);
    let k_other = BlindingKey { scalar: k.scalar, domain: other_run };
    assert!(distinct(&blind(&k, &ids)).is_disjoint(&distinct(&blind(&k_other, &ids))));
}

/// Two keys (two nodes, or one node in two runs) blind the same identifiers to lists
/// with no point in common, not even up to sign at the same position (linking them
/// beyond that means computing k₁/k₂, a discrete logarithm).
#[test]
fn two_keys_give_unlinkable_outputs() {
    let ids = phones(0..1000);
    let (k1, k2) = (key(RUN), key(RUN));
    let (b1, b2) = (blind(&k1, &ids), blind(&k2, &ids));
    assert!(distinct(&b1).is_disjoint(&distinct(&b2)));
    for (p, q) in b1.iter().zip(&b2) {
        let (p, q) = (CompressedRistretto(*p).decompress().unwrap(), CompressedRistretto(*q).decompress().unwrap());
        assert!(p != q && p != -q);
    }
    // Re-blinded by the other key they meet: the lists differ only by the keys.
    assert_eq!(distinct(&reblind(&k2, &b1).unwrap()), distinct(&reblind(&k1, &b2).unwrap()));
}

#[test]
fn intersection_of_padded_lists_equals_the_plaintext_intersection() {
    let rng = SystemRandom::new();
    // A: 0..1200, B: 800..2000 → 400 in common.
    let (a_ids, b_ids) = (phones(0..1200), phones(800..2000));
    let plain = a_ids.iter().collect::<BTreeSet<_>>().intersection(&b_ids.iter().collect()).count() as u64;
    assert_eq!(plain, 400);
    let (ka, kb) = (key(RUN), key(RUN));
    // A → B: a·H(x), padded and shuffled; B returns b·a·H(x), shuffled.
    let a_sent = pad_and_shuffle(blind(&ka, &a_ids), bucket, &rng).unwrap();
    let mut a_back = reblind(&kb, &a_sent).unwrap();
    shuffle(&mut a_back, &rng).unwrap();
    // B → A: b·H(y), padded and shuffled; A computes a·b·H(y).
    let b_sent = pad_and_shuffle(blind(&kb, &b_ids), bucket, &rng).unwrap();
    let b_double = reblind(&ka, &b_sent).unwrap();
    assert_eq!(a_back.len(), bucket(1200));
    assert_eq!(intersection_count(&a_back, &b_double), plain);
    assert_eq!(intersection_count(&b_double, &a_back), plain);
}

#[test]
fn intersection_counts_each_common_point_once() {
    let p = |b: u8| [b; 32];
    assert_eq!(intersection_count(&[p(1), p(2), p(3)], &[p(3), p(3), p(2), p(9)]), 2);
    assert_eq!(intersection_count(&[p(3), p(3), p(2), p(9)], &[p(1), p(2), p(3)]), 2);
    assert_eq!(intersection_count(&[], &[p(1)]), 0);
}

#[test]
fn reblind_refuses_bad_encodings_and_the_identity_naming_the_index() {
    let k = key(RUN);
    let good = blind(&k, &phones(0..2050));
    let identity = RistrettoPoint::identity().compress().to_bytes();
    assert_eq!(identity, [0u8; 32]);

    let mut with_identity = good.clone();
    with_identity[2049] = identity;
    assert_eq!(reblind(&k, &with_identity), Err(PsiError::Identity { index: 2049 }));

    // Non-canonical: s ≥ p (all-ones), a negative s (low bit set), a non-square.
    for (index, bad) in [
        (0, [0xff; 32]),
        (1500, {
            let mut b = [0u8; 32];
            b[0] = 1;
            b
        }),
        (7, [0x11; 32]),
    ] {
        let mut list = good.clone();
        list[index] = bad;
        assert_eq!(reblind(&k, &list), Err(PsiError::NonCanonical { index }), "{index}");
    }

    // The first bad index is named, even across chunks.
    let mut two = good.clone();
    two[2040] = [0xff; 32];
    two[10] = identity;
    assert_eq!(reblind(&k, &two), Err(PsiError::Identity { index: 10 }));
    assert!(PsiError::NonCanonical { index: 3 }.to_string().starts_with("point 3: "));
}

#[test]
fn padding_fills_the_bucket_with_valid_distinct_points() {
    let rng = SystemRandom::new();
    let k = key(RUN);
    for n in [0, 1, 255, 256, 257, 1000] {
        let blinded = blind(&k, &phones(0..n));
        let padded = pad_and_shuffle(blinded.clone(), bucket, &rng).unwrap();
        assert_eq!(padded.len(), bucket(n as usize), "n = {n}");
        assert!(distinct(&padded).is_superset(&distinct(&blinded)));
        assert_eq!(distinct(&padded).len(), padded.len());
        // Padding is made of valid points: the peer's reblind takes the whole list.
        assert_eq!(reblind(&k, &padded).unwrap().len(), padded.len());
    }
    assert_eq!(pad_and_shuffle(vec![[0; 32]; 10], |_| 9, &rng), Err(PsiError::BucketTooSmall { len: 10, bucket: 9 }));
}

#[test]
fn bucket_ladder() {
    assert_eq!(bucket(0), 256);
    assert_eq!(bucket(256), 256);
    assert_eq!(bucket(257), 305); // ⌈256 · 2^(1/4)⌉ = ⌈304.44⌉
    assert_eq!(bucket(305), 305);
    assert_eq!(bucket(306), 363); // ⌈256 · √2⌉ = ⌈362.04⌉
    assert_eq!(bucket(364), 431); // ⌈256 · 2^(3/4)⌉ = ⌈430.54⌉
    assert_eq!(bucket(432), 512);
    assert_eq!(bucket(1_000_000), 1_048_576);
    assert_eq!(bucket(MAX_LIST), MAX_LIST);
    assert_eq!(bucket(MAX_LIST + 1), MAX_LIST + 1);
}

#[test]
fn bucket_ladder_matches_its_real_definition() {
    // Within one point of ⌈256 · 2^(j/4)⌉ up to MAX_LIST (f64 is exact enough to say so).
    let mut j = 0;
    loop {
        let exact = (256.0 * 2f64.powf(j as f64 / 4.0)).ceil() as usize;
        if exact > MAX_LIST {
            break;
        }
        let ladder = bucket(exact);
        assert!(ladder.abs_diff(exact) <= 1, "j = {j}: {ladder} vs {exact}");
        // The worst case of the overhead bound: one point past a step.
        let n = ladder + 1;
        if n <= MAX_LIST {
            assert!((bucket(n) as f64) < 1.1893 * n as f64 + 2.0, "{n} → {}", bucket(n));
        }
        j += 1;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn bucket_overhead_is_bounded(n in 0usize..=MAX_LIST) {
        let b = bucket(n);
        prop_assert!(b >= n && b >= MIN_BUCKET);
        prop_assert!(n <= MIN_BUCKET || (b as f64) < 1.1893 * n as f64 + 2.0, "{} → {}", n, b);
        prop_assert_eq!(bucket(b), b);
    }

    #[test]
    fn shuffle_is_a_permutation(n in 0usize..600) {
        let original: Vec<[u8; 32]> = (0..n as u32).map(|i| {
            let mut p = [0u8; 32];
            p[..4].copy_from_slice(&i.to_be_bytes());
            p
        }).collect();
        let mut shuffled = original.clone();
        shuffle(&mut shuffled, &SystemRandom::new()).unwrap();
        prop_assert_eq!(shuffled.len(), n);
        let mut sorted = shuffled.clone();
        sorted.sort();
        prop_assert!(sorted == original, "not a permutation of 0..{}", n);
    }

    #[test]
    fn below_is_in_range(n in 1u64..=u64::MAX) {
        let rng = SystemRandom::new();
        let mut words = Words::new(&rng);
        prop_assert!(words.below(n).unwrap() < n);
        // The rejection zone is 2⁶⁴ mod n.
        prop_assert_eq!((u64::MAX - n + 1) % n, ((1u128 << 64) % n as u128) as u64);
    }
}

/// Every one of the 24 orders of four points is about equally likely (24,000 shuffles:
/// each count is 1,000 ± 31 sd; the bounds are over 6 sd).
#[test]
fn shuffle_is_uniform() {
    let rng = SystemRandom::new();
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..24_000 {
        let mut v = [[0u8; 32], [1; 32], [2; 32], [3; 32]];
        shuffle(&mut v, &rng).unwrap();
        *counts.entry(v.map(|p| p[0])).or_insert(0u32) += 1;
    }
    assert_eq!(counts.len(), 24);
    for (order, c) in counts {
        assert!((800..=1200).contains(&c), "{order:?}: {c}");
    }
}

/// Nothing a list carries is a bare hash of an identifier or its unblinded point H(x):
/// SHA-256 and SHA-512 of the identifier, SHA-512 of its domain-separated encoding (the
/// input of the one-way map) and the encoding of H(x) are recomputed and searched for,
/// whole and by their first 16 bytes, in the padded list's bytes.
#[test]
fn no_bare_hash_or_unblinded_point_in_a_blinded_list() {
    let ids = phones(0..300);
    let k = key(RUN);
    let sent = pad_and_shuffle(blind(&k, &ids), bucket, &SystemRandom::new()).unwrap();
    let wire: Vec<u8> = sent.concat();
    for id in &ids {
        let mut encoding = Vec::new();
        encoding.extend_from_slice(&(LABEL.len() as u64).to_be_bytes());
        encoding.extend_from_slice(LABEL);
        encoding.extend_from_slice(&RUN.version.to_be_bytes());
        encoding.extend_from_slice(&RUN.run_id);
        encoding.extend_from_slice(&(id.len() as u64).to_be_bytes());
        encoding.extend_from_slice(id.as_bytes());
        let forbidden = [
            digest::digest(&digest::SHA256, id.as_bytes()).as_ref().to_vec(),
            digest::digest(&digest::SHA512, id.as_bytes()).as_ref().to_vec(),
            digest::digest(&digest::SHA512, &encoding).as_ref().to_vec(),
            hash_to_group(&RUN, id.as_bytes()).compress().to_bytes().to_vec(),
            id.as_bytes().to_vec(),
        ];
        for f in &forbidden {
            assert!(!contains_subslice(&wire, f), "{id}");
            assert!(!contains_subslice(&wire, &f[..16.min(f.len())]), "{id}");
        }
    }
}

#[test]
#[allow(deprecated)] // ring's fixed-output test generator
fn a_generator_that_gives_only_zero_is_refused() {
    let zero = ring::test::rand::FixedByteRandom { byte: 0 };
    assert_eq!(BlindingKey::generate(RUN, &zero).map(|_| ()), Err(PsiError::Random));
    let one = ring::test::rand::FixedByteRandom { byte: 1 };
    assert!(BlindingKey::generate(RUN, &one).is_ok());
}

#[test]
fn the_key_never_prints() {
    assert_eq!(format!("{:?}", key(RUN)), "BlindingKey(..)");
}

#[test]
fn an_honest_answer_holds_every_trap_and_any_other_key_holds_none() {
    let rng = SystemRandom::new();
    let (comparer, responder) = (key(RUN), key(RUN));
    let (list, traps) = pad_with_traps(blind(&comparer, &phones(0..300)), 300, &rng).unwrap();
    assert_eq!(list.len(), bucket(600));
    assert_eq!(traps.len(), list.len() - 300);
    let expected = traps.expected(&responder.public()).unwrap();
    let answer: BTreeSet<[u8; 32]> = distinct(&reblind(&responder, &list).unwrap());
    assert!(expected.iter().all(|t| answer.contains(t)), "every r·K is in an honest answer");
    // A responder that answers with another key than it committed to holds none.
    let other: BTreeSet<[u8; 32]> = distinct(&reblind(&key(RUN), &list).unwrap());
    assert!(expected.iter().all(|t| !other.contains(t)));
    // Trap points are not the identity and not repeated.
    assert_eq!(distinct(&list).len(), list.len());
    // A committed key that is not a point, or the identity, is refused.
    assert!(traps.expected(&[0xff; 32]).is_err());
    assert!(traps.expected(&RistrettoPoint::identity().compress().to_bytes()).is_err());
}

/// The exact chance that a responder's alteration goes unnoticed and covers its target,
/// for every number d of displaced answers, against [`amplification_bound`]: the two
/// pure strategies (mixed ones, and copies across a segment profile's groups, are
/// covered by the derivation in [`Traps`], not enumerated here). Two ways
/// to cover k slots m-fold: keep their honest answers and add m − 1 copies each
/// (d ≥ k·(m − 1), none of the d displaced slots may be a trap), or displace them too
/// (d ≥ k·m, the target's own slot is not a trap). The target's slot is uniform among
/// the N; the c traps uniform among the other N − 1, so no trap among x given slots has
/// probability C(N − 1 − x, c)/C(N − 1, c), which the loop steps by
/// (N − 1 − x − c)/(N − 1 − x).
#[test]
fn the_amplification_bound_holds_for_the_pure_alterations() {
    for (n, c) in [(256, 1), (256, 128), (256, 250), (1000, 10), (4096, 2048), (100_000, 4_000), (1_246_974, 246_974)] {
        for m in [2u64, 3, 20] {
            let bound = amplification_bound(m, c);
            let (mut none_among, mut worst) = (1.0f64, 0.0f64);
            // none_among = P[no trap among x = d − 1 slots], then x = d.
            let none_among_next = |p: f64, x: usize| p * (n - 1 - x - c) as f64 / (n - 1 - x) as f64;
            for d in 1..=(n - 1 - c) {
                let (without_one, with_all) = (none_among, none_among_next(none_among, d - 1));
                let keep = (d as u64 / (m - 1)) as f64 / n as f64 * with_all;
                let displace = (d as u64 / m) as f64 / n as f64 * without_one;
                worst = worst.max(keep).max(displace);
                none_among = with_all;
            }
            assert!(worst <= bound, "N = {n}, c = {c}, m = {m}: exact {worst:e} > bound {bound:e}");
            // And not slack by orders of magnitude for the cheapest alteration (m = 2)
            // where traps are at most half the list.
            if m == 2 && c <= n / 2 && bound < 1.0 {
                assert!(worst >= bound / 8.0, "N = {n}, c = {c}, m = {m}: exact {worst:e} ≪ bound {bound:e}");
            }
        }
    }
    assert!(amplification_bound(1, 1000) >= 1.0 && amplification_bound(2, 0) >= 1.0);
    assert!((amplification_bound(2, 65_536) - 1.1229e-5).abs() < 1e-8);
}
