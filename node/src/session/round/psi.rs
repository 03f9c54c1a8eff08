//! Issue 12: one PSI run as this node's session sees it — the coordinator's start, the
//! peers' run keys it relays, the sealed list chunks, and this node's release — with
//! every check made here, before this node's bytes leave:
//!
//! - `PsiStart`: a run id never seen before (a replayed start is refused), the
//!   coordinator's signature, this node among the participants, `channel-overlap` in
//!   `allowed_analyses` and under its monthly cap, exact counts only if the privacy
//!   policy is optional, noise at least its floor and the most the run can cost within
//!   the month's budget; every peer's certificate verified against the brand CA. Per
//!   peer, the side that compares follows the rule both compute from the certificates
//!   (`fedcrm_protocol::psi::comparer`); this node responds only to peers pinned in
//!   `[policy.psi] respond_to`, and declines the others. Then its run keys, one per
//!   accepted peer, signed with its role.
//! - `PsiKeys`: each peer key verified (chain, name, peer, role that complements this
//!   node's, the certificate the start announced); the run's privacy charge recorded
//!   before any list leaves; then this node's list per pair (blinded, padded,
//!   shuffled, sealed: `crate::psi`), streamed in chunks.
//! - `PsiChunk`: a peer's list or answer, at most the chunks this node's limits allow;
//!   once complete, the responder answers and the comparer counts. Any list that does
//!   not open or check stops the whole run (refused, naming who is at fault).
//! - Once every pair is done: `PsiRelease` — the customer count and the count of every
//!   pair this node compared, noised, or exact with those below `[policy.psi]
//!   min_exact_count` withheld here (`crate::psi::release`); nothing else of the run
//!   ever leaves.

use std::collections::BTreeMap;
use std::sync::Arc;

use fedcrm_audit::{Event, Member};
use fedcrm_crypto::RoundId;
use fedcrm_crypto::keys::RoundSecret;
use fedcrm_crypto::psi::channel::{Direction, ListKind, SealedChunk};
use fedcrm_crypto::psi::{self as cpsi, BlindingKey, Domain};
use fedcrm_dp::OsEntropy;
use fedcrm_dp::accounting::Charge;
use fedcrm_dp::sampler::{DiscreteGaussian, Variance};
use fedcrm_pki::{self as pki, Identity, OrgKind, Usage};
use fedcrm_protocol::psi::{PairRole, Side, SignedRunKey, comparer};
use fedcrm_protocol::wire::{CHANNEL_OVERLAP, FromNode, PsiChunk, PsiKeys, PsiStart, psi_start_payload};

use super::{Handled, Rounds};
use crate::approvals::Asked;
use crate::privacy::DpMode;
use crate::psi::{AwaitingAnswer, AwaitingList, Comparer, PairKeys, PsiRunError, Responder, SealedList, release};
use crate::session::{Peer, SessionError, record, unix_now};
use fedcrm_analysis::date::format_date;

/// This node's state in one PSI run.
pub(super) struct PsiRun {
    start: PsiStart,
    /// This node's normalised identifiers in groups (one, or one per segment for a
    /// segment profile; zeroized on drop), read once keys arrive.
    ids: Option<Arc<crate::identifiers::Grouped>>,
    pairs: BTreeMap<String, Pair>,
    /// Points of the peers' chunks kept so far.
    buffered: usize,
    released: bool,
    /// The peers' organisations, counted against `max_runs_per_peer_organisation` once
    /// the run is admitted (after any manual approval).
    organisations: Vec<String>,
}

impl PsiRun {
    /// This node's role with each peer it pairs with: "compares with a, responds with b".
    fn roles(&self) -> String {
        self.pairs
            .iter()
            .map(|(p, pair)| {
                let role = if pair.role == PairRole::Compare { "compares" } else { "responds" };
                format!("{role} with {p}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One pair of the run, by its stage.
struct Pair {
    /// This node's role (a responder's carries its commitment).
    role: PairRole,
    /// The peer's certificate as the start announced it (its run key must carry it).
    certificate: Vec<u8>,
    stage: Stage,
}

enum Stage {
    /// This node's run key left; the peer's has not come.
    KeySent {
        secret: RoundSecret,
        key: BlindingKey,
    },
    /// The comparer's list left; waiting for the peer's list and its answer, per group.
    Comparing {
        awaiting: Box<AwaitingAnswer>,
        lists: Vec<Vec<SealedChunk>>,
        answers: Vec<Vec<SealedChunk>>,
    },
    /// The responder's list left; waiting for the comparer's list, per group.
    Responding {
        awaiting: Box<AwaitingList>,
        lists: Vec<Vec<SealedChunk>>,
    },
    /// The exact table (`[mine][theirs]`; 1 × 1 for the plain overlap), which never
    /// leaves unnoised.
    Compared(Vec<Vec<u64>>),
    Answered,
    /// Moved out while a step runs.
    Busy,
}

impl Stage {
    fn done(&self) -> bool {
        matches!(self, Stage::Compared(_) | Stage::Answered)
    }
}

/// The most a run can charge this node: its own size and one count per other participant,
/// each of sensitivity 1 in its customers, at σ² each: ρ = n / (2σ²) (zCDP, composed).
fn run_charge(counts: usize, variance: &Variance) -> Charge {
    Charge { rho: counts as f64 / (2.0 * variance.as_f64()), xi: 0.0 }
}

/// What a run's keys and sealed channels are bound to: the run id and the whole start
/// as this node received it (SHA-256 of [`psi_start_payload`], its first 16 bytes). A
/// peer shown another start — other noise, participants or purpose — signs and seals
/// under another binding, so its key does not verify here (attack review of issue 12:
/// a coordinator must not give the two sides of a pair different terms).
fn binding(start: &PsiStart) -> RoundId {
    let d = ring::digest::digest(&ring::digest::SHA256, &psi_start_payload(start));
    let mut id = [0u8; 16];
    id.copy_from_slice(&d.as_ref()[..16]);
    RoundId(id)
}

/// A PSI step failed: the full error goes to this node's audit log; the coordinator is
/// told its kind and who is at fault, without a figure ([`PsiRunError::public_reason`]).
fn failed(ctx: &crate::session::NodeContext, run: RoundId, e: &PsiRunError) -> Result<String, SessionError> {
    record(
        ctx,
        Event::PolicyDecision {
            round: Some(run.to_hex()),
            analysis: String::new(),
            admitted: false,
            reason: format!("psi run {run}: {e}"),
        },
    )?;
    Ok(format!("psi run {run}: {}", e.public_reason()))
}

/// This node's identifiers for a run: one group, or — for a segment profile — one per
/// RFM segment of its customers at the reference date under the run's global cut
/// points.
fn grouped(
    purchases: &[crate::data::Purchase],
    on: crate::identifiers::MatchOn,
    profile: Option<fedcrm_protocol::wire::SegmentProfile>,
) -> crate::identifiers::Grouped {
    match profile {
        None => {
            let ids = crate::identifiers::customer_identifiers(purchases, on);
            crate::identifiers::Grouped { groups: vec![ids.ids.clone()] }
        }
        Some(p) => {
            let segment_of: BTreeMap<String, usize> = crate::features::rfm(purchases, p.reference_date)
                .into_iter()
                .map(|(customer, rfm)| (customer, p.cuts.segment_of(&rfm).index()))
                .collect();
            crate::identifiers::identifiers_by_segment(purchases, on, &segment_of, crate::psi::MAX_GROUPS)
        }
    }
}

fn kind_of(id: &Identity) -> Option<OrgKind> {
    match id.role {
        pki::Role::Node(k) => Some(k),
        _ => None,
    }
}

impl Rounds<'_> {
    /// A PSI run starts: check it, then send this node's run keys (or refuse).
    pub(super) async fn on_psi_start(&mut self, start: PsiStart, coordinator: &Option<Peer>) -> Handled {
        let run = start.run;
        if !self.ctx.first_sight(&run) {
            // Logged and refused, never joined: a run id comes once.
            self.refuse(run, &format!("psi run {run} was started before: a replayed start is refused")).await?;
            return Ok(None);
        }
        if let Some(other) = self.psi.as_ref().map(|r| r.start.run) {
            self.refuse(run, &format!("psi run {other} is still in progress on this node; one run at a time")).await?;
            return Ok(None);
        }
        let invited: Vec<Member> = start
            .participants
            .iter()
            .map(|p| {
                let id = pki::verify_cert(&self.ctx.ca_der, &p.certificate, unix_now(), Usage::Client).ok();
                Member {
                    name: p.name.clone(),
                    organisation: id.as_ref().map(|i| i.organisation.clone()).unwrap_or_default(),
                    kind: id.as_ref().and_then(kind_of).map(|k| k.as_str().to_string()).unwrap_or_default(),
                }
            })
            .collect();
        record(
            self.ctx,
            Event::RoundStarted {
                round: run.to_hex(),
                analysis: start.analysis_id.clone(),
                kind: "psi".into(),
                analysis_kind: CHANNEL_OVERLAP.into(),
                purpose: start.purpose.clone(),
                threshold: 0,
                length: 0,
                invited,
            },
        )?;
        match self.psi_admit(&start, coordinator) {
            Ok(Ok(keys)) => {
                if let Err(why) = self.psi_approval(&start)? {
                    // Nothing leaves but the refusal: the keys and secrets are dropped.
                    self.psi = None;
                    tracing::warn!(node = %self.ctx.name, %run, %why, "psi run waits for manual approval");
                    self.refuse_as(run, &why, true).await?;
                    return Ok(None);
                }
                let summary = self.psi.as_ref().map_or_else(String::new, PsiRun::roles);
                record(
                    self.ctx,
                    Event::PolicyDecision {
                        round: Some(run.to_hex()),
                        analysis: start.analysis_id.clone(),
                        admitted: true,
                        reason: format!("psi run admitted: {summary}"),
                    },
                )?;
                // Each run counts against the monthly cap on its own (a run id comes once).
                self.ctx.count_analysis(CHANNEL_OVERLAP, &run.to_hex());
                if let Some(r) = &self.psi {
                    self.ctx.count_psi_peers(&run.to_hex(), &r.organisations);
                }
                tracing::info!(node = %self.ctx.name, %run, pairs = keys.keys.len(), declined = keys.declined.len(), "psi run: keys sent");
                self.egress.admit(run, &start.analysis_id);
                self.egress.send(&FromNode::PsiKeys(keys)).await?;
            }
            Ok(Err(why)) => {
                self.psi = None;
                self.refuse(run, &why).await?;
            }
            Err(e) => return Err(e),
        }
        Ok(None)
    }

    /// The checks of a run's start; its keys, or why this node refuses.
    fn psi_admit(
        &mut self,
        start: &PsiStart,
        coordinator: &Option<Peer>,
    ) -> Result<Result<PsiKeys, String>, SessionError> {
        let ctx = self.ctx;
        let Some(coordinator) = coordinator else { return Ok(Err("no coordinator welcome yet".into())) };
        if pki::verify_signature(&coordinator.certificate, &psi_start_payload(start), &start.signature).is_err() {
            return Ok(Err("the psi start's signature does not verify against the coordinator's certificate".into()));
        }
        if !start.participants.iter().any(|p| p.name == ctx.name) {
            return Ok(Err("this node is not among the run's participants".into()));
        }
        let policy = &ctx.policy;
        if !policy.allowed_analyses.iter().any(|a| a == CHANNEL_OVERLAP) {
            return Ok(Err(format!("policy: analysis {CHANNEL_OVERLAP:?} is not in allowed_analyses")));
        }
        let caps = ctx.cap_state(CHANNEL_OVERLAP, &start.run.to_hex());
        if let Some(&cap) = policy.monthly_analysis_caps.get(CHANNEL_OVERLAP)
            && !caps.already_counted
            && caps.analyses_this_month >= cap
        {
            return Ok(Err(format!(
                "policy: the monthly cap of {cap} {CHANNEL_OVERLAP:?} runs is reached; it resets on the 1st (UTC)"
            )));
        }
        match (&start.noise, policy.privacy.dp) {
            (None, DpMode::Required) => {
                return Ok(Err("policy: this node's policy requires differential privacy ([policy.privacy] dp = \
                               \"required\"), and the run's counts are exact; run it with --dp on"
                    .into()));
            }
            (Some(v), _) => {
                let floor = match policy.privacy.min_noise() {
                    Ok(f) => f,
                    Err(e) => return Ok(Err(e)),
                };
                if *v < floor {
                    return Ok(Err(format!(
                        "policy: the run's noise σ² = {v} is below this node's floor ([policy.privacy] \
                         min_noise_variance = {floor}); refusing"
                    )));
                }
                if let Err(e) = ctx.within_budget(Some(run_charge(start.participants.len(), v))) {
                    return Ok(Err(e));
                }
            }
            (None, DpMode::Optional) => {}
        }
        let now = unix_now();
        let me = Side { name: &ctx.name, kind: self.own_kind() };
        let run = start.run;
        let mut keys = Vec::new();
        let mut declined = Vec::new();
        let mut pairs = BTreeMap::new();
        let mut organisations = Vec::new();
        for p in start.participants.iter().filter(|p| p.name != ctx.name) {
            let id = match pki::verify_cert(&ctx.ca_der, &p.certificate, now, Usage::Client) {
                Ok(id) if id.name == p.name => id,
                Ok(id) => return Ok(Err(format!("the start names {} with the certificate of {}", p.name, id.name))),
                Err(e) => return Ok(Err(format!("the certificate of participant {} is refused: {e}", p.name))),
            };
            if let Err(why) = ctx.not_revoked(&p.name, &p.certificate) {
                declined.push((p.name.clone(), why));
                continue;
            }
            let Some(kind) = kind_of(&id) else {
                return Ok(Err(format!(
                    "participant {} holds a {} certificate, not a node's",
                    p.name,
                    id.role.as_str()
                )));
            };
            let organisation = crate::psi::peer_organisation(kind, &id.organisation);
            organisations.push(organisation.clone());
            let cap = policy.psi.max_runs_per_peer_organisation as usize;
            if ctx.psi_runs_with(&organisation, &run.to_hex()) >= cap {
                declined.push((
                    p.name.clone(),
                    format!(
                        "policy: this node paired with {organisation} in {cap} psi runs this month ([policy.psi] \
                         max_runs_per_peer_organisation); it resets on the 1st (UTC)"
                    ),
                ));
                continue;
            }
            let compares = comparer(me, Side { name: &p.name, kind }) == ctx.name;
            if !compares && let Err(why) = policy.psi.may_respond(&id, &p.certificate) {
                declined.push((p.name.clone(), why));
                continue;
            }
            let secret = RoundSecret::generate(&self.rng).map_err(|e| SessionError::Policy(e.to_string()))?;
            let domain = Domain { version: cpsi::VERSION, run_id: run.0 };
            let key = BlindingKey::generate(domain, &self.rng).map_err(|e| SessionError::Policy(e.to_string()))?;
            let role = if compares { PairRole::Compare } else { PairRole::Respond { commitment: key.public() } };
            let cert = pki::pem_to_der_certs(&ctx.cert_pem)?.remove(0);
            let signed = SignedRunKey::sign(&binding(start), &ctx.name, &p.name, &secret, role, cert, &ctx.signing)
                .map_err(|e| SessionError::Policy(e.to_string()))?;
            keys.push(signed);
            pairs.insert(
                p.name.clone(),
                Pair { role, certificate: p.certificate.clone(), stage: Stage::KeySent { secret, key } },
            );
        }
        self.psi = Some(PsiRun { start: start.clone(), ids: None, pairs, buffered: 0, released: false, organisations });
        Ok(Ok(PsiKeys { run, keys, declined }))
    }

    /// Manual approval of a run that passed every other check, when the policy lists
    /// `channel-overlap` under `manual_approval`: bound to the participants, this
    /// node's role with each, the noise and the segment profile, the analyst and the
    /// purpose (not the run id: HQ runs it again once approved). The reason it waits,
    /// otherwise.
    fn psi_approval(&self, start: &PsiStart) -> Result<Result<(), String>, SessionError> {
        if !self.ctx.policy.needs_approval(CHANNEL_OVERLAP) {
            return Ok(Ok(()));
        }
        let roles = self.psi.as_ref().map_or_else(String::new, PsiRun::roles);
        // Each participant by name, organisation, kind and certificate: a certificate HQ
        // reissues under the same name is another request.
        let names: Vec<String> = start
            .participants
            .iter()
            .map(|p| {
                let id = pki::identity_from_cert(&p.certificate).ok();
                let fingerprint = ring::digest::digest(&ring::digest::SHA256, &p.certificate);
                format!(
                    "{:?} ({:?}, {}, certificate sha256 {})",
                    p.name,
                    id.as_ref().map_or("", |i| i.organisation.as_str()),
                    id.as_ref().and_then(kind_of).map_or("?", |k| k.as_str()),
                    hex::encode(&fingerprint.as_ref()[..8])
                )
            })
            .collect();
        let counts = match &start.noise {
            None => "exact counts".to_string(),
            Some(v) => format!("counts noised with σ² = {v}"),
        };
        let profile = start.segments.as_ref().map_or_else(String::new, |s| {
            format!("; segment profile at {} under cut points {:?}", format_date(s.reference_date), s.cuts)
        });
        let computation = format!(
            "channel overlap by private set intersection among {}; this node {}; {counts}{profile}",
            names.join(", "),
            if roles.is_empty() { "pairs with nobody".into() } else { roles }
        );
        let asked = Asked {
            purpose: start.purpose.clone(),
            reference_date: start
                .segments
                .as_ref()
                .map_or_else(|| "none (all customers)".into(), |s| format_date(s.reference_date)),
            requested_by: start.requested_by.clone(),
            requested_by_organisation: start.requested_by_organisation.clone(),
        };
        super::manual_approval(self.ctx, asked, CHANNEL_OVERLAP, &computation)
    }

    /// This node's organisation kind, from its own certificate.
    fn own_kind(&self) -> OrgKind {
        pki::pem_to_der_certs(&self.ctx.cert_pem)
            .ok()
            .and_then(|c| c.into_iter().next())
            .and_then(|d| pki::identity_from_cert(&d).ok())
            .and_then(|id| kind_of(&id))
            .unwrap_or(OrgKind::Franchisee)
    }

    /// The peers' run keys: verify each, charge the run, send this node's lists.
    pub(super) async fn on_psi_keys(&mut self, keys: PsiKeys) -> Handled {
        let run = keys.run;
        if self.psi.as_ref().is_none_or(|r| r.start.run != run) {
            self.refuse(run, &format!("keys for psi run {run}, which this node is not running")).await?;
            return Ok(None);
        }
        match self.psi_lists(keys).await? {
            Ok(()) => self.psi_maybe_release().await,
            Err(why) => {
                self.psi = None;
                self.refuse(run, &why).await?;
                Ok(None)
            }
        }
    }

    async fn psi_lists(&mut self, keys: PsiKeys) -> Result<Result<(), String>, SessionError> {
        let ctx = self.ctx;
        let run = keys.run;
        let Some(state) = self.psi.as_mut().filter(|r| r.start.run == run) else {
            return Ok(Err(format!("keys for psi run {run}, which this node has not joined")));
        };
        if state.ids.is_some() {
            return Ok(Err(format!("psi run {run}: the peers' keys came twice (replayed by the relay)")));
        }
        let now = unix_now();
        let mut paired = BTreeMap::new();
        for k in &keys.keys {
            let Some(pair) = state.pairs.get(&k.node) else {
                return Ok(Err(format!("psi run {run}: a key from {}, whom this node did not pair with", k.node)));
            };
            if paired.contains_key(&k.node) {
                return Ok(Err(format!("psi run {run}: two keys from {}", k.node)));
            }
            let (public, _) = match k.verify(&ctx.ca_der, &binding(&state.start), &k.node, &ctx.name, now) {
                Ok(v) => v,
                Err(e) => {
                    return Ok(Err(format!(
                        "psi run {run}: {e} (or the coordinator showed {} another start than this node's)",
                        k.node
                    )));
                }
            };
            if k.certificate != pair.certificate {
                return Ok(Err(format!(
                    "psi run {run}: {}'s key carries another certificate than the start announced",
                    k.node
                )));
            }
            if !pair.role.complements(&k.role) {
                return Ok(Err(format!(
                    "psi run {run}: {} took the same role as this node in their pair (both compare or both respond); \
                     the rule both sides compute from the certificates was not followed",
                    k.node
                )));
            }
            paired.insert(k.node.clone(), (public, k.role));
        }
        // Pairs the peer declined (or the coordinator dropped) do not run.
        state.pairs.retain(|p, _| paired.contains_key(p));
        // Issue 14: a database source is read now, before the run is charged (its
        // failure says nothing of the data).
        let dataset = match ctx.source.dataset().await {
            Ok(d) => d,
            Err(e) => {
                // HQ learns only that the read failed; the details stay in this log.
                tracing::warn!(node = %ctx.name, run = %run, error = %e, "reading the database failed");
                return Ok(Err(crate::analyses::DATABASE_UNREADABLE.into()));
            }
        };
        if let Some(v) = state.start.noise.clone() {
            let charge = run_charge(1 + state.pairs.len(), &v);
            if let Err(e) = ctx.charge_run(&run.to_hex(), &state.start.analysis_id, Some(&v), charge)? {
                return Ok(Err(e));
            }
        }
        let on = ctx.psi.match_on;
        let profile = state.start.segments;
        let ids = tokio::task::spawn_blocking(move || Arc::new(grouped(&dataset.purchases, on, profile)))
            .await
            .map_err(|e| SessionError::Policy(format!("reading identifiers: {e}")))?;
        state.ids = Some(ids.clone());
        let groups = ids.groups.len();
        let limits = ctx.policy.psi.list_limits();
        let bound = binding(&state.start);
        let names: Vec<String> = state.pairs.keys().cloned().collect();
        for peer in names {
            let Some(pair) = self.psi.as_mut().and_then(|s| s.pairs.get_mut(&peer)) else { continue };
            let Stage::KeySent { secret, key } = std::mem::replace(&mut pair.stage, Stage::Busy) else {
                return Ok(Err(format!("psi run {run}: pair with {peer} out of order")));
            };
            let (peer_key, peer_role) = paired[&peer];
            let role = pair.role;
            let (me, ids, p) = (ctx.name.clone(), ids.clone(), peer.clone());
            let sent = tokio::task::spawn_blocking(move || -> Result<(Vec<SealedList>, Stage), PsiRunError> {
                let rng = fedcrm_crypto::SystemRandom::new();
                let keys = PairKeys { run: bound, me: &me, peer: &p, secret: &secret, peer_key: &peer_key };
                let mine: Vec<&[String]> = ids.groups.iter().map(Vec::as_slice).collect();
                let empty = || vec![Vec::new(); groups];
                match (role, peer_role) {
                    (PairRole::Compare, PairRole::Respond { commitment }) => {
                        let (lists, awaiting) =
                            Comparer::new(&keys, commitment, key, limits)?.own_groups(&mine, &rng)?;
                        let awaiting = Box::new(awaiting);
                        Ok((lists, Stage::Comparing { awaiting, lists: empty(), answers: empty() }))
                    }
                    _ => {
                        let (lists, awaiting) = Responder::new(&keys, key, limits)?.own_groups(&mine, &rng)?;
                        Ok((lists, Stage::Responding { awaiting: Box::new(awaiting), lists: empty() }))
                    }
                }
            })
            .await
            .map_err(|e| SessionError::Policy(format!("psi list: {e}")))?;
            let (lists, stage) = match sent {
                Ok(x) => x,
                Err(e) => return Ok(Err(failed(ctx, run, &e)?)),
            };
            if let Some(pair) = self.psi.as_mut().and_then(|s| s.pairs.get_mut(&peer)) {
                pair.stage = stage;
            }
            let points: usize =
                lists.iter().flat_map(|l| &l.1).map(|c| c.ciphertext.len().saturating_sub(16) / 32).sum();
            for (kind, chunks) in lists {
                self.psi_send(run, &peer, kind, chunks).await?;
            }
            tracing::info!(node = %ctx.name, %run, %peer, points, groups, "psi: own list sent");
        }
        Ok(Ok(()))
    }

    async fn psi_send(
        &mut self,
        run: RoundId,
        peer: &str,
        list: ListKind,
        chunks: Vec<SealedChunk>,
    ) -> Result<(), SessionError> {
        for chunk in chunks {
            self.egress.send(&FromNode::PsiChunk(PsiChunk { run, peer: peer.to_string(), list, chunk })).await?;
        }
        Ok(())
    }

    /// A chunk of a peer's list or answer.
    pub(super) async fn on_psi_chunk(&mut self, c: PsiChunk) -> Handled {
        let run = c.run;
        if self.psi.as_ref().is_none_or(|r| r.start.run != run) {
            self.refuse(run, &format!("a list chunk for psi run {run}, which this node is not running")).await?;
            return Ok(None);
        }
        match self.psi_take_chunk(c).await? {
            Ok(()) => self.psi_maybe_release().await,
            Err(why) => {
                self.psi = None;
                self.refuse(run, &why).await?;
                Ok(None)
            }
        }
    }

    async fn psi_take_chunk(&mut self, c: PsiChunk) -> Result<Result<(), String>, SessionError> {
        let run = c.run;
        let limits = self.ctx.policy.psi.list_limits();
        let Some(state) = self.psi.as_mut().filter(|r| r.start.run == run) else {
            return Ok(Err(format!("a list chunk for psi run {run}, which this node is not running")));
        };
        let Some(pair) = state.pairs.get_mut(&c.peer) else {
            return Ok(Err(format!("psi run {run}: a list chunk from {}, whom this node is not paired with", c.peer)));
        };
        let max = match &pair.stage {
            Stage::Comparing { awaiting, .. } if c.list == (ListKind::Returned { group: 0 }) => {
                Direction::chunks_for(awaiting.sent())
            }
            _ => Direction::chunks_for(limits.max_points),
        };
        if c.chunk.of > max {
            return Ok(Err(format!(
                "psi run {run}: {}'s list announces {} chunks, more than the {max} this node accepts",
                c.peer, c.chunk.of
            )));
        }
        // Only chunks the peer sealed are kept (each opened on arrival), and a run keeps
        // at most twice the longest list this node accepts.
        let checked = match &pair.stage {
            Stage::Comparing { awaiting, .. } => awaiting.check(c.list, &c.chunk),
            Stage::Responding { awaiting, .. } => awaiting.check(c.list, &c.chunk),
            _ => Ok(()),
        };
        if let Err(e) = checked {
            return Ok(Err(failed(self.ctx, run, &e)?));
        }
        state.buffered += c.points();
        if state.buffered > 2 * limits.max_points {
            return Ok(Err(format!(
                "psi run {run}: the peers' lists exceed {} points in all, twice the longest list this node accepts",
                2 * limits.max_points
            )));
        }
        let complete = |v: &Vec<SealedChunk>| v.first().is_some_and(|f| v.len() as u32 == f.of);
        let all = |v: &Vec<Vec<SealedChunk>>| v.iter().all(complete);
        let (group, own) = match c.list {
            ListKind::Blinded { group } => (usize::from(group), true),
            ListKind::Returned { group } => (usize::from(group), false),
        };
        let ready = match &mut pair.stage {
            Stage::Comparing { lists, answers, .. } => {
                let into = if own { &mut *lists } else { &mut *answers };
                let Some(list) = into.get_mut(group) else {
                    return Ok(Err(format!("psi run {run}: {} sent a list of group {group}", c.peer)));
                };
                if complete(list) {
                    return Ok(Err(format!(
                        "psi run {run}: {} sent more chunks of {:?} than it announced",
                        c.peer, c.list
                    )));
                }
                list.push(c.chunk);
                all(lists) && all(answers)
            }
            Stage::Responding { lists, .. } if own => {
                let Some(list) = lists.get_mut(group) else {
                    return Ok(Err(format!("psi run {run}: {} sent a list of group {group}", c.peer)));
                };
                if complete(list) {
                    return Ok(Err(format!("psi run {run}: {} sent more chunks than it announced", c.peer)));
                }
                list.push(c.chunk);
                all(lists)
            }
            _ => {
                return Ok(Err(format!(
                    "psi run {run}: a chunk of {:?} from {} at this stage of the pair",
                    c.list, c.peer
                )));
            }
        };
        if !ready {
            return Ok(Ok(()));
        }
        let peer = c.peer.clone();
        let stage = std::mem::replace(&mut pair.stage, Stage::Busy);
        let ctx_name = self.ctx.name.clone();
        let outcome = tokio::task::spawn_blocking(move || -> Result<(Stage, Option<Vec<SealedList>>), PsiRunError> {
            match stage {
                Stage::Comparing { awaiting, lists, answers } => {
                    Ok((Stage::Compared(awaiting.compare_groups(&lists, &answers)?), None))
                }
                Stage::Responding { awaiting, lists } => {
                    let rng = fedcrm_crypto::SystemRandom::new();
                    Ok((Stage::Answered, Some(awaiting.answer_groups(&lists, &rng)?)))
                }
                other => Ok((other, None)),
            }
        })
        .await
        .map_err(|e| SessionError::Policy(format!("psi step: {e}")))?;
        let (stage, reply) = match outcome {
            Ok(x) => x,
            Err(e) => return Ok(Err(failed(self.ctx, run, &e)?)),
        };
        if let Some(pair) = self.psi.as_mut().and_then(|s| s.pairs.get_mut(&peer)) {
            pair.stage = stage;
        }
        if let Some(lists) = reply {
            for (kind, chunks) in lists {
                self.psi_send(run, &peer, kind, chunks).await?;
            }
            tracing::info!(node = %ctx_name, %run, %peer, "psi: answered the peer's list");
        } else {
            tracing::info!(node = %ctx_name, %run, %peer, "psi: compared");
        }
        Ok(Ok(()))
    }

    /// Every pair done: release the counts, once — noised, or exact with the small ones
    /// withheld ([`release`]).
    async fn psi_maybe_release(&mut self) -> Handled {
        let Some(state) = self.psi.as_mut() else { return Ok(None) };
        if state.released || state.ids.is_none() || !state.pairs.values().all(|p| p.stage.done()) {
            return Ok(None);
        }
        state.released = true;
        let run = state.start.run;
        let customers = state.ids.as_ref().map_or(0, |i| i.groups.iter().map(Vec::len).sum::<usize>() as u64);
        let profile = state.start.segments.is_some();
        let compared: Vec<(String, Vec<u64>)> = state
            .pairs
            .iter()
            .filter_map(|(p, pair)| match &pair.stage {
                Stage::Compared(table) => Some((p.clone(), table.iter().flatten().copied().collect())),
                _ => None,
            })
            .collect();
        let noise = state.start.noise.clone().map(DiscreteGaussian::new);
        let min = self.ctx.policy.psi.min_exact_count;
        let release = match release(run, customers, compared, profile, noise.as_ref(), min, &mut OsEntropy::new()) {
            Ok(r) => r,
            Err(e) => {
                self.psi = None;
                let why = failed(self.ctx, run, &e)?;
                self.refuse(run, &why).await?;
                return Ok(None);
            }
        };
        let pairs = release.counts.len() + release.tables.len();
        tracing::info!(node = %self.ctx.name, %run, pairs, "psi: counts released");
        self.egress.send(&FromNode::PsiRelease(release)).await?;
        Ok(None)
    }

    /// A peer left the run: its pair is dropped (nothing more comes from it) and the
    /// others go on; this node's charge stays as recorded.
    pub(super) async fn on_psi_drop(&mut self, run: RoundId, peer: &str, reason: &str) -> Handled {
        let Some(state) = self.psi.as_mut().filter(|r| r.start.run == run) else { return Ok(None) };
        if state.pairs.remove(peer).is_some() {
            tracing::warn!(node = %self.ctx.name, %run, %peer, %reason, "psi: peer left the run; its pair is dropped");
            record(
                self.ctx,
                Event::PolicyDecision {
                    round: Some(run.to_hex()),
                    analysis: state.start.analysis_id.clone(),
                    admitted: true,
                    reason: format!("psi run {run}: pair with {peer} dropped: {reason}"),
                },
            )?;
        }
        self.psi_maybe_release().await
    }

    /// The coordinator ended the run: everything of it is dropped (keys wiped).
    pub(super) fn end_psi(&mut self, run: RoundId) {
        if self.psi.as_ref().is_some_and(|r| r.start.run == run) {
            self.psi = None;
        }
    }
}
