//! Between logs: no two records, in one log or in two, hold different views (U2, U3) of
//! the same round.

use super::*;

/// No two records, in one log or in two, hold different views (U2, U3) of a round.
pub(super) fn check_round_views(logs: &[Verified]) -> Result<(), VerifyFailure> {
    let mut first: HashMap<&str, (&Verified, &PendingView)> = HashMap::new();
    for log in logs {
        for view in &log.round_views {
            let Some((other_log, other)) = first.get(view.round.as_str()) else {
                first.insert(view.round.as_str(), (log, view));
                continue;
            };
            if other.delivered == view.delivered && other.survivors == view.survivors {
                continue;
            }
            let names = |v: &[String]| format!("[{}]", v.join(", "));
            return Err(fail(
                &view.file,
                Some(view.line),
                Some(view.seq),
                Problem::SplitView,
                format!(
                    "round {}: {} logged here (at stage {}) U2 = {} and U3 = {}, but {} logged at {}:{} (at stage {}) U2 = {} and U3 = {}: the coordinator showed nodes different views of who took part",
                    view.round,
                    log.summary.party,
                    view.stage,
                    names(&view.delivered),
                    names(&view.survivors),
                    other_log.summary.party,
                    other.file.display(),
                    other.line,
                    other.stage,
                    names(&other.delivered),
                    names(&other.survivors)
                ),
            ));
        }
    }
    Ok(())
}
