//! Both directions' envelopes: a message with the sender's signed log head
//! ([`Receipt`]), and what a node message claims to be before it is parsed
//! ([`Envelope`]) or hashed for the egress record ([`node_message_digest`]).

use fedcrm_pki::Receipt;

use super::*;

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
        Some(Body::MaskedChunk(c)) => ("masked-chunk", id(&c.round_id), false, c.words.len() + c.words32.len()),
        Some(Body::Unmask(u)) => ("unmask-shares", id(&u.round_id), false, 0),
        Some(Body::Refusal(r)) => ("refusal", id(&r.round_id), r.round_id.is_empty(), 0),
        Some(Body::Consistency(c)) => ("consistency-signature", id(&c.round_id), false, 0),
        Some(Body::ShareReport(r)) => ("share-report", id(&r.round_id), false, 0),
        Some(Body::RevealNonce(r)) => ("reveal-nonce", id(&r.round_id), false, 0),
        // A PSI chunk's elements are its points (of at most `CHUNK_POINTS`).
        Some(Body::PsiKeys(k)) => ("psi-keys", id(&k.run_id), false, 0),
        Some(Body::PsiChunk(c)) => ("psi-chunk", id(&c.run_id), false, c.ciphertext.len().saturating_sub(16) / 32),
        Some(Body::PsiRelease(r)) => ("psi-release", id(&r.run_id), false, 0),
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
