//! The cross-channel overlap matrix as HQ's analyst sees it (issue 12): the figures a
//! PSI run released — each channel's noised customer count and each pair's noised
//! intersection count — checked, turned into Jaccard and containment ratios, and shown
//! as a table, JSON, CSV and a heat-map (`overlap/heatmap.rs`).
//!
//! Pure presentation: no networking, no protocol. It never sees an identifier or an
//! exact count, only what the comparing nodes released; the PSI itself (ECDH over
//! ristretto255, the comparing node's noise) is `fedcrm_crypto::psi` and the nodes'.
//! Ratios follow the usual definitions: Jaccard |A ∩ B| / |A ∪ B| with
//! |A ∪ B| = |A| + |B| − |A ∩ B|, containment |A ∩ B| / |A|.

mod heatmap;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use unicode_width::UnicodeWidthStr;

use crate::hq::csv_field;
pub use heatmap::{HeatMetric, write_heatmap};

/// What a PSI run released for HQ: the input of [`OverlapView::new`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OverlapRelease {
    /// The PSI run's id.
    pub run: String,
    /// The participating channels, in the order the matrix shows them.
    pub channels: Vec<ChannelSize>,
    /// The compared pairs; a pair not listed was not compared in this run.
    pub pairs: Vec<PairOverlap>,
    /// How the counts were noised; `None` when the release does not say.
    pub noise: Option<NoiseSummary>,
}

/// Whose channel a node serves.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// One of HQ's own channels (HQ's channels count as one organisation).
    Hq,
    Franchisee,
}

impl ChannelKind {
    fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Hq => "hq",
            ChannelKind::Franchisee => "franchisee",
        }
    }
}

/// One channel: a node and the size of its customer set as the node released it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChannelSize {
    /// The node's name (an ASCII DNS name, its certificate's CN).
    pub node: String,
    /// The organisation running it (its certificate's O; may be Chinese).
    pub organisation: String,
    pub kind: ChannelKind,
    /// The noised set size the node released; `None`: withheld. Noise can make it
    /// negative; it is kept as released.
    pub customers: Option<f64>,
    /// The standard deviation of that noise, when the node stated it.
    pub sd: Option<f64>,
}

/// One compared pair of channels.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PairOverlap {
    pub a: String,
    pub b: String,
    /// The noised intersection size; `None`: withheld (below the release threshold).
    pub shared: Option<f64>,
    /// The standard deviation of that noise.
    pub sd: Option<f64>,
    /// The node that compared the two lists (one of `a`, `b`; never HQ's when a
    /// franchisee takes part): the only party that saw the exact count.
    pub comparer: String,
    /// Segment profile: 16 released counts, row-major, the row `a`'s RFM segment, the
    /// column `b`'s (high-value, potential, dormant, other); `None` in a cell: withheld.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<Vec<Option<f64>>>,
}

/// How the released counts were noised.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NoiseSummary {
    /// Differential privacy on: every count carries discrete Gaussian noise.
    pub dp: bool,
    pub epsilon: Option<f64>,
    pub delta: Option<f64>,
}

impl OverlapRelease {
    /// What the coordinator's `RunOverlap` released, as this module shows it.
    pub fn from_reply(r: &fedcrm_protocol::pb::OverlapReleased) -> Self {
        let dp = r.noise_variance_num > 0 && r.noise_variance_den > 0;
        let sd = dp.then_some(r.noise_sd);
        OverlapRelease {
            run: r.run_id.clone(),
            channels: r
                .channels
                .iter()
                .map(|c| ChannelSize {
                    node: c.node.clone(),
                    organisation: c.organisation.clone(),
                    kind: if c.kind == "hq" { ChannelKind::Hq } else { ChannelKind::Franchisee },
                    customers: (!c.withheld).then_some(c.customers as f64),
                    sd,
                })
                .collect(),
            pairs: r
                .pairs
                .iter()
                .map(|p| PairOverlap {
                    a: p.a.clone(),
                    b: p.b.clone(),
                    shared: (!p.withheld).then_some(p.shared as f64),
                    sd,
                    comparer: p.comparer.clone(),
                    segments: (p.segments.len() == 16).then(|| {
                        p.segments.iter().zip(&p.segments_withheld).map(|(&c, &w)| (!w).then_some(c as f64)).collect()
                    }),
                })
                .collect(),
            noise: Some(NoiseSummary { dp, epsilon: dp.then_some(r.epsilon), delta: dp.then_some(r.delta) }),
        }
    }
}

/// A release that cannot be shown, or a heat-map that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OverlapError {
    #[error("run {run}: channel {node} is listed twice")]
    DuplicateChannel { run: String, node: String },
    #[error("run {run}: pair {a}–{b} names {node}, which is not a channel of the run")]
    UnknownChannel { run: String, a: String, b: String, node: String },
    #[error("run {run}: pair {a}–{a} pairs a channel with itself")]
    SelfPair { run: String, a: String },
    #[error("run {run}: pair {a}–{b} is listed twice")]
    DuplicatePair { run: String, a: String, b: String },
    #[error("run {run}: pair {a}–{b} was compared by {comparer}, which is neither of the two")]
    ComparerOutsidePair { run: String, a: String, b: String, comparer: String },
    #[error(
        "run {run}: pair {a}–{b} was compared by HQ's channel {comparer} although franchisee {other} takes \
         part; the franchisee's side compares, so HQ never holds an exact count"
    )]
    HqCompared { run: String, a: String, b: String, comparer: String, other: String },
    #[error("run {run}: {what} is {value}, not a finite number")]
    NotFinite { run: String, what: String, value: f64 },
    #[error("run {run}: {what} is {value}; a standard deviation is never negative")]
    NegativeSd { run: String, what: String, value: f64 },
    #[error("run {run}: noise: {what} is {value}, outside {range}")]
    BadNoise { run: String, what: &'static str, value: f64, range: &'static str },
    #[error("heat-map {path}: drawing failed: {reason}")]
    Draw { path: PathBuf, reason: String },
    #[error("heat-map {path}: encoding the png failed")]
    Encode {
        path: PathBuf,
        #[source]
        source: png::EncodingError,
    },
    #[error("heat-map {path}: writing failed")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("heat-map: the vendored font assets/fonts/DejaVuSans-ascii.ttf does not parse")]
    Font,
}

/// The overlap matrix, checked, with its ratios: what `--json` prints (the field names
/// are stable) and what the table, CSV and heat-map show.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OverlapView {
    pub run: String,
    pub channels: Vec<ChannelSize>,
    pub pairs: Vec<PairRow>,
    /// Channels × channels in the order of `channels`: the diagonal is each channel's
    /// size, the rest the shared counts (symmetric).
    pub matrix: Vec<Vec<MatrixCell>>,
    pub noise: Option<NoiseSummary>,
}

/// One pair with its ratios.
///
/// The released counts are shown as released, unclamped: noise can make one negative,
/// or a shared count larger than a channel. The ratios are computed from the counts
/// clamped at 0 and are themselves clamped into [0, 1], since noise can push the raw
/// ratio outside; each is `None` when a count it needs is withheld or its denominator
/// is ≤ 0.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PairRow {
    pub a: String,
    pub b: String,
    /// The noised shared count as released; `None`: withheld.
    pub shared: Option<f64>,
    pub sd: Option<f64>,
    /// |A ∩ B| / |A ∪ B|.
    pub jaccard: Option<f64>,
    /// |A ∩ B| / |A|: the share of A's customers who are also B's.
    pub a_in_b: Option<f64>,
    /// |A ∩ B| / |B|: the share of B's customers who are also A's.
    pub b_in_a: Option<f64>,
    /// The node that compared (and noised) the count.
    pub comparer: String,
    /// Segment profile, as released ([`PairOverlap::segments`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<Vec<Option<f64>>>,
}

/// One cell of the matrix.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cell", rename_all = "snake_case", deny_unknown_fields)]
pub enum MatrixCell {
    /// A released (noised) count and its noise's standard deviation.
    Released { count: f64, sd: Option<f64> },
    /// Withheld by the release rules: never 0, which would read as "no customers".
    Withheld,
    /// The pair was not compared in this run.
    NotCompared,
}

/// A ratio from counts clamped at 0, itself clamped into [0, 1]; `None` for a
/// denominator ≤ 0.
fn ratio(num: f64, den: f64) -> Option<f64> {
    (den > 0.0).then(|| (num.max(0.0) / den).clamp(0.0, 1.0))
}

impl OverlapView {
    /// Checks a release and computes its ratios and matrix.
    pub fn new(r: &OverlapRelease) -> Result<Self, OverlapError> {
        let run = || r.run.clone();
        let finite = |what: String, x: Option<f64>| match x {
            Some(value) if !value.is_finite() => Err(OverlapError::NotFinite { run: run(), what, value }),
            _ => Ok(()),
        };
        let sd = |what: String, x: Option<f64>| {
            finite(what.clone(), x)?;
            match x {
                Some(value) if value < 0.0 => Err(OverlapError::NegativeSd { run: run(), what, value }),
                _ => Ok(()),
            }
        };
        let mut index = BTreeMap::new();
        for (i, c) in r.channels.iter().enumerate() {
            if index.insert(c.node.as_str(), i).is_some() {
                return Err(OverlapError::DuplicateChannel { run: run(), node: c.node.clone() });
            }
            finite(format!("channel {}'s customer count", c.node), c.customers)?;
            sd(format!("channel {}'s sd", c.node), c.sd)?;
        }
        if let Some(n) = &r.noise {
            for (what, x, ok, range) in [
                ("epsilon", n.epsilon, n.epsilon.is_none_or(|e| e.is_finite() && e > 0.0), "(0, ∞)"),
                ("delta", n.delta, n.delta.is_none_or(|d| (0.0..1.0).contains(&d)), "[0, 1)"),
            ] {
                if let (false, Some(value)) = (ok, x) {
                    return Err(OverlapError::BadNoise { run: run(), what, value, range });
                }
            }
        }
        let n = r.channels.len();
        let mut matrix: Vec<Vec<MatrixCell>> = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| match (i == j, r.channels[i].customers) {
                        (true, Some(count)) => MatrixCell::Released { count, sd: r.channels[i].sd },
                        (true, None) => MatrixCell::Withheld,
                        (false, _) => MatrixCell::NotCompared,
                    })
                    .collect()
            })
            .collect();
        let mut seen = BTreeSet::new();
        let mut pairs = Vec::with_capacity(r.pairs.len());
        for p in &r.pairs {
            let (a, b) = (p.a.clone(), p.b.clone());
            let lookup = |node: &str| {
                index.get(node).copied().ok_or_else(|| OverlapError::UnknownChannel {
                    run: run(),
                    a: a.clone(),
                    b: b.clone(),
                    node: node.to_string(),
                })
            };
            let (ia, ib) = (lookup(&p.a)?, lookup(&p.b)?);
            if ia == ib {
                return Err(OverlapError::SelfPair { run: run(), a });
            }
            if !seen.insert((ia.min(ib), ia.max(ib))) {
                return Err(OverlapError::DuplicatePair { run: run(), a, b });
            }
            let (ca, cb) = (&r.channels[ia], &r.channels[ib]);
            let (comparer, other) = if p.comparer == p.a {
                (ca, cb)
            } else if p.comparer == p.b {
                (cb, ca)
            } else {
                return Err(OverlapError::ComparerOutsidePair { run: run(), a, b, comparer: p.comparer.clone() });
            };
            // Issue 12: "the non-HQ side compares", so HQ never holds an exact count.
            if comparer.kind == ChannelKind::Hq && other.kind == ChannelKind::Franchisee {
                return Err(OverlapError::HqCompared {
                    run: run(),
                    a,
                    b,
                    comparer: p.comparer.clone(),
                    other: other.node.clone(),
                });
            }
            finite(format!("pair {a}–{b}'s shared count"), p.shared)?;
            sd(format!("pair {a}–{b}'s sd"), p.sd)?;
            let cell = match p.shared {
                Some(count) => MatrixCell::Released { count, sd: p.sd },
                None => MatrixCell::Withheld,
            };
            matrix[ia][ib] = cell;
            matrix[ib][ia] = cell;
            let (size_a, size_b) = (ca.customers.map(|x| x.max(0.0)), cb.customers.map(|x| x.max(0.0)));
            let s = p.shared.map(|x| x.max(0.0));
            let of = |size: Option<f64>| ratio(s?, size?);
            let jaccard = s.zip(size_a).zip(size_b).and_then(|((s, x), y)| ratio(s, x + y - s));
            pairs.push(PairRow {
                jaccard,
                a_in_b: of(size_a),
                b_in_a: of(size_b),
                a,
                b,
                shared: p.shared,
                sd: p.sd,
                comparer: p.comparer.clone(),
                segments: p.segments.clone(),
            });
        }
        Ok(Self { run: r.run.clone(), channels: r.channels.clone(), pairs, matrix, noise: r.noise.clone() })
    }

    /// The position of a channel in `channels` (and the matrix).
    pub fn position(&self, node: &str) -> Option<usize> {
        self.channels.iter().position(|c| c.node == node)
    }

    fn channel(&self, node: &str) -> Option<&ChannelSize> {
        self.channels.iter().find(|c| c.node == node)
    }

    /// True when the counts carry differential-privacy noise.
    pub fn noised(&self) -> bool {
        self.noise.as_ref().is_some_and(|n| n.dp)
    }
}

/// A count for reading: whole numbers without decimals, others with one (the CSV and
/// JSON carry every digit).
fn count(x: f64) -> String {
    let s = format!("{x:.1}");
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

fn with_sd(x: f64, sd: Option<f64>) -> String {
    match sd {
        Some(sd) => format!("{} ± {}", count(x), count(sd)),
        None => count(x),
    }
}

fn percent(x: Option<f64>) -> String {
    x.map(|x| format!("{:.1} %", 100.0 * x)).unwrap_or_else(|| "n/a".into())
}

fn cell_text(c: &MatrixCell) -> String {
    match c {
        MatrixCell::Released { count: x, .. } => count(*x),
        MatrixCell::Withheld => "withheld".into(),
        MatrixCell::NotCompared => "not compared".into(),
    }
}

/// Aligned columns by display width (Chinese organisation names are two columns a
/// character); the last column is not padded.
fn aligned(rows: &[Vec<String>], right: &[bool]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.width());
        }
    }
    let mut s = String::new();
    for r in rows {
        let mut line = String::from(" ");
        for (i, c) in r.iter().enumerate() {
            let pad = " ".repeat(widths[i] - c.width());
            line.push(' ');
            if right.get(i).copied().unwrap_or(false) {
                line.push_str(&pad);
                line.push_str(c);
            } else {
                line.push_str(c);
                if i + 1 < r.len() {
                    line.push_str(&pad);
                }
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

/// The noise in words, for the table's closing lines.
fn noise_words(v: &OverlapView) -> String {
    match &v.noise {
        Some(n) if n.dp => {
            let eps = n.epsilon.map(|e| format!("ε = {e}")).unwrap_or_else(|| "ε not stated".into());
            let delta = n.delta.map(|d| format!(", δ = {d:e}")).unwrap_or_default();
            format!(
                "differential privacy: every count carries discrete Gaussian noise ({eps}{delta}); ± is one \
                 standard deviation of it"
            )
        }
        Some(_) => "exact (dp off): the counts carry no noise".into(),
        None => "the release does not say how its counts were noised".into(),
    }
}

/// One pair's segment profile as a 4 × 4 table (rows: segment in A; columns: in B).
fn segment_profile(p: &PairRow) -> String {
    const NAMES: [&str; 4] = ["high-value", "potential", "dormant", "other"];
    let Some(cells) = &p.segments else { return String::new() };
    let mut rows = vec![std::iter::once(format!("{} \\ {}", p.a, p.b)).chain(NAMES.map(String::from)).collect()];
    for (i, name) in NAMES.iter().enumerate() {
        let mut row = vec![name.to_string()];
        for j in 0..4 {
            row.push(cells.get(i * 4 + j).copied().flatten().map_or_else(|| "withheld".into(), |c| format!("{c:.0}")));
        }
        rows.push(row);
    }
    format!(
        "\n  shared customers of {} and {} by RFM segment (rows: in {}, columns: in {}; the comparer {} saw the exact table)\n{}",
        p.a,
        p.b,
        p.a,
        p.b,
        p.comparer,
        aligned(&rows, &[false, true, true, true, true])
    )
}

/// `hq overlap` as a table: the channels, the matrix of shared counts (the diagonal is
/// each channel's own size), the pairs with their ratios, who compared each pair, and
/// how the counts were noised; a segment profile's tables.
pub fn overlap_table(v: &OverlapView) -> String {
    let mut s = format!("customer overlap across {} channel(s), PSI run {}\n\n", v.channels.len(), v.run);
    let mut rows = vec![["node", "organisation", "kind", "customers"].map(String::from).to_vec()];
    for c in &v.channels {
        rows.push(vec![
            c.node.clone(),
            c.organisation.clone(),
            c.kind.as_str().into(),
            c.customers.map(|x| with_sd(x, c.sd)).unwrap_or_else(|| "withheld".into()),
        ]);
    }
    s.push_str(&aligned(&rows, &[false, false, false, true]));

    s.push_str("\n  shared customers (the diagonal: the channel's own customers)\n");
    let mut rows = vec![std::iter::once(String::new()).chain(v.channels.iter().map(|c| c.node.clone())).collect()];
    for (c, cells) in v.channels.iter().zip(&v.matrix) {
        rows.push(std::iter::once(c.node.clone()).chain(cells.iter().map(cell_text)).collect());
    }
    let right: Vec<bool> = (0..=v.channels.len()).map(|i| i > 0).collect();
    s.push_str(&aligned(&rows, &right));

    s.push_str("\n  pairs (A in B: the share of A's customers who are also B's)\n");
    let mut rows = vec![["A", "B", "shared", "jaccard", "A in B", "B in A", "compared on"].map(String::from).to_vec()];
    for p in &v.pairs {
        rows.push(vec![
            p.a.clone(),
            p.b.clone(),
            p.shared.map(|x| with_sd(x, p.sd)).unwrap_or_else(|| "withheld".into()),
            p.jaccard.map(|j| format!("{j:.3}")).unwrap_or_else(|| "n/a".into()),
            percent(p.a_in_b),
            percent(p.b_in_a),
            p.comparer.clone(),
        ]);
    }
    s.push_str(&aligned(&rows, &[false, false, true, true, true, true, false]));

    s.push('\n');
    for p in &v.pairs {
        let both_hq = [&p.a, &p.b].iter().all(|n| v.channel(n).is_some_and(|c| c.kind == ChannelKind::Hq));
        let what = if both_hq {
            "both channels are HQ's own".to_string()
        } else if p.shared.is_none() && v.noised() {
            "withheld: its noised count is below HQ's release threshold".to_string()
        } else if p.shared.is_none() {
            "withheld: below the comparing node's minimum for exact counts (it sent no value) or HQ's release \
             threshold"
                .to_string()
        } else if v.noised() {
            "HQ received only the noised count and never sees an exact one".to_string()
        } else {
            "HQ received the count it released (dp off: exact)".to_string()
        };
        s.push_str(&format!("  {}–{}: compared on {}; {what}\n", p.a, p.b, p.comparer));
    }
    for p in v.pairs.iter().filter(|p| p.segments.is_some()) {
        s.push_str(&segment_profile(p));
    }
    s.push_str(&format!("  {}\n", noise_words(v)));
    s.push_str(
        "  withheld: below HQ's release threshold (min_cohort) or, for exact counts, the releasing node's own \
         [policy.psi] min_exact_count (the node sends no value); a segment profile withholds more cells so none \
         follows from the others and the total; never 0; n/a: a count it needs is withheld, or noise left its \
         denominator ≤ 0; ratios are clamped into [0, 1] (noise can push them outside), counts are shown as \
         released\n",
    );
    s
}

/// `hq overlap --csv`: a header, then one row per pair. A withheld count, or a ratio
/// that cannot be computed, is an empty field; figures carry every digit.
pub fn overlap_csv(v: &OverlapView) -> String {
    let mut s = String::from(
        "run,a,b,organisation_a,organisation_b,customers_a,customers_b,shared,shared_sd,jaccard,a_in_b,b_in_a,\
         comparer\n",
    );
    let num = |x: Option<f64>| x.map(|x| format!("{x:?}")).unwrap_or_default();
    for p in &v.pairs {
        let (a, b) = (v.channel(&p.a), v.channel(&p.b));
        let org = |c: Option<&ChannelSize>| csv_field(c.map(|c| c.organisation.as_str()).unwrap_or(""));
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            csv_field(&v.run),
            csv_field(&p.a),
            csv_field(&p.b),
            org(a),
            org(b),
            num(a.and_then(|c| c.customers)),
            num(b.and_then(|c| c.customers)),
            num(p.shared),
            num(p.sd),
            num(p.jaccard),
            num(p.a_in_b),
            num(p.b_in_a),
            csv_field(&p.comparer),
        ));
    }
    s
}
