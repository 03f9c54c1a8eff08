//! Planning a round every invitee accepts: the coordinator evaluates each node's
//! announced rules ([`fedcrm_analysis::rules`]) before it starts, so the analyst
//! learns at once why an analysis cannot run (which rule, which node, which roster)
//! and, for the differencing rule, when it can. The nodes enforce the same rules
//! themselves whatever the coordinator decides; this only saves a round that would
//! be refused.
//!
//! The threshold is the smallest t every invitee accepts: t ≥ ⌊(n + H + C_i)/2⌋ + 1
//! (C_i: the nodes of the c_i largest franchisee organisations other than i's) and
//! t ≥ min_participants_i for every invitee i — the largest number of dropouts
//! the rules allow.

use std::collections::BTreeMap;

use fedcrm_analysis::rules::Invitee;
use fedcrm_analysis::rules::{self, Coverage, Stage, Unmasked};

use crate::registry::ConnectedNode;

/// Who is invited, with which threshold, and who was left out and why.
#[derive(Debug, Clone)]
pub struct Plan {
    pub invited: Vec<ConnectedNode>,
    pub t: usize,
    /// Connected nodes not invited, with the reason.
    pub excluded: BTreeMap<String, String>,
}

/// The smallest threshold every member accepts, or which node's rule no threshold meets.
pub fn threshold(members: &[ConnectedNode]) -> Result<usize, String> {
    let roster: Vec<Invitee> = members.iter().map(ConnectedNode::invitee).collect();
    let n = roster.len();
    let h = rules::hq_nodes(&roster);
    let mut t = 0;
    for m in members {
        let colluders = rules::colluding_nodes(&m.rules, &m.organisation, &roster);
        let need = rules::threshold_needed(n, h, colluders).max(m.rules.min_participants);
        if need > n {
            return Err(format!(
                "no threshold satisfies {}: with n = {n} nodes of which H = {h} are HQ-owned and C = {colluders} \
                 nodes of its c = {} largest other franchisee organisation(s) assumed colluding, it needs t >= {need} > \
                 n; invite more franchisee organisations",
                m.name, m.rules.assume_colluding_nodes
            ));
        }
        t = t.max(need);
    }
    Ok(t)
}

/// Every member's threshold, organisation and differencing rules over `members`.
fn check(members: &[ConnectedNode], history: &[Unmasked], now_ms: u64, coverage: &Coverage) -> Result<usize, String> {
    let t = threshold(members)?;
    let roster: Vec<Invitee> = members.iter().map(ConnectedNode::invitee).collect();
    // One line per node that would refuse, saying why and from when (the analyst
    // gets them shortened by `round::brief_lines`).
    let mut refusing = String::new();
    for m in members {
        let mine: Vec<Unmasked> =
            history.iter().filter(|u| u.contributors.iter().any(|c| c.name == m.name)).cloned().collect();
        let verdict = rules::check_set(&m.rules, &m.organisation, &roster, t, Stage::Invited)
            .and_then(|()| rules::check_differencing(&m.rules, &m.name, &mine, now_ms, coverage, &roster));
        if let Err(e) = verdict {
            refusing.push_str(&format!("\n  {} would refuse: {e}", m.name));
        }
    }
    if !refusing.is_empty() {
        return Err(refusing);
    }
    // What no node can see: combinations of every sum this coordinator unmasked.
    let window = members.iter().map(|m| m.rules.differencing_window_days).max().unwrap_or(0);
    let need = members.iter().map(|m| rules::required_difference(&m.rules)).max().unwrap_or(0);
    rules::check_combinations(history, now_ms, window, coverage, &roster, need)
        .map_err(|e| format!("the coordinator refuses: {e}"))?;
    Ok(t)
}

/// Plan a round over the connected nodes: all of them if every one's rules hold;
/// otherwise the population of the latest overlapping sum (so a node that missed
/// it waits, and the others get a result), if that holds; otherwise the reason.
pub fn plan(
    connected: &[ConnectedNode],
    history: &[Unmasked],
    now_ms: u64,
    coverage: &Coverage,
) -> Result<Plan, String> {
    let all = check(connected, history, now_ms, coverage);
    let first_error = match all {
        Ok(t) => return Ok(Plan { invited: connected.to_vec(), t, excluded: BTreeMap::new() }),
        Err(e) => e,
    };
    // The latest earlier population of this family, restricted to who is connected.
    if let Some(past) = history.iter().rev().find(|u| u.coverage.overlaps(coverage)) {
        let same: Vec<ConnectedNode> =
            connected.iter().filter(|p| past.contributors.iter().any(|c| c.name == p.name)).cloned().collect();
        if same.len() < connected.len()
            && !same.is_empty()
            && let Ok(t) = check(&same, history, now_ms, coverage)
        {
            let excluded = connected
                .iter()
                .filter(|p| !same.iter().any(|s| s.name == p.name))
                .map(|p| {
                    // Its own line of the refusals, or all of them when it had none.
                    let own = first_error.lines().map(str::trim).find(|l| l.starts_with(&format!("{} ", p.name)));
                    let why = own.unwrap_or(first_error.trim()).replace('\n', ";");
                    (p.name.clone(), format!("not invited: {why}"))
                })
                .collect();
            return Ok(Plan { invited: same, t, excluded });
        }
    }
    Err(first_error)
}
