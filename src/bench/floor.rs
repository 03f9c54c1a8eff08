//! The bench's floor: the work of one secure-aggregation phase, counted from the
//! protocol, done the fastest safe way we know on this machine, and timed in the same
//! run as the measured code. Never our own PRG in a loop: nothing here calls
//! `fedcrm_crypto::prg` (issue 9, "an honest floor").
//!
//! - **Mask streams**: AES-128-CTR keystreams (NIST SP 800-38A, §6.5, FIPS 197) from
//!   the RustCrypto `aes` and `ctr` crates directly, random 128-bit keys (no HKDF), added
//!   with wrapping addition into a vector of d words, **fused**: on all
//!   [`std::thread::available_parallelism`] cores, each thread owns one contiguous range
//!   of the accumulator (whole 16-byte AES blocks), keys every stream's cipher once and
//!   seeks it to the range, then walks the range in [`TILE_BYTES`] tiles, applying every
//!   stream's keystream to a tile while it sits in L1. So the accumulator crosses the
//!   memory bus once per phase instead of once per stream.
//! - **Key agreement**: X25519 (RFC 7748) through `fedcrm_crypto::keys` — the primitive
//!   itself, on the calling thread. Only the once-per-analysis key setup does any: a
//!   round of `fedcrm_crypto::multiround` derives its pair seeds from the setup's
//!   agreements (HKDF), so no per-round phase counts an X25519 agreement.
//! - **Shamir**: `fedcrm_crypto::shamir::split` of one 32-byte seed t-of-holders (a
//!   node's round self-mask seed) and `shamir::combine` on t shares — the primitives
//!   themselves, on the calling thread.
//! - **Vector additions** (the coordinator's running sum): the faster of one thread and
//!   all cores (same split), measured both ways in the same run; adding is memory-bound
//!   and starting threads per vector costs, so neither wins everywhere.
//!
//! How much of each is [`counts`]' business: one documented function of the round's
//! shape, so SecAgg+ (k neighbours instead of n − 1) reuses it.
//!
//! Generic over the word width ([`Word`]: `u32` or `u64`), so the floor can follow the
//! protocol when its words change width; the bench picks the width in one place
//! (`super::ProtocolWord`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use aes::Aes128;
use anyhow::{Result, anyhow};
use ctr::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use fedcrm_crypto::keys::{RoundPublic, RoundSecret};
use fedcrm_crypto::shamir::{self, Share};
use fedcrm_crypto::{SecureRandom, SystemRandom};
use serde::Serialize;

type Aes128Ctr = ctr::Ctr128BE<Aes128>;

/// Bytes of the accumulator one thread works on at a time: the tile and one keystream
/// buffer of the same size (8 KiB together) stay in a 32 KiB L1 data cache.
pub const TILE_BYTES: usize = 4096;

/// An AES block: a thread's range starts on one, so its seek lands on a whole counter.
const AES_BLOCK_BYTES: usize = 16;

/// The width of a mask word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Width {
    W32,
    W64,
}

impl Width {
    pub fn bits(self) -> usize {
        match self {
            Width::W32 => 32,
            Width::W64 => 64,
        }
    }

    pub fn bytes(self) -> usize {
        self.bits() / 8
    }
}

/// A mask word over Z_2^w: the keystream is read as consecutive little-endian words.
pub trait Word: Copy + Default + Send + Sync + 'static {
    const WIDTH: Width;
    /// `acc[i] = acc[i] + le(keystream[i])` (wrapping), `keystream.len() == acc.len() · bytes`.
    fn add_keystream(acc: &mut [Self], keystream: &[u8]);
    /// `acc[i] = acc[i] + v[i]` (wrapping).
    fn add(acc: &mut [Self], v: &[Self]);
    /// A word made from an index, for test inputs.
    fn from_index(i: usize) -> Self;
    /// The measured protocol's vector as words of this width (`None` if it has the other width).
    fn of(y: &fedcrm_crypto::word::Words) -> Option<&[Self]>;
}

macro_rules! word {
    ($t:ty, $w:expr, $variant:ident) => {
        impl Word for $t {
            const WIDTH: Width = $w;

            #[inline]
            fn add_keystream(acc: &mut [Self], keystream: &[u8]) {
                const B: usize = std::mem::size_of::<$t>();
                for (a, k) in acc.iter_mut().zip(keystream.chunks_exact(B)) {
                    // Unwrap safety: chunks_exact(B) yields B-byte slices.
                    *a = a.wrapping_add(<$t>::from_le_bytes(k.try_into().unwrap()));
                }
            }

            #[inline]
            fn add(acc: &mut [Self], v: &[Self]) {
                for (a, b) in acc.iter_mut().zip(v) {
                    *a = a.wrapping_add(*b);
                }
            }

            fn from_index(i: usize) -> Self {
                (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) as $t
            }

            fn of(y: &fedcrm_crypto::word::Words) -> Option<&[Self]> {
                match y {
                    fedcrm_crypto::word::Words::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
word!(u32, Width::W32, W32);
word!(u64, Width::W64, W64);

/// The shape of a round as the protocol sees it (Bonawitz et al. CCS 2017, Fig. 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Shape {
    /// |U2|: the nodes that shared their keys.
    pub n: usize,
    /// The Shamir threshold.
    pub t: usize,
    /// Each node's neighbours: n − 1 in SecAgg (the complete graph), k in SecAgg+.
    pub neighbours: usize,
    /// K = |U2 ∖ U3|: nodes that shared their keys but sent no masked input.
    pub dropped: usize,
}

/// The work of one phase, in the protocol's own units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Keystreams of d words added into one vector (self and pairwise masks).
    pub streams: usize,
    /// X25519 agreements (variable base).
    pub x25519: usize,
    /// X25519 key pairs made (one fixed-base multiplication each): a node's two at
    /// key setup.
    pub key_pairs: usize,
    /// Shamir splits of a 32-byte seed t-of-holders (a node's round self-mask seed).
    pub splits: usize,
    /// Shamir reconstructions from t shares.
    pub reconstructions: usize,
    /// d-word vectors added into the running sum.
    pub vectors_added: usize,
    /// d-word vectors copied (the node's input into its masked output).
    pub copies: usize,
}

impl Counts {
    /// The counts for the table's detail column.
    pub fn describe(&self) -> String {
        let mut parts = if self.streams > 0 { vec![format!("{} streams", self.streams)] } else { Vec::new() };
        for (k, what) in [
            (self.copies, "copy"),
            (self.vectors_added, "adds"),
            (self.x25519, "X25519"),
            (self.key_pairs, "key pairs"),
            (self.splits, "Shamir split"),
            (self.reconstructions, "Shamir recons"),
        ] {
            if k > 0 {
                parts.push(format!("{k} {what}"));
            }
        }
        parts.join(", ")
    }
}

/// The counts of the measured phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PhaseCounts {
    /// Once per analysis, not per round.
    pub key_setup: Counts,
    pub masking: Counts,
    pub coordinator_no_dropouts: Counts,
    pub coordinator_dropped: Counts,
}

/// The operations each phase must do in `fedcrm_crypto::multiround` (key agreement
/// once per analysis; the steps of Bonawitz et al. CCS 2017, Fig. 4, changed as its
/// module doc says):
///
/// - **key setup, one node** (once per analysis, not per round): two X25519 key pairs
///   (`Setup::new`) and, with each neighbour, two agreements (`Setup::join`: `c_uv`
///   for sealing shares, `s_uv` for masks) = 2 · neighbours X25519.
/// - **masking, one node** (every round): one Shamir split of the fresh self-mask seed
///   b_r (`Member::round`); the copy of the input into the output and 1 self mask + one
///   pairwise mask per neighbour = 1 + neighbours streams (`RoundReady::mask`), the
///   round's pair seeds HKDF-derived from the setup's agreements: **no X25519**.
/// - **coordinator, no dropouts**: |U3| = n masked vectors added; |U3| self-mask seeds
///   b_r reconstructed and their |U3| streams removed.
/// - **coordinator, K dropped**: |U3| = n − K vectors added; |U3| self masks plus, for
///   every dropped node, one pairwise stream per surviving neighbour, expanded from the
///   round pair seed that neighbour revealed (no X25519, no key reconstructed); |U3|
///   reconstructions (the survivors' b_r only).
///
/// Surviving neighbours of a dropped node: n − K on the complete graph (its other K − 1
/// neighbours dropped too); with k < n − 1 neighbours (SecAgg+), min(k, n − K), i.e. the
/// dropped nodes are taken to be spread out so that no two are neighbours, as the bench
/// (and Flower's script) spreads them. (The bench replaces this with the count on its
/// graph.)
pub fn counts(shape: Shape) -> PhaseCounts {
    let Shape { n, neighbours, dropped: k, .. } = shape;
    let u3 = n - k;
    let surviving_neighbours = if neighbours + 1 >= n { u3 } else { neighbours.min(u3) };
    let pairwise = k * surviving_neighbours;
    PhaseCounts {
        key_setup: Counts { x25519: 2 * neighbours, key_pairs: 2, ..Counts::default() },
        masking: Counts { streams: 1 + neighbours, splits: 1, copies: 1, ..Counts::default() },
        coordinator_no_dropouts: Counts { streams: n, reconstructions: n, vectors_added: n, ..Counts::default() },
        coordinator_dropped: Counts {
            streams: u3 + pairwise,
            reconstructions: u3,
            vectors_added: u3,
            ..Counts::default()
        },
    }
}

/// The floor's time for one phase, by kind of work.
#[derive(Debug, Clone, Copy, Default)]
pub struct FloorTimes {
    /// Fused keystream expansion and addition (with the masking floor's copy of the input).
    pub streams: Duration,
    /// X25519 agreements and key pairs.
    pub x25519: Duration,
    /// Shamir splits and reconstructions.
    pub shamir: Duration,
}

impl FloorTimes {
    pub fn total(&self) -> Duration {
        self.streams + self.x25519 + self.shamir
    }

    /// The mean of two measurements.
    pub fn mean(a: Self, b: Self) -> Self {
        Self {
            streams: (a.streams + b.streams) / 2,
            x25519: (a.x25519 + b.x25519) / 2,
            shamir: (a.shamir + b.shamir) / 2,
        }
    }
}

/// Everything the floor works on, allocated and touched once (never inside a timed
/// region), with pools of keys, peers and shares large enough for the largest phase.
pub struct Floor<W: Word> {
    threads: usize,
    t: usize,
    /// How many hold shares of one node's seed: n in full SecAgg (itself included), its
    /// k neighbours in SecAgg+.
    holders: usize,
    rng: SystemRandom,
    /// The seed the masking floor splits.
    seed: [u8; 32],
    /// A node's input (masking floor).
    input: Vec<W>,
    /// The masking floor's output.
    out: Vec<W>,
    /// The coordinator floor's running sum.
    sum: Vec<W>,
    keys: Vec<[u8; 16]>,
    secret: RoundSecret,
    peers: Vec<RoundPublic>,
    shares: Vec<Vec<Share>>,
}

impl<W: Word> std::fmt::Debug for Floor<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Floor")
            .field("width", &W::WIDTH)
            .field("d", &self.sum.len())
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

/// The number of threads the floor uses: the machine's available parallelism.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl<W: Word> Floor<W> {
    /// A floor for vectors of `d` words and rounds of `shape`, on every core.
    pub fn new(d: usize, shape: Shape, rng: &dyn SecureRandom) -> Result<Self> {
        let c = counts(shape);
        let all = [c.key_setup, c.masking, c.coordinator_no_dropouts, c.coordinator_dropped];
        let most = |f: fn(&Counts) -> usize| all.iter().map(f).max().unwrap_or(0).max(1);
        let fill = |b: &mut [u8]| rng.fill(b).map_err(|_| anyhow!("system random number generator failed"));
        let mut keys = vec![[0u8; 16]; most(|c| c.streams)];
        for k in &mut keys {
            fill(k)?;
        }
        let secret = RoundSecret::generate(rng)?;
        let peers = (0..most(|c| c.x25519)).map(|_| Ok(RoundSecret::generate(rng)?.public())).collect::<Result<_>>()?;
        let shares = (0..most(|c| c.reconstructions))
            .map(|_| {
                let mut s = [0u8; 32];
                fill(&mut s)?;
                Ok(shamir::split(&s, shape.t, shape.n, rng)?)
            })
            .collect::<Result<_>>()?;
        let input = (0..d).map(W::from_index).collect();
        let mut seed = [0u8; 32];
        fill(&mut seed)?;
        let holders = if shape.neighbours + 1 >= shape.n { shape.n } else { shape.neighbours };
        Ok(Self {
            threads: threads(),
            t: shape.t,
            holders,
            rng: SystemRandom::new(),
            seed,
            input,
            out: vec![W::from_index(1); d],
            sum: vec![W::from_index(2); d],
            keys,
            secret,
            peers,
            shares,
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// One node's key setup (once per analysis): its key pairs and agreements.
    pub fn key_setup(&self, c: &Counts) -> FloorTimes {
        FloorTimes { x25519: self.agreements(c), ..FloorTimes::default() }
    }

    /// One node's round: the split of its self-mask seed, then the input copied into
    /// the output and every stream added to it in one fused pass (plus any agreements
    /// the counts name: none in `multiround`).
    pub fn masking(&mut self, c: &Counts) -> Result<FloorTimes> {
        let (split, shamir) = timed(|| {
            (0..c.splits).try_for_each(|_| {
                black_box(shamir::split(&self.seed, self.t, self.holders, &self.rng)?);
                Ok::<_, fedcrm_crypto::CryptoError>(())
            })
        });
        split?;
        let keys = pool(&self.keys, c.streams);
        let src = (c.copies > 0).then_some(self.input.as_slice());
        let ((), streams) = timed(|| fused(&keys, src, &mut self.out, self.threads));
        black_box(&self.out);
        Ok(FloorTimes { streams, x25519: self.agreements(c), shamir })
    }

    /// The coordinator's unmasking after the adds: reconstructions (and any agreements
    /// the counts name: none in `multiround`), and every stream removed from the running
    /// sum in one fused pass.
    pub fn unmasking(&mut self, c: &Counts) -> FloorTimes {
        let sets = pool(&self.shares, c.reconstructions);
        let ((), shamir) = timed(|| {
            for set in &sets {
                // Unwrap safety: each set holds n ≥ t shares with distinct x, made by split.
                black_box(shamir::combine(set, self.t).unwrap());
            }
        });
        let x25519 = self.agreements(c);
        let keys = pool(&self.keys, c.streams);
        let ((), streams) = timed(|| fused(&keys, None, &mut self.sum, self.threads));
        black_box(&self.sum);
        FloorTimes { streams, x25519, shamir }
    }

    /// One masked vector added into the running sum on the calling thread, then again on
    /// every core: (one thread, all cores). Memory-bound, so which is faster depends on
    /// the machine and its load; the bench keeps the faster total of the phase.
    pub fn add(&mut self, v: &[W]) -> (Duration, Duration) {
        let ((), one) = timed(|| W::add(&mut self.sum, v));
        black_box(&self.sum);
        let ((), all) = timed(|| add_parallel(&mut self.sum, v, self.threads));
        black_box(&self.sum);
        (one, all)
    }

    /// A fresh running sum: d zeroed words allocated and every page touched once, as
    /// the coordinator's sum is before its first add.
    pub fn fresh_sum(&self) -> Duration {
        let d = self.sum.len();
        let ((), t) = timed(|| {
            let mut fresh = vec![W::default(); d];
            let page = 4096 / W::WIDTH.bytes();
            for w in fresh.iter_mut().step_by(page) {
                *w = W::from_index(1);
            }
            black_box(&fresh);
        });
        t
    }

    fn agreements(&self, c: &Counts) -> Duration {
        if c.x25519 == 0 && c.key_pairs == 0 {
            // No work: a round of `multiround` makes no agreement.
            return Duration::ZERO;
        }
        let peers = pool(&self.peers, c.x25519);
        let ((), t) = timed(|| {
            for peer in &peers {
                // X25519 of random keys is never the zero point; either way it is timed.
                let _ = black_box(self.secret.agree(peer));
            }
            for _ in 0..c.key_pairs {
                black_box(self.secret.public());
            }
        });
        t
    }
}

/// `count` items, cycling through the pool (built before any timed region).
fn pool<T: Clone>(items: &[T], count: usize) -> Vec<T> {
    items.iter().cycle().take(count).cloned().collect()
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t0 = Instant::now();
    let out = f();
    (out, t0.elapsed())
}

/// Words per thread: the accumulator split into `threads` ranges of whole AES blocks.
fn range_words<W: Word>(len: usize, threads: usize) -> usize {
    let per_block = AES_BLOCK_BYTES / W::WIDTH.bytes();
    let blocks = len.div_ceil(per_block).max(1);
    blocks.div_ceil(threads.clamp(1, blocks)) * per_block
}

/// `acc[i] = (src[i] or acc[i]) + Σ_key AES-128-CTR(key)[i]` (wrapping, little-endian
/// words, counter block starting at zero), on `threads` threads: each owns one range of
/// `acc` and the last range runs on the calling thread.
pub fn fused<W: Word>(keys: &[[u8; 16]], src: Option<&[W]>, acc: &mut [W], threads: usize) {
    if let Some(src) = src {
        assert_eq!(src.len(), acc.len(), "the floor's input and output differ in length");
    }
    let range = range_words::<W>(acc.len(), threads);
    let parts = acc.len().div_ceil(range);
    std::thread::scope(|scope| {
        for (i, part) in acc.chunks_mut(range).enumerate() {
            let start = i * range;
            let src = src.map(|s| &s[start..start + part.len()]);
            let offset = (start * W::WIDTH.bytes()) as u64;
            if i + 1 == parts {
                fused_range(keys, src, part, offset);
            } else {
                scope.spawn(move || fused_range(keys, src, part, offset));
            }
        }
    });
}

/// One thread's range: every cipher keyed once and sought to `offset`, then each tile
/// receives every stream's keystream while it is in L1.
fn fused_range<W: Word>(keys: &[[u8; 16]], src: Option<&[W]>, part: &mut [W], offset: u64) {
    let mut ciphers: Vec<Aes128Ctr> = keys
        .iter()
        .map(|k| {
            let mut c = Aes128Ctr::new(&(*k).into(), &[0u8; 16].into());
            // NIST SP 800-38A, §6.5: block j of the keystream is AES_K(counter j).
            c.seek(offset);
            c
        })
        .collect();
    let mut keystream = [0u8; TILE_BYTES];
    let tile_words = TILE_BYTES / W::WIDTH.bytes();
    for (j, tile) in part.chunks_mut(tile_words).enumerate() {
        if let Some(src) = src {
            tile.copy_from_slice(&src[j * tile_words..j * tile_words + tile.len()]);
        }
        let bytes = &mut keystream[..tile.len() * W::WIDTH.bytes()];
        for c in &mut ciphers {
            c.write_keystream(bytes);
            W::add_keystream(tile, bytes);
        }
    }
}

/// `acc += v` (wrapping) on `threads` threads, the same split as [`fused`].
pub fn add_parallel<W: Word>(acc: &mut [W], v: &[W], threads: usize) {
    assert_eq!(acc.len(), v.len(), "adding vectors of different lengths");
    let range = range_words::<W>(acc.len(), threads);
    let parts = acc.len().div_ceil(range);
    std::thread::scope(|scope| {
        for (i, (a, b)) in acc.chunks_mut(range).zip(v.chunks(range)).enumerate() {
            if i + 1 == parts {
                W::add(a, b);
            } else {
                scope.spawn(move || W::add(a, b));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: each stream's whole keystream, one after the other, from offset 0.
    fn sequential<W: Word>(keys: &[[u8; 16]], src: &[W]) -> Vec<W> {
        let mut acc = src.to_vec();
        for k in keys {
            let mut ks = vec![0u8; acc.len() * W::WIDTH.bytes()];
            Aes128Ctr::new(&(*k).into(), &[0u8; 16].into()).write_keystream(&mut ks);
            W::add_keystream(&mut acc, &ks);
        }
        acc
    }

    fn fused_equals_sequential<W: Word + PartialEq + std::fmt::Debug>() {
        let keys: Vec<[u8; 16]> = (0..5u8).map(|i| [i.wrapping_mul(37); 16]).collect();
        // Lengths around tiles and AES blocks, split over 1 to 3 threads.
        for len in [0, 1, 3, 5, TILE_BYTES / W::WIDTH.bytes() + 3, 3 * TILE_BYTES / W::WIDTH.bytes() + 1, 10_001] {
            let src: Vec<W> = (0..len).map(W::from_index).collect();
            let want = sequential(&keys, &src);
            for threads in 1..=3 {
                let mut acc = vec![W::default(); len];
                fused(&keys, Some(&src), &mut acc, threads);
                assert_eq!(acc, want, "{:?}, len {len}, {threads} threads", W::WIDTH);
                let mut acc = src.clone();
                fused(&keys, None, &mut acc, threads);
                assert_eq!(acc, want, "in place: {:?}, len {len}, {threads} threads", W::WIDTH);
                let mut sum = src.clone();
                add_parallel(&mut sum, &src, threads);
                let mut twice = src.clone();
                W::add(&mut twice, &src);
                assert_eq!(sum, twice);
            }
        }
    }

    #[test]
    fn fused_expansion_equals_each_stream_in_turn_u64() {
        fused_equals_sequential::<u64>();
    }

    #[test]
    fn fused_expansion_equals_each_stream_in_turn_u32() {
        fused_equals_sequential::<u32>();
    }

    #[test]
    fn counts_follow_the_protocol() {
        // SecAgg, n = 50, 5 dropped: 45 self masks + 5 × 45 pairwise, from revealed pair
        // seeds: no X25519 and no key reconstructed in any round.
        let c = counts(Shape { n: 50, t: 34, neighbours: 49, dropped: 5 });
        assert_eq!((c.key_setup.x25519, c.key_setup.key_pairs, c.key_setup.streams), (98, 2, 0));
        let m = c.masking;
        assert_eq!((m.streams, m.x25519, m.splits, m.copies, m.reconstructions), (50, 0, 1, 1, 0));
        let none = c.coordinator_no_dropouts;
        assert_eq!((none.streams, none.reconstructions, none.vectors_added, none.x25519), (50, 50, 50, 0));
        let k = c.coordinator_dropped;
        assert_eq!((k.streams, k.x25519, k.reconstructions, k.vectors_added, k.key_pairs), (270, 0, 45, 45, 0));
        // SecAgg+, k = 6 neighbours, dropped nodes spread out: 45 + 5 × 6 streams.
        let c = counts(Shape { n: 50, t: 5, neighbours: 6, dropped: 5 });
        assert_eq!((c.key_setup.x25519, c.masking.streams, c.masking.x25519), (12, 7, 0));
        assert_eq!((c.coordinator_dropped.streams, c.coordinator_dropped.x25519), (75, 0));
        assert_eq!(c.masking.describe(), "7 streams, 1 copy, 1 Shamir split");
        assert_eq!(c.key_setup.describe(), "12 X25519, 2 key pairs");
    }

    #[test]
    fn floor_runs_every_phase_in_both_widths() {
        let rng = SystemRandom::new();
        let shape = Shape { n: 6, t: 4, neighbours: 5, dropped: 1 };
        let c = counts(shape);
        let mut f = Floor::<u32>::new(100, shape, &rng).unwrap();
        f.masking(&c.masking).unwrap();
        assert_eq!(f.key_setup(&c.key_setup).streams, Duration::ZERO);
        f.unmasking(&c.coordinator_dropped);
        let mut g = Floor::<u64>::new(100, shape, &rng).unwrap();
        g.add(&[7u64; 100]);
        g.fresh_sum();
        g.unmasking(&c.coordinator_no_dropouts);
        assert!(format!("{g:?}").contains("W64"));
    }
}
