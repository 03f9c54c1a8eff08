//! The sealed channel a PSI list travels on from one node to another through the
//! coordinator (issue 12): the coordinator relays the chunks and can neither read,
//! substitute, reorder, drop, replay nor move them to another run or pair without the
//! receiving node noticing. Pure: no I/O, no clock.
//!
//! The two nodes' per-run X25519 keys (each signed with its certified key by the
//! protocol layer, which checks the peer's signature before it builds a channel) give
//! one shared secret; the direction's key is derived from it with both public keys,
//! the run and the two names (which must differ: with one name both directions would
//! share a key and a list could be reflected). Every chunk of every list gets its own
//! ChaCha20-Poly1305 key, derived with HKDF-SHA256 (RFC 5869) from the direction's key
//! and bound to the list (its kind and segment group), a random 16-byte salt drawn for
//! each sealing of a list, the chunk's index and the list's chunk count; the same
//! context is the associated data (RFC 8439, §2.8). So a key seals exactly one message
//! and the fixed nonce is safe, as in [`crate::aead`] — even if a broken caller sealed
//! two different lists of one kind (attack review of issue 12, F5): their salts differ.
//!
//! What the receiver checks, and who is at fault when a check fails: a chunk that does
//! not open was altered, made for another run, pair, list or position, or not made by
//! the peer — the relay (or a broken peer) is at fault and the run must stop; a chunk
//! count that changes within a list, an index out of order, a list that ends early or
//! a plaintext that is not whole points is reported the same way. Each list is opened
//! chunk by chunk ([`ListOpener`]), so memory stays bounded by one chunk.

use zeroize::Zeroize;

use crate::kdf::{self, DerivedKey};
use crate::keys::{RoundPublic, RoundSecret};
use crate::{CryptoError, RoundId, SecureRandom, aead};

/// The bytes of one encoded ristretto255 point.
pub const POINT: usize = 32;

/// Points per sealed chunk a node sends (8,192 points, 256 KiB of plaintext): small
/// enough to stream in bounded memory, large enough that the per-chunk overhead (16
/// bytes of tag and a key derivation) is negligible.
pub const CHUNK_POINTS: usize = 8192;

/// Which list of a PSI pair a chunk belongs to. The label and group go into every
/// chunk's key, so a chunk of one list never opens as part of another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ListKind {
    /// A node's own identifiers, blinded with its key, padded and shuffled.
    Blinded { group: u8 },
    /// The peer's blinded list, blinded again with this node's key and shuffled.
    Returned { group: u8 },
}

impl ListKind {
    fn label(self) -> [u8; 2] {
        match self {
            ListKind::Blinded { group } => [b'b', group],
            ListKind::Returned { group } => [b'r', group],
        }
    }
}

/// Why a list from the peer was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChannelError {
    #[error(
        "chunk {index} of {list:?} from {sender} did not open: altered, replayed from another run, pair or list, \
         or not sealed by {sender} — the relay (the coordinator) or {sender} broke the run; stop it"
    )]
    Sealed { sender: String, list: ListKind, index: u32 },
    #[error(
        "{list:?} from {sender}: chunk {got} arrived where chunk {expected} was due (reordered, dropped or \
         replayed by the relay); stop the run"
    )]
    Order { sender: String, list: ListKind, got: u32, expected: u32 },
    #[error("{list:?} from {sender}: chunk says the list has {got} chunks, earlier ones said {expected}")]
    Count { sender: String, list: ListKind, got: u32, expected: u32 },
    #[error("{list:?} from {sender}: ended after {got} of {expected} chunks")]
    Short { sender: String, list: ListKind, got: u32, expected: u32 },
    #[error("{list:?} from {sender}: chunk {index} holds {len} bytes, not whole points of 32 bytes")]
    Partial { sender: String, list: ListKind, index: u32, len: usize },
    #[error("{list:?} from {sender}: {chunks} chunks announced, more than the {max} a list may have")]
    TooLong { sender: String, list: ListKind, chunks: u32, max: u32 },
    #[error("{list:?} from {sender}: chunk {index} belongs to another sealing of the list (its salt differs)")]
    Salt { sender: String, list: ListKind, index: u32 },
    #[error("psi channel key: {0}")]
    Key(CryptoError),
    #[error("a psi channel needs two parties; both ends are named {0}")]
    SameName(String),
    #[error("system random number generator failed")]
    Random,
}

/// One sealed chunk as the relay carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedChunk {
    /// Drawn for each sealing of a list; the same in all its chunks.
    pub salt: [u8; 16],
    /// Position in the list, from 0.
    pub index: u32,
    /// The list's number of chunks (at least 1; an empty list is one empty chunk).
    pub of: u32,
    /// ChaCha20-Poly1305 ciphertext and tag of `index`'s points.
    pub ciphertext: Vec<u8>,
}

/// One direction of the channel between two nodes of a PSI run: `sender` seals,
/// `receiver` opens. Build it on both sides with [`Direction::new`].
pub struct Direction {
    base: DerivedKey,
    run: RoundId,
    sender: String,
    receiver: String,
}

impl std::fmt::Debug for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Direction({} → {}, ..)", self.sender, self.receiver)
    }
}

impl Direction {
    /// The direction `sender → receiver` of run `run`, from this node's run secret
    /// and the peer's run public key (already checked to be signed by the peer's
    /// certified key). Both ends compute the same direction key.
    pub fn new(
        mine: &RoundSecret,
        peer: &RoundPublic,
        run: RoundId,
        sender: &str,
        receiver: &str,
    ) -> Result<Self, ChannelError> {
        if sender == receiver {
            return Err(ChannelError::SameName(sender.into()));
        }
        let shared = mine.agree(peer).map_err(ChannelError::Key)?;
        // Both public keys, in a fixed order both ends compute.
        let (a, b) = (mine.public().0, peer.0);
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let info = kdf::context("psi-direction", &run, &[sender.as_bytes(), receiver.as_bytes(), &lo, &hi]);
        Ok(Self { base: kdf::derive(shared.bytes(), &info), run, sender: sender.into(), receiver: receiver.into() })
    }

    fn context(&self, list: ListKind, salt: &[u8; 16], index: u32, of: u32) -> Vec<u8> {
        let (index, of) = (index.to_be_bytes(), of.to_be_bytes());
        let parts: [&[u8]; 6] = [self.sender.as_bytes(), self.receiver.as_bytes(), &list.label(), salt, &index, &of];
        kdf::context("psi-chunk", &self.run, &parts)
    }

    fn chunk_key(&self, context: &[u8]) -> DerivedKey {
        kdf::derive(self.base.bytes(), context)
    }

    /// Whether `chunk` opens as chunk `chunk.index` of `list` from the sender: checked on
    /// arrival, so a receiver keeps only chunks the peer sealed (the list's order and
    /// completeness are checked when it is opened whole). The plaintext is wiped.
    pub fn check(&self, list: ListKind, chunk: &SealedChunk) -> Result<(), ChannelError> {
        let context = self.context(list, &chunk.salt, chunk.index, chunk.of);
        let mut plain = aead::open(&self.chunk_key(&context), &context, &chunk.ciphertext)
            .map_err(|_| ChannelError::Sealed { sender: self.sender.clone(), list, index: chunk.index })?;
        plain.zeroize();
        Ok(())
    }

    /// The number of chunks a list of `points` points is sealed in.
    pub fn chunks_for(points: usize) -> u32 {
        points.div_ceil(CHUNK_POINTS).max(1) as u32
    }

    /// A fresh salt for one sealing of a list.
    pub fn salt(rng: &dyn SecureRandom) -> Result<[u8; 16], ChannelError> {
        let mut salt = [0u8; 16];
        rng.fill(&mut salt).map_err(|_| ChannelError::Random)?;
        Ok(salt)
    }

    /// Seal chunk `index` of `of` of `list` under `salt` ([`Direction::salt`], one per
    /// sealing of the list): `points` encoded points (at most [`CHUNK_POINTS`]).
    pub fn seal(&self, list: ListKind, salt: [u8; 16], index: u32, of: u32, points: &[[u8; POINT]]) -> SealedChunk {
        let mut plain: Vec<u8> = points.iter().flatten().copied().collect();
        let context = self.context(list, &salt, index, of);
        let ciphertext = aead::seal(&self.chunk_key(&context), &context, &plain);
        plain.zeroize();
        SealedChunk { salt, index, of, ciphertext }
    }

    /// Seal a whole list, chunk by chunk, under a fresh salt.
    pub fn seal_list(
        &self,
        list: ListKind,
        points: &[[u8; POINT]],
        rng: &dyn SecureRandom,
    ) -> Result<Vec<SealedChunk>, ChannelError> {
        let salt = Self::salt(rng)?;
        let of = Self::chunks_for(points.len());
        if points.is_empty() {
            return Ok(vec![self.seal(list, salt, 0, 1, &[])]);
        }
        Ok(points.chunks(CHUNK_POINTS).enumerate().map(|(i, c)| self.seal(list, salt, i as u32, of, c)).collect())
    }

    /// Start opening `list` from the sender; at most `max_chunks` chunks are accepted.
    pub fn opener(&self, list: ListKind, max_chunks: u32) -> ListOpener<'_> {
        ListOpener { direction: self, list, next: 0, of: None, salt: None, max_chunks }
    }

    /// Open a whole list (tests and small lists; a node streams with [`ListOpener`]).
    pub fn open_list(
        &self,
        list: ListKind,
        chunks: &[SealedChunk],
        max_chunks: u32,
    ) -> Result<Vec<[u8; POINT]>, ChannelError> {
        let mut opener = self.opener(list, max_chunks);
        let mut out = Vec::new();
        for c in chunks {
            out.extend(opener.open(c)?);
        }
        opener.finish()?;
        Ok(out)
    }
}

/// Opens one list's chunks in order, checking each as it comes.
#[derive(Debug)]
pub struct ListOpener<'a> {
    direction: &'a Direction,
    list: ListKind,
    next: u32,
    of: Option<u32>,
    salt: Option<[u8; 16]>,
    max_chunks: u32,
}

impl ListOpener<'_> {
    /// Open the next chunk; its points, or why the list must be refused.
    pub fn open(&mut self, chunk: &SealedChunk) -> Result<Vec<[u8; POINT]>, ChannelError> {
        let (sender, list) = (self.direction.sender.clone(), self.list);
        if chunk.index != self.next {
            return Err(ChannelError::Order { sender, list, got: chunk.index, expected: self.next });
        }
        match self.of {
            Some(of) if of != chunk.of => {
                return Err(ChannelError::Count { sender, list, got: chunk.of, expected: of });
            }
            None if chunk.of == 0 || chunk.of > self.max_chunks => {
                return Err(ChannelError::TooLong { sender, list, chunks: chunk.of, max: self.max_chunks });
            }
            _ => {}
        }
        if chunk.index >= chunk.of {
            return Err(ChannelError::Order { sender, list, got: chunk.index, expected: chunk.of });
        }
        if self.salt.is_some_and(|s| s != chunk.salt) {
            return Err(ChannelError::Salt { sender, list, index: chunk.index });
        }
        let context = self.direction.context(list, &chunk.salt, chunk.index, chunk.of);
        let mut plain = aead::open(&self.direction.chunk_key(&context), &context, &chunk.ciphertext)
            .map_err(|_| ChannelError::Sealed { sender: sender.clone(), list, index: chunk.index })?;
        if plain.len() % POINT != 0 || plain.len() > CHUNK_POINTS * POINT {
            let len = plain.len();
            plain.zeroize();
            return Err(ChannelError::Partial { sender, list, index: chunk.index, len });
        }
        let points = plain.chunks_exact(POINT).map(|p| p.try_into().unwrap_or([0; POINT])).collect();
        plain.zeroize();
        self.of = Some(chunk.of);
        self.salt = Some(chunk.salt);
        self.next += 1;
        Ok(points)
    }

    /// The list is complete: every announced chunk arrived.
    pub fn finish(self) -> Result<(), ChannelError> {
        let expected = self.of.unwrap_or(1);
        if self.next != expected {
            return Err(ChannelError::Short {
                sender: self.direction.sender.clone(),
                list: self.list,
                got: self.next,
                expected,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    fn run(b: u8) -> RoundId {
        RoundId([b; 16])
    }

    /// Both ends of a → b for one run.
    fn ends(r: RoundId) -> (Direction, Direction, (RoundSecret, RoundSecret)) {
        let rng = SystemRandom::new();
        let (a, b) = (RoundSecret::generate(&rng).unwrap(), RoundSecret::generate(&rng).unwrap());
        let sender = Direction::new(&a, &b.public(), r, "fr-a", "fr-b").unwrap();
        let receiver = Direction::new(&b, &a.public(), r, "fr-a", "fr-b").unwrap();
        (sender, receiver, (a, b))
    }

    fn points(n: usize, seed: u8) -> Vec<[u8; POINT]> {
        (0..n)
            .map(|i| {
                let mut p = [seed; POINT];
                p[..8].copy_from_slice(&(i as u64).to_be_bytes());
                p
            })
            .collect()
    }

    const LIST: ListKind = ListKind::Blinded { group: 0 };

    #[test]
    fn a_list_crosses_in_chunks_and_opens_whole() {
        let (tx, rx, _) = ends(run(1));
        for n in [0, 1, CHUNK_POINTS, CHUNK_POINTS + 1, 3 * CHUNK_POINTS - 5] {
            let sent = points(n, 7);
            let chunks = tx.seal_list(LIST, &sent, &SystemRandom::new()).unwrap();
            assert_eq!(chunks.len() as u32, Direction::chunks_for(n));
            assert_eq!(rx.open_list(LIST, &chunks, 16).unwrap(), sent, "{n} points");
        }
    }

    #[test]
    fn the_relay_cannot_alter_reorder_drop_replay_or_move_a_chunk() {
        let r = run(2);
        let (tx, rx, (a, b)) = ends(r);
        let sent = points(2 * CHUNK_POINTS + 3, 9);
        let chunks = tx.seal_list(LIST, &sent, &SystemRandom::new()).unwrap();

        // One flipped bit.
        let mut altered = chunks.clone();
        altered[1].ciphertext[5] ^= 1;
        assert!(matches!(rx.open_list(LIST, &altered, 16), Err(ChannelError::Sealed { index: 1, .. })));
        // Swapped chunks, relabelled to look in order: the key is bound to the index.
        let mut swapped = chunks.clone();
        swapped.swap(0, 1);
        (swapped[0].index, swapped[1].index) = (0, 1);
        assert!(matches!(rx.open_list(LIST, &swapped, 16), Err(ChannelError::Sealed { index: 0, .. })));
        // Out of order as sent.
        let mut reordered = chunks.clone();
        reordered.swap(0, 1);
        assert!(matches!(rx.open_list(LIST, &reordered, 16), Err(ChannelError::Order { got: 1, expected: 0, .. })));
        // A chunk dropped at the end, or the count rewritten to hide it.
        assert!(matches!(rx.open_list(LIST, &chunks[..2], 16), Err(ChannelError::Short { got: 2, expected: 3, .. })));
        let mut recounted: Vec<SealedChunk> = chunks[..2].to_vec();
        recounted.iter_mut().for_each(|c| c.of = 2);
        assert!(matches!(rx.open_list(LIST, &recounted, 16), Err(ChannelError::Sealed { index: 0, .. })));
        // A chunk replayed twice.
        let replayed = vec![chunks[0].clone(), chunks[0].clone()];
        assert!(matches!(rx.open_list(LIST, &replayed, 16), Err(ChannelError::Order { got: 0, expected: 1, .. })));
        // The same list presented as another list, group, or the other direction.
        for other in [ListKind::Returned { group: 0 }, ListKind::Blinded { group: 1 }] {
            assert!(matches!(rx.open_list(other, &chunks, 16), Err(ChannelError::Sealed { index: 0, .. })));
        }
        // The other direction of the same pair and run (a reflected list).
        let back = Direction::new(&a, &b.public(), r, "fr-b", "fr-a").unwrap();
        assert!(matches!(back.open_list(LIST, &chunks, 16), Err(ChannelError::Sealed { index: 0, .. })));
        // A list of another run between the same nodes, or sealed by a third party.
        let (tx2, _, _) = ends(run(3));
        let foreign = tx2.seal_list(LIST, &sent, &SystemRandom::new()).unwrap();
        assert!(matches!(rx.open_list(LIST, &foreign, 16), Err(ChannelError::Sealed { index: 0, .. })));
        // Longer than the receiver accepts.
        assert!(matches!(rx.open_list(LIST, &chunks, 2), Err(ChannelError::TooLong { chunks: 3, max: 2, .. })));
        // Two sealings of one list share no ciphertext, and their chunks do not mix.
        let again = tx.seal_list(LIST, &sent, &SystemRandom::new()).unwrap();
        assert_ne!(again[0].ciphertext, chunks[0].ciphertext);
        let mixed = vec![chunks[0].clone(), again[1].clone(), chunks[2].clone()];
        assert!(matches!(rx.open_list(LIST, &mixed, 16), Err(ChannelError::Salt { index: 1, .. })));
        let mut resalted = again[1].clone();
        resalted.salt = chunks[0].salt;
        let mixed = vec![chunks[0].clone(), resalted, chunks[2].clone()];
        assert!(matches!(rx.open_list(LIST, &mixed, 16), Err(ChannelError::Sealed { index: 1, .. })));
        // One name at both ends is refused (both directions would share a key).
        assert!(matches!(Direction::new(&a, &b.public(), r, "fr-a", "fr-a"), Err(ChannelError::SameName(_))));
        // And the untouched list still opens.
        assert_eq!(rx.open_list(LIST, &chunks, 16).unwrap(), sent);
    }

    #[test]
    fn the_ciphertext_shows_no_point() {
        let (tx, _, _) = ends(run(4));
        let sent = points(100, 3);
        let chunks = tx.seal_list(LIST, &sent, &SystemRandom::new()).unwrap();
        let bytes: Vec<u8> = chunks.iter().flat_map(|c| c.ciphertext.clone()).collect();
        assert_eq!(bytes.len(), 100 * POINT + 16);
        for p in &sent {
            assert!(!bytes.windows(POINT).any(|w| w == p));
        }
    }
}
