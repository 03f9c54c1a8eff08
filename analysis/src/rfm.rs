//! RFM definitions shared by nodes and the coordinator: metrics, histogram layouts,
//! quintile scores, segments, and the exact-quantile search over secure-aggregated
//! histograms. Pure: no I/O. The README's "RFM definitions" section is this file.
//!
//! Cut points are global exact quantiles: c_k (k = 1..4) is the smallest value v
//! such that at least k/5 of all customers have a value ≤ v. They are found from
//! histograms summed across nodes by secure aggregation: one pass of power-of-two
//! bins, then passes of at most [`REFINE_BINS`] linear bins inside the bin that
//! holds each cut, until bins are one unit wide (one day, one purchase day, one cent).

use serde::Serialize;

/// Linear bins per cut per refinement pass.
pub const REFINE_BINS: u64 = 1024;
/// Bins in the power-of-two layout: value 0, then [2^(i-1), 2^i) for i = 1..=64.
pub const LOG2_BINS: usize = 65;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Days since the last purchase at the reference date.
    Recency,
    /// Distinct purchase days in the window.
    Frequency,
    /// Total spend in the window, in cents.
    Monetary,
}

impl Metric {
    pub const ALL: [Metric; 3] = [Metric::Recency, Metric::Frequency, Metric::Monetary];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Recency => "recency",
            Metric::Frequency => "frequency",
            Metric::Monetary => "monetary",
        }
    }
}

/// One customer's RFM values, computed on the node that holds the customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CustomerRfm {
    pub recency_days: u64,
    pub frequency: u64,
    pub monetary_cents: u64,
}

impl CustomerRfm {
    pub fn value(&self, m: Metric) -> u64 {
        match m {
            Metric::Recency => self.recency_days,
            Metric::Frequency => self.frequency,
            Metric::Monetary => self.monetary_cents,
        }
    }
}

/// How a histogram's bins are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// [`LOG2_BINS`] bins: 0, [1,2), [2,4), … [2^63, 2^64).
    Log2,
    /// `bins` bins of `width` from `lo`; values outside are not counted.
    Linear { lo: u64, width: u64, bins: u32 },
}

/// A histogram of one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistogramSpec {
    pub metric: Metric,
    pub layout: Layout,
}

impl HistogramSpec {
    pub fn len(&self) -> usize {
        match self.layout {
            Layout::Log2 => LOG2_BINS,
            Layout::Linear { bins, .. } => bins as usize,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bin holding `v`, if any.
    pub fn bin_of(&self, v: u64) -> Option<usize> {
        match self.layout {
            Layout::Log2 => Some(if v == 0 { 0 } else { 64 - v.leading_zeros() as usize }),
            Layout::Linear { lo, width, bins } => {
                if v < lo || width == 0 {
                    return None;
                }
                let i = (v - lo) / width;
                (i < bins as u64).then_some(i as usize)
            }
        }
    }

    /// Bin `i` covers `[lo, hi)` (u128 so that the last bin's end fits).
    pub fn bin_range(&self, i: usize) -> (u128, u128) {
        match self.layout {
            Layout::Log2 => {
                if i == 0 {
                    (0, 1)
                } else {
                    (1u128 << (i - 1), 1u128 << i)
                }
            }
            Layout::Linear { lo, width, .. } => {
                let a = lo as u128 + i as u128 * width as u128;
                (a, a + width as u128)
            }
        }
    }
}

/// The most histograms of `specs` one customer can be counted in: per metric, the
/// largest number of histograms whose ranges share a value (a power-of-two histogram
/// covers every value), summed over the metrics. Adding or removing one customer
/// changes exactly that many counts by one at most: the round's ℓ1 sensitivity, and
/// the square of its ℓ2 sensitivity (differential privacy, issue 10).
pub fn max_counted(specs: &[HistogramSpec]) -> usize {
    Metric::ALL
        .iter()
        .map(|&m| {
            // Sweep the [start, end) ranges of this metric's histograms.
            let mut events: Vec<(u128, i64)> = Vec::new();
            for s in specs.iter().filter(|s| s.metric == m && !s.is_empty()) {
                let (lo, _) = s.bin_range(0);
                let (_, hi) = s.bin_range(s.len() - 1);
                events.push((lo, 1));
                events.push((hi, -1));
            }
            // At equal positions ends come first: [a, b) and [b, c) do not overlap.
            events.sort_unstable();
            let (mut open, mut most) = (0i64, 0i64);
            for (_, d) in events {
                open += d;
                most = most.max(open);
            }
            most as usize
        })
        .sum()
}

/// Issue 10: a histogram of noisy signed counts as non-negative counts whose cumulative
/// sums are the running maximum of the noisy cumulative sums (never below 0). Unlike
/// clamping each bin at 0, this adds no positive bias per empty bin: the cumulative
/// count stays within the noise of the true one, plus the running maximum's excess
/// (about σ·√(2b/π) over b empty bins). Post-processing of noised values.
pub fn monotone_counts(signed: &[i64]) -> Vec<u64> {
    let (mut cum, mut top) = (0i128, 0i128);
    signed
        .iter()
        .map(|&c| {
            cum += c as i128;
            let next = top.max(cum);
            let out = (next - top) as u64;
            top = next;
            out
        })
        .collect()
}

/// Add one customer's values to a concatenation of histograms (the round vector).
pub fn accumulate(specs: &[HistogramSpec], c: &CustomerRfm, out: &mut [u64]) {
    let mut base = 0;
    for s in specs {
        if let Some(b) = s.bin_of(c.value(s.metric)) {
            out[base + b] += 1;
        }
        base += s.len();
    }
}

/// F or M score 1..=5: 1 + number of cut points strictly below the value.
pub fn score_up(v: u64, cuts: &[u64; 4]) -> u8 {
    1 + cuts.iter().filter(|&&c| c < v).count() as u8
}

/// R score 1..=5: 5 − number of cut points strictly below the value (recent = high).
pub fn score_recency(v: u64, cuts: &[u64; 4]) -> u8 {
    5 - cuts.iter().filter(|&&c| c < v).count() as u8
}

/// The brand's RFM segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Segment {
    /// 高价值: R ≥ 4, F ≥ 4, M ≥ 4.
    HighValue,
    /// 潜力: R ≥ 4 and (F ≤ 2 or M ≤ 2).
    Potential,
    /// 沉睡: R ≤ 2.
    Dormant,
    /// Everyone else.
    Other,
}

impl Segment {
    /// Order of the segments in a round vector.
    pub const ALL: [Segment; 4] = [Segment::HighValue, Segment::Potential, Segment::Dormant, Segment::Other];

    pub fn name(self) -> &'static str {
        match self {
            Segment::HighValue => "high-value",
            Segment::Potential => "potential",
            Segment::Dormant => "dormant",
            Segment::Other => "other",
        }
    }

    pub fn classify(r: u8, f: u8, m: u8) -> Segment {
        if r >= 4 && f >= 4 && m >= 4 {
            Segment::HighValue
        } else if r >= 4 && (f <= 2 || m <= 2) {
            Segment::Potential
        } else if r <= 2 {
            Segment::Dormant
        } else {
            Segment::Other
        }
    }

    pub fn index(self) -> usize {
        Segment::ALL.iter().position(|&s| s == self).unwrap_or(3)
    }
}

/// Global cut points for the three metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Cuts {
    pub recency: [u64; 4],
    pub frequency: [u64; 4],
    pub monetary: [u64; 4],
}

impl Cuts {
    pub fn segment_of(&self, c: &CustomerRfm) -> Segment {
        Segment::classify(
            score_recency(c.recency_days, &self.recency),
            score_up(c.frequency, &self.frequency),
            score_up(c.monetary_cents, &self.monetary),
        )
    }

    pub fn of(&self, m: Metric) -> &[u64; 4] {
        match m {
            Metric::Recency => &self.recency,
            Metric::Frequency => &self.frequency,
            Metric::Monetary => &self.monetary,
        }
    }
}

/// One cut point being searched: the value lies in `[lo, hi)` and `below`
/// customers have a value < lo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CutState {
    Searching { lo: u128, hi: u128, below: u64 },
    Found(u64),
}

/// Why a quantile search cannot go on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantileError {
    #[error("no customers in the aggregated histogram; nothing to cut")]
    Empty,
    #[error("{metric} histogram totals {got} customers, expected {expected}: nodes changed data mid-analysis")]
    Inconsistent { metric: &'static str, got: u64, expected: u64 },
    #[error("histogram has {got} bins, expected {expected}")]
    Shape { got: usize, expected: usize },
}

/// The exact-quantile search for one metric, driven pass by pass.
#[derive(Debug, Clone)]
pub struct QuantileSearch {
    metric: Metric,
    total: u64,
    cuts: [CutState; 4],
}

impl QuantileSearch {
    /// First pass: the power-of-two histogram of `metric`.
    pub fn coarse_spec(metric: Metric) -> HistogramSpec {
        HistogramSpec { metric, layout: Layout::Log2 }
    }

    /// Start from the summed power-of-two histogram.
    pub fn from_coarse(metric: Metric, hist: &[u64]) -> Result<Self, QuantileError> {
        if hist.len() != LOG2_BINS {
            return Err(QuantileError::Shape { got: hist.len(), expected: LOG2_BINS });
        }
        let total: u64 = hist.iter().sum();
        if total == 0 {
            return Err(QuantileError::Empty);
        }
        let spec = Self::coarse_spec(metric);
        let mut cuts = [CutState::Found(0); 4];
        for (k, cut) in cuts.iter_mut().enumerate() {
            *cut = locate(&spec, hist, 0, total, k as u64 + 1);
        }
        Ok(Self { metric, total, cuts })
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// The refinement histograms still needed (one per unresolved cut), in cut order.
    pub fn next_specs(&self) -> Vec<(usize, HistogramSpec)> {
        self.next_specs_with(REFINE_BINS)
    }

    /// [`Self::next_specs`] with at most `bins` bins per histogram (fewer bins under
    /// differential privacy: the noise of the cumulative count grows with √bins).
    pub fn next_specs_with(&self, max_bins: u64) -> Vec<(usize, HistogramSpec)> {
        self.cuts
            .iter()
            .enumerate()
            .filter_map(|(k, c)| match *c {
                CutState::Searching { lo, hi, .. } => {
                    let span = hi - lo;
                    let bins = span.min(max_bins.max(1) as u128) as u64;
                    let width = span.div_ceil(bins as u128) as u64;
                    Some((
                        k,
                        HistogramSpec {
                            metric: self.metric,
                            layout: Layout::Linear { lo: lo as u64, width, bins: bins as u32 },
                        },
                    ))
                }
                CutState::Found(_) => None,
            })
            .collect()
    }

    /// Apply the summed refinement histogram for cut `k` (as given by [`Self::next_specs`]).
    pub fn refine(&mut self, k: usize, spec: &HistogramSpec, hist: &[u64]) -> Result<(), QuantileError> {
        if hist.len() != spec.len() {
            return Err(QuantileError::Shape { got: hist.len(), expected: spec.len() });
        }
        if let CutState::Searching { below, .. } = self.cuts[k] {
            self.cuts[k] = locate(spec, hist, below, self.total, k as u64 + 1);
            if let CutState::Searching { below: b, .. } = self.cuts[k] {
                // The bin found must sit inside the previous range, so `below` can only grow.
                if b < below {
                    return Err(QuantileError::Inconsistent { metric: self.metric.name(), got: b, expected: below });
                }
            }
        }
        Ok(())
    }

    /// Issue 10: the four cuts as far as the passes so far located them — a found cut,
    /// or for one still being searched the lowest value of its range. Under
    /// differential privacy the number of passes is fixed up front, so the search may
    /// stop before every cut is exact; this is post-processing of noisy counts.
    pub fn estimate(&self) -> [u64; 4] {
        let mut out = [0u64; 4];
        for (o, c) in out.iter_mut().zip(&self.cuts) {
            *o = match *c {
                CutState::Found(v) => v,
                CutState::Searching { lo, .. } => lo.min(u64::MAX as u128) as u64,
            };
        }
        out
    }

    /// All four cuts, once every pass is done.
    pub fn finished(&self) -> Option<[u64; 4]> {
        let mut out = [0u64; 4];
        for (o, c) in out.iter_mut().zip(&self.cuts) {
            match c {
                CutState::Found(v) => *o = *v,
                CutState::Searching { .. } => return None,
            }
        }
        Some(out)
    }
}

/// Find the bin where the running count first reaches k/5 of `total`
/// (5·count ≥ k·total, in exact integers).
fn locate(spec: &HistogramSpec, hist: &[u64], below: u64, total: u64, k: u64) -> CutState {
    let mut cum = below;
    for (i, &c) in hist.iter().enumerate() {
        if 5 * (cum as u128 + c as u128) >= k as u128 * total as u128 && c > 0 {
            let (lo, hi) = spec.bin_range(i);
            return if hi - lo == 1 { CutState::Found(lo as u64) } else { CutState::Searching { lo, hi, below: cum } };
        }
        cum += c;
    }
    // Counts inconsistent with the total (cannot happen with honest nodes): the cut
    // lies beyond every bin; report the top of the range so the caller's check fails.
    let (_, hi) = spec.bin_range(hist.len().saturating_sub(1));
    CutState::Found(hi.min(u64::MAX as u128) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotone_counts_follow_the_running_maximum_of_the_noisy_cumulative() {
        assert_eq!(monotone_counts(&[3, -1, 2, 0, -5, 4]), vec![3, 0, 1, 0, 0, 0]);
        assert_eq!(monotone_counts(&[-2, 1, 3]), vec![0, 0, 2]);
        assert_eq!(monotone_counts(&[5, 6, 7]), vec![5, 6, 7], "exact counts are unchanged");
        // The total is the running maximum of the cumulative, never below 0.
        let noisy = [10i64, -3, -3, 8, -1];
        assert_eq!(monotone_counts(&noisy).iter().sum::<u64>(), 12);
    }

    #[test]
    fn max_counted_is_the_largest_overlap_per_metric_summed() {
        let lin = |metric, lo, width, bins| HistogramSpec { metric, layout: Layout::Linear { lo, width, bins } };
        let coarse: Vec<HistogramSpec> = Metric::ALL.iter().map(|&m| QuantileSearch::coarse_spec(m)).collect();
        assert_eq!(max_counted(&coarse), 3);
        // Two refinements of the same bin (two cuts in it) count a customer twice;
        // adjacent or disjoint windows once.
        let same = [lin(Metric::Monetary, 64, 1, 64), lin(Metric::Monetary, 64, 1, 64)];
        assert_eq!(max_counted(&same), 2);
        let adjacent =
            [lin(Metric::Monetary, 64, 1, 64), lin(Metric::Monetary, 128, 2, 64), lin(Metric::Recency, 0, 1, 8)];
        assert_eq!(max_counted(&adjacent), 2);
        // Brute force over every value agrees.
        let specs =
            [lin(Metric::Frequency, 0, 3, 10), lin(Metric::Frequency, 20, 1, 40), lin(Metric::Frequency, 25, 5, 2)];
        let most = (0..100u64).map(|v| specs.iter().filter(|s| s.bin_of(v).is_some()).count()).max().unwrap();
        assert_eq!(max_counted(&specs), most);
        assert_eq!(most, 3, "values 25..29 are in all three");
    }

    fn pooled_cuts(mut v: Vec<u64>) -> [u64; 4] {
        v.sort_unstable();
        let n = v.len() as u64;
        [1u64, 2, 3, 4].map(|k| v[((k * n).div_ceil(5) - 1) as usize])
    }

    fn search(values: &[u64]) -> [u64; 4] {
        let spec = QuantileSearch::coarse_spec(Metric::Monetary);
        let mut h = vec![0u64; spec.len()];
        for &v in values {
            h[spec.bin_of(v).unwrap()] += 1;
        }
        let mut q = QuantileSearch::from_coarse(Metric::Monetary, &h).unwrap();
        let mut passes = 0;
        while q.finished().is_none() {
            passes += 1;
            assert!(passes < 10, "search did not converge");
            for (k, s) in q.next_specs() {
                let mut h = vec![0u64; s.len()];
                for &v in values {
                    if let Some(b) = s.bin_of(v) {
                        h[b] += 1;
                    }
                }
                q.refine(k, &s, &h).unwrap();
            }
        }
        q.finished().unwrap()
    }

    #[test]
    fn search_matches_sorted_quantiles() {
        let cases: Vec<Vec<u64>> = vec![
            vec![5],
            vec![0, 0, 0, 0, 0, 0, 1],
            (0..1000).collect(),
            (0..997).map(|i| (i * 7919) % 100_003).collect(),
            vec![u64::MAX, 1, u64::MAX - 1, 3, 1 << 40, 7, 7, 7, 7, 7, 7],
        ];
        for c in cases {
            assert_eq!(search(&c), pooled_cuts(c.clone()), "values {c:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn search_equals_pooled(values in proptest::collection::vec(proptest::prelude::any::<u64>(), 1..200),
                                small in proptest::collection::vec(0u64..50, 1..200)) {
            proptest::prop_assert_eq!(search(&values), pooled_cuts(values.clone()));
            proptest::prop_assert_eq!(search(&small), pooled_cuts(small.clone()));
        }
    }

    #[test]
    fn scores_and_segments() {
        let cuts = [10, 20, 30, 40];
        assert_eq!(score_up(10, &cuts), 1);
        assert_eq!(score_up(11, &cuts), 2);
        assert_eq!(score_up(41, &cuts), 5);
        assert_eq!(score_recency(0, &cuts), 5);
        assert_eq!(score_recency(41, &cuts), 1);
        assert_eq!(Segment::classify(5, 4, 4), Segment::HighValue);
        assert_eq!(Segment::classify(4, 2, 5), Segment::Potential);
        assert_eq!(Segment::classify(2, 5, 5), Segment::Dormant);
        assert_eq!(Segment::classify(3, 3, 3), Segment::Other);
        assert_eq!(Segment::classify(4, 3, 3), Segment::Other);
    }
}
