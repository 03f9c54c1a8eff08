//! Small-cell suppression of a released table: the rule both sides apply — a node to the
//! exact counts it releases (issue 12, `[policy.psi] min_exact_count`), the coordinator's
//! release door to every result it shows (`[release] min_cohort`).
//!
//! Primary suppression withholds every cell below the minimum. A withheld cell must not
//! follow from the cells shown and a known total, so complementary suppression then
//! withholds the smallest shown cells until the withheld cells together hold at least
//! the minimum: whoever knows the total learns only that sum, never one small cell,
//! and no sum below the minimum.

/// `cells` with every cell below `min` withheld (`None`), and then the smallest shown
/// cells until the withheld ones sum to at least `min` (when any is withheld).
/// `total` is the table's total when the reader may know it (`None`: it is withheld
/// itself, so every cell is); cells already `None` are withheld by an earlier party
/// (the node, for the coordinator), and count as `total` less the shown cells.
///
/// The table's total itself is released only when it is at least `min`; when it is
/// below, every cell is below too and all are withheld.
pub fn suppress(cells: &[Option<i64>], total: Option<i64>, min: i64) -> Vec<Option<i64>> {
    let Some(total) = total else { return vec![None; cells.len()] };
    let mut shown: Vec<Option<i64>> = cells.iter().map(|c| c.filter(|&v| v >= min)).collect();
    loop {
        let hidden = shown.iter().any(Option::is_none);
        let shown_sum = shown.iter().flatten().fold(0i64, |a, &v| a.saturating_add(v));
        let hidden_sum = total.saturating_sub(shown_sum);
        if !hidden || hidden_sum >= min {
            return shown;
        }
        let smallest = shown.iter().enumerate().filter_map(|(i, c)| c.map(|v| (v, i))).min();
        match smallest {
            Some((_, i)) => shown[i] = None,
            None => return shown,
        }
    }
}

/// A table of exact counts as released at `min`: its total (`None` below `min`) and
/// its cells, suppressed by [`suppress`] against that total.
pub fn release_table(cells: &[u64], min: u64) -> (Option<i64>, Vec<Option<i64>>) {
    let exact: Vec<i64> = cells.iter().map(|&c| i64::try_from(c).unwrap_or(i64::MAX)).collect();
    let total = exact.iter().fold(0i64, |a, &c| a.saturating_add(c));
    let min = i64::try_from(min).unwrap_or(i64::MAX);
    let cells: Vec<Option<i64>> = exact.into_iter().map(Some).collect();
    ((total >= min).then_some(total), suppress(&cells, Some(total), min))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_small_cell_hides_the_smallest_shown_one_too_and_small_hidden_sums_grow() {
        let s = |cells: &[i64], min| {
            suppress(&cells.iter().copied().map(Some).collect::<Vec<_>>(), Some(cells.iter().sum()), min)
        };
        assert_eq!(s(&[500, 300, 3, 700], 10), vec![Some(500), None, None, Some(700)]);
        assert_eq!(s(&[500, 300, 700], 10), vec![Some(500), Some(300), Some(700)]);
        // Two small cells sum to 8 < 10: the smallest shown cell goes too.
        assert_eq!(s(&[5, 300, 3, 700], 10), vec![None, None, None, Some(700)]);
        // A zero is below the minimum and is withheld like any small cell.
        assert_eq!(s(&[0, 40, 50], 10), vec![None, None, Some(50)]);
        // A total below the minimum: every cell is below it too.
        assert_eq!(release_table(&[3, 2, 0, 1], 10), (None, vec![None; 4]));
        assert_eq!(release_table(&[30, 20, 0, 10], 10), (Some(60), vec![Some(30), Some(20), None, None]));
    }

    #[test]
    fn cells_an_earlier_party_withheld_count_against_the_total() {
        // The node withheld cell 2 (its value 4) and, to cover it, cell 1 (value 12): a
        // coordinator with a higher minimum withholds cell 3 and then, the withheld sum
        // being 16 + 18 = 34 ≥ 20, nothing more.
        let from_node = [Some(50), None, None, Some(18), Some(40)];
        assert_eq!(suppress(&from_node, Some(124), 20), vec![Some(50), None, None, None, Some(40)]);
        // The same minimum as the node's changes nothing.
        assert_eq!(suppress(&from_node, Some(124), 10), from_node.to_vec());
        // No total: nothing is shown.
        assert_eq!(suppress(&from_node, None, 10), vec![None; 5]);
    }

    proptest! {
        /// Whatever the cells: every shown cell is at least the minimum and is the
        /// cell's value; every cell below it is withheld; and the withheld cells
        /// (what the total less the shown cells gives away) sum to none or at least
        /// the minimum — and suppressing again changes nothing.
        #[test]
        fn no_withheld_cell_or_small_sum_follows_from_the_shown_cells_and_the_total(
            cells in proptest::collection::vec(0u64..60, 1..20),
            min in 1u64..40,
        ) {
            let (total, shown) = release_table(&cells, min);
            let sum: u64 = cells.iter().sum();
            prop_assert_eq!(total, (sum >= min).then_some(sum as i64));
            let mut hidden = 0u64;
            for (&c, s) in cells.iter().zip(&shown) {
                match s {
                    Some(v) => prop_assert!(*v == c as i64 && c >= min),
                    None => hidden += c,
                }
            }
            prop_assert!(shown.iter().all(Option::is_some) || hidden >= min || total.is_none());
            prop_assert_eq!(suppress(&shown, total, min as i64), shown);
        }
    }
}
