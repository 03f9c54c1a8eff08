//! Per-round X25519 key pairs (RFC 7748) on curve25519-dalek. Pure: no I/O.
//!
//! Each node makes two pairs per round: one whose agreements key the AEAD that
//! carries Shamir shares, one whose agreements seed the pairwise masks. Only the
//! mask secret is ever Shamir-shared (so a dropped node's masks can be removed).

use curve25519_dalek::montgomery::MontgomeryPoint;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{CryptoError, SecureRandom};

/// An X25519 secret scalar for one round. Zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct RoundSecret([u8; 32]);

impl std::fmt::Debug for RoundSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoundSecret(..)")
    }
}

/// An X25519 public key (a Montgomery u-coordinate).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoundPublic(pub [u8; 32]);

impl std::fmt::Debug for RoundPublic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RoundPublic({:02x}{:02x}{:02x}{:02x}..)", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

impl RoundPublic {
    /// Parse 32 bytes; rejects the all-zero point, whose agreements are all zero.
    pub fn from_slice(b: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; 32] =
            b.try_into().map_err(|_| CryptoError::MalformedKey("x25519 public key must be 32 bytes"))?;
        if arr == [0u8; 32] {
            return Err(CryptoError::MalformedKey("x25519 public key is the zero point"));
        }
        Ok(Self(arr))
    }
}

/// The raw X25519 shared secret. Zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SharedSecret(pub(crate) [u8; 32]);

impl std::fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedSecret(..)")
    }
}

impl RoundSecret {
    /// A fresh secret from the given generator: 32 random bytes, clamped when used.
    ///
    /// RFC 7748, §5 (decodeScalar25519 clamps).
    /// Bonawitz et al. CCS 2017, Fig. 4, Round 0 (AdvertiseKeys), user: KA.gen.
    pub fn generate(rng: &dyn SecureRandom) -> Result<Self, CryptoError> {
        let mut b = [0u8; 32];
        rng.fill(&mut b).map_err(|_| CryptoError::Random)?;
        Ok(Self(b))
    }

    /// Rebuild from bytes (a reconstructed Shamir secret or a test vector).
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// The bytes, for Shamir sharing only.
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The public key: X25519(k, 9) (RFC 7748, §6.1).
    pub fn public(&self) -> RoundPublic {
        RoundPublic(MontgomeryPoint::mul_base_clamped(self.0).to_bytes())
    }

    /// X25519(self, peer). Rejects an all-zero result (a low-order peer key).
    ///
    /// RFC 7748, §6.1 (with its all-zero check).
    /// Bonawitz et al. CCS 2017, Fig. 4, Rounds 1, 2 and 4: KA.agree (hashed by [`crate::kdf::derive`]).
    pub fn agree(&self, peer: &RoundPublic) -> Result<SharedSecret, CryptoError> {
        let s = MontgomeryPoint(peer.0).mul_clamped(self.0).to_bytes();
        if s == [0u8; 32] {
            return Err(CryptoError::MalformedKey("x25519 agreement gave the zero point (low-order key)"));
        }
        Ok(SharedSecret(s))
    }
}

impl SharedSecret {
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    //! RFC 7748 known answers for the raw X25519 output. `SharedSecret` never exposes
    //! its bytes outside the crate, so these checks live here rather than in
    //! `tests/vectors.rs`; both load `test_vectors/v3/rfc7748_x25519.json`.

    use super::*;

    const VECTORS: &str = include_str!("../test_vectors/v3/rfc7748_x25519.json");

    fn h32(v: &serde_json::Value) -> [u8; 32] {
        hex::decode(v.as_str().unwrap()).unwrap().try_into().unwrap()
    }

    fn x25519(k: [u8; 32], u: [u8; 32]) -> [u8; 32] {
        RoundSecret::from_bytes(k).agree(&RoundPublic(u)).unwrap().0
    }

    #[test]
    fn rfc7748_scalar_mult() {
        let v: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
        let cases = v["scalar_mult"].as_array().unwrap();
        assert_eq!(cases.len(), 2);
        for c in cases {
            assert_eq!(x25519(h32(&c["scalar"]), h32(&c["u"])), h32(&c["output"]), "{}", c["source"]);
        }
    }

    #[test]
    fn rfc7748_iterated() {
        let v: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
        let mut want: Vec<(u64, [u8; 32])> = v["iterated"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["iterations"].as_u64().unwrap(), h32(&c["output"])))
            .collect();
        want.sort();
        let mut k = [0u8; 32];
        k[0] = 9;
        let mut u = k;
        let mut done = 0;
        for (iterations, expected) in want {
            while done < iterations {
                let next = x25519(k, u);
                u = k;
                k = next;
                done += 1;
            }
            assert_eq!(k, expected, "after {iterations} iterations");
        }
    }

    #[test]
    fn rfc7748_diffie_hellman() {
        let v: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
        let dh = &v["diffie_hellman"];
        let alice = RoundSecret::from_bytes(h32(&dh["alice_private"]));
        let bob = RoundSecret::from_bytes(h32(&dh["bob_private"]));
        assert_eq!(alice.public().0, h32(&dh["alice_public"]));
        assert_eq!(bob.public().0, h32(&dh["bob_public"]));
        let shared = h32(&dh["shared"]);
        assert_eq!(alice.agree(&RoundPublic(h32(&dh["bob_public"]))).unwrap().bytes(), &shared);
        assert_eq!(bob.agree(&RoundPublic(h32(&dh["alice_public"]))).unwrap().bytes(), &shared);
    }
}
