//! Key derivation: HKDF-SHA256 (RFC 5869) from ring, with every output bound to the
//! protocol version, a purpose label and the round context. Pure: no I/O.

use ring::hkdf;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{PROTOCOL_VERSION, RoundId};

/// 32 bytes of derived key material. Zeroized on drop; `Debug` never shows bytes.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DerivedKey(pub(crate) [u8; 32]);

impl std::fmt::Debug for DerivedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DerivedKey(..)")
    }
}

impl DerivedKey {
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Builds the `info` string: version ‖ label ‖ round ‖ each part, every element
/// length-prefixed (u32 big-endian) so that no two different contexts collide.
pub fn context(label: &str, round: &RoundId, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    let mut push = |b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    };
    push(PROTOCOL_VERSION.as_bytes());
    push(label.as_bytes());
    push(&round.0);
    for p in parts {
        push(p);
    }
    out
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// HKDF-SHA256(salt = version, ikm, info) → 32 bytes.
///
/// RFC 5869, §2.2 (Extract) and §2.3 (Expand).
/// Bonawitz et al. CCS 2017, Fig. 4, Rounds 1, 2 and 4: over an X25519 output, the hash in KA.agree.
pub fn derive(ikm: &[u8], info: &[u8]) -> DerivedKey {
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, PROTOCOL_VERSION.as_bytes());
    let prk = salt.extract(ikm);
    let infos = [info];
    // Unwrap safety: HKDF-SHA256 can always expand 32 bytes (limit is 255 * 32).
    let okm = prk.expand(&infos, Len32).unwrap();
    let mut out = [0u8; 32];
    // Unwrap safety: the output buffer has exactly the length requested above.
    okm.fill(&mut out).unwrap();
    DerivedKey(out)
}
