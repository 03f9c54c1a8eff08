//! Issue 12: the channel-overlap matrix by private set intersection — the
//! coordinator's side of a PSI run. It announces the run (signed), collects each
//! node's signed run keys and relays to every node the keys of the peers that paired
//! with it, then relays the sealed list chunks between the two nodes of each pair, and
//! finally collects each node's release: its noised customer count and the noised
//! count of each pair it compared.
//!
//! The coordinator never holds a key that opens a list (the chunks are sealed node to
//! node: `fedcrm_crypto::psi::channel`), never both sides' doubly-blinded points, and
//! never an exact count: a pair's count comes only from its comparer, which is never
//! HQ's node when a franchisee takes part (`fedcrm_protocol::psi::comparer`). The
//! release door applies the minimum cohort to every count.
//!
//! A node that refuses or sends a malformed message stops the whole run without a
//! release (a refusal is how a node reports a list it caught altered): run it again. A
//! node whose connection is lost before it released is dropped: its peers are told
//! (`PsiDrop`), drop their pairs with it, and the run goes on over the others.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fedcrm_audit::{Event, Member};
use fedcrm_crypto::psi::channel::CHUNK_POINTS;
use fedcrm_crypto::{RoundId, SystemRandom};
use fedcrm_dp::accounting::Charge;
use fedcrm_dp::sampler::Variance;
use fedcrm_pki::OrgKind;
use fedcrm_protocol::psi::{Side, SignedRunKey, comparer};
use fedcrm_protocol::wire::{
    CHANNEL_OVERLAP, FromNode, MAX_PSI_PARTICIPANTS, PsiChunk, PsiKeys, PsiParticipant, PsiRelease, PsiStart, ToNode,
    psi_start_payload,
};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use super::AnalysisError;
use crate::Coordinator;
use crate::registry::{ConnectedNode, SessionEventBody};
use crate::round::RoundError;

/// What an analyst asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlapRequest {
    pub purpose: String,
    pub requested_by: String,
    pub requested_by_organisation: String,
    /// Noised counts (the default); false: exact, if every participant allows it.
    pub dp: bool,
    /// The nodes to take part; empty: every connected node.
    pub nodes: Vec<String>,
    /// Segment profile of the shared customers (reference date and global cut points);
    /// `None`: the plain overlap.
    pub segments: Option<fedcrm_protocol::wire::SegmentProfile>,
}

/// One channel of the released matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelOut {
    pub node: String,
    pub organisation: String,
    pub kind: OrgKind,
    /// The node's (noised) customer count; `None`: withheld below the minimum cohort.
    pub customers: Option<i64>,
}

/// One compared pair of the released matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairOut {
    pub a: String,
    pub b: String,
    /// The node that compared (the only party that saw the exact count).
    pub comparer: String,
    /// The (noised) intersection count; `None`: withheld below the minimum cohort. For
    /// a segment profile, the sum of its cells as released.
    pub shared: Option<i64>,
    /// Segment profile: 16 cells, row-major, the row `a`'s segment, the column `b`'s;
    /// `None` in a cell: withheld.
    pub segments: Option<Vec<Option<i64>>>,
}

/// A released overlap matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct OverlapOutcome {
    pub run: String,
    pub analysis: String,
    pub channels: Vec<ChannelOut>,
    pub pairs: Vec<PairOut>,
    /// σ² on every count; `None`: exact.
    pub noise: Option<Variance>,
    /// The most one node's release costs it (zCDP ρ), under DP.
    pub rho: Option<f64>,
    pub min_cohort: u64,
    /// Pairs that did not run and nodes that did not take part, with why.
    pub exits: BTreeMap<String, String>,
}

/// Where a run stands, for the analyst's progress line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// `keys`, `lists`, `released`.
    pub stage: &'static str,
    pub lists_done: u32,
    pub lists: u32,
    pub points: u64,
}

/// The most a run can charge each node (its size and one count per other node).
pub fn planned_charge(nodes: usize, variance: &Variance) -> Charge {
    Charge { rho: nodes as f64 / (2.0 * variance.as_f64()), xi: 0.0 }
}

fn pair_key(a: &str, b: &str) -> (String, String) {
    if a < b { (a.into(), b.into()) } else { (b.into(), a.into()) }
}

impl Coordinator {
    /// Run one PSI overlap across the connected nodes (or those named).
    pub async fn run_overlap(
        &self,
        request: &OverlapRequest,
        progress: Option<UnboundedSender<Progress>>,
    ) -> Result<OverlapOutcome, AnalysisError> {
        let mut events = self.events.try_lock().map_err(|_| AnalysisError::Busy)?;
        while events.try_recv().is_ok() {}
        let mut b = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
            .map_err(|_| AnalysisError::Audit("system random number generator failed".into()))?;
        let id = hex::encode(b);
        #[cfg(feature = "test-util")]
        let id = self.hooks().reuse_analysis_id.clone().unwrap_or(id);
        crate::audit::record(
            &self.audit,
            Event::AnalysisRequested {
                analysis: id.clone(),
                kind: CHANNEL_OVERLAP.into(),
                analyst: request.requested_by.clone(),
                organisation: request.requested_by_organisation.clone(),
                purpose: request.purpose.clone(),
                parameters: serde_json::json!({ "dp": request.dp, "nodes": request.nodes }),
            },
        )
        .map_err(|e| AnalysisError::Audit(e.to_string()))?;
        let out = self.overlap(&mut events, request, &id, progress).await;
        self.concluded(&id, &out);
        out
    }

    async fn overlap(
        &self,
        events: &mut tokio::sync::mpsc::UnboundedReceiver<crate::registry::SessionEvent>,
        request: &OverlapRequest,
        id: &str,
        progress: Option<UnboundedSender<Progress>>,
    ) -> Result<OverlapOutcome, AnalysisError> {
        let connected = self.registry.connected();
        let invited: Vec<ConnectedNode> = if request.nodes.is_empty() {
            connected
        } else {
            let missing: Vec<&String> =
                request.nodes.iter().filter(|n| !connected.iter().any(|c| &c.name == *n)).collect();
            if !missing.is_empty() {
                return Err(AnalysisError::Privacy(format!(
                    "not connected: {}; `fedcrm hq status` lists the connected nodes",
                    missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                )));
            }
            connected.into_iter().filter(|c| request.nodes.contains(&c.name)).collect()
        };
        if invited.len() < 2 || invited.len() > MAX_PSI_PARTICIPANTS {
            return Err(AnalysisError::Round(RoundError::NotEnoughNodes { have: invited.len(), need: 2 }));
        }
        let noise = if request.dp {
            let v = self.analysis_variance(&invited);
            #[cfg(feature = "test-util")]
            let checks_budgets = !self.hooks().ignore_budgets;
            #[cfg(not(feature = "test-util"))]
            let checks_budgets = true;
            if checks_budgets {
                self.within_budgets(&invited, &planned_charge(invited.len(), &v)).map_err(|e| {
                    AnalysisError::Privacy(format!("refused before it started: the overlap would exceed a budget: {e}"))
                })?;
            }
            Some(v)
        } else {
            self.exact_allowed(&invited).map_err(AnalysisError::Privacy)?;
            None
        };
        let run = RoundId::random(&SystemRandom::new()).map_err(|e| AnalysisError::Audit(e.to_string()))?;
        #[cfg(feature = "test-util")]
        let run = self.hooks().force_psi_run.unwrap_or(run);
        let mut start = PsiStart {
            run,
            purpose: request.purpose.clone(),
            requested_by: request.requested_by.clone(),
            requested_by_organisation: request.requested_by_organisation.clone(),
            analysis_id: id.to_string(),
            participants: invited
                .iter()
                .map(|n| PsiParticipant { name: n.name.clone(), certificate: n.certificate.clone() })
                .collect(),
            noise: noise.clone(),
            segments: request.segments,
            signature: vec![],
        };
        start.participants.sort_by(|a, b| a.name.cmp(&b.name));
        start.signature = self.sign(&psi_start_payload(&start)).map_err(|e| AnalysisError::Audit(e.to_string()))?;
        let members: Vec<Member> = invited
            .iter()
            .map(|n| Member {
                name: n.name.clone(),
                organisation: n.organisation.clone(),
                kind: n.kind.as_str().into(),
            })
            .collect();
        crate::audit::record(
            &self.audit,
            Event::RoundStarted {
                round: run.to_hex(),
                analysis: id.to_string(),
                kind: "psi".into(),
                analysis_kind: CHANNEL_OVERLAP.into(),
                purpose: request.purpose.clone(),
                threshold: 0,
                length: 0,
                invited: members.clone(),
            },
        )
        .map_err(|e| AnalysisError::Audit(e.to_string()))?;
        let running = self.registry.round_started(run, CHUNK_POINTS, &invited);
        let mut run_state = Run {
            coordinator: self,
            events,
            run,
            by_name: invited.iter().map(|n| (n.name.clone(), n.clone())).collect(),
            live: invited.iter().map(|n| n.name.clone()).collect(),
            progress,
        };
        tracing::info!(%run, nodes = invited.len(), dp = request.dp, "psi run started");
        let outcome = run_state.drive(&start, id).await;
        running.retain(&BTreeSet::new());
        let (released, message) = match &outcome {
            Ok(_) => (true, "overlap released".to_string()),
            Err(e) => (false, crate::round::brief_lines(&e.to_string())),
        };
        for n in &invited {
            self.registry.send(&n.name, &ToNode::RoundEnd { round: run, released, message: message.clone() }).await;
        }
        let (channels, pairs, exits) = outcome?;
        // The release door for the matrix: this coordinator's `min_cohort` over what the
        // nodes released (exact counts come already withheld at each node's
        // `min_exact_count`), cells by the same complementary rule.
        let min_cohort = self.config.release.min_cohort;
        let min = i64::try_from(min_cohort).unwrap_or(i64::MAX);
        let withhold = |v: Option<i64>| v.filter(|&v| v >= min);
        let channels: Vec<ChannelOut> = channels
            .into_iter()
            .map(|(n, c)| ChannelOut {
                organisation: run_state.by_name[&n].organisation.clone(),
                kind: run_state.by_name[&n].kind,
                node: n,
                customers: withhold(c),
            })
            .collect();
        let profile = request.segments.is_some();
        let pairs: Vec<PairOut> = pairs
            .into_iter()
            .map(|((a, b), c)| PairOut {
                shared: withhold(c.total),
                segments: profile.then(|| fedcrm_analysis::suppression::suppress(&c.cells, c.total, min)),
                a,
                b,
                comparer: c.comparer,
            })
            .collect();
        let suppressed = channels.iter().filter(|c| c.customers.is_none()).count()
            + pairs.iter().filter(|p| p.shared.is_none()).count()
            + pairs.iter().flat_map(|p| p.segments.iter().flatten()).filter(|c| c.is_none()).count();
        crate::audit::record(
            &self.audit,
            Event::Release {
                analysis: id.to_string(),
                kind: CHANNEL_OVERLAP.into(),
                rounds: vec![run.to_hex()],
                contributors: members,
                min_participants: 2,
                min_cohort,
                cells: (channels.len() + pairs.len() * if profile { 17 } else { 1 }) as u64,
                suppressed: suppressed as u64,
            },
        )
        .map_err(|e| AnalysisError::Audit(e.to_string()))?;
        Ok(OverlapOutcome {
            run: run.to_hex(),
            analysis: id.to_string(),
            rho: noise.as_ref().map(|v| planned_charge(invited.len(), v).rho),
            noise,
            channels,
            pairs,
            min_cohort,
            exits,
        })
    }
}

/// Each node's size; each pair's comparer and cells (one, or a profile's 16 with the row
/// the pair's first name's segment); the pairs that did not run.
/// What [`Run::next`] brings.
enum Next {
    Message(String, FromNode),
    /// The node's connection was lost (it is out of the run from now on).
    Lost(String),
}

type Released = (Vec<(String, Option<i64>)>, BTreeMap<(String, String), Compared>, BTreeMap<String, String>);

/// A pair's counts as its comparer released them: the comparer, the pair's total, and
/// its cells (the total alone for a plain overlap; a profile's 16, the row the pair's
/// first name's segment); `None` where the comparer withheld a figure.
struct Compared {
    comparer: String,
    total: Option<i64>,
    cells: Vec<Option<i64>>,
}

/// One run in progress.
struct Run<'a> {
    coordinator: &'a Coordinator,
    events: &'a mut tokio::sync::mpsc::UnboundedReceiver<crate::registry::SessionEvent>,
    run: RoundId,
    by_name: BTreeMap<String, ConnectedNode>,
    /// Nodes still in the run.
    live: BTreeSet<String>,
    progress: Option<UnboundedSender<Progress>>,
}

impl Run<'_> {
    fn idle(&self) -> Instant {
        Instant::now() + Duration::from_secs(self.coordinator.config.rounds.phase_timeout_seconds.max(1))
    }

    fn report(&self, stage: &'static str, lists_done: u32, lists: u32, points: u64) {
        if let Some(p) = &self.progress {
            let _ = p.send(Progress { stage, lists_done, lists, points });
        }
    }

    /// The next message of this run from a node in it, or a node whose connection was
    /// lost; `Err` when a node refused or sent something malformed (the run stops: a
    /// refusal is how a node reports a list it caught altered), or at the deadline.
    async fn next(&mut self, deadline: Instant, waiting: &str) -> Result<Next, AnalysisError> {
        loop {
            let mut stopping = self.coordinator.stopping();
            let ev = tokio::select! {
                e = self.events.recv() => match e {
                    Some(e) => e,
                    None => return Err(AnalysisError::Round(RoundError::ShuttingDown)),
                },
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(self.stop(format!("no node answered in time while waiting for {waiting}")));
                }
                _ = stopping.wait_for(|s| *s) => return Err(AnalysisError::Round(RoundError::ShuttingDown)),
            };
            if !self.live.contains(&ev.node) || self.by_name.get(&ev.node).map(|n| n.session) != Some(ev.session) {
                continue;
            }
            match ev.body {
                SessionEventBody::Message(FromNode::Refusal { reason, awaiting_approval: true, .. }) => {
                    return Err(self.stop(format!(
                        "{} waits for its franchisee's approval ({reason}); ask them to approve it",
                        ev.node
                    )));
                }
                SessionEventBody::Message(FromNode::Refusal { reason, .. }) => {
                    return Err(self.stop(format!("{} refused: {reason}", ev.node)));
                }
                SessionEventBody::Message(m) if m.round() == Some(self.run) => return Ok(Next::Message(ev.node, m)),
                SessionEventBody::Message(m) => {
                    tracing::debug!(node = %ev.node, kind = m.kind(), "not of the psi run; ignored");
                }
                SessionEventBody::Malformed(why) => {
                    return Err(self.stop(format!("{} sent a malformed message: {why}", ev.node)));
                }
                SessionEventBody::LocalFault(why) => {
                    return Err(AnalysisError::Audit(format!("the coordinator's own fault: {why}")));
                }
                SessionEventBody::Closed => {
                    tracing::warn!(run = %self.run, node = %ev.node, "node disconnected during the psi run");
                    self.live.remove(&ev.node);
                    return Ok(Next::Lost(ev.node));
                }
            }
        }
    }

    fn stop(&self, why: String) -> AnalysisError {
        tracing::warn!(run = %self.run, %why, "psi run stops");
        AnalysisError::Model(format!("the overlap run {} stopped without a result: {why}; run it again", self.run))
    }

    fn side(&self, name: &str) -> Side<'_> {
        let n = &self.by_name[name];
        Side { name: &n.name, kind: n.kind }
    }

    async fn drive(&mut self, start: &PsiStart, id: &str) -> Result<Released, AnalysisError> {
        for n in self.live.clone() {
            #[allow(unused_mut)]
            let mut start = start.clone();
            #[cfg(feature = "test-util")]
            if let Some((_, noise)) = self.coordinator.hooks().psi_noise_for_node.as_ref().filter(|(m, _)| *m == n) {
                start.noise = noise.clone();
                start.signature = self
                    .coordinator
                    .sign(&psi_start_payload(&start))
                    .map_err(|e| AnalysisError::Audit(e.to_string()))?;
            }
            if !self.coordinator.registry.send(&n, &ToNode::PsiStart(Box::new(start))).await {
                return Err(self.stop(format!("{n} could not be reached")));
            }
        }
        // Keys: every node answers with its keys (or refuses, which stops the run).
        self.report("keys", 0, 0, 0);
        let mut keys: BTreeMap<String, PsiKeys> = BTreeMap::new();
        let mut exits = BTreeMap::new();
        let deadline = self.idle();
        while keys.len() < self.live.len() {
            let (node, m) = match self.next(deadline, "the nodes' run keys").await? {
                Next::Message(node, m) => (node, m),
                Next::Lost(node) => {
                    exits.insert(node, "disconnected before its run keys".to_string());
                    continue;
                }
            };
            let FromNode::PsiKeys(k) = m else {
                return Err(self.stop(format!("{node} sent {} where its run keys were due", m.kind())));
            };
            if let Some(bad) = k.keys.iter().find(|k| k.node != node || !self.by_name.contains_key(&k.peer)) {
                return Err(self.stop(format!("{node} sent a run key of {} for {}", bad.node, bad.peer)));
            }
            keys.insert(node, k);
        }
        // A pair runs when both sides keyed it.
        let key_of = |from: &str, to: &str| -> Option<&SignedRunKey> {
            keys.get(from).and_then(|k| k.keys.iter().find(|r| r.peer == to))
        };
        let names: Vec<String> = self.live.iter().cloned().collect();
        let mut pairs: BTreeMap<(String, String), String> = BTreeMap::new();
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                if key_of(a, b).is_some() && key_of(b, a).is_some() {
                    pairs.insert(pair_key(a, b), comparer(self.side(a), self.side(b)).to_string());
                } else {
                    let why = [(a, b), (b, a)]
                        .iter()
                        .filter_map(|(x, y)| {
                            keys[x.as_str()]
                                .declined
                                .iter()
                                .find(|d| &d.0 == *y)
                                .map(|d| format!("{x} declined: {}", d.1))
                        })
                        .collect::<Vec<_>>()
                        .join("; ");
                    exits.insert(format!("{a}–{b}"), if why.is_empty() { "not keyed".into() } else { why });
                }
            }
        }
        for n in &names {
            let relayed: Vec<SignedRunKey> = names
                .iter()
                .filter(|p| pairs.contains_key(&pair_key(n, p)))
                .filter_map(|p| key_of(p, n).cloned())
                .collect();
            let msg = ToNode::PsiKeys(PsiKeys { run: self.run, keys: relayed, declined: vec![] });
            if !self.coordinator.registry.send(n, &msg).await {
                return Err(self.stop(format!("{n} could not be reached")));
            }
        }
        tracing::info!(run = %self.run, pairs = pairs.len(), "psi run: keys relayed");
        // Lists: relay every chunk to its pair's other node; then the releases.
        let lists = (pairs.len() * 3) as u32;
        let (mut lists_done, mut points) = (0u32, 0u64);
        self.report("lists", 0, lists, 0);
        let mut released: BTreeMap<String, PsiRelease> = BTreeMap::new();
        // Pairs of a node whose connection was lost before it released: its peers drop
        // them and go on.
        let mut dropped: BTreeSet<(String, String)> = BTreeSet::new();
        while self.live.iter().any(|n| !released.contains_key(n)) {
            let deadline = self.idle();
            let (node, m) = match self.next(deadline, "the nodes' lists and releases").await? {
                Next::Message(node, m) => (node, m),
                Next::Lost(node) if released.contains_key(&node) => {
                    tracing::info!(run = %self.run, %node, "left after its release; nothing of the run is lost");
                    continue;
                }
                Next::Lost(node) => {
                    let why = format!("{node} disconnected during the run");
                    for (key, _) in pairs.iter().filter(|(k, _)| k.0 == node || k.1 == node) {
                        if !dropped.insert(key.clone()) {
                            continue;
                        }
                        exits.insert(format!("{}–{}", key.0, key.1), why.clone());
                        let other = if key.0 == node { &key.1 } else { &key.0 };
                        if self.live.contains(other) {
                            let msg = ToNode::PsiDrop { run: self.run, peer: node.clone(), reason: why.clone() };
                            self.coordinator.registry.send(other, &msg).await;
                        }
                    }
                    continue;
                }
            };
            match m {
                FromNode::PsiChunk(c) if dropped.contains(&pair_key(&node, &c.peer)) => {
                    tracing::debug!(run = %self.run, %node, peer = %c.peer, "chunk of a dropped pair; not relayed");
                }
                FromNode::PsiChunk(c) => {
                    if !pairs.contains_key(&pair_key(&node, &c.peer)) {
                        return Err(self.stop(format!("{node} sent a list to {}, not its peer in this run", c.peer)));
                    }
                    points += c.points() as u64;
                    if c.chunk.index + 1 == c.chunk.of {
                        lists_done += 1;
                        self.report("lists", lists_done, lists, points);
                    }
                    let to = c.peer.clone();
                    #[allow(unused_mut)]
                    let mut relayed = vec![PsiChunk { peer: node.clone(), ..c }];
                    #[cfg(feature = "test-util")]
                    if let Some(t) = &self.coordinator.hooks().tamper_psi_relay {
                        t(&to, &mut relayed);
                    }
                    for chunk in relayed {
                        if !self.coordinator.registry.send(&to, &ToNode::PsiChunk(chunk)).await {
                            return Err(self.stop(format!("{to} could not be reached")));
                        }
                    }
                }
                FromNode::PsiRelease(r) => {
                    if released.contains_key(&node) {
                        return Err(self.stop(format!("{node} released twice")));
                    }
                    let profile = start.segments.is_some();
                    if (profile && !r.counts.is_empty()) || (!profile && !r.tables.is_empty()) {
                        let (want, got) = if profile { ("tables", "counts") } else { ("counts", "tables") };
                        return Err(self.stop(format!("{node} released {got} where the run asked for {want}")));
                    }
                    let peers: Vec<&String> =
                        r.counts.iter().map(|c| &c.0).chain(r.tables.iter().map(|t| &t.peer)).collect();
                    for peer in &peers {
                        if pairs.get(&pair_key(&node, peer)) != Some(&node) {
                            return Err(
                                self.stop(format!("{node} released a count for {peer}, a pair it does not compare"))
                            );
                        }
                    }
                    // Every pair it compares, less those dropped (whose count it may or
                    // may not have released).
                    let missing = pairs
                        .iter()
                        .filter(|(k, c)| *c == &node && !dropped.contains(*k))
                        .find(|(k, _)| !peers.iter().any(|p| pair_key(&node, p) == **k));
                    if let Some((k, _)) = missing {
                        return Err(self.stop(format!("{node} released no count for its pair {}–{}", k.0, k.1)));
                    }
                    released.insert(node, r);
                }
                other => return Err(self.stop(format!("{node} sent {} during the lists", other.kind()))),
            }
        }
        self.report("released", lists_done, lists, points);
        tracing::info!(run = %self.run, analysis = %id, points, "psi run: every node released");
        let sizes = released.iter().map(|(n, r)| (n.clone(), r.customers)).collect();
        let mut counts = BTreeMap::new();
        for (node, r) in &released {
            for (peer, n) in r.counts.iter().filter(|(p, _)| !dropped.contains(&pair_key(node, p))) {
                counts.insert(pair_key(node, peer), Compared { comparer: node.clone(), total: *n, cells: vec![*n] });
            }
            for t in r.tables.iter().filter(|t| !dropped.contains(&pair_key(node, &t.peer))) {
                // Cells the comparer withheld it counts in its total; it shows no cell of a
                // total it withheld, and shown cells add up to the total.
                let shown = t.cells.iter().flatten().try_fold(0i64, |a, &c| a.checked_add(c));
                let adds_up = match (t.total, shown) {
                    (_, None) => false,
                    (None, _) => t.cells.iter().all(Option::is_none),
                    (Some(total), Some(shown)) => t.cells.iter().any(Option::is_none) || shown == total,
                };
                if !adds_up {
                    return Err(self.stop(format!(
                        "{node} released a segment profile for {} whose cells do not add up to its total",
                        t.peer
                    )));
                }
                // The comparer's rows are its own segments: transpose when it is the pair's
                // second name.
                let key = pair_key(node, &t.peer);
                let cells = if key.0 == *node {
                    t.cells.clone()
                } else {
                    (0..16).map(|k| t.cells[(k % 4) * 4 + k / 4]).collect()
                };
                counts.insert(key, Compared { comparer: node.clone(), total: t.total, cells });
            }
        }
        Ok((sizes, counts, exits))
    }
}
