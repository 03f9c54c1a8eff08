//! One handler per coordinator message of a round (Bonawitz et al. CCS 2017, Fig. 4,
//! user side, phases numbered as in the paper and `secagg::Phase`), each checking this
//! node's rules *before* its bytes leave:
//!
//! - `RoundStart` (Round 0 (AdvertiseKeys)): roster signature, the computation as this node
//!   identifies it, policy, threshold and organisation rules over the invitation,
//!   manual approval; then advertise keys.
//! - `KeyRoster` (Round 1 (ShareKeys)): every key's certificate and signature; the rules over U1;
//!   then share keys.
//! - `ShareDelivery` (Round 2 (MaskedInputCollection), before masking): every share's signature by its sender
//!   (one that does not verify was altered in relay: the coordinator's fault, the
//!   round is refused); then open each share, and report the signed shares that do
//!   not open — their senders' fault — with the shares as evidence (`ShareReport`).
//! - `MaskedInputRequest` (Round 2 (MaskedInputCollection)): the final U2, less the reported senders; the
//!   rules and the differencing guard over it — the nodes whose inputs can end up
//!   in the sum — *before* masking; then the masked input. The local vector is
//!   wiped once masked.
//! - `ConsistencyCheck` (Round 3 (ConsistencyCheck)): U3 partitions U2, this node is in it, the rules
//!   and the differencing guard over U3; then sign (round, U2, U3), once per round.
//! - `UnmaskRequest` (Round 4 (Unmasking)): the same view as signed, and at least t valid
//!   signatures on it from members of U3; the sum is recorded (persisted) for the
//!   differencing guard; then one share per peer of U2.

use std::collections::BTreeSet;
#[cfg(feature = "test-util")]
use std::sync::Arc;

use fedcrm_analysis::neighbourhood;
use fedcrm_analysis::rules::{self, Invitee, Stage, Unmasked};
use fedcrm_audit::{Event, Member};
use fedcrm_crypto::graph::{self, Graph, GraphSeed};
use fedcrm_crypto::multiround::{self, Reveal, RoundMasked, RoundOpened, RoundShared, Setup, ViewCheck};
use fedcrm_crypto::secagg::{self, PeerKeys, Phase, RoundParams};
use fedcrm_crypto::{RoundId, SecureRandom, SystemRandom};
use fedcrm_dp::accounting::Charge;
use fedcrm_pki::{self as pki, Usage};
use fedcrm_protocol::wire::{
    self, Exclusion, FromNode, RevealedShare, RoundStart, Sealed, SignedKeys, ToNode, UnopenedShare, ViewSignature,
};
#[cfg(feature = "test-util")]
use tokio::sync::watch;
use zeroize::Zeroizing;

#[cfg(feature = "test-util")]
use super::faults::{self, DropAt};
use super::{NodeContext, Peer, SessionEnd, SessionError, record, unix_now, unix_now_ms};
use crate::analyses::{self, LocalData};
use crate::analysis::{add_noise, check_noise, check_round_width, fit_to_bound};
use crate::approvals::{self, Decision, Pending};
use crate::computation::Identified;
use crate::differencing::Recorded;
use crate::egress::{Egress, lock};

mod psi;

/// Test hook (feature `test-util`, never in production builds): a node that
/// colludes with HQ, as the threat model assumes HQ's own channels may.
/// What it holds of one round once masked: its share of each member of U2's round
/// self-mask seed, and its round pair seed with each neighbour in U2.
#[cfg(feature = "test-util")]
pub type HeldSecrets = (Vec<(String, fedcrm_crypto::shamir::Share)>, Vec<(String, multiround::PairSeed)>);

/// Sees U1's verified keys, per round.
#[cfg(feature = "test-util")]
pub type RosterTap = Arc<dyn Fn(RoundId, &[SignedKeys]) + Send + Sync>;

/// Sees the shares a colluding node holds, per round.
#[cfg(feature = "test-util")]
pub type HeldSharesTap = Arc<dyn Fn(RoundId, HeldSecrets) + Send + Sync>;

#[cfg(feature = "test-util")]
#[derive(Clone)]
pub struct RoundTap {
    /// Called with what this node holds of the round once masked ([`HeldSecrets`]).
    pub on_held_shares: HeldSharesTap,
    /// Called with U1's verified keys (what every node of the round sees).
    pub on_roster: Option<RosterTap>,
    /// Collude with HQ: skip this node's own rules and sign every view it is shown.
    pub sign_any_view: bool,
    /// While set, every append to this node's audit log fails (a full disk).
    pub fail_audit: Option<Arc<std::sync::atomic::AtomicBool>>,
}

#[cfg(feature = "test-util")]
impl std::fmt::Debug for RoundTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoundTap").field("sign_any_view", &self.sign_any_view).finish_non_exhaustive()
    }
}

/// This node's state in a round, by the phase it has completed.
///
/// The first round of an analysis sets up its keys (Round 0, and in SecAgg+ the graph)
/// and is also its first pass; a later round starts at Round 1 with the keys of the
/// first (`fedcrm_crypto::multiround`, kept in [`Keyed`]).
enum State {
    /// Round 0 (AdvertiseKeys) done: keys advertised, waiting for U1 (SecAgg+: for the
    /// signed roster of nonce commitments).
    AdvertiseKeys(Setup),
    /// SecAgg+: the commitments checked and this node's nonce revealed; waiting for U1.
    NonceRevealed(Setup),
    /// Round 1 (ShareKeys) done: shares sent, waiting for U2 and the peers' shares.
    ShareKeys(RoundShared),
    /// In Round 2 (MaskedInputCollection), before masking: the peers' shares opened (or
    /// reported), waiting for the final U2.
    SharesOpened(RoundOpened),
    /// Round 2 (MaskedInputCollection) done: masked input sent, waiting for the consistency check.
    MaskedInputCollection(RoundMasked),
    /// Round 3 (ConsistencyCheck) done: signed this view, waiting for the unmask request.
    ConsistencyCheck(RoundMasked, View),
    /// Answered, refused or ended.
    Done,
}

impl State {
    fn phase(&self) -> Option<Phase> {
        match self {
            State::AdvertiseKeys(_) | State::NonceRevealed(_) => Some(Phase::AdvertiseKeys),
            State::ShareKeys(_) | State::SharesOpened(_) => Some(Phase::ShareKeys),
            State::MaskedInputCollection(_) => Some(Phase::MaskedInputCollection),
            State::ConsistencyCheck(..) => Some(Phase::ConsistencyCheck),
            State::Done => None,
        }
    }
}

/// U2 and U3 as this node signed them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct View {
    delivered: Vec<String>,
    survivors: Vec<String>,
    dropped: Vec<String>,
}

struct Active {
    start: RoundStart,
    /// The unmasked local vector: wiped when masked or when the round ends.
    input: Zeroizing<Vec<u64>>,
    /// U1's keys as verified, with certificates (to check consistency signatures):
    /// all of U1 in full SecAgg, this node's and its neighbours' in SecAgg+.
    u1: Vec<SignedKeys>,
    /// SecAgg+ only: the graph's inputs and the graph itself, once drawn.
    plus: Option<Plus>,
    /// This round's admission to its analysis, withdrawn if the round ends before this
    /// node's masked input left it; taken once it has.
    admission: Option<crate::computation::Admission>,
    /// Issue 10: what this round costs this node's privacy budget (`None`: an exact
    /// round), charged just before the masked vector leaves.
    charge: Option<Charge>,
    state: State,
}

/// A SecAgg+ round as this node sees it (Bell et al. CCS 2020).
#[derive(Clone)]
struct Plus {
    /// This node's nonce: secret until revealed (after the signed commitments).
    nonce: [u8; 32],
    /// U1's commitments as the coordinator signed them, and the signed payload.
    commitments: Vec<(String, [u8; 32])>,
    commitments_payload: Vec<u8>,
    /// The coordinator's signature over `commitments_payload`, for the audit log.
    commitments_signature: Vec<u8>,
    /// The view signatures this node needs before it reveals shares: signed for the
    /// whole round with the commitments, checked against this node's own rules.
    quorum: usize,
    /// The graph over U1, drawn by this node from the revealed nonces, and its seed.
    graph: Option<(Graph, GraphSeed)>,
    /// This node's neighbours in the graph as the setup's invitation labels them: the
    /// neighbourhood rule is over all k of them in every round of the analysis, present
    /// or not.
    neighbours: Vec<Invitee>,
}

impl Plus {
    fn seed(&self) -> Option<&GraphSeed> {
        self.graph.as_ref().map(|(_, s)| s)
    }
}

impl Active {
    /// The invitees named in `names` (any order), in the invitation's order; by set, as
    /// rounds of a thousand nodes call it several times per node.
    fn members(&self, names: &[String]) -> Vec<Invitee> {
        let names: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        self.start.invited.iter().filter(|i| names.contains(i.name.as_str())).cloned().collect()
    }

    /// The graph seed the views of this round bind (SecAgg+), or none (full SecAgg).
    fn seed(&self) -> Option<&GraphSeed> {
        self.plus.as_ref().and_then(Plus::seed)
    }
}

/// An analysis's keys, set up in its first round and kept, for this session, for its
/// later rounds: the agreements with this node's neighbours, the keys and certificates
/// of U1 as verified (its neighbours' in SecAgg+), the graph in SecAgg+, and the
/// parameters later rounds must repeat. Replaced by the next analysis's setup; dropped
/// when a round of the analysis ends without a release (the analysis stops there).
struct Keyed {
    analysis: String,
    setup: RoundId,
    threshold: usize,
    degree: usize,
    u1: Vec<SignedKeys>,
    /// U1 as the setup's signed invitation labelled it (organisation, kind), sorted by
    /// name: checked against the certificates at the setup's key roster (in SecAgg+,
    /// this node's neighbours'). A later round must label every node the same, or HQ
    /// could relabel its own nodes as franchisees once no key roster checks them.
    labels: Vec<Invitee>,
    plus: Option<Plus>,
    member: multiround::Member,
}

/// The rounds of one session.
pub(super) struct Rounds<'a> {
    ctx: &'a NodeContext,
    egress: Egress,
    /// A stalled node (fault injection) hangs until this fires.
    #[cfg(feature = "test-util")]
    shutdown: watch::Receiver<bool>,
    rng: SystemRandom,
    active: Option<Active>,
    /// The keys of the analysis in progress, from its first round.
    keyed: Option<Keyed>,
    /// Local features computed once per reference date (never leave the node).
    local: analyses::Cache,
    /// SecAgg+ rounds that ended after this node revealed its graph nonce and before
    /// its key roster, per analysis id: each is a fresh graph the coordinator saw
    /// before choosing to stop (this session only).
    abandoned: std::collections::BTreeMap<String, usize>,
    /// Issue 12: the PSI run in progress.
    psi: Option<psi::PsiRun>,
}

/// SecAgg+ rounds of one analysis a node lets the coordinator stop after its nonce
/// was revealed before it refuses the analysis' further rounds: a coordinator restarts
/// (`coordinator::round::MAX_GRAPH_RESTARTS`) when nodes do not reveal, and every
/// restart is another random graph to choose from.
pub const MAX_ABANDONED_GRAPHS: usize = 3;

type Handled = Result<Option<SessionEnd>, SessionError>;

impl<'a> Rounds<'a> {
    pub(super) fn new(
        ctx: &'a NodeContext,
        egress: Egress,
        #[cfg(feature = "test-util")] shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            ctx,
            egress,
            #[cfg(feature = "test-util")]
            shutdown,
            rng: SystemRandom::new(),
            active: None,
            keyed: None,
            local: Default::default(),
            abandoned: Default::default(),
            psi: None,
        }
    }

    /// One message from the coordinator. `Some` ends the session (fault injection).
    pub(super) async fn handle(&mut self, msg: ToNode, coordinator: &Option<Peer>) -> Handled {
        match msg {
            ToNode::Welcome { coordinator: name, .. } => {
                tracing::info!(node = %self.ctx.name, coordinator = %name, "session open");
                Ok(None)
            }
            ToNode::RoundStart(start) => self.on_round_start(*start, coordinator).await,
            ToNode::CommitmentRoster { round, commitments, quorum, signature } => {
                self.on_commitment_roster(round, commitments, quorum, signature, coordinator).await
            }
            ToNode::KeyRoster { round, keys, nonces } => self.on_key_roster(round, keys, nonces).await,
            ToNode::ShareDelivery { round, delivered, shares } => {
                self.on_share_delivery(round, delivered, shares).await
            }
            ToNode::MaskedInputRequest { round, delivered, excluded } => {
                self.on_masked_input_request(round, delivered, excluded).await
            }
            ToNode::ConsistencyCheck { round, survivors, dropped } => {
                self.on_consistency_check(round, survivors, dropped).await
            }
            ToNode::UnmaskRequest { round, survivors, dropped, signatures } => {
                self.on_unmask_request(round, survivors, dropped, signatures).await
            }
            ToNode::RoundEnd { round, released, message } => self.on_round_end(round, released, &message),
            ToNode::Notice { text } => {
                tracing::warn!(node = %self.ctx.name, "the coordinator says: {text}");
                Ok(None)
            }
            ToNode::PsiStart(start) => self.on_psi_start(*start, coordinator).await,
            ToNode::PsiKeys(keys) => self.on_psi_keys(keys).await,
            ToNode::PsiChunk(chunk) => self.on_psi_chunk(chunk).await,
            ToNode::PsiDrop { run, peer, reason } => self.on_psi_drop(run, &peer, &reason).await,
        }
    }

    /// The coordinator sent something this node could not parse or check: its fault.
    pub(super) async fn refuse_malformed(&mut self, e: &wire::WireError) -> Result<(), SessionError> {
        let round = self.active.as_ref().filter(|a| !matches!(a.state, State::Done)).map(|a| a.start.round);
        let reason = format!("malformed message from the coordinator: {e}");
        if let Some(r) = round {
            // The coordinator drops this node from its round: leave it too.
            return self.refuse(r, &reason).await;
        }
        record(
            self.ctx,
            Event::PolicyDecision {
                round: round.map(|r| r.to_hex()),
                analysis: String::new(),
                admitted: false,
                reason: reason.clone(),
            },
        )?;
        self.egress.send(&FromNode::Refusal { awaiting_approval: false, round: None, reason }).await?;
        Ok(())
    }

    /// Decide, then advertise keys.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 0 (AdvertiseKeys), user: generate and sign (c_u^PK, s_u^PK), send.
    async fn on_round_start(&mut self, start: RoundStart, coordinator: &Option<Peer>) -> Handled {
        let ctx = self.ctx;
        let round = start.round;
        if !ctx.first_sight(&round) {
            // A round is never run twice: ignore it, leaving any round in progress alone.
            tracing::warn!(node = %ctx.name, %round, "a round id used before; ignored");
            record(
                ctx,
                Event::PolicyDecision {
                    round: Some(round.to_hex()),
                    analysis: String::new(),
                    admitted: false,
                    reason: "this round id was used before; a round is never run twice".into(),
                },
            )?;
            return Ok(None);
        }
        if self.active.as_ref().is_some_and(|a| !matches!(a.state, State::Done)) {
            self.refuse(round, "node is busy with another round").await?;
            return Ok(None);
        }
        // The coordinator signs who is in the round and who asked why: check and log it.
        let payload = wire::roster_payload(&start);
        let signature_ok = coordinator
            .as_ref()
            .is_some_and(|c| pki::verify_signature(&c.certificate, &payload, &start.roster_signature).is_ok());
        record(
            ctx,
            Event::RosterSigned {
                round: round.to_hex(),
                members: start.invited.iter().map(Member::from).collect(),
                coordinator: coordinator.as_ref().map(|c| c.name.clone()).unwrap_or_default(),
                signature_ok,
                signature_hex: hex::encode(&start.roster_signature),
                payload_sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, &payload).as_ref()),
            },
        )?;
        // The analysis as this node identifies it from the computation, not the label.
        let identified = ctx.analyses.identify(&start.analysis, &ctx.policy);
        record(
            ctx,
            Event::RoundStarted {
                round: round.to_hex(),
                analysis: start.analysis.analysis_id.clone(),
                kind: start.analysis.kind.name().to_string(),
                analysis_kind: identified.as_ref().map_or("unidentified", |i| i.kind).to_string(),
                purpose: start.analysis.purpose.clone(),
                threshold: start.threshold as u64,
                length: start.length as u64,
                invited: start.invited.iter().map(Member::from).collect(),
            },
        )?;
        let abandoned = self.abandoned.get(&start.analysis.analysis_id).copied().unwrap_or(0);
        let decision = if signature_ok && colludes(ctx) {
            identified
        } else if abandoned >= MAX_ABANDONED_GRAPHS {
            Err(format!(
                "the coordinator stopped {abandoned} SecAgg+ rounds of analysis {} after this node revealed its graph \
                 nonce; each stop gives it another graph to choose from, so this node takes no further part in the \
                 analysis (at most {MAX_ABANDONED_GRAPHS})",
                start.analysis.analysis_id
            ))
        } else if signature_ok {
            identified.and_then(|id| {
                let caps = ctx.cap_state(id.kind, &start.analysis.analysis_id);
                ctx.policy.admit(&ctx.name, &ctx.organisation, &start, id.kind, caps).map(|()| id)
            })
        } else {
            Err("the round's roster is not signed by the coordinator named in this node's configuration".into())
        };
        let identified = match decision {
            Ok(id) => id,
            Err(why) => {
                tracing::warn!(node = %ctx.name, %round, %why, "refusing round");
                self.refuse(round, &why).await?;
                return Ok(None);
            }
        };
        if identified.new {
            match approval(ctx, &start, &identified)? {
                Ok(()) => {}
                Err(why) => {
                    tracing::warn!(node = %ctx.name, %round, %why, "round waits for manual approval");
                    self.refuse_as(round, &why, true).await?;
                    return Ok(None);
                }
            }
        }
        record(
            ctx,
            Event::PolicyDecision {
                round: Some(round.to_hex()),
                analysis: identified.kind.to_string(),
                admitted: true,
                reason: format!("allowed by policy: {}", identified.description),
            },
        )?;
        // Every check that depends only on the signed round start runs before this node
        // touches its data, so neither a refusal nor its timing says anything about the
        // data (attack review of issue 10).
        // The sum's range from the signed bound, not from this node's data.
        if let Err(e) = fedcrm_crypto::fixed::check_budget(start.invited.len() as u64, start.max_per_node) {
            self.refuse(round, &e.to_string()).await?;
            return Ok(None);
        }
        // Issue 10: noise calibrated for more honest nodes than this node's own rules
        // allow would protect less than it claims.
        if let Err(why) = check_noise(&start, &ctx.policy.rules(), &ctx.organisation) {
            tracing::warn!(node = %ctx.name, %round, %why, "refusing round");
            self.refuse(round, &why).await?;
            return Ok(None);
        }
        // Issue 10: the node's own privacy policy and budget decide, from the computation
        // and the signed noise, before anything of the round leaves it.
        // Issue 11: a multi-round analysis's whole plan is checked at its first round.
        let charge = match ctx
            .policy
            .privacy
            .charge_of(&start)
            .and_then(|c| {
                analyses::check_plan(&start.analysis, c, identified.new, |plan| {
                    ctx.within_budget(Some(plan)).map(|_| ())
                })
            })
            .and_then(|c| ctx.within_budget(c))
        {
            Ok(c) => c,
            Err(why) => {
                tracing::warn!(node = %ctx.name, %round, %why, "refusing round");
                self.refuse(round, &why).await?;
                return Ok(None);
            }
        };
        // Issue 9: the width is recomputed from the signed range, never taken on trust.
        if let Err(why) = check_round_width(&start) {
            tracing::warn!(node = %ctx.name, %round, %why, "refusing round");
            self.refuse(round, &why).await?;
            return Ok(None);
        }
        // Issue 14: a database source is read now, for every round (exact or noised),
        // before the charge; a failure refuses this round only, with a fixed reason.
        // Nothing is computed from what was read until the contribution below (exact) or
        // after the charge (noised); the read's duration and whether the database can be
        // read are not hidden (docs/threat-model.md, "Not protected yet").
        if let Err(why) = analyses::prepare(&ctx.source, &start.analysis, &mut self.local).await {
            tracing::warn!(node = %ctx.name, %round, %why, "refusing round");
            self.refuse(round, &why).await?;
            return Ok(None);
        }
        // An exact round (only for `dp = "optional"` nodes) computes its contribution now
        // and refuses if this node holds more customers than the bound. A noised round
        // computes, clamps and noises it just before masking, once its charge is recorded
        // (`on_masked_input_request`): until then nothing this node does depends on its data
        // (beyond a database source's read above).
        let input = if start.noise.is_none() {
            let local = &mut LocalData::new(&ctx.source, &mut self.local);
            let (input, fitted) = match analyses::contribute(&start.analysis, local, &ctx.policy) {
                Ok(c) => {
                    let mut input = c.vector;
                    let fitted = fit_to_bound(&start, c.customers, &mut input);
                    (input, fitted)
                }
                Err(why) => (Zeroizing::new(Vec::new()), Err(why)),
            };
            if let Err(why) = fitted {
                tracing::warn!(node = %ctx.name, %round, %why, "refusing round");
                self.refuse(round, &why).await?;
                return Ok(None);
            }
            input
        } else {
            Zeroizing::new(Vec::new())
        };
        let params = RoundParams { round, t: start.threshold, d: start.length, width: start.width };
        let mut a = Active { start, input, u1: Vec::new(), plus: None, admission: None, charge, state: State::Done };
        // The first round of an analysis sets up its keys; a later one uses them.
        let opening = match a.start.setup {
            None => match ctx.analyses.setup(&a.start.analysis.analysis_id, a.start.threshold, a.start.degree) {
                Ok(()) => advertise(ctx, &self.rng, &mut a)?,
                Err(why) => Err(why),
            },
            Some(setup) => share_again(ctx, &self.rng, &mut a, self.keyed.as_mut(), setup, params)?,
        };
        let msg = match opening {
            Ok(m) => m,
            Err(why) => {
                tracing::warn!(node = %ctx.name, %round, %why, "refusing round");
                self.refuse(round, &why).await?;
                return Ok(None);
            }
        };
        self.egress.admit(round, &a.start.analysis.analysis_id);
        self.egress.send(&msg).await?;
        a.admission = Some(ctx.analyses.admitted(&a.start.analysis, &identified));
        if identified.new {
            ctx.count_analysis(identified.kind, &a.start.analysis.analysis_id);
        }
        tracing::info!(node = %ctx.name, %round, analysis = identified.kind, purpose = %a.start.analysis.purpose, width = a.start.width.bits(), setup = ?a.start.setup, "joined round");
        self.active = Some(a);
        #[cfg(feature = "test-util")]
        faults::joined(ctx);
        #[cfg(feature = "test-util")]
        if let Some(end) = faults::at(ctx, DropAt::AfterKeys, &self.shutdown).await {
            return Ok(Some(end));
        }
        Ok(None)
    }

    /// SecAgg+: check the coordinator's signature over U1's commitments and that this
    /// node's own is among them unaltered; then reveal this node's nonce.
    ///
    /// Bell et al. CCS 2020 (SecAgg+): the graph's randomness, committed before revealed.
    async fn on_commitment_roster(
        &mut self,
        round: RoundId,
        commitments: Vec<(String, [u8; 32])>,
        quorum: usize,
        signature: Vec<u8>,
        coordinator: &Option<Peer>,
    ) -> Handled {
        let ctx = self.ctx;
        let Some(a) = self.active.as_mut().filter(|a| a.start.round == round) else { return Ok(None) };
        if !matches!(a.state, State::AdvertiseKeys(_)) {
            return Ok(None); // a repeated or out-of-order roster changes nothing
        }
        // Fault injection: vanish between committing and revealing (the coordinator
        // must start the round again without this node).
        #[cfg(feature = "test-util")]
        if let Some(end) = faults::at(ctx, DropAt::BeforeReveal, &self.shutdown).await {
            return Ok(Some(end));
        }
        let Some(a) = self.active.as_mut().filter(|a| a.start.round == round) else { return Ok(None) };
        let payload = wire::commitments_payload(&round, quorum, &commitments);
        let names: Vec<String> = commitments.iter().map(|(n, _)| n.clone()).collect();
        let need = majority(ctx, &a.members(&names));
        let checked = match a.plus.as_ref() {
            None => Err("the coordinator sent nonce commitments in a full SecAgg round; refusing".to_string()),
            Some(p) => {
                let mine = graph::nonce_commitment(&round, &ctx.name, &p.nonce);
                if coordinator
                    .as_ref()
                    .is_none_or(|c| pki::verify_signature(&c.certificate, &payload, &signature).is_err())
                {
                    Err("the roster of nonce commitments is not signed by this node's coordinator; refusing".into())
                } else if !commitments.iter().any(|(n, c)| *n == ctx.name && *c == mine) {
                    Err("the roster of nonce commitments lacks this node's commitment, or alters it; refusing".into())
                } else if let Some((n, _)) =
                    commitments.iter().find(|(n, _)| !a.start.invited.iter().any(|i| &i.name == n))
                {
                    Err(format!("the roster of nonce commitments names {n}, who was not invited; refusing"))
                } else if quorum < need || quorum > commitments.len() {
                    Err(format!(
                        "the round's view-signature quorum q = {quorum} is unsafe for this node: with {} nodes in U1 \
                         it needs q > (|U1| + H + C)/2, i.e. q >= {need}, and q <= |U1|; refusing",
                        commitments.len()
                    ))
                } else {
                    Ok(p.nonce)
                }
            }
        };
        let nonce = match checked {
            Ok(n) => n,
            Err(why) => {
                tracing::warn!(node = %ctx.name, %round, %why, "refusing round");
                self.refuse(round, &why).await?;
                return Ok(None);
            }
        };
        let State::AdvertiseKeys(client) = std::mem::replace(&mut a.state, State::Done) else { return Ok(None) };
        if let Some(p) = a.plus.as_mut() {
            p.commitments = commitments;
            p.commitments_payload = payload;
            p.commitments_signature = signature;
            p.quorum = quorum;
        }
        a.state = State::NonceRevealed(client);
        self.egress.send(&FromNode::RevealNonce { round, nonce }).await?;
        Ok(None)
    }

    /// Verify U1, check the rules over it, share keys. In SecAgg+, first check every
    /// nonce against its signed commitment and draw the graph over all of U1.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 1 (ShareKeys), user: receive U1, assert |U1| ≥ t, verify each σ_v; send e_u,v.
    async fn on_key_roster(
        &mut self,
        round: RoundId,
        keys: Vec<SignedKeys>,
        nonces: Vec<(String, [u8; 32])>,
    ) -> Handled {
        let ctx = self.ctx;
        let Some(a) = self.active.as_mut().filter(|a| a.start.round == round) else { return Ok(None) };
        let ready = matches!((&a.state, &a.plus), (State::AdvertiseKeys(_), None) | (State::NonceRevealed(_), Some(_)));
        if !ready {
            return Ok(None); // a repeated or out-of-order roster changes nothing
        }
        let (State::AdvertiseKeys(setup) | State::NonceRevealed(setup)) = std::mem::replace(&mut a.state, State::Done)
        else {
            return Ok(None);
        };
        // U1: all of the keys (full SecAgg), or every committed node (SecAgg+).
        let drawn = match a.plus.as_mut() {
            None => Ok(keys.iter().map(|k| k.node.clone()).collect::<Vec<String>>()),
            Some(p) => draw_graph(&a.start, p, &nonces).map(|drawn| {
                let near: BTreeSet<&str> =
                    drawn.0.neighbours(&ctx.name).unwrap_or(&[]).iter().map(String::as_str).collect();
                p.neighbours = a.start.invited.iter().filter(|i| near.contains(i.name.as_str())).cloned().collect();
                p.graph = Some(drawn);
                p.commitments.iter().map(|(n, _)| n.clone()).collect()
            }),
        };
        if let Some((p, (g, seed))) = a.plus.as_ref().and_then(|p| p.graph.as_ref().map(|g| (p, g))) {
            record(
                ctx,
                Event::GraphDrawn {
                    round: round.to_hex(),
                    commitments_sha256: hex::encode(
                        ring::digest::digest(&ring::digest::SHA256, &p.commitments_payload).as_ref(),
                    ),
                    commitments_signature_hex: hex::encode(&p.commitments_signature),
                    quorum: p.quorum as u64,
                    seed: hex::encode(seed.bytes()),
                    degree: g.degree() as u64,
                    neighbours: g.neighbours(&ctx.name).unwrap_or(&[]).to_vec(),
                },
            )?;
        }
        let names: Vec<String> = match drawn {
            Ok(n) => n,
            Err(why) => {
                tracing::warn!(node = %ctx.name, %round, %why, "refusing round");
                self.refuse(round, &why).await?;
                return Ok(None);
            }
        };
        let commitments = a.plus.as_ref().map(|p| p.commitments.as_slice()).unwrap_or(&[]);
        let checked = verify_roster(ctx, &a.start, &keys, commitments).and_then(|peers| {
            check_key_names(a, &ctx.name, &keys)?;
            rules_for_stage(ctx, a, &a.members(&names), Stage::KeyRoster).map(|()| peers)
        });
        let verified = match checked {
            Ok(v) => v,
            Err(why) => {
                self.refuse(round, &why).await?;
                return Ok(None);
            }
        };
        #[cfg(feature = "test-util")]
        if let Some(f) = ctx.round_tap.as_ref().and_then(|t| t.on_roster.as_ref()) {
            f(round, &keys);
        }
        a.u1 = keys;
        let topology =
            a.plus.as_ref().and_then(|p| p.graph.as_ref()).map_or(secagg::Topology::Complete, |(g, _)| g.topology());
        // Agree keys with the neighbours once for the whole analysis; this round is its
        // first pass.
        let params = RoundParams { round, t: a.start.threshold, d: a.start.length, width: a.start.width };
        let joined = setup.join_among(names.clone(), verified, topology).and_then(|mut member| {
            let (state, sealed) = member.round(params, &names, &self.rng)?;
            Ok((member, state, sealed))
        });
        match joined {
            Ok((member, next, sealed)) => {
                let shares = sign_shares(ctx, &a.start, sealed)?;
                self.keyed = Some(Keyed {
                    analysis: a.start.analysis.analysis_id.clone(),
                    setup: round,
                    threshold: a.start.threshold,
                    degree: a.start.degree,
                    u1: a.u1.clone(),
                    labels: a.members(&names),
                    plus: a.plus.clone(),
                    member,
                });
                a.state = State::ShareKeys(next);
                self.egress.send(&FromNode::SealedShares { round, shares }).await?;
                Ok(None)
            }
            Err(e) => {
                self.refuse(round, &e.to_string()).await?;
                Ok(None)
            }
        }
    }

    /// Check each share's signature (the relay's fault when it fails), open the
    /// shares, report those that are signed but do not open (their senders' fault).
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 2 (MaskedInputCollection), user: receive the e_v,u, infer U2, assert |U2| ≥ t.
    async fn on_share_delivery(&mut self, round: RoundId, delivered: Vec<String>, shares: Vec<Sealed>) -> Handled {
        let ctx = self.ctx;
        let Some(a) = self.active.as_mut().filter(|a| a.start.round == round) else { return Ok(None) };
        if !matches!(a.state, State::ShareKeys(_)) {
            return Ok(None); // a repeated or out-of-order delivery changes nothing
        }
        let State::ShareKeys(client) = std::mem::replace(&mut a.state, State::Done) else { return Ok(None) };
        let Some(k) = self.keyed.as_ref() else { return Ok(None) };
        if let Err(why) = verify_share_signatures(&a.u1, &a.start, &ctx.name, &shares) {
            tracing::warn!(node = %ctx.name, %round, %why, "refusing round");
            self.refuse(round, &why).await?;
            return Ok(None);
        }
        // The protocol's own checks on U2 (⊆ U1, holds this node, ≥ t members, a share
        // from every other member): a wrong delivery is the coordinator's fault.
        let incoming: Vec<(String, Vec<u8>)> = shares.iter().map(|s| (s.peer.clone(), s.ciphertext.clone())).collect();
        let (opened, failed) = match client.open(&k.member, &delivered, &incoming) {
            Ok(x) => x,
            Err(e) => {
                self.refuse(round, &format!("the coordinator's share delivery is wrong: {e}")).await?;
                return Ok(None);
            }
        };
        let mut unopened = Vec::with_capacity(failed.len());
        for f in failed {
            // Unwrap safety: `open` names only senders of shares in `shares`.
            let share = shares.iter().find(|s| s.peer == f.sender).unwrap().clone();
            let reason = f.error.to_string();
            tracing::warn!(node = %ctx.name, %round, sender = %f.sender, %reason, "reporting a share that does not open");
            record(ctx, share_reported(round, &ctx.name, &share, &reason, "reported to the coordinator"))?;
            unopened.push(UnopenedShare { share, reason });
        }
        #[cfg(feature = "test-util")]
        unopened.extend(faults::false_reports(ctx, &shares));
        a.state = State::SharesOpened(opened);
        self.egress.send(&FromNode::ShareReport { round, unopened }).await?;
        Ok(None)
    }

    /// The final U2; the rules and the differencing guard over it, *then* mask.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 2 (MaskedInputCollection), user: compute y_u over U2, send it.
    async fn on_masked_input_request(
        &mut self,
        round: RoundId,
        delivered: Vec<String>,
        excluded: Vec<Exclusion>,
    ) -> Handled {
        let ctx = self.ctx;
        if !self.active.as_ref().is_some_and(|a| a.start.round == round && matches!(a.state, State::SharesOpened(_))) {
            return Ok(None); // a repeated or out-of-order request changes nothing
        }
        // Fault injection: vanish once in the final U2, so the others must recover this
        // node's mask key (a dropout between shares and masked input).
        #[cfg(feature = "test-util")]
        if let Some(end) = faults::at(ctx, DropAt::AfterShares, &self.shutdown).await {
            return Ok(Some(end));
        }
        let Some(a) = self.active.as_mut().filter(|a| a.start.round == round) else { return Ok(None) };
        let State::SharesOpened(opened) = std::mem::replace(&mut a.state, State::Done) else { return Ok(None) };
        let Some(k) = self.keyed.as_ref() else { return Ok(None) };
        for x in &excluded {
            tracing::info!(node = %ctx.name, %round, excluded = %x.node, reason = %x.reason, "left out of the final U2");
        }
        let ready = match opened.finish(&k.member, &delivered) {
            Ok(r) => r,
            Err(e) => {
                self.refuse(round, &format!("the coordinator's final U2 is wrong: {e}")).await?;
                return Ok(None);
            }
        };
        let u2 = a.members(&delivered);
        // Issue 11: a later round over any other set than the analysis's population is
        // refused before anything of it (or its charge) leaves this node.
        let rules = rules_over(ctx, a, round, &u2, Stage::Delivered)
            .and_then(|()| ctx.analyses.same_population(&a.start.analysis.analysis_id, &delivered));
        if let Err(why) = rules {
            tracing::warn!(node = %ctx.name, %round, %why, "refusing to mask");
            self.refuse(round, &why).await?;
            return Ok(None);
        }
        // From here this node's input may end up in a sum over (part of) U2, whether or
        // not the coordinator asks it anything more: persist that for the
        // differencing guard before the masked vector leaves.
        contributed(ctx, a, round, &delivered, Recorded::Masked)?;
        // Issue 10: the noised vector leaves now: charge the budget (fsynced) first,
        // whatever happens to the round afterwards — a retried round costs again.
        if let Some(charge) = a.charge.take()
            && let Err(why) = ctx.charge(&a.start, charge)?
        {
            tracing::warn!(node = %ctx.name, %round, %why, "refusing to mask");
            a.input = Zeroizing::new(Vec::new());
            self.refuse(round, &why).await?;
            return Ok(None);
        }
        // Issue 10: a noised round's contribution is computed only now, after its
        // charge: clamped to the signed bound, then noised; from here the node holds
        // only the noised vector (zeroized when dropped).
        if let Some(noise) = a.start.noise.clone() {
            // Only queries that support noise take it (`Query::noise_supported`, checked
            // at round start): counts, and churn rounds with their per-customer
            // mechanism, whose contribution is already rounded words (issue 11). The
            // charge is recorded, so nothing from here may refuse on this node's data
            // (attack review of issue 11: a refusal for too few customers after the
            // charge would answer, un-noised, how many the node holds at a chosen
            // date): if the contribution cannot be computed, the node contributes zeros
            // — still noised — and only its own log says why.
            let c = match analyses::contribute(
                &a.start.analysis,
                &mut LocalData::new(&ctx.source, &mut self.local),
                &ctx.policy,
            ) {
                Ok(c) => c,
                Err(why) => {
                    tracing::warn!(node = %ctx.name, %round, %why, "contributing zeros (noise still added): a noised round never refuses on data");
                    analyses::Contribution {
                        vector: Zeroizing::new(vec![0; a.start.length]),
                        customers: 0,
                        eligible: 0,
                        fewest_in_a_month: None,
                    }
                }
            };
            let mut input = c.vector;
            if let Ok(clamped @ 1..) = fit_to_bound(&a.start, c.customers, &mut input) {
                // Only this node's own log says so (a noised round never refuses on data).
                tracing::warn!(
                    node = %ctx.name, %round, clamped, bound = a.start.max_per_node,
                    "counts above the round's per-node bound were clamped to it before noise"
                );
            }
            if let Err(why) = add_noise(&mut input, &noise, a.start.width.bits()) {
                self.refuse(round, &why).await?;
                return Ok(None);
            }
            a.input = input;
        }
        // The masked input leaves now: this round counts as a pass of its analysis.
        a.admission = None;
        let masked = ready.mask(&k.member, &a.input);
        // The unmasked local vector is no longer needed, whatever happened.
        a.input = Zeroizing::new(Vec::new());
        match masked {
            Ok((next, y)) => {
                #[cfg(feature = "test-util")]
                if let Some(tap) = &ctx.round_tap {
                    (tap.on_held_shares)(round, next.test_util_held(&k.member));
                }
                #[cfg(feature = "test-util")]
                let y = faults::wrong_width(ctx, faults::wrong_length(ctx, y));
                let chunks = wire::chunk(round, &y, a.start.chunk_elements);
                #[cfg(feature = "test-util")]
                let chunks = faults::malformed(ctx, chunks);
                #[cfg(feature = "test-util")]
                if let Some(end) = faults::at(ctx, DropAt::MaskedLost, &self.shutdown).await {
                    return Ok(Some(end));
                }
                a.state = State::MaskedInputCollection(next);
                self.egress.clear(round, Phase::MaskedInputCollection);
                for c in chunks {
                    self.egress.send(&FromNode::MaskedChunk(c)).await?;
                }
                Ok(None)
            }
            Err(e) => {
                self.refuse(round, &e.to_string()).await?;
                Ok(None)
            }
        }
    }

    /// Check U3 and the rules over it, then sign (round, U2, U3) — once.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 3 (ConsistencyCheck), user: receive U3, assert U3 ⊆ U2 and |U3| ≥ t; send σ'_u.
    async fn on_consistency_check(&mut self, round: RoundId, survivors: Vec<String>, dropped: Vec<String>) -> Handled {
        let ctx = self.ctx;
        let Some(a) = self.active.as_mut().filter(|a| a.start.round == round) else { return Ok(None) };
        // Fault injection: vanish (or hang) when the coordinator moves on after the
        // masked input (it is known to have arrived).
        #[cfg(feature = "test-util")]
        if let Some(end) = faults::at(ctx, DropAt::AfterMasked, &self.shutdown).await {
            return Ok(Some(end));
        }
        let client = match std::mem::replace(&mut a.state, State::Done) {
            State::MaskedInputCollection(c) => c,
            State::ConsistencyCheck(..) => {
                self.refuse(round, "a second consistency check in one round; a node signs one view per round").await?;
                return Ok(None);
            }
            State::Done => {
                self.refuse(round, "a consistency check for a round this node already left or answered").await?;
                return Ok(None);
            }
            _ => {
                self.refuse(round, "a consistency check before this node sent its masked input; refusing").await?;
                return Ok(None);
            }
        };
        let Some(k) = self.keyed.as_ref() else { return Ok(None) };
        let view = View { delivered: client.delivered(), survivors: survivors.clone(), dropped: dropped.clone() };
        let u3 = a.members(&survivors);
        // Signing reveals nothing: the answer waits for enough signatures on this view
        // that no other can have them (`verify_view_signatures`), so no split view is
        // left to guard against here or then (`multiround::ViewCheck::Confirmed`).
        if client.check_request(&k.member, &survivors, &dropped, ViewCheck::Confirmed).is_ok() && !colludes(ctx) {
            // This view may be the sum, whether this node signs it or not: remember it
            // beside U2 until the unmask request confirms one view.
            contributed(ctx, a, round, &survivors, Recorded::Shown)?;
        }
        let colluding = colludes(ctx);
        let rules = client
            .check_request(&k.member, &survivors, &dropped, ViewCheck::Confirmed)
            .map_err(|e| e.to_string())
            .and_then(|()| rules_over(ctx, a, round, &u3, Stage::Survivors))
            .and_then(|()| ctx.analyses.same_population(&a.start.analysis.analysis_id, &survivors));
        if let Err(why) = rules {
            tracing::warn!(node = %ctx.name, %round, %why, "refusing to sign the round's view");
            self.refuse(round, &why).await?;
            if dropped.contains(&ctx.name) {
                // Declared dropped: no further part in the analysis (its keys go).
                self.keyed = None;
            }
            return Ok(None);
        }
        // Issue 11: from this signature on the round may be unmasked: the first signed
        // view's U3 becomes the analysis's population, and the round is no retry's.
        ctx.analyses.signed(&a.start.analysis.analysis_id, &view.survivors);
        let payload = secagg::consistency_payload(&round, a.seed(), &view.delivered, &view.survivors);
        let signature = ctx.signing.sign(&payload)?;
        record(
            ctx,
            Event::RoundView {
                round: round.to_hex(),
                stage: "signed".into(),
                delivered: view.delivered.clone(),
                survivors: view.survivors.clone(),
                signers: Vec::new(),
            },
        )?;
        a.state = if colluding { State::MaskedInputCollection(client) } else { State::ConsistencyCheck(client, view) };
        self.egress.clear(round, Phase::ConsistencyCheck);
        self.egress.send(&FromNode::ConsistencySignature { round, signature }).await?;
        Ok(None)
    }

    /// The signed view, t signatures on it from U3; record the sum; reveal.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 4 (Unmasking), user: verify the σ'_v; send b_v,u or s_v,u^SK per v ∈ U2.
    async fn on_unmask_request(
        &mut self,
        round: RoundId,
        survivors: Vec<String>,
        dropped: Vec<String>,
        signatures: Vec<ViewSignature>,
    ) -> Handled {
        let ctx = self.ctx;
        let Some(a) = self.active.as_mut().filter(|a| a.start.round == round) else { return Ok(None) };
        let (client, view) = match std::mem::replace(&mut a.state, State::Done) {
            State::ConsistencyCheck(c, v) => (c, v),
            State::MaskedInputCollection(c) if colludes(ctx) => {
                let v = View { delivered: c.delivered(), survivors: survivors.clone(), dropped: dropped.clone() };
                (c, v)
            }
            State::Done => {
                self.refuse(round, "an unmask request for a round this node already left or answered; refusing")
                    .await?;
                return Ok(None);
            }
            other => {
                let at = other.phase().map_or("no phase".into(), |p| p.to_string());
                self.refuse(
                    round,
                    &format!(
                        "an unmask request while this node is at {at}, before it signed the round's view; refusing"
                    ),
                )
                .await?;
                return Ok(None);
            }
        };
        let checked = if colludes(ctx) {
            Ok(signatures.iter().map(|s| s.node.clone()).collect())
        } else if view.survivors != survivors || view.dropped != dropped {
            Err("the unmask request names a different U3 from the one this node signed; refusing".to_string())
        } else {
            verify_view_signatures(ctx, a, round, &view, &signatures)
        };
        let signers = match checked {
            Ok(s) => s,
            Err(why) => {
                tracing::warn!(node = %ctx.name, %round, %why, "refusing unmask request");
                self.refuse(round, &why).await?;
                return Ok(None);
            }
        };
        // t signatures confirm the view: the sum is over this U3, which replaces the
        // sets remembered for this round.
        contributed(ctx, a, round, &view.survivors, Recorded::Unmasked)?;
        record(
            ctx,
            Event::RoundView {
                round: round.to_hex(),
                stage: "unmasked".into(),
                delivered: view.delivered.clone(),
                survivors: view.survivors.clone(),
                signers,
            },
        )?;
        let Some(k) = self.keyed.as_mut() else { return Ok(None) };
        // The view carries enough valid signatures (checked above) that no other view can.
        match client.unmask(&mut k.member, &survivors, &dropped, ViewCheck::Confirmed) {
            Ok(revealed) => {
                // A share of each surviving peer's round self-mask seed, and the round
                // pair seed with each dropped neighbour: never a key (multiround).
                let shares = revealed
                    .into_iter()
                    .map(|r| match r {
                        Reveal::SelfMask { of, share } => {
                            RevealedShare { of, self_mask: true, y: share.y_bytes().to_vec() }
                        }
                        Reveal::PairSeed { of, seed } => {
                            RevealedShare { of, self_mask: false, y: seed.to_bytes().to_vec() }
                        }
                    })
                    .collect();
                self.egress.clear(round, Phase::Unmasking);
                self.egress.send(&FromNode::UnmaskShares { round, shares }).await?;
            }
            Err(e) => {
                tracing::warn!(node = %ctx.name, %round, error = %e, "refusing unmask request");
                self.refuse(round, &e.to_string()).await?;
            }
        }
        Ok(None)
    }

    fn on_round_end(&mut self, round: RoundId, released: bool, message: &str) -> Handled {
        tracing::info!(node = %self.ctx.name, %round, released, %message, "round ended");
        lock(&self.ctx.audit).seal()?;
        self.egress.close_round(&round);
        self.end_psi(round);
        if let Some(a) = self.active.as_mut().filter(|a| a.start.round == round) {
            if !released && matches!(a.state, State::NonceRevealed(_)) {
                *self.abandoned.entry(a.start.analysis.analysis_id.clone()).or_default() += 1;
            }
            // Stopped before this node's masked input left (that takes the admission):
            // the pass did not happen, and may run again.
            if let Some(admission) = a.admission.take().filter(|_| !released) {
                self.ctx.analyses.withdraw(admission);
            }
            // A round that ends without a release stops its analysis: its keys go too.
            if !released && self.keyed.as_ref().is_some_and(|k| k.analysis == a.start.analysis.analysis_id) {
                self.keyed = None;
            }
            self.active = None; // drops (and wipes) the local vector and the round's secrets
        }
        Ok(None)
    }

    /// Refuse (part of) a round: the decision and its reason go to the audit log,
    /// then the refusal goes to the coordinator.
    async fn refuse(&mut self, round: RoundId, reason: &str) -> Result<(), SessionError> {
        self.refuse_as(round, reason, false).await
    }

    async fn refuse_as(&mut self, round: RoundId, reason: &str, awaiting_approval: bool) -> Result<(), SessionError> {
        if let Some(a) = self.active.as_mut().filter(|a| a.start.round == round) {
            a.state = State::Done;
            a.input = Zeroizing::new(Vec::new());
        }
        record(
            self.ctx,
            Event::PolicyDecision {
                round: Some(round.to_hex()),
                analysis: String::new(),
                admitted: false,
                reason: reason.to_string(),
            },
        )?;
        self.egress
            .send(&FromNode::Refusal { round: Some(round), reason: reason.to_string(), awaiting_approval })
            .await?;
        self.egress.close_round(&round);
        Ok(())
    }
}

/// Round 0 of an analysis's first round: this analysis's key pairs, signed (in
/// SecAgg+ with a commitment to a fresh graph nonce, revealed only once the coordinator
/// has signed every node's commitment, crypto/src/graph.rs). Inner `Err`: why this node
/// refuses.
///
/// Bonawitz et al. CCS 2017, Fig. 4, Round 0 (AdvertiseKeys), user: generate and sign (c_u^PK, s_u^PK), send —
/// once per analysis (`fedcrm_crypto::multiround::Setup`).
fn advertise(ctx: &NodeContext, rng: &SystemRandom, a: &mut Active) -> Result<Result<FromNode, String>, SessionError> {
    let round = a.start.round;
    let (setup, keys) = match Setup::new(round, &a.start.analysis.analysis_id, &ctx.name, rng) {
        Ok(x) => x,
        Err(e) => return Ok(Err(e.to_string())),
    };
    if a.start.degree > 0 {
        let mut nonce = [0u8; 32];
        if rng.fill(&mut nonce).is_err() {
            return Ok(Err("the system random number generator failed".into()));
        }
        a.plus = Some(Plus {
            nonce,
            commitments: Vec::new(),
            commitments_payload: Vec::new(),
            commitments_signature: Vec::new(),
            quorum: 0,
            graph: None,
            neighbours: Vec::new(),
        });
    }
    let commitment = a.plus.as_ref().map(|p| graph::nonce_commitment(&round, &ctx.name, &p.nonce));
    let payload = secagg::key_signing_payload(&round, &ctx.name, &keys.enc, &keys.mask, commitment.as_ref());
    let signature = ctx.signing.sign(&payload)?;
    a.state = State::AdvertiseKeys(setup);
    Ok(Ok(FromNode::AdvertiseKeys { round, enc: keys.enc, mask: keys.mask, signature, commitment }))
}

/// Round 1 of a later round of an analysis, with the keys of its first round (`keyed`):
/// U1 is the invitation, which must be of the setup's roster and name no node declared
/// dropped (`multiround::Member::round` refuses otherwise); the rules over it, then a
/// fresh self-mask seed shared with this node's neighbours. Inner `Err`: why this node
/// refuses.
///
/// Bonawitz et al. CCS 2017, Fig. 4, Round 1 (ShareKeys), user — with the agreements made once per
/// analysis and a fresh b_r only (Flamingo, Ma et al. S&P 2023).
fn share_again(
    ctx: &NodeContext,
    rng: &SystemRandom,
    a: &mut Active,
    keyed: Option<&mut Keyed>,
    setup: RoundId,
    params: RoundParams,
) -> Result<Result<FromNode, String>, SessionError> {
    let (round, analysis) = (a.start.round, &a.start.analysis.analysis_id);
    let Some(k) = keyed.filter(|k| k.setup == setup && &k.analysis == analysis) else {
        return Ok(Err(format!(
            "round {round} continues analysis {analysis} with the keys set up in round {setup}, which this node does \
             not hold (it keeps the keys of the analysis in progress for this session only); refusing"
        )));
    };
    if (k.degree, k.threshold) != (a.start.degree, a.start.threshold) {
        return Ok(Err(format!(
            "a later round of analysis {analysis} must keep its setup's graph degree and threshold (k = {}, t = {}), \
             but round {round} has k = {}, t = {}; refusing",
            k.degree, k.threshold, a.start.degree, a.start.threshold
        )));
    }
    // Labels are checked against certificates only at the setup's key roster: a later
    // round must repeat them exactly.
    for i in &a.start.invited {
        let setup_label = k.labels.binary_search_by(|l| l.name.as_str().cmp(&i.name)).ok().map(|x| &k.labels[x]);
        if let Some(l) = setup_label.filter(|l| *l != i) {
            return Ok(Err(format!(
                "round {round} of analysis {analysis} describes {} as ({}, {}), but the analysis's first round \
                 described it as ({}, {}), as its certificate was checked then; refusing",
                i.name,
                i.organisation,
                i.kind.as_str(),
                l.organisation,
                l.kind.as_str()
            )));
        }
    }
    a.u1 = k.u1.clone();
    a.plus = k.plus.clone();
    let names: Vec<String> = a.start.invited.iter().map(|i| i.name.clone()).collect();
    if let Err(why) = rules_for_stage(ctx, a, &a.members(&names), Stage::KeyRoster) {
        return Ok(Err(why));
    }
    let (state, sealed) = match k.member.round(params, &names, rng) {
        Ok(x) => x,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let shares = sign_shares(ctx, &a.start, sealed)?;
    a.state = State::ShareKeys(state);
    Ok(Ok(FromNode::SealedShares { round, shares }))
}

/// Sign each sealed share, so a receiver can tell this node's bytes from a relay's,
/// and that it was shown the same round start ([`secagg::share_signing_payload`]).
fn sign_shares(
    ctx: &NodeContext,
    start: &RoundStart,
    sealed: Vec<(String, Vec<u8>)>,
) -> Result<Vec<Sealed>, SessionError> {
    let round = start.round;
    let roster = secagg::roster_digest(&wire::roster_payload(start));
    let mut shares = Vec::with_capacity(sealed.len());
    for (peer, ciphertext) in sealed {
        #[cfg(feature = "test-util")]
        let ciphertext = faults::corrupt(ctx, &peer, ciphertext);
        let payload = secagg::share_signing_payload(&round, &ctx.name, &peer, &roster, &ciphertext);
        let signature = ctx.signing.sign(&payload)?;
        shares.push(Sealed { peer, ciphertext, signature });
    }
    Ok(shares)
}

/// The threshold, organisation and differencing rules over one set of the round (U2
/// before masking, U3 before signing). A colluding node (test hook) skips them.
fn rules_over(ctx: &NodeContext, a: &Active, round: RoundId, members: &[Invitee], stage: Stage) -> Result<(), String> {
    if colludes(ctx) {
        return Ok(());
    }
    rules_for_stage(ctx, a, members, stage)?;
    ctx.differencing.check(&ctx.policy.rules(), &ctx.name, round, unix_now_ms(), &a.start.analysis.coverage(), members)
}

/// The threshold and organisation rules over one set of the round: over the whole set
/// in full SecAgg; in SecAgg+ on the graph this node drew, over its neighbourhood and
/// its component (`fedcrm_analysis::neighbourhood::check_stage`).
fn rules_for_stage(ctx: &NodeContext, a: &Active, members: &[Invitee], stage: Stage) -> Result<(), String> {
    match a.plus.as_ref().and_then(|p| p.graph.as_ref().map(|g| (p, g))) {
        None => ctx.policy.check_set(&ctx.organisation, members, a.start.threshold, stage),
        Some((p, (g, _))) => neighbourhood::check_stage(
            &ctx.policy.rules(),
            &ctx.name,
            &ctx.organisation,
            members,
            &p.neighbours,
            g.adjacency(),
            (a.start.degree, a.start.threshold),
            stage,
        ),
    }
}

/// SecAgg+: the view signatures this node needs from U1's `members`, by its own rules:
/// more than (|U1| + H + C)/2, so that two views cannot both be signed that often while
/// each honest node signs one.
fn majority(ctx: &NodeContext, members: &[Invitee]) -> usize {
    let h = rules::hq_nodes(members);
    let c = rules::colluding_nodes(&ctx.policy.rules(), &ctx.organisation, members);
    (members.len() + h + c) / 2 + 1
}

/// The bytes a SecAgg+ graph seed hashes besides the nonces: the signed roster and
/// the signed commitments, so every node's graph depends on exactly what it was shown.
fn signed_inputs(start: &RoundStart, p: &Plus) -> Vec<u8> {
    let mut signed = wire::roster_payload(start);
    signed.extend_from_slice(&p.commitments_payload);
    signed
}

/// SecAgg+: every node of the signed commitments, and no other, revealed a nonce that
/// opens its commitment; the graph over all of them, from the seed of what this node
/// was shown. A missing reveal is refused: a graph over a subset would let the
/// coordinator choose among graphs by choosing whose reveals to count.
///
/// Bell et al. CCS 2020 (SecAgg+): the random Harary graph, drawn by every node itself.
fn draw_graph(start: &RoundStart, p: &Plus, nonces: &[(String, [u8; 32])]) -> Result<(Graph, GraphSeed), String> {
    let committed: Vec<&String> = p.commitments.iter().map(|(n, _)| n).collect();
    let revealed: Vec<&String> = nonces.iter().map(|(n, _)| n).collect();
    if committed != revealed {
        return Err("the key roster's nonces are not exactly those of the signed commitments; the SecAgg+ graph is \
                    drawn over every node that committed; refusing"
            .into());
    }
    graph::check_reveals(&start.round, &p.commitments, nonces).map_err(|e| format!("{e}; refusing"))?;
    let seed = graph::graph_seed(&start.round, &signed_inputs(start, p), nonces);
    let names: Vec<String> = p.commitments.iter().map(|(n, _)| n.clone()).collect();
    let g = Graph::harary(&names, start.degree, &seed).map_err(|e| format!("{e}; refusing"))?;
    Ok((g, seed))
}

/// The key roster holds this node's keys and, in SecAgg+, exactly its neighbours'.
fn check_key_names(a: &Active, me: &str, keys: &[SignedKeys]) -> Result<(), String> {
    let names: Vec<&str> = keys.iter().map(|k| k.node.as_str()).collect();
    if !names.contains(&me) {
        return Err("the key roster lacks this node's keys; refusing".into());
    }
    if let Some((g, _)) = a.plus.as_ref().and_then(|p| p.graph.as_ref()) {
        let mut want: Vec<&str> = g.neighbours(me).unwrap_or(&[]).iter().map(String::as_str).collect();
        want.push(me);
        want.sort_unstable();
        if names != want {
            return Err("the key roster does not hold exactly this node's and its neighbours' keys in the graph \
                        this node drew; refusing"
                .into());
        }
    }
    Ok(())
}

/// Record (fsynced) and remember that this node's input may be in a sum over
/// `contributors` in `round`: the differencing guard's history.
fn contributed(
    ctx: &NodeContext,
    a: &Active,
    round: RoundId,
    contributors: &[String],
    stage: Recorded,
) -> Result<(), SessionError> {
    let unmasked = Unmasked {
        round: round.to_hex(),
        time_ms: unix_now_ms(),
        coverage: a.start.analysis.coverage(),
        contributors: a.members(contributors),
    };
    record(ctx, crate::differencing::record(&unmasked, &a.start.analysis.analysis_id, stage))?;
    ctx.differencing.remember(unmasked, stage);
    Ok(())
}

/// A colluding node (test hook) signs any view and answers any request.
fn colludes(ctx: &NodeContext) -> bool {
    #[cfg(feature = "test-util")]
    {
        ctx.round_tap.as_ref().is_some_and(|t| t.sign_any_view)
    }
    #[cfg(not(feature = "test-util"))]
    {
        let _ = ctx;
        false
    }
}

/// Enough valid signatures on (round, U2, U3), from distinct members of U3, each by
/// that member's certificate: in full SecAgg at least t, by the certificates U1's roster
/// carried. In SecAgg+, whose t is per neighbourhood (HQ's nodes alone may reach it),
/// more than (|U1| + H + C)/2 (H: HQ's nodes in U1, C: the colluding nodes this node
/// assumes), so that two views cannot both be signed that often while honest nodes sign
/// one view each; a non-neighbour's certificate comes with its signature and is checked
/// against the brand CA. Returns the signers.
///
/// Bonawitz et al. CCS 2017, Fig. 4, Round 4 (Unmasking), user: verify each σ'_v, assert |U4| ≥ t.
fn verify_view_signatures(
    ctx: &NodeContext,
    a: &Active,
    round: RoundId,
    view: &View,
    signatures: &[ViewSignature],
) -> Result<Vec<String>, String> {
    let payload = secagg::consistency_payload(&round, a.seed(), &view.delivered, &view.survivors);
    let need = a.plus.as_ref().map_or(a.start.threshold, |p| p.quorum);
    let now = unix_now();
    let mut valid: BTreeSet<String> = BTreeSet::new();
    let survivors: BTreeSet<&str> = view.survivors.iter().map(String::as_str).collect();
    for s in signatures {
        if valid.len() >= need {
            break; // enough: the rest need not be checked
        }
        if !survivors.contains(s.node.as_str()) {
            continue; // only members of U3 count
        }
        let certificate = match a.u1.iter().find(|k| k.node == s.node) {
            Some(k) => &k.certificate,
            None if a.plus.is_some() => {
                let Ok(id) = pki::verify_cert(&ctx.ca_der, &s.certificate, now, Usage::Client) else { continue };
                let pki::Role::Node(kind) = id.role else { continue };
                if id.name != s.node {
                    continue;
                }
                // The signed invitation labelled this node; its certificate must agree,
                // or the coordinator's own signature shows it lied about who is who.
                // Invitations are sorted by name.
                let label = a
                    .start
                    .invited
                    .binary_search_by(|i| i.name.as_str().cmp(&s.node))
                    .ok()
                    .map(|i| &a.start.invited[i]);
                if label.is_none_or(|l| l.organisation != id.organisation || l.kind != kind) {
                    return Err(format!(
                        "the signed invitation describes {} differently from the certificate that came with its view \
                         signature ({}, {}); refusing",
                        s.node,
                        id.organisation,
                        kind.as_str()
                    ));
                }
                &s.certificate
            }
            None => continue,
        };
        if pki::verify_signature(certificate, &payload, &s.signature).is_ok() {
            valid.insert(s.node.clone());
        }
    }
    if valid.len() < need {
        let rule = match a.plus {
            None => format!("t = {need}"),
            Some(_) => format!("the {need} this node needs in SecAgg+ (more than (|U1| + H + C)/2 of U1)"),
        };
        return Err(format!(
            "consistency check: the unmask request carries {} valid signature(s) from members of U3 on this view, \
             fewer than {rule}; the coordinator may be showing nodes different views; refusing",
            valid.len(),
        ));
    }
    Ok(valid.into_iter().collect())
}

/// Manual approval, when the policy asks for it, bound to the computation, the
/// analyst and the purpose. Logged. Outer `Err`: a local failure; inner `Err`: the
/// refusal reason.
fn approval(ctx: &NodeContext, start: &RoundStart, id: &Identified) -> Result<Result<(), String>, SessionError> {
    if !ctx.policy.needs_approval(id.kind) {
        return Ok(Ok(()));
    }
    manual_approval(ctx, &start.analysis, id.kind, &id.description)
}

/// The franchisee's decision on a request for `computation` (`kind`, asked as
/// `asked`): approved, or the reason it waits (a request filed and logged). Rounds and
/// PSI runs alike. Outer `Err`: a local failure.
fn manual_approval(
    ctx: &NodeContext,
    asked: impl Into<crate::approvals::Asked>,
    kind: &str,
    computation: &str,
) -> Result<Result<(), String>, SessionError> {
    let now = unix_now_ms();
    let decision = match ctx.approvals.check(
        asked,
        kind,
        computation,
        now,
        ctx.policy.approval_expires_seconds,
        ctx.policy.approval_valid_seconds,
    ) {
        Ok(d) => d,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let requested = |p: &Pending| Event::ApprovalRequested {
        id: p.id.clone(),
        analysis: format!("{}: {}", p.analysis, p.computation),
        purpose: p.purpose.clone(),
        requested_by: format!("{} ({})", p.requested_by, p.requested_by_organisation),
        expires_ms: p.expires_ms,
    };
    Ok(match decision {
        Decision::Approved(ok) => {
            if ctx.granted.lock().unwrap_or_else(|p| p.into_inner()).insert(ok.id.clone()) {
                record(ctx, Event::ApprovalGranted { id: ok.id, by: ok.by })?;
            }
            Ok(())
        }
        Decision::Waiting { pending, new } => {
            if new {
                record(ctx, requested(&pending))?;
            }
            Err(format!(
                "policy: {kind} needs manual approval; request {} waits until {} (`fedcrm node approve {}`)",
                pending.id,
                approvals::when(pending.expires_ms),
                pending.id
            ))
        }
        Decision::Expired { expired, renewed } => {
            record(ctx, Event::ApprovalExpired { id: expired.id.clone() })?;
            record(ctx, requested(&renewed))?;
            Err(format!(
                "policy: approval request {} expired at {} without approval; a new request waits until {}",
                expired.id,
                approvals::when(expired.expires_ms),
                approvals::when(renewed.expires_ms)
            ))
        }
    })
}

/// Check every advertised key: certificate from the brand CA naming that node,
/// signature over (version, round, node, keys) by that certificate's key, and the
/// node was invited. Without this, the coordinator could substitute keys and read shares.
fn verify_roster(
    ctx: &NodeContext,
    start: &RoundStart,
    keys: &[SignedKeys],
    commitments: &[(String, [u8; 32])],
) -> Result<Vec<PeerKeys>, String> {
    let now = unix_now();
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        if !start.invited.iter().any(|i| i.name == k.node) {
            return Err(format!("roster names {}, who was not invited", k.node));
        }
        let id = pki::verify_cert(&ctx.ca_der, &k.certificate, now, Usage::Client)
            .map_err(|e| format!("certificate of {} rejected: {e}", k.node))?;
        if id.name != k.node {
            return Err(format!("roster entry {} carries the certificate of {}", k.node, id.name));
        }
        let claimed = start.invited.iter().find(|i| i.name == k.node);
        let kind = match id.role {
            pki::Role::Node(kind) => kind,
            other => return Err(format!("roster entry {} holds a {} certificate", k.node, other.as_str())),
        };
        if claimed.is_none_or(|c| c.organisation != id.organisation || c.kind != kind) {
            return Err(format!(
                "the signed invitation describes {} differently from its certificate ({}, {})",
                k.node,
                id.organisation,
                kind.as_str()
            ));
        }
        let commitment = commitments.iter().find(|(n, _)| *n == k.node).map(|(_, c)| c);
        if start.degree > 0 && commitment.is_none() {
            return Err(format!("the key roster carries keys of {}, who has no signed nonce commitment", k.node));
        }
        let payload = secagg::key_signing_payload(&start.round, &k.node, &k.enc, &k.mask, commitment);
        pki::verify_signature(&k.certificate, &payload, &k.signature)
            .map_err(|e| format!("signature on the keys of {} rejected: {e}", k.node))?;
        out.push(PeerKeys { name: k.node.clone(), enc: k.enc, mask: k.mask });
    }
    Ok(out)
}

/// Every delivered share carries its sender's signature over (round, sender, this
/// node, ciphertext), by the certificate U1's roster carried for the sender. The
/// coordinator checked each on arrival and relays them unchanged, so one that does
/// not verify was altered in relay: the coordinator's fault, not the sender's.
fn verify_share_signatures(u1: &[SignedKeys], start: &RoundStart, me: &str, shares: &[Sealed]) -> Result<(), String> {
    let round = start.round;
    let roster = secagg::roster_digest(&wire::roster_payload(start));
    for s in shares {
        let Some(k) = u1.iter().find(|k| k.node == s.peer) else {
            return Err(format!("the coordinator delivered a share from {}, who is not in U1; refusing", s.peer));
        };
        let payload = secagg::share_signing_payload(&round, &s.peer, me, &roster, &s.ciphertext);
        if let Err(e) = pki::verify_signature(&k.certificate, &payload, &s.signature) {
            return Err(format!(
                "the coordinator relayed a share from {} whose signature by {} does not verify ({e}) over this \
                 round's start as this node was shown it: either the share was altered after {} signed it, or \
                 the coordinator showed {} another round start (other noise, threshold or invitees) than this \
                 node — either way the coordinator is at fault, not {}; refusing",
                s.peer, s.peer, s.peer, s.peer, s.peer
            ));
        }
    }
    Ok(())
}

/// The audit record of a share that is signed but does not open.
fn share_reported(round: RoundId, receiver: &str, share: &Sealed, reason: &str, outcome: &str) -> Event {
    Event::ShareReported {
        round: round.to_hex(),
        sender: share.peer.clone(),
        receiver: receiver.to_string(),
        reason: reason.to_string(),
        ciphertext_hex: hex::encode(&share.ciphertext),
        signature_hex: hex::encode(&share.signature),
        outcome: outcome.to_string(),
    }
}
