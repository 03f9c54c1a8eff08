//! Test hooks on the round (feature `test-util`): let a test play HQ deviating from
//! the protocol (split views, tampered shares or keys, forced thresholds) or observe it.
//! No shipped build has them (`.ci/run` checks the release binary).

use std::sync::Arc;

use fedcrm_crypto::RoundId;
use fedcrm_crypto::word::Words;
use fedcrm_protocol::wire::{Analysis, Noise, RevealedShare, Sealed, SignedKeys, ViewSignature};

/// Observer of complete masked vectors (node, vector).
pub type MaskedObserver = Arc<dyn Fn(&str, &Words) + Send + Sync>;
/// Editor of an unmask request (survivors, dropped).
pub type UnmaskTamper = Arc<dyn Fn(&mut Vec<String>, &mut Vec<String>) + Send + Sync>;
/// Editor of the view shown to one node in the consistency check (node, survivors, dropped).
pub type ViewTamper = Arc<dyn Fn(&str, &mut Vec<String>, &mut Vec<String>) + Send + Sync>;
/// Observer of every unmask answer as received, before validation (round, node, shares).
pub type SharesObserver = Arc<dyn Fn(RoundId, &str, &[RevealedShare]) + Send + Sync>;
/// Editor of a sealed share as relayed (sender, receiver, ciphertext).
pub type ShareTamper = Arc<dyn Fn(&str, &str, &mut Vec<u8>) + Send + Sync>;
/// Editor of the final U2 sent before masking.
pub type FinalU2Tamper = Arc<dyn Fn(&mut Vec<String>) + Send + Sync>;
/// Observer of a node's sealed shares as received, before they are checked (sender, shares).
pub type SealedObserver = Arc<dyn Fn(&str, &[Sealed]) + Send + Sync>;
/// Editor of U1's signed keys as broadcast in the key roster (round, keys).
pub type RosterTamper = Arc<dyn Fn(RoundId, &mut Vec<SignedKeys>) + Send + Sync>;
/// Editor of the nonces sent to one node in a SecAgg+ key roster (receiver, nonces).
pub type NoncesTamper = Arc<dyn Fn(&str, &mut Vec<(String, [u8; 32])>) + Send + Sync>;
/// Editor of the coordinator's signature on a round's roster, as sent in `RoundStart`.
pub type RosterSignatureTamper = Arc<dyn Fn(&mut Vec<u8>) + Send + Sync>;
/// Issue 12: editor of the PSI chunks relayed for one chunk received (receiver, chunks
/// to relay, each with `peer` = its sender): alter, drop, repeat or swap them.
pub type PsiRelayTamper = Arc<dyn Fn(&str, &mut Vec<fedcrm_protocol::wire::PsiChunk>) + Send + Sync>;

/// Hooks that let a test play HQ deviating from the protocol (or observe it). The
/// coordinator is the adversary the nodes defend against, so these give an attacker
/// nothing it does not have by running its own build; still, they exist only with the
/// `test-util` feature (style rule 32), so no shipped build has them.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Called with every complete masked vector before it is added to the sum.
    pub on_masked: Option<MaskedObserver>,
    /// Edits the unmask request (survivors, dropped) before it is sent.
    pub tamper_unmask: Option<UnmaskTamper>,
    /// Edits the view each node is shown in the consistency check (split views).
    pub tamper_view: Option<ViewTamper>,
    /// Sees every unmask answer as received.
    pub on_unmask_shares: Option<SharesObserver>,
    /// Sees every node's sealed shares as received.
    pub on_sealed_shares: Option<SealedObserver>,
    /// Edits sealed shares as they are relayed, after their signatures were checked
    /// (a relay altering a share).
    pub tamper_share: Option<ShareTamper>,
    /// Edits the final U2 (e.g. keeps a reported sender in it).
    pub tamper_final_u2: Option<FinalU2Tamper>,
    /// Edits U1's signed keys before they are broadcast (a node's keys substituted,
    /// a signature stripped or replaced).
    pub tamper_roster: Option<RosterTamper>,
    /// Edits the coordinator's signature on the round's roster before it is sent.
    pub tamper_roster_signature: Option<RosterSignatureTamper>,
    /// Ignores the masked vectors of these nodes, making them look dropped after
    /// their inputs arrived.
    pub ignore_masked_from: Vec<String>,
    /// Forces this threshold and roster of all connected nodes, skipping the
    /// coordinator's own planning (HQ choosing t).
    pub force_threshold: Option<usize>,
    /// Forces SecAgg+ with this (degree k, neighbourhood threshold t_k) over all
    /// connected nodes, skipping the coordinator's own planning: graphs too small for
    /// `graph::parameters` to choose SecAgg+, so tests can run it with a dozen nodes.
    pub force_graph: Option<(usize, usize)>,
    /// Signs this view-signature quorum with a SecAgg+ round's commitments instead of
    /// the majority the members' rules need.
    pub force_quorum: Option<usize>,
    /// Stops the first this-many SecAgg+ graph draws of every round once all nonces
    /// are in, as if a node had not revealed, and restarts the round as often (a
    /// coordinator grinding graphs past its own restart limit).
    pub stop_graphs: usize,
    /// Edits the nonces each node is sent in a SecAgg+ key roster (a reveal left out
    /// or altered for some nodes: a coordinator grinding graphs, or equivocating).
    pub tamper_nonces: Option<NoncesTamper>,
    /// Later rounds of an analysis name a setup round that never was, instead of the
    /// analysis's first (keys once per analysis: nodes hold no such keys).
    pub stale_setup: bool,
    /// Later rounds of an analysis invite back its nodes declared dropped (that are
    /// still connected), skipping the coordinator's own check: HQ bringing a node back
    /// whose neighbours revealed their pair seeds with it.
    pub reinvite_dropped: bool,
    /// Later rounds of an analysis describe these nodes with this (organisation, kind)
    /// in their signed invitation instead of what their certificates say (review i9:
    /// HQ relabelling its own nodes as franchisees once the setup's key roster, the
    /// only place the labels were checked against certificates, is behind it).
    pub relabel_later: Vec<fedcrm_analysis::rules::Invitee>,
    /// Later rounds of an analysis leave out these nodes (review i9: HQ dropping one
    /// franchisee between two sums).
    pub exclude_later: Vec<String>,
    /// Labels every round with this analysis kind, whatever it computes.
    pub relabel: Option<String>,
    /// Sends every round under this analysis id (reusing an old one).
    pub reuse_analysis_id: Option<String>,
    /// Adds signatures on a view (round, U2, U3 shown) to the unmask request: HQ's
    /// own nodes signing whatever view HQ likes.
    pub extra_view_signatures: Option<ViewSigner>,
    /// While set, the coordinator's audit log "fails" when it records a node's
    /// receipt (a full disk), to show the fault is not blamed on the node.
    pub fail_audit: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Issue 10: signs this noise (σ² and k) into every round start instead of what
    /// `[rounds] noise_variance` and the planner give (HQ claiming more honest nodes
    /// than the invitees' rules allow, so that less noise seems to suffice).
    pub force_noise: Option<Noise>,
    /// Issue 10 (attack review): show this node a round start with this noise instead
    /// (signed), and every other invitee the planned one — so that the node charges
    /// itself for noise the others do not add. The coordinator then also relays shares
    /// without checking their signatures (it would otherwise reject the node itself).
    pub noise_for_node: Option<(String, Noise)>,
    /// With `noise_for_node`: only in the later rounds of an analysis (keys reused).
    pub noise_for_node_in_later_rounds_only: bool,
    /// Issue 10: start rounds without checking the nodes' announced budgets (a
    /// coordinator that does not care: the nodes must refuse themselves).
    pub ignore_budgets: bool,
    /// Issue 10: the clock budget months are read from (a fixed date in tests).
    pub clock: Option<Arc<dyn fedcrm_audit::log::Clock>>,
    /// Issue 12: edits the PSI list chunks as they are relayed (a relay substituting,
    /// dropping or replaying them).
    pub tamper_psi_relay: Option<PsiRelayTamper>,
    /// Issue 12: every PSI run gets this run id (HQ replaying a run's start).
    pub force_psi_run: Option<RoundId>,
    /// Issue 12: this node is shown the run's start with this noise instead (signed):
    /// HQ giving the two sides of a pair different terms.
    pub psi_noise_for_node: Option<(String, Option<fedcrm_dp::sampler::Variance>)>,
}

/// Signs a view (round, U2, U3) as some nodes: returns their signatures.
pub type ViewSigner = Arc<dyn Fn(RoundId, &[String], &[String]) -> Vec<ViewSignature> + Send + Sync>;

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("on_masked", &self.on_masked.is_some())
            .field("tamper_unmask", &self.tamper_unmask.is_some())
            .field("tamper_view", &self.tamper_view.is_some())
            .field("on_unmask_shares", &self.on_unmask_shares.is_some())
            .field("on_sealed_shares", &self.on_sealed_shares.is_some())
            .field("tamper_share", &self.tamper_share.is_some())
            .field("tamper_final_u2", &self.tamper_final_u2.is_some())
            .field("tamper_roster", &self.tamper_roster.is_some())
            .field("tamper_roster_signature", &self.tamper_roster_signature.is_some())
            .field("ignore_masked_from", &self.ignore_masked_from)
            .field("force_threshold", &self.force_threshold)
            .field("force_graph", &self.force_graph)
            .field("force_quorum", &self.force_quorum)
            .field("stop_graphs", &self.stop_graphs)
            .field("tamper_psi_relay", &self.tamper_psi_relay.is_some())
            .field("force_psi_run", &self.force_psi_run)
            .field("psi_noise_for_node", &self.psi_noise_for_node)
            .field("tamper_nonces", &self.tamper_nonces.is_some())
            .field("stale_setup", &self.stale_setup)
            .field("reinvite_dropped", &self.reinvite_dropped)
            .field("relabel_later", &self.relabel_later)
            .field("exclude_later", &self.exclude_later)
            .field("relabel", &self.relabel)
            .field("reuse_analysis_id", &self.reuse_analysis_id)
            .field("extra_view_signatures", &self.extra_view_signatures.is_some())
            .field("fail_audit", &self.fail_audit.is_some())
            .field("force_noise", &self.force_noise)
            .field("noise_for_node", &self.noise_for_node)
            .field("noise_for_node_in_later_rounds_only", &self.noise_for_node_in_later_rounds_only)
            .field("ignore_budgets", &self.ignore_budgets)
            .field("clock", &self.clock)
            .finish()
    }
}

impl Hooks {
    /// The analysis as sent: relabelled or under a reused id, if asked.
    pub(super) fn analysis(&self, analysis: &Analysis) -> Analysis {
        let mut analysis = analysis.clone();
        if let Some(label) = &self.relabel {
            analysis.analysis_kind = label.clone();
        }
        if let Some(id) = &self.reuse_analysis_id {
            analysis.analysis_id = id.clone();
        }
        analysis
    }

    /// The coordinator's signature on the roster as sent.
    pub(super) fn roster_signature(&self, mut signature: Vec<u8>) -> Vec<u8> {
        if let Some(t) = &self.tamper_roster_signature {
            t(&mut signature);
        }
        signature
    }

    /// U1's signed keys as broadcast in the key roster.
    pub(super) fn roster(&self, round: RoundId, mut keys: Vec<SignedKeys>) -> Vec<SignedKeys> {
        if let Some(t) = &self.tamper_roster {
            t(round, &mut keys);
        }
        keys
    }

    /// The nonces sent to `node` in a SecAgg+ key roster.
    pub(super) fn nonces(&self, node: &str, mut nonces: Vec<(String, [u8; 32])>) -> Vec<(String, [u8; 32])> {
        if let Some(t) = &self.tamper_nonces {
            t(node, &mut nonces);
        }
        nonces
    }

    /// A sealed share from `sender` to `receiver` as relayed.
    pub(super) fn share(&self, sender: &str, receiver: &str, mut ciphertext: Vec<u8>) -> Vec<u8> {
        if let Some(t) = &self.tamper_share {
            t(sender, receiver, &mut ciphertext);
        }
        ciphertext
    }

    /// The final U2 as sent.
    pub(super) fn final_u2(&self, mut u2: Vec<String>) -> Vec<String> {
        if let Some(t) = &self.tamper_final_u2 {
            t(&mut u2);
            u2.sort();
            u2.dedup();
        }
        u2
    }

    /// The view (survivors, dropped) shown to `node` in the consistency check.
    pub(super) fn view(&self, node: &str, mut s: Vec<String>, mut d: Vec<String>) -> (Vec<String>, Vec<String>) {
        if let Some(t) = &self.tamper_view {
            t(node, &mut s, &mut d);
        }
        (s, d)
    }

    /// The signatures sent with an unmask request, with HQ's extra ones.
    pub(super) fn signatures(
        &self,
        round: RoundId,
        u2: &[String],
        view: &[String],
        mut signatures: Vec<ViewSignature>,
    ) -> Vec<ViewSignature> {
        if let Some(f) = &self.extra_view_signatures {
            for extra in f(round, u2, view) {
                if !signatures.iter().any(|s| s.node == extra.node) {
                    signatures.push(extra);
                }
            }
            signatures.sort_by(|a, b| a.node.cmp(&b.node));
        }
        signatures
    }

    /// The unmask request (survivors, dropped) as sent.
    pub(super) fn unmask(&self, mut s: Vec<String>, mut d: Vec<String>) -> (Vec<String>, Vec<String>) {
        if let Some(t) = &self.tamper_unmask {
            t(&mut s, &mut d);
        }
        (s, d)
    }
}
