//! One secure-aggregation round, server side (Bonawitz et al. 2017, §4): advertise
//! keys → share keys → masked input → unmask, each phase with a deadline. A node
//! that disconnects, refuses, times out or breaks the protocol is dropped from the
//! round; the round goes on while at least t nodes remain.
//!
//! **Invariant:** the coordinator never holds an unmasked per-node vector: a masked
//! vector is buffered only until complete and validated, then added to the running
//! sum (`fedcrm_crypto::secagg::Aggregator`) and freed. The result leaves this module
//! only through [`crate::release`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use fedcrm_audit::{Event as AuditEvent, Member};
use fedcrm_crypto::secagg::{self, Aggregator, PeerKeys, Revealed, RoundParams};
use fedcrm_crypto::shamir::Share;
use fedcrm_crypto::{RoundId, SystemRandom};
use fedcrm_protocol::pki::{self, OrgKind};
use fedcrm_protocol::wire::{self, Analysis, FromNode, Invitee, RoundStart, Sealed, SignedKeys, ToNode};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::audit::{lock, record};
use crate::config::RoundSettings;
use crate::registry::{Event, EventBody, Participant};

/// Observer of complete masked vectors (node, vector).
pub type MaskedObserver = Arc<dyn Fn(&str, &[u64]) + Send + Sync>;
/// Editor of an unmask request (survivors, dropped).
pub type UnmaskTamper = Arc<dyn Fn(&mut Vec<String>, &mut Vec<String>) + Send + Sync>;

/// Test and benchmark hooks; none are set in production.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Called with every complete masked vector before it is added to the sum.
    pub on_masked: Option<MaskedObserver>,
    /// Lets a test play a coordinator that deviates from the protocol by editing
    /// the unmask request (survivors, dropped) before it is sent.
    pub tamper_unmask: Option<UnmaskTamper>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("on_masked", &self.on_masked.is_some())
            .field("tamper_unmask", &self.tamper_unmask.is_some())
            .finish()
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RoundError {
    #[error(
        "round {round}: {have} nodes remain after {phase}, fewer than the threshold t={need}; no result (left: {exits})"
    )]
    TooFew { round: RoundId, phase: &'static str, have: usize, need: usize, exits: String },
    #[error("round {round}: {why}")]
    Failed { round: RoundId, why: String },
    #[error("only {have} nodes connected; the release rules need at least {need} participants")]
    NotEnoughNodes { have: usize, need: usize },
    #[error(
        "round {round}: stopped before any data moved, because {nodes} must first be approved by its franchisee; run the analysis again once approved"
    )]
    AwaitingApproval { round: RoundId, nodes: String },
}

/// Why a node left a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Refused(String),
    /// The node's franchisee has not approved this analysis yet.
    AwaitingApproval(String),
    Disconnected,
    TimedOut(&'static str),
    Rejected(String),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Refused(r) => write!(f, "refused: {r}"),
            Exit::AwaitingApproval(r) => write!(f, "awaiting approval: {r}"),
            Exit::Disconnected => f.write_str("disconnected"),
            Exit::TimedOut(p) => write!(f, "timed out during {p}"),
            Exit::Rejected(r) => write!(f, "rejected: {r}"),
        }
    }
}

/// A finished round. The sum is readable only by [`crate::release`].
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
    pub(crate) sum: Vec<u64>,
}

pub(crate) struct Runner<'a> {
    pub coordinator: &'a crate::Coordinator,
    pub events: &'a mut mpsc::Receiver<Event>,
    pub settings: RoundSettings,
    pub hooks: &'a Hooks,
}

struct Assembly {
    buf: Vec<u64>,
    next: u32,
}

impl Runner<'_> {
    /// Run one round of `analysis` over `invited` with threshold `t`.
    pub async fn run(
        &mut self,
        analysis: &Analysis,
        invited: &[Participant],
        t: usize,
    ) -> Result<RoundOutput, RoundError> {
        let rng = SystemRandom::new();
        let round =
            RoundId::random(&rng).map_err(|e| RoundError::Failed { round: RoundId([0; 16]), why: e.to_string() })?;
        let d = analysis.kind.vector_len();
        let chunk = self.settings.chunk_elements.max(1) as usize;
        let timeout = Duration::from_secs(self.settings.phase_timeout_seconds.max(1));
        let params = RoundParams { round, t, d };
        let by_name: BTreeMap<&str, &Participant> = invited.iter().map(|p| (p.name.as_str(), p)).collect();
        let sessions: BTreeMap<String, u64> = invited.iter().map(|p| (p.name.clone(), p.session)).collect();
        let mut exits: BTreeMap<String, Exit> = BTreeMap::new();
        let invitees: Vec<Invitee> = invited
            .iter()
            .map(|p| Invitee { name: p.name.clone(), organisation: p.organisation.clone(), kind: p.kind })
            .collect();
        let roster_signature = self
            .coordinator
            .sign(&wire::roster_payload(&round, t, d, analysis, &invitees))
            .map_err(|e| RoundError::Failed { round, why: format!("cannot sign the roster: {e}") })?;
        record(
            &self.coordinator.audit,
            AuditEvent::RoundStarted {
                round: round.to_hex(),
                analysis: analysis.analysis_id.clone(),
                kind: analysis.kind.name().to_string(),
                analysis_kind: analysis.analysis_kind.clone(),
                purpose: analysis.purpose.clone(),
                threshold: t as u64,
                length: d as u64,
                invited: invitees.iter().map(member).collect(),
            },
        )
        .map_err(|e| RoundError::Failed { round, why: format!("audit log: {e}") })?;
        let start = RoundStart {
            round,
            threshold: t,
            length: d,
            analysis: analysis.clone(),
            invited: invitees,
            chunk_elements: chunk,
            roster_signature,
        };
        tracing::info!(%round, analysis = analysis.kind.name(), n = invited.len(), t, d, "round start");
        let mut live: BTreeSet<String> = BTreeSet::new();
        for p in invited {
            if self.coordinator.registry.send(&p.name, &ToNode::RoundStart(Box::new(start.clone()))).await {
                live.insert(p.name.clone());
            } else {
                exits.insert(p.name.clone(), Exit::Disconnected);
            }
        }

        // Phase 1: advertise keys.
        let mut keys: BTreeMap<String, SignedKeys> = BTreeMap::new();
        let deadline = Instant::now() + timeout;
        while live.iter().any(|n| !keys.contains_key(n)) {
            let Some((node, msg)) =
                self.next(round, &sessions, deadline, &mut live, &mut exits, "advertise keys").await
            else {
                break;
            };
            match msg {
                FromNode::Keys { enc, mask, signature, .. } if !keys.contains_key(&node) => {
                    let cert = &by_name[node.as_str()].certificate;
                    let payload = secagg::key_signing_payload(&round, &node, &enc, &mask);
                    match pki::verify_signature(cert, &payload, &signature) {
                        Ok(()) => {
                            keys.insert(
                                node.clone(),
                                SignedKeys { node, enc, mask, signature, certificate: cert.clone() },
                            );
                        }
                        Err(e) => {
                            self.reject(round, &node, format!("key signature invalid: {e}"), &mut live, &mut exits)
                                .await
                        }
                    }
                }
                other => self.unexpected(round, &node, &other, &mut live, &mut exits).await,
            }
        }
        self.expire(&live, &keys.keys().cloned().collect(), "advertise keys", &mut exits);
        // A node waiting for its franchisee's approval stops the round here, before any
        // share or masked input moves: a result without it now and with it later could
        // be subtracted.
        let waiting: Vec<String> = exits
            .iter()
            .filter(|(_, e)| matches!(e, Exit::AwaitingApproval(_)))
            .map(|(n, e)| format!("{n} ({e})"))
            .collect();
        if !waiting.is_empty() {
            let why = format!("waiting for manual approval: {}", waiting.join("; "));
            self.log_exits(round, &exits);
            self.end(invited, round, false, &why).await;
            return Err(RoundError::AwaitingApproval { round, nodes: waiting.join("; ") });
        }
        let u1: Vec<SignedKeys> = keys.into_values().filter(|k| live.contains(&k.node)).collect();
        live = u1.iter().map(|k| k.node.clone()).collect();
        self.ensure(round, "advertise keys", live.len(), t, invited, &exits).await?;
        let roster = ToNode::Roster { round, keys: u1.clone() };
        for n in &live.clone() {
            if !self.coordinator.registry.send(n, &roster).await {
                live.remove(n);
                exits.insert(n.clone(), Exit::Disconnected);
            }
        }

        // Phase 2: share keys.
        let mut sealed: BTreeMap<String, Vec<Sealed>> = BTreeMap::new();
        let deadline = Instant::now() + timeout;
        let u1_names: BTreeSet<String> = u1.iter().map(|k| k.node.clone()).collect();
        while live.iter().any(|n| !sealed.contains_key(n)) {
            let Some((node, msg)) = self.next(round, &sessions, deadline, &mut live, &mut exits, "share keys").await
            else {
                break;
            };
            match msg {
                FromNode::Shares { shares, .. } if !sealed.contains_key(&node) => {
                    let to: BTreeSet<String> = shares.iter().map(|s| s.peer.clone()).collect();
                    let expected: BTreeSet<String> = u1_names.iter().filter(|n| **n != node).cloned().collect();
                    if to != expected || shares.len() != expected.len() {
                        self.reject(
                            round,
                            &node,
                            "sealed shares must address every other node of the roster exactly once".into(),
                            &mut live,
                            &mut exits,
                        )
                        .await;
                    } else {
                        sealed.insert(node, shares);
                    }
                }
                other => self.unexpected(round, &node, &other, &mut live, &mut exits).await,
            }
        }
        self.expire(&live, &sealed.keys().cloned().collect(), "share keys", &mut exits);
        live.retain(|n| sealed.contains_key(n));
        self.ensure(round, "share keys", live.len(), t, invited, &exits).await?;
        let u2: Vec<String> = live.iter().cloned().collect();
        for v in &u2 {
            let incoming: Vec<Sealed> = u2
                .iter()
                .filter(|u| *u != v)
                .filter_map(|u| {
                    sealed[u]
                        .iter()
                        .find(|s| &s.peer == v)
                        .map(|s| Sealed { peer: u.clone(), ciphertext: s.ciphertext.clone() })
                })
                .collect();
            if !self
                .coordinator
                .registry
                .send(v, &ToNode::Shares { round, delivered: u2.clone(), shares: incoming })
                .await
            {
                live.remove(v);
                exits.insert(v.clone(), Exit::Disconnected);
            }
        }
        drop(sealed);

        // Phase 3: masked input.
        let peer_keys: Vec<PeerKeys> =
            u1.iter().map(|k| PeerKeys { name: k.node.clone(), enc: k.enc, mask: k.mask }).collect();
        let mut agg = Aggregator::new(params.clone(), peer_keys, &u2)
            .map_err(|e| RoundError::Failed { round, why: e.to_string() })?;
        let chunks = d.div_ceil(chunk) as u32;
        let mut assembling: BTreeMap<String, Assembly> = BTreeMap::new();
        let mut complete: BTreeSet<String> = BTreeSet::new();
        let deadline = Instant::now() + timeout;
        while live.iter().any(|n| !complete.contains(n)) {
            let Some((node, msg)) = self.next(round, &sessions, deadline, &mut live, &mut exits, "masked input").await
            else {
                break;
            };
            match msg {
                FromNode::Masked(_) if complete.contains(&node) => {
                    tracing::warn!(%round, %node, "extra chunk after a complete masked vector; ignored");
                }
                FromNode::Masked(c) => {
                    let a = assembling
                        .entry(node.clone())
                        .or_insert_with(|| Assembly { buf: Vec::with_capacity(d), next: 0 });
                    let want_len = if c.index + 1 == chunks { d - (chunks as usize - 1) * chunk } else { chunk };
                    let problem = if c.count != chunks {
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
                        self.reject(round, &node, p, &mut live, &mut exits).await;
                        continue;
                    }
                    a.buf.extend_from_slice(&c.words);
                    a.next += 1;
                    if a.next == chunks {
                        // Unwrap safety: the entry was created above in this iteration or earlier.
                        let a = assembling.remove(&node).unwrap();
                        if let Some(h) = &self.hooks.on_masked {
                            h(&node, &a.buf);
                        }
                        match agg.add_masked(&node, &a.buf) {
                            Ok(()) => {
                                complete.insert(node);
                            }
                            Err(e) => self.reject(round, &node, e.to_string(), &mut live, &mut exits).await,
                        }
                    }
                }
                other => self.unexpected(round, &node, &other, &mut live, &mut exits).await,
            }
        }
        drop(assembling);
        self.expire(&live, &complete, "masked input", &mut exits);
        let unmasking = agg.close();
        let survivors = unmasking.survivors();
        let dropped = unmasking.dropped();
        live = survivors.iter().cloned().collect();
        self.ensure(round, "masked input", live.len(), t, invited, &exits).await?;
        tracing::info!(%round, survivors = survivors.len(), dropped = ?dropped, "inputs closed");

        // Phase 4: unmask.
        let (mut req_s, mut req_d) = (survivors.clone(), dropped.clone());
        if let Some(t) = &self.hooks.tamper_unmask {
            t(&mut req_s, &mut req_d);
        }
        let request = ToNode::Unmask { round, survivors: req_s, dropped: req_d };
        for n in &survivors {
            if !self.coordinator.registry.send(n, &request).await {
                live.remove(n);
            }
        }
        let mut responses: BTreeMap<String, Vec<Revealed>> = BTreeMap::new();
        let deadline = Instant::now() + timeout;
        let u1_sorted: Vec<String> = u1_names.iter().cloned().collect();
        while live.iter().any(|n| !responses.contains_key(n)) {
            let Some((node, msg)) = self.next(round, &sessions, deadline, &mut live, &mut exits, "unmask").await else {
                break;
            };
            match msg {
                FromNode::Unmask { shares, .. }
                    if !responses.contains_key(&node) && !unmask_ok(&shares, &u2, &survivors) =>
                {
                    self.reject(
                        round,
                        &node,
                        "sent an unmask answer that does not hold exactly one share of the right kind per node of U2"
                            .into(),
                        &mut live,
                        &mut exits,
                    )
                    .await;
                }
                FromNode::Unmask { shares, .. } if !responses.contains_key(&node) && live.contains(&node) => {
                    // Unwrap safety: live ⊆ U1.
                    let x = u1_sorted.binary_search(&node).unwrap() as u32 + 1;
                    let parsed: Result<Vec<Revealed>, String> = shares
                        .into_iter()
                        .map(|s| {
                            let share = Share::from_parts(x, &s.y).map_err(|e| e.to_string())?;
                            Ok(if s.self_mask {
                                Revealed::SelfMask { of: s.of, share }
                            } else {
                                Revealed::MaskKey { of: s.of, share }
                            })
                        })
                        .collect();
                    match parsed {
                        Ok(p) => {
                            responses.insert(node, p);
                        }
                        Err(e) => self.reject(round, &node, e, &mut live, &mut exits).await,
                    }
                }
                FromNode::Masked(_) => {
                    // Inputs are closed: a late or repeated chunk changes nothing.
                    tracing::warn!(%round, %node, "masked chunk after inputs closed; ignored");
                }
                other => self.unexpected(round, &node, &other, &mut live, &mut exits).await,
            }
        }
        let responses: Vec<(String, Vec<Revealed>)> = responses.into_iter().collect();
        if responses.len() < t {
            let why = format!(
                "only {} of {} survivors answered the unmask request, fewer than t={t}",
                responses.len(),
                survivors.len()
            );
            self.log_exits(round, &exits);
            self.end(invited, round, false, &why).await;
            return Err(RoundError::TooFew {
                round,
                phase: "unmask",
                have: responses.len(),
                need: t,
                exits: describe(&exits),
            });
        }
        let sum = match unmasking.finish(&responses) {
            Ok(s) => s,
            Err(e) => {
                self.log_exits(round, &exits);
                self.end(invited, round, false, &e.to_string()).await;
                return Err(RoundError::Failed { round, why: e.to_string() });
            }
        };
        self.log_exits(round, &exits);
        self.end(invited, round, true, "aggregate computed").await;
        let organisations = survivors.iter().map(|n| by_name[n.as_str()].organisation.clone()).collect();
        let kinds = survivors.iter().map(|n| by_name[n.as_str()].kind).collect();
        tracing::info!(%round, contributors = survivors.len(), "round complete");
        Ok(RoundOutput { round, contributors: survivors, organisations, kinds, exits, sum })
    }

    /// Next message of this round from a live node; handles disconnects and
    /// malformed messages (dropping the node). `None` at the deadline.
    async fn next(
        &mut self,
        round: RoundId,
        sessions: &BTreeMap<String, u64>,
        deadline: Instant,
        live: &mut BTreeSet<String>,
        exits: &mut BTreeMap<String, Exit>,
        phase: &'static str,
    ) -> Option<(String, FromNode)> {
        loop {
            if live.is_empty() {
                return None;
            }
            let ev = tokio::select! {
                e = self.events.recv() => e?,
                _ = tokio::time::sleep_until(deadline) => return None,
            };
            // Only the invited session of a live node counts: events of an earlier
            // session (a node that has since reconnected) are stale.
            if !live.contains(&ev.node) || sessions.get(&ev.node) != Some(&ev.session) {
                continue;
            }
            match ev.body {
                EventBody::Closed => {
                    tracing::warn!(%round, node = %ev.node, phase, "node disconnected mid-round");
                    live.remove(&ev.node);
                    exits.insert(ev.node, Exit::Disconnected);
                }
                EventBody::Malformed(why) => {
                    self.reject(round, &ev.node, format!("malformed message: {why}"), live, exits).await;
                }
                EventBody::Message(FromNode::Refusal { round: r, reason, awaiting_approval })
                    if r.is_none() || r == Some(round) =>
                {
                    tracing::warn!(%round, node = %ev.node, %reason, "node refused");
                    live.remove(&ev.node);
                    let e = if awaiting_approval { Exit::AwaitingApproval(reason) } else { Exit::Refused(reason) };
                    exits.insert(ev.node, e);
                }
                EventBody::Message(m) if m.round() == Some(round) => return Some((ev.node, m)),
                EventBody::Message(m) => {
                    tracing::debug!(%round, node = %ev.node, kind = m.kind(), "message for another round ignored");
                }
            }
        }
    }

    async fn reject(
        &self,
        round: RoundId,
        node: &str,
        why: String,
        live: &mut BTreeSet<String>,
        exits: &mut BTreeMap<String, Exit>,
    ) {
        let msg =
            format!("round {round}: node {node} {why}; it is dropped from this round, which goes on for the others");
        tracing::warn!("{msg}");
        let _ = self.coordinator.registry.send(node, &ToNode::RoundEnd { round, released: false, message: msg }).await;
        live.remove(node);
        exits.insert(node.to_string(), Exit::Rejected(why));
    }

    async fn unexpected(
        &self,
        round: RoundId,
        node: &str,
        m: &FromNode,
        live: &mut BTreeSet<String>,
        exits: &mut BTreeMap<String, Exit>,
    ) {
        self.reject(round, node, format!("sent an unexpected {} message", m.kind()), live, exits).await;
    }

    fn expire(
        &self,
        live: &BTreeSet<String>,
        done: &BTreeSet<String>,
        phase: &'static str,
        exits: &mut BTreeMap<String, Exit>,
    ) {
        for n in live.difference(done) {
            exits.entry(n.clone()).or_insert(Exit::TimedOut(phase));
        }
    }

    async fn ensure(
        &self,
        round: RoundId,
        phase: &'static str,
        have: usize,
        need: usize,
        invited: &[Participant],
        exits: &BTreeMap<String, Exit>,
    ) -> Result<(), RoundError> {
        if have >= need {
            return Ok(());
        }
        let why = format!("{have} nodes remain after {phase}, fewer than t={need}; exits: {}", describe(exits));
        self.log_exits(round, exits);
        self.end(invited, round, false, &why).await;
        Err(RoundError::TooFew { round, phase, have, need, exits: describe(exits) })
    }

    /// Record every node that left the round, with its reason, and seal the log.
    fn log_exits(&self, round: RoundId, exits: &BTreeMap<String, Exit>) {
        for (node, e) in exits {
            let _ = record(
                &self.coordinator.audit,
                AuditEvent::NodeExit { round: round.to_hex(), node: node.clone(), reason: e.to_string() },
            );
        }
        let _ = lock(&self.coordinator.audit).seal();
    }

    async fn end(&self, invited: &[Participant], round: RoundId, released: bool, message: &str) {
        for p in invited {
            let _ = self
                .coordinator
                .registry
                .send(&p.name, &ToNode::RoundEnd { round, released, message: message.to_string() })
                .await;
        }
    }
}

/// How a member is recorded in the audit log.
pub(crate) fn member(i: &Invitee) -> Member {
    Member { name: i.name.clone(), organisation: i.organisation.clone(), kind: wire::kind_str(i.kind).to_string() }
}

/// An unmask answer must name every node of U2 exactly once, with the self-mask
/// share for survivors and the mask-key share for dropped nodes.
fn unmask_ok(shares: &[fedcrm_protocol::wire::RevealedShare], u2: &[String], survivors: &[String]) -> bool {
    let named: BTreeSet<&str> = shares.iter().map(|s| s.of.as_str()).collect();
    named.len() == shares.len()
        && shares.len() == u2.len()
        && shares.iter().all(|s| u2.contains(&s.of) && s.self_mask == survivors.contains(&s.of))
}

/// `a: disconnected, b: refused: …`.
pub fn describe(exits: &BTreeMap<String, Exit>) -> String {
    if exits.is_empty() {
        return "none".into();
    }
    exits.iter().map(|(n, e)| format!("{n}: {e}")).collect::<Vec<_>>().join("; ")
}
