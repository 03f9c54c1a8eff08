//! The fused, all-core mask expansion (`prg::expand_many_into`) is bit-identical to
//! the sequential one (`prg::expand_into` per seed, in order), for both word widths,
//! every length (odd ones, ones that end inside an AES block or a 4 KiB tile), mix of
//! signs and thread count: each thread keys every seed's cipher once, seeks it to its
//! range, and applies every cipher to one tile before the next; wrapping addition
//! commutes.

use fedcrm_crypto::prg::{self, MaskSeed, Sign, Word};
use proptest::prelude::*;

fn seed(i: u64) -> MaskSeed {
    let mut b = [0u8; 32];
    for (j, w) in b.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ j as u64).to_le_bytes());
    }
    MaskSeed::from_bytes(b)
}

fn start<W: Word>(len: usize) -> Vec<W> {
    (0..len as u64).map(|j| W::from_u64(j.wrapping_mul(0xD1B5_4A32_D192_ED03) & W::WIDTH.max_word()).unwrap()).collect()
}

fn sequential<W: Word>(seeds: &[(&MaskSeed, Sign)], len: usize) -> Vec<W> {
    let mut acc = start(len);
    for (s, sign) in seeds {
        prg::expand_into(s, &mut acc, *sign);
    }
    acc
}

fn parallel<W: Word>(seeds: &[(&MaskSeed, Sign)], len: usize, threads: usize) -> Vec<W> {
    let mut acc = start(len);
    prg::expand_many_on(seeds, &mut acc, threads);
    acc
}

/// Lengths around the 4 KiB tile (512 64-bit or 1024 32-bit words), the AES block
/// (2 or 4 words), odd and tiny, and one large enough (9 seeds × 200,003 words > 2^20)
/// that `expand_many_into` itself goes parallel on a multi-core machine.
fn parallel_equals_sequential_at<W: Word>() {
    let owned: Vec<MaskSeed> = (0..9).map(seed).collect();
    let seeds: Vec<(&MaskSeed, Sign)> =
        owned.iter().enumerate().map(|(i, s)| (s, if i % 3 == 1 { Sign::Sub } else { Sign::Add })).collect();
    for len in [0, 1, 2, 3, 5, 7, 511, 512, 513, 1023, 1024, 1025, 2047, 4097, 40_001, 100_003, 200_003] {
        let want = sequential::<W>(&seeds, len);
        for threads in [1, 2, 3, 4, 7, 16] {
            assert_eq!(parallel::<W>(&seeds, len, threads), want, "{}: len {len}, {threads} threads", W::WIDTH);
        }
        let mut acc = start::<W>(len);
        prg::expand_many_into(&seeds, &mut acc);
        assert_eq!(acc, want, "{}: len {len}, all cores", W::WIDTH);
    }
}

#[test]
fn parallel_equals_sequential_32() {
    parallel_equals_sequential_at::<u32>();
}

#[test]
fn parallel_equals_sequential_64() {
    parallel_equals_sequential_at::<u64>();
}

/// Masks added and then removed in parallel cancel exactly.
#[test]
fn parallel_add_then_sub_cancels() {
    let owned: Vec<MaskSeed> = (100..104).map(seed).collect();
    let add: Vec<(&MaskSeed, Sign)> = owned.iter().map(|s| (s, Sign::Add)).collect();
    let sub: Vec<(&MaskSeed, Sign)> = owned.iter().map(|s| (s, Sign::Sub)).collect();
    let mut acc = start::<u64>(300_001);
    prg::expand_many_on(&add, &mut acc, 3);
    prg::expand_many_on(&sub, &mut acc, 2);
    assert_eq!(acc, start::<u64>(300_001));
    let mut acc = start::<u32>(300_003);
    prg::expand_many_on(&add, &mut acc, 2);
    prg::expand_many_on(&sub, &mut acc, 3);
    assert_eq!(acc, start::<u32>(300_003));
}

/// The two widths are different masks (the width is in the key), not one keystream
/// read two ways.
#[test]
fn the_widths_expand_different_keystreams() {
    let s = seed(7);
    let w32 = prg::expand::<u32>(&s, 8);
    let w64 = prg::expand::<u64>(&s, 4);
    let w64_as_32: Vec<u32> = w64.iter().flat_map(|w| [*w as u32, (*w >> 32) as u32]).collect();
    assert!(w32.iter().zip(&w64_as_32).all(|(a, b)| a != b));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn parallel_equals_sequential_prop(
        ids in proptest::collection::vec((any::<u64>(), any::<bool>()), 0..6),
        len in 0usize..70_000,
        threads in 1usize..6,
        narrow in any::<bool>(),
    ) {
        let owned: Vec<(MaskSeed, Sign)> =
            ids.iter().map(|&(i, add)| (seed(i), if add { Sign::Add } else { Sign::Sub })).collect();
        let seeds: Vec<(&MaskSeed, Sign)> = owned.iter().map(|(s, sign)| (s, *sign)).collect();
        if narrow {
            prop_assert_eq!(parallel::<u32>(&seeds, len, threads), sequential::<u32>(&seeds, len));
        } else {
            prop_assert_eq!(parallel::<u64>(&seeds, len, threads), sequential::<u64>(&seeds, len));
        }
    }
}
