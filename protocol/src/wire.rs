//! Parsed domain types for every `fedcrm.v1` message, and their conversions.
//! Parse, don't validate: a `TryFrom<pb::…>` either yields a well-formed value or
//! a [`WireError`] that says which field is wrong; nothing downstream re-checks.

use fedcrm_analysis::date::{format_date, parse_date};
use fedcrm_analysis::rfm::{Cuts, HistogramSpec, Layout, Metric};
use fedcrm_analysis::rules::{Coverage, Invitee, NodeRules};
use fedcrm_crypto::RoundId;
use fedcrm_crypto::keys::RoundPublic;
use fedcrm_pki::{OrgKind, Receipt};
use ring::digest;

use crate::pb;

/// Protocol version string both sides must send: the wire contract's own version.
/// v2 (issue 7) signs every sealed share and adds the share report and the final U2
/// before masking, which a v1 peer cannot follow, so it is told to upgrade. The
/// derivations still bind [`fedcrm_crypto::PROTOCOL_VERSION`] (`fedcrm/v1`): their
/// bytes did not change (`crypto/test_vectors/v1`).
pub const VERSION: &str = "fedcrm/v2";

/// Largest vector a round may use (words); 64 Mi words = 512 MiB.
pub const MAX_LENGTH: u64 = 1 << 26;
/// Largest number of invited nodes in one round.
pub const MAX_NODES: usize = 1000;
/// Largest value of a count a node announces in `Hello.rules` (colluding
/// organisations, organisations, participants, population difference): larger ones
/// are refused, so the coordinator's planning stays bounded.
pub const MAX_RULE: u32 = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message has no body")]
    Empty,
    #[error("field {field}: {why}")]
    Field { field: &'static str, why: String },
    #[error("incompatible protocol version {got:?}; this build speaks {VERSION:?} — upgrade the older side")]
    Version { got: String },
}

fn field(field: &'static str, why: impl Into<String>) -> WireError {
    WireError::Field { field, why: why.into() }
}

fn round_id(b: &[u8]) -> Result<RoundId, WireError> {
    let a: [u8; 16] = b.try_into().map_err(|_| field("round_id", format!("must be 16 bytes, got {}", b.len())))?;
    Ok(RoundId(a))
}

fn public(name: &'static str, b: &[u8]) -> Result<RoundPublic, WireError> {
    RoundPublic::from_slice(b).map_err(|e| field(name, e.to_string()))
}

fn node_name(name: &'static str, s: &str) -> Result<String, WireError> {
    if s.is_empty()
        || s.len() > 64
        || !s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
    {
        return Err(field(name, format!("{s:?} is not a node name ([a-z0-9.-], 1..=64)")));
    }
    Ok(s.to_string())
}

fn names(name: &'static str, v: &[String]) -> Result<Vec<String>, WireError> {
    if v.len() > MAX_NODES {
        return Err(field(name, format!("{} names exceed the limit {MAX_NODES}", v.len())));
    }
    let out = v.iter().map(|s| node_name(name, s)).collect::<Result<Vec<_>, _>>()?;
    if out.windows(2).any(|w| w[0] >= w[1]) {
        return Err(field(name, "must be sorted and without duplicates"));
    }
    Ok(out)
}

/// SHA-256 of words as little-endian bytes (the chunk hash).
pub fn words_sha256(words: &[u64]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for w in words {
        ctx.update(&w.to_le_bytes());
    }
    // Unwrap safety: SHA-256 output is 32 bytes.
    ctx.finish().as_ref().try_into().unwrap()
}

// ---------------------------------------------------------------- analyses

/// What a round computes on each node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnalysisKind {
    /// Concatenated customer-count histograms.
    RfmHistograms(Vec<HistogramSpec>),
    /// Customers per segment under the given global cut points.
    RfmSegments(Cuts),
}

impl AnalysisKind {
    /// Short name used in policies and logs.
    pub fn name(&self) -> &'static str {
        match self {
            AnalysisKind::RfmHistograms(_) => "rfm-histograms",
            AnalysisKind::RfmSegments(_) => "rfm-segments",
        }
    }

    /// Length of the round vector.
    pub fn vector_len(&self) -> usize {
        match self {
            AnalysisKind::RfmHistograms(h) => h.iter().map(HistogramSpec::len).sum(),
            AnalysisKind::RfmSegments(_) => 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub reference_date: time::Date,
    pub purpose: String,
    /// The analyst who asked, from their certificate.
    pub requested_by: String,
    pub requested_by_organisation: String,
    /// Identifies the analysis (all its rounds) in audit logs.
    pub analysis_id: String,
    /// The analysis the round belongs to (e.g. `rfm-segments` for all its rounds);
    /// node policies apply to it.
    pub analysis_kind: String,
    pub kind: AnalysisKind,
}

impl Analysis {
    /// What the analysis reads, for the differencing rule: every RFM analysis reads
    /// a customer's purchases from the first record to the reference date.
    pub fn coverage(&self) -> Coverage {
        match self.kind {
            AnalysisKind::RfmHistograms(_) | AnalysisKind::RfmSegments(_) => {
                Coverage { family: "rfm".into(), from: None, to: self.reference_date }
            }
        }
    }
}

/// Parse an analysis's reference date (YYYY-MM-DD).
pub fn parse_reference_date(s: &str) -> Result<time::Date, WireError> {
    parse_date(s).map_err(|e| field("reference_date", e.to_string()))
}

fn metric(m: i32) -> Result<Metric, WireError> {
    match pb::Metric::try_from(m) {
        Ok(pb::Metric::Recency) => Ok(Metric::Recency),
        Ok(pb::Metric::Frequency) => Ok(Metric::Frequency),
        Ok(pb::Metric::Monetary) => Ok(Metric::Monetary),
        _ => Err(field("metric", format!("unknown metric {m}"))),
    }
}

fn metric_pb(m: Metric) -> pb::Metric {
    match m {
        Metric::Recency => pb::Metric::Recency,
        Metric::Frequency => pb::Metric::Frequency,
        Metric::Monetary => pb::Metric::Monetary,
    }
}

fn cuts(name: &'static str, c: Option<&pb::CutPoints>) -> Result<[u64; 4], WireError> {
    let c = c.ok_or_else(|| field(name, "missing"))?;
    let a: [u64; 4] = c.cuts.as_slice().try_into().map_err(|_| field(name, "must hold exactly four cut points"))?;
    if a.windows(2).any(|w| w[0] > w[1]) {
        return Err(field(name, "cut points must ascend"));
    }
    Ok(a)
}

pub fn cuts_pb(c: &[u64; 4]) -> pb::CutPoints {
    pb::CutPoints { cuts: c.to_vec() }
}

impl TryFrom<&pb::Analysis> for Analysis {
    type Error = WireError;
    fn try_from(a: &pb::Analysis) -> Result<Self, WireError> {
        let reference_date = parse_reference_date(&a.reference_date)?;
        if a.purpose.trim().is_empty() || a.purpose.len() > 1000 {
            return Err(field("purpose", "HQ must state a purpose (1..=1000 characters)"));
        }
        let kind = match &a.kind {
            Some(pb::analysis::Kind::RfmHistograms(h)) => {
                if h.histograms.is_empty() || h.histograms.len() > 64 {
                    return Err(field("histograms", "need 1..=64 histograms"));
                }
                let mut specs = Vec::with_capacity(h.histograms.len());
                for x in &h.histograms {
                    let metric = metric(x.metric)?;
                    let layout = if x.log2 {
                        Layout::Log2
                    } else {
                        if x.bins == 0 || x.bins as usize > 1 << 20 || x.width == 0 {
                            return Err(field("histograms", "linear bins need 1..=2^20 bins of non-zero width"));
                        }
                        Layout::Linear { lo: x.lo, width: x.width, bins: x.bins }
                    };
                    specs.push(HistogramSpec { metric, layout });
                }
                AnalysisKind::RfmHistograms(specs)
            }
            Some(pb::analysis::Kind::RfmSegments(s)) => AnalysisKind::RfmSegments(Cuts {
                recency: cuts("recency", s.recency.as_ref())?,
                frequency: cuts("frequency", s.frequency.as_ref())?,
                monetary: cuts("monetary", s.monetary.as_ref())?,
            }),
            None => return Err(field("analysis.kind", "missing")),
        };
        if a.purpose.chars().any(char::is_control) {
            return Err(field("purpose", "must not contain control characters (newlines, escapes)"));
        }
        let text = |field_name: &'static str, v: &str| -> Result<String, WireError> {
            if v.len() > 200 || v.chars().any(char::is_control) {
                return Err(field(field_name, "must be at most 200 characters without control characters"));
            }
            Ok(v.to_string())
        };
        Ok(Analysis {
            reference_date,
            purpose: a.purpose.clone(),
            requested_by: text("requested_by", &a.requested_by)?,
            requested_by_organisation: text("requested_by_organisation", &a.requested_by_organisation)?,
            analysis_id: text("analysis_id", &a.analysis_id)?,
            analysis_kind: if a.analysis_kind.is_empty() {
                kind.name().to_string()
            } else {
                text("analysis_kind", &a.analysis_kind)?
            },
            kind,
        })
    }
}

impl From<&Analysis> for pb::Analysis {
    fn from(a: &Analysis) -> Self {
        let kind = match &a.kind {
            AnalysisKind::RfmHistograms(h) => pb::analysis::Kind::RfmHistograms(pb::RfmHistograms {
                histograms: h
                    .iter()
                    .map(|s| match s.layout {
                        Layout::Log2 => {
                            pb::Histogram { metric: metric_pb(s.metric) as i32, log2: true, ..Default::default() }
                        }
                        Layout::Linear { lo, width, bins } => {
                            pb::Histogram { metric: metric_pb(s.metric) as i32, log2: false, lo, width, bins }
                        }
                    })
                    .collect(),
            }),
            AnalysisKind::RfmSegments(c) => pb::analysis::Kind::RfmSegments(pb::RfmSegments {
                recency: Some(cuts_pb(&c.recency)),
                frequency: Some(cuts_pb(&c.frequency)),
                monetary: Some(cuts_pb(&c.monetary)),
            }),
        };
        pb::Analysis {
            reference_date: format_date(a.reference_date),
            purpose: a.purpose.clone(),
            requested_by: a.requested_by.clone(),
            requested_by_organisation: a.requested_by_organisation.clone(),
            analysis_id: a.analysis_id.clone(),
            analysis_kind: a.analysis_kind.clone(),
            kind: Some(kind),
        }
    }
}

// ---------------------------------------------------------------- coordinator → node

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundStart {
    pub round: RoundId,
    pub threshold: usize,
    pub length: usize,
    pub analysis: Analysis,
    /// Sorted by node name.
    pub invited: Vec<Invitee>,
    pub chunk_elements: usize,
    /// The coordinator's signature over [`roster_payload`].
    pub roster_signature: Vec<u8>,
}

/// What the coordinator signs for a round: round id, threshold, vector length, the
/// analysis (with who asked and why) and every invited node with its organisation
/// and kind.
pub fn roster_payload(
    round: &RoundId,
    threshold: usize,
    length: usize,
    analysis: &Analysis,
    invited: &[Invitee],
) -> Vec<u8> {
    let encoded = prost::Message::encode_to_vec(&pb::Analysis::from(analysis));
    let mut parts: Vec<Vec<u8>> =
        vec![(threshold as u64).to_be_bytes().to_vec(), (length as u64).to_be_bytes().to_vec(), encoded];
    for i in invited {
        parts.push(i.name.as_bytes().to_vec());
        parts.push(i.organisation.as_bytes().to_vec());
        parts.push(i.kind.as_str().as_bytes().to_vec());
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    fedcrm_crypto::kdf::context("roster", round, &refs)
}

/// An invitee's kind as the roster carries it (`hq` or `franchisee`).
fn parse_kind(s: &str) -> Result<OrgKind, WireError> {
    OrgKind::parse(s).ok_or_else(|| field("invited_kinds", format!("{s:?} is neither \"hq\" nor \"franchisee\"")))
}

fn receipt(r: Option<&pb::Receipt>) -> Result<Option<Receipt>, WireError> {
    let Some(r) = r else { return Ok(None) };
    let head: [u8; 32] = r.head.as_slice().try_into().map_err(|_| field("receipt.head", "must be 32 bytes"))?;
    if r.signature.is_empty() || r.signature.len() > 128 {
        return Err(field("receipt.signature", "must be 1..=128 bytes"));
    }
    Ok(Some(Receipt { seq: r.seq, time_ms: r.time_ms, head, signature: r.signature.clone() }))
}

fn receipt_pb(r: Option<&Receipt>) -> Option<pb::Receipt> {
    r.map(|r| pb::Receipt { seq: r.seq, head: r.head.to_vec(), signature: r.signature.clone(), time_ms: r.time_ms })
}

/// Size and SHA-256 of a node message's bytes without its receipt: what the node's
/// egress record names.
pub fn node_message_digest(m: &pb::NodeMessage) -> (u64, [u8; 32]) {
    let mut body = m.clone();
    body.receipt = None;
    let bytes = prost::Message::encode_to_vec(&body);
    let d = digest::digest(&digest::SHA256, &bytes);
    // Unwrap safety: SHA-256 output is 32 bytes.
    (bytes.len() as u64, d.as_ref().try_into().unwrap())
}

/// What a node message claims to be, read without copying or hashing it: the
/// coordinator decides from this whether a message belongs to a round that is
/// running before it spends a hash, a signature check or a receipt on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    /// As in [`FromNode::kind`]; `empty` for a message without a body.
    pub kind: &'static str,
    /// The round it names; `None` for a hello, a refusal of no particular round, or a
    /// round id that is not 16 bytes (which no running round has).
    pub round: Option<RoundId>,
    /// True for a hello or a refusal that names no round.
    pub roundless: bool,
    /// Words in a masked chunk (0 for other messages).
    pub elements: usize,
    /// Encoded size in bytes, receipt included.
    pub bytes: usize,
}

/// Read a node message's [`Envelope`].
pub fn node_message_envelope(m: &pb::NodeMessage) -> Envelope {
    use pb::node_message::Body;
    let id = |b: &[u8]| round_id(b).ok();
    let (kind, round, roundless, elements) = match &m.body {
        None => ("empty", None, false, 0),
        Some(Body::Hello(_)) => ("hello", None, true, 0),
        Some(Body::Keys(k)) => ("advertise-keys", id(&k.round_id), false, 0),
        Some(Body::Shares(s)) => ("sealed-shares", id(&s.round_id), false, 0),
        Some(Body::MaskedChunk(c)) => ("masked-chunk", id(&c.round_id), false, c.words.len()),
        Some(Body::Unmask(u)) => ("unmask-shares", id(&u.round_id), false, 0),
        Some(Body::Refusal(r)) => ("refusal", id(&r.round_id), r.round_id.is_empty(), 0),
        Some(Body::Consistency(c)) => ("consistency-signature", id(&c.round_id), false, 0),
        Some(Body::ShareReport(r)) => ("share-report", id(&r.round_id), false, 0),
    };
    Envelope { kind, round, roundless, elements, bytes: prost::Message::encoded_len(m) }
}

/// Parse a node message with its receipt.
pub fn parse_node_message(m: pb::NodeMessage) -> Result<(FromNode, Option<Receipt>), WireError> {
    let r = receipt(m.receipt.as_ref())?;
    Ok((FromNode::try_from(m)?, r))
}

/// Encode a node message with its receipt.
pub fn node_message(m: &FromNode, r: Option<&Receipt>) -> pb::NodeMessage {
    let mut out = pb::NodeMessage::from(m);
    out.receipt = receipt_pb(r);
    out
}

/// Parse a coordinator message with its receipt.
pub fn parse_coordinator_message(m: pb::CoordinatorMessage) -> Result<(ToNode, Option<Receipt>), WireError> {
    let r = receipt(m.receipt.as_ref())?;
    Ok((ToNode::try_from(m)?, r))
}

/// Encode a coordinator message with its receipt.
pub fn coordinator_message(m: &ToNode, r: Option<&Receipt>) -> pb::CoordinatorMessage {
    let mut out = pb::CoordinatorMessage::from(m);
    out.receipt = receipt_pb(r);
    out
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
    RoundStart(Box<RoundStart>),
    Roster {
        round: RoundId,
        keys: Vec<SignedKeys>,
    },
    Shares {
        round: RoundId,
        delivered: Vec<String>,
        shares: Vec<Sealed>,
    },
    /// Round 2: the final U2 (the delivered U2 less the nodes that left and the
    /// senders of reported shares); mask over exactly it.
    MaskedInputRequest {
        round: RoundId,
        delivered: Vec<String>,
        excluded: Vec<Exclusion>,
    },
    /// Round 3: U3 and U2∖U3, for each survivor to check and sign.
    Consistency {
        round: RoundId,
        survivors: Vec<String>,
        dropped: Vec<String>,
    },
    /// Round 4: U3, U2∖U3 and the signatures of members of U3 on that view.
    Unmask {
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
}

/// A member of U3's signature on (round, U2, U3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewSignature {
    pub node: String,
    pub signature: Vec<u8>,
}

fn signature_bytes(name: &'static str, b: &[u8]) -> Result<Vec<u8>, WireError> {
    if b.is_empty() || b.len() > 128 {
        return Err(field(name, "must be 1..=128 bytes"));
    }
    Ok(b.to_vec())
}

fn sealed(v: &[pb::Sealed]) -> Result<Vec<Sealed>, WireError> {
    if v.len() > MAX_NODES {
        return Err(field("shares", "too many"));
    }
    v.iter()
        .map(|s| {
            if s.ciphertext.len() > 1024 {
                return Err(field("shares.ciphertext", "longer than 1024 bytes"));
            }
            Ok(Sealed {
                peer: node_name("shares.peer", &s.peer)?,
                ciphertext: s.ciphertext.clone(),
                signature: signature_bytes("shares.signature", &s.signature)?,
            })
        })
        .collect()
}

fn sealed_pb(v: &[Sealed]) -> Vec<pb::Sealed> {
    v.iter().map(one_sealed_pb).collect()
}

fn one_sealed_pb(s: &Sealed) -> pb::Sealed {
    pb::Sealed { peer: s.peer.clone(), ciphertext: s.ciphertext.clone(), signature: s.signature.clone() }
}

fn reason(name: &'static str, r: &str) -> Result<String, WireError> {
    if r.len() > 2000 || r.chars().any(char::is_control) {
        return Err(field(name, "must be at most 2000 characters without control characters"));
    }
    Ok(r.to_string())
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
                if analysis.kind.vector_len() as u64 != r.length {
                    return Err(field(
                        "length",
                        format!("{} does not match the analysis ({})", r.length, analysis.kind.vector_len()),
                    ));
                }
                ToNode::RoundStart(Box::new(RoundStart {
                    round: round_id(&r.round_id)?,
                    threshold: r.threshold as usize,
                    length: r.length as usize,
                    analysis,
                    invited: invited
                        .into_iter()
                        .zip(r.invited_organisations)
                        .zip(&r.invited_kinds)
                        .map(|((name, organisation), k)| Ok(Invitee { name, organisation, kind: parse_kind(k)? }))
                        .collect::<Result<_, WireError>>()?,
                    chunk_elements: r.chunk_elements as usize,
                    roster_signature: r.roster_signature,
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
                ToNode::Roster { round: round_id(&r.round_id)?, keys }
            }
            Body::Shares(s) => ToNode::Shares {
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
            Body::Consistency(c) => ToNode::Consistency {
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
                        })
                    })
                    .collect::<Result<Vec<_>, WireError>>()?;
                let signers: Vec<String> = signatures.iter().map(|s| s.node.clone()).collect();
                names("signatures", &signers)?;
                ToNode::Unmask {
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
            }),
            ToNode::Roster { round, keys } => Body::Roster(pb::KeyRoster {
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
            }),
            ToNode::Shares { round, delivered, shares } => Body::Shares(pb::ShareDelivery {
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
            ToNode::Consistency { round, survivors, dropped } => Body::Consistency(pb::ConsistencyCheck {
                round_id: round.0.to_vec(),
                survivors: survivors.clone(),
                dropped: dropped.clone(),
            }),
            ToNode::Unmask { round, survivors, dropped, signatures } => Body::Unmask(pb::UnmaskRequest {
                round_id: round.0.to_vec(),
                survivors: survivors.clone(),
                dropped: dropped.clone(),
                signatures: signatures
                    .iter()
                    .map(|s| pb::ViewSignature { node: s.node.clone(), signature: s.signature.clone() })
                    .collect(),
            }),
            ToNode::RoundEnd { round, released, message } => Body::RoundEnd(pb::RoundEnd {
                round_id: round.0.to_vec(),
                released: *released,
                message: message.clone(),
            }),
            ToNode::Notice { text } => Body::Notice(pb::Notice { text: text.clone() }),
        };
        pb::CoordinatorMessage { body: Some(body), receipt: None }
    }
}

// ---------------------------------------------------------------- node → coordinator

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedChunk {
    pub round: RoundId,
    pub index: u32,
    pub count: u32,
    pub offset: u64,
    pub words: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevealedShare {
    pub of: String,
    pub self_mask: bool,
    pub y: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromNode {
    Hello {
        version: String,
        software: String,
        node: String,
        rules: NodeRules,
    },
    Keys {
        round: RoundId,
        enc: RoundPublic,
        mask: RoundPublic,
        signature: Vec<u8>,
    },
    Shares {
        round: RoundId,
        shares: Vec<Sealed>,
    },
    /// Round 2, before masking: the delivered shares that are signed but do not open.
    ShareReport {
        round: RoundId,
        unopened: Vec<UnopenedShare>,
    },
    Masked(MaskedChunk),
    Unmask {
        round: RoundId,
        shares: Vec<RevealedShare>,
    },
    Refusal {
        round: Option<RoundId>,
        reason: String,
        awaiting_approval: bool,
    },
    /// Round 3: this node's signature on (round, U2, U3).
    Consistency {
        round: RoundId,
        signature: Vec<u8>,
    },
}

impl FromNode {
    /// The round a message belongs to, if any.
    pub fn round(&self) -> Option<RoundId> {
        match self {
            FromNode::Hello { .. } => None,
            FromNode::Keys { round, .. }
            | FromNode::Shares { round, .. }
            | FromNode::ShareReport { round, .. }
            | FromNode::Unmask { round, .. }
            | FromNode::Consistency { round, .. } => Some(*round),
            FromNode::Masked(c) => Some(c.round),
            FromNode::Refusal { round, .. } => *round,
        }
    }

    /// Message kind for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            FromNode::Hello { .. } => "hello",
            FromNode::Keys { .. } => "advertise-keys",
            FromNode::Shares { .. } => "sealed-shares",
            FromNode::ShareReport { .. } => "share-report",
            FromNode::Masked(_) => "masked-chunk",
            FromNode::Unmask { .. } => "unmask-shares",
            FromNode::Refusal { .. } => "refusal",
            FromNode::Consistency { .. } => "consistency-signature",
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
                }
            }
            Body::Consistency(c) => FromNode::Consistency {
                round: round_id(&c.round_id)?,
                signature: signature_bytes("consistency.signature", &c.signature)?,
            },
            Body::Keys(k) => {
                if k.signature.is_empty() || k.signature.len() > 256 {
                    return Err(field("signature", "must be 1..=256 bytes"));
                }
                FromNode::Keys {
                    round: round_id(&k.round_id)?,
                    enc: public("enc_public", &k.enc_public)?,
                    mask: public("mask_public", &k.mask_public)?,
                    signature: k.signature,
                }
            }
            Body::Shares(s) => FromNode::Shares { round: round_id(&s.round_id)?, shares: sealed(&s.shares)? },
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
                if c.words.is_empty() {
                    return Err(field("masked_chunk.words", "empty chunk"));
                }
                let got = words_sha256(&c.words);
                if c.sha256.as_slice() != got {
                    return Err(field(
                        "masked_chunk.sha256",
                        format!("chunk {} does not match its hash (corrupted in transit?)", c.index),
                    ));
                }
                FromNode::Masked(MaskedChunk {
                    round: round_id(&c.round_id)?,
                    index: c.index,
                    count: c.count,
                    offset: c.offset,
                    words: c.words,
                })
            }
            Body::Unmask(u) => FromNode::Unmask {
                round: round_id(&u.round_id)?,
                shares: u
                    .shares
                    .into_iter()
                    .map(|s| {
                        if s.y.len() != fedcrm_crypto::shamir::SHARE_Y_LEN {
                            return Err(field("unmask.y", format!("must be 64 bytes, got {}", s.y.len())));
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
        })
    }
}

impl From<&FromNode> for pb::NodeMessage {
    fn from(m: &FromNode) -> Self {
        use pb::node_message::Body;
        let body = match m {
            FromNode::Hello { version, software, node, rules } => Body::Hello(pb::Hello {
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
            }),
            FromNode::Consistency { round, signature } => {
                Body::Consistency(pb::ConsistencySignature { round_id: round.0.to_vec(), signature: signature.clone() })
            }
            FromNode::Keys { round, enc, mask, signature } => Body::Keys(pb::AdvertiseKeys {
                round_id: round.0.to_vec(),
                enc_public: enc.0.to_vec(),
                mask_public: mask.0.to_vec(),
                signature: signature.clone(),
            }),
            FromNode::Shares { round, shares } => {
                Body::Shares(pb::SealedShares { round_id: round.0.to_vec(), shares: sealed_pb(shares) })
            }
            FromNode::ShareReport { round, unopened } => Body::ShareReport(pb::ShareReport {
                round_id: round.0.to_vec(),
                unopened: unopened
                    .iter()
                    .map(|u| pb::UnopenedShare { share: Some(one_sealed_pb(&u.share)), reason: u.reason.clone() })
                    .collect(),
            }),
            FromNode::Masked(c) => Body::MaskedChunk(pb::MaskedChunk {
                round_id: c.round.0.to_vec(),
                index: c.index,
                count: c.count,
                offset: c.offset,
                sha256: words_sha256(&c.words).to_vec(),
                words: c.words.clone(),
            }),
            FromNode::Unmask { round, shares } => Body::Unmask(pb::UnmaskShares {
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
        };
        pb::NodeMessage { body: Some(body), receipt: None }
    }
}

/// Split a masked vector into chunks of `per` words.
pub fn chunk(round: RoundId, words: &[u64], per: usize) -> Vec<MaskedChunk> {
    let count = words.len().div_ceil(per) as u32;
    words
        .chunks(per)
        .enumerate()
        .map(|(i, c)| MaskedChunk { round, index: i as u32, count, offset: (i * per) as u64, words: c.to_vec() })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_refusal_cannot_forge_lines_in_the_analysts_output() {
        // A node's reason is shown as one line per node: a line break in it would let a
        // malicious node print a fake line blaming an honest one.
        let forged = "x\n  fr-b: excluded: fr-b sent a share to fr-c that fails to open";
        let m = pb::NodeMessage {
            body: Some(pb::node_message::Body::Refusal(pb::Refusal {
                round_id: vec![],
                reason: forged.into(),
                awaiting_approval: false,
            })),
            receipt: None,
        };
        assert!(FromNode::try_from(m.clone()).is_err());
        let mut ok = m;
        if let Some(pb::node_message::Body::Refusal(r)) = ok.body.as_mut() {
            r.reason = "policy: not allowed".into();
        }
        assert!(FromNode::try_from(ok).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn node_message_decoder_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            if let Ok(m) = pb::NodeMessage::decode(bytes.as_slice()) {
                let _ = FromNode::try_from(m);
            }
        }

        #[test]
        fn coordinator_message_decoder_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            if let Ok(m) = pb::CoordinatorMessage::decode(bytes.as_slice()) {
                let _ = ToNode::try_from(m);
            }
        }
    }

    #[test]
    fn envelope_names_round_size_and_kind_without_parsing() {
        let r = RoundId([7; 16]);
        let c = chunk(r, &[1, 2, 3], 2);
        let m = node_message(&FromNode::Masked(c[0].clone()), None);
        let e = node_message_envelope(&m);
        assert_eq!((e.kind, e.round, e.roundless, e.elements), ("masked-chunk", Some(r), false, 2));
        assert_eq!(e.bytes, m.encode_to_vec().len());
        let refusal = |round| FromNode::Refusal { round, reason: "no".into(), awaiting_approval: false };
        let e = node_message_envelope(&node_message(&refusal(None), None));
        assert_eq!((e.kind, e.round, e.roundless), ("refusal", None, true));
        let e = node_message_envelope(&node_message(&refusal(Some(r)), None));
        assert_eq!((e.round, e.roundless), (Some(r), false));
        let mut bad = node_message(&FromNode::Masked(c[0].clone()), None);
        if let Some(pb::node_message::Body::MaskedChunk(ref mut x)) = bad.body {
            x.round_id = vec![1; 3];
        }
        assert_eq!(node_message_envelope(&bad).round, None, "a malformed round id names no round");
        assert_eq!(node_message_envelope(&pb::NodeMessage::default()).kind, "empty");
    }

    #[test]
    fn chunk_hash_mismatch_is_rejected() {
        let r = RoundId([7; 16]);
        let c = chunk(r, &[1, 2, 3], 2);
        let mut m: pb::NodeMessage = (&FromNode::Masked(c[0].clone())).into();
        if let Some(pb::node_message::Body::MaskedChunk(ref mut x)) = m.body {
            x.words[0] ^= 1;
        }
        assert!(matches!(FromNode::try_from(m), Err(WireError::Field { field: "masked_chunk.sha256", .. })));
    }

    #[test]
    fn round_trips() {
        let r = RoundId([1; 16]);
        let a = Analysis {
            reference_date: parse_date("1997-09-30").unwrap(),
            purpose: "quarterly segments".into(),
            requested_by: "analyst.li".into(),
            requested_by_organisation: "HQ".into(),
            analysis_id: "a1".into(),
            analysis_kind: "rfm-segments".into(),
            kind: AnalysisKind::RfmSegments(Cuts {
                recency: [1, 2, 3, 4],
                frequency: [1, 1, 2, 3],
                monetary: [5, 6, 7, 8],
            }),
        };
        let m = ToNode::RoundStart(Box::new(RoundStart {
            round: r,
            threshold: 3,
            length: 4,
            analysis: a,
            invited: vec![Invitee { name: "a".into(), organisation: "o".into(), kind: OrgKind::Franchisee }],
            chunk_elements: 10,
            roster_signature: vec![1, 2],
        }));
        assert_eq!(ToNode::try_from(pb::CoordinatorMessage::from(&m)).unwrap(), m);
        let bad_version = pb::CoordinatorMessage {
            body: Some(pb::coordinator_message::Body::Welcome(pb::Welcome {
                protocol_version: "fedcrm/v0".into(),
                coordinator_name: "c".into(),
                certificate: vec![1],
            })),
            receipt: None,
        };
        assert!(matches!(ToNode::try_from(bad_version), Err(WireError::Version { .. })));
    }

    #[test]
    fn signed_shares_reports_and_the_final_u2_round_trip() {
        let round = RoundId([3; 16]);
        let share = Sealed { peer: "node-1".into(), ciphertext: vec![7; 176], signature: vec![9; 70] };
        let report = FromNode::ShareReport {
            round,
            unopened: vec![UnopenedShare { share: share.clone(), reason: "authenticated decryption failed".into() }],
        };
        assert_eq!(FromNode::try_from(pb::NodeMessage::from(&report)).unwrap(), report);
        let sent = FromNode::Shares { round, shares: vec![share.clone()] };
        assert_eq!(FromNode::try_from(pb::NodeMessage::from(&sent)).unwrap(), sent);
        let request = ToNode::MaskedInputRequest {
            round,
            delivered: vec!["node-0".into(), "node-2".into()],
            excluded: vec![Exclusion { node: "node-1".into(), reason: "its share to node-2 does not open".into() }],
        };
        assert_eq!(ToNode::try_from(pb::CoordinatorMessage::from(&request)).unwrap(), request);
        // An unsigned share (what a v1 peer would send) is refused, naming the field.
        let unsigned = FromNode::Shares { round, shares: vec![Sealed { signature: Vec::new(), ..share }] };
        assert!(matches!(
            FromNode::try_from(pb::NodeMessage::from(&unsigned)),
            Err(WireError::Field { field: "shares.signature", .. })
        ));
    }

    #[test]
    fn receipt_round_trips_with_its_time() {
        let receipt = Receipt { seq: 41, time_ms: 1_796_162_400_123, head: [9; 32], signature: vec![1, 2, 3] };
        let end = ToNode::RoundEnd { round: RoundId([2; 16]), released: false, message: "test".into() };
        let m = coordinator_message(&end, Some(&receipt));
        assert_eq!(m.receipt.as_ref().map(|r| r.time_ms), Some(receipt.time_ms));
        let (_, parsed) = parse_coordinator_message(m).unwrap();
        assert_eq!(parsed, Some(receipt));
    }
}
