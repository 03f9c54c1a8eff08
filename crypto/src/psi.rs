//! The pure building blocks of ECDH-PSI cardinality over ristretto255 (issue 12):
//! hashing an identifier to the group, a run's secret blinding key, blinding and
//! re-blinding batches of points, padding a list to a bucketed size and shuffling it,
//! and counting the intersection of two doubly-blinded lists.
//!
//! Never does I/O, reads a clock or talks to a peer: which list goes where, signed and
//! encrypted by whom, is the protocol's business (the node and the coordinator).
//! Randomness comes in as a `&dyn SecureRandom`; batches run on rayon's pool.
//!
//! Spec: the Diffie–Hellman PSI of Meadows (1986) and Huberman–Franklin–Hogg (1999), in
//! its cardinality form as deployed by Ion et al. ("On Deploying Secure Computing:
//! Private Intersection-Sum-with-Cardinality", EuroS&P 2020; their DDH-based protocol
//! without the sums): party A sends {a·H(x)}, B returns {b·a·H(x)} shuffled and sends {b·H(y)}, A computes
//! {a·b·H(y)} and counts the common points. Secure against semi-honest parties under DDH
//! in the random-oracle model for H. The group is ristretto255 (RFC 9496), H is SHA-512
//! into its one-way map (RFC 9496, §4.3.4, `RistrettoPoint::from_uniform_bytes`), over
//! an encoding bound to the protocol version and the run ([`Domain`]).
//!
//! Encoded points are `[u8; 32]` throughout: what a peer sends is bytes until
//! [`reblind`] has checked it, and a `CompressedRistretto` would promise nothing more.
//!
//! **Batch compression.** Encoding a point costs an inverse square root; curve25519-dalek's
//! `RistrettoPoint::double_and_compress_batch` encodes 2·P₁ … 2·Pₙ with one batched
//! inversion instead. We multiply by k/2 (a scalar computed once per batch) and let it
//! double, so the output is exactly enc(k·P) (`tests::batch_compression_equals_compress`).
//! Measured with `cargo run -p fedcrm-crypto --example psi_compress --release`
//! (one thread, 100,000 points, 2-core shared AMD EPYC with AVX2, 2026-11-30, two runs
//! beside another build, load average 4), per point:
//!
//! | step | µs |
//! |---|---|
//! | hash to group | 16.0–17.9 |
//! | scalar multiplication | 52.3–55.5 |
//! | encode one by one (`compress`) | 7.7–8.0 |
//! | encode in batches of 16 | 1.1–1.2 |
//! | encode in batches of 256, 1,024 or 4,096 | 0.73–0.93 |
//! | decode (`decompress`) | 6.1 |
//!
//! Batching makes encoding ten times cheaper, about 7 µs of the 75–80 µs a point costs
//! `blind` or `reblind` (9 %), at no cost in clarity; so it is used. Decoding has no
//! batched form (each point needs its own square root), so `reblind` decodes one by one.
//! Each rayon task takes [`CHUNK`] = 1,024 points (past the batch's gain, and few enough
//! tasks' worth of memory at a time). rayon here, where `prg` splits one vector over
//! `std::thread::scope`: a list is a thousand independent chunks, and work stealing
//! keeps both ends' cores busy whatever else the machine runs.

use std::collections::HashSet;

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoBasepointTable, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use rayon::prelude::*;
use ring::digest;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::SecureRandom;

/// The label that opens every hashed identifier's encoding.
pub const LABEL: &[u8] = b"fedcrm-psi";

/// The PSI protocol's version, bound into [`hash_to_group`] through [`Domain`].
pub const VERSION: u32 = 1;

/// Points per rayon task and per batched compression (see the module doc).
pub const CHUNK: usize = 1024;

/// The smallest padded list: every list is padded to at least this many points.
pub const MIN_BUCKET: usize = 256;

/// The largest list [`pad_and_shuffle`] pads (2³⁰ points, 32 GiB encoded): far beyond
/// any channel's customers, and on the bucket ladder itself.
pub const MAX_LIST: usize = 1 << 30;

/// Errors of the PSI building blocks. Messages never contain secret bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PsiError {
    #[error("system random number generator failed")]
    Random,
    #[error("point {index}: not a canonical ristretto255 encoding")]
    NonCanonical { index: usize },
    #[error("point {index}: the identity element, which no blinded identifier is")]
    Identity { index: usize },
    #[error("list of {len} points is longer than the largest padded list ({max})")]
    TooLong { len: usize, max: usize },
    #[error("bucket of {bucket} points is smaller than the list's {len}")]
    BucketTooSmall { len: usize, bucket: usize },
}

/// What every hashed identifier of one PSI run is bound to: the protocol version and
/// the run's 128-bit id, so that points from one run (or version) mean nothing in
/// another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Domain {
    /// The PSI protocol's version ([`VERSION`] for this code).
    pub version: u32,
    /// The run's id, chosen at random when the run is set up.
    pub run_id: [u8; 16],
}

/// H(x): SHA-512 over `len(LABEL) ‖ LABEL ‖ version ‖ run_id ‖ len(id) ‖ id` (lengths
/// and version as big-endian u64 and u32, the run id as its 16 bytes), then RFC 9496's
/// one-way map from 64 uniform bytes to ristretto255 (§4.3.4). `id` is the normalised
/// identifier's bytes (for example `+8613800138000`).
///
/// The length prefixes make the encoding injective, so no (domain, id) pair hashes the
/// same input as another.
pub fn hash_to_group(domain: &Domain, id: &[u8]) -> RistrettoPoint {
    let mut h = digest::Context::new(&digest::SHA512);
    h.update(&(LABEL.len() as u64).to_be_bytes());
    h.update(LABEL);
    h.update(&domain.version.to_be_bytes());
    h.update(&domain.run_id);
    h.update(&(id.len() as u64).to_be_bytes());
    h.update(id);
    let d = h.finish();
    let mut wide = [0u8; 64];
    wide.copy_from_slice(d.as_ref());
    RistrettoPoint::from_uniform_bytes(&wide)
}

/// A node's secret scalar for one PSI run: random, never zero, zeroized on drop, used
/// for that run's [`Domain`] only. Not `Clone`, not serializable; `Debug` prints
/// `BlindingKey(..)`.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct BlindingKey {
    scalar: Scalar,
    #[zeroize(skip)]
    domain: Domain,
}

impl std::fmt::Debug for BlindingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlindingKey(..)")
    }
}

impl BlindingKey {
    /// A fresh key for `domain`: 64 random bytes reduced mod ℓ (bias below 2⁻²⁵⁰).
    /// Zero (probability 2⁻²⁵²) is drawn again; a generator that keeps giving zero is
    /// broken and refused.
    pub fn generate(domain: Domain, rng: &dyn SecureRandom) -> Result<Self, PsiError> {
        for _ in 0..4 {
            let mut wide = [0u8; 64];
            rng.fill(&mut wide).map_err(|_| PsiError::Random)?;
            let scalar = Scalar::from_bytes_mod_order_wide(&wide);
            wide.zeroize();
            if scalar != Scalar::ZERO {
                return Ok(Self { scalar, domain });
            }
        }
        Err(PsiError::Random)
    }

    /// The run this key blinds for.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// K = k·B (B the ristretto255 basepoint): the key's public commitment. A responder
    /// publishes it in its signed run key before any list moves, so the comparer can
    /// check that the answer applied exactly this key to every point of its list
    /// ([`Traps`]).
    pub fn public(&self) -> [u8; 32] {
        RistrettoPoint::mul_base(&self.scalar).compress().to_bytes()
    }

    /// k/2 mod ℓ, which `double_and_compress_batch` doubles back to k.
    fn half(&self) -> Scalar {
        self.scalar.div_by_2()
    }
}

/// Encodes k·P for each point: multiplies by k/2 and lets the batch double and encode
/// (an identity among them encodes as zeros without disturbing the others: the batched
/// inversion leaves a zero as it is).
fn multiply_and_compress(half: &Scalar, points: &[RistrettoPoint]) -> Vec<[u8; 32]> {
    let halved: Vec<RistrettoPoint> = points.iter().map(|p| p * half).collect();
    RistrettoPoint::double_and_compress_batch(&halved).into_iter().map(|c| c.to_bytes()).collect()
}

/// Ion et al. 2020 (DDH-based protocol), round 1 and the second half of round 2:
/// {k·H(x)} for the normalised identifiers `ids`, in their order, on all cores. The
/// caller pads and shuffles before anything leaves ([`pad_and_shuffle`]).
pub fn blind<T: AsRef<[u8]> + Sync>(key: &BlindingKey, ids: &[T]) -> Vec<[u8; 32]> {
    let half = key.half();
    let domain = key.domain;
    ids.par_chunks(CHUNK)
        .flat_map_iter(|chunk| {
            let points: Vec<RistrettoPoint> = chunk.iter().map(|id| hash_to_group(&domain, id.as_ref())).collect();
            multiply_and_compress(&half, &points)
        })
        .collect()
}

/// Ion et al. 2020 (DDH-based protocol), round 2: {k·P} for a peer's encoded points, in
/// their order, on all cores. Refuses, naming the first bad index, an encoding that is
/// not canonical or is the identity (which would cancel any key). The caller shuffles
/// the result before returning it ([`shuffle`]).
pub fn reblind(key: &BlindingKey, points: &[[u8; 32]]) -> Result<Vec<[u8; 32]>, PsiError> {
    let half = key.half();
    let chunks: Vec<Result<Vec<[u8; 32]>, PsiError>> = points
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(c, chunk)| {
            let decoded = chunk
                .iter()
                .enumerate()
                .map(|(i, bytes)| {
                    let index = c * CHUNK + i;
                    let p = CompressedRistretto(*bytes).decompress().ok_or(PsiError::NonCanonical { index })?;
                    if p.is_identity() {
                        return Err(PsiError::Identity { index });
                    }
                    Ok(p)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(multiply_and_compress(&half, &decoded))
        })
        .collect();
    // In order, so the error names the lowest bad index whatever the scheduling.
    let mut out = Vec::with_capacity(points.len());
    for chunk in chunks {
        out.extend(chunk?);
    }
    Ok(out)
}

/// The padded size of a list of `n` points: the smallest size on the geometric ladder
/// s_j ≈ 256 · 2^(j/4), j = 0, 1, 2, … that is at least `n`. A list of at most 256
/// points becomes 256; a longer one grows by a factor below 2^(1/4) ≈ 1.1892 plus two
/// points (`bucket(n) < 1.1893·n + 2`, `tests::bucket_overhead_is_bounded`), so padding
/// costs under 19 %, and a list's padded length tells a peer only which of four sizes per
/// doubling it falls in.
///
/// The ladder is integers only, s_j = ⌈256 · 2^q · c_r / 2³²⌉ for j = 4q + r with
/// c_r = ⌈2^(r/4) · 2³²⌉ (within one point of ⌈256 · 2^(j/4)⌉ up to [`MAX_LIST`]), so
/// every machine computes the same sizes. Defined for `n ≤ MAX_LIST`; above it returns
/// `n`, which [`pad_and_shuffle`] refuses.
pub fn bucket(n: usize) -> usize {
    // ⌈2^(r/4) · 2^32⌉ for r = 0..4.
    const FRAC: [u128; 4] = [1 << 32, 5_107_605_668, 6_074_001_000, 7_223_245_206];
    if n > MAX_LIST {
        return n;
    }
    let mut j = 0u32;
    loop {
        let (q, r) = (j / 4, (j % 4) as usize);
        let size = ((MIN_BUCKET as u128) << q) * FRAC[r];
        let size = size.div_ceil(1 << 32) as usize;
        if size >= n {
            return size;
        }
        j += 1;
    }
}

/// Pads `points` with random group elements up to `bucket_of(points.len())` and shuffles
/// the whole list uniformly ([`shuffle`]), so a peer learns neither the list's exact
/// length nor which points are padding: a padding point is the one-way map of 64
/// uniform bytes, uniform in the group, as a blinded identifier k·H(x) is (under DDH,
/// H a random oracle).
///
/// A padding point collides with a point of the other list with probability at most
/// |A|·|B|/ℓ, ℓ ≈ 2²⁵², per pair of lists (below 2⁻²¹⁰ for two lists of 2²¹): padding
/// never changes [`intersection_count`] except with negligible probability.
pub fn pad_and_shuffle(
    points: Vec<[u8; 32]>,
    bucket_of: fn(usize) -> usize,
    rng: &dyn SecureRandom,
) -> Result<Vec<[u8; 32]>, PsiError> {
    let len = points.len();
    if len > MAX_LIST {
        return Err(PsiError::TooLong { len, max: MAX_LIST });
    }
    pad_to(points, bucket_of(len), rng)
}

/// [`pad_and_shuffle`] to a given length `target` (at least the list's): the segment
/// groups of one list are all padded to the whole list's bucket, so their lengths tell
/// nothing of the segments' sizes.
pub fn pad_to(mut points: Vec<[u8; 32]>, target: usize, rng: &dyn SecureRandom) -> Result<Vec<[u8; 32]>, PsiError> {
    let len = points.len();
    if len > MAX_LIST || target > MAX_LIST {
        return Err(PsiError::TooLong { len: len.max(target), max: MAX_LIST });
    }
    if target < len {
        return Err(PsiError::BucketTooSmall { len, bucket: target });
    }
    let mut seeds = vec![0u8; 64 * (target - len)];
    rng.fill(&mut seeds).map_err(|_| PsiError::Random)?;
    // Doubling is a bijection of the prime-order group, so 2·R is as uniform as R: the
    // batch encodes it without a halving multiplication.
    points.par_extend(seeds.par_chunks(64 * CHUNK).flat_map_iter(|chunk| {
        let random: Vec<RistrettoPoint> = chunk
            .chunks_exact(64)
            // Unwrap safety: `chunks_exact(64)` yields 64-byte slices.
            .map(|s| RistrettoPoint::from_uniform_bytes(s.try_into().unwrap()))
            .collect();
        RistrettoPoint::double_and_compress_batch(&random).into_iter().map(|c| c.to_bytes())
    }));
    // Whoever held the seeds could tell the padding apart.
    seeds.zeroize();
    shuffle(&mut points, rng)?;
    Ok(points)
}

/// Shuffles `points` uniformly: Fisher–Yates (Knuth, TAOCP vol. 2, §3.4.2, Algorithm P)
/// with each index drawn by rejection sampling from 64-bit words of `rng`, so no index is
/// favoured by a modulo bias.
pub fn shuffle(points: &mut [[u8; 32]], rng: &dyn SecureRandom) -> Result<(), PsiError> {
    let mut words = Words::new(rng);
    for i in (1..points.len()).rev() {
        let j = words.below(i as u64 + 1)? as usize;
        points.swap(i, j);
    }
    Ok(())
}

/// Random u64 words read from a generator a buffer at a time (one system call per
/// 512 words rather than per word). The buffer, which determined the permutation, is
/// zeroized on drop.
struct Words<'a> {
    rng: &'a dyn SecureRandom,
    buf: [u8; 4096],
    at: usize,
}

impl Drop for Words<'_> {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

impl<'a> Words<'a> {
    fn new(rng: &'a dyn SecureRandom) -> Self {
        Self { rng, buf: [0; 4096], at: 4096 }
    }

    fn next(&mut self) -> Result<u64, PsiError> {
        if self.at == self.buf.len() {
            self.rng.fill(&mut self.buf).map_err(|_| PsiError::Random)?;
            self.at = 0;
        }
        let mut w = [0u8; 8];
        w.copy_from_slice(&self.buf[self.at..self.at + 8]);
        self.at += 8;
        Ok(u64::from_le_bytes(w))
    }

    /// Uniform in `0..n` (n ≥ 1): accept a word below the largest multiple of n that
    /// fits in 2⁶⁴, then reduce.
    fn below(&mut self, n: u64) -> Result<u64, PsiError> {
        // 2⁶⁴ mod n, computed without 2⁶⁴.
        let rejected = (u64::MAX - n + 1) % n;
        loop {
            let w = self.next()?;
            if w <= u64::MAX - rejected {
                return Ok(w % n);
            }
        }
    }
}

/// A comparer's trap points (attack review of issue 12, F1): r·B for secret random
/// scalars r, uniform in the group as blinded identifiers are, mixed into its list as
/// its padding. A responder that applied its committed key K to every point returns
/// r·K for each; one that deviates on d of the list's N points (to count a target more
/// than once, or to leave out a customer) cannot tell traps from identifiers, so it
/// misses none of the c traps with probability at most (1 − c/N)^d. The scalars are
/// zeroized on drop.
///
/// **What a cheating responder can gain** ([`amplification_bound`]). To count one
/// customer m ≥ 2 times, the answer must hold m − 1 points besides that customer's
/// honest one that are copies of its slot (s·L_j; a point made from several slots
/// matches nothing the responder can name), and the answer's length is fixed, so those
/// copies displace honest answers: covering k slots takes d ≥ k·(m − 1) displaced
/// answers. The responder does not know the target's slot j (uniform, the list is
/// shuffled) nor the traps' (uniform among the other N − 1), so
/// P[j covered ∧ no trap displaced] ≤ (k/N)·(1 − (d − 1)/(N − 1))^c
/// ≤ (d/((m − 1)·N))·e^(−c·(d − 1)/N) ≤ 2/(e·(m − 1)·c) (for d ≥ 2, d − 1 ≥ d/2 and
/// x·e^(−x) ≤ 1/e; for d = 1, (1/N)·e^(−c/N) ≤ 1/(e·c) as c ≤ N) — whatever d, k, and
/// the list's length: the bound depends on the number of traps alone
/// (`tests::the_amplification_bound_holds_for_the_pure_alterations` checks it against the
/// exact probability of the two pure strategies). The bound is per run and is not part
/// of a release's δ: it says how likely a cheating responder is to multiply one
/// customer's sensitivity, and a caught attempt stops the run.
pub struct Traps {
    scalars: Vec<Scalar>,
}

impl std::fmt::Debug for Traps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Traps({} points, ..)", self.scalars.len())
    }
}

impl Drop for Traps {
    fn drop(&mut self) {
        self.scalars.zeroize();
    }
}

impl Traps {
    /// `n` fresh traps and their points r·B (encoded).
    pub fn generate(n: usize, rng: &dyn SecureRandom) -> Result<(Self, Vec<[u8; 32]>), PsiError> {
        let mut wide = vec![0u8; 64 * n];
        rng.fill(&mut wide).map_err(|_| PsiError::Random)?;
        let scalars: Vec<Scalar> = wide
            .chunks_exact(64)
            // Unwrap safety: `chunks_exact(64)` yields 64-byte slices.
            .map(|w| Scalar::from_bytes_mod_order_wide(w.try_into().unwrap()))
            .collect();
        wide.zeroize();
        let points: Vec<[u8; 32]> = scalars
            .par_chunks(CHUNK)
            .flat_map_iter(|c| {
                // (r/2)·B, doubled back to r·B by the batched encoding.
                let p: Vec<RistrettoPoint> = c.iter().map(|r| RistrettoPoint::mul_base(&r.div_by_2())).collect();
                RistrettoPoint::double_and_compress_batch(&p).into_iter().map(|c| c.to_bytes())
            })
            .collect();
        Ok((Self { scalars }, points))
    }

    /// How many traps.
    pub fn len(&self) -> usize {
        self.scalars.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.scalars.is_empty()
    }

    /// What an honest answer holds for the traps: r·K for the responder's committed
    /// key K (refused when K is not a canonical encoding or is the identity).
    pub fn expected(&self, responder: &[u8; 32]) -> Result<Vec<[u8; 32]>, PsiError> {
        let k = CompressedRistretto(*responder).decompress().ok_or(PsiError::NonCanonical { index: 0 })?;
        if k.is_identity() {
            return Err(PsiError::Identity { index: 0 });
        }
        // One precomputed table for K makes each r·K a fixed-base multiplication, several
        // times cheaper than a variable-base one (a list holds tens of thousands of traps).
        let table = RistrettoBasepointTable::create(&k);
        Ok(self
            .scalars
            .par_chunks(CHUNK)
            .flat_map_iter(|c| {
                let p: Vec<RistrettoPoint> = c.iter().map(|r| &table * &r.div_by_2()).collect();
                RistrettoPoint::double_and_compress_batch(&p).into_iter().map(|c| c.to_bytes())
            })
            .collect())
    }
}

/// The most probability that a responder which alters its answer to count one
/// customer `m` ≥ 2 times both goes unnoticed by `traps` trap points and has that
/// customer among the slots it altered: 2/(e·(m − 1)·c) ([`Traps`]). 1 for m < 2 or
/// no traps (no guarantee).
pub fn amplification_bound(m: u64, traps: usize) -> f64 {
    if m < 2 || traps == 0 {
        return 1.0;
    }
    (2.0 / (std::f64::consts::E * (m - 1) as f64 * traps as f64)).min(1.0)
}

/// Pads `points` (blinded identifiers) with trap points up to `bucket(len + min_traps)`,
/// at least `min_traps` of them, and shuffles the whole list ([`shuffle`]): the
/// comparer's list, whose padding doubles as its check on the answer ([`Traps`]).
pub fn pad_with_traps(
    mut points: Vec<[u8; 32]>,
    min_traps: usize,
    rng: &dyn SecureRandom,
) -> Result<(Vec<[u8; 32]>, Traps), PsiError> {
    let len = points.len();
    let want = len.checked_add(min_traps).filter(|n| *n <= MAX_LIST).ok_or(PsiError::TooLong { len, max: MAX_LIST })?;
    let (traps, trap_points) = Traps::generate(bucket(want) - len, rng)?;
    points.extend(trap_points);
    shuffle(&mut points, rng)?;
    Ok((points, traps))
}

/// |A ∩ B| for two doubly-blinded lists: each point common to both is counted once,
/// whatever its multiplicity. Padding points never match (see [`pad_and_shuffle`]).
pub fn intersection_count(a: &[[u8; 32]], b: &[[u8; 32]]) -> u64 {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let mut set: HashSet<&[u8; 32]> = small.iter().collect();
    large.iter().filter(|p| set.remove(p)).count() as u64
}

pub mod channel;

#[cfg(test)]
mod tests;
