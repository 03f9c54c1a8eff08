//! The server side of one round of a multi-round analysis ([`super`]): the running sum
//! of [`crate::secagg::Aggregator`], and an unmasking that reconstructs each survivor's
//! round self-mask seed and removes each dropped node's pairwise masks with the round
//! pair seeds its surviving neighbours revealed. Pure: no I/O. It never reconstructs a
//! key: no share of one exists.

use std::collections::{BTreeMap, BTreeSet};

use zeroize::Zeroize;

use super::{Reveal, undo};
use crate::prg::{MaskSeed, Sign};
use crate::secagg::{
    self, PeerKeys, RoundParams, Topology, check_roster, enough, expand_words, pair_sign, position, self_seed,
};
use crate::shamir::{self, Share};
use crate::word::Words;
use crate::{CryptoError, RoundId};

/// The server's side of one analysis: the roster of setup keys and the graph, fixed
/// at setup, every round id used and every node declared dropped — so that no round
/// of the analysis reuses a round id or takes a dropped node back, whatever the
/// caller passes.
#[derive(Debug)]
pub struct Analysis {
    setup: RoundId,
    keys: Vec<PeerKeys>,
    topology: Topology,
    used: BTreeSet<RoundId>,
    dropped: BTreeMap<String, RoundId>,
}

impl Analysis {
    /// An analysis over `keys` (the verified setup keys, sorted by name, each signed
    /// under the setup round id `setup`) and `topology` (a graph over that roster, or
    /// complete).
    pub fn new(setup: RoundId, keys: Vec<PeerKeys>, topology: Topology) -> Result<Self, CryptoError> {
        let names: Vec<String> = keys.iter().map(|k| k.name.clone()).collect();
        check_roster(&names)?;
        if let Topology::Graph(g) = &topology
            && let Some(u) = g.0.keys().find(|u| position(&names, u).is_none())
        {
            return Err(CryptoError::Protocol(format!("setup {setup}: the graph names {u}, who is not in the roster")));
        }
        Ok(Self { setup, keys, topology, used: BTreeSet::new(), dropped: BTreeMap::new() })
    }

    /// The nodes declared dropped so far, each with its round.
    pub fn dropped(&self) -> Vec<(String, RoundId)> {
        self.dropped.iter().map(|(n, r)| (n.clone(), *r)).collect()
    }

    /// Start round `params.round` over `contributors` (this round's U1: sorted, from the
    /// roster) with `u2` (those whose shares were delivered). Refuses a round id already
    /// used (or the setup's), a contributor outside the roster, and one declared dropped
    /// in an earlier round: the same rules every [`super::Member`] applies.
    pub fn round(
        &mut self,
        params: RoundParams,
        contributors: &[String],
        u2: &[String],
    ) -> Result<RoundAggregator, CryptoError> {
        let round = params.round;
        let at = |what: String| CryptoError::Protocol(format!("round {round}: {what}"));
        if self.used.contains(&round) {
            return Err(at("the round id was already used in this analysis".into()));
        }
        check_roster(contributors)?;
        let mut keys = Vec::with_capacity(contributors.len());
        for v in contributors {
            if let Some(r) = self.dropped.get(v) {
                return Err(at(format!("{v} was declared dropped in round {r} and takes no further part")));
            }
            let i = position_of(&self.keys, v).ok_or_else(|| at(format!("{v} is not in the analysis's roster")))?;
            keys.push(self.keys[i].clone());
        }
        let inner = secagg::Aggregator::with_topology(params, keys, u2, self.topology.clone())?;
        self.used.insert(round);
        Ok(RoundAggregator { setup: self.setup, inner })
    }
}

fn position_of(keys: &[PeerKeys], name: &str) -> Option<usize> {
    keys.binary_search_by(|k| k.name.as_str().cmp(name)).ok()
}

/// Server side of a round while masked inputs arrive: holds only the running sum.
#[derive(Debug)]
pub struct RoundAggregator {
    /// The setup of the analysis that started this round.
    setup: RoundId,
    inner: secagg::Aggregator,
}

/// Server side of a round after inputs close: U3 is fixed.
#[derive(Debug)]
pub struct RoundUnmasking {
    inner: secagg::Unmasking,
}

impl RoundAggregator {
    pub fn params(&self) -> &RoundParams {
        self.inner.params()
    }

    /// Add a complete masked vector of the round's width.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 2 (MaskedInputCollection), server: collect y_u.
    pub fn add_masked(&mut self, from: &str, y: &Words) -> Result<(), CryptoError> {
        self.inner.add_masked(from, y)
    }

    /// Close inputs: whoever has not sent a complete vector is dropped, and
    /// `analysis` (the one that started this round) records it: no later round takes
    /// it back. Another analysis is refused.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 2 (MaskedInputCollection), server: U3.
    pub fn close(self, analysis: &mut Analysis) -> Result<RoundUnmasking, CryptoError> {
        let round = self.inner.params().round;
        if analysis.setup != self.setup || !analysis.used.contains(&round) {
            return Err(CryptoError::Protocol(format!(
                "round {round}: closed against an analysis that did not start it"
            )));
        }
        let inner = self.inner.close();
        for v in inner.dropped() {
            analysis.dropped.entry(v).or_insert(round);
        }
        Ok(RoundUnmasking { inner })
    }
}

/// The reveals of one round, sorted by kind and checked one by one.
#[derive(Default)]
struct Gathered<'a> {
    /// Shares of each survivor's b_r.
    self_shares: BTreeMap<&'a str, Vec<Share>>,
    /// (dropped v, survivor u) → s_uv,r as u revealed it.
    pair_seeds: BTreeMap<(&'a str, &'a str), MaskSeed>,
}

impl RoundUnmasking {
    pub fn survivors(&self) -> Vec<String> {
        self.inner.survivors()
    }

    pub fn dropped(&self) -> Vec<String> {
        self.inner.dropped()
    }

    pub fn params(&self) -> &RoundParams {
        self.inner.params()
    }

    /// A late masked input: always refused once inputs are closed.
    pub fn add_masked(&mut self, from: &str, y: &Words) -> Result<(), CryptoError> {
        self.inner.add_masked(from, y)
    }

    /// [`RoundUnmasking::finish_words`], each word zero-extended to 64 bits.
    pub fn finish(self, responses: &[(String, Vec<Reveal>)]) -> Result<Vec<u64>, CryptoError> {
        self.finish_words(responses).map(Words::into_u64)
    }

    /// Remove every mask: Σ_{u∈U3} x_u in the round's words. Needs t shares of each
    /// survivor's `b_r`, and from *every* survivor adjacent to a dropped node v its
    /// round pair seed with v — without one, `Err` names the survivor that withheld
    /// it, and nothing is released for this round. Refuses, naming the responder, a
    /// reveal from a non-survivor, two responses from one node, two reveals of one
    /// peer, a share of a dropped node or a share at another holder's index, and a pair
    /// seed for a survivor or for a node that is not the responder's neighbour.
    ///
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 4 (Unmasking), server: b_u ← SS.recon for
    /// u ∈ U3; z = Σ_{u∈U3} y_u − Σ_{u∈U3} p_u + Σ_{v∈U2∖U3, u∈U3} p_u,v, with each p_u,v from
    /// u's revealed s_u,v,r instead of a reconstructed s_v^SK.
    pub fn finish_words(self, responses: &[(String, Vec<Reveal>)]) -> Result<Words, CryptoError> {
        let u = &self.inner;
        let round = u.params.round;
        if u.survivors.len() < u.params.t {
            return Err(CryptoError::Protocol(format!(
                "round {round}: only {} survivors, fewer than t={}; the round cannot be unmasked",
                u.survivors.len(),
                u.params.t
            )));
        }
        let mut gathered = Gathered::default();
        let mut responders = BTreeSet::new();
        for (from, reveals) in responses {
            if !u.survivors.contains(from) {
                return Err(blame(round, from, "answered the unmask request but is not a survivor"));
            }
            if !responders.insert(from.as_str()) {
                return Err(blame(round, from, "answered the unmask request twice"));
            }
            gathered.add(u, from, reveals)?;
        }
        let mut seeds: Vec<(MaskSeed, Sign)> = Vec::new();
        // Round 4, server: b_u ← SS.recon for u ∈ U3; subtract p_u = PRG(b_u).
        for s in &u.survivors {
            let shares = gathered.self_shares.get(s.as_str()).map(Vec::as_slice).unwrap_or(&[]);
            enough(round, s, "round self-mask seed", shares, u.params.t)?;
            let mut b = shamir::combine(shares, u.params.t)?;
            seeds.push((self_seed(&b, &round, s), Sign::Sub));
            b.zeroize();
        }
        // Round 4, server: for v ∈ U2∖U3 and each surviving neighbour w, undo p_w,v.
        for v in u.u2.difference(&u.survivors) {
            for w in u.survivors.iter().filter(|w| u.topology.adjacent(w, v)) {
                let seed = gathered.pair_seeds.remove(&(v.as_str(), w.as_str())).ok_or_else(|| {
                    blame(
                        round,
                        w,
                        &format!("did not reveal its round pair seed with {v}, who dropped; no release for this round"),
                    )
                })?;
                seeds.push((seed, undo(pair_sign(w, v))));
            }
        }
        let RoundUnmasking { inner: secagg::Unmasking { mut sum, .. } } = self;
        let refs: Vec<(&MaskSeed, Sign)> = seeds.iter().map(|(s, sign)| (s, *sign)).collect();
        expand_words(&refs, &mut sum);
        Ok(sum)
    }
}

impl<'a> Gathered<'a> {
    /// Check and file one responder's reveals.
    fn add(&mut self, u: &secagg::Unmasking, from: &'a str, reveals: &'a [Reveal]) -> Result<(), CryptoError> {
        let round = u.params.round;
        let names: Vec<String> = u.u1.iter().map(|p| p.name.clone()).collect();
        // Unwrap safety: survivors ⊆ U2 ⊆ U1 = names, checked at construction.
        let x = position(&names, from).expect("a survivor is in U1") as u32 + 1;
        let mut seen = BTreeSet::new();
        for r in reveals {
            let of = r.of();
            if !seen.insert(of) {
                return Err(blame(round, from, &format!("revealed twice for {of}; one reveal per peer")));
            }
            let survived = u.survivors.contains(of);
            match r {
                Reveal::SelfMask { share, .. } if survived && u.topology.holds(from, of) && share.x == x => {
                    self.self_shares.entry(of).or_default().push(share.clone());
                }
                Reveal::SelfMask { .. } if !survived => {
                    return Err(blame(
                        round,
                        from,
                        &format!("revealed a self-mask share of {of}, who is not a survivor"),
                    ));
                }
                Reveal::SelfMask { .. } => {
                    return Err(blame(
                        round,
                        from,
                        &format!(
                            "revealed a self-mask share of {of} that it does not hold (not its neighbour, or at another holder's index)"
                        ),
                    ));
                }
                Reveal::PairSeed { seed, .. } if !survived && u.u2.contains(of) && u.topology.adjacent(from, of) => {
                    self.pair_seeds.insert((of, from), seed.mask_seed());
                }
                Reveal::PairSeed { .. } => {
                    return Err(blame(
                        round,
                        from,
                        &format!("revealed a pair seed with {of}, who is not a dropped neighbour of it"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A peer broke the protocol in the unmasking: the error names it.
fn blame(round: RoundId, who: &str, what: &str) -> CryptoError {
    CryptoError::Protocol(format!("round {round}: {who} {what}"))
}
