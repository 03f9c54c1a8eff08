//! Node → coordinator: [`FromNode`] and what it carries (masked chunks, revealed
//! shares), and chunking a masked vector.

use fedcrm_analysis::rules::NodeRules;
use fedcrm_dp::accounting::Charge;
use fedcrm_dp::budget::{Budget, Month};
use fedcrm_dp::sampler::Variance;

use super::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedChunk {
    pub round: RoundId,
    pub index: u32,
    pub count: u32,
    pub offset: u64,
    /// Of the round's width: the coordinator refuses a chunk of the other width,
    /// naming the node.
    pub words: Words,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevealedShare {
    pub of: String,
    /// `true`: a Shamir share (64 bytes) of `of`'s round self-mask seed; `false`: the
    /// sender's round pair seed (32 bytes) with `of`, a dropped neighbour.
    pub self_mask: bool,
    pub y: Vec<u8>,
}

/// Issue 10: a node's differential-privacy policy and what it has spent of this month's
/// budget, as it announces them in its Hello. The node enforces its budget itself; the
/// coordinator uses this to refuse up front an analysis that would exceed it.
#[derive(Debug, Clone, PartialEq)]
pub struct PrivacyStatus {
    /// Policy `dp = "required"`: only noised rounds.
    pub dp_required: bool,
    pub budget: Budget,
    /// The smallest per-node noise variance the node accepts.
    pub min_noise: Variance,
    /// The month of `spent`.
    pub month: Month,
    /// This month's charges, composed, and their number.
    pub spent: Charge,
    pub charges: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FromNode {
    Hello {
        version: String,
        software: String,
        node: String,
        rules: NodeRules,
        /// Issue 10 (v7): `None` only from an older node, which the coordinator refuses
        /// for its version first.
        privacy: Option<PrivacyStatus>,
    },
    /// Round 0 (AdvertiseKeys): this round's two public keys, signed.
    AdvertiseKeys {
        round: RoundId,
        enc: RoundPublic,
        mask: RoundPublic,
        signature: Vec<u8>,
        /// SecAgg+: the commitment to this node's graph nonce (signed with the keys).
        commitment: Option<[u8; 32]>,
    },
    /// SecAgg+: this node's graph nonce, once it holds the signed commitment roster.
    RevealNonce {
        round: RoundId,
        nonce: [u8; 32],
    },
    /// Round 1 (ShareKeys): one sealed share per other node of U1, each signed.
    SealedShares {
        round: RoundId,
        shares: Vec<Sealed>,
    },
    /// Round 2 (MaskedInputCollection), before masking: the delivered shares that are signed but do not open.
    ShareReport {
        round: RoundId,
        unopened: Vec<UnopenedShare>,
    },
    /// Round 2 (MaskedInputCollection): one chunk of the masked input.
    MaskedChunk(MaskedChunk),
    /// Round 4 (Unmasking): one share per node of U2.
    UnmaskShares {
        round: RoundId,
        shares: Vec<RevealedShare>,
    },
    Refusal {
        round: Option<RoundId>,
        reason: String,
        awaiting_approval: bool,
    },
    /// Round 3 (ConsistencyCheck): this node's signature on (round, U2, U3).
    ConsistencySignature {
        round: RoundId,
        signature: Vec<u8>,
    },
    /// Issue 12: this node's run keys and the peers it declines.
    PsiKeys(PsiKeys),
    /// Issue 12: a list chunk for a peer (`peer` receives it).
    PsiChunk(PsiChunk),
    /// Issue 12: this node's noised counts of the run.
    PsiRelease(PsiRelease),
}

impl FromNode {
    /// The round a message belongs to, if any.
    pub fn round(&self) -> Option<RoundId> {
        match self {
            FromNode::Hello { .. } => None,
            FromNode::AdvertiseKeys { round, .. }
            | FromNode::SealedShares { round, .. }
            | FromNode::ShareReport { round, .. }
            | FromNode::UnmaskShares { round, .. }
            | FromNode::ConsistencySignature { round, .. }
            | FromNode::RevealNonce { round, .. } => Some(*round),
            FromNode::MaskedChunk(c) => Some(c.round),
            FromNode::Refusal { round, .. } => *round,
            FromNode::PsiKeys(k) => Some(k.run),
            FromNode::PsiChunk(c) => Some(c.run),
            FromNode::PsiRelease(r) => Some(r.run),
        }
    }

    /// Message kind for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            FromNode::Hello { .. } => "hello",
            FromNode::AdvertiseKeys { .. } => "advertise-keys",
            FromNode::SealedShares { .. } => "sealed-shares",
            FromNode::ShareReport { .. } => "share-report",
            FromNode::MaskedChunk(_) => "masked-chunk",
            FromNode::UnmaskShares { .. } => "unmask-shares",
            FromNode::Refusal { .. } => "refusal",
            FromNode::ConsistencySignature { .. } => "consistency-signature",
            FromNode::RevealNonce { .. } => "reveal-nonce",
            FromNode::PsiKeys(_) => "psi-keys",
            FromNode::PsiChunk(_) => "psi-chunk",
            FromNode::PsiRelease(_) => "psi-release",
        }
    }
}

impl TryFrom<pb::NodeMessage> for FromNode {
    type Error = WireError;
    fn try_from(m: pb::NodeMessage) -> Result<Self, WireError> {
        use pb::node_message::Body;
        Ok(match m.body.ok_or(WireError::Empty)? {
            Body::Hello(h) => {
                let r = h.rules.unwrap_or_default();
                let small = |name: &'static str, v: u32| -> Result<usize, WireError> {
                    if v > MAX_RULE {
                        return Err(field(name, format!("{v} exceeds {MAX_RULE}")));
                    }
                    Ok(v as usize)
                };
                FromNode::Hello {
                    version: h.protocol_version,
                    software: h.software.chars().take(100).collect(),
                    node: node_name("node_name", &h.node_name)?,
                    rules: NodeRules {
                        assume_colluding_nodes: small("rules.assume_colluding_nodes", r.assume_colluding_nodes)?,
                        min_other_organisations: small("rules.min_other_organisations", r.min_other_organisations)?,
                        min_participants: small("rules.min_participants", r.min_participants)?,
                        min_population_difference: small(
                            "rules.min_population_difference",
                            r.min_population_difference,
                        )?,
                        differencing_window_days: r.differencing_window_days,
                    },
                    privacy: h.privacy.map(privacy_status).transpose()?,
                }
            }
            Body::Consistency(c) => FromNode::ConsistencySignature {
                round: round_id(&c.round_id)?,
                signature: signature_bytes("consistency.signature", &c.signature)?,
            },
            Body::Keys(k) => {
                if k.signature.is_empty() || k.signature.len() > 256 {
                    return Err(field("signature", "must be 1..=256 bytes"));
                }
                FromNode::AdvertiseKeys {
                    round: round_id(&k.round_id)?,
                    enc: public("enc_public", &k.enc_public)?,
                    mask: public("mask_public", &k.mask_public)?,
                    signature: k.signature,
                    commitment: if k.nonce_commitment.is_empty() {
                        None
                    } else {
                        Some(bytes32("nonce_commitment", &k.nonce_commitment)?)
                    },
                }
            }
            Body::RevealNonce(r) => {
                FromNode::RevealNonce { round: round_id(&r.round_id)?, nonce: bytes32("nonce", &r.nonce)? }
            }
            Body::Shares(s) => FromNode::SealedShares { round: round_id(&s.round_id)?, shares: sealed(&s.shares)? },
            Body::ShareReport(r) => {
                if r.unopened.len() > MAX_NODES {
                    return Err(field("unopened", "too many"));
                }
                let shares: Vec<pb::Sealed> = r
                    .unopened
                    .iter()
                    .map(|u| u.share.clone().ok_or_else(|| field("unopened.share", "missing")))
                    .collect::<Result<_, _>>()?;
                FromNode::ShareReport {
                    round: round_id(&r.round_id)?,
                    unopened: sealed(&shares)?
                        .into_iter()
                        .zip(&r.unopened)
                        .map(|(share, u)| Ok(UnopenedShare { share, reason: reason("unopened.reason", &u.reason)? }))
                        .collect::<Result<_, WireError>>()?,
                }
            }
            Body::MaskedChunk(c) => {
                if c.count == 0 || c.index >= c.count {
                    return Err(field("masked_chunk.index", format!("index {} of {} chunks", c.index, c.count)));
                }
                let words = match (c.words.is_empty(), c.words32.is_empty()) {
                    (false, true) => Words::W64(c.words),
                    (true, false) => Words::W32(c.words32),
                    (true, true) => return Err(field("masked_chunk.words", "empty chunk")),
                    (false, false) => {
                        return Err(field(
                            "masked_chunk.words32",
                            "both words and words32 are set; exactly one must be",
                        ));
                    }
                };
                let got = words_sha256(&words);
                if c.sha256.as_slice() != got {
                    return Err(field(
                        "masked_chunk.sha256",
                        format!("chunk {} does not match its hash (corrupted in transit?)", c.index),
                    ));
                }
                FromNode::MaskedChunk(MaskedChunk {
                    round: round_id(&c.round_id)?,
                    index: c.index,
                    count: c.count,
                    offset: c.offset,
                    words,
                })
            }
            Body::Unmask(u) => FromNode::UnmaskShares {
                round: round_id(&u.round_id)?,
                shares: u
                    .shares
                    .into_iter()
                    .map(|s| {
                        // A self-mask share is 64 bytes; a round pair seed, 32.
                        let want = if s.self_mask { fedcrm_crypto::shamir::SHARE_Y_LEN } else { 32 };
                        if s.y.len() != want {
                            let what = if s.self_mask { "a self-mask share" } else { "a pair seed" };
                            return Err(field("unmask.y", format!("{what} must be {want} bytes, got {}", s.y.len())));
                        }
                        Ok(RevealedShare { of: node_name("unmask.of", &s.of)?, self_mask: s.self_mask, y: s.y })
                    })
                    .collect::<Result<_, WireError>>()?,
            },
            Body::Refusal(r) => FromNode::Refusal {
                round: if r.round_id.is_empty() { None } else { Some(round_id(&r.round_id)?) },
                // No control characters: the reason is shown one line per node.
                reason: reason("refusal.reason", &r.reason)?,
                awaiting_approval: r.awaiting_approval,
            },
            Body::PsiKeys(k) => FromNode::PsiKeys(psi::psi_keys(&k)?),
            Body::PsiChunk(c) => FromNode::PsiChunk(psi::psi_chunk(&c)?),
            Body::PsiRelease(r) => FromNode::PsiRelease(psi::psi_release(&r)?),
        })
    }
}

impl From<&FromNode> for pb::NodeMessage {
    fn from(m: &FromNode) -> Self {
        use pb::node_message::Body;
        let body = match m {
            FromNode::Hello { version, software, node, rules, privacy } => Body::Hello(pb::Hello {
                protocol_version: version.clone(),
                software: software.clone(),
                node_name: node.clone(),
                rules: Some(pb::NodeRules {
                    assume_colluding_nodes: rules.assume_colluding_nodes as u32,
                    min_other_organisations: rules.min_other_organisations as u32,
                    min_participants: rules.min_participants as u32,
                    min_population_difference: rules.min_population_difference as u32,
                    differencing_window_days: rules.differencing_window_days,
                }),
                privacy: privacy.as_ref().map(pb::PrivacyStatus::from),
            }),
            FromNode::ConsistencySignature { round, signature } => {
                Body::Consistency(pb::ConsistencySignature { round_id: round.0.to_vec(), signature: signature.clone() })
            }
            FromNode::AdvertiseKeys { round, enc, mask, signature, commitment } => Body::Keys(pb::AdvertiseKeys {
                round_id: round.0.to_vec(),
                enc_public: enc.0.to_vec(),
                mask_public: mask.0.to_vec(),
                signature: signature.clone(),
                nonce_commitment: commitment.map(|c| c.to_vec()).unwrap_or_default(),
            }),
            FromNode::RevealNonce { round, nonce } => {
                Body::RevealNonce(pb::RevealNonce { round_id: round.0.to_vec(), nonce: nonce.to_vec() })
            }
            FromNode::SealedShares { round, shares } => {
                Body::Shares(pb::SealedShares { round_id: round.0.to_vec(), shares: sealed_pb(shares) })
            }
            FromNode::ShareReport { round, unopened } => Body::ShareReport(pb::ShareReport {
                round_id: round.0.to_vec(),
                unopened: unopened
                    .iter()
                    .map(|u| pb::UnopenedShare { share: Some(one_sealed_pb(&u.share)), reason: u.reason.clone() })
                    .collect(),
            }),
            FromNode::MaskedChunk(c) => Body::MaskedChunk(pb::MaskedChunk {
                round_id: c.round.0.to_vec(),
                index: c.index,
                count: c.count,
                offset: c.offset,
                sha256: words_sha256(&c.words).to_vec(),
                words: match &c.words {
                    Words::W64(w) => w.clone(),
                    Words::W32(_) => Vec::new(),
                },
                words32: match &c.words {
                    Words::W32(w) => w.clone(),
                    Words::W64(_) => Vec::new(),
                },
            }),
            FromNode::UnmaskShares { round, shares } => Body::Unmask(pb::UnmaskShares {
                round_id: round.0.to_vec(),
                shares: shares
                    .iter()
                    .map(|s| pb::RevealedShare { of: s.of.clone(), self_mask: s.self_mask, y: s.y.clone() })
                    .collect(),
            }),
            FromNode::Refusal { round, reason, awaiting_approval } => Body::Refusal(pb::Refusal {
                round_id: round.map(|r| r.0.to_vec()).unwrap_or_default(),
                reason: reason.clone(),
                awaiting_approval: *awaiting_approval,
            }),
            FromNode::PsiKeys(k) => Body::PsiKeys(psi::psi_keys_pb(k)),
            FromNode::PsiChunk(c) => Body::PsiChunk(psi::psi_chunk_pb(c)),
            FromNode::PsiRelease(r) => Body::PsiRelease(psi::psi_release_pb(r)),
        };
        pb::NodeMessage { body: Some(body), receipt: None }
    }
}

/// Split a masked vector into chunks of `per` words (of its width).
pub fn chunk(round: RoundId, words: &Words, per: usize) -> Vec<MaskedChunk> {
    let count = words.len().div_ceil(per) as u32;
    (0..count as usize)
        .map(|i| {
            let range = i * per..((i + 1) * per).min(words.len());
            MaskedChunk { round, index: i as u32, count, offset: (i * per) as u64, words: words.slice(range) }
        })
        .collect()
}

/// A Hello's privacy status, checked: one budget (ε at δ, or ρ with ξ), finite
/// non-negative spending, a positive noise floor and a month.
fn privacy_status(p: pb::PrivacyStatus) -> Result<PrivacyStatus, WireError> {
    let budget = match (p.epsilon > 0.0, p.rho > 0.0) {
        (true, false) => Budget::Epsilon { epsilon: p.epsilon, delta: p.delta },
        (false, true) => Budget::Rho { rho: p.rho, xi: p.xi },
        _ => return Err(field("privacy.epsilon", "exactly one of epsilon and rho must be positive")),
    }
    .checked()
    .map_err(|e| field("privacy.epsilon", e))?;
    if !(p.spent_rho.is_finite() && p.spent_rho >= 0.0 && p.spent_xi.is_finite() && p.spent_xi >= 0.0) {
        return Err(field("privacy.spent_rho", "must be finite and not negative"));
    }
    Ok(PrivacyStatus {
        dp_required: p.dp_required,
        budget,
        min_noise: Variance::new(p.min_noise_num, p.min_noise_den)
            .map_err(|e| field("privacy.min_noise_num", e.to_string()))?,
        month: p.month.parse().map_err(|e: String| field("privacy.month", e))?,
        spent: Charge { rho: p.spent_rho, xi: p.spent_xi },
        charges: p.charges as usize,
    })
}

impl From<&PrivacyStatus> for pb::PrivacyStatus {
    fn from(p: &PrivacyStatus) -> Self {
        let (epsilon, delta, rho, xi) = match p.budget {
            Budget::Epsilon { epsilon, delta } => (epsilon, delta, 0.0, 0.0),
            Budget::Rho { rho, xi } => (0.0, 0.0, rho, xi),
        };
        pb::PrivacyStatus {
            dp_required: p.dp_required,
            epsilon,
            delta,
            rho,
            xi,
            min_noise_num: p.min_noise.num(),
            min_noise_den: p.min_noise.den(),
            month: p.month.to_string(),
            spent_rho: p.spent.rho,
            spent_xi: p.spent.xi,
            charges: p.charges as u32,
        }
    }
}
