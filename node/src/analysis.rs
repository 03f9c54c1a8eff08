//! What the node computes for a round: its local contribution vector, from its own
//! features. The vector never leaves unmasked; see [`crate::session`].

use fedcrm_analysis::rfm::{self, CustomerRfm};
use fedcrm_protocol::wire::{Analysis, AnalysisKind};

/// The local (unmasked) contribution for `analysis`.
pub fn local_vector(analysis: &Analysis, customers: &[CustomerRfm]) -> Vec<u64> {
    let mut v = vec![0u64; analysis.kind.vector_len()];
    match &analysis.kind {
        AnalysisKind::RfmHistograms(specs) => {
            for c in customers {
                rfm::accumulate(specs, c, &mut v);
            }
        }
        AnalysisKind::RfmSegments(cuts) => {
            for c in customers {
                v[cuts.segment_of(c).index()] += 1;
            }
        }
    }
    v
}
