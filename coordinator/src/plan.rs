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
//!
//! From `[secagg] full_below` invited nodes (default 100) the round runs SecAgg+
//! (Bell et al. CCS 2020): each node shares with its k neighbours in a random graph,
//! t_k of k, with (k, t_k) from `fedcrm_crypto::graph::parameters` for the corrupt
//! fraction γ = max(`corrupt_fraction`, (H + the largest C_i)/n) and the dropout
//! fraction δ. The neighbourhood rules need the graph, which is drawn from nonces the
//! nodes commit to after the invitation: the nodes check them; the planner checks
//! what it can before (the organisation rule over all invitees, min_participants).

use std::collections::BTreeMap;

use fedcrm_analysis::neighbourhood;
use fedcrm_analysis::rules::Invitee;
use fedcrm_analysis::rules::{self, Coverage, Stage, Unmasked};
use fedcrm_crypto::graph::{self, GraphConfig, Mode};

use crate::config::{SecaggMode, SecaggSettings};
use crate::registry::ConnectedNode;

/// Who is invited, with which threshold, and who was left out and why.
#[derive(Debug, Clone)]
pub struct Plan {
    pub invited: Vec<ConnectedNode>,
    /// Full SecAgg: the threshold over all of U1. SecAgg+: the per-neighbourhood t_k.
    pub t: usize,
    /// SecAgg+: the graph's degree k; 0: full SecAgg.
    pub degree: usize,
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

/// Issue 10: k, the invitees whose noise alone must give a noised round's guarantee:
/// t − H − the largest C_i any invitee assumes ([`rules::colluding_nodes`]), so that
/// every invitee's own check (`fedcrm_node::analysis::check_noise`) accepts it. HQ's
/// nodes and the colluders can subtract their own noise; the survivors number at
/// least t. An error when no honest node is left.
pub fn honest(members: &[ConnectedNode], t: usize) -> Result<usize, String> {
    let roster: Vec<Invitee> = members.iter().map(ConnectedNode::invitee).collect();
    let h = rules::hq_nodes(&roster);
    let c = members.iter().map(|m| rules::colluding_nodes(&m.rules, &m.organisation, &roster)).max().unwrap_or(0);
    match t.checked_sub(h + c) {
        Some(k) if k >= 1 => Ok(k),
        _ => Err(format!(
            "no noise calibration: with threshold t = {t}, H = {h} HQ-owned invitees and the largest colluding set \
             C = {c}, no node's noise is certain to be in the sum (t − H − C < 1); invite more franchisee \
             organisations"
        )),
    }
}

/// Full SecAgg or SecAgg+ for `members`: `(t, 0)` or `(t_k, k)`.
pub fn shape(members: &[ConnectedNode], secagg: &SecaggSettings) -> Result<(usize, usize), String> {
    let n = members.len();
    let plus = match secagg.mode {
        SecaggMode::Full => false,
        SecaggMode::Plus => true,
        SecaggMode::Auto => n >= secagg.full_below,
    };
    if plus {
        let roster: Vec<Invitee> = members.iter().map(ConnectedNode::invitee).collect();
        let known = rules::hq_nodes(&roster)
            + members.iter().map(|m| rules::colluding_nodes(&m.rules, &m.organisation, &roster)).max().unwrap_or(0);
        let gamma = secagg.corrupt_fraction.max(known as f64 / n.max(1) as f64);
        let config = GraphConfig {
            full_below: 0,
            corrupt_fraction: gamma,
            dropout_fraction: secagg.dropout_fraction,
            ..GraphConfig::default()
        };
        match graph::choose(n, &config) {
            Ok(Mode::Plus { k, t }) => return Ok((t, k)),
            Ok(Mode::Full) => {}
            Err(e) => {
                return Err(format!(
                    "SecAgg+ parameters for {n} nodes with corrupt fraction {gamma:.3} (HQ's and the colluding nodes \
                     at least) and dropout fraction {}: {e}; lower [secagg] dropout_fraction or use mode = \"full\"",
                    secagg.dropout_fraction
                ));
            }
        }
    }
    Ok((threshold(members)?, 0))
}

/// Every member's threshold, organisation and differencing rules over `members`.
fn check(
    members: &[ConnectedNode],
    history: &[Unmasked],
    now_ms: u64,
    coverage: &Coverage,
    secagg: &SecaggSettings,
) -> Result<(usize, usize), String> {
    let (t, degree) = shape(members, secagg)?;
    let roster: Vec<Invitee> = members.iter().map(ConnectedNode::invitee).collect();
    // One line per node that would refuse, saying why and from when (the analyst
    // gets them shortened by `round::brief_lines`).
    let mut refusing = String::new();
    for m in members {
        let mine: Vec<Unmasked> =
            history.iter().filter(|u| u.contributors.iter().any(|c| c.name == m.name)).cloned().collect();
        let shape = if degree == 0 {
            rules::check_set(&m.rules, &m.organisation, &roster, t, Stage::Invited)
        } else {
            neighbourhood::check_invitation(&m.rules, &m.organisation, &roster, degree, t)
        };
        let verdict =
            shape.and_then(|()| rules::check_differencing(&m.rules, &m.name, &mine, now_ms, coverage, &roster));
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
    Ok((t, degree))
}

/// Plan a round over the connected nodes: all of them if every one's rules hold;
/// otherwise the population of the latest overlapping sum (so a node that missed
/// it waits, and the others get a result), if that holds; otherwise the reason.
pub fn plan(
    connected: &[ConnectedNode],
    history: &[Unmasked],
    now_ms: u64,
    coverage: &Coverage,
    secagg: &SecaggSettings,
) -> Result<Plan, String> {
    let all = check(connected, history, now_ms, coverage, secagg);
    let first_error = match all {
        Ok((t, degree)) => return Ok(Plan { invited: connected.to_vec(), t, degree, excluded: BTreeMap::new() }),
        Err(e) => e,
    };
    // The latest earlier population of this family, restricted to who is connected.
    if let Some(past) = history.iter().rev().find(|u| u.coverage.overlaps(coverage)) {
        let same: Vec<ConnectedNode> =
            connected.iter().filter(|p| past.contributors.iter().any(|c| c.name == p.name)).cloned().collect();
        if same.len() < connected.len()
            && !same.is_empty()
            && let Ok((t, degree)) = check(&same, history, now_ms, coverage, secagg)
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
            return Ok(Plan { invited: same, t, degree, excluded });
        }
    }
    Err(first_error)
}
