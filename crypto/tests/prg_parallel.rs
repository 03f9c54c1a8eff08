//! The parallel mask expansion (`prg::expand_many_into`) is bit-identical to the
//! sequential one (`prg::expand_into` per seed, in order), for every length, mix of
//! signs and thread count: each thread seeks each seed's CTR stream to its range, and
//! wrapping addition commutes.

use fedcrm_crypto::prg::{self, MaskSeed, Sign};
use proptest::prelude::*;

fn seed(i: u64) -> MaskSeed {
    let mut b = [0u8; 32];
    for (j, w) in b.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ j as u64).to_le_bytes());
    }
    MaskSeed::from_bytes(b)
}

fn start(len: usize) -> Vec<u64> {
    (0..len as u64).map(|j| j.wrapping_mul(0xD1B5_4A32_D192_ED03)).collect()
}

fn sequential(seeds: &[(&MaskSeed, Sign)], len: usize) -> Vec<u64> {
    let mut acc = start(len);
    for (s, sign) in seeds {
        prg::expand_into(s, &mut acc, *sign);
    }
    acc
}

fn parallel(seeds: &[(&MaskSeed, Sign)], len: usize, threads: usize) -> Vec<u64> {
    let mut acc = start(len);
    prg::expand_many_on(seeds, &mut acc, threads);
    acc
}

/// Lengths around the 4 KiB block (512 words), the AES block (2 words), odd and tiny,
/// and one large enough (9 seeds × 200,003 words > 2^20) that `expand_many_into` itself
/// goes parallel on a multi-core machine.
#[test]
fn parallel_equals_sequential() {
    let owned: Vec<MaskSeed> = (0..9).map(seed).collect();
    let seeds: Vec<(&MaskSeed, Sign)> =
        owned.iter().enumerate().map(|(i, s)| (s, if i % 3 == 1 { Sign::Sub } else { Sign::Add })).collect();
    for len in [0, 1, 2, 3, 5, 511, 512, 513, 1023, 1025, 4097, 40_001, 100_003, 200_003] {
        let want = sequential(&seeds, len);
        for threads in [1, 2, 3, 4, 7, 16] {
            assert_eq!(parallel(&seeds, len, threads), want, "len {len}, {threads} threads");
        }
        let mut acc = start(len);
        prg::expand_many_into(&seeds, &mut acc);
        assert_eq!(acc, want, "len {len}, all cores");
    }
}

/// Masks added and then removed in parallel cancel exactly.
#[test]
fn parallel_add_then_sub_cancels() {
    let owned: Vec<MaskSeed> = (100..104).map(seed).collect();
    let add: Vec<(&MaskSeed, Sign)> = owned.iter().map(|s| (s, Sign::Add)).collect();
    let sub: Vec<(&MaskSeed, Sign)> = owned.iter().map(|s| (s, Sign::Sub)).collect();
    let mut acc = start(300_001);
    prg::expand_many_on(&add, &mut acc, 3);
    prg::expand_many_on(&sub, &mut acc, 2);
    assert_eq!(acc, start(300_001));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn parallel_equals_sequential_prop(
        ids in proptest::collection::vec((any::<u64>(), any::<bool>()), 0..6),
        len in 0usize..70_000,
        threads in 1usize..6,
    ) {
        let owned: Vec<(MaskSeed, Sign)> =
            ids.iter().map(|&(i, add)| (seed(i), if add { Sign::Add } else { Sign::Sub })).collect();
        let seeds: Vec<(&MaskSeed, Sign)> = owned.iter().map(|(s, sign)| (s, *sign)).collect();
        prop_assert_eq!(parallel(&seeds, len, threads), sequential(&seeds, len));
    }
}
