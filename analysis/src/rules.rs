//! The rules a node applies to every round, as pure functions over the round's
//! members: the threshold rule, the organisation rule and the differencing rule.
//! Nodes enforce them on their own data's behalf (`fedcrm_node::policy`); the
//! coordinator evaluates the same functions with each invitee's announced
//! [`NodeRules`] to plan rounds every invitee accepts and to tell the analyst why
//! one cannot run. Pure: no I/O, no clock (callers pass `now_ms`).

use std::collections::BTreeSet;

use fedcrm_pki::OrgKind;

/// One node invited to a round, as the coordinator's signed roster names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Invitee {
    pub name: String,
    pub organisation: String,
    pub kind: OrgKind,
}

/// The rules a node's policy applies to every round (sent in `Hello` so the
/// coordinator can plan rounds every invitee accepts; the node enforces them itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeRules {
    pub assume_colluding_nodes: usize,
    pub min_other_organisations: usize,
    pub min_participants: usize,
    pub min_population_difference: usize,
    pub differencing_window_days: u32,
}

const MS_PER_DAY: u64 = 86_400_000;

/// Which set of a round a rule is checked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The signed invitation (RoundStart).
    Invited,
    /// U1: nodes whose keys are in the roster (they receive this node's shares).
    KeyRoster,
    /// U2: nodes whose shares were delivered (their inputs may enter the sum).
    Delivered,
    /// U3: nodes whose masked inputs are in the sum.
    Survivors,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Invited => "invited",
            Stage::KeyRoster => "key-roster (U1)",
            Stage::Delivered => "delivered (U2)",
            Stage::Survivors => "surviving (U3)",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Distinct franchisee organisations among `members`, other than `own`.
pub fn other_organisations<'a>(own: &str, members: impl IntoIterator<Item = &'a Invitee>) -> usize {
    members
        .into_iter()
        .filter(|m| m.kind == OrgKind::Franchisee && m.organisation != own)
        .map(|m| m.organisation.as_str())
        .collect::<BTreeSet<_>>()
        .len()
}

/// HQ-owned nodes among `members`.
pub fn hq_nodes(members: &[Invitee]) -> usize {
    members.iter().filter(|m| m.kind == OrgKind::Hq).count()
}

/// Smallest t with 2t > n + H + C.
pub fn threshold_needed(n: usize, h: usize, colluders: usize) -> usize {
    (n + h + colluders) / 2 + 1
}

/// C: the nodes that may collude with HQ besides its own, as seen by a node of
/// `own_org` — every node of the c franchisee organisations (other than its own) with
/// the most nodes in `members`. Organisations collude with all their stores, so this
/// counts organisations, not nodes (a franchisee running five stores that sides with
/// HQ brings five shares).
pub fn colluding_nodes(rules: &NodeRules, own_org: &str, members: &[Invitee]) -> usize {
    let mut per_org: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for m in members.iter().filter(|m| m.kind == OrgKind::Franchisee && m.organisation != own_org) {
        *per_org.entry(m.organisation.as_str()).or_default() += 1;
    }
    let mut sizes: Vec<usize> = per_org.into_values().collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes.into_iter().take(rules.assume_colluding_nodes).sum()
}

/// Threshold rule (Bonawitz et al. CCS 2017, §6.2: against a server that actively
/// cheats, with H + C corrupt parties): 2t > n + H + C, where n counts `members`, H the
/// HQ-owned nodes among them and C [`colluding_nodes`] (the nodes of the c largest
/// other franchisee organisations). It implies t > H + C — HQ's nodes and the
/// colluders never hold t shares of one secret — and any two sets of t signers share
/// an honest node. Also t ≤ n and t ≥ `min_participants`.
pub fn check_threshold(
    rules: &NodeRules,
    own_org: &str,
    members: &[Invitee],
    t: usize,
    stage: Stage,
) -> Result<(), String> {
    let n = members.len();
    let h = hq_nodes(members);
    let c = rules.assume_colluding_nodes;
    let colluders = colluding_nodes(rules, own_org, members);
    if t > n && stage != Stage::Invited {
        return Err(format!("policy: {n} nodes are {}, fewer than the threshold t = {t}; refusing", stage.name()));
    }
    if 2 * t <= n + h + colluders || t > n || t < rules.min_participants {
        return Err(format!(
            "policy: threshold t = {t} is unsafe for the {} nodes (n = {n}, of which H = {h} HQ-owned, and \
             C = {colluders} nodes of the c = {c} largest other franchisee organisation(s) assumed colluding): this \
             node needs 2t > n + H + C, i.e. t >= {}, t <= n and t >= min_participants = {}",
            stage.name(),
            threshold_needed(n, h, colluders),
            rules.min_participants
        ));
    }
    Ok(())
}

/// Organisation rule: at least `min_other_organisations + c` franchisee
/// organisations besides `own_org` among `members`. HQ-owned channels never count.
pub fn check_organisations(rules: &NodeRules, own_org: &str, members: &[Invitee], stage: Stage) -> Result<(), String> {
    let others = other_organisations(own_org, members);
    let need = rules.min_other_organisations + rules.assume_colluding_nodes;
    if others < need {
        return Err(format!(
            "policy: the {} nodes include {others} franchisee organisation(s) other than this node's own, fewer \
             than min_other_organisations + assume_colluding_nodes = {} + {} = {need}; HQ-owned channels do not count",
            stage.name(),
            rules.min_other_organisations,
            rules.assume_colluding_nodes
        ));
    }
    Ok(())
}

/// Both rules over one set of a round.
pub fn check_set(rules: &NodeRules, own_org: &str, members: &[Invitee], t: usize, stage: Stage) -> Result<(), String> {
    check_threshold(rules, own_org, members, t, stage)?;
    check_organisations(rules, own_org, members, stage)
}

/// What a sum covers, for the differencing rule: the analysis family and the data
/// window (first and last day of data it reads; `None` = from the first record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    pub family: String,
    pub from: Option<time::Date>,
    pub to: time::Date,
}

impl Coverage {
    /// Do two data windows share a day?
    pub fn overlaps(&self, other: &Coverage) -> bool {
        self.family == other.family
            && self.from.is_none_or(|f| f <= other.to)
            && other.from.is_none_or(|f| f <= self.to)
    }
}

/// A sum a node helped unmask (or the coordinator unmasked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmasked {
    pub round: String,
    pub time_ms: u64,
    pub coverage: Coverage,
    /// U3: the nodes whose inputs are in the sum.
    pub contributors: Vec<Invitee>,
}

/// Organisations a difference must span: max(`min_population_difference`, c + 2).
pub fn required_difference(rules: &NodeRules) -> usize {
    rules.min_population_difference.max(rules.assume_colluding_nodes + 2)
}

/// Differencing rule, checked by node `me` over the contributors of a sum it is
/// about to help unmask, against every sum it helped unmask in the same family with
/// an overlapping data window within `differencing_window_days`:
///
/// - *difference*: the non-HQ nodes in the symmetric difference of the two sets must
///   be none, or span at least [`required_difference`] organisations — otherwise the
///   difference of the two sums is those few nodes' data;
/// - *intersection*: when both sums hold `me`, the non-HQ nodes they share must span
///   at least [`required_difference`] organisations — otherwise two sums that share
///   little besides `me` (S1 = me + A, S2 = me + B) let a third sum over A ∪ B, which
///   `me` never sees, isolate it: (S1 + S2 − S3) / 2.
///
/// HQ-owned nodes never count as protection: HQ knows its own data. `Err` says which
/// earlier sum, which nodes, and when the rule stops applying. Sums further apart, and
/// other combinations of three or more sums, are beyond this guard (differential
/// privacy is the defence).
pub fn check_differencing(
    rules: &NodeRules,
    me: &str,
    history: &[Unmasked],
    now_ms: u64,
    coverage: &Coverage,
    contributors: &[Invitee],
) -> Result<(), String> {
    let window_ms = u64::from(rules.differencing_window_days) * MS_PER_DAY;
    let need = required_difference(rules);
    // Nodes are matched by name, and each counts under the most conservative label any
    // sum gave it: a node labelled HQ-owned anywhere, or with two organisations, counts
    // for no organisation. (A coordinator relabelling a node between two sums must not
    // make it look like a different node, or like an independent franchisee.)
    let mut labels: std::collections::BTreeMap<&str, Option<&str>> = std::collections::BTreeMap::new();
    for m in contributors.iter().chain(history.iter().flat_map(|p| p.contributors.iter())) {
        let label = (m.kind != OrgKind::Hq).then_some(m.organisation.as_str());
        labels.entry(m.name.as_str()).and_modify(|l| *l = if *l == label { *l } else { None }).or_insert(label);
    }
    let counted = |m: &&str| labels.get(m).copied().flatten().is_some();
    let now: BTreeSet<&str> = contributors.iter().map(|m| m.name.as_str()).collect();
    let orgs = |v: &[&str]| v.iter().filter_map(|m| labels.get(m).copied().flatten()).collect::<BTreeSet<_>>().len();
    let mut worst: Option<(u64, String)> = None;
    for past in history {
        if past.time_ms.saturating_add(window_ms) <= now_ms || !past.coverage.overlaps(coverage) {
            continue;
        }
        let before: BTreeSet<&str> = past.contributors.iter().map(|m| m.name.as_str()).collect();
        let differ: Vec<&str> = before.symmetric_difference(&now).copied().filter(counted).collect();
        let both_hold_me = before.contains(me) && now.contains(me);
        let shared: Vec<&str> = before.intersection(&now).copied().filter(counted).collect();
        let problem = if !differ.is_empty() && orgs(&differ) < need {
            let names = &differ;
            Some(format!(
                "this sum's contributors differ from those of round {} ({}) by {} (non-HQ nodes of {} organisation(s), \
                 fewer than {need}); the two sums together would reveal their data",
                past.round,
                crate::date::format_time_ms(past.time_ms),
                names.join(", "),
                orgs(&differ)
            ))
        } else if both_hold_me && !differ.is_empty() && orgs(&shared) < need {
            let names = &shared;
            Some(format!(
                "this sum shares only {} (non-HQ nodes of {} organisation(s), fewer than {need}) with round {} ({}); \
                 a third sum over the others could isolate this node's data",
                names.join(", "),
                orgs(&shared),
                past.round,
                crate::date::format_time_ms(past.time_ms)
            ))
        } else {
            None
        };
        if let Some(why) = problem {
            let until = past.time_ms + window_ms;
            if worst.as_ref().is_none_or(|(u, _)| until > *u) {
                worst = Some((until, format!("policy: differencing: {why}")));
            }
        }
    }
    match worst {
        None => Ok(()),
        Some((until, why)) => Err(format!(
            "{why}; allowed again from {} (differencing_window_days = {}), or now over the same nodes as before",
            crate::date::format_time_ms(until),
            rules.differencing_window_days
        )),
    }
}

/// The coordinator's combination check, over every sum it unmasked: would the sums
/// in the same family, with overlapping data windows, within `window_days`, together
/// with a new sum over `candidate`, let some linear combination of them isolate the
/// data of non-HQ nodes spanning fewer than `need` organisations? (HQ-owned nodes are
/// left out: HQ knows their data.) Nodes check pairs of sums they took part in
/// ([`check_differencing`]); only the coordinator sees every sum, so only it can see
/// that {a,b,c}, {d,e,f} and {T,a,…,f} give T. This protects against an honest
/// analyst's sequence of requests; a coordinator that deviates skips it, and
/// differential privacy is the defence against that.
///
/// A vector supported on a set G of nodes lies in the row space R of the sums' node
/// indicator vectors iff deleting G's columns lowers the rank of R. Ranks are taken
/// modulo the prime 2^61 − 1, equal to the rational ranks for matrices of this size
/// except with negligible probability.
pub fn check_combinations(
    history: &[Unmasked],
    now_ms: u64,
    window_days: u32,
    coverage: &Coverage,
    candidate: &[Invitee],
    need: usize,
) -> Result<(), String> {
    let window_ms = u64::from(window_days) * MS_PER_DAY;
    let non_hq = |v: &[Invitee]| -> BTreeSet<(String, String)> {
        v.iter().filter(|m| m.kind != OrgKind::Hq).map(|m| (m.name.clone(), m.organisation.clone())).collect()
    };
    let mut sums: Vec<BTreeSet<(String, String)>> = history
        .iter()
        .filter(|u| u.time_ms.saturating_add(window_ms) > now_ms && u.coverage.overlaps(coverage))
        .map(|u| non_hq(&u.contributors))
        .collect();
    sums.push(non_hq(candidate));
    sums.sort();
    sums.dedup();
    sums.retain(|s| !s.is_empty());
    let nodes: Vec<(String, String)> = sums.iter().flatten().cloned().collect::<BTreeSet<_>>().into_iter().collect();
    let rows: Vec<Vec<u64>> = sums.iter().map(|s| nodes.iter().map(|n| u64::from(s.contains(n))).collect()).collect();
    let full = rank_mod_p(&rows, &[]);
    let orgs: Vec<&str> = nodes.iter().map(|n| n.1.as_str()).collect::<BTreeSet<_>>().into_iter().collect();
    // Sets of 1, 2, … organisations, smallest first so the message names the fewest
    // nodes. Sizes stop at COMBINATION_ORGS: the number of sets grows as m^size.
    for size in 1..need.min(COMBINATION_ORGS + 1).min(orgs.len() + 1) {
        let mut pick: Vec<usize> = (0..size).collect();
        loop {
            let g: Vec<&str> = pick.iter().map(|&i| orgs[i]).collect();
            let cols: Vec<usize> = (0..nodes.len()).filter(|&i| g.contains(&nodes[i].1.as_str())).collect();
            if rank_mod_p(&rows, &cols) < full {
                let names: Vec<&str> = cols.iter().map(|&i| nodes[i].0.as_str()).collect();
                return Err(format!(
                    "differencing across several sums: together with the {} earlier sum(s) over overlapping data in \
                     the last {window_days} days, this sum would let a combination of sums reveal the data of {} \
                     ({size} organisation(s), fewer than {need})",
                    sums.len() - 1,
                    names.join(", ")
                ));
            }
            // Next combination of `size` out of `orgs.len()`.
            let Some(i) = (0..size).rev().find(|&i| pick[i] < orgs.len() - size + i) else { break };
            pick[i] += 1;
            for j in i + 1..size {
                pick[j] = pick[j - 1] + 1;
            }
        }
    }
    Ok(())
}

/// Largest set of organisations the combination check tries (sets of 1, 2 and 3:
/// O(m³) rank computations for m organisations).
pub const COMBINATION_ORGS: usize = 3;

/// Rank modulo 2^61 − 1 of `rows` without the columns in `drop`.
fn rank_mod_p(rows: &[Vec<u64>], drop: &[usize]) -> usize {
    const P: u64 = (1 << 61) - 1;
    let mul = |a: u64, b: u64| ((u128::from(a) * u128::from(b)) % u128::from(P)) as u64;
    let pow = |mut b: u64, mut e: u64| {
        let mut r = 1u64;
        while e > 0 {
            if e & 1 == 1 {
                r = mul(r, b);
            }
            b = mul(b, b);
            e >>= 1;
        }
        r
    };
    let mut m: Vec<Vec<u64>> = rows
        .iter()
        .map(|r| r.iter().enumerate().filter(|(i, _)| !drop.contains(i)).map(|(_, &v)| v % P).collect())
        .collect();
    let width = m.first().map_or(0, Vec::len);
    let mut rank = 0;
    for col in 0..width {
        let Some(pivot) = (rank..m.len()).find(|&i| m[i][col] != 0) else { continue };
        m.swap(rank, pivot);
        let inv = pow(m[rank][col], P - 2);
        let pivot_row: Vec<u64> = m[rank].iter().map(|&x| mul(x, inv)).collect();
        for (i, row) in m.iter_mut().enumerate() {
            if i != rank && row[col] != 0 {
                let f = row[col];
                for (x, &y) in row.iter_mut().zip(&pivot_row) {
                    *x = (*x + P - mul(f, y)) % P;
                }
            }
        }
        m[rank] = pivot_row;
        rank += 1;
    }
    rank
}

/// Invitees for the round rules' tests (here and in `neighbourhood`).
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub(crate) fn m(name: &str, org: &str, kind: OrgKind) -> Invitee {
        Invitee { name: name.into(), organisation: org.into(), kind }
    }
    pub(crate) fn fr(name: &str) -> Invitee {
        m(name, &format!("{name} ltd"), OrgKind::Franchisee)
    }
    pub(crate) fn hq(name: &str) -> Invitee {
        m(name, "brand hq", OrgKind::Hq)
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{fr, hq, m};
    use super::*;

    fn rules() -> NodeRules {
        NodeRules {
            assume_colluding_nodes: 1,
            min_other_organisations: 1,
            min_participants: 3,
            min_population_difference: 3,
            differencing_window_days: 30,
        }
    }

    #[test]
    fn threshold_rule_counts_hq_nodes_and_colluders() {
        // A1: 5 HQ channels, the target, one other franchisee; t = 5 passed the old rule.
        let mut roster: Vec<Invitee> = (1..=5).map(|i| hq(&format!("hq-{i}"))).collect();
        roster.push(fr("target"));
        roster.push(fr("other"));
        let err = check_threshold(&rules(), "target ltd", &roster, 5, Stage::Invited).unwrap_err();
        assert!(err.contains("2t > n + H + C") && err.contains("t >= 7"), "{err}");
        // Only t = n = 7 satisfies 2t > 13 (no dropout tolerated; HQ's 5 nodes and one
        // colluder hold 6 shares, one short) — and the organisation rule still fails.
        assert!((1..=6).all(|t| check_threshold(&rules(), "target ltd", &roster, t, Stage::Invited).is_err()));
        check_threshold(&rules(), "target ltd", &roster, 7, Stage::Invited).unwrap();
        assert!(check_organisations(&rules(), "target ltd", &roster, Stage::Invited).is_err());
        // Five franchisees of distinct organisations: t = 4 works (tolerates one dropout).
        let five: Vec<Invitee> = (1..=5).map(|i| fr(&format!("f{i}"))).collect();
        assert!(check_threshold(&rules(), "f1 ltd", &five, 3, Stage::Invited).is_err());
        check_threshold(&rules(), "f1 ltd", &five, 4, Stage::Invited).unwrap();
        assert_eq!(threshold_needed(5, 0, 1), 4);
        // t > H + C follows: with H = 2, C = 1 and n = 6, t must be at least 5.
        let mut mixed: Vec<Invitee> = (1..=4).map(|i| fr(&format!("f{i}"))).collect();
        mixed.push(hq("hq-1"));
        mixed.push(hq("hq-2"));
        assert_eq!(threshold_needed(6, 2, 1), 5);
        assert!(check_threshold(&rules(), "f1 ltd", &mixed, 4, Stage::Invited).is_err());
        check_threshold(&rules(), "f1 ltd", &mixed, 5, Stage::Invited).unwrap();
    }

    #[test]
    fn colluders_are_counted_by_organisation_with_all_their_stores() {
        // R3: the target, one honest franchisee and five stores of Y Holdings. Counting
        // c = 1 colluding *node*, t = 5 would pass, and Y's five stores would hold t shares.
        let mut roster = vec![fr("target"), fr("z")];
        roster.extend((1..=5).map(|i| m(&format!("y-store-{i}"), "y holdings", OrgKind::Franchisee)));
        assert_eq!(colluding_nodes(&rules(), "target ltd", &roster), 5);
        for t in 5..=6 {
            assert!(check_threshold(&rules(), "target ltd", &roster, t, Stage::Invited).is_err(), "t = {t}");
        }
        check_threshold(&rules(), "target ltd", &roster, 7, Stage::Invited).unwrap();
        // Y's own stores see the largest other organisation: one node.
        assert_eq!(colluding_nodes(&rules(), "y holdings", &roster), 1);
    }

    #[test]
    fn the_coordinator_sees_combinations_no_node_sees() {
        // R5: {a,b,c}, {d,e,f}, {T,a,…,f}: every pair passes every node's rules, yet
        // S3 − S1 − S2 = T.
        let day = MS_PER_DAY;
        let sum = |r: &str, names: &[&str]| Unmasked {
            round: r.into(),
            time_ms: 100 * day,
            coverage: cov(1),
            contributors: names.iter().map(|n| fr(n)).collect(),
        };
        let history = vec![sum("s1", &["a", "b", "c"]), sum("s2", &["d", "e", "f"])];
        let all: Vec<Invitee> = ["t", "a", "b", "c", "d", "e", "f"].iter().map(|n| fr(n)).collect();
        for me in ["a", "d", "t"] {
            let mine: Vec<Unmasked> =
                history.iter().filter(|u| u.contributors.iter().any(|m| m.name == me)).cloned().collect();
            check_differencing(&rules(), me, &mine, 100 * day + 1, &cov(1), &all).unwrap();
        }
        let err = check_combinations(&history, 100 * day + 1, 30, &cov(1), &all, 3).unwrap_err();
        assert!(err.contains("reveal the data of t "), "{err}");
        // Pairs of organisations are caught too: {T, U} from {a,b,c} and {T,U,a,b,c}.
        let history = vec![sum("s1", &["a", "b", "c"])];
        let five: Vec<Invitee> = ["t", "u", "a", "b", "c"].iter().map(|n| fr(n)).collect();
        let err = check_combinations(&history, 100 * day + 1, 30, &cov(1), &five, 3).unwrap_err();
        assert!(err.contains("t, u") && err.contains("2 organisation(s)"), "{err}");
        // The same population again, or a disjoint one, is fine; so is a sum outside the window.
        check_combinations(&history, 100 * day + 1, 30, &cov(1), &[fr("a"), fr("b"), fr("c")], 3).unwrap();
        check_combinations(&history, 100 * day + 1, 30, &cov(1), &[fr("d"), fr("e"), fr("f")], 3).unwrap();
        check_combinations(&history, 131 * day, 30, &cov(1), &five, 3).unwrap();
        // HQ's nodes neither protect nor count.
        let mut with_hq = vec![fr("a"), fr("b"), fr("c")];
        with_hq.push(hq("hq-1"));
        check_combinations(&history, 100 * day + 1, 30, &cov(1), &with_hq, 3).unwrap();
    }

    #[test]
    fn organisation_rule_needs_c_more_franchisee_organisations_and_ignores_hq() {
        let own = fr("a");
        let set = vec![own.clone(), hq("hq-1"), hq("hq-2"), hq("hq-3"), fr("b")];
        assert_eq!(other_organisations("a ltd", &set), 1);
        let err = check_organisations(&rules(), "a ltd", &set, Stage::Survivors).unwrap_err();
        assert!(err.contains("1 + 1 = 2") && err.contains("HQ-owned"), "{err}");
        let mut set = set;
        set.push(m("a2", "a ltd", OrgKind::Franchisee)); // own organisation's second store
        assert!(check_organisations(&rules(), "a ltd", &set, Stage::Survivors).is_err());
        set.push(fr("c"));
        check_organisations(&rules(), "a ltd", &set, Stage::Survivors).unwrap();
    }

    fn cov(day: u8) -> Coverage {
        Coverage {
            family: "rfm".into(),
            from: None,
            to: time::Date::from_calendar_date(2026, time::Month::October, day).unwrap(),
        }
    }

    /// Nodes are matched by name with their most conservative label: HQ's nodes
    /// relabelled as franchisees between two sums (review of issue 9) neither become
    /// "different" nodes nor count as organisations, so one franchisee left out is
    /// still refused.
    #[test]
    fn differencing_matches_nodes_by_name_and_their_most_conservative_label() {
        let day = MS_PER_DAY;
        let mut first: Vec<Invitee> = ["a", "b", "c", "d"].iter().map(|n| fr(n)).collect();
        first.extend(["h1", "h2", "h3"].iter().map(|n| hq(n)));
        let history = vec![Unmasked { round: "r1".into(), time_ms: 100 * day, coverage: cov(1), contributors: first }];
        let mut later: Vec<Invitee> = ["a", "c", "d"].iter().map(|n| fr(n)).collect();
        later.extend(["h1", "h2", "h3"].iter().map(|n| m(n, &format!("{n} franchise ltd"), OrgKind::Franchisee)));
        let err = check_differencing(&rules(), "a", &history, 100 * day + 1000, &cov(1), &later).unwrap_err();
        assert!(err.contains("by b (non-HQ nodes of 1 organisation"), "{err}");
        // A node given two organisations counts for none.
        let mut moved: Vec<Invitee> = ["a", "c", "d"].iter().map(|n| fr(n)).collect();
        moved.push(m("b", "another ltd", OrgKind::Franchisee));
        moved.extend(["h1", "h2", "h3"].iter().map(|n| hq(n)));
        check_differencing(&rules(), "a", &history, 100 * day + 1000, &cov(1), &moved).unwrap();
    }

    #[test]
    fn differencing_by_population_not_by_query() {
        let six: Vec<Invitee> = ["a", "b", "c", "d", "e", "f"].iter().map(|n| fr(n)).collect();
        let day = MS_PER_DAY;
        let history =
            vec![Unmasked { round: "r1".into(), time_ms: 100 * day, coverage: cov(1), contributors: six.clone() }];
        // A3: the next day's reference date, one node left out: refused, with the date it is allowed.
        let five = &six[..5];
        let err = check_differencing(&rules(), "a", &history, 100 * day + 1000, &cov(2), five).unwrap_err();
        assert!(err.contains("by f") && err.contains("allowed again from"), "{err}");
        // The same population is fine; so is a difference of three organisations.
        check_differencing(&rules(), "a", &history, 100 * day + 1000, &cov(2), &six).unwrap();
        check_differencing(&rules(), "a", &history, 100 * day + 1000, &cov(2), &six[..3]).unwrap();
        // HQ nodes in the difference are no protection, and add none.
        let mut with_hq = six.clone();
        with_hq.push(hq("hq-1"));
        check_differencing(&rules(), "a", &history, 100 * day + 1000, &cov(2), &with_hq).unwrap();
        let mut five_hq: Vec<Invitee> = five.to_vec();
        five_hq.push(hq("hq-1"));
        five_hq.push(hq("hq-2"));
        five_hq.push(hq("hq-3"));
        assert!(check_differencing(&rules(), "a", &history, 100 * day + 1000, &cov(2), &five_hq).is_err());
        // Outside the window, or another family, it no longer applies.
        check_differencing(&rules(), "a", &history, 130 * day, &cov(2), five).unwrap();
        let other = Coverage { family: "churn".into(), ..cov(2) };
        check_differencing(&rules(), "a", &history, 100 * day + 1000, &other, five).unwrap();
        // R1: S1 = {a, b, c} and S2 = {a, d, e} share only node a; with S3 = {b, c, d, e},
        // which a never sees, (S1 + S2 − S3) / 2 = a. Node a refuses S2.
        let s1 = vec![Unmasked {
            round: "s1".into(),
            time_ms: 100 * day,
            coverage: cov(1),
            contributors: vec![fr("a"), fr("b"), fr("c")],
        }];
        let err = check_differencing(&rules(), "a", &s1, 100 * day + 1000, &cov(1), &[fr("a"), fr("d"), fr("e")])
            .unwrap_err();
        assert!(err.contains("shares only a"), "{err}");
        // b and c, not in S2, have nothing to fear from it; a sum sharing three organisations is fine.
        check_differencing(&rules(), "d", &[], 100 * day + 1000, &cov(1), &[fr("a"), fr("d"), fr("e")]).unwrap();
        check_differencing(
            &rules(),
            "a",
            &s1,
            100 * day + 1000,
            &cov(1),
            &[fr("a"), fr("b"), fr("c"), fr("d"), fr("e"), fr("f")],
        )
        .unwrap();
        // Windows that do not overlap do not compare.
        let later = Coverage { from: Some(cov(5).to), ..cov(9) };
        check_differencing(&rules(), "a", &history, 100 * day + 1000, &later, five).unwrap();
    }
}
