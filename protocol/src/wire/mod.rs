//! Parsed domain types for every `fedcrm.v1` message, and their conversions.
//! Parse, don't validate: a `TryFrom<pb::…>` either yields a well-formed value or
//! a [`WireError`] that says which field is wrong; nothing downstream re-checks.

use fedcrm_crypto::RoundId;
use fedcrm_crypto::keys::RoundPublic;
use fedcrm_crypto::word::{WordWidth, Words};
use ring::digest;

use crate::pb;

/// Protocol version string both sides must send: the wire contract's own version.
/// v2 (issue 7) signs every sealed share and adds the share report and the final U2
/// before masking, which a v1 peer cannot follow. v3 (issue 9) expands masks with
/// AES-128-CTR instead of ChaCha20 (`fedcrm_crypto::prg`): a v2 peer's masks would not
/// cancel, so the sum would be garbage rather than an error. An older peer is refused
/// at hello with both versions named and told to upgrade. v4 (issue 9, word width)
/// masks in 32- or 64-bit words as the signed round start says, with the width in the
/// PRG's HKDF info (`fedcrm/v4/prg-aes128/w32`, `/w64`), and carries 32-bit chunks in
/// `MaskedChunk.words32`: a v3 peer's masks would not cancel either. The KDFs still
/// bind [`fedcrm_crypto::PROTOCOL_VERSION`] (`fedcrm/v1`): their bytes did not change
/// (`crypto/test_vectors/v3`). v5 (issue 9) adds SecAgg+: the graph degree, nonce
/// commitments and reveals, neighbour-only key rosters. v6 (issue 9) sets keys up once
/// per analysis (`RoundStart.setup_round_id`): later rounds skip key advertisement,
/// and an unmask answer reveals round pair seeds for dropped neighbours where v5
/// revealed shares of their mask keys — a v5 peer could not follow either. v7 (issue
/// 10) adds distributed discrete Gaussian noise to the signed round start
/// (`RoundStart.noise`): with it, nodes add noise before masking and the sum is signed;
/// a v6 node would ignore the fields and send an exact contribution. v8 (issue 12) adds
/// PSI runs (`PsiStart`, `PsiKeys`, `PsiChunk`, `PsiRelease`), which a v7 node would
/// not understand. v9 (issue 12) has the node withhold small exact PSI counts itself
/// (`PsiRelease` withheld flags, a table's total): a v8 node would release them whole,
/// and send no total. v10 (issue 13) adds CLV rounds under differential privacy
/// (`ClvRound.dp` and its stated bounds on each customer's terms): a v9 node would
/// ignore them and read the round as exact.
pub const VERSION: &str = "fedcrm/v10";

/// Largest vector a round may use (words, of either width); 64 Mi words = 512 MiB of
/// 64-bit words.
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

/// SHA-256 of words as little-endian bytes of their width (the chunk hash).
pub fn words_sha256(words: &Words) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    match words {
        Words::W32(v) => v.iter().for_each(|w| ctx.update(&w.to_le_bytes())),
        Words::W64(v) => v.iter().for_each(|w| ctx.update(&w.to_le_bytes())),
    }
    // Unwrap safety: SHA-256 output is 32 bytes.
    ctx.finish().as_ref().try_into().unwrap()
}

/// A graph nonce or its commitment: exactly 32 bytes.
fn bytes32(name: &'static str, b: &[u8]) -> Result<[u8; 32], WireError> {
    b.try_into().map_err(|_| field(name, format!("must be 32 bytes, got {}", b.len())))
}

/// Sorted (node, 32 bytes) pairs: a roster of nonce commitments or of nonces.
fn node_values(name: &'static str, v: &[pb::NodeNonce]) -> Result<Vec<(String, [u8; 32])>, WireError> {
    let nodes: Vec<String> = v.iter().map(|x| x.node.clone()).collect();
    names(name, &nodes)?;
    v.iter().map(|x| Ok((x.node.clone(), bytes32(name, &x.value)?))).collect()
}

fn node_values_pb(v: &[(String, [u8; 32])]) -> Vec<pb::NodeNonce> {
    v.iter().map(|(node, value)| pb::NodeNonce { node: node.clone(), value: value.to_vec() }).collect()
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

mod analyses;
mod envelope;
mod from_node;
mod psi;
mod to_node;

pub use analyses::*;
pub use envelope::*;
pub use from_node::*;
pub use psi::{
    CHANNEL_OVERLAP, MAX_PSI_PARTICIPANTS, PROFILE_CELLS, PsiChunk, PsiKeys, PsiParticipant, PsiRelease, PsiStart,
    PsiTable, SegmentProfile, psi_start_payload, segment_cuts,
};
pub use to_node::*;

#[cfg(test)]
mod tests;
