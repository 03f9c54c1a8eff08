//! The round rules on SecAgg+'s sparse graph (Bell, Bonawitz, Gascón, Lepoint, Raykova,
//! CCS 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead"), as
//! pure functions over plain inputs: a node's neighbours, a stage's members and the
//! graph as adjacency lists. The graph itself (`fedcrm_crypto::graph`) is recomputed
//! by every node from the round's seed; nothing here trusts a label from the
//! coordinator, and the rules take the graph as plain adjacency lists, so they can be
//! tested on hand-made graphs. Pure: no I/O, no clock. Nodes apply them through
//! [`check_invitation`] (before the graph exists) and [`check_stage`] (over U1, U2, U3).
//!
//! In SecAgg+ a node u shares its self-mask seed and its mask key t-of-k among its k
//! neighbours only, and masks only with them. Two rules replace full SecAgg's
//! ([`crate::rules`]):
//!
//! - **Neighbourhood threshold** ([`check_neighbourhood`]): 2t > k + H + C, where H
//!   counts u's HQ-owned neighbours and C the neighbours of the c largest other
//!   franchisee organisations among them ([`rules::colluding_nodes`]). It is full
//!   SecAgg's 2t > n + H + C (`rules::check_threshold`) on u's neighbourhood: HQ's
//!   neighbours and the colluders never hold t of u's shares, and a coordinator that
//!   shows different neighbours different views of who dropped cannot collect both u's
//!   self-mask share and its mask-key share from t of them (Bell et al. 2020, their
//!   semi-malicious variant). H counts every neighbour in the graph, not only those
//!   still present: a neighbour that left still holds u's shares.
//! - **Organisation rule on u's component** ([`check_component_organisations`]): a
//!   node's pairwise masks are with its neighbours only, so the masked inputs of a set
//!   of nodes with no edge to the other honest survivors add up to their inputs plus
//!   masks the coordinator can remove (self masks, masks shared with HQ's nodes, masks
//!   of nodes that dropped): over a graph that falls apart, it learns each piece's sum.
//!   HQ's nodes are removed first (HQ knows their masks), so what u's data is summed
//!   with, as far as HQ can tell, is u's connected component of non-HQ nodes;
//!   the organisation rule ([`rules::check_organisations`]: at least
//!   `min_other_organisations + c` other franchisee organisations) applies to that
//!   component, within U2 and then within U3.
//!
//! Colluders can cut a component as HQ's nodes do, and which c organisations collude
//! is not known; the random graph makes a cut unlikely (`fedcrm_crypto::graph`,
//! condition 1), but a coordinator that grinds graphs by dropping nodes weakens that.
//! So the organisation rule is checked for the worst case: for every choice of c other
//! franchisee organisations in u's component, u's component without their nodes (and
//! HQ's) must still hold `min_other_organisations` other organisations. Choices that
//! would take more than [`MAX_COLLUDER_SETS`] searches are refused, not guessed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use fedcrm_pki::OrgKind;

use crate::rules::{self, Invitee, NodeRules, Stage};

/// Why a node refuses a SecAgg+ round: the rule, and the numbers it was checked on.
/// Messages read like [`crate::rules`]'s (`policy: …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NeighbourhoodError {
    #[error("policy: the graph gives this node {got} neighbours, but the round's degree is k = {k}")]
    Degree { got: usize, k: usize },
    #[error(
        "policy: neighbourhood threshold t_k = {t} is unsafe for this node's k = {k} neighbours (H = {hq} HQ-owned, \
         and C = {colluders} nodes of the c = {c} largest other franchisee organisation(s) assumed colluding): this \
         node needs 2t_k > k + H + C, i.e. t_k >= {need}, and t_k <= k"
    )]
    Threshold { k: usize, t: usize, hq: usize, colluders: usize, c: usize, need: usize },
    #[error(
        "policy: only {present} of this node's k = {k} neighbours are {stage}, fewer than the neighbourhood threshold \
         t_k = {t}; refusing"
    )]
    TooFewNeighbours { stage: Stage, present: usize, k: usize, t: usize },
    #[error(
        "policy: this node's connected component of non-HQ {stage} nodes ({size} node(s)) includes {others} \
         franchisee organisation(s) other than this node's own, fewer than min_other_organisations + \
         assume_colluding_nodes = {min} + {c} = {need}; HQ-owned channels do not count, and the coordinator could \
         learn this component's sum"
    )]
    Organisations { stage: Stage, size: usize, others: usize, min: usize, c: usize, need: usize },
    #[error(
        "policy: if {colluders} colluded, this node's connected component of non-HQ {stage} nodes without their nodes \
         ({size} node(s)) would include {others} franchisee organisation(s) other than this node's own, fewer than \
         min_other_organisations = {min}: their stores cut it off, and the coordinator could learn that piece's sum"
    )]
    CutByColluders { stage: Stage, colluders: String, size: usize, others: usize, min: usize },
    #[error(
        "policy: checking every choice of c = {c} colluding organisation(s) among the {orgs} in this node's component \
         would take {sets} searches, more than the {max} this node allows; lower assume_colluding_nodes, or ask HQ to \
         run the round as full SecAgg (secagg.full_below)"
    )]
    TooManyColluderSets { c: usize, orgs: usize, sets: u128, max: u128 },
}

/// The most choices of colluding organisations [`check_component_organisations`]
/// searches (one graph search each) before it refuses: with c = 1 that is any round of
/// up to 20,000 organisations; with c = 2, up to 200 organisations in the component.
pub const MAX_COLLUDER_SETS: u128 = 20_000;

/// Neighbourhood threshold rule, checked by a node of `own_org` over `neighbours`, all
/// its neighbours in the graph it computed (whatever their stage): the degree is `k`,
/// 2t > k + H + C and t ≤ k (t: the round's per-neighbourhood threshold t_k).
///
/// Bell et al. CCS 2020, semi-malicious variant (2t > k + corrupt
/// neighbours); with H and C as in [`rules::check_threshold`].
pub fn check_neighbourhood(
    rules: &NodeRules,
    own_org: &str,
    neighbours: &[Invitee],
    k: usize,
    t: usize,
) -> Result<(), NeighbourhoodError> {
    if neighbours.len() != k {
        return Err(NeighbourhoodError::Degree { got: neighbours.len(), k });
    }
    let hq = rules::hq_nodes(neighbours);
    let colluders = rules::colluding_nodes(rules, own_org, neighbours);
    if 2 * t <= k + hq + colluders || t > k {
        return Err(NeighbourhoodError::Threshold {
            k,
            t,
            hq,
            colluders,
            c: rules.assume_colluding_nodes,
            need: rules::threshold_needed(k, hq, colluders),
        });
    }
    Ok(())
}

/// At least t of the node's `neighbours` are among `present` (the names of a stage's
/// set: U1, U2 or U3): fewer could not reconstruct its secrets, so the round could not
/// finish with this node's input in it.
pub fn check_neighbours_present(
    neighbours: &[Invitee],
    present: &[String],
    t: usize,
    stage: Stage,
) -> Result<(), NeighbourhoodError> {
    let present_set: BTreeSet<&str> = present.iter().map(String::as_str).collect();
    let count = neighbours.iter().filter(|m| present_set.contains(m.name.as_str())).count();
    if count < t {
        return Err(NeighbourhoodError::TooFewNeighbours { stage, present: count, k: neighbours.len(), t });
    }
    Ok(())
}

/// `me`'s connected component among the non-HQ `members` of a stage, over the graph
/// given as sorted adjacency lists by name (`fedcrm_crypto::graph::Graph::adjacency`),
/// sorted by name; empty if `me` is not a non-HQ member. Edges to nodes outside
/// `members`, or to HQ's nodes, are not followed.
pub fn component(me: &str, members: &[Invitee], adjacency: &BTreeMap<String, Vec<String>>) -> Vec<Invitee> {
    component_without(me, members, adjacency, &BTreeSet::new())
}

/// [`component`] with the nodes of the organisations `removed` left out too.
fn component_without(
    me: &str,
    members: &[Invitee],
    adjacency: &BTreeMap<String, Vec<String>>,
    removed: &BTreeSet<&str>,
) -> Vec<Invitee> {
    let by_name: BTreeMap<&str, &Invitee> = members
        .iter()
        .filter(|m| m.kind != OrgKind::Hq && !removed.contains(m.organisation.as_str()))
        .map(|m| (m.name.as_str(), m))
        .collect();
    if !by_name.contains_key(me) {
        return vec![];
    }
    let mut seen: BTreeSet<&str> = BTreeSet::from([me]);
    let mut queue = VecDeque::from([me]);
    while let Some(u) = queue.pop_front() {
        for v in adjacency.get(u).into_iter().flatten() {
            if let Some((name, _)) = by_name.get_key_value(v.as_str())
                && seen.insert(name)
            {
                queue.push_back(name);
            }
        }
    }
    seen.into_iter().map(|n| by_name[n].clone()).collect()
}

/// Organisation rule on `me`'s connected component of non-HQ `members` (a stage's set:
/// U2, then U3) in the graph `adjacency`: at least `min_other_organisations + c`
/// franchisee organisations other than `own_org`, as [`rules::check_organisations`]
/// asks of the whole round under full SecAgg.
pub fn check_component_organisations(
    rules: &NodeRules,
    me: &str,
    own_org: &str,
    members: &[Invitee],
    adjacency: &BTreeMap<String, Vec<String>>,
    stage: Stage,
) -> Result<(), NeighbourhoodError> {
    let piece = component(me, members, adjacency);
    let others = rules::other_organisations(own_org, &piece);
    let need = rules.min_other_organisations + rules.assume_colluding_nodes;
    if others < need {
        return Err(NeighbourhoodError::Organisations {
            stage,
            size: piece.len(),
            others,
            min: rules.min_other_organisations,
            c: rules.assume_colluding_nodes,
            need,
        });
    }
    // The worst case over which c other organisations collude (their nodes leave the
    // component, as HQ's do). Organisations outside the piece cannot cut it.
    let c = rules.assume_colluding_nodes;
    let orgs: Vec<&str> = piece
        .iter()
        .filter(|m| m.kind == OrgKind::Franchisee && m.organisation != own_org)
        .map(|m| m.organisation.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let sets = binomial(orgs.len(), c);
    if sets > MAX_COLLUDER_SETS {
        return Err(NeighbourhoodError::TooManyColluderSets { c, orgs: orgs.len(), sets, max: MAX_COLLUDER_SETS });
    }
    if c == 0 {
        return Ok(());
    }
    let g = PieceGraph::new(me, own_org, &piece, &orgs, adjacency);
    // c = 1 and an organisation with one node that is not a cut vertex of the piece:
    // removing it leaves the rest connected, one organisation fewer, without a search.
    let cut = if c == 1 { g.cut_vertices() } else { Vec::new() };
    let cut_by = |removed: &[usize]| -> Option<NeighbourhoodError> {
        let (size, others) = match removed {
            [x] if g.nodes_of[*x].len() == 1 && !cut[g.nodes_of[*x][0]] => (piece.len() - 1, orgs.len() - 1),
            _ => g.reach_without(removed),
        };
        (others < rules.min_other_organisations).then(|| NeighbourhoodError::CutByColluders {
            stage,
            colluders: removed.iter().map(|&i| orgs[i]).collect::<Vec<_>>().join(", "),
            size,
            others,
            min: rules.min_other_organisations,
        })
    };
    let mut pick: Vec<usize> = (0..c).collect();
    loop {
        if let Some(e) = cut_by(&pick) {
            return Err(e);
        }
        // The next c-subset of 0..orgs.len() in lexicographic order.
        let Some(i) = (0..c).rev().find(|&i| pick[i] < orgs.len() - c + i) else { return Ok(()) };
        pick[i] += 1;
        for j in i + 1..c {
            pick[j] = pick[j - 1] + 1;
        }
    }
}

/// `me`'s component as a graph over indices, for the colluder searches: one search per
/// choice of colluding organisations, so it works on integers, not names (at n = 1,000
/// with k = 96 a search by names took most of a node's time in a round).
struct PieceGraph {
    me: usize,
    adj: Vec<Vec<usize>>,
    /// Each node's index in the other organisations (`None`: this node's own).
    org: Vec<Option<usize>>,
    /// The nodes of each other organisation.
    nodes_of: Vec<Vec<usize>>,
}

impl PieceGraph {
    fn new(
        me: &str,
        own_org: &str,
        piece: &[Invitee],
        orgs: &[&str],
        adjacency: &BTreeMap<String, Vec<String>>,
    ) -> Self {
        let index: BTreeMap<&str, usize> = piece.iter().enumerate().map(|(i, m)| (m.name.as_str(), i)).collect();
        let org_index: BTreeMap<&str, usize> = orgs.iter().enumerate().map(|(i, o)| (*o, i)).collect();
        let adj = piece
            .iter()
            .map(|m| {
                adjacency.get(&m.name).into_iter().flatten().filter_map(|v| index.get(v.as_str()).copied()).collect()
            })
            .collect();
        let org: Vec<Option<usize>> = piece
            .iter()
            .map(|m| (m.organisation != own_org).then(|| org_index.get(m.organisation.as_str()).copied()).flatten())
            .collect();
        let mut nodes_of = vec![Vec::new(); orgs.len()];
        for (i, o) in org.iter().enumerate() {
            if let Some(o) = o {
                nodes_of[*o].push(i);
            }
        }
        // Unwrap safety: `component` puts `me` in every non-empty piece, and the caller
        // returned early for an empty one (no other organisation).
        Self { me: index[me], adj, org, nodes_of }
    }

    /// The size of `me`'s component without the nodes of the `removed` organisations,
    /// and how many other organisations it holds.
    fn reach_without(&self, removed: &[usize]) -> (usize, usize) {
        let gone = |i: usize| self.org[i].is_some_and(|o| removed.contains(&o));
        let mut seen = vec![false; self.adj.len()];
        let mut has_org = vec![false; self.nodes_of.len()];
        let mut queue = VecDeque::from([self.me]);
        seen[self.me] = true;
        let mut size = 0;
        while let Some(u) = queue.pop_front() {
            size += 1;
            if let Some(o) = self.org[u] {
                has_org[o] = true;
            }
            for &v in &self.adj[u] {
                if !seen[v] && !gone(v) {
                    seen[v] = true;
                    queue.push_back(v);
                }
            }
        }
        (size, has_org.iter().filter(|&&h| h).count())
    }

    /// Cut vertices (articulation points) of the piece, by Hopcroft and Tarjan's
    /// depth-first search (CACM 16(6), 1973), iteratively (pieces of thousands of nodes).
    fn cut_vertices(&self) -> Vec<bool> {
        let n = self.adj.len();
        let (mut disc, mut low) = (vec![usize::MAX; n], vec![0usize; n]);
        let mut cut = vec![false; n];
        let mut time = 0;
        // (node, parent, next edge to look at)
        let mut stack = vec![(self.me, usize::MAX, 0usize)];
        disc[self.me] = 0;
        low[self.me] = 0;
        let mut root_children = 0;
        while let Some(&mut (u, parent, ref mut next)) = stack.last_mut() {
            if let Some(&v) = self.adj[u].get(*next) {
                *next += 1;
                if disc[v] == usize::MAX {
                    time += 1;
                    disc[v] = time;
                    low[v] = time;
                    if u == self.me {
                        root_children += 1;
                    }
                    stack.push((v, u, 0));
                } else if v != parent {
                    low[u] = low[u].min(disc[v]);
                }
            } else {
                stack.pop();
                if parent != usize::MAX {
                    low[parent] = low[parent].min(low[u]);
                    if parent != self.me && low[u] >= disc[parent] {
                        cut[parent] = true;
                    }
                }
            }
        }
        cut[self.me] = root_children > 1;
        cut
    }
}

/// C(n, k), saturating (only compared with a small bound).
fn binomial(n: usize, k: usize) -> u128 {
    if k > n {
        return 0;
    }
    let k = k.min(n - k);
    let mut r: u128 = 1;
    for i in 0..k {
        r = r.saturating_mul((n - i) as u128) / (i as u128 + 1);
    }
    r
}

/// A SecAgg+ invitation as a node checks it before it advertises keys, when the graph
/// is not drawn yet: at least `min_participants` invited, the organisation rule over
/// all of them (a component can only hold fewer), and a degree and threshold that
/// can be safe at all — k even, 2 ≤ k < n − 1 (k ≥ n − 1 is full SecAgg, which the
/// coordinator must run as such), k/2 < t ≤ k.
pub fn check_invitation(
    rules: &NodeRules,
    own_org: &str,
    invited: &[Invitee],
    k: usize,
    t: usize,
) -> Result<(), String> {
    let n = invited.len();
    if n < rules.min_participants {
        return Err(format!("policy: {n} nodes invited, fewer than min_participants = {}", rules.min_participants));
    }
    if k < 2 || !k.is_multiple_of(2) || k + 1 >= n || 2 * t <= k || t > k {
        return Err(format!(
            "policy: the invitation's SecAgg+ graph degree k = {k} and neighbourhood threshold t_k = {t} cannot be \
             safe for n = {n} nodes: k must be even with 2 <= k < n - 1, and k/2 < t_k <= k"
        ));
    }
    rules::check_organisations(rules, own_org, invited, Stage::Invited)
}

/// The rules of a SecAgg+ round over one stage's set (U1, U2, U3), as a node checks
/// them on the graph it computed itself before its bytes leave: the neighbourhood
/// threshold over all its `neighbours` ([`check_neighbourhood`]), at least t of them
/// among `members` ([`check_neighbours_present`]), the organisation rule on its
/// component of non-HQ `members` ([`check_component_organisations`]), and at least
/// `min_participants` members.
#[allow(clippy::too_many_arguments)] // the rule's inputs, each plain data
pub fn check_stage(
    rules: &NodeRules,
    me: &str,
    own_org: &str,
    members: &[Invitee],
    neighbours: &[Invitee],
    adjacency: &BTreeMap<String, Vec<String>>,
    (k, t): (usize, usize),
    stage: Stage,
) -> Result<(), String> {
    if members.len() < rules.min_participants {
        return Err(format!(
            "policy: {} nodes are {}, fewer than min_participants = {}; refusing",
            members.len(),
            stage.name(),
            rules.min_participants
        ));
    }
    check_neighbourhood(rules, own_org, neighbours, k, t).map_err(|e| e.to_string())?;
    let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    check_neighbours_present(neighbours, &names, t, stage).map_err(|e| e.to_string())?;
    check_component_organisations(rules, me, own_org, members, adjacency, stage).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::fixtures::{fr, hq, m};

    fn rules() -> NodeRules {
        NodeRules {
            assume_colluding_nodes: 1,
            min_other_organisations: 2,
            min_participants: 3,
            min_population_difference: 3,
            differencing_window_days: 30,
        }
    }

    /// A ring (each node adjacent to the next and previous: H(n, 2)) over `names` in order.
    fn ring(names: &[&str]) -> BTreeMap<String, Vec<String>> {
        let n = names.len();
        (0..n)
            .map(|i| {
                let mut near = vec![names[(i + 1) % n].to_string(), names[(i + n - 1) % n].to_string()];
                near.sort();
                (names[i].to_string(), near)
            })
            .collect()
    }

    #[test]
    fn the_neighbourhood_threshold_refuses_exactly_at_2t_equal_to_k_plus_h_plus_c() {
        // k = 10 neighbours: 2 HQ-owned, 2 stores of Y (the largest other organisation:
        // C = 2 for c = 1), 6 franchisees of their own. k + H + C = 14.
        let mut near: Vec<Invitee> = vec![hq("hq-1"), hq("hq-2")];
        near.extend((1..=2).map(|i| m(&format!("y-{i}"), "y holdings", OrgKind::Franchisee)));
        near.extend((1..=6).map(|i| fr(&format!("f{i}"))));
        let err = check_neighbourhood(&rules(), "me ltd", &near, 10, 7).unwrap_err();
        assert_eq!(err, NeighbourhoodError::Threshold { k: 10, t: 7, hq: 2, colluders: 2, c: 1, need: 8 });
        let text = err.to_string();
        assert!(text.contains("2t_k > k + H + C") && text.contains("t_k >= 8") && text.contains("H = 2"), "{text}");
        check_neighbourhood(&rules(), "me ltd", &near, 10, 8).unwrap();
        // t_k above k, or a neighbour list that is not of the round's degree: refused.
        assert!(check_neighbourhood(&rules(), "me ltd", &near, 10, 11).is_err());
        assert_eq!(
            check_neighbourhood(&rules(), "me ltd", &near[..9], 10, 8),
            Err(NeighbourhoodError::Degree { got: 9, k: 10 })
        );
        // A store of Y with the same neighbours does not fear Y: its C is one node (the
        // largest *other* organisation), k + H + C = 13, and t_k = 7 suffices.
        assert_eq!(rules::colluding_nodes(&rules(), "y holdings", &near), 1);
        check_neighbourhood(&rules(), "y holdings", &near, 10, 7).unwrap();
        // With c = 0 and no HQ neighbour, t_k = k/2 + 1 is the least: 2t > k.
        let plain: Vec<Invitee> = (1..=10).map(|i| fr(&format!("f{i}"))).collect();
        let none = NodeRules { assume_colluding_nodes: 0, ..rules() };
        assert!(check_neighbourhood(&none, "me ltd", &plain, 10, 5).is_err());
        check_neighbourhood(&none, "me ltd", &plain, 10, 6).unwrap();
    }

    #[test]
    fn too_few_neighbours_present_is_refused_at_t_minus_one() {
        let near: Vec<Invitee> = (1..=6).map(|i| fr(&format!("f{i}"))).collect();
        let present: Vec<String> = ["f1", "f2", "f3", "f4", "other"].iter().map(|s| s.to_string()).collect();
        check_neighbours_present(&near, &present, 4, Stage::Delivered).unwrap();
        let err = check_neighbours_present(&near, &present, 5, Stage::Survivors).unwrap_err();
        assert_eq!(err, NeighbourhoodError::TooFewNeighbours { stage: Stage::Survivors, present: 4, k: 6, t: 5 });
        assert!(err.to_string().contains("surviving (U3)"), "{err}");
    }

    #[test]
    fn the_organisation_rule_applies_to_the_component_hq_nodes_cut() {
        // Ring: me – a – b – HQ1 – c – d – e – HQ2 – (back to me). The whole U2 has five
        // other franchisee organisations, but HQ's two nodes cut the ring: me's component
        // is {me, a, b}, two others, fewer than 2 + c = 3.
        let names = ["me", "a", "b", "hq-1", "c", "d", "e", "hq-2"];
        let adjacency = ring(&names);
        let u2: Vec<Invitee> = names.iter().map(|n| if n.starts_with("hq") { hq(n) } else { fr(n) }).collect();
        rules::check_organisations(&rules(), "me ltd", &u2, Stage::Delivered).unwrap();
        let piece: Vec<String> = component("me", &u2, &adjacency).into_iter().map(|m| m.name).collect();
        assert_eq!(piece, vec!["a", "b", "me"]);
        let err =
            check_component_organisations(&rules(), "me", "me ltd", &u2, &adjacency, Stage::Delivered).unwrap_err();
        assert_eq!(
            err,
            NeighbourhoodError::Organisations { stage: Stage::Delivered, size: 3, others: 2, min: 2, c: 1, need: 3 }
        );
        assert!(err.to_string().contains("delivered (U2)") && err.to_string().contains("2 + 1 = 3"), "{err}");
        // c, on the other side, sees {c, d, e}: also two others.
        let theirs: Vec<String> = component("c", &u2, &adjacency).into_iter().map(|m| m.name).collect();
        assert_eq!(theirs, vec!["c", "d", "e"]);

        // Franchisees x and y in HQ's places: one component in U2 (seven others), but if
        // both drop, U3 falls apart into {me, a, b} and {c, d, e}: passed at U2, refused at U3.
        let names = ["me", "a", "b", "x", "c", "d", "e", "y"];
        let adjacency = ring(&names);
        let u2: Vec<Invitee> = names.iter().map(|n| fr(n)).collect();
        assert_eq!(component("me", &u2, &adjacency).len(), 8);
        check_component_organisations(&rules(), "me", "me ltd", &u2, &adjacency, Stage::Delivered).unwrap();
        let u3: Vec<Invitee> = u2.iter().filter(|m| m.name != "x" && m.name != "y").cloned().collect();
        rules::check_organisations(&rules(), "me ltd", &u3, Stage::Survivors).unwrap();
        let err =
            check_component_organisations(&rules(), "me", "me ltd", &u3, &adjacency, Stage::Survivors).unwrap_err();
        assert_eq!(
            err,
            NeighbourhoodError::Organisations { stage: Stage::Survivors, size: 3, others: 2, min: 2, c: 1, need: 3 }
        );
        // Only x drops: the ring is a path through y, one piece of seven.
        let u3: Vec<Invitee> = u2.iter().filter(|m| m.name != "x").cloned().collect();
        assert_eq!(component("me", &u3, &adjacency).len(), 7);
        check_component_organisations(&rules(), "me", "me ltd", &u3, &adjacency, Stage::Survivors).unwrap();
        // A node that is not a non-HQ member has no component.
        let with_hq = vec![hq("x"), fr("me")];
        assert!(component("x", &with_hq, &adjacency).is_empty());
        assert!(component("nobody", &u2, &adjacency).is_empty());
    }

    #[test]
    fn the_organisation_rule_holds_for_the_worst_choice_of_colluders() {
        // Ring: me – a – x1 – b – c – d – x2 – e – (back to me), x1 and x2 two stores of
        // one organisation. Six other organisations in one piece: the plain rule passes
        // (6 ≥ min 3 + c 1). But if x's organisation colludes, its two stores cut the
        // ring: me's piece is {e, me, a}, two others, fewer than 3.
        let rules = NodeRules { min_other_organisations: 3, ..rules() };
        let names = ["me", "a", "x1", "b", "c", "d", "x2", "e"];
        let adjacency = ring(&names);
        let u2: Vec<Invitee> = names
            .iter()
            .map(|n| if n.starts_with('x') { m(n, "x holdings", OrgKind::Franchisee) } else { fr(n) })
            .collect();
        rules::check_organisations(&rules, "me ltd", &u2, Stage::Delivered).unwrap();
        let err = check_component_organisations(&rules, "me", "me ltd", &u2, &adjacency, Stage::Delivered).unwrap_err();
        assert_eq!(
            err,
            NeighbourhoodError::CutByColluders {
                stage: Stage::Delivered,
                colluders: "x holdings".into(),
                size: 3,
                others: 2,
                min: 3
            }
        );
        assert!(err.to_string().contains("if x holdings colluded"), "{err}");
        // With c = 0 nobody is assumed to collude, and the piece of eight passes.
        let trusting = NodeRules { assume_colluding_nodes: 0, ..rules };
        check_component_organisations(&trusting, "me", "me ltd", &u2, &adjacency, Stage::Delivered).unwrap();
        // The stores of x in one place (me – a – x1 – x2 – b – …): removing them leaves a
        // path through the rest, one piece with five others; it passes.
        let names = ["me", "a", "x1", "x2", "b", "c", "d", "e"];
        let adjacency = ring(&names);
        check_component_organisations(&rules, "me", "me ltd", &u2, &adjacency, Stage::Delivered).unwrap();
        // c = 2 of 6 organisations: 15 choices, searched in order; on a ring any two
        // organisations cut it, and the first choice that leaves me fewer than two
        // others is a's and d's: me's piece is {me, e}.
        let two = NodeRules { assume_colluding_nodes: 2, min_other_organisations: 2, ..rules };
        assert_eq!(
            check_component_organisations(&two, "me", "me ltd", &u2, &adjacency, Stage::Delivered),
            Err(NeighbourhoodError::CutByColluders {
                stage: Stage::Delivered,
                colluders: "a ltd, d ltd".into(),
                size: 2,
                others: 1,
                min: 2
            })
        );
        assert_eq!(binomial(6, 2), 15);
        assert_eq!(binomial(200, 2), 19_900);
        assert!(binomial(201, 2) > MAX_COLLUDER_SETS);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// The integer search with its cut-vertex shortcut gives the same verdict as a
        /// search by names for every colluding organisation, on random graphs with
        /// one- and two-store organisations and HQ nodes.
        #[test]
        fn the_colluder_search_matches_a_search_by_names(
            edges in proptest::collection::vec((0usize..10, 0usize..10), 8..30),
            org_of in proptest::collection::vec(0usize..7, 10),
            hq in proptest::collection::vec(proptest::bool::weighted(0.15), 10),
            min in 0usize..4,
        ) {
            let names: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
            let mut adjacency: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (a, b) in edges.into_iter().filter(|(a, b)| a != b) {
                for (u, v) in [(a, b), (b, a)] {
                    let list = adjacency.entry(names[u].clone()).or_default();
                    if !list.contains(&names[v]) {
                        list.push(names[v].clone());
                    }
                }
            }
            let members: Vec<Invitee> = (0..10)
                .map(|i| if hq[i] && i != 0 { crate::rules::fixtures::hq(&names[i]) } else { m(&names[i], &format!("org{}", org_of[i]), OrgKind::Franchisee) })
                .collect();
            let own = members[0].organisation.clone();
            let rules = NodeRules { min_other_organisations: min, assume_colluding_nodes: 1, ..rules() };
            let got = check_component_organisations(&rules, "n0", &own, &members, &adjacency, Stage::Survivors).is_ok();
            // By names: the rule without colluders, then every single colluding organisation.
            let piece = component("n0", &members, &adjacency);
            let mut want = rules::other_organisations(&own, &piece) > min;
            let orgs: BTreeSet<&str> = piece.iter().filter(|x| x.kind == OrgKind::Franchisee && x.organisation != own).map(|x| x.organisation.as_str()).collect();
            for o in orgs {
                let rest = component_without("n0", &members, &adjacency, &BTreeSet::from([o]));
                want &= rules::other_organisations(&own, &rest) >= min;
            }
            proptest::prop_assert_eq!(got, want);
        }
    }
}
