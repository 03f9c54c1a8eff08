//! Fault injection for tests (feature `test-util`, never in a shipped build): a node
//! that drops out, hangs, sends a wrong or malformed vector, corrupts a share or
//! accuses a peer falsely, to show that the others' rounds survive it (style rule 17).

use fedcrm_crypto::word::Words;
use fedcrm_protocol::wire::{self, Sealed, UnopenedShare};
use tokio::sync::watch;

use super::{NodeContext, SessionEnd};

/// Faults a test can inject, to show that others' rounds survive them.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Close the session at this point of the first round it joins.
    pub drop_at: Option<DropAt>,
    /// Like `drop_at`, but keep the connection open and go silent (a hung node).
    pub stall_at: Option<DropAt>,
    /// Issue 11: lose the connection at this point of the n-th round (1-based) the
    /// node joins, once; the node process, its analyses and its policy state stay, and
    /// it reconnects ([`SessionEnd::Lost`]).
    pub lose_connection: Option<(usize, DropAt)>,
    /// Rounds this node joined so far (for `lose_connection`), across its sessions.
    pub joined: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Send a masked vector one word too long.
    pub wrong_length: bool,
    /// Send the masked vector in the other word width (32 ↔ 64 bits).
    pub wrong_width: bool,
    /// Send a malformed chunk (index beyond count).
    pub malformed_chunk: bool,
    /// Seal a share to this peer that does not open, and sign it as sent (a node
    /// sending garbage its receiver must report).
    pub corrupt_share_to: Option<String>,
    /// Report a peer's share that opened as one that does not (a false accusation).
    pub false_report: Option<FalseReport>,
}

/// A false accusation a test node makes against `sender`.
#[derive(Debug, Clone)]
pub struct FalseReport {
    pub sender: String,
    /// Further peers accused in the same report.
    pub more: Vec<String>,
    /// Alter the share's bytes in the report: evidence the sender never signed.
    pub forge_evidence: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropAt {
    /// After advertising keys, before sharing them.
    AfterKeys,
    /// SecAgg+: after committing to its graph nonce and receiving the signed
    /// commitments, before revealing the nonce.
    BeforeReveal,
    /// After sending its sealed shares and receiving the final U2, before the masked
    /// input: it is in U2, so the others recover its mask key.
    AfterShares,
    /// After the masked input has arrived, vanishing when asked to unmask.
    AfterMasked,
    /// Issue 11: the masked input has left the node (its pass counted, any charge
    /// recorded) but the connection fails before it arrives.
    MaskedLost,
}

/// Vanish, or hang until shutdown, at `at` if the test asked for it.
pub(super) async fn at(ctx: &NodeContext, at: DropAt, shutdown: &watch::Receiver<bool>) -> Option<SessionEnd> {
    if ctx.faults.stall_at == Some(at) {
        let _ = shutdown.clone().changed().await;
        return Some(SessionEnd::Dropped);
    }
    if let Some((n, lose)) = ctx.faults.lose_connection
        && lose == at
        && ctx.faults.joined.load(std::sync::atomic::Ordering::SeqCst) == n
    {
        // Once: the count moves on, so the same round after reconnecting passes.
        ctx.faults.joined.fetch_add(1_000_000, std::sync::atomic::Ordering::SeqCst);
        return Some(SessionEnd::Lost);
    }
    (ctx.faults.drop_at == Some(at)).then_some(SessionEnd::Dropped)
}

/// Count a round this node joined (for `lose_connection`).
pub(super) fn joined(ctx: &NodeContext) {
    ctx.faults.joined.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

/// A share to `corrupt_share_to` that does not open (one bit of its tag flipped);
/// the caller signs it as sent.
pub(super) fn corrupt(ctx: &NodeContext, peer: &str, mut ciphertext: Vec<u8>) -> Vec<u8> {
    if ctx.faults.corrupt_share_to.as_deref() == Some(peer)
        && let Some(last) = ciphertext.last_mut()
    {
        *last ^= 0x01;
    }
    ciphertext
}

/// The shares a falsely accusing node reports as not opening.
pub(super) fn false_reports(ctx: &NodeContext, shares: &[Sealed]) -> Vec<UnopenedShare> {
    let Some(f) = &ctx.faults.false_report else { return Vec::new() };
    shares
        .iter()
        .filter(|s| s.peer == f.sender || f.more.contains(&s.peer))
        .map(|s| {
            let mut share = s.clone();
            if f.forge_evidence {
                share.ciphertext[0] ^= 0x01;
            }
            UnopenedShare { share, reason: "a false report (test fault)".into() }
        })
        .collect()
}

/// A masked vector one word too long, if asked for.
pub(super) fn wrong_length(ctx: &NodeContext, mut y: Words) -> Words {
    if ctx.faults.wrong_length {
        let one = Words::zeros(y.width(), 1);
        // Unwrap safety: `one` has y's width.
        y.extend(&one).unwrap();
    }
    y
}

/// The masked vector in the other word width, if asked for.
pub(super) fn wrong_width(ctx: &NodeContext, y: Words) -> Words {
    if !ctx.faults.wrong_width {
        return y;
    }
    match y {
        Words::W32(v) => Words::W64(v.into_iter().map(u64::from).collect()),
        Words::W64(v) => Words::W32(v.into_iter().map(|w| w as u32).collect()),
    }
}

/// A first chunk whose index is beyond the count, if asked for.
pub(super) fn malformed(ctx: &NodeContext, mut chunks: Vec<wire::MaskedChunk>) -> Vec<wire::MaskedChunk> {
    if ctx.faults.malformed_chunk
        && let Some(c) = chunks.first_mut()
    {
        c.index = c.count + 5;
    }
    chunks
}
