//! Coordinator → node: [`ToNode`] and what it carries (the round start and its signed
//! roster, sealed shares, views).

use fedcrm_analysis::rules::Invitee;
use fedcrm_dp::sampler::Variance;
use fedcrm_pki::OrgKind;

use super::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundStart {
    pub round: RoundId,
    pub threshold: usize,
    pub length: usize,
    /// The round's word width, picked by the coordinator from the analysis's range
    /// ([`AnalysisKind::range`]) over the invited nodes; nodes recompute it.
    pub width: WordWidth,
    /// The per-node bound on each word the width was picked for (for counts, the
    /// coordinator's `max_customers_per_node`).
    pub max_per_node: u64,
    /// SecAgg+: the degree k of the round's graph (`threshold` is then t_k, per
    /// neighbourhood); 0: full SecAgg.
    pub degree: usize,
    /// Keys once per analysis: `None` in the analysis's first round, which sets up
    /// its keys (and graph); in a later round, that first round's id, whose keys and
    /// graph the round reuses (`fedcrm_crypto::multiround`).
    pub setup: Option<RoundId>,
    pub analysis: Analysis,
    /// Sorted by node name.
    pub invited: Vec<Invitee>,
    pub chunk_elements: usize,
    /// The coordinator's signature over [`roster_payload`].
    pub roster_signature: Vec<u8>,
    /// Issue 10: the distributed discrete Gaussian noise every node adds before
    /// masking; `None`: an exact round.
    pub noise: Option<Noise>,
}

/// The noise of a round (Kairouz, Liu & Steinke 2021, the distributed discrete
/// Gaussian): each node adds N_Z(0, `variance`) to every word of its contribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Noise {
    /// σ² per node, an exact fraction.
    pub variance: Variance,
    /// k: the nodes whose noise alone must give the guarantee, t − H − the largest C
    /// among the invitees (colluders can subtract their own noise). At least 1.
    pub honest: usize,
}

/// What the coordinator signs for a round: round id, threshold, vector length, word
/// width and the per-node bound it was picked for, the graph degree (0: full SecAgg),
/// the setup round whose keys it reuses (empty: this round sets them up), the analysis
/// (with who asked and why), every invited node with its organisation and kind, and
/// the noise (σ² as num, den and k; empty for an exact round).
pub fn roster_payload(start: &RoundStart) -> Vec<u8> {
    let encoded = prost::Message::encode_to_vec(&pb::Analysis::from(&start.analysis));
    let mut parts: Vec<Vec<u8>> = vec![
        (start.threshold as u64).to_be_bytes().to_vec(),
        (start.length as u64).to_be_bytes().to_vec(),
        start.width.bits().to_be_bytes().to_vec(),
        start.max_per_node.to_be_bytes().to_vec(),
        (start.degree as u64).to_be_bytes().to_vec(),
        start.setup.map_or_else(Vec::new, |s| s.0.to_vec()),
        encoded,
    ];
    for i in &start.invited {
        parts.push(i.name.as_bytes().to_vec());
        parts.push(i.organisation.as_bytes().to_vec());
        parts.push(i.kind.as_str().as_bytes().to_vec());
    }
    parts.push(start.noise.as_ref().map_or_else(Vec::new, |n| {
        [n.variance.num().to_be_bytes(), n.variance.den().to_be_bytes(), (n.honest as u64).to_be_bytes()].concat()
    }));
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    fedcrm_crypto::kdf::context("roster", &start.round, &refs)
}

/// What the coordinator signs over a SecAgg+ round's nonce commitments (sorted by
/// node) and the round's view-signature quorum. The graph seed hashes it with the
/// signed roster and the nonces, so that every node's graph depends on exactly what it
/// was shown.
pub fn commitments_payload(round: &RoundId, quorum: usize, commitments: &[(String, [u8; 32])]) -> Vec<u8> {
    let q = (quorum as u64).to_be_bytes();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(2 * commitments.len() + 1);
    parts.push(&q);
    for (node, c) in commitments {
        parts.push(node.as_bytes());
        parts.push(c);
    }
    fedcrm_crypto::kdf::context("nonce-commitments", round, &parts)
}

/// An invitee's kind as the roster carries it (`hq` or `franchisee`).
fn parse_kind(s: &str) -> Result<OrgKind, WireError> {
    s.parse::<OrgKind>().map_err(|e| field("invited_kinds", e.to_string()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedKeys {
    pub node: String,
    pub enc: RoundPublic,
    pub mask: RoundPublic,
    pub signature: Vec<u8>,
    pub certificate: Vec<u8>,
}

/// A sealed share: `peer` is its receiver (node → coordinator) or its sender
/// (coordinator → node); `signature` is the sender's over
/// [`fedcrm_crypto::secagg::share_signing_payload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub peer: String,
    pub ciphertext: Vec<u8>,
    pub signature: Vec<u8>,
}

/// A delivered share that carries its sender's valid signature but does not open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnopenedShare {
    /// As delivered: `peer` is the sender.
    pub share: Sealed,
    pub reason: String,
}

/// A member of the delivered U2 left out of the final U2, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exclusion {
    pub node: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToNode {
    Welcome {
        coordinator: String,
        certificate: Vec<u8>,
    },
    /// Round 0 (AdvertiseKeys): the signed invitation.
    RoundStart(Box<RoundStart>),
    /// SecAgg+, after Round 0 (AdvertiseKeys): U1's nonce commitments, signed by the
    /// coordinator over [`commitments_payload`].
    CommitmentRoster {
        round: RoundId,
        commitments: Vec<(String, [u8; 32])>,
        /// The view signatures every node needs before it reveals shares: one value
        /// for the whole round, so that two views cannot both reach it.
        quorum: usize,
        signature: Vec<u8>,
    },
    /// Round 1 (ShareKeys): U1's signed keys (SecAgg+: this node's and its
    /// neighbours' only, with every node's revealed nonce).
    KeyRoster {
        round: RoundId,
        keys: Vec<SignedKeys>,
        nonces: Vec<(String, [u8; 32])>,
    },
    /// Round 2 (MaskedInputCollection): U2 as delivered and the shares sealed to this node.
    ShareDelivery {
        round: RoundId,
        delivered: Vec<String>,
        shares: Vec<Sealed>,
    },
    /// Round 2 (MaskedInputCollection): the final U2 (the delivered U2 less the nodes that left and the
    /// senders of reported shares); mask over exactly it.
    MaskedInputRequest {
        round: RoundId,
        delivered: Vec<String>,
        excluded: Vec<Exclusion>,
    },
    /// Round 3 (ConsistencyCheck): U3 and U2∖U3, for each survivor to check and sign.
    ConsistencyCheck {
        round: RoundId,
        survivors: Vec<String>,
        dropped: Vec<String>,
    },
    /// Round 4 (Unmasking): U3, U2∖U3 and the signatures of members of U3 on that view.
    UnmaskRequest {
        round: RoundId,
        survivors: Vec<String>,
        dropped: Vec<String>,
        signatures: Vec<ViewSignature>,
    },
    RoundEnd {
        round: RoundId,
        released: bool,
        message: String,
    },
    /// About the session, for the node's operator (e.g. a duplicate session refused).
    Notice {
        text: String,
    },
    /// Issue 12: a PSI run over the participants.
    PsiStart(Box<PsiStart>),
    /// Issue 12: the run keys of the peers paired with this node.
    PsiKeys(PsiKeys),
    /// Issue 12: a list chunk from a peer (`peer` sent it).
    PsiChunk(PsiChunk),
    /// Issue 12: `peer` left the run; drop the pair with it.
    PsiDrop {
        run: RoundId,
        peer: String,
        reason: String,
    },
}

/// A member of U3's signature on (round, U2, U3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewSignature {
    pub node: String,
    pub signature: Vec<u8>,
    /// SecAgg+: the signer's certificate (DER); empty in full SecAgg, where the key
    /// roster carried it.
    pub certificate: Vec<u8>,
}

impl TryFrom<pb::CoordinatorMessage> for ToNode {
    type Error = WireError;
    fn try_from(m: pb::CoordinatorMessage) -> Result<Self, WireError> {
        use pb::coordinator_message::Body;
        Ok(match m.body.ok_or(WireError::Empty)? {
            Body::Welcome(w) => {
                if w.protocol_version != VERSION {
                    return Err(WireError::Version { got: w.protocol_version });
                }
                if w.certificate.is_empty() || w.certificate.len() > 16 * 1024 {
                    return Err(field("certificate", "must be 1..=16384 bytes of DER"));
                }
                ToNode::Welcome { coordinator: w.coordinator_name, certificate: w.certificate }
            }
            Body::RoundStart(r) => {
                let invited = names("invited", &r.invited)?;
                if r.invited_organisations.len() != invited.len() || r.invited_kinds.len() != invited.len() {
                    return Err(field("invited_organisations", "must name one organisation and kind per invited node"));
                }
                if r.roster_signature.len() > 128 {
                    return Err(field("roster_signature", "longer than 128 bytes"));
                }
                if r.length == 0 || r.length > MAX_LENGTH {
                    return Err(field("length", format!("{} is outside 1..={MAX_LENGTH}", r.length)));
                }
                if r.chunk_elements == 0 || r.chunk_elements as usize * 8 > crate::MAX_MESSAGE_BYTES / 2 {
                    return Err(field("chunk_elements", "out of range"));
                }
                let analysis = Analysis::try_from(r.analysis.as_ref().ok_or_else(|| field("analysis", "missing"))?)?;
                let width = WordWidth::from_bits(r.word_bits)
                    .ok_or_else(|| field("word_bits", format!("{} is not a word width (32 or 64)", r.word_bits)))?;
                if r.max_per_node == 0 {
                    return Err(field("max_per_node", "must be at least 1"));
                }
                if analysis.kind.vector_len() as u64 != r.length {
                    return Err(field(
                        "length",
                        format!("{} does not match the analysis ({})", r.length, analysis.kind.vector_len()),
                    ));
                }
                let noise = match (r.noise_variance_num, r.noise_variance_den, r.noise_honest) {
                    (0, 0, 0) => None,
                    (0, _, _) => return Err(field("noise_variance_num", "0 (no noise) with a denominator or k set")),
                    (_, 0, _) => return Err(field("noise_variance_den", "must be at least 1 when there is noise")),
                    (_, _, 0) => return Err(field("noise_honest", "must be at least 1 when there is noise")),
                    (num, den, k) => Some(Noise {
                        variance: Variance::new(num, den).map_err(|e| field("noise_variance_num", e.to_string()))?,
                        honest: k as usize,
                    }),
                };
                ToNode::RoundStart(Box::new(RoundStart {
                    round: round_id(&r.round_id)?,
                    threshold: r.threshold as usize,
                    length: r.length as usize,
                    width,
                    max_per_node: r.max_per_node,
                    degree: r.graph_degree as usize,
                    setup: if r.setup_round_id.is_empty() { None } else { Some(round_id(&r.setup_round_id)?) },
                    analysis,
                    invited: invited
                        .into_iter()
                        .zip(r.invited_organisations)
                        .zip(&r.invited_kinds)
                        .map(|((name, organisation), k)| Ok(Invitee { name, organisation, kind: parse_kind(k)? }))
                        .collect::<Result<_, WireError>>()?,
                    chunk_elements: r.chunk_elements as usize,
                    roster_signature: r.roster_signature,
                    noise,
                }))
            }
            Body::Roster(r) => {
                let keys = r
                    .keys
                    .into_iter()
                    .map(|k| {
                        Ok(SignedKeys {
                            node: node_name("keys.node", &k.node)?,
                            enc: public("keys.enc_public", &k.enc_public)?,
                            mask: public("keys.mask_public", &k.mask_public)?,
                            signature: k.signature,
                            certificate: k.certificate,
                        })
                    })
                    .collect::<Result<Vec<_>, WireError>>()?;
                let n: Vec<String> = keys.iter().map(|k| k.node.clone()).collect();
                names("keys", &n)?;
                ToNode::KeyRoster { round: round_id(&r.round_id)?, keys, nonces: node_values("nonces", &r.nonces)? }
            }
            Body::Commitments(c) => ToNode::CommitmentRoster {
                round: round_id(&c.round_id)?,
                commitments: node_values("commitments", &c.commitments)?,
                quorum: c.quorum as usize,
                signature: signature_bytes("signature", &c.signature)?,
            },
            Body::Shares(s) => ToNode::ShareDelivery {
                round: round_id(&s.round_id)?,
                delivered: names("delivered", &s.delivered)?,
                shares: sealed(&s.shares)?,
            },
            Body::MaskedInput(m) => {
                if m.excluded.len() > MAX_NODES {
                    return Err(field("excluded", "too many"));
                }
                ToNode::MaskedInputRequest {
                    round: round_id(&m.round_id)?,
                    delivered: names("delivered", &m.delivered)?,
                    excluded: m
                        .excluded
                        .iter()
                        .map(|x| {
                            Ok(Exclusion {
                                node: node_name("excluded.node", &x.node)?,
                                reason: reason("excluded.reason", &x.reason)?,
                            })
                        })
                        .collect::<Result<_, WireError>>()?,
                }
            }
            Body::Consistency(c) => ToNode::ConsistencyCheck {
                round: round_id(&c.round_id)?,
                survivors: names("survivors", &c.survivors)?,
                dropped: names("dropped", &c.dropped)?,
            },
            Body::Unmask(u) => {
                let signatures = u
                    .signatures
                    .iter()
                    .map(|v| {
                        Ok(ViewSignature {
                            node: node_name("signatures.node", &v.node)?,
                            signature: signature_bytes("signatures.signature", &v.signature)?,
                            certificate: if v.certificate.len() > 16 * 1024 {
                                return Err(field("signatures.certificate", "longer than 16384 bytes"));
                            } else {
                                v.certificate.clone()
                            },
                        })
                    })
                    .collect::<Result<Vec<_>, WireError>>()?;
                let signers: Vec<String> = signatures.iter().map(|s| s.node.clone()).collect();
                names("signatures", &signers)?;
                ToNode::UnmaskRequest {
                    round: round_id(&u.round_id)?,
                    survivors: names("survivors", &u.survivors)?,
                    dropped: names("dropped", &u.dropped)?,
                    signatures,
                }
            }
            Body::RoundEnd(e) => {
                ToNode::RoundEnd { round: round_id(&e.round_id)?, released: e.released, message: e.message }
            }
            Body::Notice(n) => ToNode::Notice { text: n.text.chars().take(2000).collect() },
            Body::PsiStart(s) => ToNode::PsiStart(Box::new(psi::psi_start(&s)?)),
            Body::PsiKeys(k) => {
                let keys = psi::psi_keys(&k)?;
                if !keys.declined.is_empty() {
                    return Err(field("psi_keys.declined", "the coordinator relays keys, not refusals"));
                }
                ToNode::PsiKeys(keys)
            }
            Body::PsiChunk(c) => ToNode::PsiChunk(psi::psi_chunk(&c)?),
            Body::PsiDrop(d) => ToNode::PsiDrop {
                run: round_id(&d.run_id)?,
                peer: node_name("psi_drop.peer", &d.peer)?,
                reason: reason("psi_drop.reason", &d.reason)?,
            },
        })
    }
}

impl From<&ToNode> for pb::CoordinatorMessage {
    fn from(m: &ToNode) -> Self {
        use pb::coordinator_message::Body;
        let body = match m {
            ToNode::Welcome { coordinator, certificate } => Body::Welcome(pb::Welcome {
                protocol_version: VERSION.into(),
                coordinator_name: coordinator.clone(),
                certificate: certificate.clone(),
            }),
            ToNode::RoundStart(r) => Body::RoundStart(pb::RoundStart {
                round_id: r.round.0.to_vec(),
                threshold: r.threshold as u32,
                length: r.length as u64,
                analysis: Some((&r.analysis).into()),
                invited: r.invited.iter().map(|i| i.name.clone()).collect(),
                invited_organisations: r.invited.iter().map(|i| i.organisation.clone()).collect(),
                invited_kinds: r.invited.iter().map(|i| i.kind.as_str().to_string()).collect(),
                chunk_elements: r.chunk_elements as u32,
                roster_signature: r.roster_signature.clone(),
                word_bits: r.width.bits(),
                max_per_node: r.max_per_node,
                graph_degree: r.degree as u32,
                setup_round_id: r.setup.map_or_else(Vec::new, |s| s.0.to_vec()),
                noise_variance_num: r.noise.as_ref().map_or(0, |n| n.variance.num()),
                noise_variance_den: r.noise.as_ref().map_or(0, |n| n.variance.den()),
                noise_honest: r.noise.as_ref().map_or(0, |n| n.honest as u32),
            }),
            ToNode::CommitmentRoster { round, commitments, quorum, signature } => {
                Body::Commitments(pb::CommitmentRoster {
                    round_id: round.0.to_vec(),
                    commitments: node_values_pb(commitments),
                    signature: signature.clone(),
                    quorum: *quorum as u32,
                })
            }
            ToNode::KeyRoster { round, keys, nonces } => Body::Roster(pb::KeyRoster {
                round_id: round.0.to_vec(),
                keys: keys
                    .iter()
                    .map(|k| pb::SignedKeys {
                        node: k.node.clone(),
                        enc_public: k.enc.0.to_vec(),
                        mask_public: k.mask.0.to_vec(),
                        signature: k.signature.clone(),
                        certificate: k.certificate.clone(),
                    })
                    .collect(),
                nonces: node_values_pb(nonces),
            }),
            ToNode::ShareDelivery { round, delivered, shares } => Body::Shares(pb::ShareDelivery {
                round_id: round.0.to_vec(),
                delivered: delivered.clone(),
                shares: sealed_pb(shares),
            }),
            ToNode::MaskedInputRequest { round, delivered, excluded } => Body::MaskedInput(pb::MaskedInputRequest {
                round_id: round.0.to_vec(),
                delivered: delivered.clone(),
                excluded: excluded
                    .iter()
                    .map(|x| pb::Exclusion { node: x.node.clone(), reason: x.reason.clone() })
                    .collect(),
            }),
            ToNode::ConsistencyCheck { round, survivors, dropped } => Body::Consistency(pb::ConsistencyCheck {
                round_id: round.0.to_vec(),
                survivors: survivors.clone(),
                dropped: dropped.clone(),
            }),
            ToNode::UnmaskRequest { round, survivors, dropped, signatures } => Body::Unmask(pb::UnmaskRequest {
                round_id: round.0.to_vec(),
                survivors: survivors.clone(),
                dropped: dropped.clone(),
                signatures: signatures
                    .iter()
                    .map(|s| pb::ViewSignature {
                        node: s.node.clone(),
                        signature: s.signature.clone(),
                        certificate: s.certificate.clone(),
                    })
                    .collect(),
            }),
            ToNode::RoundEnd { round, released, message } => Body::RoundEnd(pb::RoundEnd {
                round_id: round.0.to_vec(),
                released: *released,
                message: message.clone(),
            }),
            ToNode::Notice { text } => Body::Notice(pb::Notice { text: text.clone() }),
            ToNode::PsiStart(s) => Body::PsiStart(psi::psi_start_pb(s)),
            ToNode::PsiKeys(k) => Body::PsiKeys(psi::psi_keys_pb(k)),
            ToNode::PsiChunk(c) => Body::PsiChunk(psi::psi_chunk_pb(c)),
            ToNode::PsiDrop { run, peer, reason } => {
                Body::PsiDrop(pb::PsiDrop { run_id: run.0.to_vec(), peer: peer.clone(), reason: reason.clone() })
            }
        };
        pb::CoordinatorMessage { body: Some(body), receipt: None }
    }
}
