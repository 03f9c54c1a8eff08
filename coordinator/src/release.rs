//! The release door: the only path from a round's aggregate to anything shown to an
//! analyst or sent to nodes. Applies the release rules — minimum contributing
//! nodes, minimum cohort per released cell (smaller cells of the *global* result are
//! suppressed) — and decodes the sums of noised rounds (issue 10: the nodes added
//! distributed discrete Gaussian noise before masking) as two's-complement signed
//! values before applying those rules.
//!
//! **Invariant:** a round's sum is read only here: it travels as an [`UnreleasedSum`],
//! whose words no other module can read (checked by the compiler; see its doctests).

use serde::Serialize;

use fedcrm_analysis::rfm::{Cuts, Segment};

use fedcrm_audit::{Event, Member};
use fedcrm_crypto::CryptoError;
use fedcrm_crypto::multiround::{Reveal, RoundUnmasking};
use fedcrm_crypto::word::WordWidth;

use crate::audit::{SharedLog, record};
use crate::config::ReleaseRules;
use crate::round::RoundOutput;

/// A round's sum, not yet released. Its words are private to this module: every other
/// module, the round that made it included, can hold it and pass it on but not read it,
/// so the only way from a sum to anything shown is a function below that applies the
/// release rules. It is made only by unmasking a secure-aggregation round.
///
/// Code outside this module can hold a sum and print it (the words stay hidden):
///
/// ```
/// use fedcrm_coordinator::release::UnreleasedSum;
///
/// fn hold(sum: &UnreleasedSum) -> String {
///     format!("{sum:?}")
/// }
/// ```
///
/// but not read it — the same code reading the words does not compile, because the
/// field is private:
///
/// ```compile_fail
/// use fedcrm_coordinator::release::UnreleasedSum;
///
/// fn peek(sum: &UnreleasedSum) -> Vec<u64> {
///     sum.words.clone()
/// }
/// ```
///
/// nor make one from words of its choosing — the constructor is private to the crate:
///
/// ```compile_fail
/// use fedcrm_coordinator::release::UnreleasedSum;
/// use fedcrm_crypto::multiround::RoundUnmasking;
///
/// fn forge(unmasking: RoundUnmasking) -> UnreleasedSum {
///     UnreleasedSum::unmask(unmasking, &[], None).unwrap()
/// }
/// ```
pub struct UnreleasedSum {
    words: Vec<u64>,
    /// Issue 10: `Some(width)` when the nodes added noise: the words are then
    /// two's-complement signed in that width.
    noised: Option<WordWidth>,
}

impl UnreleasedSum {
    /// Remove the masks: the only way to make an `UnreleasedSum`. `noised`: the round's
    /// width when its nodes added noise (the sum is then signed), `None` when exact.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 4 (Unmasking), server: z = Σ_{u∈U3} x_u.
    pub(crate) fn unmask(
        unmasking: RoundUnmasking,
        responses: &[(String, Vec<Reveal>)],
        noised: Option<WordWidth>,
    ) -> Result<Self, CryptoError> {
        Ok(Self { words: unmasking.finish(responses)?, noised })
    }

    /// The sum as counts the release rules apply to. An exact round's words as they
    /// are. A noised round's words decoded as two's-complement signed values of its
    /// width (w ≥ 2^(b−1) is w − 2^b), then negative values clamped to 0: a count
    /// is never negative, and clamping is post-processing of a noised value (it costs
    /// no privacy). Every release rule and the quantile search see the clamped counts;
    /// so a negative noisy cell is below any minimum cohort ≥ 1 and suppressed, and
    /// only a minimum cohort of 0 shows it, as 0 (biased upwards, near 0 only).
    fn counts(&self) -> Vec<u64> {
        match self.noised {
            None => self.words.clone(),
            Some(width) => self.words.iter().map(|&w| signed(w, width).max(0) as u64).collect(),
        }
    }

    /// Issue 11: a model round's words as 64-bit two's complement — signed reals, never
    /// clamped (a noised round's sign-extended from its width); decoded by the model's
    /// own encoding or, under DP, its mechanism.
    fn model_words(&self) -> Vec<u64> {
        match self.noised {
            None => self.words.clone(),
            Some(width) => self.words.iter().map(|&w| signed(w, width) as u64).collect(),
        }
    }

    /// The sum for the quantile search: an exact round's counts as they are; a noised
    /// round's made monotone without clamping each bin
    /// ([`fedcrm_analysis::rfm::monotone_counts`]: the running maximum of the noisy
    /// cumulative counts). Clamping every bin at 0 would add the positive part of the
    /// noise of every empty bin to the cumulative count — hundreds of customers over a
    /// wide histogram — and move the cut points.
    /// `lens`: the lengths of the histograms the vector concatenates; each is made
    /// monotone on its own (a running maximum must not carry from one histogram into
    /// the next).
    fn quantile_counts(&self, lens: &[usize]) -> Vec<u64> {
        match self.noised {
            None => self.words.clone(),
            Some(width) => {
                let signed: Vec<i64> = self.words.iter().map(|&w| signed(w, width)).collect();
                let mut out = Vec::with_capacity(signed.len());
                let mut base = 0;
                for &len in lens {
                    out.extend(fedcrm_analysis::rfm::monotone_counts(&signed[base..base + len]));
                    base += len;
                }
                out
            }
        }
    }
}

/// A word of `width` read as two's complement: w ≥ 2^(b−1) stands for w − 2^b.
fn signed(w: u64, width: WordWidth) -> i64 {
    let bits = width.bits();
    if bits >= 64 {
        w as i64
    } else if w >= 1 << (bits - 1) {
        (w as i128 - (1i128 << bits)) as i64
    } else {
        w as i64
    }
}

/// The length only: the words are what this module releases, or does not.
impl std::fmt::Debug for UnreleasedSum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnreleasedSum").field("len", &self.words.len()).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ReleaseError {
    #[error(
        "round {round}: only {have} nodes contributed, fewer than the release minimum of {need}; nothing is released"
    )]
    TooFewParticipants { round: String, have: usize, need: usize },
    #[error("round {round}: aggregate has {got} elements, expected {expected}")]
    Shape { round: String, got: usize, expected: usize },
    #[error("audit log: {0}; nothing is released")]
    Audit(String),
}

/// Record the release — thresholds applied, cells suppressed — before it leaves.
fn log_release(
    out: &RoundOutput,
    rules: &ReleaseRules,
    audit: &SharedLog,
    analysis: &str,
    kind: &str,
    rounds: Vec<String>,
    cells: &[Option<u64>],
) -> Result<(), ReleaseError> {
    let contributors = out
        .contributors
        .iter()
        .zip(&out.organisations)
        .zip(&out.kinds)
        .map(|((n, o), k)| Member { name: n.clone(), organisation: o.clone(), kind: k.as_str().to_string() })
        .collect();
    record(
        audit,
        Event::Release {
            analysis: analysis.to_string(),
            kind: kind.to_string(),
            rounds,
            contributors,
            min_participants: rules.min_participants as u64,
            min_cohort: rules.min_cohort,
            cells: cells.len() as u64,
            suppressed: cells.iter().filter(|c| c.is_none()).count() as u64,
        },
    )
    .map_err(|e| ReleaseError::Audit(e.to_string()))
}

/// The one reader of a round's sum: its counts ([`UnreleasedSum::counts`]: a noised
/// round's decoded as signed, negatives clamped to 0), once the minimum-participants
/// rule passed and only if there are `expected` of them.
fn words(out: &RoundOutput, rules: &ReleaseRules, expected: usize) -> Result<Vec<u64>, ReleaseError> {
    if out.contributors.len() < rules.min_participants {
        return Err(ReleaseError::TooFewParticipants {
            round: out.round.to_hex(),
            have: out.contributors.len(),
            need: rules.min_participants,
        });
    }
    let words = out.sum.counts();
    if words.len() != expected {
        return Err(ReleaseError::Shape { round: out.round.to_hex(), got: words.len(), expected });
    }
    Ok(words)
}

/// Issue 11: a model round's summed fixed-point words, released to the coordinator's
/// own optimizer only (they never leave it; only the trained model and its federated
/// metrics do, through [`model`]). The words are two's-complement reals, decoded by
/// `fedcrm_model` (exact rounds) or `fedcrm_dp::vector::CustomerSum` (noised rounds,
/// whose words are not counts: never clamped at 0).
pub fn model_sums(out: &RoundOutput, rules: &ReleaseRules, expected: usize) -> Result<Vec<u64>, ReleaseError> {
    words(out, rules, expected)?;
    Ok(out.sum.model_words())
}

/// Issue 11: record the release of a trained model of analysis `kind` (its weights and
/// federated metrics go to the registry), after the minimum-participants rule; `cells`
/// is the number of published figures (weights and metrics), none suppressed.
pub fn model(
    out: &RoundOutput,
    rules: &ReleaseRules,
    audit: &SharedLog,
    (analysis, kind): (&str, &str),
    rounds: Vec<String>,
    figures: usize,
) -> Result<(), ReleaseError> {
    if out.contributors.len() < rules.min_participants {
        return Err(ReleaseError::TooFewParticipants {
            round: out.round.to_hex(),
            have: out.contributors.len(),
            need: rules.min_participants,
        });
    }
    log_release(out, rules, audit, analysis, kind, rounds, &vec![Some(0); figures])
}

/// Histogram counts, released to the coordinator's own quantile search only (they
/// never leave the coordinator; only the cut points derived from them do). In a
/// noised round they are made monotone (`UnreleasedSum::quantile_counts`): the
/// quantile search walks cumulative counts, which a negative bin would make decrease.
pub fn histograms_for_quantiles(
    out: &RoundOutput,
    rules: &ReleaseRules,
    lens: &[usize],
) -> Result<Vec<u64>, ReleaseError> {
    words(out, rules, lens.iter().sum())?;
    Ok(out.sum.quantile_counts(lens))
}

/// One released cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cell {
    pub segment: Segment,
    /// `None` when suppressed (below the minimum cohort).
    pub customers: Option<u64>,
}

/// The released segment table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentRelease {
    pub cuts: Cuts,
    pub cells: Vec<Cell>,
    /// Total customers (released only if at least the minimum cohort).
    pub customers: Option<u64>,
    pub min_cohort: u64,
    pub contributors: Vec<String>,
    /// Issue 10: how the counts were noised and what the analysis cost (`None`: exact).
    pub privacy: Option<NoiseReport>,
}

/// δ at which releases state their ε (each node's own budget states its own δ).
pub const REPORT_DELTA: f64 = 1e-6;

/// Issue 10: how a noised release was noised, what it cost each contributor, and the
/// error each released count carries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NoiseReport {
    /// σ² each contributor added to every count of the released round (exact fraction).
    pub per_node_variance: String,
    /// k: the contributors whose noise alone gives the guarantee (t − H − C); HQ's own
    /// nodes and assumed colluders could subtract theirs.
    pub honest_nodes: usize,
    /// Standard deviation of the noise in each released count: √(|U3|·σ²) — every
    /// contributor's noise is in the sum.
    pub noise_sd: f64,
    /// Half-width of a 95 % interval around each released count for the exact count:
    /// 1.96 × `noise_sd` (a sum of independent discrete Gaussians is close to normal).
    /// A count clamped at 0, or withheld as below the minimum cohort, is biased upwards.
    pub ci95: f64,
    /// Noised rounds of the analysis behind this release.
    pub rounds: usize,
    /// What the analysis (all its rounds) cost each contributor: zCDP ρ and the additive
    /// ξ of the distributed noise, and ε at δ = [`REPORT_DELTA`].
    pub rho: f64,
    pub xi: f64,
    pub epsilon: f64,
    pub delta: f64,
}

impl NoiseReport {
    /// The report of a release from `out` (its noise) after `charges`, one per noised
    /// round of the analysis; `None` for an exact round.
    pub fn of(out: &RoundOutput, charges: &[fedcrm_dp::accounting::Charge]) -> Option<Self> {
        let noise = out.noise.as_ref()?;
        let total = charges.iter().fold(fedcrm_dp::accounting::Charge::default(), |a, c| a.compose(*c));
        let sd = (out.contributors.len() as f64 * noise.variance.as_f64()).sqrt();
        Some(Self {
            per_node_variance: noise.variance.to_string(),
            honest_nodes: noise.honest,
            noise_sd: sd,
            ci95: 1.96 * sd,
            rounds: charges.len(),
            rho: total.rho,
            xi: total.xi,
            epsilon: total.epsilon(REPORT_DELTA).0,
            delta: REPORT_DELTA,
        })
    }
}

/// Primary and complementary suppression ([`fedcrm_analysis::suppression::suppress`])
/// of a result's counts against their total: every cell below `min_cohort`, then the
/// smallest shown cells until the withheld ones hold at least `min_cohort`, so no
/// withheld cell, and no small sum of them, follows from the others and the total.
pub fn suppress(cells: &[u64], min_cohort: u64) -> Vec<Option<u64>> {
    let (_, shown) = fedcrm_analysis::suppression::release_table(cells, min_cohort);
    shown.into_iter().zip(cells).map(|(s, &c)| s.map(|_| c)).collect()
}

/// Segment counts with small cells suppressed.
pub fn segments(
    out: &RoundOutput,
    rules: &ReleaseRules,
    cuts: Cuts,
    audit: &SharedLog,
    analysis: &str,
    rounds: Vec<String>,
    privacy: Option<NoiseReport>,
) -> Result<SegmentRelease, ReleaseError> {
    let sum = words(out, rules, Segment::ALL.len())?;
    let shown = suppress(&sum, rules.min_cohort);
    let cells = Segment::ALL.iter().zip(&shown).map(|(&segment, &customers)| Cell { segment, customers }).collect();
    // The total would give away a suppressed cell (total − visible cells), so it is
    // shown only when every cell is.
    let total = sum.iter().fold(0u64, |a, &v| a.saturating_add(v));
    let customers = if shown.iter().all(Option::is_some) { Some(total) } else { None };
    log_release(out, rules, audit, analysis, "rfm-segments", rounds, &shown)?;
    Ok(SegmentRelease {
        cuts,
        cells,
        customers,
        min_cohort: rules.min_cohort,
        contributors: out.contributors.clone(),
        privacy,
    })
}

/// A released histogram: counts per bin, small cells suppressed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistogramRelease {
    /// `None` where the bin holds fewer than the minimum cohort.
    pub counts: Vec<Option<u64>>,
    pub min_cohort: u64,
    pub contributors: Vec<String>,
    pub organisations: Vec<String>,
    /// Issue 10: how the counts were noised and what the round cost (`None`: exact).
    pub privacy: Option<NoiseReport>,
}

/// Global histogram counts with small cells suppressed, each histogram (of `lens`
/// bins, in the round's order) on its own: every histogram's bins add up to the same
/// customer count, so a cell withheld to cover a small one must be in the same histogram.
pub fn histogram(
    out: &RoundOutput,
    rules: &ReleaseRules,
    lens: &[usize],
    audit: &SharedLog,
    analysis: &str,
    rounds: Vec<String>,
) -> Result<HistogramRelease, ReleaseError> {
    let sums = words(out, rules, lens.iter().sum())?;
    let mut counts = Vec::with_capacity(sums.len());
    let mut rest = sums.as_slice();
    for &len in lens {
        let (one, more) = rest.split_at(len);
        counts.extend(suppress(one, rules.min_cohort));
        rest = more;
    }
    log_release(out, rules, audit, analysis, "rfm-histograms", rounds, &counts)?;
    Ok(HistogramRelease {
        counts,
        min_cohort: rules.min_cohort,
        contributors: out.contributors.clone(),
        organisations: out.organisations.clone(),
        privacy: NoiseReport::of(out, &out.charge.into_iter().collect::<Vec<_>>()),
    })
}

#[cfg(test)]
mod tests {
    use super::{UnreleasedSum, WordWidth, suppress};

    #[test]
    fn noisy_quantile_counts_are_monotone_per_histogram_not_across_them() {
        // Two histograms of 3 bins, noised in 32-bit words: [5, −2, 1] and [−3, 4, 0].
        let w = |v: i64| (v as u64) & 0xffff_ffff;
        let sum = UnreleasedSum { words: [5, -2, 1, -3, 4, 0].map(w).to_vec(), noised: Some(WordWidth::W32) };
        assert_eq!(sum.quantile_counts(&[3, 3]), vec![5, 0, 0, 0, 1, 0]);
        // Across both at once, the first histogram's dip would eat into the second.
        assert_eq!(sum.quantile_counts(&[6]), vec![5, 0, 0, 0, 0, 0]);
        let exact = UnreleasedSum { words: vec![1, 2, 3], noised: None };
        assert_eq!(exact.quantile_counts(&[3]), vec![1, 2, 3]);
    }

    #[test]
    fn a_noised_sum_is_decoded_as_signed_and_clamped_an_exact_one_is_not() {
        let words = vec![0, 5, (1 << 31) - 1, 1 << 31, u32::MAX as u64, (1u64 << 32) - 7];
        let exact = UnreleasedSum { words: words.clone(), noised: None };
        assert_eq!(exact.counts(), words);
        let noised = UnreleasedSum { words, noised: Some(WordWidth::W32) };
        assert_eq!(noised.counts(), vec![0, 5, (1 << 31) - 1, 0, 0, 0]);
        let wide = UnreleasedSum { words: vec![7, (-3i64) as u64, 1 << 40], noised: Some(WordWidth::W64) };
        assert_eq!(wide.counts(), vec![7, 0, 1 << 40]);
        assert_eq!(super::signed((1u64 << 32) - 7, WordWidth::W32), -7);
        assert_eq!(super::signed(1 << 31, WordWidth::W32), -(1 << 31));
        assert_eq!(super::signed(u64::MAX, WordWidth::W64), -1);
    }

    #[test]
    fn an_unreleased_sum_prints_its_length_not_its_words() {
        let sum = UnreleasedSum { words: vec![4242, 1717], noised: None };
        assert_eq!(format!("{sum:?}"), "UnreleasedSum { len: 2, .. }");
    }

    #[test]
    fn one_hidden_cell_hides_the_smallest_visible_one_too() {
        assert_eq!(suppress(&[500, 300, 3, 700], 10), vec![Some(500), None, None, Some(700)]);
        assert_eq!(suppress(&[500, 300, 700], 10), vec![Some(500), Some(300), Some(700)]);
        // Two small cells would give away their sum 8 < 10: the smallest shown one goes too.
        assert_eq!(suppress(&[5, 300, 3, 700], 10), vec![None, None, None, Some(700)]);
    }
}
