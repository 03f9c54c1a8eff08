//! `fedcrm bench secagg`: measured, never asserted.
//!
//! Runs secure-aggregation rounds (`fedcrm_crypto::secagg`) in memory for n nodes and
//! vectors of d words, and prints each cost beside its floor, measured in the same
//! run with the same PRG (AES-128-CTR via `prg::expand_many_into`), the same word
//! width (`--width`: by default the one a round of RFM counts over n nodes gets,
//! 32 bits for n ≤ 1,023) and the same cores: the measured code and the floor both
//! expand their masks on N threads, N = `prg::parallelism()` (the machine's available
//! parallelism), splitting the vector between them:
//!
//! - masking, one node: `ClientReady::mask` (its X25519 agreements, HKDF, the copy
//!   of the input and |U2| expansions) against copying the input into a buffer and
//!   making |U2| expansions of d words into it;
//! - the coordinator's unmasking, once with no dropouts and once with ⌈drop·n⌉ nodes
//!   that shared their keys but never sent a masked input (in U2, not in U3):
//!   `Aggregator::new`, `add_masked` for every survivor, `close` and `finish` against
//!   zeroing a sum, adding the same vectors into it and making the expansions that
//!   `finish` must make (|U3| self masks, plus |U3| pairwise masks per dropped node);
//! - the coordinator's peak memory during that phase, against the two vectors of d
//!   words it cannot do without (the running sum and the one masked vector in flight).
//!
//! Peak memory is the growth of the process's peak resident set (Linux VmHWM), not a
//! heap count: counting heap bytes needs a `GlobalAlloc`, i.e. an `unsafe impl`,
//! which the workspace forbids (`unsafe_code = "forbid"`). See `PeakRss` for what
//! is counted.
//!
//! The clients' own work (generating the masked vectors, answering the unmask
//! request) runs between the coordinator's calls and is not in the coordinator's
//! times. Every run checks that the unmasked sum equals the plain sum of the
//! survivors' inputs and fails otherwise, so the bench is also a correctness check.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fedcrm_analysis::width::{DEFAULT_MAX_CUSTOMERS_PER_NODE, SumRange, pick_width};
use fedcrm_crypto::prg::{self, MaskSeed, Sign};
use fedcrm_crypto::secagg::{
    self, Aggregator, ClientAdvertised, ClientReady, PeerKeys, Revealed, RoundParams, WordWidth, Words,
};
use fedcrm_crypto::{RoundId, SecureRandom, SystemRandom};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// What both the measured code and the floors use (then the width).
const PRG: &str = "AES-128-CTR (HKDF-keyed per seed)";
/// The goal for every ratio (printed, never asserted).
const GOAL_RATIO: f64 = 1.5;
/// How many times the masking floor is measured (interleaved with the nodes' masking).
const MASK_FLOOR_REPS: usize = 5;

/// One timed phase beside its floor.
#[derive(Debug, Clone, Serialize)]
pub struct TimeRow {
    pub phase: String,
    pub detail: String,
    pub time_ms: f64,
    pub floor_ms: f64,
    /// time / floor; `null` in JSON when the floor is zero.
    pub ratio: Option<f64>,
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

/// Everything the bench prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub n: usize,
    pub d: usize,
    pub t: usize,
    pub dropped: usize,
    /// Word width in bits (32 or 64), for the measured code and its floor alike.
    pub width: u32,
    pub prg: String,
    pub threads: usize,
    pub memory_measure: &'static str,
    pub times: Vec<TimeRow>,
    pub memory: Vec<MemRow>,
    /// The unmasked sums equalled the plain sums (the bench fails otherwise).
    pub sums_verified: bool,
}

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

/// `fedcrm bench secagg`: run the benchmark and print the table (or JSON).
pub fn secagg(n: usize, d: usize, drop: f64, width: BenchWidth, json: bool) -> Result<()> {
    let report = run(n, d, drop, width.resolve(n)?)?;
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

/// Run the benchmark at `width` and return the figures.
pub fn run(n: usize, d: usize, drop: f64, width: WordWidth) -> Result<Report> {
    ensure!((0.0..1.0).contains(&drop), "--drop must be in [0, 1), got {drop}");
    let t = secagg::default_threshold(n);
    secagg::check_threshold(t, n).with_context(|| format!("n = {n} nodes cannot run a round"))?;
    let k = dropped_count(n, drop);
    if n - k < t {
        bail!("{k} of {n} dropped leaves {} survivors, fewer than the threshold t = {t}: no round could unmask", n - k);
    }
    let rng = SystemRandom::new();
    let threads = prg::parallelism();
    // Dropped nodes are spread over the roster (their position only decides signs).
    let dropped: BTreeSet<usize> = (0..k).map(|j| j * n / k.max(1)).collect();

    // Setup, not timed: rounds 0 and 1 for both scenarios.
    let setup = bar(2 * 3 * n as u64, "setup: advertising keys and sharing them (X25519, Shamir, AEAD)");
    let plain = setup_round(n, t, d, width, &BTreeSet::new(), &rng, &setup)?;
    let with_drops = setup_round(n, t, d, width, &dropped, &rng, &setup)?;
    setup.finish_and_clear();

    // Buffers the bench itself needs, allocated and touched before any measurement so
    // that they never count in the coordinator's peak.
    let mut bufs = Buffers {
        input: vec![1u64; d],
        expected: vec![1u64; d],
        floor_sum: Words::from_plain(width, &vec![1u64; d])?,
        floor_mask: Words::from_plain(width, &vec![1u64; d])?,
        seeds: (0..n.max(1))
            .map(|_| {
                let mut b = [0u8; 32];
                rng.fill(&mut b).map_err(|_| anyhow::anyhow!("system random number generator failed"))?;
                Ok(MaskSeed::from_bytes(b))
            })
            .collect::<Result<_>>()?,
    };

    // One baseline for both phases: the resident set with the bench's buffers and every
    // client's setup state in place, before any masked vector exists.
    let rss = PeakRss::baseline();
    let measure = bar((2 * n - k + 2) as u64, "measuring: nodes mask, the coordinator adds and unmasks");
    let a = run_round(plain, &mut bufs, &rss, &measure)?;
    let b = run_round(with_drops, &mut bufs, &rss, &measure)?;
    measure.finish_and_clear();

    let u3 = n - k;
    let mut times = vec![TimeRow::new(
        "masking, one node",
        format!("median of {n} nodes; {n} expansions of d words; floor: median of {} reps", a.mask_floor.len()),
        median(&a.mask),
        median(&a.mask_floor),
    )];
    for (fig, label, survivors) in
        [(&a, "coordinator, no dropouts".to_string(), n), (&b, format!("coordinator, {k} of {n} dropped"), u3)]
    {
        let pairwise = fig.dropped * survivors;
        times.push(TimeRow::new(
            &label,
            format!("total: new + add + close + finish ({} expansions)", survivors + pairwise),
            fig.new + fig.add + fig.finish,
            fig.zero + fig.add_floor + fig.finish_floor,
        ));
        times.push(TimeRow::new(
            &format!("  adding {survivors} masked vectors"),
            "Aggregator::new + add_masked; floor: allocate and touch a zeroed sum, add the same vectors".to_string(),
            fig.new + fig.add,
            fig.zero + fig.add_floor,
        ));
        let what = if fig.dropped == 0 {
            format!("{survivors} self masks")
        } else {
            format!("{survivors} self + {}×{survivors} pairwise masks", fig.dropped)
        };
        times.push(TimeRow::new(
            &format!("  close + finish: {what}"),
            "Shamir reconstruction, key agreement, expansions; floor: the expansions".to_string(),
            fig.finish,
            fig.finish_floor,
        ));
    }
    let floor_bytes = 2 * width.bytes() as u64 * d as u64;
    let memory = vec![
        MemRow::new("coordinator, no dropouts".to_string(), a.peak_rss, floor_bytes),
        MemRow::new(format!("coordinator, {k} of {n} dropped"), b.peak_rss, floor_bytes),
    ];
    Ok(Report {
        n,
        d,
        t,
        dropped: k,
        width: width.bits(),
        prg: format!(
            "{PRG}, {}-bit words over Z_2^{}, {threads} threads (prg::expand_many_into)",
            width.bits(),
            width.bits()
        ),
        threads,
        memory_measure: "resident set, not a heap count: peak RSS during the phase (VmHWM, reset through \
                         /proc/self/clear_refs just before Aggregator::new, read after finish) minus RSS after setup; \
                         counts the one masked vector in flight; floor = running sum + one vector in flight = 2·(width/8)·d bytes",
        times,
        memory,
        sums_verified: true,
    })
}

/// One round after rounds 0 and 1: every node of U1 shared (U2 = U1); the survivors
/// received their shares and are ready to mask; the dropped nodes vanished after
/// sharing.
struct Round {
    params: RoundParams,
    u1: Vec<PeerKeys>,
    u2: Vec<String>,
    /// (roster position, state) of each survivor, in roster order.
    ready: Vec<(usize, ClientReady)>,
}

fn node_name(i: usize, n: usize) -> String {
    let w = n.saturating_sub(1).max(1).to_string().len();
    format!("node-{i:0w$}")
}

fn setup_round(
    n: usize,
    t: usize,
    d: usize,
    width: WordWidth,
    dropped: &BTreeSet<usize>,
    rng: &dyn SecureRandom,
    pb: &ProgressBar,
) -> Result<Round> {
    let params = RoundParams { round: RoundId::random(rng)?, t, d, width };
    let names: Vec<String> = (0..n).map(|i| node_name(i, n)).collect();
    let mut advertised = Vec::with_capacity(n);
    let mut u1 = Vec::with_capacity(n);
    for name in &names {
        let (c, keys) = ClientAdvertised::new(params.clone(), name, rng)?;
        advertised.push(c);
        u1.push(keys);
        pb.inc(1);
    }
    let mut inbox: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); n];
    let mut shared = Vec::with_capacity(n);
    for (i, c) in advertised.into_iter().enumerate() {
        let (state, out) = c.share(u1.clone(), rng)?;
        for (to, ct) in out {
            let j = names.binary_search(&to).map_err(|_| anyhow::anyhow!("share addressed to unknown {to}"))?;
            inbox[j].push((names[i].clone(), ct));
        }
        shared.push(state);
        pb.inc(1);
    }
    let u2 = names;
    let mut ready = Vec::with_capacity(n - dropped.len());
    for (i, state) in shared.into_iter().enumerate() {
        if !dropped.contains(&i) {
            ready.push((i, state.receive(&u2, &inbox[i])?));
        }
        pb.inc(1);
    }
    Ok(Round { params, u1, u2, ready })
}

struct Buffers {
    /// The input of the node being masked (regenerated per node, never reallocated).
    input: Vec<u64>,
    /// Σ x_u over the survivors, to check the unmasked sum.
    expected: Vec<u64>,
    /// The floor's running sum.
    floor_sum: Words,
    /// The masking floor's output.
    floor_mask: Words,
    seeds: Vec<MaskSeed>,
}

/// Node i's input: full-range words of `width`, different for every node and position.
fn fill_input(i: usize, x: &mut [u64], width: WordWidth) {
    let a = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for (j, w) in x.iter_mut().enumerate() {
        *w = (a ^ (j as u64).wrapping_mul(0xD1B5_4A32_D192_ED03).rotate_left(17)) & width.max_word();
    }
}

/// The expected sum's addition (plain, 64-bit; reduced to the width at the end).
fn add_into(acc: &mut [u64], v: &[u64]) {
    for (a, b) in acc.iter_mut().zip(v) {
        *a = a.wrapping_add(*b);
    }
}

/// The floor's copy of the input into a vector of the round's width.
fn copy_plain(dst: &mut Words, src: &[u64]) {
    match dst {
        Words::W32(v) => v.iter_mut().zip(src).for_each(|(a, b)| *a = *b as u32),
        Words::W64(v) => v.copy_from_slice(src),
    }
}

/// `count` expansions of `acc.len()` words into `acc`, cycling through the seeds, in
/// one call of the same parallel expansion the measured code makes (same threads).
fn expand_n(seeds: &[MaskSeed], count: usize, acc: &mut Words, sign: Sign) {
    let refs: Vec<(&MaskSeed, Sign)> = seeds.iter().cycle().take(count).map(|s| (s, sign)).collect();
    match acc {
        Words::W32(v) => prg::expand_many_into(&refs, v),
        Words::W64(v) => prg::expand_many_into(&refs, v),
    }
    black_box(acc);
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t0 = Instant::now();
    let out = f();
    (out, t0.elapsed())
}

/// Figures of one round.
struct RoundFigures {
    dropped: usize,
    /// Each survivor's `ClientReady::mask`.
    mask: Vec<Duration>,
    mask_floor: Vec<Duration>,
    /// `Aggregator::new`.
    new: Duration,
    /// Σ `add_masked`.
    add: Duration,
    /// `close` + `survivors`/`dropped` + `finish`.
    finish: Duration,
    /// Floor: zeroing a d-word sum.
    zero: Duration,
    /// Floor: Σ adding the same vectors into it.
    add_floor: Duration,
    /// Floor: the expansions `finish` makes (mean of one run before and one after).
    finish_floor: Duration,
    peak_rss: Option<u64>,
}

fn run_round(round: Round, bufs: &mut Buffers, rss: &PeakRss, pb: &ProgressBar) -> Result<RoundFigures> {
    let Round { params, u1, u2, ready } = round;
    let width = params.width;
    let n = u1.len();
    let survivors = ready.len();
    let dropped = u2.len() - survivors;
    let mask_expansions = u2.len(); // 1 self mask + (|U2| − 1) pairwise masks
    let finish_expansions = survivors + dropped * survivors;
    let floor_every = survivors.div_ceil(MASK_FLOOR_REPS).max(1);
    let mut mask = Vec::with_capacity(survivors);
    let mut mask_floor = Vec::with_capacity(MASK_FLOOR_REPS);
    let mut masked = Vec::with_capacity(survivors);
    let (mut add, mut add_floor) = (Duration::ZERO, Duration::ZERO);
    bufs.expected.fill(0);
    let u1_for_coordinator = u1.clone();

    let reset = rss.reset_peak();
    let (agg, new) = timed(|| Aggregator::new(params.clone(), u1_for_coordinator, &u2));
    let mut agg = agg?;
    // The floor's running sum is zeroed in place (already resident); the cost of a
    // fresh sum's first-touch page faults, which the coordinator pays, is measured
    // after the memory window closes and added to the floor below.
    match &mut bufs.floor_sum {
        Words::W32(v) => v.fill(0),
        Words::W64(v) => v.fill(0),
    }
    for (k, (i, state)) in ready.into_iter().enumerate() {
        let name = node_name(i, n);
        // Client side (not in the coordinator's figures): make the input, mask it.
        fill_input(i, &mut bufs.input, width);
        add_into(&mut bufs.expected, &bufs.input);
        if k % floor_every == 0 && mask_floor.len() < MASK_FLOOR_REPS {
            let ((), f) = timed(|| {
                copy_plain(&mut bufs.floor_mask, &bufs.input);
                expand_n(&bufs.seeds, mask_expansions, &mut bufs.floor_mask, Sign::Add);
            });
            mask_floor.push(f);
        }
        let (out, m) = timed(|| state.mask(&bufs.input));
        let (client, y) = out?;
        mask.push(m);
        // Coordinator side, beside its floor (same vector into another sum); the order
        // alternates so neither side always finds y warm in cache.
        let coord = |agg: &mut Aggregator| timed(|| agg.add_masked(&name, &y));
        // The floor adds with the same `Words::add_assign` (same threads), without the
        // coordinator's checks.
        let floor = |sum: &mut Words| {
            let (r, f) = timed(|| sum.add_assign(&y));
            r.map(|()| f)
        };
        if k % 2 == 0 {
            let (r, c) = coord(&mut agg);
            r?;
            add += c;
            add_floor += floor(&mut bufs.floor_sum)?;
        } else {
            add_floor += floor(&mut bufs.floor_sum)?;
            let (r, c) = coord(&mut agg);
            r?;
            add += c;
        }
        masked.push((name, client));
        pb.inc(1);
    }
    black_box(&bufs.floor_sum);

    let ((), floor_before) = timed(|| expand_n(&bufs.seeds, finish_expansions, &mut bufs.floor_sum, Sign::Sub));
    let ((unmasking, u3, gone), close) = timed(|| {
        let u = agg.close();
        let (s, d) = (u.survivors(), u.dropped());
        (u, s, d)
    });
    // Client side: each survivor answers the unmask request (not timed).
    let responses: Vec<(String, Vec<Revealed>)> =
        masked.into_iter().map(|(name, c)| Ok((name, c.unmask(&u3, &gone)?))).collect::<Result<_>>()?;
    let (sum, fin) = timed(|| unmasking.finish(&responses));
    let sum = sum?;
    let peak_rss = if reset { rss.peak_growth() } else { None };
    // Floor of a fresh running sum: allocate d zeroed words and touch every page once,
    // as Aggregator::new and the first add_masked do.
    let ((), zero) = timed(|| {
        let mut fresh = Words::zeros(width, bufs.floor_sum.len());
        match &mut fresh {
            Words::W32(v) => v.iter_mut().step_by(1024).for_each(|w| *w = 1),
            Words::W64(v) => v.iter_mut().step_by(512).for_each(|w| *w = 1),
        }
        black_box(&fresh);
    });
    let ((), floor_after) = timed(|| expand_n(&bufs.seeds, finish_expansions, &mut bufs.floor_sum, Sign::Sub));
    pb.inc(1);

    ensure!(gone.len() == dropped, "the coordinator counted {} dropped, expected {dropped}", gone.len());
    bufs.expected.iter_mut().for_each(|w| *w &= width.max_word());
    if sum != bufs.expected {
        bail!(
            "secure aggregation returned a wrong sum ({survivors} survivors, {dropped} dropped): masks did not cancel"
        );
    }
    Ok(RoundFigures {
        dropped,
        mask,
        mask_floor,
        new,
        add,
        finish: close + fin,
        zero,
        add_floor,
        finish_floor: (floor_before + floor_after) / 2,
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
/// but also the client's masked vector in flight (made by `ClientReady::mask`
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

impl TimeRow {
    fn new(phase: &str, detail: String, time: Duration, floor: Duration) -> Self {
        let (time_ms, floor_ms) = (ms(time), ms(floor));
        Self { phase: phase.to_string(), detail, time_ms, floor_ms, ratio: ratio(time_ms, floor_ms) }
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

/// Milliseconds with three significant digits or more.
fn fmt_ms(x: f64) -> String {
    match x {
        x if x < 10.0 => format!("{x:.3}"),
        x if x < 100.0 => format!("{x:.2}"),
        x => format!("{x:.1}"),
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}×")).unwrap_or_else(|| "-".into())
}

/// The human-readable report.
pub fn table(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let _ = writeln!(s, "fedcrm bench secagg — measured, never asserted");
    let _ = writeln!(
        s,
        "  n = {} nodes, d = {} words ({:.1} MiB per vector), t = {}, dropout case: {} of {} dropped after sharing keys",
        r.n,
        r.d,
        mib(r.width as u64 / 8 * r.d as u64),
        r.t,
        r.dropped,
        r.n
    );
    let _ = writeln!(s, "  PRG: {}, for the measured code and its floor alike", r.prg);
    let _ = writeln!(
        s,
        "  floor: the same number of PRG bytes expanded with prg::expand_many_into (same threads) and the same vectors added, same run"
    );
    let _ = writeln!(s, "  coordinator times exclude the clients' work (masking, answering the unmask request)");
    let _ = writeln!(s);
    let _ = writeln!(s, "{:<52} {:>10} {:>10} {:>8}", "phase", "time ms", "floor ms", "ratio");
    for row in &r.times {
        let (t, f, q) = (fmt_ms(row.time_ms), fmt_ms(row.floor_ms), fmt_ratio(row.ratio));
        let _ = writeln!(s, "{:<52} {t:>10} {f:>10} {q:>8}", row.phase);
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<52} {:>10} {:>10} {:>8}",
        "coordinator's peak memory (RSS growth)", "peak MiB", "floor MiB", "ratio"
    );
    for row in &r.memory {
        let peak = row.peak_bytes.map(|b| format!("{:.1}", mib(b))).unwrap_or_else(|| "n/a".into());
        let _ =
            writeln!(s, "{:<52} {:>10} {:>10.1} {:>8}", row.phase, peak, mib(row.floor_bytes), fmt_ratio(row.ratio));
    }
    let mut line = String::from("  memory:");
    for word in r.memory_measure.split_whitespace() {
        if line.len() + 1 + word.len() > 100 {
            let _ = writeln!(s, "{line}");
            line = String::from("   ");
        }
        line.push(' ');
        line.push_str(word);
    }
    let _ = writeln!(s, "{line}");
    let _ = writeln!(s);
    let over: Vec<&str> = r
        .times
        .iter()
        .filter(|x| x.ratio.is_some_and(|q| q >= GOAL_RATIO))
        .map(|x| x.phase.trim())
        .chain(r.memory.iter().filter(|x| x.ratio.is_some_and(|q| q >= GOAL_RATIO)).map(|x| x.phase.trim()))
        .collect();
    if over.is_empty() {
        let _ = writeln!(s, "goal (every ratio under {GOAL_RATIO}×): met");
    } else {
        let _ = writeln!(s, "goal (every ratio under {GOAL_RATIO}×): not met for {}", over.join("; "));
    }
    let _ = writeln!(s, "unmasked sums equal the plain sums of the survivors' inputs: {}", r.sums_verified);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bench_completes_and_checks_its_sums() {
        secagg(5, 1000, 0.2, BenchWidth::Auto, true).unwrap();
        secagg(5, 1001, 0.2, BenchWidth::Fixed(WordWidth::W64), true).unwrap();
    }

    #[test]
    fn auto_width_is_what_a_count_round_gets() {
        assert_eq!(BenchWidth::Auto.resolve(50).unwrap(), WordWidth::W32);
        assert_eq!(BenchWidth::Auto.resolve(1023).unwrap(), WordWidth::W32);
        assert_eq!(BenchWidth::Auto.resolve(1024).unwrap(), WordWidth::W64);
        assert_eq!("64".parse::<BenchWidth>().unwrap().resolve(50).unwrap(), WordWidth::W64);
        assert_eq!("32".parse::<BenchWidth>().unwrap(), BenchWidth::Fixed(WordWidth::W32));
        assert!("16".parse::<BenchWidth>().unwrap_err().contains("32, 64 or auto"));
    }

    #[test]
    fn report_has_every_row() {
        let r = run(10, 300, 0.2, WordWidth::W32).unwrap();
        assert_eq!((r.n, r.d, r.t, r.dropped, r.width), (10, 300, 7, 2, 32));
        assert!(r.prg.contains("32-bit words"), "{}", r.prg);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["width"], 32);
        assert_eq!(r.times.len(), 7);
        assert_eq!(r.memory.len(), 2);
        assert!(r.sums_verified);
        let text = table(&r);
        assert!(text.contains("masking, one node") && text.contains("2 of 10 dropped"), "{text}");
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
        assert!(run(6, 10, 0.5, WordWidth::W64).is_err());
        assert!(run(5, 10, 1.0, WordWidth::W32).is_err());
    }
}
