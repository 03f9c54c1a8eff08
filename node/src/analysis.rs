//! What the node computes for a round: its local contribution vector, from its own
//! features, and the check that it fits the round's word width. The vector never
//! leaves unmasked; see [`crate::session`].

use fedcrm_analysis::rfm::{self, CustomerRfm};
use fedcrm_analysis::width::pick_width;
use fedcrm_protocol::wire::{Analysis, AnalysisKind, RoundStart};

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

/// Issue 9: check a round's word width before taking part. The width the round start
/// names must be the one [`pick_width`] gives for this analysis's range over the
/// invited nodes, recomputed here from the signed round start (a label proves
/// nothing); and every word of this node's contribution must be within the per-node
/// bound the width was picked for, or the sum could wrap. Errors are the refusal's
/// reason: who is at fault and what HQ must change.
pub fn check_width(start: &RoundStart, customers: usize, input: &[u64]) -> Result<(), String> {
    let n = start.invited.len();
    let bound = start.max_per_node;
    let expected = pick_width(n, &start.analysis.kind.range(bound)).map_err(|e| {
        format!("the coordinator's round cannot be summed exactly: {e}; the coordinator should not have started it")
    })?;
    if expected != start.width {
        return Err(format!(
            "the round start names {} but {} over {n} invited nodes with max_customers_per_node = {bound} needs {}; \
             refusing (the coordinator's fault: its round start is inconsistent)",
            start.width,
            start.analysis.kind.name(),
            expected
        ));
    }
    if let Some((index, value)) = input.iter().copied().enumerate().find(|&(_, v)| v > bound) {
        return Err(format!(
            "this node holds {customers} customers: element {index} of its {} contribution counts {value} customers, \
             above the round's max_customers_per_node = {bound}, so the sum in {} could wrap; HQ must raise \
             [rounds] max_customers_per_node in the coordinator's configuration to at least {customers} \
             (rounds then use 64-bit words from fewer nodes on)",
            start.analysis.kind.name(),
            start.width
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedcrm_analysis::date::parse_date;
    use fedcrm_analysis::rfm::Cuts;
    use fedcrm_analysis::rules::Invitee;
    use fedcrm_crypto::RoundId;
    use fedcrm_crypto::word::WordWidth;
    use fedcrm_pki::OrgKind;

    fn start(n: usize, width: WordWidth, max_per_node: u64) -> RoundStart {
        RoundStart {
            round: RoundId([1; 16]),
            threshold: 2,
            length: 4,
            width,
            max_per_node,
            degree: 0,
            setup: None,
            analysis: Analysis {
                reference_date: parse_date("1997-09-30").unwrap(),
                purpose: "p".into(),
                requested_by: "a".into(),
                requested_by_organisation: "HQ".into(),
                analysis_id: "id".into(),
                analysis_kind: "rfm-segments".into(),
                kind: AnalysisKind::RfmSegments(Cuts::default()),
            },
            invited: (0..n)
                .map(|i| Invitee { name: format!("n{i:04}"), organisation: "o".into(), kind: OrgKind::Franchisee })
                .collect(),
            chunk_elements: 10,
            roster_signature: vec![],
        }
    }

    #[test]
    fn the_width_is_recomputed_not_trusted() {
        assert_eq!(check_width(&start(50, WordWidth::W32, 1 << 22), 10, &[1, 2, 3, 4]), Ok(()));
        let e = check_width(&start(50, WordWidth::W64, 1 << 22), 10, &[1, 2, 3, 4]).unwrap_err();
        assert!(
            e.contains("names 64-bit words") && e.contains("needs 32-bit words") && e.contains("coordinator"),
            "{e}"
        );
        assert_eq!(check_width(&start(1024, WordWidth::W64, 1 << 22), 10, &[1, 2, 3, 4]), Ok(()));
        let e = check_width(&start(1024, WordWidth::W32, 1 << 22), 10, &[1, 2, 3, 4]).unwrap_err();
        assert!(e.contains("needs 64-bit words"), "{e}");
    }

    #[test]
    fn a_contribution_above_the_bound_is_refused_naming_the_setting() {
        let s = start(3, WordWidth::W32, 100);
        assert_eq!(check_width(&s, 100, &[100, 0, 0, 0]), Ok(()));
        let e = check_width(&s, 150, &[1, 101, 48, 0]).unwrap_err();
        assert!(e.contains("holds 150 customers") && e.contains("element 1") && e.contains("counts 101"), "{e}");
        assert!(e.contains("raise [rounds] max_customers_per_node") && e.contains("at least 150"), "{e}");
    }
}
