//! Issue 12: one node's side of a PSI pair — the ECDH-PSI cardinality protocol over
//! ristretto255 ([`fedcrm_crypto::psi`]) with its lists sealed node to node
//! ([`fedcrm_crypto::psi::channel`]) and relayed by the coordinator.
//!
//! Never does I/O: the session carries the sealed chunks; this module turns a node's
//! normalised identifiers and the peer's chunks into the chunks it sends and, on the
//! comparing side, the exact count it noises before release.
//!
//! The flow for a pair (C compares, R responds). Each side signs its role in its run key
//! ([`fedcrm_protocol::psi::SignedRunKey`]); R's also carries the commitment K_R = k_R·B
//! to its blinding key. Every step consumes its state, so each list is sent once and
//! each answer or comparison made once (attack review of issue 12, F3).
//!
//! 1. each side draws a fresh blinding key for the pair and sends its own list {k·H(x)},
//!    shuffled: R's padded with random points to its bucket ([`Responder::own_list`]),
//!    C's mixed with trap points r·B, as many as its identifiers up to its policy's
//!    `max_traps` ([`Comparer::own_list`]);
//! 2. R blinds C's list again and returns it shuffled: {k_R·k_C·H(x)} and {k_R·r·B}
//!    ([`AwaitingList::answer`]);
//! 3. C checks the answer — as long as its list, no point twice, r·K_R present for every
//!    trap (R cannot tell traps from identifiers, so an answer altered on d of N points
//!    passes with probability at most (1 − c/N)^d for c traps, and one that counts a
//!    customer m times reaches its target unnoticed with probability at most
//!    2/(e·(m − 1)·c)) — removes the traps, blinds R's list
//!    again, {k_C·k_R·H(y)}, and counts the common points ([`AwaitingAnswer::compare`]);
//!    only the noised count leaves C ([`noised`]).
//!
//! R sees only C's singly-blinded list; C sees R's singly-blinded list and the
//! doubly-blinded answer, shuffled, so it learns the count and the padded sizes, not
//! who is shared. Before blinding anything from the peer, each side refuses a list
//! shorter than its policy's minimum or longer than its maximum.

use std::collections::HashSet;

use fedcrm_crypto::keys::{RoundPublic, RoundSecret};
use fedcrm_crypto::psi::channel::{ChannelError, Direction, ListKind, SealedChunk};
use fedcrm_crypto::psi::{self, BlindingKey, PsiError};
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

/// `[policy.psi]`: which peers this node answers, and the lists it accepts from a
/// peer before it blinds them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PsiLimits {
    /// The peers this node answers (responds to) in a pair; with every other peer it
    /// only compares. The comparing side can test the responder's whole list against
    /// identifiers of its choice, and certificates come from HQ's CA, so a node answers
    /// only a peer its franchisee pinned here out of band: organisation and certificate
    /// fingerprint (attack review of issue 12, F2). Default: nobody.
    pub respond_to: Vec<RespondTo>,
    /// The shortest peer list (padded length, all a node can see) this node blinds:
    /// a list of a few numbers is a probe of who is a customer here. Default 256, the
    /// shortest padded list ([`fedcrm_crypto::psi::MIN_BUCKET`]): it stops an unpadded
    /// probe; a probe padded with random identifiers passes any minimum, and only the
    /// noise on the released count limits what it learns.
    pub min_list_points: usize,
    /// The longest. Default 8,388,608 (2²³, 256 MiB of points): a comparer's list holds
    /// its identifiers and up to `max_traps` traps, so this admits comparers of up to
    /// about 8.3 million customers.
    pub max_list_points: usize,
    /// When this node compares, it mixes trap points into its list — its check that the
    /// responder applied its committed key to every point — as many as its identifiers,
    /// at least [`MIN_TRAPS`] and at most this ([`ListLimits::traps_for`]). A responder
    /// that alters its answer to count one customer m ≥ 2 times goes unnoticed *and* has
    /// that customer among the points it altered with probability at most
    /// 2/(e·(m − 1)·c) for c traps, whatever the list's length
    /// ([`fedcrm_crypto::psi::Traps`], [`fedcrm_crypto::psi::amplification_bound`]):
    /// below 2.3·10⁻⁵ for a list with the default [`DEFAULT_MAX_TRAPS`] = 32,768 traps.
    /// Each trap costs this node two fixed-base multiplications and the responder one
    /// variable-base multiplication, so the traps never cost more than the list itself
    /// (but under the floor of [`MIN_TRAPS`]), and past this number they stop growing (the bound depends on their number
    /// alone). At least [`MIN_TRAPS`].
    pub max_traps: usize,
    /// Most PSI runs per calendar month (UTC) this node pairs with any one peer
    /// organisation — all of HQ's channels count as one organisation, HQ — so no peer
    /// can probe this node's list run after run. A peer over the cap is declined (the
    /// run's other pairs go on). Every participant of a run counts, whether or not the
    /// pair ran. Default 4.
    pub max_runs_per_peer_organisation: u32,
    /// In a run with exact counts (`--dp off`, only under `dp = "optional"`), the
    /// smallest count this node releases: its own customer count, a pair's shared
    /// customers or a segment profile's cell below it leaves as withheld (a flag, no
    /// value), and further profile cells are withheld until the withheld ones of a
    /// pair hold at least this many customers, so none follows from the others and the
    /// pair's total ([`fedcrm_analysis::suppression`]). Checked here, before the counts
    /// leave, whatever the coordinator's `min_cohort`. Noised counts (the default) are
    /// protected by their noise and leave whole. Default 10, at least 2.
    pub min_exact_count: u64,
}

impl Default for PsiLimits {
    fn default() -> Self {
        Self {
            respond_to: vec![],
            min_list_points: psi::MIN_BUCKET,
            max_list_points: 1 << 23,
            max_traps: DEFAULT_MAX_TRAPS,
            max_runs_per_peer_organisation: 4,
            min_exact_count: 10,
        }
    }
}

/// The organisation a peer counts as for [`PsiLimits::max_runs_per_peer_organisation`]:
/// its certificate's, or `HQ` for any of HQ's channels.
pub fn peer_organisation(kind: fedcrm_pki::OrgKind, organisation: &str) -> String {
    match kind {
        fedcrm_pki::OrgKind::Hq => "HQ".into(),
        fedcrm_pki::OrgKind::Franchisee => organisation.into(),
    }
}

/// A peer this node answers: `{ organisation = "…", certificate_sha256 = "…" }`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondTo {
    /// The organisation its certificate names, exactly.
    pub organisation: String,
    /// SHA-256 of its certificate (DER), hex, as `openssl x509 -noout -fingerprint
    /// -sha256` prints it (colons and case ignored).
    pub certificate_sha256: String,
}

impl PsiLimits {
    /// Whether this node may answer `peer` (its verified identity and certificate):
    /// only when pinned in `respond_to`. The reason otherwise, for the refusal.
    pub fn may_respond(&self, peer: &fedcrm_pki::Identity, certificate_der: &[u8]) -> Result<(), String> {
        let fingerprint = hex::encode(ring::digest::digest(&ring::digest::SHA256, certificate_der));
        let pinned = |r: &RespondTo| {
            let want: String = r.certificate_sha256.chars().filter(|c| *c != ':').collect::<String>().to_lowercase();
            r.organisation == peer.organisation && want == fingerprint
        };
        if self.respond_to.iter().any(pinned) {
            return Ok(());
        }
        Err(format!(
            "this node answers only the peers pinned in [policy.psi] respond_to, and {} ({}, certificate sha256 {}) \
             is not: it compares with it instead, or not at all",
            peer.name, peer.organisation, fingerprint
        ))
    }

    /// The limits a pair run checks.
    pub fn list_limits(&self) -> ListLimits {
        ListLimits { min_points: self.min_list_points, max_points: self.max_list_points, max_traps: self.max_traps }
    }

    /// Refuses limits that protect nothing or admit no list, saying what to set.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_traps < MIN_TRAPS {
            return Err(format!(
                "policy.psi.max_traps = {} is too few: a responder that alters its answer would go unnoticed with \
                 probability up to 2/(e·c) for c traps; use {MIN_TRAPS} or more (default {DEFAULT_MAX_TRAPS})",
                self.max_traps
            ));
        }
        if self.min_exact_count < 2 {
            return Err(format!(
                "policy.psi.min_exact_count = {} withholds nothing: an exact count of 1 tells HQ that one person is a \
                 customer of both channels; use 2 or more (default 10)",
                self.min_exact_count
            ));
        }
        if self.min_list_points > self.max_list_points {
            return Err(format!(
                "policy.psi.min_list_points = {} is above max_list_points = {}: no peer list would be accepted",
                self.min_list_points, self.max_list_points
            ));
        }
        if self.max_traps >= self.max_list_points {
            return Err(format!(
                "policy.psi.max_traps = {} leaves no room for identifiers under max_list_points = {}",
                self.max_traps, self.max_list_points
            ));
        }
        Ok(())
    }
}

/// What a node accepts from a peer in one PSI run, and the traps it mixes into its own
/// list when it compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListLimits {
    /// The shortest peer list this node blinds (padded length, all it can see).
    pub min_points: usize,
    /// The longest.
    pub max_points: usize,
    /// The most trap points this node needs in a list it sends as comparer
    /// ([`PsiLimits::max_traps`], [`ListLimits::traps_for`]).
    pub max_traps: usize,
}

impl ListLimits {
    /// The fewest traps in each group of a comparer's list of `n` identifiers: `n`,
    /// at least [`MIN_TRAPS`], at most `max_traps` (or [`MIN_TRAPS`] if that is lower);
    /// the bucket adds more.
    pub fn traps_for(&self, n: usize) -> usize {
        n.min(self.max_traps).max(MIN_TRAPS)
    }

    /// The length of each group of a comparer's list of `n` identifiers: the bucket of
    /// the identifiers and their traps ([`Self::traps_for`]).
    pub fn comparer_length(&self, n: usize) -> usize {
        psi::bucket(n + self.traps_for(n))
    }
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
    #[error(
        "{peer}'s answer lacks {missing} of the {traps} check points this node mixed into its list: {peer} did not \
         apply the key it committed to to every point (it altered the answer to move the count); stop the run"
    )]
    AnswerTraps { peer: String, missing: usize, traps: usize },
    #[error(
        "{peer}'s {what} holds a point in two segment groups: one customer would count in several cells of the \
         table (attack review of issue 12, segment profile); stop the run"
    )]
    GroupsOverlap { peer: String, what: &'static str },
    #[error("{peer}'s blinding-key commitment: {source}")]
    Commitment { peer: String, source: PsiError },
    #[error("this node's list: {0}")]
    Own(PsiError),
    #[error("noising the count: {0}")]
    Noise(DpError),
}

impl PsiRunError {
    /// What the coordinator is told: the kind of failure and who is at fault, without a
    /// figure — a count of missing traps, for one, would give away this node's number of
    /// customers (attack review of issue 12, F4). The full error stays in this node's
    /// audit log.
    pub fn public_reason(&self) -> String {
        match self {
            PsiRunError::Channel(ChannelError::Sealed { sender, .. }) => format!(
                "a list chunk from {sender} did not open: altered, replayed or not sealed by {sender} — the relay or \
                 {sender} broke the run"
            ),
            PsiRunError::Channel(_) => "a list arrived out of order, incomplete or oversized: the relay or the peer \
                                        broke the run"
                .into(),
            PsiRunError::TooShort { peer, .. } => {
                format!("{peer}'s list is shorter than this node's policy minimum: refused as a probe")
            }
            PsiRunError::TooLong { peer, .. } => format!("{peer}'s list is longer than this node accepts"),
            PsiRunError::Points { peer, .. } => format!("{peer}'s list holds a value that is not a point"),
            PsiRunError::AnswerLength { peer, .. }
            | PsiRunError::AnswerDuplicate { peer }
            | PsiRunError::AnswerTraps { peer, .. } => {
                format!("{peer}'s answer failed this node's checks: {peer} altered it; stop the run")
            }
            PsiRunError::GroupsOverlap { peer, what } => {
                format!("{peer}'s {what} holds a point in two segment groups: {peer} altered it; stop the run")
            }
            PsiRunError::Commitment { peer, .. } => format!("{peer}'s blinding-key commitment is not a point"),
            PsiRunError::Own(_) | PsiRunError::Noise(_) => "this node could not prepare its list or noise".into(),
        }
    }
}

/// The default of [`PsiLimits::max_traps`]: with its 2¹⁵ traps, an answer altered to count one
/// customer twice goes unnoticed with its target among the altered points with
/// probability below 2.3·10⁻⁵ (2/(e·(m − 1)·c)), and one altered on d of N points at all
/// with probability at most (1 − c/N)^d. They cost the comparer and the responder about a
/// second each on two cores, whatever the list's length.
pub const DEFAULT_MAX_TRAPS: usize = 1 << 15;

/// The fewest traps in any comparer's list, and the lowest [`PsiLimits::max_traps`] a
/// policy may set (the bound is then 7.2·10⁻⁴).
pub const MIN_TRAPS: usize = 1024;

/// One pair of one run as this node's side sees it: the run, the two names, this
/// node's run secret and the peer's run key (verified:
/// [`fedcrm_protocol::psi::SignedRunKey::verify`]).
#[derive(Debug, Clone, Copy)]
pub struct PairKeys<'a> {
    pub run: RoundId,
    pub me: &'a str,
    pub peer: &'a str,
    pub secret: &'a RoundSecret,
    pub peer_key: &'a RoundPublic,
}

/// Both directions of the pair's sealed channel, and the limits on what comes in.
#[derive(Debug)]
struct Link {
    peer: String,
    to_peer: Direction,
    from_peer: Direction,
    limits: ListLimits,
}

impl Link {
    fn new(p: &PairKeys<'_>, limits: ListLimits) -> Result<Self, PsiRunError> {
        Ok(Self {
            peer: p.peer.into(),
            to_peer: Direction::new(p.secret, p.peer_key, p.run, p.me, p.peer)?,
            from_peer: Direction::new(p.secret, p.peer_key, p.run, p.peer, p.me)?,
            limits,
        })
    }

    /// Opens the peer's own list (group `group`) and checks its length against this
    /// node's limits, before anything is blinded.
    fn peer_list(&self, group: u8, chunks: &[SealedChunk]) -> Result<Vec<[u8; 32]>, PsiRunError> {
        let max = Direction::chunks_for(self.limits.max_points);
        let list = self.from_peer.open_list(ListKind::Blinded { group }, chunks, max)?;
        let (points, peer) = (list.len(), self.peer.clone());
        if points < self.limits.min_points {
            return Err(PsiRunError::TooShort { peer, points, min: self.limits.min_points });
        }
        if points > self.limits.max_points {
            return Err(PsiRunError::TooLong { peer, points, max: self.limits.max_points });
        }
        Ok(list)
    }

    fn reblind(&self, key: &BlindingKey, list: &[[u8; 32]]) -> Result<Vec<[u8; 32]>, PsiRunError> {
        psi::reblind(key, list).map_err(|source| PsiRunError::Points { peer: self.peer.clone(), source })
    }
}

/// Sealed chunks of one list, with the list they belong to.
pub type SealedList = (ListKind, Vec<SealedChunk>);

/// The most groups a list is split into (the four RFM segments).
pub const MAX_GROUPS: usize = 4;

/// Refuses groups that share a point: a customer is in one segment of each list, so a
/// point in two groups would count one customer in several cells of the profile — more
/// than the sensitivity of 1 the release is noised and charged for.
fn disjoint(groups: &[Vec<[u8; 32]>], peer: &str, what: &'static str) -> Result<(), PsiRunError> {
    if groups.len() < 2 {
        return Ok(());
    }
    let mut seen: HashSet<&[u8; 32]> = HashSet::with_capacity(groups.iter().map(Vec::len).sum());
    for group in groups {
        let own: HashSet<&[u8; 32]> = group.iter().collect();
        if own.into_iter().any(|p| !seen.insert(p)) {
            return Err(PsiRunError::GroupsOverlap { peer: peer.into(), what });
        }
    }
    Ok(())
}

/// The chunks of a list sent in one group (the plain overlap).
fn single(lists: Vec<SealedList>) -> Vec<SealedChunk> {
    lists.into_iter().next().map(|l| l.1).unwrap_or_default()
}

fn group_index(g: usize) -> u8 {
    u8::try_from(g).unwrap_or(u8::MAX)
}

/// The comparing side of a pair, before its list leaves. Each step consumes the state,
/// so a comparer sends one list and compares once (attack review of issue 12, F3).
#[derive(Debug)]
pub struct Comparer {
    link: Link,
    key: BlindingKey,
    /// The responder's blinding-key commitment K_R from its signed run key.
    commitment: [u8; 32],
}

impl Comparer {
    /// This node compares in `pair`: `key` is its fresh blinding key for this pair;
    /// `commitment` comes from the peer's verified run key (role `Respond`).
    pub fn new(
        pair: &PairKeys<'_>,
        commitment: [u8; 32],
        key: BlindingKey,
        limits: ListLimits,
    ) -> Result<Self, PsiRunError> {
        Ok(Self { link: Link::new(pair, limits)?, key, commitment })
    }

    /// Step 1: this node's identifiers blinded, mixed with trap points
    /// ([`ListLimits::traps_for`], up to the bucket), shuffled and sealed.
    pub fn own_list<T: AsRef<[u8]> + Sync>(
        self,
        ids: &[T],
        rng: &dyn SecureRandom,
    ) -> Result<(Vec<SealedChunk>, AwaitingAnswer), PsiRunError> {
        let (lists, awaiting) = self.own_groups(&[ids], rng)?;
        Ok((single(lists), awaiting))
    }

    /// Step 1 for a list split into groups (the segment profile: one group per segment
    /// of this node's customers): every group blinded and mixed with trap points up to
    /// the same length — the bucket of the whole list and its traps
    /// ([`ListLimits::traps_for`]) — so every group holds at least that many traps and
    /// the groups' lengths tell the peer nothing of their sizes; each
    /// shuffled and sealed as its own list.
    pub fn own_groups<T: AsRef<[u8]> + Sync>(
        self,
        groups: &[&[T]],
        rng: &dyn SecureRandom,
    ) -> Result<(Vec<SealedList>, AwaitingAnswer), PsiRunError> {
        let n: usize = groups.iter().map(|g| g.len()).sum();
        let length = self.link.limits.comparer_length(n);
        let mut lists = Vec::with_capacity(groups.len());
        let mut sent = Vec::with_capacity(groups.len());
        for (g, ids) in groups.iter().enumerate() {
            let blinded = psi::blind(&self.key, ids);
            let (list, traps) = psi::pad_with_traps(blinded, length - ids.len(), rng).map_err(PsiRunError::Own)?;
            let expected = traps
                .expected(&self.commitment)
                .map_err(|source| PsiRunError::Commitment { peer: self.link.peer.clone(), source })?;
            let kind = ListKind::Blinded { group: group_index(g) };
            lists.push((kind, self.link.to_peer.seal_list(kind, &list, rng)?));
            sent.push(GroupSent { sent: list.len(), expected: expected.into_iter().collect() });
        }
        Ok((lists, AwaitingAnswer { link: self.link, key: self.key, groups: sent }))
    }
}

/// One group of the comparer's list as sent: its length and r·K_R for every trap in it.
struct GroupSent {
    sent: usize,
    expected: HashSet<[u8; 32]>,
}

/// The comparer after its list left: waits for the responder's own list and its answer.
/// `Debug` shows neither the key nor the expected trap answers (which would tell traps
/// from identifiers).
pub struct AwaitingAnswer {
    link: Link,
    key: BlindingKey,
    groups: Vec<GroupSent>,
}

impl std::fmt::Debug for AwaitingAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AwaitingAnswer({}, {} points sent, ..)", self.link.peer, self.sent())
    }
}

impl AwaitingAnswer {
    /// Points this node's list had (its longest group): an answer to a group must have
    /// as many.
    pub fn sent(&self) -> usize {
        self.groups.iter().map(|g| g.sent).max().unwrap_or(0)
    }

    /// How many groups this node's list was sent in.
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// A chunk of the peer's list or answer, checked on arrival ([`Direction::check`]).
    pub fn check(&self, list: ListKind, chunk: &SealedChunk) -> Result<(), PsiRunError> {
        Ok(self.link.from_peer.check(list, chunk)?)
    }

    /// Step 3: the peer's own list blinded again with this node's key, against the
    /// peer's answer to this node's list — checked first: as long as this node's list,
    /// no point twice, every trap answered with the committed key. The exact count,
    /// which never leaves this node unnoised ([`noised`]).
    pub fn compare(self, peer_list: &[SealedChunk], answer: &[SealedChunk]) -> Result<u64, PsiRunError> {
        let table = self.compare_groups(&[peer_list.to_vec()], &[answer.to_vec()])?;
        Ok(table.first().and_then(|r| r.first()).copied().unwrap_or(0))
    }

    /// Step 3 for grouped lists: `peer_lists[j]` the peer's group j, `answers[i]` its
    /// answer to this node's group i. Every answer is checked as in [`Self::compare`];
    /// the exact table, `table[i][j]` = identifiers in this node's group i and the
    /// peer's group j.
    pub fn compare_groups(
        self,
        peer_lists: &[Vec<SealedChunk>],
        answers: &[Vec<SealedChunk>],
    ) -> Result<Vec<Vec<u64>>, PsiRunError> {
        let peer = self.link.peer.clone();
        let theirs = peer_lists
            .iter()
            .enumerate()
            .map(|(j, chunks)| {
                let list = self.link.peer_list(group_index(j), chunks)?;
                self.link.reblind(&self.key, &list)
            })
            .collect::<Result<Vec<_>, PsiRunError>>()?;
        disjoint(&theirs, &peer, "list")?;
        if answers.len() != self.groups.len() {
            return Err(PsiRunError::AnswerLength { peer, got: answers.len(), sent: self.groups.len() });
        }
        let mut table = Vec::with_capacity(self.groups.len());
        let mut rests = Vec::with_capacity(self.groups.len());
        for (i, (group, answer)) in self.groups.iter().zip(answers).enumerate() {
            let max = Direction::chunks_for(group.sent);
            let ours = self.link.from_peer.open_list(ListKind::Returned { group: group_index(i) }, answer, max)?;
            if ours.len() != group.sent {
                return Err(PsiRunError::AnswerLength { peer, got: ours.len(), sent: group.sent });
            }
            let mut answered: HashSet<[u8; 32]> = ours.into_iter().collect();
            if answered.len() != group.sent {
                return Err(PsiRunError::AnswerDuplicate { peer });
            }
            let missing = group.expected.iter().filter(|t| !answered.remove(*t)).count();
            if missing > 0 {
                return Err(PsiRunError::AnswerTraps { peer, missing, traps: group.expected.len() });
            }
            rests.push(answered.into_iter().collect::<Vec<[u8; 32]>>());
        }
        // This node's groups are disjoint (one segment per customer, distinct traps), so
        // an honest answer's are too.
        disjoint(&rests, &peer, "answer")?;
        for rest in &rests {
            table.push(theirs.iter().map(|t| psi::intersection_count(rest, t)).collect());
        }
        Ok(table)
    }
}

/// The responding side of a pair, before its list leaves. Each step consumes the state,
/// so a responder sends one list and answers once.
#[derive(Debug)]
pub struct Responder {
    link: Link,
    key: BlindingKey,
}

impl Responder {
    /// This node responds in `pair` with `key`, whose commitment (`key.public()`) its
    /// signed run key carries.
    pub fn new(pair: &PairKeys<'_>, key: BlindingKey, limits: ListLimits) -> Result<Self, PsiRunError> {
        Ok(Self { link: Link::new(pair, limits)?, key })
    }

    /// Step 1: this node's identifiers blinded, padded with random points to their
    /// bucket, shuffled and sealed for the comparer.
    pub fn own_list<T: AsRef<[u8]> + Sync>(
        self,
        ids: &[T],
        rng: &dyn SecureRandom,
    ) -> Result<(Vec<SealedChunk>, AwaitingList), PsiRunError> {
        let (lists, awaiting) = self.own_groups(&[ids], rng)?;
        Ok((single(lists), awaiting))
    }

    /// Step 1 for a list split into groups: every group blinded and padded with random
    /// points to the bucket of the whole list, shuffled and sealed as its own list.
    pub fn own_groups<T: AsRef<[u8]> + Sync>(
        self,
        groups: &[&[T]],
        rng: &dyn SecureRandom,
    ) -> Result<(Vec<SealedList>, AwaitingList), PsiRunError> {
        let n: usize = groups.iter().map(|g| g.len()).sum();
        let length = psi::bucket(n);
        let mut lists = Vec::with_capacity(groups.len());
        for (g, ids) in groups.iter().enumerate() {
            let list = psi::pad_to(psi::blind(&self.key, ids), length, rng).map_err(PsiRunError::Own)?;
            let kind = ListKind::Blinded { group: group_index(g) };
            lists.push((kind, self.link.to_peer.seal_list(kind, &list, rng)?));
        }
        Ok((lists, AwaitingList { link: self.link, key: self.key }))
    }
}

/// The responder after its list left: waits for the comparer's list.
#[derive(Debug)]
pub struct AwaitingList {
    link: Link,
    key: BlindingKey,
}

impl AwaitingList {
    /// A chunk of the comparer's list, checked on arrival ([`Direction::check`]).
    pub fn check(&self, list: ListKind, chunk: &SealedChunk) -> Result<(), PsiRunError> {
        Ok(self.link.from_peer.check(list, chunk)?)
    }

    /// Step 2: the comparer's list blinded again with this node's committed key,
    /// shuffled, sealed back.
    pub fn answer(self, chunks: &[SealedChunk], rng: &dyn SecureRandom) -> Result<Vec<SealedChunk>, PsiRunError> {
        Ok(single(self.answer_groups(&[chunks.to_vec()], rng)?))
    }

    /// Step 2 for grouped lists: each of the comparer's groups blinded again, shuffled
    /// and sealed back as the answer to that group.
    pub fn answer_groups(
        self,
        lists: &[Vec<SealedChunk>],
        rng: &dyn SecureRandom,
    ) -> Result<Vec<SealedList>, PsiRunError> {
        lists
            .iter()
            .enumerate()
            .map(|(g, chunks)| {
                let list = self.link.peer_list(group_index(g), chunks)?;
                let mut twice = self.link.reblind(&self.key, &list)?;
                psi::shuffle(&mut twice, rng).map_err(PsiRunError::Own)?;
                let kind = ListKind::Returned { group: group_index(g) };
                Ok((kind, self.link.to_peer.seal_list(kind, &twice, rng)?))
            })
            .collect()
    }
}

#[doc(hidden)]
/// Both sides of one pair in one process — fresh channel secrets and blinding keys, no
/// signed run keys — for tests and benchmarks of the pair's computation alone (a node
/// builds its side from the verified run keys: `session::round::psi`).
pub fn pair_in_process(
    run: RoundId,
    (comparer, responder): (&str, &str),
    limits: ListLimits,
    rng: &dyn SecureRandom,
) -> Result<(Comparer, Responder), PsiRunError> {
    let random = |_| PsiRunError::Own(PsiError::Random);
    let (cs, rs) = (RoundSecret::generate(rng).map_err(random)?, RoundSecret::generate(rng).map_err(random)?);
    let domain = psi::Domain { version: psi::VERSION, run_id: run.0 };
    let kc = BlindingKey::generate(domain, rng).map_err(PsiRunError::Own)?;
    let kr = BlindingKey::generate(domain, rng).map_err(PsiRunError::Own)?;
    let commitment = kr.public();
    let (c_pub, r_pub) = (cs.public(), rs.public());
    let on_c = PairKeys { run, me: comparer, peer: responder, secret: &cs, peer_key: &r_pub };
    let on_r = PairKeys { run, me: responder, peer: comparer, secret: &rs, peer_key: &c_pub };
    Ok((Comparer::new(&on_c, commitment, kc, limits)?, Responder::new(&on_r, kr, limits)?))
}

/// `exact` plus discrete Gaussian noise (Canonne, Kamath & Steinke 2020) of the run's
/// variance: the count a node releases. One customer changes an intersection count or
/// a set size by at most 1, so the sensitivity is 1.
pub fn noised(exact: u64, noise: &DiscreteGaussian, e: &mut dyn Entropy) -> Result<i64, PsiRunError> {
    let z = noise.sample(e).map_err(PsiRunError::Noise)?;
    Ok(i64::try_from(exact).unwrap_or(i64::MAX).saturating_add(z))
}

/// What this node releases of a run: its customer count, then per pair it compared
/// (peer, its exact counts — one, or a segment profile's 16 cells) the pair's count or
/// table. Under `noise` every figure is noised ([`noised`]) and leaves whole (a table's
/// total is its noised cells' sum). Exact (`None`, `--dp off`): every figure below
/// `min_exact_count` is withheld, and a table's cells by
/// [`fedcrm_analysis::suppression::release_table`], so no withheld cell follows from the
/// others and the total — decided here, before anything leaves.
pub fn release(
    run: RoundId,
    customers: u64,
    compared: Vec<(String, Vec<u64>)>,
    profile: bool,
    noise: Option<&DiscreteGaussian>,
    min_exact_count: u64,
    e: &mut dyn Entropy,
) -> Result<fedcrm_protocol::wire::PsiRelease, PsiRunError> {
    use fedcrm_protocol::wire::{PsiRelease, PsiTable};
    let exact = |n: u64| (n >= min_exact_count).then(|| i64::try_from(n).unwrap_or(i64::MAX));
    let mut out = PsiRelease { run, customers: None, counts: vec![], tables: vec![] };
    out.customers = match noise {
        Some(noise) => Some(noised(customers, noise, e)?),
        None => exact(customers),
    };
    for (peer, cells) in compared {
        let (total, cells) = match noise {
            Some(noise) => {
                let cells = cells.iter().map(|&c| noised(c, noise, e)).collect::<Result<Vec<_>, _>>()?;
                (Some(cells.iter().fold(0i64, |a, &c| a.saturating_add(c))), cells.into_iter().map(Some).collect())
            }
            None => fedcrm_analysis::suppression::release_table(&cells, min_exact_count),
        };
        if profile {
            out.tables.push(PsiTable { peer, total, cells });
        } else {
            out.counts.push((peer, total));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
