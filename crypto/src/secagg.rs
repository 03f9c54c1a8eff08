//! Secure aggregation with dropout recovery (Bonawitz et al. CCS 2017, "Practical
//! Secure Aggregation for Privacy-Preserving Machine Learning", Fig. 4, Rounds 0–4;
//! the signatures of its active-adversary version are the caller's, over the payloads
//! built here). Pure: no I/O, no clock. Each function cites the step it implements.
//!
//! A round over a roster U1 (sorted node names; position i has Shamir x = i+1):
//! 0. every node makes two X25519 pairs (share encryption `c`, masks `s`) and signs
//!    [`key_signing_payload`] with its certified long-term key (signing is the
//!    caller's: it owns that key);
//! 1. each node Shamir-shares its self-mask seed `b` and its mask secret `s_sk`
//!    t-of-|U1| and seals each peer's shares to that peer (HKDF over X25519 →
//!    ChaCha20-Poly1305, context = version ‖ round ‖ sender ‖ receiver); the caller
//!    signs each ciphertext with [`share_signing_payload`];
//!    each node opens the shares delivered to it ([`ClientShared::open`]) and names
//!    the senders whose shares do not open; the server removes them and sends the
//!    final U2 ([`ClientOpened::finish`]) before anyone masks;
//! 2. over U2 (those whose shares were delivered) each node sends
//!    `y = x + PRG(b) + Σ_{v>u} PRG(s_uv) − Σ_{v<u} PRG(s_uv)` in Z_2^32 or Z_2^64,
//!    as the round's [`WordWidth`] says (the narrowest its sum fits);
//! 3. the server names U3 (whose `y` arrived) and the dropped set U2∖U3; each node
//!    reveals, for each peer, the `b` share if it survived or the `s_sk` share if it
//!    dropped — never both — and refuses if fewer than t survivors remain;
//! 4. the server removes the masks and obtains exactly Σ_{u∈U3} x_u.
//!
//! Client and server states are types consumed by value, so a client cannot be
//! asked to unmask twice in one round.

use std::collections::{BTreeMap, BTreeSet};

use zeroize::Zeroize;

use crate::graph::GraphSeed;
use crate::kdf::{self, DerivedKey};
use crate::keys::{RoundPublic, RoundSecret};
use crate::prg::{self, MaskSeed, Sign};
use crate::shamir::{self, SHARE_Y_LEN, Share};
pub use crate::word::{WordWidth, Words};
use crate::{CryptoError, RoundId, SecureRandom, aead};

/// Default threshold for n participants: ⌊2n/3⌋ + 1 (always > n/2).
pub fn default_threshold(n: usize) -> usize {
    2 * n / 3 + 1
}

/// A threshold must exceed n/2 (so two disjoint survivor sets cannot both unmask)
/// and be at least 2 (one node alone can never unmask another).
pub fn check_threshold(t: usize, n: usize) -> Result<(), CryptoError> {
    if t < 2 || t > n || 2 * t <= n {
        return Err(CryptoError::Threshold { t, n });
    }
    Ok(())
}

/// The rounds of the protocol, numbered as in Bonawitz et al. CCS 2017, Fig. 4.
/// Node and coordinator name a round's progress with this one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Round 0: each node advertises two signed public keys.
    AdvertiseKeys = 0,
    /// Round 1: each node sends Shamir shares of its secrets, sealed to each peer.
    ShareKeys = 1,
    /// Round 2: each node of U2 sends its masked input.
    MaskedInputCollection = 2,
    /// Round 3: each survivor signs (round, U2, U3).
    ConsistencyCheck = 3,
    /// Round 4: each survivor holding t signatures on one view reveals one share per peer.
    Unmasking = 4,
}

impl Phase {
    /// `round 2 (masked input)`, for logs and errors.
    pub fn name(self) -> &'static str {
        match self {
            Phase::AdvertiseKeys => "round 0 (advertise keys)",
            Phase::ShareKeys => "round 1 (share keys)",
            Phase::MaskedInputCollection => "round 2 (masked input)",
            Phase::ConsistencyCheck => "round 3 (consistency check)",
            Phase::Unmasking => "round 4 (unmasking)",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The bytes a survivor signs in the consistency check: round ‖ U2 ‖ U3 (Fig. 4 signs
/// U3 alone), so that no signature on one view of who took part counts for another.
///
/// Bonawitz et al. CCS 2017, Fig. 4, Round 3 (ConsistencyCheck), user: σ'_u ← SIG.sign(d_u^SK, U3).
///
/// In SecAgg+ the view also binds the round's graph seed (Bell et al. CCS 2020): a
/// coordinator that showed two nodes different rosters of commitments or different
/// nonces gave them different graphs, and their signatures then count for neither.
pub fn consistency_payload(
    round: &RoundId,
    graph: Option<&GraphSeed>,
    delivered: &[String],
    survivors: &[String],
) -> Vec<u8> {
    let count_u2 = (delivered.len() as u64).to_be_bytes();
    let mut parts: Vec<&[u8]> = vec![&count_u2];
    parts.extend(delivered.iter().map(|n| n.as_bytes()));
    parts.extend(survivors.iter().map(|n| n.as_bytes()));
    match graph {
        None => kdf::context("consistency", round, &parts),
        Some(seed) => {
            parts.push(seed.bytes());
            kdf::context("consistency-graph", round, &parts)
        }
    }
}

/// The bytes a node signs with its certified key to advertise its round keys.
///
/// Bonawitz et al. CCS 2017, Fig. 4, Round 0 (AdvertiseKeys), user:
/// σ_u ← SIG.sign(d_u^SK, c_u^PK ‖ s_u^PK).
///
/// In SecAgg+ the node's commitment to its graph nonce (`graph::nonce_commitment`) is
/// signed with its keys, so that nobody but the node can commit in its name.
pub fn key_signing_payload(
    round: &RoundId,
    node: &str,
    enc: &RoundPublic,
    mask: &RoundPublic,
    commitment: Option<&[u8; 32]>,
) -> Vec<u8> {
    match commitment {
        None => kdf::context("advertise-keys", round, &[node.as_bytes(), &enc.0, &mask.0]),
        Some(c) => kdf::context("advertise-keys-committed", round, &[node.as_bytes(), &enc.0, &mask.0, c]),
    }
}

/// The bytes a node signs with its certified key for each sealed share it sends:
/// round ‖ sender ‖ receiver ‖ the digest of the signed round start the sender was
/// shown ([`roster_digest`]) ‖ ciphertext, under their own label, so the receiver can
/// tell a share the sender signed (and got wrong: the sender's fault) from one the
/// relay altered (the relay's fault), and show the coordinator and an auditor which.
///
/// The roster digest binds every node of a round to one round start: a coordinator
/// that shows one node another start than the others (say, other noise, so that the
/// node charges its privacy budget for less than the release reveals — attack review
/// of issue 10) makes every share between them fail to verify, before anyone masks.
/// Every round, the first of an analysis and the later ones, has shares.
///
/// An addition to Bonawitz et al. CCS 2017, Fig. 4, Round 1 (ShareKeys), which does not sign e_u,v.
pub fn share_signing_payload(
    round: &RoundId,
    sender: &str,
    receiver: &str,
    roster: &[u8; 32],
    ciphertext: &[u8],
) -> Vec<u8> {
    kdf::context("sealed-share", round, &[sender.as_bytes(), receiver.as_bytes(), roster, ciphertext])
}

/// SHA-256 of a round's signed roster payload (the round start as the coordinator
/// signed it), as [`share_signing_payload`] binds it.
pub fn roster_digest(roster_payload: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, roster_payload);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A node's advertised public keys (after the caller has verified its signature): c_u^PK (`enc`)
/// and s_u^PK (`mask`) of Bonawitz et al. CCS 2017, Fig. 4, Round 0 (AdvertiseKeys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerKeys {
    pub name: String,
    pub enc: RoundPublic,
    pub mask: RoundPublic,
}

/// One revealed share during unmasking (Bonawitz et al. CCS 2017, Fig. 4, Round 4 (Unmasking)).
#[derive(Debug, Clone)]
pub enum Revealed {
    /// Share of a surviving peer's self-mask seed `b`.
    SelfMask { of: String, share: Share },
    /// Share of a dropped peer's mask secret `s_sk`.
    MaskKey { of: String, share: Share },
}

impl Revealed {
    pub fn of(&self) -> &str {
        match self {
            Revealed::SelfMask { of, .. } | Revealed::MaskKey { of, .. } => of,
        }
    }
}

/// Bonawitz et al. CCS 2017, Fig. 4, Round 1 (ShareKeys):
/// binds u ‖ v to e_u,v as key context and associated data (Fig. 4 puts u ‖ v in the plaintext and
/// checks it on decryption).
fn share_context(round: &RoundId, from: &str, to: &str) -> Vec<u8> {
    kdf::context("share", round, &[from.as_bytes(), to.as_bytes()])
}

/// Bonawitz et al. CCS 2017, Fig. 4, Round 2 (MaskedInputCollection):
/// s_u,v ← KA.agree(s_u^SK, s_v^PK), with the agreement hashed by HKDF (RFC 5869) bound to the
/// round and the pair; the server repeats it with a reconstructed s_u^SK in Round 4 (Unmasking).
fn pair_seed(
    secret: &RoundSecret,
    peer: &RoundPublic,
    round: &RoundId,
    a: &str,
    b: &str,
) -> Result<MaskSeed, CryptoError> {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let shared = secret.agree(peer)?;
    let k = kdf::derive(shared.bytes(), &kdf::context("pair-mask", round, &[lo.as_bytes(), hi.as_bytes()]));
    Ok(MaskSeed(*k.bytes()))
}

/// Bonawitz et al. CCS 2017, Fig. 4, Round 2 (MaskedInputCollection):
/// the seed of p_u = PRG(b_u), an HKDF (RFC 5869) output of b_u bound to the round and node.
pub(crate) fn self_seed(b: &[u8; 32], round: &RoundId, node: &str) -> MaskSeed {
    let k = kdf::derive(b, &kdf::context("self-mask", round, &[node.as_bytes()]));
    MaskSeed(*k.bytes())
}

/// Test hook (feature `test-util`): what an attacker holding a node's self-mask seed
/// `b` and mask key `s_sk` computes from its masked vector `y` — the node's input,
/// with its self mask and its pairwise masks with every other node of `u2` removed.
/// Attack tests use it to show the shares an attacker can gather do not suffice.
#[cfg(feature = "test-util")]
pub fn test_util_strip(
    round: &RoundId,
    me: &str,
    b: &[u8; 32],
    s_sk: [u8; 32],
    peers: &[PeerKeys],
    u2: &[String],
    y: &Words,
) -> Result<Vec<u64>, CryptoError> {
    let mut seeds = vec![(self_seed(b, round, me), Sign::Sub)];
    let secret = RoundSecret::from_bytes(s_sk);
    for peer in peers.iter().filter(|p| p.name != me && u2.contains(&p.name)) {
        let seed = pair_seed(&secret, &peer.mask, round, me, &peer.name)?;
        let sign = match pair_sign(me, &peer.name) {
            Sign::Add => Sign::Sub,
            Sign::Sub => Sign::Add,
        };
        seeds.push((seed, sign));
    }
    let refs: Vec<(&MaskSeed, Sign)> = seeds.iter().map(|(s, sign)| (s, *sign)).collect();
    let mut x = y.clone();
    expand_words(&refs, &mut x);
    Ok(x.to_u64())
}

/// [`prg::expand_many_into`] at the vector's own width.
pub(crate) fn expand_words(seeds: &[(&MaskSeed, Sign)], acc: &mut Words) {
    match acc {
        Words::W32(v) => prg::expand_many_into(seeds, v),
        Words::W64(v) => prg::expand_many_into(seeds, v),
    }
}

/// The sign with which `u`'s pairwise mask with `v` enters `u`'s masked vector: Δ_u,v of
/// p_u,v = Δ_u,v · PRG(s_u,v) (Bonawitz et al. CCS 2017, Fig. 4, Round 2 (MaskedInputCollection)).
pub(crate) fn pair_sign(u: &str, v: &str) -> Sign {
    if u < v { Sign::Add } else { Sign::Sub }
}

pub(crate) fn position(roster: &[String], name: &str) -> Option<usize> {
    roster.binary_search_by(|n| n.as_str().cmp(name)).ok()
}

/// Check a roster is sorted, unique and non-empty.
pub fn check_roster(roster: &[String]) -> Result<(), CryptoError> {
    if roster.is_empty() || roster.windows(2).any(|w| w[0] >= w[1]) {
        return Err(CryptoError::Protocol("roster must be non-empty, sorted and without duplicates".into()));
    }
    Ok(())
}

/// Who masks with whom, and so who holds whose shares.
///
/// Full SecAgg (Bonawitz et al. CCS 2017) is the complete graph: every node shares its
/// secrets with, and masks against, every other node of U1. SecAgg+ (Bell et al. CCS
/// 2020, Fig. 2) restricts both to a node's neighbours in a sparse graph G; the round's
/// threshold t is then a *neighbourhood* threshold: a node's secrets are split among
/// its k neighbours only (each at x = its roster position + 1), t of k, as in the
/// paper, so that a node's own rule 2t > k + H + C (`fedcrm_analysis::neighbourhood`)
/// is exactly what keeps the server from holding t shares of both its secrets. In full
/// SecAgg a node also keeps a share of its own (t of |U1|, rule 2t > n + H + C).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Topology {
    /// Full SecAgg: every pair of nodes is adjacent.
    #[default]
    Complete,
    /// SecAgg+: a symmetric adjacency, node → its neighbours (never itself), made only
    /// by [`Topology::graph`] (or `graph::Graph::topology`), which check it.
    Graph(Adjacency),
}

/// A checked SecAgg+ graph: symmetric, loop-free, over the roster. Its field is
/// private so that no caller can hand a round an unchecked one (a one-way edge would
/// make masks that do not cancel, and a wrong sum). Shared (`Arc`): every round of an
/// analysis and every state of a round clone it, at a thousand nodes a few MB each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjacency(pub(crate) std::sync::Arc<BTreeMap<String, BTreeSet<String>>>);

impl Topology {
    /// A graph over `roster` (sorted names): refuses a self-loop, an edge to a node
    /// outside the roster, or an edge one way only — every party must derive the same
    /// symmetric graph, or masks would not cancel.
    pub fn graph(roster: &[String], adjacency: BTreeMap<String, BTreeSet<String>>) -> Result<Self, CryptoError> {
        check_roster(roster)?;
        for (u, ns) in &adjacency {
            if position(roster, u).is_none() {
                return Err(CryptoError::Protocol(format!("the graph names {u}, who is not in the roster")));
            }
            for v in ns {
                if v == u {
                    return Err(CryptoError::Protocol(format!("the graph makes {u} its own neighbour")));
                }
                if !adjacency.get(v).is_some_and(|back| back.contains(u)) {
                    return Err(CryptoError::Protocol(format!(
                        "the graph has an edge {u} → {v} but not {v} → {u}; it must be symmetric"
                    )));
                }
            }
        }
        Ok(Topology::Graph(Adjacency(std::sync::Arc::new(adjacency))))
    }

    /// Whether `u` and `v` (distinct) mask against each other and hold each other's shares.
    pub fn adjacent(&self, u: &str, v: &str) -> bool {
        u != v
            && match self {
                Topology::Complete => true,
                Topology::Graph(g) => g.0.get(u).is_some_and(|ns| ns.contains(v)),
            }
    }

    /// Whether `holder` holds a share of `of`'s secrets: in full SecAgg every node of
    /// U1 does, `of` itself included; in SecAgg+ exactly `of`'s neighbours do.
    pub fn holds(&self, holder: &str, of: &str) -> bool {
        match self {
            Topology::Complete => true,
            Topology::Graph(_) => self.adjacent(holder, of),
        }
    }

    /// The members of `among` that hold `u`'s shares.
    pub(crate) fn holders<'a>(&self, u: &str, among: impl IntoIterator<Item = &'a String>) -> Vec<&'a String> {
        among.into_iter().filter(|v| self.holds(v, u)).collect()
    }
}

/// Round parameters every party agrees on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundParams {
    pub round: RoundId,
    /// Shamir threshold.
    pub t: usize,
    /// Vector length.
    pub d: usize,
    /// The words the round masks and sums in: the narrowest its sum fits, picked by the
    /// coordinator from the analysis's range and signed in the round start.
    pub width: WordWidth,
}

pub(crate) struct SelfSeed(pub(crate) [u8; 32]);
impl Drop for SelfSeed {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Client state 0: keys made, waiting for the roster of advertised keys (U1).
pub struct ClientAdvertised {
    params: RoundParams,
    me: String,
    enc: RoundSecret,
    mask: RoundSecret,
    b: SelfSeed,
}

impl std::fmt::Debug for ClientAdvertised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAdvertised").field("params", &self.params).field("me", &self.me).finish_non_exhaustive()
    }
}

/// Client state 1: shares sent, waiting for the peers' shares and U2.
pub struct ClientShared {
    params: RoundParams,
    me: String,
    enc: RoundSecret,
    mask: RoundSecret,
    b: SelfSeed,
    /// U1's names, sorted: a node's Shamir x is its position here + 1.
    roster: Vec<String>,
    /// The verified keys this node knows, sorted by name: its own and every neighbour's
    /// (all of U1 in full SecAgg).
    keys: Vec<PeerKeys>,
    topology: Topology,
    /// This node's own share of each secret (full SecAgg only).
    own: Option<(Share, Share)>,
}

impl std::fmt::Debug for ClientShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientShared").field("params", &self.params).field("me", &self.me).finish_non_exhaustive()
    }
}

/// Client state 2: holds every peer's shares; ready to mask its input.
pub struct ClientReady {
    params: RoundParams,
    me: String,
    mask: RoundSecret,
    b: SelfSeed,
    keys: Vec<PeerKeys>,
    topology: Topology,
    u2: BTreeSet<String>,
    /// Shares held for each node of U2 this node holds shares of (in full SecAgg all of U2,
    /// itself included; in SecAgg+ its neighbours): (b share, s_sk share).
    held: BTreeMap<String, (Share, Share)>,
}

impl std::fmt::Debug for ClientReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientReady").field("params", &self.params).field("me", &self.me).finish_non_exhaustive()
    }
}

/// Client state 3: masked input sent; waits for exactly one unmask request.
pub struct ClientMasked {
    params: RoundParams,
    me: String,
    topology: Topology,
    u2: BTreeSet<String>,
    /// Shares held for this node and its neighbours in U2: (b share, s_sk share).
    held: BTreeMap<String, (Share, Share)>,
}

impl std::fmt::Debug for ClientMasked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientMasked").field("params", &self.params).field("me", &self.me).finish_non_exhaustive()
    }
}

impl ClientAdvertised {
    /// Make this round's key pairs and self-mask seed. Returns the public keys to sign.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 0 (AdvertiseKeys), user:
    /// (c_u^PK, c_u^SK), (s_u^PK, s_u^SK) ← KA.gen; b_u is drawn here (Fig. 4: in Round 1).
    pub fn new(params: RoundParams, me: &str, rng: &dyn SecureRandom) -> Result<(Self, PeerKeys), CryptoError> {
        let enc = RoundSecret::generate(rng)?;
        let mask = RoundSecret::generate(rng)?;
        let mut b = SelfSeed([0u8; 32]);
        rng.fill(&mut b.0).map_err(|_| CryptoError::Random)?;
        let keys = PeerKeys { name: me.to_string(), enc: enc.public(), mask: mask.public() };
        Ok((Self { params, me: me.to_string(), enc, mask, b }, keys))
    }

    /// Given U1's verified keys (sorted by name, must contain this node's own keys
    /// unaltered and at least t nodes), split `b` and `s_sk` and seal each peer's
    /// shares. Returns (peer name, ciphertext) for every other node of U1.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 1 (ShareKeys), user:
    /// SS.share(s_u^SK, t, U1) and SS.share(b_u, t, U1), e_u,v ← AE.enc(KA.agree(c_u^SK, c_v^PK),
    /// s_u,v^SK ‖ b_u,v) for each v ∈ U1∖{u}.
    #[allow(clippy::type_complexity)] // (state, [(recipient, sealed shares)]): a named type would add API surface
    pub fn share(
        self,
        u1: Vec<PeerKeys>,
        rng: &dyn SecureRandom,
    ) -> Result<(ClientShared, Vec<(String, Vec<u8>)>), CryptoError> {
        self.share_with(u1, Topology::Complete, rng)
    }

    /// [`ClientAdvertised::share`] over `topology`: with a graph (SecAgg+), `b` and
    /// `s_sk` are split among this node's neighbours only, t-of-k, at their roster
    /// positions, and sealed to the neighbours only.
    ///
    /// Bell et al. CCS 2020, Fig. 2 (SecAgg+), Round 1 (ShareKeys): shares of s_i^SK and b_i
    /// for j ∈ N_G(i) only.
    #[allow(clippy::type_complexity)] // as `share`
    pub fn share_with(
        self,
        u1: Vec<PeerKeys>,
        topology: Topology,
        rng: &dyn SecureRandom,
    ) -> Result<(ClientShared, Vec<(String, Vec<u8>)>), CryptoError> {
        let roster: Vec<String> = u1.iter().map(|p| p.name.clone()).collect();
        self.share_among(roster, u1, topology, rng)
    }

    /// [`ClientAdvertised::share_with`] when this node knows only some of U1's keys, as
    /// in SecAgg+ on the wire, where a node receives only its neighbours' signed keys:
    /// `roster` is all of U1 (sorted names: it fixes every node's Shamir x), `keys` the
    /// verified keys of this node and of every node that holds its shares (sorted by
    /// name; others may be present and are ignored).
    #[allow(clippy::type_complexity)] // as `share`
    pub fn share_among(
        self,
        roster: Vec<String>,
        keys: Vec<PeerKeys>,
        topology: Topology,
        rng: &dyn SecureRandom,
    ) -> Result<(ClientShared, Vec<(String, Vec<u8>)>), CryptoError> {
        let round = self.params.round;
        check_roster(&roster)?;
        let key_names: Vec<String> = keys.iter().map(|p| p.name.clone()).collect();
        check_roster(&key_names)?;
        if let Some(k) = key_names.iter().find(|k| position(&roster, k).is_none()) {
            return Err(CryptoError::Protocol(format!("round {round}: keys of {k}, who is not in U1")));
        }
        let n = roster.len();
        if n < self.params.t {
            return Err(CryptoError::Protocol(format!(
                "round {round}: offered {n} participants, fewer than the threshold t={}; refusing",
                self.params.t
            )));
        }
        let my_pos = position(&roster, &self.me)
            .ok_or_else(|| CryptoError::Protocol(format!("round {round}: this node is not in the roster")))?;
        let holders: Vec<usize> = (0..n).filter(|&i| topology.holds(&roster[i], &self.me)).collect();
        if holders.len() < self.params.t {
            return Err(CryptoError::Protocol(format!(
                "round {round}: {} nodes would hold this node's shares, fewer than the threshold t={}; refusing",
                holders.len(),
                self.params.t
            )));
        }
        check_threshold(self.params.t, holders.len())?;
        let key_of = |name: &str| position(&key_names, name).map(|i| &keys[i]);
        let mine = key_of(&self.me)
            .ok_or_else(|| CryptoError::Protocol(format!("round {round}: the roster carries no keys for this node")))?;
        if mine.enc != self.enc.public() || mine.mask != self.mask.public() {
            return Err(CryptoError::Protocol(format!(
                "round {round}: the roster carries keys for this node that it did not advertise"
            )));
        }
        // Roster positions fit u32: a roster longer than 2^32 − 1 could not have been sent.
        let xs: Vec<u32> = holders.iter().map(|&i| i as u32 + 1).collect();
        let b_shares = shamir::split_at(&self.b.0, self.params.t, &xs, rng)?;
        let s_shares = shamir::split_at(self.mask.bytes(), self.params.t, &xs, rng)?;
        let mut out = Vec::with_capacity(holders.len());
        let mut own = None;
        for ((&i, b_share), s_share) in holders.iter().zip(&b_shares).zip(&s_shares) {
            if i == my_pos {
                own = Some((b_share.clone(), s_share.clone()));
                continue;
            }
            let peer = key_of(&roster[i]).ok_or_else(|| {
                CryptoError::Protocol(format!(
                    "round {round}: no keys for {}, who would hold this node's shares",
                    roster[i]
                ))
            })?;
            let ctx = share_context(&round, &self.me, &peer.name);
            let key = kdf::derive(self.enc.agree(&peer.enc)?.bytes(), &ctx);
            let mut plain = Vec::with_capacity(2 * SHARE_Y_LEN);
            for share in [b_share, s_share] {
                let mut y = share.y_bytes();
                plain.extend_from_slice(&y);
                y.zeroize();
            }
            out.push((peer.name.clone(), aead::seal(&key, &ctx, &plain)));
            plain.zeroize();
        }
        let ClientAdvertised { params, me, enc, mask, b } = self;
        Ok((ClientShared { params, me, enc, mask, b, roster, keys, topology, own }, out))
    }
}

/// Client state 1½: the delivered shares are opened; waits for the final U2 (the delivered
/// U2 less the senders of shares that did not open, removed by the coordinator).
///
/// Bonawitz et al. CCS 2017, Fig. 4, Round 2 (MaskedInputCollection), user: before masking.
pub struct ClientOpened {
    params: RoundParams,
    me: String,
    mask: RoundSecret,
    b: SelfSeed,
    keys: Vec<PeerKeys>,
    topology: Topology,
    /// U2 as first delivered (before any sender was removed).
    delivered: BTreeSet<String>,
    /// Shares held for each member of `delivered` whose share opened (and, in full SecAgg,
    /// this node's own).
    held: BTreeMap<String, (Share, Share)>,
    /// Members of `delivered` whose share did not open.
    unopened: BTreeSet<String>,
}

impl std::fmt::Debug for ClientOpened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOpened")
            .field("params", &self.params)
            .field("me", &self.me)
            .field("unopened", &self.unopened)
            .finish_non_exhaustive()
    }
}

/// A share that arrived but did not open: the sender's fault when the sender signed
/// it (the caller checks that signature before calling [`ClientShared::open`]).
#[derive(Debug, PartialEq, Eq)]
pub struct OpenFailure {
    /// Who sent it.
    pub sender: String,
    /// Why it did not open (authenticated decryption failed, or a malformed plaintext).
    pub error: CryptoError,
}

impl ClientShared {
    /// Open the ciphertexts addressed to this node, one per other member of `u2` (the
    /// nodes whose shares were delivered). `Err` when the delivery itself is wrong —
    /// the relay's fault: U2 lacks this node, names a node outside U1, has fewer than
    /// t members, or a member's share is missing. A share that arrives but does not
    /// open (AEAD failure, which covers a wrong round, sender or receiver, since all
    /// three are bound into its key and associated data; or a malformed plaintext) is
    /// returned in the list, naming its sender, for the caller to report.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 2 (MaskedInputCollection), user:
    /// receive the e_v,u and infer U2, assert |U2| ≥ t. They are decrypted here, not in Round 4,
    /// so a bad one is reported before this node masks.
    pub fn open(
        self,
        u2: &[String],
        incoming: &[(String, Vec<u8>)],
    ) -> Result<(ClientOpened, Vec<OpenFailure>), CryptoError> {
        let round = self.params.round;
        let delivered: BTreeSet<String> = u2.iter().cloned().collect();
        self.check_u2(&delivered)?;
        let names = &self.roster;
        let my_x = position(names, &self.me).map(|p| p as u32 + 1).unwrap_or(0);
        let mut held = BTreeMap::new();
        if let Some(own) = &self.own {
            held.insert(self.me.clone(), own.clone());
        }
        let mut unopened = Vec::new();
        for name in &delivered {
            if position(names, name).is_none() {
                return Err(CryptoError::Protocol(format!("round {round}: U2 names {name}, who is not in U1")));
            }
            if !self.topology.adjacent(&self.me, name) {
                // This node itself, or (SecAgg+) a node that is not its neighbour: no share.
                continue;
            }
            let ct =
                incoming.iter().find(|(from, _)| from == name).map(|(_, c)| c).ok_or_else(|| {
                    CryptoError::Protocol(format!("round {round}: no share from {name}, who is in U2"))
                })?;
            // share_among checked it holds the keys of every node adjacent to this one.
            let Some(peer) = self.keys.iter().find(|p| &p.name == name) else {
                return Err(CryptoError::Protocol(format!("round {round}: no keys for {name}, a neighbour in U2")));
            };
            match self.open_one(name, peer, my_x, ct) {
                Ok(pair) => {
                    held.insert(name.clone(), pair);
                }
                Err(error) => unopened.push(OpenFailure { sender: name.clone(), error }),
            }
        }
        let ClientShared { params, me, mask, b, keys, topology, .. } = self;
        let bad = unopened.iter().map(|u| u.sender.clone()).collect();
        Ok((ClientOpened { params, me, mask, b, keys, topology, delivered, held, unopened: bad }, unopened))
    }

    /// Receive the ciphertexts addressed to this node and U2 when nothing is to be
    /// reported: [`ClientShared::open`], failing on the first share that does not open.
    pub fn receive(self, u2: &[String], incoming: &[(String, Vec<u8>)]) -> Result<ClientReady, CryptoError> {
        let (opened, unopened) = self.open(u2, incoming)?;
        if let Some(u) = unopened.into_iter().next() {
            return Err(u.error);
        }
        opened.finish(u2)
    }

    /// Bonawitz et al. CCS 2017, Fig. 4, Round 2 (MaskedInputCollection), user:
    /// assert |U2| ≥ t (and u ∈ U2); with a graph, Bell et al. CCS 2020, Fig. 2, Round 2:
    /// assert |N_G(u) ∩ U2| ≥ t (this node's holders in U2).
    fn check_u2(&self, u2: &BTreeSet<String>) -> Result<(), CryptoError> {
        let round = self.params.round;
        let holders = self.topology.holders(&self.me, u2).len();
        if holders < self.params.t {
            return Err(CryptoError::Protocol(format!(
                "round {round}: only {holders} holders of this node's shares shared keys, fewer than t={}; refusing",
                self.params.t
            )));
        }
        if !u2.contains(&self.me) {
            return Err(CryptoError::Protocol(format!("round {round}: this node is missing from U2")));
        }
        Ok(())
    }

    /// Bonawitz et al. CCS 2017, Fig. 4, Round 4 (Unmasking), user:
    /// decrypt e_v,u with KA.agree(c_u^SK, c_v^PK) (done in Round 2 here; u ‖ v are checked through
    /// the key context and AAD).
    fn open_one(&self, from: &str, peer: &PeerKeys, my_x: u32, ct: &[u8]) -> Result<(Share, Share), CryptoError> {
        let ctx = share_context(&self.params.round, from, &self.me);
        let key: DerivedKey = kdf::derive(self.enc.agree(&peer.enc)?.bytes(), &ctx);
        let mut plain = aead::open(&key, &ctx, ct)?;
        if plain.len() != 2 * SHARE_Y_LEN {
            plain.zeroize();
            return Err(CryptoError::MalformedShare("share plaintext must be 128 bytes"));
        }
        let pair = Share::from_parts(my_x, &plain[..SHARE_Y_LEN])
            .and_then(|b| Ok((b, Share::from_parts(my_x, &plain[SHARE_Y_LEN..])?)));
        plain.zeroize();
        pair
    }
}

impl ClientOpened {
    /// The senders whose shares did not open, sorted.
    pub fn unopened(&self) -> Vec<String> {
        self.unopened.iter().cloned().collect()
    }

    /// Take the final U2: the delivered U2 less the nodes the coordinator removed. It
    /// must be a subset of the delivered U2, contain this node, have at least t
    /// members, and hold no node whose share did not open here (this node could
    /// neither mask with it safely nor help unmask it).
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 2 (MaskedInputCollection), user: assert |U2| ≥ t.
    pub fn finish(self, u2: &[String]) -> Result<ClientReady, CryptoError> {
        let round = self.params.round;
        let u2: BTreeSet<String> = u2.iter().cloned().collect();
        if let Some(x) = u2.difference(&self.delivered).next() {
            return Err(CryptoError::Protocol(format!(
                "round {round}: the final U2 names {x}, whose share was never delivered to this node"
            )));
        }
        if let Some(x) = u2.intersection(&self.unopened).next() {
            return Err(CryptoError::Protocol(format!(
                "round {round}: the final U2 keeps {x}, whose share to this node does not open and was reported"
            )));
        }
        if !u2.contains(&self.me) {
            return Err(CryptoError::Protocol(format!("round {round}: this node is missing from the final U2")));
        }
        let holders = self.topology.holders(&self.me, &u2).len();
        if holders < self.params.t {
            return Err(CryptoError::Protocol(format!(
                "round {round}: only {holders} holders of this node's shares remain in the final U2, fewer than \
                 t={}; refusing",
                self.params.t
            )));
        }
        let ClientOpened { params, me, mask, b, keys, topology, mut held, .. } = self;
        held.retain(|n, _| u2.contains(n));
        Ok(ClientReady { params, me, mask, b, keys, topology, u2, held })
    }
}

impl ClientReady {
    /// Mask `input` (length d, plain values) for the nodes of U2, in the round's word
    /// width. Refuses, naming the value, its index and the width, a value that does
    /// not fit a word of that width (it would wrap, and the sum would be wrong).
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 2 (MaskedInputCollection), user:
    /// y_u ← x_u + p_u + Σ_{v∈U2} p_u,v.
    pub fn mask(self, input: &[u64]) -> Result<(ClientMasked, Words), CryptoError> {
        if input.len() != self.params.d {
            return Err(CryptoError::Length { got: input.len(), expected: self.params.d });
        }
        let mut y = Words::from_plain(self.params.width, input)?;
        // Derive every seed first, then expand them all at once on every core.
        let mut seeds = vec![(self_seed(&self.b.0, &self.params.round, &self.me), Sign::Add)];
        for peer in &self.keys {
            if !self.topology.adjacent(&self.me, &peer.name) || !self.u2.contains(&peer.name) {
                continue;
            }
            let seed = pair_seed(&self.mask, &peer.mask, &self.params.round, &self.me, &peer.name)?;
            seeds.push((seed, pair_sign(&self.me, &peer.name)));
        }
        let refs: Vec<(&MaskSeed, Sign)> = seeds.iter().map(|(s, sign)| (s, *sign)).collect();
        expand_words(&refs, &mut y);
        let ClientReady { params, me, topology, u2, held, .. } = self;
        Ok((ClientMasked { params, me, topology, u2, held }, y))
    }
}

impl ClientMasked {
    /// Check an unmask (or consistency-check) request without answering it: U3 and
    /// dropped are disjoint, cover U2 exactly, U3 contains this node and has at
    /// least t members.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 3 (ConsistencyCheck), user:
    /// assert U3 ⊆ U2 and |U3| ≥ t.
    pub fn check_request(&self, survivors: &[String], dropped: &[String]) -> Result<(), CryptoError> {
        let round = self.params.round;
        let s: BTreeSet<&String> = survivors.iter().collect();
        let d: BTreeSet<&String> = dropped.iter().collect();
        if s.len() != survivors.len() || d.len() != dropped.len() {
            return Err(CryptoError::Protocol(format!("round {round}: unmask request lists a node twice; refusing")));
        }
        if let Some(both) = s.intersection(&d).next() {
            return Err(CryptoError::Protocol(format!(
                "round {round}: unmask request asks for both shares of {both}; refusing"
            )));
        }
        let union: BTreeSet<&String> = s.union(&d).copied().collect();
        let u2: BTreeSet<&String> = self.u2.iter().collect();
        if union != u2 {
            return Err(CryptoError::Protocol(format!(
                "round {round}: unmask request does not partition the nodes that shared keys; refusing"
            )));
        }
        if !s.contains(&self.me) {
            return Err(CryptoError::Protocol(format!(
                "round {round}: unmask request says this node dropped; refusing"
            )));
        }
        let holders = self.topology.holders(&self.me, s.iter().copied()).len();
        if holders < self.params.t {
            return Err(CryptoError::Protocol(format!(
                "round {round}: only {holders} survivors hold this node's shares, fewer than t={}; refusing to \
                 unmask",
                self.params.t
            )));
        }
        Ok(())
    }

    /// U2 as this node received it, sorted.
    pub fn delivered(&self) -> Vec<String> {
        self.u2.iter().cloned().collect()
    }

    /// Test hook (feature `test-util`, never in production builds): the shares this
    /// node holds of every node of U2, (b share, s_sk share) — what a colluding node
    /// would hand to the coordinator.
    #[cfg(feature = "test-util")]
    pub fn test_util_held_shares(&self) -> Vec<(String, Share, Share)> {
        self.held.iter().map(|(n, (b, s))| (n.clone(), b.clone(), s.clone())).collect()
    }

    /// Answer the single unmask request: `survivors` is U3, `dropped` is U2∖U3.
    /// Refuses (revealing nothing) unless [`ClientMasked::check_request`] passes.
    /// Consumes the state, so no second request in this round can be answered.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 4 (Unmasking), user:
    /// send s_v,u^SK for v ∈ U2∖U3 and b_v,u for v ∈ U3.
    pub fn unmask(self, survivors: &[String], dropped: &[String]) -> Result<Vec<Revealed>, CryptoError> {
        self.check_request(survivors, dropped)?;
        let s: BTreeSet<&String> = survivors.iter().collect();
        let mut out = Vec::with_capacity(self.held.len());
        // `held` is this node and its neighbours in U2 (all of U2 in full SecAgg).
        for (name, (b_share, s_share)) in &self.held {
            if s.contains(name) {
                out.push(Revealed::SelfMask { of: name.clone(), share: b_share.clone() });
            } else {
                out.push(Revealed::MaskKey { of: name.clone(), share: s_share.clone() });
            }
        }
        Ok(out)
    }
}

/// Server side while masked inputs arrive: holds only the running sum (O(d)).
#[derive(Debug)]
pub struct Aggregator {
    params: RoundParams,
    u1: Vec<PeerKeys>,
    topology: Topology,
    u2: BTreeSet<String>,
    sum: Words,
    included: BTreeSet<String>,
}

/// Server side after inputs close: U3 is fixed; late inputs are rejected.
#[derive(Debug)]
pub struct Unmasking {
    pub(crate) params: RoundParams,
    pub(crate) u1: Vec<PeerKeys>,
    pub(crate) topology: Topology,
    pub(crate) u2: BTreeSet<String>,
    pub(crate) sum: Words,
    pub(crate) survivors: BTreeSet<String>,
}

impl Aggregator {
    /// `u1`: verified keys of every node that advertised; `u2`: nodes whose shares were delivered.
    pub fn new(params: RoundParams, u1: Vec<PeerKeys>, u2: &[String]) -> Result<Self, CryptoError> {
        Self::with_topology(params, u1, u2, Topology::Complete)
    }

    /// [`Aggregator::new`] over `topology` (SecAgg+: the graph every party derived).
    pub fn with_topology(
        params: RoundParams,
        u1: Vec<PeerKeys>,
        u2: &[String],
        topology: Topology,
    ) -> Result<Self, CryptoError> {
        let names: Vec<String> = u1.iter().map(|p| p.name.clone()).collect();
        check_roster(&names)?;
        let u2: BTreeSet<String> = u2.iter().cloned().collect();
        if let Some(x) = u2.iter().find(|n| position(&names, n).is_none()) {
            return Err(CryptoError::Protocol(format!("{x} is in U2 but not in U1")));
        }
        let sum = Words::zeros(params.width, params.d);
        Ok(Self { params, u1, topology, u2, sum, included: BTreeSet::new() })
    }

    pub fn params(&self) -> &RoundParams {
        &self.params
    }

    /// Add a complete, validated masked vector of the round's width (on every core
    /// for long vectors: [`Words::add_assign`]).
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 2 (MaskedInputCollection), server:
    /// collect y_u from u ∈ U2.
    pub fn add_masked(&mut self, from: &str, y: &Words) -> Result<(), CryptoError> {
        if !self.u2.contains(from) {
            return Err(CryptoError::Protocol(format!("{from} sent a masked input but is not in U2")));
        }
        if self.included.contains(from) {
            return Err(CryptoError::Protocol(format!("{from} sent a second masked input")));
        }
        if y.len() != self.params.d {
            return Err(CryptoError::Length { got: y.len(), expected: self.params.d });
        }
        if y.width() != self.params.width {
            return Err(CryptoError::Width { got: y.width().bits(), expected: self.params.width.bits() });
        }
        self.sum.add_assign(y)?;
        self.included.insert(from.to_string());
        Ok(())
    }

    /// Close inputs: whoever has not sent a complete vector is dropped.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 2 (MaskedInputCollection), server:
    /// U3 = the nodes whose y_u arrived.
    pub fn close(self) -> Unmasking {
        let Aggregator { params, u1, topology, u2, sum, included } = self;
        Unmasking { params, u1, topology, u2, sum, survivors: included }
    }
}

impl Unmasking {
    pub fn survivors(&self) -> Vec<String> {
        self.survivors.iter().cloned().collect()
    }

    pub fn dropped(&self) -> Vec<String> {
        self.u2.difference(&self.survivors).cloned().collect()
    }

    pub fn params(&self) -> &RoundParams {
        &self.params
    }

    /// A late masked input: always refused once inputs are closed.
    pub fn add_masked(&mut self, from: &str, _y: &Words) -> Result<(), CryptoError> {
        Err(CryptoError::Protocol(format!(
            "round {}: masked input from {from} arrived after inputs closed; {from} is counted as dropped",
            self.params.round
        )))
    }

    /// Remove all masks using the revealed shares of at least t responders (each a
    /// survivor). Returns Σ_{u∈U3} x_u exactly, modulo 2^width, each word zero-extended
    /// to 64 bits.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 4 (Unmasking), server:
    /// reconstruct s_u^SK for dropped u and b_u for survivors;
    /// z = Σ_{u∈U3} y_u − Σ_{u∈U3} p_u + Σ_{u∈U2∖U3, v∈U3} p_u,v.
    pub fn finish(self, responses: &[(String, Vec<Revealed>)]) -> Result<Vec<u64>, CryptoError> {
        self.finish_words(responses).map(Words::into_u64)
    }

    /// [`Unmasking::finish`] without widening the sum: Σ_{u∈U3} x_u in the round's own
    /// words (half the memory at 32 bits). The unmasking itself; widening to u64 is the
    /// caller's presentation.
    pub fn finish_words(self, responses: &[(String, Vec<Revealed>)]) -> Result<Words, CryptoError> {
        let round = self.params.round;
        let t = self.params.t;
        if self.survivors.len() < t {
            return Err(CryptoError::Protocol(format!(
                "round {round}: only {} survivors, fewer than t={t}; the round cannot be unmasked",
                self.survivors.len()
            )));
        }
        let names: Vec<String> = self.u1.iter().map(|p| p.name.clone()).collect();
        let mut self_shares: BTreeMap<&str, Vec<Share>> = BTreeMap::new();
        let mut key_shares: BTreeMap<&str, Vec<Share>> = BTreeMap::new();
        let mut responders = BTreeSet::new();
        for (from, reveals) in responses {
            if !self.survivors.contains(from) {
                return Err(CryptoError::Protocol(format!(
                    "round {round}: unmask response from {from}, who is not a survivor"
                )));
            }
            if !responders.insert(from.as_str()) {
                return Err(CryptoError::Protocol(format!("round {round}: two unmask responses from {from}")));
            }
            // Unwrap safety: survivors ⊆ U2 ⊆ U1 = names, checked at construction.
            let x = position(&names, from).unwrap() as u32 + 1;
            let mut revealed_of = BTreeSet::new();
            for r in reveals {
                let share = match r {
                    Revealed::SelfMask { share, .. } | Revealed::MaskKey { share, .. } => share,
                };
                if !revealed_of.insert(r.of()) {
                    return Err(CryptoError::Protocol(format!(
                        "round {round}: {from} revealed two shares of {}; only one is allowed",
                        r.of()
                    )));
                }
                if !self.topology.holds(from, r.of()) {
                    return Err(CryptoError::Protocol(format!(
                        "round {round}: {from} revealed a share of {}, who is not its neighbour",
                        r.of()
                    )));
                }
                if share.x != x {
                    return Err(CryptoError::Protocol(format!(
                        "round {round}: {from} revealed a share with the wrong index"
                    )));
                }
                match r {
                    Revealed::SelfMask { of, share } if self.survivors.contains(of) => {
                        self_shares.entry(of.as_str()).or_default().push(share.clone())
                    }
                    Revealed::MaskKey { of, share } if self.u2.contains(of) && !self.survivors.contains(of) => {
                        key_shares.entry(of.as_str()).or_default().push(share.clone())
                    }
                    other => {
                        return Err(CryptoError::Protocol(format!(
                            "round {round}: {from} revealed the wrong kind of share for {}",
                            other.of()
                        )));
                    }
                }
            }
        }
        if responders.len() < t {
            return Err(CryptoError::Protocol(format!(
                "round {round}: {} nodes answered the unmask request, fewer than t={t}",
                responders.len()
            )));
        }
        // Collect every seed to undo, then expand them all at once on every core.
        let mut seeds: Vec<(MaskSeed, Sign)> = Vec::new();
        // Round 4, server: b_u ← SS.recon for u ∈ U3; subtract p_u = PRG(b_u).
        for u in &self.survivors {
            let shares = self_shares.get(u.as_str()).map(Vec::as_slice).unwrap_or(&[]);
            enough(round, u, "self-mask seed", shares, t)?;
            let mut b = shamir::combine(shares, t)?;
            seeds.push((self_seed(&b, &round, u), Sign::Sub));
            b.zeroize();
        }
        // Round 4, server: s_v^SK ← SS.recon for v ∈ U2∖U3; undo p_u,v for u ∈ U3.
        for v in self.u2.difference(&self.survivors) {
            let shares = key_shares.get(v.as_str()).map(Vec::as_slice).unwrap_or(&[]);
            enough(round, v, "mask key", shares, t)?;
            let sk = RoundSecret::from_bytes(shamir::combine(shares, t)?);
            // Unwrap safety: v ∈ U2 ⊆ U1 = names.
            let vk = &self.u1[position(&names, v).unwrap()];
            if sk.public() != vk.mask {
                return Err(CryptoError::Protocol(format!(
                    "round {round}: reconstructed mask key of {v} does not match its advertised key"
                )));
            }
            for u in self.survivors.iter().filter(|u| self.topology.adjacent(u, v)) {
                // Unwrap safety: u ∈ U3 ⊆ U1 = names.
                let uk = &self.u1[position(&names, u).unwrap()];
                let seed = pair_seed(&sk, &uk.mask, &round, v, u)?;
                // u added its mask with v with sign pair_sign(u, v); remove it.
                let undo = match pair_sign(u, v) {
                    Sign::Add => Sign::Sub,
                    Sign::Sub => Sign::Add,
                };
                seeds.push((seed, undo));
            }
        }
        let mut sum = self.sum;
        let refs: Vec<(&MaskSeed, Sign)> = seeds.iter().map(|(s, sign)| (s, *sign)).collect();
        expand_words(&refs, &mut sum);
        Ok(sum)
    }
}

/// At least t shares of `whose` secret arrived, or the error names whose and how many.
pub(crate) fn enough(round: RoundId, whose: &str, what: &str, shares: &[Share], t: usize) -> Result<(), CryptoError> {
    if shares.len() < t {
        return Err(CryptoError::Protocol(format!(
            "round {round}: only {} holders revealed a share of {whose}'s {what}, fewer than t={t}; the round cannot \
             be unmasked",
            shares.len()
        )));
    }
    Ok(())
}
