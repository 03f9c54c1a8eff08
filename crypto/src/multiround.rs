//! Key agreement once per analysis: secure aggregation over the many rounds of one
//! analysis (quantile passes, training rounds, likelihood evaluations) with one X25519
//! agreement per pair of neighbours for the whole analysis, so that a round after the
//! first costs little more than masking alone (cf. Flamingo, Ma et al., IEEE S&P 2023,
//! which also sets up pairwise secrets once and derives each round's masks from them).
//! Pure: no I/O, no clock. Each function cites the step it implements; the steps are
//! those of [`crate::secagg`] (Bonawitz et al. CCS 2017, Fig. 4; with a graph, SecAgg+,
//! Bell et al. CCS 2020, Fig. 2), changed as follows.
//!
//! **Setup, once per analysis** ([`Setup::new`], [`Setup::join`]): each node makes its
//! two X25519 pairs (`c` for share encryption, `s` for masks) under a setup round id,
//! the caller signs them with [`crate::secagg::key_signing_payload`], and on the signed
//! roster each node computes the agreements `c_uv` and `s_uv` with each of its
//! neighbours, once. The secret scalars are dropped (and zeroized) there: only the
//! agreements are kept, in the [`Member`].
//!
//! **Each round r** (a fresh random round id — on the wire the first round of an
//! analysis carries the setup's, which has seeded nothing yet; the [`Member`] refuses
//! one it has seen):
//! 1. each contributor draws a fresh self-mask seed `b_r` and Shamir-shares **only
//!    `b_r`** t-of-holders ([`Topology::holds`]), each share sealed under
//!    HKDF(c_uv, version ‖ "share" ‖ r ‖ analysis ‖ from ‖ to) with ChaCha20-Poly1305;
//!    no share of the mask secret `s_sk` is ever made;
//! 2. `y = x + PRG(b_r) + Σ_{v>u} PRG(s_uv,r) − Σ_{v<u} PRG(s_uv,r)` over the
//!    neighbours v in U2, where the round's pair seed is
//!    `s_uv,r = HKDF(s_uv, version ‖ "pair-mask" ‖ r ‖ analysis ‖ lo ‖ hi)` — no new
//!    X25519 per round;
//! 3. after the consistency check (the caller's, as in `secagg`), each survivor
//!    reveals, per peer, the `b_r` share of a survivor or — for a dropped neighbour v —
//!    its round-r pair seed `s_uv,r` (32 bytes, not a share), never both;
//! 4. the server reconstructs each survivor's `b_r` from t shares and removes each
//!    dropped node's pairwise masks with every surviving neighbour's revealed seed.
//!
//! **Why reusing `s_uv` is safe.** The agreement `s_uv` itself never leaves a node:
//! only HKDF outputs bound to (analysis, round, pair) do, and one round's seed says
//! nothing of another's. Bonawitz et al. recover a dropped node v by reconstructing its
//! mask secret `s_v^SK`; here that would be fatal: with `s_v^SK` the server recomputes
//! *every* round's pairwise masks of v, and for each earlier round in which v survived
//! it already knows `b_v,r'` (it reconstructed it to unmask that round), so it would
//! strip v's earlier masked vectors down to v's inputs. That is why no share of `s_sk`
//! is made here; a revealed round-r pair seed removes masks of round r only
//! (`tests/multiround_props.rs` checks that the seeds of one round do not strip
//! another's vector). The round id is fresh per round for the same reason: a repeated
//! id would repeat the pair seeds (and the share-sealing keys, whose nonce is fixed),
//! so [`Member::round`] refuses one it has already used (as does [`Analysis::round`]).
//!
//! **Why a split view does not unmask a survivor.** An honest node reveals, per peer
//! and round, either its `b_r` share or its pair seed, never both. To strip a survivor
//! v, the server needs `b_v,r` — t shares, from corrupt holders, from v itself (full
//! SecAgg) and from honest holders shown "v survived" — *and* `s_uv,r` for every
//! neighbour u that v masked with (v's U2). An honest u shown "v survived" does not
//! reveal `s_uv,r`, but v itself does if shown "u dropped"; and an honest holder the
//! server left out of v's U2 (v's share was delivered to it, its own to v was not) gives
//! a share of `b_v,r` without any pair seed being needed for it. So every honest holder
//! that gives the server a share of `b_v,r` is outside U3 in v's view.
//!
//! **A confirmed view** ([`ViewCheck::Confirmed`]) — on the wire, one signed by t
//! members of U3 (full SecAgg, where every node checked 2t > n + H + C over the
//! invitation) or by the quorum q > (|U1| + H + C)/2 (SecAgg+): honest nodes sign one
//! view each, so two views cannot both gather that many signatures, and every honest
//! node that answers saw the same view. If that view says v survived, an honest
//! neighbour it keeps in U3 keeps its pair seed with v and v keeps its own (no strip
//! unless none is kept, and then only the ≤ H + C < t corrupt holders give shares of
//! `b_v,r`); if it says v dropped, no honest holder gives a share of `b_v,r`. There is
//! no split to exploit, and a dropout costs what it costs in SecAgg.
//!
//! **A view nobody confirmed** ([`ViewCheck::Unconfirmed`], the crypto core on its own):
//! v answers only when its own view leaves t holders of its shares besides itself in
//! U3, or — full SecAgg — when its holders outside U3 are so few that with every
//! corrupt holder (`corrupt`, the caller's bound) and its own share they cannot make t
//! (`outside + corrupt + 1 < t`). In the first case the honest holders kept in v's U3
//! (≥ t − C, all shown "v dropped" so that their pair seeds come out) and the honest
//! holders outside it (≥ t − C, or t − 1 − C in full SecAgg, where v's share counts)
//! must both fit in the honest holders: the attack needs 2t ≤ k + C (full SecAgg:
//! 2t ≤ n + C, with n = k + 1), which the threshold rule 2t > k + C
//! (`fedcrm_analysis::neighbourhood`; 2t > n + C in full SecAgg) forbids. In the second
//! the shares are too few outright. In full SecAgg both are checked whether or not v
//! reveals a pair seed: a split of U2 strips v without it (`tests/multiround_props.rs`
//! runs the attacks on both sides of the bound, and `crypto/tests/split_u2.rs` the split
//! of U2).
//!
//! **Liveness cost.** A dropped node's masks come out only with the pair seed of
//! *every* surviving neighbour, so one surviving neighbour that does not answer blocks
//! the round's release ([`RoundUnmasking::finish_words`] says which), where Bonawitz et
//! al. need any t. The next round can go on without it.
//!
//! **A node declared dropped takes no further part in the analysis.** Its
//! neighbours have revealed their pair seeds with it for that round; the [`Member`]
//! remembers every node an unmask request declared dropped and refuses a later round
//! whose contributors name it, a node told that it dropped takes no further part, and
//! the server's [`Analysis`] refuses to start a round that names one. (This is the
//! issue's rule rather than a condition of the argument above: each round's seeds are
//! its own, so a returning node would not expose an earlier round.)
//!
//! Round states do not borrow the [`Member`]: the node keeps it beside the round in
//! progress, and each step takes it again ([`RoundShared::open`], …) and checks that it
//! is the member that started the round.
//!
//! The graph is fixed for the analysis (the agreements are made with its
//! neighbours only), where SecAgg+ draws one per round; each node's neighbourhood rule
//! is checked once, at setup, by the caller.

use std::collections::{BTreeMap, BTreeSet};

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::keys::{RoundSecret, SharedSecret};
use crate::prg::{MaskSeed, Sign};
use crate::secagg::{
    OpenFailure, PeerKeys, RoundParams, SelfSeed, Topology, check_roster, check_threshold, expand_words, pair_sign,
    position, self_seed,
};
use crate::shamir::{self, SHARE_Y_LEN, Share};
use crate::word::Words;
use crate::{CryptoError, RoundId, SecureRandom, aead, kdf};

mod server;
pub use server::{Analysis, RoundAggregator, RoundUnmasking};

/// A round's pair seed `s_uv,r` of two neighbours, as revealed for a dropped one.
/// Zeroized on drop; `Debug` prints `PairSeed(..)`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PairSeed([u8; 32]);

impl std::fmt::Debug for PairSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PairSeed(..)")
    }
}

impl PairSeed {
    /// Parse a revealed seed (the wire decoder's).
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// The bytes, for the wire encoder only.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    fn mask_seed(&self) -> MaskSeed {
        MaskSeed::from_bytes(self.0)
    }
}

/// What a node knows of the view (U2, U3) an unmask request carries, when it decides
/// whether to answer ([`RoundMasked::check_request`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewCheck {
    /// The caller holds valid signatures on this view from more than (|U2| + K)/2
    /// members of U3, K bounding the corrupt ones (t in full SecAgg under the threshold
    /// rule 2t > n + H + C; SecAgg+'s quorum q): honest nodes sign one view each, so no
    /// other view can be signed that often, and every honest node that answers saw this
    /// one. No split view exists to guard against.
    Confirmed,
    /// Not confirmed: at most `corrupt` holders of this node's shares side with the
    /// server. A request that reveals pair seeds must then leave t holders of this
    /// node's shares besides itself in U3 — or, in full SecAgg, drop so few holders
    /// that with every corrupt one and its own share they cannot make t (module doc,
    /// "split view").
    Unconfirmed { corrupt: usize },
}

/// One reveal during unmasking. There is no variant for a share of a mask secret:
/// none is ever made.
///
/// Bonawitz et al. CCS 2017, Fig. 4, Round 4 (Unmasking), user, with `s_v,u^SK` replaced
/// by the round's pair seed.
#[derive(Debug, Clone)]
pub enum Reveal {
    /// This holder's share of a surviving node's round self-mask seed `b_r`.
    SelfMask { of: String, share: Share },
    /// This survivor's round pair seed `s_uv,r` with `of`, a dropped neighbour.
    PairSeed { of: String, seed: PairSeed },
}

impl Reveal {
    pub fn of(&self) -> &str {
        match self {
            Reveal::SelfMask { of, .. } | Reveal::PairSeed { of, .. } => of,
        }
    }
}

/// Flamingo-style per-round pair seed: s_uv,r = HKDF(s_uv, version ‖ "pair-mask" ‖ r ‖
/// analysis ‖ lo ‖ hi), from the agreement made once at setup.
///
/// Bonawitz et al. CCS 2017, Fig. 4, Round 2 (MaskedInputCollection): s_u,v, with
/// KA.agree done once per analysis ([`Setup::join`]) instead of once per round.
fn round_pair_seed(agreed: &SharedSecret, analysis: &str, round: &RoundId, a: &str, b: &str) -> PairSeed {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let k = kdf::derive(
        agreed.bytes(),
        &kdf::context("pair-mask", round, &[analysis.as_bytes(), lo.as_bytes(), hi.as_bytes()]),
    );
    PairSeed(*k.bytes())
}

/// Key context and associated data of one sealed share: version ‖ "share" ‖ round ‖
/// analysis ‖ from ‖ to.
///
/// Bonawitz et al. CCS 2017, Fig. 4, Round 1 (ShareKeys): binds u ‖ v to e_u,v.
fn sealing_context(analysis: &str, round: &RoundId, from: &str, to: &str) -> Vec<u8> {
    kdf::context("share", round, &[analysis.as_bytes(), from.as_bytes(), to.as_bytes()])
}

/// The sign that undoes a mask added with `sign`.
fn undo(sign: Sign) -> Sign {
    match sign {
        Sign::Add => Sign::Sub,
        Sign::Sub => Sign::Add,
    }
}

/// The agreements with one neighbour, made once per analysis. Zeroized on drop.
struct Agreed {
    /// KA.agree(c_u^SK, c_v^PK): keys the sealed shares.
    enc: SharedSecret,
    /// KA.agree(s_u^SK, s_v^PK): seeds the pairwise masks.
    mask: SharedSecret,
}

/// A node's analysis setup: its two key pairs, waiting for the signed roster.
pub struct Setup {
    setup: RoundId,
    analysis: String,
    me: String,
    enc: RoundSecret,
    mask: RoundSecret,
}

impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup")
            .field("setup", &self.setup)
            .field("analysis", &self.analysis)
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl Setup {
    /// Make this analysis's key pairs. Returns the public keys, for the caller to sign
    /// with [`crate::secagg::key_signing_payload`] under the setup round id `setup`.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 0 (AdvertiseKeys), user: (c_u^PK, c_u^SK),
    /// (s_u^PK, s_u^SK) ← KA.gen — once per analysis here, not once per round.
    pub fn new(
        setup: RoundId,
        analysis: &str,
        me: &str,
        rng: &dyn SecureRandom,
    ) -> Result<(Self, PeerKeys), CryptoError> {
        let enc = RoundSecret::generate(rng)?;
        let mask = RoundSecret::generate(rng)?;
        let keys = PeerKeys { name: me.to_string(), enc: enc.public(), mask: mask.public() };
        Ok((Self { setup, analysis: analysis.to_string(), me: me.to_string(), enc, mask }, keys))
    }

    /// Take the analysis's roster of verified keys (sorted by name, with this node's
    /// own keys unaltered and every neighbour of this node in `topology`) and agree,
    /// once, with each neighbour. The secret scalars are dropped here.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Rounds 1 and 2, user: KA.agree(c_u^SK, c_v^PK) and
    /// KA.agree(s_u^SK, s_v^PK), for each neighbour v — once per analysis.
    pub fn join(self, u1: Vec<PeerKeys>, topology: Topology) -> Result<Member, CryptoError> {
        let roster: Vec<String> = u1.iter().map(|p| p.name.clone()).collect();
        self.join_among(roster, u1, topology)
    }

    /// [`Setup::join`] when this node holds only some of the roster's keys (SecAgg+ on
    /// the wire: its own and its neighbours'): `roster` is the analysis's whole U1,
    /// sorted; `keys` (sorted by name) are from it, with this node's own unaltered and
    /// every neighbour's.
    pub fn join_among(
        self,
        roster: Vec<String>,
        keys: Vec<PeerKeys>,
        topology: Topology,
    ) -> Result<Member, CryptoError> {
        let setup = self.setup;
        check_roster(&roster)?;
        let names: Vec<String> = keys.iter().map(|p| p.name.clone()).collect();
        check_roster(&names)?;
        if let Some(v) = names.iter().find(|v| position(&roster, v).is_none()) {
            return Err(CryptoError::Protocol(format!("setup {setup}: keys of {v}, who is not in the roster")));
        }
        let u1 = keys;
        let mine = position(&names, &self.me)
            .map(|i| &u1[i])
            .ok_or_else(|| CryptoError::Protocol(format!("setup {setup}: this node is not in the roster")))?;
        if mine.enc != self.enc.public() || mine.mask != self.mask.public() {
            return Err(CryptoError::Protocol(format!(
                "setup {setup}: the roster carries keys for this node that it did not advertise"
            )));
        }
        if let Topology::Graph(g) = &topology {
            let near = g.0.get(&self.me).into_iter().flatten();
            if let Some(v) = near.into_iter().find(|v| position(&names, v).is_none()) {
                return Err(CryptoError::Protocol(format!(
                    "setup {setup}: the graph makes {v} a neighbour of this node, but the roster has no keys of {v}"
                )));
            }
        }
        let mut agreed = BTreeMap::new();
        for peer in u1.iter().filter(|p| topology.adjacent(&self.me, &p.name)) {
            let blame = |e: CryptoError| {
                CryptoError::Protocol(format!("setup {setup}: {} advertised a bad key: {e}", peer.name))
            };
            let enc = self.enc.agree(&peer.enc).map_err(blame)?;
            let mask = self.mask.agree(&peer.mask).map_err(blame)?;
            agreed.insert(peer.name.clone(), Agreed { enc, mask });
        }
        let Setup { setup, analysis, me, .. } = self;
        Ok(Member {
            setup,
            analysis,
            me,
            roster,
            topology,
            agreed,
            used: BTreeSet::new(),
            dropped: BTreeMap::new(),
            declared_dropped: None,
        })
    }
}

/// A node's part in one analysis: the agreements with its neighbours (zeroized on
/// drop, never shown by `Debug`), the rounds it has taken part in and the nodes it has
/// seen declared dropped.
pub struct Member {
    setup: RoundId,
    analysis: String,
    me: String,
    roster: Vec<String>,
    topology: Topology,
    agreed: BTreeMap<String, Agreed>,
    /// Every round id this node has shared in: never used again. (The setup's id may
    /// serve once, as the analysis's first round: it has seeded nothing.)
    used: BTreeSet<RoundId>,
    /// Each node an unmask request declared dropped, with that round.
    dropped: BTreeMap<String, RoundId>,
    /// The round in which a request declared this node dropped, if one did.
    declared_dropped: Option<RoundId>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("setup", &self.setup)
            .field("analysis", &self.analysis)
            .field("me", &self.me)
            .field("neighbours", &self.agreed.len())
            .field("rounds", &self.used.len())
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl Member {
    pub fn name(&self) -> &str {
        &self.me
    }

    /// The round that set up this analysis's keys.
    pub fn setup(&self) -> RoundId {
        self.setup
    }

    pub fn analysis(&self) -> &str {
        &self.analysis
    }

    /// The analysis's roster (setup U1), sorted.
    pub fn roster(&self) -> &[String] {
        &self.roster
    }

    /// The nodes this node has seen declared dropped, each with its round: none of them
    /// may contribute to a later round of the analysis.
    pub fn dropped(&self) -> Vec<(String, RoundId)> {
        self.dropped.iter().map(|(n, r)| (n.clone(), *r)).collect()
    }

    /// Start round `params.round` over `contributors` (this round's U1: sorted, a subset
    /// of the roster, with this node): draw a fresh self-mask seed, split it t-of-holders
    /// and seal each neighbour's share. Returns the round state and (peer, ciphertext)
    /// for each holder other than this node.
    ///
    /// Refuses, naming what is wrong, a round id already used in this analysis, a
    /// contributor declared dropped in an earlier round, a contributor outside the
    /// roster, a set without this node, or fewer than t holders of this node's shares.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 1 (ShareKeys), user: SS.share(b_u, t, U1) and
    /// e_u,v ← AE.enc(KA.agree(c_u^SK, c_v^PK), b_u,v) — with the agreement made at setup, and
    /// no share of s_u^SK; with a graph, Bell et al. CCS 2020, Fig. 2, Round 1: to N_G(u) only.
    #[allow(clippy::type_complexity)] // (state, [(recipient, sealed share)]), as `secagg`
    pub fn round(
        &mut self,
        params: RoundParams,
        contributors: &[String],
        rng: &dyn SecureRandom,
    ) -> Result<(RoundShared, Vec<(String, Vec<u8>)>), CryptoError> {
        let (round, t) = (params.round, params.t);
        let at = |what: String| CryptoError::Protocol(format!("analysis {}, round {round}: {what}", self.analysis));
        if let Some(r) = self.declared_dropped {
            return Err(at(format!("this node was declared dropped in round {r} and takes no further part")));
        }
        if self.used.contains(&round) {
            return Err(at("the round id was already used in this analysis; a repeated id would repeat its pair \
                           seeds and sealing keys, refusing"
                .into()));
        }
        check_roster(contributors)?;
        for v in contributors {
            if let Some(r) = self.dropped.get(v) {
                return Err(at(format!(
                    "the contributors name {v}, declared dropped in round {r}; a dropped node takes no further part"
                )));
            }
            if position(&self.roster, v).is_none() {
                return Err(at(format!("the contributors name {v}, who is not in the analysis's roster")));
            }
        }
        let my_pos = position(contributors, &self.me).ok_or_else(|| at("this node is not a contributor".into()))?;
        let holders: Vec<usize> =
            (0..contributors.len()).filter(|&i| self.topology.holds(&contributors[i], &self.me)).collect();
        if holders.len() < t {
            return Err(at(format!(
                "{} contributors would hold this node's shares, fewer than the threshold t={t}; refusing",
                holders.len()
            )));
        }
        check_threshold(t, holders.len())?;
        let mut b = SelfSeed([0u8; 32]);
        rng.fill(&mut b.0).map_err(|_| CryptoError::Random)?;
        // Roster positions fit u32: a roster longer than 2^32 − 1 could not have been sent.
        let xs: Vec<u32> = holders.iter().map(|&i| i as u32 + 1).collect();
        let shares = shamir::split_at(&b.0, t, &xs, rng)?;
        let mut out = Vec::with_capacity(holders.len());
        let mut own = None;
        for (&i, share) in holders.iter().zip(shares) {
            let to = &contributors[i];
            if i == my_pos {
                own = Some(share);
                continue;
            }
            // Unwrap safety: a holder other than this node is its neighbour, and join
            // agreed with every neighbour in the roster (contributors ⊆ roster).
            let agreed = self.agreed.get(to).expect("an agreement with every neighbour");
            let aad = sealing_context(&self.analysis, &round, &self.me, to);
            let mut y = share.y_bytes();
            out.push((to.clone(), aead::seal(&kdf::derive(agreed.enc.bytes(), &aad), &aad, &y)));
            y.zeroize();
        }
        self.used.insert(round);
        let tag = Tag { setup: self.setup, params };
        let state = RoundShared { tag, contributors: contributors.to_vec(), b, own };
        Ok((state, out))
    }

    /// Test hook (feature `test-util`, never in production builds): this node's pair
    /// seed with `peer` for `round` — what the server would need to strip its masks.
    #[cfg(feature = "test-util")]
    pub fn test_util_pair_seed(&self, peer: &str, round: &RoundId) -> Option<PairSeed> {
        let agreed = self.agreed.get(peer)?;
        Some(round_pair_seed(&agreed.mask, &self.analysis, round, &self.me, peer))
    }
}

/// Test hook (feature `test-util`): what a server holding `me`'s self-mask seed `b`
/// for `round` and pair seeds `(peer, seed)` computes from `me`'s masked vector `y`:
/// `y` less the self mask and less `me`'s pairwise mask with each named peer.
#[cfg(feature = "test-util")]
pub fn test_util_strip(
    round: &RoundId,
    me: &str,
    b: &[u8; 32],
    pair_seeds: &[(String, PairSeed)],
    y: &Words,
) -> Vec<u64> {
    let mut seeds = vec![(self_seed(b, round, me), Sign::Sub)];
    seeds.extend(pair_seeds.iter().map(|(peer, s)| (s.mask_seed(), undo(pair_sign(me, peer)))));
    let refs: Vec<(&MaskSeed, Sign)> = seeds.iter().map(|(s, sign)| (s, *sign)).collect();
    let mut x = y.clone();
    expand_words(&refs, &mut x);
    x.to_u64()
}

/// What every round state keeps: its analysis's setup and the round's parameters.
/// Each step takes the [`Member`] again (the node keeps it for the whole analysis,
/// beside the round in progress) and binds it with [`Tag::bind`].
#[derive(Debug, Clone)]
struct Tag {
    setup: RoundId,
    params: RoundParams,
}

impl Tag {
    /// The member this round was started by: same setup, and the round is one it
    /// started (a step given another analysis's member is refused).
    fn bind<'m>(&self, member: &'m Member) -> Result<InRound<'m>, CryptoError> {
        if member.setup != self.setup || !member.used.contains(&self.params.round) {
            return Err(CryptoError::Protocol(format!(
                "round {}: a step of this round was given the member of another analysis",
                self.params.round
            )));
        }
        Ok(InRound { member, params: self.params.clone() })
    }
}

/// A round state bound to its member for one step.
struct InRound<'m> {
    member: &'m Member,
    params: RoundParams,
}

impl InRound<'_> {
    /// A refusal in this round, naming the analysis and the round.
    fn at(&self, what: &str) -> CryptoError {
        CryptoError::Protocol(format!("analysis {}, round {}: {what}", self.member.analysis, self.params.round))
    }

    /// This node is in `u2` and at least t of its holders are.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Rounds 2 and 3, user: assert |U2| ≥ t, |U3| ≥ t; with a
    /// graph, Bell et al. CCS 2020, Fig. 2: |N_G(u) ∩ U2| ≥ t.
    fn check_holders(&self, u2: &BTreeSet<String>, which: &str) -> Result<(), CryptoError> {
        let m = &self.member;
        if !u2.contains(&m.me) {
            return Err(self.at(&format!("this node is missing from {which}")));
        }
        let holders = m.topology.holders(&m.me, u2).len();
        if holders < self.params.t {
            return Err(self.at(&format!(
                "only {holders} holders of this node's shares are in {which}, fewer than t={}; refusing",
                self.params.t
            )));
        }
        Ok(())
    }
}

/// Round state 1: this node's shares are sent; waits for the peers' shares and U2.
pub struct RoundShared {
    tag: Tag,
    contributors: Vec<String>,
    b: SelfSeed,
    /// This node's own share of `b` (full SecAgg only).
    own: Option<Share>,
}

/// Round state 1½: the delivered shares are opened; waits for the final U2.
pub struct RoundOpened {
    tag: Tag,
    holders: usize,
    b: SelfSeed,
    delivered: BTreeSet<String>,
    /// The `b` share held for each member of `delivered` whose share opened.
    held: BTreeMap<String, Share>,
    unopened: BTreeSet<String>,
}

/// Round state 2: ready to mask.
pub struct RoundReady {
    tag: Tag,
    holders: usize,
    b: SelfSeed,
    u2: BTreeSet<String>,
    held: BTreeMap<String, Share>,
}

/// Round state 3: masked input sent; waits for exactly one unmask request.
pub struct RoundMasked {
    tag: Tag,
    /// How many of this round's U1 hold this node's shares (itself included in full
    /// SecAgg): those not in U3 are counted against an unconfirmed view.
    holders: usize,
    u2: BTreeSet<String>,
    held: BTreeMap<String, Share>,
}

macro_rules! debug_round_state {
    ($($t:ident),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t))
                    .field("setup", &self.tag.setup)
                    .field("params", &self.tag.params)
                    .finish_non_exhaustive()
            }
        }
    )*};
}
debug_round_state!(RoundShared, RoundOpened, RoundReady, RoundMasked);

impl RoundShared {
    /// Open the sealed shares addressed to this node, one per neighbour in `u2` (the
    /// contributors whose shares were delivered). `Err` when the delivery itself is
    /// wrong (the relay's fault): U2 names a non-contributor, lacks this node, keeps
    /// fewer than t holders of its shares, or a neighbour's share is missing. A share
    /// that arrives but does not open is listed, naming its sender.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 2 (MaskedInputCollection), user: receive the
    /// e_v,u, infer U2, assert |U2| ≥ t (decrypted here, not in Round 4, as in `secagg`).
    pub fn open(
        self,
        member: &Member,
        u2: &[String],
        incoming: &[(String, Vec<u8>)],
    ) -> Result<(RoundOpened, Vec<OpenFailure>), CryptoError> {
        let ctx = self.tag.bind(member)?;
        let delivered: BTreeSet<String> = u2.iter().cloned().collect();
        if let Some(x) = delivered.iter().find(|v| position(&self.contributors, v).is_none()) {
            return Err(ctx.at(&format!("U2 names {x}, who is not a contributor of this round")));
        }
        ctx.check_holders(&delivered, "U2")?;
        // Unwrap safety: `round` checked this node is a contributor.
        let me = &member.me;
        let my_x = position(&self.contributors, me).expect("a contributor") as u32 + 1;
        let mut held = BTreeMap::new();
        if let Some(own) = &self.own {
            held.insert(me.clone(), own.clone());
        }
        let mut failures = Vec::new();
        for from in delivered.iter().filter(|v| member.topology.adjacent(me, v)) {
            let Some((_, ct)) = incoming.iter().find(|(f, _)| f == from) else {
                return Err(ctx.at(&format!("no share from {from}, who is in U2")));
            };
            match open_one(&ctx, from, my_x, ct) {
                Ok(share) => {
                    held.insert(from.clone(), share);
                }
                Err(error) => failures.push(OpenFailure { sender: from.clone(), error }),
            }
        }
        let unopened = failures.iter().map(|f| f.sender.clone()).collect();
        let holders = member.topology.holders(me, &self.contributors).len();
        let RoundShared { tag, b, .. } = self;
        Ok((RoundOpened { tag, holders, b, delivered, held, unopened }, failures))
    }

    /// [`RoundShared::open`] then [`RoundOpened::finish`] with the same U2, failing on
    /// the first share that does not open: for when nothing is to be reported.
    pub fn receive(
        self,
        member: &Member,
        u2: &[String],
        incoming: &[(String, Vec<u8>)],
    ) -> Result<RoundReady, CryptoError> {
        let (opened, failures) = self.open(member, u2, incoming)?;
        if let Some(f) = failures.into_iter().next() {
            return Err(f.error);
        }
        opened.finish(member, u2)
    }
}

/// Bonawitz et al. CCS 2017, Fig. 4, Round 4 (Unmasking), user: AE.dec of e_v,u under the
/// agreement made at setup (done in Round 2 here, as in `secagg`).
fn open_one(ctx: &InRound<'_>, from: &str, my_x: u32, ct: &[u8]) -> Result<Share, CryptoError> {
    // Unwrap safety: `from` is a neighbour in the roster, with whom join agreed.
    let m = ctx.member;
    let agreed = m.agreed.get(from).expect("an agreement with every neighbour");
    let aad = sealing_context(&m.analysis, &ctx.params.round, from, &m.me);
    let mut plain = aead::open(&kdf::derive(agreed.enc.bytes(), &aad), &aad, ct)?;
    let share = if plain.len() == SHARE_Y_LEN {
        Share::from_parts(my_x, &plain)
    } else {
        Err(CryptoError::MalformedShare("share plaintext must be 64 bytes"))
    };
    plain.zeroize();
    share
}

impl RoundOpened {
    /// The senders whose shares did not open, sorted.
    pub fn unopened(&self) -> Vec<String> {
        self.unopened.iter().cloned().collect()
    }

    /// Take the final U2: a subset of the delivered U2 with this node, at least t
    /// holders of its shares, and no sender whose share did not open here.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 2 (MaskedInputCollection), user: assert |U2| ≥ t.
    pub fn finish(self, member: &Member, u2: &[String]) -> Result<RoundReady, CryptoError> {
        let ctx = self.tag.bind(member)?;
        let u2: BTreeSet<String> = u2.iter().cloned().collect();
        let bad = u2.difference(&self.delivered).next().map(|x| format!("names {x}, whose share was never delivered"));
        let bad = bad.or_else(|| {
            u2.intersection(&self.unopened).next().map(|x| format!("keeps {x}, whose share does not open here"))
        });
        if let Some(why) = bad {
            return Err(ctx.at(&format!("the final U2 {why}")));
        }
        ctx.check_holders(&u2, "the final U2")?;
        let RoundOpened { tag, holders, b, mut held, .. } = self;
        held.retain(|n, _| u2.contains(n));
        Ok(RoundReady { tag, holders, b, u2, held })
    }
}

impl RoundReady {
    /// Mask `input` (length d, plain values of the round's width) for the neighbours
    /// in U2, with the round's pair seeds derived from the setup's agreements.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 2 (MaskedInputCollection), user:
    /// y_u ← x_u + p_u + Σ_{v∈U2} p_u,v, with s_u,v,r from the agreement made once (Flamingo).
    pub fn mask(self, member: &Member, input: &[u64]) -> Result<(RoundMasked, Words), CryptoError> {
        let ctx = self.tag.bind(member)?;
        if input.len() != ctx.params.d {
            return Err(CryptoError::Length { got: input.len(), expected: ctx.params.d });
        }
        let mut y = Words::from_plain(ctx.params.width, input)?;
        let (m, round) = (member, &ctx.params.round);
        let mut seeds = vec![(self_seed(&self.b.0, round, &m.me), Sign::Add)];
        for v in self.u2.iter().filter(|v| m.topology.adjacent(&m.me, v)) {
            // Unwrap safety: an adjacent member of U2 is a neighbour in the roster.
            let agreed = m.agreed.get(v).expect("an agreement with every neighbour");
            let seed = round_pair_seed(&agreed.mask, &m.analysis, round, &m.me, v);
            seeds.push((seed.mask_seed(), pair_sign(&m.me, v)));
        }
        let refs: Vec<(&MaskSeed, Sign)> = seeds.iter().map(|(s, sign)| (s, *sign)).collect();
        expand_words(&refs, &mut y);
        let RoundReady { tag, holders, u2, held, .. } = self;
        Ok((RoundMasked { tag, holders, u2, held }, y))
    }
}

impl RoundMasked {
    /// U2 as this node received it, sorted.
    pub fn delivered(&self) -> Vec<String> {
        self.u2.iter().cloned().collect()
    }

    /// Check an unmask (or consistency-check) request without answering it: U3
    /// (`survivors`) and `dropped` partition U2, without repeats; U3 holds this node and
    /// at least t holders of its shares — t besides itself when it is to reveal a pair
    /// seed.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 3 (ConsistencyCheck), user: assert U3 ⊆ U2, |U3| ≥ t.
    ///
    /// `view` says what the caller knows of the request's view ([`ViewCheck`]): the
    /// guard against a split view (module doc) applies only to one not confirmed.
    pub fn check_request(
        &self,
        member: &Member,
        survivors: &[String],
        dropped: &[String],
        view: ViewCheck,
    ) -> Result<(), CryptoError> {
        let ctx = self.tag.bind(member)?;
        let at = |what: &str| ctx.at(&format!("the unmask request {what}; refusing"));
        let s: BTreeSet<String> = survivors.iter().cloned().collect();
        let mut all = s.clone();
        all.extend(dropped.iter().cloned());
        if s.len() != survivors.len() || all.len() != survivors.len() + dropped.len() {
            return Err(at("names a node twice"));
        }
        if all != self.u2 {
            return Err(at("does not partition U2"));
        }
        if dropped.contains(&member.me) {
            return Err(at("says this node dropped"));
        }
        ctx.check_holders(&s, "U3")?;
        // Revealing pair seeds, a node counts only the holders other than itself (full
        // SecAgg gives it a share of its own): otherwise a split view would need one
        // honest holder fewer than SecAgg's (module doc, "split view").
        let (m, t) = (member, ctx.params.t);
        let ViewCheck::Unconfirmed { corrupt } = view else { return Ok(()) };
        // Full SecAgg: this node's own share of b_r counts towards the server's t, and
        // every contributor holds one, in this node's U2 or not (module doc, "split
        // view"): whether or not it reveals a pair seed.
        if m.topology.holds(&m.me, &m.me) {
            let others = m.topology.holders(&m.me, s.iter().filter(|v| **v != m.me)).len();
            // U3 ⊆ U2 ⊆ U1: the holders not in U3 are the rest of U1's.
            let gone = self.holders - m.topology.holders(&m.me, &s).len();
            if others < t && gone + corrupt + 1 >= t {
                return Err(at(&format!(
                    "leaves {others} holders of this node's shares besides itself in U3, fewer than t={t}, and {gone} \
                     holders outside U3, which with {corrupt} that may be corrupt and its own share could make t"
                )));
            }
        }
        Ok(())
    }

    /// Answer the single unmask request: `survivors` is U3, `dropped` is U2∖U3. Reveals
    /// the `b_r` share of each survivor this node holds, and its round pair seed with
    /// each dropped neighbour; records `dropped` in the [`Member`], whose later rounds
    /// refuse them. Refuses (revealing nothing) unless [`RoundMasked::check_request`]
    /// passes; a request that declares this node dropped also ends its part in the
    /// analysis.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 4 (Unmasking), user: b_v,u for v ∈ U3, and for
    /// v ∈ U2∖U3 the round pair seed s_u,v,r instead of s_v,u^SK.
    pub fn unmask(
        self,
        member: &mut Member,
        survivors: &[String],
        dropped: &[String],
        view: ViewCheck,
    ) -> Result<Vec<Reveal>, CryptoError> {
        let round = self.tag.params.round;
        if let Err(e) = self.check_request(member, survivors, dropped, view) {
            if dropped.contains(&member.me) && self.tag.bind(member).is_ok() {
                member.declared_dropped = Some(round);
            }
            return Err(e);
        }
        let m = member;
        for v in dropped {
            m.dropped.entry(v.clone()).or_insert(round);
        }
        let mut out: Vec<Reveal> = self
            .held
            .iter()
            .filter(|(of, _)| survivors.contains(of))
            .map(|(of, share)| Reveal::SelfMask { of: of.clone(), share: share.clone() })
            .collect();
        for v in dropped.iter().filter(|v| m.topology.adjacent(&m.me, v)) {
            // Unwrap safety: an adjacent member of U2 is a neighbour in the roster.
            let agreed = m.agreed.get(v).expect("an agreement with every neighbour");
            let seed = round_pair_seed(&agreed.mask, &m.analysis, &round, &m.me, v);
            out.push(Reveal::PairSeed { of: v.clone(), seed });
        }
        Ok(out)
    }
    /// Test hook (feature `test-util`, never in production builds): what this node
    /// holds for the round once masked — its share of each member of U2's `b_r`, and
    /// its pair seed with each neighbour in U2 — as a node colluding with the server
    /// would hand it over.
    #[cfg(feature = "test-util")]
    #[allow(clippy::type_complexity)] // (shares by peer, pair seeds by peer)
    pub fn test_util_held(&self, member: &Member) -> (Vec<(String, Share)>, Vec<(String, PairSeed)>) {
        let shares = self.held.iter().map(|(of, s)| (of.clone(), s.clone())).collect();
        let seeds = self
            .u2
            .iter()
            .filter_map(|v| Some((v.clone(), member.test_util_pair_seed(v, &self.tag.params.round)?)))
            .collect();
        (shares, seeds)
    }
}
