//! `fedcrm bench secagg`: measured, never asserted.
//!
//! Runs the secure aggregation that runs on the wire (`fedcrm/v6`, issue 9: keys once
//! per analysis, `fedcrm_crypto::multiround`) in memory for n nodes and vectors of d
//! words, and prints each cost beside an **honest floor**: the same amount of work done
//! the fastest safe way we know on this machine, independent of our PRG code, timed in
//! the same run ([`floor`]). One analysis is set up (every node's `Setup::new` and
//! `Setup::join`, the coordinator's `multiround::Analysis::new`), then two rounds run
//! in it, one with no dropouts and one in which ⌈drop·n⌉ nodes share and then vanish:
//!
//! - key setup, one node — **once per analysis, not per round**: `Setup::new` (two
//!   X25519 key pairs) + `Setup::join` with its neighbours (2 · |neighbours| X25519
//!   agreements) against the same key pairs and raw X25519 agreements. Signing and
//!   verifying the advertised keys (Ed25519, the caller's) are not in it.
//! - masking, one node (every round): `Member::round` (a fresh self-mask seed b_r,
//!   Shamir-split t-of-holders, each share sealed) + `RoundReady::mask` (the copy of
//!   the input, 1 + |neighbours| mask expansions, the round's pair seeds HKDF-derived
//!   from the setup's agreements: **no X25519**) against one Shamir split and one fused
//!   pass on all cores that copies the input and adds 1 + |neighbours| AES-128-CTR
//!   keystreams of d words (random keys, `aes`/`ctr` directly). Opening the neighbours'
//!   sealed shares (`RoundShared::receive`) is not timed; the floor omits the share
//!   seals (one HKDF and one 64-byte ChaCha20-Poly1305 seal per neighbour).
//! - the coordinator's unmasking, once with no dropouts and once with the K dropped
//!   nodes (in U2, not in U3): `Analysis::round`, `add_masked` for every survivor,
//!   `close` and `finish_words` against allocating a fresh sum, adding the same vectors
//!   into it (all cores), and the fused expansion of every stream `finish_words` must
//!   remove (|U3| self masks plus each dropped node's pairwise masks with its surviving
//!   neighbours, from the round pair seeds those neighbours revealed), with the |U3|
//!   Shamir reconstructions of the survivors' b_r. A dropout costs no X25519 and no
//!   reconstruction of a key: its surviving neighbours reveal their round pair seeds
//!   with it (`Reveal::PairSeed`);
//! - the coordinator's peak memory during that phase, against the two vectors of d
//!   words it cannot do without (the running sum and the one masked vector in flight).
//!
//! The rounds run in one analysis in order (the round with dropouts last: a node
//! declared dropped takes no further part).
//!
//! The operation counts come from the protocol ([`floor::counts`]) and are printed in
//! the table's detail column and in `--json`.
//!
//! **AES instructions.** The table says whether the CPU has AES-NI and VAES and whether
//! this build's `aes` crate uses them (it picks them at run time). To get the figures
//! without them, build separately with the `aes` crate's software backend (constant-time
//! fixsliced AES; `aes` 0.9 spells the flag `aes_backend="soft"`, 0.8 spelled it
//! `aes_force_soft`), into its own target directory so the normal build is not
//! rebuilt:
//!
//! ```sh
//! RUSTFLAGS='--cfg aes_backend="soft"' CARGO_TARGET_DIR=target/soft-aes \
//!     cargo run --release -- bench secagg --n 50 --d 1000000
//! ```
//!
//! The flag changes both the measured code and the floor (one `aes` crate).
//!
//! **Flower.** With `--flower` the bench then runs Flower's SecAgg and SecAgg+ for the
//! same n and d through `../shared/bench/flower_secaggplus.py` ([`flower`]) and prints
//! our speed-up on every row.
//!
//! Peak memory is the growth of the process's peak resident set (Linux VmHWM), not a
//! heap count: counting heap bytes needs a `GlobalAlloc`, i.e. an `unsafe impl`,
//! which the workspace forbids (`unsafe_code = "forbid"`). See `PeakRss` for what
//! is counted.
//!
//! The clients' own work (sharing, masking, answering the unmask request) runs between the coordinator's calls and is not in the coordinator's
//! times. Every run checks that the unmasked sum equals the plain sum of the
//! survivors' inputs and fails otherwise, so the bench is also a correctness check.

pub mod clv;
pub mod floor;
pub mod flower;
pub mod postgres;
pub mod psi;
mod table;
pub mod train;

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fedcrm_analysis::width::{DEFAULT_MAX_CUSTOMERS_PER_NODE, SumRange, pick_width};
use fedcrm_crypto::graph::{self, Graph, GraphConfig, Mode};
use fedcrm_crypto::multiround::{self, Member, Reveal, RoundReady, Setup, ViewCheck};
use fedcrm_crypto::secagg::{self, PeerKeys, RoundParams, Topology};
use fedcrm_crypto::word::WordWidth;
use fedcrm_crypto::{RoundId, SecureRandom, SystemRandom};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use floor::{Counts, Floor, FloorTimes, PhaseCounts, Shape, Word};
pub use table::table;

/// `--width`: 32, 64 or auto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchWidth {
    Auto,
    Fixed(WordWidth),
}

impl std::str::FromStr for BenchWidth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BenchWidth::Auto),
            "32" => Ok(BenchWidth::Fixed(WordWidth::W32)),
            "64" => Ok(BenchWidth::Fixed(WordWidth::W64)),
            other => Err(format!("{other:?} is not a word width: use 32, 64 or auto")),
        }
    }
}

impl BenchWidth {
    /// Auto: the width a round of RFM counts over `n` nodes gets with the default
    /// `max_customers_per_node` (`fedcrm_analysis::width::pick_width`).
    pub fn resolve(self, n: usize) -> Result<WordWidth> {
        match self {
            BenchWidth::Fixed(w) => Ok(w),
            BenchWidth::Auto => Ok(pick_width(n, &SumRange::counts(DEFAULT_MAX_CUSTOMERS_PER_NODE))?),
        }
    }
}

/// `--secagg`: full SecAgg, SecAgg+, or auto (`graph::choose` with the default
/// parameters: full SecAgg below 100 nodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchMode {
    Auto,
    Full,
    Plus,
}

impl std::str::FromStr for BenchMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BenchMode::Auto),
            "full" => Ok(BenchMode::Full),
            "plus" => Ok(BenchMode::Plus),
            other => Err(format!("{other:?} is not a secure-aggregation mode: use full, plus or auto")),
        }
    }
}

impl BenchMode {
    /// The mode for `n` nodes; `plus` takes SecAgg+'s (k, t) for n even below the
    /// automatic switch, and fails where no graph sparser than complete fits.
    pub fn resolve(self, n: usize) -> Result<Mode> {
        let config = GraphConfig::default();
        Ok(match self {
            BenchMode::Full => Mode::Full,
            BenchMode::Auto => graph::choose(n, &config)?,
            BenchMode::Plus => graph::choose(n, &GraphConfig { full_below: 0, ..config })?,
        })
    }
}

/// What the measured code uses.
const PRG: &str =
    "multiround (keys once per analysis, fedcrm/v6); AES-128-CTR (HKDF-keyed per seed) via prg::expand_many_into";
/// The issue's goal for every ratio (printed, never asserted).
const GOAL_RATIO: f64 = 1.5;
/// How many times the masking floor is measured (interleaved with the nodes' masking),
/// and the key-setup floor (interleaved with the nodes' joins).
const MASK_FLOOR_REPS: usize = 5;
/// The phase name of the key-setup row.
pub const KEY_SETUP_PHASE: &str = "key setup, one node (once per analysis)";

/// The floor's time by kind of work, in ms.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FloorParts {
    /// Fused keystream expansion and addition (with the masking floor's copy).
    pub streams_ms: f64,
    pub x25519_ms: f64,
    pub shamir_ms: f64,
    /// Adding the masked vectors into the running sum.
    pub adds_ms: f64,
    /// Allocating and touching a fresh running sum.
    pub fresh_sum_ms: f64,
}

/// One timed phase beside its floor.
#[derive(Debug, Clone, Serialize)]
pub struct TimeRow {
    pub phase: String,
    pub detail: String,
    pub time_ms: f64,
    pub floor_ms: f64,
    /// time / floor; `null` in JSON when the floor is zero.
    pub ratio: Option<f64>,
    /// The operations the floor did, counted from the protocol.
    pub counts: Counts,
    pub floor_parts: FloorParts,
}

/// The coordinator's peak memory during one unmasking phase beside its floor.
#[derive(Debug, Clone, Serialize)]
pub struct MemRow {
    pub phase: String,
    /// Peak resident-set growth in bytes; `null` where /proc/self is not available.
    pub peak_bytes: Option<u64>,
    pub floor_bytes: u64,
    pub ratio: Option<f64>,
}

/// The CPU's AES instructions and whether this build uses them.
#[derive(Debug, Clone, Serialize)]
pub struct AesInfo {
    pub cpu_aes_ni: bool,
    pub cpu_vaes: bool,
    pub cpu_avx512f: bool,
    /// `aes::hardware_accelerated()`: false on a CPU without AES instructions or in a
    /// build with `--cfg aes_backend="soft"`.
    pub hardware: bool,
    /// What the `aes` crate runs: `AES-NI`, `VAES-256`, `VAES-512`, `ARMv8 AES` or the
    /// software fallback.
    pub backend: String,
}

/// Everything the bench prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub n: usize,
    pub d: usize,
    pub t: usize,
    pub dropped: usize,
    pub prg: String,
    pub word_bits: usize,
    /// Full SecAgg or SecAgg+ (with its k and t).
    pub secagg: String,
    /// Each node's neighbours: n − 1 in full SecAgg, k in SecAgg+.
    pub neighbours: usize,
    pub threads: usize,
    pub aes: AesInfo,
    /// How the floor is made.
    pub floor: String,
    /// The protocol's operation counts per phase (what the floor does).
    pub counts: PhaseCounts,
    pub memory_measure: &'static str,
    pub times: Vec<TimeRow>,
    pub memory: Vec<MemRow>,
    /// The unmasked sums equalled the plain sums (the bench fails otherwise).
    pub sums_verified: bool,
    /// Flower's figures from the same run (`--flower`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flower: Option<flower::Report>,
}

/// `fedcrm bench secagg`: run the benchmark, then Flower's if asked, and print the
/// table (or JSON).
pub fn secagg(
    n: usize,
    d: usize,
    drop: f64,
    width: BenchWidth,
    mode: BenchMode,
    json: bool,
    flower: Option<flower::Options>,
) -> Result<()> {
    if let Some(opts) = &flower {
        flower::preflight(opts)?;
    }
    let mut report = run(n, d, drop, width.resolve(n)?, mode.resolve(n)?)?;
    if let Some(opts) = flower {
        let (parsed, command, took) = flower::run(&opts, n, d)?;
        let by_phase = |i: usize| (report.times[i].phase.clone(), report.times[i].time_ms);
        let ours = [by_phase(0), by_phase(1), by_phase(4)];
        let setup = flower::Ours {
            word_bits: report.word_bits,
            secagg: report.secagg.clone(),
            neighbours: report.neighbours,
            dropped: report.dropped,
        };
        report.flower = Some(flower::compare(parsed, command, took, n, d, ours, &setup));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// The number of dropped nodes for a fraction: ⌈drop·n⌉ (tolerating float noise, so
/// that 0.1·50 is 5, not 6).
pub fn dropped_count(n: usize, drop: f64) -> usize {
    ((drop * n as f64) - 1e-9).ceil().max(0.0) as usize
}

/// Run the benchmark at `width` in `mode` and return the figures.
pub fn run(n: usize, d: usize, drop: f64, width: WordWidth, mode: Mode) -> Result<Report> {
    match width {
        WordWidth::W32 => run_at::<u32>(n, d, drop, width, mode),
        WordWidth::W64 => run_at::<u64>(n, d, drop, width, mode),
    }
}

fn run_at<W: Word>(n: usize, d: usize, drop: f64, width: WordWidth, mode: Mode) -> Result<Report> {
    ensure!((0.0..1.0).contains(&drop), "--drop must be in [0, 1), got {drop}");
    ensure!(W::WIDTH.bits() == width.bits() as usize, "the floor's word must be the round's");
    let names: Vec<String> = (0..n).map(|i| node_name(i, n)).collect();
    let rng = SystemRandom::new();
    let (t, neighbours, topology, secagg_mode) = match mode {
        Mode::Full => {
            let t = secagg::default_threshold(n);
            secagg::check_threshold(t, n).with_context(|| format!("n = {n} nodes cannot run a round"))?;
            (t, n - 1, Topology::Complete, "full SecAgg (every pair of nodes)".to_string())
        }
        Mode::Plus { k, t } => {
            // A random Harary graph, as the nodes would derive it from their revealed nonces
            // at the analysis's key setup; fixed for the analysis (both rounds).
            let mut nonce = [0u8; 32];
            rng.fill(&mut nonce).map_err(|_| anyhow::anyhow!("system random number generator failed"))?;
            let seed = graph::graph_seed(&RoundId::random(&rng)?, b"bench", &[("bench".into(), nonce)]);
            let g = Graph::harary(&names, k, &seed)?;
            (t, k, g.topology(), format!("SecAgg+ (random Harary graph, k = {k} neighbours, t = {t} of k)"))
        }
    };
    let k = dropped_count(n, drop);
    if n - k < t {
        bail!("{k} of {n} dropped leaves {} survivors, fewer than the threshold t = {t}: no round could unmask", n - k);
    }
    // Dropped nodes are spread over the roster (their position only decides signs).
    let dropped: BTreeSet<usize> = (0..k).map(|j| j * n / k.max(1)).collect();
    let mut counts = floor::counts(Shape { n, t, neighbours, dropped: k });
    // The pairwise masks the coordinator must remove: each dropped node's, with each of
    // its surviving neighbours, counted on the graph itself.
    let pairwise: usize = dropped
        .iter()
        .map(|&v| (0..n).filter(|u| !dropped.contains(u) && topology.adjacent(&names[*u], &names[v])).count())
        .sum();
    counts.coordinator_dropped.streams = n - k + pairwise;
    let mut floor = Floor::<W>::new(d, Shape { n, t, neighbours, dropped: k }, &rng)?;

    // The analysis's key setup, once: every node's Setup::new and Setup::join timed,
    // with the key-setup floor interleaved; then the coordinator's Analysis.
    let setup = bar(4 * n as u64, "setup: the analysis's keys (X25519), then two rounds' shares (Shamir, AEAD)");
    let (mut members, key_setup, key_floor) =
        setup_analysis(&names, &topology, &floor, &counts.key_setup, &rng, &setup)?;
    let mut analysis = multiround::Analysis::new(key_setup.setup, key_setup.keys, topology.clone())?;

    // Each round's sharing (Member::round, timed per node) and the survivors' opening
    // of their shares (not timed), before any measurement of the coordinator.
    let params = |rng: &dyn SecureRandom| -> Result<RoundParams> {
        Ok(RoundParams { round: RoundId::random(rng)?, t, d, width })
    };
    let plain = setup_round(params(&rng)?, &names, &mut members, &BTreeSet::new(), &rng, &setup)?;
    let with_drops = setup_round(params(&rng)?, &names, &mut members, &dropped, &rng, &setup)?;
    setup.finish_and_clear();

    // Buffers the bench itself needs, allocated and touched before any measurement so
    // that they never count in the coordinator's peak.
    let mut bufs = Buffers { input: vec![1; d], expected: vec![1; d] };

    // One baseline for both phases: the resident set with the bench's buffers and every
    // node's round state in place, before any masked vector exists.
    let rss = PeakRss::baseline();
    let measure = bar((2 * n - k + 2) as u64, "measuring: nodes mask, the coordinator adds and unmasks");
    let mut ctx = RoundCtx { members: &mut members, analysis: &mut analysis, bufs: &mut bufs, floor: &mut floor };
    let a = run_round(plain, &mut ctx, &counts.masking, &counts.coordinator_no_dropouts, &rss, &measure)?;
    let b = run_round(with_drops, &mut ctx, &counts.masking, &counts.coordinator_dropped, &rss, &measure)?;
    measure.finish_and_clear();

    let mask_floor = median_times(&a.mask_floor);
    let mut times = vec![TimeRow::new(
        "masking, one node",
        format!(
            "every round: Member::round (share b_r) + RoundReady::mask, median of {} nodes; floor (median of {} \
             reps): {}",
            a.mask.len(),
            a.mask_floor.len(),
            counts.masking.describe()
        ),
        median(&a.mask),
        counts.masking,
        FloorParts::of(mask_floor, Duration::ZERO, Duration::ZERO),
    )];
    for (fig, label, c) in [
        (&a, "coordinator, no dropouts".to_string(), counts.coordinator_no_dropouts),
        (&b, format!("coordinator, {k} of {n} dropped"), counts.coordinator_dropped),
    ] {
        let survivors = c.vectors_added;
        times.push(TimeRow::new(
            &label,
            format!("every round: Analysis::round + add_masked + close + finish_words; floor: {}", c.describe()),
            fig.new + fig.add + fig.finish,
            c,
            FloorParts::of(fig.finish_floor, fig.add_floor, fig.zero),
        ));
        let adds = Counts { vectors_added: survivors, ..Counts::default() };
        times.push(TimeRow::new(
            &format!("  adding {survivors} masked vectors"),
            format!(
                "Analysis::round + add_masked; floor: a fresh sum, {} (faster on {} thread(s))",
                adds.describe(),
                fig.add_floor_threads
            ),
            fig.new + fig.add,
            adds,
            FloorParts::of(FloorTimes::default(), fig.add_floor, fig.zero),
        ));
        let finish = Counts { vectors_added: 0, ..c };
        let what = if fig.dropped == 0 {
            format!("{survivors} self masks")
        } else {
            format!("{survivors} self + {} pairwise masks", c.streams - survivors)
        };
        times.push(TimeRow::new(
            &format!("  close + finish: {what}"),
            format!(
                "Shamir (b_r only), expansions of self seeds and revealed pair seeds; floor: {}",
                finish.describe()
            ),
            fig.finish,
            finish,
            FloorParts::of(fig.finish_floor, Duration::ZERO, Duration::ZERO),
        ));
    }
    times.push(TimeRow::new(
        KEY_SETUP_PHASE,
        format!(
            "paid once per analysis, not per round: Setup::new + Setup::join, median of {n} nodes; floor (median of \
             {} reps): {}",
            key_floor.len(),
            counts.key_setup.describe()
        ),
        median(&key_setup.times),
        counts.key_setup,
        FloorParts::of(median_times(&key_floor), Duration::ZERO, Duration::ZERO),
    ));
    // What the coordinator cannot do without: the running sum, the one masked vector in
    // flight, t shares (two 32-byte scalars each) of every self-mask seed it rebuilds
    // (|U3|) and the revealed pair seeds (32 bytes each).
    let vectors = 2 * std::mem::size_of::<W>() as u64 * d as u64;
    let shares = |secrets: usize| (secrets * t * fedcrm_crypto::shamir::SHARE_Y_LEN) as u64;
    let memory = vec![
        MemRow::new("coordinator, no dropouts".to_string(), a.peak_rss, vectors + shares(n)),
        MemRow::new(
            format!("coordinator, {k} of {n} dropped"),
            b.peak_rss,
            vectors + shares(n - k) + 32 * pairwise as u64,
        ),
    ];
    let threads = floor.threads();
    Ok(Report {
        n,
        d,
        t,
        dropped: k,
        prg: PRG.to_string(),
        word_bits: W::WIDTH.bits(),
        secagg: secagg_mode,
        neighbours,
        threads,
        aes: aes_info(),
        floor: format!(
            "fused AES-128-CTR (aes/ctr crates, random 128-bit keys, no HKDF) + wrapping add of {}-bit words on \
             {threads} threads, {} KiB tiles; X25519 (key setup only, once per analysis) and Shamir (t = {t}) on one \
             thread; adds of the masked vectors on one thread or all, whichever was faster; same run",
            W::WIDTH.bits(),
            floor::TILE_BYTES / 1024
        ),
        counts,
        memory_measure: "resident set, not a heap count: peak RSS during the phase (VmHWM, reset through \
                         /proc/self/clear_refs just before Analysis::round, read after finish_words) minus RSS after \
                         setup; counts the one masked vector in flight and the unmask responses; floor = running sum + \
                         one vector in flight = 2·(width/8)·d bytes, plus t shares of 64 bytes for each self-mask seed \
                         rebuilt (|U3|) and 32 bytes for each revealed pair seed",
        times,
        memory,
        sums_verified: true,
        flower: None,
    })
}

/// The analysis's key setup as the nodes did it.
struct KeySetup {
    setup: RoundId,
    /// U1 of the analysis: every node's advertised keys, sorted by name.
    keys: Vec<PeerKeys>,
    /// Each node's Setup::new + Setup::join.
    times: Vec<Duration>,
}

/// Every node's key setup, once per analysis (`Setup::new`, then `Setup::join` on the
/// whole roster), timed per node, with the floor's `key_setup` measured
/// [`MASK_FLOOR_REPS`] times in between. Returns the members (in roster order), the
/// setup and the floor's times.
fn setup_analysis<W: Word>(
    names: &[String],
    topology: &Topology,
    floor: &Floor<W>,
    key_counts: &Counts,
    rng: &dyn SecureRandom,
    pb: &ProgressBar,
) -> Result<(Vec<Member>, KeySetup, Vec<FloorTimes>)> {
    let n = names.len();
    let setup = RoundId::random(rng)?;
    let mut setups = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    for name in names {
        let (s, took) = timed(|| Setup::new(setup, "bench", name, rng));
        let (s, k) = s?;
        setups.push(s);
        keys.push(k);
        times.push(took);
        pb.inc(1);
    }
    let floor_every = n.div_ceil(MASK_FLOOR_REPS).max(1);
    let mut key_floor = Vec::with_capacity(MASK_FLOOR_REPS);
    let mut members = Vec::with_capacity(n);
    for (i, s) in setups.into_iter().enumerate() {
        if i % floor_every == 0 && key_floor.len() < MASK_FLOOR_REPS {
            key_floor.push(floor.key_setup(key_counts));
        }
        // The roster and graph are the node's inputs, copied outside the timed call.
        let (u1, graph) = (keys.clone(), topology.clone());
        let (m, took) = timed(|| s.join(u1, graph));
        members.push(m?);
        times[i] += took;
        pb.inc(1);
    }
    Ok((members, KeySetup { setup, keys, times }, key_floor))
}

/// One round after its sharing: every node of the roster shared (U2 = U1); the
/// survivors opened their shares and are ready to mask; the dropped nodes vanished
/// after sharing.
struct Round {
    params: RoundParams,
    u2: Vec<String>,
    /// Each node's `Member::round` (its share of b_r), by roster position.
    share: Vec<Duration>,
    /// (roster position, state) of each survivor, in roster order.
    ready: Vec<(usize, RoundReady)>,
}

fn node_name(i: usize, n: usize) -> String {
    let w = n.saturating_sub(1).max(1).to_string().len();
    format!("node-{i:0w$}")
}

fn setup_round(
    params: RoundParams,
    names: &[String],
    members: &mut [Member],
    dropped: &BTreeSet<usize>,
    rng: &dyn SecureRandom,
    pb: &ProgressBar,
) -> Result<Round> {
    let n = names.len();
    let mut inbox: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); n];
    let mut shared = Vec::with_capacity(n);
    let mut share = Vec::with_capacity(n);
    for (i, member) in members.iter_mut().enumerate() {
        let (out, took) = timed(|| member.round(params.clone(), names, rng));
        let (state, out) = out?;
        share.push(took);
        for (to, ct) in out {
            let j = names.binary_search(&to).map_err(|_| anyhow::anyhow!("share addressed to unknown {to}"))?;
            inbox[j].push((names[i].clone(), ct));
        }
        shared.push(state);
    }
    let u2 = names.to_vec();
    let mut ready = Vec::with_capacity(n - dropped.len());
    for (i, state) in shared.into_iter().enumerate() {
        if !dropped.contains(&i) {
            ready.push((i, state.receive(&members[i], &u2, &inbox[i])?));
        }
        pb.inc(1);
    }
    Ok(Round { params, u2, share, ready })
}

struct Buffers {
    /// The input of the node being masked (regenerated per node, never reallocated).
    input: Vec<u64>,
    /// Σ x_u over the survivors, to check the unmasked sum.
    expected: Vec<u64>,
}

/// Node i's input: full-range words of `width`, different for every node and position.
fn fill_input(i: usize, x: &mut [u64], width: WordWidth) {
    let a = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for (j, w) in x.iter_mut().enumerate() {
        *w = (a ^ (j as u64).wrapping_mul(0xD1B5_4A32_D192_ED03).rotate_left(17)) & width.max_word();
    }
}

/// The plain sum of the inputs, to check the unmasked one (not timed).
fn add_into(acc: &mut [u64], v: &[u64]) {
    for (a, b) in acc.iter_mut().zip(v) {
        *a = a.wrapping_add(*b);
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t0 = Instant::now();
    let out = f();
    (out, t0.elapsed())
}

/// Figures of one round.
struct RoundFigures {
    dropped: usize,
    /// Each survivor's `Member::round` + `RoundReady::mask`.
    mask: Vec<Duration>,
    mask_floor: Vec<FloorTimes>,
    /// `Analysis::round`.
    new: Duration,
    /// Σ `add_masked`.
    add: Duration,
    /// `close` + `survivors`/`dropped` + `finish_words`.
    finish: Duration,
    /// Floor: allocating and touching a fresh d-word sum.
    zero: Duration,
    /// Floor: Σ adding the same vectors into a sum, the faster of one thread and all cores.
    add_floor: Duration,
    /// Which of the two that was.
    add_floor_threads: usize,
    /// Floor: what `finish_words` must do (mean of one run before and one after).
    finish_floor: FloorTimes,
    peak_rss: Option<u64>,
}

/// What every round of the analysis works on.
struct RoundCtx<'a, W: Word> {
    /// Every node's analysis state, in roster order.
    members: &'a mut [Member],
    /// The coordinator's.
    analysis: &'a mut multiround::Analysis,
    bufs: &'a mut Buffers,
    floor: &'a mut Floor<W>,
}

fn run_round<W: Word>(
    round: Round,
    ctx: &mut RoundCtx<'_, W>,
    mask_counts: &Counts,
    coordinator_counts: &Counts,
    rss: &PeakRss,
    pb: &ProgressBar,
) -> Result<RoundFigures> {
    let Round { params, u2, share, ready } = round;
    let RoundCtx { members, analysis, bufs, floor } = ctx;
    let width = params.width;
    let n = u2.len();
    let survivors = ready.len();
    let dropped = u2.len() - survivors;
    let floor_every = survivors.div_ceil(MASK_FLOOR_REPS).max(1);
    let mut mask = Vec::with_capacity(survivors);
    let mut mask_floor = Vec::with_capacity(MASK_FLOOR_REPS);
    let mut masked = Vec::with_capacity(survivors);
    let mut add = Duration::ZERO;
    // The floor's adds: Σ on one thread, Σ on all cores.
    let mut add_floor = [Duration::ZERO; 2];
    bufs.expected.fill(0);

    let reset = rss.reset_peak();
    // Every node shared, so this round's contributors are its U2.
    let (agg, new) = timed(|| analysis.round(params.clone(), &u2, &u2));
    let mut agg = agg?;
    for (k, (i, state)) in ready.into_iter().enumerate() {
        let name = node_name(i, n);
        // Client side (not in the coordinator's figures): make the input, mask it.
        fill_input(i, &mut bufs.input, width);
        add_into(&mut bufs.expected, &bufs.input);
        if k % floor_every == 0 && mask_floor.len() < MASK_FLOOR_REPS {
            mask_floor.push(floor.masking(mask_counts)?);
        }
        let member = &members[i];
        let (out, m) = timed(|| state.mask(member, &bufs.input));
        let (client, y) = out?;
        mask.push(share[i] + m);
        // Coordinator side, beside its floor (the same vector into the floor's sum);
        // the order alternates so neither side always finds y warm in cache.
        let coord = |agg: &mut multiround::RoundAggregator| timed(|| agg.add_masked(&name, &y));
        let y_words = W::of(&y).context("the masked vector has another width than the round's")?;
        let mut add_floor_both = |floor: &mut Floor<W>| {
            let (one, all) = floor.add(y_words);
            add_floor[0] += one;
            add_floor[1] += all;
        };
        if k % 2 == 0 {
            let (r, c) = coord(&mut agg);
            r?;
            add += c;
            add_floor_both(floor);
        } else {
            add_floor_both(floor);
            let (r, c) = coord(&mut agg);
            r?;
            add += c;
        }
        masked.push((i, name, client));
        pb.inc(1);
    }

    let floor_before = floor.unmasking(coordinator_counts);
    let (closed, close) = timed(|| -> Result<_> {
        let u = agg.close(analysis)?;
        let (s, d) = (u.survivors(), u.dropped());
        Ok((u, s, d))
    });
    let (unmasking, u3, gone) = closed?;
    // Client side: each survivor answers the unmask request (not timed); the dropped
    // nodes' neighbours reveal their round pair seeds with them.
    let responses: Vec<(String, Vec<Reveal>)> = masked
        .into_iter()
        .map(|(i, name, c)| Ok((name, c.unmask(&mut members[i], &u3, &gone, ViewCheck::Confirmed)?)))
        .collect::<Result<_>>()?;
    // The unmasking itself, in the round's words (widening to u64 is the release door's).
    let (sum, fin) = timed(|| unmasking.finish_words(&responses));
    let sum = sum?;
    let peak_rss = if reset { rss.peak_growth() } else { None };
    let sum = sum.into_u64();
    // Measured after the memory window closes: a fresh sum's allocation and first-touch
    // page faults, which the coordinator pays in Analysis::round and its first add.
    let zero = floor.fresh_sum();
    let floor_after = floor.unmasking(coordinator_counts);
    pb.inc(1);

    ensure!(gone.len() == dropped, "the coordinator counted {} dropped, expected {dropped}", gone.len());
    bufs.expected.iter_mut().for_each(|w| *w &= width.max_word());
    if sum != bufs.expected {
        bail!(
            "secure aggregation returned a wrong sum ({survivors} survivors, {dropped} dropped): masks did not cancel"
        );
    }
    black_box(&sum);
    Ok(RoundFigures {
        dropped,
        mask,
        mask_floor,
        new,
        add,
        finish: close + fin,
        zero,
        add_floor: add_floor[0].min(add_floor[1]),
        add_floor_threads: if add_floor[0] <= add_floor[1] { 1 } else { floor.threads() },
        finish_floor: FloorTimes::mean(floor_before, floor_after),
        peak_rss,
    })
}

/// Peak resident-set growth (Linux /proc), the stand-in for a heap count (see the
/// module doc). `baseline` reads VmRSS once, after setup and after the bench's own
/// buffers are allocated and touched. Before each coordinator phase `reset_peak`
/// resets the kernel's high-water mark to the current RSS (writing 5 to
/// /proc/self/clear_refs); after it `peak_growth` is VmHWM − baseline.
///
/// What is counted: the pages the process held at its peak during the phase beyond
/// those it held at the baseline — the coordinator's running sum and bookkeeping,
/// but also the client's masked vector in flight (made by `RoundReady::mask`
/// between two `add_masked` calls) and the unmask responses. One baseline serves
/// both phases because the allocator keeps the pages the first phase freed and the
/// second reuses them: a baseline taken between the phases would hide them and
/// under-count the second phase by a whole vector.
#[derive(Debug)]
struct PeakRss {
    base: Option<u64>,
}

impl PeakRss {
    fn baseline() -> Self {
        Self { base: status_bytes("VmRSS") }
    }

    /// False where the high-water mark cannot be reset (then nothing is reported).
    fn reset_peak(&self) -> bool {
        std::fs::write("/proc/self/clear_refs", "5").is_ok()
    }

    fn peak_growth(&self) -> Option<u64> {
        Some(status_bytes("VmHWM")?.saturating_sub(self.base?))
    }
}

/// A `kB` field of /proc/self/status, in bytes.
fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.split(':').next() == Some(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

fn median(xs: &[Duration]) -> Duration {
    let mut v = xs.to_vec();
    v.sort();
    match v.len() {
        0 => Duration::ZERO,
        l if l % 2 == 1 => v[l / 2],
        l => (v[l / 2 - 1] + v[l / 2]) / 2,
    }
}

/// The median of each part of the floor's repeated masking, by total.
fn median_times(xs: &[FloorTimes]) -> FloorTimes {
    let mut v = xs.to_vec();
    v.sort_by_key(FloorTimes::total);
    v.get(v.len() / 2).copied().unwrap_or_default()
}

impl FloorParts {
    fn of(f: FloorTimes, adds: Duration, fresh_sum: Duration) -> Self {
        Self {
            streams_ms: ms(f.streams),
            x25519_ms: ms(f.x25519),
            shamir_ms: ms(f.shamir),
            adds_ms: ms(adds),
            fresh_sum_ms: ms(fresh_sum),
        }
    }

    fn total_ms(&self) -> f64 {
        self.streams_ms + self.x25519_ms + self.shamir_ms + self.adds_ms + self.fresh_sum_ms
    }
}

impl TimeRow {
    fn new(phase: &str, detail: String, time: Duration, counts: Counts, floor_parts: FloorParts) -> Self {
        let (time_ms, floor_ms) = (ms(time), floor_parts.total_ms());
        Self {
            phase: phase.to_string(),
            detail,
            time_ms,
            floor_ms,
            ratio: ratio(time_ms, floor_ms),
            counts,
            floor_parts,
        }
    }
}

impl MemRow {
    fn new(phase: String, peak_bytes: Option<u64>, floor_bytes: u64) -> Self {
        let ratio = peak_bytes.and_then(|p| ratio(p as f64, floor_bytes as f64));
        Self { phase, peak_bytes, floor_bytes, ratio }
    }
}

fn bar(len: u64, msg: &'static str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("  {msg}\n  [{bar:40}] {pos}/{len} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(msg);
    pb
}

/// The CPU's AES instructions (std's run-time detection) and the `aes` crate's choice.
fn aes_info() -> AesInfo {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    let (cpu_aes_ni, cpu_vaes, cpu_avx512f) = (
        std::arch::is_x86_feature_detected!("aes"),
        std::arch::is_x86_feature_detected!("vaes"),
        std::arch::is_x86_feature_detected!("avx512f"),
    );
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    let (cpu_aes_ni, cpu_vaes, cpu_avx512f) = (false, false, false);
    let hardware = aes::hardware_accelerated();
    let backend = match (hardware, cfg!(target_arch = "aarch64")) {
        (false, _) => "software (constant-time fixsliced AES)",
        (true, true) => "ARMv8 AES",
        (true, false) if cpu_vaes && cpu_avx512f => "VAES-512",
        (true, false) if cpu_vaes => "VAES-256",
        (true, false) => "AES-NI",
    };
    AesInfo { cpu_aes_ni, cpu_vaes, cpu_avx512f, hardware, backend: backend.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bench_completes_and_checks_its_sums() {
        secagg(5, 1000, 0.2, BenchWidth::Auto, BenchMode::Auto, true, None).unwrap();
        secagg(5, 1001, 0.2, BenchWidth::Fixed(WordWidth::W64), BenchMode::Full, true, None).unwrap();
    }

    #[test]
    fn report_has_every_row() {
        let r = run(10, 300, 0.2, WordWidth::W32, Mode::Full).unwrap();
        assert_eq!((r.n, r.d, r.t, r.dropped), (10, 300, 7, 2));
        assert_eq!(r.times.len(), 8);
        assert_eq!(r.memory.len(), 2);
        assert!(r.sums_verified);
        // The phases keep their names (scripts read the JSON by them).
        let phases: Vec<&str> = r.times.iter().map(|x| x.phase.as_str()).collect();
        assert_eq!(
            [phases[0], phases[1], phases[4]],
            ["masking, one node", "coordinator, no dropouts", "coordinator, 2 of 10 dropped"]
        );
        assert_eq!(phases[7], KEY_SETUP_PHASE);
        // Counts from the protocol (multiround): 10 streams per node and round, no X25519;
        // 8 self + 2 × 8 pairwise from revealed pair seeds, only the 8 survivors' b_r
        // rebuilt; the X25519 is all in the key setup, 2 × 9 per node, once.
        assert_eq!((r.times[0].counts.streams, r.times[0].counts.x25519, r.times[0].counts.splits), (10, 0, 1));
        let dropped = r.times[4].counts;
        assert_eq!((dropped.streams, dropped.reconstructions, dropped.x25519), (24, 8, 0));
        assert_eq!((r.times[1].counts.streams, r.times[1].counts.reconstructions), (10, 10));
        assert_eq!((r.times[7].counts.x25519, r.times[7].counts.key_pairs, r.times[7].counts.streams), (18, 2, 0));
        assert_eq!(r.counts.key_setup, r.times[7].counts);
        // Every row was timed and has a floor (the key setup's is X25519 only).
        for row in &r.times {
            assert!(row.time_ms > 0.0 && row.floor_ms > 0.0, "{row:?}");
        }
        assert!(r.times[7].floor_parts.x25519_ms > 0.0 && r.times[7].floor_parts.streams_ms <= 0.0);
        assert!(r.times[0].floor_parts.x25519_ms <= 0.0, "no X25519 in a round");
        let json = serde_json::to_value(&r).unwrap();
        for key in ["time_ms", "floor_ms", "ratio", "counts", "floor_parts"] {
            assert!(json["times"][0].get(key).is_some(), "{key}");
        }
        assert!(json.get("flower").is_none());
        let text = table(&r);
        assert!(text.contains("masking, one node") && text.contains("2 of 10 dropped"), "{text}");
        assert!(text.contains("10 streams, 1 copy, 1 Shamir split"), "{text}");
        assert!(
            text.contains("key setup, one node (once per analysis)") && text.contains("18 X25519, 2 key pairs"),
            "{text}"
        );
        assert!(!text.contains("9 X25519"), "{text}");
    }

    #[test]
    fn dropped_count_is_the_ceiling() {
        assert_eq!(dropped_count(50, 0.1), 5);
        assert_eq!(dropped_count(5, 0.2), 1);
        assert_eq!(dropped_count(10, 0.15), 2);
        assert_eq!(dropped_count(10, 0.0), 0);
    }

    #[test]
    fn refuses_more_drops_than_the_threshold_allows() {
        assert!(run(6, 10, 0.5, WordWidth::W64, Mode::Full).is_err());
        assert!(run(5, 10, 1.0, WordWidth::W32, Mode::Full).is_err());
    }

    #[test]
    fn secagg_plus_bench_completes_and_counts_the_graph() {
        let Mode::Plus { k, t } = BenchMode::Plus.resolve(200).unwrap() else { panic!("SecAgg+ at n = 200") };
        let r = run(200, 64, 0.1, WordWidth::W32, Mode::Plus { k, t }).unwrap();
        assert!(r.sums_verified && r.secagg.contains("SecAgg+"), "{}", r.secagg);
        assert_eq!((r.neighbours, r.t), (k, t));
        // One node masks with 1 + k streams and no X25519; its key setup agrees twice with
        // each of its k neighbours; the coordinator removes each dropped node's masks with
        // its surviving neighbours only (at most k each, at least one), with no X25519.
        assert_eq!((r.counts.masking.streams, r.counts.masking.x25519), (1 + k, 0));
        assert_eq!(r.counts.key_setup.x25519, 2 * k);
        let c = r.counts.coordinator_dropped;
        assert_eq!((r.dropped, c.vectors_added, c.reconstructions, c.x25519), (20, 180, 180, 0));
        assert!(c.streams > 180 && c.streams <= 180 + 20 * k, "{c:?}");
        assert_eq!(BenchMode::Auto.resolve(50).unwrap(), Mode::Full);
        assert!("half".parse::<BenchMode>().unwrap_err().contains("full, plus or auto"));
    }

    #[test]
    fn auto_width_is_what_a_count_round_gets() {
        assert_eq!(BenchWidth::Auto.resolve(50).unwrap(), WordWidth::W32);
        assert_eq!(BenchWidth::Auto.resolve(1023).unwrap(), WordWidth::W32);
        assert_eq!(BenchWidth::Auto.resolve(1024).unwrap(), WordWidth::W64);
        assert_eq!("64".parse::<BenchWidth>().unwrap(), BenchWidth::Fixed(WordWidth::W64));
        assert!("16".parse::<BenchWidth>().unwrap_err().contains("32, 64 or auto"));
    }
}
