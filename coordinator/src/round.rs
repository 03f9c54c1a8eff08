//! One secure-aggregation round, server side (Bonawitz et al. CCS 2017, Fig. 4, the
//! actively secure variant, phases numbered as in the paper and `secagg::Phase`):
//! Round 0 (AdvertiseKeys) → Round 1 (ShareKeys; each sealed share signed by its
//! sender) → Round 2 (MaskedInputCollection; first the receivers report the signed
//! shares that do not open, and their senders leave the final U2) → Round 3
//! (ConsistencyCheck) → Round 4 (Unmasking), each phase with a deadline and its own
//! method below. A node that disconnects, refuses, times out
//! or breaks the protocol is dropped from the round; the round goes on while at
//! least t nodes remain. The test hooks on a round are in `hooks.rs`; what the analyst
//! is told about the nodes that left, in `brief.rs`.
//!
//! **Invariant:** the coordinator never holds an unmasked per-node vector: a masked
//! vector is buffered only until complete and validated, then added to the running
//! sum (`fedcrm_crypto::secagg::Aggregator`) and freed. The result leaves this module
//! only through [`crate::release`].

mod brief;
#[cfg(feature = "test-util")]
mod hooks;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fedcrm_analysis::rules::Invitee;
use fedcrm_analysis::width::pick_width;
use fedcrm_audit::{Event, Member};
use fedcrm_crypto::graph::{self, Graph, GraphSeed};
use fedcrm_crypto::multiround::{self, PairSeed, Reveal, RoundUnmasking};
use fedcrm_crypto::secagg::{self, PeerKeys, Phase, RoundParams, Topology, WordWidth, Words};
use fedcrm_crypto::shamir::Share;
use fedcrm_crypto::{RoundId, SystemRandom};
use fedcrm_pki::{self as pki, OrgKind};
use fedcrm_protocol::wire::{
    self, Analysis, Exclusion, FromNode, Noise, RevealedShare, RoundStart, Sealed, SignedKeys, ToNode, UnopenedShare,
    ViewSignature,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::audit::{lock, record};
use crate::config::RoundSettings;
use crate::registry::{ConnectedNode, SessionEvent, SessionEventBody};
use crate::release::UnreleasedSum;

pub use brief::{BRIEF_CHARS, brief, brief_lines, describe};
#[cfg(feature = "test-util")]
pub use hooks::{
    FinalU2Tamper, Hooks, MaskedObserver, NoncesTamper, PsiRelayTamper, RosterSignatureTamper, RosterTamper,
    SealedObserver, ShareTamper, SharesObserver, UnmaskTamper, ViewSigner, ViewTamper,
};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RoundError {
    #[error(
        "round {round}: {have} nodes remain after {phase}, fewer than the threshold t={need}; no result. Left the round:{exits}"
    )]
    TooFew { round: RoundId, phase: Phase, have: usize, need: usize, exits: String },
    #[error("round {round}: {why}")]
    Failed { round: RoundId, why: String },
    /// The coordinator's own failure (its audit log): the round stops; no node is blamed.
    #[error("round {round}: the coordinator failed locally: {why}; the round stops (no node is at fault)")]
    Local { round: RoundId, why: String },
    #[error("only {have} nodes connected; the release rules need at least {need} participants")]
    NotEnoughNodes { have: usize, need: usize },
    #[error("the round cannot run with the connected nodes: {0}")]
    Unplannable(String),
    #[error(
        "round {round}: stopped before any data moved, because {nodes} must first be approved by its franchisee; run the analysis again once approved"
    )]
    AwaitingApproval { round: RoundId, nodes: String },
    /// SecAgg+: nodes of U1 did not reveal the graph nonce they committed to; nothing
    /// but keys, commitments and nonces moved. `Runner::run` starts the round again
    /// without them (a bounded number of times).
    #[error(
        "round {round}: {} did not reveal a graph nonce it committed to; the SecAgg+ graph is drawn over every node \
         that committed, so the round stops without any data moved. Left the round:{exits}",
        missing.join(", ")
    )]
    Unrevealed { round: RoundId, missing: Vec<String>, exits: String },
    /// Issue 10: a round's noised contribution would exceed a node's privacy budget as
    /// the node announced it; refused before anything started.
    #[error(
        "refused before it started: {0} (each node enforces its budget itself and would refuse; `fedcrm hq budget` \
         lists what every node has left)"
    )]
    OverBudget(String),
    /// Issue 11: a later round of an analysis lost a member of the analysis's
    /// population (the contributors of its first round) before its masked vector
    /// arrived: the round stops without being unmasked (a sum over fewer nodes could be
    /// subtracted from the others), and the analysis retries it once the population is
    /// back ([`crate::analyses`]). What it cost the nodes that masked is in
    /// `Runner::stopped_charges`.
    #[error(
        "round {round}: {} of the analysis's population did not contribute; the round stops without being \
         unmasked. Left the round:{exits}",
        missing.join(", ")
    )]
    NotPopulation { round: RoundId, missing: Vec<String>, exits: String },
    /// SIGINT/SIGTERM: the round ends where it is, without a release.
    #[error("the coordinator is shutting down; the analysis ended without releasing anything (run it again later)")]
    ShuttingDown,
}

/// Why a node left a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Refused(String),
    /// The node's franchisee has not approved this analysis yet.
    AwaitingApproval(String),
    Disconnected,
    TimedOut(Phase),
    Rejected(String),
    /// Left out of the final U2 before anyone masked: a share it signed did not open
    /// at its receiver (who reported it with the signed share as evidence).
    Excluded(String),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Refused(r) => write!(f, "refused: {r}"),
            Exit::AwaitingApproval(r) => write!(f, "awaiting approval: {r}"),
            Exit::Disconnected => f.write_str("disconnected"),
            Exit::TimedOut(p) => write!(f, "timed out during {p}"),
            Exit::Rejected(r) => write!(f, "rejected: {r}"),
            Exit::Excluded(r) => write!(f, "excluded: {r}"),
        }
    }
}

/// A finished round. Its sum is readable only by [`crate::release`].
#[derive(Debug)]
pub struct RoundOutput {
    pub round: RoundId,
    /// Nodes whose inputs are in the sum (U3), sorted.
    pub contributors: Vec<String>,
    /// Organisations of the contributors, same order.
    pub organisations: Vec<String>,
    /// Organisation kinds of the contributors, same order.
    pub kinds: Vec<OrgKind>,
    /// Nodes that left the round, and why.
    pub exits: BTreeMap<String, Exit>,
    pub(crate) sum: UnreleasedSum,
    /// Issue 10: the noise every contributor added (`None`: an exact round), and what
    /// the round cost each of them.
    pub noise: Option<Noise>,
    pub charge: Option<fedcrm_dp::accounting::Charge>,
}

pub(crate) struct Runner<'a> {
    pub coordinator: &'a crate::Coordinator,
    pub events: &'a mut mpsc::UnboundedReceiver<SessionEvent>,
    pub settings: RoundSettings,
    /// The keys of the analysis this runner runs, from its first round.
    pub keyed: Option<Keyed>,
    /// Issue 10: σ² per node in every round of the analysis (differential privacy), or
    /// `None` for an exact analysis.
    pub variance: Option<fedcrm_dp::sampler::Variance>,
    /// Issue 11: the analysis's population (sorted names) once its first round fixed
    /// it; a round whose U2 or U3 is any other set stops before it is unmasked
    /// ([`RoundError::NotPopulation`]).
    pub population: Option<Vec<String>>,
    /// Issue 11: what each round stopped after masking ([`RoundError::NotPopulation`])
    /// cost every node that masked: a retried round is charged again.
    pub stopped_charges: Vec<fedcrm_dp::accounting::Charge>,
}

/// An analysis's keys, set up in its first round (keys once per analysis,
/// `fedcrm_crypto::multiround`): later rounds of the analysis skip AdvertiseKeys and the
/// key roster, and reuse the setup's graph and view-signature quorum.
pub(crate) struct Keyed {
    analysis: String,
    setup: RoundId,
    t: usize,
    degree: usize,
    /// The setup's U1, with certificates, sorted.
    u1: Vec<SignedKeys>,
    graph: Option<(Graph, GraphSeed)>,
    quorum: usize,
    /// Every round id used and every node declared dropped in the analysis.
    state: multiround::Analysis,
}

/// Who is still in the round, and why the others left.
#[derive(Debug, Default)]
struct Membership {
    live: BTreeSet<String>,
    exits: BTreeMap<String, Exit>,
}

impl Membership {
    fn leave(&mut self, node: &str, exit: Exit) {
        self.live.remove(node);
        self.exits.insert(node.to_string(), exit);
    }

    /// Nodes still live that did not answer this phase time out.
    fn expire(&mut self, done: &BTreeSet<String>, phase: Phase) {
        for n in self.live.difference(done) {
            self.exits.entry(n.clone()).or_insert(Exit::TimedOut(phase));
        }
        self.live.retain(|n| done.contains(n));
    }
}

struct Assembly {
    buf: Words,
    next: u32,
}

/// One round in progress.
struct Round<'r, 'a> {
    runner: &'r mut Runner<'a>,
    id: RoundId,
    t: usize,
    d: usize,
    /// The round's word width, from the analysis's range over the invited nodes.
    width: WordWidth,
    /// The per-node bound the width was picked for (`max_customers_per_node`).
    max_per_node: u64,
    /// Issue 10: the noise every node adds (`[rounds] noise_variance`); `None`: exact.
    noise: Option<Noise>,
    /// Issue 10: what the round costs each contributor, and the analysis charged.
    charge: Option<fedcrm_dp::accounting::Charge>,
    analysis_id: String,
    /// SecAgg+: the graph's degree k (`t` is then per neighbourhood); 0: full SecAgg.
    degree: usize,
    /// A later round of an analysis: the round that set up its keys (in the runner's
    /// `keyed`). `None`: this round sets them up.
    setup: Option<RoundId>,
    /// The signed roster payload (the graph seed hashes it).
    roster_payload: Vec<u8>,
    /// SecAgg+: the round's graph over U1 and its seed, once the nonces are revealed.
    graph: Option<(Graph, GraphSeed)>,
    /// SecAgg+: the view signatures every node needs before it reveals (signed with
    /// the commitments).
    quorum: usize,
    /// How many times this round was started again (test hook `stop_graphs`).
    #[cfg(feature = "test-util")]
    restart: usize,
    invited: &'r [ConnectedNode],
    by_name: BTreeMap<String, ConnectedNode>,
    members: Membership,
    /// The phase in progress.
    phase: Phase,
    /// This round as the sessions' readers see it: they drop messages of nodes that
    /// are not (or no longer) live before they are receipted or queued.
    running: crate::registry::Running<'a>,
}

impl Runner<'_> {
    /// Run one round of `analysis` over `invited` with threshold `t`: full SecAgg when
    /// `degree` is 0, else SecAgg+ over a random graph of that degree with the
    /// per-neighbourhood threshold `t`.
    ///
    /// A SecAgg+ round whose graph cannot be drawn because nodes did not reveal their
    /// nonces starts again without them, at most [`MAX_GRAPH_RESTARTS`] times: one node
    /// (or a network fault) between commit and reveal does not take the analysis down.
    /// Each restart is a fresh graph, which is what a coordinator grinding graphs would
    /// want, so nodes count them too and refuse beyond their own limit.
    pub async fn run(
        &mut self,
        analysis: &Analysis,
        invited: &[ConnectedNode],
        t: usize,
        degree: usize,
    ) -> Result<RoundOutput, RoundError> {
        let mut invited = invited.to_vec();
        // Keys once per analysis: a later round of the analysis whose keys this runner
        // holds reuses them; any other round sets up afresh.
        self.keyed.take_if(|k| k.analysis != analysis.analysis_id);
        #[cfg(feature = "test-util")]
        if let Some(k) = self.keyed.as_ref().filter(|_| self.coordinator.hooks().reinvite_dropped) {
            let dropped: Vec<String> = k.state.dropped().into_iter().map(|(n, _)| n).collect();
            for p in self.coordinator.registry.connected() {
                if dropped.contains(&p.name) && !invited.iter().any(|i| i.name == p.name) {
                    invited.push(p);
                }
            }
            invited.sort_by(|a, b| a.name.cmp(&b.name));
            return self.run_once(analysis, &invited, t, degree, 0).await;
        }
        #[cfg(feature = "test-util")]
        if self.keyed.is_some() {
            let out = &self.coordinator.hooks().exclude_later;
            invited.retain(|p| !out.contains(&p.name));
        }
        if let Some(k) = &self.keyed {
            let roster: BTreeSet<&str> = k.u1.iter().map(|x| x.node.as_str()).collect();
            let dropped: BTreeSet<String> = k.state.dropped().into_iter().map(|(n, _)| n).collect();
            let stranger = invited.iter().find(|p| !roster.contains(p.name.as_str()) || dropped.contains(&p.name));
            if let Some(p) = stranger {
                return Err(RoundError::Unplannable(format!(
                    "{} was not in the first round of analysis {}, or was declared dropped in it: a later round \
                     takes only the analysis's remaining contributors",
                    p.name, analysis.analysis_id
                )));
            }
            if (k.t, k.degree) != (t, degree) {
                return Err(RoundError::Unplannable(format!(
                    "a later round of analysis {} must keep its setup's threshold and degree (t = {}, k = {})",
                    analysis.analysis_id, k.t, k.degree
                )));
            }
            return self.run_once(analysis, &invited, t, degree, 0).await;
        }
        let mut left: BTreeMap<String, Exit> = BTreeMap::new();
        let mut restarts = 0;
        #[cfg(not(feature = "test-util"))]
        let most = MAX_GRAPH_RESTARTS;
        #[cfg(feature = "test-util")]
        let most = MAX_GRAPH_RESTARTS.max(self.coordinator.hooks().stop_graphs);
        loop {
            match self.run_once(analysis, &invited, t, degree, restarts).await {
                // Restart only when a graph can still be drawn over those who remain.
                Err(RoundError::Unrevealed { round, missing, .. })
                    if restarts < most && invited.len().saturating_sub(missing.len()) > (degree + 1).max(t) =>
                {
                    restarts += 1;
                    tracing::warn!(%round, ?missing, restarts, "SecAgg+ round restarts without the nodes that did not reveal");
                    for m in &missing {
                        left.insert(
                            m.clone(),
                            Exit::Refused(format!("did not reveal its graph nonce in round {round}")),
                        );
                    }
                    invited.retain(|p| !missing.contains(&p.name));
                }
                Ok(mut out) => {
                    for (n, e) in left {
                        out.exits.entry(n).or_insert(e);
                    }
                    return Ok(out);
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn run_once(
        &mut self,
        analysis: &Analysis,
        invited: &[ConnectedNode],
        t: usize,
        degree: usize,
        restart: usize,
    ) -> Result<RoundOutput, RoundError> {
        #[cfg(not(feature = "test-util"))]
        let _ = restart;
        let rng = SystemRandom::new();
        let id =
            RoundId::random(&rng).map_err(|e| RoundError::Local { round: RoundId([0; 16]), why: e.to_string() })?;
        #[cfg(feature = "test-util")]
        let analysis = &self.coordinator.hooks().analysis(analysis);
        // Issue 9: the narrowest word the sum fits, from the range the analysis states
        // for the nodes invited; signed in the round start, recomputed by each node.
        let max_per_node = analysis.kind.query().per_node_bound(self.settings.max_customers_per_node, invited.len());
        // Issue 10: with differential privacy, k = t − H − the largest C among the
        // invitees, and σ² per node at least every invitee's announced floor, signed in
        // the round start (each node checks both against its own policy).
        let noise = match &self.variance {
            None => None,
            Some(variance) => Some(Noise {
                variance: variance.clone(),
                honest: crate::plan::honest(invited, t).map_err(RoundError::Unplannable)?,
            }),
        };
        #[cfg(feature = "test-util")]
        let checks_budgets = !self.coordinator.hooks().ignore_budgets;
        #[cfg(not(feature = "test-util"))]
        let checks_budgets = true;
        if let Some(n) = &noise
            && checks_budgets
        {
            self.coordinator.within_budgets(invited, &analysis.kind.charge(n)).map_err(RoundError::OverBudget)?;
        }
        #[cfg(feature = "test-util")]
        let noise = self.coordinator.hooks().force_noise.clone().or(noise);
        let range = analysis.kind.range_with(max_per_node, noise.as_ref(), invited.len());
        let width = pick_width(invited.len(), &range)
            .map_err(|e| RoundError::Unplannable(format!("{e} ([rounds] max_customers_per_node = {max_per_node})")))?;
        let by_name = invited.iter().map(|p| (p.name.clone(), p.clone())).collect();
        let chunk = self.settings.chunk_elements.max(1) as usize;
        let setup = self.keyed.as_ref().map(|k| k.setup);
        let running = self.coordinator.registry.round_started(id, chunk, invited);
        let mut round = Round {
            runner: self,
            id,
            t,
            d: analysis.kind.vector_len(),
            width,
            max_per_node,
            charge: noise.as_ref().map(|n| analysis.kind.charge(n)),
            analysis_id: analysis.analysis_id.clone(),
            noise,
            degree,
            setup,
            roster_payload: Vec::new(),
            graph: None,
            quorum: 0,
            #[cfg(feature = "test-util")]
            restart,
            invited,
            by_name,
            members: Membership::default(),
            phase: Phase::AdvertiseKeys,
            running,
        };
        let out = round.run(analysis).await;
        if let Err(e) = &out {
            let why = e.to_string();
            round.log_exits();
            round.end(false, &why).await;
        }
        out
    }
}

impl Round<'_, '_> {
    async fn run(&mut self, analysis: &Analysis) -> Result<RoundOutput, RoundError> {
        self.start(analysis).await?;
        let u1 = match self.setup {
            None => self.set_up(analysis).await?,
            Some(_) => {
                // Unwrap safety: `run_once` takes `setup` from the runner's keys.
                let k = self.runner.keyed.as_ref().expect("the analysis's keys");
                self.graph = k.graph.clone();
                self.quorum = k.quorum;
                k.u1.iter().filter(|x| self.by_name.contains_key(&x.node)).cloned().collect()
            }
        };
        let sealed = self.share_keys(&u1).await?;
        let u2 = self.share_reports(&sealed).await?;
        // Issue 11: a member of the population gone before masking: stop now, before
        // any node's masked vector (or its charge) leaves it.
        self.whole_population(&u2, false)?;
        // The nodes record the sum over U2 before they mask; so does the planner.
        self.contributed(analysis, &u2, false)?;
        let unmasking = self.masked_input(&u1, &u2).await?;
        let (u3, dropped) = (unmasking.survivors(), unmasking.dropped());
        // ... or whose masked vector did not arrive: never unmasked (the honest nodes
        // would refuse to sign the view anyway, `node::computation::Tracker::same_population`).
        self.whole_population(&u3, true)?;
        let signatures = self.consistency_check(&u2, &u3, &dropped).await?;
        let sum = self.unmasking(unmasking, &u1, &u2, &u3, signatures).await?;
        self.log_exits();
        self.contributed(analysis, &u3, true)?;
        self.end(true, "aggregate computed").await;
        tracing::info!(round = %self.id, contributors = u3.len(), "round complete");
        // Unwrap safety (indexing `by_name` here and below): every name in U1, U2 and U3,
        // and every node an event is accepted from, is an invitee, and `by_name` holds
        // every invitee.
        Ok(RoundOutput {
            round: self.id,
            organisations: u3.iter().map(|n| self.by_name[n].organisation.clone()).collect(),
            kinds: u3.iter().map(|n| self.by_name[n].kind).collect(),
            contributors: u3,
            exits: std::mem::take(&mut self.members.exits),
            sum,
            noise: self.noise.clone(),
            charge: self.charge,
        })
    }

    /// Issue 11: `members` (U2 or U3, sorted) must be the analysis's whole population,
    /// once its first round fixed it. `masked`: the nodes have masked (and paid for) it.
    fn whole_population(&mut self, members: &[String], masked: bool) -> Result<(), RoundError> {
        let Some(population) = &self.runner.population else { return Ok(()) };
        // The deviating coordinator of the attack tests, which leaves nodes out of later
        // rounds on purpose, skips this check: the nodes' own rules must stop it.
        #[cfg(feature = "test-util")]
        if !self.runner.coordinator.hooks().exclude_later.is_empty() {
            return Ok(());
        }
        let missing: Vec<String> = population.iter().filter(|p| !members.contains(p)).cloned().collect();
        if missing.is_empty() {
            return Ok(());
        }
        if masked && let Some(charge) = self.charge {
            self.runner.stopped_charges.push(charge);
        }
        Err(RoundError::NotPopulation { round: self.id, missing, exits: describe(&self.members.exits) })
    }

    /// The first round of an analysis: keys (and in SecAgg+ the graph) for all its
    /// rounds. Returns U1's keys.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 0 (AdvertiseKeys), server — once per analysis
    /// (`fedcrm_crypto::multiround`).
    async fn set_up(&mut self, analysis: &Analysis) -> Result<Vec<SignedKeys>, RoundError> {
        let (u1, commitments) = self.advertise_keys().await?;
        let nonces = if self.degree > 0 { self.draw_graph(&u1, &commitments).await? } else { Vec::new() };
        self.key_roster(&u1, &nonces).await?;
        let keys: Vec<PeerKeys> =
            u1.iter().map(|k| PeerKeys { name: k.node.clone(), enc: k.enc, mask: k.mask }).collect();
        let state = multiround::Analysis::new(self.id, keys, self.topology())
            .map_err(|e| RoundError::Failed { round: self.id, why: e.to_string() })?;
        self.runner.keyed = Some(Keyed {
            analysis: analysis.analysis_id.clone(),
            setup: self.id,
            t: self.t,
            degree: self.degree,
            u1: u1.clone(),
            graph: self.graph.clone(),
            quorum: self.quorum,
            state,
        });
        Ok(u1)
    }

    /// Record (and remember for planning) that the nodes' inputs may be in a sum over
    /// `names`: over U2 once shares are delivered, replaced by U3 once unmasked — as
    /// the nodes record it for their differencing guards.
    fn contributed(&self, analysis: &Analysis, names: &[String], unmasked: bool) -> Result<(), RoundError> {
        let coverage = analysis.coverage();
        let contributors: Vec<Invitee> = names.iter().map(|n| self.by_name[n].invitee()).collect();
        let stage = if unmasked { "unmasked" } else { "masked" };
        record(&self.runner.coordinator.audit, contributed(self.id, analysis, &coverage, &contributors, stage))
            .map_err(|e| self.local(e))?;
        let sum = fedcrm_analysis::rules::Unmasked {
            round: self.id.to_hex(),
            time_ms: crate::now_ms(),
            coverage,
            contributors,
        };
        self.runner.coordinator.remember(sum, unmasked);
        Ok(())
    }

    fn local(&self, e: impl std::fmt::Display) -> RoundError {
        RoundError::Local { round: self.id, why: format!("audit log: {e}") }
    }

    /// Sign the roster, log the round, invite.
    async fn start(&mut self, analysis: &Analysis) -> Result<(), RoundError> {
        let (round, t, d, width, max_per_node) = (self.id, self.t, self.d, self.width, self.max_per_node);
        #[cfg_attr(not(feature = "test-util"), allow(unused_mut))]
        let mut invitees: Vec<Invitee> = self.invited.iter().map(ConnectedNode::invitee).collect();
        #[cfg(feature = "test-util")]
        if self.setup.is_some() {
            for i in invitees.iter_mut() {
                if let Some(l) = self.runner.coordinator.hooks().relabel_later.iter().find(|l| l.name == i.name) {
                    *i = l.clone();
                }
            }
        }
        #[cfg(feature = "test-util")]
        if self.setup.is_some() && self.runner.coordinator.hooks().stale_setup {
            self.setup = Some(RoundId([0x5e; 16]));
        }
        let mut start = RoundStart {
            round,
            threshold: t,
            length: d,
            width,
            max_per_node,
            degree: self.degree,
            setup: self.setup,
            analysis: analysis.clone(),
            invited: invitees.clone(),
            chunk_elements: self.runner.settings.chunk_elements.max(1) as usize,
            roster_signature: Vec::new(),
            noise: self.noise.clone(),
        };
        self.roster_payload = wire::roster_payload(&start);
        let roster_signature = self
            .runner
            .coordinator
            .sign(&self.roster_payload)
            .map_err(|e| RoundError::Local { round, why: format!("cannot sign the roster: {e}") })?;
        #[cfg(feature = "test-util")]
        let roster_signature = self.runner.coordinator.hooks().roster_signature(roster_signature);
        start.roster_signature = roster_signature;
        record(
            &self.runner.coordinator.audit,
            Event::RoundStarted {
                round: round.to_hex(),
                analysis: analysis.analysis_id.clone(),
                kind: analysis.kind.name().to_string(),
                analysis_kind: analysis.analysis_kind.clone(),
                purpose: analysis.purpose.clone(),
                threshold: t as u64,
                length: d as u64,
                invited: invitees.iter().map(Member::from).collect(),
            },
        )
        .map_err(|e| self.local(e))?;
        tracing::info!(
            %round,
            analysis = analysis.kind.name(),
            n = self.invited.len(),
            t,
            d,
            width = width.bits(),
            max_per_node,
            degree = self.degree,
            noise = ?self.noise.as_ref().map(|n| format!("σ² = {} per node, k = {}", n.variance, n.honest)),
            "round start"
        );
        // Test hook: one node is shown another round start (other noise), signed.
        #[cfg(feature = "test-util")]
        let hooks = self.runner.coordinator.hooks();
        #[cfg(feature = "test-util")]
        let other = match &hooks.noise_for_node {
            Some((node, noise)) if self.setup.is_some() || !hooks.noise_for_node_in_later_rounds_only => {
                let mut s = RoundStart { noise: Some(noise.clone()), ..start.clone() };
                s.roster_signature = self
                    .runner
                    .coordinator
                    .sign(&wire::roster_payload(&s))
                    .map_err(|e| RoundError::Local { round, why: e.to_string() })?;
                Some((node.clone(), ToNode::RoundStart(Box::new(s))))
            }
            _ => None,
        };
        let msg = ToNode::RoundStart(Box::new(start));
        for p in self.invited {
            #[cfg(feature = "test-util")]
            let msg = match &other {
                Some((node, m)) if *node == p.name => m,
                _ => &msg,
            };
            #[cfg(not(feature = "test-util"))]
            let msg = &msg;
            if self.runner.coordinator.registry.send(&p.name, msg).await {
                self.members.live.insert(p.name.clone());
            } else {
                self.members.exits.insert(p.name.clone(), Exit::Disconnected);
            }
        }
        Ok(())
    }

    /// Collect signed keys (and, in SecAgg+, nonce commitments); a node awaiting
    /// approval stops the round here. Returns U1's keys and commitments.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 0 (AdvertiseKeys), server: collect signed (c_u^PK, s_u^PK) (U1).
    #[allow(clippy::type_complexity)] // (U1's keys, U1's commitments), both sorted by node
    async fn advertise_keys(&mut self) -> Result<(Vec<SignedKeys>, Vec<(String, [u8; 32])>), RoundError> {
        self.phase = Phase::AdvertiseKeys;
        let mut keys: BTreeMap<String, SignedKeys> = BTreeMap::new();
        let mut commitments: BTreeMap<String, [u8; 32]> = BTreeMap::new();
        let deadline = self.deadline();
        while self.members.live.iter().any(|n| !keys.contains_key(n)) {
            let Some((node, msg)) = self.next(deadline).await? else { break };
            match msg {
                FromNode::AdvertiseKeys { enc, mask, signature, commitment, .. } if !keys.contains_key(&node) => {
                    if commitment.is_some() != (self.degree > 0) {
                        let why = if self.degree > 0 {
                            "advertised keys without a nonce commitment in a SecAgg+ round"
                        } else {
                            "advertised a nonce commitment in a full SecAgg round"
                        };
                        self.reject(&node, why.into()).await;
                        continue;
                    }
                    let cert = &self.by_name[&node].certificate;
                    let payload = secagg::key_signing_payload(&self.id, &node, &enc, &mask, commitment.as_ref());
                    match pki::verify_signature(cert, &payload, &signature) {
                        Ok(()) => {
                            let certificate = cert.clone();
                            if let Some(c) = commitment {
                                commitments.insert(node.clone(), c);
                            }
                            keys.insert(node.clone(), SignedKeys { node, enc, mask, signature, certificate });
                        }
                        Err(e) => self.reject(&node, format!("key signature invalid: {e}")).await,
                    }
                }
                other => self.unexpected(&node, &other).await,
            }
        }
        self.members.expire(&keys.keys().cloned().collect(), Phase::AdvertiseKeys);
        // A node waiting for its franchisee's approval stops the round here, before any
        // share or masked input moves: a result without it now and with it later could
        // be subtracted.
        let waiting: Vec<String> = self
            .members
            .exits
            .iter()
            .filter(|(_, e)| matches!(e, Exit::AwaitingApproval(_)))
            .map(|(n, e)| format!("{n} ({e})"))
            .collect();
        if !waiting.is_empty() {
            return Err(RoundError::AwaitingApproval { round: self.id, nodes: waiting.join("; ") });
        }
        let u1: Vec<SignedKeys> = keys.into_values().filter(|k| self.members.live.contains(&k.node)).collect();
        commitments.retain(|n, _| self.members.live.contains(n));
        self.ensure(Phase::AdvertiseKeys)?;
        Ok((u1, commitments.into_iter().collect()))
    }

    /// SecAgg+: sign and send U1's nonce commitments, collect every reveal, draw the
    /// graph. Any node of U1 that does not reveal stops the round: the graph is over
    /// all of U1, so that the coordinator cannot choose among graphs by choosing whose
    /// reveals to count (`fedcrm_crypto::graph`, "what the coordinator can still bias").
    /// Returns U1's nonces.
    ///
    /// Bell et al. CCS 2020 (SecAgg+): the random graph, here drawn from committed nonces.
    async fn draw_graph(
        &mut self,
        u1: &[SignedKeys],
        commitments: &[(String, [u8; 32])],
    ) -> Result<Vec<(String, [u8; 32])>, RoundError> {
        let round = self.id;
        // One quorum for the round, the largest any member's announced rules need: so
        // every honest node's own check (2q > |U1| + H + C) holds for the same q, and
        // no two views can both reach it.
        let quorum = u1.iter().map(|k| self.majority_for(&k.node, u1)).max().unwrap_or(0).min(u1.len());
        #[cfg(feature = "test-util")]
        let quorum = self.runner.coordinator.hooks().force_quorum.unwrap_or(quorum);
        self.quorum = quorum;
        let payload = wire::commitments_payload(&round, quorum, commitments);
        let signature = self
            .runner
            .coordinator
            .sign(&payload)
            .map_err(|e| RoundError::Local { round, why: format!("cannot sign the nonce commitments: {e}") })?;
        let msg = ToNode::CommitmentRoster { round, commitments: commitments.to_vec(), quorum, signature };
        self.broadcast(&msg).await;
        let committed: BTreeMap<&str, &[u8; 32]> = commitments.iter().map(|(n, c)| (n.as_str(), c)).collect();
        let mut nonces: BTreeMap<String, [u8; 32]> = BTreeMap::new();
        let deadline = self.deadline();
        while self.members.live.iter().any(|n| !nonces.contains_key(n)) {
            let Some((node, msg)) = self.next(deadline).await? else { break };
            match msg {
                FromNode::RevealNonce { nonce, .. } if !nonces.contains_key(&node) => {
                    let opens = committed
                        .get(node.as_str())
                        .is_some_and(|c| graph::check_nonce(&round, &node, &nonce, c).is_ok());
                    if opens {
                        nonces.insert(node, nonce);
                    } else {
                        self.reject(&node, "revealed a nonce that does not open its signed commitment".into()).await;
                    }
                }
                other => self.unexpected(&node, &other).await,
            }
        }
        self.members.expire(&nonces.keys().cloned().collect(), Phase::AdvertiseKeys);
        let missing: Vec<&str> = committed.keys().copied().filter(|n| !nonces.contains_key(*n)).collect();
        #[cfg(feature = "test-util")]
        let stop = self.restart < self.runner.coordinator.hooks().stop_graphs;
        #[cfg(not(feature = "test-util"))]
        let stop = false;
        if !missing.is_empty() || stop {
            return Err(RoundError::Unrevealed {
                round,
                missing: missing.into_iter().map(str::to_string).collect(),
                exits: describe(&self.members.exits),
            });
        }
        let nonces: Vec<(String, [u8; 32])> = nonces.into_iter().collect();
        let mut signed = self.roster_payload.clone();
        signed.extend_from_slice(&payload);
        let seed = graph::graph_seed(&round, &signed, &nonces);
        let names: Vec<String> = nonces.iter().map(|(n, _)| n.clone()).collect();
        let g = Graph::harary(&names, self.degree, &seed)
            .map_err(|e| RoundError::Failed { round, why: format!("the SecAgg+ graph cannot be drawn: {e}") })?;
        tracing::info!(%round, n = names.len(), k = self.degree, "SecAgg+ graph drawn");
        self.graph = Some((g, seed));
        Ok(nonces)
    }

    /// Issue 10: `node`'s noised masked vector is arriving: it charged its budget the
    /// round's charge ([`fedcrm_protocol::wire::AnalysisKind::charge`]). Recorded in the
    /// coordinator's audit log (for `audit report` to compare with the node's) and in
    /// its view of the node's budget. Nothing for an exact round.
    fn charged(&self, node: &str) -> Result<(), RoundError> {
        let (Some(noise), Some(charge)) = (&self.noise, self.charge) else { return Ok(()) };
        let c = self.runner.coordinator;
        let now = c.now_ms();
        c.budgets.observe(node, now, charge);
        let event = Event::PrivacyCharged {
            round: self.id.to_hex(),
            analysis: self.analysis_id.clone(),
            node: node.to_string(),
            month: fedcrm_dp::budget::Month::of(now).to_string(),
            charged_ms: now,
            rho: charge.rho,
            xi: charge.xi,
            noise_variance: noise.variance.to_string(),
            honest: noise.honest as u64,
            budget: String::new(),
            used: 0.0,
            limit: 0.0,
        };
        record(&c.audit, event).map_err(|e| self.local(e))
    }

    /// The round's topology: complete, or the SecAgg+ graph.
    fn topology(&self) -> Topology {
        self.graph.as_ref().map_or(Topology::Complete, |(g, _)| g.topology())
    }

    /// Whether `u` and `v` share keys and masks in this round.
    fn adjacent(&self, u: &str, v: &str) -> bool {
        u != v && self.graph.as_ref().is_none_or(|(g, _)| g.is_neighbour(u, v))
    }

    /// Send U1's keys: to each node, in full SecAgg all of them; in SecAgg+ its own and
    /// its neighbours', with every node's nonce (so it can draw the graph itself).
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 0 (AdvertiseKeys), server: broadcast U1's keys;
    /// Bell et al. CCS 2020 (SecAgg+): to each node its neighbours' only.
    async fn key_roster(&mut self, u1: &[SignedKeys], nonces: &[(String, [u8; 32])]) -> Result<(), RoundError> {
        self.phase = Phase::AdvertiseKeys;
        for n in self.members.live.clone() {
            let keys: Vec<SignedKeys> =
                u1.iter().filter(|k| k.node == n || self.adjacent(&n, &k.node)).cloned().collect();
            #[cfg(feature = "test-util")]
            let keys = self.runner.coordinator.hooks().roster(self.id, keys);
            let nonces = nonces.to_vec();
            #[cfg(feature = "test-util")]
            let nonces = self.runner.coordinator.hooks().nonces(&n, nonces);
            let msg = ToNode::KeyRoster { round: self.id, keys, nonces };
            if !self.runner.coordinator.registry.send(&n, &msg).await {
                self.members.leave(&n, Exit::Disconnected);
            }
        }
        self.ensure(Phase::AdvertiseKeys)
    }

    /// Collect sealed shares (each signed by its sender), then deliver each node its
    /// shares and U2 as delivered. Returns the shares, by sender, of every node of that U2.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 1 (ShareKeys), server: collect the e_u,v (U2), send each v its e_u,v.
    async fn share_keys(&mut self, u1: &[SignedKeys]) -> Result<BTreeMap<String, Vec<Sealed>>, RoundError> {
        self.phase = Phase::ShareKeys;
        let mut sealed: BTreeMap<String, Vec<Sealed>> = BTreeMap::new();
        let deadline = self.deadline();
        let u1_names: BTreeSet<String> = u1.iter().map(|k| k.node.clone()).collect();
        while self.members.live.iter().any(|n| !sealed.contains_key(n)) {
            let Some((node, msg)) = self.next(deadline).await? else { break };
            match msg {
                FromNode::SealedShares { shares, .. } if !sealed.contains_key(&node) => {
                    #[cfg(feature = "test-util")]
                    if let Some(h) = &self.runner.coordinator.hooks().on_sealed_shares {
                        h(&node, &shares);
                    }
                    let to: BTreeSet<String> = shares.iter().map(|s| s.peer.clone()).collect();
                    let expected: BTreeSet<String> =
                        u1_names.iter().filter(|n| self.adjacent(&node, n)).cloned().collect();
                    if to != expected || shares.len() != expected.len() {
                        let why = if self.degree > 0 {
                            "sealed shares must address each of its neighbours in the round's graph exactly once"
                        } else {
                            "sealed shares must address every other node of the roster exactly once"
                        };
                        self.reject(&node, why.into()).await;
                    } else if let Some(bad) = shares.iter().find(|s| !self.share_signed(&node, s)) {
                        // It came straight from the node over its own session: its fault.
                        let why =
                            format!("signed its sealed share to {} with a signature that does not verify", bad.peer);
                        self.reject(&node, why).await;
                    } else {
                        sealed.insert(node, shares);
                    }
                }
                other => self.unexpected(&node, &other).await,
            }
        }
        self.members.expire(&sealed.keys().cloned().collect(), Phase::ShareKeys);
        self.ensure(Phase::ShareKeys)?;
        let u2: Vec<String> = self.members.live.iter().cloned().collect();
        for v in &u2 {
            let incoming: Vec<Sealed> = u2
                .iter()
                .filter(|u| self.adjacent(u, v))
                .filter_map(|u| {
                    // Unwrap safety: U2 is the nodes whose sealed shares arrived.
                    sealed[u].iter().find(|s| &s.peer == v).map(|s| {
                        let ciphertext = s.ciphertext.clone();
                        #[cfg(feature = "test-util")]
                        let ciphertext = self.runner.coordinator.hooks().share(u, v, ciphertext);
                        Sealed { peer: u.clone(), ciphertext, signature: s.signature.clone() }
                    })
                })
                .collect();
            let msg = ToNode::ShareDelivery { round: self.id, delivered: u2.clone(), shares: incoming };
            if !self.runner.coordinator.registry.send(v, &msg).await {
                self.members.leave(v, Exit::Disconnected);
            }
        }
        sealed.retain(|n, _| u2.contains(n));
        Ok(sealed)
    }

    /// Whether `share`, which `sender` addressed to `share.peer`, carries `sender`'s
    /// signature over (round, sender, receiver, ciphertext).
    ///
    /// An addition to Bonawitz et al. CCS 2017, Fig. 4, Round 1 (ShareKeys), which does not sign e_u,v.
    fn share_signed(&self, sender: &str, share: &Sealed) -> bool {
        // Test hook: a coordinator showing one node another round start relays its
        // shares unchecked (the nodes must catch it themselves).
        #[cfg(feature = "test-util")]
        if self.runner.coordinator.hooks().noise_for_node.is_some() {
            return true;
        }
        let roster = secagg::roster_digest(&self.roster_payload);
        let payload = secagg::share_signing_payload(&self.id, sender, &share.peer, &roster, &share.ciphertext);
        pki::verify_signature(&self.by_name[sender].certificate, &payload, &share.signature).is_ok()
    }

    /// Every node of U2 as delivered reports the shares that are
    /// signed but do not open. Each report is checked against what was relayed (the
    /// coordinator cannot open a share, only see that its sender signed these exact
    /// bytes); each reported sender is excluded, the report logged as evidence. The
    /// final U2 — the delivered U2 less the excluded and the nodes that left — goes
    /// to every remaining node before anyone masks. Returns the final U2.
    ///
    /// An addition to Bonawitz et al. CCS 2017, Fig. 4, Round 2 (MaskedInputCollection), before the users mask.
    async fn share_reports(&mut self, sealed: &BTreeMap<String, Vec<Sealed>>) -> Result<Vec<String>, RoundError> {
        self.phase = Phase::MaskedInputCollection;
        let delivered: Vec<String> = sealed.keys().cloned().collect();
        let mut reported: BTreeSet<String> = BTreeSet::new();
        // Sender → (receiver, reason) for each report against it.
        let mut accused: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        let deadline = self.deadline();
        while self.members.live.iter().any(|n| !reported.contains(n)) {
            let Some((node, msg)) = self.next(deadline).await? else { break };
            match msg {
                FromNode::ShareReport { unopened, .. } if !reported.contains(&node) => {
                    match self.check_report(&node, &unopened, sealed) {
                        Ok(()) => {
                            for u in &unopened {
                                let outcome = format!("{} excluded from the final U2", u.share.peer);
                                let event = share_reported(self.id, &node, u, &outcome);
                                record(&self.runner.coordinator.audit, event).map_err(|e| self.local(e))?;
                                accused.entry(u.share.peer.clone()).or_default().push((node.clone(), u.reason.clone()));
                            }
                            reported.insert(node);
                        }
                        Err(why) => self.reject(&node, why).await,
                    }
                }
                other => self.unexpected(&node, &other).await,
            }
        }
        self.members.expire(&reported, Phase::MaskedInputCollection);
        for (sender, reports) in &accused {
            let by: Vec<String> = reports.iter().map(|(r, _)| r.clone()).collect();
            let why = format!(
                "{sender} sent a share to {} that fails to open ({}); the report carries {sender}'s signature on \
                 that share",
                by.join(" and "),
                reports.iter().map(|(_, why)| why.as_str()).collect::<Vec<_>>().join("; ")
            );
            self.exclude(sender, why).await;
        }
        self.ensure(Phase::MaskedInputCollection)?;
        let u2: Vec<String> = self.members.live.iter().cloned().collect();
        #[cfg(feature = "test-util")]
        let u2 = self.runner.coordinator.hooks().final_u2(u2);
        let excluded: Vec<Exclusion> = delivered
            .iter()
            .filter(|n| !u2.contains(*n))
            .map(|n| Exclusion {
                node: n.clone(),
                reason: self.members.exits.get(n).map_or_else(|| "left".to_string(), Exit::to_string),
            })
            .collect();
        let msg = ToNode::MaskedInputRequest { round: self.id, delivered: u2.clone(), excluded };
        self.broadcast(&msg).await;
        Ok(u2)
    }

    /// A report's evidence: each share names another node of the delivered U2 as
    /// sender and is exactly what the coordinator relayed from it to the reporter,
    /// signed by it. `Err` (the reporter's fault) otherwise: a node cannot accuse a
    /// peer with bytes that peer did not sign.
    fn check_report(
        &self,
        reporter: &str,
        unopened: &[UnopenedShare],
        sealed: &BTreeMap<String, Vec<Sealed>>,
    ) -> Result<(), String> {
        // The coordinator cannot open a share, so it cannot tell a true report from a
        // false one. One accusation per reporter and round is believed (the accused
        // leaves); a node that accuses several peers at once is dropped instead, so one
        // malicious node cannot empty a round by accusing everyone.
        if unopened.len() > MAX_ACCUSATIONS {
            return Err(format!(
                "accused {} peers in one round; at most {MAX_ACCUSATIONS} accusation per node and round is \
                 believed, so this node leaves the round instead of the accused",
                unopened.len()
            ));
        }
        let mut senders = BTreeSet::new();
        for u in unopened {
            let sender = &u.share.peer;
            if !senders.insert(sender) {
                return Err(format!("reported the share of {sender} twice"));
            }
            let relayed = sealed.get(sender).and_then(|v| v.iter().find(|s| s.peer == reporter));
            let as_relayed = relayed.is_some_and(|r| {
                r.ciphertext == u.share.ciphertext && r.signature == u.share.signature && self.share_signed(sender, r)
            });
            if sender == reporter || !as_relayed {
                return Err(format!(
                    "reported a share from {sender} that is not one {sender} signed and the coordinator relayed to it"
                ));
            }
        }
        Ok(())
    }

    /// Assemble and add each masked vector; close inputs.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 2 (MaskedInputCollection), server: collect y_u (U3), send U3.
    async fn masked_input(&mut self, u1: &[SignedKeys], u2: &[String]) -> Result<RoundUnmasking, RoundError> {
        self.phase = Phase::MaskedInputCollection;
        let round = self.id;
        let d = self.d;
        let chunk = self.runner.settings.chunk_elements.max(1) as usize;
        let contributors: Vec<String> = u1.iter().map(|k| k.node.clone()).collect();
        let width = self.width;
        let params = RoundParams { round, t: self.t, d, width };
        let failed = |e: fedcrm_crypto::CryptoError| RoundError::Failed { round, why: e.to_string() };
        // Unwrap safety: `run` sets the analysis's keys before any round reaches its masked input.
        let keyed = self.runner.keyed.as_mut().expect("the analysis's keys");
        let mut agg = keyed.state.round(params, &contributors, u2).map_err(failed)?;
        let chunks = d.div_ceil(chunk) as u32;
        let mut assembling: BTreeMap<String, Assembly> = BTreeMap::new();
        let mut complete: BTreeSet<String> = BTreeSet::new();
        let mut charged: BTreeSet<String> = BTreeSet::new();
        let deadline = self.deadline();
        while self.members.live.iter().any(|n| !complete.contains(n)) {
            let Some((node, msg)) = self.next(deadline).await? else { break };
            let c = match msg {
                FromNode::MaskedChunk(_) if complete.contains(&node) => {
                    tracing::warn!(%round, %node, "extra chunk after a complete masked vector; ignored");
                    continue;
                }
                FromNode::MaskedChunk(c) => c,
                other => {
                    self.unexpected(&node, &other).await;
                    continue;
                }
            };
            // Issue 10: a node charges its budget just before its noised vector leaves
            // it; its first chunk here is when the coordinator knows it did.
            if charged.insert(node.clone()) {
                self.charged(&node)?;
            }
            let a = assembling.entry(node.clone()).or_insert_with(|| Assembly { buf: Words::zeros(width, 0), next: 0 });
            let want_len = if c.index + 1 == chunks { d - (chunks as usize - 1) * chunk } else { chunk };
            let problem = if c.words.width() != width {
                Some(format!(
                    "sent a masked chunk of {}, but round {round} uses {} (signed in its round start)",
                    c.words.width(),
                    width
                ))
            } else if c.count != chunks {
                Some(format!("sent a vector in {} chunks, expected {chunks} for {d} elements", c.count))
            } else if c.index != a.next || c.offset != c.index as u64 * chunk as u64 {
                Some(format!("sent chunk {} at offset {}, expected chunk {}", c.index, c.offset, a.next))
            } else if c.words.len() != want_len {
                Some(format!("sent {} elements in chunk {}, expected {want_len}", c.words.len(), c.index))
            } else {
                None
            };
            if let Some(p) = problem {
                assembling.remove(&node);
                self.reject(&node, p).await;
                continue;
            }
            // The width was checked above, so this cannot fail.
            if let Err(e) = a.buf.extend(&c.words) {
                assembling.remove(&node);
                self.reject(&node, e.to_string()).await;
                continue;
            }
            a.next += 1;
            if a.next == chunks {
                // Unwrap safety: the entry was created above in this iteration or earlier.
                let a = assembling.remove(&node).unwrap();
                #[cfg(feature = "test-util")]
                if let Some(h) = &self.runner.coordinator.hooks().on_masked {
                    h(&node, &a.buf);
                }
                #[cfg(feature = "test-util")]
                if self.runner.coordinator.hooks().ignore_masked_from.contains(&node) {
                    complete.insert(node);
                    continue;
                }
                match agg.add_masked(&node, &a.buf) {
                    Ok(()) => {
                        complete.insert(node);
                    }
                    Err(e) => self.reject(&node, e.to_string()).await,
                }
            }
        }
        drop(assembling);
        self.members.expire(&complete, Phase::MaskedInputCollection);
        // Unwrap safety: as above; nothing in between takes the keys.
        let unmasking =
            agg.close(&mut self.runner.keyed.as_mut().expect("the analysis's keys").state).map_err(failed)?;
        self.members.live = unmasking.survivors().into_iter().collect();
        self.ensure(Phase::MaskedInputCollection)?;
        tracing::info!(%round, survivors = self.members.live.len(), dropped = ?unmasking.dropped(), "inputs closed");
        Ok(unmasking)
    }

    /// Show U3 to every survivor and collect signatures on (round, U2, U3).
    /// Returns, per signer, its signature and the view it signed.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 3 (ConsistencyCheck), server: collect σ'_u (U4), send each {v, σ'_v}.
    async fn consistency_check(
        &mut self,
        u2: &[String],
        u3: &[String],
        dropped: &[String],
    ) -> Result<BTreeMap<String, (Vec<u8>, Vec<String>)>, RoundError> {
        self.phase = Phase::ConsistencyCheck;
        let mut shown: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
        for n in self.members.live.clone() {
            let (s, d) = (u3.to_vec(), dropped.to_vec());
            #[cfg(feature = "test-util")]
            let (s, d) = self.runner.coordinator.hooks().view(&n, s, d);
            let msg = ToNode::ConsistencyCheck { round: self.id, survivors: s.clone(), dropped: d.clone() };
            if self.runner.coordinator.registry.send(&n, &msg).await {
                shown.insert(n, (s, d));
            } else {
                self.members.leave(&n, Exit::Disconnected);
            }
        }
        let mut signed: BTreeMap<String, (Vec<u8>, Vec<String>)> = BTreeMap::new();
        let deadline = self.deadline();
        while self.members.live.iter().any(|n| !signed.contains_key(n)) {
            let Some((node, msg)) = self.next(deadline).await? else { break };
            match msg {
                FromNode::ConsistencySignature { signature, .. } if !signed.contains_key(&node) => {
                    let Some((s, _)) = shown.get(&node) else { continue };
                    let seed = self.graph.as_ref().map(|(_, seed)| seed);
                    let payload = secagg::consistency_payload(&self.id, seed, u2, s);
                    match pki::verify_signature(&self.by_name[&node].certificate, &payload, &signature) {
                        Ok(()) => {
                            signed.insert(node, (signature, s.clone()));
                        }
                        Err(e) => self.reject(&node, format!("consistency signature invalid: {e}")).await,
                    }
                }
                FromNode::MaskedChunk(_) => {
                    tracing::warn!(round = %self.id, %node, "masked chunk after inputs closed; ignored")
                }
                other => self.unexpected(&node, &other).await,
            }
        }
        self.members.expire(&signed.keys().cloned().collect(), Phase::ConsistencyCheck);
        self.ensure(Phase::ConsistencyCheck)?;
        Ok(signed)
    }

    /// Send each signer the signatures on its view; collect one share per node of U2
    /// from each; remove the masks.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 4 (Unmasking), server: collect the shares (U5), reconstruct, compute z.
    async fn unmasking(
        &mut self,
        unmasking: RoundUnmasking,
        u1: &[SignedKeys],
        u2: &[String],
        u3: &[String],
        signed: BTreeMap<String, (Vec<u8>, Vec<String>)>,
    ) -> Result<UnreleasedSum, RoundError> {
        self.phase = Phase::Unmasking;
        for n in self.members.live.clone() {
            // Unwrap safety: after the consistency check every live node has signed.
            let view = &signed[&n].1;
            let mut signatures: Vec<ViewSignature> = signed
                .iter()
                .filter(|(_, (_, v))| v == view)
                .map(|(node, (sig, _))| ViewSignature {
                    node: node.clone(),
                    signature: sig.clone(),
                    // SecAgg+: the node holds only its own and its neighbours' certificates.
                    certificate: if self.degree > 0 && node != &n && !self.adjacent(&n, node) {
                        self.by_name[node].certificate.clone()
                    } else {
                        Vec::new()
                    },
                })
                .collect();
            if self.degree > 0 {
                // SecAgg+: the node needs the round's quorum of signatures: send that
                // many, those it can check with the certificates it holds first, rather
                // than all of U3's with certificates (about 1 MB per node at n = 1,000).
                signatures.sort_by_key(|s| (!s.certificate.is_empty(), s.node.clone()));
                signatures.truncate(self.quorum);
                signatures.sort_by(|a, b| a.node.cmp(&b.node));
            }
            #[cfg(feature = "test-util")]
            let signatures = self.runner.coordinator.hooks().signatures(self.id, u2, view, signatures);
            let (s, d) = (view.clone(), u2.iter().filter(|x| !view.contains(x)).cloned().collect());
            #[cfg(feature = "test-util")]
            let (s, d) = self.runner.coordinator.hooks().unmask(s, d);
            let msg = ToNode::UnmaskRequest { round: self.id, survivors: s, dropped: d, signatures };
            if !self.runner.coordinator.registry.send(&n, &msg).await {
                self.members.leave(&n, Exit::Disconnected);
            }
        }
        let mut responses: BTreeMap<String, Vec<Reveal>> = BTreeMap::new();
        let deadline = self.deadline();
        let u1_sorted: Vec<String> = u1.iter().map(|k| k.node.clone()).collect();
        while self.members.live.iter().any(|n| !responses.contains_key(n)) {
            let Some((node, msg)) = self.next(deadline).await? else { break };
            match msg {
                FromNode::UnmaskShares { shares, .. } if !responses.contains_key(&node) => {
                    #[cfg(feature = "test-util")]
                    if let Some(h) = &self.runner.coordinator.hooks().on_unmask_shares {
                        h(self.id, &node, &shares);
                    }
                    // Full SecAgg: every node holds a share of every node, itself included;
                    // SecAgg+: of its neighbours only.
                    let held: Vec<String> =
                        u2.iter().filter(|v| self.degree == 0 || self.adjacent(&node, v)).cloned().collect();
                    if !unmask_ok(&shares, &held, u3) {
                        let why = "sent an unmask answer that does not hold exactly one share of the right kind per node \
                                   of U2 whose shares it holds";
                        self.reject(&node, why.into()).await;
                        continue;
                    }
                    // Unwrap safety: live ⊆ U1.
                    let x = u1_sorted.binary_search(&node).unwrap() as u32 + 1;
                    // A share of a survivor's round self-mask seed, or the round pair seed
                    // with a dropped neighbour (32 bytes): never a share of a key.
                    let parsed: Result<Vec<Reveal>, String> = shares
                        .into_iter()
                        .map(|s| {
                            Ok(if s.self_mask {
                                let share = Share::from_parts(x, &s.y).map_err(|e| e.to_string())?;
                                Reveal::SelfMask { of: s.of, share }
                            } else {
                                let seed: [u8; 32] = s.y.as_slice().try_into().map_err(|_| {
                                    format!("revealed a pair seed with {} of {} bytes, not 32", s.of, s.y.len())
                                })?;
                                Reveal::PairSeed { of: s.of, seed: PairSeed::from_bytes(seed) }
                            })
                        })
                        .collect();
                    match parsed {
                        Ok(p) => {
                            responses.insert(node, p);
                        }
                        Err(e) => self.reject(&node, e).await,
                    }
                }
                FromNode::MaskedChunk(_) => {
                    // Inputs are closed: a late or repeated chunk changes nothing.
                    tracing::warn!(round = %self.id, %node, "masked chunk after inputs closed; ignored");
                }
                other => self.unexpected(&node, &other).await,
            }
        }
        let responses: Vec<(String, Vec<Reveal>)> = responses.into_iter().collect();
        if responses.len() < self.t {
            return Err(RoundError::TooFew {
                round: self.id,
                phase: Phase::Unmasking,
                have: responses.len(),
                need: self.t,
                exits: describe(&self.members.exits),
            });
        }
        UnreleasedSum::unmask(unmasking, &responses, self.noise.as_ref().map(|_| self.width))
            .map_err(|e| RoundError::Failed { round: self.id, why: e.to_string() })
    }

    /// SecAgg+: the quorum `node`'s announced rules accept: more than (|U1| + H + C)/2
    /// (as `node/src/session/round.rs` `on_commitment_roster` checks with its own
    /// policy).
    fn majority_for(&self, node: &str, u1: &[SignedKeys]) -> usize {
        let members: Vec<Invitee> = u1.iter().map(|k| self.by_name[&k.node].invitee()).collect();
        let me = &self.by_name[node];
        let colluders = fedcrm_analysis::rules::colluding_nodes(&me.rules, &me.organisation, &members);
        (members.len() + fedcrm_analysis::rules::hq_nodes(&members) + colluders) / 2 + 1
    }

    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs(self.runner.settings.phase_timeout_seconds.max(1))
    }

    /// Next message of this round from a live node; handles disconnects, refusals
    /// and malformed messages (dropping the node). `Ok(None)` at the deadline;
    /// `Err` when the coordinator itself failed.
    async fn next(&mut self, deadline: Instant) -> Result<Option<(String, FromNode)>, RoundError> {
        loop {
            self.running.retain(&self.members.live);
            if self.members.live.is_empty() {
                return Ok(None);
            }
            let mut stopping = self.runner.coordinator.stopping();
            let ev = tokio::select! {
                e = self.runner.events.recv() => match e { Some(e) => e, None => return Ok(None) },
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
                _ = stopping.wait_for(|s| *s) => return Err(RoundError::ShuttingDown),
            };
            // Only the invited session of a live node counts: events of an earlier
            // session (a node that has since reconnected) are stale.
            if !self.members.live.contains(&ev.node)
                || self.by_name.get(&ev.node).map(|p| p.session) != Some(ev.session)
            {
                continue;
            }
            match ev.body {
                SessionEventBody::Closed => {
                    tracing::warn!(round = %self.id, node = %ev.node, "node disconnected mid-round");
                    self.members.leave(&ev.node, Exit::Disconnected);
                }
                SessionEventBody::Malformed(why) => self.reject(&ev.node, format!("malformed message: {why}")).await,
                SessionEventBody::LocalFault(why) => return Err(RoundError::Local { round: self.id, why }),
                SessionEventBody::Message(FromNode::Refusal { round: r, reason, .. })
                    if (r.is_none() || r == Some(self.id)) && self.phase == Phase::ConsistencyCheck =>
                {
                    // A member of U3 refused to sign: its masked input is in the sum, so
                    // unmasking the rest would release its data against its refusal.
                    // The round stops.
                    tracing::warn!(round = %self.id, node = %ev.node, %reason, "a contributor refused; round stops");
                    self.members.leave(&ev.node, Exit::Refused(reason.clone()));
                    return Err(RoundError::Failed {
                        round: self.id,
                        why: format!(
                            "{} refused after its masked input was in the sum ({reason}); the round stops without a \
                             result, since unmasking the others would release its data",
                            ev.node
                        ),
                    });
                }
                SessionEventBody::Message(FromNode::Refusal { round: r, reason, awaiting_approval })
                    if r.is_none() || r == Some(self.id) =>
                {
                    tracing::warn!(round = %self.id, node = %ev.node, %reason, "node refused");
                    let e = if awaiting_approval { Exit::AwaitingApproval(reason) } else { Exit::Refused(reason) };
                    self.members.leave(&ev.node, e);
                }
                SessionEventBody::Message(m) if m.round() == Some(self.id) => return Ok(Some((ev.node, m))),
                SessionEventBody::Message(m) => {
                    tracing::debug!(round = %self.id, node = %ev.node, kind = m.kind(), "message for another round ignored");
                }
            }
        }
    }

    async fn broadcast(&mut self, msg: &ToNode) {
        for n in self.members.live.clone() {
            if !self.runner.coordinator.registry.send(&n, msg).await {
                self.members.leave(&n, Exit::Disconnected);
            }
        }
    }

    async fn reject(&mut self, node: &str, why: String) {
        let msg = format!(
            "round {}: node {node} {why}; it is dropped from this round, which goes on for the others",
            self.id
        );
        self.dismiss(node, msg, Exit::Rejected(why)).await;
    }

    /// Leave `node` out of the final U2 (before anyone masks), telling it why.
    async fn exclude(&mut self, node: &str, why: String) {
        let msg = format!("round {}: {why}; it is left out of this round, which goes on for the others", self.id);
        self.dismiss(node, msg, Exit::Excluded(why)).await;
    }

    /// Tell `node` the round ended for it (`msg`) and record how it left.
    async fn dismiss(&mut self, node: &str, msg: String, exit: Exit) {
        tracing::warn!("{msg}");
        let end = ToNode::RoundEnd { round: self.id, released: false, message: msg };
        let _ = self.runner.coordinator.registry.send(node, &end).await;
        self.members.leave(node, exit);
    }

    async fn unexpected(&mut self, node: &str, m: &FromNode) {
        self.reject(node, format!("sent an unexpected {} message", m.kind())).await;
    }

    fn ensure(&self, phase: Phase) -> Result<(), RoundError> {
        let have = self.members.live.len();
        if have >= self.t {
            return Ok(());
        }
        Err(RoundError::TooFew { round: self.id, phase, have, need: self.t, exits: describe(&self.members.exits) })
    }

    /// Record every node that left the round, with its reason, and seal the log.
    fn log_exits(&self) {
        let audit = &self.runner.coordinator.audit;
        for (node, e) in &self.members.exits {
            let _ =
                record(audit, Event::NodeExit { round: self.id.to_hex(), node: node.clone(), reason: e.to_string() });
        }
        let _ = lock(audit).seal();
    }

    async fn end(&self, released: bool, message: &str) {
        for p in self.invited {
            let msg = ToNode::RoundEnd { round: self.id, released, message: message.to_string() };
            let _ = self.runner.coordinator.registry.send(&p.name, &msg).await;
        }
    }
}

/// The coordinator's record of a sum it unmasked.
fn contributed(
    round: RoundId,
    analysis: &Analysis,
    coverage: &fedcrm_analysis::rules::Coverage,
    contributors: &[Invitee],
    stage: &str,
) -> Event {
    Event::Contributed {
        stage: stage.to_string(),
        round: round.to_hex(),
        analysis: analysis.analysis_id.clone(),
        family: coverage.family.clone(),
        window_from: coverage.from.map(fedcrm_analysis::date::format_date).unwrap_or_default(),
        window_to: fedcrm_analysis::date::format_date(coverage.to),
        contributors: contributors.iter().map(Member::from).collect(),
    }
}

/// The coordinator's record of a reported share: the evidence as relayed.
fn share_reported(round: RoundId, receiver: &str, u: &UnopenedShare, outcome: &str) -> Event {
    Event::ShareReported {
        round: round.to_hex(),
        sender: u.share.peer.clone(),
        receiver: receiver.to_string(),
        reason: u.reason.clone(),
        ciphertext_hex: hex::encode(&u.share.ciphertext),
        signature_hex: hex::encode(&u.share.signature),
        outcome: outcome.to_string(),
    }
}

/// An unmask answer must name every node of U2 whose shares the node holds (`held`:
/// all of U2 in full SecAgg, its neighbours in U2 in SecAgg+) exactly once, with the
/// self-mask share for survivors and the round pair seed for dropped neighbours.
///
/// Bonawitz et al. CCS 2017, Fig. 4, Round 4 (Unmasking), server: b_v,u for v ∈ U3, and for v ∈ U2∖U3 the
/// round pair seed s_u,v,r in place of s_v,u^SK (`fedcrm_crypto::multiround`).
fn unmask_ok(shares: &[RevealedShare], held: &[String], survivors: &[String]) -> bool {
    let named: BTreeSet<&str> = shares.iter().map(|s| s.of.as_str()).collect();
    named.len() == shares.len()
        && shares.len() == held.len()
        && shares.iter().all(|s| held.contains(&s.of) && s.self_mask == survivors.contains(&s.of))
}

/// How often `Runner::run` restarts a SecAgg+ round without the nodes that did not
/// reveal their graph nonces (nodes allow `MAX_ABANDONED_GRAPHS` per analysis).
pub const MAX_GRAPH_RESTARTS: usize = 2;

/// Accusations one node may make in one round's share report (see `check_report`).
pub const MAX_ACCUSATIONS: usize = 1;
