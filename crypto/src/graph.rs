//! The SecAgg+ communication graph (Bell, Bonawitz, Gascón, Lepoint, Raykova, CCS 2020,
//! "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", ePrint 2020/704):
//! each node shares keys and masks only with its neighbours in a random Harary graph
//! H(n, k) of degree k = O(log n), instead of with every node as in full SecAgg
//! (Bonawitz et al. CCS 2017). Pure: no I/O, no clock. This is the part every node
//! recomputes for itself, so that no label from the coordinator is trusted; the wire
//! messages that carry its inputs are in `docs/protocol.md` (SecAgg+).
//!
//! Citations name the paper's constructions (the random Harary graph; the
//! semi-malicious variant, where the server may lie about who dropped) rather than its
//! section numbers: the paper's text was not reachable where this was written, and the
//! numbers were not checked. The formulas are checked against the authors' reference
//! implementation instead (below).
//!
//! # Who chooses the graph: commit, then reveal
//!
//! HQ runs the coordinator, the CA and several nodes, so the coordinator must not
//! choose the graph (it would surround a target with HQ's nodes). The graph comes from
//! a seed no party alone controls:
//!
//! 1. Round 0 (AdvertiseKeys): each node draws a fresh 32-byte nonce and sends
//!    [`nonce_commitment`] (SHA-256 over the round, its name and the nonce) together
//!    with its advertised keys, signed like them.
//! 2. The coordinator relays the roster of commitments, signed by the coordinator (the
//!    signed roster payload, bytes the caller builds and signs).
//! 3. Only after it has checked that signed roster, and found its own commitment in it
//!    unchanged, does a node reveal its nonce. The coordinator relays the reveals; each
//!    node checks every reveal against the roster ([`check_reveals`]) and that every
//!    committed node revealed: a missing reveal stops the round (the coordinator
//!    stops it; a node shown fewer reveals refuses).
//! 4. seed = HKDF-SHA256 over (the signed round roster ‖ the signed commitments ‖
//!    every node's (name, nonce) in roster order) ([`graph_seed`]); the graph is
//!    [`Graph::harary`] over every committed node, with the k of [`choose`] signed in
//!    the round start.
//!
//! **Why an honest node's nonce is fixed before anyone else's is revealed, and others'
//! before its own.** The node reveals only after it holds the coordinator's signature
//! over every commitment of the round; SHA-256 is binding, so no commitment in that
//! roster can later open to a second nonce (a reveal that does not open its commitment
//! is refused, [`check_reveals`]); and the node's nonce is 256 fresh random bits,
//! hidden by the commitment until it reveals. So every nonce that enters the seed was
//! fixed before the honest node's nonce was known to anyone, and the seed is uniformly
//! random to everyone who fixed anything before that moment (in the random-oracle model
//! for SHA-256 and HKDF): one honest node suffices.
//!
//! **What the coordinator can still bias.** After the reveals it knows every nonce. It
//! cannot choose whose reveals count — the graph is over every committed node, and a
//! missing reveal stops the round — so its only lever is to stop the round (its own
//! nodes can withhold their reveals, or it can drop a node) and start a new one, with a
//! new round id and new nonces: one fresh graph per restart, each restart a stopped
//! round in every node's audit log. Its chance that an event of probability ε per
//! random graph happens after N restarts is at most N·ε (union bound): with σ = 40
//! below, a coordinator that restarts 2^20 times still meets a bad graph with
//! probability below 2^-20. (Had the graph been drawn over the revealed nodes only,
//! dropping any 2 of 1,000 nodes would already give about 2^19 graphs to choose from
//! in one round.) Every node also checks, deterministically
//! and on the graph it computed itself, the rules that matter against HQ's *known* nodes
//! and the c colluding organisations it assumes (`fedcrm_analysis::neighbourhood`):
//! grinding can only find graphs that pass those checks. What grinding can still buy
//! is a graph that is bad against *undeclared* corrupt nodes (the fraction γ below),
//! bounded by N·2^-σ, and liveness (a round that fails), which dropping nodes already
//! buys. Every restart and every left-out reveal is in the nodes' audit logs.
//!
//! **Equivocation.** A coordinator that relays different signed rosters or different
//! sets of reveals to different nodes gives them different seeds, so different graphs;
//! each node's checks then hold on its own graph only. The wiring must bind the seed
//! into what the survivors sign at the consistency check (Bonawitz et al. 2017, Fig. 4,
//! Round 3), so that two views of the graph are caught before anyone unmasks, as two
//! views of U3 are today.
//!
//! # The graph
//!
//! [`Graph::harary`]: a uniformly random permutation of the sorted roster (Fisher–Yates,
//! each index drawn by rejection sampling from the AES-128-CTR expansion of
//! [`crate::prg`] keyed by the seed), and the node at position i is adjacent to the
//! positions i ± 1, …, i ± k/2 (mod n): a k-regular, k-connected circulant graph (Bell
//! et al. 2020's random Harary graph). For k ≥ n − 1 it is the
//! complete graph (full SecAgg).
//!
//! # The parameters
//!
//! [`parameters`] finds the smallest even k and its threshold t (of k shares, a node's
//! secrets need t to reconstruct) such that, when a fraction γ of the n nodes is
//! corrupt and a fraction δ drops, placed independently of the random permutation:
//!
//! 1. the graph of the remaining nodes stays connected, except with probability below
//!    2^-(σ+1). Removing a set R disconnects H(n, k) only if R holds k/2 consecutive
//!    positions at two places of the ring; there are n(n − k − 1)/2 such pairs, and k
//!    given positions all fall in a random set of ⌊γn⌋ + ⌊δn⌋ with probability
//!    (⌊γn⌋+⌊δn⌋)_k / (n)_k (falling factorials), so the bound is their product;
//! 2. every node has at most t₁ corrupt neighbours, where t₁ is the smallest value with
//!    Pr(X > t₁) < 2^-(σ+1)/n for X ~ Hypergeometric(n, ⌊γn⌋, k) (a union bound over the
//!    n nodes), and t is the smallest with 2t > k + t₁. A server that shows different
//!    neighbours different views of who dropped can ask some of a node's honest
//!    neighbours for its self-mask share and the others for its mask-key share; each
//!    honest neighbour reveals one of the two, the C corrupt ones both, so the server
//!    holds t of each only if 2t ≤ C + k (t shares of each from C + (k − C) holders);
//! 3. every node keeps at least t surviving neighbours, except with probability below
//!    2^-η/n for each: Pr(S ≤ t − 1) < 2^-η/n for S ~ Hypergeometric(n, ⌈(1 − δ)n⌉, k).
//!
//! Conditions 1–2 are security (σ, split evenly between the two events), 3 correctness
//! (η). These are Bell et al. 2020's conditions for their semi-malicious variant
//! (the server may lie about dropouts), computed exactly as the authors'
//! reference implementation does (google-parfait/federated-compute,
//! `fcp/secagg/server/graph_parameter_finder.cc`, σ = 40, η = 20): the paper's own
//! table was not reachable from where this was written, so `crypto/tests/graph.rs`
//! reproduces rows of that implementation's table of precomputed (n, γ, δ) → (k, t)
//! instead, and checks connectivity by Monte Carlo.
//!
//! Defaults ([`GraphConfig::default`]): σ = 40, η = 20, and they tolerate a fraction
//! γ = 0.10 of corrupt nodes (HQ's own and colluding, together) and δ = 0.10 of dropouts;
//! full SecAgg below n = 100. That gives (n → k, t): 100 → 32, 22; 200 → 56, 39;
//! 500 → 82, 57; 1,000 → 96, 67; 10,000 → 122, 85. Each node's own deterministic rule
//! (2t > k + HQ neighbours + C) is checked on top, on the graph it computed.

use std::collections::BTreeMap;

use ring::digest;

use crate::RoundId;
use crate::kdf;
use crate::prg::{self, MaskSeed};
use crate::secagg::Topology;

/// Errors of the graph: a bad roster or degree (our bug or a peer's), or a reveal that
/// does not open its commitment (the revealing node's fault, or the relay's).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GraphError {
    #[error("graph: the roster must be non-empty, sorted and without duplicates")]
    Roster,
    #[error("graph: degree k = {k} for n = {n} nodes must be even and at least 2 (or at least n - 1: complete)")]
    Degree { k: usize, n: usize },
    #[error("round {round}: node {node} revealed a nonce that does not open its commitment")]
    NonceMismatch { round: RoundId, node: String },
    #[error("round {round}: reveal by {node} is not in the signed roster of commitments, or out of roster order")]
    RevealNotCommitted { round: RoundId, node: String },
    #[error(
        "graph: node {node} has {got} distinct neighbours, expected {expected}, or a loop, or an edge with no edge back"
    )]
    Irregular { node: String, got: usize, expected: usize },
    #[error(
        "graph parameters: corrupt fraction {corrupt} and dropout fraction {dropout} must lie in [0, 1) with \
         corrupt + 2 x dropout < 1"
    )]
    Fractions { corrupt: f64, dropout: f64 },
}

/// Labels bound into every derivation of this module (with the protocol version and
/// the round, by [`kdf::context`]).
const COMMIT_LABEL: &str = "graph-nonce-commitment";
const SEED_LABEL: &str = "graph-seed";
const PERMUTATION_LABEL: &str = "graph-permutation";

/// SHA-256(context(version, "graph-nonce-commitment", round, node, nonce)): what a node
/// sends in round 0 before anyone reveals. Binding by SHA-256's collision resistance,
/// hiding because the nonce is 256 fresh random bits.
pub fn nonce_commitment(round: &RoundId, node: &str, nonce: &[u8; 32]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, &kdf::context(COMMIT_LABEL, round, &[node.as_bytes(), nonce]));
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Does `nonce` open `node`'s `commitment` in `round`? Commitments and revealed nonces
/// are public, so a plain comparison leaks nothing.
pub fn check_nonce(round: &RoundId, node: &str, nonce: &[u8; 32], commitment: &[u8; 32]) -> Result<(), GraphError> {
    if nonce_commitment(round, node, nonce) != *commitment {
        return Err(GraphError::NonceMismatch { round: *round, node: node.to_owned() });
    }
    Ok(())
}

/// Checks the reveals the coordinator relayed against the signed roster of commitments
/// (sorted by name, as every roster): each revealed name is in the roster, in roster
/// order, once, and its nonce opens its commitment. Returns the revealed names: the
/// roster the graph is built over. Nodes left out did not reveal (or the coordinator
/// dropped them): they are out of the round.
pub fn check_reveals(
    round: &RoundId,
    committed: &[(String, [u8; 32])],
    revealed: &[(String, [u8; 32])],
) -> Result<Vec<String>, GraphError> {
    if committed.is_empty() || committed.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(GraphError::Roster);
    }
    let mut next = 0;
    let mut names = Vec::with_capacity(revealed.len());
    for (node, nonce) in revealed {
        let Some(offset) = committed[next..].iter().position(|(n, _)| n == node) else {
            return Err(GraphError::RevealNotCommitted { round: *round, node: node.clone() });
        };
        let (_, commitment) = &committed[next + offset];
        check_nonce(round, node, nonce, commitment)?;
        names.push(node.clone());
        next += offset + 1;
    }
    Ok(names)
}

/// The public seed of a round's graph. Not a secret: once the nonces are revealed,
/// every node and the coordinator compute it.
#[derive(Clone, PartialEq, Eq)]
pub struct GraphSeed {
    round: RoundId,
    bytes: [u8; 32],
}

impl GraphSeed {
    pub fn round(&self) -> &RoundId {
        &self.round
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
}

impl std::fmt::Debug for GraphSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex: String = self.bytes.iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "GraphSeed({}, {hex})", self.round)
    }
}

/// seed = HKDF-SHA256(salt = version, ikm = signed roster payload ‖ each revealed
/// (name, nonce) in roster order, info = context(version, "graph-seed", round)); every
/// element is length-prefixed, so no two inputs collide. `revealed` is the output of
/// [`check_reveals`]'s input: the reveals, already checked.
pub fn graph_seed(round: &RoundId, signed_roster: &[u8], revealed: &[(String, [u8; 32])]) -> GraphSeed {
    let mut ikm = Vec::with_capacity(signed_roster.len() + revealed.len() * 64 + 16);
    let mut push = |b: &[u8]| {
        ikm.extend_from_slice(&(b.len() as u64).to_be_bytes());
        ikm.extend_from_slice(b);
    };
    push(signed_roster);
    push(&(revealed.len() as u64).to_be_bytes());
    for (node, nonce) in revealed {
        push(node.as_bytes());
        push(nonce);
    }
    let key = kdf::derive(&ikm, &kdf::context(SEED_LABEL, round, &[]));
    GraphSeed { round: *round, bytes: *key.bytes() }
}

/// A deterministic stream of 64-bit words from the seed: the AES-128-CTR expansion of
/// [`prg::expand`], keyed by an HKDF output of the seed under its own label. When more
/// words are needed than were expanded, the stream is expanded again, twice as long
/// (CTR from the same key: the first words are the same, so the stream continues).
struct Words {
    seed: MaskSeed,
    words: Vec<u64>,
    next: usize,
}

impl Words {
    fn new(seed: &GraphSeed, expected: usize) -> Self {
        let key = kdf::derive(&seed.bytes, &kdf::context(PERMUTATION_LABEL, &seed.round, &[]));
        let seed = MaskSeed::from_bytes(*key.bytes());
        let words = prg::expand(&seed, expected.max(16));
        Self { seed, words, next: 0 }
    }

    fn word(&mut self) -> u64 {
        if self.next == self.words.len() {
            self.words = prg::expand(&self.seed, self.words.len() * 2);
        }
        self.next += 1;
        self.words[self.next - 1]
    }

    /// Uniform in [0, m), m ≥ 1, without modulo bias: a word in the last, partial run
    /// of m values below 2^64 is rejected (probability < m / 2^64) and another drawn.
    fn below(&mut self, m: u64) -> u64 {
        let limit = (1u128 << 64) / u128::from(m) * u128::from(m);
        loop {
            let w = self.word();
            if u128::from(w) < limit {
                return w % m;
            }
        }
    }
}

/// The roster in the seed's random order: Fisher–Yates (Knuth, TAOCP vol. 2, §3.4.2,
/// Algorithm P) over the sorted roster, each swap index uniform by rejection sampling.
/// Every node computes the same order from the same seed.
pub fn permutation(roster: &[String], seed: &GraphSeed) -> Result<Vec<String>, GraphError> {
    if roster.is_empty() || roster.windows(2).any(|w| w[0] >= w[1]) {
        return Err(GraphError::Roster);
    }
    let mut order = roster.to_vec();
    let mut words = Words::new(seed, roster.len() + 8);
    for i in (1..order.len()).rev() {
        let j = words.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    Ok(order)
}

/// A round's communication graph: whom each node shares keys and masks with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    degree: usize,
    order: Vec<String>,
    adjacency: BTreeMap<String, Vec<String>>,
}

impl Graph {
    /// The random Harary graph H(n, k) over `roster` (sorted, unique) from `seed`: the
    /// node at position i of [`permutation`] is adjacent to positions i ± 1, …, i ± k/2
    /// (mod n). k must be even and at least 2; k ≥ n − 1 gives the complete graph.
    ///
    /// Bell et al. CCS 2020, the random Harary graph; Harary, "The maximum
    /// connectivity of a graph", PNAS 1962 (H(n, k) is k-connected).
    pub fn harary(roster: &[String], k: usize, seed: &GraphSeed) -> Result<Graph, GraphError> {
        let order = permutation(roster, seed)?;
        let n = order.len();
        if k + 1 >= n {
            return Ok(Self::complete_over(order));
        }
        if k < 2 || k % 2 == 1 {
            return Err(GraphError::Degree { k, n });
        }
        let mut adjacency = BTreeMap::new();
        for (i, node) in order.iter().enumerate() {
            // k ≤ n − 2, so the offsets ±1..±k/2 name k distinct positions other than i.
            let mut near: Vec<String> =
                (1..=k / 2).flat_map(|j| [order[(i + j) % n].clone(), order[(i + n - j) % n].clone()]).collect();
            near.sort_unstable();
            adjacency.insert(node.clone(), near);
        }
        Ok(Graph { degree: k, order, adjacency })
    }

    /// The complete graph over `roster` (sorted, unique): full SecAgg.
    pub fn complete(roster: &[String]) -> Result<Graph, GraphError> {
        if roster.is_empty() || roster.windows(2).any(|w| w[0] >= w[1]) {
            return Err(GraphError::Roster);
        }
        Ok(Self::complete_over(roster.to_vec()))
    }

    fn complete_over(order: Vec<String>) -> Graph {
        let mut sorted = order.clone();
        sorted.sort_unstable();
        let adjacency =
            sorted.iter().map(|a| (a.clone(), sorted.iter().filter(|b| *b != a).cloned().collect())).collect();
        Graph { degree: order.len() - 1, order, adjacency }
    }

    /// Every node's degree: k, or n − 1 for the complete graph.
    pub fn degree(&self) -> usize {
        self.degree
    }

    pub fn is_complete(&self) -> bool {
        self.degree + 1 == self.order.len()
    }

    /// The nodes in their positions on the ring.
    pub fn order(&self) -> &[String] {
        &self.order
    }

    /// `node`'s neighbours, sorted; `None` if `node` is not in the graph.
    pub fn neighbours(&self, node: &str) -> Option<&[String]> {
        self.adjacency.get(node).map(Vec::as_slice)
    }

    pub fn is_neighbour(&self, a: &str, b: &str) -> bool {
        self.neighbours(a).is_some_and(|near| near.binary_search_by(|n| n.as_str().cmp(b)).is_ok())
    }

    /// Every node's sorted neighbour list, by name: the plain adjacency the round rules
    /// take (`fedcrm_analysis::neighbourhood`).
    pub fn adjacency(&self) -> &BTreeMap<String, Vec<String>> {
        &self.adjacency
    }

    /// The graph as a SecAgg+ round's [`Topology`]: always the graph, even when it is
    /// complete (k = n − 1), so that each node's secrets go to its neighbours only and
    /// its own rule 2t > k + H + C (`fedcrm_analysis::neighbourhood`) is the one the
    /// shares obey. (Full SecAgg's [`Topology::Complete`] also gives a node a share of
    /// its own; its rule counts n, the node included.)
    pub fn topology(&self) -> Topology {
        let adjacency = self.adjacency.iter().map(|(u, ns)| (u.clone(), ns.iter().cloned().collect())).collect();
        // Unwrap safety: symmetric, loop-free and over `order` by construction (`Graph::harary`).
        let mut roster = self.order.clone();
        roster.sort();
        Topology::graph(&roster, adjacency).expect("a Harary graph is symmetric and loop-free")
    }

    /// Checks what every node relies on: each node has exactly [`Graph::degree`]
    /// distinct neighbours, never itself, and adjacency is symmetric.
    pub fn check_regular(&self) -> Result<(), GraphError> {
        for (node, near) in &self.adjacency {
            let distinct = near.windows(2).all(|w| w[0] < w[1]);
            let symmetric = near.iter().all(|v| v != node && self.is_neighbour(v, node));
            if near.len() != self.degree || !distinct || !symmetric {
                return Err(GraphError::Irregular { node: node.clone(), got: near.len(), expected: self.degree });
            }
        }
        Ok(())
    }
}

/// Full SecAgg or SecAgg+, and SecAgg+'s degree and per-neighbourhood threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The complete graph; the round's threshold comes from the round rules
    /// (`fedcrm_analysis::rules::check_threshold`: 2t > n + H + C).
    Full,
    /// A random Harary graph of degree `k`; each node's secrets are shared t-of-k
    /// among its neighbours.
    Plus { k: usize, t: usize },
}

/// How [`choose`] picks the mode: the threat the parameters must withstand and the
/// size below which full SecAgg is used anyway.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GraphConfig {
    /// Below this many nodes, full SecAgg (default 100: below it k would be most of n,
    /// and the complete graph's deterministic rules are simpler to reason about).
    pub full_below: usize,
    /// γ: the fraction of nodes that may be corrupt (HQ's own and colluding). A
    /// planner should pass at least HQ's known fraction of the roster.
    pub corrupt_fraction: f64,
    /// δ: the fraction of nodes that may drop out.
    pub dropout_fraction: f64,
    /// σ: the graph is insecure with probability below 2^-σ (default 40).
    pub security_bits: u32,
    /// η: a node's secrets cannot be reconstructed with probability below 2^-η
    /// (default 20, as Bell et al.'s reference implementation).
    pub correctness_bits: u32,
}

impl Default for GraphConfig {
    fn default() -> Self {
        Self {
            full_below: 100,
            corrupt_fraction: 0.10,
            dropout_fraction: 0.10,
            security_bits: 40,
            correctness_bits: 20,
        }
    }
}

/// The mode for a round of `n` nodes: full SecAgg below `config.full_below`, when no
/// k < n − 1 meets the bounds, or when the bounds need k ≥ n − 1; SecAgg+ otherwise.
pub fn choose(n: usize, config: &GraphConfig) -> Result<Mode, GraphError> {
    if n < config.full_below {
        check_fractions(config.corrupt_fraction, config.dropout_fraction)?;
        return Ok(Mode::Full);
    }
    Ok(parameters(n, config.corrupt_fraction, config.dropout_fraction, config.security_bits, config.correctness_bits)?
        .unwrap_or(Mode::Full))
}

fn check_fractions(corrupt: f64, dropout: f64) -> Result<(), GraphError> {
    let ok = (0.0..1.0).contains(&corrupt) && (0.0..1.0).contains(&dropout) && corrupt + 2.0 * dropout < 1.0;
    if !ok {
        return Err(GraphError::Fractions { corrupt, dropout });
    }
    Ok(())
}

/// Counts of nodes from fractions: the fractions are decimals (0.05, 0.33) that binary
/// floating point holds slightly below their value; adding 1e-14 before rounding keeps
/// ⌊0.33 · 100⌋ = 33, and is far too small to round anything the other way.
const FRACTION_SLACK: f64 = 1e-14;

/// The smallest even k < n − 1, with its threshold t, meeting conditions 1–3 of the
/// module doc for `n` nodes, corrupt fraction γ, dropout fraction δ, security σ and
/// correctness η; `None` if no such k exists (use full SecAgg).
///
/// Bell et al. CCS 2020 (random Harary graph; semi-malicious server);
/// as in the authors' `fcp/secagg/server/graph_parameter_finder.cc`.
pub fn parameters(
    n: usize,
    corrupt_fraction: f64,
    dropout_fraction: f64,
    security_bits: u32,
    correctness_bits: u32,
) -> Result<Option<Mode>, GraphError> {
    check_fractions(corrupt_fraction, dropout_fraction)?;
    let nf = n as f64;
    let corrupt = ((corrupt_fraction + FRACTION_SLACK) * nf).floor() as usize;
    let dropped = ((dropout_fraction + FRACTION_SLACK) * nf).floor() as usize;
    let surviving = (((1.0 - dropout_fraction - FRACTION_SLACK) * nf).ceil() as usize).min(n);
    let bad = corrupt + dropped;
    // σ is split evenly between the two security events (disconnection; too many
    // corrupt neighbours somewhere).
    let per_event = (-f64::from(security_bits + 1)) * std::f64::consts::LN_2;
    let per_node_security = (per_event - nf.ln()).exp();
    let per_node_correctness = ((-f64::from(correctness_bits)) * std::f64::consts::LN_2 - nf.ln()).exp();
    // ln of (bad)_k / (n)_k, extended by two factors per step of k.
    let mut ln_all_bad = 0.0f64;
    let mut k = 2;
    while k + 1 < n {
        for i in k - 2..k {
            ln_all_bad += if i < bad { ((bad - i) as f64 / (n - i) as f64).ln() } else { f64::NEG_INFINITY };
        }
        // Condition 1: connected after removing the corrupt and dropped nodes.
        let ln_gap_pairs = nf.ln() + ((n - k - 1) as f64).ln() - std::f64::consts::LN_2;
        if ln_gap_pairs + ln_all_bad < per_event {
            // Condition 2: t₁ bounds every node's corrupt neighbours; 2t > k + t₁.
            let t1 = Hypergeometric::new(n, corrupt, k).upper_quantile(per_node_security);
            let t = ((k + t1) / 2 + 1).max(2);
            // Condition 3: at least t neighbours survive.
            if t <= k && Hypergeometric::new(n, surviving, k).cdf(t - 1) < per_node_correctness {
                return Ok(Some(Mode::Plus { k, t }));
            }
        }
        k += 2;
    }
    Ok(None)
}

/// The number of marked items among `draws` drawn without replacement from `total`, of
/// which `marked` are marked: how many of a node's k neighbours fall in a set of given
/// size when the graph's permutation is uniformly random.
struct Hypergeometric {
    lo: usize,
    /// pmf[x − lo] for x in lo..=hi.
    pmf: Vec<f64>,
}

impl Hypergeometric {
    fn new(total: usize, marked: usize, draws: usize) -> Self {
        let lo = (draws + marked).saturating_sub(total);
        let hi = draws.min(marked);
        // Unnormalised weights, from the mode outward by the ratio of consecutive terms:
        // p(x+1)/p(x) = (marked − x)(draws − x) / ((x + 1)(total − marked − draws + x + 1)).
        // The mode's weight is 1, so nothing that matters underflows; normalising by the
        // sum avoids factorials altogether.
        let ratio = |x: usize| {
            ((marked - x) as f64 * (draws - x) as f64) / ((x + 1) as f64 * (total + x + 1 - marked - draws) as f64)
        };
        let mode = (((draws + 1) as f64 * (marked + 1) as f64 / (total + 2) as f64).floor() as usize).clamp(lo, hi);
        let mut w = vec![0.0f64; hi - lo + 1];
        w[mode - lo] = 1.0;
        for x in mode..hi {
            w[x + 1 - lo] = w[x - lo] * ratio(x);
        }
        for x in (lo..mode).rev() {
            w[x - lo] = w[x + 1 - lo] / ratio(x);
        }
        // Smallest terms first, for an accurate sum.
        let mut sorted = w.clone();
        sorted.sort_by(f64::total_cmp);
        let sum: f64 = sorted.iter().sum();
        Self { lo, pmf: w.into_iter().map(|v| v / sum).collect() }
    }

    fn hi(&self) -> usize {
        self.lo + self.pmf.len() - 1
    }

    /// The smallest a with Pr(X > a) < q (0 < q ≤ 1).
    fn upper_quantile(&self, q: f64) -> usize {
        let mut tail = 0.0; // Pr[X > a], summed from the top (smallest terms first)
        let mut a = self.hi();
        while a > self.lo {
            let wider = tail + self.pmf[a - self.lo];
            if wider >= q {
                return a;
            }
            tail = wider;
            a -= 1;
        }
        self.lo
    }

    /// Pr(X ≤ y), summed from the bottom.
    fn cdf(&self, y: usize) -> f64 {
        if y < self.lo {
            return 0.0;
        }
        self.pmf[..=(y - self.lo).min(self.pmf.len() - 1)].iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypergeometric_sums_to_one_and_matches_a_small_case() {
        // 10 items, 4 marked, draw 3: Pr[X = 0] = C(6,3)/C(10,3) = 20/120.
        let h = Hypergeometric::new(10, 4, 3);
        assert!((h.pmf.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((h.cdf(0) - 20.0 / 120.0).abs() < 1e-12);
        // Pr[X = 3] = C(4,3)/120 = 4/120: the smallest a with Pr[X > a] < 0.05 is 2.
        assert_eq!(h.upper_quantile(0.05), 2);
        assert_eq!(h.upper_quantile(0.01), 3);
        // No marked items: X = 0 always.
        assert_eq!(Hypergeometric::new(100, 0, 10).upper_quantile(1e-12), 0);
    }
}
