//! Issue 12: one node's side of a PSI pair — the ECDH-PSI cardinality protocol over
//! ristretto255 ([`fedcrm_crypto::psi`]) with its lists sealed node to node
//! ([`fedcrm_crypto::psi::channel`]) and relayed by the coordinator.
//!
//! Never does I/O: the session carries the sealed chunks; this module turns a node's
//! normalised identifiers and the peer's chunks into the chunks it sends and, on the
//! comparing side, the exact count it noises before release.
//!
//! The flow for a pair (C compares, R responds; [`fedcrm_protocol::psi::comparer`]):
//!
//! 1. each side draws a fresh blinding key for the run and sends its own list
//!    {k·H(x)}, padded with random points to its bucket and shuffled ([`PairRun::own_list`]);
//! 2. R blinds C's list again and returns it shuffled: {k_R·k_C·H(x)} ([`PairRun::answer`]);
//! 3. C blinds R's list again, {k_C·k_R·H(y)}, and counts the common points of the two
//!    doubly-blinded lists ([`PairRun::compare`]); only the noised count leaves C.
//!
//! R sees only C's singly-blinded, padded list; C sees R's singly-blinded list and the
//! doubly-blinded answer, shuffled, so it learns the count and the padded sizes, not
//! who is shared. Before blinding anything from the peer, each side refuses a list
//! shorter than its policy's minimum (a probe of a handful of numbers) or longer than
//! its maximum, and an answer that is not its own list's length or holds a point twice
//! (a responder that dropped, added or duplicated points to move the count).

use std::collections::HashSet;

use fedcrm_crypto::keys::{RoundPublic, RoundSecret};
use fedcrm_crypto::psi::channel::{ChannelError, Direction, ListKind, SealedChunk};
use fedcrm_crypto::psi::{self, BlindingKey, Domain, PsiError};
use fedcrm_crypto::{RoundId, SecureRandom};
use fedcrm_dp::sampler::DiscreteGaussian;
use fedcrm_dp::{DpError, Entropy};

use crate::identifiers::MatchOn;

/// `[psi]` in node.toml: the identifier this node matches its customers on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PsiConfig {
    /// `phone` (default; E.164, +86 by default), `email` (the optional `email`
    /// column) or `customer_key` (a membership number shared across channels).
    pub match_on: MatchOn,
}

/// `[policy.psi]`: the lists this node accepts from a peer before it blinds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PsiLimits {
    /// The shortest peer list (padded length, all a node can see) this node blinds:
    /// a list of a few numbers is a probe of who is a customer here. Default 1,000.
    pub min_list_points: usize,
    /// The longest. Default 4,194,304 (2²², 128 MiB of points).
    pub max_list_points: usize,
}

impl Default for PsiLimits {
    fn default() -> Self {
        Self { min_list_points: 1000, max_list_points: 1 << 22 }
    }
}

impl PsiLimits {
    /// The limits a pair run checks.
    pub fn list_limits(&self) -> ListLimits {
        ListLimits { min_points: self.min_list_points, max_points: self.max_list_points }
    }
}

/// What a node accepts from a peer in one PSI run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListLimits {
    /// The shortest peer list this node blinds (padded length, all it can see).
    pub min_points: usize,
    /// The longest.
    pub max_points: usize,
}

/// Why a PSI step refused or failed, naming who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum PsiRunError {
    #[error("{0}")]
    Channel(#[from] ChannelError),
    #[error("{peer}'s list has {points} points, fewer than this node's policy minimum of {min}: refused as a probe")]
    TooShort { peer: String, points: usize, min: usize },
    #[error("{peer}'s list has {points} points, more than the {max} this node accepts")]
    TooLong { peer: String, points: usize, max: usize },
    #[error("{peer}'s list: {source}")]
    Points { peer: String, source: PsiError },
    #[error("{peer} answered {got} points to this node's list of {sent}: it dropped or added points; stop the run")]
    AnswerLength { peer: String, got: usize, sent: usize },
    #[error("{peer}'s answer holds a point twice: it duplicated points to move the count; stop the run")]
    AnswerDuplicate { peer: String },
    #[error("this node's list: {0}")]
    Own(PsiError),
    #[error("noising the count: {0}")]
    Noise(DpError),
}

/// This node's state in one pair of one PSI run.
#[derive(Debug)]
pub struct PairRun {
    peer: String,
    key: BlindingKey,
    to_peer: Direction,
    from_peer: Direction,
    limits: ListLimits,
    /// The padded length of the list this node sent (the answer must match it).
    sent: Option<usize>,
}

impl PairRun {
    /// This node (`me`) with `peer` in `run`: a fresh blinding key, and the channel from
    /// this node's run secret and the peer's verified run key
    /// ([`fedcrm_protocol::psi::SignedRunKey::verify`]).
    pub fn new(
        run: RoundId,
        me: &str,
        peer: &str,
        secret: &RoundSecret,
        peer_key: &RoundPublic,
        limits: ListLimits,
        rng: &dyn SecureRandom,
    ) -> Result<Self, PsiRunError> {
        let domain = Domain { version: psi::VERSION, run_id: run.0 };
        Ok(Self {
            peer: peer.into(),
            key: BlindingKey::generate(domain, rng).map_err(PsiRunError::Own)?,
            to_peer: Direction::new(secret, peer_key, run, me, peer)?,
            from_peer: Direction::new(secret, peer_key, run, peer, me)?,
            limits,
            sent: None,
        })
    }

    fn max_chunks(&self) -> u32 {
        Direction::chunks_for(self.limits.max_points)
    }

    /// Step 1, both sides: this node's identifiers blinded with its key, padded to
    /// their bucket, shuffled and sealed for the peer.
    pub fn own_list<T: AsRef<[u8]> + Sync>(
        &mut self,
        ids: &[T],
        rng: &dyn SecureRandom,
    ) -> Result<Vec<SealedChunk>, PsiRunError> {
        let list = psi::pad_and_shuffle(psi::blind(&self.key, ids), psi::bucket, rng).map_err(PsiRunError::Own)?;
        self.sent = Some(list.len());
        Ok(self.to_peer.seal_list(ListKind::Blinded { group: 0 }, &list))
    }

    /// Opens the peer's blinded list and checks its length against this node's limits.
    fn peer_list(&self, chunks: &[SealedChunk]) -> Result<Vec<[u8; 32]>, PsiRunError> {
        let list = self.from_peer.open_list(ListKind::Blinded { group: 0 }, chunks, self.max_chunks())?;
        let (points, peer) = (list.len(), self.peer.clone());
        if points < self.limits.min_points {
            return Err(PsiRunError::TooShort { peer, points, min: self.limits.min_points });
        }
        if points > self.limits.max_points {
            return Err(PsiRunError::TooLong { peer, points, max: self.limits.max_points });
        }
        Ok(list)
    }

    /// Step 2, the responding side: the comparer's list blinded again with this node's
    /// key, shuffled, sealed back.
    pub fn answer(&self, chunks: &[SealedChunk], rng: &dyn SecureRandom) -> Result<Vec<SealedChunk>, PsiRunError> {
        let list = self.peer_list(chunks)?;
        let mut twice =
            psi::reblind(&self.key, &list).map_err(|source| PsiRunError::Points { peer: self.peer.clone(), source })?;
        psi::shuffle(&mut twice, rng).map_err(PsiRunError::Own)?;
        Ok(self.to_peer.seal_list(ListKind::Returned { group: 0 }, &twice))
    }

    /// Step 3, the comparing side: the peer's own list blinded again with this node's
    /// key, against the peer's answer to this node's list. The exact count, which
    /// never leaves this node unnoised ([`noised`]).
    pub fn compare(&self, peer_list: &[SealedChunk], answer: &[SealedChunk]) -> Result<u64, PsiRunError> {
        let theirs = self.peer_list(peer_list)?;
        let theirs = psi::reblind(&self.key, &theirs)
            .map_err(|source| PsiRunError::Points { peer: self.peer.clone(), source })?;
        let sent = self.sent.unwrap_or(0);
        let ours = self.from_peer.open_list(ListKind::Returned { group: 0 }, answer, Direction::chunks_for(sent))?;
        if ours.len() != sent {
            return Err(PsiRunError::AnswerLength { peer: self.peer.clone(), got: ours.len(), sent });
        }
        if ours.iter().collect::<HashSet<_>>().len() != ours.len() {
            return Err(PsiRunError::AnswerDuplicate { peer: self.peer.clone() });
        }
        Ok(psi::intersection_count(&ours, &theirs))
    }
}

/// `exact` plus discrete Gaussian noise (Canonne, Kamath & Steinke 2020) of the run's
/// variance: the count a node releases. One customer changes an intersection count or
/// a set size by at most 1, so the sensitivity is 1.
pub fn noised(exact: u64, noise: &DiscreteGaussian, e: &mut dyn Entropy) -> Result<i64, PsiRunError> {
    let z = noise.sample(e).map_err(PsiRunError::Noise)?;
    Ok(i64::try_from(exact).unwrap_or(i64::MAX).saturating_add(z))
}

#[cfg(test)]
mod tests;
