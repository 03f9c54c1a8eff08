//! The release door: the only path from a round's aggregate to anything shown to an
//! analyst or sent to nodes. Applies the release rules — minimum contributing
//! nodes, minimum cohort per released cell (smaller cells of the *global* result are
//! suppressed) — and is where differential-privacy noise and audit records will be
//! added.
//!
//! **Invariant:** `RoundOutput::sum` is read only here (tested by `tests/architecture.rs`).

use serde::Serialize;

use fedcrm_protocol::rfm::{Cuts, Segment};

use crate::config::ReleaseRules;
use crate::round::RoundOutput;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ReleaseError {
    #[error(
        "round {round}: only {have} nodes contributed, fewer than the release minimum of {need}; nothing is released"
    )]
    TooFewParticipants { round: String, have: usize, need: usize },
    #[error("round {round}: aggregate has {got} elements, expected {expected}")]
    Shape { round: String, got: usize, expected: usize },
}

fn gate(out: &RoundOutput, rules: &ReleaseRules) -> Result<(), ReleaseError> {
    if out.contributors.len() < rules.min_participants {
        return Err(ReleaseError::TooFewParticipants {
            round: out.round.to_hex(),
            have: out.contributors.len(),
            need: rules.min_participants,
        });
    }
    Ok(())
}

/// Histogram counts, released to the coordinator's own quantile search only (they
/// never leave the coordinator; only the cut points derived from them do).
pub fn histograms_for_quantiles(
    out: &RoundOutput,
    rules: &ReleaseRules,
    expected: usize,
) -> Result<Vec<u64>, ReleaseError> {
    gate(out, rules)?;
    if out.sum.len() != expected {
        return Err(ReleaseError::Shape { round: out.round.to_hex(), got: out.sum.len(), expected });
    }
    Ok(out.sum.clone())
}

/// One released cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cell {
    pub segment: Segment,
    /// `None` when suppressed (below the minimum cohort).
    pub customers: Option<u64>,
}

/// The released segment table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SegmentRelease {
    pub cuts: Cuts,
    pub cells: Vec<Cell>,
    /// Total customers (released only if at least the minimum cohort).
    pub customers: Option<u64>,
    pub min_cohort: u64,
    pub contributors: Vec<String>,
}

/// Segment counts with small cells suppressed.
pub fn segments(out: &RoundOutput, rules: &ReleaseRules, cuts: Cuts) -> Result<SegmentRelease, ReleaseError> {
    gate(out, rules)?;
    if out.sum.len() != Segment::ALL.len() {
        return Err(ReleaseError::Shape {
            round: out.round.to_hex(),
            got: out.sum.len(),
            expected: Segment::ALL.len(),
        });
    }
    let keep = |v: u64| (v >= rules.min_cohort).then_some(v);
    let cells = Segment::ALL.iter().zip(&out.sum).map(|(&segment, &v)| Cell { segment, customers: keep(v) }).collect();
    let total: u64 = out.sum.iter().sum();
    Ok(SegmentRelease {
        cuts,
        cells,
        customers: keep(total),
        min_cohort: rules.min_cohort,
        contributors: out.contributors.clone(),
    })
}

/// A released histogram: counts per bin, small cells suppressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistogramRelease {
    /// `None` where the bin holds fewer than the minimum cohort.
    pub counts: Vec<Option<u64>>,
    pub min_cohort: u64,
    pub contributors: Vec<String>,
    pub organisations: Vec<String>,
}

/// Global histogram counts with small cells suppressed.
pub fn histogram(out: &RoundOutput, rules: &ReleaseRules, expected: usize) -> Result<HistogramRelease, ReleaseError> {
    gate(out, rules)?;
    if out.sum.len() != expected {
        return Err(ReleaseError::Shape { round: out.round.to_hex(), got: out.sum.len(), expected });
    }
    Ok(HistogramRelease {
        counts: out.sum.iter().map(|&v| (v >= rules.min_cohort).then_some(v)).collect(),
        min_cohort: rules.min_cohort,
        contributors: out.contributors.clone(),
        organisations: out.organisations.clone(),
    })
}
