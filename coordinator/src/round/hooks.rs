//! Test hooks on the round: let a test play HQ deviating from the protocol (split
//! views, tampered shares, forced thresholds) or observe it. None are set in production.

use std::sync::Arc;

use fedcrm_crypto::RoundId;
use fedcrm_protocol::wire::{RevealedShare, ViewSignature};

/// Observer of complete masked vectors (node, vector).
pub type MaskedObserver = Arc<dyn Fn(&str, &[u64]) + Send + Sync>;
/// Editor of an unmask request (survivors, dropped).
pub type UnmaskTamper = Arc<dyn Fn(&mut Vec<String>, &mut Vec<String>) + Send + Sync>;
/// Editor of the view shown to one node in the consistency check (node, survivors, dropped).
pub type ViewTamper = Arc<dyn Fn(&str, &mut Vec<String>, &mut Vec<String>) + Send + Sync>;
/// Observer of every unmask answer as received, before validation (node, shares).
pub type SharesObserver = Arc<dyn Fn(&str, &[RevealedShare]) + Send + Sync>;
/// Editor of a sealed share as relayed (sender, receiver, ciphertext).
pub type ShareTamper = Arc<dyn Fn(&str, &str, &mut Vec<u8>) + Send + Sync>;
/// Editor of the final U2 sent before masking.
pub type FinalU2Tamper = Arc<dyn Fn(&mut Vec<String>) + Send + Sync>;

/// Hooks that let a test play HQ deviating from the protocol (or observe it). The
/// coordinator is the adversary the nodes defend against, so these give an attacker
/// nothing it does not have by running its own build; none are set in production.
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
    /// Edits sealed shares as they are relayed, after their signatures were checked
    /// (a relay altering a share).
    pub tamper_share: Option<ShareTamper>,
    /// Edits the final U2 (e.g. keeps a reported sender in it).
    pub tamper_final_u2: Option<FinalU2Tamper>,
    /// Ignores the masked vectors of these nodes, making them look dropped after
    /// their inputs arrived.
    pub ignore_masked_from: Vec<String>,
    /// Forces this threshold and roster of all connected nodes, skipping the
    /// coordinator's own planning (HQ choosing t).
    pub force_threshold: Option<usize>,
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
            .field("tamper_share", &self.tamper_share.is_some())
            .field("tamper_final_u2", &self.tamper_final_u2.is_some())
            .field("ignore_masked_from", &self.ignore_masked_from)
            .field("force_threshold", &self.force_threshold)
            .field("relabel", &self.relabel)
            .field("reuse_analysis_id", &self.reuse_analysis_id)
            .field("extra_view_signatures", &self.extra_view_signatures.is_some())
            .field("fail_audit", &self.fail_audit.is_some())
            .finish()
    }
}
